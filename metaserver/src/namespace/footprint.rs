//! What a record may read or write, for the merge to tell which records commute (ADR
//! 0009): a late record undoes only the newer records whose footprint meets its own.
//!
//! Every record in the merged log has its footprint stored (FOOTPRINTS) and indexed by
//! what it touches (FOOTPRINT_INDEX), so a late record finds the newer records it meets by
//! reading only those: the cost of a merge follows what it meets, not how much was
//! written since.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use meridian_proto::{Hlc, InodeId};
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::dir_times;
use super::tables::{
    Before, FOOTPRINT_INDEX, FOOTPRINTS, OPLOG, Tab, UNDO, WriteTables, distinct_u32s,
    first_with_prefix, store_err,
};
use super::types::*;

/// Index kinds: records naming an inode (whole), records that walk the tree (renames),
/// and records that meet everything.
const BY_INODE: u8 = 0;
const BY_TREE: u8 = 1;
const BY_ALL: u8 = 2;
/// And the records of each volume (not those that meet everything), for settling the
/// merged log volume by volume.
const BY_VOLUME: u8 = 3;
/// And the volume-level changes of each volume, which keep it from settling on its own.
const PINS: u8 = 4;
/// And the records that changed a directory's entries (not the directory as a whole),
/// and each entry they changed, by directory and name.
const BY_DIR: u8 = 5;
const BY_ENTRY: u8 = 6;
/// A change that pins every volume (a copy reads another volume's tree).
const EVERY_VOLUME: u32 = u32::MAX;

fn damaged() -> NsError {
    NsError::Store("damaged footprint".into())
}

