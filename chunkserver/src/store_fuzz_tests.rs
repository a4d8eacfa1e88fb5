//! A fuzz target for the block file decoders, through the store that reads them: a block
//! file damaged in any way (edits of a valid file: its header's lengths, compression and
//! id, its frame table, payload and outboard) is read whole or by range as an error or as
//! exactly the block's plaintext, never as other bytes and never with a panic.

use std::fs;

use meridian_proto::mutate::mutate;
use meridian_proto::{EncodedBlock, NodeId};
use proptest::prelude::*;

use super::BlockStore;

proptest! {
    #![proptest_config(ProptestConfig { cases: meridian_proto::mutate::cases(300), ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_block_file_reads_as_an_error_or_its_own_plaintext(
        data in prop_oneof![
            proptest::collection::vec(0u8..4, 1..70_000),
            proptest::collection::vec(any::<u8>(), 1..40_000),
        ],
        // Edits land in the 56-byte header half the time.
        edits in proptest::collection::vec(
            (prop_oneof![any::<usize>(), (0usize..56)], any::<u8>(), any::<u8>()), 1..5),
        range in (any::<u32>(), 1u32..100_000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // No packs: the block is a file of its own (packs_tests.rs damages packs).
        let s = BlockStore::open_with_packs(dir.path(), NodeId(1), Some(1 << 30), 0).unwrap();
        let block = EncodedBlock::encode(&data).unwrap();
        let (_, outboard) = block.decode_with_outboard().unwrap();
        s.put(&block, &outboard).unwrap();
        let path = s.path(&block.id);
        let damaged = mutate(&fs::read(&path).unwrap(), &edits);
        fs::write(&path, &damaged).unwrap();
        if let Ok((_, plain)) = s.read(&block.id) {
            prop_assert_eq!(&plain[..], &data[..]);
        }
        let offset = u64::from(range.0) % (data.len() as u64 + 10);
        if let Ok(r) = s.read_range(&block.id, offset, u64::from(range.1)) {
            let from = r.offset as usize;
            prop_assert!(from <= data.len());
            let want = &data[from..(from + r.plain.len()).min(data.len())];
            prop_assert_eq!(&r.plain[..], want);
        }
        let _ = s.stat(&block.id);
    }
}
