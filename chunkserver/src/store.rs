//! Blocks on local disk.
//!
//! Layout under the data folder:
//! ```text
//! blocks/ab/abcd…(64 hex digits)      one file per block, fanned out by the first byte
//!                                      (see [`crate::layout`])
//! tmp/                                 writes in progress; emptied at start-up
//! packs/<generation>                   small blocks, without a file each (see
//!                                      [`crate::packs`])
//! ```
//! A block larger than [`packs::MAX_PACKED`] is written to `tmp/` (around the page cache
//! where the file system allows, see `direct.rs`), fsync'd, renamed into place, and the
//! folder holding it is fsync'd: after a crash at any point the block is either whole and
//! in place, or absent. A small block is appended to a pack and made durable by its
//! fdatasync (group commit). Small blocks stored as files by earlier versions stay files
//! and are read as before; a journal an earlier version left is replayed once at open
//! (see [`crate::journal`]).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use meridian_proto::{BlockId, Compression, EncodedBlock, NodeId, Outboard};
use tracing::{info, warn};

use crate::direct;
use crate::error::ChunkError;
use crate::format;
use crate::journal::{self, Replayed};
use crate::layout::{Layout, sync_dir};
use crate::open_files::OpenFiles;
use crate::packs::{self, Packs};

/// How many lock stripes serialize the final step of writes and deletes of one block.
const STRIPES: usize = 256;

/// What a put did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PutOutcome {
    /// The block was written.
    Written,
    /// An intact copy was already here; nothing was written.
    AlreadyPresent,
}

/// Space and block counts of a store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Usage {
    /// Bytes the node may use.
    pub capacity: u64,
    /// Bytes of blocks (their files' lengths, packed or not).
    pub used: u64,
    /// Bytes that can still be written (capacity and the filesystem's free space).
    pub free: u64,
    /// Blocks.
    pub blocks: u64,
}

/// Header facts about a stored block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoredBlock {
    /// Payload encoding.
    pub compression: Compression,
    /// Plaintext length.
    pub raw_len: u32,
    /// File size, header included.
    pub stored_len: u64,
}

#[path = "store_put.rs"]
mod put;
#[path = "store_range.rs"]
mod range;
pub use range::RangeRead;
use range::{RANGE_CACHE, RangeCache};

/// A folder of block files.
#[derive(Debug)]
pub struct BlockStore {
    node: NodeId,
    blocks: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    capacity: u64,
    used: AtomicU64,
    count: AtomicU64,
    stripes: Vec<Mutex<()>>,
    tmp_seq: AtomicU64,
    packs: Packs,
    layout: Layout,
    /// Headers and verified outboards of blocks read by range lately.
    ranges: RangeCache,
    /// Files of blocks put or read lately, kept open.
    open_files: OpenFiles,
}

impl BlockStore {
    /// Opens (or creates) the store under `root`: removes leftover temp files and counts the
    /// blocks present. `capacity` defaults to the size of the filesystem holding `root`.
    pub fn open(root: &Path, node: NodeId, capacity: Option<u64>) -> Result<Self, ChunkError> {
        Self::open_with_packs(root, node, capacity, packs::PACK_LEN)
    }

    /// [`open`](Self::open), with packs of at most `pack_len` bytes (0: every block is
    /// stored as a file of its own; blocks packed by an earlier run are still served).
    pub fn open_with_packs(
        root: &Path,
        node: NodeId,
        capacity: Option<u64>,
        pack_len: u64,
    ) -> Result<Self, ChunkError> {
        let blocks = root.join("blocks");
        let tmp = root.join("tmp");
        let quarantine = root.join("quarantine");
        let packs_dir = root.join("packs");
        for dir in [root, &blocks, &tmp, &quarantine, &packs_dir] {
            create_dir_durably(dir)?;
        }
        let removed = clean_tmp(&tmp)?;
        let layout = Layout::open(&blocks)?;
        let capacity = match capacity {
            Some(c) => c,
            None => fs_space(root)?.0,
        };
        let packs =
            Packs::open(&packs_dir, pack_len).map_err(ChunkError::io("open packs", &packs_dir))?;
        let store = BlockStore {
            node,
            blocks,
            tmp,
            quarantine,
            capacity,
            used: AtomicU64::new(0),
            count: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_seq: AtomicU64::new(0),
            packs,
            layout,
            ranges: RangeCache::new(RANGE_CACHE),
            open_files: OpenFiles::new(),
        };
        let dir = root.join("journal");
        journal::replay_and_remove(&dir, &store.blocks, |r| store.restore(r))
            .map_err(ChunkError::io("replay journal", &dir))?;
        let (count, used) = store.scan()?;
        store.count.store(count, Ordering::Relaxed);
        store.used.store(used, Ordering::Relaxed);
        info!(node = %node, blocks = count, used_bytes = used, capacity, temp_files_removed = removed, "block store open");
        Ok(store)
    }

