//! Cluster metadata: topics, their partitions and the shard that owns each.
//!
//! Shard 0 is the controller: it alone changes the metadata, persists it to
//! `<data-dir>/metadata.json` (temporary file, fsync, rename, directory
//! fsync) and broadcasts the new snapshot to every shard. Each shard holds
//! its own `Arc` of the latest snapshot; a snapshot is never mutated, and a
//! shard ignores one whose revision is not newer than its own.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use shardlog_wire::protocol::fb::ErrorCode;

use crate::cluster::state::{BrokerId, BrokerInfo, ClusterState, PartitionState};
use crate::error::wire::WireError;
use crate::{Error, Result};

/// One immutable snapshot of the cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// Incremented by every change.
    pub revision: u64,
    /// Topic ids are never reused, so a topic created again never meets the files of its predecessor.
    pub next_topic_id: u64,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMetadata>,
    /// A clustered broker's view of the cluster (from the Raft state); `None` on a one-node broker.
    #[serde(skip)]
    pub cluster: Option<ClusterView>,
}

/// What a clustered broker knows of its cluster besides topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This broker.
    pub broker: BrokerId,
    /// The cluster's id; empty until the first controller named it.
    pub cluster_id: String,
    /// Every registered broker.
    pub brokers: BTreeMap<BrokerId, BrokerInfo>,
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    /// Unique for the life of the data directory.
    pub id: u64,
    /// The shard placement of each partition, by partition number.
    pub partition_shards: Vec<u16>,
    /// Retention by size, if set.
    pub retention_bytes: Option<u64>,
    /// Retention by age, if set.
    pub retention_ms: Option<u64>,
    /// Segment size, if set.
    pub segment_bytes: Option<u64>,
    /// A clustered broker's view: each partition's replicas, leader, leader
    /// epoch and ISR, from the Raft state. Empty on a one-node broker, which
    /// holds every partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<PartitionState>,
    /// ISR members an `acks=all` produce needs (1 on a one-node broker).
    #[serde(default = "one")]
    pub min_insync_replicas: u16,
}

fn one() -> u16 {
    1
}

impl TopicMetadata {
    /// The shard owning `partition` on a broker with `shard_count` shards.
    /// Placement is kept modulo the shard count, so a broker restarted with
    /// fewer shards still finds an owner for every partition.
    pub fn owner(&self, partition: u32, shard_count: usize) -> Option<usize> {
        let placed = *self.partition_shards.get(partition as usize)?;
        Some(usize::from(placed) % shard_count)
    }

    /// The shard of this broker holding `partition`: [`TopicMetadata::owner`]
    /// when `broker` (a clustered broker's id) holds a replica of it, or on a
    /// one-node broker (`replication` empty), which holds every partition.
    pub fn local_owner(
        &self,
        partition: u32,
        shard_count: usize,
        broker: Option<BrokerId>,
    ) -> Option<usize> {
        if let (Some(broker), false) = (broker, self.replication.is_empty()) {
            let state = self.replication.get(partition as usize)?;
            if !state.replicas.iter().any(|r| r.broker == broker) {
                return None;
            }
        }
        self.owner(partition, shard_count)
    }

    /// On a clustered broker (`broker`), the refusal of a client request for
    /// `partition` when `broker` does not lead it.
    pub fn not_leader(
        &self,
        topic: &str,
        partition: u32,
        broker: Option<BrokerId>,
    ) -> Option<WireError> {
        let broker = broker?;
        let state = self.replication.get(partition as usize)?;
        if state.leader == Some(broker) {
            return None;
        }
        let leader = state
            .leader
            .map_or_else(|| "none now".to_string(), |b| format!("broker {b}"));
        Some(WireError::new(
            ErrorCode::NotLeader,
            format!(
                "{topic}/{partition}: broker {broker} does not lead it (the leader is {leader}); \
                 refresh metadata and retry"
            ),
        ))
    }

