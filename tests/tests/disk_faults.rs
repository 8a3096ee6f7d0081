//! A failing disk, end to end: the broker is built with the engine's fault
//! injection and armed through `SHARDLOG_FAULTS`, so one write or fdatasync
//! of one partition's segment fails with EIO as a real disk's would. The
//! partition is poisoned (refused writes with `PartitionPoisoned`, shown in
//! `topic describe` and `/metrics`), keeps serving reads, and comes back
//! with `shardlog topic recover` without a restart, with nothing
//! acknowledged lost and an idempotent retry stored once.

use std::process::Command;

use bytes::Bytes;
use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{Acks, Request, Response};
use shardlog_client::{BrokerError, ErrorCode};
use shardlog_tests::{binary, consume_all, create_topic, idempotent_batch, init_producer, Broker};

/// A batch of one record; `producer_id` -1 is not idempotent.
fn record(producer_id: i64, sequence: i32, value: &str) -> Bytes {
    idempotent_batch(producer_id, sequence, &[value.to_string()])
}

fn send(connection: &mut Connection, topic: &str, data: Bytes) -> Result<i64, BrokerError> {
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 30_000,
        partitions: vec![(topic.into(), 0, data)],
    };
    match connection.call(&request).expect("produce") {
        Response::Produce(mut results) => {
            let result = results.remove(0);
            result.error.map_or(Ok(result.offset), Err)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn cli(broker: &Broker, args: &[&str]) -> String {
    let output = Command::new(binary("shardlog"))
        .arg("--broker")
        .arg(broker.addr.to_string())
        .args(args)
        .output()
        .expect("run shardlog");
    assert!(
        output.status.success(),
        "shardlog {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Produces records until one fails; returns what was acknowledged
/// (offset, value) and the failed record's (sequence, value, error).
fn produce_until_failure(
    connection: &mut Connection,
    topic: &str,
    producer: i64,
) -> (Vec<(u64, String)>, (i32, String, BrokerError)) {
    let mut acknowledged = Vec::new();
    for sequence in 0..1_000 {
        let value = format!("{topic}-{sequence}");
        match send(connection, topic, record(producer, sequence, &value)) {
            Ok(offset) => acknowledged.push((offset as u64, value)),
            Err(error) => return (acknowledged, (sequence, value, error)),
        }
    }
    panic!("the armed fault never fired");
}

fn poisoned_then_recovered(op: &str) {
    let topic = format!("fragile-{op}");
    let spec = format!("{op}:eio:path=/{topic}-:after=5:count=1");
    let broker = Broker::start_with_env(1, &[], &[("SHARDLOG_FAULTS", &spec)]);
    let mut connection = broker.connect();
    create_topic(&mut connection, &topic, 1);
    create_topic(&mut connection, "sturdy", 1);
    let producer = init_producer(&mut connection);
    let (mut acknowledged, (sequence, value, error)) =
        produce_until_failure(&mut connection, &topic, producer);
    assert!(acknowledged.len() >= 2, "{acknowledged:?}");
    assert_eq!(error.code, ErrorCode::PartitionPoisoned, "{error:?}");
    assert!(error.code.is_retriable(), "producers wait for recovery");

    // Poisoned: writes refused, reads served, the state shown; others unaffected.
    let again = send(&mut connection, &topic, record(producer, sequence, &value));
    assert_eq!(again.unwrap_err().code, ErrorCode::PartitionPoisoned);
    assert_eq!(
        consume_all(&mut connection, &topic, 0, 0),
        acknowledged,
        "reads of a poisoned partition go on"
    );
    let other = record(-1, -1, "unaffected");
    assert!(send(&mut connection, "sturdy", other).is_ok());
    let described = cli(&broker, &["topic", "describe", &topic]);
    assert!(described.contains("poisoned"), "{described}");
    let metrics = broker.scrape_metrics();
    let status_line = format!("shardlog_partition_status{{topic=\"{topic}\",partition=\"0\"");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&status_line) && l.ends_with(" 1")),
        "{metrics}"
    );

    // Recovered without a restart.
    let recovered = cli(&broker, &["topic", "recover", &topic, "--partition", "0"]);
    assert!(recovered.contains("partition 0: recovered"), "{recovered}");
    let described = cli(&broker, &["topic", "describe", &topic]);
    assert!(
        !described.contains("poisoned") && described.contains("online"),
        "{described}"
    );
    // The retry of the batch whose append failed is stored at most once:
    // if its bytes survived the rescan, the retry gets their offset.
    let offset = send(&mut connection, &topic, record(producer, sequence, &value))
        .expect("the retry after recovery") as u64;
    acknowledged.push((offset, value));
    for next in sequence + 1..sequence + 4 {
        let value = format!("{topic}-{next}");
        let offset = send(&mut connection, &topic, record(producer, next, &value))
            .expect("writes go on after recovery");
        acknowledged.push((offset as u64, value));
    }
    assert_eq!(
        consume_all(&mut connection, &topic, 0, 0),
        acknowledged,
        "every acknowledged record, once, in order, at its offset"
    );
}

#[test]
fn a_failed_fdatasync_poisons_the_partition_until_it_is_recovered() {
    poisoned_then_recovered("sync");
}

#[test]
fn a_failed_write_poisons_the_partition_until_it_is_recovered() {
    poisoned_then_recovered("write");
}

/// A base offset damaged on disk in a sealed segment (outside the CRC, so
/// only the read path's own checks can see it): reads of it are answered
/// with `CorruptLog`, the partition shows as corrupt, and the broker and
/// every other partition go on.
#[test]
fn damaged_data_on_disk_is_an_error_answer_and_a_corrupt_partition_not_a_crash() {
    let mut broker = Broker::start(1, &["--segment-bytes", "65536"]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "damaged", 1);
    create_topic(&mut connection, "fine", 1);
    for i in 0..60 {
        let value = format!("{i}-{}", "d".repeat(4000));
        send(&mut connection, "damaged", record(-1, -1, &value)).expect("produce");
    }
    drop(connection);
    broker.stop();
    let segment = std::fs::read_dir(broker.data_dir().join("data/topics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("damaged-")
        })
        .expect("the topic's directory")
        .join("0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).expect("the first, sealed segment");
    let second = shardlog_wire::batch::peek_length_bytes(&bytes).unwrap() as usize;
    assert!(second < bytes.len(), "the segment holds several batches");
    shardlog_wire::batch::set_base_offset(&mut bytes[second..], 1 << 40);
    std::fs::write(&segment, &bytes).unwrap();

    broker.restart();
    let mut connection = broker.connect();
    let mut corrupt = None;
    let mut offset = 0u64;
    for _ in 0..100 {
        let request = Request::Fetch {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![shardlog_client::protocol::FetchPartition {
                topic: "damaged".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
            }],
        };
        let Response::Fetch(mut fetched) = connection.call(&request).expect("an answer") else {
            panic!("not a fetch response")
        };
        let fetched = fetched.remove(0);
        if let Some(error) = fetched.error {
            corrupt = Some(error);
            break;
        }
        let batches = shardlog_wire::batch::BatchIter::new(
            fetched.records,
            shardlog_wire::batch::BatchLimits::default(),
        );
        let next = batches
            .map(|b| b.expect("a batch").header().next_offset())
            .last();
        offset = next.expect("data before the damage");
    }
    let corrupt = corrupt.expect("the damaged batch is refused");
    assert_eq!(corrupt.code, ErrorCode::CorruptLog, "{corrupt:?}");
    assert!(broker.is_running(), "the broker is still up");
    let described = cli(&broker, &["topic", "describe", "damaged"]);
    assert!(described.contains("corrupt"), "{described}");
    let metrics = broker.scrape_metrics();
    let counted = metrics.lines().any(|l| {
        l.starts_with("shardlog_partition_corrupt_reads_total{topic=\"damaged\"")
            && !l.ends_with(" 0")
    });
    assert!(counted, "{metrics}");
    send(&mut connection, "fine", record(-1, -1, "still fine")).expect("others go on");
    assert_eq!(consume_all(&mut connection, "fine", 0, 0).len(), 1);
}
