//! The log's flusher: one fdatasync for every append written since the last (group
//! commit), then the clients' durable notices, the appends' completions in order, and the
//! entries this member leads given to apply ahead of their commit (or beside the sync, on
//! a thread of their own, while a client waits for an early answer: the hook hears when
//! that sync returned).

use std::fmt::Debug;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use openraft::storage::IOFlushed;
use openraft::type_config::alias::EntryOf;

use super::{Inner, Noticed, Syncs, TypeConfig};

/// Applies entries ahead (`durable`: this member's copy is); says whether it took them.
type ApplyAhead = dyn Fn(&[&EntryOf<TypeConfig>], bool) -> bool + Send + Sync;

/// What the log calls, on its flusher, with the entries this member appended as their
/// leader once they are durable in it (to apply them ahead of their commit), and which of
/// them it wants (only those are copied). While `before_sync` says so, it calls `apply`
/// beside its fdatasync instead (with `durable` false, on a thread of its own), then
/// `synced` once both are done (with whether the sync succeeded), and `apply` again with
/// what it did not take. `apply` says whether it took the entries; neither may wait.
#[derive(Clone)]
pub struct AheadHook {
    pub(super) wants: fn(&EntryOf<TypeConfig>) -> bool,
    apply: Arc<ApplyAhead>,
    before_sync: Arc<dyn Fn() -> bool + Send + Sync>,
    synced: Arc<dyn Fn(bool) + Send + Sync>,
}

impl AheadHook {
    pub fn new(
        wants: fn(&EntryOf<TypeConfig>) -> bool,
        apply: impl Fn(&[&EntryOf<TypeConfig>], bool) -> bool + Send + Sync + 'static,
    ) -> Self {
        AheadHook {
            wants,
            apply: Arc::new(apply),
            before_sync: Arc::new(|| false),
            synced: Arc::new(|_| {}),
        }
    }

    /// Applies before the fdatasync while `when` says so (a handler waits for an early
    /// answer: `early.rs`), and tells `synced` when that sync returned.
    pub fn before_sync(
        mut self,
        when: impl Fn() -> bool + Send + Sync + 'static,
        synced: impl Fn(bool) + Send + Sync + 'static,
    ) -> Self {
        self.before_sync = Arc::new(when);
        self.synced = Arc::new(synced);
        self
    }
}

impl Debug for AheadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AheadHook")
    }
}

