//! What the node service staged and published, on disk: one record per staging path,
//! written atomically, so a restarted plugin knows its mounts. And the `meridian mount`
//! processes that serve the staged volumes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::mounts;

/// A volume mounted at a staging path, and where it is bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The volume.
    pub volume: String,
    /// The staging path (the FUSE mount).
    pub staging: PathBuf,
    /// The serving process, when known.
    pub pid: Option<u32>,
    /// Targets bound from it.
    #[serde(default)]
    pub published: BTreeMap<PathBuf, Published>,
}

/// One bind mount of a staged volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The folder of the volume bound (empty: its root).
    pub sub: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
}

/// The records, one file each under `<state>/staged/`.
pub struct Records {
    dir: PathBuf,
    logs: PathBuf,
}

fn key(staging: &Path) -> String {
    let h = blake3::hash(staging.as_os_str().as_encoded_bytes()).to_hex();
    h[..24].to_string()
}

impl Records {
    pub fn open(state: &Path) -> io::Result<Self> {
        let dir = state.join("staged");
        let logs = state.join("logs");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&logs)?;
        Ok(Records { dir, logs })
    }

    fn path(&self, staging: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", key(staging)))
    }

    /// The file holding the volume access token of the mount at a staging path (from the
    /// volume's node-stage secret).
    pub fn token(&self, staging: &Path) -> PathBuf {
        self.dir.join(format!("{}.token", key(staging)))
    }

    /// Keeps `token` for the mount at `staging`: mode 0600, written atomically.
    pub fn put_token(&self, staging: &Path, token: &str) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.token(staging);
        let tmp = path.with_extension("token-tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets the token of the mount at `staging`.
    pub fn remove_token(&self, staging: &Path) -> io::Result<()> {
        match fs::remove_file(self.token(staging)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The mount process's log for a staging path.
    pub fn log(&self, staging: &Path) -> PathBuf {
        self.logs.join(format!("{}.log", key(staging)))
    }

    pub fn get(&self, staging: &Path) -> io::Result<Option<Staged>> {
        match fs::read(self.path(staging)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every record (unreadable ones are reported and skipped).
    pub fn all(&self) -> Vec<Staged> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| match fs::read(e.path()).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(s)) => Some(s),
                other => {
                    tracing::warn!(path = %e.path().display(), ?other, "unreadable staging record");
                    None
                }
            })
            .collect()
    }

    /// Writes a record durably (temp file, fsync, rename, fsync of the folder).
    pub fn put(&self, s: &Staged) -> io::Result<()> {
        let path = self.path(&s.staging);
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(s).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    pub fn remove(&self, staging: &Path) -> io::Result<()> {
        match fs::remove_file(self.path(staging)) {
            Ok(()) => fs::File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether `pid` is a `meridian mount` of `staging` (a pid from an earlier run may have
/// been reused by something else).
pub fn is_mount_process(pid: u32, staging: &Path) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
    args.contains(&&b"mount"[..]) && args.contains(&staging.as_os_str().as_encoded_bytes())
}

/// Starts `meridian mount` of `volume` at `staging` and waits until the kernel shows the
/// mount. The process gets its own process group, so signals meant for the plugin do
/// not reach it.
pub fn start_mount(
    meta: &[String],
    volume: &str,
    staging: &Path,
    flags: &[String],
    log: &Path,
) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = Command::new(exe)
        .arg("mount")
        .arg("--meta")
        .arg(meta.join(","))
        .arg("--volume")
        .arg(volume)
        .arg("--allow-other")
        .args(
            meridian_proto::tls::current()
                .map(|t| [OsString::from("--tls"), t.dir.clone().into()])
                .into_iter()
                .flatten(),
        )
        .args(flags)
        .arg(staging)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    loop {
        if mounts::mounted_at(staging).is_some_and(|m| m.fstype.starts_with("fuse")) {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "meridian mount of {volume} exited ({status}): {}",
                tail(log)
            )));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "meridian mount of {volume} did not come up in 30 s: {}",
                    tail(log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Asks a mount process to unmount cleanly (SIGTERM: it sends what it holds first) and
/// waits up to `patience` for it to go; then kills it.
pub fn stop_mount(child: Option<Child>, pid: Option<u32>, staging: &Path, patience: Duration) {
    let pid = child.as_ref().map(Child::id).or(pid);
    let Some(pid) = pid else { return };
    if child.is_none() && !is_mount_process(pid, staging) {
        return;
    }
    // SAFETY: kill(2) with a pid checked above to be the mount's, and a valid signal.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    let mut child = child;
    loop {
        let gone = match child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !is_mount_process(pid, staging),
        };
        if gone {
            return;
        }
        if start.elapsed() > patience {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            if let Some(c) = child.as_mut() {
                let _ = c.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
