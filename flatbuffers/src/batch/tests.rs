use super::*;
use proptest::prelude::*;

type Owned = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn build(records: &[Owned], options: BatchBuilderOptions) -> bytes::BytesMut {
    build_with(records, options, Compression::None)
}

/// Builds with `compression`; the stand-in "codec" reverses the records
/// block, which is enough for checks that never decompress.
fn build_with(
    records: &[Owned],
    options: BatchBuilderOptions,
    compression: Compression,
) -> bytes::BytesMut {
    let mut builder = BatchBuilder::new(options);
    for (ts, key, value, headers) in records {
        let headers: Vec<_> = headers
            .iter()
            .map(|(k, v)| RecordHeaderRef {
                key: k.as_str(),
                value: v.as_deref(),
            })
            .collect();
        builder
            .append(*ts, key.as_deref(), value.as_deref(), &headers)
            .unwrap();
    }
    let reverse = |block: &[u8]| block.iter().rev().copied().collect();
    builder.finish_with(compression, reverse).unwrap()
}

fn record_strategy() -> impl Strategy<Value = Owned> {
    (
        any::<i64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(
            (
                "[a-z]{0,8}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ),
            0..3,
        ),
    )
}

proptest! {
    #[test]
    fn built_batches_round_trip(
        records in proptest::collection::vec(record_strategy(), 1..30),
        base_offset in 0u64..u64::MAX / 2,
        epoch: u32,
        producer_id: i64,
        sequence: i32,
    ) {
        let options = BatchBuilderOptions { producer_id, producer_epoch: 3, base_sequence: sequence, capacity_bytes: 0 };
        let mut bytes = build(&records, options);
        set_base_offset(&mut bytes, base_offset);
        set_leader_epoch(&mut bytes, epoch);
        let batch = Batch::parse(bytes.freeze(), &BatchLimits { batch_bytes_max: u32::MAX, record_count_max: 1000 }).unwrap();
        let header = batch.header();
        prop_assert_eq!(header.base_offset, base_offset);
        prop_assert_eq!(header.leader_epoch, epoch);
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(header.producer_id, producer_id);
        prop_assert_eq!(header.base_sequence, sequence);
        prop_assert_eq!(header.first_timestamp_ms, records[0].0);
        prop_assert_eq!(header.max_timestamp_ms, records.iter().map(|r| r.0).max().unwrap());
        let decoded: Vec<Record> = batch.records().unwrap().collect::<Result<_, _>>().unwrap();
        for (i, (record, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(record.offset, base_offset + i as u64);
            prop_assert_eq!(record.timestamp_ms, want.0);
            prop_assert_eq!(record.key.as_deref(), want.1.as_deref());
            prop_assert_eq!(record.value.as_deref(), want.2.as_deref());
            let headers: Vec<_> = record.headers.iter().map(|h| (h.key_str().to_string(), h.value.as_ref().map(|v| v.to_vec()))).collect();
            prop_assert_eq!(&headers, &want.3);
        }
    }

    #[test]
    fn any_bit_flip_from_the_batch_length_on_is_caught_except_in_the_stamped_epoch(
        records in proptest::collection::vec(record_strategy(), 1..5),
        compression in proptest::sample::select(Compression::ALL.to_vec()),
        flip_seed: usize,
        bit in 0u8..8,
    ) {
        // batchLength (8..12), magic (16), the CRC itself (17..21) and everything
        // it covers (21..): each flip is caught. baseOffset (0..8) and the leader
        // epoch (12..16) are the broker's to stamp and lie outside every check here.
        let mut bytes = build_with(&records, BatchBuilderOptions::default(), compression);
        let checked: Vec<usize> = (8..12).chain(16..bytes.len()).collect();
        let at = checked[flip_seed % checked.len()];
        bytes[at] ^= 1 << bit;
        prop_assert!(validate(&bytes, &BatchLimits::default()).is_err(), "flip at byte {} bit {}", at, bit);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate(&bytes, &BatchLimits::default());
        for batch in BatchIter::new(bytes::Bytes::from(bytes), BatchLimits::default()).flatten() {
            let _ = batch.records().map(|it| it.count());
        }
    }

    #[test]
    fn records_of_a_batch_with_valid_crc_but_garbage_body_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256), count in 1u32..8) {
        let mut bytes = vec![0u8; BATCH_HEADER_BYTES];
        bytes.extend_from_slice(&body);
        let fields = header::HeaderFields {
            length_bytes: bytes.len() as u32, attributes: 0, record_count: count,
            first_timestamp_ms: 0, max_timestamp_ms: 0, producer_id: -1, base_sequence: -1, producer_epoch: -1,
        };
        header::write_header(&mut bytes, &fields);
        if let Ok(batch) = Batch::parse(bytes::Bytes::from(bytes), &BatchLimits::default()) {
            let _ = batch.records().unwrap().count();
        }
    }
}

