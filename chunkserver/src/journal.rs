//! The journal of small blocks: one fdatasync makes a small put durable.
//!
//! A block file of its own costs a put three journal commits of the file system (the
//! file's fsync, and the fsyncs of the folders that gained the file and its fan-out
//! folder). With three chunkservers on one disk they queue behind each other. A small
//! block is instead appended to a segment file whose space is already allocated and
//! written, and one fdatasync of that segment (shared by every put appended meanwhile:
//! group commit) makes it durable; its block file is then written and renamed into place
//! without any fsync, and serves reads as before.
//!
//! ```text
//! journal/state   retired generation, last activated generation (u64 LE each), blake3[..8]
//! journal/0, /1   segments: records from offset 0, each
//!                 u32 LE magic, u64 LE generation, u8 kind (1 put, 2 delete),
//!                 u32 LE body length, blake3(head fields ‖ body)[..16], body
//!                 body: the block id (32 bytes), then for a put the block file's bytes
//! ```
//! Segments are used in turn, generation `g` in segment `g % 2`, each from offset 0; a
//! record of another generation, or one whose checksum fails, ends a segment. When the
//! active segment is full the next generation starts in the other one, and a background
//! thread retires the full one: `syncfs` of the blocks' file system makes every block file
//! it holds durable, and the state file says so. At start-up the records of generations not
//! retired are replayed in order: a put whose block file is missing or damaged writes it
//! again, a delete removes it; then `syncfs`, and the state moves on.
//!
//! A delete of a block put in a generation not yet retired appends a delete record (not
//! waited for): a crash before it is durable can bring the block back, as garbage the
//! collector removes again, never the other way round.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use meridian_proto::BlockId;
use tracing::{error, info, warn};

/// Segment length in production.
pub const SEGMENT_LEN: u64 = 64 << 20;
/// Block files up to this length are journaled; larger ones are fsync'd as files.
pub const MAX_JOURNALED: u64 = 512 << 10;
/// A segment's written space grows by this much at a time (zeros, fsync'd once).
const GROW: u64 = 4 << 20;
const MAGIC: u32 = 0x314e_4a4d; // "MJN1"
const HEAD: usize = 4 + 8 + 1 + 4 + 16;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// A block deleted since its journaled put was stored again as a file: keep it.
const KEEP: u8 = 3;

/// What a journal replay found for one block: its last record.
#[derive(Debug)]
pub enum Replayed {
    /// The block was put: the bytes of its file.
    Put(BlockId, Vec<u8>),
    /// The block was deleted after it was put.
    Deleted(BlockId),
    /// The block was deleted, then stored again as a file of its own: left as it is.
    Kept(BlockId),
}

/// Where an appended put stands until its block file is in place.
#[must_use = "a ticket must be placed, or the segment never retires"]
pub struct Ticket {
    journal: Arc<Shared>,
    generation: u64,
    lsn: u64,
}

impl Ticket {
    /// The block file is in place (or failed to be): the segment may retire once durable.
    /// Returns once the record is durable.
    pub fn placed_then_sync(self) -> io::Result<()> {
        let lsn = self.lsn;
        let journal = self.journal.clone();
        drop(self);
        journal.sync_to(lsn)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.journal.lock();
        if let Some(n) = s.inflight.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                s.inflight.remove(&self.generation);
            }
        }
        drop(s);
        self.journal.changed.notify_all();
    }
}

/// The journal of one block store.
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    retirer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// A handle on the blocks' file system, for `syncfs`.
    blocks_fs: File,
    segment_len: u64,
    state: Mutex<State>,
    /// Retirements, placed tickets and stopping.
    changed: Condvar,
    /// Appended bytes (counted over generations) known durable.
    synced: AtomicU64,
    /// Serializes fdatasyncs (the group commit).
    sync_lock: Mutex<()>,
    /// Set after a failed fdatasync or retirement: the journal takes no more puts.
    broken: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    generation: u64,
    lsn: u64,
    deleted: bool,
}

