//! Failover around replication: group coordinators move with `__offsets`,
//! a rolling restart hands leadership over first, broker-to-broker fetches
//! from strangers are refused, and cut network links (namespaces) shrink
//! and heal the ISR.

use std::time::{Duration, Instant};

use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{NewTopic, PartitionLeadership, Request, Response};
use shardlog_client::{Acks, ClientConfig, ConsumerConfig, ErrorCode, Producer, ProducerConfig};
use shardlog_tests::cluster::{eventually, step, Cluster};
use shardlog_tests::replicas::*;
use shardlog_tests::runtime;

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
    cluster.stop_all();
}

#[test]
fn a_rolling_restart_hands_leadership_over_first_and_shows_producers_no_error() {
    // A session far longer than a stop takes: leadership that moved by the
    // time the broker exited was handed over, not taken after a fence.
    let mut cluster = Cluster::start_with(3, &["--broker-session-timeout-ms", "4000"]);
    create_replicated(&cluster, "rolling", 1, 2);
    let servers = bootstrap(&cluster);
    let load = LoadProducer::start(&servers, "rolling", 1);
    load.wait_acks(&cluster, 50);
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
        load.wait_acks(&cluster, 50);
        cluster.broker(leader).restart();
        eventually(&cluster, "the restarted broker rejoins the ISR", || {
            leadership(&cluster, "rolling", 0).is_some_and(|l| l.isr.len() == 3)
        });
        load.wait_acks(&cluster, 50);
    }
    let LoadOutcome { acked, errors } = load.finish();
    assert!(errors.is_empty(), "producers saw errors: {errors:?}");
    let log = read_all(&servers, "rolling");
    for (value, offset) in &acked {
        assert_eq!(log.get(offset), Some(&value.to_string()), "record {value}");
    }
    cluster.stop_all();
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
    shardlog_wire::protocol::request_frame(
        fbb,
        7,
        None,
        fb::RequestBody::ReplicaFetchRequest,
        body.as_union_value(),
    )
}

/// The answer's whole-request error (or the ErrorResponse's) and each partition's code.
fn replica_fetch_call(addr: std::net::SocketAddr, frame: &[u8]) -> (ErrorCode, Vec<ErrorCode>) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let message = shardlog_tests::exchange_frame(&mut stream, frame);
    let limits = shardlog_wire::protocol::ProtocolLimits::default();
    let response =
        shardlog_wire::protocol::verify_response(&message, &limits).expect("a valid response");
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
        let result = produce_replicated(&mut to_leader, "guarded", value);
        assert_eq!(result.error, None, "{}", cluster.logs());
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
    let log: Vec<String> = values(&cluster, "guarded");
    assert_eq!(log, ["a", "b", "c", "d"]);
    cluster.stop_all();
}

