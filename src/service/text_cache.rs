//! A bounded cache of recent text embeddings, keyed by token ids.
//!
//! Search front-ends send the same short queries again and again ("cat", "beach", a label set
//! for zero-shot classification); a hit answers without queueing or running the text tower.
//! The key is the token id sequence, not the text, so texts that clean and tokenize alike share
//! an entry and a hit is exactly what the tower would have returned.
//!
//! Eviction is least-recently-used, approximated with two generations: entries go into the
//! young map; when it holds half the capacity, the old map is dropped and the young one takes
//! its place. A hit in the old generation moves the entry back to the young one, so anything
//! used within the last half-capacity of insertions stays. Every operation is O(1) and the
//! cache never holds more than `capacity` entries.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::embedding::Embedding;

/// Recent text embeddings by token ids (see the module docs). Cheap to share behind an `Arc`.
pub struct TextCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Box<[u32]>, Embedding>,
    old: HashMap<Box<[u32]>, Embedding>,
}

impl TextCache {
    /// A cache of at most `capacity` embeddings; 0 disables it (every lookup misses, nothing
    /// is stored).
    pub fn new(capacity: usize) -> TextCache {
        TextCache {
            capacity,
            generations: Mutex::new(Generations::default()),
        }
    }

    /// Most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached embedding of these token ids, if any; a hit counts as a use.
    pub fn get(&self, ids: &[u32]) -> Option<Embedding> {
        if self.capacity == 0 {
            return None;
        }
        let mut g = self.lock();
        if let Some(e) = g.young.get(ids) {
            return Some(e.clone());
        }
        let (key, e) = g.old.remove_entry(ids)?;
        self.insert_young(&mut g, key, e.clone());
        Some(e)
    }

    /// Remembers the embedding of these token ids.
    pub fn put(&self, ids: &[u32], embedding: Embedding) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        g.old.remove(ids);
        self.insert_young(&mut g, ids.into(), embedding);
    }

    fn insert_young(&self, g: &mut Generations, key: Box<[u32]>, e: Embedding) {
        // Half the capacity per generation (at least one entry), so both stay within it.
        let half = self.capacity.div_ceil(2);
        if g.young.len() >= half && !g.young.contains_key(&key) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, e);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps are only ever left consistent (no panics mid-update), so a poisoned lock
        // still guards valid data.
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for TextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(x: f32) -> Embedding {
        Embedding::new(vec![x, 1.0]).expect("a finite non-zero vector")
    }

    #[test]
    fn a_stored_embedding_is_found_by_its_token_ids() {
        let cache = TextCache::new(8);
        assert!(cache.get(&[0, 5, 2]).is_none());
        cache.put(&[0, 5, 2], emb(3.0));
        let hit = cache.get(&[0, 5, 2]).expect("a hit");
        assert_eq!(hit.as_slice(), emb(3.0).as_slice());
        assert!(cache.get(&[0, 5, 6, 2]).is_none());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let cache = TextCache::new(10);
        for i in 0..1000u32 {
            cache.put(&[0, i, 2], emb(i as f32));
            assert!(cache.len() <= 10, "{} entries after {i}", cache.len());
        }
    }

    #[test]
    fn recently_used_entries_survive_eviction_and_stale_ones_go() {
        let cache = TextCache::new(4);
        cache.put(&[1], emb(1.0));
        cache.put(&[2], emb(2.0));
        // [1] and [2] move to the old generation; using [1] brings it back.
        cache.put(&[3], emb(3.0));
        assert!(cache.get(&[1]).is_some());
        cache.put(&[4], emb(4.0));
        cache.put(&[5], emb(5.0));
        assert!(cache.get(&[1]).is_some(), "used recently");
        assert!(cache.get(&[2]).is_none(), "never used again");
    }

    #[test]
    fn a_zero_capacity_cache_stores_nothing() {
        let cache = TextCache::new(0);
        cache.put(&[1, 2], emb(1.0));
        assert!(cache.get(&[1, 2]).is_none());
        assert!(cache.is_empty());
    }
}
