//! The pull consumer: assign partitions, seek, poll.
//!
//! Each poll sends one long-poll fetch per owning shard (concurrently),
//! checks every batch's CRC, decompresses, and hands back records whose
//! key and value are slices of the fetched buffer. With prefetch on, the
//! next fetch is on the wire while the application works on this one.
//!
//! A position can fall out of its partition's log: retention deleted the
//! segment holding it, or it was set past the end. The broker answers
//! `OffsetOutOfRange`, and `auto_offset_reset` decides, as Kafka's
//! `auto.offset.reset` does: move to the earliest offset, to the latest,
//! or (`none`) fail the poll with [`Error::OffsetOutOfRange`] until the
//! application seeks. Errors of a fetch are looked at before any record
//! is decoded, so a failed poll advances no position and loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardlog_wire::batch::{BatchIter, BatchLimits, RecordHeader};
use tokio::task::JoinHandle;

use crate::cluster::{ClientConfig, Cluster};
use crate::protocol::{FetchPartition, FetchedPartition, OffsetSpec, Request, Response};
use crate::{codec, Error, ErrorCode};

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// The longest a poll waits for `min_bytes` [default 500 ms].
    pub max_wait: Duration,
    /// A poll returns once this many bytes are there [default 1].
    pub min_bytes: u32,
    /// The most bytes one fetch returns [default 50 MiB].
    pub max_bytes: u32,
    /// The most bytes one fetch returns per partition [default 1 MiB].
    pub max_partition_bytes: u32,
    /// Start the next fetch as soon as a poll returns [default true].
    pub prefetch: bool,
    /// Where to go when a position lies outside its partition's log, and
    /// where a group member starts a partition with no committed offset
    /// (Kafka's `auto.offset.reset`) [default latest].
    pub auto_offset_reset: OffsetReset,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            client: ClientConfig::default(),
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            max_partition_bytes: 1024 * 1024,
            prefetch: true,
            auto_offset_reset: OffsetReset::Latest,
        }
    }
}

/// What a consumer does without a valid position in a partition: its
/// position is out of range (deleted by retention, or past the end), or,
/// in a group, the partition has no committed offset. Kafka's
/// `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Move to the first offset still stored.
    Earliest,
    /// Move to the end: only records produced from then on (Kafka's default).
    #[default]
    Latest,
    /// Move nowhere: polls fail with [`Error::OffsetOutOfRange`] or
    /// [`Error::NoCommittedOffset`] until the application seeks the partition.
    None,
}

impl OffsetReset {
    /// The seek this policy makes, if any.
    pub fn to_offset(self) -> Option<Offset> {
        match self {
            OffsetReset::Earliest => Some(Offset::Earliest),
            OffsetReset::Latest => Some(Offset::Latest),
            OffsetReset::None => None,
        }
    }
}

impl std::str::FromStr for OffsetReset {
    type Err = String;

    /// `earliest`, `latest` or `none`, as in Kafka.
    fn from_str(text: &str) -> Result<OffsetReset, String> {
        match text {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            "none" => Ok(OffsetReset::None),
            _ => Err(format!(
                "unknown offset reset {text:?}; use earliest, latest or none"
            )),
        }
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The first offset still stored.
    Earliest,
    /// The end: only records produced from now on.
    Latest,
    /// This offset.
    At(u64),
    /// The first record at or after this timestamp (milliseconds), or the end.
    Timestamp(i64),
}

/// A record as a consumer receives it. Key, value and headers are slices of
/// the fetched buffer, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Vec<RecordHeader>,
}

type Positions = BTreeMap<(String, u32), u64>;
type Prefetch = JoinHandle<Result<Vec<FetchedPartition>, Error>>;

/// A pull consumer of explicitly assigned partitions.
///
/// ```no_run
/// # async fn demo() -> Result<(), shardlog_client::Error> {
/// use shardlog_client::{Consumer, ConsumerConfig, Offset};
/// let mut consumer = Consumer::new(ConsumerConfig::default());
/// consumer.assign("clicks", &[0, 1], Offset::Earliest);
/// for record in consumer.poll().await? {
///     println!("{}/{}: {:?}", record.partition, record.offset, record.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    positions: Positions,
    seeks: HashMap<(String, u32), Offset>,
    prefetched: Option<(Positions, Prefetch)>,
}

impl Consumer {
    /// A consumer for the broker in `config.client`.
    pub fn new(config: ConsumerConfig) -> Consumer {
        let cluster = Arc::new(Cluster::new(config.client.clone()));
        Consumer {
            cluster,
            config,
            positions: BTreeMap::new(),
            seeks: HashMap::new(),
            prefetched: None,
        }
    }

