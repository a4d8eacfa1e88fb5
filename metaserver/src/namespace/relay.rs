//! Records of other regions kept to relay them to peers that do not pull their origin
//! (ADR 0009): what is kept, and when it goes.

use meridian_proto::RegionId;
use redb::ReadableTable;

use super::merge::{self, RemoteBatch};
use super::tables::{WriteTables, store_err};
use super::types::*;

/// Key of a relayed record: its origin, then its sequence there.
pub fn relay_key(origin: RegionId, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&origin.0.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// REGION_STATE key of the last relayed record of `origin` that went (every peer but
/// the origin held it).
pub fn relay_trimmed_key(origin: RegionId) -> String {
    format!("relay_trimmed/{}", origin.0)
}

/// Keeps the records of a batch that this region took (`wm` < sequence <= `last`) for
/// relaying, if it has a peer besides their origin, and drops the relayed records of
/// that origin every such peer holds (as the leader noted what they said they hold).
pub(crate) fn keep_for_relay(
    t: &mut WriteTables<'_>,
    batch: &RemoteBatch,
    wm: u64,
    last: u64,
) -> Result<(), NsError> {
    let origin = batch.origin;
    let others: Vec<RegionId> = merge::peers(t.region_state.open()?)?
        .into_iter()
        .filter(|p| *p != origin)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    for (seq, record) in &batch.records {
        if *seq > wm && *seq <= last {
            let bytes = serde_json::to_vec(record).map_err(|e| NsError::Store(e.to_string()))?;
            t.relay
                .open_mut()?
                .insert(relay_key(origin, *seq).as_slice(), bytes.as_slice())
                .map_err(store_err)?;
        }
    }
    let mut held_by_all = u64::MAX;
    for p in &others {
        held_by_all = held_by_all.min(super::links::have(t.region_state.open()?, *p, origin)?);
    }
    if held_by_all == 0 {
        return Ok(());
    }
    let (lo, hi) = (relay_key(origin, 0), relay_key(origin, held_by_all));
    let mut gone = Vec::new();
    for item in t
        .relay
        .open()?
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(store_err)?
        .take(super::history::TRIM_BATCH * 32)
    {
        gone.push(item.map_err(store_err)?.0.value().to_vec());
    }
    if let Some(last_gone) = gone.last() {
        let seq = last_gone
            .get(2..10)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| NsError::Store("damaged relay key".into()))?;
        t.region_state
            .open_mut()?
            .insert(
                relay_trimmed_key(origin).as_str(),
                seq.to_be_bytes().as_slice(),
            )
            .map_err(store_err)?;
    }
    for k in gone {
        t.relay
            .open_mut()?
            .remove(k.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}
