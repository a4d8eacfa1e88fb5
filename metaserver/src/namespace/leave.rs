//! A volume leaving a region (`admin volume-remove-region`): the state-machine side. The
//! region removed stops applying the volume's records; once every region has settled past
//! the change, it drops its copy in bounded steps (`leave_step`), and block GC reclaims the
//! blocks. Bringing a volume in is `backfill`'s.

use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::backfill::{forget_inode, json_err, key, rebase_refs};
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

/// One step of dropping a volume that left this region: up to [`LEAVE_STEP`] of its
/// inodes (with every row keyed by them), and with the last its row. Outside any record;
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
    let mut gone = Vec::new();
    for item in t.inodes()?.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let inode: Inode = serde_json::from_slice(v.value()).map_err(json_err)?;
        if inode.attr.volume == volume {
            gone.push(InodeId(k.value()));
            if gone.len() >= LEAVE_STEP {
                break;
            }
        }
    }
    if gone.len() < LEAVE_STEP {
        for item in t.tombs()?.iter().map_err(store_err)? {
            let (k, v) = item.map_err(store_err)?;
            let tomb: Tomb = serde_json::from_slice(v.value()).map_err(json_err)?;
            if tomb.inode.attr.volume == volume {
                gone.push(InodeId(k.value()));
                if gone.len() >= LEAVE_STEP {
                    break;
                }
            }
        }
    }
    let saved = t.undo.take();
    let mut delta = BTreeMap::new();
    let mut result = Ok(());
    for ino in &gone {
        result = forget_inode(t, *ino, &mut delta);
        if result.is_err() {
            break;
        }
    }
    let mut names = Vec::new();
    if result.is_ok() && gone.is_empty() {
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
    let done = gone.is_empty();
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
