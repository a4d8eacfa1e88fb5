//! Verified ranges of a block: BLAKE3 is a Merkle tree, so a block's id can be recomputed
//! from the chaining values of its 16 KiB groups (the outboard), and a group checked alone.
//!
//! A reader of a few KiB fetches the groups covering them and the outboard (32 bytes per
//! 16 KiB, 8 KiB for a 4 MiB block), recomputes each group's chaining value, compares it
//! with the outboard's, and recomputes the root from the outboard: the bytes are the
//! block's if and only if the root is the block id. A block of one group has no outboard;
//! its range is the whole block, hashed as usual.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::block::BlockError;
use crate::ids::BlockId;

/// Plaintext bytes per group: a power of two of BLAKE3 chunks, so every group is a
/// subtree of the block's tree. Part of the on-disk and on-wire format.
pub const GROUP_LEN: usize = 16 * 1024;

/// The chaining values of a block's groups, in order (empty for a block of one group).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Outboard(Vec<ChainingValue>);

/// Groups in a block of `raw_len` plaintext bytes (at least one).
pub fn groups(raw_len: u64) -> u64 {
    raw_len.div_ceil(GROUP_LEN as u64).max(1)
}

/// Bytes of the outboard of a block of `raw_len` plaintext bytes.
pub fn outboard_len(raw_len: u64) -> u64 {
    if raw_len <= GROUP_LEN as u64 {
        0
    } else {
        groups(raw_len) * 32
    }
}

/// The group-aligned plaintext range covering `[offset, offset + len)` of a block of
/// `raw_len` bytes: the bytes a verified range read fetches.
pub fn aligned(raw_len: u64, offset: u64, len: u64) -> (u64, u64) {
    let g = GROUP_LEN as u64;
    let start = (offset / g) * g;
    let end = offset.saturating_add(len).div_ceil(g).saturating_mul(g);
    (start.min(raw_len), end.min(raw_len))
}

fn group_cv(index: usize, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset((index * GROUP_LEN) as u64);
    h.update(data);
    h.finalize_non_root()
}

impl Outboard {
    /// The id and outboard of `plain`, in one pass over it.
    pub fn compute(plain: &[u8]) -> (BlockId, Outboard) {
        if plain.len() <= GROUP_LEN {
            return (BlockId::of(plain), Outboard::default());
        }
        let cvs: Vec<ChainingValue> = plain
            .chunks(GROUP_LEN)
            .enumerate()
            .map(|(i, g)| group_cv(i, g))
            .collect();
        let ob = Outboard(cvs);
        (ob.root(plain.len() as u64), ob)
    }

    /// Parses a stored or received outboard for a block of `raw_len` bytes. Its values
    /// are not trusted until [`Outboard::verify`] has compared its root with the id.
    pub fn from_bytes(raw_len: u64, bytes: &[u8]) -> Result<Outboard, BlockError> {
        if bytes.len() as u64 != outboard_len(raw_len) {
            return Err(BlockError::Outboard(format!(
                "{} bytes for a block of {raw_len} bytes, want {}",
                bytes.len(),
                outboard_len(raw_len)
            )));
        }
        Ok(Outboard(
            bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32-byte chunks"))
                .collect(),
        ))
    }

