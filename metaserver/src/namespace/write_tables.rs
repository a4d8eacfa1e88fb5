//! The tables a mutation writes: each write to the namespace proper remembers what it
//! overwrote while a record is being applied, so that every record can be undone.

use meridian_proto::{BlockId, Hlc, InodeId};
use redb::{ReadableTable, Table, WriteTransaction};

use super::dir_times::DIR_TIMES;
use super::lazy_table::LazyTable;

use super::tables::{
    BASES, BLOCK_REFS, Before, CHANGELOG, CONFLICTS, COUNTERS, DIRENTS, EXTENTS, FOOTPRINT_INDEX,
    FOOTPRINTS, INODES, OPLOG, PARKED, REGION_STATE, RELAY, REQUEST_TIMES, REQUESTS, STAGED,
    TOMB_TIMES, TOMBS, Tab, Tomb, UNDO, UNREFERENCED, VOLUMES, XATTRS, dirent_end, dirent_key,
    encode_dirent, encode_extent, i64_of, json_err, pair_key, read_volume, store_err,
    tomb_time_key, u64_of,
};
use super::types::{Extent, FileKind, Inode, NsError, Volume};

/// Every table a mutation may touch, each opened the first time the command uses it (see
/// `LazyTable`).
///
/// The namespace proper (inodes, entries, extents, xattrs, volumes, reference counts,
/// tombstones, conflicts) is private here: it is read through the accessors below and
/// written only through [`WriteTables::write`] and its helpers, which record what each
/// write overwrote while a record is being applied, so every record can be undone.
pub struct WriteTables<'txn> {
    inodes: LazyTable<'txn, u64, &'static [u8]>,
    dirents: LazyTable<'txn, &'static [u8], &'static [u8]>,
    extents: LazyTable<'txn, &'static [u8], &'static [u8]>,
    xattrs: LazyTable<'txn, &'static [u8], &'static [u8]>,
    volumes: LazyTable<'txn, &'static str, &'static [u8]>,
    block_refs: LazyTable<'txn, &'static [u8], u64>,
    unreferenced: LazyTable<'txn, &'static [u8], u64>,
    pub(crate) counters: LazyTable<'txn, &'static str, u64>,
    pub(crate) changelog: LazyTable<'txn, u64, &'static [u8]>,
    pub(crate) requests: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) request_times: LazyTable<'txn, &'static [u8], ()>,
    pub(crate) oplog: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) undo_log: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) bases: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) footprints: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) footprint_index: LazyTable<'txn, &'static [u8], ()>,
    tombs: LazyTable<'txn, u64, &'static [u8]>,
    tomb_times: LazyTable<'txn, &'static [u8], ()>,
    conflicts: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) region_state: LazyTable<'txn, &'static str, &'static [u8]>,
    pub(crate) relay: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) parked: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) dir_times: LazyTable<'txn, &'static [u8], &'static [u8]>,
    pub(crate) staged: LazyTable<'txn, &'static [u8], &'static [u8]>,
    /// While set, every write to a namespace table records what it overwrote.
    pub(crate) undo: Option<Vec<Before>>,
    /// The stamp of the record being applied (with `undo`), if it enters the merged log.
    stamp: Option<Hlc>,
}

impl<'txn> WriteTables<'txn> {
    /// The namespace tables of `tx`, each opened (and created if missing) when first used.
    pub fn open(tx: &'txn WriteTransaction) -> Self {
        WriteTables {
            inodes: LazyTable::new(tx, INODES),
            dirents: LazyTable::new(tx, DIRENTS),
            extents: LazyTable::new(tx, EXTENTS),
            xattrs: LazyTable::new(tx, XATTRS),
            volumes: LazyTable::new(tx, VOLUMES),
            block_refs: LazyTable::new(tx, BLOCK_REFS),
            unreferenced: LazyTable::new(tx, UNREFERENCED),
            counters: LazyTable::new(tx, COUNTERS),
            changelog: LazyTable::new(tx, CHANGELOG),
            requests: LazyTable::new(tx, REQUESTS),
            request_times: LazyTable::new(tx, REQUEST_TIMES),
            oplog: LazyTable::new(tx, OPLOG),
            undo_log: LazyTable::new(tx, UNDO),
            bases: LazyTable::new(tx, BASES),
            footprints: LazyTable::new(tx, FOOTPRINTS),
            footprint_index: LazyTable::new(tx, FOOTPRINT_INDEX),
            tombs: LazyTable::new(tx, TOMBS),
            tomb_times: LazyTable::new(tx, TOMB_TIMES),
            conflicts: LazyTable::new(tx, CONFLICTS),
            region_state: LazyTable::new(tx, REGION_STATE),
            relay: LazyTable::new(tx, RELAY),
            parked: LazyTable::new(tx, PARKED),
            dir_times: LazyTable::new(tx, DIR_TIMES),
            staged: LazyTable::new(tx, STAGED),
            undo: None,
            stamp: None,
        }
    }

