//! `meridian`: one binary for every role.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use meridian_chunkserver::ChunkConfig;
use meridian_metaserver::MetaConfig;

mod admin;
mod csi;
mod dev;
mod fsck;
mod mount;
mod proxy;

/// Meridian: a replicated filesystem that spans regions.
#[derive(Parser)]
#[command(name = "meridian", version, about, long_about = None)]
struct Cli {
    /// Worker threads of the async runtime (default: one per core; a mount, one per four
    /// cores). Servers that share a machine with others do better with few: every extra
    /// worker costs wake-ups.
    #[arg(long, global = true, env = "MERIDIAN_RUNTIME_THREADS")]
    runtime_threads: Option<usize>,
    /// Mutual TLS on every link: a folder with the deployment CA (ca.pem) and this
    /// process's certificate and key (cert.pem, key.pem), as `meridian admin certs issue`
    /// writes it. Without it, the process speaks plaintext.
    #[arg(long, global = true, env = "MERIDIAN_TLS", value_name = "DIR")]
    tls: Option<PathBuf>,
    /// Let a metaserver or chunkserver serve without --tls: plaintext, anyone who reaches
    /// its port can do anything. Only for tests and `meridian dev`.
    #[arg(long, global = true, env = "MERIDIAN_PLAINTEXT")]
    plaintext: bool,
    /// Servers: check volume access tokens against these keys (`meridian admin token
    /// key` writes the file). Clients with a client certificate then need a token, and
    /// reach only the volumes it grants. Needs --tls.
    #[arg(long, global = true, env = "MERIDIAN_TOKEN_KEY", value_name = "FILE")]
    token_key: Option<PathBuf>,
    /// Clients: send this volume access token (a file holding it, from `meridian admin
    /// token issue`) with every call. MERIDIAN_TOKEN may hold the token itself.
    #[arg(long, global = true, env = "MERIDIAN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a chunkserver: stores blocks on local disk and replicates them in its region.
    Chunk(Box<ChunkArgs>),
    /// Run a metaserver: one member of the region's Raft group holding the namespace.
    Meta(Box<MetaArgs>),
    /// Start a whole region on loopback (3 metaservers, 3 chunkservers) and mount it.
    Dev(dev::DevArgs),
    /// Mount a volume through FUSE (foreground; Ctrl-C unmounts).
    Mount(Box<mount::MountArgs>),
    /// A TCP fault proxy for links between regions: delay, cut and heal at run time.
    Proxy(proxy::ProxyArgs),
    /// Serve the Container Storage Interface (Kubernetes volumes) on a unix socket.
    Csi(Box<csi::CsiArgs>),
    /// Start and stop the CSI node plugin's mounts, in a process (and container) of
    /// their own, so that restarting the plugin leaves them alone.
    CsiMounter(csi::mounter::MounterArgs),
    /// Inspect and administer a running cluster.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

/// Every field of the chunkserver's config file, overridable here.
#[derive(Args)]
struct ChunkArgs {
    /// Config file (TOML); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node id, unique in the region (1 or more).
    #[arg(long)]
    id: Option<u64>,
    /// Data folder for blocks and state.
    #[arg(long)]
    data: Option<PathBuf>,
    /// gRPC listen address (port 0: pick one; the bound address is printed).
    #[arg(long)]
    listen: Option<String>,
    /// Failure domain (zone) of this node.
    #[arg(long)]
    zone: Option<String>,
    /// Region id.
    #[arg(long)]
    region: Option<u16>,
    /// Metaserver addresses (comma-separated): register, heartbeat, and get the cluster map there.
    #[arg(long, value_delimiter = ',')]
    meta: Option<Vec<String>>,
    /// Address peers and clients use for this node (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Heartbeat interval to the metaservers, in milliseconds.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Cluster map file (TOML), re-read when it changes (instead of --meta).
    #[arg(long)]
    cluster_map: Option<PathBuf>,
    /// How often to check the cluster map file, in milliseconds.
    #[arg(long)]
    map_poll_ms: Option<u64>,
    /// Bytes this node may use (default: the size of the data filesystem).
    #[arg(long)]
    capacity: Option<u64>,
    /// Largest block accepted, in bytes.
    #[arg(long)]
    max_block_len: Option<u32>,
    /// Copies a put needs when the client does not say (W).
    #[arg(long)]
    default_min_copies: Option<u32>,
    /// Timeout for connecting to a peer, in milliseconds.
    #[arg(long)]
    peer_connect_timeout_ms: Option<u64>,
    /// Timeout for one forwarded put, in milliseconds.
    #[arg(long)]
    peer_request_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Another region of this deployment: REGION=META_ADDR[,META_ADDR...] (repeatable).
    #[arg(long = "peer")]
    peers: Vec<meridian_proto::PeerRegion>,
    /// Copies of a block whose put does not say (the volumes' usual R).
    #[arg(long)]
    default_replicas: Option<u32>,
    /// Time between repair passes, in milliseconds.
    #[arg(long)]
    repair_interval_ms: Option<u64>,
    /// Bytes per second repair may push (0: unlimited).
    #[arg(long)]
    repair_bytes_per_sec: Option<u64>,
    /// Time between scrub passes, in milliseconds.
    #[arg(long)]
    scrub_interval_ms: Option<u64>,
    /// Bytes per second the scrub may re-hash (0: unlimited).
    #[arg(long)]
    scrub_bytes_per_sec: Option<u64>,
    /// Time between garbage collection passes, in milliseconds.
    #[arg(long)]
    gc_interval_ms: Option<u64>,
    /// How long an unreferenced block waits before it is condemned, and again before it is
    /// deleted, in milliseconds (longer than any upload takes to commit).
    #[arg(long)]
    gc_grace_ms: Option<u64>,
    /// How long a small fsync'd write may stay staged in the metadata before its block's
    /// first home puts it to chunkservers itself (its writer died), in milliseconds.
    #[arg(long)]
    adopt_staged_after_ms: Option<u64>,
    /// Largest size of a pack of small blocks, in MiB (0: none; each small block is then
    /// fsync'd as a file of its own).
    #[arg(long, alias = "journal-segment-mib")]
    pack_mib: Option<u64>,
    /// How long a replica waits before shipping a block of a volume that lives in other
    /// regions itself, in milliseconds (the coordinator normally has by then).
    #[arg(long)]
    ship_replica_delay_ms: Option<u64>,
    /// Serve range reads on a second port beside gRPC (true or false; default true).
    #[arg(long)]
    range_port: Option<bool>,
    /// Take puts of small blocks on the range port too (true or false; default true).
    #[arg(long)]
    put_port: Option<bool>,
    /// Where the range port listens (IP:PORT; default: the gRPC listen IP, any port).
    #[arg(long)]
    range_listen: Option<String>,
    /// Dial another region's chunkserver through another address: ADDR=VIA (repeatable;
    /// a gateway, a tunnel, a fault proxy).
    #[arg(long = "route", value_parser = parse_pair)]
    routes: Vec<(String, String)>,
    #[command(flatten)]
    clients: ClientLimitArgs,
}

/// Clients' shares of a server (both metaservers and chunkservers take these; their
/// config files name the same fields).
#[derive(Args)]
struct ClientLimitArgs {
    /// Client requests handled at once, in all (default 1024).
    #[arg(long)]
    max_requests: Option<usize>,
    /// Requests of one client handled at once (default 64); more wait in its own queue.
    #[arg(long)]
    max_requests_per_client: Option<usize>,
    /// How long a client's request may take, its wait for a share included, before it is
    /// answered DEADLINE_EXCEEDED (default 60000).
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Requests one client may start per second (default 0: no limit); more are held back.
    #[arg(long)]
    max_requests_per_client_per_sec: Option<u32>,
}

/// Sets the config fields `args` (a [`ClientLimitArgs`]) gives on config `c`.
macro_rules! client_limits {
    ($args:expr, $c:expr) => {{
        let a = $args;
        if let Some(v) = a.max_requests {
            $c.max_requests = v;
        }
        if let Some(v) = a.max_requests_per_client {
            $c.max_requests_per_client = v;
        }
        if let Some(v) = a.request_timeout_ms {
            $c.request_timeout_ms = v;
        }
        if let Some(v) = a.max_requests_per_client_per_sec {
            $c.max_requests_per_client_per_sec = v;
        }
    }};
}

/// Parses `A=B` (a route ADDR=VIA, a proxy forward LISTEN=TARGET).
pub(crate) fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("expected ADDR=ADDR, not {s:?}"))
}

