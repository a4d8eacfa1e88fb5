//! Blocks between regions. A coordinator that stores a block of a volume living in other
//! regions too queues it durably for each of them; one shipper per peer region asks that
//! region's placements which queued blocks they lack and sends only those, retrying across
//! cuts. A queued block whose copy here has gone (a drain or a rebalance moved it) is
//! shipped from another node of the region that holds it; a shipment is dropped unsent
//! only when no node of the region holds the block and the region's metadata references it
//! no more (garbage, collected). A read of a block that has not arrived yet fetches it from
//! a region that has it, verifies it, and stores it here.

use meridian_proto::physical_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use meridian_client::{BlockClient, MetaClient};
use meridian_proto::{BlockId, EncodedBlock, PeerRegion, RegionId, placement};
use tracing::{debug, info, warn};

use crate::error::ChunkError;
use crate::ledger::{Ledger, Shipment};
use crate::maintain::Maintainer;

/// Blocks looked at per shipping round.
const SHIP_BATCH: usize = 64;
/// Blocks in flight to a peer region at once.
const SHIP_PARALLEL: usize = 16;
/// How often an idle shipper looks at its queue without being woken.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Shipments queued more recently than this are sent without asking first whether the
/// peer has them: a block just written is almost never there yet, and asking costs a
/// round trip across the link. Older ones (a backlog after a cut, during which readers
/// there may have fetched them) are asked about first.
const FRESH_MS: u64 = 5_000;

/// Clients of the other regions' chunkservers.
#[derive(Debug, Default)]
pub struct Peers {
    regions: HashMap<u16, Arc<BlockClient>>,
}

impl Peers {
    /// Clients for `peers`, each following that region's cluster map through its
    /// metaservers. `own` marks this region as the origin of what it ships.
    /// `routes` maps their chunkservers' addresses to the addresses to dial instead.
    pub fn new(own: u16, peers: &[PeerRegion], routes: &BTreeMap<String, String>) -> Self {
        let regions = peers
            .iter()
            .map(|p| {
                let meta = Arc::new(
                    MetaClient::new(p.meta.clone()).with_retry_for(Duration::from_secs(5)),
                );
                let client = BlockClient::new(meta.watch_cluster_map(), None, Default::default())
                    .shipping_from(RegionId(own))
                    .with_routes(routes.clone().into_iter().collect());
                (p.region, Arc::new(client))
            })
            .collect();
        Peers { regions }
    }

    /// The client of one peer region.
    pub fn client(&self, region: u16) -> Option<Arc<BlockClient>> {
        self.regions.get(&region).cloned()
    }

    /// The configured peer regions.
    pub fn ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.regions.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Fetches `id` from the first of `regions` (other than this one) that has it, verified
    /// here: the block as stored and its plaintext.
    pub async fn fetch(
        &self,
        id: &BlockId,
        regions: &[u32],
    ) -> Result<(EncodedBlock, Bytes), ChunkError> {
        let mut tried = Vec::new();
        for region in regions {
            let Some(client) = u16::try_from(*region)
                .ok()
                .and_then(|r| self.regions.get(&r))
            else {
                continue;
            };
            for node in client.read_order(id, 3) {
                match client.get_verified(&node, id).await {
                    Ok(got) => {
                        metrics::counter!("meridian_chunk_fetched_remote_total").increment(1);
                        return Ok(got);
                    }
                    Err(e) => tried.push(format!("region {region} node {}: {e}", node.id)),
                }
            }
        }
        if !tried.is_empty() {
            warn!(block = %id, tried = %tried.join("; "), "no other region could supply the block");
        }
        Err(ChunkError::NotFound(*id))
    }
}

