//! When to take a snapshot. A snapshot writes the whole namespace; taking one every fixed
//! number of entries makes its cost grow with the namespace, so creating N files costs
//! O(N²) in snapshots. Here a snapshot is taken once at least `min_entries` entries were
//! applied since the last one *and* the log since then is at least half the last
//! snapshot's size (or [`MAX_LOG_BYTES`], which bounds the log a restart replays): rebuilding
//! then never writes more than about twice the log it lets go, whatever the size of the
//! namespace. It also publishes what the log holds (`meridian_raft_log_entries`,
//! `meridian_raft_log_bytes`: its live records, the latest of them held decoded in memory).

use std::path::PathBuf;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tracing::{debug, warn};

use super::MetaRaft;
use super::log_store::LogStore;
use super::snapshot_dir;

/// The log is snapshotted once it holds this much, however large the last snapshot.
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// How often the policy looks.
const EVERY: Duration = Duration::from_millis(200);

/// Whether a snapshot is due: `entries` applied since the last one, `log_bytes` of live
/// log, `snapshot_bytes` of the last snapshot's data (0: none yet).
pub fn due(entries: u64, min_entries: u64, log_bytes: u64, snapshot_bytes: u64) -> bool {
    entries >= min_entries
        && (log_bytes.saturating_mul(2) >= snapshot_bytes || log_bytes >= MAX_LOG_BYTES)
}

/// Triggers this member's snapshots by [`due`]; runs until the member stops.
pub async fn run(raft: MetaRaft, log: LogStore, snapshots: PathBuf, min_entries: u64) {
    let mut waiting_for: Option<u64> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        // What the log holds (and a restart replays), for the operator.
        let (entries, log_bytes) = log.live();
        metrics::gauge!("meridian_raft_log_entries").set(entries as f64);
        metrics::gauge!("meridian_raft_log_bytes").set(log_bytes as f64);
        metrics::counter!("meridian_raft_log_syncs_total").absolute(log.syncs());
        let (applied, snapshot) = {
            let m = raft.metrics().borrow_watched().clone();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        if waiting_for.is_some_and(|target| snapshot < target) {
            continue;
        }
        waiting_for = None;
        let snapshot_bytes = snapshot_dir::current_len(&snapshots);
        if !due(
            applied - snapshot.min(applied),
            min_entries,
            log_bytes,
            snapshot_bytes,
        ) {
            continue;
        }
        debug!(applied, snapshot, log_bytes, snapshot_bytes, "snapshot due");
        match raft.trigger().snapshot().await {
            Ok(()) => waiting_for = Some(applied),
            Err(e) => {
                warn!(error = %e, "cannot trigger a snapshot; the member is stopping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_follow_the_log_not_the_entry_count_alone() {
        // A young namespace snapshots every `min_entries`, as before.
        assert!(due(10_000, 10_000, 3 << 20, 1 << 20));
        assert!(due(10_000, 10_000, 3 << 20, 0));
        assert!(!due(9_999, 10_000, 3 << 20, 0));
        // A large one waits until the log is worth half a snapshot...
        assert!(!due(10_000, 10_000, 3 << 20, 1 << 30));
        assert!(due(2_000_000, 10_000, 512 << 20, 1 << 30));
        // ...but never holds more than MAX_LOG_BYTES of log.
        assert!(due(900_000, 10_000, MAX_LOG_BYTES, 10 << 30));
    }
}
