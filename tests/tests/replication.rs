//! Replicated partitions across real brokers on 127.0.0.1: failover under
//! load loses nothing acknowledged, acks=all waits for the ISR, a frozen
//! leader acknowledges nothing after it lost leadership, and
//! min-insync-replicas holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardlog_client::blocking::Connection;
use shardlog_client::{Acks, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Offset};
use shardlog_tests::cluster::{eventually, Cluster};
use shardlog_tests::replicas::*;
use shardlog_tests::runtime;

#[test]
fn killing_the_leader_ten_times_under_acks_all_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    create_replicated(&cluster, "kills", 1, 2);
    let servers = bootstrap(&cluster);
    let stop = Arc::new(AtomicBool::new(false));

    // One idempotent acks=all producer, 32 records in flight at a time.
    let load = LoadProducer::start(&servers, "kills", 32);

    // A consumer reading along, remembering every record it was shown.
    let shown: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let consumer_thread = {
        let (servers, stop, shown) = (servers.clone(), stop.clone(), shown.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut consumer = Consumer::new(ConsumerConfig {
                    max_wait: Duration::from_millis(100),
                    client: ClientConfig::new(servers.as_str()),
                    ..Default::default()
                });
                consumer.assign("kills", &[0], Offset::Earliest);
                let mut conflicts = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll().await {
                        Ok(records) => {
                            let mut shown = shown.lock().unwrap();
                            for record in records {
                                let value =
                                    String::from_utf8_lossy(&record.value.unwrap_or_default())
                                        .to_string();
                                if let Some(before) = shown.insert(record.offset, value.clone()) {
                                    if before != value {
                                        conflicts.push((record.offset, before, value));
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            eprintln!("consumer: {error}");
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                    }
                }
                conflicts
            })
        })
    };

    load.wait_acks(&cluster, 200);
    for round in 0..10 {
        let before = leadership(&cluster, "kills", 0).expect("leadership");
        let leader = before.leader.expect("a leader");
        cluster.broker(leader).kill9();
        eventually(&cluster, "a new leader", || {
            leadership(&cluster, "kills", 0)
                .is_some_and(|l| l.leader.is_some_and(|new| new != leader))
        });
        load.wait_acks(&cluster, 100);
        cluster.broker(leader).restart();
        eventually(&cluster, "the restarted broker rejoins the ISR", || {
            leadership(&cluster, "kills", 0).is_some_and(|l| l.isr.len() == 3)
        });
        load.wait_acks(&cluster, 100);
        eprintln!("round {round}: broker {leader} killed and back");
    }
    let LoadOutcome { acked, errors } = load.finish();
    stop.store(true, Ordering::SeqCst);
    let conflicts = consumer_thread.join().expect("consumer thread");
    assert!(
        errors.is_empty(),
        "failovers surfaced as errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        conflicts.is_empty(),
        "a consumer saw offsets change: {conflicts:?}"
    );

    let log = read_all(&servers, "kills");
    eprintln!(
        "{} acknowledged, {} stored, {} shown to the consumer",
        acked.len(),
        log.len(),
        shown.lock().unwrap().len()
    );
    let values: Vec<u64> = log.values().map(|v| v.parse().expect("a number")).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "every record once, in the order sent"
    );
    for (value, offset) in &acked {
        assert_eq!(
            log.get(offset).map(String::as_str),
            Some(value.to_string().as_str()),
            "acknowledged record {value} at offset {offset}"
        );
    }
    let shown = shown.lock().unwrap();
    for (offset, value) in shown.iter() {
        assert_eq!(
            log.get(offset),
            Some(value),
            "a record shown at {offset} disappeared"
        );
    }
    assert!(acked.len() >= 2_000, "only {} acknowledged", acked.len());
    cluster.stop_all();
}

