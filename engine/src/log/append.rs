//! The write path: the writer task, the syncer task, rolling, and failures.
//!
//! One writer task per log runs while appends are queued. It copies queued
//! batches, behind the partial tail block, into aligned buffers and writes
//! them with O_DIRECT, keeping up to `IN_FLIGHT_MAX` writes ("rounds") in
//! flight so that the next round is copied while the device works:
//!
//! ```text
//!  file:  ..|tail|batch 7 ....... batch 8 ...|batch 9 ..... batch 10|
//!           ^ round k (ROUND_BYTES)          ^ round k+1           ^ round k+2 waits for k+1
//!           aligned                          aligned               unaligned end: k+2 rewrites
//!                                                                  this block, so it is issued
//!                                                                  only once k+1 completed
//! ```
//!
//! A round ends either `ROUND_BYTES` after its aligned start (possibly in
//! the middle of a batch, which continues in the next round) or at the end
//! of the last queued batch. Only the second kind can end inside a block,
//! and a round that would rewrite that block is issued only once nothing is
//! in flight, so two in-flight writes never touch the same block (O_DIRECT
//! writes to one block may complete in any order). Rounds complete in issue
//! order as far as the log is concerned: a batch counts as written once
//! every round holding its bytes, and every earlier round, completed.
//! Under `Always` the syncer task runs beside it: it fdatasyncs whatever was
//! written when it starts a sync and then moves the high watermark, so the
//! writer keeps writes in flight while a sync runs.
//!
//! Failures. A full disk (ENOSPC on a write round) is an operating
//! condition: the unwritten appends fail with the retriable `StorageFull`,
//! the file is cut back to the written end, and the log goes on, so writes
//! resume once space returns. Anything else (EIO, a short write, any failed
//! fdatasync, a roll that fails for another reason) means nobody knows what
//! reached the disk after the last successful sync: the log is *poisoned*,
//! every waiting append fails, and appends are refused until
//! `PartitionLog::recover` (see `recover.rs`) rescans the part in doubt.
//! Each sync remembers what it covered (`SyncedPoint`), which is where that
//! rescan starts.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::task::JoinHandle;
use shardlog_wire::batch::BatchHeader;

use super::{
    now_ms, Active, LogInner, LogState, Pending, Poison, Sealed, SealedIndex, SyncedPoint,
};
use crate::config::{FlushPolicy, WRITE_BYTES_MAX};
#[cfg(any(test, feature = "fault-injection"))]
use crate::events::Event;
use crate::hooks::{self, record_event};
use crate::segment::index::{SealedMeta, SparseIndex};
use crate::segment::scan::IndexBuilder;
use crate::segment::{align_down, align_up, index_path, log_path, ALIGNMENT_BYTES, TMP_SUFFIX};
use crate::shard::ROUND_BYTES;
use crate::{Error, Result};

/// Writes the writer keeps in flight at once. Measured on ext4/virtio with
/// 1 MiB batches: two 2 MiB rounds in flight beat one 4 MiB round by ~30%;
/// three or four in flight, or smaller rounds that split single batches,
/// were slower (parallel extending writes contend in the file system).
const IN_FLIGHT_MAX: usize = 2;

const _: () =
    assert!(ROUND_BYTES <= WRITE_BYTES_MAX && ROUND_BYTES % ALIGNMENT_BYTES as usize == 0);

/// The writer's own state for one run: what it has taken off the queue and issued.
struct Pipeline {
    /// Issued writes, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Batches taken off the queue and not yet written, in offset order, with their positions.
    taken: VecDeque<(u64, Pending)>,
    /// Bytes of the last taken batch already in issued rounds, when it is split across rounds.
    split_bytes: Option<usize>,
    /// File position one past the last byte issued.
    plan_end: u64,
}

/// One issued write: the tail block (if rewritten) and batch bytes behind it.
struct InFlight {
    task: JoinHandle<glommio::Result<usize, ()>>,
    buffer: Rc<DmaBuffer>,
    /// The segment written to.
    base_offset: u64,
    write_position: u64,
    used_bytes: usize,
    /// Batches whose last byte is in this round (the front of `Pipeline::taken`).
    batches_ending: usize,
}

enum Step {
    Idle,
    Wait,
    Roll,
    Issue(Round),
}

/// A round planned and copied, not yet issued.
struct Round {
    file: Rc<DmaFile>,
    base_offset: u64,
    buffer: DmaBuffer,
    write_position: u64,
    used_bytes: usize,
    batches_ending: usize,
}

