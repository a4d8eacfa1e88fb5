//! Shared harness for end-to-end tests: real `meridian` processes on loopback, each with its
//! own temp folder and a port chosen at run time, killed on drop even when a test fails.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_client::BlockClient;
use meridian_proto::pb::chunk::NodeStatusRequest;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::{ClusterMap, NodeId, NodeInfo, NodeState, RegionId, ZoneId};
use tempfile::TempDir;

pub mod linearizability;
pub mod mesh;
pub mod pair;
pub mod tls;

/// The binary under test, exactly as a user runs it.
pub const MERIDIAN: &str = env!("CARGO_BIN_EXE_meridian");

/// How long a process may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Deterministic pseudo-random bytes (xorshift), so a failing test can be rerun exactly.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// splitmix64: a seeded stream of numbers, the same on every run (the differential
/// testers' steps).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Polls `check` until it returns `Some`, or fails after `deadline` with `what`.
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    // Backtrace frames would push the error itself out of the tail.
    let all: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `line` is one frame of a printed backtrace ("  12: fn" or "      at file:line").
fn is_backtrace_frame(line: &str) -> bool {
    let t = line.trim_start();
    let numbered = t
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (numbered && t.len() < line.len()) || t.starts_with("at ") || t == "Stack backtrace:"
}

