//! Small blocks carried by the metadata until chunkservers hold them (docs/adr/0018). A
//! small commit (an fsync'd 4 KiB write, a small file's close) carries its blocks'
//! plaintext in its Raft entry, so the entry's majority of logs makes them durable and the
//! fsync does not wait for a put first; the writer puts them to chunkservers afterwards
//! and then unstages them. Until then every member keeps them and a reader whose
//! chunkservers lack such a block reads it from the metadata.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Extent;
use crate::{BlockId, InodeId, RegionId};

/// The most plaintext bytes one commit may carry staged.
pub const STAGED_MAX: usize = 64 << 10;
/// The most blocks one commit may carry staged.
pub const STAGED_BLOCKS_MAX: usize = 16;
/// The most blocks one unstaging names.
pub const UNSTAGE_MAX: usize = 1024;
/// The most blocks one page of staged blocks holds (`Query::StagedBlocks`).
pub const STAGED_PAGE_MAX: u32 = 256;
/// A page of staged blocks ends once it holds this many plaintext bytes.
pub const STAGED_PAGE_BYTES: usize = 2 << 20;

/// A block's plaintext carried in a commit, named by its id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedBlock {
    /// The blake3 hash of `data`.
    pub id: BlockId,
    /// The plaintext (base64 in JSON: a byte array there is about four times as long).
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub data: Vec<u8>,
}

impl fmt::Debug for StagedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StagedBlock({}, {} bytes)", self.id, self.data.len())
    }
}

/// A block the metadata holds staged, with what putting it needs: a chunkserver adopts
/// a block whose writer has not put it (a mount that died first).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StagedRow {
    /// The file whose commit staged it (its unstaging names this file).
    pub ino: InodeId,
    /// Where it goes, from the file's volume; `None` once the file is gone (another
    /// file, a snapshot's copy say, may still name the block).
    pub placement: Option<StagedPlacement>,
    /// The block.
    pub block: StagedBlock,
}

/// How a staged block's volume stores it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StagedPlacement {
    /// The volume.
    pub volume: u32,
    /// Copies to make.
    pub replicas: u32,
    /// Copies a put needs.
    pub min_copies: u32,
    /// The regions the volume lives in.
    pub regions: Vec<RegionId>,
}

fn to_base64<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(data))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    STANDARD
        .decode(s.as_bytes())
        .map_err(serde::de::Error::custom)
}

/// Whether `staged` may go with a commit of `extents`: within the limits, each block's
/// bytes hash to its id, each named once and referenced by one of the extents (a commit
/// stages only what it writes).
pub fn check_staged(staged: &[StagedBlock], extents: &[Extent]) -> Result<(), String> {
    if staged.len() > STAGED_BLOCKS_MAX {
        return Err(format!(
            "{} staged blocks in one commit, at most {STAGED_BLOCKS_MAX}",
            staged.len()
        ));
    }
    let bytes: usize = staged.iter().map(|b| b.data.len()).sum();
    if bytes > STAGED_MAX {
        return Err(format!(
            "{bytes} staged bytes in one commit, at most {STAGED_MAX}"
        ));
    }
    for (i, b) in staged.iter().enumerate() {
        if staged[..i].iter().any(|o| o.id == b.id) {
            return Err(format!("block {} staged twice", b.id));
        }
        if !extents.iter().any(|e| e.block == b.id) {
            return Err(format!(
                "staged block {} is not among the commit's extents",
                b.id
            ));
        }
        let actual = BlockId::of(&b.data);
        if actual != b.id {
            return Err(format!("staged block {} hashes to {actual}", b.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(block: BlockId, len: u64) -> Extent {
        Extent {
            offset: 0,
            len,
            block,
            block_offset: 0,
            block_len: len as u32,
        }
    }

    #[test]
    fn a_staged_block_goes_as_base64_and_only_if_it_is_what_it_claims() {
        let data = b"sixteen bytes!!!".to_vec();
        let good = StagedBlock {
            id: BlockId::of(&data),
            data: data.clone(),
        };
        let json = serde_json::to_string(&good).unwrap();
        assert!(json.contains(&STANDARD.encode(&data)), "{json}");
        assert_eq!(serde_json::from_str::<StagedBlock>(&json).unwrap(), good);
        let e = extent(good.id, 16);
        assert_eq!(check_staged(std::slice::from_ref(&good), &[e]), Ok(()));

        let forged = StagedBlock {
            id: good.id,
            data: b"something else!!".to_vec(),
        };
        assert!(
            check_staged(&[forged], &[e])
                .unwrap_err()
                .contains("hashes to")
        );
        let elsewhere = extent(BlockId::of(b"other"), 16);
        assert!(
            check_staged(std::slice::from_ref(&good), &[elsewhere])
                .unwrap_err()
                .contains("not among")
        );
        assert!(
            check_staged(&[good.clone(), good.clone()], &[e])
                .unwrap_err()
                .contains("twice")
        );
        let big = vec![7u8; STAGED_MAX + 1];
        let big = StagedBlock {
            id: BlockId::of(&big),
            data: big,
        };
        let e = extent(big.id, 4096);
        assert!(check_staged(&[big], &[e]).unwrap_err().contains("at most"));
        let damaged = json.replace("\"data\":\"", "\"data\":\"*");
        assert!(serde_json::from_str::<StagedBlock>(&damaged).is_err());
    }
}
