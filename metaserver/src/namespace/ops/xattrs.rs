//! Extended attributes.

use meridian_proto::InodeId;
use redb::ReadableTable;

use crate::namespace::access::{check_xattr_name, check_xattr_write};
use crate::namespace::conflict::live;
use crate::namespace::ctx::*;
use crate::namespace::tables::{WriteTables, dirent_key, store_err};
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