    /// The outboard as stored and sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.concat()
    }

    /// The chaining value of the subtree over bytes `[from, from + len)` of the block.
    fn subtree(&self, from: u64, len: u64) -> ChainingValue {
        if len <= GROUP_LEN as u64 {
            return self.0[(from / GROUP_LEN as u64) as usize];
        }
        let left_len = left_subtree_len(len);
        let left = self.subtree(from, left_len);
        let right = self.subtree(from + left_len, len - left_len);
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }

    /// The block id these values make for a block of `raw_len` (> one group) bytes.
    fn root(&self, raw_len: u64) -> BlockId {
        let left_len = left_subtree_len(raw_len);
        let left = self.subtree(0, left_len);
        let right = self.subtree(left_len, raw_len - left_len);
        let root = merge_subtrees_root(&left, &right, Mode::Hash);
        BlockId::from_slice(root.as_bytes()).expect("32 bytes")
    }

    /// Checks that `data`, the plaintext at group-aligned `offset` of block `id` of
    /// `raw_len` bytes, is the block's: the outboard must make the id, and each group of
    /// `data` its value in the outboard. Wrong bytes are never accepted.
    pub fn verify(
        &self,
        id: &BlockId,
        raw_len: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BlockError> {
        let g = GROUP_LEN as u64;
        let end = offset.checked_add(data.len() as u64);
        let whole_groups = offset.is_multiple_of(g)
            && end.is_some_and(|e| e <= raw_len && (e.is_multiple_of(g) || e == raw_len));
        if !whole_groups {
            return Err(BlockError::Outboard(format!(
                "range {offset}+{} is not whole groups of a block of {raw_len} bytes",
                data.len()
            )));
        }
        if raw_len <= g {
            let actual = BlockId::of(data);
            return match (data.len() as u64 == raw_len, actual == *id) {
                (true, true) => Ok(()),
                (false, _) => Err(BlockError::LengthMismatch {
                    id: *id,
                    got: data.len(),
                    want: raw_len as u32,
                }),
                (true, false) => Err(BlockError::HashMismatch { id: *id, actual }),
            };
        }
        if self.0.len() as u64 != groups(raw_len) {
            return Err(BlockError::Outboard(format!(
                "{} values for {} groups",
                self.0.len(),
                groups(raw_len)
            )));
        }
        let actual = self.root(raw_len);
        if actual != *id {
            return Err(BlockError::HashMismatch { id: *id, actual });
        }
        self.verify_groups(id, raw_len, offset, data)
    }

    /// [`verify`](Self::verify) with an outboard already verified against `id` (its root
    /// is not computed again): each group of `data` must have its value here.
    pub fn verify_groups(
        &self,
        id: &BlockId,
        raw_len: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BlockError> {
        let g = GROUP_LEN as u64;
        let end = offset.checked_add(data.len() as u64);
        let whole_groups = offset.is_multiple_of(g)
            && end.is_some_and(|e| e <= raw_len && (e.is_multiple_of(g) || e == raw_len));
        if !whole_groups || raw_len <= g || self.0.len() as u64 != groups(raw_len) {
            return self.verify(id, raw_len, offset, data);
        }
        let first = (offset / g) as usize;
        for (i, group) in data.chunks(GROUP_LEN).enumerate() {
            if group_cv(first + i, group) != self.0[first + i] {
                return Err(BlockError::Corrupt {
                    id: *id,
                    reason: format!("group {} does not match the outboard", first + i),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
            .collect()
    }

    #[test]
    fn the_root_of_the_groups_is_the_blake3_hash() {
        for len in [
            0,
            1,
            GROUP_LEN - 1,
            GROUP_LEN,
            GROUP_LEN + 1,
            2 * GROUP_LEN,
            3 * GROUP_LEN + 17,
            4 << 20,
            (4 << 20) - 1,
            5_000_000,
        ] {
            let d = data(len, 7);
            let (id, ob) = Outboard::compute(&d);
            assert_eq!(id, BlockId::of(&d), "length {len}");
            assert_eq!(ob.to_bytes().len() as u64, outboard_len(len as u64));
        }
    }

    #[test]
    fn every_group_verifies_alone_and_a_changed_byte_never_does() {
        let d = data(4 << 20, 3);
        let (id, ob) = Outboard::compute(&d);
        let raw = d.len() as u64;
        for (offset, len) in [
            (0, 4096),
            (GROUP_LEN as u64 * 7 + 5, 10),
            (raw - 1, 1),
            (100_000, 70_000),
        ] {
            let (s, e) = aligned(raw, offset, len);
            ob.verify(&id, raw, s, &d[s as usize..e as usize]).unwrap();
            ob.verify_groups(&id, raw, s, &d[s as usize..e as usize])
                .unwrap();
            let mut bad = d[s as usize..e as usize].to_vec();
            bad[(offset - s) as usize] ^= 1;
            assert!(ob.verify(&id, raw, s, &bad).is_err());
            assert!(ob.verify_groups(&id, raw, s, &bad).is_err());
        }
        // A known outboard checks groups alone, but a length it was not made for sends
        // the check back to the root, which the id refuses.
        assert!(matches!(
            ob.verify_groups(&id, raw + GROUP_LEN as u64, 0, &d[..GROUP_LEN]),
            Err(BlockError::Outboard(_) | BlockError::HashMismatch { .. })
        ));
        // An outboard for other bytes does not make this id.
        let (_, other) = Outboard::compute(&data(4 << 20, 4));
        assert!(matches!(
            other.verify(&id, raw, 0, &d[..GROUP_LEN]),
            Err(BlockError::HashMismatch { .. })
        ));
        // Misaligned ranges and wrong lengths are refused, not guessed at.
        assert!(ob.verify(&id, raw, 1, &d[1..GROUP_LEN + 1]).is_err());
        assert!(Outboard::from_bytes(raw, &ob.to_bytes()[32..]).is_err());
    }

    #[test]
    fn a_small_block_is_its_own_range() {
        let d = data(5000, 1);
        let (id, ob) = Outboard::compute(&d);
        assert_eq!(aligned(5000, 100, 10), (0, 5000));
        ob.verify(&id, 5000, 0, &d).unwrap();
        assert!(ob.verify(&id, 5000, 0, &d[..4999]).is_err());
    }

    proptest! {
        #[test]
        fn any_range_of_any_block_verifies(len in 1usize..200_000, a: prop::sample::Index, b: prop::sample::Index, seed: u32) {
            let d = data(len, seed);
            let (id, ob) = Outboard::compute(&d);
            let ob = Outboard::from_bytes(len as u64, &ob.to_bytes()).unwrap();
            let (x, y) = (a.index(len) as u64, b.index(len) as u64);
            let (s, e) = aligned(len as u64, x.min(y), x.max(y) - x.min(y) + 1);
            prop_assert!(s <= x.min(y) && e > x.max(y));
            prop_assert!(ob.verify(&id, len as u64, s, &d[s as usize..e as usize]).is_ok());
        }
    }
}
