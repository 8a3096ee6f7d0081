//! Tests of the partition log against real files.

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, BatchIter, BatchLimits};

use super::*;
use crate::config::FlushPolicy;
use crate::segment::log_path;
use crate::shard::ShardConfig;

pub(crate) fn run<F: std::future::Future<Output = ()> + 'static>(
    test: impl FnOnce(std::path::PathBuf) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    glommio::LocalExecutor::default().run(test(path));
}

pub(crate) fn batch(
    first_value: u64,
    count: u64,
    value_bytes: usize,
    timestamp_ms: i64,
) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    for i in 0..count {
        let mut value = (first_value + i).to_le_bytes().to_vec();
        value.resize(value_bytes.max(8), 0xab);
        builder
            .append(timestamp_ms, None, Some(&value), &[])
            .unwrap();
    }
    builder.finish().unwrap()
}

/// Every record from `from` to the high watermark as (offset, first 8 value bytes as u64).
pub(crate) async fn read_all(log: &PartitionLog, from: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.high_watermark() {
        let slice = log.read(offset, 16 * 1024, None).await.unwrap();
        assert!(!slice.is_empty());
        let bytes = slice.to_bytes().await.unwrap();
        for batch in BatchIter::new(bytes, BatchLimits::default()) {
            for record in batch.unwrap().records().unwrap() {
                let record = record.unwrap();
                if record.offset >= offset {
                    let value = record.value.unwrap();
                    out.push((
                        record.offset,
                        u64::from_le_bytes(value[..8].try_into().unwrap()),
                    ));
                }
            }
        }
        assert!(slice.next_offset > offset);
        offset = slice.next_offset;
    }
    out
}

pub(crate) fn small_segments() -> LogConfig {
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

async fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config, &StorageShard::new(ShardConfig::default()))
        .await
        .unwrap()
}

#[test]
fn appends_get_consecutive_offsets_under_every_policy() {
    for flush in [
        FlushPolicy::Always,
        FlushPolicy::Never,
        FlushPolicy::Interval { interval_ms: 5 },
    ] {
        run(move |dir| async move {
            let log = open(
                &dir,
                LogConfig {
                    flush,
                    ..LogConfig::default()
                },
            )
            .await;
            let first = log.append(batch(0, 3, 10, 1)).await.unwrap();
            let second = log.append(batch(3, 2, 10, 2)).await.unwrap();
            assert_eq!(
                first,
                AppendInfo {
                    base_offset: 0,
                    last_offset: 2
                }
            );
            assert_eq!(
                second,
                AppendInfo {
                    base_offset: 3,
                    last_offset: 4
                }
            );
            assert_eq!(log.high_watermark(), 5);
            let all = read_all(&log, 0).await;
            assert_eq!(all, (0..5).map(|i| (i, i)).collect::<Vec<_>>());
            log.close().await.unwrap();
        });
    }
}

#[test]
fn concurrent_appenders_share_writes_and_keep_every_batch() {
    run(|dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut tasks = Vec::new();
        for appender in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut infos = Vec::new();
                for i in 0..50u64 {
                    infos.push(
                        log.append(batch(appender * 1000 + i, 1, 100, 0))
                            .await
                            .unwrap(),
                    );
                }
                infos
            }));
        }
        let mut bases = Vec::new();
        for task in tasks {
            let infos = task.await;
            assert!(
                infos
                    .windows(2)
                    .all(|w| w[0].base_offset < w[1].base_offset),
                "one appender's batches keep order"
            );
            bases.extend(infos.iter().map(|i| i.base_offset));
        }
        bases.sort_unstable();
        assert_eq!(bases, (0..400).collect::<Vec<_>>());
        let values: std::collections::HashSet<u64> = read_all(&log, 0)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values.len(), 400);
    });
}

