//! A deleted snapshot's tree removed in steps (`tree_drop.rs`): the volume goes at once,
//! the tree stays whole as far as it goes between steps, and the last step leaves nothing
//! of it and none of the references it held.

use meridian_proto::{BlockId, InodeId, RegionId};
use redb::ReadableDatabase;

use super::test_regions::*;
use super::trim::{self, STEP};

fn mkdir(r: &mut Region, parent: InodeId, name: &str) -> InodeId {
    attr_of(r.run(mknod(parent, name, FileKind::Dir))).ino
}

fn mkfile(r: &mut Region, parent: InodeId, name: &str) -> InodeId {
    attr_of(r.run(mknod(parent, name, FileKind::File))).ino
}

/// Volume "main" holding a tree of more than a step's rows: 3 directories of 250 files
/// (one extent each) under a directory, one of them nested; a file of `STEP + 100`
/// extents; hard links across directories; a symlink; an xattr.
pub(super) fn large_tree(r: &mut Region) -> Vec<BlockId> {
    let blocks: Vec<BlockId> = (0..7u8).map(|i| BlockId::of(&[i; 5])).collect();
    let root = r.volume_root();
    let top = mkdir(r, root, "top");
    let mut dir = top;
    for d in 0..3 {
        dir = mkdir(r, if d == 2 { dir } else { top }, &format!("d{d}"));
        for i in 0..250 {
            let f = mkfile(r, dir, &format!("f{i}"));
            commit_spaced(r, f, 1, 10, &blocks[(i % 3)..]);
        }
    }
    // Links whose first is met long before the last, steps apart.
    let early = mkfile(r, root, "a");
    commit_spaced(r, early, 1, 10, &blocks);
    r.run(Op::Link {
        ino: early,
        new_parent: dir,
        new_name: b"z-link".to_vec(),
        creds: root_creds(),
    })
    .unwrap();
    let big = mkfile(r, root, "big");
    commit_spaced(r, big, 2 * STEP + 100, 10, &blocks);
    r.run(Op::Link {
        ino: big,
        new_parent: dir,
        new_name: b"big-too".to_vec(),
        creds: root_creds(),
    })
    .unwrap();
    r.run(Op::Symlink {
        parent: top,
        name: b"link".to_vec(),
        target: b"../big".to_vec(),
        creds: root_creds(),
    })
    .unwrap();
    r.run(Op::SetXattr {
        ino: dir,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode: XattrMode::Any,
        creds: root_creds(),
    })
    .unwrap();
    blocks
}

fn snapshot(r: &mut Region, name: &str) -> Volume {
    match r.run(Op::CloneVolume {
        source: "main".into(),
        name: name.into(),
        read_only: true,
    }) {
        Ok(Reply::Volume(v)) => v,
        other => panic!("no snapshot: {other:?}"),
    }
}

/// Inodes, directory entries and extents of volume `volume` left in `r`.
pub(super) fn rows_of(r: &Region, volume: u32) -> (usize, usize, usize) {
    let tx = r.db.begin_read().unwrap();
    let inodes: Vec<Inode> = dump_table(&tx, INODES, |k| k.to_be_bytes().to_vec(), |v| v.to_vec())
        .into_iter()
        .map(|(_, v)| serde_json::from_slice::<Inode>(&v).unwrap())
        .filter(|n| n.attr.volume == volume)
        .collect();
    let ours = |key: &[u8], kind: Option<FileKind>| {
        let ino = u64::from_be_bytes(key[..8].try_into().unwrap());
        inodes
            .iter()
            .any(|n| n.attr.ino.0 == ino && kind.is_none_or(|k| n.attr.kind == k))
    };
    let entries = dump_table(&tx, DIRENTS, |k| k.to_vec(), |v| v.to_vec())
        .into_iter()
        .filter(|(k, _)| ours(k, Some(FileKind::Dir)))
        .count();
    let extents = dump_table(&tx, EXTENTS, |k| k.to_vec(), |v| v.to_vec())
        .into_iter()
        .filter(|(k, _)| ours(k, None))
        .count();
    (inodes.len(), entries, extents)
}

