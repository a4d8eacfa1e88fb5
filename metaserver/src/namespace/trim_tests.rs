//! Extents dropped in steps (`trim.rs`): a removed file's, a small file's at once, a large
//! file's behind a mark that fsck accounts for, until the steps have dropped every one and
//! every reference they held; and what a truncate cuts off a file, which nothing reads and
//! no later size brings back.

use meridian_proto::{BlockId, InodeId, RegionId};
use redb::{ReadableDatabase, ReadableTable};

use super::test_regions::*;
use super::trim::{self, INLINE, MAX_CUTS, STEP};
use super::types::Cut;

/// `n` extents of 100 bytes, 4 KiB apart (none merge), naming ten blocks in turn,
/// committed in pieces.
pub(super) fn fragment(r: &mut Region, ino: InodeId, n: usize) -> Vec<BlockId> {
    let blocks: Vec<BlockId> = (0..10u8).map(|i| BlockId::of(&[i; 3])).collect();
    commit_spaced(r, ino, n, 100, &blocks);
    assert_eq!(extents_of(r, ino), n);
    blocks
}

/// Extent rows of `ino`, whether or not the inode lives.
pub(super) fn extents_of(r: &Region, ino: InodeId) -> usize {
    let tx = r.db.begin_read().unwrap();
    let t = tx.open_table(EXTENTS).unwrap();
    let (lo, hi) = (pair_key(ino.0, 0), pair_key(ino.0 + 1, 0));
    t.range(lo.as_slice()..hi.as_slice()).unwrap().count()
}

fn marks_in(t: &WriteTables<'_>) -> Vec<trim::Trim> {
    trim::pending(t.region_state.open().unwrap()).unwrap()
}

#[test]
fn a_small_files_extents_go_with_its_last_name() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "small");
    let blocks = fragment(r, f, INLINE);
    r.run(unlink(r.volume_root(), "small")).unwrap();
    assert!(extents_of(r, f) == 0);
    assert!(trim_marks(r).is_empty());
    assert!(blocks.iter().all(|b| refs(r, b) == 0));
    assert_consistent(r);
}

#[test]
fn a_large_files_extents_are_dropped_in_steps_and_fsck_accounts_for_them_meanwhile() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let keep = file(r, "keep");
    fragment(r, keep, 3);
    let f = file(r, "large");
    let n = STEP + STEP / 2;
    let blocks = fragment(r, f, n);
    let before: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    assert!(before.iter().all(|&n| n > 0));
    r.run(unlink(r.volume_root(), "large")).unwrap();
    // The name and the inode are gone at once; the extents wait behind the mark, still
    // counting their blocks' references, and fsck finds nothing wrong.
    assert!(matches!(
        r.lookup(r.volume_root(), "large"),
        Err(NsError::NotFound(_))
    ));
    assert_eq!(extents_of(r, f), n);
    let volume = trim_marks(r)[0].volume;
    assert_eq!(
        trim_marks(r),
        vec![trim::Trim {
            ino: f,
            volume,
            at: None,
            up_to: false,
        }]
    );
    assert_eq!(
        blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
        before
    );
    assert_consistent(r);

    assert!(!r.write(|t| trim::trim_step(t, f)).unwrap());
    assert_eq!(extents_of(r, f), n - STEP);
    assert_consistent(r);
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert!(extents_of(r, f) == 0);
    assert!(trim_marks(r).is_empty());
    // The references the removed file held are gone; the other file's three remain.
    let left: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    assert_eq!(left, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(extents_of(r, keep), 3);
    assert_consistent(r);
    // A step proposed again (a leader that changed meanwhile) changes nothing.
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert_consistent(r);
}

#[test]
fn a_refused_command_that_removed_a_large_file_leaves_no_mark() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "large");
    fragment(r, f, INLINE + 1);
    let volume = r.read(|x| x.getattr(f)).unwrap().volume;
    // As `apply` does for a command that fails after it wrote: what the record overwrote
    // goes back, the mark with it.
    let marked_then_restored = r.write(|t| {
        t.begin_record(meridian_proto::Hlc::default(), false);
        trim::drop_extents(t, f, volume).unwrap();
        let images = t.end_record();
        let marked = trim::pending(t.region_state.open().unwrap()).unwrap();
        t.restore(&images).unwrap();
        marked
    });
    assert_eq!(
        marked_then_restored,
        vec![trim::Trim {
            ino: f,
            volume,
            at: None,
            up_to: false,
        }]
    );
    assert!(trim_marks(r).is_empty());
    assert_eq!(extents_of(r, f), INLINE + 1);
}

pub(super) fn set_size(r: &mut Region, ino: InodeId, size: u64) -> Result<Reply, NsError> {
    r.run(Op::SetAttr {
        ino,
        set: SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
        creds: root_creds(),
    })
}

/// Where the file's cut from its end on starts, if it has one.
pub(super) fn cut_from(r: &Region, ino: InodeId) -> Option<u64> {
    let cuts = cuts_of(r, ino);
    cuts.iter().find(|c| c.to == u64::MAX).map(|c| c.from)
}

pub(super) fn cuts_of(r: &Region, ino: InodeId) -> Vec<Cut> {
    let tx = r.db.begin_read().unwrap();
    read_inode(&tx.open_table(INODES).unwrap(), ino)
        .unwrap()
        .unwrap()
        .cuts
}

