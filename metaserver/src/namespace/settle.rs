//! What leaves the merged log, and when: the stability watermark and the settled bounds,
//! for the whole region and for each volume; pruning the merged log below them; purging
//! the tombstones no region can bring back.
//!
//! Records older than the settled bound (every peer region has sent everything up to it,
//! and has written everything since knowing everything before it) can never be reordered
//! or named as a base version again, and leave the merged log.
//!
//! Volume by volume. The records of a volume are written and held only in the regions it
//! lives in (residency, checked by every region from its own state), so they settle once
//! those regions have: a region that is cut off holds back the volumes it shares, not the
//! others. A volume's bound is the settled bound over its regions alone:
//! - this region's horizon, and the frontier here of each of the volume's other regions:
//!   every record of the volume older than that is here, and none older will come;
//! - each of those regions' marks, region by region (`settled_by`), over the volume's
//!   regions: it held every record of them older than that while everything it had
//!   written was sent, so whatever it writes later knew them.
//!
//! A volume stays on the region-wide bound while a volume-level change of it (create,
//! delete, clone, quota, regions) is in the merged log: such a change meets everything, a
//! late record of another volume (a name taken concurrently) may reorder it, and undoing
//! and redoing it must find every record of the volume after it still in the log. It also
//! stays while it is being brought into this region or leaves it. Its tombstones are
//! purged below its bound only once its records below that bound have left the log, so
//! nothing older than a purge is undone and redone over it. Blocks are collected on the
//! region-wide marks still (`check::block_refs`): content addressing shares a block
//! between volumes, and a late record of any volume may name it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;

use super::footprint;
use super::merge::{
    Marks, StateTable, frontier, horizon, json_err, origins, rewrite_undo_of, set_state, stamp,
    state,
};
use super::tables::{Before, Tab, WriteTables, store_err};
use super::types::*;

/// How many old merged-log entries (and tombstones) one application may drop.
const PRUNE_BATCH: usize = 256;

/// How long a conflict stays listed (`admin conflicts`) once every region has settled
/// past it, in milliseconds of stamp time.
pub const CONFLICT_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

fn settled_key(origin: RegionId) -> String {
    format!("settled/{}", origin.0)
}

fn settled_by_key(origin: RegionId) -> String {
    format!("settled_by/{}", origin.0)
}

/// REGION_STATE key of the stamp of the last record of `volume` that left the merged log
/// on the volume's own bound.
fn pruned_key(volume: u32) -> String {
    format!("pruned/{volume}")
}

/// The settled mark `origin` last sent (directly or relayed).
pub fn settled(t: &impl StateTable, origin: RegionId) -> Result<Option<Hlc>, NsError> {
    stamp(t, &settled_key(origin))
}

/// The marks `origin` last sent region by region (directly or relayed; empty from an
/// earlier version).
pub fn settled_by(t: &impl StateTable, origin: RegionId) -> Result<Vec<(RegionId, Hlc)>, NsError> {
    match state(t, &settled_by_key(origin))? {
        Some(b) => serde_json::from_slice(&b).map_err(json_err),
        None => Ok(Vec::new()),
    }
}

/// What this region sends, region by region, with a caught-up answer: its own horizon,
/// and the frontier it holds of every region it hears.
pub fn stable_by(t: &impl StateTable, own: RegionId) -> Result<Vec<(RegionId, Hlc)>, NsError> {
    let mut out = Vec::new();
    if let Some(h) = horizon(t)? {
        out.push((own, h));
    }
    for p in origins(t)? {
        if let Some(f) = frontier(t, p)? {
            out.push((p, f));
        }
    }
    Ok(out)
}

