//! The 61-byte header of a record batch: Apache Kafka's RecordBatch v2
//! (magic 2), byte for byte, as Kafka's protocol guide and its
//! `DefaultRecordBatch` define it.
//!
//! ```text
//!  byte  field                 type  notes
//!  0     baseOffset            i64   stamped by the broker (outside the CRC)
//!  8     batchLength           i32   bytes after this field: length_bytes - 12
//!  12    partitionLeaderEpoch  i32   stamped by the broker (outside the CRC)
//!  16    magic                 i8    2
//!  17    crc                   u32   CRC-32C of bytes [21, length_bytes)
//!  21    attributes            i16   bits 0-2 compression, 3 timestamp type,
//!                                    4 transactional, 5 control; 6-15 zero
//!  23    lastOffsetDelta       i32   record count - 1
//!  27    baseTimestamp         i64   the first record's timestamp (ms)
//!  35    maxTimestamp          i64   >= baseTimestamp
//!  43    producerId            i64   -1 when not idempotent
//!  51    producerEpoch         i16   -1 when not idempotent
//!  53    baseSequence          i32   -1 when not idempotent
//!  57    records count         i32   >= 1
//!  61    records...                  (compressed as one block when bits 0-2 say so)
//!        ├──────────── outside the CRC ─────────────┤├── covered by the CRC ──...
//!        0                                        21
//! ```
//!
//! All integers are big-endian, as everywhere in Kafka's protocol. Why this
//! layout rather than one of our own: a Kafka tool or client library can
//! read a stored segment as it is, and a Kafka-protocol listener can hand
//! stored bytes to Kafka clients without re-encoding. The cost is
//! unaligned big-endian field reads, which are nothing next to the CRC.
//!
//! The broker writes only `baseOffset` and `partitionLeaderEpoch`, after the
//! producer computed the CRC; that is why Kafka puts them before it, and
//! why the broker never recomputes a CRC. A batch's size is known from its
//! first 12 bytes ([`peek_length_bytes`]); this crate calls the whole size
//! `length_bytes`, which is Kafka's `batchLength + 12`.

use crate::Error;

/// Size of the fixed batch header (Kafka's `RECORD_BATCH_OVERHEAD`).
pub const BATCH_HEADER_BYTES: usize = 61;
/// The format version this build reads and writes: Kafka's magic 2.
pub const BATCH_MAGIC: u8 = 2;
/// The first byte covered by the CRC (the attributes field).
pub const CRC_START: usize = OFFSET_ATTRIBUTES;
/// Bytes before a batch's `batchLength` counts: baseOffset and batchLength
/// themselves (Kafka's `LOG_OVERHEAD`).
pub const LENGTH_PREFIX_BYTES: usize = 12;

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_OFFSET_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_PRODUCER_ID: usize = 43;
const OFFSET_PRODUCER_EPOCH: usize = 51;
const OFFSET_BASE_SEQUENCE: usize = 53;
const OFFSET_RECORD_COUNT: usize = 57;

const _: () = assert!(OFFSET_BATCH_LENGTH + 4 == LENGTH_PREFIX_BYTES);
const _: () = assert!(OFFSET_CRC + 4 == CRC_START);
const _: () = assert!(OFFSET_RECORD_COUNT + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(OFFSET_BASE_SEQUENCE == OFFSET_PRODUCER_EPOCH + 2);

const ATTRIBUTE_COMPRESSION_MASK: u16 = 0b111;
const ATTRIBUTE_LOG_APPEND_TIME: u16 = 1 << 3;
const ATTRIBUTE_TRANSACTIONAL: u16 = 1 << 4;
const ATTRIBUTE_CONTROL: u16 = 1 << 5;
/// Bit 6 (KIP-534's delete horizon) is set only by log compaction, which no
/// producer does; it and the bits above are refused.
const ATTRIBUTES_KNOWN: u16 = ATTRIBUTE_COMPRESSION_MASK
    | ATTRIBUTE_LOG_APPEND_TIME
    | ATTRIBUTE_TRANSACTIONAL
    | ATTRIBUTE_CONTROL;

/// How the records section of a batch is compressed (as one block), with
/// Kafka's codec numbers.
///
/// The broker never decompresses; it only checks that the codec is known
/// and stores the batch as it came. The SDK decodes all five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Records are stored as they are (0).
    #[default]
    None,
    /// One gzip stream (1).
    Gzip,
    /// Snappy (2): xerial-framed as Java Kafka and kafka-python write it, or raw.
    Snappy,
    /// One LZ4 frame (3), Kafka's LZ4 format since magic 1.
    Lz4,
    /// One or more zstd frames (4).
    Zstd,
}

impl Compression {
    /// Every codec, in the order of their numbers.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The attribute bits of this codec.
    pub fn to_bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec of attribute bits 0-2; `None` for 5-7, which Kafka does not define.
    pub fn from_bits(bits: u16) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|codec| codec.to_bits() == bits)
    }

    /// The codec's name, as Kafka's `compression.type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The decoded fixed header of one batch.
