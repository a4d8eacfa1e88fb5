//! What the kernel caches of each file, and telling it to drop that when the servers' copy
//! changed under it. The file layer stays independent of FUSE: the mount connects a
//! [`KernelCache`] that forwards to the kernel's invalidation notices.
//!
//! The rule is close-to-open. An open reads the file's attributes from the servers. The
//! kernel keeps the file's cached pages across the open only when this client knows they
//! match exactly that state of the servers; otherwise the open drops the pages and the
//! attributes. A change this client makes itself (a write, truncate, fallocate, copy) makes
//! what the pages match unknown until the next open drops them: the reply that follows may
//! already carry another client's change too. A stat that finds a file changed elsewhere
//! while its pages were known drops them at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, FileKind, Timespec};

/// The kernel's caches of a mount, as the file layer asks them to forget things.
pub trait KernelCache: Send + Sync {
    /// Forget the attributes of `ino`: the next stat asks the client again.
    fn drop_attrs(&self, ino: InodeId);
    /// Forget the cached pages of `[offset, offset + len)` of `ino` (`len` 0: to the end)
    /// and its attributes. May wait for pages the kernel has locked: never call it on a
    /// path the kernel waits on.
    fn drop_pages(&self, ino: InodeId, offset: u64, len: u64);
    /// Forget the entry `name` of directory `parent` (positive or negative). May wait for
    /// the directory's lock: never call it on a path the kernel waits on.
    fn drop_entry(&self, parent: InodeId, name: &[u8]);
}

/// The servers' state of a file's content, as a reply described it: a write or truncate
/// changes the size or mtime; ctime catches content changed with the mtime set back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime: Timespec,
    ctime: Timespec,
}

impl Stamp {
    fn of(a: &Attr) -> Stamp {
        Stamp {
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        }
    }
}

/// What is known of one file's kernel pages.
#[derive(Clone, Copy, Default)]
struct Pages {
    /// The servers' state the pages match, if known.
    matches: Option<Stamp>,
    /// Bumped each time the pages are dropped because the servers' copy changed: a read
    /// view taken before is stale too, or an old handle's read would put the old bytes
    /// back into the cache every handle shares.
    epoch: u64,
}

/// Which files' cached pages are known to match which state of the servers.
#[derive(Default)]
pub(super) struct KernelView {
    sink: OnceLock<Arc<dyn KernelCache>>,
    files: Mutex<HashMap<InodeId, Pages>>,
}

impl KernelView {
    /// Connects the kernel's caches (once, when mounted).
    pub(super) fn connect(&self, sink: Arc<dyn KernelCache>) {
        let _ = self.sink.set(sink);
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, Pages>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch of `ino`'s pages (see [`Pages::epoch`]).
    pub(super) fn epoch(&self, ino: InodeId) -> u64 {
        self.files().get(&ino).map_or(0, |p| p.epoch)
    }

    /// An open of `ino`, whose servers' attributes are `attr`: returns whether the kernel
    /// may keep the file's cached pages. If not, the open drops them (and this drops the
    /// attributes), so from now on they match `attr`.
    pub(super) fn opened(&self, attr: &Attr) -> bool {
        let stamp = Stamp::of(attr);
        let keep = {
            let mut files = self.files();
            let pages = files.entry(attr.ino).or_default();
            let keep = pages.matches == Some(stamp);
            if !keep {
                pages.matches = Some(stamp);
                pages.epoch += 1;
            }
            keep
        };
        if !keep && let Some(sink) = self.sink.get() {
            sink.drop_attrs(attr.ino);
        }
        keep
    }

    /// A reply from the servers described `attr` (a stat or lookup, not a change made
    /// here): if the kernel's pages matched another state, they are stale. They are
    /// dropped in the background, so until the next open drops them for certain, what
    /// they match is unknown (an open meanwhile must not keep them).
    pub(super) fn observed(&self, attr: &Attr) {
        if attr.kind != FileKind::File {
            return;
        }
        let stamp = Stamp::of(attr);
        let stale = {
            let mut files = self.files();
            match files.get_mut(&attr.ino) {
                Some(pages) if pages.matches.is_some_and(|known| known != stamp) => {
                    pages.matches = None;
                    pages.epoch += 1;
                    true
                }
                _ => false,
            }
        };
        if stale {
            self.drop_pages_later(attr.ino, 0, 0);
        }
    }

    /// This client changed `ino`'s content or size: what its pages match is unknown.
    pub(super) fn changed(&self, ino: InodeId) {
        if let Some(pages) = self.files().get_mut(&ino) {
            pages.matches = None;
        }
    }

    /// The kernel forgot `ino`, and its pages with it (no handle of it is open).
    pub(super) fn forget(&self, ino: InodeId) {
        self.files().remove(&ino);
    }

    /// Drops `ino`'s attributes in the kernel now (never waits on the kernel's locks).
    pub(super) fn drop_attrs(&self, ino: InodeId) {
        if let Some(sink) = self.sink.get() {
            sink.drop_attrs(ino);
        }
    }

    /// Drops from the kernel what other clients' changes made stale, from a blocking
    /// thread (an entry's drop waits for its directory's lock, which the kernel may hold
    /// for a request this client is serving), and waits until it is done.
    pub(super) async fn drop_touched(&self, touches: Vec<meridian_proto::ns::Touch>) {
        use meridian_proto::ns::Touch;
        let Some(sink) = self.sink.get().cloned() else {
            return;
        };
        let mut pages = Vec::new();
        for t in &touches {
            if let Touch::Content(ino) = t
                && let Some(p) = self.files().get_mut(ino)
                && p.matches.is_some()
            {
                // Another client's write: the pages match nothing this client knows.
                p.matches = None;
                p.epoch += 1;
                pages.push(*ino);
            }
        }
        let work = move || {
            // Each inode's attributes are dropped once, however many changes touched it
            // (a thousand creates in one directory drop its attributes once).
            let (mut attrs, mut paged) = (HashSet::new(), HashSet::new());
            for t in touches {
                match t {
                    Touch::Entry { parent, name } => {
                        sink.drop_entry(parent, &name);
                        if attrs.insert(parent) {
                            sink.drop_attrs(parent);
                        }
                    }
                    Touch::Content(ino) if pages.contains(&ino) => {
                        if paged.insert(ino) {
                            // Drops the attributes too.
                            attrs.insert(ino);
                            sink.drop_pages(ino, 0, 0);
                        }
                    }
                    Touch::Attrs(ino) | Touch::Content(ino) => {
                        if attrs.insert(ino) {
                            sink.drop_attrs(ino);
                        }
                    }
                }
            }
        };
        if let Err(e) = tokio::task::spawn_blocking(work).await {
            tracing::warn!(error = %e, "dropping stale kernel caches failed");
        }
    }

    /// Drops pages of `ino` from a blocking thread: the kernel may hold them locked for a
    /// request this client has not answered yet.
    pub(super) fn drop_pages_later(&self, ino: InodeId, offset: u64, len: u64) {
        if let Some(sink) = self.sink.get().cloned() {
            tokio::task::spawn_blocking(move || sink.drop_pages(ino, offset, len));
        }
    }
}
