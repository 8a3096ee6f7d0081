//! Crash tests: damage the end of a log the ways a crash can (a cut at any
//! byte, zero padding from an aligned direct write, flipped bits) and check
//! that reopening keeps exactly the whole, valid batches before the damage
//! and continues their offsets.

mod common;

use std::path::Path;

use common::{batch_of, copy_dir, read_records, run, segment_files, Rec};
use shardlog_engine::{FlushPolicy, LogConfig, PartitionLog, ShardConfig, StorageShard};

/// Batches of 1 to 4 records with values of varied sizes; returns the records
/// and each batch's (start position, end position, next offset).
async fn write_log(dir: &Path, batches: u64) -> (Vec<Rec>, Vec<(u64, u64, u64)>) {
    let shard = StorageShard::new(ShardConfig::default());
    let config = LogConfig {
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir, config, &shard).await.unwrap();
    let mut records = Vec::new();
    let mut bounds = Vec::new();
    let mut position = 0u64;
    for b in 0..batches {
        let count = 1 + b % 4;
        let values: Vec<(i64, Vec<u8>)> = (0..count)
            .map(|i| {
                (
                    b as i64,
                    vec![(b * 7 + i) as u8; (b as usize * 37 + i as usize * 11) % 300],
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
    log.close().await.unwrap();
    // A crash leaves no clean-shutdown checkpoint: these tests damage the
    // log as a crash would, so recovery must scan all of it.
    for path in checkpoint_files(dir) {
        std::fs::remove_file(path).unwrap();
    }
    (records, bounds)
}

fn checkpoint_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "checkpoint"))
        .collect()
}

/// Writes a file and syncs it: the engine reads with O_DIRECT, so the
/// damage must be on the disk, not only in the page cache.
fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file.sync_all().unwrap();
}

/// Reopens `dir` and checks it holds exactly the records below `expected_end`,
/// then that the next append continues right there.
async fn check_reopened(dir: &Path, records: &[Rec], expected_end: u64) {
    let shard = StorageShard::new(ShardConfig::default());
    let config = LogConfig {
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir, config, &shard).await.unwrap();
    assert_eq!(log.high_watermark(), expected_end, "in {}", dir.display());
    let kept = read_records(&log, 0, 1 << 20).await;
    let want: Vec<Rec> = records
        .iter()
        .filter(|r| r.offset < expected_end)
        .cloned()
        .collect();
    assert_eq!(kept, want);
    let next = log
        .append(batch_of(&[(0, b"after".to_vec())]))
        .await
        .unwrap();
    assert_eq!(
        next.base_offset, expected_end,
        "offsets continue without a gap or a duplicate"
    );
}

#[test]
fn a_cut_at_every_byte_of_the_last_batches_keeps_exactly_the_whole_ones() {
    run(|root| async move {
        let source = root.join("source");
        let (records, bounds) = write_log(&source, 40).await;
        let segment_name = segment_files(&source)[0].file_name().unwrap().to_owned();
        let original = std::fs::read(source.join(&segment_name)).unwrap();
        let first_cut = bounds[bounds.len() - 3].0;
        let end = bounds.last().unwrap().1;
        for cut in first_cut..=end {
            for zero_padding in [false, true] {
                let dir = root.join(format!("cut-{cut}-{zero_padding}"));
                copy_dir(&source, &dir);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(&segment_name))
                    .unwrap();
                file.set_len(cut).unwrap();
                if zero_padding {
                    file.set_len(cut.div_ceil(4096) * 4096 + 4096).unwrap();
                }
                // The engine reads with O_DIRECT: put the damage on the disk, not only in the page cache.
                file.sync_all().unwrap();
                // With zero padding, a batch whose removed bytes were all zero is whole again
                // (every batch ends with a zero byte: its last record's header count).
                let survives = |b: &(u64, u64, u64)| {
                    b.1 <= cut
                        || (zero_padding
                            && b.0 < cut
                            && original[cut as usize..b.1 as usize].iter().all(|x| *x == 0))
                };
                let expected_end = bounds
                    .iter()
                    .take_while(|b| survives(b))
                    .map(|b| b.2)
                    .last()
                    .unwrap_or(0);
                check_reopened(&dir, &records, expected_end).await;
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    });
}

#[test]
fn a_flipped_bit_cuts_the_log_before_the_damaged_batch() {
    run(|root| async move {
        let source = root.join("source");
        let (records, bounds) = write_log(&source, 30).await;
        let segment_name = segment_files(&source)[0].file_name().unwrap().to_owned();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for damaged in bounds.len() - 4..bounds.len() {
            let (start, end, _) = bounds[damaged];
            for _ in 0..25 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bytes 12..16 hold Kafka's partitionLeaderEpoch, which lies
                // outside the CRC: a flip there is not detectable by the batch.
                // (A flip in baseOffset, bytes 0..8, breaks offset continuity.)
                let mut at = start + seed % (end - start);
                if (start + 12..start + 16).contains(&at) {
                    at = start + 16;
                }
                let dir = root.join(format!("flip-{damaged}-{at}-{}", seed % 8));
                copy_dir(&source, &dir);
                let path = dir.join(&segment_name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[at as usize] ^= 1 << (seed % 8);
                write_synced(&path, &bytes);
                let expected_end = if damaged == 0 {
                    0
                } else {
                    bounds[damaged - 1].2
                };
                check_reopened(&dir, &records, expected_end).await;
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    });
}

#[test]
fn garbage_after_the_last_frame_is_cut_and_never_resurfaces() {
    run(|root| async move {
        let dir = root.join("log");
        let (records, bounds) = write_log(&dir, 10).await;
        let path = segment_files(&dir)[0].clone();
        let end = bounds.last().unwrap().1;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(end as usize);
        bytes.extend_from_slice(&[0x5a; 5000]);
        write_synced(&path, &bytes);
        let last = bounds.last().unwrap().2;
        check_reopened(&dir, &records, last).await;
        // The garbage is gone from the file, not merely skipped: after the
        // batch appended at `end` come zeros (padding, allocated blocks).
        let after = std::fs::read(&path).unwrap();
        assert!(
            !after[end as usize..]
                .windows(16)
                .any(|w| w.iter().all(|b| *b == 0x5a)),
            "the garbage after the last frame was cut"
        );
    });
}

#[test]
fn a_damaged_sealed_segment_is_reported_not_silently_dropped() {
    run(|root| async move {
        let dir = root.join("log");
        {
            let shard = StorageShard::new(ShardConfig::default());
            let log = PartitionLog::open(&dir, common::small_segments(), &shard)
                .await
                .unwrap();
            for i in 0..200u64 {
                log.append(batch_of(&[(0, vec![i as u8; 700])]))
                    .await
                    .unwrap();
            }
            log.close().await.unwrap();
        }
        let sealed = segment_files(&dir)[0].clone();
        std::fs::remove_file(sealed.with_extension("index")).unwrap();
        let mut bytes = std::fs::read(&sealed).unwrap();
        bytes[1000] ^= 0x40;
        write_synced(&sealed, &bytes);
        let shard = StorageShard::new(ShardConfig::default());
        let reopened = PartitionLog::open(&dir, common::small_segments(), &shard).await;
        assert!(matches!(
            reopened,
            Err(shardlog_engine::Error::Corrupt { .. })
        ));
    });
}