/// One server process (`meridian chunk` or `meridian meta`).
pub struct ServerProc {
    pub role: &'static str,
    pub id: u64,
    pub zone: String,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ServerProc {
    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(MERIDIAN)
            .args(&self.args)
            .env("MERIDIAN_LOG", "info")
            // Plaintext unless the test gives the server --tls.
            .env("MERIDIAN_PLAINTEXT", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn meridian {}", self.role))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the process has printed its listening address, and returns it.
    fn wait_listening(&mut self, after: usize) -> Result<String> {
        let log = self.log.clone();
        let (id, role) = (self.id, self.role);
        let found = wait_for(START_DEADLINE, "server to listen", || {
            let text = fs::read_to_string(&log).ok()?;
            text.lines()
                .filter(|l| l.starts_with(&format!("meridian {role} {id} listening on ")))
                .nth(after)
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        });
        if found.is_err()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "chunkserver {id} exited ({status}):\n{}",
                log_tail(&log, 30)
            );
        }
        found.with_context(|| format!("{role} {id}:\n{}", log_tail(&log, 30)))
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process where it is (SIGSTOP), or lets it go on (SIGCONT).
    pub fn pause(&self, stopped: bool) {
        if let Some(c) = self.child.as_ref() {
            let sig = if stopped {
                libc::SIGSTOP
            } else {
                libc::SIGCONT
            };
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().context("process not running")?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                bail!(
                    "chunkserver {} ignored SIGTERM:\n{}",
                    self.id,
                    log_tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds `args` to those the process starts with next time.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Starts the process again with the same arguments, listening on `addr`.
    pub fn restart_on(&mut self, addr: &str) -> Result<()> {
        let listen = self
            .args
            .iter()
            .position(|a| a == "--listen")
            .expect("listen arg")
            + 1;
        self.args[listen] = addr.to_string();
        let prefix = format!("meridian {} {} listening on ", self.role, self.id);
        let before = fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count();
        self.spawn()?;
        let again = self.wait_listening(before)?;
        anyhow::ensure!(again == addr, "restarted on {again}, expected {addr}");
        Ok(())
    }

    /// Starts a new server process; returns once it has printed its address.
    pub fn start(role: &'static str, id: u64, dir: &Path, mut args: Vec<String>) -> Result<Self> {
        let data = dir.join(format!("{role}-{id}"));
        let mut full = vec![
            role.to_string(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
        ];
        if !args.iter().any(|a| a == "--listen") {
            full.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        full.append(&mut args);
        let mut p = ServerProc {
            role,
            id,
            zone: String::new(),
            addr: String::new(),
            data,
            log: dir.join(format!("{role}-{id}.log")),
            args: full,
            child: None,
        };
        p.spawn()?;
        p.addr = p.wait_listening(0)?;
        Ok(p)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

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
                "127.0.0.1:0".into(),
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
            };
            p.spawn()?;
            nodes.push(p);
        }
        for p in &mut nodes {
            p.addr = p.wait_listening(0)?;
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
        let p = &mut self.nodes[i];
        let listen = p
            .args
            .iter()
            .position(|a| a == "--listen")
            .expect("listen arg")
            + 1;
        p.args[listen] = addr.clone();
        let started_before = fs::read_to_string(&p.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("meridian chunk {} listening on ", p.id)))
            .count();
        p.spawn()?;
        let again = p.wait_listening(started_before)?;
        anyhow::ensure!(again == addr, "restarted on {again}, expected {addr}");
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

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// A `meridian mount` process; unmounted (lazily, whatever state it is in) on drop.
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start(meta: &str, volume: &str, path: &Path) -> Result<Self> {
        Self::start_with(meta, volume, path, &[])
    }

    /// [`Mount::start`], with more `meridian mount` flags.
    pub fn start_with(meta: &str, volume: &str, path: &Path, flags: &[&str]) -> Result<Self> {
        fs::create_dir_all(path)?;
        let path = path.canonicalize()?;
        let log = path.with_extension("log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(MERIDIAN)
            .args(["mount", "--meta", meta, "--volume", volume, "--allow-other"])
            .args(flags)
            .arg(&path)
            .env("MERIDIAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut m = Mount {
            path: path.clone(),
            log: log.clone(),
            child: Some(child),
        };
        // Up, or its process gone (a mount that failed is not waited for).
        let settled = wait_for(START_DEADLINE, "the mount", || {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            (exited.is_some() || is_mounted(&path)).then_some(())
        });
        if settled.is_err() || !is_mounted(&path) {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            bail!(
                "mount at {} did not come up (exit: {exited:?}):\n{}",
                path.display(),
                log_tail(&log, 30)
            );
        }
        Ok(m)
    }

    /// kill -9 of the mount's process (the mount stays, dead, until dropped).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmounts cleanly (SIGTERM) and waits for the process.
    pub fn unmount(mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = wait_for(Duration::from_secs(20), "the mount to exit", || {
            c.try_wait().ok().flatten()
        });
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = c.kill();
                return Err(e.context(log_tail(&self.log, 20)));
            }
        };
        anyhow::ensure!(!is_mounted(&self.path), "still mounted after exit");
        Ok(status)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.path)
                .status();
        }
    }
}

/// A mkdir of `name` in `parent`, as root.
pub fn mkdir_op(parent: meridian_proto::InodeId, name: &str) -> meridian_proto::ns::Op {
    use meridian_proto::ns::{Creds, FileKind, Op};
    Op::Mknod {
        parent,
        name: name.into(),
        kind: FileKind::Dir,
        perm: 0o755,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
    }
}

/// An exclusive create of file `name` in `parent`, as root.
pub fn create_op(parent: meridian_proto::InodeId, name: &str) -> meridian_proto::ns::Op {
    use meridian_proto::ns::{Creds, FileKind, Op};
    Op::Mknod {
        parent,
        name: name.into(),
        kind: FileKind::File,
        perm: 0o644,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
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

/// A `meridian proxy` process (the fault proxy); killed on drop.
pub struct Proxy {
    child: Child,
    pub listen: String,
    pub control: String,
    pub forwards: Vec<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts a proxy to `target`, listening on `listen` (port 0: any), logging under `dir`.
    pub fn start(dir: &Path, name: &str, listen: &str, target: &str) -> Result<Proxy> {
        Proxy::start_forwards(dir, name, &[(listen.to_string(), target.to_string())])
    }

    /// Starts one link of many `(listen, target)` forwards sharing one delay and cut;
    /// `forwards` holds the bound listen addresses, in order.
    pub fn start_forwards(dir: &Path, name: &str, forwards: &[(String, String)]) -> Result<Proxy> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new(MERIDIAN)
            .args(["proxy", "--name", name])
            .args(
                forwards
                    .iter()
                    .flat_map(|(l, t)| ["--forward".to_string(), format!("{l}={t}")]),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut p = Proxy {
            child,
            listen: String::new(),
            control: String::new(),
            forwards: Vec::new(),
        };
        // A proxy that could not bind exits: say why at once rather than wait.
        let text = wait_for(Duration::from_secs(20), "the proxy to listen", || {
            let text = fs::read_to_string(&log).ok()?;
            if text.contains("meridian proxy listening on ") {
                return Some(Ok(text));
            }
            match p.child.try_wait() {
                Ok(Some(status)) => Some(Err(anyhow::anyhow!(
                    "the proxy exited ({status}) before listening: {text}"
                ))),
                _ => None,
            }
        })??;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with("meridian proxy listening on ") {
                p.listen = words[4].to_string();
                p.control = words[6].to_string();
            } else if line.starts_with("forward ") {
                p.forwards.push(words[1].to_string());
            }
        }
        Ok(p)
    }

    /// Cuts (`true`) or heals (`false`) the link, through the admin CLI.
    pub fn set_delay(&self, ms: u32) -> Result<()> {
        let ms = ms.to_string();
        let out = Command::new(MERIDIAN)
            .args(["admin", "link", "--proxy", &self.control, "--delay-ms", &ms])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "admin link --delay-ms {ms}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn set_cut(&self, cut: bool) -> Result<()> {
        let flag = if cut { "--cut" } else { "--heal" };
        let out = Command::new(MERIDIAN)
            .args(["admin", "link", "--proxy", &self.control, flag])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "admin link {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// The value of gauge `name` on the Prometheus endpoint at `addr` (0 if not yet set).
pub fn gauge(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0),
    )
}

/// A loopback address with a port that was free a moment ago, for a server started
/// later. It is picked below the kernel's ephemeral range (32768 and up), so the outgoing
/// connections of other tests cannot take it in between; a random start keeps parallel
/// tests apart.
pub fn free_addr() -> Result<String> {
    Ok(meridian_proto::net::spare_loopback_addr()?)
}

/// The file of block `hex` in the data folder `data` of a chunkserver (a block of more
/// than `packs::MAX_PACKED` bytes; smaller ones are packed).
pub fn block_file(data: &Path, hex: &str) -> PathBuf {
    data.join("blocks").join(&hex[0..2]).join(hex)
}

/// The blocks packed in the data folder `data` of a chunkserver, as hex (read from its
/// packs, which the chunkserver may be writing meanwhile).
pub fn packed_blocks(data: &Path) -> Vec<String> {
    meridian_chunkserver::packs::stored_offline(&data.join("packs"))
        .unwrap_or_default()
        .iter()
        .map(|id| id.to_hex())
        .collect()
}

/// Takes block `hex` away from the data folder `data` of a stopped chunkserver: its file,
/// or its packed copy.
pub fn remove_block(data: &Path, hex: &str) -> Result<()> {
    match fs::remove_file(block_file(data, hex)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let id: meridian_proto::BlockId = hex.parse().map_err(anyhow::Error::msg)?;
    meridian_chunkserver::packs::remove_offline(&data.join("packs"), &id)?;
    Ok(())
}

/// Every block under the `blocks` folder `dir` of a chunkserver's data folder: its files,
/// and the blocks packed beside it.
pub fn block_files(dir: &Path) -> Vec<String> {
    let mut out = dir.parent().map(packed_blocks).unwrap_or_default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// `meridian admin ARGS… --meta META`: its standard output, or an error with its stderr.
pub fn admin_at(meta: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(MERIDIAN)
        .arg("admin")
        .args(args)
        .args(["--meta", meta])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// For a bench binary with `harness = false`: answers a test runner's `--list` and says
/// whether to stop there; otherwise whether this is a full (`--bench`) run.
pub fn bench_mode(name: &str) -> Option<bool> {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{name}: {}", if bench { "benchmark" } else { "test" });
        }
        return None;
    }
    Some(bench)
}

/// Maps the first `len` bytes of `f` shared, runs `use_it` on them, unmaps.
pub fn with_map<T>(f: &fs::File, len: usize, use_it: impl FnOnce(&mut [u8]) -> T) -> Result<T> {
    // SAFETY: a valid descriptor; the mapping is used only inside this call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        )
    };
    anyhow::ensure!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let out = use_it(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) });
    unsafe { libc::munmap(p, len) };
    Ok(out)
}

pub fn msync(region: &mut [u8], flags: i32) -> Result<()> {
    // SAFETY: a live mapping.
    let rc = unsafe { libc::msync(region.as_mut_ptr().cast(), region.len(), flags) };
    anyhow::ensure!(rc == 0, "msync: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Every file and folder under `root`: its kind and permission bits, and for a file its
/// size and the blake3 of its content (a symlink: its target).
pub fn tree_listing(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                out.insert(rel, "unreadable".into());
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                out.insert(rel, format!("symlink {}", target.display()));
            } else {
                let hash = fs::read(&path)
                    .map(|b| meridian_proto::BlockId::of(&b).to_hex())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                out.insert(rel, format!("file {mode:o} {} {hash}", meta.len()));
            }
        }
    }
    out
}

/// Waits until the trees under `a` and `b` are the same, every file readable; returns it.
pub fn wait_same_tree(
    a: &Path,
    b: &Path,
    deadline: Duration,
    what: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut last = Default::default();
    wait_for(deadline, what, || {
        let (la, lb) = (tree_listing(a), tree_listing(b));
        let same = la == lb && !la.values().any(|v| v.contains("unreadable"));
        last = (la.clone(), lb);
        same.then_some(la)
    })
    .with_context(|| format!("one: {:#?}\nthe other: {:#?}", last.0, last.1))
}

/// `meridian admin fsck --json` of the region whose metaservers are `meta`: the report,
/// and whether it came clean.
pub fn fsck(meta: &str) -> Result<(serde_json::Value, bool)> {
    let out = Command::new(MERIDIAN)
        .args(["admin", "fsck", "--json", "--meta", meta])
        .output()?;
    let report = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "fsck printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((report, out.status.success()))
}
