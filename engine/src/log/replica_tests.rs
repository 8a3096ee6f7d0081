//! A follower's log built with `append_replica` from its leader's bytes.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shardlog_wire::batch::{BatchIter, BatchLimits, ValidBatch};

use super::tests::{batch, run, small_segments};
use super::*;
use crate::shard::ShardConfig;

async fn open_log(dir: &std::path::Path) -> PartitionLog {
    let shard = StorageShard::new(ShardConfig::default());
    PartitionLog::open(dir, small_segments(), &shard)
        .await
        .unwrap()
}

/// Every byte of the log from offset 0 to its high watermark, batch by batch.
async fn batches_of(log: &PartitionLog) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let slice = log.read(offset, 64 * 1024, None).await.unwrap();
        let bytes = slice.to_bytes().await.unwrap();
        for batch in BatchIter::new(bytes, BatchLimits::default()) {
            out.push(batch.unwrap().into_bytes());
        }
        offset = slice.next_offset;
    }
    out
}

fn valid(bytes: Bytes) -> ValidBatch {
    ValidBatch::check(BytesMut::from(&bytes[..]), &BatchLimits::default()).unwrap()
}

/// Appends `(records, epoch)` batches as a leader, copies them into a
/// follower with `append_replica`, and checks the two logs hold the same bytes.
async fn replicate(dir: &std::path::Path, batches: &[(u64, u32)]) {
    let leader = open_log(&dir.join("leader")).await;
    let mut value = 0;
    for (records, epoch) in batches {
        leader.set_leader_epoch(*epoch);
        leader
            .append(batch(value, *records, 40, 1_000))
            .await
            .unwrap();
        value += records;
    }
    let follower = open_log(&dir.join("follower")).await;
    let leader_batches = batches_of(&leader).await;
    for bytes in &leader_batches {
        let info = follower.append_replica(valid(bytes.clone())).await.unwrap();
        assert_eq!(info.base_offset, valid(bytes.clone()).header().base_offset);
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(batches_of(&follower).await, leader_batches, "byte for byte");
    assert_eq!(
        follower.leader_epochs(),
        leader.leader_epochs(),
        "the same epochs"
    );
    follower.close().await.unwrap();
    // And after a restart, read back from its own files.
    let reopened = open_log(&dir.join("follower")).await;
    assert_eq!(batches_of(&reopened).await, leader_batches);
    assert_eq!(reopened.leader_epochs(), leader.leader_epochs());
}

#[test]
fn a_follower_stores_the_leaders_batches_verbatim() {
    run(|dir| async move {
        replicate(&dir, &[(3, 0), (1, 0), (5, 2), (2, 2), (4, 7)]).await;
    });
}

#[test]
fn a_batch_that_does_not_continue_the_log_is_refused_and_nothing_is_stored() {
    run(|dir| async move {
        let leader = open_log(&dir.join("leader")).await;
        leader.set_leader_epoch(4);
        leader.append(batch(0, 2, 40, 1_000)).await.unwrap();
        leader.append(batch(2, 3, 40, 1_000)).await.unwrap();
        let from_leader = batches_of(&leader).await;

        let follower = open_log(&dir.join("follower")).await;
        let gap = follower.append_replica(valid(from_leader[1].clone())).await;
        assert!(
            matches!(
                gap,
                Err(Error::NotContinuous {
                    base_offset: 2,
                    log_end_offset: 0,
                    ..
                })
            ),
            "{gap:?}"
        );
        assert_eq!(follower.log_end_offset(), 0);
        follower
            .append_replica(valid(from_leader[0].clone()))
            .await
            .unwrap();
        let again = follower.append_replica(valid(from_leader[0].clone())).await;
        assert!(
            matches!(again, Err(Error::NotContinuous { .. })),
            "{again:?}"
        );
        assert_eq!(follower.log_end_offset(), 2);

        // An older leader's batch after a newer one's is refused too.
        let stale = open_log(&dir.join("stale")).await;
        stale.set_leader_epoch(3);
        stale.append(batch(0, 2, 40, 1_000)).await.unwrap();
        stale.append(batch(2, 3, 40, 1_000)).await.unwrap();
        let older = batches_of(&stale).await;
        let refused = follower.append_replica(valid(older[1].clone())).await;
        assert!(
            matches!(
                refused,
                Err(Error::NotContinuous {
                    leader_epoch: 3,
                    log_leader_epoch: 4,
                    ..
                })
            ),
            "{refused:?}"
        );
        follower
            .append_replica(valid(from_leader[1].clone()))
            .await
            .unwrap();
        assert_eq!(batches_of(&follower).await, from_leader);
        // The follower's epoch moved up with the batches: as a new leader it
        // stamps no older one.
        follower.set_leader_epoch(4);
        let own = follower.append(batch(5, 1, 40, 1_000)).await.unwrap();
        assert_eq!(own.base_offset, 5);
        let stamped = batches_of(&follower).await;
        assert_eq!(valid(stamped[2].clone()).header().leader_epoch, 4);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Any run of batches, epochs never going back, segments rolling on the
    /// way: the follower's log is the leader's, byte for byte.
    #[test]
    fn replication_copies_any_log_verbatim(
        steps in proptest::collection::vec((1u64..40, 0u32..3), 1..40)
    ) {
        let mut epoch = 0;
        let batches: Vec<(u64, u32)> = steps
            .into_iter()
            .map(|(records, bump)| {
                epoch += bump;
                (records, epoch)
            })
            .collect();
        run(|dir| async move { replicate(&dir, &batches).await });
    }
}

fn starts(log: &PartitionLog) -> Vec<(u32, u64)> {
    log.leader_epochs()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

#[test]
fn epochs_are_written_down_with_their_first_batch_and_answer_a_follower() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        assert_eq!(log.end_offset_for_epoch(0), None, "no batch yet");
        log.append(batch(0, 3, 40, 1_000)).await.unwrap();
        log.set_leader_epoch(2);
        log.set_leader_epoch(3); // epoch 3 gets no batch: no entry
        log.set_leader_epoch(4);
        log.append(batch(3, 2, 40, 1_000)).await.unwrap();
        log.append(batch(5, 1, 40, 1_000)).await.unwrap();
        log.set_leader_epoch(7);
        log.append(batch(6, 4, 40, 1_000)).await.unwrap();
        assert_eq!(starts(&log), [(0, 0), (4, 3), (7, 6)]);
        assert_eq!(log.end_offset_for_epoch(0), Some((0, 3)));
        assert_eq!(log.end_offset_for_epoch(3), Some((0, 3)));
        assert_eq!(log.end_offset_for_epoch(4), Some((4, 6)));
        assert_eq!(log.end_offset_for_epoch(9), Some((7, 10)));
        log.close().await.unwrap();

        let reopened = open_log(&dir).await;
        assert_eq!(starts(&reopened), [(0, 0), (4, 3), (7, 6)], "durable");
        // The epoch to stamp comes back too: a new batch is in epoch 7.
        reopened.append(batch(10, 1, 40, 1_000)).await.unwrap();
        let last = batches_of(&reopened).await.pop().unwrap();
        assert_eq!(valid(last).header().leader_epoch, 7);
    });
}

#[test]
fn a_truncation_takes_the_epochs_of_the_cut_tail_with_it() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        log.append(batch(0, 3, 40, 1_000)).await.unwrap();
        log.set_leader_epoch(1);
        log.append(batch(3, 3, 40, 1_000)).await.unwrap();
        log.set_leader_epoch(2);
        log.append(batch(6, 3, 40, 1_000)).await.unwrap();
        assert_eq!(log.truncate_to(3).await.unwrap(), 3);
        assert_eq!(starts(&log), [(0, 0)]);
        assert_eq!(log.end_offset_for_epoch(2), Some((0, 3)));
        // The next leader's epoch starts where the log now ends.
        log.set_leader_epoch(3);
        log.append(batch(3, 2, 40, 1_000)).await.unwrap();
        assert_eq!(starts(&log), [(0, 0), (3, 3)]);
        log.close().await.unwrap();
        assert_eq!(starts(&open_log(&dir).await), [(0, 0), (3, 3)]);
    });
}

