//! Recovery checkpoints: a restart scans the active segment only from the
//! last synced point written down (nothing after a clean close), a crash
//! after it is still cut at the first damaged frame, and a truncation never
//! leaves a checkpoint that speaks for bytes it changed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{batch_of, copy_dir, read_records, run, segment_files, Rec};
use shardlog_engine::events::{Event, Recorder};
use shardlog_engine::{FlushPolicy, LogConfig, PartitionLog, ShardConfig, StorageShard};

fn config(checkpoint_interval: Duration) -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Always,
        recovery_checkpoint_interval: checkpoint_interval,
        ..LogConfig::default()
    }
}

/// Appends `count` batches numbered from `first` (1 to 3 records, values
/// of varied sizes, timestamps = batch number × 1000); returns the records
/// and each batch's (start position, end position, next offset), positions
/// counted from `start_position`.
async fn append_batches(
    log: &PartitionLog,
    first: u64,
    count: u64,
    value_bytes: usize,
    start_position: u64,
) -> (Vec<Rec>, Vec<(u64, u64, u64)>) {
    let mut records = Vec::new();
    let mut bounds = Vec::new();
    let mut position = start_position;
    for b in first..first + count {
        let values: Vec<(i64, Vec<u8>)> = (0..1 + b % 3)
            .map(|i| {
                (
                    b as i64 * 1000,
                    vec![(b + i) as u8; value_bytes + (b as usize * 13) % 200],
                )
            })
            .collect();
        let encoded = batch_of(&values);
        let len = encoded.len() as u64;
        let info = log.append(encoded).await.unwrap();
        for (i, (timestamp_ms, value)) in values.into_iter().enumerate() {
            records.push(Rec {
                offset: info.base_offset + i as u64,
                timestamp_ms,
                value,
            });
        }
        bounds.push((position, position + len, info.last_offset + 1));
        position += len;
    }
    (records, bounds)
}

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "checkpoint"))
        .collect();
    files.sort();
    files
}

/// The position a checkpoint file vouches for (its header's `log_bytes`,
/// bytes 24..32, as in the sealed index format).
fn checkpoint_position(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(bytes.get(24..32)?.try_into().ok()?))
}

/// Waits (bounded) until the log's checkpoint vouches for `position`.
async fn await_checkpoint_at(dir: &Path, position: u64) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(path) = checkpoint_files(dir).first() {
            if checkpoint_position(path) == Some(position) {
                return std::fs::read(path).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at {position} within a minute: {:?}",
            checkpoint_files(dir)
                .iter()
                .map(|p| checkpoint_position(p))
                .collect::<Vec<_>>()
        );
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Reopens `dir`, checks where the active segment's scan started and that
/// exactly the records below `expected_end` are there, then that appends
/// continue at `expected_end`.
async fn reopen_and_check(dir: &Path, records: &[Rec], expected_end: u64, scan_from: u64) {
    let recorder = Recorder::start(dir.to_string_lossy().into_owned());
    let shard = StorageShard::new(ShardConfig::default());
    let log = PartitionLog::open(dir, config(Duration::from_secs(3600)), &shard)
        .await
        .unwrap();
    let scans: Vec<u64> = recorder
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::ActiveScanned { from_position, .. } => Some(from_position),
            _ => None,
        })
        .collect();
    assert_eq!(
        scans,
        vec![scan_from],
        "where the scan of {} started",
        dir.display()
    );
    assert_eq!(log.high_watermark(), expected_end, "in {}", dir.display());
    let want: Vec<Rec> = records
        .iter()
        .filter(|r| r.offset < expected_end)
        .cloned()
        .collect();
    assert_eq!(read_records(&log, 0, 1 << 20).await, want);
    // The index and timestamps of the checkpointed part serve lookups.
    if let Some(middle) = want.get(want.len() / 2) {
        let found = log.offset_for_timestamp(middle.timestamp_ms).await.unwrap();
        let first_with_that_time = want
            .iter()
            .find(|r| r.timestamp_ms >= middle.timestamp_ms)
            .map(|r| r.offset);
        assert_eq!(found, first_with_that_time);
    }
    let next = log
        .append(batch_of(&[(0, b"after".to_vec())]))
        .await
        .unwrap();
    assert_eq!(
        next.base_offset, expected_end,
        "offsets continue without a gap"
    );
    log.close().await.unwrap();
}

