//! What the open handles of one file on this client wrote and have not committed: one
//! buffer per file, shared by all of its handles, as the kernel's page cache is one per
//! file. Writes land in it in the order they were made, whatever handle made them: a later
//! write through one descriptor is never overwritten by an earlier one through another
//! when they commit, appends through several descriptors follow one another, and an
//! fsync through any descriptor commits what every descriptor of the file wrote (POSIX:
//! fsync makes the file's data durable, not the descriptor's).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use meridian_proto::ns::Creds;
use tokio::sync::Mutex as AsyncMutex;

use super::Errno;
use crate::dirty::DirtyRanges;

/// One file's writes not committed yet.
#[derive(Debug, Default)]
pub(super) struct Unflushed {
    pub(super) dirty: DirtyRanges,
    /// The credentials the writes in `dirty` were made with, which their commit carries:
    /// a write with others commits what is buffered first.
    pub(super) creds: Option<Creds>,
    /// Block-aligned ranges written only in part: compacted after a close.
    pub(super) fragmented: BTreeSet<u64>,
    /// Since when `dirty` has held something.
    pub(super) since: Option<Instant>,
    /// What refused a commit made without a flush: the file's next fsync or close says so
    /// (as Linux reports a failed write-back).
    pub(super) failed: Option<Errno>,
}

impl Unflushed {
    /// Buffers `data` at `at`, written with `creds`.
    pub(super) fn write(&mut self, at: u64, data: &[u8], creds: &Creds) {
        if self.dirty.is_empty() {
            self.since = Some(Instant::now());
        }
        self.dirty.write(at, data);
        self.creds = Some(creds.clone());
    }
}

/// A file's buffer, as its handles hold it. Locked after the handle, never before.
pub(super) type Shared = Arc<AsyncMutex<Unflushed>>;

/// Every open file's buffer, by inode, while a handle holds it.
#[derive(Debug, Default)]
pub(super) struct Files(std::sync::Mutex<HashMap<InodeId, Weak<AsyncMutex<Unflushed>>>>);

/// Past this many entries, those whose handles are all gone are dropped.
const PRUNE_AT: usize = 4096;

impl Files {
    /// The buffer of `ino`, shared with its other handles open here.
    pub(super) fn of(&self, ino: InodeId) -> Shared {
        let mut files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = files.get(&ino).and_then(Weak::upgrade) {
            return shared;
        }
        if files.len() >= PRUNE_AT {
            files.retain(|_, w| w.strong_count() > 0);
        }
        let shared = Shared::default();
        files.insert(ino, Arc::downgrade(&shared));
        shared
    }

    /// The buffer of `ino`, if a handle open here holds it.
    pub(super) fn get(&self, ino: InodeId) -> Option<Shared> {
        let files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        files.get(&ino).and_then(Weak::upgrade)
    }

    /// The buffers that have held writes for `age` or longer (those busy now are left for
    /// the next look).
    pub(super) fn older_than(&self, age: Duration) -> Vec<(InodeId, Shared)> {
        let files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        files
            .iter()
            .filter_map(|(ino, w)| Some((*ino, w.upgrade()?)))
            .filter(|(_, s)| {
                s.try_lock()
                    .is_ok_and(|u| u.since.is_some_and(|t| t.elapsed() >= age))
            })
            .collect()
    }

    /// Forgets `ino`'s buffer if no handle holds it any more.
    pub(super) fn closed(&self, ino: InodeId) {
        let mut files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if files.get(&ino).is_some_and(|w| w.strong_count() == 0) {
            files.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_of_one_file_share_its_buffer_until_the_last_goes() {
        let files = Files::default();
        let (a, b) = (files.of(InodeId(7)), files.of(InodeId(7)));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &files.of(InodeId(8))));
        drop(a);
        files.closed(InodeId(7));
        assert!(
            Arc::ptr_eq(&b, &files.of(InodeId(7))),
            "one handle still holds it"
        );
        drop(b);
        files.closed(InodeId(7));
        assert_eq!(
            files
                .0
                .lock()
                .unwrap()
                .get(&InodeId(7))
                .map(Weak::strong_count),
            None
        );
    }
}
