//! Resources that the logs of one shard share: the tail cache, the
//! open-file budget and a small pool of write buffers. A `StorageShard` is
//! `!Send`: it never leaves its core.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::io::DmaBuffer;

use crate::cache::{CacheKey, TailCache};
use crate::{Error, Result};

/// Limits of one shard's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardConfig {
    /// Bytes of recent batches kept in memory (default 256 MiB).
    pub cache_bytes: u64,
    /// Files the shard's logs may hold open at once (default 10,000).
    pub open_files_max: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            cache_bytes: 256 * 1024 * 1024,
            open_files_max: 10_000,
        }
    }
}

/// The shared per-shard storage state. Cheap to clone (an `Rc`).
#[derive(Debug, Clone)]
pub struct StorageShard {
    inner: Rc<ShardInner>,
}

#[derive(Debug)]
struct ShardInner {
    config: ShardConfig,
    cache: RefCell<TailCache>,
    open_files: Cell<u32>,
    next_cache_key: Cell<u64>,
    write_buffers: RefCell<BufferPool>,
    flushes: RefCell<FlushLatencies>,
}

/// Upper bounds of the fdatasync latency buckets, in microseconds.
pub const FLUSH_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// fdatasync latencies of one shard's logs, in fixed buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushLatencies {
    /// Syncs at or below each bound of [`FLUSH_BUCKETS_US`] (not cumulative); one more for the rest.
    pub counts: [u64; FLUSH_BUCKETS_US.len() + 1],
    /// Sum of every sync's duration.
    pub sum_us: u64,
    /// Number of syncs.
    pub count: u64,
}

impl FlushLatencies {
    fn record(&mut self, elapsed_us: u64) {
        let bucket = FLUSH_BUCKETS_US
            .iter()
            .position(|bound| elapsed_us <= *bound)
            .unwrap_or(FLUSH_BUCKETS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(elapsed_us);
        self.count += 1;
    }
}

impl StorageShard {
    /// A shard with the given limits.
    pub fn new(config: ShardConfig) -> StorageShard {
        let inner = ShardInner {
            config,
            cache: RefCell::new(TailCache::new(config.cache_bytes)),
            open_files: Cell::new(0),
            next_cache_key: Cell::new(1),
            write_buffers: RefCell::new(BufferPool::new(WRITE_BUFFERS_MAX, ROUND_BYTES)),
            flushes: RefCell::new(FlushLatencies::default()),
        };
        StorageShard {
            inner: Rc::new(inner),
        }
    }

    /// The limits this shard was built with.
    pub fn config(&self) -> ShardConfig {
        self.inner.config
    }

    /// Files held open now by this shard's logs.
    pub fn open_files(&self) -> u32 {
        self.inner.open_files.get()
    }

    /// The fdatasync latencies recorded so far.
    pub fn flush_latencies(&self) -> FlushLatencies {
        self.inner.flushes.borrow().clone()
    }

    pub(crate) fn record_flush(&self, elapsed: std::time::Duration) {
        self.inner
            .flushes
            .borrow_mut()
            .record(elapsed.as_micros() as u64);
    }

    /// Bytes held by the tail cache now.
    pub fn cache_used_bytes(&self) -> u64 {
        self.inner.cache.borrow().used_bytes()
    }

    pub(crate) fn cache(&self) -> &RefCell<TailCache> {
        &self.inner.cache
    }

    pub(crate) fn new_cache_key(&self) -> CacheKey {
        let key = self.inner.next_cache_key.get();
        self.inner.next_cache_key.set(key + 1);
        CacheKey(key)
    }

    /// A write buffer of exactly [`ROUND_BYTES`] from the pool, if one is free.
    pub(crate) fn take_write_buffer(&self) -> Option<DmaBuffer> {
        self.inner.write_buffers.borrow_mut().take()
    }

    /// Returns a write buffer to the pool; it is dropped if the pool is full
    /// or the buffer is not [`ROUND_BYTES`] long.
    pub(crate) fn give_write_buffer(&self, buffer: DmaBuffer) {
        self.inner.write_buffers.borrow_mut().give(buffer);
    }

