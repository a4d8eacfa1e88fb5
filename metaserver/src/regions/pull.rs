//! The pulling side of cross-region replication: while a member leads, it pulls every
//! peer region's change log (and the regions a peer relays) from the watermark its own
//! state holds and proposes what arrives; while the region is idle it promises later
//! stamps, so that its peers' view of it keeps moving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_proto::ns::Record;
use meridian_proto::pb::meta::{PullChangesRequest, RegionMark};
use meridian_proto::{Hlc, RegionId};
use redb::ReadableDatabase;
use tracing::{info, warn};

use super::{
    MERGE_TARGET, PULL_LIMIT, PULL_LIMIT_MAX, PULL_LIMIT_MIN, PULL_WAIT, horizon_hlc, now_ms,
    read_state, stamps_by_region, watermark,
};
use crate::config::PeerRegion;
use crate::namespace::{RemoteBatch, merge};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// How long a region may stay without a new stamp before its leader promises one.
const PROMISE_EVERY: Duration = Duration::from_secs(1);

/// While the region is idle, its leader promises (through Raft) that later records are
/// stamped after now, so the frontier it tells its peers keeps moving: they can settle
/// past its last record, purge tombstones and collect garbage without waiting for writes.
pub async fn promise_loop(node: Arc<MetaNode>) {
    if node.peers.is_empty() {
        return;
    }
    let mut seen = None;
    loop {
        tokio::time::sleep(PROMISE_EVERY).await;
        if !node.is_leader() {
            continue;
        }
        let horizon = node.db.begin_read().ok().and_then(|tx| horizon_hlc(&tx));
        // A horizon that moved since the last look: records are flowing and the head
        // moves by itself. Decided by change, not by this host's wall time: a peer whose
        // clock runs ahead has moved the clock past it, and stamps then advance by their
        // counter; without promises the peers' watermarks (and purges and garbage
        // collection with them) would wait for this host's clock to catch up.
        if horizon.is_some() && horizon != seen {
            seen = horizon;
            continue;
        }
        let stamp = node
            .shared
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .now(now_ms());
        seen = Some(stamp);
        if let Err(e) = node.propose_internal(RaftRequest::Promise(stamp)).await {
            warn!(error = %e, "promising a frontier failed");
        }
    }
}

/// Region bookkeeping read from `node`'s applied state (see `read_state`).
fn node_state<T>(
    node: &MetaNode,
    f: impl FnOnce(
        &redb::ReadOnlyTable<&'static str, &'static [u8]>,
    ) -> Result<T, crate::namespace::NsError>,
) -> Option<T> {
    read_state(&node.db.begin_read().ok()?, f)
}

/// While this member leads, pulls `peer`'s change log and proposes what arrives; the
/// regions the peer relays that are not peers of this one are pulled through it too.
pub async fn pull_loop(node: Arc<MetaNode>, peer: PeerRegion) {
    pull_loop_of(node, peer.clone(), peer.region).await
}

/// Starts pulling, through `via`, the records of every region it relays that this one
/// neither is nor pulls already, and records the relayed regions in the replicated state
/// (stability waits for them too).
async fn hear_of(node: &Arc<MetaNode>, via: &PeerRegion, relays: &[u32]) {
    let own = node.shared.region;
    let recorded = node_state(node, merge::relayed).unwrap_or_default();
    let is_peer = |r: u16| node.peers.iter().any(|p| p.region == r);
    let pairs: Vec<(RegionId, RegionId)> = {
        let mut relayed = node.relayed.lock().unwrap_or_else(|p| p.into_inner());
        // What an earlier leader set up carries on through the same peer.
        let known = recorded
            .iter()
            .filter(|(o, v)| !is_peer(o.0) && is_peer(v.0))
            .map(|(o, v)| (o.0, v.0));
        let heard = relays
            .iter()
            .filter_map(|r| u16::try_from(*r).ok())
            .map(|r| (r, via.region));
        for (r, through) in known.chain(heard) {
            if r == 0 || r == own.0 || is_peer(r) || relayed.contains_key(&r) {
                continue;
            }
            if relayed.len() >= MAX_RELAYED {
                warn!(origin = r, "too many regions relayed: not pulling this one");
                break;
            }
            let Some(peer) = node.peers.iter().find(|p| p.region == through) else {
                continue;
            };
            info!(
                origin = r,
                via = through,
                "pulling a region's records through a peer"
            );
            let task = tokio::spawn(pull_boxed(node.clone(), peer.clone(), r));
            relayed.insert(r, (through, task));
        }
        relayed
            .iter()
            .map(|(o, (v, _))| (RegionId(*o), RegionId(*v)))
            .collect()
    };
    if recorded != pairs
        && let Err(e) = node.propose_internal(RaftRequest::Relayed(pairs)).await
    {
        warn!(error = %e, "recording the relayed regions failed");
    }
}

/// Most regions relayed through peers.
const MAX_RELAYED: usize = 64;

/// What this region holds of every other region's change log, for the region it pulls
/// from to know when relayed records may go.
fn have(node: &MetaNode) -> Vec<RegionMark> {
    let Ok(tx) = node.db.begin_read() else {
        return Vec::new();
    };
    read_state(&tx, merge::origins)
        .unwrap_or_default()
        .into_iter()
        .map(|r| RegionMark {
            region: u32::from(r.0),
            seq: watermark(&tx, r),
        })
        .collect()
}

/// [`pull_loop_of`] behind a box: it starts more of itself.
fn pull_boxed(
    node: Arc<MetaNode>,
    peer: PeerRegion,
    origin: u16,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(pull_loop_of(node, peer, origin))
}

