use super::*;
use proptest::prelude::*;

type Owned = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn build(records: &[Owned], options: BatchBuilderOptions) -> bytes::BytesMut {
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
    builder.finish().unwrap()
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
    fn any_bit_flip_after_the_crc_field_is_caught(
        records in proptest::collection::vec(record_strategy(), 1..5),
        flip_seed: usize,
        bit in 0u8..8,
    ) {
        let mut bytes = build(&records, BatchBuilderOptions::default());
        let at = header::CRC_START + flip_seed % (bytes.len() - header::CRC_START);
        bytes[at] ^= 1 << bit;
        prop_assert!(validate(&bytes, &BatchLimits::default()).is_err());
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
        batch_bytes_max: 65,
        ..limits
    };
    assert!(matches!(
        validate(&good, &tight),
        Err(Error::TooLarge { .. })
    ));
    let mut magic = good.clone();
    magic[20] = 9;
    assert!(matches!(
        validate(&magic, &limits),
        Err(Error::UnsupportedMagic { magic: 9, .. })
    ));
    let mut attributes = good.clone();
    attributes[22] = 0b111;
    assert!(matches!(
        validate(&attributes, &limits),
        Err(Error::InvalidAttributes { .. })
    ));
    let mut reserved = good.clone();
    reserved[63] = 1;
    assert!(matches!(
        validate(&reserved, &limits),
        Err(Error::ReservedNotZero)
    ));
    let mut count = good.clone();
    count[28] = 2;
    assert!(matches!(
        validate(&count, &limits),
        Err(Error::CountMismatch { .. })
    ));
    let mut crc = good.clone();
    crc[good.len() - 1] ^= 0xff;
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
