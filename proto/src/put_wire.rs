//! The put port's wire format: a block's put over a range port's connection.
//!
//! A put through the gRPC service crosses the client's HTTP/2 connection task, the
//! coordinator's request task, a blocking-pool thread for the disk and the same again for
//! every replica it forwards to, and a large block is cut into messages, gathered, joined
//! and encoded again for each replica on the way. The range port's connections carry puts
//! too, in their own frames: a thread of the chunkserver reads the whole put, verifies it,
//! forwards it to the replicas' ports and stores its own copy, with no task in between and
//! the payload in one buffer throughout. The header is the gRPC put's own [`PutHeader`]
//! (prost-encoded), so both paths check the same fields the same way.
//!
//! ```text
//! request  u32 LE magic "MRP1", u32 LE header length (at most MAX_HEADER), the PutHeader,
//!          then the encoded payload: the header's encoded_len bytes (at most MAX_PUT)
//! reply    u32 LE magic, u8 status, then
//!          0 stored:  u32 length (at most MAX_HEADER), a PutResponse
//!          2 refused, 3 failed, 5 closed: u32 message length (at most MAX_MESSAGE), the
//!                     message
//!          4 busy:    nothing (the connection closes; the client puts through gRPC)
//! ```
//! A batch of puts (blocks a mount gathered, sent together so that a node stores them
//! under one fdatasync and forwards them to each replica together):
//! ```text
//! request  u32 LE magic "MRB1", u32 LE count (1 to BATCH_MAX), then that many put
//!          requests as above (their payloads BATCH_BYTES at most together)
//! reply    that many put replies as above, in order
//! ```
//! A node that does not know the batch closes the connection; the client puts the blocks
//! one by one.
//! A refused put is one the node will not take through the port (a block larger than it takes, a
//! shipment, a volume that does not live here, bytes that do not match their id); the
//! client then puts through gRPC, which gives the error its proper status. A closed port
//! takes no puts at all (turned off, or the node checks volume tokens): the client leaves
//! it alone for puts a while. Every length is checked before anything is allocated for it.

use std::io::{self, Read, Write};

use bytes::Bytes;
use prost::Message;

use crate::pb::chunk::{PutHeader, PutResponse};
use crate::range_wire::{MAX_MESSAGE, invalid, push_message, read_vec, u32_at};

/// "MRP1": a put-port frame.
pub const MAGIC: u32 = 0x3150_524d;
/// No header (nor a stored reply's body) is larger.
pub const MAX_HEADER: usize = 4096;
/// No payload through the port is larger: any block a chunkserver takes (a node may take
/// less: its `max_block_len`).
pub const MAX_PUT: u32 = crate::block::MAX_BLOCK_LEN;
/// Payloads up to this long are sent in one buffer with their head (one write, one
/// segment); longer ones as they are held, after it (no copy of megabytes).
pub const COPIED_PAYLOAD: usize = 64 << 10;
/// A reply's first bytes: magic and status.
pub const REPLY_HEAD: usize = 5;
/// "MRB1": a batch of put-port frames.
pub const BATCH_MAGIC: u32 = 0x3142_524d;
/// Most puts in one batch.
pub const BATCH_MAX: usize = 256;
/// Most payload bytes in one batch.
pub const BATCH_BYTES: usize = 16 << 20;

/// A batch's head: its magic and how many puts follow.
pub fn batch_head(count: usize) -> io::Result<[u8; 8]> {
    if count == 0 || count > BATCH_MAX {
        return Err(invalid(format!("a batch of {count} puts")));
    }
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    head[4..].copy_from_slice(&(count as u32).to_le_bytes());
    Ok(head)
}

/// Reads the puts of a batch whose head (magic and `count`) has been read, refusing a
/// count beyond [`BATCH_MAX`], payloads longer than `max_payload` and more than
/// [`BATCH_BYTES`] in all.
pub fn read_batch_rest(
    r: &mut impl Read,
    count: u32,
    max_payload: u32,
) -> io::Result<Vec<PutFrame>> {
    let count = count as usize;
    if count == 0 || count > BATCH_MAX {
        return Err(invalid(format!("a batch of {count} puts")));
    }
    let mut frames = Vec::with_capacity(count);
    let mut bytes = 0usize;
    for _ in 0..count {
        let left = BATCH_BYTES.saturating_sub(bytes);
        let frame = PutFrame::read(r, max_payload.min(u32::try_from(left).unwrap_or(u32::MAX)))?;
        bytes += frame.payload.len();
        frames.push(frame);
    }
    Ok(frames)
}

