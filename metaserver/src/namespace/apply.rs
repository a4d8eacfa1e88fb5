//! Applying one command to the namespace. Every operation checks everything first and only
//! then writes, so a failed command changes nothing even inside a shared transaction.

use std::cell::{Cell, RefCell};

use meridian_proto::{Hlc, InodeId, RegionId};
use redb::ReadableTable;

use super::merge;

use super::tables::{
    WriteTables, counter, dirent_key, read_dirent, read_extents, read_inode, read_volume, store_err,
};
use super::types::*;

/// Permission bits asked for by an access check.
pub(crate) const R: u16 = 4;
pub(crate) const W: u16 = 2;
pub(crate) const X: u16 = 1;

/// Applies `cmd`, a local operation stamped by this region's leader. Returns the outcome of
/// the operation; a retried request (same client and operation id) returns the first
/// outcome without applying again. Only `NsError::Store` means the transaction itself is
/// unusable.
///
/// A successful operation becomes a [`Record`]: it joins the merged log (with what it
/// overwrote, so a late record from another region can be ordered before it) and this
/// region's change log, which the other regions pull.
pub fn apply(t: &mut WriteTables<'_>, cmd: &Command) -> Result<Reply, NsError> {
    if let Some((client, op)) = cmd.request {
        let key = super::tables::pair_key(client, op);
        if let Some(v) = t.requests.get(key.as_slice()).map_err(store_err)? {
            return serde_json::from_slice::<Result<Reply, NsError>>(v.value())
                .map_err(|e| NsError::Store(format!("damaged request record: {e}")))?;
        }
    }
    // Stamps only grow along the merged log: a command stamped before a remote record
    // that applied ahead of it, or before a promise to the peers, takes the next stamp
    // after it (deterministic, so every member agrees).
    let hlc = match merge::horizon(t)? {
        Some(head) if cmd.hlc <= head => head.successor(cmd.hlc.region),
        _ => cmd.hlc,
    };
    let volume = op_volume(t, &cmd.op)?;
    let ctx = Ctx::new(hlc, cmd.now, None, 0);
    t.undo = Some(Vec::new());
    let outcome = apply_op(t, &cmd.op, &ctx);
    let images = t.undo.take().unwrap_or_default();
    if let Err(NsError::Store(_)) = outcome {
        return outcome;
    }
    if let Ok(reply) = &outcome {
        let volume = match (reply, volume) {
            (Reply::Volume(v), _) => Some(v.clone()),
            (_, v) => v,
        };
        let record = Record {
            hlc,
            now: cmd.now,
            op: cmd.op.clone(),
            effects: ctx.out.take(),
            volume: volume.as_ref().map_or(0, |v| v.id),
            regions: volume.map(|v| v.policy.regions).unwrap_or_default(),
        };
        merge::log_applied(t, &record, &images)?;
        let seq = t.next(counter::NEXT_CHANGE, 1)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| NsError::Store(e.to_string()))?;
        t.changelog
            .insert(seq, bytes.as_slice())
            .map_err(store_err)?;
    }
    if let Some((client, op)) = cmd.request {
        let key = super::tables::pair_key(client, op);
        let bytes = serde_json::to_vec(&outcome).map_err(|e| NsError::Store(e.to_string()))?;
        t.requests
            .insert(key.as_slice(), bytes.as_slice())
            .map_err(store_err)?;
        let mut by_time = cmd.hlc.wall_ms.to_be_bytes().to_vec();
        by_time.extend_from_slice(&key);
        t.request_times
            .insert(by_time.as_slice(), ())
            .map_err(store_err)?;
    }
    prune_requests(t, cmd.hlc.wall_ms)?;
    outcome
}

/// The volume an operation changes, as it is before the operation (none for a new volume
/// or a missing inode, where the operation fails or says itself).
fn op_volume(t: &WriteTables<'_>, op: &Op) -> Result<Option<Volume>, NsError> {
    let ino = match op {
        Op::CreateVolume { .. } => return Ok(None),
        Op::DeleteVolume { name } => return read_volume(&t.volumes, name),
        Op::Mknod { parent, .. }
        | Op::Symlink { parent, .. }
        | Op::Unlink { parent, .. }
        | Op::Rmdir { parent, .. }
        | Op::Rename { parent, .. } => *parent,
        Op::Link { new_parent, .. } => *new_parent,
        Op::SetAttr { ino, .. }
        | Op::SetXattr { ino, .. }
        | Op::RemoveXattr { ino, .. }
        | Op::CommitExtents { ino, .. }
        | Op::Accessed { ino }
        | Op::Compact { ino, .. } => *ino,
    };
    match read_inode(&t.inodes, ino)? {
        Some(node) => volume_of(t, node.attr.volume).map(Some),
        None => Ok(None),
    }
}

/// How long a request's outcome is kept for retries, in milliseconds of HLC time. Clients
/// give up long before (30 s by default).
pub const REQUEST_RETENTION_MS: u64 = 15 * 60 * 1000;

/// Forgets request outcomes older than the retention, a bounded number per command. Uses
/// the command's own stamp, so every member prunes the same records.
fn prune_requests(t: &mut WriteTables<'_>, now_ms: u64) -> Result<(), NsError> {
    let Some(cutoff) = now_ms.checked_sub(REQUEST_RETENTION_MS) else {
        return Ok(());
    };
    let end = cutoff.to_be_bytes();
    let mut old = Vec::new();
    for item in t
        .request_times
        .range(..end.as_slice())
        .map_err(store_err)?
        .take(64)
    {
        let (k, _) = item.map_err(store_err)?;
        old.push(k.value().to_vec());
    }
    for k in old {
        t.request_times.remove(k.as_slice()).map_err(store_err)?;
        t.requests.remove(&k[8..]).map_err(store_err)?;
    }
    Ok(())
}

