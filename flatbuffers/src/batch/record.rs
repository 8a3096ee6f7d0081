//! Records inside an uncompressed batch (or a decompressed records block),
//! as Kafka's `DefaultRecord` writes them. Every integer is a zig-zag
//! varint (varlong for the timestamp delta), so -1 is one byte.
//!
//! ```text
//! length            varint    bytes of the record after this field
//! attributes        i8        0 (unused by Kafka)
//! timestamp_delta   varlong   from the batch's baseTimestamp; may be negative
//! offset_delta      varint    from the batch's baseOffset: 0, 1, 2, ...
//! key_len, key      varint (-1 = null), bytes
//! value_len, value  varint (-1 = null), bytes
//! header_count      varint
//!   key_len, key    varint, UTF-8 bytes (never null)
//!   value_len, val  varint (-1 = null), bytes
//! ```
//!
//! Lengths, counts and offset deltas are Kafka `int32`s: a decoded value
//! outside `0..=i32::MAX` is malformed.

use bytes::{BufMut, Bytes};

use crate::varint::{get_varint, put_varint, varint_len};
use crate::Error;

/// One header of a record, borrowed, as given to the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeaderRef<'a> {
    /// Header name.
    pub key: &'a str,
    /// Header value; `None` is a null value.
    pub value: Option<&'a [u8]>,
}

/// One header of a decoded record; slices of the batch, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header name (UTF-8, checked on decode).
    pub key: Bytes,
    /// Header value; `None` is a null value.
    pub value: Option<Bytes>,
}

impl RecordHeader {
    /// The header name as text.
    pub fn key_str(&self) -> &str {
        // Checked at decode time.
        std::str::from_utf8(&self.key).unwrap_or("")
    }
}

/// One decoded record. Key, value and headers are slices of the batch's
/// buffer: decoding copies no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Value; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in the order they were written.
    pub headers: Vec<RecordHeader>,
}

/// The encoded size of one record's body (everything after `body_len`).
pub(crate) fn body_len(
    timestamp_delta: i64,
    offset_delta: u32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[RecordHeaderRef<'_>],
) -> usize {
    let mut len = 1 + varint_len(timestamp_delta) + varint_len(i64::from(offset_delta));
    len += nullable_len(key) + nullable_len(value);
    len += varint_len(headers.len() as i64);
    for header in headers {
        len += varint_len(header.key.len() as i64) + header.key.len() + nullable_len(header.value);
    }
    len
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i64) + b.len(),
    }
}

