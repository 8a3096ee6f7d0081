//! The record accumulator: one open batch per partition, appended to by the
//! caller of `send` under one lock, sealed at `batch_size` or after `linger`.
//!
//! A record is copied into its partition's open batch on the caller's own
//! thread: no task hop and no channel message per record. A sealed batch
//! goes, still under the lock, into its partition's channel, so batches of a
//! partition reach the sender in the order their records were appended. The
//! sender finishes (and compresses) the batch, off the lock. One linger task
//! seals batches whose `linger` ran out; it sleeps until the oldest open
//! batch is due and is woken only when the first batch opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, RecordHeaderRef};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::sender::{PartitionSender, SenderContext};
use super::{DeliveryResult, ProducerRecord};
use crate::Error;

/// Where a record's outcome goes.
pub(super) enum Reply {
    /// A [`super::DeliveryFuture`] waits on it.
    Future(oneshot::Sender<DeliveryResult>),
    /// Called on the partition's sender task.
    Callback(Box<dyn FnOnce(DeliveryResult) + Send>),
}

impl Reply {
    pub(super) fn resolve(self, result: DeliveryResult) {
        match self {
            Reply::Future(sender) => {
                let _ = sender.send(result);
            }
            Reply::Callback(callback) => callback(result),
        }
    }
}

/// A record's reply, waiting in a batch.
pub(super) struct Waiting {
    pub reply: Reply,
    pub offset_delta: u32,
}

/// A batch being filled, or sealed and on its way to the sender.
pub(super) struct OpenBatch {
    pub builder: BatchBuilder,
    pub waiting: Vec<Waiting>,
    /// The `buffer_memory` its records hold, given back once they resolve.
    pub permit: Option<OwnedSemaphorePermit>,
    /// When linger seals it.
    pub sealed_at: Instant,
    /// The delivery deadline of its first record (counted from when the batch opened).
    pub deadline: Instant,
}

/// One record as `send` hands it over.
pub(super) struct Incoming {
    pub record: ProducerRecord,
    /// `None`: sticky.
    pub partition: Option<u32>,
    pub partition_count: u32,
    pub reply: Reply,
    pub permit: OwnedSemaphorePermit,
    pub timestamp_ms: i64,
}

#[derive(Default)]
struct PartitionSlot {
    open: Option<OpenBatch>,
    sender: Option<mpsc::UnboundedSender<OpenBatch>>,
}

struct TopicBatches {
    name: String,
    /// The partition keyless records fill now.
    sticky: Option<u32>,
    partitions: Vec<PartitionSlot>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicBatches>,
    /// Open batches over all topics.
    open_count: usize,
    /// When the linger task wakes next; `None` while it waits for a batch to open.
    linger_due: Option<Instant>,
    /// Seeds sticky partition choices.
    sticky_seed: u32,
    shut_down: bool,
}

/// The producer's open batches.
pub(super) struct Accumulator {
    state: Mutex<State>,
    linger_wake: Notify,
    context: Arc<SenderContext>,
}

