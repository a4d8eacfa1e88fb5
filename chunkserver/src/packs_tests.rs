//! Tests of the packs of small blocks, through the block store that uses them.

use std::path::Path;

use meridian_proto::{EncodedBlock, NodeId};

use super::*;
use crate::error::ChunkError;
use crate::store::{BlockStore, PutOutcome};

/// An incompressible block of `len` bytes.
pub(crate) fn block(seed: u8, len: usize) -> EncodedBlock {
    // Incompressible, so the record lengths are known.
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut data);
    EncodedBlock::encode(&data).unwrap()
}

fn open(dir: &Path, pack_len: u64) -> BlockStore {
    BlockStore::open_with_packs(dir, NodeId(1), Some(1 << 30), pack_len).unwrap()
}

fn put(s: &BlockStore, b: &EncodedBlock) -> PutOutcome {
    let ob = b.decode_with_outboard().unwrap().1;
    s.put(b, &ob).unwrap()
}

fn plain(b: &EncodedBlock) -> Vec<u8> {
    b.decode().unwrap().to_vec()
}

/// The pack files under a store's folder.
fn pack_files(dir: &Path) -> Vec<u64> {
    list(&dir.join("packs")).unwrap()
}

/// What a compaction does before it moves the index: block `id`'s record copied to the
/// active pack and made durable. Returns the copy's generation and offset.
fn durable_copy(s: &BlockStore, id: &BlockId) -> (u64, u64) {
    let p = s.packs().get(id).unwrap();
    let bytes = read_at(&p.file, p.at, p.len as usize).unwrap();
    let shared = &s.packs().shared;
    let mut state = shared.lock();
    let (g, record, lsn) = shared.append(&mut state, id, &[&bytes]).unwrap();
    drop(state);
    shared.sync_to(lsn).unwrap();
    (g, record)
}

fn block_files(dir: &Path) -> usize {
    crate::layout::Layout::open(&dir.join("blocks"))
        .unwrap()
        .files()
        .unwrap()
        .len()
}

#[test]
fn small_blocks_are_packed_without_files_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<_> = (0..5u8)
        .map(|i| block(i, 1000 + 5000 * i as usize))
        .collect();
    let large = block(50, 600 << 10);
    {
        let s = open(dir.path(), 1 << 20);
        for b in &small {
            assert_eq!(put(&s, b), PutOutcome::Written);
            assert_eq!(put(&s, b), PutOutcome::AlreadyPresent);
        }
        // A block above the packs' limit is a file of its own.
        put(&s, &large);
        assert_eq!(block_files(dir.path()), 1);
        assert_eq!(s.usage().blocks, 6);
        for b in &small {
            assert!(s.has(&b.id));
            assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
            let st = s.stat(&b.id).unwrap().unwrap();
            assert_eq!(st.stored_len, s.file_len(&b.id));
            let r = s.read_range(&b.id, 700, 100).unwrap();
            let want = plain(b);
            assert_eq!(
                r.plain[..],
                want[r.offset as usize..r.offset as usize + r.plain.len()]
            );
        }
    }
    let s = open(dir.path(), 1 << 20);
    assert_eq!(s.usage().blocks, 6);
    let used: u64 = small
        .iter()
        .chain([&large])
        .map(|b| s.file_len(&b.id))
        .sum();
    assert_eq!(s.usage().used, used);
    let mut listed = s.list().unwrap();
    listed.sort();
    let mut want: Vec<_> = small.iter().chain([&large]).map(|b| b.id).collect();
    want.sort();
    assert_eq!(listed, want);
    for b in &small {
        assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
    }
    assert_eq!(block_files(dir.path()), 1);
    drop(s);
    let mut offline = stored_offline(&dir.path().join("packs")).unwrap();
    offline.sort();
    let mut want: Vec<_> = small.iter().map(|b| b.id).collect();
    want.sort();
    assert_eq!(offline, want);
}

