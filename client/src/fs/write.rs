//! The write path: handles, buffered writes, commits (blocks uploaded, then extents in one
//! metadata command) and close.

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Dirty ranges of one file that make the mount commit them, however few bytes they hold:
/// a commit's extents go in one Raft entry (the servers take at most
/// `COMMIT_EXTENTS_MAX`), and a smaller entry replicates and applies without holding the
/// others up.
const DIRTY_RANGES_MAX: usize = 4096;
/// Blocks of at most this many bytes in all are encoded where they are committed, not on
/// the blocking pool.
const INLINE_ENCODE: usize = 64 << 10;
/// An fsync's commit of at most this many bytes carries its blocks staged.
const STAGE_FSYNC_MAX: usize = 8 << 10;

use bytes::Bytes;
use futures::StreamExt;
use meridian_proto::ns::{
    Attr, Creds, Extent, FileKind, Op, Reply, StagedBlock, Timespec, libc_errno,
};
use meridian_proto::{BlockId, EncodedBlock, InodeId};
use tokio::sync::Mutex as AsyncMutex;
use tracing::warn;

use super::unflushed::Unflushed;
use super::{Errno, FileSystem, OpenFile, attr_of};

/// What a commit of a handle's writes is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CommitFor {
    /// A close, a read or another change that waits for it.
    Close,
    /// fsync or fdatasync.
    Fsync,
    /// A change this mount answers alone next: queued behind its creates if it can be.
    Change,
}

/// Where a piece of a file went in a block: (file offset, offset in the block, length).
type Part = (u64, u32, u64);
/// A block's pieces, and its bytes.
type Pack = (Vec<Part>, Bytes);

/// The extents of `parts`, put in `block` of `block_len` bytes.
fn extents_of(
    parts: &[Part],
    block: meridian_proto::BlockId,
    block_len: u32,
) -> impl Iterator<Item = Extent> + '_ {
    parts.iter().map(move |&(file_off, at, len)| Extent {
        offset: file_off,
        len,
        block,
        block_offset: at,
        block_len,
    })
}

/// The blocks a commit uploads. A piece as long as a block is a block of its own (the
/// whole, aligned blocks of sequential writes); shorter pieces (random and small writes)
/// are packed together, in file order, into blocks of up to `block_size`, each piece an
/// extent at its offset in its pack: 16,384 random 4 KiB writes make 16 uploads, not
/// 16,384. Compaction later gives each fragmented range a block of its own.
fn pack(pieces: Vec<(u64, Bytes)>, block_size: u64) -> Vec<Pack> {
    let mut out = Vec::new();
    // The pieces of the pack being filled, and their bytes so far.
    let mut open: Vec<(u64, Bytes)> = Vec::new();
    let mut filled = 0u64;
    let seal = |open: &mut Vec<(u64, Bytes)>, out: &mut Vec<(Vec<Part>, Bytes)>| {
        match open.len() {
            0 => {}
            // A pack of one piece is the piece: its bytes are not copied.
            1 => {
                let (off, data) = open.pop().expect("one piece");
                out.push((vec![(off, 0, data.len() as u64)], data));
            }
            _ => {
                let mut buf = Vec::with_capacity(open.iter().map(|(_, d)| d.len()).sum());
                let mut parts = Vec::with_capacity(open.len());
                for (off, data) in open.drain(..) {
                    parts.push((off, buf.len() as u32, data.len() as u64));
                    buf.extend_from_slice(&data);
                }
                out.push((parts, Bytes::from(buf)));
            }
        }
    };
    for (file_off, data) in pieces {
        let len = data.len() as u64;
        if len >= block_size {
            out.push((vec![(file_off, 0, len)], data));
            continue;
        }
        if filled + len > block_size {
            seal(&mut open, &mut out);
            filled = 0;
        }
        filled += len;
        open.push((file_off, data));
    }
    seal(&mut open, &mut out);
    out
}

