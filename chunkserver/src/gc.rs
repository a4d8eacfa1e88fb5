//! Garbage collection (ADR 0004). A block may be deleted only when the region's metadata
//! counts no reference to it, it is older than the grace period (an upload not committed
//! yet is safe), and it has then stayed condemned, and unreferenced, for another grace
//! period. In a region with peers it must also be that no record still on its way from
//! another region can name it: a condemnation keeps the region's newest stamp then, and
//! the block goes only once the region's settled bound has passed that stamp, which means
//! every record any region wrote without knowing this region's state at that stamp has
//! arrived. Stamps are compared only with stamps (hybrid logical clocks, causally ordered),
//! never with this node's wall clock, so no clock skew between regions can hurry it.
//!
//! A record written later, knowing that state, can still name the block: another region
//! that holds a copy of its own deduplicates against it and ships nothing. That region
//! keeps its copy (its own references protect it), and a read here fetches the block from
//! it; this region then holds no copy until one is read.
//!
//! A condemned block answers `Has` with false, so no client deduplicates against it; a put
//! of it reprieves it. Reprieves and deletions decide under the block's store lock, so a
//! put never acknowledges a copy that a deletion removes just after.

use meridian_proto::physical_ms;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meridian_proto::ns::{Query, QueryReply};
use meridian_proto::{BlockId, Hlc};
use tracing::{info, warn};

use crate::error::ChunkError;
use crate::ledger::{Condemnation, Ledger};
use crate::maintain::{Maintainer, blocking};
use crate::store::BlockStore;
use crate::tasks::lock;

/// Blocks asked about per reference query.
const REFS_BATCH: usize = 1024;

/// The blocks this node has condemned, kept in the ledger and mirrored in memory.
#[derive(Debug)]
pub struct Condemned {
    set: Mutex<HashMap<BlockId, Condemnation>>,
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

    fn condemn(&self, ids: &[BlockId], c: Condemnation) -> Result<(), ChunkError> {
        self.ledger.condemn(ids, c)?;
        let mut set = lock(&self.set);
        for id in ids {
            set.insert(*id, c);
        }
        Ok(())
    }

