//! Where committed entries apply, and when: at once, or a little behind.
//!
//! The entries a member leads apply as soon as they commit: their callers wait for the
//! outcome, and the leader answers reads from what it applied. The entries another member
//! leads (this member follows) have no callers here, and a follower answers only stale
//! reads itself (anything else goes to the leader): they queue, and a thread of their own
//! applies them together once the oldest has waited [`LAG`] (or [`MAX_BEHIND`] wait), one
//! transaction for many. Applied one by one as they commit, they cost a follower most of
//! its processor time, and its answer to the leader's next append (which carries the
//! commit) waited for them: on a small machine the members share the processors, so every
//! write paid for them. That thread applies and commits a batch at `SCHED_IDLE`, and
//! whoever waits for it hurries it (`background.rs`).
//!
//! Nothing is lost by the wait: committed entries are durable in the log, and a restart
//! applies again from what the state holds. Whatever reads this member's state as of what
//! Raft counts applied catches up first: the first entry it leads (a new leader's blank
//! entry, which its reads wait for), a snapshot built here, and a snapshot installed here
//! (which replaces the queue instead). The applied index members publish (and reads wait
//! for) follows what the state holds, not the queue.
//!
//! The entries a member leads apply ahead instead: once the leader's log has them durable,
//! its flusher applies them into a write transaction while the followers write them, and
//! when they commit the transaction commits (with whatever else commits with them). Applying
//! was the largest part of the leader's share of a round after the followers' answers.
//! Only small changes of the namespace (not merges, images or copies: the flusher syncs
//! nothing else meanwhile), only when nothing before them waits to apply (the pipeline is
//! empty), and only one such transaction at a time; it is dropped (nothing of it is seen)
//! when what commits is not what it holds, when the state is replaced, and after
//! [`AHEAD_MAX`] by the thread applying behind (a leader that lost its leadership may
//! never see them commit, and the transaction holds redb's writer).
//! Applying is deterministic, so the outcome is the one applying at the commit would give.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};
use std::{io, mem};

use openraft::EntryPayload;
use openraft::storage::EntryResponder;
use openraft::type_config::alias::EntryOf;
use redb::Database;

use super::background::Background;
use super::state_machine::{Applied, Shared, apply_batch, apply_into, commit, stamps_of};
use super::{Request, TypeConfig};

/// How long an entry another member leads may wait to apply here.
pub(super) const LAG: Duration = Duration::from_millis(20);
/// Entries waiting that the thread applying behind applies at once, whatever the lag.
pub(super) const MAX_BEHIND: usize = 512;
/// Most entries waiting: the append that would pass it applies them all itself, on Raft's
/// worker (a thread applying behind that falls this far behind is starved, and the queue
/// would otherwise grow without bound).
pub(super) const MAX_QUEUED: usize = 8 * MAX_BEHIND;
/// Entries applied without fsync before an apply persists everything.
const DURABLE_EVERY: u64 = 1000;
/// The longest entries applied ahead wait for their commit.
pub(super) const AHEAD_MAX: Duration = Duration::from_millis(200);

/// Entries this member leads, applied into a transaction before they commit.
struct Ahead {
    tx: redb::WriteTransaction,
    applied: Applied,
    since: Instant,
}

impl Ahead {
    /// Whether it has waited [`AHEAD_MAX`] for its commit.
    fn stale(&self) -> bool {
        self.since.elapsed() >= AHEAD_MAX
    }

    /// Whether `batch` starts with the entries this holds.
    fn starts(&self, batch: &[EntryResponder<TypeConfig>]) -> bool {
        self.applied.ids.len() <= batch.len()
            && self
                .applied
                .ids
                .iter()
                .zip(batch)
                .all(|(id, (e, _))| *id == e.log_id)
    }
}

/// Applies committed entries to the state, in log order.
pub(super) struct Applier {
    db: Arc<Database>,
    shared: Arc<Shared>,
    /// Held while a batch applies (one at a time, in log order): the entries applied
    /// since the last durable transaction.
    applying: Mutex<u64>,
    queue: Mutex<Queue>,
    /// Wakes the thread applying behind.
    wake: Condvar,
    /// Entries applied ahead (taken under `applying`, or dropped when stale).
    ahead: Mutex<Option<Ahead>>,
    /// The thread applying behind, which applies at `SCHED_IDLE` (see `background.rs`):
    /// whoever waits for `applying` hurries it.
    behind: Background,
}

#[derive(Default)]
struct Queue {
    /// Committed entries not applied yet, in log order.
    entries: Vec<EntryResponder<TypeConfig>>,
    /// When the oldest of them was queued.
    since: Option<Instant>,
    /// How long the oldest may wait ([`LAG`]).
    lag: Duration,
    /// [`MAX_BEHIND`] wait: the thread applying behind applies them now.
    due: bool,
    /// An apply behind failed: the next apply reports it (and Raft stops this member, as
    /// on any failure of its store).
    failed: Option<String>,
    stop: bool,
}

impl Queue {
    /// The kept failure, if an apply failed.
    fn failure(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }
}

