//! The merged log: every applied record of every region, in HLC order, each with what it
//! overwrote, and the cross-region bookkeeping around it. This module is its one owner:
//! entering a record, rewinding the log before a late record, reading a file's content as
//! it was at an older version, the stability watermark, and pruning and purging below it.
//! It applies no operation itself (`apply` does).
//!
//! A region's namespace is the result of applying every record it knows, local and remote,
//! in HLC order. Local records arrive in order and apply at the end. A remote record older
//! than records already applied rewinds those (restoring what they overwrote), applies,
//! and they are replayed after it; replays resolve conflicts the same way on every region
//! (see `conflict`), so regions that hold the same records hold the same namespace.
//!
//! Records older than the settled bound (every peer region has sent everything up to it,
//! and has written everything since knowing everything before it) can never be reordered
//! or named as a base version again, and leave the merged log.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::footprint::{self, Footprint};
use super::settle;
pub use super::settle::{
    CONFLICT_RETENTION_MS, settled, settled_bound, settled_bound_without, settled_by, stable,
    stable_by,
};
use super::tables::{
    Before, REGION_STATE, Tab, Tomb, WriteTables, decode_extent, read_extents, store_err,
};
use super::types::*;

/// Anything REGION_STATE can be read from: the table open in a write transaction, or in a
/// read transaction (the region code, fsck, GC).
pub trait StateTable: ReadableTable<&'static str, &'static [u8]> {}
impl<T: ReadableTable<&'static str, &'static [u8]>> StateTable for T {}

/// The records kept in REGION_STATE under `prefix` (a name and a slash: "leave/"), in key
/// order, decoded from JSON (`damaged` names a record that does not decode).
pub(crate) fn state_records<T: serde::de::DeserializeOwned>(
    t: &impl StateTable,
    prefix: &str,
    damaged: fn(serde_json::Error) -> NsError,
) -> Result<Vec<T>, NsError> {
    // Every key under the prefix sorts before the prefix with its slash made a '0'.
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let mut out = Vec::new();
    for item in t.range(prefix..end.as_str()).map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        out.push(serde_json::from_slice(v.value()).map_err(damaged)?);
    }
    Ok(out)
}

/// The record kept in REGION_STATE under `key`, if any, decoded from JSON (`damaged` names
/// one that does not decode).
pub(crate) fn state_record<T: serde::de::DeserializeOwned>(
    t: &impl StateTable,
    key: &str,
    damaged: fn(serde_json::Error) -> NsError,
) -> Result<Option<T>, NsError> {
    t.get(key)
        .map_err(store_err)?
        .map(|v| serde_json::from_slice(v.value()).map_err(damaged))
        .transpose()
}

/// REGION_STATE of a read transaction (none before the first write).
pub fn state_table(
    tx: &ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, NsError> {
    match tx.open_table(REGION_STATE) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(store_err(e)),
    }
}

/// REGION_STATE key of the newest applied stamp.
pub const HEAD: &str = "head";
/// REGION_STATE key of the stamp every later local record is stamped after.
pub const PROMISED: &str = "promised";
/// REGION_STATE key of the peer regions (JSON).
pub const PEERS: &str = "peers";
/// REGION_STATE key of the regions heard of through peers, whose records they relay
/// (JSON).
pub const RELAYED: &str = "relayed";

/// REGION_STATE key of the last change-log sequence of `origin` applied here.
pub fn watermark_key(origin: RegionId) -> String {
    format!("wm/{}", origin.0)
}

/// REGION_STATE key of the frontier `origin` last told.
pub fn frontier_key(origin: RegionId) -> String {
    format!("frontier/{}", origin.0)
}