#[derive(Debug)]
struct State {
    generation: u64,
    file: Arc<File>,
    /// Next write offset in the active segment.
    at: u64,
    /// Bytes of the active segment already allocated and written.
    allocated: u64,
    /// Bytes appended since open, over every generation.
    lsn: u64,
    /// Every generation up to this one is retired.
    retired: u64,
    /// Puts appended in a generation whose block file is not yet in place.
    inflight: HashMap<u64, usize>,
    /// Blocks put in generations not yet retired: the generation, the lsn at the end of
    /// the put's record, and whether a delete record followed it.
    pending: HashMap<BlockId, Pending>,
    stop: bool,
}

impl Journal {
    /// Opens the journal in `dir` (creating it), replays what was not retired through
    /// `apply` (which must put the block files right, without fsync), makes that durable
    /// with a `syncfs` of the file system holding `blocks`, and starts a new generation.
    pub fn open(
        dir: &Path,
        blocks: &Path,
        segment_len: u64,
        mut apply: impl FnMut(Replayed) -> io::Result<()>,
    ) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let blocks_fs = File::open(blocks)?;
        let (mut retired, mut activated) = read_state(dir)?;
        let mut generations_found = Vec::new();
        for i in 0..2 {
            if let Some((generation, records)) = read_segment(&dir.join(i.to_string()))? {
                if generation > retired {
                    generations_found.push((generation, records));
                }
                activated = activated.max(generation);
            }
        }
        generations_found.sort_by_key(|(g, _)| *g);
        let mut last: HashMap<BlockId, Replayed> = HashMap::new();
        let mut order = Vec::new();
        let replayed_gens = generations_found.len();
        for (_, records) in generations_found {
            for (kind, id, body) in records {
                if !last.contains_key(&id) {
                    order.push(id);
                }
                let r = match kind {
                    PUT => Replayed::Put(id, body),
                    DELETE => Replayed::Deleted(id),
                    _ => Replayed::Kept(id),
                };
                last.insert(id, r);
            }
        }
        let n = order.len();
        for id in order {
            if let Some(r) = last.remove(&id) {
                apply(r)?;
            }
        }
        syncfs(&blocks_fs)?;
        retired = retired.max(activated);
        let generation = activated + 1;
        write_state(dir, retired, generation)?;
        if replayed_gens > 0 {
            info!(segments = replayed_gens, blocks = n, "journal replayed");
        }
        let file = open_segment(dir, generation)?;
        let allocated = file.metadata()?.len();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            blocks_fs,
            segment_len,
            state: Mutex::new(State {
                generation,
                file: Arc::new(file),
                at: 0,
                allocated,
                lsn: 0,
                retired,
                inflight: HashMap::new(),
                pending: HashMap::new(),
                stop: false,
            }),
            changed: Condvar::new(),
            synced: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            broken: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let retirer = std::thread::Builder::new()
            .name("chunk-journal-retire".into())
            .spawn(move || worker.retire_loop())?;
        Ok(Journal {
            shared,
            retirer: Some(retirer),
        })
    }

    /// Whether a block file of `len` bytes would be journaled (else the caller stores it
    /// the durable way).
    pub fn takes(&self, len: u64) -> bool {
        len <= MAX_JOURNALED
            && HEAD as u64 + 32 + len <= self.shared.segment_len
            && !self.shared.broken.load(Ordering::Relaxed)
    }

    /// Appends a put of block `id` whose file is the concatenation of `file`. The ticket
    /// must be placed once the block file is in place.
    pub fn append_put(&self, id: &BlockId, file: &[&[u8]]) -> io::Result<Ticket> {
        let len: usize = file.iter().map(|p| p.len()).sum();
        if !self.takes(len as u64) {
            return Err(io::Error::other("the journal does not take this block"));
        }
        let (generation, lsn) = self.shared.append(PUT, id, file)?;
        Ok(Ticket {
            journal: self.shared.clone(),
            generation,
            lsn,
        })
    }

    /// Block `id` was deleted: records it if a put of it could still be replayed.
    pub fn note_delete(&self, id: &BlockId) {
        if !self.shared.lock().pending.contains_key(id) {
            return;
        }
        if let Err(e) = self.shared.append(DELETE, id, &[&[]]) {
            warn!(block = %id, error = %e, "journal: a delete was not recorded; a crash may bring the block back for the collector");
        }
    }

    /// An intact file of `id` answers a put as already present: if the journal put that
    /// wrote it may not be durable yet, waits until it is. An error means the caller must
    /// make the file durable itself.
    pub fn settle_present(&self, id: &BlockId) -> io::Result<()> {
        let Some(p) = self.shared.lock().pending.get(id).copied() else {
            return Ok(());
        };
        if self.shared.broken.load(Ordering::Relaxed) {
            return Err(io::Error::other("the journal is broken"));
        }
        self.shared.sync_to(p.lsn)
    }

    /// Block `id` is being stored as a file of its own (with its fsyncs), under its lock:
    /// if a replay would delete it (a delete record follows its journaled put), records
    /// that it stays, durably. An error refuses the put.
    pub fn note_file_put(&self, id: &BlockId) -> io::Result<()> {
        if !self
            .shared
            .lock()
            .pending
            .get(id)
            .is_some_and(|p| p.deleted)
        {
            return Ok(());
        }
        if self.shared.broken.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "the journal is broken and holds a delete of this block; store it elsewhere",
            ));
        }
        let (_, lsn) = self.shared.append(KEEP, id, &[&[]])?;
        self.shared.sync_to(lsn)
    }

    /// The generation being written and the last one retired (for tests and status).
    pub fn generations(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.generation, s.retired)
    }

    /// Waits until every generation before the active one is retired.
    pub fn wait_retired(&self) {
        let mut s = self.shared.lock();
        while s.retired + 1 < s.generation && !self.shared.broken.load(Ordering::Relaxed) {
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.retirer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record; returns its generation and the lsn at its end.
    fn append(&self, kind: u8, id: &BlockId, file: &[&[u8]]) -> io::Result<(u64, u64)> {
        let len = (HEAD + 32 + file.iter().map(|p| p.len()).sum::<usize>()) as u64;
        let mut s = self.lock();
        if s.at + len > self.segment_len {
            s = self.next_generation(s)?;
        }
        while s.at + len > s.allocated {
            let zeros = vec![0u8; GROW.min(self.segment_len - s.allocated) as usize];
            s.file.write_all_at(&zeros, s.allocated)?;
            s.file.sync_all()?;
            s.allocated += zeros.len() as u64;
        }
        let (at, generation) = (s.at, s.generation);
        let head = encode_head(generation, kind, id, file);
        s.file.write_all_at(&head, at)?;
        let mut pos = at + head.len() as u64;
        for part in file {
            s.file.write_all_at(part, pos)?;
            pos += part.len() as u64;
        }
        s.at += len;
        s.lsn += len;
        let lsn = s.lsn;
        match kind {
            PUT => {
                *s.inflight.entry(generation).or_default() += 1;
                s.pending.insert(
                    *id,
                    Pending {
                        generation,
                        lsn,
                        deleted: false,
                    },
                );
            }
            _ => {
                // Kept until this record's generation retires: a replay reads it till then.
                if let Some(p) = s.pending.get_mut(id) {
                    p.deleted = kind == DELETE;
                    p.generation = generation;
                }
            }
        }
        Ok((generation, lsn))
    }

    /// Closes the full active segment and starts the next generation in the other one,
    /// once the generation that last used it is retired.
    fn next_generation<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
    ) -> io::Result<MutexGuard<'a, State>> {
        while s.retired + 1 < s.generation {
            if self.broken.load(Ordering::Relaxed) {
                return Err(io::Error::other("journal: retiring a segment failed"));
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.file.sync_data()?;
        self.synced.fetch_max(s.lsn, Ordering::Relaxed);
        let generation = s.generation + 1;
        write_state(&self.dir, s.retired, generation)?;
        let file = open_segment(&self.dir, generation)?;
        s.allocated = file.metadata()?.len();
        s.file = Arc::new(file);
        s.generation = generation;
        s.at = 0;
        self.changed.notify_all();
        Ok(s)
    }

    /// Returns once everything appended up to `lsn` is durable: one fdatasync covers every
    /// append written before it started.
    fn sync_to(&self, lsn: u64) -> io::Result<()> {
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let _one = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let (file, upto) = {
            let s = self.lock();
            (s.file.clone(), s.lsn)
        };
        if let Err(e) = file.sync_data() {
            // After a failed fdatasync the page cache no longer says what is on disk.
            self.broken.store(true, Ordering::Relaxed);
            error!(error = %e, "journal: fdatasync failed; small blocks are fsync'd as files from now on");
            return Err(e);
        }
        self.synced.fetch_max(upto, Ordering::Release);
        Ok(())
    }

    /// Retires each full generation once its block files are all in place.
    fn retire_loop(&self) {
        loop {
            let mut s = self.lock();
            let target = loop {
                if s.stop {
                    return;
                }
                let target = s.retired + 1;
                if target < s.generation && !s.inflight.contains_key(&target) {
                    break target;
                }
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            };
            drop(s);
            let result = syncfs(&self.blocks_fs).and_then(|()| {
                let s = self.lock();
                write_state(&self.dir, target, s.generation)
            });
            let mut s = self.lock();
            match result {
                Ok(()) => {
                    s.retired = target;
                    s.pending.retain(|_, p| p.generation > target);
                }
                Err(e) => {
                    error!(error = %e, generation = target, "journal: retiring a segment failed; small blocks are fsync'd as files from now on");
                    self.broken.store(true, Ordering::Relaxed);
                    s.stop = true;
                }
            }
            drop(s);
            self.changed.notify_all();
        }
    }
}

fn encode_head(generation: u64, kind: u8, id: &BlockId, file: &[&[u8]]) -> Vec<u8> {
    let body_len = (32 + file.iter().map(|p| p.len()).sum::<usize>()) as u32;
    let mut head = Vec::with_capacity(HEAD + 32);
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&generation.to_le_bytes());
    head.push(kind);
    head.extend_from_slice(&body_len.to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&head);
    h.update(id.as_bytes());
    for part in file {
        h.update(part);
    }
    head.extend_from_slice(&h.finalize().as_bytes()[..16]);
    head.extend_from_slice(id.as_bytes());
    head
}

