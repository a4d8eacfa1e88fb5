//! An unfinished copy removed in steps (`copy_drop.rs`): its row goes at once, its rows by
//! its range of inode numbers a step at a time, fsck finds nothing wrong between steps
//! (nor while a copy is being made), and nothing of it or the references it held is left.

use meridian_proto::{BlockId, Hlc, InodeId, RegionId};
use redb::ReadableDatabase;

use super::copy_drop::{self, CopyDrop};
use super::ops::copy::{self, Batch, CopyAbort, CopyBegin, CopyRows, Cursor, Limits, Numbering};
use super::test_regions::*;
use super::tree_drop_tests::{large_tree, rows_of};
use super::trim::{INLINE, STEP};

fn stamp(r: &mut Region) -> (Hlc, Timespec) {
    r.phys += 1;
    (
        r.clock.now(r.phys),
        Timespec::from_nanos(r.phys * 1_000_000),
    )
}

/// A copy of "main" named `name` in batches of at most 300 rows and 300 items, stopped
/// once `copied` inodes (but the root) are copied, or all of them: the copy as it then is
/// (still being made).
fn copy_part(r: &mut Region, name: &str, copied: u64) -> Volume {
    let (hlc, now) = stamp(r);
    let begin = CopyBegin {
        source: "main".into(),
        name: name.into(),
        read_only: true,
        hlc,
        now,
        by: 7,
    };
    let Ok(Reply::Volume(vol)) = r.write(|t| copy::begin(t, &begin)) else {
        panic!("no copy began")
    };
    let tx = r.db.begin_read().unwrap();
    let plan = copy::plan(&tx, "main", r.id).unwrap();
    let reserve = CopyRows {
        volume: vol.id,
        reserve: plan.order.len() as u64,
        rows: Vec::new(),
        done: None,
    };
    let Ok(Reply::Volume(vol)) = r.write(|t| copy::rows(t, &reserve)) else {
        panic!("no numbers reserved")
    };
    let numbering = Numbering::new(&plan, &vol, vol.copying.as_ref().unwrap().base).unwrap();
    let mut cur = Cursor::default();
    loop {
        let now_copied = r.read(|x| x.volume(name)).unwrap().copying.unwrap().copied;
        if plan.done(&cur) || now_copied >= copied {
            break;
        }
        let (batch, next) = copy::read_rows(
            &tx,
            &plan,
            &vol,
            &numbering,
            cur,
            Limits::new(300, 300),
            now,
        )
        .unwrap();
        cur = next;
        let written = match batch {
            Batch::Rows(rows) => r.write(|t| {
                copy::rows(
                    t,
                    &CopyRows {
                        volume: vol.id,
                        reserve: 0,
                        rows,
                        done: None,
                    },
                )
            }),
            Batch::Extents(more) => r.write(|t| copy::extents(t, &more)),
        };
        written.unwrap();
    }
    r.read(|x| x.volume(name)).unwrap()
}

fn remove(r: &mut Region, vol: &Volume) -> Result<Reply, NsError> {
    let (hlc, now) = stamp(r);
    let abort = CopyAbort {
        volume: vol.id,
        hlc,
        now,
        request: None,
    };
    r.write(|t| copy::remove(t, &abort))
}

fn removals(r: &Region) -> Vec<CopyDrop> {
    let tx = r.db.begin_read().unwrap();
    let state = super::merge::state_table(&tx).unwrap().unwrap();
    copy_drop::pending(&state).unwrap()
}