#[test]
fn acks_all_is_answered_only_once_every_isr_member_has_the_batch() {
    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    create_replicated(&cluster, "waits", 1, 2);
    let leadership_now = leadership(&cluster, "waits", 0).expect("leadership");
    let leader = leadership_now.leader.expect("a leader");
    assert_eq!(leadership_now.isr.len(), 3, "{leadership_now:?}");
    let mut to_leader = connect_to(&cluster, leader);
    let first = produce_one(&mut to_leader, "waits", "first", Acks::All, 10_000);
    assert_eq!(first.error, None, "{}", cluster.logs());

    // Both followers frozen: the metadata group has no majority, so the ISR
    // cannot change, and no acks=all produce may be answered.
    let followers = followers(&leadership_now);
    for follower in &followers {
        signal(&cluster.brokers[*follower as usize - 1], "STOP");
    }
    let waited = produce_one(&mut to_leader, "waits", "second", Acks::All, 1_500);
    let error = waited.error.expect("not answered while followers lack it");
    assert_eq!(error.code, ErrorCode::RequestTimedOut, "{error:?}");
    let stored = produce_one(&mut to_leader, "waits", "third", Acks::Leader, 5_000);
    assert_eq!(stored.error, None, "acks=1 needs only the leader");
    for follower in &followers {
        signal(&cluster.brokers[*follower as usize - 1], "CONT");
    }
    let after = produce_one(&mut to_leader, "waits", "fourth", Acks::All, 10_000);
    assert_eq!(after.error, None, "{}", cluster.logs());
    let log: Vec<String> = values(&cluster, "waits");
    // The timed-out batch was stored by the leader and replicated later:
    // a retry would have found it (idempotence), nothing is lost.
    assert_eq!(log, ["first", "second", "third", "fourth"]);
    cluster.stop_all();
}