fn one_batch() -> bytes::BytesMut {
    build(
        &[(10, None, Some(b"v".to_vec()), vec![])],
        BatchBuilderOptions::default(),
    )
}

#[test]
fn base_offset_and_epoch_lie_outside_the_crc() {
    let mut bytes = one_batch();
    set_base_offset(&mut bytes, u64::MAX / 3);
    set_leader_epoch(&mut bytes, 77);
    assert!(validate(&bytes, &BatchLimits::default()).is_ok());
}

#[test]
fn each_failed_check_has_its_own_error() {
    let limits = BatchLimits::default();
    let good = one_batch();
    assert!(matches!(
        validate(&good[..10], &limits),
        Err(Error::Truncated { .. })
    ));
    let mut longer = good.to_vec();
    longer.push(0);
    assert!(matches!(
        validate(&longer, &limits),
        Err(Error::LengthMismatch { .. })
    ));
    let tight = BatchLimits {
        batch_bytes_max: 62,
        ..limits
    };
    assert!(matches!(
        validate(&good, &tight),
        Err(Error::TooLarge { .. })
    ));
    let mut negative = good.clone();
    negative[8] = 0x80;
    assert!(matches!(
        validate(&negative, &limits),
        Err(Error::LengthOutOfRange { .. })
    ));
    let mut magic = good.clone();
    magic[16] = 1;
    assert!(matches!(
        validate(&magic, &limits),
        Err(Error::UnsupportedMagic { magic: 1, .. })
    ));
    let mut attributes = good.clone();
    attributes[22] = 0b101; // codec 5 does not exist
    assert!(matches!(
        validate(&attributes, &limits),
        Err(Error::InvalidAttributes { .. })
    ));
    let mut high_bit = good.clone();
    high_bit[22] = 0x40; // bit 6: compaction's delete horizon
    assert!(matches!(
        validate(&high_bit, &limits),
        Err(Error::InvalidAttributes { .. })
    ));
    let mut count = good.clone();
    count[60] = 2;
    assert!(matches!(
        validate(&count, &limits),
        Err(Error::CountMismatch { .. })
    ));
    let mut order = good.clone();
    order[34] = 20; // baseTimestamp's low byte: 20 is after maxTimestamp 10
    assert!(matches!(
        validate(&order, &limits),
        Err(Error::TimestampOrder { .. })
    ));
    let mut crc = good.clone();
    crc[good.len() - 1] ^= 0xff; // inside the value: only the CRC tells
    assert!(matches!(
        validate(&crc, &limits),
        Err(Error::CrcMismatch { .. })
    ));
    let few = BatchLimits {
        record_count_max: 0,
        ..limits
    };
    assert!(matches!(
        validate(&good, &few),
        Err(Error::TooManyRecords { .. })
    ));
}

#[test]
fn record_count_is_checked_against_the_records() {
    // Two records in the body, but the header claims three: a valid CRC does not save it.
    let mut bytes = build(
        &[(1, None, None, vec![]), (2, None, None, vec![])],
        BatchBuilderOptions::default(),
    )
    .to_vec();
    let fields = header::HeaderFields {
        length_bytes: bytes.len() as u32,
        attributes: 0,
        record_count: 3,
        first_timestamp_ms: 1,
        max_timestamp_ms: 2,
        producer_id: -1,
        base_sequence: -1,
        producer_epoch: -1,
    };
    header::write_header(&mut bytes, &fields);
    assert!(matches!(
        validate(&bytes, &BatchLimits::default()),
        Err(Error::MalformedRecords { .. })
    ));
}

