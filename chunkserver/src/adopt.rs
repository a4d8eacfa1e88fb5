//! Staged blocks whose writer is gone (docs/adr/0018). A small fsync'd write's block is
//! held in the metadata until its mount puts it to chunkservers and unstages it; a mount
//! that died in between never will. After each repair pass, a node pages through what the
//! metadata holds staged and adopts the blocks it is the first home of once they have
//! stayed staged for `adopt_staged_after`: it puts each (as a local client's put, so the
//! usual copies, shipments to other regions included, follow) and then unstages it.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use futures::StreamExt;
use meridian_client::MetaClient;
use meridian_proto::ns::{Op, Query, QueryReply, STAGED_PAGE_MAX, StagedRow, UNSTAGE_MAX};
use meridian_proto::{BlockId, EncodedBlock, InodeId, placement};
use tracing::{info, warn};

use crate::maintain::{Maintainer, Throttle};
use crate::tasks::lock;

/// Staged blocks put at once: a chunkserver's fdatasync then covers several.
const PUTS_AT_ONCE: usize = 16;

impl Maintainer {
    /// Puts and unstages the staged blocks this node is the first home of that have
    /// stayed staged long enough; returns how many it unstaged.
    pub(crate) async fn adopt_staged(&self) -> Result<u64, String> {
        let Some(meta) = self.meta.clone() else {
            return Ok(0);
        };
        let earlier = std::mem::take(&mut *lock(&self.staged_seen));
        let mut seen = HashMap::with_capacity(earlier.len());
        let outcome = self.adopt_pages(&meta, &earlier, &mut seen).await;
        // A pass cut short keeps the times it did not get to: a block's wait goes on.
        if outcome.is_err() {
            for (id, first) in earlier {
                seen.entry(id).or_insert(first);
            }
        }
        *lock(&self.staged_seen) = seen;
        let adopted = outcome?;
        if adopted > 0 {
            info!(
                blocks = adopted,
                "staged blocks put to chunkservers and unstaged"
            );
            lock(&self.repair).staged_adopted += adopted;
            metrics::counter!("meridian_chunk_staged_adopted_total").increment(adopted);
        }
        Ok(adopted)
    }

    async fn adopt_pages(
        &self,
        meta: &MetaClient,
        earlier: &HashMap<BlockId, Instant>,
        seen: &mut HashMap<BlockId, Instant>,
    ) -> Result<u64, String> {
        let now = Instant::now();
        let mut throttle = Throttle::new(self.config.repair_bytes_per_sec);
        let mut put: BTreeMap<InodeId, Vec<BlockId>> = BTreeMap::new();
        let mut after = None;
        loop {
            let query = Query::StagedBlocks {
                after,
                limit: STAGED_PAGE_MAX,
            };
            let rows = match meta.query(&query, false).await {
                Ok(QueryReply::StagedBlocks(rows)) => rows,
                Ok(other) => return Err(format!("unexpected answer to a staged query: {other:?}")),
                Err(e) => return Err(format!("staged blocks query failed: {e}")),
            };
            let Some(last) = rows.last() else { break };
            after = Some(last.block.id);
            let map = self.map.borrow().clone();
            let mut due = Vec::new();
            for row in rows {
                let first = *earlier.get(&row.block.id).unwrap_or(&now);
                seen.insert(row.block.id, first);
                let home = placement(&row.block.id, &map, self.wanted(&row) as usize);
                if home.first() == Some(&self.me)
                    && now.duration_since(first) >= self.config.adopt_staged_after
                {
                    due.push(row);
                }
            }
            let mut puts = futures::stream::iter(due)
                .map(|row| async move {
                    let done = self.adopt(&row).await;
                    (row, done)
                })
                .buffer_unordered(PUTS_AT_ONCE);
            while let Some((row, done)) = puts.next().await {
                match done {
                    Ok(()) => put.entry(row.ino).or_default().push(row.block.id),
                    Err(e) => warn!(block = %row.block.id, error = %e, "staged block not adopted"),
                }
                throttle.spend(row.block.data.len() as u64).await;
            }
        }
        let mut adopted = 0u64;
        for (ino, blocks) in put {
            for part in blocks.chunks(UNSTAGE_MAX) {
                let op = Op::Unstage {
                    ino,
                    blocks: part.to_vec(),
                };
                meta.mutate(&op)
                    .await
                    .map_err(|e| format!("unstaging adopted blocks of {ino}: {e}"))?;
                adopted += part.len() as u64;
            }
        }
        Ok(adopted)
    }

    /// Copies of a staged block: its volume's R, or (its file gone: a snapshot's copy may
    /// still name it) the node's default.
    fn wanted(&self, row: &StagedRow) -> u32 {
        row.placement
            .as_ref()
            .map_or(self.config.default_replicas, |p| p.replicas)
            .max(1)
    }

    /// Puts one staged block after checking that its bytes are what it is named by.
    async fn adopt(&self, row: &StagedRow) -> Result<(), String> {
        let block = EncodedBlock::encode(&row.block.data).map_err(|e| e.to_string())?;
        if block.id != row.block.id {
            return Err(format!(
                "the metadata's staged bytes hash to {}, not to their id",
                block.id
            ));
        }
        let replicas = self.wanted(row);
        let (min_copies, volume, regions) = match &row.placement {
            Some(p) => (
                p.min_copies.clamp(1, replicas),
                p.volume,
                p.regions.iter().map(|r| u32::from(r.0)).collect(),
            ),
            None => (replicas.div_ceil(2), 0, Vec::new()),
        };
        self.peers
            .put_for(&block, replicas, min_copies, volume, &regions)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