impl ChunkArgs {
    fn into_config(self) -> Result<ChunkConfig> {
        let mut c = match &self.config {
            Some(path) => ChunkConfig::load(path).map_err(anyhow::Error::msg)?,
            None => ChunkConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = Some(v); })* };
        }
        set!(
            id,
            data,
            listen,
            zone,
            region,
            map_poll_ms,
            max_block_len,
            default_min_copies,
            peer_connect_timeout_ms,
            peer_request_timeout_ms,
            meta,
            heartbeat_ms,
            default_replicas,
            repair_interval_ms,
            repair_bytes_per_sec,
            scrub_interval_ms,
            scrub_bytes_per_sec,
            gc_interval_ms,
            gc_grace_ms,
            adopt_staged_after_ms,
            pack_mib,
            ship_replica_delay_ms,
            range_port,
            put_port
        );
        client_limits!(self.clients, c);
        set_opt!(
            cluster_map,
            capacity,
            metrics_listen,
            advertise,
            range_listen
        );
        if !self.peers.is_empty() {
            c.peers = self.peers;
        }
        c.routes.extend(self.routes);
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// Every field of the metaserver's config file, overridable here.
#[derive(Args)]
struct MetaArgs {
    /// Config file (TOML); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Member id, unique in the region (1 or more); never reuse a removed member's id.
    #[arg(long)]
    id: Option<u64>,
    /// Data folder for the Raft log, state and snapshots.
    #[arg(long)]
    data: Option<PathBuf>,
    /// gRPC listen address (port 0: pick one; the bound address is printed).
    #[arg(long)]
    listen: Option<String>,
    /// Address other members and clients use for this one (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Region id.
    #[arg(long)]
    region: Option<u16>,
    /// Start a new group with this member as its only voter (ignored once it has state).
    #[arg(long)]
    init: bool,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Election timeout lower bound, in milliseconds.
    #[arg(long)]
    election_min_ms: Option<u64>,
    /// Election timeout upper bound, in milliseconds.
    #[arg(long)]
    election_max_ms: Option<u64>,
    /// Snapshot after at least this many applied entries (more, in proportion, once the
    /// namespace is large).
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// Entries kept behind a snapshot.
    #[arg(long)]
    keep_logs: Option<u64>,
    /// How long a spare follower (one whose copy a commit does not wait for first)
    /// gathers appends before it syncs them, in microseconds (default 500; 0: every
    /// follower syncs each append at once).
    #[arg(long)]
    spare_sync_us: Option<u64>,
    /// How long the leader gathers a spare follower's entries into one append, in
    /// microseconds (default 10000; 0: each is sent as it comes). Not while a prompt
    /// follower falls behind.
    #[arg(long)]
    spare_batch_us: Option<u64>,
    /// Memory for the state database's page cache, in MiB (default 1024).
    #[arg(long)]
    state_cache_mib: Option<u64>,
    /// A silent chunkserver becomes suspect after this many milliseconds at the latest
    /// (sooner when its silence stands out from its own heartbeat rhythm: phi accrual).
    #[arg(long)]
    suspect_after_ms: Option<u64>,
    /// A silent chunkserver becomes down after this many milliseconds at the latest
    /// (sooner, but not under 5 s, when phi accrual is sure).
    #[arg(long)]
    down_after_ms: Option<u64>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Another region to replicate with: REGION=META_ADDR[,META_ADDR...] (repeatable).
    #[arg(long = "peer")]
    peers: Vec<meridian_metaserver::config::PeerRegion>,
    /// A peer region that has not answered a pull for this long is shown unreachable, in
    /// milliseconds (the verdict is an event in the log and in `admin regions`; it decides
    /// nothing).
    #[arg(long)]
    peer_unreachable_after_ms: Option<u64>,
    /// Shift this server's clock by this many milliseconds (tests of clock skew between
    /// regions; never in production).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    clock_offset_ms: Option<i64>,
    /// Pause this long between the steps of a volume copy, in milliseconds (tests that
    /// stop a copy half way; never in production).
    #[arg(long, hide = true)]
    copy_pause_ms: Option<u64>,
    /// Act as a member older than the Calls stream: answer it as unimplemented, so that
    /// clients use unary calls, and report reading no newer Raft requests (tests of a
    /// group of mixed versions; never in production).
    #[arg(long, hide = true)]
    no_calls_stream: bool,
    /// Serve no calls port beside gRPC (clients then make their calls through gRPC):
    /// for networks that open only the listen port. None is served with TLS on.
    #[arg(long)]
    no_calls_port: bool,
    /// Where the calls port listens (IP:PORT; default: the listen IP, any port). Clients
    /// reach it at the host they reach this member at.
    #[arg(long)]
    calls_listen: Option<String>,
    /// Make every fdatasync of the Raft log this many microseconds longer, as a slow disk
    /// would (tests of a slow member; never in production).
    #[arg(long, hide = true)]
    fault_sync_delay_us: Option<u64>,
    #[command(flatten)]
    clients: ClientLimitArgs,
}