#[test]
fn compressed_batches_validate_but_do_not_decode_records() {
    let mut bytes = one_batch().to_vec();
    let fields = header::HeaderFields {
        length_bytes: bytes.len() as u32,
        attributes: Compression::Zstd.to_bits(),
        record_count: 1,
        first_timestamp_ms: 10,
        max_timestamp_ms: 10,
        producer_id: -1,
        base_sequence: -1,
        producer_epoch: -1,
    };
    header::write_header(&mut bytes, &fields);
    let batch = Batch::parse(bytes::Bytes::from(bytes), &BatchLimits::default()).unwrap();
    assert_eq!(batch.header().compression(), Compression::Zstd);
    assert!(matches!(
        batch.records(),
        Err(Error::Compressed { codec: "zstd" })
    ));
}

#[test]
fn empty_builder_refuses_to_finish() {
    assert_eq!(
        BatchBuilder::new(BatchBuilderOptions::default())
            .finish()
            .unwrap_err(),
        Error::EmptyBatch
    );
}

#[test]
fn size_is_known_before_finishing() {
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    let predicted = builder.record_size_bytes(5, Some(b"k"), Some(&[7; 1000]), &[]);
    builder
        .append(5, Some(b"k"), Some(&[7; 1000]), &[])
        .unwrap();
    assert_eq!(builder.size_bytes(), BATCH_HEADER_BYTES + predicted);
    assert_eq!(
        builder.finish().unwrap().len(),
        BATCH_HEADER_BYTES + predicted
    );
}

#[test]
fn iterator_stops_at_a_partial_tail() {
    let mut joined = one_batch().to_vec();
    joined.extend_from_slice(&one_batch());
    let whole = joined.len();
    joined.extend_from_slice(&one_batch()[..30]);
    let mut iter = BatchIter::new(bytes::Bytes::from(joined), BatchLimits::default());
    assert!(iter.next().unwrap().is_ok());
    assert!(iter.next().unwrap().is_ok());
    assert!(iter.next().is_none());
    assert_eq!(iter.remainder_bytes(), 30);
    assert!(whole > 0);
}

#[test]
fn errors_are_send_sync_and_lowercase() {
    fn send_sync<T: Send + Sync + std::error::Error>() {}
    send_sync::<Error>();
    let message = Error::EmptyBatch.to_string();
    assert!(message.chars().next().unwrap().is_lowercase());
}

#[test]
fn compressed_records_round_trip_through_the_hooks() {
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    for i in 0..10u8 {
        builder
            .append(i as i64, None, Some(&[i; 100]), &[])
            .unwrap();
    }
    // A stand-in codec: reversing the bytes is enough to prove the hooks are used.
    let reverse = |bytes: &[u8]| bytes.iter().rev().copied().collect::<Vec<u8>>();
    let encoded = builder.finish_with(Compression::Lz4, reverse).unwrap();
    let batch = Batch::parse(encoded.freeze(), &BatchLimits::default()).unwrap();
    assert_eq!(batch.header().compression(), Compression::Lz4);
    assert!(batch.records().is_err());
    let records = batch.records_with(|codec, block| {
        assert_eq!(codec, Compression::Lz4);
        Ok(reverse(block))
    });
    let values: Vec<_> = records
        .unwrap()
        .map(|r| r.unwrap().value.unwrap()[0])
        .collect();
    assert_eq!(values, (0..10).collect::<Vec<u8>>());
    let broken = batch.records_with(|_, block| Ok(block[1..].to_vec()));
    assert!(broken.is_err() || broken.unwrap().any(|r| r.is_err()));
}

#[test]
fn producer_fields_set_before_finishing_or_restamped_after_are_covered_by_the_crc() {
    let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
    builder.append(1, None, Some(b"v"), &[]).unwrap();
    builder.set_producer(42, 3, 1000);
    let set_before = builder.finish().unwrap();
    let mut restamped = one_batch();
    set_producer(&mut restamped, 42, 3, 1000);
    for bytes in [set_before, restamped] {
        let header = validate(&bytes, &BatchLimits::default()).unwrap();
        let fields = (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        );
        assert_eq!(fields, (42, 3, 1000));
    }
}