#[test]
fn a_deleted_block_stays_deleted_and_one_put_again_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (block(4, 8192), block(5, 8192), block(6, 8192));
    {
        let s = open(dir.path(), 1 << 20);
        for x in [&a, &b, &c] {
            put(&s, x);
        }
        assert!(s.delete(&a.id).unwrap());
        assert!(!s.delete(&a.id).unwrap());
        assert!(matches!(s.read(&a.id), Err(ChunkError::NotFound(_))));
        assert_eq!(s.stat(&a.id).unwrap(), None);
        // Put again after a delete: present in the end.
        assert!(s.delete(&b.id).unwrap());
        assert_eq!(put(&s, &b), PutOutcome::Written);
        assert_eq!(s.delete_if(&c.id, || false).unwrap(), None);
        assert!(s.delete_if(&c.id, || true).unwrap().is_some());
        assert_eq!(s.usage().blocks, 1);
    }
    for _ in 0..2 {
        let s = open(dir.path(), 1 << 20);
        assert!(!s.has(&a.id));
        assert!(!s.has(&c.id));
        assert!(s.read(&b.id).is_ok());
        assert_eq!(s.usage().blocks, 1);
    }
    // A copy taken away offline (as a test of repair does) stays away.
    assert!(remove_offline(&dir.path().join("packs"), &b.id).unwrap());
    assert!(!remove_offline(&dir.path().join("packs"), &b.id).unwrap());
    let s = open(dir.path(), 1 << 20);
    assert!(!s.has(&b.id));
    assert_eq!(
        s.usage(),
        crate::store::Usage {
            blocks: 0,
            used: 0,
            ..s.usage()
        }
    );
}

#[test]
fn a_torn_append_ends_the_last_pack_there_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (block(7, 5000), block(8, 5000), block(9, 5000));
    let last;
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
        put(&s, &b);
        last = *pack_files(dir.path()).last().unwrap();
    }
    // Damage the last byte of the second record (an append a crash cut short).
    let path = dir.path().join("packs").join(last.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|&x| x != 0).unwrap();
    bytes[end] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    {
        let s = open(dir.path(), 1 << 20);
        assert!(s.read(&a.id).is_ok());
        assert!(!s.has(&b.id));
        put(&s, &c);
    }
    // Read by heads only now that it is sealed: the torn record no longer counts.
    let s = open(dir.path(), 1 << 20);
    assert!(s.read(&a.id).is_ok());
    assert!(!s.has(&b.id));
    assert!(s.read(&c.id).is_ok());
    assert_eq!(s.usage().blocks, 2);
}

#[test]
fn sparse_packs_are_compacted_and_their_live_blocks_kept() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<_> = (0..40u8).map(|i| block(i.wrapping_add(10), 9000)).collect();
    {
        // Four records fit a 40 KiB pack: ten packs.
        let s = open(dir.path(), 40 << 10);
        for b in &blocks {
            put(&s, b);
        }
        assert!(s.packs().generations().len() >= 10);
        // Three of every four deleted: every sealed pack falls under half live.
        for (i, b) in blocks.iter().enumerate() {
            if i % 4 != 0 {
                assert!(s.delete(&b.id).unwrap());
            }
        }
        s.packs().compact_now().unwrap();
        assert!(
            s.packs().generations().len() <= 5,
            "{:?}",
            s.packs().generations()
        );
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(s.has(&b.id), i % 4 == 0);
            if i % 4 == 0 {
                assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
            }
        }
        assert_eq!(s.usage().blocks, 10);
        // Done: the packs that took the copies are not compacted again and again.
        let after = s.packs().generations();
        assert!(s.packs().shared.lock().sparse.is_empty());
        s.packs().compact_now().unwrap();
        assert_eq!(s.packs().generations(), after);
    }
    let s = open(dir.path(), 40 << 10);
    assert_eq!(s.usage().blocks, 10);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(s.has(&b.id), i % 4 == 0, "block {i}");
    }
    // Deleting the rest empties the packs; the next start removes the last ones.
    for b in blocks.iter().step_by(4) {
        assert!(s.delete(&b.id).unwrap());
    }
    s.packs().compact_now().unwrap();
    drop(s);
    let s = open(dir.path(), 40 << 10);
    assert_eq!(s.usage().blocks, 0);
    assert_eq!(pack_files(dir.path()).len(), 1, "only the new active pack");
}

