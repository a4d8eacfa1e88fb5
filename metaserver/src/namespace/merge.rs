//! Merging the operations of several regions into one namespace.
//!
//! A region's namespace is the result of applying every record it knows, local and remote,
//! in HLC order. Local records arrive in order and apply at the end. A remote record older
//! than records already applied undoes those (each applied record keeps the values it
//! overwrote), applies, and redoes them; replays resolve conflicts the same way on every
//! region (see `apply`), so regions that hold the same records hold the same namespace.
//!
//! Records older than the stability watermark (every peer region has sent everything up to
//! it) can never be reordered again, and leave the merged log.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::apply::{Ctx, apply_op, record_conflict};
use super::tables::{Before, Tab, WriteTables, store_err};
use super::types::*;

/// REGION_STATE key of the newest applied stamp.
pub const HEAD: &str = "head";
/// REGION_STATE key of the stamp every later local record is stamped after.
pub const PROMISED: &str = "promised";
/// REGION_STATE key of the peer regions (JSON).
pub const PEERS: &str = "peers";

/// REGION_STATE key of the last change-log sequence of `origin` applied here.
pub fn watermark_key(origin: RegionId) -> String {
    format!("wm/{}", origin.0)
}

/// REGION_STATE key of the frontier `origin` last told.
pub fn frontier_key(origin: RegionId) -> String {
    format!("frontier/{}", origin.0)
}

fn settled_key(origin: RegionId) -> String {
    format!("settled/{}", origin.0)
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
}

/// What applying a remote batch did.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct MergeOutcome {
    /// New records applied.
    pub applied: u64,
    /// Already applied records redone after them.
    pub redone: u64,
    /// The origin's change-log sequence applied up to.
    pub watermark: u64,
}

fn json_err(e: serde_json::Error) -> NsError {
    NsError::Store(format!("damaged merge record: {e}"))
}

fn state(t: &WriteTables<'_>, key: &str) -> Result<Option<Vec<u8>>, NsError> {
    Ok(t.region_state
        .get(key)
        .map_err(store_err)?
        .map(|v| v.value().to_vec()))
}

fn set_state(t: &mut WriteTables<'_>, key: &str, value: &[u8]) -> Result<(), NsError> {
    t.region_state.insert(key, value).map_err(store_err)?;
    Ok(())
}

/// The newest stamp applied.
pub fn head(t: &WriteTables<'_>) -> Result<Option<Hlc>, NsError> {
    Ok(state(t, HEAD)?.and_then(|b| Hlc::from_key(&b)))
}

/// The newest of the head and the promise: no later local record is stamped before it.
pub fn horizon(t: &WriteTables<'_>) -> Result<Option<Hlc>, NsError> {
    let promised = state(t, PROMISED)?.and_then(|b| Hlc::from_key(&b));
    Ok(head(t)?.max(promised))
}

/// Promises that every later local record is stamped after `hlc` (never moves back).
pub fn promise(t: &mut WriteTables<'_>, hlc: Hlc) -> Result<(), NsError> {
    if horizon(t)?.is_none_or(|h| hlc > h) {
        set_state(t, PROMISED, &hlc.to_key())?;
    }
    Ok(())
}

