//! Compaction: a block-aligned range of a file written in pieces is rewritten as whole
//! blocks, so reads stop costing a block per piece and identical files share blocks again.
//!
//! It waits until the file has been closed here for [`FsOptions::compact_after`] and is
//! not open here any more: rewriting a file that is still being written (a database, a
//! benchmark's next pass) competes with its writer for the disks and the cores and is
//! likely undone by the next writes, and a file deleted meanwhile needs none.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::ns::{Extent, Op, libc_errno};
use meridian_proto::{EncodedBlock, InodeId};
use tracing::{debug, warn};

use super::{Errno, FileSystem};

/// Files with ranges to compact: the ranges' starts, and when the file may be compacted.
#[derive(Default)]
pub(super) struct Pending {
    files: Mutex<HashMap<InodeId, (BTreeSet<u64>, Instant)>>,
    /// Whether a task is working through `files`.
    running: std::sync::atomic::AtomicBool,
}

impl FileSystem {
    /// Queues `ranges` of `ino` (closed here just now) for compaction.
    pub(super) fn compact_later(self: Arc<Self>, ino: InodeId, ranges: BTreeSet<u64>) {
        let due = Instant::now() + self.options.compact_after;
        {
            let mut files = self
                .compaction
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let entry = files.entry(ino).or_insert_with(|| (BTreeSet::new(), due));
            entry.0.extend(ranges);
            entry.1 = due;
        }
        if !self
            .compaction
            .running
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(self.compact_due());
        }
    }

    /// Works through the queue until it is empty: each file once it is due and closed.
    async fn compact_due(self: Arc<Self>) {
        loop {
            let next = {
                let mut files = self
                    .compaction
                    .files
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let due = files
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(ino, _)| *ino)
                    .next();
                match due {
                    Some(ino) => Ok(files.remove(&ino).map(|(r, _)| (ino, r))),
                    None => Err(files.values().map(|(_, at)| *at).min()),
                }
            };
            match next {
                Ok(Some((ino, mut ranges))) => {
                    while let Some(start) = ranges.pop_first() {
                        if self.is_open(ino).await {
                            // In use here (again): look later (its last close here pushes
                            // the time further).
                            ranges.insert(start);
                            let mut files = self
                                .compaction
                                .files
                                .lock()
                                .unwrap_or_else(|p| p.into_inner());
                            // At least a second: a file held open must not spin this.
                            let wait = self.options.compact_after.max(Duration::from_secs(1));
                            let due = Instant::now() + wait;
                            let entry = files.entry(ino).or_insert_with(|| (BTreeSet::new(), due));
                            entry.0.append(&mut ranges);
                            break;
                        }
                        match self.compact_range(ino, start).await {
                            Ok(_) => {}
                            // Deleted meanwhile: nothing left to compact.
                            Err(e) if e == libc_errno::ENOENT => break,
                            Err(e) => {
                                warn!(%ino, start, errno = e, "compaction failed; the file is fine, only fragmented");
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(Some(at)) => tokio::time::sleep_until(at.into()).await,
                Err(None) => {
                    self.compaction
                        .running
                        .store(false, std::sync::atomic::Ordering::Release);
                    // A file queued between the look and the store finds no task running
                    // only if it saw `running` true: look once more.
                    let empty = self
                        .compaction
                        .files
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty();
                    if empty
                        || self
                            .compaction
                            .running
                            .swap(true, std::sync::atomic::Ordering::AcqRel)
                    {
                        debug!("compaction queue empty");
                        return;
                    }
                }
            }
        }
    }

    /// Rewrites the block-aligned range at `start` of a file as whole blocks (one per run
    /// of data; holes stay holes), so a file written in small pieces stops costing a block
    /// per piece on every read and identical files share blocks again. The metaserver applies it only if the range's extents are
    /// unchanged since they were read here; otherwise it is skipped (the newer write wins,
    /// nothing is lost). Returns whether the range was rewritten.
    pub async fn compact_range(&self, ino: InodeId, start: u64) -> Result<bool, Errno> {
        let bs = u64::from(self.volume.policy.block_size);
        let size = match self.committed_attr(ino).await {
            Ok(a) => a.size,
            Err(e) if e == libc_errno::ENOENT => return Ok(false),
            Err(e) => return Err(e),
        };
        let end = (start + bs).min(size);
        if end <= start {
            return Ok(false);
        }
        let expected = self
            .committed_extents(ino, start, end - start, None)
            .await?;
        // The runs of data in the range, each rewritten as one block: the holes between
        // them stay holes (no zeros are written, SEEK_HOLE still finds them).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for e in &expected {
            let (s, t) = (e.offset.max(start), e.end().min(end));
            match runs.last_mut() {
                _ if s >= t => {}
                Some(run) if run.1 == s => run.1 = t,
                _ => runs.push((s, t)),
            }
        }
        let whole = |(s, t): (u64, u64)| {
            expected.iter().any(|e| {
                e.offset == s
                    && e.end() == t
                    && e.block_offset == 0
                    && u64::from(e.block_len) == t - s
            })
        };
        let mut replacement = Vec::new();
        for run in runs.into_iter().filter(|r| !whole(*r)) {
            replacement.push(self.rewrite_run(ino, &expected, run).await?);
        }
        if replacement.is_empty() {
            return Ok(false);
        }
        match self
            .mutate(Op::Compact {
                ino,
                offset: start,
                len: end - start,
                expected,
                replacement,
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e == libc_errno::EAGAIN => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads the bytes of `[s, t)`, all inside `extents`, as one block: its extent.
    async fn rewrite_run(
        &self,
        ino: InodeId,
        extents: &[Extent],
        (s, t): (u64, u64),
    ) -> Result<Extent, Errno> {
        let mut data = vec![0u8; (t - s) as usize];
        for e in extents {
            let (from, to) = (e.offset.max(s), e.end().min(t));
            if from >= to {
                continue;
            }
            let block = self.block(ino, e).await?;
            let at = e.block_offset as usize + (from - e.offset) as usize;
            let src = block
                .get(at..at + (to - from) as usize)
                .ok_or(libc_errno::EIO)?;
            data[(from - s) as usize..(to - s) as usize].copy_from_slice(src);
        }
        let encoded = tokio::task::spawn_blocking(move || EncodedBlock::encode(&data))
            .await
            .map_err(|_| libc_errno::EIO)?
            .map_err(|_| libc_errno::EIO)?;
        let (r, w) = (self.volume.policy.replicas, self.volume.policy.min_copies);
        self.blocks.put(&encoded, r, w).await.map_err(|e| {
            warn!(error = %e, "compaction upload failed");
            libc_errno::EIO
        })?;
        Ok(Extent {
            offset: s,
            len: t - s,
            block: encoded.id,
            block_offset: 0,
            block_len: encoded.raw_len,
        })
    }
}
