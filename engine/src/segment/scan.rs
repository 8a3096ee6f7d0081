//! Walking the frames of a segment.
//!
//! Two walks exist, with different trust:
//! - [`recover`] validates every frame in full (CRC included) and stops at
//!   the first torn, zero or bad one: it decides what survives a crash or a
//!   failed write, from the segment's start or from a trusted frame boundary.
//! - [`find_batch`] and [`extent`] read only headers of frames that recovery
//!   or the writer already validated: they serve reads.

use shardlog_wire::batch::{self, peek_length_bytes, BatchHeader, BatchLimits, BATCH_HEADER_BYTES};

use super::index::{IndexEntry, SparseIndex};
use super::SegmentFile;
use crate::config::{SEGMENT_BYTES_MAX, WRITE_BYTES_MAX};
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
        let relative = u32::try_from(header.base_offset - self.base_offset);
        // Past 2^32 offsets in one segment, entries stop: lookups walk from the last one.
        if let (true, Ok(relative_offset)) = (position >= self.next_entry_position, relative) {
            index.push(IndexEntry {
                relative_offset,
                position: u32::try_from(position)
                    .expect("segment positions fit u32 (checked by config and by recover)"),
                max_timestamp_before_ms: self.max_timestamp_ms,
            });
            self.next_entry_position = position + self.interval_bytes;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
    }
}

/// Where a scan starts: a frame boundary that is trusted, with the index
/// entries and the largest timestamp of the frames before it.
#[derive(Debug)]
pub(crate) struct ScanStart {
    pub position: u64,
    pub next_offset: u64,
    pub index: SparseIndex,
    pub max_timestamp_ms: i64,
}

impl ScanStart {
    /// The start of the segment beginning at `base_offset`.
    pub(crate) fn segment(base_offset: u64) -> ScanStart {
        ScanStart {
            position: 0,
            next_offset: base_offset,
            index: SparseIndex::default(),
            max_timestamp_ms: i64::MIN,
        }
    }
}

/// Validates every frame of a segment from `start` up to `file_bytes` and
/// reports how much of it is good.
///
/// # Errors
/// I/O errors; [`Error::Corrupt`] when the file is larger than a segment
/// may be or `start` lies past `file_bytes`.
pub(crate) async fn recover(
    file: &SegmentFile,
    path: &std::path::Path,
    base_offset: u64,
    start: ScanStart,
    file_bytes: u64,
    limits: &BatchLimits,
    index_interval_bytes: u32,
) -> Result<Recovered> {
    if file_bytes > SEGMENT_BYTES_MAX || start.position > file_bytes {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            position: file_bytes,
            reason: format!(
                "segment of {file_bytes} bytes cannot be scanned from position {} (at most {SEGMENT_BYTES_MAX} bytes)",
                start.position
            ),
        });
    }
    let mut builder = IndexBuilder::resume(
        base_offset,
        index_interval_bytes,
        &start.index,
        start.max_timestamp_ms,
    );
    let mut index = start.index;
    let mut position = start.position;
    let mut next_offset = start.next_offset;
    let stop = loop {
        if position == file_bytes {
            break StopReason::EndOfFile;
        }
        let chunk_len = (file_bytes - position).min(RECOVERY_CHUNK_BYTES as u64) as usize;
        let chunk = file
            .read_at(position, chunk_len)
            .await
            .map_err(|e| Error::io("reading segment", path, e))?;
        // A short read (the file shrank) ends the scan like the end of the file.
        let is_last_chunk = chunk.len() < chunk_len || position + chunk_len as u64 == file_bytes;
        let chunk = &chunk[..chunk.len().min(chunk_len)];
        let mut at = 0usize;
        let stopped = loop {
            match next_frame(&chunk[at..], is_last_chunk, next_offset, limits) {
                Frame::Valid(header, next) => {
                    builder.observe(&mut index, position + at as u64, &header);
                    next_offset = next;
                    at += header.length_bytes as usize;
                }
                Frame::NeedMore => break None,
                Frame::Stop(reason) => break Some(reason),
            }
        };
        position += at as u64;
        if let Some(stop) = stopped {
            break stop;
        }
        assert!(at > 0, "a full chunk holds at least one whole frame");
    };
    Ok(Recovered {
        valid_bytes: position,
        next_offset,
        max_timestamp_ms: builder.max_timestamp_ms,
        index,
        stop,
    })
}

/// What the bytes at the start of `rest` hold, for recovery.
enum Frame {
    /// A whole, valid frame continuing the offsets, and the offset after it.
    Valid(BatchHeader, u64),
    /// The frame continues in the next chunk.
    NeedMore,
    Stop(StopReason),
}

fn next_frame(rest: &[u8], is_last_chunk: bool, next_offset: u64, limits: &BatchLimits) -> Frame {
    let Some(length) = peek_length_bytes(rest) else {
        return match is_last_chunk {
            true => Frame::Stop(tail_reason(rest)),
            false => Frame::NeedMore,
        };
    };
    let length = length as usize;
    if length == 0 {
        return Frame::Stop(StopReason::ZeroPadding);
    }
    if length < BATCH_HEADER_BYTES || length > limits.batch_bytes_max as usize {
        return Frame::Stop(StopReason::InvalidFrame);
    }
    if length > rest.len() {
        return match is_last_chunk {
            true => Frame::Stop(StopReason::TornFrame),
            false => Frame::NeedMore,
        };
    }
    let Ok(header) = batch::validate(&rest[..length], limits) else {
        return Frame::Stop(StopReason::InvalidFrame);
    };
    match frame_next_offset(&header) {
        Some(next) if header.base_offset == next_offset => Frame::Valid(header, next),
        _ => Frame::Stop(StopReason::InvalidFrame),
    }
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

/// The offset after the frame, or `None` when its offsets overflow (a damaged header).
pub(crate) fn frame_next_offset(header: &BatchHeader) -> Option<u64> {
    header
        .base_offset
        .checked_add(u64::from(header.last_offset_delta))?
        .checked_add(1)
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
        reason: format!("frame header: {e}"),
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
