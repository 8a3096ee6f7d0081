//! `shardlog-engine`: the storage engine of shardlog.
//!
//! A [`PartitionLog`] is a directory of segments written with direct I/O
//! through io_uring (glommio DMA files). Appends are validated batches in
//! the [`shardlog_wire::batch`] format; the engine stamps their offsets and
//! stores the bytes as they are. Reads return whole batches from the
//! per-shard tail cache, the active segment, or a sealed segment as a file
//! range for `sendfile(2)`. Recovery trusts sealed segments by their index
//! and scans only the active one.
//!
//! The engine knows nothing of the network. Every type here is `!Send`: a
//! log lives on the shard (core) that opened it, inside a glommio executor.
//!
//! # Example
//!
//! ```
//! use shardlog_engine::{LogConfig, PartitionLog, ShardConfig, StorageShard};
//! use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, BatchIter, BatchLimits};
//!
//! let dir = tempfile::tempdir().unwrap();
//! glommio::LocalExecutor::default().run(async move {
//!     let shard = StorageShard::new(ShardConfig::default());
//!     let log = PartitionLog::open(dir.path(), LogConfig::default(), &shard).await.unwrap();
//!
//!     let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
//!     builder.append(1_700_000_000_000, None, Some(b"hello"), &[]).unwrap();
//!     let appended = log.append(builder.finish().unwrap()).await.unwrap();
//!     assert_eq!(appended.base_offset, 0);
//!
//!     let slice = log.read(0, 1 << 20, None).await.unwrap();
//!     let bytes = slice.to_bytes().await.unwrap();
//!     let batch = BatchIter::new(bytes, BatchLimits::default()).next().unwrap().unwrap();
//!     let record = batch.records().unwrap().next().unwrap().unwrap();
//!     assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
//!     log.close().await.unwrap();
//! });
//! ```
#![deny(missing_docs)]

pub mod cache;
mod config;
mod error;
#[cfg(any(test, feature = "fault-injection"))]
pub mod events;
#[cfg(any(test, feature = "fault-injection"))]
pub mod faults;
mod hooks;
mod log;
mod segment;
mod shard;

pub use config::{FlushPolicy, LogConfig, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WRITE_BYTES_MAX};
pub use error::{Error, Result};
pub use log::{
    AppendInfo, LogHealth, PartitionLog, ReadPart, ReadSlice, RecoverOutcome, RetentionOutcome,
};
pub use shard::{FlushLatencies, ShardConfig, StorageShard, FLUSH_BUCKETS_US};
