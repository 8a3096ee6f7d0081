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

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{BufferedFile, ReadResult};
use shardlog_wire::batch::{Batch, BatchHeader};

use super::append::write_index_file;
use super::{LogInner, PartitionLog, SealedIndex};
use crate::segment::index::{self, SealedMeta, SparseIndex};
use crate::segment::scan::{self, ScanStart};
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

/// A segment ready to be read: its file, where to start walking, and where its frames end.
struct Readable {
    file: SegmentFile,
    start_position: u64,
    limit_position: u64,
    path: std::path::PathBuf,
}

/// What the sparse index is asked.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Offset(u64),
    Timestamp(i64),
}

impl Lookup {
    fn position(self, index: &SparseIndex, base_offset: u64) -> u64 {
        match self {
            Lookup::Offset(offset) => index.position_for_offset(offset - base_offset),
            Lookup::Timestamp(timestamp_ms) => index.position_for_timestamp(timestamp_ms),
        }
    }
}

impl PartitionLog {
    /// Reads whole batches from the one holding `offset`, at most `max_bytes`
    /// (but always one whole batch), stopping before `end_offset` and the high watermark.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `offset` is below the log start or
    /// above the high watermark; I/O errors.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        end_offset: Option<u64>,
    ) -> Result<ReadSlice> {
        let inner = &self.inner;
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
        let cached = inner
            .shard
            .cache()
            .borrow_mut()
            .read(inner.cache_key, offset, max_bytes, end);
        if let Some(parts) = cached {
            let last = parts.last().expect("a cache hit holds a batch");
            slice.next_offset = BatchHeader::parse(last)
                .expect("cached batches are valid")
                .next_offset();
            slice.parts = parts.into_iter().map(ReadPart::Memory).collect();
            return Ok(slice);
        }
        let segment = inner
            .readable_segment(offset, Lookup::Offset(offset))
            .await?;
        let start_position = segment.start_position;
        let found = scan::find_batch(
            &segment.file,
            &segment.path,
            start_position,
            segment.limit_position,
            offset,
        )
        .await?;
        let (position, first) = found.ok_or_else(|| Error::Corrupt {
            path: segment.path.clone(),
            position: start_position,
            reason: format!("offset {offset} is below the high watermark but not in its segment"),
        })?;
        let extent = scan::extent(
            &segment.file,
            &segment.path,
            position,
            &first,
            segment.limit_position,
            end,
            max_bytes,
        );
        let (end_position, next_offset) = extent.await?;
        let length = end_position - position;
        let part = match segment.file {
            SegmentFile::Buffered(file) => ReadPart::File {
                file,
                position,
                length,
            },
            SegmentFile::Direct(file) => {
                let bytes = file.read_at(position, length as usize).await;
                ReadPart::Direct(bytes.map_err(|e| Error::io("reading segment", &segment.path, e))?)
            }
        };
        slice.parts.push(part);
        slice.next_offset = next_offset;
        Ok(slice)
    }

    /// The offset of the first record whose timestamp is at or after
    /// `timestamp_ms`, or `None` when every record is older.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let high_watermark = self.high_watermark();
        let Some(segment_base) = self.inner.segment_for_timestamp(timestamp_ms) else {
            return Ok(None);
        };
        let segment = self
            .inner
            .readable_segment(segment_base, Lookup::Timestamp(timestamp_ms))
            .await?;
        let from = segment.start_position;
        let found = scan::find_batch_by_timestamp(
            &segment.file,
            &segment.path,
            from,
            segment.limit_position,
            timestamp_ms,
        );
        let Some((position, header)) = found.await? else {
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
        let batch = Batch::parse(
            Bytes::copy_from_slice(&bytes),
            &self.inner.config.batch_limits,
        )?;
        let Ok(records) = batch.records() else {
            return Ok(Some(header.base_offset));
        };
        for record in records {
            let record = record?;
            if record.timestamp_ms >= timestamp_ms {
                return Ok((record.offset < high_watermark).then_some(record.offset));
            }
        }
        Ok(None)
    }
}

impl PartitionLog {
    /// The limits every appended batch is checked against.
    pub fn batch_limits(&self) -> shardlog_wire::batch::BatchLimits {
        self.inner.config.batch_limits
    }

    /// The headers of the batches from the one holding `offset` up to the
    /// high watermark, read without the records. The broker rebuilds its
    /// idempotent-producer state from the last few thousand offsets with it.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] outside the log; I/O errors.
    pub async fn batch_headers(&self, offset: u64) -> Result<Vec<BatchHeader>> {
        let high_watermark = self.high_watermark();
        let mut headers = Vec::new();
        let mut next = offset;
        while next < high_watermark {
            let segment = self
                .inner
                .readable_segment(next, Lookup::Offset(next))
                .await?;
            let mut position = segment.start_position;
            let found = scan::find_batch(
                &segment.file,
                &segment.path,
                position,
                segment.limit_position,
                next,
            )
            .await?;
            let Some((found_position, _)) = found else {
                break;
            };
            position = found_position;
            while position < segment.limit_position && next < high_watermark {
                let header = scan::read_header(&segment.file, &segment.path, position).await?;
                position += u64::from(header.length_bytes);
                next = header.next_offset();
                headers.push(header);
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
                    start_position: lookup.position(&active.index, active.base_offset),
                    limit_position: active.written_bytes,
                    path: log_path(&self.dir, active.base_offset),
                });
            }
        }
        let base_offset = self.sealed_base_for(offset)?;
        let index = self.sealed_index(base_offset).await?;
        let file = self.sealed_file(base_offset).await?;
        let limit_position = self.with_sealed(base_offset, |s| s.meta.log_bytes)?;
        let path = log_path(&self.dir, base_offset);
        let start_position = lookup.position(&index, base_offset);
        Ok(Readable {
            file: SegmentFile::Buffered(file),
            start_position,
            limit_position,
            path,
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

    async fn sealed_file(&self, base_offset: u64) -> Result<Rc<BufferedFile>> {
        if let Some(file) =
            self.with_sealed(base_offset, |s| s.file.as_ref().map(|(f, _)| f.clone()))?
        {
            return Ok(file);
        }
        let slot = match self.shard.reserve_file() {
            Ok(slot) => slot,
            Err(_) => {
                self.close_idle_sealed_files();
                self.shard.reserve_file()?
            }
        };
        let path = log_path(&self.dir, base_offset);
        let file = Rc::new(
            BufferedFile::open(&path)
                .await
                .map_err(|e| Error::io("opening segment", &path, e))?,
        );
        self.with_sealed(base_offset, |s| {
            s.file.get_or_insert((file.clone(), slot)).0.clone()
        })
    }

    /// Closes sealed-segment files no read is using, to give their slots back.
    fn close_idle_sealed_files(&self) {
        let mut state = self.state.borrow_mut();
        for segment in state.sealed.iter_mut() {
            if segment
                .file
                .as_ref()
                .is_some_and(|(file, _)| Rc::strong_count(file) == 1)
            {
                segment.file = None;
            }
        }
    }
}
