//! File content: commits of written extents, truncation, compaction.

use meridian_proto::InodeId;

use crate::namespace::access::{W, drop_setid, may};
use crate::namespace::conflict::{live, recover, volume_for, writer_base};
use crate::namespace::ctx::*;
use crate::namespace::tables::{WriteTables, read_extents};
use crate::namespace::types::*;

/// Drops every extent byte at or after `size`.
pub(crate) fn truncate_extents(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    size: u64,
) -> Result<(), NsError> {
    for e in read_extents(t.extents(), ino, size, u64::MAX)? {
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

/// A file growing from `old` to `new` bytes must fit the volume's byte quota (checked
/// where the change first runs).
pub(crate) fn check_byte_quota(
    ctx: &Ctx<'_>,
    vol: &Volume,
    old: u64,
    new: u64,
) -> Result<(), NsError> {
    ctx.origin_check(|| {
        let total = vol.used_bytes.saturating_sub(old).saturating_add(new);
        if new > old && vol.policy.quota_bytes.is_some_and(|q| total > q) {
            return Err(NsError::Quota(format!("volume {} byte quota", vol.name)));
        }
        Ok(())
    })
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
    let old = read_extents(t.extents(), ino, e.offset, e.end())?;
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

pub(crate) fn commit(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    extents: &[Extent],
    size: u64,
    creds: &Creds,
) -> Result<Reply, NsError> {
    for e in extents {
        check_extent(ino, e)?;
    }
    let node = match live(t, ctx, ino) {
        Err(NsError::NotFound(_)) if ctx.replaying() => recover(t, ctx, ino, creds)?,
        other => other?,
    };
    match node.attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(NsError::IsDir(ino.to_string())),
        _ => return Err(NsError::Invalid(format!("write to non-file {ino}"))),
    }
    ctx.origin_check(|| {
        if creds.uid != 0 && !may(&node.attr, creds, W) && creds.uid != node.attr.uid {
            return Err(NsError::Access(format!(
                "write to {ino} by uid {}",
                creds.uid
            )));
        }
        Ok(())
    })?;
    let mut node = writer_base(t, ctx, node)?;
    let end = extents.iter().map(Extent::end).max().unwrap_or(0);
    let new_size = node.attr.size.max(size).max(end);
    let mut vol = volume_for(t, ctx, node.attr.volume)?;
    let old = node.attr.size;
    check_byte_quota(ctx, &vol, old, new_size)?;
    for e in extents {
        overlay(t, ino, e)?;
    }
    vol.used_bytes = vol.used_bytes.saturating_sub(old).saturating_add(new_size);
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

pub(crate) fn compact(
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
    let current = read_extents(t.extents(), ino, offset, end)?;
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
