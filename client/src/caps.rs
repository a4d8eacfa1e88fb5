//! The block capabilities this client holds (docs/adr/0016): the metaservers attach one to
//! each block of the extents they tell a token holder, and a put hands one back for the
//! block it stored; a chunkserver checking tokens serves a block only with one. Kept for
//! the whole process (a mount serves one token), at most [`MAX_CAPS`], the oldest dropped
//! first: a read whose capability was dropped asks for the file's extents again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use meridian_proto::BlockId;
use meridian_proto::token::CAP_LEN;

/// Most capabilities held (4 TiB of 4 MiB blocks; about 100 bytes each).
pub const MAX_CAPS: usize = 1 << 20;

#[derive(Default)]
struct Caps {
    /// By block: the volumes it was given for, each with its capability.
    by_block: HashMap<BlockId, Vec<(u32, [u8; CAP_LEN])>>,
    order: VecDeque<(BlockId, u32)>,
}

static CAPS: Mutex<Option<Caps>> = Mutex::new(None);
static SEEN: AtomicBool = AtomicBool::new(false);

/// Whether this process has been given any capability (so runs with tokens).
pub fn in_use() -> bool {
    SEEN.load(Ordering::Relaxed)
}

/// Keeps the capability `cap` for `block` in `volume`.
pub fn record(block: BlockId, volume: u32, cap: &[u8]) {
    let Ok(cap) = <[u8; CAP_LEN]>::try_from(cap) else {
        return;
    };
    SEEN.store(true, Ordering::Relaxed);
    let mut guard = CAPS.lock().unwrap_or_else(|p| p.into_inner());
    let caps = guard.get_or_insert_with(Caps::default);
    let held = caps.by_block.entry(block).or_default();
    if held.iter().any(|(v, _)| *v == volume) {
        return;
    }
    held.push((volume, cap));
    caps.order.push_back((block, volume));
    while caps.order.len() > MAX_CAPS {
        let Some((old, v)) = caps.order.pop_front() else {
            break;
        };
        if let Some(held) = caps.by_block.get_mut(&old) {
            held.retain(|(w, _)| *w != v);
            if held.is_empty() {
                caps.by_block.remove(&old);
            }
        }
    }
}

/// Every capability held for the blocks `ops` add to files (for whichever volumes), as
/// the records a change carries; nothing, and no work, for a client without a token.
pub fn for_ops<'a>(ops: impl IntoIterator<Item = &'a meridian_proto::ns::Op>) -> Bytes {
    if !in_use() {
        return Bytes::new();
    }
    let blocks: Vec<BlockId> = ops.into_iter().flat_map(|op| op.blocks_added()).collect();
    for_blocks(&blocks)
}

/// Every capability held for `blocks` (for whichever volumes), as the records a change
/// that adds them to a file carries.
fn for_blocks(blocks: &[BlockId]) -> Bytes {
    if blocks.is_empty() {
        return Bytes::new();
    }
    let guard = CAPS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(caps) = guard.as_ref() else {
        return Bytes::new();
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for b in blocks {
        if !seen.insert(*b) {
            continue;
        }
        for (volume, cap) in caps.by_block.get(b).into_iter().flatten() {
            out.extend_from_slice(b.as_bytes());
            out.extend_from_slice(&volume.to_le_bytes());
            out.extend_from_slice(cap);
        }
    }
    Bytes::from(out)
}

/// Keeps the capabilities of a query's answer: records of a block id, a volume (u32,
/// little-endian) and a capability. A malformed tail is ignored.
pub fn record_all(records: &[u8]) {
    for r in records.chunks_exact(32 + 4 + CAP_LEN) {
        let (Ok(block), Ok(volume)) = (
            BlockId::from_slice(&r[..32]),
            <[u8; 4]>::try_from(&r[32..36]),
        ) else {
            continue;
        };
        record(block, u32::from_le_bytes(volume), &r[36..]);
    }
}

/// The capability for `block` in `volume`, if this client holds one.
pub fn get(block: &BlockId, volume: u32) -> Bytes {
    let guard = CAPS.lock().unwrap_or_else(|p| p.into_inner());
    guard
        .as_ref()
        .and_then(|c| c.by_block.get(block))
        .and_then(|held| held.iter().find(|(v, _)| *v == volume))
        .map(|(_, c)| Bytes::copy_from_slice(c))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_block_and_volume() {
        let (a, b) = (BlockId::of(b"caps a"), BlockId::of(b"caps b"));
        let mut wire = Vec::new();
        wire.extend_from_slice(a.as_bytes());
        wire.extend_from_slice(&7u32.to_le_bytes());
        wire.extend_from_slice(&[9u8; CAP_LEN]);
        wire.extend_from_slice(&[1, 2, 3]); // a malformed tail
        record_all(&wire);
        assert_eq!(&get(&a, 7)[..], &[9u8; CAP_LEN]);
        assert!(get(&a, 8).is_empty());
        assert!(get(&b, 7).is_empty());
        assert!(in_use());
        record(a, 8, &[5u8; CAP_LEN]);
        let sent = for_blocks(&[a, b, a]);
        assert_eq!(
            sent.len(),
            2 * (36 + CAP_LEN),
            "both of a's, once each; none of b"
        );
        assert!(for_blocks(&[b]).is_empty());
    }
}
