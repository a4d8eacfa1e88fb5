//! Small fsync'd commits carry their blocks staged (docs/adr/0018): such a commit sends its
//! blocks' plaintext in the metadata commit itself, so the fsync waits for one Raft round
//! rather than a put and then a round. The blocks are put to the chunkservers afterwards,
//! gathered (so a chunkserver's fdatasync covers many), and then unstaged together. A read
//! that finds no chunkserver with such a block yet asks the metadata for it, and puts and
//! unstages it in turn (its writer may have died first).
//!
//! What a mount has staged and not yet unstaged is bounded ([`PENDING_MAX`]): past it (the
//! chunkservers unreachable, say) commits put their blocks first, as larger ones do, and so
//! fail as they do.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use meridian_proto::ns::{Extent, Op, Query, QueryReply, STAGED_MAX, UNSTAGE_MAX};
use meridian_proto::{BlockId, EncodedBlock, InodeId};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::FileSystem;

/// Plaintext bytes a mount may have staged and not yet unstaged.
pub const PENDING_MAX: usize = 32 << 20;
/// How long the uploader gathers staged blocks before it puts them (together: a
/// chunkserver's one fdatasync covers the blocks it stores at once).
const GATHER: Duration = Duration::from_millis(100);
/// Blocks put at once: no more than the connections kept to a node, so the puts reuse
/// them rather than dialing new ones.
const PUTS_AT_ONCE: usize = crate::blocks::range_port::IDLE_PER_ADDRESS;
/// Blocks put are unstaged once this many are waiting, or [`UNSTAGE_EVERY`] after the
/// oldest was put: one Raft entry for many.
const UNSTAGE_BATCH: usize = 256;
const UNSTAGE_EVERY: Duration = Duration::from_millis(100);
/// How long a block whose put failed waits before it is tried again (doubling, up to 30 s).
const RETRY_FIRST: Duration = Duration::from_millis(500);

/// A staged block on its way to the chunkservers: its plaintext, encoded (compressed) only
/// when the uploader puts it, off the path of the fsync that staged it.
struct Upload {
    ino: InodeId,
    id: BlockId,
    data: Bytes,
    retry: Duration,
    /// Counted as this mount's pending (its own commit's), not a repair of another's.
    counted: bool,
}

/// The mount's staged blocks not yet unstaged, and the uploader's queue.
pub(super) struct Staging {
    pending: AtomicUsize,
    queue: mpsc::UnboundedSender<Upload>,
    /// Blocks this mount read from the metadata and is putting for whoever staged them.
    repairing: Mutex<HashSet<BlockId>>,
}

impl Staging {
    /// A queue, and the receiver its uploader task (`FileSystem::run_staging`) takes.
    pub(super) fn new() -> (Self, StagingQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Staging {
            pending: AtomicUsize::new(0),
            queue: tx,
            repairing: Mutex::default(),
        };
        (s, StagingQueue(rx))
    }

    /// Whether a commit of `bytes` may carry its blocks staged; if so they count as
    /// pending until unstaged (or [`Staging::forget`]).
    pub(super) fn admit(&self, bytes: usize) -> bool {
        if bytes == 0 || bytes > STAGED_MAX {
            return false;
        }
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p + bytes <= PENDING_MAX).then_some(p + bytes)
            })
            .is_ok()
    }

    /// `bytes` admitted are not staged after all (the commit failed).
    pub(super) fn forget(&self, bytes: usize) {
        self.pending.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Queues the blocks (id and plaintext) of a commit of `ino` that applied, to be put
    /// and unstaged.
    pub(super) fn uploaded_later(&self, ino: InodeId, blocks: Vec<(BlockId, Bytes)>) {
        for (id, data) in blocks {
            let upload = Upload {
                ino,
                id,
                data,
                retry: RETRY_FIRST,
                counted: true,
            };
            if self.queue.send(upload).is_err() {
                // No uploader (the mount is going): the blocks stay staged, readable.
                return;
            }
        }
    }

    /// Queues a block of `ino` read from the metadata to be put and unstaged here: its
    /// writer may be gone (a mount that died before its put), and this mount holds the
    /// bytes. Once per block at a time.
    fn repair_later(&self, ino: InodeId, id: BlockId, data: Bytes) {
        let mut repairing = self.repairing.lock().unwrap_or_else(|p| p.into_inner());
        if !repairing.insert(id) {
            return;
        }
        let upload = Upload {
            ino,
            id,
            data,
            retry: RETRY_FIRST,
            counted: false,
        };
        let _ = self.queue.send(upload);
    }
}

/// The uploader's end of the queue.
pub(super) struct StagingQueue(mpsc::UnboundedReceiver<Upload>);

