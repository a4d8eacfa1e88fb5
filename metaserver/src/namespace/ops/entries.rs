//! Directory entries: create (mknod, mkdir, symlink), link, unlink, rmdir, rename.

use std::borrow::Cow;

use meridian_proto::{Hlc, InodeId};

use crate::namespace::access::{W, X, check_access, check_name, check_sticky};
use crate::namespace::conflict::{entry_of, find_entry, keep_replaced, live, live_dir, volume_for};
use crate::namespace::ctx::*;
use crate::namespace::tables::{Tomb, WriteTables, read_dirent, read_inode};
use crate::namespace::types::*;

/// What a create makes.
pub(crate) struct NewInode {
    pub(crate) kind: FileKind,
    pub(crate) perm: u16,
    pub(crate) rdev: u32,
    pub(crate) target: Option<Vec<u8>>,
}

/// The inode a replayed create brings: its origin's, and not in use here (a record naming
/// an inode that exists is malformed or hostile, and is skipped).
fn replayed_inode(t: &WriteTables<'_>, ctx: &Ctx<'_>, fx: &Effects) -> Result<InodeId, NsError> {
    let ino = fx
        .created
        .ok_or_else(|| NsError::Invalid("create record without its inode".into()))?;
    if ino.region() != ctx.region() {
        return Err(NsError::Invalid(format!(
            "created {ino} is not of the record's region {}",
            ctx.region().0
        )));
    }
    if read_inode(t.inodes()?, ino)?.is_some() || t.tomb(ino)?.is_some() {
        return Err(NsError::Invalid(format!("created {ino} exists already")));
    }
    Ok(ino)
}

/// A reserved inode number a create was given: of this region and never used.
fn given_inode(t: &WriteTables<'_>, ctx: &Ctx<'_>, ino: InodeId) -> Result<InodeId, NsError> {
    if ino.region() != ctx.region()
        || read_inode(t.inodes()?, ino)?.is_some()
        || t.tomb(ino)?.is_some()
    {
        return Err(NsError::Invalid(format!("inode number {ino} is not free")));
    }
    Ok(ino)
}

pub(crate) fn make(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    parent: InodeId,
    name: &[u8],
    new: NewInode,
    exclusive: bool,
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_name(name)?;
    let dir = live_dir(t, ctx, parent)?;
    let mut name = Cow::Borrowed(name);
    let existing = read_dirent(t.dirents()?, parent, &name)?;
    match (ctx.replay.map(|fx| fx.created), existing) {
        // At its origin the open found an existing file and created nothing.
        (Some(None), _) => return Ok(Reply::Done),
        // Another region created the same name concurrently: the later one (this one, in
        // stamp order) takes a conflict name; both live.
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
                    region_name(ctx.region()),
                    name_str(&other)
                ),
            )?;
            name = Cow::Owned(other);
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
    let is_dir = new.kind == FileKind::Dir;
    let mut vol = volume_for(t, ctx, dir.attr.volume)?;
    ctx.origin_check(|| {
        check_access(&dir.attr, creds, W | X)?;
        if is_dir && dir.attr.nlink >= LINK_MAX {
            return Err(NsError::TooManyLinks(parent.to_string()));
        }
        if vol
            .policy
            .quota_inodes
            .is_some_and(|q| vol.used_inodes >= q)
        {
            return Err(NsError::Quota(format!("volume {} inode quota", vol.name)));
        }
        Ok(())
    })?;
    let ino = match ctx.replay {
        Some(fx) => replayed_inode(t, ctx, fx)?,
        None => match ctx.given {
            Some(ino) => given_inode(t, ctx, ino)?,
            None => new_inode_id(t, ctx.region())?,
        },
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
        copy_of: None,
        cuts: Vec::new(),
    };
    t.put_inode(&inode)?;
    t.set_dirent(parent, name, ino, new.kind)?;
    t.change_dir(parent, i64::from(is_dir), Some(ctx.now))?;
    vol.used_inodes += 1;
    t.put_volume(&vol)?;
    Ok(Reply::Attr(inode.attr))
}

