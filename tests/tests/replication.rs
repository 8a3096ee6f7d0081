//! Replicated partitions across real brokers on 127.0.0.1: failover under
//! load loses nothing acknowledged, a frozen leader acknowledges nothing
//! after it lost leadership, and min-insync-replicas holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{NewTopic, PartitionLeadership, Request, Response};
use shardlog_client::{
    Acks, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Offset, Producer, ProducerConfig,
    ProducerRecord,
};
use shardlog_tests::cluster::{eventually, Cluster};
use shardlog_tests::runtime;

/// Brokers fence a silent peer quickly, and followers leave the ISR soon,
/// so a test's failovers take seconds.
const FAST_FAILOVER: &[&str] = &[
    "--broker-session-timeout-ms",
    "1500",
    "--replica-lag-time-max-ms",
    "3000",
];

/// The partition's leadership as a live broker of `cluster` answers it.
fn leadership(cluster: &Cluster, topic: &str, partition: u32) -> Option<PartitionLeadership> {
    // A stopped broker refuses the connection.
    for broker in &cluster.brokers {
        let Ok(mut connection) = Connection::connect(broker.addr) else {
            continue;
        };
        let Ok(Response::Metadata(described)) =
            connection.call(&Request::Metadata(vec![topic.to_string()]))
        else {
            continue;
        };
        let found = described
            .topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.leadership.get(partition as usize).cloned());
        if found.is_some() {
            return found;
        }
    }
    None
}

