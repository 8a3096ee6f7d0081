//! The live cross-check against a real Kafka implementation, kafka-python
//! (`tests/kafka-python/cross_check.py`): batches built by shardlog-wire,
//! with every codec, are decoded by kafka-python with valid CRCs; sealed
//! segments written by a real broker are read whole by kafka-python's
//! `MemoryRecords`, every offset and value as produced.
//!
//! Needs `python3` with `pip install -r tests/kafka-python/requirements.txt`.
//! Without them the tests skip with a loud message, unless
//! `SHARDLOG_REQUIRE_KAFKA_PYTHON` is set (`.ci/run` sets it and installs
//! them), where a missing kafka-python fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use shardlog_client::codec;
use shardlog_client::protocol::{Acks, Request, Response};
use shardlog_tests::{create_topic, Broker};
use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, Compression, RecordHeaderRef};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka-python/cross_check.py")
}

/// True when python3 can import kafka-python and its codecs.
fn kafka_python_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import kafka, snappy, lz4.frame, zstandard"])
        .output();
    match probe {
        Ok(output) if output.status.success() => true,
        outcome => {
            let reason = match outcome {
                Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("SHARDLOG_REQUIRE_KAFKA_PYTHON").is_none(),
                "SHARDLOG_REQUIRE_KAFKA_PYTHON is set but kafka-python is missing: {reason}\n\
                 pip install -r tests/kafka-python/requirements.txt"
            );
            eprintln!(
                "\n!!! SKIPPED: the kafka-python cross-check needs python3 with \
                 `pip install -r tests/kafka-python/requirements.txt` ({})\n",
                reason.trim()
            );
            false
        }
    }
}

fn run_script(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn hex(bytes: Option<&[u8]>) -> serde_json::Value {
    bytes.map_or(json!(null), |b| {
        json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    })
}

type OwnedRecord = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Records with null and empty keys and values, headers and negative timestamp deltas.
fn records(count: usize) -> Vec<OwnedRecord> {
    (0..count)
        .map(|i| {
            let key = match i % 4 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(format!("key-{i}").into_bytes()),
            };
            let value = match i % 7 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(format!("value {i} ").repeat(i % 13 + 1).into_bytes()),
            };
            let headers = (0..i % 3)
                .map(|h| (format!("h{h}"), (h != 1).then(|| vec![h as u8; h])))
                .collect();
            (1_700_000_000_000 + (i as i64 % 11) - 5, key, value, headers)
        })
        .collect()
}

