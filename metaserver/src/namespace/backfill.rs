//! Bringing a volume into a region it did not live in (`admin volume add-region`): the
//! state-machine side. This module owns the bookkeeping of a region's backfills, builds a
//! volume's image in the region that serves it, and installs the image in the region that
//! receives it. Leaving a region is `leave`'s.
//!
//! Why an image, and which one. Records of a volume carry the regions it lived in when
//! they were written, and a region is sent only the records it may hold: a region added
//! later never receives the records written before their origin knew of the addition. The
//! serving region waits until its settled bound has passed the change that added the
//! region: by then every record written anywhere without knowing of the addition has
//! arrived there. It then sends the volume as it was at that bound (`point`: the merged
//! log rewound in a transaction that is never committed), plus the records at or after
//! the point that the new region will never be sent. Every other record of the volume at
//! or after the point reaches the new region from its origin; those before the point are
//! in the image, and the new region skips them. Records of the volume that arrive while
//! the image is on its way wait apart (`park`), and apply once it is installed; the
//! origin's records of other volumes go on meanwhile.
//!
//! Installing takes several Raft entries of bounded size; the volume's row goes in last,
//! so the volume appears whole or not at all.

use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::ctx::find_volume;
use super::merge::{self, StateTable};
use super::tables::{Tab, Tomb, WriteTables, dirent_end, dirent_key, read_extents, store_err};
use super::types::*;

/// What a region knows of one volume being brought into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// The volume's id.
    pub volume: u32,
    /// Its name when it was added here.
    pub name: String,
    /// The region whose change added this one: it serves the image.
    pub from: RegionId,
    /// The stamp of that change.
    pub since: Hlc,
    /// The image being installed: its point (records of the volume before it are in it).
    #[serde(default)]
    pub point: Option<Hlc>,
    /// Inodes installed so far.
    #[serde(default)]
    pub inodes: u64,
    /// Pieces of the image installed so far.
    #[serde(default)]
    pub parts: u32,
    /// The volume row is in: the volume is here.
    #[serde(default)]
    pub installed: bool,
    /// Every block its files referenced at the install was fetched into this region.
    #[serde(default)]
    pub blocks: bool,
}

pub(super) fn key(volume: u32) -> String {
    format!("backfill/{volume}")
}

pub(super) fn json_err(e: serde_json::Error) -> NsError {
    NsError::Store(format!("damaged backfill record: {e}"))
}

/// Every backfill this region knows of, finished ones included.
pub fn all(t: &impl StateTable) -> Result<Vec<Backfill>, NsError> {
    merge::state_records(t, "backfill/", json_err)
}

/// The backfill of `volume`, if one was ever started here.
pub fn get(t: &impl StateTable, volume: u32) -> Result<Option<Backfill>, NsError> {
    match merge::state(t, &key(volume))? {
        Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(json_err)?)),
        None => Ok(None),
    }
}

fn put(t: &mut WriteTables<'_>, b: &Backfill) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(b).map_err(json_err)?;
    t.region_state
        .open_mut()?
        .insert(key(b.volume).as_str(), bytes.as_slice())
        .map_err(store_err)?;
    Ok(())
}

/// Notes that every block of the volume's image is in this region.
pub fn blocks_done(t: &mut WriteTables<'_>, volume: u32) -> Result<(), NsError> {
    if let Some(mut b) = get(t.region_state.open()?, volume)?
        && b.installed
    {
        b.blocks = true;
        put(t, &b)?;
    }
    Ok(())
}

