//! The namespace's redb tables and their encodings. Keys are big-endian byte strings so
//! that one directory's entries, one file's extents and one inode's xattrs are contiguous
//! and sorted (readdir and extent lookups are range scans).

use meridian_proto::{BlockId, InodeId};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::types::{DirEntry, Extent, FileKind, Inode, NsError, Volume};
pub use super::write_tables::WriteTables;

pub(super) fn u64_of(b: &[u8]) -> Result<u64, NsError> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| NsError::Store("damaged 8-byte key or value".into()))
}

pub(super) fn add_count(n: u32, by: i64) -> u32 {
    (i64::from(n).saturating_add(by)).clamp(0, i64::from(u32::MAX)) as u32
}

pub(crate) fn i64_of(b: Option<&[u8]>) -> Result<i64, NsError> {
    b.and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| NsError::Store("damaged amount".into()))
}

/// inode number -> Inode (JSON).
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// parent (8 bytes BE) ++ name -> child (8 bytes BE) ++ kind (1 byte).
pub const DIRENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirents");
/// inode (8 BE) ++ file offset (8 BE) -> len (8) ++ block (32) ++ block offset (4) ++ block len (4).
pub const EXTENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("extents");
/// inode (8 BE) ++ name -> value.
pub const XATTRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("xattrs");
/// volume name -> Volume (JSON).
pub const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
/// block id -> number of extents referencing it.
pub const BLOCK_REFS: TableDefinition<&[u8], u64> = TableDefinition::new("block_refs");
/// Legacy, no longer written: block id -> when its last reference went away. Nothing
/// needs it (GC asks for reference counts, see ADR 0004) and it only ever grew; it stays
/// defined so that data directories, snapshots and undo records that have it still load.
pub const UNREFERENCED: TableDefinition<&[u8], u64> = TableDefinition::new("unreferenced");
/// block id -> inode (8 BE) ++ plaintext: blocks a small commit carried, held until the
/// writer says chunkservers hold them (docs/adr/0018). Not namespace state: no record
/// names it and undo leaves it alone.
pub const STAGED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("staged");
/// counter name -> value.
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// sequence -> committed operation (JSON), in commit order: what cross-region replication ships.
pub const CHANGELOG: TableDefinition<u64, &[u8]> = TableDefinition::new("changelog");
/// client id (8 BE) ++ op id (8 BE) -> outcome (JSON), so a retried mutation applies once.
pub const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");

/// HLC wall time (8 BE) ++ client id (8 BE) ++ op id (8 BE) -> (): request records by age,
/// so old ones can be pruned in order.
pub const REQUEST_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("request_times");

/// HLC key -> applied record (JSON [`Record`]), every region's, in stamp order: what a
/// late remote record is merged into. Pruned below the stability watermark.
pub const OPLOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("oplog");
/// HLC key -> what applying that record overwrote (JSON), to undo it.
pub const UNDO: TableDefinition<&[u8], &[u8]> = TableDefinition::new("undo");
/// HLC key of a record ++ inode (8 BE) -> the version of that file (JSON) the record's
/// content change applied to when it met a concurrent change. A version's content never
/// changes, so this is kept (outside undo) while the record is in the merged log: a redo
/// after the log below it was pruned applies to the same bytes.
pub const BASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bases");
/// HLC key of a record in the merged log -> its footprint (what it may read or write,
/// encoded by `footprint`). Derived from OPLOG and UNDO (kept in step by every entry and
/// removal, rebuilt by `footprint::index_footprints`) and left out of snapshots.
pub const FOOTPRINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("footprints");
/// The merged log by what its records touch: kind (1) [++ inode (8 BE)] ++ HLC key -> (),
/// so a late record finds the newer records it meets without reading the others. Derived
/// like FOOTPRINTS.
pub const FOOTPRINT_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("footprint_index");
/// inode -> a removed inode kept for a while (JSON [`Tomb`]), so that a concurrent update
/// from another region can bring it back.
pub const TOMBS: TableDefinition<u64, &[u8]> = TableDefinition::new("tombs");
/// Records of a volume being brought into this region that arrived before its image:
/// volume (4 BE) ++ HLC key -> record (JSON). They wait here, apart, so the records of
/// other volumes go on applying, and apply when the image is installed.
pub const PARKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("parked");
/// The tombstones of each volume by age: volume (4 BE) ++ removal stamp (HLC key) ++
/// inode (8 BE) -> (). Derived from TOMBS (kept in step by every write of a tombstone,
/// rebuilt by [`index_tombs`]) and left out of snapshots, so the purge reads only the
/// tombstones it can drop, volume by volume (each settles with its own regions).
pub const TOMB_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("tomb_times_by_volume");
/// The index by age alone of earlier versions, dropped on opening.
const OLD_TOMB_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("tomb_times");
/// HLC key ++ index (2 BE) -> a conflict met while merging (JSON).
pub const CONFLICTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts");
/// Cross-region bookkeeping: `head` (the newest applied stamp), `peers`, and per origin
/// region `wm/<region>` (last change sequence applied) and `frontier/<region>` (no future
/// record of that region is older).
pub const REGION_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("region_state");
/// Records of other regions kept to relay them to peers that do not pull their origin:
/// origin (2 BE) ++ the origin's change-log sequence (8 BE) -> record (JSON).
pub const RELAY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("relay");