/// Keeps the settled marks `origin` sent: each only moves forward, and only regions this
/// one hears (or itself) are kept, so a hostile list stays bounded.
pub(crate) fn note_settled(
    t: &mut WriteTables<'_>,
    own: RegionId,
    origin: RegionId,
    marks: &Marks,
) -> Result<(), NsError> {
    if let Some(f) = marks.settled
        && settled(t.region_state.open()?, origin)?.is_none_or(|old| f > old)
    {
        set_state(t, &settled_key(origin), &f.to_key())?;
    }
    if marks.settled_by.is_empty() {
        return Ok(());
    }
    let known = origins(t.region_state.open()?)?;
    let mut by: BTreeMap<RegionId, Hlc> = settled_by(t.region_state.open()?, origin)?
        .into_iter()
        .collect();
    let mut moved = false;
    for (r, h) in &marks.settled_by {
        if *r != own && !known.contains(r) {
            continue;
        }
        let e = by.entry(*r).or_insert_with(|| {
            moved = true;
            *h
        });
        if *h > *e {
            *e = *h;
            moved = true;
        }
    }
    if moved {
        let list: Vec<(RegionId, Hlc)> = by.into_iter().collect();
        let bytes = serde_json::to_vec(&list).map_err(json_err)?;
        set_state(t, &settled_by_key(origin), &bytes)?;
    }
    Ok(())
}

/// The stability watermark: every record of every region older than it is here, and no
/// remote record will be ordered before it any more (with no peers, the horizon; none
/// until every peer has sent a frontier).
pub fn stable(t: &impl StateTable) -> Result<Option<Hlc>, NsError> {
    stable_without(t, None)
}

fn stable_without(t: &impl StateTable, skip: Option<RegionId>) -> Result<Option<Hlc>, NsError> {
    let mut stable = horizon(t)?;
    for p in origins(t)?.into_iter().filter(|p| Some(*p) != skip) {
        match frontier(t, p)? {
            Some(f) => stable = stable.map(|s| s.min(f)),
            None => return Ok(None),
        }
    }
    Ok(stable)
}

/// The settled bound: below the stability watermark, and below every peer's settled mark,
/// so every record written without knowledge of a record older than this is here. Nothing
/// older is reordered, named as the base of a change, or brings back a removed inode.
pub fn settled_bound(t: &impl StateTable) -> Result<Option<Hlc>, NsError> {
    settled_bound_without(t, None)
}

/// The settled bound as far as every peer but `skip` is concerned: what a region that
/// cannot have written anything that matters (one being brought into a volume) does not
/// hold back.
pub fn settled_bound_without(
    t: &impl StateTable,
    skip: Option<RegionId>,
) -> Result<Option<Hlc>, NsError> {
    let Some(mut bound) = stable_without(t, skip)? else {
        return Ok(None);
    };
    for p in origins(t)?.into_iter().filter(|p| Some(*p) != skip) {
        match settled(t, p)? {
            Some(s) => bound = bound.min(s),
            None => return Ok(None),
        }
    }
    // Records kept apart for an image are merged later, where they meet what is here.
    if let Some(low) = stamp(t, super::backfill::PARKED_LOW)? {
        bound = bound.min(low);
    }
    Ok(Some(bound))
}

/// The settled bound of records that only `regions` write and hold (this region `own`
/// among them): as [`settled_bound`], over those regions alone. None while one of them is
/// a region this one does not hear.
pub fn settled_bound_in(
    t: &impl StateTable,
    own: RegionId,
    regions: &[RegionId],
) -> Result<Option<Hlc>, NsError> {
    let known = origins(t)?;
    let mut members: Vec<RegionId> = regions.iter().copied().filter(|r| *r != own).collect();
    members.sort();
    members.dedup();
    // A region of the set this one does not hear (yet) may still send records of it,
    // through a relay found later: nothing settles on the set's own marks meanwhile.
    if members.iter().any(|r| !known.contains(r)) {
        return Ok(None);
    }
    let Some(mut bound) = horizon(t)? else {
        return Ok(None);
    };
    for r in &members {
        let Some(f) = frontier(t, *r)? else {
            return Ok(None);
        };
        bound = bound.min(f);
        let by = settled_by(t, *r)?;
        if by.is_empty() {
            // An origin of an earlier version: its one mark covers every region.
            let Some(s) = settled(t, *r)? else {
                return Ok(None);
            };
            bound = bound.min(s);
            continue;
        }
        for q in members.iter().chain([&own]) {
            let Some((_, h)) = by.iter().find(|(x, _)| x == q) else {
                return Ok(None);
            };
            bound = bound.min(*h);
        }
    }
    Ok(Some(bound))
}

