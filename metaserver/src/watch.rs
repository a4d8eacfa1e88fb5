//! The feed mounts follow to keep their kernel caches honest: what each change of a volume
//! made stale, read from the change log (every local change is there, in order).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::ns::{Record, Touched};
use redb::{ReadTransaction, ReadableTable};

use crate::error::MetaError;
use crate::namespace::tables::CHANGELOG;

/// The most change-log records one answer reads (whatever volume they belong to).
const SCAN_LIMIT: usize = 4096;

/// One answer of the feed.
#[derive(Debug, Default)]
pub struct WatchAnswer {
    /// What changed in the volume.
    pub touched: Touched,
    /// The sequence to ask from next.
    pub next: u64,
    /// Records between the asked sequence and the oldest kept are gone.
    pub gap: bool,
    /// The newest record's sequence (of any volume).
    pub head: u64,
}

/// The change log growing this fast (records per second, every volume's) counts as busy.
const BUSY_PER_SECOND: f64 = 250.0;
/// Over at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The feed's load on this member: how fast the change log grows, as the feed's answers
/// (and the answers to peer regions' pulls) see it, and how many watchers it answers.
/// While the log grows fast (a loop of creates, an unpacked archive), a watcher that finds
/// changes gathers more before it answers, so that every mount of a volume does not poll
/// once per change (a peer's pull does the same); a lone change still reaches the other
/// mounts at once.
#[derive(Default)]
pub struct FeedLoad {
    rate: Mutex<Rate>,
    /// Watchers being answered by this member now.
    watchers: AtomicUsize,
}

/// How long a watcher gathers while the log grows fast: [`GATHER`], or [`GATHER_EACH`]
/// per watcher when there are more, up to [`GATHER_MAX`], so that a member answers the
/// feed about a thousand times a second however many mounts follow it (with thirty idle
/// mounts of a volume and 10 ms, creates in it ran at half their rate).
const GATHER: Duration = Duration::from_millis(10);
const GATHER_EACH: Duration = Duration::from_millis(1);
const GATHER_MAX: Duration = Duration::from_millis(200);

/// One watcher counted while it is answered (see [`FeedLoad::watching`]).
pub struct Watching<'a>(&'a FeedLoad);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Rate {
    /// When the current window started, and the log's head then.
    since: Option<(Instant, u64)>,
    busy: bool,
}

impl FeedLoad {
    /// Counts a watcher until the guard is dropped.
    pub fn watching(&self) -> Watching<'_> {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        Watching(self)
    }

    /// How long a watcher that found changes, the log's head being `head`, gathers more
    /// before it answers: none unless the log grew fast over the last window.
    pub fn gathering(&self, head: u64) -> Option<Duration> {
        self.busy(head)
            .then(|| gather_for(self.watchers.load(Ordering::Acquire)))
    }

    /// Whether the log, its head being `head`, grew fast over the last window.
    pub fn busy(&self, head: u64) -> bool {
        self.busy_at(head, Instant::now())
    }

    fn busy_at(&self, head: u64, now: Instant) -> bool {
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match r.since {
            Some((t, _)) if now - t < RATE_WINDOW => {}
            Some((t, h)) => {
                let per_second = head.saturating_sub(h) as f64 / (now - t).as_secs_f64();
                r.busy = per_second >= BUSY_PER_SECOND;
                r.since = Some((now, head));
            }
            None => r.since = Some((now, head)),
        }
        r.busy
    }
}

/// The changes of `volume` from change-log sequence `from` (0: none, only where "now" is),
/// but those client `own` asked for (0: none is left out).
pub fn changes(
    tx: &ReadTransaction,
    volume: u32,
    from: u64,
    own: u64,
) -> Result<WatchAnswer, MetaError> {
    let store = |e: redb::Error| MetaError::Store(e.to_string());
    let table = match tx.open_table(CHANGELOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(WatchAnswer {
                next: from.max(1),
                ..WatchAnswer::default()
            });
        }
        Err(e) => return Err(store(e.into())),
    };
    let head = table
        .last()
        .map_err(|e| store(e.into()))?
        .map_or(0, |(k, _)| k.value());
    if from == 0 {
        return Ok(WatchAnswer {
            next: head + 1,
            head,
            ..WatchAnswer::default()
        });
    }
    let first = table
        .first()
        .map_err(|e| store(e.into()))?
        .map_or(head + 1, |(k, _)| k.value());
    let mut answer = WatchAnswer {
        next: from,
        gap: from < first && from <= head,
        head,
        ..WatchAnswer::default()
    };
    for item in table
        .range(from.max(first)..)
        .map_err(|e| store(e.into()))?
        .take(SCAN_LIMIT)
    {
        let (k, v) = item.map_err(|e| store(e.into()))?;
        answer.next = k.value() + 1;
        let record: Record = serde_json::from_slice(v.value())
            .map_err(|e| MetaError::Store(format!("damaged change record {}: {e}", k.value())))?;
        if record.volume != volume || (own != 0 && record.client == Some(own)) {
            continue;
        }
        let touches = record.touches();
        if !touches.is_empty() {
            answer.touched.changes.push((record.client, touches));
        }
    }
    answer.next = answer.next.max(from.max(first));
    Ok(answer)
}

fn gather_for(watchers: usize) -> Duration {
    let each = GATHER_EACH.saturating_mul(u32::try_from(watchers).unwrap_or(u32::MAX));
    each.clamp(GATHER, GATHER_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_counts_as_busy_only_after_a_window_in_which_it_grew_fast() {
        let load = FeedLoad::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!load.busy_at(1_000, at(0)));
        // 10 records in 50 ms: fast, but the window is not over yet.
        assert!(!load.busy_at(1_010, at(50)));
        // 100 records in 200 ms: 500 per second.
        assert!(load.busy_at(1_100, at(200)));
        // Within the next window it stays busy, whatever comes.
        assert!(load.busy_at(1_100, at(250)));
        // 10 records in the 150 ms since: 67 per second.
        assert!(!load.busy_at(1_110, at(350)));
        // A quiet minute, then a burst: the first window after it is slow on average.
        assert!(!load.busy_at(1_300, at(60_350)));
        assert!(load.busy_at(1_400, at(60_500)));
    }

    #[test]
    fn watchers_gather_longer_the_more_of_them_there_are() {
        assert_eq!(gather_for(0), GATHER);
        assert_eq!(gather_for(10), GATHER);
        assert_eq!(gather_for(30), Duration::from_millis(30));
        assert_eq!(gather_for(100_000), GATHER_MAX);
        let load = FeedLoad::default();
        let (a, b) = (load.watching(), load.watching());
        assert_eq!(load.watchers.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(load.watchers.load(Ordering::Acquire), 0);
    }
}
