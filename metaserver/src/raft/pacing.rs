//! The leader's appends to its spare followers, sent in batches.
//!
//! A commit waits for the leader's copy and its prompt followers' (`raft/spare.rs`), not
//! for a spare's. Yet the leader sent a spare each entry as it came, like any follower,
//! so with one client writing at a time every change cost the spare a message, a decode,
//! openraft's handling, a log write and its answer, and the leader one more message to
//! encode and one more answer to read: on a host whose processors the members share,
//! about a sixth of all the members' processor time per change, taken from the rounds
//! that commits wait for.
//!
//! So while the leader's view of its group has spares, after an append with entries to
//! one of them the leader takes the next append for it only `spare_batch_us` later (10 ms
//! by default): openraft builds each append from everything in the log past the last one
//! sent, so the entries of that while go in one append, and the spare writes and syncs
//! them once. Never while a prompt follower falls behind: when one has not answered for
//! as long (or has not answered at all lately, being down or unreachable), the spare's
//! copy is the one the commit waits for, and its appends go at once again. A spare's copy
//! trails the leader's by up to the batch; nothing that commits depends on it, and a
//! spare elected leader has everything committed (Raft elects only a member holding it).
//! A member catching up (appends of many entries) is never held back.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;
use tracing::info;

use super::TypeConfig;

/// How long the leader gathers a spare follower's entries into one append, unless
/// configured.
pub const BATCH: Duration = Duration::from_millis(10);
/// An append of at least this many entries is a member catching up: the next is not held.
const CATCHING_UP: usize = 64;
/// The least a held append waits before it looks again (a moment of [`Pacing::look_by`]
/// that passed between its look and the reckoning).
const LOOK_AGAIN: Duration = Duration::from_millis(1);
/// A prompt follower that has not answered an append for this long is not keeping up
/// (heartbeats keep an idle one answering).
const QUIET: Duration = Duration::from_secs(1);

/// What a replication stream's answers say of its follower: when its oldest unanswered
/// append was sent (moved on by the time its size allows), and its last answer.
pub(super) trait Answers: Send + Sync {
    fn waiting_since(&self) -> Option<Instant>;
    fn last_answer(&self) -> Option<Instant>;
}

/// The leader's spares and prompt followers, and how the prompt followers answer.
#[derive(Default)]
pub struct Pacing {
    batch: Duration,
    roles: Mutex<Roles>,
}

#[derive(Default)]
struct Roles {
    spares: BTreeSet<u64>,
    prompt: Vec<u64>,
    /// Each follower's latest replication stream.
    streams: HashMap<u64, Arc<dyn Answers>>,
    /// Whether a prompt follower fell behind at the last look.
    behind: bool,
}

impl std::fmt::Debug for Pacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.lock();
        f.debug_struct("Pacing")
            .field("batch", &self.batch)
            .field("spares", &r.spares)
            .field("prompt", &r.prompt)
            .finish()
    }
}

