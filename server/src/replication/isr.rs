//! ISR changes a leader proposes: a follower that caught up joins, one that
//! stayed behind for `--replica-lag-time-max-ms` leaves.
//!
//! ```text
//!  replica fetch at offset ≥ high watermark, follower not in the ISR ─► propose AlterIsr(ISR + follower)
//!  every lag/4: an ISR follower not caught up for replica-lag-time-max-ms ─► propose AlterIsr(ISR − those)
//! ```
//!
//! Each proposal names the leader epoch this leader holds, so the
//! controller refuses it once a newer leader exists. A change counts only
//! once committed and applied to this shard's metadata (`replica.rs`), and
//! one partition has at most one proposal in flight.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cluster::state::{BrokerId, ClusterCommand};
use crate::shard::replica::Role;
use crate::shard::{PartitionState, ShardState};

/// Pause after a refused or failed ISR change before the partition proposes
/// another; also the longest a committed one waits to reach this shard.
pub const ISR_CHANGE_RETRY_MS: u64 = 1_000;

/// On the leader, after `follower` fetched from `fetch_offset`: proposes
/// that it rejoin the ISR when it has everything below the high watermark.
pub fn maybe_expand(
    shard: &Rc<ShardState>,
    topic: &str,
    partition: u32,
    state: &Rc<PartitionState>,
    follower: BrokerId,
    fetch_offset: u64,
) {
    let Role::Leader {
        me,
        leader_epoch,
        isr,
        ..
    } = state.replica.role()
    else {
        return;
    };
    if isr.contains(&follower) || fetch_offset < state.high_watermark() {
        return;
    }
    // A fenced broker fetches too (a restarted one waits to be unfenced),
    // but the controller would refuse it: ask once it is alive.
    let metadata = shard.partitions.metadata();
    let alive = metadata
        .cluster
        .as_ref()
        .and_then(|view| view.brokers.get(&follower))
        .is_some_and(|b| b.liveness == crate::cluster::state::BrokerLiveness::Alive);
    if !alive {
        return;
    }
    let mut wanted = isr.to_vec();
    wanted.push(follower);
    tracing::info!(topic, partition, %follower, fetch_offset, "a follower caught up: proposing it rejoin the ISR");
    propose(shard, topic, partition, state, me, leader_epoch, wanted);
}

/// Proposes `isr` for the partition, unless a change is in flight already.
fn propose(
    shard: &Rc<ShardState>,
    topic: &str,
    partition: u32,
    state: &Rc<PartitionState>,
    leader: BrokerId,
    leader_epoch: u64,
    isr: Vec<BrokerId>,
) {
    let Some(cluster) = shard.cluster.clone() else {
        return;
    };
    if !state.replica.begin_isr_change() {
        return;
    }
    let command = ClusterCommand::AlterIsr {
        topic: topic.to_string(),
        partition,
        leader,
        leader_epoch,
        isr,
    };
    let (shard, state, topic) = (shard.clone(), state.clone(), topic.to_string());
    glommio::spawn_local(async move {
        let retry = std::time::Duration::from_millis(ISR_CHANGE_RETRY_MS);
        match cluster.propose(command).await {
            Ok(result) => match result.outcome {
                // Committed: the change counts once this shard's metadata
                // has it, and until then a fetch must not propose it again
                // (each proposal is a metadata log entry).
                Ok(_) => applied(&shard, result.revision, retry).await,
                Err(error) => {
                    tracing::info!(topic, partition, %error, "the controller refused an ISR change");
                    glommio::timer::sleep(retry).await;
                }
            },
            Err(error) => {
                tracing::warn!(topic, partition, %error, "proposing an ISR change failed; trying again later");
                glommio::timer::sleep(retry).await;
            }
        }
        state.replica.end_isr_change();
    })
    .detach();
}

/// Resolves once this shard applied metadata `revision`, or after `wait`.
async fn applied(shard: &ShardState, revision: u64, wait: std::time::Duration) {
    let deadline = Instant::now() + wait;
    while shard.partitions.applied_revision() < revision && Instant::now() < deadline {
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs on every shard of a clustered broker: every quarter of `lag`, the
/// partitions this shard leads drop the ISR followers that were not caught
/// up for `lag`.
pub async fn shrink_loop(shard: Rc<ShardState>, lag: Duration) {
    let period = lag / 4;
    loop {
        futures_lite::future::or(glommio::timer::sleep(period), shard.shutdown.wait()).await;
        if shard.shutdown.is_started() {
            return;
        }
        let now = Instant::now();
        for ((topic, partition), state) in shard.partitions.local_partitions() {
            if let Some((leader, epoch, isr)) = shrunk_isr(&state, now, lag) {
                tracing::warn!(
                    topic,
                    partition,
                    ?isr,
                    "followers fell behind for replica-lag-time-max-ms: proposing a smaller ISR"
                );
                propose(&shard, &topic, partition, &state, leader, epoch, isr);
            }
        }
    }
}

/// The ISR without the followers not caught up within `lag`, if any are.
fn shrunk_isr(
    state: &PartitionState,
    now: Instant,
    lag: Duration,
) -> Option<(BrokerId, u64, Vec<BrokerId>)> {
    let Role::Leader {
        me,
        leader_epoch,
        isr,
        ..
    } = state.replica.role()
    else {
        return None;
    };
    let followers = state.replica.followers();
    let lagging = |broker: &BrokerId| {
        *broker != me
            && followers
                .iter()
                .find(|(b, _)| b == broker)
                .is_none_or(|(_, p)| now.saturating_duration_since(p.last_caught_up) > lag)
    };
    let kept: Vec<BrokerId> = isr.iter().copied().filter(|b| !lagging(b)).collect();
    (kept.len() < isr.len()).then_some((me, leader_epoch, kept))
}
