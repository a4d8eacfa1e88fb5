//! Tests of the block store: puts, reads, ranges, damage, space.

use super::*;

/// A store keeping every block as a file of its own, so that tests can damage the files
/// (packs are tested in `packs_tests.rs`).
fn store(dir: &Path) -> BlockStore {
    BlockStore::open_with_packs(dir, NodeId(1), Some(1 << 30), 0).unwrap()
}

fn block(seed: u8, len: usize) -> EncodedBlock {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect();
    EncodedBlock::encode(&data).unwrap()
}

fn ob(b: &EncodedBlock) -> Outboard {
    b.decode_with_outboard().unwrap().1
}

#[test]
fn put_read_delete_and_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let b = block(3, 200_000);
    assert_eq!(s.put(&b, &ob(&b)).unwrap(), PutOutcome::Written);
    assert_eq!(s.put(&b, &ob(&b)).unwrap(), PutOutcome::AlreadyPresent);
    let usage = s.usage();
    assert_eq!(usage.blocks, 1);
    assert_eq!(
        usage.used,
        (format::HEADER_LEN + b.payload.len() + ob(&b).to_bytes().len()) as u64
    );
    let (stored, plain) = s.read(&b.id).unwrap();
    assert_eq!(stored, b);
    assert_eq!(plain, b.decode().unwrap());
    let st = s.stat(&b.id).unwrap().unwrap();
    assert_eq!(st.raw_len, 200_000);
    assert_eq!(st.stored_len, usage.used);
    assert!(s.delete(&b.id).unwrap());
    assert!(!s.delete(&b.id).unwrap());
    assert_eq!(s.usage().blocks, 0);
    assert_eq!(s.usage().used, 0);
    assert!(matches!(s.read(&b.id), Err(ChunkError::NotFound(_))));
    assert_eq!(s.stat(&b.id).unwrap(), None);
    // The files kept open for reads follow removals, moves aside and new copies.
    assert!(matches!(
        s.read_range(&b.id, 0, 200_000),
        Err(ChunkError::NotFound(_))
    ));
    s.put(&b, &ob(&b)).unwrap();
    assert_eq!(
        s.read_range(&b.id, 0, 200_000).unwrap().plain,
        b.decode().unwrap()
    );
    assert!(s.quarantine(&b.id).unwrap().is_some());
    assert!(matches!(s.read(&b.id), Err(ChunkError::NotFound(_))));
    assert!(matches!(
        s.read_range(&b.id, 0, 200_000),
        Err(ChunkError::NotFound(_))
    ));
}

#[test]
fn reopen_counts_blocks_and_removes_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block(5, 10_000), block(7, 3_000));
    {
        let s = store(dir.path());
        s.put(&a, &ob(&a)).unwrap();
        s.put(&b, &ob(&b)).unwrap();
    }
    fs::write(dir.path().join("tmp").join("half-written.tmp"), b"partial").unwrap();
    let s = store(dir.path());
    assert_eq!(s.usage().blocks, 2);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(s.read(&a.id).unwrap().0, a);
}

#[test]
fn damaged_files_are_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let b = block(9, 50_000);
    s.put(&b, &ob(&b)).unwrap();
    let path = s.path(&b.id);
    let original = fs::read(&path).unwrap();

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    fs::write(&path, &flipped).unwrap();
    assert!(matches!(s.read(&b.id), Err(ChunkError::Corrupt { .. })));

    fs::write(&path, &original[..original.len() - 10]).unwrap();
    assert!(matches!(s.read(&b.id), Err(ChunkError::Corrupt { .. })));
    assert!(matches!(s.stat(&b.id), Err(ChunkError::Corrupt { .. })));

    // A put of the right bytes repairs a damaged copy (bit rot keeps the file's size).
    fs::write(&path, &flipped).unwrap();
    assert_eq!(s.put(&b, &ob(&b)).unwrap(), PutOutcome::Written);
    assert_eq!(s.read(&b.id).unwrap().0, b);
    assert_eq!(s.usage().blocks, 1);
    assert_eq!(s.usage().used, original.len() as u64);
}

