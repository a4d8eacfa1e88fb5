//! Extents dropped in steps: a removed file's, and what a truncate or a hole cuts off a
//! file.
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
//! given out twice); fsck counts them as their mark's. In a volume of several regions the
//! inode becomes a tombstone with its extents, which a region may need to bring back until
//! every region has settled past the removal; the tombstone's purge then leaves them to
//! the same steps ([`purge_extents`]), where it had dropped them all in one pass.
//!
//! A truncate or a punched hole over more than [`INLINE`] extents stalled the group the
//! same way (`truncate -s 0`, an open with `O_TRUNC`, or `fallocate -p` of that fio file: a
//! fifth to a third of a second). It now splits the extents across the stretch's edges in
//! its own entry and leaves those inside behind the same mark, in a cut of the file (its
//! inode's `cuts`: `[from, to)`, a truncate's to the end): every extent that starts in a
//! cut is a leftover, none reaches past it, and no live extent reaches into it. Reads skip
//! the leftovers, so a cut reads as a hole, and a file made longer over a truncate's cut
//! reads as zeros there. Before extents are written into a cut, the cut gives up the
//! written stretch ([`expose`]: the leftovers in it are dropped there, and a cut the write
//! falls inside keeps both sides, as two), so a new extent is never in a cut. A write
//! pays for the old extents its new bytes cover, as a rewrite in place does; a file with
//! [`MAX_CUTS`] already pays for those before the write in that cut too. The steps drop
//! each cut's leftovers from its start, and the cut with the last of them. A file holds
//! at most [`MAX_CUTS`]; past them a cut drops its extents in its own entry as before.
//!
//! In a volume of several regions each region cuts its own rows as it applies the record
//! and steps at its own pace, so the leftovers and the cuts a region holds differ from
//! another's for a while, never what the file holds: everything that takes a file's rows
//! as its content takes them through its cuts ([`live`]): reads, copies, the versions the
//! merge reads back (`merge::version_of`), conflict copies, a compaction's check, and the
//! image a region joining the volume gets (its files hold no cut). A removed file with
//! cuts becomes a tombstone with them: its leftovers wait for the tombstone's purge (a
//! late change from another region may bring the file back, cuts and all).
//!
//! The steps are not records of the merged log. While this region has peers, a full
//! rewind of that log can undo the records before a step, the write that made a dropped
//! extent among them, and take its block's reference away a second time. So a mark names
//! its record while that record is in the log ([`Trim::at`]), and no step drops anything
//! until it has left: then every record before it has left too.

use meridian_proto::{Hlc, InodeId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::merge::StateTable;
use super::tables::{
    OPLOG, TOMBS, Tab, decode_extent, json_err, pair_key, read_extents, read_inode, store_err,
};
use super::types::{Cut, Extent, FileKind, Inode, NsError};
use super::write_tables::WriteTables;

/// Most extents a removal drops in its own entry.
pub const INLINE: usize = 1024;
/// Extents one step drops.
pub const STEP: usize = 2048;
/// Most cuts a file has at once: past them a truncate or a hole cuts in its own entry.
pub const MAX_CUTS: usize = 16;

/// A removed file whose extents wait to be dropped, a file with cuts, or a deleted
/// snapshot's tree (marked on its root directory, `tree_drop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trim {
    /// The file, or the tree's root.
    pub ino: InodeId,
    /// Its volume.
    pub volume: u32,
    /// The record that made the mark, while it is in the merged log (this region has
    /// peers): no step drops anything until it has left the log. A rewind of the log
    /// undoes records as they were written, and the steps are not records: undoing the
    /// write that made an extent the steps dropped would take its block's reference away
    /// a second time. Once the mark's record has left, so has every record of its volume
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Hlc>,
    /// The steps wait for every record up to `at` to leave the merged log, of any volume,
    /// not for `at` alone (a tombstone's purge: [`purge_extents`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub up_to: bool,
}

fn key(ino: InodeId) -> String {
    format!("trim/{:020}", ino.0)
}

