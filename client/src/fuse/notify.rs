//! The kernel's caches of a FUSE mount, dropped through fuser's invalidation notices.

use fuser::{INodeNo, Notifier};
use meridian_proto::InodeId;
use tracing::debug;

use crate::fs::KernelCache;

/// Tells the kernel of one mount to drop what it cached of a file.
pub struct KernelNotifier {
    notifier: Notifier,
    /// The volume's root, which the kernel knows as inode 1.
    root: InodeId,
}

impl KernelNotifier {
    /// Sends through `notifier` (a session's) for the volume whose root is `root`.
    pub fn new(notifier: Notifier, root: InodeId) -> Self {
        KernelNotifier { notifier, root }
    }

    fn kernel_ino(&self, ino: InodeId) -> INodeNo {
        if ino == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(ino.0)
        }
    }

    fn inval(&self, ino: InodeId, offset: i64, len: i64) {
        let kernel = self.kernel_ino(ino);
        // ENOENT: the kernel holds nothing of the inode, so there is nothing to drop.
        if let Err(e) = self.notifier.inval_inode(kernel, offset, len)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            debug!(%ino, error = %e, "kernel cache invalidation failed");
        }
    }
}

impl KernelCache for KernelNotifier {
    fn drop_attrs(&self, ino: InodeId) {
        // A negative offset: attributes only, no page is touched (no lock is taken).
        self.inval(ino, -1, 0);
    }

    fn drop_pages(&self, ino: InodeId, offset: u64, len: u64) {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let len = i64::try_from(len).unwrap_or(0);
        self.inval(ino, offset, len);
    }

    fn drop_entry(&self, parent: InodeId, name: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        let dir = self.kernel_ino(parent);
        // ENOENT: the kernel has no such entry cached.
        if let Err(e) = self
            .notifier
            .inval_entry(dir, std::ffi::OsStr::from_bytes(name))
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            debug!(%parent, error = %e, "kernel entry invalidation failed");
        }
    }
}
