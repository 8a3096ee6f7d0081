//! Walking the frames of a segment.
//!
//! Two walks exist, with different trust:
//! - [`recover`] validates every frame in full (CRC included) and stops at
//!   the first torn, zero or bad one: it decides what survives a crash.
//! - [`find_batch`] and [`extent`] read only headers of frames that recovery
//!   or the writer already validated: they serve reads.

use shardlog_wire::batch::{self, peek_length_bytes, BatchHeader, BatchLimits, BATCH_HEADER_BYTES};

use super::index::{IndexEntry, SparseIndex};
use super::SegmentFile;
use crate::config::WRITE_BYTES_MAX;
use crate::{Error, Result};

/// Bytes read at a time by recovery; a frame never exceeds it.
const RECOVERY_CHUNK_BYTES: usize = WRITE_BYTES_MAX;

/// Why recovery stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The file ended exactly after the last frame.
    EndOfFile,
    /// Zero bytes where a frame should start: padding after the last write.
    ZeroPadding,
    /// A frame runs past the end of the file.
    TornFrame,
    /// A frame fails validation or continues the offsets wrongly.
    InvalidFrame,
}

/// What a full scan of a segment found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub valid_bytes: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub index: SparseIndex,
    pub stop: StopReason,
}

/// Tracks index entries while frames are appended or scanned in order.
#[derive(Debug)]
pub(crate) struct IndexBuilder {
    base_offset: u64,
    interval_bytes: u64,
    next_entry_position: u64,
    pub max_timestamp_ms: i64,
}

