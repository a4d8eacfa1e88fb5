//! Cross-region replication of metadata. The leader of each region pulls every peer
//! region's change log, from the per-origin watermark its own state holds (so it resumes
//! exactly after a cut or a leader change), and proposes what it gets through its own Raft
//! log, where the records merge (see `namespace::merge`). Serving pulls, a leader learns
//! how far each peer has applied its records: that is the replication lag it reports.
//!
//! A cut link only grows the lag: nothing here marks the far region down or repairs
//! anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::ns::Record;
use meridian_proto::pb::meta::{
    ChangeRecord, PeerLag, PullChangesRequest, PullChangesResponse, RegionMark, RegionStamp,
    RegionStatusResponse,
};
use meridian_proto::{Hlc, RegionId};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use tracing::{info, warn};

use crate::config::PeerRegion;
use crate::error::{MetaError, store};
use crate::namespace::tables::{self, CHANGELOG};
use crate::namespace::{RemoteBatch, merge};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// Records asked for in one pull, to begin with.
pub const PULL_LIMIT: u32 = 1024;
/// Most records in one pull. A puller asks for more than [`PULL_LIMIT`] when each late
/// record it merges meets many newer ones (everyone writing in one directory): a batch
/// as large as what it meets pays for the rewinding once, so a long backlog is merged
/// in time proportional to it, not to its square.
pub const PULL_LIMIT_MAX: u32 = 16_384;
/// Fewest records asked for in one pull (see [`MERGE_TARGET`]).
pub const PULL_LIMIT_MIN: u32 = 32;
/// About the longest one merge should take: it holds the state machine, and local
/// changes wait behind it. A puller whose last merge took longer asks for
/// proportionally fewer records next, so a long backlog is merged in steps this long.
const MERGE_TARGET: Duration = Duration::from_millis(250);
/// Most record bytes in one pull answer.
const PULL_BYTES: usize = 16 << 20;
/// How long a pull waits on the serving side for new records before answering empty.
pub const PULL_WAIT: Duration = Duration::from_millis(1000);
/// How far the lag computation scans a change log.
const LAG_SCAN: usize = 200_000;

/// What one region knows of its exchanges with each peer.
#[derive(Default)]
pub struct Regions {
    peers: Mutex<HashMap<u16, PeerState>>,
}

#[derive(Default, Clone)]
struct PeerState {
    /// Outbound: the peer applied our change log up to here (it said so by pulling after).
    acked: u64,
    last_pulled: Option<Instant>,
    /// Inbound: our last pull from the peer.
    last_ok: Option<Instant>,
    peer_head: u64,
    error: String,
    /// What the peer said it holds of each region's change log, at its last pull.
    have: Vec<(u16, u64)>,
}

fn now_ms() -> u64 {
    meridian_proto::physical_ms()
}

/// Reads the region bookkeeping of a read transaction through `merge`, its one owner; a
/// state not written yet (or unreadable) reads as `None`.
fn read_state<T>(
    tx: &ReadTransaction,
    f: impl FnOnce(
        &redb::ReadOnlyTable<&'static str, &'static [u8]>,
    ) -> Result<T, crate::namespace::NsError>,
) -> Option<T> {
    merge::state_table(tx)
        .ok()
        .flatten()
        .and_then(|t| f(&t).ok())
}

/// The peer region `origin`'s records reach this one through (none: a peer itself, or
/// not heard of).
pub fn relayed_through(tx: &ReadTransaction, origin: RegionId) -> Option<RegionId> {
    read_state(tx, merge::relayed)?
        .into_iter()
        .find(|(o, _)| *o == origin)
        .map(|(_, via)| via)
}

/// The last change-log sequence of `origin` applied in this state.
pub fn watermark(tx: &ReadTransaction, origin: RegionId) -> u64 {
    read_state(tx, |t| merge::watermark(t, origin)).unwrap_or(0)
}

