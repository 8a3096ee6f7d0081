//! The per-shard tail cache: the most recent batches of each partition, kept
//! in memory after their write so that consumers at the tail never touch the
//! disk.
//!
//! ```text
//!   partition 7:  [b 100..110][b 110..140][b 140..141]   <- ends at the log's written end
//!   partition 9:            [b 5..9][b 9..30]
//!   eviction: oldest batch of the least recently used partition first
//! ```
//!
//! Invariant: a partition's cached batches are contiguous and end at the
//! log's written end; anything that would break contiguity drops that
//! partition's entries instead. Bytes held are bounded by `capacity_bytes`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

/// Identifies a partition log within its shard's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u64);

#[derive(Debug)]
struct CachedBatch {
    base_offset: u64,
    next_offset: u64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct PartitionEntries {
    batches: VecDeque<CachedBatch>,
    last_used_tick: u64,
}

/// A bounded, LRU tail cache shared by the logs of one shard.
#[derive(Debug)]
pub struct TailCache {
    capacity_bytes: u64,
    used_bytes: u64,
    tick: u64,
    partitions: HashMap<CacheKey, PartitionEntries>,
    lru: BTreeMap<u64, CacheKey>,
}

impl TailCache {
    /// A cache holding at most `capacity_bytes` of batches (0 disables it).
    pub fn new(capacity_bytes: u64) -> TailCache {
        TailCache {
            capacity_bytes,
            used_bytes: 0,
            tick: 0,
            partitions: HashMap::new(),
            lru: BTreeMap::new(),
        }
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Adds the batch `[base_offset, next_offset)` at the tail of `key`.
    pub fn insert(&mut self, key: CacheKey, base_offset: u64, next_offset: u64, bytes: Bytes) {
        assert!(base_offset < next_offset);
        let size = bytes.len() as u64;
        if size > self.capacity_bytes {
            self.remove(key);
            return;
        }
        let contiguous = match self.partitions.get(&key).and_then(|p| p.batches.back()) {
            Some(last) => last.next_offset == base_offset,
            None => true,
        };
        if !contiguous {
            self.remove(key);
        }
        self.touch(key);
        let entries = self.partitions.entry(key).or_default();
        entries.batches.push_back(CachedBatch {
            base_offset,
            next_offset,
            bytes,
        });
        self.used_bytes += size;
        self.evict();
    }

    /// The cached batches of `key` from the one holding `offset`, in order,
    /// stopping before `max_bytes` would be passed (one batch is always
    /// returned) and before `end_offset`. `None` when `offset` is not cached.
    pub fn read(
        &mut self,
        key: CacheKey,
        offset: u64,
        max_bytes: u64,
        end_offset: u64,
    ) -> Option<Vec<Bytes>> {
        let entries = self.partitions.get(&key)?;
        let first = entries.batches.front()?;
        if offset < first.base_offset || offset >= end_offset {
            return None;
        }
        let start = entries.batches.partition_point(|b| b.next_offset <= offset);
        let mut parts = Vec::new();
        let mut taken_bytes = 0u64;
        for batch in entries.batches.range(start..) {
            let over = taken_bytes + batch.bytes.len() as u64 > max_bytes;
            if batch.base_offset >= end_offset || (over && !parts.is_empty()) {
                break;
            }
            taken_bytes += batch.bytes.len() as u64;
            parts.push(batch.bytes.clone());
        }
        if parts.is_empty() {
            return None;
        }
        self.touch(key);
        Some(parts)
    }

    /// Drops every batch of `key` (after a truncation or when the log closes).
    pub fn remove(&mut self, key: CacheKey) {
        if let Some(entries) = self.partitions.remove(&key) {
            self.lru.remove(&entries.last_used_tick);
            let bytes: u64 = entries.batches.iter().map(|b| b.bytes.len() as u64).sum();
            self.used_bytes -= bytes;
        }
    }

    fn touch(&mut self, key: CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        let entries = self.partitions.entry(key).or_default();
        if entries.last_used_tick != 0 {
            self.lru.remove(&entries.last_used_tick);
        }
        entries.last_used_tick = tick;
        self.lru.insert(tick, key);
    }

    fn evict(&mut self) {
        while self.used_bytes > self.capacity_bytes {
            let Some((&tick, &key)) = self.lru.iter().next() else {
                break;
            };
            let entries = self
                .partitions
                .get_mut(&key)
                .expect("every LRU key has entries");
            assert!(entries.last_used_tick == tick);
            if let Some(batch) = entries.batches.pop_front() {
                self.used_bytes -= batch.bytes.len() as u64;
            }
            if entries.batches.is_empty() {
                self.lru.remove(&tick);
                self.partitions.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![1u8; n])
    }

    #[test]
    fn serves_from_the_batch_holding_the_offset() {
        let mut cache = TailCache::new(1000);
        let key = CacheKey(1);
        cache.insert(key, 0, 10, bytes(100));
        cache.insert(key, 10, 20, bytes(100));
        cache.insert(key, 20, 21, bytes(100));
        assert_eq!(cache.read(key, 15, 1000, 21).unwrap().len(), 2);
        assert_eq!(
            cache.read(key, 15, 150, 21).unwrap().len(),
            1,
            "max bytes cuts on a batch boundary"
        );
        assert_eq!(
            cache.read(key, 0, 1, 21).unwrap().len(),
            1,
            "one batch even when larger than max bytes"
        );
        assert_eq!(
            cache.read(key, 0, 1000, 10).unwrap().len(),
            1,
            "end offset is respected"
        );
        assert!(cache.read(key, 21, 1000, 21).is_none());
    }

    #[test]
    fn evicts_oldest_batches_of_the_least_recently_used_partition() {
        let mut cache = TailCache::new(300);
        cache.insert(CacheKey(1), 0, 1, bytes(100));
        cache.insert(CacheKey(2), 0, 1, bytes(100));
        cache.insert(CacheKey(1), 1, 2, bytes(100));
        cache.insert(CacheKey(2), 1, 2, bytes(100));
        assert_eq!(cache.used_bytes(), 300);
        assert!(
            cache.read(CacheKey(1), 0, 1000, 2).is_none(),
            "partition 1 was least recently used"
        );
        assert!(cache.read(CacheKey(1), 1, 1000, 2).is_some());
        assert_eq!(cache.read(CacheKey(2), 0, 1000, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_gap_drops_the_partition() {
        let mut cache = TailCache::new(1000);
        cache.insert(CacheKey(1), 0, 1, bytes(10));
        cache.insert(CacheKey(1), 5, 6, bytes(10));
        assert!(cache.read(CacheKey(1), 0, 100, 6).is_none());
        assert_eq!(cache.used_bytes(), 10);
        cache.insert(CacheKey(1), 6, 7, bytes(2000));
        assert_eq!(
            cache.used_bytes(),
            0,
            "a batch larger than the cache clears the partition"
        );
    }
}