/// While this member leads, pulls `origin`'s records from `peer` (the origin itself, or
/// a peer that relays it) and proposes what arrives.
async fn pull_loop_of(node: Arc<MetaNode>, peer: PeerRegion, origin_id: u16) {
    let own = node.shared.region;
    let origin = RegionId(origin_id);
    let relayed = origin_id != peer.region;
    let mut addr = 0usize;
    let mut peers_recorded = false;
    let mut last_frontier: Option<Vec<u8>> = None;
    let mut last_frontier_at = Instant::now();
    let mut limit = PULL_LIMIT;
    loop {
        if !node.is_leader() {
            peers_recorded = false;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !peers_recorded {
            let ids: Vec<RegionId> = node.peers.iter().map(|p| RegionId(p.region)).collect();
            let recorded = node_state(&node, merge::peers).unwrap_or_default();
            if recorded == ids || node.propose_internal(RaftRequest::Peers(ids)).await.is_ok() {
                peers_recorded = true;
            }
        }
        let Ok(tx) = node.db.begin_read() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let wm = watermark(&tx, origin);
        drop(tx);
        let target = &peer.meta[addr % peer.meta.len()];
        let reply = match node.pool.get(target) {
            Ok(ch) => {
                let mut client = meridian_proto::channels::meta_client(ch);
                client
                    .pull_changes(PullChangesRequest {
                        region: u32::from(own.0),
                        from: wm + 1,
                        limit,
                        wait_ms: PULL_WAIT.as_millis() as u32,
                        origin: if relayed { u32::from(origin_id) } else { 0 },
                        have: have(&node),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| format!("{}: {}", target, s.message()))
            }
            Err(e) => Err(format!("{target}: {e}")),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // Start small again: a large answer may be what failed.
                limit = PULL_LIMIT;
                node.regions.note_pull(origin_id, Err(e.clone()));
                metrics::counter!("meridian_region_pull_errors_total", "peer" => peer.region.to_string()).increment(1);
                warn!(peer = peer.region, origin = origin_id, error = %e, "pull from peer region failed");
                addr += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        node.regions.note_pull(origin_id, Ok(reply.head));
        hear_of(&node, &peer, &reply.relays).await;
        let mut records = Vec::with_capacity(reply.records.len());
        let mut damaged = None;
        for c in &reply.records {
            match serde_json::from_slice::<Record>(&c.record) {
                Ok(r) => records.push((c.seq, r)),
                Err(e) => damaged = Some(format!("record {}: {e}", c.seq)),
            }
        }
        if let Some(e) = damaged {
            node.regions
                .note_pull(origin_id, Err(format!("damaged record from peer: {e}")));
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let frontier = Hlc::from_key(&reply.frontier);
        let settled = Hlc::from_key(&reply.stable);
        let settled_by = stamps_by_region(&reply.stable_by);
        let mut marks = [&reply.frontier[..], &reply.stable[..]].concat();
        for m in &reply.stable_by {
            marks.extend_from_slice(&m.stamp);
        }
        let frontier_moved = last_frontier.as_deref() != Some(&marks[..])
            && last_frontier_at.elapsed() > Duration::from_secs(1);
        if records.is_empty() && !frontier_moved {
            continue;
        }
        let n = records.len();
        let batch = RemoteBatch {
            origin,
            records,
            frontier,
            settled,
            scanned: reply.next,
            settled_by,
        };
        let proposed = Instant::now();
        match node.propose_internal(RaftRequest::Remote(batch)).await {
            Ok(RaftResponse::Remote(Ok(outcome))) => {
                limit = next_limit(&outcome, limit, proposed.elapsed());
                last_frontier = Some(marks);
                last_frontier_at = Instant::now();
                metrics::counter!("meridian_region_records_applied_total", "peer" => peer.region.to_string())
                    .increment(outcome.applied);
                if outcome.held > 0 {
                    // They wait for another region's records: pull that one first.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if outcome.redone > 0 {
                    metrics::counter!("meridian_region_records_redone_total")
                        .increment(outcome.redone);
                }
                if n > 0 {
                    info!(
                        peer = peer.region,
                        origin = origin_id,
                        applied = outcome.applied,
                        redone = outcome.redone,
                        watermark = outcome.watermark,
                        took_ms = proposed.elapsed().as_millis() as u64,
                        apply_ms = outcome.apply_ms,
                        "merged records from peer region"
                    );
                }
            }
            Ok(RaftResponse::Remote(Err(e))) => {
                warn!(peer = peer.region, origin = origin_id, error = %e, "records from peer region refused");
                node.regions
                    .note_pull(origin_id, Err(format!("refused: {e}")));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(peer = peer.region, error = %e, "proposing records from peer region failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How many records to ask for after a merge of a batch of `asked` records that applied
/// `outcome.applied` records, redid `outcome.redone` newer ones, and took `took`: as many
/// as it redid (each batch costs what it meets plus its own size, so a batch that size
/// halves the rewinding per record while holding the state machine at most twice as
/// long), within [`PULL_LIMIT`]..=[`PULL_LIMIT_MAX`]; but fewer if the merge took longer
/// than [`MERGE_TARGET`], in proportion, down to [`PULL_LIMIT_MIN`].
fn next_limit(outcome: &crate::namespace::MergeOutcome, asked: u32, took: Duration) -> u32 {
    let by_meeting = u32::try_from(outcome.redone)
        .unwrap_or(u32::MAX)
        .clamp(PULL_LIMIT, PULL_LIMIT_MAX);
    let by_time = u64::from(asked.max(1)) * MERGE_TARGET.as_millis() as u64
        / (took.as_millis() as u64).max(1);
    u32::try_from(by_time)
        .unwrap_or(u32::MAX)
        .min(by_meeting)
        .clamp(PULL_LIMIT_MIN, PULL_LIMIT_MAX)
}
