//! Puts of blocks: a small block appended to a pack and made durable by its fdatasync
//! (shared by the puts of one call, and by concurrent puts), a large one written as a file
//! of its own (see `store.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_proto::{BlockId, EncodedBlock, Outboard};
use tracing::warn;

use super::{BlockStore, PutOutcome, create_dir_durably};
use crate::direct;
use crate::error::ChunkError;
use crate::format;
use crate::layout::sync_dir;

/// How far a put got before its pack's fdatasync.
enum Begun {
    /// Nothing left to do.
    Done(PutOutcome),
    /// Appended to a pack: durable once the packs are synced to `lsn`.
    Appended { lsn: u64, file_len: u64 },
}

impl BlockStore {
    /// Stores a block durably, with its outboard for verified range reads. The caller has
    /// verified both (`EncodedBlock::decode_with_outboard`). An intact copy already present
    /// is kept; a damaged one is replaced.
    pub fn put(&self, block: &EncodedBlock, outboard: &Outboard) -> Result<PutOutcome, ChunkError> {
        self.put_many(&[(block, outboard)])
            .pop()
            .expect("one outcome per block")
    }

    /// Puts `blocks` as [`put`](Self::put) puts each, the small ones appended to the pack
    /// first and made durable together by one fdatasync: one outcome per block, in order.
    pub fn put_many(
        &self,
        blocks: &[(&EncodedBlock, &Outboard)],
    ) -> Vec<Result<PutOutcome, ChunkError>> {
        let mut out = Vec::with_capacity(blocks.len());
        // (which block, its append's lsn, its record's length)
        let mut appended = Vec::new();
        for (i, (block, outboard)) in blocks.iter().enumerate() {
            out.push(match self.put_begun(block, outboard) {
                Ok(Begun::Done(outcome)) => Ok(outcome),
                Ok(Begun::Appended { lsn, file_len }) => {
                    appended.push((i, lsn, file_len));
                    Ok(PutOutcome::Written)
                }
                Err(e) => Err(e),
            });
        }
        let Some(last) = appended.iter().map(|a| a.1).max() else {
            return out;
        };
        if let Err(e) = self.packs.sync_to(last) {
            // The packs are broken from now on: these blocks are stored as files.
            warn!(error = %e, blocks = appended.len(), "a pack's fdatasync failed; storing its blocks as files");
            for (i, lsn, file_len) in appended {
                let (block, outboard) = blocks[i];
                {
                    let _guard = self.stripe(&block.id);
                    if self.packs.forget(&block.id, lsn) {
                        self.count.fetch_sub(1, Ordering::Relaxed);
                        self.used.fetch_sub(file_len, Ordering::Relaxed);
                    }
                }
                let (header, outboard) = record(block, outboard);
                let file = [&header[..], &block.payload[..], &outboard[..]];
                out[i] = self.put_file(&block.id, &file, file_len);
            }
        }
        out
    }

    /// A put up to its pack's fdatasync: done (stored as a file, or present already), or
    /// appended to the active pack, durable once the packs are synced to its lsn.
    fn put_begun(&self, block: &EncodedBlock, outboard: &Outboard) -> Result<Begun, ChunkError> {
        if self.has(&block.id) {
            match self.read(&block.id) {
                Ok(_) => return self.present_again(&block.id).map(Begun::Done),
                Err(e) => {
                    warn!(block = %block.id, error = %e, "replacing a damaged copy");
                    self.delete(&block.id)?;
                }
            }
        }
        let (header, outboard) = record(block, outboard);
        let file_len = (header.len() + block.payload.len() + outboard.len()) as u64;
        let free = self.usage().free;
        if file_len > free {
            return Err(ChunkError::NoSpace {
                need: file_len,
                free,
            });
        }
        let file = [&header[..], &block.payload[..], &outboard[..]];
        if self.packs.takes(file_len) {
            match self.append_packed(&block.id, &file, file_len) {
                Ok(begun) => return Ok(begun),
                // Broken packs take no more puts: stored as a file below.
                Err(e) => {
                    warn!(block = %block.id, error = %e, "a packed put failed; storing the block as a file")
                }
            }
        }
        self.put_file(&block.id, &file, file_len).map(Begun::Done)
    }

    /// An intact copy of `id` answers a put: its age counts from now, and if it is a
    /// packed put not yet durable, the answer waits until it is.
    fn present_again(&self, id: &BlockId) -> Result<PutOutcome, ChunkError> {
        if let Some(p) = self.packs.get(id) {
            self.packs.touch(id);
            self.packs
                .sync_to(p.lsn)
                .map_err(ChunkError::io("fdatasync pack", &self.blocks))?;
            return Ok(PutOutcome::AlreadyPresent);
        }
        // A fresh upload of it: garbage collection counts its age from now.
        let _ = OpenOptions::new()
            .write(true)
            .open(self.path(id))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Ok(PutOutcome::AlreadyPresent)
    }

    /// Appends a small block to the active pack (durable once the packs are synced to
    /// the lsn returned).
    fn append_packed(
        &self,
        id: &BlockId,
        file: &[&[u8]],
        file_len: u64,
    ) -> Result<Begun, ChunkError> {
        let _guard = self.stripe(id);
        if self.packs.contains(id) {
            // Put meanwhile by another upload of the same bytes.
            drop(_guard);
            return self.present_again(id).map(Begun::Done);
        }
        self.forget_file(id);
        let lsn = self
            .packs
            .put(id, file)
            .map_err(ChunkError::io("pack append", &self.blocks))?;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.used.fetch_add(file_len, Ordering::Relaxed);
        Ok(Begun::Appended { lsn, file_len })
    }

    /// Writes a block file to `tmp/`, fsyncs it, renames it into place and fsyncs its
    /// folder.
    fn put_file(
        &self,
        id: &BlockId,
        file: &[&[u8]],
        file_len: u64,
    ) -> Result<PutOutcome, ChunkError> {
        let path = self.path(id);
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{id}.{}.{seq}.tmp", std::process::id()));
        let written = (|| {
            // Written around the page cache, and fsync'd, where the file system allows
            // (see `direct`).
            if direct::write_new(&tmp, file).map_err(ChunkError::io("write", &tmp))? {
                return Ok(());
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(ChunkError::io("create", &tmp))?;
            for part in file {
                f.write_all(part).map_err(ChunkError::io("write", &tmp))?;
            }
            f.sync_all().map_err(ChunkError::io("fsync", &tmp))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let dir = path.parent().expect("block paths have a parent");
        if let Err(e) = create_dir_durably(dir) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        {
            let _guard = self.stripe(id);
            self.forget_file(id);
            let previous = fs::metadata(&path).ok().map(|m| m.len());
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(ChunkError::io("rename into place", &path)(e));
            }
            // Kept open for the reads that often follow a write (the open is cheap now,
            // the directory entry and inode just made).
            let seen = self.open_files.generation();
            if let Ok(f) = File::open(&path) {
                self.open_files.keep(*id, Arc::new(f), seen);
            }
            match previous {
                Some(old) => {
                    self.used.fetch_sub(old, Ordering::Relaxed);
                }
                None => {
                    self.count.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.used.fetch_add(file_len, Ordering::Relaxed);
        }
        sync_dir(dir)?;
        Ok(PutOutcome::Written)
    }
}

/// A block's record as stored: its header, and its outboard's bytes (the payload between).
fn record(block: &EncodedBlock, outboard: &Outboard) -> ([u8; format::HEADER_LEN], Vec<u8>) {
    let outboard = outboard.to_bytes();
    (format::header(block, outboard.len()), outboard)
}