/// A removed inode, kept with its content until it is certain no region still writes it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Tomb {
    /// The inode as it was (links at 0).
    pub inode: Inode,
    /// The directory that held its last name.
    pub dir: InodeId,
    /// That name.
    pub name: Vec<u8>,
    /// When it was removed.
    pub at: meridian_proto::Hlc,
}

/// The tables whose writes can be undone (the namespace proper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tab {
    Inodes,
    Dirents,
    Extents,
    Xattrs,
    Volumes,
    Refs,
    Unref,
    Tombs,
    Conflicts,
    /// A mark of a removed file whose extents are dropped in steps, in the region's state
    /// (key: the mark's key there; see `trim.rs`).
    Trims,
    /// Not a table: a block's count (key: the block) changed by the value (i64, big
    /// endian). Undone by taking it back off whatever the count is by then, so records
    /// that are not undone keep what they added (counts commute).
    RefsBy,
    /// Not a table: a volume's usage (key: its name) changed by the value (bytes and
    /// inodes, two i64, big endian); undone the same way.
    UsageBy,
    /// Not a table: a directory's row changed by a record that changed its entries (key:
    /// the directory, then the record's stamp key): its link count by the value (i64, big
    /// endian), taken back off whatever it is by then, and if the value's last byte is 1,
    /// its times set in its register (see `dir_times`), taken back out of it.
    DirBy,
    /// Not a table: an inode a record's outcome depends on without writing it (key: the
    /// inode). Restoring it does nothing; it is part of the record's footprint.
    Read,
}

/// A key's value before a write: restoring these in reverse undoes a record.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Before(pub Tab, pub Vec<u8>, pub Option<Vec<u8>>);

/// Counter keys.
pub mod counter {
    /// Next region-local inode number.
    pub const NEXT_INODE: &str = "next_inode";
    /// Next volume id.
    pub const NEXT_VOLUME: &str = "next_volume";
    /// Next change log sequence number.
    pub const NEXT_CHANGE: &str = "next_change";
    /// Plaintext bytes held in the staged table.
    pub const STAGED_BYTES: &str = "staged_bytes";
}

pub(crate) fn store_err(e: impl Into<redb::Error>) -> NsError {
    NsError::Store(e.into().to_string())
}

pub(super) fn json_err(e: serde_json::Error) -> NsError {
    NsError::Store(format!("damaged record: {e}"))
}

pub(crate) fn dirent_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.0.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// A key after every entry of directory `parent` (for the last possible inode number too,
/// which a hostile record may name: no entry's name is longer than 255 bytes).
pub(crate) fn dirent_end(parent: InodeId) -> Vec<u8> {
    match parent.0.checked_add(1) {
        Some(next) => dirent_key(InodeId(next), b""),
        None => vec![0xff; 8 + 256],
    }
}

pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

pub(crate) fn encode_kind(k: FileKind) -> u8 {
    match k {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::Symlink => 3,
        FileKind::CharDev => 4,
        FileKind::BlockDev => 5,
        FileKind::Fifo => 6,
        FileKind::Socket => 7,
    }
}

