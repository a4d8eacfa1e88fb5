//! The durable list of blocks this node stored with fewer copies than asked (degraded
//! puts). Repair (a later issue) drains it; until then it makes every under-replication
//! visible instead of silent.

use std::path::Path;

use meridian_proto::pb::chunk::UnderReplicatedBlock;
use meridian_proto::{BlockId, Hlc, NodeId};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::ChunkError;

const UNDER_REPLICATED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("under_replicated");
/// block id -> copies wanted, kept only where it differs from the region default.
const REPLICAS: TableDefinition<&[u8], u32> = TableDefinition::new("replicas");
/// block id -> when garbage collection condemned it (ms since the epoch).
const CONDEMNED: TableDefinition<&[u8], u64> = TableDefinition::new("condemned");
/// block id -> the region's newest stamp when garbage collection condemned it (an
/// [`Hlc`] key): it is deleted only once the region's settled bound has passed it.
const CONDEMNED_STAMP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("condemned_stamp");
/// region (2 BE) ++ sequence (8 BE) -> a block to ship to that region (JSON [`Shipment`]).
const SHIP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ship");

/// When and in what state of the region's metadata a block was condemned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condemnation {
    /// When (ms since the epoch, this node's clock): a grace period is measured from it.
    pub at_ms: u64,
    /// The region's newest stamp then (`None`: a region without peers, or a ledger of an
    /// earlier version, which stamps it again before deciding).
    pub stamp: Option<Hlc>,
}

/// A block waiting to be shipped to another region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shipment {
    /// The block.
    pub block: BlockId,
    /// Copies wanted there.
    pub replicas: u32,
    /// Copies without which a put there fails.
    pub min_copies: u32,
    /// The regions its volume lives in.
    pub regions: Vec<u32>,
    /// When it was queued (ms since the epoch).
    pub queued_ms: u64,
    /// Its volume (0: queued by an earlier version, which did not say).
    #[serde(default)]
    pub volume: u32,
    /// Failed sends so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not tried again before this (ms since the epoch).
    #[serde(default)]
    pub not_before_ms: u64,
    /// Queued by a replica, behind the coordinator's own shipment of the block: not
    /// counted in the backlog (the coordinator's entry is).
    #[serde(default)]
    pub standby: bool,
}

fn ship_key(region: u16, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&region.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence in a shipment key.
fn ship_seq(key: &[u8]) -> Result<u64, ChunkError> {
    key.get(2..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| ChunkError::Db("damaged shipment key".into()))
}

/// The last sequence queued for `region` (0: none).
fn last_ship_seq(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    region: u16,
) -> Result<u64, ChunkError> {
    match t
        .range(ship_key(region, 0).as_slice()..=ship_key(region, u64::MAX).as_slice())
        .map_err(db_err)?
        .next_back()
        .transpose()
        .map_err(db_err)?
    {
        Some((k, _)) => ship_seq(k.value()),
        None => Ok(0),
    }
}

fn db_err(e: impl Into<redb::Error>) -> ChunkError {
    ChunkError::Db(e.into().to_string())
}

/// The chunkserver's small state database.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
    /// Counts shipments queued, so that shippers wake at once instead of polling.
    queued: tokio::sync::watch::Sender<u64>,
}

