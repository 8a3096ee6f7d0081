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

/// Runs the planned workload against `broker` (metrics at `metrics_addr`)
/// and reports what it measured, with the histograms for the plot and the
/// samples for OMB's result file.
///
/// # Errors
/// Broker or I/O failures; consumers that never got their partitions.
pub async fn run(
    config: &BenchConfig,
    plan: &Plan,
    broker: &str,
    metrics_addr: &str,
) -> anyhow::Result<(Report, Histograms, Sampled)> {
    let client = ClientConfig::new(broker);
    ensure_topics(plan, &client).await?;
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
    let metrics = metrics_addr.to_string();
    let window_run = run.clone();
    let before = tokio::spawn(async move {
        let from = sample::wait_for_window(&window_run).await;
        tokio::time::sleep_until(from).await;
        resources::sample(&metrics).await
    });
    let outcome = drive(run.clone(), catch_up).await;
    let after = resources::sample(metrics_addr).await;
    run.stop.store(true, Ordering::SeqCst);
    let sampled = sampler.await?;
    outcome?;
    let before = before.await?;
    let measured = measured(
        &run,
        Usage::between(metrics_addr, &before, &after, bytes(&run)),
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

async fn ensure_topics(plan: &Plan, client: &ClientConfig) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    for topic in &plan.topics {
        match admin
            .create_topic(NewTopic::new(topic, plan.partitions_per_topic))
            .await
        {
            Ok(()) => {}
            Err(shardlog_client::Error::Broker(error))
                if error.code == shardlog_client::ErrorCode::TopicAlreadyExists => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}