    /// The file that holds `id`.
    pub fn path(&self, id: &BlockId) -> PathBuf {
        self.layout.path(id)
    }

    /// Forgets what is kept of `id`'s file (its header and outboard, the open file): it is
    /// being removed, moved aside or replaced.
    fn forget_file(&self, id: &BlockId) {
        self.ranges.forget(id);
        self.open_files.forget(id);
    }

    /// Space and counts now.
    pub fn usage(&self) -> Usage {
        let used = self.used.load(Ordering::Relaxed);
        let fs_free = fs_space(&self.blocks).map(|s| s.1).unwrap_or(0);
        Usage {
            capacity: self.capacity,
            used,
            free: self.capacity.saturating_sub(used).min(fs_free),
            blocks: self.count.load(Ordering::Relaxed),
        }
    }

    /// Drops the packed copy of `id`, durably, with the block's lock held; returns the
    /// bytes freed.
    fn remove_packed(&self, id: &BlockId) -> Result<Option<u64>, ChunkError> {
        let (removed, durable) = self.packs.remove(id);
        if let Some(len) = removed {
            // No longer served, whether or not its mark is durable yet.
            self.forget_file(id);
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        durable.map_err(ChunkError::io("mark dead in pack", &self.blocks))?;
        Ok(removed)
    }

    /// Puts right what a journal replay found: a block whose file is missing or damaged is
    /// written again (without fsync: the replay ends with a `syncfs`), a deleted one removed.
    fn restore(&self, r: Replayed) -> std::io::Result<()> {
        match r {
            Replayed::Put(id, bytes) => {
                if self.read(&id).is_ok() {
                    return Ok(());
                }
                let sound = format::decode(Bytes::from(bytes.clone()))
                    .ok()
                    .filter(|(b, _)| b.id == id)
                    .and_then(|(b, stored)| {
                        let (_, ob) = b.decode_with_outboard().ok()?;
                        stored
                            .is_none_or(|s| s[..] == ob.to_bytes()[..])
                            .then_some(())
                    });
                if sound.is_none() {
                    warn!(block = %id, "journal: a record does not hold its block; skipped");
                    return Ok(());
                }
                let path = self.path(&id);
                self.forget_file(&id);
                let tmp = self.tmp.join(format!("{id}.replay.tmp"));
                fs::write(&tmp, &bytes)?;
                fs::create_dir_all(path.parent().expect("block paths have a parent"))?;
                fs::rename(&tmp, &path)?;
                info!(block = %id, "journal: block file restored");
            }
            Replayed::Kept(_) => {}
            Replayed::Deleted(id) => {
                self.forget_file(&id);
                match fs::remove_file(self.path(&id)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Reads and verifies a stored block: an error, never wrong bytes, if the file is damaged
    /// (its outboard included). Returns the stored form and the plaintext.
    pub fn read(&self, id: &BlockId) -> Result<(EncodedBlock, Bytes), ChunkError> {
        self.read_whole(id).map(|(block, plain, _)| (block, plain))
    }

    /// [`read`](Self::read), with the block's outboard (computed in the same pass that
    /// verifies the block, and compared with the stored one in format 2 files).
    fn read_whole(&self, id: &BlockId) -> Result<(EncodedBlock, Bytes, Outboard), ChunkError> {
        let located = self.locate(id)?;
        let len = located.len()?;
        let (block, stored) = format::decode(located.read_all(len)?)
            .map_err(|e| ChunkError::corrupt_format(*id, self.node, e))?;
        self.check_id(id, &block.id)?;
        let corrupt = |reason: String| ChunkError::Corrupt {
            id: *id,
            node: self.node,
            reason,
        };
        let (plain, outboard) = block
            .decode_with_outboard()
            .map_err(|e| corrupt(e.to_string()))?;
        if stored.is_some_and(|stored| stored[..] != outboard.to_bytes()[..]) {
            return Err(corrupt(
                "the stored outboard does not match the block".into(),
            ));
        }
        metrics::counter!("meridian_chunk_verified_reads_total").increment(1);
        Ok((block, plain, outboard))
    }

    fn check_id(&self, want: &BlockId, header: &BlockId) -> Result<(), ChunkError> {
        if header != want {
            return Err(ChunkError::Corrupt {
                id: *want,
                node: self.node,
                reason: format!("file header names block {header}"),
            });
        }
        Ok(())
    }

    /// Where the bytes of block `id`'s file are: packed, or a file of its own.
    pub(crate) fn locate(&self, id: &BlockId) -> Result<Located, ChunkError> {
        if let Some(p) = self.packs.get(id) {
            return Ok(Located {
                file: p.file,
                base: p.at,
                len: Some(p.len),
                path: self.blocks.clone(),
            });
        }
        let path = self.path(id);
        if let Some(file) = self.open_files.get(id) {
            return Ok(Located {
                file,
                base: 0,
                len: None,
                path,
            });
        }
        let seen = self.open_files.generation();
        match File::open(&path) {
            Ok(f) => {
                let file = Arc::new(f);
                self.open_files.keep(*id, file.clone(), seen);
                Ok(Located {
                    file,
                    base: 0,
                    len: None,
                    path,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ChunkError::NotFound(*id)),
            Err(e) => Err(ChunkError::io("open", &path)(e)),
        }
    }

    /// Header facts about a stored block, or `None` if it is not here. Reads only the header.
    pub fn stat(&self, id: &BlockId) -> Result<Option<StoredBlock>, ChunkError> {
        let located = match self.locate(id) {
            Ok(l) => l,
            Err(ChunkError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored_len = located.len()?;
        let header = located.read_at(0, (format::HEADER_LEN as u64).min(stored_len) as usize)?;
        let h = format::parse_header(&header)
            .map_err(|e| ChunkError::corrupt_format(*id, self.node, e))?;
        if stored_len != h.file_len() {
            return Err(ChunkError::Corrupt {
                id: *id,
                node: self.node,
                reason: format!(
                    "file is {stored_len} bytes, header announces {}",
                    h.file_len()
                ),
            });
        }
        Ok(Some(StoredBlock {
            compression: h.compression,
            raw_len: h.raw_len,
            stored_len,
        }))
    }

    /// Bytes of the file holding `id` (0 if it is not here).
    pub fn file_len(&self, id: &BlockId) -> u64 {
        match self.packs.get(id) {
            Some(p) => p.len,
            None => fs::metadata(self.path(id)).map_or(0, |m| m.len()),
        }
    }

    /// When the copy of `id` was stored or last uploaded again (ms since the epoch), or
    /// `None` if it is not here. A packed block put before this store opened counts from
    /// the open.
    pub fn stored_at_ms(&self, id: &BlockId) -> Option<u64> {
        if let Some(p) = self.packs.get(id) {
            return Some(p.stored_ms);
        }
        let modified = fs::metadata(self.path(id)).ok()?.modified().ok()?;
        Some(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    /// Runs `f` holding the lock of `id` that [`delete_if`](Self::delete_if) decides under.
    pub fn locked<T>(&self, id: &BlockId, f: impl FnOnce() -> T) -> T {
        let _guard = self.stripe(id);
        f()
    }

    /// Removes the copy of `id` if `still` says so, deciding under the block's lock so that
    /// a put cannot slip in between; returns the bytes freed.
    pub fn delete_if(
        &self,
        id: &BlockId,
        still: impl FnOnce() -> bool,
    ) -> Result<Option<u64>, ChunkError> {
        let _guard = self.stripe(id);
        if !still() {
            return Ok(None);
        }
        self.delete_locked(id)
    }

    /// Whether a copy of `id` is here (not verified).
    pub fn has(&self, id: &BlockId) -> bool {
        self.packs.contains(id) || self.path(id).exists()
    }

    /// Removes this node's copy; returns whether there was one.
    pub fn delete(&self, id: &BlockId) -> Result<bool, ChunkError> {
        let _guard = self.stripe(id);
        Ok(self.delete_locked(id)?.is_some())
    }

    /// Removes the packed copy of `id` and its file, durably, with its lock held; returns
    /// the bytes freed.
    fn delete_locked(&self, id: &BlockId) -> Result<Option<u64>, ChunkError> {
        let packed = self.remove_packed(id)?;
        let path = self.path(id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(packed),
            Err(e) => return Err(ChunkError::io("stat", &path)(e)),
        };
        fs::remove_file(&path).map_err(ChunkError::io("remove", &path))?;
        self.forget_file(id);
        self.used.fetch_sub(len, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
        sync_dir(path.parent().expect("block paths have a parent"))?;
        Ok(Some(len + packed.unwrap_or(0)))
    }

    /// Moves this node's copy of `id` aside (it is no longer served or counted) and
    /// returns where it went, or `None` if there was none.
    pub fn quarantine(&self, id: &BlockId) -> Result<Option<PathBuf>, ChunkError> {
        let path = self.path(id);
        let aside =
            self.quarantine
                .join(format!("{}.{}", id.to_hex(), meridian_proto::physical_ms()));
        {
            let _guard = self.stripe(id);
            if let Some(p) = self.packs.get(id) {
                // A packed copy's bytes are copied aside, then its record marked dead.
                let bytes = packs::read_at(&p.file, p.at, p.len as usize)
                    .map_err(ChunkError::io("read", &self.blocks))?;
                let mut f = File::create(&aside).map_err(ChunkError::io("create", &aside))?;
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(ChunkError::io("write", &aside))?;
                self.remove_packed(id)?;
            } else {
                let len = match fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(ChunkError::io("stat", &path)(e)),
                };
                fs::rename(&path, &aside).map_err(ChunkError::io("quarantine", &path))?;
                self.forget_file(id);
                self.used.fetch_sub(len, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                sync_dir(path.parent().expect("block paths have a parent"))?;
            }
        }
        sync_dir(&self.quarantine)?;
        metrics::counter!("meridian_chunk_quarantined_total").increment(1);
        Ok(Some(aside))
    }

    /// How many files are in the quarantine folder.
    pub fn quarantined_files(&self) -> u64 {
        fs::read_dir(&self.quarantine)
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    /// Every block id stored here: the packed ones, then a directory walk (the order is
    /// the file system's).
    pub fn list(&self) -> Result<Vec<BlockId>, ChunkError> {
        let mut ids = self.packs.ids();
        let packed: std::collections::HashSet<BlockId> = ids.iter().copied().collect();
        ids.extend(
            self.layout
                .files()?
                .iter()
                .filter_map(|f| self.layout.block_of(f))
                .filter(|id| !packed.contains(id)),
        );
        Ok(ids)
    }

    /// The packs of small blocks.
    pub fn packs(&self) -> &Packs {
        &self.packs
    }

    fn stripe(&self, id: &BlockId) -> std::sync::MutexGuard<'_, ()> {
        let i = usize::from(id.as_bytes()[31]) % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts blocks and their bytes; warns about files that are not blocks.
    fn scan(&self) -> Result<(u64, u64), ChunkError> {
        let (mut count, mut used) = self.packs.usage();
        for file in self.layout.files()? {
            if self.layout.block_of(&file).is_none() {
                warn!(file = %file.display(), "not a block file; left alone");
                continue;
            }
            let len = fs::metadata(&file)
                .map_err(ChunkError::io("stat", &file))?
                .len();
            count += 1;
            used += len;
        }
        Ok((count, used))
    }
}

/// The bytes of a block's file: a range of a pack, or a file of its own.
pub(crate) struct Located {
    pub(crate) file: Arc<File>,
    /// Where the block file's bytes start in `file`.
    pub(crate) base: u64,
    /// Their length, if known without a `stat` (a pack's record); `None` for a file of
    /// its own.
    len: Option<u64>,
    /// For errors.
    pub(crate) path: PathBuf,
}

impl Located {
    /// Length of the block file.
    pub(crate) fn len(&self) -> Result<u64, ChunkError> {
        match self.len {
            Some(l) => Ok(l),
            None => Ok(self
                .file
                .metadata()
                .map_err(ChunkError::io("stat", &self.path))?
                .len()),
        }
    }

    /// The whole block file, `len` bytes long: a large file of its own around the page
    /// cache (see `direct.rs`), anything else through it.
    pub(crate) fn read_all(&self, len: u64) -> Result<Bytes, ChunkError> {
        let own_file = self.len.is_none();
        if own_file
            && len >= direct::READ_FROM
            && let Some(all) = direct::read_whole(&self.file, &self.path, len as usize)
        {
            return Ok(all);
        }
        self.read_at(0, len as usize).map(Bytes::from)
    }

    /// `n` bytes of the block file from `at` (an `UnexpectedEof` error if it ends first).
    pub(crate) fn read_at(&self, at: u64, n: usize) -> Result<Vec<u8>, ChunkError> {
        packs::read_at(&self.file, self.base + at, n).map_err(ChunkError::io("read", &self.path))
    }
}

/// Removes every file in the temp folder: writes that never reached their rename.
fn clean_tmp(tmp: &Path) -> Result<usize, ChunkError> {
    let mut removed = 0;
    for entry in fs::read_dir(tmp).map_err(ChunkError::io("list", tmp))? {
        let file = entry.map_err(ChunkError::io("list", tmp))?.path();
        fs::remove_file(&file).map_err(ChunkError::io("remove temp file", &file))?;
        removed += 1;
    }
    if removed > 0 {
        sync_dir(tmp)?;
    }
    Ok(removed)
}

/// Creates `dir` and any missing parents, fsync'ing each parent that gained an entry.
fn create_dir_durably(dir: &Path) -> Result<(), ChunkError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(ChunkError::io("create folder", dir)(e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// (total, available) bytes of the filesystem holding `path`.
fn fs_space(path: &Path) -> Result<(u64, u64), ChunkError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ChunkError::Invalid(format!("path {} contains a NUL byte", path.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs fills it in or fails.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(ChunkError::io("statvfs", path)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::unnecessary_cast)]
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    let space = (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize);
    Ok(space)
}

#[cfg(test)]
#[path = "store_fuzz_tests.rs"]
mod fuzz_tests;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
