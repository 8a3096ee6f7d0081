//! Criterion micro-benchmarks of the record batch format alone: what a
//! producer pays to build a batch, what the broker pays to validate one on
//! produce, and what a consumer pays to decode every record of one.
//!
//! `cargo bench -p shardlog-wire --bench batch -- --noplot` (figures in
//! BENCHMARKS.md). Two record shapes: 1 KiB values (the harness's default,
//! where the CRC dominates) and 100-byte values with a header (where the
//! per-record varints and framing dominate).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardlog_wire::batch::{
    self, Batch, BatchBuilder, BatchBuilderOptions, BatchLimits, RecordHeaderRef,
};

/// One record shape: value size and whether each record carries a header.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    value_bytes: usize,
    with_header: bool,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "1KiB-values",
        value_bytes: 1024,
        with_header: false,
    },
    Shape {
        name: "100B-values+header",
        value_bytes: 100,
        with_header: true,
    },
];

const BATCH_BYTES: [usize; 2] = [64 * 1024, 1024 * 1024];

fn limits() -> BatchLimits {
    BatchLimits {
        batch_bytes_max: 4 * 1024 * 1024,
        record_count_max: u32::MAX,
    }
}

fn build(shape: Shape, batch_bytes: usize) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchBuilderOptions {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: 0,
        capacity_bytes: batch_bytes + 4096,
    });
    let value = vec![0x5au8; shape.value_bytes];
    let header = [RecordHeaderRef {
        key: "trace",
        value: Some(b"0123456789abcdef"),
    }];
    let headers: &[RecordHeaderRef<'_>] = if shape.with_header { &header } else { &[] };
    let mut key = 0u64;
    while builder.size_bytes() + shape.value_bytes + 64 <= batch_bytes {
        let timestamp_ms = 1_700_000_000_000 + (key % 50) as i64;
        builder
            .append(
                timestamp_ms,
                Some(&key.to_le_bytes()),
                Some(&value),
                headers,
            )
            .expect("the benchmark's records fit");
        key += 1;
    }
    builder
        .finish()
        .expect("the benchmark's batch holds records")
}

fn batch_format(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for shape in SHAPES {
        for batch_bytes in BATCH_BYTES {
            let label = format!("{}/{}KiB", shape.name, batch_bytes / 1024);
            let encoded = build(shape, batch_bytes).freeze();
            group.throughput(Throughput::Bytes(encoded.len() as u64));
            group.bench_function(format!("encode/{label}"), |b| {
                b.iter(|| build(shape, batch_bytes))
            });
            group.bench_function(format!("validate/{label}"), |b| {
                b.iter(|| batch::validate(black_box(&encoded), &limits()).expect("valid"))
            });
            group.bench_function(format!("decode/{label}"), |b| {
                b.iter(|| decode_all(black_box(&encoded)))
            });
        }
    }
    group.finish();
}

/// Validates the batch and touches every record's key, value and headers,
/// as a consumer does.
fn decode_all(encoded: &Bytes) -> usize {
    let batch = Batch::parse(encoded.clone(), &limits()).expect("valid");
    let mut bytes = 0usize;
    for record in batch.records().expect("uncompressed") {
        let record = record.expect("well formed");
        bytes += record.key.map_or(0, |k| k.len()) + record.value.map_or(0, |v| v.len());
        bytes += record.headers.len();
    }
    bytes
}

criterion_group!(benches, batch_format);
criterion_main!(benches);