#[test]
fn a_frozen_leader_is_replaced_acknowledges_nothing_after_and_drops_its_divergent_suffix() {
    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    create_replicated(&cluster, "frozen", 1, 2);
    let before = leadership(&cluster, "frozen", 0).expect("leadership");
    let old = before.leader.expect("a leader");
    let mut to_old = connect_to(&cluster, old);
    let first = produce_one(&mut to_old, "frozen", "before", Acks::All, 10_000);
    assert_eq!(first.error, None, "{}", cluster.logs());

    signal(&cluster.brokers[old as usize - 1], "STOP");
    eventually(&cluster, "a new leader while the old one is frozen", || {
        leadership(&cluster, "frozen", 0).is_some_and(|l| l.leader.is_some_and(|b| b != old))
    });
    let now = leadership(&cluster, "frozen", 0).expect("leadership");
    let new = now.leader.expect("a leader");
    assert!(now.leader_epoch > before.leader_epoch, "{now:?}");
    assert!(
        !now.isr.contains(&old),
        "the frozen broker left the ISR: {now:?}"
    );
    let mut to_new = connect_to(&cluster, new);
    let during = produce_one(&mut to_new, "frozen", "during", Acks::All, 10_000);
    assert_eq!(during.error, None, "writes continue on the new leader");

    // A produce that reaches the old leader as it wakes: it may store it
    // (it does not know yet), but it must not acknowledge it.
    let stale =
        std::thread::spawn(move || produce_one(&mut to_old, "frozen", "stale", Acks::All, 5_000));
    std::thread::sleep(Duration::from_millis(200));
    signal(&cluster.brokers[old as usize - 1], "CONT");
    let answer = stale.join().expect("the stale produce");
    let error = answer
        .error
        .expect("a deposed leader acknowledges no acks=all write");
    assert!(
        matches!(
            error.code,
            ErrorCode::NotLeader | ErrorCode::RequestTimedOut
        ),
        "{error:?}"
    );

    eventually(
        &cluster,
        "the old leader catches up and rejoins the ISR",
        || leadership(&cluster, "frozen", 0).is_some_and(|l| l.isr.len() == 3),
    );
    let after = produce_one(&mut to_new, "frozen", "after", Acks::All, 10_000);
    assert_eq!(after.error, None);
    let log: Vec<String> = values(&cluster, "frozen");
    assert_eq!(
        log,
        ["before", "during", "after"],
        "the stale write is gone"
    );
    // The old leader's copy matches: its divergent suffix was truncated.
    let end_on = |broker: u32| -> Option<u64> {
        let metrics = cluster.brokers[broker as usize - 1].scrape_metrics();
        metrics
            .lines()
            .find(|l| l.starts_with("shardlog_partition_log_end_offset{topic=\"frozen\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    eventually(
        &cluster,
        "the old leader holds the new leader's log",
        || end_on(old).is_some() && end_on(old) == end_on(new),
    );
    cluster.stop_all();
}

#[test]
fn min_insync_replicas_two_of_three_writes_go_on_with_one_down_and_stop_with_two() {
    // Five brokers, so that two lost replicas still leave a metadata majority.
    let mut cluster = Cluster::start_with(5, FAST_FAILOVER);
    create_replicated(&cluster, "minisr", 1, 2);
    let start = leadership(&cluster, "minisr", 0).expect("leadership");
    let leader = start.leader.expect("a leader");
    let followers = followers(&start);
    let mut to_leader = connect_to(&cluster, leader);
    let mut acked = Vec::new();
    // Writes that must go on are tried again while the ISR settles (a
    // loaded machine can drop a slow follower for a moment).
    let produce = |connection: &mut Connection, value: &str, acked: &mut Vec<String>| {
        let result = produce_replicated(connection, "minisr", value);
        if result.error.is_none() {
            acked.push(value.to_string());
        }
        result
    };
    assert_eq!(produce(&mut to_leader, "all three", &mut acked).error, None);

    cluster.broker(followers[0]).kill9();
    eventually(&cluster, "the ISR without the first lost follower", || {
        leadership(&cluster, "minisr", 0).is_some_and(|l| l.isr.len() == 2)
    });
    assert_eq!(
        produce(&mut to_leader, "two of three", &mut acked).error,
        None,
        "min-insync-replicas 2 is met"
    );

    cluster.broker(followers[1]).kill9();
    eventually(&cluster, "the ISR is the leader alone", || {
        leadership(&cluster, "minisr", 0).is_some_and(|l| l.isr == [leader])
    });
    let under = |cluster: &Cluster| {
        metric(
            cluster,
            leader,
            "shardlog_partition_under_replicated",
            "minisr",
        )
    };
    eventually(
        &cluster,
        "the leader reports the partition under-replicated",
        || under(&cluster) == Some(1),
    );
    assert!(
        metric(
            &cluster,
            leader,
            "shardlog_partition_isr_shrinks_total",
            "minisr"
        ) >= Some(2)
    );
    let leader_addr = cluster.brokers[leader as usize - 1].addr.to_string();
    let describe = || {
        let described = std::process::Command::new(shardlog_tests::binary("shardlog"))
            .args(["--broker", &leader_addr])
            .args(["topic", "describe", "minisr", "--format", "json"])
            .output()
            .expect("run shardlog");
        assert!(described.status.success(), "{described:?}");
        serde_json::from_slice::<serde_json::Value>(&described.stdout).expect("JSON")
    };
    let json = describe();
    assert_eq!(json["partitions"][0]["under_replicated"], true, "{json}");
    // The first lost follower missed "two of three": the leader shows it
    // behind, in offsets and in bytes.
    let lags = json["partitions"][0]["replica_lag"].clone();
    assert_eq!(lags.as_array().map(Vec::len), Some(2), "{json}");
    let first_lost = lags
        .as_array()
        .and_then(|l| l.iter().find(|lag| lag["broker"] == followers[0]))
        .expect("the first lost follower's lag");
    assert!(first_lost["lag_offsets"].as_u64() >= Some(1), "{json}");
    assert!(first_lost["lag_bytes"].as_u64() > Some(0), "{json}");
    assert_eq!(
        json["partitions"][0]["isr"],
        serde_json::json!([leader]),
        "{json}"
    );
    let refused = produce_one(&mut to_leader, "minisr", "one of three", Acks::All, 10_000);
    let error = refused.error.expect("refused below min-insync-replicas");
    assert_eq!(error.code, ErrorCode::NotEnoughReplicas, "{error:?}");
    assert!(error.code.is_retriable());

    cluster.broker(followers[0]).restart();
    cluster.broker(followers[1]).restart();
    eventually(&cluster, "both followers back in the ISR", || {
        leadership(&cluster, "minisr", 0).is_some_and(|l| l.isr.len() == 3)
    });
    assert_eq!(
        produce(&mut to_leader, "three again", &mut acked).error,
        None
    );
    // The leader's own copy of the metadata may apply the change a moment later.
    eventually(
        &cluster,
        "the leader reports the partition fully replicated",
        || under(&cluster) == Some(0),
    );
    assert!(
        metric(
            &cluster,
            leader,
            "shardlog_partition_isr_expands_total",
            "minisr"
        ) >= Some(2)
    );
    let lag_series = cluster.brokers[leader as usize - 1]
        .scrape_metrics()
        .lines()
        .filter(|l| l.starts_with("shardlog_partition_replica_lag_offsets{topic=\"minisr\""))
        .count();
    assert_eq!(lag_series, 2, "one lag per follower");
    // Caught up: no lag left, in offsets or bytes.
    eventually(&cluster, "the leader reports no lag", || {
        let json = describe();
        let lags = json["partitions"][0]["replica_lag"].as_array().cloned();
        lags.is_some_and(|lags| {
            lags.len() == 2
                && lags
                    .iter()
                    .all(|lag| lag["lag_offsets"] == 0 && lag["lag_bytes"] == 0)
        })
    });
    let log: Vec<String> = values(&cluster, "minisr");
    assert_eq!(log, acked, "the refused write was not stored");
    cluster.stop_all();
}

#[test]
fn a_follower_whose_copy_ends_below_the_leaders_log_start_restarts_there_and_rejoins() {
    let mut args = FAST_FAILOVER.to_vec();
    args.extend(["--retention-check-interval-ms", "200"]);
    let mut cluster = Cluster::start_with(3, &args);
    // Small segments, and retention that keeps about two of them.
    create_replicated_topic(
        &cluster,
        shardlog_client::protocol::NewTopic {
            replication_factor: Some(3),
            min_insync_replicas: Some(2),
            segment_bytes: Some(64 * 1024),
            retention_bytes: Some(128 * 1024),
            ..shardlog_client::protocol::NewTopic::new("retained", 1)
        },
    );
    let start = leadership(&cluster, "retained", 0).expect("leadership");
    let leader = start.leader.expect("a leader");
    let lagging = followers(&start)[0];
    let mut to_leader = connect_to(&cluster, leader);
    assert_eq!(
        produce_replicated(&mut to_leader, "retained", "first").error,
        None
    );

    // Down while the others write on and retention removes what it lacks.
    cluster.broker(lagging).kill9();
    eventually(&cluster, "the ISR without the stopped follower", || {
        leadership(&cluster, "retained", 0).is_some_and(|l| !l.isr.contains(&lagging))
    });
    let value = "v".repeat(8 * 1024);
    let leader_start = |cluster: &Cluster| {
        metric(
            cluster,
            leader,
            "shardlog_partition_log_start_offset",
            "retained",
        )
    };
    let mut written = 1;
    while leader_start(&cluster) < Some(8) {
        let result = produce_replicated(&mut to_leader, "retained", &value);
        assert_eq!(result.error, None);
        written += 1;
        assert!(
            written < 1_000,
            "retention never moved the leader's log start"
        );
    }

    // Back: its copy (offsets 0..1) ends below the leader's start, so it
    // starts over there, catches up and rejoins the ISR.
    cluster.broker(lagging).restart();
    eventually(&cluster, "the restarted follower back in the ISR", || {
        leadership(&cluster, "retained", 0).is_some_and(|l| l.isr.len() == 3)
    });
    assert_eq!(
        produce_replicated(&mut to_leader, "retained", "last").error,
        None
    );
    let end = |broker: u32| {
        metric(
            &cluster,
            broker,
            "shardlog_partition_log_end_offset",
            "retained",
        )
    };
    eventually(&cluster, "the follower holds the leader's end", || {
        end(lagging).is_some() && end(lagging) == end(leader)
    });
    let follower_start = metric(
        &cluster,
        lagging,
        "shardlog_partition_log_start_offset",
        "retained",
    );
    assert!(follower_start >= Some(8), "{follower_start:?}");
    let log = std::fs::read_to_string(&cluster.brokers[lagging as usize - 1].log_path)
        .expect("the follower's log");
    assert!(
        log.contains("restarting it there"),
        "the follower restarted its copy at the leader's start"
    );
    cluster.stop_all();
}
