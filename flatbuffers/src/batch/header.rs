//! The fixed 64-byte batch header.
//!
//! ```text
//!  byte  field               type  notes
//!  0     length_bytes        u32   whole batch, header included
//!  4     leader_epoch        u32   stamped by the broker (outside the CRC)
//!  8     base_offset         u64   stamped by the broker (outside the CRC)
//!  16    crc32c              u32   CRC32C of bytes [20, length_bytes)
//!  20    magic               u8    format version, 1
//!  21    reserved            u8    0
//!  22    attributes          u16   bits 0-2 compression, bit 3 timestamp type
//!  24    last_offset_delta   u32   record_count - 1
//!  28    record_count        u32   >= 1
//!  32    first_timestamp_ms  i64
//!  40    max_timestamp_ms    i64   >= first_timestamp_ms
//!  48    producer_id         i64   -1 when not idempotent
//!  56    base_sequence       i32   -1 when not idempotent
//!  60    producer_epoch      i16   -1 when not idempotent
//!  62    reserved            u16   0
//!  64    records...
//! ```
//!
//! All integers are little-endian. The order differs from Kafka's RecordBatch
//! v2 only so that every field is naturally aligned; the fields are the same.
//! The broker writes `base_offset` and `leader_epoch` after the producer has
//! computed the CRC, which is why they sit before the CRC field.

use crate::Error;

/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// The format version this build reads and writes.
pub const BATCH_MAGIC: u8 = 1;
/// The first byte covered by the CRC.
pub const CRC_START: usize = 20;

const OFFSET_LENGTH: usize = 0;
const OFFSET_LEADER_EPOCH: usize = 4;
const OFFSET_BASE_OFFSET: usize = 8;
const OFFSET_CRC: usize = 16;
const OFFSET_MAGIC: usize = 20;
const OFFSET_RESERVED_A: usize = 21;
const OFFSET_ATTRIBUTES: usize = 22;
const OFFSET_LAST_OFFSET_DELTA: usize = 24;
const OFFSET_RECORD_COUNT: usize = 28;
const OFFSET_FIRST_TIMESTAMP: usize = 32;
const OFFSET_MAX_TIMESTAMP: usize = 40;
const OFFSET_PRODUCER_ID: usize = 48;
const OFFSET_BASE_SEQUENCE: usize = 56;
const OFFSET_PRODUCER_EPOCH: usize = 60;
const OFFSET_RESERVED_B: usize = 62;

const _: () = assert!(OFFSET_CRC + 4 == CRC_START);
const _: () = assert!(OFFSET_RESERVED_B + 2 == BATCH_HEADER_BYTES);
const _: () = assert!(BATCH_HEADER_BYTES % 8 == 0);

const ATTRIBUTE_COMPRESSION_MASK: u16 = 0b111;
const ATTRIBUTE_LOG_APPEND_TIME: u16 = 1 << 3;
const ATTRIBUTES_KNOWN: u16 = ATTRIBUTE_COMPRESSION_MASK | ATTRIBUTE_LOG_APPEND_TIME;

/// How the records section of a batch is compressed (as one block).
///
/// The broker never decompresses; it only checks that the codec is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Records are stored as they are.
    #[default]
    None,
    /// One LZ4 block (reserved for the producer).
    Lz4,
    /// One zstd frame (reserved for the producer).
    Zstd,
}