impl Pacing {
    /// Spares' entries gathered for `batch` (zero: sent as they come).
    pub fn new(batch: Duration) -> Self {
        Pacing {
            batch,
            roles: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Roles> {
        self.roles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This member leads, with these spares and prompt followers (none: it does not lead,
    /// or is unsure of its group).
    pub fn set_roles(&self, spares: BTreeSet<u64>, prompt: Vec<u64>) {
        let mut r = self.lock();
        r.spares = spares;
        r.prompt = prompt;
    }

    /// A replication stream to `target` opened: its answers are these.
    pub(super) fn opened(&self, target: u64, answers: Arc<dyn Answers>) {
        self.lock().streams.insert(target, answers);
    }

    /// How long `target`'s next append is held after one with entries, if at all: while it
    /// is a spare and every prompt follower keeps up.
    pub(super) fn hold(&self, target: u64) -> Option<Duration> {
        if self.batch.is_zero() {
            return None;
        }
        let mut r = self.lock();
        if !r.spares.contains(&target) || r.prompt.is_empty() {
            return None;
        }
        let now = Instant::now();
        let keeps_up = |p: &u64| {
            r.streams
                .get(p)
                .and_then(|s| self.keeps_up_until(s.as_ref()))
                .is_some_and(|until| now < until)
        };
        let behind = !r.prompt.iter().all(keeps_up);
        if behind != r.behind {
            r.behind = behind;
            match behind {
                true => info!(
                    prompt = ?r.prompt,
                    "a prompt follower falls behind: the spare followers' appends go at once"
                ),
                false => info!(
                    prompt = ?r.prompt,
                    "the prompt followers keep up: the spare followers' appends go in batches"
                ),
            }
        }
        (!behind).then_some(self.batch)
    }

    /// When a hold ending at `until` must look again whether the prompt followers keep
    /// up: the first moment one of them could stop keeping up ([`Pacing::hold`]'s
    /// tests), or `until`. An answer meanwhile only moves that moment later, and an append
    /// sent after now is unanswered for a batch only after `until` (a hold is at most
    /// one batch): the held append wakes once or twice, not every few milliseconds. A
    /// change of roles meanwhile is seen at the next look, within the batch.
    fn look_by(&self, until: Instant) -> Instant {
        let r = self.lock();
        r.prompt
            .iter()
            .filter_map(|p| r.streams.get(p))
            .filter_map(|s| self.keeps_up_until(s.as_ref()))
            .fold(until, Instant::min)
    }

    /// Until when a follower whose stream answers so keeps up, as nothing more is heard:
    /// a second after its last answer, and a batch after its oldest unanswered append
    /// was sent; never, if it has not answered at all.
    fn keeps_up_until(&self, s: &dyn Answers) -> Option<Instant> {
        let quiet = s.last_answer()? + QUIET;
        Some(match s.waiting_since() {
            Some(t) => quiet.min(t + self.batch),
            None => quiet,
        })
    }

    /// `requests` for `target`, each taken (and so built) only once its hold is over.
    pub(super) fn paced<S>(self: &Arc<Self>, target: u64, requests: S) -> Paced<S> {
        Paced {
            inner: requests,
            pacing: self.clone(),
            target,
            until: None,
            sleep: None,
        }
    }
}

/// A replication stream's requests, held after each with entries while its follower is a
/// spare ([`Pacing::hold`]).
pub(super) struct Paced<S> {
    inner: S,
    pacing: Arc<Pacing>,
    target: u64,
    /// Until when the next request is held.
    until: Option<Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stream for Paced<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = AppendEntriesRequest<TypeConfig>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        while let Some(until) = self.until {
            let now = Instant::now();
            if now >= until || self.pacing.hold(self.target).is_none() {
                self.until = None;
                self.sleep = None;
                break;
            }
            let look = self.pacing.look_by(until).max(now + LOOK_AGAIN);
            let wake = tokio::time::Instant::from_std(look.min(until));
            match self.sleep.as_mut() {
                Some(s) => s.as_mut().reset(wake),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(wake))),
            }
            let sleep = self.sleep.as_mut().expect("set above");
            ready!(sleep.as_mut().poll(cx));
        }
        let next = ready!(self.inner.poll_next_unpin(cx));
        if let Some(r) = &next
            && !r.entries.is_empty()
            && r.entries.len() < CATCHING_UP
            && let Some(hold) = self.pacing.hold(self.target)
        {
            self.until = Some(Instant::now() + hold);
        }
        Poll::Ready(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<(Option<Instant>, Option<Instant>)>);

    impl Answers for Seen {
        fn waiting_since(&self) -> Option<Instant> {
            self.0.lock().unwrap().0
        }
        fn last_answer(&self) -> Option<Instant> {
            self.0.lock().unwrap().1
        }
    }

    impl Seen {
        fn set(&self, waiting: Option<Duration>, answered: Option<Duration>) {
            let now = Instant::now();
            *self.0.lock().unwrap() = (waiting.map(|d| now - d), answered.map(|d| now - d));
        }
    }

    #[test]
    fn a_spare_is_held_only_while_every_prompt_follower_keeps_up() {
        let pacing = Pacing::new(Duration::from_millis(10));
        let prompt = Arc::new(Seen::default());
        pacing.opened(2, prompt.clone());
        pacing.set_roles(BTreeSet::from([3]), vec![2]);
        prompt.set(None, Some(Duration::from_millis(50)));
        assert_eq!(pacing.hold(3), Some(Duration::from_millis(10)), "a spare");
        assert_eq!(pacing.hold(2), None, "a prompt follower is never held");
        // The prompt follower's oldest append unanswered for longer than a batch.
        prompt.set(
            Some(Duration::from_millis(11)),
            Some(Duration::from_millis(12)),
        );
        assert_eq!(pacing.hold(3), None);
        prompt.set(
            Some(Duration::from_millis(1)),
            Some(Duration::from_millis(2)),
        );
        assert!(pacing.hold(3).is_some(), "an append just sent");
        // Nothing heard from it lately (down, its stream gone), or never.
        prompt.set(None, Some(Duration::from_secs(2)));
        assert_eq!(pacing.hold(3), None);
        prompt.set(None, None);
        assert_eq!(pacing.hold(3), None);
        // No stream to the prompt follower at all, or no roles (not leading).
        let other = Pacing::new(Duration::from_millis(10));
        other.set_roles(BTreeSet::from([3]), vec![2]);
        assert_eq!(other.hold(3), None);
        prompt.set(None, Some(Duration::from_millis(1)));
        pacing.set_roles(BTreeSet::new(), Vec::new());
        assert_eq!(pacing.hold(3), None);
        // Batching off.
        let off = Pacing::new(Duration::ZERO);
        off.opened(2, prompt.clone());
        off.set_roles(BTreeSet::from([3]), vec![2]);
        assert_eq!(off.hold(3), None);
    }

    #[test]
    fn a_held_append_looks_again_when_a_prompt_follower_could_first_fall_behind() {
        let pacing = Pacing::new(Duration::from_millis(10));
        let prompt = Arc::new(Seen::default());
        pacing.opened(2, prompt.clone());
        pacing.set_roles(BTreeSet::from([3]), vec![2]);
        let until = Instant::now() + Duration::from_millis(10);
        // Nothing unanswered: it cannot fall behind before the hold ends.
        prompt.set(None, Some(Duration::from_millis(3)));
        assert_eq!(pacing.look_by(until), until);
        // An append unanswered for 4 ms falls behind a batch after it was sent.
        let until = Instant::now() + Duration::from_secs(1);
        prompt.set(
            Some(Duration::from_millis(4)),
            Some(Duration::from_millis(5)),
        );
        let sent = prompt.waiting_since().unwrap();
        assert_eq!(pacing.look_by(until), sent + Duration::from_millis(10));
        // Quiet for almost a second: that comes first.
        prompt.set(None, Some(Duration::from_millis(998)));
        let answered = prompt.last_answer().unwrap();
        assert_eq!(pacing.look_by(until), answered + QUIET);
        // A follower that is not prompt counts for nothing.
        pacing.set_roles(BTreeSet::from([3]), vec![4]);
        assert_eq!(pacing.look_by(until), until);
    }
}
