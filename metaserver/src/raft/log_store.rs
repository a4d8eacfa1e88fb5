//! The Raft log in one append-only file, and the vote beside it.
//!
//! ```text
//! log file: records, each
//!   u32 LE   body length
//!   8 bytes  the first 8 bytes of blake3(body)
//!   body     a kind byte, then JSON: 1 = an entry, 2 = "drop entries after" (a log id or
//!            null), 3 = "purged up to" (a log id), 4 = "committed up to" (a log id)
//! vote file: the vote as JSON, replaced atomically (temp file, fsync, rename, fsync dir)
//! ```
//! The file's space ahead of the last record is written with zeros beforehand (a length
//! of zero ends the records): an append overwrites space the file system has already
//! allocated and recorded, so its fdatasync writes the data alone, with no journal commit
//! of the file system (138 against 381 µs for 4 KiB on this project's test host). The
//! next stretch is zeroed once little is left.
//! An append is one write; a flusher thread (`log_store_flusher.rs`) then runs one
//! fdatasync for every append written meanwhile (group commit) and only then reports them
//! flushed, in order, so Raft counts this member's copy once it is durable while the
//! leader replicates in parallel.
//! Entries another member leads are synced where they are appended instead: a follower
//! has nothing to overlap with its fdatasync, and the flusher's two thread hand-offs sat
//! on every commit's path (its answer is what the leader waits for). Except on a spare
//! member (`raft/spare.rs`): a follower the commit does not wait for first, whose
//! appends the flusher gathers for a while and syncs together, so that its fdatasyncs
//! leave the disk to the copies a commit waits for (it still answers only once they are
//! durable).
//! The live entries are known by where their records are; the most recent of them
//! ([`HELD_BYTES`] of records) are also held decoded, which is what replication reads, and
//! older ones are read back from the file when asked for (a follower far behind). The log
//! between two snapshots grows with the namespace (up to half a snapshot, or 256 MiB), and
//! held whole it grew a member's memory with it until the next snapshot. On open the file
//! is replayed as it is read; a torn or damaged record at the end (a crash mid-append,
//! before the append was acknowledged) is cut off there. The file is rewritten with only
//! the live entries when purged records make up most of it.
//!
//! A log written by earlier versions in `log.redb` is imported on first open.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::vote::RaftLeaderId;

use super::encoded::Encoded;
use super::notices::{Noticed, Notices, client_of, place};
use super::{TypeConfig, io_err};

#[path = "log_store_flusher.rs"]
mod flusher;
#[path = "log_store_records.rs"]
mod records;
#[path = "log_store_syncs.rs"]
mod syncs;
pub use flusher::AheadHook;
use flusher::{Flushed, flush_loop};
use records::{
    COMMITTED, ENTRY, PURGE, TRUNCATE, entry_body, entry_record, read_entry, record, replay_file,
};
use syncs::Syncs;

/// The file is rewritten when it holds this much more than its live entries.
const REWRITE_SLACK: u64 = 64 << 20;
/// Zeroed space ahead of the records grows by this much at a time, once less than half
/// of it is left.
const GROW: u64 = 2 << 20;
/// The most recent entries' records, in bytes, whose entries are held decoded.
const HELD_BYTES: u64 = 32 << 20;

/// A live entry: its log id, where its record is in the file, and the entry itself while
/// it is among the most recent.
#[derive(Debug)]
struct Slot {
    log_id: LogIdOf<TypeConfig>,
    /// Where the record starts in the file, and its length.
    at: u64,
    len: u64,
    entry: Option<EntryOf<TypeConfig>>,
}