    /// Creates every namespace table missing in `tx`: what a store does when it starts, so
    /// that read transactions find every table.
    pub fn create_all(tx: &'txn WriteTransaction) -> Result<(), NsError> {
        let t = Self::open(tx);
        t.inodes.open()?;
        t.dirents.open()?;
        t.extents.open()?;
        t.xattrs.open()?;
        t.volumes.open()?;
        t.block_refs.open()?;
        t.unreferenced.open()?;
        t.counters.open()?;
        t.changelog.open()?;
        t.requests.open()?;
        t.request_times.open()?;
        t.oplog.open()?;
        t.undo_log.open()?;
        t.bases.open()?;
        t.footprints.open()?;
        t.footprint_index.open()?;
        t.tombs.open()?;
        t.tomb_times.open()?;
        t.conflicts.open()?;
        t.region_state.open()?;
        t.relay.open()?;
        t.parked.open()?;
        t.dir_times.open()?;
        t.staged.open()?;
        Ok(())
    }

    /// Starts applying the record stamped `stamp`: every write records what it overwrote.
    /// `logged`: the record enters the merged log, so its directories' times go through
    /// their registers (see `dir_times`); otherwise they are written as they are.
    pub(crate) fn begin_record(&mut self, stamp: Hlc, logged: bool) {
        self.undo = Some(Vec::new());
        self.stamp = Some(stamp).filter(|_| logged);
    }

    /// Ends applying a record; returns what its writes overwrote.
    pub(crate) fn end_record(&mut self) -> Vec<Before> {
        self.stamp = None;
        self.undo.take().unwrap_or_default()
    }

    /// The stamp of the record being applied, while its writes are recorded.
    pub(super) fn recording(&self) -> Option<Hlc> {
        self.stamp.filter(|_| self.undo.is_some())
    }

    /// Inodes, to read.
    pub(crate) fn inodes(&self) -> Result<&Table<'txn, u64, &'static [u8]>, NsError> {
        self.inodes.open()
    }