/// The newest of the head and the promise: no later local record is stamped before it.
fn horizon_hlc(tx: &ReadTransaction) -> Option<Hlc> {
    read_state(tx, merge::horizon).flatten()
}

/// This region's stability watermark: it holds every record of every region older than
/// this (none until every peer has sent a frontier).
fn stable_hlc(tx: &ReadTransaction) -> Option<Hlc> {
    read_state(tx, merge::stable).flatten()
}

fn head_seq(tx: &ReadTransaction) -> u64 {
    tx.open_table(CHANGELOG)
        .ok()
        .and_then(|t| t.last().ok().flatten().map(|(k, _)| k.value()))
        .unwrap_or(0)
}

/// The other regions whose records this region holds, for a peer `to` to hear of: not
/// those it gets through `to` itself (two regions would each wait on the other).
fn relays(tx: &ReadTransaction, to: RegionId) -> Vec<u32> {
    let through_to: Vec<RegionId> = read_state(tx, merge::relayed)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, via)| *via == to)
        .map(|(o, _)| o)
        .collect();
    read_state(tx, merge::origins)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| *r != to && !through_to.contains(r))
        .map(|r| u32::from(r.0))
        .collect()
}

impl Regions {
    /// Notes what peer `to` said it holds of each region's change log.
    pub fn note_have(&self, to: u16, have: Vec<(u16, u64)>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.entry(to).or_default().have = have;
    }

    /// Answers a pull by region `to` of `origin`'s records (this region's own, or
    /// another's it relays): records of volumes that live there, from `from` on.
    pub fn serve_pull_of(
        &self,
        tx: &ReadTransaction,
        own: RegionId,
        to: RegionId,
        origin: RegionId,
        from: u64,
        limit: u32,
    ) -> Result<PullChangesResponse, MetaError> {
        let mut reply = if origin == own {
            self.serve_pull(tx, own, to, from, limit)?
        } else {
            serve_relay(tx, to, origin, from, limit)?
        };
        reply.relays = relays(tx, to);
        Ok(reply)
    }

    /// Answers a pull by region `to`: records of volumes that live there, from `from` on.
    pub fn serve_pull(
        &self,
        tx: &ReadTransaction,
        own: RegionId,
        to: RegionId,
        from: u64,
        limit: u32,
    ) -> Result<PullChangesResponse, MetaError> {
        if to == own {
            return Err(MetaError::Invalid(format!(
                "region {} pulled its own change log",
                own.0
            )));
        }
        let from = from.max(1);
        let head = head_seq(tx);
        // Records below the first kept were trimmed, and some behind it: every peer they
        // go to had applied them. A peer asking again for what it had applied lost its
        // state, and one that never pulled may never have been given them: skipping them
        // would leave it different for ever, so it is told instead. (A peer asking from
        // past what it applied needs nothing that was trimmed.)
        let first = tx
            .open_table(CHANGELOG)
            .ok()
            .and_then(|t| t.first().ok().flatten().map(|(k, _)| k.value()))
            .unwrap_or(head + 1);
        let (acked, holes_to) = read_state(tx, |t| {
            Ok((
                crate::namespace::links::acked(t, to)?,
                crate::namespace::history::trim_cursor(t)?,
            ))
        })
        .unwrap_or_default();
        let lost = if acked == 0 {
            (from < first && first > 1) || from < holes_to
        } else {
            from <= acked && (from < first || from < holes_to)
        };
        if lost {
            return Err(MetaError::Invalid(format!(
                "region {} asked for change-log records from {from}, but region {} keeps them from {first} only (trimmed once every peer had applied them): that region's state went back and needs a backfill",
                to.0, own.0
            )));
        }
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let p = peers.entry(to.0).or_default();
            // A peer cannot have applied what this region has not written.
            p.acked = p.acked.max((from - 1).min(head));
            p.last_pulled = Some(Instant::now());
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        let mut last_hlc = None;
        if let Ok(t) = tx.open_table(CHANGELOG) {
            for item in t.range(from..).map_err(store)? {
                let (k, v) = item.map_err(store)?;
                let record: Record = serde_json::from_slice(v.value()).map_err(|e| {
                    MetaError::Store(format!("damaged change record {}: {e}", k.value()))
                })?;
                next = k.value() + 1;
                last_hlc = Some(record.hlc);
                if record.allowed_in(to) {
                    bytes += v.value().len();
                    records.push(ChangeRecord {
                        seq: k.value(),
                        record: v.value().to_vec().into(),
                    });
                }
                if records.len() >= limit.clamp(1, PULL_LIMIT_MAX) as usize || bytes >= PULL_BYTES {
                    break;
                }
            }
        }
        // Caught up: nothing this region stamps later can be older than its merged head.
        let frontier = if next > head {
            horizon_hlc(tx)
        } else {
            last_hlc
        };
        // Caught up: everything written here so far is in this answer or was sent before,
        // and nothing of any region older than the watermark is missing here.
        let (stable, stable_by) = if next > head {
            (
                stable_hlc(tx),
                read_state(tx, |t| merge::stable_by(t, own)).unwrap_or_default(),
            )
        } else {
            (None, Vec::new())
        };
        Ok(PullChangesResponse {
            region: u32::from(own.0),
            records,
            next,
            head,
            frontier: stamp_bytes(frontier),
            stable: stamp_bytes(stable),
            relays: Vec::new(),
            stable_by: region_stamps(&stable_by),
        })
    }

