//! A volume leaving a region (`leave.rs`), dropped in bounded steps from where the last
//! one stopped: a small volume leaving a region that holds a large one, a file of more
//! extents and a directory of more entries than a step drops, and a tombstone.

use meridian_proto::{BlockId, InodeId, RegionId};
use redb::ReadableDatabase;

use super::leave::{self, LEAVE_ROWS, LEAVE_SCAN};
use super::test_regions::*;

/// Live inodes and tombstones of `volume` in `r`, and extents keyed by any inode of it.
fn held(r: &Region, volume: u32) -> (usize, usize, usize) {
    let tx = r.db.begin_read().unwrap();
    let n = |v: u64| v.to_be_bytes().to_vec();
    let b = |v: &[u8]| v.to_vec();
    let inodes: Vec<u64> = dump_table(&tx, INODES, n, b)
        .into_iter()
        .filter(|(_, v)| serde_json::from_slice::<Inode>(v).unwrap().attr.volume == volume)
        .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    let tombs: Vec<u64> = dump_table(&tx, TOMBS, n, b)
        .into_iter()
        .filter(|(_, v)| serde_json::from_slice::<Tomb>(v).unwrap().inode.attr.volume == volume)
        .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    let extents = dump_table(&tx, EXTENTS, b, b)
        .into_iter()
        .filter(|(k, _)| {
            let ino = u64::from_be_bytes(k[..8].try_into().unwrap());
            inodes.contains(&ino) || tombs.contains(&ino)
        })
        .count();
    (inodes.len(), tombs.len(), extents)
}

#[test]
fn a_volume_leaves_a_region_in_bounded_steps_from_where_the_last_one_stopped() {
    // "main" lives in regions 1 and 2; "local" in region 1 alone, with more inodes than a
    // step looks at, numbered between main's root and the rest of main.
    let mut rs = regions(2);
    let main = rs[0].read(|x| x.volume("main")).unwrap();
    let local_root = make_volume(&mut rs[0], "local", vec![RegionId(1)]);
    let local = rs[0].read(|x| x.volume("local")).unwrap();
    let mk = |r: &mut Region, dir: InodeId, name: &str| {
        attr_of(r.run(mknod(dir, name, FileKind::File))).ino
    };
    let shared = BlockId::of(b"shared");
    let own = BlockId::of(b"main's own");
    for i in 0..LEAVE_SCAN + 500 {
        mk(&mut rs[0], local_root, &format!("l{i}"));
    }
    for i in 0..9 {
        let f = mk(&mut rs[0], main.root, &format!("m{i}"));
        commit_spaced(&mut rs[0], f, 1, 10, &[own]);
    }
    let kept = mk(&mut rs[0], local_root, "kept");
    commit_spaced(&mut rs[0], kept, 1, 10, &[shared]);
    let big = mk(&mut rs[0], main.root, "big");
    commit_spaced(&mut rs[0], big, 2 * LEAVE_ROWS + 100, 10, &[shared]);
    let gone = mk(&mut rs[0], main.root, "gone");
    commit_spaced(&mut rs[0], gone, 10, 10, &[own]);
    let root = main.root;
    rs[0].run(unlink(root, "gone")).unwrap();
    // A directory of more entries than a step drops.
    let wide = attr_of(rs[0].run(mknod(root, "wide", FileKind::Dir))).ino;
    for i in 0..LEAVE_ROWS + 50 {
        mk(&mut rs[0], wide, &format!("w{i}"));
    }
    settle(&mut rs);
    let files = 1 + 9 + 1 + 1 + LEAVE_ROWS + 50;
    let (live, _, extents) = held(&rs[0], main.id);
    assert_eq!(live, files);
    assert!(extents >= 2 * LEAVE_ROWS + 109, "{extents} extents");

    // Region 2 takes region 1 out of "main"; once both have settled past it, region 1
    // drops its copy.
    rs[1]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(2)],
        })
        .unwrap();
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    // The first step looks at the first LEAVE_SCAN rows only (main's root among them, the
    // rest of main past them), and stops there.
    assert!(!r.write(|t| leave::leave_step(t, main.id).unwrap()));
    let l = r
        .write(|t| leave::leaving(t.region_state.open().unwrap(), main.id).unwrap())
        .unwrap();
    assert!(!l.in_tombs && l.next > 0 && !l.done, "{l:?}");
    assert_eq!(held(r, main.id).0, files - 1, "only main's root went");
    // Entry rows of the wide directory, whether or not it still lives.
    let entries = |r: &Region| {
        let tx = r.db.begin_read().unwrap();
        dump_table(&tx, DIRENTS, |k| k.to_vec(), |v| v.to_vec())
            .into_iter()
            .filter(|(k, _)| k[..8] == wide.0.to_be_bytes())
            .count()
    };
    let mut steps = 1;
    let mut before = entries(r);
    while !r.write(|t| leave::leave_step(t, main.id).unwrap()) {
        steps += 1;
        assert!(steps < 50, "the steps end");
        let now = entries(r);
        assert!(
            before - now <= LEAVE_ROWS,
            "{} entries in one step",
            before - now
        );
        before = now;
    }
    // At least: a look past the first LEAVE_SCAN rows, the big file's extents over three
    // steps, the wide directory's entries over two.
    assert!(steps >= 5, "{steps} steps");
    assert_eq!(held(r, main.id), (0, 0, 0));
    assert!(r.read(|x| x.volume("main")).is_err());
    assert_eq!(refs(r, &own), 0);
    assert_eq!(refs(r, &shared), 1);
    assert_eq!(r.names(local_root).len(), LEAVE_SCAN + 501);
    assert_eq!(held(r, local.id).0, LEAVE_SCAN + 502);
    assert_consistent(r);
}
