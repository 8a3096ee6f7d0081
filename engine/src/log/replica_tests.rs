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
    follower.close().await.unwrap();
    // And after a restart, read back from its own files.
    let reopened = open_log(&dir.join("follower")).await;
    assert_eq!(batches_of(&reopened).await, leader_batches);
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
