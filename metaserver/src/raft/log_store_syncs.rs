//! The log's fdatasyncs, counted and timed: how many there were (the metrics), and how
//! long one takes lately, which a spare follower compares with its own (`raft/spare.rs`).
//! A test may make each one slower by a fixed delay, as a slow disk would.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much of the recent time per sync the next sync makes up (an exponentially
/// weighted average: one in eight).
const WEIGHT: u64 = 8;
/// Syncs before the recent time is told: a member's first ones (it joins, it replays,
/// its log grows) say little of its disk.
const KNOWN_AFTER: u64 = 16;

/// The log's fdatasyncs (shared by the appends that sync in place and the flusher).
#[derive(Debug, Default)]
pub(super) struct Syncs {
    count: AtomicU64,
    /// The recent time per sync, in nanoseconds (0: none yet).
    recent_ns: AtomicU64,
    /// Added to every sync (tests of a slow disk; 0 otherwise), in nanoseconds.
    delay_ns: AtomicU64,
}

impl Syncs {
    /// Syncs `file`'s data, counted and timed.
    pub(super) fn sync(&self, file: &File) -> io::Result<()> {
        let start = Instant::now();
        let synced = file.sync_data();
        let delay = self.delay_ns.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_nanos(delay));
        }
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Two threads may sync at once: one of their samples may be lost, not the average.
        let before = self.recent_ns.load(Ordering::Relaxed);
        let recent = match before {
            0 => took,
            _ => before - before / WEIGHT + took / WEIGHT,
        };
        self.recent_ns.store(recent.max(1), Ordering::Relaxed);
        synced
    }

    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// How long a sync takes lately (zero before the first [`KNOWN_AFTER`]).
    pub(super) fn recent(&self) -> Duration {
        if self.count() < KNOWN_AFTER {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.recent_ns.load(Ordering::Relaxed))
    }

    pub(super) fn set_delay(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay_ns.store(ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_counted_and_their_recent_time_follows_a_slower_disk() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let syncs = Syncs::default();
        for n in 1..KNOWN_AFTER {
            syncs.sync(&file).unwrap();
            assert_eq!(syncs.count(), n);
            assert_eq!(
                syncs.recent(),
                Duration::ZERO,
                "not told before {KNOWN_AFTER}"
            );
        }
        syncs.sync(&file).unwrap();
        assert!(syncs.recent() > Duration::ZERO);
        // A disk 20 ms slower: the recent time moves toward it, a part at each sync.
        syncs.set_delay(Duration::from_millis(20));
        let (mut recent, mut longest) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..6 {
            let start = Instant::now();
            syncs.sync(&file).unwrap();
            longest = longest.max(start.elapsed());
            recent = syncs.recent();
        }
        assert_eq!(syncs.count(), KNOWN_AFTER + 6);
        // Six syncs of 20 ms or more from about nothing: at least 1 - (7/8)^6 of the way,
        // and an average, never more than the longest.
        assert!(recent >= Duration::from_micros(11_000), "{recent:?}");
        assert!(recent <= longest, "{recent:?} against {longest:?}");
    }
}
