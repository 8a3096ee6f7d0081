//! The read path.
//!
//! ```text
//!   offset ─► tail cache? ──yes──► Memory(Bytes) parts
//!               │ no
//!               ├─ in active segment ─► sparse index ─► header walk ─► one O_DIRECT read ─► Direct
//!               └─ in sealed segment ─► sparse index ─► header walk ─► File{fd, position, length}
//! ```
//!
//! A read starts at the frame holding the offset and ends on a frame
//! boundary, within `max_bytes` (one whole frame is always returned, so a
//! consumer makes progress), before the high watermark, and inside one
//! segment. Nothing is copied into an intermediate buffer: a sealed range is
//! handed over as a file range for `sendfile(2)`.
//!
//! Data from disk is checked, never trusted into a panic: every header walk
//! starts at a boundary the index vouches for (position and offset) and
//! checks that each frame continues the offsets exactly and stays inside
//! the segment's `[base, next)` offsets and its bytes (`segment::scan`).
//! A broken promise answers the read with [`Error::Corrupt`] and counts in
//! the log's `health()`, so the broker can show it and page someone.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{BufferedFile, ReadResult};
use shardlog_wire::batch::{Batch, BatchHeader};

use super::append::write_index_file;
use super::{LogInner, PartitionLog, SealedIndex};
use crate::segment::index::{self, SealedMeta, SparseIndex};
use crate::segment::scan::{self, FrameStart, HeaderWalk, ScanStart};
use crate::segment::{index_path, log_path, SegmentFile};
use crate::{Error, Result};

/// One piece of a read, in log order.
#[derive(Debug)]
pub enum ReadPart {
    /// Whole batches from the tail cache.
    Memory(Bytes),
    /// A range of a sealed segment, to be sent with `sendfile(2)` from the page cache.
    File {
        /// The open segment; it stays readable while this part lives, even if retention deletes it.
        file: Rc<BufferedFile>,
        /// Start of the range.
        position: u64,
        /// Length of the range.
        length: u64,
    },
    /// Whole batches read with O_DIRECT from the active segment.
    Direct(ReadResult),
}

impl ReadPart {
    /// Bytes in this part.
    pub fn len(&self) -> u64 {
        match self {
            ReadPart::Memory(bytes) => bytes.len() as u64,
            ReadPart::File { length, .. } => *length,
            ReadPart::Direct(result) => result.len() as u64,
        }
    }

    /// True when the part holds no bytes (never the case for a part of a read).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file descriptor of a `File` part, for `sendfile(2)`.
    pub fn raw_fd(&self) -> Option<RawFd> {
        match self {
            ReadPart::File { file, .. } => Some(file.as_raw_fd()),
            _ => None,
        }
    }
}

/// The result of a read: whole batches, in order, and the log's bounds at the time.
#[derive(Debug)]
pub struct ReadSlice {
    /// The batches, as pieces to send one after another.
    pub parts: Vec<ReadPart>,
    /// The offset after the last batch returned (the next offset to read).
    pub next_offset: u64,
    /// The high watermark when the read was served.
    pub high_watermark: u64,
    /// The log start offset when the read was served.
    pub log_start_offset: u64,
}

impl ReadSlice {
    /// Bytes in all parts.
    pub fn size_bytes(&self) -> u64 {
        self.parts.iter().map(ReadPart::len).sum()
    }

    /// True when nothing was returned (the offset was at the high watermark).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Copies every part into one buffer. For tools and tests; the broker
    /// sends the parts as they are.
    ///
    /// # Errors
    /// An I/O error reading a `File` part.
    pub async fn to_bytes(&self) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.size_bytes() as usize);
        for part in &self.parts {
            match part {
                ReadPart::Memory(bytes) => out.extend_from_slice(bytes),
                ReadPart::Direct(result) => out.extend_from_slice(result),
                ReadPart::File {
                    file,
                    position,
                    length,
                } => {
                    let bytes = file.read_at(*position, *length as usize).await;
                    let bytes =
                        bytes.map_err(|e| Error::io("reading segment", "sealed segment", e))?;
                    if bytes.len() as u64 != *length {
                        return Err(Error::io(
                            "reading segment",
                            "sealed segment",
                            std::io::Error::other("short read"),
                        ));
                    }
                    out.extend_from_slice(&bytes);
                }
            }
        }
        Ok(out.freeze())
    }
}

/// A segment ready to be read: its file, the frame boundary the index
/// vouches for, and where its frames end (in bytes and offsets).
struct Readable {
    file: SegmentFile,
    start: FrameStart,
    end: FrameStart,
    path: std::path::PathBuf,
}

