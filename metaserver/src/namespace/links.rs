//! What a region's leader notes about each peer region, kept in the replicated state so
//! that the next leader carries on where it stopped: how far the peer has applied this
//! region's change log (the outbound lag and RPO are counted from it), and the history of
//! the link detector's verdicts (reachable or not, since when, and why).

use meridian_proto::RegionId;
use serde::{Deserialize, Serialize};

use super::merge::{StateTable, state};
use super::tables::{WriteTables, store_err};
use super::types::NsError;

/// Verdicts kept per peer region: the oldest go first.
pub const HISTORY: usize = 32;

/// One verdict of the link detector about a peer region.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LinkEvent {
    /// When the verdict was reached (ms since the epoch, the leader's clock).
    pub at_ms: u64,
    /// Whether the peer is reachable from then on.
    pub reachable: bool,
    /// Why: the last error, or how long the link had been silent.
    pub detail: String,
}

/// What the leader noted about one peer region in one Raft entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PeerNote {
    /// The peer.
    pub region: RegionId,
    /// The peer has applied this region's change log up to here (it never moves back).
    pub acked: Option<u64>,
    /// A new verdict.
    pub event: Option<LinkEvent>,
    /// What the peer said it holds of each region's change log (only values that moved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub have: Vec<(RegionId, u64)>,
}

fn acked_key(peer: RegionId) -> String {
    format!("peer_acked/{}", peer.0)
}

fn have_key(peer: RegionId, origin: RegionId) -> String {
    format!("peer_have/{}/{}", peer.0, origin.0)
}

/// How much of `origin`'s change log `peer` said it holds, as last noted (0: never).
pub fn have(t: &impl StateTable, peer: RegionId, origin: RegionId) -> Result<u64, NsError> {
    Ok(state(t, &have_key(peer, origin))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn events_key(peer: RegionId) -> String {
    format!("peer_events/{}", peer.0)
}

/// How far `peer` has applied this region's change log, as last noted (0: never).
pub fn acked(t: &impl StateTable, peer: RegionId) -> Result<u64, NsError> {
    Ok(state(t, &acked_key(peer))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// The detector's verdicts about `peer`, oldest first.
pub fn events(t: &impl StateTable, peer: RegionId) -> Result<Vec<LinkEvent>, NsError> {
    match state(t, &events_key(peer))? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| NsError::Store(format!("damaged link history of region {}: {e}", peer.0))),
        None => Ok(Vec::new()),
    }
}

/// Applies a note: the acknowledged sequence only moves forward, and the history keeps the
/// last [`HISTORY`] verdicts.
pub fn note(t: &mut WriteTables<'_>, n: &PeerNote) -> Result<(), NsError> {
    if let Some(a) = n.acked
        && a > acked(t.region_state.open()?, n.region)?
    {
        t.region_state
            .open_mut()?
            .insert(acked_key(n.region).as_str(), a.to_be_bytes().as_slice())
            .map_err(store_err)?;
    }
    for (origin, seq) in &n.have {
        if *seq > have(t.region_state.open()?, n.region, *origin)? {
            t.region_state
                .open_mut()?
                .insert(
                    have_key(n.region, *origin).as_str(),
                    seq.to_be_bytes().as_slice(),
                )
                .map_err(store_err)?;
        }
    }
    if let Some(e) = &n.event {
        let mut history = events(t.region_state.open()?, n.region)?;
        history.push(e.clone());
        let excess = history.len().saturating_sub(HISTORY);
        history.drain(..excess);
        let bytes = serde_json::to_vec(&history).map_err(|e| NsError::Store(e.to_string()))?;
        t.region_state
            .open_mut()?
            .insert(events_key(n.region).as_str(), bytes.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}
