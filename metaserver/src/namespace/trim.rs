//! Extents dropped in steps: a removed file's, and what a truncate cuts off a file.
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
//!
//! A truncate that cuts more than [`INLINE`] extents off a file stalled the group the same
//! way (`truncate -s 0`, or an open with `O_TRUNC`, of that fio file: a third of a
//! second). It now cuts the one extent across the new end and leaves the rest behind the
//! same mark, with the file's `cut_from` set to the new size: every extent at or past
//! `cut_from` is the truncate's leftover, and the size stays at most `cut_from`. Reads
//! stop there. A change that makes the file longer first drops the leftovers in the
//! stretch it brings back ([`expose`]), then moves `cut_from` to the new end, so an old
//! extent never shows through a new size; a file rewritten from the start after the
//! truncate pays, commit by commit, for the old extents its new bytes cover, as a
//! rewrite in place does. The steps drop the leftovers from `cut_from` on, and clear it
//! with the last of them. A volume that is to live in several regions first has its cuts
//! finished ([`finish_cuts`]): the merged records of several regions know nothing of them.

use meridian_proto::InodeId;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::merge::StateTable;
use super::tables::{Tab, decode_extent, json_err, pair_key, read_extents, read_inode, store_err};
use super::types::{Extent, Inode, NsError};
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

/// The first `n` extents of `ino` that start at or past `from` and before `to`, in offset
/// order.
fn extents_in(
    t: &WriteTables<'_>,
    ino: InodeId,
    (from, to): (u64, u64),
    n: usize,
) -> Result<Vec<Extent>, NsError> {
    let lo = pair_key(ino.0, from);
    let hi = match to {
        u64::MAX => pair_key(ino.0.saturating_add(1), 0),
        to => pair_key(ino.0, to),
    };
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
    let extents = extents_in(t, ino, (0, u64::MAX), INLINE + 1)?;
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

/// Drops up to [`STEP`] more extents of marked file `ino`: a removed file's from its
/// start, a file's that lives from its `cut_from` on. Returns whether none are left (the
/// mark gone with the last, and the file's `cut_from` cleared; also when there is no mark,
/// as for a step proposed twice).
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
    let node = read_inode(t.inodes()?, ino)?;
    let from = match &node {
        None => 0,
        Some(node) => node.cut_from.unwrap_or(u64::MAX),
    };
    let extents = if from == u64::MAX {
        Vec::new()
    } else {
        extents_in(t, ino, (from, u64::MAX), STEP)?
    };
    // Housekeeping of this region, not a record of the merged log: nothing to undo.
    let saved = t.undo.take();
    let mut result = extents.iter().try_for_each(|e| t.remove_extent(ino, e));
    let done = extents.len() < STEP;
    if result.is_ok()
        && done
        && let Some(mut node) = node.filter(|n| n.cut_from.is_some())
    {
        node.cut_from = None;
        result = t.put_inode(&node);
    }
    t.undo = saved;
    result?;
    if done {
        t.write(Tab::Trims, k.as_bytes(), None)?;
    }
    Ok(done)
}

/// Where `node`'s live extents end: its `cut_from`, or nowhere.
pub(crate) fn live_end(node: &Inode) -> u64 {
    node.cut_from.unwrap_or(u64::MAX)
}

/// Cuts the extents of file `node` at `size`, smaller than its size: here if at most
/// [`INLINE`] start at or past it (or the volume lives in several regions), else the
/// extent across `size` here and the rest behind a mark, `cut_from` set to `size`.
pub(crate) fn truncate(
    t: &mut WriteTables<'_>,
    node: &mut Inode,
    size: u64,
    one_region: bool,
) -> Result<(), NsError> {
    let ino = node.attr.ino;
    let beyond = extents_in(t, ino, (size, u64::MAX), INLINE + 1)?;
    if !one_region || beyond.len() <= INLINE {
        return super::ops::content::truncate_extents(t, ino, size);
    }
    // The one extent that starts before `size` and reaches past it keeps its first part.
    if let Some(across) = read_extents(t.extents()?, ino, size, size.saturating_add(1))?
        .into_iter()
        .find(|e| e.offset < size)
    {
        t.remove_extent(ino, &across)?;
        t.insert_extent(
            ino,
            &Extent {
                len: size - across.offset,
                ..across
            },
        )?;
    }
    node.cut_from = Some(size);
    let mark = serde_json::to_vec(&Trim {
        ino,
        volume: node.attr.volume,
    })
    .map_err(json_err)?;
    t.write(Tab::Trims, key(ino).as_bytes(), Some(&mark))
}

/// Before file `node` is made `end` bytes long (or given extents up to `end`): drops what
/// a truncate left between its `cut_from` and `end`, and moves `cut_from` to `end`. Costs
/// the leftovers in that stretch, which is what the file brings back into view.
pub(crate) fn expose(t: &mut WriteTables<'_>, node: &mut Inode, end: u64) -> Result<(), NsError> {
    let Some(from) = node.cut_from.filter(|&f| end > f) else {
        return Ok(());
    };
    let ino = node.attr.ino;
    for e in extents_in(t, ino, (from, end), usize::MAX)? {
        t.remove_extent(ino, &e)?;
    }
    node.cut_from = Some(end);
    Ok(())
}

/// Drops every leftover of a truncate in the files of `volume`, before it lives in
/// several regions.
pub(crate) fn finish_cuts(t: &mut WriteTables<'_>, volume: u32) -> Result<(), NsError> {
    let marked: Vec<Trim> = pending(t.region_state.open()?)?;
    for m in marked.into_iter().filter(|m| m.volume == volume) {
        let Some(mut node) = read_inode(t.inodes()?, m.ino)? else {
            continue; // a removed file's: nothing of it can show
        };
        let Some(from) = node.cut_from else { continue };
        for e in extents_in(t, m.ino, (from, u64::MAX), usize::MAX)? {
            t.remove_extent(m.ino, &e)?;
        }
        node.cut_from = None;
        t.put_inode(&node)?;
        t.write(Tab::Trims, key(m.ino).as_bytes(), None)?;
    }
    Ok(())
}

/// Every marked file, in inode order.
pub fn pending(t: &impl StateTable) -> Result<Vec<Trim>, NsError> {
    super::merge::state_records(t, "trim/", json_err)
}
