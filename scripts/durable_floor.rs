//! The floor of one durable round on this host, with nothing of Meridian in it.
//!
//!     scripts/durable_floor.sh [ROUNDS [BYTES]]   (compiles this with rustc and runs it)
//!
//! Three processes on loopback, as a mount and two members of a Raft group that the
//! mount's durable change needs (a majority of three): the client sends a change of BYTES
//! (512 by default, about a create's write-back; 5,632 is an fsync'd 4 KiB write's commit
//! with its block staged) to the "leader", which writes it to its log file, forwards it to
//! the "follower" and fdatasyncs; the follower writes and fdatasyncs it and tells the
//! client directly; the leader tells the client once its own sync returns. The client
//! counts the change durable with both answers, then sends the next, one at a time as the
//! bench's loops do. Plain blocking sockets (TCP_NODELAY) and `pwrite` + `fdatasync` over
//! log files whose space is written with zeros beforehand: no runtime, no HTTP/2, no
//! encoding, no Raft bookkeeping, no FUSE. Whatever a durable round costs on this host
//! beyond this is the software's.
//!
//! Each mode runs ROUNDS round trips and prints their rate, median and 90th percentile:
//! - `hops`: the same messages, no sync anywhere;
//! - `one-sync`: the follower syncs, the leader does not;
//! - `two-syncs`: both sync (what a durable change needs on a majority of three);
//! - `local-sync`: one process writing and syncing its own file, no messages.
//!
//! Std only, so that it compiles in seconds with `rustc -O` outside the workspace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

