//! Directories whose every name this client knows, so a lookup of a name that is not
//! there is answered without the servers (every create and mkdir starts with one).
//!
//! A directory becomes known when this client creates it (empty) and stays known while
//! only this client's own mutations change it, one at a time: each adds or removes its
//! name. Anything else forgets it: a drop by the feed of other clients' changes (so a
//! known directory is exactly as current as the kernel's cached entries), a failed
//! mutation (it may or may not have applied), a rename, two mutations of this client at
//! once, or too many names to keep. Only answered while the feed answers, and only in a
//! volume that lives in one region (another region's records are merged without passing
//! through the change log the feed reads).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use meridian_proto::InodeId;
use meridian_proto::ns::{FileKind, Op, Reply};

/// The most directories known at once (beyond it, all are forgotten and learnt again).
const MAX_DIRS: usize = 1024;
/// The most names of one known directory.
const MAX_NAMES: usize = 1 << 16;

#[derive(Default)]
pub(super) struct KnownDirs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every mutation that starts.
    generation: u64,
    /// Mutations under way.
    running: usize,
    /// Known directories: their names, and the feed's drop count they are true at.
    dirs: HashMap<InodeId, (HashSet<Vec<u8>>, u64)>,
}

/// A mutation under way, from [`KnownDirs::starting`].
pub(super) struct Started {
    generation: u64,
    alone: bool,
    epoch: u64,
}

impl KnownDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A mutation starts while the feed has dropped `epoch` times.
    pub(super) fn starting(&self, epoch: u64) -> Started {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.running += 1;
        Started {
            generation: inner.generation,
            alone: inner.running == 1,
            epoch,
        }
    }

    /// The mutation `op` ended with `result`; the feed has dropped `epoch` times now.
    /// Returns whether it ran alone (no other mutation of this client overlapped it).
    pub(super) fn ended(
        &self,
        started: Started,
        op: &Op,
        result: Option<&Reply>,
        epoch: u64,
    ) -> bool {
        let mut inner = self.lock();
        inner.running -= 1;
        let clean = started.alone && inner.generation == started.generation;
        let settled = clean && started.epoch == epoch;
        let Some(reply) = result.filter(|_| settled) else {
            for dir in op.dirs_changed() {
                inner.dirs.remove(&dir);
            }
            return clean;
        };
        let (add, remove) = match op {
            Op::Mknod { parent, name, .. } | Op::Symlink { parent, name, .. } => {
                (Some((*parent, name)), None)
            }
            Op::Link {
                new_parent,
                new_name,
                ..
            } => (Some((*new_parent, new_name)), None),
            Op::Unlink { parent, name, .. } | Op::Rmdir { parent, name, .. } => {
                (None, Some((*parent, name)))
            }
            other => {
                for dir in other.dirs_changed() {
                    inner.dirs.remove(&dir);
                }
                return clean;
            }
        };
        if let Some((dir, name)) = add {
            let full = match inner.dirs.get_mut(&dir) {
                Some((names, at)) if *at == epoch => {
                    names.insert(name.clone());
                    names.len() > MAX_NAMES
                }
                _ => true,
            };
            if full {
                inner.dirs.remove(&dir);
            }
        }
        if let Some((dir, name)) = remove
            && let Some((names, _)) = inner.dirs.get_mut(&dir)
        {
            names.remove(name);
        }
        if let (Op::Mknod { kind, .. }, Reply::Attr(a)) = (op, reply)
            && *kind == FileKind::Dir
            && a.kind == FileKind::Dir
        {
            if inner.dirs.len() >= MAX_DIRS {
                inner.dirs.clear();
            }
            inner.dirs.insert(a.ino, (HashSet::new(), epoch));
        }
        clean
    }

    /// Forgets `dirs` (changed here without passing through [`KnownDirs::ended`]).
    pub(super) fn forget(&self, dirs: &[InodeId]) {
        let mut inner = self.lock();
        for d in dirs {
            inner.dirs.remove(d);
        }
    }

    /// Whether `name` is known not to be in `dir` while the feed has dropped `epoch` times.
    pub(super) fn absent(&self, dir: InodeId, name: &[u8], epoch: u64) -> bool {
        let mut inner = self.lock();
        match inner.dirs.get(&dir) {
            Some((names, at)) if *at == epoch => !names.contains(name),
            Some(_) => {
                inner.dirs.remove(&dir);
                false
            }
            None => false,
        }
    }
}

/// The most files kept as [`NewFiles`].
const MAX_NEW_FILES: usize = 1 << 16;

