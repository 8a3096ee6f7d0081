//! A full or failing disk, injected with `shardlog_engine::faults` where the
//! engine examines its io_uring results: a full disk fails only the
//! unwritten appends and the log goes on; any other write error and any
//! failed fdatasync poison the log until `recover`, which keeps everything
//! acknowledged and lets appends continue without a reopen.

mod common;

use std::path::Path;

use common::{batch_of, read_records, run, small_segments, Rec};
use shardlog_engine::faults::{self, Fault, FaultOp};
use shardlog_engine::{
    Error, FlushPolicy, LogConfig, LogHealth, PartitionLog, ShardConfig, StorageShard,
};

/// A fault filter only this test's directory matches (tests share the process).
fn filter(dir: &Path) -> String {
    format!("{}/", dir.display())
}

async fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config, &StorageShard::new(ShardConfig::default()))
        .await
        .unwrap()
}

/// Appends one batch of `count` records whose values name `first`; on
/// success, pushes the records onto `acked`.
async fn append(
    log: &PartitionLog,
    first: u64,
    count: u64,
    acked: &mut Vec<Rec>,
) -> Result<(), Error> {
    let records: Vec<(i64, Vec<u8>)> = (first..first + count)
        .map(|v| (v as i64, format!("value-{v}-").repeat(20).into_bytes()))
        .collect();
    let info = log.append(batch_of(&records)).await?;
    for (i, (timestamp_ms, value)) in records.into_iter().enumerate() {
        acked.push(Rec {
            offset: info.base_offset + i as u64,
            timestamp_ms,
            value,
        });
    }
    Ok(())
}

/// The log holds exactly `want` (in order), and so does the log reopened from disk.
async fn check_holds(log: PartitionLog, dir: &Path, config: LogConfig, want: &[Rec]) {
    assert_eq!(
        read_records(&log, log.log_start_offset(), 1 << 20).await,
        want
    );
    log.close().await.unwrap();
    drop(log);
    let reopened = open(dir, config).await;
    assert_eq!(read_records(&reopened, 0, 1 << 20).await, want);
}

#[test]
fn a_full_disk_fails_the_unwritten_appends_and_writes_resume_when_space_returns() {
    run(|dir| async move {
        let config = LogConfig::default();
        let log = open(&dir, config.clone()).await;
        let mut acked = Vec::new();
        for i in 0..5 {
            append(&log, i * 3, 3, &mut acked).await.unwrap();
        }
        faults::arm(Fault::new(FaultOp::Write, libc::ENOSPC, filter(&dir)).count(u32::MAX));
        for attempt in 0..3 {
            let error = append(&log, 100 + attempt, 1, &mut acked)
                .await
                .unwrap_err();
            assert!(matches!(error, Error::StorageFull { .. }), "{error}");
            assert!(error.is_retriable());
        }
        assert_eq!(
            log.health(),
            LogHealth::Healthy,
            "a full disk does not poison"
        );
        assert_eq!(log.high_watermark(), 15);
        assert_eq!(log.log_end_offset(), 15, "refused appends leave no gap");
        faults::disarm(&filter(&dir));
        // Space is back: the same log takes appends again, offsets continue.
        append(&log, 200, 2, &mut acked).await.unwrap();
        assert_eq!(acked.last().unwrap().offset, 16);
        check_holds(log, &dir, config, &acked).await;
    });
}

/// The refused write's bytes may have reached the file (a partial write):
/// they are cut at once, so a reopen cannot bring the refused batch back.
#[test]
fn a_refused_append_never_turns_up_after_a_reopen() {
    run(|dir| async move {
        let config = LogConfig::default();
        let log = open(&dir, config.clone()).await;
        let mut acked = Vec::new();
        append(&log, 0, 2, &mut acked).await.unwrap();
        faults::arm(Fault::new(FaultOp::Write, libc::ENOSPC, filter(&dir)));
        let error = append(&log, 100, 3, &mut acked).await.unwrap_err();
        assert!(matches!(error, Error::StorageFull { .. }), "{error}");
        faults::disarm(&filter(&dir));
        check_holds(log, &dir, config, &acked).await;
    });
}