    /// Stamps a condemnation that has none, if `id` is still condemned (a put may have
    /// reprieved it meanwhile), starting its grace period again; decided under the
    /// block's store lock, as reprieves are.
    fn restamp(&self, id: &BlockId, c: Condemnation) -> Result<(), ChunkError> {
        self.store.locked(id, || {
            if !lock(&self.set).contains_key(id) {
                return Ok(());
            }
            self.ledger.condemn(std::slice::from_ref(id), c)?;
            lock(&self.set).insert(*id, c);
            Ok(())
        })
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

    fn snapshot(&self) -> HashMap<BlockId, Condemnation> {
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
        st.last_pass_ms = physical_ms();
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

    pub(crate) async fn refs(&self, ids: &[BlockId]) -> Result<(Vec<u64>, Marks), String> {
        let Some(meta) = &self.meta else {
            return Err("no metaservers: garbage collection needs the region's metadata".into());
        };
        let query = Query::BlockRefs {
            blocks: ids.to_vec(),
        };
        match meta.query(&query, false).await {
            Ok(QueryReply::BlockRefs {
                refs,
                settled_ms,
                now,
                settled,
            }) if refs.len() == ids.len() => Ok((
                refs,
                Marks {
                    peers: settled_ms != u64::MAX,
                    now,
                    settled,
                },
            )),
            Ok(other) => Err(format!("unexpected answer to a reference query: {other:?}")),
            Err(e) => Err(format!("reference query failed: {e}")),
        }
    }

    /// Returns how many blocks were looked at.
    async fn collect(&self) -> Result<u64, String> {
        let grace = self.config.gc_grace.as_millis() as u64;
        let now = physical_ms();
        let mut waiting = 0;
        // Condemned for a whole grace period: delete if still unreferenced and settled.
        let due: Vec<(BlockId, Condemnation)> = self
            .condemned
            .snapshot()
            .into_iter()
            .filter(|(_, c)| c.at_ms.saturating_add(grace) <= now)
            .collect();
        for batch in due.chunks(REFS_BATCH) {
            let ids: Vec<BlockId> = batch.iter().map(|(id, _)| *id).collect();
            let (refs, marks) = self.refs(&ids).await?;
            let (mut dead, mut live, mut restamp) = (Vec::new(), Vec::new(), Vec::new());
            for ((id, c), n) in batch.iter().zip(refs) {
                match marks.verdict(n, c.stamp) {
                    Verdict::Live => live.push(*id),
                    Verdict::Delete => dead.push(*id),
                    Verdict::Wait => waiting += 1,
                    Verdict::Restamp(stamp) => {
                        waiting += 1;
                        restamp.push((*id, Condemnation { at_ms: now, stamp }));
                    }
                }
            }
            let c = self.condemned.clone();
            let freed = blocking(move || {
                c.forget(&live)?;
                c.reprieved.fetch_add(live.len() as u64, Ordering::Relaxed);
                for (id, again) in restamp {
                    c.restamp(&id, again)?;
                }
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

        // Old enough (an upload not committed yet is safe) and not condemned yet: condemn
        // what nothing references, with the region's newest stamp.
        let (store, condemned) = (self.store.clone(), self.condemned.clone());
        let candidates: Vec<BlockId> = blocking(move || {
            Ok(store
                .list()?
                .into_iter()
                .filter(|id| !condemned.contains(id))
                .filter(|id| {
                    store
                        .stored_at_ms(id)
                        .is_some_and(|at| at.saturating_add(grace) <= now)
                })
                .collect())
        })
        .await?;
        for batch in candidates.chunks(REFS_BATCH) {
            let (refs, marks) = self.refs(batch).await?;
            let doomed: Vec<BlockId> = batch
                .iter()
                .zip(refs)
                .filter(|(_, n)| *n == 0)
                .map(|(id, _)| *id)
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let Some(stamp) = marks.stamp() else {
                // A region with peers that has stamped nothing yet: nothing to wait for.
                waiting += doomed.len() as u64;
                continue;
            };
            let c = self.condemned.clone();
            let n = doomed.len();
            let condemnation = Condemnation { at_ms: now, stamp };
            blocking(move || c.condemn(&doomed, condemnation)).await?;
            info!(blocks = n, "condemned unreferenced blocks");
        }
        lock(&self.gc).waiting = waiting;
        Ok((due.len() + candidates.len()) as u64)
    }
}

/// What one reference query said about the region's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marks {
    /// The region exchanges records with other regions.
    pub peers: bool,
    /// Its newest stamp.
    pub now: Option<Hlc>,
    /// Its settled bound.
    pub settled: Option<Hlc>,
}

/// What becomes of a condemned block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Referenced again: no longer condemned.
    Live,
    /// Unreferenced, and no record on its way can name it.
    Delete,
    /// Unreferenced, but a record on its way might still name it.
    Wait,
    /// Condemned without a stamp (an earlier version's ledger, or before the region had
    /// peers): stamped now, decided later.
    Restamp(Option<Hlc>),
}

impl Marks {
    /// The stamp a condemnation made now keeps: `Some(None)` without peers (nothing to wait
    /// for), `None` when the region has peers and no stamp yet (it cannot condemn).
    pub(crate) fn stamp(&self) -> Option<Option<Hlc>> {
        if !self.peers {
            return Some(None);
        }
        self.now.map(Some)
    }

    /// The fate of a block condemned with `stamp` that `refs` extents reference now.
    pub(crate) fn verdict(&self, refs: u64, stamp: Option<Hlc>) -> Verdict {
        if refs > 0 {
            return Verdict::Live;
        }
        if !self.peers {
            return Verdict::Delete;
        }
        match (stamp, self.settled) {
            (Some(s), Some(bound)) if bound >= s => Verdict::Delete,
            (Some(_), _) => Verdict::Wait,
            (None, _) => match self.now {
                Some(now) => Verdict::Restamp(Some(now)),
                None => Verdict::Wait,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::RegionId;

    fn hlc(wall_ms: u64, region: u16) -> Hlc {
        Hlc {
            wall_ms,
            counter: 0,
            region: RegionId(region),
        }
    }

    #[test]
    fn a_block_goes_only_once_the_region_has_settled_past_its_condemnation() {
        let alone = Marks {
            peers: false,
            now: None,
            settled: None,
        };
        assert_eq!(alone.stamp(), Some(None));
        assert_eq!(alone.verdict(0, None), Verdict::Delete);
        assert_eq!(alone.verdict(1, None), Verdict::Live);

        // A peer's clock two hours ahead moves nothing: only the settled bound, which only
        // moves once every peer has caught up with this region's stamps, decides.
        let two_hours = 2 * 3600 * 1000;
        let condemned_at = hlc(1_000_000 + two_hours, 1);
        let cut_off = Marks {
            peers: true,
            now: Some(hlc(1_000_000 + two_hours + 10, 2)),
            settled: Some(hlc(999_000, 1)),
        };
        assert_eq!(cut_off.stamp(), Some(Some(cut_off.now.unwrap())));
        assert_eq!(cut_off.verdict(0, Some(condemned_at)), Verdict::Wait);
        assert_eq!(cut_off.verdict(2, Some(condemned_at)), Verdict::Live);
        let settled = Marks {
            settled: Some(condemned_at),
            ..cut_off
        };
        assert_eq!(settled.verdict(0, Some(condemned_at)), Verdict::Delete);

        // Peers that have never sent their marks: nothing is deleted, nothing is stamped
        // without a stamp to keep.
        let unknown = Marks {
            peers: true,
            now: None,
            settled: None,
        };
        assert_eq!(unknown.stamp(), None);
        assert_eq!(unknown.verdict(0, Some(condemned_at)), Verdict::Wait);
        assert_eq!(unknown.verdict(0, None), Verdict::Wait);
        // A condemnation an earlier version made (no stamp) is stamped, not deleted.
        assert_eq!(settled.verdict(0, None), Verdict::Restamp(cut_off.now));
    }
}
