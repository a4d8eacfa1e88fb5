//! A removed file's extents, dropped in steps.
//!
//! Removing a file's last name dropped its extents, and their blocks' references, in the
//! same entry. A file of many extents (a database or an image written at random: the
//! bench's 1 GiB fio file after 6 s of 4 KiB writes holds about 150,000) made that one
//! entry take about half a second on every member, and every other client's change waited
//! behind it. A file of more than [`INLINE`] extents now leaves them behind a mark
//! (`trim/<ino>` in the region's state, holding its volume), and the leader drops them
//! [`STEP`] at a time, an entry each (`Request::TrimStep`, proposed by
//! `crate::trim::trim_loop`), until none are left.
//!
//! Meanwhile the extents still count their blocks' references, so nothing they name is
//! collected early; nobody reaches them (the inode is gone, and inode numbers are never
//! given out twice); fsck counts them as their mark's. Only a volume of one region: in a
//! volume of several the inode becomes a tombstone with its extents, as before.

use meridian_proto::InodeId;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::merge::StateTable;
use super::tables::{Tab, decode_extent, json_err, pair_key, store_err};
use super::types::{Extent, NsError};
use super::write_tables::WriteTables;

/// Most extents a removal drops in its own entry.
pub const INLINE: usize = 1024;
/// Extents one step drops.
pub const STEP: usize = 2048;

/// A removed file whose extents wait to be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trim {
    /// The file.
    pub ino: InodeId,
    /// Its volume.
    pub volume: u32,
}

fn key(ino: InodeId) -> String {
    format!("trim/{:020}", ino.0)
}

/// The first `n` extents of `ino`, in offset order.
fn first_extents(t: &WriteTables<'_>, ino: InodeId, n: usize) -> Result<Vec<Extent>, NsError> {
    let (lo, hi) = (pair_key(ino.0, 0), pair_key(ino.0.saturating_add(1), 0));
    let mut out = Vec::new();
    for item in t
        .extents()?
        .range(lo.as_slice()..hi.as_slice())
        .map_err(store_err)?
        .take(n)
    {
        let (k, v) = item.map_err(store_err)?;
        out.push(decode_extent(k.value(), v.value())?);
    }
    Ok(out)
}

/// Drops the extents of removed file `ino` of `volume`: here if it has at most [`INLINE`],
/// else in steps after a mark.
pub(crate) fn drop_extents(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    volume: u32,
) -> Result<(), NsError> {
    let extents = first_extents(t, ino, INLINE + 1)?;
    if extents.len() <= INLINE {
        for e in &extents {
            t.remove_extent(ino, e)?;
        }
        return Ok(());
    }
    let mark = serde_json::to_vec(&Trim { ino, volume }).map_err(json_err)?;
    // Through the record's undo, like the inode's removal: a command refused after this
    // (which restores what it wrote) leaves no mark on a file that keeps its name.
    t.write(Tab::Trims, key(ino).as_bytes(), Some(&mark))
}

/// Drops up to [`STEP`] more extents of marked file `ino`: whether none are left (the mark
/// gone with the last; also when there is no mark, as for a step proposed twice).
pub fn trim_step(t: &mut WriteTables<'_>, ino: InodeId) -> Result<bool, NsError> {
    let k = key(ino);
    if t.region_state
        .open()?
        .get(k.as_str())
        .map_err(store_err)?
        .is_none()
    {
        return Ok(true);
    }
    let extents = first_extents(t, ino, STEP)?;
    // Housekeeping of this region, not a record of the merged log: nothing to undo.
    let saved = t.undo.take();
    let mut result = Ok(());
    for e in &extents {
        result = t.remove_extent(ino, e);
        if result.is_err() {
            break;
        }
    }
    t.undo = saved;
    result?;
    if extents.len() < STEP {
        t.write(Tab::Trims, k.as_bytes(), None)?;
        return Ok(true);
    }
    Ok(false)
}

/// Every marked file, in inode order.
pub fn pending(t: &impl StateTable) -> Result<Vec<Trim>, NsError> {
    super::merge::state_records(t, "trim/", json_err)
}
