//! The read path: a handle's view of the file (its size and the extents of a window of
//! blocks), and verified blocks from the cache or a replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Extent, Query, QueryReply, libc_errno};
use tracing::warn;

use super::{Errno, FileSystem};

/// A handle's cached view for reads: the file size and the extents of the windows of it
/// read so far, all taken while the file stayed the same as seen from here.
#[derive(Debug, Clone)]
pub(super) struct ReadView {
    /// This client's write generation when the view was taken.
    generation: u64,
    /// The file's page epoch when the view was taken: a view from before the kernel's
    /// pages were dropped for a change elsewhere would refill them with old bytes.
    pub(super) epoch: u64,
    size: u64,
    /// Windows by start: their end and extents. A random reader collects windows over
    /// the file instead of asking for one per read.
    windows: BTreeMap<u64, (u64, Arc<Vec<Extent>>)>,
}

impl ReadView {
    /// The extents of a window covering `[offset, offset + len)`, if one does.
    fn covering(&self, offset: u64, len: u64) -> Option<Arc<Vec<Extent>>> {
        let (_, (end, extents)) = self.windows.range(..=offset).next_back()?;
        (offset < *end && (offset.saturating_add(len) <= *end || *end == self.size)
            || offset >= self.size)
            .then(|| extents.clone())
    }
}

/// Blocks a sequential reader has fetched ahead of it. Eight keep several blocks in
/// flight on every replica (a cold 1 GiB read: 211–265 MiB/s with three, 359 with eight,
/// no better with sixteen).
const READ_AHEAD_BLOCKS: u64 = 8;

/// How far from where a handle's last read ended a read still counts as sequential.
const SEQUENTIAL_SLACK: u64 = 8 << 20;

/// Reads in a row near each other after which a small read counts as sequential.
const SEQUENTIAL_RUN: u32 = 3;

/// A read this large near the last one is sequential at once (the kernel's read-ahead
/// sends 128 KiB and more; random readers read a page or a record).
const LARGE_READ: u64 = 64 << 10;

/// Windows a handle's view keeps (16 blocks each: 16 GiB of 4 MiB blocks).
const MAX_WINDOWS: usize = 256;

/// Blocks of extents a read fetches at once.
const READ_WINDOW_BLOCKS: u64 = 16;

/// The largest read of a block not in the cache served by a verified range read when it
/// does not follow the handle's previous read (random access); sequential readers and
/// larger reads fetch and cache whole blocks.
const RANGE_READ_MAX: u64 = 256 << 10;

