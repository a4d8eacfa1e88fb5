//! Copies of volumes: snapshots (read-only) and clones, sharing the source's blocks (each
//! extent is one more reference to its block, so GC keeps every block a copy names).
//!
//! A copy is made in steps (docs/adr/0014-volume-copies-in-steps.md). The leader reads the
//! source in one read transaction, a fixed point in time however long the copy takes
//! ([`plan`], [`read_rows`]) after [`begin`] made the new volume, marked as copying
//! (nothing else changes it, it cannot be mounted, and GC holds every block); the first
//! batch reserves the range of inode numbers the rows take; [`rows`] writes a bounded batch of
//! copied inodes with their entries, xattrs and extents, as the leader read them
//! ([`extents`] the rest of a file of more extents than a batch holds), and the last batch
//! marks the copy done. Each is one Raft entry that every member applies as it
//! is, and none is a record: the copy lives in the region that made it, whatever regions
//! its source lives in, and no record a peer region sends later rewinds it. A copy whose
//! maker went away (the leader changed) is removed ([`remove`], in steps:
//! `namespace/copy_drop.rs`; [`abort`], at once, is what a log written before the steps
//! replays).
//!
//! [`clone_volume`] is the copy in one record that earlier versions made; a log written by
//! them still replays it.

use std::collections::HashMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::volumes::{create_volume, delete_volume, entries_of, list_dir};
use crate::namespace::ctx::*;
use crate::namespace::tables::{
    DIRENTS, EXTENTS, INODES, Tab, VOLUMES, WriteTables, XATTRS, counter, decode_dirent,
    dirent_end, dirent_key, last_extent, read_extents, read_inode, read_volume, store_err,
};
use crate::namespace::trim;
use crate::namespace::types::*;

/// The start of a copy, as the leader proposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBegin {
    /// The volume copied.
    pub source: String,
    /// The new volume's name.
    pub name: String,
    /// A snapshot (read-only), or a clone.
    pub read_only: bool,
    /// The leader's stamp and time: the new volume is born then.
    pub hlc: Hlc,
    pub now: Timespec,
    /// The process making the copy (`Copying::by`).
    pub by: u64,
}

/// One copied inode, as the copy has it: its number, volume and parent are the copy's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRow {
    pub inode: Inode,
    /// More entries of a directory whose row came in an earlier batch (its entries span
    /// batches): only `entries` are written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<Extent>,
    /// A directory's entries, naming the copy's inodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<(Vec<u8>, InodeId, FileKind)>,
}

/// A batch of a copy's rows; the last also finishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRows {
    /// The volume being made.
    pub volume: u32,
    /// Inode numbers to reserve for the copy first (once, before any row but the root's:
    /// the leader counts them at the point in time it reads, after the copy began).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reserve: u64,
    pub rows: Vec<CopyRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<CopyDone>,
}

/// What the last batch of a copy sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyDone {
    pub used_bytes: u64,
    pub used_inodes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// More extents of a file of the copy whose row came in an earlier batch: a file of
/// many extents is copied over several steps. A request of its own, not a field of
/// [`CopyRow`]: a member older than it cannot read the entry and stops, where one that
/// ignored a new field would have applied a copy without them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyExtents {
    /// The volume being made.
    pub volume: u32,
    /// The copy's file.
    pub ino: InodeId,
    /// Its extents after those already copied, in offset order.
    pub extents: Vec<Extent>,
}

/// What one step of a copy writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Rows (inodes, with their entries, xattrs and extents, or more entries of one).
    Rows(Vec<CopyRow>),
    /// More extents of one file.
    Extents(CopyExtents),
}

/// The copy removed because its maker went away (or deleted while being made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAbort {
    pub volume: u32,
    pub hlc: Hlc,
    pub now: Timespec,
    /// The client's request that deleted it (`CopyRemove` only): a retry of it is answered
    /// as the first time was, as any operation's is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<(u64, u64)>,
}

