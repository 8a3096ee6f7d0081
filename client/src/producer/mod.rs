//! The producer: batching per partition, partitioning, idempotence, retries.
//!
//! ```text
//!  send ─► [buffer_memory permits] ─► accumulator (caller's thread, one lock):
//!            one open batch per partition, sealed at batch_size or after linger
//!        one sender task per partition ◄──── sealed batches, in order
//!          finishes and numbers each batch (idempotent sequence), keeps up to
//!          max_in_flight on the wire to the owning shard (a sliding window),
//!          resolves records in order, retries from the first failure (the
//!          broker drops duplicates), gives up at the delivery timeout.
//! ```

mod accumulator;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use shardlog_wire::batch::{Compression, BATCH_BYTES_MAX_DEFAULT};
use tokio::sync::{oneshot, Notify, Semaphore};

use self::accumulator::{Accumulator, Incoming, Reply};
use self::sender::SenderContext;
use crate::cluster::{ClientConfig, Cluster};
use crate::protocol::{Acks, Request, Response};
use crate::Error;

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
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.context.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    context: Arc<SenderContext>,
    accumulator: Arc<Accumulator>,
    memory: Arc<Semaphore>,
    closed: AtomicBool,
}

impl Drop for Inner {
    /// The last handle is gone: what is open gets sealed and delivered.
    fn drop(&mut self) {
        self.accumulator.shut_down();
    }
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
        let memory = Arc::new(Semaphore::new(config.buffer_memory));
        let context = Arc::new(SenderContext {
            cluster,
            config,
            identity,
            outstanding: Arc::new(Outstanding::default()),
        });
        let accumulator = Arc::new(Accumulator::new(context.clone()));
        tokio::spawn(accumulator.clone().linger());
        let inner = Inner {
            context,
            accumulator,
            memory,
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
        let (reply, rx) = oneshot::channel();
        self.accept(record, Reply::Future(reply)).await?;
        Ok(DeliveryFuture { rx })
    }

    /// Accepts a record like [`Producer::enqueue`] and calls `callback` with
    /// its outcome. As in Kafka, callbacks run on the producer's own task
    /// (the partition's sender), in the order of the partition's records:
    /// keep them short and never block in them.
    ///
    /// # Errors
    /// As [`Producer::enqueue`] (then the callback is not called).
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(DeliveryResult) + Send + 'static,
    ) -> Result<(), Error> {
        self.accept(record, Reply::Callback(Box::new(callback)))
            .await
    }

    async fn accept(&self, record: ProducerRecord, reply: Reply) -> Result<(), Error> {
        let inner = &self.inner;
        let context = &inner.context;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let size_bytes = record.size_bytes();
        let limit_bytes = BATCH_BYTES_MAX_DEFAULT as usize - 128;
        if size_bytes > limit_bytes || size_bytes > context.config.buffer_memory {
            return Err(Error::RecordTooLarge {
                size_bytes,
                limit_bytes,
            });
        }
        let partition_count = context.cluster.partition_count(&record.topic).await?;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p >= partition_count => {
                return Err(Error::Broker(crate::BrokerError {
                    code: crate::ErrorCode::UnknownTopicOrPartition,
                    message: format!(
                        "topic {:?} has {partition_count} partitions, not {}",
                        record.topic,
                        p + 1
                    ),
                }))
            }
            (Some(p), _) => Some(p),
            (None, Some(key)) => Some(key_partition(key, partition_count)),
            (None, None) => None,
        };
        let permit = inner
            .memory
            .clone()
            .acquire_many_owned(size_bytes as u32)
            .await
            .map_err(|_| Error::Closed)?;
        let outstanding = &context.outstanding;
        outstanding.count.fetch_add(1, Ordering::SeqCst);
        let incoming = Incoming {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            record,
            partition,
            partition_count,
            reply,
            permit,
        };
        let appended = inner.accumulator.append(incoming);
        if appended.is_err() {
            outstanding.done();
        }
        appended
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
    /// Never today; kept fallible for a producer that can be fenced.
    pub async fn flush(&self) -> Result<(), Error> {
        let outstanding = &self.inner.context.outstanding;
        loop {
            let drained = outstanding.drained.notified();
            if outstanding.count.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            self.inner.accumulator.seal_all();
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
