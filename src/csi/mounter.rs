//! `meridian csi-mounter`: the process that starts and stops the node's mounts for the
//! CSI node plugin, so the mounts are not the plugin's children. In Kubernetes it runs in
//! a container of its own beside the plugin's: restarting the plugin's container (an
//! upgrade, a crash) kills every process in it, and the mounts, being the mounter's, stay.
//! The two speak over a unix socket in a folder both containers share, one JSON request
//! and one JSON answer per line.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{checks, staging};

/// Options of `meridian csi-mounter`.
#[derive(Args)]
pub struct MounterArgs {
    /// The socket to listen on: `unix:///path` (or a bare path).
    #[arg(long)]
    pub endpoint: String,
    /// Folders staging paths must lie in (comma-separated); any other path is refused.
    #[arg(long, value_delimiter = ',', default_value = "/var/lib/kubelet")]
    pub kubelet_dir: Vec<PathBuf>,
    /// Where the mounts' output goes (one file per staging path).
    #[arg(long, default_value = "/var/lib/meridian-csi/mounter-logs")]
    pub log_dir: PathBuf,
}

/// What the node plugin asks.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ask {
    /// Mount `volume` at `staging`.
    Mount {
        volume: String,
        staging: PathBuf,
        meta: Vec<String>,
        flags: Vec<String>,
    },
    /// Unmount what is at `staging` (cleanly: the mount sends what it holds first), and
    /// stop its process (`pid` when the mounter does not know it: an earlier run's).
    Stop { staging: PathBuf, pid: Option<u32> },
}

/// The answer: the mount's process id, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Mounted(u32),
    Stopped,
    Failed(String),
}

/// Sends one request to the mounter at `socket` and waits for its answer.
pub fn ask(socket: &Path, ask: &Ask) -> std::io::Result<Answer> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(ask).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the mounter answered {reply:?}: {e}"),
        )
    })
}

struct Mounter {
    roots: Vec<PathBuf>,
    log_dir: PathBuf,
    children: Mutex<HashMap<PathBuf, Child>>,
}

impl Mounter {
    fn handle(&self, ask: Ask) -> Answer {
        match ask {
            Ask::Mount {
                volume,
                staging,
                meta,
                flags,
            } => {
                if let Err(s) = self.allowed(&volume, &staging) {
                    return Answer::Failed(s);
                }
                // The log's place is the mounter's to choose, never the asker's.
                let key = blake3::hash(staging.as_os_str().as_encoded_bytes()).to_hex();
                let log = self.log_dir.join(format!("{}.log", &key[..24]));
                if super::mounts::mounted_at(&staging).is_some()
                    && let Err(e) = super::mounts::unmount(&staging)
                {
                    return Answer::Failed(format!("detaching a dead mount: {e}"));
                }
                if let Err(e) = std::fs::create_dir_all(&staging) {
                    return Answer::Failed(format!("creating {}: {e}", staging.display()));
                }
                match staging::start_mount(&meta, &volume, &staging, &flags, &log) {
                    Ok(child) => {
                        let pid = child.id();
                        let old = self.children.lock().unwrap().insert(staging, child);
                        if let Some(mut old) = old {
                            let _ = old.kill();
                            let _ = old.wait();
                        }
                        tracing::info!(%volume, pid, "mounted");
                        Answer::Mounted(pid)
                    }
                    Err(e) => Answer::Failed(e.to_string()),
                }
            }
            Ask::Stop { staging, pid } => {
                if let Err(s) = self.allowed("x", &staging) {
                    return Answer::Failed(s);
                }
                let child = self.children.lock().unwrap().remove(&staging);
                staging::stop_mount(child, pid, &staging, Duration::from_secs(90));
                match super::mounts::unmount(&staging) {
                    Ok(()) => Answer::Stopped,
                    Err(e) => Answer::Failed(format!("unmounting: {e}")),
                }
            }
        }
    }

    fn allowed(&self, volume: &str, staging: &Path) -> Result<(), String> {
        checks::volume_id(volume).map_err(|s| s.message().to_string())?;
        checks::confined(&staging.display().to_string(), &self.roots, "staging path")
            .map(drop)
            .map_err(|s| s.message().to_string())
    }

    fn reap(&self) {
        self.children
            .lock()
            .unwrap()
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}

fn serve_one(m: &Mounter, conn: UnixStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let answer = match serde_json::from_str::<Ask>(&line) {
        Ok(ask) => m.handle(ask),
        Err(e) => Answer::Failed(format!("unreadable request: {e}")),
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}

pub fn run(args: MounterArgs) -> Result<()> {
    let path = super::socket_path(&args.endpoint)?;
    let roots = checks::roots(&args.kubelet_dir)?;
    super::clear_socket(&path)?;
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("create {}", args.log_dir.display()))?;
    let m = Arc::new(Mounter {
        roots,
        log_dir: args.log_dir.clone(),
        children: Mutex::new(HashMap::new()),
    });
    {
        let m = m.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                m.reap();
            }
        });
    }
    println!("meridian csi-mounter serving on unix://{}", path.display());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let m = m.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&m, conn) {
                tracing::warn!(error = %e, "a mounter request failed");
            }
        });
    }
    Ok(())
}
