//! The Raft log and the vote: openraft's `RaftLogStorage` on `raft/log` and `raft/vote`.
//!
//! ```text
//!  raft/log:  SLRLOG01 | header {last_purged} | entry i | entry i+1 | ... | entry j
//!                                              ▲ offsets[i]            ▲ end_offset
//!  truncate(k):  set_len(offsets[k]), fsync          (entries >= k gone)
//!  purge(k):     rewrite header {last_purged: k} + entries > k into log.tmp,
//!                fsync, rename over log, fsync dir   (entries <= k gone)
//!  append:       one pwrite at end_offset, fdatasync, then tell openraft
//! ```
//!
//! Entries are consecutive: the first is `last_purged + 1` (any index in a
//! log never purged), and every append continues the last one; a log on disk that breaks this is damaged.
//! One `Arc<Mutex<..>>` holds the in-memory copy and the file, shared with
//! the readers openraft's replication tasks use; every method is synchronous
//! inside, so the lock is never held across an `.await`, and it is only
//! ever taken on the Raft thread.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};

use super::file::{self, Decoded, MAGIC_BYTES};
use super::storage_error;
use crate::cluster::{ClusterError, NodeId, TypeConfig};

const LOG_MAGIC: &[u8; MAGIC_BYTES] = b"SLRLOG01";
const VOTE_MAGIC: &[u8; MAGIC_BYTES] = b"SLVOTE01";

/// The first record of the log file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LogHeader {
    /// The last entry removed by a purge, if any.
    last_purged: Option<LogId<NodeId>>,
}

struct StoredEntry {
    entry: Entry<TypeConfig>,
    /// Where its record starts in the file.
    offset: u64,
}

struct LogInner {
    log_path: PathBuf,
    vote_path: PathBuf,
    file: File,
    /// Where the next record goes: the end of the last whole record.
    end_offset: u64,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, StoredEntry>,
    vote: Option<Vote<NodeId>>,
}

/// The log store (and, cloned, its reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) `raft/log` and `raft/vote` in `raft_dir`, cutting a torn tail.
    ///
    /// # Errors
    /// [`ClusterError::Corrupt`] for damage, with the path; I/O errors.
    pub fn open(raft_dir: &Path) -> Result<LogStore, ClusterError> {
        let log_path = raft_dir.join("log");
        let vote_path = raft_dir.join("vote");
        if !log_path.exists() {
            let header = encode_json(&LogHeader::default());
            file::write_atomically(&log_path, &file::encode_file(LOG_MAGIC, &[&header]))?;
        }
        let bytes =
            std::fs::read(&log_path).map_err(|e| ClusterError::io("reading", &log_path, e))?;
        let (last_purged, entries, end_offset) = parse_log(&log_path, &bytes)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| ClusterError::io("opening", &log_path, e))?;
        if end_offset < bytes.len() as u64 {
            tracing::warn!(path = %log_path.display(), cut_bytes = bytes.len() as u64 - end_offset, "cutting a torn tail off the raft log");
            file.set_len(end_offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| ClusterError::io("cutting the torn tail of", &log_path, e))?;
        }
        let vote = read_vote(&vote_path)?;
        let inner = LogInner {
            log_path,
            vote_path,
            file,
            end_offset,
            last_purged,
            entries,
            vote,
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock is a bug; the node is going down anyway.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("our types always serialize")
}

fn read_vote(path: &Path) -> Result<Option<Vote<NodeId>>, ClusterError> {
    let Some(records) = file::read_file(path, VOTE_MAGIC, 1)? else {
        return Ok(None);
    };
    let vote = serde_json::from_slice(&records[0])
        .map_err(|e| file::corrupt(path, MAGIC_BYTES, format!("the vote does not parse: {e}")))?;
    Ok(Some(vote))
}

type ParsedLog = (Option<LogId<NodeId>>, BTreeMap<u64, StoredEntry>, u64);

