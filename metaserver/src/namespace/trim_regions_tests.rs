//! Cuts in a volume of several regions (`trim.rs`): each region cuts its own rows as it
//! applies a truncate or a hole, and steps at its own pace once the record has left its
//! merged log; whatever reads a file's rows as its content (the merge's versions, conflict
//! copies, a removed file brought back) takes its cuts into account, so the regions hold
//! the same files throughout and the same rows once the steps are done.

use meridian_proto::{BlockId, InodeId};
use redb::ReadableDatabase;

use super::test_regions::*;
use super::trim::{self, STEP};
use super::trim_tests::{
    cut_from, cuts_of, extents_of, fragment, punch, set_size, steps_until_done, tombs_in,
};

/// A file of `STEP + STEP / 2` extents in region 1, delivered to region 2.
fn large_file(rs: &mut [Region], name: &str) -> (InodeId, Vec<BlockId>) {
    let f = file(&mut rs[0], name);
    let blocks = fragment(&mut rs[0], f, STEP + STEP / 2);
    settle(rs);
    (f, blocks)
}

/// The marks the leader would step now.
fn ready_marks(r: &Region) -> Vec<trim::Trim> {
    trim::ready_marks(&r.db.begin_read().unwrap()).unwrap()
}

/// Into the eleventh extent (4 KiB apart, 100 bytes each): it keeps its first 50.
const SIZE: u64 = 10 * 4096 + 50;

/// Steps every region through the marks of `f` once the records have left the logs, and
/// checks both regions end with the same rows, each block counted once per extent.
fn step_out(rs: &mut [Region], f: InodeId, blocks: &[BlockId]) {
    promise_all(rs);
    settle(rs);
    for r in rs.iter_mut() {
        assert_eq!(ready_marks(r), trim_marks(r), "region {}", r.id.0);
        steps_until_done(r, f);
        assert!(trim_marks(r).is_empty(), "region {}", r.id.0);
        assert!(blocks.iter().all(|b| refs(r, b) == extents_using(r, b)));
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

/// `f` reads as `want` (its size and extents) in region `r`.
fn reads(r: &Region, f: InodeId, want: &(u64, Vec<meridian_proto::ns::Extent>)) {
    assert_eq!(&file_extents(r, f), want, "region {}", r.id.0);
}

#[test]
fn a_truncate_in_a_volume_of_two_regions_is_cut_in_steps_in_each() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "cut");
    let n = STEP + STEP / 2;
    set_size(&mut rs[0], f, SIZE).unwrap();
    settle(&mut rs);
    let (size, live) = file_extents(&rs[0], f);
    assert_eq!(size, SIZE);
    assert_eq!(live.len(), 11);
    assert!(live.iter().all(|e| e.end() <= SIZE));
    for r in &mut rs {
        // Each region cut its own rows: the leftovers wait behind a mark that waits for
        // the truncate's record, and read as nothing.
        reads(r, f, &(size, live.clone()));
        assert_eq!(extents_of(r, f), n);
        assert_eq!(cut_from(r, f), Some(SIZE));
        let marks = trim_marks(r);
        assert_eq!(marks.len(), 1);
        assert!(marks[0].at.is_some());
        assert_consistent(r);
        assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
        assert_eq!(
            extents_of(r, f),
            n,
            "nothing dropped before the record left"
        );
    }
    step_out(&mut rs, f, &blocks);
    for r in &rs {
        assert_eq!(extents_of(r, f), 11);
        assert!(cuts_of(r, f).is_empty());
        assert_eq!(file_extents(r, f), (size, live.clone()));
        let left: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
        assert_eq!(left, [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    }
}

#[test]
fn a_hole_punched_in_the_second_region_is_cut_in_steps_in_each() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "holed");
    let n = STEP + STEP / 2;
    // From the middle of the third extent to the middle of the third from last.
    let (from, to) = (2 * 4096 + 50, (n as u64 - 3) * 4096 + 50);
    punch(&mut rs[1], f, from, to - from).unwrap();
    settle(&mut rs);
    let (size, live) = file_extents(&rs[1], f);
    assert_eq!(live.len(), 6);
    assert!(live.iter().all(|e| e.end() <= from || e.offset >= to));
    for r in &mut rs {
        reads(r, f, &(size, live.clone()));
        assert_eq!(
            extents_of(r, f),
            n + 1,
            "the far edge split off its own piece"
        );
        assert_eq!(cuts_of(r, f).len(), 1);
        assert_consistent(r);
    }
    step_out(&mut rs, f, &blocks);
    for r in &rs {
        assert_eq!(extents_of(r, f), 6);
        assert_eq!(file_extents(r, f), (size, live.clone()));
    }
}