/// Ships the queue for `region` for as long as the node runs.
pub async fn ship_loop(
    region: u16,
    client: Arc<BlockClient>,
    ledger: Arc<Ledger>,
    node: Arc<Maintainer>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut queued = ledger.watch_queue();
    loop {
        queued.borrow_and_update();
        match ship_round(region, &client, &ledger, &node).await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                // Woken by the next shipment queued (the put that queues it is still
                // being answered): a fresh block leaves at once, often before its record.
                tokio::select! {
                    _ = queued.changed() => {}
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                }
            }
            Ok(n) => {
                backoff = Duration::from_millis(100);
                debug!(region, blocks = n, "shipped blocks");
            }
            Err(e) => {
                warn!(region, error = %e, "shipping blocks failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A queued block that is no longer here: a verified copy from another node of the region,
/// or `None` when the block is garbage (no node holds it and nothing references it), or an
/// error when it must stay queued: "not found" is never "shipped".
async fn moved_away(node: &Maintainer, s: &Shipment) -> Result<Option<EncodedBlock>, String> {
    let id = s.block;
    let elsewhere = match node.copy_from_region(id).await {
        Ok(block) => {
            metrics::counter!("meridian_chunk_shipped_from_region_total").increment(1);
            info!(block = %id, "shipping a block whose copy here moved, from another node");
            return Ok(Some(block));
        }
        Err(e) => e,
    };
    match node.refs(&[id]).await {
        Ok((refs, _)) if refs.first() == Some(&0) => {
            info!(block = %id, "a queued block was collected as garbage before it shipped");
            Ok(None)
        }
        Ok(_) => {
            metrics::counter!("meridian_chunk_ship_unavailable_total").increment(1);
            Err(format!(
                "block {id} is referenced, and no node of this region could supply it ({elsewhere})"
            ))
        }
        Err(e) => Err(format!(
            "block {id} is not here ({elsewhere}), and whether it is garbage is unknown: {e}"
        )),
    }
}

/// One round: returns how many queued blocks were settled.
async fn ship_round(
    region: u16,
    client: &BlockClient,
    ledger: &Arc<Ledger>,
    node: &Arc<Maintainer>,
) -> Result<usize, String> {
    let l = ledger.clone();
    let queued =
        tokio::task::spawn_blocking(move || l.peek_ship(region, SHIP_BATCH, physical_ms()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    if queued.is_empty() {
        return Ok(0);
    }
    let map = client.map();
    if map.nodes.is_empty() {
        return Err(format!("no cluster map of region {region} yet"));
    }
    // Ask first (but for fresh blocks): group the blocks by their first placement there
    // and ask who lacks what.
    let mut by_node: HashMap<u64, Vec<usize>> = HashMap::new();
    let now = physical_ms();
    for (i, (_, s)) in queued.iter().enumerate() {
        if now.saturating_sub(s.queued_ms) < FRESH_MS {
            continue;
        }
        if let Some(first) = placement(&s.block, &map, 1).first() {
            by_node.entry(first.0).or_default().push(i);
        }
    }
    let mut present = vec![false; queued.len()];
    for (node, idx) in &by_node {
        let Some(info) = map.node(meridian_proto::NodeId(*node)) else {
            continue;
        };
        let ids: Vec<BlockId> = idx.iter().map(|i| queued[*i].1.block).collect();
        // A node that does not answer: its blocks are sent (and it is tried again there).
        if let Ok(answers) = client.has(info, &ids).await {
            for (i, p) in idx.iter().zip(answers) {
                present[*i] = p;
            }
        }
    }
    // Send what is missing, several at a time: across a slow link one block per round
    // trip would cap shipping far below what a region writes.
    let mut done = Vec::new();
    let mut sent_bytes = 0u64;
    let mut failure = None;
    let sends = queued
        .iter()
        .zip(&present)
        .filter_map(|((seq, s), present)| {
            if *present {
                metrics::counter!("meridian_chunk_ship_skipped_total").increment(1);
                done.push(*seq);
                return None;
            }
            Some(async move {
                let (st, id) = (node.store.clone(), s.block);
                let block = match tokio::task::spawn_blocking(move || st.read(&id)).await {
                    Ok(Ok((block, _))) => block,
                    Ok(Err(ChunkError::NotFound(_))) => match moved_away(node, s).await {
                        Ok(Some(block)) => block,
                        Ok(None) => return (*seq, Ok(0)),
                        Err(e) => return (*seq, Err(e)),
                    },
                    Ok(Err(e)) => return (*seq, Err(format!("reading {id}: {e}"))),
                    Err(e) => return (*seq, Err(e.to_string())),
                };
                let sent = client
                    .put_for(
                        &block,
                        s.replicas,
                        s.min_copies.min(s.replicas),
                        s.volume,
                        &s.regions,
                    )
                    .await
                    .map(|_| u64::from(block.raw_len))
                    .map_err(|e| e.to_string());
                (*seq, sent)
            })
        })
        .collect::<Vec<_>>();
    let mut results = futures::stream::iter(sends).buffer_unordered(SHIP_PARALLEL);
    let mut failed = Vec::new();
    while let Some((seq, sent)) = results.next().await {
        match sent {
            Ok(bytes) => {
                sent_bytes += bytes;
                done.push(seq);
            }
            Err(e) => {
                failed.push(seq);
                failure = Some(e);
            }
        }
    }
    drop(results);
    // Failed ones go to the back of the queue, to be tried again after a pause: a block
    // that cannot go now (its volume unknown there yet, no copy here) does not hold back
    // the others.
    let failed: Vec<(u64, Shipment)> = queued
        .iter()
        .filter(|(seq, _)| failed.contains(seq))
        .cloned()
        .collect();
    if !failed.is_empty() {
        let l = ledger.clone();
        tokio::task::spawn_blocking(move || l.retry_ship(region, &failed, physical_ms()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let n = done.len();
    if n > 0 {
        let l = ledger.clone();
        tokio::task::spawn_blocking(move || l.done_ship(region, &done))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        metrics::counter!("meridian_chunk_shipped_bytes_total", "region" => region.to_string())
            .increment(sent_bytes);
    }
    match failure {
        Some(e) if n == 0 => Err(e),
        Some(e) => {
            info!(region, shipped = n, error = %e, "shipping paused");
            Ok(n)
        }
        None => Ok(n),
    }
}
