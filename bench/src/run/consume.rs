//! Consumer tasks: assigned consumers (`consume`, `consume-tail`, `e2e`)
//! and consumer-group members (`group`, OMB subscriptions), the readiness
//! wait before the producers start, and OMB's backlog phase.
//!
//! Every poll that returned records is timed (the poll latency: with
//! prefetch, the part of a fetch the application waited for; with
//! `--no-prefetch`, a whole fetch round trip and decode), and every
//! record's age is taken from the send time its value carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardlog_client::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupConsumer, GroupConsumerConfig, Offset,
};
use tokio::time::Instant;

use super::produce::sent_us;
use super::{lock, MemberState, Run, TaskStats};
use crate::config::Workload;
use crate::plan::Consumers;

/// How long a consumer's fetch waits for data.
const CONSUMER_MAX_WAIT: Duration = Duration::from_millis(100);
/// How often paused consumers look whether they may go on.
const PAUSE_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The broker's largest session timeout: members stop heartbeating while paused.
const PAUSED_SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// The backlog below which OMB calls it drained, in records (at least).
const DRAINED_BACKLOG_RECORDS_MIN: u64 = 1000;

fn consumer_config(run: &Run) -> ConsumerConfig {
    ConsumerConfig {
        client: run.client.clone(),
        max_wait: CONSUMER_MAX_WAIT,
        prefetch: !run.config.no_prefetch,
        ..ConsumerConfig::default()
    }
}