/// Applies one operation: strictly (checks fail it) when `ctx.replay` is `None`, or as a
/// replay of a record that succeeded at its origin, resolving conflicts with what other
/// regions did concurrently.
pub(crate) fn apply_op(t: &mut WriteTables<'_>, op: &Op, ctx: &Ctx<'_>) -> Result<Reply, NsError> {
    match op {
        Op::CreateVolume { name, policy } => create_volume(t, ctx, name, policy),
        Op::DeleteVolume { name } => delete_volume(t, name),
        Op::Mknod {
            parent,
            name,
            kind,
            perm,
            rdev,
            exclusive,
            creds,
        } => {
            if *kind == FileKind::Symlink {
                return Err(NsError::Invalid(
                    "use symlink to create symbolic links".into(),
                ));
            }
            let new = NewInode {
                kind: *kind,
                perm: *perm,
                rdev: *rdev,
                target: None,
            };
            make(t, ctx, *parent, name, new, *exclusive, creds)
        }
        Op::Symlink {
            parent,
            name,
            target,
            creds,
        } => {
            if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                return Err(NsError::Invalid(format!(
                    "symlink target of {} bytes",
                    target.len()
                )));
            }
            let new = NewInode {
                kind: FileKind::Symlink,
                perm: 0o777,
                rdev: 0,
                target: Some(target.clone()),
            };
            make(t, ctx, *parent, name, new, true, creds)
        }
        Op::Link {
            ino,
            new_parent,
            new_name,
            creds,
        } => link(t, ctx, *ino, *new_parent, new_name, creds),
        Op::Unlink {
            parent,
            name,
            creds,
        } => remove(t, ctx, *parent, name, false, creds),
        Op::Rmdir {
            parent,
            name,
            creds,
        } => remove(t, ctx, *parent, name, true, creds),
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            creds,
        } => rename(t, ctx, *parent, name, *new_parent, new_name, *flags, creds),
        Op::SetAttr { ino, set, creds } => setattr(t, ctx, *ino, set, creds),
        Op::SetXattr {
            ino,
            name,
            value,
            mode,
            creds,
        } => setxattr(t, ctx, *ino, name, value, *mode, creds),
        Op::RemoveXattr { ino, name, creds } => removexattr(t, ctx, *ino, name, creds),
        Op::CommitExtents {
            ino,
            extents,
            size,
            base_version: _,
            creds,
        } => commit(t, ctx, *ino, extents, *size, creds),
        Op::Accessed { ino } => accessed(t, ctx, *ino),
        Op::Compact {
            ino,
            offset,
            len,
            expected,
            replacement,
        } => compact(t, *ino, *offset, *len, expected, replacement),
    }
}

/// What an application of one operation knows and leaves behind.
pub(crate) struct Ctx<'a> {
    now: Timespec,
    region: RegionId,
    /// The operation's stamp.
    pub(crate) hlc: Hlc,
    /// Replaying a record: what it did at its origin.
    replay: Option<&'a Effects>,
    /// What this application did (for the record of a first application).
    pub(crate) out: RefCell<Effects>,
    /// Conflicts recorded so far under this stamp.
    conflicts: Cell<u16>,
    /// The volume a replayed record changes.
    volume: u32,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(hlc: Hlc, now: Timespec, replay: Option<&'a Effects>, volume: u32) -> Self {
        Ctx {
            now,
            region: hlc.region,
            hlc,
            replay,
            out: RefCell::new(Effects::default()),
            conflicts: Cell::new(0),
            volume,
        }
    }
}

struct NewInode {
    kind: FileKind,
    perm: u16,
    rdev: u32,
    target: Option<Vec<u8>>,
}

