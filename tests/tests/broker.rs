//! End-to-end tests of the broker: the real binary on 127.0.0.1 with two
//! shards, driven over the wire protocol.

use std::time::Duration;

use shardlog_client::protocol::{Acks, FetchPartition, NewTopic, OffsetSpec, Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::{batch, consume_all, create_topic, produce, Broker};
use shardlog_wire::batch::BatchBuilderOptions;

fn values(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn error_of(response: Response) -> ErrorCode {
    match response {
        Response::Topics(results) => results[0].1.as_ref().map_or(ErrorCode::None, |e| e.code),
        Response::Produce(results) => results[0]
            .error
            .as_ref()
            .map_or(ErrorCode::None, |e| e.code),
        Response::Fetch(results) => results[0]
            .error
            .as_ref()
            .map_or(ErrorCode::None, |e| e.code),
        Response::Error(error) => error.code,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn topics_are_created_placed_over_shards_and_deleted() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "orders", 4);
    let Response::Metadata(cluster) = connection.call(&Request::Metadata(vec![])).unwrap() else {
        panic!()
    };
    assert_eq!(cluster.port, broker.addr.port());
    assert_eq!(
        cluster.shard_ports,
        vec![broker.addr.port() + 1, broker.addr.port() + 2]
    );
    let orders = cluster.topics.iter().find(|t| t.name == "orders").unwrap();
    assert_eq!(orders.partition_shards.len(), 4);
    assert!(
        orders.partition_shards.contains(&0) && orders.partition_shards.contains(&1),
        "both shards own partitions"
    );

    let again = connection
        .call(&Request::CreateTopics(vec![NewTopic::new("orders", 1)]))
        .unwrap();
    assert_eq!(error_of(again), ErrorCode::TopicAlreadyExists);
    let bad_name = connection
        .call(&Request::CreateTopics(vec![NewTopic::new("no/slashes", 1)]))
        .unwrap();
    assert_eq!(error_of(bad_name), ErrorCode::InvalidTopic);
    let no_partitions = connection
        .call(&Request::CreateTopics(vec![NewTopic::new("empty", 0)]))
        .unwrap();
    assert_eq!(error_of(no_partitions), ErrorCode::InvalidPartitions);
    // One broker holds one copy: more replicas are refused, with what to do.
    let replicated = NewTopic {
        replication_factor: Some(2),
        ..NewTopic::new("copies", 1)
    };
    let Response::Topics(results) = connection
        .call(&Request::CreateTopics(vec![replicated]))
        .unwrap()
    else {
        panic!()
    };
    let error = results[0].1.clone().expect("replication factor 2 refused");
    assert_eq!(error.code, ErrorCode::InvalidReplicationFactor);
    assert!(error.message.contains("--peers"), "{error:?}");
    let explicit_one = NewTopic {
        replication_factor: Some(1),
        min_insync_replicas: Some(1),
        ..NewTopic::new("one-copy", 1)
    };
    let created = connection
        .call(&Request::CreateTopics(vec![explicit_one]))
        .unwrap();
    assert_eq!(error_of(created), ErrorCode::None);

    produce(&mut connection, "orders", 3, &values("o", 0..5));
    assert_eq!(
        error_of(
            connection
                .call(&Request::DeleteTopics(vec!["orders".into()]))
                .unwrap()
        ),
        ErrorCode::None
    );
    let Response::Metadata(cluster) = connection
        .call(&Request::Metadata(vec!["orders".into()]))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        cluster.topics[0].error.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    let topics_dir = broker.data_dir().join("data/topics");
    let left = std::fs::read_dir(topics_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("orders-")
        })
        .count();
    assert_eq!(left, 0, "a deleted topic's files are removed");
    create_topic(&mut connection, "orders", 2);
    assert!(
        consume_all(&mut connection, "orders", 0, 0).is_empty(),
        "a topic created again starts empty"
    );
}

#[test]
fn produce_and_fetch_through_every_port_whichever_shard_owns_the_partition() {
    let broker = Broker::start(2, &[]);
    let mut shared = broker.connect();
    create_topic(&mut shared, "events", 4);
    let mut ports = [
        broker.connect(),
        broker.connect_shard(0),
        broker.connect_shard(1),
    ];
    let mut expected: Vec<Vec<(u64, String)>> = vec![Vec::new(); 4];
    for round in 0..5u32 {
        for (port_index, connection) in ports.iter_mut().enumerate() {
            for partition in 0..4u32 {
                let batch_values = values(&format!("p{partition}-r{round}-c{port_index}"), 0..3);
                let base = produce(connection, "events", partition, &batch_values) as u64;
                let next = expected[partition as usize].len() as u64;
                assert_eq!(base, next, "offsets are dense per partition");
                for (i, value) in batch_values.into_iter().enumerate() {
                    expected[partition as usize].push((base + i as u64, value));
                }
            }
        }
    }
    for connection in ports.iter_mut() {
        for partition in 0..4u32 {
            assert_eq!(
                consume_all(connection, "events", partition, 0),
                expected[partition as usize]
            );
        }
    }
}

#[test]
fn everything_acknowledged_survives_a_restart_and_a_kill_9() {
    let mut broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "durable", 2);
    for i in 0..20u32 {
        produce(
            &mut connection,
            "durable",
            i % 2,
            &values(&format!("a{i}"), 0..10),
        );
    }
    broker.stop();
    broker.restart();
    let mut connection = broker.connect();
    for partition in 0..2 {
        assert_eq!(
            consume_all(&mut connection, "durable", partition, 0).len(),
            100
        );
    }
    for i in 0..20u32 {
        produce(
            &mut connection,
            "durable",
            i % 2,
            &values(&format!("b{i}"), 0..10),
        );
    }
    broker.kill9();
    broker.restart();
    let mut connection = broker.connect();
    for partition in 0..2 {
        let records = consume_all(&mut connection, "durable", partition, 0);
        assert_eq!(records.len(), 200, "acknowledged records survive kill -9");
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, (offset, _))| *offset == i as u64));
    }
    let Response::Metadata(cluster) = connection.call(&Request::Metadata(vec![])).unwrap() else {
        panic!()
    };
    assert_eq!(cluster.topics.len(), 1, "topics survive restarts");
}