/// Runs steps on `ino` until none are left; returns how many it took.
pub(super) fn steps_until_done(r: &mut Region, ino: InodeId) -> usize {
    assert!(
        r.write(|t| {
            let m = marks_in(t).into_iter().find(|m| m.ino == ino);
            m.is_none_or(|m| trim::ready(t.oplog.open().unwrap(), &m).unwrap())
        }),
        "the mark of {ino} is ready"
    );
    (1..100)
        .find(|_| r.write(|t| trim::trim_step(t, ino)).unwrap())
        .expect("the steps end")
}

#[test]
fn a_truncate_of_many_extents_leaves_them_to_steps_and_nothing_reads_them() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "cut");
    let n = STEP + STEP / 2;
    let blocks = fragment(r, f, n);
    // Into the eleventh extent (4 KiB apart, 100 bytes each): it keeps its first 50.
    let size = 10 * 4096 + 50;
    set_size(r, f, size).unwrap();
    let (got, live) = file_extents(r, f);
    assert_eq!(got, size);
    assert_eq!(live.len(), 11);
    assert_eq!(live[10].len, 50);
    assert!(live.iter().all(|e| e.end() <= size));
    // The rest waits behind the mark, still counted, and fsck finds nothing wrong.
    assert_eq!(extents_of(r, f), n);
    assert_eq!(cut_from(r, f), Some(size));
    let volume = trim_marks(r)[0].volume;
    assert_eq!(
        trim_marks(r),
        vec![trim::Trim {
            ino: f,
            volume,
            at: None,
            up_to: false,
        }]
    );
    assert_consistent(r);

    assert_eq!(steps_until_done(r, f), 2);
    assert_eq!(extents_of(r, f), 11);
    assert!(trim_marks(r).is_empty());
    assert_eq!(cut_from(r, f), None);
    assert_eq!(file_extents(r, f), (size, live));
    // Each block keeps one reference per extent left: the first eleven use blocks 0 to 9,
    // block 0 twice.
    let left: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
    assert_eq!(left, [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert!(blocks.iter().all(|b| refs(r, b) == extents_using(r, b)));
    assert_consistent(r);
}

#[test]
fn a_file_made_longer_before_the_steps_shows_nothing_that_was_cut() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "rewritten");
    let n = INLINE * 2;
    let old = fragment(r, f, n);
    set_size(r, f, 0).unwrap();
    assert_eq!(file_extents(r, f), (0, Vec::new()));
    // Made longer over the old extents: holes, not the old bytes, and nothing dropped for
    // it.
    let grown = 300 * 4096;
    set_size(r, f, grown).unwrap();
    assert_eq!(file_extents(r, f), (grown, Vec::new()));
    assert_eq!(cut_from(r, f), Some(0));
    assert_eq!(extents_of(r, f), n);
    assert_consistent(r);
    // A write past the end, over more of them, shows only itself: the cut gives up the
    // write's stretch (the one leftover across its start now ends there) and keeps both
    // sides.
    let at = 1000 * 4096 + 7;
    let (op, block) = write_op(f, at, b"new");
    r.run(op).unwrap();
    let (size, live) = file_extents(r, f);
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].offset, live[0].block), (at, block));
    assert_eq!(size, live[0].end());
    assert_eq!(
        cuts_of(r, f),
        vec![
            Cut { from: 0, to: at },
            Cut {
                from: size,
                to: u64::MAX
            }
        ]
    );
    assert_eq!(extents_of(r, f), n + 1);
    assert_consistent(r);
    // The steps drop the rest of what was cut, and nothing written since.
    steps_until_done(r, f);
    assert_eq!(extents_of(r, f), 1);
    assert_eq!(file_extents(r, f), (size, live));
    assert!(old.iter().all(|b| refs(r, b) == 0));
    assert_eq!(refs(r, &block), 1);
    assert!(trim_marks(r).is_empty());
    assert_consistent(r);
}

#[test]
fn a_truncate_of_few_extents_cuts_them_at_once() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "short");
    fragment(r, f, INLINE + 10);
    // 10 extents past the cut: dropped in the truncate's own entry.
    set_size(r, f, INLINE as u64 * 4096).unwrap();
    assert_eq!(extents_of(r, f), INLINE);
    assert_eq!(cut_from(r, f), None);
    assert!(trim_marks(r).is_empty());
    assert_consistent(r);
}

#[test]
fn a_compactions_replacement_in_a_cut_is_refused() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "cut");
    let blocks = fragment(r, f, INLINE * 2);
    set_size(r, f, 4096).unwrap();
    // The file holds one extent there; the rows hold the leftover at 4096 too.
    let piece = |i: usize| Extent {
        offset: i as u64 * 4096,
        len: 100,
        block: blocks[i],
        block_offset: 0,
        block_len: 100,
    };
    let compact = |r: &mut Region, replacement: Extent| {
        r.run(Op::Compact {
            ino: f,
            offset: 0,
            len: 8192,
            expected: vec![piece(0)],
            replacement: vec![replacement],
        })
    };
    // A replacement that starts in the cut, or reaches into it.
    let refused = compact(r, piece(1));
    assert!(matches!(refused, Err(NsError::Conflict(_))), "{refused:?}");
    let across = Extent {
        offset: 0,
        len: 4096 + 100,
        block: BlockId::of(b"whole"),
        block_offset: 0,
        block_len: 4096 + 100,
    };
    let refused = compact(r, across);
    assert!(matches!(refused, Err(NsError::Conflict(_))), "{refused:?}");
    assert_consistent(r);
    // One the file's content expects, the leftover beside it no matter.
    let moved = Extent {
        block: BlockId::of(b"moved"),
        ..piece(0)
    };
    compact(r, moved).unwrap();
    assert_eq!(file_extents(r, f), (4096, vec![moved]));
    assert_eq!(extents_of(r, f), INLINE * 2);
    assert_consistent(r);
}