#[test]
fn the_background_compaction_keeps_blocks_put_and_deleted_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 40 << 10);
    let mut kept = Vec::new();
    for round in 0..6u8 {
        let blocks: Vec<_> = (0..12u8)
            .map(|i| block(round.wrapping_mul(31).wrapping_add(i), 7000))
            .collect();
        for b in &blocks {
            put(&s, b);
        }
        for (i, b) in blocks.iter().enumerate() {
            if i % 3 == 0 {
                kept.push(b.clone());
            } else {
                s.delete(&b.id).unwrap();
            }
        }
        for b in &kept {
            assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
        }
    }
    s.packs().compact_now().unwrap();
    drop(s);
    let s = open(dir.path(), 40 << 10);
    assert_eq!(s.usage().blocks, kept.len() as u64);
    for b in &kept {
        assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
    }
}

#[test]
fn of_two_copies_a_cut_short_compaction_left_the_newer_is_kept_and_the_older_never_returns() {
    let dir = tempfile::tempdir().unwrap();
    let a = block(20, 6000);
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
    }
    {
        // A compaction copied the record to a newer pack, and a crash came before the
        // index moved and the old pack was removed.
        let s = open(dir.path(), 1 << 20);
        durable_copy(&s, &a.id);
    }
    {
        let s = open(dir.path(), 1 << 20);
        assert_eq!(s.usage().blocks, 1);
        assert_eq!(s.read(&a.id).unwrap().1.to_vec(), plain(&a));
        assert!(s.delete(&a.id).unwrap());
    }
    let s = open(dir.path(), 1 << 20);
    assert!(!s.has(&a.id), "an older copy came back after the delete");
    assert_eq!(s.usage().blocks, 0);
}

#[test]
fn a_damaged_packed_block_is_never_served_and_goes_to_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block(30, 50_000), block(31, 50_000));
    let s = open(dir.path(), 1 << 20);
    put(&s, &a);
    put(&s, &b);
    let p = s.packs().get(&a.id).unwrap();
    // Rot inside a's payload, on disk.
    let at = p.at + p.len / 2;
    let mut byte = read_at(&p.file, at, 1).unwrap();
    byte[0] ^= 0x40;
    p.file.write_all_at(&byte, at).unwrap();
    assert!(matches!(s.read(&a.id), Err(ChunkError::Corrupt { .. })));
    let r = s.read_range(&a.id, 0, 50_000);
    assert!(matches!(r, Err(ChunkError::Corrupt { .. })), "{r:?}");
    assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(&b));
    // Quarantined: its bytes aside, no longer here, the neighbour untouched.
    let aside = s.quarantine(&a.id).unwrap().unwrap();
    assert_eq!(std::fs::metadata(&aside).unwrap().len(), p.len);
    assert!(!s.has(&a.id));
    assert_eq!(s.usage().blocks, 1);
    // A good copy put again is served.
    assert_eq!(put(&s, &a), PutOutcome::Written);
    assert_eq!(s.read(&a.id).unwrap().1.to_vec(), plain(&a));
    drop(s);
    let s = open(dir.path(), 1 << 20);
    assert_eq!(s.read(&a.id).unwrap().1.to_vec(), plain(&a));
    assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(&b));
}

#[test]
fn without_packs_small_blocks_are_files_and_packed_ones_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block(40, 3000), block(41, 3000));
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
    }
    let s = open(dir.path(), 0);
    put(&s, &b);
    assert_eq!(block_files(dir.path()), 1);
    assert_eq!(s.read(&a.id).unwrap().1.to_vec(), plain(&a));
    assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(&b));
    assert_eq!(s.usage().blocks, 2);
    assert!(s.delete(&a.id).unwrap());
    drop(s);
    let s = open(dir.path(), 0);
    assert!(!s.has(&a.id));
    assert!(s.has(&b.id));
}