/// A name as the footprint knows it: a conflict name made from it (`name.conflict-...`,
/// cut to fit) counts as the name itself, so a record that chose a conflict name meets
/// every record that could have taken it. Names sharing their first bytes, or a hash,
/// only meet more often.
pub(crate) fn name_key(name: &[u8]) -> u64 {
    const MARK: &[u8] = b".conflict-";
    const KEPT: usize = 160;
    let end = name
        .windows(MARK.len())
        .position(|w| w == MARK)
        .unwrap_or(name.len())
        .min(KEPT);
    let d = meridian_proto::BlockId::of(&name[..end]);
    u64::from_be_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What a record may read or write, for deciding which records commute:
/// - the inodes it names or whose rows it wrote whole;
/// - the directories whose entries it changed, and those entries by name: records that
///   change different entries of one directory commute (its link count and times
///   commute, see `dir_times`), and meet any record that names the directory whole;
/// - whether it moves something between directories (which reads ancestry: every such
///   move meets every other);
/// - and whether it touches something shared by everything (a volume's row beyond its
///   usage, or a count written whole by an older version).
#[derive(Clone, Debug, Default)]
pub(crate) struct Footprint {
    all: bool,
    tree: bool,
    inodes: BTreeSet<u64>,
    dirs: BTreeSet<u64>,
    entries: BTreeSet<(u64, u64)>,
    /// The volume of a record that does not meet everything (not part of what it meets:
    /// records of one volume are listed together, to leave the log together).
    volume: Option<u32>,
    /// The volume a volume-level change is of ([`EVERY_VOLUME`] for a copy).
    pins: Option<u32>,
}

impl Footprint {
    /// Whether two records touching these may not be reordered (the index answers this
    /// for the merge; the tests check it against this).
    #[cfg(test)]
    pub(crate) fn meets(&self, other: &Footprint) -> bool {
        self.all
            || other.all
            || (self.tree && other.tree)
            || !self.inodes.is_disjoint(&other.inodes)
            || !self.inodes.is_disjoint(&other.dirs)
            || !self.dirs.is_disjoint(&other.inodes)
            || !self.entries.is_disjoint(&other.entries)
    }

    pub(crate) fn add(&mut self, other: &Footprint) {
        self.all |= other.all;
        self.tree |= other.tree;
        self.inodes.extend(other.inodes.iter().copied());
        self.dirs.extend(other.dirs.iter().copied());
        self.entries.extend(other.entries.iter().copied());
    }

    fn entry(&mut self, dir: InodeId, name: &[u8]) {
        self.dirs.insert(dir.0);
        self.entries.insert((dir.0, name_key(name)));
    }

    /// The directories whose times the record may have set (its own and those it wrote
    /// whole), to settle their registers when it leaves the merged log.
    pub(crate) fn dirs_timed(&self) -> impl Iterator<Item = u64> + '_ {
        self.dirs.iter().chain(self.inodes.iter()).copied()
    }

    /// The footprint of a record with its undo images.
    pub(crate) fn of_applied(record: &Record, images: &[Before]) -> Footprint {
        let mut f = Footprint::of_record(record);
        f.add_images(images);
        if f.all && f.volume.is_some() {
            // It wrote something shared (a whole count or volume row): it waits for the
            // region-wide bound, and its volume with it.
            let volume = f.volume.take();
            f.pins = f.pins.or(volume);
        }
        f
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            17 + 8 * (self.inodes.len() + self.dirs.len()) + 16 * self.entries.len(),
        );
        v.push(
            u8::from(self.all)
                | (u8::from(self.tree) << 1)
                | (u8::from(self.volume.is_some()) << 2)
                | (u8::from(self.pins.is_some()) << 3),
        );
        for vol in [self.volume, self.pins].into_iter().flatten() {
            v.extend_from_slice(&vol.to_be_bytes());
        }
        for set in [&self.inodes, &self.dirs] {
            v.extend_from_slice(&(set.len() as u32).to_be_bytes());
            for i in set {
                v.extend_from_slice(&i.to_be_bytes());
            }
        }
        for (d, n) in &self.entries {
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Footprint, NsError> {
        let (&flags, mut rest) = b.split_first().ok_or_else(damaged)?;
        if flags > 15 {
            return Err(damaged());
        }
        let mut take = |n: usize| -> Result<&[u8], NsError> {
            let (head, more) = rest.split_at_checked(n).ok_or_else(damaged)?;
            rest = more;
            Ok(head)
        };
        let u32_at = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
        let u64_at = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let mut f = Footprint {
            all: flags & 1 != 0,
            tree: flags & 2 != 0,
            ..Footprint::default()
        };
        if flags & 4 != 0 {
            f.volume = Some(u32_at(take(4)?));
        }
        if flags & 8 != 0 {
            f.pins = Some(u32_at(take(4)?));
        }
        for set in [&mut f.inodes, &mut f.dirs] {
            let n = u32_at(take(4)?) as usize;
            let items = take(n.checked_mul(8).ok_or_else(damaged)?)?;
            set.extend(items.chunks_exact(8).map(u64_at));
        }
        if rest.len() % 16 != 0 {
            return Err(damaged());
        }
        f.entries = rest
            .chunks_exact(16)
            .map(|c| (u64_at(&c[..8]), u64_at(&c[8..])))
            .collect();
        Ok(f)
    }

    /// The index prefixes of what a record with this footprint may meet through.
    fn meeting_prefixes(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &i in &self.inodes {
            out.push(inode_prefix(BY_INODE, i));
            out.push(inode_prefix(BY_DIR, i));
        }
        for &d in &self.dirs {
            if !self.inodes.contains(&d) {
                out.push(inode_prefix(BY_INODE, d));
            }
        }
        out.extend(self.entries.iter().map(|&(d, n)| entry_prefix(d, n)));
        if self.tree {
            out.push(vec![BY_TREE]);
        }
        if self.all {
            out.push(vec![BY_ALL]);
        }
        out
    }

    /// The index prefixes a record with this footprint is listed under: what it touches,
    /// and its volume (or the volume it pins).
    fn prefixes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        out.extend(self.inodes.iter().map(|&i| inode_prefix(BY_INODE, i)));
        out.extend(self.dirs.iter().map(|&d| inode_prefix(BY_DIR, d)));
        out.extend(self.entries.iter().map(|&(d, n)| entry_prefix(d, n)));
        if self.tree {
            out.push(vec![BY_TREE]);
        }
        if self.all {
            out.push(vec![BY_ALL]);
        }
        if let Some(vol) = self.volume {
            out.push(volume_prefix(vol));
        }
        if let Some(vol) = self.pins {
            let mut p = vec![PINS];
            p.extend_from_slice(&vol.to_be_bytes());
            out.push(p);
        }
        out
    }

    /// What the operation and what it did at its origin name.
    pub(crate) fn of_record(record: &Record) -> Footprint {
        if record.op.is_volume_level() {
            let pins = match record.op {
                Op::CloneVolume { .. } => EVERY_VOLUME,
                _ => record.volume,
            };
            return Footprint {
                all: true,
                pins: Some(pins),
                ..Footprint::default()
            };
        }
        let mut f = Footprint {
            volume: Some(record.volume),
            ..Footprint::default()
        };
        // The entries it acts on; the inode it changes otherwise, and whatever else it
        // names.
        match &record.op {
            Op::Mknod { parent, name, .. }
            | Op::Symlink { parent, name, .. }
            | Op::Unlink { parent, name, .. }
            | Op::Rmdir { parent, name, .. } => f.entry(*parent, name),
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                f.entry(*parent, name);
                f.entry(*new_parent, new_name);
                // Every rename: one within a directory acts as a move when an earlier
                // record moved the entry's directory, and then walks ancestry.
                f.tree = true;
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
                ..
            } => {
                f.entry(*new_parent, new_name);
                f.inodes.insert(ino.0);
            }
            op => {
                if let Some(i) = op.inode_changed() {
                    f.inodes.insert(i.0);
                }
                match op {
                    Op::CopyRange { src, .. } => {
                        f.inodes.insert(src.0);
                    }
                    Op::AccessedBatch { inos } => f.inodes.extend(inos.iter().map(|i| i.0)),
                    _ => {}
                }
            }
        }
        let fx = &record.effects;
        // (A write to a conflict copy may make the copy again from the file it copies.)
        for i in [fx.created, fx.target, fx.replaced, fx.copy_of]
            .into_iter()
            .flatten()
        {
            f.inodes.insert(i.0);
        }
        f
    }

    /// Adds what a record's undo images say it wrote.
    pub(crate) fn add_images(&mut self, images: &[Before]) {
        for Before(tab, key, _) in images {
            let ino = || {
                key.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            match tab {
                Tab::Inodes | Tab::Extents | Tab::Xattrs | Tab::Tombs | Tab::Read => {
                    if let Some(i) = ino() {
                        self.inodes.insert(i);
                    }
                }
                Tab::Dirents => {
                    if let Some(d) = ino() {
                        self.entry(InodeId(d), &key[8..]);
                    }
                }
                Tab::DirBy => {
                    if let Some(d) = ino() {
                        self.dirs.insert(d);
                    }
                }
                // Written whole: undoing it would take back what others changed since.
                Tab::Volumes => self.all = true,
                // A block's count or mark written whole (an older version's images): a
                // block may be any volume's, so no volume settles on its own meanwhile.
                Tab::Refs => {
                    self.all = true;
                    self.pins = Some(EVERY_VOLUME);
                }
                Tab::Unref => self.pins = Some(EVERY_VOLUME),
                // This region's housekeeping beside the inode's removal, which counts.
                Tab::RefsBy | Tab::UsageBy | Tab::Conflicts | Tab::Trims => {}
            }
        }
    }
}

