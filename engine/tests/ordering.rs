//! Sync before acknowledgement, proven on the engine's own record of what
//! it did: under `FlushPolicy::Always`, every append resolves only after an
//! fdatasync that covers its last offset has completed.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{batch_of, read_records, run, small_segments};
use shardlog_engine::events::{Event, Recorder};
use shardlog_engine::{FlushPolicy, LogConfig, PartitionLog, ShardConfig, StorageShard};

/// Checks the order in `events`; returns (acknowledgements, rolls, syncs).
///
/// The checker trusts no single number: a sync may claim only writes that
/// completed before it started, a completion must match a sync that
/// started with at least its claim, and an acknowledgement needs a
/// completed sync that covers it.
fn check_sync_before_ack(events: &[Event]) -> (usize, usize, usize) {
    let (mut written_through, mut synced_through) = (0u64, 0u64);
    let mut started: Vec<u64> = Vec::new();
    let (mut acks, mut rolls, mut syncs) = (0, 0, 0);
    for (at, event) in events.iter().enumerate() {
        let context = &events[at.saturating_sub(8)..=at];
        match *event {
            Event::WriteCompleted { through_offset } => {
                written_through = written_through.max(through_offset);
            }
            Event::SyncStarted { through_offset } => {
                assert!(
                    through_offset <= written_through,
                    "event {at}: a sync claims {through_offset}, written only {written_through}: {context:?}"
                );
                started.push(through_offset);
            }
            Event::SyncCompleted { through_offset } => {
                let matching = started
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s >= through_offset)
                    .min_by_key(|(_, s)| **s)
                    .map(|(i, _)| i);
                let Some(matching) = matching else {
                    panic!("event {at}: a sync completed through {through_offset} but none started with that much: {context:?}");
                };
                started.swap_remove(matching);
                synced_through = synced_through.max(through_offset);
                syncs += 1;
            }
            Event::Acknowledged { next_offset } => {
                assert!(
                    next_offset <= synced_through,
                    "event {at}: offsets up to {next_offset} acknowledged, only {synced_through} synced: {context:?}"
                );
                acks += 1;
            }
            Event::Rolled { .. } => rolls += 1,
            _ => {}
        }
    }
    (acks, rolls, syncs)
}

#[test]
fn every_acknowledged_offset_is_covered_by_a_completed_fdatasync() {
    run(|dir| async move {
        let recorder = Recorder::start(format!("{}/", dir.display()));
        let config = LogConfig {
            flush: FlushPolicy::Always,
            ..small_segments()
        };
        let shard = StorageShard::new(ShardConfig::default());
        let log = PartitionLog::open(dir.join("log"), config, &shard)
            .await
            .unwrap();
        let acked = Rc::new(RefCell::new(0u64));
        let tasks: Vec<_> = (0..6u64)
            .map(|appender| {
                let (log, acked) = (log.clone(), acked.clone());
                glommio::spawn_local(async move {
                    for i in 0..40u64 {
                        // 1 to 7 records of 10 B to ~2 KiB: batches from ~80 B to ~14 KiB.
                        let count = 1 + (appender + i) % 7;
                        let value_bytes = 10 + ((appender * 31 + i * 17) % 7) as usize * 300;
                        let records: Vec<(i64, Vec<u8>)> = (0..count)
                            .map(|k| (k as i64, vec![k as u8; value_bytes]))
                            .collect();
                        log.append(batch_of(&records)).await.unwrap();
                        *acked.borrow_mut() += count;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let events = recorder.take();
        let (acks, rolls, syncs) = check_sync_before_ack(&events);
        assert_eq!(acks, 6 * 40, "every append was recorded");
        assert!(rolls >= 3, "the appends crossed rolls ({rolls})");
        assert!(
            syncs < acks,
            "group commit: syncs are shared ({syncs} for {acks})"
        );
        let total = *acked.borrow();
        assert_eq!(log.high_watermark(), total);
        assert_eq!(read_records(&log, 0, 1 << 20).await.len() as u64, total);
    });
}

#[test]
fn the_check_catches_every_kind_of_early_acknowledgement() {
    use Event::*;
    let good = [
        WriteCompleted { through_offset: 5 },
        SyncStarted { through_offset: 5 },
        WriteCompleted { through_offset: 9 },
        SyncCompleted { through_offset: 5 },
        Acknowledged { next_offset: 5 },
    ];
    assert_eq!(check_sync_before_ack(&good), (1, 0, 1));
    let bad: [&[Event]; 4] = [
        // Acknowledged at write time.
        &[
            WriteCompleted { through_offset: 5 },
            Acknowledged { next_offset: 5 },
        ],
        // Acknowledged past what the sync covered.
        &[
            WriteCompleted { through_offset: 5 },
            SyncStarted { through_offset: 4 },
            SyncCompleted { through_offset: 4 },
            Acknowledged { next_offset: 5 },
        ],
        // A sync that claims writes completed while it ran.
        &[
            WriteCompleted { through_offset: 4 },
            SyncStarted { through_offset: 4 },
            WriteCompleted { through_offset: 5 },
            SyncCompleted { through_offset: 5 },
            Acknowledged { next_offset: 5 },
        ],
        // A sync that claims writes that had not completed when it started.
        &[
            WriteCompleted { through_offset: 4 },
            SyncStarted { through_offset: 5 },
            SyncCompleted { through_offset: 5 },
            Acknowledged { next_offset: 5 },
        ],
    ];
    for events in bad {
        let caught = std::panic::catch_unwind(|| check_sync_before_ack(events)).is_err();
        assert!(caught, "{events:?} went unnoticed");
    }
}
