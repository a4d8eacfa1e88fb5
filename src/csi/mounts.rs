//! The node's view of the kernel's mounts: which paths are mounted and by what, whether a
//! FUSE mount still has its daemon, and bind mounts made and undone.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The file system's type (`fuse.meridian` for a mount).
    pub fstype: String,
    /// Its source.
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next().unwrap_or_default());
            Some(MountEntry {
                point: PathBuf::from(unescape(point)),
                fstype,
                source,
            })
        })
        .collect()
}

/// The topmost mount at `path`, if it is a mount point.
pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.point == path)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// File system statistics of a path.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = cstr(path)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether a mount point answers (a FUSE mount whose daemon died says ENOTCONN).
pub fn answers(path: &Path) -> bool {
    statvfs(path).is_ok()
}

/// Opens folder `sub` of `base` without following any symlink in `sub` (a user of the
/// volume could plant one to reach a host path), making folders that are missing. The fd
/// pins the folder: bind it through `/proc/self/fd/N` ([`bind_fd`]).
pub fn open_beneath(base: &Path, sub: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let c = cstr(base)?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for part in sub.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a subdirectory must be a plain relative path",
            ));
        };
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))?;
        use std::os::fd::AsRawFd;
        let open = |d: &OwnedFd| {
            // SAFETY: a valid dir fd and NUL-terminated name.
            unsafe { libc::openat(d.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW) }
        };
        let mut next = open(&dir);
        if next < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
            // SAFETY: as above.
            let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::last_os_error());
            }
            next = open(&dir);
        }
        if next < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} holds a symlink or a file where a folder should be",
                        sub.display()
                    ),
                ),
                _ => e,
            });
        }
        // SAFETY: just opened, owned by nobody else.
        dir = unsafe { OwnedFd::from_raw_fd(next) };
    }
    Ok(dir)
}

/// Bind-mounts the folder `dir` is open on at `dst`.
pub fn bind_fd(dir: &std::os::fd::OwnedFd, dst: &Path, read_only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    bind(
        Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())),
        dst,
        read_only,
    )
}

/// Bind-mounts `src` at `dst`, read-only if asked.
pub fn bind(src: &Path, dst: &Path, read_only: bool) -> io::Result<()> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    // SAFETY: valid NUL-terminated paths; null type and data are allowed for MS_BIND.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if read_only {
        // SAFETY: as above; a bind remount changes only the new mount's flags.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let _ = unmount(dst);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `path`; a busy or dead mount is detached (lazily unmounted) instead. Not a
/// mount point: nothing to do.
pub fn unmount(path: &Path) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) if mounted_at(path).is_none() => Ok(()),
        Some(libc::ENOENT) => Ok(()),
        _ => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - fuse.meridian meridian:vol rw\n\
                    37 35 98:0 / /x rw shared:2 master:3 - ext4 /dev/sda1 rw,errors=continue\n";
        let got = parse_mountinfo(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].point, PathBuf::from("/mnt/a b"));
        assert_eq!(got[0].fstype, "fuse.meridian");
        assert_eq!(got[0].source, "meridian:vol");
        assert_eq!(got[1].fstype, "ext4");
    }
}