#[test]
fn an_epoch_whose_batch_a_crash_lost_is_dropped_at_open_and_damage_is_an_error() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        log.append(batch(0, 3, 40, 1_000)).await.unwrap();
        log.close().await.unwrap();
        drop(log);
        // As if the entry of epoch 6 was written and the crash came before its batch.
        let file = dir.join(epochs::EPOCHS_FILE);
        let mut cache =
            epochs::EpochCache::decode(&std::fs::read_to_string(&file).unwrap()).unwrap();
        cache.assign(6, 3);
        std::fs::write(&file, cache.encode()).unwrap();
        let reopened = open_log(&dir).await;
        assert_eq!(starts(&reopened), [(0, 0)]);
        reopened.set_leader_epoch(6);
        reopened.append(batch(3, 1, 40, 1_000)).await.unwrap();
        assert_eq!(starts(&reopened), [(0, 0), (6, 3)]);
        reopened.close().await.unwrap();
        drop(reopened);

        std::fs::write(&file, "shardlog-leader-epochs 1\n2\n0 0\n").unwrap();
        let shard = StorageShard::new(ShardConfig::default());
        let damaged = PartitionLog::open(&dir, small_segments(), &shard).await;
        assert!(matches!(damaged, Err(Error::Corrupt { .. })), "{damaged:?}");
    });
}

#[test]
fn appends_in_flight_when_an_epoch_begins_keep_their_order() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        log.append(batch(0, 1, 40, 1_000)).await.unwrap();
        log.set_leader_epoch(3);
        // Many appends queued at once, the first of them the epoch's first
        // batch: the entry is stored by the writer, so none waits for it and
        // offsets follow the order of the calls.
        let appends: Vec<_> = (0..40u64)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(batch(i, 2, 40, 1_000)).await })
            })
            .collect();
        let mut bases = Vec::new();
        for task in appends {
            bases.push(task.await.unwrap().base_offset);
        }
        let expected: Vec<u64> = (0..40u64).map(|i| 1 + 2 * i).collect();
        assert_eq!(bases, expected);
        assert_eq!(starts(&log), [(0, 0), (3, 1)]);
        log.close().await.unwrap();
        assert_eq!(starts(&open_log(&dir).await), [(0, 0), (3, 1)]);
    });
}

