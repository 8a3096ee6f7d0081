//! The write path: the writer task, the syncer task, rolling, and failures.
//!
//! One writer task per log runs while appends are queued. Each round it
//! takes every queued batch that fits (one write of at most
//! `WRITE_BYTES_MAX`, never past the segment size), copies them behind the
//! partial tail block into one aligned buffer and writes it with O_DIRECT.
//! Under `Always` the syncer task runs beside it: it fdatasyncs whatever was
//! written when it starts a sync and then moves the high watermark, so the
//! writer keeps a write in flight while a sync runs.

use std::rc::Rc;
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use shardlog_wire::batch::BatchHeader;

use super::{now_ms, Active, LogInner, LogState, Pending, Sealed, SealedIndex};
use crate::config::{FlushPolicy, WRITE_BYTES_MAX};
use crate::segment::index::{SealedMeta, SparseIndex};
use crate::segment::scan::IndexBuilder;
use crate::segment::{align_down, align_up, index_path, log_path, TMP_SUFFIX};
use crate::{Error, Result};

/// One write: the tail block and the batches behind it.
struct Round {
    file: Rc<DmaFile>,
    buffer: DmaBuffer,
    write_position: u64,
    used_bytes: usize,
    batches: Vec<(u64, Pending)>,
    batch_bytes: u64,
    new_tail: Vec<u8>,
}

enum Step {
    Idle,
    Roll,
    Write(Round),
}

