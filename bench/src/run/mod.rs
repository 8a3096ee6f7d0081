//! Running a workload against a broker.
//!
//! ```text
//!  create topics ─► [consume: fill them first] ─► start the sampler and the CPU sampler
//!    ─► start the consumers ─► wait until they have their partitions and positions
//!    ─► open the window (producers start) ─► warmup ─► measured ─► last counted event
//!    ─► read the CPU counters again ─► report
//! ```
//!
//! Every record's value starts with its intended send time (microseconds
//! since the window's origin, one clock for the whole process), so
//! consumers in the same process measure end-to-end latency. With a rate,
//! records follow a constant schedule and latency counts from the scheduled
//! time: a stalled broker shows up as latency instead of silently slowing
//! the sender. See [`crate::window`] for what the measured time is.

mod consume;
mod produce;
mod sample;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardlog_client::{Admin, ClientConfig, NewTopic};
use tokio::time::Instant;

use crate::config::BenchConfig;
use crate::plan::{Consumers, Plan};
use crate::report::{Histograms, Measured, Report};
use crate::resources::{self, Usage};
use crate::window::Window;

pub use sample::Sampled;

/// The longest the consumers may take to get their partitions before the producers start.
const CONSUMERS_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters shared by every task of a run.
#[derive(Debug, Default)]
struct Counters {
    /// Records the workload counts, in the window.
    records: AtomicU64,
    /// Bytes of their values.
    bytes: AtomicU64,
    /// Records consumed in the window (every subscription).
    consumed: AtomicU64,
    /// Records acknowledged since the window opened (warmup included): for the backlog.
    published_total: AtomicU64,
    /// Records consumed since the window opened: for the backlog.
    consumed_total: AtomicU64,
    /// Sends that failed.
    publish_errors: AtomicU64,
    /// Group assignment changes: whole run, and in the window.
    rebalances_total: AtomicU64,
    rebalances_measured: AtomicU64,
}

/// A task's histograms: the whole window's, and the current 10-second sample's.
#[derive(Debug, Default)]
struct TaskStats {
    total: Histograms,
    sample: Histograms,
}

impl TaskStats {
    fn record(&mut self, pick: fn(&mut Histograms) -> &mut crate::report::Latency, us: u64) {
        pick(&mut self.total).record_us(us);
        pick(&mut self.sample).record_us(us);
    }
}

/// A consumer's progress towards being ready for the producers.
#[derive(Debug, Default)]
struct MemberState {
    /// Which consumer set (group) it belongs to.
    set_index: usize,
    /// Partitions it holds.
    assigned: AtomicUsize,
    /// It has finished a poll since its assignment last changed (its positions are resolved).
    settled: AtomicBool,
}

/// What every task of a run shares.
struct Run {
    plan: Plan,
    config: BenchConfig,
    client: ClientConfig,
    window: Window,
    counters: Counters,
    stop: AtomicBool,
    /// Consumers wait while the backlog builds.
    paused: AtomicBool,
    tasks: Mutex<Vec<Arc<Mutex<TaskStats>>>>,
    members: Mutex<Vec<Arc<MemberState>>>,
}

impl Run {
    /// Counts a record of the workload's kind (acknowledged, or consumed in `consume`).
    fn count(&self, bytes: usize) {
        self.count_at(Instant::now(), bytes);
    }

