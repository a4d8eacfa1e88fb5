//! A volume's image for a region it is brought into (`backfill`): built from the serving
//! region's state rewound to the image's point, cut into pieces of bounded size, and
//! installed piece by piece in the receiving region.

use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::backfill::{Backfill, forget_inode, get, json_err, put, rebase_refs};
use super::ctx::find_volume;
use super::merge;
use super::tables::{Tab, Tomb, WriteTables, dirent_end, dirent_key, read_extents, store_err};
use super::types::*;

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

/// Where an image goes as it is built ([`build_image_into`]), in this order: its point
/// and volume, its inodes, its tombstones, its records.
pub trait ImageSink {
    fn begin(&mut self, point: Hlc, volume: &Volume) -> Result<(), NsError>;
    fn inode(&mut self, rows: InodeRows) -> Result<(), NsError>;
    fn tomb(&mut self, tomb: Tomb, rows: InodeRows) -> Result<(), NsError>;
    fn end(&mut self, records: Vec<Record>) -> Result<(), NsError>;
}

/// An image kept whole ([`build_image`]).
#[derive(Default)]
struct Whole(Option<VolumeImage>);

impl Whole {
    fn image(&mut self) -> Result<&mut VolumeImage, NsError> {
        self.0
            .as_mut()
            .ok_or_else(|| NsError::Store("an image's rows before its volume".into()))
    }
}

impl ImageSink for Whole {
    fn begin(&mut self, point: Hlc, volume: &Volume) -> Result<(), NsError> {
        self.0 = Some(VolumeImage {
            point,
            volume: volume.clone(),
            inodes: Vec::new(),
            tombs: Vec::new(),
            records: Vec::new(),
        });
        Ok(())
    }
    fn inode(&mut self, rows: InodeRows) -> Result<(), NsError> {
        self.image()?.inodes.push(rows);
        Ok(())
    }
    fn tomb(&mut self, tomb: Tomb, rows: InodeRows) -> Result<(), NsError> {
        self.image()?.tombs.push((tomb, rows));
        Ok(())
    }
    fn end(&mut self, records: Vec<Record>) -> Result<(), NsError> {
        self.image()?.records = records;
        Ok(())
    }
}

/// An image written as JSON as it is built, the same bytes as [`VolumeImage`]'s
/// serialization: never whole in memory.
pub struct JsonImage<W: std::io::Write> {
    out: W,
    /// What was written last: 0 nothing, 1 the start, 2 an inode, 3 the tombstones' start,
    /// 4 a tombstone.
    at: u8,
}

impl<W: std::io::Write> JsonImage<W> {
    pub fn new(out: W) -> Self {
        JsonImage { out, at: 0 }
    }

    /// The writer, once the image is written.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), NsError> {
        self.out
            .write_all(bytes)
            .map_err(|e| NsError::Store(format!("writing an image: {e}")))
    }

    fn value<T: Serialize>(&mut self, v: &T) -> Result<(), NsError> {
        serde_json::to_writer(&mut self.out, v)
            .map_err(|e| NsError::Store(format!("writing an image: {e}")))
    }

    fn open_tombs(&mut self) -> Result<(), NsError> {
        if self.at < 3 {
            self.raw(b"],\"tombs\":[")?;
            self.at = 3;
        }
        Ok(())
    }
}

impl<W: std::io::Write> ImageSink for JsonImage<W> {
    fn begin(&mut self, point: Hlc, volume: &Volume) -> Result<(), NsError> {
        self.raw(b"{\"point\":")?;
        self.value(&point)?;
        self.raw(b",\"volume\":")?;
        self.value(volume)?;
        self.raw(b",\"inodes\":[")?;
        self.at = 1;
        Ok(())
    }
    fn inode(&mut self, rows: InodeRows) -> Result<(), NsError> {
        if self.at == 2 {
            self.raw(b",")?;
        }
        self.value(&rows)?;
        self.at = 2;
        Ok(())
    }
    fn tomb(&mut self, tomb: Tomb, rows: InodeRows) -> Result<(), NsError> {
        self.open_tombs()?;
        if self.at == 4 {
            self.raw(b",")?;
        }
        self.value(&(tomb, rows))?;
        self.at = 4;
        Ok(())
    }
    fn end(&mut self, records: Vec<Record>) -> Result<(), NsError> {
        self.open_tombs()?;
        self.raw(b"],\"records\":")?;
        self.value(&records)?;
        self.raw(b"}")
    }
}

/// Builds the image of `volume` for region `to`, kept whole (see [`build_image_into`]).
pub fn build_image(
    t: &mut WriteTables<'_>,
    volume: u32,
    to: RegionId,
    since: Hlc,
) -> Result<Option<VolumeImage>, NsError> {
    let mut whole = Whole::default();
    Ok(build_image_into(t, volume, to, since, &mut whole)?.and(whole.0))
}