#[test]
fn a_marks_steps_wait_until_its_record_has_left_the_merged_log() {
    // Volume "main" lives in region 1 alone, and region 1 has a peer: its records enter
    // the merged log until the peer has said it holds everything before them.
    let mut rs = regions_with_volume_in(2, &[meridian_proto::RegionId(1)]);
    let r = &mut rs[0];
    let f = file(r, "cut");
    let n = INLINE * 2;
    fragment(r, f, n);
    let gone = file(r, "gone");
    fragment(r, gone, n);
    set_size(r, f, 0).unwrap();
    r.run(unlink(r.volume_root(), "gone")).unwrap();
    assert!(trim_marks(r).iter().all(|m| m.at.is_some()));
    // A step drops nothing yet (a rewind of the log could still undo the writes that made
    // those extents), and tells the leader to stop for now.
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert!(r.write(|t| trim::trim_step(t, gone)).unwrap());
    assert_eq!((extents_of(r, f), extents_of(r, gone)), (n, n));
    assert_eq!(trim_marks(r).len(), 2);
    assert_consistent(r);
    // Once the peer has caught up and promised, the records leave the log, and the steps
    // drop everything.
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    assert!(
        r.write(|t| trim_marks(r)
            .iter()
            .all(|m| trim::ready(t.oplog.open().unwrap(), m).unwrap())),
        "the marks' records left the merged log"
    );
    steps_until_done(r, f);
    steps_until_done(r, gone);
    assert_eq!((extents_of(r, f), extents_of(r, gone)), (0, 0));
    assert!(trim_marks(r).is_empty());
    assert_consistent(r);
}

#[test]
fn a_write_that_takes_a_whole_cut_away_leaves_fsck_clean_until_the_next_step() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    fragment(r, f, INLINE * 2);
    punch(r, f, 4096, 4096 * 1500).unwrap();
    assert_eq!(cuts_of(r, f).len(), 1);
    // One extent over the whole hole.
    let block = BlockId::of(b"over");
    r.run(Op::CommitExtents {
        ino: f,
        extents: vec![Extent {
            offset: 4096,
            len: 4096 * 1500,
            block,
            block_offset: 0,
            block_len: 4096 * 1500,
        }],
        size: 0,
        base_version: None,
        creds: root_creds(),
        staged: Vec::new(),
    })
    .unwrap();
    assert!(cuts_of(r, f).is_empty());
    assert_eq!(trim_marks(r).len(), 1);
    assert_consistent(r);
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert!(trim_marks(r).is_empty());
    assert_eq!(refs(r, &block), 1);
    assert_consistent(r);
}

#[test]
fn a_copy_of_a_range_into_a_cut_shows_and_outlives_the_steps() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let src = file(r, "src");
    let (op, block) = write_op(src, 0, b"copied");
    r.run(op).unwrap();
    let f = file(r, "cut");
    fragment(r, f, INLINE * 2);
    set_size(r, f, 0).unwrap();
    let at = 700 * 4096 + 5;
    r.run(Op::CopyRange {
        src,
        src_offset: 0,
        dst: f,
        dst_offset: at,
        len: 100,
        creds: root_creds(),
    })
    .unwrap();
    let expected = (
        at + 100,
        vec![Extent {
            offset: at,
            len: 100,
            block,
            block_offset: 0,
            block_len: 100,
        }],
    );
    assert_eq!(file_extents(r, f), expected);
    assert_consistent(r);
    steps_until_done(r, f);
    assert_eq!(file_extents(r, f), expected);
    assert_eq!(refs(r, &block), 2);
    assert_consistent(r);
}

#[test]
fn a_copy_of_a_range_over_many_rows_comes_back_short_and_the_rest_follows() {
    use super::ops::content::COPY_ROWS;
    let mut rs = regions(1);
    let r = &mut rs[0];
    let src = file(r, "src");
    let n = COPY_ROWS * 2 + 10;
    fragment(r, src, n);
    let (size, want) = file_extents(r, src);
    // A destination of many rows too, over the stretch the copy lands in.
    let dst = file(r, "dst");
    fragment(r, dst, n);
    // As the leader proposes a client's copy (`NsReader::bounded`).
    let propose = |r: &mut Region, op: Op| {
        let op = r.read(|x| x.bounded(op)).unwrap();
        r.run(op)
    };
    let copy = |r: &mut Region, at: u64| {
        let op = Op::CopyRange {
            src,
            src_offset: at,
            dst,
            dst_offset: at,
            len: u64::MAX / 4,
            creds: root_creds(),
        };
        match propose(r, op) {
            Ok(Reply::Copied(n, _)) => n,
            other => panic!("{other:?}"),
        }
    };
    // One entry takes at most COPY_ROWS rows of either file: the copy stops where the
    // next one starts, and the caller asks again from there.
    let mut at = 0;
    let mut calls = Vec::new();
    while at < size {
        let got = copy(r, at);
        assert!(got > 0);
        calls.push(got);
        at += got;
    }
    assert_eq!(calls[0], COPY_ROWS as u64 * 4096);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(file_extents(r, dst), (size, want));
    assert_consistent(r);
    // A source of one extent over a destination of many: the destination's rows bound it.
    let one = file(r, "one");
    let (op, _) = write_op(one, 0, b"one");
    r.run(op).unwrap();
    set_size(r, one, size).unwrap();
    let other = file(r, "other");
    fragment(r, other, n);
    let got = propose(
        r,
        Op::CopyRange {
            src: one,
            src_offset: 0,
            dst: other,
            dst_offset: 0,
            len: size,
            creds: root_creds(),
        },
    );
    assert!(
        matches!(got, Ok(Reply::Copied(n, _)) if n == COPY_ROWS as u64 * 4096),
        "{got:?}"
    );
    assert_consistent(r);
}