/// What the flusher completes after its next fdatasync.
pub(super) enum Flushed {
    /// Appended entries, reported to Raft; those this member leads, to apply ahead; the
    /// places of those clients want notices of; how long to gather more before the sync
    /// (a spare follower's appends; zero otherwise).
    Append(
        IOFlushed<TypeConfig>,
        Vec<EntryOf<TypeConfig>>,
        Vec<Noticed>,
        Duration,
    ),
    /// A caller waiting for everything written so far to be durable.
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Where entries to apply ahead go, and where they come back from with whether the hook
/// took them.
type AheadThread = (
    mpsc::Sender<(AheadHook, Vec<EntryOf<TypeConfig>>, Arc<Meet>)>,
    mpsc::Receiver<(bool, Vec<EntryOf<TypeConfig>>)>,
);

/// The thread applying ahead while the flusher syncs (see `flush_loop`). `None` if it
/// could not be started (the flusher then applies before it syncs).
fn ahead_thread() -> Option<AheadThread> {
    let (tx, rx) = mpsc::channel::<(AheadHook, Vec<EntryOf<TypeConfig>>, Arc<Meet>)>();
    let (done_tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("raft-log-ahead".into())
        .spawn(move || {
            for (hook, led, meet) in rx {
                let took = apply_ahead(&hook, &led, false);
                meet.applied(&hook);
                if done_tx.send((took, led)).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some((tx, done))
}

/// A batch's apply beside its sync, and the sync: whichever ends second tells the hook
/// the sync returned (its answers waiting for this member's copy go then, neither after
/// Raft's completions nor before the apply).
#[derive(Default)]
struct Meet(AtomicU8);

const APPLIED: u8 = 1;
const SYNCED: u8 = 2;
const SYNCED_OK: u8 = 4;

impl Meet {
    fn applied(&self, hook: &AheadHook) {
        let was = self.0.fetch_or(APPLIED, Ordering::AcqRel);
        if was & SYNCED != 0 {
            (hook.synced)(was & SYNCED_OK != 0);
        }
    }

    fn synced(&self, hook: &AheadHook, ok: bool) {
        let done = if ok { SYNCED | SYNCED_OK } else { SYNCED };
        if self.0.fetch_or(done, Ordering::AcqRel) & APPLIED != 0 {
            (hook.synced)(ok);
        }
    }
}

/// What became of a batch's entries given to apply ahead before its sync.
enum Before {
    /// None were (no client waits for an early answer).
    Nothing,
    /// On the thread applying ahead, while the flusher syncs.
    OnThread(Arc<Meet>),
    /// Given here (no thread): whether the hook took them, and the entries.
    Given(bool, Vec<EntryOf<TypeConfig>>),
}

/// The flusher: one fdatasync for everything queued since the last, then completions in
/// order. Stops when the log is dropped.
pub(super) fn flush_loop(
    inner: Weak<Mutex<Inner>>,
    rx: mpsc::Receiver<Flushed>,
    queued: Arc<AtomicUsize>,
    syncs: Arc<Syncs>,
) {
    // Started the first time a client waits for an answer before this member's copy is
    // durable (never on a member that only follows).
    let mut helper: Option<AheadThread> = None;
    while let Ok(first) = rx.recv() {
        // A spare follower's appends wait for those behind them: one sync for all.
        if let Flushed::Append(_, _, _, gather) = &first
            && !gather.is_zero()
        {
            std::thread::sleep(*gather);
        }
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let (file, ahead, notices) = match inner.upgrade() {
            Some(i) => {
                let i = lock(&i);
                (Some(i.file.clone()), i.ahead.clone(), i.notices.clone())
            }
            None => (None, None, None),
        };
        // Clients wait for early answers: what this member leads applies ahead now, on
        // the thread beside this one while this one syncs, so that the answers leave as
        // the sync returns (or while the disk writes, for a client counting this member's
        // copy from its notice), and the sync does not wait for the apply.
        let mut before = Before::Nothing;
        if let Some(hook) = ahead.as_ref().filter(|a| (a.before_sync)()) {
            let led: Vec<EntryOf<TypeConfig>> = batch
                .iter_mut()
                .flat_map(|item| match item {
                    Flushed::Append(_, entries, _, _) => std::mem::take(entries),
                    Flushed::Barrier(_) => Vec::new(),
                })
                .collect();
            if !led.is_empty() {
                if helper.is_none() {
                    helper = ahead_thread();
                }
                before = match &helper {
                    Some((to, _)) => {
                        let meet = Arc::new(Meet::default());
                        match to.send((hook.clone(), led, meet.clone())) {
                            Ok(()) => Before::OnThread(meet),
                            Err(mpsc::SendError((_, led, _))) => Before::Given(false, led),
                        }
                    }
                    None => {
                        let took = apply_ahead(hook, &led, false);
                        Before::Given(took, led)
                    }
                };
            }
        }
        let result = match file {
            Some(file) => syncs.sync(&file),
            None => Err(io::Error::other("raft log closed")),
        };
        let done = batch.len();
        let mut led = Vec::new();
        // The early answers waiting for this member's copy go first (before Raft's
        // completions wake its worker), or as soon as the apply beside the sync is done.
        if let Some(hook) = &ahead {
            match &before {
                Before::OnThread(meet) => meet.synced(hook, result.is_ok()),
                Before::Given(..) => (hook.synced)(result.is_ok()),
                Before::Nothing => {}
            }
        }
        // The clients' notices, as a follower sends them (see `append`).
        if let Some(notices) = notices.as_ref().filter(|_| result.is_ok()) {
            let noticed: Vec<Noticed> = batch
                .iter()
                .flat_map(|item| match item {
                    Flushed::Append(_, _, n, _) => n.as_slice(),
                    Flushed::Barrier(_) => &[],
                })
                .copied()
                .collect();
            notices.durable(&noticed);
        }
        for item in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            match item {
                Flushed::Append(cb, entries, _, _) => {
                    cb.io_completed(r);
                    led.extend(entries);
                }
                Flushed::Barrier(tx) => {
                    let _ = tx.send(r);
                }
            }
        }
        queued.fetch_sub(done, Ordering::AcqRel);
        // Taken out for the apply before the sync (which Raft's completions above did not
        // wait for: a commit meanwhile applies them itself): applied after it if that did
        // not take them.
        if let Before::OnThread(_) = before
            && let Some((_, back)) = &helper
        {
            before = match back.recv() {
                Ok((took, entries)) => Before::Given(took, entries),
                Err(_) => Before::Nothing,
            };
        }
        if let Before::Given(false, entries) = before {
            led = entries;
        }
        // Durable here (the followers write them meanwhile): the entries this member leads
        // apply ahead of their commit.
        if let Some(ahead) = ahead.filter(|_| result.is_ok() && !led.is_empty()) {
            apply_ahead(&ahead, &led, true);
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives `led` to the hook (`durable`: this member's copy is); whether it took them.
fn apply_ahead(ahead: &AheadHook, led: &[EntryOf<TypeConfig>], durable: bool) -> bool {
    let led: Vec<&EntryOf<TypeConfig>> = led.iter().collect();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (ahead.apply)(&led, durable)
    }))
    .unwrap_or_else(|_| {
        tracing::error!("applying entries ahead of their commit panicked");
        false
    })
}
