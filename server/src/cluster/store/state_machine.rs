//! The state machine (openraft's `RaftStateMachine`): [`ClusterState`] in
//! memory, its snapshots on `raft/snapshot`, and the publisher that hands
//! every applied revision to subscribers.
//!
//! ```text
//!  committed entries ──apply──► ClusterState ──each change──► StatePublisher ──► subscribers
//!                                   │ build_snapshot (openraft's policy)
//!                                   ▼
//!                      raft/snapshot: meta + JSON state (atomic) ──► install on a lagging peer
//! ```
//!
//! A snapshot's data (what peers receive) is the JSON of `ClusterState`;
//! its meta (last log id, membership) travels beside it in openraft's
//! install-snapshot RPC and is kept in the file's first record. After a
//! restart the machine starts from the snapshot and openraft re-applies the
//! entries after it, so subscribers of a restarted node see revisions from
//! the snapshot on.
//!
//! Each applied change clones the state once (the previous `Arc` is still
//! held by the publisher and by shards): metadata changes are rare and the
//! state is small next to what a clone per produce would cost, and it buys
//! snapshots that are never mutated once shared.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use tokio::sync::broadcast;

use super::file::{self, MAGIC_BYTES};
use super::storage_error;
use crate::cluster::state::{ClusterState, CommandResult};
use crate::cluster::{ClusterError, NodeAddr, NodeId, TypeConfig};

const SNAPSHOT_MAGIC: &[u8; MAGIC_BYTES] = b"SLSNAP01";

type Meta = SnapshotMeta<NodeId, NodeAddr>;

/// A snapshot as kept: its meta and its data (the JSON state).
#[derive(Clone)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

struct MachineInner {
    state: Arc<ClusterState>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddr>,
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built by this process, for unique snapshot ids.
    snapshots_built_count: u64,
}

/// The state machine store (and, cloned, its snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    snapshot_path: PathBuf,
    inner: Arc<Mutex<MachineInner>>,
    publisher: Arc<StatePublisher>,
}

impl StateMachineStore {
    /// Opens the state machine in `raft_dir` from its snapshot, if any, and
    /// publishes that state as the first one.
    ///
    /// # Errors
    /// [`ClusterError::Corrupt`] when the snapshot is damaged; I/O errors.
    pub fn open(
        raft_dir: &Path,
        subscriber_backlog_max: usize,
    ) -> Result<StateMachineStore, ClusterError> {
        let snapshot_path = raft_dir.join("snapshot");
        let snapshot = read_snapshot(&snapshot_path)?;
        let (state, last_applied, last_membership) = match &snapshot {
            None => (ClusterState::default(), None, StoredMembership::default()),
            Some((stored, state)) => (
                state.clone(),
                stored.meta.last_log_id,
                stored.meta.last_membership.clone(),
            ),
        };
        let state = Arc::new(state);
        let publisher = Arc::new(StatePublisher::new(state.clone(), subscriber_backlog_max));
        let inner = MachineInner {
            state,
            last_applied,
            last_membership,
            snapshot: snapshot.map(|(stored, _)| stored),
            snapshots_built_count: 0,
        };
        Ok(StateMachineStore {
            snapshot_path,
            inner: Arc::new(Mutex::new(inner)),
            publisher,
        })
    }

    /// Where applied states go.
    pub fn publisher(&self) -> Arc<StatePublisher> {
        self.publisher.clone()
    }

    fn lock(&self) -> MutexGuard<'_, MachineInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `snapshot` to disk and keeps it, unless a newer one is kept already.
    fn keep_snapshot(
        &self,
        inner: &mut MachineInner,
        snapshot: StoredSnapshot,
    ) -> Result<(), ClusterError> {
        if inner
            .snapshot
            .as_ref()
            .is_some_and(|kept| kept.meta.last_log_id > snapshot.meta.last_log_id)
        {
            return Ok(());
        }
        let meta = serde_json::to_vec(&snapshot.meta).expect("snapshot meta always serializes");
        let bytes = file::encode_file(SNAPSHOT_MAGIC, &[&meta, &snapshot.data]);
        file::write_atomically(&self.snapshot_path, &bytes)?;
        inner.snapshot = Some(snapshot);
        Ok(())
    }
}

