//! While this member leads, drops the extents removed files left behind (or their
//! purged tombstones), those a truncate or a punched hole cut off a file, and what a
//! deleted snapshot held, a step at a time (`namespace/trim.rs`, `namespace/tree_drop.rs`):
//! one entry of at most a few thousand rows each, so that other clients' changes go
//! between them.

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableDatabase;
use tracing::{debug, warn};

use crate::namespace::trim;
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
            let mut steps = 0u32;
            loop {
                match node.propose_internal(RaftRequest::TrimStep(m.ino)).await {
                    Ok(RaftResponse::Remote(Ok(o))) if o.applied == 0 => steps += 1,
                    Ok(RaftResponse::Remote(Ok(_))) => {
                        debug!(ino = %m.ino, steps = steps + 1, "a removed or cut file's extents, or a deleted snapshot's tree, dropped");
                        break;
                    }
                    Ok(other) => {
                        warn!(ino = %m.ino, ?other, "dropping a removed or cut file's extents, or a deleted snapshot's tree");
                        break;
                    }
                    Err(e) => {
                        warn!(ino = %m.ino, error = %e, "dropping a removed or cut file's extents, or a deleted snapshot's tree");
                        break;
                    }
                }
            }
        }
    }
}