/// Checks a directory entry name.
pub(crate) fn check_name(name: &[u8]) -> Result<(), NsError> {
    if name.len() > NAME_MAX {
        return Err(NsError::NameTooLong(name.len()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(NsError::Invalid(format!(
            "bad entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// Whether `creds` may access `attr` for `mask` (R/W/X bits), as the kernel decides.
pub(crate) fn may(attr: &Attr, creds: &Creds, mask: u16) -> bool {
    if creds.uid == 0 {
        // Root may read and write anything, and execute anything some x bit allows.
        return mask & X == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
    }
    let bits = if creds.uid == attr.uid {
        (attr.perm >> 6) & 7
    } else if creds.in_group(attr.gid) {
        (attr.perm >> 3) & 7
    } else {
        attr.perm & 7
    };
    bits & mask == mask
}

pub(crate) fn check_access(attr: &Attr, creds: &Creds, mask: u16) -> Result<(), NsError> {
    if may(attr, creds, mask) {
        Ok(())
    } else {
        Err(NsError::Access(format!(
            "{} for uid {}",
            attr.ino, creds.uid
        )))
    }
}

fn name_str(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn get(t: &WriteTables<'_>, ino: InodeId) -> Result<Inode, NsError> {
    read_inode(&t.inodes, ino)?.ok_or_else(|| NsError::NotFound(ino.to_string()))
}

/// An inode that must exist for the operation. A replayed record may find it removed by a
/// concurrent operation of another region: an update beats a delete, so it comes back.
fn live(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<Inode, NsError> {
    match read_inode(&t.inodes, ino)? {
        Some(node) => Ok(node),
        None if ctx.replay.is_some() => resurrect(t, ctx, ino),
        None => Err(NsError::NotFound(ino.to_string())),
    }
}

/// Brings a removed inode back under its last name (or a conflict name if that is taken
/// now), in its last directory (brought back too if needed) or else the volume's root.
fn resurrect(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<Inode, NsError> {
    let tomb = t
        .tomb(ino)?
        .ok_or_else(|| NsError::NotFound(format!("{ino} (removed for good)")))?;
    let vol = volume_of(t, tomb.inode.attr.volume)?;
    let mut dir = match live(t, ctx, tomb.dir) {
        Ok(d) if d.attr.kind == FileKind::Dir => d,
        _ => get(t, vol.root)?,
    };
    let name = if read_dirent(&t.dirents, dir.attr.ino, &tomb.name)?.is_some() {
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
    if is_dir {
        dir.attr.nlink += 1;
    }
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    let mut vol = volume_of(t, node.attr.volume)?;
    vol.used_inodes += 1;
    if node.attr.kind == FileKind::File {
        vol.used_bytes += node.attr.size;
    }
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "resurrect",
        Some(ino),
        format!(
            "{} changed {ino} while another region removed it: it is back as {:?}",
            region_name(ctx.hlc.region),
            name_str(&name)
        ),
    )?;
    Ok(node)
}

/// A write to a file that no longer exists in the merged order and left no tombstone (a
/// conflict copy that a late record made unnecessary): the data is kept in a new file of
/// that number in the volume's root.
fn recover(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    creds: &Creds,
) -> Result<Inode, NsError> {
    let mut vol = find_volume(t, ctx.volume)?
        .ok_or_else(|| NsError::NotFound(format!("volume {} of {ino}", ctx.volume)))?;
    let mut dir = get(t, vol.root)?;
    let base = format!("recovered-{ino}");
    let name = if read_dirent(&t.dirents, vol.root, base.as_bytes())?.is_some() {
        conflict_name(t, vol.root, base.as_bytes(), ctx.hlc)?
    } else {
        base.into_bytes()
    };
    let node = Inode {
        attr: Attr {
            ino,
            kind: FileKind::File,
            perm: 0o600,
            uid: creds.uid,
            gid: creds.gid,
            size: 0,
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
        content: ctx.replay.and_then(|fx| fx.seen).unwrap_or_default(),
    };
    t.put_inode(&node)?;
    t.set_dirent(vol.root, &name, ino, FileKind::File)?;
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    vol.used_inodes += 1;
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "recover",
        Some(ino),
        format!(
            "a write from {} to {ino}, which no longer exists, is kept as {:?}",
            region_name(ctx.hlc.region),
            name_str(&name)
        ),
    )?;
    Ok(node)
}

fn region_name(r: RegionId) -> String {
    format!("region {}", r.0)
}

/// `name.conflict-<region>-<stamp>`, cut to fit NAME_MAX; fails if that is taken too.
fn conflict_name(
    t: &WriteTables<'_>,
    dir: InodeId,
    name: &[u8],
    stamp: Hlc,
) -> Result<Vec<u8>, NsError> {
    let mut suffix = format!(".conflict-{}-{}", stamp.region.0, stamp.wall_ms);
    if stamp.counter > 0 {
        suffix.push_str(&format!("-{}", stamp.counter));
    }
    let keep = name.len().min(NAME_MAX - suffix.len());
    let mut out = name[..keep].to_vec();
    out.extend_from_slice(suffix.as_bytes());
    if read_dirent(&t.dirents, dir, &out)?.is_some() {
        return Err(NsError::Exists(name_str(&out)));
    }
    Ok(out)
}

/// Notes a conflict under the current stamp (undone with the record if it is reordered).
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
    t.write(super::tables::Tab::Conflicts, &key, Some(&bytes))
}

/// A name of `node`: the entry pointing at it in its directory, else its number in the
/// volume's root.
fn locate(t: &WriteTables<'_>, node: &Inode) -> Result<(InodeId, Vec<u8>), NsError> {
    let from = dirent_key(node.parent, b"");
    let to = dirent_key(InodeId(node.parent.0 + 1), b"");
    for item in t
        .dirents
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        let e = super::tables::decode_dirent(k.value(), v.value())?;
        if e.ino == node.attr.ino {
            return Ok((node.parent, e.name));
        }
    }
    let vol = volume_of(t, node.attr.volume)?;
    Ok((vol.root, node.attr.ino.to_string().into_bytes()))
}

/// The inode number of the conflict copy of `ino` made when the write stamped `version`
/// met a concurrent one: the same on every region, whatever order records arrive in.
fn copy_ino(ino: InodeId, version: Hlc) -> Result<InodeId, NsError> {
    let mut seed = ino.0.to_be_bytes().to_vec();
    seed.extend_from_slice(&version.to_key());
    let d = meridian_proto::BlockId::of(&seed);
    let local = u64::from_be_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"));
    let local = (1 << (InodeId::LOCAL_BITS - 1)) | (local & ((1 << (InodeId::LOCAL_BITS - 1)) - 1));
    InodeId::new(version.region, local).map_err(|e| NsError::Store(e.to_string()))
}

/// Before a content change: first applied, notes the content version it replaces; replayed,
/// keeps the current version as a conflict copy if another region wrote it since the
/// change's origin saw the file (this change then goes on top).
fn keep_concurrent_version(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    node: &Inode,
) -> Result<(), NsError> {
    match ctx.replay {
        Some(fx) if fx.seen.unwrap_or_default() != node.content => conflict_copy(t, ctx, node),
        Some(_) => Ok(()),
        None => {
            ctx.out.borrow_mut().seen = Some(node.content);
            Ok(())
        }
    }
}

/// Keeps the current content of `node` as a conflict copy next to it (sharing its blocks),
/// before a concurrent write from another region replaces it.
fn conflict_copy(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, node: &Inode) -> Result<(), NsError> {
    // Named and numbered after the write that displaced this version, which stays the same
    // when late records change what the version holds.
    let (dir_ino, name) = locate(t, node)?;
    let Ok(copy_name) = conflict_name(t, dir_ino, &name, ctx.hlc) else {
        return Ok(()); // kept already
    };
    let ino = copy_ino(node.attr.ino, ctx.hlc)?;
    if read_inode(&t.inodes, ino)?.is_some() {
        return Ok(());
    }
    let mut copy = node.clone();
    copy.attr.ino = ino;
    copy.attr.nlink = 1;
    copy.attr.ctime = ctx.now;
    copy.parent = dir_ino;
    t.put_inode(&copy)?;
    for e in read_extents(&t.extents, node.attr.ino, 0, u64::MAX)? {
        t.insert_extent(ino, &e)?;
    }
    t.set_dirent(dir_ino, &copy_name, ino, FileKind::File)?;
    let mut dir = get(t, dir_ino)?;
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    let mut vol = volume_of(t, node.attr.volume)?;
    vol.used_inodes += 1;
    vol.used_bytes += node.attr.size;
    t.put_volume(&vol)?;
    record_conflict(
        t,
        ctx,
        "write",
        Some(node.attr.ino),
        format!(
            "{} and {} wrote {:?} concurrently: the version {} replaced is kept as {:?}",
            region_name(node.content.region),
            region_name(ctx.hlc.region),
            name_str(&name),
            region_name(ctx.hlc.region),
            name_str(&copy_name)
        ),
    )
}

/// A directory the caller may add entries to or remove entries from.
fn writable_dir(t: &WriteTables<'_>, ino: InodeId, creds: &Creds) -> Result<Inode, NsError> {
    let dir = get(t, ino)?;
    if dir.attr.kind != FileKind::Dir {
        return Err(NsError::NotDir(ino.to_string()));
    }
    check_access(&dir.attr, creds, W | X)?;
    Ok(dir)
}

/// Sticky directories: only the owner of the entry, of the directory, or root may remove it.
fn check_sticky(dir: &Inode, victim: &Inode, creds: &Creds) -> Result<(), NsError> {
    if dir.attr.perm & 0o1000 != 0
        && creds.uid != 0
        && creds.uid != dir.attr.uid
        && creds.uid != victim.attr.uid
    {
        return Err(NsError::Perm(format!(
            "{} is in a sticky directory",
            victim.attr.ino
        )));
    }
    Ok(())
}

fn find_volume(t: &WriteTables<'_>, id: u32) -> Result<Option<Volume>, NsError> {
    for item in t.volumes.iter().map_err(store_err)? {
        let (_, v) = item.map_err(store_err)?;
        let vol: Volume =
            serde_json::from_slice(v.value()).map_err(|e| NsError::Store(e.to_string()))?;
        if vol.id == id {
            return Ok(Some(vol));
        }
    }
    Ok(None)
}

/// The volume of an existing inode (its absence means a damaged store).
fn volume_of(t: &WriteTables<'_>, id: u32) -> Result<Volume, NsError> {
    find_volume(t, id)?.ok_or_else(|| NsError::Store(format!("volume {id} of an inode is missing")))
}

/// Clears setuid, and setgid when it is a real setgid bit (group-executable), as Linux
/// does on a chown of a non-directory or a write by a non-owner.
fn drop_setid(attr: &mut Attr) {
    attr.perm &= !0o4000;
    if attr.perm & 0o010 != 0 {
        attr.perm &= !0o2000;
    }
}

fn touch_dir(dir: &mut Inode, now: Timespec) {
    dir.attr.mtime = now;
    dir.attr.ctime = now;
}

fn new_inode_id(t: &mut WriteTables<'_>, region: RegionId) -> Result<InodeId, NsError> {
    let local = t.next(counter::NEXT_INODE, 1)?;
    InodeId::new(region, local).map_err(|e| NsError::Store(e.to_string()))
}

fn check_volume_name(name: &str) -> Result<(), NsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NsError::Invalid(format!(
            "volume name {name:?}: use 1-63 of a-z 0-9 - _"
        )))
    }
}

fn create_volume(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    name: &str,
    policy: &VolumePolicy,
) -> Result<Reply, NsError> {
    check_volume_name(name)?;
    if !(1..=16).contains(&policy.replicas)
        || policy.min_copies == 0
        || policy.min_copies > policy.replicas
    {
        return Err(NsError::Invalid(format!(
            "replicas {} and min_copies {} must satisfy 1 <= min_copies <= replicas <= 16",
            policy.replicas, policy.min_copies
        )));
    }
    if !policy.block_size.is_power_of_two()
        || !(64 << 10..=meridian_proto::block::MAX_BLOCK_LEN).contains(&policy.block_size)
    {
        return Err(NsError::Invalid(format!(
            "block size {} must be a power of two from 64 KiB to 64 MiB",
            policy.block_size
        )));
    }
    let mut name = name.to_string();
    if read_volume(&t.volumes, &name)?.is_some() {
        if ctx.replay.is_none() {
            return Err(NsError::Exists(format!("volume {name}")));
        }
        // Two regions created the name concurrently: the later (by HLC) takes another.
        let mut suffix = format!("-conflict-{}-{}", ctx.hlc.region.0, ctx.hlc.wall_ms);
        if ctx.hlc.counter > 0 {
            suffix.push_str(&format!("-{}", ctx.hlc.counter));
        }
        let other = format!("{}{suffix}", &name[..name.len().min(63 - suffix.len())]);
        if read_volume(&t.volumes, &other)?.is_some() {
            return Err(NsError::Exists(format!("volume {other}")));
        }
        record_conflict(
            t,
            ctx,
            "create volume",
            None,
            format!(
                "volume {name:?} was created concurrently in two regions: {}'s is {other:?}",
                region_name(ctx.hlc.region)
            ),
        )?;
        name = other;
    }
    let (id, root) = match ctx.replay {
        Some(fx) => match (fx.created_volume, fx.created) {
            (Some(id), Some(root)) => (id, root),
            _ => return Err(NsError::Invalid("volume record without its ids".into())),
        },
        None => {
            // Volume ids carry the creating region in their top half: unique everywhere.
            let local = t.next(counter::NEXT_VOLUME, 1)? as u32 & 0xffff;
            (
                (u32::from(ctx.region.0) << 16) | local,
                new_inode_id(t, ctx.region)?,
            )
        }
    };
    {
        let mut out = ctx.out.borrow_mut();
        out.created_volume = Some(id);
        out.created = Some(root);
    }
    let inode = Inode {
        attr: Attr {
            ino: root,
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: ctx.now,
            mtime: ctx.now,
            ctime: ctx.now,
            crtime: ctx.now,
            rdev: 0,
            volume: id,
        },
        parent: root,
        target: None,
        version: 0,
        content: Hlc::default(),
    };
    let vol = Volume {
        id,
        name,
        root,
        policy: policy.clone(),
        used_bytes: 0,
        used_inodes: 1,
    };
    t.put_inode(&inode)?;
    t.put_volume(&vol)?;
    Ok(Reply::Volume(vol))
}

fn delete_volume(t: &mut WriteTables<'_>, name: &str) -> Result<Reply, NsError> {
    let vol = read_volume(&t.volumes, name)?
        .ok_or_else(|| NsError::NotFound(format!("volume {name}")))?;
    let prefix = dirent_key(vol.root, b"");
    let next = dirent_key(InodeId(vol.root.0 + 1), b"");
    if t.dirents
        .range(prefix.as_slice()..next.as_slice())
        .map_err(store_err)?
        .next()
        .is_some()
    {
        return Err(NsError::NotEmpty(format!("volume {name} still has files")));
    }
    delete_xattrs(t, vol.root)?;
    t.del_inode(vol.root)?;
    t.del_volume(name)?;
    Ok(Reply::Done)
}

fn make(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    parent: InodeId,
    name: &[u8],
    new: NewInode,
    exclusive: bool,
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_name(name)?;
    let mut dir = live(t, ctx, parent)?;
    if dir.attr.kind != FileKind::Dir {
        return Err(NsError::NotDir(parent.to_string()));
    }
    let mut name = std::borrow::Cow::Borrowed(name);
    let existing = read_dirent(&t.dirents, parent, &name)?;
    match (ctx.replay.map(|fx| fx.created), existing) {
        // At its origin the open found an existing file and created nothing.
        (Some(None), _) => return Ok(Reply::Done),
        // Another region created the same name concurrently: the later one (this one, in
        // stamp order) takes a conflict name; both files live.
        (Some(Some(_)), Some(_)) => {
            let other = conflict_name(t, parent, &name, ctx.hlc)?;
            record_conflict(
                t,
                ctx,
                "create",
                None,
                format!(
                    "{:?} was created concurrently in two regions: {}'s is {:?}",
                    name_str(&name),
                    region_name(ctx.hlc.region),
                    name_str(&other)
                ),
            )?;
            name = std::borrow::Cow::Owned(other);
        }
        (None, Some(existing)) => {
            check_access(&dir.attr, creds, X)?;
            if !exclusive && new.kind == FileKind::File && existing.kind == FileKind::File {
                return Ok(Reply::Attr(get(t, existing.ino)?.attr));
            }
            return Err(NsError::Exists(name_str(&name)));
        }
        _ => {}
    }
    let name: &[u8] = &name;
    check_access(&dir.attr, creds, W | X)?;
    let is_dir = new.kind == FileKind::Dir;
    if is_dir && dir.attr.nlink >= LINK_MAX {
        return Err(NsError::TooManyLinks(parent.to_string()));
    }
    let mut vol = volume_of(t, dir.attr.volume)?;
    if vol
        .policy
        .quota_inodes
        .is_some_and(|q| vol.used_inodes >= q)
    {
        return Err(NsError::Quota(format!("volume {} inode quota", vol.name)));
    }

    let ino = match ctx.replay {
        Some(fx) => fx
            .created
            .ok_or_else(|| NsError::Invalid("create record without its inode".into()))?,
        None => new_inode_id(t, ctx.region)?,
    };
    ctx.out.borrow_mut().created = Some(ino);
    let setgid_dir = dir.attr.perm & 0o2000 != 0;
    let mut perm = new.perm & 0o7777;
    if is_dir && setgid_dir {
        perm |= 0o2000;
    }
    let size = new.target.as_ref().map_or(0, |t| t.len() as u64);
    let inode = Inode {
        attr: Attr {
            ino,
            kind: new.kind,
            perm,
            uid: creds.uid,
            gid: if setgid_dir { dir.attr.gid } else { creds.gid },
            size,
            nlink: if is_dir { 2 } else { 1 },
            atime: ctx.now,
            mtime: ctx.now,
            ctime: ctx.now,
            crtime: ctx.now,
            rdev: new.rdev,
            volume: dir.attr.volume,
        },
        parent,
        target: new.target,
        version: 0,
        content: Hlc::default(),
    };
    t.put_inode(&inode)?;
    t.set_dirent(parent, name, ino, new.kind)?;
    if is_dir {
        dir.attr.nlink += 1;
    }
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    vol.used_inodes += 1;
    t.put_volume(&vol)?;
    Ok(Reply::Attr(inode.attr))
}

fn link(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &[u8],
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_name(new_name)?;
    let mut target = live(t, ctx, ino)?;
    if target.attr.kind == FileKind::Dir {
        return Err(NsError::Perm(format!("hard link to directory {ino}")));
    }
    live(t, ctx, new_parent)?;
    let mut dir = writable_dir(t, new_parent, creds)?;
    if dir.attr.volume != target.attr.volume {
        return Err(NsError::CrossVolume(format!("{ino} into {new_parent}")));
    }
    let mut new_name = std::borrow::Cow::Borrowed(new_name);
    if read_dirent(&t.dirents, new_parent, &new_name)?.is_some() {
        if ctx.replay.is_none() {
            return Err(NsError::Exists(name_str(&new_name)));
        }
        new_name = std::borrow::Cow::Owned(conflict_name(t, new_parent, &new_name, ctx.hlc)?);
        record_conflict(
            t,
            ctx,
            "create",
            Some(ino),
            format!(
                "a link name taken concurrently: linked as {:?}",
                name_str(&new_name)
            ),
        )?;
    }
    let new_name: &[u8] = &new_name;
    if target.attr.nlink >= LINK_MAX {
        return Err(NsError::TooManyLinks(ino.to_string()));
    }
    target.attr.nlink += 1;
    target.attr.ctime = ctx.now;
    t.put_inode(&target)?;
    t.set_dirent(new_parent, new_name, ino, target.attr.kind)?;
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    Ok(Reply::Attr(target.attr))
}

fn is_empty_dir(t: &WriteTables<'_>, ino: InodeId) -> Result<bool, NsError> {
    let from = dirent_key(ino, b"");
    let to = dirent_key(InodeId(ino.0 + 1), b"");
    Ok(t.dirents
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
        .next()
        .is_none())
}

fn delete_xattrs(t: &mut WriteTables<'_>, ino: InodeId) -> Result<(), NsError> {
    t.del_xattrs(ino)
}

/// Drops one link of `victim` (its name `name` in `dir`); at zero links its content, xattrs
/// and record go. In a volume that lives in several regions they are kept aside as a
/// tombstone instead, so a concurrent update from another region can bring them back.
fn drop_link(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    mut victim: Inode,
    dir: InodeId,
    name: &[u8],
) -> Result<(), NsError> {
    let is_dir = victim.attr.kind == FileKind::Dir;
    victim.attr.nlink = if is_dir {
        0
    } else {
        victim.attr.nlink.saturating_sub(1)
    };
    victim.attr.ctime = ctx.now;
    if victim.attr.nlink > 0 {
        return t.put_inode(&victim);
    }
    let ino = victim.attr.ino;
    let mut vol = volume_of(t, victim.attr.volume)?;
    if vol.policy.regions.len() > 1 {
        t.put_tomb(&super::tables::Tomb {
            inode: victim.clone(),
            dir,
            name: name.to_vec(),
            at: ctx.hlc,
        })?;
    } else {
        for e in read_extents(&t.extents, ino, 0, u64::MAX)? {
            t.remove_extent(ino, &e)?;
        }
        delete_xattrs(t, ino)?;
    }
    t.del_inode(ino)?;
    vol.used_inodes = vol.used_inodes.saturating_sub(1);
    if victim.attr.kind == FileKind::File {
        vol.used_bytes = vol.used_bytes.saturating_sub(victim.attr.size);
    }
    t.put_volume(&vol)
}

fn remove(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    parent: InodeId,
    name: &[u8],
    dir_wanted: bool,
    creds: &Creds,
) -> Result<Reply, NsError> {
    if dir_wanted && name == b"." {
        return Err(NsError::Invalid("rmdir of .".into()));
    }
    if dir_wanted && name == b".." {
        return Err(NsError::NotEmpty("rmdir of ..".into()));
    }
    check_name(name)?;
    let mut dir = get(t, parent)?;
    if dir.attr.kind != FileKind::Dir {
        return Err(NsError::NotDir(parent.to_string()));
    }
    let entry =
        read_dirent(&t.dirents, parent, name)?.ok_or_else(|| NsError::NotFound(name_str(name)))?;
    check_access(&dir.attr, creds, W | X)?;
    let victim = get(t, entry.ino)?;
    match (dir_wanted, victim.attr.kind == FileKind::Dir) {
        (true, false) => return Err(NsError::NotDir(name_str(name))),
        (false, true) => return Err(NsError::IsDir(name_str(name))),
        (true, true) if !is_empty_dir(t, victim.attr.ino)? => {
            return Err(NsError::NotEmpty(name_str(name)));
        }
        _ => {}
    }
    check_sticky(&dir, &victim, creds)?;
    if victim.attr.kind == FileKind::File && victim.attr.nlink <= 1 {
        match ctx.replay {
            // The file was written by another region since this delete's origin saw it:
            // the update wins, the file stays.
            Some(fx) if fx.seen.unwrap_or_default() != victim.content => {
                return Err(NsError::Conflict(format!(
                    "{:?} was written concurrently by {}: it stays",
                    name_str(name),
                    region_name(victim.content.region)
                )));
            }
            Some(_) => {}
            None => ctx.out.borrow_mut().seen = Some(victim.content),
        }
    }
    t.del_dirent(parent, name)?;
    if dir_wanted {
        dir.attr.nlink -= 1;
    }
    touch_dir(&mut dir, ctx.now);
    t.put_inode(&dir)?;
    drop_link(t, ctx, victim, parent, name)?;
    Ok(Reply::Done)
}

/// Whether `ino` is `ancestor` or lies below it.
fn is_within(t: &WriteTables<'_>, mut ino: InodeId, ancestor: InodeId) -> Result<bool, NsError> {
    for _ in 0..100_000 {
        if ino == ancestor {
            return Ok(true);
        }
        let node = get(t, ino)?;
        if node.parent == ino {
            return Ok(false); // a volume root
        }
        ino = node.parent;
    }
    Err(NsError::Store(
        "directory parent chain too long (a cycle?)".into(),
    ))
}

#[allow(clippy::too_many_arguments)]
fn rename(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    parent: InodeId,
    name: &[u8],
    new_parent: InodeId,
    new_name: &[u8],
    flags: RenameFlags,
    creds: &Creds,
) -> Result<Reply, NsError> {
    if flags.noreplace && flags.exchange {
        return Err(NsError::Invalid(
            "RENAME_NOREPLACE with RENAME_EXCHANGE".into(),
        ));
    }
    check_name(name)?;
    check_name(new_name)?;
    let src_dir = get(t, parent)?;
    let dst_dir = live(t, ctx, new_parent)?;
    for d in [&src_dir, &dst_dir] {
        if d.attr.kind != FileKind::Dir {
            return Err(NsError::NotDir(d.attr.ino.to_string()));
        }
    }
    let src =
        read_dirent(&t.dirents, parent, name)?.ok_or_else(|| NsError::NotFound(name_str(name)))?;
    check_access(&src_dir.attr, creds, W | X)?;
    check_access(&dst_dir.attr, creds, W | X)?;
    if src_dir.attr.volume != dst_dir.attr.volume {
        return Err(NsError::CrossVolume(format!("{parent} to {new_parent}")));
    }
    let moving = get(t, src.ino)?;
    check_sticky(&src_dir, &moving, creds)?;
    let mut new_name = std::borrow::Cow::Borrowed(new_name);
    let mut dst = read_dirent(&t.dirents, new_parent, &new_name)?;
    match (ctx.replay, &dst) {
        (Some(fx), Some(d)) if d.ino != src.ino && Some(d.ino) != fx.replaced => {
            // The destination holds something this move's origin did not see (another
            // region put it there concurrently): keep both.
            if flags.exchange {
                return Err(NsError::Conflict(format!(
                    "exchange with {:?}, which another region replaced",
                    name_str(&new_name)
                )));
            }
            let other = conflict_name(t, new_parent, &new_name, ctx.hlc)?;
            record_conflict(
                t,
                ctx,
                "move",
                Some(src.ino),
                format!(
                    "{:?} was taken concurrently by another region: moved in as {:?}",
                    name_str(&new_name),
                    name_str(&other)
                ),
            )?;
            new_name = std::borrow::Cow::Owned(other);
            dst = None;
        }
        (None, Some(d)) if d.ino != src.ino => ctx.out.borrow_mut().replaced = Some(d.ino),
        _ => {}
    }
    let new_name: &[u8] = &new_name;
    let replaced = match &dst {
        Some(d) => Some(get(t, d.ino)?),
        None => None,
    };
    if let Some(r) = &replaced {
        check_sticky(&dst_dir, r, creds)?;
    }
    if flags.exchange && replaced.is_none() {
        return Err(NsError::NotFound(name_str(new_name)));
    }
    if flags.noreplace && replaced.is_some() {
        return Err(NsError::Exists(name_str(new_name)));
    }
    // Renaming a name onto another link of the same inode does nothing.
    if dst.as_ref().is_some_and(|d| d.ino == src.ino) {
        return Ok(Reply::Done);
    }
    let moving_dir = moving.attr.kind == FileKind::Dir;
    if moving_dir && is_within(t, new_parent, src.ino)? {
        return Err(NsError::Invalid(format!(
            "cannot move {} into itself",
            name_str(name)
        )));
    }
    if moving_dir && parent != new_parent && creds.uid != 0 {
        // Its ".." changes, which needs write permission on the directory itself.
        check_access(&moving.attr, creds, W)?;
    }

    if flags.exchange {
        let other = replaced.expect("checked above");
        let other_dir = other.attr.kind == FileKind::Dir;
        if other_dir && is_within(t, parent, other.attr.ino)? {
            return Err(NsError::Invalid(format!(
                "cannot move {} into itself",
                name_str(new_name)
            )));
        }
        t.set_dirent(parent, name, other.attr.ino, other.attr.kind)?;
        t.set_dirent(new_parent, new_name, moving.attr.ino, moving.attr.kind)?;
        let (mut a, mut b) = (moving, other);
        a.parent = new_parent;
        b.parent = parent;
        a.attr.ctime = ctx.now;
        b.attr.ctime = ctx.now;
        t.put_inode(&a)?;
        t.put_inode(&b)?;
        let mut sd = get(t, parent)?;
        if parent != new_parent {
            let mut dd = get(t, new_parent)?;
            let delta =
                i64::from(b.attr.kind == FileKind::Dir) - i64::from(a.attr.kind == FileKind::Dir);
            sd.attr.nlink = (i64::from(sd.attr.nlink) + delta) as u32;
            dd.attr.nlink = (i64::from(dd.attr.nlink) - delta) as u32;
            touch_dir(&mut dd, ctx.now);
            t.put_inode(&dd)?;
        }
        touch_dir(&mut sd, ctx.now);
        t.put_inode(&sd)?;
        return Ok(Reply::Done);
    }

    if let Some(r) = &replaced {
        let r_dir = r.attr.kind == FileKind::Dir;
        if moving_dir && !r_dir {
            return Err(NsError::NotDir(name_str(new_name)));
        }
        if !moving_dir && r_dir {
            return Err(NsError::IsDir(name_str(new_name)));
        }
        if r_dir && !is_empty_dir(t, r.attr.ino)? {
            return Err(NsError::NotEmpty(name_str(new_name)));
        }
    }
    let gains_subdir = moving_dir && parent != new_parent && replaced.is_none();
    if gains_subdir && dst_dir.attr.nlink >= LINK_MAX {
        return Err(NsError::TooManyLinks(new_parent.to_string()));
    }

    // All checks passed: write.
    t.del_dirent(parent, name)?;
    t.set_dirent(new_parent, new_name, moving.attr.ino, moving.attr.kind)?;
    let mut moved = moving;
    moved.parent = new_parent;
    moved.attr.ctime = ctx.now;
    t.put_inode(&moved)?;
    if let Some(r) = replaced {
        let r_dir = r.attr.kind == FileKind::Dir;
        drop_link(t, ctx, r, new_parent, new_name)?;
        if r_dir {
            let mut dd = get(t, new_parent)?;
            dd.attr.nlink -= 1;
            t.put_inode(&dd)?;
        }
    }
    let mut sd = get(t, parent)?;
    if moving_dir && parent != new_parent {
        sd.attr.nlink -= 1;
    }
    touch_dir(&mut sd, ctx.now);
    t.put_inode(&sd)?;
    if parent != new_parent {
        let mut dd = get(t, new_parent)?;
        if moving_dir {
            dd.attr.nlink += 1;
        }
        touch_dir(&mut dd, ctx.now);
        t.put_inode(&dd)?;
    }
    Ok(Reply::Done)
}

fn resolve(time: SetTime, now: Timespec) -> Timespec {
    match time {
        SetTime::At(ts) => ts,
        SetTime::Now => now,
    }
}

fn setattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    set: &SetAttr,
    creds: &Creds,
) -> Result<Reply, NsError> {
    let mut node = live(t, ctx, ino)?;
    let owner = creds.uid == 0 || creds.uid == node.attr.uid;
    if let Some(perm) = set.perm {
        if !owner {
            return Err(NsError::Perm(format!(
                "chmod of {ino} by uid {}",
                creds.uid
            )));
        }
        let mut perm = perm & 0o7777;
        if creds.uid != 0 && !creds.in_group(set.gid.unwrap_or(node.attr.gid)) {
            perm &= !0o2000;
        }
        node.attr.perm = perm;
    }
    if set.uid.is_some() || set.gid.is_some() {
        let uid_change = set.uid.is_some_and(|u| u != node.attr.uid);
        let gid_change = set.gid.is_some_and(|g| g != node.attr.gid);
        if creds.uid != 0 {
            if uid_change {
                return Err(NsError::Perm(format!(
                    "chown of {ino} by uid {}",
                    creds.uid
                )));
            }
            if gid_change && (!owner || !creds.in_group(set.gid.expect("gid change"))) {
                return Err(NsError::Perm(format!(
                    "chgrp of {ino} by uid {}",
                    creds.uid
                )));
            }
        }
        if let Some(u) = set.uid {
            node.attr.uid = u;
        }
        if let Some(g) = set.gid {
            node.attr.gid = g;
        }
        // Changing the owner of a non-directory drops setuid, and setgid when it is a real
        // setgid bit (group-executable), as Linux does.
        if node.attr.kind != FileKind::Dir && set.perm.is_none() {
            drop_setid(&mut node.attr);
        }
    }
    if let Some(size) = set.size {
        match node.attr.kind {
            FileKind::Dir => return Err(NsError::IsDir(ino.to_string())),
            FileKind::File => {}
            _ => return Err(NsError::Invalid(format!("truncate of non-file {ino}"))),
        }
        if !set.via_handle {
            check_access(&node.attr, creds, W)?;
        }
        // A truncate replaces content like a write does (open with O_TRUNC, then write).
        keep_concurrent_version(t, ctx, &node)?;
        let mut vol = volume_of(t, node.attr.volume)?;
        if size > node.attr.size
            && vol
                .policy
                .quota_bytes
                .is_some_and(|q| vol.used_bytes - node.attr.size + size > q)
        {
            return Err(NsError::Quota(format!("volume {} byte quota", vol.name)));
        }
        if size < node.attr.size {
            truncate_extents(t, ino, size)?;
        }
        vol.used_bytes = vol.used_bytes - node.attr.size + size;
        t.put_volume(&vol)?;
        if size != node.attr.size {
            node.version += 1;
            node.content = ctx.hlc;
        }
        node.attr.size = size;
        node.attr.mtime = ctx.now;
    }
    for (which, time) in [("atime", set.atime), ("mtime", set.mtime)] {
        let Some(time) = time else { continue };
        match time {
            SetTime::At(_) if !owner => {
                return Err(NsError::Perm(format!(
                    "utimes of {ino} by uid {}",
                    creds.uid
                )));
            }
            SetTime::Now if !owner && !may(&node.attr, creds, W) => {
                return Err(NsError::Access(format!(
                    "utimes of {ino} by uid {}",
                    creds.uid
                )));
            }
            _ => {}
        }
        let ts = resolve(time, ctx.now);
        if which == "atime" {
            node.attr.atime = ts;
        } else {
            node.attr.mtime = ts;
        }
    }
    node.attr.ctime = ctx.now;
    t.put_inode(&node)?;
    Ok(Reply::Attr(node.attr))
}

/// Drops every extent byte at or after `size`.
fn truncate_extents(t: &mut WriteTables<'_>, ino: InodeId, size: u64) -> Result<(), NsError> {
    for e in read_extents(&t.extents, ino, size, u64::MAX)? {
        t.remove_extent(ino, &e)?;
        if e.offset < size {
            t.insert_extent(
                ino,
                &Extent {
                    len: size - e.offset,
                    ..e
                },
            )?;
        }
    }
    Ok(())
}

fn check_xattr_name(name: &[u8], creds: &Creds) -> Result<(), NsError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(NsError::TooBig(format!(
            "xattr name of {} bytes",
            name.len()
        )));
    }
    if name.starts_with(b"user.") || name.starts_with(b"security.") || name.starts_with(b"system.")
    {
        return Ok(());
    }
    if name.starts_with(b"trusted.") {
        return if creds.uid == 0 {
            Ok(())
        } else {
            Err(NsError::Perm("trusted.* xattrs need root".into()))
        };
    }
    Err(NsError::NotSupported(format!(
        "xattr namespace of {:?}",
        name_str(name)
    )))
}

fn setxattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    name: &[u8],
    value: &[u8],
    mode: XattrMode,
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_xattr_name(name, creds)?;
    if value.len() > XATTR_VALUE_MAX {
        return Err(NsError::TooBig(format!(
            "xattr value of {} bytes",
            value.len()
        )));
    }
    let mut node = live(t, ctx, ino)?;
    if name.starts_with(b"user.") {
        if !matches!(node.attr.kind, FileKind::File | FileKind::Dir) {
            return Err(NsError::Perm(format!(
                "user xattrs on {:?}",
                node.attr.kind
            )));
        }
        check_access(&node.attr, creds, W)?;
    }
    let key = dirent_key(ino, name);
    let exists = t.xattrs.get(key.as_slice()).map_err(store_err)?.is_some();
    match mode {
        XattrMode::Create if exists => return Err(NsError::Exists(name_str(name))),
        XattrMode::Replace if !exists => return Err(NsError::NoData(name_str(name))),
        _ => {}
    }
    t.set_xattr(ino, name, value)?;
    node.attr.ctime = ctx.now;
    t.put_inode(&node)?;
    Ok(Reply::Done)
}

fn removexattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    name: &[u8],
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_xattr_name(name, creds)?;
    let mut node = live(t, ctx, ino)?;
    if name.starts_with(b"user.") {
        check_access(&node.attr, creds, W)?;
    }
    if !t.del_xattr(ino, name)? {
        return Err(NsError::NoData(name_str(name)));
    }
    node.attr.ctime = ctx.now;
    t.put_inode(&node)?;
    Ok(Reply::Done)
}

