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
//!
//! Names found in other directories are kept too (the inode each names, see
//! [`KnownDirs::entry`]), under the same rules: a lookup the servers answered while no
//! mutation of this client ran, or a name this client made, stays true until the feed
//! drops anything or this client changes the directory. That is what the kernel's own
//! entry cache holds for as long; kept here, it outlives the kernel dropping its caches.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use meridian_proto::InodeId;
use meridian_proto::ns::{FileKind, Op, Reply};

/// The most directories known at once (beyond it, all are forgotten and learnt again).
const MAX_DIRS: usize = 1024;
/// The most names of one known directory.
const MAX_NAMES: usize = 1 << 16;
/// The most names kept of directories not known whole (beyond it, all are forgotten).
const MAX_ENTRIES: usize = 1 << 14;

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
    /// Names found in other directories: the inode each names, and the feed's drop count
    /// they are true at.
    entries: HashMap<InodeId, (HashMap<Vec<u8>, InodeId>, u64)>,
    /// How many names `entries` holds.
    entry_count: usize,
}

impl Inner {
    /// Forgets the names kept of `dir` (not known whole).
    fn forget_entries(&mut self, dir: &InodeId) {
        if let Some((names, _)) = self.entries.remove(dir) {
            self.entry_count -= names.len();
        }
    }

    /// Keeps `name` in `dir` as naming `ino`, true while the feed has dropped `epoch`
    /// times.
    fn keep_entry(&mut self, dir: InodeId, name: &[u8], ino: InodeId, epoch: u64) {
        if self.entry_count >= MAX_ENTRIES {
            self.entries.clear();
            self.entry_count = 0;
        }
        let (names, at) = self
            .entries
            .entry(dir)
            .or_insert_with(|| (HashMap::new(), epoch));
        if *at != epoch {
            self.entry_count -= names.len();
            names.clear();
            *at = epoch;
        }
        if names.insert(name.to_vec(), ino).is_none() {
            self.entry_count += 1;
        }
    }
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
        // Applied or not, the names kept of the directories it changes may be stale.
        for dir in op.dirs_changed() {
            inner.forget_entries(&dir);
        }
        if settled
            && let (
                Op::Mknod { parent, name, .. }
                | Op::Symlink { parent, name, .. }
                | Op::Link {
                    new_parent: parent,
                    new_name: name,
                    ..
                },
                Some(Reply::Attr(a)),
            ) = (op, result)
        {
            inner.keep_entry(*parent, name, a.ino, epoch);
        }
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
            inner.forget_entries(d);
        }
    }

    /// A lookup is about to ask the servers: give [`found`](Self::found) the result.
    pub(super) fn asking(&self) -> Option<u64> {
        let inner = self.lock();
        (inner.running == 0).then_some(inner.generation)
    }

    /// The servers answered that `name` in `dir` is `ino`, to a lookup that started at
    /// `asked` (from [`asking`](Self::asking)) while the feed had dropped `before` times;
    /// it has dropped `epoch` times now. Kept only if no mutation of this client ran
    /// meanwhile and the feed dropped nothing.
    pub(super) fn found(
        &self,
        asked: Option<u64>,
        dir: InodeId,
        name: &[u8],
        ino: InodeId,
        before: u64,
        epoch: u64,
    ) {
        let mut inner = self.lock();
        if asked == Some(inner.generation) && inner.running == 0 && before == epoch {
            inner.keep_entry(dir, name, ino, epoch);
        }
    }

    /// The inode `name` in `dir` names, if kept while the feed has dropped `epoch` times.
    pub(super) fn entry(&self, dir: InodeId, name: &[u8], epoch: u64) -> Option<InodeId> {
        let mut inner = self.lock();
        match inner.entries.get(&dir) {
            Some((names, at)) if *at == epoch => names.get(name).copied(),
            Some(_) => {
                inner.forget_entries(&dir);
                None
            }
            None => None,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use meridian_proto::ns::{Attr, Creds};

    pub(in crate::fs) fn attr(ino: u64, kind: FileKind) -> Attr {
        crate::fs::test_attr(ino, kind)
    }

    pub(in crate::fs) fn mknod(parent: u64, name: &[u8], kind: FileKind) -> Op {
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
    fn names_found_elsewhere_are_kept_until_the_directory_changes_or_the_feed_drops() {
        let k = KnownDirs::default();
        let (root, d) = (InodeId(1), InodeId(9));
        // Answered while nothing of this client ran: kept.
        let asked = k.asking();
        k.found(asked, root, b"work", d, 0, 0);
        assert_eq!(k.entry(root, b"work", 0), Some(d));
        assert_eq!(k.entry(root, b"other", 0), None);
        // The feed dropped something: forgotten, and not learnt at the old count.
        assert_eq!(k.entry(root, b"work", 1), None);
        assert_eq!(k.entry(root, b"work", 0), None);
        k.found(k.asking(), root, b"work", d, 0, 1);
        assert_eq!(
            k.entry(root, b"work", 1),
            None,
            "the feed dropped during the lookup"
        );

        // A mutation of this client under way when the lookup started, or started
        // before it ended: the answer may be older than it.
        let s = k.starting(1);
        let asked = k.asking();
        k.found(asked, root, b"work", d, 1, 1);
        k.ended(s, &mknod(5, b"x", FileKind::File), None, 1);
        assert_eq!(k.entry(root, b"work", 1), None);
        let asked = k.asking();
        run(&k, mknod(5, b"y", FileKind::File), None, 1);
        k.found(asked, root, b"work", d, 1, 1);
        assert_eq!(k.entry(root, b"work", 1), None);

        // Made here: kept. Any change of the directory here forgets its names, even one
        // that failed.
        run(
            &k,
            mknod(1, b"made", FileKind::Dir),
            Some(Reply::Attr(attr(12, FileKind::Dir))),
            1,
        );
        assert_eq!(k.entry(root, b"made", 1), Some(InodeId(12)));
        k.found(k.asking(), root, b"work", d, 1, 1);
        assert_eq!(k.entry(root, b"work", 1), Some(d));
        let rmdir = Op::Rmdir {
            parent: root,
            name: b"elsewhere".to_vec(),
            creds: Creds::default(),
        };
        run(&k, rmdir, None, 1);
        assert_eq!(k.entry(root, b"work", 1), None);
        assert_eq!(k.entry(root, b"made", 1), None);
        // Forgotten with the directory (a lease given back, lost).
        k.found(k.asking(), root, b"work", d, 1, 1);
        k.forget(&[root]);
        assert_eq!(k.entry(root, b"work", 1), None);
    }

    #[test]
    fn names_kept_elsewhere_are_bounded() {
        let k = KnownDirs::default();
        for i in 0..MAX_ENTRIES as u64 {
            k.found(
                k.asking(),
                InodeId(1 + i % 7),
                &i.to_le_bytes(),
                InodeId(100 + i),
                0,
                0,
            );
        }
        assert_eq!(
            k.entry(InodeId(1), &0u64.to_le_bytes(), 0),
            Some(InodeId(100))
        );
        k.found(k.asking(), InodeId(3), b"one more", InodeId(5), 0, 0);
        assert_eq!(
            k.entry(InodeId(1), &0u64.to_le_bytes(), 0),
            None,
            "all forgotten"
        );
        assert_eq!(k.entry(InodeId(3), b"one more", 0), Some(InodeId(5)));
        assert_eq!(k.lock().entry_count, 1);
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
}