    fn note_pull(&self, peer: u16, outcome: Result<u64, String>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let p = peers.entry(peer).or_default();
        match outcome {
            Ok(head) => {
                p.last_ok = Some(Instant::now());
                p.peer_head = head;
                p.error.clear();
            }
            Err(e) => p.error = e,
        }
    }

    /// What each peer said it holds of each region's change log.
    pub fn haves(&self) -> Vec<(u16, Vec<(u16, u64)>)> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.iter().map(|(p, s)| (*p, s.have.clone())).collect()
    }

    /// What this member knows of `peer`'s link now.
    pub fn link(&self, peer: u16) -> crate::link_detector::LinkNow {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let st = peers.get(&peer).cloned().unwrap_or_default();
        crate::link_detector::LinkNow {
            last_ok: st.last_ok,
            error: st.error,
            acked: st.acked,
            have: st.have,
        }
    }

    /// Lag to and from every configured peer, and from every region relayed through one
    /// (`relayed`: origin, the peer it comes through).
    pub fn status(
        &self,
        tx: &ReadTransaction,
        own: RegionId,
        configured: &[PeerRegion],
        relayed: &[(u16, u16)],
    ) -> RegionStatusResponse {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = now_ms();
        let mut out = Vec::new();
        for cfg in configured {
            let st = peers.get(&cfg.region).cloned().unwrap_or_default();
            let region = RegionId(cfg.region);
            // What an earlier leader noted: the peer's progress and the link's history.
            let (noted_acked, history) = read_state(tx, |t| {
                Ok((
                    crate::namespace::links::acked(t, region)?,
                    crate::namespace::links::events(t, region)?,
                ))
            })
            .unwrap_or_default();
            let acked = st.acked.max(noted_acked);
            let (ops, bytes, oldest) = backlog(tx, region, acked, now);
            let contact = [st.last_ok, st.last_pulled].into_iter().flatten().max();
            let reachable = match history.last() {
                Some(e) => e.reachable,
                None => st.last_ok.is_some() && st.error.is_empty(),
            };
            out.push(PeerLag {
                region: u32::from(cfg.region),
                reachable,
                since_ms: history.last().map_or(0, |e| e.at_ms),
                acked_seq: acked,
                history: history
                    .iter()
                    .map(|e| meridian_proto::pb::meta::LinkEvent {
                        at_ms: e.at_ms,
                        reachable: e.reachable,
                        detail: e.detail.clone(),
                    })
                    .collect(),
                last_contact_ms: contact.map_or(0, |t| t.elapsed().as_millis() as u64),
                ops_behind: ops,
                bytes_behind: bytes,
                oldest_unshipped_ms: oldest,
                applied_seq: watermark(tx, region),
                peer_head_seq: st.peer_head,
                error: st.error.clone(),
                via: 0,
            });
        }
        for (origin, via) in relayed {
            let st = peers.get(origin).cloned().unwrap_or_default();
            out.push(PeerLag {
                region: u32::from(*origin),
                reachable: st.last_ok.is_some() && st.error.is_empty(),
                last_contact_ms: st.last_ok.map_or(0, |t| t.elapsed().as_millis() as u64),
                applied_seq: watermark(tx, RegionId(*origin)),
                peer_head_seq: st.peer_head,
                error: st.error.clone(),
                via: u32::from(*via),
                ..PeerLag::default()
            });
        }
        RegionStatusResponse {
            region: u32::from(own.0),
            head_seq: head_seq(tx),
            peers: out,
            changelog_records: rows(tx, tables::CHANGELOG),
            merged_log_records: rows(tx, tables::OPLOG),
            tombstones: rows(tx, tables::TOMBS),
            conflicts: rows(tx, tables::CONFLICTS),
            backfills: Vec::new(),
        }
    }
}

