//! A change answered early on a `Calls` stream: once the leader's copy of its entry is
//! durable (or, for a client counting that copy from its notice, written) and applied
//! ahead, with the place a majority of copies commits it at
//! (docs/adr/0020; `raft/early.rs` hands the handler its entry, `raft/notices.rs` tells
//! the client of the followers' copies).

use std::time::Duration;

use meridian_proto::pb::meta::{CallReply, Early, LogPlace, call_reply};
use tokio::sync::mpsc;
use tonic::Status;

use super::*;

/// How long a read waits for the entries answered early to apply here before it goes on
/// (this member lost its leadership meanwhile: it applies them behind, or forwards).
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// Where a call's early answer goes: its stream's answers (set by `calls.rs` on a call
/// that takes one).
#[derive(Clone, Debug)]
pub struct EarlySink {
    pub id: u64,
    pub answers: mpsc::Sender<Result<CallReply, Status>>,
    /// The client counts this member's copy from its durable notice (`Call.leader_notices`):
    /// the answer may leave before that copy is durable.
    pub leader_notices: bool,
    /// The stream's calls answered early (their answers after the commit are held a while:
    /// `calls_settled.rs`).
    pub(crate) settled: Arc<crate::calls::Settled>,
}

impl MetaNode {
    /// Proposes `entry`, the change `key` of a client; with `sink`, answers it early there
    /// (`answer` makes the answer from the outcome applied ahead and the entry's index,
    /// `None` for an outcome not answered early) if this member leads a group of one
    /// configuration, and then waits for the commit as [`MetaNode::propose`] does.
    pub(crate) async fn propose_early(
        &self,
        entry: RaftRequest,
        key: Option<(u64, u64)>,
        sink: Option<&EarlySink>,
        answer: impl FnOnce(&RaftResponse, u64) -> Option<call_reply::Reply>,
    ) -> Result<(RaftResponse, u64), Option<Status>> {
        let expected = match (sink, key) {
            (Some(sink), Some(key)) => self.shared.early.expect(key, sink.leader_notices),
            _ => None,
        };
        let (Some(sink), Some((expected, ahead))) = (sink, expected) else {
            return self.propose(entry).await;
        };
        let propose = self.propose(entry);
        tokio::pin!(propose);
        tokio::select! {
            biased;
            done = &mut propose => return done,
            ahead = ahead => {
                if let Ok(((term, index), response)) = ahead
                    && let Some(mut early) = self.early_terms(term)
                    && let Some(reply) = answer(&response, index)
                {
                    // Before the client hears it: a read it makes next waits for it.
                    self.shared.early.answered_at(index);
                    early.at = Some(LogPlace { term, index });
                    early.leader_notices = sink.leader_notices;
                    sink.settled.answering_early(sink.id);
                    let sent = sink.answers.try_send(Ok(CallReply {
                        id: sink.id,
                        reply: Some(reply),
                        leader: String::new(),
                        early: Some(early),
                    }));
                    if sent.is_err() {
                        sink.settled.not_answered_early(sink.id);
                    }
                    metrics::counter!("meridian_meta_early_answers_total").increment(1);
                }
            }
        }
        drop(expected);
        propose.await
    }

    /// What an early answer of an entry of `term` says beside its place: this member, the
    /// voters and how many of them make a majority; `None` unless this member leads in
    /// `term` with one configuration, committed.
    fn early_terms(&self, term: u64) -> Option<Early> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_term != term || m.current_leader != Some(self.id) {
            return None;
        }
        let membership = m.membership_config.membership();
        let configs = membership.get_joint_config();
        if configs.len() != 1 {
            return None;
        }
        // A configuration still being changed: the majority that commits may be another.
        let since = m.membership_config.log_id().as_ref().map_or(0, |l| l.index);
        if m.last_applied.as_ref().map_or(0, |l| l.index) < since {
            return None;
        }
        let voters: Vec<u64> = configs[0].iter().copied().collect();
        if !voters.contains(&self.id) {
            return None;
        }
        Some(Early {
            at: None,
            leader: self.id,
            copies: (voters.len() / 2 + 1) as u32,
            voters,
            leader_notices: false,
        })
    }

    /// Waits until every entry this member answered early has applied here (or
    /// [`SETTLE_WAIT`]): what a client reads after its change was answered early has it.
    pub(crate) async fn settle_early(&self) {
        let answered = self.shared.early.answered();
        if answered == 0 || *self.shared.applied.borrow() >= answered {
            return;
        }
        let mut applied = self.shared.applied.subscribe();
        let _ = tokio::time::timeout(SETTLE_WAIT, applied.wait_for(|a| *a >= answered)).await;
    }
}