/// Files known to have no `security.capability`, so the kernel's question before writes
/// (whether the write must drop capabilities: before the first write to each file, and
/// before every O_DIRECT write) is answered without the servers. A file is known so when
/// this client created it (no file is created with one: only setxattr gives it) or the
/// servers said it has none; it is forgotten when this client sets or removes an
/// extended attribute of it, and all are on any drop by the feed of other clients'
/// changes (as [`KnownDirs`]).
#[derive(Default)]
pub(super) struct NewFiles {
    inner: Mutex<HashMap<InodeId, u64>>,
    /// Extended-attribute changes of this client started, and those under way: an answer
    /// of the servers read while one was under way may be older than it.
    xattr_changes: Mutex<(u64, usize)>,
}

impl NewFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, u64>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, (u64, usize)> {
        self.xattr_changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mutation `op` starts.
    pub(super) fn starting(&self, op: &Op) {
        if matches!(op, Op::SetXattr { .. } | Op::RemoveXattr { .. }) {
            let mut c = self.changes();
            c.0 += 1;
            c.1 += 1;
        }
    }

    /// A question to the servers starts: give [`told_none`](Self::told_none) the result.
    pub(super) fn asking(&self) -> u64 {
        let c = self.changes();
        if c.1 > 0 { u64::MAX } else { c.0 }
    }

