//! The frames of a metaserver's calls port: the `Calls` stream's messages (`Call` one way,
//! `CallReply` the other) on a TCP connection of their own, without HTTP/2
//! (docs/adr/0024).
//!
//! Every frame is a 4-byte little-endian length and that many bytes. The client's first
//! frame is its volume access token (UTF-8, empty for none), which stands for every call
//! on the connection as a `Calls` stream's opening metadata does; every later frame is
//! one encoded message. A length past the limit is refused before anything is allocated,
//! and ends the connection.

use std::io;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest token frame.
pub const TOKEN_MAX: usize = 16 << 10;

/// The longest message frame: a `Calls` stream's message limit, with room for a call's
/// id and wrapping.
pub const FRAME_MAX: usize = crate::channels::META_MESSAGE_LIMIT + 1024;

/// Appends `message` to `out` as one frame.
pub fn put(out: &mut Vec<u8>, message: &impl Message) {
    let len = message.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    message
        .encode(out)
        .expect("a Vec grows to take what it is given");
}

/// Appends `bytes` to `out` as one frame (the token).
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The next frame on `r`, at most `max` bytes; `None` if the connection ended between
/// frames. A longer frame, or one cut short, is an error.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {max})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// The next frame on `r` decoded as `M` (as [`read`]); undecodable bytes are an error.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<M>> {
    match read(r, FRAME_MAX).await? {
        None => Ok(None),
        Some(body) => M::decode(body.as_slice())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::meta::{Call, QueryRequest, call};

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    #[test]
    fn frames_come_back_as_they_went() {
        let call = Call {
            id: 7,
            call: Some(call::Call::Query(QueryRequest::default())),
            ..Default::default()
        };
        let mut out = Vec::new();
        put_bytes(&mut out, b"a token");
        put(&mut out, &call);
        let mut r = out.as_slice();
        block_on(async {
            assert_eq!(
                read(&mut r, TOKEN_MAX).await.unwrap().as_deref(),
                Some(&b"a token"[..])
            );
            assert_eq!(read_message::<Call, _>(&mut r).await.unwrap(), Some(call));
            assert_eq!(
                read(&mut r, TOKEN_MAX).await.unwrap(),
                None,
                "ended between frames"
            );
        });
    }

    #[test]
    fn a_frame_too_long_cut_short_or_undecodable_is_an_error() {
        block_on(async {
            let mut long = ((TOKEN_MAX + 1) as u32).to_le_bytes().to_vec();
            long.extend_from_slice(b"x");
            let e = read(&mut long.as_slice(), TOKEN_MAX).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // A header that claims 4 GiB is refused without allocating it.
            let huge = u32::MAX.to_le_bytes();
            assert!(read_message::<Call, _>(&mut huge.as_slice()).await.is_err());
            let mut short = Vec::new();
            put_bytes(&mut short, b"0123456789");
            short.truncate(8);
            let e = read(&mut short.as_slice(), TOKEN_MAX).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            let e = read(&mut &[1u8, 0][..], TOKEN_MAX).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "a header cut short");
            let mut junk = Vec::new();
            put_bytes(&mut junk, &[0xff; 9]);
            let e = read_message::<Call, _>(&mut junk.as_slice())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        });
    }
}
