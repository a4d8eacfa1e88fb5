//! One volume with many files (1,000,000 by default): create, stat and list rates as the
//! namespace grows, the metaservers' memory and disk per inode, a snapshot of all of it
//! (built and streamed to a member that joins afterwards), and a member killed while a
//! tenth more files are made catching up once started again, on a 3-member group on
//! loopback.
//!
//! The files are spread over 1,000 directories and created by 64 concurrent requests (a
//! busy cluster, not one shell loop). The create rate is printed for every tenth of the
//! files, so a rate that falls as the namespace grows shows. Set MERIDIAN_SCALE_FILES to
//! change the count, MERIDIAN_SCALE_CACHE_MIB the members' state page cache. Run with
//! `scripts/bench.sh` (or `cargo bench --bench scale`); under a test runner it creates
//! 2,000 files, to check that it works.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::{MetaCluster, create_op, mkdir_op};
use futures::StreamExt;
use meridian_client::MetaClient;
use meridian_proto::InodeId;
use meridian_proto::ns::*;

const DIRS: u64 = 1000;
const CONCURRENCY: usize = 64;

fn ino(reply: Reply) -> InodeId {
    match reply {
        Reply::Attr(a) => a.ino,
        Reply::Volume(v) => v.root,
        other => panic!("unexpected {other:?}"),
    }
}

/// Resident memory of the process serving from `data`, in bytes.
fn rss_of(data: &Path) -> u64 {
    status_of(data, "VmRSS:")
}

/// The most resident memory the process serving from `data` has had, in bytes.
fn peak_of(data: &Path) -> u64 {
    status_of(data, "VmHWM:")
}

/// A size in `/proc/PID/status` (`field`, in kB) of the process serving from `data`, in
/// bytes.
fn status_of(data: &Path, field: &str) -> u64 {
    let want = data.to_string_lossy().to_string();
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).split('\0').any(|a| a == want)
            && let Ok(status) = std::fs::read_to_string(p.path().join("status"))
            && let Some(line) = status.lines().find(|l| l.starts_with(field))
        {
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            return kb * 1024;
        }
    }
    0
}