/// The distinct blocks the files of `volume` reference, in this region's state.
pub fn volume_blocks(
    tx: &redb::ReadTransaction,
    volume: u32,
) -> Result<Vec<meridian_proto::BlockId>, NsError> {
    let inodes = tx.open_table(super::tables::INODES).map_err(store_err)?;
    let extents = tx.open_table(super::tables::EXTENTS).map_err(store_err)?;
    let mut out = std::collections::BTreeSet::new();
    for item in inodes.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let inode: Inode = serde_json::from_slice(v.value()).map_err(json_err)?;
        if inode.attr.volume == volume && inode.attr.kind == FileKind::File {
            // Leftovers in cuts too: a rewind here of the record that cut them makes
            // them content again.
            for e in read_extents(&extents, InodeId(k.value()), 0, u64::MAX)? {
                out.insert(e.block);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// What this region does with a record of `volume` stamped `hlc` now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admission {
    /// Apply it.
    Apply,
    /// It is in the installed image already.
    InImage,
    /// The image has not arrived yet: hold it back.
    Wait,
    /// The volume left this region: nothing of it applies here any more.
    Left,
}

/// Whether `record` applies here now, is in the installed image, waits for the image
/// (or, adding this region `own` back, for the copy it left to be dropped), or is of a
/// volume that left.
pub fn admission(
    t: &impl StateTable,
    own: RegionId,
    record: &Record,
) -> Result<Admission, NsError> {
    let (volume, hlc) = (record.volume, record.hlc);
    if let Some(l) = super::leave::leaving(t, volume)? {
        let adds_back =
            matches!(&record.op, Op::SetVolumeRegions { regions, .. } if regions.contains(&own));
        if adds_back && hlc > l.since {
            return Ok(if l.done {
                Admission::Apply
            } else {
                Admission::Wait
            });
        }
        if hlc > l.since {
            return Ok(Admission::Left);
        }
    }
    Ok(match get(t, volume)? {
        None => Admission::Apply,
        Some(b) if !b.installed => Admission::Wait,
        Some(b) if b.point.is_some_and(|p| hlc < p) => Admission::InImage,
        Some(_) => Admission::Apply,
    })
}

/// Whether `record` adds `own` to a volume this region does not hold: the region's
/// backfill of it starts (idempotent: a replay of the same change finds it started).
pub(crate) fn wanted(t: &WriteTables<'_>, own: RegionId, record: &Record) -> Result<bool, NsError> {
    let Op::SetVolumeRegions { regions, .. } = &record.op else {
        return Ok(false);
    };
    Ok(regions.contains(&own)
        && find_volume(t, record.volume)?.is_none()
        && !get(t.region_state.open()?, record.volume)?.is_some_and(|b| b.installed))
}

/// Starts (or keeps) the backfill of the volume `record` added this region to.
pub(crate) fn start(t: &mut WriteTables<'_>, record: &Record) -> Result<(), NsError> {
    let Op::SetVolumeRegions { name, .. } = &record.op else {
        return Ok(());
    };
    if get(t.region_state.open()?, record.volume)?.is_some() {
        return Ok(());
    }
    // Brought back after it left: what is left of the leaving goes.
    super::leave::forget(t, record.volume)?;
    put(
        t,
        &Backfill {
            volume: record.volume,
            name: name.clone(),
            from: record.hlc.region,
            since: record.hlc,
            point: None,
            inodes: 0,
            parts: 0,
            installed: false,
            blocks: false,
        },
    )
}

/// Most records of one volume kept waiting for its image: beyond it, the origin's
/// records are held back in sequence instead (they come again in later pulls).
pub const MAX_PARKED: usize = 100_000;

fn parked_key(volume: u32, hlc: Hlc) -> Vec<u8> {
    let mut k = volume.to_be_bytes().to_vec();
    k.extend_from_slice(&hlc.to_key());
    k
}

/// The range of PARKED keys of `volume`.
fn parked_range(volume: u32) -> (Vec<u8>, Vec<u8>) {
    let lo = volume.to_be_bytes().to_vec();
    let mut hi = lo.clone();
    hi.extend_from_slice(&[0xff; Hlc::KEY_LEN]);
    (lo, hi)
}

/// How many records of `volume` wait for its image, up to `limit`.
pub fn parked_count(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    volume: u32,
    limit: usize,
) -> Result<usize, NsError> {
    let (lo, hi) = parked_range(volume);
    let mut n = 0;
    for item in t
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(store_err)?
        .take(limit)
    {
        item.map_err(store_err)?;
        n += 1;
    }
    Ok(n)
}

/// REGION_STATE key of the oldest record kept apart (see [`park`]): the merged log is not
/// pruned past it, so the records it meets are still there when it is merged.
pub const PARKED_LOW: &str = "parked_low";

/// Keeps `record`, of a volume whose image has not arrived yet, apart until it has (see
/// [`take_parked`]): the origin's later records of other volumes go on applying.
pub(crate) fn park(t: &mut WriteTables<'_>, record: &Record) -> Result<(), NsError> {
    let bytes = serde_json::to_vec(record).map_err(json_err)?;
    t.parked
        .open_mut()?
        .insert(
            parked_key(record.volume, record.hlc).as_slice(),
            bytes.as_slice(),
        )
        .map_err(store_err)?;
    if merge::stamp(t.region_state.open()?, PARKED_LOW)?.is_none_or(|low| record.hlc < low) {
        merge::set_state(t, PARKED_LOW, &record.hlc.to_key())?;
    }
    Ok(())
}

/// Sets [`PARKED_LOW`] again from the records still kept apart, once those taken were
/// merged.
pub(crate) fn note_parked_low(t: &mut WriteTables<'_>) -> Result<(), NsError> {
    let mut low: Option<Hlc> = None;
    for volume in super::tables::distinct_u32s(t.parked.open()?, &[])? {
        let first = super::tables::first_with_prefix(t.parked.open()?, &volume.to_be_bytes())?;
        let hlc = first
            .and_then(|k| Hlc::from_key(&k[4..]))
            .ok_or_else(|| NsError::Store("damaged parked record key".into()))?;
        low = Some(low.map_or(hlc, |l| l.min(hlc)));
    }
    match low {
        Some(l) => merge::set_state(t, PARKED_LOW, &l.to_key()),
        None => {
            t.region_state
                .open_mut()?
                .remove(PARKED_LOW)
                .map_err(store_err)?;
            Ok(())
        }
    }
}

/// The records of `volume` that waited for its image, oldest first; they are no longer
/// kept apart.
pub(crate) fn take_parked(t: &mut WriteTables<'_>, volume: u32) -> Result<Vec<Record>, NsError> {
    let (lo, hi) = parked_range(volume);
    let mut keys = Vec::new();
    let mut out = Vec::new();
    for item in t
        .parked
        .open()?
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        keys.push(k.value().to_vec());
        out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
    }
    for k in keys {
        t.parked
            .open_mut()?
            .remove(k.as_slice())
            .map_err(store_err)?;
    }
    Ok(out)
}

/// Gives up bringing `volume` in (the serving region said the image will never come):
/// what an unfinished install put here goes, and the volume's records apply (and are
/// skipped: it is not here) instead of waiting for ever. Those kept apart meanwhile are
/// merged by the caller (`apply::cancel_backfill`).
pub fn cancel(t: &mut WriteTables<'_>, volume: u32) -> Result<(), NsError> {
    let Some(b) = get(t.region_state.open()?, volume)? else {
        return Ok(());
    };
    if b.installed {
        return Ok(());
    }
    let saved = t.undo.take();
    let mut delta = BTreeMap::new();
    let wiped = if b.point.is_some() {
        wipe(t, volume, &mut delta)
    } else {
        Ok(())
    };
    t.undo = saved;
    wiped?;
    rebase_refs(t, &delta)?;
    t.region_state
        .open_mut()?
        .remove(key(volume).as_str())
        .map_err(store_err)?;
    Ok(())
}

/// A volume as it was at `point`, and the records from `point` on that the receiving
/// region is never sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeImage {
    /// Records of the volume before it are in the image.
    pub point: Hlc,
    /// The volume's row.
    pub volume: Volume,
    /// Its inodes, each with its rows.
    pub inodes: Vec<InodeRows>,
    /// Its removed inodes still kept (a late change may bring one back), with their rows.
    pub tombs: Vec<(Tomb, InodeRows)>,
    /// Records of the volume from `point` on that the receiving region is not sent.
    pub records: Vec<Record>,
}