#[test]
fn reads_end_on_batch_boundaries_within_limits() {
    run(|dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut sizes = Vec::new();
        for i in 0..10 {
            let b = batch(i * 4, 4, 100, 0);
            sizes.push(b.len() as u64);
            log.append(b).await.unwrap();
        }
        // Offset 5 lies inside the second batch [4, 8): the read starts there.
        let slice = log.read(5, sizes[1] + sizes[2] - 1, None).await.unwrap();
        assert_eq!(slice.size_bytes(), sizes[1]);
        assert_eq!(slice.next_offset, 8);
        let slice = log.read(5, 1, None).await.unwrap();
        assert_eq!(
            slice.next_offset, 8,
            "one whole batch even when larger than max bytes"
        );
        let slice = log.read(0, 1 << 20, Some(12)).await.unwrap();
        assert_eq!(slice.next_offset, 12, "stops before the end offset");
        assert!(log.read(40, 100, None).await.unwrap().is_empty());
        assert!(matches!(
            log.read(41, 100, None).await,
            Err(Error::OffsetOutOfRange { offset: 41, .. })
        ));
    });
}

#[test]
fn a_read_within_a_limit_never_passes_it_on_any_read_path() {
    for cache_bytes in [0, 1 << 20] {
        run(move |dir| async move {
            let shard = StorageShard::new(ShardConfig {
                cache_bytes,
                ..ShardConfig::default()
            });
            let log = PartitionLog::open(&dir, LogConfig::default(), &shard)
                .await
                .unwrap();
            let small = batch(0, 1, 100, 0);
            let large = batch(1, 1, 5000, 0);
            let (small_bytes, large_bytes) = (small.len() as u64, large.len() as u64);
            log.append(small).await.unwrap();
            log.append(large).await.unwrap();
            let whole = log.read(1, 1000, None).await.unwrap();
            assert_eq!(
                whole.size_bytes(),
                large_bytes,
                "read returns a batch whole"
            );
            let within = log.read_within(1, 1000, None).await.unwrap();
            assert!(within.is_empty(), "read_within does not ({cache_bytes})");
            assert_eq!(within.next_offset, 1);
            let first = log.read_within(0, small_bytes + 10, None).await.unwrap();
            assert_eq!(first.size_bytes(), small_bytes);
            assert_eq!(first.next_offset, 1);
            let both = log.read_within(0, small_bytes + large_bytes, None).await;
            assert_eq!(both.unwrap().next_offset, 2);
        });
    }
}

#[test]
fn every_read_path_returns_the_same_bytes() {
    run(|dir| async move {
        // A cache too small for anything forces the disk paths.
        let shard = StorageShard::new(ShardConfig {
            cache_bytes: 0,
            ..ShardConfig::default()
        });
        let log = PartitionLog::open(&dir, small_segments(), &shard)
            .await
            .unwrap();
        for i in 0..200 {
            log.append(batch(i * 2, 2, 500, i as i64)).await.unwrap();
        }
        assert!(log.segment_count() > 3);
        let sealed = log.read(0, 4096, None).await.unwrap();
        assert!(matches!(sealed.parts[0], ReadPart::File { .. }));
        assert!(sealed.parts[0].raw_fd().is_some());
        let last_base = log.high_watermark() - 2;
        let active = log.read(last_base, 4096, None).await.unwrap();
        assert!(matches!(active.parts[0], ReadPart::Direct(_)));
        assert_eq!(
            read_all(&log, 0).await,
            (0..400).map(|i| (i, i)).collect::<Vec<_>>()
        );

        let cached_shard = StorageShard::new(ShardConfig::default());
        let cached = PartitionLog::open(dir.join("cached"), small_segments(), &cached_shard)
            .await
            .unwrap();
        cached.append(batch(0, 2, 500, 0)).await.unwrap();
        assert!(matches!(
            cached.read(0, 4096, None).await.unwrap().parts[0],
            ReadPart::Memory(_)
        ));
        assert!(cached_shard.cache_used_bytes() > 0);
    });
}

