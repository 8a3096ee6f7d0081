//! Resources that the logs of one shard share: the tail cache and the
//! open-file budget. A `StorageShard` is `!Send`: it never leaves its core.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

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
}

impl StorageShard {
    /// A shard with the given limits.
    pub fn new(config: ShardConfig) -> StorageShard {
        let inner = ShardInner {
            config,
            cache: RefCell::new(TailCache::new(config.cache_bytes)),
            open_files: Cell::new(0),
            next_cache_key: Cell::new(1),
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
