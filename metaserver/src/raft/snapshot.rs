//! The snapshot format: every state table dumped from one read transaction (a consistent
//! point), in a fixed order, as length-prefixed key/value pairs.
//!
//! ```text
//! "MRDNSNAP" version(u32 LE)
//! per table, in TABLES order: count(u64 LE), then count × [klen u32 LE, key, vlen u32 LE, value]
//! ```

use std::io::{self, Read, Write};

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::io_err;
use crate::cluster::CLUSTER;
use crate::namespace::dir_times::DIR_TIMES;
use crate::namespace::tables as ns;

const MAGIC: &[u8; 8] = b"MRDNSNAP";
const VERSION: u32 = 6;

/// How many of [`tables`] a snapshot of `version` holds: version 3 had every table but
/// the last three ([`ns::PARKED`], [`DIR_TIMES`], [`ns::STAGED`]), version 4 every table
/// but the last two, version 5 every table but the last.
fn tables_in(version: u32) -> Option<usize> {
    match version {
        3 => Some(21),
        4 => Some(22),
        5 => Some(23),
        VERSION => Some(24),
        _ => None,
    }
}

/// A table's key and value encodings, so one dump/load loop serves them all.
enum Table {
    U64Bytes(TableDefinition<'static, u64, &'static [u8]>),
    BytesUnit(TableDefinition<'static, &'static [u8], ()>),
    StrBytes(TableDefinition<'static, &'static str, &'static [u8]>),
    BytesBytes(TableDefinition<'static, &'static [u8], &'static [u8]>),
    BytesU64(TableDefinition<'static, &'static [u8], u64>),
    StrU64(TableDefinition<'static, &'static str, u64>),
}

/// Every table that makes up the replicated state, in dump order.
fn tables() -> [Table; 24] {
    [
        Table::U64Bytes(ns::INODES),
        Table::BytesBytes(ns::DIRENTS),
        Table::BytesBytes(ns::EXTENTS),
        Table::BytesBytes(ns::XATTRS),
        Table::StrBytes(ns::VOLUMES),
        Table::BytesU64(ns::BLOCK_REFS),
        Table::BytesU64(ns::UNREFERENCED),
        Table::StrU64(ns::COUNTERS),
        Table::U64Bytes(ns::CHANGELOG),
        Table::BytesBytes(ns::REQUESTS),
        Table::BytesUnit(ns::REQUEST_TIMES),
        Table::BytesBytes(ns::OPLOG),
        Table::BytesBytes(ns::UNDO),
        Table::U64Bytes(ns::TOMBS),
        Table::BytesBytes(ns::CONFLICTS),
        Table::StrBytes(ns::REGION_STATE),
        Table::StrBytes(CLUSTER),
        Table::BytesBytes(ns::BASES),
        Table::BytesU64(crate::namespace::lease::LEASES),
        Table::BytesU64(crate::namespace::lease::RESERVED),
        Table::BytesBytes(ns::RELAY),
        Table::BytesBytes(ns::PARKED),
        Table::BytesBytes(DIR_TIMES),
        Table::BytesBytes(ns::STAGED),
    ]
}

/// The names of the tables a snapshot holds and a copy knows.
pub fn table_names() -> Vec<String> {
    tables().iter().map(|t| t.name().to_string()).collect()
}

impl Table {
    /// The table's name.
    fn name(&self) -> &str {
        match self {
            Table::U64Bytes(d) => d.name(),
            Table::BytesUnit(d) => d.name(),
            Table::StrBytes(d) => d.name(),
            Table::BytesBytes(d) => d.name(),
            Table::BytesU64(d) => d.name(),
            Table::StrU64(d) => d.name(),
        }
    }
}

fn put(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

fn missing_ok(e: redb::TableError) -> io::Result<()> {
    match e {
        redb::TableError::TableDoesNotExist(_) => Ok(()),
        other => Err(io_err(other)),
    }
}

macro_rules! dump {
    ($tx:expr, $def:expr, $out:expr, |$k:ident, $v:ident| $kb:expr, $vb:expr) => {{
        match $tx.open_table($def) {
            Ok(t) => {
                $out.write_all(&t.len().map_err(io_err)?.to_le_bytes())?;
                for item in t.iter().map_err(io_err)? {
                    let (k, v) = item.map_err(io_err)?;
                    let ($k, $v) = (k.value(), v.value());
                    put($out, &$kb)?;
                    put($out, &$vb)?;
                }
            }
            Err(e) => {
                missing_ok(e)?;
                $out.write_all(&0u64.to_le_bytes())?;
            }
        }
    }};
}

/// Writes the state visible to `tx` to `out`, one row at a time (never whole in memory).
pub fn dump(tx: &ReadTransaction, out: &mut impl Write) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    for table in tables() {
        match table {
            Table::BytesUnit(d) => dump!(tx, d, out, |k, _v| k, []),
            Table::U64Bytes(d) => dump!(tx, d, out, |k, v| k.to_be_bytes(), v),
            Table::StrBytes(d) => dump!(tx, d, out, |k, v| k.as_bytes(), v),
            Table::BytesBytes(d) => dump!(tx, d, out, |k, v| k, v),
            Table::BytesU64(d) => dump!(tx, d, out, |k, v| k, v.to_be_bytes()),
            Table::StrU64(d) => dump!(tx, d, out, |k, v| k.as_bytes(), v.to_be_bytes()),
        }
    }
    out.flush()
}

/// Copies the tables of the state that `keep` names (by table name) as `from` sees them
/// into `to`, replacing what `to` held of them, then rebuilds the derived tables (the
/// tombstones by age, the footprints of the merged log) as a load does. A scratch copy to
/// work on without holding the state's only write transaction (see `backfill::serve::build`).
pub fn copy(
    from: &ReadTransaction,
    to: &WriteTransaction,
    keep: impl Fn(&str) -> bool,
) -> io::Result<()> {
    macro_rules! copy {
        ($def:expr) => {{
            let mut dst = to.open_table($def).map_err(io_err)?;
            dst.retain(|_, _| false).map_err(io_err)?;
            match from.open_table($def) {
                Ok(src) => {
                    for item in src.iter().map_err(io_err)? {
                        let (k, v) = item.map_err(io_err)?;
                        dst.insert(k.value(), v.value()).map_err(io_err)?;
                    }
                }
                Err(e) => missing_ok(e)?,
            }
        }};
    }
    for table in tables().into_iter().filter(|t| keep(t.name())) {
        match table {
            Table::BytesUnit(d) => copy!(d),
            Table::U64Bytes(d) => copy!(d),
            Table::StrBytes(d) => copy!(d),
            Table::BytesBytes(d) => copy!(d),
            Table::BytesU64(d) => copy!(d),
            Table::StrU64(d) => copy!(d),
        }
    }
    ns::index_tombs(to, true).map_err(io_err)?;
    crate::namespace::footprint::index_footprints(to, true).map_err(io_err)
}

/// Reads a snapshot's fields from a stream.
struct Reader<R> {
    r: R,
}

impl<R: Read> Reader<R> {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                io::Error::new(io::ErrorKind::InvalidData, "snapshot is truncated")
            }
            _ => e,
        })
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn chunk(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        // Read in steps, so a corrupt length cannot make one huge allocation up front.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let got = (&mut self.r).take(n as u64).read_to_end(&mut out)?;
        if got != n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot is truncated",
            ));
        }
        Ok(out)
    }
    fn at_end(&mut self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        Ok(self.r.read(&mut b)? == 0)
    }
}

