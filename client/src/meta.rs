//! A client of a region's metaservers: sends namespace mutations and queries to any member
//! (members forward to the leader), rotates to the next member when one is unreachable or
//! leadership is changing, and retries a mutation with the same request id so it applies
//! at most once.

mod calls;
mod calls_port;
mod durable;

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meridian_proto::channels::{ChannelPool, Timeouts};
use meridian_proto::ns::{Attr, Granted, NsError, Op, Query, QueryReply, Queued, Reply, Touched};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{
    GetClusterMapRequest, HeartbeatRequest, MutateRequest, QueryRequest,
    RegisterChunkserverRequest, StatusRequest, StatusResponse, WatchRequest, WriteBackRequest,
};
use meridian_proto::{CLIENT_KEY_LEN, ClusterMap, InodeId, NodeInfo, client_id_of};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

/// Why a metadata call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The namespace refused the operation (maps to an errno).
    #[error(transparent)]
    Ns(#[from] NsError),
    /// No member could complete the call before the retry deadline.
    #[error("metaservers unavailable: {0}")]
    Unavailable(String),
    /// The call can never succeed as sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The caller may not make this call.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The server does not implement the call.
    #[error("not implemented by the metaserver: {0}")]
    Unsupported(String),
    /// The server failed (its store, a damaged record, an answer that cannot be read).
    #[error("metaserver failure: {0}")]
    Server(String),
}

impl MetaError {
    /// The errno a filesystem returns for this error.
    pub fn errno(&self) -> i32 {
        use meridian_proto::ns::libc_errno::*;
        match self {
            MetaError::Ns(e) => e.errno(),
            MetaError::Unavailable(_) | MetaError::Server(_) => EIO,
            MetaError::Invalid(_) => EINVAL,
            MetaError::Denied(_) => EACCES,
            MetaError::Unsupported(_) => ENOSYS,
        }
    }

    /// The error a status that retrying cannot fix stands for (the one place statuses
    /// become client errors).
    fn from_status(addr: &str, s: &Status) -> Self {
        let what = format!("{addr}: {}", s.message());
        match s.code() {
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::NotFound => MetaError::Invalid(what),
            Code::PermissionDenied | Code::Unauthenticated => MetaError::Denied(what),
            Code::Unimplemented => MetaError::Unsupported(what),
            _ => MetaError::Server(what),
        }
    }
}

/// A client of one region's metaservers.
#[derive(Debug)]
pub struct MetaClient {
    addrs: Vec<String>,
    pool: ChannelPool,
    client_id: u64,
    next_request: AtomicU64,
    current: AtomicUsize,
    retry_for: Duration,
    /// The volume whose queries are answered as of now, through its home region (0:
    /// none; see `set_linearizable`).
    linearizable: AtomicU32,
    /// Mutate, Query and WriteBack go on one stream per member (`calls.rs`).
    streams: Arc<calls::Streams>,
    /// When [`MetaClient::open_notices`] last looked.
    notices_checked: std::sync::Mutex<Option<Instant>>,
}

/// How often a client looks for members without a calls stream, whose durable notices
/// it does not hear (`meta/durable.rs`).
const NOTICES_EVERY: Duration = Duration::from_secs(1);

/// How long a call waits for its answer (as the channels' request timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one poll of the cluster map waits for a change.
const MAP_POLL: Duration = Duration::from_secs(5);

