//! Early answers: the leader answers a change once its own copy of the entry is durable,
//! with the outcome applying it ahead gave, and the place (term, index) the client needs
//! a majority of copies of (docs/adr/0020; the followers' notices are `notices.rs`).
//!
//! A handler that may answer early expects its change's entry by the change's key (the
//! client and request id it carries) before it proposes it; the applier, applying the
//! leader's durable entries ahead of their commit (`applier.rs`), hands each expected one
//! its place and outcome. Applying is deterministic and the entry's place is final once a
//! majority holds it, so the outcome is the one the commit will give.
//!
//! While any handler waits, the log's flusher applies the entries this member leads ahead
//! beside its fdatasync rather than after it ([`Early::wanted`]). A client that counts the
//! leader's copy from the leader's durable notice, as it counts the followers'
//! (`Call.leader_notices`), is answered from that apply at once, before the copy is
//! durable; any other is answered once the flusher's sync returns ([`Early::synced`]), its
//! answer counting as the leader's copy: one message where the notice and the answer were
//! two, leaving when the notice left, with the apply's time spent while the disk wrote.
//!
//! Whoever reads this member's state for a client waits until every entry answered early
//! has applied ([`Early::answered`]): a client told its change is committed must not then
//! read a state without it from the leader that told it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use openraft::EntryPayload;
use openraft::type_config::alias::EntryOf;
use tokio::sync::oneshot;

use super::{Request, Response, TypeConfig};
use crate::namespace::lease::WriteBack;

/// An entry's place in the log: (term, index).
pub type Place = (u64, u64);
/// A change's key: (client, request id).
pub type Key = (u64, u64);
/// An entry's place and the outcome of applying it.
pub type Ahead = (Place, Response);

/// The changes whose handlers wait for an early answer, by (client, request id).
#[derive(Debug, Default)]
pub struct Early {
    waiting: Mutex<HashMap<Key, Waiter>>,
    /// Answers applied before this member's copy was durable, for handlers whose client
    /// counts the leader's copy from the answer: they go once the sync returns.
    held: Mutex<Vec<(oneshot::Sender<Ahead>, Ahead)>>,
    /// Entries in `waiting` (read without the lock on every apply ahead).
    count: AtomicUsize,
    /// The highest index answered early.
    answered: AtomicU64,
}

/// A handler waiting for its entry's place and outcome.
#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Ahead>,
    /// Its client counts the leader's copy from the leader's notice: it may be answered
    /// before this member's copy is durable.
    before_sync: bool,
}

/// The key of the change an entry holds (a write-back's by its first change).
pub(super) fn key_of(entry: &EntryOf<TypeConfig>) -> Option<Key> {
    match &entry.payload {
        EntryPayload::Normal(Request::Ns(cmd)) => cmd.request,
        EntryPayload::Normal(Request::WriteBack(wb)) => write_back_key(wb),
        _ => None,
    }
}

/// The key a write-back's entry is expected by: its first change's.
pub(crate) fn write_back_key(wb: &WriteBack) -> Option<Key> {
    wb.cmds.first().and_then(|c| c.request)
}

/// Stops expecting its key when dropped.
pub struct Expected {
    early: Arc<Early>,
    key: Key,
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut w = self.early.lock();
        if w.remove(&self.key).is_some() {
            self.early.forget();
        }
    }
}

impl Early {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiter>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a waiter out (taken from `waiting`).
    fn forget(&self) {
        self.count.fetch_sub(1, Ordering::Release);
    }

