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
    /// in its log) that follows what the state holds into a write transaction kept for
    /// their commit, if nothing applies or waits to apply and no other is kept. Never
    /// waits: it runs on the log's flusher.
    pub(super) fn apply_ahead(&self, entries: Vec<EntryOf<TypeConfig>>) {
        let _applying = match self.applying.try_lock() {
            Ok(guard) => guard,
            // A panic while applying is kept in the queue (see `apply`), not in the lock.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        {
            let q = lock(&self.queue);
            if q.failed.is_some() || !q.entries.is_empty() {
                return;
            }
        }
        let mut ahead = lock(&self.ahead);
        if ahead.as_ref().is_some_and(Ahead::stale) {
            *ahead = None;
        }
        if ahead.is_some() {
            return;
        }
        let first = *self.shared.applied.borrow() + 1;
        let run: Vec<&EntryOf<TypeConfig>> = entries
            .iter()
            .skip_while(|e| e.log_id.index != first)
            .zip(first..)
            .take_while(|(e, index)| e.log_id.index == *index)
            .map(|(e, _)| e)
            .collect();
        if run.is_empty() || !light(&run) {
            return;
        }
        let mut applied = Applied::default();
        // Another writer (a snapshot or an image being built): not this time.
        let Ok(tx) = self.db.try_begin_write() else {
            return;
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
        if apply_into(&tx, self.shared.region, run, &mut applied).is_ok() {
            if !expected.is_empty() {
                self.shared
                    .early
                    .applied_ahead(&expected, &applied.responses);
            }
            *ahead = Some(Ahead {
                tx,
                applied,
                since: Instant::now(),
            });
        }
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
mod tests {
    use std::time::Duration;

    use futures::stream;
    use meridian_proto::ns::{Command, Op, Timespec, VolumePolicy};
    use meridian_proto::{Hlc, RegionId};
    use openraft::RaftTypeConfig;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use openraft::type_config::TypeConfigExt;
    use openraft::type_config::alias::{EntryOf, LogIdOf};
    use openraft::vote::RaftLeaderIdExt;
    use redb::ReadableDatabase;

    use super::super::state_machine::StateMachine;
    use super::super::{Request, TypeConfig};
    use super::{AHEAD_MAX, Applier, lock};
    use crate::namespace::NsReader;

    /// Entry `index`, led by member `leader`: creates volume `name`.
    fn create(leader: u64, index: u64, name: &str) -> EntryOf<TypeConfig> {
        let id = LogIdOf::<TypeConfig>::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, leader),
            index,
        );
        EntryOf::<TypeConfig>::new_normal(
            id,
            Request::Ns(Command {
                op: Op::CreateVolume {
                    name: name.into(),
                    policy: VolumePolicy::default(),
                },
                hlc: Hlc {
                    wall_ms: 1000 + index,
                    counter: 0,
                    region: RegionId(1),
                },
                now: Timespec::default(),
                request: None,
                ino: None,
                lease: false,
            }),
        )
    }

    fn volumes(sm: &StateMachine) -> Vec<String> {
        let db = sm.db();
        let tx = db.begin_read().unwrap();
        let mut names: Vec<String> = NsReader::new(&tx)
            .volumes()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.sort();
        names
    }

    async fn apply(sm: &mut StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
        sm.apply(stream::iter(entries.into_iter().map(|e| Ok((e, None)))))
            .await
            .unwrap();
    }

    /// A follower's entries wait (and apply together), and everything this member leads,
    /// a snapshot and a restart see them applied first; the thread applies them when the
    /// oldest has waited the lag, with nothing else happening.
    #[test]
    fn entries_another_member_leads_apply_behind_and_first_when_anything_needs_them() {
        TypeConfig::run(async {
            let dir = tempfile::TempDir::new().unwrap();
            let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
            // A lag no test outlasts: nothing applies them but what the test does.
            let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
            apply(&mut sm, vec![create(2, 1, "a"), create(2, 2, "b")]).await;
            assert!(volumes(&sm).is_empty(), "led by member 2: they wait");
            assert_eq!(
                *shared.applied.borrow(),
                0,
                "published as the state has them"
            );
            assert!(
                shared.clock.lock().unwrap().last().wall_ms >= 1002,
                "the clock observed their stamps"
            );
            apply(&mut sm, vec![create(1, 3, "c")]).await;
            assert_eq!(
                volumes(&sm),
                ["a", "b", "c"],
                "this member's own: all, in order"
            );
            assert_eq!(*shared.applied.borrow(), 3);

            apply(&mut sm, vec![create(2, 4, "d")]).await;
            assert_eq!(volumes(&sm).len(), 3);
            let _ = sm.get_snapshot_builder().await;
            assert_eq!(volumes(&sm), ["a", "b", "c", "d"], "a snapshot holds them");

            apply(&mut sm, vec![create(2, 5, "e")]).await;
            drop(sm);
            // Restarted: the state says what it applied; Raft applies the rest again from
            // its log.
            let (sm, _) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
            let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied.map(|id| id.index), Some(4));
            drop(sm);

            // A lag of 50 ms: applied with nothing else happening.
            let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
            let mut sm = sm.behind_by(1, Duration::from_millis(50)).unwrap();
            let mut applied = shared.applied.subscribe();
            apply(&mut sm, vec![create(2, 5, "e"), create(2, 6, "f")]).await;
            tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|i| *i == 6))
                .await
                .expect("applied within the lag")
                .unwrap();
            assert_eq!(volumes(&sm), ["a", "b", "c", "d", "e", "f"]);
        });
    }

    /// A member that takes over as the leader brings its state up to what Raft counts
    /// applied before it acts on it (`Shared::catch_up_to`, from `MetaNode::is_leader`);
    /// a member starts with the applied index its state holds.
    #[test]
    fn a_member_catches_up_before_it_acts_as_the_leader() {
        TypeConfig::run(async {
            let dir = tempfile::TempDir::new().unwrap();
            let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
            let mut sm = sm.behind_by(1, Duration::from_secs(3600)).unwrap();
            apply(&mut sm, vec![create(2, 1, "a"), create(2, 2, "b")]).await;
            assert!(volumes(&sm).is_empty());
            shared.catch_up_to(2);
            assert_eq!(volumes(&sm), ["a", "b"]);
            assert_eq!(*shared.applied.borrow(), 2);
            drop(sm);
            let (_sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
            assert_eq!(
                *shared.applied.borrow(),
                2,
                "published from the state at start"
            );
        });
    }

    /// Once an apply failed, nothing applies past it: every later apply, queued or not,
    /// reports the failure (Raft then stops the member) and changes nothing.
    #[test]
    fn after_a_failed_apply_nothing_applies_past_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let applier = Applier::new(sm.db(), shared.clone());
        let entry = |e: EntryOf<TypeConfig>| (e, None);
        applier.apply(vec![entry(create(1, 1, "a"))]).unwrap();
        applier.defer(vec![entry(create(2, 2, "b"))]).unwrap();
        lock(&applier.queue)
            .failed
            .get_or_insert_with(|| "a store failure".into());
        for outcome in [
            applier.apply(vec![entry(create(1, 3, "c"))]),
            applier.defer(vec![entry(create(2, 3, "c"))]),
            applier.catch_up(),
            applier.replace(|| Ok(())),
        ] {
            let e = outcome.expect_err("the failure is kept");
            assert!(e.to_string().contains("a store failure"), "{e}");
        }
        assert_eq!(volumes(&sm), ["a"]);
        assert_eq!(*shared.applied.borrow(), 1);
    }

    /// Entries this member leads apply into a transaction before they commit, unseen until
    /// they do; the commit uses it when it starts with them and drops it otherwise (a
    /// catch-up applying nothing keeps it); only small namespace changes apply ahead, and
    /// nothing applies ahead of entries waiting to apply.
    #[test]
    fn entries_this_member_leads_apply_ahead_unseen_until_they_commit() {
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let applier = Applier::new(sm.db(), shared.clone());
        let entry = |e: EntryOf<TypeConfig>| (e, None);
        let held = |a: &Applier| lock(&a.ahead).as_ref().map(|a| a.applied.ids.len());

        applier.apply_ahead(vec![create(1, 1, "a"), create(1, 2, "b")]);
        assert_eq!(held(&applier), Some(2));
        assert!(volumes(&sm).is_empty(), "not committed: unseen");
        assert_eq!(*shared.applied.borrow(), 0);
        // One more commits with them: applied into the same transaction.
        applier
            .apply(vec![
                entry(create(1, 1, "a")),
                entry(create(1, 2, "b")),
                entry(create(1, 3, "c")),
            ])
            .unwrap();
        assert_eq!(held(&applier), None);
        assert_eq!(volumes(&sm), ["a", "b", "c"]);
        assert_eq!(*shared.applied.borrow(), 3);

        // Only the run that follows what the state holds.
        applier.apply_ahead(vec![
            create(1, 3, "c"),
            create(1, 4, "d"),
            create(1, 6, "f"),
        ]);
        assert_eq!(held(&applier), Some(1));
        // What commits is another leader's entry at that index: the transaction is dropped.
        applier.apply(vec![entry(create(2, 4, "e"))]).unwrap();
        assert_eq!(held(&applier), None);
        assert_eq!(volumes(&sm), ["a", "b", "c", "e"]);

        // Less than it holds commits: dropped too, and applied again.
        applier.apply_ahead(vec![create(1, 5, "f"), create(1, 6, "g")]);
        assert_eq!(held(&applier), Some(2));
        applier.apply(vec![entry(create(1, 5, "f"))]).unwrap();
        assert_eq!(held(&applier), None);
        assert_eq!(volumes(&sm), ["a", "b", "c", "e", "f"]);

        // Applying nothing (a catch-up with nothing queued) keeps it.
        applier.apply_ahead(vec![create(1, 6, "g")]);
        assert_eq!(held(&applier), Some(1));
        applier.catch_up().unwrap();
        assert_eq!(held(&applier), Some(1));
        applier.replace(|| Ok(())).unwrap();
        assert_eq!(held(&applier), None);

        // Not what the log's flusher should spend its time on: merges, images, copies.
        let peers = EntryOf::<TypeConfig>::new_normal(
            LogIdOf::<TypeConfig>::new(
                <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1),
                6,
            ),
            Request::Peers(vec![]),
        );
        applier.apply_ahead(vec![peers]);
        assert_eq!(held(&applier), None);

        // Entries waiting to apply come first: nothing applies ahead of them.
        applier.defer(vec![entry(create(2, 6, "g"))]).unwrap();
        applier.apply_ahead(vec![create(1, 7, "h")]);
        assert_eq!(held(&applier), None);
        applier.catch_up().unwrap();
        assert_eq!(volumes(&sm), ["a", "b", "c", "e", "f", "g"]);

        // Replacing the state drops it.
        applier.apply_ahead(vec![create(1, 7, "h")]);
        assert_eq!(held(&applier), Some(1));
        applier.replace(|| Ok(())).unwrap();
        assert_eq!(held(&applier), None);
        assert_eq!(*shared.applied.borrow(), 6);
    }

    /// Entries applied ahead that never commit (the leader lost its leadership) do not
    /// hold redb's writer past [`AHEAD_MAX`]: the thread applying behind drops them.
    #[test]
    fn entries_applied_ahead_that_never_commit_are_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let applier = std::sync::Arc::new(Applier::new(sm.db(), shared.clone()));
        applier.apply_ahead(vec![create(1, 1, "a")]);
        let since = lock(&applier.ahead)
            .as_ref()
            .map(|a| a.since)
            .expect("held");
        let thread = {
            let applier = applier.clone();
            std::thread::spawn(move || applier.run_behind())
        };
        // Another writer waits for the thread to drop them.
        let (done, wait) = std::sync::mpsc::channel();
        let db = sm.db();
        std::thread::spawn(move || {
            let tx = db.begin_write().unwrap();
            tx.abort().unwrap();
            let _ = done.send(since.elapsed());
        });
        let waited = wait
            .recv_timeout(Duration::from_secs(60))
            .expect("a writer gets redb's writer once they are dropped");
        assert!(waited >= AHEAD_MAX, "held until dropped ({waited:?})");
        assert!(lock(&applier.ahead).is_none());
        assert!(volumes(&sm).is_empty(), "never committed: never seen");
        assert_eq!(*shared.applied.borrow(), 0);
        applier.stop();
        thread.join().unwrap();
    }

    /// Entry `index`, led by member 2, that names the peer regions (cheap to apply).
    fn peers(
        index: u64,
    ) -> (
        EntryOf<TypeConfig>,
        Option<openraft::storage::ApplyResponder<TypeConfig>>,
    ) {
        let id = LogIdOf::<TypeConfig>::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 2),
            index,
        );
        (
            EntryOf::<TypeConfig>::new_normal(id, Request::Peers(Vec::new())),
            None,
        )
    }

    /// Waits (60 s at most) until the state holds entry `index`.
    fn wait_applied(shared: &super::Shared, index: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while *shared.applied.borrow() < index {
            assert!(
                std::time::Instant::now() < deadline,
                "entry {index} never applied"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A follower that falls [`MAX_BEHIND`] entries behind has the thread applying behind
    /// apply them at once, and its appends (the Raft worker) do not wait for that: only
    /// past [`MAX_QUEUED`] does an append apply the queue itself.
    #[test]
    fn a_full_queue_applies_on_the_thread_behind_and_the_append_does_not_wait_for_it() {
        use super::{MAX_BEHIND, MAX_QUEUED};
        let dir = tempfile::TempDir::new().unwrap();
        let (sm, shared) = StateMachine::open(dir.path(), RegionId(1)).unwrap();
        let applier = std::sync::Arc::new(Applier::new(sm.db(), shared.clone()));
        // A lag no test outlasts: only a full queue makes the thread apply.
        applier.set_lag(Duration::from_secs(3600));
        let thread = {
            let applier = applier.clone();
            std::thread::spawn(move || applier.run_behind())
        };
        // The thread is busy (holds the applier's lock) when the queue fills.
        let busy = lock(&applier.applying);
        let (done, returned) = std::sync::mpsc::channel();
        {
            let applier = applier.clone();
            std::thread::spawn(move || {
                let r = applier.defer((1..=MAX_BEHIND as u64).map(peers).collect());
                let _ = done.send(r.is_ok());
            });
        }
        assert!(
            returned
                .recv_timeout(Duration::from_secs(60))
                .expect("the append waited for the applier"),
            "queued"
        );
        assert_eq!(*shared.applied.borrow(), 0);
        drop(busy);
        // Applied now, not after the lag.
        wait_applied(&shared, MAX_BEHIND as u64);
        applier.stop();
        thread.join().unwrap();

        // Without that thread (starved), the append that passes MAX_QUEUED applies them.
        let applier = Applier::new(sm.db(), shared.clone());
        applier.set_lag(Duration::from_secs(3600));
        let first = MAX_BEHIND as u64 + 1;
        applier
            .defer((first..first + MAX_QUEUED as u64 - 1).map(peers).collect())
            .unwrap();
        assert_eq!(*shared.applied.borrow(), MAX_BEHIND as u64, "queued");
        applier
            .defer(vec![peers(first + MAX_QUEUED as u64 - 1)])
            .unwrap();
        assert_eq!(
            *shared.applied.borrow(),
            (MAX_BEHIND + MAX_QUEUED) as u64,
            "applied by the append"
        );
    }
}
