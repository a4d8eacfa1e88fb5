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
use super::tables::{Tab, Tomb, WriteTables, dirent_end, dirent_key, store_err};
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

/// Most rows given to an image's sink at once ([`give_rows`]).
pub const ROWS_PAGE: usize = 4096;

/// Gives `sink` the rows of `ino` (the inode `inode`, or a tombstone's rows with `tomb`)
/// a page at a time: a directory of a million names is never read whole. A file's extents
/// are its content alone: the leftovers in its cuts stay here, and the image's inode (or
/// tombstone) holds no cut.
fn give_rows(
    t: &WriteTables<'_>,
    sink: &mut dyn ImageSink,
    ino: InodeId,
    mut inode: Option<Inode>,
    mut tomb: Option<Tomb>,
) -> Result<(), NsError> {
    let cuts = match (&mut inode, &mut tomb) {
        (Some(n), _) => std::mem::take(&mut n.cuts),
        (None, Some(tb)) => std::mem::take(&mut tb.inode.cuts),
        (None, None) => Vec::new(),
    };
    sink.head(ino, inode, tomb)?;
    let (lo, hi) = (dirent_key(ino, b""), dirent_end(ino));
    for xattrs in [false, true] {
        let table = if xattrs { t.xattrs()? } else { t.dirents()? };
        let mut page = Vec::new();
        let mut give = |page: Vec<(Vec<u8>, Vec<u8>)>| {
            let (dirents, xattrs) = if xattrs {
                (Vec::new(), page)
            } else {
                (page, Vec::new())
            };
            sink.more(InodeRows {
                ino,
                dirents,
                xattrs,
                ..Default::default()
            })
        };
        for item in table
            .range(lo.as_slice()..hi.as_slice())
            .map_err(store_err)?
        {
            let (k, v) = item.map_err(store_err)?;
            page.push((k.value().to_vec(), v.value().to_vec()));
            if page.len() == ROWS_PAGE {
                give(std::mem::take(&mut page))?;
            }
        }
        if !page.is_empty() {
            give(page)?;
        }
    }
    let mut from = 0;
    loop {
        let (extents, more) =
            super::trim::live_page(t.extents()?, ino, &cuts, (from, u64::MAX), ROWS_PAGE)?;
        if !extents.is_empty() {
            sink.more(InodeRows {
                ino,
                extents,
                ..Default::default()
            })?;
        }
        match more {
            Some(next) => from = next,
            None => return Ok(()),
        }
    }
}

/// Where an image goes as it is built ([`build_image_into`]), in this order: its point
/// and volume, its inodes, its tombstones, its records. An inode's (or a tombstone's)
/// rows come a page at a time: its [`ImageSink::head`], then its rows of each kind in
/// turn (entries, xattrs, extents) in [`ImageSink::more`]; the next head, or the end,
/// ends them.
pub trait ImageSink {
    fn begin(&mut self, point: Hlc, volume: &Volume) -> Result<(), NsError>;
    /// An inode's rows begin (with `tomb`, a tombstone's: after every inode).
    fn head(
        &mut self,
        ino: InodeId,
        inode: Option<Inode>,
        tomb: Option<Tomb>,
    ) -> Result<(), NsError>;
    /// More rows of the inode begun last (`rows.inode` is not looked at).
    fn more(&mut self, rows: InodeRows) -> Result<(), NsError>;
    fn end(&mut self, records: Vec<Record>) -> Result<(), NsError>;

    /// An inode with its rows at once.
    fn inode(&mut self, mut rows: InodeRows) -> Result<(), NsError> {
        self.head(rows.ino, rows.inode.take(), None)?;
        self.more(rows)
    }

    /// A tombstone with its rows at once.
    fn tomb(&mut self, tomb: Tomb, rows: InodeRows) -> Result<(), NsError> {
        self.head(rows.ino, None, Some(tomb))?;
        self.more(rows)
    }
}

/// An image kept whole ([`build_image`]).
#[derive(Default)]
struct Whole {
    image: Option<VolumeImage>,
    /// The rows being given are a tombstone's.
    tombs: bool,
}

impl Whole {
    fn image(&mut self) -> Result<&mut VolumeImage, NsError> {
        self.image
            .as_mut()
            .ok_or_else(|| NsError::Store("an image's rows before its volume".into()))
    }
}

impl ImageSink for Whole {
    fn begin(&mut self, point: Hlc, volume: &Volume) -> Result<(), NsError> {
        self.image = Some(VolumeImage {
            point,
            volume: volume.clone(),
            inodes: Vec::new(),
            tombs: Vec::new(),
            records: Vec::new(),
        });
        Ok(())
    }
    fn head(
        &mut self,
        ino: InodeId,
        inode: Option<Inode>,
        tomb: Option<Tomb>,
    ) -> Result<(), NsError> {
        self.tombs = tomb.is_some();
        let image = self.image()?;
        let rows = InodeRows {
            ino,
            inode,
            ..Default::default()
        };
        match tomb {
            Some(tomb) => image.tombs.push((tomb, rows)),
            None => image.inodes.push(rows),
        }
        Ok(())
    }
    fn more(&mut self, more: InodeRows) -> Result<(), NsError> {
        let tombs = self.tombs;
        let image = self.image()?;
        let rows = if tombs {
            image.tombs.last_mut().map(|(_, r)| r)
        } else {
            image.inodes.last_mut()
        };
        let rows = rows
            .filter(|r| r.ino == more.ino)
            .ok_or_else(|| NsError::Store("an image's rows before their inode".into()))?;
        rows.dirents.extend(more.dirents);
        rows.xattrs.extend(more.xattrs);
        rows.extents.extend(more.extents);
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
    /// The rows being written: their kind's place in [`KINDS`], whether that kind has a
    /// row yet, and whether they are a tombstone's.
    open: Option<(usize, bool, bool)>,
    /// The inode whose rows are being written.
    rows_of: InodeId,
}

/// The kinds of an inode's rows, in the order `InodeRows` writes them.
const KINDS: [&str; 3] = ["dirents", "xattrs", "extents"];

impl<W: std::io::Write> JsonImage<W> {
    pub fn new(out: W) -> Self {
        JsonImage {
            out,
            at: 0,
            open: None,
            rows_of: InodeId::default(),
        }
    }

