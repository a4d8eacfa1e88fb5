//! What the state machine keeps of its own history, and trims: the change log (behind its
//! retention and what every peer region still needs) and the outcomes of requests (kept
//! for retries).

use meridian_proto::ns::Record;
use redb::ReadableTable;

use super::merge;
use super::tables::{WriteTables, store_err};
use super::types::*;

/// How long the change log keeps a record that no peer region still needs, in
/// milliseconds of stamp time: mounts follow it to keep their caches honest, and one that
/// falls further behind is told of the gap and drops its caches.
pub const CHANGELOG_RETENTION_MS: u64 = 10 * 60 * 1000;
/// The change log is trimmed once every this many records...
pub(crate) const TRIM_EVERY: u64 = 32;
/// ...by at most this many.
pub(crate) const TRIM_BATCH: usize = 64;

/// REGION_STATE key of the change-log sequence the trim of records behind a held one goes
/// on from: every record still in the log below it is one a peer region still needs.
pub const TRIM_CURSOR: &str = "changelog_trim_cursor";

/// The change-log sequence up to which records behind held ones were trimmed (see
/// [`TRIM_CURSOR`]; 0: none).
pub fn trim_cursor(t: &impl merge::StateTable) -> Result<u64, NsError> {
    Ok(merge::state(t, TRIM_CURSOR)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Drops change-log records that are past the retention and that every peer region they
/// go to has applied (as the leader last noted, in the replicated state, so every member
/// trims the same). A peer that is cut off holds back only the records it lacks: from the
/// front, up to the first record some peer still needs; behind it, the records no peer
/// needs (those of volumes the cut peer does not share), going on from a cursor so the
/// held ones are read once.
pub(crate) fn trim_changelog(t: &mut WriteTables<'_>, now_ms: u64) -> Result<(), NsError> {
    let Some(cutoff) = now_ms.checked_sub(CHANGELOG_RETENTION_MS) else {
        return Ok(());
    };
    let mut peers = Vec::new();
    for p in merge::peers(t.region_state.open()?)? {
        peers.push((p, super::links::acked(t.region_state.open()?, p)?));
    }
    // What a record still is to the trim.
    enum Fate {
        Go,
        Held,
        Young,
    }
    let fate = |seq: u64, bytes: &[u8]| match serde_json::from_slice::<Record>(bytes) {
        // Damaged: kept for whoever looks into it.
        Err(_) => Fate::Held,
        Ok(r) if r.hlc.wall_ms >= cutoff => Fate::Young,
        Ok(r)
            if peers
                .iter()
                .any(|(p, acked)| *acked < seq && r.allowed_in(*p)) =>
        {
            Fate::Held
        }
        Ok(_) => Fate::Go,
    };
    let mut gone = Vec::new();
    let mut front_end = None;
    for item in t
        .changelog
        .open()?
        .range(0..)
        .map_err(store_err)?
        .take(TRIM_BATCH)
    {
        let (k, v) = item.map_err(store_err)?;
        match fate(k.value(), v.value()) {
            Fate::Go => gone.push(k.value()),
            Fate::Held => {
                front_end = Some(k.value());
                break;
            }
            Fate::Young => break,
        }
    }
    if let Some(held) = front_end {
        let cursor = trim_cursor(t.region_state.open()?)?.max(held + 1);
        let mut next = cursor;
        for item in t
            .changelog
            .open()?
            .range(cursor..)
            .map_err(store_err)?
            .take(TRIM_BATCH)
        {
            let (k, v) = item.map_err(store_err)?;
            match fate(k.value(), v.value()) {
                Fate::Go => gone.push(k.value()),
                Fate::Held => {}
                Fate::Young => break,
            }
            next = k.value() + 1;
        }
        if next > cursor {
            merge::set_state(t, TRIM_CURSOR, &next.to_be_bytes())?;
        }
    }
    remove_changes(t, gone)
}

fn remove_changes(t: &mut WriteTables<'_>, seqs: Vec<u64>) -> Result<(), NsError> {
    for seq in seqs {
        t.changelog.open_mut()?.remove(seq).map_err(store_err)?;
    }
    Ok(())
}

/// How long a request's outcome is kept for retries, in milliseconds of HLC time. Clients
/// give up long before (30 s by default).
pub const REQUEST_RETENTION_MS: u64 = 15 * 60 * 1000;

/// Forgets request outcomes older than the retention, a bounded number per command. Uses
/// the command's own stamp, so every member prunes the same records.
pub(crate) fn prune_requests(t: &mut WriteTables<'_>, now_ms: u64) -> Result<(), NsError> {
    let Some(cutoff) = now_ms.checked_sub(REQUEST_RETENTION_MS) else {
        return Ok(());
    };
    let end = cutoff.to_be_bytes();
    let mut old = Vec::new();
    for item in t
        .request_times
        .open()?
        .range(..end.as_slice())
        .map_err(store_err)?
        .take(64)
    {
        let (k, _) = item.map_err(store_err)?;
        old.push(k.value().to_vec());
    }
    for k in old {
        t.request_times
            .open_mut()?
            .remove(k.as_slice())
            .map_err(store_err)?;
        // (A key too short to hold a time is damaged: it goes, and nothing else.)
        if let Some(request) = k.get(8..) {
            t.requests.open_mut()?.remove(request).map_err(store_err)?;
        }
    }
    Ok(())
}
