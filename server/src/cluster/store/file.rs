//! The framing every file under `<data-dir>/raft/` uses, and atomic replacement.
//!
//! A file is an 8-byte magic naming its kind and format version, then
//! records: `u32` little-endian payload length, `u32` little-endian CRC-32C of
//! the payload, the payload (JSON). JSON keeps the files readable with `jq`
//! after stripping the framing; the CRC catches what JSON would accept.
//!
//! Reading tells a torn tail from damage: a record cut short by the end of
//! the file, a last record whose CRC fails, or a tail of zeros is what a
//! crash during an append leaves, and is cut; a record that fails with more
//! bytes after it, or whose length is absurd, is damage. (A bit flip in the
//! very last record looks like a torn write and is cut too: that entry's
//! node then holds one entry fewer, as if the append had not finished.)

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::cluster::ClusterError;

/// Bytes before a record's payload: length and CRC.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest payload (a snapshot of a large cluster's metadata fits).
pub const RECORD_BYTES_MAX: u32 = 256 << 20;
/// Bytes of a file's magic.
pub const MAGIC_BYTES: usize = 8;

/// Appends one record for `payload` to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("records are limited to RECORD_BYTES_MAX");
    assert!(length > 0, "a record carries a payload");
    assert!(length <= RECORD_BYTES_MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One step of reading records.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole record; the next starts at `next`.
    Record {
        /// Its payload.
        payload: &'a [u8],
        /// Where the next record starts.
        next: usize,
    },
    /// Nothing more that a finished write left: cut the file here.
    Torn,
    /// Damage with more bytes after it.
    Damaged(String),
}

/// Reads the record at `at` of `bytes` (the whole file).
pub fn decode_record(bytes: &[u8], at: usize) -> Decoded<'_> {
    assert!(at <= bytes.len());
    let rest = &bytes[at..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Decoded::Torn;
    }
    let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if length == 0 {
        return if rest.iter().all(|b| *b == 0) {
            Decoded::Torn
        } else {
            Decoded::Damaged("a record of length 0 before more data".into())
        };
    }
    if length > RECORD_BYTES_MAX {
        return Decoded::Damaged(format!("a record length of {length} bytes"));
    }
    let end = RECORD_HEADER_BYTES + length as usize;
    if rest.len() < end {
        return Decoded::Torn;
    }
    let payload = &rest[RECORD_HEADER_BYTES..end];
    if crc32c::crc32c(payload) != crc {
        return if rest.len() == end {
            Decoded::Torn
        } else {
            Decoded::Damaged("a record fails its CRC".into())
        };
    }
    Decoded::Record {
        payload,
        next: at + end,
    }
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file,
/// fsync, rename over `path`, fsync of the directory. A crash leaves the old
/// file or the new one, never a mix.
///
/// # Errors
/// I/O errors, with the path; the old file stays in place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| ClusterError::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| ClusterError::io("writing", &tmp, e))?;
    file.sync_all()
        .map_err(|e| ClusterError::io("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ClusterError::io("renaming into", path, e))?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, so a creation or rename in it is durable.
///
/// # Errors
/// I/O errors, with the directory's path.
pub fn sync_dir(path: &Path) -> Result<(), ClusterError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ClusterError::io("syncing directory", dir, e))
}

/// A whole small file: `magic`, then exactly `records_count` records.
pub fn encode_file(magic: &[u8; MAGIC_BYTES], payloads: &[&[u8]]) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    for payload in payloads {
        encode_record(payload, &mut bytes);
    }
    bytes
}

/// Reads a file written by [`write_atomically`] of [`encode_file`]: it is
/// whole or absent, so anything short of `records_count` good records is damage.
///
/// # Errors
/// [`ClusterError::Corrupt`] with the path and offset; I/O errors.
pub fn read_file(
    path: &Path,
    magic: &[u8; MAGIC_BYTES],
    records_count: usize,
) -> Result<Option<Vec<Vec<u8>>>, ClusterError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClusterError::io("reading", path, e)),
    };
    check_magic(path, &bytes, magic)?;
    let mut at = MAGIC_BYTES;
    let mut payloads = Vec::with_capacity(records_count);
    for _ in 0..records_count {
        match decode_record(&bytes, at) {
            Decoded::Record { payload, next } => {
                payloads.push(payload.to_vec());
                at = next;
            }
            Decoded::Torn => return Err(corrupt(path, at, "the file ends inside a record")),
            Decoded::Damaged(reason) => return Err(corrupt(path, at, reason)),
        }
    }
    if at != bytes.len() {
        return Err(corrupt(path, at, "bytes after the last record"));
    }
    Ok(Some(payloads))
}

/// Checks a file's first bytes.
///
/// # Errors
/// [`ClusterError::Corrupt`] when they are not `magic`.
pub fn check_magic(
    path: &Path,
    bytes: &[u8],
    magic: &[u8; MAGIC_BYTES],
) -> Result<(), ClusterError> {
    if bytes.len() < MAGIC_BYTES || &bytes[..MAGIC_BYTES] != magic {
        let expected = String::from_utf8_lossy(magic);
        return Err(corrupt(
            path,
            0,
            format!("it does not start with {expected:?}"),
        ));
    }
    Ok(())
}

/// A [`ClusterError::Corrupt`].
pub fn corrupt(path: &Path, offset: usize, reason: impl Into<String>) -> ClusterError {
    ClusterError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_record(b"first", &mut bytes);
        encode_record(b"second", &mut bytes);
        bytes
    }

    #[test]
    fn records_decode_and_torn_tails_are_told_from_damage() {
        let bytes = two_records();
        let Decoded::Record { payload, next } = decode_record(&bytes, 0) else {
            panic!()
        };
        assert_eq!(payload, b"first");
        assert!(matches!(
            decode_record(&bytes, next),
            Decoded::Record {
                payload: b"second",
                ..
            }
        ));
        // A cut anywhere inside the second record is torn.
        for cut in next..bytes.len() {
            assert_eq!(
                decode_record(&bytes[..cut], next),
                Decoded::Torn,
                "cut at {cut}"
            );
        }
        // A flipped byte in the last record is torn; in the first, with more after it, damage.
        let mut last = bytes.clone();
        *last.last_mut().unwrap() ^= 1;
        assert_eq!(decode_record(&last, next), Decoded::Torn);
        let mut first = bytes.clone();
        first[RECORD_HEADER_BYTES] ^= 1;
        assert!(matches!(decode_record(&first, 0), Decoded::Damaged(_)));
        // Zeros after the last record are torn; a zero length before data is damage.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 20]);
        assert_eq!(decode_record(&zeros, bytes.len()), Decoded::Torn);
        let mut zero_then_data = vec![0u8; 8];
        zero_then_data.extend_from_slice(&bytes);
        assert!(matches!(
            decode_record(&zero_then_data, 0),
            Decoded::Damaged(_)
        ));
        let mut absurd = bytes.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_record(&absurd, 0), Decoded::Damaged(_)));
    }

    #[test]
    fn small_files_are_whole_or_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read_file(&path, b"TESTFILE", 1).unwrap(), None);
        write_atomically(&path, &encode_file(b"TESTFILE", &[b"hello"])).unwrap();
        assert_eq!(
            read_file(&path, b"TESTFILE", 1).unwrap(),
            Some(vec![b"hello".to_vec()])
        );
        assert!(matches!(
            read_file(&path, b"OTHERONE", 1),
            Err(ClusterError::Corrupt { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let error = read_file(&path, b"TESTFILE", 1).unwrap_err();
        assert!(
            error.to_string().contains("vote"),
            "the error names the file: {error}"
        );
    }
}
