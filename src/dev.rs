//! `meridian dev`: a whole region on loopback (3 metaservers, 3 chunkservers in 3 zones, a
//! default volume), each server its own child process, mounted at one folder. The ports
//! are chosen on the first run and kept in the data folder, so a restart finds the same
//! group and the same data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use meridian_client::MetaClient;
use meridian_proto::NodeState;
use meridian_proto::ns::{Op, Query, VolumePolicy};
use meridian_proto::pb::meta::AddMemberRequest;
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use serde::{Deserialize, Serialize};

/// Options of `meridian dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Folder for every server's data and logs (kept across runs).
    #[arg(long, default_value = "meridian-dev")]
    pub data: PathBuf,
    /// Where to mount the default volume (default: DATA/mnt).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Start the servers but do not mount.
    #[arg(long)]
    pub no_mount: bool,
}

/// The ports chosen on the first run.
#[derive(Serialize, Deserialize)]
struct Layout {
    meta: BTreeMap<u64, String>,
    chunk: BTreeMap<u64, String>,
}

fn free_port() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

struct DevProc {
    role: &'static str,
    id: u64,
    addr: String,
    child: Child,
    data: PathBuf,
}

fn spawn(
    exe: &Path,
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
                "{} {} exited ({status}); see {}",
                c.role,
                c.id,
                log.display()
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

pub fn run(args: DevArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the meridian binary")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let data = args.data.canonicalize()?;
    let layout_path = data.join("dev-layout.toml");
    let first_run = !layout_path.exists();
    let layout: Layout = if first_run {
        let l = Layout {
            meta: (1..=3)
                .map(|i| Ok((i, free_port()?)))
                .collect::<Result<_>>()?,
            chunk: (1..=3)
                .map(|i| Ok((i, free_port()?)))
                .collect::<Result<_>>()?,
        };
        std::fs::write(&layout_path, toml::to_string(&l)?)?;
        l
    } else {
        toml::from_str(&std::fs::read_to_string(&layout_path)?)
            .context("dev-layout.toml is damaged")?
    };
    let meta_addrs: Vec<String> = layout.meta.values().cloned().collect();
    let meta_list = meta_addrs.join(",");

    let mut children: Vec<DevProc> = Vec::new();
    let result = (|| -> Result<()> {
        for (id, addr) in &layout.meta {
            let extra: Vec<String> = if *id == 1 {
                vec!["--init".into()]
            } else {
                vec![]
            };
            let mut c = spawn(&exe, "meta", *id, addr, &data, &extra)?;
            wait_listening(&data, &mut c)?;
            children.push(c);
        }
        let client = std::sync::Arc::new(MetaClient::new(meta_addrs.clone()));
        rt.block_on(async {
            let status = client.status().await?;
            let members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
            for (id, addr) in layout.meta.iter().filter(|(id, _)| !members.contains(id)) {
                let leader = client.status().await?.leader_address;
                let mut rpc = MetaServiceClient::connect(format!("http://{leader}")).await?;
                rpc.add_member(AddMemberRequest {
                    id: *id,
                    address: addr.clone(),
                    voter: true,
                })
                .await?;
            }
            anyhow::Ok(())
        })?;
        for ((id, addr), zone) in layout.chunk.iter().zip(["a", "b", "c"]) {
            let extra = vec![
                "--zone".to_string(),
                zone.into(),
                "--meta".into(),
                meta_list.clone(),
            ];
            let mut c = spawn(&exe, "chunk", *id, addr, &data, &extra)?;
            wait_listening(&data, &mut c)?;
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
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "chunkservers did not register in 30 s; see {}/chunk-*.log",
                        data.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if client
                .query(
                    &Query::Volume {
                        name: "default".into(),
                    },
                    false,
                )
                .await
                .is_err()
            {
                client
                    .mutate(&Op::CreateVolume {
                        name: "default".into(),
                        policy: VolumePolicy::default(),
                    })
                    .await?;
            }
            anyhow::Ok(())
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        stop(&mut children);
        return Err(e);
    }

    let mountpoint = args.mount.clone().unwrap_or_else(|| data.join("mnt"));
    if !args.no_mount {
        std::fs::create_dir_all(&mountpoint)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("mount.log"))?;
        let child = Command::new(&exe)
            .args([
                "mount",
                "--allow-other",
                "--meta",
                &meta_list,
                "--volume",
                "default",
            ])
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut c = DevProc {
            role: "mount",
            id: 0,
            addr: mountpoint.display().to_string(),
            child,
            data: mountpoint.clone(),
        };
        let start = Instant::now();
        while !is_mounted(&mountpoint) {
            if c.child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(30) {
                children.push(c);
                stop(&mut children);
                bail!(
                    "the mount did not come up; see {}/mount.log",
                    data.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        children.push(c);
    }

    println!(
        "meridian dev: a region on loopback ({})",
        if first_run {
            "new"
        } else {
            "restarted, data kept"
        }
    );
    println!(
        "{:<6} {:>3} {:<22} {:>8}  DATA",
        "ROLE", "ID", "ADDRESS", "PID"
    );
    for c in &children {
        println!(
            "{:<6} {:>3} {:<22} {:>8}  {}",
            c.role,
            c.id,
            c.addr,
            c.child.id(),
            c.data.display()
        );
    }
    println!("metaservers: {meta_list}");
    if !args.no_mount {
        println!("volume \"default\" is mounted at {}", mountpoint.display());
    }
    println!("logs in {}; Ctrl-C stops everything", data.display());

    rt.block_on(crate::shutdown_signal());
    println!("meridian dev: stopping");
    stop(&mut children);
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
