//! The sparse index of a segment: one entry per ~`index_interval_bytes`,
//! mapping a relative offset to a byte position and carrying the largest
//! timestamp seen *before* that batch, so one index serves both offset and
//! timestamp lookups.
//!
//! A sealed segment's index file:
//!
//! ```text
//!  0  magic u32 "SLIX"   4 version u32     8 base_offset u64   16 next_offset u64
//!  24 log_bytes u64      32 max_timestamp_ms i64   40 entry_count u32
//!  44 entries_crc32c u32 48 header_crc32c u32 (of bytes 0..48)   52..64 zero
//!  64 entries: relative_offset u32, position u32, max_timestamp_before_ms i64
//! ```
//!
//! Start-up reads only the 64-byte header of each sealed segment; entries are
//! loaded when the segment is first read.

use shardlog_wire::batch::BATCH_HEADER_BYTES;

use crate::{Error, Result};

const MAGIC: u32 = u32::from_le_bytes(*b"SLIX");
const VERSION: u32 = 1;
pub(crate) const INDEX_HEADER_BYTES: usize = 64;
const ENTRY_BYTES: usize = 16;

/// One sparse index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
    /// Largest timestamp of the batches before this one in the segment (`i64::MIN` if none).
    pub max_timestamp_before_ms: i64,
}

/// What a sealed segment's index header says about its log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedMeta {
    pub base_offset: u64,
    pub next_offset: u64,
    pub log_bytes: u64,
    pub max_timestamp_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset);
            assert!(entry.position > last.position);
            assert!(entry.max_timestamp_before_ms >= last.max_timestamp_before_ms);
        }
        self.entries.push(entry);
    }

    pub(crate) fn last_position(&self) -> Option<u32> {
        self.entries.last().map(|e| e.position)
    }

    /// The last indexed batch at or before `relative_offset`, as (position,
    /// relative offset of that batch); (0, 0), the segment start, if none.
    pub(crate) fn entry_for_offset(&self, relative_offset: u64) -> (u64, u64) {
        let after = self
            .entries
            .partition_point(|e| u64::from(e.relative_offset) <= relative_offset);
        self.start_of(after.checked_sub(1))
    }

    /// Where to walk from for the first batch with a timestamp at or after
    /// `timestamp_ms`, as (position, relative offset of the batch there).
    pub(crate) fn entry_for_timestamp(&self, timestamp_ms: i64) -> (u64, u64) {
        let after = self
            .entries
            .partition_point(|e| e.max_timestamp_before_ms < timestamp_ms);
        self.start_of(after.checked_sub(1))
    }

    fn start_of(&self, at: Option<usize>) -> (u64, u64) {
        at.map_or((0, 0), |i| {
            let entry = &self.entries[i];
            (u64::from(entry.position), u64::from(entry.relative_offset))
        })
    }

    /// The last entry at or before `position`, and the index of the entries before it.
    pub(crate) fn split_at_position(&self, position: u64) -> Option<(IndexEntry, SparseIndex)> {
        let after = self
            .entries
            .partition_point(|e| u64::from(e.position) <= position);
        let last = *self.entries.get(after.checked_sub(1)?)?;
        let before = SparseIndex {
            entries: self.entries[..after - 1].to_vec(),
        };
        Some((last, before))
    }

    /// The entries of the frames that start before `position`.
    pub(crate) fn before_position(&self, position: u64) -> SparseIndex {
        let kept = self
            .entries
            .partition_point(|e| u64::from(e.position) < position);
        SparseIndex {
            entries: self.entries[..kept].to_vec(),
        }
    }

    pub(crate) fn encode(&self, meta: &SealedMeta) -> Vec<u8> {
        let mut out = vec![0u8; INDEX_HEADER_BYTES + self.entries.len() * ENTRY_BYTES];
        for (i, entry) in self.entries.iter().enumerate() {
            let at = INDEX_HEADER_BYTES + i * ENTRY_BYTES;
            out[at..at + 4].copy_from_slice(&entry.relative_offset.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&entry.position.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&entry.max_timestamp_before_ms.to_le_bytes());
        }
        let entries_crc = crc32c::crc32c(&out[INDEX_HEADER_BYTES..]);
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&meta.base_offset.to_le_bytes());
        out[16..24].copy_from_slice(&meta.next_offset.to_le_bytes());
        out[24..32].copy_from_slice(&meta.log_bytes.to_le_bytes());
        out[32..40].copy_from_slice(&meta.max_timestamp_ms.to_le_bytes());
        out[40..44].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out[44..48].copy_from_slice(&entries_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[..48]);
        out[48..52].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Decodes the entries of a whole index file whose header was already checked.
    pub(crate) fn decode_entries(file: &[u8], header: &IndexHeader) -> Option<SparseIndex> {
        let entries_bytes = file.get(INDEX_HEADER_BYTES..)?;
        if entries_bytes.len() != header.entry_count as usize * ENTRY_BYTES {
            return None;
        }
        if crc32c::crc32c(entries_bytes) != header.entries_crc32c {
            return None;
        }
        let mut index = SparseIndex::default();
        for chunk in entries_bytes.chunks_exact(ENTRY_BYTES) {
            let entry = IndexEntry {
                relative_offset: u32::from_le_bytes(chunk[0..4].try_into().ok()?),
                position: u32::from_le_bytes(chunk[4..8].try_into().ok()?),
                max_timestamp_before_ms: i64::from_le_bytes(chunk[8..16].try_into().ok()?),
            };
            let ordered = index.entries.last().is_none_or(|last| {
                entry.relative_offset > last.relative_offset
                    && entry.position > last.position
                    && entry.max_timestamp_before_ms >= last.max_timestamp_before_ms
            });
            let offset_count = header.meta.next_offset - header.meta.base_offset;
            if !ordered
                || u64::from(entry.position) >= header.meta.log_bytes
                || u64::from(entry.relative_offset) >= offset_count
            {
                return None;
            }
            index.entries.push(entry);
        }
        Some(index)
    }
}

