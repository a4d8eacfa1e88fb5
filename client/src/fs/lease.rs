//! Namespace write-back under directory leases (docs/adr/0006).
//!
//! A directory this mount creates is leased to it, and so is an existing directory whose
//! entries it keeps changing (asked for on demand, `demand.rs`): no other client changes
//! its entries until the servers recall the lease. While it holds a lease, and the feed
//! that brings recalls answers, the mount answers creates, mkdir, symlinks, rmdir, unlink
//! and renames within it alone (`entries.rs`), from exactly what it knows (every name, and
//! the directory's attributes), and sends the changes later, in order, in batches (one
//! Raft entry each): within [`LINGER`], or at once when a caller waits for them
//! (`send.rs`). What it makes takes inode numbers the servers reserved for this mount, so
//! the number the kernel gets is final.
//!
//! Ordering: every request this mount sends to the servers that a queued change could
//! affect waits until the queue is sent first ([`Leases::settle`]). Durability: fsync,
//! fsyncdir, flush (close) and unmount wait for the queue, and report a change the servers
//! refused ([`Leases::sync`]). A recall takes the lease out of local use at once and gives
//! it back with the next batch, after the changes made under it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::InodeId;
use meridian_proto::ns::{
    Attr, Creds, Extent, FileKind, NAME_MAX, NsError, Op, Queued, Reply, Timespec,
};
use tokio::sync::{Notify, oneshot, watch};
use tracing::debug;

use super::{Errno, Listing};

mod alone;
mod demand;
mod entries;
mod send;
use meridian_proto::ns::libc_errno;
pub(super) use send::{Batch, Sending};

/// Inode numbers asked for at a time.
const RESERVE: u32 = 4096;
/// Below this many numbers left, more are asked for.
const RESERVE_LOW: u64 = 1024;
/// Most directories leased at once; beyond it, new directories are not leased.
const MAX_LEASED: usize = 1 << 16;
/// Most changes waiting to be sent; beyond it, changes go to the servers one by one. A
/// recall waits for the holder's queue (the leader gives it 5 s): the servers commit a few
/// thousand changes a second on a small machine.
const MAX_QUEUED: usize = 8192;
/// Most directories remembered as recalled before their lease was known here.
const MAX_RECALLED: usize = 4096;
/// Most files whose attributes are kept; beyond it, lookups of others ask the servers.
const MAX_FILES: usize = 1 << 20;
/// Most names of leased directories held by default (each costs the mount about 400
/// bytes with what is kept of its file: about 100 MiB): past it, the leases least
/// recently used go back (see [`State::over_budget`]).
pub const MAX_NAMES: usize = 1 << 18;
/// Most directories looked through to move a directory alone (see
/// [`State::subtree_holds`]); a larger tree moved goes to the servers.
const MAX_SUBTREE: usize = 4096;
/// Most extents kept of a file (a small file has one).
const KEPT_EXTENTS: usize = 4;

/// A leased directory as this mount knows it: all of it.
struct LeasedDir {
    attr: Attr,
    /// In name order: a listing is read off in order, not sorted at every opendir.
    entries: BTreeMap<Vec<u8>, (InodeId, FileKind)>,
    /// When this mount last looked at or changed it ([`State::uses`]).
    used: u64,
}

impl LeasedDir {
    fn born(attr: Attr) -> Self {
        LeasedDir {
            attr,
            entries: BTreeMap::new(),
            used: 0,
        }
    }
}