/// The log store (and, cloned, its reader).
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Write handle (shared, so the fdatasync runs without the lock).
    file: Arc<File>,
    /// To the flusher thread.
    flusher: Option<mpsc::Sender<Flushed>>,
    /// Items sent to the flusher it has not completed yet.
    queued: Arc<AtomicUsize>,
    /// This member's id, once known: entries another member leads are synced in place.
    member: Option<u64>,
    /// Whether this member is a spare follower (`raft/spare.rs`) now.
    spare: bool,
    /// How long a spare follower's flusher gathers appends before it syncs them (zero:
    /// a spare syncs in place as any follower).
    spare_gather: Duration,
    /// The log's fdatasyncs (the flusher's and those in place), counted and timed.
    syncs: Arc<Syncs>,
    /// Where the entries this member appends as their leader go, to apply ahead of their
    /// commit (`raft/applier.rs`).
    ahead: Option<AheadHook>,
    /// The clients told which of their changes' entries are durable here
    /// (`raft/notices.rs`).
    notices: Option<Arc<Notices>>,
    /// Entries' JSON by log id: what an append to a follower was spliced from (this
    /// member leads), or what it arrived as (another does).
    encoded: Arc<Encoded>,
    /// Where the next record goes: the end of the records.
    file_len: u64,
    /// The file's length: zeros from `file_len` to here.
    zeroed: u64,
    /// The file is rewritten once it holds this much more than twice its live entries.
    rewrite_slack: u64,
    /// Zeroed space grows by this much at a time ([`GROW`]; smaller in tests).
    grow: u64,
    /// Live entries and the bytes of their records.
    entries: BTreeMap<u64, Slot>,
    live_bytes: u64,
    /// The entries from this index on are held decoded (all of them: the held ones are
    /// the latest), and their records' bytes.
    held_from: u64,
    held_bytes: u64,
    /// At most this many bytes of records are held decoded ([`HELD_BYTES`]; less in tests).
    held_limit: u64,
    purged: Option<LogIdOf<TypeConfig>>,
    /// The last committed log id this member learnt (written without fsync).
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens or creates the log in folder `dir` (importing `legacy`, a redb log of an
    /// earlier version, if it exists and the folder does not).
    pub fn open(dir: &Path, legacy: Option<&Path>) -> io::Result<Self> {
        if !dir.exists() {
            let tmp = dir.with_extension("new");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)?;
            File::create(tmp.join("log"))?.sync_all()?;
            let mut imported = None;
            if let Some(old) = legacy.filter(|p| p.exists()) {
                let (vote, purged, entries) = legacy_redb::read(old)?;
                let mut f = OpenOptions::new().append(true).open(tmp.join("log"))?;
                if let Some(p) = purged {
                    f.write_all(&record(PURGE, &p)?)?;
                }
                for e in &entries {
                    f.write_all(&record(ENTRY, e)?)?;
                }
                f.sync_all()?;
                if let Some(v) = vote {
                    write_vote(&tmp, &v)?;
                }
                imported = Some(old.to_path_buf());
            }
            sync_dir(&tmp)?;
            fs::rename(&tmp, dir)?;
            sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
            if let Some(old) = imported {
                fs::rename(&old, old.with_extension("redb.imported"))?;
            }
        }
        let vote = match fs::read(dir.join("vote")) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(io_err)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let path = dir.join("log");
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            file: Arc::new(OpenOptions::new().read(true).write(true).open(&path)?),
            flusher: None,
            queued: Arc::default(),
            member: None,
            spare: false,
            spare_gather: Duration::ZERO,
            syncs: Arc::default(),
            ahead: None,
            notices: None,
            encoded: Arc::default(),
            file_len: 0,
            zeroed: 0,
            rewrite_slack: REWRITE_SLACK,
            grow: GROW,
            entries: BTreeMap::new(),
            live_bytes: 0,
            held_from: u64::MAX,
            held_bytes: 0,
            held_limit: HELD_BYTES,
            purged: None,
            committed: None,
            vote,
        };
        let (at, size, torn) = replay_file(&path, |kind, body, at, len| {
            inner.replay(kind, body, at, len)
        })?;
        inner.zeroed = size;
        if torn {
            tracing::warn!(
                cut = size - at,
                "raft log: a torn record at the end (an append the crash interrupted) is cut off"
            );
            inner.file.set_len(at)?;
            inner.file.sync_all()?;
            inner.zeroed = at;
        }
        inner.file_len = at;
        if inner.grow()? {
            inner.file.sync_all()?;
        }
        let inner = Arc::new(Mutex::new(inner));
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&inner);
        let (queued, syncs) = {
            let i = inner.lock().unwrap_or_else(|p| p.into_inner());
            (i.queued.clone(), i.syncs.clone())
        };
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(weak, rx, queued, syncs))?;
        inner.lock().unwrap_or_else(|p| p.into_inner()).flusher = Some(tx);
        Ok(LogStore { inner })
    }

    /// Tells the log which member it belongs to: the entries another member leads (this
    /// one follows) are then synced as they are appended, without the flusher.
    pub fn for_member(self, id: u64) -> Self {
        self.lock().member = Some(id);
        self
    }

    /// Lets a spare follower's flusher gather its appends for `gather` before it syncs
    /// them (zero: every follower syncs in place).
    pub fn spare_gather(self, gather: Duration) -> Self {
        self.lock().spare_gather = gather;
        self
    }

    /// Tells the log whether this member is a spare follower now (`raft/spare.rs`).
    pub fn set_spare(&self, spare: bool) {
        self.lock().spare = spare;
    }

    /// The log's fdatasyncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs.count()
    }

    /// How long one of the log's fdatasyncs takes lately (zero until it has made a few).
    pub fn recent_sync(&self) -> Duration {
        self.lock().syncs.recent()
    }

    /// How long a spare follower's flusher gathers its appends (zero: not at all).
    pub fn gather(&self) -> Duration {
        self.lock().spare_gather
    }

    /// Makes every fdatasync of the log `delay` longer, as a slow disk would (tests only).
    pub fn sync_delay(self, delay: Duration) -> Self {
        self.lock().syncs.set_delay(delay);
        self
    }

    /// Gives the entries this member appends as their leader to `hook` once they are
    /// durable here, to apply ahead of their commit.
    pub fn apply_ahead(self, hook: AheadHook) -> Self {
        self.lock().ahead = Some(hook);
        self
    }

    /// Keeps the JSON of the entries appended in `encoded` (shared with the member's Raft
    /// network), and takes what it holds instead of encoding an entry again.
    pub fn share_encoded(self, encoded: Arc<Encoded>) -> Self {
        self.lock().encoded = encoded;
        self
    }

    /// Tells the clients subscribed to `notices` which of their changes' entries are
    /// durable here, after each fdatasync.
    pub fn durable_notices(self, notices: Arc<Notices>) -> Self {
        self.lock().notices = Some(notices);
        self
    }

    /// Waits until everything written so far is durable.
    async fn barrier(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().flush(Flushed::Barrier(tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft log flusher stopped"))?
    }

    /// The live entries and the bytes of their records (what a restart would replay).
    pub fn live(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.entries.len(), inner.live_bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn replay(&mut self, kind: u8, body: &[u8], at: u64, len: u64) -> io::Result<()> {
        match kind {
            ENTRY => {
                let e: EntryOf<TypeConfig> = serde_json::from_slice(body).map_err(io_err)?;
                self.insert(e, at, len);
            }
            TRUNCATE => {
                let last: Option<LogIdOf<TypeConfig>> =
                    serde_json::from_slice(body).map_err(io_err)?;
                self.truncate(last.map_or(0, |l| l.index + 1));
            }
            PURGE => {
                let upto: LogIdOf<TypeConfig> = serde_json::from_slice(body).map_err(io_err)?;
                self.purge(upto);
            }
            COMMITTED => {
                self.committed = serde_json::from_slice(body).map_err(io_err)?;
            }
            other => return Err(io_err(format!("raft log: unknown record kind {other}"))),
        }
        Ok(())
    }

    /// Keeps `e`, whose record is at `at` (`len` bytes), held; lets go of the oldest held
    /// entries past the limit.
    fn insert(&mut self, e: EntryOf<TypeConfig>, at: u64, len: u64) {
        // An append after entries a truncate has not removed replaces them (and later ones).
        let index = e.log_id.index;
        self.truncate(index);
        self.live_bytes += len;
        if self.held_bytes == 0 {
            self.held_from = index;
        }
        self.held_bytes += len;
        let slot = Slot {
            log_id: e.log_id,
            at,
            len,
            entry: Some(e),
        };
        self.entries.insert(index, slot);
        // The newest entry stays held whatever its size.
        while self.held_bytes > self.held_limit && self.held_from < index {
            let mut next = self.entries.range_mut(self.held_from..);
            let Some((_, slot)) = next.next() else { break };
            if slot.entry.take().is_some() {
                self.held_bytes -= slot.len;
            }
            self.held_from = next.next().map_or(u64::MAX, |(i, _)| *i);
        }
    }

    /// Forgets `dropped` entries, held or not.
    fn forget(&mut self, dropped: BTreeMap<u64, Slot>) {
        for slot in dropped.values() {
            self.live_bytes -= slot.len;
            if slot.entry.is_some() {
                self.held_bytes -= slot.len;
            }
        }
        if self.held_bytes == 0 {
            self.held_from = u64::MAX;
        }
    }

    fn truncate(&mut self, from: u64) {
        let dropped = self.entries.split_off(&from);
        self.forget(dropped);
    }

    fn purge(&mut self, upto: LogIdOf<TypeConfig>) {
        let kept = self.entries.split_off(&(upto.index + 1));
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.forget(dropped);
        if self.held_from <= upto.index {
            // The held entries are the latest: all of those left.
            self.held_from = self.entries.first_key_value().map_or(u64::MAX, |(i, _)| *i);
        }
        if self.purged.as_ref().is_none_or(|p| p.index < upto.index) {
            self.purged = Some(upto);
        }
    }

    /// Queues `item` for the flusher's next fdatasync.
    fn flush(&self, item: Flushed) -> io::Result<()> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.flusher.as_ref().and_then(|f| f.send(item).ok());
        if sent.is_none() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent.ok_or_else(|| io::Error::other("raft log flusher stopped"))
    }

    /// Appends `bytes` (whole records) to the file, without syncing; zeroes the next
    /// stretch ahead of them if little is left (once per megabyte of log: the fdatasync
    /// that follows carries it and the file's new length).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.file_len)?;
        self.file_len += bytes.len() as u64;
        self.zeroed = self.zeroed.max(self.file_len);
        self.grow()?;
        Ok(())
    }

    /// Writes zeros ahead of the records if less than half of `self.grow` is left (not
    /// synced); says whether it did.
    fn grow(&mut self) -> io::Result<bool> {
        if self.zeroed - self.file_len >= self.grow / 2 {
            return Ok(false);
        }
        meridian_proto::disk::write_zeros(&self.file, self.zeroed, self.grow)?;
        self.zeroed += self.grow;
        Ok(true)
    }

    /// Rewrites the file with only the purge point and the live entries (their records
    /// copied as they are).
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.dir.join("log.rewrite");
        // Read and written: the entries no longer held are read back from it.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let mut len = 0u64;
        if let Some(p) = &self.purged {
            let r = record(PURGE, p)?;
            out.write_all(&r)?;
            len += r.len() as u64;
        }
        let mut buf = Vec::new();
        let mut moved = Vec::with_capacity(self.entries.len());
        for slot in self.entries.values() {
            buf.resize(slot.len as usize, 0);
            self.file.read_exact_at(&mut buf, slot.at)?;
            entry_body(&buf, slot.at)?;
            out.write_all(&buf)?;
            moved.push(len);
            len += slot.len;
        }
        if self.committed.is_some() {
            let r = record(COMMITTED, &self.committed)?;
            out.write_all(&r)?;
            len += r.len() as u64;
        }
        let f = out.into_inner().map_err(|e| e.into_error())?;
        meridian_proto::disk::write_zeros(&f, len, self.grow)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("log"))?;
        sync_dir(&self.dir)?;
        // The handle stays the file's: writes go on where its records end.
        self.file = Arc::new(f);
        for (slot, at) in self.entries.values_mut().zip(moved) {
            slot.at = at;
        }
        self.file_len = len;
        self.zeroed = len + self.grow;
        Ok(())
    }
}