#[test]
fn a_full_disk_under_concurrent_appends_loses_nothing_acknowledged() {
    run(|dir| async move {
        let config = LogConfig::default();
        let log = open(&dir, config.clone()).await;
        let acked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        // The third write round fails, then every one until disarmed.
        faults::arm(
            Fault::new(FaultOp::Write, libc::ENOSPC, filter(&dir))
                .after(2)
                .count(u32::MAX),
        );
        let tasks: Vec<_> = (0..4u64)
            .map(|appender| {
                let (log, acked) = (log.clone(), acked.clone());
                glommio::spawn_local(async move {
                    let mut full = 0;
                    for i in 0..20u64 {
                        let mut mine = Vec::new();
                        match append(&log, appender * 1000 + i * 4, 1 + i % 4, &mut mine).await {
                            Ok(()) => acked.borrow_mut().extend(mine),
                            Err(Error::StorageFull { .. }) => full += 1,
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                    full
                })
            })
            .collect();
        let mut full_count = 0;
        for task in tasks {
            full_count += task.await;
        }
        assert!(full_count > 0, "the fault was hit");
        assert_eq!(log.health(), LogHealth::Healthy);
        faults::disarm(&filter(&dir));
        let mut acked = acked.borrow().clone();
        append(&log, 9999, 1, &mut acked).await.unwrap();
        acked.sort_by_key(|r| r.offset);
        check_holds(log, &dir, config, &acked).await;
    });
}

#[test]
fn a_write_error_poisons_the_log_until_recover_which_cuts_the_refused_bytes() {
    run(|dir| async move {
        let config = LogConfig::default();
        let log = open(&dir, config.clone()).await;
        let mut acked = Vec::new();
        for i in 0..4 {
            append(&log, i * 2, 2, &mut acked).await.unwrap();
        }
        let size_before = log.size_bytes();
        // The write runs and its bytes reach the file; the engine is told EIO.
        faults::arm(Fault::new(FaultOp::Write, libc::EIO, filter(&dir)));
        let error = append(&log, 100, 3, &mut acked).await.unwrap_err();
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
        assert!(!error.is_retriable());
        let message = error.to_string();
        assert!(message.contains("poisoned"), "{message}");
        assert!(
            message.contains("shardlog topic recover <topic> --partition <p>"),
            "{message}"
        );
        let LogHealth::Poisoned { reason, since_ms } = log.health() else {
            panic!("poisoned expected, got {:?}", log.health());
        };
        assert!(reason.contains("writing segment"), "{reason}");
        assert!(since_ms > 0);
        let refused = append(&log, 200, 1, &mut acked).await.unwrap_err();
        assert!(matches!(refused, Error::Poisoned { .. }), "{refused}");
        assert!(matches!(log.flush().await, Err(Error::Poisoned { .. })));
        assert!(matches!(log.roll().await, Err(Error::Poisoned { .. })));
        // Reads below the high watermark still work.
        assert_eq!(read_records(&log, 0, 1 << 20).await, acked);

        let outcome = log.recover().await.unwrap();
        assert!(outcome.was_poisoned);
        assert_eq!(outcome.kept_bytes, size_before);
        assert!(outcome.cut_bytes > 0, "the refused write's bytes are cut");
        assert_eq!(outcome.next_offset, 8);
        assert!(outcome.failed_appends_kept.is_empty());
        assert!(outcome.acknowledged_cut.is_empty());
        assert_eq!(log.health(), LogHealth::Healthy);
        append(&log, 300, 2, &mut acked).await.unwrap();
        assert_eq!(
            acked.last().unwrap().offset,
            9,
            "offsets continue after the kept frames"
        );
        check_holds(log, &dir, config, &acked).await;
    });
}

#[test]
fn a_failed_fdatasync_poisons_and_recover_keeps_the_written_frames() {
    run(|dir| async move {
        let config = LogConfig::default();
        let log = open(&dir, config.clone()).await;
        let mut acked = Vec::new();
        for i in 0..3 {
            append(&log, i, 1, &mut acked).await.unwrap();
        }
        faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)));
        let error = append(&log, 50, 4, &mut acked).await.unwrap_err();
        assert!(
            matches!(error, Error::Poisoned { ref reason, .. } if reason.contains("syncing segment")),
            "{error}"
        );
        assert!(matches!(log.health(), LogHealth::Poisoned { .. }));
        let written_bytes = log.size_bytes();
        let outcome = log.recover().await.unwrap();
        // The batch was written whole, only its sync failed: it validates and is
        // kept, and the broker learns that its append had failed.
        assert_eq!(outcome.failed_appends_kept, 3..7);
        assert_eq!(outcome.kept_bytes, written_bytes, "only the padding is cut");
        assert!(outcome.rescanned_from_bytes <= outcome.synced_bytes);
        assert_eq!(log.high_watermark(), 7);
        let kept: Vec<Rec> = read_records(&log, 3, 1 << 20).await;
        assert_eq!(
            kept.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        acked.extend(kept);
        append(&log, 60, 1, &mut acked).await.unwrap();
        assert_eq!(acked.last().unwrap().offset, 7);
        check_holds(log, &dir, config, &acked).await;
    });
}

