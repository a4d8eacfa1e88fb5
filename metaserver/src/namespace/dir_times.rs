//! A directory's times as a register ordered by stamp (ADR 0012), so that records which
//! change different entries of one directory commute.
//!
//! Every record that changes a directory's entries also sets its times. Applied in stamp
//! order, the times are the newest record's; but a late record that merely adds another
//! name must not undo and redo every newer change of the directory to get there. So each
//! record's times are kept here under its stamp, beside the times from before the first
//! record of the merged log that set them (the base), and the directory's row holds the
//! newest. Setting and taking back commute: a record undone out of order takes only its
//! own times out, and the row falls back to the newest left. A record leaving the merged
//! log folds its times into the base; with no record left the register goes, and the row
//! alone holds the times.
//!
//! The link count commutes the same way, by amount (see `Tab::DirBy`).

use meridian_proto::Hlc;
use redb::{ReadableTable, TableDefinition};

use meridian_proto::InodeId;

use super::tables::{Before, Tab, WriteTables, add_count, json_err, read_inode, store_err};
use super::types::{Inode, NsError, Timespec};

/// directory (8 bytes, big endian) ++ stamp key -> mtime ++ ctime (12 bytes each); the
/// base under the zero stamp, followed by the stamp it was set by.
pub const DIR_TIMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dir_times");

/// A directory's modification and change times.
pub(crate) type Times = (Timespec, Timespec);

const ZERO: [u8; Hlc::KEY_LEN] = [0; Hlc::KEY_LEN];

fn damaged() -> NsError {
    NsError::Store("damaged directory times".into())
}

fn key(dir: u64, stamp: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + Hlc::KEY_LEN);
    k.extend_from_slice(&dir.to_be_bytes());
    k.extend_from_slice(stamp);
    k
}

fn encode(times: Times, base_of: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + Hlc::KEY_LEN);
    for ts in [times.0, times.1] {
        v.extend_from_slice(&ts.sec.to_be_bytes());
        v.extend_from_slice(&ts.nsec.to_be_bytes());
    }
    if let Some(stamp) = base_of {
        v.extend_from_slice(stamp);
    }
    v
}

pub(crate) fn decode(v: &[u8]) -> Result<(Times, Vec<u8>), NsError> {
    if v.len() != 24 && v.len() != 24 + Hlc::KEY_LEN {
        return Err(damaged());
    }
    let ts = |b: &[u8]| Timespec {
        sec: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        nsec: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
    };
    let stamp = if v.len() > 24 {
        v[24..].to_vec()
    } else {
        ZERO.to_vec()
    };
    Ok(((ts(&v[..12]), ts(&v[12..24])), stamp))
}

/// The newest entry of `dir`'s register: its key and times. The base stands under the
/// zero stamp but holds the stamp it was set by: newer than an entry left (records leave
/// the merged log oldest first, so that does not happen; it is read right if it does).
fn newest_entry(t: &WriteTables<'_>, dir: u64) -> Result<Option<(Vec<u8>, Times)>, NsError> {
    let (from, to) = (key(dir, &ZERO), key(dir, &[0xff; Hlc::KEY_LEN]));
    let Some(item) = t
        .dir_times
        .open()?
        .range(from.as_slice()..=to.as_slice())
        .map_err(store_err)?
        .next_back()
    else {
        return Ok(None);
    };
    let (k, v) = item.map_err(store_err)?;
    let (k, times) = (k.value().to_vec(), decode(v.value())?.0);
    if k != from
        && let Some(b) = t
            .dir_times
            .open()?
            .get(from.as_slice())
            .map_err(store_err)?
    {
        let (base, base_of) = decode(b.value())?;
        if base_of.as_slice() > &k[8..] {
            return Ok(Some((from, base)));
        }
    }
    Ok(Some((k, times)))
}