/// Answers a pull by region `to` of the records of `origin` this region relays (as it
/// took them, in the origin's sequence), from `from` on. Caught up, the answer vouches
/// for everything up to this region's watermark of the origin: the sequences missing
/// below it are of volumes that do not live here, and so (the rule for relaying) not in
/// `to` either unless another path brings them.
fn serve_relay(
    tx: &ReadTransaction,
    to: RegionId,
    origin: RegionId,
    from: u64,
    limit: u32,
) -> Result<PullChangesResponse, MetaError> {
    let from = from.max(1);
    let wm = watermark(tx, origin);
    let trimmed = read_state(tx, |t| {
        Ok(
            merge::state(t, &crate::namespace::relay::relay_trimmed_key(origin))?
                .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0),
        )
    })
    .unwrap_or(0);
    if from <= trimmed {
        return Err(MetaError::Invalid(format!(
            "region {} asked for region {}'s records from {from}, but they were relayed up to {trimmed} and dropped once every peer held them: that region's state went back and needs a backfill",
            to.0, origin.0
        )));
    }
    let mut records = Vec::new();
    let mut bytes = 0;
    let mut last_hlc = None;
    let mut next = wm.max(from.saturating_sub(1)) + 1;
    let mut full = false;
    if let Ok(t) = tx.open_table(tables::RELAY) {
        let lo = crate::namespace::relay::relay_key(origin, from);
        let hi = crate::namespace::relay::relay_key(origin, u64::MAX);
        for item in t.range(lo.as_slice()..=hi.as_slice()).map_err(store)? {
            let (k, v) = item.map_err(store)?;
            let seq = k
                .value()
                .get(2..10)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| MetaError::Store("damaged relay key".into()))?;
            let record: Record = serde_json::from_slice(v.value())
                .map_err(|e| MetaError::Store(format!("damaged relayed record {seq}: {e}")))?;
            last_hlc = Some(record.hlc);
            if record.allowed_in(to) {
                bytes += v.value().len();
                records.push(ChangeRecord {
                    seq,
                    record: v.value().to_vec().into(),
                });
            }
            if records.len() >= limit.clamp(1, PULL_LIMIT_MAX) as usize || bytes >= PULL_BYTES {
                next = seq + 1;
                full = true;
                break;
            }
        }
    }
    let caught_up = !full;
    let (frontier, stable, stable_by) = if caught_up {
        read_state(tx, |t| {
            Ok((
                merge::frontier(t, origin)?,
                merge::settled(t, origin)?,
                merge::settled_by(t, origin)?,
            ))
        })
        .unwrap_or_default()
    } else {
        (last_hlc, None, Vec::new())
    };
    Ok(PullChangesResponse {
        region: u32::from(origin.0),
        records,
        next,
        head: wm,
        frontier: stamp_bytes(frontier),
        stable: stamp_bytes(stable),
        relays: Vec::new(),
        stable_by: region_stamps(&stable_by),
    })
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

