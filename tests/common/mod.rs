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

mod blocks;
mod cluster;
pub mod linearizability;
pub mod mesh;
mod mount;
pub mod pair;
mod process;
mod proxy;
mod slow_followers;
pub mod tls;

// Every test binary takes what it needs of these.
#[allow(unused_imports)]
pub use blocks::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use mount::*;
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use slow_followers::*;

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

/// Creates volume `name` through `client`: its root.
pub async fn new_volume(
    client: &meridian_client::MetaClient,
    name: &str,
) -> Result<meridian_proto::InodeId> {
    use meridian_proto::ns::{Op, Reply, VolumePolicy};
    match client
        .mutate(&Op::CreateVolume {
            name: name.into(),
            policy: VolumePolicy::default(),
        })
        .await?
    {
        Reply::Volume(v) => Ok(v.root),
        other => bail!("create volume {name}: {other:?}"),
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

/// Pieces of 512 bytes every 8 KiB in a new file `name` (holes between, so that no two
/// make one extent, as a database or an image written at random has), each of one byte
/// value (its number modulo 251, plus 1), made durable. Returns the file, open.
pub fn scattered(dir: &Path, name: &str, pieces: u64) -> Result<fs::File> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join(name))?;
    for i in 0..pieces {
        f.write_all_at(&[piece_byte(i); 512], i * 8192)?;
    }
    f.sync_all()?;
    Ok(f)
}

/// Whether the file at `path` is what [`scattered`] wrote, `pieces` pieces: its size, and
/// every `step`th piece and the last.
pub fn check_scattered(path: &Path, pieces: u64, step: usize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path)?;
    anyhow::ensure!(f.metadata()?.len() == (pieces - 1) * 8192 + 512);
    for i in (0..pieces).step_by(step).chain([pieces - 1]) {
        let mut piece = [0u8; 512];
        f.read_exact_at(&mut piece, i * 8192)?;
        anyhow::ensure!(piece == [piece_byte(i); 512], "piece {i} of {path:?}");
    }
    Ok(())
}

pub fn piece_byte(i: u64) -> u8 {
    (i % 251 + 1) as u8
}

/// `setxattr(2)` on `path`.
pub fn xattr_set(path: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (p, n) = (
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap(),
        std::ffi::CString::new(name).unwrap(),
    );
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `getxattr(2)` on `path` (a value of at most 64 KiB, the most Linux allows).
pub fn xattr_get(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (p, n) = (
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap(),
        std::ffi::CString::new(name).unwrap(),
    );
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: as above; the kernel writes at most buf.len() bytes.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// Every file under `dir` (at any depth) whose name ends with `end`.
/// Every log under `dir`, one after the other.
pub fn logs_under(dir: &Path) -> String {
    files_ending(dir, ".log")
        .iter()
        .filter_map(|log| fs::read_to_string(log).ok())
        .collect()
}

pub fn files_ending(dir: &Path, end: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if e.file_name().to_string_lossy().ends_with(end) {
                out.push(path);
            }
        }
    }
    out
}