/// One inode and the rows keyed by it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InodeRows {
    /// Its number.
    pub ino: InodeId,
    /// The inode (absent for a tombstone's rows).
    pub inode: Option<Inode>,
    /// A directory's entries: raw (key, value).
    pub dirents: Vec<(Vec<u8>, Vec<u8>)>,
    /// Xattrs: raw (key, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A file's extents.
    pub extents: Vec<Extent>,
}

/// The rows of `ino` for an image; a file's extents are its content alone: the leftovers
/// in its cuts stay here, and the image's inode holds no cut (a tombstone's rows, with no
/// inode, are taken through the tombstone's cuts by the caller).
fn rows_of(
    t: &WriteTables<'_>,
    ino: InodeId,
    mut inode: Option<Inode>,
) -> Result<InodeRows, NsError> {
    let (lo, hi) = (dirent_key(ino, b""), dirent_end(ino));
    let raw = |table: &redb::Table<'_, &'static [u8], &'static [u8]>| -> Result<_, NsError> {
        let mut out = Vec::new();
        for item in table
            .range(lo.as_slice()..hi.as_slice())
            .map_err(store_err)?
        {
            let (k, v) = item.map_err(store_err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    };
    let extents = read_extents(t.extents()?, ino, 0, u64::MAX)?;
    let cuts = inode
        .as_mut()
        .map(|n| std::mem::take(&mut n.cuts))
        .unwrap_or_default();
    Ok(InodeRows {
        ino,
        dirents: raw(t.dirents()?)?,
        xattrs: raw(t.xattrs()?)?,
        extents: super::trim::outside(&cuts, extents),
        inode,
    })
}

/// Builds the image of `volume` for region `to`, from a transaction that is aborted
/// afterwards: the merged log is rewound to the settled bound, which must have passed
/// `since` (the change that added `to`). `None` while it has not.
pub fn build_image(
    t: &mut WriteTables<'_>,
    volume: u32,
    to: RegionId,
    since: Hlc,
) -> Result<Option<VolumeImage>, NsError> {
    // The receiver holds nothing of the volume, so wrote nothing of it: it holds nothing
    // back (its own marks wait for the image, and would wait for ever).
    let Some(mut point) = merge::settled_bound_without(t.region_state.open()?, Some(to))? else {
        return Ok(None);
    };
    if point <= since {
        return Ok(None);
    }
    // Records of the volume that left the merged log on its own bound stay applied: the
    // image is of a point after the last of them (every record of the volume older than
    // that bound is here, so this point is as settled as the other).
    if let Some(p) = super::settle::pruned(t.region_state.open()?, volume)? {
        // The stamp right after it.
        let next = match p.region.0.checked_add(1) {
            Some(r) => Hlc {
                region: RegionId(r),
                ..p
            },
            None => Hlc {
                wall_ms: p.wall_ms,
                counter: p.counter.saturating_add(1),
                region: RegionId(0),
            },
        };
        point = point.max(next);
    }
    let later = merge::rewind(t, point)?;
    let vol =
        find_volume(t, volume)?.ok_or_else(|| NsError::NotFound(format!("volume {volume}")))?;
    if !vol.policy.regions.contains(&to) {
        return Err(NsError::Perm(format!(
            "volume {:?} does not live in region {} (data residency)",
            vol.name, to.0
        )));
    }
    let mut inodes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut dirs = vec![vol.root];
    while let Some(dir) = dirs.pop() {
        if !seen.insert(dir) {
            continue;
        }
        let node = super::tables::read_inode(t.inodes()?, dir)?;
        let rows = rows_of(t, dir, node)?;
        for (k, v) in &rows.dirents {
            let e = super::tables::decode_dirent(k, v)?;
            if e.kind == FileKind::Dir {
                dirs.push(e.ino);
            } else if seen.insert(e.ino) {
                let node = super::tables::read_inode(t.inodes()?, e.ino)?;
                inodes.push(rows_of(t, e.ino, node)?);
            }
        }
        inodes.push(rows);
    }
    let mut tomb_list = Vec::new();
    for item in t.tombs()?.iter().map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let tomb: Tomb = serde_json::from_slice(v.value()).map_err(json_err)?;
        if tomb.inode.attr.volume == volume {
            tomb_list.push(tomb);
        }
    }
    let mut tombs = Vec::new();
    for mut tomb in tomb_list {
        let ino = tomb.inode.attr.ino;
        let cuts = std::mem::take(&mut tomb.inode.cuts);
        let mut rows = rows_of(t, ino, None)?;
        rows.extents = super::trim::outside(&cuts, rows.extents);
        tombs.push((tomb, rows));
    }
    let records = later
        .into_iter()
        .filter(|r| r.volume == volume && !r.allowed_in(to))
        .collect();
    Ok(Some(VolumeImage {
        point,
        volume: vol,
        inodes,
        tombs,
        records,
    }))
}

