//! The log file's records (their layout is in `log_store.rs`'s doc): how each is framed
//! and checked, and how the file is read back (whole at open, one entry at a time after).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use openraft::type_config::alias::EntryOf;
use serde::Serialize;

use crate::raft::encoded::Encoded;
use crate::raft::{TypeConfig, io_err};

/// An entry.
pub(super) const ENTRY: u8 = 1;
/// "Drop entries after" (a log id or null).
pub(super) const TRUNCATE: u8 = 2;
/// "Purged up to" (a log id).
pub(super) const PURGE: u8 = 3;
/// "Committed up to" (a log id).
pub(super) const COMMITTED: u8 = 4;
/// A record's length and checksum.
pub(super) const RECORD_HEAD: usize = 12;
/// No record is larger: a length beyond it is damage, not a record.
const MAX_RECORD: usize = 1 << 30;

/// The record of kind `kind` holding `value`'s JSON.
pub(super) fn record(kind: u8, value: &impl Serialize) -> io::Result<Vec<u8>> {
    Ok(frame(kind, &serde_json::to_vec(value).map_err(io_err)?))
}

/// The record of kind `kind` holding `json`.
fn frame(kind: u8, json: &[u8]) -> Vec<u8> {
    let len = 1 + json.len();
    let hash = blake3::Hasher::new()
        .update(&[kind])
        .update(json)
        .finalize();
    let mut out = Vec::with_capacity(RECORD_HEAD + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&hash.as_bytes()[..8]);
    out.push(kind);
    out.extend_from_slice(json);
    out
}

/// The entry's record: its JSON as `encoded` holds it, or encoded now (and kept there).
pub(super) fn entry_record(e: &EntryOf<TypeConfig>, encoded: &Encoded) -> io::Result<Vec<u8>> {
    let json = match encoded.get(&e.log_id) {
        Some(json) => json,
        None => {
            let json = bytes::Bytes::from(serde_json::to_vec(e).map_err(io_err)?);
            encoded.put(e.log_id, json.clone());
            json
        }
    };
    Ok(frame(ENTRY, &json))
}

/// Reads the log file at `path` record by record, giving each to `f` with where it starts
/// and its length; returns where the records end, the file's length, and whether anything
/// but zeros follows them (a torn or damaged record).
pub(super) fn replay_file(
    path: &Path,
    mut f: impl FnMut(u8, &[u8], u64, u64) -> io::Result<()>,
) -> io::Result<(u64, u64, bool)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let mut at = 0u64;
    let mut record = Vec::new();
    loop {
        let mut head = [0u8; RECORD_HEAD];
        if read_full(&mut r, &mut head)? < RECORD_HEAD {
            // Too short for a record: only zeros may follow.
            return Ok((at, size, head.iter().any(|&b| b != 0)));
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("four bytes")) as usize;
        let fits = len != 0 && len <= MAX_RECORD && at + (RECORD_HEAD + len) as u64 <= size;
        if fits {
            record.clear();
            record.extend_from_slice(&head);
            record.resize(RECORD_HEAD + len, 0);
            r.read_exact(&mut record[RECORD_HEAD..])?;
            if let Some((kind, body, n)) = next_record(&record) {
                f(kind, body, at, n as u64)?;
                at += n as u64;
                continue;
            }
        }
        // The records end here: anything but zeros from here on is a torn record. (A record
        // that did not check out was read past; read what follows it from the file.)
        let mut rest = r.into_inner();
        std::io::Seek::seek(&mut rest, io::SeekFrom::Start(at))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = rest.read(&mut buf)?;
            if n == 0 {
                return Ok((at, size, false));
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok((at, size, true));
            }
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads the entry whose record is at `at` (`len` bytes) in `file`.
pub(super) fn read_entry(file: &File, at: u64, len: u64) -> io::Result<EntryOf<TypeConfig>> {
    let mut record = vec![0u8; len as usize];
    file.read_exact_at(&mut record, at)?;
    serde_json::from_slice(entry_body(&record, at)?).map_err(io_err)
}

/// The JSON of the entry whose whole record is `record` (read at `at`); an error if it
/// does not check out.
pub(super) fn entry_body(record: &[u8], at: u64) -> io::Result<&[u8]> {
    match next_record(record) {
        Some((ENTRY, body, n)) if n == record.len() => Ok(body),
        _ => Err(io_err(format!(
            "raft log: the entry's record at {at} ({} bytes) does not check out",
            record.len()
        ))),
    }
}

/// The record at the start of `bytes`: its kind, JSON body and whole length; `None` at
/// the end or at a torn or damaged record.
pub(super) fn next_record(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let body = bytes.get(RECORD_HEAD..RECORD_HEAD + len)?;
    if blake3::hash(body).as_bytes()[..8] != bytes[4..RECORD_HEAD] {
        return None;
    }
    Some((body[0], &body[1..], RECORD_HEAD + len))
}
