//! Fair shares of a server: at most `total` requests handled at once, at most
//! `per_client` of them for any one client, and (if set) at most `per_client_rate` started
//! per second by one client (one that would wait for its turn longer than the request
//! timeout is told RESOURCE_EXHAUSTED at once), so that one noisy client (a runaway job, a
//! mount in a retry loop) waits in its own queue while the others go on. A client is its
//! certificate (on TLS) or its connection (plaintext); other servers of the deployment
//! (metaserver and chunkserver certificates) are not limited, since Raft, forwarding and
//! replication must never queue behind clients.
//!
//! Every request passes here, so this is also where a connection whose certificate was
//! revoked after it was made is refused ([`crate::tls::REVOKED_FILE`]).
//!
//! A request waits for its share before its handler runs; nothing is refused. The share
//! is held until the handler answers: for a streamed reply, until the stream starts. A
//! client's request that has not been answered `timeout` after it arrived (waiting for
//! its share included) is answered DEADLINE_EXCEEDED, and its handler dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::codegen::http;

use crate::tls_incoming::ConnInfo;

/// How many requests a server handles at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// In all, from clients.
    pub total: usize,
    /// From one client.
    pub per_client: usize,
    /// How long a client's request may take, from its arrival to its answer (for a
    /// streamed reply, to the stream's start). Long-polls wait 10 s at most.
    pub timeout: Duration,
    /// Requests one client may start per second (0: no limit): more are held back, not
    /// refused. A second's worth may come at once.
    pub per_client_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total: 1024,
            per_client: 64,
            timeout: Duration::from_secs(60),
            per_client_rate: 0,
        }
    }
}

/// Who a request counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The BLAKE3 hash of the client's certificate.
    Cert([u8; 32]),
    /// A plaintext connection.
    Conn(SocketAddr),
}

/// The Raft service's paths, which no request timeout cuts.
const RAFT_PATH: &str = "/meridian.meta.v1.RaftService/";

/// Clients kept before idle ones are forgotten.
const KEEP_CLIENTS: usize = 4096;

/// The tower layer that gives each client its share (`Server::layer`).
#[derive(Clone)]
pub struct FairLayer {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    total: Arc<Semaphore>,
    clients: Mutex<HashMap<ClientKey, Arc<Share>>>,
}

/// One client's share: its requests running, and when its next request may start.
struct Share {
    running: Arc<Semaphore>,
    /// The theoretical arrival time of its next request at the rate allowed (GCRA).
    next: Mutex<Option<tokio::time::Instant>>,
}

impl Share {
    /// How long a request arriving now waits to keep the client within `rate` per second
    /// (a second's worth may come at once).
    /// `None`, taking no place, when that is longer than `patience` (it would time out
    /// waiting).
    fn pace(&self, rate: u32, patience: Duration) -> Option<Duration> {
        if rate == 0 {
            return Some(Duration::ZERO);
        }
        let interval = Duration::from_secs(1) / rate;
        let now = tokio::time::Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let due = next.map_or(now, |n| n.max(now));
        let wait = due.saturating_duration_since(now + Duration::from_secs(1));
        if wait >= patience {
            return None;
        }
        *next = Some(due + interval);
        Some(wait)
    }
}

impl FairLayer {
    /// Shares of `limits` (each at least 1).
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            total: limits.total.max(1),
            per_client: limits.per_client.max(1),
            timeout: limits.timeout.max(Duration::from_millis(1)),
            per_client_rate: limits.per_client_rate,
        };
        FairLayer {
            shared: Arc::new(Shared {
                limits,
                total: Arc::new(Semaphore::new(limits.total)),
                clients: Mutex::default(),
            }),
        }
    }
}

impl FairLayer {
    /// What the layer admits a request of the connection `info` with: for the calls of a
    /// connection that does not go through the layer (the metaserver's calls port).
    pub fn admission(&self, info: &ConnInfo) -> Admission {
        self.shared.admission(Some(info))
    }
}

impl Shared {
    fn admission(&self, info: Option<&ConnInfo>) -> Admission {
        Admission {
            queue: info
                .and_then(|c| c.client.clone())
                .map(|key| self.queue_of(key)),
            total: self.total.clone(),
            limit: self.limits.timeout,
            rate: self.limits.per_client_rate,
            fingerprint: info.and_then(|c| c.fingerprint),
        }
    }

    fn queue_of(&self, key: ClientKey) -> Arc<Share> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= KEEP_CLIENTS && !clients.contains_key(&key) {
            // A share in use is held by its requests too. A client forgotten here starts
            // afresh: at most a second's worth more of its requests go at once.
            clients.retain(|_, q| Arc::strong_count(q) > 1);
        }
        clients
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Share {
                    running: Arc::new(Semaphore::new(self.limits.per_client)),
                    next: Mutex::new(None),
                })
            })
            .clone()
    }
}

impl<S> tower::Layer<S> for FairLayer {
    type Service = Fair<S>;