impl FileSystem {
    /// Reads up to `size` bytes at `offset` (short only at the end of the file).
    /// A read within one block is a slice of the cached block (no copy on the way to the
    /// kernel); one spanning blocks or holes is assembled.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let (ino, atime_due, sequential) = {
            let h = self.handle(fh)?;
            let mut f = h.lock().await;
            // The kernel's read-ahead has several reads in flight, arriving in any order;
            // a handle's first read is sequential if it starts at the start. A small read
            // near the last one is sequential only as the latest of a run: a random
            // reader lands near its previous read now and then (1.6% of 4 KiB reads over
            // a 1 GiB file), and each such read fetched whole blocks and read ahead.
            let near = match f.next_read {
                Some(next) => offset.abs_diff(next) <= SEQUENTIAL_SLACK,
                None => offset == 0,
            };
            f.near_reads = if near {
                f.near_reads.saturating_add(1)
            } else {
                0
            };
            let sequential =
                near && (u64::from(size) >= LARGE_READ || f.near_reads >= SEQUENTIAL_RUN);
            f.next_read = Some(offset.saturating_add(u64::from(size)));
            (f.ino, std::mem::take(&mut f.atime_due), sequential)
        };
        if atime_due {
            // atime as ext4's relatime keeps it; in the background, off the read path.
            self.accessed(ino);
        }
        // Reads see this client's own writes: commit them first (other handles too).
        self.flush_inode(ino).await?;
        // A sequential reader's view covers the blocks it reads ahead too: a window that
        // ended within them would hold the read-ahead back until the reader reached its end.
        let bs = u64::from(self.volume.policy.block_size);
        let ahead_len = READ_AHEAD_BLOCKS * bs;
        let view_len = match sequential {
            true => u64::from(size).saturating_add(ahead_len),
            false => u64::from(size),
        };
        let (attr_size, window) = self.read_view(fh, ino, offset, view_len).await?;
        if offset >= attr_size {
            return Ok(Bytes::new());
        }
        let len = u64::from(size).min(attr_size - offset);
        let extents: Vec<Extent> = window
            .iter()
            .filter(|e| e.offset < offset + len && e.end() > offset)
            .copied()
            .collect();
        if sequential && let Some(me) = self.me.upgrade() {
            // A sequential reader gets the blocks ahead of it fetched meanwhile (its view
            // covers them, to the end of the file).
            let ahead = offset + len..offset + len + ahead_len;
            // Fetches in flight stay within a quarter of the cache, however many readers
            // there are: a block fetched ahead is read only if it is still cached by then.
            let room = (self.cache.capacity() as u64 / 4 / bs.max(1)) as usize;
            for e in window.iter() {
                if e.end() > ahead.start
                    && e.offset < ahead.end
                    && self.cache.fetches() < room
                    && self.cache.wanted(&e.block)
                {
                    let (me, e) = (me.clone(), *e);
                    tokio::spawn(async move { me.block(ino, &e).await });
                }
            }
        }
        // Each extent's part of the read: where it goes, and its bytes.
        let mut parts: Vec<(usize, Bytes)> = Vec::with_capacity(extents.len());
        for e in extents {
            let (s, end) = (e.offset.max(offset), e.end().min(offset + len));
            if s >= end {
                continue;
            }
            let from = e.block_offset as usize + (s - e.offset) as usize;
            let n = (end - s) as usize;
            let at = (s - offset) as usize;
            let block = match self.cache.get(&e.block) {
                Some(block) => block,
                // A small read away from where this handle read last: only the groups
                // covering it, verified against the block id, not the whole block.
                None if !sequential && n as u64 <= RANGE_READ_MAX => {
                    let part = match self.block_range(ino, &e, from as u64, n as u64).await {
                        Err(_) if self.renew_cap(ino, &e).await => {
                            self.block_range(ino, &e, from as u64, n as u64).await?
                        }
                        other => other?,
                    };
                    if part.len() != n {
                        return Err(libc_errno::EIO);
                    }
                    parts.push((at, part));
                    continue;
                }
                None => match self.block(ino, &e).await {
                    Err(_) if self.renew_cap(ino, &e).await => self.block(ino, &e).await?,
                    other => other?,
                },
            };
            if block.len() < from + n {
                return Err(libc_errno::EIO);
            }
            parts.push((at, block.slice(from..from + n)));
        }
        if let [(0, part)] = &parts[..]
            && part.len() as u64 == len
        {
            return Ok(part.clone());
        }
        // Holes read as zeros.
        let mut out = vec![0u8; len as usize];
        for (at, part) in parts {
            out[at..at + part.len()].copy_from_slice(&part);
        }
        Ok(Bytes::from(out))
    }

    /// The file size and the extents covering `[offset, offset + len)`: from the handle's
    /// view if this client wrote nothing since and a window covers the range, otherwise
    /// from a fresh window of blocks from `offset` (kept beside the others while the file
    /// looks the same).
    async fn read_view(
        &self,
        fh: u64,
        ino: InodeId,
        offset: u64,
        len: u64,
    ) -> Result<(u64, Arc<Vec<Extent>>), Errno> {
        let h = self.handle(fh)?;
        let mut f = h.lock().await;
        let current = |v: &ReadView| {
            v.generation == self.write_generation.load(Ordering::Relaxed)
                && v.epoch == self.kernel.epoch(ino)
        };
        if let Some(v) = &f.view
            && !self.options.linearizable
            && current(v)
            && let Some(extents) = v.covering(offset, len)
        {
            return Ok((v.size, extents));
        }
        let (_, fresh) = self.fetch_view(ino, offset, len).await?;
        let size = fresh.size;
        let (start, window) = fresh
            .windows
            .iter()
            .next()
            .map(|(s, w)| (*s, w.clone()))
            .expect("a fetched view has its window");
        match &mut f.view {
            Some(v)
                if current(v)
                    && v.generation == fresh.generation
                    && v.epoch == fresh.epoch
                    && v.size == fresh.size
                    && v.windows.len() < MAX_WINDOWS =>
            {
                v.windows.insert(start, window.clone());
            }
            _ => f.view = Some(fresh),
        }
        Ok((size, window.1))
    }

    /// A fresh view from `offset`: the file's attributes and the extents of a window of
    /// blocks from there (at least to `offset + len`), in one round trip.
    pub(super) async fn fetch_view(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
    ) -> Result<(Attr, ReadView), Errno> {
        // Taken before the query: a write of this client's, or pages dropped for a change
        // elsewhere, after it make the view stale.
        let generation = self.write_generation.load(Ordering::Relaxed);
        let epoch = self.kernel.epoch(ino);
        let bs = u64::from(self.volume.policy.block_size);
        let start = offset - offset % bs;
        let want = (READ_WINDOW_BLOCKS * bs).max(offset.saturating_add(len) - start);
        // A file this mount made and wrote under a lease it still holds: nobody else has
        // reached it, so what the mount kept is what the servers would answer.
        let kept = match self.options.linearizable {
            false => self.leases.view(ino, start, want),
            true => None,
        };
        let (attr, extents) = match kept {
            Some(view) => view,
            None => match self
                .query(Query::View {
                    ino,
                    offset: start,
                    len: want,
                })
                .await?
            {
                QueryReply::View { attr, extents } => (attr, extents),
                _ => return Err(libc_errno::EIO),
            },
        };
        let end = start.saturating_add(want).min(attr.size).max(start);
        let view = ReadView {
            generation,
            epoch,
            size: attr.size,
            windows: BTreeMap::from([(start, (end, Arc::new(extents)))]),
        };
        Ok((attr, view))
    }

    /// After a failed read of `e`'s block: when this client runs with a token and holds no
    /// capability for the block (dropped, or never given), asks for the extent again, which
    /// brings one. Whether the read is worth trying again.
    async fn renew_cap(&self, ino: InodeId, e: &Extent) -> bool {
        if !crate::caps::in_use() || !crate::caps::get(&e.block, self.volume.id).is_empty() {
            return false;
        }
        let asked = Query::Extents {
            ino,
            offset: e.offset,
            len: e.len,
            limit: None,
        };
        self.query(asked).await.is_ok() && !crate::caps::get(&e.block, self.volume.id).is_empty()
    }

    /// `[from, from + len)` of `ino`'s extent's block, verified by range against its id
    /// (or from the metadata, while it holds the block staged).
    async fn block_range(
        &self,
        ino: InodeId,
        e: &Extent,
        from: u64,
        len: u64,
    ) -> Result<Bytes, Errno> {
        match self
            .blocks
            .get_range(&e.block, self.volume.policy.replicas, from, len)
            .await
        {
            Ok(part) => Ok(part),
            Err(err) => {
                let whole = self.staged_block(ino, e).await.ok_or_else(|| {
                    warn!(block = %e.block, error = %err, "block range unreadable");
                    libc_errno::EIO
                })?;
                let (from, end) = (from as usize, (from + len) as usize);
                whole
                    .get(from..end.min(whole.len()))
                    .map(|p| whole.slice_ref(p))
                    .ok_or(libc_errno::EIO)
            }
        }
    }

    /// The plaintext of `ino`'s extent's block: from the cache, or a verified replica
    /// (fetched once for all the reads that want it at the same time), or the metadata
    /// while it holds the block staged.
    pub(super) async fn block(&self, ino: InodeId, e: &Extent) -> Result<Bytes, Errno> {
        self.cache
            .get_or_fetch(&e.block, || async {
                // A small block (an extent that starts it and is small, as a small file's):
                // whole through a range port, if this thread may wait on one.
                if e.block_offset == 0
                    && e.len <= RANGE_READ_MAX
                    && let Some(whole) =
                        self.blocks
                            .get_small(&e.block, self.volume.policy.replicas, e.len)
                {
                    return Ok(whole);
                }
                match self.blocks.get(&e.block, self.volume.policy.replicas).await {
                    Ok(block) => Ok(block),
                    Err(err) => self.staged_block(ino, e).await.ok_or_else(|| {
                        warn!(block = %e.block, error = %err, "block unreadable");
                        libc_errno::EIO
                    }),
                }
            })
            .await
    }
}