impl Readable {
    fn walk(&self) -> HeaderWalk<'_> {
        HeaderWalk::new(&self.file, &self.path, self.start, self.end)
    }

    fn corrupt(&self, position: u64, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            position,
            reason,
        }
    }
}

/// Whether a read may return its first batch whole past `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstBatch {
    /// Always return the batch holding the offset, however large: a
    /// consumer reading one partition always progresses.
    Whole,
    /// Return nothing rather than pass `max_bytes`.
    WithinLimit,
}

/// What the sparse index is asked.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Offset(u64),
    Timestamp(i64),
}

impl Lookup {
    /// The indexed frame boundary to walk from.
    fn start(self, index: &SparseIndex, base_offset: u64) -> FrameStart {
        let (position, relative_offset) = match self {
            Lookup::Offset(offset) => index.entry_for_offset(offset - base_offset),
            Lookup::Timestamp(timestamp_ms) => index.entry_for_timestamp(timestamp_ms),
        };
        FrameStart {
            position,
            offset: base_offset + relative_offset,
        }
    }
}

impl PartitionLog {
    /// Reads whole batches from the one holding `offset`, at most `max_bytes`
    /// (but always one whole batch), stopping before `end_offset` and the high watermark.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `offset` is below the log start or
    /// above the high watermark; [`Error::Corrupt`] when the frames on disk
    /// break what the index and the segment bounds promise (counted in
    /// [`PartitionLog::health`]); I/O errors.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        end_offset: Option<u64>,
    ) -> Result<ReadSlice> {
        self.read_limited(offset, max_bytes, end_offset, FirstBatch::Whole)
            .await
    }

    /// As [`PartitionLog::read`], but never more than `max_bytes`: when the
    /// batch holding `offset` is larger by itself, the slice is empty (and
    /// nothing was read). A broker filling one response from many
    /// partitions reads the later ones this way, so it never reads what it
    /// will not send.
    ///
    /// # Errors
    /// As [`PartitionLog::read`].
    pub async fn read_within(
        &self,
        offset: u64,
        max_bytes: u64,
        end_offset: Option<u64>,
    ) -> Result<ReadSlice> {
        self.read_limited(offset, max_bytes, end_offset, FirstBatch::WithinLimit)
            .await
    }

    async fn read_limited(
        &self,
        offset: u64,
        max_bytes: u64,
        end_offset: Option<u64>,
        first_batch: FirstBatch,
    ) -> Result<ReadSlice> {
        let (high_watermark, log_start_offset) = (self.high_watermark(), self.log_start_offset());
        if offset < log_start_offset || offset > high_watermark {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
            });
        }
        let end = high_watermark.min(end_offset.unwrap_or(u64::MAX));
        let mut slice = ReadSlice {
            parts: Vec::new(),
            next_offset: offset,
            high_watermark,
            log_start_offset,
        };
        if offset >= end {
            return Ok(slice);
        }
        let inner = &self.inner;
        let cached = inner
            .shard
            .cache()
            .borrow_mut()
            .read(inner.cache_key, offset, max_bytes, end);
        if let Some(parts) = cached {
            let first_bytes = parts.first().map_or(0, |p| p.len() as u64);
            if first_batch == FirstBatch::WithinLimit && first_bytes > max_bytes {
                return Ok(slice);
            }
            let last = parts.last().expect("a cache hit holds a batch");
            slice.next_offset = BatchHeader::parse(last)
                .expect("cached batches are valid")
                .next_offset();
            slice.parts = parts.into_iter().map(ReadPart::Memory).collect();
            return Ok(slice);
        }
        let read = inner.read_disk(offset, max_bytes, end, first_batch).await;
        if let Some((part, next_offset)) = inner.note_read(read)? {
            slice.parts.push(part);
            slice.next_offset = next_offset;
        }
        Ok(slice)
    }

    /// The offset of the first record whose timestamp is at or after
    /// `timestamp_ms`, or `None` when every record is older.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on damaged frames (counted in
    /// [`PartitionLog::health`]); I/O errors.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let inner = &self.inner;
        inner.note_read(inner.offset_for_timestamp(timestamp_ms).await)
    }

    /// The limits every appended batch is checked against.
    pub fn batch_limits(&self) -> shardlog_wire::batch::BatchLimits {
        self.inner.config.batch_limits
    }

    /// The headers of the batches from the one holding `offset` up to the
    /// high watermark, read without the records. The broker rebuilds its
    /// idempotent-producer state from the last few thousand offsets with it.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] outside the log; [`Error::Corrupt`] on
    /// damaged frames (counted in [`PartitionLog::health`]); I/O errors.
    pub async fn batch_headers(&self, offset: u64) -> Result<Vec<BatchHeader>> {
        let inner = &self.inner;
        inner.note_read(inner.batch_headers(offset).await)
    }
}

