//! The block file format, version 2 (version 1 files are still read).
//!
//! ```text
//! offset size field
//!      0    8 magic "MRDNBLK\0"
//!      8    2 format version (little endian), 2
//!     10    1 compression (0 none, 1 lz4 block format, 2 lz4 frames)
//!     11    1 reserved, 0
//!     12    4 raw (plaintext) length, little endian
//!     16    4 payload length, little endian
//!     20   32 blake3 of the plaintext (the block id)
//!     52    4 outboard length, little endian (version 2 only)
//!     56    - payload, then the outboard (the chaining values of the block's 16 KiB
//!             groups, for verified range reads)
//! ```
//! Version 1 has the 52-byte header and no outboard. A file is valid only if its length is
//! exactly header + payload + outboard, the payload decodes to plaintext hashing to the id
//! in the header and in the file name, and the outboard is that plaintext's.

use bytes::Bytes;
use meridian_proto::{BlockId, Compression, EncodedBlock, Outboard};

/// First bytes of every block file.
pub const MAGIC: &[u8; 8] = b"MRDNBLK\0";
/// The version this code writes.
pub const VERSION: u16 = 2;
/// Bytes before the payload in a version 1 file.
pub const HEADER_LEN_V1: usize = 52;
/// Bytes before the payload in the files this code writes.
pub const HEADER_LEN: usize = 56;

/// Why a block file cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than a header.
    #[error("file of {0} bytes is shorter than a block header")]
    Short(usize),
    /// Not a block file.
    #[error("bad magic")]
    Magic,
    /// Written by a newer version.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// Unknown compression code.
    #[error("unknown compression code {0}")]
    Compression(u8),
    /// Truncated or extended.
    #[error("file holds {got} bytes after the header, header says {want}")]
    PayloadLength {
        /// Bytes present.
        got: u64,
        /// Bytes announced (payload and outboard).
        want: u64,
    },
}

/// A parsed block file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version of the file.
    pub version: u16,
    /// Encoding of the payload.
    pub compression: Compression,
    /// Plaintext length.
    pub raw_len: u32,
    /// Bytes of payload.
    pub payload_len: u32,
    /// Bytes of outboard after the payload (0 in version 1).
    pub outboard_len: u32,
    /// The block id the file claims.
    pub id: BlockId,
    /// Bytes of the header itself.
    pub len: usize,
}

impl Header {
    /// The file length this header announces.
    pub fn file_len(&self) -> u64 {
        self.len as u64 + u64::from(self.payload_len) + u64::from(self.outboard_len)
    }
}

/// The header of the block file for `block` with an outboard of `outboard_len` bytes.
pub fn header(block: &EncodedBlock, outboard_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10] = block.compression.code() as u8;
    h[12..16].copy_from_slice(&block.raw_len.to_le_bytes());
    h[16..20].copy_from_slice(&(block.payload.len() as u32).to_le_bytes());
    h[20..52].copy_from_slice(block.id.as_bytes());
    h[52..56].copy_from_slice(&(outboard_len as u32).to_le_bytes());
    h
}

/// The whole block file for `block`: header, payload, outboard.
pub fn encode(block: &EncodedBlock, outboard: &Outboard) -> Vec<u8> {
    let ob = outboard.to_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + block.payload.len() + ob.len());
    out.extend_from_slice(&header(block, ob.len()));
    out.extend_from_slice(&block.payload);
    out.extend_from_slice(&ob);
    out
}

