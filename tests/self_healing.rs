//! A region heals itself (ADR 0004): scrub finds and replaces a rotten copy; a dead
//! chunkserver's blocks get back to R copies; a drained node ends empty; a new node takes
//! its share. Real processes, a real mount, faults injected from outside.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{MetaCluster, Mount, ServerProc, block_files, wait_for};

/// A region of 3 metaservers and `n` chunkservers that repair quickly.
struct Healing {
    meta: MetaCluster,
    chunks: Vec<ServerProc>,
    /// More chunkserver flags.
    extra: Vec<String>,
}

const ZONES: [&str; 5] = ["a", "b", "c", "d", "e"];

impl Healing {
    fn start(n: usize) -> Result<Healing> {
        Self::start_with(n, &[])
    }

    fn start_with(n: usize, extra: &[&str]) -> Result<Healing> {
        let meta =
            MetaCluster::start(3, &["--suspect-after-ms", "700", "--down-after-ms", "2000"])?;
        let mut h = Healing {
            meta,
            chunks: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            h.add_chunkserver(i as u64 + 1)?;
        }
        h.wait_up(n)?;
        h.admin(&["volume-create", "default"])?;
        Ok(h)
    }

    fn addrs(&self) -> String {
        self.meta.addrs().join(",")
    }

    fn add_chunkserver(&mut self, id: u64) -> Result<()> {
        let args = [
            "--zone",
            ZONES[(id as usize - 1) % ZONES.len()],
            "--meta",
            &self.addrs(),
            "--heartbeat-ms",
            "200",
            "--capacity",
            &(8u64 << 30).to_string(),
            "--repair-interval-ms",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.extra.iter().cloned())
        .collect();
        self.chunks
            .push(ServerProc::start("chunk", id, self.meta.dir.path(), args)?);
        Ok(())
    }

    fn wait_up(&self, n: usize) -> Result<()> {
        let addrs = self.addrs();
        wait_for(Duration::from_secs(30), "chunkservers up", || {
            let map = common::cluster_map(&addrs)?;
            (map.nodes
                .iter()
                .filter(|n| n.state == meridian_proto::NodeState::Up)
                .count()
                >= n)
                .then_some(())
        })
    }

    fn admin(&self, args: &[&str]) -> Result<String> {
        common::admin_at(&self.addrs(), args)
    }

    fn mount(&self, name: &str) -> Result<Mount> {
        Mount::start(&self.addrs(), "default", &self.meta.dir.path().join(name))
    }

    /// Block id -> the chunkservers (indexes) holding a file of it, over `live` ones.
    fn copies(&self, live: &[usize]) -> BTreeMap<String, Vec<usize>> {
        let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in live {
            for f in block_files(&self.chunks[i].data.join("blocks")) {
                out.entry(f).or_default().push(i);
            }
        }
        out
    }

    /// Waits until every block held by `live` nodes has exactly `r` copies among them
    /// (and none elsewhere in `live`), returning the map.
    fn wait_replicated(
        &self,
        live: &[usize],
        r: usize,
        what: &str,
        also: impl Fn(&BTreeMap<String, Vec<usize>>) -> bool,
    ) -> Result<BTreeMap<String, Vec<usize>>> {
        let mut last = BTreeMap::new();
        wait_for(Duration::from_secs(90), what, || {
            let c = self.copies(live);
            let ok = !c.is_empty() && c.values().all(|nodes| nodes.len() == r) && also(&c);
            last = c.clone();
            ok.then_some(c)
        })
        .with_context(|| {
            let short: Vec<_> = last.iter().filter(|(_, n)| n.len() != r).take(5).collect();
            format!("blocks not at {r} copies (first 5): {short:?}")
        })
    }
}

