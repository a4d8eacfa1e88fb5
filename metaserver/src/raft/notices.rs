//! Durable notices: a member tells a client which of its changes' entries it has made
//! durable in its log (docs/adr/0020).
//!
//! An entry of the leader's current term that is durable in the logs of a majority of the
//! voters is committed, whether or not the leader has heard so yet: any later leader has
//! it (a candidate without it cannot win a majority's votes). A client holding the
//! leader's early answer for an entry (the leader's copy is durable when it answers) and
//! notices from enough followers knows its change is committed one hop sooner than the
//! leader's answer after the commit would tell it: the follower's notice goes straight to
//! the client, where its answer to the leader went on to the leader's commit, the apply and
//! the answer.
//!
//! A client subscribes on its `Calls` stream to each member; the log store calls
//! [`Notices::durable`] after each fdatasync of entries another member leads, and of those
//! this member leads for the subscribers that count the leader's copy from its notice
//! (`Notices.led`: the leader may then answer before its own copy is durable, see
//! `early.rs`). It must not wait: a notice that finds its subscriber's queue full is
//! dropped (the client then takes the leader's answer after the commit, as without
//! notices).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use openraft::type_config::alias::EntryOf;

use super::TypeConfig;
use super::early::{Place, key_of};

/// Where a notice goes: called with the places (term, index) of a client's entries made
/// durable here; returns false once the subscriber is gone (it is then dropped).
pub type Subscriber = Box<dyn Fn(&[Place]) -> bool + Send + Sync>;

/// A durable entry of a client's change: the client, the entry's place, and whether
/// this member leads it.
pub type Noticed = (u64, Place, bool);

/// A subscription: its key, whether it wants the entries this member leads too, and
/// where its notices go.
type Subscribed = (u64, bool, Subscriber);

/// The clients waiting for notices on this member, by client id.
#[derive(Default)]
pub struct Notices {
    by_client: Mutex<HashMap<u64, Vec<Subscribed>>>,
    /// Subscribers in `by_client` (read without the lock on every append).
    count: AtomicUsize,
    next: AtomicUsize,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

/// The client whose change an entry holds, if any (a change a client may wait for, by
/// its key: see `early.rs`).
pub(super) fn client_of(entry: &EntryOf<TypeConfig>) -> Option<u64> {
    key_of(entry).map(|(client, _)| client)
}

/// An entry's place in the log: its term and index.
pub(super) fn place(entry: &EntryOf<TypeConfig>) -> Place {
    use openraft::vote::RaftLeaderId;
    (entry.log_id.leader_id.term(), entry.log_id.index)
}

/// Removes the subscription `key` of `client` when dropped.
pub struct Subscription {
    notices: Arc<Notices>,
    client: u64,
    key: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.notices.remove(self.client, self.key);
    }
}

impl Notices {
    /// Sends `client`'s notices to `to` (with `led`, those of the entries this member
    /// leads too) until the subscription returned is dropped (or `to` says it is gone).
    pub fn subscribe(self: &Arc<Self>, client: u64, led: bool, to: Subscriber) -> Subscription {
        let key = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let mut by = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        by.entry(client).or_default().push((key, led, to));
        self.count.fetch_add(1, Ordering::Release);
        Subscription {
            notices: self.clone(),
            client,
            key,
        }
    }

    fn remove(&self, client: u64, key: u64) {
        let mut by = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = by.get_mut(&client) {
            let before = subs.len();
            subs.retain(|(k, ..)| *k != key);
            self.count.fetch_sub(before - subs.len(), Ordering::Release);
            if subs.is_empty() {
                by.remove(&client);
            }
        }
    }

    /// Whether anyone waits for notices (checked before looking at entries).
    pub(super) fn wanted(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Tells each client its places among `durable`, entries now durable here (those
    /// this member leads only to the subscriptions that want them).
    pub(super) fn durable(&self, durable: &[Noticed]) {
        if durable.is_empty() {
            return;
        }
        // Each client's places: all of them, and those another member leads.
        let mut by_client: HashMap<u64, (Vec<Place>, Vec<Place>)> = HashMap::new();
        for &(client, at, led) in durable {
            let (all, followed) = by_client.entry(client).or_default();
            all.push(at);
            if !led {
                followed.push(at);
            }
        }
        let mut gone = Vec::new();
        {
            let by = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
            for (client, (all, followed)) in &by_client {
                for (key, led, to) in by.get(client).into_iter().flatten() {
                    let places = if *led { all } else { followed };
                    if !places.is_empty() && !to(places) {
                        gone.push((*client, *key));
                    }
                }
            }
        }
        for (client, key) in gone {
            self.remove(client, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_hears_its_own_clients_places_until_it_goes() {
        let notices = Arc::new(Notices::default());
        let heard: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let to = heard.clone();
        let sub = notices.subscribe(
            7,
            false,
            Box::new(move |places| {
                to.lock().unwrap().extend_from_slice(places);
                true
            }),
        );
        assert!(notices.wanted());
        notices.durable(&[
            (7, (2, 10), false),
            (8, (2, 11), false),
            (7, (2, 12), false),
        ]);
        assert_eq!(*heard.lock().unwrap(), vec![(2, 10), (2, 12)]);
        drop(sub);
        assert!(!notices.wanted());
        notices.durable(&[(7, (2, 13), false)]);
        assert_eq!(heard.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_subscriber_that_is_gone_is_dropped() {
        let notices = Arc::new(Notices::default());
        let _sub = notices.subscribe(3, true, Box::new(|_| false));
        notices.durable(&[(3, (1, 1), true)]);
        assert!(!notices.wanted());
    }

    #[test]
    fn the_entries_a_member_leads_go_only_to_who_counts_them() {
        let notices = Arc::new(Notices::default());
        let hear = |led| {
            let heard: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
            let to = heard.clone();
            let sub = notices.subscribe(
                7,
                led,
                Box::new(move |places| {
                    to.lock().unwrap().extend_from_slice(places);
                    true
                }),
            );
            (sub, heard)
        };
        let (_old, old) = hear(false);
        let (_new, new) = hear(true);
        notices.durable(&[(7, (2, 10), true), (7, (2, 11), false)]);
        notices.durable(&[(7, (2, 12), true)]);
        assert_eq!(*old.lock().unwrap(), vec![(2, 11)]);
        assert_eq!(*new.lock().unwrap(), vec![(2, 10), (2, 11), (2, 12)]);
    }
}
