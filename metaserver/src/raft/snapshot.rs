//! The snapshot format: every state table dumped from one read transaction (a consistent
//! point), in a fixed order, as length-prefixed key/value pairs.
//!
//! ```text
//! "MRDNSNAP" version(u32 LE)
//! per table, in TABLES order: count(u64 LE), then count × [klen u32 LE, key, vlen u32 LE, value]
//! ```

use std::io;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::io_err;
use crate::cluster::CLUSTER;
use crate::namespace::tables as ns;

const MAGIC: &[u8; 8] = b"MRDNSNAP";
const VERSION: u32 = 3;
/// Version 2 had every table but the last ([`ns::BASES`]).
const VERSION_WITHOUT_BASES: u32 = 2;

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
fn tables() -> [Table; 18] {
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
    ]
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn missing_ok(e: redb::TableError) -> io::Result<()> {
    match e {
        redb::TableError::TableDoesNotExist(_) => Ok(()),
        other => Err(io_err(other)),
    }
}

macro_rules! dump {
    ($tx:expr, $def:expr, $out:expr, |$k:ident, $v:ident| $kb:expr, $vb:expr) => {{
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        match $tx.open_table($def) {
            Ok(t) => {
                for item in t.iter().map_err(io_err)? {
                    let (k, v) = item.map_err(io_err)?;
                    let ($k, $v) = (k.value(), v.value());
                    rows.push(($kb, $vb));
                }
            }
            Err(e) => missing_ok(e)?,
        }
        $out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        for (k, v) in rows {
            put($out, &k);
            put($out, &v);
        }
    }};
}

/// Dumps the state visible to `tx`.
pub fn dump(tx: &ReadTransaction) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for table in tables() {
        match table {
            Table::BytesUnit(d) => dump!(tx, d, &mut out, |k, _v| k.to_vec(), Vec::new()),
            Table::U64Bytes(d) => {
                dump!(tx, d, &mut out, |k, v| k.to_be_bytes().to_vec(), v.to_vec())
            }
            Table::StrBytes(d) => dump!(tx, d, &mut out, |k, v| k.as_bytes().to_vec(), v.to_vec()),
            Table::BytesBytes(d) => dump!(tx, d, &mut out, |k, v| k.to_vec(), v.to_vec()),
            Table::BytesU64(d) => {
                dump!(tx, d, &mut out, |k, v| k.to_vec(), v.to_be_bytes().to_vec())
            }
            Table::StrU64(d) => dump!(
                tx,
                d,
                &mut out,
                |k, v| k.as_bytes().to_vec(),
                v.to_be_bytes().to_vec()
            ),
        }
    }
    Ok(out)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot is truncated",
            ));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn chunk(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
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

/// Replaces the whole state in `tx` by the snapshot `data`.
pub fn load(tx: &WriteTransaction, data: &[u8]) -> io::Result<()> {
    let mut r = Reader { data };
    if r.take(8)? != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Meridian snapshot",
        ));
    }
    let version = r.u32()?;
    if version != VERSION && version != VERSION_WITHOUT_BASES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot version {version} is not supported"),
        ));
    }
    for (i, table) in tables().into_iter().enumerate() {
        let missing = version == VERSION_WITHOUT_BASES && i == tables().len() - 1;
        let count = if missing { 0 } else { r.u64()? };
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
            Table::BytesUnit(d) => load!(d, |k, _v| k, ()),
            Table::U64Bytes(d) => load!(d, |k, v| be_u64(k)?, v),
            Table::StrBytes(d) => load!(d, |k, v| utf8(k)?, v),
            Table::BytesBytes(d) => load!(d, |k, v| k, v),
            Table::BytesU64(d) => load!(d, |k, v| k, be_u64(v)?),
            Table::StrU64(d) => load!(d, |k, v| utf8(k)?, be_u64(v)?),
        }
    }
    if !r.data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes after the snapshot",
        ));
    }
    // Derived tables are not shipped: they are rebuilt from what was.
    ns::index_tombs(tx, true).map_err(io_err)
}
