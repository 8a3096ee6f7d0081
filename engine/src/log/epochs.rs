//! The leader-epoch cache: the first offset of each leader epoch in this
//! log (Kafka's `leader-epoch-checkpoint`, KIP-101).
//!
//! A follower that meets a new leader asks it where the follower's newest
//! epoch ends in the leader's log (KIP-279's `OffsetsForLeaderEpoch`) and
//! truncates there; [`EpochCache::end_offset_for`] is the leader's answer.
//!
//! ```text
//!   log:    | epoch 0 batches | epoch 2 batches | epoch 5 batches |
//!   cache:  (0, 0)            (2, 120)          (5, 300)           end 410
//!   end_offset_for(3) = (2, 300)   end_offset_for(5) = (5, 410)   end_offset_for(1) = (0, 120)
//! ```
//!
//! - **When it is written.** An entry is added when an epoch's first batch
//!   is accepted, and the file `leader-epochs` (temporary file, fdatasync,
//!   rename, directory fsync) is durable before that batch is written, so
//!   the file never lacks the epoch of a stored batch. A crash can leave an
//!   entry whose batch never reached the disk: at open, entries at or past
//!   the log end are dropped ([`EpochCache::truncate_from_end`]), as are
//!   those a truncation cut.
//! - **What it holds.** Epochs and start offsets both strictly increase; an
//!   epoch that got no batch before the next one began leaves no entry.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The file beside the segments.
pub(crate) const EPOCHS_FILE: &str = "leader-epochs";
/// Its first line.
const EPOCHS_HEADER: &str = "shardlog-leader-epochs 1";
/// Most entries the file may hold: one per leadership change that wrote a batch.
pub const EPOCH_ENTRIES_MAX: usize = 1 << 20;

/// The first offset of one leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The leader epoch.
    pub epoch: u32,
    /// Its first batch's base offset.
    pub start_offset: u64,
}

/// Every epoch of the log that holds a batch, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochStart>,
}

impl EpochCache {
    /// The newest epoch with a batch, if any.
    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// Would a batch of `epoch` at `start_offset` begin a new entry?
    pub fn is_new(&self, epoch: u32) -> bool {
        self.latest().is_none_or(|last| epoch > last.epoch)
    }

    /// Records that `epoch` begins at `start_offset`. An epoch never goes
    /// back, nor does an offset: the caller checked (asserted here).
    pub fn assign(&mut self, epoch: u32, start_offset: u64) {
        if let Some(last) = self.latest() {
            assert!(epoch > last.epoch, "leader epochs only grow");
            assert!(
                start_offset > last.start_offset,
                "an epoch starts after the previous one's first batch"
            );
        }
        assert!(self.entries.len() < EPOCH_ENTRIES_MAX);
        self.entries.push(EpochStart {
            epoch,
            start_offset,
        });
    }