/// One put: its header and the block's encoded bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct PutFrame {
    /// As a gRPC put's first message carries it.
    pub header: PutHeader,
    /// The encoded block (`header.encoded_len` bytes).
    pub payload: Bytes,
}

/// What a chunkserver answers a put.
#[derive(Clone, Debug, PartialEq)]
pub enum PutReply {
    /// Stored, as a gRPC put answers.
    Stored(PutResponse),
    /// Not taken through the port (put through gRPC instead).
    Refused(String),
    /// Something went wrong on the node.
    Failed(String),
    /// The node serves no more connections now.
    Busy,
    /// The node takes no puts through its port at all.
    Closed(String),
}

/// A frame ready to send: its head (magic, length, header, and the payload too when it is
/// short) and the payload not copied into it.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    /// Sent first.
    pub head: Vec<u8>,
    /// Sent after the head; empty when the head holds it.
    pub payload: Bytes,
}

impl Outgoing {
    /// The frame's bytes in the order they go out.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, &self.payload]
    }

    /// Writes the frame to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        for part in self.parts() {
            w.write_all(part)?;
        }
        Ok(())
    }
}

/// A header length as announced, refused beyond [`MAX_HEADER`].
pub fn header_len(len: u32) -> io::Result<usize> {
    match len as usize {
        len if len <= MAX_HEADER => Ok(len),
        len => Err(invalid(format!("a put header of {len} bytes"))),
    }
}

impl PutFrame {
    /// The frame's bytes before the payload: magic, length and header. The header's
    /// `encoded_len` must be the payload's length.
    pub fn head(header: &PutHeader) -> io::Result<Vec<u8>> {
        let len = header.encoded_len();
        if len > MAX_HEADER {
            return Err(invalid(format!("a put header of {len} bytes")));
        }
        if header.encoded_len > MAX_PUT {
            return Err(invalid(format!(
                "a payload of {} bytes: at most {MAX_PUT} through the port",
                header.encoded_len
            )));
        }
        let mut out = Vec::with_capacity(8 + len);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        header
            .encode(&mut out)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(out)
    }

    /// The whole frame in one buffer.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = self.checked_head()?;
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// [`Self::head`], once the payload is the header's length.
    fn checked_head(&self) -> io::Result<Vec<u8>> {
        if self.payload.len() != self.header.encoded_len as usize {
            return Err(invalid("the payload's length is not the header's"));
        }
        Self::head(&self.header)
    }

    /// The frame to send, its payload copied into the head only when it is short
    /// ([`COPIED_PAYLOAD`]).
    pub fn outgoing(self) -> io::Result<Outgoing> {
        if self.payload.len() <= COPIED_PAYLOAD {
            return Ok(Outgoing {
                head: self.encode()?,
                payload: Bytes::new(),
            });
        }
        Ok(Outgoing {
            head: self.checked_head()?,
            payload: self.payload,
        })
    }

    /// Reads the rest of a frame whose magic has been read and whose header is `len`
    /// bytes long, refusing payloads longer than `max_payload` (and [`MAX_PUT`]).
    pub fn read_rest(r: &mut impl Read, len: u32, max_payload: u32) -> io::Result<PutFrame> {
        let len = header_len(len)?;
        let header =
            PutHeader::decode(read_vec(r, len)?.as_slice()).map_err(|e| invalid(e.to_string()))?;
        if header.encoded_len > MAX_PUT.min(max_payload) {
            return Err(invalid(format!(
                "a put of {} bytes through the port",
                header.encoded_len
            )));
        }
        let payload = read_vec(r, header.encoded_len as usize)?.into();
        Ok(PutFrame { header, payload })
    }

    /// Reads one frame, magic included.
    pub fn read(r: &mut impl Read, max_payload: u32) -> io::Result<PutFrame> {
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        if u32_at(&head, 0) != MAGIC {
            return Err(invalid("not a put-port request"));
        }
        Self::read_rest(r, u32_at(&head, 4), max_payload)
    }
}

