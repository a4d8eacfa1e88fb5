//! A volume leaving a region (`admin volume-remove-region`): the state-machine side. The
//! region removed stops applying the volume's records; once every region has settled past
//! the change, it drops its copy in bounded steps (`leave_step`), and block GC reclaims the
//! blocks. Bringing a volume in is `backfill`'s.

use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::backfill::{entry_keys, forget_inode, json_err, key, rebase_refs};
use super::ctx::find_volume;
use super::merge::{self, StateTable};
use super::tables::{Tab, Tomb, WriteTables, store_err};
use super::types::*;

/// A volume leaving this region (removed from its regions): its copy here is dropped in
/// bounded steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaving {
    /// The volume's id.
    pub volume: u32,
    /// Its name.
    pub name: String,
    /// The stamp of the change that removed this region.
    pub since: Hlc,
    /// Inodes dropped so far.
    pub inodes: u64,
    /// Everything of it is gone.
    pub done: bool,
    /// Where the steps look next: the first inode number not yet looked at, in the live
    /// inodes and then (`in_tombs`) in the tombstones. Each step looks at a bounded part
    /// of the tables, so dropping a small volume from a region that holds a large one
    /// does not read all of it at every step.
    #[serde(default)]
    pub next: u64,
    #[serde(default)]
    pub in_tombs: bool,
}

fn leave_key(volume: u32) -> String {
    format!("leave/{volume}")
}

/// Forgets that `volume` left (it is brought in again).
pub(crate) fn forget(t: &mut WriteTables<'_>, volume: u32) -> Result<(), NsError> {
    t.region_state
        .open_mut()?
        .remove(leave_key(volume).as_str())
        .map_err(store_err)?;
    Ok(())
}

/// The leaving of `volume`, if it left this region.
pub fn leaving(t: &impl StateTable, volume: u32) -> Result<Option<Leaving>, NsError> {
    match merge::state(t, &leave_key(volume))? {
        Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(json_err)?)),
        None => Ok(None),
    }
}

/// Every volume that left or is leaving this region.
pub fn all_leaving(t: &impl StateTable) -> Result<Vec<Leaving>, NsError> {
    merge::state_records(t, "leave/", json_err)
}

fn put_leaving(t: &mut WriteTables<'_>, l: &Leaving) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(l).map_err(json_err)?;
    t.region_state
        .open_mut()?
        .insert(leave_key(l.volume).as_str(), bytes.as_slice())
        .map_err(store_err)?;
    Ok(())
}

/// After `record` applied: if it removed `own` from a volume held here, the volume starts
/// leaving.
pub(crate) fn note_removal(
    t: &mut WriteTables<'_>,
    own: RegionId,
    record: &Record,
) -> Result<(), NsError> {
    let Op::SetVolumeRegions { name, regions } = &record.op else {
        return Ok(());
    };
    if regions.contains(&own) || leaving(t.region_state.open()?, record.volume)?.is_some() {
        return Ok(());
    }
    if find_volume(t, record.volume)?.is_none() {
        return Ok(());
    }
    put_leaving(
        t,
        &Leaving {
            volume: record.volume,
            name: name.clone(),
            since: record.hlc,
            inodes: 0,
            done: false,
            next: 0,
            in_tombs: false,
        },
    )
}

/// Whether the copy of a leaving volume may be dropped now: once every region has
/// settled past the change that removed this one, no record of the volume from before it
/// can be undone again here (and none from after it applies here), so dropping its rows
/// commutes with everything still in the merged log.
pub fn may_drop(t: &impl StateTable, l: &Leaving) -> Result<bool, NsError> {
    Ok(merge::settled_bound(t)?.is_some_and(|b| b > l.since))
}

/// Most inodes one step of a leaving drops.
pub const LEAVE_STEP: usize = 2000;
/// Most rows (inodes or tombstones, of any volume) one step looks at.
pub const LEAVE_SCAN: usize = 8192;
/// Most extents and directory entries one step drops (a file or a directory of more is
/// dropped over several).
pub const LEAVE_ROWS: usize = 4096;

