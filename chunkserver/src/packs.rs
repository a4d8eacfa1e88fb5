//! Packs: small blocks kept without a file each (docs/adr/0017-small-blocks-in-packs.md).
//!
//! A block file of at most [`MAX_PACKED`] bytes is appended to the active pack, a file
//! whose space is already allocated and written, and one fdatasync of it (shared by every
//! put appended meanwhile: group commit) makes the put durable. The block stays there: its
//! record's place is its address, kept in an index in memory. A small put creates no file,
//! inode or directory entry, and renames nothing.
//!
//! ```text
//! packs/<generation>   records from offset 0, each
//!                      u32 LE magic, u64 LE generation, u8 kind (1 live, 2 dead),
//!                      u32 LE body length, blake3(magic ‖ generation ‖ length ‖ body)[..16],
//!                      body: the block id (32 bytes), then the block file's bytes
//! ```
//! - A pack takes appends until the next record would not fit; it is then fdatasync'd
//!   (sealed) and the next generation starts in a new file. A start fdatasyncs the packs
//!   it finds, never appends to the one it found last, and checks that pack's records:
//!   the head of a torn append after the last record is wiped, and a range skipped to
//!   reach a whole record is covered by dead records, so that later starts, reading
//!   heads only, find the same records.
//! - A delete turns its record's kind byte to dead in place (the checksum leaves the kind
//!   out, so the record still reads as a record) and fdatasyncs the pack before it answers.
//! - A sealed pack whose live records fall under half of its bytes is compacted by a
//!   background thread: its live records are appended to the active pack and made
//!   durable, the index moves to the copies (a copy of a block deleted meanwhile is marked
//!   dead), and the old pack is removed. A crash in between leaves two copies of some
//!   blocks: the start keeps the newer and marks the older dead.
//! - At start the index is rebuilt from the records in pack and offset order: a live
//!   record replaces an older live copy of its block (marked dead), a dead one ends it.
//!   Only the heads of sealed packs are read; a block's bytes are verified against its id
//!   whenever they are read, as a block file's are.

use meridian_proto::physical_ms;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use meridian_proto::BlockId;
use tracing::{error, info, warn};

#[path = "pack_records.rs"]
mod records;
use records::{DEAD, HEAD, KIND_AT, record_len, scan};
pub use records::{remove_offline, stored_offline};

/// Pack length in production.
pub const PACK_LEN: u64 = 64 << 20;
/// Block files up to this length are packed; larger ones are fsync'd as files.
pub const MAX_PACKED: u64 = 512 << 10;
/// A pack's written space grows by this much at a time (zeros, fsync'd once), so that an
/// append's fdatasync has no file size to record.
const GROW: u64 = 4 << 20;

/// Where a packed block's file bytes are.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The pack holding it (kept open by readers even if compaction removes it).
    pub file: Arc<File>,
    /// Offset of the block file's first byte in the pack.
    pub at: u64,
    /// Length of the block file.
    pub len: u64,
    /// When it was put or last uploaded again (ms since the epoch; a start counts as now).
    pub stored_ms: u64,
    /// Appended bytes up to the end of its record: durable once synced to.
    pub lsn: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    generation: u64,
    /// Offset of the record's head in its pack.
    record: u64,
    /// Length of the block file.
    len: u64,
    lsn: u64,
    stored_ms: u64,
}

impl Entry {
    fn record_len(&self) -> u64 {
        record_len(self.len)
    }
}

#[derive(Debug)]
struct Pack {
    file: Arc<File>,
    /// Bytes of its live records.
    live: u64,
    /// End of its last record.
    end: u64,
}

#[derive(Debug)]
struct State {
    index: HashMap<BlockId, Entry>,
    packs: BTreeMap<u64, Pack>,
    /// The generation appended to.
    active: u64,
    /// Bytes of the active pack already allocated and written.
    allocated: u64,
    /// Bytes appended since open, over every pack.
    lsn: u64,
    /// Sealed packs less than half live, to compact.
    sparse: BTreeSet<u64>,
    /// Copies a compaction appended and has not yet moved the index to: a delete marks
    /// them dead too.
    copying: HashMap<BlockId, (u64, u64)>,
    stop: bool,
}

