//! The range port's wire format: one request, one reply, over a TCP connection (mutual TLS
//! with the deployment's certificates when the processes have them: `crate::port_conn`).
//!
//! A 4 KiB random read is one small request and one small reply, and through the gRPC
//! service it costs the client and the chunkserver more in hand-offs between tasks (the
//! HTTP/2 connection's, the request's, a blocking-pool thread) than in the read. The range
//! port carries only range reads of a block's plaintext, answered from a thread of their
//! own on each side; the client verifies what it gets against the block id exactly as
//! through gRPC, and uses gRPC for everything else and whenever the range port fails.
//!
//! ```text
//! request  u32 LE magic "MRR1", u32 LE body length (at most MAX_REQUEST), body:
//!          block id (32 bytes), u32 offset, u32 length, u8 flags (1: the client knows the
//!          outboard), u32 volume, u16 region count (at most MAX_REGIONS), u32 regions
//! reply    u32 LE magic, u8 status, then
//!          0 found:   u32 raw_len, u32 offset, u32 outboard length, u32 plaintext
//!                     length, the outboard, the plaintext
//!          1 missing, 2 refused, 3 failed: u32 message length (at most MAX_MESSAGE),
//!                     the message (UTF-8)
//!          4 busy:    nothing (the node serves as many connections as it will; the
//!                     connection closes, and the client leaves the port alone a while)
//! ```
//! A range is at most [`MAX_RANGE`] bytes (a whole block of the default size fits):
//! longer reads go through gRPC.
//! Every length is checked before anything is allocated for it.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::BlockId;

/// "MRR1": a range-port frame.
pub const MAGIC: u32 = 0x3152_524d;
/// No request body is larger.
pub const MAX_REQUEST: usize = 4096;
/// No request names more regions.
pub const MAX_REGIONS: usize = 64;
/// No error message is longer.
pub const MAX_MESSAGE: usize = 4096;
/// No range read is longer: twice the default block size, so that a whole block comes
/// through the port too.
pub const MAX_RANGE: u32 = 8 << 20;
/// A reply's first bytes: magic and status.
pub const REPLY_HEAD: usize = 5;
/// What follows a "found" status before the outboard: four lengths.
pub const FOUND_LENGTHS: usize = 16;
const FIXED: usize = 32 + 4 + 4 + 1 + 4 + 2;

/// A read of `[offset, offset + length)` of a block's plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// The block.
    pub block: BlockId,
    /// Plaintext offset.
    pub offset: u32,
    /// Plaintext length.
    pub length: u32,
    /// The client holds the block's outboard: the reply leaves it out.
    pub outboard_known: bool,
    /// The volume the block belongs to (0: none), for the residency check.
    pub volume: u32,
    /// The regions the volume lives in (for blocks of no volume).
    pub regions: Vec<u32>,
}

/// What a chunkserver answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeReply {
    /// The 16 KiB groups covering the range, verified by the chunkserver.
    Found {
        /// The block's plaintext length.
        raw_len: u32,
        /// Plaintext offset of `plain` (a group boundary).
        offset: u32,
        /// The block's outboard (empty when the client said it knows it).
        outboard: Vec<u8>,
        /// The groups' plaintext.
        plain: Bytes,
    },
    /// The node has no good copy (try another, or the gRPC path).
    Missing(String),
    /// The request is refused (residency, a bad range).
    Refused(String),
    /// Something went wrong on the node.
    Failed(String),
    /// The node serves no more connections now.
    Busy,
}

/// Appends an error reply's status and message (cut to [`MAX_MESSAGE`] bytes, on a
/// character boundary) to `out`.
pub(crate) fn push_message(out: &mut Vec<u8>, status: u8, message: &str) {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.push(status);
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&message.as_bytes()[..end]);
}

pub(crate) fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

pub(crate) fn read_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