fn create_replicated(cluster: &Cluster, topic: &str, partitions: u32, min_insync: u16) {
    let mut admin = Connection::connect(cluster.brokers[0].addr).expect("connect");
    let request = Request::CreateTopics(vec![NewTopic {
        replication_factor: Some(3),
        min_insync_replicas: Some(min_insync),
        ..NewTopic::new(topic, partitions)
    }]);
    match admin.call(&request).expect("create topics") {
        Response::Topics(results) => {
            assert!(results.iter().all(|(_, e)| e.is_none()), "{results:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // Every broker has applied it (a produce to one that has not yet would be refused).
    for broker in &cluster.brokers {
        let addr = broker.addr;
        eventually(cluster, "every broker knows the new topic", || {
            let Ok(mut connection) = Connection::connect(addr) else {
                return false;
            };
            let answer = connection.call(&Request::Metadata(vec![topic.to_string()]));
            matches!(answer, Ok(Response::Metadata(described)) if described
                .topics
                .iter()
                .any(|t| t.name == topic && t.error.is_none() && t.leadership.iter().all(|l| l.leader.is_some())))
        });
    }
}

fn bootstrap(cluster: &Cluster) -> String {
    cluster
        .brokers
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Every record of partition 0 of `topic` from offset 0 to the high watermark.
fn read_all(servers: &str, topic: &str) -> BTreeMap<u64, String> {
    runtime().block_on(async {
        let mut consumer = Consumer::new(ConsumerConfig {
            max_wait: Duration::from_millis(100),
            client: ClientConfig::new(servers),
            ..Default::default()
        });
        consumer.assign(topic, &[0], Offset::Earliest);
        let mut records = BTreeMap::new();
        let mut quiet_polls = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while quiet_polls < 10 && Instant::now() < deadline {
            match consumer.poll().await {
                Ok(polled) if polled.is_empty() => quiet_polls += 1,
                Ok(polled) => {
                    quiet_polls = 0;
                    for record in polled {
                        let value =
                            String::from_utf8_lossy(&record.value.unwrap_or_default()).to_string();
                        records.insert(record.offset, value);
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        records
    })
}

#[test]
fn killing_the_leader_ten_times_under_acks_all_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    create_replicated(&cluster, "kills", 1, 2);
    let servers = bootstrap(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicU64::new(0));

    // One idempotent acks=all producer, 32 records in flight at a time.
    let producer_thread = {
        let (servers, stop, acked_count) = (servers.clone(), stop.clone(), acked_count.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let producer = Producer::new(ProducerConfig {
                    acks: Acks::All,
                    idempotent: true,
                    linger: Duration::from_millis(2),
                    delivery_timeout: Duration::from_secs(120),
                    client: ClientConfig::new(servers.as_str()),
                    ..Default::default()
                })
                .await
                .expect("producer");
                let mut acked: Vec<(u64, u64)> = Vec::new();
                let mut errors = Vec::new();
                let mut next = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let mut pending = Vec::new();
                    for _ in 0..32 {
                        let record = ProducerRecord::new("kills", next.to_string()).partition(0);
                        pending.push((next, producer.enqueue(record).await.expect("enqueue")));
                        next += 1;
                    }
                    for (value, delivery) in pending {
                        match delivery.await {
                            Ok(meta) => {
                                acked.push((value, meta.offset.expect("acks=all has an offset")));
                                acked_count.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(error) => errors.push((value, error.to_string())),
                        }
                    }
                }
                (acked, errors)
            })
        })
    };

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

    let wait_acks = |cluster: &Cluster, more: u64| {
        let target = acked_count.load(Ordering::SeqCst) + more;
        eventually(cluster, "acknowledgements continue", || {
            acked_count.load(Ordering::SeqCst) >= target
        });
    };
    wait_acks(&cluster, 200);
    for round in 0..10 {
        let before = leadership(&cluster, "kills", 0).expect("leadership");
        let leader = before.leader.expect("a leader");
        cluster.broker(leader).kill9();
        eventually(&cluster, "a new leader", || {
            leadership(&cluster, "kills", 0)
                .is_some_and(|l| l.leader.is_some_and(|new| new != leader))
        });
        wait_acks(&cluster, 100);
        cluster.broker(leader).restart();
        eventually(&cluster, "the restarted broker rejoins the ISR", || {
            leadership(&cluster, "kills", 0).is_some_and(|l| l.isr.len() == 3)
        });
        wait_acks(&cluster, 100);
        eprintln!("round {round}: broker {leader} killed and back");
    }
    stop.store(true, Ordering::SeqCst);
    let (acked, errors) = producer_thread.join().expect("producer thread");
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
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

fn signal(broker: &shardlog_tests::Broker, name: &str) {
    let pid = broker.pid().expect("a running broker");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// One produce of `value` to partition 0 over `connection`.
fn produce_one(
    connection: &mut Connection,
    topic: &str,
    value: &str,
    acks: Acks,
    timeout_ms: u32,
) -> shardlog_client::protocol::PartitionResult {
    let data = shardlog_tests::batch(
        &[value.to_string()],
        shardlog_wire::batch::BatchBuilderOptions::default(),
    );
    let request = Request::Produce {
        acks,
        timeout_ms,
        partitions: vec![(topic.to_string(), 0, data)],
    };
    match connection.call(&request).expect("produce") {
        Response::Produce(mut results) => results.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

fn connect_to(cluster: &Cluster, broker: u32) -> Connection {
    Connection::connect(cluster.brokers[broker as usize - 1].addr).expect("connect")
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
    let followers: Vec<u32> = leadership_now
        .replicas
        .iter()
        .copied()
        .filter(|b| *b != leader)
        .collect();
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
    let log: Vec<String> = read_all(&bootstrap(&cluster), "waits")
        .into_values()
        .collect();
    // The timed-out batch was stored by the leader and replicated later:
    // a retry would have found it (idempotence), nothing is lost.
    assert_eq!(log, ["first", "second", "third", "fourth"]);
    for broker in &mut cluster.brokers {
        broker.stop();
    }
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
    let log: Vec<String> = read_all(&bootstrap(&cluster), "frozen")
        .into_values()
        .collect();
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
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

#[test]
fn min_insync_replicas_two_of_three_writes_go_on_with_one_down_and_stop_with_two() {
    // Five brokers, so that two lost replicas still leave a metadata majority.
    let mut cluster = Cluster::start_with(5, FAST_FAILOVER);
    create_replicated(&cluster, "minisr", 1, 2);
    let start = leadership(&cluster, "minisr", 0).expect("leadership");
    let leader = start.leader.expect("a leader");
    let followers: Vec<u32> = start
        .replicas
        .iter()
        .copied()
        .filter(|b| *b != leader)
        .collect();
    let mut to_leader = connect_to(&cluster, leader);
    let mut acked = Vec::new();
    let produce = |connection: &mut Connection, value: &str, acked: &mut Vec<String>| {
        let result = produce_one(connection, "minisr", value, Acks::All, 10_000);
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
    assert_eq!(
        under(&cluster),
        Some(1),
        "the leader reports the partition under-replicated"
    );
    assert!(
        metric(
            &cluster,
            leader,
            "shardlog_partition_isr_shrinks_total",
            "minisr"
        ) >= Some(2)
    );
    let described = std::process::Command::new(shardlog_tests::binary("shardlog"))
        .args([
            "--broker",
            &cluster.brokers[leader as usize - 1].addr.to_string(),
        ])
        .args(["topic", "describe", "minisr", "--format", "json"])
        .output()
        .expect("run shardlog");
    assert!(described.status.success(), "{described:?}");
    let json: serde_json::Value = serde_json::from_slice(&described.stdout).expect("JSON");
    assert_eq!(json["partitions"][0]["under_replicated"], true, "{json}");
    assert_eq!(
        json["partitions"][0]["isr"],
        serde_json::json!([leader]),
        "{json}"
    );
    let refused = produce(&mut to_leader, "one of three", &mut acked);
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
    assert_eq!(under(&cluster), Some(0));
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
    let log: Vec<String> = read_all(&bootstrap(&cluster), "minisr")
        .into_values()
        .collect();
    assert_eq!(log, acked, "the refused write was not stored");
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// The committed offset of partition 0 of `topic` for `group`, as the group's coordinator says.
fn committed(servers: &str, group: &str, topic: &str) -> Option<i64> {
    runtime().block_on(async {
        let admin = shardlog_client::Admin::new(ClientConfig::new(servers));
        let described = admin.describe_group(group).await.ok()?;
        described
            .offsets
            .iter()
            .find(|o| o.topic == topic && o.partition == 0)
            .map(|o| o.offset)
    })
}

#[test]
fn a_group_consumer_keeps_consuming_across_its_coordinators_failover_and_no_commit_is_lost() {
    use shardlog_client::{GroupConsumer, GroupConsumerConfig};
    use shardlog_wire::offsets::{offsets_partition, OFFSETS_TOPIC};

    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    let coordinator_partition = offsets_partition("billing");
    eventually(&cluster, "__offsets replicated on every broker", || {
        leadership(&cluster, OFFSETS_TOPIC, coordinator_partition)
            .is_some_and(|l| l.replicas.len() == 3 && l.isr.len() == 3)
    });
    create_replicated(&cluster, "events", 1, 2);
    let servers = bootstrap(&cluster);
    let mut to_leader = {
        let leader = leadership(&cluster, "events", 0).and_then(|l| l.leader);
        connect_to(&cluster, leader.expect("a leader"))
    };
    for i in 0..300 {
        let result = produce_one(&mut to_leader, "events", &i.to_string(), Acks::All, 10_000);
        assert_eq!(result.error, None);
    }

    let coordinator = leadership(&cluster, OFFSETS_TOPIC, coordinator_partition)
        .and_then(|l| l.leader)
        .expect("a coordinator");
    let (seen, committed_before) = runtime().block_on(async {
        let consumer = ConsumerConfig {
            client: ClientConfig::new(servers.as_str()),
            max_wait: Duration::from_millis(100),
            auto_offset_reset: shardlog_client::OffsetReset::Earliest,
            ..Default::default()
        };
        let mut member = GroupConsumer::new(GroupConsumerConfig::new(consumer, "billing"));
        member.subscribe(&["events"]);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 100 && Instant::now() < deadline {
            for record in member.poll().await.expect("poll before the failover") {
                seen.push(String::from_utf8_lossy(&record.value.unwrap_or_default()).to_string());
            }
        }
        member.commit().await.expect("commit before the failover");
        (seen, member)
    });
    let mut member = committed_before;
    let before = committed(&servers, "billing", "events").expect("a committed offset");
    assert!(before >= 100, "committed {before}");

    cluster.broker(coordinator).kill9();
    eventually(&cluster, "a new coordinator", || {
        leadership(&cluster, OFFSETS_TOPIC, coordinator_partition)
            .is_some_and(|l| l.leader.is_some_and(|b| b != coordinator))
    });
    let survivors = bootstrap(&cluster);
    assert!(
        committed(&survivors, "billing", "events").is_some_and(|after| after >= before),
        "the commit made before the failover survives it"
    );
    // The same member goes on: no error reaches it, and it gets the rest
    // (at least once: from its last commit at the worst).
    let mut seen = seen;
    runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.iter().any(|v| v == "299") && Instant::now() < deadline {
            for record in member.poll().await.expect("poll across the failover") {
                seen.push(String::from_utf8_lossy(&record.value.unwrap_or_default()).to_string());
            }
        }
        member.commit().await.expect("commit after the failover");
    });
    let distinct: std::collections::BTreeSet<u64> =
        seen.iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(distinct.len(), 300, "every record consumed");
    assert_eq!(committed(&survivors, "billing", "events"), Some(300));
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

#[test]
fn a_rolling_restart_hands_leadership_over_first_and_shows_producers_no_error() {
    // A session far longer than a stop takes: leadership that moved by the
    // time the broker exited was handed over, not taken after a fence.
    let mut cluster = Cluster::start_with(3, &["--broker-session-timeout-ms", "4000"]);
    create_replicated(&cluster, "rolling", 1, 2);
    let servers = bootstrap(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicU64::new(0));
    let producer_thread = {
        let (servers, stop, acked_count) = (servers.clone(), stop.clone(), acked_count.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let producer = Producer::new(ProducerConfig {
                    acks: Acks::All,
                    idempotent: true,
                    linger: Duration::from_millis(2),
                    client: ClientConfig::new(servers.as_str()),
                    ..Default::default()
                })
                .await
                .expect("producer");
                let (mut acked, mut errors, mut next) = (Vec::new(), Vec::new(), 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let record = ProducerRecord::new("rolling", next.to_string()).partition(0);
                    match producer.send(record).await {
                        Ok(meta) => {
                            acked.push((next, meta.offset.expect("an offset")));
                            acked_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => errors.push(error.to_string()),
                    }
                    next += 1;
                }
                (acked, errors)
            })
        })
    };
    let wait_acks = |cluster: &Cluster, more: u64| {
        let target = acked_count.load(Ordering::SeqCst) + more;
        eventually(cluster, "acknowledgements continue", || {
            acked_count.load(Ordering::SeqCst) >= target
        });
    };
    wait_acks(&cluster, 50);
    for round in 0..3 {
        let leader = leadership(&cluster, "rolling", 0)
            .and_then(|l| l.leader)
            .expect("a leader");
        let started = Instant::now();
        cluster.broker(leader).stop();
        eprintln!(
            "round {round}: broker {leader} stopped in {:?}",
            started.elapsed()
        );
        let now = leadership(&cluster, "rolling", 0).expect("leadership");
        assert!(
            now.leader.is_some_and(|b| b != leader) && !now.isr.contains(&leader),
            "round {round}: leadership left broker {leader} before it exited \
             ({:?} after SIGTERM): {now:?}",
            started.elapsed()
        );
        wait_acks(&cluster, 50);
        cluster.broker(leader).restart();
        eventually(&cluster, "the restarted broker rejoins the ISR", || {
            leadership(&cluster, "rolling", 0).is_some_and(|l| l.isr.len() == 3)
        });
        wait_acks(&cluster, 50);
    }
    stop.store(true, Ordering::SeqCst);
    let (acked, errors) = producer_thread.join().expect("producer thread");
    assert!(errors.is_empty(), "producers saw errors: {errors:?}");
    let log = read_all(&servers, "rolling");
    for (value, offset) in &acked {
        assert_eq!(log.get(offset), Some(&value.to_string()), "record {value}");
    }
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// The value of `name` for partition 0 of `topic` on broker `id`'s metrics.
fn metric(cluster: &Cluster, id: u32, name: &str, topic: &str) -> Option<u64> {
    let prefix = format!("{name}{{topic=\"{topic}\",partition=\"0\"");
    cluster.brokers[id as usize - 1]
        .scrape_metrics()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One partition of a hand-made ReplicaFetch.
struct Asked<'a> {
    topic: &'a str,
    partition: u32,
    leader_epoch: u64,
    offset: u64,
    last_epoch: i64,
}

/// A ReplicaFetch frame as a follower (or an impostor) would send it.
fn replica_fetch_frame(from_broker: u64, cluster_id: &str, asked: &[Asked]) -> Vec<u8> {
    use shardlog_wire::protocol::fb;
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let partitions: Vec<_> = asked
        .iter()
        .map(|a| {
            let topic = fbb.create_string(a.topic);
            fb::ReplicaFetchPartition::create(
                &mut fbb,
                &fb::ReplicaFetchPartitionArgs {
                    topic: Some(topic),
                    partition: a.partition,
                    current_leader_epoch: a.leader_epoch,
                    fetch_offset: a.offset,
                    last_fetched_epoch: a.last_epoch,
                    max_bytes: 1 << 20,
                },
            )
        })
        .collect();
    let partitions = fbb.create_vector(&partitions);
    let cluster_id = fbb.create_string(cluster_id);
    let body = fb::ReplicaFetchRequest::create(
        &mut fbb,
        &fb::ReplicaFetchRequestArgs {
            from_broker,
            broker_epoch: 0,
            cluster_id: Some(cluster_id),
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            partitions: Some(partitions),
        },
    );
    let request = fb::Request::create(
        &mut fbb,
        &fb::RequestArgs {
            correlation_id: 7,
            api_version: 0,
            client_id: None,
            body_type: fb::RequestBody::ReplicaFetchRequest,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(request, None);
    let message = fbb.finished_data();
    let mut frame = shardlog_wire::protocol::encode_prefix(message.len(), 0).to_vec();
    frame.extend_from_slice(message);
    frame
}

/// The answer's whole-request error (or the ErrorResponse's) and each partition's code.
fn replica_fetch_call(addr: std::net::SocketAddr, frame: &[u8]) -> (ErrorCode, Vec<ErrorCode>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(frame).expect("send");
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).expect("an answer");
    let frame_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let message_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    let mut rest = vec![0u8; frame_len - 4];
    stream.read_exact(&mut rest).expect("the whole answer");
    let limits = shardlog_wire::protocol::ProtocolLimits::default();
    let response = shardlog_wire::protocol::verify_response(&rest[..message_len], &limits)
        .expect("a valid response");
    if let Some(error) = response.body_as_error_response() {
        return (error.error_code(), Vec::new());
    }
    let body = response
        .body_as_replica_fetch_response()
        .expect("a ReplicaFetchResponse");
    let codes = body
        .partitions()
        .iter()
        .flatten()
        .map(|p| p.error_code())
        .collect();
    (body.error_code(), codes)
}

#[test]
fn replica_fetches_from_strangers_or_with_bad_values_get_errors_and_change_nothing() {
    // A one-node broker has no followers.
    let mut single = shardlog_tests::Broker::start(1, &[]);
    let asked = [Asked {
        topic: "t",
        partition: 0,
        leader_epoch: 0,
        offset: 0,
        last_epoch: -1,
    }];
    let (code, _) = replica_fetch_call(single.addr, &replica_fetch_frame(2, "", &asked));
    assert_eq!(code, ErrorCode::InvalidRequest);
    single.stop();

    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    let mut admin = Connection::connect(cluster.brokers[0].addr).expect("connect");
    let request = Request::CreateTopics(vec![NewTopic {
        replication_factor: Some(2),
        ..NewTopic::new("two", 1)
    }]);
    assert!(matches!(admin.call(&request), Ok(Response::Topics(r)) if r[0].1.is_none()));
    create_replicated(&cluster, "guarded", 1, 2);
    let mut to_leader = {
        let leader = leadership(&cluster, "guarded", 0).and_then(|l| l.leader);
        connect_to(&cluster, leader.expect("a leader"))
    };
    for value in ["a", "b", "c"] {
        assert_eq!(
            produce_one(&mut to_leader, "guarded", value, Acks::All, 10_000).error,
            None
        );
    }
    let guarded = leadership(&cluster, "guarded", 0).expect("leadership");
    let leader = guarded.leader.expect("a leader");
    let follower = *guarded.replicas.iter().find(|b| **b != leader).unwrap();
    // The leader's owning shard's own port: a follower fetches there.
    let shard_of = |admin: &mut Connection, topic: &str| -> (String, u16) {
        match admin.call(&Request::Metadata(vec![topic.to_string()])) {
            Ok(Response::Metadata(described)) => {
                let topic = described
                    .topics
                    .iter()
                    .find(|t| t.name == topic)
                    .expect("topic");
                (described.cluster_id.clone(), topic.partition_shards[0])
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    // Each broker names its own replica's shard: ask the leader.
    let (cluster_id, shard) = shard_of(&mut connect_to(&cluster, leader), "guarded");
    let leader_addr = cluster.brokers[leader as usize - 1].shard_addr(shard);
    let ask = |topic, partition, leader_epoch, offset, last_epoch| Asked {
        topic,
        partition,
        leader_epoch,
        offset,
        last_epoch,
    };
    let epoch = guarded.leader_epoch;
    // Not a broker of this cluster, or another cluster.
    let good = [ask("guarded", 0, epoch, 0, -1)];
    let frame = replica_fetch_frame(99, &cluster_id, &good);
    assert_eq!(
        replica_fetch_call(leader_addr, &frame).0,
        ErrorCode::InvalidRequest
    );
    let frame = replica_fetch_frame(u64::from(follower), "another-cluster", &good);
    assert_eq!(
        replica_fetch_call(leader_addr, &frame).0,
        ErrorCode::InvalidRequest
    );
    let frame = replica_fetch_frame(u64::from(leader), &cluster_id, &good);
    assert_eq!(
        replica_fetch_call(leader_addr, &frame).0,
        ErrorCode::InvalidRequest,
        "itself"
    );
    // A last epoch that is no epoch.
    let frame = replica_fetch_frame(
        u64::from(follower),
        &cluster_id,
        &[ask("guarded", 0, epoch, 0, -5)],
    );
    assert_eq!(
        replica_fetch_call(leader_addr, &frame).0,
        ErrorCode::InvalidRequest
    );
    // Per partition: unknown, a stale or future epoch, past the end, and
    // a partition the sender holds no replica of.
    let two = leadership(&cluster, "two", 0).expect("leadership");
    let outsider = (1..=3)
        .find(|b| !two.replicas.contains(b))
        .expect("RF 2 of 3");
    let partitions = [
        ask("missing", 0, 0, 0, -1),
        ask("guarded", 9, epoch, 0, -1),
        ask("guarded", 0, epoch + 5, 0, -1),
        ask("guarded", 0, epoch, u64::MAX, 0),
    ];
    let frame = replica_fetch_frame(u64::from(follower), &cluster_id, &partitions);
    let (code, codes) = replica_fetch_call(leader_addr, &frame);
    assert_eq!(code, ErrorCode::None);
    assert_eq!(
        codes,
        [
            ErrorCode::UnknownTopicOrPartition,
            ErrorCode::UnknownTopicOrPartition,
            ErrorCode::UnknownLeaderEpoch,
            ErrorCode::OffsetOutOfRange,
        ]
    );
    if let Some(two_leader) = two.leader {
        let frame = replica_fetch_frame(
            u64::from(outsider),
            &cluster_id,
            &[ask("two", 0, two.leader_epoch, 0, -1)],
        );
        let (_, shard) = shard_of(&mut connect_to(&cluster, two_leader), "two");
        let addr = cluster.brokers[two_leader as usize - 1].shard_addr(shard);
        let (_, codes) = replica_fetch_call(addr, &frame);
        assert_eq!(
            codes,
            [ErrorCode::InvalidRequest],
            "not one of its replicas"
        );
    }
    // Nothing moved: the same three records, and writes go on.
    assert_eq!(
        produce_one(&mut to_leader, "guarded", "d", Acks::All, 10_000).error,
        None
    );
    let log: Vec<String> = read_all(&bootstrap(&cluster), "guarded")
        .into_values()
        .collect();
    assert_eq!(log, ["a", "b", "c", "d"]);
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}