#[test]
fn recover_on_a_healthy_log_does_nothing() {
    run(|dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut acked = Vec::new();
        append(&log, 0, 2, &mut acked).await.unwrap();
        let outcome = log.recover().await.unwrap();
        assert!(!outcome.was_poisoned);
        assert_eq!(outcome.next_offset, 2);
        assert_eq!(outcome.cut_bytes, 0);
        append(&log, 2, 1, &mut acked).await.unwrap();
        assert_eq!(read_records(&log, 0, 1 << 20).await, acked);
    });
}

/// Under `Never` the only syncs are a roll's: fail the first or the second
/// sync of a roll (before and after the padding is cut) and recover.
#[test]
fn a_failed_sync_while_rolling_poisons_and_recover_continues_the_segment() {
    for after in [0, 1] {
        run(move |dir| async move {
            let config = LogConfig {
                flush: FlushPolicy::Never,
                ..small_segments()
            };
            let log = open(&dir, config.clone()).await;
            faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)).after(after));
            let mut acked = Vec::new();
            let mut poisoned_at = None;
            for i in 0..200u64 {
                match append(&log, i * 4, 4, &mut acked).await {
                    Ok(()) => {}
                    Err(Error::Poisoned { .. }) => {
                        poisoned_at = Some(i);
                        break;
                    }
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            assert!(poisoned_at.is_some(), "a roll's sync failed");
            assert_eq!(log.segment_count(), 1, "the roll did not happen");
            let outcome = log.recover().await.unwrap();
            assert!(outcome.acknowledged_cut.is_empty(), "{outcome:?}");
            assert_eq!(outcome.next_offset, acked.len() as u64);
            for i in 0..200u64 {
                append(&log, 1000 + i * 4, 4, &mut acked).await.unwrap();
            }
            assert!(log.segment_count() > 2, "rolls work again");
            check_holds(log, &dir, config, &acked).await;
        });
    }
}

#[test]
fn a_failed_interval_sync_poisons_the_log() {
    run(|dir| async move {
        let config = LogConfig {
            flush: FlushPolicy::Interval { interval_ms: 1 },
            ..LogConfig::default()
        };
        let log = open(&dir, config.clone()).await;
        faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)));
        let mut acked = Vec::new();
        // Acknowledged once written; the sync a millisecond later fails.
        append(&log, 0, 2, &mut acked).await.unwrap();
        let mut waited_ms = 0;
        while log.health() == LogHealth::Healthy {
            assert!(waited_ms < 60_000, "the interval sync never ran");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            waited_ms += 1;
        }
        assert!(matches!(log.health(), LogHealth::Poisoned { .. }));
        assert_eq!(faults::injected_count(&filter(&dir)), 1);
        let outcome = log.recover().await.unwrap();
        assert!(outcome.acknowledged_cut.is_empty());
        append(&log, 2, 1, &mut acked).await.unwrap();
        check_holds(log, &dir, config, &acked).await;
    });
}

