//! A volume's image read from its JSON as it comes ([`read_pieces`]) and given to a
//! [`Cutter`] an inode at a time; an inode of more rows than a piece holds (a directory of
//! a million names) a part at a time, cut where the cutter would cut it whole: no leader
//! holds an image, or one inode of it, whole in memory (but among members older than
//! split pieces, which need each inode whole in a piece).

use meridian_proto::Hlc;

use super::image::InodeRows;
use super::image_pieces::{Cutter, Emit, ImagePiece, Kind, Parts};
use super::tables::Tomb;
use super::types::*;
use meridian_proto::InodeId;

/// What [`read_pieces`] read of an image.
#[derive(Debug)]
pub struct ImageRead {
    /// The volume's name.
    pub name: String,
    /// Its inodes.
    pub inodes: u64,
}

/// Reads an image of `volume` as JSON from `from` and gives its pieces to `emit` as they
/// fill, a row at a time: the image, or one inode of it, is never whole in memory (an
/// image of a million files is about 650 MB of JSON), and the first pieces of an inode
/// may go before the rest of its rows is read (a damaged rest fails the reading as any
/// damage does). `emit` returns `false` to stop the reading.
/// An image of another volume, or damaged, or with its fields other than exactly
/// `point`, `volume`, `inodes`, `tombs`, `records` in that order (as it is written), or
/// without an inode, is an error. The last pieces (the volume's row, which makes the
/// volume appear) are given only once the whole document was read; pieces given before an
/// error stay given (the caller starts over: a new image wipes them, the same one skips
/// them).
pub fn read_pieces(
    from: impl std::io::Read,
    volume: u32,
    limit: usize,
    whole: bool,
    emit: impl FnMut(ImagePiece) -> bool,
) -> Result<ImageRead, String> {
    use serde::de::DeserializeSeed;
    let mut stream = Stream {
        volume,
        limit,
        whole,
        emit,
        point: None,
        row: None,
        cutter: None,
        inodes: 0,
        fields: 0,
        last: None,
    };
    let mut de = serde_json::Deserializer::from_reader(from);
    Top(&mut stream)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("a damaged image: {e}"))?;
    let last = match stream.last.take() {
        Some(last) if stream.fields == FIELDS.len() && stream.inodes > 0 => last,
        _ => return Err("a damaged image: a field or its inodes are missing".into()),
    };
    stream.give(last)?;
    Ok(ImageRead {
        name: stream.row.map(|v| v.name).unwrap_or_default(),
        inodes: stream.inodes,
    })
}

/// An image being read ([`read_pieces`]).
struct Stream<F> {
    volume: u32,
    limit: usize,
    whole: bool,
    emit: F,
    point: Option<Hlc>,
    row: Option<Volume>,
    cutter: Option<Cutter>,
    inodes: u64,
    /// The fields read so far ([`FIELDS`]).
    fields: usize,
    /// The last pieces, given once the whole document was read.
    last: Option<Vec<ImagePiece>>,
}

/// An image's fields, in the order they are written (`VolumeImage`, `JsonImage`).
const FIELDS: [&str; 5] = ["point", "volume", "inodes", "tombs", "records"];

