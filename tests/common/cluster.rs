//! Groups of servers: metaservers in a Raft group, chunkservers, a region of both.

use super::*;

/// Three (or more) chunkservers on loopback sharing a cluster map file.
pub struct ChunkCluster {
    pub nodes: Vec<ServerProc>,
    pub map_path: PathBuf,
    pub map: ClusterMap,
    // Last field: dropped after the processes are killed.
    pub dir: TempDir,
}

impl ChunkCluster {
    /// Starts one chunkserver per entry of `zones` (node ids 1, 2, …), writes the cluster map
    /// once every node has bound its port, and waits until every node has loaded it.
    pub fn start(zones: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-chunk-")
            .tempdir()?;
        let map_path = dir.path().join("cluster-map.toml");
        let mut nodes = Vec::new();
        for (i, zone) in zones.iter().enumerate() {
            let id = i as u64 + 1;
            let data = dir.path().join(format!("node-{id}"));
            let args = vec![
                "chunk".into(),
                "--id".into(),
                id.to_string(),
                "--data".into(),
                data.display().to_string(),
                "--listen".into(),
                ANY_LISTEN.into(),
                "--zone".into(),
                zone.to_string(),
                "--cluster-map".into(),
                map_path.display().to_string(),
                "--map-poll-ms".into(),
                "100".into(),
                "--capacity".into(),
                (8u64 << 30).to_string(),
                "--peer-connect-timeout-ms".into(),
                "1000".into(),
            ];
            let mut p = ServerProc {
                role: "chunk",
                id,
                zone: zone.to_string(),
                addr: String::new(),
                data,
                log: dir.path().join(format!("node-{id}.log")),
                args,
                child: None,
                picked_port: false,
            };
            p.spawn_first()?;
            nodes.push(p);
        }
        for p in &mut nodes {
            p.addr = p.wait_first_listening()?;
        }
        let infos = nodes
            .iter()
            .map(|p| NodeInfo {
                id: NodeId(p.id),
                zone: ZoneId(p.zone.clone()),
                address: p.addr.clone(),
                range_address: String::new(),
                capacity: 8 << 30,
                state: NodeState::Up,
            })
            .collect();
        let map = ClusterMap::new(1, RegionId(1), infos)?;
        let tmp = dir.path().join("cluster-map.toml.tmp");
        fs::write(&tmp, map.to_toml())?;
        fs::rename(&tmp, &map_path)?;
        let cluster = ChunkCluster {
            nodes,
            map_path,
            map,
            dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.wait_map_epoch(i, 1)?;
        }
        Ok(cluster)
    }

    /// A client placing with this cluster's map.
    pub fn client(&self) -> BlockClient {
        BlockClient::with_map(self.map.clone(), None)
    }

    /// A raw gRPC client of node `i` (index into `nodes`).
    pub async fn rpc(&self, i: usize) -> Result<ChunkServiceClient<tonic::transport::Channel>> {
        let addr = &self.nodes[i].addr;
        ChunkServiceClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connect to chunkserver {addr}"))
    }

    /// The index in `nodes` of node `id`.
    pub fn index_of(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|p| p.id == id.0)
            .expect("node in cluster")
    }

    fn wait_map_epoch(&self, i: usize, epoch: u64) -> Result<()> {
        let addr = self.nodes[i].addr.clone();
        // Its own thread and runtime, so the harness works from sync and async tests alike.
        let waited = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            wait_for(
                START_DEADLINE,
                "chunkserver to load the cluster map",
                || {
                    rt.block_on(async {
                        let mut c = ChunkServiceClient::connect(format!("http://{addr}"))
                            .await
                            .ok()?;
                        let s = c.node_status(NodeStatusRequest {}).await.ok()?.into_inner();
                        (s.map_epoch >= epoch).then_some(())
                    })
                },
            )
        })
        .join()
        .map_err(|_| anyhow::anyhow!("map wait thread panicked"))?;
        waited.with_context(|| log_tail(&self.nodes[i].log, 20))
    }

    /// Restarts node `i` on its old address and data folder and waits until it serves.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let addr = self.nodes[i].addr.clone();
        self.nodes[i].restart_on(&addr)?;
        self.wait_map_epoch(i, self.map.epoch)
    }
}

