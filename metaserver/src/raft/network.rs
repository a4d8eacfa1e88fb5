//! Raft between the members of a region over gRPC: openraft's messages, JSON-encoded, in
//! the RaftService's byte envelopes (an append's entries spliced from, and kept in, the
//! member's [`Encoded`]; a request of more bytes than [`APPEND_MAX_BYTES`] goes as several
//! appends, `append_parts.rs`). Snapshots stream in 1 MiB chunks.

use crate::error::MetaError;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use meridian_proto::channels::ChannelPool;
use meridian_proto::pb::meta::RaftMessage;
use meridian_proto::pb::meta::raft_service_client::RaftServiceClient;
use meridian_proto::pb::meta::raft_service_server::RaftService;
use meridian_proto::wire;
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use super::append_parts::{APPEND_MAX_BYTES, AppendParts};
use super::encoded::Encoded;
use super::pacing::{Answers, Pacing};
use super::snapshot_dir::SnapshotData;
use super::{MetaRaft, TypeConfig};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// Creates a client per peer; channels are shared through the pool.
#[derive(Clone, Debug)]
pub struct Network {
    pool: Arc<ChannelPool>,
    encoded: Arc<Encoded>,
    pacing: Arc<Pacing>,
}

impl Network {
    /// A network using `pool` for its connections, its appends' entries spliced from
    /// `encoded` (the member's log keeps them there), a spare's appends batched by
    /// `pacing`.
    pub fn new(pool: Arc<ChannelPool>, encoded: Arc<Encoded>, pacing: Arc<Pacing>) -> Self {
        Network {
            pool,
            encoded,
            pacing,
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: u64,
    addr: String,
    pool: Arc<ChannelPool>,
    encoded: Arc<Encoded>,
    pacing: Arc<Pacing>,
    /// Whether the peer serves `AppendStream` (a member of an older version does not: it
    /// gets one unary call per request).
    streams: bool,
    /// The most bytes an append of more than one entry carries ([`APPEND_MAX_BYTES`]).
    max_append: usize,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            encoded: self.encoded.clone(),
            pacing: self.pacing.clone(),
            streams: true,
            max_append: APPEND_MAX_BYTES,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    /// The data's length: a stream cut short is refused before it reaches Raft.
    #[serde(default)]
    len: Option<u64>,
}

fn encode<T: Serialize>(v: &T) -> RaftMessage {
    RaftMessage {
        data: Bytes::from(serde_json::to_vec(v).expect("raft messages serialize")),
    }
}

fn status_to_rpc(s: Status, target: u64) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "member {target}: {}",
                s.message()
            )))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "member {target}: {:?} {}",
            s.code(),
            s.message()
        ))),
    }
}

impl Peer {
    fn client(
        &self,
        option: &RPCOption,
    ) -> RpcResult<RaftServiceClient<tonic::transport::Channel>> {
        let _ = option;
        let ch = self.pool.get(&self.addr).map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "member {}: {e}",
                self.target
            )))
        })?;
        Ok(meridian_proto::channels::raft_client(ch))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, msg: RaftMessage) -> RpcResult<T> {
        let result: Result<T, RaftError<TypeConfig>> =
            serde_json::from_slice(&msg.data).map_err(|e| {
                RPCError::Network(NetworkError::from_string(format!(
                    "bad reply from member {}: {e}",
                    self.target
                )))
            })?;
        // A remote fatal error (the peer is shutting down or broken): treat it as unreachable.
        result.map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "member {}: {e}",
                self.target
            )))
        })
    }
}

/// What one `AppendStream` answer carries: the member's result for one request, or the
/// fatal error that stopped its Raft.
type StreamItem = Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>;

/// The requests still unanswered on a stream (when each was sent, oldest first, moved on
/// by the time its size allows: see [`Unanswered::sent`]), and when the last answer came.
#[derive(Clone, Default)]
struct Unanswered(Arc<std::sync::Mutex<(VecDeque<Instant>, Option<Instant>)>>);

impl Unanswered {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Instant>, Option<Instant>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A request of `bytes` sent now. Its answer may take longer by a millisecond per 16 KiB
    /// than a heartbeat's: the member decodes it and writes it to its log before it
    /// answers, and a big entry (a copy's step, a commit of thousands of extents) that
    /// always missed a fixed deadline would be sent again and again.
    fn sent(&self, bytes: usize) {
        let allowance = Duration::from_micros(bytes as u64 / 16);
        self.lock().0.push_back(Instant::now() + allowance);
    }
    fn answered(&self) {
        let mut u = self.lock();
        u.0.pop_front();
        u.1 = Some(Instant::now());
    }
}