/// Records of one origin region, as this region pulled them from its change log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RemoteBatch {
    /// The region the records come from.
    pub origin: RegionId,
    /// (origin change-log sequence, record), in sequence order.
    pub records: Vec<(u64, Record)>,
    /// A stamp no future record of the origin will be older than, if the origin said so.
    pub frontier: Option<Hlc>,
    /// When the origin was caught up as it answered: a stamp below which it held every
    /// record of every region, so everything it wrote without knowing them is in this
    /// batch or an earlier one.
    #[serde(default)]
    pub settled: Option<Hlc>,
    /// The origin's change log was scanned up to (not including) this sequence: records
    /// below it that are not in the batch are of volumes that do not live here, and the
    /// watermark moves past them (0: unknown).
    #[serde(default)]
    pub scanned: u64,
    /// With `settled`, region by region: the origin's own horizon, and the frontier it
    /// held of each region it hears. The records of a volume settle once the regions it
    /// lives in have (see `settle`); empty from an origin of an earlier version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled_by: Vec<(RegionId, Hlc)>,
}

/// What applying a remote batch did.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct MergeOutcome {
    /// New records applied.
    pub applied: u64,
    /// Already applied records redone after them.
    pub redone: u64,
    /// Records held back: they depend on records of a third region not applied here yet.
    #[serde(default)]
    pub held: u64,
    /// Records kept apart until their volume's image is installed (see `backfill`).
    #[serde(default)]
    pub parked: u64,
    /// The origin's change-log sequence applied up to.
    pub watermark: u64,
    /// How long applying the batch held the state machine, in milliseconds (its
    /// transaction's commit aside); set by the Raft layer, which has a clock.
    #[serde(default)]
    pub apply_ms: u64,
}

pub(crate) fn json_err(e: serde_json::Error) -> NsError {
    NsError::Store(format!("damaged merge record: {e}"))
}

/// A value of the cross-region bookkeeping, if set.
pub fn state(t: &impl StateTable, key: &str) -> Result<Option<Vec<u8>>, NsError> {
    Ok(t.get(key).map_err(store_err)?.map(|v| v.value().to_vec()))
}

pub(crate) fn stamp(t: &impl StateTable, key: &str) -> Result<Option<Hlc>, NsError> {
    Ok(state(t, key)?.and_then(|b| Hlc::from_key(&b)))
}

pub(crate) fn set_state(t: &mut WriteTables<'_>, key: &str, value: &[u8]) -> Result<(), NsError> {
    t.region_state
        .open_mut()?
        .insert(key, value)
        .map_err(store_err)?;
    Ok(())
}

/// The newest stamp applied.
pub fn head(t: &impl StateTable) -> Result<Option<Hlc>, NsError> {
    stamp(t, HEAD)
}

/// The newest of the head and the promise: no later local record is stamped before it.
pub fn horizon(t: &impl StateTable) -> Result<Option<Hlc>, NsError> {
    Ok(head(t)?.max(stamp(t, PROMISED)?))
}

/// Promises that every later local record is stamped after `hlc` (never moves back).
pub fn promise(t: &mut WriteTables<'_>, hlc: Hlc) -> Result<(), NsError> {
    if horizon(t.region_state.open()?)?.is_none_or(|h| hlc > h) {
        set_state(t, PROMISED, &hlc.to_key())?;
    }
    Ok(())
}