/// Parses the header at the start of `bytes` (the file's first [`HEADER_LEN`] bytes, or
/// all of a shorter file).
pub fn parse_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < HEADER_LEN_V1 {
        return Err(FormatError::Short(bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (len, outboard_len) = match version {
        1 => (HEADER_LEN_V1, 0),
        2 if bytes.len() >= HEADER_LEN => (HEADER_LEN, u32_at(52)),
        2 => return Err(FormatError::Short(bytes.len())),
        v => return Err(FormatError::Version(v)),
    };
    let compression = Compression::from_code(i32::from(bytes[10]))
        .map_err(|_| FormatError::Compression(bytes[10]))?;
    Ok(Header {
        version,
        compression,
        raw_len: u32_at(12),
        payload_len: u32_at(16),
        outboard_len,
        id: BlockId::from_slice(&bytes[20..52]).expect("32 bytes"),
        len,
    })
}

/// Parses a block file: the stored block and its outboard bytes (none in version 1). The
/// payload is not decoded or hashed here: call [`EncodedBlock::decode`] before trusting it.
pub fn decode(file: Bytes) -> Result<(EncodedBlock, Option<Bytes>), FormatError> {
    let h = parse_header(&file)?;
    if file.len() as u64 != h.file_len() {
        return Err(FormatError::PayloadLength {
            got: (file.len() - h.len) as u64,
            want: h.file_len() - h.len as u64,
        });
    }
    let payload_end = h.len + h.payload_len as usize;
    let outboard = (h.version >= 2).then(|| file.slice(payload_end..));
    Ok((
        EncodedBlock {
            id: h.id,
            compression: h.compression,
            raw_len: h.raw_len,
            payload: file.slice(h.len..payload_end),
        },
        outboard,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EncodedBlock {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        EncodedBlock::encode(&data).unwrap()
    }

    fn outboard() -> Outboard {
        sample().decode_with_outboard().unwrap().1
    }

    #[test]
    fn round_trip() {
        let block = sample();
        let file = encode(&block, &outboard());
        let ob = outboard().to_bytes();
        assert_eq!(file.len(), HEADER_LEN + block.payload.len() + ob.len());
        let (back, stored_ob) = decode(Bytes::from(file)).unwrap();
        assert_eq!(back, block);
        assert_eq!(stored_ob.unwrap(), ob);
        back.decode().unwrap();
    }

    #[test]
    fn truncated_file_is_detected() {
        let file = encode(&sample(), &outboard());
        for cut in [0, 7, HEADER_LEN - 1, HEADER_LEN, file.len() - 1] {
            let got = decode(Bytes::copy_from_slice(&file[..cut]));
            assert!(got.is_err(), "a file cut at {cut} bytes was accepted");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            decode(Bytes::from(longer)),
            Err(FormatError::PayloadLength { .. })
        ));
    }

    #[test]
    fn wrong_magic_or_version_is_detected() {
        let mut file = encode(&sample(), &outboard());
        file[0] = b'X';
        assert_eq!(decode(Bytes::from(file.clone())), Err(FormatError::Magic));
        file[0] = b'M';
        file[8] = 3;
        assert_eq!(decode(Bytes::from(file)), Err(FormatError::Version(3)));
    }

    proptest! {
        /// Any single flipped bit makes the file unparseable or makes verification fail,
        /// or (a flip in an lz4 match offset that points at identical bytes) still yields
        /// exactly the original plaintext: wrong bytes are never returned.
        #[test]
        fn any_bit_flip_is_detected(pos: prop::sample::Index, bit in 0u8..8) {
            let mut file = encode(&sample(), &outboard());
            let i = pos.index(file.len());
            // The reserved byte is ignored by design; everything else is covered.
            prop_assume!(i != 11);
            file[i] ^= 1 << bit;
            let verdict = decode(Bytes::from(file)).map_err(|e| e.to_string())
                .and_then(|(b, ob)| {
                    let (plain, computed) = b.decode_with_outboard().map_err(|e| e.to_string())?;
                    if ob.as_deref() != Some(&computed.to_bytes()[..]) {
                        return Err("outboard differs".into());
                    }
                    // The id in the file name is the original one.
                    if b.id != sample().id { return Err("id changed".into()); }
                    Ok(plain)
                });
            match verdict {
                Err(_) => {}
                Ok(plain) => prop_assert_eq!(plain, sample().decode().unwrap()),
            }
        }
    }
}