/// Stamps by region as sent in an answer.
fn region_stamps(list: &[(RegionId, Hlc)]) -> Vec<RegionStamp> {
    list.iter()
        .map(|(r, h)| RegionStamp {
            region: u32::from(r.0),
            stamp: h.to_key().to_vec().into(),
        })
        .collect()
}

/// Stamps by region as received (malformed entries left out, so they settle nothing).
fn stamps_by_region(list: &[RegionStamp]) -> Vec<(RegionId, Hlc)> {
    list.iter()
        .filter_map(|m| {
            let r = u16::try_from(m.region).ok()?;
            Some((RegionId(r), Hlc::from_key(&m.stamp)?))
        })
        .collect()
}

/// A stamp as sent in an answer (empty: none).
fn stamp_bytes(stamp: Option<Hlc>) -> bytes::Bytes {
    stamp
        .map(|h| h.to_key().to_vec())
        .unwrap_or_default()
        .into()
}

/// Rows of a table (0 when it does not exist yet).
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> u64 {
    use redb::ReadableTableMetadata;
    tx.open_table(table)
        .ok()
        .and_then(|t| t.len().ok())
        .unwrap_or(0)
}

/// Records of this region that `peer` lacks after `acked`: count, bytes, age of the oldest.
fn backlog(tx: &ReadTransaction, peer: RegionId, acked: u64, now: u64) -> (u64, u64, u64) {
    let Ok(t) = tx.open_table(CHANGELOG) else {
        return (0, 0, 0);
    };
    let Ok(range) = t.range(acked + 1..) else {
        return (0, 0, 0);
    };
    let (mut ops, mut bytes, mut oldest) = (0u64, 0u64, 0u64);
    for item in range.take(LAG_SCAN) {
        let Ok((_, v)) = item else { break };
        let Ok(record) = serde_json::from_slice::<Record>(v.value()) else {
            continue;
        };
        if !record.allowed_in(peer) {
            continue;
        }
        if ops == 0 {
            oldest = now.saturating_sub(record.hlc.wall_ms);
        }
        ops += 1;
        bytes += v.value().len() as u64;
    }
    (ops, bytes, oldest)
}

/// Publishes the lag gauges every second while this member leads.
pub async fn export_lag(node: Arc<MetaNode>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !node.is_leader() || node.peers.is_empty() {
            continue;
        }
        let Ok(tx) = node.db.begin_read() else {
            continue;
        };
        let status = node
            .regions
            .status(&tx, node.shared.region, &node.peers, &node.relayed_via());
        for p in status.peers {
            let peer = p.region.to_string();
            metrics::gauge!("meridian_region_lag_ops", "peer" => peer.clone())
                .set(p.ops_behind as f64);
            metrics::gauge!("meridian_region_lag_bytes", "peer" => peer.clone())
                .set(p.bytes_behind as f64);
            metrics::gauge!("meridian_region_lag_seconds", "peer" => peer.clone())
                .set(p.oldest_unshipped_ms as f64 / 1000.0);
            metrics::gauge!("meridian_region_reachable", "peer" => peer).set(if p.reachable {
                1.0
            } else {
                0.0
            });
        }
    }
}

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
    let recorded = node
        .db
        .begin_read()
        .ok()
        .and_then(|tx| read_state(&tx, merge::relayed))
        .unwrap_or_default();
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
            let recorded = node
                .db
                .begin_read()
                .ok()
                .and_then(|tx| read_state(&tx, merge::peers))
                .unwrap_or_default();
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