#[test]
fn a_clean_close_restarts_without_scanning_the_active_segment() {
    run(|root| async move {
        let dir = root.join("log");
        let shard = StorageShard::new(ShardConfig::default());
        let log = PartitionLog::open(&dir, config(Duration::from_secs(3600)), &shard)
            .await
            .unwrap();
        let (records, bounds) = append_batches(&log, 0, 50, 500, 0).await;
        log.close().await.unwrap();
        drop(log);
        let end = bounds.last().unwrap();
        assert_eq!(checkpoint_files(&dir).len(), 1, "close leaves a checkpoint");
        assert_eq!(checkpoint_position(&checkpoint_files(&dir)[0]), Some(end.1));
        reopen_and_check(&dir, &records, end.2, end.1).await;
    });
}

/// The crash image: the checkpoint as it stood after batches A, the segment
/// after batches B too, cut at any byte. The scan starts at the checkpoint
/// and keeps exactly the whole batches; a cut inside the checkpointed part
/// makes the checkpoint untrustworthy and the whole segment is scanned.
#[test]
fn after_a_crash_the_scan_starts_at_the_checkpoint_and_cuts_what_is_torn() {
    run(|root| async move {
        let dir = root.join("log");
        let shard = StorageShard::new(ShardConfig::default());
        let log = PartitionLog::open(&dir, config(Duration::from_millis(20)), &shard)
            .await
            .unwrap();
        let (mut records, mut bounds) = append_batches(&log, 0, 40, 300, 0).await;
        let end_a = bounds.last().unwrap().1;
        let checkpoint_a = await_checkpoint_at(&dir, end_a).await;
        let (more, more_bounds) = append_batches(&log, 40, 12, 300, end_a).await;
        records.extend(more);
        bounds.extend(more_bounds);
        let image = root.join("image");
        copy_dir(&dir, &image);
        log.close().await.unwrap();
        for path in checkpoint_files(&image) {
            std::fs::write(path, &checkpoint_a).unwrap();
        }
        let segment = segment_files(&image)[0].file_name().unwrap().to_owned();
        let end = bounds.last().unwrap().1;
        let cuts = bounds
            .iter()
            .skip(37)
            .flat_map(|b| [b.0, b.0 + 1, b.0 + 61, (b.0 + b.1) / 2, b.1 - 1])
            .chain([end]);
        for cut in cuts {
            let crashed = root.join(format!("cut-{cut}"));
            copy_dir(&image, &crashed);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(crashed.join(&segment))
                .unwrap();
            file.set_len(cut).unwrap();
            file.sync_all().unwrap();
            let expected_end = bounds
                .iter()
                .take_while(|b| b.1 <= cut)
                .map(|b| b.2)
                .last()
                .unwrap_or(0);
            let scan_from = if cut >= end_a { end_a } else { 0 };
            reopen_and_check(&crashed, &records, expected_end, scan_from).await;
            std::fs::remove_dir_all(&crashed).unwrap();
        }
    });
}

/// A truncation changes synced bytes: the checkpoint of the old end must
/// not survive it, or a restart would trust a position inside new frames.
#[test]
fn a_truncation_removes_the_checkpoint_before_it_cuts() {
    run(|root| async move {
        let dir = root.join("log");
        let shard = StorageShard::new(ShardConfig::default());
        let quiet = config(Duration::from_secs(3600));
        let log = PartitionLog::open(&dir, quiet.clone(), &shard)
            .await
            .unwrap();
        let (records, bounds) = append_batches(&log, 0, 30, 200, 0).await;
        log.close().await.unwrap();
        drop(log);
        assert_eq!(checkpoint_files(&dir).len(), 1);

        let log = PartitionLog::open(&dir, quiet, &shard).await.unwrap();
        let keep = bounds[9];
        assert_eq!(log.truncate_to(keep.2).await.unwrap(), keep.2);
        assert!(
            checkpoint_files(&dir).is_empty(),
            "the truncation removed it"
        );
        // New, larger batches run past the old end, so the old checkpoint's
        // position would lie inside one of them.
        let (new_records, new_bounds) = append_batches(&log, 100, 20, 900, keep.1).await;
        assert!(new_bounds.last().unwrap().1 > bounds.last().unwrap().1);
        let image = root.join("image");
        copy_dir(&dir, &image);
        log.close().await.unwrap();

        let mut expected: Vec<Rec> = records.into_iter().filter(|r| r.offset < keep.2).collect();
        expected.extend(new_records);
        let expected_end = new_bounds.last().unwrap().2;
        reopen_and_check(&image, &expected, expected_end, 0).await;
    });
}
