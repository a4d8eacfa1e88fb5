//! The `Calls` stream: a client's Mutate, Query and WriteBack calls on one long-lived
//! HTTP/2 stream, each answered as its unary call would be.
//!
//! A unary gRPC call sends HEADERS and then DATA, and its answer DATA and then trailers;
//! on a busy host each pair went out as two writes 130–230 µs apart, on every change a
//! mount makes durable (docs/PERFORMANCE.md, twenty-fourth round). On the stream a call
//! and its answer are one DATA frame each. Every call runs the unary handler, with the
//! stream's opening metadata (its token) and connection facts (its TLS peer): the same
//! checks, the same answers.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use meridian_proto::fair::Admission;
use meridian_proto::pb::meta::meta_service_server::MetaService;
use meridian_proto::pb::meta::{Call, CallError, CallReply, Durable, LogPlace, call, call_reply};
use meridian_proto::{CLIENT_KEY_LEN, client_id_of};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status, Streaming};
use tracing::debug;

use crate::service::{EarlySink, MetaApi, MetaNode};

#[path = "calls_settled.rs"]
mod settled;
pub(crate) use settled::Settled;

/// The stream's path, naming its calls in a refusal.
const CALLS_PATH: &str = "/meridian.meta.v1.MetaService/Calls";

/// Calls of one stream running at once: past it the stream is not read (HTTP/2 flow
/// control holds the client back, as for unary calls waiting to be read). Each call
/// waits for the client's share besides.
const RUNNING_MAX: usize = 256;
/// Answers waiting for the client to take them.
const ANSWERS_QUEUED: usize = RUNNING_MAX;

/// The answers of a `Calls` stream.
pub type CallAnswers = ReceiverStream<Result<CallReply, Status>>;

/// Serves the calls of `request`'s stream, each on a task of its own (calls are
/// independent: a slow write-back does not hold up a query behind it).
pub(crate) fn serve(
    node: Arc<MetaNode>,
    request: Request<Streaming<Call>>,
) -> Response<CallAnswers> {
    let (metadata, extensions, calls) = request.into_parts();
    Response::new(ReceiverStream::new(serve_parts(
        node, metadata, extensions, calls,
    )))
}

