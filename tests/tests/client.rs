//! End-to-end tests of the SDK and the `shardlog` CLI against the real broker.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardlog_client::{
    Admin, Compression, Consumer, ConsumerConfig, ConsumerRecord, Error, NewTopic, Offset,
    OffsetReset, Producer, ProducerConfig, ProducerRecord,
};
use shardlog_tests::{binary, client_config, runtime, Broker};

async fn consume_everything(broker: &Broker, topic: &str) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(ConsumerConfig {
        client: client_config(broker),
        max_wait: Duration::from_millis(50),
        ..Default::default()
    });
    consumer.assign_all(topic, Offset::Earliest).await.unwrap();
    let admin = Admin::new(client_config(broker));
    let ends: u64 = admin
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark as u64)
        .sum();
    let mut records = Vec::new();
    while (records.len() as u64) < ends {
        records.extend(consumer.poll().await.unwrap());
    }
    records
}

fn value_of(record: &ConsumerRecord) -> String {
    String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()
}

#[test]
fn order_per_partition_holds_with_many_batches_in_flight() {
    let broker = Broker::start(2, &[]);
    runtime().block_on(async {
        Admin::new(client_config(&broker))
            .create_topic(NewTopic::new("ordered", 4))
            .await
            .unwrap();
        let config = ProducerConfig {
            client: client_config(&broker),
            batch_size: 1024,
            linger: Duration::from_millis(1),
            ..Default::default()
        };
        let producer = Producer::new(config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..4000u32 {
            let key = format!("key-{}", i % 16);
            let record = ProducerRecord::new("ordered", format!("{key}:{i:06}")).key(key);
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        let mut offsets = HashMap::new();
        for delivery in deliveries {
            let delivered = delivery.await.unwrap();
            let previous = offsets.insert(delivered.partition, delivered.offset.unwrap());
            assert!(
                previous.is_none_or(|p| p < delivered.offset.unwrap()),
                "offsets grow in send order per partition"
            );
        }
        producer.close().await.unwrap();
        let records = consume_everything(&broker, "ordered").await;
        assert_eq!(records.len(), 4000);
        let mut last_per_key: BTreeMap<String, u32> = BTreeMap::new();
        let mut partition_of_key: HashMap<String, u32> = HashMap::new();
        for record in &records {
            let value = value_of(record);
            let (key, seq) = value.split_once(':').unwrap();
            let seq: u32 = seq.parse().unwrap();
            if let Some(previous) = last_per_key.insert(key.to_string(), seq) {
                assert!(
                    previous < seq,
                    "records of {key} arrive in the order they were sent"
                );
            }
            assert_eq!(
                *partition_of_key
                    .entry(key.to_string())
                    .or_insert(record.partition),
                record.partition,
                "a key stays on one partition"
            );
        }
    });
}

#[test]
fn pipelined_batches_stay_in_sequence_when_connections_are_contended() {
    // Partitions share one connection per shard with 4 requests in flight,
    // and tiny batches keep every partition's sender busy: senders queue for
    // the connection all the time. A batch that overtook the one before it
    // on the wire would be refused for good (OutOfOrderSequence), and its
    // records would fail.
    let broker = Broker::start(2, &[]);
    runtime().block_on(async {
        Admin::new(client_config(&broker))
            .create_topic(NewTopic::new("contended", 8))
            .await
            .unwrap();
        let mut client = client_config(&broker);
        client.max_in_flight_per_connection = 4;
        let config = ProducerConfig {
            client,
            batch_size: 1024,
            linger: Duration::from_millis(1),
            ..Default::default()
        };
        let producer = Producer::new(config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..30_000u32 {
            let record = ProducerRecord::new("contended", vec![b'x'; 200]).key(i.to_string());
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.expect("every record is stored");
        }
        producer.close().await.unwrap();
        assert_eq!(consume_everything(&broker, "contended").await.len(), 30_000);
    });
}

#[test]
fn callbacks_run_once_per_record_and_linger_seals_a_lone_batch() {
    let broker = Broker::start(2, &[]);
    runtime().block_on(async {
        Admin::new(client_config(&broker))
            .create_topic(NewTopic::new("called-back", 3))
            .await
            .unwrap();
        let config = ProducerConfig {
            client: client_config(&broker),
            batch_size: 4096,
            linger: Duration::from_millis(20),
            ..Default::default()
        };
        let producer = Producer::new(config).await.unwrap();
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for i in 0..3000u32 {
            let outcomes = outcomes.clone();
            // Keyless: sticky partitioning spreads batches over the partitions.
            let record = ProducerRecord::new("called-back", format!("{i:06}"));
            producer
                .send_with_callback(record, move |result| {
                    let delivered = result.unwrap();
                    outcomes.lock().unwrap().push((
                        i,
                        delivered.partition,
                        delivered.offset.unwrap(),
                    ));
                })
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
        let outcomes = outcomes.lock().unwrap().clone();
        assert_eq!(outcomes.len(), 3000, "flush waits for every callback");
        let mut sent: Vec<u32> = outcomes.iter().map(|o| o.0).collect();
        sent.sort_unstable();
        assert_eq!(sent, (0..3000).collect::<Vec<_>>(), "each callback once");
        let partitions: std::collections::HashSet<u32> = outcomes.iter().map(|o| o.1).collect();
        assert_eq!(partitions.len(), 3, "sticky batches rotate over partitions");
        let mut last: HashMap<u32, (u32, u64)> = HashMap::new();
        for (i, partition, offset) in outcomes {
            if let Some((previous_i, previous_offset)) = last.insert(partition, (i, offset)) {
                assert!(
                    previous_i < i && previous_offset < offset,
                    "a partition's callbacks come in send order"
                );
            }
        }

        // One record, far below batch_size: only linger can seal its batch.
        let started = std::time::Instant::now();
        let lone = producer
            .send(ProducerRecord::new("called-back", "lone"))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "sealed by linger"
        );
        assert!(lone.offset.is_some());
        producer.close().await.unwrap();
        assert_eq!(consume_everything(&broker, "called-back").await.len(), 3001);
    });
}

#[test]
fn compressed_batches_round_trip() {
    let broker = Broker::start(2, &[]);
    runtime().block_on(async {
        for (topic, compression) in [("lz4", Compression::Lz4), ("zstd", Compression::Zstd)] {
            Admin::new(client_config(&broker))
                .create_topic(NewTopic::new(topic, 2))
                .await
                .unwrap();
            let config = ProducerConfig {
                client: client_config(&broker),
                compression,
                ..Default::default()
            };
            let producer = Producer::new(config).await.unwrap();
            let mut deliveries = Vec::new();
            for i in 0..2000u32 {
                deliveries.push(
                    producer
                        .enqueue(ProducerRecord::new(
                            topic,
                            format!("{topic} record {i} {}", "x".repeat(100)),
                        ))
                        .await
                        .unwrap(),
                );
            }
            for delivery in deliveries {
                delivery.await.unwrap();
            }
            producer.close().await.unwrap();
            let mut values: Vec<String> = consume_everything(&broker, topic)
                .await
                .iter()
                .map(value_of)
                .collect();
            values.sort();
            let mut expected: Vec<String> = (0..2000u32)
                .map(|i| format!("{topic} record {i} {}", "x".repeat(100)))
                .collect();
            expected.sort();
            assert_eq!(values, expected);
        }
    });
}

#[test]
fn idempotent_retries_across_a_broker_restart_store_each_record_once() {
    let mut broker = Broker::start(2, &[]);
    let rt = runtime();
    rt.block_on(Admin::new(client_config(&broker)).create_topic(NewTopic::new("exactly", 3)))
        .unwrap();
    let config = ProducerConfig {
        client: shardlog_client::ClientConfig {
            request_timeout: Duration::from_secs(2),
            ..client_config(&broker)
        },
        linger: Duration::from_millis(2),
        retry_backoff: Duration::from_millis(50),
        delivery_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let producer = rt.block_on(Producer::new(config)).unwrap();
    let sender = producer.clone();
    let sending = rt.spawn(async move {
        let mut deliveries = Vec::new();
        for i in 0..3000u32 {
            deliveries.push(
                sender
                    .enqueue(
                        ProducerRecord::new("exactly", format!("{i}")).key(format!("{}", i % 7)),
                    )
                    .await
                    .unwrap(),
            );
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut delivered = 0;
        for delivery in deliveries {
            delivery.await.unwrap();
            delivered += 1;
        }
        delivered
    });
    std::thread::sleep(Duration::from_millis(150));
    broker.kill9();
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    assert_eq!(
        rt.block_on(sending).unwrap(),
        3000,
        "every record is delivered despite the restart"
    );
    rt.block_on(producer.close()).unwrap();
    let records = rt.block_on(consume_everything(&broker, "exactly"));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for record in &records {
        *counts.entry(value_of(record)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3000, "no record is missing");
    assert!(
        counts.values().all(|c| *c == 1),
        "no record is stored twice"
    );
}

#[test]
fn send_to_a_stopped_broker_fails_with_a_typed_error() {
    let mut broker = Broker::start(1, &[]);
    runtime().block_on(async {
        Admin::new(client_config(&broker)).create_topic(NewTopic::new("gone", 1)).await.unwrap();
        let config = ProducerConfig {
            client: shardlog_client::ClientConfig { request_timeout: Duration::from_millis(500), ..client_config(&broker) },
            delivery_timeout: Duration::from_secs(2),
            retry_backoff: Duration::from_millis(100),
            ..Default::default()
        };
        let producer = Producer::new(config).await.unwrap();
        producer.send(ProducerRecord::new("gone", "first")).await.unwrap();
        broker.stop();
        let outcome = producer.send(ProducerRecord::new("gone", "second")).await;
        assert!(matches!(outcome, Err(Error::DeliveryTimeout { ref topic, partition: 0, .. }) if topic == "gone"), "{outcome:?}");
    });
}

#[test]
fn seek_by_timestamp_starts_at_the_first_record_not_older() {
    let broker = Broker::start(2, &[]);
    runtime().block_on(async {
        Admin::new(client_config(&broker))
            .create_topic(NewTopic::new("timed", 1))
            .await
            .unwrap();
        let producer = Producer::new(ProducerConfig {
            client: client_config(&broker),
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..100i64 {
            producer
                .send(ProducerRecord::new("timed", format!("{i}")).timestamp_ms(1_000_000 + i * 10))
                .await
                .unwrap();
        }
        let mut consumer = Consumer::new(ConsumerConfig {
            client: client_config(&broker),
            ..Default::default()
        });
        consumer.assign("timed", &[0], Offset::Timestamp(1_000_000 + 425));
        let records = consumer.poll().await.unwrap();
        assert_eq!(records[0].offset, 43);
        assert_eq!(records[0].timestamp_ms, 1_000_430);
        consumer.seek("timed", 0, Offset::Timestamp(2_000_000));
        assert!(
            consumer.poll().await.unwrap().is_empty(),
            "a timestamp after every record starts at the end"
        );
        assert_eq!(consumer.position("timed", 0), Some(100));
        consumer.seek("timed", 0, Offset::At(98));
        assert_eq!(
            consumer
                .poll()
                .await
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect::<Vec<_>>(),
            vec![98, 99]
        );
    });
}

fn shardlog(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(binary("shardlog"))
        .args(args)
        .env("SHARDLOG_BROKER", broker.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

#[test]
fn the_cli_round_trips_100k_lines() {
    let broker = Broker::start(2, &[]);
    let created = shardlog(
        &broker,
        &["topic", "create", "lines", "--partitions", "3"],
        None,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let lines: Vec<String> = (0..100_000)
        .map(|i| format!("k{}|line {i}", i % 50))
        .collect();
    let input = lines.join("\n") + "\n";
    let produced = shardlog(
        &broker,
        &[
            "produce",
            "lines",
            "--key-separator",
            "|",
            "--compression",
            "lz4",
        ],
        Some(input.as_bytes()),
    );
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(produced.status.success(), "{stderr}");
    assert_eq!(stderr.lines().last(), Some("acknowledged: 100000"));
    let consumed = shardlog(
        &broker,
        &[
            "consume",
            "lines",
            "--from-beginning",
            "--max-records",
            "100000",
            "--print-offsets",
        ],
        None,
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let stdout = String::from_utf8(consumed.stdout).unwrap();
    let mut values: Vec<&str> = stdout
        .lines()
        .map(|l| l.splitn(3, '\t').nth(2).unwrap())
        .collect();
    assert_eq!(values.len(), 100_000);
    values.sort_unstable();
    let mut expected: Vec<String> = (0..100_000).map(|i| format!("line {i}")).collect();
    expected.sort_unstable();
    assert_eq!(
        values,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let listed = shardlog(&broker, &["topic", "list"], None);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "lines");
    let described = shardlog(&broker, &["topic", "describe", "lines"], None);
    let text = String::from_utf8_lossy(&described.stdout);
    let total: u64 = text
        .lines()
        .skip(2)
        .map(|l| l.split('\t').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 100_000);
    let idle = shardlog(
        &broker,
        &["consume", "lines", "--idle-timeout-ms", "300"],
        None,
    );
    assert!(
        idle.status.success() && idle.stdout.is_empty(),
        "from the end, nothing new: exits after the idle timeout"
    );
}

#[test]
fn cli_errors_are_one_clear_line() {
    let mut broker = Broker::start(1, &[]);
    let unknown = shardlog(&broker, &["produce", "nope"], Some(b"x\n"));
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert_eq!(stderr.lines().last(), Some("acknowledged: 0"));
    let duplicate = shardlog(&broker, &["topic", "create", "twice"], None);
    assert!(duplicate.status.success());
    let again = shardlog(&broker, &["topic", "create", "twice"], None);
    assert!(!again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stderr).lines().count(), 1);
    broker.stop();
    let down = shardlog(&broker, &["topic", "list"], None);
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A one-partition topic whose old segments retention has deleted:
/// returns (log start offset, high watermark), with the log start above 0.
async fn aged_topic(broker: &Broker, topic: &str) -> (u64, u64) {
    let admin = Admin::new(client_config(broker));
    let mut spec = NewTopic::new(topic, 1);
    spec.segment_bytes = Some(64 * 1024);
    spec.retention_bytes = Some(1);
    admin.create_topic(spec).await.unwrap();
    let producer = Producer::new(ProducerConfig {
        client: client_config(broker),
        batch_size: 16 * 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let value = "v".repeat(1000);
    for i in 0..300 {
        producer
            .send(ProducerRecord::new(topic, format!("{i}:{value}")))
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    loop {
        let described = admin.describe_topic(topic).await.unwrap();
        let partition = &described.partitions[0];
        if partition.log_start_offset > 0 {
            return (
                partition.log_start_offset as u64,
                partition.high_watermark as u64,
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reset_consumer(broker: &Broker, reset: OffsetReset) -> Consumer {
    Consumer::new(ConsumerConfig {
        client: client_config(broker),
        max_wait: Duration::from_millis(50),
        auto_offset_reset: reset,
        ..Default::default()
    })
}

/// Polls until `consumer` has a position in `topic`/0 and returns it with what the polls returned.
async fn poll_until_positioned(consumer: &mut Consumer, topic: &str) -> (u64, Vec<ConsumerRecord>) {
    let mut records = Vec::new();
    loop {
        records.extend(consumer.poll().await.unwrap());
        if let Some(position) = consumer.position(topic, 0) {
            return (position, records);
        }
    }
}

#[test]
fn a_position_deleted_by_retention_resets_as_auto_offset_reset_says() {
    let broker = Broker::start(1, &["--retention-check-interval-ms", "50"]);
    runtime().block_on(async {
        let (log_start, end) = aged_topic(&broker, "aged").await;

        let mut earliest = reset_consumer(&broker, OffsetReset::Earliest);
        earliest.assign("aged", &[0], Offset::At(0));
        let mut records = Vec::new();
        while records.is_empty() {
            records.extend(earliest.poll().await.unwrap());
        }
        assert_eq!(records[0].offset, log_start, "earliest: from the first offset still stored");

        let mut latest = reset_consumer(&broker, OffsetReset::Latest);
        latest.assign("aged", &[0], Offset::At(0));
        let (position, records) = poll_until_positioned(&mut latest, "aged").await;
        assert!(records.is_empty());
        assert_eq!(position, end, "latest: at the end");

        let mut strict = reset_consumer(&broker, OffsetReset::None);
        strict.assign("aged", &[0], Offset::At(0));
        for _ in 0..2 {
            match strict.poll().await {
                Err(Error::OffsetOutOfRange { topic, partition, offset, .. }) => {
                    assert_eq!((topic.as_str(), partition, offset), ("aged", 0, 0));
                }
                other => panic!("none: a typed error, every poll until a seek, not {other:?}"),
            }
        }
        assert_eq!(strict.position("aged", 0), Some(0), "nothing moved");
        strict.seek("aged", 0, Offset::At(end + 10));
        assert!(
            matches!(strict.poll().await, Err(Error::OffsetOutOfRange { offset, .. }) if offset == end + 10),
            "past the end is out of range too"
        );
        strict.seek("aged", 0, Offset::At(log_start));
        assert_eq!(strict.poll().await.unwrap()[0].offset, log_start);

        let mut past_end = reset_consumer(&broker, OffsetReset::Earliest);
        past_end.assign("aged", &[0], Offset::At(end + 10));
        let mut records = Vec::new();
        while records.is_empty() {
            records.extend(past_end.poll().await.unwrap());
        }
        assert_eq!(records[0].offset, log_start);
    });

    let (log_start, end) = {
        let admin = Admin::new(client_config(&broker));
        let described = runtime().block_on(admin.describe_topic("aged")).unwrap();
        let p = &described.partitions[0];
        (p.log_start_offset as u64, p.high_watermark as u64)
    };
    let consume = |reset: &str| {
        let args = ["consume", "aged", "--offset", "0", "--offset-reset", reset];
        let mut args = args.to_vec();
        args.extend(["--print-offsets", "--idle-timeout-ms", "500"]);
        shardlog(&broker, &args, None)
    };
    let earliest = consume("earliest");
    assert!(
        earliest.status.success(),
        "{}",
        String::from_utf8_lossy(&earliest.stderr)
    );
    let stdout = String::from_utf8_lossy(&earliest.stdout);
    let offsets: Vec<u64> = stdout
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets.first(), Some(&log_start));
    assert_eq!(offsets.len() as u64, end - log_start);
    let latest = consume("latest");
    assert!(latest.status.success() && latest.stdout.is_empty());
    let none = consume("none");
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("out of range") && stderr.contains("auto_offset_reset is none"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let conflict = shardlog(
        &broker,
        &[
            "consume",
            "aged",
            "--from-beginning",
            "--offset-reset",
            "none",
        ],
        None,
    );
    assert_eq!(conflict.status.code(), Some(2), "a usage error");
}