/// Raft timings short enough for tests (fail-over in about a second), unless `extra`
/// sets its own; then `extra`.
pub fn raft_args(extra: &[String]) -> Vec<String> {
    let fast = [
        "--heartbeat-ms",
        "50",
        "--election-min-ms",
        "300",
        "--election-max-ms",
        "600",
    ];
    let mut args: Vec<String> = if extra.iter().any(|a| a == "--heartbeat-ms") {
        Vec::new()
    } else {
        fast.iter().map(|s| s.to_string()).collect()
    };
    args.extend(extra.iter().cloned());
    args
}

/// A region's metaserver group as real processes.
pub struct MetaCluster {
    pub nodes: Vec<ServerProc>,
    pub extra_args: Vec<String>,
    pub dir: TempDir,
}

impl MetaCluster {
    /// Starts member 1 as a new group, then grows it to `n` voters through the admin CLI.
    pub fn start(n: usize, extra_args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-meta-")
            .tempdir()?;
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut args = raft_args(&extra_args);
        args.push("--init".into());
        let first = ServerProc::start("meta", 1, dir.path(), args)?;
        let mut cluster = MetaCluster {
            nodes: vec![first],
            extra_args,
            dir,
        };
        cluster.wait_leader()?;
        for id in 2..=n as u64 {
            cluster.add_member(id)?;
        }
        Ok(cluster)
    }