/// The first `n` extents of `ino` that start at or past `from` and before `to`, in offset
/// order.
pub(super) fn extents_in(
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
    write_mark(t, ino, volume)
}

/// Marks file (or tree root) `ino` of `volume` for the steps, from the record being
/// applied. The record being applied becomes the mark's if it is newer (see
/// [`Trim::at`]): every record that changes rows in a file's cuts renews it, since undoing
/// any of them after a step would count a dropped extent's reference again.
pub(super) fn write_mark(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    volume: u32,
) -> Result<(), NsError> {
    let at = t.recording();
    put_mark(t, ino, volume, at, false)
}

/// Marks file `ino` of `volume` for the steps, which wait for record `at` (or the one the
/// mark already waits for, if newer) to leave the merged log, and with `up_to` every
/// record before it too ([`Trim::up_to`]).
fn put_mark(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    volume: u32,
    at: Option<Hlc>,
    up_to: bool,
) -> Result<(), NsError> {
    let before = t
        .region_state
        .open()?
        .get(key(ino).as_str())
        .map_err(store_err)?
        .and_then(|v| serde_json::from_slice::<Trim>(v.value()).ok());
    let at = before.and_then(|m| m.at).max(at);
    let up_to = up_to || before.is_some_and(|m| m.up_to);
    let mark = serde_json::to_vec(&Trim {
        ino,
        volume,
        at,
        up_to,
    })
    .map_err(json_err)?;
    // Through the record's undo, like the inode's removal: a command refused after this
    // (which restores what it wrote) leaves no mark on a file that keeps its name.
    t.write(Tab::Trims, key(ino).as_bytes(), Some(&mark))
}

/// Drops the extents of `ino` of `volume`, a tombstone being purged (no region can bring
/// it back): here (returned) if they fit in `budget`, what is left of [`INLINE`] for the
/// purge's pass, else in steps after a mark (`None`), as a removal in a volume of one
/// region does. A pass purges up to 256 tombstones: each of a few hundred extents would
/// add up to the stall of one large file.
///
/// The purge is no record: it goes outside any, and rebases the images of the records
/// still in the merged log instead (`settle.rs`). The mark waits for every one of those
/// to leave the log (every record up to the newest now, of any volume: records leave it
/// volume by volume): an older version's image that restores a block's whole count
/// counts the extents the steps would have dropped meanwhile. Records applied after the
/// purge change counts by amounts, which the steps commute with, and none of them touches
/// the file (it was removed before them all).
pub(crate) fn purge_extents(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    volume: u32,
    budget: &mut usize,
) -> Result<Option<Vec<Extent>>, NsError> {
    let extents = extents_in(t, ino, (0, u64::MAX), INLINE + 1)?;
    if extents.len() <= (*budget).min(INLINE) {
        for e in &extents {
            t.remove_extent(ino, e)?;
        }
        *budget -= extents.len();
        return Ok(Some(extents));
    }
    let newest = t
        .oplog
        .open()?
        .last()
        .map_err(store_err)?
        .and_then(|(k, _)| Hlc::from_key(k.value()));
    put_mark(t, ino, volume, newest, true)?;
    Ok(None)
}

/// Whether mark `m`'s steps may drop extents: its record has left the merged log (or
/// never entered it), in `oplog`; with [`Trim::up_to`], every record up to it.
pub fn ready(
    oplog: &impl ReadableTable<&'static [u8], &'static [u8]>,
    m: &Trim,
) -> Result<bool, NsError> {
    match m.at {
        None => Ok(true),
        Some(at) if m.up_to => Ok(oplog
            .first()
            .map_err(store_err)?
            .is_none_or(|(k, _)| Hlc::from_key(k.value()).is_none_or(|first| first > at))),
        Some(at) => Ok(oplog
            .get(at.to_key().as_slice())
            .map_err(store_err)?
            .is_none()),
    }
}

