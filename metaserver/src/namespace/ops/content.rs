//! File content: commits of written extents, truncation, compaction.

use meridian_proto::InodeId;
use redb::ReadableTable;

use crate::namespace::access::{R, W, check_access, drop_setid, may};
use crate::namespace::conflict::{live, recover, volume_for, writer_base};
use crate::namespace::ctx::*;
use crate::namespace::tables::{WriteTables, pair_key, read_extents, store_err};
use crate::namespace::trim;
use crate::namespace::types::*;

/// Drops every extent byte at or after `size`.
pub(crate) fn truncate_extents(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    size: u64,
) -> Result<(), NsError> {
    for e in read_extents(t.extents()?, ino, size, u64::MAX)? {
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

/// Takes `[start, end)` out of the extent map of `ino`: extents inside go, extents across
/// an edge keep their part outside.
pub(crate) fn cut(
    t: &mut WriteTables<'_>,
    ino: InodeId,
    start: u64,
    end: u64,
) -> Result<(), NsError> {
    let old = read_extents(t.extents()?, ino, start, end)?;
    for o in &old {
        t.remove_extent(ino, o)?;
    }
    for o in &old {
        if o.offset < start {
            t.insert_extent(
                ino,
                &Extent {
                    len: start - o.offset,
                    ..*o
                },
            )?;
        }
        if o.end() > end {
            let skip = end - o.offset;
            t.insert_extent(
                ino,
                &Extent {
                    offset: end,
                    len: o.end() - end,
                    block_offset: o.block_offset + skip as u32,
                    ..*o
                },
            )?;
        }
    }
    Ok(())
}

/// Inserts `e`, cutting away the parts of older extents it shadows. (A block's count may
/// pass through 0 inside the transaction; nobody sees it there.)
pub(crate) fn overlay(t: &mut WriteTables<'_>, ino: InodeId, e: &Extent) -> Result<(), NsError> {
    cut(t, ino, e.offset, e.end())?;
    t.insert_extent(ino, e)
}

/// A file that must exist for a content change (brought back, or its write recovered, in
/// a replay), and may be written by the caller.
fn writable_file(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    creds: &Creds,
) -> Result<Inode, NsError> {
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
    Ok(node)
}

/// After a content change of `node` to `new_size` bytes: the volume's bytes, the version,
/// the times, and setuid/setgid dropped for a writer without the privilege (as Linux).
fn changed(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    mut node: Inode,
    mut vol: Volume,
    new_size: u64,
    creds: &Creds,
) -> Result<Attr, NsError> {
    vol.used_bytes = vol
        .used_bytes
        .saturating_sub(node.attr.size)
        .saturating_add(new_size);
    t.put_volume(&vol)?;
    node.attr.size = new_size;
    node.attr.mtime = ctx.now;
    node.attr.ctime = ctx.now;
    node.version += 1;
    node.content = ctx.hlc;
    if creds.uid != 0 {
        drop_setid(&mut node.attr);
    }
    t.put_inode(&node)?;
    Ok(node.attr)
}

/// Makes `[offset, offset + len)` a hole; the size stays.
pub(crate) fn punch_hole(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    offset: u64,
    len: u64,
    creds: &Creds,
) -> Result<Reply, NsError> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| NsError::Invalid(format!("hole of {len} bytes at {offset} overflows")))?;
    let node = writable_file(t, ctx, ino, creds)?;
    let mut node = writer_base(t, ctx, node)?;
    let vol = volume_for(t, ctx, node.attr.volume)?;
    trim::punch(t, &mut node, (offset, end))?;
    let size = node.attr.size;
    changed(t, ctx, node, vol, size, creds).map(Reply::Attr)
}

/// Most rows a copy of a range takes from its source, and drops from its destination, in
/// one entry: the copy of a file of many extents (`cp` of a database file or a disk image
/// calls `copy_file_range` for all of it) would hold every other client's change as long
/// as all of them take, as a removal did (`trim.rs`).
pub const COPY_ROWS: usize = 2048;

/// `len`, or less: up to where the source's row after the first [`COPY_ROWS`] from
/// `src_offset` on starts, and likewise the destination's, in `extents`. Decided where a
/// client's copy is proposed and carried in it, so that every member applies the same
/// copy, whatever its version; a shorter copy is answered as such (`copy_file_range`
/// returns what it copied, and its callers ask again for the rest). Never 0 for a
/// non-empty range: the row that bounds it starts past the range's start.
pub(crate) fn copy_len(
    extents: &impl ReadableTable<&'static [u8], &'static [u8]>,
    (src, src_offset): (InodeId, u64),
    (dst, dst_offset): (InodeId, u64),
    len: u64,
) -> Result<u64, NsError> {
    let mut len = len;
    for (ino, at) in [(src, src_offset), (dst, dst_offset)] {
        // Rows starting in the stretch, leftovers of a cut too (dropped or read all the
        // same).
        let lo = pair_key(ino.0, at);
        let hi = pair_key(ino.0, at.saturating_add(len));
        let mut range = extents
            .range(lo.as_slice()..hi.as_slice())
            .map_err(store_err)?;
        if let Some(item) = range.nth(COPY_ROWS) {
            let (k, _) = item.map_err(store_err)?;
            let offset = u64::from_be_bytes(k.value()[8..16].try_into().expect("16-byte key"));
            len = len.min(offset - at);
        }
    }
    Ok(len)
}

