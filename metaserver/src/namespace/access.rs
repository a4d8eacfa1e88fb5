//! The POSIX checks an operation makes where it first runs: names, permission bits,
//! sticky directories, xattr namespaces. Pure functions of the attributes and the caller.
//! A replay in another region does not run the ones that depend on the origin's state
//! (see `Ctx::origin_check`).

use super::types::*;

/// Permission bits asked for by an access check.
pub(crate) const R: u16 = 4;
pub(crate) const W: u16 = 2;
pub(crate) const X: u16 = 1;

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

/// [`may`], as an error naming the inode and the caller.
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

/// Sticky directories: only the owner of the entry, of the directory, or root may remove it.
pub(crate) fn check_sticky(dir: &Inode, victim: &Inode, creds: &Creds) -> Result<(), NsError> {
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

/// An xattr name's shape: its length and a namespace this filesystem stores.
pub(crate) fn check_xattr_name(name: &[u8]) -> Result<(), NsError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(NsError::TooBig(format!(
            "xattr name of {} bytes",
            name.len()
        )));
    }
    let known = [&b"user."[..], b"security.", b"system.", b"trusted."];
    if known.iter().any(|p| name.starts_with(p)) {
        Ok(())
    } else {
        Err(NsError::NotSupported(format!(
            "xattr namespace of {:?}",
            String::from_utf8_lossy(name)
        )))
    }
}

/// Whether the caller may change the xattr `name` of `attr`: trusted.* needs root, user.*
/// exists only on files and directories and needs write permission.
pub(crate) fn check_xattr_write(attr: &Attr, name: &[u8], creds: &Creds) -> Result<(), NsError> {
    if name.starts_with(b"trusted.") && creds.uid != 0 {
        return Err(NsError::Perm("trusted.* xattrs need root".into()));
    }
    if name.starts_with(b"user.") {
        if !matches!(attr.kind, FileKind::File | FileKind::Dir) {
            return Err(NsError::Perm(format!("user xattrs on {:?}", attr.kind)));
        }
        check_access(attr, creds, W)?;
    }
    Ok(())
}

/// Clears setuid, and setgid when it is a real setgid bit (group-executable), as Linux
/// does on a chown of a non-directory or a write by a non-owner.
pub(crate) fn drop_setid(attr: &mut Attr) {
    attr.perm &= !0o4000;
    if attr.perm & 0o010 != 0 {
        attr.perm &= !0o2000;
    }
}
