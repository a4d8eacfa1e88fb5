//! An unfinished copy removed in steps.
//!
//! A copy whose maker went away (its leader changed, its process restarted: ADR 0014) is
//! removed with what it has so far. Removed in one entry, as it was, an unfinished copy
//! of a large volume (a snapshot of 1,000,000 files stopped near its end) held every
//! client's changes in the region for as long as its rows took to go. Its tree need not
//! be whole yet (a directory's entries may name inodes of a later batch, a file's count
//! a link not yet written), so the deleted snapshot's steps (`tree_drop.rs`), which walk
//! a whole tree, cannot take it. But everything a copy writes is its root or an inode
//! numbered in the range it reserved (`Copying::base` and `inodes`; `copy::rows` refuses
//! any other), and inode numbers are never given out twice: the removal goes by that
//! range.
//!
//! The removal's entry (`Request::CopyRemove`) takes the volume's row away (its name is
//! free at once, for the copy to be made again) and up to [`trim::INLINE`] rows; what is
//! left stays behind a mark (`copydrop/<root>` in the region's state, with the range),
//! and the leader removes up to [`trim::STEP`] rows an entry (`Request::CopyRemoveStep`,
//! proposed by `crate::trim::trim_loop`): inode by inode in number order, each with its
//! entries, extended attributes and extents (one reference fewer to its block each),
//! the root with the last. fsck counts the range's rows as the mark's and does not check
//! their tree ([`unchecked`]), as it does not check a copy still being made.
//!
//! Neither request is a record: a copy lives in the region that made it, and no record
//! of another region touches it. Both are new requests, not a new way of applying
//! `CopyAbort` (which a log written before them still replays at once): a member of an
//! earlier version cannot read them, rather than remove the copy otherwise.

use std::ops::Range;

use meridian_proto::InodeId;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::merge::StateTable;
use super::tables::{Tab, WriteTables, json_err, store_err};
use super::trim;
use super::types::*;

/// An unfinished copy whose rows are being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyDrop {
    /// The copy's root (removed with the last step).
    pub root: InodeId,
    /// The volume it was.
    pub volume: u32,
    /// The first inode number (region-local) it reserved.
    pub base: u64,
    /// How many it reserved.
    pub inodes: u64,
}

impl CopyDrop {
    /// The copy `vol` (being made) as a removal.
    pub fn of(vol: &Volume) -> Option<Self> {
        let c = vol.copying.as_ref()?;
        Some(CopyDrop {
            root: vol.root,
            volume: vol.id,
            base: c.base,
            inodes: c.inodes,
        })
    }

    /// Its inodes' numbers, but the root's.
    pub fn numbers(&self) -> Range<u64> {
        copy_range(self.root, self.base, self.inodes)
    }
}

/// The numbers of a copy's inodes but its root's: `inodes` from region-local `base`, in
/// the root's region (`copy::owns`).
pub fn copy_range(root: InodeId, base: u64, inodes: u64) -> Range<u64> {
    match InodeId::new(root.region(), base) {
        Ok(lo) if inodes > 0 => lo.0..lo.0.saturating_add(inodes),
        _ => 0..0,
    }
}

fn key(root: InodeId) -> String {
    format!("copydrop/{:020}", root.0)
}

/// Removes unfinished copy `vol`: its row now, and its rows up to [`trim::INLINE`] of
/// them here; the rest in steps after a mark ([`step`]).
pub(crate) fn remove(t: &mut WriteTables<'_>, vol: &Volume) -> Result<Reply, NsError> {
    let Some(drop) = CopyDrop::of(vol) else {
        return Err(NsError::Invalid(format!(
            "volume {} is not being copied",
            vol.name
        )));
    };
    t.del_volume(&vol.name)?;
    if !remove_rows(t, &drop, trim::INLINE)? {
        let mark = serde_json::to_vec(&drop).map_err(json_err)?;
        t.write(Tab::Trims, key(drop.root).as_bytes(), Some(&mark))?;
    }
    Ok(Reply::Done)
}

/// One step of the removal of the copy whose root is `root`: up to [`trim::STEP`] rows.
/// Returns whether it is done (the mark gone with the last step; also when there is no
/// mark, as for a step proposed twice).
pub fn step(t: &mut WriteTables<'_>, root: InodeId) -> Result<bool, NsError> {
    let k = key(root);
    let Some(drop) =
        super::merge::state_record::<CopyDrop>(t.region_state.open()?, k.as_str(), json_err)?
    else {
        return Ok(true);
    };
    // Housekeeping of this region, not a record of the merged log: nothing to undo.
    let saved = t.undo.take();
    let result = remove_rows(t, &drop, trim::STEP).and_then(|done| {
        if done {
            t.write(Tab::Trims, k.as_bytes(), None)?;
        }
        Ok(done)
    });
    t.undo = saved;
    result
}

/// Removes up to `budget` rows of copy `drop` (entries, extents, and an inode with its
/// xattrs each count one), the inodes of its range in number order, then the root.
/// Returns whether nothing is left.
fn remove_rows(t: &mut WriteTables<'_>, drop: &CopyDrop, budget: usize) -> Result<bool, NsError> {
    let mut left = budget;
    let range = drop.numbers();
    loop {
        let next = t
            .inodes()?
            .range(range.clone())
            .map_err(store_err)?
            .next()
            .transpose()
            .map_err(store_err)?
            .map(|(k, _)| InodeId(k.value()));
        let ino = next.unwrap_or(drop.root);
        if !remove_inode(t, ino, &mut left)? {
            return Ok(false);
        }
        if next.is_none() {
            return Ok(true);
        }
    }
}

/// Removes inode `ino` with its rows, taking them off `left`; returns whether it is gone
/// (`false`: `left` ran out first, and some of its rows are left).
fn remove_inode(t: &mut WriteTables<'_>, ino: InodeId, left: &mut usize) -> Result<bool, NsError> {
    for e in super::ops::volumes::first_entries(t.dirents()?, ino, *left + 1)? {
        if *left == 0 {
            return Ok(false);
        }
        t.del_dirent(ino, &e.name)?;
        *left -= 1;
    }
    for x in trim::extents_in(t, ino, (0, u64::MAX), *left + 1)? {
        if *left == 0 {
            return Ok(false);
        }
        t.remove_extent(ino, &x)?;
        *left -= 1;
    }
    if *left == 0 {
        return Ok(false);
    }
    t.del_xattrs(ino)?;
    t.del_inode(ino)?;
    *left -= 1;
    Ok(true)
}

/// The removals under way, from the region's state.
pub fn pending(t: &impl StateTable) -> Result<Vec<CopyDrop>, NsError> {
    super::merge::state_records(t, "copydrop/", json_err)
}

/// The inodes whose tree fsck does not check, with their roots: the copies being made
/// (`volumes`) and those being removed (`state`).
pub fn unchecked(
    volumes: &[Volume],
    state: Option<&impl StateTable>,
) -> Result<Vec<(InodeId, Range<u64>)>, NsError> {
    let mut out: Vec<(InodeId, Range<u64>)> = volumes
        .iter()
        .filter_map(CopyDrop::of)
        .map(|d| (d.root, d.numbers()))
        .collect();
    if let Some(state) = state {
        out.extend(pending(state)?.iter().map(|d| (d.root, d.numbers())));
    }
    Ok(out)
}