impl Answers for Unanswered {
    /// Since when the stream waits for its next answer: the later of the oldest
    /// unanswered request and the last answer (answers come in order, so a request sent
    /// behind others waits for them too). None when nothing is unanswered.
    fn waiting_since(&self) -> Option<Instant> {
        let u = self.lock();
        let oldest = *u.0.front()?;
        Some(u.1.map_or(oldest, |last| last.max(oldest)))
    }

    fn last_answer(&self) -> Option<Instant> {
        self.lock().1
    }
}

/// How long an entry-less append on a replication stream waits for the next request.
pub const ENTRYLESS_HOLD: Duration = Duration::from_millis(10);

/// The least a replication stream waits for its next answer before it fails. Openraft's
/// soft deadline is three quarters of a heartbeat (75 ms by default, 37.5 in the tests'
/// groups): a member catching up on a large namespace, applying a batch or syncing a
/// large append, answers later than that, and each failure opened a new stream for the
/// same entries, again and again, until the member's HTTP/2 server refused its
/// connection's streams for good (more than twenty reset before it took them) and the
/// member stayed behind. A member that is gone is found by its connection failing.
pub const ANSWER_WAIT_MIN: Duration = Duration::from_secs(2);

/// The requests of a replication stream, an entry-less one (the commit index moved, or a
/// probe) held back up to `hold` for the next: when a request with entries follows, it
/// carries the same commit index and the entry-less one is never sent.
///
/// Openraft sends a follower an append of its own whenever the commit index moves and no
/// entry is waiting: with one client writing at a time, every entry costs each follower
/// two messages, the second only to say "committed" (the followers' apply waits for it,
/// the client's answer does not). Dropping it is safe: openraft counts a follower's
/// acknowledgement per log id (all requests up to the one acknowledged drain), so the
/// next request's answer acknowledges the dropped one too, with the later request's
/// sending time (a lease measured from it is shorter, never longer). A newer entry-less
/// request replaces a held one and keeps its deadline; the end of the input sends
/// what is held at once (a heartbeat is a stream of one).
fn hold_entryless<S>(
    input: S,
    hold: Duration,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    type Held = Option<(AppendEntriesRequest<TypeConfig>, tokio::time::Instant)>;
    Box::pin(futures::stream::unfold(
        (input, None, false),
        move |(mut input, mut held, mut ended): (S, Held, bool)| async move {
            loop {
                if ended {
                    return held.map(|(r, _)| (r, (input, None, true)));
                }
                let next = match &held {
                    None => input.next().await,
                    Some((_, until)) => match tokio::time::timeout_at(*until, input.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let (r, _) = held.take().expect("held");
                            return Some((r, (input, None, false)));
                        }
                    },
                };
                match next {
                    None => ended = true,
                    Some(r) if r.entries.is_empty() => {
                        let until = held
                            .take()
                            .map_or_else(|| tokio::time::Instant::now() + hold, |(_, u)| u);
                        held = Some((r, until));
                    }
                    // Carries the commit index of what was held, or a later one.
                    Some(r) => return Some((r, (input, None, false))),
                }
            }
        },
    ))
}

