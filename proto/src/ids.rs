//! Identifiers shared by every component.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A malformed identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A block id must be exactly 32 bytes (64 hex digits).
    #[error("block id must be 32 bytes, got {0}")]
    BlockIdLength(usize),
    /// A block id in text must be hexadecimal.
    #[error("block id is not hexadecimal: {0:?}")]
    BlockIdHex(String),
    /// An inode's local number must fit below the region bits.
    #[error("inode local number {0} does not fit in {bits} bits", bits = InodeId::LOCAL_BITS)]
    InodeLocalTooLarge(u64),
}

/// The name of a block: the blake3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// Length of a block id in bytes.
    pub const LEN: usize = 32;

    /// The id of `plaintext`: its blake3 hash.
    pub fn of(plaintext: &[u8]) -> Self {
        BlockId(*blake3::hash(plaintext).as_bytes())
    }

    /// Reads an id from raw bytes (as carried in protobuf messages).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdError::BlockIdLength(bytes.len()))?;
        Ok(BlockId(arr))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits identify a block in logs, like a short git hash.
        write!(f, "BlockId({})", &self.to_hex()[..12])
    }
}

impl FromStr for BlockId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| IdError::BlockIdHex(s.to_string()))?;
        BlockId::from_slice(&bytes)
    }
}

impl Serialize for BlockId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlockId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A server (chunkserver or metaserver) inside a region.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A failure domain inside a region (rack, availability zone), named by the operator.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ZoneId(pub String);

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ZoneId {
    fn from(s: &str) -> Self {
        ZoneId(s.to_string())
    }
}

/// A region: one metadata Raft group and its chunkservers.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RegionId(pub u16);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region-{}", self.0)
    }
}

/// An inode number, unique in the whole deployment: the origin region sits in the top
/// [`InodeId::REGION_BITS`] bits, a per-region counter in the rest.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct InodeId(pub u64);

impl InodeId {
    /// Bits of an inode number that name its origin region.
    pub const REGION_BITS: u32 = 16;
    /// Bits left for the region-local counter.
    pub const LOCAL_BITS: u32 = 64 - Self::REGION_BITS;
    const LOCAL_MASK: u64 = (1 << Self::LOCAL_BITS) - 1;

    /// Builds an inode number from its origin region and region-local counter.
    pub fn new(region: RegionId, local: u64) -> Result<Self, IdError> {
        if local > Self::LOCAL_MASK {
            return Err(IdError::InodeLocalTooLarge(local));
        }
        Ok(InodeId((u64::from(region.0) << Self::LOCAL_BITS) | local))
    }

    /// The region that created this inode.
    pub fn region(self) -> RegionId {
        RegionId((self.0 >> Self::LOCAL_BITS) as u16)
    }

    /// The region-local counter part.
    pub fn local(self) -> u64 {
        self.0 & Self::LOCAL_MASK
    }
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino-{}:{}", self.region().0, self.local())
    }
}

/// A metadata client's secret key. The id a client goes by (in its requests and in the
/// change feed, which other clients of a volume read) is [`client_id_of`] its key; what
/// only the client itself may ask for (its durable notices) names the key, so a client
/// seen in the feed cannot be followed by another.
pub const CLIENT_KEY_LEN: usize = 32;

/// The id of the client holding `key`: the first eight bytes of its blake3 hash (never 0).
pub fn client_id_of(key: &[u8; CLIENT_KEY_LEN]) -> u64 {
    let hash = blake3::hash(key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(id).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_id_hex_round_trip() {
        let id = BlockId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<BlockId>().unwrap(), id);
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn block_id_rejects_bad_text() {
        assert!(matches!(
            "zz".parse::<BlockId>(),
            Err(IdError::BlockIdHex(_))
        ));
        assert_eq!("abcd".parse::<BlockId>(), Err(IdError::BlockIdLength(2)));
        assert_eq!(
            BlockId::from_slice(&[0; 31]),
            Err(IdError::BlockIdLength(31))
        );
    }

    #[test]
    fn inode_rejects_oversized_local() {
        assert_eq!(
            InodeId::new(RegionId(1), 1 << 48),
            Err(IdError::InodeLocalTooLarge(1 << 48))
        );
    }

    proptest! {
        #[test]
        fn inode_packs_region_and_local(region: u16, local in 0u64..(1 << 48)) {
            let ino = InodeId::new(RegionId(region), local).unwrap();
            prop_assert_eq!(ino.region(), RegionId(region));
            prop_assert_eq!(ino.local(), local);
        }

        #[test]
        fn inodes_of_different_regions_never_collide(a: u16, b: u16, la in 0u64..(1 << 48), lb in 0u64..(1 << 48)) {
            prop_assume!(a != b);
            prop_assert_ne!(InodeId::new(RegionId(a), la).unwrap(), InodeId::new(RegionId(b), lb).unwrap());
        }
    }

    #[test]
    fn a_client_id_is_its_keys_hash_and_never_zero() {
        let key = [3u8; CLIENT_KEY_LEN];
        assert_eq!(client_id_of(&key), client_id_of(&[3u8; CLIENT_KEY_LEN]));
        assert_ne!(client_id_of(&key), client_id_of(&[4u8; CLIENT_KEY_LEN]));
        let hash = blake3::hash(&key);
        let expected = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap());
        assert_eq!(client_id_of(&key), expected.max(1));
        assert_ne!(client_id_of(&[0u8; CLIENT_KEY_LEN]), 0);
    }
}