/// A bounded piece of an image, installed by one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePart {
    /// The volume.
    pub volume: u32,
    /// The image's point.
    pub point: Hlc,
    /// Its place among the image's pieces, from 0.
    pub index: u32,
    /// JSON of `Vec<InodeRows>`.
    pub inodes: Vec<u8>,
    /// The last piece: JSON of `(Volume, Vec<(Tomb, InodeRows)>, Vec<Record>)`.
    pub finish: Option<Vec<u8>>,
}

/// Most inodes in one piece.
pub const PART_INODES: usize = 2000;
/// About the most bytes of rows in one piece.
const PART_BYTES: usize = 8 << 20;

impl VolumeImage {
    /// The image in pieces of at most [`PART_INODES`] inodes, the volume's row last.
    pub fn parts(self) -> Result<Vec<ImagePart>, NsError> {
        let mut out = Vec::new();
        let (volume, point) = (self.volume.id, self.point);
        let mut chunk: Vec<InodeRows> = Vec::new();
        let mut bytes = 0;
        let mut rest = self.inodes.into_iter().peekable();
        while let Some(rows) = rest.next() {
            bytes += 512 + (rows.dirents.len() + rows.xattrs.len()) * 64 + rows.extents.len() * 96;
            chunk.push(rows);
            if chunk.len() >= PART_INODES || bytes >= PART_BYTES || rest.peek().is_none() {
                out.push(ImagePart {
                    volume,
                    point,
                    index: out.len() as u32,
                    inodes: serde_json::to_vec(&chunk).map_err(json_err)?,
                    finish: None,
                });
                chunk.clear();
                bytes = 0;
            }
        }
        let finish =
            serde_json::to_vec(&(self.volume, self.tombs, self.records)).map_err(json_err)?;
        out.push(ImagePart {
            volume,
            point,
            index: out.len() as u32,
            inodes: b"[]".to_vec(),
            finish: Some(finish),
        });
        Ok(out)
    }
}