/// A new client key (see [`meridian_proto::client_id_of`]): from the kernel's random
/// source, else from the clock, the process and a counter (unlikely to collide, but
/// guessable).
fn new_client_key() -> [u8; CLIENT_KEY_LEN] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut key = [0u8; CLIENT_KEY_LEN];
    // SAFETY: writes at most key.len() bytes into key.
    let got = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if got == key.len() as isize {
        return key;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    *h.finalize().as_bytes()
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// What a write-back did ([`MetaClient::write_back`]).
pub struct WrittenBack {
    /// One outcome per change.
    pub outcomes: Vec<Result<Reply, NsError>>,
    /// Inode numbers reserved: the first and how many.
    pub reserved: Option<(InodeId, u32)>,
    /// The leases of existing directories granted.
    pub granted: Vec<Granted>,
    /// What the leader takes in a write-back (`ns::WRITE_BACK_LEVEL`; 0 from an older one).
    pub level: u32,
}

impl MetaClient {
    /// A client of the members at `addrs` (host:port), retrying for up to 30 s.
    pub fn new(addrs: Vec<String>) -> Self {
        let key = new_client_key();
        let client_id = client_id_of(&key);
        MetaClient {
            addrs,
            pool: ChannelPool::new(Timeouts {
                connect: Duration::from_millis(500),
                request: CALL_TIMEOUT,
            }),
            client_id,
            next_request: AtomicU64::new(1),
            current: AtomicUsize::new(0),
            retry_for: Duration::from_secs(30),
            linearizable: AtomicU32::new(0),
            streams: Arc::new(calls::Streams::new(key)),
            notices_checked: std::sync::Mutex::new(None),
        }
    }

    /// From now on, every query asks for an answer as of now for volume `volume`: through
    /// its home region if it has one elsewhere (mounts with `--linearizable`).
    pub fn set_linearizable(&self, volume: u32) {
        self.linearizable.store(volume, Ordering::Relaxed);
    }

    /// Changes how long calls keep retrying before they give up.
    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// Calls `f` against one member after another until one answers or time runs out.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, MetaError>
    where
        F: Fn(MetaServiceClient<meridian_proto::channels::Authed>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_at(|_, c| f(c)).await
    }

    /// As [`call`](Self::call), `f` also given the member's address.
    async fn call_at<T, F, Fut>(&self, f: F) -> Result<T, MetaError>
    where
        F: Fn(String, MetaServiceClient<meridian_proto::channels::Authed>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(MetaError::Invalid("no metaserver addresses".into()));
        }
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut last: String;
        let mut attempts = 0usize;
        loop {
            let cur = self.current.load(Ordering::Relaxed);
            let i = cur % self.addrs.len();
            let addr = &self.addrs[i];
            let outcome = match self.pool.get(addr) {
                Ok(ch) => f(addr.clone(), meridian_proto::channels::meta_client(ch)).await,
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) => {
                    debug!(member = %addr, error = %s.message(), "metaserver call failed; trying the next member");
                    last = format!("{addr}: {}", s.message());
                    // Move on from this member unless another call already did.
                    let _ = self.current.compare_exchange(
                        cur,
                        cur.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Err(s) => return Err(MetaError::from_status(addr, &s)),
            }
            if Instant::now() + backoff > deadline {
                return Err(MetaError::Unavailable(last));
            }
            // Try every member once before waiting: another may already be the leader.
            attempts += 1;
            if attempts.is_multiple_of(self.addrs.len()) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }

    /// The body of a reply; if a follower forwarded the call, the leader it names becomes
    /// the member asked first (when this client knows it by that address).
    fn led<T>(&self, reply: tonic::Response<T>) -> T {
        if let Some(addr) = reply
            .metadata()
            .get(meridian_proto::LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            && let Some(i) = self.addrs.iter().position(|a| a == addr)
        {
            self.current.store(i, Ordering::Relaxed);
        }
        reply.into_inner()
    }

    /// Sends `request` on `member`'s calls stream (`unary` if the stream cannot carry
    /// it): its answer; a leader it names becomes the member asked first, as for a unary
    /// answer ([`led`](Self::led)).
    async fn streamed<R: calls::Streamed, U>(
        &self,
        member: &str,
        client: MetaServiceClient<meridian_proto::channels::Authed>,
        request: R,
        unary: impl FnOnce(MetaServiceClient<meridian_proto::channels::Authed>, R) -> U,
    ) -> Result<R::Answer, Status>
    where
        U: Future<Output = Result<tonic::Response<R::Answer>, Status>>,
    {
        if R::EARLY && self.streams.early() {
            self.open_notices();
        }
        match self
            .streams
            .call(
                member,
                &client,
                !self.pool.routes(member),
                request,
                CALL_TIMEOUT,
            )
            .await?
        {
            Ok((answer, leader)) => {
                if let Some(i) = self.addrs.iter().position(|a| *a == leader) {
                    self.current.store(i, Ordering::Relaxed);
                }
                Ok(answer)
            }
            Err(request) => unary(client, request).await.map(|r| self.led(r)),
        }
    }

    /// Opens a calls stream to each member that has none, in the background, at most once
    /// per [`NOTICES_EVERY`]: each member's durable notices of this client's entries come
    /// on it, and an early answer holds once enough have come (`meta/durable.rs`).
    fn open_notices(&self) {
        let now = Instant::now();
        {
            let mut last = self
                .notices_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.duration_since(t) < NOTICES_EVERY) {
                return;
            }
            *last = Some(now);
        }
        for addr in &self.addrs {
            if self.streams.is_open(addr) {
                continue;
            }
            let Ok(ch) = self.pool.get(addr) else {
                continue;
            };
            let client = meridian_proto::channels::meta_client(ch);
            let (streams, addr) = (self.streams.clone(), addr.clone());
            let direct = !self.pool.routes(&addr);
            tokio::spawn(async move { streams.open(&addr, &client, direct).await });
        }
    }

    /// Applies a namespace mutation, exactly once even across retries and leader changes.
    pub async fn mutate(&self, op: &Op) -> Result<Reply, MetaError> {
        self.mutate_dirs(op).await.map(|(reply, _)| reply)
    }

    /// As [`mutate`](Self::mutate), with the directories the operation changed as they
    /// were just after it (empty when the servers do not say).
    pub async fn mutate_dirs(&self, op: &Op) -> Result<(Reply, Vec<Attr>), MetaError> {
        self.mutate_leased(op, false).await
    }

    /// As [`mutate_dirs`](Self::mutate_dirs); with `lease`, a directory the operation
    /// creates is leased to this client (docs/adr/0006).
    pub async fn mutate_leased(
        &self,
        op: &Op,
        lease: bool,
    ) -> Result<(Reply, Vec<Attr>), MetaError> {
        let op_bytes =
            Bytes::from(serde_json::to_vec(op).map_err(|e| MetaError::Invalid(e.to_string()))?);
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let caps = crate::caps::for_ops([op]);
        let resp = self
            .call_at(|member, c| {
                let req = MutateRequest {
                    op: op_bytes.clone(),
                    client_id: self.client_id,
                    request_id,
                    lease,
                    from_region: 0,
                    volume: self.linearizable.load(Ordering::Relaxed),
                    hops: 0,
                    caps: caps.clone(),
                };
                async move {
                    let unary =
                        |mut c: MetaServiceClient<_>, req| async move { c.mutate(req).await };
                    self.streamed(&member, c, req, unary).await
                }
            })
            .await?;
        let outcome: Result<Reply, NsError> = serde_json::from_slice(&resp.outcome)
            .map_err(|e| MetaError::Server(format!("undecodable reply: {e}")))?;
        let reply = outcome?;
        let dirs = if resp.dirs.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(&resp.dirs).unwrap_or_else(|e| {
                warn!(error = %e, "undecodable directory attributes in a reply; ignored");
                Vec::new()
            })
        };
        Ok((reply, dirs))
    }

    /// Reads the namespace; linearizable unless `stale`.
    pub async fn query(&self, query: &Query, stale: bool) -> Result<QueryReply, MetaError> {
        let q =
            Bytes::from(serde_json::to_vec(query).map_err(|e| MetaError::Invalid(e.to_string()))?);
        let resp = self
            .call_at(|member, c| {
                let volume = self.linearizable.load(Ordering::Relaxed);
                let req = QueryRequest {
                    query: q.clone(),
                    stale: stale && volume == 0,
                    client: self.client_id,
                    linearizable: volume != 0,
                    volume,
                    from_region: 0,
                };
                async move {
                    let unary =
                        |mut c: MetaServiceClient<_>, req| async move { c.query(req).await };
                    self.streamed(&member, c, req, unary).await
                }
            })
            .await?;
        if !resp.caps.is_empty() {
            crate::caps::record_all(&resp.caps);
        }
        let outcome: Result<QueryReply, NsError> = serde_json::from_slice(&resp.outcome)
            .map_err(|e| MetaError::Server(format!("undecodable reply: {e}")))?;
        Ok(outcome?)
    }

    /// From now on this client's changes take early answers (`on`: the default unless
    /// `MERIDIAN_EARLY_ANSWERS=off`), or wait for the leader's answer after the commit:
    /// see `meta/durable.rs` and docs/adr/0020.
    pub fn set_early_answers(&self, on: bool) {
        self.streams.set_early(on);
    }

    /// Early answers this client heard from leaders, and how many it took: those whose
    /// entries a majority of members held durable before the answer after the commit
    /// came (`meta/durable.rs`).
    pub fn early_answers(&self) -> (u64, u64) {
        self.streams.early_answers()
    }

    /// Calls this client sent through members' calls ports (docs/adr/0024) rather than
    /// gRPC.
    pub fn calls_through_port(&self) -> u64 {
        self.streams.port_calls()
    }

    /// This client's id: the servers record it with each change it makes.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// A new operation id of this client, for a change sent later (a write-back).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends changes this client answered alone under its directory leases, in order,
    /// gives back the leases `release`, and reserves `reserve` inode numbers. Each change
    /// applies once even across retries. Returns one outcome per change, and the inode
    /// numbers reserved (first, count).
    pub async fn write_back(
        &self,
        ops: &[Queued],
        release: &[InodeId],
        reserve: u32,
        acquire: &[InodeId],
    ) -> Result<WrittenBack, MetaError> {
        let bytes =
            Bytes::from(serde_json::to_vec(ops).map_err(|e| MetaError::Invalid(e.to_string()))?);
        let release: Vec<u64> = release.iter().map(|d| d.0).collect();
        let acquire: Vec<u64> = acquire.iter().map(|d| d.0).collect();
        let caps = crate::caps::for_ops(ops.iter().map(|q| &q.op));
        let resp = self
            .call_at(|member, c| {
                let req = WriteBackRequest {
                    client_id: self.client_id,
                    ops: bytes.clone(),
                    release: release.clone(),
                    reserve,
                    caps: caps.clone(),
                    acquire: acquire.clone(),
                };
                async move {
                    let unary =
                        |mut c: MetaServiceClient<_>, req| async move { c.write_back(req).await };
                    self.streamed(&member, c, req, unary).await
                }
            })
            .await?;
        let outcomes: Vec<Result<Reply, NsError>> = serde_json::from_slice(&resp.outcomes)
            .map_err(|e| MetaError::Server(format!("undecodable reply: {e}")))?;
        if outcomes.len() != ops.len() {
            return Err(MetaError::Server(format!(
                "{} outcomes for {} changes",
                outcomes.len(),
                ops.len()
            )));
        }
        let reserved = (resp.reserved > 0).then_some((InodeId(resp.reserved_from), resp.reserved));
        let granted: Vec<Granted> = if resp.granted.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(&resp.granted)
                .map_err(|e| MetaError::Server(format!("undecodable reply: {e}")))?
        };
        if granted.iter().any(|g| !acquire.contains(&g.dir.ino.0)) {
            return Err(MetaError::Server(
                "a lease granted that was not asked for".into(),
            ));
        }
        Ok(WrittenBack {
            outcomes,
            reserved,
            granted,
            level: resp.level,
        })
    }

    /// Long-polls what other clients' changes of `volume` from change-log sequence `from`
    /// made stale in kernel caches (0: only where "now" is), waiting up to `wait` for some.
    pub async fn watch(
        &self,
        volume: u32,
        from: u64,
        wait: Duration,
    ) -> Result<(Touched, u64, bool, Vec<InodeId>), MetaError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let resp = self
            .call(|mut c| async move {
                c.watch(WatchRequest {
                    volume,
                    from,
                    wait_ms,
                    client: self.client_id,
                })
                .await
                .map(|r| self.led(r))
            })
            .await?;
        let touched: Touched = serde_json::from_slice(&resp.touched)
            .map_err(|e| MetaError::Server(format!("undecodable reply: {e}")))?;
        let recall = resp.recall.into_iter().map(InodeId).collect();
        Ok((touched, resp.next, resp.gap, recall))
    }

    /// The Raft status of the first member that answers.
    pub async fn status(&self) -> Result<StatusResponse, MetaError> {
        self.call(|mut c| async move { c.status(StatusRequest {}).await.map(|r| r.into_inner()) })
            .await
    }

    /// Adds (or refreshes) a chunkserver in the cluster map.
    pub async fn register_chunkserver(&self, node: &NodeInfo) -> Result<(), MetaError> {
        let req = RegisterChunkserverRequest {
            id: node.id.0,
            zone: node.zone.0.clone(),
            address: node.address.clone(),
            capacity: node.capacity,
            range_address: node.range_address.clone(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.register_chunkserver(req).await.map(|_| ()) }
        })
        .await
    }

    /// Reports a chunkserver alive; fails if the leader does not know it (register again).
    pub async fn heartbeat(&self, node: &NodeInfo) -> Result<u64, MetaError> {
        let req = HeartbeatRequest {
            id: node.id.0,
            used_bytes: 0,
            capacity: node.capacity,
        };
        self.call(|mut c| async move { c.heartbeat(req).await.map(|r| r.into_inner().map_epoch) })
            .await
    }

    /// The cluster map, as soon as its epoch is above `known` (or after `wait`).
    pub async fn cluster_map(&self, known: u64, wait: Duration) -> Result<ClusterMap, MetaError> {
        let wait_ms = wait.as_millis().min(u128::from(u32::MAX)) as u32;
        let resp = self
            .call(|mut c| async move {
                c.get_cluster_map(GetClusterMapRequest {
                    known_epoch: known,
                    wait_ms,
                })
                .await
                .map(|r| r.into_inner())
            })
            .await?;
        serde_json::from_slice(&resp.map)
            .map_err(|e| MetaError::Server(format!("undecodable cluster map: {e}")))
    }

    /// A cluster map kept fresh in the background: long-polls the metaservers and publishes
    /// every newer epoch. The task ends when every receiver is gone.
    pub fn watch_cluster_map(self: &Arc<Self>) -> watch::Receiver<Arc<ClusterMap>> {
        let (tx, rx) = watch::channel(Arc::new(ClusterMap::default()));
        let client = self.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                let known = tx.borrow().epoch;
                // Well inside the call timeout (10 s): a poll that timed out would move this
                // client off its member, as for a member that does not answer.
                match client.cluster_map(known, MAP_POLL).await {
                    Ok(map) if map.epoch > known => {
                        info!(
                            epoch = map.epoch,
                            nodes = map.nodes.len(),
                            "cluster map updated"
                        );
                        tx.send_replace(Arc::new(map));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "cluster map fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        rx
    }
}