/// The last change-log sequence of `origin` applied here (0: none).
pub fn watermark(t: &WriteTables<'_>, origin: RegionId) -> Result<u64, NsError> {
    Ok(state(t, &watermark_key(origin))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn frontier(t: &WriteTables<'_>, origin: RegionId) -> Result<Option<Hlc>, NsError> {
    Ok(state(t, &frontier_key(origin))?.and_then(|b| Hlc::from_key(&b)))
}

/// The regions this one exchanges records with.
pub fn peers(t: &WriteTables<'_>) -> Result<Vec<RegionId>, NsError> {
    match state(t, PEERS)? {
        Some(b) => serde_json::from_slice(&b).map_err(json_err),
        None => Ok(Vec::new()),
    }
}

/// Sets the regions this one exchanges records with (from its configuration).
pub fn set_peers(t: &mut WriteTables<'_>, peers: &[RegionId]) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(peers).map_err(json_err)?;
    set_state(t, PEERS, &bytes)
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
        .insert(key.as_slice(), bytes.as_slice())
        .map_err(store_err)?;
    let undo = serde_json::to_vec(images).map_err(json_err)?;
    t.undo_log
        .insert(key.as_slice(), undo.as_slice())
        .map_err(store_err)?;
    if head(t)?.is_none_or(|h| record.hlc > h) {
        set_state(t, HEAD, &key)?;
    }
    prune_stable(t)
}

/// Replays one record: conflicts are resolved, and a record that cannot apply any more
/// (its target is gone for good, a move would make a cycle) is skipped and recorded.
fn replay(t: &mut WriteTables<'_>, record: &Record) -> Result<(), NsError> {
    let ctx = Ctx::new(record.hlc, record.now, Some(&record.effects), record.volume);
    t.undo = Some(Vec::new());
    let outcome = apply_op(t, &record.op, &ctx);
    let mut images = t.undo.take().unwrap_or_default();
    match outcome {
        Err(e @ NsError::Store(_)) => return Err(e),
        Err(e) => {
            t.restore(&images)?;
            t.undo = Some(Vec::new());
            // Losing an atime update or a compaction is no conflict anybody cares about.
            if !matches!(record.op, Op::Accessed { .. } | Op::Compact { .. }) {
                record_conflict(
                    t,
                    &ctx,
                    "skip",
                    None,
                    format!(
                        "{} from region {} not applied: {e}",
                        op_name(&record.op),
                        record.hlc.region.0
                    ),
                )?;
            }
            images = t.undo.take().unwrap_or_default();
        }
        Ok(_) => {}
    }
    log_applied(t, record, &images)
}

/// A short name of an operation, for conflict records.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::CreateVolume { .. } => "create volume",
        Op::DeleteVolume { .. } => "delete volume",
        Op::Mknod { .. } => "create",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::SetAttr { .. } => "setattr",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::CommitExtents { .. } => "write",
        Op::Accessed { .. } => "access",
        Op::Compact { .. } => "compaction",
    }
}

