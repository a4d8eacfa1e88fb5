//! Attributes the servers just sent, kept for the kernel's next GETATTR of the inode.
//!
//! The kernel forgets a directory's attributes whenever an entry in it is created or
//! removed, and with `default_permissions` it needs them again for the very next path
//! walk through it; and an open that finds a file changed drops the kernel's attributes,
//! which the opener's fstat asks for next. Without these, every create, mkdir, unlink or
//! rmdir in a loop, and every open of a file not cached, costs one more round trip to the
//! servers. What is kept is exactly what the servers said (for a mutation, what the
//! leader held just after it applied; for an open, what the open read), and it is given
//! out at most once, within [`FRESH_FOR`], and only if no mutation of this client started
//! since it was asked for and the feed of other clients' changes dropped nothing since;
//! otherwise the servers are asked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use meridian_proto::ns::Attr;

/// How long kept attributes may be given out after the answer that carried them.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);

/// One kept inode: its attributes, when they came, and the feed's drop count when they
/// were asked for.
type Kept = (Attr, Instant, u64);

#[derive(Default)]
pub(super) struct FreshAttrs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every mutation this client starts.
    generation: u64,
    /// Mutations of this client under way.
    running: usize,
    kept: HashMap<InodeId, Kept>,
}

/// Given instead of a generation when an answer must not be kept: another mutation was
/// already under way when the question was asked (the servers may read before or after
/// it applies).
const NOT_ALONE: u64 = u64::MAX;

/// The most inodes kept at once (expired ones are dropped first).
const MAX_KEPT: usize = 4096;

impl FreshAttrs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A mutation starts: anything kept may be about to change. Returns its generation,
    /// for [`answered`](Self::answered); [`ended`](Self::ended) must follow.
    pub(super) fn starting(&self) -> u64 {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.running += 1;
        inner.kept.clear();
        if inner.running == 1 {
            inner.generation
        } else {
            NOT_ALONE
        }
    }

    /// A mutation from [`starting`](Self::starting) ended (answered or not).
    pub(super) fn ended(&self) {
        let mut inner = self.lock();
        inner.running = inner.running.saturating_sub(1);
    }

    /// The generation now, for a question that changes nothing (an open).
    pub(super) fn generation(&self) -> u64 {
        let inner = self.lock();
        if inner.running == 0 {
            inner.generation
        } else {
            NOT_ALONE
        }
    }

    /// The question asked as `generation` (of a mutation, from [`starting`](Self::starting);
    /// of an open, from [`generation`](Self::generation)), when the feed had dropped
    /// `epoch` times, answered with `attrs`: kept unless a mutation started since (the
    /// answer may have been read before that one applied, or after).
    pub(super) fn answered(&self, generation: u64, epoch: u64, attrs: Vec<Attr>) {
        let mut inner = self.lock();
        if generation == NOT_ALONE || inner.generation != generation {
            return;
        }
        let now = Instant::now();
        if inner.kept.len() >= MAX_KEPT {
            inner.kept.retain(|_, (_, at, _)| at.elapsed() < FRESH_FOR);
            if inner.kept.len() >= MAX_KEPT {
                inner.kept.clear();
            }
        }
        for a in attrs {
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
    use meridian_proto::ns::FileKind;

    fn dir(ino: u64) -> Attr {
        crate::fs::test_attr(ino, FileKind::Dir)
    }

    #[test]
    fn given_once_to_the_matching_epoch() {
        let f = FreshAttrs::default();
        let g = f.starting();
        f.answered(g, 7, vec![dir(5)]);
        f.ended();
        assert_eq!(f.take(InodeId(6), 7), None);
        assert_eq!(f.take(InodeId(5), 7).map(|a| a.ino), Some(InodeId(5)));
        assert_eq!(f.take(InodeId(5), 7), None, "given out once");
        let g = f.starting();
        f.answered(g, 7, vec![dir(5)]);
        f.ended();
        assert_eq!(
            f.take(InodeId(5), 8),
            None,
            "the feed dropped something since"
        );
    }

    #[test]
    fn a_mutation_that_overlaps_another_keeps_nothing() {
        let f = FreshAttrs::default();
        let first = f.starting();
        f.answered(first, 0, vec![dir(5)]);
        f.ended();
        let second = f.starting();
        assert_eq!(f.take(InodeId(5), 0), None, "a mutation started: dropped");
        let third = f.starting();
        f.answered(second, 0, vec![dir(5)]);
        f.ended();
        assert_eq!(f.take(InodeId(5), 0), None, "answered after a later start");
        f.answered(third, 0, vec![dir(5)]);
        f.ended();
        assert_eq!(
            f.take(InodeId(5), 0),
            None,
            "started while another was under way: it may have applied first"
        );
        let alone = f.starting();
        f.answered(alone, 0, vec![dir(5)]);
        f.ended();
        assert!(f.take(InodeId(5), 0).is_some());
    }

    #[test]
    fn an_open_answer_is_kept_unless_a_mutation_started_while_it_was_asked() {
        let f = FreshAttrs::default();
        let asked = f.generation();
        f.answered(asked, 0, vec![dir(9)]);
        assert!(f.take(InodeId(9), 0).is_some());
        let asked = f.generation();
        f.starting();
        f.answered(asked, 0, vec![dir(9)]);
        assert_eq!(f.take(InodeId(9), 0), None);
        let asked = f.generation();
        f.answered(asked, 0, vec![dir(9)]);
        assert_eq!(
            f.take(InodeId(9), 0),
            None,
            "asked while a mutation was under way"
        );
        f.ended();
    }
}
