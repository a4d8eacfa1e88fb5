//! Cross-region replication of metadata. The leader of each region pulls every peer
//! region's change log, from the per-origin watermark its own state holds (so it resumes
//! exactly after a cut or a leader change), and proposes what it gets through its own Raft
//! log, where the records merge (see `namespace::merge`; the pulling is in `pull.rs`).
//! Serving pulls (here), a leader learns how far each peer has applied its records: that
//! is the replication lag it reports.
//!
//! A cut link only grows the lag: nothing here marks the far region down or repairs
//! anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::ns::Record;
use meridian_proto::pb::meta::{
    ChangeRecord, PeerLag, PullChangesResponse, RegionStamp, RegionStatusResponse,
};
use meridian_proto::{Hlc, RegionId};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use crate::config::PeerRegion;
use crate::error::{MetaError, store};
use crate::namespace::merge;
use crate::namespace::tables::{self, CHANGELOG};
use crate::service::MetaNode;

mod pull;

pub use pull::{promise_loop, pull_loop};

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
    /// Records of this region's change log read to answer its pulls.
    read: u64,
    /// Records relayed from other regions read to answer its pulls.
    relayed_read: u64,
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
            let (reply, read) = serve_relay(tx, to, origin, from, limit)?;
            self.count_read(to, read, true);
            reply
        };
        reply.relays = relays(tx, to);
        Ok(reply)
    }

    /// Answers a pull by region `to` of `origin`'s records from `from` on, as
    /// [`Regions::serve_pull_of`] does, once there is something to answer: records for it,
    /// more than one answer holds, or `deadline`. Until then it waits for the next entry
    /// `db` applies (`applied` follows them). Records of this region found with its log's
    /// head at `head` wait `gather(head)` for more first, if that says so.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer_pull(
        &self,
        db: &Database,
        applied: &mut watch::Receiver<u64>,
        gather: impl Fn(u64) -> Option<Duration>,
        own: RegionId,
        to: RegionId,
        origin: RegionId,
        from: u64,
        limit: u32,
        deadline: Instant,
    ) -> Result<PullChangesResponse, MetaError> {
        applied.mark_unchanged();
        let asked = from;
        let mut from = from;
        let mut gathered = false;
        loop {
            let reply = {
                let tx = db.begin_read().map_err(store)?;
                // Should this region's watermark of a relayed origin have gone back (its
                // state replaced), its records may come again below where the last look
                // ended: look from where the pull asked.
                if origin != own && watermark(&tx, origin).saturating_add(1) < from {
                    from = asked;
                }
                self.serve_pull_of(&tx, own, to, origin, from, limit)?
            };
            let now = Instant::now();
            // (A relayed origin's head is its sequence, not this log's: not gathered.)
            let more = (origin == own
                && !reply.records.is_empty()
                && reply.next > reply.head
                && !gathered)
                .then(|| gather(reply.head))
                .flatten()
                .filter(|_| now < deadline);
            if let Some(more) = more {
                // Changes come in runs (a loop of creates, an unpacked archive): while the
                // log grows fast, the peer gets a run's first milliseconds in one answer,
                // and merges them as one entry of its Raft log, rather than an answer, a
                // pull and an entry per change. Read again from the same place.
                gathered = true;
                tokio::time::sleep(more.min(deadline - now)).await;
                continue;
            }
            if !reply.records.is_empty() || reply.next <= reply.head || now >= deadline {
                return Ok(reply);
            }
            // Nothing for the peer up to the head. This region's change log only grows at
            // its head, so the next look starts past what this one read: read again from
            // the peer's watermark at every applied entry, the records of volumes that do
            // not live there (which never move it) cost every change a read of all those
            // before it, for every peer (with three regions, a third of a leader's time
            // during creates in a volume of its own). A relayed origin's records grow at
            // their head too: a merge keeps only records past this region's watermark of
            // their origin (`relay::keep_for_relay`), and a caught-up answer's `next` is
            // past that watermark (should the watermark go back, see above).
            from = reply.next;
            let _ = tokio::time::timeout(deadline - now, applied.changed()).await;
        }
    }

    /// Counts `read` records read to answer a pull by `to`: of this region's change log, or
    /// `relayed` from another region.
    fn count_read(&self, to: RegionId, read: u64, relayed: bool) {
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let p = peers.entry(to.0).or_default();
            if relayed {
                p.relayed_read += read;
            } else {
                p.read += read;
            }
        }
        let peer = to.0.to_string();
        if relayed {
            metrics::counter!("meridian_region_relayed_records_read_total", "peer" => peer)
                .increment(read);
        } else {
            metrics::counter!("meridian_region_records_read_total", "peer" => peer).increment(read);
        }
    }

    /// Records of this region's change log read to answer `peer`'s pulls so far.
    pub fn records_read(&self, peer: u16) -> u64 {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&peer).map_or(0, |p| p.read)
    }

    /// Records relayed from other regions read to answer `peer`'s pulls so far.
    pub fn relayed_records_read(&self, peer: u16) -> u64 {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&peer).map_or(0, |p| p.relayed_read)
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
        let mut read = 0;
        if let Ok(t) = tx.open_table(CHANGELOG) {
            for item in t.range(from..).map_err(store)? {
                let (k, v) = item.map_err(store)?;
                read += 1;
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
        self.count_read(to, read, false);
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
/// `to` either unless another path brings them. Also says how many records it read.
fn serve_relay(
    tx: &ReadTransaction,
    to: RegionId,
    origin: RegionId,
    from: u64,
    limit: u32,
) -> Result<(PullChangesResponse, u64), MetaError> {
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
    let mut read = 0;
    if let Ok(t) = tx.open_table(tables::RELAY) {
        let lo = crate::namespace::relay::relay_key(origin, from);
        let hi = crate::namespace::relay::relay_key(origin, u64::MAX);
        for item in t.range(lo.as_slice()..=hi.as_slice()).map_err(store)? {
            let (k, v) = item.map_err(store)?;
            read += 1;
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
    let reply = PullChangesResponse {
        region: u32::from(origin.0),
        records,
        next,
        head: wm,
        frontier: stamp_bytes(frontier),
        stable: stamp_bytes(stable),
        relays: Vec::new(),
        stable_by: region_stamps(&stable_by),
    };
    Ok((reply, read))
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