/// Builds the image of `volume` for region `to` into `sink`, from a transaction that is
/// aborted afterwards: the merged log is rewound to the settled bound, which must have
/// passed `since` (the change that added `to`). `None` while it has not (nothing was
/// given to `sink`); else the image's point.
pub fn build_image_into(
    t: &mut WriteTables<'_>,
    volume: u32,
    to: RegionId,
    since: Hlc,
    sink: &mut dyn ImageSink,
) -> Result<Option<Hlc>, NsError> {
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
    let records = later
        .into_iter()
        .filter(|r| r.volume == volume && !r.allowed_in(to))
        .collect();
    sink.begin(point, &vol)?;
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
                sink.inode(rows_of(t, e.ino, node)?)?;
            }
        }
        sink.inode(rows)?;
    }
    let mut tomb_list = Vec::new();
    for item in t.tombs()?.iter().map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let tomb: Tomb = serde_json::from_slice(v.value()).map_err(json_err)?;
        if tomb.inode.attr.volume == volume {
            tomb_list.push(tomb);
        }
    }
    for mut tomb in tomb_list {
        let ino = tomb.inode.attr.ino;
        let cuts = std::mem::take(&mut tomb.inode.cuts);
        let mut rows = rows_of(t, ino, None)?;
        rows.extents = super::trim::outside(&cuts, rows.extents);
        sink.tomb(tomb, rows)?;
    }
    sink.end(records)?;
    Ok(Some(point))
}

/// A bounded piece of an image, installed by one Raft entry (`image_pieces`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePart {
    /// The volume.
    pub volume: u32,
    /// The image's point.
    pub point: Hlc,
    /// Its place among the image's pieces, from 0.
    pub index: u32,
    /// JSON of `Vec<InodeRows>`. A row without its inode goes on with the rows of an
    /// inode (or tombstone) that a piece before began (in a split piece alone).
    pub inodes: Vec<u8>,
    /// JSON of `Vec<(Tomb, InodeRows)>`: tombstones before the last piece (in a split
    /// piece alone; empty otherwise, and then not written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombs: Vec<u8>,
    /// The last piece: JSON of `(Volume, Vec<(Tomb, InodeRows)>, Vec<Record>)`.
    pub finish: Option<Vec<u8>>,
    /// The image is cut with each inode whole in a piece, its tombstones in the last (for
    /// a group with members older than `InstallImageSplit`; `image_pieces.rs`), so that
    /// such a member installs every piece. It ignores the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole: bool,
}

/// Installs one piece of the image of a volume this region is being brought into. A
/// piece of another image than the one being installed (the serving region's leader
/// changed and built a new one) starts over: what the earlier one installed goes first.
/// Returns the records of the last piece, to merge (`apply` does). Only a `split` piece
/// (`image_pieces`) may carry rows going on from a piece before, or tombstones before the
/// last piece.
pub(crate) fn install(
    t: &mut WriteTables<'_>,
    part: &ImagePart,
    split: bool,
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
    let result = install_rows(t, &mut b, part, split);
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
    split: bool,
) -> Result<(RefDelta, Option<Vec<Record>>), NsError> {
    let mut added: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    if b.point != Some(part.point) {
        if b.point.is_some() {
            wipe(t, part.volume, &mut added)?;
        }
        b.point = Some(part.point);
        b.inodes = 0;
        b.parts = 0;
        b.whole = part.whole;
    }
    b.parts += 1;
    let inodes: Vec<InodeRows> = serde_json::from_slice(&part.inodes).map_err(json_err)?;
    for rows in &inodes {
        if rows.inode.is_none() {
            // Rows going on from a piece before: of an inode or a tombstone of this
            // volume here, which only this image brought.
            let ours = |v: u32| v == part.volume;
            let begun = super::tables::read_inode(t.inodes()?, rows.ino)?
                .is_some_and(|n| ours(n.attr.volume))
                || t.tomb(rows.ino)?
                    .is_some_and(|tb| ours(tb.inode.attr.volume));
            if !split || !begun {
                return Err(NsError::Invalid(format!(
                    "an image's inode {} comes without the inode",
                    rows.ino
                )));
            }
        } else {
            b.inodes += 1;
        }
        put_rows(t, rows, part.volume, &mut added)?;
    }
    if !part.tombs.is_empty() {
        if !split {
            return Err(NsError::Invalid(
                "an image's tombstones before its last piece, in a piece that may not carry them"
                    .into(),
            ));
        }
        let tombs: Vec<(Tomb, InodeRows)> =
            serde_json::from_slice(&part.tombs).map_err(json_err)?;
        for (tomb, rows) in &tombs {
            put_tomb(t, tomb, rows, part.volume, &mut added)?;
        }
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
        put_tomb(t, tomb, rows, part.volume, &mut added)?;
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

/// Installs a tombstone of the image, with its rows.
fn put_tomb(
    t: &mut WriteTables<'_>,
    tomb: &Tomb,
    rows: &InodeRows,
    volume: u32,
    added: &mut BTreeMap<Vec<u8>, i64>,
) -> Result<(), NsError> {
    if tomb.inode.attr.volume != volume || tomb.inode.attr.ino != rows.ino {
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
    put_rows(t, rows, volume, added)
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
        // Installed already (a leader that took the install over cut the image otherwise,
        // and a piece begins with rows a piece before held): its count stays.
        let key = super::tables::pair_key(rows.ino.0, e.offset);
        let there = match t.extents()?.get(key.as_slice()).map_err(store_err)? {
            Some(v) => Some(super::tables::decode_extent(&key, v.value())?),
            None => None,
        };
        if there.as_ref() == Some(e) {
            continue;
        }
        if let Some(old) = there {
            t.remove_extent(rows.ino, &old)?;
            *added.entry(old.block.as_bytes().to_vec()).or_default() -= 1;
        }
        t.insert_extent(rows.ino, e)?;
        *added.entry(e.block.as_bytes().to_vec()).or_default() += 1;
    }
    Ok(())
}

/// Removes every row of `volume` that an earlier, unfinished install left.
pub(super) fn wipe(
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