/// One batch of `records` with `codec`, and its manifest entry.
fn build(
    codec: Compression,
    producer: (i64, i16, i32),
    records: &[OwnedRecord],
) -> (Vec<u8>, serde_json::Value) {
    let (producer_id, producer_epoch, base_sequence) = producer;
    let options = BatchBuilderOptions {
        producer_id,
        producer_epoch,
        base_sequence,
        capacity_bytes: 0,
    };
    let mut builder = BatchBuilder::new(options);
    for (timestamp_ms, key, value, headers) in records {
        let headers: Vec<RecordHeaderRef<'_>> = headers
            .iter()
            .map(|(key, value)| RecordHeaderRef {
                key,
                value: value.as_deref(),
            })
            .collect();
        builder
            .append(*timestamp_ms, key.as_deref(), value.as_deref(), &headers)
            .unwrap();
    }
    let bytes = builder
        .finish_with(codec, |r| codec::compress(codec, r))
        .unwrap()
        .to_vec();
    let entry = json!({
        "file": format!("{}-{producer_id}.bin", codec.name()),
        "compression": codec.to_bits(),
        "producer_id": producer_id,
        "producer_epoch": producer_epoch,
        "base_sequence": base_sequence,
        "base_timestamp_ms": records[0].0,
        "max_timestamp_ms": records.iter().map(|r| r.0).max().unwrap(),
        "records_count": records.len(),
        "last_offset_delta": records.len() - 1,
        "records": records.iter().enumerate().map(|(offset, (ts, key, value, headers))| json!({
            "offset": offset,
            "timestamp_ms": ts,
            "key": hex(key.as_deref()),
            "value": hex(value.as_deref()),
            "headers": headers.iter().map(|(k, v)| json!([k, hex(v.as_deref())])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    (bytes, entry)
}

#[test]
fn kafka_python_decodes_batches_built_by_shardlog_wire() {
    if !kafka_python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    for codec in Compression::ALL {
        for (producer, count) in [((-1, -1, -1), 1), ((4242, 3, 1_000_000), 500)] {
            let (bytes, entry) = build(codec, producer, &records(count));
            std::fs::write(dir.path().join(entry["file"].as_str().unwrap()), bytes).unwrap();
            manifest.push(entry);
        }
    }
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = run_script(&["batches", dir.path().to_str().unwrap()]);
    eprintln!("{out}");
    assert!(out.contains("decoded 10 batches"), "{out}");
}

/// The value of the record at `offset`; `value_for` in cross_check.py is the same.
fn value_for(offset: u64) -> Vec<u8> {
    let mut value = format!("value-{offset:08}-").into_bytes();
    value.extend(std::iter::repeat_n(b'x', (offset % 50) as usize));
    value
}

/// Produces `batches` batches of `per_batch` records to `topic`/0, cycling
/// through every codec; returns the next offset.
fn produce_all_codecs(broker: &Broker, topic: &str, batches: u64, per_batch: u64) -> u64 {
    let mut connection = broker.connect();
    let mut next = 0u64;
    for n in 0..batches {
        let codec = Compression::ALL[n as usize % Compression::ALL.len()];
        let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
        for offset in next..next + per_batch {
            let value = value_for(offset);
            builder
                .append(1_700_000_000_000 + offset as i64, None, Some(&value), &[])
                .unwrap();
        }
        let data = builder
            .finish_with(codec, |r| codec::compress(codec, r))
            .unwrap()
            .freeze();
        let request = Request::Produce {
            acks: Acks::All,
            timeout_ms: 30_000,
            partitions: vec![(topic.into(), 0, data)],
        };
        match connection.call(&request).expect("produce") {
            Response::Produce(results) => {
                assert_eq!(results[0].error, None);
                assert_eq!(results[0].offset, next as i64, "offsets follow the batches");
            }
            other => panic!("unexpected {other:?}"),
        }
        next += per_batch;
    }
    next
}

fn segment_files(broker: &Broker, topic: &str) -> Vec<PathBuf> {
    let topics = broker.data_dir().join("data/topics");
    let dir = std::fs::read_dir(&topics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{topic}-"))
        })
        .expect("the topic's directory")
        .join("0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn kafka_python_reads_sealed_segments_of_a_real_broker_whole() {
    if !kafka_python_available() {
        return;
    }
    // The smallest segments the broker allows, and no fdatasync per produce:
    // the segments are the same, and the test is quicker.
    let mut broker = Broker::start(1, &["--segment-bytes", "65536", "--flush", "never"]);
    create_topic(&mut broker.connect(), "kp", 1);
    let produced = produce_all_codecs(&broker, "kp", 300, 40);
    broker.stop();
    let logs = segment_files(&broker, "kp");
    assert!(logs.len() >= 3, "the log rolled: {logs:?}");
    // Every segment but the last is sealed; the last is the active one.
    let sealed = &logs[..logs.len() - 1];
    let mut args = vec!["segment"];
    args.extend(sealed.iter().map(|p| p.to_str().unwrap()));
    let out = run_script(&args);
    eprintln!("{out}");
    let next: u64 = out
        .rsplit("next offset ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        next > 0 && next < produced,
        "the sealed segments hold a prefix: {out}"
    );
    let active_base: u64 = logs[logs.len() - 1]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert_eq!(
        next, active_base,
        "the sealed segments end where the active one starts"
    );
}
