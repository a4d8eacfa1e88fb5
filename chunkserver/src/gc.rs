//! Garbage collection (ADR 0004). A block may be deleted only when the region's metadata
//! counts no reference to it, it is older than the grace period (an upload not committed
//! yet is safe), no record still on its way from another region can reference it, and it
//! has then stayed condemned, and unreferenced, for another grace period.
//!
//! A condemned block answers `Has` with false, so no client deduplicates against it; a put
//! of it reprieves it. Reprieves and deletions decide under the block's store lock, so a
//! put never acknowledges a copy that a deletion removes just after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meridian_proto::BlockId;
use meridian_proto::ns::{Query, QueryReply};
use tracing::{info, warn};

use crate::error::ChunkError;
use crate::ledger::Ledger;
use crate::maintain::{Maintainer, blocking, lock};
use crate::ship::now_ms;
use crate::store::BlockStore;

/// Blocks asked about per reference query.
const REFS_BATCH: usize = 1024;

/// The blocks this node has condemned, kept in the ledger and mirrored in memory.
#[derive(Debug)]
pub struct Condemned {
    set: Mutex<HashMap<BlockId, u64>>,
    ledger: Arc<Ledger>,
    store: Arc<BlockStore>,
    /// Condemned blocks found referenced again (by a put or a later pass) since start.
    reprieved: AtomicU64,
}

impl Condemned {
    /// Loads the condemned blocks recorded in `ledger`.
    pub fn load(ledger: Arc<Ledger>, store: Arc<BlockStore>) -> Result<Self, ChunkError> {
        let set = ledger.condemned()?.into_iter().collect();
        Ok(Condemned {
            set: Mutex::new(set),
            ledger,
            store,
            reprieved: AtomicU64::new(0),
        })
    }

    /// Whether `id` is condemned.
    pub fn contains(&self, id: &BlockId) -> bool {
        lock(&self.set).contains_key(id)
    }

    /// How many blocks are condemned.
    pub fn len(&self) -> usize {
        lock(&self.set).len()
    }

    /// Condemned blocks found referenced again since start.
    pub fn reprieved(&self) -> u64 {
        self.reprieved.load(Ordering::Relaxed)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Un-condemns `id` because it is being stored again (blocking: may write the ledger).
    /// Returns whether it was condemned.
    pub fn reprieve(&self, id: &BlockId) -> Result<bool, ChunkError> {
        self.store.locked(id, || {
            if !lock(&self.set).contains_key(id) {
                return Ok(false);
            }
            self.ledger.reprieve(std::slice::from_ref(id))?;
            lock(&self.set).remove(id);
            self.reprieved.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        })
    }

    fn condemn(&self, ids: &[BlockId], at_ms: u64) -> Result<(), ChunkError> {
        self.ledger.condemn(ids, at_ms)?;
        let mut set = lock(&self.set);
        for id in ids {
            set.insert(*id, at_ms);
        }
        Ok(())
    }

    fn forget(&self, ids: &[BlockId]) -> Result<(), ChunkError> {
        self.ledger.reprieve(ids)?;
        let mut set = lock(&self.set);
        for id in ids {
            set.remove(id);
        }
        Ok(())
    }

    /// Deletes the copy of `id` if it is still condemned; returns the bytes freed.
    fn delete(&self, id: &BlockId) -> Result<Option<u64>, ChunkError> {
        let freed = self
            .store
            .delete_if(id, || lock(&self.set).contains_key(id))?;
        self.forget(std::slice::from_ref(id))?;
        Ok(freed)
    }

    fn snapshot(&self) -> HashMap<BlockId, u64> {
        lock(&self.set).clone()
    }
}

impl Maintainer {
    /// One garbage collection pass over every block held here.
    pub async fn gc_pass(&self) {
        let started = Instant::now();
        lock(&self.gc).running = true;
        let outcome = self.collect().await;
        let mut st = lock(&self.gc);
        st.running = false;
        st.passes += 1;
        st.last_pass_ms = now_ms();
        st.last_duration_ms = started.elapsed().as_millis() as u64;
        st.condemned = self.condemned.len() as u64;
        match outcome {
            Ok(checked) => {
                st.blocks_checked = checked;
                st.last_error.clear();
            }
            Err(e) => {
                warn!(error = %e, "garbage collection pass failed");
                st.last_error = e;
            }
        }
        metrics::gauge!("meridian_chunk_gc_condemned_blocks").set(st.condemned as f64);
    }

