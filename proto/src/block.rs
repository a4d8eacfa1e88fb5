//! A block in its encoded form: what clients send and chunkservers store and serve.
//!
//! The client hashes the plaintext (the hash is the block's name), compresses it with lz4
//! in independent 16 KiB frames (so a range decodes alone) and keeps the plaintext instead
//! when compression does not shrink it. Every receiver decodes the payload and recomputes
//! the hash before it trusts the block.

use bytes::Bytes;

use crate::ids::BlockId;
use crate::tree::{GROUP_LEN, Outboard, groups};

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
    // Compress only what the probe shrinks by a tenth or more: a few percent saved costs
    // a pass of lz4 over the whole block here, a decode on every verify and every read,
    // and more CPU than the bytes saved are worth (measured on fio's barely compressible
    // data: a quarter of the mount's CPU in a sequential write, for 4% fewer bytes).
    lz4_flex::block::compress(probe).len() < PROBE_LEN * 9 / 10
}

/// How a block's payload is encoded. The numbers are part of the on-disk format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Compression {
    /// The payload is the plaintext.
    None = 0,
    /// The payload is lz4 block format, without a size prefix (written before frames).
    Lz4 = 1,
    /// The payload is a frame table and independently lz4-compressed 16 KiB frames: see
    /// [`FrameTable`].
    Lz4Frames = 2,
}

impl Compression {
    /// Parses the on-disk / on-wire code.
    pub fn from_code(code: i32) -> Result<Self, BlockError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Lz4Frames),
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
    /// An outboard or a range that does not fit the block.
    #[error("verified range: {0}")]
    Outboard(String),
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
        Self::encode_with(plaintext, BlockId::of, || Bytes::copy_from_slice(plaintext))
    }

    /// As [`encode`](Self::encode); a block left uncompressed shares `plaintext`'s buffer.
    pub fn encode_shared(plaintext: &Bytes) -> Result<Self, BlockError> {
        Self::encode_with(plaintext, BlockId::of, || plaintext.clone())
    }

    /// As [`encode_shared`](Self::encode_shared), for plaintext the caller has hashed to
    /// `id` already: it is not hashed again (a chunkserver checks it at the put).
    pub fn encode_hashed(id: BlockId, plaintext: &Bytes) -> Result<Self, BlockError> {
        Self::encode_with(plaintext, |_| id, || plaintext.clone())
    }

    fn encode_with(
        plaintext: &[u8],
        id: impl FnOnce(&[u8]) -> BlockId,
        raw: impl FnOnce() -> Bytes,
    ) -> Result<Self, BlockError> {
        let raw_len = u32::try_from(plaintext.len())
            .ok()
            .filter(|len| *len <= MAX_BLOCK_LEN)
            .ok_or(BlockError::TooLarge(plaintext.len() as u64))?;
        let id = id(plaintext);
        let framed = worth_compressing(plaintext).then(|| FrameTable::compress(plaintext));
        let (compression, payload) = match framed {
            Some(c) if c.len() < plaintext.len() => (Compression::Lz4Frames, Bytes::from(c)),
            _ => (Compression::None, raw()),
        };
        Ok(EncodedBlock {
            id,
            compression,
            raw_len,
            payload,
        })
    }

    /// Decodes the payload and checks it hashes to the id, computing the block's outboard
    /// on the way (what a chunkserver stores beside the payload for verified ranges).
    pub fn decode_with_outboard(&self) -> Result<(Bytes, Outboard), BlockError> {
        let plain = self.plaintext()?;
        let (actual, outboard) = Outboard::compute(&plain);
        if actual != self.id {
            return Err(BlockError::HashMismatch {
                id: self.id,
                actual,
            });
        }
        Ok((plain, outboard))
    }

    /// Decodes the payload and checks it hashes to the id: the only way to get plaintext.
    pub fn decode(&self) -> Result<Bytes, BlockError> {
        let plain = self.plaintext()?;
        let actual = BlockId::of(&plain);
        if actual != self.id {
            return Err(BlockError::HashMismatch {
                id: self.id,
                actual,
            });
        }
        Ok(plain)
    }

    /// The decoded payload, of the announced length, not yet checked against the id.
    fn plaintext(&self) -> Result<Bytes, BlockError> {
        if self.raw_len > MAX_BLOCK_LEN {
            return Err(BlockError::TooLarge(u64::from(self.raw_len)));
        }
        let corrupt = |reason: String| BlockError::Corrupt {
            id: self.id,
            reason,
        };
        let plain = match self.compression {
            Compression::None => self.payload.clone(),
            Compression::Lz4 => {
                let mut out = vec![0u8; self.raw_len as usize];
                let got = lz4_flex::block::decompress_into(&self.payload, &mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
                out.truncate(got);
                Bytes::from(out)
            }
            Compression::Lz4Frames => {
                let table = FrameTable::parse(&self.payload, self.raw_len).map_err(corrupt)?;
                let frames = self
                    .payload
                    .get(table.span(0, table.frames()))
                    .ok_or_else(|| corrupt("payload shorter than its frame table".into()))?;
                if table.span(0, table.frames()).end != self.payload.len() {
                    return Err(corrupt("payload longer than its frame table".into()));
                }
                Bytes::from(table.decode(0, frames).map_err(corrupt)?)
            }
        };
        if plain.len() != self.raw_len as usize {
            return Err(BlockError::LengthMismatch {
                id: self.id,
                got: plain.len(),
                want: self.raw_len,
            });
        }
        Ok(plain)
    }
}