/// Parses the whole log file: header, entries, and where the good part ends.
fn parse_log(path: &Path, bytes: &[u8]) -> Result<ParsedLog, ClusterError> {
    file::check_magic(path, bytes, LOG_MAGIC)?;
    let Decoded::Record { payload, next } = file::decode_record(bytes, MAGIC_BYTES) else {
        return Err(file::corrupt(
            path,
            MAGIC_BYTES,
            "the header record is damaged",
        ));
    };
    let header: LogHeader = serde_json::from_slice(payload)
        .map_err(|e| file::corrupt(path, MAGIC_BYTES, format!("the header does not parse: {e}")))?;
    // After a purge the log continues right after it; a log never purged
    // starts wherever its first entry says (openraft starts at 0; its test
    // suite does not always).
    let mut expected_index = header.last_purged.map(|id| id.index + 1);
    let mut entries = BTreeMap::new();
    let mut at = next;
    loop {
        match file::decode_record(bytes, at) {
            Decoded::Record { payload, next } => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(payload).map_err(|e| {
                    file::corrupt(path, at, format!("an entry does not parse: {e}"))
                })?;
                let index = entry.log_id.index;
                if expected_index.is_some_and(|expected| index != expected) {
                    let reason = format!("entry {index} where {expected_index:?} should be");
                    return Err(file::corrupt(path, at, reason));
                }
                entries.insert(
                    index,
                    StoredEntry {
                        entry,
                        offset: at as u64,
                    },
                );
                expected_index = Some(index + 1);
                at = next;
            }
            Decoded::Torn => return Ok((header.last_purged, entries, at as u64)),
            Decoded::Damaged(reason) => return Err(file::corrupt(path, at, reason)),
        }
    }
}

impl LogInner {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .last_key_value()
            .map(|(_, stored)| stored.entry.log_id)
            .or(self.last_purged)
    }

    /// The index the next append must have, if any is required.
    fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index + 1)
    }

    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> Result<(), ClusterError> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        let mut expected = self.next_index();
        for entry in &entries {
            let index = entry.log_id.index;
            assert!(
                expected.is_none_or(|e| e == index),
                "openraft appends without holes: {index} after {expected:?}"
            );
            offsets.push(self.end_offset + bytes.len() as u64);
            file::encode_record(&encode_json(entry), &mut bytes);
            expected = Some(index + 1);
        }
        let path = &self.log_path;
        self.file
            .write_all_at(&bytes, self.end_offset)
            .map_err(|e| ClusterError::io("appending to", path, e))?;
        self.file
            .sync_data()
            .map_err(|e| ClusterError::io("syncing", path, e))?;
        self.end_offset += bytes.len() as u64;
        for (entry, offset) in entries.into_iter().zip(offsets) {
            self.entries
                .insert(entry.log_id.index, StoredEntry { entry, offset });
        }
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> Result<(), ClusterError> {
        let Some(offset) = self
            .entries
            .range(from_index..)
            .next()
            .map(|(_, s)| s.offset)
        else {
            return Ok(());
        };
        assert!(
            self.last_purged.is_none_or(|p| p.index < from_index),
            "truncating purged entries"
        );
        let path = &self.log_path;
        self.file
            .set_len(offset)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| ClusterError::io("truncating", path, e))?;
        self.entries.split_off(&from_index);
        self.end_offset = offset;
        Ok(())
    }

    fn purge(&mut self, upto: LogId<NodeId>) -> Result<(), ClusterError> {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let kept = self.entries.split_off(&(upto.index + 1));
        let header = encode_json(&LogHeader {
            last_purged: Some(upto),
        });
        let mut bytes = file::encode_file(LOG_MAGIC, &[&header]);
        let mut rewritten = BTreeMap::new();
        for (index, stored) in kept {
            let offset = bytes.len() as u64;
            file::encode_record(&encode_json(&stored.entry), &mut bytes);
            rewritten.insert(
                index,
                StoredEntry {
                    entry: stored.entry,
                    offset,
                },
            );
        }
        file::write_atomically(&self.log_path, &bytes)?;
        let path = &self.log_path;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ClusterError::io("opening", path, e))?;
        self.entries = rewritten;
        self.end_offset = bytes.len() as u64;
        self.last_purged = Some(upto);
        Ok(())
    }

    fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), ClusterError> {
        let bytes = file::encode_file(VOTE_MAGIC, &[&encode_json(vote)]);
        file::write_atomically(&self.vote_path, &bytes)?;
        self.vote = Some(*vote);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, s)| s.entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .save_vote(vote)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let appended = self.lock().append(entries);
        match appended {
            Ok(()) => {
                // Durable (fdatasync returned): only now may openraft count them.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, &error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .truncate(log_id.index)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .purge(log_id)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
