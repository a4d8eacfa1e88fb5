//! The failure detector of each region pair: lenient, as links between regions are slow and
//! sometimes cut. While this member leads, it looks at each peer region once a second: a
//! peer whose change log has not answered a pull for `unreachable_after` is unreachable,
//! one that answers again is reachable. A change of verdict is an event: logged, counted,
//! and proposed through Raft into the region's history of that link, with how far the peer
//! has applied this region's records, so the next leader goes on with the same state, lag
//! and RPO. A verdict only shows: nothing repairs, removes or fails over because of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_proto::RegionId;
use redb::ReadableDatabase;
use tracing::{info, warn};

use crate::namespace::links::{self, LinkEvent, PeerNote};
use crate::namespace::merge;
use crate::raft::Request as RaftRequest;
use crate::service::MetaNode;

/// How often the leader looks at each link.
const TICK: Duration = Duration::from_secs(1);

/// What the leader knows of one link right now, from its pulls and the peer's.
#[derive(Clone, Debug, Default)]
pub struct LinkNow {
    /// The last pull from the peer that worked.
    pub last_ok: Option<Instant>,
    /// The last pull error, if the last pull failed.
    pub error: String,
    /// The peer has applied this region's change log up to here (its pulls say so).
    pub acked: u64,
    /// What the peer said it holds of each region's change log.
    pub have: Vec<(u16, u64)>,
}

/// The verdict about a link silent for `silent` (the time since the last pull that
/// worked, or since this member leads), with why.
pub fn verdict(silent: Duration, unreachable_after: Duration, error: &str) -> (bool, String) {
    if silent < unreachable_after {
        return (true, "pulls answer".to_string());
    }
    let why = if error.is_empty() {
        "no answer".to_string()
    } else {
        error.to_string()
    };
    (
        false,
        format!("no pull answered for {:.1}s: {why}", silent.as_secs_f64()),
    )
}

/// Runs the detector for as long as the member runs.
pub async fn detect_loop(node: Arc<MetaNode>, unreachable_after: Duration) {
    if node.peers.is_empty() {
        return;
    }
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(TICK).await;
        if !node.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        for peer in &node.peers {
            let region = RegionId(peer.region);
            let Some(note) = look(&node, region, since, unreachable_after) else {
                continue;
            };
            if let Some(e) = &note.event {
                let to = if e.reachable {
                    "reachable"
                } else {
                    "unreachable"
                };
                metrics::counter!("meridian_region_link_changes_total", "peer" => peer.region.to_string(), "to" => to)
                    .increment(1);
                if e.reachable {
                    info!(peer = peer.region, detail = %e.detail, "peer region reachable");
                } else {
                    warn!(peer = peer.region, detail = %e.detail, "peer region unreachable");
                }
            }
            if let Err(e) = node.propose_internal(RaftRequest::PeerNote(note)).await {
                warn!(peer = peer.region, error = %e, "noting a peer region's state failed");
            }
        }
    }
}

/// What changed about `region`'s link since the state last noted it, if anything.
fn look(
    node: &MetaNode,
    region: RegionId,
    leading_since: Instant,
    unreachable_after: Duration,
) -> Option<PeerNote> {
    let tx = node.db.begin_read().ok()?;
    let state = merge::state_table(&tx).ok().flatten();
    let (noted_acked, history) = match &state {
        Some(t) => (
            links::acked(t, region).ok()?,
            links::events(t, region).ok()?,
        ),
        None => (0, Vec::new()),
    };
    let now = node.regions.link(region.0);
    // Only a pull that worked while this member leads says the link is up; without one,
    // the link is judged once the whole bound has passed (a new leader does not declare a
    // cut link reachable, nor a working one cut, before it could know).
    let silent = match now.last_ok.filter(|t| *t >= leading_since) {
        Some(t) => Some(t.elapsed()),
        None => (leading_since.elapsed() >= unreachable_after).then(|| leading_since.elapsed()),
    };
    let (reachable, detail) = match silent {
        Some(s) => verdict(s, unreachable_after, &now.error),
        None => (history.last().is_none_or(|e| e.reachable), String::new()),
    };
    let event_due = silent.is_some();
    let changed = history.last().map(|e| e.reachable) != Some(reachable);
    let event = (event_due && changed).then(|| LinkEvent {
        at_ms: meridian_proto::physical_ms(),
        reachable,
        detail,
    });
    let acked = (now.acked > noted_acked).then_some(now.acked);
    let have: Vec<(RegionId, u64)> = now
        .have
        .iter()
        .map(|(o, seq)| (RegionId(*o), *seq))
        .filter(|(o, seq)| {
            state
                .as_ref()
                .is_some_and(|t| links::have(t, region, *o).is_ok_and(|noted| *seq > noted))
        })
        .collect();
    (event.is_some() || acked.is_some() || !have.is_empty()).then_some(PeerNote {
        region,
        acked,
        event,
        have,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_unreachable_only_after_its_silence_passes_the_bound() {
        let bound = Duration::from_secs(10);
        assert!(verdict(Duration::from_secs(9), bound, "refused").0);
        let (up, why) = verdict(Duration::from_secs(12), bound, "connection refused");
        assert!(!up);
        assert!(
            why.contains("12.0s") && why.contains("connection refused"),
            "{why}"
        );
        let (up, why) = verdict(Duration::from_secs(10), bound, "");
        assert!(!up);
        assert!(why.contains("no answer"), "{why}");
    }
}