/// Applies records pulled from another region: each exactly once (the per-origin
/// watermark advances in the same transaction), merged into HLC order. A record of a
/// volume that does not live in `own` is refused and nothing changes.
pub fn apply_remote(
    t: &mut WriteTables<'_>,
    own: RegionId,
    batch: &RemoteBatch,
) -> Result<MergeOutcome, NsError> {
    if batch.origin == own {
        return Err(NsError::Invalid(format!(
            "records of region {} sent to itself",
            own.0
        )));
    }
    let wm = watermark(t, batch.origin)?;
    let mut fresh = Vec::new();
    let mut last_seq = wm;
    for (seq, record) in &batch.records {
        if record.hlc.region != batch.origin {
            return Err(NsError::Invalid(format!(
                "record {} in a batch from region {}",
                record.hlc, batch.origin.0
            )));
        }
        if !record.allowed_in(own) {
            return Err(NsError::Perm(format!(
                "volume {} does not live in region {} (data residency): record {} refused",
                record.volume, own.0, record.hlc
            )));
        }
        if *seq > last_seq {
            last_seq = *seq;
            if t.oplog
                .get(record.hlc.to_key().as_slice())
                .map_err(store_err)?
                .is_none()
            {
                fresh.push(record.clone());
            }
        }
    }
    let mut outcome = MergeOutcome {
        watermark: last_seq,
        ..MergeOutcome::default()
    };
    if let Some(low) = fresh.iter().map(|r| r.hlc).min() {
        // Undo every applied record newer than the oldest new one, newest first.
        let from = low.to_key();
        let mut newer = Vec::new();
        for item in t.oplog.range(from.as_slice()..).map_err(store_err)?.rev() {
            let (k, v) = item.map_err(store_err)?;
            newer.push((k.value().to_vec(), v.value().to_vec()));
        }
        let mut redo = Vec::with_capacity(newer.len());
        for (key, bytes) in newer {
            let images: Vec<Before> = match t.undo_log.get(key.as_slice()).map_err(store_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(json_err)?,
                None => {
                    return Err(NsError::Store(format!(
                        "no undo record for {:?}",
                        Hlc::from_key(&key)
                    )));
                }
            };
            t.restore(&images)?;
            t.undo_log.remove(key.as_slice()).map_err(store_err)?;
            t.oplog.remove(key.as_slice()).map_err(store_err)?;
            redo.push(serde_json::from_slice::<Record>(&bytes).map_err(json_err)?);
        }
        outcome.redone = redo.len() as u64;
        outcome.applied = fresh.len() as u64;
        // The head goes back to the newest record kept, and forward again as records apply.
        let before_low = t
            .oplog
            .range(..from.as_slice())
            .map_err(store_err)?
            .next_back()
            .map(|item| item.map(|(k, _)| k.value().to_vec()))
            .transpose()
            .map_err(store_err)?;
        match before_low {
            Some(k) => set_state(t, HEAD, &k)?,
            None => {
                t.region_state.remove(HEAD).map_err(store_err)?;
            }
        }
        let mut all = redo;
        all.extend(fresh);
        all.sort_by_key(|r| r.hlc);
        for record in &all {
            replay(t, record)?;
        }
    }
    set_state(t, &watermark_key(batch.origin), &last_seq.to_be_bytes())?;
    if let Some(f) = batch.frontier
        && frontier(t, batch.origin)?.is_none_or(|old| f > old)
    {
        set_state(t, &frontier_key(batch.origin), &f.to_key())?;
    }
    if let Some(f) = batch.settled
        && settled(t, batch.origin)?.is_none_or(|old| f > old)
    {
        set_state(t, &settled_key(batch.origin), &f.to_key())?;
    }
    prune_stable(t)?;
    purge_tombs(t)?;
    Ok(outcome)
}

/// How many old merged-log entries one application may drop.
const PRUNE_BATCH: usize = 256;

fn settled(t: &WriteTables<'_>, origin: RegionId) -> Result<Option<Hlc>, NsError> {
    Ok(state(t, &settled_key(origin))?.and_then(|b| Hlc::from_key(&b)))
}

/// The stability watermark: every record of every region older than it is here, and no
/// remote record will be ordered before it any more (with no peers, the head).
pub fn stable(t: &WriteTables<'_>) -> Result<Option<Hlc>, NsError> {
    let mut stable = horizon(t)?;
    for p in peers(t)? {
        match frontier(t, p)? {
            Some(f) => stable = stable.map(|s| s.min(f)),
            None => return Ok(None),
        }
    }
    Ok(stable)
}

/// Drops merged-log entries no remote record can be ordered before any more: older than
/// every peer's frontier (with no peers, everything).
fn prune_stable(t: &mut WriteTables<'_>) -> Result<(), NsError> {
    let Some(stable) = stable(t)? else {
        return Ok(());
    };
    let end = stable.to_key();
    let mut old = Vec::new();
    for item in t
        .oplog
        .range(..end.as_slice())
        .map_err(store_err)?
        .take(PRUNE_BATCH)
    {
        old.push(item.map_err(store_err)?.0.value().to_vec());
    }
    for k in old {
        t.oplog.remove(k.as_slice()).map_err(store_err)?;
        t.undo_log.remove(k.as_slice()).map_err(store_err)?;
    }
    Ok(())
}

