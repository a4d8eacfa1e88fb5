//! Tests of the replay of an earlier version's journal.

use std::path::Path;

use meridian_proto::{EncodedBlock, NodeId};

use super::*;
use crate::packs::tests::block;
use crate::store::BlockStore;

/// The block file an earlier version wrote for `b`.
fn file_of(b: &EncodedBlock) -> Vec<u8> {
    let ob = b.decode_with_outboard().unwrap().1.to_bytes();
    let mut f = crate::format::header(b, ob.len()).to_vec();
    f.extend_from_slice(&b.payload);
    f.extend_from_slice(&ob);
    f
}

/// One record as an earlier version appended it.
fn record(generation: u64, kind: u8, id: &BlockId, file: &[u8]) -> Vec<u8> {
    let body_len = (32 + file.len()) as u32;
    let mut r = Vec::new();
    r.extend_from_slice(&MAGIC.to_le_bytes());
    r.extend_from_slice(&generation.to_le_bytes());
    r.push(kind);
    r.extend_from_slice(&body_len.to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&r);
    h.update(id.as_bytes());
    h.update(file);
    r.extend_from_slice(&h.finalize().as_bytes()[..16]);
    r.extend_from_slice(id.as_bytes());
    r.extend_from_slice(file);
    r
}

/// Writes an earlier version's journal: the state file and segment `generation % 2`
/// holding `records` (then zeros, as its written space was longer).
fn write_journal(dir: &Path, retired: u64, generation: u64, records: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = Vec::new();
    state.extend_from_slice(&retired.to_le_bytes());
    state.extend_from_slice(&generation.to_le_bytes());
    let sum = blake3::hash(&state);
    state.extend_from_slice(&sum.as_bytes()[..8]);
    std::fs::write(dir.join("state"), state).unwrap();
    let mut segment: Vec<u8> = records.concat();
    segment.resize(segment.len() + 4096, 0);
    std::fs::write(dir.join((generation % 2).to_string()), segment).unwrap();
}

#[test]
fn an_earlier_versions_journal_puts_its_block_files_right_once_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (
        block(1, 4096),
        block(2, 20_000),
        block(3, 100),
        block(4, 700),
    );
    let blocks = dir.path().join("blocks");
    for x in [&a, &b, &c, &d] {
        let hex = x.id.to_hex();
        std::fs::create_dir_all(blocks.join(&hex[..2])).unwrap();
    }
    let path = |x: &EncodedBlock| {
        let hex = x.id.to_hex();
        blocks.join(&hex[..2]).join(hex)
    };
    // What a crash can do to files written without fsync: a gone, b cut short; c was
    // deleted after its put, d deleted and stored again as a file.
    std::fs::write(path(&b), &file_of(&b)[..1000]).unwrap();
    std::fs::write(path(&c), file_of(&c)).unwrap();
    std::fs::write(path(&d), file_of(&d)).unwrap();
    write_journal(
        &dir.path().join("journal"),
        4,
        5,
        &[
            record(5, PUT, &a.id, &file_of(&a)),
            record(5, PUT, &b.id, &file_of(&b)),
            record(5, PUT, &c.id, &file_of(&c)),
            record(5, DELETE, &c.id, &[]),
            record(5, PUT, &d.id, &file_of(&d)),
            record(5, DELETE, &d.id, &[]),
            record(5, KEEP, &d.id, &[]),
        ],
    );
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1 << 30)).unwrap();
    for x in [&a, &b, &d] {
        let (got, _) = s.read(&x.id).expect("restored and verified");
        assert_eq!(got.id, x.id);
    }
    assert!(!s.has(&c.id));
    assert_eq!(s.usage().blocks, 3);
    assert!(!dir.path().join("journal").exists());
    // Gone for good: a delete now is not undone at the next open.
    assert!(s.delete(&a.id).unwrap());
    drop(s);
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1 << 30)).unwrap();
    assert!(!s.has(&a.id));
    assert_eq!(s.usage().blocks, 2);
}

#[test]
fn a_retired_generation_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let a = block(5, 3000);
    write_journal(
        &dir.path().join("journal"),
        7,
        7,
        &[record(7, PUT, &a.id, &file_of(&a))],
    );
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1 << 30)).unwrap();
    assert!(!s.has(&a.id));
    assert!(!dir.path().join("journal").exists());
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
        let dir = tempfile::tempdir().unwrap();
        let (journal_dir, blocks) = (dir.path().join("journal"), dir.path().join("blocks"));
        std::fs::create_dir_all(&blocks).unwrap();
        let puts: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (block(i as u8, 64).id, vec![i as u8; *n]))
            .collect();
        let records: Vec<_> = puts.iter().map(|(id, bytes)| record(3, PUT, id, bytes)).collect();
        write_journal(&journal_dir, 2, 3, &records);
        let segment = journal_dir.join("1");
        let whole = std::fs::read(&segment).unwrap();
        let used = whole.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        let keep = (used + 64).min(whole.len());
        let mut damaged = meridian_proto::mutate::mutate(&whole[..keep], &edits);
        damaged.extend_from_slice(&whole[keep..]);
        std::fs::write(&segment, &damaged).unwrap();
        let mut replayed = Vec::new();
        let _ = replay_and_remove(&journal_dir, &blocks, |r| {
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
