//! Tests of the small blocks' journal, through the block store that uses it.

use std::path::Path;

use meridian_proto::{EncodedBlock, NodeId};

use crate::store::BlockStore;

fn block(seed: u8, len: usize) -> EncodedBlock {
    // Incompressible, so the record lengths are known.
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut data);
    EncodedBlock::encode(&data).unwrap()
}

fn open(dir: &Path, segment_len: u64) -> BlockStore {
    BlockStore::open_with_journal(dir, NodeId(1), Some(1 << 30), segment_len).unwrap()
}

fn put(s: &BlockStore, b: &EncodedBlock) {
    let ob = b.decode_with_outboard().unwrap().1;
    s.put(b, &ob).unwrap();
}

#[test]
fn small_blocks_whose_files_were_lost_come_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (block(1, 4096), block(2, 20_000), block(3, 100));
    {
        let s = open(dir.path(), 1 << 20);
        for x in [&a, &b, &c] {
            put(&s, x);
        }
    }
    // The reopen retired the generation holding the puts: a delete now is not undone by
    // a later replay.
    let s = open(dir.path(), 1 << 20);
    assert!(s.delete(&a.id).unwrap());
    drop(s);
    let s = open(dir.path(), 1 << 20);
    assert!(!s.has(&a.id));
    assert!(s.read(&b.id).is_ok());
    drop(s);

    // What a crash can do to files written without fsync: gone, cut short, or empty.
    // Again, with the damage done before any reopen.
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 20);
        for x in [&a, &b, &c] {
            put(&s, x);
        }
        std::fs::remove_file(s.path(&a.id)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.path(&b.id))
            .unwrap();
        f.set_len(1000).unwrap();
        std::fs::write(s.path(&c.id), b"").unwrap();
    }
    let s = open(dir.path(), 1 << 20);
    for x in [&a, &b, &c] {
        let (got, _) = s.read(&x.id).expect("restored and verified");
        assert_eq!(got.id, x.id);
    }
    assert_eq!(s.usage().blocks, 3);
}

#[test]
fn a_block_deleted_after_its_put_is_not_brought_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block(4, 8192), block(5, 8192));
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
        put(&s, &b);
        assert!(s.delete(&a.id).unwrap());
        // Put again after a delete: present in the end.
        assert!(s.delete(&b.id).unwrap());
        put(&s, &b);
        assert!(s.delete_if(&a.id, || true).unwrap().is_none());
    }
    let s = open(dir.path(), 1 << 20);
    assert!(!s.has(&a.id));
    assert!(s.read(&b.id).is_ok());
    assert_eq!(s.usage().blocks, 1);
}

#[test]
fn full_segments_retire_in_turn_and_every_block_survives() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<_> = (0..40u8).map(|i| block(i.wrapping_add(10), 9000)).collect();
    {
        // Four blocks' records fit a 40 KiB segment: ten generations.
        let s = open(dir.path(), 40 << 10);
        let (first, _) = s.journal_generations().unwrap();
        for b in &blocks {
            put(&s, b);
        }
        let (generation, _) = s.journal_generations().unwrap();
        assert!(
            generation >= first + 9,
            "generation {generation} after starting at {first}"
        );
        // A large block bypasses the journal.
        put(&s, &block(99, 600 << 10));
        s.wait_journal_retired();
        let (gen2, retired) = s.journal_generations().unwrap();
        assert_eq!(gen2, generation);
        assert_eq!(retired + 1, generation);
        // The files of the active generation go missing, as after a crash.
        for b in &blocks[36..] {
            std::fs::remove_file(s.path(&b.id)).unwrap();
        }
    }
    let s = open(dir.path(), 40 << 10);
    for b in &blocks {
        assert!(s.read(&b.id).is_ok(), "block {} lost", b.id);
    }
    assert_eq!(s.usage().blocks, 41);
}

