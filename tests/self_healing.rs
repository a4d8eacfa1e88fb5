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
}

const ZONES: [&str; 5] = ["a", "b", "c", "d", "e"];

impl Healing {
    fn start(n: usize) -> Result<Healing> {
        let meta =
            MetaCluster::start(3, &["--suspect-after-ms", "700", "--down-after-ms", "2000"])?;
        let mut h = Healing {
            meta,
            chunks: Vec::new(),
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
    let path = h.chunks[0]
        .data
        .join("blocks")
        .join(&id[0..2])
        .join(&id[2..4])
        .join(&id);
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
