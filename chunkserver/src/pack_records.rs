//! The records of a pack on disk (see [`super`]): their encoding, the scan a start reads
//! a pack with, and the read-only look at a stopped chunkserver's packs that tests use.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use meridian_proto::BlockId;
use tracing::warn;

use super::{MAX_PACKED, list, pack_path, read_at};

const MAGIC: u32 = 0x314b_504d; // "MPK1"
pub(super) const HEAD: usize = 4 + 8 + 1 + 4 + 16;
/// Where a record's kind byte is, from the record's start.
pub(super) const KIND_AT: u64 = 12;
pub(super) const LIVE: u8 = 1;
pub(super) const DEAD: u8 = 2;

/// Bytes of the record of a block file of `file_len` bytes.
pub(super) fn record_len(file_len: u64) -> u64 {
    HEAD as u64 + 32 + file_len
}

/// The record of block `id`, whose file is the concatenation of `file`, in pack
/// `generation`.
pub(super) fn encode(generation: u64, id: &BlockId, file: &[&[u8]]) -> io::Result<Vec<u8>> {
    let file_len: u64 = file.iter().map(|p| p.len() as u64).sum();
    let body_len = u32::try_from(32 + file_len).map_err(io::Error::other)?;
    let mut record = Vec::with_capacity(record_len(file_len) as usize);
    record.extend_from_slice(&MAGIC.to_le_bytes());
    record.extend_from_slice(&generation.to_le_bytes());
    record.push(LIVE);
    record.extend_from_slice(&body_len.to_le_bytes());
    let mut parts = vec![id.as_bytes().as_slice()];
    parts.extend_from_slice(file);
    record.extend_from_slice(&checksum(generation, body_len, &parts));
    for p in parts {
        record.extend_from_slice(p);
    }
    Ok(record)
}

/// One record found by a scan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found {
    pub(super) kind: u8,
    pub(super) id: BlockId,
    pub(super) record: u64,
    pub(super) len: u64,
}