impl FileSystem {
    /// Opens a file (close-to-open: reads its attributes from the servers, or from what
    /// this mount keeps of a file under its lease, see `Leases::view`). Returns the
    /// handle and whether the kernel may keep the pages it has cached of the file.
    pub async fn open_file(
        &self,
        ino: InodeId,
        append: bool,
        creds: &Creds,
    ) -> Result<(u64, bool), Errno> {
        // Registered before the servers are asked: an unlink meanwhile sees the file open.
        let fh = self.open_handle(ino, append, creds);
        // The attributes, and the first blocks' extents for the first read.
        let (epoch, generation) = (self.cache_epoch(), self.fresh.generation());
        let (attr, mut view) = match self.fetch_view(ino, 0, 0).await {
            Ok(v) => v,
            Err(e) => {
                self.handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&fh);
                return Err(e);
            }
        };
        let keep_cache = self.kernel.opened(&attr);
        // For the opener's fstat, which the kernel asks for if the open dropped its
        // attributes.
        self.fresh.answered(generation, epoch, vec![attr.clone()]);
        // The pages are now those of `attr` (kept, or dropped by this open).
        view.epoch = self.kernel.epoch(ino);
        let h = self.handle(fh)?;
        let mut f = h.lock().await;
        f.view = Some(view);
        f.learn(&attr);
        Ok((fh, keep_cache))
    }

    fn open_handle(&self, ino: InodeId, append: bool, creds: &Creds) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let f = self.new_open_file(ino, append, creds);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(AsyncMutex::new(f)));
        fh
    }

    /// Takes on a handle the kernel holds from a previous serving process of this mount
    /// (it restarted, or was replaced): the same file, as if opened now. Nothing if the
    /// handle is known, or if this process does not adopt handles.
    /// `writable`: whether the handle was opened for writing (none: not known).
    pub fn adopt_handle(
        &self,
        fh: u64,
        ino: InodeId,
        append: bool,
        writable: Option<bool>,
        creds: &Creds,
    ) {
        if !self.options.adopt_handles {
            return;
        }
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(fh)
            .or_insert_with(|| {
                let mut f = self.new_open_file(ino, append, creds);
                f.lost = self.options.adopted_writes_lost && writable != Some(false);
                Arc::new(AsyncMutex::new(f))
            });
    }

    /// Whether this process takes on handles it did not open.
    pub fn adopts_handles(&self) -> bool {
        self.options.adopt_handles
    }

    /// The first handle number this process gives.
    pub fn handle_base(&self) -> u64 {
        self.options.handle_base
    }

    /// Commits what every open handle holds unflushed (a serving process handing its
    /// mount over). The first error is returned; every handle is tried.
    pub async fn flush_all(&self) -> Result<(), Errno> {
        let fhs: Vec<u64> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let mut first = Ok(());
        for fh in fhs {
            if let Err(e) = self.flush(fh).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    fn new_open_file(&self, ino: InodeId, append: bool, creds: &Creds) -> OpenFile {
        OpenFile {
            ino,
            append,
            creds: creds.clone(),
            unflushed: self.unflushed.of(ino),
            atime_due: false,
            view: None,
            drop_setid: false,
            seen_failures: self.leases.failures(),
            next_read: None,
            near_reads: 0,
            lost: false,
        }
    }

    /// Creates (O_CREAT, with O_EXCL if `exclusive`) and opens a regular file.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        perm: u16,
        exclusive: bool,
        append: bool,
        creds: &Creds,
    ) -> Result<(Attr, u64), Errno> {
        if self.may_answer_alone() {
            let epoch = self.cache_epoch();
            let asked = super::lease::Asked {
                parent,
                name,
                creds,
            };
            if let Some(answer) = self.leases.create(&self.meta, &asked, perm, exclusive) {
                let attr = answer?;
                self.new_files.made(attr.ino, epoch);
                let fh = self.open_handle(attr.ino, append, creds);
                self.handle(fh)?.lock().await.learn(&attr);
                return Ok((attr, fh));
            }
        }
        let op = Op::Mknod {
            parent,
            name: name.to_vec(),
            kind: FileKind::File,
            perm,
            rdev: 0,
            exclusive,
            creds: creds.clone(),
        };
        let attr = attr_of(self.mutate(op).await?)?;
        let fh = self.open_handle(attr.ino, append, creds);
        self.handle(fh)?.lock().await.learn(&attr);
        Ok((attr, fh))
    }

    pub(super) fn handle(&self, fh: u64) -> Result<Arc<AsyncMutex<OpenFile>>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc_errno::EBADF)
    }

    /// Buffers a write at `offset` (the kernel's); returns the bytes accepted. With
    /// O_APPEND, writes at the end of the file as the servers and this handle know it.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let h = self.handle(fh)?;
        let mut f = h.lock().await;
        let ino = f.ino;
        // The file's buffer, which its other handles here write into too.
        let shared = f.unflushed.clone();
        let mut u = shared.lock().await;
        if u.creds.as_ref().is_some_and(|c| *c != f.creds) {
            // Another caller's writes wait: a commit carries one caller's credentials.
            self.commit_unflushed(ino, &mut u, CommitFor::Close).await?;
        }
        let at = if f.append {
            let size = self.committed_attr(ino).await?.size;
            size.max(u.dirty.end())
        } else {
            offset
        };
        at.checked_add(data.len() as u64).ok_or(libc_errno::EFBIG)?;
        if f.drop_setid {
            self.drop_setid(&f).await?;
            f.drop_setid = false;
        }
        self.drop_capability(ino, &f.creds).await?;
        self.kernel.changed(ino);
        u.write(at, data, &f.creds);
        if at != offset {
            // The kernel put the bytes in its pages at its own idea of the end (another
            // client appended since): those pages, and its size, are wrong from there.
            let page = 4096;
            self.kernel
                .drop_pages_later(ino, at.min(offset) / page * page, 0);
        }
        // Many small scattered writes commit long before their bytes add up: a commit
        // carries a bounded number of extents.
        if u.dirty.bytes() >= self.options.max_dirty_bytes || u.dirty.count() >= DIRTY_RANGES_MAX {
            self.commit_unflushed(ino, &mut u, CommitFor::Close).await?;
        }
        Ok(data.len())
    }

    /// Drops the file's setuid and setgid bits as a write by `f`'s caller does on the
    /// servers (an empty commit), and the kernel's cached mode with them.
    async fn drop_setid(&self, f: &OpenFile) -> Result<(), Errno> {
        self.mutate(Op::CommitExtents {
            ino: f.ino,
            extents: Vec::new(),
            size: 0,
            base_version: None,
            creds: f.creds.clone(),
            staged: Vec::new(),
        })
        .await?;
        self.kernel.drop_attrs(f.ino);
        Ok(())
    }

    /// Commits what the buffer `u` of file `ino` holds (whatever handle of it wrote it),
    /// for `why`, with the credentials it was written with: cuts it at block-size
    /// boundaries of the file (so sequential writes give whole aligned blocks), uploads the
    /// blocks in parallel with the volume's replication, then adds their extents and the
    /// new size in one metadata commit. For an fsync, a commit of a few kilobytes carries
    /// its blocks staged (docs/adr/0018); before a change answered alone, the commit of a
    /// file it keeps is queued, not waited for (`lease/alone.rs`).
    pub(super) async fn commit_unflushed(
        &self,
        ino: InodeId,
        u: &mut Unflushed,
        why: CommitFor,
    ) -> Result<(), Errno> {
        let Some(creds) = u.creds.take().filter(|_| !u.dirty.is_empty()) else {
            return Ok(());
        };
        let since = u.since.take();
        // Each range becomes one shared buffer; blocks are zero-copy slices of it.
        let ranges: Vec<(u64, Bytes)> = u
            .dirty
            .take()
            .into_iter()
            .map(|(o, d)| (o, Bytes::from(d)))
            .collect();
        let result = self
            .upload_and_commit(ino, &creds, &mut u.fragmented, &ranges, why)
            .await;
        self.changing(ino);
        if result == Err(libc_errno::EIO) {
            // Chunkservers or metaservers unreachable: keep the data so a later flush,
            // fsync or close can still commit it. (A refusal such as EDQUOT or ENOENT is
            // final: the application has been told.)
            for (offset, data) in &ranges {
                u.dirty.write(*offset, data);
            }
            u.creds = Some(creds);
            u.since = since;
        }
        result
    }

    /// Commits, every second or so, what files have held unflushed for `after` or longer,
    /// until the file system is dropped. A refusal is kept for the file's next fsync or
    /// close; unreachable servers leave the writes buffered for the next try.
    pub(super) async fn commit_late(me: std::sync::Weak<FileSystem>, after: std::time::Duration) {
        let tick = after.min(std::time::Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let Some(fs) = me.upgrade() else { return };
            for (ino, shared) in fs.unflushed.older_than(after) {
                let mut u = shared.lock().await;
                if u.since.is_none_or(|t| t.elapsed() < after) {
                    continue; // committed meanwhile
                }
                match fs.commit_unflushed(ino, &mut u, CommitFor::Close).await {
                    Ok(()) | Err(libc_errno::EIO) => {}
                    Err(e) => {
                        warn!(%ino, errno = e, "a commit without a flush was refused");
                        u.failed = Some(e);
                    }
                }
            }
        }
    }

    async fn upload_and_commit(
        &self,
        ino: InodeId,
        creds: &Creds,
        fragmented: &mut std::collections::BTreeSet<u64>,
        ranges: &[(u64, Bytes)],
        why: CommitFor,
    ) -> Result<(), Errno> {
        let bs = u64::from(self.volume.policy.block_size);
        let mut pieces = Vec::new();
        // Pieces shorter than a block: (block start, piece start, piece end).
        let mut partial = Vec::new();
        for (offset, data) in ranges {
            let mut at = 0usize;
            while at < data.len() {
                let file_off = offset + at as u64;
                let room = (bs - file_off % bs) as usize;
                let n = room.min(data.len() - at);
                if n as u64 != bs {
                    partial.push((file_off - file_off % bs, file_off, file_off + n as u64));
                }
                pieces.push((file_off, data.slice(at..at + n)));
                at += n;
            }
        }
        let end = ranges
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0);
        let packs = pack(pieces, bs);
        let bytes: usize = packs.iter().map(|(_, d)| d.len()).sum();
        // An fsync of a few kilobytes (a database's page, a log's append) waits for one
        // Raft round rather than a put and then a round. Larger commits, and those of a
        // close, put first: the metaservers' handling of the bytes costs more than the
        // put saves (PERFORMANCE.md, nineteenth round). A volume of several regions puts
        // first too: another region reads the block from this region's chunkservers as
        // soon as it has the commit.
        let stage = why == CommitFor::Fsync
            && bytes <= STAGE_FSYNC_MAX
            && self.options.stage_small
            && self.volume.policy.regions.len() <= 1;
        let staged = if stage && self.staging.admit(bytes) {
            match self.commit_staged(ino, creds, &packs, bytes, end).await {
                Err(e) if e == libc_errno::E2BIG => None, // the region holds enough staged
                other => Some(other),
            }
        } else {
            None
        };
        let size = match staged {
            Some(committed) => committed?,
            None => {
                self.put_and_commit(ino, creds, &packs, bytes, end, why)
                    .await?
            }
        };
        // A piece that alone covers its block's range up to the end of the file (a small
        // file, a file's tail) leaves one extent there: nothing to compact.
        for &(block, from, to) in &partial {
            let alone = partial.iter().filter(|p| p.0 == block).count() == 1;
            if !(alone && from == block && to == (block + bs).min(size)) {
                fragmented.insert(block);
            }
        }
        Ok(())
    }

    /// Puts `packs`' blocks (`bytes` in all), then commits their extents and the size
    /// `end`: the file's size after the commit.
    async fn put_and_commit(
        &self,
        ino: InodeId,
        creds: &Creds,
        packs: &[Pack],
        bytes: usize,
        end: u64,
        why: CommitFor,
    ) -> Result<u64, Errno> {
        let (r, w) = (self.volume.policy.replicas, self.volume.policy.min_copies);
        // A few kilobytes hash and compress in microseconds, less than two thread
        // hand-offs cost: encoded where they are. Larger blocks go to the blocking pool.
        let inline = bytes <= INLINE_ENCODE;
        // Each block is encoded and put on its own, `upload_parallelism` at a time and in
        // file order: while some blocks are on the wire, the next are being hashed, so the
        // mount's processors and the chunkservers' work at once (a batch encoded, then put,
        // left each idle in turn).
        let uploads: Vec<_> = packs
            .iter()
            .map(|(_, data)| self.encode_and_put(data.clone(), inline, r, w))
            .collect();
        let mut uploaded =
            futures::stream::iter(uploads).buffered(self.options.upload_parallelism.max(1));
        let mut extents = Vec::new();
        for (parts, _) in packs {
            let (block, block_len) = uploaded.next().await.ok_or(libc_errno::EIO)??;
            extents.extend(extents_of(parts, block, block_len));
        }
        self.commit_extents(ino, creds, extents, end, Vec::new(), why)
            .await
    }

    /// Commits `packs` (`bytes` in all, admitted by the staging's bound) with their
    /// blocks' plaintext in the commit, and queues the blocks to be put afterwards
    /// (docs/adr/0018): the file's size after the commit.
    async fn commit_staged(
        &self,
        ino: InodeId,
        creds: &Creds,
        packs: &[Pack],
        bytes: usize,
        end: u64,
    ) -> Result<u64, Errno> {
        // Only hashed here: the uploader compresses them when it puts them, off the path
        // of this fsync (a few kilobytes' lz4 and its tables cost more than the hash).
        let mut blocks = Vec::with_capacity(packs.len());
        let mut extents = Vec::new();
        let mut staged = Vec::with_capacity(packs.len());
        for (parts, data) in packs {
            let id = BlockId::of(data);
            extents.extend(extents_of(parts, id, data.len() as u32));
            staged.push(StagedBlock {
                id,
                data: data.to_vec(),
            });
            blocks.push((id, data.clone()));
        }
        match self
            .commit_extents(ino, creds, extents, end, staged, CommitFor::Fsync)
            .await
        {
            Ok(size) => {
                // Read back here from memory; elsewhere from the metadata until it is put.
                for (id, data) in &blocks {
                    self.cache.insert(*id, data.clone());
                }
                self.staging.uploaded_later(ino, blocks);
                Ok(size)
            }
            Err(e) => {
                self.staging.forget(bytes);
                Err(e)
            }
        }
    }

    /// Commits `extents` and the size `end` (with `staged` blocks) of `ino`, as `creds`:
    /// the size after it.
    async fn commit_extents(
        &self,
        ino: InodeId,
        creds: &Creds,
        extents: Vec<Extent>,
        end: u64,
        staged: Vec<StagedBlock>,
        why: CommitFor,
    ) -> Result<u64, Errno> {
        let op = Op::CommitExtents {
            ino,
            extents,
            size: end,
            base_version: None,
            creds: creds.clone(),
            staged,
        };
        let op = match why {
            CommitFor::Change => match self.leases.commit_alone(&self.meta, op) {
                Ok(size) => return Ok(size),
                Err(op) => *op,
            },
            _ => op,
        };
        Ok(match self.mutate_after_queue(op).await? {
            Reply::Attr(a) => a.size,
            _ => u64::MAX,
        })
    }

    /// One block of a commit encoded (here if `inline`, else on the blocking pool) and put
    /// with `r` copies, at least `w`: its id and length.
    async fn encode_and_put(
        &self,
        data: Bytes,
        inline: bool,
        r: u32,
        w: u32,
    ) -> Result<(meridian_proto::BlockId, u32), Errno> {
        let encoded = if inline {
            EncodedBlock::encode_shared(&data).ok()
        } else {
            tokio::task::spawn_blocking(move || EncodedBlock::encode_shared(&data))
                .await
                .ok()
                .and_then(Result::ok)
        };
        let encoded = encoded.ok_or(libc_errno::EIO)?;
        if let Err(e) = self.blocks.put(&encoded, r, w).await {
            warn!(error = %e, "block upload failed");
            return Err(libc_errno::EIO);
        }
        Ok((encoded.id, encoded.raw_len))
    }

    /// Commits the handle's writes (flush on close).
    pub async fn flush(&self, fh: u64) -> Result<(), Errno> {
        self.flush_for(fh, CommitFor::Close).await
    }

    /// Commits the handle's writes for fsync or fdatasync.
    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        self.flush_for(fh, CommitFor::Fsync).await
    }

    async fn flush_for(&self, fh: u64, why: CommitFor) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let mut f = h.lock().await;
        if std::mem::take(&mut f.lost) {
            return Err(libc_errno::EIO);
        }
        let shared = f.unflushed.clone();
        let mut u = shared.lock().await;
        if let Some(e) = u.failed.take() {
            return Err(e);
        }
        self.commit_unflushed(f.ino, &mut u, why).await?;
        drop(u);
        // Close and fsync are durability points for the namespace too.
        self.settle_namespace().await;
        self.leases.sync(&mut f.seen_failures).await
    }

    /// Closes a handle, committing what is left; ranges it wrote in pieces are compacted in
    /// the background.
    pub async fn release(&self, fh: u64) -> Result<(), Errno> {
        let result = self.flush(fh).await;
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let (Some(h), Some(me)) = (handle, self.me.upgrade()) {
            let f = h.lock().await;
            let (ino, unflushed) = (f.ino, f.unflushed.clone());
            drop(f);
            drop(h);
            // What the file's handles wrote in pieces (this one's, and any other's since the
            // last close) is compacted now; the buffer goes with the file's last handle.
            let ranges = std::mem::take(&mut unflushed.lock().await.fragmented);
            drop(unflushed);
            self.unflushed.closed(ino);
            if !self.is_open(ino).await {
                let gone = self
                    .hidden
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ino);
                if let Some((parent, name, creds)) = gone {
                    // The last close of a file unlinked while open: remove it for real
                    // (alone, in a directory leased here).
                    let removed = match self.unlink_alone(parent, &name, &creds).await {
                        Some(answer) => answer.map(|()| Reply::Done),
                        None => {
                            self.mutate(Op::Unlink {
                                parent,
                                name,
                                creds,
                            })
                            .await
                        }
                    };
                    return match removed {
                        Ok(_) => result,
                        Err(e) => result.and(Err(e)),
                    };
                }
            }
            if !ranges.is_empty() {
                me.compact_later(ino, ranges);
            }
        }
        result
    }
}