impl Accumulator {
    pub fn new(context: Arc<SenderContext>) -> Accumulator {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Accumulator {
            state: Mutex::new(State {
                sticky_seed: seed,
                ..State::default()
            }),
            linger_wake: Notify::new(),
            context,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a record to its partition's open batch, sealing batches as they fill.
    ///
    /// # Errors
    /// [`Error::Protocol`] when the record cannot be encoded.
    pub fn append(&self, incoming: Incoming) -> Result<(), Error> {
        let config = &self.context.config;
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.topics.contains_key(&incoming.record.topic) {
            state.topics.insert(
                incoming.record.topic.clone(),
                TopicBatches {
                    name: incoming.record.topic.clone(),
                    sticky: None,
                    partitions: Vec::new(),
                },
            );
        }
        let Some(topic) = state.topics.get_mut(&incoming.record.topic) else {
            return Err(Error::Protocol("topic vanished under the lock".into()));
        };
        let count = incoming.partition_count.max(1) as usize;
        if topic.partitions.len() < count {
            topic.partitions.resize_with(count, PartitionSlot::default);
        }
        let size_bytes = incoming.record.size_bytes();
        let mut partition = match incoming.partition {
            Some(partition) => partition,
            None => sticky_partition(&mut topic.sticky, &mut state.sticky_seed, count),
        };
        // Seal a batch the record does not fit in. A keyless record then
        // moves on to the next sticky partition rather than opening a batch
        // of one record here (which linger would send alone when many
        // partitions make the sticky choice come back here only rarely).
        loop {
            let slot = &mut topic.partitions[partition as usize];
            let full = slot
                .open
                .as_ref()
                .is_some_and(|b| b.builder.size_bytes() + size_bytes > config.batch_size);
            if !full {
                break;
            }
            topic.seal(&self.context, partition, &mut state.open_count);
            if incoming.partition.is_some() {
                break;
            }
            partition = sticky_partition(&mut topic.sticky, &mut state.sticky_seed, count);
        }
        let slot = &mut topic.partitions[partition as usize];
        let mut opened = false;
        let batch = slot.open.get_or_insert_with(|| {
            opened = true;
            let now = Instant::now();
            OpenBatch {
                builder: BatchBuilder::new(BatchBuilderOptions {
                    capacity_bytes: config.batch_size.min(1 << 16),
                    ..Default::default()
                }),
                waiting: Vec::with_capacity(config.batch_size / size_bytes.max(64) + 1),
                permit: None,
                sealed_at: now + config.linger,
                deadline: now + config.delivery_timeout,
            }
        });
        if opened {
            state.open_count += 1;
        }
        let record = &incoming.record;
        let headers: Vec<RecordHeaderRef<'_>> = record
            .headers
            .iter()
            .map(|(k, v)| RecordHeaderRef {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        let appended = batch.builder.append(
            incoming.timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        let offset_delta = match appended {
            Ok(offset_delta) => offset_delta,
            Err(error) => {
                if batch.builder.record_count() == 0 {
                    slot.open = None;
                    state.open_count -= 1;
                }
                return Err(Error::Protocol(error.to_string()));
            }
        };
        batch.waiting.push(Waiting {
            reply: incoming.reply,
            offset_delta,
        });
        match &mut batch.permit {
            Some(permit) => permit.merge(incoming.permit),
            None => batch.permit = Some(incoming.permit),
        }
        if batch.builder.size_bytes() >= config.batch_size {
            topic.seal(&self.context, partition, &mut state.open_count);
        }
        let wake_linger = state.linger_due.is_none() && state.open_count > 0;
        if wake_linger {
            state.linger_due = Some(Instant::now() + config.linger);
        }
        drop(guard);
        if wake_linger {
            self.linger_wake.notify_one();
        }
        Ok(())
    }

    /// Seals every open batch.
    pub fn seal_all(&self) {
        self.seal_where(|_| true);
    }

    /// Seals open batches that `due` picks; returns the earliest `sealed_at` left open.
    fn seal_where(&self, due: impl Fn(&OpenBatch) -> bool) -> Option<Instant> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.open_count == 0 {
            state.linger_due = None;
            return None;
        }
        let mut next: Option<Instant> = None;
        for topic in state.topics.values_mut() {
            for index in 0..topic.partitions.len() {
                let Some(batch) = &topic.partitions[index].open else {
                    continue;
                };
                let sealed_at = batch.sealed_at;
                if due(batch) {
                    topic.seal(&self.context, index as u32, &mut state.open_count);
                } else {
                    next = Some(next.map_or(sealed_at, |n| n.min(sealed_at)));
                }
            }
        }
        state.linger_due = next;
        next
    }

    /// Stops the linger task after it sealed what is open.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.linger_wake.notify_one();
    }

    /// The linger task: seals batches whose linger ran out, until shut down.
    pub async fn linger(self: Arc<Self>) {
        loop {
            let (due, shut_down) = {
                let state = self.lock();
                (state.linger_due, state.shut_down)
            };
            if shut_down {
                self.seal_all();
                return;
            }
            match due {
                None => self.linger_wake.notified().await,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.linger_wake.notified() => {}
                    }
                }
            }
            let now = Instant::now();
            self.seal_where(|batch| batch.sealed_at <= now);
        }
    }
}

/// The topic's sticky partition, choosing the next one when there is none.
fn sticky_partition(sticky: &mut Option<u32>, seed: &mut u32, count: usize) -> u32 {
    *sticky.get_or_insert_with(|| {
        *seed = seed.wrapping_add(1);
        *seed % count as u32
    })
}

impl TopicBatches {
    /// Takes the partition's open batch, if any, and hands it to the
    /// partition's sender, starting the sender on first use.
    fn seal(&mut self, context: &Arc<SenderContext>, partition: u32, open_count: &mut usize) {
        let slot = &mut self.partitions[partition as usize];
        let Some(batch) = slot.open.take() else {
            return;
        };
        *open_count -= 1;
        if self.sticky == Some(partition) {
            self.sticky = None;
        }
        let sender = slot.sender.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let sender = PartitionSender::new(context.clone(), self.name.clone(), partition);
            tokio::spawn(sender.run(rx));
            tx
        });
        if let Err(mpsc::error::SendError(batch)) = sender.send(batch) {
            // The sender task is gone (its runtime shut down): fail the records.
            for waiting in batch.waiting {
                waiting.reply.resolve(Err(Error::Closed));
                context.outstanding.done();
            }
        }
    }
}