impl LogInner {
    pub(super) fn start_writer(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if state.writer_running || state.pending.is_empty() {
                return;
            }
            state.writer_running = true;
        }
        let this = self.clone();
        glommio::spawn_local(async move { this.run_writer().await }).detach();
    }

    async fn run_writer(self: Rc<Self>) {
        loop {
            match self.plan_write() {
                Step::Idle => return,
                Step::Roll => {
                    if let Err(error) = self.roll().await {
                        tracing::warn!(dir = %self.dir.display(), %error, "rolling the segment failed");
                        self.fail_unwritten(&error);
                    }
                }
                Step::Write(round) => {
                    let used_bytes = round.used_bytes;
                    let result = round
                        .file
                        .write_at(round.buffer, round.write_position)
                        .await;
                    let result = match result {
                        Ok(written) if written >= used_bytes => Ok(()),
                        Ok(written) => Err(short_write(&self.dir, written, used_bytes)),
                        Err(error) => Err(Error::io("writing segment", &self.dir, error)),
                    };
                    self.finish_write(round.batches, round.batch_bytes, round.new_tail, result);
                }
            }
        }
    }

    /// Decides the next step of the writer; takes the batches of a write round off the queue.
    fn plan_write(&self) -> Step {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let Some(first) = state.pending.front() else {
            state.writer_running = false;
            return Step::Idle;
        };
        let active = &state.active;
        let full = active.written_bytes + first.bytes.len() as u64 > self.config.segment_bytes;
        let old = active
            .first_append_ms
            .is_some_and(|t| now_ms() - t >= self.config.segment_age_max.as_millis() as i64);
        if active.written_bytes > 0 && (full || old) {
            return Step::Roll;
        }
        let head_bytes = active.tail.len();
        let room_bytes = self.config.segment_bytes - active.written_bytes;
        let (mut count, mut batch_bytes) = (0usize, 0u64);
        for pending in &state.pending {
            let len = pending.bytes.len() as u64;
            let over_write = head_bytes as u64 + batch_bytes + len > WRITE_BYTES_MAX as u64;
            if count > 0 && (over_write || batch_bytes + len > room_bytes) {
                break;
            }
            count += 1;
            batch_bytes += len;
        }
        assert!(
            batch_bytes <= room_bytes,
            "a batch never exceeds an empty segment (checked by config)"
        );
        let write_position = align_down(active.written_bytes);
        assert!(write_position + head_bytes as u64 == active.written_bytes);
        let used_bytes = head_bytes + batch_bytes as usize;
        let mut buffer = active
            .file
            .alloc_dma_buffer(align_up(used_bytes as u64) as usize);
        let out = buffer.as_bytes_mut();
        out[..head_bytes].copy_from_slice(&active.tail);
        let mut at = head_bytes;
        let mut batches = Vec::with_capacity(count);
        for pending in state.pending.drain(..count) {
            let len = pending.bytes.len();
            out[at..at + len].copy_from_slice(&pending.bytes);
            batches.push((write_position + at as u64, pending));
            at += len;
        }
        out[at..].fill(0);
        let tail_start = (align_down(write_position + used_bytes as u64) - write_position) as usize;
        let new_tail = out[tail_start..used_bytes].to_vec();
        state.pending_bytes -= batch_bytes;
        let file = state.active.file.clone();
        Step::Write(Round {
            file,
            buffer,
            write_position,
            used_bytes,
            batches,
            batch_bytes,
            new_tail,
        })
    }

    fn finish_write(
        self: &Rc<Self>,
        batches: Vec<(u64, Pending)>,
        batch_bytes: u64,
        new_tail: Vec<u8>,
        result: Result<()>,
    ) {
        self.pending_permits.signal(batch_bytes);
        if let Err(error) = result {
            tracing::warn!(dir = %self.dir.display(), %error, "segment write failed; failing unwritten appends");
            self.fail_unwritten(&error);
            return;
        }
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let mut cache = self.shard.cache().borrow_mut();
        for (position, pending) in batches {
            assert!(
                pending.base_offset == state.written_offset,
                "batches are written in offset order"
            );
            let header =
                BatchHeader::parse(&pending.bytes).expect("batches were validated on append");
            let active = &mut state.active;
            active
                .index_builder
                .observe(&mut active.index, position, &header);
            active.first_append_ms.get_or_insert_with(now_ms);
            active.written_bytes = position + pending.bytes.len() as u64;
            state.written_offset = pending.next_offset;
            cache.insert(
                self.cache_key,
                pending.base_offset,
                pending.next_offset,
                pending.bytes,
            );
        }
        drop(cache);
        assert!(
            state.active.written_bytes % crate::segment::ALIGNMENT_BYTES == new_tail.len() as u64
        );
        state.active.tail = new_tail;
        if self.config.flush != FlushPolicy::Always {
            self.mark_durable(state, state.written_offset);
        }
        drop(guard);
        // Tasks are spawned only after the borrow ends: glommio may poll a new task at once.
        match self.config.flush {
            FlushPolicy::Always => self.start_syncer(),
            FlushPolicy::Never => {}
            FlushPolicy::Interval { interval_ms } => self.schedule_interval_sync(interval_ms),
        }
    }

    fn start_syncer(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if state.syncer_running {
                return;
            }
            state.syncer_running = true;
        }
        let this = self.clone();
        glommio::spawn_local(async move { this.run_syncer().await }).detach();
    }

    async fn run_syncer(self: Rc<Self>) {
        loop {
            let (file, target_offset) = {
                let mut state = self.state.borrow_mut();
                if state.durable_offset >= state.written_offset || state.failed {
                    state.syncer_running = false;
                    return;
                }
                (state.active.file.clone(), state.written_offset)
            };
            let result = file.fdatasync().await;
            let mut state = self.state.borrow_mut();
            match result {
                Ok(()) => self.mark_durable(&mut state, target_offset),
                Err(error) => {
                    self.poison(&mut state, Error::io("syncing segment", &self.dir, error))
                }
            }
        }
    }

    fn schedule_interval_sync(self: &Rc<Self>, interval_ms: u64) {
        {
            let mut state = self.state.borrow_mut();
            if state.interval_sync_scheduled {
                return;
            }
            state.interval_sync_scheduled = true;
        }
        let this = self.clone();
        let task = async move {
            glommio::timer::sleep(Duration::from_millis(interval_ms)).await;
            let file = {
                let mut state = this.state.borrow_mut();
                state.interval_sync_scheduled = false;
                state.active.file.clone()
            };
            if let Err(error) = file.fdatasync().await {
                let mut state = this.state.borrow_mut();
                this.poison(&mut state, Error::io("syncing segment", &this.dir, error));
            }
        };
        glommio::spawn_local(task).detach();
    }

    /// Moves the high watermark to `offset` and resolves the appends below it.
    pub(super) fn mark_durable(&self, state: &mut LogState, offset: u64) {
        assert!(offset <= state.written_offset);
        state.durable_offset = state.durable_offset.max(offset);
        while state
            .waiters
            .front()
            .is_some_and(|w| w.next_offset <= state.durable_offset)
        {
            if let Some(waiter) = state.waiters.pop_front() {
                let _ = waiter.tx.send(Ok(()));
            }
        }
    }

    /// A write failed: every append not yet written fails with `error`, and
    /// offsets continue from the written end. Written appends still wait for their sync.
    pub(super) fn fail_unwritten(&self, error: &Error) {
        let mut state = self.state.borrow_mut();
        let unwritten_bytes = state.pending_bytes;
        state.pending.clear();
        state.pending_bytes = 0;
        self.pending_permits.signal(unwritten_bytes);
        state.next_offset = state.written_offset;
        while state
            .waiters
            .back()
            .is_some_and(|w| w.next_offset > state.written_offset)
        {
            if let Some(waiter) = state.waiters.pop_back() {
                let _ = waiter.tx.send(Err(error.duplicate()));
            }
        }
    }

    /// An fdatasync failed: what reached the disk is unknown, so the log stops
    /// taking writes until it is reopened and recovered from disk.
    fn poison(&self, state: &mut LogState, error: Error) {
        tracing::error!(dir = %self.dir.display(), %error, "fdatasync failed; the log refuses writes until restart");
        state.failed = true;
        let unwritten_bytes = state.pending_bytes;
        state.pending.clear();
        state.pending_bytes = 0;
        self.pending_permits.signal(unwritten_bytes);
        for waiter in state.waiters.drain(..) {
            let _ = waiter.tx.send(Err(error.duplicate()));
        }
    }

    /// Seals the active segment and starts a new one at the written end. Only
    /// the writer (or a caller holding the writer role) calls this.
    pub(super) async fn roll(self: &Rc<Self>) -> Result<()> {
        let (file, base_offset, written_bytes, next_offset) = {
            let state = self.state.borrow();
            assert!(state.pending.is_empty() || state.writer_running);
            (
                state.active.file.clone(),
                state.active.base_offset,
                state.active.written_bytes,
                state.written_offset,
            )
        };
        assert!(written_bytes > 0, "only a segment with data is sealed");
        let path = log_path(&self.dir, base_offset);
        file.fdatasync()
            .await
            .map_err(|e| Error::io("syncing segment", &path, e))?;
        self.mark_durable(&mut self.state.borrow_mut(), next_offset);
        // Cut the alignment padding so a sealed file ends on its last frame.
        file.truncate(written_bytes)
            .await
            .map_err(|e| Error::io("truncating segment", &path, e))?;
        file.fdatasync()
            .await
            .map_err(|e| Error::io("syncing segment", &path, e))?;
        let (meta, encoded) = {
            let state = self.state.borrow();
            let max_timestamp_ms = state.active.index_builder.max_timestamp_ms;
            let meta = SealedMeta {
                base_offset,
                next_offset,
                log_bytes: written_bytes,
                max_timestamp_ms,
            };
            (meta, state.active.index.encode(&meta))
        };
        write_index_file(&self.dir, base_offset, encoded).await?;
        let new_active = self.create_active(next_offset).await?;
        let mut state = self.state.borrow_mut();
        let old = std::mem::replace(&mut state.active, new_active);
        state.sealed.push_back(Sealed {
            meta,
            index: SealedIndex::Loaded(Rc::new(old.index)),
            file: None,
        });
        tracing::debug!(dir = %self.dir.display(), base_offset, next_offset, "rolled segment");
        Ok(())
    }

    /// Creates an empty active segment starting at `base_offset`.
    pub(super) async fn create_active(&self, base_offset: u64) -> Result<Active> {
        create_active(&self.dir, &self.shard, &self.config, base_offset).await
    }
}

