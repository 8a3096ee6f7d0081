//! Opening a log: recovery.
//!
//! - Sealed segments (all but the last) are trusted by their index header,
//!   read in 64 bytes each, when it matches the log file's size; the entries
//!   load on first read. So start-up does not grow with the bytes stored.
//!   A missing or damaged index is rebuilt by scanning that one segment.
//! - The active segment (the last) is scanned frame by frame, every CRC
//!   checked, and cut at the first torn, zero or bad frame: a crash can leave
//!   a partly written frame or the zero padding of an aligned write there.
//! - Segments must continue each other's offsets exactly; a gap is corruption.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};
use glommio::sync::Semaphore;

use super::append::{create_active, sync_dir, write_index_file};
use super::checkpoint;
use super::{now_ms, Active, LogInner, LogState, PartitionLog, Sealed, SealedIndex, SyncedPoint};
use crate::config::LogConfig;
use crate::segment::index::{IndexHeader, SealedMeta, SparseIndex, INDEX_HEADER_BYTES};
use crate::segment::scan::{self, IndexBuilder, Recovered, ScanStart, StopReason};
use crate::segment::{
    align_down, index_path, log_path, parse_log_name, SegmentFile, INDEX_SUFFIX, TMP_SUFFIX,
};
use crate::shard::{FileSlot, StorageShard};
use crate::{Error, Result};

pub(super) async fn open(
    dir: &Path,
    config: LogConfig,
    shard: &StorageShard,
) -> Result<PartitionLog> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating log directory", dir, e))?;
    crate::segment::probe_direct_io(dir).await?;
    let bases = list_segments(dir)?;
    let mut sealed = VecDeque::new();
    let mut expected_base: Option<u64> = None;
    if let Some((_, sealed_bases)) = bases.split_last() {
        for &base_offset in sealed_bases {
            let segment = open_sealed(dir, base_offset, &config).await?;
            check_continuity(dir, expected_base, base_offset)?;
            expected_base = Some(segment.meta.next_offset);
            sealed.push_back(segment);
        }
    }
    let active = match bases.last() {
        Some(&base_offset) => {
            check_continuity(dir, expected_base, base_offset)?;
            recover_active(dir, base_offset, &config, shard).await?
        }
        None => RecoveredActive {
            active: create_active(dir, shard, &config, 0).await?,
            next_offset: 0,
        },
    };
    let next_offset = active.next_offset;
    let log_start_offset = sealed
        .front()
        .map_or(active.active.base_offset, |s| s.meta.base_offset);
    // A crash may have kept an epoch whose first batch never reached the disk.
    let mut epochs = super::epochs::load(dir)?;
    let mut epochs_changes = u64::from(epochs.truncate_from_end(next_offset));
    if epochs.latest().is_none() && next_offset > log_start_offset {
        // A log written before the cache existed: every batch is in epoch 0.
        epochs.assign(0, log_start_offset);
        epochs_changes += 1;
    }
    let leader_epoch = epochs.latest().map_or(0, |e| e.epoch);
    let state = LogState {
        sealed,
        active: active.active,
        next_offset,
        written_offset: next_offset,
        durable_offset: next_offset,
        pending: VecDeque::new(),
        pending_bytes: 0,
        waiters: VecDeque::new(),
        writer_running: false,
        role_wanted: 0,
        syncer_running: false,
        interval_sync_scheduled: false,
        poison: None,
        io_epoch: 0,
        corrupt_reads_count: 0,
        last_corruption: None,
        closed: false,
        leader_epoch,
        epochs,
        epochs_changes,
        epochs_stored_changes: 0,
        checkpoint: Default::default(),
    };
    let inner = LogInner {
        dir: dir.to_path_buf(),
        pending_permits: Semaphore::new(config.pending_bytes_max),
        config,
        shard: shard.clone(),
        cache_key: shard.new_cache_key(),
        state: RefCell::new(state),
        role_waiters: RefCell::new(Vec::new()),
        checkpoint_lock: Semaphore::new(1),
    };
    tracing::debug!(dir = %dir.display(), next_offset, "opened log");
    Ok(PartitionLog {
        inner: Rc::new(inner),
    })
}

/// The base offsets of the segments in `dir`, in order; leftovers of
/// interrupted index writes and orphaned index files are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing log directory", dir, e))?;
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_log_name(name) {
            bases.push(base);
        } else if name.ends_with(TMP_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        } else if name.ends_with(INDEX_SUFFIX) {
            indexes.push(entry.path());
        }
    }
    bases.sort_unstable();
    // Only the active segment's checkpoint can be trusted; others are left by rolls.
    checkpoint::remove_others(dir, bases.last().copied())?;
    for index in indexes {
        let base = index
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| parse_log_name(&format!("{s}.log")));
        let is_sealed =
            base.is_some_and(|b| bases.binary_search(&b).is_ok() && bases.last() != Some(&b));
        if !is_sealed {
            let _ = std::fs::remove_file(&index);
        }
    }
    Ok(bases)
}