    /// As `count`, for a caller that has just read the clock.
    fn count_at(&self, now: Instant, bytes: usize) {
        if self.window.count(now) {
            self.counters.records.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    fn expired(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.window.expired(Instant::now())
    }

    fn task_stats(&self) -> Arc<Mutex<TaskStats>> {
        let stats = Arc::new(Mutex::new(TaskStats::default()));
        lock(&self.tasks).push(stats.clone());
        stats
    }

    fn member(&self, set_index: usize) -> Arc<MemberState> {
        let member = Arc::new(MemberState {
            set_index,
            ..MemberState::default()
        });
        lock(&self.members).push(member.clone());
        member
    }

    fn rebalanced(&self) {
        self.counters
            .rebalances_total
            .fetch_add(1, Ordering::Relaxed);
        if self.window.measuring(Instant::now()) {
            self.counters
                .rebalances_measured
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records not yet read, over every subscription.
    fn backlog_records(&self) -> u64 {
        let published = self.counters.published_total.load(Ordering::Relaxed);
        let consumed = self.counters.consumed_total.load(Ordering::Relaxed);
        (published * self.plan.reads_per_record()).saturating_sub(consumed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the planned workload against `broker` (one address, or a cluster's
/// bootstrap addresses comma-separated; every broker's metrics at
/// `metrics_addrs`) and reports what it measured, with the histograms for
/// the plot and the samples for OMB's result file.
///
/// # Errors
/// Broker or I/O failures; consumers that never got their partitions.
pub async fn run(
    config: &BenchConfig,
    plan: &Plan,
    broker: &str,
    metrics_addrs: &[String],
) -> anyhow::Result<(Report, Histograms, Sampled)> {
    let client = ClientConfig::new(broker);
    ensure_topics(config, plan, &client).await?;
    let broker_count = Admin::new(client.clone())
        .describe_cluster()
        .await
        .map_err(|e| anyhow::anyhow!("describing the cluster: {e}"))?
        .brokers
        .len();
    let catch_up = matches!(plan.consumers, Consumers::Assigned { catch_up: true, .. });
    let origin = Instant::now();
    if catch_up {
        // The data to catch up on, produced before anything is measured.
        let fill = Arc::new(new_run(config, plan, &client, origin, true));
        fill.window.open(Instant::now());
        produce::produce_all(fill).await?;
    }
    let run = Arc::new(new_run(config, plan, &client, origin, false));
    let sampler = tokio::spawn(sample::sample(run.clone()));
    let metrics = metrics_addrs.to_vec();
    let window_run = run.clone();
    let before = tokio::spawn(async move {
        let from = sample::wait_for_window(&window_run).await;
        tokio::time::sleep_until(from).await;
        resources::sample(&metrics).await
    });
    let outcome = drive(run.clone(), catch_up).await;
    let after = resources::sample(metrics_addrs).await;
    run.stop.store(true, Ordering::SeqCst);
    let sampled = sampler.await?;
    outcome?;
    let before = before.await?;
    let measured = measured(
        &run,
        Usage::between(metrics_addrs, broker_count, &before, &after, bytes(&run)),
    );
    let histograms = measured.histograms.clone();
    let report = Report::new(
        config,
        plan,
        Measured {
            per_second: sampled.per_second.clone(),
            ..measured
        },
    );
    Ok((report, histograms, sampled))
}

fn bytes(run: &Run) -> u64 {
    run.counters.bytes.load(Ordering::SeqCst)
}

/// Starts the consumers, waits for them, then the producers; returns when all are done.
async fn drive(run: Arc<Run>, catch_up: bool) -> anyhow::Result<()> {
    if matches!(run.plan.consumers, Consumers::None) {
        run.window.open(Instant::now());
        return produce::produce_all(run).await;
    }
    if catch_up {
        run.window.open(Instant::now());
        return consume::consume_all(run).await;
    }
    let consumers = tokio::spawn(consume::consume_all(run.clone()));
    if let Err(error) = consume::wait_until_ready(&run, CONSUMERS_READY_TIMEOUT).await {
        run.stop.store(true, Ordering::SeqCst);
        let _ = consumers.await;
        return Err(error);
    }
    run.window.open(Instant::now());
    let backlog = (run.plan.backlog_bytes > 0).then(|| tokio::spawn(consume::backlog(run.clone())));
    let produced = produce::produce_all(run.clone()).await;
    if produced.is_err() || run.plan.records.is_none() {
        run.stop.store(true, Ordering::SeqCst);
    }
    if let Some(backlog) = backlog {
        backlog.await?;
    }
    consumers.await??;
    produced
}

fn new_run(
    config: &BenchConfig,
    plan: &Plan,
    client: &ClientConfig,
    origin: Instant,
    fill: bool,
) -> Run {
    let (warmup, duration) = match fill {
        // The catch-up fill has no warmup, and is bounded like the run.
        true => (Duration::ZERO, plan.duration),
        false => (plan.warmup.unwrap_or(Duration::ZERO), plan.duration),
    };
    let mut plan = plan.clone();
    if fill {
        plan.consumers = Consumers::None;
    }
    Run {
        plan,
        config: config.clone(),
        client: client.clone(),
        window: Window::new(origin, warmup, duration),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
        members: Mutex::new(Vec::new()),
    }
}

/// The counts of the window, with every task's histograms merged.
fn measured(run: &Run, usage: Usage) -> Measured {
    let mut histograms = Histograms::default();
    for stats in lock(&run.tasks).iter() {
        histograms.merge(&lock(stats).total);
    }
    let counters = &run.counters;
    let rebalances = matches!(run.plan.consumers, Consumers::Groups { .. }).then(|| {
        (
            counters.rebalances_total.load(Ordering::SeqCst),
            counters.rebalances_measured.load(Ordering::SeqCst),
        )
    });
    Measured {
        records: counters.records.load(Ordering::SeqCst),
        bytes: counters.bytes.load(Ordering::SeqCst),
        consumed_records: counters.consumed.load(Ordering::SeqCst),
        seconds: run.window.seconds(),
        histograms,
        usage,
        rebalances,
        per_second: Vec::new(),
    }
}

/// The longest the topics' creation is retried while the cluster cannot
/// place them yet (fewer alive brokers than the replication factor, no
/// controller).
const CREATE_TOPICS_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between attempts.
const CREATE_TOPICS_RETRY: Duration = Duration::from_millis(250);

/// Creates the plan's topics with the replication the options ask for; a
/// topic that exists already must have that replication factor.
async fn ensure_topics(
    config: &BenchConfig,
    plan: &Plan,
    client: &ClientConfig,
) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    let factor = config.replication_factor;
    for topic in &plan.topics {
        let deadline = Instant::now() + CREATE_TOPICS_TIMEOUT;
        let exists = loop {
            let outcome = admin.create_topic(new_topic(config, plan, topic)).await;
            match outcome {
                Ok(()) => break false,
                Err(shardlog_client::Error::Broker(error))
                    if error.code == shardlog_client::ErrorCode::TopicAlreadyExists =>
                {
                    break true
                }
                Err(error) if retry_create(&error) && Instant::now() < deadline => {
                    tokio::time::sleep(CREATE_TOPICS_RETRY).await;
                }
                Err(error) => {
                    return Err(anyhow::anyhow!(
                        "creating topic {topic} (replication factor {factor}): {error}"
                    ))
                }
            }
        };
        if exists {
            check_replication(&admin, topic, factor).await?;
        }
    }
    Ok(())
}

/// The topic the run creates, with the options' replication; a factor of 1
/// with the default min-insync-replicas asks for the broker's defaults, as
/// before replication existed.
fn new_topic(config: &BenchConfig, plan: &Plan, name: &str) -> NewTopic {
    let (factor, min_insync) = (config.replication_factor, config.min_insync_replicas());
    let replicated = factor > 1 || config.min_insync_replicas.is_some();
    NewTopic {
        replication_factor: replicated.then_some(factor),
        min_insync_replicas: replicated.then_some(min_insync),
        ..NewTopic::new(name, plan.partitions_per_topic)
    }
}

/// Whether creating a topic may succeed later: the cluster has no
/// controller now, or fewer alive brokers than the replication factor
/// (brokers still registering), which the broker refuses as
/// `InvalidReplicationFactor`.
fn retry_create(error: &shardlog_client::Error) -> bool {
    match error {
        shardlog_client::Error::Broker(error) => {
            error.code.is_retriable()
                || error.code == shardlog_client::ErrorCode::InvalidReplicationFactor
        }
        // An unreachable broker fails the run at once, as before.
        _ => false,
    }
}

/// Refuses a topic that exists with another replication factor than asked:
/// its figures would be another configuration's.
async fn check_replication(admin: &Admin, topic: &str, factor: u16) -> anyhow::Result<()> {
    let description = admin
        .describe_topic(topic)
        .await
        .map_err(|e| anyhow::anyhow!("describing topic {topic}: {e}"))?;
    let other = description
        .partitions
        .iter()
        .map(|p| p.replicas.len())
        // A broker that names no replicas says nothing about the factor.
        .find(|replicas| *replicas != 0 && *replicas != usize::from(factor));
    match other {
        Some(replicas) => anyhow::bail!(
            "topic {topic} exists with replication factor {replicas}, not {factor}: \
             give another --topic or delete it"
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn topic(args: &[&str]) -> NewTopic {
        let config = BenchConfig::try_parse_from(args).unwrap();
        let plan = Plan::from_options(&config);
        new_topic(&config, &plan, "t")
    }

    #[test]
    fn topics_are_created_with_the_replication_asked_for() {
        let plain = topic(&["shardlog-bench", "produce", "--partitions", "4"]);
        assert_eq!(plain, NewTopic::new("t", 4), "RF 1: the broker's defaults");
        let replicated = topic(&["shardlog-bench", "produce", "--replication-factor", "3"]);
        assert_eq!(replicated.replication_factor, Some(3));
        assert_eq!(replicated.min_insync_replicas, Some(2));
        assert_eq!(replicated.partitions, 16);
        let all = topic(&[
            "shardlog-bench",
            "produce",
            "--replication-factor",
            "3",
            "--min-insync-replicas",
            "3",
        ]);
        assert_eq!(all.min_insync_replicas, Some(3));
        let explicit = topic(&["shardlog-bench", "produce", "--min-insync-replicas", "1"]);
        assert_eq!(explicit.replication_factor, Some(1));
        assert_eq!(explicit.min_insync_replicas, Some(1));
    }

    #[test]
    fn creation_is_retried_while_brokers_are_missing_only() {
        let broker = |code| {
            shardlog_client::Error::Broker(shardlog_client::BrokerError {
                code,
                message: String::new(),
            })
        };
        use shardlog_client::ErrorCode;
        assert!(retry_create(&broker(ErrorCode::InvalidReplicationFactor)));
        assert!(retry_create(&broker(ErrorCode::ControllerUnavailable)));
        assert!(!retry_create(&broker(ErrorCode::InvalidTopic)));
        assert!(!retry_create(&broker(ErrorCode::TopicAlreadyExists)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!retry_create(&shardlog_client::Error::Io(refused)));
    }
}