/// The marks whose steps may drop something now: their records have left the merged log
/// ([`ready`]), and their files are not tombstones (whose leftovers wait for the purge).
pub fn ready_marks(tx: &redb::ReadTransaction) -> Result<Vec<Trim>, NsError> {
    let Some(state) = super::merge::state_table(tx)? else {
        return Ok(Vec::new());
    };
    let marks = pending(&state)?;
    let oplog = match tx.open_table(OPLOG) {
        Ok(t) => t,
        // No merged log: no region brings anything back, and every mark is ready.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(marks),
        Err(e) => return Err(store_err(e)),
    };
    let tombs = match tx.open_table(TOMBS) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(store_err(e)),
    };
    let mut out = Vec::with_capacity(marks.len());
    for m in marks {
        let tombstone = match &tombs {
            Some(t) => t.get(m.ino.0).map_err(store_err)?.is_some(),
            None => false,
        };
        if !tombstone && ready(&oplog, &m)? {
            out.push(m);
        }
    }
    Ok(out)
}

/// Drops up to [`STEP`] more extents of marked file `ino`: a removed file's from its
/// start, a live file's from its first cut (the cut goes once it is empty); or, for a
/// marked directory, up to [`STEP`] rows of a deleted snapshot's tree (`tree_drop`). Returns
/// whether to stop stepping it for now: none are left (the mark gone with the last; also
/// when there is no mark, as for a step proposed twice), or the mark waits for its record
/// to leave the merged log ([`Trim::at`]; nothing dropped).
pub fn trim_step(t: &mut WriteTables<'_>, ino: InodeId) -> Result<bool, NsError> {
    let k = key(ino);
    let Some(mark) =
        super::merge::state_record::<Trim>(t.region_state.open()?, k.as_str(), json_err)?
    else {
        return Ok(true);
    };
    if !ready(t.oplog.open()?, &mark)? {
        return Ok(true);
    }
    let mut node = read_inode(t.inodes()?, ino)?;
    if node.is_none() && t.tomb(ino)?.is_some() {
        // A file removed with cuts, in a volume of several regions: a late change may
        // still bring it back, cuts and all. Its purge takes its extents.
        return Ok(true);
    }
    if node.as_ref().is_some_and(|n| n.attr.kind == FileKind::Dir) {
        // A deleted snapshot's tree (`tree_drop`): housekeeping too.
        let saved = t.undo.take();
        let result = super::tree_drop::step(t, ino, STEP);
        t.undo = saved;
        let done = result?;
        if done {
            t.write(Tab::Trims, k.as_bytes(), None)?;
        }
        return Ok(done);
    }
    let stretch = match &node {
        None => Some((0, u64::MAX)),
        Some(node) => node.cuts.first().map(|c| (c.from, c.to)),
    };
    let extents = match stretch {
        Some(stretch) => extents_in(t, ino, stretch, STEP)?,
        None => Vec::new(),
    };
    let emptied = extents.len() < STEP;
    // Housekeeping of this region, not a record of the merged log: nothing to undo.
    let saved = t.undo.take();
    let mut result = extents.iter().try_for_each(|e| t.remove_extent(ino, e));
    if result.is_ok()
        && emptied
        && let Some(node) = node.as_mut().filter(|n| !n.cuts.is_empty())
    {
        node.cuts.remove(0);
        result = t.put_inode(node);
    }
    t.undo = saved;
    result?;
    let done = match &node {
        None => emptied,
        Some(node) => node.cuts.is_empty(),
    };
    if done {
        t.write(Tab::Trims, k.as_bytes(), None)?;
    }
    Ok(done)
}

/// `extents` of `node` (read from its rows) without the leftovers in its cuts.
pub(crate) fn live(node: &Inode, extents: Vec<Extent>) -> Vec<Extent> {
    outside(&node.cuts, extents)
}

/// `extents` of a file without those that start in one of `cuts` (its leftovers).
pub(crate) fn outside(cuts: &[Cut], mut extents: Vec<Extent>) -> Vec<Extent> {
    if !cuts.is_empty() {
        extents.retain(|e| !is_leftover(cuts, e));
    }
    extents
}