#[test]
fn a_damaged_record_ends_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block(6, 5000), block(7, 5000));
    let segment;
    {
        let s = open(dir.path(), 1 << 20);
        put(&s, &a);
        put(&s, &b);
        let (generation, _) = s.journal_generations().unwrap();
        segment = dir
            .path()
            .join("journal")
            .join((generation % 2).to_string());
        std::fs::remove_file(s.path(&a.id)).unwrap();
        std::fs::remove_file(s.path(&b.id)).unwrap();
    }
    // Damage the last byte of the second record (a torn append).
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&x| x != 0).unwrap();
    bytes[end] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let s = open(dir.path(), 1 << 20);
    assert!(s.read(&a.id).is_ok());
    assert!(!s.has(&b.id));
}

#[test]
fn a_block_stored_as_a_file_after_its_delete_was_journaled_is_kept_by_the_replay() {
    use crate::journal::{Journal, Replayed};
    let dir = tempfile::tempdir().unwrap();
    let (journal_dir, blocks) = (dir.path().join("journal"), dir.path().join("blocks"));
    std::fs::create_dir_all(&blocks).unwrap();
    let b = block(8, 4000);
    {
        let j = Journal::open(&journal_dir, &blocks, 1 << 20, |_| Ok(())).unwrap();
        j.append_put(&b.id, &[b"file bytes"])
            .unwrap()
            .placed_then_sync()
            .unwrap();
        j.note_delete(&b.id);
        // Stored again through the file path (as when the journal does not take it).
        j.note_file_put(&b.id).unwrap();
        // Present already: the put's record is durable.
        j.settle_present(&b.id).unwrap();
    }
    let mut seen = Vec::new();
    Journal::open(&journal_dir, &blocks, 1 << 20, |r| {
        seen.push(match r {
            Replayed::Put(..) => "put",
            Replayed::Deleted(_) => "deleted",
            Replayed::Kept(_) => "kept",
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, ["kept"]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: meridian_proto::mutate::cases(200), ..Default::default() })]

    /// A fuzz target for the journal's record decoder: a segment damaged in any way (edits
    /// of a valid one: magics, generations, kinds, lengths, checksums, bodies, the zeros
    /// after the last record) replays only records that were appended, each with its own
    /// bytes, in order, and never panics the replay.
    #[test]
    fn a_damaged_segment_replays_only_what_was_appended(
        sizes in proptest::collection::vec(1usize..3000, 1..5),
        edits in proptest::collection::vec(
            (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()),
            1..6,
        ),
    ) {
        use crate::journal::{Journal, Replayed};
        let dir = tempfile::tempdir().unwrap();
        let (journal_dir, blocks) = (dir.path().join("journal"), dir.path().join("blocks"));
        std::fs::create_dir_all(&blocks).unwrap();
        let puts: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (block(i as u8, 64).id, vec![i as u8; *n]))
            .collect();
        let segment;
        {
            let j = Journal::open(&journal_dir, &blocks, 1 << 20, |_| Ok(())).unwrap();
            for (id, bytes) in &puts {
                j.append_put(id, &[bytes]).unwrap().placed_then_sync().unwrap();
            }
            let (generation, _) = j.generations();
            segment = journal_dir.join((generation % 2).to_string());
        }
        // The records and the zeros after them (the segment's written space is longer).
        let whole = std::fs::read(&segment).unwrap();
        let used = whole.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        let keep = (used + 64).min(whole.len());
        let mut damaged = meridian_proto::mutate::mutate(&whole[..keep], &edits);
        damaged.extend_from_slice(&whole[keep..]);
        std::fs::write(&segment, &damaged).unwrap();
        let mut replayed = Vec::new();
        let _ = Journal::open(&journal_dir, &blocks, 1 << 20, |r| {
            if let Replayed::Put(id, bytes) = r {
                replayed.push((id, bytes));
            }
            Ok(())
        });
        // A prefix of what was appended, record for record.
        proptest::prop_assert!(replayed.len() <= puts.len());
        for (got, want) in replayed.iter().zip(&puts) {
            proptest::prop_assert_eq!(got, want);
        }
    }
}