#[test]
fn a_large_snapshot_goes_in_steps_whole_between_them_and_leaves_nothing() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let blocks = large_tree(r);
    let main_refs: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    let snap = snapshot(r, "snap");
    let with_snap: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    assert!(with_snap.iter().zip(&main_refs).all(|(s, m)| *s == 2 * m));
    let (inodes, entries, extents) = rows_of(r, snap.id);
    assert!(
        inodes > 750 && entries > 750,
        "{inodes} inodes, {entries} entries"
    );
    assert!(extents > 2 * STEP + 750, "{extents} extents");

    r.run(Op::DeleteVolume {
        name: "snap".into(),
    })
    .unwrap();
    // The volume is gone at once (and its name free); the tree waits behind a mark on its
    // root, every reference still counted.
    assert!(r.read(|x| x.volume("snap")).is_err());
    assert_eq!(
        trim_marks(r),
        vec![trim::Trim {
            ino: snap.root,
            volume: snap.id,
            at: None,
            up_to: false,
        }]
    );
    assert_eq!(rows_of(r, snap.id), (inodes, entries, extents));
    // A mount that had it mounted still names its inodes: nothing changes them (no record
    // may touch what the steps remove), and no file's bytes are read, whole or not.
    let dir = r.lookup(snap.root, "top").unwrap().ino;
    let file = r.lookup(snap.root, "big").unwrap().ino;
    for op in [
        Op::SetXattr {
            ino: dir,
            name: b"user.k".to_vec(),
            value: b"w".to_vec(),
            mode: XattrMode::Any,
            creds: root_creds(),
        },
        Op::Accessed { ino: file },
        mknod(dir, "new", FileKind::File),
    ] {
        assert!(
            matches!(r.run(op.clone()), Err(NsError::NotFound(_))),
            "{op:?}"
        );
    }
    assert!(matches!(
        r.read(|x| x.extents(file, 0, 4096)),
        Err(NsError::NotFound(_))
    ));
    assert_eq!(rows_of(r, snap.id), (inodes, entries, extents));
    assert_eq!(
        blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
        with_snap
    );
    assert_consistent(r);
    let again = snapshot(r, "snap");
    assert_ne!(again.id, snap.id);
    r.run(Op::DeleteVolume {
        name: "snap".into(),
    })
    .unwrap();
    assert_eq!(trim_marks(r).len(), 2);

    // Each step takes a part, and fsck finds the rest whole.
    let mut steps = 0;
    let mut left = (inodes, entries, extents);
    while !r.write(|t| trim::trim_step(t, snap.root)).unwrap() {
        steps += 1;
        let now = rows_of(r, snap.id);
        assert!(
            now.0 <= left.0 && now.1 <= left.1 && now.2 <= left.2 && now != left,
            "{now:?} after {left:?}"
        );
        left = now;
        assert_consistent(r);
    }
    assert!(steps >= 2, "{steps} steps");
    assert_eq!(rows_of(r, snap.id), (0, 0, 0));
    assert_eq!(trim_marks(r).len(), 1);
    while !r.write(|t| trim::trim_step(t, again.root)).unwrap() {}
    assert!(trim_marks(r).is_empty());
    assert_eq!(rows_of(r, again.id), (0, 0, 0));
    assert_eq!(
        blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
        main_refs
    );
    assert_consistent(r);
    // "main" is as it was.
    let root = r.volume_root();
    assert_eq!(r.names(root), vec!["a", "big", "top"]);
    assert_eq!(r.lookup(root, "big").unwrap().nlink, 2);
    assert_eq!(
        rows_of(r, r.read(|x| x.volume("main")).unwrap().id),
        (inodes, entries, extents)
    );
}

#[test]
fn a_deleted_snapshots_steps_wait_until_the_deletion_has_left_the_merged_log() {
    // Region 1 has a peer: its records enter the merged log until the peer has said it
    // holds everything before them, and a rewind of that log could undo the deletion.
    let mut rs = regions_with_volume_in(2, &[RegionId(1)]);
    let r = &mut rs[0];
    let blocks = large_tree(r);
    let snap = snapshot(r, "snap");
    let with_snap: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    r.run(Op::DeleteVolume {
        name: "snap".into(),
    })
    .unwrap();
    assert!(trim_marks(r)[0].at.is_some());
    assert!(r.write(|t| trim::trim_step(t, snap.root)).unwrap());
    assert_eq!(
        blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
        with_snap
    );
    assert_eq!(trim_marks(r).len(), 1);
    // (A few rounds: the merged log leaves a batch at a time.)
    let ready = |r: &Region| {
        r.write(|t| {
            let m = trim::pending(t.region_state.open().unwrap()).unwrap()[0];
            trim::ready(t.oplog.open().unwrap(), &m).unwrap()
        })
    };
    for _ in 0..20 {
        promise_all(&mut rs);
        settle(&mut rs);
        if ready(&rs[0]) {
            break;
        }
    }
    let r = &mut rs[0];
    assert!(ready(r), "the deletion has left the merged log");
    while !r.write(|t| trim::trim_step(t, snap.root)).unwrap() {}
    assert!(trim_marks(r).is_empty());
    assert_eq!(rows_of(r, snap.id), (0, 0, 0));
    assert_consistent(r);
}

#[test]
fn a_snapshot_deeper_than_a_threads_stack_goes_in_steps() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let mut dir = r.volume_root();
    for i in 0..20_000 {
        dir = mkdir(r, dir, &format!("n{i}"));
    }
    let snap = snapshot(r, "deep");
    r.run(Op::DeleteVolume {
        name: "deep".into(),
    })
    .unwrap();
    let mut steps = 0;
    while !r.write(|t| trim::trim_step(t, snap.root)).unwrap() {
        steps += 1;
    }
    assert!(steps >= 9, "{steps} steps");
    assert_eq!(rows_of(r, snap.id), (0, 0, 0));
    assert!(trim_marks(r).is_empty());
    assert_consistent(r);
}