impl IndexBuilder {
    pub(crate) fn new(base_offset: u64, interval_bytes: u32) -> IndexBuilder {
        IndexBuilder {
            base_offset,
            interval_bytes: u64::from(interval_bytes),
            next_entry_position: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Resumes after the frames an index and timestamp already describe.
    pub(crate) fn resume(
        base_offset: u64,
        interval_bytes: u32,
        index: &SparseIndex,
        max_timestamp_ms: i64,
    ) -> IndexBuilder {
        let mut builder = IndexBuilder::new(base_offset, interval_bytes);
        builder.next_entry_position = index
            .last_position()
            .map_or(0, |p| u64::from(p) + builder.interval_bytes);
        builder.max_timestamp_ms = max_timestamp_ms;
        builder
    }

    /// Records the frame at `position`, adding an index entry when due.
    pub(crate) fn observe(&mut self, index: &mut SparseIndex, position: u64, header: &BatchHeader) {
        assert!(header.base_offset >= self.base_offset);
        if position >= self.next_entry_position {
            let relative = header.base_offset - self.base_offset;
            index.push(IndexEntry {
                relative_offset: u32::try_from(relative).unwrap_or(u32::MAX),
                position: u32::try_from(position)
                    .expect("segment positions fit u32 (checked by config)"),
                max_timestamp_before_ms: self.max_timestamp_ms,
            });
            self.next_entry_position = position + self.interval_bytes;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
    }
}

/// Validates every frame of a segment from its start and reports how much of it is good.
pub(crate) async fn recover(
    file: &SegmentFile,
    path: &std::path::Path,
    base_offset: u64,
    file_bytes: u64,
    limits: &BatchLimits,
    index_interval_bytes: u32,
) -> Result<Recovered> {
    let mut index = SparseIndex::default();
    let mut builder = IndexBuilder::new(base_offset, index_interval_bytes);
    let mut position = 0u64;
    let mut next_offset = base_offset;
    let stop = loop {
        if position == file_bytes {
            break StopReason::EndOfFile;
        }
        let chunk_len = (file_bytes - position).min(RECOVERY_CHUNK_BYTES as u64) as usize;
        let chunk = file
            .read_at(position, chunk_len)
            .await
            .map_err(|e| Error::io("reading segment", path, e))?;
        let is_last_chunk = position + chunk_len as u64 == file_bytes;
        let mut at = 0usize;
        let stopped = loop {
            let rest = &chunk[at..];
            let Some(length) = peek_length_bytes(rest) else {
                break if is_last_chunk {
                    Some(tail_reason(rest))
                } else {
                    None
                };
            };
            let length = length as usize;
            if length == 0 {
                break Some(StopReason::ZeroPadding);
            }
            if length < BATCH_HEADER_BYTES || length > limits.batch_bytes_max as usize {
                break Some(StopReason::InvalidFrame);
            }
            if length > rest.len() {
                break if is_last_chunk {
                    Some(StopReason::TornFrame)
                } else {
                    None
                };
            }
            let Ok(header) = batch::validate(&rest[..length], limits) else {
                break Some(StopReason::InvalidFrame);
            };
            if header.base_offset != next_offset {
                break Some(StopReason::InvalidFrame);
            }
            builder.observe(&mut index, position + at as u64, &header);
            next_offset = header.next_offset();
            at += length;
        };
        position += at as u64;
        if let Some(stop) = stopped {
            break stop;
        }
        assert!(at > 0, "a chunk holds at least one whole frame");
    };
    Ok(Recovered {
        valid_bytes: position,
        next_offset,
        max_timestamp_ms: builder.max_timestamp_ms,
        index,
        stop,
    })
}

fn tail_reason(rest: &[u8]) -> StopReason {
    if rest.is_empty() {
        StopReason::EndOfFile
    } else if rest.iter().all(|b| *b == 0) {
        StopReason::ZeroPadding
    } else {
        StopReason::TornFrame
    }
}

pub(crate) async fn read_header(
    file: &SegmentFile,
    path: &std::path::Path,
    position: u64,
) -> Result<BatchHeader> {
    let bytes = file
        .read_at(position, BATCH_HEADER_BYTES)
        .await
        .map_err(|e| Error::io("reading segment", path, e))?;
    BatchHeader::parse(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        position,
        reason: e.to_string(),
    })
}

/// From a frame boundary at or before the target, finds the frame holding
/// `offset` (or the first one after it). `None` when no frame before
/// `limit_position` qualifies.
pub(crate) async fn find_batch(
    file: &SegmentFile,
    path: &std::path::Path,
    mut position: u64,
    limit_position: u64,
    offset: u64,
) -> Result<Option<(u64, BatchHeader)>> {
    while position < limit_position {
        let header = read_header(file, path, position).await?;
        if header.last_offset() >= offset {
            return Ok(Some((position, header)));
        }
        position += u64::from(header.length_bytes);
    }
    Ok(None)
}

/// From the frame `first` at `position`, extends the range frame by frame
/// while it stays within `max_bytes` (the first frame always counts), before
/// `limit_position`, and below `end_offset`. Returns `(end position, next offset)`.
pub(crate) async fn extent(
    file: &SegmentFile,
    path: &std::path::Path,
    position: u64,
    first: &BatchHeader,
    limit_position: u64,
    end_offset: u64,
    max_bytes: u64,
) -> Result<(u64, u64)> {
    assert!(first.base_offset < end_offset);
    let mut end = position + u64::from(first.length_bytes);
    let mut next_offset = first.next_offset();
    while end < limit_position && next_offset < end_offset {
        let header = read_header(file, path, end).await?;
        let length = u64::from(header.length_bytes);
        if end + length - position > max_bytes || header.base_offset != next_offset {
            break;
        }
        end += length;
        next_offset = header.next_offset();
    }
    Ok((end, next_offset))
}

/// From a position at or before the answer, finds the first frame whose max
/// timestamp is at or after `timestamp_ms`.
pub(crate) async fn find_batch_by_timestamp(
    file: &SegmentFile,
    path: &std::path::Path,
    mut position: u64,
    limit_position: u64,
    timestamp_ms: i64,
) -> Result<Option<(u64, BatchHeader)>> {
    while position < limit_position {
        let header = read_header(file, path, position).await?;
        if header.max_timestamp_ms >= timestamp_ms {
            return Ok(Some((position, header)));
        }
        position += u64::from(header.length_bytes);
    }
    Ok(None)
}
