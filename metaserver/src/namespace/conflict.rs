//! How a replayed record meets what other regions did concurrently (ADR 0005). Every rule
//! here is a function of the merged log's order and the records' own effects, so every
//! region decides the same, whatever order the records arrived in:
//! - a change beats a concurrent delete: a removed inode or volume comes back;
//! - a content change that did not see the file's current version makes that version a
//!   conflict copy and applies to the version its writer had (never a mix of two writers);
//! - records name inodes by id: an unlink or a move acts on the inode it acted on at its
//!   origin, whatever name that inode has by now.

use meridian_proto::{Hlc, InodeId};
use redb::ReadableTable;

use super::ctx::*;
use super::merge;
use super::tables::{
    Tab, WriteTables, decode_dirent, dirent_end, dirent_key, read_dirent, read_extents, read_inode,
    read_volume, store_err,
};
use super::types::*;

/// An inode that must exist for the operation. A replayed record may find it removed by a
/// concurrent operation of another region: an update beats a delete, so it comes back.
pub(crate) fn live(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<Inode, NsError> {
    match read_inode(t.inodes()?, ino)? {
        Some(node) => Ok(node),
        None if ctx.replaying() => resurrect(t, ctx, ino),
        None => Err(NsError::NotFound(ino.to_string())),
    }
}

/// A live directory that must exist for the operation (brought back like [`live`]).
pub(crate) fn live_dir(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
) -> Result<Inode, NsError> {
    let dir = live(t, ctx, ino)?;
    if dir.attr.kind != FileKind::Dir {
        return Err(NsError::NotDir(ino.to_string()));
    }
    Ok(dir)
}

/// The volume `id` of an inode the operation changes. A replayed record may find it
/// deleted by a concurrent operation of another region: a change beats a delete, so the
/// volume comes back (under another name if its name was taken since).
pub(crate) fn volume_for(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    id: u32,
) -> Result<Volume, NsError> {
    if let Some(v) = find_volume(t, id)? {
        return Ok(v);
    }
    if !ctx.replaying() {
        return Err(NsError::NotFound(format!("volume {id} of an inode")));
    }
    let mut vol = find_volume_row(t, id, Some(true))?
        .ok_or_else(|| NsError::NotFound(format!("volume {id} (removed for good)")))?;
    let tomb = t
        .tomb(vol.root)?
        .ok_or_else(|| NsError::NotFound(format!("root {} of deleted volume {id}", vol.root)))?;
    let was = vol.name.clone();
    if read_volume(t.volumes()?, &was)?.is_some() {
        vol.name = volume_conflict_name(t, &was, ctx.hlc)?;
    }
    vol.deleted = None;
    let mut root = tomb.inode;
    root.attr.nlink = 2;
    root.attr.ctime = ctx.now;
    t.write(Tab::Volumes, deleted_volume_key(id).as_bytes(), None)?;
    t.del_tomb(vol.root)?;
    t.put_inode(&root)?;
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "resurrect",
        Some(vol.root),
        format!(
            "{} changed volume {was:?} while another region deleted it: it is back as {:?}",
            region_name(ctx.region()),
            vol.name
        ),
    )?;
    Ok(vol)
}

/// `name-conflict-<region>-<ms>[-<counter>]`: the name of a volume that met another of
/// the same name.
pub(crate) fn volume_conflict_name(
    t: &WriteTables<'_>,
    name: &str,
    stamp: Hlc,
) -> Result<String, NsError> {
    let mut suffix = format!("-conflict-{}-{}", stamp.region.0, stamp.wall_ms);
    if stamp.counter > 0 {
        suffix.push_str(&format!("-{}", stamp.counter));
    }
    let keep = name.len().min(63usize.saturating_sub(suffix.len()));
    let other = format!("{}{suffix}", name.get(..keep).unwrap_or(name));
    if read_volume(t.volumes()?, &other)?.is_some() {
        return Err(NsError::Exists(format!("volume {other}")));
    }
    Ok(other)
}