/// Installs one piece of the image of a volume this region is being brought into. A
/// piece of another image than the one being installed (the serving region's leader
/// changed and built a new one) starts over: what the earlier one installed goes first.
/// Returns the records of the last piece, to merge (`apply` does).
pub(crate) fn install(
    t: &mut WriteTables<'_>,
    part: &ImagePart,
) -> Result<Option<Vec<Record>>, NsError> {
    let Some(mut b) = get(t.region_state.open()?, part.volume)? else {
        return Err(NsError::Invalid(format!(
            "an image of volume {} that this region is not being brought into",
            part.volume
        )));
    };
    let same = b.point == Some(part.point);
    if b.installed || (same && part.index < b.parts) {
        // A piece proposed again (its first proposal's answer was lost): done already.
        return Ok(None);
    }
    if part.index != if same { b.parts } else { 0 } {
        return Err(NsError::Invalid(format!(
            "piece {} of the image of volume {} out of order",
            part.index, part.volume
        )));
    }
    // Not a record: nothing of this is undone by a rewind. The records in the merged log
    // that may still be undone get their block counts rebased below.
    // Captured only to be put back if the piece does not fit: a refusal changes nothing.
    let saved = t.undo.replace(Vec::new());
    let result = install_rows(t, &mut b, part);
    let images = t.undo.take().unwrap_or_default();
    t.undo = saved;
    let (added, records) = match result {
        Err(e @ NsError::Store(_)) => return Err(e),
        Err(e) => {
            t.restore(&images)?;
            return Err(e);
        }
        Ok(r) => r,
    };
    rebase_refs(t, &added)?;
    put(t, &b)?;
    Ok(records)
}

