//! Building a batch, as a producer does.

use bytes::{BufMut, BytesMut};

use super::header::{
    write_header, Compression, HeaderFields, BATCH_HEADER_BYTES, LENGTH_PREFIX_BYTES,
};
use super::record::{self, RecordHeaderRef};
use crate::varint::{varint_len, VARINT_BYTES_MAX};
use crate::Error;

/// The largest whole batch Kafka's i32 batchLength can describe.
const BATCH_LENGTH_BYTES_MAX: u64 = i32::MAX as u64 + LENGTH_PREFIX_BYTES as u64;

/// What identifies the producer of a batch. The defaults describe a producer
/// that is not idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBuilderOptions {
    /// Producer id from InitProducer, or -1 (default).
    pub producer_id: i64,
    /// Producer epoch, or -1 (default).
    pub producer_epoch: i16,
    /// Sequence number of this batch's first record, or -1 (default).
    pub base_sequence: i32,
    /// Initial buffer capacity in bytes (default 16 KiB); the buffer grows as needed.
    pub capacity_bytes: usize,
}

impl Default for BatchBuilderOptions {
    fn default() -> Self {
        BatchBuilderOptions {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            capacity_bytes: 16 * 1024,
        }
    }
}

/// Accumulates records into one batch; [`BatchBuilder::finish`] writes the
/// header and the CRC. Records are encoded as they are appended, so the size
/// of the finished batch is always known ([`BatchBuilder::size_bytes`]).
#[derive(Debug)]
pub struct BatchBuilder {
    options: BatchBuilderOptions,
    buf: BytesMut,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(options: BatchBuilderOptions) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(options.capacity_bytes.max(BATCH_HEADER_BYTES));
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            options,
            buf,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Sets the idempotent producer's fields, for a batch numbered only when
    /// it is sealed; saves recomputing the CRC with `set_producer` afterwards.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.options.producer_id = producer_id;
        self.options.producer_epoch = producer_epoch;
        self.options.base_sequence = base_sequence;
    }

    /// Appends one record and returns its offset delta within the batch.
    ///
    /// # Errors
    /// [`Error::FieldOverflow`] when the batch would pass Kafka's limits:
    /// 2 GiB (batchLength is an i32) or `i32::MAX` records.
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeaderRef<'_>],
    ) -> Result<u32, Error> {
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
        }
        let offset_delta = self.record_count;
        let timestamp_delta = timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let record_bytes = self.record_size_bytes(timestamp_ms, key, value, headers);
        let total = self.buf.len() as u64 + record_bytes as u64;
        if total > BATCH_LENGTH_BYTES_MAX || offset_delta >= i32::MAX as u32 {
            return Err(Error::FieldOverflow { what: "batch" });
        }
        record::encode(
            &mut self.buf,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        );
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        Ok(offset_delta)
    }

    /// The bytes one more record would add, with its length prefix.
    pub fn record_size_bytes(
        &self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeaderRef<'_>],
    ) -> usize {
        let first = if self.record_count == 0 {
            timestamp_ms
        } else {
            self.first_timestamp_ms
        };
        let body = record::body_len(
            timestamp_ms.wrapping_sub(first),
            self.record_count,
            key,
            value,
            headers,
        );
        debug_assert!(varint_len(body as i64) <= VARINT_BYTES_MAX);
        varint_len(body as i64) + body
    }

    /// Size of the batch if it were finished now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Records appended so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// True when no record was appended.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Writes the header and CRC and hands over the encoded batch, with base
    /// offset 0 and leader epoch 0 for the broker to stamp.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] when no record was appended.
    pub fn finish(self) -> Result<BytesMut, Error> {
        // `finish_with` never calls the compressor for `Compression::None`.
        self.finish_with(Compression::None, <[u8]>::to_vec)
    }

    /// As [`BatchBuilder::finish`], with the records section replaced by
    /// `compress(records)` as one block and the codec recorded in the
    /// attributes. `compress` is not called for [`Compression::None`].
    ///
    /// # Errors
    /// [`Error::EmptyBatch`]; [`Error::FieldOverflow`] past 2 GiB.
    pub fn finish_with(
        self,
        compression: Compression,
        compress: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<BytesMut, Error> {
        if self.record_count == 0 {
            return Err(Error::EmptyBatch);
        }
        let mut buf = self.buf;
        if compression != Compression::None {
            let block = compress(&buf[BATCH_HEADER_BYTES..]);
            buf.truncate(BATCH_HEADER_BYTES);
            buf.extend_from_slice(&block);
        }
        if buf.len() as u64 > BATCH_LENGTH_BYTES_MAX {
            return Err(Error::FieldOverflow { what: "batch" });
        }
        let length_bytes = buf.len() as u32;
        let fields = HeaderFields {
            length_bytes,
            attributes: compression.to_bits(),
            record_count: self.record_count,
            first_timestamp_ms: self.first_timestamp_ms,
            max_timestamp_ms: self.max_timestamp_ms,
            producer_id: self.options.producer_id,
            base_sequence: self.options.base_sequence,
            producer_epoch: self.options.producer_epoch,
        };
        write_header(&mut buf, &fields);
        Ok(buf)
    }
}
