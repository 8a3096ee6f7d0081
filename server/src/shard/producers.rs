//! Idempotent producers: per partition, the last batches of each producer id.
//!
//! A producer numbers its records per partition; a batch carries the
//! sequence of its first record. The broker accepts a batch only if it
//! continues the producer's last sequence, answers a retry of one of the
//! last [`BATCHES_PER_PRODUCER`] batches with the batch's original offset,
//! and refuses anything else. A producer the partition has no state for
//! (new here, or forgotten) must start at sequence 0: accepting any sequence
//! would let a pipelined batch that overtook the first one (say, the first
//! failed because the partition was still opening) set the expectation, and
//! the first one's retry could then never be stored.
//!
//! Sequences are recorded when the append is submitted (so pipelined
//! batches are checked against each other) and removed again if the append
//! fails, so that the retry is not mistaken for a duplicate.

use std::collections::{BTreeMap, HashMap, VecDeque};

use shardlog_wire::batch::BatchHeader;

/// Batches remembered per producer and partition, as in Kafka.
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producers remembered per partition; the least recently seen is forgotten first.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SequenceRange {
    base_sequence: i32,
    last_sequence: i32,
    /// Set once the append is acknowledged.
    base_offset: Option<u64>,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<SequenceRange>,
    last_seen_tick: u64,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: append it (its sequence is now recorded).
    Append,
    /// A retry of an acknowledged batch: answer with its offset.
    Duplicate {
        /// Where the batch was stored.
        base_offset: u64,
    },
    /// A retry of a batch whose append has not finished yet.
    DuplicateInFlight,
    /// No state for this producer here and a sequence other than 0.
    UnknownProducer,
    /// Not the sequence that was expected.
    OutOfOrder {
        /// The sequence the broker expected.
        expected: i32,
    },
    /// An epoch older than the producer's current one: a zombie.
    Fenced {
        /// The producer's current epoch.
        current_epoch: i16,
    },
}

/// The producer state of one partition.
#[derive(Debug)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Producers remembered before the least recently seen is forgotten.
    producers_max: usize,
    /// Producer ids by the tick they were last seen at: the first is the
    /// least recently seen, so forgetting one is a lookup, not a scan.
    by_last_seen: BTreeMap<u64, i64>,
    tick: u64,
}

impl Default for ProducerTable {
    fn default() -> Self {
        ProducerTable::new(PRODUCERS_PER_PARTITION_MAX)
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    header
        .base_sequence
        .wrapping_add(header.record_count as i32 - 1)
}

impl ProducerTable {
    /// A table that remembers at most `producers_max` producers.
    pub fn new(producers_max: usize) -> ProducerTable {
        assert!(producers_max > 0);
        ProducerTable {
            producers: HashMap::new(),
            producers_max,
            by_last_seen: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Checks a batch with `producer_id >= 0` and records it when it is to be appended.
    pub fn check(&mut self, header: &BatchHeader) -> SequenceCheck {
        assert!(
            header.producer_id >= 0,
            "only idempotent batches are checked"
        );
        let entry = self.touch(header.producer_id);
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::Fenced {
                current_epoch: entry.epoch,
            };
        }
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if let Some(seen) = entry
            .batches
            .iter()
            .find(|b| b.base_sequence == header.base_sequence)
        {
            return match seen.base_offset {
                Some(base_offset) => SequenceCheck::Duplicate { base_offset },
                None => SequenceCheck::DuplicateInFlight,
            };
        }
        match entry.batches.back() {
            Some(last) => {
                let expected = last.last_sequence.wrapping_add(1);
                if header.base_sequence != expected {
                    return SequenceCheck::OutOfOrder { expected };
                }
            }
            None if header.base_sequence != 0 => return SequenceCheck::UnknownProducer,
            None => {}
        }
        entry.batches.push_back(SequenceRange {
            base_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: None,
        });
        if entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        SequenceCheck::Append
    }

    /// The append of a checked batch succeeded at `base_offset`.
    pub fn complete(&mut self, producer_id: i64, base_sequence: i32, base_offset: u64) {
        let batch = self.producers.get_mut(&producer_id).and_then(|e| {
            e.batches
                .iter_mut()
                .find(|b| b.base_sequence == base_sequence)
        });
        if let Some(batch) = batch {
            batch.base_offset = Some(base_offset);
        }
    }

    /// The append of a checked batch failed: forget it and every later batch
    /// of the producer (they fail too: the engine fails all unwritten appends).
    pub fn abort(&mut self, producer_id: i64, base_sequence: i32) {
        if let Some(entry) = self.producers.get_mut(&producer_id) {
            if let Some(at) = entry
                .batches
                .iter()
                .position(|b| b.base_sequence == base_sequence)
            {
                entry.batches.truncate(at);
            }
        }
    }

    /// Records a batch found in the log at start-up.
    pub fn restore(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.touch(header.producer_id);
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SequenceRange {
            base_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: Some(header.base_offset),
        });
        if entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
    }

