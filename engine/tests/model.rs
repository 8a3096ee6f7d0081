//! Property test: random sequences of operations on a real log give the
//! same records, offsets and bounds as a plain in-memory model.

mod common;

use common::{batch_of, read_records, run, small_segments, Rec};
use proptest::prelude::*;
use shardlog_engine::{Error, FlushPolicy, LogConfig, PartitionLog, ShardConfig, StorageShard};

#[derive(Debug, Clone)]
enum Op {
    Append { values: Vec<usize> },
    Read { pick: u64, max_bytes: u64 },
    Roll,
    Reopen,
    Retention,
    Truncate { pick: u64 },
    FindTimestamp { pick: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec(0usize..3000, 1..6).prop_map(|values| Op::Append { values }),
        4 => (any::<u64>(), 1u64..20_000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => Just(Op::Roll),
        1 => Just(Op::Reopen),
        1 => Just(Op::Retention),
        1 => any::<u64>().prop_map(|pick| Op::Truncate { pick }),
        2 => any::<u64>().prop_map(|pick| Op::FindTimestamp { pick }),
    ]
}

/// The model: records and batch boundaries of the log, and where it starts.
#[derive(Debug, Default)]
struct Model {
    records: Vec<Rec>,
    /// (base offset, next offset) of every batch still stored.
    batches: Vec<(u64, u64)>,
    start: u64,
    clock_ms: i64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches.last().map_or(self.start, |b| b.1)
    }

    fn batch_holding(&self, offset: u64) -> (u64, u64) {
        *self
            .batches
            .iter()
            .find(|b| b.0 <= offset && offset < b.1)
            .expect("offset is stored")
    }
}

fn config(cache_bytes: u64) -> (LogConfig, ShardConfig) {
    let log = LogConfig {
        flush: FlushPolicy::Never,
        retention_bytes: Some(96 * 1024),
        retention_age: None,
        ..small_segments()
    };
    (
        log,
        ShardConfig {
            cache_bytes,
            ..ShardConfig::default()
        },
    )
}

async fn apply(
    log: &mut PartitionLog,
    model: &mut Model,
    op: Op,
    dir: &std::path::Path,
    cache_bytes: u64,
) {
    match op {
        Op::Append { values } => {
            model.clock_ms += 10;
            let base = model.end();
            let records: Vec<(i64, Vec<u8>)> = values
                .iter()
                .enumerate()
                .map(|(i, len)| (model.clock_ms, vec![(base as usize + i) as u8; *len]))
                .collect();
            let info = log.append(batch_of(&records)).await.unwrap();
            assert_eq!(info.base_offset, base);
            assert_eq!(info.last_offset, base + values.len() as u64 - 1);
            for (i, (timestamp_ms, value)) in records.into_iter().enumerate() {
                model.records.push(Rec {
                    offset: base + i as u64,
                    timestamp_ms,
                    value,
                });
            }
            model.batches.push((base, info.last_offset + 1));
        }
        Op::Read { pick, max_bytes } => {
            let span = model.end() - model.start + 1;
            let offset = model.start + pick % span;
            let slice = log.read(offset, max_bytes, None).await.unwrap();
            if offset == model.end() {
                assert!(slice.is_empty());
                return;
            }
            let (base, next) = model.batch_holding(offset);
            assert!(
                slice.next_offset >= next,
                "at least the batch holding the offset"
            );
            assert!(
                slice.size_bytes() <= max_bytes || slice.next_offset == next,
                "max bytes respected past the first batch"
            );
            let bytes = slice.to_bytes().await.unwrap();
            let first = shardlog_wire::batch::BatchHeader::parse(&bytes).unwrap();
            assert_eq!(
                first.base_offset, base,
                "the read starts at the batch holding the offset"
            );
            assert!(
                model.batches.iter().any(|b| b.1 == slice.next_offset),
                "the read ends on a batch boundary"
            );
        }
        Op::Roll => log.roll().await.unwrap(),
        Op::Reopen => {
            log.close().await.unwrap();
            let (log_config, shard_config) = config(cache_bytes);
            *log = PartitionLog::open(dir, log_config, &StorageShard::new(shard_config))
                .await
                .unwrap();
        }
        Op::Retention => {
            let before = log.size_bytes();
            let outcome = log.apply_retention(model.clock_ms).await.unwrap();
            assert_eq!(log.size_bytes(), before - outcome.bytes_deleted);
            if outcome.segments_deleted > 0 {
                assert!(
                    log.size_bytes() >= 96 * 1024,
                    "retention keeps at least retention_bytes"
                );
            }
            let start = outcome.log_start_offset;
            assert!(start >= model.start && start <= model.end());
            assert!(
                start == model.end() || model.batches.iter().any(|b| b.0 == start),
                "segments start on batch boundaries"
            );
            model.records.retain(|r| r.offset >= start);
            model.batches.retain(|b| b.0 >= start);
            model.start = start;
        }
        Op::Truncate { pick } => {
            let span = model.end() - model.start + 1;
            let offset = model.start + pick % span;
            let new_end = log.truncate_to(offset).await.unwrap();
            let expected = if offset == model.end() {
                offset
            } else {
                model.batch_holding(offset).0
            };
            assert_eq!(new_end, expected);
            model.records.retain(|r| r.offset < new_end);
            model.batches.retain(|b| b.1 <= new_end);
        }
        Op::FindTimestamp { pick } => {
            let target = (pick % (model.clock_ms as u64 + 20)) as i64;
            let want = model
                .records
                .iter()
                .find(|r| r.timestamp_ms >= target)
                .map(|r| r.offset);
            assert_eq!(
                log.offset_for_timestamp(target).await.unwrap(),
                want,
                "timestamp {target}"
            );
        }
    }
}

async fn check(log: &PartitionLog, model: &Model) {
    assert_eq!(log.log_start_offset(), model.start);
    assert_eq!(log.high_watermark(), model.end());
    assert_eq!(log.log_end_offset(), model.end());
    assert_eq!(
        read_records(log, model.start, 8 * 1024).await,
        model.records
    );
    if model.start > 0 {
        assert!(matches!(
            log.read(model.start - 1, 100, None).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60), cache_bytes in prop_oneof![Just(0u64), Just(16 * 1024), Just(1 << 20)]) {
        run(move |dir| async move {
            let (log_config, shard_config) = config(cache_bytes);
            let mut log = PartitionLog::open(&dir, log_config, &StorageShard::new(shard_config)).await.unwrap();
            let mut model = Model::default();
            for op in ops {
                apply(&mut log, &mut model, op, &dir, cache_bytes).await;
                check(&log, &model).await;
            }
            log.close().await.unwrap();
        });
    }
}
