//! Mutate, Query and WriteBack calls on one long-lived `Calls` stream per member (see the
//! metaserver's `calls.rs`): each call and its answer one HTTP/2 DATA frame, where a unary
//! call's request and answer were each two writes (HEADERS then DATA, DATA then
//! trailers), sent apart on a busy host.
//!
//! Where the member has a calls port (docs/adr/0024) and is dialed directly, the stream is
//! a connection to that port instead: the same calls and answers, framed without HTTP/2.
//!
//! A member without `Calls` (older than the stream) is asked through unary calls, and
//! asked again for a stream after [`REPROBE`]. A stream that breaks fails the calls in
//! flight on it as a broken connection fails a unary call (unavailable: the caller retries
//! with the same request id, so a change still applies once); the next call opens a new
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::CLIENT_KEY_LEN;
use meridian_proto::channels::Authed;
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{
    Call, CallReply, CallsPortRequest, MutateRequest, MutateResponse, Notices, QueryRequest,
    QueryResponse, WriteBackRequest, WriteBackResponse, call, call_reply,
};
use meridian_proto::prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status};
use tracing::debug;

use super::calls_port::{self, PortOut};
use super::durable::{self, Durable, Expect};

/// How long a member found without `Calls` is asked through unary calls before it is
/// asked for a stream again (it may have been upgraded).
const REPROBE: Duration = Duration::from_secs(60);

/// How long after a stream failed to open calls to that member fail at once (as
/// unavailable: the caller moves on to the next member) instead of each trying again,
/// one after another, behind the member's lock.
const FAILED_OPEN: Duration = Duration::from_secs(1);
/// How long a calls port's connection may be silent before the client asks whether the
/// member is still there, and how long then for an answer (HTTP/2's pings).
const PING_EVERY: Duration = meridian_proto::channels::PING_EVERY;
const PING_TIMEOUT: Duration = meridian_proto::channels::PING_TIMEOUT;

/// Most calls named as settled on the next call (past it, the answers after the commit
/// of the others come, and are dropped here as before).
const SETTLED_MAX: usize = 1024;

/// A unary call's request that also goes on the stream, and its answer.
pub(super) trait Streamed: Message + Sized {
    type Answer;
    /// Whether the call takes an early answer (a change; see `durable.rs`).
    const EARLY: bool;
    fn into_call(self) -> call::Call;
    /// The answer in `reply`; `None` if it answers another kind of call.
    fn answer(reply: call_reply::Reply) -> Option<Self::Answer>;
}