impl<F: FnMut(ImagePiece) -> bool> Stream<F> {
    /// Runs `f` with the cutter (made once the point and the volume are known) and the
    /// caller's `emit`, which may stop the cutting.
    fn cut(
        &mut self,
        f: impl FnOnce(&mut Cutter, Emit<'_>) -> Result<(), NsError>,
    ) -> Result<(), String> {
        let (Some(point), Some(_)) = (self.point, &self.row) else {
            return Err("rows before the image's point and volume".into());
        };
        let (volume, limit, whole) = (self.volume, self.limit, self.whole);
        let cutter = self
            .cutter
            .get_or_insert_with(|| Cutter::new(volume, point, limit, whole));
        let emit = &mut self.emit;
        let mut give = |piece| {
            if emit(piece) {
                Ok(())
            } else {
                Err(NsError::Invalid("the install stopped".into()))
            }
        };
        f(cutter, &mut give).map_err(|e| e.to_string())
    }

    fn give(&mut self, pieces: Vec<ImagePiece>) -> Result<(), String> {
        for piece in pieces {
            if !(self.emit)(piece) {
                return Err("the install stopped".into());
            }
        }
        Ok(())
    }

    fn finish(&mut self, records: Vec<Record>) -> Result<(), String> {
        self.cut(|_, _| Ok(()))?;
        let (Some(cutter), Some(row)) = (self.cutter.take(), self.row.take()) else {
            return Err("an image without its volume".into());
        };
        let pieces = cutter.finish(&row, &records).map_err(|e| e.to_string())?;
        self.row = Some(row);
        self.last = Some(pieces);
        Ok(())
    }
}

/// The image's fields, in the order it is written (`VolumeImage`).
struct Top<'s, F>(&'s mut Stream<F>);

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::DeserializeSeed<'de> for Top<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::Visitor<'de> for Top<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a volume's image")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let s = self.0;
        while let Some(key) = map.next_key::<String>()? {
            if FIELDS.get(s.fields) != Some(&key.as_str()) {
                return Err(A::Error::custom(format!(
                    "field {key:?} where the image has {:?}",
                    FIELDS.get(s.fields)
                )));
            }
            s.fields += 1;
            match key.as_str() {
                "point" => s.point = Some(map.next_value()?),
                "volume" => {
                    let row: Volume = map.next_value()?;
                    if row.id != s.volume {
                        return Err(A::Error::custom(format!(
                            "asked for volume {} and was sent volume {}",
                            s.volume, row.id
                        )));
                    }
                    s.row = Some(row);
                }
                "inodes" => map.next_value_seed(Rows(&mut *s, false))?,
                "tombs" => map.next_value_seed(Rows(&mut *s, true))?,
                "records" => {
                    let records: Vec<Record> = map.next_value()?;
                    s.finish(records).map_err(A::Error::custom)?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The image's inodes (or, `.1`, its tombstones), one at a time.
struct Rows<'s, F>(&'s mut Stream<F>, bool);

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::DeserializeSeed<'de> for Rows<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::Visitor<'de> for Rows<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an image's inodes or tombstones")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (s, tombs) = (self.0, self.1);
        if tombs {
            while seq.next_element_seed(TombRows(&mut *s))?.is_some() {}
        } else {
            while seq.next_element_seed(EntryRows(&mut *s, None))?.is_some() {
                s.inodes += 1;
            }
        }
        Ok(())
    }
}

/// A tombstone and its rows (`(Tomb, InodeRows)`), the rows a row at a time.
struct TombRows<'s, F>(&'s mut Stream<F>);

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::DeserializeSeed<'de> for TombRows<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::Visitor<'de> for TombRows<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tombstone and its rows")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let tomb: Tomb = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("a tombstone without it"))?;
        seq.next_element_seed(EntryRows(self.0, Some(tomb)))?
            .ok_or_else(|| A::Error::custom("a tombstone without its rows"))?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("a tombstone with more than its rows"));
        }
        Ok(())
    }
}

/// One inode's rows (`InodeRows`; with `.1`, a tombstone's), given to the cutter a row at a
/// time: a directory of a million names is never whole in memory here. The rows go to the
/// cutter by kind in [`Kind`]'s order, as it takes them given whole; a kind that comes
/// before its turn (or before the inode) is held until then (as written, none does).
struct EntryRows<'s, F>(&'s mut Stream<F>, Option<Tomb>);

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::DeserializeSeed<'de> for EntryRows<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// Rows of an inode read before their turn ([`EntryRows`]).
#[derive(Default)]
struct Held {
    dirents: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    extents: Option<Vec<Extent>>,
}

impl<F: FnMut(ImagePiece) -> bool> Stream<F> {
    /// Gives `parts` the held rows whose turn it is, from kind `next` on; the kind whose
    /// turn it is then.
    fn give_held(
        &mut self,
        parts: &mut Parts,
        held: &mut Held,
        mut next: usize,
    ) -> Result<usize, String> {
        loop {
            match next {
                0 if held.dirents.is_some() => {
                    for d in held.dirents.take().unwrap_or_default() {
                        self.cut(|c, emit| {
                            c.row(parts, Kind::Dirent, d, |r| &mut r.dirents, emit)
                        })?;
                    }
                }
                1 if held.xattrs.is_some() => {
                    for x in held.xattrs.take().unwrap_or_default() {
                        self.cut(|c, emit| c.row(parts, Kind::Xattr, x, |r| &mut r.xattrs, emit))?;
                    }
                }
                2 if held.extents.is_some() => {
                    for e in held.extents.take().unwrap_or_default() {
                        self.cut(|c, emit| {
                            c.row(parts, Kind::Extent, e, |r| &mut r.extents, emit)
                        })?;
                    }
                }
                _ => return Ok(next),
            }
            next += 1;
        }
    }
}

