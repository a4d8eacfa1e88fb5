//! A map that keeps its latest entries: at most a fixed number, the oldest insert out
//! first. For facts fixed by a block id (a verified outboard, a header), which are never
//! stale, only forgotten for room.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

/// At most `capacity` entries, the oldest inserted out first; safe to share.
#[derive(Debug)]
pub struct Recent<K, V> {
    capacity: usize,
    inner: Mutex<(HashMap<K, V>, VecDeque<K>)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    /// An empty map holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Recent {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<K, V>, VecDeque<K>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `k`, if kept.
    pub fn get(&self, k: &K) -> Option<V> {
        self.lock().0.get(k).cloned()
    }

    /// Keeps `v` for `k`, forgetting the oldest entries beyond the capacity.
    pub fn insert(&self, k: K, v: V) {
        let mut g = self.lock();
        let (map, order) = &mut *g;
        if map.insert(k.clone(), v).is_none() {
            order.push_back(k);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Forgets `k`.
    pub fn forget(&self, k: &K) {
        let mut g = self.lock();
        let (map, order) = &mut *g;
        if map.remove(k).is_some() {
            order.retain(|x| x != k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first_and_forgotten_ones_are_gone() {
        let r = Recent::new(2);
        r.insert(1, "a");
        r.insert(2, "b");
        r.insert(1, "a2");
        r.insert(3, "c");
        assert_eq!(r.get(&1), None);
        assert_eq!(r.get(&2), Some("b"));
        assert_eq!(r.get(&3), Some("c"));
        r.forget(&2);
        assert_eq!(r.get(&2), None);
        r.insert(4, "d");
        assert_eq!((r.get(&3), r.get(&4)), (Some("c"), Some("d")));
    }
}
