//! A node looks after the blocks it holds (ADR 0004). The repair pass works out each
//! block's homes from the placement and pushes a copy to every home that lacks one.
//! Copies this node holds without being a home are dropped once all R homes confirm theirs:
//! that covers re-replication after a failure, the return of hinted handoffs, drain and
//! rebalance. The scrub re-hashes every block at a bounded rate, moves a bad copy aside to
//! quarantine, and replaces it with a verified copy from another node.

use meridian_proto::physical_ms;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::{BlockClient, MetaClient};
use meridian_proto::channels::{ChannelPool, Timeouts};
use meridian_proto::pb::chunk::{GcStatus, RepairStatus, ScrubStatus};
use meridian_proto::{BlockId, NodeId, NodeInfo, placement};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::error::ChunkError;
use crate::ledger::Ledger;
use crate::map::MapView;
use crate::store::BlockStore;
use crate::tasks::lock;

/// Blocks asked about per `Has` call in a repair pass.
const HAS_BATCH: usize = 1024;

/// How the background work runs.
#[derive(Clone, Debug)]
pub struct MaintainConfig {
    /// Time between repair passes.
    pub repair_every: Duration,
    /// Bytes per second repair may push (0: unlimited).
    pub repair_bytes_per_sec: u64,
    /// Time between scrub passes.
    pub scrub_every: Duration,
    /// Bytes per second the scrub may re-hash (0: unlimited).
    pub scrub_bytes_per_sec: u64,
    /// Copies of a block whose put did not say otherwise.
    pub default_replicas: u32,
    /// Time between garbage collection passes.
    pub gc_every: Duration,
    /// How long an unreferenced block waits before it is condemned, and again before it is
    /// deleted.
    pub gc_grace: Duration,
    /// How long a block stays staged in the metadata before its first home puts it.
    pub adopt_staged_after: Duration,
}

/// The node's background maintenance.
#[derive(Debug)]
pub struct Maintainer {
    pub(crate) me: NodeId,
    pub(crate) store: Arc<BlockStore>,
    ledger: Arc<Ledger>,
    pub(crate) map: MapView,
    pool: Arc<ChannelPool>,
    pub(crate) peers: BlockClient,
    pub(crate) config: MaintainConfig,
    pub(crate) repair: Mutex<RepairStatus>,
    scrub: Mutex<ScrubStatus>,
    pub(crate) gc: Mutex<GcStatus>,
    /// The blocks garbage collection has condemned.
    pub condemned: Arc<crate::gc::Condemned>,
    /// The region's metaservers (garbage collection asks them), if this node has them.
    pub(crate) meta: Option<Arc<MetaClient>>,
    repair_now: Notify,
    scrub_now: Notify,
    gc_now: Notify,
    restoring: Mutex<HashSet<BlockId>>,
    /// When each block the metadata holds staged was first seen so (`adopt.rs`).
    pub(crate) staged_seen: Mutex<HashMap<BlockId, Instant>>,
}

/// What a repair pass leaves to do.
#[derive(Debug, Default)]
struct Left {
    /// Blocks still short of R copies.
    short: u64,
    short_bytes: u64,
    /// Copies held here without being a home (a drain or rebalance has to move them).
    misplaced: u64,
    misplaced_bytes: u64,
}

/// Spends a byte budget: sleeps so that the long-run rate stays under `per_sec`.
pub(crate) struct Throttle {
    per_sec: u64,
    start: Instant,
    spent: u64,
}

impl Throttle {
    pub(crate) fn new(per_sec: u64) -> Self {
        Throttle {
            per_sec,
            start: Instant::now(),
            spent: 0,
        }
    }