    /// Adds partitions of `topic`, each starting at `from`.
    pub fn assign(&mut self, topic: &str, partitions: &[u32], from: Offset) {
        for partition in partitions {
            self.seek(topic, *partition, from);
        }
    }

    /// Every partition of `topic`, each starting at `from`.
    ///
    /// # Errors
    /// An unknown topic; I/O errors.
    pub async fn assign_all(&mut self, topic: &str, from: Offset) -> Result<u32, Error> {
        let count = self.cluster.partition_count(topic).await?;
        self.assign(topic, &(0..count).collect::<Vec<_>>(), from);
        Ok(count)
    }

    /// Removes a partition.
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        let key = (topic.to_string(), partition);
        self.positions.remove(&key);
        self.seeks.remove(&key);
        self.prefetched = None;
    }

    /// Moves a partition's position: at once for [`Offset::At`], at the next
    /// poll for the others (they need the broker).
    pub fn seek(&mut self, topic: &str, partition: u32, to: Offset) {
        let key = (topic.to_string(), partition);
        match to {
            Offset::At(offset) => {
                self.seeks.remove(&key);
                self.positions.insert(key, offset);
            }
            _ => {
                self.seeks.insert(key, to);
            }
        }
        self.prefetched = None;
    }

    /// The positions of every assigned partition whose position is known.
    pub fn positions(&self) -> Vec<((String, u32), u64)> {
        self.positions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(crate) fn cluster(&self) -> Arc<Cluster> {
        self.cluster.clone()
    }

    /// The next offset a poll will return for a partition, once known.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// Returns the next records of the assigned partitions, waiting up to
    /// `max_wait` when there are none. A partition whose position is out of
    /// range moves as `auto_offset_reset` says (its records come at a later poll).
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] under `auto_offset_reset = none`; a
    /// partition's error (unknown topic, a corrupt batch), I/O errors.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, Error> {
        self.resolve_seeks().await?;
        let fetched = match self.prefetched.take() {
            Some((positions, task)) if positions == self.positions => {
                task.await.map_err(|_| Error::Closed)??
            }
            _ => {
                fetch(
                    self.cluster.clone(),
                    self.config.clone(),
                    self.positions.clone(),
                )
                .await?
            }
        };
        self.check_errors(&fetched)?;
        let records = self.decode(fetched)?;
        if self.config.prefetch && !self.positions.is_empty() && self.seeks.is_empty() {
            let task = tokio::spawn(fetch(
                self.cluster.clone(),
                self.config.clone(),
                self.positions.clone(),
            ));
            self.prefetched = Some((self.positions.clone(), task));
        }
        Ok(records)
    }

    async fn resolve_seeks(&mut self) -> Result<(), Error> {
        if self.seeks.is_empty() {
            return Ok(());
        }
        let mut queries = Vec::new();
        for ((topic, partition), to) in &self.seeks {
            match to {
                Offset::At(offset) => {
                    self.positions.insert((topic.clone(), *partition), *offset);
                }
                Offset::Earliest => {
                    queries.push((topic.clone(), *partition, OffsetSpec::Earliest, 0))
                }
                Offset::Latest => queries.push((topic.clone(), *partition, OffsetSpec::Latest, 0)),
                Offset::Timestamp(ms) => {
                    queries.push((topic.clone(), *partition, OffsetSpec::Timestamp, *ms))
                }
            }
        }
        if queries.is_empty() {
            self.seeks.clear();
            return Ok(());
        }
        // A failed lookup keeps the seeks: the next poll tries them again.
        let results = self.cluster.list_offsets(queries).await?;
        if let Some(error) = results.iter().find_map(|r| r.error.clone()) {
            if error.code == ErrorCode::NotLeader {
                for result in &results {
                    self.cluster.forget(&result.topic);
                }
            }
            if !error.is_retriable() {
                self.seeks.clear();
            }
            return Err(Error::Broker(error));
        }
        self.seeks.clear();
        for result in results {
            // No record at or after a timestamp: start at the end.
            let offset = if result.offset >= 0 {
                result.offset
            } else {
                result.high_watermark
            };
            self.positions
                .insert((result.topic, result.partition), offset.max(0) as u64);
        }
        Ok(())
    }

    /// Resets every partition whose position is out of range (as
    /// `auto_offset_reset` says), then returns the first error left, if any.
    fn check_errors(&mut self, fetched: &[FetchedPartition]) -> Result<(), Error> {
        let mut first_error = None;
        for partition in fetched {
            let Some(error) = &partition.error else {
                continue;
            };
            let key = (partition.topic.clone(), partition.partition);
            let Some(position) = self.positions.get(&key).copied() else {
                continue;
            };
            let error = match (error.code, self.config.auto_offset_reset.to_offset()) {
                (ErrorCode::OffsetOutOfRange, Some(to)) => {
                    self.seek(&partition.topic, partition.partition, to);
                    self.positions.remove(&key);
                    continue;
                }
                (ErrorCode::OffsetOutOfRange, None) => Error::OffsetOutOfRange {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    offset: position,
                    reason: error.clone(),
                },
                (ErrorCode::NotLeader, _) => {
                    // Leadership moved (a failover): the next poll fetches
                    // from the new leader at the same position.
                    self.cluster.forget(&partition.topic);
                    continue;
                }
                (ErrorCode::UnknownTopicOrPartition, _) => {
                    self.cluster.forget(&partition.topic);
                    Error::Broker(error.clone())
                }
                _ => Error::Broker(error.clone()),
            };
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn decode(&mut self, fetched: Vec<FetchedPartition>) -> Result<Vec<ConsumerRecord>, Error> {
        let mut records = Vec::new();
        for partition in fetched {
            if partition.error.is_some() {
                continue;
            }
            let key = (partition.topic.clone(), partition.partition);
            let Some(position) = self.positions.get(&key).copied() else {
                continue;
            };
            let topic: Arc<str> = Arc::from(partition.topic.as_str());
            let mut next = position;
            let limits = BatchLimits {
                batch_bytes_max: u32::MAX,
                record_count_max: u32::MAX,
            };
            for batch in BatchIter::new(partition.records, limits) {
                let batch = batch
                    .map_err(|e| Error::Protocol(format!("a fetched batch is invalid: {e}")))?;
                let iter = batch
                    .records_with(codec::decompress)
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                for record in iter {
                    let record = record.map_err(|e| {
                        Error::Protocol(format!("a fetched record is invalid: {e}"))
                    })?;
                    if record.offset < position {
                        continue;
                    }
                    records.push(ConsumerRecord {
                        topic: topic.clone(),
                        partition: partition.partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        key: record.key,
                        value: record.value,
                        headers: record.headers,
                    });
                }
                next = next.max(batch.header().next_offset());
            }
            self.positions.insert(key, next);
        }
        Ok(records)
    }
}

/// One fetch per owning shard, concurrently.
async fn fetch(
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    positions: Positions,
) -> Result<Vec<FetchedPartition>, Error> {
    let mut by_addr: BTreeMap<SocketAddr, Vec<FetchPartition>> = BTreeMap::new();
    for ((topic, partition), offset) in &positions {
        let addr = cluster.route(topic, *partition).await?;
        let entry = FetchPartition {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            max_bytes: config.max_partition_bytes,
        };
        by_addr.entry(addr).or_default().push(entry);
    }
    let topics_by_call: Vec<Vec<String>> = by_addr
        .values()
        .map(|partitions| partitions.iter().map(|p| p.topic.clone()).collect())
        .collect();
    let calls = by_addr.into_iter().map(|(addr, partitions)| {
        let cluster = cluster.clone();
        let request = Request::Fetch {
            max_wait_ms: config.max_wait.as_millis() as u32,
            min_bytes: config.min_bytes,
            max_bytes: config.max_bytes,
            partitions,
        };
        async move { cluster.connection(addr).await?.call(request).await }
    });
    let mut fetched = Vec::new();
    let mut unreachable: Option<Error> = None;
    let mut answered = false;
    for (response, topics) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .zip(topics_by_call)
    {
        match response {
            Ok(Response::Fetch(partitions)) => {
                answered = true;
                fetched.extend(partitions);
            }
            Ok(other) => return Err(crate::admin::unexpected(other)),
            // One broker unreachable (it may have failed over): its
            // partitions are looked up afresh at the next poll, and the
            // others' records still come back.
            Err(error @ Error::Io(_)) => {
                let mut topics = topics;
                topics.dedup();
                // A failed lookup keeps what is known; the next poll asks again.
                let _ = cluster.refresh(&topics).await;
                unreachable.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    match unreachable {
        Some(error) if !answered => Err(error),
        _ => Ok(fetched),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_reset_reads_kafkas_names_and_defaults_to_latest() {
        assert_eq!("earliest".parse(), Ok(OffsetReset::Earliest));
        assert_eq!("latest".parse(), Ok(OffsetReset::Latest));
        assert_eq!("none".parse(), Ok(OffsetReset::None));
        assert!("smallest".parse::<OffsetReset>().is_err());
        assert_eq!(
            ConsumerConfig::default().auto_offset_reset,
            OffsetReset::Latest
        );
        assert_eq!(OffsetReset::None.to_offset(), None);
    }
}
