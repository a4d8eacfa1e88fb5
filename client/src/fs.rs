//! File I/O on a Meridian volume, independent of FUSE: namespace calls go to the
//! metaservers; file content is cut into blocks, hashed, compressed and uploaded to the
//! chunkservers, and committed as extents in one Raft command per flush.
//!
//! Consistency is close-to-open, like NFS: writes are buffered per open file and become
//! visible to other clients on flush, fsync or close; an open reads the current attributes.
//! A write of a few bytes uploads only those bytes as a small block, never a
//! read-modify-write of a whole block; a sequential write yields whole, aligned blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, Query, QueryReply, Reply, Volume, libc_errno};
use tokio::sync::Mutex as AsyncMutex;
use tracing::warn;

use crate::blocks::BlockClient;
use crate::cache::BlockCache;
use crate::meta::{MetaClient, MetaError};

mod atime;
mod compact;
mod entries;
mod feed;
mod fresh;
mod kernel;
mod known;
mod lease;
mod listing;
mod names;
mod new_files;
mod options;
mod read;
mod servers;
mod setattr;
mod space;
mod staging;
mod unflushed;
mod write;
mod xattrs;
pub use feed::{TTL_ALONE, TTL_FED};
pub use kernel::KernelCache;
use kernel::KernelView;
pub use lease::MAX_NAMES;
pub use listing::Listing;
pub use options::FsOptions;
use read::ReadView;
pub use space::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Seek};

/// Name prefix of files unlinked while open (hidden from listings until the last close).
pub const HIDDEN_PREFIX: &[u8] = b".meridian-unlinked-";

/// Where a file unlinked while open was put: its directory, hidden name, and the caller
/// who unlinked it (whose rights remove it at the last close).
type HiddenFile = (InodeId, Vec<u8>, Creds);

/// An errno, as the kernel wants it.
pub type Errno = i32;

fn errno(e: MetaError) -> Errno {
    e.errno()
}

/// One open file.
#[derive(Debug)]
struct OpenFile {
    ino: InodeId,
    append: bool,
    creds: Creds,
    /// What this client's handles of the file wrote and have not committed (one buffer
    /// for all of them).
    unflushed: unflushed::Shared,
    /// Whether the first read must move the atime (relatime, as of the open): a read
    /// that would not change it costs no metadata write.
    atime_due: bool,
    /// What the last read learned about the file (close-to-open: kept while open).
    view: Option<ReadView>,
    /// Whether the next write must drop the file's setuid and setgid bits first.
    drop_setid: bool,
    /// The count of namespace changes refused that this handle's durability points
    /// reported (or that were refused before it opened).
    seen_failures: u64,
    /// Taken on after the serving process before this one died: what it held unflushed
    /// of this handle may be lost, and the handle's next durability point says so (EIO),
    /// as Linux reports a lost writeback.
    lost: bool,
    /// Where the handle's last read ended (none yet): a read starting near there is
    /// sequential.
    next_read: Option<u64>,
    /// Reads in a row that started near where the one before ended.
    near_reads: u32,
}

/// A mounted volume's file layer.
pub struct FileSystem {
    me: std::sync::Weak<FileSystem>,
    meta: Arc<MetaClient>,
    blocks: BlockClient,
    volume: Volume,
    cache: BlockCache,
    options: FsOptions,
    handles: std::sync::Mutex<HashMap<u64, Arc<AsyncMutex<OpenFile>>>>,
    /// Files unlinked while this client had them open: renamed out of sight and removed
    /// for real at the last close, as on a local disk (inode -> (dir, hidden name, caller)).
    hidden: std::sync::Mutex<HashMap<InodeId, HiddenFile>>,
    /// The writes not committed yet of each file open here.
    unflushed: unflushed::Files,
    /// Bumped by every commit and attribute change this client makes: read views taken
    /// before it are stale (read-your-writes across handles).
    write_generation: AtomicU64,
    next_fh: AtomicU64,
    /// What the kernel caches of each file, and how to make it drop that.
    kernel: KernelView,
    /// The feed of other clients' changes, as replies to the kernel need it.
    feed: feed::FeedState,
    /// Files read whose atime is due, written together a moment later.
    atimes: atime::Pending,
    /// Attributes the servers just sent (a mutation's directories, an open's file).
    fresh: fresh::FreshAttrs,
    /// Directories whose every name this client knows.
    known: known::KnownDirs,
    /// Files created here that have no capabilities.
    new_files: new_files::NewFiles,
    /// Files waiting to be compacted.
    compaction: compact::Pending,
    /// Directories leased to this mount, and the changes it answered alone in them.
    leases: lease::Leases,
    /// Small commits' blocks staged in the metadata, on their way to the chunkservers.
    staging: staging::Staging,
}

