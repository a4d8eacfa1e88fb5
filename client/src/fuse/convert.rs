//! Conversions between the kernel's view (FUSE types, a request's caller) and the
//! namespace's.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request};
use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, FileKind, Timespec};

pub(super) fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0)
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

pub(super) fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (sec, nsec) = if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            };
            Timespec { sec, nsec }
        }
    }
}

pub(super) fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

pub(super) fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & 0o170000 {
        0o100000 | 0 => FileKind::File,
        0o040000 => FileKind::Dir,
        0o020000 => FileKind::CharDev,
        0o060000 => FileKind::BlockDev,
        0o010000 => FileKind::Fifo,
        0o140000 => FileKind::Socket,
        _ => return None,
    })
}

pub(super) fn creds(req: &Request) -> Creds {
    Creds {
        uid: req.uid(),
        gid: req.gid(),
        groups: supplementary_groups(req.pid(), req.uid(), req.gid()),
    }
}

/// How long a caller's supplementary groups are reused. Only a process with CAP_SETGID can
/// change its groups without changing its uid (a new process gets a new pid), so the risk
/// is a pid reused within this time by the same uid and gid with other groups.
const GROUPS_FRESH: Duration = Duration::from_secs(1);

/// Callers whose groups were read lately, by (pid, uid, gid).
type GroupsCache = HashMap<(u32, u32, u32), (Instant, Vec<u32>)>;

/// The caller's supplementary groups, read from /proc (FUSE does not carry them). Root's
/// are never read: no permission check looks at them (root passes every group check), and
/// reading /proc costs five system calls and the kernel formatting the whole status file.
fn supplementary_groups(pid: u32, uid: u32, gid: u32) -> Vec<u32> {
    static CACHE: OnceLock<Mutex<GroupsCache>> = OnceLock::new();
    if uid == 0 {
        return Vec::new();
    }
    let cache = CACHE.get_or_init(Default::default);
    let key = (pid, uid, gid);
    let now = Instant::now();
    if let Some((at, groups)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && now.duration_since(*at) < GROUPS_FRESH
    {
        return groups.clone();
    }
    let groups = read_groups(pid);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 4096 {
        cache.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_FRESH);
    }
    cache.insert(key, (now, groups.clone()));
    groups
}

fn read_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn err(code: i32) -> Errno {
    Errno::from_i32(code)
}

/// Preferred I/O size reported to programs (st_blksize).
const BLKSIZE: u32 = 1 << 20;

/// Inode numbers and attributes as the kernel sees them (its root is the volume's).
impl super::FuseFs {
    pub(super) fn ino(&self, kernel: INodeNo) -> InodeId {
        if kernel == INodeNo::ROOT {
            self.root
        } else {
            InodeId(kernel.0)
        }
    }

    pub(super) fn attr(&self, a: &Attr) -> FileAttr {
        let ino = if a.ino == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(a.ino.0)
        };
        FileAttr {
            ino,
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.ctime),
            crtime: time(a.crtime),
            kind: kind(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: BLKSIZE,
            flags: 0,
        }
    }
}