#[test]
fn reopening_keeps_everything_and_continues_offsets() {
    run(|dir| async move {
        let log = open(&dir, small_segments()).await;
        for i in 0..150 {
            log.append(batch(i, 1, 700, 0)).await.unwrap();
        }
        let segments = log.segment_count();
        log.close().await.unwrap();
        drop(log);
        let log = open(&dir, small_segments()).await;
        assert_eq!(log.segment_count(), segments);
        assert_eq!(log.high_watermark(), 150);
        assert_eq!(
            log.append(batch(150, 1, 700, 0)).await.unwrap().base_offset,
            150
        );
        assert_eq!(
            read_all(&log, 0).await,
            (0..151).map(|i| (i, i)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt() {
    run(|dir| async move {
        let log = open(&dir, small_segments()).await;
        for i in 0..300 {
            log.append(batch(i, 1, 700, 0)).await.unwrap();
        }
        log.close().await.unwrap();
        drop(log);
        let indexes: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .collect();
        assert!(indexes.len() >= 2);
        std::fs::remove_file(&indexes[0]).unwrap();
        let mut damaged = std::fs::read(&indexes[1]).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        std::fs::write(&indexes[1], damaged).unwrap();
        let log = open(&dir, small_segments()).await;
        assert_eq!(
            read_all(&log, 0).await,
            (0..300).map(|i| (i, i)).collect::<Vec<_>>()
        );
        assert!(indexes[0].exists(), "the rebuilt index is written back");
    });
}

#[test]
fn rolls_by_age() {
    run(|dir| async move {
        let config = LogConfig {
            segment_age_max: Duration::from_millis(20),
            ..LogConfig::default()
        };
        let log = open(&dir, config).await;
        log.append(batch(0, 1, 10, 0)).await.unwrap();
        log.append(batch(1, 1, 10, 0)).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        glommio::timer::sleep(Duration::from_millis(30)).await;
        log.append(batch(2, 1, 10, 0)).await.unwrap();
        assert_eq!(log.segment_count(), 2);
        assert_eq!(read_all(&log, 0).await.len(), 3);
    });
}

#[test]
fn finds_offsets_by_timestamp_across_segments() {
    run(|dir| async move {
        let log = open(&dir, small_segments()).await;
        // Record i has timestamp 1000 + 10 * i; batches of 5 records.
        for b in 0..60u64 {
            let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
            for i in b * 5..b * 5 + 5 {
                let mut value = i.to_le_bytes().to_vec();
                value.resize(200, 0);
                builder
                    .append(1000 + 10 * i as i64, None, Some(&value), &[])
                    .unwrap();
            }
            log.append(builder.finish().unwrap()).await.unwrap();
        }
        assert!(log.segment_count() > 1);
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1000).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1001).await.unwrap(), Some(1));
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * 123).await.unwrap(),
            Some(123)
        );
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * 123 - 5).await.unwrap(),
            Some(123)
        );
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * 299).await.unwrap(),
            Some(299)
        );
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * 300).await.unwrap(),
            None
        );
        log.close().await.unwrap();
        drop(log);
        let log = open(&dir, small_segments()).await;
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * 77).await.unwrap(),
            Some(77),
            "after reopen, from index files"
        );
    });
}

#[test]
fn retention_deletes_whole_sealed_segments_by_size_and_age() {
    run(|dir| async move {
        let config = LogConfig {
            retention_bytes: Some(128 * 1024),
            retention_age: None,
            ..small_segments()
        };
        let log = open(&dir, config).await;
        for i in 0..600 {
            log.append(batch(i, 1, 900, i as i64)).await.unwrap();
        }
        let before = log.size_bytes();
        let outcome = log.apply_retention(0).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert!(log.size_bytes() >= 128 * 1024);
        assert_eq!(log.size_bytes(), before - outcome.bytes_deleted);
        assert_eq!(outcome.log_start_offset, log.log_start_offset());
        let start = log.log_start_offset();
        assert!(matches!(
            log.read(start - 1, 100, None).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, start).await.len() as u64, 600 - start);

        let aged = open(
            &dir.join("aged"),
            LogConfig {
                retention_age: Some(Duration::from_millis(100)),
                ..small_segments()
            },
        )
        .await;
        for i in 0..300 {
            aged.append(batch(i, 1, 900, i as i64)).await.unwrap();
        }
        let segments = aged.segment_count();
        let outcome = aged.apply_retention(10_000).await.unwrap();
        assert_eq!(
            outcome.segments_deleted,
            segments - 1,
            "everything but the active segment is old"
        );
        assert_eq!(aged.segment_count(), 1);
        aged.append(batch(300, 1, 10, 0)).await.unwrap();
    });
}

