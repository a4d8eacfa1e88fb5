//! A block in its encoded form: what clients send and chunkservers store and serve.
//!
//! The client hashes the plaintext (the hash is the block's name), compresses it with lz4
//! (block format) and keeps the plaintext instead when compression does not shrink it.
//! Every receiver decodes the payload and recomputes the hash before it trusts the block.

use bytes::Bytes;

use crate::ids::BlockId;

/// The largest plaintext a block may hold, whatever a volume's block size says. Bounds the
/// memory any one request can make a server allocate.
pub const MAX_BLOCK_LEN: u32 = 64 << 20;

/// Blocks larger than this are probed before lz4 is run over all of them.
const PROBE_LEN: usize = 64 << 10;

/// Whether lz4 is likely to shrink `plaintext`: already-compressed data (media, archives,
/// encrypted files) is detected on a 64 KiB probe, so it costs a probe, not a full pass.
fn worth_compressing(plaintext: &[u8]) -> bool {
    if plaintext.len() <= 2 * PROBE_LEN {
        return true;
    }
    let probe = &plaintext[..PROBE_LEN];
    // Keep compressing unless the probe saves less than 3%.
    lz4_flex::block::compress(probe).len() < PROBE_LEN * 97 / 100
}

/// How a block's payload is encoded. The numbers are part of the on-disk format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Compression {
    /// The payload is the plaintext.
    None = 0,
    /// The payload is lz4 block format, without a size prefix.
    Lz4 = 1,
}

impl Compression {
    /// Parses the on-disk / on-wire code.
    pub fn from_code(code: i32) -> Result<Self, BlockError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            other => Err(BlockError::UnknownCompression(other)),
        }
    }

    /// The on-disk / on-wire code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A block that cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// The compression code is not one this version knows.
    #[error("unknown compression code {0}")]
    UnknownCompression(i32),
    /// The plaintext is larger than any block may be.
    #[error("block of {0} bytes exceeds the limit of {MAX_BLOCK_LEN} bytes")]
    TooLarge(u64),
    /// The lz4 payload does not decode.
    #[error("block {id}: lz4 payload is corrupt: {reason}")]
    Corrupt {
        /// The block.
        id: BlockId,
        /// What the decoder said.
        reason: String,
    },
    /// The payload decodes to the wrong number of bytes.
    #[error("block {id}: decoded to {got} bytes, header says {want}")]
    LengthMismatch {
        /// The block.
        id: BlockId,
        /// Bytes decoded.
        got: usize,
        /// Bytes promised.
        want: u32,
    },
    /// The plaintext does not hash to the block's name.
    #[error("block {id}: content hashes to {actual}, not to its id")]
    HashMismatch {
        /// The block's claimed id.
        id: BlockId,
        /// The hash of what was actually there.
        actual: BlockId,
    },
}

/// A block as it travels and rests: its id, how its payload is encoded, and the payload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EncodedBlock {
    /// blake3 of the plaintext.
    pub id: BlockId,
    /// Encoding of `payload`.
    pub compression: Compression,
    /// Plaintext length.
    pub raw_len: u32,
    /// The encoded bytes.
    pub payload: Bytes,
}

impl EncodedBlock {
    /// Hashes and compresses `plaintext`, keeping it uncompressed when lz4 does not help.
    pub fn encode(plaintext: &[u8]) -> Result<Self, BlockError> {
        let raw_len = u32::try_from(plaintext.len())
            .ok()
            .filter(|len| *len <= MAX_BLOCK_LEN)
            .ok_or(BlockError::TooLarge(plaintext.len() as u64))?;
        let id = BlockId::of(plaintext);
        let compressed = worth_compressing(plaintext).then(|| lz4_flex::block::compress(plaintext));
        let (compression, payload) = match compressed {
            Some(c) if c.len() < plaintext.len() => (Compression::Lz4, Bytes::from(c)),
            _ => (Compression::None, Bytes::copy_from_slice(plaintext)),
        };
        Ok(EncodedBlock {
            id,
            compression,
            raw_len,
            payload,
        })
    }

    /// Decodes the payload and checks it hashes to the id: the only way to get plaintext.
    pub fn decode(&self) -> Result<Bytes, BlockError> {
        if self.raw_len > MAX_BLOCK_LEN {
            return Err(BlockError::TooLarge(u64::from(self.raw_len)));
        }
        let plain = match self.compression {
            Compression::None => self.payload.clone(),
            Compression::Lz4 => {
                let mut out = vec![0u8; self.raw_len as usize];
                let got =
                    lz4_flex::block::decompress_into(&self.payload, &mut out).map_err(|e| {
                        BlockError::Corrupt {
                            id: self.id,
                            reason: e.to_string(),
                        }
                    })?;
                out.truncate(got);
                Bytes::from(out)
            }
        };
        if plain.len() != self.raw_len as usize {
            return Err(BlockError::LengthMismatch {
                id: self.id,
                got: plain.len(),
                want: self.raw_len,
            });
        }
        let actual = BlockId::of(&plain);
        if actual != self.id {
            return Err(BlockError::HashMismatch {
                id: self.id,
                actual,
            });
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_data_is_stored_lz4_and_random_data_raw() {
        let zeros = vec![0u8; 1 << 20];
        let enc = EncodedBlock::encode(&zeros).unwrap();
        assert_eq!(enc.compression, Compression::Lz4);
        assert!(enc.payload.len() < zeros.len() / 10);
        assert_eq!(enc.decode().unwrap(), zeros);

        let noise: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let enc = EncodedBlock::encode(&noise).unwrap();
        assert_eq!(enc.decode().unwrap(), noise);
        assert!(enc.payload.len() <= noise.len());
    }

    #[test]
    fn incompressible_large_blocks_skip_lz4_after_a_probe() {
        let mut x = 88172645463325252u64;
        let noise: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(!worth_compressing(&noise));
        let enc = EncodedBlock::encode(&noise).unwrap();
        assert_eq!(enc.compression, Compression::None);
        assert_eq!(enc.decode().unwrap(), noise);
        assert!(worth_compressing(&vec![b'a'; 1 << 20]));
    }

    #[test]
    fn a_lie_about_the_id_is_caught() {
        let mut enc = EncodedBlock::encode(b"some bytes").unwrap();
        enc.id = BlockId::of(b"other bytes");
        assert!(matches!(enc.decode(), Err(BlockError::HashMismatch { .. })));
    }

    #[test]
    fn a_lie_about_the_length_is_caught() {
        let mut enc = EncodedBlock::encode(&[7u8; 4096]).unwrap();
        enc.raw_len = 4000;
        assert!(enc.decode().is_err());
        enc.raw_len = MAX_BLOCK_LEN + 1;
        assert!(matches!(enc.decode(), Err(BlockError::TooLarge(_))));
    }

    #[test]
    fn empty_block_round_trips() {
        let enc = EncodedBlock::encode(b"").unwrap();
        assert_eq!(enc.decode().unwrap().len(), 0);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000), rep in 1usize..4) {
            let data = data.repeat(rep);
            let enc = EncodedBlock::encode(&data).unwrap();
            prop_assert_eq!(enc.id, BlockId::of(&data));
            prop_assert_eq!(enc.decode().unwrap(), data);
        }

        #[test]
        fn any_flipped_payload_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..5000), pos: prop::sample::Index, bit in 0u8..8) {
            let mut enc = EncodedBlock::encode(&data).unwrap();
            let mut payload = enc.payload.to_vec();
            let i = pos.index(payload.len());
            payload[i] ^= 1 << bit;
            enc.payload = Bytes::from(payload);
            prop_assert!(enc.decode().is_err());
        }
    }
}