/// The last change-log sequence of `origin` applied here (0: none).
pub fn watermark(t: &impl StateTable, origin: RegionId) -> Result<u64, NsError> {
    Ok(state(t, &watermark_key(origin))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// The frontier `origin` last told: none of its future records is older.
pub fn frontier(t: &impl StateTable, origin: RegionId) -> Result<Option<Hlc>, NsError> {
    stamp(t, &frontier_key(origin))
}

/// The regions this one exchanges records with.
pub fn peers(t: &impl StateTable) -> Result<Vec<RegionId>, NsError> {
    match state(t, PEERS)? {
        Some(b) => serde_json::from_slice(&b).map_err(json_err),
        None => Ok(Vec::new()),
    }
}

/// The regions whose records reach this one through a peer (not peers themselves), each
/// with that peer.
pub fn relayed(t: &impl StateTable) -> Result<Vec<(RegionId, RegionId)>, NsError> {
    match state(t, RELAYED)? {
        Some(b) => serde_json::from_slice(&b).map_err(json_err),
        None => Ok(Vec::new()),
    }
}

/// Sets the regions whose records reach this one through a peer, each with that peer.
pub fn set_relayed(
    t: &mut WriteTables<'_>,
    regions: &[(RegionId, RegionId)],
) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(regions).map_err(json_err)?;
    set_state(t, RELAYED, &bytes)
}

/// Every other region whose records this one holds: its peers and the regions relayed
/// through them. Stability waits for each of them.
pub fn origins(t: &impl StateTable) -> Result<Vec<RegionId>, NsError> {
    let mut all = peers(t)?;
    all.extend(relayed(t)?.into_iter().map(|(origin, _)| origin));
    all.sort();
    all.dedup();
    Ok(all)
}

/// Checks, where a volume is made or changed, that every region in `set` is this one,
/// a peer, or reached through a peer that is itself in `set`: records of the volume are
/// relayed only by regions it lives in. A region not heard of at all is refused unless
/// `unknown_ok` (a volume may be made before every region is up).
pub fn check_reachable(
    t: &impl StateTable,
    own: RegionId,
    set: &[RegionId],
    unknown_ok: bool,
) -> Result<(), NsError> {
    let peers = peers(t)?;
    let relayed = relayed(t)?;
    for r in set.iter().filter(|r| **r != own && !peers.contains(r)) {
        match relayed.iter().find(|(o, _)| o == r) {
            Some((_, via)) if set.contains(via) => {}
            Some((_, via)) => {
                return Err(NsError::Invalid(format!(
                    "region {} is reached only through region {}, which the volume leaves out: its records would not get there",
                    r.0, via.0
                )));
            }
            None if unknown_ok => {}
            None => {
                return Err(NsError::Invalid(format!(
                    "region {} is unknown to region {}: make it a peer (--peer), or a peer of a peer, first",
                    r.0, own.0
                )));
            }
        }
    }
    Ok(())
}

/// Sets the regions this one exchanges records with (from its configuration).
pub fn set_peers(t: &mut WriteTables<'_>, peers: &[RegionId]) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(peers).map_err(json_err)?;
    set_state(t, PEERS, &bytes)
}

/// Whether a local record applied now enters the merged log. Not where no region could
/// send a record to order before it (no peer, none relayed, nothing kept apart for an
/// image) and the log is empty: there it would leave again with the next record (the
/// settled bound is the horizon), so it is neither written nor its directories' times
/// noted by stamp (no register is left then either).
pub(crate) fn enters_log(t: &WriteTables<'_>) -> Result<bool, NsError> {
    Ok(!origins(t.region_state.open()?)?.is_empty()
        || stamp(t.region_state.open()?, super::backfill::PARKED_LOW)?.is_some()
        || t.oplog.open()?.first().map_err(store_err)?.is_some()
        || t.dir_times.open()?.first().map_err(store_err)?.is_some())
}

/// Enters an applied record, with what it overwrote, into the merged log.
pub(crate) fn log_applied(
    t: &mut WriteTables<'_>,
    record: &Record,
    images: &[Before],
) -> Result<(), NsError> {
    let key = record.hlc.to_key();
    let bytes = serde_json::to_vec(record).map_err(json_err)?;
    t.oplog
        .open_mut()?
        .insert(key.as_slice(), bytes.as_slice())
        .map_err(store_err)?;
    let undo = serde_json::to_vec(images).map_err(json_err)?;
    t.undo_log
        .open_mut()?
        .insert(key.as_slice(), undo.as_slice())
        .map_err(store_err)?;
    footprint::index(t, &key, &Footprint::of_applied(record, images))?;
    applied_past(t, record.hlc)
}

/// Moves the head past a record applied (logged or not), and lets what settled leave.
pub(crate) fn applied_past(t: &mut WriteTables<'_>, hlc: Hlc) -> Result<(), NsError> {
    if head(t.region_state.open()?)?.is_none_or(|h| hlc > h) {
        set_state(t, HEAD, &hlc.to_key())?;
    }
    settle::prune_stable(t)
}

/// Takes out of the merged log every record stamped at or after `low`, newest first,
/// restoring what each overwrote, and returns them oldest first: the namespace is then as
/// it was before `low`, ready for a late record to apply at its place in HLC order.
pub(crate) fn rewind(t: &mut WriteTables<'_>, low: Hlc) -> Result<Vec<Record>, NsError> {
    let from = low.to_key();
    let mut newer = Vec::new();
    for item in t
        .oplog
        .open()?
        .range(from.as_slice()..)
        .map_err(store_err)?
        .rev()
    {
        let (k, v) = item.map_err(store_err)?;
        newer.push((k.value().to_vec(), v.value().to_vec()));
    }
    let mut out = Vec::with_capacity(newer.len());
    for (key, bytes) in newer {
        let images = undo_images(t, &key)?;
        take_out(t, &key, &images)?;
        out.push(serde_json::from_slice::<Record>(&bytes).map_err(json_err)?);
    }
    out.reverse();
    // The head goes back to the newest record kept, and forward again as records apply.
    let before_low = t
        .oplog
        .open()?
        .range(..from.as_slice())
        .map_err(store_err)?
        .next_back()
        .map(|item| item.map(|(k, _)| k.value().to_vec()))
        .transpose()
        .map_err(store_err)?;
    match before_low {
        Some(k) => set_state(t, HEAD, &k)?,
        None => {
            t.region_state.open_mut()?.remove(HEAD).map_err(store_err)?;
        }
    }
    Ok(out)
}

/// The records a selective rewind took out, with the late ones, all to be replayed: what
/// [`kept_still_commute`] checks the records left applied against.
pub(crate) struct Replayed {
    low: Hlc,
    keys: BTreeSet<Vec<u8>>,
}

/// Takes out of the merged log, newest first, the records stamped at or after the oldest
/// of `fresh` that do not commute with them (or with each other's taken ones), restoring
/// what each overwrote; returns them oldest first. Records that touch nothing `fresh`
/// touches stay where they are, and are never read: the footprint index names the ones
/// that meet, so merging late records costs in proportion to what they meet, not to
/// everything written since. Whether the replay touched only what was foreseen is checked
/// after it (see [`kept_still_commute`]).
pub(crate) fn rewind_meeting(
    t: &mut WriteTables<'_>,
    fresh: &[Record],
) -> Result<(Vec<Record>, Replayed), NsError> {
    let mut keys: BTreeSet<Vec<u8>> = fresh.iter().map(|r| r.hlc.to_key().to_vec()).collect();
    let Some(low) = fresh.iter().map(|r| r.hlc).min() else {
        return Ok((
            Vec::new(),
            Replayed {
                low: Hlc::default(),
                keys,
            },
        ));
    };
    let mut touched = Footprint::default();
    for r in fresh {
        touched.add(&Footprint::of_record(r));
    }
    let take = footprint::Meeting::find(t, &touched, low)?;
    #[cfg(test)]
    assert_eq!(
        take,
        meeting_by_scan(t, touched, low)?,
        "the footprint index missed"
    );
    let mut out = Vec::with_capacity(take.len());
    for key in take.iter().rev() {
        let record: Record = match t.oplog.open()?.get(key.as_slice()).map_err(store_err)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(json_err)?,
            None => {
                return Err(NsError::Store(
                    "footprint of a record not in the log".into(),
                ));
            }
        };
        let images = undo_images(t, key)?;
        take_out(t, key, &images)?;
        out.push(record);
    }
    out.reverse();
    keys.extend(take);
    // The head is the newest record left (records moving forward again as they apply).
    let last = t
        .oplog
        .open()?
        .last()
        .map_err(store_err)?
        .map(|(k, _)| k.value().to_vec());
    match last {
        Some(k) => set_state(t, HEAD, &k)?,
        None => {
            t.region_state.open_mut()?.remove(HEAD).map_err(store_err)?;
        }
    }
    Ok((out, Replayed { low, keys }))
}

