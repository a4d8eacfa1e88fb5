//! `meridian dev`: one or more regions on loopback, each server its own child process.
//! Each region has 3 metaservers and 3 chunkservers in 3 zones; with `--regions N`, every
//! pair of regions talks through a fault proxy (run in this process) that `meridian admin
//! link` can delay, cut and heal. The default volume lives in every region and is mounted
//! at MOUNT (one region) or MOUNT/<region>. The ports are chosen on the first run and kept
//! in the data folder, so a restart finds the same groups and the same data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use meridian_client::MetaClient;
use meridian_proto::ns::{Op, Query, VolumePolicy};
use meridian_proto::pb::meta::AddMemberRequest;
use meridian_proto::{NodeState, RegionId};
use serde::{Deserialize, Serialize};

/// Options of `meridian dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Folder for every server's data and logs (kept across runs).
    #[arg(long, default_value = "meridian-dev")]
    pub data: PathBuf,
    /// Where to mount the default volume (default: DATA/mnt); with several regions, each
    /// region's view is mounted at MOUNT/<region>.
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Start the servers but do not mount.
    #[arg(long)]
    pub no_mount: bool,
    /// How many regions to run (1 to 5), linked through fault proxies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub regions: u16,
    /// One-way delay the links between regions start with, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub link_delay_ms: u32,
    /// Worker threads of each server it starts. They share this machine: one each keeps
    /// them from waking each other's idle workers.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
}

/// The ports chosen on the first run.
#[derive(Serialize, Deserialize)]
struct Layout {
    regions: Vec<RegionPorts>,
    links: Vec<LinkPorts>,
}

/// One region's servers.
#[derive(Serialize, Deserialize)]
struct RegionPorts {
    id: u16,
    meta: Vec<String>,
    chunk: Vec<String>,
}

/// The proxy between regions `a` and `b`: where each reaches the other's servers.
#[derive(Serialize, Deserialize)]
struct LinkPorts {
    a: u16,
    b: u16,
    control: String,
    /// What `b` dials to reach `a`'s metaservers and chunkservers, then what `a` dials.
    to_a_meta: Vec<String>,
    to_a_chunk: Vec<String>,
    to_b_meta: Vec<String>,
    to_b_chunk: Vec<String>,
}