pub(crate) fn link(
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
    let dir = live_dir(t, ctx, new_parent)?;
    ctx.origin_check(|| check_access(&dir.attr, creds, W | X))?;
    if dir.attr.volume != target.attr.volume {
        return Err(NsError::CrossVolume(format!("{ino} into {new_parent}")));
    }
    let mut new_name = Cow::Borrowed(new_name);
    if read_dirent(t.dirents()?, new_parent, &new_name)?.is_some() {
        if !ctx.replaying() {
            return Err(NsError::Exists(name_str(&new_name)));
        }
        new_name = Cow::Owned(conflict_name(t, new_parent, &new_name, ctx.hlc)?);
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
    ctx.origin_check(|| {
        if target.attr.nlink >= LINK_MAX {
            return Err(NsError::TooManyLinks(ino.to_string()));
        }
        Ok(())
    })?;
    target.attr.nlink = target.attr.nlink.saturating_add(1);
    target.attr.ctime = ctx.now;
    t.put_inode(&target)?;
    t.set_dirent(new_parent, new_name, ino, target.attr.kind)?;
    t.change_dir(new_parent, 0, Some(ctx.now))?;
    Ok(Reply::Attr(target.attr))
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
    if !is_dir && ctx.replay.and_then(|fx| fx.links).is_some_and(|n| n > 1) {
        // Its origin removed one of several names; other regions removed the others
        // concurrently. Nobody removed the file: it keeps a name.
        let keep = conflict_name(t, dir, name, ctx.hlc)?;
        victim.attr.nlink = 1;
        t.set_dirent(dir, &keep, victim.attr.ino, victim.attr.kind)?;
        t.put_inode(&victim)?;
        return record_conflict(
            t,
            ctx,
            "delete",
            Some(victim.attr.ino),
            format!(
                "{} removed the name {:?} of {}, whose other names other regions removed concurrently: it stays as {:?}",
                region_name(ctx.region()),
                name_str(name),
                victim.attr.ino,
                name_str(&keep)
            ),
        );
    }
    let ino = victim.attr.ino;
    let mut vol = volume_for(t, ctx, victim.attr.volume)?;
    if vol.policy.regions.len() > 1 {
        t.put_tomb(&Tomb {
            inode: victim.clone(),
            dir,
            name: name.to_vec(),
            at: ctx.hlc,
        })?;
    } else {
        crate::namespace::trim::drop_extents(t, ino, victim.attr.volume)?;
        t.del_xattrs(ino)?;
    }
    t.del_inode(ino)?;
    vol.used_inodes = vol.used_inodes.saturating_sub(1);
    if victim.attr.kind == FileKind::File {
        vol.used_bytes = vol.used_bytes.saturating_sub(victim.attr.size);
    }
    t.put_volume(&vol)
}

/// Unlink (`dir_wanted` false) or rmdir.
pub(crate) fn remove(
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
    let dir = get_dir(t, parent)?;
    let entry = find_entry(t, ctx, parent, name)?;
    let name = entry.name.as_slice();
    ctx.origin_check(|| check_access(&dir.attr, creds, W | X))?;
    let victim = get(t, entry.ino)?;
    match (dir_wanted, victim.attr.kind == FileKind::Dir) {
        (true, false) => return Err(NsError::NotDir(name_str(name))),
        (false, true) => return Err(NsError::IsDir(name_str(name))),
        (true, true) if !is_empty_dir(t, victim.attr.ino)? => {
            return Err(NsError::NotEmpty(name_str(name)));
        }
        _ => {}
    }
    ctx.origin_check(|| check_sticky(&dir, &victim, creds))?;
    if !ctx.replaying() && !dir_wanted {
        ctx.out.borrow_mut().links = Some(victim.attr.nlink);
    }
    if victim.attr.kind == FileKind::File && victim.attr.nlink <= 1 {
        match ctx.replay {
            // The file was changed by another region since this delete's origin saw it:
            // the change wins, the file stays.
            Some(fx) if fx.seen.unwrap_or_default() != victim.content => {
                return Err(NsError::Conflict(format!(
                    "{:?} was changed concurrently by {}: it stays",
                    name_str(name),
                    region_name(victim.content.region)
                )));
            }
            Some(_) => {}
            None => ctx.out.borrow_mut().seen = Some(victim.content),
        }
    }
    t.del_dirent(parent, name)?;
    t.change_dir(parent, -i64::from(dir_wanted), Some(ctx.now))?;
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
    Err(NsError::Invalid(format!(
        "the parents of {ancestor} go on past 100000 directories (a cycle?)"
    )))
}

/// Where a rename takes its entry from: `name` in `parent` first applied; replayed, the
/// record's inode wherever it is now. Another region may have moved it concurrently: a
/// move acts on the inode (as in Kleppmann's replicated tree), so the later move in stamp
/// order takes it from where the earlier one put it.
fn rename_source(
    t: &WriteTables<'_>,
    ctx: &Ctx<'_>,
    parent: InodeId,
    name: &[u8],
) -> Result<(InodeId, DirEntry), NsError> {
    match find_entry(t, ctx, parent, name) {
        Ok(e) => Ok((parent, e)),
        Err(NsError::NotFound(why)) => {
            let Some(ino) = ctx.replay.and_then(|fx| fx.target) else {
                return Err(NsError::NotFound(why));
            };
            let node = get(t, ino)?;
            let e = entry_of(t, node.parent, ino)?.ok_or(NsError::NotFound(why))?;
            Ok((node.parent, e))
        }
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
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
    if !ctx.replaying() {
        get_dir(t, parent)?;
    }
    let dst_dir = live_dir(t, ctx, new_parent)?;
    let (parent, src) = rename_source(t, ctx, parent, name)?;
    let name = src.name.as_slice();
    let src_dir = get_dir(t, parent)?;
    ctx.origin_check(|| {
        check_access(&src_dir.attr, creds, W | X)?;
        check_access(&dst_dir.attr, creds, W | X)
    })?;
    if src_dir.attr.volume != dst_dir.attr.volume {
        return Err(NsError::CrossVolume(format!("{parent} to {new_parent}")));
    }
    let moving = get(t, src.ino)?;
    ctx.origin_check(|| check_sticky(&src_dir, &moving, creds))?;
    let mut new_name = Cow::Borrowed(new_name);
    let mut dst = read_dirent(t.dirents()?, new_parent, &new_name)?;
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
            new_name = Cow::Owned(other);
            dst = None;
        }
        _ => {}
    }
    let new_name: &[u8] = &new_name;
    let replaced = match &dst {
        Some(d) => Some(get(t, d.ino)?),
        None => None,
    };
    if !ctx.replaying()
        && let Some(r) = &replaced
        && r.attr.ino != src.ino
    {
        let mut out = ctx.out.borrow_mut();
        out.replaced = Some(r.attr.ino);
        out.replaced_seen = Some(r.content);
        out.links = Some(r.attr.nlink);
    }
    if let Some(r) = &replaced {
        ctx.origin_check(|| check_sticky(&dst_dir, r, creds))?;
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
    if moving_dir && parent != new_parent {
        // Its ".." changes, which needs write permission on the directory itself.
        ctx.origin_check(|| {
            if creds.uid != 0 {
                check_access(&moving.attr, creds, W)?;
            }
            Ok(())
        })?;
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
        if parent != new_parent {
            let delta =
                i64::from(b.attr.kind == FileKind::Dir) - i64::from(a.attr.kind == FileKind::Dir);
            t.change_dir(new_parent, -delta, Some(ctx.now))?;
            t.change_dir(parent, delta, Some(ctx.now))?;
        } else {
            t.change_dir(parent, 0, Some(ctx.now))?;
        }
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
    ctx.origin_check(|| {
        if gains_subdir && dst_dir.attr.nlink >= LINK_MAX {
            return Err(NsError::TooManyLinks(new_parent.to_string()));
        }
        Ok(())
    })?;

    // All checks passed: write.
    t.del_dirent(parent, name)?;
    t.set_dirent(new_parent, new_name, moving.attr.ino, moving.attr.kind)?;
    let mut moved = moving;
    moved.parent = new_parent;
    moved.attr.ctime = ctx.now;
    t.put_inode(&moved)?;
    if let Some(r) = replaced
        && !keep_replaced(t, ctx, &r, new_parent, new_name)?
    {
        let r_dir = r.attr.kind == FileKind::Dir;
        drop_link(t, ctx, r, new_parent, new_name)?;
        if r_dir {
            t.change_dir(new_parent, -1, None)?;
        }
    }
    let moved_dir = i64::from(moving_dir && parent != new_parent);
    t.change_dir(parent, -moved_dir, Some(ctx.now))?;
    if parent != new_parent {
        t.change_dir(new_parent, moved_dir, Some(ctx.now))?;
    }
    Ok(Reply::Done)
}