#[test]
fn scrub_quarantines_a_rotten_copy_and_restores_a_good_one_while_reads_stay_correct() -> Result<()>
{
    let h = Healing::start(3)?;
    let mnt = h.mount("mnt")?;
    let data = common::random_bytes(11, 1 << 20);
    fs::write(mnt.path.join("precious"), &data)?;
    let id = meridian_proto::BlockId::of(&data).to_hex();
    let path = common::block_file(&h.chunks[0].data, &id);
    let good = fs::read(&path)?;

    // Rot: flip bytes in the middle of node 1's copy.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 16] {
        *b ^= 0xa5;
    }
    fs::write(&path, &bad)?;

    // Reads through a fresh mount are still right (the client verifies, and falls back).
    let again = h.mount("mnt2")?;
    assert_eq!(fs::read(again.path.join("precious"))?, data);

    // Scrub finds it, moves it aside, and puts a good copy back.
    h.admin(&["scrub", "--now"])?;
    let quarantine = h.chunks[0].data.join("quarantine");
    wait_for(Duration::from_secs(30), "the rotten copy restored", || {
        let restored = fs::read(&path).ok()? == good;
        let aside = fs::read_dir(&quarantine)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&id));
        (restored && aside).then_some(())
    })?;
    let status: serde_json::Value = serde_json::from_str(&h.admin(&["scrub", "--json"])?)?;
    let node1 = &status[0];
    assert!(node1["corrupt_found"].as_u64() >= Some(1), "{status}");
    assert!(node1["restored"].as_u64() >= Some(1), "{status}");
    assert!(node1["quarantined_files"].as_u64() >= Some(1), "{status}");
    drop(again);
    drop(mnt);
    Ok(())
}

#[test]
fn a_killed_chunkserver_is_repaired_around_a_drained_one_empties_a_new_one_fills() -> Result<()> {
    let mut h = Healing::start(4)?;
    let mnt = h.mount("mnt")?;

    // kill -9 a chunkserver while a file is being written: the write and close succeed.
    let data = common::random_bytes(21, 200 << 20);
    let mut f = fs::File::create(mnt.path.join("big"))?;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        if i == 64 {
            h.chunks[3].kill();
        }
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    drop(f);
    assert_eq!(fs::read(mnt.path.join("big"))?, data);

    // After the grace period the node is down, and every block is back to 3 copies on
    // the live nodes.
    wait_for(Duration::from_secs(30), "node 4 marked down", || {
        h.admin(&["nodes"]).ok()?.contains(" down ").then_some(())
    })?;
    h.wait_replicated(
        &[0, 1, 2],
        3,
        "3 copies of every block on the live nodes",
        |_| true,
    )?;

    // Bring a fresh node 5 in: it takes its share, and nothing is over- or under-copied.
    h.add_chunkserver(5)?;
    h.wait_up(4)?;
    let live = [0, 1, 2, 4];
    h.wait_replicated(&live, 3, "rebalanced onto the new node", |c| {
        c.values().any(|n| n.contains(&4))
    })?;

    // Drain node 1: it ends empty, and every block still has 3 copies on the others.
    h.admin(&["drain", "1"])?;
    // The drain's progress is visible: node 1's copies count as still to move.
    wait_for(
        Duration::from_secs(30),
        "drain progress in admin nodes",
        || {
            let nodes: serde_json::Value =
                serde_json::from_str(&h.admin(&["nodes", "--json"]).ok()?).ok()?;
            let n1 = nodes.as_array()?.iter().find(|n| n["node"] == 1)?.clone();
            (n1["state"] == "draining" && n1["to_move_bytes"].as_u64()? > 0).then_some(())
        },
    )?;
    wait_for(Duration::from_secs(90), "node 1 to be empty", || {
        block_files(&h.chunks[0].data.join("blocks"))
            .is_empty()
            .then_some(())
    })?;
    h.wait_replicated(&[1, 2, 4], 3, "3 copies without the drained node", |_| true)?;
    assert_eq!(fs::read(mnt.path.join("big"))?, data);
    let repair: serde_json::Value = serde_json::from_str(&h.admin(&["repair", "--json"])?)?;
    let pushed: u64 = repair
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["copies_pushed"].as_u64())
        .sum();
    assert!(pushed > 0, "{repair}");
    drop(mnt);
    Ok(())
}

/// Where `data`'s block (a file of one block) lives: the node indexes holding it.
fn holders(h: &Healing, data: &[u8]) -> Vec<usize> {
    let id = meridian_proto::BlockId::of(data).to_hex();
    (0..h.chunks.len())
        .filter(|&i| block_files(&h.chunks[i].data.join("blocks")).contains(&id))
        .collect()
}