#[test]
fn header_fields_sit_where_kafka_puts_them_big_endian() {
    let mut builder = BatchBuilder::new(BatchBuilderOptions {
        producer_id: 0x0102_0304_0506_0708,
        producer_epoch: 0x0a0b,
        base_sequence: 0x0c0d_0e0f,
        capacity_bytes: 0,
    });
    builder.append(0x1122_3344, None, Some(b"v"), &[]).unwrap();
    builder.append(0x1122_3350, None, Some(b"w"), &[]).unwrap();
    let mut bytes = builder.finish().unwrap();
    set_base_offset(&mut bytes, 0x7766_5544_3322_1100);
    set_leader_epoch(&mut bytes, 0x0909_0909);
    let be = |at: usize, n: usize| bytes[at..at + n].to_vec();
    assert_eq!(be(0, 8), 0x7766_5544_3322_1100u64.to_be_bytes());
    assert_eq!(be(8, 4), ((bytes.len() - 12) as u32).to_be_bytes());
    assert_eq!(be(12, 4), 0x0909_0909u32.to_be_bytes());
    assert_eq!(bytes[16], 2, "magic");
    assert_eq!(be(17, 4), crc32c::crc32c(&bytes[21..]).to_be_bytes());
    assert_eq!(be(21, 2), [0, 0], "attributes");
    assert_eq!(be(23, 4), 1u32.to_be_bytes(), "lastOffsetDelta");
    assert_eq!(be(27, 8), 0x1122_3344u64.to_be_bytes());
    assert_eq!(be(35, 8), 0x1122_3350u64.to_be_bytes());
    assert_eq!(be(43, 8), 0x0102_0304_0506_0708u64.to_be_bytes());
    assert_eq!(be(51, 2), 0x0a0bu16.to_be_bytes());
    assert_eq!(be(53, 4), 0x0c0d_0e0fu32.to_be_bytes());
    assert_eq!(be(57, 4), 2u32.to_be_bytes(), "records count");
    // The first record, all zig-zag: length 7 (14), attributes 0, timestamp
    // delta 0, offset delta 0, null key (-1 = 1), value length 1 (2), 'v', no headers.
    assert_eq!(be(61, 8), vec![14, 0, 0, 0, 1, 2, b'v', 0]);
}

#[test]
fn a_batch_length_of_zero_reads_as_zero_padding_and_short_input_as_unknown() {
    assert_eq!(peek_length_bytes(&[0u8; 4096]), Some(0));
    assert_eq!(peek_length_bytes(&[0u8; 11]), None);
    let bytes = one_batch();
    assert_eq!(peek_length_bytes(&bytes), Some(bytes.len() as u32));
    let mut negative = bytes.to_vec();
    negative[8] = 0xff;
    assert_eq!(peek_length_bytes(&negative), Some(u32::MAX));
}

#[test]
fn attribute_bits_read_as_kafka_defines_them() {
    let mut bytes = one_batch().to_vec();
    for (bits, codec) in [
        (0u16, "none"),
        (1, "gzip"),
        (2, "snappy"),
        (3, "lz4"),
        (4, "zstd"),
    ] {
        let attributes = bits | 1 << 3 | 1 << 4 | 1 << 5;
        let fields = header::HeaderFields {
            length_bytes: bytes.len() as u32,
            attributes,
            record_count: 1,
            first_timestamp_ms: 10,
            max_timestamp_ms: 10,
            producer_id: -1,
            base_sequence: -1,
            producer_epoch: -1,
        };
        header::write_header(&mut bytes, &fields);
        let header = validate(&bytes, &BatchLimits::default()).unwrap();
        assert_eq!(header.compression().name(), codec);
        assert!(header.is_log_append_time());
        assert!(header.is_transactional());
        assert!(header.is_control());
    }
}

#[test]
fn valid_batches_keep_their_header_and_buffer() {
    let bytes = one_batch();
    let length = bytes.len();
    let valid = ValidBatch::check(bytes, &BatchLimits::default()).unwrap();
    assert_eq!(valid.header().record_count, 1);
    let (header, bytes) = valid.into_parts();
    assert_eq!(
        (header.length_bytes as usize, bytes.len()),
        (length, length)
    );
    let mut bad = one_batch();
    bad[length - 1] ^= 1;
    assert!(ValidBatch::check(bad, &BatchLimits::default()).is_err());
}