#[test]
fn a_page_of_extents_counts_what_the_file_holds_not_its_leftovers() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let n = INLINE * 2;
    fragment(r, f, n);
    // A hole over all but the first ten and the last ten extents, left to the steps.
    punch(r, f, 10 * 4096, (n as u64 - 20) * 4096).unwrap();
    assert_eq!(extents_of(r, f), n);
    let page = |r: &Region, offset: u64, limit: usize| {
        r.read(|x| x.extents_page(f, offset, u64::MAX / 2, limit))
            .unwrap()
    };
    assert_eq!(page(r, 0, 5).len(), 5);
    // Past the hole's leftovers, the page goes on with what follows it.
    let twelve = page(r, 0, 12);
    assert_eq!(twelve.len(), 12);
    assert_eq!(twelve[10].offset, (n as u64 - 10) * 4096);
    assert_eq!(page(r, 0, usize::MAX), file_extents(r, f).1);
    assert_eq!(page(r, 0, usize::MAX).len(), 20);
}

#[test]
fn a_copy_of_a_volume_takes_a_cut_files_live_extents_alone() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "cut");
    fragment(r, f, INLINE * 2);
    set_size(r, f, 3 * 4096).unwrap();
    let Reply::Volume(snap) = r
        .run(Op::CloneVolume {
            source: "main".into(),
            name: "snap".into(),
            read_only: true,
        })
        .unwrap()
    else {
        panic!("no volume")
    };
    let copy = r.lookup(snap.root, "cut").unwrap().ino;
    assert_eq!(extents_of(r, copy), 3);
    assert_eq!(cut_from(r, copy), None);
    assert_eq!(file_extents(r, copy), file_extents(r, f));
    assert_consistent(r);
}

pub(super) fn punch(r: &mut Region, ino: InodeId, offset: u64, len: u64) -> Result<Reply, NsError> {
    r.run(Op::PunchHole {
        ino,
        offset,
        len,
        creds: root_creds(),
    })
}

#[test]
fn a_hole_over_many_extents_leaves_them_to_steps_and_reads_as_a_hole() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let n = STEP + STEP / 2;
    let blocks = fragment(r, f, n);
    let (size, before) = file_extents(r, f);
    // From the middle of the tenth extent to the middle of the 3,000th: both edges keep
    // their outer halves.
    let (start, end) = (9 * 4096 + 50, 2999 * 4096 + 50);
    punch(r, f, start, end - start).unwrap();
    let (after_size, live) = file_extents(r, f);
    assert_eq!(after_size, size);
    let expected: Vec<Extent> = before[..9]
        .iter()
        .copied()
        .chain([
            Extent {
                len: 50,
                ..before[9]
            },
            Extent {
                offset: end,
                len: 50,
                block_offset: 50,
                ..before[2999]
            },
        ])
        .chain(before[3000..].iter().copied())
        .collect();
    assert_eq!(live, expected);
    assert_eq!(
        cuts_of(r, f),
        vec![Cut {
            from: start,
            to: end
        }]
    );
    assert_eq!(trim_marks(r).len(), 1);
    assert_consistent(r);
    steps_until_done(r, f);
    assert!(cuts_of(r, f).is_empty());
    assert!(trim_marks(r).is_empty());
    assert_eq!(extents_of(r, f), expected.len());
    assert_eq!(file_extents(r, f), (size, live));
    assert!(blocks.iter().all(|b| refs(r, b) == extents_using(r, b)));
    assert_consistent(r);
}

#[test]
fn a_write_into_a_hole_before_the_steps_shows_itself_and_nothing_cut() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let n = INLINE * 3;
    let old = fragment(r, f, n);
    let (size, _) = file_extents(r, f);
    punch(r, f, 4096, size - 4096 - 100).unwrap();
    let hole = cuts_of(r, f)[0];
    // A write in the middle of the hole: the cut gives up the write's stretch and keeps
    // both sides.
    let at = 1500 * 4096 + 10;
    let (op, block) = write_op(f, at, b"new");
    r.run(op).unwrap();
    let (_, live) = file_extents(r, f);
    let shown: Vec<u64> = live.iter().map(|e| e.offset).collect();
    assert_eq!(shown, vec![0, at, (n as u64 - 1) * 4096]);
    assert_eq!(live[1].block, block);
    assert_eq!(
        cuts_of(r, f),
        vec![
            Cut {
                from: hole.from,
                to: at
            },
            Cut {
                from: live[1].end(),
                to: hole.to
            }
        ]
    );
    assert_consistent(r);
    steps_until_done(r, f);
    assert_eq!(file_extents(r, f).1, live);
    assert_eq!(extents_of(r, f), 3);
    assert_eq!(refs(r, &block), 1);
    assert!(old.iter().all(|b| refs(r, b) == extents_using(r, b)));
    assert_consistent(r);
}