    /// `Ok` when the ISR of `partition` has at least min-insync-replicas
    /// members, as an `acks=all` produce needs; a one-node broker always has.
    pub fn check_insync(&self, topic: &str, partition: u32) -> Result<(), WireError> {
        let Some(state) = self.replication.get(partition as usize) else {
            return Ok(());
        };
        let insync = state.isr.len();
        if insync >= usize::from(self.min_insync_replicas) {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::NotEnoughReplicas,
            format!(
                "{topic}/{partition}: acks=all needs {} replicas in sync, but the ISR is {:?}; \
                 retry once replicas catch up, or produce with acks=1",
                self.min_insync_replicas,
                state.isr.iter().map(|b| b.0).collect::<Vec<_>>()
            ),
        ))
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partition_shards.len() as u32
    }
}

/// Where the partition logs of a topic live.
pub fn partition_dir(data_dir: &Path, topic: &str, topic_id: u64, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic, topic_id).join(partition.to_string())
}

/// The directory of a topic's partitions.
pub fn topic_dir(data_dir: &Path, topic: &str, topic_id: u64) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{topic_id}"))
}

impl ClusterMetadata {
    /// A clustered broker's copy of the applied Raft state. A partition's
    /// shard is that of this broker's replica, or else its leader's (what
    /// metadata answers name), or else its first replica's.
    pub fn from_cluster(state: &ClusterState, broker: BrokerId) -> ClusterMetadata {
        let shard_of = |partition: &PartitionState| {
            let local = partition.replicas.iter().find(|r| r.broker == broker);
            let leader = partition
                .replicas
                .iter()
                .find(|r| Some(r.broker) == partition.leader);
            local
                .or(leader)
                .or(partition.replicas.first())
                .map_or(0, |r| r.shard.0)
        };
        let topics = state.topics.iter().map(|(name, topic)| {
            let metadata = TopicMetadata {
                id: topic.id.0,
                partition_shards: topic.partitions.iter().map(shard_of).collect(),
                retention_bytes: topic.retention_bytes,
                retention_ms: topic.retention_ms,
                segment_bytes: topic.segment_bytes,
                replication: topic.partitions.clone(),
                min_insync_replicas: topic.min_insync_replicas,
            };
            assert!(metadata.partition_shards.len() == metadata.replication.len());
            (name.clone(), metadata)
        });
        ClusterMetadata {
            revision: state.revision,
            next_topic_id: state.next_topic_id,
            topics: topics.collect(),
            cluster: Some(ClusterView {
                broker,
                cluster_id: state.cluster_id.clone(),
                brokers: state.brokers.clone(),
            }),
        }
    }

    /// How many partitions each of `shard_count` shards owns.
    pub fn partitions_per_shard(&self, shard_count: usize) -> Vec<u64> {
        let mut load = vec![0u64; shard_count];
        for topic in self.topics.values() {
            for shard in &topic.partition_shards {
                load[usize::from(*shard) % shard_count] += 1;
            }
        }
        load
    }

