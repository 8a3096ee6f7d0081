//! One sender task per partition: finishes sealed batches, numbers them,
//! keeps up to `max_in_flight` of them on the wire, and resolves them in order.
//!
//! Batches go on the wire in sequence order because this task queues them
//! on one pinned connection one after another ([`Connection::send`]) and
//! only then waits for their responses. (Letting each request's future
//! queue itself was not enough: tokio's cooperative budget can make an
//! earlier future yield and a later one get the connection first, and the
//! broker then refuses the overtaking batch for good.)
//!
//! The window slides: as soon as the oldest batch is acknowledged the next
//! one goes out, so a partition always has `max_in_flight` requests in the
//! broker's pipeline while it has batches queued. On the first failure every
//! request still in flight is abandoned and, after `retry_backoff`, the queue
//! is sent again from the failed batch on: the broker drops the duplicates
//! of batches it already stored (idempotence) and answers with their offsets.
//! When the broker has no state for the producer (`UnknownProducerId`), the
//! queue is numbered again from 0 under a new producer id.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use shardlog_wire::batch::set_producer;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::accumulator::{OpenBatch, Waiting};
use super::{init_producer, Outstanding, ProducerConfig, RecordMetadata};
use crate::cluster::Cluster;
use crate::connection::{Connection, ResponseFuture};
use crate::protocol::{Request, Response};
use crate::{codec, Error};

/// What every partition sender of one producer shares.
pub(super) struct SenderContext {
    pub cluster: Arc<Cluster>,
    pub config: ProducerConfig,
    /// Producer id and epoch, or (-1, -1) when not idempotent.
    pub identity: (i64, i16),
    pub outstanding: Arc<Outstanding>,
}

/// A finished batch, numbered, waiting for its acknowledgement.
struct Queued {
    batch: Bytes,
    record_count: u32,
    waiting: Vec<Waiting>,
    _permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
}

pub(super) struct PartitionSender {
    context: Arc<SenderContext>,
    topic: String,
    partition: u32,
    identity: (i64, i16),
    next_sequence: i32,
    /// The connection this partition's batches go over. Requests on one
    /// connection reach the broker in order; two connections would let a
    /// later batch overtake an earlier one.
    connection: Option<Connection>,
}

impl PartitionSender {
    pub fn new(context: Arc<SenderContext>, topic: String, partition: u32) -> PartitionSender {
        let identity = context.identity;
        PartitionSender {
            context,
            topic,
            partition,
            identity,
            next_sequence: 0,
            connection: None,
        }
    }