    /// Expects the entry of the change `key`: its place and outcome arrive on the
    /// receiver if it applies ahead here (`before_sync`: possibly before this member's
    /// copy is durable). `None` if another handler already expects it (a retry racing
    /// its first attempt: that one may answer early).
    pub fn expect(
        self: &Arc<Self>,
        key: Key,
        before_sync: bool,
    ) -> Option<(Expected, oneshot::Receiver<Ahead>)> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.lock();
        if w.contains_key(&key) {
            return None;
        }
        w.insert(key, Waiter { tx, before_sync });
        self.count.fetch_add(1, Ordering::Release);
        drop(w);
        Some((
            Expected {
                early: self.clone(),
                key,
            },
            rx,
        ))
    }

    /// Whether any handler expects an entry (checked before looking at entries).
    pub(super) fn wanted(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Hands the expected among `entries` (applied ahead, in order) their places and
    /// `responses` (in the same order); with `durable` false (applied before this
    /// member's copy is durable), at once only those that may be answered so, and the
    /// others once the flusher's sync returns ([`Early::synced`]).
    pub(super) fn applied_ahead(
        &self,
        entries: &[(Place, Option<Key>)],
        responses: &[Response],
        durable: bool,
    ) {
        let mut w = self.lock();
        let mut held = Vec::new();
        for ((at, key), response) in entries.iter().zip(responses) {
            if let Some(k) = key
                && let Entry::Occupied(waiter) = w.entry(*k)
            {
                let waiter = waiter.remove();
                self.forget();
                let answer = (*at, response.clone());
                if durable || waiter.before_sync {
                    let _ = waiter.tx.send(answer);
                } else {
                    held.push((waiter.tx, answer));
                }
            }
        }
        drop(w);
        if !held.is_empty() {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(held);
        }
    }

    /// The log's flusher synced the entries it applied ahead before the sync (`ok`: the
    /// sync succeeded): the answers held for it go (or, after a failure, never do: their
    /// handlers take the answer after the commit, or its failure).
    pub(super) fn synced(&self, ok: bool) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if ok {
            for (tx, answer) in held {
                let _ = tx.send(answer);
            }
        }
    }

    /// Notes that the entry at `index` was answered early.
    pub fn answered_at(&self, index: u64) {
        self.answered.fetch_max(index, Ordering::AcqRel);
    }

    /// The highest index answered early (0: none).
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expected_change_gets_its_place_and_outcome_once() {
        let early = Arc::new(Early::default());
        let (guard, mut rx) = early.expect((5, 1), false).unwrap();
        assert!(
            early.expect((5, 1), true).is_none(),
            "one handler per change"
        );
        assert!(early.wanted());
        early.applied_ahead(
            &[
                ((3, 9), Some((5, 0))),
                ((3, 10), Some((5, 1))),
                ((3, 11), None),
            ],
            &[Response::None, Response::Cluster(4), Response::None],
            true,
        );
        assert_eq!(rx.try_recv().unwrap(), ((3, 10), Response::Cluster(4)));
        assert!(!early.wanted());
        drop(guard);
        assert!(early.expect((5, 1), false).is_some());
    }

    #[test]
    fn a_client_counting_the_leaders_notice_is_answered_at_once_the_others_once_its_copy_is_durable()
     {
        let early = Arc::new(Early::default());
        let (_a, mut old) = early.expect((5, 1), false).unwrap();
        let (b, mut new) = early.expect((6, 1), true).unwrap();
        let entries = [((3, 9), Some((5, 1))), ((3, 10), Some((6, 1)))];
        let responses = [Response::None, Response::Cluster(4)];
        early.applied_ahead(&entries, &responses, false);
        assert_eq!(new.try_recv().unwrap(), ((3, 10), Response::Cluster(4)));
        assert!(
            old.try_recv().is_err(),
            "a client counting the leader's copy from the answer waits for its sync"
        );
        assert!(!early.wanted(), "both are answered from this apply");
        drop(b);
        early.synced(true);
        assert_eq!(old.try_recv().unwrap(), ((3, 9), Response::None));
        early.synced(true);
    }

    #[test]
    fn an_answer_held_for_a_sync_that_failed_never_goes() {
        let early = Arc::new(Early::default());
        let (_guard, mut rx) = early.expect((5, 1), false).unwrap();
        assert!(early.wanted());
        early.applied_ahead(&[((3, 9), Some((5, 1)))], &[Response::None], false);
        assert!(rx.try_recv().is_err(), "held until the sync returns");
        early.synced(false);
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "its handler takes the answer after the commit"
        );
        // The next sync has nothing of it.
        let (_again, mut again) = early.expect((5, 2), false).unwrap();
        early.synced(true);
        assert!(again.try_recv().is_err());
    }

    #[test]
    fn the_highest_index_answered_early_is_kept() {
        let early = Early::default();
        early.answered_at(7);
        early.answered_at(5);
        assert_eq!(early.answered(), 7);
    }
}