/// Brings a removed inode back under its last name (or a conflict name if that is taken
/// now), in its last directory (brought back too if needed) or else the volume's root.
fn resurrect(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<Inode, NsError> {
    let tomb = t
        .tomb(ino)?
        .ok_or_else(|| NsError::NotFound(format!("{ino} (removed for good)")))?;
    let vol = volume_for(t, ctx, tomb.inode.attr.volume)?;
    if let Some(node) = read_inode(t.inodes()?, ino)? {
        return Ok(node); // a volume's root, back with its volume
    }
    // Where it goes depends on whether its directory is there (a late record may bring it
    // back or take it away).
    t.note_read(tomb.dir);
    let dir = match live(t, ctx, tomb.dir) {
        Ok(d) if d.attr.kind == FileKind::Dir => d,
        _ => get(t, vol.root)?,
    };
    let name = if read_dirent(t.dirents()?, dir.attr.ino, &tomb.name)?.is_some() {
        conflict_name(t, dir.attr.ino, &tomb.name, ctx.hlc)?
    } else {
        tomb.name.clone()
    };
    let mut node = tomb.inode;
    let is_dir = node.attr.kind == FileKind::Dir;
    node.attr.nlink = if is_dir { 2 } else { 1 };
    node.attr.ctime = ctx.now;
    node.parent = dir.attr.ino;
    t.del_tomb(ino)?;
    t.put_inode(&node)?;
    t.set_dirent(dir.attr.ino, &name, ino, node.attr.kind)?;
    t.change_dir(dir.attr.ino, i64::from(is_dir), Some(ctx.now))?;
    let mut vol = volume_of(t, node.attr.volume)?;
    vol.used_inodes += 1;
    if node.attr.kind == FileKind::File {
        vol.used_bytes = vol.used_bytes.saturating_add(node.attr.size);
    }
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "resurrect",
        Some(ino),
        format!(
            "{} changed {ino} while another region removed it: it is back as {:?}",
            region_name(ctx.region()),
            name_str(&name)
        ),
    )?;
    Ok(node)
}

/// A write to a file that no longer exists in the merged order and left no tombstone (a
/// conflict copy that a late record made unnecessary): the data is kept in a new file of
/// that number in the volume's root.
pub(crate) fn recover(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    creds: &Creds,
) -> Result<Inode, NsError> {
    if let Some(copy) = copy_again(t, ctx, ino)? {
        return Ok(copy);
    }
    let mut vol = volume_for(t, ctx, ctx.volume)?;
    let content = ctx.replay.and_then(|fx| fx.seen).unwrap_or_default();
    let (node, name) = new_root_file(
        t,
        ctx,
        &mut vol,
        ino,
        &format!("recovered-{ino}"),
        (creds, 0, content),
    )?;
    record_conflict(
        t,
        ctx,
        "recover",
        Some(ino),
        format!(
            "a write from {} to {ino}, which no longer exists, is kept as {:?}",
            region_name(ctx.region()),
            name_str(&name)
        ),
    )?;
    Ok(node)
}

/// A new file `ino` in `vol`'s root, under `base` (or, taken, its conflict name for the
/// current stamp), private to its owner: `(creds, size, content version)`. Counted in
/// the volume's usage (`vol` is written). Returns it and the name it got.
pub(crate) fn new_root_file(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    vol: &mut Volume,
    ino: InodeId,
    base: &str,
    (creds, size, content): (&Creds, u64, Hlc),
) -> Result<(Inode, Vec<u8>), NsError> {
    get(t, vol.root)?;
    let name = if read_dirent(t.dirents()?, vol.root, base.as_bytes())?.is_some() {
        conflict_name(t, vol.root, base.as_bytes(), ctx.hlc)?
    } else {
        base.as_bytes().to_vec()
    };
    let node = Inode {
        attr: Attr {
            ino,
            kind: FileKind::File,
            perm: 0o600,
            uid: creds.uid,
            gid: creds.gid,
            size,
            nlink: 1,
            atime: ctx.now,
            mtime: ctx.now,
            ctime: ctx.now,
            crtime: ctx.now,
            rdev: 0,
            volume: vol.id,
        },
        parent: vol.root,
        target: None,
        version: 0,
        content,
        copy_of: None,
        cuts: Vec::new(),
    };
    t.put_inode(&node)?;
    t.set_dirent(vol.root, &name, ino, FileKind::File)?;
    t.change_dir(vol.root, 0, Some(ctx.now))?;
    vol.used_inodes += 1;
    vol.used_bytes = vol.used_bytes.saturating_add(size);
    t.put_volume(vol)?;
    Ok((node, name))
}