    /// Directory entries, to read.
    pub(crate) fn dirents(&self) -> Result<&Table<'txn, &'static [u8], &'static [u8]>, NsError> {
        self.dirents.open()
    }

    /// Extents, to read.
    pub(crate) fn extents(&self) -> Result<&Table<'txn, &'static [u8], &'static [u8]>, NsError> {
        self.extents.open()
    }

    /// Extended attributes, to read.
    pub(crate) fn xattrs(&self) -> Result<&Table<'txn, &'static [u8], &'static [u8]>, NsError> {
        self.xattrs.open()
    }

    /// Volumes, to read.
    pub(crate) fn volumes(&self) -> Result<&Table<'txn, &'static str, &'static [u8]>, NsError> {
        self.volumes.open()
    }

    /// Tombstones, to read.
    pub(crate) fn tombs(&self) -> Result<&Table<'txn, u64, &'static [u8]>, NsError> {
        self.tombs.open()
    }

    /// Tombstones by removal stamp, to read.
    pub(crate) fn tomb_times(&self) -> Result<&Table<'txn, &'static [u8], ()>, NsError> {
        self.tomb_times.open()
    }

    /// Forgets at most `limit` of the oldest conflicts, those keyed below `end` (a stamp
    /// key); returns how many. Outside any record: nothing to undo.
    pub(crate) fn drop_conflicts_below(
        &mut self,
        end: &[u8],
        limit: usize,
    ) -> Result<usize, NsError> {
        let mut old = Vec::new();
        for item in self
            .conflicts
            .open()?
            .range(..end)
            .map_err(store_err)?
            .take(limit)
        {
            old.push(item.map_err(store_err)?.0.value().to_vec());
        }
        for k in &old {
            self.conflicts
                .open_mut()?
                .remove(k.as_slice())
                .map_err(store_err)?;
        }
        Ok(old.len())
    }

    fn raw_get(&self, tab: Tab, key: &[u8]) -> Result<Option<Vec<u8>>, NsError> {
        let bytes = |v: Option<redb::AccessGuard<'_, &'static [u8]>>| v.map(|v| v.value().to_vec());
        let num =
            |v: Option<redb::AccessGuard<'_, u64>>| v.map(|v| v.value().to_be_bytes().to_vec());
        Ok(match tab {
            Tab::Inodes => bytes(self.inodes.open()?.get(u64_of(key)?).map_err(store_err)?),
            Tab::Tombs => bytes(self.tombs.open()?.get(u64_of(key)?).map_err(store_err)?),
            Tab::Dirents => bytes(self.dirents.open()?.get(key).map_err(store_err)?),
            Tab::Extents => bytes(self.extents.open()?.get(key).map_err(store_err)?),
            Tab::Xattrs => bytes(self.xattrs.open()?.get(key).map_err(store_err)?),
            Tab::Conflicts => bytes(self.conflicts.open()?.get(key).map_err(store_err)?),
            Tab::Volumes => {
                let name = std::str::from_utf8(key)
                    .map_err(|_| NsError::Store("damaged volume key".into()))?;
                bytes(self.volumes.open()?.get(name).map_err(store_err)?)
            }
            Tab::Trims => {
                let name = std::str::from_utf8(key)
                    .map_err(|_| NsError::Store("damaged trim key".into()))?;
                bytes(self.region_state.open()?.get(name).map_err(store_err)?)
            }
            Tab::Refs => num(self.block_refs.open()?.get(key).map_err(store_err)?),
            Tab::Unref => num(self.unreferenced.open()?.get(key).map_err(store_err)?),
            Tab::RefsBy | Tab::UsageBy | Tab::DirBy | Tab::Read => {
                return Err(NsError::Store(format!("{tab:?} is not a table")));
            }
        })
    }

    fn raw_put(&mut self, tab: Tab, key: &[u8], val: Option<&[u8]>) -> Result<(), NsError> {
        fn bytes<K: redb::Key + 'static>(
            t: &mut Table<'_, K, &'static [u8]>,
            k: K::SelfType<'_>,
            val: Option<&[u8]>,
        ) -> Result<(), NsError> {
            match val {
                Some(v) => t.insert(k, v).map(drop).map_err(store_err),
                None => t.remove(k).map(drop).map_err(store_err),
            }
        }
        fn num(
            t: &mut Table<'_, &'static [u8], u64>,
            k: &[u8],
            val: Option<&[u8]>,
        ) -> Result<(), NsError> {
            match val {
                Some(v) => t.insert(k, u64_of(v)?).map(drop).map_err(store_err),
                None => t.remove(k).map(drop).map_err(store_err),
            }
        }
        match tab {
            Tab::Inodes => bytes(self.inodes.open_mut()?, u64_of(key)?, val),
            Tab::Tombs => {
                // Every tombstone write passes here (undo and redo included), so the index
                // by age follows it.
                let ino = u64_of(key)?;
                if let Some(old) = self.tombs.open()?.get(ino).map_err(store_err)? {
                    let old = serde_json::from_slice::<Tomb>(old.value()).map_err(json_err)?;
                    self.tomb_times
                        .open_mut()?
                        .remove(tomb_time_key(&old, ino).as_slice())
                        .map_err(store_err)?;
                }
                if let Some(v) = val {
                    let new = serde_json::from_slice::<Tomb>(v).map_err(json_err)?;
                    self.tomb_times
                        .open_mut()?
                        .insert(tomb_time_key(&new, ino).as_slice(), ())
                        .map_err(store_err)?;
                }
                bytes(self.tombs.open_mut()?, ino, val)
            }
            Tab::Dirents => bytes(self.dirents.open_mut()?, key, val),
            Tab::Extents => bytes(self.extents.open_mut()?, key, val),
            Tab::Xattrs => bytes(self.xattrs.open_mut()?, key, val),
            Tab::Conflicts => bytes(self.conflicts.open_mut()?, key, val),
            Tab::Volumes => {
                let name = std::str::from_utf8(key)
                    .map_err(|_| NsError::Store("damaged volume key".into()))?;
                bytes(self.volumes.open_mut()?, name, val)
            }
            Tab::Trims => {
                let name = std::str::from_utf8(key)
                    .map_err(|_| NsError::Store("damaged trim key".into()))?;
                bytes(self.region_state.open_mut()?, name, val)
            }
            Tab::Refs => num(self.block_refs.open_mut()?, key, val),
            Tab::Unref => num(self.unreferenced.open_mut()?, key, val),
            Tab::DirBy | Tab::Read => Err(NsError::Store(format!("{tab:?} is not a table"))),
            Tab::RefsBy => {
                let by = i64_of(val)?;
                let n = (self.refcount(key)? as i64).saturating_add(by).max(0) as u64;
                let v = (n > 0).then(|| n.to_be_bytes());
                num(
                    self.block_refs.open_mut()?,
                    key,
                    v.as_ref().map(|v| v.as_slice()),
                )
            }
            Tab::UsageBy => {
                let name = std::str::from_utf8(key)
                    .map_err(|_| NsError::Store("damaged volume key".into()))?;
                let (bytes_by, inodes_by) = match val {
                    Some(v) if v.len() == 16 => (i64_of(Some(&v[..8]))?, i64_of(Some(&v[8..]))?),
                    _ => return Err(NsError::Store("damaged usage change".into())),
                };
                let Some(mut vol) = read_volume(self.volumes.open()?, name)? else {
                    return Ok(()); // the volume went meanwhile (dropped from this region)
                };
                let add = |x: u64, by: i64| (x as i64).saturating_add(by).max(0) as u64;
                vol.used_bytes = add(vol.used_bytes, bytes_by);
                vol.used_inodes = add(vol.used_inodes, inodes_by);
                let bytes = serde_json::to_vec(&vol).map_err(json_err)?;
                self.volumes
                    .open_mut()?
                    .insert(name, bytes.as_slice())
                    .map(drop)
                    .map_err(store_err)
            }
        }
    }

    /// Writes (or with `None` removes) one key of a namespace table, remembering what was
    /// there while an undo capture is on.
    pub(crate) fn write(
        &mut self,
        tab: Tab,
        key: &[u8],
        val: Option<&[u8]>,
    ) -> Result<(), NsError> {
        if self.undo.is_some() {
            let old = self.raw_get(tab, key)?;
            if let Some(u) = self.undo.as_mut() {
                u.push(Before(tab, key.to_vec(), old));
            }
        }
        self.raw_put(tab, key, val)
    }

    /// Puts back what `images` say was there, newest first (a change by an amount is
    /// taken back off).
    pub(crate) fn restore(&mut self, images: &[Before]) -> Result<(), NsError> {
        for Before(tab, key, val) in images.iter().rev() {
            match tab {
                Tab::RefsBy => {
                    let back = i64_of(val.as_deref())?.saturating_neg();
                    self.raw_put(Tab::RefsBy, key, Some(&back.to_be_bytes()))?;
                }
                Tab::UsageBy => {
                    let v = val
                        .as_deref()
                        .filter(|v| v.len() == 16)
                        .ok_or_else(|| NsError::Store("damaged usage change".into()))?;
                    let mut back = i64_of(Some(&v[..8]))?
                        .saturating_neg()
                        .to_be_bytes()
                        .to_vec();
                    back.extend_from_slice(&i64_of(Some(&v[8..]))?.saturating_neg().to_be_bytes());
                    self.raw_put(Tab::UsageBy, key, Some(&back))?;
                }
                Tab::DirBy => self.take_back_dir_change(key, val.as_deref())?,
                Tab::Read => {}
                _ => self.raw_put(*tab, key, val.as_deref())?,
            }
        }
        Ok(())
    }

    pub(crate) fn set_dirent(
        &mut self,
        parent: InodeId,
        name: &[u8],
        ino: InodeId,
        kind: FileKind,
    ) -> Result<(), NsError> {
        let key = dirent_key(parent, name);
        self.write(
            Tab::Dirents,
            &key,
            Some(encode_dirent(ino, kind).as_slice()),
        )
    }

    pub(crate) fn del_dirent(&mut self, parent: InodeId, name: &[u8]) -> Result<(), NsError> {
        self.write(Tab::Dirents, &dirent_key(parent, name), None)
    }

    pub(crate) fn del_inode(&mut self, ino: InodeId) -> Result<(), NsError> {
        self.write(Tab::Inodes, &ino.0.to_be_bytes(), None)
    }

    pub(crate) fn del_volume(&mut self, name: &str) -> Result<(), NsError> {
        self.write(Tab::Volumes, name.as_bytes(), None)
    }

    pub(crate) fn set_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
    ) -> Result<(), NsError> {
        self.write(Tab::Xattrs, &dirent_key(ino, name), Some(value))
    }

    /// Removes one xattr; whether it was there.
    pub(crate) fn del_xattr(&mut self, ino: InodeId, name: &[u8]) -> Result<bool, NsError> {
        let key = dirent_key(ino, name);
        let existed = self
            .xattrs
            .open()?
            .get(key.as_slice())
            .map_err(store_err)?
            .is_some();
        if existed {
            self.write(Tab::Xattrs, &key, None)?;
        }
        Ok(existed)
    }

    /// Removes every xattr of `ino`.
    pub(crate) fn del_xattrs(&mut self, ino: InodeId) -> Result<(), NsError> {
        let from = dirent_key(ino, b"");
        let to = dirent_end(ino);
        let mut keys = Vec::new();
        for item in self
            .xattrs
            .open()?
            .range(from.as_slice()..to.as_slice())
            .map_err(store_err)?
        {
            keys.push(item.map_err(store_err)?.0.value().to_vec());
        }
        for k in keys {
            self.write(Tab::Xattrs, &k, None)?;
        }
        Ok(())
    }

    pub(crate) fn put_tomb(&mut self, tomb: &Tomb) -> Result<(), NsError> {
        let bytes = serde_json::to_vec(tomb).map_err(json_err)?;
        self.write(
            Tab::Tombs,
            &tomb.inode.attr.ino.0.to_be_bytes(),
            Some(&bytes),
        )
    }

    pub(crate) fn tomb(&self, ino: InodeId) -> Result<Option<Tomb>, NsError> {
        match self.tombs.open()?.get(ino.0).map_err(store_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(json_err)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn del_tomb(&mut self, ino: InodeId) -> Result<(), NsError> {
        self.write(Tab::Tombs, &ino.0.to_be_bytes(), None)
    }

    pub(crate) fn put_inode(&mut self, inode: &Inode) -> Result<(), NsError> {
        let key = inode.attr.ino.0.to_be_bytes();
        if inode.attr.kind == FileKind::Dir
            && let Some(stamp) = self.recording()
        {
            // A directory's times are set through its register.
            return self.put_dir_row(inode, stamp);
        }
        let bytes = serde_json::to_vec(inode).map_err(json_err)?;
        self.write(Tab::Inodes, &key, Some(&bytes))
    }

    /// Writes an inode's row as it is, remembering nothing (for `dir_times`, which
    /// remembers the change by amount).
    pub(super) fn put_inode_row(&mut self, node: &Inode) -> Result<(), NsError> {
        let bytes = serde_json::to_vec(node).map_err(json_err)?;
        self.inodes
            .open_mut()?
            .insert(node.attr.ino.0, bytes.as_slice())
            .map_err(store_err)?;
        Ok(())
    }

    /// Notes that the record being applied depends on `ino` without writing it.
    pub(crate) fn note_read(&mut self, ino: InodeId) {
        if let Some(u) = self.undo.as_mut() {
            u.push(Before(Tab::Read, ino.0.to_be_bytes().to_vec(), None));
        }
    }

    /// Writes a volume's row. A change of its usage alone is remembered as an amount, so
    /// undoing it keeps what other records added meanwhile.
    pub(crate) fn put_volume(&mut self, v: &Volume) -> Result<(), NsError> {
        let bytes = serde_json::to_vec(v).map_err(json_err)?;
        if self.undo.is_some()
            && let Some(old) = read_volume(self.volumes.open()?, &v.name)?
        {
            let mut same = old.clone();
            same.used_bytes = v.used_bytes;
            same.used_inodes = v.used_inodes;
            if same == *v {
                let mut by = (v.used_bytes as i64)
                    .wrapping_sub(old.used_bytes as i64)
                    .to_be_bytes()
                    .to_vec();
                by.extend_from_slice(
                    &(v.used_inodes as i64)
                        .wrapping_sub(old.used_inodes as i64)
                        .to_be_bytes(),
                );
                self.volumes
                    .open_mut()?
                    .insert(v.name.as_str(), bytes.as_slice())
                    .map_err(store_err)?;
                if let Some(u) = self.undo.as_mut() {
                    u.push(Before(Tab::UsageBy, v.name.as_bytes().to_vec(), Some(by)));
                }
                return Ok(());
            }
        }
        self.write(Tab::Volumes, v.name.as_bytes(), Some(&bytes))
    }

    pub(crate) fn next(&mut self, counter: &str, first: u64) -> Result<u64, NsError> {
        self.next_n(counter, first, 1)
    }

    /// Takes `n` consecutive values of a counter; returns the first.
    pub(crate) fn next_n(&mut self, counter: &str, first: u64, n: u64) -> Result<u64, NsError> {
        let current = self
            .counters
            .open()?
            .get(counter)
            .map_err(store_err)?
            .map(|v| v.value())
            .unwrap_or(first);
        self.counters
            .open_mut()?
            .insert(counter, current + n)
            .map_err(store_err)?;
        Ok(current)
    }

    /// Whether the request `(client, op)` was applied already.
    pub(crate) fn has_request(&self, client: u64, op: u64) -> Result<bool, NsError> {
        Ok(self
            .requests
            .open()?
            .get(pair_key(client, op).as_slice())
            .map_err(store_err)?
            .is_some())
    }

    fn refcount(&self, key: &[u8]) -> Result<u64, NsError> {
        Ok(self
            .block_refs
            .open()?
            .get(key)
            .map_err(store_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Changes `block`'s count by `by`, remembered as the amount (see [`Tab::RefsBy`]).
    fn add_refs(&mut self, key: &[u8], by: i64) -> Result<(), NsError> {
        let n = self.refcount(key)?;
        let new = (n as i64).saturating_add(by).max(0) as u64;
        let v = (new > 0).then(|| new.to_be_bytes());
        self.raw_put(Tab::Refs, key, v.as_ref().map(|v| v.as_slice()))?;
        if let Some(u) = self.undo.as_mut() {
            let changed = (new as i64).wrapping_sub(n as i64);
            u.push(Before(
                Tab::RefsBy,
                key.to_vec(),
                Some(changed.to_be_bytes().to_vec()),
            ));
        }
        Ok(())
    }

    /// Adds one reference to `block`.
    pub(crate) fn incref(&mut self, block: &BlockId) -> Result<(), NsError> {
        let key = block.as_bytes().as_slice();
        let n = self.refcount(key)?;
        self.add_refs(key, 1)?;
        if n == 0
            && self
                .unreferenced
                .open()?
                .get(key)
                .map_err(store_err)?
                .is_some()
        {
            // A mark left by an older version: it goes once the block is used again.
            self.write(Tab::Unref, key, None)?;
        }
        Ok(())
    }

    /// Drops one reference to `block`. At zero its count row goes, which is all GC needs to
    /// know: chunkservers ask for the counts of the blocks they hold (ADR 0004).
    pub(crate) fn decref(&mut self, block: &BlockId) -> Result<(), NsError> {
        self.add_refs(block.as_bytes().as_slice(), -1)
    }

    pub(crate) fn insert_extent(&mut self, ino: InodeId, e: &Extent) -> Result<(), NsError> {
        let key = pair_key(ino.0, e.offset);
        self.write(Tab::Extents, &key, Some(encode_extent(e).as_slice()))?;
        self.incref(&e.block)
    }

    pub(crate) fn remove_extent(&mut self, ino: InodeId, e: &Extent) -> Result<(), NsError> {
        let key = pair_key(ino.0, e.offset);
        self.write(Tab::Extents, &key, None)?;
        self.decref(&e.block)
    }
}