fn check_extent(ino: InodeId, e: &Extent) -> Result<(), NsError> {
    let fits = e.len > 0
        && e.len <= u64::from(e.block_len)
        && u64::from(e.block_offset) + e.len <= u64::from(e.block_len)
        && e.offset.checked_add(e.len).is_some();
    if fits {
        Ok(())
    } else {
        Err(NsError::Invalid(format!(
            "extent {e:?} of {ino} does not fit its block"
        )))
    }
}

/// Inserts `e`, cutting away the parts of older extents it shadows.
fn overlay(t: &mut WriteTables<'_>, ino: InodeId, e: &Extent) -> Result<(), NsError> {
    // Add the new reference first so a block shared with a shadowed extent never dips to 0.
    let old = read_extents(&t.extents, ino, e.offset, e.end())?;
    for o in &old {
        t.remove_extent(ino, o)?;
    }
    t.insert_extent(ino, e)?;
    for o in &old {
        if o.offset < e.offset {
            t.insert_extent(
                ino,
                &Extent {
                    len: e.offset - o.offset,
                    ..*o
                },
            )?;
        }
        if o.end() > e.end() {
            let cut = e.end() - o.offset;
            t.insert_extent(
                ino,
                &Extent {
                    offset: e.end(),
                    len: o.end() - e.end(),
                    block_offset: o.block_offset + cut as u32,
                    ..*o
                },
            )?;
        }
    }
    Ok(())
}

