//! Replication lag between two regions: `meridian dev --regions 2` with 50 ms of one-way
//! delay injected on the link between them, a writer closing a 64 KiB file every 50 ms in
//! region 1, and watchers that note when each file is readable, with the right content,
//! in region 2 and (the baseline, same run) through a second mount of region 1.
//!
//! Then the link is cut for 60 s (`MERIDIAN_BENCH_CUT_SECS` to change it) while a writer
//! in each region goes on, and healed: the catch-up time is from the heal until each
//! region shows every file the other wrote during the cut. The backlog at the heal and
//! what the cut cost on disk (the dev data folder's growth, and the change-log records
//! each region keeps) are printed too.
//!
//! Before the cut, a volume with a home region (issue 17, `--home 1`) is written from both
//! regions: the time to write and close a small file in region 2, where each change is
//! forwarded to region 1 and answered once it is back in region 2, next to the same in
//! region 1, at 50 ms and at 0 ms of one-way delay.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench region_lag`). Under a test runner
//! it runs for a few seconds only, to check that it works.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const FILE_LEN: usize = 64 << 10;
const EVERY: Duration = Duration::from_millis(50);
const DELAY_MS: &str = "50";

/// `meridian dev --regions 2`, stopped (and unmounted) on drop.
struct Dev {
    child: Child,
    views: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = common::wait_for(Duration::from_secs(60), "dev to stop", || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        for r in ["1", "2"] {
            let m = self.views.join(r);
            if common::is_mounted(&m) {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
    }
}

/// What each file should hold, and when its writer closed it.
type Written = Arc<Mutex<HashMap<String, (blake3::Hash, Instant)>>>;

/// Watches `dir` and records, for each written file, the delay from its close to the first
/// time it was read back whole and right there.
fn watch(
    dir: PathBuf,
    written: Written,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<HashMap<String, Duration>> {
    thread::spawn(move || {
        let mut seen: HashMap<String, Duration> = HashMap::new();
        loop {
            let done = stop.load(Ordering::Relaxed);
            let expected = written.lock().unwrap().clone();
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if seen.contains_key(&name) {
                    continue;
                }
                let Some((hash, closed)) = expected.get(&name) else {
                    continue;
                };
                if let Ok(bytes) = fs::read(e.path())
                    && blake3::hash(&bytes) == *hash
                {
                    seen.insert(name, closed.elapsed());
                }
            }
            if done && expected.keys().all(|k| seen.contains_key(k)) {
                return seen;
            }
            thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Writes one file every [`EVERY`] into `dir` for `for_how_long`, named `prefix` and a
/// number counting from `first`; returns the next number.
fn write_load(
    dir: &Path,
    written: &Written,
    prefix: &str,
    first: usize,
    for_how_long: Duration,
) -> usize {
    let start = Instant::now();
    let mut i = first;
    while start.elapsed() < for_how_long {
        let tick = Instant::now();
        // Distinct content per writer: no block is shared between them.
        let seed = i as u64 | u64::from(prefix.as_bytes().first().copied().unwrap_or(0)) << 40;
        let data = common::random_bytes(seed, FILE_LEN);
        let name = format!("{prefix}{i:06}");
        let hash = blake3::hash(&data);
        fs::write(dir.join(&name), &data).expect("write in region 1");
        written.lock().unwrap().insert(name, (hash, Instant::now()));
        i += 1;
        if let Some(rest) = EVERY.checked_sub(tick.elapsed()) {
            thread::sleep(rest);
        }
    }
    i
}

/// Bytes of every file under `dir`.
/// Every metaserver log under `dir`, with its size now.
fn meta_log_sizes(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("meta-") && n.ends_with(".log"))
            {
                out.insert(p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    out
}

/// Records merged from the other region, and records redone around them, as the
/// metaservers logged since `since` (their log sizes then).
/// What the merges logged since `since` did: records applied, records redone, the
/// longest merge (milliseconds from proposing it to its outcome, replication, queueing and
/// commit included) with its applied and redone, and the longest time one merge held the
/// state machine applying.
fn merges_since(dir: &Path, since: &HashMap<PathBuf, u64>) -> (u64, u64, (u64, u64, u64), u64) {
    let (mut applied, mut redone, mut longest, mut held) = (0, 0, (0, 0, 0), 0);
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for (path, _) in meta_log_sizes(dir) {
        let Ok(bytes) = fs::read(&path) else { continue };
        let from = since.get(&path).copied().unwrap_or(0) as usize;
        let text = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
        for line in text
            .lines()
            .filter(|l| l.contains("merged records from peer region"))
        {
            applied += field(line, "applied=");
            redone += field(line, "redone=");
            let took = field(line, "took_ms=");
            if took >= longest.0 {
                longest = (took, field(line, "applied="), field(line, "redone="));
            }
            held = held.max(field(line, "apply_ms="));
        }
    }
    (applied, redone, longest, held)
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(lags: &HashMap<String, Duration>) -> (f64, f64, f64) {
    let mut v: Vec<Duration> = lags.values().copied().collect();
    v.sort();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    )
}

/// Writes and closes `n` files of 4 KiB under `root`, one after the other, by `writers`
/// threads at once; returns each file's time and the files per second.
fn timed_writes(root: &Path, tag: &str, n: usize, writers: usize) -> (Vec<Duration>, f64) {
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (root, tag) = (root.to_path_buf(), tag.to_string());
            thread::spawn(move || {
                let data = vec![7u8; 4096];
                (0..n / writers)
                    .map(|i| {
                        let t = Instant::now();
                        fs::write(root.join(format!("{tag}-{w}-{i}")), &data).expect("write");
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("writer"))
        .collect();
    all.sort();
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (all, rate)
}

/// How long reading each of `names` under `root` takes, sorted.
fn timed_reads(root: &Path, names: &[String]) -> Vec<Duration> {
    let mut all: Vec<Duration> = names
        .iter()
        .map(|name| {
            let t = Instant::now();
            fs::read(root.join(name)).expect("read");
            t.elapsed()
        })
        .collect();
    all.sort();
    all
}

/// Forwarded writes (issue 17): volume "ledger" with home region 1, written from both
/// regions at 50 ms and then 0 ms of one-way delay; reads in region 2 through the home
/// (`--linearizable`) and from its replica; then a planned move of the home to region 2
/// while region 1 writes, at 50 ms.
fn home_writes(region1: &str, region2: &str, control: &str, dir: &Path, full: bool) {
    admin(&[
        "volume-create",
        "--meta",
        region1,
        "ledger",
        "--regions",
        "1,2",
        "--home",
        "1",
    ]);
    common::wait_for(
        Duration::from_secs(60),
        "the home volume in region 2",
        || {
            admin(&["volumes", "--meta", region2])
                .contains("ledger")
                .then_some(())
        },
    )
    .expect("volume");
    let home = common::Mount::start(region1, "ledger", &dir.join("ledger-1")).expect("mount");
    let away = common::Mount::start(region2, "ledger", &dir.join("ledger-2")).expect("mount");
    let through = common::Mount::start_with(
        region2,
        "ledger",
        &dir.join("ledger-2l"),
        &["--linearizable"],
    )
    .expect("mount");
    let n = if full { 100 } else { 4 };
    for delay in [DELAY_MS, "0"] {
        admin(&["link", "--proxy", control, "--delay-ms", delay]);
        let (h, h_rate) = timed_writes(&home.path, &format!("h{delay}"), n, 1);
        let (a, a_rate) = timed_writes(&away.path, &format!("a{delay}"), n, 1);
        let (_, a4_rate) = timed_writes(&away.path, &format!("p{delay}"), n, 4);
        // Each file written away is at the home already.
        for w in 0..4 {
            assert!(home.path.join(format!("p{delay}-{w}-0")).exists());
        }
        println!(
            "home volume, {delay} ms each way: write+close of 4 KiB in region 2 (forwarded) p50 {:.0} ms, p99 {:.0} ms, {a_rate:.1} files/s ({a4_rate:.1}/s with 4 writers); in region 1 (home) p50 {:.0} ms, p99 {:.0} ms, {h_rate:.1} files/s",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&h, 0.5),
            percentile(&h, 0.99),
        );
        // Files the home wrote, read in region 2 once they are there.
        let names: Vec<String> = (0..n).map(|i| format!("h{delay}-0-{i}")).collect();
        common::wait_for(
            Duration::from_secs(60),
            "the home's files in region 2",
            || {
                names
                    .iter()
                    .all(|f| away.path.join(f).exists())
                    .then_some(())
            },
        )
        .expect("replicated");
        let lin = timed_reads(&through.path, &names);
        let local = timed_reads(&away.path, &names);
        println!(
            "home volume, {delay} ms each way: read of a 4 KiB file in region 2 through the home (--linearizable) p50 {:.0} ms, p99 {:.0} ms; from region 2's replica p50 {:.1} ms, p99 {:.1} ms",
            percentile(&lin, 0.5),
            percentile(&lin, 0.99),
            percentile(&local, 0.5),
            percentile(&local, 0.99),
        );
    }
    admin(&["link", "--proxy", control, "--delay-ms", DELAY_MS]);
    // A planned move of the home while the home writes: how long writes pause.
    let writer = {
        let root = home.path.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let data = vec![7u8; 4096];
            let mut times = Vec::new();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(6) {
                let t = Instant::now();
                fs::write(root.join(format!("moving-{i}")), &data).expect("write during the move");
                times.push((t.duration_since(started), t.elapsed()));
                i += 1;
            }
            times
        })
    };
    thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    admin(&["volume-promote", "--meta", region2, "ledger", "--to", "2"]);
    let took = asked.elapsed();
    let times = writer.join().expect("writer");
    let before: Vec<Duration> = {
        let mut v: Vec<Duration> = times
            .iter()
            .filter(|(at, d)| *at + *d < Duration::from_secs(2))
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        v
    };
    let longest = times.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "planned move of the home to region 2 at {DELAY_MS} ms each way, region 1 writing: the command took {:.0} ms; the longest write meanwhile {:.0} ms (p50 {:.0} ms at the home before, forwarded after); {} writes, none failed",
        took.as_secs_f64() * 1000.0,
        longest.as_secs_f64() * 1000.0,
        percentile(&before, 0.5),
        times.len()
    );
}

fn admin(args: &[&str]) -> String {
    let out = Command::new(common::MERIDIAN)
        .arg("admin")
        .args(args)
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let Some(full) = common::bench_mode("region_lag") else {
        return;
    };

    let cut_secs = std::env::var("MERIDIAN_BENCH_CUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let (load, cut) = if full {
        (Duration::from_secs(30), Duration::from_secs(cut_secs))
    } else {
        (Duration::from_secs(3), Duration::from_secs(2))
    };

    let dir = tempfile::Builder::new()
        .prefix("meridian-bench-lag-")
        .tempdir()
        .expect("dir");
    let data = dir.path().join("dev");
    let views = dir.path().join("views");
    let log = dir.path().join("dev.log");
    let out = fs::File::create(&log).expect("log");
    let child = Command::new(common::MERIDIAN)
        .args([
            "dev",
            "--regions",
            "2",
            "--link-delay-ms",
            DELAY_MS,
            "--data",
        ])
        .arg(&data)
        .arg("--mount")
        .arg(&views)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("meridian dev");
    let dev = Dev {
        child,
        views: views.clone(),
    };
    let printed = common::wait_for(Duration::from_secs(120), "meridian dev to start", || {
        let text = fs::read_to_string(&log).ok()?;
        text.contains("Ctrl-C stops everything").then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", common::log_tail(&log, 30)));
    let field = |prefix: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("dev prints {prefix:?}:\n{printed}"))
            .to_string()
    };
    let control = field("link 1-2: fault proxy control ");
    let region1 = field("region 1 metaservers: ");
    let baseline_mount =
        common::Mount::start(&region1, "default", &dir.path().join("same-region")).expect("mount");

    let (a, b) = (views.join("1"), views.join("2"));
    let written: Written = Arc::default();

    // Sustained load with the link delayed.
    let stop = Arc::new(AtomicBool::new(false));
    let far = watch(b.clone(), written.clone(), stop.clone());
    let near = watch(baseline_mount.path.clone(), written.clone(), stop.clone());
    let n = write_load(&a, &written, "f", 0, load);
    stop.store(true, Ordering::Relaxed);
    let (far, near) = (far.join().expect("watcher"), near.join().expect("watcher"));
    let (f50, f99, fmax) = summary(&far);
    let (n50, n99, nmax) = summary(&near);
    println!(
        "close in region 1 -> readable in region 2, {n} files of {} KiB in {} s ({:.1}/s), link delay {DELAY_MS} ms each way: p50 {f50:.0} ms, p99 {f99:.0} ms, max {fmax:.0} ms",
        FILE_LEN >> 10,
        load.as_secs(),
        n as f64 / load.as_secs_f64()
    );
    println!(
        "baseline, close -> readable through another mount of region 1: p50 {n50:.0} ms, p99 {n99:.0} ms, max {nmax:.0} ms (region 2 p50 is {:.1}x)",
        f50 / n50
    );

    let region2 = field("region 2 metaservers: ");
    home_writes(&region1, &region2, &control, dir.path(), full);

    // A cut: a writer in each region goes on; then heal and time the catch-up.
    // MERIDIAN_BENCH_CUT_DIRS=1: each region writes in its own directory during the cut
    // (the late records then meet none of the other region's).
    let own_dirs = std::env::var("MERIDIAN_BENCH_CUT_DIRS").is_ok_and(|v| v == "1");
    let (in1, in2) = if own_dirs {
        fs::create_dir(a.join("cut-1")).expect("mkdir");
        fs::create_dir(a.join("cut-2")).expect("mkdir");
        common::wait_for(
            Duration::from_secs(60),
            "the directories in region 2",
            || (b.join("cut-1").is_dir() && b.join("cut-2").is_dir()).then_some(()),
        )
        .expect("directories");
        ("cut-1", "cut-2")
    } else {
        ("", "")
    };
    let disk_before = disk_bytes(&data);
    admin(&["link", "--proxy", &control, "--cut"]);
    written.lock().unwrap().clear();
    let written_b: Written = Arc::default();
    let (b_dir, wb) = (b.join(in2), written_b.clone());
    let other = thread::spawn(move || write_load(&b_dir, &wb, "g", 0, cut));
    let m = write_load(&a.join(in1), &written, "f", n, cut);
    let m_b = other.join().expect("writer in region 2");
    let status = |meta: &str| -> serde_json::Value {
        serde_json::from_str(&admin(&["regions", "--json", "--meta", meta])).expect("json")
    };
    let (s1, s2) = (status(&region1), status(&region2));
    let disk_growth = disk_bytes(&data).saturating_sub(disk_before);
    let logs_at_heal = meta_log_sizes(&data);
    let healed = Instant::now();
    let stop = Arc::new(AtomicBool::new(true));
    admin(&["link", "--proxy", &control, "--heal"]);
    // Metadata caught up: each region has applied the other's whole change log.
    let (r1, r2) = (region1.clone(), region2.clone());
    let metadata = thread::spawn(move || {
        let status = |meta: &str| -> Option<serde_json::Value> {
            let out = Command::new(common::MERIDIAN)
                .args(["admin", "regions", "--json", "--meta", meta])
                .output()
                .ok()?;
            serde_json::from_slice(&out.stdout).ok()
        };
        loop {
            if let (Some(x), Some(y)) = (status(&r1), status(&r2)) {
                let has = |s: &serde_json::Value| s["peers"][0]["applied_seq"].as_u64();
                let head = |s: &serde_json::Value| s["head_seq"].as_u64();
                if has(&x) >= head(&y) && has(&y) >= head(&x) && has(&x).is_some() {
                    return healed.elapsed();
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let to_b = watch(b.join(in1), written.clone(), stop.clone());
    let to_a = watch(a.join(in2), written_b.clone(), stop);
    let (to_b, to_a) = (to_b.join().expect("watcher"), to_a.join().expect("watcher"));
    let catch_up = healed.elapsed();
    let metadata = metadata.join().expect("metadata watcher");
    let (merged, redone, longest, held) = merges_since(&data, &logs_at_heal);
    assert_eq!(
        to_b.len(),
        m - n,
        "every file region 1 wrote during the cut arrives"
    );
    assert_eq!(
        to_a.len(),
        m_b,
        "every file region 2 wrote during the cut arrives"
    );
    let behind = |s: &serde_json::Value| {
        let p = &s["peers"][0];
        format!(
            "{} ops and {} blocks behind, RPO {:.1} s, {} change-log records kept",
            p["ops_behind"],
            p["blocks_queued"],
            p["oldest_unshipped_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            s["kept"]["changelog_records"]
        )
    };
    println!(
        "cut for {} s while writing {} files in region 1 and {} in region 2 ({} MiB in all): at the heal, region 1 had {}; region 2 had {}; the data folder grew {} MiB; caught up {:.2} s after the heal",
        cut.as_secs(),
        m - n,
        m_b,
        ((m - n + m_b) * FILE_LEN) >> 20,
        behind(&s1),
        behind(&s2),
        disk_growth >> 20,
        catch_up.as_secs_f64()
    );
    println!(
        "after the heal{}: metadata caught up in {:.2} s; merging applied {merged} records from the other region and redid {redone} already applied ({:.2} redone per record)",
        if own_dirs {
            " (each region wrote in its own directory)"
        } else {
            " (both regions wrote in one directory)"
        },
        metadata.as_secs_f64(),
        redone as f64 / merged.max(1) as f64
    );
    println!(
        "the longest merge took {} ms from proposal to outcome, applying {} records and redoing {}; the longest any merge held the state machine applying: {held} ms",
        longest.0, longest.1, longest.2
    );
    drop(baseline_mount);
    drop(dev);
}