    /// Takes one slot of the open-file budget; the returned guard gives it back.
    pub(crate) fn reserve_file(&self) -> Result<FileSlot> {
        let open = self.inner.open_files.get();
        if open >= self.inner.config.open_files_max {
            return Err(Error::TooManyOpenFiles {
                limit: self.inner.config.open_files_max,
            });
        }
        self.inner.open_files.set(open + 1);
        Ok(FileSlot {
            shard: self.clone(),
        })
    }
}

/// Bytes of a full write round: the writer cuts a long run of queued batches
/// into rounds of this size (aligned, so that consecutive rounds never share
/// a block) and keeps several in flight.
pub(crate) const ROUND_BYTES: usize = 2 * 1024 * 1024;

/// Full-round buffers a shard keeps for reuse (4 MiB per shard, beside
/// glommio's default 10 MiB of registered I/O memory).
pub(crate) const WRITE_BUFFERS_MAX: usize = 2;

/// A bounded stack of equally sized DMA buffers. Buffers belong to the
/// executor that allocated them (their registration is per io_uring), so
/// the pool empties itself when it is used from another executor.
#[derive(Debug)]
pub(crate) struct BufferPool {
    buffers: Vec<DmaBuffer>,
    count_max: usize,
    buffer_bytes: usize,
    executor_id: Option<usize>,
}

impl BufferPool {
    pub(crate) fn new(count_max: usize, buffer_bytes: usize) -> BufferPool {
        BufferPool {
            buffers: Vec::new(),
            count_max,
            buffer_bytes,
            executor_id: None,
        }
    }

    fn check_executor(&mut self) {
        let id = glommio::executor().id();
        if self.executor_id != Some(id) {
            self.buffers.clear();
            self.executor_id = Some(id);
        }
    }

    pub(crate) fn take(&mut self) -> Option<DmaBuffer> {
        self.check_executor();
        self.buffers.pop()
    }

    pub(crate) fn give(&mut self, buffer: DmaBuffer) {
        self.check_executor();
        if buffer.len() == self.buffer_bytes && self.buffers.len() < self.count_max {
            self.buffers.push(buffer);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buffers.len()
    }
}

/// One slot of the open-file budget, held as long as its file is open.
#[derive(Debug)]
pub(crate) struct FileSlot {
    shard: StorageShard,
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        let open = self.shard.inner.open_files.get();
        assert!(open > 0);
        self.shard.inner.open_files.set(open - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_pool_is_bounded_and_keeps_only_full_size_buffers() {
        glommio::LocalExecutor::default().run(async {
            let dir = tempfile::tempdir().unwrap();
            let file = glommio::io::DmaFile::create(dir.path().join("f"))
                .await
                .unwrap();
            let mut pool = BufferPool::new(2, 8192);
            assert!(pool.take().is_none());
            pool.give(file.alloc_dma_buffer(4096));
            assert_eq!(pool.len(), 0, "a buffer of another size is dropped");
            for _ in 0..3 {
                pool.give(file.alloc_dma_buffer(8192));
            }
            assert_eq!(pool.len(), 2, "the pool holds at most count_max buffers");
            assert_eq!(pool.take().unwrap().len(), 8192);
            assert_eq!(pool.len(), 1);
            file.close().await.unwrap();
        });
        // Another executor on the same thread: the old buffers are not handed out.
        let mut pool = BufferPool::new(2, 8192);
        glommio::LocalExecutor::default().run(async {
            let dir = tempfile::tempdir().unwrap();
            let file = glommio::io::DmaFile::create(dir.path().join("f"))
                .await
                .unwrap();
            pool.give(file.alloc_dma_buffer(8192));
            assert_eq!(pool.len(), 1);
            file.close().await.unwrap();
        });
        glommio::LocalExecutor::default().run(async {
            assert!(pool.take().is_none());
            assert_eq!(pool.len(), 0);
        });
    }

    #[test]
    fn a_shard_pools_full_rounds_only() {
        glommio::LocalExecutor::default().run(async {
            let dir = tempfile::tempdir().unwrap();
            let file = glommio::io::DmaFile::create(dir.path().join("f"))
                .await
                .unwrap();
            let shard = StorageShard::new(ShardConfig::default());
            for _ in 0..WRITE_BUFFERS_MAX + 3 {
                shard.give_write_buffer(file.alloc_dma_buffer(ROUND_BYTES));
            }
            shard.give_write_buffer(file.alloc_dma_buffer(ROUND_BYTES - 4096));
            assert_eq!(shard.inner.write_buffers.borrow().len(), WRITE_BUFFERS_MAX);
            let taken: Vec<_> = std::iter::from_fn(|| shard.take_write_buffer()).collect();
            assert_eq!(taken.len(), WRITE_BUFFERS_MAX);
            assert!(taken.iter().all(|b| b.len() == ROUND_BYTES));
            file.close().await.unwrap();
        });
    }
}