fn commit(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    extents: &[Extent],
    size: u64,
    creds: &Creds,
) -> Result<Reply, NsError> {
    let mut node = match live(t, ctx, ino) {
        Err(NsError::NotFound(_)) if ctx.replay.is_some() => recover(t, ctx, ino, creds)?,
        other => other?,
    };
    match node.attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(NsError::IsDir(ino.to_string())),
        _ => return Err(NsError::Invalid(format!("write to non-file {ino}"))),
    }
    if creds.uid != 0 && !may(&node.attr, creds, W) && creds.uid != node.attr.uid {
        return Err(NsError::Access(format!(
            "write to {ino} by uid {}",
            creds.uid
        )));
    }
    for e in extents {
        check_extent(ino, e)?;
    }
    keep_concurrent_version(t, ctx, &node)?;
    let end = extents.iter().map(Extent::end).max().unwrap_or(0);
    let new_size = node.attr.size.max(size).max(end);
    let mut vol = volume_of(t, node.attr.volume)?;
    if new_size > node.attr.size
        && vol
            .policy
            .quota_bytes
            .is_some_and(|q| vol.used_bytes - node.attr.size + new_size > q)
    {
        return Err(NsError::Quota(format!("volume {} byte quota", vol.name)));
    }
    for e in extents {
        overlay(t, ino, e)?;
    }
    vol.used_bytes = vol.used_bytes - node.attr.size + new_size;
    t.put_volume(&vol)?;
    node.attr.size = new_size;
    node.attr.mtime = ctx.now;
    node.attr.ctime = ctx.now;
    node.version += 1;
    node.content = ctx.hlc;
    // Writing by a non-owner clears setuid/setgid, as the kernel does.
    if creds.uid != 0 {
        drop_setid(&mut node.attr);
    }
    t.put_inode(&node)?;
    Ok(Reply::Attr(node.attr))
}