    /// The entry of `producer_id`, made the most recently seen; a new one
    /// may push out the least recently seen producer.
    fn touch(&mut self, producer_id: i64) -> &mut ProducerEntry {
        self.tick += 1;
        let tick = self.tick;
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= self.producers_max
        {
            if let Some((_, oldest)) = self.by_last_seen.pop_first() {
                self.producers.remove(&oldest);
            }
        }
        let entry = self.producers.entry(producer_id).or_default();
        if entry.last_seen_tick != 0 {
            self.by_last_seen.remove(&entry.last_seen_tick);
        }
        entry.last_seen_tick = tick;
        self.by_last_seen.insert(tick, producer_id);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: u32,
        base_offset: u64,
    ) -> BatchHeader {
        BatchHeader {
            length_bytes: 100,
            leader_epoch: 0,
            base_offset,
            crc32c: 0,
            magic: 2,
            attributes: 0,
            last_offset_delta: record_count - 1,
            record_count,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            producer_id,
            base_sequence,
            producer_epoch: epoch,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&header(7, 0, 0, 3, 0)), SequenceCheck::Append);
        assert_eq!(
            table.check(&header(7, 0, 0, 3, 0)),
            SequenceCheck::DuplicateInFlight
        );
        table.complete(7, 0, 40);
        assert_eq!(
            table.check(&header(7, 0, 0, 3, 0)),
            SequenceCheck::Duplicate { base_offset: 40 }
        );
        assert_eq!(table.check(&header(7, 0, 3, 2, 0)), SequenceCheck::Append);
        assert_eq!(
            table.check(&header(7, 0, 9, 1, 0)),
            SequenceCheck::OutOfOrder { expected: 5 }
        );
    }

    #[test]
    fn a_failed_append_can_be_retried() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&header(1, 0, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(1, 0, 1, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(1, 0, 2, 1, 0)), SequenceCheck::Append);
        table.complete(1, 0, 0);
        table.abort(1, 1);
        assert_eq!(
            table.check(&header(1, 0, 1, 1, 0)),
            SequenceCheck::Append,
            "the retry of the failed batch appends"
        );
    }

    #[test]
    fn epochs_fence_zombies_and_reset_sequences() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&header(1, 1, 0, 10, 0)), SequenceCheck::Append);
        assert_eq!(
            table.check(&header(1, 0, 10, 1, 0)),
            SequenceCheck::Fenced { current_epoch: 1 }
        );
        assert_eq!(
            table.check(&header(1, 2, 10, 1, 0)),
            SequenceCheck::UnknownProducer,
            "a new epoch starts over at sequence 0"
        );
        assert_eq!(table.check(&header(1, 2, 0, 1, 0)), SequenceCheck::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_restored() {
        let mut table = ProducerTable::default();
        for i in 0..7 {
            table.restore(&header(3, 0, i, 1, 100 + i as u64));
        }
        assert_eq!(
            table.check(&header(3, 0, 6, 1, 0)),
            SequenceCheck::Duplicate { base_offset: 106 }
        );
        assert_eq!(
            table.check(&header(3, 0, 2, 1, 0)),
            SequenceCheck::Duplicate { base_offset: 102 }
        );
        assert_eq!(
            table.check(&header(3, 0, 1, 1, 0)),
            SequenceCheck::OutOfOrder { expected: 7 }
        );
        assert_eq!(table.check(&header(3, 0, 7, 1, 0)), SequenceCheck::Append);
    }

    #[test]
    fn a_batch_that_overtakes_the_first_one_is_refused_until_the_first_lands() {
        let mut table = ProducerTable::default();
        assert_eq!(
            table.check(&header(4, 0, 30, 10, 0)),
            SequenceCheck::UnknownProducer
        );
        assert_eq!(table.check(&header(4, 0, 0, 30, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(4, 0, 30, 10, 0)), SequenceCheck::Append);
    }

    #[test]
    fn the_least_recently_seen_producer_is_forgotten_first() {
        let mut table = ProducerTable::new(2);
        assert_eq!(table.check(&header(1, 0, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(2, 0, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(1, 0, 1, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.check(&header(3, 0, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(table.producers.len(), 2);
        assert!(
            table.producers.contains_key(&1),
            "seen most recently but one"
        );
        assert!(!table.producers.contains_key(&2), "seen least recently");
        assert_eq!(
            table.check(&header(2, 0, 5, 1, 0)),
            SequenceCheck::UnknownProducer,
            "a forgotten producer is unknown"
        );
    }

    #[test]
    fn sequences_wrap() {
        let mut table = ProducerTable::default();
        table.restore(&header(5, 0, i32::MAX - 3, 2, 0));
        assert_eq!(
            table.check(&header(5, 0, i32::MAX - 1, 2, 0)),
            SequenceCheck::Append
        );
        assert_eq!(
            table.check(&header(5, 0, i32::MIN, 1, 0)),
            SequenceCheck::Append
        );
    }
}