impl RangeRequest {
    /// The request as sent.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        if self.regions.len() > MAX_REGIONS {
            return Err(invalid(format!("{} regions named", self.regions.len())));
        }
        let body = FIXED + 4 * self.regions.len();
        let mut out = Vec::with_capacity(8 + body);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(body as u32).to_le_bytes());
        out.extend_from_slice(self.block.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.push(u8::from(self.outboard_known));
        out.extend_from_slice(&self.volume.to_le_bytes());
        out.extend_from_slice(&(self.regions.len() as u16).to_le_bytes());
        for r in &self.regions {
            out.extend_from_slice(&r.to_le_bytes());
        }
        Ok(out)
    }

    /// Reads one request; `None` when the peer closed the connection between requests.
    pub fn read(r: &mut impl Read) -> io::Result<Option<RangeRequest>> {
        let mut head = [0u8; 8];
        match r.read(&mut head[..1])? {
            0 => return Ok(None),
            _ => r.read_exact(&mut head[1..])?,
        }
        if u32_at(&head, 0) != MAGIC {
            return Err(invalid("not a range-port request"));
        }
        Self::read_body(r, u32_at(&head, 4)).map(Some)
    }

    /// Reads a request's body of the announced `len` bytes (its magic and length read).
    pub fn read_body(r: &mut impl Read, len: u32) -> io::Result<RangeRequest> {
        let len = len as usize;
        if !(FIXED..=MAX_REQUEST).contains(&len) {
            return Err(invalid(format!("a request body of {len} bytes")));
        }
        let body = read_vec(r, len)?;
        Self::decode(&body)
    }

    /// A request from its body.
    pub fn decode(body: &[u8]) -> io::Result<RangeRequest> {
        if body.len() < FIXED {
            return Err(invalid("a request body too short"));
        }
        let block = BlockId::from_slice(&body[..32]).map_err(|e| invalid(e.to_string()))?;
        let flags = body[40];
        if flags > 1 {
            return Err(invalid(format!("unknown request flags {flags:#x}")));
        }
        let count = u16::from_le_bytes([body[45], body[46]]) as usize;
        if count > MAX_REGIONS || body.len() != FIXED + 4 * count {
            return Err(invalid(format!(
                "{count} regions in a body of {} bytes",
                body.len()
            )));
        }
        Ok(RangeRequest {
            block,
            offset: u32_at(body, 32),
            length: u32_at(body, 36),
            outboard_known: flags == 1,
            volume: u32_at(body, 41),
            regions: (0..count).map(|i| u32_at(body, FIXED + 4 * i)).collect(),
        })
    }
}

impl RangeReply {
    /// Writes the reply.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        let (status, message) = match self {
            RangeReply::Found {
                raw_len,
                offset,
                outboard,
                plain,
            } => {
                out.reserve(17 + outboard.len());
                out.push(0);
                for v in [*raw_len, *offset, outboard.len() as u32, plain.len() as u32] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(outboard);
                // The plaintext as it is: a whole block is not copied once more first.
                w.write_all(&out)?;
                return w.write_all(plain);
            }
            RangeReply::Missing(m) => (1, m),
            RangeReply::Refused(m) => (2, m),
            RangeReply::Failed(m) => (3, m),
            RangeReply::Busy => {
                out.push(4);
                return w.write_all(&out);
            }
        };
        push_message(&mut out, status, message);
        w.write_all(&out)
    }

    /// Reads one reply, refusing outboards and plaintexts longer than `max_len`.
    pub fn read(r: &mut impl Read, max_len: u32) -> io::Result<RangeReply> {
        let mut head = [0u8; REPLY_HEAD];
        r.read_exact(&mut head)?;
        match Self::status(&head)? {
            0 => {
                let mut lengths = [0u8; FOUND_LENGTHS];
                r.read_exact(&mut lengths)?;
                let found = Found::parse(&lengths, max_len)?;
                Ok(found.reply(
                    read_vec(r, found.outboard_len as usize)?,
                    read_vec(r, found.plain_len as usize)?.into(),
                ))
            }
            4 => Ok(RangeReply::Busy),
            status => {
                let len = Self::message_len(read_u32(r)?)?;
                Self::message(status, &read_vec(r, len)?)
            }
        }
    }

    /// The status a reply's first [`REPLY_HEAD`] bytes carry (0 found: [`Found`] follows;
    /// 4 busy: nothing; otherwise a message of [`message_len`](Self::message_len)).
    pub fn status(head: &[u8; REPLY_HEAD]) -> io::Result<u8> {
        match u32_at(head, 0) {
            MAGIC => Ok(head[4]),
            other => Err(invalid(format!(
                "not a range-port frame (magic {other:#x})"
            ))),
        }
    }

    /// An error message's announced length, refused beyond [`MAX_MESSAGE`].
    pub fn message_len(len: u32) -> io::Result<usize> {
        match len as usize {
            len if len <= MAX_MESSAGE => Ok(len),
            len => Err(invalid(format!("an error message of {len} bytes"))),
        }
    }

    /// The reply of an error `status` with its message's bytes.
    pub fn message(status: u8, bytes: &[u8]) -> io::Result<RangeReply> {
        let message = String::from_utf8_lossy(bytes).into_owned();
        match status {
            1 => Ok(RangeReply::Missing(message)),
            2 => Ok(RangeReply::Refused(message)),
            3 => Ok(RangeReply::Failed(message)),
            other => Err(invalid(format!("unknown reply status {other}"))),
        }
    }
}

