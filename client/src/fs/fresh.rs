//! Directory attributes the servers send back with a mutation, kept for the kernel's next
//! GETATTR of the directory.
//!
//! The kernel forgets a directory's attributes whenever an entry in it is created or
//! removed, and with `default_permissions` it needs them again for the very next path
//! walk through it: without these, every create, mkdir, unlink or rmdir in a loop costs
//! one more round trip to the servers. What is kept is exactly what the leader held just
//! after the mutation applied, and it is given out at most once, within [`FRESH_FOR`], and
//! only if no other mutation of this client started since and the feed of other clients'
//! changes dropped nothing since the mutation was sent; otherwise the servers are asked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use meridian_proto::ns::Attr;

/// How long kept attributes may be given out after the answer that carried them.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);

/// One kept directory: its attributes, when they came, and the feed's drop count when the
/// mutation that brought them was sent.
type Kept = (Attr, Instant, u64);

#[derive(Default)]
pub(super) struct FreshDirs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every mutation this client starts.
    generation: u64,
    kept: HashMap<InodeId, Kept>,
}

impl FreshDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A mutation starts: anything kept may be about to change. Returns its generation.
    pub(super) fn starting(&self) -> u64 {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.kept.clear();
        inner.generation
    }

    /// The mutation that started as `generation`, sent when the feed had dropped `epoch`
    /// times, answered with `dirs`: kept unless another mutation started since (its answer
    /// may have been read before that one applied, or after).
    pub(super) fn answered(&self, generation: u64, epoch: u64, dirs: Vec<Attr>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let now = Instant::now();
        for a in dirs {
            inner.kept.insert(a.ino, (a, now, epoch));
        }
    }

    /// Takes `ino`'s kept attributes, if recent and the feed has dropped nothing since (it
    /// has dropped `epoch` times now).
    pub(super) fn take(&self, ino: InodeId, epoch: u64) -> Option<Attr> {
        let (attr, at, sent) = self.lock().kept.remove(&ino)?;
        (at.elapsed() < FRESH_FOR && sent == epoch).then_some(attr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::ns::{FileKind, Timespec};

    fn dir(ino: u64) -> Attr {
        Attr {
            ino: InodeId(ino),
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            crtime: Timespec::default(),
            rdev: 0,
            volume: 1,
        }
    }

    #[test]
    fn given_once_to_the_matching_epoch() {
        let f = FreshDirs::default();
        let g = f.starting();
        f.answered(g, 7, vec![dir(5)]);
        assert_eq!(f.take(InodeId(6), 7), None);
        assert_eq!(f.take(InodeId(5), 7).map(|a| a.ino), Some(InodeId(5)));
        assert_eq!(f.take(InodeId(5), 7), None, "given out once");
        let g = f.starting();
        f.answered(g, 7, vec![dir(5)]);
        assert_eq!(
            f.take(InodeId(5), 8),
            None,
            "the feed dropped something since"
        );
    }

    #[test]
    fn a_later_mutation_voids_what_an_earlier_one_brings() {
        let f = FreshDirs::default();
        let first = f.starting();
        f.answered(first, 0, vec![dir(5)]);
        let second = f.starting();
        assert_eq!(f.take(InodeId(5), 0), None, "a mutation started: dropped");
        let third = f.starting();
        f.answered(second, 0, vec![dir(5)]);
        assert_eq!(f.take(InodeId(5), 0), None, "answered after a later start");
        f.answered(third, 0, vec![dir(5)]);
        assert!(f.take(InodeId(5), 0).is_some());
    }
}
