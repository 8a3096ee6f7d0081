//! Golden vectors from a real Kafka implementation: batches that
//! kafka-python's own builder wrote (`tests/kafka-python/make_vectors.py`,
//! which says how to rerun it), decoded here with shardlog-wire and the
//! SDK's codecs, every header field and every record checked against the
//! manifest the script wrote. The uncompressed ones are rebuilt with
//! shardlog-wire's `BatchBuilder` and must come out byte for byte the same.
//! No Python is needed to run this.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;
use shardlog_client::codec;
use shardlog_wire::batch::{
    Batch, BatchBuilder, BatchBuilderOptions, BatchHeader, BatchLimits, Compression, Record,
    RecordHeaderRef,
};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kafka-python/vectors")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors_dir().join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["vectors"].as_array().unwrap().clone()
}

fn name(vector: &Value) -> &str {
    vector["name"].as_str().unwrap()
}

fn file_bytes(vector: &Value) -> Vec<u8> {
    std::fs::read(vectors_dir().join(vector["file"].as_str().unwrap())).unwrap()
}

fn codec_of(vector: &Value) -> Compression {
    let wanted = vector["compression"].as_str().unwrap();
    Compression::ALL
        .into_iter()
        .find(|c| c.name() == wanted)
        .unwrap_or_else(|| panic!("unknown codec {wanted}"))
}

fn unhex(value: &Value) -> Option<Vec<u8>> {
    let text = value.as_str()?;
    let digit = |c: u8| (c as char).to_digit(16).unwrap() as u8;
    Some(
        text.as_bytes()
            .chunks(2)
            .map(|p| digit(p[0]) << 4 | digit(p[1]))
            .collect(),
    )
}

fn headers_of(record: &Value) -> Vec<(String, Option<Vec<u8>>)> {
    let pairs = record["headers"].as_array().unwrap();
    pairs
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_string(), unhex(&pair[1])))
        .collect()
}

fn limits() -> BatchLimits {
    BatchLimits {
        batch_bytes_max: 16 << 20,
        record_count_max: u32::MAX,
    }
}