impl Layout {
    fn new(regions: u16) -> Result<Layout> {
        let ports = |n: usize| (0..n).map(|_| free_port()).collect::<Result<Vec<_>>>();
        let regions_ports = (1..=regions)
            .map(|id| {
                Ok(RegionPorts {
                    id,
                    meta: ports(3)?,
                    chunk: ports(3)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut links = Vec::new();
        for a in 1..=regions {
            for b in a + 1..=regions {
                links.push(LinkPorts {
                    a,
                    b,
                    control: free_port()?,
                    to_a_meta: ports(3)?,
                    to_a_chunk: ports(3)?,
                    to_b_meta: ports(3)?,
                    to_b_chunk: ports(3)?,
                });
            }
        }
        Ok(Layout {
            regions: regions_ports,
            links,
        })
    }

    fn region(&self, id: u16) -> &RegionPorts {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .expect("region in layout")
    }

    /// What `from` dials to reach `to`'s metaservers and chunkservers.
    fn route(&self, from: u16, to: u16) -> (&[String], &[String]) {
        let l = self
            .links
            .iter()
            .find(|l| (l.a, l.b) == (from.min(to), from.max(to)))
            .expect("link in layout");
        if to == l.a {
            (&l.to_a_meta, &l.to_a_chunk)
        } else {
            (&l.to_b_meta, &l.to_b_chunk)
        }
    }

    /// Flags of `region`'s servers: metaservers', then chunkservers'.
    fn peer_flags(&self, region: u16) -> (Vec<String>, Vec<String>) {
        let mut meta = vec!["--region".to_string(), region.to_string()];
        let mut chunk = meta.clone();
        for other in self.regions.iter().filter(|r| r.id != region) {
            let (via_meta, via_chunk) = self.route(region, other.id);
            let peer = format!("{}={}", other.id, via_meta.join(","));
            meta.extend(["--peer".to_string(), peer.clone()]);
            chunk.extend(["--peer".to_string(), peer]);
            for (addr, via) in other.chunk.iter().zip(via_chunk) {
                chunk.extend(["--route".to_string(), format!("{addr}={via}")]);
            }
        }
        (meta, chunk)
    }
}

fn free_port() -> Result<String> {
    Ok(meridian_proto::net::spare_loopback_addr()?)
}

struct DevProc {
    region: u16,
    role: &'static str,
    id: u64,
    addr: String,
    child: Child,
    data: PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    exe: &Path,
    region: u16,
    role: &'static str,
    id: u64,
    addr: &str,
    data: &Path,
    extra: &[String],
) -> Result<DevProc> {
    let dir = data.join(format!("{role}-{id}"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join(format!("{role}-{id}.log")))?;
    let child = Command::new(exe)
        // dev is the one place servers run without TLS by default (its banner says so).
        .arg("--plaintext")
        .arg(role)
        .args(["--id", &id.to_string(), "--listen", addr, "--data"])
        .arg(&dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {role} {id}"))?;
    Ok(DevProc {
        region,
        role,
        id,
        addr: addr.to_string(),
        child,
        data: dir,
    })
}

fn wait_listening(data: &Path, c: &mut DevProc) -> Result<()> {
    let log = data.join(format!("{}-{}.log", c.role, c.id));
    let line = format!("meridian {} {} listening on {}", c.role, c.id, c.addr);
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&line)
        {
            return Ok(());
        }
        if let Some(status) = c.child.try_wait()? {
            bail!(
                "{} {} exited ({status}); see {}:\n{}",
                c.role,
                c.id,
                log.display(),
                error_lines(&log)
            );
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} {} did not start in 30 s; see {}",
                c.role,
                c.id,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a server's log that are not backtrace frames: where its own
/// account of what went wrong is.
fn error_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Whether `line` is one frame of a printed backtrace ("  12: fn" or "      at file:line").
fn is_backtrace_frame(line: &str) -> bool {
    let t = line.trim_start();
    let numbered = t
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (numbered && t.len() < line.len()) || t.starts_with("at ") || t == "Stack backtrace:"
}

/// Starts one region's metaservers (growing the group to 3 on the first run) and
/// chunkservers, and waits until the chunkservers are up in its map.
#[allow(clippy::too_many_arguments)]
fn start_region(
    exe: &Path,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    ports: &RegionPorts,
    meta_flags: &[String],
    chunk_flags: &[String],
    children: &mut Vec<DevProc>,
) -> Result<Arc<MetaClient>> {
    std::fs::create_dir_all(dir)?;
    for (i, addr) in ports.meta.iter().enumerate() {
        let id = i as u64 + 1;
        let mut extra = meta_flags.to_vec();
        if id == 1 {
            extra.push("--init".into());
        }
        let mut c = spawn(exe, ports.id, "meta", id, addr, dir, &extra)?;
        wait_listening(dir, &mut c)?;
        children.push(c);
    }
    let client = Arc::new(MetaClient::new(ports.meta.clone()));
    rt.block_on(async {
        let status = client.status().await?;
        let members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
        for (i, addr) in ports.meta.iter().enumerate() {
            let id = i as u64 + 1;
            if members.contains(&id) {
                continue;
            }
            let leader = client.status().await?.leader_address;
            let mut rpc = meridian_proto::channels::meta_client(
                meridian_proto::channels::connect(&leader)
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
            rpc.add_member(AddMemberRequest {
                id,
                address: addr.clone(),
                voter: true,
            })
            .await?;
        }
        anyhow::Ok(())
    })?;
    let meta_list = ports.meta.join(",");
    for ((i, addr), zone) in ports.chunk.iter().enumerate().zip(["a", "b", "c"]) {
        let mut extra = vec![
            "--zone".to_string(),
            zone.into(),
            "--meta".into(),
            meta_list.clone(),
        ];
        extra.extend(chunk_flags.iter().cloned());
        let mut c = spawn(exe, ports.id, "chunk", i as u64 + 1, addr, dir, &extra)?;
        wait_listening(dir, &mut c)?;
        children.push(c);
    }
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let map = client.cluster_map(0, Duration::from_millis(500)).await?;
            if map
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Up)
                .count()
                >= 3
            {
                return anyhow::Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "chunkservers did not register in 30 s; see {}/chunk-*.log",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    Ok(client)
}

/// Creates the default volume in region 1, living in every region, unless it exists, and
/// waits until every region has it.
async fn default_volume(clients: &[(u16, Arc<MetaClient>)]) -> Result<()> {
    let has = |c: Arc<MetaClient>| async move {
        c.query(
            &Query::Volume {
                name: "default".into(),
            },
            false,
        )
        .await
        .is_ok()
    };
    let (_, first) = &clients[0];
    if !has(first.clone()).await {
        let policy = VolumePolicy {
            regions: if clients.len() > 1 {
                clients.iter().map(|(r, _)| RegionId(*r)).collect()
            } else {
                Vec::new()
            },
            ..VolumePolicy::default()
        };
        first
            .mutate(&Op::CreateVolume {
                name: "default".into(),
                policy,
            })
            .await?;
    }
    for (region, c) in &clients[1..] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !has(c.clone()).await {
            if Instant::now() > deadline {
                bail!("the default volume did not reach region {region} in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Mounts region `region`'s view of the default volume at `path`.
fn mount(exe: &Path, region: u16, meta: &[String], path: &Path, log_dir: &Path) -> Result<DevProc> {
    std::fs::create_dir_all(path)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("mount.log"))?;
    let child = Command::new(exe)
        .args([
            "mount",
            "--allow-other",
            "--meta",
            &meta.join(","),
            "--volume",
            "default",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut c = DevProc {
        region,
        role: "mount",
        id: 0,
        addr: path.display().to_string(),
        child,
        data: path.to_path_buf(),
    };
    let start = Instant::now();
    while !is_mounted(path) {
        if c.child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(30) {
            let _ = c.child.kill();
            let _ = c.child.wait();
            bail!(
                "the mount did not come up; see {}/mount.log",
                log_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(c)
}

pub fn run(args: DevArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the meridian binary")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let data = args.data.canonicalize()?;
    let layout_path = data.join("dev-layout.toml");
    let first_run = !layout_path.exists();
    let layout: Layout = if first_run {
        let l = Layout::new(args.regions)?;
        std::fs::write(&layout_path, toml::to_string(&l)?)?;
        l
    } else {
        toml::from_str(&std::fs::read_to_string(&layout_path)?).with_context(|| {
            format!(
                "{} is damaged or from an older meridian; use another --data folder",
                layout_path.display()
            )
        })?
    };
    let n = layout.regions.len() as u16;
    if n != args.regions {
        bail!(
            "{} was created with {n} region(s); pass --regions {n} or use another --data folder",
            data.display()
        );
    }
    let region_dir = |r: u16| {
        if n == 1 {
            data.clone()
        } else {
            data.join(format!("region-{r}"))
        }
    };

    // The links first: servers dial their peers through them from the start.
    let (stop_links, links_stopped) = tokio::sync::watch::channel(false);
    let mut link_tasks = Vec::new();
    for l in &layout.links {
        let (a, b) = (layout.region(l.a), layout.region(l.b));
        let specs: Vec<(String, String)> = l
            .to_a_meta
            .iter()
            .zip(&a.meta)
            .chain(l.to_a_chunk.iter().zip(&a.chunk))
            .chain(l.to_b_meta.iter().zip(&b.meta))
            .chain(l.to_b_chunk.iter().zip(&b.chunk))
            .map(|(listen, target)| (listen.clone(), target.clone()))
            .collect();
        let name = format!("{}-{}", l.a, l.b);
        let (forwards, control) = rt.block_on(async {
            let forwards = crate::proxy::bind_forwards(&specs).await?;
            let control = tokio::net::TcpListener::bind(&l.control)
                .await
                .with_context(|| format!("cannot listen on {}", l.control))?;
            anyhow::Ok((forwards, control))
        })?;
        let mut stopped = links_stopped.clone();
        let delay = args.link_delay_ms;
        link_tasks.push(rt.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) =
                crate::proxy::serve_link(&name, forwards, delay, control, shutdown).await
            {
                tracing::error!(link = %name, error = %e, "link proxy failed");
            }
        }));
    }

    let mut children: Vec<DevProc> = Vec::new();
    let mut clients = Vec::new();
    let result = (|| -> Result<()> {
        for r in &layout.regions {
            let (mut meta_flags, mut chunk_flags) = if n == 1 {
                (Vec::new(), Vec::new())
            } else {
                layout.peer_flags(r.id)
            };
            let threads = [
                "--runtime-threads".to_string(),
                args.server_threads.to_string(),
            ];
            meta_flags.extend(threads.clone());
            chunk_flags.extend(threads);
            let client = start_region(
                &exe,
                rt,
                &region_dir(r.id),
                r,
                &meta_flags,
                &chunk_flags,
                &mut children,
            )?;
            clients.push((r.id, client));
        }
        rt.block_on(default_volume(&clients))?;
        let root = args.mount.clone().unwrap_or_else(|| data.join("mnt"));
        if !args.no_mount {
            std::fs::create_dir_all(&root)?;
            let root = root.canonicalize()?;
            for r in &layout.regions {
                let path = if n == 1 {
                    root.clone()
                } else {
                    root.join(r.id.to_string())
                };
                children.push(mount(&exe, r.id, &r.meta, &path, &region_dir(r.id))?);
            }
        }
        Ok(())
    })();
    let stop_all = |children: &mut Vec<DevProc>| {
        stop(children);
        let _ = stop_links.send(true);
        for t in &link_tasks {
            t.abort();
        }
    };
    if let Err(e) = result {
        stop_all(&mut children);
        return Err(e);
    }

    println!(
        "meridian dev: {} on loopback ({})",
        if n == 1 {
            "a region".to_string()
        } else {
            format!("{n} regions")
        },
        if first_run {
            "new"
        } else {
            "restarted, data kept"
        }
    );
    println!(
        "{:<6} {:<6} {:>3} {:<22} {:>8}  DATA",
        "REGION", "ROLE", "ID", "ADDRESS", "PID"
    );
    for c in &children {
        println!(
            "{:<6} {:<6} {:>3} {:<22} {:>8}  {}",
            c.region,
            c.role,
            c.id,
            c.addr,
            c.child.id(),
            c.data.display()
        );
    }
    for r in &layout.regions {
        println!("region {} metaservers: {}", r.id, r.meta.join(","));
    }
    for l in &layout.links {
        println!(
            "link {}-{}: fault proxy control {} (meridian admin link --proxy {} --cut | --heal | --delay-ms N)",
            l.a, l.b, l.control, l.control
        );
    }
    if !args.no_mount {
        for c in children.iter().filter(|c| c.role == "mount") {
            println!(
                "volume \"default\" of region {} is mounted at {}",
                c.region,
                c.data.display()
            );
        }
    }
    println!(
        "links: plaintext gRPC on loopback (dev only; a deployment runs every process with --tls DIR, see docs/security.md)"
    );
    println!("logs in {}; Ctrl-C stops everything", data.display());

    rt.block_on(crate::shutdown_signal());
    println!("meridian dev: stopping");
    stop_all(&mut children);
    Ok(())
}

fn is_mounted(path: &Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Stops children in reverse start order (the mount first, metaservers last).
fn stop(children: &mut Vec<DevProc>) {
    while let Some(mut c) = children.pop() {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while c.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.child.kill();
                let _ = c.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