    pub async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<OpenBatch>) {
        let max_in_flight = self.context.config.max_in_flight.max(1);
        // Batches not yet acknowledged, oldest first; the first `calls.len()` are on the wire.
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let mut calls: FuturesOrdered<ResponseFuture> = FuturesOrdered::new();
        let mut incoming_open = true;
        loop {
            while calls.len() < max_in_flight && calls.len() < queue.len() {
                match self
                    .call(queue[calls.len()].batch.clone(), calls.len())
                    .await
                {
                    Ok(call) => calls.push_back(call),
                    Err(error) => {
                        calls = FuturesOrdered::new();
                        self.after_failure(&mut queue, error).await;
                    }
                }
            }
            if !incoming_open && queue.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                Some(result) = calls.next(), if !calls.is_empty() => {
                    match produce_result(result) {
                        Ok(offset) => {
                            if let Some(done) = queue.pop_front() {
                                self.resolve(done, Ok(offset));
                            }
                        }
                        Err(error) => {
                            calls = FuturesOrdered::new();
                            self.after_failure(&mut queue, error).await;
                        }
                    }
                }
                batch = incoming.recv(), if incoming_open => match batch {
                    Some(batch) => {
                        if let Some(queued) = self.finish(batch) {
                            queue.push_back(queued);
                        }
                    }
                    None => incoming_open = false,
                },
            }
        }
    }

    /// Encodes (and compresses) a sealed batch and numbers it with this
    /// partition's next sequence; on an encoding error its records fail.
    fn finish(&mut self, mut batch: OpenBatch) -> Option<Queued> {
        let record_count = batch.builder.record_count();
        let compression = self.context.config.compression;
        if self.identity.0 >= 0 {
            batch
                .builder
                .set_producer(self.identity.0, self.identity.1, self.next_sequence);
        }
        let encoded = batch
            .builder
            .finish_with(compression, |records| codec::compress(compression, records));
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => {
                for waiting in batch.waiting {
                    waiting
                        .reply
                        .resolve(Err(Error::Protocol(error.to_string())));
                    self.context.outstanding.done();
                }
                return None;
            }
        };
        if self.identity.0 >= 0 {
            self.next_sequence = self.next_sequence.wrapping_add(record_count as i32);
        }
        Some(Queued {
            batch: bytes.freeze(),
            record_count,
            waiting: batch.waiting,
            _permit: batch.permit,
            deadline: batch.deadline,
        })
    }

    /// Puts one batch on the wire to the partition's shard, over the same
    /// connection as the batches before it and behind them (this returns
    /// once the request is queued on the connection; the result is the
    /// response's future). A new connection is taken only with nothing in
    /// flight: if the pinned one broke with `in_flight` batches on it, they
    /// fail, and the queue is sent again from the first.
    async fn call(&mut self, batch: Bytes, in_flight: usize) -> Result<ResponseFuture, Error> {
        let pinned = self.connection.as_ref().filter(|c| !c.is_closed()).cloned();
        let connection = match pinned {
            Some(connection) => connection,
            None if in_flight > 0 => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the connection broke with batches in flight",
                )))
            }
            None => {
                let cluster = &self.context.cluster;
                let addr = cluster.route(&self.topic, self.partition).await?;
                let connection = cluster.connection(addr).await?;
                self.connection = Some(connection.clone());
                connection
            }
        };
        let request = Request::Produce {
            acks: self.context.config.acks,
            timeout_ms: self.context.config.client.request_timeout.as_millis() as u32,
            partitions: vec![(self.topic.clone(), self.partition, batch)],
        };
        connection.send(request).await
    }

    /// After a failed batch: waits `retry_backoff` before the queue is sent
    /// again, or, when the error is final or the first batch's delivery
    /// timeout ran out, fails every queued batch and starts over with a new
    /// producer id.
    async fn after_failure(&mut self, queue: &mut VecDeque<Queued>, error: Error) {
        let config = &self.context.config;
        let retriable = error.is_retriable();
        if let Error::Io(_) = &error {
            // The leader may be gone: ask where the partition is now. A
            // failed lookup keeps what is known (the partition count, which
            // keyed records need), and the next failure asks again.
            let _ = self
                .context
                .cluster
                .refresh(std::slice::from_ref(&self.topic))
                .await;
            self.connection = None;
        }
        if let Error::Broker(broker) = &error {
            if matches!(
                broker.code,
                crate::ErrorCode::UnknownTopicOrPartition
                    | crate::ErrorCode::NotLeader
                    | crate::ErrorCode::FencedLeaderEpoch
                    | crate::ErrorCode::UnknownLeaderEpoch
            ) {
                self.context.cluster.forget(&self.topic);
                // The partition may have moved, or its leader: route afresh.
                self.connection = None;
            }
            if broker.code == crate::ErrorCode::UnknownProducerId && self.identity.0 >= 0 {
                // The partition has no state for this producer (it forgot
                // it): start over under a new producer id, from sequence 0.
                match init_producer(&self.context.cluster).await {
                    Ok(identity) => self.renumber(queue, identity),
                    Err(_) => tokio::time::sleep(config.retry_backoff).await,
                }
                return;
            }
        }
        let now = Instant::now();
        let expired = queue
            .front()
            .is_some_and(|f| f.deadline <= now + config.retry_backoff);
        if retriable && !expired {
            tokio::time::sleep(config.retry_backoff).await;
            return;
        }
        // Give up on the first batch. What follows it is out of sequence now,
        // so it fails too, and this partition continues under a new producer id.
        let last_error = error.to_string();
        while let Some(failed) = queue.pop_front() {
            let failure = match (&error, retriable) {
                (Error::Broker(broker), false) => Error::Broker(broker.clone()),
                (_, false) => Error::Protocol(last_error.clone()),
                (_, true) => Error::DeliveryTimeout {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    last_error: last_error.clone(),
                },
            };
            self.resolve(failed, Err(failure));
        }
        if self.identity.0 >= 0 {
            if let Ok(identity) = init_producer(&self.context.cluster).await {
                self.identity = identity;
            }
            self.next_sequence = 0;
        }
    }

    /// Numbers every queued batch again under `identity`, from sequence 0.
    fn renumber(&mut self, queue: &mut VecDeque<Queued>, identity: (i64, i16)) {
        self.identity = identity;
        self.next_sequence = 0;
        for queued in queue.iter_mut() {
            let mut bytes = BytesMut::from(&queued.batch[..]);
            set_producer(&mut bytes, identity.0, identity.1, self.next_sequence);
            queued.batch = bytes.freeze();
            self.next_sequence = self.next_sequence.wrapping_add(queued.record_count as i32);
        }
    }

    fn resolve(&self, done: Queued, result: Result<i64, Error>) {
        for waiting in done.waiting {
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
            waiting.reply.resolve(outcome);
            self.context.outstanding.done();
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
        Error::OffsetOutOfRange {
            topic,
            partition,
            offset,
            reason,
        } => Error::OffsetOutOfRange {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            reason: reason.clone(),
        },
        Error::NoCommittedOffset {
            group,
            topic,
            partition,
        } => Error::NoCommittedOffset {
            group: group.clone(),
            topic: topic.clone(),
            partition: *partition,
        },
        Error::Closed => Error::Closed,
    }
}
