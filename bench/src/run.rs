//! Running a workload against a broker.
//!
//! Every record's value starts with its intended send time (microseconds
//! since the run's start, one clock for the whole process), so consumers in
//! the same process measure end-to-end latency. With `--rate`, records follow
//! a constant schedule and latency counts from the scheduled time: a stalled
//! broker shows up as latency instead of silently slowing the sender.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use shardlog_client::{
    Acks, Admin, ClientConfig, Compression, Consumer, ConsumerConfig, NewTopic, Offset, Producer,
    ProducerConfig, ProducerRecord,
};
use tokio::time::Instant;

use crate::config::{AcksArg, BenchConfig, CompressionArg, Workload};
use crate::report::{Latency, Report};

/// Counters shared by every task of a run.
#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    bytes: AtomicU64,
}

struct Run {
    config: BenchConfig,
    client: ClientConfig,
    start: Instant,
    measure_from: Instant,
    deadline: Option<Instant>,
    counters: Counters,
    stop: AtomicBool,
    publish: Mutex<Latency>,
    e2e: Mutex<Latency>,
}

impl Run {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from
    }

    fn count(&self, bytes: usize) {
        if self.measuring(Instant::now()) {
            self.counters.records.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    fn expired(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Runs the configured workload against `broker` and reports what it measured.
///
/// # Errors
/// Broker or I/O failures.
pub async fn run(config: &BenchConfig, broker: &str) -> anyhow::Result<(Report, Latency)> {
    let client = ClientConfig::new(broker);
    ensure_topic(config, &client).await?;
    if config.workload == Workload::Consume {
        // The data to catch up on, produced before anything is measured.
        let fill = Arc::new(new_run(config, &client, Duration::ZERO));
        produce_all(fill).await?;
    }
    let warmup = Duration::from_secs_f64(config.warmup);
    let run = Arc::new(new_run(config, &client, warmup));
    let sampler = tokio::spawn(sample(run.clone()));
    let total = config.records;
    match config.workload {
        Workload::Produce => produce_all(run.clone()).await?,
        Workload::Consume => {
            let expected = total.unwrap_or(u64::MAX);
            consume_all(run.clone(), Offset::Earliest, expected).await?;
        }
        Workload::ConsumeTail | Workload::E2e => {
            let consumers = tokio::spawn(consume_all(
                run.clone(),
                Offset::Latest,
                total.unwrap_or(u64::MAX),
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            produce_all(run.clone()).await?;
            if total.is_none() {
                run.stop.store(true, Ordering::SeqCst);
            }
            consumers.await??;
        }
    }
    run.stop.store(true, Ordering::SeqCst);
    let per_second = sampler.await?;
    let seconds = Instant::now()
        .duration_since(run.measure_from.max(run.start))
        .as_secs_f64();
    let (records, bytes) = (
        run.counters.records.load(Ordering::SeqCst),
        run.counters.bytes.load(Ordering::SeqCst),
    );
    let publish = run
        .publish
        .lock()
        .map_err(|_| anyhow::anyhow!("a producer task panicked"))?
        .clone();
    let e2e = run
        .e2e
        .lock()
        .map_err(|_| anyhow::anyhow!("a consumer task panicked"))?
        .clone();
    let has_e2e = matches!(config.workload, Workload::E2e | Workload::ConsumeTail);
    let report = Report::new(
        config,
        records,
        bytes,
        seconds,
        Some(&publish),
        has_e2e.then_some(&e2e),
        per_second,
    );
    let plotted = if has_e2e { e2e } else { publish };
    Ok((report, plotted))
}

fn new_run(config: &BenchConfig, client: &ClientConfig, warmup: Duration) -> Run {
    let start = Instant::now();
    let deadline = config
        .duration_secs()
        .map(|s| start + warmup + Duration::from_secs_f64(s));
    Run {
        config: config.clone(),
        client: client.clone(),
        start,
        measure_from: start + warmup,
        deadline,
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        publish: Mutex::new(Latency::default()),
        e2e: Mutex::new(Latency::default()),
    }
}

async fn ensure_topic(config: &BenchConfig, client: &ClientConfig) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match admin
        .create_topic(NewTopic::new(&config.topic, config.partitions))
        .await
    {
        Ok(()) => Ok(()),
        Err(shardlog_client::Error::Broker(error))
            if error.code == shardlog_client::ErrorCode::TopicAlreadyExists =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

async fn produce_all(run: Arc<Run>) -> anyhow::Result<()> {
    let producers = run.config.producers.max(1);
    let mut tasks = Vec::with_capacity(producers);
    for index in 0..producers {
        tasks.push(tokio::spawn(produce_one(run.clone(), index, producers)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn producer_config(config: &BenchConfig, client: &ClientConfig) -> ProducerConfig {
    ProducerConfig {
        client: client.clone(),
        linger: Duration::from_millis(config.linger_ms),
        batch_size: config.batch_size,
        acks: match config.acks {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        },
        compression: match config.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        ..ProducerConfig::default()
    }
}

/// One producer client: sends its share of the records, on schedule when a rate is set.
async fn produce_one(run: Arc<Run>, index: usize, producers: usize) -> anyhow::Result<()> {
    let config = &run.config;
    let producer = Producer::new(producer_config(config, &run.client)).await?;
    let share = config
        .records
        .map(|r| r / producers as u64 + u64::from((index as u64) < r % producers as u64));
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(producers as f64 / rate));
    let stats = Arc::new(ProducerStats {
        run: run.clone(),
        latency: Mutex::new(Latency::default()),
        error: Mutex::new(None),
    });
    let mut values = ValueArena::default();
    let mut sent = 0u64;
    let start = Instant::now();
    while share.is_none_or(|n| sent < n) && !run.expired() {
        let intended = match interval {
            Some(interval) => {
                let at = start + interval.mul_f64(sent as f64);
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        let value = values.value(config.record_size, intended.duration_since(run.start));
        let mut record = ProducerRecord::new(config.topic.clone(), value);
        if config.key_space > 0 {
            record.key = Some(Bytes::from(
                (sent.wrapping_mul(2_654_435_761) % config.key_space).to_string(),
            ));
        }
        let stats_for_record = stats.clone();
        producer
            .send_with_callback(record, move |result| {
                stats_for_record.delivered(intended, result)
            })
            .await?;
        sent += 1;
    }
    producer.flush().await?;
    producer.close().await?;
    if let Some(error) = lock(&stats.error).take() {
        anyhow::bail!("a record failed: {error}");
    }
    let latency = lock(&stats.latency).clone();
    lock(&run.publish).merge(&latency);
    Ok(())
}

/// What one producer's delivery callbacks collect.
struct ProducerStats {
    run: Arc<Run>,
    latency: Mutex<Latency>,
    /// The first failure; the run stops at it.
    error: Mutex<Option<shardlog_client::Error>>,
}

impl ProducerStats {
    /// A delivery callback: records the latency from the intended send time.
    fn delivered(
        &self,
        intended: Instant,
        result: Result<shardlog_client::RecordMetadata, shardlog_client::Error>,
    ) {
        let run = &self.run;
        match result {
            Ok(_) => {
                let now = Instant::now();
                if run.measuring(now) {
                    lock(&self.latency).record_us(now.duration_since(intended).as_micros() as u64);
                    run.count(run.config.record_size);
                }
            }
            Err(error) => {
                lock(&self.error).get_or_insert(error);
                run.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Record values carved from 1 MiB chunks, one allocation per chunk rather
/// than per record (the producer copies each value into its batch).
#[derive(Default)]
struct ValueArena {
    chunk: BytesMut,
}

impl ValueArena {
    const CHUNK_BYTES: usize = 1 << 20;

    /// A value of `size` bytes (at least 8) that starts with its send time.
    fn value(&mut self, size: usize, since_start: Duration) -> Bytes {
        let size = size.max(8);
        if self.chunk.capacity() < size {
            self.chunk = BytesMut::with_capacity(Self::CHUNK_BYTES.max(size));
        }
        self.chunk.put_u64_le(since_start.as_micros() as u64);
        self.chunk.resize(size, 0x61);
        self.chunk.split().freeze()
    }
}

async fn consume_all(run: Arc<Run>, from: Offset, expected: u64) -> anyhow::Result<()> {
    let consumers = run.config.consumers.max(1);
    let consumed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..consumers {
        let partitions: Vec<u32> = (0..run.config.partitions)
            .filter(|p| *p as usize % consumers == index)
            .collect();
        tasks.push(tokio::spawn(consume_one(
            run.clone(),
            partitions,
            from,
            expected,
            consumed.clone(),
        )));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn consume_one(
    run: Arc<Run>,
    partitions: Vec<u32>,
    from: Offset,
    expected: u64,
    consumed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let config = ConsumerConfig {
        client: run.client.clone(),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(config);
    consumer.assign(&run.config.topic, &partitions, from);
    let mut latency = Latency::default();
    while consumed.load(Ordering::Relaxed) < expected && !run.expired() {
        let records = consumer.poll().await?;
        let now = Instant::now();
        for record in &records {
            let value = record.value.as_deref().unwrap_or_default();
            if let Some(sent) = value.get(..8) {
                let sent_us = u64::from_le_bytes(sent.try_into().unwrap_or([0; 8]));
                let now_us = now.duration_since(run.start).as_micros() as u64;
                if run.measuring(now) {
                    latency.record_us(now_us.saturating_sub(sent_us));
                }
            }
            if run.config.workload == Workload::Consume {
                run.count(value.len());
            }
        }
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
        if run.config.workload == Workload::Consume
            && records.is_empty()
            && run.config.records.is_none()
        {
            break;
        }
    }
    lock(&run.e2e).merge(&latency);
    Ok(())
}

/// Samples throughput once a second (and feeds the progress bar) until the run stops.
async fn sample(run: Arc<Run>) -> Vec<f64> {
    let progress = (!run.config.quiet).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let mut per_second = Vec::new();
    let mut last = 0u64;
    let mut ticks = 0u32;
    while !run.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ticks += 1;
        let now = run.counters.records.load(Ordering::Relaxed);
        if ticks % 4 == 0 {
            per_second.push((now - last) as f64);
            if let Some(bar) = &progress {
                bar.set_message(format!("{} records/s, {now} records measured", now - last));
            }
            last = now;
        }
        if let Some(bar) = &progress {
            bar.tick();
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    per_second
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time() {
        let mut values = ValueArena::default();
        let value = values.value(64, Duration::from_micros(123_456));
        assert_eq!(value.len(), 64);
        assert_eq!(u64::from_le_bytes(value[..8].try_into().unwrap()), 123_456);
        assert!(value[8..].iter().all(|b| *b == 0x61));
        // The next value is its own bytes, not an alias of the first.
        let next = values.value(64, Duration::from_micros(7));
        assert_eq!(u64::from_le_bytes(next[..8].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(value[..8].try_into().unwrap()), 123_456);
    }

    #[test]
    fn values_larger_than_a_chunk_get_their_own() {
        let mut values = ValueArena::default();
        let size = ValueArena::CHUNK_BYTES + 10;
        let value = values.value(size, Duration::from_micros(1));
        assert_eq!(value.len(), size);
    }
}
