//! A volume's image cut into pieces of bounded size, each installed by one Raft entry.
//!
//! A piece holds whole inodes (and tombstones) while they fit. One with more rows than a
//! piece holds (a directory of many names, a file of many extents) goes on over the pieces
//! after it: the first holds the inode and the rows that fit, the next ones its further
//! rows, without the inode. Tombstones ride in the last piece when they all fit there, and
//! otherwise go in pieces of their own before it.
//!
//! A piece of the rows of an inode begun before, or with tombstones before the last piece,
//! is one an older member would not install as meant (it refuses rows without their inode,
//! and does not know a piece's tombstones): it goes by a request such a member cannot read
//! at all ([`ImagePiece::split`]), so that no member installs it differently from the
//! others. An image that needs none of it goes in the format it always had.
//!
//! A region whose group has a member older than `InstallImageSplit` (the version gate,
//! `MetaNode::group_reads`) gets the image cut so that such a member can install every
//! piece by the request it reads: each inode whole in a piece however large, the
//! tombstones all in the last piece ([`Cutter::new`]'s `whole`), and an image that cannot
//! be cut so within what a member takes in one message ([`WHOLE_MAX`]) waits for the
//! upgrade. Its pieces say so (`ImagePart::whole`), and the install notes it, so that a
//! leader of this version going on with the install cuts the rest the same way.
//!
//! The pieces are cut as the image's inodes come ([`Cutter`]), and an image is read from
//! its JSON a row at a time (`image_read.rs`): the receiving leader never holds it, or one
//! inode of it, whole (but in a piece cut whole).

use meridian_proto::{Hlc, InodeId};
use serde::Serialize;

use super::backfill::json_err;
use super::image::{ImagePart, InodeRows, VolumeImage};
use super::tables::Tomb;
use super::types::*;

/// The most inodes (and tombstones) in one piece.
pub const PART_INODES: usize = 2000;
/// About the most bytes of JSON of a piece's rows (but in a piece cut whole: [`WHOLE_MAX`]).
/// The entry carrying them is about four times as large (each byte of that JSON is a
/// number in the entry's own JSON), within the 64 MiB a member takes in one message, and
/// every member of the receiving region applies a piece at once, holding its other
/// changes meanwhile.
pub const PART_JSON: usize = 2 << 20;

/// The most bytes of rows' JSON in a piece cut whole (for members older than split
/// pieces): its entry is up to four times as large, within the 64 MiB a member takes in
/// one message. An inode of more, or more tombstones than that, is refused until the
/// members are upgraded ([`NEEDS_SPLIT`]).
pub const WHOLE_MAX: usize = 12 << 20;

/// What the refusal of an image a piece cut whole cannot hold says.
pub const NEEDS_SPLIT: &str = "more than a piece for members older than split pieces holds";

/// Where a [`Cutter`] gives its pieces as they fill (an error stops the cutting).
pub type Emit<'a> = &'a mut dyn FnMut(ImagePiece) -> Result<(), NsError>;

/// One piece of an image, to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePiece {
    /// The piece.
    pub part: ImagePart,
    /// It carries rows of an inode begun in a piece before, or tombstones before the last
    /// piece: it is installed by `Request::InstallImageSplit`.
    pub split: bool,
    /// The inodes it begins (those it carries with their inode): what installing it adds
    /// to `Backfill::inodes`.
    pub heads: u64,
}

/// What goes into a piece: an inode's rows (with the inode, or going on from a piece
/// before), or a tombstone with its rows.
enum Entry {
    Rows(InodeRows),
    Tomb(Box<Tomb>, InodeRows),
}