/// Forgets `dir`'s register (the directory left this region with its volume).
pub(crate) fn drop_dir(t: &mut WriteTables<'_>, dir: u64) -> Result<(), NsError> {
    let (from, to) = (key(dir, &ZERO), key(dir, &[0xff; Hlc::KEY_LEN]));
    let mut keys = Vec::new();
    for item in t
        .dir_times
        .open()?
        .range(from.as_slice()..=to.as_slice())
        .map_err(store_err)?
    {
        keys.push(item.map_err(store_err)?.0.value().to_vec());
    }
    for k in keys {
        t.dir_times
            .open_mut()?
            .remove(k.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}

/// Notes that the record stamped `stamp` set `dir`'s times to `times`; `current` are the
/// directory's times now, which become the base if no record of the merged log set them.
/// Returns the times the directory has then: the newest set.
pub(crate) fn set(
    t: &mut WriteTables<'_>,
    dir: u64,
    stamp: Hlc,
    times: Times,
    current: Times,
) -> Result<Times, NsError> {
    if newest_entry(t, dir)?.is_none() {
        t.dir_times
            .open_mut()?
            .insert(
                key(dir, &ZERO).as_slice(),
                encode(current, Some(&ZERO)).as_slice(),
            )
            .map_err(store_err)?;
    }
    t.dir_times
        .open_mut()?
        .insert(
            key(dir, &stamp.to_key()).as_slice(),
            encode(times, None).as_slice(),
        )
        .map_err(store_err)?;
    Ok(newest_entry(t, dir)?.map_or(times, |(_, n)| n))
}

/// Takes back the times the record stamped `stamp` (a stamp key) set on `dir`. Returns
/// the times the directory has then (none: it has no register, the row stands).
pub(crate) fn unset(
    t: &mut WriteTables<'_>,
    dir: u64,
    stamp: &[u8],
) -> Result<Option<Times>, NsError> {
    t.dir_times
        .open_mut()?
        .remove(key(dir, stamp).as_slice())
        .map_err(store_err)?;
    let base = key(dir, &ZERO);
    match newest_entry(t, dir)? {
        Some((k, times)) if k == base => {
            // No record left that set them: the row alone holds them.
            t.dir_times
                .open_mut()?
                .remove(base.as_slice())
                .map_err(store_err)?;
            Ok(Some(times))
        }
        other => Ok(other.map(|(_, times)| times)),
    }
}

/// The record stamped `stamp` (a stamp key) left the merged log for good: the times it
/// set on `dir`, if newer than the base's, become the base.
pub(crate) fn settle(t: &mut WriteTables<'_>, dir: u64, stamp: &[u8]) -> Result<(), NsError> {
    let Some(v) = t
        .dir_times
        .open_mut()?
        .remove(key(dir, stamp).as_slice())
        .map_err(store_err)?
    else {
        return Ok(());
    };
    let (times, _) = decode(v.value())?;
    drop(v);
    let base = key(dir, &ZERO);
    let base_of = match t
        .dir_times
        .open()?
        .get(base.as_slice())
        .map_err(store_err)?
    {
        Some(b) => Some(decode(b.value())?.1),
        None => None,
    };
    if base_of.as_deref().is_none_or(|b| b < stamp) {
        t.dir_times
            .open_mut()?
            .insert(base.as_slice(), encode(times, Some(stamp)).as_slice())
            .map_err(store_err)?;
    }
    if newest_entry(t, dir)?.is_some_and(|(k, _)| k == base) {
        t.dir_times
            .open_mut()?
            .remove(base.as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}

/// A directory's row, changed within a record so that it commutes (see the module).
impl WriteTables<'_> {
    /// Writes directory `inode`'s row whole within the record stamped `stamp`, its times
    /// through its register (a whole write meets every change of its entries, so its
    /// image restores the row; the register takes its times back out).
    pub(super) fn put_dir_row(&mut self, inode: &Inode, stamp: Hlc) -> Result<(), NsError> {
        let ino = inode.attr.ino;
        let current = read_inode(self.inodes()?, ino)?.unwrap_or_else(|| inode.clone());
        let mut node = inode.clone();
        (node.attr.mtime, node.attr.ctime) = set(
            self,
            ino.0,
            stamp,
            (inode.attr.mtime, inode.attr.ctime),
            (current.attr.mtime, current.attr.ctime),
        )?;
        let bytes = serde_json::to_vec(&node).map_err(json_err)?;
        self.write(Tab::Inodes, &ino.0.to_be_bytes(), Some(&bytes))?;
        self.note_dir_change(ino, stamp, 0, true)
    }

    /// Changes directory `dir` for a change of its entries: its link count by `nlink_by`,
    /// and its times to `now` if given. Within a record this commutes with other records'
    /// changes of other entries: the count is remembered by amount and the times go
    /// through the directory's register (see `dir_times`).
    pub(crate) fn change_dir(
        &mut self,
        dir: InodeId,
        nlink_by: i64,
        now: Option<Timespec>,
    ) -> Result<(), NsError> {
        let mut node = read_inode(self.inodes()?, dir)?
            .ok_or_else(|| NsError::NotFound(format!("directory {dir}")))?;
        node.attr.nlink = add_count(node.attr.nlink, nlink_by);
        let Some(stamp) = self.recording() else {
            if let Some(now) = now {
                (node.attr.mtime, node.attr.ctime) = (now, now);
            }
            return self.put_inode(&node);
        };
        if let Some(now) = now {
            let current = (node.attr.mtime, node.attr.ctime);
            (node.attr.mtime, node.attr.ctime) = set(self, dir.0, stamp, (now, now), current)?;
        }
        self.put_inode_row(&node)?;
        self.note_dir_change(dir, stamp, nlink_by, now.is_some())
    }

    fn note_dir_change(
        &mut self,
        dir: InodeId,
        stamp: Hlc,
        nlink_by: i64,
        timed: bool,
    ) -> Result<(), NsError> {
        if let Some(u) = self.undo.as_mut() {
            let mut key = dir.0.to_be_bytes().to_vec();
            key.extend_from_slice(&stamp.to_key());
            let mut by = nlink_by.to_be_bytes().to_vec();
            by.push(u8::from(timed));
            u.push(Before(Tab::DirBy, key, Some(by)));
        }
        Ok(())
    }

    /// Undoes one [`Tab::DirBy`] change.
    pub(super) fn take_back_dir_change(
        &mut self,
        key: &[u8],
        val: Option<&[u8]>,
    ) -> Result<(), NsError> {
        let damaged = || NsError::Store("damaged directory change".into());
        let (dir, stamp) = key.split_first_chunk::<8>().ok_or_else(damaged)?;
        let dir = InodeId(u64::from_be_bytes(*dir));
        let (by, timed) = val
            .and_then(|v| v.split_first_chunk::<8>())
            .ok_or_else(damaged)?;
        let times = match timed {
            [0] => None,
            [1] => unset(self, dir.0, stamp)?,
            _ => return Err(damaged()),
        };
        let Some(mut node) = read_inode(self.inodes()?, dir)? else {
            return Ok(()); // gone meanwhile (with a record that met this one's)
        };
        node.attr.nlink = add_count(node.attr.nlink, i64::from_be_bytes(*by).saturating_neg());
        if let Some((m, c)) = times {
            (node.attr.mtime, node.attr.ctime) = (m, c);
        }
        self.put_inode_row(&node)
    }
}

/// Every directory's register: the directory and the newest times in it (for checks).
pub fn newest_all(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Vec<(u64, Times)>, NsError> {
    let mut out: Vec<(u64, Times)> = Vec::new();
    for item in t.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let dir = k
            .value()
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(damaged)?;
        let times = decode(v.value())?.0;
        match out.last_mut() {
            Some((d, t)) if *d == dir => *t = times,
            _ => out.push((dir, times)),
        }
    }
    Ok(out)
}