/// Removes for good the tombstones no region can still bring back, and drops their
/// content's block references so garbage collection can reclaim the blocks.
///
/// A tombstone stamped `at` may go when every record written without knowledge of its
/// removal has been applied here: this region holds every record older than its stability
/// watermark, and each peer has said (`settled`) that it held every record older than a
/// stamp past `at` while everything it had written so far was already pulled here. Any
/// later record of any region comes after the removal, where the inode no longer exists.
/// Every region reaches the same conclusion from the same records, so they purge the same
/// tombstones, each at its own pace.
fn purge_tombs(t: &mut WriteTables<'_>) -> Result<(), NsError> {
    let Some(mut bound) = stable(t)? else {
        return Ok(());
    };
    for p in peers(t)? {
        match settled(t, p)? {
            Some(s) => bound = bound.min(s),
            None => return Ok(()),
        }
    }
    // Oldest first, and only those older than the bound: the index keeps this from
    // reading the tombstones that must stay (many, after a long cut between regions).
    let mut gone = Vec::new();
    let below = bound.to_key();
    for item in t
        .tomb_times
        .range(..below.as_slice())
        .map_err(store_err)?
        .take(PRUNE_BATCH)
    {
        let (k, _) = item.map_err(store_err)?;
        let ino = k.value()[Hlc::KEY_LEN..]
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| NsError::Store("damaged tombstone index key".into()))?;
        gone.push(InodeId(ino));
    }
    if gone.is_empty() {
        return Ok(());
    }
    // Outside any record: nothing to undo, this never needs reordering.
    let saved = t.undo.take();
    let mut dropped: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for &ino in &gone {
        for e in super::tables::read_extents(&t.extents, ino, 0, u64::MAX)? {
            t.remove_extent(ino, &e)?;
            *dropped.entry(e.block.as_bytes().to_vec()).or_default() += 1;
        }
        t.del_xattrs(ino)?;
        t.del_tomb(ino)?;
    }
    t.undo = saved;
    rebase_undo(t, bound, &gone.into_iter().collect(), &dropped)
}

/// Carries a purge into the undo images of the records still in the merged log. Those
/// records are newer than the purged tombstones and may yet be undone and redone around a
/// late record; their images were taken before the purge, and restoring one as it stands
/// would bring back a purged tombstone's rows or the block references it held (a count
/// one too high, and a block never collected). Rebased, an image holds what that key was
/// before its record with the purge already done: the purged inodes' rows absent, each
/// block's count lower by the references the purge dropped. The purge commutes with those
/// records (they come after the removal, where the inode no longer exists, and counts
/// add), so undoing and redoing them over it gives what applying them after it would.
///
/// Only the images of records from `bound` on are rebased: older ones can never be undone
/// (every region has sent everything older), and those older than a removal were taken
/// before some of the references the purge dropped existed.
///
/// A tombstone's extents are exactly the file's at its removal: a later record that
/// changes the file brings it back (and the tombstone goes), so every image from `bound`
/// on counted them.
fn rebase_undo(
    t: &mut WriteTables<'_>,
    bound: Hlc,
    gone: &BTreeSet<InodeId>,
    dropped: &BTreeMap<Vec<u8>, u64>,
) -> Result<(), NsError> {
    let of_gone = |key: &[u8]| {
        key.get(..8)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| gone.contains(&InodeId(u64::from_be_bytes(b))))
    };
    let mut changed = Vec::new();
    let from = bound.to_key();
    for item in t.undo_log.range(from.as_slice()..).map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let mut images: Vec<Before> = serde_json::from_slice(v.value()).map_err(json_err)?;
        let mut touched = false;
        for Before(tab, key, val) in &mut images {
            match tab {
                Tab::Extents | Tab::Xattrs | Tab::Tombs if of_gone(key) && val.is_some() => {
                    *val = None;
                    touched = true;
                }
                Tab::Refs => {
                    let (Some(less), Some(bytes)) = (dropped.get(key.as_slice()), val.as_ref())
                    else {
                        continue;
                    };
                    let count = bytes
                        .as_slice()
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| NsError::Store("damaged undo image".into()))?;
                    let left = count.saturating_sub(*less);
                    *val = (left > 0).then(|| left.to_be_bytes().to_vec());
                    touched = true;
                }
                _ => {}
            }
        }
        if touched {
            changed.push((k.value().to_vec(), images));
        }
    }
    for (key, images) in changed {
        let bytes = serde_json::to_vec(&images).map_err(json_err)?;
        t.undo_log
            .insert(key.as_slice(), bytes.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}