impl LogInner {
    /// Reads from a segment file: the frames from the one holding `offset`,
    /// as one part, and the offset after them.
    /// The frames from the one holding `offset`, or `None` when that one
    /// alone exceeds `max_bytes` and must come `WithinLimit`.
    async fn read_disk(
        &self,
        offset: u64,
        max_bytes: u64,
        end: u64,
        first_batch: FirstBatch,
    ) -> Result<Option<(ReadPart, u64)>> {
        let segment = self
            .readable_segment(offset, Lookup::Offset(offset))
            .await?;
        let mut walk = segment.walk();
        let (position, first) = scan::find_batch(&mut walk, offset).await?;
        // The walk starts at or before `offset` and continues the offsets exactly.
        assert!(first.base_offset <= offset && offset < end);
        if first_batch == FirstBatch::WithinLimit && u64::from(first.length_bytes) > max_bytes {
            return Ok(None);
        }
        let stop = scan::extent(&mut walk, position, end, max_bytes).await?;
        let length = stop.position - position;
        let part = match &segment.file {
            SegmentFile::Buffered(file) => ReadPart::File {
                file: file.clone(),
                position,
                length,
            },
            SegmentFile::Direct(file) => {
                let bytes = file.read_at(position, length as usize).await;
                let bytes = bytes.map_err(|e| Error::io("reading segment", &segment.path, e))?;
                if bytes.len() as u64 != length {
                    let reason = format!("read {} of {length} bytes of whole frames", bytes.len());
                    return Err(segment.corrupt(position, reason));
                }
                ReadPart::Direct(bytes)
            }
        };
        Ok(Some((part, stop.offset)))
    }

    async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let high_watermark = self.state.borrow().durable_offset;
        let Some(segment_base) = self.segment_for_timestamp(timestamp_ms) else {
            return Ok(None);
        };
        let segment = self
            .readable_segment(segment_base, Lookup::Timestamp(timestamp_ms))
            .await?;
        let mut walk = segment.walk();
        let found = scan::find_batch_by_timestamp(&mut walk, timestamp_ms).await?;
        let Some((position, header)) = found else {
            return Ok(None);
        };
        if header.base_offset >= high_watermark {
            return Ok(None);
        }
        let bytes = segment
            .file
            .read_at(position, header.length_bytes as usize)
            .await;
        let bytes = bytes.map_err(|e| Error::io("reading segment", &segment.path, e))?;
        let damaged = |e: shardlog_wire::Error| segment.corrupt(position, format!("batch: {e}"));
        let batch = Batch::parse(Bytes::copy_from_slice(&bytes), &scan::stored_batch_limits())
            .map_err(damaged)?;
        let Ok(records) = batch.records() else {
            return Ok(Some(header.base_offset));
        };
        for record in records {
            let record = record.map_err(damaged)?;
            if record.timestamp_ms >= timestamp_ms {
                return Ok((record.offset < high_watermark).then_some(record.offset));
            }
        }
        Ok(None)
    }

    async fn batch_headers(&self, offset: u64) -> Result<Vec<BatchHeader>> {
        let high_watermark = self.state.borrow().durable_offset;
        let mut headers = Vec::new();
        let mut next = offset;
        while next < high_watermark {
            let segment = self.readable_segment(next, Lookup::Offset(next)).await?;
            let mut walk = segment.walk();
            let (_, first) = scan::find_batch(&mut walk, next).await?;
            headers.push(first);
            // Every header moves `next` forward: the walk continues the offsets exactly.
            next = walk.next_start().offset;
            while next < high_watermark {
                let Some((_, header)) = walk.next().await? else {
                    break;
                };
                headers.push(header);
                next = walk.next_start().offset;
            }
        }
        Ok(headers)
    }
}

impl LogInner {
    /// The base offset of the first segment holding a timestamp at or after `timestamp_ms`.
    fn segment_for_timestamp(&self, timestamp_ms: i64) -> Option<u64> {
        let state = self.state.borrow();
        let sealed = state
            .sealed
            .iter()
            .find(|s| s.meta.max_timestamp_ms >= timestamp_ms);
        match sealed {
            Some(segment) => Some(segment.meta.base_offset),
            None if state.active.index_builder.max_timestamp_ms >= timestamp_ms => {
                Some(state.active.base_offset)
            }
            None => None,
        }
    }

