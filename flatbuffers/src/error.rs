//! The one error type of `shardlog-wire`.

/// Everything that can be wrong with a batch that is being built or decoded.
///
/// Every variant names the check that failed, so that a broker can answer a
/// producer with a precise message and a consumer can report what it saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than a batch header or than the length field announces.
    #[error("batch truncated: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        /// Bytes the header or the length field asks for.
        needed_bytes: usize,
        /// Bytes that are actually there.
        available_bytes: usize,
    },
    /// The length field disagrees with the bytes handed over as one batch.
    #[error("batch length field says {length_bytes} bytes but the batch is {actual_bytes} bytes; send whole batches only")]
    LengthMismatch {
        /// The header's length field.
        length_bytes: u32,
        /// The size of the buffer.
        actual_bytes: usize,
    },
    /// The batch is larger than the configured maximum.
    #[error("batch of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes; send smaller batches")]
    TooLarge {
        /// The batch size.
        length_bytes: u32,
        /// The limit in force.
        limit_bytes: u32,
    },
    /// The format version byte is not one this build understands.
    #[error("unsupported batch magic {magic}; this build understands magic {expected}")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: u8,
        /// The magic byte this build writes.
        expected: u8,
    },
    /// Attribute bits that are reserved or a compression codec that does not exist.
    #[error("invalid batch attributes {attributes:#06x}")]
    InvalidAttributes {
        /// The attributes field.
        attributes: u16,
    },
    /// Kafka's batchLength field is negative or shorter than a header.
    #[error("batch length field {batch_length} is out of range: a batch holds at least its 61-byte header")]
    LengthOutOfRange {
        /// The batchLength field (bytes after it).
        batch_length: i32,
    },
    /// A batch must hold at least one record and its count must match the offset span.
    #[error(
        "batch record count {record_count} does not match last offset delta {last_offset_delta}"
    )]
    CountMismatch {
        /// The record count field.
        record_count: u32,
        /// The last offset delta field.
        last_offset_delta: u32,
    },
    /// More records than allowed in one batch.
    #[error("batch holds {record_count} records, more than the limit of {limit_count}")]
    TooManyRecords {
        /// The record count field.
        record_count: u32,
        /// The limit in force.
        limit_count: u32,
    },
    /// The maximum timestamp is below the first timestamp.
    #[error(
        "batch max timestamp {max_timestamp_ms} is before its first timestamp {first_timestamp_ms}"
    )]
    TimestampOrder {
        /// The first timestamp field.
        first_timestamp_ms: i64,
        /// The max timestamp field.
        max_timestamp_ms: i64,
    },
    /// The CRC32C over the batch does not match its header: the bytes were damaged.
    #[error("batch CRC32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}; the batch was corrupted in transit or on disk")]
    CrcMismatch {
        /// The CRC in the header.
        expected: u32,
        /// The CRC of the bytes.
        actual: u32,
    },
    /// The records section does not decode into exactly `record_count` records.
    #[error("batch records section is malformed: {reason}")]
    MalformedRecords {
        /// What was wrong, for the error message.
        reason: &'static str,
    },
    /// Records were asked for from a compressed batch; decompress it first.
    #[error("batch is compressed with {codec}; decompress it before reading records")]
    Compressed {
        /// The codec name.
        codec: &'static str,
    },
    /// A batch was finished with no record in it.
    #[error("a batch needs at least one record")]
    EmptyBatch,
    /// A record, header or batch would not fit the format's integer fields.
    #[error("{what} is too large for the batch format")]
    FieldOverflow {
        /// The field that overflowed.
        what: &'static str,
    },
}