#[test]
fn a_copy_of_a_range_takes_nothing_a_hole_cut() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let n = INLINE * 2;
    fragment(r, f, n);
    let (size, _) = file_extents(r, f);
    punch(r, f, 4096, size - 8192).unwrap();
    let g = file(r, "copy");
    r.run(Op::CopyRange {
        src: f,
        src_offset: 0,
        dst: g,
        dst_offset: 0,
        len: size,
        creds: root_creds(),
    })
    .unwrap();
    assert_eq!(file_extents(r, g), file_extents(r, f));
    assert_eq!(extents_of(r, g), 2);
    assert_consistent(r);
}

#[test]
fn past_the_most_cuts_a_file_may_have_a_hole_is_punched_at_once() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let per = INLINE + 2;
    fragment(r, f, per * (MAX_CUTS + 1));
    // Holes one extent apart: each its own cut.
    for i in 0..=MAX_CUTS {
        let start = (i * per) as u64 * 4096;
        punch(r, f, start, (per as u64 - 1) * 4096).unwrap();
    }
    assert_eq!(cuts_of(r, f).len(), MAX_CUTS);
    assert_eq!(file_extents(r, f).1.len(), MAX_CUTS + 1);
    assert_eq!(extents_of(r, f), MAX_CUTS * per + 1);
    assert_consistent(r);
    // A write inside the first cut: no room to keep both sides, so the cut gives up its
    // leftovers from its start to the write's end, and the count of cuts stays.
    let at = (per as u64 / 2) * 4096 + 5;
    let (op, block) = write_op(f, at, b"inside");
    r.run(op).unwrap();
    let cuts = cuts_of(r, f);
    assert_eq!(cuts.len(), MAX_CUTS);
    assert_eq!(cuts[0].from, at + 100);
    assert_eq!(extents_of(r, f), MAX_CUTS * per + 1 - (per / 2 + 1) + 1);
    let (_, live) = file_extents(r, f);
    assert_eq!(live.len(), MAX_CUTS + 2);
    assert!(live.iter().any(|e| e.block == block && e.offset == at));
    assert_consistent(r);
    steps_until_done(r, f);
    assert_eq!(file_extents(r, f).1, live);
    assert_eq!(extents_of(r, f), MAX_CUTS + 2);
    assert_consistent(r);
}

#[test]
fn empty_cuts_a_rewind_brought_back_make_way_for_a_large_truncate() {
    // A rewind of the merged log can bring back cuts the steps emptied, with no mark (a
    // record's image of the inode from before the steps). They hold nothing, and must not
    // count against the most cuts a file may have, or a large truncate would cut in its
    // own entry.
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "cut");
    let n = INLINE * 2;
    fragment(r, f, n);
    let stale: Vec<Cut> = (0..MAX_CUTS as u64)
        .map(|k| Cut {
            from: k * 4096 + 200,
            to: k * 4096 + 300,
        })
        .collect();
    r.write(|t| {
        let mut node = read_inode(t.inodes().unwrap(), f).unwrap().unwrap();
        node.cuts = stale;
        t.put_inode(&node).unwrap();
    });
    assert_consistent(r);
    let size = 100 * 4096;
    set_size(r, f, size).unwrap();
    assert_eq!(
        cuts_of(r, f),
        [Cut {
            from: size,
            to: u64::MAX
        }]
    );
    assert_eq!(extents_of(r, f), n, "the leftovers wait for the steps");
    assert_eq!(file_extents(r, f).1.len(), 100);
    assert_consistent(r);
    steps_until_done(r, f);
    assert_eq!(extents_of(r, f), 100);
    assert_consistent(r);
}

#[test]
fn fsck_reports_cut_extents_no_mark_will_drop_and_accepts_an_empty_cut() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "cut");
    fragment(r, f, INLINE * 2);
    set_size(r, f, 4096).unwrap();
    let problems = |r: &Region| {
        let tx = r.db.begin_read().unwrap();
        super::check::check(&tx, 0, 10_000).unwrap().problems
    };
    assert!(problems(r).is_empty());
    let key = format!("trim/{:020}", f.0);
    let mark = trim_marks(r)[0];
    // The mark gone with the leftovers still there: nothing would drop them.
    r.write(|t| t.write(Tab::Trims, key.as_bytes(), None).unwrap());
    let found = problems(r);
    assert!(
        found.iter().any(|p| p.contains("in a cut, with no mark")),
        "{found:?}"
    );
    // A cut the steps emptied, brought back without its mark (as a rewind of the merged
    // log can): nothing is wrong.
    let cut = cuts_of(r, f);
    let bytes = serde_json::to_vec(&mark).unwrap();
    r.write(|t| t.write(Tab::Trims, key.as_bytes(), Some(&bytes)).unwrap());
    steps_until_done(r, f);
    r.write(|t| {
        let mut node = read_inode(t.inodes().unwrap(), f).unwrap().unwrap();
        node.cuts = cut;
        t.put_inode(&node).unwrap();
    });
    assert!(problems(r).is_empty(), "{:?}", problems(r));
}