#[test]
fn maintenance_gets_the_writer_role_while_appenders_keep_it_busy() {
    run(|dir| async move {
        let config = LogConfig {
            retention_bytes: Some(128 * 1024),
            retention_age: None,
            ..small_segments()
        };
        let log = open(&dir, config).await;
        let stop = Rc::new(std::cell::Cell::new(false));
        let appended = Rc::new(std::cell::Cell::new(0u64));
        // Four appenders keep the queue non-empty, so the writer never idles by itself.
        let appenders: Vec<_> = (0..4)
            .map(|_| {
                let (log, stop, appended) = (log.clone(), stop.clone(), appended.clone());
                glommio::spawn_local(async move {
                    while !stop.get() {
                        log.append(batch(0, 1, 900, 0)).await.unwrap();
                        appended.set(appended.get() + 1);
                    }
                })
            })
            .collect();
        while log.segment_count() < 4 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let segments = log.segment_count();
        log.roll().await.unwrap();
        assert!(
            log.segment_count() > segments,
            "roll sealed the active segment"
        );
        let outcome = log.apply_retention(0).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        let before = appended.get();
        while appended.get() < before + 10 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        stop.set(true);
        for appender in appenders {
            appender.await;
        }
        let start = log.log_start_offset();
        assert_eq!(
            read_all(&log, start).await.len() as u64,
            log.high_watermark() - start
        );
        assert_eq!(log.high_watermark(), appended.get());
    });
}

#[test]
fn roll_takes_the_writer_role_at_a_batch_boundary_without_draining_the_queue() {
    run(|dir| async move {
        let config = LogConfig {
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        };
        let log = open(&dir, config).await;
        // 24 MiB queued: more than the writer's rounds in flight (2 × 2 MiB).
        const BATCHES: u64 = 48;
        let appends: Vec<_> = (0..BATCHES)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(batch(i, 1, 512 << 10, 0)).await })
            })
            .collect();
        while log.high_watermark() == 0 {
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        log.roll().await.unwrap();
        for append in appends {
            append.await.unwrap();
        }
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(crate::segment::LOG_SUFFIX)?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        assert_eq!(bases.len(), 2, "one roll: {bases:?}");
        assert!(
            bases[1] < BATCHES,
            "the roll waited only for the writes in flight, not for all {BATCHES} queued appends: {bases:?}"
        );
        let all = read_all(&log, 0).await;
        assert_eq!(all.len() as u64, BATCHES);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (offset, _))| *offset == i as u64));
    });
}