    /// Starts member `id` and adds it to the group as a voter (with `meridian admin add-member`).
    pub fn add_member(&mut self, id: u64) -> Result<()> {
        let args = raft_args(&self.extra_args);
        let p = ServerProc::start("meta", id, self.dir.path(), args)?;
        // A group on TLS: the members' own certificate may add members.
        let tls: Vec<&String> = self
            .extra_args
            .iter()
            .skip_while(|a| *a != "--tls")
            .take(2)
            .collect();
        let out = Command::new(MERIDIAN)
            .args(tls)
            .args([
                "admin",
                "add-member",
                "--meta",
                &self.addrs().join(","),
                "--id",
                &id.to_string(),
                "--address",
                &p.addr,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "add-member {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.nodes.push(p);
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn client(&self) -> meridian_client::MetaClient {
        meridian_client::MetaClient::new(self.addrs())
    }

    /// Raft status of member `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<meridian_proto::pb::meta::StatusResponse> {
        let addr = self.nodes[i].addr.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                // Over TLS when the test installed an identity.
                let mut c = meridian_proto::channels::meta_client(
                    meridian_proto::channels::connect(&addr).await.ok()?,
                );
                c.status(meridian_proto::pb::meta::StatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            })
        })
        .join()
        .ok()
        .flatten()
    }

    /// Waits until a running member reports itself leader; returns its index.
    pub fn wait_leader(&mut self) -> Result<usize> {
        let n = self.nodes.len();
        let mut running: Vec<bool> = self.nodes.iter_mut().map(|p| p.is_running()).collect();
        running.resize(n, false);
        wait_for(START_DEADLINE, "a metaserver leader", || {
            (0..n).filter(|i| running[*i]).find(|i| {
                self.status(*i)
                    .is_some_and(|s| s.state == "Leader" && s.leader == self.nodes[*i].id)
            })
        })
        .with_context(|| {
            self.nodes
                .iter()
                .map(|p| format!("--- {} {}:\n{}", p.role, p.id, log_tail(&p.log, 15)))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

/// A whole region as processes: three metaservers, three chunkservers in three zones, and
/// a volume named "default".
pub struct Region {
    pub meta: MetaCluster,
    pub chunks: Vec<ServerProc>,
}

impl Region {
    pub fn start() -> Result<Self> {
        let meta = MetaCluster::start(
            3,
            &["--suspect-after-ms", "1500", "--down-after-ms", "4000"],
        )?;
        let addrs = meta.addrs().join(",");
        let chunks = start_chunkservers(&meta, 300, 8 << 30)?;
        let region = Region { meta, chunks };
        region.wait_chunkservers_up(3)?;
        let out = Command::new(MERIDIAN)
            .args(["admin", "volume-create", "--meta", &addrs, "default"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "volume-create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(region)
    }

    pub fn meta_addrs(&self) -> String {
        self.meta.addrs().join(",")
    }

    pub fn wait_chunkservers_up(&self, n: usize) -> Result<()> {
        let addrs = self.meta_addrs();
        wait_for(START_DEADLINE, "chunkservers up in the cluster map", || {
            let map = cluster_map(&addrs)?;
            (map.nodes
                .iter()
                .filter(|n| n.state == NodeState::Up)
                .count()
                >= n)
                .then_some(())
        })
    }

    /// The extents of the file at `path` (on a mount of this region), from the servers.
    pub fn extents(&self, path: &Path) -> Result<Vec<meridian_proto::ns::Extent>> {
        use std::os::unix::fs::MetadataExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let q = meridian_proto::ns::Query::Extents {
            ino: meridian_proto::InodeId(fs::metadata(path)?.ino()),
            offset: 0,
            len: u64::MAX / 2,
            limit: None,
        };
        match rt.block_on(self.meta.client().query(&q, false))? {
            meridian_proto::ns::QueryReply::Extents(e) => Ok(e),
            other => bail!("extents of {}: {other:?}", path.display()),
        }
    }

    /// Mounts `volume` at a new folder under the region's temp dir.
    pub fn mount(&self, name: &str) -> Result<Mount> {
        self.mount_with(name, &[])
    }

    /// [`Region::mount`], with more `meridian mount` flags.
    pub fn mount_with(&self, name: &str, flags: &[&str]) -> Result<Mount> {
        Mount::start_with(
            &self.meta_addrs(),
            "default",
            &self.meta.dir.path().join(name),
            flags,
        )
    }
}

/// The cluster map, as `meridian admin cluster-map --json` prints it.
pub fn cluster_map(meta: &str) -> Option<ClusterMap> {
    let out = Command::new(MERIDIAN)
        .args(["admin", "cluster-map", "--json", "--meta", meta])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Starts chunkservers 1-3 in zones a, b, c, registered with `meta`'s metaservers.
pub fn start_chunkservers(
    meta: &MetaCluster,
    heartbeat_ms: u64,
    capacity: u64,
) -> Result<Vec<ServerProc>> {
    start_chunkservers_with(meta, heartbeat_ms, capacity, &[])
}

/// As [`start_chunkservers`], with more flags for each.
pub fn start_chunkservers_with(
    meta: &MetaCluster,
    heartbeat_ms: u64,
    capacity: u64,
    extra: &[String],
) -> Result<Vec<ServerProc>> {
    start_chunkservers_at(meta, heartbeat_ms, capacity, extra, &[])
}

/// As [`start_chunkservers_with`], chunkserver `i` listening on `listen[i]` when given.
pub fn start_chunkservers_at(
    meta: &MetaCluster,
    heartbeat_ms: u64,
    capacity: u64,
    extra: &[String],
    listen: &[String],
) -> Result<Vec<ServerProc>> {
    let addrs = meta.addrs().join(",");
    let mut chunks = Vec::new();
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let args = vec![
            "--zone".to_string(),
            zone.to_string(),
            "--meta".into(),
            addrs.clone(),
            "--heartbeat-ms".into(),
            heartbeat_ms.to_string(),
            "--capacity".into(),
            capacity.to_string(),
        ];
        let mut args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
        if let Some(addr) = listen.get(i) {
            args.extend(["--listen".to_string(), addr.clone()]);
        }
        chunks.push(ServerProc::start(
            "chunk",
            i as u64 + 1,
            meta.dir.path(),
            args,
        )?);
    }
    Ok(chunks)
}
