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
//! Whoever reads this member's state for a client waits until every entry answered early
//! has applied ([`Early::answered`]): a client told its change is committed must not then
//! read a state without it from the leader that told it.

use std::collections::HashMap;
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
    waiting: Mutex<HashMap<Key, oneshot::Sender<Ahead>>>,
    /// Entries in `waiting` (read without the lock on every apply ahead).
    count: AtomicUsize,
    /// The highest index answered early.
    answered: AtomicU64,
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
            self.early.count.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Early {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, oneshot::Sender<Ahead>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expects the entry of the change `key`: its place and outcome arrive on the
    /// receiver if it applies ahead here. `None` if another handler already expects it
    /// (a retry racing its first attempt: that one may answer early).
    pub fn expect(self: &Arc<Self>, key: Key) -> Option<(Expected, oneshot::Receiver<Ahead>)> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.lock();
        if w.contains_key(&key) {
            return None;
        }
        w.insert(key, tx);
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
    /// `responses` (in the same order).
    pub(super) fn applied_ahead(&self, entries: &[(Place, Option<Key>)], responses: &[Response]) {
        let mut w = self.lock();
        for ((at, key), response) in entries.iter().zip(responses) {
            if let Some(tx) = key.and_then(|k| w.remove(&k)) {
                self.count.fetch_sub(1, Ordering::Release);
                let _ = tx.send((*at, response.clone()));
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
        let (guard, mut rx) = early.expect((5, 1)).unwrap();
        assert!(early.expect((5, 1)).is_none(), "one handler per change");
        assert!(early.wanted());
        early.applied_ahead(
            &[
                ((3, 9), Some((5, 0))),
                ((3, 10), Some((5, 1))),
                ((3, 11), None),
            ],
            &[Response::None, Response::Cluster(4), Response::None],
        );
        assert_eq!(rx.try_recv().unwrap(), ((3, 10), Response::Cluster(4)));
        assert!(!early.wanted());
        drop(guard);
        assert!(early.expect((5, 1)).is_some());
    }

    #[test]
    fn the_highest_index_answered_early_is_kept() {
        let early = Early::default();
        early.answered_at(7);
        early.answered_at(5);
        assert_eq!(early.answered(), 7);
    }
}
