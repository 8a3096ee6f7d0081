//! The producer: batching per partition, partitioning, idempotence, retries.
//!
//! ```text
//!  send ─► [memory permits] ─► accumulator task: one open BatchBuilder per partition,
//!                                  sealed at batch_size or after linger ─┐
//!        one sender task per partition ◄─────────────────────────────────┘
//!          assigns the idempotent sequence, keeps up to max_in_flight batches
//!          on the wire to the owning shard, resolves records in order, retries
//!          from the first failure (the broker drops duplicates), gives up at the
//!          delivery timeout.
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardlog_wire::batch::{
    set_producer, BatchBuilder, BatchBuilderOptions, Compression, RecordHeaderRef,
    BATCH_BYTES_MAX_DEFAULT,
};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::cluster::{ClientConfig, Cluster};
use crate::protocol::{Acks, Request, Response};
use crate::{codec, Error};

/// Batches in flight per partition when idempotent (the broker remembers the last 5).
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

/// Producer settings. Every default is the one a Kafka user would expect.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// How long a batch waits for more records [default 5 ms].
    pub linger: Duration,
    /// Seal a batch at this size [default 64 KiB].
    pub batch_size: usize,
    /// Batches on the wire per partition [default 5; at most 5 when idempotent].
    pub max_in_flight: usize,
    /// When the broker answers [default `All`].
    pub acks: Acks,
    /// Codec of each batch's records section [default none].
    pub compression: Compression,
    /// Pause between attempts [default 100 ms].
    pub retry_backoff: Duration,
    /// Give up on a record this long after `send` [default 120 s].
    pub delivery_timeout: Duration,
    /// Bytes of records accepted but not yet delivered; `send` waits beyond it [default 32 MiB].
    pub buffer_memory: usize,
    /// Number batches so the broker drops duplicates from retries [default true].
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            client: ClientConfig::default(),
            linger: Duration::from_millis(5),
            batch_size: 64 * 1024,
            max_in_flight: 5,
            acks: Acks::All,
            compression: Compression::None,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            buffer_memory: 32 * 1024 * 1024,
            idempotent: true,
        }
    }
}

/// A record to send. Without a partition it goes by key hash, or sticky
/// (filling one partition's batch, then the next) when it has no key.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// An explicit partition.
    pub partition: Option<u32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the Unix epoch [default: now].
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 4)
            .sum();
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            + 32
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset, or `None` with `acks = none`.
    pub offset: Option<u64>,
}

type DeliveryResult = Result<RecordMetadata, Error>;

/// Resolves when the record is delivered or has failed.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<DeliveryResult>,
}

impl Future for DeliveryFuture {
    type Output = DeliveryResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DeliveryResult> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

struct Pending {
    record: ProducerRecord,
    partition: u32,
    reply: oneshot::Sender<DeliveryResult>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
}

enum Command {
    Append(Pending),
    Flush,
}

/// A producer. Cheap to clone; all clones share batches and connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), shardlog_client::Error> {
/// use shardlog_client::{Producer, ProducerConfig, ProducerRecord};
/// let producer = Producer::new(ProducerConfig::default()).await?;
/// let delivered = producer.send(ProducerRecord::new("clicks", "hello").key("user-1")).await?;
/// println!("stored at {}/{:?}", delivered.partition, delivered.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    commands: mpsc::UnboundedSender<Command>,
    memory: Arc<Semaphore>,
    outstanding: Arc<Outstanding>,
    closed: AtomicBool,
}

/// Records accepted and not yet resolved, for `flush`.
#[derive(Debug, Default)]
struct Outstanding {
    count: AtomicUsize,
    drained: Notify,
}