#[test]
fn a_range_reads_only_its_groups_verified_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut x = 88172645463325252u64;
    let random: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let framed = block(3, 300_000);
    assert_eq!(framed.compression, Compression::Lz4Frames);
    let raw = EncodedBlock::encode(&random).unwrap();
    assert_eq!(raw.compression, Compression::None);
    let small = block(5, 3000);
    for b in [&framed, &raw, &small] {
        s.put(b, &ob(b)).unwrap();
        let plain = b.decode().unwrap();
        let cases = [
            (0u64, 4096u64),
            (20_000, 1),
            (100_000, 50_000),
            (plain.len() as u64 - 1, 1),
            // The whole block (read at once, around the page cache where it is large).
            (0, plain.len() as u64),
        ];
        for (offset, len) in cases.into_iter().filter(|(o, _)| *o < plain.len() as u64) {
            let r = s.read_range(&b.id, offset, len).unwrap();
            assert!(r.offset <= offset);
            assert!(r.offset + r.plain.len() as u64 >= (offset + len).min(plain.len() as u64));
            assert_eq!(
                r.plain,
                plain.slice(r.offset as usize..r.offset as usize + r.plain.len())
            );
            r.outboard
                .verify(&b.id, plain.len() as u64, r.offset, &r.plain)
                .unwrap();
        }
        assert!(matches!(
            s.read_range(&b.id, plain.len() as u64, 1),
            Err(ChunkError::OutOfRange { .. })
        ));
    }
    // A flipped byte inside the groups read is refused, with the outboard kept from
    // the reads above or read again (a new store).
    drop(s);
    let s = store(dir.path());
    s.read_range(&raw.id, 40_000, 10).unwrap();
    let path = s.path(&raw.id);
    let original = fs::read(&path).unwrap();
    let mut bad = original.clone();
    bad[format::HEADER_LEN + 40_000] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert!(matches!(
        s.read_range(&raw.id, 40_000, 10),
        Err(ChunkError::Corrupt { .. })
    ));
    drop(s);
    let s = store(dir.path());
    assert!(matches!(
        s.read_range(&raw.id, 40_000, 10),
        Err(ChunkError::Corrupt { .. })
    ));
    // So is the whole block read at once.
    assert!(matches!(
        s.read_range(&raw.id, 0, random.len() as u64),
        Err(ChunkError::Corrupt { .. })
    ));
    // So is a flipped byte of the outboard, read from disk.
    let mut bad = original.clone();
    let at = bad.len() - 5;
    bad[at] ^= 1;
    fs::write(&path, &bad).unwrap();
    drop(s);
    let s = store(dir.path());
    assert!(matches!(
        s.read_range(&raw.id, 40_000, 10),
        Err(ChunkError::Corrupt { .. })
    ));
    // A file from before outboards (format 1) is read whole and still verified.
    let mut v1 = format::header(&raw, 0)[..format::HEADER_LEN_V1].to_vec();
    v1[8] = 1;
    v1.extend_from_slice(&raw.payload);
    fs::write(&path, &v1).unwrap();
    let r = s.read_range(&raw.id, 40_000, 10).unwrap();
    assert_eq!(
        r.plain[..],
        random[r.offset as usize..r.offset as usize + r.plain.len()]
    );
    assert_eq!(s.read(&raw.id).unwrap().1, random);
}

#[test]
fn a_full_store_refuses_with_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1000)).unwrap();
    let b = block(11, 100_000);
    let b = EncodedBlock {
        payload: b.decode().unwrap(),
        compression: Compression::None,
        ..b
    };
    assert!(matches!(
        s.put(&b, &ob(&b)),
        Err(ChunkError::NoSpace { .. })
    ));
    assert_eq!(s.usage().blocks, 0);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// Blocks put together: the small ones appended to a pack and made durable by one
/// fdatasync, a large one stored as a file, a block twice in one call stored once; each
/// answered in order, and every one reads back after a reopen.
#[test]
fn blocks_put_together_are_each_stored_and_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1 << 30)).unwrap();
    let small: Vec<EncodedBlock> = (1..=5).map(|i| block(i, 3000 + 100 * i as usize)).collect();
    let mut noise = vec![0u8; 2 << 20];
    blake3::Hasher::new()
        .update(b"incompressible")
        .finalize_xof()
        .fill(&mut noise);
    let large = EncodedBlock::encode(&noise).unwrap();
    let mut all: Vec<&EncodedBlock> = small.iter().collect();
    all.insert(2, &large);
    all.push(&small[0]);
    let obs: Vec<Outboard> = all.iter().map(|b| ob(b)).collect();
    let pairs: Vec<(&EncodedBlock, &Outboard)> = all.iter().copied().zip(&obs).collect();
    let outcomes: Vec<PutOutcome> = s.put_many(&pairs).into_iter().map(Result::unwrap).collect();
    let mut want = vec![PutOutcome::Written; all.len()];
    *want.last_mut().unwrap() = PutOutcome::AlreadyPresent;
    assert_eq!(outcomes, want);
    assert_eq!(s.usage().blocks, 6);
    assert!(s.packs().contains(&small[0].id), "small blocks are packed");
    assert!(!s.packs().contains(&large.id), "a large one is a file");
    drop(s);
    let s = BlockStore::open(dir.path(), NodeId(1), Some(1 << 30)).unwrap();
    assert_eq!(s.usage().blocks, 6);
    for b in small.iter().chain([&large]) {
        assert_eq!(s.read(&b.id).unwrap().1, b.decode().unwrap());
    }
    // Again, all present.
    let again: Vec<PutOutcome> = s.put_many(&pairs).into_iter().map(Result::unwrap).collect();
    assert!(again.iter().all(|o| *o == PutOutcome::AlreadyPresent));
}
