//! The durable list of blocks this node stored with fewer copies than asked (degraded
//! puts). Repair (a later issue) drains it; until then it makes every under-replication
//! visible instead of silent.

use std::path::Path;

use meridian_proto::pb::chunk::UnderReplicatedBlock;
use meridian_proto::{BlockId, NodeId};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::ChunkError;

const UNDER_REPLICATED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("under_replicated");

fn db_err(e: impl Into<redb::Error>) -> ChunkError {
    ChunkError::Db(e.into().to_string())
}

/// The chunkserver's small state database.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    /// Opens or creates `state.redb` under the data folder.
    pub fn open(root: &Path) -> Result<Self, ChunkError> {
        let db = Database::create(root.join("state.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Ledger { db })
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
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(UNDER_REPLICATED).map_err(db_err)?;
            t.remove(id.as_bytes().as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
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
}