#[derive(Default)]
struct State {
    dirs: HashMap<InodeId, LeasedDir>,
    queue: Vec<Queued>,
    /// A batch is out, sent by the sending task or by a caller waiting for it (`send.rs`):
    /// one at a time, in order.
    sending: bool,
    /// Changes ever queued, and the count sent and answered.
    queued: u64,
    /// Leases to give back with the next batch.
    release: BTreeSet<InodeId>,
    /// Reserved inode numbers: ranges [next, end).
    reserved: VecDeque<(u64, u64)>,
    /// A reservation is asked for.
    reserving: bool,
    /// Changes the servers refused (or that could not be sent), counted: a durability
    /// point reports EIO if the count moved since its caller last looked (as Linux
    /// reports writeback errors once per open file).
    failures: u64,
    /// The last of them, for the log.
    last_failure: Option<String>,
    /// What fsyncdir last reported of [`State::failures`].
    dir_seen: u64,
    /// Directories recalled (or given back) while a change that creates them was under
    /// way: its answer does not make them leased here.
    recalled: std::collections::HashSet<InodeId>,
    /// Changes whose caller waits for their outcome, by request id.
    waiters: HashMap<u64, oneshot::Sender<Result<Reply, NsError>>>,
    /// Inodes created here whose create the servers have not answered yet.
    unsent: std::collections::HashSet<InodeId>,
    /// Kept files with a change answered here not yet sent and answered (`alone.rs`),
    /// with the request of the last: a lookup of one waits for the queue.
    changed: HashMap<InodeId, u64>,
    /// Attributes of files in leased directories, as this mount last made or was told
    /// them: nobody else reaches these files without a recall, and every change this
    /// mount sends of one updates or drops them (see [`Leases::observed`]).
    files: HashMap<InodeId, Attr>,
    /// The targets of kept symlinks (a readlink is answered here).
    targets: HashMap<InodeId, Vec<u8>>,
    /// The extents of kept files whose data this mount knows exactly: made here (none),
    /// then written once (its first commit's). An open reads them instead of asking.
    extents: HashMap<InodeId, Arc<Vec<Extent>>>,
    /// Commits of kept files under way, and whether two of one file were ever at once
    /// (their answers may then be observed in either order: neither's extents are kept).
    committing: HashMap<InodeId, (u32, bool)>,
    /// Existing directories whose leases to ask for with the next batch.
    acquire: BTreeSet<InodeId>,
    /// Leases asked for, not answered yet, and whether a change of the directory this
    /// mount sent itself was answered meanwhile (the entries granted may then miss it:
    /// such a lease goes back at once).
    acquiring: HashMap<InodeId, bool>,
    /// Changes of unleased directories' entries sent to the servers lately: how many,
    /// since when.
    counted: HashMap<InodeId, (u32, Instant)>,
    /// Directories not to ask the leases of before a time, and the wait that led there.
    backed_off: HashMap<InodeId, (Instant, Duration)>,
    /// Inodes whose attributes a change queued (or sent and not answered) changes, with
    /// how many such changes; and the inodes each change touches, by request.
    touching: HashMap<InodeId, u32>,
    touched_by: HashMap<u64, Vec<InodeId>>,
    /// What the leader last said it takes in a write-back (`ns::WRITE_BACK_LEVEL`): a
    /// change it would refuse is not answered here (a mount newer than its metaservers).
    level: u32,
    /// Uses of leased directories so far: a clock for [`LeasedDir::used`].
    uses: u64,
}

impl State {
    fn reserved_left(&self) -> u64 {
        self.reserved.iter().map(|(n, e)| e - n).sum()
    }

    fn take_ino(&mut self) -> Option<InodeId> {
        while let Some((next, end)) = self.reserved.front_mut() {
            if next < end {
                let ino = InodeId(*next);
                *next += 1;
                return Some(ino);
            }
            self.reserved.pop_front();
        }
        None
    }

