//! Files known to have no `security.capability` (see [`NewFiles`]).

use std::collections::HashMap;
use std::sync::Mutex;

use meridian_proto::InodeId;
use meridian_proto::ns::{Op, Reply};

/// The most files kept as [`NewFiles`].
const MAX_NEW_FILES: usize = 1 << 16;

/// Files known to have no `security.capability`, so the question before every write
/// (whether it must drop capabilities: the mount's own, and the kernel's at the first
/// write after it learns the file's attributes) is answered without the servers. A file
/// is known so when this client created it (no file is created with one: only setxattr
/// gives it) or the servers said it has none; it is forgotten when this client sets or
/// removes an extended attribute of it, and all are on any drop by the feed of other
/// clients' changes (as the known directories are).
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
    use crate::fs::known::tests::{attr, mknod};
    use meridian_proto::ns::{Creds, FileKind};

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