fn disk_of(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            disk_of(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn main() {
    let Some(full) = common::bench_mode("scale") else {
        return;
    };
    let files: u64 = if full {
        std::env::var("MERIDIAN_SCALE_FILES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        2_000
    };
    // MERIDIAN_SCALE_CACHE_MIB: the members' state page cache (redb's 1,024 MiB unless set).
    let cache: Vec<String> = std::env::var("MERIDIAN_SCALE_CACHE_MIB")
        .ok()
        .filter(|_| full)
        .map(|mib| vec!["--state-cache-mib".to_string(), mib])
        .unwrap_or_default();
    let cache: Vec<&str> = cache.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut cluster = MetaCluster::start(3, &cache).expect("metaserver group");
    let client = MetaClient::new(cluster.addrs());
    let data: Vec<_> = cluster.nodes.iter().map(|n| n.data.clone()).collect();
    let (rss0, disk0) = (rss_of(&data[0]), disk_of(&data[0]));

    let root = ino(rt
        .block_on(client.mutate(&Op::CreateVolume {
            name: "scale".into(),
            policy: VolumePolicy::default(),
        }))
        .expect("volume"));
    let dirs: Vec<InodeId> = (0..DIRS)
        .map(|d| {
            ino(rt
                .block_on(client.mutate(&mkdir_op(root, &format!("d{d:04}"))))
                .expect("dir"))
        })
        .collect();

    println!("scale: {files} files in {DIRS} directories, {CONCURRENCY} requests in flight");
    println!("| files so far | create rate in this tenth (files/s) |");
    println!("|---:|---:|");
    // Files `from..to`, CONCURRENCY at a time.
    let create = |from: u64, to: u64| -> Vec<InodeId> {
        rt.block_on(
            futures::stream::iter(from..to)
                .map(|i| {
                    let op = create_op(dirs[(i % DIRS) as usize], &format!("file-{i:07}"));
                    let client = &client;
                    async move { ino(client.mutate(&op).await.expect("create")) }
                })
                .buffer_unordered(CONCURRENCY)
                .collect(),
        )
    };
    let mut inodes = Vec::with_capacity(files as usize);
    let started = Instant::now();
    let tenth = (files / 10).max(1);
    for part in 0..files.div_ceil(tenth) {
        let from = part * tenth;
        let to = (from + tenth).min(files);
        let t = Instant::now();
        inodes.extend(create(from, to));
        println!(
            "| {to} | {:.0} |",
            (to - from) as f64 / t.elapsed().as_secs_f64()
        );
    }
    let create_rate = files as f64 / started.elapsed().as_secs_f64();

    let stats = inodes.len().min(100_000);
    let t = Instant::now();
    rt.block_on(
        futures::stream::iter(inodes.iter().step_by((inodes.len() / stats).max(1)))
            .map(|ino| {
                let client = &client;
                async move {
                    client
                        .query(&Query::GetAttr { ino: *ino }, false)
                        .await
                        .expect("getattr")
                }
            })
            .buffer_unordered(CONCURRENCY)
            .for_each(|_| async {}),
    );
    let stat_rate = stats as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut listed = 0u64;
    for d in &dirs {
        let mut after = None;
        loop {
            let q = Query::ReadDir {
                ino: *d,
                after: after.take(),
                limit: 1000,
                creds: Creds::root(),
            };
            match rt.block_on(client.query(&q, false)).expect("readdir") {
                QueryReply::Dir { entries, next } => {
                    listed += entries.len() as u64;
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let list_rate = listed as f64 / t.elapsed().as_secs_f64();
    assert_eq!(listed, files, "every file listed");

    let (rss, peak, disk) = (rss_of(&data[0]), peak_of(&data[0]), disk_of(&data[0]));
    // A member joining now gets the namespace as a snapshot, streamed.
    let t = Instant::now();
    cluster.add_member(4).expect("a fourth member catches up");
    let joined = t.elapsed();
    let rss4 = rss_of(&cluster.nodes[3].data);

    // A member down while a tenth more files are made catches up when it comes back: it
    // reads its own log again and gets the rest from the leader's (or a snapshot).
    let leader = cluster.wait_leader().expect("a leader");
    let down = (0..3).find(|i| *i != leader).expect("a follower");
    cluster.nodes[down].kill();
    let missed = create(files, files + tenth).len();
    let target = cluster.status(leader).expect("leader status").last_applied;
    let addr = cluster.nodes[down].addr.clone();
    let t = Instant::now();
    cluster.nodes[down].restart_on(&addr).expect("restart");
    let back = cluster.status(down).map_or(0, |s| s.last_applied);
    common::wait_for(
        std::time::Duration::from_secs(1200),
        "the member that was down to catch up",
        || cluster.status(down).filter(|s| s.last_applied >= target),
    )
    .expect("the member that was down catches up");
    let caught_up = t.elapsed();

    let per = |bytes: u64, base: u64| bytes.saturating_sub(base) as f64 / files as f64;
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| create, files/s (whole run) | {create_rate:.0} |");
    println!("| stat (linearizable getattr), files/s | {stat_rate:.0} |");
    println!("| list (readdir pages of 1,000), entries/s | {list_rate:.0} |");
    println!(
        "| member 1 resident memory | {} MiB ({:.0} B per inode) |",
        rss >> 20,
        per(rss, rss0)
    );
    println!("| member 1 peak resident memory | {} MiB |", peak >> 20);
    println!(
        "| member 1 data on disk (state, log, snapshots) | {} MiB ({:.0} B per inode) |",
        disk >> 20,
        per(disk, disk0)
    );
    println!(
        "| a new member joins (snapshot streamed, installed) | {:.1} s, {} MiB resident |",
        joined.as_secs_f64(),
        rss4 >> 20
    );
    println!(
        "| a member down for {missed} creates catches up (restart included) | {:.1} s ({} entries behind once listening) |",
        caught_up.as_secs_f64(),
        target.saturating_sub(back)
    );
}