    async fn refs(&self, ids: &[BlockId]) -> Result<(Vec<u64>, u64), String> {
        let Some(meta) = &self.meta else {
            return Err("no metaservers: garbage collection needs the region's metadata".into());
        };
        let query = Query::BlockRefs {
            blocks: ids.to_vec(),
        };
        match meta.query(&query, false).await {
            Ok(QueryReply::BlockRefs { refs, settled_ms }) if refs.len() == ids.len() => {
                Ok((refs, settled_ms))
            }
            Ok(other) => Err(format!("unexpected answer to a reference query: {other:?}")),
            Err(e) => Err(format!("reference query failed: {e}")),
        }
    }

    /// Returns how many blocks were looked at.
    async fn collect(&self) -> Result<u64, String> {
        let grace = self.config.gc_grace.as_millis() as u64;
        let now = now_ms();
        // Condemned for a whole grace period: delete if still unreferenced.
        let due: Vec<BlockId> = self
            .condemned
            .snapshot()
            .into_iter()
            .filter(|(_, at)| at.saturating_add(grace) <= now)
            .map(|(id, _)| id)
            .collect();
        for batch in due.chunks(REFS_BATCH) {
            let (refs, _) = self.refs(batch).await?;
            let (mut dead, mut live) = (Vec::new(), Vec::new());
            for (id, n) in batch.iter().zip(refs) {
                if n == 0 {
                    dead.push(*id)
                } else {
                    live.push(*id)
                }
            }
            let c = self.condemned.clone();
            let freed = blocking(move || {
                c.forget(&live)?;
                c.reprieved.fetch_add(live.len() as u64, Ordering::Relaxed);
                let mut freed = Vec::new();
                for id in dead {
                    if let Some(bytes) = c.delete(&id)? {
                        freed.push((id, bytes));
                    }
                }
                Ok(freed)
            })
            .await?;
            let mut st = lock(&self.gc);
            for (id, bytes) in &freed {
                info!(block = %id, bytes, "garbage collected");
                st.deleted += 1;
                st.bytes_freed += bytes;
            }
            metrics::counter!("meridian_chunk_gc_deleted_total").increment(freed.len() as u64);
        }

        // Old enough and not condemned yet: condemn what nothing references.
        let (store, condemned) = (self.store.clone(), self.condemned.clone());
        let candidates: Vec<(BlockId, u64)> = blocking(move || {
            Ok(store
                .list()?
                .into_iter()
                .filter(|id| !condemned.contains(id))
                .filter_map(|id| store.stored_at_ms(&id).map(|at| (id, at)))
                .filter(|(_, at)| at.saturating_add(grace) <= now)
                .collect())
        })
        .await?;
        let mut waiting = 0;
        for batch in candidates.chunks(REFS_BATCH) {
            let ids: Vec<BlockId> = batch.iter().map(|(id, _)| *id).collect();
            let (refs, settled_ms) = self.refs(&ids).await?;
            let mut doomed = Vec::new();
            for ((id, at), n) in batch.iter().zip(refs) {
                if n > 0 {
                    continue;
                }
                // A record of another region stamped within a grace period of the block's
                // arrival may still be on its way: wait until the region has it.
                if at.saturating_add(grace) > settled_ms {
                    waiting += 1;
                    continue;
                }
                doomed.push(*id);
            }
            if !doomed.is_empty() {
                let c = self.condemned.clone();
                let n = doomed.len();
                blocking(move || c.condemn(&doomed, now)).await?;
                info!(blocks = n, "condemned unreferenced blocks");
            }
        }
        lock(&self.gc).waiting = waiting;
        Ok((due.len() + candidates.len()) as u64)
    }
}