/// Copies `len` bytes from `(src, src_offset)` to `(dst, dst_offset)` by sharing extents
/// (at most to the source's end); answers how many. A client's copy comes bounded in rows
/// ([`copy_len`]); a replay copies what its origin did.
pub(crate) fn copy_range(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    (src, src_offset): (InodeId, u64),
    (dst, dst_offset): (InodeId, u64),
    len: u64,
    creds: &Creds,
) -> Result<Reply, NsError> {
    let (len, moved) = match ctx.replay {
        // What the origin copied, whatever the source holds by now.
        Some(fx) => {
            let (len, moved) = fx
                .copied
                .clone()
                .ok_or_else(|| NsError::Invalid("copy record without its extents".into()))?;
            for e in &moved {
                check_extent(dst, e)?;
            }
            (len, moved)
        }
        None => {
            let source = get(t, src)?;
            match source.attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(NsError::IsDir(src.to_string())),
                _ => return Err(NsError::Invalid(format!("copy from non-file {src}"))),
            }
            check_access(&source.attr, creds, R)?;
            let target = get(t, dst)?;
            if target.attr.volume != source.attr.volume {
                return Err(NsError::CrossVolume(format!("copy from {src} to {dst}")));
            }
            let len = len.min(source.attr.size.saturating_sub(src_offset));
            let src_end = src_offset + len;
            // What the source holds there (not what a cut of it left), read before the
            // destination changes (it may be the same file), moved to the destination's
            // offsets.
            let mut moved = Vec::new();
            let held = read_extents(t.extents()?, src, src_offset, src_end)?;
            for e in trim::live(&source, held) {
                let from = e.offset.max(src_offset);
                let to = e.end().min(src_end);
                moved.push(Extent {
                    offset: dst_offset.checked_add(from - src_offset).ok_or_else(|| {
                        NsError::Invalid(format!("copy to {dst_offset} overflows"))
                    })?,
                    len: to - from,
                    block_offset: e.block_offset + (from - e.offset) as u32,
                    ..e
                });
            }
            ctx.out.borrow_mut().copied = Some((len, moved.clone()));
            (len, moved)
        }
    };
    let dst_end = dst_offset
        .checked_add(len)
        .ok_or_else(|| NsError::Invalid(format!("copy to {dst_offset} overflows")))?;
    let node = writable_file(t, ctx, dst, creds)?;
    let mut node = writer_base(t, ctx, node)?;
    let new_size = if len > 0 {
        node.attr.size.max(dst_end)
    } else {
        node.attr.size
    };
    let vol = volume_for(t, ctx, node.attr.volume)?;
    check_byte_quota(ctx, &vol, node.attr.size, new_size)?;
    trim::expose(t, &mut node, (dst_offset, dst_end))?;
    cut(t, dst, dst_offset, dst_end)?;
    for e in &moved {
        t.insert_extent(dst, e)?;
    }
    let attr = changed(t, ctx, node, vol, new_size, creds)?;
    Ok(Reply::Copied(len, attr))
}

pub(crate) fn commit(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    extents: &[Extent],
    size: u64,
    creds: &Creds,
) -> Result<Reply, NsError> {
    if extents.len() > COMMIT_EXTENTS_MAX {
        return Err(NsError::Invalid(format!(
            "a commit of {} extents: at most {COMMIT_EXTENTS_MAX}",
            extents.len()
        )));
    }
    for e in extents {
        check_extent(ino, e)?;
    }
    let node = writable_file(t, ctx, ino, creds)?;
    let mut node = writer_base(t, ctx, node)?;
    let end = extents.iter().map(Extent::end).max().unwrap_or(0);
    let new_size = node.attr.size.max(size).max(end);
    let vol = volume_for(t, ctx, node.attr.volume)?;
    check_byte_quota(ctx, &vol, node.attr.size, new_size)?;
    // Each extent's stretch out of the cuts, then the extent in: the next one's `expose`
    // must see what this overlay left (the pieces of a leftover it split).
    for e in extents {
        trim::expose(t, &mut node, (e.offset, e.end()))?;
        overlay(t, ino, e)?;
    }
    changed(t, ctx, node, vol, new_size, creds).map(Reply::Attr)
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
    // A replacement in a cut would be a leftover, and dropped by the steps; one reaching
    // into a cut would be content there (a cut holds none: it reads as a hole).
    if let Some(e) = replacement.iter().find(|e| {
        node.cuts
            .iter()
            .any(|c| c.from < e.end() && e.offset < c.to)
    }) {
        return Err(NsError::Conflict(format!(
            "replacement extent {e:?} meets a cut of {ino} ({:?})",
            node.cuts
        )));
    }
    // The content, as the compactor read it: the leftovers in the file's cuts (which
    // regions drop at their own pace) are none of it.
    let current = trim::live(&node, read_extents(t.extents()?, ino, offset, end)?);
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
