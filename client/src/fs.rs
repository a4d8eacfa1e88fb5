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
use meridian_proto::ns::{
    Attr, Creds, DirEntry, FileKind, Op, Query, QueryReply, RenameFlags, Reply, Volume, XattrMode,
    libc_errno,
};
use tokio::sync::Mutex as AsyncMutex;
use tracing::warn;

use crate::blocks::BlockClient;
use crate::cache::BlockCache;
use crate::dirty::DirtyRanges;
use crate::meta::{MetaClient, MetaError};

mod atime;
mod compact;
mod feed;
mod fresh;
mod kernel;
mod known;
mod lease;
mod new_files;
mod options;
mod read;
mod servers;
mod setattr;
mod space;
mod staging;
mod write;
pub use feed::{TTL_ALONE, TTL_FED};
pub use kernel::KernelCache;
use kernel::KernelView;
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
    dirty: DirtyRanges,
    /// Block-aligned ranges this handle wrote only part of: compacted after close.
    fragmented: std::collections::BTreeSet<u64>,
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
fn test_attr(ino: u64, kind: FileKind) -> Attr {
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
            next_fh: AtomicU64::new(first_fh),
            kernel: KernelView::default(),
            feed: Default::default(),
            atimes: Default::default(),
            fresh: Default::default(),
            known: Default::default(),
            new_files: Default::default(),
            compaction: Default::default(),
            leases: lease::Leases::new(write_back),
            staging,
        });
        tokio::spawn(FileSystem::run_staging(Arc::downgrade(&fs), staging_queue));
        tokio::spawn(lease::Leases::send_loop(
            Arc::downgrade(&fs),
            fs.meta.clone(),
        ));
        Ok(fs)
    }

    /// Sends what this mount answered alone and gives its directory leases back (before
    /// unmounting; other clients need not wait for them to expire).
    pub async fn release_leases(&self) -> Result<(), Errno> {
        self.known.forget(&self.leases.give_up());
        // Any change ever refused is reported here: unmount is the last durability point.
        self.leases.sync(&mut 0).await
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

    /// Whether the feed answers and brings every change of the volume: not in a volume
    /// that lives in several regions, whose records from other regions are merged without
    /// passing through the change log the feed reads. What the mount answers alone for
    /// longer than the kernel caches anything needs it.
    /// Whether every read asks the servers (see [`FsOptions::linearizable`]).
    pub fn linearizable(&self) -> bool {
        self.options.linearizable
    }

    fn feed_sees_everything(&self) -> bool {
        !self.options.linearizable && self.volume.policy.regions.len() <= 1 && self.feed.live()
    }

    /// The entry `name` in `parent`.
    pub async fn lookup(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<Attr, Errno> {
        // Search permission on `parent` is the kernel's to check (default_permissions).
        // A leased directory is known here whole.
        if let Some(answer) = self.leases.lookup(parent, name) {
            return match answer {
                // Open here, its size must count this client's unflushed writes.
                Ok(a) if a.kind == FileKind::File && self.is_open(a.ino).await => {
                    self.getattr(a.ino).await
                }
                Ok(a) => {
                    self.kernel.observed(&a);
                    Ok(self.as_seen_here(a, 0))
                }
                Err(e) => Err(e),
            };
        }
        // A name the servers would refuse gets their error, not ENOENT. A leased
        // directory's names are the lease's to answer (the names it answered alone never
        // reach the known directories).
        if self.leases.attr(parent).is_none()
            && name.len() <= meridian_proto::ns::NAME_MAX
            && !name.is_empty()
            && name != b"."
            && name != b".."
            && !name.contains(&b'/')
            && self.feed_sees_everything()
            && self.known.absent(parent, name, self.cache_epoch())
        {
            return Err(libc_errno::ENOENT);
        }
        // A name kept from an earlier answer, of an inode whose attributes are known here
        // (a directory leased here): as the kernel's entry cache would have answered.
        let sees_everything = self.feed_sees_everything();
        let epoch = self.cache_epoch();
        if sees_everything
            && let Some(ino) = self.known.entry(parent, name, epoch)
            && let Some(a) = self.leases.attr(ino)
        {
            if a.kind == FileKind::File && self.is_open(a.ino).await {
                return self.getattr(a.ino).await;
            }
            self.kernel.observed(&a);
            return Ok(self.as_seen_here(a, 0));
        }
        let asked = self.known.asking();
        match self
            .query(Query::Lookup {
                parent,
                name: name.to_vec(),
                creds: creds.clone(),
            })
            .await?
        {
            QueryReply::Attr(a) => {
                if sees_everything {
                    self.known
                        .found(asked, parent, name, a.ino, epoch, self.cache_epoch());
                }
                if self.is_open(a.ino).await {
                    // Open here, its size must count this client's unflushed writes, read
                    // in the order `getattr` reads them (one more round trip, only for
                    // files open here).
                    return self.getattr(a.ino).await;
                }
                self.kernel.observed(&a);
                Ok(self.as_seen_here(a, 0))
            }
            _ => Err(libc_errno::EIO),
        }
    }

    /// Attributes, with the size this client's unflushed writes would give the file.
    ///
    /// The handles' buffered ends are read before the committed attributes: a commit
    /// takes a handle's buffer and holds its lock until the servers have the data, so
    /// data is always in one of the two as seen here, and a reply never lowers the size
    /// below what this client wrote.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        // A directory this client just changed, a file it just opened: the servers sent
        // the attributes with the answer. Nothing of this client's was committed since
        // (that starts a mutation, which drops them), so its unflushed writes are all
        // still in its handles.
        // Buffered ends first, as below: a commit under way holds its handle until its
        // mutation has started, which drops what is kept.
        if let Some(attr) = self.leases.attr(ino) {
            return Ok(attr);
        }
        let buffered = self.buffered_end(ino).await;
        // A file kept under a lease: nobody else reaches it without a recall, and its
        // commits and changes update what is kept when they are queued or answered (a
        // commit under way holds its handle, so `buffered` was read after it).
        if let Some(attr) = self.leases.kept_file(ino) {
            self.kernel.observed(&attr);
            return Ok(self.as_seen_here(attr, buffered));
        }
        if !self.options.linearizable
            && let Some(attr) = self.fresh.take(ino, self.cache_epoch())
        {
            self.kernel.observed(&attr);
            return Ok(self.as_seen_here(attr, buffered));
        }
        let buffered = self.buffered_end(ino).await;
        let attr = self.committed_attr(ino).await?;
        self.kernel.observed(&attr);
        Ok(self.as_seen_here(attr, buffered))
    }

    /// One past the last byte this client's open handles of `ino` hold unflushed.
    async fn buffered_end(&self, ino: InodeId) -> u64 {
        let mut end = 0;
        for f in self.handles_of(ino) {
            let f = f.lock().await;
            if f.ino == ino {
                end = end.max(f.dirty.end());
            }
        }
        end
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

    /// Commits every open handle's dirty data for `ino` (before reads, truncates, renames).
    async fn flush_inode(&self, ino: InodeId) -> Result<(), Errno> {
        self.flush_inode_for(ino, write::CommitFor::Close).await
    }

    /// [`flush_inode`](Self::flush_inode), for `why`.
    async fn flush_inode_for(&self, ino: InodeId, why: write::CommitFor) -> Result<(), Errno> {
        for h in self.handles_of(ino) {
            let mut f = h.lock().await;
            if f.ino == ino {
                self.commit_for(&mut f, why).await?;
            }
        }
        Ok(())
    }

    /// Creates a node of `kind` (not a symlink).
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        if kind == FileKind::Dir
            && self.may_answer_alone()
            && let Some(answer) = self.leases.mkdir(
                &self.meta,
                &lease::Asked {
                    parent,
                    name,
                    creds,
                },
                perm,
            )
        {
            return answer;
        }
        attr_of(
            self.mutate(Op::Mknod {
                parent,
                name: name.to_vec(),
                kind,
                perm,
                rdev,
                exclusive: true,
                creds: creds.clone(),
            })
            .await?,
        )
    }

    /// Creates a symbolic link.
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        attr_of(
            self.mutate(Op::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                creds: creds.clone(),
            })
            .await?,
        )
    }

    /// Adds a hard link.
    pub async fn link(
        &self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        let buffered = self.buffered_end(ino).await;
        let attr = attr_of(
            self.mutate(Op::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
                creds: creds.clone(),
            })
            .await?,
        )?;
        Ok(self.as_seen_here(attr, buffered))
    }

    /// Removes a file entry. The last link of a file this client still has open is
    /// renamed out of sight instead, and removed when the last handle closes, so the open
    /// descriptors keep working (as on a local disk, and as libfuse's hard_remove=false).
    pub async fn unlink(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        if let Some(answer) = self.unlink_alone(parent, name, creds).await {
            return answer;
        }
        // Only a file open here needs hiding: with nothing open, no lookup first. In a
        // directory leased here the rename is answered alone too (the kernel often sends
        // a close's release after the unlink that follows it).
        if !self.nothing_open()
            && let Ok(a) = self.lookup(parent, name, creds).await
            && a.kind == FileKind::File
            && a.nlink == 1
            && self.is_open(a.ino).await
        {
            let hidden = [HIDDEN_PREFIX, a.ino.0.to_string().as_bytes()].concat();
            self.rename(parent, name, parent, &hidden, RenameFlags::default(), creds)
                .await?;
            self.hidden
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(a.ino, (parent, hidden, creds.clone()));
            return Ok(());
        }
        self.mutate(Op::Unlink {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// unlink answered alone, in a directory leased here, of an entry not open here.
    async fn unlink_alone(
        &self,
        parent: InodeId,
        name: &[u8],
        creds: &Creds,
    ) -> Option<Result<(), Errno>> {
        if !self.may_answer_alone() {
            return None;
        }
        let (ino, kind) = self.leases.entry(parent, name)?;
        if kind != FileKind::Dir && self.is_open(ino).await {
            return None;
        }
        let asked = lease::Asked {
            parent,
            name,
            creds,
        };
        self.leases.unlink(&self.meta, &asked, Some(ino))
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

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        if self.may_answer_alone()
            && let Some(answer) = self.leases.rmdir(
                &self.meta,
                &lease::Asked {
                    parent,
                    name,
                    creds,
                },
            )
        {
            return answer;
        }
        self.mutate(Op::Rmdir {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// Renames an entry.
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: RenameFlags,
        creds: &Creds,
    ) -> Result<(), Errno> {
        // Within a directory leased here (a file written under a temporary name, then
        // put in place, as rsync and editors do): answered alone.
        if parent == new_parent && self.may_answer_alone() {
            let target_open = match self.leases.entry(parent, new_name) {
                Some((ino, FileKind::File)) => self.is_open(ino).await,
                _ => false,
            };
            let asked = lease::Asked {
                parent,
                name,
                creds,
            };
            if let Some(answer) =
                self.leases
                    .rename(&self.meta, &asked, new_name, flags, target_open)
            {
                return answer;
            }
        }
        let op = Op::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            creds: creds.clone(),
        };
        self.mutate(op).await.map(|_| ())
    }

    /// A symlink's target.
    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Errno> {
        match self.query(Query::ReadLink { ino }).await? {
            QueryReply::Bytes(b) => Ok(b),
            _ => Err(libc_errno::EIO),
        }
    }

    /// Every entry of a directory, in name order.
    pub async fn readdir(&self, ino: InodeId, creds: &Creds) -> Result<Vec<DirEntry>, Errno> {
        if let Some(mut entries) = self.leases.listing(ino) {
            entries.retain(|e| !e.name.starts_with(HIDDEN_PREFIX));
            return Ok(entries);
        }
        self.leases.settle().await;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let q = Query::ReadDir {
                ino,
                after: after.clone(),
                limit: 5000,
                creds: creds.clone(),
            };
            match self.query(q).await? {
                QueryReply::Dir { entries, next } => {
                    out.extend(
                        entries
                            .into_iter()
                            .filter(|e| !e.name.starts_with(HIDDEN_PREFIX)),
                    );
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(out),
                    }
                }
                _ => return Err(libc_errno::EIO),
            }
        }
    }

    /// Sets an extended attribute.
    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        creds: &Creds,
    ) -> Result<(), Errno> {
        self.mutate(Op::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            mode,
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// An extended attribute's value.
    pub async fn getxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        creds: &Creds,
    ) -> Result<Vec<u8>, Errno> {
        let capability = name == b"security.capability";
        let (epoch, asked) = (self.cache_epoch(), self.new_files.asking());
        if capability
            && self.feed_sees_everything()
            && self.new_files.without_capabilities(ino, epoch)
        {
            return Err(libc_errno::ENODATA);
        }
        match self
            .query(Query::GetXattr {
                ino,
                name: name.to_vec(),
                creds: creds.clone(),
            })
            .await
        {
            Ok(QueryReply::Bytes(b)) => Ok(b),
            Ok(_) => Err(libc_errno::EIO),
            Err(e) => {
                if capability && e == libc_errno::ENODATA {
                    self.new_files
                        .told_none(ino, asked, epoch, self.cache_epoch());
                }
                Err(e)
            }
        }
    }

    /// Extended attribute names.
    pub async fn listxattr(&self, ino: InodeId, creds: &Creds) -> Result<Vec<Vec<u8>>, Errno> {
        match self
            .query(Query::ListXattr {
                ino,
                creds: creds.clone(),
            })
            .await?
        {
            QueryReply::Names(n) => Ok(n),
            _ => Err(libc_errno::EIO),
        }
    }

    /// Removes an extended attribute.
    pub async fn removexattr(&self, ino: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        self.mutate(Op::RemoveXattr {
            ino,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
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
