//! The one place that builds gRPC channels and servers: windows, frame sizes, timeouts,
//! keep-alives and TLS (when the process has a TLS identity, [`crate::tls`]) are set here for every link.
//! One lazily connected channel per peer address, shared by every call to that peer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// HTTP/2 flow-control window per stream. h2's default (64 KiB) makes a 4 MiB block wait
/// for dozens of window updates; a window larger than a block streams it in one go.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection, shared by its concurrent streams.
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Largest HTTP/2 frame a peer may send us. h2's default (16 KiB) cuts a 4 MiB block's
/// reply into 256 frames, each its own write on the sender's side.
pub const MAX_FRAME: u32 = 1 << 20;

/// How often each side of an idle or busy connection pings the other (HTTP/2 PING): a
/// peer that went away without a word (a partition, a frozen host) is found, its
/// connection closed (a channel reconnects on its next call; a server frees what the
/// client held) instead of calls waiting on it for the OS's TCP timeouts.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is given up.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keep-alive on every connection, under the pings (for a peer whose HTTP/2 layer
/// never answers at all).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Largest message the metaservers' services take and send (a snapshot chunk, a volume
/// image part, a batch of records, a step of a volume copy): one limit, for every client
/// and server of them.
pub const META_MESSAGE_LIMIT: usize = 64 << 20;

/// A channel whose requests carry this process's volume access token, if it has one
/// ([`crate::token::install_client_token`]; servers have none).
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Interceptor>;

/// The interceptor of [`Authed`] channels.
pub type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

fn add_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    crate::token::authorize(&mut r);
    Ok(r)
}

/// `ch`, with this process's volume access token on every request.
pub fn authed(ch: Channel) -> Authed {
    Authed::new(ch, add_token as Interceptor)
}

/// A client of a metaserver's metadata service over `ch`, with its message limits and
/// this process's token.
pub fn meta_client(ch: Channel) -> crate::pb::meta::meta_service_client::MetaServiceClient<Authed> {
    crate::pb::meta::meta_service_client::MetaServiceClient::new(authed(ch))
        .max_decoding_message_size(META_MESSAGE_LIMIT)
        .max_encoding_message_size(META_MESSAGE_LIMIT)
}

/// A client of a metaserver's Raft service over `ch`, with its message limits.
pub fn raft_client(
    ch: Channel,
) -> crate::pb::meta::raft_service_client::RaftServiceClient<Channel> {
    crate::pb::meta::raft_service_client::RaftServiceClient::new(ch)
        .max_decoding_message_size(META_MESSAGE_LIMIT)
        .max_encoding_message_size(META_MESSAGE_LIMIT)
}

/// An endpoint for `address` (`host:port`) with the transport's settings, over TLS when
/// the process has an identity.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let tls = crate::tls::current();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let e = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    match tls {
        Some(t) => e.tls_config(t.client_config()),
        None => Ok(e),
    }
}

/// Whether this process speaks plaintext (no TLS identity installed).
pub fn tls_off() -> bool {
    crate::tls::current().is_none()
}

/// A channel to `address`, connected now (for one-off tools: the admin CLI, tests).
pub async fn connect(address: &str) -> Result<Channel, String> {
    let connected = match endpoint(address) {
        Ok(e) => {
            e.connect_timeout(Timeouts::default().connect)
                .connect()
                .await
        }
        Err(e) => Err(e),
    };
    connected.map_err(|e| {
        let mut text = format!("cannot reach {address}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        with_hint(text)
    })
}

/// `error`, with a hint when it looks like what a plaintext call to a TLS server gets (the
/// server closes the connection at the first bytes, which are not a TLS handshake).
pub fn with_hint(error: String) -> String {
    let looks_like = [
        "broken pipe",
        "connection reset",
        "transport error",
        "tcp connect error",
    ]
    .iter()
    .any(|s| error.contains(s));
    if tls_off() && looks_like {
        format!("{error} (this process speaks plaintext; a deployment with TLS needs --tls DIR)")
    } else {
        error
    }
}

/// A server builder with the transport's settings, and clients' fair shares of `limits`
/// ([`crate::fair`]). Serve it with [`incoming`]: that is where TLS is (with a client
/// certificate from the deployment's CA required) when the process has an identity.
pub fn server(
    limits: crate::fair::Limits,
) -> tonic::transport::Server<
    tower::layer::util::Stack<crate::fair::FairLayer, tower::layer::util::Identity>,
> {
    server_sharing(crate::fair::FairLayer::new(limits))
}

/// As [`server`], with the shares of `fair` (which a server's other ports admit their
/// calls with too).
pub fn server_sharing(
    fair: crate::fair::FairLayer,
) -> tonic::transport::Server<
    tower::layer::util::Stack<crate::fair::FairLayer, tower::layer::util::Identity>,
> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(PING_EVERY))
        .http2_keepalive_timeout(Some(PING_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(Some(MAX_FRAME))
        .layer(fair)
}

pub use crate::tls_incoming::incoming;

/// Timeouts for calls to peers.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long to wait for a TCP connection.
    pub connect: Duration,
    /// How long one whole call may take.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(60),
        }
    }
}

/// A cache of channels keyed by `host:port`.
#[derive(Debug, Default)]
pub struct ChannelPool {
    timeouts: Timeouts,
    /// The channels, and the TLS identity generation they were made under.
    channels: Mutex<(u64, HashMap<String, Channel>)>,
    /// Addresses dialled through another address (a gateway, tunnel or fault proxy).
    routes: HashMap<String, String>,
}

impl ChannelPool {
    /// An empty pool whose channels use these timeouts.
    pub fn new(timeouts: Timeouts) -> Self {
        ChannelPool {
            timeouts,
            channels: Mutex::default(),
            routes: HashMap::new(),
        }
    }

    /// Dials each key of `routes` at its value instead.
    pub fn with_routes(mut self, routes: HashMap<String, String>) -> Self {
        self.routes = routes;
        self
    }

    /// Whether `address` is dialed through a route.
    pub fn routes(&self, address: &str) -> bool {
        self.routes.contains_key(address)
    }

    /// The channel to `address`, created (not yet connected) on first use.
    pub fn get(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut guard = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, channels) = &mut *guard;
        if *generation != crate::tls::generation() {
            // Certificates rotated: new connections present the new ones (calls under
            // way on the old channels finish on them).
            *generation = crate::tls::generation();
            channels.clear();
        }
        if let Some(ch) = channels.get(address) {
            return Ok(ch.clone());
        }
        let dial = self.routes.get(address).map_or(address, String::as_str);
        let ch = endpoint(dial)?
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.request)
            .connect_lazy();
        channels.insert(address.to_string(), ch.clone());
        Ok(ch)
    }
}