/// What [`footprint::Meeting::find`] finds, found by reading every newer record: the
/// tests check the index against it.
#[cfg(test)]
fn meeting_by_scan(
    t: &WriteTables<'_>,
    mut touched: Footprint,
    low: Hlc,
) -> Result<BTreeSet<Vec<u8>>, NsError> {
    let mut take = BTreeSet::new();
    for item in t
        .oplog
        .open()?
        .range(low.to_key().as_slice()..)
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        let record: Record = serde_json::from_slice(v.value()).map_err(json_err)?;
        let f = Footprint::of_applied(&record, &undo_images(t, k.value())?);
        if f.meets(&touched) {
            touched.add(&f);
            take.insert(k.value().to_vec());
        }
    }
    Ok(take)
}

/// Takes the record stamped `hlc` out of the merged log, restoring what it overwrote.
pub(crate) fn unapply(t: &mut WriteTables<'_>, hlc: Hlc) -> Result<(), NsError> {
    let key = hlc.to_key();
    let images = undo_images(t, &key)?;
    take_out(t, &key, &images)
}

/// After `replayed` applied again: whether every record left applied still commutes with
/// each of them that is older than it, judged by what the replay actually wrote (a
/// conflict copy, say, writes into a directory the record did not name).
pub(crate) fn kept_still_commute(
    t: &WriteTables<'_>,
    replayed: &[Record],
    taken: &Replayed,
) -> Result<bool, NsError> {
    let mut left = footprint::LeftApplied::new(taken.low, &taken.keys);
    let mut commute = true;
    for r in replayed {
        let key = r.hlc.to_key();
        // A record below the settled bound leaves the log as it applies (only a region
        // with no peers, or a peer breaking its promise, sends one): it is final.
        let Some(f) = footprint::footprint_if_logged(t, &key)? else {
            continue;
        };
        if left.meets_after(t, &f, &key)? {
            commute = false;
            break;
        }
    }
    #[cfg(test)]
    assert_eq!(
        commute,
        commute_by_scan(t, replayed, taken)?,
        "the post-replay check through the index differs from a scan"
    );
    Ok(commute)
}