/// The packs of one block store.
#[derive(Debug)]
pub struct Packs {
    shared: Arc<Shared>,
    compactor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    pack_len: u64,
    state: Mutex<State>,
    /// New sparse packs, and stopping.
    changed: Condvar,
    /// Appended bytes (counted over packs) known durable.
    synced: AtomicU64,
    /// Serializes fdatasyncs of the active pack (the group commit).
    sync_lock: Mutex<()>,
    /// Set after a failed fdatasync: the packs take no more puts.
    broken: AtomicBool,
    /// One compaction at a time.
    compacting: Mutex<()>,
}

impl Packs {
    /// Opens the packs in `dir` (which exists), rebuilds the index, and starts a new pack
    /// of at most `pack_len` bytes.
    pub fn open(dir: &Path, pack_len: u64) -> io::Result<Packs> {
        let found = list(dir)?;
        if pack_len > 0 && record_len(0) > pack_len {
            return Err(io::Error::other(format!(
                "a pack of {pack_len} bytes holds no record"
            )));
        }
        let last = found.last().copied();
        let mut packs = BTreeMap::new();
        let mut index: HashMap<BlockId, Entry> = HashMap::new();
        let mut dead: Vec<(u64, u64)> = Vec::new();
        let now = physical_ms();
        for &generation in &found {
            let path = pack_path(dir, generation);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            // What a killed process left in the page cache is what the disk holds from
            // now on, before anything is decided from it.
            file.sync_data()?;
            let newest = Some(generation) == last;
            let (mut records, mut end, skipped) = scan(&file, generation, newest)?;
            if newest {
                (records, end) = settle_newest(&file, generation, records, end, &skipped)?;
            }
            let older = records::apply(&mut index, &records, |r| Entry {
                generation,
                record: r.record,
                len: r.len,
                lsn: 0,
                stored_ms: now,
            });
            dead.extend(older.iter().map(|e| (e.generation, e.record)));
            packs.insert(
                generation,
                Pack {
                    file: Arc::new(file),
                    live: 0,
                    end,
                },
            );
        }
        // An older copy of a block (left by a compaction a crash cut short) is marked dead,
        // so that nothing can bring it back once the newer one is gone.
        let mut touched = BTreeSet::new();
        for (generation, record) in &dead {
            let pack = &packs[generation];
            pack.file.write_all_at(&[DEAD], record + KIND_AT)?;
            touched.insert(*generation);
        }
        for generation in &touched {
            packs[generation].file.sync_data()?;
        }
        for e in index.values() {
            if let Some(p) = packs.get_mut(&e.generation) {
                p.live += e.record_len();
            }
        }
        let empty: Vec<u64> = packs
            .iter()
            .filter(|(_, p)| p.live == 0)
            .map(|(g, _)| *g)
            .collect();
        for g in &empty {
            packs.remove(g);
            fs::remove_file(pack_path(dir, *g))?;
        }
        let active = last.unwrap_or(0) + 1;
        let file = create_pack(dir, active)?;
        packs.insert(
            active,
            Pack {
                file: Arc::new(file),
                live: 0,
                end: 0,
            },
        );
        let sparse = packs
            .iter()
            .filter(|(g, p)| **g != active && p.live * 2 < p.end)
            .map(|(g, _)| *g)
            .collect();
        if !index.is_empty() || !found.is_empty() {
            info!(
                packs = packs.len() - 1,
                blocks = index.len(),
                older_copies_dropped = dead.len(),
                empty_packs_removed = empty.len(),
                "packs open"
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            pack_len,
            state: Mutex::new(State {
                index,
                packs,
                active,
                allocated: 0,
                lsn: 0,
                sparse,
                copying: HashMap::new(),
                stop: false,
            }),
            changed: Condvar::new(),
            synced: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            broken: AtomicBool::new(false),
            compacting: Mutex::new(()),
        });
        let worker = shared.clone();
        let compactor = std::thread::Builder::new()
            .name("chunk-pack-compact".into())
            .spawn(move || worker.compact_loop())?;
        Ok(Packs {
            shared,
            compactor: Some(compactor),
        })
    }