    fn touch(&mut self, dir: InodeId, now: Timespec, links: i32) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.attr.mtime = now;
            d.attr.ctime = now;
            d.attr.nlink = d.attr.nlink.saturating_add_signed(links);
        }
    }

    /// Marks leased `dir` used now.
    fn use_dir(&mut self, dir: InodeId) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            self.uses += 1;
            d.used = self.uses;
        }
    }

    /// Holds `dir`'s lease, used now.
    fn hold(&mut self, dir: InodeId, leased: LeasedDir) {
        self.dirs.insert(dir, leased);
        self.use_dir(dir);
    }

    /// The leases to give back so that the names held fall to three quarters of
    /// `max_names`, once they are above it: a directory holding more than `max_names`
    /// alone, then the least recently used. Directories without entries cost little and
    /// are left ([`MAX_LEASED`] bounds them).
    fn over_budget(&self, max_names: usize) -> Vec<InodeId> {
        let held: usize = self.dirs.values().map(|d| d.entries.len()).sum();
        if held <= max_names {
            return Vec::new();
        }
        let mut by_use: Vec<(bool, u64, InodeId, usize)> = self
            .dirs
            .iter()
            .filter(|(_, d)| !d.entries.is_empty())
            .map(|(ino, d)| (d.entries.len() <= max_names, d.used, *ino, d.entries.len()))
            .collect();
        by_use.sort_unstable();
        let target = max_names - max_names / 4;
        let mut left = held;
        let mut back = Vec::new();
        for (fits, _, ino, n) in by_use {
            if fits && left <= target {
                break;
            }
            back.push(ino);
            left -= n;
        }
        back
    }

    /// Every lease goes back; nothing is answered alone any more. Returns those held.
    fn give_up(&mut self) -> Vec<InodeId> {
        let dirs: Vec<InodeId> = self.dirs.keys().copied().collect();
        self.release.extend(dirs.iter().copied());
        self.dirs.clear();
        // Leases asked for are given back as soon as they are granted.
        self.acquire.clear();
        self.acquiring
            .values_mut()
            .for_each(|spoiled| *spoiled = true);
        self.forget_files();
        dirs
    }

    /// Drops a leased directory from local use (with what is kept of its files); it is not
    /// asked for on demand again for a while (a lease given back because of a rename in
    /// it, or recalled by another client, would otherwise come back after a few changes,
    /// every entry sent again, and go again).
    fn drop_dir(&mut self, dir: InodeId) -> bool {
        match self.dirs.remove(&dir) {
            Some(d) => {
                for (ino, _) in d.entries.values() {
                    self.forget_file(*ino);
                }
                self.back_off(dir);
                true
            }
            None => false,
        }
    }

    /// Whether `target` is `dir` or under it, as far as this mount can tell: `None` if a
    /// directory under `dir` is not leased here (or there are too many to look through).
    fn subtree_holds(&self, dir: InodeId, target: InodeId) -> Option<bool> {
        let mut todo = vec![dir];
        let mut seen = 0;
        while let Some(d) = todo.pop() {
            if d == target {
                return Some(true);
            }
            seen += 1;
            if seen > MAX_SUBTREE {
                return None;
            }
            for (ino, kind) in self.dirs.get(&d)?.entries.values() {
                if *kind == FileKind::Dir {
                    todo.push(*ino);
                }
            }
        }
        Some(false)
    }

    fn keep_file(&mut self, attr: &Attr) {
        if self.files.len() < MAX_FILES || self.files.contains_key(&attr.ino) {
            self.files.insert(attr.ino, attr.clone());
            if attr.size == 0 {
                self.extents.insert(attr.ino, Arc::default());
            } else {
                self.extents.remove(&attr.ino);
            }
        }
    }

    fn forget_file(&mut self, ino: InodeId) {
        self.files.remove(&ino);
        self.extents.remove(&ino);
        self.targets.remove(&ino);
    }

    /// Forgets what is kept of every file.
    fn forget_files(&mut self) {
        self.files.clear();
        self.extents.clear();
        self.targets.clear();
    }

    /// Keeps the target of symlink `ino`, kept here (see [`State::keep_file`]).
    fn keep_target(&mut self, ino: InodeId, target: &[u8]) {
        if self.files.contains_key(&ino) {
            self.targets.insert(ino, target.to_vec());
        }
    }
}

/// The mount's leases and the queue of changes it answered alone.
pub(super) struct Leases {
    state: Mutex<State>,
    /// Wakes the sender to send now.
    work: Arc<Notify>,
    /// Tells the sender changes were queued: it sends them within [`LINGER`].
    pending: Arc<Notify>,
    /// Changes sent and answered so far.
    sent: watch::Sender<u64>,
    enabled: bool,
    /// Most names of leased directories held (see [`State::over_budget`]).
    max_names: usize,
}

/// What a local answer needs to know of the caller's request.
pub(super) struct Asked<'a> {
    pub parent: InodeId,
    pub name: &'a [u8],
    pub creds: &'a Creds,
}

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