/// Cuts an image into pieces as its inodes and tombstones are given to it, in the image's
/// order ([`Cutter::inode`], [`Cutter::tomb`], or a row at a time: [`Cutter::parts`],
/// [`Cutter::row`], [`Cutter::end_parts`]; then [`Cutter::finish`]): an image need not be
/// whole in memory to be cut (`read_pieces`).
pub struct Cutter {
    volume: u32,
    point: Hlc,
    /// About the most bytes of JSON of a piece's rows.
    limit: usize,
    index: u32,
    /// The piece being filled, and its bytes so far.
    inodes: Vec<InodeRows>,
    tombs: Vec<(Tomb, InodeRows)>,
    bytes: usize,
    /// Tombstones held back while they may all ride in the last piece, and their bytes.
    held: Vec<(Tomb, InodeRows, usize)>,
    held_bytes: usize,
    /// They did not all fit: they go in pieces before the last.
    tombs_in_pieces: bool,
    /// Each inode whole in a piece, the tombstones in the last: no piece is split.
    whole: bool,
}

impl Cutter {
    /// The cutter of the image of `volume` at `point`, in pieces of about `limit` bytes
    /// of rows as JSON (tests cut small images as large ones are cut); with `whole`, an
    /// inode of more rows than that in a piece of its own, and every tombstone in the
    /// last piece, however large (for members older than `InstallImageSplit`).
    pub fn new(volume: u32, point: Hlc, limit: usize, whole: bool) -> Self {
        Cutter {
            volume,
            point,
            limit,
            index: 0,
            inodes: Vec::new(),
            tombs: Vec::new(),
            bytes: 0,
            held: Vec::new(),
            held_bytes: 0,
            tombs_in_pieces: false,
            whole,
        }
    }

    /// Adds an inode with its rows; gives `emit` the pieces filled meanwhile, each as
    /// soon as it is (an inode of many rows fills many).
    pub fn inode(&mut self, rows: InodeRows, emit: Emit<'_>) -> Result<(), NsError> {
        let size = json_len(&rows);
        self.add(Entry::Rows(rows), size, emit)
    }

    /// Adds a tombstone with its rows (after every inode); gives `emit` the pieces
    /// filled meanwhile.
    pub fn tomb(&mut self, tomb: Tomb, rows: InodeRows, emit: Emit<'_>) -> Result<(), NsError> {
        let size = json_len(&tomb) + json_len(&rows) + 4;
        if self.tombs_in_pieces {
            return self.add(Entry::Tomb(Box::new(tomb), rows), size, emit);
        }
        self.held.push((tomb, rows, size));
        self.held_bytes += size;
        if self.whole && self.held_bytes > WHOLE_MAX {
            return Err(self.too_large("its tombstones", self.held_bytes));
        }
        if self.whole || (self.held.len() <= PART_INODES && self.held_bytes <= self.limit) {
            return Ok(());
        }
        self.tombs_in_pieces = true;
        for (tomb, rows, size) in std::mem::take(&mut self.held) {
            self.add(Entry::Tomb(Box::new(tomb), rows), size, emit)?;
        }
        Ok(())
    }

    /// The last pieces: what is left, then the volume's row with the tombstones held back
    /// and `records`.
    pub fn finish(
        mut self,
        volume: &Volume,
        records: &[Record],
    ) -> Result<Vec<ImagePiece>, NsError> {
        let mut out = Vec::new();
        if !self.inodes.is_empty() || !self.tombs.is_empty() {
            out.push(self.flush()?);
        }
        let tombs: Vec<(&Tomb, &InodeRows)> = self.held.iter().map(|(t, r, _)| (t, r)).collect();
        let finish = serde_json::to_vec(&(volume, tombs, records)).map_err(json_err)?;
        // Cut whole, the tombstones (up to WHOLE_MAX) and the records (up to the serving
        // region's `RECORDS_MAX`) share the last piece: together they may pass what one
        // entry carries.
        if self.whole && finish.len() > WHOLE_MAX {
            return Err(self.too_large("its tombstones and late records", finish.len()));
        }
        out.push(self.piece(b"[]".to_vec(), Vec::new(), Some(finish), false));
        Ok(out)
    }

    /// The refusal of rows of `size` bytes that no piece cut whole holds.
    fn too_large(&self, what: &str, size: usize) -> NsError {
        NsError::Invalid(format!(
            "the image of volume {}: {what}, {size} bytes of rows, is {NEEDS_SPLIT}; it \
             installs once every member is upgraded",
            self.volume
        ))
    }