#[test]
fn concurrent_puts_and_deletes_of_the_same_blocks_keep_the_count_right() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open(dir.path(), 64 << 10));
    let blocks: Vec<_> = (0..8u8).map(|i| block(60 + i, 4000)).collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, blocks) = (s.clone(), blocks.clone());
            scope.spawn(move || {
                for round in 0..30 {
                    let b = &blocks[(t + round) % blocks.len()];
                    put(&s, b);
                    if round % 3 == t % 3 {
                        let _ = s.delete(&b.id);
                    }
                }
            });
        }
    });
    let present = blocks.iter().filter(|b| s.has(&b.id)).count() as u64;
    assert_eq!(s.usage().blocks, present);
    for b in blocks.iter().filter(|b| s.has(&b.id)) {
        assert_eq!(s.read(&b.id).unwrap().1.to_vec(), plain(b));
    }
    drop(std::sync::Arc::into_inner(s).unwrap());
    let s = open(dir.path(), 64 << 10);
    assert_eq!(s.usage().blocks, present);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: meridian_proto::mutate::cases(100), ..Default::default() })]

    /// A fuzz target for the packs' record decoder: packs damaged in any way (edits of
    /// valid ones: magics, generations, kinds, lengths, checksums, bodies, the zeros after
    /// the last record), the last one or a sealed one, open without a panic, and every
    /// block reads as an error or as exactly its plaintext.
    #[test]
    fn a_damaged_pack_reads_as_errors_or_the_blocks_own_bytes(
        sizes in proptest::collection::vec(1usize..3000, 1..6),
        sealed in proptest::prelude::any::<bool>(),
        edits in proptest::collection::vec(
            (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()),
            1..6,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<_> = sizes.iter().enumerate().map(|(i, n)| block(i as u8, *n)).collect();
        {
            let s = open(dir.path(), 1 << 20);
            for b in &blocks {
                put(&s, b);
            }
        }
        if sealed {
            drop(open(dir.path(), 1 << 20));
        }
        let first = pack_files(dir.path())[0];
        let path = dir.path().join("packs").join(first.to_string());
        let whole = std::fs::read(&path).unwrap();
        let used = whole.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        let keep = (used + 64).min(whole.len());
        let mut damaged = meridian_proto::mutate::mutate(&whole[..keep], &edits);
        damaged.extend_from_slice(&whole[keep..]);
        std::fs::write(&path, &damaged).unwrap();
        let Ok(s) = BlockStore::open_with_packs(dir.path(), NodeId(1), Some(1 << 30), 1 << 20) else {
            return Ok(());
        };
        for b in &blocks {
            if let Ok((_, got)) = s.read(&b.id) {
                proptest::prop_assert_eq!(got.to_vec(), plain(b));
            }
            if let Ok(r) = s.read_range(&b.id, 100, 500) {
                let want = plain(b);
                let from = r.offset as usize;
                proptest::prop_assert_eq!(&r.plain[..], &want[from..from + r.plain.len()]);
            }
            let _ = s.stat(&b.id);
        }
    }
}