    /// For a follower whose newest epoch is `epoch`: the largest epoch of
    /// this log not above it, and the offset where that epoch ends here (the
    /// next epoch's start, or `log_end_offset` for the newest). `None` when
    /// every epoch here is newer: the follower truncates to the log start.
    pub fn end_offset_for(&self, epoch: u32, log_end_offset: u64) -> Option<(u32, u64)> {
        let position = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(position.checked_sub(1)?)?;
        let end = self
            .entries
            .get(position)
            .map_or(log_end_offset, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Drops the entries of epochs that start at or after `end_offset`
    /// (the log was cut there, or a crash lost their batches). True when
    /// something was dropped.
    pub fn truncate_from_end(&mut self, end_offset: u64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let dropped = keep < self.entries.len();
        self.entries.truncate(keep);
        dropped
    }

    /// The file's text: a header line, the count, then one `epoch offset` line each.
    pub fn encode(&self) -> String {
        let mut text = format!("{EPOCHS_HEADER}\n{}\n", self.entries.len());
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        text
    }

    /// Parses [`EpochCache::encode`]'s text, checking the count and that
    /// epochs and offsets strictly increase.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn decode(text: &str) -> std::result::Result<EpochCache, String> {
        let mut lines = text.lines();
        if lines.next() != Some(EPOCHS_HEADER) {
            return Err(format!("the first line is not {EPOCHS_HEADER:?}"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .filter(|c| *c <= EPOCH_ENTRIES_MAX)
            .ok_or("the second line is not an entry count")?;
        let mut cache = EpochCache::default();
        for number in 0..count {
            let line = lines.next().ok_or(format!("entry {number} is missing"))?;
            let mut fields = line.split(' ');
            let epoch = fields.next().and_then(|f| f.parse::<u32>().ok());
            let start = fields.next().and_then(|f| f.parse::<u64>().ok());
            let (Some(epoch), Some(start_offset), None) = (epoch, start, fields.next()) else {
                return Err(format!("entry {number} is not `epoch offset`: {line:?}"));
            };
            if let Some(last) = cache.latest() {
                if epoch <= last.epoch || start_offset <= last.start_offset {
                    return Err(format!("entry {number} does not follow the one before"));
                }
            }
            cache.entries.push(EpochStart {
                epoch,
                start_offset,
            });
        }
        if lines.next().is_some() {
            return Err("text after the last entry".into());
        }
        Ok(cache)
    }
}

fn epochs_path(dir: &Path) -> PathBuf {
    dir.join(EPOCHS_FILE)
}

/// The cache of the log in `dir`; empty when it has no file yet.
///
/// # Errors
/// [`Error::Corrupt`] for a file that does not parse (the file is written
/// atomically, so this is damage, not a torn write); I/O errors.
pub(crate) fn load(dir: &Path) -> Result<EpochCache> {
    let path = epochs_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(EpochCache::default()),
        Err(e) => return Err(Error::io("reading leader epochs", path, e)),
    };
    EpochCache::decode(&text).map_err(|reason| Error::Corrupt {
        path,
        position: 0,
        reason,
    })
}

/// Makes `cache` the durable content of `dir`'s file.
///
/// # Errors
/// I/O errors; the old file is then still whole.
pub(crate) async fn store(dir: &Path, cache: &EpochCache) -> Result<()> {
    let path = epochs_path(dir);
    let tmp = path.with_extension(&crate::segment::TMP_SUFFIX[1..]);
    let file = glommio::io::BufferedFile::create(&tmp)
        .await
        .map_err(|e| Error::io("creating leader epochs", &tmp, e))?;
    let written = file.write_at(cache.encode().into_bytes(), 0).await;
    written.map_err(|e| Error::io("writing leader epochs", &tmp, e))?;
    file.fdatasync()
        .await
        .map_err(|e| Error::io("syncing leader epochs", &tmp, e))?;
    let _ = file.close().await;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming leader epochs", &path, e))?;
    super::append::sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cache(entries: &[(u32, u64)]) -> EpochCache {
        let mut cache = EpochCache::default();
        for (epoch, start) in entries {
            cache.assign(*epoch, *start);
        }
        cache
    }

    #[test]
    fn a_follower_learns_where_its_epoch_ends() {
        let c = cache(&[(0, 0), (2, 120), (5, 300)]);
        assert_eq!(c.end_offset_for(0, 410), Some((0, 120)));
        assert_eq!(c.end_offset_for(1, 410), Some((0, 120)));
        assert_eq!(c.end_offset_for(3, 410), Some((2, 300)));
        assert_eq!(c.end_offset_for(5, 410), Some((5, 410)));
        assert_eq!(c.end_offset_for(9, 410), Some((5, 410)));
        let later = cache(&[(4, 50)]);
        assert_eq!(later.end_offset_for(3, 60), None, "every epoch is newer");
        assert_eq!(EpochCache::default().end_offset_for(0, 0), None);
    }

    #[test]
    fn truncation_drops_epochs_that_start_at_or_after_the_cut() {
        let mut c = cache(&[(0, 0), (2, 120), (5, 300)]);
        assert!(!c.truncate_from_end(301));
        assert!(c.truncate_from_end(300));
        assert_eq!(
            c.latest(),
            Some(EpochStart {
                epoch: 2,
                start_offset: 120
            })
        );
        assert!(c.truncate_from_end(0));
        assert_eq!(c.latest(), None);
    }

    #[test]
    fn damaged_text_is_refused() {
        let good = cache(&[(1, 10), (3, 20)]).encode();
        assert!(EpochCache::decode(&good).is_ok());
        for bad in [
            String::new(),
            good.replacen("1", "9", 1),
            good.replace("2\n", "3\n"),
            good.replace("3 20", "1 20"),
            good.replace("3 20", "3 5"),
            good.replace("3 20", "3 x"),
            good.replace("3 20", "3 20 7"),
            format!("{good}4 30\n"),
        ] {
            assert!(EpochCache::decode(&bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips_and_answers_agree_with_a_scan(
            steps in proptest::collection::vec((1u32..4, 1u64..100), 0..30),
            asked in 0u32..150,
        ) {
            let (mut epoch, mut offset) = (0u32, 0u64);
            let mut entries = Vec::new();
            for (epoch_step, offset_step) in steps {
                entries.push((epoch, offset));
                epoch += epoch_step;
                offset += offset_step;
            }
            let c = cache(&entries);
            prop_assert_eq!(EpochCache::decode(&c.encode()), Ok(c.clone()));
            let log_end = offset;
            // The answer by a plain scan: the last entry not above `asked`.
            let expected = entries.iter().rposition(|(e, _)| *e <= asked).map(|i| {
                let end = entries.get(i + 1).map_or(log_end, |next| next.1);
                (entries[i].0, end)
            });
            prop_assert_eq!(c.end_offset_for(asked, log_end), expected);
        }
    }
}