/// Serves `calls`, made under `metadata` (the token) and `extensions` (the connection's
/// facts and the client's share) as a stream's opening request is: the answers.
pub(crate) fn serve_parts(
    node: Arc<MetaNode>,
    metadata: MetadataMap,
    extensions: Extensions,
    mut calls: impl Stream<Item = Result<Call, Status>> + Send + Unpin + 'static,
) -> mpsc::Receiver<Result<CallReply, Status>> {
    // Each call waits for the client's share as a unary call would (`fair.rs`).
    let admission = extensions.get::<Admission>().cloned();
    let mut stopping = node.stopping.subscribe();
    let (tx, rx) = mpsc::channel(ANSWERS_QUEUED);
    let running = Arc::new(Semaphore::new(RUNNING_MAX));
    // Set when the client's side breaks: its calls still running are dropped, as a
    // unary call's handler is when its client goes.
    let (gone_tx, gone) = watch::channel(false);
    // The answers after the commit of calls answered early, held a while.
    let settled = Arc::new(Settled::default());
    tokio::spawn(settled.clone().run(tx.clone()));
    tokio::spawn(async move {
        // One subscription to durable notices per stream: a client asking again is
        // answered as for a call naming no method.
        let mut subscribed = false;
        loop {
            let Ok(permit) = running.clone().acquire_owned().await else {
                break;
            };
            let next = tokio::select! {
                next = calls.next() => next,
                // The server is stopping: no more calls; those running answer, then the
                // stream ends and the client opens its next one elsewhere.
                _ = stopping.wait_for(|s| *s) => break,
            };
            let c = match next {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    debug!(error = %e, "calls stream: the client's side broke");
                    gone_tx.send_replace(true);
                    break;
                }
                None => break,
            };
            settled.taken(&c.settled);
            let mut gone = gone.clone();
            // The notices of the client holding the key (its id alone is public: the
            // change feed shows it to other clients).
            if let Some(call::Call::Notices(n)) = &c.call
                && !subscribed
                && let Ok(key) = <&[u8; CLIENT_KEY_LEN]>::try_from(n.client_key.as_ref())
            {
                subscribed = true;
                drop(permit);
                let client = client_id_of(key);
                let led = n.led;
                tokio::spawn(notices(node.clone(), c.id, client, led, tx.clone(), gone));
                continue;
            }
            let api = MetaApi(node.clone());
            let (tx, metadata, mut extensions) = (tx.clone(), metadata.clone(), extensions.clone());
            if c.early {
                extensions.insert(EarlySink {
                    id: c.id,
                    answers: tx.clone(),
                    leader_notices: c.leader_notices,
                    settled: settled.clone(),
                });
            }
            let admission = admission.clone();
            let settled = settled.clone();
            tokio::spawn(async move {
                let id = c.id;
                let run = async move {
                    match c.call {
                        Some(call::Call::Mutate(m)) => answer(
                            api.mutate(Request::from_parts(metadata, extensions, m))
                                .await,
                            call_reply::Reply::Mutate,
                        ),
                        Some(call::Call::Query(q)) => answer(
                            api.query(Request::from_parts(metadata, extensions, q))
                                .await,
                            call_reply::Reply::Query,
                        ),
                        Some(call::Call::WriteBack(w)) => answer(
                            api.write_back(Request::from_parts(metadata, extensions, w))
                                .await,
                            call_reply::Reply::WriteBack,
                        ),
                        // Taken above, once, with a key.
                        Some(call::Call::Notices(n)) => {
                            let why = if n.client_key.len() == CLIENT_KEY_LEN {
                                "one notices subscription per stream"
                            } else {
                                "a notices subscription names the client's 32-byte key"
                            };
                            (
                                call_reply::Reply::Error(error(&Status::invalid_argument(why))),
                                String::new(),
                            )
                        }
                        None => (
                            call_reply::Reply::Error(error(&Status::invalid_argument(
                                "a call names no method",
                            ))),
                            String::new(),
                        ),
                    }
                };
                let admitted = async {
                    match &admission {
                        Some(a) => a
                            .run(CALLS_PATH, true, run)
                            .await
                            .unwrap_or_else(|refused| {
                                (call_reply::Reply::Error(error(&refused)), String::new())
                            }),
                        None => run.await,
                    }
                };
                // The loop over (the stream ended or the server stopping, the client
                // still there): the call runs to its answer.
                let cancelled = async move {
                    if gone.wait_for(|g| *g).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                let reply = tokio::select! {
                    reply = admitted => reply,
                    () = cancelled => return,
                };
                drop(permit);
                let (reply, leader) = reply;
                let reply = CallReply {
                    id,
                    reply: Some(reply),
                    leader,
                    early: None,
                };
                // Held if answered early; the client gone: nobody to answer.
                if let Some(reply) = settled.finished(reply) {
                    let _ = tx.send(Ok(reply)).await;
                }
            });
        }
        settled.close();
    });
    rx
}

/// A `Notices` call: tells the stream which entries of `client`'s changes this member
/// makes durable as a follower (with `led`, as their leader too: `raft/notices.rs`), until
/// the client goes. A notice that finds the stream's answers full is dropped (the client
/// takes the leader's answer).
async fn notices(
    node: Arc<MetaNode>,
    id: u64,
    client: u64,
    led: bool,
    answers: mpsc::Sender<Result<CallReply, Status>>,
    mut gone: watch::Receiver<bool>,
) {
    let member = node.id;
    let mut stopping = node.stopping.subscribe();
    let to = answers.clone();
    let _subscribed = node.shared.notices.subscribe(
        client,
        led,
        Box::new(move |places| {
            let reply = CallReply {
                id,
                reply: Some(call_reply::Reply::Durable(Durable {
                    member,
                    entries: places
                        .iter()
                        .map(|&(term, index)| LogPlace { term, index })
                        .collect(),
                })),
                leader: String::new(),
                early: None,
            };
            !matches!(to.try_send(Ok(reply)), Err(TrySendError::Closed(_)))
        }),
    );
    tokio::select! {
        () = answers.closed() => {}
        _ = gone.wait_for(|g| *g) => {}
        // The stream ends with the server (its answers' senders must all go).
        _ = stopping.wait_for(|s| *s) => {}
    }
}

/// A unary handler's outcome as a stream's reply, and the leader it names if any.
fn answer<T>(
    outcome: Result<Response<T>, Status>,
    wrap: impl FnOnce(T) -> call_reply::Reply,
) -> (call_reply::Reply, String) {
    match outcome {
        Ok(r) => {
            let leader = r
                .metadata()
                .get(meridian_proto::LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (wrap(r.into_inner()), leader)
        }
        Err(s) => (call_reply::Reply::Error(error(&s)), String::new()),
    }
}

fn error(s: &Status) -> CallError {
    CallError {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}