#[test]
fn an_unfinished_copy_goes_by_its_range_in_steps_and_leaves_nothing() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let blocks = large_tree(r);
    let main = r.read(|x| x.volume("main")).unwrap();
    let main_rows = rows_of(r, main.id);
    let main_refs: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();

    // Stopped a few batches in: a directory's entries name inodes not yet written, and a
    // file's count a link not yet written. fsck does not check a copy being made.
    let half = copy_part(r, "half", 400);
    let c = half.copying.clone().expect("still being made");
    assert!(c.copied >= 400 && c.copied < c.inodes, "{c:?}");
    let (inodes, entries, extents) = rows_of(r, half.id);
    assert!(
        inodes + entries + extents > INLINE + STEP,
        "{inodes} {entries} {extents}"
    );
    let with_half: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    assert_ne!(with_half, main_refs);
    assert_consistent(r);

    // The row goes at once (the name is free), a few rows with it, the rest behind a mark.
    remove(r, &half).unwrap();
    assert!(r.read(|x| x.volume("half")).is_err());
    let marked = removals(r);
    assert_eq!(marked, vec![CopyDrop::of(&half).unwrap()]);
    let after = rows_of(r, half.id);
    let gone = (inodes + entries + extents) - (after.0 + after.1 + after.2);
    assert_eq!(gone, INLINE, "{after:?}");
    assert_consistent(r);
    // The same name is copied again meanwhile, in full.
    let again = copy_part(r, "half", u64::MAX);
    assert!(again.copying.is_some());
    let done = CopyRows {
        volume: again.id,
        reserve: 0,
        rows: Vec::new(),
        done: Some(copy::CopyDone {
            used_bytes: main.used_bytes,
            used_inodes: main.used_inodes,
        }),
    };
    r.write(|t| copy::rows(t, &done)).unwrap();
    assert_eq!(rows_of(r, again.id), main_rows);

    // Each step takes a part, at most a step's rows; fsck finds nothing wrong between.
    let mut left = after;
    let mut steps = 0;
    while !r.write(|t| copy_drop::step(t, half.root)).unwrap() {
        steps += 1;
        let now = rows_of(r, half.id);
        let took = (left.0 + left.1 + left.2) - (now.0 + now.1 + now.2);
        assert!(took > 0 && took <= STEP, "{now:?} after {left:?}");
        left = now;
        assert_consistent(r);
    }
    assert!(steps >= 1, "{steps} steps");
    assert_eq!(rows_of(r, half.id), (0, 0, 0));
    assert!(r.read(|x| x.getattr(half.root)).is_err());
    assert!(removals(r).is_empty());
    // A step proposed twice changes nothing.
    assert!(r.write(|t| copy_drop::step(t, half.root)).unwrap());
    assert_consistent(r);
    // The copy made again, and "main", are whole; the references are theirs alone.
    assert_eq!(rows_of(r, again.id), main_rows);
    assert_eq!(rows_of(r, main.id), main_rows);
    assert_eq!(
        blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
        main_refs.iter().map(|n| 2 * n).collect::<Vec<_>>()
    );
    check_tree(r);
}

#[test]
fn a_small_unfinished_copy_goes_at_once_and_a_finished_one_is_refused() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let root = r.volume_root();
    let block = BlockId::of(b"small");
    for i in 0..20 {
        let f = attr_of(r.run(mknod(root, &format!("f{i}"), FileKind::File))).ino;
        commit_spaced(r, f, 3, 10, &[block]);
    }
    let before = refs(r, &block);
    let half = copy_part(r, "half", 10);
    let (inodes, entries, extents) = rows_of(r, half.id);
    assert!(
        inodes > 10 && entries > 10 && extents > 30,
        "{inodes} {entries} {extents}"
    );
    assert!(refs(r, &block) > before);
    // Deleted by a client's request: a retry of it is answered as the first time, by the
    // removal or by the deletion its path takes once the copy is gone.
    let (hlc, now) = stamp(r);
    let deleted = CopyAbort {
        volume: half.id,
        hlc,
        now,
        request: Some((9, 1)),
    };
    assert_eq!(r.write(|t| copy::remove(t, &deleted)), Ok(Reply::Done));
    assert_eq!(refs(r, &block), before);
    assert_eq!(r.write(|t| copy::remove(t, &deleted)), Ok(Reply::Done));
    let (hlc, now) = stamp(r);
    let retried = Command {
        op: Op::DeleteVolume {
            name: "half".into(),
        },
        hlc,
        now,
        request: Some((9, 1)),
        ino: None,
        lease: false,
    };
    assert_eq!(
        r.write(|t| super::apply::apply(t, &retried)),
        Ok(Reply::Done)
    );
    // Without the request's outcome kept, the deletion finds no such volume.
    let other = Command {
        request: Some((9, 2)),
        ..retried
    };
    assert!(matches!(
        r.write(|t| super::apply::apply(t, &other)),
        Err(NsError::NotFound(_))
    ));
    assert!(removals(r).is_empty());
    assert_eq!(rows_of(r, half.id), (0, 0, 0));
    assert!(r.read(|x| x.getattr(half.root)).is_err());
    // A volume gone already: nothing to do.
    remove(r, &half).unwrap();
    // A finished volume is not removed so, and nothing changes.
    let main = r.read(|x| x.volume("main")).unwrap();
    let before = rows_of(r, main.id);
    assert!(matches!(remove(r, &main), Err(NsError::Invalid(_))));
    assert_eq!(rows_of(r, main.id), before);
    assert_consistent(r);
}

#[test]
fn a_copys_range_is_its_reserved_numbers_in_its_roots_region() {
    let root = InodeId::new(RegionId(3), 7).unwrap();
    let range = copy_drop::copy_range(root, 100, 5);
    assert_eq!(range.start, InodeId::new(RegionId(3), 100).unwrap().0);
    assert_eq!(range.end - range.start, 5);
    // Nothing reserved: no range.
    assert!(copy_drop::copy_range(root, 0, 0).is_empty());
}