#[test]
fn a_log_written_before_the_epoch_file_existed_is_all_epoch_zero() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        log.append(batch(0, 3, 40, 1_000)).await.unwrap();
        log.close().await.unwrap();
        drop(log);
        std::fs::remove_file(dir.join(epochs::EPOCHS_FILE)).unwrap();
        let reopened = open_log(&dir).await;
        assert_eq!(starts(&reopened), [(0, 0)]);
        assert_eq!(reopened.end_offset_for_epoch(2), Some((0, 3)));
    });
}

/// Bytes of whole batches from the one holding `offset` to the end, as reads return them.
async fn exact_bytes_from(log: &PartitionLog, offset: u64) -> u64 {
    let mut bytes = 0;
    let mut at = offset.max(log.log_start_offset());
    while at < log.high_watermark() {
        let slice = log.read(at, 64 * 1024, None).await.unwrap();
        bytes += slice.size_bytes();
        at = slice.next_offset;
    }
    bytes
}

#[test]
fn bytes_from_estimates_what_a_follower_lacks() {
    run(|dir| async move {
        let log = open_log(&dir).await;
        for i in 0..40 {
            log.append(batch(i * 10, 10, 200, 1_000)).await.unwrap();
        }
        log.roll().await.unwrap();
        let active_base = log.log_end_offset();
        for i in 40..50 {
            log.append(batch(i * 10, 10, 200, 1_000)).await.unwrap();
        }
        assert!(log.segment_count() > 2, "sealed segments and an active one");
        let end = log.log_end_offset();
        assert_eq!(log.bytes_from(0), log.size_bytes());
        assert_eq!(exact_bytes_from(&log, 0).await, log.size_bytes());
        assert_eq!(log.bytes_from(end), 0);
        assert_eq!(log.bytes_from(end + 10), 0);
        let config = small_segments();
        let mut previous = u64::MAX;
        for offset in 0..=end {
            let estimate = log.bytes_from(offset);
            assert!(estimate <= previous, "never more for a later offset");
            previous = estimate;
            let exact = exact_bytes_from(&log, offset).await;
            if offset >= active_base {
                // From the indexed frame at or before the batch holding it.
                let interval = u64::from(config.index_interval_bytes);
                assert!(
                    exact <= estimate && estimate <= exact + interval,
                    "offset {offset}: estimate {estimate}, exact {exact}"
                );
            } else {
                // A share of the sealed segment holding it.
                assert!(
                    estimate.abs_diff(exact) <= config.segment_bytes,
                    "offset {offset}: estimate {estimate}, exact {exact}"
                );
            }
        }
    });
}

#[test]
fn a_follower_below_the_leaders_log_start_restarts_there_and_follows_on() {
    run(|dir| async move {
        let leader = open_log(&dir.join("leader")).await;
        leader.set_leader_epoch(3);
        for i in 0..8 {
            leader.append(batch(i * 10, 10, 100, 1_000)).await.unwrap();
        }
        // The follower holds the first two batches, and an epoch for them.
        let follower = open_log(&dir.join("follower")).await;
        let leader_batches = batches_of(&leader).await;
        for bytes in &leader_batches[..2] {
            follower.append_replica(valid(bytes.clone())).await.unwrap();
        }
        assert_eq!(follower.log_end_offset(), 20);
        // Not ahead of its end: refused, nothing changes.
        for behind in [0, 20] {
            assert!(matches!(
                follower.restart_at(behind).await,
                Err(Error::OffsetOutOfRange { .. })
            ));
        }
        assert_eq!(batches_of(&follower).await, leader_batches[..2]);

        // The leader's log starts at 50 now: the follower starts there.
        follower.restart_at(50).await.unwrap();
        assert_eq!(follower.log_start_offset(), 50);
        assert_eq!(follower.log_end_offset(), 50);
        assert_eq!(follower.high_watermark(), 50);
        assert_eq!(follower.size_bytes(), 0);
        assert_eq!(follower.segment_count(), 1);
        assert!(follower.leader_epochs().is_empty(), "its batches are gone");
        for bytes in &leader_batches[5..] {
            follower.append_replica(valid(bytes.clone())).await.unwrap();
        }
        assert_eq!(batches_of(&follower).await, leader_batches[5..]);
        assert_eq!(follower.leader_epochs()[0].start_offset, 50);
        follower.close().await.unwrap();
        // The files say the same after a restart.
        let reopened = open_log(&dir.join("follower")).await;
        assert_eq!(reopened.log_start_offset(), 50);
        assert_eq!(batches_of(&reopened).await, leader_batches[5..]);
        assert_eq!(reopened.leader_epochs(), follower.leader_epochs());
    });
}
