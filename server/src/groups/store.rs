//! Records of the `__offsets` topic.
//!
//! ```text
//!  commit:  key = 0x01 | u16 len | group | u16 len | topic | u32 partition   value = i64 offset
//!  delete:  key = 0x02 | u16 len | group                                     value = null
//! ```
//! All integers little-endian. Replay applies records in offset order; a
//! record's timestamp is the broker's wall clock when it was written, and
//! tells replay when a group was last used (see `coordinator.rs`).
//!
//! Lengths are u16, so every name written here must fit: the group id and
//! topic name limits are checked at the API (`validate_group_id`,
//! `validate_topic_name`), asserted at compile time to fit a u16, and
//! asserted again when a record is encoded.

use bytes::{Bytes, BytesMut};
use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, BatchIter, BatchLimits};

use super::{TopicPartition, GROUP_ID_BYTES_MAX};
use crate::cluster::topic_name::TOPIC_NAME_BYTES_MAX;

const COMMIT: u8 = 1;
const DELETE: u8 = 2;

const _: () = assert!(GROUP_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(TOPIC_NAME_BYTES_MAX <= u16::MAX as usize);

/// One replayed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Commit {
        group: String,
        tp: TopicPartition,
        offset: i64,
        /// When the commit was written (Unix ms, the broker's clock).
        timestamp_ms: i64,
    },
    Delete {
        group: String,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= usize::from(u16::MAX),
        "names are validated at the API"
    );
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A batch of commit records, stamped `now_ms`.
pub fn encode_commits(group: &str, commits: &[(TopicPartition, i64)], now_ms: i64) -> BytesMut {
    assert!(!commits.is_empty(), "a commit carries at least one offset");
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    let now = now_ms;
    for ((topic, partition), offset) in commits {
        let mut key = vec![COMMIT];
        put_str(&mut key, group);
        put_str(&mut key, topic);
        key.extend_from_slice(&partition.to_le_bytes());
        let appended = builder.append(now, Some(&key), Some(&offset.to_le_bytes()), &[]);
        assert!(appended.is_ok(), "commit records are small");
    }
    builder.finish().expect("at least one commit")
}

/// A batch with the deletion of each of `groups`, stamped `now_ms`.
pub fn encode_deletes(groups: &[String], now_ms: i64) -> BytesMut {
    assert!(!groups.is_empty(), "a deletion names at least one group");
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    for group in groups {
        let mut key = vec![DELETE];
        put_str(&mut key, group);
        let appended = builder.append(now_ms, Some(&key), None, &[]);
        assert!(appended.is_ok(), "delete records are small");
    }
    builder.finish().expect("at least one record")
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(slice)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_record(key: &[u8], value: Option<&[u8]>, timestamp_ms: i64) -> Option<Event> {
    let mut reader = Reader { buf: key, at: 1 };
    match *key.first()? {
        COMMIT => {
            let group = reader.string()?;
            let topic = reader.string()?;
            let partition = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
            let offset = i64::from_le_bytes(value?.try_into().ok()?);
            Some(Event::Commit {
                group,
                tp: (topic, partition),
                offset,
                timestamp_ms,
            })
        }
        DELETE => Some(Event::Delete {
            group: reader.string()?,
        }),
        _ => None,
    }
}

/// The events in stored batches; records that do not decode are skipped with a warning.
pub fn decode(bytes: Bytes) -> Vec<Event> {
    let mut events = Vec::new();
    for batch in BatchIter::new(bytes, BatchLimits::default()) {
        let Ok(batch) = batch else { break };
        let Ok(records) = batch.records() else {
            continue;
        };
        for record in records.flatten() {
            match record
                .key
                .as_deref()
                .and_then(|key| decode_record(key, record.value.as_deref(), record.timestamp_ms))
            {
                Some(event) => events.push(event),
                None => tracing::warn!(
                    offset = record.offset,
                    "skipping an __offsets record that does not decode"
                ),
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_longest_allowed_length_round_trip() {
        let group = "g".repeat(GROUP_ID_BYTES_MAX);
        let topic = "t".repeat(TOPIC_NAME_BYTES_MAX);
        let bytes = encode_commits(&group, &[((topic.clone(), 1), 5)], 0).freeze();
        let events = decode(bytes);
        assert_eq!(
            events,
            vec![Event::Commit {
                group,
                tp: (topic, 1),
                offset: 5,
                timestamp_ms: 0,
            }]
        );
    }

    #[test]
    fn commits_and_deletes_round_trip() {
        let commits = [(("t".into(), 3), 42), (("u".into(), 0), 7)];
        let mut all = encode_commits("g", &commits, 1_000).to_vec();
        all.extend_from_slice(&encode_deletes(&["g".into(), "h".into()], 2_000));
        let events = decode(Bytes::from(all));
        assert_eq!(
            events,
            vec![
                Event::Commit {
                    group: "g".into(),
                    tp: ("t".into(), 3),
                    offset: 42,
                    timestamp_ms: 1_000,
                },
                Event::Commit {
                    group: "g".into(),
                    tp: ("u".into(), 0),
                    offset: 7,
                    timestamp_ms: 1_000,
                },
                Event::Delete { group: "g".into() },
                Event::Delete { group: "h".into() },
            ]
        );
    }
}