/// Plaintext bytes per lz4 frame: one verification group, so a verified range decodes
/// exactly the frames it hashes.
pub const FRAME_LEN: usize = GROUP_LEN;

/// Set in a frame's length when the frame is stored as plaintext (lz4 did not shrink it).
const RAW_FRAME: u32 = 1 << 31;

/// The table at the start of an [`Compression::Lz4Frames`] payload:
///
/// ```text
/// u32 LE   number of frames n (= 16 KiB groups of the plaintext, at least 1)
/// n x u32  LE encoded length of each frame; the top bit set means stored as plaintext
/// ...      the frames, in order, each decoding to 16 KiB (the last to the rest)
/// ```
#[derive(Clone, Debug)]
pub struct FrameTable {
    raw_len: u32,
    /// Payload offset where each frame starts, and one past the last.
    starts: Vec<usize>,
    raw: Vec<bool>,
}

impl FrameTable {
    /// Bytes of the table of a block of `raw_len` plaintext bytes.
    pub fn table_len(raw_len: u32) -> usize {
        4 + 4 * groups(u64::from(raw_len)) as usize
    }

    /// Compresses `plain` into a framed payload.
    fn compress(plain: &[u8]) -> Vec<u8> {
        let n = groups(plain.len() as u64) as usize;
        let frames: Vec<(bool, std::borrow::Cow<'_, [u8]>)> = if plain.is_empty() {
            vec![(true, std::borrow::Cow::Borrowed(plain))]
        } else {
            plain
                .chunks(FRAME_LEN)
                .map(|f| {
                    let c = lz4_flex::block::compress(f);
                    if c.len() < f.len() {
                        (false, std::borrow::Cow::Owned(c))
                    } else {
                        (true, std::borrow::Cow::Borrowed(f))
                    }
                })
                .collect()
        };
        debug_assert_eq!(frames.len(), n);
        let body: usize = frames.iter().map(|(_, f)| f.len()).sum();
        let mut out = Vec::with_capacity(4 + 4 * n + body);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for (raw, f) in &frames {
            let flag = if *raw { RAW_FRAME } else { 0 };
            out.extend_from_slice(&(f.len() as u32 | flag).to_le_bytes());
        }
        for (_, f) in &frames {
            out.extend_from_slice(f);
        }
        out
    }

    /// Parses the table at the start of `payload` (only the table's bytes are needed).
    pub fn parse(payload: &[u8], raw_len: u32) -> Result<FrameTable, String> {
        let n = groups(u64::from(raw_len)) as usize;
        let table = payload
            .get(..Self::table_len(raw_len))
            .ok_or_else(|| format!("frame table cut short for {n} frames"))?;
        let count = u32::from_le_bytes(table[..4].try_into().expect("4 bytes")) as usize;
        if count != n {
            return Err(format!("{count} frames for {raw_len} bytes, want {n}"));
        }
        let mut starts = Vec::with_capacity(n + 1);
        let mut raw = Vec::with_capacity(n);
        let mut at = Self::table_len(raw_len);
        for (i, c) in table[4..].chunks_exact(4).enumerate() {
            let word = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            let len = (word & !RAW_FRAME) as usize;
            let plain_len = Self::frame_plain_len(raw_len, i);
            if (word & RAW_FRAME != 0 && len != plain_len) || len > plain_len.max(1) * 2 + 64 {
                return Err(format!("frame {i} announces {len} bytes"));
            }
            starts.push(at);
            raw.push(word & RAW_FRAME != 0);
            at += len;
        }
        starts.push(at);
        Ok(FrameTable {
            raw_len,
            starts,
            raw,
        })
    }