/// The blocks of the extents at `offset` in the files of `r`'s volume root.
fn blocks_at(r: &Region, offset: u64) -> Vec<(String, BlockId, usize, usize)> {
    let root = r.volume_root();
    r.names(root)
        .into_iter()
        .map(|name| {
            let ino = r.lookup(root, &name).unwrap().ino;
            let (_, live) = file_extents(r, ino);
            let at = live.iter().find(|e| e.offset == offset).unwrap().block;
            (name, at, live.len(), extents_of(r, ino))
        })
        .collect()
}

#[test]
fn concurrent_writes_to_a_cut_file_keep_its_content_alone_in_both_regions() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "cut");
    set_size(&mut rs[0], f, SIZE).unwrap();
    settle(&mut rs);
    assert!(rs.iter().all(|r| cut_from(r, f) == Some(SIZE)));
    // Both regions write the second extent before hearing of the other's write.
    let (wa, a) = write_op(f, 4096, b"written in region 1");
    let (wb, b) = write_op(f, 4096, b"written in region 2");
    rs[0].run(wa).unwrap();
    rs[1].run(wb).unwrap();
    settle(&mut rs);
    for r in &rs {
        // The file and its conflict copy hold one writer's bytes each, over the content
        // the truncate left: eleven extents, and never a leftover.
        let files = blocks_at(r, 4096);
        assert_eq!(files.len(), 2, "{files:?}");
        let written: std::collections::BTreeSet<BlockId> = files.iter().map(|f| f.1).collect();
        assert_eq!(written, [a, b].into(), "region {}", r.id.0);
        for (name, _, live, rows) in &files {
            assert_eq!((*live, *rows), (11, 11), "{name} in region {}", r.id.0);
            let ino = r.lookup(r.volume_root(), name).unwrap().ino;
            assert!(cuts_of(r, ino).is_empty(), "{name} holds no cut");
        }
        // The merge took the cuts and their leftovers in the later write's record: undone,
        // that record brings them back, so the steps wait for it.
        assert_eq!(trim_marks(r)[0].at, r.head(), "region {}", r.id.0);
        assert_eq!(r.conflicts().len(), 1);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    step_out(&mut rs, f, &blocks);
    assert_eq!(blocks_at(&rs[0], 4096), blocks_at(&rs[1], 4096));
}

#[test]
fn a_file_whose_cuts_a_conflict_took_is_removed_with_its_mark_and_fsck_stays_clean() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "cut");
    set_size(&mut rs[0], f, SIZE).unwrap();
    settle(&mut rs);
    let (wa, _) = write_op(f, 4096, b"written in region 1");
    let (wb, _) = write_op(f, 4096, b"written in region 2");
    rs[0].run(wa).unwrap();
    rs[1].run(wb).unwrap();
    settle(&mut rs);
    // The merge took the file's cuts and leftovers; its mark waits for that record.
    let root = rs[0].volume_root();
    rs[0].run(unlink(root, "cut")).unwrap();
    settle(&mut rs);
    for r in &rs {
        assert_eq!(tombs_in(r), 1);
        assert_eq!(trim_marks(r).len(), 1);
        assert_consistent(r);
    }
    step_out(&mut rs, f, &blocks);
}