#[test]
fn deleted_files_blocks_are_collected_after_the_grace_and_shared_ones_are_kept() -> Result<()> {
    const GRACE_MS: u64 = 1500;
    let grace = GRACE_MS.to_string();
    let h = Healing::start_with(3, &["--gc-grace-ms", &grace, "--gc-interval-ms", "300"])?;
    let mnt = h.mount("mnt")?;
    let shared = common::random_bytes(31, 1 << 20);
    let alone = common::random_bytes(32, 1 << 20);
    let again = common::random_bytes(33, 1 << 20);
    fs::write(mnt.path.join("a"), &shared)?;
    fs::write(mnt.path.join("b"), &shared)?; // the same block (dedup)
    fs::write(mnt.path.join("c"), &alone)?;
    fs::write(mnt.path.join("e"), &again)?;
    for data in [&shared, &alone, &again] {
        wait_for(Duration::from_secs(10), "3 copies", || {
            (holders(&h, data).len() == 3).then_some(())
        })?;
    }

    let deleted_at = std::time::Instant::now();
    fs::remove_file(mnt.path.join("a"))?;
    fs::remove_file(mnt.path.join("c"))?;
    fs::remove_file(mnt.path.join("e"))?;

    // Both unreferenced blocks get condemned on every node (a's is shared with b: not).
    let condemned = || -> Option<Vec<u64>> {
        let gc: serde_json::Value = serde_json::from_str(&h.admin(&["gc", "--json"]).ok()?).ok()?;
        gc.as_array()?
            .iter()
            .map(|n| n["condemned"].as_u64())
            .collect()
    };
    wait_for(
        Duration::from_secs(60),
        "two blocks condemned on every node",
        || condemned()?.iter().all(|&n| n == 2).then_some(()),
    )?;
    // e's content is written again, as a new file, while its block is condemned: the put
    // reprieves it, and it must outlive the grace periods that follow.
    fs::write(mnt.path.join("f"), &again)?;

    // c's block goes from every node, and never before a grace period has passed.
    wait_for(
        Duration::from_secs(60),
        "c's block collected everywhere",
        || holders(&h, &alone).is_empty().then_some(()),
    )?;
    assert!(
        deleted_at.elapsed() >= Duration::from_millis(GRACE_MS),
        "collected {:?} after the delete, inside the grace period",
        deleted_at.elapsed()
    );
    std::thread::sleep(Duration::from_millis(3 * GRACE_MS));

    // b still holds the shared block: all copies are kept, and b and f read back.
    assert_eq!(
        holders(&h, &shared).len(),
        3,
        "a block b still uses was collected"
    );
    assert_eq!(holders(&h, &again).len(), 3, "f's block was collected");
    let fresh = h.mount("mnt2")?;
    assert_eq!(fs::read(fresh.path.join("b"))?, shared);
    assert_eq!(fs::read(fresh.path.join("f"))?, again);

    let gc: serde_json::Value = serde_json::from_str(&h.admin(&["gc", "--now", "--json"])?)?;
    for node in gc.as_array().context("gc --json is a list")? {
        assert!(node["deleted"].as_u64() >= Some(1), "{gc}");
        assert!(node["bytes_freed"].as_u64() >= Some(1), "{gc}");
        assert!(node["reprieved"].as_u64() >= Some(1), "{gc}");
        assert_eq!(node["condemned"], 0, "{gc}");
        assert_eq!(node["last_error"], "", "{gc}");
    }
    drop(fresh);
    drop(mnt);
    Ok(())
}

