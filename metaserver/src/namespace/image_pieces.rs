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
//! others. An image that needs none of it is cut as before.

use std::collections::VecDeque;

use meridian_proto::Hlc;
use serde::Serialize;

use super::backfill::json_err;
use super::image::{ImagePart, InodeRows, VolumeImage};
use super::tables::Tomb;
use super::types::*;

/// The most inodes (and tombstones) in one piece.
pub const PART_INODES: usize = 2000;
/// About the most bytes of JSON of a piece's rows. The entry carrying them is about four
/// times as large (each byte of that JSON is a number in the entry's own JSON), well within
/// the 64 MiB a member takes in one message, and every member of the receiving region
/// applies a piece at once, holding its other changes meanwhile.
pub const PART_JSON: usize = 2 << 20;

/// One piece of an image, to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePiece {
    /// The piece.
    pub part: ImagePart,
    /// It carries rows of an inode begun in a piece before, or tombstones before the last
    /// piece: it is installed by `Request::InstallImageSplit`.
    pub split: bool,
}

/// What goes into a piece: an inode's rows (with the inode, or going on from a piece
/// before), or a tombstone with its rows.
enum Entry {
    Rows(InodeRows),
    Tomb(Box<Tomb>, InodeRows),
}

/// The pieces of an image, made one at a time (a piece's JSON is made when it is asked
/// for, and the rows it took are let go).
pub struct Pieces {
    volume: Volume,
    point: Hlc,
    index: u32,
    inodes: std::vec::IntoIter<InodeRows>,
    /// Tombstones that go in pieces before the last, with their sizes.
    tombs: VecDeque<(Tomb, InodeRows, usize)>,
    /// Tombstones that ride in the last piece.
    last_tombs: Vec<(Tomb, InodeRows)>,
    records: Vec<Record>,
    /// What did not fit in the piece before, with its size.
    carry: Option<(Entry, usize)>,
    done: bool,
    /// About the most bytes of JSON of a piece's rows.
    limit: usize,
}

impl VolumeImage {
    /// The image in pieces of at most [`PART_INODES`] inodes and about [`PART_JSON`]
    /// bytes of rows; the volume's row (with the tombstones when they fit and the records)
    /// last.
    pub fn pieces(self) -> Pieces {
        self.pieces_within(PART_JSON)
    }

    /// The image in pieces of about `limit` bytes of rows as JSON (tests cut small
    /// images as large ones are cut).
    pub fn pieces_within(self, limit: usize) -> Pieces {
        let tombs: VecDeque<_> = self
            .tombs
            .into_iter()
            .map(|(tomb, rows)| {
                let size = json_len(&tomb) + json_len(&rows) + 4;
                (tomb, rows, size)
            })
            .collect();
        let fit = tombs.len() <= PART_INODES
            && tombs.iter().map(|(_, _, size)| size).sum::<usize>() <= limit;
        let (tombs, last_tombs) = if fit {
            let last = tombs.into_iter().map(|(t, r, _)| (t, r)).collect();
            (VecDeque::new(), last)
        } else {
            (tombs, Vec::new())
        };
        Pieces {
            point: self.point,
            index: 0,
            inodes: self.inodes.into_iter(),
            tombs,
            last_tombs,
            records: self.records,
            carry: None,
            done: false,
            limit,
            volume: self.volume,
        }
    }

    /// Every piece of the image ([`VolumeImage::pieces`]).
    pub fn parts(self) -> Result<Vec<ImagePiece>, NsError> {
        self.pieces().collect()
    }
}