    /// The mutation `op` ended with `result`, started when the feed had dropped `before`
    /// times; it has dropped `epoch` times now. `absent` says whether its name was known
    /// not to exist when it started (a create without O_EXCL may open an existing file).
    pub(super) fn ended(
        &self,
        op: &Op,
        result: Option<&Reply>,
        absent: bool,
        before: u64,
        epoch: u64,
    ) {
        match (op, result) {
            (Op::Mknod { exclusive, .. }, Some(Reply::Attr(a)))
                if before == epoch && (*exclusive || absent) =>
            {
                let mut files = self.lock();
                if files.len() >= MAX_NEW_FILES {
                    files.clear();
                }
                files.insert(a.ino, epoch);
            }
            (Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. }, _) => {
                self.lock().remove(ino);
                let mut c = self.changes();
                c.1 = c.1.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// A file this client created alone (under a directory lease, see `lease.rs`), while
    /// the feed had dropped `epoch` times.
    pub(super) fn made(&self, ino: InodeId, epoch: u64) {
        let mut files = self.lock();
        if files.len() >= MAX_NEW_FILES {
            files.clear();
        }
        files.insert(ino, epoch);
    }

    /// The servers said `ino` has no `security.capability`, asked as `asked` (from
    /// [`asking`](Self::asking)); the feed had dropped `before` times when it was asked and
    /// has dropped `epoch` times now.
    pub(super) fn told_none(&self, ino: InodeId, asked: u64, before: u64, epoch: u64) {
        if before == epoch && asked != u64::MAX && asked == self.asking() {
            let mut files = self.lock();
            if files.len() >= MAX_NEW_FILES {
                files.clear();
            }
            files.insert(ino, epoch);
        }
    }

    /// Whether `ino` is known to have no `security.capability` while the feed has dropped
    /// `epoch` times.
    pub(super) fn without_capabilities(&self, ino: InodeId, epoch: u64) -> bool {
        let mut files = self.lock();
        match files.get(&ino) {
            Some(at) if *at == epoch => true,
            Some(_) => {
                files.remove(&ino);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::ns::{Attr, Creds};

    fn attr(ino: u64, kind: FileKind) -> Attr {
        crate::fs::test_attr(ino, kind)
    }

    fn mknod(parent: u64, name: &[u8], kind: FileKind) -> Op {
        Op::Mknod {
            parent: InodeId(parent),
            name: name.to_vec(),
            kind,
            perm: 0o755,
            rdev: 0,
            exclusive: true,
            creds: Creds::default(),
        }
    }

    fn run(k: &KnownDirs, op: Op, reply: Option<Reply>, epoch: u64) {
        let s = k.starting(epoch);
        k.ended(s, &op, reply.as_ref(), epoch);
    }

    #[test]
    fn a_directory_made_here_is_known_until_something_else_happens() {
        let k = KnownDirs::default();
        run(
            &k,
            mknod(1, b"d", FileKind::Dir),
            Some(Reply::Attr(attr(5, FileKind::Dir))),
            0,
        );
        assert!(!k.absent(InodeId(1), b"x", 0), "the parent was never known");
        assert!(k.absent(InodeId(5), b"a", 0));
        run(
            &k,
            mknod(5, b"a", FileKind::File),
            Some(Reply::Attr(attr(6, FileKind::File))),
            0,
        );
        assert!(!k.absent(InodeId(5), b"a", 0), "made here");
        let unlink = Op::Unlink {
            parent: InodeId(5),
            name: b"a".to_vec(),
            creds: Creds::default(),
        };
        run(&k, unlink, Some(Reply::Done), 0);
        assert!(k.absent(InodeId(5), b"a", 0), "removed here");
        assert!(
            !k.absent(InodeId(5), b"a", 1),
            "the feed dropped something: forgotten"
        );
        assert!(!k.absent(InodeId(5), b"a", 0), "and stays forgotten");
    }

    #[test]
    fn failures_overlaps_and_renames_forget() {
        let k = KnownDirs::default();
        run(
            &k,
            mknod(1, b"d", FileKind::Dir),
            Some(Reply::Attr(attr(5, FileKind::Dir))),
            0,
        );
        run(&k, mknod(5, b"a", FileKind::File), None, 0);
        assert!(
            !k.absent(InodeId(5), b"b", 0),
            "a failed mutation may have applied"
        );

        run(
            &k,
            mknod(1, b"e", FileKind::Dir),
            Some(Reply::Attr(attr(7, FileKind::Dir))),
            0,
        );
        let first = k.starting(0);
        let second = k.starting(0);
        let (a, b) = (
            mknod(7, b"a", FileKind::File),
            mknod(7, b"b", FileKind::File),
        );
        k.ended(first, &a, Some(&Reply::Attr(attr(8, FileKind::File))), 0);
        k.ended(second, &b, Some(&Reply::Attr(attr(9, FileKind::File))), 0);
        assert!(!k.absent(InodeId(7), b"c", 0), "two at once: forgotten");

        run(
            &k,
            mknod(1, b"f", FileKind::Dir),
            Some(Reply::Attr(attr(10, FileKind::Dir))),
            0,
        );
        let rename = Op::Rename {
            parent: InodeId(1),
            name: b"x".to_vec(),
            new_parent: InodeId(10),
            new_name: b"y".to_vec(),
            flags: Default::default(),
            creds: Creds::default(),
        };
        run(&k, rename, Some(Reply::Done), 0);
        assert!(!k.absent(InodeId(10), b"z", 0), "a rename forgets");

        run(
            &k,
            mknod(1, b"g", FileKind::Dir),
            Some(Reply::Attr(attr(11, FileKind::Dir))),
            3,
        );
        assert!(k.absent(InodeId(11), b"z", 3));
        let s = k.starting(3);
        k.ended(
            s,
            &mknod(1, b"h", FileKind::Dir),
            Some(&Reply::Attr(attr(12, FileKind::Dir))),
            4,
        );
        assert!(
            !k.absent(InodeId(12), b"z", 4),
            "the feed dropped something while it ran"
        );
    }

    #[test]
    fn new_files_have_no_capabilities_until_an_xattr_or_a_drop() {
        let n = NewFiles::default();
        let file = Reply::Attr(attr(6, FileKind::File));
        let mut open = mknod(5, b"a", FileKind::File);
        if let Op::Mknod { exclusive, .. } = &mut open {
            *exclusive = false;
        }
        n.ended(&open, Some(&file), false, 0, 0);
        assert!(
            !n.without_capabilities(InodeId(6), 0),
            "may have opened an old file"
        );
        n.ended(&open, Some(&file), true, 0, 0);
        assert!(n.without_capabilities(InodeId(6), 0));
        assert!(!n.without_capabilities(InodeId(7), 0));
        let set = Op::SetXattr {
            ino: InodeId(6),
            name: b"security.capability".to_vec(),
            value: vec![1],
            mode: Default::default(),
            creds: Creds::default(),
        };
        n.ended(&set, None, false, 0, 0);
        assert!(
            !n.without_capabilities(InodeId(6), 0),
            "an xattr was set, or may have been"
        );
        n.ended(&mknod(5, b"b", FileKind::File), Some(&file), false, 0, 0);
        assert!(
            !n.without_capabilities(InodeId(6), 1),
            "the feed dropped something"
        );
        n.ended(&mknod(5, b"c", FileKind::File), Some(&file), false, 0, 1);
        assert!(
            !n.without_capabilities(InodeId(6), 1),
            "created while the feed dropped"
        );
        n.told_none(InodeId(9), n.asking(), 1, 2);
        assert!(
            !n.without_capabilities(InodeId(9), 2),
            "told while the feed dropped"
        );
        let asked = n.asking();
        n.starting(&set);
        n.told_none(InodeId(9), asked, 2, 2);
        assert!(
            !n.without_capabilities(InodeId(9), 2),
            "an xattr change was under way"
        );
        n.ended(&set, None, false, 2, 2);
        let asked = n.asking();
        n.told_none(InodeId(9), asked, 2, 2);
        assert!(n.without_capabilities(InodeId(9), 2));
    }
}