/// Attributes of inode `ino` of `kind`, for the unit tests of the file layer's parts.
#[cfg(test)]
fn test_attr(ino: u64, kind: meridian_proto::ns::FileKind) -> Attr {
    Attr {
        ino: InodeId(ino),
        kind,
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 2,
        atime: Default::default(),
        mtime: Default::default(),
        ctime: Default::default(),
        crtime: Default::default(),
        rdev: 0,
        volume: 1,
    }
}

fn attr_of(reply: Reply) -> Result<Attr, Errno> {
    match reply {
        Reply::Attr(a) => Ok(a),
        other => {
            warn!(?other, "unexpected reply");
            Err(libc_errno::EIO)
        }
    }
}

impl FileSystem {
    /// Opens volume `name` through `meta`, reading blocks from the chunkservers in its map.
    pub async fn open(
        meta: Arc<MetaClient>,
        name: &str,
        zone: Option<meridian_proto::ZoneId>,
        options: FsOptions,
    ) -> Result<Arc<Self>, MetaError> {
        let volume = match meta
            .query(
                &Query::Volume {
                    name: name.to_string(),
                },
                false,
            )
            .await?
        {
            QueryReply::Volume(v) => v,
            other => return Err(MetaError::Server(format!("unexpected reply {other:?}"))),
        };
        if let Some(c) = &volume.copying {
            return Err(MetaError::Server(format!(
                "volume {name} is still being copied from {} ({} of {} inodes): mount it once the copy is done",
                c.source, c.copied, c.inodes
            )));
        }
        let map = meta.watch_cluster_map();
        let blocks = BlockClient::new(map, zone, Default::default())
            .for_volume(volume.id, &volume.policy.regions)
            .with_range_port(options.range_port)
            .with_put_port(options.put_port);
        if options.linearizable {
            if volume.policy.home.is_none() && volume.policy.regions.len() > 1 {
                return Err(MetaError::Invalid(format!(
                    "volume {} is active-active: its reads cannot be linearizable (give it a home region)",
                    volume.name
                )));
            }
            meta.set_linearizable(volume.id);
        }
        let write_back =
            options.write_back && !options.linearizable && volume.policy.regions.len() <= 1;
        let leases = lease::Leases::new(write_back, options.leased_names);
        let first_fh = options.handle_base.max(1);
        let (staging, staging_queue) = staging::Staging::new();
        let fs = Arc::new_cyclic(|me| FileSystem {
            me: me.clone(),
            meta,
            blocks,
            volume,
            cache: BlockCache::new(options.cache_bytes),
            options,
            handles: Default::default(),
            write_generation: AtomicU64::new(0),
            hidden: Default::default(),
            unflushed: Default::default(),
            next_fh: AtomicU64::new(first_fh),
            kernel: KernelView::default(),
            feed: Default::default(),
            atimes: Default::default(),
            fresh: Default::default(),
            known: Default::default(),
            new_files: Default::default(),
            compaction: Default::default(),
            leases,
            staging,
        });
        tokio::spawn(FileSystem::run_staging(Arc::downgrade(&fs), staging_queue));
        if let Some(after) = fs.options.commit_after {
            tokio::spawn(FileSystem::commit_late(Arc::downgrade(&fs), after));
        }
        tokio::spawn(lease::Leases::send_loop(
            Arc::downgrade(&fs),
            fs.meta.clone(),
        ));
        Ok(fs)
    }

    /// Early answers this mount's metadata client heard, and took (`meta/durable.rs`).
    pub fn early_answers(&self) -> (u64, u64) {
        self.meta.early_answers()
    }

    /// Sends what this mount answered alone and gives its directory leases back (before
    /// unmounting; other clients need not wait for them to expire).
    pub async fn release_leases(&self) -> Result<(), Errno> {
        self.known.forget(&self.leases.give_up());
        // Any change ever refused is reported here: unmount is the last durability point.
        self.leases.sync(&mut 0).await
    }

    /// How this mount's queue of changes answered alone is sent by a caller that waits
    /// for it (`lease/send.rs`).
    fn send_queue(&self) -> Option<impl FnOnce(lease::Batch) -> lease::Sending + use<>> {
        let me = self.me.upgrade()?;
        Some(move |batch| -> lease::Sending {
            Box::pin(async move {
                let forget = me.leases.send_batch(&me.meta, batch, false).await;
                me.known.forget(&forget);
            })
        })
    }

