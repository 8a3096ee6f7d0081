#!/usr/bin/env python3
"""Writes golden Kafka RecordBatch v2 vectors with kafka-python.

Each vector is one batch built by kafka-python's own builder
(kafka.record.default_records.DefaultRecordBatchBuilder, the one its
producer uses), written to vectors/<name>.bin, and read back with its
reader (kafka.record.MemoryRecords) to check that it says what was put in.
vectors/manifest.json describes every vector: the builder's inputs and the
header fields kafka-python's reader decodes. `cargo test -p shardlog-client
--test kafka_vectors` decodes the files with shardlog-wire and checks every
field against the manifest, and rebuilds the uncompressed ones with
shardlog-wire's BatchBuilder to compare them byte for byte. No Python is
needed for that; only to make the vectors again:

    pip install -r tests/kafka-python/requirements.txt
    python3 tests/kafka-python/make_vectors.py     # rewrites tests/kafka-python/vectors/

Uncompressed vectors are deterministic; compressed ones depend on the codec
libraries' versions (pinned in requirements.txt) and gzip's header time,
which this script fixes at 0, so a rerun with the pinned versions changes
nothing.
"""

import gzip
import json
import os
import sys

import kafka.codec
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "vectors")
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
BASE_MS = 1_700_000_000_000


def fixed_time_gzip(payload, compresslevel=None):
    # gzip stores the time in its header; 0 keeps the vectors reproducible.
    return gzip.compress(payload, compresslevel=compresslevel or 9, mtime=0)


kafka.codec.gzip_encode = fixed_time_gzip
import kafka.record.default_records as default_records  # noqa: E402

default_records.gzip_encode = fixed_time_gzip


def rec(ts, key, value, headers=()):
    return {"timestamp_ms": ts, "key": key, "value": value, "headers": list(headers)}


def compressible(i):
    return ("event-%05d " % i + "payload " * (i % 7)).encode()


def vectors():
    """(name, codec, (producer_id, epoch, base_sequence), records)"""
    yield "null-and-empty", "none", (-1, -1, -1), [
        rec(BASE_MS, None, None),
        rec(BASE_MS + 1, b"", b""),
        rec(BASE_MS + 2, b"k", None),
        rec(BASE_MS + 3, None, b"v"),
        rec(BASE_MS + 4, b"", None),
        rec(BASE_MS + 5, None, b""),
    ]
    yield "headers", "none", (-1, -1, -1), [
        rec(BASE_MS, b"k1", b"v1", [("trace-id", b"0123456789abcdef")]),
        rec(BASE_MS, b"k2", b"v2", [("empty", b""), ("null", None), ("caf\u00e9", b"\x00\xff")]),
        rec(BASE_MS, None, None, [("only-headers", b"x")] * 3),
        rec(BASE_MS, b"k4", b"v4", []),
    ]
    yield "negative-timestamp-deltas", "none", (-1, -1, -1), [
        rec(BASE_MS, b"a", b"first"),
        rec(BASE_MS - 1, b"b", b"one ms earlier"),
        rec(BASE_MS - 86_400_000, b"c", b"a day earlier"),
        rec(BASE_MS + 5, b"d", b"later: the max"),
        rec(0, b"e", b"the epoch"),
    ]
    yield "one-record", "none", (-1, -1, -1), [rec(BASE_MS, b"key", b"value")]
    yield "thousand-records", "none", (-1, -1, -1), [
        rec(BASE_MS + i % 17 - 8, None if i % 5 == 0 else b"key-%d" % i, bytes([i % 256]) * (i % 150))
        for i in range(1000)
    ]
    yield "large-value", "none", (-1, -1, -1), [
        rec(BASE_MS, b"big", bytes(range(256)) * 300),  # 76,800 bytes: three-byte varints
        rec(BASE_MS + 1, b"small", b"s"),
    ]
    yield "idempotent", "none", (123_456_789_012, 7, 2_000_000_000), [
        rec(BASE_MS + i, b"p", b"sequence %d" % i) for i in range(5)
    ]
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        yield codec, codec, (-1, -1, -1), [
            rec(BASE_MS + i, None if i % 3 == 0 else b"k%d" % i, compressible(i),
                [("h", b"%d" % i)] if i % 4 == 0 else [])
            for i in range(200)
        ]
        yield codec + "-idempotent-1000", codec, (99, 1, 5), [
            rec(BASE_MS - i, b"key", compressible(i)) for i in range(1000)
        ]


def build(codec, producer, records):
    producer_id, epoch, sequence = producer
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODECS[codec], is_transactional=False,
        producer_id=producer_id, producer_epoch=epoch, base_sequence=sequence,
        batch_size=16 * 1024 * 1024)
    for offset, r in enumerate(records):
        metadata = builder.append(offset, timestamp=r["timestamp_ms"], key=r["key"],
                                  value=r["value"], headers=r["headers"])
        assert metadata is not None, "the batch has room"
    return bytes(builder.build())


def read_back(data, records):
    """kafka-python's reader: the batch it sees, checked against the input."""
    batches = list(MemoryRecords(data))
    assert len(batches) == 1
    batch = batches[0]
    assert batch.validate_crc(), "kafka-python accepts the CRC"
    decoded = list(batch)
    assert len(decoded) == len(records)
    for offset, (got, want) in enumerate(zip(decoded, records)):
        assert got.offset == offset
        assert got.timestamp == want["timestamp_ms"]
        assert got.key == want["key"] and got.value == want["value"]
        assert [(k, v) for k, v in got.headers] == [(k, v) for k, v in want["headers"]]
    return batch


def hexed(b):
    return None if b is None else b.hex()


def main():
    if not all([kafka.codec.has_snappy(), kafka.codec.has_lz4(), kafka.codec.has_zstd()]):
        sys.exit("install the codecs: pip install -r tests/kafka-python/requirements.txt")
    os.makedirs(OUT, exist_ok=True)
    manifest = {"kafka_python": __import__("kafka").__version__, "vectors": []}
    for name, codec, producer, records in vectors():
        data = build(codec, producer, records)
        batch = read_back(data, records)
        assert batch.compression_type == CODECS[codec], f"{name}: kafka-python kept it compressed"
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
        manifest["vectors"].append({
            "name": name,
            "file": name + ".bin",
            "compression": codec,
            "header": {
                "base_offset": batch.base_offset,
                "length_bytes": len(data),
                "partition_leader_epoch": batch.leader_epoch,
                "magic": batch.magic,
                "crc": batch.crc,
                "attributes": batch.attributes,
                "last_offset_delta": batch.last_offset_delta,
                "base_timestamp_ms": batch.first_timestamp,
                "max_timestamp_ms": batch.max_timestamp,
                "producer_id": batch.producer_id,
                "producer_epoch": batch.producer_epoch,
                "base_sequence": batch.base_sequence,
                "records_count": batch.records_count,
            },
            "records": [{
                "offset_delta": i,
                "timestamp_ms": r["timestamp_ms"],
                "key": hexed(r["key"]),
                "value": hexed(r["value"]),
                "headers": [[k, hexed(v)] for k, v in r["headers"]],
            } for i, r in enumerate(records)],
        })
        print(f"{name}: {len(data)} bytes, {len(records)} records, {codec}")
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        # One vector per line: diffs stay readable, the file small.
        lines = [json.dumps(v, separators=(",", ":")) for v in manifest["vectors"]]
        f.write('{"kafka_python":%s,"vectors":[\n' % json.dumps(manifest["kafka_python"]))
        f.write(",\n".join(lines))
        f.write("\n]}\n")


if __name__ == "__main__":
    main()