#[test]
fn a_commit_of_several_extents_inside_one_leftover_shows_no_old_byte_between_them() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "holed");
    let per = INLINE + 2;
    let blocks = fragment(r, f, per * (MAX_CUTS - 1));
    // Fifteen holes: room for one more cut.
    for i in 0..MAX_CUTS - 1 {
        let start = (i * per) as u64 * 4096;
        punch(r, f, start, (per as u64 - 1) * 4096).unwrap();
    }
    assert_eq!(cuts_of(r, f).len(), MAX_CUTS - 1);
    // Two new extents inside one leftover of the first hole (100 bytes at 40960): the
    // first splits the cut (the last room), the second has none.
    let a = 10 * 4096;
    let new = |at: u64, seed: &[u8]| Extent {
        offset: at,
        len: 10,
        block: BlockId::of(seed),
        block_offset: 0,
        block_len: 10,
    };
    r.run(Op::CommitExtents {
        ino: f,
        extents: vec![new(a + 10, b"one"), new(a + 50, b"two")],
        size: 0,
        base_version: None,
        creds: root_creds(),
        staged: Vec::new(),
    })
    .unwrap();
    let shown: Vec<(u64, u64)> = file_extents(r, f)
        .1
        .into_iter()
        .filter(|e| e.offset < a + 100 && e.end() > a)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(shown, vec![(a + 10, 10), (a + 50, 10)]);
    assert_consistent(r);
    steps_until_done(r, f);
    assert!(blocks.iter().all(|b| refs(r, b) == extents_using(r, b)));
    assert_consistent(r);
}

#[test]
fn a_write_into_a_cut_makes_its_steps_wait_for_that_write_to_leave_the_merged_log() {
    let mut rs = regions_with_volume_in(2, &[meridian_proto::RegionId(1)]);
    let f = file(&mut rs[0], "cut");
    fragment(&mut rs[0], f, INLINE * 2);
    set_size(&mut rs[0], f, 0).unwrap();
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    let ready = |r: &Region| {
        r.write(|t| {
            let m = marks_in(t)[0];
            trim::ready(t.oplog.open().unwrap(), &m).unwrap()
        })
    };
    assert!(ready(r), "the truncate's record has left the merged log");
    // A write inside a leftover (100 bytes at 40960) splits it: undoing that write later
    // would bring the whole leftover back, so nothing may be dropped until it is final.
    let (op, _) = write_op(f, 10 * 4096 + 10, b"inside");
    r.run(op).unwrap();
    assert!(!ready(r));
    let before = extents_of(r, f);
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert_eq!(extents_of(r, f), before);
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    assert!(ready(r));
    steps_until_done(r, f);
    assert_eq!(file_extents(r, f).1.len(), 1);
    assert_consistent(r);
}

/// Tombstones `r` holds, of any volume.
pub(super) fn tombs_in(r: &Region) -> usize {
    let tx = r.db.begin_read().unwrap();
    dump_table(&tx, TOMBS, |k| k.to_be_bytes().to_vec(), |v| v.to_vec()).len()
}