    /// Places `partitions` new partitions on the least loaded shards, round robin.
    pub fn place(&self, partitions: u32, shard_count: usize) -> Vec<u16> {
        let mut load = self.partitions_per_shard(shard_count);
        (0..partitions)
            .map(|_| {
                let (shard, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, l)| (**l, *i))
                    .expect("at least one shard");
                load[shard] += 1;
                shard as u16
            })
            .collect()
    }

    /// Reads the metadata of a data directory, or an empty one for a new directory.
    ///
    /// # Errors
    /// [`Error::Metadata`] when the file exists but cannot be parsed.
    pub fn load(data_dir: &Path) -> Result<ClusterMetadata> {
        let path = metadata_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterMetadata::default()),
            Err(e) => Err(Error::io("reading metadata", path, e)),
        }
    }

    /// Persists the metadata atomically and durably. On a full disk it gives
    /// up the disk reserve (see [`ensure_disk_reserve`]) and tries once more,
    /// so that deleting a topic to free space works when nothing else does.
    ///
    /// # Errors
    /// I/O errors; the previous file stays in place.
    pub fn store(&self, data_dir: &Path) -> Result<()> {
        match self.store_once(data_dir) {
            Err(Error::Io { source, .. }) if is_disk_full(&source) => {
                if release_disk_reserve(data_dir) {
                    tracing::warn!(data_dir = %data_dir.display(), "the disk is full: gave up the disk reserve to write the metadata; free space soon");
                }
                self.store_once(data_dir)
            }
            outcome => outcome,
        }
    }

    fn store_once(&self, data_dir: &Path) -> Result<()> {
        let path = metadata_path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Metadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| Error::io("writing metadata", &tmp, e))?;
        file.write_all(&bytes)
            .map_err(|e| Error::io("writing metadata", &tmp, e))?;
        file.sync_all()
            .map_err(|e| Error::io("syncing metadata", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming metadata", &path, e))?;
        let dir = std::fs::File::open(data_dir)
            .map_err(|e| Error::io("opening data directory", data_dir, e))?;
        dir.sync_all()
            .map_err(|e| Error::io("syncing data directory", data_dir, e))
    }
}

/// The on-disk format this build writes: 2 since batches are Kafka
/// RecordBatch v2 (format 1, shardlog's own batch layout, had no marker).
pub const DATA_FORMAT_VERSION: u32 = 2;
const DATA_FORMAT_PREFIX: &str = "shardlog-data-format ";

/// Checks the data directory's format marker (`<data-dir>/format`), and
/// writes it into a directory that holds no data yet.
///
/// # Errors
/// [`Error::DataFormat`] for a directory written by another format: one
/// with data but no marker (format 1) or with another version. There is
/// no converter; the message says to move or delete the directory.
pub fn check_data_format(data_dir: &Path) -> Result<()> {
    let path = data_dir.join("format");
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if holds_data(data_dir)? {
                return Err(Error::DataFormat {
                    path: data_dir.to_path_buf(),
                    found: "format 1 (no format marker)".to_string(),
                    supported: DATA_FORMAT_VERSION,
                });
            }
            return write_data_format(data_dir, &path);
        }
        Err(e) => return Err(Error::io("reading the data format marker", path, e)),
    };
    let version = found
        .trim_end()
        .strip_prefix(DATA_FORMAT_PREFIX)
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(DATA_FORMAT_VERSION) => Ok(()),
        Some(other) => Err(Error::DataFormat {
            path: data_dir.to_path_buf(),
            found: format!("format {other}"),
            supported: DATA_FORMAT_VERSION,
        }),
        None => Err(Error::DataFormat {
            path: data_dir.to_path_buf(),
            found: format!("an unreadable format marker {:?}", found.trim_end()),
            supported: DATA_FORMAT_VERSION,
        }),
    }
}

/// True when the directory has metadata or topic directories.
fn holds_data(data_dir: &Path) -> Result<bool> {
    if metadata_path(data_dir).exists() {
        return Ok(true);
    }
    let topics = data_dir.join("topics");
    match std::fs::read_dir(&topics) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("listing topics", topics, e)),
    }
}

/// Writes the marker durably (temporary file, fsync, rename, directory fsync).
fn write_data_format(data_dir: &Path, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = format!("{DATA_FORMAT_PREFIX}{DATA_FORMAT_VERSION}\n");
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| Error::io("writing the format marker", &tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing the format marker", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming the format marker", path, e))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io("syncing data directory", data_dir, e))
}

fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join("metadata.json")
}

fn reserve_path(data_dir: &Path) -> PathBuf {
    data_dir.join("disk-reserve")
}

fn is_disk_full(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC)
}