///
/// Kafka's signed fields that a valid batch keeps non-negative (lengths,
/// counts, deltas, the stamped offset and epoch) are unsigned here; their
/// bits are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Size of the whole batch, header included: Kafka's batchLength + 12.
    pub length_bytes: u32,
    /// Leader epoch stamped by the broker that appended the batch
    /// (Kafka's partitionLeaderEpoch; producers write 0 or -1 = `u32::MAX`).
    pub leader_epoch: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// CRC-32C of bytes `[21, length_bytes)`.
    pub crc32c: u32,
    /// Format version: 2.
    pub magic: u8,
    /// Compression, timestamp-type, transactional and control bits.
    pub attributes: u16,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: u32,
    /// Number of records.
    pub record_count: u32,
    /// Kafka's baseTimestamp: the first record's timestamp, in milliseconds
    /// since the Unix epoch; record timestamps are deltas from it.
    pub first_timestamp_ms: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp_ms: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Sequence number of the first record for this producer and partition, or -1.
    pub base_sequence: i32,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
}

impl BatchHeader {
    /// Decodes the header at the start of `buf`, checking only what the
    /// header alone can tell: size, magic, attributes, counts and
    /// timestamps. The CRC is checked by [`crate::batch::validate`].
    ///
    /// # Errors
    /// A distinct [`Error`] variant for each failed check.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, Error> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(Error::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: buf.len(),
            });
        }
        let batch_length = read_i32(buf, OFFSET_BATCH_LENGTH);
        let length_bytes = whole_length_bytes(batch_length)
            .filter(|length| *length as usize >= BATCH_HEADER_BYTES)
            .ok_or(Error::LengthOutOfRange { batch_length })?;
        let header = BatchHeader {
            length_bytes,
            leader_epoch: read_i32(buf, OFFSET_LEADER_EPOCH) as u32,
            base_offset: read_i64(buf, OFFSET_BASE_OFFSET) as u64,
            crc32c: read_i32(buf, OFFSET_CRC) as u32,
            magic: buf[OFFSET_MAGIC],
            attributes: read_i16(buf, OFFSET_ATTRIBUTES) as u16,
            last_offset_delta: read_i32(buf, OFFSET_LAST_OFFSET_DELTA) as u32,
            record_count: read_i32(buf, OFFSET_RECORD_COUNT) as u32,
            first_timestamp_ms: read_i64(buf, OFFSET_BASE_TIMESTAMP),
            max_timestamp_ms: read_i64(buf, OFFSET_MAX_TIMESTAMP),
            producer_id: read_i64(buf, OFFSET_PRODUCER_ID),
            base_sequence: read_i32(buf, OFFSET_BASE_SEQUENCE),
            producer_epoch: read_i16(buf, OFFSET_PRODUCER_EPOCH),
        };
        header.check()?;
        Ok(header)
    }

    /// The header fields checked against each other.
    fn check(&self) -> Result<(), Error> {
        if self.magic != BATCH_MAGIC {
            return Err(Error::UnsupportedMagic {
                magic: self.magic,
                expected: BATCH_MAGIC,
            });
        }
        if self.attributes & !ATTRIBUTES_KNOWN != 0 || self.compression_bits().is_none() {
            return Err(Error::InvalidAttributes {
                attributes: self.attributes,
            });
        }
        // Kafka's count is an i32: a count past i32::MAX is a negative one.
        let count_ok = self.record_count >= 1
            && self.record_count <= i32::MAX as u32
            && self.last_offset_delta == self.record_count - 1;
        if !count_ok {
            return Err(Error::CountMismatch {
                record_count: self.record_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        if self.max_timestamp_ms < self.first_timestamp_ms {
            return Err(Error::TimestampOrder {
                first_timestamp_ms: self.first_timestamp_ms,
                max_timestamp_ms: self.max_timestamp_ms,
            });
        }
        Ok(())
    }

    fn compression_bits(&self) -> Option<Compression> {
        Compression::from_bits(self.attributes & ATTRIBUTE_COMPRESSION_MASK)
    }

    /// The compression codec of the records section.
    pub fn compression(&self) -> Compression {
        // `parse` rejected unknown codecs, so this cannot fail on a parsed header.
        self.compression_bits().unwrap_or(Compression::None)
    }

    /// True when the timestamps are the broker's append time (attribute bit 3),
    /// false for the producer's create time.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// True for a batch of a Kafka transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// True for a control batch (transaction markers; attribute bit 5),
    /// which only a broker writes.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// The offset right after this batch.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }
}

/// Kafka's batchLength as the size of the whole batch; `None` when negative.
fn whole_length_bytes(batch_length: i32) -> Option<u32> {
    let batch_length = u32::try_from(batch_length).ok()?;
    // i32::MAX + 12 fits a u32.
    Some(batch_length + LENGTH_PREFIX_BYTES as u32)
}

/// The size of the whole batch that starts `buf` (Kafka's batchLength + 12),
/// if its first 12 bytes are there.
///
/// A batchLength of zero reads as 0, not 12: no batch is that short, and
/// zero bytes where a batch should start are the zero padding that direct
/// I/O leaves after the last write, which recovery must tell apart. A
/// negative batchLength reads as `u32::MAX`, larger than any limit.
pub fn peek_length_bytes(buf: &[u8]) -> Option<u32> {
    let prefix = buf.get(..LENGTH_PREFIX_BYTES)?;
    match read_i32(prefix, OFFSET_BATCH_LENGTH) {
        0 => Some(0),
        batch_length => Some(whole_length_bytes(batch_length).unwrap_or(u32::MAX)),
    }
}

/// Stamps the base offset into an encoded batch. It lies outside the CRC.
///
/// # Panics
/// If `batch` is shorter than a header, or the offset passes `i64::MAX`:
/// the caller validated the batch and assigns the offsets.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    assert!(i64::try_from(base_offset).is_ok(), "Kafka offsets are i64");
    write_bytes(batch, OFFSET_BASE_OFFSET, &base_offset.to_be_bytes());
}

/// Stamps the leader epoch into an encoded batch. It lies outside the CRC.
///
/// # Panics
/// If `batch` is shorter than a header: the caller validated it first.
pub fn set_leader_epoch(batch: &mut [u8], leader_epoch: u32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    write_bytes(batch, OFFSET_LEADER_EPOCH, &leader_epoch.to_be_bytes());
}

/// Rewrites the idempotent-producer fields of an encoded batch and its CRC
/// (they lie inside the CRC). A producer uses this when it assigns a
/// batch's sequence at send time rather than at build time.
///
/// # Panics
/// If `batch` is shorter than a header or than its length field: the caller built it.
pub fn set_producer(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    assert!(peek_length_bytes(batch) == Some(batch.len() as u32));
    write_bytes(batch, OFFSET_PRODUCER_ID, &producer_id.to_be_bytes());
    write_bytes(batch, OFFSET_PRODUCER_EPOCH, &producer_epoch.to_be_bytes());
    write_bytes(batch, OFFSET_BASE_SEQUENCE, &base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    write_bytes(batch, OFFSET_CRC, &crc.to_be_bytes());
}

/// The fields a builder fills in, written into the first 61 bytes of `out`.
pub(crate) struct HeaderFields {
    pub length_bytes: u32,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub base_sequence: i32,
    pub producer_epoch: i16,
}

/// Writes a header (base offset 0, leader epoch 0, as kafka-python's
/// builder does) and the CRC over the rest of `out`.
pub(crate) fn write_header(out: &mut [u8], fields: &HeaderFields) {
    assert!(out.len() == fields.length_bytes as usize);
    assert!(out.len() >= BATCH_HEADER_BYTES);
    assert!(fields.record_count >= 1);
    assert!(fields.record_count <= i32::MAX as u32);
    let batch_length = fields.length_bytes - LENGTH_PREFIX_BYTES as u32;
    let batch_length = i32::try_from(batch_length).expect("batches stay below 2 GiB");
    let last_offset_delta = (fields.record_count - 1) as i32;
    write_bytes(out, OFFSET_BASE_OFFSET, &0i64.to_be_bytes());
    write_bytes(out, OFFSET_BATCH_LENGTH, &batch_length.to_be_bytes());
    write_bytes(out, OFFSET_LEADER_EPOCH, &0i32.to_be_bytes());
    out[OFFSET_MAGIC] = BATCH_MAGIC;
    write_bytes(out, OFFSET_ATTRIBUTES, &fields.attributes.to_be_bytes());
    write_bytes(
        out,
        OFFSET_LAST_OFFSET_DELTA,
        &last_offset_delta.to_be_bytes(),
    );
    write_bytes(
        out,
        OFFSET_BASE_TIMESTAMP,
        &fields.first_timestamp_ms.to_be_bytes(),
    );
    write_bytes(
        out,
        OFFSET_MAX_TIMESTAMP,
        &fields.max_timestamp_ms.to_be_bytes(),
    );
    write_bytes(out, OFFSET_PRODUCER_ID, &fields.producer_id.to_be_bytes());
    write_bytes(
        out,
        OFFSET_PRODUCER_EPOCH,
        &fields.producer_epoch.to_be_bytes(),
    );
    write_bytes(
        out,
        OFFSET_BASE_SEQUENCE,
        &fields.base_sequence.to_be_bytes(),
    );
    write_bytes(
        out,
        OFFSET_RECORD_COUNT,
        &(fields.record_count as i32).to_be_bytes(),
    );
    let crc = crc32c::crc32c(&out[CRC_START..]);
    write_bytes(out, OFFSET_CRC, &crc.to_be_bytes());
}

fn write_bytes(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

fn read_array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(&buf[at..at + N]);
    bytes
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(read_array(buf, at))
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(read_array(buf, at))
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(read_array(buf, at))
}