    /// The segment holding `offset`, with its file open and the index asked where to start.
    async fn readable_segment(&self, offset: u64, lookup: Lookup) -> Result<Readable> {
        {
            let state = self.state.borrow();
            let active = &state.active;
            if offset >= active.base_offset {
                return Ok(Readable {
                    file: SegmentFile::Direct(active.file.clone()),
                    start: lookup.start(&active.index, active.base_offset),
                    end: FrameStart {
                        position: active.written_bytes,
                        offset: state.written_offset,
                    },
                    path: log_path(&self.dir, active.base_offset),
                });
            }
        }
        let base_offset = self.sealed_base_for(offset)?;
        let index = self.sealed_index(base_offset).await?;
        let file = self.sealed_file(base_offset).await?;
        let meta = self.with_sealed(base_offset, |s| s.meta)?;
        Ok(Readable {
            file: SegmentFile::Buffered(file),
            start: lookup.start(&index, base_offset),
            end: FrameStart {
                position: meta.log_bytes,
                offset: meta.next_offset,
            },
            path: log_path(&self.dir, base_offset),
        })
    }

    fn sealed_base_for(&self, offset: u64) -> Result<u64> {
        let state = self.state.borrow();
        let at = state
            .sealed
            .partition_point(|s| s.meta.next_offset <= offset);
        match state.sealed.get(at) {
            Some(segment) if segment.meta.base_offset <= offset => Ok(segment.meta.base_offset),
            _ => Err(self.out_of_range(offset)),
        }
    }

    fn out_of_range(&self, offset: u64) -> Error {
        let state = self.state.borrow();
        let log_start_offset = state
            .sealed
            .front()
            .map_or(state.active.base_offset, |s| s.meta.base_offset);
        Error::OffsetOutOfRange {
            offset,
            log_start_offset,
            high_watermark: state.durable_offset,
        }
    }

    /// Runs `f` on the sealed segment starting at `base_offset`, if retention has not removed it.
    fn with_sealed<T>(
        &self,
        base_offset: u64,
        f: impl FnOnce(&mut super::Sealed) -> T,
    ) -> Result<T> {
        let mut state = self.state.borrow_mut();
        let at = state
            .sealed
            .binary_search_by_key(&base_offset, |s| s.meta.base_offset);
        match at {
            Ok(at) => Ok(f(&mut state.sealed[at])),
            Err(_) => {
                drop(state);
                Err(self.out_of_range(base_offset))
            }
        }
    }

    async fn sealed_index(&self, base_offset: u64) -> Result<Rc<SparseIndex>> {
        let header = self.with_sealed(base_offset, |s| match &s.index {
            SealedIndex::Loaded(index) => Err(index.clone()),
            SealedIndex::OnDisk(header) => Ok(*header),
        })?;
        let header = match header {
            Err(index) => return Ok(index),
            Ok(header) => header,
        };
        let index = match index::load(&index_path(&self.dir, base_offset), &header).await {
            Ok(index) => index,
            Err(error) => {
                tracing::warn!(%error, "index entries damaged; rebuilding them from the segment");
                self.rebuild_sealed_index(&header.meta).await?
            }
        };
        let index = Rc::new(index);
        self.with_sealed(base_offset, |s| {
            s.index = SealedIndex::Loaded(index.clone())
        })?;
        Ok(index)
    }

    /// Rebuilds a sealed segment's index by validating every frame; the
    /// segment must still end exactly where its index header says.
    async fn rebuild_sealed_index(&self, meta: &SealedMeta) -> Result<SparseIndex> {
        let path = log_path(&self.dir, meta.base_offset);
        let file = BufferedFile::open(&path)
            .await
            .map_err(|e| Error::io("opening segment", &path, e))?;
        let source = SegmentFile::Buffered(Rc::new(file));
        let (limits, interval) = (&self.config.batch_limits, self.config.index_interval_bytes);
        let start = ScanStart::segment(meta.base_offset);
        let found = scan::recover(
            &source,
            &path,
            meta.base_offset,
            start,
            meta.log_bytes,
            limits,
            interval,
        )
        .await?;
        if found.valid_bytes != meta.log_bytes || found.next_offset != meta.next_offset {
            return Err(Error::Corrupt {
                path,
                position: found.valid_bytes,
                reason: format!(
                    "sealed segment ends at offset {} but its index says {}",
                    found.next_offset, meta.next_offset
                ),
            });
        }
        write_index_file(&self.dir, meta.base_offset, found.index.encode(meta)).await?;
        Ok(found.index)
    }

    /// The file of sealed segment `base_offset`, from the shard's LRU of open files.
    pub(super) async fn sealed_file(&self, base_offset: u64) -> Result<Rc<BufferedFile>> {
        let path = log_path(&self.dir, base_offset);
        let file = self.shard.sealed_file(self.cache_key, base_offset, &path);
        let file = file.await?;
        // Retention may have deleted the segment while the file was opened.
        if let Err(error) = self.with_sealed(base_offset, |_| ()) {
            self.shard.forget_sealed_file(self.cache_key, base_offset);
            return Err(error);
        }
        Ok(file)
    }
}