    fn add(&mut self, entry: Entry, size: usize, emit: Emit<'_>) -> Result<(), NsError> {
        if self.whole && size > WHOLE_MAX {
            let ino = match &entry {
                Entry::Rows(rows) | Entry::Tomb(_, rows) => rows.ino,
            };
            return Err(self.too_large(&format!("inode {ino}"), size));
        }
        let mut next = Some((entry, size));
        while let Some((entry, size)) = next.take() {
            let count = self.inodes.len() + self.tombs.len();
            if count >= PART_INODES || (count > 0 && self.bytes + size > self.limit) {
                emit(self.flush()?)?;
                next = Some((entry, size));
            } else if size > self.limit && !self.whole {
                // More than a piece holds on its own: a piece for each part but the last,
                // which goes on as any entry does (with what comes after it).
                let parts = cut_all(entry, self.limit);
                let n = parts.len();
                for (i, (part, size)) in parts.into_iter().enumerate() {
                    if i + 1 < n || size > self.limit {
                        self.push(part);
                        emit(self.flush()?)?;
                    } else {
                        next = Some((part, size));
                    }
                }
            } else {
                self.push(entry);
                self.bytes += size + 1;
            }
        }
        Ok(())
    }

    fn push(&mut self, entry: Entry) {
        match entry {
            Entry::Rows(rows) => self.inodes.push(rows),
            Entry::Tomb(tomb, rows) => self.tombs.push((*tomb, rows)),
        }
    }

    /// The piece filled so far.
    fn flush(&mut self) -> Result<ImagePiece, NsError> {
        let (inodes, tombs) = (
            std::mem::take(&mut self.inodes),
            std::mem::take(&mut self.tombs),
        );
        self.bytes = 0;
        let split = !tombs.is_empty() || inodes.iter().any(|r| r.inode.is_none());
        let heads = inodes.iter().filter(|r| r.inode.is_some()).count() as u64;
        let tombs = if tombs.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&tombs).map_err(json_err)?
        };
        let inodes = serde_json::to_vec(&inodes).map_err(json_err)?;
        let mut piece = self.piece(inodes, tombs, None, split);
        piece.heads = heads;
        Ok(piece)
    }

    fn piece(
        &mut self,
        inodes: Vec<u8>,
        tombs: Vec<u8>,
        finish: Option<Vec<u8>>,
        split: bool,
    ) -> ImagePiece {
        let index = self.index;
        self.index += 1;
        ImagePiece {
            part: ImagePart {
                volume: self.volume,
                point: self.point,
                index,
                inodes,
                tombs,
                finish,
                whole: self.whole,
            },
            split,
            heads: 0,
        }
    }
}

impl VolumeImage {
    /// The image in pieces of at most [`PART_INODES`] inodes and about [`PART_JSON`]
    /// bytes of rows; the volume's row (with the tombstones when they fit and the records)
    /// last.
    pub fn parts(self) -> Result<Vec<ImagePiece>, NsError> {
        self.pieces_within(PART_JSON, false)
    }

    /// The image in pieces of about `limit` bytes of rows as JSON (with `whole`, each
    /// inode whole in a piece: [`Cutter::new`]).
    pub fn pieces_within(self, limit: usize, whole: bool) -> Result<Vec<ImagePiece>, NsError> {
        let mut cutter = Cutter::new(self.volume.id, self.point, limit, whole);
        let mut out = Vec::new();
        let mut keep = |p| {
            out.push(p);
            Ok(())
        };
        for rows in self.inodes {
            cutter.inode(rows, &mut keep)?;
        }
        for (tomb, rows) in self.tombs {
            cutter.tomb(tomb, rows, &mut keep)?;
        }
        out.extend(cutter.finish(&self.volume, &self.records)?);
        Ok(out)
    }
}