impl Outstanding {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

impl Producer {
    /// A producer for the broker in `config.client`; gets a producer id when idempotent.
    ///
    /// # Errors
    /// [`Error::Io`] when the broker cannot be reached.
    pub async fn new(mut config: ProducerConfig) -> Result<Producer, Error> {
        if config.idempotent {
            config.max_in_flight = config.max_in_flight.clamp(1, IDEMPOTENT_IN_FLIGHT_MAX);
        }
        config.batch_size = config
            .batch_size
            .clamp(1024, BATCH_BYTES_MAX_DEFAULT as usize);
        let cluster = Arc::new(Cluster::new(config.client.clone()));
        let identity = if config.idempotent {
            init_producer(&cluster).await?
        } else {
            (-1, -1)
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let outstanding = Arc::new(Outstanding::default());
        let accumulator = Accumulator {
            cluster: cluster.clone(),
            config: config.clone(),
            identity,
            open: HashMap::new(),
            senders: HashMap::new(),
            sticky: HashMap::new(),
            outstanding: outstanding.clone(),
        };
        tokio::spawn(accumulator.run(receiver));
        let memory = Arc::new(Semaphore::new(config.buffer_memory));
        let inner = Inner {
            cluster,
            config,
            commands,
            memory,
            outstanding,
            closed: AtomicBool::new(false),
        };
        Ok(Producer {
            inner: Arc::new(inner),
        })
    }

    /// Sends a record and waits until it is stored (or has failed).
    ///
    /// # Errors
    /// As [`Producer::enqueue`], then the delivery's outcome.
    pub async fn send(&self, record: ProducerRecord) -> DeliveryResult {
        self.enqueue(record).await?.await
    }

    /// Accepts a record into a batch, waiting while `buffer_memory` is full,
    /// and returns a future of its delivery.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::RecordTooLarge`], an unknown topic or partition.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let size_bytes = record.size_bytes();
        let limit_bytes = BATCH_BYTES_MAX_DEFAULT as usize - 128;
        if size_bytes > limit_bytes || size_bytes > inner.config.buffer_memory {
            return Err(Error::RecordTooLarge {
                size_bytes,
                limit_bytes,
            });
        }
        let partitions = inner.cluster.partition_count(&record.topic).await?;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p >= partitions => {
                return Err(Error::Broker(crate::BrokerError {
                    code: crate::ErrorCode::UnknownTopicOrPartition,
                    message: format!(
                        "topic {:?} has {partitions} partitions, not {}",
                        record.topic,
                        p + 1
                    ),
                }))
            }
            (Some(p), _) => p,
            (None, Some(key)) => key_partition(key, partitions),
            (None, None) => u32::MAX,
        };
        let permit = inner
            .memory
            .clone()
            .acquire_many_owned(size_bytes as u32)
            .await
            .map_err(|_| Error::Closed)?;
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + inner.config.delivery_timeout;
        inner.outstanding.count.fetch_add(1, Ordering::SeqCst);
        let command = Command::Append(Pending {
            record,
            partition,
            reply,
            permit,
            deadline,
        });
        if inner.commands.send(command).is_err() {
            inner.outstanding.done();
            return Err(Error::Closed);
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends a record and calls `callback` with the outcome, from a tokio task.
    ///
    /// # Errors
    /// As [`Producer::enqueue`] (then the callback is not called).
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(DeliveryResult) + Send + 'static,
    ) -> Result<(), Error> {
        let delivery = self.enqueue(record).await?;
        tokio::spawn(async move { callback(delivery.await) });
        Ok(())
    }

    /// Sends a record from synchronous code and blocks until it is stored.
    /// Call it from a thread that is not running the tokio runtime `handle` belongs to.
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub fn send_sync(
        &self,
        handle: &tokio::runtime::Handle,
        record: ProducerRecord,
    ) -> DeliveryResult {
        handle.block_on(self.send(record))
    }

    /// Seals every open batch and waits until every record accepted so far is resolved.
    ///
    /// # Errors
    /// [`Error::Closed`] when the producer's task is gone.
    pub async fn flush(&self) -> Result<(), Error> {
        let outstanding = &self.inner.outstanding;
        loop {
            let drained = outstanding.drained.notified();
            if outstanding.count.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            self.inner
                .commands
                .send(Command::Flush)
                .map_err(|_| Error::Closed)?;
            let _ = tokio::time::timeout(Duration::from_millis(100), drained).await;
        }
    }

    /// Delivers everything pending and refuses further records.
    ///
    /// # Errors
    /// As [`Producer::flush`].
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.flush().await
    }
}

async fn init_producer(cluster: &Cluster) -> Result<(i64, i16), Error> {
    match cluster
        .call(Request::InitProducer {
            producer_id: -1,
            producer_epoch: -1,
        })
        .await?
    {
        Response::InitProducer {
            producer_id,
            producer_epoch,
        } => Ok((producer_id, producer_epoch)),
        other => Err(crate::admin::unexpected(other)),
    }
}

/// The partition of a key: CRC32C of the key bytes, modulo the partition count.
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions.max(1)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A record's reply, waiting in a batch.
struct Waiting {
    reply: oneshot::Sender<DeliveryResult>,
    offset_delta: u32,
    _permit: OwnedSemaphorePermit,
}

struct OpenBatch {
    builder: BatchBuilder,
    waiting: Vec<Waiting>,
    sealed_at: Instant,
    deadline: Instant,
}

/// A batch ready to send.
struct Sealed {
    bytes: BytesMut,
    record_count: u32,
    waiting: Vec<Waiting>,
    deadline: Instant,
}

struct Accumulator {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    identity: (i64, i16),
    open: HashMap<(String, u32), OpenBatch>,
    senders: HashMap<(String, u32), mpsc::UnboundedSender<Sealed>>,
    sticky: HashMap<String, u32>,
    outstanding: Arc<Outstanding>,
}