impl Peer {
    /// Replication over one long-lived `AppendStream`: each request and each answer is one
    /// message on an open HTTP/2 stream, instead of a call (headers, trailers, a server
    /// task) per request. Waiting longer than `option.soft_ttl()` (at least
    /// [`ANSWER_WAIT_MIN`]) for the next answer (counted from the later of the oldest
    /// unanswered request, plus what its size allows, and the last answer: a member
    /// catching up answers many pipelined requests one after the other) fails the stream;
    /// an idle stream (nothing unanswered) waits as long as the leader does.
    ///
    /// The stream is opened once its first request is there: openraft waits out its
    /// backoff (after errors) in the requests it makes, and a member that cannot be
    /// reached was otherwise tried again at once, without end (about 2,400 connection
    /// attempts a second to a member down for two minutes, each logged).
    async fn open_append_stream<S>(
        &mut self,
        mut input: S,
        option: RPCOption,
    ) -> RpcResult<BoxStream<'static, RpcResult<StreamAppendResult<TypeConfig>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let Some(first) = input.next().await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let input = futures::stream::once(std::future::ready(first)).chain(input);
        let target = self.target;
        let unanswered = Unanswered::default();
        let sent = unanswered.clone();
        let encoded = self.encoded.clone();
        let max_append = self.max_append;
        self.pacing.opened(target, Arc::new(unanswered.clone()));
        // A spare's next append waits while the prompt followers keep up (`pacing.rs`).
        let held = self
            .pacing
            .paced(target, hold_entryless(input, ENTRYLESS_HOLD));
        // Each answered on its own; openraft counts acknowledgements per log id.
        let requests = held.flat_map(move |r| {
            let sent = sent.clone();
            let parts = AppendParts::new(encoded.clone(), r, max_append);
            futures::stream::iter(parts.map(move |part| {
                sent.sent(part.json.len());
                RaftMessage {
                    data: Bytes::from(part.json),
                }
            }))
        });
        let inbound = match self.client(&option)?.append_stream(requests).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                // Retried by openraft; the next session goes one call at a time.
                self.streams = false;
                return Err(status_to_rpc(s, target));
            }
            Err(s) => return Err(status_to_rpc(s, target)),
        };
        let deadline = option.soft_ttl().max(ANSWER_WAIT_MIN);
        let answers = futures::stream::unfold(Some(inbound), move |state| {
            let unanswered = unanswered.clone();
            async move {
                let mut inbound = state?;
                let msg = loop {
                    let wait = unanswered
                        .waiting_since()
                        .map_or(deadline, |t| deadline.saturating_sub(t.elapsed()));
                    match tokio::time::timeout(wait, inbound.message()).await {
                        Ok(msg) => break msg,
                        Err(_)
                            if unanswered
                                .waiting_since()
                                .is_some_and(|t| t.elapsed() >= deadline) =>
                        {
                            // A slow member, as a unary call past its deadline: a network
                            // error openraft retries at once (unreachable backs off).
                            let e = NetworkError::from_string(format!(
                                "member {target}: no answer to an append within {deadline:?}"
                            ));
                            return Some((Err(RPCError::Network(e)), None));
                        }
                        Err(_) => continue,
                    }
                };
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => return None,
                    Err(s) => return Some((Err(status_to_rpc(s, target)), None)),
                };
                unanswered.answered();
                match serde_json::from_slice::<StreamItem>(&msg.data) {
                    Ok(Ok(result)) => {
                        let more = result.is_ok();
                        Some((Ok(result), more.then_some(inbound)))
                    }
                    // The member's Raft stopped: as for a unary call, it is unreachable.
                    Ok(Err(fatal)) => Some((
                        Err(RPCError::Unreachable(Unreachable::from_string(format!(
                            "member {target}: {fatal}"
                        )))),
                        None,
                    )),
                    Err(e) => Some((
                        Err(RPCError::Network(NetworkError::from_string(format!(
                            "bad append answer from member {target}: {e}"
                        )))),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(answers))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if !self.streams {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let answers = self.open_append_stream(input, option).await?;
            Ok(answers as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        // The first part only: if entries follow, its success is a partial one, and
        // openraft sends the rest from there.
        let part = AppendParts::new(self.encoded.clone(), rpc, self.max_append)
            .next()
            .expect("an append has a first part");
        // As on a stream, a large append may take longer by what its size allows.
        let allowance = Duration::from_micros(part.json.len() as u64 / 16);
        let mut req = Request::new(RaftMessage {
            data: Bytes::from(part.json),
        });
        req.set_timeout(option.soft_ttl() + allowance);
        let resp = self
            .client(&option)?
            .append_entries(req)
            .await
            .map_err(|s| status_to_rpc(s, self.target))?;
        match self.decode(resp.into_inner())? {
            AppendEntriesResponse::Success if part.more => {
                Ok(AppendEntriesResponse::PartialSuccess(part.last))
            }
            answer => Ok(answer),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        let mut req = Request::new(encode(&rpc));
        req.set_timeout(option.soft_ttl());
        let resp = self
            .client(&option)?
            .vote(req)
            .await
            .map_err(|s| status_to_rpc(s, self.target))?;
        self.decode(resp.into_inner())
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreadable = |e: std::io::Error| {
            StreamingError::Unreachable(Unreachable::from_string(format!("snapshot: {e}")))
        };
        // The data is read a chunk at a time as the stream is sent, never whole.
        let mut file = tokio::fs::File::from_std(snapshot.snapshot);
        let len = file.metadata().await.map_err(unreadable)?.len();
        file.rewind().await.map_err(unreadable)?;
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
            len: Some(len),
        });
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; wire::CHUNK_LEN];
            let mut len = 0;
            while len < buf.len() {
                match file.read(&mut buf[len..]).await {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) => {
                        // The receiver sees a stream cut short and rejects the snapshot.
                        tracing::warn!(error = %e, "snapshot unreadable while sending");
                        return None;
                    }
                }
            }
            if len == 0 {
                return None;
            }
            buf.truncate(len);
            let msg = RaftMessage {
                data: Bytes::from(buf),
            };
            Some((msg, Some(file)))
        });
        let msgs = futures::stream::iter([header]).chain(chunks);
        let mut client = self.client(&option)?;
        let send = client.install_snapshot(msgs);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = send => {
                let resp = resp.map_err(|s| status_to_rpc(s, self.target))?;
                Ok(self.decode(resp.into_inner())?)
            }
        }
    }
}