fn check_continuity(dir: &Path, expected_base: Option<u64>, base_offset: u64) -> Result<()> {
    match expected_base {
        Some(expected) if expected != base_offset => Err(Error::Corrupt {
            path: log_path(dir, base_offset),
            position: 0,
            reason: format!(
                "segment starts at offset {base_offset} but the previous one ends at {expected}"
            ),
        }),
        _ => Ok(()),
    }
}

/// A sealed segment, trusted by its index header when the header matches the file.
async fn open_sealed(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<Sealed> {
    let log = log_path(dir, base_offset);
    let file_bytes = std::fs::metadata(&log)
        .map_err(|e| Error::io("reading segment size", &log, e))?
        .len();
    if let Some(header) = read_index_header(&index_path(dir, base_offset), base_offset) {
        if header.meta.log_bytes == file_bytes {
            return Ok(Sealed {
                meta: header.meta,
                index: SealedIndex::OnDisk(header),
            });
        }
    }
    tracing::warn!(segment = %log.display(), "index missing or stale; rebuilding it from the segment");
    rebuild_sealed(dir, base_offset, file_bytes, config).await
}

fn read_index_header(path: &Path, base_offset: u64) -> Option<IndexHeader> {
    let mut bytes = [0u8; INDEX_HEADER_BYTES];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut bytes)
        .ok()?;
    IndexHeader::decode(&bytes, base_offset)
}

async fn rebuild_sealed(
    dir: &Path,
    base_offset: u64,
    file_bytes: u64,
    config: &LogConfig,
) -> Result<Sealed> {
    let path = log_path(dir, base_offset);
    let file = open_segment_rw(&path).await?;
    let start = ScanStart::segment(base_offset);
    let found = scan_segment(&file, &path, base_offset, start, file_bytes, config).await?;
    match found.stop {
        StopReason::EndOfFile | StopReason::ZeroPadding if found.valid_bytes > 0 => {}
        stop => {
            return Err(Error::Corrupt {
                path,
                position: found.valid_bytes,
                reason: format!(
                    "sealed segment has a damaged frame ({stop:?}) after {} valid bytes",
                    found.valid_bytes
                ),
            })
        }
    }
    cut_to(&file, &path, found.valid_bytes, file_bytes).await?;
    let _ = Rc::try_unwrap(file).map(|f| f.close());
    let meta = SealedMeta {
        base_offset,
        next_offset: found.next_offset,
        log_bytes: found.valid_bytes,
        max_timestamp_ms: found.max_timestamp_ms,
    };
    write_index_file(dir, base_offset, found.index.encode(&meta)).await?;
    Ok(Sealed {
        meta,
        index: SealedIndex::Loaded(Rc::new(found.index)),
    })
}

/// Opens a segment file for direct reads and writes.
pub(super) async fn open_segment_rw(path: &Path) -> Result<Rc<DmaFile>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await;
    Ok(Rc::new(
        file.map_err(|e| Error::io("opening segment", path, e))?,
    ))
}

/// The size of a segment file (frames and whatever follows them).
pub(super) async fn segment_size(file: &DmaFile, path: &Path) -> Result<u64> {
    file.file_size()
        .await
        .map_err(|e| Error::io("reading segment size", path, e))
}

/// Validates the frames of a segment from `start` up to `file_bytes`.
pub(super) async fn scan_segment(
    file: &Rc<DmaFile>,
    path: &Path,
    base_offset: u64,
    start: ScanStart,
    file_bytes: u64,
    config: &LogConfig,
) -> Result<Recovered> {
    let source = SegmentFile::Direct(file.clone());
    scan::recover(
        &source,
        path,
        base_offset,
        start,
        file_bytes,
        &config.batch_limits,
        config.index_interval_bytes,
    )
    .await
}

/// Truncates a segment to its valid bytes, durably, when anything follows them.
pub(super) async fn cut_to(
    file: &DmaFile,
    path: &Path,
    valid_bytes: u64,
    file_bytes: u64,
) -> Result<()> {
    if valid_bytes == file_bytes {
        return Ok(());
    }
    file.truncate(valid_bytes)
        .await
        .map_err(|e| Error::io("truncating segment", path, e))?;
    file.fdatasync()
        .await
        .map_err(|e| Error::io("syncing segment", path, e))
}

/// The recovered active segment and the offset that follows its last frame.
pub(super) struct RecoveredActive {
    pub active: Active,
    pub next_offset: u64,
}

