//! While this member leads, drops the extents removed files left behind (or their
//! purged tombstones), those a truncate or a punched hole cut off a file, and what a
//! deleted snapshot held, and an unfinished copy's rows, a step at a time
//! (`namespace/trim.rs`, `namespace/tree_drop.rs`, `namespace/copy_drop.rs`):
//! one entry of at most a few thousand rows each, so that other clients' changes go
//! between them.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::InodeId;
use redb::ReadableDatabase;
use tracing::{debug, info, warn};

use crate::namespace::{copy_drop, trim};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// How often the leader looks for files to trim.
const EVERY: Duration = Duration::from_millis(200);

/// Runs until the member stops.
pub async fn trim_loop(node: Arc<MetaNode>) {
    loop {
        tokio::time::sleep(EVERY).await;
        if !node.is_leader() {
            continue;
        }
        let pending = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| trim::ready_marks(&tx).ok())
            .unwrap_or_default();
        for m in pending {
            let what = "a removed or cut file's extents, or a deleted snapshot's tree";
            if let Some(n) = steps(&node, m.ino, RaftRequest::TrimStep, what).await {
                debug!(ino = %m.ino, steps = n, "{what} dropped");
            }
        }
        let copies = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| crate::namespace::merge::state_table(&tx).ok().flatten())
            .and_then(|state| copy_drop::pending(&state).ok())
            .unwrap_or_default();
        for c in copies {
            let what = "an unfinished copy's rows";
            if let Some(n) = steps(&node, c.root, RaftRequest::CopyRemoveStep, what).await {
                info!(
                    volume = c.volume,
                    steps = n,
                    "an unfinished copy's rows removed in steps"
                );
            }
        }
    }
}

/// Proposes `step(ino)` until it says it is done: how many it proposed, or `None` when
/// one failed (the next pass goes on).
async fn steps(
    node: &MetaNode,
    ino: InodeId,
    step: fn(InodeId) -> RaftRequest,
    what: &str,
) -> Option<u32> {
    let mut steps = 0u32;
    loop {
        steps += 1;
        match node.propose_internal(step(ino)).await {
            Ok(RaftResponse::Remote(Ok(o))) if o.applied == 0 => {}
            Ok(RaftResponse::Remote(Ok(_))) => return Some(steps),
            Ok(other) => {
                warn!(%ino, ?other, "dropping {what}");
                return None;
            }
            Err(e) => {
                warn!(%ino, error = %e, "dropping {what}");
                return None;
            }
        }
    }
}