impl Accumulator {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next_linger = self.open.values().map(|b| b.sealed_at).min();
            let command = match next_linger {
                Some(at) => tokio::select! {
                    command = commands.recv() => command,
                    _ = tokio::time::sleep_until(at) => {
                        self.seal_due();
                        continue;
                    }
                },
                None => commands.recv().await,
            };
            match command {
                Some(Command::Append(pending)) => self.append(pending).await,
                Some(Command::Flush) => self.seal_all(),
                None => {
                    self.seal_all();
                    return;
                }
            }
        }
    }

    async fn append(&mut self, pending: Pending) {
        let partition = if pending.partition == u32::MAX {
            self.sticky_partition(&pending.record.topic).await
        } else {
            pending.partition
        };
        let key = (pending.record.topic.clone(), partition);
        let record = &pending.record;
        let headers: Vec<RecordHeaderRef<'_>> = record
            .headers
            .iter()
            .map(|(k, v)| RecordHeaderRef {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let size = record.size_bytes();
        if self
            .open
            .get(&key)
            .is_some_and(|b| b.builder.size_bytes() + size > self.config.batch_size)
        {
            self.seal(&key);
        }
        let batch = self.open.entry(key.clone()).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(BatchBuilderOptions {
                capacity_bytes: self.config.batch_size.min(1 << 16),
                ..Default::default()
            }),
            waiting: Vec::new(),
            sealed_at: Instant::now() + self.config.linger,
            deadline: pending.deadline,
        });
        match batch.builder.append(
            timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        ) {
            Ok(offset_delta) => batch.waiting.push(Waiting {
                reply: pending.reply,
                offset_delta,
                _permit: pending.permit,
            }),
            Err(error) => {
                let _ = pending.reply.send(Err(Error::Protocol(error.to_string())));
                self.outstanding.done();
            }
        }
        if batch.builder.size_bytes() >= self.config.batch_size {
            self.seal(&key);
        }
    }

    /// Sticky partitioning: the partition whose batch keyless records fill now.
    async fn sticky_partition(&mut self, topic: &str) -> u32 {
        if let Some(p) = self.sticky.get(topic) {
            return *p;
        }
        let partitions = self.cluster.partition_count(topic).await.unwrap_or(1);
        let next = (now_ms() as u32).wrapping_add(self.sticky.len() as u32) % partitions.max(1);
        self.sticky.insert(topic.to_string(), next);
        next
    }

    fn seal_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, b)| b.sealed_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.seal(&key);
        }
    }

    fn seal_all(&mut self) {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        for key in keys {
            self.seal(&key);
        }
    }

    fn seal(&mut self, key: &(String, u32)) {
        let Some(batch) = self.open.remove(key) else {
            return;
        };
        if self.sticky.get(&key.0) == Some(&key.1) {
            self.sticky.remove(&key.0);
        }
        let record_count = batch.builder.record_count();
        let compression = self.config.compression;
        let encoded = batch
            .builder
            .finish_with(compression, |records| codec::compress(compression, records));
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => {
                for waiting in batch.waiting {
                    let _ = waiting.reply.send(Err(Error::Protocol(error.to_string())));
                    self.outstanding.done();
                }
                return;
            }
        };
        let sealed = Sealed {
            bytes,
            record_count,
            waiting: batch.waiting,
            deadline: batch.deadline,
        };
        let sender = self.senders.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let partition = PartitionSender {
                cluster: self.cluster.clone(),
                config: self.config.clone(),
                topic: key.0.clone(),
                partition: key.1,
                identity: self.identity,
                next_sequence: 0,
                outstanding: self.outstanding.clone(),
            };
            tokio::spawn(partition.run(rx));
            tx
        });
        let _ = sender.send(sealed);
    }
}

/// A batch with its sequence assigned, waiting for the broker.
struct InFlight {
    batch: Bytes,
    sealed: Sealed,
}

struct PartitionSender {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    topic: String,
    partition: u32,
    identity: (i64, i16),
    next_sequence: i32,
    outstanding: Arc<Outstanding>,
}