#[test]
fn a_removed_cut_file_keeps_its_leftovers_until_its_tombstone_is_purged() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "cut");
    let n = STEP + STEP / 2;
    set_size(&mut rs[0], f, SIZE).unwrap();
    // The truncate's record leaves the merged logs: its mark is ready.
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    let root = rs[0].volume_root();
    rs[0].run(unlink(root, "cut")).unwrap();
    settle(&mut rs);
    for r in &mut rs {
        // The tombstone keeps its cuts; a late change could bring the file back, so the
        // steps leave its leftovers alone though the mark's record has left the log.
        assert_eq!((tombs_in(r), extents_of(r, f)), (1, n), "region {}", r.id.0);
        let marks = trim_marks(r);
        assert_eq!(marks.len(), 1);
        assert!(r.write(|t| trim::ready(t.oplog.open().unwrap(), &marks[0]).unwrap()));
        // The leader proposes no step for it, and a step proposed drops nothing.
        assert_eq!(ready_marks(r), []);
        assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
        assert_eq!(extents_of(r, f), n);
        assert_consistent(r);
    }
    // fsck knows a tombstone's cuts: without the mark, nothing would drop its leftovers.
    let key = format!("trim/{:020}", f.0);
    let mark = serde_json::to_vec(&trim_marks(&rs[0])[0]).unwrap();
    rs[0].write(|t| t.write(Tab::Trims, key.as_bytes(), None).unwrap());
    let found = {
        let tx = rs[0].db.begin_read().unwrap();
        super::check::check(&tx, 0, 10_000).unwrap().problems
    };
    assert!(
        found.iter().any(|p| p.contains("in a cut, with no mark")),
        "{found:?}"
    );
    rs[0].write(|t| t.write(Tab::Trims, key.as_bytes(), Some(&mark)).unwrap());
    // Settled past the removal (a later record to wait for), the tombstone is purged and
    // the steps take everything.
    rs[0].run(mknod(root, "later", FileKind::File)).unwrap();
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    step_out(&mut rs, f, &blocks);
    for r in &rs {
        assert_eq!((tombs_in(r), extents_of(r, f)), (0, 0), "region {}", r.id.0);
        assert!(blocks.iter().all(|b| refs(r, b) == 0));
    }
}

#[test]
fn a_cut_file_brought_back_by_a_concurrent_write_reads_as_it_was_cut() {
    let mut rs = regions(2);
    let (f, blocks) = large_file(&mut rs, "cut");
    set_size(&mut rs[0], f, SIZE).unwrap();
    settle(&mut rs);
    let root = rs[0].volume_root();
    let (w, written) = write_op(f, 4096, b"written in region 2");
    rs[0].run(unlink(root, "cut")).unwrap();
    rs[1].run(w).unwrap();
    settle(&mut rs);
    for r in &rs {
        let back = r
            .lookup(root, "cut")
            .expect("the write brings the file back");
        assert_eq!(back.ino, f);
        let (size, live) = file_extents(r, f);
        assert_eq!((size, live.len()), (SIZE, 11), "region {}", r.id.0);
        assert_eq!(live[1].block, written);
        assert!(live.iter().all(|e| e.end() <= SIZE));
        assert_consistent(r);
    }
    step_out(&mut rs, f, &blocks);
    for r in &rs {
        assert_eq!(extents_of(r, f), 11);
    }
}

#[test]
fn a_volume_brought_into_a_second_region_keeps_its_cuts() {
    let mut rs = regions_with_volume_in(2, &[meridian_proto::RegionId(1)]);
    let r = &mut rs[0];
    let f = file(r, "cut");
    let n = STEP;
    fragment(r, f, n);
    set_size(r, f, 4096 * 5).unwrap();
    assert_eq!(trim_marks(r).len(), 1);
    let before = file_extents(r, f);
    // The change of regions no longer drops the leftovers in its own entry: the image
    // the second region gets holds the file's content alone (`backfill_tests.rs`).
    r.run(Op::SetVolumeRegions {
        name: "main".into(),
        regions: vec![meridian_proto::RegionId(1), meridian_proto::RegionId(2)],
    })
    .unwrap();
    assert_eq!(extents_of(r, f), n);
    assert_eq!(cut_from(r, f), Some(4096 * 5));
    assert_eq!(file_extents(r, f), before);
    assert_consistent(r);
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    steps_until_done(r, f);
    assert_eq!(extents_of(r, f), 5);
    assert_eq!(file_extents(r, f), before);
    assert_consistent(r);
}