/// Appends one record (with its `body_len` prefix) to `out`.
pub(crate) fn encode(
    out: &mut impl BufMut,
    timestamp_delta: i64,
    offset_delta: u32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[RecordHeaderRef<'_>],
) {
    let body = body_len(timestamp_delta, offset_delta, key, value, headers);
    put_varint(out, body as i64);
    out.put_u8(0);
    put_varint(out, timestamp_delta);
    put_varint(out, i64::from(offset_delta));
    put_nullable(out, key);
    put_nullable(out, value);
    put_varint(out, headers.len() as i64);
    for header in headers {
        put_varint(out, header.key.len() as i64);
        out.put_slice(header.key.as_bytes());
        put_nullable(out, header.value);
    }
}

fn put_nullable(out: &mut impl BufMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

/// Walks the length prefixes of an uncompressed records section and
/// checks that exactly `record_count` records fill it. Cheap: no field is decoded.
pub(crate) fn check_framing(records: &[u8], record_count: u32) -> Result<(), Error> {
    let mut at = 0usize;
    for _ in 0..record_count {
        let length =
            get_varint(&records[at..]).and_then(|(body, used)| Some((int32_len(body)?, used)));
        let (body, used) = length.ok_or(Error::MalformedRecords {
            reason: "bad record length",
        })?;
        let end = (at + used)
            .checked_add(body)
            .filter(|end| *end <= records.len());
        at = end.ok_or(Error::MalformedRecords {
            reason: "record runs past the batch",
        })?;
    }
    if at != records.len() {
        return Err(Error::MalformedRecords {
            reason: "bytes left after the last record",
        });
    }
    Ok(())
}

/// Iterator over the records of an uncompressed batch. Yields an error and
/// stops at the first malformed record.
#[derive(Debug, Clone)]
pub struct RecordIter {
    records: Bytes,
    at: usize,
    base_offset: u64,
    first_timestamp_ms: i64,
    remaining_count: u32,
    next_delta: u32,
}

impl RecordIter {
    pub(crate) fn new(
        records: Bytes,
        base_offset: u64,
        first_timestamp_ms: i64,
        record_count: u32,
    ) -> RecordIter {
        RecordIter {
            records,
            at: 0,
            base_offset,
            first_timestamp_ms,
            remaining_count: record_count,
            next_delta: 0,
        }
    }

    fn decode_next(&mut self) -> Result<Record, Error> {
        let mut cursor = Cursor {
            buf: &self.records,
            at: self.at,
        };
        let body = cursor.length()?;
        let end = cursor
            .at
            .checked_add(body)
            .filter(|end| *end <= self.records.len());
        let end = end.ok_or(Error::MalformedRecords {
            reason: "record runs past the batch",
        })?;
        let mut cursor = Cursor {
            buf: &self.records[..end],
            at: cursor.at,
        };
        let _attributes = cursor.byte()?;
        let timestamp_delta = cursor.varint()?;
        let offset_delta = cursor.varint()?;
        if offset_delta != i64::from(self.next_delta) {
            return Err(Error::MalformedRecords {
                reason: "offset deltas are not consecutive",
            });
        }
        let key = cursor.nullable(&self.records)?;
        let value = cursor.nullable(&self.records)?;
        let header_count = cursor.length()?;
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let key_len = cursor.length()?;
            let key = cursor.take(&self.records, key_len)?;
            if std::str::from_utf8(&key).is_err() {
                return Err(Error::MalformedRecords {
                    reason: "header name is not UTF-8",
                });
            }
            let value = cursor.nullable(&self.records)?;
            headers.push(RecordHeader { key, value });
        }
        if cursor.at != end {
            return Err(Error::MalformedRecords {
                reason: "record length disagrees with its fields",
            });
        }
        self.at = end;
        Ok(Record {
            offset: self.base_offset + u64::from(self.next_delta),
            timestamp_ms: self.first_timestamp_ms.wrapping_add(timestamp_delta),
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining_count == 0 {
            return None;
        }
        match self.decode_next() {
            Ok(record) => {
                self.remaining_count -= 1;
                self.next_delta += 1;
                Some(Ok(record))
            }
            Err(error) => {
                self.remaining_count = 0;
                Some(Err(error))
            }
        }
    }
}

/// A Kafka `int32` length or count as a `usize`; `None` when negative or past `i32::MAX`.
fn int32_len(value: i64) -> Option<usize> {
    if (0..=i64::from(i32::MAX)).contains(&value) {
        Some(value as usize)
    } else {
        None
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let byte = *self.buf.get(self.at).ok_or(Error::MalformedRecords {
            reason: "record ends early",
        })?;
        self.at += 1;
        Ok(byte)
    }

    /// A length or count: a varint in `0..=i32::MAX`.
    fn length(&mut self) -> Result<usize, Error> {
        int32_len(self.varint()?).ok_or(Error::MalformedRecords {
            reason: "negative or oversized length",
        })
    }

    fn varint(&mut self) -> Result<i64, Error> {
        let rest = self.buf.get(self.at..).unwrap_or(&[]);
        let (value, used) = get_varint(rest).ok_or(Error::MalformedRecords {
            reason: "bad varint",
        })?;
        self.at += used;
        Ok(value)
    }

    fn take(&mut self, whole: &Bytes, len: usize) -> Result<Bytes, Error> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.buf.len());
        let end = end.ok_or(Error::MalformedRecords {
            reason: "field runs past the record",
        })?;
        let slice = whole.slice(self.at..end);
        self.at = end;
        Ok(slice)
    }

    fn nullable(&mut self, whole: &Bytes) -> Result<Option<Bytes>, Error> {
        match self.varint()? {
            -1 => Ok(None),
            len if (0..=i64::from(i32::MAX)).contains(&len) => {
                self.take(whole, len as usize).map(Some)
            }
            _ => Err(Error::MalformedRecords {
                reason: "negative or oversized field length",
            }),
        }
    }
}
