//! A bounded in-memory cache of verified block plaintext, least recently used out first,
//! that fetches each missing block once however many readers want it at the same time.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

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
    /// Fetches in progress: the kernel's read-ahead asks for many pieces of one block at
    /// once, and each would otherwise fetch all of it.
    fetching: Mutex<HashMap<BlockId, Arc<OnceCell<Bytes>>>>,
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            inner: Mutex::default(),
            fetching: Mutex::default(),
        }
    }

    /// The most bytes it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks being fetched now.
    pub fn fetches(&self) -> usize {
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether `id` is neither cached nor being fetched (a read-ahead would help).
    pub fn wanted(&self, id: &BlockId) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocks
            .contains_key(id)
            && !self
                .fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(id)
    }

    /// The block: cached, or fetched by `fetch` (once for every caller waiting on it at the
    /// same time) and cached. A failed fetch is tried again by the next caller.
    pub async fn get_or_fetch<E, F>(
        &self,
        id: &BlockId,
        fetch: impl FnOnce() -> F,
    ) -> Result<Bytes, E>
    where
        F: Future<Output = Result<Bytes, E>>,
    {
        if let Some(b) = self.get(id) {
            return Ok(b);
        }
        let cell = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*id)
            .or_default()
            .clone();
        let got = cell
            .get_or_try_init(|| async {
                let data = fetch().await?;
                self.insert(*id, data.clone());
                Ok(data)
            })
            .await
            .cloned();
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if got.is_ok() && fetching.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            fetching.remove(id);
        }
        got
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
    fn readers_of_one_missing_block_share_one_fetch() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cache = Arc::new(BlockCache::new(1 << 20));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let id = BlockId::of(b"block");
        rt.block_on(async {
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let (cache, fetches) = (cache.clone(), fetches.clone());
                readers.spawn(async move {
                    cache
                        .get_or_fetch::<(), _>(&id, || async {
                            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok(Bytes::from_static(b"block"))
                        })
                        .await
                });
            }
            while let Some(r) = readers.join_next().await {
                assert_eq!(r.unwrap().unwrap(), Bytes::from_static(b"block"));
            }
            // A failure is not remembered: the next reader fetches again.
            let other = BlockId::of(b"other");
            assert!(
                cache
                    .get_or_fetch(&other, || async { Err::<Bytes, _>("down") })
                    .await
                    .is_err()
            );
            let again =
                cache.get_or_fetch::<(), _>(&other, || async { Ok(Bytes::from_static(b"other")) });
            assert_eq!(again.await.unwrap(), Bytes::from_static(b"other"));
        });
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

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
