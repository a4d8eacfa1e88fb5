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
//! so the volume appears whole or not at all. The image itself, built and installed, is
//! `image`'s.

use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::ctx::find_volume;
use super::merge::{self, StateTable};
use super::tables::{Tab, WriteTables, dirent_end, dirent_key, read_extents, store_err};
use super::types::*;

pub(crate) use super::image::install;
use super::image::wipe;
pub use super::image::{
    ImagePart, ImageSink, InodeRows, JsonImage, ROWS_PAGE, VolumeImage, build_image,
    build_image_into,
};
pub use super::image_pieces::{Cutter, ImagePiece, NEEDS_SPLIT, PART_INODES, PART_JSON, WHOLE_MAX};
pub use super::image_read::{ImageRead, read_pieces};
pub use super::image_ready::{RECORDS_MAX, Readiness, readiness};

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
    /// They were cut with each inode whole (`ImagePart::whole`): the rest must be too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole: bool,
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

pub(super) fn put(t: &mut WriteTables<'_>, b: &Backfill) -> Result<(), NsError> {
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
            whole: false,
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