fn checksum(generation: u64, body_len: u32, body: &[&[u8]]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&MAGIC.to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(&body_len.to_le_bytes());
    for part in body {
        h.update(part);
    }
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

/// What a scan found in a pack: its records, the end of the last one, and the ranges it
/// skipped to reach a whole record (start, next record).
pub(super) type Scanned = (Vec<Found>, u64, Vec<(u64, u64)>);

/// The records of pack `generation` in `file`. With `verify`, every record's checksum is
/// checked (the pack a crash may have cut short); otherwise only heads are read (a sealed
/// pack, made durable before the next began) until one is not a record's. Where a record
/// fails (a torn append, or damage), the next whole record after it carries on; if there
/// is none, the pack ends there.
pub(super) fn scan(file: &File, generation: u64, verify: bool) -> io::Result<Scanned> {
    let file_len = file.metadata()?.len();
    let mut whole = if verify {
        Some(read_at(file, 0, file_len as usize)?)
    } else {
        None
    };
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut at = 0u64;
    let mut end = 0u64;
    while at + (HEAD + 32) as u64 <= file_len {
        let head = match &whole {
            Some(w) => w[at as usize..at as usize + HEAD + 32].to_vec(),
            None => read_at(file, at, HEAD + 32)?,
        };
        if let Some(found) = parse(&head, generation, at, file_len, whole.as_deref()) {
            out.push(found);
            at += record_len(found.len);
            end = at;
            continue;
        }
        if whole.is_none() && head.iter().all(|&b| b == 0) {
            // A sealed pack's records end where its zeros begin.
            break;
        }
        let w = match &whole {
            Some(w) => w,
            None => whole.insert(read_at(file, 0, file_len as usize)?),
        };
        match resync(w, generation, at + 1) {
            Some(next) => {
                warn!(
                    generation,
                    from = at,
                    to = next,
                    "packs: damaged bytes skipped"
                );
                skipped.push((at, next));
                at = next;
            }
            None => break,
        }
    }
    Ok((out, end, skipped))
}

/// Heads of dead records (with the id all zeros) to write over `gap`, the bytes of a
/// skipped range starting at `start` in pack `generation`, so that every later scan, heads
/// only or not, steps over it to the records after it; `None` if it is too short to hold
/// one record.
pub(super) fn fillers(generation: u64, start: u64, gap: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let (min, max) = (HEAD + 32, HEAD + 32 + MAX_PACKED as usize);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < gap.len() {
        let left = gap.len() - at;
        if left < min {
            return None;
        }
        let mut piece = left.min(max);
        if left - piece != 0 && left - piece < min {
            piece = left - min;
        }
        let body_len = u32::try_from(piece - HEAD).ok()?;
        let rest = &gap[at + HEAD + 32..at + piece];
        let mut head = Vec::with_capacity(min);
        head.extend_from_slice(&MAGIC.to_le_bytes());
        head.extend_from_slice(&generation.to_le_bytes());
        head.push(DEAD);
        head.extend_from_slice(&body_len.to_le_bytes());
        head.extend_from_slice(&checksum(generation, body_len, &[&[0u8; 32], rest]));
        head.extend_from_slice(&[0u8; 32]);
        out.push((start + at as u64, head));
        at += piece;
    }
    Some(out)
}

/// The record whose head (and id) is `head`, at `at` in a pack of `file_len` bytes, if
/// it is one; with the pack's bytes in `whole`, only if its checksum holds.
fn parse(
    head: &[u8],
    generation: u64,
    at: u64,
    file_len: u64,
    whole: Option<&[u8]>,
) -> Option<Found> {
    let word = |i: usize, n: usize| &head[i..i + n];
    let magic = u32::from_le_bytes(word(0, 4).try_into().ok()?);
    let g = u64::from_le_bytes(word(4, 8).try_into().ok()?);
    let kind = head[12];
    let body_len = u32::from_le_bytes(word(13, 4).try_into().ok()?);
    let record = HEAD as u64 + u64::from(body_len);
    if magic != MAGIC
        || g != generation
        || !matches!(kind, LIVE | DEAD)
        || body_len < 32
        || u64::from(body_len) > 32 + MAX_PACKED
        || at + record > file_len
    {
        return None;
    }
    if let Some(w) = whole {
        let body = &w[(at as usize + HEAD)..(at + record) as usize];
        if checksum(generation, body_len, &[body]) != head[17..HEAD] {
            return None;
        }
    }
    Some(Found {
        kind,
        id: BlockId::from_slice(&head[HEAD..HEAD + 32]).ok()?,
        record: at,
        len: u64::from(body_len) - 32,
    })
}

/// The offset of the first whole record of pack `generation` at or after `from`.
fn resync(whole: &[u8], generation: u64, from: u64) -> Option<u64> {
    let first = MAGIC.to_le_bytes()[0];
    let file_len = whole.len() as u64;
    let mut at = from as usize;
    while at + HEAD + 32 <= whole.len() {
        let step = whole[at..].iter().position(|&b| b == first)?;
        at += step;
        if at + HEAD + 32 > whole.len() {
            return None;
        }
        if parse(
            &whole[at..at + HEAD + 32],
            generation,
            at as u64,
            file_len,
            Some(whole),
        )
        .is_some()
        {
            return Some(at as u64);
        }
        at += 1;
    }
    None
}

/// The blocks a stopped chunkserver's packs under `dir` hold (the index a start would
/// rebuild, without changing anything): for tools and tests that look at a data folder.
pub fn stored_offline(dir: &Path) -> io::Result<Vec<BlockId>> {
    Ok(offline_index(dir)?.into_keys().collect())
}

/// Marks block `id` dead in a stopped chunkserver's packs under `dir`, durably: for
/// tests that take a copy away. Returns whether it was there.
pub fn remove_offline(dir: &Path, id: &BlockId) -> io::Result<bool> {
    let Some((generation, record)) = offline_index(dir)?.remove(id) else {
        return Ok(false);
    };
    let f = OpenOptions::new()
        .write(true)
        .open(pack_path(dir, generation))?;
    f.write_all_at(&[DEAD], record + KIND_AT)?;
    f.sync_data()?;
    Ok(true)
}

/// Block id → (generation, record offset) as a start would find them.
fn offline_index(dir: &Path) -> io::Result<HashMap<BlockId, (u64, u64)>> {
    let mut index = HashMap::new();
    let found = match list(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
        Err(e) => return Err(e),
    };
    let last = found.last().copied();
    for generation in found {
        let file = match File::open(pack_path(dir, generation)) {
            Ok(f) => f,
            // Compacted away meanwhile (the chunkserver may be running).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (records, _, _) = scan(&file, generation, Some(generation) == last)?;
        apply(&mut index, &records, |r| (generation, r.record));
    }
    Ok(index)
}

/// Applies a pack's records, in order, to an index of where each block is, as every start
/// does: a live record replaces an older copy of its block, a dead one ends it. Returns
/// the older copies displaced.
pub(super) fn apply<T>(
    index: &mut HashMap<BlockId, T>,
    records: &[Found],
    place: impl Fn(&Found) -> T,
) -> Vec<T> {
    records
        .iter()
        .filter_map(|r| match r.kind {
            LIVE => index.insert(r.id, place(r)),
            _ => index.remove(&r.id),
        })
        .collect()
}