/// The content of file `ino` whose cuts are `cuts` (their leftovers left out) overlapping
/// `[start, end)`, in offset order: at most `limit` extents (one at least), and the
/// offset the next starts at if there are more.
pub(crate) fn live_page(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ino: InodeId,
    cuts: &[Cut],
    (start, end): (u64, u64),
    limit: usize,
) -> Result<(Vec<Extent>, Option<u64>), NsError> {
    let limit = limit.max(1);
    let (mut out, mut more) = (Vec::new(), None);
    super::tables::each_extent(t, ino, start, end, |e| {
        if is_leftover(cuts, &e) {
            return true;
        }
        if out.len() == limit {
            more = Some(e.offset);
            return false;
        }
        out.push(e);
        true
    })?;
    Ok((out, more))
}

/// Whether `e` starts in one of `cuts`: a leftover, not the file's content.
pub(crate) fn is_leftover(cuts: &[Cut], e: &Extent) -> bool {
    cuts.iter().any(|c| c.holds(e.offset))
}

/// `cuts` with `[from, to)` added, joined with those it meets.
fn with_cut(cuts: &[Cut], from: u64, to: u64) -> Vec<Cut> {
    let (mut from, mut to) = (from, to);
    let mut out: Vec<Cut> = Vec::with_capacity(cuts.len() + 1);
    for c in cuts {
        if c.to < from || c.from > to {
            out.push(*c);
        } else {
            from = from.min(c.from);
            to = to.max(c.to);
        }
    }
    let at = out.partition_point(|c| c.from < from);
    out.insert(at, Cut { from, to });
    out
}

/// Marks `node`'s cut extents for the steps, the cuts being `cuts`.
fn mark_cut(t: &mut WriteTables<'_>, node: &mut Inode, cuts: Vec<Cut>) -> Result<(), NsError> {
    node.cuts = cuts;
    write_mark(t, node.attr.ino, node.attr.volume)
}

/// The extent of `ino` that starts before `at` and reaches past it, if any, now ends at
/// `at`; returns what it held from `at` on, for the caller to keep or let go.
fn split_at(t: &mut WriteTables<'_>, ino: InodeId, at: u64) -> Result<Option<Extent>, NsError> {
    let Some(across) = read_extents(t.extents()?, ino, at, at.saturating_add(1))?
        .into_iter()
        .find(|e| e.offset < at)
    else {
        return Ok(None);
    };
    t.remove_extent(ino, &across)?;
    t.insert_extent(
        ino,
        &Extent {
            len: at - across.offset,
            ..across
        },
    )?;
    let skip = at - across.offset;
    Ok(Some(Extent {
        offset: at,
        len: across.len - skip,
        block_offset: across.block_offset + skip as u32,
        ..across
    }))
}

/// The cuts of `node` with `[from, to)` added, if it may take one more in steps: not if at
/// most [`INLINE`] extents start in it (`cut` here is cheaper), or the file has
/// [`MAX_CUTS`] already.
fn stepped_cuts(
    t: &WriteTables<'_>,
    node: &Inode,
    (from, to): (u64, u64),
) -> Result<Option<Vec<Cut>>, NsError> {
    if from >= to {
        return Ok(None);
    }
    // A cut holding nothing goes: the steps emptied it, and a rewind of the merged log
    // brought it back without its mark (nothing steps it, and it would count here).
    let mut held = Vec::with_capacity(node.cuts.len());
    for c in &node.cuts {
        if !extents_in(t, node.attr.ino, (c.from, c.to), 1)?.is_empty() {
            held.push(*c);
        }
    }
    let cuts = with_cut(&held, from, to);
    if cuts.len() > MAX_CUTS
        || extents_in(t, node.attr.ino, (from, to), INLINE + 1)?.len() <= INLINE
    {
        return Ok(None);
    }
    Ok(Some(cuts))
}