pub(crate) fn decode_kind(b: u8) -> Result<FileKind, NsError> {
    Ok(match b {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::Symlink,
        4 => FileKind::CharDev,
        5 => FileKind::BlockDev,
        6 => FileKind::Fifo,
        7 => FileKind::Socket,
        other => {
            return Err(NsError::Store(format!(
                "damaged directory entry kind {other}"
            )));
        }
    })
}

pub(crate) fn encode_dirent(ino: InodeId, kind: FileKind) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&ino.0.to_be_bytes());
    v[8] = encode_kind(kind);
    v
}

pub(crate) fn decode_dirent(key: &[u8], value: &[u8]) -> Result<DirEntry, NsError> {
    if value.len() != 9 || key.len() < 8 {
        return Err(NsError::Store("damaged directory entry".into()));
    }
    Ok(DirEntry {
        name: key[8..].to_vec(),
        ino: InodeId(u64::from_be_bytes(value[..8].try_into().expect("8 bytes"))),
        kind: decode_kind(value[8])?,
    })
}

pub(crate) fn encode_extent(e: &Extent) -> [u8; 48] {
    let mut v = [0u8; 48];
    v[..8].copy_from_slice(&e.len.to_be_bytes());
    v[8..40].copy_from_slice(e.block.as_bytes());
    v[40..44].copy_from_slice(&e.block_offset.to_be_bytes());
    v[44..48].copy_from_slice(&e.block_len.to_be_bytes());
    v
}

/// The first key of `t` at or after `from`.
pub(crate) fn first_key_from<V: redb::Value + 'static>(
    t: &impl ReadableTable<&'static [u8], V>,
    from: &[u8],
) -> Result<Option<Vec<u8>>, NsError> {
    Ok(t.range(from..)
        .map_err(store_err)?
        .next()
        .transpose()
        .map_err(store_err)?
        .map(|(k, _)| k.value().to_vec()))
}

/// The first key of `t` that starts with `prefix`.
pub(crate) fn first_with_prefix<V: redb::Value + 'static>(
    t: &impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
) -> Result<Option<Vec<u8>>, NsError> {
    Ok(first_key_from(t, prefix)?.filter(|k| k.starts_with(prefix)))
}

/// The distinct numbers (4 BE bytes) that follow `lead` in the keys of `t`, each once,
/// jumping from one to the next (a volume id in a table keyed by volume first).
pub(crate) fn distinct_u32s<V: redb::Value + 'static>(
    t: &impl ReadableTable<&'static [u8], V>,
    lead: &[u8],
) -> Result<Vec<u32>, NsError> {
    let mut out = Vec::new();
    let mut from = [lead, &0u32.to_be_bytes()].concat();
    while let Some(k) = first_key_from(t, &from)? {
        if !k.starts_with(lead) {
            break;
        }
        let v = k
            .get(lead.len()..lead.len() + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| NsError::Store("damaged key".into()))?;
        out.push(v);
        let Some(next) = v.checked_add(1) else {
            break;
        };
        from = [lead, &next.to_be_bytes()].concat();
    }
    Ok(out)
}

/// TOMB_TIMES key of the tombstone `tomb` of `ino`.
pub(crate) fn tomb_time_key(tomb: &Tomb, ino: u64) -> Vec<u8> {
    let mut k = tomb.inode.attr.volume.to_be_bytes().to_vec();
    k.extend_from_slice(&tomb.at.to_key());
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Rebuilds the tombstones' index by age from TOMBS: after a snapshot is installed
/// (`always`), and on opening a state written before the index existed (when it does not
/// hold one row per tombstone; every write keeps the two in one transaction otherwise).
pub fn index_tombs(tx: &WriteTransaction, always: bool) -> Result<(), NsError> {
    match tx.delete_table(OLD_TOMB_TIMES) {
        Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(store_err(e)),
    }
    let tombs = tx.open_table(TOMBS).map_err(store_err)?;
    let mut times = tx.open_table(TOMB_TIMES).map_err(store_err)?;
    if !always && tombs.len().map_err(store_err)? == times.len().map_err(store_err)? {
        return Ok(());
    }
    times.retain(|_, _| false).map_err(store_err)?;
    for item in tombs.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let tomb = serde_json::from_slice::<Tomb>(v.value()).map_err(json_err)?;
        times
            .insert(tomb_time_key(&tomb, k.value()).as_slice(), ())
            .map_err(store_err)?;
    }
    Ok(())
}