    /// Whether a block file of `len` bytes would be packed (else the caller stores it as
    /// a file, the durable way).
    pub fn takes(&self, len: u64) -> bool {
        len <= MAX_PACKED
            && record_len(len) <= self.shared.pack_len
            && !self.shared.broken.load(Ordering::Relaxed)
    }

    /// Where block `id` is packed, if it is.
    pub fn get(&self, id: &BlockId) -> Option<Packed> {
        let s = self.shared.lock();
        let e = s.index.get(id)?;
        Some(Packed {
            file: s.packs.get(&e.generation)?.file.clone(),
            at: e.record + HEAD as u64 + 32,
            len: e.len,
            stored_ms: e.stored_ms,
            lsn: e.lsn,
        })
    }

    /// Whether block `id` is packed.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.shared.lock().index.contains_key(id)
    }

    /// Block `id` was uploaded again: its age for garbage collection starts now.
    pub fn touch(&self, id: &BlockId) {
        if let Some(e) = self.shared.lock().index.get_mut(id) {
            e.stored_ms = physical_ms();
        }
    }

    /// Appends block `id`, whose file is the concatenation of `file`, and indexes it. The
    /// caller holds the block's lock and knows it is not packed. Returns the lsn that
    /// [`sync_to`](Self::sync_to) makes durable; until then it reads from the page cache.
    pub fn put(&self, id: &BlockId, file: &[&[u8]]) -> io::Result<u64> {
        let len: u64 = file.iter().map(|p| p.len() as u64).sum();
        if !self.takes(len) {
            return Err(io::Error::other("the packs do not take this block"));
        }
        let mut s = self.shared.lock();
        let (generation, record, lsn) = self.shared.append(&mut s, id, file)?;
        s.index.insert(
            *id,
            Entry {
                generation,
                record,
                len,
                lsn,
                stored_ms: physical_ms(),
            },
        );
        if let Some(p) = s.packs.get_mut(&generation) {
            p.live += record_len(len);
        }
        Ok(lsn)
    }

    /// Returns once everything appended up to `lsn` is durable.
    pub fn sync_to(&self, lsn: u64) -> io::Result<()> {
        self.shared.sync_to(lsn)
    }

    /// Drops the entry the put that returned `lsn` made for block `id`, after its
    /// fdatasync failed (the caller stores the block another way); its record may or may
    /// not have reached the disk. Returns whether it was still there.
    pub fn forget(&self, id: &BlockId, lsn: u64) -> bool {
        let mut s = self.shared.lock();
        match s.index.get(id).copied() {
            Some(e) if e.lsn == lsn => {
                s.index.remove(id);
                self.shared.lost_live(&mut s, e.generation, e.record_len());
                true
            }
            _ => false,
        }
    }

    /// Marks block `id`'s record dead (and a compaction's copy of it under way), durably.
    /// Returns the length of its file if it was packed (it is no longer indexed then), and
    /// whether the mark is durable: a delete may answer only if it is. The caller holds the
    /// block's lock.
    pub fn remove(&self, id: &BlockId) -> (Option<u64>, io::Result<()>) {
        let (len, files) = {
            let mut s = self.shared.lock();
            let Some(e) = s.index.get(id).copied() else {
                return (None, Ok(()));
            };
            let mut marks = vec![(e.generation, e.record)];
            marks.extend(s.copying.remove(id));
            let mut files = Vec::new();
            for (g, record) in marks {
                let Some(file) = s.packs.get(&g).map(|p| p.file.clone()) else {
                    continue; // a copy in a pack compacted away since
                };
                if let Err(e) = file.write_all_at(&[DEAD], record + KIND_AT) {
                    return (None, Err(e));
                }
                files.push(file);
            }
            s.index.remove(id);
            self.shared.lost_live(&mut s, e.generation, e.record_len());
            (e.len, files)
        };
        for f in files {
            if let Err(e) = f.sync_data() {
                return (Some(len), Err(self.shared.failed(e)));
            }
        }
        (Some(len), Ok(()))
    }

    /// Every packed block.
    pub fn ids(&self) -> Vec<BlockId> {
        self.shared.lock().index.keys().copied().collect()
    }

    /// Packed blocks and the bytes of their files.
    pub fn usage(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.index.len() as u64, s.index.values().map(|e| e.len).sum())
    }

    /// The generations of the packs on disk, the active one last (for tests and status).
    pub fn generations(&self) -> Vec<u64> {
        self.shared.lock().packs.keys().copied().collect()
    }

    /// Compacts every sparse pack now, in this thread (the background thread does the
    /// same on its own).
    pub fn compact_now(&self) -> io::Result<()> {
        loop {
            let next = self.shared.lock().sparse.first().copied();
            match next {
                Some(g) => self.shared.compact(g)?,
                None => return Ok(()),
            }
        }
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.compactor.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one live record to the active pack (sealing it first if the record does not
    /// fit); returns the record's generation, offset and the lsn at its end.
    fn append(&self, s: &mut State, id: &BlockId, file: &[&[u8]]) -> io::Result<(u64, u64, u64)> {
        let file_len: u64 = file.iter().map(|p| p.len() as u64).sum();
        let len = record_len(file_len);
        if s.packs[&s.active].end + len > self.pack_len {
            self.seal(s)?;
        }
        let generation = s.active;
        let pack = s
            .packs
            .get_mut(&generation)
            .expect("the active pack is open");
        let at = pack.end;
        while at + len > s.allocated {
            let zeros = GROW.min(self.pack_len - s.allocated);
            meridian_proto::disk::write_zeros(&pack.file, s.allocated, zeros)?;
            pack.file.sync_all().map_err(|e| self.failed(e))?;
            s.allocated += zeros;
        }
        pack.file
            .write_all_at(&records::encode(generation, id, file)?, at)?;
        pack.end += len;
        s.lsn += len;
        Ok((generation, at, s.lsn))
    }

    /// fdatasyncs the full active pack and starts the next generation in a new file.
    fn seal(&self, s: &mut State) -> io::Result<()> {
        let old = s.active;
        if let Err(e) = s.packs[&old].file.sync_data() {
            return Err(self.failed(e));
        }
        self.synced.fetch_max(s.lsn, Ordering::Release);
        let generation = old + 1;
        let file = create_pack(&self.dir, generation)?;
        s.packs.insert(
            generation,
            Pack {
                file: Arc::new(file),
                live: 0,
                end: 0,
            },
        );
        s.active = generation;
        s.allocated = 0;
        self.lost_live(s, old, 0);
        Ok(())
    }

    /// A sealed pack lost `n` live bytes: queued for compaction once under half live.
    fn lost_live(&self, s: &mut State, generation: u64, n: u64) {
        let active = s.active;
        let Some(p) = s.packs.get_mut(&generation) else {
            return;
        };
        p.live -= n;
        if generation != active && p.live * 2 < p.end && s.sparse.insert(generation) {
            self.changed.notify_all();
        }
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
        // A later fdatasync does not report an earlier one's failure again: what was
        // appended before it may be lost.
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "packs: an fdatasync failed; what was appended since is not durable",
            ));
        }
        let (file, upto) = {
            let s = self.lock();
            (s.packs[&s.active].file.clone(), s.lsn)
        };
        if let Err(e) = file.sync_data() {
            return Err(self.failed(e));
        }
        self.synced.fetch_max(upto, Ordering::Release);
        Ok(())
    }

    /// A write-back of a pack failed: after it the page cache no longer says what is on
    /// disk, so the packs take no more puts and nothing appended and not yet known durable
    /// ever will be.
    fn failed(&self, e: io::Error) -> io::Error {
        if !self.broken.swap(true, Ordering::AcqRel) {
            error!(error = %e, "packs: fdatasync failed; small blocks are fsync'd as files from now on");
        }
        e
    }

    fn compact_loop(&self) {
        loop {
            let generation = {
                let mut s = self.lock();
                loop {
                    if s.stop {
                        return;
                    }
                    if let Some(g) = s.sparse.first().copied() {
                        break g;
                    }
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            if let Err(e) = self.compact(generation) {
                // Left as it is (its blocks stay readable); tried again after the next
                // delete from it, or at the next start.
                warn!(pack = generation, error = %e, "packs: compaction failed");
                self.lock().sparse.remove(&generation);
            }
        }
    }

    /// Moves the live records of sealed pack `generation` to the active pack, then
    /// removes it.
    fn compact(&self, generation: u64) -> io::Result<()> {
        let _one = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let (file, end, moving) = {
            let mut s = self.lock();
            if generation == s.active {
                s.sparse.remove(&generation);
                return Ok(());
            }
            let Some(p) = s.packs.get(&generation) else {
                s.sparse.remove(&generation);
                return Ok(());
            };
            if p.live * 2 >= p.end {
                // Queued when it was sealed holding a compaction's copies, not yet counted
                // live then: it is not sparse.
                s.sparse.remove(&generation);
                return Ok(());
            }
            let (file, end) = (p.file.clone(), p.end);
            let moving: Vec<(BlockId, Entry)> = s
                .index
                .iter()
                .filter(|(_, e)| e.generation == generation)
                .map(|(id, e)| (*id, *e))
                .collect();
            let fits = |e: &Entry| record_len(e.len) <= self.pack_len;
            if !moving.is_empty()
                && (self.broken.load(Ordering::Acquire) || !moving.iter().all(|(_, e)| fits(e)))
            {
                // No packs to copy into (`--pack-mib 0`, smaller packs than before, or an
                // fdatasync failed): the pack stays as it is.
                s.sparse.remove(&generation);
                return Ok(());
            }
            (file, end, moving)
        };
        let mut copies = Vec::with_capacity(moving.len());
        let mut upto = 0;
        for (id, old) in &moving {
            // Copied as it is: the block is verified against its id whenever it is read.
            let bytes = read_at(&file, old.record + HEAD as u64 + 32, old.len as usize)?;
            let mut s = self.lock();
            if s.stop {
                // The copies made stay older-newer pairs the next start resolves; a delete
                // meanwhile marks both dead (`copying`).
                return Ok(());
            }
            let still = s.index.get(id).map(|e| (e.generation, e.record));
            if still != Some((old.generation, old.record)) {
                continue; // deleted since, or stored again elsewhere
            }
            let (g, record, lsn) = self.append(&mut s, id, &[&bytes])?;
            s.copying.insert(*id, (g, record));
            copies.push((*id, *old, g, record, lsn));
            upto = lsn;
        }
        self.sync_to(upto)?;
        let mut to_sync: BTreeMap<u64, Arc<File>> = BTreeMap::new();
        {
            let mut s = self.lock();
            for (id, old, g, record, lsn) in copies {
                if s.copying.remove(&id) != Some((g, record)) {
                    continue; // deleted meanwhile: the delete marked this copy dead too
                }
                let current = s.index.get(&id).copied();
                if let Some(e) =
                    current.filter(|e| (e.generation, e.record) == (old.generation, old.record))
                {
                    s.index.insert(
                        id,
                        Entry {
                            generation: g,
                            record,
                            lsn,
                            ..e
                        },
                    );
                    if let Some(p) = s.packs.get_mut(&g) {
                        p.live += old.record_len();
                    }
                } else if let Some(p) = s.packs.get(&g) {
                    // Stored again elsewhere while it was copied.
                    let f = p.file.clone();
                    f.write_all_at(&[DEAD], record + KIND_AT)?;
                    to_sync.insert(g, f);
                }
            }
            s.packs.remove(&generation);
            s.sparse.remove(&generation);
        }
        let removed = (|| {
            for f in to_sync.values() {
                f.sync_data().map_err(|e| self.failed(e))?;
            }
            fs::remove_file(pack_path(&self.dir, generation))?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = removed {
            // Kept in the packs (nothing live in it) and tried again: a pack file left
            // behind could bring back blocks whose newer copies are later deleted and
            // compacted away.
            let mut s = self.lock();
            s.packs.insert(generation, Pack { file, live: 0, end });
            s.sparse.insert(generation);
            return Err(e);
        }
        info!(
            pack = generation,
            blocks_moved = moving.len(),
            "packs: pack compacted"
        );
        Ok(())
    }
}

/// Makes what a start found in the newest pack `file` read the same at every later start,
/// heads only: the head of a torn append after the last record is wiped, and each range
/// skipped to reach a whole record is covered by dead records (or, too short for one,
/// ends the pack there, the records after it dropped). Returns the records kept and the
/// pack's end.
fn settle_newest(
    file: &File,
    generation: u64,
    mut records: Vec<records::Found>,
    mut end: u64,
    skipped: &[(u64, u64)],
) -> io::Result<(Vec<records::Found>, u64)> {
    let mut wrote = false;
    for &(start, next) in skipped {
        let gap = read_at(file, start, (next - start) as usize)?;
        match records::fillers(generation, start, &gap) {
            Some(heads) => {
                for (at, head) in heads {
                    file.write_all_at(&head, at)?;
                }
                wrote = true;
            }
            None => {
                warn!(
                    generation,
                    at = start,
                    "packs: a damaged range too short to step over ends the pack; the records after it are dropped"
                );
                records.retain(|r| r.record < start);
                end = start;
                break;
            }
        }
    }
    let file_len = file.metadata()?.len();
    let wipe = ((HEAD + 32) as u64).min(file_len.saturating_sub(end)) as usize;
    if wipe > 0 && read_at(file, end, wipe)?.iter().any(|&b| b != 0) {
        // Whatever a torn append left after the last whole record no longer reads as a
        // record.
        warn!(
            generation,
            at = end,
            "packs: a torn append ends the last pack; wiped"
        );
        file.write_all_at(&vec![0u8; wipe], end)?;
        wrote = true;
    }
    if wrote {
        file.sync_data()?;
    }
    Ok((records, end))
}

/// The generations of the packs in `dir`, in order.
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_str();
        match name.and_then(|n| n.parse::<u64>().ok()) {
            // Only the name a pack is given ("7", not "07" or "+7").
            Some(g) if g > 0 && name == Some(g.to_string().as_str()) => out.push(g),
            _ => warn!(file = %entry.path().display(), "not a pack; left alone"),
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn pack_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(generation.to_string())
}

/// Creates the (empty) file of pack `generation`, durably.
fn create_pack(dir: &Path, generation: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(pack_path(dir, generation))?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// `n` bytes of `f` from `at` (`UnexpectedEof` if the file ends first), read into memory
/// that is not zeroed first.
pub(crate) fn read_at(f: &File, at: u64, n: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(n);
    let mut done = 0usize;
    while done < n {
        // SAFETY: the destination is the vector's spare capacity, `n - done` bytes long
        // from `done`; pread writes at most that many bytes there, and only the bytes it
        // reports are counted as initialised below.
        let rc = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                n - done,
                (at + done as u64) as libc::off_t,
            )
        };
        match rc {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            r => {
                done += r as usize;
                // SAFETY: pread initialised the bytes up to `done`.
                unsafe { buf.set_len(done) };
            }
        }
    }
    Ok(buf)
}

#[cfg(test)]
#[path = "packs_tests.rs"]
pub(crate) mod tests;