#[test]
fn cut_links_shrink_the_isr_a_healed_follower_rejoins_and_an_isolated_leader_commits_nothing() {
    let lab = shardlog_tests::netns::Lab::new(3);
    let mut cluster = Cluster::start_in_lab(&lab, 3, FAST_FAILOVER);
    create_replicated(&cluster, "links", 1, 2);
    let start = leadership(&cluster, "links", 0).expect("leadership");
    let leader = start.leader.expect("a leader");
    let followers = followers(&start);
    let mut to_leader = connect_to(&cluster, leader);
    let mut acked = Vec::new();
    let mut produce = |connection: &mut Connection, value: &str| {
        let result = produce_one(connection, "links", value, Acks::All, 10_000);
        assert_eq!(result.error, None, "{value}: {}", cluster.logs());
        acked.push(value.to_string());
    };
    produce(&mut to_leader, "linked");

    // A follower cut off: it is fenced, leaves the ISR, and writes go on.
    let cut = followers[0];
    step(&format!("leader {leader}; cutting follower {cut} off"));
    lab.cut(cut as u8);
    eventually(&cluster, "the ISR without the cut follower", || {
        leadership(&cluster, "links", 0).is_some_and(|l| !l.isr.contains(&cut))
    });
    produce(&mut to_leader, "one follower cut");
    // Healed: it catches up and rejoins.
    step(&format!("healing follower {cut}"));
    lab.heal(cut as u8);
    eventually(&cluster, "the healed follower back in the ISR", || {
        leadership(&cluster, "links", 0).is_some_and(|l| l.isr.len() == 3)
    });
    produce(&mut to_leader, "healed");

    // The leader cut off, with a client on its side of the cut: that
    // client's acks=all write is never acknowledged, and the producers on
    // the other side move to the new leader.
    step(&format!("cutting leader {leader} off"));
    lab.cut(leader as u8);
    let leader_addr = cluster.brokers[leader as usize - 1].addr;
    let stranded = lab.spawn_in(leader as u8, move || {
        let mut beside = Connection::connect(leader_addr).expect("connect beside the leader");
        produce_one(&mut beside, "links", "stranded", Acks::All, 4_000)
    });
    eventually(&cluster, "a new leader on the majority side", || {
        leadership(&cluster, "links", 0).is_some_and(|l| l.leader.is_some_and(|b| b != leader))
    });
    let answer = stranded.join().expect("the stranded produce");
    let error = answer
        .error
        .expect("an isolated leader acknowledges no acks=all write");
    assert!(
        matches!(
            error.code,
            ErrorCode::RequestTimedOut | ErrorCode::NotLeader
        ),
        "{error:?}"
    );
    // The reachable brokers first: a cut one neither answers nor refuses.
    let reachable: Vec<String> = (1..=3u32)
        .filter(|b| *b != leader)
        .map(|b| cluster.brokers[b as usize - 1].addr.to_string())
        .collect();
    let servers = reachable.join(",");
    runtime().block_on(async {
        let producer = Producer::new(ProducerConfig {
            acks: Acks::All,
            client: ClientConfig::new(servers.as_str()),
            ..Default::default()
        })
        .await
        .expect("producer");
        let record = shardlog_client::ProducerRecord::new("links", "moved").partition(0);
        producer
            .send(record)
            .await
            .expect("the producer moves to the new leader");
    });
    acked.push("moved".to_string());

    step(&format!("healing leader {leader}"));
    lab.heal(leader as u8);
    eventually(&cluster, "the old leader back in the ISR", || {
        leadership(&cluster, "links", 0).is_some_and(|l| l.isr.len() == 3)
    });
    let log: Vec<String> = read_all(&servers, "links").into_values().collect();
    assert_eq!(
        log, acked,
        "the stranded write is gone, everything acknowledged is there"
    );
    cluster.stop_all();
}

#[test]
fn unclean_leader_election_is_a_per_topic_switch() {
    let mut cluster = Cluster::start_with(3, FAST_FAILOVER);
    let cli = |cluster: &Cluster, args: &[&str]| {
        let live = cluster
            .brokers
            .iter()
            .map(|b| b.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        std::process::Command::new(shardlog_tests::binary("shardlog"))
            .args(["--broker", &live])
            .args(args)
            .output()
            .expect("run shardlog")
    };
    let six = ["--partitions", "6"];
    for (topic, extra) in [
        ("unclean", &["--unclean-leader-election"][..]),
        ("clean", &six[..]),
    ] {
        let mut args = vec!["topic", "create", topic, "--replication-factor", "2"];
        args.extend(extra);
        let created = cli(&cluster, &args);
        assert!(created.status.success(), "{created:?}");
    }
    eventually(&cluster, "both topics led", || {
        ["unclean", "clean"]
            .iter()
            .all(|t| leadership(&cluster, t, 0).is_some_and(|l| l.leader.is_some()))
    });
    let unclean = leadership(&cluster, "unclean", 0).expect("leadership");
    let leader = unclean.leader.expect("a leader");
    let follower = *unclean.replicas.iter().find(|b| **b != leader).unwrap();
    // The follower goes first (it leaves the ISR), then the leader: no ISR
    // member is alive. Two of three voters down: nothing changes until the
    // follower is back and the metadata group has a majority again.
    cluster.broker(follower).kill9();
    eventually(&cluster, "the follower out of the ISR", || {
        leadership(&cluster, "unclean", 0).is_some_and(|l| l.isr == [leader])
    });
    // A partition of the clean topic on the same two brokers (placement
    // spreads six partitions over every pair).
    let pair = |l: &PartitionLeadership| {
        let mut replicas = l.replicas.clone();
        replicas.sort();
        let mut ours = vec![leader, follower];
        ours.sort();
        replicas == ours
    };
    let same = (0..6)
        .find(|p| leadership(&cluster, "clean", *p).is_some_and(|l| pair(&l)))
        .expect("a clean partition on the same brokers");
    cluster.broker(leader).kill9();
    cluster.broker(follower).restart();
    eventually(
        &cluster,
        "the out-of-sync follower leads the unclean topic",
        || leadership(&cluster, "unclean", 0).is_some_and(|l| l.leader == Some(follower)),
    );
    // The clean partition on the same brokers stays without a leader: its
    // only in-sync replica is down.
    let clean = leadership(&cluster, "clean", same).expect("leadership");
    assert_eq!(clean.leader, None, "no unclean election: {clean:?}");
    assert_eq!(clean.isr, [leader], "{clean:?}");
    cluster.stop_all();
}