/// Writes `len` zeros at `at` (not synced).
fn write_vote(dir: &Path, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
    let tmp = dir.join("vote.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(vote).map_err(io_err)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("vote"))?;
    sync_dir(dir)
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        // Those not held are read from the file after the lock is let go: a record is
        // never written over (a rewrite makes a new file, and this handle keeps the old).
        let (file, slots) = {
            let inner = self.lock();
            let slots: Vec<Result<EntryOf<TypeConfig>, (u64, u64)>> = inner
                .entries
                .range(bounds(&range))
                .map(|(_, s)| s.entry.clone().ok_or((s.at, s.len)))
                .collect();
            (inner.file.clone(), slots)
        };
        slots
            .into_iter()
            .map(|s| s.or_else(|(at, len)| read_entry(&file, at, len)))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last = match inner.entries.last_key_value() {
            Some((_, s)) => Some(s.log_id),
            None => inner.purged,
        };
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let dir = self.lock().dir.clone();
        write_vote(&dir, vote)?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    /// The committed log id goes into the file too (no fsync: a kill keeps it, and it only
    /// ever trails entries already written). Without it a restarted member, a leader that
    /// keeps its lease included, would serve reads from its state machine's last durable
    /// point, older than what it acknowledged before the restart; with it, the state
    /// machine is brought up to the committed id before the member serves.
    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let r = record(COMMITTED, &committed)?;
        let mut inner = self.lock();
        inner.write(&r)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut followed = None;
        let mut led = Vec::new();
        let mut noticed: Vec<Noticed> = Vec::new();
        let notices = inner.notices.clone().filter(|n| n.wanted());
        let encoded = inner.encoded.clone();
        let written = (|| {
            let mut bytes = Vec::new();
            let start = inner.file_len;
            for e in entries {
                let leader = *e.log_id.leader_id.node_id();
                followed.get_or_insert(leader);
                if notices.is_some()
                    && let Some(client) = client_of(&e)
                {
                    noticed.push((client, place(&e), inner.member == Some(leader)));
                }
                if inner.member == Some(leader)
                    && inner.ahead.as_ref().is_some_and(|h| (h.wants)(&e))
                {
                    led.push(e.clone());
                }
                let r = entry_record(&e, &encoded)?;
                let at = start + bytes.len() as u64;
                bytes.extend_from_slice(&r);
                inner.insert(e, at, r.len() as u64);
            }
            inner.write(&bytes)
        })();
        if let Err(e) = written {
            callback.io_completed(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        // Durable before acknowledged. Another member's entries (and nothing of this
        // member's still with the flusher, whose completions come in order): synced here,
        // unless this member is a spare, whose flusher gathers them.
        let follows = followed.is_some_and(|leader| inner.member.is_some_and(|me| me != leader));
        let gather = match follows && inner.spare {
            true => inner.spare_gather,
            false => Duration::ZERO,
        };
        if follows && gather.is_zero() && inner.queued.load(Ordering::Acquire) == 0 {
            let file = inner.file.clone();
            let syncs = inner.syncs.clone();
            drop(inner);
            let synced = syncs.sync(&file);
            let outcome = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            // The clients' notices first: the answer to the leader wakes its commit, and
            // on a busy processor the notice sent after it waited behind all of that.
            if let Some(notices) = notices.filter(|_| synced.is_ok()) {
                notices.durable(&noticed);
            }
            callback.io_completed(outcome);
            return synced;
        }
        // The flusher reports it once its fdatasync returns.
        inner.flush(Flushed::Append(callback, led, noticed, gather))
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let r = record(TRUNCATE, &last)?;
        {
            let mut inner = self.lock();
            inner.write(&r)?;
            inner.truncate(last.map_or(0, |l| l.index + 1));
        }
        self.barrier().await
    }

    async fn purge(&mut self, upto: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let r = record(PURGE, &upto)?;
        let mut inner = self.lock();
        inner.write(&r)?;
        inner.purge(upto);
        if inner.file_len > inner.live_bytes.saturating_mul(2) + inner.rewrite_slack {
            inner.rewrite()?;
        }
        Ok(())
    }
}

/// The redb log of earlier versions, read once to import it.
mod legacy_redb {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

    type Imported = (
        Option<VoteOf<TypeConfig>>,
        Option<LogIdOf<TypeConfig>>,
        Vec<EntryOf<TypeConfig>>,
    );

    pub(super) fn read(path: &Path) -> io::Result<Imported> {
        let db = Database::open(path).map_err(io_err)?;
        let tx = db.begin_read().map_err(io_err)?;
        let meta = |key: &str| -> io::Result<Option<Vec<u8>>> {
            match tx.open_table(META) {
                Ok(t) => Ok(t.get(key).map_err(io_err)?.map(|v| v.value().to_vec())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(io_err(e)),
            }
        };
        let vote = match meta("vote")? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        let purged = match meta("last_purged")? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        let mut entries = Vec::new();
        if let Ok(t) = tx.open_table(LOG) {
            for item in t.iter().map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                entries.push(serde_json::from_slice(v.value()).map_err(io_err)?);
            }
        }
        Ok((vote, purged, entries))
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