fn compact(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    offset: u64,
    len: u64,
    expected: &[Extent],
    replacement: &[Extent],
) -> Result<Reply, NsError> {
    let node = get(t, ino)?;
    if node.attr.kind != FileKind::File {
        return Err(NsError::Invalid(format!("compaction of non-file {ino}")));
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| NsError::Invalid("compaction range overflows".into()))?;
    let current = read_extents(&t.extents, ino, offset, end)?;
    if current != expected {
        return Err(NsError::Conflict(format!(
            "extents of {ino} changed since the compactor read them"
        )));
    }
    for e in replacement {
        check_extent(ino, e)?;
        if e.offset < offset || e.end() > end {
            return Err(NsError::Invalid(format!(
                "replacement extent {e:?} leaves the range"
            )));
        }
    }
    for e in replacement {
        overlay(t, ino, e)?;
    }
    Ok(Reply::Done)
}

/// How old an atime may get before a read refreshes it even if it is newer than mtime
/// and ctime (relatime's rule).
const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;

fn accessed(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<Reply, NsError> {
    let mut node = get(t, ino)?;
    let a = &node.attr;
    let due = a.atime <= a.mtime
        || a.atime <= a.ctime
        || ctx.now.sec - a.atime.sec >= RELATIME_MAX_AGE_SECS;
    if due && ctx.now > a.atime {
        node.attr.atime = ctx.now;
        t.put_inode(&node)?;
    }
    Ok(Reply::Attr(node.attr))
}
