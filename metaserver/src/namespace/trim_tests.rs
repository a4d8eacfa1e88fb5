//! A removed file's extents dropped in steps (`trim.rs`): a small file's at once, a large
//! file's behind a mark that fsck accounts for, until the steps have dropped every one
//! and every reference they held.

use meridian_proto::{BlockId, InodeId};
use redb::ReadableDatabase;

use super::test_regions::*;
use super::trim::{self, INLINE, STEP};

/// `n` extents of 100 bytes, 4 KiB apart (none merge), naming ten blocks in turn,
/// committed in pieces.
fn fragment(r: &mut Region, ino: InodeId, n: usize) -> Vec<BlockId> {
    let blocks: Vec<BlockId> = (0..10u8).map(|i| BlockId::of(&[i; 3])).collect();
    let extents: Vec<Extent> = (0..n)
        .map(|i| Extent {
            offset: i as u64 * 4096,
            len: 100,
            block: blocks[i % blocks.len()],
            block_offset: 0,
            block_len: 100,
        })
        .collect();
    for piece in extents.chunks(1000) {
        r.run(Op::CommitExtents {
            ino,
            extents: piece.to_vec(),
            size: 0,
            base_version: None,
            creds: root_creds(),
            staged: Vec::new(),
        })
        .unwrap();
    }
    assert_eq!(extents_of(r, ino), n);
    blocks
}

/// Extent rows of `ino`, whether or not the inode lives.
fn extents_of(r: &Region, ino: InodeId) -> usize {
    let tx = r.db.begin_read().unwrap();
    let t = tx.open_table(EXTENTS).unwrap();
    let (lo, hi) = (pair_key(ino.0, 0), pair_key(ino.0 + 1, 0));
    t.range(lo.as_slice()..hi.as_slice()).unwrap().count()
}

fn marks(r: &Region) -> Vec<trim::Trim> {
    let tx = r.db.begin_read().unwrap();
    let state = super::merge::state_table(&tx).unwrap().unwrap();
    trim::pending(&state).unwrap()
}

#[test]
fn a_small_files_extents_go_with_its_last_name() {
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "small");
    let blocks = fragment(r, f, INLINE);
    r.run(unlink(r.volume_root(), "small")).unwrap();
    assert!(extents_of(r, f) == 0);
    assert!(marks(r).is_empty());
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
    let volume = marks(r)[0].volume;
    assert_eq!(marks(r), vec![trim::Trim { ino: f, volume }]);
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
    assert!(marks(r).is_empty());
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
    assert_eq!(marked_then_restored, vec![trim::Trim { ino: f, volume }]);
    assert!(marks(r).is_empty());
    assert_eq!(extents_of(r, f), INLINE + 1);
}