#[test]
fn a_snapshots_blocks_outlive_its_source_through_garbage_collection() -> Result<()> {
    const GRACE_MS: u64 = 1000;
    let grace = GRACE_MS.to_string();
    let h = Healing::start_with(3, &["--gc-grace-ms", &grace, "--gc-interval-ms", "300"])?;
    let mnt = h.mount("mnt")?;
    let kept = common::random_bytes(41, 1 << 20);
    let control = common::random_bytes(42, 1 << 20);
    fs::create_dir(mnt.path.join("d"))?;
    fs::write(mnt.path.join("d/kept"), &kept)?;
    fs::write(mnt.path.join("control"), &control)?;
    for data in [&kept, &control] {
        wait_for(Duration::from_secs(10), "3 copies", || {
            (holders(&h, data).len() == 3).then_some(())
        })?;
    }
    fs::remove_file(mnt.path.join("control"))?;
    let said = h.admin(&["volume-snapshot", "default", "snap"])?;
    assert!(said.contains("snapshot snap of default"), "{said}");
    // The source lets go of the file the snapshot holds.
    fs::remove_file(mnt.path.join("d/kept"))?;

    // GC runs (the control block, referenced by nothing, goes everywhere) and keeps the
    // block only the snapshot references.
    wait_for(
        Duration::from_secs(60),
        "the control block collected",
        || holders(&h, &control).is_empty().then_some(()),
    )?;
    let gc: serde_json::Value = serde_json::from_str(&h.admin(&["gc", "--now", "--json"])?)?;
    assert!(
        gc.as_array()
            .context("gc --json is a list")?
            .iter()
            .all(|n| n["last_error"] == ""),
        "{gc}"
    );
    assert_eq!(
        holders(&h, &kept).len(),
        3,
        "a snapshot's block was collected"
    );
    let listed = h.admin(&["snapshots"])?;
    assert!(
        listed.contains("snap") && listed.contains("default"),
        "{listed}"
    );
    let snap = Mount::start(&h.addrs(), "snap", &h.meta.dir.path().join("snap"))?;
    assert_eq!(fs::read(snap.path.join("d/kept"))?, kept);
    let e = fs::write(snap.path.join("d/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    drop(snap);

    // Deleted, the snapshot gives its blocks back.
    h.admin(&["volume-delete", "snap"])?;
    wait_for(
        Duration::from_secs(60),
        "the snapshot's block collected",
        || holders(&h, &kept).is_empty().then_some(()),
    )?;
    drop(mnt);
    Ok(())
}

/// What one file of a write storm came to: its name, content, when it ended, and the
/// errno if any step (create, write, fsync, close) failed.
type Outcome = (String, Vec<u8>, std::time::Instant, Result<(), i32>);

/// Writes files `prefix0`, `prefix1`, … in `dir` (create, write, fsync, close) until
/// `stop` is set, and says how each went.
fn write_storm(
    dir: std::path::PathBuf,
    prefix: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Outcome>> {
    std::thread::spawn(move || {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut i = 0u64;
        // A mount that died leaves the bare directory behind: files written there would
        // not be on the filesystem under test. The check before each file can pass just
        // before a lazy unmount lands, so each file is also checked to be on the mount's
        // device; one that is not ends the storm and is not counted.
        let device = fs::metadata(&dir).map(|m| m.dev()).unwrap_or(0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && common::is_mounted(&dir) {
            let name = format!("{prefix}{i}");
            let data =
                common::random_bytes(1000 + i, (48 << 10) + (i as usize * 7919) % (200 << 10));
            let mut beside = false;
            let written = (|| -> std::io::Result<()> {
                let mut f = fs::File::create(dir.join(&name))?;
                if f.metadata()?.dev() != device {
                    beside = true;
                    return Ok(());
                }
                f.write_all(&data)?;
                f.sync_all()?;
                drop(f);
                Ok(())
            })();
            if beside {
                break; // the mount is gone: that file went to the bare directory
            }
            let errno = written.map_err(|e| e.raw_os_error().unwrap_or(-1));
            // ENOTCONN, or ECONNABORTED for a request the dying server never answered.
            let gone = errno == Err(ENOTCONN) || errno == Err(ECONNABORTED);
            out.push((name, data, std::time::Instant::now(), errno));
            if gone {
                break; // the mount process died
            }
            i += 1;
        }
        out
    })
}

#[test]
fn killing_the_metaserver_leader_mid_write_fails_nothing_silently() -> Result<()> {
    let mut h = Healing::start(3)?;
    let mnt = h.mount("mnt")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = write_storm(mnt.path.clone(), "f", stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let leader = h.meta.wait_leader()?;
    let killed_at = std::time::Instant::now();
    h.meta.nodes[leader].kill();
    let new_leader = h.meta.wait_leader()?;
    assert_ne!(leader, new_leader);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = storm.join().expect("the writer thread");

    // The application saw success, or a clear EIO: nothing else.
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(n, _, _, r)| r.err().map(|e| (n, e)))
        .collect();
    assert!(
        failed.iter().all(|(_, e)| *e == libc_eio()),
        "errors other than EIO: {failed:?}"
    );
    let after = outcomes
        .iter()
        .filter(|(_, _, at, r)| *at > killed_at && r.is_ok())
        .count();
    assert!(after > 0, "no file was written after the leader died");
    eprintln!(
        "{} files, {} failed with EIO, {after} written after the kill",
        outcomes.len(),
        failed.len()
    );

    // Every file whose fsync and close succeeded is intact, seen from a fresh mount.
    let fresh = h.mount("mnt2")?;
    for (name, data, _, r) in &outcomes {
        if r.is_ok() {
            let got = fs::read(fresh.path.join(name)).with_context(|| format!("reading {name}"))?;
            assert!(got == *data, "{name} differs after the leader change");
        }
    }
    drop(fresh);
    drop(mnt);
    Ok(())
}

fn libc_eio() -> i32 {
    5
}

const ENOTCONN: i32 = 107;
const ECONNABORTED: i32 = 103;

/// `meridian admin fsck --json`: the report, and whether it exited cleanly.
fn fsck(h: &Healing) -> Result<(serde_json::Value, bool)> {
    common::fsck(&h.addrs())
}

#[test]
fn killing_every_process_mid_storm_keeps_every_fsynced_file_and_fsck_comes_clean() -> Result<()> {
    let mut h = Healing::start(3)?;
    let mnt = h.mount("mnt")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = write_storm(mnt.path.clone(), "s", stop.clone());
    std::thread::sleep(Duration::from_secs(3));

    // kill -9 everything at once: chunkservers, metaservers and the mount.
    for c in &mut h.chunks {
        c.kill();
    }
    for m in &mut h.meta.nodes {
        m.kill();
    }
    drop(mnt);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = storm.join().expect("the writer thread");
    let synced = outcomes.iter().filter(|o| o.3.is_ok()).count();
    assert!(synced > 0, "nothing was fsync'd before the kill");

    // Restart everything where it was.
    for m in &mut h.meta.nodes {
        let addr = m.addr.clone();
        m.restart_on(&addr)?;
    }
    h.meta.wait_leader()?;
    for c in &mut h.chunks {
        let addr = c.addr.clone();
        c.restart_on(&addr)?;
    }
    h.wait_up(3)?;

    // Every file whose fsync succeeded is intact.
    let fresh = h.mount("mnt2")?;
    for (name, data, _, r) in &outcomes {
        if r.is_ok() {
            let got = fs::read(fresh.path.join(name)).with_context(|| format!("reading {name}"))?;
            assert!(got == *data, "{name} differs after the restart");
        }
    }

    // The metadata is consistent and no referenced block is lost or bad. A block the kill
    // left with fewer than R copies may be short until repair catches up: then clean.
    let (report, _) = fsck(&h)?;
    for section in ["namespace", "missing", "corrupt"] {
        assert_eq!(
            report[section],
            serde_json::json!([]),
            "{section}: {report}"
        );
    }
    assert!(report["blocks"].as_u64() >= Some(synced as u64), "{report}");
    h.admin(&["repair", "--now"])?;
    wait_for(Duration::from_secs(60), "fsck to come clean", || {
        fsck(&h).ok().filter(|(_, clean)| *clean)
    })?;
    eprintln!(
        "{} files, {synced} fsync'd before the kill; fsck at first: {} short",
        outcomes.len(),
        report["short"].as_array().map_or(0, Vec::len)
    );

    // fsck tells when data is really gone: remove every copy of one file's block.
    let (_, lost, _, _) = outcomes
        .iter()
        .find(|o| o.3.is_ok())
        .expect("a synced file");
    let id = meridian_proto::BlockId::of(lost).to_hex();
    // Every chunkserver down before any comes back: one restarted while another still
    // held the block could have its copy back by a repair pass.
    for c in &mut h.chunks {
        c.kill();
    }
    for c in &mut h.chunks {
        common::remove_block(&c.data, &id)?;
    }
    for c in &mut h.chunks {
        let addr = c.addr.clone();
        c.restart_on(&addr)?;
    }
    h.wait_up(3)?;
    let (report, clean) = fsck(&h)?;
    assert!(!clean, "fsck exited 0 with a block gone: {report}");
    let missing = report["missing"].to_string();
    assert!(missing.contains(&id), "{report}");
    drop(fresh);
    Ok(())
}