/// Whether a copy of `src` may be made in `region`: it lives there, and is whole.
fn check_source(src: &Volume, region: RegionId) -> Result<(), NsError> {
    if src.copying.is_some() {
        return Err(NsError::Invalid(format!(
            "volume {} is itself still being copied",
            src.name
        )));
    }
    // A volume that names no regions lives in the one that made it.
    let lives_here = if src.policy.regions.is_empty() {
        RegionId((src.id >> 16) as u16) == region
    } else {
        src.policy.regions.contains(&region)
    };
    if !lives_here {
        return Err(NsError::Perm(format!(
            "volume {} does not live in region {}",
            src.name, region.0
        )));
    }
    Ok(())
}

/// Whether a record still in the merged log wrote the volume row of `name` (a create, a
/// deletion, a policy change of a volume of that name not yet settled with every region).
fn name_unsettled(t: &WriteTables<'_>, name: &str) -> Result<bool, NsError> {
    // Records that write volume rows meet everything: they are all listed so.
    for key in crate::namespace::footprint::touching(t, std::iter::empty(), Hlc::default())? {
        let images = crate::namespace::merge::undo_images(t, &key)?;
        if images
            .iter()
            .any(|b| b.0 == Tab::Volumes && b.1 == name.as_bytes())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Starts a copy: the new volume (its root only, marked as copying until the last batch:
/// nothing else changes it meanwhile, it cannot be mounted, and GC holds every block).
pub(crate) fn begin(t: &mut WriteTables<'_>, b: &CopyBegin) -> Result<Reply, NsError> {
    let src = read_volume(t.volumes()?, &b.source)?
        .ok_or_else(|| NsError::NotFound(format!("volume {}", b.source)))?;
    check_source(&src, b.hlc.region)?;
    if name_unsettled(t, &b.name)? {
        // Undoing that record (a late record from a peer rewinds it) would write its row
        // of the name back over the copy's.
        return Err(NsError::Unreachable(format!(
            "volume name {:?} was changed by a record not yet settled with every region: use another name, or try again once the regions have settled",
            b.name
        )));
    }
    let ctx = Ctx::new(b.hlc, b.now, None, 0);
    let mut policy = src.policy.clone();
    // The copy lives here alone: this region decides its changes.
    policy.regions = Vec::new();
    policy.home = None;
    let Reply::Volume(mut vol) = create_volume(t, &ctx, &b.name, &policy)? else {
        return Err(NsError::Store("volume creation answered oddly".into()));
    };
    vol.read_only = b.read_only;
    vol.origin = Some(src.name.clone());
    vol.copying = Some(Copying {
        source: src.name,
        inodes: 0,
        copied: 0,
        base: 0,
        by: b.by,
    });
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Writes a batch of a copy's rows (and with the last, finishes it). Every row must be
/// the copy's own: its root, or an inode number reserved for it.
pub(crate) fn rows(t: &mut WriteTables<'_>, r: &CopyRows) -> Result<Reply, NsError> {
    let mut vol = find_volume(t, r.volume)?
        .ok_or_else(|| NsError::NotFound(format!("volume {}", r.volume)))?;
    let Some(copying) = vol.copying.as_mut() else {
        return Err(NsError::Invalid(format!(
            "volume {} is not being copied",
            vol.name
        )));
    };
    if r.reserve > 0 {
        if copying.inodes > 0 || !r.rows.is_empty() {
            return Err(NsError::Invalid(format!(
                "the copy {} has its inode numbers already, or a reservation came with rows",
                vol.name
            )));
        }
        copying.base = t.next_n(counter::NEXT_INODE, 1, r.reserve)?;
        copying.inodes = r.reserve;
    }
    let (root, range) = (vol.root, copying.base..copying.base + copying.inodes);
    let own = |ino: InodeId| owns(root, &range, ino);
    for row in &r.rows {
        let ino = row.inode.attr.ino;
        let named = row.entries.iter().map(|e| e.1);
        if row.inode.attr.volume != r.volume || !own(ino) || !named.clone().all(own) {
            return Err(NsError::Invalid(format!(
                "a row of the copy {} names an inode that is not the copy's",
                vol.name
            )));
        }
    }
    let mut copied = 0;
    for row in &r.rows {
        let ino = row.inode.attr.ino;
        if !row.continued {
            t.put_inode(&row.inode)?;
            for (name, value) in &row.xattrs {
                t.set_xattr(ino, name, value)?;
            }
            for e in &row.extents {
                t.insert_extent(ino, e)?;
            }
            if ino != vol.root {
                copied += 1;
            }
        }
        for (name, child, kind) in &row.entries {
            t.set_dirent(ino, name, *child, *kind)?;
        }
    }
    copying.copied += copied;
    if let Some(done) = &r.done {
        vol.used_bytes = done.used_bytes;
        vol.used_inodes = done.used_inodes;
        vol.copying = None;
    }
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Whether `ino` is one of a copy's: its root, or a number of the `range` it reserved.
fn owns(root: InodeId, range: &std::ops::Range<u64>, ino: InodeId) -> bool {
    ino == root || (ino.region() == root.region() && range.contains(&ino.local()))
}

/// Writes more extents of a file of a copy being made (see [`CopyExtents`]). Refused, and
/// nothing written, for a volume not being copied, an inode that is not one of the
/// copy's files, or extents that are not after the file's last, in order.
pub(crate) fn extents(t: &mut WriteTables<'_>, r: &CopyExtents) -> Result<Reply, NsError> {
    let vol = find_volume(t, r.volume)?
        .ok_or_else(|| NsError::NotFound(format!("volume {}", r.volume)))?;
    let Some(copying) = vol.copying.as_ref() else {
        return Err(NsError::Invalid(format!(
            "volume {} is not being copied",
            vol.name
        )));
    };
    let node = read_inode(t.inodes()?, r.ino)?;
    let file = node
        .as_ref()
        .is_some_and(|n| n.attr.volume == r.volume && n.attr.kind == FileKind::File);
    let range = copying.base..copying.base + copying.inodes;
    if !owns(vol.root, &range, r.ino) || !file {
        return Err(NsError::Invalid(format!(
            "extents for the copy {} name an inode that is not one of its files",
            vol.name
        )));
    }
    let mut end = last_extent(t.extents()?, r.ino)?.map_or(0, |e| e.end());
    for e in &r.extents {
        if e.offset < end || e.len == 0 {
            return Err(NsError::Invalid(format!(
                "extents for the copy {} overlap or are out of order",
                vol.name
            )));
        }
        end = e.end();
    }
    for e in &r.extents {
        t.insert_extent(r.ino, e)?;
    }
    Ok(Reply::Volume(vol))
}

/// Removes a copy that was not finished, with what it has so far (each extent one
/// reference fewer to its block). A finished volume is not touched.
pub(crate) fn abort(t: &mut WriteTables<'_>, a: &CopyAbort) -> Result<Reply, NsError> {
    let Some(vol) = find_volume(t, a.volume)? else {
        return Ok(Reply::Done);
    };
    if vol.copying.is_none() {
        return Err(NsError::Invalid(format!(
            "volume {} is not being copied",
            vol.name
        )));
    }
    let ctx = Ctx::new(a.hlc, a.now, None, 0);
    delete_volume(t, &ctx, &vol.name)
}

/// Removes a copy that was not finished in steps (`copy_drop.rs`): its row and a few of
/// its rows now, the rest by the leader's steps. A finished volume is not touched.
pub(crate) fn remove(t: &mut WriteTables<'_>, a: &CopyAbort) -> Result<Reply, NsError> {
    use crate::namespace::apply::{answered, remember};
    if let Some(first) = answered(t, a.request)? {
        return first;
    }
    let outcome = match find_volume(t, a.volume)? {
        None => Ok(Reply::Done),
        Some(vol) => crate::namespace::copy_drop::remove(t, &vol),
    };
    // Only a removal: a refusal (the copy finished meanwhile) leaves the request to the
    // deletion that follows it.
    if outcome.is_ok() {
        remember(t, a.request, a.hlc.wall_ms, &outcome)?;
    }
    outcome
}

/// What a copy will copy, read at one point in time: the source, and every inode below
/// its root once (a file with several links at its first name) with the directory it is
/// first met in, in the order the copy numbers them.
pub struct Plan {
    pub source: Volume,
    pub order: Vec<(InodeId, InodeId)>,
}

/// The copy's plan for `source`, from `tx`. The source must be whole and live in
/// `region`; the checks are made again when the copy begins.
pub fn plan(tx: &ReadTransaction, source: &str, region: RegionId) -> Result<Plan, NsError> {
    let volumes = tx.open_table(VOLUMES).map_err(store_err)?;
    let src = read_volume(&volumes, source)?
        .ok_or_else(|| NsError::NotFound(format!("volume {source}")))?;
    check_source(&src, region)?;
    let order = copy_order(&tx.open_table(DIRENTS).map_err(store_err)?, src.root)?;
    Ok(Plan { source: src, order })
}

/// How a plan's inodes are numbered in the copy `vol` (whose reserved numbers start at
/// `base`).
pub struct Numbering {
    map: HashMap<InodeId, InodeId>,
}

impl Numbering {
    pub fn new(plan: &Plan, vol: &Volume, base: u64) -> Result<Self, NsError> {
        let region = vol.root.region();
        let mut map = HashMap::with_capacity(plan.order.len() + 1);
        map.insert(plan.source.root, vol.root);
        for (k, (ino, _)) in plan.order.iter().enumerate() {
            let id =
                InodeId::new(region, base + k as u64).map_err(|e| NsError::Store(e.to_string()))?;
            map.insert(*ino, id);
        }
        Ok(Numbering { map })
    }

    /// The copy's number for the source's inode `ino`.
    pub(crate) fn of(&self, ino: InodeId) -> Result<InodeId, NsError> {
        self.map
            .get(&ino)
            .copied()
            .ok_or_else(|| NsError::Store(format!("inode {ino} is not in the copy's plan")))
    }
}

/// Where a copy's reading is: the position in the plan (0 the root, then `order`'s), and
/// for a directory whose entries span batches, the last name sent; for a file whose
/// extents do, the offset its next extents start from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub pos: usize,
    pub after: Option<Vec<u8>>,
    pub extents_from: Option<u64>,
}

impl Plan {
    /// Positions to read: the root, then every inode of `order`.
    pub fn len(&self) -> usize {
        self.order.len() + 1
    }

    /// Whether the cursor is past everything.
    pub fn done(&self, cur: &Cursor) -> bool {
        cur.pos >= self.len()
    }
}

/// The source's tables, open in one read transaction.
struct Source<T1, T2, T3, T4> {
    inodes: T1,
    dirents: T2,
    extents: T3,
    xattrs: T4,
}

impl<T1, T2, T3, T4> Source<T1, T2, T3, T4>
where
    T1: ReadableTable<u64, &'static [u8]>,
    T2: ReadableTable<&'static [u8], &'static [u8]>,
    T3: ReadableTable<&'static [u8], &'static [u8]>,
    T4: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// The copy's row for inode `from` of the source (first met in `parent`): whole, or
    /// with `after`, a directory's entries after that name. At most `limit` entries and
    /// xattrs, and `extents_room` extents and xattrs (one entry or extent at least); with
    /// more left, the last name sent, or the offset a file's next extents start from.
    #[allow(clippy::type_complexity)]
    fn row(
        &self,
        (from, parent): (InodeId, InodeId),
        vol: &Volume,
        numbering: &Numbering,
        after: Option<&[u8]>,
        (limit, extents_room): (usize, usize),
    ) -> Result<(CopyRow, Option<Vec<u8>>, Option<u64>), NsError> {
        let mut inode =
            read_inode(&self.inodes, from)?.ok_or_else(|| NsError::NotFound(from.to_string()))?;
        inode.attr.ino = numbering.of(from)?;
        inode.attr.volume = vol.id;
        inode.parent = numbering.of(parent)?;
        inode.copy_of = None;
        let mut more_extents = None;
        let mut row = CopyRow {
            inode,
            continued: after.is_some(),
            xattrs: Vec::new(),
            extents: Vec::new(),
            entries: Vec::new(),
        };
        if after.is_none() {
            let (lo, hi) = (dirent_key(from, b""), dirent_end(from));
            for item in self
                .xattrs
                .range(lo.as_slice()..hi.as_slice())
                .map_err(store_err)?
            {
                let (k, v) = item.map_err(store_err)?;
                let name = k.value().get(8..).unwrap_or(&[]);
                row.xattrs.push((name.to_vec(), v.value().to_vec()));
            }
            if row.inode.attr.kind == FileKind::File {
                // The copy takes the file's live extents, not what a cut left; a file of
                // many over several steps.
                let room = extents_room.saturating_sub(row.xattrs.len());
                (row.extents, more_extents) =
                    trim::live_page(&self.extents, from, &row.inode.cuts, (0, u64::MAX), room)?;
                row.inode.cuts.clear();
            }
        }
        let mut more = None;
        let limit = limit.saturating_sub(row.xattrs.len() + row.extents.len());
        if row.inode.attr.kind == FileKind::Dir {
            let lo = match after {
                Some(name) => std::ops::Bound::Excluded(dirent_key(from, name)),
                None => std::ops::Bound::Included(dirent_key(from, b"")),
            };
            let hi = std::ops::Bound::Excluded(dirent_end(from));
            let range = (
                lo.as_ref().map(|k| k.as_slice()),
                hi.as_ref().map(|k| k.as_slice()),
            );
            for item in self.dirents.range::<&[u8]>(range).map_err(store_err)? {
                let (k, v) = item.map_err(store_err)?;
                let e = decode_dirent(k.value(), v.value())?;
                if row.entries.len() >= limit.max(1) {
                    more = row.entries.last().map(|(name, _, _)| name.clone());
                    break;
                }
                row.entries.push((e.name, numbering.of(e.ino)?, e.kind));
            }
        }
        Ok((row, more, more_extents))
    }
}

/// How much one step of a copy carries.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most rows.
    pub rows: usize,
    /// No more rows once they hold this many entries, extents and xattrs.
    pub items: usize,
    /// A file's extents all go in its row, however many: for a group with members older
    /// than [`CopyExtents`], which could not read the steps carrying the rest.
    pub whole_files: bool,
}

impl Limits {
    /// Steps of at most `rows` rows and about `items` items, a file of more extents than
    /// that over several.
    pub fn new(rows: usize, items: usize) -> Self {
        Limits {
            rows,
            items,
            whole_files: false,
        }
    }
}

/// The copy's next batch from `cur` on: rows, at most `limits.rows`, and no more once they
/// hold `limits.items` entries, extents and xattrs (one row at least, a directory's entries
/// or a file's extents cut to fit, unless `limits.whole_files`: the rest come in the next
/// batches); or, in the middle of a file, at most `limits.items` more of its extents. The
/// root's row is the source root's attributes, born `now`. Returns the batch and where the
/// next starts.
pub fn read_rows(
    tx: &ReadTransaction,
    plan: &Plan,
    vol: &Volume,
    numbering: &Numbering,
    mut cur: Cursor,
    limits: Limits,
    now: Timespec,
) -> Result<(Batch, Cursor), NsError> {
    let (max_rows, max_items) = (limits.rows, limits.items);
    let source = Source {
        inodes: tx.open_table(INODES).map_err(store_err)?,
        dirents: tx.open_table(DIRENTS).map_err(store_err)?,
        extents: tx.open_table(EXTENTS).map_err(store_err)?,
        xattrs: tx.open_table(XATTRS).map_err(store_err)?,
    };
    if let Some(start) = cur.extents_from {
        let Some(&(from, _)) = cur.pos.checked_sub(1).and_then(|i| plan.order.get(i)) else {
            return Err(NsError::Store(format!(
                "a copy's cursor in the middle of no file: {cur:?}"
            )));
        };
        let node =
            read_inode(&source.inodes, from)?.ok_or_else(|| NsError::NotFound(from.to_string()))?;
        let (extents, more) = trim::live_page(
            &source.extents,
            from,
            &node.cuts,
            (start, u64::MAX),
            max_items,
        )?;
        match more {
            Some(next) => cur.extents_from = Some(next),
            None => {
                cur.pos += 1;
                cur.extents_from = None;
            }
        }
        let batch = CopyExtents {
            volume: vol.id,
            ino: numbering.of(from)?,
            extents,
        };
        return Ok((Batch::Extents(batch), cur));
    }
    let root = plan.source.root;
    let mut out = Vec::new();
    let mut items = 0;
    while !plan.done(&cur) && out.len() < max_rows && (items < max_items || out.is_empty()) {
        let at = match cur.pos {
            0 => (root, root),
            p => plan.order[p - 1],
        };
        let limit = max_items.saturating_sub(items);
        let extents_room = if limits.whole_files {
            usize::MAX
        } else {
            limit
        };
        let (mut row, more, more_extents) = source.row(
            at,
            vol,
            numbering,
            cur.after.as_deref(),
            (limit, extents_room),
        )?;
        if more_extents.is_some() && !out.is_empty() {
            // A file that does not fit what is left starts the next batch, with all of its
            // room: only a file of more extents than a batch holds goes on in extents of
            // its own.
            break;
        }
        if cur.pos == 0 && !row.continued {
            row.inode.parent = vol.root;
            row.inode.attr.crtime = now;
        }
        items += row.entries.len() + row.extents.len() + row.xattrs.len();
        out.push(row);
        match (more, more_extents) {
            (Some(last), _) => {
                cur.after = Some(last);
                break;
            }
            (None, Some(next)) => {
                cur.extents_from = Some(next);
                break;
            }
            (None, None) => {
                cur.pos += 1;
                cur.after = None;
            }
        }
    }
    Ok((Batch::Rows(out), cur))
}

/// Most inodes a volume may have to be copied in one command (the copy holds the state
/// machine while it runs).
pub(crate) const CLONE_MAX_INODES: u64 = 250_000;

/// Copies the namespace of `source` into a new volume `name`, in this one command: every
/// inode (hard links stay links), entry, xattr and extent, each extent one more reference
/// to its block. A snapshot is marked read-only.
pub(crate) fn clone_volume(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    source: &str,
    name: &str,
    read_only: bool,
) -> Result<Reply, NsError> {
    let src = read_volume(t.volumes()?, source)?
        .ok_or_else(|| NsError::NotFound(format!("volume {source}")))?;
    if src.policy.regions.len() > 1 {
        return Err(NsError::NotSupported(format!(
            "volume {source} lives in several regions: snapshots and clones are of one region's volumes"
        )));
    }
    // The source lives in the copy's region alone (a record from elsewhere naming one of
    // this region's volumes is refused).
    let home = match src.policy.regions.first() {
        Some(r) => *r,
        None => meridian_proto::RegionId((src.id >> 16) as u16),
    };
    if home != ctx.region() {
        return Err(NsError::Perm(format!(
            "volume {source} lives in region {}, not {}",
            home.0,
            ctx.region().0
        )));
    }
    if src.used_inodes > CLONE_MAX_INODES {
        return Err(NsError::NotSupported(format!(
            "volume {source} has {} inodes; a copy takes at most {CLONE_MAX_INODES}",
            src.used_inodes
        )));
    }
    // The inodes to copy, in the order the copy meets them (the same in a replay: the
    // source lives in this region alone, so its state at this point of the log is the
    // same). Each takes the next of a range of ids reserved at once, which the record
    // keeps: a replay after a rewind gives them the same ids.
    let order = copy_order(t.dirents()?, src.root)?;
    let base = match ctx.replay {
        Some(fx) => fx.copy_base.ok_or_else(|| {
            NsError::Invalid("a volume copy record without its inode range".into())
        })?,
        None => t.next_n(counter::NEXT_INODE, 1, order.len() as u64)?,
    };
    let mut policy = src.policy.clone();
    policy.regions = Vec::new();
    // The copy lives here alone: this region decides its changes.
    policy.home = None;
    let Reply::Volume(mut vol) = create_volume(t, ctx, name, &policy)? else {
        return Err(NsError::Store("volume creation answered oddly".into()));
    };
    ctx.out.borrow_mut().copy_base = Some(base);
    let mut map: std::collections::HashMap<InodeId, InodeId> = Default::default();
    map.insert(src.root, vol.root);
    for (k, (ino, _)) in order.iter().enumerate() {
        let id = InodeId::new(ctx.region(), base + k as u64)
            .map_err(|e| NsError::Store(e.to_string()))?;
        map.insert(*ino, id);
    }
    copy_inode_data(t, src.root, vol.root, vol.id, vol.root)?;
    // The copy was born now (a snapshot's time is its root's birth).
    let mut root = get(t, vol.root)?;
    root.attr.crtime = ctx.now;
    t.put_inode(&root)?;
    for (old, parent) in &order {
        copy_inode_data(t, *old, map[old], vol.id, map[parent])?;
    }
    let mut dirs = vec![src.root];
    while let Some(dir) = dirs.pop() {
        let new_dir = map[&dir];
        for e in list_dir(t, dir)? {
            if e.kind == FileKind::Dir {
                dirs.push(e.ino);
            }
            t.set_dirent(new_dir, &e.name, map[&e.ino], e.kind)?;
        }
    }
    vol.used_bytes = src.used_bytes;
    vol.used_inodes = src.used_inodes;
    vol.read_only = read_only;
    vol.origin = Some(src.name.clone());
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

/// Every inode below `root`, once each (a file with several links at its first name),
/// in a fixed order, with the directory it is first met in.
fn copy_order(
    dirents: &impl ReadableTable<&'static [u8], &'static [u8]>,
    root: InodeId,
) -> Result<Vec<(InodeId, InodeId)>, NsError> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for e in entries_of(dirents, dir)? {
            if seen.insert(e.ino) {
                order.push((e.ino, dir));
                if e.kind == FileKind::Dir {
                    dirs.push(e.ino);
                }
            }
        }
    }
    Ok(order)
}

/// Copies inode `from` as `to` in volume `volume` (a directory's parent is `parent`):
/// attributes, symlink target, xattrs, and extents (each a new reference to its block).
fn copy_inode_data(
    t: &mut WriteTables<'_>,
    from: InodeId,
    to: InodeId,
    volume: u32,
    parent: InodeId,
) -> Result<(), NsError> {
    let mut inode = get(t, from)?;
    // The file's live extents, not what a cut left (read before its cuts are dropped).
    let extents = match inode.attr.kind {
        FileKind::File => {
            let all = read_extents(t.extents()?, from, 0, u64::MAX)?;
            crate::namespace::trim::live(&inode, all)
        }
        _ => Vec::new(),
    };
    inode.attr.ino = to;
    inode.attr.volume = volume;
    inode.parent = parent;
    inode.copy_of = None;
    inode.cuts.clear();
    t.put_inode(&inode)?;
    let (lo, hi) = (dirent_key(from, b""), dirent_end(from));
    let mut xattrs = Vec::new();
    for item in t
        .xattrs()?
        .range(lo.as_slice()..hi.as_slice())
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        let name = k.value().get(8..).unwrap_or_default().to_vec();
        xattrs.push((name, v.value().to_vec()));
    }
    for (name, value) in xattrs {
        t.set_xattr(to, &name, &value)?;
    }
    for e in &extents {
        t.insert_extent(to, e)?;
    }
    Ok(())
}