/// One step of dropping a volume that left this region: up to [`LEAVE_STEP`] of its
/// inodes (with every row keyed by them) among the next [`LEAVE_SCAN`] rows looked at, at
/// most [`LEAVE_ROWS`] extents and entries, and with the last its row. Outside any record;
/// the records still in the merged log get their images rebased, so undoing one of them
/// later brings nothing of the volume back. Returns whether it is all gone.
pub fn leave_step(t: &mut WriteTables<'_>, volume: u32) -> Result<bool, NsError> {
    let Some(mut l) = leaving(t.region_state.open()?, volume)? else {
        return Err(NsError::NotFound(format!("volume {volume} is not leaving")));
    };
    if l.done {
        return Ok(true);
    }
    if !may_drop(t.region_state.open()?, &l)? {
        return Err(NsError::Invalid(format!(
            "volume {volume} cannot be dropped before every region has settled past its removal"
        )));
    }
    let (gone, ended) = next_to_drop(t, &mut l, volume)?;
    let saved = t.undo.take();
    let mut delta = BTreeMap::new();
    let mut rows = LEAVE_ROWS;
    let mut dropped = Vec::with_capacity(gone.len());
    let mut partial = false;
    let mut result = Ok(());
    for ino in &gone {
        // A file of many extents, or a directory of many entries, goes over several
        // steps: what fits now, and the next step starts at it again (among the live
        // inodes or the tombstones, where it is).
        match drop_rows(t, *ino, &mut rows, &mut delta) {
            Ok(true) => {}
            Ok(false) => {
                partial = true;
                l.next = ino.0;
                match t.inodes().and_then(|x| super::tables::read_inode(x, *ino)) {
                    Ok(live) => l.in_tombs = live.is_none(),
                    Err(e) => result = Err(e),
                }
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        result = forget_inode(t, *ino, &mut delta);
        if result.is_err() {
            break;
        }
        dropped.push(*ino);
    }
    let gone = dropped;
    let ended = ended && !partial;
    let mut names = Vec::new();
    if result.is_ok() && gone.is_empty() && ended {
        for item in t.volumes()?.iter().map_err(store_err)? {
            let (k, v) = item.map_err(store_err)?;
            let vol: Volume = serde_json::from_slice(v.value()).map_err(json_err)?;
            if vol.id == volume {
                names.push(k.value().to_string());
            }
        }
        for name in &names {
            t.del_volume(name)?;
        }
    }
    t.undo = saved;
    result?;
    l.inodes += gone.len() as u64;
    let done = gone.is_empty() && ended;
    rebase_gone(t, &gone.into_iter().collect(), &names, &delta)?;
    if done {
        l.done = true;
        // Added again later, it is brought in again.
        t.region_state
            .open_mut()?
            .remove(key(volume).as_str())
            .map_err(store_err)?;
    }
    put_leaving(t, &l)?;
    Ok(done)
}

/// The next inodes of `volume` to drop, from where `l` says the last step stopped: up to
/// [`LEAVE_STEP`] of them among at most [`LEAVE_SCAN`] rows looked at, the live inodes
/// first, then the tombstones. Moves `l` on past the rows looked at; also returns whether
/// the tombstones were looked at to their end.
fn next_to_drop(
    t: &WriteTables<'_>,
    l: &mut Leaving,
    volume: u32,
) -> Result<(Vec<InodeId>, bool), NsError> {
    let mut gone = Vec::new();
    let mut looked = 0;
    if !l.in_tombs {
        let of_inode = |v: &[u8]| {
            serde_json::from_slice::<Inode>(v)
                .map(|n| n.attr.volume)
                .map_err(json_err)
        };
        if !look(t.inodes()?, l, volume, &mut looked, &mut gone, of_inode)? {
            return Ok((gone, false));
        }
        l.in_tombs = true;
        l.next = 0;
    }
    let of_tomb = |v: &[u8]| {
        serde_json::from_slice::<Tomb>(v)
            .map(|tomb| tomb.inode.attr.volume)
            .map_err(json_err)
    };
    let ended = look(t.tombs()?, l, volume, &mut looked, &mut gone, of_tomb)?;
    Ok((gone, ended))
}

/// Looks at the rows of `table` (inodes or tombstones, keyed by number) from `l.next` on
/// while the step's bounds last, moving `l.next` past each; the numbers of those of
/// `volume` (as `volume_of` reads it from a row) go to `gone`. Returns whether the table
/// was looked at to its end.
fn look(
    table: &impl ReadableTable<u64, &'static [u8]>,
    l: &mut Leaving,
    volume: u32,
    looked: &mut usize,
    gone: &mut Vec<InodeId>,
    volume_of: impl Fn(&[u8]) -> Result<u32, NsError>,
) -> Result<bool, NsError> {
    for item in table.range(l.next..).map_err(store_err)? {
        if gone.len() >= LEAVE_STEP || *looked >= LEAVE_SCAN {
            return Ok(false);
        }
        let (k, v) = item.map_err(store_err)?;
        *looked += 1;
        l.next = k.value().saturating_add(1);
        if volume_of(v.value())? == volume {
            gone.push(InodeId(k.value()));
        }
    }
    Ok(true)
}

/// Drops what fits in `budget` of `ino`'s extents (each block's count in `delta`), then
/// of its entries if it is a directory, taking them off `budget`. Returns whether none
/// are left.
fn drop_rows(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    budget: &mut usize,
    delta: &mut BTreeMap<Vec<u8>, i64>,
) -> Result<bool, NsError> {
    let extents = super::trim::extents_in(t, ino, (0, u64::MAX), budget.saturating_add(1))?;
    let now = extents.len().min(*budget);
    for e in &extents[..now] {
        t.remove_extent(ino, e)?;
        *delta.entry(e.block.as_bytes().to_vec()).or_default() -= 1;
    }
    *budget -= now;
    if now < extents.len() {
        return Ok(false);
    }
    let keys = entry_keys(t, ino, budget.saturating_add(1))?;
    let now = keys.len().min(*budget);
    for k in &keys[..now] {
        t.write(Tab::Dirents, k, None)?;
    }
    *budget -= now;
    Ok(now == keys.len())
}

/// Carries rows dropped outside any record into the undo images of the records still in
/// the merged log: the rows of `gone` inodes and the volume rows `names` read as absent,
/// block counts lower by `delta`.
fn rebase_gone(
    t: &mut WriteTables<'_>,
    gone: &std::collections::BTreeSet<InodeId>,
    names: &[String],
    delta: &BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    rebase_refs(t, delta)?;
    if gone.is_empty() && names.is_empty() {
        return Ok(());
    }
    let of_gone = |key: &[u8]| {
        key.get(..8)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| gone.contains(&InodeId(u64::from_be_bytes(b))))
    };
    merge::rewrite_undo(t, None, |super::tables::Before(tab, key, val)| {
        let drop = match tab {
            Tab::Inodes | Tab::Dirents | Tab::Extents | Tab::Xattrs | Tab::Tombs => of_gone(key),
            Tab::Volumes => names.iter().any(|n| n.as_bytes() == key.as_slice()),
            _ => false,
        };
        if drop && val.is_some() {
            *val = None;
            return Ok(true);
        }
        Ok(false)
    })
}