impl OpenFile {
    /// What the handle takes from the file's attributes at open.
    fn learn(&mut self, attr: &Attr) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.atime_due = attr.atime_due(Timespec::from_nanos(now.as_nanos() as u64));
        // Linux drops setuid, and setgid on a group-executable file, at a write by
        // anyone but root: the first write through this handle does, before any byte is
        // buffered.
        let setid = attr.perm & 0o4000 != 0 || attr.perm & 0o2010 == 0o2010;
        self.drop_setid = setid && self.creds.uid != 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every piece is found again, byte for byte, at its place in its pack; packs
        /// never exceed a block, and a piece as long as a block is a block alone.
        #[test]
        fn packs_hold_every_piece_where_its_extent_says(
            lens in proptest::collection::vec(1usize..5000, 0..60),
            bs in 4096u64..20000,
        ) {
            let pieces: Vec<(u64, Bytes)> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let n = (n as u64).min(bs) as usize;
                    let data: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
                    (i as u64 * 100_000, Bytes::from(data))
                })
                .collect();
            let packs = pack(pieces.clone(), bs);
            let mut found = Vec::new();
            for (parts, data) in &packs {
                prop_assert!(data.len() as u64 <= bs);
                for &(off, at, len) in parts {
                    if len == bs {
                        prop_assert_eq!(parts.len(), 1);
                    }
                    found.push((off, data.slice(at as usize..at as usize + len as usize)));
                }
            }
            // Pieces of one commit never overlap: the order of their extents is free.
            found.sort_by_key(|(off, _)| *off);
            prop_assert_eq!(found, pieces);
        }
    }
}