impl Pieces {
    fn next_entry(&mut self) -> Option<(Entry, usize)> {
        if let Some(c) = self.carry.take() {
            return Some(c);
        }
        if let Some(rows) = self.inodes.next() {
            let size = json_len(&rows);
            return Some((Entry::Rows(rows), size));
        }
        self.tombs
            .pop_front()
            .map(|(tomb, rows, size)| (Entry::Tomb(Box::new(tomb), rows), size))
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
                volume: self.volume.id,
                point: self.point,
                index,
                inodes,
                tombs,
                finish,
            },
            split,
        }
    }

    fn make(&mut self) -> Result<Option<ImagePiece>, NsError> {
        let mut inodes: Vec<InodeRows> = Vec::new();
        let mut tombs: Vec<(Tomb, InodeRows)> = Vec::new();
        let mut bytes = 0;
        let mut push = |entry: Entry| match entry {
            Entry::Rows(rows) => inodes.push(rows),
            Entry::Tomb(tomb, rows) => tombs.push((*tomb, rows)),
        };
        let mut count = 0;
        while count < PART_INODES {
            let Some((entry, size)) = self.next_entry() else {
                break;
            };
            if bytes + size > self.limit {
                if count > 0 {
                    self.carry = Some((entry, size));
                    break;
                }
                // More than a piece holds on its own: the rows that fit now, the rest in
                // the pieces after.
                let (head, rest) = cut(entry, size, self.limit);
                push(head);
                self.carry = rest;
                count += 1;
                break;
            }
            push(entry);
            bytes += size + 1;
            count += 1;
        }
        if count > 0 {
            let split = !tombs.is_empty() || inodes.iter().any(|r| r.inode.is_none());
            let tombs = if tombs.is_empty() {
                Vec::new()
            } else {
                serde_json::to_vec(&tombs).map_err(json_err)?
            };
            let inodes = serde_json::to_vec(&inodes).map_err(json_err)?;
            return Ok(Some(self.piece(inodes, tombs, None, split)));
        }
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let finish = serde_json::to_vec(&(
            &self.volume,
            std::mem::take(&mut self.last_tombs),
            std::mem::take(&mut self.records),
        ))
        .map_err(json_err)?;
        Ok(Some(self.piece(
            b"[]".to_vec(),
            Vec::new(),
            Some(finish),
            false,
        )))
    }
}

impl Iterator for Pieces {
    type Item = Result<ImagePiece, NsError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.make().transpose()
    }
}

/// The first rows of `entry` (of about `size` bytes of JSON) that fit in `room` bytes,
/// at least one, with the inode or the tombstone; and the rest, without it, if any.
fn cut(entry: Entry, size: usize, room: usize) -> (Entry, Option<(Entry, usize)>) {
    let (tomb, mut rows) = match entry {
        Entry::Rows(rows) => (None, rows),
        Entry::Tomb(tomb, rows) => (Some(tomb), rows),
    };
    let mut head = InodeRows {
        ino: rows.ino,
        inode: rows.inode.take(),
        ..Default::default()
    };
    let mut used = json_len(&head) + tomb.as_ref().map_or(0, json_len);
    let start = used;
    let mut any = false;
    let n = fitting(&rows.dirents, room, &mut used, &mut any);
    head.dirents = rows.dirents.drain(..n).collect();
    if rows.dirents.is_empty() {
        let n = fitting(&rows.xattrs, room, &mut used, &mut any);
        head.xattrs = rows.xattrs.drain(..n).collect();
        if rows.xattrs.is_empty() {
            let n = fitting(&rows.extents, room, &mut used, &mut any);
            head.extents = rows.extents.drain(..n).collect();
        }
    }
    let head = match tomb {
        Some(tomb) => Entry::Tomb(tomb, head),
        None => Entry::Rows(head),
    };
    if rows.dirents.is_empty() && rows.xattrs.is_empty() && rows.extents.is_empty() {
        return (head, None);
    }
    let rest = size.saturating_sub(used - start) + json_len(&InodeRows::default());
    (head, Some((Entry::Rows(rows), rest)))
}

/// How many of `items`, from the first, fit in what is left of `room` after `used`
/// (added to it); the first item of all (`any` not yet set) fits whatever its size.
fn fitting<T: Serialize>(items: &[T], room: usize, used: &mut usize, any: &mut bool) -> usize {
    let mut n = 0;
    for item in items {
        let len = json_len(item) + 1;
        if *any && *used + len > room {
            break;
        }
        *used += len;
        *any = true;
        n += 1;
    }
    n
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