/// Keeps `reserve_bytes` of allocated space in `<data-dir>/disk-reserve`,
/// a file that [`ClusterMetadata::store`] deletes when the disk is full:
/// with every block taken, even the write that deletes a topic (and so
/// frees space) would fail. Made again at the next start once space is back.
/// A disk too full to make it now is not an error: there is nothing to keep.
///
/// # Errors
/// I/O errors other than a full disk.
pub fn ensure_disk_reserve(data_dir: &Path, reserve_bytes: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = reserve_path(data_dir);
    if reserve_bytes == 0 {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("creating the disk reserve", &path, e))?;
    let length = libc::off_t::try_from(reserve_bytes).unwrap_or(libc::off_t::MAX);
    // SAFETY: the descriptor is open and owned by `file` for the whole call.
    let status = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    match status {
        0 => file
            .sync_all()
            .map_err(|e| Error::io("syncing the disk reserve", &path, e)),
        libc::ENOSPC => {
            tracing::warn!(path = %path.display(), "the disk is too full for the disk reserve; it is made again at the next start");
            drop(file);
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        errno => Err(Error::io(
            "allocating the disk reserve",
            &path,
            std::io::Error::from_raw_os_error(errno),
        )),
    }
}

/// Deletes the disk reserve; true when there was one.
fn release_disk_reserve(data_dir: &Path) -> bool {
    std::fs::remove_file(reserve_path(data_dir)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_balances_shards() {
        let mut metadata = ClusterMetadata::default();
        let first = metadata.place(3, 2);
        assert_eq!(first, vec![0, 1, 0]);
        metadata.topics.insert(
            "a".into(),
            TopicMetadata {
                id: 0,
                partition_shards: first,
                retention_bytes: None,
                retention_ms: None,
                segment_bytes: None,
                replication: Vec::new(),
                min_insync_replicas: 1,
            },
        );
        assert_eq!(metadata.place(3, 2), vec![1, 0, 1]);
        let topic = &metadata.topics["a"];
        assert_eq!(topic.owner(1, 2), Some(1));
        assert_eq!(
            topic.owner(1, 1),
            Some(0),
            "fewer shards after a restart still own everything"
        );
        assert_eq!(topic.owner(3, 2), None);
    }

    #[test]
    fn metadata_survives_a_store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ClusterMetadata::load(dir.path()).unwrap(),
            ClusterMetadata::default()
        );
        let mut metadata = ClusterMetadata {
            revision: 3,
            next_topic_id: 2,
            ..Default::default()
        };
        metadata.topics.insert(
            "t".into(),
            TopicMetadata {
                id: 1,
                partition_shards: vec![0, 1],
                retention_bytes: Some(10),
                retention_ms: None,
                segment_bytes: None,
                replication: Vec::new(),
                min_insync_replicas: 1,
            },
        );
        metadata.store(dir.path()).unwrap();
        assert_eq!(ClusterMetadata::load(dir.path()).unwrap(), metadata);
        std::fs::write(dir.path().join("metadata.json"), b"{").unwrap();
        assert!(matches!(
            ClusterMetadata::load(dir.path()),
            Err(Error::Metadata { .. })
        ));
    }

    #[test]
    fn the_data_format_marker_is_written_once_and_old_data_is_refused() {
        let fresh = tempfile::tempdir().unwrap();
        check_data_format(fresh.path()).unwrap();
        let marker = std::fs::read_to_string(fresh.path().join("format")).unwrap();
        assert_eq!(marker, "shardlog-data-format 2\n");
        check_data_format(fresh.path()).unwrap();

        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("metadata.json"), b"{}").unwrap();
        let error = check_data_format(old.path()).unwrap_err();
        assert!(matches!(error, Error::DataFormat { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("move or delete"), "{message}");
        assert!(
            !old.path().join("format").exists(),
            "nothing written into old data"
        );

        let topics_only = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(topics_only.path().join("topics/t-1/0")).unwrap();
        assert!(check_data_format(topics_only.path()).is_err());

        let older = tempfile::tempdir().unwrap();
        std::fs::write(older.path().join("format"), "shardlog-data-format 1\n").unwrap();
        assert!(matches!(
            check_data_format(older.path()),
            Err(Error::DataFormat { .. })
        ));
    }
}