/// An inode's (or a tombstone's) rows being given to a [`Cutter`] a row at a time, as an
/// image is read ([`Cutter::parts`], [`Cutter::row`], [`Cutter::end_parts`]). They go in
/// the pieces [`Cutter::inode`] or [`Cutter::tomb`] would cut them in given whole, and no
/// more than about a piece of them is held at once (unless the cutter keeps each inode
/// whole).
pub struct Parts {
    tomb: Option<Box<Tomb>>,
    cut: Cut,
    /// The size the cutter would count the rows (and tombstone) as, given whole.
    total: usize,
    /// Rows so far of each kind ([`Kind`]): each after the first adds a comma.
    counts: [usize; 3],
    /// More than a piece: its parts go to the cutter as they fill.
    split: bool,
}

/// A kind of row ([`Cutter::row`]).
#[derive(Clone, Copy)]
pub enum Kind {
    Dirent = 0,
    Xattr = 1,
    Extent = 2,
}

impl Parts {
    /// The next part to go: the first with the tombstone, if it is one's.
    fn entry(&mut self, part: InodeRows) -> Entry {
        match self.tomb.take() {
            Some(tomb) => Entry::Tomb(tomb, part),
            None => Entry::Rows(part),
        }
    }
}

impl Cutter {
    /// The start of the rows of inode `ino` (`inode`, or with `tomb`, a tombstone's rows).
    pub fn parts(&self, ino: InodeId, inode: Option<Inode>, tomb: Option<Tomb>) -> Parts {
        let first = InodeRows {
            ino,
            inode,
            ..Default::default()
        };
        let head = json_len(&first);
        let tomb_len = tomb.as_ref().map_or(0, json_len);
        Parts {
            total: head + if tomb.is_some() { tomb_len + 4 } else { 0 },
            cut: Cut {
                size: head + tomb_len,
                part: first,
                parts: Vec::new(),
                empty: true,
                limit: self.limit,
                base: json_len(&InodeRows {
                    ino,
                    ..Default::default()
                }),
            },
            tomb: tomb.map(Box::new),
            counts: [0; 3],
            split: false,
        }
    }

    /// One more row of `p`, of kind `kind` (the rows of each kind in order, the kinds in
    /// [`Kind`]'s order); gives `emit` the pieces filled meanwhile.
    pub fn row<T: Serialize>(
        &mut self,
        p: &mut Parts,
        kind: Kind,
        item: T,
        rows: fn(&mut InodeRows) -> &mut Vec<T>,
        emit: Emit<'_>,
    ) -> Result<(), NsError> {
        let len = json_len(&item);
        let k = kind as usize;
        debug_assert!(
            p.counts[k + 1..].iter().all(|&n| n == 0),
            "rows of a kind after a later kind's"
        );
        p.total += len + usize::from(p.counts[k] > 0);
        p.counts[k] += 1;
        p.cut.place_sized(item, len + 1, rows);
        if self.whole && p.total > WHOLE_MAX {
            // Refused now, not once all of it is read.
            return Err(self.too_large(&format!("inode {}", p.cut.part.ino), p.total));
        }
        if self.whole || p.total <= self.limit {
            // It may yet be one entry: its parts wait (at most about a piece of them).
            return Ok(());
        }
        if !p.split {
            // As `add` takes an entry larger than a piece: the tombstones held back go in
            // pieces (this one is more than the last piece holds), and the piece being
            // filled goes first.
            p.split = true;
            if p.tomb.is_some() && !self.tombs_in_pieces {
                self.tombs_in_pieces = true;
                for (tomb, rows, size) in std::mem::take(&mut self.held) {
                    self.add(Entry::Tomb(Box::new(tomb), rows), size, emit)?;
                }
            }
            if !self.inodes.is_empty() || !self.tombs.is_empty() {
                emit(self.flush()?)?;
            }
        }
        // Every part but the last, each a piece of its own.
        for (part, _) in std::mem::take(&mut p.cut.parts) {
            let entry = p.entry(part);
            self.push(entry);
            emit(self.flush()?)?;
        }
        Ok(())
    }

