//! Segment files: naming, the sparse index, and scanning frames.
//!
//! ```text
//!  partition dir/
//!    00000000000000000000.log     sealed: immutable, truncated to its last batch
//!    00000000000000000000.index   sealed: written once at seal, header + entries
//!    00000000000000004711.log     active: written with O_DIRECT, tail block rewritten
//! ```
//!
//! The active segment has no index file: its index lives in memory and is
//! rebuilt by scanning it on start, which is bounded by the segment size.

pub(crate) mod index;
pub(crate) mod scan;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile, ReadResult};

/// Alignment of every direct write. 4 KiB covers every common logical block size.
pub(crate) const ALIGNMENT_BYTES: u64 = 4096;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}{LOG_SUFFIX}"))
}

pub(crate) fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}{INDEX_SUFFIX}"))
}

/// The base offset of a `{base:020}.log` name.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(LOG_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(crate) fn align_down(value: u64) -> u64 {
    value - value % ALIGNMENT_BYTES
}

pub(crate) fn align_up(value: u64) -> u64 {
    value.div_ceil(ALIGNMENT_BYTES) * ALIGNMENT_BYTES
}

/// A segment file opened for reading: the active one through O_DIRECT, a
/// sealed one through the page cache (so that it can be sendfile'd).
#[derive(Debug, Clone)]
pub(crate) enum SegmentFile {
    Direct(Rc<DmaFile>),
    Buffered(Rc<BufferedFile>),
}

impl SegmentFile {
    pub(crate) async fn read_at(&self, position: u64, len: usize) -> std::io::Result<ReadResult> {
        let result = match self {
            SegmentFile::Direct(file) => file.read_at(position, len).await,
            SegmentFile::Buffered(file) => file.read_at(position, len).await,
        };
        result.map_err(std::io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let path = log_path(Path::new("/d"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_log_name(name), Some(42));
        assert_eq!(parse_log_name("42.log"), None);
        assert_eq!(parse_log_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_name("00000000000000000042.index"), None);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(0), 0);
    }
}

thread_local! {
    /// Devices whose io_uring poll support this thread's glommio reactor has probed.
    static PROBED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> = Default::default();
}

/// Makes glommio probe io_uring polled-I/O support for the device holding
/// `dir` on a file that has data, before any segment is opened on this thread.
///
/// Why: glommio decides once per thread and device whether reads may use
/// the IOPOLL ring, by reading the first block of the first file it opens.
/// When that file is empty (a new segment), the read ends at EOF without
/// reaching the device, the probe "succeeds", and every later direct read on
/// a device without poll queues (virtio disks) fails with EOPNOTSUPP.
pub(crate) async fn probe_direct_io(dir: &Path) -> crate::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir)
        .map_err(|e| crate::Error::io("probing directory", dir, e))?
        .dev();
    if PROBED_DEVICES.with(|set| set.borrow().contains(&device)) {
        return Ok(());
    }
    let path = dir.join(format!(".direct-io-probe-{}", std::process::id()));
    std::fs::write(&path, [0xa5u8; ALIGNMENT_BYTES as usize])
        .map_err(|e| crate::Error::io("writing probe", &path, e))?;
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| crate::Error::io("opening probe", &path, e))?;
    let _ = file.close().await;
    PROBED_DEVICES.with(|set| set.borrow_mut().insert(device));
    Ok(())
}