/// A roll that failed half-way can leave an index for the active segment
/// and an empty next segment; recover removes them, so a later roll and a
/// reopen see one consistent log.
#[test]
fn recover_removes_what_a_failed_roll_left_behind() {
    run(|dir| async move {
        let config = small_segments();
        let log = open(&dir, config.clone()).await;
        let mut acked = Vec::new();
        for i in 0..10 {
            append(&log, i, 1, &mut acked).await.unwrap();
        }
        faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)));
        assert!(append(&log, 10, 1, &mut acked).await.is_err());
        let end = log.log_end_offset();
        std::fs::write(dir.join(format!("{end:020}.log")), b"").unwrap();
        std::fs::write(dir.join(format!("{:020}.index", 0)), b"junk").unwrap();
        let outcome = log.recover().await.unwrap();
        acked.extend(read_records(&log, outcome.failed_appends_kept.start, 1 << 20).await);
        assert!(!dir.join(format!("{:020}.index", 0)).exists());
        for i in 0..200u64 {
            append(&log, 100 + i, 1, &mut acked).await.unwrap();
        }
        check_holds(log, &dir, config, &acked).await;
    });
}

/// Many appenders, a sync that fails in the middle: every append either
/// succeeded or failed as poisoned, and after recover the log holds every
/// acknowledged record, in place, and continues.
#[test]
fn nothing_acknowledged_is_lost_when_a_sync_fails_under_load() {
    for after in [0u32, 3, 7] {
        run(move |dir| async move {
            let config = small_segments();
            let log = open(&dir, config.clone()).await;
            faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)).after(after));
            let acked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let tasks: Vec<_> = (0..4u64)
                .map(|appender| {
                    let (log, acked) = (log.clone(), acked.clone());
                    glommio::spawn_local(async move {
                        for i in 0..30u64 {
                            let mut mine = Vec::new();
                            match append(&log, appender * 1000 + i * 5, 1 + i % 5, &mut mine).await
                            {
                                Ok(()) => acked.borrow_mut().extend(mine),
                                Err(Error::Poisoned { .. }) => {}
                                Err(other) => panic!("unexpected {other}"),
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            assert!(matches!(log.health(), LogHealth::Poisoned { .. }));
            let mut acked = acked.borrow().clone();
            acked.sort_by_key(|r| r.offset);
            let outcome = log.recover().await.unwrap();
            assert!(outcome.acknowledged_cut.is_empty());
            let all = read_records(&log, 0, 1 << 20).await;
            let kept: Vec<Rec> = all
                .iter()
                .filter(|r| outcome.failed_appends_kept.contains(&r.offset))
                .cloned()
                .collect();
            let mut want = acked.clone();
            want.extend(kept);
            want.sort_by_key(|r| r.offset);
            assert_eq!(all, want, "every acknowledged record, in place");
            append(&log, 50_000, 2, &mut want).await.unwrap();
            check_holds(log, &dir, config, &want).await;
        });
    }
}

/// Frames already synced lie in the block that the next write round
/// rewrites; if that block was damaged, recover refuses instead of cutting
/// acknowledged data, and the log stays poisoned.
#[test]
fn recover_refuses_to_cut_synced_frames_and_the_log_stays_poisoned() {
    run(|dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut acked = Vec::new();
        for i in 0..3 {
            append(&log, i, 1, &mut acked).await.unwrap();
        }
        let synced_bytes = log.size_bytes();
        faults::arm(Fault::new(FaultOp::Sync, libc::EIO, filter(&dir)));
        assert!(append(&log, 10, 1, &mut acked).await.is_err());
        // Damage the last acknowledged batch on disk (inside the block of the synced end).
        let segment = common::segment_files(&dir)[0].clone();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[synced_bytes as usize - 10] ^= 0x08;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file.sync_all().unwrap();
        let error = log.recover().await.unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error}");
        assert!(matches!(log.health(), LogHealth::Poisoned { .. }));
        assert!(matches!(
            append(&log, 20, 1, &mut acked).await,
            Err(Error::Poisoned { .. })
        ));
    });
}