    fn layer(&self, inner: S) -> Fair<S> {
        Fair {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service behind [`FairLayer`].
#[derive(Clone)]
pub struct Fair<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Fair<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service polled ready is this one; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let info = request.extensions().get::<ConnInfo>();
        // A certificate revoked since its connection was made: nothing more from it.
        if let Some(fp) = info.and_then(|c| c.fingerprint)
            && crate::tls::is_revoked(&fp)
        {
            metrics::counter!("meridian_tls_revoked_refused_total").increment(1);
            return Box::pin(async move {
                Ok(tonic::Status::unauthenticated(format!(
                    "certificate {} is revoked",
                    hex::encode(fp)
                ))
                .into_http())
            });
        }
        let admission = self.shared.admission(info);
        // Cheap to keep (shared bytes): for the Raft exemption and a timeout's message.
        let uri = request.uri().clone();
        // Calls that arrive inside this request (a stream of them) are admitted alike.
        request.extensions_mut().insert(admission.clone());
        Box::pin(async move {
            // Raft is for metaservers only (their certificates are exempt from all this; on
            // plaintext, a snapshot's transfer may take as long as it takes).
            let timed = !uri.path().starts_with(RAFT_PATH);
            match admission.run(uri.path(), timed, inner.call(request)).await {
                Ok(answer) => answer,
                Err(refused) => Ok(refused.into_http()),
            }
        })
    }
}

/// A client's share of the server, as a request's extension: what the layer admits every
/// request with, for the calls a request carries inside it (the metaserver's `Calls`
/// stream) to be admitted one by one as requests are.
#[derive(Clone)]
pub struct Admission {
    /// The client's share; `None`: not limited (another server of the deployment).
    queue: Option<Arc<Share>>,
    total: Arc<Semaphore>,
    limit: Duration,
    rate: u32,
    /// The client's certificate's, if it has one: revoked later, its calls are refused.
    fingerprint: Option<[u8; 32]>,
}

impl Admission {
    /// Runs `call` (named `what`) once the client has its share, holding it until `call`
    /// ends: the client's rate and number of calls at once, the server's total, and
    /// (if `timed`) the request timeout from now. Refused with the status a request gets:
    /// RESOURCE_EXHAUSTED over the rate, DEADLINE_EXCEEDED not answered in time.
    pub async fn run<T>(
        &self,
        what: &str,
        timed: bool,
        call: impl Future<Output = T>,
    ) -> Result<T, tonic::Status> {
        if let Some(fp) = &self.fingerprint
            && crate::tls::is_revoked(fp)
        {
            metrics::counter!("meridian_tls_revoked_refused_total").increment(1);
            return Err(tonic::Status::unauthenticated(format!(
                "certificate {} is revoked",
                hex::encode(fp)
            )));
        }
        let Some(queue) = &self.queue else {
            return Ok(call.await);
        };
        let (limit, rate) = (self.limit, self.rate);
        let served = async move {
            // Its own queue first: a client over its share does not hold a place in all.
            let waiting = Gauge::up("meridian_client_requests_waiting");
            let Some(hold) = queue.pace(rate, limit) else {
                // Over its rate for longer than it may wait: told now, holding no place.
                metrics::counter!("meridian_client_requests_over_rate_total").increment(1);
                return Err(tonic::Status::resource_exhausted(format!(
                    "over this server's rate of {rate} requests a second per client"
                )));
            };
            if !hold.is_zero() {
                metrics::counter!("meridian_client_requests_paced_total").increment(1);
                tokio::time::sleep(hold).await;
            }
            let shares = (
                queue.running.clone().acquire_owned().await.ok(),
                self.total.clone().acquire_owned().await.ok(),
            );
            drop(waiting);
            let _running = Gauge::up("meridian_client_requests_running");
            let answer = call.await;
            drop(shares);
            Ok(answer)
        };
        if !timed {
            return served.await;
        }
        match tokio::time::timeout(limit, served).await {
            Ok(answer) => answer,
            Err(_) => {
                metrics::counter!("meridian_client_requests_timed_out_total").increment(1);
                Err(tonic::Status::deadline_exceeded(format!(
                    "{what}: not answered within {} ms (this server's request timeout)",
                    limit.as_millis()
                )))
            }
        }
    }
}

/// A gauge raised for as long as this lives (a request given up lowers it too).
struct Gauge(&'static str);

impl Gauge {
    fn up(name: &'static str) -> Gauge {
        metrics::gauge!(name).increment(1.0);
        Gauge(name)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_a_seconds_worth_at_once_then_its_rate() {
        let share = Share {
            running: Arc::new(Semaphore::new(1)),
            next: Mutex::new(None),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _in = rt.enter();
        let patience = Duration::from_secs(60);
        assert_eq!(
            share.pace(0, patience),
            Some(Duration::ZERO),
            "no rate: never held"
        );
        let waits: Vec<Duration> = (0..13).map(|_| share.pace(10, patience).unwrap()).collect();
        assert!(waits[..11].iter().all(|w| w.is_zero()), "{waits:?}");
        // Then a tenth of a second apart.
        assert!(waits[11] > Duration::from_millis(50), "{waits:?}");
        assert!(
            waits[12] > waits[11] + Duration::from_millis(50),
            "{waits:?}"
        );
        // A request that would wait longer than it may is refused, and takes no place.
        assert_eq!(share.pace(10, Duration::from_millis(150)), None);
        let next = share.pace(10, patience).unwrap();
        assert!(
            next < waits[12] + Duration::from_millis(150),
            "{next:?} {waits:?}"
        );
    }
}
