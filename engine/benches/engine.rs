//! Criterion micro-benchmarks of the batch format and the storage engine.
//!
//! `cargo bench -p shardlog-engine` (figures and the machine's limits are
//! recorded in BENCHMARKS.md). Every measurement runs inside a glommio
//! executor through `iter_custom`; append benchmarks use a fresh log in a
//! temporary directory on the same disk as the target directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardlog_engine::{FlushPolicy, LogConfig, PartitionLog, ShardConfig, StorageShard};
use shardlog_wire::batch::{self, BatchBuilder, BatchBuilderOptions, BatchLimits};

const RECORD_BYTES: usize = 1024;

fn build_batch(batch_bytes: usize) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchBuilderOptions {
        capacity_bytes: batch_bytes + 4096,
        ..Default::default()
    });
    let value = vec![0x5au8; RECORD_BYTES];
    let mut key = 0u64;
    while builder.size_bytes() + RECORD_BYTES + 32 <= batch_bytes {
        builder
            .append(
                1_700_000_000_000,
                Some(&key.to_le_bytes()),
                Some(&value),
                &[],
            )
            .unwrap();
        key += 1;
    }
    builder.finish().unwrap()
}

/// An executor as a shard gets one: with a 64 MiB arena of registered I/O
/// buffers, so write rounds of up to 4 MiB never fall back to the heap.
fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 20)
        .make()
        .unwrap()
}

fn limits() -> BatchLimits {
    BatchLimits {
        batch_bytes_max: 4 * 1024 * 1024,
        ..BatchLimits::default()
    }
}

fn bench_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn batch_format(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for batch_bytes in [64 * 1024, 1024 * 1024] {
        let label = format!("{}KiB", batch_bytes / 1024);
        let encoded = build_batch(batch_bytes);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(BenchmarkId::new("encode", &label), |b| {
            b.iter(|| build_batch(batch_bytes))
        });
        group.bench_function(BenchmarkId::new("validate", &label), |b| {
            b.iter(|| batch::validate(&encoded, &limits()).unwrap())
        });
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let policies = [
        ("always", FlushPolicy::Always),
        ("never", FlushPolicy::Never),
    ];
    for batch_bytes in [64 * 1024, 1024 * 1024] {
        let encoded = build_batch(batch_bytes);
        for (policy_name, flush) in policies {
            for appenders in [1u64, 8] {
                group.throughput(Throughput::Bytes(encoded.len() as u64 * appenders));
                let id = BenchmarkId::new(
                    format!("{}KiB/{policy_name}", batch_bytes / 1024),
                    format!("{appenders}-appenders"),
                );
                let encoded = encoded.clone();
                group.bench_function(id, move |b| {
                    b.iter_custom(|iters| append_run(&encoded, flush, appenders, iters));
                });
            }
        }
    }
    group.finish();
}

/// `appenders` tasks each append `iters` copies of `encoded` to a fresh log.
///
/// The copies are made before the clock starts: `append` takes a `BytesMut`
/// by value, and a broker receives each batch in a buffer of its own from the
/// network, so the deep copy (and the page faults of fresh memory) belong to
/// the network path, not to the engine. What is timed is the engine's whole
/// append path: validation (CRC), queueing, the copy into DMA buffers, the
/// writes, the syncs (`always`), the tail cache, and the batches' release.
fn append_run(encoded: &BytesMut, flush: FlushPolicy, appenders: u64, iters: u64) -> Duration {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let path = dir.path().to_path_buf();
    let batches: Vec<Vec<BytesMut>> = (0..appenders)
        .map(|_| (0..iters).map(|_| encoded.clone()).collect())
        .collect();
    executor().run(async move {
        let shard = StorageShard::new(ShardConfig::default());
        let config = LogConfig {
            flush,
            batch_limits: limits(),
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&path, config, &shard).await.unwrap();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for batches in batches {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for batch in batches {
                    log.append(batch).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let elapsed = start.elapsed();
        log.close().await.unwrap();
        elapsed
    })
}

/// A log of `total_bytes` in 64 KiB batches with 32 MiB segments, written once per process.
fn prepared_log(name: &str, total_bytes: u64) -> PathBuf {
    let path = bench_dir().join(name);
    let _ = std::fs::remove_dir_all(&path);
    let encoded = build_batch(64 * 1024);
    let writer_path = path.clone();
    executor().run(async move {
        let shard = StorageShard::new(ShardConfig {
            cache_bytes: 0,
            ..ShardConfig::default()
        });
        let config = LogConfig {
            segment_bytes: 32 * 1024 * 1024,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&writer_path, config, &shard)
            .await
            .unwrap();
        while log.size_bytes() < total_bytes {
            log.append(encoded.clone()).await.unwrap();
        }
        log.close().await.unwrap();
    });
    path
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let read_bytes = 1024 * 1024u64;
    group.throughput(Throughput::Bytes(read_bytes));
    let path = prepared_log("read-log", 160 * 1024 * 1024);
    for source in ["sealed", "active", "cache"] {
        let path = path.clone();
        group.bench_function(source, move |b| {
            b.iter_custom(|iters| read_run(&path, source, read_bytes, iters))
        });
    }
    group.finish();
}

/// Reads `iters` ranges of `read_bytes` sequentially from `source`, copying
/// each into memory (`to_bytes`: the page-cache copy that sendfile also makes).
fn read_run(path: &Path, source: &'static str, read_bytes: u64, iters: u64) -> Duration {
    let path = path.to_path_buf();
    executor().run(async move {
        let cache_bytes = if source == "cache" {
            512 * 1024 * 1024
        } else {
            0
        };
        let shard = StorageShard::new(ShardConfig {
            cache_bytes,
            ..ShardConfig::default()
        });
        let config = LogConfig {
            segment_bytes: 32 * 1024 * 1024,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&path, config, &shard).await.unwrap();
        let (first, end) = match source {
            "sealed" => (0, log.high_watermark() / 2),
            "active" => (log.high_watermark() * 9 / 10, log.high_watermark()),
            _ => {
                // Fill the cache with fresh appends and read those back.
                let from = log.high_watermark();
                let encoded = build_batch(64 * 1024);
                for _ in 0..256 {
                    log.append(encoded.clone()).await.unwrap();
                }
                (from, log.high_watermark())
            }
        };
        let mut offset = first;
        let start = Instant::now();
        for _ in 0..iters {
            let slice = log.read(offset, read_bytes, Some(end)).await.unwrap();
            let bytes = slice.to_bytes().await.unwrap();
            assert!(!bytes.is_empty());
            offset = if slice.next_offset >= end {
                first
            } else {
                slice.next_offset
            };
        }
        start.elapsed()
    })
}

criterion_group!(benches, batch_format, append, read);
criterion_main!(benches);
