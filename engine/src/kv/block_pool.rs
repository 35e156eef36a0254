//! The RAM tier: full KV blocks by chained hash, with reference counts and a byte budget.
//!
//! A running sequence holds a reference on every block it took from the pool or published to
//! it, so a hot prefix cannot be evicted under a conversation that is using it. Blocks nobody
//! references sit in an LRU and are evicted oldest first when a new block needs room. When
//! every block is referenced and the budget is spent, an insert is refused: the caller simply
//! does not cache that block (its own sequence keeps its KV), nothing waits and nothing fails.
//!
//! The pool is generic over the block's payload so that it is tested without a model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::prefix::BlockHash;

struct Entry<T> {
    data: Arc<T>,
    bytes: usize,
    refs: usize,
    /// Position in the LRU while unreferenced.
    lru_tick: Option<u64>,
}

/// Counters for metrics and the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub blocks: usize,
    pub referenced_blocks: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    /// Blocks that would still fit in the budget (0 until a block size is known).
    pub free_blocks: usize,
    pub evictions: u64,
    pub refused_inserts: u64,
}

impl PoolStats {
    /// The pool's numbers on `/metrics`. (Published here, so that `metrics` knows names and
    /// not the KV cache's types.)
    pub fn publish(&self, model: &str) {
        use crate::metrics::{KV_BLOCKS_FREE, KV_BLOCKS_USED, KV_BLOCK_EVICTIONS};
        use ::metrics::{counter, gauge};
        gauge!(KV_BLOCKS_USED, "model" => model.to_string()).set(self.blocks as f64);
        gauge!(KV_BLOCKS_FREE, "model" => model.to_string()).set(self.free_blocks as f64);
        counter!(KV_BLOCK_EVICTIONS, "model" => model.to_string()).absolute(self.evictions);
    }
}

/// Why an insert did not cache the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The block alone is larger than the whole budget.
    TooLarge,
    /// Every cached block is referenced and the budget is spent.
    Full,
}

pub struct BlockPool<T> {
    budget_bytes: usize,
    used_bytes: usize,
    entries: HashMap<BlockHash, Entry<T>>,
    /// Unreferenced blocks, least recently used first.
    lru: BTreeMap<u64, BlockHash>,
    tick: u64,
    block_bytes_seen: usize,
    evictions: u64,
    refused: u64,
}

