//! The record batch: build it ([`BatchBuilder`]), check it ([`validate`]),
//! read it without copying ([`Batch`], [`BatchIter`]).
//!
//! A batch is an Apache Kafka RecordBatch v2 (magic 2), byte for byte:
//! built by the SDK, carried as `[ubyte]` in the protocol, stored, cached
//! and fetched unchanged. The layout is in [`header`]; the records inside
//! are described in the source of `record.rs`. A batch is validated by its
//! CRC-32C over everything from the attributes on, by its header fields
//! checked against each other and, for uncompressed batches, by walking the
//! record length prefixes to check the record count. A compressed batch is
//! checked no further than its header and CRC: only consumers decompress.
//!
//! Tests against a real Kafka implementation: golden vectors written by
//! kafka-python (`flatbuffers/tests/kafka_vectors.rs`), and a live
//! cross-check in `tests/tests/kafka_python.rs`.

mod builder;
pub mod header;
mod record;

use bytes::{Bytes, BytesMut};

pub use builder::{BatchBuilder, BatchBuilderOptions};
pub use header::{
    peek_length_bytes, set_base_offset, set_leader_epoch, set_producer, BatchHeader, Compression,
    BATCH_HEADER_BYTES, BATCH_MAGIC, LENGTH_PREFIX_BYTES,
};
pub use record::{Record, RecordHeader, RecordHeaderRef, RecordIter};

use crate::Error;

/// Default maximum batch size: 1 MiB, as Kafka's `max.message.bytes`.
pub const BATCH_BYTES_MAX_DEFAULT: u32 = 1024 * 1024;
/// Default maximum records per batch.
pub const BATCH_RECORD_COUNT_MAX_DEFAULT: u32 = 1024 * 1024;

/// The limits a batch is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest accepted batch, header included (default 1 MiB).
    pub batch_bytes_max: u32,
    /// Most records in one batch (default 1 Mi).
    pub record_count_max: u32,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            record_count_max: BATCH_RECORD_COUNT_MAX_DEFAULT,
        }
    }
}

/// Checks that `buf` is exactly one whole, intact batch within `limits`.
///
/// # Errors
/// A distinct [`Error`] variant for each check that fails.
pub fn validate(buf: &[u8], limits: &BatchLimits) -> Result<BatchHeader, Error> {
    let header = BatchHeader::parse(buf)?;
    if header.length_bytes as usize != buf.len() {
        return Err(Error::LengthMismatch {
            length_bytes: header.length_bytes,
            actual_bytes: buf.len(),
        });
    }
    if header.length_bytes > limits.batch_bytes_max {
        return Err(Error::TooLarge {
            length_bytes: header.length_bytes,
            limit_bytes: limits.batch_bytes_max,
        });
    }
    if header.record_count > limits.record_count_max {
        return Err(Error::TooManyRecords {
            record_count: header.record_count,
            limit_count: limits.record_count_max,
        });
    }
    let actual = crc32c::crc32c(&buf[header::CRC_START..]);
    if actual != header.crc32c {
        return Err(Error::CrcMismatch {
            expected: header.crc32c,
            actual,
        });
    }
    if header.compression() == Compression::None {
        record::check_framing(&buf[BATCH_HEADER_BYTES..], header.record_count)?;
    }
    Ok(header)
}

/// A batch that passed [`validate`], still in the mutable buffer it arrived
/// in, so that the broker can stamp its offset and epoch without a copy.
///
/// Only [`ValidBatch::check`] makes one, so whoever holds one knows the CRC
/// was checked: the produce path checks it once, where the batch is split
/// out of the request, and the engine appends it without a second pass.
#[derive(Debug)]
pub struct ValidBatch {
    bytes: BytesMut,
    header: BatchHeader,
}

impl ValidBatch {
    /// Validates `bytes` as one batch.
    ///
    /// # Errors
    /// As [`validate`].
    pub fn check(bytes: BytesMut, limits: &BatchLimits) -> Result<ValidBatch, Error> {
        let header = validate(&bytes, limits)?;
        Ok(ValidBatch { bytes, header })
    }

    /// The decoded header, as it was validated.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The header and the encoded batch.
    pub fn into_parts(self) -> (BatchHeader, BytesMut) {
        assert!(self.bytes.len() == self.header.length_bytes as usize);
        (self.header, self.bytes)
    }
}

/// One validated batch over shared bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
    header: BatchHeader,
}

impl Batch {
    /// Validates `bytes` as one batch.
    ///
    /// # Errors
    /// As [`validate`].
    pub fn parse(bytes: Bytes, limits: &BatchLimits) -> Result<Batch, Error> {
        let header = validate(&bytes, limits)?;
        Ok(Batch { bytes, header })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The encoded batch.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Hands back the encoded batch.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The records, decoded lazily as slices of the batch.
    ///
    /// # Errors
    /// [`Error::Compressed`] for a compressed batch.
    pub fn records(&self) -> Result<RecordIter, Error> {
        let compression = self.header.compression();
        if compression != Compression::None {
            return Err(Error::Compressed {
                codec: compression.name(),
            });
        }
        let records = self.bytes.slice(BATCH_HEADER_BYTES..);
        Ok(RecordIter::new(
            records,
            self.header.base_offset,
            self.header.first_timestamp_ms,
            self.header.record_count,
        ))
    }

    /// The records of a batch of any codec: a compressed records section is
    /// handed to `decompress` once, and the records are slices of its output.
    ///
    /// # Errors
    /// Whatever `decompress` returns; [`Error::MalformedRecords`] when the
    /// decompressed records do not frame `record_count` records.
    pub fn records_with(
        &self,
        decompress: impl FnOnce(Compression, &[u8]) -> Result<Vec<u8>, Error>,
    ) -> Result<RecordIter, Error> {
        let compression = self.header.compression();
        if compression == Compression::None {
            return self.records();
        }
        let records = Bytes::from(decompress(compression, &self.bytes[BATCH_HEADER_BYTES..])?);
        record::check_framing(&records, self.header.record_count)?;
        Ok(RecordIter::new(
            records,
            self.header.base_offset,
            self.header.first_timestamp_ms,
            self.header.record_count,
        ))
    }
}

/// Iterates over back-to-back batches in one buffer (a fetch response or a
/// segment read), validating each. A trailing partial batch ends the
/// iteration without an error: [`BatchIter::remainder_bytes`] tells its size.
#[derive(Debug, Clone)]
pub struct BatchIter {
    bytes: Bytes,
    limits: BatchLimits,
}

impl BatchIter {
    /// Iterates over the batches in `bytes`.
    pub fn new(bytes: Bytes, limits: BatchLimits) -> BatchIter {
        BatchIter { bytes, limits }
    }

    /// Bytes not yet consumed (after the iteration ends: the partial tail).
    pub fn remainder_bytes(&self) -> usize {
        self.bytes.len()
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let length_bytes = peek_length_bytes(&self.bytes)? as usize;
        if length_bytes < BATCH_HEADER_BYTES {
            let error = Error::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: length_bytes,
            };
            self.bytes.clear();
            return Some(Err(error));
        }
        if length_bytes > self.bytes.len() {
            return None;
        }
        let one = self.bytes.split_to(length_bytes);
        let result = Batch::parse(one, &self.limits);
        if result.is_err() {
            self.bytes.clear();
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests;