/// The extents of a file after `op`, answered `a`, when that is known exactly: the first
/// commit of a file known empty, whole (a few extents, in order, within its size).
fn first_write(op: &Op, a: &Attr, before: Option<&Arc<Vec<Extent>>>) -> Option<Vec<Extent>> {
    let Op::CommitExtents {
        extents,
        size,
        base_version: None,
        ..
    } = op
    else {
        return None;
    };
    let ordered = extents
        .windows(2)
        .all(|w| w[0].offset + w[0].len <= w[1].offset);
    let fits = extents
        .iter()
        .all(|e| e.len > 0 && e.offset.checked_add(e.len).is_some_and(|end| end <= *size));
    (before.is_some_and(|b| b.is_empty())
        && a.size == *size
        && extents.len() <= KEPT_EXTENTS
        && ordered
        && fits)
        .then(|| extents.clone())
}

/// Whether a name can be answered alone (the servers give other names their own error).
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/')
}

impl Leases {
    pub(super) fn new(enabled: bool, max_names: usize) -> Self {
        Leases {
            state: Mutex::default(),
            work: Arc::new(Notify::new()),
            pending: Arc::new(Notify::new()),
            sent: watch::channel(0).0,
            enabled,
            max_names,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether directories this mount creates should be leased to it.
    pub(super) fn wanted(&self) -> bool {
        self.enabled && self.lock().dirs.len() < MAX_LEASED
    }

    /// The leased directory's attributes.
    pub(super) fn attr(&self, dir: InodeId) -> Option<Attr> {
        self.lock().dirs.get(&dir).map(|d| d.attr.clone())
    }

    /// Whether a change queued here, or sent and not answered yet, changes `ino`'s
    /// attributes (a query of them waits for the queue first).
    pub(super) fn touches(&self, ino: InodeId) -> bool {
        self.lock().touching.contains_key(&ino)
    }

    /// The attributes kept of a file in a leased directory (made here, or told here since
    /// it was leased): what the servers hold once the queue is sent, queued commits and
    /// changes included, not the writes buffered in its handles.
    pub(super) fn kept_file(&self, ino: InodeId) -> Option<Attr> {
        self.lock().files.get(&ino).cloned()
    }

    /// The target of a symlink kept here.
    pub(super) fn target(&self, ino: InodeId) -> Option<Vec<u8>> {
        self.lock().targets.get(&ino).cloned()
    }

    /// A lookup answered alone: `Some(Err(ENOENT))` for a name not there, the attributes
    /// of a leased subdirectory or of a file whose attributes are kept; `None` to ask the
    /// servers.
    pub(super) fn lookup(&self, parent: InodeId, name: &[u8]) -> Option<Result<Attr, Errno>> {
        if !plain_name(name) || name.len() > NAME_MAX {
            return None;
        }
        let mut s = self.lock();
        s.use_dir(parent);
        let dir = s.dirs.get(&parent)?;
        match dir.entries.get(name) {
            None => Some(Err(libc_errno::ENOENT)),
            Some((ino, FileKind::Dir)) => s.dirs.get(ino).map(|d| Ok(d.attr.clone())),
            Some((ino, _)) => s.files.get(ino).map(|a| Ok(a.clone())),
        }
    }

    /// What an open asks the servers (see `Query::View`), answered alone for a file whose
    /// attributes and extents are kept here: the attributes, and the extents overlapping
    /// `[offset, offset + len)` as they are stored (not cut to the range).
    pub(super) fn view(&self, ino: InodeId, offset: u64, len: u64) -> Option<(Attr, Vec<Extent>)> {
        let s = self.lock();
        let (attr, extents) = (s.files.get(&ino)?, s.extents.get(&ino)?);
        let end = offset.saturating_add(len);
        let within = extents
            .iter()
            .filter(|e| e.offset < end && e.offset.saturating_add(e.len) > offset)
            .cloned()
            .collect();
        Some((attr.clone(), within))
    }

    /// Whether the servers can answer a lookup of `name` in `parent` without waiting for
    /// the queue: `parent` is leased here and the entry's create was sent and answered.
    pub(super) fn lookup_is_current(&self, parent: InodeId, name: &[u8]) -> bool {
        let s = self.lock();
        match s.dirs.get(&parent) {
            Some(d) => d.entries.get(name).is_none_or(|(ino, kind)| {
                // Nor renamed (or otherwise touched) by a change not answered yet.
                !s.unsent.contains(ino)
                    && !s.changed.contains_key(ino)
                    && !s.touching.contains_key(ino)
                    && (*kind != FileKind::Dir || s.dirs.contains_key(ino))
            }),
            None => false,
        }
    }

    /// The entries of leased `dir`, in name order (the servers' order), if it is leased
    /// here: all of them, its own changes queued or not, but those `keep` leaves out.
    pub(super) fn listing(&self, dir: InodeId, keep: impl Fn(&[u8]) -> bool) -> Option<Listing> {
        let mut s = self.lock();
        s.use_dir(dir);
        let entries = &s.dirs.get(&dir)?.entries;
        let mut out = Listing::with_capacity(entries.len());
        for (name, (ino, kind)) in entries.iter().filter(|(name, _)| keep(name)) {
            out.push(name, *ino, *kind);
        }
        Some(out)
    }

    /// The inode of `name` in leased `parent`, if known here.
    pub(super) fn entry(&self, parent: InodeId, name: &[u8]) -> Option<(InodeId, FileKind)> {
        self.lock().dirs.get(&parent)?.entries.get(name).copied()
    }

    /// What a change this mount sent itself (and the servers applied) does to its leases:
    /// `dirs` are the changed directories as the servers read them after it; `leased`
    /// says a directory it created was leased to this mount.
    pub(super) fn applied(&self, op: &Op, reply: &Reply, dirs: &[Attr], leased: bool) {
        let mut s = self.lock();
        for d in op.dirs_changed() {
            s.changed_through_servers(d);
        }
        for a in dirs {
            if let Some(d) = s.dirs.get_mut(&a.ino) {
                d.attr = a.clone();
            }
        }
        match (op, reply) {
            (Op::Mknod { parent, name, .. }, Reply::Attr(a))
            | (Op::Symlink { parent, name, .. }, Reply::Attr(a)) => {
                if let Some(d) = s.dirs.get_mut(parent) {
                    d.entries.insert(name.clone(), (a.ino, a.kind));
                    if a.kind != FileKind::Dir {
                        s.keep_file(a);
                    }
                    if let Op::Symlink { target, .. } = op {
                        s.keep_target(a.ino, target);
                    }
                }
                if leased && a.kind == FileKind::Dir && !s.recalled.remove(&a.ino) {
                    s.hold(a.ino, LeasedDir::born(a.clone()));
                    if s.reserved_left() < RESERVE_LOW {
                        s.reserving = true;
                        self.work.notify_one();
                    }
                }
            }
            (Op::Unlink { parent, name, .. }, _) | (Op::Rmdir { parent, name, .. }, _) => {
                let gone = s.dirs.get_mut(parent).and_then(|d| d.entries.remove(name));
                match gone {
                    Some((ino, FileKind::Dir)) => {
                        s.drop_dir(ino);
                    }
                    Some((ino, _)) => {
                        s.forget_file(ino);
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// A change of files this mount sent, and its outcome (`None`: failed or unknown):
    /// the attributes kept of the files it names are replaced by those it answered, or
    /// dropped where it answered none (an xattr change moves the ctime, a link the link
    /// count and the places the file can be reached from, a read the atime).
    pub(super) fn observed(&self, op: &Op, reply: Option<&Reply>) {
        let inos: Vec<InodeId> = match op {
            Op::SetAttr { ino, .. }
            | Op::CommitExtents { ino, .. }
            | Op::PunchHole { ino, .. }
            | Op::Compact { ino, .. }
            | Op::Accessed { ino }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::Link { ino, .. } => vec![*ino],
            Op::CopyRange { dst, .. } => vec![*dst],
            Op::AccessedBatch { inos } => inos.clone(),
            _ => return,
        };
        let mut s = self.lock();
        let alone = match op {
            Op::CommitExtents { ino, .. } => match s.committing.get_mut(ino) {
                Some((n, overlapped)) => {
                    *n -= 1;
                    let alone = *n == 0 && !*overlapped;
                    if *n == 0 {
                        s.committing.remove(ino);
                    }
                    alone
                }
                None => false,
            },
            _ => true,
        };
        if s.files.is_empty() {
            return;
        }
        let answered = match (op, reply) {
            (
                Op::SetAttr { .. } | Op::CommitExtents { .. } | Op::PunchHole { .. },
                Some(Reply::Attr(a)),
            )
            | (Op::CopyRange { .. }, Some(Reply::Copied(_, a))) => Some(a),
            _ => None,
        };
        for ino in inos {
            match answered {
                Some(a) if a.ino == ino && s.files.contains_key(&ino) => {
                    s.files.insert(ino, a.clone());
                    let written = first_write(op, a, s.extents.get(&ino)).filter(|_| alone);
                    match written {
                        Some(extents) => s.extents.insert(ino, Arc::new(extents)),
                        None => s.extents.remove(&ino),
                    };
                }
                _ => {
                    s.forget_file(ino);
                }
            }
        }
    }

    /// A commit of `op`'s file is about to be sent (see [`Leases::observed`], which must
    /// follow it).
    pub(super) fn committing(&self, op: &Op) {
        if let Op::CommitExtents { ino, .. } = op {
            let mut s = self.lock();
            if s.files.contains_key(ino) {
                let (n, overlapped) = s.committing.entry(*ino).or_default();
                *overlapped |= *n > 0;
                *n += 1;
            }
        }
    }

    /// The leases among `dirs` that a change this mount sends itself needs given back
    /// first (it cannot follow a rename, a link or an attribute change of them here).
    pub(super) fn in_the_way(&self, op: &Op) -> Vec<InodeId> {
        let s = self.lock();
        if s.dirs.is_empty() {
            return Vec::new();
        }
        let mut dirs = match op {
            Op::Rename { .. } | Op::Link { .. } => op.dirs_changed(),
            Op::SetAttr { ino, .. } | Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } => {
                vec![*ino]
            }
            _ => Vec::new(),
        };
        if let Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } = op
        {
            for (p, n) in [(parent, name), (new_parent, new_name)] {
                if let Some((ino, FileKind::Dir)) =
                    s.dirs.get(p).and_then(|d| d.entries.get(n)).copied()
                {
                    dirs.push(ino);
                }
            }
        }
        dirs.retain(|d| s.dirs.contains_key(d));
        dirs
    }

    /// Takes `dirs` out of local use and gives them back with the batch that holds the
    /// last change queued in them (a recall, or a change that needs them given back).
    /// One not held here is remembered, in case the answer of a create of it is still
    /// on its way. Returns those that were held.
    pub(super) fn give_back(&self, dirs: &[InodeId]) -> Vec<InodeId> {
        let mut s = self.lock();
        let mut held = Vec::new();
        for d in dirs {
            if s.drop_dir(*d) {
                held.push(*d);
            } else {
                if s.recalled.len() >= MAX_RECALLED {
                    s.recalled.clear();
                }
                s.recalled.insert(*d);
            }
            s.release.insert(*d);
        }
        self.work.notify_one();
        debug!(?dirs, ?held, "leases given back");
        held
    }

    /// Drops from local use the directories among `dirs` held here (another client
    /// changed them: the lease is gone). Returns those that were held.
    pub(super) fn lost(&self, dirs: &[InodeId]) -> Vec<InodeId> {
        let mut s = self.lock();
        for d in dirs {
            s.changed_through_servers(*d);
        }
        let held: Vec<InodeId> = dirs.iter().copied().filter(|d| s.drop_dir(*d)).collect();
        if !held.is_empty() {
            debug!(
                ?held,
                "leases lost: their directories were changed elsewhere"
            );
            s.release.extend(held.iter().copied());
            self.work.notify_one();
        }
        held
    }

    /// Another client changed `files` (`None`: a gap in the feed hides which): it reached
    /// them without a recall reaching this mount, so the lease that kept them here is gone
    /// (the leader ended it): what is kept of them is forgotten.
    pub(super) fn changed_elsewhere(&self, files: Option<&[InodeId]>) {
        let mut s = self.lock();
        match files {
            Some(files) => files.iter().for_each(|ino| s.forget_file(*ino)),
            None => s.forget_files(),
        }
    }

    /// Gives every lease back (unmount, a feed that stopped answering). Returns those
    /// that were held.
    pub(super) fn give_up(&self) -> Vec<InodeId> {
        let dirs = self.lock().give_up();
        self.work.notify_one();
        if !dirs.is_empty() {
            debug!(leases = dirs.len(), "every lease given back");
        }
        dirs
    }
}

#[cfg(test)]
mod tests;