    pub(crate) async fn spend(&mut self, bytes: u64) {
        if self.per_sec == 0 {
            return;
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.per_sec as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Blocking work off the async threads, its error as text for the pass status.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, String> {
    crate::tasks::blocking(f).await.map_err(|e| e.to_string())
}

impl Maintainer {
    /// Maintenance for node `me`.
    pub fn new(
        me: NodeId,
        store: Arc<BlockStore>,
        ledger: Arc<Ledger>,
        map: MapView,
        pool: Arc<ChannelPool>,
        meta: Option<Arc<MetaClient>>,
        config: MaintainConfig,
    ) -> Result<Self, ChunkError> {
        let condemned = Arc::new(crate::gc::Condemned::load(ledger.clone(), store.clone())?);
        let peers = BlockClient::new(map.clone(), None, Timeouts::default());
        Ok(Maintainer {
            me,
            store,
            ledger,
            map,
            pool,
            peers,
            config,
            repair: Mutex::default(),
            scrub: Mutex::default(),
            gc: Mutex::default(),
            condemned,
            meta,
            repair_now: Notify::new(),
            scrub_now: Notify::new(),
            gc_now: Notify::new(),
            restoring: Mutex::default(),
            staged_seen: Mutex::default(),
        })
    }

    /// Starts the repair, scrub and garbage collection loops; a scrub pass runs at once (a
    /// node that was away checks what it holds).
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let (r, s, g) = (self.clone(), self.clone(), self.clone());
        vec![
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(g.config.gc_every) => {}
                        _ = g.gc_now.notified() => {}
                    }
                    g.gc_pass().await;
                }
            }),
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(r.config.repair_every) => {}
                        _ = r.repair_now.notified() => {}
                    }
                    r.repair_pass().await;
                }
            }),
            tokio::spawn(async move {
                loop {
                    s.scrub_pass().await;
                    tokio::select! {
                        _ = tokio::time::sleep(s.config.scrub_every) => {}
                        _ = s.scrub_now.notified() => {}
                    }
                }
            }),
        ]
    }

    /// Starts passes now.
    pub fn trigger(&self, repair: bool, scrub: bool, gc: bool) {
        if gc {
            self.gc_now.notify_one();
        }
        if repair {
            self.repair_now.notify_one();
        }
        if scrub {
            self.scrub_now.notify_one();
        }
    }

    /// What the passes have done.
    pub fn status(&self) -> (RepairStatus, ScrubStatus, GcStatus) {
        let mut scrub = *lock(&self.scrub);
        scrub.quarantined_files = self.store.quarantined_files();
        let mut gc = lock(&self.gc).clone();
        gc.condemned = self.condemned.len() as u64;
        gc.reprieved = self.condemned.reprieved();
        (lock(&self.repair).clone(), scrub, gc)
    }

    fn replicas(&self, id: &BlockId) -> u32 {
        self.ledger
            .replicas(id)
            .ok()
            .flatten()
            .unwrap_or(self.config.default_replicas)
            .max(1)
    }

    /// One repair pass over every block held here, then over the blocks the metadata
    /// holds staged that no writer put.
    pub async fn repair_pass(&self) {
        let started = Instant::now();
        lock(&self.repair).running = true;
        let outcome = self.repair_all().await;
        let adopted = self.adopt_staged().await;
        let mut st = lock(&self.repair);
        st.running = false;
        st.passes += 1;
        st.last_pass_ms = physical_ms();
        st.last_duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok((checked, short, left)) => {
                st.blocks_checked = checked;
                st.short = short;
                st.still_short = left.short;
                st.short_bytes = left.short_bytes;
                st.misplaced_blocks = left.misplaced;
                st.misplaced_bytes = left.misplaced_bytes;
                let still_short = left.short;
                st.last_error.clear();
                metrics::gauge!("meridian_chunk_repair_short_blocks").set(still_short as f64);
            }
            Err(e) => {
                warn!(error = %e, "repair pass failed");
                st.last_error = e;
            }
        }
        if let Err(e) = adopted {
            warn!(error = %e, "adopting staged blocks failed");
            if st.last_error.is_empty() {
                st.last_error = e;
            }
        }
    }

    /// Returns (blocks checked, blocks short of R at the start, what is left to do).
    async fn repair_all(&self) -> Result<(u64, u64, Left), String> {
        let st = self.store.clone();
        let ids = blocking(move || st.list()).await?;
        let mut throttle = Throttle::new(self.config.repair_bytes_per_sec);
        let mut short = 0u64;
        let mut left = Left::default();
        for batch in ids.chunks(HAS_BATCH) {
            short += self.repair_batch(batch, &mut throttle, &mut left).await?;
        }
        // The ledger of degraded puts: once nothing is short, forget every entry.
        if left.short == 0 {
            let ledger = self.ledger.clone();
            blocking(move || {
                let ids: Vec<BlockId> = ledger
                    .list(100_000)?
                    .iter()
                    .filter_map(|e| BlockId::from_slice(&e.block_id).ok())
                    .collect();
                ledger.clear_all(&ids)
            })
            .await?;
        }
        Ok((ids.len() as u64, short, left))
    }

    async fn repair_batch(
        &self,
        ids: &[BlockId],
        throttle: &mut Throttle,
        left: &mut Left,
    ) -> Result<u64, String> {
        let map = self.map.borrow().clone();
        if map.nodes.is_empty() {
            return Err("no cluster map yet".into());
        }
        let placeable = map.placeable().count();
        // Homes of each block, and which blocks to ask each home about.
        let wants: Vec<usize> = ids.iter().map(|id| self.replicas(id) as usize).collect();
        let homes: Vec<Vec<NodeId>> = ids
            .iter()
            .zip(&wants)
            .map(|(id, r)| placement(id, &map, *r))
            .collect();
        let mut ask: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (i, h) in homes.iter().enumerate() {
            for n in h.iter().filter(|n| **n != self.me) {
                ask.entry(*n).or_default().push(i);
            }
        }
        // held[i] = the homes of block i known to hold it.
        let mut held: Vec<HashSet<NodeId>> = homes
            .iter()
            .map(|h| h.iter().copied().filter(|n| *n == self.me).collect())
            .collect();
        let mut unknown: Vec<HashSet<NodeId>> = vec![HashSet::new(); ids.len()];
        for (node, idx) in &ask {
            let Some(info) = map.node(*node) else {
                continue;
            };
            let asked: Vec<BlockId> = idx.iter().map(|i| ids[*i]).collect();
            match self.peers.has_copies(info, &asked).await {
                Ok(answers) => {
                    for (i, has) in idx.iter().zip(answers) {
                        if has {
                            held[*i].insert(*node);
                        }
                    }
                }
                Err(e) => {
                    warn!(node = %node, error = %e, "repair: a home did not answer");
                    for i in idx {
                        unknown[*i].insert(*node);
                    }
                }
            }
        }
        let mut short = 0u64;
        for (i, id) in ids.iter().enumerate() {
            let (home, have) = (&homes[i], &mut held[i]);
            let r = wants[i];
            let me_home = home.contains(&self.me);
            if have.len() < home.len() || home.len() < r {
                short += 1;
            }
            // Exactly one holder acts: the first home holding it, or (no home holds it)
            // every non-home holder; extra pushes are harmless, missing ones are not.
            // A condemned block is garbage unless a put reprieves it: it is not copied.
            let acts = match home.iter().position(|n| have.contains(n)) {
                Some(first) => home[first] == self.me,
                None => !me_home,
            } && !self.condemned.contains(id);
            if acts {
                let missing: Vec<NodeInfo> = home
                    .iter()
                    .filter(|n| !have.contains(n) && !unknown[i].contains(n))
                    .filter_map(|n| map.node(*n).cloned())
                    .collect();
                if !missing.is_empty() {
                    let block = match self.read_local(*id).await {
                        Ok(block) => block,
                        Err(ChunkError::NotFound(_)) => continue,
                        Err(e) => {
                            warn!(block = %id, error = %e, "repair: the local copy is bad");
                            if matches!(e, ChunkError::Corrupt { .. }) {
                                self.bad_copy(*id).await;
                            }
                            continue;
                        }
                    };
                    for node in missing {
                        let (n, res) = crate::replicate::send_copy(
                            self.pool.clone(),
                            node,
                            block.clone(),
                            map.epoch,
                            r as u32,
                            None,
                        )
                        .await;
                        match res {
                            Ok(()) => {
                                have.insert(n);
                                let mut st = lock(&self.repair);
                                st.copies_pushed += 1;
                                st.bytes_pushed += block.payload.len() as u64;
                                metrics::counter!("meridian_chunk_repair_pushed_total")
                                    .increment(1);
                            }
                            Err(e) => {
                                warn!(block = %id, node = %n, error = %e, "repair: push failed")
                            }
                        }
                        throttle.spend(block.payload.len() as u64).await;
                    }
                }
            }
            let whole = home.len() >= r && home.iter().all(|n| have.contains(n));
            let len = self.store.file_len(id);
            if !whole {
                left.short += 1;
                left.short_bytes += len;
            }
            // Not a home any more (drain, rebalance, a handoff that went back): drop the
            // copy once every home has confirmed one.
            if !me_home && whole && placeable >= r {
                let st = self.store.clone();
                let bid = *id;
                if blocking(move || st.delete(&bid)).await? {
                    lock(&self.repair).copies_dropped += 1;
                    metrics::counter!("meridian_chunk_repair_dropped_total").increment(1);
                    continue;
                }
            }
            if !me_home {
                left.misplaced += 1;
                left.misplaced_bytes += len;
            }
        }
        Ok(short)
    }

    /// One scrub pass: re-hash every block here at the configured rate.
    pub async fn scrub_pass(&self) {
        lock(&self.scrub).running = true;
        let st = self.store.clone();
        let ids = blocking(move || st.list()).await.unwrap_or_default();
        let mut throttle = Throttle::new(self.config.scrub_bytes_per_sec);
        for id in ids {
            match self.read_local(id).await.map(|b| b.payload.len() as u64) {
                Ok(len) => {
                    {
                        let mut s = lock(&self.scrub);
                        s.blocks_verified += 1;
                        s.bytes_verified += len;
                    }
                    metrics::counter!("meridian_chunk_scrubbed_bytes_total").increment(len);
                    throttle.spend(len).await;
                }
                Err(ChunkError::NotFound(_)) => {} // deleted since the listing
                Err(e @ ChunkError::Corrupt { .. }) => {
                    warn!(block = %id, error = %e, "scrub found a bad copy");
                    self.bad_copy(id).await;
                }
                Err(e) => warn!(block = %id, error = %e, "scrub could not read a block"),
            }
        }
        let mut s = lock(&self.scrub);
        s.running = false;
        s.passes += 1;
        s.last_pass_ms = physical_ms();
    }

    /// A verified copy of `id` from another node of this region (a shipment whose copy
    /// here has moved, by a drain or a rebalance), trying every node.
    pub(crate) async fn copy_from_region(
        &self,
        id: BlockId,
    ) -> Result<meridian_proto::EncodedBlock, String> {
        let all = self.map.borrow().nodes.len().max(1) as u32;
        let mut tried = Vec::new();
        for node in self
            .peers
            .read_order(&id, all)
            .into_iter()
            .filter(|n| n.id != self.me)
        {
            match self.peers.get_verified(&node, &id).await {
                Ok((block, _)) => return Ok(block),
                Err(e) => tried.push(format!("node {}: {e}", node.id)),
            }
        }
        Err(if tried.is_empty() {
            "no other node in this region".to_string()
        } else {
            tried.join("; ")
        })
    }

    /// Reads and verifies this node's copy of `id`.
    async fn read_local(&self, id: BlockId) -> Result<meridian_proto::EncodedBlock, ChunkError> {
        let st = self.store.clone();
        crate::tasks::blocking(move || st.read(&id).map(|(b, _)| b)).await
    }

    /// Moves the bad copy of `id` aside and replaces it with a verified one from another
    /// node. Returns whether a good copy is here again.
    pub async fn bad_copy(&self, id: BlockId) -> bool {
        if !lock(&self.restoring).insert(id) {
            return false; // already being restored
        }
        let restored = self.quarantine_and_restore(id).await;
        lock(&self.restoring).remove(&id);
        restored
    }

    async fn quarantine_and_restore(&self, id: BlockId) -> bool {
        lock(&self.scrub).corrupt_found += 1;
        metrics::counter!("meridian_chunk_corrupt_found_total").increment(1);
        let st = self.store.clone();
        match blocking(move || st.quarantine(&id)).await {
            Ok(Some(aside)) => {
                warn!(block = %id, to = %aside.display(), "quarantined a bad copy")
            }
            Ok(None) => {}
            Err(e) => {
                warn!(block = %id, error = %e, "cannot quarantine a bad copy");
                return false;
            }
        }
        let replicas = self.replicas(&id);
        for node in self
            .peers
            .read_order(&id, replicas)
            .into_iter()
            .filter(|n| n.id != self.me)
        {
            match self.peers.get_verified(&node, &id).await {
                Ok((block, plain)) => {
                    let st = self.store.clone();
                    let (_, outboard) = meridian_proto::Outboard::compute(&plain);
                    match blocking(move || st.put(&block, &outboard)).await {
                        Ok(_) => {
                            lock(&self.scrub).restored += 1;
                            info!(block = %id, from = %node.id, "restored a good copy");
                            return true;
                        }
                        Err(e) => {
                            warn!(block = %id, error = %e, "cannot store the restored copy");
                            return false;
                        }
                    }
                }
                Err(e) => warn!(block = %id, node = %node.id, error = %e, "no good copy there"),
            }
        }
        warn!(block = %id, "no node could supply a good copy; repair will retry");
        false
    }
}