    fn frame_plain_len(raw_len: u32, i: usize) -> usize {
        (raw_len as usize)
            .saturating_sub(i * FRAME_LEN)
            .min(FRAME_LEN)
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.raw.len()
    }

    /// The payload byte range holding frames `[first, end)`.
    pub fn span(&self, first: usize, end: usize) -> std::ops::Range<usize> {
        self.starts[first]..self.starts[end]
    }

    /// Decodes consecutive frames from `first`, given exactly their bytes.
    pub fn decode(&self, first: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let base = self.starts[first];
        // The frames that start inside `bytes`: their plaintext, allocated once.
        let end =
            first + self.starts[first..self.frames()].partition_point(|s| s - base < bytes.len());
        let plain_len: usize = (first..end)
            .map(|i| Self::frame_plain_len(self.raw_len, i))
            .sum();
        let mut out = Vec::with_capacity(plain_len);
        let mut i = first;
        while i < self.frames() && self.starts[i] - base < bytes.len() {
            let frame = bytes
                .get(self.starts[i] - base..self.starts[i + 1] - base)
                .ok_or("frame bytes do not end at a frame boundary")?;
            let want = Self::frame_plain_len(self.raw_len, i);
            if self.raw[i] {
                out.extend_from_slice(frame);
            } else {
                let at = out.len();
                out.resize(at + want, 0);
                let got = lz4_flex::block::decompress_into(frame, &mut out[at..])
                    .map_err(|e| format!("frame {i}: {e}"))?;
                if got != want {
                    return Err(format!("frame {i} decoded to {got} bytes, want {want}"));
                }
            }
            i += 1;
        }
        if self.starts[i] - base != bytes.len() {
            return Err("frame bytes do not end at a frame boundary".into());
        }
        Ok(out)
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
        assert_eq!(enc.compression, Compression::Lz4Frames);
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
    fn a_range_of_frames_decodes_alone() {
        let data: Vec<u8> = (0..(1 << 20) + 123u32)
            .map(|i| (i / 7 % 251) as u8)
            .collect();
        let enc = EncodedBlock::encode(&data).unwrap();
        assert_eq!(enc.compression, Compression::Lz4Frames);
        let table = FrameTable::parse(&enc.payload, enc.raw_len).unwrap();
        assert_eq!(table.frames(), data.len().div_ceil(FRAME_LEN));
        for (first, end) in [(0, 1), (5, 9), (table.frames() - 1, table.frames())] {
            let bytes = &enc.payload[table.span(first, end)];
            let plain = table.decode(first, bytes).unwrap();
            let want = &data[first * FRAME_LEN..(end * FRAME_LEN).min(data.len())];
            assert_eq!(plain, want);
        }
        // Bytes that stop inside a frame are refused.
        let cut = table.span(2, 3);
        assert!(
            table
                .decode(2, &enc.payload[cut.start..cut.end - 1])
                .is_err()
        );
        // A table that lies about the frame count is refused.
        let mut bad = enc.payload.to_vec();
        bad[0] ^= 1;
        assert!(FrameTable::parse(&bad, enc.raw_len).is_err());
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

        /// A fuzz target: blocks as a broken or hostile chunkserver could send them (valid
        /// encodings with edits, any compression code, any length) decode to an error or
        /// to exactly the plaintext their id names, never a panic; nor does a frame table
        /// read from such a payload.
        #[test]
        fn damaged_blocks_decode_to_an_error_or_their_own_plaintext(
            data in proptest::collection::vec(0u8..4, 0..40_000),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
            code in prop_oneof![8 => Just(None), 1 => (-1i32..4).prop_map(Some)],
            raw_len in prop_oneof![8 => Just(None), 1 => any::<u32>().prop_map(Some)],
        ) {
            let mut enc = EncodedBlock::encode(&data).unwrap();
            enc.payload = Bytes::from(crate::mutate::mutate(&enc.payload, &edits));
            if let Some(c) = code {
                match Compression::from_code(c) {
                    Ok(c) => enc.compression = c,
                    Err(_) => return Ok(()),
                }
            }
            if let Some(n) = raw_len {
                enc.raw_len = n % (MAX_BLOCK_LEN + 2);
            }
            if let Ok(plain) = enc.decode() {
                prop_assert_eq!(BlockId::of(&plain), enc.id);
                prop_assert_eq!(&plain[..], &data[..]);
            }
            if let Ok((plain, _)) = enc.decode_with_outboard() {
                prop_assert_eq!(&plain[..], &data[..]);
            }
            if let Ok(table) = FrameTable::parse(&enc.payload, enc.raw_len)
                && let Some(frames) = enc.payload.get(table.span(0, table.frames()))
            {
                let _ = table.decode(0, frames);
            }
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