/// The entry `ino` has in `dir`, whatever its name.
pub(crate) fn entry_of(
    t: &WriteTables<'_>,
    dir: InodeId,
    ino: InodeId,
) -> Result<Option<DirEntry>, NsError> {
    let from = dirent_key(dir, b"");
    let to = dirent_end(dir);
    for item in t
        .dirents()?
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        let e = decode_dirent(k.value(), v.value())?;
        if e.ino == ino {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The entry an unlink, rmdir or rename acts on. First applied: the one under `name`,
/// noted in the record. Replayed: the record's inode, under `name` if it is still there,
/// else under the name it has in `dir` now (a concurrent create of the same name may have
/// given it a conflict name); never another inode that took the name.
pub(crate) fn find_entry(
    t: &WriteTables<'_>,
    ctx: &Ctx<'_>,
    dir: InodeId,
    name: &[u8],
) -> Result<DirEntry, NsError> {
    let at_name = read_dirent(t.dirents()?, dir, name)?;
    match ctx.replay.and_then(|fx| fx.target) {
        Some(ino) => match at_name.filter(|e| e.ino == ino) {
            Some(e) => Ok(e),
            None => entry_of(t, dir, ino)?
                .ok_or_else(|| NsError::NotFound(format!("{ino} is no longer in {dir}"))),
        },
        None => {
            let e = at_name.ok_or_else(|| NsError::NotFound(name_str(name)))?;
            if !ctx.replaying() {
                ctx.out.borrow_mut().target = Some(e.ino);
            }
            Ok(e)
        }
    }
}

/// A name of `node`: the entry pointing at it in its directory, else its number in the
/// volume's root.
fn locate(t: &WriteTables<'_>, node: &Inode) -> Result<(InodeId, Vec<u8>), NsError> {
    if let Some(e) = entry_of(t, node.parent, node.attr.ino)? {
        return Ok((node.parent, e.name));
    }
    let vol = volume_of(t, node.attr.volume)?;
    Ok((vol.root, node.attr.ino.to_string().into_bytes()))
}

/// The inode number of the conflict copy of `ino` made when the write stamped `version`
/// met a concurrent one: the same on every region, whatever order records arrive in.
pub(crate) fn copy_ino(ino: InodeId, version: Hlc) -> Result<InodeId, NsError> {
    let mut seed = ino.0.to_be_bytes().to_vec();
    seed.extend_from_slice(&version.to_key());
    let d = meridian_proto::BlockId::of(&seed);
    let local = u64::from_be_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"));
    let local = (1 << (InodeId::LOCAL_BITS - 1)) | (local & ((1 << (InodeId::LOCAL_BITS - 1)) - 1));
    InodeId::new(version.region, local).map_err(|e| NsError::Store(e.to_string()))
}

/// Before a content change (a commit or a truncate) of `node`. First applied, it notes the
/// version the change is based on. Replayed after a concurrent change by another region
/// (the file's version is not the one the change's origin saw), it keeps the current
/// version as a conflict copy and puts back the version the change was based on, so that
/// the change applies to what its writer had: the file then holds exactly that writer's
/// bytes, never a mix of two writers. Returns the inode to change.
pub(crate) fn writer_base(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    mut node: Inode,
) -> Result<Inode, NsError> {
    let Some(fx) = ctx.replay else {
        let mut out = ctx.out.borrow_mut();
        out.seen = Some(node.content);
        out.copy_of = node.copy_of;
        return Ok(node);
    };
    let seen = fx.seen.unwrap_or_default();
    if seen == node.content {
        return Ok(node);
    }
    conflict_copy(t, ctx, &node)?;
    let ino = node.attr.ino;
    let base = merge::base_for(t, ctx.hlc, ino, seen)?;
    if !node.cuts.is_empty() {
        // The rows go, leftovers too, and the base holds no cut. The steps wait for this
        // record to leave the merged log: undone, it brings the cuts and their
        // leftovers back.
        super::trim::write_mark(t, ino, node.attr.volume)?;
        node.cuts.clear();
    }
    for e in read_extents(t.extents()?, ino, 0, u64::MAX)? {
        t.remove_extent(ino, &e)?;
    }
    for e in &base.extents {
        t.insert_extent(ino, e)?;
    }
    let mut vol = volume_for(t, ctx, node.attr.volume)?;
    vol.used_bytes = vol
        .used_bytes
        .saturating_sub(node.attr.size)
        .saturating_add(base.size);
    t.put_volume(&vol)?;
    node.attr.size = base.size;
    node.content = seen;
    Ok(node)
}

/// Keeps the current content of `node` as a conflict copy next to it (sharing its blocks),
/// before a concurrent change from another region replaces it.
fn conflict_copy(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, node: &Inode) -> Result<(), NsError> {
    let rows = read_extents(t.extents()?, node.attr.ino, 0, u64::MAX)?;
    keep_version(t, ctx, node, &super::trim::live(node, rows)).map(drop)
}

/// Keeps a version of `node` (its attributes with that version's content stamp and size,
/// and `extents`, its content: no leftover of a cut) as a conflict copy next to it. The
/// copy's number and name come from the file and the version (the region and time of the
/// change that made it), so every region makes the same copy whichever change displaced
/// the version, and a write to the copy finds it in every order. An empty version holds
/// no bytes to keep: the conflict is noted, no copy made. Returns the copy.
fn keep_version(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    node: &Inode,
    extents: &[Extent],
) -> Result<Option<InodeId>, NsError> {
    let (dir_ino, name) = locate(t, node)?;
    let version = node.content;
    if node.attr.size == 0 {
        record_conflict(
            t,
            ctx,
            "write",
            Some(node.attr.ino),
            format!(
                "{} changed {:?} without seeing {}'s change, which had left it empty",
                region_name(ctx.region()),
                name_str(&name),
                region_name(version.region),
            ),
        )?;
        return Ok(None);
    }
    let ino = copy_ino(node.attr.ino, version)?;
    if read_inode(t.inodes()?, ino)?.is_some() || t.tomb(ino)?.is_some() {
        return Ok(Some(ino)); // kept already
    }
    let copy_name = conflict_name(t, dir_ino, &name, version)?;
    let mut copy = node.clone();
    copy.attr.ino = ino;
    copy.attr.nlink = 1;
    copy.attr.ctime = ctx.now;
    copy.parent = dir_ino;
    copy.copy_of = Some(node.attr.ino);
    copy.cuts.clear();
    t.put_inode(&copy)?;
    for e in extents {
        t.insert_extent(ino, e)?;
    }
    t.set_dirent(dir_ino, &copy_name, ino, FileKind::File)?;
    t.change_dir(dir_ino, 0, Some(ctx.now))?;
    let mut vol = volume_for(t, ctx, node.attr.volume)?;
    vol.used_inodes += 1;
    vol.used_bytes = vol.used_bytes.saturating_add(node.attr.size);
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "write",
        Some(node.attr.ino),
        format!(
            "{} changed {:?} without seeing {}'s version: that version is kept as {:?}",
            region_name(ctx.region()),
            name_str(&name),
            region_name(version.region),
            name_str(&copy_name)
        ),
    )?;
    Ok(Some(ino))
}

/// A change of a conflict copy that the merged order did not make (the version it keeps
/// was displaced by a change that saw it): the copy is made again from that version, so
/// the change applies to what its writer had.
pub(crate) fn copy_again(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
) -> Result<Option<Inode>, NsError> {
    let Some(fx) = ctx.replay else {
        return Ok(None);
    };
    let (Some(source), Some(version)) = (fx.copy_of, fx.seen) else {
        return Ok(None);
    };
    if copy_ino(source, version)? != ino {
        return Ok(None);
    }
    let Some(mut node) = read_inode(t.inodes()?, source)?.or(t.tomb(source)?.map(|tb| tb.inode))
    else {
        return Ok(None);
    };
    let base = merge::base_for(t, ctx.hlc, source, version)?;
    node.content = version;
    node.attr.size = base.size;
    match keep_version(t, ctx, &node, &base.extents)? {
        Some(copy) => read_inode(t.inodes()?, copy),
        None => Ok(None),
    }
}

/// A rename replayed over a file that another region changed since the rename's origin
/// saw it: the changed file stays, under a conflict name next to the rename's target.
pub(crate) fn keep_replaced(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    replaced: &Inode,
    dir: InodeId,
    name: &[u8],
) -> Result<bool, NsError> {
    let Some(seen) = ctx.replay.and_then(|fx| fx.replaced_seen) else {
        return Ok(false);
    };
    if replaced.attr.kind != FileKind::File || seen == replaced.content {
        return Ok(false);
    }
    let keep = conflict_name(t, dir, name, ctx.hlc)?;
    t.set_dirent(dir, &keep, replaced.attr.ino, replaced.attr.kind)?;
    record_conflict(
        t,
        ctx,
        "move",
        Some(replaced.attr.ino),
        format!(
            "{} renamed over {:?} while {} changed it: the changed file is kept as {:?}",
            region_name(ctx.region()),
            name_str(name),
            region_name(replaced.content.region),
            name_str(&keep)
        ),
    )?;
    Ok(true)
}