impl<T> BlockPool<T> {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            block_bytes_seen: 0,
            evictions: 0,
            refused: 0,
        }
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.entries.contains_key(hash)
    }

    /// How many of `hashes`, from the first, are cached (no side effects).
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.entries.contains_key(h))
            .count()
    }

    /// Takes a reference on a cached block and returns its data.
    pub fn acquire(&mut self, hash: &BlockHash) -> Option<Arc<T>> {
        let entry = self.entries.get_mut(hash)?;
        if let Some(tick) = entry.lru_tick.take() {
            self.lru.remove(&tick);
        }
        entry.refs += 1;
        Some(entry.data.clone())
    }

    /// Drops a reference; a block nobody references becomes the most recently used of the LRU.
    pub fn release(&mut self, hash: &BlockHash) {
        let Some(entry) = self.entries.get_mut(hash) else {
            return;
        };
        if entry.refs == 0 {
            debug_assert!(false, "release without acquire");
            return;
        }
        entry.refs -= 1;
        if entry.refs == 0 {
            self.tick += 1;
            entry.lru_tick = Some(self.tick);
            self.lru.insert(self.tick, *hash);
        }
    }

    /// Caches `data` under `hash` and takes a reference on it for the caller. If the hash is
    /// already cached, references that block instead (`data` is dropped: same key, same KV).
    /// Evicts unreferenced blocks, least recently used first, to make room; the evicted
    /// hashes are appended to `evicted`. A refused block is handed back with the reason.
    pub fn insert(
        &mut self,
        hash: BlockHash,
        data: T,
        bytes: usize,
        evicted: &mut Vec<BlockHash>,
    ) -> Result<Arc<T>, (InsertError, T)> {
        if let Some(existing) = self.acquire(&hash) {
            return Ok(existing);
        }
        if bytes > self.budget_bytes {
            self.refused += 1;
            return Err((InsertError::TooLarge, data));
        }
        while self.used_bytes + bytes > self.budget_bytes {
            if !self.evict_one(None, evicted) {
                self.refused += 1;
                return Err((InsertError::Full, data));
            }
        }
        let data = Arc::new(data);
        self.used_bytes += bytes;
        self.block_bytes_seen = bytes;
        self.entries.insert(
            hash,
            Entry {
                data: data.clone(),
                bytes,
                refs: 1,
                lru_tick: None,
            },
        );
        Ok(data)
    }

    /// Counts `extra` more bytes against the cached block `hash` (something kept beside it
    /// that lives and dies with it: a hybrid model's state snapshot), evicting other
    /// unreferenced blocks to make room. False (nothing counted) when the block is not
    /// cached or there is no room.
    pub fn attach(&mut self, hash: &BlockHash, extra: usize, evicted: &mut Vec<BlockHash>) -> bool {
        if !self.entries.contains_key(hash) || extra > self.budget_bytes {
            return false;
        }
        while self.used_bytes + extra > self.budget_bytes {
            if !self.evict_one(Some(hash), evicted) {
                self.refused += 1;
                return false;
            }
        }
        let entry = self.entries.get_mut(hash).expect("checked above");
        entry.bytes += extra;
        self.used_bytes += extra;
        true
    }

    /// Gives back `extra` bytes attached to block `hash` (when it is still cached).
    pub fn detach(&mut self, hash: &BlockHash, extra: usize) {
        if let Some(entry) = self.entries.get_mut(hash) {
            let extra = extra.min(entry.bytes);
            entry.bytes -= extra;
            self.used_bytes -= extra;
        }
    }

    /// Evicts the least recently used unreferenced block other than `keep` (the LRU holds
    /// unreferenced blocks only). False when there is none.
    fn evict_one(&mut self, keep: Option<&BlockHash>, evicted: &mut Vec<BlockHash>) -> bool {
        let victim = self
            .lru
            .iter()
            .find(|(_, h)| Some(*h) != keep)
            .map(|(t, h)| (*t, *h));
        let Some((tick, victim)) = victim else {
            return false;
        };
        self.lru.remove(&tick);
        let gone = self
            .entries
            .remove(&victim)
            .expect("LRU entries are cached");
        self.used_bytes -= gone.bytes;
        self.evictions += 1;
        evicted.push(victim);
        true
    }

    /// Removes every unreferenced block (e.g. to give memory back).
    pub fn clear_unreferenced(&mut self) -> Vec<BlockHash> {
        let victims: Vec<BlockHash> = std::mem::take(&mut self.lru).into_values().collect();
        for v in &victims {
            if let Some(e) = self.entries.remove(v) {
                self.used_bytes -= e.bytes;
            }
        }
        victims
    }

    pub fn refs(&self, hash: &BlockHash) -> usize {
        self.entries.get(hash).map_or(0, |e| e.refs)
    }

    /// Unreferenced blocks, least recently used first.
    pub fn lru_order(&self) -> Vec<BlockHash> {
        self.lru.values().copied().collect()
    }

    pub fn stats(&self) -> PoolStats {
        let free = (self.budget_bytes - self.used_bytes)
            .checked_div(self.block_bytes_seen)
            .unwrap_or(0);
        PoolStats {
            blocks: self.entries.len(),
            referenced_blocks: self.entries.len() - self.lru.len(),
            bytes: self.used_bytes,
            budget_bytes: self.budget_bytes,
            free_blocks: free,
            evictions: self.evictions,
            refused_inserts: self.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> BlockHash {
        BlockHash([n; 16])
    }

    #[test]
    fn insert_then_acquire_shares_one_copy() {
        let mut pool = BlockPool::new(100);
        let mut ev = Vec::new();
        let a = pool.insert(h(1), "kv".to_string(), 10, &mut ev).unwrap();
        let b = pool.acquire(&h(1)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(pool.refs(&h(1)), 2);
        // A second insert under the same key references the cached block.
        let c = pool.insert(h(1), "other".to_string(), 10, &mut ev).unwrap();
        assert_eq!(*c, "kv");
        assert_eq!(pool.refs(&h(1)), 3);
        assert_eq!(pool.stats().bytes, 10);
    }

    #[test]
    fn longest_prefix_stops_at_the_first_miss() {
        let mut pool = BlockPool::new(100);
        let mut ev = Vec::new();
        for n in [1, 2, 4] {
            pool.insert(h(n), (), 10, &mut ev).unwrap();
        }
        assert_eq!(pool.longest_prefix(&[h(1), h(2), h(3), h(4)]), 2);
        assert_eq!(pool.longest_prefix(&[h(3), h(1)]), 0);
        assert_eq!(pool.longest_prefix(&[]), 0);
    }

    #[test]
    fn referenced_blocks_are_never_evicted() {
        let mut pool = BlockPool::new(20);
        let mut ev = Vec::new();
        pool.insert(h(1), (), 10, &mut ev).unwrap();
        pool.insert(h(2), (), 10, &mut ev).unwrap();
        assert_eq!(
            pool.insert(h(3), (), 10, &mut ev).unwrap_err().0,
            InsertError::Full
        );
        assert!(ev.is_empty());
        assert_eq!(pool.stats().refused_inserts, 1);
        pool.release(&h(2));
        pool.insert(h(3), (), 10, &mut ev).unwrap();
        assert_eq!(ev, vec![h(2)]);
        assert!(pool.contains(&h(1)) && !pool.contains(&h(2)));
    }

    #[test]
    fn eviction_follows_least_recent_release() {
        let mut pool = BlockPool::new(30);
        let mut ev = Vec::new();
        for n in 1..=3 {
            pool.insert(h(n), (), 10, &mut ev).unwrap();
        }
        pool.release(&h(2));
        pool.release(&h(1));
        pool.release(&h(3));
        assert_eq!(pool.lru_order(), vec![h(2), h(1), h(3)]);
        // Using a block moves it to the back.
        pool.acquire(&h(2)).unwrap();
        pool.release(&h(2));
        assert_eq!(pool.lru_order(), vec![h(1), h(3), h(2)]);
        pool.insert(h(4), (), 20, &mut ev).unwrap();
        assert_eq!(ev, vec![h(1), h(3)]);
        assert_eq!(pool.stats().evictions, 2);
    }

    #[test]
    fn ref_counts_go_up_and_down() {
        let mut pool = BlockPool::new(30);
        let mut ev = Vec::new();
        pool.insert(h(1), (), 10, &mut ev).unwrap();
        pool.acquire(&h(1));
        pool.release(&h(1));
        assert_eq!(pool.refs(&h(1)), 1);
        assert!(pool.lru_order().is_empty());
        pool.release(&h(1));
        assert_eq!(pool.refs(&h(1)), 0);
        assert_eq!(pool.lru_order(), vec![h(1)]);
        assert_eq!(pool.stats().referenced_blocks, 0);
        // Releasing an unknown block is harmless.
        pool.release(&h(9));
    }

    #[test]
    fn attached_bytes_count_against_the_budget_and_go_with_their_block() {
        let mut pool = BlockPool::new(40);
        let mut ev = Vec::new();
        pool.insert(h(1), (), 10, &mut ev).unwrap();
        pool.insert(h(2), (), 10, &mut ev).unwrap();
        pool.release(&h(1));
        // 25 more on block 2: block 1 (unreferenced) is evicted to make room.
        assert!(pool.attach(&h(2), 25, &mut ev));
        assert_eq!(ev, vec![h(1)]);
        assert_eq!(pool.stats().bytes, 35);
        // No room left that eviction could make (block 2 is referenced), nor a block to attach to.
        assert!(!pool.attach(&h(2), 6, &mut ev));
        assert!(!pool.attach(&h(9), 1, &mut ev));
        // Evicting the block frees what was attached to it.
        pool.release(&h(2));
        pool.insert(h(3), (), 40, &mut ev).unwrap();
        assert_eq!(ev, vec![h(1), h(2)]);
        assert_eq!(pool.stats().bytes, 40);
    }

    #[test]
    fn too_large_and_accounting() {
        let mut pool = BlockPool::new(25);
        let mut ev = Vec::new();
        assert_eq!(
            pool.insert(h(1), (), 26, &mut ev).unwrap_err().0,
            InsertError::TooLarge
        );
        pool.insert(h(2), (), 10, &mut ev).unwrap();
        let s = pool.stats();
        assert_eq!((s.blocks, s.bytes, s.free_blocks), (1, 10, 1));
        pool.release(&h(2));
        assert_eq!(pool.clear_unreferenced(), vec![h(2)]);
        assert_eq!(pool.stats().bytes, 0);
    }
}
