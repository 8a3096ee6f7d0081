//! Brokers in a cluster: three (and in one test five) real `shardlog-server` processes on
//! 127.0.0.1 with their own data directories and one metadata group
//! (`--node-id`, `--peers`). Topics created on one broker appear on all;
//! the group survives losing its controller (kill -9), takes it back, and
//! with a majority down refuses admin requests with a retriable error;
//! everything is back after a restart of all three.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardlog_client::protocol::{Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::cluster::{
    agreed_controller, create_retrying, create_when_ready, describe, eventually, settled_topics,
    topics, try_create, Cluster, SETTLE_WAIT,
};
use shardlog_tests::{binary, reserve_port, Broker};

#[test]
fn three_brokers_share_topics_survive_losing_the_controller_and_refuse_without_a_majority() {
    let mut cluster = Cluster::start(3);
    let all = [1, 2, 3];
    eventually(&cluster, "a controller every broker names", || {
        agreed_controller(&cluster, &all).is_some()
    });
    eventually(&cluster, "three registered brokers", || {
        describe(&cluster.brokers[0])
            .is_some_and(|d| d.brokers.len() == 3 && d.brokers.iter().all(|b| b.alive))
    });

    // Created on one broker, seen on all, placed across all.
    create_when_ready(&cluster, 3, "orders", 6);
    eventually(&cluster, "orders on every broker", || {
        cluster.brokers.iter().all(|b| topics(b) == ["orders"])
    });
    let description = describe(&cluster.brokers[0]).expect("metadata");
    let orders = &description.topics[0];
    assert_eq!(orders.leadership.len(), 6);
    let mut leaders: Vec<u32> = orders.leadership.iter().filter_map(|p| p.leader).collect();
    leaders.sort();
    leaders.dedup();
    assert_eq!(
        leaders,
        [1, 2, 3],
        "partitions spread over the brokers: {orders:?}"
    );
    for partition in &orders.leadership {
        assert_eq!(partition.replicas, partition.isr);
        assert_eq!(partition.leader_epoch, 0);
    }

    // kill -9 the controller: the other two elect one of themselves and take topics again.
    let controller = agreed_controller(&cluster, &all).expect("a controller");
    cluster.broker(controller).kill9();
    let survivors: Vec<u32> = all.iter().copied().filter(|id| *id != controller).collect();
    let started = Instant::now();
    eventually(&cluster, "a new controller", || {
        agreed_controller(&cluster, &survivors).is_some_and(|c| c != controller)
    });
    create_when_ready(&cluster, survivors[0], "payments", 3);
    let failover = started.elapsed();
    assert!(failover < SETTLE_WAIT, "failover took {failover:?}");
    eventually(&cluster, "payments on the survivors", || {
        survivors
            .iter()
            .all(|id| topics(&cluster.brokers[*id as usize - 1]) == ["orders", "payments"])
    });

    // The killed broker comes back, catches up and follows the new controller.
    cluster.broker(controller).restart();
    eventually(&cluster, "the restarted broker rejoining", || {
        topics(&cluster.brokers[controller as usize - 1]) == ["orders", "payments"]
            && agreed_controller(&cluster, &all).is_some()
    });

    // Two of three down: no majority, admin requests fail with the retriable error.
    let [first, second] = [survivors[0], survivors[1]];
    cluster.broker(first).kill9();
    cluster.broker(controller).kill9();
    let started = Instant::now();
    let error = try_create(&cluster.brokers[second as usize - 1], "refused", 1)
        .expect_err("no majority, no new topic");
    assert_eq!(error.code, ErrorCode::ControllerUnavailable, "{error:?}");
    assert!(error.code.is_retriable());
    assert!(error.message.contains("retry"), "{error:?}");
    assert!(
        started.elapsed() < SETTLE_WAIT,
        "refused only after {:?}",
        started.elapsed()
    );
    // Without a majority the data path goes on: the survivor still takes
    // and serves records on the partitions it leads.
    let led = orders
        .leadership
        .iter()
        .position(|p| p.leader == Some(second))
        .expect("the survivor leads a partition of orders") as u32;
    let mut survivor = cluster.brokers[second as usize - 1].connect();
    let values: Vec<String> = (0..5).map(|i| format!("no-quorum-{i}")).collect();
    let base = shardlog_tests::produce(&mut survivor, "orders", led, &values);
    let stored = shardlog_tests::consume_all(&mut survivor, "orders", led, base as u64);
    let read: Vec<String> = stored.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        read, values,
        "produce and fetch continue without a majority"
    );

    // Every broker restarted: every topic back, and the group takes changes again.
    cluster.broker(first).restart();
    cluster.broker(controller).restart();
    eventually(
        &cluster,
        "every topic on every broker after the restarts",
        || {
            cluster
                .brokers
                .iter()
                .all(|b| settled_topics(b) == ["orders", "payments"])
        },
    );
    create_when_ready(&cluster, controller, "after", 2);
    eventually(
        &cluster,
        "a topic created after the restarts on every broker",
        || {
            cluster
                .brokers
                .iter()
                .all(|b| settled_topics(b) == ["after", "orders", "payments"])
        },
    );
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