impl Compression {
    /// The attribute bits of this codec.
    pub fn to_bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_bits(bits: u16) -> Option<Compression> {
        match bits {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The codec's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Size of the whole batch, header included.
    pub length_bytes: u32,
    /// Leader epoch stamped by the broker that appended the batch.
    pub leader_epoch: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// CRC32C of bytes `[20, length_bytes)`.
    pub crc32c: u32,
    /// Format version.
    pub magic: u8,
    /// Compression and timestamp-type bits.
    pub attributes: u16,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: u32,
    /// Number of records.
    pub record_count: u32,
    /// Timestamp of the first record, in milliseconds since the Unix epoch.
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
    /// header alone can tell: size, magic, attributes, reserved bytes,
    /// counts and timestamps. The CRC is checked by [`crate::batch::validate`].
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, Error> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(Error::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: buf.len(),
            });
        }
        let header = BatchHeader {
            length_bytes: read_u32(buf, OFFSET_LENGTH),
            leader_epoch: read_u32(buf, OFFSET_LEADER_EPOCH),
            base_offset: read_u64(buf, OFFSET_BASE_OFFSET),
            crc32c: read_u32(buf, OFFSET_CRC),
            magic: buf[OFFSET_MAGIC],
            attributes: read_u16(buf, OFFSET_ATTRIBUTES),
            last_offset_delta: read_u32(buf, OFFSET_LAST_OFFSET_DELTA),
            record_count: read_u32(buf, OFFSET_RECORD_COUNT),
            first_timestamp_ms: read_u64(buf, OFFSET_FIRST_TIMESTAMP) as i64,
            max_timestamp_ms: read_u64(buf, OFFSET_MAX_TIMESTAMP) as i64,
            producer_id: read_u64(buf, OFFSET_PRODUCER_ID) as i64,
            base_sequence: read_u32(buf, OFFSET_BASE_SEQUENCE) as i32,
            producer_epoch: read_u16(buf, OFFSET_PRODUCER_EPOCH) as i16,
        };
        if (header.length_bytes as usize) < BATCH_HEADER_BYTES {
            return Err(Error::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: header.length_bytes as usize,
            });
        }
        if header.magic != BATCH_MAGIC {
            return Err(Error::UnsupportedMagic {
                magic: header.magic,
                expected: BATCH_MAGIC,
            });
        }
        if buf[OFFSET_RESERVED_A] != 0 || read_u16(buf, OFFSET_RESERVED_B) != 0 {
            return Err(Error::ReservedNotZero);
        }
        if header.attributes & !ATTRIBUTES_KNOWN != 0 || header.compression_bits().is_none() {
            return Err(Error::InvalidAttributes {
                attributes: header.attributes,
            });
        }
        let count_ok =
            header.record_count >= 1 && header.last_offset_delta == header.record_count - 1;
        if !count_ok {
            return Err(Error::CountMismatch {
                record_count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        if header.max_timestamp_ms < header.first_timestamp_ms {
            return Err(Error::TimestampOrder {
                first_timestamp_ms: header.first_timestamp_ms,
                max_timestamp_ms: header.max_timestamp_ms,
            });
        }
        Ok(header)
    }

    fn compression_bits(&self) -> Option<Compression> {
        Compression::from_bits(self.attributes & ATTRIBUTE_COMPRESSION_MASK)
    }

    /// The compression codec of the records section.
    pub fn compression(&self) -> Compression {
        // `parse` rejected unknown codecs, so this cannot fail on a parsed header.
        self.compression_bits().unwrap_or(Compression::None)
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

/// Reads the length field of the batch that starts `buf`, if four bytes are there.
pub fn peek_length_bytes(buf: &[u8]) -> Option<u32> {
    buf.get(..4).map(|b| read_u32(b, 0))
}

/// Stamps the base offset into an encoded batch. It lies outside the CRC.
///
/// # Panics
/// If `batch` is shorter than a header: the caller validated it first.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    batch[OFFSET_BASE_OFFSET..OFFSET_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Stamps the leader epoch into an encoded batch. It lies outside the CRC.
///
/// # Panics
/// If `batch` is shorter than a header: the caller validated it first.
pub fn set_leader_epoch(batch: &mut [u8], leader_epoch: u32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    batch[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_le_bytes());
}

/// Rewrites the idempotent-producer fields of an encoded batch and its CRC
/// (they lie inside the CRC). A producer uses this when it assigns a
/// batch's sequence at send time rather than at build time.
///
/// # Panics
/// If `batch` is shorter than a header or than its length field: the caller built it.
pub fn set_producer(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    assert!(batch.len() == read_u32(batch, OFFSET_LENGTH) as usize);
    batch[OFFSET_PRODUCER_ID..OFFSET_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_le_bytes());
    batch[OFFSET_PRODUCER_EPOCH..OFFSET_PRODUCER_EPOCH + 2]
        .copy_from_slice(&producer_epoch.to_le_bytes());
    batch[OFFSET_BASE_SEQUENCE..OFFSET_BASE_SEQUENCE + 4]
        .copy_from_slice(&base_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The fields a builder fills in, written into the first 64 bytes of `out`.
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

/// Writes a header (base offset 0, leader epoch 0) and the CRC over the rest of `out`.
pub(crate) fn write_header(out: &mut [u8], fields: &HeaderFields) {
    assert!(out.len() == fields.length_bytes as usize);
    assert!(fields.record_count >= 1);
    out[..BATCH_HEADER_BYTES].fill(0);
    out[OFFSET_LENGTH..OFFSET_LENGTH + 4].copy_from_slice(&fields.length_bytes.to_le_bytes());
    out[OFFSET_MAGIC] = BATCH_MAGIC;
    out[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&fields.attributes.to_le_bytes());
    let last_offset_delta = fields.record_count - 1;
    out[OFFSET_LAST_OFFSET_DELTA..OFFSET_LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&last_offset_delta.to_le_bytes());
    out[OFFSET_RECORD_COUNT..OFFSET_RECORD_COUNT + 4]
        .copy_from_slice(&fields.record_count.to_le_bytes());
    out[OFFSET_FIRST_TIMESTAMP..OFFSET_FIRST_TIMESTAMP + 8]
        .copy_from_slice(&fields.first_timestamp_ms.to_le_bytes());
    out[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
        .copy_from_slice(&fields.max_timestamp_ms.to_le_bytes());
    out[OFFSET_PRODUCER_ID..OFFSET_PRODUCER_ID + 8]
        .copy_from_slice(&fields.producer_id.to_le_bytes());
    out[OFFSET_BASE_SEQUENCE..OFFSET_BASE_SEQUENCE + 4]
        .copy_from_slice(&fields.base_sequence.to_le_bytes());
    out[OFFSET_PRODUCER_EPOCH..OFFSET_PRODUCER_EPOCH + 2]
        .copy_from_slice(&fields.producer_epoch.to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}
