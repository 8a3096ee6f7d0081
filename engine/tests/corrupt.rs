//! Disk data never panics: flip bits in the header fields that reads steer
//! by (base offset and length) and in the one they pass through (leader
//! epoch), in sealed and active segments, while the log is open, then read
//! every way there is. Damage that a read walks over is `Error::Corrupt`,
//! counted in `health()`; nothing panics, overflows or loops; segments the
//! damage is not in read as before.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{batch_of, copy_dir, run, segment_files, small_segments};
use proptest::prelude::*;
use shardlog_engine::{
    Error, FlushPolicy, LogConfig, LogHealth, PartitionLog, ShardConfig, StorageShard,
};

/// One frame of the source log, as found in its files.
#[derive(Debug, Clone, Copy)]
struct Frame {
    position: usize,
    length: usize,
    base_offset: u64,
    next_offset: u64,
}

/// The source log every case copies: its directory and each segment's frames.
struct Source {
    _dir: tempfile::TempDir,
    path: PathBuf,
    segments: Vec<(PathBuf, Vec<Frame>)>,
}

fn config() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Never,
        ..small_segments()
    }
}

/// No tail cache: every read goes to the files.
fn shard() -> StorageShard {
    StorageShard::new(ShardConfig {
        cache_bytes: 0,
        ..ShardConfig::default()
    })
}

fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let write_path = path.clone();
        glommio::LocalExecutor::default().run(async move {
            let log = PartitionLog::open(&write_path, config(), &shard())
                .await
                .unwrap();
            for b in 0..120u64 {
                let records: Vec<(i64, Vec<u8>)> = (0..1 + b % 4)
                    .map(|i| {
                        (
                            1000 + b as i64,
                            vec![(b + i) as u8; 100 + (b as usize * 53) % 900],
                        )
                    })
                    .collect();
                log.append(batch_of(&records)).await.unwrap();
            }
            assert!(log.segment_count() >= 3);
            log.close().await.unwrap();
        });
        let segments: Vec<_> = segment_files(&path)
            .into_iter()
            .map(|file| {
                let frames = frames_of(&std::fs::read(&file).unwrap());
                (file, frames)
            })
            .collect();
        assert!(segments.iter().all(|(_, frames)| frames.len() >= 3));
        Source {
            _dir: dir,
            path,
            segments,
        }
    })
}

/// The frames of a segment file, up to its end or its zero padding.
fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut position = 0;
    while position + shardlog_wire::batch::BATCH_HEADER_BYTES <= bytes.len() {
        let header = shardlog_wire::batch::BatchHeader::parse(&bytes[position..]);
        let Ok(header) = header else { break };
        frames.push(Frame {
            position,
            length: header.length_bytes as usize,
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
        });
        position += header.length_bytes as usize;
    }
    frames
}

/// A header field and the bit of it to flip.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Length(u32),
    LeaderEpoch(u32),
    BaseOffset(u32),
}

impl Damage {
    /// (byte offset in the header, bit in that byte) of bit `bit` of the
    /// field's value. Kafka's header is big-endian: bit 0 is in the field's last byte.
    fn locate(self) -> (usize, u8) {
        // Kafka RecordBatch v2: baseOffset i64 at 0, batchLength i32 at 8,
        // partitionLeaderEpoch i32 at 12.
        let (field_at, field_bytes, bit) = match self {
            Damage::Length(bit) => (8, 4, bit),
            Damage::LeaderEpoch(bit) => (12, 4, bit),
            Damage::BaseOffset(bit) => (0, 8, bit),
        };
        assert!((bit as usize) < field_bytes * 8);
        (
            field_at + field_bytes - 1 - bit as usize / 8,
            1 << (bit % 8),
        )
    }

    /// True when reads steer by the field, so walking the frame must fail.
    fn is_steering(self) -> bool {
        !matches!(self, Damage::LeaderEpoch(_))
    }
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u32..32).prop_map(Damage::Length),
        (0u32..32).prop_map(Damage::LeaderEpoch),
        (0u32..64).prop_map(Damage::BaseOffset),
    ]
}

/// Flips the bit on disk (synced: the active segment is read with O_DIRECT).
fn flip(path: &Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= mask;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    file.sync_all().unwrap();
}

/// Counts a result that must be Ok or Corrupt.
fn corrupt_or_ok<T>(result: &Result<T, Error>, what: &str) -> u64 {
    match result {
        Ok(_) => 0,
        Err(Error::Corrupt { .. }) => 1,
        Err(other) => panic!("{what}: expected Ok or Corrupt, got {other}"),
    }
}