#[test]
fn an_idempotent_retry_is_not_stored_twice() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "once", 1);
    let Response::InitProducer {
        producer_id,
        producer_epoch,
    } = connection
        .call(&Request::InitProducer {
            producer_id: -1,
            producer_epoch: -1,
        })
        .unwrap()
    else {
        panic!()
    };
    assert!(producer_id >= 0);
    let options = |base_sequence| BatchBuilderOptions {
        producer_id,
        producer_epoch,
        base_sequence,
        ..Default::default()
    };
    let send = |connection: &mut shardlog_client::blocking::Connection,
                sequence: i32,
                values: &[String]| {
        let request = Request::Produce {
            acks: Acks::All,
            timeout_ms: 10_000,
            partitions: vec![("once".into(), 0, batch(values, options(sequence)))],
        };
        match connection.call(&request).unwrap() {
            Response::Produce(results) => results[0].clone(),
            other => panic!("unexpected {other:?}"),
        }
    };
    let first = send(&mut connection, 0, &values("x", 0..3));
    let retry = send(&mut connection, 0, &values("x", 0..3));
    assert_eq!(first.error, None);
    assert_eq!(retry.error, None);
    assert_eq!(
        retry.offset, first.offset,
        "the retry answers with the original offset"
    );
    let gap = send(&mut connection, 7, &values("y", 0..1));
    assert_eq!(gap.error.unwrap().code, ErrorCode::OutOfOrderSequence);
    assert_eq!(send(&mut connection, 3, &values("z", 0..2)).offset, 3);
    assert_eq!(
        consume_all(&mut connection, "once", 0, 0).len(),
        5,
        "no duplicate stored"
    );

    let Response::InitProducer {
        producer_epoch: bumped,
        ..
    } = connection
        .call(&Request::InitProducer {
            producer_id,
            producer_epoch,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(bumped, producer_epoch + 1);
}

#[test]
fn idempotence_survives_a_restart() {
    let mut broker = Broker::start(1, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "once", 1);
    let options = BatchBuilderOptions {
        producer_id: 99,
        producer_epoch: 0,
        base_sequence: 0,
        ..Default::default()
    };
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 10_000,
        partitions: vec![("once".into(), 0, batch(&values("r", 0..4), options))],
    };
    let Response::Produce(first) = connection.call(&request).unwrap() else {
        panic!()
    };
    broker.stop();
    broker.restart();
    let mut connection = broker.connect();
    let Response::Produce(retry) = connection.call(&request).unwrap() else {
        panic!()
    };
    assert_eq!(retry[0].error, None);
    assert_eq!(retry[0].offset, first[0].offset);
    assert_eq!(consume_all(&mut connection, "once", 0, 0).len(), 4);
}