pub(crate) fn decode_extent(key: &[u8], value: &[u8]) -> Result<Extent, NsError> {
    if key.len() != 16 || value.len() != 48 {
        return Err(NsError::Store("damaged extent".into()));
    }
    Ok(Extent {
        offset: u64::from_be_bytes(key[8..16].try_into().expect("8 bytes")),
        len: u64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
        block: BlockId::from_slice(&value[8..40]).expect("32 bytes"),
        block_offset: u32::from_be_bytes(value[40..44].try_into().expect("4 bytes")),
        block_len: u32::from_be_bytes(value[44..48].try_into().expect("4 bytes")),
    })
}

/// Reads an inode from any readable inode table.
pub(crate) fn read_inode(
    t: &impl ReadableTable<u64, &'static [u8]>,
    ino: InodeId,
) -> Result<Option<Inode>, NsError> {
    match t.get(ino.0).map_err(store_err)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(json_err)?)),
        None => Ok(None),
    }
}

/// Reads a directory entry from any readable dirent table.
pub(crate) fn read_dirent(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    parent: InodeId,
    name: &[u8],
) -> Result<Option<DirEntry>, NsError> {
    let key = dirent_key(parent, name);
    match t.get(key.as_slice()).map_err(store_err)? {
        Some(v) => Ok(Some(decode_dirent(&key, v.value())?)),
        None => Ok(None),
    }
}

/// The VOLUMES key a deleted volume is kept under until it is purged (a name no live
/// volume can have: `~` is not allowed in volume names).
pub(crate) fn deleted_volume_key(id: u32) -> String {
    format!("~deleted-{id}")
}

/// Reads a live volume by name.
pub(crate) fn read_volume(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Volume>, NsError> {
    Ok(read_volume_row(t, name)?.filter(|vol| vol.deleted.is_none()))
}

/// The row of volume `name`, a deleted volume's tombstone included.
pub(crate) fn read_volume_row(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Volume>, NsError> {
    match t.get(name).map_err(store_err)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(json_err)?)),
        None => Ok(None),
    }
}

/// Extents of `ino` overlapping `[start, end)`, in offset order.
pub(crate) fn read_extents(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ino: InodeId,
    start: u64,
    end: u64,
) -> Result<Vec<Extent>, NsError> {
    let mut out = Vec::new();
    each_extent(t, ino, start, end, |e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

/// The extent of `ino` that starts last, if any.
pub(crate) fn last_extent(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ino: InodeId,
) -> Result<Option<Extent>, NsError> {
    let (lo, hi) = (pair_key(ino.0, 0), pair_key(ino.0, u64::MAX));
    match t
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(store_err)?
        .next_back()
    {
        Some(item) => {
            let (k, v) = item.map_err(store_err)?;
            decode_extent(k.value(), v.value()).map(Some)
        }
        None => Ok(None),
    }
}

/// Gives `f` the extents of `ino` overlapping `[start, end)` in offset order, for as long
/// as it answers `true`.
pub(crate) fn each_extent(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ino: InodeId,
    start: u64,
    end: u64,
    mut f: impl FnMut(Extent) -> bool,
) -> Result<(), NsError> {
    if start >= end {
        return Ok(());
    }
    // The extent starting at or before `start` may reach into the range.
    let lo = pair_key(ino.0, 0);
    let at = pair_key(ino.0, start);
    if let Some(item) = t
        .range(lo.as_slice()..=at.as_slice())
        .map_err(store_err)?
        .next_back()
    {
        let (k, v) = item.map_err(store_err)?;
        let e = decode_extent(k.value(), v.value())?;
        if e.end() > start && !f(e) {
            return Ok(());
        }
    }
    let from = pair_key(ino.0, start.saturating_add(1));
    let to = pair_key(ino.0, end);
    if start < u64::MAX {
        for item in t.range(from.as_slice()..to.as_slice()).map_err(store_err)? {
            let (k, v) = item.map_err(store_err)?;
            if !f(decode_extent(k.value(), v.value())?) {
                break;
            }
        }
    }
    Ok(())
}