impl FileSystem {
    /// Puts staged blocks as they come and unstages them in batches, until the file system
    /// goes.
    pub(super) async fn run_staging(me: Weak<FileSystem>, queue: StagingQueue) {
        let mut rx = queue.0;
        // Put, waiting to be unstaged: file -> (blocks, plaintext bytes).
        let mut put: BTreeMap<InodeId, (Vec<BlockId>, usize)> = BTreeMap::new();
        let mut waiting = 0usize;
        let mut oldest: Option<Instant> = None;
        loop {
            let next = match oldest {
                None => rx.recv().await,
                Some(t) => {
                    let due = t + UNSTAGE_EVERY;
                    match tokio::time::timeout_at(due.into(), rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let Some(fs) = me.upgrade() else { return };
                            fs.unstage(std::mem::take(&mut put)).await;
                            (waiting, oldest) = (0, None);
                            continue;
                        }
                    }
                }
            };
            let Some(first) = next else {
                if let Some(fs) = me.upgrade() {
                    fs.unstage(put).await;
                }
                return;
            };
            tokio::time::sleep(GATHER).await;
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let Some(fs) = me.upgrade() else { return };
            for done in fs.put_staged(batch).await {
                let entry = put.entry(done.ino).or_default();
                entry.0.push(done.id);
                if done.counted {
                    entry.1 += done.data.len();
                }
                waiting += 1;
                oldest.get_or_insert_with(Instant::now);
            }
            if waiting >= UNSTAGE_BATCH {
                fs.unstage(std::mem::take(&mut put)).await;
                (waiting, oldest) = (0, None);
            }
        }
    }

    /// Puts `batch`; returns the uploads that succeeded. A failed one is queued again
    /// after a while (it stays staged meanwhile).
    async fn put_staged(&self, batch: Vec<Upload>) -> Vec<Upload> {
        let (r, w) = (self.volume.policy.replicas, self.volume.policy.min_copies);
        // Encoded on a thread of the blocking pool: a gathering's worth of compression on
        // the runtime's worker would hold up the answers of the durable calls meanwhile.
        // Each was hashed to its id when staged (or checked against it when read back).
        let plain: Vec<(BlockId, Bytes)> = batch.iter().map(|u| (u.id, u.data.clone())).collect();
        let encoding = tokio::task::spawn_blocking(move || {
            plain
                .iter()
                .map(|(id, d)| EncodedBlock::encode_hashed(*id, d).ok())
                .collect::<Vec<_>>()
        });
        let Ok(encoded) = encoding.await else {
            // The encoding panicked: tried again later, as a failed put is.
            for u in batch {
                self.retry_later(u);
            }
            return Vec::new();
        };
        let mut uploads = Vec::with_capacity(batch.len());
        let mut blocks = Vec::with_capacity(batch.len());
        for (u, block) in batch.into_iter().zip(encoded) {
            match block {
                Some(block) => {
                    uploads.push(u);
                    blocks.push(block);
                }
                None => {
                    // Past a block's largest size (a commit stages far less): it could
                    // never be put from here, and stays staged for the chunkservers to
                    // adopt (ADR 0018).
                    warn!(block = %u.id, "a staged block this mount cannot encode is left staged");
                    if u.counted {
                        self.staging.forget(u.data.len());
                    }
                }
            }
        }
        // Those sharing a first placement go to it together; the rest, and any a batch
        // did not store, alone.
        let batched = self.blocks.put_batched(&blocks, r, w).await;
        let mut done = Vec::new();
        let mut alone = Vec::new();
        for ((u, block), receipt) in uploads.into_iter().zip(blocks).zip(batched) {
            match receipt {
                Some(_) => done.push(u),
                None => alone.push((u, block)),
            }
        }
        let results: Vec<(Upload, bool)> = futures::stream::iter(alone)
            .map(|(u, block)| async move {
                let ok = match self.blocks.put(&block, r, w).await {
                    Ok(_) => true,
                    Err(e) => {
                        debug!(block = %u.id, error = %e, "staged block not put yet");
                        false
                    }
                };
                (u, ok)
            })
            .buffer_unordered(PUTS_AT_ONCE)
            .collect()
            .await;
        for (u, ok) in results {
            if ok {
                done.push(u);
            } else {
                self.retry_later(u);
            }
        }
        done
    }

    fn retry_later(&self, mut u: Upload) {
        let queue = self.staging.queue.clone();
        let wait = u.retry;
        u.retry = (u.retry * 2).min(Duration::from_secs(30));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = queue.send(u);
        });
    }

    /// Tells the metadata that `put`'s blocks are on chunkservers. An unstaging that fails
    /// leaves its blocks staged there (readable still, and bounded by the region's limit).
    async fn unstage(&self, put: BTreeMap<InodeId, (Vec<BlockId>, usize)>) {
        for (ino, (blocks, bytes)) in put {
            for part in blocks.chunks(UNSTAGE_MAX) {
                let op = Op::Unstage {
                    ino,
                    blocks: part.to_vec(),
                };
                if let Err(e) = self.meta.mutate(&op).await {
                    warn!(%ino, error = %e, "staged blocks not unstaged; they stay in the metadata");
                }
            }
            self.staging.forget(bytes);
            let mut repairing = self
                .staging
                .repairing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for b in &blocks {
                repairing.remove(b);
            }
        }
    }

    /// The plaintext of `ino`'s extent `e`'s block while the metadata holds it staged
    /// (checked against its id); none otherwise.
    pub(super) async fn staged_block(&self, ino: InodeId, e: &Extent) -> Option<Bytes> {
        let q = Query::Staged {
            ino,
            offset: e.offset,
            block: e.block,
        };
        match self.meta.query(&q, false).await {
            Ok(QueryReply::Bytes(data)) if BlockId::of(&data) == e.block => {
                let data = Bytes::from(data);
                self.staging.repair_later(ino, e.block, data.clone());
                Some(data)
            }
            Ok(_) => {
                warn!(block = %e.block, "the metadata's staged copy does not match its id");
                None
            }
            Err(_) => None,
        }
    }
}
