//! A bounded in-memory cache of verified block plaintext, least recently used out first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use meridian_proto::BlockId;

#[derive(Default)]
struct Inner {
    blocks: HashMap<BlockId, (Bytes, u64)>,
    by_age: BTreeMap<u64, BlockId>,
    bytes: usize,
    tick: u64,
}

/// Blocks are immutable and named by their hash, so a cached block is never stale.
pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// The block, if cached (and marks it recently used).
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (data, age) = inner.blocks.get_mut(id)?;
        inner.by_age.remove(age);
        *age = tick;
        inner.by_age.insert(tick, *id);
        Some(data.clone())
    }

    /// Adds a verified block, evicting the least recently used ones beyond capacity.
    pub fn insert(&self, id: BlockId, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, age)) = inner.blocks.insert(id, (data.clone(), tick)) {
            inner.by_age.remove(&age);
            inner.bytes -= old.len();
        }
        inner.by_age.insert(tick, id);
        inner.bytes += data.len();
        while inner.bytes > self.capacity {
            let Some((_, victim)) = inner.by_age.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.blocks.remove(&victim) {
                inner.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let c = BlockCache::new(10);
        let (a, b, d) = (BlockId::of(b"a"), BlockId::of(b"b"), BlockId::of(b"d"));
        c.insert(a, Bytes::from_static(b"aaaa"));
        c.insert(b, Bytes::from_static(b"bbbb"));
        assert!(c.get(&a).is_some()); // a is now the most recent
        c.insert(d, Bytes::from_static(b"dddd"));
        assert!(c.get(&b).is_none(), "b was least recently used");
        assert!(c.get(&a).is_some() && c.get(&d).is_some());
        c.insert(BlockId::of(b"big"), Bytes::from(vec![0u8; 11]));
        assert!(
            c.get(&BlockId::of(b"big")).is_none(),
            "larger than the cache: not kept"
        );
    }
}