macro_rules! streamed {
    ($request:ident, $answer:ident, $variant:ident, $early:expr) => {
        impl Streamed for $request {
            type Answer = $answer;
            const EARLY: bool = $early;
            fn into_call(self) -> call::Call {
                call::Call::$variant(self)
            }
            fn answer(reply: call_reply::Reply) -> Option<$answer> {
                match reply {
                    call_reply::Reply::$variant(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}

streamed!(MutateRequest, MutateResponse, Mutate, true);
streamed!(QueryRequest, QueryResponse, Query, false);
streamed!(WriteBackRequest, WriteBackResponse, WriteBack, true);

/// Whether a client takes early answers unless told otherwise: yes, but not with
/// `MERIDIAN_EARLY_ANSWERS=off` in its environment (docs/adr/0020).
fn early_answers_by_default() -> bool {
    std::env::var("MERIDIAN_EARLY_ANSWERS").as_deref() != Ok("off")
}

/// The streams of one client, by member address: each member's behind a lock of its own
/// (a stream being opened to a member that does not answer holds up only its callers).
/// Each stream also carries the member's durable notices of this client's entries.
#[derive(Debug)]
pub(super) struct Streams {
    by_member: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Link>>>>,
    /// The client's key, which its notices subscriptions name
    /// (`meridian_proto::client_id_of`).
    client_key: [u8; CLIENT_KEY_LEN],
    durable: Arc<Durable>,
    /// Whether calls ask for early answers.
    early: AtomicBool,
    /// Early answers heard, and those taken (`early_answers`).
    early_heard: AtomicU64,
    early_taken: AtomicU64,
    /// When each member without a calls port said so.
    portless: Mutex<HashMap<String, Instant>>,
    /// Calls sent through calls ports.
    port_calls: AtomicU64,
}

/// Where a stream's calls go.
#[derive(Clone, Debug)]
enum Out {
    Grpc(mpsc::UnboundedSender<Call>),
    Port(Arc<PortOut>),
}

#[derive(Debug, Default)]
enum Link {
    #[default]
    None,
    /// The member answered `Calls` with "unimplemented" at this time.
    Unsupported(Instant),
    /// Opening a stream failed at this time, so.
    Failed(Instant, Status),
    Open(Arc<Stream>),
}

/// One open stream: where calls go, and the callers waiting for their answers.
#[derive(Debug)]
struct Stream {
    /// Taken when the stream is closed here: the server then ends it once the calls in
    /// flight have their answers.
    calls: Mutex<Option<Out>>,
    /// A caller's answers: an early answer, then the answer after the commit.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<CallReply>>>,
    /// Calls whose early answers were taken since the last call went: the next call names
    /// them, and their answers after the commit need not come (`Call.settled`).
    settled: Mutex<Vec<u64>>,
    /// Where the member's durable notices go.
    durable: Arc<Durable>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// The token the stream was opened with (its calls carry it): a renewed token opens
    /// a new stream.
    token: Option<Arc<str>>,
    /// The TLS identity's generation it was opened under: a rotated certificate opens a
    /// new stream, on a new connection (as unary calls take new channels).
    tls: u64,
}

impl Stream {
    /// A stream whose calls go to `out`, opened under `token` and the TLS identity's
    /// generation `tls` (read before the opening: a rotation meanwhile replaces it).
    fn new(out: Out, durable: Arc<Durable>, token: Option<Arc<str>>, tls: u64) -> Arc<Stream> {
        Arc::new(Stream {
            calls: Mutex::new(Some(out)),
            waiting: Mutex::new(HashMap::new()),
            settled: Mutex::new(Vec::new()),
            durable,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            token,
            tls,
        })
    }

    /// Whether calls may go on this stream now.
    fn usable(&self, token: &Option<Arc<str>>) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.token == *token
            && self.tls == meridian_proto::tls::generation()
    }
}

impl Stream {
    /// No more calls on this stream (those in flight still get their answers).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.calls).take();
    }

    /// Takes the answers off `answers` to their callers until the stream ends; then
    /// fails every call still waiting.
    async fn read(self: Arc<Self>, mut answers: tonic::Streaming<CallReply>) {
        loop {
            match answers.message().await {
                Ok(Some(reply)) => self.take(reply),
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "calls stream broke");
                    break;
                }
            }
        }
        self.ended();
    }

    /// As [`read`](Self::read), from a calls port's connection; one that stays silent
    /// is asked whether the member is still there (a call naming no method, answered
    /// with an error), and closed if no answer comes.
    async fn read_port(self: Arc<Self>, mut answers: calls_port::Answers) {
        let mut pinged = false;
        loop {
            let wait = if pinged { PING_TIMEOUT } else { PING_EVERY };
            let read = meridian_proto::calls_wire::read_message::<CallReply, _>(&mut answers);
            match tokio::time::timeout(wait, read).await {
                Ok(Ok(Some(reply))) => {
                    pinged = false;
                    self.take(reply);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    debug!(error = %e, "calls port connection broke");
                    break;
                }
                Err(_) if pinged => {
                    debug!("calls port: no answer to a ping");
                    break;
                }
                Err(_) => {
                    pinged = true;
                    let ping = Call {
                        id: 0,
                        ..Default::default()
                    };
                    let out = lock(&self.calls).clone();
                    if let Some(Out::Port(out)) = out
                        && out.send(&ping).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
        self.ended();
    }

    /// Gives `reply` to its caller (a durable notice to the count).
    fn take(&self, reply: CallReply) {
        if let Some(call_reply::Reply::Durable(d)) = &reply.reply {
            self.durable
                .note(d.member, d.entries.iter().map(|p| (p.term, p.index)));
            return;
        }
        let waiter = if reply.early.is_some() {
            lock(&self.waiting).get(&reply.id).cloned()
        } else {
            lock(&self.waiting).remove(&reply.id)
        };
        if let Some(w) = waiter {
            let _ = w.send(reply);
        }
    }

    /// The stream ended: no more calls, and every call still waiting fails.
    fn ended(&self) {
        self.close();
        // Dropping the senders fails the callers (unavailable).
        lock(&self.waiting).clear();
    }

    /// Sends `call`: whether it went through a calls port; `None` if the stream is
    /// closed.
    async fn send(&self, call: Call) -> Option<bool> {
        let out = lock(&self.calls).clone();
        match out? {
            Out::Grpc(calls) => calls.send(call).ok().map(|()| false),
            Out::Port(port) => match port.send(&call).await {
                Ok(()) => Some(true),
                Err(e) => {
                    debug!(error = %e, "calls port: a call could not be written");
                    self.close();
                    None
                }
            },
        }
    }
}

impl Drop for Streams {
    /// The client gone: its streams end (once their calls in flight are answered).
    fn drop(&mut self) {
        for link in lock(&self.by_member).values() {
            if let Ok(link) = link.try_lock()
                && let Link::Open(s) = &*link
            {
                s.close();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streams {
    pub(super) fn new(client_key: [u8; CLIENT_KEY_LEN]) -> Self {
        Streams {
            by_member: Mutex::default(),
            client_key,
            durable: Arc::default(),
            early: AtomicBool::new(early_answers_by_default()),
            early_heard: AtomicU64::new(0),
            early_taken: AtomicU64::new(0),
            portless: Mutex::default(),
            port_calls: AtomicU64::new(0),
        }
    }

    /// Calls sent through members' calls ports so far.
    pub(super) fn port_calls(&self) -> u64 {
        self.port_calls.load(Ordering::Relaxed)
    }

    /// Whether calls ask for early answers (see [`Streams::set_early`]).
    pub(super) fn early(&self) -> bool {
        self.early.load(Ordering::Relaxed)
    }

    /// From now on, changes ask for early answers (`on`) or not.
    pub(super) fn set_early(&self, on: bool) {
        if self.early.swap(on, Ordering::Relaxed) == on {
            return;
        }
        // The streams open now carry no notices (or carry them for nothing): the next
        // calls open new ones (those in flight still get their answers).
        for link in lock(&self.by_member).values() {
            if let Ok(link) = link.try_lock()
                && let Link::Open(s) = &*link
            {
                s.close();
            }
        }
    }

    /// Early answers heard so far, and how many of them were taken (a majority held their
    /// entries before the answer after the commit came).
    pub(super) fn early_answers(&self) -> (u64, u64) {
        (
            self.early_heard.load(Ordering::Relaxed),
            self.early_taken.load(Ordering::Relaxed),
        )
    }

    /// Whether `member` has a usable stream open now (never waits).
    pub(super) fn is_open(&self, member: &str) -> bool {
        let token = meridian_proto::token::client_token();
        let slot = lock(&self.by_member).get(member).cloned();
        slot.is_some_and(|slot| {
            slot.try_lock()
                .is_ok_and(|link| matches!(&*link, Link::Open(s) if s.usable(&token)))
        })
    }

    /// Opens `member`'s stream if none is open (for its notices); `direct` as for
    /// [`call`](Self::call).
    pub(super) async fn open(
        &self,
        member: &str,
        client: &MetaServiceClient<Authed>,
        direct: bool,
    ) {
        if let Err(e) = self.stream(member, client, direct).await {
            debug!(%member, error = %e.message(), "no calls stream for durable notices");
        }
    }

    /// Sends `request` on `member`'s stream (opened through `client` if none is open),
    /// waiting at most `timeout` for its answer: the answer, and the leader it names
    /// (empty if none). `Ok(Err(request))` if the stream cannot carry it (the member has
    /// no `Calls`, or the request is too large): the caller makes the unary call. With
    /// `direct` (the member is dialed at its own address, not through a route), the
    /// stream may be a connection to its calls port.
    pub(super) async fn call<R: Streamed>(
        &self,
        member: &str,
        client: &MetaServiceClient<Authed>,
        direct: bool,
        request: R,
        timeout: Duration,
    ) -> Result<Result<(R::Answer, String), R>, Status> {
        // A call the stream cannot carry (over the message limit, with its id and
        // wrapping) would end the stream and every call on it: it goes alone, and fails
        // alone, as unary.
        if request.encoded_len() + 32 > meridian_proto::channels::META_MESSAGE_LIMIT {
            return Ok(Err(request));
        }
        let Some(stream) = self.stream(member, client, direct).await? else {
            return Ok(Err(request));
        };
        let id = stream.next_id.fetch_add(1, Ordering::Relaxed);
        let early = R::EARLY && self.early();
        let call = Call {
            id,
            call: Some(request.into_call()),
            settled: std::mem::take(&mut *lock(&stream.settled)),
            early,
            // This client counts the leader's copy from the answer itself, which the
            // leader sends once that copy is durable: one message where its answer and its
            // notice were two (the leader applies beside its sync either way).
            leader_notices: false,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&stream.waiting).insert(id, tx);
        let gone = || Status::unavailable(format!("{member}: the calls stream closed"));
        match stream.send(call).await {
            Some(through_port) => {
                if through_port {
                    self.port_calls.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                lock(&stream.waiting).remove(&id);
                return Err(gone());
            }
        }
        let reply = match tokio::time::timeout(timeout, self.answer(&mut rx)).await {
            Ok(Some(reply)) if reply.early.is_some() => {
                // Taken early: the answer after the commit is not waited for, and the
                // next call says so.
                lock(&stream.waiting).remove(&id);
                let mut settled = lock(&stream.settled);
                if settled.len() < SETTLED_MAX {
                    settled.push(id);
                }
                reply
            }
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(gone()),
            Err(_) => {
                lock(&stream.waiting).remove(&id);
                // The member may hang on the whole connection: the next call opens a new
                // stream (and fails fast if the connection is gone).
                stream.close();
                return Err(Status::deadline_exceeded(format!(
                    "{member}: no answer on the calls stream within {timeout:?}"
                )));
            }
        };
        match reply.reply {
            Some(call_reply::Reply::Error(e)) => Err(Status::new(Code::from(e.code), e.message)),
            Some(r) => R::answer(r)
                .map(|a| Ok((a, reply.leader)))
                .ok_or_else(|| Status::internal(format!("{member}: an answer to another call"))),
            None => Err(Status::internal(format!("{member}: an empty answer"))),
        }
    }

    /// The answer that holds on `rx`: an early answer once a majority holds its entry
    /// (`durable.rs`), else the answer after the commit; `None` if the stream closed.
    async fn answer(&self, rx: &mut mpsc::UnboundedReceiver<CallReply>) -> Option<CallReply> {
        let mut early: Option<(CallReply, oneshot::Receiver<()>, durable::Waiting)> = None;
        loop {
            let committed = async {
                let committed = match early.as_mut() {
                    Some((_, rx, _)) => rx.await.is_ok(),
                    None => false,
                };
                if !committed {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                reply = rx.recv() => match reply {
                    Some(reply) if reply.early.is_some() => {
                        if early.is_some() {
                            continue;
                        }
                        let e = reply.early.as_ref().expect("checked");
                        self.early_heard.fetch_add(1, Ordering::Relaxed);
                        match self.durable.expect(e) {
                            Expect::Committed => {
                                self.early_taken.fetch_add(1, Ordering::Relaxed);
                                return Some(reply);
                            }
                            Expect::Wait(rx, waiting) => early = Some((reply, rx, waiting)),
                            Expect::Never => {}
                        }
                    }
                    other => return other,
                },
                () = committed => {
                    self.early_taken.fetch_add(1, Ordering::Relaxed);
                    return early.map(|(reply, ..)| reply);
                }
            }
        }
    }

    /// `member`'s open stream, opened now if there is none; `None` if it has no `Calls`.
    async fn stream(
        &self,
        member: &str,
        client: &MetaServiceClient<Authed>,
        direct: bool,
    ) -> Result<Option<Arc<Stream>>, Status> {
        let token = meridian_proto::token::client_token();
        let slot = lock(&self.by_member)
            .entry(member.to_string())
            .or_default()
            .clone();
        let mut link = slot.lock().await;
        match &*link {
            Link::Open(s) if s.usable(&token) => return Ok(Some(s.clone())),
            Link::Open(s) => {
                // Replaced: its calls in flight still get their answers.
                s.close();
            }
            Link::Unsupported(at) if at.elapsed() < REPROBE => return Ok(None),
            Link::Failed(at, status) if at.elapsed() < FAILED_OPEN => {
                return Err(Status::unavailable(format!(
                    "{member}: the calls stream did not open: {}",
                    status.message()
                )));
            }
            _ => {}
        }
        let tls = meridian_proto::tls::generation();
        if direct && let Some(stream) = self.open_port(member, client, &token, tls).await {
            *link = Link::Open(stream.clone());
            return Ok(Some(stream));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let answers = match client.clone().calls(UnboundedReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                debug!(%member, "no calls stream there; unary calls");
                *link = Link::Unsupported(Instant::now());
                return Ok(None);
            }
            Err(s) => {
                *link = Link::Failed(Instant::now(), s.clone());
                return Err(s);
            }
        };
        // First, with early answers, this client's durable notices (a member without
        // them answers the call with an error, which nobody waits for).
        if let Some(subscribe) = self.subscription() {
            let _ = tx.send(subscribe);
        }
        let stream = Stream::new(Out::Grpc(tx), self.durable.clone(), token, tls);
        tokio::spawn(stream.clone().read(answers));
        *link = Link::Open(stream.clone());
        Ok(Some(stream))
    }

    /// With early answers, the call that opens a stream: this client's durable notices
    /// (a member without them answers it with an error, which nobody waits for).
    fn subscription(&self) -> Option<Call> {
        self.early().then(|| Call {
            id: 0,
            call: Some(call::Call::Notices(Notices {
                client_key: self.client_key.to_vec().into(),
                // The followers' copies: the leader's counts from its answer.
                led: false,
            })),
            early: false,
            leader_notices: false,
            settled: Vec::new(),
        })
    }

    /// A stream on a connection to `member`'s calls port; `None` if it has none (asked
    /// again after [`REPROBE`]) or it cannot be reached (the stream then opens on gRPC).
    /// The port is asked for each time (a member restarted has another).
    async fn open_port(
        &self,
        member: &str,
        client: &MetaServiceClient<Authed>,
        token: &Option<Arc<str>>,
        tls: u64,
    ) -> Option<Arc<Stream>> {
        if lock(&self.portless)
            .get(member)
            .is_some_and(|at| at.elapsed() < REPROBE)
        {
            return None;
        }
        let port = match client.clone().calls_port(CallsPortRequest {}).await {
            Ok(r) => u16::try_from(r.into_inner().port).unwrap_or(0),
            // Older than the port; any other failure, the stream's opening meets too.
            Err(s) if s.code() == Code::Unimplemented => 0,
            Err(_) => return None,
        };
        if port == 0 {
            lock(&self.portless).insert(member.into(), Instant::now());
            return None;
        }
        let address = calls_port::address(member, port)?;
        let (answers, out) = match calls_port::dial(&address, token.as_deref()).await {
            Ok(opened) => opened,
            Err(e) => {
                // Filtered, perhaps: gRPC until it is tried again, without a connect's
                // wait at every stream's opening.
                debug!(%member, %address, error = %e, "calls port not reached; gRPC");
                lock(&self.portless).insert(member.into(), Instant::now());
                return None;
            }
        };
        let out = Arc::new(out);
        if let Some(subscribe) = self.subscription()
            && out.send(&subscribe).await.is_err()
        {
            return None;
        }
        let stream = Stream::new(Out::Port(out), self.durable.clone(), token.clone(), tls);
        tokio::spawn(stream.clone().read_port(answers));
        Some(stream)
    }
}
