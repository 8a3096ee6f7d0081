//! Walking the frames of a segment.
//!
//! Two walks exist, with different trust:
//! - [`recover`] validates every frame in full (CRC included) and stops at
//!   the first torn, zero or bad one: it decides what survives a crash or a
//!   failed write, from the segment's start or from a trusted frame boundary.
//! - [`HeaderWalk`] reads only the headers of frames that recovery or the
//!   writer already validated: it serves reads. It still checks what each
//!   header promises, because the fields it steers by can change on disk
//!   without the CRC noticing (`base_offset` and `leader_epoch` lie outside
//!   it, and a header walk never computes it): every frame must start at the
//!   offset the index or the frame before it promised, stay inside the
//!   segment's bytes and offsets, and the last one must end exactly where the
//!   segment does. A broken promise is [`Error::Corrupt`], never a panic, an
//!   overflow or a walk that does not advance.
//!
//! ```text
//!  index entry (position p, offset o) ──► frame@p base==o ──► frame@p+len base==o+count ──► ...
//!                                                                    ... last frame ends at (end_position, end_offset)
//! ```

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

/// Limits for checking batches already stored: the format's, not the
/// topic's (a topic may have lowered `batch_bytes_max` since they were written).
pub(crate) fn stored_batch_limits() -> BatchLimits {
    BatchLimits {
        batch_bytes_max: WRITE_BYTES_MAX as u32,
        record_count_max: u32::MAX,
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

/// A frame boundary: a byte position and the offset of the frame there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameStart {
    pub position: u64,
    pub offset: u64,
}

/// A walk over the frame headers of one segment, from a frame boundary
/// that the index (or the segment start) vouches for to the segment's end,
/// checking that every header keeps the promises of the one before it.
#[derive(Debug)]
pub(crate) struct HeaderWalk<'a> {
    file: &'a SegmentFile,
    path: &'a std::path::Path,
    /// The next frame starts here, at this offset.
    next: FrameStart,
    /// Where the segment's last frame ends.
    end: FrameStart,
}

impl<'a> HeaderWalk<'a> {
    /// A walk from `start` to `end`, both frame boundaries of the segment.
    pub(crate) fn new(
        file: &'a SegmentFile,
        path: &'a std::path::Path,
        start: FrameStart,
        end: FrameStart,
    ) -> HeaderWalk<'a> {
        assert!(start.position <= end.position);
        assert!(start.offset <= end.offset);
        HeaderWalk {
            file,
            path,
            next: start,
            end,
        }
    }

    /// The boundary after the frames walked so far.
    pub(crate) fn next_start(&self) -> FrameStart {
        self.next
    }

    /// True once the last frame of the segment was walked.
    pub(crate) fn at_end(&self) -> bool {
        self.next.position == self.end.position
    }

    /// The next frame's position and header; `None` after the last frame.
    ///
    /// # Errors
    /// I/O errors; [`Error::Corrupt`] when the frame breaks a promise.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, BatchHeader)>> {
        let position = self.next.position;
        if self.at_end() {
            if self.next.offset != self.end.offset {
                return Err(self.corrupt(
                    position,
                    format!(
                        "the segment's frames end at offset {} but its bounds say {}",
                        self.next.offset, self.end.offset
                    ),
                ));
            }
            return Ok(None);
        }
        let header = read_header(self.file, self.path, position).await?;
        let next_offset = self
            .check(position, &header)
            .map_err(|reason| self.corrupt(position, reason))?;
        self.next = FrameStart {
            position: position + u64::from(header.length_bytes),
            offset: next_offset,
        };
        Ok(Some((position, header)))
    }

    /// Checks that the frame at `position` continues the walk; the offset after it.
    fn check(&self, position: u64, header: &BatchHeader) -> std::result::Result<u64, String> {
        if header.base_offset != self.next.offset {
            return Err(format!(
                "frame starts at offset {} where offset {} was expected",
                header.base_offset, self.next.offset
            ));
        }
        let length_bytes = u64::from(header.length_bytes);
        if length_bytes > WRITE_BYTES_MAX as u64 || position + length_bytes > self.end.position {
            return Err(format!(
                "frame of {length_bytes} bytes runs past the segment's end at {}",
                self.end.position
            ));
        }
        let next = match frame_next_offset(header) {
            Some(next) if next <= self.end.offset => next,
            _ => {
                return Err(format!(
                    "frame of {} records at offset {} runs past the segment's end offset {}",
                    header.record_count, header.base_offset, self.end.offset
                ))
            }
        };
        // The last frame ends both where the segment's bytes and its offsets end.
        let end_position = position + length_bytes;
        if (end_position == self.end.position) != (next == self.end.offset) {
            return Err(format!(
                "frame ends at position {end_position}, offset {next}; the segment ends at position {}, offset {}",
                self.end.position, self.end.offset
            ));
        }
        Ok(next)
    }

    fn corrupt(&self, position: u64, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            position,
            reason,
        }
    }
}

/// Walks on to the frame holding `offset`. The walk must start at or
/// before it, and the segment must hold it.
///
/// # Errors
/// I/O errors; [`Error::Corrupt`] when a frame breaks a promise or the
/// segment ends before `offset`.
pub(crate) async fn find_batch(
    walk: &mut HeaderWalk<'_>,
    offset: u64,
) -> Result<(u64, BatchHeader)> {
    assert!(walk.next_start().offset <= offset);
    loop {
        match walk.next().await? {
            Some((position, header)) if walk.next_start().offset > offset => {
                return Ok((position, header))
            }
            Some(_) => {}
            None => {
                let position = walk.next_start().position;
                return Err(walk.corrupt(
                    position,
                    format!("offset {offset} is not in the segment its bounds say holds it"),
                ));
            }
        }
    }
}

/// From the walk standing after the first frame of a read (at
/// `start_position`), extends the read frame by frame while it stays within
/// `max_bytes` (the first frame always counts) and below `end_offset`.
/// Returns the boundary after the last frame taken.
///
/// # Errors
/// As [`HeaderWalk::next`].
pub(crate) async fn extent(
    walk: &mut HeaderWalk<'_>,
    start_position: u64,
    end_offset: u64,
    max_bytes: u64,
) -> Result<FrameStart> {
    let mut end = walk.next_start();
    while !walk.at_end() && end.offset < end_offset {
        if walk.next().await?.is_none() || walk.next_start().position - start_position > max_bytes {
            break;
        }
        end = walk.next_start();
    }
    Ok(end)
}

/// Walks on to the first frame whose max timestamp is at or after
/// `timestamp_ms`; `None` when no frame of the segment has one.
///
/// # Errors
/// As [`HeaderWalk::next`].
pub(crate) async fn find_batch_by_timestamp(
    walk: &mut HeaderWalk<'_>,
    timestamp_ms: i64,
) -> Result<Option<(u64, BatchHeader)>> {
    while let Some((position, header)) = walk.next().await? {
        if header.max_timestamp_ms >= timestamp_ms {
            return Ok(Some((position, header)));
        }
    }
    Ok(None)
}
