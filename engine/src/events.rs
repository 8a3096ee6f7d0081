//! An event recorder for tests (tests and the `fault-injection` feature only).
//!
//! Why: "every acknowledged offset is covered by a completed fdatasync" is
//! a statement about the order of things inside the engine, which no
//! outside observation can check (a crash test only samples it). The
//! engine reports the moments that matter here, in the order they happen
//! on the log's shard, and a test checks the order afterwards:
//!
//! ```text
//!  writer:  WriteCompleted{through 7} ......... WriteCompleted{through 12}
//!  syncer:        SyncStarted{through 7} ─ SyncCompleted{through 7}
//!  append:                                      Acknowledged{next 5} Acknowledged{next 7}
//! ```
//!
//! Recording is process-global (a `Mutex`) and filtered by the log
//! directory, so tests running in parallel keep apart.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Something the engine did, as far as durability is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Batches below `through_offset` are written (their write rounds completed).
    WriteCompleted {
        /// One past the last written offset.
        through_offset: u64,
    },
    /// An fdatasync started that covers the writes below `through_offset`.
    SyncStarted {
        /// One past the last offset the sync covers.
        through_offset: u64,
    },
    /// An fdatasync completed successfully: offsets below `through_offset` are durable.
    SyncCompleted {
        /// One past the last offset the sync covered.
        through_offset: u64,
    },
    /// An append future is about to resolve successfully.
    Acknowledged {
        /// One past the append's last offset.
        next_offset: u64,
    },
    /// The active segment was sealed and a new one starts at `base_offset`.
    Rolled {
        /// Base offset of the new active segment.
        base_offset: u64,
    },
    /// The log was poisoned.
    Poisoned,
    /// Opening the log scans its active segment from `from_position` (its
    /// recovery checkpoint, or 0) to `file_bytes`.
    ActiveScanned {
        /// Where the scan starts.
        from_position: u64,
        /// The size of the segment file.
        file_bytes: u64,
    },
    /// A poisoned log was recovered; appends continue at `next_offset`.
    Recovered {
        /// The log end offset after recovery.
        next_offset: u64,
    },
}

#[derive(Debug)]
struct Recording {
    id: u64,
    dir_contains: String,
    events: Vec<Event>,
}

static RECORDINGS: Mutex<Vec<Recording>> = Mutex::new(Vec::new());
static RECORDING_COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: Mutex<u64> = Mutex::new(0);

fn recordings() -> MutexGuard<'static, Vec<Recording>> {
    RECORDINGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the events of every log whose directory contains a string,
/// until dropped.
#[derive(Debug)]
pub struct Recorder {
    id: u64,
}

impl Recorder {
    /// Starts recording the events of logs whose directory path contains `dir_contains`.
    pub fn start(dir_contains: impl Into<String>) -> Recorder {
        let id = {
            let mut next = NEXT_ID.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let mut recordings = recordings();
        recordings.push(Recording {
            id,
            dir_contains: dir_contains.into(),
            events: Vec::new(),
        });
        RECORDING_COUNT.store(recordings.len(), Ordering::SeqCst);
        Recorder { id }
    }

    /// The events recorded so far, in order; the recording goes on empty.
    pub fn take(&self) -> Vec<Event> {
        let mut recordings = recordings();
        recordings
            .iter_mut()
            .find(|r| r.id == self.id)
            .map(|r| std::mem::take(&mut r.events))
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let mut recordings = recordings();
        recordings.retain(|r| r.id != self.id);
        RECORDING_COUNT.store(recordings.len(), Ordering::SeqCst);
    }
}

/// Records `event` of the log in `dir` for every recorder that matches.
pub(crate) fn record(dir: &Path, event: Event) {
    if RECORDING_COUNT.load(Ordering::SeqCst) == 0 {
        return;
    }
    let dir = dir.to_string_lossy();
    for recording in recordings().iter_mut() {
        if dir.contains(recording.dir_contains.as_str()) {
            recording.events.push(event);
        }
    }
}