/// The receiving side: hands each message to the local Raft.
pub struct RaftRpc {
    raft: MetaRaft,
    /// Where an incoming snapshot is written while it arrives.
    incoming: std::path::PathBuf,
    /// Where an append's entries' JSON is kept for the member's log.
    encoded: Arc<Encoded>,
}

impl RaftRpc {
    /// Serves Raft RPCs for `raft`; incoming snapshots are spooled in folder `incoming`,
    /// appends' entries' JSON kept in `encoded` (the member's log writes it as it came).
    pub fn new(raft: MetaRaft, incoming: std::path::PathBuf, encoded: Arc<Encoded>) -> Self {
        RaftRpc {
            raft,
            incoming,
            encoded,
        }
    }

    /// A file for an incoming snapshot, already unlinked: it goes away with its handle,
    /// whatever happens to the transfer.
    fn spool(&self) -> std::io::Result<tokio::fs::File> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.incoming.join(format!(
            "incoming-{}-{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(tokio::fs::File::from_std(file))
    }
}

fn bad(e: serde_json::Error) -> Status {
    Status::from(MetaError::Invalid(format!("undecodable raft message: {e}")))
}

/// The answers of one `AppendStream`.
pub type AppendAnswers = BoxStream<'static, Result<RaftMessage, Status>>;

#[tonic::async_trait]
impl RaftService for RaftRpc {
    type AppendStreamStream = AppendAnswers;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        // The requests in order, up to the first that does not decode (or the end).
        let encoded = self.encoded.clone();
        let requests = futures::stream::unfold(request.into_inner(), move |mut inbound| {
            let encoded = encoded.clone();
            async move {
                match inbound.message().await {
                    Ok(Some(msg)) => match encoded.decode_append(&msg.data) {
                        Ok(req) => Some((req, inbound)),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable append on a stream: stream ends");
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(s) => {
                        tracing::debug!(status = %s, "append stream ended");
                        None
                    }
                }
            }
        });
        let answers = self
            .raft
            .stream_append(requests)
            .map(|item: StreamItem| Ok(encode(&item)));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = self
            .encoded
            .decode_append(&request.into_inner().data)
            .map_err(bad)?;
        Ok(Response::new(encode(&self.raft.append_entries(req).await)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<TypeConfig> =
            serde_json::from_slice(&request.into_inner().data).map_err(bad)?;
        Ok(Response::new(encode(&self.raft.vote(req).await)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let first = wire::next(&mut stream)
            .await
            .ok_or_else(|| Status::from(MetaError::Invalid("empty snapshot stream".into())))??;
        let header: SnapshotHeader = serde_json::from_slice(&first.data).map_err(bad)?;
        let spool_err =
            |e: std::io::Error| Status::from(MetaError::Store(format!("snapshot spool: {e}")));
        let mut data = self.spool().map_err(spool_err)?;
        let mut got = 0u64;
        while let Some(msg) = wire::next(&mut stream).await {
            let msg = msg?;
            got += msg.data.len() as u64;
            data.write_all(&msg.data).await.map_err(spool_err)?;
        }
        data.flush().await.map_err(spool_err)?;
        if let Some(len) = header.len
            && got != len
        {
            // The sender retries; Raft never sees a partial snapshot.
            return Err(Status::from(MetaError::Unavailable(format!(
                "snapshot stream ended after {got} of {len} bytes"
            ))));
        }
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta: header.meta,
            snapshot: data.into_std().await,
        };
        let result = self
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        Ok(Response::new(encode(&result)))
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