/// Most changes applied ahead at once: applying ahead runs on the log's flusher, which
/// syncs nothing else meanwhile.
const AHEAD_COST_MAX: usize = 256;

/// How many changes `entry` makes, if it is a small change of the namespace (or blank),
/// worth applying ahead on the log's flusher; `None` for merges, images and copies.
pub(super) fn ahead_cost(entry: &EntryOf<TypeConfig>) -> Option<usize> {
    match &entry.payload {
        EntryPayload::Blank | EntryPayload::Normal(Request::Ns(_)) => Some(1),
        EntryPayload::Normal(Request::WriteBack(wb)) => Some(1 + wb.cmds.len()),
        _ => None,
    }
}

/// Whether `entries` together are light enough to apply ahead.
fn light(entries: &[&EntryOf<TypeConfig>]) -> bool {
    let mut cost = 0;
    for e in entries {
        match ahead_cost(e) {
            Some(c) => cost += c,
            None => return false,
        }
    }
    cost <= AHEAD_COST_MAX
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Applier {
    pub(super) fn new(db: Arc<Database>, shared: Arc<Shared>) -> Self {
        Applier {
            db,
            shared,
            applying: Mutex::new(0),
            queue: Mutex::new(Queue {
                lag: LAG,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            ahead: Mutex::new(None),
            behind: Background::default(),
        }
    }

    pub(super) fn db(&self) -> &Arc<Database> {
        &self.db
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies everything queued, then `batch`. A failure (or a panic) is kept: every
    /// later apply reports it instead of applying entries past the ones that failed.
    pub(super) fn apply(&self, batch: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        self.apply_as(batch, false)
    }

    /// [`Applier::apply`]; `behind` on the thread applying behind, which applies and
    /// commits at `SCHED_IDLE` (see `background.rs`).
    fn apply_as(&self, batch: Vec<EntryResponder<TypeConfig>>, behind: bool) -> io::Result<()> {
        let mut applying = self.behind.lock(&self.applying);
        let mut all = self.take()?;
        all.extend(batch);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.apply_locked(&mut applying, all, behind)
        }));
        let failure = match &outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("applying committed entries panicked".to_string()),
        };
        if let Some(f) = failure {
            lock(&self.queue).failed.get_or_insert(f);
        }
        outcome.unwrap_or_else(|p| panic::resume_unwind(p))
    }

    /// Queues `batch` (entries another member leads) to apply within the lag, or at once
    /// on the thread applying behind once [`MAX_BEHIND`] wait. A member catching up used
    /// to apply every [`MAX_BEHIND`] itself, on the Raft worker that answers the leader's
    /// appends and heartbeats: 512 entries of a large namespace took long enough for the
    /// leader to give up on the answer and send them again. Only past [`MAX_QUEUED`] does
    /// the append apply them itself.
    pub(super) fn defer(&self, batch: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        // The clock observes their stamps now, as if applied: a new leader stamps after
        // everything committed.
        let mut stamps = Vec::new();
        for (entry, _) in &batch {
            stamps_of(entry, &mut stamps);
        }
        self.shared.observe(stamps);
        let full = {
            let mut q = lock(&self.queue);
            q.failure()?;
            q.entries.extend(batch);
            if q.since.is_none() {
                q.since = Some(Instant::now());
                self.wake.notify_one();
            }
            if q.entries.len() >= MAX_BEHIND && !q.due {
                q.due = true;
                self.wake.notify_one();
            }
            q.entries.len() >= MAX_QUEUED
        };
        if full { self.catch_up() } else { Ok(()) }
    }

    /// Applies everything queued.
    pub(super) fn catch_up(&self) -> io::Result<()> {
        self.apply(Vec::new())
    }

    /// Forgets everything queued: the state is about to be replaced by a snapshot taken
    /// after it. Runs `replace` while no batch applies.
    pub(super) fn replace<T>(&self, replace: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let _applying = self.behind.lock(&self.applying);
        lock(&self.ahead).take();
        self.take()?;
        replace()
    }

    /// Takes the queued entries.
    fn take(&self) -> io::Result<Vec<EntryResponder<TypeConfig>>> {
        let mut q = lock(&self.queue);
        q.since = None;
        q.due = false;
        q.failure()?;
        Ok(mem::take(&mut q.entries))
    }

    fn apply_locked(
        &self,
        since_durable: &mut u64,
        batch: Vec<EntryResponder<TypeConfig>>,
        behind: bool,
    ) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Entries applied ahead are used if the batch starts with them, and dropped
        // otherwise (before anything else begins a write transaction).
        let ahead = lock(&self.ahead).take().filter(|a| a.starts(&batch));
        // From here to the transaction's commit this holds no lock but `applying` (and
        // redb's own).
        let lowered = if behind { self.behind.lowered() } else { None };
        // The log is the durability: every entry applied here is fsync'd in a majority's
        // log, and a restart applies again whatever this transaction had not persisted
        // (the applied id commits with the state). A snapshot persists everything first,
        // so the log is never purged past what this file holds durably. Every so often an
        // apply persists anyway: it bounds the replay after a crash, and lets redb reuse
        // the pages freed since.
        *since_durable += batch.len() as u64;
        let durable = *since_durable >= DURABLE_EVERY;
        if durable {
            *since_durable = 0;
        }
        let Some(Ahead {
            tx, mut applied, ..
        }) = ahead
        else {
            return apply_batch(&self.db, &self.shared, batch, durable, lowered);
        };
        // What committed with them, if anything.
        let rest = &batch[applied.ids.len()..];
        if !rest.is_empty() {
            apply_into(
                &tx,
                self.shared.region,
                rest.iter().map(|(e, _)| e),
                &mut applied,
            )?;
        }
        let responders = batch.into_iter().map(|(_, r)| r);
        commit(
            &self.db,
            &self.shared,
            tx,
            applied,
            responders,
            durable,
            lowered,
        )
    }

    /// Drops entries applied ahead that have waited [`AHEAD_MAX`] for their commit.
    fn drop_stale_ahead(&self) {
        let mut ahead = lock(&self.ahead);
        if ahead.as_ref().is_some_and(Ahead::stale) {
            *ahead = None;
        }
    }

    /// Applies the run of `entries` (appended by this member as their leader, and durable
    /// in its log, or about to be: `durable`) that follows what the state holds into a
    /// write transaction kept for their commit, if nothing applies or waits to apply and
    /// no other is kept; says whether it did. Never waits: it runs on the log's flusher.
    pub(super) fn apply_ahead(&self, entries: &[&EntryOf<TypeConfig>], durable: bool) -> bool {
        let _applying = match self.applying.try_lock() {
            Ok(guard) => guard,
            // A panic while applying is kept in the queue (see `apply`), not in the lock.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        {
            let q = lock(&self.queue);
            if q.failed.is_some() || !q.entries.is_empty() {
                return false;
            }
        }
        let mut ahead = lock(&self.ahead);
        if ahead.as_ref().is_some_and(Ahead::stale) {
            *ahead = None;
        }
        if ahead.is_some() {
            return false;
        }
        let first = *self.shared.applied.borrow() + 1;
        let run: Vec<&EntryOf<TypeConfig>> = entries
            .iter()
            .skip_while(|e| e.log_id.index != first)
            .zip(first..)
            .take_while(|(e, index)| e.log_id.index == *index)
            .map(|(e, _)| *e)
            .collect();
        if run.is_empty() || !light(&run) {
            return false;
        }
        let mut applied = Applied::default();
        // Another writer (a snapshot or an image being built): not this time.
        let Ok(tx) = self.db.try_begin_write() else {
            return false;
        };
        // The changes waiting for an early answer among them (`early.rs`).
        let expected: Vec<_> = if self.shared.early.wanted() {
            run.iter()
                .map(|e| (super::notices::place(e), super::early::key_of(e)))
                .collect()
        } else {
            Vec::new()
        };
        // A failure here is the commit's to report (it applies them again).
        if apply_into(&tx, self.shared.region, run, &mut applied).is_err() {
            return false;
        }
        if !expected.is_empty() {
            self.shared
                .early
                .applied_ahead(&expected, &applied.responses, durable);
        }
        *ahead = Some(Ahead {
            tx,
            applied,
            since: Instant::now(),
        });
        true
    }

    /// Whether entries should apply ahead beside the leader's sync rather than after it:
    /// a handler waits for an early answer (`early.rs`).
    pub(super) fn before_sync(&self) -> bool {
        self.shared.early.wanted()
    }

    /// The thread applying behind: waits until the oldest queued entry has waited
    /// [`LAG`], then applies the queue; until [`Applier::stop`].
    pub(super) fn run_behind(&self) {
        loop {
            {
                let mut q = lock(&self.queue);
                loop {
                    if q.stop {
                        return;
                    }
                    match q.since {
                        // Every so often: entries applied ahead that did not commit go.
                        None => {
                            let (guard, waited) = self
                                .wake
                                .wait_timeout(q, AHEAD_MAX / 4)
                                .unwrap_or_else(|p| p.into_inner());
                            q = guard;
                            if waited.timed_out() {
                                drop(q);
                                self.drop_stale_ahead();
                                q = lock(&self.queue);
                            }
                        }
                        Some(t) if t.elapsed() < q.lag && !q.due => {
                            let left = q.lag.saturating_sub(t.elapsed());
                            q = self
                                .wake
                                .wait_timeout(q, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        Some(_) => break,
                    }
                }
            }
            // A failure is kept (see `apply`) and reported to Raft by the next apply.
            match panic::catch_unwind(AssertUnwindSafe(|| self.apply_as(Vec::new(), true))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "applying committed entries failed"),
                Err(_) => tracing::error!("applying committed entries panicked"),
            }
        }
    }

    /// Lets the oldest queued entry wait `lag` instead of [`LAG`].
    pub(super) fn set_lag(&self, lag: Duration) {
        lock(&self.queue).lag = lag;
        self.wake.notify_all();
    }

    /// Ends [`Applier::run_behind`].
    pub(super) fn stop(&self) {
        lock(&self.queue).stop = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
#[path = "applier_tests.rs"]
mod tests;
