//! Which of this client's changes are committed, from the leader's early answers and the
//! followers' durable notices (docs/adr/0020; the metaserver's `raft/early.rs` and
//! `raft/notices.rs`).
//!
//! The leader answers a change early once it has applied the entry ahead, naming the
//! entry's place (term, index), the voters and how many copies make a majority. Each
//! member, once its copy is durable, names the place to this client; the leader's copy
//! counts from its notice too when the answer says so (`Early.leader_notices`: it may
//! answer before that copy is durable), and from the answer itself otherwise. A majority of
//! voters holding an entry of the leader's term durable is what commits it: from then on
//! no leader can be elected without it. The early answer holds from that moment; until
//! then the caller waits for the notices, or for the leader's answer after the commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use meridian_proto::pb::meta::Early;
use tokio::sync::oneshot;

/// Places noted before their early answer came, at most (the oldest go first: a change
/// not answered early has its notices too, and nobody takes them).
const SEEN_MAX: usize = 4096;

/// The notices of this client's entries, and the early answers waiting for them.
#[derive(Debug, Default)]
pub(super) struct Durable {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Members that made a place durable, noted before its early answer.
    seen: BTreeMap<(u64, u64), Vec<u64>>,
    waiting: HashMap<(u64, u64), Waiter>,
}

#[derive(Debug)]
struct Waiter {
    voters: Vec<u64>,
    copies: usize,
    have: Vec<u64>,
    done: oneshot::Sender<()>,
}

impl Waiter {
    /// Counts `member`'s copy; whether a majority holds it now.
    fn add(&mut self, member: u64) -> bool {
        if self.voters.contains(&member) && !self.have.contains(&member) {
            self.have.push(member);
        }
        self.have.len() >= self.copies
    }
}

/// What an early answer waits for.
#[derive(Debug)]
pub(super) enum Expect {
    /// A majority holds its entry: it holds.
    Committed,
    /// Not yet: the receiver completes once a majority holds it (while the guard lives).
    Wait(oneshot::Receiver<()>, Waiting),
    /// It says nothing usable: the caller waits for the answer after the commit.
    Never,
}

/// Stops waiting for a place when dropped.
#[derive(Debug)]
pub(super) struct Waiting {
    durable: Arc<Durable>,
    at: (u64, u64),
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.durable.lock().waiting.remove(&self.at);
    }
}

impl Durable {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `member` made the places `at` durable in its log.
    pub(super) fn note(&self, member: u64, at: impl IntoIterator<Item = (u64, u64)>) {
        let mut s = self.lock();
        for place in at {
            if let Some(w) = s.waiting.get_mut(&place) {
                if w.add(member)
                    && let Some(w) = s.waiting.remove(&place)
                {
                    let _ = w.done.send(());
                }
                continue;
            }
            let members = s.seen.entry(place).or_default();
            if !members.contains(&member) {
                members.push(member);
            }
        }
        while s.seen.len() > SEEN_MAX {
            s.seen.pop_first();
        }
    }

    /// What the early answer `early` waits for.
    pub(super) fn expect(self: &Arc<Self>, early: &Early) -> Expect {
        let Some(at) = early.at.as_ref().map(|p| (p.term, p.index)) else {
            return Expect::Never;
        };
        let copies = early.copies as usize;
        if copies == 0 || copies > early.voters.len() || !early.voters.contains(&early.leader) {
            return Expect::Never;
        }
        let (done, rx) = oneshot::channel();
        let mut w = Waiter {
            voters: early.voters.clone(),
            copies,
            have: Vec::new(),
            done,
        };
        let mut s = self.lock();
        let mut committed = !early.leader_notices && w.add(early.leader);
        for member in s.seen.remove(&at).unwrap_or_default() {
            committed |= w.add(member);
        }
        if committed {
            return Expect::Committed;
        }
        s.waiting.insert(at, w);
        Expect::Wait(
            rx,
            Waiting {
                durable: self.clone(),
                at,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use meridian_proto::pb::meta::LogPlace;

    use super::*;

    fn early(term: u64, index: u64) -> Early {
        Early {
            at: Some(LogPlace { term, index }),
            leader: 1,
            voters: vec![1, 2, 3],
            copies: 2,
            leader_notices: false,
        }
    }

    #[test]
    fn an_early_answer_holds_once_a_majority_of_voters_has_its_entry() {
        let d = Arc::new(Durable::default());
        let Expect::Wait(mut rx, _waiting) = d.expect(&early(4, 10)) else {
            panic!("the leader's copy alone is not a majority");
        };
        // Another place, a member that does not vote, the leader again: not enough.
        d.note(2, [(4, 11), (3, 10)]);
        d.note(9, [(4, 10)]);
        d.note(1, [(4, 10)]);
        assert!(rx.try_recv().is_err());
        d.note(3, [(4, 10)]);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn notices_that_come_first_are_counted_when_the_answer_comes() {
        let d = Arc::new(Durable::default());
        d.note(2, [(4, 10)]);
        assert!(matches!(d.expect(&early(4, 10)), Expect::Committed));
        // Taken once: a place is not counted again for another answer.
        assert!(matches!(d.expect(&early(4, 10)), Expect::Wait(..)));
    }

    #[test]
    fn the_leaders_copy_counts_from_its_notice_when_the_answer_says_so() {
        let d = Arc::new(Durable::default());
        d.note(2, [(4, 10)]);
        let mut e = early(4, 10);
        e.leader_notices = true;
        let Expect::Wait(mut rx, _waiting) = d.expect(&e) else {
            panic!("one follower's copy alone is not a majority");
        };
        d.note(1, [(4, 10)]);
        assert!(
            rx.try_recv().is_ok(),
            "the leader's notice is the second copy"
        );
        // Two followers' copies are a majority without the leader's.
        let mut e = early(4, 11);
        e.leader_notices = true;
        d.note(2, [(4, 11)]);
        d.note(3, [(4, 11)]);
        assert!(matches!(d.expect(&e), Expect::Committed));
    }

    #[test]
    fn an_answer_that_names_no_majority_waits_for_the_commit() {
        let d = Arc::new(Durable::default());
        let mut e = early(4, 10);
        e.copies = 4;
        assert!(matches!(d.expect(&e), Expect::Never));
        let mut e = early(4, 10);
        e.leader = 7;
        assert!(matches!(d.expect(&e), Expect::Never));
        e.at = None;
        assert!(matches!(d.expect(&e), Expect::Never));
    }
}