#[test]
fn truncate_cuts_the_tail_in_the_active_and_in_sealed_segments() {
    run(|dir| async move {
        let log = open(&dir, small_segments()).await;
        for i in 0..200 {
            log.append(batch(i * 2, 2, 700, 0)).await.unwrap();
        }
        assert_eq!(
            log.truncate_to(395).await.unwrap(),
            394,
            "rounded down to the batch start"
        );
        assert_eq!(log.high_watermark(), 394);
        let segments = log.segment_count();
        assert_eq!(log.truncate_to(41).await.unwrap(), 40);
        assert!(log.segment_count() < segments);
        assert_eq!(
            log.append(batch(40, 2, 700, 0)).await.unwrap().base_offset,
            40
        );
        assert_eq!(
            read_all(&log, 0).await,
            (0..42).map(|i| (i, i)).collect::<Vec<_>>()
        );
        log.close().await.unwrap();
        drop(log);
        let log = open(&dir, small_segments()).await;
        assert_eq!(log.high_watermark(), 42);
        assert_eq!(
            read_all(&log, 0).await,
            (0..42).map(|i| (i, i)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn invalid_batches_are_refused_and_nothing_is_stored() {
    run(|dir| async move {
        let config = LogConfig {
            batch_limits: BatchLimits {
                batch_bytes_max: 4096,
                ..BatchLimits::default()
            },
            ..LogConfig::default()
        };
        let log = open(&dir, config).await;
        let mut corrupt = batch(0, 2, 10, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            log.append(corrupt).await,
            Err(Error::InvalidBatch(
                shardlog_wire::Error::CrcMismatch { .. }
            ))
        ));
        let big = batch(0, 1, 5000, 0);
        assert!(matches!(
            log.append(big).await,
            Err(Error::InvalidBatch(shardlog_wire::Error::TooLarge { .. }))
        ));
        assert!(matches!(
            log.append(BytesMut::from(&b"junk"[..])).await,
            Err(Error::InvalidBatch(_))
        ));
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.size_bytes(), 0);
        assert_eq!(log.append(batch(0, 1, 10, 0)).await.unwrap().base_offset, 0);
    });
}

#[test]
fn the_open_file_budget_is_enforced() {
    run(|dir| async move {
        let shard = StorageShard::new(ShardConfig {
            open_files_max: 1,
            ..ShardConfig::default()
        });
        let first = PartitionLog::open(dir.join("a"), LogConfig::default(), &shard)
            .await
            .unwrap();
        let second = PartitionLog::open(dir.join("b"), LogConfig::default(), &shard).await;
        assert!(matches!(second, Err(Error::TooManyOpenFiles { limit: 1 })));
        assert_eq!(shard.open_files(), 1);
        drop(first);
        assert_eq!(shard.open_files(), 0);
        assert!(
            PartitionLog::open(dir.join("b"), LogConfig::default(), &shard)
                .await
                .is_ok()
        );
    });
}

#[test]
fn fdatasync_latencies_are_recorded_per_shard() {
    run(|dir| async move {
        let shard = StorageShard::new(ShardConfig::default());
        let log = PartitionLog::open(&dir, LogConfig::default(), &shard)
            .await
            .unwrap();
        for i in 0..5 {
            log.append(batch(i, 1, 10, 0)).await.unwrap();
        }
        let flushes = shard.flush_latencies();
        assert!(
            flushes.count >= 1,
            "flush = always syncs before acknowledging"
        );
        assert_eq!(flushes.counts.iter().sum::<u64>(), flushes.count);
    });
}

#[test]
fn closed_logs_refuse_appends() {
    run(|dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        log.close().await.unwrap();
        assert!(matches!(
            log.append(batch(0, 1, 10, 0)).await,
            Err(Error::Closed)
        ));
    });
}

#[test]
fn errors_are_send_sync() {
    fn send_sync<T: Send + Sync + std::error::Error>() {}
    send_sync::<Error>();
    assert!(Error::StorageFull { path: "x".into() }.is_retriable());
    assert!(!Error::Closed.is_retriable());
}

#[test]
fn batch_headers_walk_every_segment_up_to_the_high_watermark() {
    run(|dir| async move {
        let log = open(&dir, small_segments()).await;
        for i in 0..100 {
            log.append(batch(i * 3, 3, 900, 0)).await.unwrap();
        }
        assert!(log.segment_count() > 2);
        let headers = log.batch_headers(151).await.unwrap();
        assert_eq!(headers.first().unwrap().base_offset, 150);
        assert_eq!(headers.len(), 50);
        assert!(headers
            .windows(2)
            .all(|w| w[0].next_offset() == w[1].base_offset));
        assert!(log.batch_headers(300).await.unwrap().is_empty());
    });
}

/// A log with at least `sealed_count` sealed segments on `shard`.
async fn log_with_sealed(dir: &Path, shard: &StorageShard, sealed_count: usize) -> PartitionLog {
    let log = PartitionLog::open(dir, small_segments(), shard)
        .await
        .unwrap();
    let mut i = 0;
    while log.segment_count() <= sealed_count {
        log.append(batch(i, 1, 900, 0)).await.unwrap();
        i += 1;
    }
    log
}

/// The base offsets of a log's sealed segments.
fn sealed_bases(log: &PartitionLog) -> Vec<u64> {
    let state = log.inner.state.borrow();
    state.sealed.iter().map(|s| s.meta.base_offset).collect()
}

fn is_open(shard: &StorageShard, log: &PartitionLog, base_offset: u64) -> bool {
    shard.sealed_file_is_open(log.inner.cache_key, base_offset)
}

fn no_cache(open_files_max: u32) -> StorageShard {
    StorageShard::new(ShardConfig {
        cache_bytes: 0,
        open_files_max,
        sealed_files_reserved_percent: 0,
    })
}

#[test]
fn a_read_closes_the_least_recently_used_idle_sealed_file_of_any_log() {
    run(|dir| async move {
        // Two active segments pinned, two slots for sealed files.
        let shard = no_cache(4);
        let a = log_with_sealed(&dir.join("a"), &shard, 2).await;
        let b = log_with_sealed(&dir.join("b"), &shard, 2).await;
        let (a_bases, b_bases) = (sealed_bases(&a), sealed_bases(&b));
        assert_eq!(shard.pinned_files(), 2);
        a.read(a_bases[0], 1, None).await.unwrap();
        b.read(b_bases[0], 1, None).await.unwrap();
        assert_eq!(shard.open_files(), 4);
        a.read(a_bases[0], 1, None).await.unwrap(); // a's file is now the most recent
                                                    // b needs another file: b's own first one is the least recently used.
        b.read(b_bases[1], 1, None).await.unwrap();
        assert!(is_open(&shard, &a, a_bases[0]));
        assert!(!is_open(&shard, &b, b_bases[0]));
        assert!(is_open(&shard, &b, b_bases[1]));
        // a needs another file: the least recently used is a's own, then b's.
        a.read(a_bases[1], 1, None).await.unwrap();
        assert!(!is_open(&shard, &a, a_bases[0]));
        a.read(a_bases[0], 1, None).await.unwrap();
        assert!(
            !is_open(&shard, &b, b_bases[1]),
            "another log's idle file is closed"
        );
        assert_eq!(shard.open_files(), 4);
        assert_eq!(shard.sealed_file_evictions(), 3);
    });
}

#[test]
fn a_sealed_file_held_by_a_read_in_flight_is_not_closed() {
    run(|dir| async move {
        let shard = no_cache(3);
        let a = log_with_sealed(&dir.join("a"), &shard, 1).await;
        let b = log_with_sealed(&dir.join("b"), &shard, 1).await;
        let (a_base, b_base) = (sealed_bases(&a)[0], sealed_bases(&b)[0]);
        let held = a.read(a_base, 1, None).await.unwrap();
        assert!(matches!(held.parts[0], ReadPart::File { .. }));
        let refused = b.read(b_base, 1, None).await;
        assert!(
            matches!(refused, Err(Error::TooManyOpenFiles { limit: 3 })),
            "{refused:?}"
        );
        assert!(refused.unwrap_err().is_retriable());
        assert!(is_open(&shard, &a, a_base));
        drop(held);
        b.read(b_base, 1, None).await.unwrap();
        assert!(!is_open(&shard, &a, a_base));
        assert_eq!(shard.open_files(), 3);
    });
}

#[test]
fn active_segments_are_pinned_within_their_share_of_the_budget() {
    run(|dir| async move {
        let shard = StorageShard::new(ShardConfig {
            cache_bytes: 0,
            open_files_max: 10,
            sealed_files_reserved_percent: 20,
        });
        assert_eq!(shard.pinned_files_max(), 8);
        let first = log_with_sealed(&dir.join("first"), &shard, 2).await;
        let bases = sealed_bases(&first);
        first.read(bases[0], 1, None).await.unwrap();
        first.read(bases[1], 1, None).await.unwrap();
        let mut logs = vec![];
        for i in 1..8 {
            let log = PartitionLog::open(dir.join(format!("log-{i}")), small_segments(), &shard);
            logs.push(log.await.unwrap());
        }
        assert_eq!(shard.pinned_files(), 8);
        assert_eq!(shard.open_files(), 10);
        let ninth = PartitionLog::open(dir.join("ninth"), small_segments(), &shard).await;
        assert!(matches!(ninth, Err(Error::TooManyOpenFiles { limit: 8 })));
        // The reserve still serves sealed reads, taking an idle file's place.
        first.read(bases[0], 1, None).await.unwrap();
        assert!(is_open(&shard, &first, bases[0]));
        // An active segment is never closed to make room: only sealed ones are.
        first.roll().await.unwrap();
        assert_eq!(shard.pinned_files(), 8);
        assert!(shard.open_files() <= 10);
    });
}

#[test]
fn opening_a_log_closes_an_idle_sealed_file_when_the_budget_is_full() {
    run(|dir| async move {
        let shard = no_cache(3);
        let a = log_with_sealed(&dir.join("a"), &shard, 2).await;
        let bases = sealed_bases(&a);
        a.read(bases[0], 1, None).await.unwrap();
        a.read(bases[1], 1, None).await.unwrap();
        assert_eq!(shard.open_files(), 3);
        let b = PartitionLog::open(dir.join("b"), small_segments(), &shard).await;
        assert!(b.is_ok());
        assert_eq!((shard.pinned_files(), shard.open_files()), (2, 3));
        assert!(
            !is_open(&shard, &a, bases[0]),
            "the least recently used went"
        );
    });
}

#[test]
fn deleted_segments_and_closed_logs_give_their_files_back() {
    run(|dir| async move {
        let shard = no_cache(100);
        let config = LogConfig {
            retention_bytes: Some(1),
            retention_age: None,
            ..small_segments()
        };
        let log = PartitionLog::open(&dir, config, &shard).await.unwrap();
        for i in 0..300 {
            log.append(batch(i, 1, 900, 0)).await.unwrap();
        }
        for base in sealed_bases(&log) {
            log.read(base, 1, None).await.unwrap();
        }
        let sealed = sealed_bases(&log).len() as u32;
        assert_eq!(shard.sealed_files_open(), sealed);
        let outcome = log.apply_retention(0).await.unwrap();
        assert_eq!(outcome.segments_deleted as u32, sealed);
        assert_eq!(shard.sealed_files_open(), 0);
        log.roll().await.unwrap();
        let base = sealed_bases(&log)[0];
        log.read(base, 1, None).await.unwrap();
        assert_eq!(shard.sealed_files_open(), 1);
        log.close().await.unwrap();
        assert_eq!(shard.sealed_files_open(), 0);
        drop(log);
        assert_eq!(shard.open_files(), 0);
    });
}

/// The active segment's blocks are allocated ahead of its writes, in steps
/// and never past the segment size; a sealed segment still ends on its last
/// frame, and a reopened log cuts the allocated zeros and keeps every record.
#[test]
fn active_segments_are_allocated_ahead_and_sealed_ones_end_on_their_last_frame() {
    run(|dir| async move {
        let config = LogConfig {
            preallocate_bytes: 16 * 1024,
            ..small_segments()
        };
        let log = open(&dir, config.clone()).await;
        let file_size = |base: u64| std::fs::metadata(log_path(&dir, base)).unwrap().len();
        log.append(batch(0, 1, 1000, 0)).await.unwrap();
        let first = log.inner.state.borrow().active.written_bytes;
        assert!(file_size(0) >= first + 16 * 1024, "allocated ahead");
        for i in 1..200 {
            log.append(batch(i, 1, 1000, 0)).await.unwrap();
            let state = log.inner.state.borrow();
            let active = &state.active;
            let size = file_size(active.base_offset);
            assert!(size >= active.written_bytes);
            assert!(
                size <= config.segment_bytes.div_ceil(4096) * 4096,
                "never past the segment"
            );
            assert_eq!(active.allocated_bytes, size);
        }
        let sealed: Vec<(u64, u64)> = log
            .inner
            .state
            .borrow()
            .sealed
            .iter()
            .map(|s| (s.meta.base_offset, s.meta.log_bytes))
            .collect();
        assert!(sealed.len() >= 2);
        for (base, log_bytes) in sealed {
            assert_eq!(
                file_size(base),
                log_bytes,
                "a sealed file ends on its last frame"
            );
        }
        let before = read_all(&log, 0).await;
        drop(log);
        // As after a crash: no close, the allocated zeros still in the file.
        let log = open(&dir, config).await;
        assert_eq!(read_all(&log, 0).await, before);
        assert_eq!(log.log_end_offset(), 200);
        let active = log.inner.state.borrow().active.written_bytes;
        let base = log.inner.state.borrow().active.base_offset;
        assert_eq!(
            std::fs::metadata(log_path(&dir, base)).unwrap().len(),
            active
        );
    });
}

/// With preallocation off, the active file grows only by its aligned writes.
#[test]
fn without_preallocation_the_file_grows_with_its_writes() {
    run(|dir| async move {
        let config = LogConfig {
            preallocate_bytes: 0,
            ..small_segments()
        };
        let log = open(&dir, config).await;
        log.append(batch(0, 1, 1000, 0)).await.unwrap();
        let written = log.inner.state.borrow().active.written_bytes;
        let size = std::fs::metadata(log_path(&dir, 0)).unwrap().len();
        assert_eq!(size, written.div_ceil(4096) * 4096);
    });
}