/// Creates an empty active segment file starting at `base_offset` and makes its name durable.
pub(super) async fn create_active(
    dir: &std::path::Path,
    shard: &crate::StorageShard,
    config: &crate::LogConfig,
    base_offset: u64,
) -> Result<Active> {
    let path = log_path(dir, base_offset);
    let slot = shard.reserve_file()?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await;
    let file = file.map_err(|e| Error::io("creating segment", &path, e))?;
    sync_dir(dir).await?;
    Ok(Active {
        base_offset,
        file: Rc::new(file),
        _slot: slot,
        written_bytes: 0,
        index: SparseIndex::default(),
        index_builder: IndexBuilder::new(base_offset, config.index_interval_bytes),
        first_append_ms: None,
        tail: Vec::new(),
    })
}

fn short_write(dir: &std::path::Path, written: usize, wanted: usize) -> Error {
    let message = format!("short write: {written} of {wanted} bytes");
    Error::io("writing segment", dir, std::io::Error::other(message))
}

/// Writes a sealed segment's index atomically: temporary file, sync, rename, directory sync.
pub(super) async fn write_index_file(
    dir: &std::path::Path,
    base_offset: u64,
    encoded: Vec<u8>,
) -> Result<()> {
    let path = index_path(dir, base_offset);
    let tmp = path.with_extension(&TMP_SUFFIX[1..]);
    let file = glommio::io::BufferedFile::create(&tmp)
        .await
        .map_err(|e| Error::io("creating index", &tmp, e))?;
    file.write_at(encoded, 0)
        .await
        .map_err(|e| Error::io("writing index", &tmp, e))?;
    file.fdatasync()
        .await
        .map_err(|e| Error::io("syncing index", &tmp, e))?;
    file.close()
        .await
        .map_err(|e| Error::io("closing index", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming index", &path, e))?;
    sync_dir(dir).await
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(super) async fn sync_dir(dir: &std::path::Path) -> Result<()> {
    let handle = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| Error::io("opening directory", dir, e))?;
    handle
        .sync()
        .await
        .map_err(|e| Error::io("syncing directory", dir, e))?;
    let _ = handle.close().await;
    Ok(())
}

impl Error {
    /// A copy of this error for each waiter it fails (I/O errors are not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::StorageFull { path } => Error::StorageFull { path: path.clone() },
            Error::InvalidBatch(e) => Error::InvalidBatch(e.clone()),
            Error::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
            } => Error::OffsetOutOfRange {
                offset: *offset,
                log_start_offset: *log_start_offset,
                high_watermark: *high_watermark,
            },
            Error::Corrupt {
                path,
                position,
                reason,
            } => Error::Corrupt {
                path: path.clone(),
                position: *position,
                reason: reason.clone(),
            },
            Error::TooManyOpenFiles { limit } => Error::TooManyOpenFiles { limit: *limit },
            Error::Config(message) => Error::Config(message.clone()),
            Error::Failed { path } => Error::Failed { path: path.clone() },
            Error::Closed => Error::Closed,
        }
    }
}