#[test]
fn a_long_poll_wakes_when_data_arrives() {
    const LONG_POLL_WAIT_MS: u32 = 60_000;
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "waiting", 2);
    let mut ends = [0u64; 2];
    for partition in 0..2u32 {
        let addr = broker.addr;
        let offsets = ends;
        let poller = std::thread::spawn(move || {
            let mut connection = shardlog_client::blocking::Connection::connect(addr).unwrap();
            let request = Request::Fetch {
                max_wait_ms: LONG_POLL_WAIT_MS,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: (0..2u32)
                    .map(|p| FetchPartition {
                        topic: "waiting".into(),
                        partition: p,
                        offset: offsets[p as usize],
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            };
            match connection.call(&request).unwrap() {
                Response::Fetch(partitions) => partitions,
                other => panic!("unexpected {other:?}"),
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let base = produce(&mut connection, "waiting", partition, &values("late", 0..2));
        let produced_at = std::time::Instant::now();
        let fetched = poller.join().unwrap();
        // Not a speed check: a fetch that was never woken answers only at
        // its max_wait, and half of it is far more than any wake-up takes.
        let waited = produced_at.elapsed();
        assert!(
            waited < Duration::from_millis(LONG_POLL_WAIT_MS as u64 / 2),
            "the fetch answered {waited:?} after the produce: the append did not wake it"
        );
        let woke = fetched.iter().find(|f| f.partition == partition).unwrap();
        assert!(
            !woke.records.is_empty(),
            "the fetch returned the new data instead of timing out"
        );
        assert_eq!(base, 0);
        ends[partition as usize] = 2;
    }
}

#[test]
fn reads_from_sealed_and_active_segments_without_the_cache() {
    let broker = Broker::start(2, &["--cache-bytes", "0", "--segment-bytes", "65536"]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "cold", 2);
    let big = |i: u32| vec![format!("{i:06}-{}", "v".repeat(1000))];
    for i in 0..300u32 {
        produce(&mut connection, "cold", i % 2, &big(i));
    }
    for partition in 0..2u32 {
        let records = consume_all(&mut connection, "cold", partition, 0);
        assert_eq!(records.len(), 150);
        for (n, (offset, value)) in records.iter().enumerate() {
            assert_eq!(*offset, n as u64);
            assert_eq!(value, &big(n as u32 * 2 + partition)[0]);
        }
        let segments = std::fs::read_dir(broker.data_dir().join("data/topics"))
            .unwrap()
            .flat_map(|t| std::fs::read_dir(t.unwrap().path().join(partition.to_string())).unwrap())
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert!(
            segments > 1,
            "the partition rolled, so reads crossed sealed segments"
        );
    }
}

#[test]
fn list_offsets_answers_earliest_latest_and_by_timestamp() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "times", 1);
    produce(&mut connection, "times", 0, &values("t", 0..10));
    let queries = vec![
        ("times".to_string(), 0, OffsetSpec::Earliest, 0),
        ("times".to_string(), 0, OffsetSpec::Latest, 0),
        (
            "times".to_string(),
            0,
            OffsetSpec::Timestamp,
            1_700_000_000_000,
        ),
        (
            "times".to_string(),
            0,
            OffsetSpec::Timestamp,
            1_800_000_000_000,
        ),
        ("missing".to_string(), 0, OffsetSpec::Latest, 0),
    ];
    let Response::ListOffsets(results) = connection.call(&Request::ListOffsets(queries)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        results.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 10, 0, -1, -1]
    );
    assert_eq!(
        results[4].error.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
}

#[test]
fn metrics_show_requests_latencies_and_offsets_of_every_shard() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "watched", 2);
    for partition in 0..2 {
        produce(&mut connection, "watched", partition, &values("m", 0..7));
        consume_all(&mut connection, "watched", partition, 0);
    }
    let text = broker.scrape_metrics();
    let value = |series: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    assert_eq!(
        value("shardlog_requests_total{shard=\"0\",api=\"produce\"}")
            + value("shardlog_requests_total{shard=\"1\",api=\"produce\"}"),
        2
    );
    assert!(value("shardlog_produce_latency_seconds_count") >= 2);
    assert!(value("shardlog_fetch_latency_seconds_count") >= 2);
    assert!(
        value("shardlog_flush_latency_seconds_count") >= 2,
        "flush = always synced each produce"
    );
    assert!(value("shardlog_bytes_in_total") > 0 && value("shardlog_bytes_out_total") > 0);
    assert!(text.contains("# TYPE shardlog_produce_latency_seconds histogram"));
    for partition in 0..2 {
        let shard_of = text.lines().find(|l| l.starts_with(&format!("shardlog_partition_log_end_offset{{topic=\"watched\",partition=\"{partition}\""))).unwrap();
        assert!(shard_of.ends_with(" 7"), "{shard_of}");
    }
    assert!(
        text.contains("shard=\"0\"") && text.contains("shard=\"1\""),
        "every shard reports"
    );
}