/// Block reference counts changed outside any record, by block.
type RefDelta = BTreeMap<Vec<u8>, i64>;

fn install_rows(
    t: &mut WriteTables<'_>,
    b: &mut Backfill,
    part: &ImagePart,
) -> Result<(RefDelta, Option<Vec<Record>>), NsError> {
    let mut added: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    if b.point != Some(part.point) {
        if b.point.is_some() {
            wipe(t, part.volume, &mut added)?;
        }
        b.point = Some(part.point);
        b.inodes = 0;
        b.parts = 0;
    }
    b.parts += 1;
    let inodes: Vec<InodeRows> = serde_json::from_slice(&part.inodes).map_err(json_err)?;
    for rows in &inodes {
        if rows.inode.is_none() {
            return Err(NsError::Invalid(format!(
                "an image's inode {} comes without the inode",
                rows.ino
            )));
        }
        put_rows(t, rows, part.volume, &mut added)?;
        b.inodes += 1;
    }
    let Some(finish) = &part.finish else {
        return Ok((added, None));
    };
    let (vol, tombs, records): (Volume, Vec<(Tomb, InodeRows)>, Vec<Record>) =
        serde_json::from_slice(finish).map_err(json_err)?;
    if vol.id != part.volume {
        return Err(NsError::Invalid(format!(
            "an image of volume {} carries volume {}",
            part.volume, vol.id
        )));
    }
    for (tomb, rows) in &tombs {
        if tomb.inode.attr.volume != part.volume || tomb.inode.attr.ino != rows.ino {
            return Err(NsError::Invalid(
                "an image's tombstone of another volume".into(),
            ));
        }
        if !tomb.inode.cuts.is_empty() {
            return Err(NsError::Invalid(format!(
                "an image's tombstone of inode {} carries a cut pending",
                rows.ino
            )));
        }
        if super::tables::read_inode(t.inodes()?, rows.ino)?.is_some() {
            return Err(NsError::Invalid(format!(
                "an image's tombstone names inode {}, which lives here",
                rows.ino
            )));
        }
        t.put_tomb(tomb)?;
        put_rows(t, rows, part.volume, &mut added)?;
    }
    if super::tables::read_volume(t.volumes()?, &vol.name)?.is_some() {
        return Err(NsError::Exists(format!(
            "a volume named {:?} exists here already",
            vol.name
        )));
    }
    t.put_volume(&vol)?;
    b.installed = true;
    Ok((added, Some(records)))
}

fn put_rows(
    t: &mut WriteTables<'_>,
    rows: &InodeRows,
    volume: u32,
    added: &mut BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    // Nothing of another volume is touched: an inode number taken here by another
    // volume (live or removed) is refused.
    let other = |v: u32| v != volume;
    if super::tables::read_inode(t.inodes()?, rows.ino)?.is_some_and(|n| other(n.attr.volume))
        || t.tomb(rows.ino)?
            .is_some_and(|tb| other(tb.inode.attr.volume))
    {
        return Err(NsError::Invalid(format!(
            "an image of volume {volume} names inode {}, which is another volume's here",
            rows.ino
        )));
    }
    if let Some(inode) = &rows.inode {
        if inode.attr.volume != volume || inode.attr.ino != rows.ino {
            return Err(NsError::Invalid(format!(
                "an image of volume {volume} carries inode {} of volume {}",
                inode.attr.ino, inode.attr.volume
            )));
        }
        // An image's file holds its content alone (`rows_of`).
        if !inode.cuts.is_empty() {
            return Err(NsError::Invalid(format!(
                "an image of volume {volume} carries inode {} with a cut pending",
                inode.attr.ino
            )));
        }
        t.put_inode(inode)?;
    }
    let of = rows.ino.0.to_be_bytes();
    if rows
        .dirents
        .iter()
        .chain(&rows.xattrs)
        .any(|(k, _)| k.get(..8) != Some(of.as_slice()))
    {
        return Err(NsError::Invalid(format!(
            "an image's rows of inode {} name another inode",
            rows.ino
        )));
    }
    for (k, v) in &rows.dirents {
        super::tables::decode_dirent(k, v)?;
        t.write(Tab::Dirents, k, Some(v))?;
    }
    for (k, v) in &rows.xattrs {
        t.write(Tab::Xattrs, k, Some(v))?;
    }
    for e in &rows.extents {
        t.insert_extent(rows.ino, e)?;
        *added.entry(e.block.as_bytes().to_vec()).or_default() += 1;
    }
    Ok(())
}

