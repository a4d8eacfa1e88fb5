//! `meridian csi`: a Container Storage Interface v1 plugin, so Kubernetes can make, mount
//! and grow Meridian volumes. The controller turns CSI volumes into Meridian volumes (a
//! capacity becomes the volume's byte quota); the node mounts a volume once per node at
//! the staging path (`meridian mount`, a child process) and bind-mounts it into each pod.
//! It listens on a unix socket, as the kubelet and the CSI sidecars expect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use meridian_client::MetaClient;
use meridian_proto::pb::csi::controller_server::ControllerServer;
use meridian_proto::pb::csi::identity_server::IdentityServer;
use meridian_proto::pb::csi::node_server::NodeServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

pub mod checks;
mod controller;
mod identity;
pub mod mounter;
pub mod mounts;
mod node;
mod staging;
mod volumes;

/// The plugin's name, as Kubernetes objects (CSIDriver, StorageClass) spell it.
pub const DRIVER_NAME: &str = "csi.meridian.io";
/// Topology key of a volume's and a node's region.
pub const TOPOLOGY_REGION: &str = "topology.meridian.io/region";
/// Topology key of a node's zone.
pub const TOPOLOGY_ZONE: &str = "topology.meridian.io/zone";

/// Which CSI services to serve.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Mode {
    /// Identity and controller (one per cluster, with the provisioner and resizer).
    Controller,
    /// Identity and node (one per node, with the node-driver-registrar).
    Node,
    /// All three (tests, single-node clusters).
    All,
}

/// Options of `meridian csi`.
#[derive(Args)]
pub struct CsiArgs {
    /// Where to listen: `unix:///path/csi.sock` (or a bare path).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,
    /// This node's name (the Kubernetes node name); required by the node service.
    #[arg(long, env = "CSI_NODE_ID")]
    pub node_id: Option<String>,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// Metaserver addresses of the region (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub meta: Vec<String>,
    /// This node's zone, reported as its topology.
    #[arg(long, env = "CSI_ZONE")]
    pub zone: Option<String>,
    /// Where the node service keeps what it staged and published, so that a restarted
    /// plugin knows it and mounts again what died.
    #[arg(long, default_value = "/var/lib/meridian-csi")]
    pub state_dir: PathBuf,
    /// Folders staging and target paths must lie in (comma-separated); any other path is
    /// refused.
    #[arg(long, value_delimiter = ',', default_value = "/var/lib/kubelet")]
    pub kubelet_dir: Vec<PathBuf>,
    /// How often the node service checks its staged mounts, in seconds.
    #[arg(long, default_value_t = 5)]
    pub check_every_secs: u64,
    /// Extra `meridian mount` flags for the node's mounts (space-separated).
    #[arg(long, default_value = "")]
    pub mount_flags: String,
    /// Have the node's mounts started and stopped by `meridian csi-mounter` at this
    /// socket (`unix:///path`), so they are not this process's children: in Kubernetes
    /// it runs in a container of its own, and restarting the plugin's container leaves
    /// the mounts alone. Without it, the plugin starts them itself.
    #[arg(long)]
    pub mounter: Option<String>,
}

/// What every service shares.
pub struct Shared {
    /// The region's metaservers.
    pub meta: Arc<MetaClient>,
    /// Their addresses, for the mounts the node starts.
    pub meta_addrs: Vec<String>,
    /// The region this plugin's metaservers serve.
    pub region: u16,
}

/// The unix socket path of an endpoint.
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(p) => p,
        None if endpoint.contains("://") => {
            bail!("endpoint {endpoint:?}: only unix:// sockets are served")
        }
        None => endpoint,
    };
    if path.is_empty() || !path.starts_with('/') {
        bail!("endpoint {endpoint:?}: the socket path must be absolute");
    }
    Ok(PathBuf::from(path))
}

/// Makes a socket's folder and removes a stale socket a previous run left, so it can be
/// bound.
pub(crate) fn clear_socket(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
}

/// Binds the socket, replacing a stale one a previous run left.
fn bind(path: &Path) -> Result<UnixListener> {
    clear_socket(path)?;
    UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))
}

pub async fn run(args: CsiArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let sock = socket_path(&args.endpoint)?;
    let node_id = match (args.mode, &args.node_id) {
        (Mode::Controller, _) => None,
        (_, Some(id)) if !id.is_empty() => Some(id.clone()),
        _ => bail!("--node-id is required by the node service"),
    };
    let meta = Arc::new(MetaClient::new(args.meta.clone()).with_retry_for(Duration::from_secs(10)));
    let region = meta
        .status()
        .await
        .context("cannot reach the metaservers")?
        .region;
    let region = u16::try_from(region).context("region id out of range")?;
    let shared = Arc::new(Shared {
        meta,
        meta_addrs: args.meta.clone(),
        region,
    });
    let listener = bind(&sock)?;
    let mut router =
        tonic::transport::Server::builder().add_service(IdentityServer::new(identity::Identity {
            controller: args.mode != Mode::Node,
        }));
    if args.mode != Mode::Node {
        router = router.add_service(ControllerServer::new(controller::Controller {
            shared: shared.clone(),
        }));
    }
    let mut checker = None;
    if let Some(node_id) = node_id {
        let roots = checks::roots(&args.kubelet_dir)?;
        let flags = args
            .mount_flags
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mounter = args.mounter.as_deref().map(socket_path).transpose()?;
        let node = node::Node::open(
            shared.clone(),
            node::NodeConfig {
                node_id,
                zone: args.zone.clone(),
                roots,
                mount_flags: flags,
                mounter,
            },
            &args.state_dir,
        )?;
        // What a previous run staged and published is mounted again if it died.
        node.recover().await;
        checker = Some(tokio::spawn(
            node.clone()
                .check_loop(Duration::from_secs(args.check_every_secs.max(1))),
        ));
        router = router.add_service(NodeServer::new(node));
    }
    println!(
        "meridian csi ({:?}) serving {DRIVER_NAME} on unix://{} for region {region}",
        args.mode,
        sock.display()
    );
    let served = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Some(c) = checker {
        c.abort();
    }
    let _ = std::fs::remove_file(&sock);
    served.context("CSI server failed")
}