    /// Waits until what this mount answered alone so far is sent and answered, sending it
    /// from here if none of it is out.
    async fn settle_namespace(&self) {
        match self.send_queue() {
            Some(send) => self.leases.settle_here(send).await,
            None => self.leases.settle().await,
        }
    }

    /// A durability point of the namespace (fsyncdir, syncfs): every change this mount
    /// answered alone is committed, or the first one refused is reported.
    pub async fn sync_namespace(&self) -> Result<(), Errno> {
        self.leases.sync_dirs().await
    }

    /// Whether a change may be answered here alone now: recalls reach this mount only
    /// while its feed answers.
    fn may_answer_alone(&self) -> bool {
        self.feed_sees_everything() && self.volume.policy.quota_inodes.is_none()
    }

    /// The volume.
    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// Connects the kernel's caches of the mount serving this volume, so that data
    /// changed under them is dropped (close-to-open across clients, see `fs/kernel.rs`).
    pub fn connect_kernel(&self, cache: Arc<dyn KernelCache>) {
        self.kernel.connect(cache);
    }

    /// This client changes `ino`'s content or size: read views taken before are stale,
    /// and so is what the kernel's pages of it were known to match.
    fn changing(&self, ino: InodeId) {
        self.write_generation.fetch_add(1, Ordering::Relaxed);
        self.kernel.changed(ino);
    }

    /// The kernel forgot `ino` (and what it cached of it).
    pub fn forget(&self, ino: InodeId) {
        self.kernel.forget(ino);
    }

    /// Whether every read asks the servers (see [`FsOptions::linearizable`]).
    pub fn linearizable(&self) -> bool {
        self.options.linearizable
    }

    /// Whether the feed answers and brings every change of the volume: not in a volume
    /// that lives in several regions, whose records from other regions are merged without
    /// passing through the change log the feed reads. What the mount answers alone for
    /// longer than the kernel caches anything needs it.
    fn feed_sees_everything(&self) -> bool {
        !self.options.linearizable && self.volume.policy.regions.len() <= 1 && self.feed.live()
    }

    /// One past the last byte this client's open handles of `ino` hold unflushed.
    async fn buffered_end(&self, ino: InodeId) -> u64 {
        match self.unflushed.get(ino) {
            Some(shared) => shared.lock().await.dirty.end(),
            None => 0,
        }
    }

    /// Attributes from the servers as the kernel must see them from this client: never
    /// smaller than what its handles hold unflushed (`buffered`, read before `attr` was),
    /// and no links for a file unlinked here while open. Every reply that carries
    /// attributes goes through here: the kernel takes any of them as the file's size.
    fn as_seen_here(&self, mut attr: Attr, buffered: u64) -> Attr {
        attr.size = attr.size.max(buffered);
        if self.is_hidden(attr.ino) {
            // Unlinked while open: it has a name only to outlive its last close.
            attr.nlink = 0;
        }
        attr
    }

    /// Whether `ino` was unlinked while this client had it open.
    fn is_hidden(&self, ino: InodeId) -> bool {
        self.hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&ino)
    }

    fn handles_of(&self, ino: InodeId) -> Vec<Arc<AsyncMutex<OpenFile>>> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .values()
            .filter(|h| h.try_lock().map_or(true, |f| f.ino == ino))
            .cloned()
            .collect()
    }

    /// Commits what the open handles of `ino` wrote (before reads, truncates, renames).
    async fn flush_inode(&self, ino: InodeId) -> Result<(), Errno> {
        self.flush_inode_for(ino, write::CommitFor::Close).await
    }

    /// [`flush_inode`](Self::flush_inode), for `why`.
    async fn flush_inode_for(&self, ino: InodeId, why: write::CommitFor) -> Result<(), Errno> {
        match self.unflushed.get(ino) {
            Some(shared) => {
                self.commit_unflushed(ino, &mut *shared.lock().await, why)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Whether this client has no file open at all.
    fn nothing_open(&self) -> bool {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether this client has `ino` open.
    async fn is_open(&self, ino: InodeId) -> bool {
        for h in self.handles_of(ino) {
            if h.lock().await.ino == ino {
                return true;
            }
        }
        false
    }

    /// Volume usage: (quota or a large total, used bytes, used inodes).
    pub async fn statfs(&self) -> Result<(u64, u64, u64), Errno> {
        match self
            .query(Query::Volume {
                name: self.volume.name.clone(),
            })
            .await?
        {
            QueryReply::Volume(v) => Ok((
                v.policy.quota_bytes.unwrap_or(1 << 50),
                v.used_bytes,
                v.used_inodes,
            )),
            _ => Err(libc_errno::EIO),
        }
    }
}
