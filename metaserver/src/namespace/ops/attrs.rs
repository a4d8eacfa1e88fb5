//! Attributes: chmod, chown, truncate, utimes, and atime on reads.

use meridian_proto::InodeId;

use crate::namespace::access::{W, check_access, drop_setid, may};
use crate::namespace::conflict::{copy_again, live, volume_for, writer_base};
use crate::namespace::ctx::*;
use crate::namespace::ops::content::check_byte_quota;
use crate::namespace::tables::WriteTables;
use crate::namespace::types::*;

fn resolve(time: SetTime, now: Timespec) -> Timespec {
    match time {
        SetTime::At(ts) => ts,
        SetTime::Now => now,
    }
}

pub(crate) fn setattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    set: &SetAttr,
    creds: &Creds,
) -> Result<Reply, NsError> {
    let mut node = match live(t, ctx, ino) {
        Err(NsError::NotFound(why)) if set.size.is_some() => {
            copy_again(t, ctx, ino)?.ok_or(NsError::NotFound(why))?
        }
        other => other?,
    };
    let owner = creds.uid == 0 || creds.uid == node.attr.uid;
    if let Some(perm) = set.perm {
        ctx.origin_check(|| {
            if owner {
                Ok(())
            } else {
                Err(NsError::Perm(format!(
                    "chmod of {ino} by uid {}",
                    creds.uid
                )))
            }
        })?;
        let mut perm = perm & 0o7777;
        if creds.uid != 0 && !creds.in_group(set.gid.unwrap_or(node.attr.gid)) {
            perm &= !0o2000;
        }
        node.attr.perm = perm;
    }
    if set.uid.is_some() || set.gid.is_some() {
        let uid_change = set.uid.is_some_and(|u| u != node.attr.uid);
        let gid_change = set.gid.is_some_and(|g| g != node.attr.gid);
        ctx.origin_check(|| {
            if creds.uid == 0 {
                return Ok(());
            }
            if uid_change {
                return Err(NsError::Perm(format!(
                    "chown of {ino} by uid {}",
                    creds.uid
                )));
            }
            if gid_change && (!owner || !set.gid.is_some_and(|g| creds.in_group(g))) {
                return Err(NsError::Perm(format!(
                    "chgrp of {ino} by uid {}",
                    creds.uid
                )));
            }
            Ok(())
        })?;
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
            ctx.origin_check(|| check_access(&node.attr, creds, W))?;
        }
        // A truncate replaces content like a write does (open with O_TRUNC, then write).
        node = writer_base(t, ctx, node)?;
        let mut vol = volume_for(t, ctx, node.attr.volume)?;
        let old = node.attr.size;
        check_byte_quota(ctx, &vol, old, size)?;
        if size < old {
            crate::namespace::trim::truncate(t, &mut node, size)?;
        }
        vol.used_bytes = vol.used_bytes.saturating_sub(old).saturating_add(size);
        t.put_volume(&vol)?;
        if size != old {
            node.version += 1;
            node.content = ctx.hlc;
        }
        node.attr.size = size;
        node.attr.mtime = ctx.now;
        // A truncate by a caller without the privilege drops setuid/setgid, as a write does.
        if creds.uid != 0 && set.perm.is_none() {
            drop_setid(&mut node.attr);
        }
    }
    for (which, time) in [("atime", set.atime), ("mtime", set.mtime)] {
        let Some(time) = time else { continue };
        ctx.origin_check(|| match time {
            SetTime::At(_) if !owner => Err(NsError::Perm(format!(
                "utimes of {ino} by uid {}",
                creds.uid
            ))),
            SetTime::Now if !owner && !may(&node.attr, creds, W) => Err(NsError::Access(format!(
                "utimes of {ino} by uid {}",
                creds.uid
            ))),
            _ => Ok(()),
        })?;
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

/// [`accessed`] for each of `inos`, all of one volume; one removed meanwhile is passed
/// over (its read raced its unlink).
pub(crate) fn accessed_batch(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    inos: &[InodeId],
) -> Result<Reply, NsError> {
    if inos.len() > meridian_proto::ns::ACCESSED_BATCH_MAX {
        return Err(NsError::Invalid(format!(
            "{} inodes in one access batch; at most {}",
            inos.len(),
            meridian_proto::ns::ACCESSED_BATCH_MAX
        )));
    }
    let mut volume = None;
    for &ino in inos {
        let node = match get(t, ino) {
            Ok(node) => node,
            Err(NsError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if *volume.get_or_insert(node.attr.volume) != node.attr.volume {
            return Err(NsError::Invalid(
                "an access batch names inodes of several volumes".into(),
            ));
        }
        touch_atime(t, ctx, node)?;
    }
    Ok(Reply::Done)
}

pub(crate) fn accessed(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
) -> Result<Reply, NsError> {
    let node = get(t, ino)?;
    Ok(Reply::Attr(touch_atime(t, ctx, node)?))
}

/// Moves `node`'s atime to now if relatime says it is due; returns its attributes.
fn touch_atime(t: &mut WriteTables<'_>, ctx: &Ctx<'_>, mut node: Inode) -> Result<Attr, NsError> {
    let a = &node.attr;
    if a.atime_due(ctx.now) && ctx.now > a.atime {
        node.attr.atime = ctx.now;
        t.put_inode(&node)?;
    }
    Ok(node.attr)
}