/// What [`kept_still_commute`] answers, found by reading every record left applied: the
/// tests check the index against it.
#[cfg(test)]
fn commute_by_scan(
    t: &WriteTables<'_>,
    replayed: &[Record],
    taken: &Replayed,
) -> Result<bool, NsError> {
    let mut kept = Vec::new();
    for item in t
        .oplog
        .open()?
        .range(taken.low.to_key().as_slice()..)
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        if !taken.keys.contains(k.value()) {
            let record: Record = serde_json::from_slice(v.value()).map_err(json_err)?;
            let f = Footprint::of_applied(&record, &undo_images(t, k.value())?);
            kept.push((record.hlc, f));
        }
    }
    for r in replayed {
        let key = r.hlc.to_key();
        if t.undo_log
            .open()?
            .get(key.as_slice())
            .map_err(store_err)?
            .is_none()
        {
            continue;
        }
        let f = Footprint::of_applied(r, &undo_images(t, &key)?);
        if kept.iter().any(|(h, k)| *h > r.hlc && k.meets(&f)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes the record keyed `key` out of the merged log, restoring what it overwrote
/// (`images`, its undo images).
pub(crate) fn take_out(
    t: &mut WriteTables<'_>,
    key: &[u8],
    images: &[Before],
) -> Result<(), NsError> {
    t.restore(images)?;
    footprint::unindex(t, key)?;
    t.undo_log.open_mut()?.remove(key).map_err(store_err)?;
    t.oplog.open_mut()?.remove(key).map_err(store_err)?;
    Ok(())
}

pub(crate) fn undo_images(t: &WriteTables<'_>, key: &[u8]) -> Result<Vec<Before>, NsError> {
    match t.undo_log.open()?.get(key).map_err(store_err)? {
        Some(v) => serde_json::from_slice(v.value()).map_err(json_err),
        None => Err(NsError::Store(format!(
            "no undo record for {:?}",
            Hlc::from_key(key)
        ))),
    }
}

/// Whether the merged log already holds the record stamped `hlc`.
pub(crate) fn holds(t: &WriteTables<'_>, hlc: Hlc) -> Result<bool, NsError> {
    Ok(t.oplog
        .open()?
        .get(hlc.to_key().as_slice())
        .map_err(store_err)?
        .is_some())
}

/// What an origin said with a batch about which of its records are still to come.
#[derive(Clone, Debug, Default)]
pub(crate) struct Marks {
    /// No future record of the origin is older.
    pub(crate) frontier: Option<Hlc>,
    /// The origin's stability watermark when it was caught up (see [`RemoteBatch`]).
    pub(crate) settled: Option<Hlc>,
    /// The same, region by region (see [`RemoteBatch::settled_by`]).
    pub(crate) settled_by: Vec<(RegionId, Hlc)>,
}

/// After a batch from `origin`: its change log applied up to `seq`, and the marks it sent.
/// Then whatever the marks make stable leaves the merged log.
pub(crate) fn note_batch(
    t: &mut WriteTables<'_>,
    own: RegionId,
    origin: RegionId,
    seq: u64,
    marks: &Marks,
) -> Result<(), NsError> {
    set_state(t, &watermark_key(origin), &seq.to_be_bytes())?;
    if let Some(f) = marks.frontier
        && frontier(t.region_state.open()?, origin)?.is_none_or(|old| f > old)
    {
        set_state(t, &frontier_key(origin), &f.to_key())?;
    }
    settle::note_settled(t, own, origin, marks)?;
    settle::prune_stable(t)?;
    settle::settle_volumes(t, own)
}

/// A file's content at an older version.
#[derive(Serialize, Deserialize)]
pub(crate) struct FileVersion {
    /// Its extents.
    pub(crate) extents: Vec<Extent>,
    /// Its size.
    pub(crate) size: u64,
}

/// The version `version` of `ino` that the record stamped `record` applies to: read back
/// once (see [`version_of`]) and kept with the record while it is in the merged log.
pub(crate) fn base_for(
    t: &mut WriteTables<'_>,
    record: Hlc,
    ino: InodeId,
    version: Hlc,
) -> Result<FileVersion, NsError> {
    let mut key = record.to_key().to_vec();
    key.extend_from_slice(&ino.0.to_be_bytes());
    if let Some(v) = t.bases.open()?.get(key.as_slice()).map_err(store_err)? {
        return serde_json::from_slice(v.value()).map_err(json_err);
    }
    let base = version_of(t, ino, version)?;
    let bytes = serde_json::to_vec(&base).map_err(json_err)?;
    t.bases
        .open_mut()?
        .insert(key.as_slice(), bytes.as_slice())
        .map_err(store_err)?;
    Ok(base)
}

/// One inode's content and existence, as the walk back through the undo log restores it.
struct Traced {
    ino: InodeId,
    extents: BTreeMap<u64, Extent>,
    size: u64,
    /// Its cuts: the extents starting in one are leftovers, not content (`trim.rs`).
    cuts: Vec<Cut>,
    live: bool,
    tomb: bool,
}

/// The content `ino` had at `version` (the stamp of the change that made it), read back
/// from the current content through what every later record in the merged log overwrote.
/// A conflict copy's versions are versions of the file it was copied from: where the copy
/// did not exist yet, the walk goes on with that file.
///
/// Every record that changed the content since is still in the log when a record based on
/// `version` can still arrive: such a record was written where the change that displaced
/// `version` was not known yet, so its origin had not settled past that change, and the
/// log is pruned only below every peer's settled mark.
pub(crate) fn version_of(
    t: &WriteTables<'_>,
    ino: InodeId,
    version: Hlc,
) -> Result<FileVersion, NsError> {
    if version == Hlc::default() {
        // Never written: as created.
        return Ok(FileVersion {
            extents: Vec::new(),
            size: 0,
        });
    }
    // The copy, the file it copies, and so on.
    let mut lineage: Vec<Traced> = Vec::new();
    let mut next = Some(ino);
    while let Some(i) = next.take() {
        if lineage.len() >= 8 || lineage.iter().any(|l| l.ino == i) {
            break;
        }
        let live = super::tables::read_inode(t.inodes()?, i)?;
        let tomb = t.tomb(i)?;
        let node = live.clone().or_else(|| tomb.clone().map(|tb| tb.inode));
        next = node.as_ref().and_then(|n| n.copy_of);
        lineage.push(Traced {
            ino: i,
            extents: read_extents(t.extents()?, i, 0, u64::MAX)?
                .into_iter()
                .map(|e| (e.offset, e))
                .collect(),
            size: node.as_ref().map_or(0, |n| n.attr.size),
            cuts: node.map(|n| n.cuts).unwrap_or_default(),
            live: live.is_some(),
            tomb: tomb.is_some(),
        });
    }
    let after = version.to_key();
    let mut keys = Vec::new();
    for item in t
        .undo_log
        .open()?
        .range(after.as_slice()..)
        .map_err(store_err)?
    {
        let (k, _) = item.map_err(store_err)?;
        if k.value() != after.as_slice() {
            keys.push(k.value().to_vec());
        }
    }
    for key in keys.iter().rev() {
        for Before(tab, k, val) in undo_images(t, key)?.iter().rev() {
            for l in lineage.iter_mut() {
                let of = l.ino.0.to_be_bytes();
                match tab {
                    Tab::Extents if k.len() == 16 && k[..8] == of => {
                        let offset = u64::from_be_bytes(k[8..16].try_into().expect("8 bytes"));
                        match val {
                            Some(v) => l.extents.insert(offset, decode_extent(k, v)?),
                            None => l.extents.remove(&offset),
                        };
                    }
                    Tab::Inodes if k[..] == of => {
                        l.live = val.is_some();
                        if let Some(v) = val {
                            let node = serde_json::from_slice::<Inode>(v).map_err(json_err)?;
                            (l.size, l.cuts) = (node.attr.size, node.cuts);
                        }
                    }
                    Tab::Tombs if k[..] == of => {
                        l.tomb = val.is_some();
                        if let Some(v) = val {
                            let node = serde_json::from_slice::<Tomb>(v).map_err(json_err)?.inode;
                            (l.size, l.cuts) = (node.attr.size, node.cuts);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let found = match lineage.iter().position(|l| l.live || l.tomb) {
        Some(i) => lineage.swap_remove(i),
        None => lineage.swap_remove(0),
    };
    // The leftovers of the version's cuts are no part of it. Those of a cut the steps
    // emptied are gone from the rows: the steps wait until the cut's record has left the
    // log, so no version read back here is older than the cut.
    Ok(FileVersion {
        extents: super::trim::outside(&found.cuts, found.extents.into_values().collect()),
        size: found.size,
    })
}

/// Rewrites the undo images of the records in the merged log (from `from` on, or all):
/// `f` changes one image in place and says whether it did.
pub(crate) fn rewrite_undo(
    t: &mut WriteTables<'_>,
    from: Option<Hlc>,
    f: impl FnMut(&mut Before) -> Result<bool, NsError>,
) -> Result<(), NsError> {
    let from = from.map(|h| h.to_key().to_vec()).unwrap_or_default();
    let mut keys = BTreeSet::new();
    for item in t
        .undo_log
        .open()?
        .range(from.as_slice()..)
        .map_err(store_err)?
    {
        keys.insert(item.map_err(store_err)?.0.value().to_vec());
    }
    rewrite_undo_of(t, keys, f)
}

/// Rewrites the undo images of the records keyed `keys` (those not in the merged log are
/// skipped): `f` changes one image in place and says whether it did.
pub(crate) fn rewrite_undo_of(
    t: &mut WriteTables<'_>,
    keys: BTreeSet<Vec<u8>>,
    mut f: impl FnMut(&mut Before) -> Result<bool, NsError>,
) -> Result<(), NsError> {
    let mut changed = Vec::new();
    for key in keys {
        let Some(v) = t.undo_log.open()?.get(key.as_slice()).map_err(store_err)? else {
            continue;
        };
        let mut images: Vec<Before> = serde_json::from_slice(v.value()).map_err(json_err)?;
        drop(v);
        let mut touched = false;
        for image in &mut images {
            touched |= f(image)?;
        }
        if touched {
            changed.push((key, images));
        }
    }
    for (key, images) in changed {
        let bytes = serde_json::to_vec(&images).map_err(json_err)?;
        t.undo_log
            .open_mut()?
            .insert(key.as_slice(), bytes.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}