impl PutReply {
    /// The reply's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_le_bytes().to_vec();
        let (status, message) = match self {
            PutReply::Stored(response) => {
                out.push(0);
                out.extend_from_slice(&(response.encoded_len() as u32).to_le_bytes());
                response.encode(&mut out).expect("a Vec grows");
                return out;
            }
            PutReply::Refused(m) => (2, m),
            PutReply::Failed(m) => (3, m),
            PutReply::Closed(m) => (5, m),
            PutReply::Busy => {
                out.push(4);
                return out;
            }
        };
        push_message(&mut out, status, message);
        out
    }

    /// Writes the reply.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// The status a reply's first [`REPLY_HEAD`] bytes carry.
    pub fn status(head: &[u8; REPLY_HEAD]) -> io::Result<u8> {
        match u32_at(head, 0) {
            MAGIC => Ok(head[4]),
            other => Err(invalid(format!("not a put-port reply (magic {other:#x})"))),
        }
    }

    /// The reply of `status` from the `len`-byte body that followed its length (nothing
    /// for busy).
    pub fn from_body(status: u8, body: &[u8]) -> io::Result<PutReply> {
        let message = || String::from_utf8_lossy(body).into_owned();
        match status {
            0 => PutResponse::decode(body)
                .map(PutReply::Stored)
                .map_err(|e| invalid(e.to_string())),
            2 => Ok(PutReply::Refused(message())),
            3 => Ok(PutReply::Failed(message())),
            4 => Ok(PutReply::Busy),
            5 => Ok(PutReply::Closed(message())),
            other => Err(invalid(format!("unknown put reply status {other}"))),
        }
    }

    /// A body length as announced for `status`, refused beyond its limit.
    pub fn body_len(status: u8, len: u32) -> io::Result<usize> {
        let limit = if status == 0 { MAX_HEADER } else { MAX_MESSAGE };
        match len as usize {
            len if len <= limit => Ok(len),
            len => Err(invalid(format!("a put reply of {len} bytes"))),
        }
    }

    /// Reads one reply.
    pub fn read(r: &mut impl Read) -> io::Result<PutReply> {
        let mut head = [0u8; REPLY_HEAD];
        r.read_exact(&mut head)?;
        let status = Self::status(&head)?;
        if status == 4 {
            return Ok(PutReply::Busy);
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = Self::body_len(status, u32::from_le_bytes(len))?;
        Self::from_body(status, &read_vec(r, len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame() -> PutFrame {
        let payload = Bytes::from(vec![7u8; 1000]);
        PutFrame {
            header: PutHeader {
                block_id: Bytes::from(vec![1u8; 32]),
                compression: 0,
                raw_len: 1000,
                encoded_len: 1000,
                role: 0,
                replicas: 3,
                min_copies: 2,
                map_epoch: 9,
                regions: vec![1, 2],
                origin_region: 0,
                volume: (1 << 16) | 3,
            },
            payload,
        }
    }

    #[test]
    fn frames_and_replies_read_back_as_written() {
        let bytes = frame().encode().unwrap();
        assert_eq!(PutFrame::read(&mut &bytes[..], MAX_PUT).unwrap(), frame());
        for reply in [
            PutReply::Stored(PutResponse {
                stored_on: vec![1, 2, 3],
                degraded: true,
                already_present: false,
                cap: Bytes::new(),
            }),
            PutReply::Refused("a shipment".into()),
            PutReply::Failed("disk".into()),
            PutReply::Busy,
            PutReply::Closed("tokens".into()),
        ] {
            assert_eq!(PutReply::read(&mut &reply.encode()[..]).unwrap(), reply);
        }
    }

    #[test]
    fn a_batch_reads_back_as_written_within_its_limits() {
        let mut bytes = batch_head(3).unwrap().to_vec();
        for _ in 0..3 {
            bytes.extend(frame().encode().unwrap());
        }
        let read = |b: &[u8], max| {
            let mut r = b;
            let mut head = [0u8; 8];
            r.read_exact(&mut head).unwrap();
            assert_eq!(u32_at(&head, 0), BATCH_MAGIC);
            read_batch_rest(&mut r, u32_at(&head, 4), max)
        };
        assert_eq!(
            read(&bytes, MAX_PUT).unwrap(),
            vec![frame(), frame(), frame()]
        );
        // A payload beyond what the node takes is refused, as alone.
        assert!(read(&bytes, 999).is_err());
        // One frame fewer than announced: an error, not a short batch.
        let cut = bytes.len() - frame().encode().unwrap().len();
        assert!(read(&bytes[..cut], MAX_PUT).is_err());
        // No empty batch, none beyond the count's limit, none beyond its bytes.
        assert!(batch_head(0).is_err());
        assert!(batch_head(BATCH_MAX + 1).is_err());
        assert!(read_batch_rest(&mut &bytes[8..], 0, MAX_PUT).is_err());
        assert!(read_batch_rest(&mut &bytes[8..], BATCH_MAX as u32 + 1, MAX_PUT).is_err());
        let big = 4 << 20;
        let mut large = frame();
        large.header.raw_len = big;
        large.header.encoded_len = big;
        large.payload = Bytes::from(vec![1u8; big as usize]);
        let n = BATCH_BYTES / big as usize + 1;
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(large.encode().unwrap());
        }
        let err = read_batch_rest(&mut &bytes[..], n as u32, MAX_PUT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            read_batch_rest(&mut &bytes[..], (n - 1) as u32, MAX_PUT)
                .unwrap()
                .len(),
            n - 1
        );
    }

    #[test]
    fn a_long_payload_goes_out_after_its_head_uncopied_and_reads_back_alike() {
        // Short: one buffer, the whole frame.
        let short = frame().outgoing().unwrap();
        assert_eq!(short.head, frame().encode().unwrap());
        assert!(short.payload.is_empty());
        // Long: the head, then the very payload held (no copy), the same bytes in all.
        let payload = Bytes::from(vec![5u8; COPIED_PAYLOAD + 1]);
        let mut long = frame();
        long.header.raw_len = payload.len() as u32;
        long.header.encoded_len = payload.len() as u32;
        long.payload = payload.clone();
        let out = long.clone().outgoing().unwrap();
        assert_eq!(out.payload.as_ptr(), payload.as_ptr());
        let mut sent = Vec::new();
        out.write_to(&mut sent).unwrap();
        assert_eq!(sent, long.encode().unwrap());
        assert_eq!(PutFrame::read(&mut &sent[..], MAX_PUT).unwrap(), long);
        // A payload that is not the header's length is refused, long or short.
        for len in [10, COPIED_PAYLOAD + 2] {
            let mut wrong = long.clone();
            wrong.payload = Bytes::from(vec![0u8; len]);
            assert!(wrong.outgoing().is_err(), "{len}");
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_allocating() {
        let mut bytes = frame().encode().unwrap();
        bytes[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
        assert!(PutFrame::read(&mut &bytes[..], MAX_PUT).is_err());
        let mut bytes = frame().encode().unwrap();
        bytes[0] ^= 1;
        assert!(PutFrame::read(&mut &bytes[..], MAX_PUT).is_err());
        let bytes = frame().encode().unwrap();
        assert!(
            PutFrame::read(&mut &bytes[..], 999).is_err(),
            "larger than the node takes"
        );
        let huge = PutFrame {
            header: PutHeader {
                encoded_len: MAX_PUT + 1,
                ..frame().header
            },
            payload: Bytes::new(),
        };
        assert!(huge.encode().is_err());
        let short = PutFrame {
            payload: Bytes::from_static(b"short"),
            ..frame()
        };
        assert!(short.encode().is_err(), "payload and header disagree");
        let mut reply = PutReply::Failed("x".into()).encode();
        reply[5..9].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(PutReply::read(&mut &reply[..]).is_err());
    }

    proptest! {
        /// Any bytes at all decode to a frame, a reply or an error: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PutFrame::read(&mut &bytes[..], MAX_PUT);
            let _ = PutReply::read(&mut &bytes[..]);
            let mut framed = MAGIC.to_le_bytes().to_vec();
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(&bytes);
            let _ = PutFrame::read(&mut &framed[..], MAX_PUT);
            let mut reply = MAGIC.to_le_bytes().to_vec();
            reply.extend_from_slice(&bytes);
            let _ = PutReply::read(&mut &reply[..]);
        }
    }
}