impl MetaArgs {
    fn into_config(self) -> Result<MetaConfig> {
        if let Some(ms) = self.clock_offset_ms {
            tracing::warn!(ms, "this server's clock is shifted (--clock-offset-ms)");
            meridian_proto::set_clock_offset_ms(ms);
        }
        let mut c = match &self.config {
            Some(path) => MetaConfig::load(path).map_err(anyhow::Error::msg)?,
            None => MetaConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            id,
            data,
            listen,
            region,
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            snapshot_logs,
            keep_logs,
            spare_sync_us,
            spare_batch_us,
            state_cache_mib,
            suspect_after_ms,
            down_after_ms,
            peer_unreachable_after_ms,
            copy_pause_ms,
            fault_sync_delay_us
        );
        client_limits!(self.clients, c);
        if !self.peers.is_empty() {
            c.peers = self.peers;
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.metrics_listen {
            c.metrics_listen = Some(v);
        }
        if let Some(v) = self.calls_listen {
            c.calls_listen = Some(v);
        }
        c.init |= self.init;
        c.no_calls_stream |= self.no_calls_stream;
        c.no_calls_port |= self.no_calls_port;
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MERIDIAN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Serves Prometheus metrics on `addr` when asked to.
fn install_metrics(addr: Option<&str>) -> Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("metrics address {addr:?} is not host:port"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The token keys a server checks with, and the token a client sends.
fn install_tokens(cli: &Cli) -> Result<()> {
    if let Some(path) = &cli.token_key {
        anyhow::ensure!(
            matches!(cli.command, Command::Meta(_) | Command::Chunk(_)),
            "--token-key is for metaservers and chunkservers"
        );
        anyhow::ensure!(
            cli.tls.is_some(),
            "--token-key needs --tls: a token sent in plaintext can be read off the wire, and \
             servers tell each other apart by their certificates"
        );
        let keys = meridian_proto::token::TokenKeys::load(path)?;
        tracing::info!(keys = ?keys, "checking volume access tokens");
        meridian_proto::token::install_keys(keys);
    }
    let token = match (&cli.token_file, std::env::var("MERIDIAN_TOKEN")) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("token file {}", path.display()))?,
        ),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => None,
    };
    if let Some(token) = token {
        // A server passes on its clients' tokens; one of its own would stand in for them.
        anyhow::ensure!(
            !matches!(cli.command, Command::Meta(_) | Command::Chunk(_)),
            "a metaserver or chunkserver sends no volume access token (--token-file, \
             MERIDIAN_TOKEN): it acts for itself, or for the client whose token it passes on"
        );
        let claims = meridian_proto::token::install_client_token(token.trim())
            .context("the volume access token")?;
        tracing::info!(subject = %claims.subject, expires = claims.expires, "sending a volume access token");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    if cli.tls.is_none()
        && !cli.plaintext
        && matches!(cli.command, Command::Meta(_) | Command::Chunk(_))
    {
        anyhow::bail!(
            "a server takes --tls DIR (its certificate, from `meridian admin certs issue`), \
             or --plaintext to run without TLS (tests only: anyone who reaches its port can \
             read, write and delete anything)"
        );
    }
    if let Some(dir) = &cli.tls {
        anyhow::ensure!(
            !matches!(cli.command, Command::Dev(_)),
            "meridian dev runs plaintext on loopback; --tls is for deployments"
        );
        let identity = meridian_proto::tls::TlsIdentity::load(dir).map_err(anyhow::Error::msg)?;
        meridian_proto::tls::install(identity);
    }
    install_tokens(&cli)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // A mount's runtime relays between the kernel's threads and the servers (hashing and
    // compression run on the blocking pool): each extra worker mostly adds wake-ups
    // between workers on every request's answer. One worker on two cores: 16 KiB files
    // +15-25%, the mount's CPU per file -30% (docs/PERFORMANCE.md, fifteenth round).
    let threads = cli.runtime_threads.or_else(|| {
        matches!(cli.command, Command::Mount(_))
            .then(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1)))
    });
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--runtime-threads must be at least 1");
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if cli.tls.is_some() {
        // Rotated certificates are taken without a restart (SIGHUP, or the files changing).
        let _in = runtime.enter();
        meridian_proto::tls::watch(std::time::Duration::from_secs(2));
        // And token keys.
        if let Some(path) = &cli.token_key {
            meridian_proto::token::watch(path.clone(), std::time::Duration::from_secs(2));
        }
    }
    if let Some(path) = cli.token_file.clone() {
        // A token renewed in its file (a CSI secret updated, a job writing a new one) is
        // sent from then on, without a remount.
        let _in = runtime.enter();
        meridian_proto::reload::watch(
            vec![path.clone()],
            std::time::Duration::from_secs(2),
            "volume access token",
            move || {
                let token = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                meridian_proto::token::install_client_token(token.trim())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
    }
    let command = match cli.command {
        Command::Mount(args) => return mount::run(*args, &runtime),
        Command::Dev(args) => return dev::run(args, &runtime),
        Command::CsiMounter(args) => return csi::mounter::run(args),
        other => other,
    };
    let done = runtime.block_on(async move {
        match command {
            Command::Mount(_) | Command::Dev(_) | Command::CsiMounter(_) => Ok(()),
            Command::Chunk(args) => {
                let config = args.into_config()?;
                install_metrics(config.metrics_listen.as_deref())?;
                meridian_chunkserver::run(config, shutdown_signal()).await?;
                Ok(())
            }
            Command::Meta(args) => {
                let config = args.into_config()?;
                install_metrics(config.metrics_listen.as_deref())?;
                meridian_metaserver::run(config, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::msg)?;
                Ok(())
            }
            Command::Proxy(args) => proxy::run(args, shutdown_signal()).await,
            Command::Admin(cmd) => admin::run(cmd).await,
            Command::Csi(args) => csi::run(*args, shutdown_signal()).await,
        }
    });
    // A plaintext call to a TLS server fails deep in the transport: say what to pass.
    done.map_err(|e| {
        let text = format!("{e:#}");
        match meridian_proto::channels::with_hint(text.clone()) {
            hinted if hinted != text => anyhow::anyhow!(hinted),
            _ => e,
        }
    })
}