    /// The end of `p`'s rows: what is left of them goes as [`Cutter::inode`] or
    /// [`Cutter::tomb`] would send it.
    pub fn end_parts(&mut self, mut p: Parts, emit: Emit<'_>) -> Result<(), NsError> {
        if !p.split {
            let mut parts = std::mem::take(&mut p.cut.parts);
            parts.push((p.cut.part, p.cut.size));
            let mut parts = parts.into_iter().map(|(rows, _)| rows);
            let mut rows = parts.next().unwrap_or_default();
            for more in parts {
                rows.dirents.extend(more.dirents);
                rows.xattrs.extend(more.xattrs);
                rows.extents.extend(more.extents);
            }
            return match p.tomb {
                Some(tomb) => self.tomb(*tomb, rows, emit),
                None => self.inode(rows, emit),
            };
        }
        let size = p.cut.size;
        let last = std::mem::take(&mut p.cut.part);
        let entry = p.entry(last);
        if size > self.limit {
            // One row larger than a piece.
            self.push(entry);
            emit(self.flush()?)
        } else {
            self.add(entry, size, emit)
        }
    }
}

/// `entry` (more than `limit` bytes of JSON) in consecutive parts of at most `limit`
/// bytes each, a row larger than that alone, with their sizes: the first with the inode
/// or the tombstone, the others without it. One pass over the rows: a directory of a
/// million names is cut in time linear in its names.
fn cut_all(entry: Entry, limit: usize) -> Vec<(Entry, usize)> {
    let (tomb, mut rows) = match entry {
        Entry::Rows(rows) => (None, rows),
        Entry::Tomb(tomb, rows) => (Some(tomb), rows),
    };
    let ino = rows.ino;
    let first = InodeRows {
        ino,
        inode: rows.inode.take(),
        ..Default::default()
    };
    let mut cut = Cut {
        size: json_len(&first) + tomb.as_ref().map_or(0, json_len),
        part: first,
        parts: Vec::new(),
        empty: true,
        limit,
        base: json_len(&InodeRows {
            ino,
            ..Default::default()
        }),
    };
    for d in std::mem::take(&mut rows.dirents) {
        cut.place(d, |r| &mut r.dirents);
    }
    for x in std::mem::take(&mut rows.xattrs) {
        cut.place(x, |r| &mut r.xattrs);
    }
    for e in std::mem::take(&mut rows.extents) {
        cut.place(e, |r| &mut r.extents);
    }
    cut.parts.push((cut.part, cut.size));
    let mut parts = cut.parts.into_iter();
    let mut out = Vec::new();
    if let Some((head, size)) = parts.next() {
        let head = match tomb {
            Some(tomb) => Entry::Tomb(tomb, head),
            None => Entry::Rows(head),
        };
        out.push((head, size));
    }
    out.extend(parts.map(|(rows, size)| (Entry::Rows(rows), size)));
    out
}

/// The parts an inode's rows are cut in ([`cut_all`]).
struct Cut {
    parts: Vec<(InodeRows, usize)>,
    /// The part being filled, its size, and whether it holds no row yet.
    part: InodeRows,
    size: usize,
    empty: bool,
    limit: usize,
    /// The size of a part holding no row.
    base: usize,
}

impl Cut {
    fn place<T: Serialize>(&mut self, item: T, rows: fn(&mut InodeRows) -> &mut Vec<T>) {
        let len = json_len(&item) + 1;
        self.place_sized(item, len, rows);
    }

    /// Places `item`, whose JSON and comma are `len` bytes.
    fn place_sized<T>(&mut self, item: T, len: usize, rows: fn(&mut InodeRows) -> &mut Vec<T>) {
        if !self.empty && self.size + len > self.limit {
            let next = InodeRows {
                ino: self.part.ino,
                ..Default::default()
            };
            let done = std::mem::replace(&mut self.part, next);
            self.parts.push((done, self.size));
            self.size = self.base;
        }
        rows(&mut self.part).push(item);
        self.size += len;
        self.empty = false;
    }
}

/// The length of `v`'s JSON.
fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Counting cannot fail; a value that cannot be encoded fails when the piece is made.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}
