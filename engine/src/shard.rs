//! Resources that the logs of one shard share: the tail cache, the
//! open-file budget and a small pool of write buffers. A `StorageShard` is
//! `!Send`: it never leaves its core.
//!
//! # The open-file budget
//!
//! ```text
//!  open_files_max ┬─ pinned: one active segment per log, O_DIRECT, never closed
//!                 │   (at most pinned_files_max() = open_files_max minus the sealed reserve)
//!                 └─ sealed: segments opened by reads, one LRU for the whole shard
//!                     least recently used ◄── [log 3 seg 0] [log 9 seg 4] [log 3 seg 2] ──► most recent
//! ```
//!
//! Why one LRU for the shard and not one per log: the budget is the
//! shard's, so a log whose readers need a file must be able to take it from
//! a log whose readers went away; closing only one's own idle files starves
//! the log that needs one while another sits on idle files. A file that an
//! in-flight read still holds (its `Rc` is shared by a `ReadPart::File`
//! being sent) is not idle and is skipped. Why a reserve: with every slot
//! pinned by active segments, no sealed segment could be read at all; the
//! reserve (`sealed_files_reserved_percent`) keeps some slots that only
//! sealed reads use, and [`StorageShard::pinned_files_max`] is the number
//! the broker checks before it creates partitions here.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaBuffer};

use crate::cache::{CacheKey, TailCache};
use crate::{Error, Result};

