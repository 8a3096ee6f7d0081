//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use shardlog_engine::{LogConfig, PartitionLog};
use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, BatchIter, BatchLimits};

/// Runs `test` in a glommio executor with a fresh temporary directory.
pub fn run<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce(PathBuf) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    glommio::LocalExecutor::default().run(test(path));
}

/// A record as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub value: Vec<u8>,
}

/// A batch of records with the given timestamps and values.
pub fn batch_of(records: &[(i64, Vec<u8>)]) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    for (timestamp_ms, value) in records {
        builder
            .append(*timestamp_ms, None, Some(value), &[])
            .unwrap();
    }
    builder.finish().unwrap()
}

/// Small segments so that tests roll often; batches up to 16 KiB.
pub fn small_segments() -> LogConfig {
    let batch_limits = BatchLimits {
        batch_bytes_max: 16 * 1024,
        ..BatchLimits::default()
    };
    LogConfig {
        segment_bytes: 64 * 1024,
        batch_limits,
        ..LogConfig::default()
    }
}

/// Every record from `from` up to the high watermark, through `read`.
pub async fn read_records(log: &PartitionLog, from: u64, max_bytes: u64) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.high_watermark() {
        let slice = log.read(offset, max_bytes, None).await.unwrap();
        assert!(
            !slice.is_empty(),
            "a read below the high watermark returns a batch"
        );
        let bytes = slice.to_bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, slice.size_bytes());
        let mut last_next = offset;
        for batch in BatchIter::new(bytes, BatchLimits::default()) {
            let batch = batch.unwrap();
            last_next = batch.header().next_offset();
            for record in batch.records().unwrap() {
                let record = record.unwrap();
                if record.offset >= offset {
                    let value = record.value.map(|v| v.to_vec()).unwrap_or_default();
                    out.push(Rec {
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        value,
                    });
                }
            }
        }
        assert_eq!(
            last_next, slice.next_offset,
            "a read ends on a batch boundary"
        );
        offset = slice.next_offset;
    }
    out
}

/// Copies every file of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The segment files of a log directory, in offset order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}
