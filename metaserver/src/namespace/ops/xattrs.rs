//! Extended attributes.

use meridian_proto::InodeId;
use redb::ReadableTable;

use crate::namespace::access::{check_xattr_name, check_xattr_write};
use crate::namespace::conflict::live;
use crate::namespace::ctx::*;
use crate::namespace::tables::{WriteTables, dirent_end, dirent_key, store_err};
use crate::namespace::types::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn setxattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    name: &[u8],
    value: &[u8],
    mode: XattrMode,
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_xattr_name(name)?;
    if value.len() > XATTR_VALUE_MAX {
        return Err(NsError::TooBig(format!(
            "xattr value of {} bytes",
            value.len()
        )));
    }
    let mut node = live(t, ctx, ino)?;
    ctx.origin_check(|| {
        check_xattr_write(&node.attr, name, creds)?;
        let key = dirent_key(ino, name);
        let exists = t
            .xattrs()?
            .get(key.as_slice())
            .map_err(store_err)?
            .is_some();
        match mode {
            XattrMode::Create if exists => Err(NsError::Exists(name_str(name))),
            XattrMode::Replace if !exists => Err(NsError::NoData(name_str(name))),
            _ => Ok(()),
        }
    })?;
    t.set_xattr(ino, name, value)?;
    node.attr.ctime = ctx.now;
    t.put_inode(&node)?;
    Ok(Reply::Done)
}

/// Whether `ino` has room for extended attribute `name`: it has it already, or its names,
/// each with a NUL, stay within [`XATTR_LIST_MAX`] with it, in `xattrs`. Decided where a
/// client's change is proposed, not where it applies: every member applies the same,
/// whatever its version. A change made meanwhile, or a concurrent one from another
/// region, may take a file past it (its names then list only in pieces by name). Names a
/// caller may not see (`trusted.*`) count too, as on Linux.
pub(crate) fn room_for(
    xattrs: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ino: InodeId,
    name: &[u8],
) -> Result<(), NsError> {
    if xattrs
        .get(dirent_key(ino, name).as_slice())
        .map_err(store_err)?
        .is_some()
    {
        return Ok(());
    }
    let (from, to) = (dirent_key(ino, b""), dirent_end(ino));
    let mut used = name.len() + 1;
    for item in xattrs
        .range(from.as_slice()..to.as_slice())
        .map_err(store_err)?
    {
        let (k, _) = item.map_err(store_err)?;
        used += k.value().len().saturating_sub(8) + 1;
        if used > XATTR_LIST_MAX {
            return Err(NsError::NoSpace(format!(
                "the extended attribute names of {ino} would take more than {XATTR_LIST_MAX} bytes"
            )));
        }
    }
    Ok(())
}

pub(crate) fn removexattr(
    t: &mut WriteTables<'_>,
    ctx: &Ctx<'_>,
    ino: InodeId,
    name: &[u8],
    creds: &Creds,
) -> Result<Reply, NsError> {
    check_xattr_name(name)?;
    let mut node = live(t, ctx, ino)?;
    ctx.origin_check(|| check_xattr_write(&node.attr, name, creds))?;
    // Replayed, an attribute already gone (removed concurrently) is what was asked for.
    if !t.del_xattr(ino, name)? && !ctx.replaying() {
        return Err(NsError::NoData(name_str(name)));
    }
    node.attr.ctime = ctx.now;
    t.put_inode(&node)?;
    Ok(Reply::Done)
}
