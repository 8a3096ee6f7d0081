//! Per-log configuration and its limits.

use std::time::Duration;

use shardlog_wire::batch::BatchLimits;

use crate::{Error, Result};

/// When appended bytes are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// fdatasync before acknowledging (the default). Appends that arrive
    /// while a write or sync is in flight share the next one (group commit).
    #[default]
    Always,
    /// Acknowledge once written; fdatasync at most `interval_ms` later.
    Interval {
        /// The most time between a write and its fdatasync.
        interval_ms: u64,
    },
    /// Acknowledge once written; leave syncing to the OS and the device.
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = Error;

    /// Parses `always`, `never` or `interval=<ms>`.
    fn from_str(text: &str) -> Result<FlushPolicy> {
        match text {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            _ => {
                let ms = text
                    .strip_prefix("interval=")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|ms| *ms > 0);
                let ms = ms.ok_or_else(|| {
                    Error::Config(format!(
                        "flush policy {text:?}: use always, never or interval=<ms>"
                    ))
                })?;
                Ok(FlushPolicy::Interval { interval_ms: ms })
            }
        }
    }
}

/// The smallest segment allowed: room for one maximal batch is also required.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// The largest segment allowed: positions inside a segment are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// The largest single write issued by the writer.
pub const WRITE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Configuration of one partition log. Build it with [`LogConfig::default`]
/// and set fields; [`LogConfig::validate`] checks the ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment past this many bytes (default 1 GiB; 64 KiB..=4 GiB).
    pub segment_bytes: u64,
    /// Roll to a new segment once the active one is this old (default 7 days).
    pub segment_age_max: Duration,
    /// Bytes between two sparse index entries (default 4 KiB).
    pub index_interval_bytes: u32,
    /// Limits every appended batch is checked against (default 1 MiB).
    pub batch_limits: BatchLimits,
    /// When appends reach stable storage (default [`FlushPolicy::Always`]).
    pub flush: FlushPolicy,
    /// Delete the oldest sealed segments while the log is larger (default: no limit).
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older (default: 7 days).
    pub retention_age: Option<Duration>,
    /// Bytes of appends queued but not yet written before `append` waits (default 32 MiB).
    pub pending_bytes_max: u64,
    /// How often, at most, the active segment's synced point is written to
    /// its recovery checkpoint, which bounds the scan after a crash
    /// (default 10 s; 1 ms..=1 hour).
    pub recovery_checkpoint_interval: Duration,
    /// How far ahead of the write position the active segment's blocks are
    /// allocated, so that direct writes go out inline instead of through an
    /// io-wq worker (default 16 MiB; 0 turns it off; never past the segment size).
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_age_max: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            batch_limits: BatchLimits::default(),
            flush: FlushPolicy::Always,
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            pending_bytes_max: 32 * 1024 * 1024,
            recovery_checkpoint_interval: Duration::from_secs(10),
            preallocate_bytes: 16 * 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Checks every value against its range.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config(message));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes {} must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        let batch_max = u64::from(self.batch_limits.batch_bytes_max);
        if batch_max > self.segment_bytes || batch_max as usize > WRITE_BYTES_MAX {
            return bad(format!("batch_bytes_max {batch_max} must fit in one segment and one write ({WRITE_BYTES_MAX} bytes)"));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive".into());
        }
        let checkpoint_ms = self.recovery_checkpoint_interval.as_millis();
        if !(1..=3_600_000).contains(&checkpoint_ms) {
            return bad(format!(
                "recovery_checkpoint_interval {checkpoint_ms} ms must be in 1..=3600000 ms"
            ));
        }
        if self.pending_bytes_max < batch_max {
            return bad(format!(
                "pending_bytes_max {} must hold at least one batch of {batch_max} bytes",
                self.pending_bytes_max
            ));
        }
        if self.segment_age_max.is_zero() {
            return bad("segment_age_max must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses() {
        assert_eq!(
            "always".parse::<FlushPolicy>().unwrap(),
            FlushPolicy::Always
        );
        assert_eq!("never".parse::<FlushPolicy>().unwrap(), FlushPolicy::Never);
        assert_eq!(
            "interval=25".parse::<FlushPolicy>().unwrap(),
            FlushPolicy::Interval { interval_ms: 25 }
        );
        assert!("interval=0".parse::<FlushPolicy>().is_err());
        assert!("sometimes".parse::<FlushPolicy>().is_err());
    }

    #[test]
    fn limits_are_checked() {
        assert!(LogConfig::default().validate().is_ok());
        let tiny = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        assert!(matches!(tiny.validate(), Err(Error::Config(_))));
        let mut huge_batch = LogConfig {
            segment_bytes: 128 * 1024,
            ..LogConfig::default()
        };
        huge_batch.batch_limits.batch_bytes_max = 256 * 1024;
        assert!(huge_batch.validate().is_err());
        let queue = LogConfig {
            pending_bytes_max: 10,
            ..LogConfig::default()
        };
        assert!(queue.validate().is_err());
    }
}