/// Scans the active segment, cuts it after its last valid frame, and rebuilds
/// its in-memory index and tail block.
pub(super) async fn recover_active(
    dir: &Path,
    base_offset: u64,
    config: &LogConfig,
    shard: &StorageShard,
) -> Result<RecoveredActive> {
    let path = log_path(dir, base_offset);
    let slot = shard.reserve_file()?;
    let file = open_segment_rw(&path).await?;
    let file_bytes = segment_size(&file, &path).await?;
    let start = checkpoint::load(dir, base_offset, file_bytes)
        .unwrap_or_else(|| ScanStart::segment(base_offset));
    crate::hooks::record_event!(
        dir,
        crate::events::Event::ActiveScanned {
            from_position: start.position,
            file_bytes
        }
    );
    let found = scan_segment(&file, &path, base_offset, start, file_bytes, config).await?;
    if found.valid_bytes < file_bytes {
        tracing::warn!(
            segment = %path.display(),
            kept_bytes = found.valid_bytes,
            cut_bytes = file_bytes - found.valid_bytes,
            stop = ?found.stop,
            "cutting the active segment after its last valid frame"
        );
    }
    cut_to(&file, &path, found.valid_bytes, file_bytes).await?;
    let rebuilt = rebuilt_active(dir, base_offset, file, found, config).await?;
    Ok(RecoveredActive {
        next_offset: rebuilt.next_offset,
        active: Active::from_rebuilt(slot, rebuilt),
    })
}

/// What [`Active`] holds about a segment rebuilt from its file, but its file slot.
pub(super) struct Rebuilt {
    pub base_offset: u64,
    pub file: Rc<DmaFile>,
    pub written_bytes: u64,
    pub next_offset: u64,
    pub index: SparseIndex,
    pub index_builder: IndexBuilder,
    pub tail: Vec<u8>,
}

/// Finishes rebuilding a segment already cut after its last valid frame
/// (`found.valid_bytes`): reads its tail block, makes the directory durable
/// and resumes its index.
pub(super) async fn rebuilt_active(
    dir: &Path,
    base_offset: u64,
    file: Rc<DmaFile>,
    found: Recovered,
    config: &LogConfig,
) -> Result<Rebuilt> {
    let path = log_path(dir, base_offset);
    let tail = read_tail(&file, &path, found.valid_bytes).await?;
    sync_dir(dir).await?;
    let index_builder = IndexBuilder::resume(
        base_offset,
        config.index_interval_bytes,
        &found.index,
        found.max_timestamp_ms,
    );
    Ok(Rebuilt {
        base_offset,
        file,
        written_bytes: found.valid_bytes,
        next_offset: found.next_offset,
        index: found.index,
        index_builder,
        tail,
    })
}

/// The bytes of the last, partly filled block before `valid_bytes`.
async fn read_tail(file: &DmaFile, path: &Path, valid_bytes: u64) -> Result<Vec<u8>> {
    let tail_start = align_down(valid_bytes);
    let tail_len = (valid_bytes - tail_start) as usize;
    if tail_len == 0 {
        return Ok(Vec::new());
    }
    let bytes = file
        .read_at(tail_start, tail_len)
        .await
        .map_err(|e| Error::io("reading segment", path, e))?;
    if bytes.len() != tail_len {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            position: tail_start + bytes.len() as u64,
            reason: format!("the segment ends before its last frame at {valid_bytes}"),
        });
    }
    Ok(bytes.to_vec())
}

impl Active {
    /// An active segment holding `slot` of the open-file budget.
    pub(super) fn from_rebuilt(slot: FileSlot, rebuilt: Rebuilt) -> Active {
        let synced = SyncedPoint {
            position_bytes: rebuilt.written_bytes,
            next_offset: rebuilt.next_offset,
            max_timestamp_ms: rebuilt.index_builder.max_timestamp_ms,
        };
        Active {
            base_offset: rebuilt.base_offset,
            file: rebuilt.file,
            _slot: slot,
            written_bytes: rebuilt.written_bytes,
            index: rebuilt.index,
            index_builder: rebuilt.index_builder,
            first_append_ms: (rebuilt.written_bytes > 0).then(now_ms),
            tail: rebuilt.tail,
            allocated_bytes: rebuilt.written_bytes,
            synced,
        }
    }

    /// Makes this active segment (and its file slot) the rebuilt one; what
    /// the rebuild covered counts as synced. Returns the file it held.
    pub(super) fn reset_to(&mut self, rebuilt: Rebuilt) -> Rc<DmaFile> {
        if rebuilt.base_offset != self.base_offset || rebuilt.written_bytes == 0 {
            self.first_append_ms = (rebuilt.written_bytes > 0).then(now_ms);
        }
        let max_timestamp_ms = rebuilt.index_builder.max_timestamp_ms;
        self.base_offset = rebuilt.base_offset;
        self.written_bytes = rebuilt.written_bytes;
        self.index = rebuilt.index;
        self.index_builder = rebuilt.index_builder;
        self.tail = rebuilt.tail;
        self.allocated_bytes = rebuilt.written_bytes;
        self.synced = SyncedPoint {
            position_bytes: rebuilt.written_bytes,
            next_offset: rebuilt.next_offset,
            max_timestamp_ms,
        };
        std::mem::replace(&mut self.file, rebuilt.file)
    }
}