/// The decoded header of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    pub meta: SealedMeta,
    pub entry_count: u32,
    pub entries_crc32c: u32,
}

impl IndexHeader {
    /// Decodes and checks a header; `None` when it cannot be trusted.
    pub(crate) fn decode(bytes: &[u8], base_offset: u64) -> Option<IndexHeader> {
        let header = bytes.get(..INDEX_HEADER_BYTES)?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        if u32_at(0) != MAGIC || u32_at(4) != VERSION || crc32c::crc32c(&header[..48]) != u32_at(48)
        {
            return None;
        }
        if header[52..].iter().any(|b| *b != 0) {
            return None;
        }
        let meta = SealedMeta {
            base_offset: u64_at(8),
            next_offset: u64_at(16),
            log_bytes: u64_at(24),
            max_timestamp_ms: u64_at(32) as i64,
        };
        if meta.base_offset != base_offset
            || meta.next_offset <= meta.base_offset
            || meta.log_bytes == 0
            || meta.log_bytes > crate::config::SEGMENT_BYTES_MAX
        {
            return None;
        }
        let entry_count = u32_at(40);
        // Every entry points at its own frame, and a frame has at least a header.
        if u64::from(entry_count) * BATCH_HEADER_BYTES as u64 > meta.log_bytes {
            return None;
        }
        Some(IndexHeader {
            meta,
            entry_count,
            entries_crc32c: u32_at(44),
        })
    }
}

/// Reads and checks the whole index file of a sealed segment.
pub(crate) async fn load(path: &std::path::Path, header: &IndexHeader) -> Result<SparseIndex> {
    let file = glommio::io::BufferedFile::open(path)
        .await
        .map_err(|e| Error::io("opening index", path, e))?;
    let len = INDEX_HEADER_BYTES + header.entry_count as usize * ENTRY_BYTES;
    let bytes = file
        .read_at(0, len)
        .await
        .map_err(|e| Error::io("reading index", path, e))?;
    let _ = file.close().await;
    SparseIndex::decode_entries(&bytes, header).ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        reason: "index entries changed since start-up; restart to rebuild the index".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SparseIndex, SealedMeta) {
        let mut index = SparseIndex::default();
        index.push(IndexEntry {
            relative_offset: 0,
            position: 0,
            max_timestamp_before_ms: i64::MIN,
        });
        index.push(IndexEntry {
            relative_offset: 10,
            position: 4100,
            max_timestamp_before_ms: 50,
        });
        index.push(IndexEntry {
            relative_offset: 25,
            position: 8300,
            max_timestamp_before_ms: 90,
        });
        let meta = SealedMeta {
            base_offset: 100,
            next_offset: 140,
            log_bytes: 9000,
            max_timestamp_ms: 120,
        };
        (index, meta)
    }

    #[test]
    fn lookups_pick_the_entry_at_or_before() {
        let (index, _) = sample();
        assert_eq!(index.entry_for_offset(0), (0, 0));
        assert_eq!(index.entry_for_offset(9), (0, 0));
        assert_eq!(index.entry_for_offset(10), (4100, 10));
        assert_eq!(index.entry_for_offset(1000), (8300, 25));
        assert_eq!(index.entry_for_timestamp(10), (0, 0));
        assert_eq!(index.entry_for_timestamp(51), (4100, 10));
        assert_eq!(index.entry_for_timestamp(90), (4100, 10));
        assert_eq!(index.entry_for_timestamp(91), (8300, 25));
        assert_eq!(SparseIndex::default().entry_for_offset(5), (0, 0));
        let (last, before) = index.split_at_position(8299).unwrap();
        assert_eq!((last.position, before.entries.len()), (4100, 1));
        assert_eq!(index.split_at_position(0).unwrap().1.entries.len(), 0);
    }

    #[test]
    fn file_round_trips_and_damage_is_caught() {
        let (index, meta) = sample();
        let bytes = index.encode(&meta);
        let header = IndexHeader::decode(&bytes, 100).unwrap();
        assert_eq!(header.meta, meta);
        assert_eq!(SparseIndex::decode_entries(&bytes, &header).unwrap(), index);
        assert!(
            IndexHeader::decode(&bytes, 101).is_none(),
            "the name must match"
        );
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let trusted =
                IndexHeader::decode(&bad, 100).and_then(|h| SparseIndex::decode_entries(&bad, &h));
            assert!(trusted.is_none(), "flip at {at} went unnoticed");
        }
    }
}