/// Log space written with zeros beforehand (the log wraps around in it).
const LOG_BYTES: u64 = 64 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(role @ ("leader" | "follower")) => {
            let serve = if role == "leader" { leader } else { follower };
            serve(
                &args[2],
                &args[3],
                Path::new(&args[4]),
                args[5] == "1",
                size(&args[6]),
            )
        }
        _ => {
            let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5000);
            let bytes = args.get(2).map_or(512, |b| size(b));
            let dir = std::env::var("FLOOR_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir())
                .join(format!("durable-floor.{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("make the floor's directory");
            println!("| mode | rounds/s | p50 (µs) | p90 (µs) |");
            println!("|---|---:|---:|---:|");
            local_sync(&dir, rounds, bytes);
            for (mode, leader_syncs, follower_syncs) in [
                ("hops", false, false),
                ("one-sync", false, true),
                ("two-syncs", true, true),
            ] {
                rounds_through_peers(&dir, mode, rounds, bytes, leader_syncs, follower_syncs);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn size(arg: &str) -> usize {
    arg.parse()
        .ok()
        .filter(|&b| b > 0 && b < 1 << 20)
        .expect("BYTES: 1 to 1 MiB")
}

/// A log file of [`LOG_BYTES`] zeros, synced, so that a write overwrites allocated space.
fn zeroed_log(path: &Path) -> File {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("open a log file");
    let zeros = vec![0u8; 1 << 20];
    for at in (0..LOG_BYTES).step_by(zeros.len()) {
        f.write_all_at(&zeros, at).expect("zero the log");
    }
    f.sync_all().expect("sync the zeroed log");
    f
}

/// Appends `msg` at the log's next place (wrapping), and syncs it if `sync`.
fn append(log: &File, at: &mut u64, msg: &[u8], sync: bool) {
    log.write_all_at(msg, *at).expect("write the log");
    *at = (*at + msg.len() as u64) % (LOG_BYTES - msg.len() as u64);
    if sync {
        log.sync_data().expect("fdatasync the log");
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("TCP_NODELAY");
    s
}

fn accept(l: &TcpListener) -> TcpStream {
    let (s, _) = l.accept().expect("accept");
    s.set_nodelay(true).expect("TCP_NODELAY");
    s
}

/// The leader: listens on `listen` for the client, forwards to the follower at `to`.
fn leader(listen: &str, to: &str, log: &Path, sync: bool, bytes: usize) {
    let log = zeroed_log(log);
    let l = TcpListener::bind(listen).expect("bind");
    let mut follower = connect(to);
    println!("ready");
    let mut client = accept(&l);
    let (mut msg, mut at) = (vec![0u8; bytes], 0u64);
    while client.read_exact(&mut msg).is_ok() {
        append(&log, &mut at, &msg, false);
        follower.write_all(&msg).expect("forward");
        if sync {
            log.sync_data().expect("fdatasync the log");
        }
        if client.write_all(b"L").is_err() {
            break;
        }
    }
}

/// The follower: listens on `listen` for the leader, tells the client at `notices`.
fn follower(listen: &str, notices: &str, log: &Path, sync: bool, bytes: usize) {
    let log = zeroed_log(log);
    let l = TcpListener::bind(listen).expect("bind");
    println!("ready");
    let mut leader = accept(&l);
    let mut client = connect(notices);
    let (mut msg, mut at) = (vec![0u8; bytes], 0u64);
    while leader.read_exact(&mut msg).is_ok() {
        append(&log, &mut at, &msg, sync);
        if client.write_all(b"F").is_err() {
            break;
        }
    }
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").to_string()
}

/// Prints one mode's row from the round trips' durations (ns).
fn report(mode: &str, mut took: Vec<u64>, elapsed: f64) {
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "| {mode} | {:.0} | {:.0} | {:.0} |",
        took.len() as f64 / elapsed,
        at(0.5),
        at(0.9)
    );
}

fn local_sync(dir: &Path, rounds: usize, bytes: usize) {
    let log = zeroed_log(&dir.join("local.log"));
    let (msg, mut at) = (vec![7u8; bytes], 0u64);
    let mut took = Vec::with_capacity(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        append(&log, &mut at, &msg, true);
        took.push(t.elapsed().as_nanos() as u64);
    }
    report("local-sync", took, start.elapsed().as_secs_f64());
}

/// Kills the peers when the round ends, however it ends.
struct Peers(Vec<Child>);

impl Drop for Peers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rounds_through_peers(
    dir: &Path,
    mode: &str,
    rounds: usize,
    bytes: usize,
    leader_syncs: bool,
    follower_syncs: bool,
) {
    let me = std::env::current_exe().expect("this program's path");
    let notices = TcpListener::bind("127.0.0.1:0").expect("bind");
    let notice_addr = notices.local_addr().expect("address").to_string();
    let (leader_addr, follower_addr) = (free_port(), free_port());
    let flag = |b: bool| if b { "1" } else { "0" };
    let mut peers = Peers(Vec::new());
    // Each peer says when it listens (its log zeroed): the follower first, which the
    // leader connects to.
    for (role, listen, to, syncs) in [
        ("follower", &follower_addr, &notice_addr, follower_syncs),
        ("leader", &leader_addr, &follower_addr, leader_syncs),
    ] {
        let mut child = Command::new(&me)
            .args([role, listen.as_str(), to.as_str()])
            .arg(dir.join(format!("{role}.log")))
            .arg(flag(syncs))
            .arg(bytes.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a peer");
        let mut ready = [0u8; 6];
        let said = child
            .stdout
            .take()
            .expect("its output")
            .read_exact(&mut ready);
        peers.0.push(child);
        said.expect("the peer's ready");
    }
    let mut from_follower = accept(&notices);
    let mut to_leader = connect(&leader_addr);
    let (msg, mut answer) = (vec![7u8; bytes], [0u8; 1]);
    let mut took = Vec::with_capacity(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        to_leader.write_all(&msg).expect("send");
        to_leader
            .read_exact(&mut answer)
            .expect("the leader's answer");
        from_follower
            .read_exact(&mut answer)
            .expect("the follower's notice");
        took.push(t.elapsed().as_nanos() as u64);
    }
    report(mode, took, start.elapsed().as_secs_f64());
    drop(to_leader);
    drop(peers);
}