/// What a "found" reply announces before its outboard and plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The block's plaintext length.
    pub raw_len: u32,
    /// Plaintext offset of what follows.
    pub offset: u32,
    /// Outboard bytes that follow.
    pub outboard_len: u32,
    /// Plaintext bytes that follow the outboard.
    pub plain_len: u32,
}

impl Found {
    /// The [`FOUND_LENGTHS`] bytes after the status, refusing anything longer than
    /// `max_len` before the caller allocates for it.
    pub fn parse(b: &[u8; FOUND_LENGTHS], max_len: u32) -> io::Result<Found> {
        let found = Found {
            raw_len: u32_at(b, 0),
            offset: u32_at(b, 4),
            outboard_len: u32_at(b, 8),
            plain_len: u32_at(b, 12),
        };
        if found.raw_len > max_len || found.outboard_len > max_len || found.plain_len > max_len {
            return Err(invalid(format!(
                "a reply of {} + {} bytes for a block of {}",
                found.outboard_len, found.plain_len, found.raw_len
            )));
        }
        Ok(found)
    }

    /// The reply, with the bytes that followed.
    pub fn reply(&self, outboard: Vec<u8>, plain: Bytes) -> RangeReply {
        RangeReply::Found {
            raw_len: self.raw_len,
            offset: self.offset,
            outboard,
            plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> RangeRequest {
        RangeRequest {
            block: BlockId::of(b"range"),
            offset: 16384,
            length: 4096,
            outboard_known: true,
            volume: (2 << 16) | 5,
            regions: vec![1, 2],
        }
    }

    #[test]
    fn requests_and_replies_read_back_as_written() {
        let bytes = request().encode().unwrap();
        assert_eq!(
            RangeRequest::read(&mut &bytes[..]).unwrap(),
            Some(request())
        );
        assert_eq!(RangeRequest::read(&mut &[][..]).unwrap(), None);
        for reply in [
            RangeReply::Found {
                raw_len: 100,
                offset: 0,
                outboard: vec![7; 32],
                plain: vec![9; 100].into(),
            },
            RangeReply::Missing("gone".into()),
            RangeReply::Refused("residency".into()),
            RangeReply::Failed("disk".into()),
            RangeReply::Busy,
        ] {
            let mut out = Vec::new();
            reply.write(&mut out).unwrap();
            assert_eq!(RangeReply::read(&mut &out[..], 1 << 20).unwrap(), reply);
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_allocating() {
        let mut bytes = request().encode().unwrap();
        bytes[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
        assert!(RangeRequest::read(&mut &bytes[..]).is_err());
        let mut bytes = request().encode().unwrap();
        bytes[0] ^= 1;
        assert!(RangeRequest::read(&mut &bytes[..]).is_err());
        let too_many = RangeRequest {
            regions: vec![1; MAX_REGIONS + 1],
            ..request()
        };
        assert!(too_many.encode().is_err());
        let mut out = Vec::new();
        RangeReply::Found {
            raw_len: 10,
            offset: 0,
            outboard: Vec::new(),
            plain: vec![1; 10].into(),
        }
        .write(&mut out)
        .unwrap();
        assert!(
            RangeReply::read(&mut &out[..], 5).is_err(),
            "longer than a block"
        );
    }

    proptest! {
        /// Any bytes at all decode to a request, a clean end or an error: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RangeRequest::read(&mut &bytes[..]);
            let _ = RangeRequest::decode(&bytes);
            let _ = RangeReply::read(&mut &bytes[..], 1 << 20);
            let mut framed = MAGIC.to_le_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = RangeReply::read(&mut &framed[..], 1 << 20);
            let mut head = MAGIC.to_le_bytes().to_vec();
            head.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            head.extend_from_slice(&bytes);
            let _ = RangeRequest::read(&mut &head[..]);
        }
    }
}