fn read_snapshot(path: &Path) -> Result<Option<(StoredSnapshot, ClusterState)>, ClusterError> {
    let Some(mut records) = file::read_file(path, SNAPSHOT_MAGIC, 2)? else {
        return Ok(None);
    };
    let data = records.pop().expect("two records");
    let meta: Meta = serde_json::from_slice(&records[0]).map_err(|e| {
        file::corrupt(
            path,
            MAGIC_BYTES,
            format!("the snapshot meta does not parse: {e}"),
        )
    })?;
    let state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
        file::corrupt(
            path,
            MAGIC_BYTES,
            format!("the snapshot state does not parse: {e}"),
        )
    })?;
    Ok(Some((StoredSnapshot { meta, data }, state)))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.snapshots_built_count += 1;
        let data = serde_json::to_vec(&*inner.state).expect("the state always serializes");
        let last = inner.last_applied;
        let snapshot_id = format!(
            "{}-{}-{}",
            last.map_or(0, |id| id.leader_id.term),
            last.map_or(0, |id| id.index),
            inner.snapshots_built_count
        );
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.keep_snapshot(&mut inner, stored)
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Option<CommandResult>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        for entry in entries {
            assert!(
                inner.last_applied < Some(entry.log_id),
                "entries apply in log order"
            );
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(None),
                EntryPayload::Membership(membership) => {
                    inner.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(None);
                }
                EntryPayload::Normal(command) => {
                    let revision_before = inner.state.revision;
                    let result = Arc::make_mut(&mut inner.state).apply(command);
                    if inner.state.revision != revision_before {
                        self.publisher.publish(inner.state.clone());
                    }
                    results.push(Some(result));
                }
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            let error = ClusterError::Rpc(format!("a received snapshot does not parse: {e}"));
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                &error,
            )
        })?;
        let mut inner = self.lock();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.keep_snapshot(&mut inner, stored).map_err(|e| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })?;
        inner.state = Arc::new(state);
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        self.publisher.publish(inner.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

/// Hands each applied state to every subscriber, in revision order.
///
/// A mutex pairs "the current state" with the broadcast channel so that a
/// new subscriber starts from exactly the state before the next one it
/// receives. It is taken once per applied change (on the Raft thread) and
/// once per `subscribe`, never on a data path.
pub struct StatePublisher {
    inner: Mutex<PublisherInner>,
}

struct PublisherInner {
    current: Arc<ClusterState>,
    /// `None` once the node has shut down: receivers then see the end.
    sender: Option<broadcast::Sender<Arc<ClusterState>>>,
}

impl StatePublisher {
    fn new(current: Arc<ClusterState>, backlog_max: usize) -> StatePublisher {
        assert!(backlog_max > 0);
        let (sender, _) = broadcast::channel(backlog_max);
        StatePublisher {
            inner: Mutex::new(PublisherInner {
                current,
                sender: Some(sender),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PublisherInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, state: Arc<ClusterState>) {
        let mut inner = self.lock();
        assert!(
            state.revision >= inner.current.revision,
            "revisions only grow"
        );
        inner.current = state.clone();
        if let Some(sender) = &inner.sender {
            // No receiver is not an error: nobody subscribed yet.
            let _ = sender.send(state);
        }
    }

    /// The last applied state.
    pub fn current(&self) -> Arc<ClusterState> {
        self.lock().current.clone()
    }

    /// A subscriber that first receives the current state, then every later one.
    pub fn subscribe(&self) -> StateSubscriber {
        let inner = self.lock();
        let receiver = match &inner.sender {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        };
        StateSubscriber {
            first: Some(inner.current.clone()),
            receiver,
            last_revision: None,
            skipped_count: 0,
        }
    }

    /// Ends every subscription (after the node stopped).
    pub(crate) fn close(&self) {
        self.lock().sender = None;
    }
}

/// Receives applied states: `Arc<ClusterState>` snapshots, revisions strictly growing.
pub struct StateSubscriber {
    first: Option<Arc<ClusterState>>,
    receiver: broadcast::Receiver<Arc<ClusterState>>,
    last_revision: Option<u64>,
    skipped_count: u64,
}

impl StateSubscriber {
    /// The next applied state, or `None` once the node has shut down.
    ///
    /// Every applied revision comes, in order, unless this subscriber falls
    /// more than `subscriber_backlog_max` states behind: then the oldest are
    /// skipped ([`StateSubscriber::skipped_count`]) and it goes on from the
    /// oldest still held. Each state is whole, so a skipped one loses nothing
    /// a copy needs. Runtime-agnostic: a glommio task may await it.
    pub async fn next(&mut self) -> Option<Arc<ClusterState>> {
        if let Some(first) = self.first.take() {
            self.last_revision = Some(first.revision);
            return Some(first);
        }
        loop {
            match self.receiver.recv().await {
                Ok(state) if self.last_revision.is_some_and(|r| state.revision <= r) => continue,
                Ok(state) => {
                    self.last_revision = Some(state.revision);
                    return Some(state);
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => self.skipped_count += skipped,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// States skipped because this subscriber fell behind.
    pub fn skipped_count(&self) -> u64 {
        self.skipped_count
    }
}