impl LogInner {
    pub(super) fn start_writer(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if state.writer_running || state.pending.is_empty() || state.role_wanted > 0 {
                return;
            }
            state.writer_running = true;
        }
        let this = self.clone();
        glommio::spawn_local(async move { this.run_writer().await }).detach();
    }

    async fn run_writer(self: Rc<Self>) {
        let mut pipe = Pipeline {
            in_flight: VecDeque::with_capacity(IN_FLIGHT_MAX),
            taken: VecDeque::new(),
            split_bytes: None,
            plan_end: self.state.borrow().active.written_bytes,
        };
        loop {
            // Issue rounds while the pipeline has room and nothing blocks them.
            while pipe.in_flight.len() < IN_FLIGHT_MAX {
                // A queued batch may be the first of a new leader epoch: its
                // entry is durable before any round that could hold it.
                if let Err(error) = self.store_epochs().await {
                    self.step_failed("storing the leader epochs", error);
                }
                match self.plan_round(&mut pipe) {
                    Step::Idle => {
                        self.wake_role_waiters();
                        return;
                    }
                    Step::Wait => break,
                    Step::Roll => {
                        if let Err(error) = self.roll().await {
                            self.step_failed("rolling the segment", error);
                        }
                        pipe.plan_end = self.state.borrow().active.written_bytes;
                    }
                    Step::Issue(round) => {
                        let round_end = round.write_position + round.buffer.len() as u64;
                        self.allocate_ahead(&round.file, round.base_offset, round_end)
                            .await;
                        let buffer = Rc::new(round.buffer);
                        let (file, shared) = (round.file, buffer.clone());
                        let position = round.write_position;
                        // Spawned after the borrow ended; the task submits the write at once.
                        let task = glommio::spawn_local(async move {
                            file.write_rc_at(shared, position).await
                        })
                        .detach();
                        pipe.in_flight.push_back(InFlight {
                            task,
                            buffer,
                            base_offset: round.base_offset,
                            write_position: round.write_position,
                            used_bytes: round.used_bytes,
                            batches_ending: round.batches_ending,
                        });
                    }
                }
            }
            let Some(mut round) = pipe.in_flight.pop_front() else {
                unreachable!("the writer waits only while a write is in flight")
            };
            let result = (&mut round.task).await;
            match self.examine_write(&round, result) {
                Ok(()) => self.finish_round(&mut pipe, round),
                Err(error) => self.abort_rounds(&mut pipe, error).await,
            }
        }
    }

    /// Extends the active segment's file ahead of a write ending at
    /// `round_end`, by `LogConfig::preallocate_bytes` at a time (up to the segment
    /// size): a direct write that extends a file or fills a hole must
    /// allocate blocks, which ext4 and XFS do synchronously, so io_uring
    /// hands it to an io-wq worker (a thread switch per write); a write into
    /// allocated blocks inside the file goes out inline. Best effort: when
    /// allocation fails (a full disk) the writes extend the file as before
    /// and report their own errors. The file's zeroed tail is cut by roll
    /// and by recovery (zero padding).
    async fn allocate_ahead(&self, file: &DmaFile, base_offset: u64, round_end: u64) {
        let allocated = {
            let state = self.state.borrow();
            if state.active.base_offset != base_offset {
                return;
            }
            state.active.allocated_bytes
        };
        let step = self.config.preallocate_bytes;
        if round_end <= allocated || step == 0 {
            return;
        }
        let segment_end = align_up(self.config.segment_bytes);
        let target = (round_end + step).min(segment_end).max(round_end);
        let result = file.pre_allocate(target, false).await;
        let mut state = self.state.borrow_mut();
        if state.active.base_offset != base_offset {
            return;
        }
        match result {
            Ok(()) => state.active.allocated_bytes = target,
            Err(error) => {
                tracing::debug!(dir = %self.dir.display(), %error,
                    "allocating the segment ahead failed; writes extend it as they go");
                // Try again only in the next segment.
                state.active.allocated_bytes = segment_end.max(round_end);
            }
        }
    }

    /// What the completed write `round` returned, as the engine sees it:
    /// the one place a write's io_uring result is examined (and where
    /// injected write faults take its place).
    fn examine_write(
        &self,
        round: &InFlight,
        result: Option<glommio::Result<usize, ()>>,
    ) -> Result<()> {
        let path = log_path(&self.dir, round.base_offset);
        let result = match hooks::write_fault(&self.dir, round.base_offset) {
            Some(injected) => Some(Err(glommio::GlommioError::IoError(injected))),
            None => result,
        };
        match result {
            Some(Ok(written)) if written >= round.used_bytes => Ok(()),
            Some(Ok(written)) => Err(short_write(&path, written, round.used_bytes)),
            Some(Err(error)) => Err(Error::io("writing segment", &path, error)),
            None => Err(Error::io(
                "writing segment",
                &path,
                std::io::Error::other("write task cancelled"),
            )),
        }
    }

    /// Decides the writer's next step; plans and copies the next round.
    fn plan_round(&self, pipe: &mut Pipeline) -> Step {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        // A maintenance operation waits for the role: hand it over at a batch boundary.
        let yielding = state.role_wanted > 0;
        if pipe.split_bytes.is_none() {
            let first = state.pending.front().filter(|_| !yielding);
            let Some(first) = first else {
                if pipe.in_flight.is_empty() {
                    state.writer_running = false;
                    return Step::Idle;
                }
                return Step::Wait;
            };
            let full = pipe.plan_end + first.bytes.len() as u64 > self.config.segment_bytes;
            let old = state
                .active
                .first_append_ms
                .is_some_and(|t| now_ms() - t >= self.config.segment_age_max.as_millis() as i64);
            if pipe.plan_end > 0 && (full || old) {
                // Roll once everything issued to this segment is written.
                return if pipe.in_flight.is_empty() {
                    Step::Roll
                } else {
                    Step::Wait
                };
            }
        }
        let head_bytes = (pipe.plan_end % ALIGNMENT_BYTES) as usize;
        if head_bytes > 0 && !pipe.in_flight.is_empty() {
            // The last issued round ends inside this block: rewrite it only once that round is done.
            return Step::Wait;
        }
        let active = &state.active;
        let write_position = align_down(pipe.plan_end);
        if head_bytes > 0 {
            assert!(active.written_bytes == pipe.plan_end && active.tail.len() == head_bytes);
        }
        // Size the round: the rest of a split batch, then (unless yielding)
        // whole queued batches that fit in the segment, cut at ROUND_BYTES.
        let room_bytes = ROUND_BYTES - head_bytes;
        let mut data_bytes = 0usize;
        let mut split_rest = 0usize;
        if let (Some(done), Some((_, last))) = (pipe.split_bytes, pipe.taken.back()) {
            split_rest = (last.bytes.len() - done).min(room_bytes);
            data_bytes = split_rest;
        }
        let mut end = pipe.plan_end + data_bytes as u64;
        let (mut take_count, mut take_bytes) = (0usize, 0u64);
        for pending in &state.pending {
            let len = pending.bytes.len();
            if yielding || data_bytes == room_bytes || end + len as u64 > self.config.segment_bytes
            {
                break;
            }
            let part = len.min(room_bytes - data_bytes);
            take_count += 1;
            take_bytes += len as u64;
            data_bytes += part;
            end += part as u64;
        }
        assert!(data_bytes > 0, "a round holds at least one byte of a batch");
        let used_bytes = head_bytes + data_bytes;
        let buffer_bytes = align_up(used_bytes as u64) as usize;
        let mut buffer = match buffer_bytes == ROUND_BYTES {
            true => self.shard.take_write_buffer(),
            false => None,
        }
        .unwrap_or_else(|| active.file.alloc_dma_buffer(buffer_bytes));
        let out = buffer.as_bytes_mut();
        if head_bytes > 0 {
            // Otherwise the tail may belong to a round still in flight, and the round starts aligned.
            out[..head_bytes].copy_from_slice(&active.tail);
        }
        let mut at = head_bytes;
        let mut batches_ending = 0usize;
        if let (Some(done), Some((_, last))) = (pipe.split_bytes, pipe.taken.back()) {
            out[at..at + split_rest].copy_from_slice(&last.bytes[done..done + split_rest]);
            at += split_rest;
            if done + split_rest == last.bytes.len() {
                pipe.split_bytes = None;
                batches_ending += 1;
            } else {
                pipe.split_bytes = Some(done + split_rest);
            }
        }
        for pending in state.pending.drain(..take_count) {
            let len = pending.bytes.len();
            let part = len.min(used_bytes - at);
            out[at..at + part].copy_from_slice(&pending.bytes[..part]);
            if part == len {
                batches_ending += 1;
            } else {
                pipe.split_bytes = Some(part);
            }
            pipe.taken.push_back((write_position + at as u64, pending));
            at += part;
        }
        assert!(at == used_bytes);
        out[at..].fill(0);
        state.pending_bytes -= take_bytes;
        pipe.plan_end = write_position + used_bytes as u64;
        assert!(pipe.split_bytes.is_none() || pipe.plan_end % ALIGNMENT_BYTES == 0);
        Step::Issue(Round {
            file: state.active.file.clone(),
            base_offset: state.active.base_offset,
            buffer,
            write_position,
            used_bytes,
            batches_ending,
        })
    }

    /// The oldest round was written: its completed batches become written.
    fn finish_round(self: &Rc<Self>, pipe: &mut Pipeline, round: InFlight) {
        let mut written_bytes = 0u64;
        if round.batches_ending > 0 {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let mut cache = self.shard.cache().borrow_mut();
            for _ in 0..round.batches_ending {
                let Some((position, pending)) = pipe.taken.pop_front() else {
                    unreachable!("every ending batch was taken")
                };
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
                written_bytes += pending.bytes.len() as u64;
                cache.insert(
                    self.cache_key,
                    pending.base_offset,
                    pending.next_offset,
                    pending.bytes,
                );
            }
            drop(cache);
            record_event!(
                &self.dir,
                Event::WriteCompleted {
                    through_offset: state.written_offset
                }
            );
            // The new tail block lies in this round: its last batch ends here.
            let active = &mut state.active;
            let end = (active.written_bytes - round.write_position) as usize;
            assert!(end <= round.used_bytes);
            let tail_start = end - end % ALIGNMENT_BYTES as usize;
            active.tail.clear();
            active
                .tail
                .extend_from_slice(&round.buffer.as_bytes()[tail_start..end]);
            if self.config.flush != FlushPolicy::Always {
                self.mark_durable(state, state.written_offset);
            }
        }
        if let Ok(buffer) = Rc::try_unwrap(round.buffer) {
            self.shard.give_write_buffer(buffer);
        }
        if written_bytes == 0 {
            return;
        }
        self.pending_permits.signal(written_bytes);
        // Tasks are spawned only after the borrow ends: glommio may poll a new task at once.
        match self.config.flush {
            FlushPolicy::Always => self.start_syncer(),
            FlushPolicy::Never => {}
            FlushPolicy::Interval { interval_ms } => self.schedule_interval_sync(interval_ms),
        }
    }

    /// The oldest round failed: wait for the rounds behind it, then decide.
    /// A full disk fails the unwritten appends and the log goes on from its
    /// written end (writes resume once space returns); any other write
    /// error poisons the log.
    async fn abort_rounds(self: &Rc<Self>, pipe: &mut Pipeline, error: Error) {
        while let Some(round) = pipe.in_flight.pop_front() {
            let _ = round.task.await;
        }
        let taken_bytes: u64 = pipe
            .taken
            .drain(..)
            .map(|(_, p)| p.bytes.len() as u64)
            .sum();
        pipe.split_bytes = None;
        self.pending_permits.signal(taken_bytes);
        let (file, written_bytes) = {
            let state = self.state.borrow();
            (state.active.file.clone(), state.active.written_bytes)
        };
        pipe.plan_end = written_bytes;
        if !matches!(error, Error::StorageFull { .. }) {
            self.poison(&mut self.state.borrow_mut(), error);
            return;
        }
        tracing::warn!(dir = %self.dir.display(), %error, "disk full; failing unwritten appends");
        // The failed round may have put some bytes on disk, and the rounds
        // behind it all of theirs: cut them, so that nothing which was
        // refused can turn up after a restart.
        if let Err(e) = file.truncate(written_bytes).await {
            let path = log_path(&self.dir, self.state.borrow().active.base_offset);
            self.poison(
                &mut self.state.borrow_mut(),
                Error::io("truncating segment", path, e),
            );
            return;
        }
        self.state.borrow_mut().active.allocated_bytes = written_bytes;
        self.fail_unwritten(&error);
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
            let (file, sync) = {
                let mut state = self.state.borrow_mut();
                if state.durable_offset >= state.written_offset || state.poison.is_some() {
                    state.syncer_running = false;
                    return;
                }
                (state.active.file.clone(), SyncTarget::now(&state))
            };
            record_event!(
                &self.dir,
                Event::SyncStarted {
                    through_offset: sync.point.next_offset
                }
            );
            let started = std::time::Instant::now();
            let result = sync_segment(&file, &self.dir, sync.base_offset).await;
            self.shard.record_flush(started.elapsed());
            let mut state = self.state.borrow_mut();
            if state.io_epoch != sync.io_epoch {
                // `recover` reopened the segment meanwhile; its rescan decides what is durable.
                continue;
            }
            match result {
                Ok(()) => {
                    self.note_synced(&mut state, &sync);
                    self.mark_durable(&mut state, sync.point.next_offset);
                    drop(state);
                    self.schedule_checkpoint();
                }
                Err(error) => self.poison(&mut state, error),
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
            let (file, sync) = {
                let mut state = this.state.borrow_mut();
                state.interval_sync_scheduled = false;
                if state.poison.is_some() {
                    return;
                }
                (state.active.file.clone(), SyncTarget::now(&state))
            };
            let started = std::time::Instant::now();
            let result = sync_segment(&file, &this.dir, sync.base_offset).await;
            this.shard.record_flush(started.elapsed());
            let mut state = this.state.borrow_mut();
            if state.io_epoch != sync.io_epoch {
                return;
            }
            match result {
                Ok(()) => {
                    this.note_synced(&mut state, &sync);
                    drop(state);
                    this.schedule_checkpoint();
                }
                Err(error) => this.poison(&mut state, error),
            }
        };
        glommio::spawn_local(task).detach();
    }

    /// fdatasyncs the active segment for a caller holding the writer role
    /// (roll, close): success makes everything written durable, failure
    /// poisons the log.
    pub(super) async fn sync_active(&self) -> Result<()> {
        let (file, sync) = {
            let state = self.state.borrow();
            (state.active.file.clone(), SyncTarget::now(&state))
        };
        record_event!(
            &self.dir,
            Event::SyncStarted {
                through_offset: sync.point.next_offset
            }
        );
        let result = sync_segment(&file, &self.dir, sync.base_offset).await;
        let mut state = self.state.borrow_mut();
        assert!(
            state.io_epoch == sync.io_epoch,
            "recover holds the writer role"
        );
        match result {
            Ok(()) => {
                self.note_synced(&mut state, &sync);
                self.mark_durable(&mut state, sync.point.next_offset);
                Ok(())
            }
            Err(error) => {
                self.poison(&mut state, error);
                Err(self.poisoned_error(&state).expect("just poisoned"))
            }
        }
    }

    /// A sync of `sync` completed: it becomes the active segment's synced
    /// point (unless the segment was sealed meanwhile).
    fn note_synced(&self, state: &mut LogState, sync: &SyncTarget) {
        record_event!(
            &self.dir,
            Event::SyncCompleted {
                through_offset: sync.point.next_offset
            }
        );
        let active = &mut state.active;
        if active.base_offset == sync.base_offset
            && sync.point.position_bytes > active.synced.position_bytes
        {
            assert!(sync.point.next_offset >= active.synced.next_offset);
            active.synced = sync.point;
        }
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

    /// A write failed for want of space: every append not yet written fails
    /// with `error`, and offsets continue from the written end. Written
    /// appends still wait for their sync.
    pub(super) fn fail_unwritten(&self, error: &Error) {
        let mut state = self.state.borrow_mut();
        let unwritten_bytes = state.pending_bytes;
        state.pending.clear();
        state.pending_bytes = 0;
        self.pending_permits.signal(unwritten_bytes);
        state.next_offset = state.written_offset;
        let written_offset = state.written_offset;
        LogInner::cut_epochs(&mut state, written_offset);
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

    /// A write or an fdatasync failed: what reached the disk past the last
    /// successful sync is unknown, so every waiting append fails and the log
    /// refuses appends until `recover` rescans the active segment.
    pub(super) fn poison(&self, state: &mut LogState, error: Error) {
        if state.poison.is_none() {
            tracing::error!(dir = %self.dir.display(), %error, "the log is poisoned and refuses appends until it is recovered");
            state.poison = Some(Poison {
                reason: error.to_string(),
                since_ms: now_ms(),
            });
            record_event!(&self.dir, Event::Poisoned);
        }
        let failure = self.poisoned_error(state).expect("just poisoned");
        let unwritten_bytes = state.pending_bytes;
        state.pending.clear();
        state.pending_bytes = 0;
        self.pending_permits.signal(unwritten_bytes);
        for waiter in state.waiters.drain(..) {
            let _ = waiter.tx.send(Err(failure.duplicate()));
        }
    }

    /// A step of the writer other than a write round (rolling the segment,
    /// storing the leader epochs) failed: a full disk fails the unwritten
    /// appends (the next append tries again), anything else poisons the log.
    pub(super) fn step_failed(&self, step: &str, error: Error) {
        tracing::warn!(dir = %self.dir.display(), %error, "{step} failed");
        match error {
            Error::StorageFull { .. } => self.fail_unwritten(&error),
            _ => self.poison(&mut self.state.borrow_mut(), error),
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
        self.sync_active().await?;
        // Cut the alignment padding so a sealed file ends on its last frame.
        file.truncate(written_bytes)
            .await
            .map_err(|e| Error::io("truncating segment", &path, e))?;
        self.sync_active().await?;
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
        let new_file = create_segment_file(&self.dir, next_offset).await?;
        let mut state = self.state.borrow_mut();
        // The new active segment takes over the old one's pinned file slot,
        // so a shard at its pinned limit can still roll.
        let old_index = state.active.restart(next_offset, new_file, &self.config);
        state.sealed.push_back(Sealed {
            meta,
            index: SealedIndex::Loaded(Rc::new(old_index)),
        });
        record_event!(
            &self.dir,
            Event::Rolled {
                base_offset: next_offset
            }
        );
        tracing::debug!(dir = %self.dir.display(), base_offset, next_offset, "rolled segment");
        Ok(())
    }
}

impl Active {
    /// Makes this the empty segment `file` starting at `base_offset`,
    /// keeping the file slot; returns the index of the segment it was.
    pub(super) fn restart(
        &mut self,
        base_offset: u64,
        file: DmaFile,
        config: &crate::LogConfig,
    ) -> SparseIndex {
        assert!(base_offset > self.base_offset);
        self.base_offset = base_offset;
        self.file = Rc::new(file);
        self.written_bytes = 0;
        self.index_builder = IndexBuilder::new(base_offset, config.index_interval_bytes);
        self.first_append_ms = None;
        self.tail.clear();
        self.allocated_bytes = 0;
        self.synced = SyncedPoint {
            position_bytes: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
        };
        std::mem::take(&mut self.index)
    }
}

/// What a sync about to start will cover, and of which file.
struct SyncTarget {
    base_offset: u64,
    point: SyncedPoint,
    io_epoch: u64,
}

impl SyncTarget {
    /// Everything written to the active segment so far.
    fn now(state: &LogState) -> SyncTarget {
        SyncTarget {
            base_offset: state.active.base_offset,
            point: SyncedPoint {
                position_bytes: state.active.written_bytes,
                next_offset: state.written_offset,
                max_timestamp_ms: state.active.index_builder.max_timestamp_ms,
            },
            io_epoch: state.io_epoch,
        }
    }
}

/// fdatasyncs a segment file: the one place a segment sync's result is
/// examined (and where injected sync faults take its place).
pub(super) async fn sync_segment(
    file: &DmaFile,
    dir: &std::path::Path,
    base_offset: u64,
) -> Result<()> {
    let result = file.fdatasync().await.map_err(std::io::Error::from);
    let result = match hooks::sync_fault(dir, base_offset) {
        Some(injected) => Err(injected),
        None => result,
    };
    result.map_err(|e| Error::io("syncing segment", log_path(dir, base_offset), e))
}

/// Creates an empty active segment file starting at `base_offset` and makes its name durable.
pub(super) async fn create_active(
    dir: &std::path::Path,
    shard: &crate::StorageShard,
    config: &crate::LogConfig,
    base_offset: u64,
) -> Result<Active> {
    let slot = shard.reserve_file()?;
    let file = create_segment_file(dir, base_offset).await?;
    Ok(Active {
        base_offset,
        file: Rc::new(file),
        _slot: slot,
        written_bytes: 0,
        index: SparseIndex::default(),
        index_builder: IndexBuilder::new(base_offset, config.index_interval_bytes),
        first_append_ms: None,
        tail: Vec::new(),
        allocated_bytes: 0,
        synced: SyncedPoint {
            position_bytes: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
        },
    })
}

/// Creates the empty segment file starting at `base_offset` and makes its
/// name durable; removes it again if that fails, so no stray file is left.
pub(super) async fn create_segment_file(
    dir: &std::path::Path,
    base_offset: u64,
) -> Result<DmaFile> {
    let path = log_path(dir, base_offset);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await;
    let file = file.map_err(|e| Error::io("creating segment", &path, e))?;
    if let Err(error) = sync_dir(dir).await {
        let _ = file.close().await;
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    Ok(file)
}

fn short_write(path: &std::path::Path, written: usize, wanted: usize) -> Error {
    let message = format!("short write: {written} of {wanted} bytes");
    Error::io("writing segment", path, std::io::Error::other(message))
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
            Error::NotContinuous {
                base_offset,
                leader_epoch,
                log_end_offset,
                log_leader_epoch,
            } => Error::NotContinuous {
                base_offset: *base_offset,
                leader_epoch: *leader_epoch,
                log_end_offset: *log_end_offset,
                log_leader_epoch: *log_leader_epoch,
            },
            Error::Config(message) => Error::Config(message.clone()),
            Error::Poisoned { path, reason } => Error::Poisoned {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Closed => Error::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use shardlog_wire::batch::{BatchIter, BatchLimits};

    use super::ROUND_BYTES;
    use crate::config::FlushPolicy;
    use crate::log::tests::{batch, run};
    use crate::{LogConfig, PartitionLog, ShardConfig, StorageShard};

    fn limits() -> BatchLimits {
        BatchLimits {
            batch_bytes_max: 4 * 1024 * 1024,
            ..BatchLimits::default()
        }
    }

    /// Every record as (offset, first 8 value bytes), read back one batch at a time.
    async fn read_all(log: &PartitionLog) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.high_watermark() {
            let slice = log.read(offset, 1, None).await.unwrap();
            let bytes = slice.to_bytes().await.unwrap();
            for batch in BatchIter::new(bytes, limits()) {
                for record in batch.unwrap().records().unwrap() {
                    let record = record.unwrap();
                    let value = record.value.unwrap();
                    out.push((
                        record.offset,
                        u64::from_le_bytes(value[..8].try_into().unwrap()),
                    ));
                }
            }
            assert!(slice.next_offset > offset);
            offset = slice.next_offset;
        }
        out
    }

    /// Batches smaller and larger than a round, from several appenders at
    /// once, across rolls: every round boundary case of the pipelined writer.
    #[test]
    fn pipelined_rounds_keep_every_byte_in_order() {
        for flush in [FlushPolicy::Never, FlushPolicy::Always] {
            run(|dir| async move {
                let config = LogConfig {
                    segment_bytes: 3 * ROUND_BYTES as u64,
                    batch_limits: limits(),
                    flush,
                    ..LogConfig::default()
                };
                let shard = StorageShard::new(ShardConfig::default());
                let log = PartitionLog::open(&dir, config.clone(), &shard)
                    .await
                    .unwrap();
                // (value bytes, records): 100 B, ~30 KiB, ~0.7 MiB, ~1.3 MiB and
                // ~3.1 MiB batches: the last spans up to three rounds.
                let shapes = [
                    (100, 1),
                    (3000, 10),
                    (60_000, 12),
                    (65_000, 20),
                    (65_000, 48),
                ];
                let expected = std::rc::Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for appender in 0..4u64 {
                    let (log, expected) = (log.clone(), expected.clone());
                    tasks.push(glommio::spawn_local(async move {
                        for i in 0..10u64 {
                            let (value_bytes, count) = shapes[((appender + i) % 5) as usize];
                            let first = (appender * 1000 + i) * 100;
                            let info = log
                                .append(batch(first, count, value_bytes, 1_700_000_000_000))
                                .await
                                .unwrap();
                            assert_eq!(info.last_offset - info.base_offset + 1, count);
                            for k in 0..count {
                                expected
                                    .borrow_mut()
                                    .push((info.base_offset + k, first + k));
                            }
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                let mut expected = expected.borrow().clone();
                expected.sort();
                assert!(log.segment_count() > 2, "the test crosses rolls");
                assert_eq!(read_all(&log).await, expected);
                assert_eq!(log.high_watermark(), expected.len() as u64);
                log.close().await.unwrap();
                let log =
                    PartitionLog::open(&dir, config, &StorageShard::new(ShardConfig::default()))
                        .await
                        .unwrap();
                assert_eq!(read_all(&log).await, expected);
                log.close().await.unwrap();
            });
        }
    }
}