/// Opens a copy of the source, damages frame `frame_pick` of segment
/// `segment_pick` (the last segment is the active one), and reads.
async fn damage_and_read(root: PathBuf, segment_pick: usize, frame_pick: usize, damage: Damage) {
    let source = source();
    let dir = root.join("log");
    copy_dir(&source.path, &dir);
    let log = PartitionLog::open(&dir, config(), &shard()).await.unwrap();
    let (segment, frames) = &source.segments[segment_pick % source.segments.len()];
    let target = frames[frame_pick % frames.len()];
    let path = dir.join(segment.file_name().unwrap());
    let (field_at, mask) = damage.locate();
    flip(&path, target.position + field_at, mask);

    let mut corrupt_count = 0;
    for (other, other_frames) in &source.segments {
        let damaged_segment = other == segment;
        for frame in other_frames {
            let read = log.read(frame.base_offset, 1, None).await;
            corrupt_count += corrupt_or_ok(&read, "read");
            if frame.base_offset == target.base_offset && damage.is_steering() {
                assert!(
                    matches!(read, Err(Error::Corrupt { .. })),
                    "reading the damaged frame at {} ({damage:?}) gave {read:?}",
                    frame.base_offset
                );
            }
            if damaged_segment && damage.is_steering() {
                continue;
            }
            // Elsewhere (and for the epoch everywhere) the read is whole and exact.
            let bytes = read.unwrap().to_bytes().await.unwrap();
            let mut want = if damaged_segment {
                std::fs::read(&path).unwrap()
            } else {
                std::fs::read(source.path.join(other.file_name().unwrap())).unwrap()
            };
            want.truncate(frame.position + frame.length);
            assert_eq!(
                &bytes[..],
                &want[frame.position..],
                "frame {}",
                frame.base_offset
            );
        }
    }
    let headers = log.batch_headers(log.log_start_offset()).await;
    corrupt_count += corrupt_or_ok(&headers, "batch_headers");
    assert_eq!(
        headers.is_err(),
        damage.is_steering(),
        "batch_headers walks every frame"
    );
    for timestamp_ms in [0, 1000 + target.base_offset as i64, i64::MAX] {
        let found = log.offset_for_timestamp(timestamp_ms).await;
        corrupt_count += corrupt_or_ok(&found, "offset_for_timestamp");
    }
    assert_eq!(log.corrupt_reads_count(), corrupt_count);
    match log.health() {
        LogHealth::Corrupt {
            corrupt_reads_count,
            ..
        } => {
            assert_eq!(corrupt_reads_count, corrupt_count)
        }
        LogHealth::Healthy => assert_eq!(corrupt_count, 0),
        other => panic!("unexpected health {other:?}"),
    }
    // A truncation that would keep the damaged frame refuses and changes nothing.
    let end = log.log_end_offset();
    let in_segment = frames
        .last()
        .is_some_and(|last| last.next_offset > target.next_offset);
    if in_segment {
        let truncated = log.truncate_to(target.next_offset).await;
        if damage.is_steering() {
            assert!(
                matches!(truncated, Err(Error::Corrupt { .. })),
                "{truncated:?}"
            );
            assert_eq!(log.log_end_offset(), end);
        } else {
            assert_eq!(truncated.unwrap(), target.next_offset);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_flipped_header_bit_is_an_error_never_a_panic(
        segment_pick in any::<usize>(),
        frame_pick in any::<usize>(),
        damage in damage(),
    ) {
        source();
        run(move |root| damage_and_read(root, segment_pick, frame_pick, damage));
    }
}

/// Every segment, first, middle and last frame, every field: the cases a
/// random pick might miss.
#[test]
fn flips_at_segment_edges_in_sealed_and_active_segments() {
    let segments = source().segments.len();
    for segment_pick in [0, segments / 2, segments - 1] {
        let frames = source().segments[segment_pick].1.len();
        for frame_pick in [0, frames / 2, frames - 1] {
            for damage in [
                Damage::Length(0),
                Damage::Length(1),
                Damage::Length(2),
                Damage::Length(20),
                Damage::LeaderEpoch(3),
                Damage::BaseOffset(0),
                Damage::BaseOffset(63),
            ] {
                run(move |root| damage_and_read(root, segment_pick, frame_pick, damage));
            }
        }
    }
}

/// The known case: a sealed frame whose base offset is near `u64::MAX`
/// used to overflow `last_offset()` (debug) or trip `extent`'s assertion.
#[test]
fn a_base_offset_near_the_end_of_u64_in_a_sealed_segment_is_corrupt() {
    source();
    run(|root| async move {
        let source = source();
        let dir = root.join("log");
        copy_dir(&source.path, &dir);
        let log = PartitionLog::open(&dir, config(), &shard()).await.unwrap();
        let (segment, frames) = &source.segments[0];
        let target = frames[1];
        let path = dir.join(segment.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        // Kafka's baseOffset is an i64: the largest one is what a damaged sign bit looks like.
        bytes[target.position..target.position + 8].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file.sync_all().unwrap();
        for offset in [
            target.base_offset,
            target.next_offset - 1,
            frames[0].base_offset,
        ] {
            let read = log.read(offset, 1 << 20, None).await;
            assert!(matches!(read, Err(Error::Corrupt { .. })), "{read:?}");
        }
        assert!(matches!(
            log.batch_headers(0).await,
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            log.health(),
            LogHealth::Corrupt {
                corrupt_reads_count: 4,
                ..
            }
        ));
        // Reopening trusts the sealed segment by its index; reads still refuse.
        log.close().await.unwrap();
        drop(log);
        let log = PartitionLog::open(&dir, config(), &shard()).await.unwrap();
        let read = log.read(target.base_offset, 1, None).await;
        assert!(matches!(read, Err(Error::Corrupt { .. })), "{read:?}");
        let later = source.segments[1].1[0].base_offset;
        assert!(
            log.read(later, 1, None).await.is_ok(),
            "other segments still read"
        );
    });
}