/// Limits of one shard's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardConfig {
    /// Bytes of recent batches kept in memory (default 256 MiB).
    pub cache_bytes: u64,
    /// Files the shard's logs may hold open at once, active and sealed
    /// segments together (default 10,000).
    pub open_files_max: u32,
    /// Share of `open_files_max` that active segments may not take, so that
    /// sealed segments can always be read (default 10; at most 100). The
    /// reserve rounds down: with fewer than 10 files it is 0 at the default.
    pub sealed_files_reserved_percent: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            cache_bytes: 256 * 1024 * 1024,
            open_files_max: 10_000,
            sealed_files_reserved_percent: 10,
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
    /// Active segments held open, one per log.
    pinned_files: Cell<u32>,
    /// Sealed files being opened: counted before the open completes so
    /// that concurrent opens cannot pass the budget.
    opening_files: Cell<u32>,
    sealed_files: RefCell<SealedFiles>,
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
    ///
    /// # Panics
    /// If `sealed_files_reserved_percent` is above 100.
    pub fn new(config: ShardConfig) -> StorageShard {
        assert!(
            config.sealed_files_reserved_percent <= 100,
            "sealed_files_reserved_percent is a percentage"
        );
        let inner = ShardInner {
            config,
            cache: RefCell::new(TailCache::new(config.cache_bytes)),
            pinned_files: Cell::new(0),
            opening_files: Cell::new(0),
            sealed_files: RefCell::new(SealedFiles::default()),
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

    /// Files held open now by this shard's logs: pinned and sealed (and
    /// sealed ones being opened). At most `config().open_files_max`, except
    /// for sealed files that in-flight reads still hold after their segment
    /// was deleted.
    pub fn open_files(&self) -> u32 {
        let sealed = self.inner.sealed_files.borrow().files.len() as u32;
        self.inner.pinned_files.get() + self.inner.opening_files.get() + sealed
    }

    /// Active segments held open (one per open log); they are never closed
    /// to make room.
    pub fn pinned_files(&self) -> u32 {
        self.inner.pinned_files.get()
    }

    /// The most active segments (so the most logs) this shard takes:
    /// `open_files_max` minus the sealed reserve. The broker should refuse
    /// to create partitions here up front when `pinned_files()` plus the new
    /// partitions would pass it; opening a log past it fails with
    /// [`Error::TooManyOpenFiles`].
    pub fn pinned_files_max(&self) -> u32 {
        let config = &self.inner.config;
        let reserved = u64::from(config.open_files_max)
            * u64::from(config.sealed_files_reserved_percent)
            / 100;
        config.open_files_max - reserved as u32
    }

    /// Sealed-segment files open now (in the shard's LRU).
    pub fn sealed_files_open(&self) -> u32 {
        self.inner.sealed_files.borrow().files.len() as u32
    }

    /// Idle sealed files closed so far to make room for another file.
    pub fn sealed_file_evictions(&self) -> u64 {
        self.inner.sealed_files.borrow().evictions_count
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

    /// Takes one pinned slot for an active segment, closing the least
    /// recently used idle sealed file when the budget is full; the returned
    /// guard gives the slot back.
    pub(crate) fn reserve_file(&self) -> Result<FileSlot> {
        let pinned_files_max = self.pinned_files_max();
        if self.inner.pinned_files.get() >= pinned_files_max {
            return Err(Error::TooManyOpenFiles {
                limit: pinned_files_max,
            });
        }
        self.make_room()?;
        self.inner
            .pinned_files
            .set(self.inner.pinned_files.get() + 1);
        Ok(FileSlot {
            shard: self.clone(),
        })
    }

    /// The sealed segment `base_offset` of log `log`, from the LRU or opened
    /// (through the page cache) from `path`.
    ///
    /// # Errors
    /// [`Error::TooManyOpenFiles`] when the budget is full and every sealed
    /// file is in use by a read; I/O errors opening the file.
    pub(crate) async fn sealed_file(
        &self,
        log: CacheKey,
        base_offset: u64,
        path: &Path,
    ) -> Result<Rc<BufferedFile>> {
        let key = (log, base_offset);
        if let Some(file) = self.inner.sealed_files.borrow_mut().touch(key) {
            return Ok(file);
        }
        self.make_room()?;
        let opening = Opening::new(self);
        let opened = BufferedFile::open(path).await;
        drop(opening);
        let file = Rc::new(opened.map_err(|e| Error::io("opening segment", path, e))?);
        // Another read may have opened it meanwhile: keep one.
        Ok(self.inner.sealed_files.borrow_mut().insert(key, file))
    }

    /// Closes the sealed file of a segment that was deleted or changed.
    pub(crate) fn forget_sealed_file(&self, log: CacheKey, base_offset: u64) {
        self.inner
            .sealed_files
            .borrow_mut()
            .remove_range((log, base_offset)..=(log, base_offset));
    }

    /// Closes every sealed file of a log that closes.
    pub(crate) fn forget_log(&self, log: CacheKey) {
        self.inner
            .sealed_files
            .borrow_mut()
            .remove_range((log, 0)..=(log, u64::MAX));
    }

    /// Frees a slot when the budget is full, by closing an idle sealed file.
    fn make_room(&self) -> Result<()> {
        let open_files_max = self.inner.config.open_files_max;
        if self.open_files() < open_files_max {
            return Ok(());
        }
        if self.inner.sealed_files.borrow_mut().evict_idle() {
            assert!(self.open_files() < open_files_max);
            return Ok(());
        }
        Err(Error::TooManyOpenFiles {
            limit: open_files_max,
        })
    }

    #[cfg(test)]
    pub(crate) fn sealed_file_is_open(&self, log: CacheKey, base_offset: u64) -> bool {
        let sealed = self.inner.sealed_files.borrow();
        sealed.files.contains_key(&(log, base_offset))
    }
}

/// The shard's open sealed-segment files, keyed by (log, base offset), in LRU order.
#[derive(Debug, Default)]
struct SealedFiles {
    tick: u64,
    files: BTreeMap<(CacheKey, u64), SealedFile>,
    /// Last-use tick → key; the first entry is the least recently used.
    lru: BTreeMap<u64, (CacheKey, u64)>,
    evictions_count: u64,
}

#[derive(Debug)]
struct SealedFile {
    file: Rc<BufferedFile>,
    last_used_tick: u64,
}

impl SealedFiles {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The open file of `key`, marked most recently used.
    fn touch(&mut self, key: (CacheKey, u64)) -> Option<Rc<BufferedFile>> {
        let tick = self.next_tick();
        let entry = self.files.get_mut(&key)?;
        let old = self.lru.remove(&entry.last_used_tick);
        assert!(old == Some(key));
        entry.last_used_tick = tick;
        self.lru.insert(tick, key);
        Some(entry.file.clone())
    }

    /// Adds `file` for `key` unless one is open already; returns the one kept.
    fn insert(&mut self, key: (CacheKey, u64), file: Rc<BufferedFile>) -> Rc<BufferedFile> {
        if let Some(kept) = self.touch(key) {
            return kept;
        }
        let tick = self.next_tick();
        self.lru.insert(tick, key);
        let entry = SealedFile {
            file,
            last_used_tick: tick,
        };
        self.files.entry(key).or_insert(entry).file.clone()
    }

    /// Closes the least recently used file that no read holds; false if every one is in use.
    fn evict_idle(&mut self) -> bool {
        let idle = self.lru.iter().find(|(_, key)| {
            self.files
                .get(*key)
                .is_some_and(|entry| Rc::strong_count(&entry.file) == 1)
        });
        let Some((&tick, &key)) = idle else {
            return false;
        };
        self.lru.remove(&tick);
        self.files.remove(&key);
        self.evictions_count += 1;
        true
    }

    fn remove_range(&mut self, keys: std::ops::RangeInclusive<(CacheKey, u64)>) {
        let doomed: Vec<_> = self.files.range(keys).map(|(k, _)| *k).collect();
        for key in doomed {
            if let Some(entry) = self.files.remove(&key) {
                self.lru.remove(&entry.last_used_tick);
            }
        }
    }
}

/// Counts a sealed file in the budget while it is being opened.
struct Opening<'a> {
    shard: &'a StorageShard,
}

impl<'a> Opening<'a> {
    fn new(shard: &'a StorageShard) -> Opening<'a> {
        let opening = &shard.inner.opening_files;
        opening.set(opening.get() + 1);
        Opening { shard }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let opening = &self.shard.inner.opening_files;
        assert!(opening.get() > 0);
        opening.set(opening.get() - 1);
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

/// One pinned slot of the open-file budget, held by an active segment as
/// long as its file is open.
#[derive(Debug)]
pub(crate) struct FileSlot {
    shard: StorageShard,
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        let pinned = &self.shard.inner.pinned_files;
        assert!(pinned.get() > 0);
        pinned.set(pinned.get() - 1);
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