fn volume_prefix(volume: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(5);
    p.push(BY_VOLUME);
    p.extend_from_slice(&volume.to_be_bytes());
    p
}

fn inode_prefix(kind: u8, ino: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(17);
    p.push(kind);
    p.extend_from_slice(&ino.to_be_bytes());
    p
}

fn entry_prefix(dir: u64, name: u64) -> Vec<u8> {
    let mut p = inode_prefix(BY_ENTRY, dir);
    p.extend_from_slice(&name.to_be_bytes());
    p
}

fn index_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// Lists the record keyed `key` (its HLC key) under what it touches.
pub(crate) fn index(t: &mut WriteTables<'_>, key: &[u8], f: &Footprint) -> Result<(), NsError> {
    unindex(t, key)?;
    for p in f.prefixes() {
        t.footprint_index
            .open_mut()?
            .insert(index_key(&p, key).as_slice(), ())
            .map_err(store_err)?;
    }
    t.footprints
        .open_mut()?
        .insert(key, f.encode().as_slice())
        .map_err(store_err)?;
    Ok(())
}

/// Takes the record keyed `key` out of the index (nothing if it is not in it).
pub(crate) fn unindex(t: &mut WriteTables<'_>, key: &[u8]) -> Result<(), NsError> {
    let Some(f) = t.footprints.open_mut()?.remove(key).map_err(store_err)? else {
        return Ok(());
    };
    let f = Footprint::decode(f.value())?;
    for p in f.prefixes() {
        t.footprint_index
            .open_mut()?
            .remove(index_key(&p, key).as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}

/// The record keyed `key` leaves the merged log for good (it stays applied): out of the
/// index, and the times it set on directories into their registers' bases.
pub(crate) fn forget(t: &mut WriteTables<'_>, key: &[u8]) -> Result<(), NsError> {
    if let Some(f) = footprint_if_logged(t, key)? {
        for dir in f.dirs_timed() {
            dir_times::settle(t, dir, key)?;
        }
    }
    unindex(t, key)
}

/// The stored footprint of the record keyed `key`.
fn footprint_at(t: &WriteTables<'_>, key: &[u8]) -> Result<Footprint, NsError> {
    footprint_if_logged(t, key)?
        .ok_or_else(|| NsError::Store(format!("no footprint for {:?}", Hlc::from_key(key))))
}

/// The stored footprint of the record keyed `key`, if it is in the merged log.
pub(crate) fn footprint_if_logged(
    t: &WriteTables<'_>,
    key: &[u8],
) -> Result<Option<Footprint>, NsError> {
    t.footprints
        .open()?
        .get(key)
        .map_err(store_err)?
        .map(|v| Footprint::decode(v.value()))
        .transpose()
}

/// The HLC keys listed under `prefix` from `from` on (after it unless `inclusive`).
fn listed(
    t: &WriteTables<'_>,
    prefix: &[u8],
    from: &[u8],
    inclusive: bool,
    mut each: impl FnMut(Vec<u8>),
) -> Result<(), NsError> {
    let start = index_key(prefix, from);
    for item in t
        .footprint_index
        .open()?
        .range(start.as_slice()..)
        .map_err(store_err)?
    {
        let (k, _) = item.map_err(store_err)?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        let key = &k[prefix.len()..];
        if inclusive || key != from {
            each(key.to_vec());
        }
    }
    Ok(())
}

/// The records of the merged log that do not commute with a set of late records, found
/// through the index: those that meet the late records, or a record found before them.
/// Each prefix is read once, so the cost is what the late records meet.
#[derive(Default)]
pub(crate) struct Meeting {
    /// The prefixes read already.
    read: HashSet<Vec<u8>>,
    all: bool,
    everything: bool,
    queue: BTreeSet<Vec<u8>>,
}

impl Meeting {
    /// The keys of the records stamped from `low` on that meet `late` (the late records'
    /// footprint), directly or through each other, oldest first.
    pub(crate) fn find(
        t: &WriteTables<'_>,
        late: &Footprint,
        low: Hlc,
    ) -> Result<BTreeSet<Vec<u8>>, NsError> {
        let mut m = Meeting::default();
        m.seed(t, late, &low.to_key(), true)?;
        let mut found = BTreeSet::new();
        while let Some(key) = m.queue.pop_first() {
            let f = footprint_at(t, &key)?;
            // Only records after this one are reordered against it.
            m.seed(t, &f, &key, false)?;
            found.insert(key);
        }
        Ok(found)
    }

    /// Queues the records from `from` on that meet `f` and were not queued already.
    /// Prefixes are read in stamp order of the records that need them, so a prefix read
    /// once from an older record covers every later one.
    fn seed(
        &mut self,
        t: &WriteTables<'_>,
        f: &Footprint,
        from: &[u8],
        inclusive: bool,
    ) -> Result<(), NsError> {
        if self.everything {
            return Ok(());
        }
        let queue = &mut self.queue;
        if f.all {
            self.everything = true;
            for item in t.oplog.open()?.range(from..).map_err(store_err)? {
                let (k, _) = item.map_err(store_err)?;
                if inclusive || k.value() != from {
                    queue.insert(k.value().to_vec());
                }
            }
            return Ok(());
        }
        for p in f.meeting_prefixes() {
            if !self.read.contains(&p) {
                listed(t, &p, from, inclusive, |k| {
                    queue.insert(k);
                })?;
                self.read.insert(p);
            }
        }
        // A record that meets everything meets these.
        if !self.all {
            self.all = true;
            listed(t, &[BY_ALL], from, inclusive, |k| {
                queue.insert(k);
            })?;
        }
        Ok(())
    }
}

/// After a merge replayed some records: for each prefix, the newest record from `low` on
/// that was left applied (not replayed), read once per prefix.
pub(crate) struct LeftApplied<'a> {
    low: Vec<u8>,
    replayed: &'a BTreeSet<Vec<u8>>,
    newest: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> LeftApplied<'a> {
    pub(crate) fn new(low: Hlc, replayed: &'a BTreeSet<Vec<u8>>) -> Self {
        LeftApplied {
            low: low.to_key().to_vec(),
            replayed,
            newest: BTreeMap::new(),
        }
    }

    /// Whether a record left applied, stamped after `key`, meets `f`.
    pub(crate) fn meets_after(
        &mut self,
        t: &WriteTables<'_>,
        f: &Footprint,
        key: &[u8],
    ) -> Result<bool, NsError> {
        let mut prefixes = if f.all {
            // Every record: the empty prefix stands for the whole log.
            vec![Vec::new()]
        } else {
            f.meeting_prefixes()
        };
        prefixes.push(vec![BY_ALL]);
        for p in prefixes {
            if self.newest(t, &p)?.is_some_and(|n| n.as_slice() > key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn newest(&mut self, t: &WriteTables<'_>, prefix: &[u8]) -> Result<Option<Vec<u8>>, NsError> {
        if let Some(n) = self.newest.get(prefix) {
            return Ok(n.clone());
        }
        let mut found = None;
        if prefix.is_empty() {
            for item in t
                .oplog
                .open()?
                .range(self.low.as_slice()..)
                .map_err(store_err)?
                .rev()
            {
                let (k, _) = item.map_err(store_err)?;
                if !self.replayed.contains(k.value()) {
                    found = Some(k.value().to_vec());
                    break;
                }
            }
        } else {
            let start = index_key(prefix, &self.low);
            let mut end = prefix.to_vec();
            end.extend_from_slice(&[0xff; Hlc::KEY_LEN]);
            for item in t
                .footprint_index
                .open()?
                .range(start.as_slice()..=end.as_slice())
                .map_err(store_err)?
                .rev()
            {
                let (k, _) = item.map_err(store_err)?;
                let key = &k.value()[prefix.len()..];
                if !self.replayed.contains(key) {
                    found = Some(key.to_vec());
                    break;
                }
            }
        }
        self.newest.insert(prefix.to_vec(), found.clone());
        Ok(found)
    }
}

/// The volumes with records in the merged log that settle with their volume, each once.
pub(crate) fn volumes_listed(t: &WriteTables<'_>) -> Result<Vec<u32>, NsError> {
    distinct_u32s(t.footprint_index.open()?, &[BY_VOLUME])
}

/// The keys of `volume`'s records stamped before `bound`, oldest first, at most `limit`.
pub(crate) fn volume_keys_below(
    t: &WriteTables<'_>,
    volume: u32,
    bound: Hlc,
    limit: usize,
) -> Result<Vec<Vec<u8>>, NsError> {
    let prefix = volume_prefix(volume);
    let end = index_key(&prefix, &bound.to_key());
    let mut out = Vec::new();
    for item in t
        .footprint_index
        .open()?
        .range(prefix.as_slice()..end.as_slice())
        .map_err(store_err)?
        .take(limit)
    {
        out.push(item.map_err(store_err)?.0.value()[prefix.len()..].to_vec());
    }
    Ok(out)
}

/// The stamp of `volume`'s oldest record in the merged log (of those listed by volume).
pub(crate) fn first_of_volume(t: &WriteTables<'_>, volume: u32) -> Result<Option<Hlc>, NsError> {
    let prefix = volume_prefix(volume);
    Ok(first_with_prefix(t.footprint_index.open()?, &prefix)?
        .and_then(|k| Hlc::from_key(&k[prefix.len()..])))
}

/// Whether a volume-level change of `volume` (or one that pins every volume) is in the
/// merged log.
pub(crate) fn pinned(t: &WriteTables<'_>, volume: u32) -> Result<bool, NsError> {
    for v in [volume, EVERY_VOLUME] {
        let prefix = [&[PINS][..], &v.to_be_bytes()].concat();
        if first_with_prefix(t.footprint_index.open()?, &prefix)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The keys of the records from `from` on that touched one of `inodes`, or that meet
/// everything.
pub(crate) fn touching(
    t: &WriteTables<'_>,
    inodes: impl Iterator<Item = u64>,
    from: Hlc,
) -> Result<BTreeSet<Vec<u8>>, NsError> {
    let from = from.to_key();
    let mut out = BTreeSet::new();
    for i in inodes {
        listed(t, &inode_prefix(BY_INODE, i), &from, true, |k| {
            out.insert(k);
        })?;
    }
    listed(t, &[BY_ALL], &from, true, |k| {
        out.insert(k);
    })?;
    Ok(out)
}

/// The format the footprints and their index were written in (derived like them, and left
/// out of snapshots): a state written in another is rebuilt on opening.
const INDEX_META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("footprint_meta");
const INDEX_FORMAT_KEY: &str = "format";
const INDEX_FORMAT: u64 = 3;

/// Rebuilds the footprints and their index from the merged log: after a snapshot is
/// installed (`always`), and on opening a state written before they existed (when they do
/// not hold one row per record; every write keeps them in step otherwise).
pub fn index_footprints(tx: &WriteTransaction, always: bool) -> Result<(), NsError> {
    let oplog = tx.open_table(OPLOG).map_err(store_err)?;
    let undo = tx.open_table(UNDO).map_err(store_err)?;
    let mut footprints = tx.open_table(FOOTPRINTS).map_err(store_err)?;
    let mut index = tx.open_table(FOOTPRINT_INDEX).map_err(store_err)?;
    let mut meta = tx.open_table(INDEX_META).map_err(store_err)?;
    let format = meta
        .get(INDEX_FORMAT_KEY)
        .map_err(store_err)?
        .map(|v| v.value());
    if !always
        && format == Some(INDEX_FORMAT)
        && oplog.len().map_err(store_err)? == footprints.len().map_err(store_err)?
    {
        return Ok(());
    }
    meta.insert(INDEX_FORMAT_KEY, INDEX_FORMAT)
        .map_err(store_err)?;
    footprints.retain(|_, _| false).map_err(store_err)?;
    index.retain(|_, _| false).map_err(store_err)?;
    let json = |e: serde_json::Error| NsError::Store(format!("damaged merge record: {e}"));
    for item in oplog.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let record: Record = serde_json::from_slice(v.value()).map_err(json)?;
        let images: Vec<Before> = match undo.get(k.value()).map_err(store_err)? {
            Some(u) => serde_json::from_slice(u.value()).map_err(json)?,
            None => Vec::new(),
        };
        let f = Footprint::of_applied(&record, &images);
        for p in f.prefixes() {
            index
                .insert(index_key(&p, k.value()).as_slice(), ())
                .map_err(store_err)?;
        }
        footprints
            .insert(k.value(), f.encode().as_slice())
            .map_err(store_err)?;
    }
    Ok(())
}