/// The stamp up to which `volume`'s records left the merged log on its own bound (none:
/// only on the region-wide one). An image of the volume is taken after it.
pub fn pruned(t: &impl StateTable, volume: u32) -> Result<Option<Hlc>, NsError> {
    stamp(t, &pruned_key(volume))
}

/// Drops merged-log entries older than the settled bound (with no peers, everything), and
/// conflicts a retention period older.
pub(crate) fn prune_stable(t: &mut WriteTables<'_>) -> Result<(), NsError> {
    let Some(bound) = settled_bound(t.region_state.open()?)? else {
        return Ok(());
    };
    let end = bound.to_key();
    for k in keys_below(t.oplog.open()?, &[], &end)? {
        drop_entry(t, &k)?;
    }
    // Versions kept for records that left the log otherwise.
    for k in keys_below(t.bases.open()?, &[], &end)? {
        t.bases
            .open_mut()?
            .remove(k.as_slice())
            .map_err(store_err)?;
    }
    // Conflicts stay listed for a while after they can no longer change.
    let forget = Hlc {
        wall_ms: bound.wall_ms.saturating_sub(CONFLICT_RETENTION_MS),
        counter: 0,
        region: RegionId(0),
    };
    t.drop_conflicts_below(&forget.to_key(), PRUNE_BATCH)?;
    Ok(())
}

