//! The journal of small blocks of earlier versions, replayed once and removed.
//!
//! Before packs (see [`crate::packs`]), a small block was made durable by a record in a
//! journal segment and its block file written without fsync; a segment retired once a
//! `syncfs` had made its files durable. A store left by such a version may hold records
//! of generations not retired, whose files a crash may have lost or cut short: at open
//! they are replayed (a put whose block file is missing or damaged writes it again, a
//! delete removes it), a `syncfs` makes that durable, and the journal is removed.
//!
//! ```text
//! journal/state   retired generation, last activated generation (u64 LE each), blake3[..8]
//! journal/0, /1   segments: records from offset 0, each
//!                 u32 LE magic, u64 LE generation, u8 kind (1 put, 2 delete, 3 kept),
//!                 u32 LE body length, blake3(head fields ‖ body)[..16], body
//!                 body: the block id (32 bytes), then for a put the block file's bytes
//! ```
//! A record of another generation than its segment's first, or one whose checksum fails,
//! ends a segment.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use meridian_proto::BlockId;
use tracing::info;

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

/// Replays the journal in `dir`, if there is one, through `apply` (which must put the
/// block files right, without fsync), makes that durable with a `syncfs` of the file
/// system holding `blocks`, and removes the journal. Returns how many blocks it replayed.
pub fn replay_and_remove(
    dir: &Path,
    blocks: &Path,
    mut apply: impl FnMut(Replayed) -> io::Result<()>,
) -> io::Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    let (retired, _) = read_state(dir)?;
    let mut generations = Vec::new();
    for i in 0..2 {
        if let Some((generation, records)) = read_segment(&dir.join(i.to_string()))?
            && generation > retired
        {
            generations.push((generation, records));
        }
    }
    generations.sort_by_key(|(g, _)| *g);
    let mut last: HashMap<BlockId, Replayed> = HashMap::new();
    let mut order = Vec::new();
    for (_, records) in generations {
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
    syncfs(&File::open(blocks)?)?;
    fs::remove_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    info!(
        blocks = n,
        "the journal of an earlier version was replayed and removed"
    );
    Ok(n)
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