#[test]
fn topic_delete_from_any_broker_removes_it_everywhere() {
    let mut cluster = Cluster::start(3);
    create_when_ready(&cluster, 1, "short-lived", 6);
    eventually(&cluster, "the topic on every broker", || {
        cluster.brokers.iter().all(|b| topics(b) == ["short-lived"])
    });
    let mut connection = cluster.brokers[1].connect();
    match connection
        .call(&Request::DeleteTopics(vec!["short-lived".into()]))
        .expect("delete topics")
    {
        Response::Topics(results) => assert_eq!(results[0].1, None),
        other => panic!("unexpected {other:?}"),
    }
    eventually(&cluster, "the topic gone from every broker", || {
        cluster.brokers.iter().all(|b| topics(b).is_empty())
    });
    eventually(&cluster, "its partition directories gone", || {
        cluster.brokers.iter().all(|b| {
            std::fs::read_dir(b.data_dir().join("data/topics"))
                .map(|entries| {
                    entries
                        .flatten()
                        .all(|e| !e.file_name().to_string_lossy().starts_with("short-lived"))
                })
                .unwrap_or(true)
        })
    });
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// Runs the broker binary to its end; (exit code, stderr).
fn run_to_failure(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary("shardlog-server"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run shardlog-server");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn a_data_directory_refuses_another_node_id_or_another_cluster() {
    let port = reserve_port(1);
    let peers = format!("1@127.0.0.1:{port}");
    let mut broker = Broker::start_on(port, 1, &["--node-id", "1", "--peers", &peers]);
    // A one-voter group elects itself and takes topics like a one-node broker.
    assert_eq!(create_retrying(&broker, "kept", 1), Ok(()));
    broker.stop();
    let data_dir = broker.data_dir().join("data");
    let data_dir = data_dir.to_string_lossy();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", port + 2);
    let common = [
        "--data-dir",
        &data_dir,
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics,
        "--shards",
        "1",
    ];
    for (extra, says) in [
        (
            vec!["--node-id", "2", "--peers", &format!("2@127.0.0.1:{port}")],
            "not to node 2",
        ),
        (vec![], "not to node 0 of a one-node broker"),
    ] {
        let args: Vec<&str> = common.iter().chain(extra.iter()).copied().collect();
        let (code, stderr) = run_to_failure(&args);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("belongs to node 1"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    broker.restart();
    assert_eq!(topics(&broker), ["kept"]);
    broker.stop();
}

/// A RaftRequest frame as a peer would send it.
fn raft_frame(from_node: u64, cluster_id: &str, auth: &[u8], payload: &[u8]) -> Vec<u8> {
    use shardlog_wire::protocol::fb;
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let auth = (!auth.is_empty()).then(|| fbb.create_vector(auth));
    let payload = fbb.create_vector(payload);
    let cluster_id = fbb.create_string(cluster_id);
    let body = fb::RaftRequest::create(
        &mut fbb,
        &fb::RaftRequestArgs {
            from_node,
            cluster_id: Some(cluster_id),
            auth,
            payload: Some(payload),
        },
    );
    shardlog_wire::protocol::request_frame(
        fbb,
        41,
        None,
        fb::RequestBody::RaftRequest,
        body.as_union_value(),
    )
}

/// Sends one RaftRequest frame and returns the answer's (code, message).
fn raft_call(stream: &mut std::net::TcpStream, frame: &[u8]) -> (ErrorCode, String) {
    let message = shardlog_tests::exchange_frame(stream, frame);
    let limits = shardlog_wire::protocol::ProtocolLimits::default();
    let response =
        shardlog_wire::protocol::verify_response(&message, &limits).expect("a valid response");
    assert_eq!(response.correlation_id(), 41);
    let body = response.body_as_raft_response().expect("a RaftResponse");
    (
        body.error_code(),
        body.error_message().unwrap_or_default().to_string(),
    )
}

#[test]
fn broker_to_broker_frames_from_strangers_or_with_bad_bytes_get_errors_and_change_nothing() {
    let alone = Broker::start(1, &[]);
    let mut stream = std::net::TcpStream::connect(alone.addr).expect("connect");
    let (code, message) = raft_call(&mut stream, &raft_frame(1, "", &[], b"\x01{}"));
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("not a cluster member"), "{message}");

    let port = reserve_port(1);
    let peers = format!("1@127.0.0.1:{port}");
    let broker = Broker::start_on(port, 1, &["--node-id", "1", "--peers", &peers]);
    assert_eq!(create_retrying(&broker, "before", 1), Ok(()));
    let deadline = Instant::now() + SETTLE_WAIT;
    while describe(&broker).is_none_or(|d| d.cluster_id.is_empty()) {
        assert!(Instant::now() < deadline, "the cluster was never named");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stream = std::net::TcpStream::connect(broker.addr).expect("connect");
    let refusals: [(Vec<u8>, &str); 4] = [
        (raft_frame(7, "", &[], b"\x01{}"), "not a voter"),
        (raft_frame(1, "", b"token", b"\x01{}"), "authentication"),
        (raft_frame(1, "another-cluster", &[], b"\x01{}"), "cluster"),
        (raft_frame(1, "", &[], b"\x02{}"), "version"),
    ];
    for (frame, says) in &refusals {
        let (code, message) = raft_call(&mut stream, frame);
        assert_eq!(code, ErrorCode::InvalidRequest, "{message}");
        assert!(message.contains(says), "{says}: {message}");
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut payload: Vec<u8> = (0..(seed % 200) as usize)
            .map(|i| (seed >> (i % 56)) as u8 ^ i as u8)
            .collect();
        if round % 2 == 0 {
            payload.insert(0, 1);
        }
        let (code, message) = raft_call(&mut stream, &raft_frame(1, "", &[], &payload));
        assert_eq!(code, ErrorCode::InvalidRequest, "round {round}: {message}");
    }
    assert_eq!(create_retrying(&broker, "after", 1), Ok(()));
    assert_eq!(topics(&broker), ["after", "before"]);
}

#[test]
fn the_sdk_bootstraps_past_a_dead_address_and_produces_to_each_partitions_leader() {
    use shardlog_client::{
        ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    };
    let mut cluster = Cluster::start(3);
    create_when_ready(&cluster, 1, "spread", 6);
    eventually(&cluster, "the topic on every broker", || {
        cluster.brokers.iter().all(|b| topics(b) == ["spread"])
    });
    // Nothing listens on a reserved port nobody started.
    let dead = format!("127.0.0.1:{}", reserve_port(1));
    let bootstrap = format!("{dead},{}", cluster.brokers[1].addr);
    let bootstrap_for_cli = bootstrap.clone();
    shardlog_tests::runtime().block_on(async {
        let producer = Producer::new(ProducerConfig {
            client: ClientConfig::new(bootstrap.clone()),
            linger: Duration::from_millis(1),
            ..Default::default()
        })
        .await
        .expect("a producer through the second address");
        let mut partitions = std::collections::BTreeSet::new();
        for i in 0..60u32 {
            let record = ProducerRecord::new("spread", format!("{i}")).partition(i % 6);
            let delivered = producer
                .send(record)
                .await
                .expect("delivered by the leader");
            partitions.insert(delivered.partition);
        }
        assert_eq!(partitions.len(), 6);
        producer.flush().await.expect("flush");
        let mut consumer = Consumer::new(ConsumerConfig {
            client: ClientConfig::new(bootstrap),
            max_wait: Duration::from_millis(50),
            ..Default::default()
        });
        consumer
            .assign_all("spread", Offset::Earliest)
            .await
            .expect("assign");
        let mut values = Vec::new();
        let deadline = Instant::now() + SETTLE_WAIT;
        while values.len() < 60 && Instant::now() < deadline {
            for record in consumer.poll().await.expect("poll") {
                let value = record.value.expect("a value");
                values.push(String::from_utf8_lossy(&value).to_string());
            }
        }
        values.sort_by_key(|v| v.parse::<u32>().unwrap_or(u32::MAX));
        let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
        assert_eq!(values, expected);
    });

    // The CLI, through the same list: the cluster and the topic as JSON.
    let cli = |args: &[&str]| -> serde_json::Value {
        let output = Command::new(binary("shardlog"))
            .args(["--broker", &bootstrap_for_cli])
            .args(args)
            .output()
            .expect("run shardlog");
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("one JSON object")
    };
    let described = cli(&["cluster", "describe", "--format", "json"]);
    let controller = described["controller"].as_u64().expect("a controller id");
    assert!((1..=3).contains(&controller), "{described}");
    let brokers = described["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 3, "{described}");
    for (i, broker) in brokers.iter().enumerate() {
        assert_eq!(broker["id"], i as u64 + 1);
        assert_eq!(broker["state"], "alive");
        let address = cluster.brokers[i].addr.to_string();
        assert_eq!(broker["address"], address.as_str());
    }
    let topic = cli(&["topic", "describe", "spread", "--format", "json"]);
    assert_eq!(topic["topic"], "spread");
    let partitions = topic["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 6, "{topic}");
    let mut stored = 0;
    for partition in partitions {
        assert_eq!(partition["replicas"], partition["isr"], "{partition}");
        assert_eq!(partition["replicas"][0], partition["leader"], "{partition}");
        assert_eq!(partition["leader_epoch"], 0);
        stored += partition["log_end_offset"].as_u64().expect("an offset");
    }
    assert_eq!(stored, 60, "{topic}");
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

#[test]
fn a_silent_broker_is_fenced_skipped_by_placement_and_unfenced_when_back() {
    let mut cluster = Cluster::start_with(3, &["--broker-session-timeout-ms", "1500"]);
    let all = [1, 2, 3];
    eventually(&cluster, "a controller every broker names", || {
        agreed_controller(&cluster, &all).is_some()
    });
    let controller = agreed_controller(&cluster, &all).expect("a controller");
    let silent = all
        .iter()
        .copied()
        .find(|id| *id != controller)
        .expect("a follower");
    let state_of = |cluster: &Cluster, id: u32| {
        describe(&cluster.brokers[controller as usize - 1])
            .and_then(|d| d.brokers.into_iter().find(|b| b.id == id))
            .map(|b| b.alive)
    };
    cluster.broker(silent).kill9();
    eventually(&cluster, "the killed broker fenced", || {
        state_of(&cluster, silent) == Some(false)
    });
    // Placement skips it: every partition goes to the two alive brokers.
    create_when_ready(&cluster, controller, "fenced-out", 6);
    let description = describe(&cluster.brokers[controller as usize - 1]).expect("metadata");
    let topic = description
        .topics
        .iter()
        .find(|t| t.name == "fenced-out")
        .expect("the topic");
    for partition in &topic.leadership {
        assert!(!partition.replicas.contains(&silent), "{partition:?}");
    }
    cluster.broker(silent).restart();
    eventually(&cluster, "the restarted broker alive again", || {
        state_of(&cluster, silent) == Some(true)
    });
    // The other live broker stayed alive throughout (it heartbeats to the controller).
    let other = all
        .iter()
        .copied()
        .find(|id| *id != controller && *id != silent);
    assert_eq!(other.and_then(|id| state_of(&cluster, id)), Some(true));
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// Producers that get their ids from different brokers write to one
/// partition: every record is stored. Each broker counts producer ids from
/// zero, so without the broker's place in the id the second and third
/// producers would be taken for the first and their batches dropped as
/// duplicates.
#[test]
fn producers_bootstrapped_at_different_brokers_never_share_an_id() {
    use shardlog_client::{
        ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    };
    let mut cluster = Cluster::start(3);
    create_when_ready(&cluster, 1, "shared", 1);
    eventually(&cluster, "the topic on every broker", || {
        cluster.brokers.iter().all(|b| topics(b) == ["shared"])
    });
    let addresses: Vec<String> = cluster.brokers.iter().map(|b| b.addr.to_string()).collect();
    shardlog_tests::runtime().block_on(async {
        for (p, address) in addresses.iter().enumerate() {
            let producer = Producer::new(ProducerConfig {
                client: ClientConfig::new(address.clone()),
                linger: Duration::from_millis(1),
                ..Default::default()
            })
            .await
            .expect("a producer");
            for i in 0..20u32 {
                let record = ProducerRecord::new("shared", format!("{p}-{i}")).partition(0);
                producer.send(record).await.expect("delivered");
            }
            producer.close().await.expect("close");
        }
        let mut consumer = Consumer::new(ConsumerConfig {
            client: ClientConfig::new(addresses[0].clone()),
            max_wait: Duration::from_millis(50),
            ..Default::default()
        });
        consumer
            .assign_all("shared", Offset::Earliest)
            .await
            .expect("assign");
        let mut values = std::collections::BTreeSet::new();
        let deadline = Instant::now() + SETTLE_WAIT;
        while values.len() < 60 && Instant::now() < deadline {
            for record in consumer.poll().await.expect("poll") {
                let value = record.value.expect("a value");
                values.insert(String::from_utf8_lossy(&value).to_string());
            }
        }
        let expected: std::collections::BTreeSet<String> = (0..3)
            .flat_map(|p| (0..20).map(move |i| format!("{p}-{i}")))
            .collect();
        assert_eq!(values, expected);
    });
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// Five voters: partitions spread over all five; losing two (the controller
/// among them) leaves a majority that elects a controller and takes topics;
/// losing a third refuses admin requests with the retriable error; all five
/// back, every topic is there.
#[test]
fn five_brokers_keep_a_majority_through_two_losses_and_refuse_after_three() {
    let mut cluster = Cluster::start(5);
    let all = [1, 2, 3, 4, 5];
    eventually(&cluster, "a controller all five name", || {
        agreed_controller(&cluster, &all).is_some()
    });
    create_when_ready(&cluster, 5, "wide", 10);
    eventually(&cluster, "wide on every broker", || {
        cluster.brokers.iter().all(|b| topics(b) == ["wide"])
    });
    let description = describe(&cluster.brokers[0]).expect("metadata");
    let mut leaders: Vec<u32> = description.topics[0]
        .leadership
        .iter()
        .filter_map(|p| p.leader)
        .collect();
    leaders.sort();
    leaders.dedup();
    assert_eq!(
        leaders, all,
        "partitions spread over all five: {description:?}"
    );

    // Two down, the controller one of them: three still make a majority.
    let controller = agreed_controller(&cluster, &all).expect("a controller");
    let other = if controller == 1 { 2 } else { 1 };
    cluster.broker(controller).kill9();
    cluster.broker(other).kill9();
    let survivors: Vec<u32> = all
        .iter()
        .copied()
        .filter(|id| *id != controller && *id != other)
        .collect();
    eventually(&cluster, "a new controller among three", || {
        agreed_controller(&cluster, &survivors).is_some()
    });
    create_when_ready(&cluster, survivors[0], "narrow", 3);
    eventually(&cluster, "narrow on the survivors", || {
        survivors
            .iter()
            .all(|id| topics(&cluster.brokers[*id as usize - 1]) == ["narrow", "wide"])
    });

    // A third down: two of five is no majority.
    cluster.broker(survivors[0]).kill9();
    let error = try_create(&cluster.brokers[survivors[1] as usize - 1], "refused", 1)
        .expect_err("no majority, no new topic");
    assert_eq!(error.code, ErrorCode::ControllerUnavailable, "{error:?}");

    for id in [controller, other, survivors[0]] {
        cluster.broker(id).restart();
    }
    eventually(
        &cluster,
        "every topic on all five after the restarts",
        || {
            cluster
                .brokers
                .iter()
                .all(|b| settled_topics(b) == ["narrow", "wide"])
        },
    );
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}

/// `topic create --replication-factor 3 --min-insync-replicas 2` through the
/// CLI places each partition on three distinct brokers, leaders spread; the
/// ISR starts as the leader alone (followers join once replication has
/// caught them up), so acks=all is refused with the retriable
/// `NotEnoughReplicas` while acks=1 is stored. Only the leader serves
/// clients: a follower answers `NotLeader`. More replicas than alive brokers,
/// or min-insync-replicas above the factor, are refused.
#[test]
fn replicated_topics_span_brokers_and_only_leaders_serve_clients() {
    use shardlog_client::blocking::Connection;
    use shardlog_client::protocol::{FetchPartition, NewTopic};
    use shardlog_client::Acks;
    use shardlog_tests::batch;
    use shardlog_wire::batch::BatchBuilderOptions;

    let mut cluster = Cluster::start(3);
    eventually(&cluster, "three alive brokers", || {
        describe(&cluster.brokers[0])
            .is_some_and(|d| d.brokers.len() == 3 && d.brokers.iter().all(|b| b.alive))
    });
    let cli = |args: &[&str]| -> std::process::Output {
        Command::new(binary("shardlog"))
            .args(["--broker", &cluster.brokers[1].addr.to_string()])
            .args(args)
            .output()
            .expect("run shardlog")
    };
    let created = cli(&[
        "topic",
        "create",
        "r3",
        "--partitions",
        "6",
        "--replication-factor",
        "3",
        "--min-insync-replicas",
        "2",
    ]);
    assert!(created.status.success(), "{created:?}\n{}", cluster.logs());
    let described = cli(&["topic", "describe", "r3", "--format", "json"]);
    assert!(described.status.success(), "{described:?}");
    let topic: serde_json::Value = serde_json::from_slice(&described.stdout).expect("JSON");
    let partitions = topic["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 6, "{topic}");
    let mut leaders = std::collections::BTreeSet::new();
    let mut leader_of = Vec::new();
    for partition in partitions {
        let mut replicas: Vec<u64> = partition["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        assert_eq!(partition["replicas"][0], partition["leader"], "{partition}");
        let leader = partition["leader"].as_u64().expect("a leader");
        assert_eq!(
            partition["isr"], partition["replicas"],
            "empty replicas are all in sync: {partition}"
        );
        replicas.sort();
        assert_eq!(replicas, [1, 2, 3], "three distinct brokers: {partition}");
        leaders.insert(leader);
        leader_of.push(leader);
    }
    assert_eq!(leaders.len(), 3, "leaders spread: {topic}");

    // acks=all is answered once the followers have the batch (the
    // replication tests in replication.rs check the losses and refusals).
    let leader = leader_of[0] as usize;
    let follower = leader % 3 + 1;
    let mut to_leader = Connection::connect(cluster.brokers[leader - 1].addr).expect("connect");
    let data = batch(&["v".to_string()], BatchBuilderOptions::default());
    let produce = |connection: &mut Connection, acks: Acks| {
        let request = Request::Produce {
            acks,
            timeout_ms: 10_000,
            partitions: vec![("r3".into(), 0, data.clone())],
        };
        match connection.call(&request).expect("produce") {
            Response::Produce(mut results) => results.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    };
    let replicated = produce(&mut to_leader, Acks::All);
    assert_eq!(replicated.error, None, "{}", cluster.logs());
    assert_eq!(replicated.offset, 0);
    let stored = produce(&mut to_leader, Acks::Leader);
    assert_eq!(stored.error, None);
    assert_eq!(stored.offset, 1);

    // A follower holds the partition but serves no client.
    let mut to_follower = Connection::connect(cluster.brokers[follower - 1].addr).expect("connect");
    let error = produce(&mut to_follower, Acks::Leader)
        .error
        .expect("a follower refuses produce");
    assert_eq!(error.code, ErrorCode::NotLeader, "{error:?}");
    let fetch = Request::Fetch {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartition {
            topic: "r3".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
        }],
    };
    match to_follower.call(&fetch).expect("fetch") {
        Response::Fetch(results) => {
            let error = results[0].error.clone().expect("a follower refuses fetch");
            assert_eq!(error.code, ErrorCode::NotLeader, "{error:?}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Refused before anything is proposed.
    let mut admin = Connection::connect(cluster.brokers[0].addr).expect("connect");
    let mut create = |topic: NewTopic| match admin
        .call(&Request::CreateTopics(vec![topic]))
        .expect("create topics")
    {
        Response::Topics(mut results) => results.pop().and_then(|(_, e)| e),
        other => panic!("unexpected {other:?}"),
    };
    let four = NewTopic {
        replication_factor: Some(4),
        ..NewTopic::new("r4", 1)
    };
    let error = create(four).expect("4 replicas on 3 brokers refused");
    assert_eq!(error.code, ErrorCode::InvalidReplicationFactor, "{error:?}");
    assert!(error.message.contains("3 are alive"), "{error:?}");
    let min_above = NewTopic {
        replication_factor: Some(2),
        min_insync_replicas: Some(3),
        ..NewTopic::new("m3", 1)
    };
    let error = create(min_above).expect("min-insync-replicas above the factor refused");
    assert_eq!(error.code, ErrorCode::InvalidReplicationFactor, "{error:?}");
    assert_eq!(topics(&cluster.brokers[0]), ["r3"], "nothing else created");
    for broker in &mut cluster.brokers {
        broker.stop();
    }
}