/// Takes the record keyed `key` out of the merged log for good (it stays applied).
fn drop_entry(t: &mut WriteTables<'_>, key: &[u8]) -> Result<(), NsError> {
    t.oplog.open_mut()?.remove(key).map_err(store_err)?;
    t.undo_log.open_mut()?.remove(key).map_err(store_err)?;
    footprint::forget(t, key)?;
    // The versions the record's changes applied to.
    let mut end = key.to_vec();
    end.extend_from_slice(&[0xff; 8]);
    let mut bases = Vec::new();
    for item in t
        .bases
        .open()?
        .range(key..=end.as_slice())
        .map_err(store_err)?
    {
        bases.push(item.map_err(store_err)?.0.value().to_vec());
    }
    for b in bases {
        t.bases
            .open_mut()?
            .remove(b.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}

/// The first keys (at most a batch) of a table keyed by `prefix` ++ stamp, below
/// `prefix` ++ `end`, without the prefix.
fn keys_below(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    end: &[u8],
) -> Result<Vec<Vec<u8>>, NsError> {
    let mut out = Vec::new();
    let end = [prefix, end].concat();
    for item in t
        .range(prefix..end.as_slice())
        .map_err(store_err)?
        .take(PRUNE_BATCH)
    {
        out.push(item.map_err(store_err)?.0.value()[prefix.len()..].to_vec());
    }
    Ok(out)
}

/// After a batch: the records of each volume that settled on its own bound leave the
/// merged log, and the tombstones of each volume below its bound (or the region-wide
/// one) are purged.
pub(crate) fn settle_volumes(t: &mut WriteTables<'_>, own: RegionId) -> Result<(), NsError> {
    let global = settled_bound(t.region_state.open()?)?;
    let mut regions: HashMap<u32, Vec<RegionId>> = HashMap::new();
    for item in t.volumes()?.iter().map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let vol: Volume = serde_json::from_slice(v.value()).map_err(json_err)?;
        if vol.deleted.is_none() {
            regions.insert(vol.id, vol.policy.regions);
        }
    }
    let mut bounds: HashMap<u32, Option<Hlc>> = HashMap::new();
    let mut budget = PRUNE_BATCH;
    for volume in footprint::volumes_listed(t)? {
        if budget == 0 {
            break;
        }
        let Some(bound) = volume_bound(t, own, volume, &regions, global, &mut bounds)? else {
            continue;
        };
        let keys = footprint::volume_keys_below(t, volume, bound, budget)?;
        budget -= keys.len();
        if let Some(last) = keys.last() {
            set_state(t, &pruned_key(volume), last)?;
        }
        for k in keys {
            drop_entry(t, &k)?;
        }
    }
    let mut left = PRUNE_BATCH;
    // Extents the pass drops itself; the rest go to the steps (`trim::purge_extents`).
    let mut inline = super::trim::INLINE;
    for volume in tomb_volumes(t)? {
        if left == 0 {
            break;
        }
        // Below the volume's bound, but not past a record of it still in the log.
        let own_bound = match volume_bound(t, own, volume, &regions, global, &mut bounds)? {
            Some(b) => match footprint::first_of_volume(t, volume)? {
                Some(first) => Some(b.min(first)),
                None => Some(b),
            },
            None => None,
        };
        let Some(bound) = global.max(own_bound) else {
            continue;
        };
        let prefix = volume.to_be_bytes();
        let end = [&prefix[..], &bound.to_key()].concat();
        let mut gone = Vec::new();
        for item in t
            .tomb_times()?
            .range(&prefix[..]..end.as_slice())
            .map_err(store_err)?
            .take(left)
        {
            let (k, _) = item.map_err(store_err)?;
            let ino = k.value()[4 + Hlc::KEY_LEN..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| NsError::Store("damaged tombstone index key".into()))?;
            gone.push(InodeId(ino));
        }
        left -= gone.len();
        if !gone.is_empty() {
            purge_tombs(t, volume, bound, gone, &mut inline)?;
        }
    }
    Ok(())
}

/// The bound `volume`'s records and tombstones settle on, when it is past the region-wide
/// one (`global`) and the volume may settle on its own (see the module doc).
fn volume_bound(
    t: &WriteTables<'_>,
    own: RegionId,
    volume: u32,
    regions: &HashMap<u32, Vec<RegionId>>,
    global: Option<Hlc>,
    memo: &mut HashMap<u32, Option<Hlc>>,
) -> Result<Option<Hlc>, NsError> {
    if let Some(b) = memo.get(&volume) {
        return Ok(*b);
    }
    let bound = match regions.get(&volume) {
        None => None,
        Some(_) if footprint::pinned(t, volume)? => None,
        Some(_)
            if super::backfill::get(t.region_state.open()?, volume)?
                .is_some_and(|b| !b.installed)
                || super::leave::leaving(t.region_state.open()?, volume)?.is_some() =>
        {
            None
        }
        Some(rs) => settled_bound_in(t.region_state.open()?, own, rs)?
            .filter(|b| global.is_none_or(|g| *b > g)),
    };
    memo.insert(volume, bound);
    Ok(bound)
}

/// The volumes that have tombstones, each once.
fn tomb_volumes(t: &WriteTables<'_>) -> Result<Vec<u32>, NsError> {
    super::tables::distinct_u32s(t.tomb_times()?, &[])
}

/// Removes for good the tombstones `gone`, which no region can still bring back, and drops
/// their content's block references so garbage collection can reclaim the blocks.
///
/// A tombstone stamped `at` may go when every record written without knowledge of its
/// removal has been applied here: this region holds every record (of the volume) older
/// than its stability watermark, and each peer (of the volume's regions) has said that it
/// held every record older than a stamp past `at` while everything it had written so far
/// was already pulled here. Any later record of any region comes after the removal, where
/// the inode no longer exists. Every region reaches the same conclusion from the same
/// records, so they purge the same tombstones, each at its own pace. `from` is the bound
/// they were purged below.
fn purge_tombs(
    t: &mut WriteTables<'_>,
    volume: u32,
    from: Hlc,
    gone: Vec<InodeId>,
    inline: &mut usize,
) -> Result<(), NsError> {
    // Outside any record: nothing to undo, this never needs reordering.
    let saved = t.undo.take();
    let result = purge_each(t, volume, &gone, inline);
    t.undo = saved;
    let purged = result?;
    rebase_undo(t, from, &gone.into_iter().collect(), &purged)
}

/// What a purge did to the tombstones' content.
#[derive(Default)]
struct Purged {
    /// Block references dropped, by block.
    dropped: BTreeMap<Vec<u8>, u64>,
    /// Files whose extents, and the references they hold, are left to the steps (a file
    /// of many: `trim::purge_extents`).
    stepped: BTreeSet<InodeId>,
}

/// Purges each tombstone of `gone`, of `volume`, dropping at most `inline` extents here.
fn purge_each(
    t: &mut WriteTables<'_>,
    volume: u32,
    gone: &[InodeId],
    inline: &mut usize,
) -> Result<Purged, NsError> {
    let mut out = Purged::default();
    for &ino in gone {
        match super::trim::purge_extents(t, ino, volume, inline)? {
            Some(extents) => {
                for e in extents {
                    *out.dropped.entry(e.block.as_bytes().to_vec()).or_default() += 1;
                }
            }
            None => {
                out.stepped.insert(ino);
            }
        }
        t.del_xattrs(ino)?;
        if let Some(tomb) = t.tomb(ino)?
            && tomb.inode.parent == ino
        {
            // The root of a deleted volume: the volume goes for good with it.
            let key = super::tables::deleted_volume_key(tomb.inode.attr.volume);
            t.write(Tab::Volumes, key.as_bytes(), None)?;
        }
        t.del_tomb(ino)?;
    }
    Ok(out)
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
/// Only the images of records from `from` on are rebased: those of the purged inodes'
/// volume older than it have left the log, other volumes' records have no image of them,
/// and records older than a removal were taken before some of the references the purge
/// dropped existed. The footprint index names the records that can hold such images:
/// those that touched a purged inode, and those that wrote whole counts (an older
/// version's images, which meet everything). Counts written by amount need nothing.
///
/// A tombstone's extents are exactly the file's at its removal: a later record that
/// changes the file brings it back (and the tombstone goes), so every image from `from`
/// on counted them. The extents the purge left to the steps are still there, and so are
/// their references: their images stay as they are.
fn rebase_undo(
    t: &mut WriteTables<'_>,
    from: Hlc,
    gone: &BTreeSet<InodeId>,
    Purged { dropped, stepped }: &Purged,
) -> Result<(), NsError> {
    let keys = footprint::touching(t, gone.iter().map(|i| i.0), from)?;
    let of = |set: &BTreeSet<InodeId>, key: &[u8]| {
        key.get(..8)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| set.contains(&InodeId(u64::from_be_bytes(b))))
    };
    rewrite_undo_of(t, keys, |Before(tab, key, val)| match tab {
        Tab::Extents if of(stepped, key) => Ok(false),
        Tab::Extents | Tab::Xattrs | Tab::Tombs if of(gone, key) && val.is_some() => {
            *val = None;
            Ok(true)
        }
        Tab::Refs => {
            let (Some(less), Some(bytes)) = (dropped.get(key.as_slice()), val.as_ref()) else {
                return Ok(false);
            };
            let count = bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| NsError::Store("damaged undo image".into()))?;
            let left = count.saturating_sub(*less);
            *val = (left > 0).then(|| left.to_be_bytes().to_vec());
            Ok(true)
        }
        _ => Ok(false),
    })
}