type Record = (u8, BlockId, Vec<u8>);

/// The generation of the segment at `path` and its valid records, or `None` if it is
/// absent or holds none.
fn read_segment(path: &Path) -> io::Result<Option<(u64, Vec<Record>)>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut at = 0usize;
    let mut generation = None;
    let mut records = Vec::new();
    while let Some((g, kind, id, body, len)) = next_record(&bytes[at..]) {
        if *generation.get_or_insert(g) != g {
            break;
        }
        records.push((kind, id, body.to_vec()));
        at += len;
    }
    Ok(generation.map(|g| (g, records)))
}

/// The record at the start of `bytes`: generation, kind, block id, the rest of the body,
/// and the record's whole length; `None` at zeros, a torn or damaged record, or the end.
fn next_record(bytes: &[u8]) -> Option<(u64, u8, BlockId, &[u8], usize)> {
    let head = bytes.get(..HEAD)?;
    if u32::from_le_bytes(head[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let kind = head[12];
    let body_len = u32::from_le_bytes(head[13..17].try_into().ok()?) as usize;
    if !matches!(kind, PUT | DELETE | KEEP) || body_len < 32 {
        return None;
    }
    let body = bytes.get(HEAD..HEAD + body_len)?;
    let mut h = blake3::Hasher::new();
    h.update(&head[..17]);
    h.update(body);
    if h.finalize().as_bytes()[..16] != head[17..HEAD] {
        return None;
    }
    let id = BlockId::from_slice(&body[..32]).ok()?;
    Some((generation, kind, id, &body[32..], HEAD + body_len))
}

fn open_segment(dir: &Path, generation: u64) -> io::Result<File> {
    let path = dir.join((generation % 2).to_string());
    let existed = path.exists();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if !existed {
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

/// (retired, last activated) generations; zeros if the journal is new.
fn read_state(dir: &Path) -> io::Result<(u64, u64)> {
    let bytes = match fs::read(dir.join("state")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "journal state file is damaged");
    if bytes.len() != 24 || blake3::hash(&bytes[..16]).as_bytes()[..8] != bytes[16..] {
        return Err(bad());
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(8)))
}

/// Replaces the state file durably.
fn write_state(dir: &Path, retired: u64, activated: u64) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(&retired.to_le_bytes());
    bytes.extend_from_slice(&activated.to_le_bytes());
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(&sum.as_bytes()[..8]);
    let tmp = dir.join("state.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("state"))?;
    File::open(dir)?.sync_all()
}

/// Writes back and waits for everything dirty on the file system holding `f`.
fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