#[test]
fn a_purged_tombstone_of_many_extents_leaves_them_to_steps_in_every_region() {
    // "main" lives in regions 1 and 2: a removal keeps the file as a tombstone, extents
    // and all, until both regions have settled past it; then each purges it.
    let mut rs = regions(2);
    let keep = file(&mut rs[0], "keep");
    fragment(&mut rs[0], keep, 3);
    let f = file(&mut rs[0], "large");
    let n = STEP + STEP / 2;
    let blocks = fragment(&mut rs[0], f, n);
    let root = rs[0].volume_root();
    rs[0].run(unlink(root, "large")).unwrap();
    settle(&mut rs);
    let before: Vec<Vec<u64>> = rs
        .iter()
        .map(|r| blocks.iter().map(|b| refs(r, b)).collect())
        .collect();
    for r in &rs {
        assert_eq!((tombs_in(r), extents_of(r, f)), (1, n), "region {}", r.id.0);
    }
    // Settled, with a record made after the stamps both promised still in the merged log:
    // the tombstone goes, its extents wait behind a mark, still counting their
    // references, for that record to leave (an older version's image of a block's whole
    // count could otherwise bring dropped references back).
    promise_all(&mut rs);
    rs[0].run(mknod(root, "later", FileKind::File)).unwrap();
    settle(&mut rs);
    for (r, before) in rs.iter_mut().zip(&before) {
        assert_eq!((tombs_in(r), extents_of(r, f)), (0, n), "region {}", r.id.0);
        let m = trim_marks(r);
        assert_eq!(m.len(), 1, "region {}", r.id.0);
        assert_eq!(m[0].ino, f);
        assert!(m[0].at.is_some() && m[0].up_to, "region {}", r.id.0);
        assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
        assert_eq!(extents_of(r, f), n);
        assert_eq!(
            &blocks.iter().map(|b| refs(r, b)).collect::<Vec<_>>(),
            before
        );
        assert_consistent(r);
    }
    // Once that record has left, each region's steps drop the rest and their references.
    promise_all(&mut rs);
    settle(&mut rs);
    for r in &mut rs {
        assert_eq!(steps_until_done(r, f), 2, "region {}", r.id.0);
        assert_eq!(extents_of(r, f), 0);
        assert!(trim_marks(r).is_empty());
        let left: Vec<u64> = blocks.iter().map(|b| refs(r, b)).collect();
        assert_eq!(left, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], "region {}", r.id.0);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn a_purge_drops_at_most_a_steps_worth_of_extents_itself_and_leaves_the_rest_to_steps() {
    // Three removed files of 600 extents each: a pass of the purge drops at most 1,024
    // extents itself (together they would hold the group as long as one large file did),
    // so at least one of them goes behind a mark.
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let files: Vec<InodeId> = (0..3)
        .map(|i| {
            let f = file(&mut rs[0], &format!("mid{i}"));
            fragment(&mut rs[0], f, 600);
            f
        })
        .collect();
    for i in 0..3 {
        rs[0].run(unlink(root, &format!("mid{i}"))).unwrap();
    }
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    for r in &mut rs {
        assert_eq!(tombs_in(r), 0, "region {}", r.id.0);
        let marked: Vec<InodeId> = trim_marks(r).iter().map(|m| m.ino).collect();
        assert!(!marked.is_empty(), "region {}", r.id.0);
        for f in &files {
            let left = extents_of(r, *f);
            assert_eq!(left, if marked.contains(f) { 600 } else { 0 });
        }
        assert_consistent(r);
        for f in marked {
            steps_until_done(r, f);
        }
        assert!(files.iter().all(|f| extents_of(r, *f) == 0));
        assert_consistent(r);
    }
}

#[test]
fn a_purges_steps_wait_for_every_record_before_its_own_of_any_volume() {
    // "main" lives in regions 1, 2 and 3, "pair" in 1 and 2. Region 3 is cut off: main's
    // records stay in the merged log while pair's settle and leave it.
    let mut rs = regions(3);
    let pair = make_volume(&mut rs[0], "pair", vec![RegionId(1), RegionId(2)]);
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    let f = attr_of(rs[0].run(mknod(pair, "big", FileKind::File))).ino;
    fragment(&mut rs[0], f, STEP + 100);
    // A record of main, older than the removal, that region 3 has yet to see.
    let main_root = rs[0].volume_root();
    rs[0].run(mknod(main_root, "held", FileKind::File)).unwrap();
    rs[0].run(unlink(pair, "big")).unwrap();
    exchange(&mut rs);
    promise_all(&mut rs[..2]);
    // A record of pair after the stamps promised: the newest in the log at the purge.
    rs[0].run(mknod(pair, "late", FileKind::File)).unwrap();
    exchange(&mut rs);
    // It settles and leaves the log too; main's older record stays.
    promise_all(&mut rs[..2]);
    exchange(&mut rs);
    let r = &mut rs[0];
    assert_eq!((tombs_in(r), extents_of(r, f)), (0, STEP + 100));
    let m = trim_marks(r);
    assert_eq!(m.len(), 1);
    assert!(m[0].up_to);
    // The mark's own record has left the log; main's older one has not, and it could
    // still be undone around a late record from region 3.
    let at = m[0].at.expect("the newest record at the purge");
    assert!(r.write(|t| {
        t.oplog
            .open()
            .unwrap()
            .get(at.to_key().as_slice())
            .unwrap()
            .is_none()
    }));
    assert!(!r.write(|t| trim::ready(t.oplog.open().unwrap(), &m[0]).unwrap()));
    assert!(r.write(|t| trim::trim_step(t, f)).unwrap());
    assert_eq!(extents_of(r, f), STEP + 100);
    // Healed and settled: the steps drop everything.
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    let r = &mut rs[0];
    steps_until_done(r, f);
    assert_eq!(extents_of(r, f), 0);
    assert_consistent(r);
}

#[test]
fn a_copy_in_steps_cuts_a_file_of_many_extents_across_them_and_takes_its_content_alone() {
    use super::ops::copy::{self, Batch, CopyDone, CopyExtents};
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "big");
    fragment(r, f, STEP + STEP / 2);
    // A hole over most of it: leftovers the steps have not dropped yet, which the copy
    // must leave out wherever its pages fall.
    punch(r, f, 10 * 4096 + 50, 2000 * 4096).unwrap();
    assert!(!cuts_of(r, f).is_empty());
    let source = file_extents(r, f);
    // Files that fit a batch, though not what is left of one: never cut.
    let small: Vec<InodeId> = ["a", "b", "c"].map(|name| file(r, name)).to_vec();
    for &s in &small {
        fragment(r, s, 60);
    }

    // The leader's steps, as `copy.rs` makes them, of at most 100 items each.
    let tx = r.db.begin_read().unwrap();
    let (plan, snap, numbering) = snap_begun(r, &tx);
    let step = |r: &mut Region, reserve, rows, done| copy_step(r, snap.id, reserve, rows, done);
    let copy_ino = numbering.of(f).unwrap();
    let (mut cur, mut pieces, mut refused) = (Default::default(), 0, false);
    while !plan.done(&cur) {
        let (batch, next) = copy::read_rows(
            &tx,
            &plan,
            &snap,
            &numbering,
            cur,
            copy::Limits::new(10, 100),
            Timespec::default(),
        )
        .unwrap();
        cur = next;
        match batch {
            Batch::Rows(rows) => {
                assert!(rows.iter().map(|r| r.extents.len()).sum::<usize>() <= 100);
                step(r, 0, rows, None);
            }
            Batch::Extents(more) => {
                assert!(!more.extents.is_empty() && more.extents.len() <= 100);
                assert_eq!(more.ino, copy_ino);
                if !refused {
                    // Extents out of order, or for an inode that is not the copy's, are
                    // refused and change nothing.
                    assert!(more.extents.len() >= 2, "an order to reverse");
                    refused = true;
                    let before = file_extents(r, copy_ino);
                    let mut back = more.clone();
                    back.extents.reverse();
                    let stray = CopyExtents {
                        ino: f,
                        ..more.clone()
                    };
                    for bad in [back, stray] {
                        let e = r.write(|t| copy::extents(t, &bad)).unwrap_err();
                        assert!(matches!(e, NsError::Invalid(_)), "{e:?}");
                    }
                    assert_eq!(file_extents(r, copy_ino), before);
                    assert_eq!(file_extents(r, f), source);
                }
                r.write(|t| copy::extents(t, &more)).unwrap();
                pieces += 1;
            }
        }
    }
    assert!(pieces >= 10, "{pieces} steps of extents alone");
    let done = CopyDone {
        used_bytes: plan.source.used_bytes,
        used_inodes: plan.source.used_inodes,
    };
    assert!(step(r, 0, Vec::new(), Some(done)).copying.is_none());
    assert_eq!(file_extents(r, copy_ino), source);
    assert_eq!(cut_from(r, copy_ino), None);
    for s in small {
        assert_eq!(
            file_extents(r, numbering.of(s).unwrap()),
            file_extents(r, s)
        );
    }
    assert_consistent(r);
}