fn check_header(name: &str, header: &BatchHeader, want: &Value) {
    let got = [
        ("base_offset", header.base_offset as i64),
        ("length_bytes", i64::from(header.length_bytes)),
        (
            "partition_leader_epoch",
            i64::from(header.leader_epoch as i32),
        ),
        ("magic", i64::from(header.magic)),
        ("crc", i64::from(header.crc32c)),
        ("attributes", i64::from(header.attributes as i16)),
        ("last_offset_delta", i64::from(header.last_offset_delta)),
        ("base_timestamp_ms", header.first_timestamp_ms),
        ("max_timestamp_ms", header.max_timestamp_ms),
        ("producer_id", header.producer_id),
        ("producer_epoch", i64::from(header.producer_epoch)),
        ("base_sequence", i64::from(header.base_sequence)),
        ("records_count", i64::from(header.record_count)),
    ];
    for (key, value) in got {
        let expected = want[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: {key}"));
        assert_eq!(value, expected, "{name}: header field {key}");
    }
}

fn check_records(name: &str, records: &[Record], want: &[Value]) {
    assert_eq!(records.len(), want.len(), "{name}: record count");
    for (index, (record, want)) in records.iter().zip(want).enumerate() {
        let at = format!("{name}: record {index}");
        let bytes = |b: &Option<Bytes>| b.as_deref().map(<[u8]>::to_vec);
        assert_eq!(
            record.offset,
            want["offset_delta"].as_u64().unwrap(),
            "{at}: offset"
        );
        assert_eq!(
            record.timestamp_ms,
            want["timestamp_ms"].as_i64().unwrap(),
            "{at}: time"
        );
        assert_eq!(bytes(&record.key), unhex(&want["key"]), "{at}: key");
        assert_eq!(bytes(&record.value), unhex(&want["value"]), "{at}: value");
        let headers: Vec<(String, Option<Vec<u8>>)> = record
            .headers
            .iter()
            .map(|h| (h.key_str().to_string(), bytes(&h.value)))
            .collect();
        assert_eq!(headers, headers_of(want), "{at}: headers");
    }
}

fn decode(name: &str, bytes: Vec<u8>) -> (Batch, Vec<Record>) {
    let batch = Batch::parse(Bytes::from(bytes), &limits())
        .unwrap_or_else(|e| panic!("{name}: shardlog-wire refuses the batch: {e}"));
    let records = batch
        .records_with(codec::decompress)
        .and_then(|records| records.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (batch, records)
}

#[test]
fn kafka_python_batches_decode_field_for_field() {
    let vectors = manifest();
    for codec in Compression::ALL {
        assert!(
            vectors.iter().any(|v| codec_of(v) == codec),
            "the vectors cover {codec:?}"
        );
    }
    for vector in &vectors {
        let (batch, records) = decode(name(vector), file_bytes(vector));
        check_header(name(vector), batch.header(), &vector["header"]);
        assert_eq!(
            batch.header().compression(),
            codec_of(vector),
            "{}",
            name(vector)
        );
        check_records(
            name(vector),
            &records,
            vector["records"].as_array().unwrap(),
        );
    }
}

/// Builds the vector's logical batch with shardlog-wire, compressed by the SDK's codec.
fn rebuild(vector: &Value, codec: Compression) -> Vec<u8> {
    let header = &vector["header"];
    let mut builder = BatchBuilder::new(BatchBuilderOptions {
        producer_id: header["producer_id"].as_i64().unwrap(),
        producer_epoch: header["producer_epoch"].as_i64().unwrap() as i16,
        base_sequence: header["base_sequence"].as_i64().unwrap() as i32,
        capacity_bytes: 0,
    });
    for record in vector["records"].as_array().unwrap() {
        let (key, value) = (unhex(&record["key"]), unhex(&record["value"]));
        let header_values = headers_of(record);
        let headers: Vec<RecordHeaderRef<'_>> = header_values
            .iter()
            .map(|(key, value)| RecordHeaderRef {
                key,
                value: value.as_deref(),
            })
            .collect();
        let timestamp_ms = record["timestamp_ms"].as_i64().unwrap();
        builder
            .append(timestamp_ms, key.as_deref(), value.as_deref(), &headers)
            .unwrap();
    }
    let built = builder.finish_with(codec, |records| codec::compress(codec, records));
    built.unwrap().to_vec()
}

#[test]
fn shardlog_builds_the_uncompressed_vectors_byte_for_byte() {
    let mut compared = 0;
    for vector in manifest()
        .iter()
        .filter(|v| codec_of(v) == Compression::None)
    {
        let kafka = file_bytes(vector);
        let ours = rebuild(vector, Compression::None);
        let first_difference = kafka.iter().zip(&ours).position(|(a, b)| a != b);
        assert_eq!(
            (ours.len(), first_difference),
            (kafka.len(), None),
            "{}: shardlog-wire's bytes (length, first differing byte) differ from kafka-python's",
            name(vector)
        );
        compared += 1;
    }
    assert!(compared >= 7, "every uncompressed vector compared");
}

#[test]
fn the_compressed_vectors_built_by_the_sdk_decode_to_the_same_records() {
    // Compressed bytes depend on the codec library, so here the records are
    // compared: the SDK's own compression of each vector decodes to kafka-python's input.
    for vector in manifest()
        .iter()
        .filter(|v| codec_of(v) != Compression::None)
    {
        let (batch, records) = decode(name(vector), rebuild(vector, codec_of(vector)));
        assert_eq!(batch.header().compression(), codec_of(vector));
        check_records(
            name(vector),
            &records,
            vector["records"].as_array().unwrap(),
        );
    }
}
