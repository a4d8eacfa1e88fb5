//! Moving encoded blocks through the streaming ChunkService calls: splitting a block into
//! messages on the way out, and checking and reassembling it on the way in. Both sides of
//! every stream (client, coordinator, replica) use these, so the framing lives in one place.

use bytes::{Bytes, BytesMut};
use tonic::Status;

use crate::block::{Compression, EncodedBlock};
use crate::ids::BlockId;
use crate::pb::chunk::{GetHeader, GetResponse, PutHeader, PutRequest, get_response, put_request};

/// Payload bytes per streamed message: well under tonic's 4 MiB message limit.
pub const CHUNK_LEN: usize = 1 << 20;

/// The most payload bytes a Get answer puts in one message: a whole block of the largest
/// size, and its frame table.
pub const MAX_MESSAGE_LEN: usize = crate::block::MAX_BLOCK_LEN as usize + (1 << 20);

/// Splits `payload` into data messages of at most `len` bytes (zero-copy slices).
fn slices(payload: &Bytes, len: usize) -> impl Iterator<Item = Bytes> + '_ {
    (0..payload.len())
        .step_by(len.max(1))
        .map(move |at| payload.slice(at..(at + len).min(payload.len())))
}

/// Payload bytes per message for a Get answer, from what the request asks
/// (`GetRequest::message_len`): [`CHUNK_LEN`] unless it asks for more, and at most
/// [`MAX_MESSAGE_LEN`].
pub fn message_len(asked: u32) -> usize {
    (asked as usize).clamp(CHUNK_LEN, MAX_MESSAGE_LEN)
}

/// `header` with the fields that describe `block` itself (id, compression, lengths).
pub fn put_header(block: &EncodedBlock, mut header: PutHeader) -> PutHeader {
    header.block_id = Bytes::copy_from_slice(block.id.as_bytes());
    header.compression = block.compression.code();
    header.raw_len = block.raw_len;
    header.encoded_len = block.payload.len() as u32;
    header
}

/// The messages of a Put call for `block`, the header first.
pub fn put_messages(block: &EncodedBlock, header: PutHeader) -> Vec<PutRequest> {
    let header = put_header(block, header);
    let mut msgs = vec![PutRequest {
        msg: Some(put_request::Msg::Header(header)),
    }];
    msgs.extend(slices(&block.payload, CHUNK_LEN).map(|d| PutRequest {
        msg: Some(put_request::Msg::Data(d)),
    }));
    msgs
}

/// The messages of a Get answer: a header, then the payload in slices of at most
/// `message_len` bytes (see [`message_len`]).
pub fn get_messages(header: GetHeader, payload: Bytes, message_len: usize) -> Vec<GetResponse> {
    let mut msgs = vec![GetResponse {
        msg: Some(get_response::Msg::Header(header)),
    }];
    msgs.extend(slices(&payload, message_len).map(|d| GetResponse {
        msg: Some(get_response::Msg::Data(d)),
    }));
    msgs
}

/// Reads the payload that follows a header: exactly `len` bytes, at most `limit`.
pub async fn read_payload<S, M>(
    stream: &mut S,
    len: u32,
    limit: u32,
    mut data_of: impl FnMut(M) -> Option<Bytes>,
) -> Result<Bytes, Status>
where
    S: futures_core::Stream<Item = Result<M, Status>> + Unpin,
{
    if len > limit {
        return Err(Status::invalid_argument(format!(
            "payload of {len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut buf = BytesMut::new();
    let mut only: Option<Bytes> = None;
    while let Some(msg) = next(stream).await {
        let data = data_of(msg?)
            .ok_or_else(|| Status::invalid_argument("a second header in one stream"))?;
        let have = buf.len() + only.as_ref().map_or(0, Bytes::len);
        if have + data.len() > len as usize {
            return Err(Status::invalid_argument(format!(
                "stream carries more than the {len} payload bytes its header announced"
            )));
        }
        // A payload in one message is kept as received; only several are copied together.
        match only.take() {
            None if buf.is_empty() => only = Some(data),
            first => {
                if buf.is_empty() {
                    buf.reserve(len as usize);
                }
                if let Some(first) = first {
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    let payload = only.unwrap_or_else(|| buf.freeze());
    if payload.len() != len as usize {
        return Err(Status::invalid_argument(format!(
            "stream ended after {} of {len} payload bytes",
            payload.len()
        )));
    }
    Ok(payload)
}

/// Awaits the next item of a stream without needing a StreamExt trait.
pub async fn next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// Checks a Put header's block fields and returns what the payload must be.
pub fn parse_put_header(h: &PutHeader) -> Result<(BlockId, Compression), Status> {
    let id =
        BlockId::from_slice(&h.block_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let compression = Compression::from_code(h.compression)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if compression == Compression::None && h.encoded_len != h.raw_len {
        return Err(Status::invalid_argument(format!(
            "block {id}: uncompressed payload of {} bytes but raw length {}",
            h.encoded_len, h.raw_len
        )));
    }
    Ok((id, compression))
}

/// Reads a whole Get answer into its header and payload.
pub async fn read_get(
    stream: &mut tonic::Streaming<GetResponse>,
    limit: u32,
) -> Result<(GetHeader, Bytes), Status> {
    let header = match next(stream).await {
        Some(Ok(GetResponse {
            msg: Some(get_response::Msg::Header(h)),
        })) => h,
        Some(Err(e)) => return Err(e),
        _ => return Err(Status::internal("get answer did not start with a header")),
    };
    let payload = read_payload(
        stream,
        header.payload_len,
        limit,
        |m: GetResponse| match m.msg {
            Some(get_response::Msg::Data(d)) => Some(d),
            _ => None,
        },
    )
    .await?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize) -> GetHeader {
        GetHeader {
            payload_len: len as u32,
            ..Default::default()
        }
    }

    /// The payload read back from `msgs` (the header skipped), as `read_payload` does.
    fn read_back(msgs: Vec<GetResponse>, len: usize) -> Bytes {
        let mut stream = tokio_stream::iter(msgs.into_iter().skip(1).map(Ok));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_payload(
            &mut stream,
            len as u32,
            u32::MAX,
            |m: GetResponse| match m.msg {
                Some(get_response::Msg::Data(d)) => Some(d),
                _ => None,
            },
        ))
        .unwrap()
    }

    #[test]
    fn a_get_answer_comes_in_the_pieces_its_caller_takes_and_reads_back_whole() {
        let len = (4 << 20) + 123;
        let payload = Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
        // Callers of earlier versions ask for nothing: 1 MiB pieces, joined on reading.
        assert_eq!(message_len(0), CHUNK_LEN);
        let pieces = get_messages(header(len), payload.clone(), message_len(0));
        assert_eq!(pieces.len(), 1 + 5);
        let joined = read_back(pieces, len);
        assert_eq!(joined, payload);
        assert_ne!(
            joined.as_ptr(),
            payload.as_ptr(),
            "pieces are joined in a new buffer"
        );
        // A reader of whole blocks: one message, kept as received (no copy).
        let whole = get_messages(header(len), payload.clone(), message_len(u32::MAX));
        assert_eq!(whole.len(), 1 + 1);
        let kept = read_back(whole, len);
        assert_eq!(
            kept.as_ptr(),
            payload.as_ptr(),
            "one message is kept as it came"
        );
        // Asking for less than the default, or more than the largest block, is bounded.
        assert_eq!(message_len(1), CHUNK_LEN);
        assert_eq!(message_len(u32::MAX), MAX_MESSAGE_LEN);
    }
}