/// Removes every row of `volume` that an earlier, unfinished install left.
fn wipe(
    t: &mut WriteTables<'_>,
    volume: u32,
    added: &mut BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    let mut mine = Vec::new();
    for item in t.inodes()?.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let inode: Inode = serde_json::from_slice(v.value()).map_err(json_err)?;
        if inode.attr.volume == volume {
            mine.push(InodeId(k.value()));
        }
    }
    for item in t.tombs()?.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let tomb: Tomb = serde_json::from_slice(v.value()).map_err(json_err)?;
        if tomb.inode.attr.volume == volume {
            mine.push(InodeId(k.value()));
        }
    }
    for ino in mine {
        forget_inode(t, ino, added)?;
    }
    Ok(())
}

/// The keys of the first `n` entries of directory `dir`.
pub(crate) fn entry_keys(
    t: &WriteTables<'_>,
    dir: InodeId,
    n: usize,
) -> Result<Vec<Vec<u8>>, NsError> {
    let (lo, hi) = (dirent_key(dir, b""), dirent_end(dir));
    let mut keys = Vec::new();
    for item in t
        .dirents()?
        .range(lo.as_slice()..hi.as_slice())
        .map_err(store_err)?
        .take(n)
    {
        keys.push(item.map_err(store_err)?.0.value().to_vec());
    }
    Ok(keys)
}

/// Removes an inode and every row keyed by it, outside any record.
pub(crate) fn forget_inode(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    added: &mut BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    for e in read_extents(t.extents()?, ino, 0, u64::MAX)? {
        t.remove_extent(ino, &e)?;
        *added.entry(e.block.as_bytes().to_vec()).or_default() -= 1;
    }
    for k in entry_keys(t, ino, usize::MAX)? {
        t.write(Tab::Dirents, &k, None)?;
    }
    t.del_xattrs(ino)?;
    t.del_inode(ino)?;
    if t.tomb(ino)?.is_some() {
        t.del_tomb(ino)?;
    }
    if t.undo.is_none() {
        // The volume leaves: a register left behind would be taken for its times if the
        // volume came back (an install, captured to be put back, leaves them be).
        super::dir_times::drop_dir(t, ino.0)?;
    }
    Ok(())
}

/// Carries block counts changed outside any record into the undo images of the records
/// still in the merged log, so undoing one of them later keeps the change (counts add).
pub(crate) fn rebase_refs(
    t: &mut WriteTables<'_>,
    delta: &BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    if delta.values().all(|d| *d == 0) {
        return Ok(());
    }
    merge::rewrite_undo(t, None, |super::tables::Before(tab, key, val)| {
        if *tab != Tab::Refs {
            return Ok(false);
        }
        let Some(d) = delta.get(key.as_slice()).filter(|d| **d != 0) else {
            return Ok(false);
        };
        let count = match val {
            Some(bytes) => bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| NsError::Store("damaged undo image".into()))?,
            None => 0,
        };
        let now = (count as i64 + d).max(0) as u64;
        *val = (now > 0).then(|| now.to_be_bytes().to_vec());
        Ok(true)
    })
}