#[test]
fn the_broker_caps_fetches_whatever_the_client_asks() {
    const RESPONSE_MAX: usize = 1 << 20;
    const PARTITION_MAX: usize = 256 << 10;
    let broker = Broker::start(
        2,
        &[
            "--fetch-bytes-max",
            &RESPONSE_MAX.to_string(),
            "--fetch-partition-bytes-max",
            &PARTITION_MAX.to_string(),
        ],
    );
    let mut connection = broker.connect();
    create_topic(&mut connection, "wide", 6);
    let chunk: Vec<String> = (0..5)
        .map(|i| format!("{i}-{}", "w".repeat(10_000)))
        .collect();
    for partition in 0..6 {
        for _ in 0..20 {
            produce(&mut connection, "wide", partition, &chunk);
        }
    }
    let request = Request::Fetch {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: u32::MAX,
        partitions: (0..6)
            .map(|partition| FetchPartition {
                topic: "wide".into(),
                partition,
                offset: 0,
                max_bytes: u32::MAX,
            })
            .collect(),
    };
    let Response::Fetch(fetched) = connection.call(&request).unwrap() else {
        panic!("not a fetch")
    };
    let sizes: Vec<usize> = fetched.iter().map(|f| f.records.len()).collect();
    assert!(
        sizes.iter().all(|s| *s <= PARTITION_MAX),
        "each partition within its cap: {sizes:?}"
    );
    assert!(
        sizes.iter().sum::<usize>() <= RESPONSE_MAX,
        "the response within its cap: {sizes:?}"
    );
    assert!(sizes[..3].iter().all(|s| *s > 0), "{sizes:?}");
    assert!(fetched
        .iter()
        .all(|f| f.error.is_none() && f.high_watermark == 100));
}