#[test]
fn damage_inside_a_pack_costs_only_the_damaged_records() {
    for sealed in [false, true] {
        for in_head in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let blocks: Vec<_> = (0..4u8).map(|i| block(70 + i, 6000)).collect();
            let (generation, record) = {
                let s = open(dir.path(), 1 << 20);
                for b in &blocks {
                    put(&s, b);
                }
                let e = s.packs().shared.lock().index[&blocks[1].id];
                (e.generation, e.record)
            };
            if sealed {
                drop(open(dir.path(), 1 << 20));
            }
            let path = dir.path().join("packs").join(generation.to_string());
            let mut bytes = std::fs::read(&path).unwrap();
            // The magic of the second record's head, or a byte of its payload.
            let at = record as usize + if in_head { 1 } else { HEAD + 32 + 3000 };
            bytes[at] ^= 0x21;
            std::fs::write(&path, &bytes).unwrap();
            let s = open(dir.path(), 1 << 20);
            for (i, b) in blocks.iter().enumerate() {
                if i == 1 {
                    // Absent, or found and refused: never served.
                    assert!(s.read(&b.id).is_err(), "sealed {sealed}, in head {in_head}");
                } else {
                    assert_eq!(
                        s.read(&b.id).unwrap().1.to_vec(),
                        plain(b),
                        "block {i}, sealed {sealed}, in head {in_head}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_range_skipped_in_the_newest_pack_is_stepped_over_at_every_later_start() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<_> = (0..3u8).map(|i| block(80 + i, 5000)).collect();
    let (generation, record) = {
        let s = open(dir.path(), 1 << 20);
        for b in &blocks {
            put(&s, b);
        }
        let e = s.packs().shared.lock().index[&blocks[1].id];
        (e.generation, e.record)
    };
    // The middle record never reached the disk (write-back out of order before a power
    // loss), the one after it did.
    let path = dir.path().join("packs").join(generation.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    let len = record_len(5000 + 56 + 64) as usize; // at least the record's head and id
    for b in &mut bytes[record as usize..record as usize + len.min(HEAD + 32 + 4000)] {
        *b = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
    for start in 0..3 {
        // The first start checks the pack whole; the later ones read its heads only.
        let s = open(dir.path(), 1 << 20);
        assert!(s.read(&blocks[0].id).is_ok(), "start {start}");
        assert!(!s.has(&blocks[1].id), "start {start}");
        assert_eq!(
            s.read(&blocks[2].id).unwrap().1.to_vec(),
            plain(&blocks[2]),
            "start {start}"
        );
        assert_eq!(s.usage().blocks, 2, "start {start}");
    }
}

#[test]
fn a_block_deleted_while_a_compaction_copies_it_stays_deleted_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let a = block(90, 6000);
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
    }
    {
        let s = open(dir.path(), 1 << 20);
        // A compaction appended its copy and made it durable, and has not moved the index.
        let copy = durable_copy(&s, &a.id);
        s.packs().shared.lock().copying.insert(a.id, copy);
        // The delete answers; then a crash, before the compaction goes on.
        assert!(s.delete(&a.id).unwrap());
    }
    let s = open(dir.path(), 1 << 20);
    assert!(
        !s.has(&a.id),
        "the compaction's copy brought a deleted block back"
    );
}

#[test]
fn without_packs_a_sparse_pack_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<_> = (0..4u8).map(|i| block(100 + i, 5000)).collect();
    {
        let s = open(dir.path(), 1 << 20);
        for b in &blocks {
            put(&s, b);
        }
    }
    {
        let s = open(dir.path(), 0);
        for b in &blocks[..3] {
            assert!(s.delete(&b.id).unwrap());
        }
        // Nothing to copy into: the pack stays, its last block readable.
        s.packs().compact_now().unwrap();
        assert_eq!(s.read(&blocks[3].id).unwrap().1.to_vec(), plain(&blocks[3]));
    }
    let s = open(dir.path(), 0);
    assert!(s.has(&blocks[3].id));
    assert_eq!(s.usage().blocks, 1);
}

#[test]
fn after_a_failed_fdatasync_no_later_one_vouches_for_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let a = block(110, 3000);
    let ob = a.decode_with_outboard().unwrap().1;
    let file = [
        &crate::format::header(&a, ob.to_bytes().len())[..],
        &a.payload[..],
        &ob.to_bytes()[..],
    ];
    let lsn = s.packs().put(&a.id, &file).unwrap();
    // As if another put's fdatasync had failed before this one's turn.
    s.packs().shared.broken.store(true, Ordering::SeqCst);
    assert!(s.packs().sync_to(lsn).is_err());
    assert!(!s.packs().takes(100));
    // Puts are stored as files from now on, durably.
    let b = block(111, 3000);
    assert_eq!(put(&s, &b), PutOutcome::Written);
    assert!(s.path(&b.id).exists());
}

#[test]
fn only_files_named_as_packs_are_read_as_packs() {
    let dir = tempfile::tempdir().unwrap();
    let a = block(120, 3000);
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
    }
    let first = pack_files(dir.path())[0];
    let packs = dir.path().join("packs");
    // A copy under another spelling of the same number is not a second pack.
    std::fs::copy(
        packs.join(first.to_string()),
        packs.join(format!("0{first}")),
    )
    .unwrap();
    std::fs::write(packs.join("+9"), b"not a pack").unwrap();
    let s = open(dir.path(), 1 << 20);
    assert_eq!(s.read(&a.id).unwrap().1.to_vec(), plain(&a));
    assert_eq!(s.usage().blocks, 1);
}