impl PartitionSender {
    async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<Sealed>) {
        let mut queue: VecDeque<InFlight> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match incoming.recv().await {
                    Some(sealed) => queue.push_back(self.assign(sealed)),
                    None => return,
                }
            }
            while let Ok(sealed) = incoming.try_recv() {
                queue.push_back(self.assign(sealed));
            }
            self.send_window(&mut queue).await;
        }
    }

    /// Numbers a batch with this partition's next sequence.
    fn assign(&mut self, mut sealed: Sealed) -> InFlight {
        if self.identity.0 >= 0 {
            set_producer(
                &mut sealed.bytes,
                self.identity.0,
                self.identity.1,
                self.next_sequence,
            );
            self.next_sequence = self.next_sequence.wrapping_add(sealed.record_count as i32);
        }
        InFlight {
            batch: sealed.bytes.clone().freeze(),
            sealed,
        }
    }

    /// Sends up to `max_in_flight` batches in order and resolves them in order;
    /// after the first failure the rest of the window is sent again later.
    async fn send_window(&mut self, queue: &mut VecDeque<InFlight>) {
        let window = queue.len().min(self.config.max_in_flight);
        let outcome = match self.cluster.route(&self.topic, self.partition).await {
            Ok(addr) => match self.cluster.connection(addr).await {
                Ok(connection) => {
                    let calls = queue.iter().take(window).map(|f| {
                        let request = Request::Produce {
                            acks: self.config.acks,
                            timeout_ms: self.config.client.request_timeout.as_millis() as u32,
                            partitions: vec![(self.topic.clone(), self.partition, f.batch.clone())],
                        };
                        connection.call(request)
                    });
                    Ok(futures_util::future::join_all(calls).await)
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let results = match outcome {
            Ok(results) => results,
            Err(error) => vec![Err(error)],
        };
        for result in results {
            match produce_result(result) {
                Ok(offset) => {
                    let done = queue.pop_front().expect("a result per batch in the window");
                    self.resolve(done.sealed, Ok(offset));
                }
                Err(error) => {
                    self.after_failure(queue, error).await;
                    return;
                }
            }
        }
    }

    async fn after_failure(&mut self, queue: &mut VecDeque<InFlight>, error: Error) {
        let retriable = error.is_retriable();
        if let Error::Broker(broker) = &error {
            if broker.code == crate::ErrorCode::UnknownTopicOrPartition {
                self.cluster.forget(&self.topic);
            }
        }
        let now = Instant::now();
        let expired = queue
            .front()
            .is_some_and(|f| f.sealed.deadline <= now + self.config.retry_backoff);
        if retriable && !expired {
            tokio::time::sleep(self.config.retry_backoff).await;
            return;
        }
        // Give up on the first batch. What follows it is out of sequence now,
        // so it fails too, and this partition continues under a new producer id.
        let last_error = error.to_string();
        while let Some(failed) = queue.pop_front() {
            let failure = if retriable {
                Error::DeliveryTimeout {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    last_error: last_error.clone(),
                }
            } else {
                Error::Protocol(last_error.clone())
            };
            let failure = match (&error, retriable) {
                (Error::Broker(broker), false) => Error::Broker(broker.clone()),
                _ => failure,
            };
            self.resolve(failed.sealed, Err(failure));
        }
        if self.identity.0 >= 0 {
            if let Ok(identity) = init_producer(&self.cluster).await {
                self.identity = identity;
            }
            self.next_sequence = 0;
        }
    }

    fn resolve(&self, sealed: Sealed, result: Result<i64, Error>) {
        for waiting in sealed.waiting {
            let outcome = match &result {
                Ok(base) => Ok(RecordMetadata {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: u64::try_from(*base)
                        .ok()
                        .map(|b| b + u64::from(waiting.offset_delta)),
                }),
                Err(error) => Err(clone_error(error)),
            };
            let _ = waiting.reply.send(outcome);
            self.outstanding.done();
        }
    }
}

fn produce_result(result: Result<Response, Error>) -> Result<i64, Error> {
    match result? {
        Response::Produce(results) => {
            let first = results
                .into_iter()
                .next()
                .ok_or_else(|| Error::Protocol("an empty produce response".into()))?;
            match first.error {
                Some(error) => Err(Error::Broker(error)),
                None => Ok(first.offset),
            }
        }
        other => Err(crate::admin::unexpected(other)),
    }
}

fn clone_error(error: &Error) -> Error {
    match error {
        Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        Error::Protocol(m) => Error::Protocol(m.clone()),
        Error::Broker(b) => Error::Broker(b.clone()),
        Error::DeliveryTimeout {
            topic,
            partition,
            last_error,
        } => Error::DeliveryTimeout {
            topic: topic.clone(),
            partition: *partition,
            last_error: last_error.clone(),
        },
        Error::RecordTooLarge {
            size_bytes,
            limit_bytes,
        } => Error::RecordTooLarge {
            size_bytes: *size_bytes,
            limit_bytes: *limit_bytes,
        },
        Error::Closed => Error::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_stable_partitions() {
        assert_eq!(key_partition(b"user-1", 8), key_partition(b"user-1", 8));
        assert!(key_partition(b"user-1", 8) < 8);
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| key_partition(format!("k{i}").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