#[test]
fn a_copy_among_older_members_takes_each_files_extents_in_its_row() {
    use super::ops::copy::{self, Batch, CopyDone};
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "big");
    fragment(r, f, STEP + STEP / 2);
    punch(r, f, 10 * 4096 + 50, 2000 * 4096).unwrap();
    let source = file_extents(r, f);
    assert!(source.1.len() > 100, "more extents than a step holds");
    let small = file(r, "small");
    fragment(r, small, 60);

    let tx = r.db.begin_read().unwrap();
    let (plan, snap, numbering) = snap_begun(r, &tx);
    let step = |r: &mut Region, reserve, rows, done| copy_step(r, snap.id, reserve, rows, done);
    let limits = copy::Limits {
        whole_files: true,
        ..copy::Limits::new(10, 100)
    };
    let (mut cur, mut big_rows) = (Default::default(), 0);
    while !plan.done(&cur) {
        let (batch, next) = copy::read_rows(
            &tx,
            &plan,
            &snap,
            &numbering,
            cur,
            limits,
            Timespec::default(),
        )
        .unwrap();
        cur = next;
        let Batch::Rows(rows) = batch else {
            panic!("no step of extents alone for a group that could not read it")
        };
        for row in rows
            .iter()
            .filter(|row| row.inode.attr.ino == numbering.of(f).unwrap())
        {
            assert!(!row.continued);
            assert_eq!(
                row.extents, source.1,
                "the file's content, whole, in its row"
            );
            big_rows += 1;
        }
        step(r, 0, rows, None);
    }
    assert_eq!(big_rows, 1);
    let done = CopyDone {
        used_bytes: plan.source.used_bytes,
        used_inodes: plan.source.used_inodes,
    };
    assert!(step(r, 0, Vec::new(), Some(done)).copying.is_none());
    assert_eq!(file_extents(r, numbering.of(f).unwrap()), source);
    assert_eq!(
        file_extents(r, numbering.of(small).unwrap()),
        file_extents(r, small)
    );
    assert_consistent(r);
}

/// A snapshot "snap" of volume "main" begun in `r` at `tx`'s point, as the leader begins
/// one, its inode numbers reserved: the copy's plan, volume and numbering.
fn snap_begun(
    r: &mut Region,
    tx: &redb::ReadTransaction,
) -> (super::ops::copy::Plan, Volume, super::ops::copy::Numbering) {
    use super::ops::copy::{self, CopyBegin, Numbering};
    let plan = copy::plan(tx, "main", r.id).unwrap();
    r.phys += 1;
    let begin = CopyBegin {
        source: "main".into(),
        name: "snap".into(),
        read_only: true,
        hlc: r.clock.now(r.phys),
        now: Timespec::from_nanos(r.phys * 1_000_000),
        by: 7,
    };
    let Ok(Reply::Volume(snap)) = r.write(|t| copy::begin(t, &begin)) else {
        panic!("the copy begins")
    };
    let snap = copy_step(r, snap.id, plan.order.len() as u64, Vec::new(), None);
    let numbering = Numbering::new(&plan, &snap, snap.copying.as_ref().unwrap().base).unwrap();
    (plan, snap, numbering)
}

/// One step of copy `volume` in `r`; the volume after it.
fn copy_step(
    r: &mut Region,
    volume: u32,
    reserve: u64,
    rows: Vec<super::ops::copy::CopyRow>,
    done: Option<super::ops::copy::CopyDone>,
) -> Volume {
    let step = super::ops::copy::CopyRows {
        volume,
        reserve,
        rows,
        done,
    };
    match r.write(|t| super::ops::copy::rows(t, &step)) {
        Ok(Reply::Volume(v)) => v,
        other => panic!("a step answered {other:?}"),
    }
}