/// Runs every consumer of the plan until the run ends.
pub(super) async fn consume_all(run: Arc<Run>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    match run.plan.consumers.clone() {
        Consumers::None => {}
        Consumers::Assigned { count, catch_up } => {
            assert!(
                run.plan.topics.len() == 1,
                "assigned consumers read one topic"
            );
            let consumed = Arc::new(AtomicU64::new(0));
            for index in 0..count {
                let partitions: Vec<u32> = (0..run.plan.partitions_per_topic)
                    .filter(|p| *p as usize % count == index)
                    .collect();
                let from = if catch_up {
                    Offset::Earliest
                } else {
                    Offset::Latest
                };
                let task = consume_one(run.clone(), partitions, from, consumed.clone());
                tasks.push(tokio::spawn(task));
            }
        }
        Consumers::Groups { members, .. } => {
            let mut set_index = 0;
            for (topic_index, topic) in run.plan.topics.iter().enumerate() {
                for group_id in run.plan.group_ids(topic_index) {
                    let consumed = Arc::new(AtomicU64::new(0));
                    for _ in 0..members {
                        let member = run.member(set_index);
                        let task = group_member(
                            run.clone(),
                            topic.clone(),
                            group_id.clone(),
                            member,
                            consumed.clone(),
                        );
                        let group = group_id.clone();
                        // Said at once: the run may be waiting for this
                        // member's partitions and would only time out.
                        tasks.push(tokio::spawn(async move {
                            let outcome = task.await;
                            if let Err(error) = &outcome {
                                eprintln!("shardlog-bench: a consumer of group {group} stopped: {error:#}");
                            }
                            outcome
                        }));
                    }
                    set_index += 1;
                }
            }
        }
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Records (a consumer set reads) before it stops, for a run bounded by count.
fn expected(run: &Run) -> u64 {
    run.plan.records.unwrap_or(u64::MAX)
}

/// Waits while the backlog builds; returns whether the run is over.
async fn wait_while_paused(run: &Run) -> bool {
    while run.paused.load(Ordering::Relaxed) {
        if run.expired() {
            return true;
        }
        tokio::time::sleep(PAUSE_POLL_INTERVAL).await;
    }
    run.expired()
}

async fn consume_one(
    run: Arc<Run>,
    partitions: Vec<u32>,
    from: Offset,
    consumed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut consumer = Consumer::new(consumer_config(&run));
    consumer.assign(&run.plan.topics[0], &partitions, from);
    let member = run.member(0);
    member.assigned.store(partitions.len(), Ordering::SeqCst);
    let stats = run.task_stats();
    let catch_up = run.config.workload == Workload::Consume;
    while consumed.load(Ordering::Relaxed) < expected(&run) {
        if wait_while_paused(&run).await {
            break;
        }
        let polled_at = Instant::now();
        let records = consumer.poll().await?;
        member.settled.store(true, Ordering::SeqCst);
        received(&run, &stats, polled_at, &records);
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
        if catch_up && records.is_empty() && run.plan.records.is_none() {
            break;
        }
    }
    Ok(())
}

async fn group_member(
    run: Arc<Run>,
    topic: String,
    group_id: String,
    member: Arc<MemberState>,
    consumed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut config = GroupConsumerConfig::new(consumer_config(&run), group_id);
    if run.plan.backlog_bytes > 0 {
        config.session_timeout = PAUSED_SESSION_TIMEOUT;
    }
    let mut consumer = GroupConsumer::new(config);
    consumer.subscribe(&[topic.as_str()]);
    let (on_assigned, on_revoked) = ((run.clone(), member.clone()), (run.clone(), member.clone()));
    consumer.on_assigned(move |granted| {
        on_assigned
            .1
            .assigned
            .fetch_add(granted.len(), Ordering::SeqCst);
        on_assigned.1.settled.store(false, Ordering::SeqCst);
        on_assigned.0.rebalanced();
    });
    consumer.on_revoked(move |revoked| {
        on_revoked
            .1
            .assigned
            .fetch_sub(revoked.len(), Ordering::SeqCst);
        on_revoked.1.settled.store(false, Ordering::SeqCst);
        on_revoked.0.rebalanced();
    });
    let stats = run.task_stats();
    while consumed.load(Ordering::Relaxed) < expected(&run) {
        if wait_while_paused(&run).await {
            break;
        }
        let polled_at = Instant::now();
        let records = consumer.poll().await?;
        // The callbacks ran inside this poll, which then resolved the new
        // partitions' positions: the member is settled until the next change.
        member.settled.store(true, Ordering::SeqCst);
        received(&run, &stats, polled_at, &records);
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    consumer.close().await?;
    Ok(())
}

/// Counts and times what one poll returned.
fn received(run: &Run, stats: &Mutex<TaskStats>, polled_at: Instant, records: &[ConsumerRecord]) {
    if records.is_empty() {
        return;
    }
    let now = Instant::now();
    let counters = &run.counters;
    counters
        .consumed_total
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    if !run.window.measuring(now) {
        return;
    }
    counters
        .consumed
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    let now_us = run.window.micros(now);
    let catch_up = run.config.workload == Workload::Consume;
    let mut stats = lock(stats);
    stats.record(
        |h| &mut h.poll,
        now.duration_since(polled_at).as_micros() as u64,
    );
    for record in records {
        let value = record.value.as_deref().unwrap_or_default();
        if let Some(sent_us) = sent_us(value) {
            stats.record(|h| &mut h.end_to_end, now_us.saturating_sub(sent_us));
        }
        if catch_up {
            run.count(value.len());
        }
    }
}

/// Waits until every consumer set holds all its partitions with resolved
/// positions, so that the first record produced is the first one read.
///
/// # Errors
/// They are not ready within `timeout`.
pub(super) async fn wait_until_ready(run: &Run, timeout: Duration) -> anyhow::Result<()> {
    let give_up = Instant::now() + timeout;
    loop {
        if ready(run) {
            return Ok(());
        }
        if Instant::now() >= give_up || run.expired() {
            anyhow::bail!(
                "the consumers did not get every partition within {timeout:?} \
                 (is another member of the group still in it?)"
            );
        }
        tokio::time::sleep(PAUSE_POLL_INTERVAL).await;
    }
}

fn ready(run: &Run) -> bool {
    let sets = match &run.plan.consumers {
        Consumers::None => return true,
        Consumers::Assigned { .. } => 1,
        Consumers::Groups { members, .. } => {
            let expected_members = run.plan.topics.len() * run.plan.reads_per_record() as usize;
            if lock(&run.members).len() < expected_members * members {
                return false;
            }
            expected_members
        }
    };
    let members = lock(&run.members);
    let mut assigned = vec![0usize; sets];
    for member in members.iter() {
        if !member.settled.load(Ordering::SeqCst) {
            return false;
        }
        assigned[member.set_index] += member.assigned.load(Ordering::SeqCst);
    }
    let partitions = run.plan.partitions_per_topic as usize;
    !members.is_empty() && assigned.iter().all(|a| *a == partitions)
}

/// OMB's backlog phase: after the warmup, pause the consumers until the
/// backlog holds the planned bytes, let them drain it while the producers
/// go on, and count the test's duration from when it has drained.
pub(super) async fn backlog(run: Arc<Run>) {
    let plan = &run.plan;
    assert!(plan.backlog_bytes > 0);
    if let Some(from) = run.window.measure_from() {
        tokio::time::sleep_until(from).await;
    }
    run.window.hold();
    run.paused.store(true, Ordering::SeqCst);
    let record_bytes = plan.record_size_bytes.max(1) as u64;
    while run.backlog_records() * record_bytes < plan.backlog_bytes && !run.expired() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.paused.store(false, Ordering::SeqCst);
    let capacity_records = plan.backlog_bytes / record_bytes;
    let empty_records = ((1.0 - plan.backlog_drain_ratio) * capacity_records as f64) as u64;
    let drained_records = empty_records.max(DRAINED_BACKLOG_RECORDS_MIN);
    while run.backlog_records() > drained_records && !run.expired() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.window.restart_duration_at(Instant::now());
}