impl Ledger {
    /// Opens or creates `state.redb` under the data folder.
    pub fn open(root: &Path) -> Result<Self, ChunkError> {
        let db = Database::create(root.join("state.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
        tx.open_table(SHIP).map_err(db_err)?;
        tx.open_table(REPLICAS).map_err(db_err)?;
        tx.open_table(CONDEMNED).map_err(db_err)?;
        tx.open_table(CONDEMNED_STAMP).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Ledger {
            db,
            queued: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Records (durably, before the put is acknowledged) that `id` has only `stored_on`
    /// copies of the `wanted`.
    pub fn record_under_replicated(
        &self,
        id: &BlockId,
        stored_on: &[NodeId],
        wanted: u32,
    ) -> Result<(), ChunkError> {
        let entry = UnderReplicatedBlock {
            block_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            copies: stored_on.len() as u32,
            wanted,
            stored_on: stored_on.iter().map(|n| n.0).collect(),
        };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
            t.insert(id.as_bytes().as_slice(), entry.encode_to_vec().as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Forgets `id` (it has been repaired, or deleted).
    pub fn clear(&self, id: &BlockId) -> Result<(), ChunkError> {
        self.clear_all(std::slice::from_ref(id))
    }

    /// Forgets every one of `ids`, in one transaction.
    pub fn clear_all(&self, ids: &[BlockId]) -> Result<(), ChunkError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
            for id in ids {
                t.remove(id.as_bytes().as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Copies wanted of `id`, if a put said something other than the default.
    pub fn replicas(&self, id: &BlockId) -> Result<Option<u32>, ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(REPLICAS).map_err(db_err)?;
        Ok(t.get(id.as_bytes().as_slice())
            .map_err(db_err)?
            .map(|v| v.value()))
    }

    /// Records that a put wants `r` copies of `id` (`new`: it was just written here). A
    /// block already here only ever raises its count; the default is not stored.
    pub fn note_replicas(
        &self,
        id: &BlockId,
        r: u32,
        default: u32,
        new: bool,
    ) -> Result<(), ChunkError> {
        if r == 0 {
            return Ok(());
        }
        let current = self.replicas(id)?;
        let effective = current.unwrap_or(default);
        let set = if new {
            (r != default || current.is_some()).then_some(r)
        } else {
            (r > effective).then_some(r)
        };
        let Some(r) = set else {
            return Ok(());
        };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(REPLICAS).map_err(db_err)?;
            if r == default {
                t.remove(id.as_bytes().as_slice()).map_err(db_err)?;
            } else {
                t.insert(id.as_bytes().as_slice(), r).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Every condemned block, with when it was condemned and the region's stamp then.
    pub fn condemned(&self) -> Result<Vec<(BlockId, Condemnation)>, ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CONDEMNED).map_err(db_err)?;
        let stamps = tx.open_table(CONDEMNED_STAMP).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if let Ok(id) = BlockId::from_slice(k.value()) {
                let stamp = stamps
                    .get(k.value())
                    .map_err(db_err)?
                    .and_then(|s| Hlc::from_key(s.value()));
                out.push((
                    id,
                    Condemnation {
                        at_ms: v.value(),
                        stamp,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Records durably that `ids` were condemned as `c` says.
    pub fn condemn(&self, ids: &[BlockId], c: Condemnation) -> Result<(), ChunkError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONDEMNED).map_err(db_err)?;
            let mut stamps = tx.open_table(CONDEMNED_STAMP).map_err(db_err)?;
            for id in ids {
                t.insert(id.as_bytes().as_slice(), c.at_ms)
                    .map_err(db_err)?;
                match c.stamp {
                    Some(h) => stamps
                        .insert(id.as_bytes().as_slice(), h.to_key().as_slice())
                        .map_err(db_err)?,
                    None => stamps.remove(id.as_bytes().as_slice()).map_err(db_err)?,
                };
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Forgets that `ids` were condemned.
    pub fn reprieve(&self, ids: &[BlockId]) -> Result<(), ChunkError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONDEMNED).map_err(db_err)?;
            let mut stamps = tx.open_table(CONDEMNED_STAMP).map_err(db_err)?;
            for id in ids {
                t.remove(id.as_bytes().as_slice()).map_err(db_err)?;
                stamps.remove(id.as_bytes().as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Queues `s` durably for each region in `to`.
    pub fn enqueue_ship(&self, to: &[u16], s: &Shipment) -> Result<(), ChunkError> {
        let bytes = serde_json::to_vec(s).map_err(|e| ChunkError::Db(e.to_string()))?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SHIP).map_err(db_err)?;
            for region in to {
                let last = last_ship_seq(&t, *region)?;
                t.insert(ship_key(*region, last + 1).as_slice(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        self.queued.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes whenever a shipment is queued.
    pub fn watch_queue(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// Up to `limit` queued shipments to `region` due by `now_ms`, oldest first, with
    /// their sequence (looking at most `8 * limit` entries: those waiting to be tried again
    /// are passed over).
    pub fn peek_ship(
        &self,
        region: u16,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(u64, Shipment)>, ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SHIP).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t
            .range(ship_key(region, 0).as_slice()..=ship_key(region, u64::MAX).as_slice())
            .map_err(db_err)?
            .take(limit.saturating_mul(8))
        {
            let (k, v) = item.map_err(db_err)?;
            let seq = ship_seq(k.value())?;
            let s: Shipment = serde_json::from_slice(v.value())
                .map_err(|e| ChunkError::Db(format!("damaged shipment: {e}")))?;
            if s.not_before_ms > now_ms {
                continue;
            }
            out.push((seq, s));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Moves shipments to `region` that failed to the end of its queue, each to be tried
    /// again after a pause that grows with its failures (at most 5 s): one that cannot go
    /// now never holds back the ones behind it.
    pub fn retry_ship(
        &self,
        region: u16,
        failed: &[(u64, Shipment)],
        now_ms: u64,
    ) -> Result<(), ChunkError> {
        if failed.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SHIP).map_err(db_err)?;
            let mut last = last_ship_seq(&t, region)?;
            for (seq, s) in failed {
                let attempts = s.attempts.saturating_add(1);
                let pause = (250u64 << attempts.min(5)).min(5_000);
                let again = Shipment {
                    attempts,
                    not_before_ms: now_ms + pause,
                    ..s.clone()
                };
                let bytes =
                    serde_json::to_vec(&again).map_err(|e| ChunkError::Db(e.to_string()))?;
                t.remove(ship_key(region, *seq).as_slice())
                    .map_err(db_err)?;
                last += 1;
                t.insert(ship_key(region, last).as_slice(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Forgets shipments to `region` that arrived.
    pub fn done_ship(&self, region: u16, seqs: &[u64]) -> Result<(), ChunkError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SHIP).map_err(db_err)?;
            for seq in seqs {
                t.remove(ship_key(region, *seq).as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Blocks queued for `region` and the age of the oldest, in ms (replicas' standby
    /// entries left out).
    pub fn ship_backlog(&self, region: u16, now_ms: u64) -> Result<(u64, u64), ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SHIP).map_err(db_err)?;
        let mut n = 0;
        let mut oldest = 0;
        for item in t
            .range(ship_key(region, 0).as_slice()..=ship_key(region, u64::MAX).as_slice())
            .map_err(db_err)?
        {
            let (_, v) = item.map_err(db_err)?;
            let Ok(s) = serde_json::from_slice::<Shipment>(v.value()) else {
                n += 1;
                continue;
            };
            if s.standby {
                continue;
            }
            oldest = oldest.max(now_ms.saturating_sub(s.queued_ms));
            n += 1;
        }
        Ok((n, oldest))
    }

    /// How many blocks are recorded.
    pub fn count(&self) -> Result<u64, ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    /// Up to `limit` recorded blocks (0: all), in block id order.
    pub fn list(&self, limit: usize) -> Result<Vec<UnderReplicatedBlock>, ChunkError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            if limit != 0 && out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(db_err)?;
            let entry = UnderReplicatedBlock::decode(v.value())
                .map_err(|e| ChunkError::Db(format!("damaged under-replicated entry: {e}")))?;
            out.push(entry);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        {
            let l = Ledger::open(dir.path()).unwrap();
            l.record_under_replicated(&a, &[NodeId(1), NodeId(2)], 3)
                .unwrap();
            l.record_under_replicated(&b, &[NodeId(1)], 3).unwrap();
        }
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.count().unwrap(), 2);
        let list = l.list(0).unwrap();
        let first = list
            .iter()
            .find(|e| e.block_id.as_ref() == a.as_bytes())
            .unwrap();
        assert_eq!(
            (first.copies, first.wanted, first.stored_on.clone()),
            (2, 3, vec![1, 2])
        );
        assert_eq!(l.list(1).unwrap().len(), 1);
        l.clear(&a).unwrap();
        assert_eq!(l.count().unwrap(), 1);
    }

    fn at(at_ms: u64, wall: Option<u64>) -> Condemnation {
        Condemnation {
            at_ms,
            stamp: wall.map(|wall_ms| Hlc {
                wall_ms,
                counter: 1,
                region: meridian_proto::RegionId(2),
            }),
        }
    }

    #[test]
    fn condemned_blocks_survive_reopen_until_reprieved() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        {
            let l = Ledger::open(dir.path()).unwrap();
            l.condemn(&[a], at(42, None)).unwrap();
            l.condemn(&[b], at(42, Some(7))).unwrap();
        }
        let l = Ledger::open(dir.path()).unwrap();
        let mut got = l.condemned().unwrap();
        got.sort_by_key(|(id, _)| *id);
        let mut want = vec![(a, at(42, None)), (b, at(42, Some(7)))];
        want.sort_by_key(|(id, _)| *id);
        assert_eq!(got, want);
        l.reprieve(&[b]).unwrap();
        assert_eq!(l.condemned().unwrap(), vec![(a, at(42, None))]);
        // Condemned again without a stamp: the old stamp does not linger.
        l.condemn(&[b], at(50, Some(9))).unwrap();
        l.condemn(&[b], at(51, None)).unwrap();
        let got = l.condemned().unwrap();
        assert!(got.contains(&(b, at(51, None))), "{got:?}");
    }
}