fn be_u64(b: &[u8]) -> io::Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, "bad u64 in snapshot")
    })?))
}

fn utf8(b: &[u8]) -> io::Result<&str> {
    std::str::from_utf8(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad text key in snapshot"))
}

/// Replaces the whole state in `tx` by the snapshot read from `data`, one row at a time.
pub fn load(tx: &WriteTransaction, data: impl Read) -> io::Result<()> {
    let mut r = Reader { r: data };
    let mut magic = [0u8; 8];
    r.fill(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Meridian snapshot",
        ));
    }
    let version = r.u32()?;
    let Some(present) = tables_in(version) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot version {version} is not supported"),
        ));
    };
    for (i, table) in tables().into_iter().enumerate() {
        let count = if i < present { r.u64()? } else { 0 };
        macro_rules! load {
            ($def:expr, |$k:ident, $v:ident| $key:expr, $val:expr) => {{
                let mut t = tx.open_table($def).map_err(io_err)?;
                t.retain(|_, _| false).map_err(io_err)?;
                for _ in 0..count {
                    let ($k, $v) = (r.chunk()?, r.chunk()?);
                    t.insert($key, $val).map_err(io_err)?;
                }
            }};
        }
        match table {
            Table::BytesUnit(d) => load!(d, |k, _v| k.as_slice(), ()),
            Table::U64Bytes(d) => load!(d, |k, v| be_u64(&k)?, v.as_slice()),
            Table::StrBytes(d) => load!(d, |k, v| utf8(&k)?, v.as_slice()),
            Table::BytesBytes(d) => load!(d, |k, v| k.as_slice(), v.as_slice()),
            Table::BytesU64(d) => load!(d, |k, v| k.as_slice(), be_u64(&v)?),
            Table::StrU64(d) => load!(d, |k, v| utf8(&k)?, be_u64(&v)?),
        }
    }
    if !r.at_end()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes after the snapshot",
        ));
    }
    // Derived tables are not shipped: they are rebuilt from what was.
    ns::index_tombs(tx, true).map_err(io_err)?;
    crate::namespace::footprint::index_footprints(tx, true).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    fn db_with_rows() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(ns::INODES).unwrap();
            for i in 0..50u64 {
                t.insert(i, vec![i as u8; i as usize].as_slice()).unwrap();
            }
            let mut c = tx.open_table(ns::COUNTERS).unwrap();
            c.insert("next", 7).unwrap();
            let mut staged = tx.open_table(ns::STAGED).unwrap();
            staged
                .insert([9u8; 32].as_slice(), [1u8; 12].as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        (dir, db)
    }

    fn dumped(db: &Database) -> Vec<u8> {
        let mut out = Vec::new();
        dump(&db.begin_read().unwrap(), &mut out).unwrap();
        out
    }

    #[test]
    fn a_copy_takes_the_tables_named_replacing_them_and_leaves_the_others() {
        let (_d, db) = db_with_rows();
        let dir = tempfile::tempdir().unwrap();
        let target = Database::create(dir.path().join("t.redb")).unwrap();
        let tx = target.begin_write().unwrap();
        {
            let mut t = tx.open_table(ns::INODES).unwrap();
            t.insert(1000, b"only in the target".as_slice()).unwrap();
            tx.open_table(ns::COUNTERS)
                .unwrap()
                .insert("mine", 1)
                .unwrap();
        }
        copy(&db.begin_read().unwrap(), &tx, |name| name == "inodes").unwrap();
        tx.commit().unwrap();
        let read = target.begin_read().unwrap();
        let inodes = read.open_table(ns::INODES).unwrap();
        assert_eq!(inodes.len().unwrap(), 50);
        assert!(inodes.get(1000).unwrap().is_none(), "replaced");
        assert_eq!(
            inodes.get(7).unwrap().unwrap().value(),
            vec![7u8; 7].as_slice()
        );
        let counters = read.open_table(ns::COUNTERS).unwrap();
        assert_eq!(counters.get("mine").unwrap().unwrap().value(), 1);
        assert!(
            counters.get("next").unwrap().is_none(),
            "not named: not copied"
        );
    }

    #[test]
    fn a_streamed_snapshot_loads_back_the_same_and_a_damaged_one_is_refused() {
        let (_d, db) = db_with_rows();
        let data = dumped(&db);
        let dir = tempfile::tempdir().unwrap();
        let target = Database::create(dir.path().join("t.redb")).unwrap();
        let tx = target.begin_write().unwrap();
        load(&tx, data.as_slice()).unwrap();
        tx.commit().unwrap();
        assert_eq!(dumped(&target), data);

        // Every truncation, and trailing bytes, are errors (the transaction is dropped).
        for cut in 0..data.len() {
            let tx = target.begin_write().unwrap();
            let err = load(&tx, &data[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        }
        let mut longer = data.clone();
        longer.push(0);
        let tx = target.begin_write().unwrap();
        assert!(load(&tx, longer.as_slice()).is_err());
        drop(tx);
        assert_eq!(dumped(&target), data, "a refused snapshot changes nothing");

        // A corrupt length announcing 4 GiB fails on the missing bytes, not on memory.
        let mut huge = data[..12].to_vec();
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let tx = target.begin_write().unwrap();
        assert!(load(&tx, huge.as_slice()).is_err());
    }

    #[test]
    fn a_snapshot_of_the_version_before_loads_with_nothing_staged() {
        let (_d, db) = db_with_rows();
        {
            let tx = db.begin_write().unwrap();
            tx.open_table(ns::STAGED)
                .unwrap()
                .retain(|_, _| false)
                .unwrap();
            tx.commit().unwrap();
        }
        let now = dumped(&db);
        // Version 5 had no staged table: its count (the last 8 bytes, zero) was not there.
        assert_eq!(now[now.len() - 8..], [0u8; 8]);
        let mut before = now[..now.len() - 8].to_vec();
        before[8..12].copy_from_slice(&5u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let target = Database::create(dir.path().join("t.redb")).unwrap();
        let tx = target.begin_write().unwrap();
        load(&tx, before.as_slice()).unwrap();
        tx.commit().unwrap();
        assert_eq!(dumped(&target), now);
    }
}
