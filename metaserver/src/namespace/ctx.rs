//! What applying one operation knows (its stamp, its time, and for a replay what the
//! operation did at its origin), and the lookups every operation shares.

use std::cell::{Cell, RefCell};

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;

pub(crate) use super::tables::deleted_volume_key;
use super::tables::{
    Tab, WriteTables, counter, dirent_end, dirent_key, read_dirent, read_inode, store_err,
};
use super::types::*;

/// What an application of one operation knows and leaves behind.
pub(crate) struct Ctx<'a> {
    /// Wall time for the timestamps the operation sets.
    pub(crate) now: Timespec,
    /// The operation's stamp; its region is the origin.
    pub(crate) hlc: Hlc,
    /// Replaying a record: what it did at its origin.
    pub(crate) replay: Option<&'a Effects>,
    /// What this application did (for the record of a first application).
    pub(crate) out: RefCell<Effects>,
    /// Conflicts recorded so far under this stamp.
    conflicts: Cell<u16>,
    /// The volume a replayed record changes.
    pub(crate) volume: u32,
    /// The inode number a create takes, reserved for its client (checked before).
    pub(crate) given: Option<InodeId>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(hlc: Hlc, now: Timespec, replay: Option<&'a Effects>, volume: u32) -> Self {
        Ctx {
            now,
            hlc,
            replay,
            out: RefCell::new(Effects::default()),
            conflicts: Cell::new(0),
            volume,
            given: None,
        }
    }

    /// The region the operation comes from.
    pub(crate) fn region(&self) -> RegionId {
        self.hlc.region
    }

    /// Whether this is a replay of a record that succeeded at its origin.
    pub(crate) fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// A check that depends on the state where the operation first ran (permissions,
    /// quotas, link limits, xattr create/replace, O_EXCL). It was decided there: a replay
    /// applies what the origin decided and does not run it again, so a record its origin
    /// acknowledged takes effect in every region.
    pub(crate) fn origin_check(
        &self,
        check: impl FnOnce() -> Result<(), NsError>,
    ) -> Result<(), NsError> {
        if self.replaying() { Ok(()) } else { check() }
    }
}

/// A name for messages.
pub(crate) fn name_str(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// "region N", for messages.
pub(crate) fn region_name(r: RegionId) -> String {
    format!("region {}", r.0)
}

/// A live inode, or NotFound.
pub(crate) fn get(t: &WriteTables<'_>, ino: InodeId) -> Result<Inode, NsError> {
    read_inode(t.inodes()?, ino)?.ok_or_else(|| NsError::NotFound(ino.to_string()))
}

/// A live directory, or NotFound / NotDir.
pub(crate) fn get_dir(t: &WriteTables<'_>, ino: InodeId) -> Result<Inode, NsError> {
    let dir = get(t, ino)?;
    if dir.attr.kind != FileKind::Dir {
        return Err(NsError::NotDir(ino.to_string()));
    }
    Ok(dir)
}

/// The next inode number of `region`.
pub(crate) fn new_inode_id(t: &mut WriteTables<'_>, region: RegionId) -> Result<InodeId, NsError> {
    let local = t.next(counter::NEXT_INODE, 1)?;
    InodeId::new(region, local).map_err(|e| NsError::Store(e.to_string()))
}

/// Whether the directory `ino` has no entries.
pub(crate) fn is_empty_dir(t: &WriteTables<'_>, ino: InodeId) -> Result<bool, NsError> {
    let from = dirent_key(ino, b"");
    let to = dirent_end(ino);
    Ok(t.dirents()?
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
        .next()
        .is_none())
}

/// The volume `id`: live (`Some(false)`), kept as a tombstone (`Some(true)`), or either
/// (`None`; an id is never both).
pub(crate) fn find_volume_row(
    t: &WriteTables<'_>,
    id: u32,
    deleted: Option<bool>,
) -> Result<Option<Volume>, NsError> {
    super::volume_ids::volume_row_by_id(t.volumes()?, id, deleted)
}

/// The live volume `id`.
pub(crate) fn find_volume(t: &WriteTables<'_>, id: u32) -> Result<Option<Volume>, NsError> {
    find_volume_row(t, id, Some(false))
}

/// The volume of an inode. Missing, the operation fails (never the state machine).
pub(crate) fn volume_of(t: &WriteTables<'_>, id: u32) -> Result<Volume, NsError> {
    find_volume(t, id)?.ok_or_else(|| NsError::NotFound(format!("volume {id} of an inode")))
}

/// `name.conflict-<region>-<ms>[-<counter>]` for the change stamped `stamp`, cut to fit
/// NAME_MAX, and if that is taken too, the first free of the same with `~2`, `~3`, ...
/// (the same everywhere: every region holds the same entries at this point).
pub(crate) fn conflict_name(
    t: &WriteTables<'_>,
    dir: InodeId,
    name: &[u8],
    stamp: Hlc,
) -> Result<Vec<u8>, NsError> {
    let mut base = format!(".conflict-{}-{}", stamp.region.0, stamp.wall_ms);
    if stamp.counter > 0 {
        base.push_str(&format!("-{}", stamp.counter));
    }
    for n in 1..1000u32 {
        let suffix = if n == 1 {
            base.clone()
        } else {
            format!("{base}~{n}")
        };
        let keep = name.len().min(NAME_MAX - suffix.len());
        let mut out = name[..keep].to_vec();
        out.extend_from_slice(suffix.as_bytes());
        if read_dirent(t.dirents()?, dir, &out)?.is_none() {
            return Ok(out);
        }
    }
    Err(NsError::Exists(format!(
        "every conflict name of {:?} in {dir}",
        name_str(name)
    )))
}

/// Notes a conflict under the current stamp (undone with the record if it is reordered,
/// so every region lists the same conflicts).
pub(crate) fn record_conflict(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    kind: &str,
    ino: Option<InodeId>,
    detail: String,
) -> Result<(), NsError> {
    let n = ctx.conflicts.get();
    ctx.conflicts.set(n.wrapping_add(1));
    let mut key = ctx.hlc.to_key().to_vec();
    key.extend_from_slice(&n.to_be_bytes());
    let c = Conflict {
        hlc: ctx.hlc,
        kind: kind.to_string(),
        ino,
        detail,
    };
    let bytes = serde_json::to_vec(&c).map_err(|e| NsError::Store(e.to_string()))?;
    t.write(Tab::Conflicts, &key, Some(&bytes))
}
