#!/usr/bin/env python3
"""The live cross-check against kafka-python, run by `cargo test -p
shardlog-tests --test kafka_python` (and so by `.ci/run`):

    cross_check.py batches DIR     # DIR/manifest.json + *.bin, written by shardlog-wire
    cross_check.py segment FILE... # sealed .log segments of one partition, in order

`batches`: kafka-python's MemoryRecords reads every batch that shardlog-wire
built (every codec), checks its CRC, and each header field and record must
be what the manifest says was put in.

`segment`: each sealed segment file, read whole as Kafka reads a log file,
must be a plain concatenation of valid batches (nothing left over: no
padding), its offsets continuous from the offset in its name and across
files, and every value exactly what the Rust side produced at that offset
(value_for below, mirrored in tests/tests/kafka_python.rs).
"""

import json
import os
import sys

from kafka.record.memory_records import MemoryRecords


def fail(message):
    sys.exit("kafka-python cross-check failed: " + message)


def unhex(text):
    return None if text is None else bytes.fromhex(text)


def value_for(offset):
    return b"value-%08d-" % offset + b"x" * (offset % 50)


def check_batches(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    for vector in manifest:
        with open(os.path.join(directory, vector["file"]), "rb") as f:
            data = f.read()
        records = MemoryRecords(data)
        batch = records.next_batch()
        if batch is None or records.has_next():
            fail(f"{vector['file']}: not exactly one batch")
        if not batch.validate_crc():
            fail(f"{vector['file']}: CRC does not validate")
        header = {
            "compression": batch.compression_type,
            "producer_id": batch.producer_id,
            "producer_epoch": batch.producer_epoch,
            "base_sequence": batch.base_sequence,
            "base_timestamp_ms": batch.first_timestamp,
            "max_timestamp_ms": batch.max_timestamp,
            "records_count": batch.records_count,
            "last_offset_delta": batch.last_offset_delta,
        }
        for key, got in header.items():
            if got != vector[key]:
                fail(f"{vector['file']}: {key} is {got}, shardlog-wire wrote {vector[key]}")
        decoded = list(batch)
        if len(decoded) != len(vector["records"]):
            fail(f"{vector['file']}: {len(decoded)} records, not {len(vector['records'])}")
        for got, want in zip(decoded, vector["records"]):
            expected = (want["offset"], want["timestamp_ms"], unhex(want["key"]), unhex(want["value"]),
                        [(k, unhex(v)) for k, v in want["headers"]])
            actual = (got.offset, got.timestamp, got.key, got.value, list(got.headers))
            if actual != expected:
                fail(f"{vector['file']}: record {want['offset']} reads {actual!r}, not {expected!r}")
    print(f"kafka-python decoded {len(manifest)} batches built by shardlog-wire")


def check_segments(paths):
    next_offset = None
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        base = int(os.path.basename(path).split(".")[0])
        if next_offset is not None and base != next_offset:
            fail(f"{path}: starts at {base}, the segment before ended at {next_offset}")
        next_offset = base
        records = MemoryRecords(data)
        batches = 0
        for batch in records:
            if not batch.validate_crc():
                fail(f"{path}: batch at offset {batch.base_offset} fails its CRC")
            for record in batch:
                if record.offset != next_offset:
                    fail(f"{path}: record at offset {record.offset}, expected {next_offset}")
                if record.value != value_for(record.offset):
                    fail(f"{path}: offset {record.offset} holds {record.value!r}")
                next_offset += 1
                total += 1
            batches += 1
        if records.valid_bytes() != len(data):
            fail(f"{path}: {len(data) - records.valid_bytes()} bytes after the last batch")
        print(f"{os.path.basename(path)}: {batches} batches, offsets {base}..{next_offset}")
    print(f"kafka-python read {total} records from {len(paths)} sealed segments, next offset {next_offset}")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "batches":
        check_batches(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "segment":
        check_segments(sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