impl<'de, F: FnMut(ImagePiece) -> bool> serde::de::Visitor<'de> for EntryRows<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an inode's rows")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let (s, mut tomb) = (self.0, self.1);
        let (mut ino, mut inode): (Option<InodeId>, Option<Option<Inode>>) = (None, None);
        let mut parts: Option<Parts> = None;
        let mut held = Held::default();
        // The kind whose turn it is, and the kinds read.
        let (mut next, mut seen) = (0, [false; 3]);
        while let Some(key) = map.next_key::<String>()? {
            let kind = match key.as_str() {
                "ino" if ino.is_none() => {
                    ino = Some(map.next_value()?);
                    None
                }
                "inode" if inode.is_none() => {
                    inode = Some(map.next_value()?);
                    None
                }
                "dirents" => Some(Kind::Dirent),
                "xattrs" => Some(Kind::Xattr),
                "extents" => Some(Kind::Extent),
                "ino" | "inode" => return Err(A::Error::custom(format!("field {key:?} twice"))),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    None
                }
            };
            if let Some(kind) = kind {
                let k = kind as usize;
                if std::mem::replace(&mut seen[k], true) {
                    return Err(A::Error::custom(format!("field {key:?} twice")));
                }
                match parts.as_mut().filter(|_| next == k) {
                    // Its turn: a row at a time.
                    Some(p) => {
                        let s = &mut *s;
                        match kind {
                            Kind::Dirent => map.next_value_seed(Items {
                                s,
                                parts: p,
                                kind,
                                rows: |r| &mut r.dirents,
                            })?,
                            Kind::Xattr => map.next_value_seed(Items {
                                s,
                                parts: p,
                                kind,
                                rows: |r| &mut r.xattrs,
                            })?,
                            Kind::Extent => map.next_value_seed(Items {
                                s,
                                parts: p,
                                kind,
                                rows: |r| &mut r.extents,
                            })?,
                        }
                        next += 1;
                    }
                    None => match kind {
                        Kind::Dirent => held.dirents = Some(map.next_value()?),
                        Kind::Xattr => held.xattrs = Some(map.next_value()?),
                        Kind::Extent => held.extents = Some(map.next_value()?),
                    },
                }
            }
            if parts.is_none()
                && let (Some(ino), Some(inode)) = (ino, &mut inode)
            {
                let (inode, tomb) = (inode.take(), tomb.take());
                s.cut(|c, _| {
                    parts = Some(c.parts(ino, inode, tomb));
                    Ok(())
                })
                .map_err(A::Error::custom)?;
            }
            if let Some(p) = parts.as_mut() {
                next = s.give_held(p, &mut held, next).map_err(A::Error::custom)?;
            }
        }
        let Some(parts) = parts.filter(|_| next == 3) else {
            return Err(A::Error::custom("an inode's rows without all their fields"));
        };
        s.cut(|c, emit| c.end_parts(parts, emit))
            .map_err(A::Error::custom)
    }
}

/// The rows of one kind of an inode's ([`EntryRows`]), one at a time.
struct Items<'a, F, T> {
    s: &'a mut Stream<F>,
    parts: &'a mut Parts,
    kind: Kind,
    rows: fn(&mut InodeRows) -> &mut Vec<T>,
}

impl<'de, F, T> serde::de::DeserializeSeed<'de> for Items<'_, F, T>
where
    F: FnMut(ImagePiece) -> bool,
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F, T> serde::de::Visitor<'de> for Items<'_, F, T>
where
    F: FnMut(ImagePiece) -> bool,
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an inode's rows of one kind")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let (parts, kind, rows) = (self.parts, self.kind, self.rows);
        while let Some(item) = seq.next_element::<T>()? {
            self.s
                .cut(|c, emit| c.row(parts, kind, item, rows, emit))
                .map_err(A::Error::custom)?;
        }
        Ok(())
    }
}
