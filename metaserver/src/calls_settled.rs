//! The answers after the commit that a client no longer needs: those of the calls it
//! took early answers for (docs/adr/0020's amendment).
//!
//! A call answered early is answered again after its commit, for the client that could
//! not count a majority of copies from the notices (a notice dropped, a follower gone).
//! Most clients could: a loop of durable changes took each early answer and then read
//! and dropped its second answer, a message each way's HTTP/2 and a wake-up of both
//! processes per change. The client now names the calls it took early answers for
//! (`Call.settled`, on its next call); the second answer of such a call is held for
//! [`HOLD`] once ready and never sent if the client names it meanwhile. An answer held
//! that long goes (the client needed it, or makes no calls now), as does every answer
//! held when the stream ends; a failure is never held.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::pb::meta::{CallReply, call_reply};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Status;

/// How long an answer after the commit waits for its client to say it took the early
/// answer (the client that could not waits this much longer for it).
pub(crate) const HOLD: Duration = Duration::from_millis(50);

/// The calls of one stream answered early, by id, until their answers after the commit
/// go or are dropped.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    state: Mutex<State>,
    /// Wakes [`Settled::run`]: an answer held, or the stream over.
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<u64, Final>,
    /// Of them, held answers.
    held: usize,
    /// The stream ended: nothing more is held.
    closed: bool,
}

#[derive(Debug)]
enum Final {
    /// Answered early; its handler runs.
    Running,
    /// The client took the early answer; its handler runs.
    Taken,
    /// Its handler's answer, held since then.
    Held(CallReply, Instant),
}

impl Settled {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call `id` is about to be answered early.
    pub(crate) fn answering_early(&self, id: u64) {
        let mut s = self.lock();
        if !s.closed {
            s.calls.insert(id, Final::Running);
        }
    }

    /// Its early answer could not be sent: the answer after the commit goes.
    pub(crate) fn not_answered_early(&self, id: u64) {
        let mut s = self.lock();
        if let Some(Final::Running) = s.calls.get(&id) {
            s.calls.remove(&id);
        }
    }

    /// The client took the early answers of `ids` (names of calls not answered early
    /// here, or already over, change nothing).
    pub(crate) fn taken(&self, ids: &[u64]) {
        let mut s = self.lock();
        for id in ids {
            if let Entry::Occupied(mut e) = s.calls.entry(*id) {
                match e.get() {
                    Final::Running => {
                        e.insert(Final::Taken);
                    }
                    Final::Held(..) => {
                        e.remove();
                        s.held -= 1;
                    }
                    Final::Taken => {}
                }
            }
        }
    }

    /// The handler of `reply`'s call is done: the reply to send now, if any.
    pub(crate) fn finished(&self, reply: CallReply) -> Option<CallReply> {
        let failed = matches!(reply.reply, Some(call_reply::Reply::Error(_)));
        let mut s = self.lock();
        let Entry::Occupied(mut e) = s.calls.entry(reply.id) else {
            return Some(reply);
        };
        match e.get() {
            Final::Taken => {
                e.remove();
                None
            }
            Final::Running if !failed => {
                e.insert(Final::Held(reply, Instant::now()));
                s.held += 1;
                // The sender sleeps until the oldest is due, or for the first.
                let first = s.held == 1;
                drop(s);
                if first {
                    self.wake.notify_one();
                }
                None
            }
            _ => {
                e.remove();
                Some(reply)
            }
        }
    }

    /// Sends the answers held [`HOLD`] to `answers`, until [`Settled::close`]; then every
    /// answer still held.
    pub(crate) async fn run(self: Arc<Self>, answers: mpsc::Sender<Result<CallReply, Status>>) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (due, next, closed) = self.due(Instant::now());
            for reply in due {
                if answers.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            if closed {
                return;
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// The answers due at `now` (all, once the stream ended), when the next one is, and
    /// whether the stream ended.
    fn due(&self, now: Instant) -> (Vec<CallReply>, Option<Instant>, bool) {
        let mut s = self.lock();
        let closed = s.closed;
        if s.held == 0 {
            return (Vec::new(), None, closed);
        }
        let mut due: Vec<CallReply> = s
            .calls
            .extract_if(|_, f| matches!(f, Final::Held(_, at) if closed || *at + HOLD <= now))
            .filter_map(|(_, f)| match f {
                Final::Held(reply, _) => Some(reply),
                _ => None,
            })
            .collect();
        s.held -= due.len();
        let next = s
            .calls
            .values()
            .filter_map(|f| match f {
                Final::Held(_, at) => Some(*at + HOLD),
                _ => None,
            })
            .min();
        due.sort_by_key(|r| r.id);
        (due, next, closed)
    }

    /// The stream ended: what is held goes now, and nothing more is held (the calls
    /// still running send their answers themselves).
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.calls.retain(|_, f| matches!(f, Final::Held(..)));
        drop(s);
        self.wake.notify_one();
    }
}

#[cfg(test)]
#[path = "calls_settled_tests.rs"]
mod tests;