/// Cuts the extents of file `node` at `size`, smaller than its size: here if at most
/// [`INLINE`] start at or past it (see [`stepped_cuts`]), else the extent across `size`
/// here and the rest behind a mark, in a cut from `size` on.
pub(crate) fn truncate(
    t: &mut WriteTables<'_>,
    node: &mut Inode,
    size: u64,
) -> Result<(), NsError> {
    let ino = node.attr.ino;
    let Some(cuts) = stepped_cuts(t, node, (size, u64::MAX))? else {
        if !node.cuts.is_empty() {
            // The cut here may reach leftovers (see `write_mark`).
            write_mark(t, ino, node.attr.volume)?;
        }
        return super::ops::content::truncate_extents(t, ino, size);
    };
    split_at(t, ino, size)?;
    mark_cut(t, node, cuts)
}

/// Makes `[start, end)` of file `node` a hole: here if at most [`INLINE`] extents start in
/// it (see [`stepped_cuts`]), else the extents across its edges here and the rest behind a
/// mark, in a cut. Nothing of the file lies past its size but what is cut already, so the
/// hole ends there.
pub(crate) fn punch(
    t: &mut WriteTables<'_>,
    node: &mut Inode,
    (start, end): (u64, u64),
) -> Result<(), NsError> {
    let ino = node.attr.ino;
    let stretch = (start, end.min(node.attr.size));
    if stretch.0 >= stretch.1 {
        return Ok(());
    }
    let Some(cuts) = stepped_cuts(t, node, stretch)? else {
        if !node.cuts.is_empty() {
            // The cut here may reach leftovers (see `write_mark`).
            write_mark(t, ino, node.attr.volume)?;
        }
        return super::ops::content::cut(t, ino, stretch.0, stretch.1);
    };
    split_at(t, ino, stretch.0)?;
    // The last extent in the hole keeps what it holds past the hole, out of the cut.
    if let Some(rest) = split_at(t, ino, stretch.1)? {
        t.insert_extent(ino, &rest)?;
    }
    mark_cut(t, node, cuts)
}

/// Before extents are written over `[start, end)` of file `node` (which the caller then
/// cuts out of the file's extents and fills): the cuts give up that stretch, so that what
/// is written is not in a cut. The leftovers starting in it are dropped here, and a cut it
/// falls inside keeps what lies on either side, as two; a file that has [`MAX_CUTS`]
/// already gives up the cut's leftovers from its start instead (costing those before
/// `start` too).
pub(crate) fn expose(
    t: &mut WriteTables<'_>,
    node: &mut Inode,
    (start, end): (u64, u64),
) -> Result<(), NsError> {
    if start >= end || !node.cuts.iter().any(|c| c.from < end && c.to > start) {
        return Ok(());
    }
    let ino = node.attr.ino;
    // This record changes rows in a cut (here, and in the caller's cut of the stretch).
    write_mark(t, ino, node.attr.volume)?;
    let cuts = std::mem::take(&mut node.cuts);
    let mut room = MAX_CUTS.saturating_sub(cuts.len());
    let mut kept = Vec::with_capacity(cuts.len() + 1);
    for c in cuts {
        if c.from >= end || c.to <= start {
            kept.push(c);
            continue;
        }
        let upto = end.min(c.to);
        let split = start > c.from && (upto == c.to || room > 0);
        let from = if split { start } else { c.from };
        if split {
            // A leftover across `start` reaches into what is written: the caller's cut
            // of the written stretch (a commit's overlay, a copy's cut) ends it there.
            kept.push(Cut {
                from: c.from,
                to: start,
            });
        }
        for e in extents_in(t, ino, (from, upto), usize::MAX)? {
            t.remove_extent(ino, &e)?;
        }
        if upto < c.to {
            if split {
                room -= 1;
            }
            kept.push(Cut {
                from: upto,
                to: c.to,
            });
        }
    }
    node.cuts = kept;
    Ok(())
}

/// Every marked file, in inode order.
pub fn pending(t: &impl StateTable) -> Result<Vec<Trim>, NsError> {
    super::merge::state_records(t, "trim/", json_err)
}