    /// Goes on to the rows of kind `kind` (not one before the kind being written).
    fn go_to_kind(&mut self, kind: usize) -> Result<(), NsError> {
        let Some((at, _, tomb)) = self.open else {
            return Err(NsError::Store("an image's rows before their inode".into()));
        };
        if kind < at {
            return Err(NsError::Store("an image's rows out of their order".into()));
        }
        for (next, name) in KINDS.iter().enumerate().take(kind + 1).skip(at + 1) {
            self.raw(format!("],\"{name}\":[").as_bytes())?;
            self.open = Some((next, false, tomb));
        }
        Ok(())
    }

    /// Writes `items` as rows of kind `kind`.
    fn items<T: Serialize>(&mut self, kind: usize, items: &[T]) -> Result<(), NsError> {
        if items.is_empty() {
            return Ok(());
        }
        self.go_to_kind(kind)?;
        let Some((_, mut any, tomb)) = self.open else {
            return Ok(());
        };
        for item in items {
            if any {
                self.raw(b",")?;
            }
            self.value(item)?;
            any = true;
        }
        self.open = Some((kind, any, tomb));
        Ok(())
    }

    /// Ends the rows being written, if any.
    fn close_rows(&mut self) -> Result<(), NsError> {
        if let Some((_, _, tomb)) = self.open {
            self.go_to_kind(KINDS.len() - 1)?;
            self.raw(if tomb { b"]}]" } else { b"]}" })?;
            self.open = None;
        }
        Ok(())
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
    fn head(
        &mut self,
        ino: InodeId,
        inode: Option<Inode>,
        tomb: Option<Tomb>,
    ) -> Result<(), NsError> {
        self.close_rows()?;
        let is_tomb = tomb.is_some();
        match tomb {
            Some(tomb) => {
                self.open_tombs()?;
                if self.at == 4 {
                    self.raw(b",")?;
                }
                self.raw(b"[")?;
                self.value(&tomb)?;
                self.raw(b",")?;
                self.at = 4;
            }
            None if self.at >= 3 => {
                return Err(NsError::Store(
                    "an image's inode after its tombstones".into(),
                ));
            }
            None => {
                if self.at == 2 {
                    self.raw(b",")?;
                }
                self.at = 2;
            }
        }
        // As `InodeRows` writes itself, its rows left open.
        self.raw(b"{\"ino\":")?;
        self.value(&ino)?;
        self.raw(b",\"inode\":")?;
        self.value(&inode)?;
        self.raw(b",\"dirents\":[")?;
        self.open = Some((0, false, is_tomb));
        self.rows_of = ino;
        Ok(())
    }
    fn more(&mut self, rows: InodeRows) -> Result<(), NsError> {
        if rows.ino != self.rows_of {
            return Err(NsError::Store(format!(
                "rows of {} among an image's rows of {}",
                rows.ino, self.rows_of
            )));
        }
        self.items(0, &rows.dirents)?;
        self.items(1, &rows.xattrs)?;
        self.items(2, &rows.extents)
    }
    fn end(&mut self, records: Vec<Record>) -> Result<(), NsError> {
        self.close_rows()?;
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
    Ok(build_image_into(t, volume, to, since, &mut whole)?.and(whole.image))
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
    let Some(point) = super::image_ready::image_point(t.region_state.open()?, volume, to, since)?
    else {
        return Ok(None);
    };
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
    let t: &WriteTables<'_> = t;
    // The directories met, and the files not of exactly one name (one is met once).
    let mut seen = std::collections::HashSet::new();
    let mut dirs = vec![vol.root];
    while let Some(dir) = dirs.pop() {
        if !seen.insert(dir) {
            continue;
        }
        // Its files, then its own rows: its entries are read twice, never held all at once.
        let (lo, hi) = (dirent_key(dir, b""), dirent_end(dir));
        for item in t
            .dirents()?
            .range(lo.as_slice()..hi.as_slice())
            .map_err(store_err)?
        {
            let (k, v) = item.map_err(store_err)?;
            let e = super::tables::decode_dirent(k.value(), v.value())?;
            if e.kind == FileKind::Dir {
                dirs.push(e.ino);
                continue;
            }
            let node = super::tables::read_inode(t.inodes()?, e.ino)?;
            if node.as_ref().is_none_or(|n| n.attr.nlink != 1) && !seen.insert(e.ino) {
                continue;
            }
            give_rows(t, sink, e.ino, node, None)?;
        }
        let node = super::tables::read_inode(t.inodes()?, dir)?;
        give_rows(t, sink, dir, node, None)?;
    }
    for item in t.tombs()?.iter().map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let tomb: Tomb = serde_json::from_slice(v.value()).map_err(json_err)?;
        if tomb.inode.attr.volume == volume {
            give_rows(t, sink, tomb.inode.attr.ino, None, Some(tomb))?;
        }
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
        // An image's file holds its content alone (`give_rows`).
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
        // and a piece begins with rows a piece before held): its count stays. (Another
        // extent at the same offset cannot come within one image; replaced all the same.)
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
