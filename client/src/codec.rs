//! Compression of a batch's records section as one block (producer side)
//! and its decompression (consumer side), in the formats Kafka's clients
//! write, so that batches cross between shardlog and Kafka tools as they
//! are. The broker never does either.
//!
//! | codec  | block format                                                    |
//! |--------|-----------------------------------------------------------------|
//! | gzip   | one gzip stream (RFC 1952)                                      |
//! | snappy | xerial framing (`\x82SNAPPY\0`, version, compat, then i32-length-prefixed raw blocks), as Java Kafka and kafka-python write it; a raw snappy block is read too |
//! | lz4    | one LZ4 frame, independent 64 KiB blocks (Kafka's format since magic 1) |
//! | zstd   | zstd frames                                                     |
//!
//! Every decoder stops at [`DECOMPRESSED_BYTES_MAX`]: a small hostile
//! batch cannot make a consumer allocate without bound.

use std::io::{Read, Write};

use shardlog_wire::batch::Compression;

/// The largest records section a consumer will decompress (a bound against
/// decompression bombs).
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// xerial's snappy stream header: marker, "SNAPPY", NUL, then version 1 and
/// compatible version 1 as big-endian i32s.
const XERIAL_MAGIC: [u8; 8] = *b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
/// Uncompressed bytes per xerial block: the xerial library's default, and kafka-python's.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

/// Compresses a records section with `codec`.
pub fn compress(codec: Compression, records: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => records.to_vec(),
        Compression::Gzip => gzip_compress(records),
        Compression::Snappy => snappy_xerial_compress(records),
        Compression::Lz4 => lz4_frame_compress(records),
        // Level 3 is zstd's default; compressing into memory cannot fail except on allocation.
        Compression::Zstd => zstd::bulk::compress(records, 3).unwrap_or_else(|_| Vec::new()),
    }
}

fn gzip_compress(records: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let written = encoder.write_all(records).and_then(|()| encoder.finish());
    written.unwrap_or_default()
}

fn snappy_xerial_compress(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + records.len() / 2);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    for chunk in records.chunks(XERIAL_BLOCK_BYTES) {
        // A chunk of 32 KiB is far below snappy's input limit, so this cannot fail.
        let block = encoder.compress_vec(chunk).unwrap_or_default();
        out.extend_from_slice(&(block.len() as i32).to_be_bytes());
        out.extend_from_slice(&block);
    }
    out
}

fn lz4_frame_compress(records: &[u8]) -> Vec<u8> {
    let info = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max64KB)
        .block_mode(lz4_flex::frame::BlockMode::Independent);
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    // Writing into a Vec cannot fail.
    let written = encoder.write_all(records).map_err(|_| ());
    let finished = written.and_then(|()| encoder.finish().map_err(|_| ()));
    finished.unwrap_or_default()
}

/// Decompresses a records section.
///
/// # Errors
/// [`shardlog_wire::Error::MalformedRecords`] for a block that does not
/// decompress, or that would exceed [`DECOMPRESSED_BYTES_MAX`].
pub fn decompress(codec: Compression, block: &[u8]) -> Result<Vec<u8>, shardlog_wire::Error> {
    decompress_within(codec, block, DECOMPRESSED_BYTES_MAX)
}

/// As [`decompress`], with at most `limit_bytes` of output.
fn decompress_within(
    codec: Compression,
    block: &[u8],
    limit_bytes: usize,
) -> Result<Vec<u8>, shardlog_wire::Error> {
    match codec {
        Compression::None => Ok(block.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(block), limit_bytes),
        Compression::Snappy => snappy_decompress(block, limit_bytes),
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(block), limit_bytes),
        Compression::Zstd => {
            let out = zstd::bulk::decompress(block, limit_bytes);
            // zstd reports output past the capacity as an error of its own.
            out.map_err(|_| undecodable())
        }
    }
}

fn undecodable() -> shardlog_wire::Error {
    shardlog_wire::Error::MalformedRecords {
        reason: "the compressed records do not decompress",
    }
}

fn too_large() -> shardlog_wire::Error {
    shardlog_wire::Error::MalformedRecords {
        reason: "the records decompress past the size limit",
    }
}

/// Reads a decoder to its end, refusing more than `limit_bytes`.
fn read_bounded(decoder: impl Read, limit_bytes: usize) -> Result<Vec<u8>, shardlog_wire::Error> {
    let mut out = Vec::new();
    decoder
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| undecodable())?;
    if out.len() > limit_bytes {
        return Err(too_large());
    }
    Ok(out)
}

fn snappy_decompress(block: &[u8], limit_bytes: usize) -> Result<Vec<u8>, shardlog_wire::Error> {
    if block.len() < XERIAL_HEADER_BYTES || block[..8] != XERIAL_MAGIC {
        return snappy_raw_decompress(block, Vec::new(), limit_bytes);
    }
    // Version and compat (bytes 8..16) are not checked, as kafka-python does
    // not: some writers store them little-endian.
    let mut rest = &block[XERIAL_HEADER_BYTES..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(undecodable());
        };
        let length = usize::try_from(i32::from_be_bytes(*length)).map_err(|_| undecodable())?;
        let chunk = tail.get(..length).ok_or_else(undecodable)?;
        out = snappy_raw_decompress(chunk, out, limit_bytes)?;
        rest = &tail[length..];
    }
    Ok(out)
}

/// Decompresses one raw snappy block onto the end of `out`.
fn snappy_raw_decompress(
    chunk: &[u8],
    mut out: Vec<u8>,
    limit_bytes: usize,
) -> Result<Vec<u8>, shardlog_wire::Error> {
    let length = snap::raw::decompress_len(chunk).map_err(|_| undecodable())?;
    if out.len().saturating_add(length) > limit_bytes {
        return Err(too_large());
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(chunk, &mut out[start..])
        .map_err(|_| undecodable())?;
    out.truncate(start + written);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shardlog_wire::batch::{
        Batch, BatchBuilder, BatchBuilderOptions, BatchLimits, RecordHeaderRef,
    };

    fn records() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect()
    }

    #[test]
    fn codecs_round_trip_and_refuse_garbage() {
        let records = records();
        for codec in Compression::ALL {
            let block = compress(codec, &records);
            if codec != Compression::None {
                assert!(block.len() < records.len(), "{codec:?}");
                assert!(decompress(codec, &[0xff; 16]).is_err(), "{codec:?}");
                assert!(
                    decompress(codec, &block[..block.len() / 2]).is_err(),
                    "{codec:?}"
                );
            }
            assert_eq!(decompress(codec, &block).unwrap(), records, "{codec:?}");
        }
    }

    #[test]
    fn lz4_writes_kafkas_frame_format() {
        let block = compress(Compression::Lz4, &records());
        assert_eq!(block[..4], 0x184D_2204u32.to_le_bytes(), "LZ4 frame magic");
        // FLG: version 01, independent blocks; BD: 64 KiB blocks.
        assert_eq!(block[4] & 0b1110_0000, 0b0110_0000);
        assert_eq!(block[5], 0b0100_0000);
    }

    #[test]
    fn snappy_reads_xerial_framing_and_raw_blocks() {
        let records = records();
        let framed = compress(Compression::Snappy, &records);
        assert_eq!(framed[..8], XERIAL_MAGIC);
        assert!(framed.len() > XERIAL_HEADER_BYTES + 2 * 4, "several blocks");
        let raw = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw).unwrap(), records);
        let mut torn = framed.clone();
        torn.truncate(framed.len() - 3);
        assert!(decompress(Compression::Snappy, &torn).is_err());
    }

    type Owned = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn record() -> impl Strategy<Value = Owned> {
        let bytes = |max| proptest::option::of(proptest::collection::vec(any::<u8>(), 0..max));
        let header = ("[a-zé]{0,6}", bytes(10));
        (
            any::<i64>(),
            bytes(30),
            bytes(400),
            proptest::collection::vec(header, 0..3),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Build → validate → decode, with every codec, for arbitrary records.
        #[test]
        fn batches_round_trip_through_every_codec(
            records in proptest::collection::vec(record(), 1..40),
            codec in proptest::sample::select(Compression::ALL.to_vec()),
        ) {
            let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
            for (timestamp_ms, key, value, headers) in &records {
                let headers: Vec<RecordHeaderRef<'_>> = headers
                    .iter()
                    .map(|(key, value)| RecordHeaderRef { key, value: value.as_deref() })
                    .collect();
                builder.append(*timestamp_ms, key.as_deref(), value.as_deref(), &headers).unwrap();
            }
            let bytes = builder.finish_with(codec, |r| compress(codec, r)).unwrap();
            let batch = Batch::parse(bytes.freeze(), &BatchLimits::default()).unwrap();
            prop_assert_eq!(batch.header().compression(), codec);
            let decoded: Vec<_> = batch.records_with(decompress).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (got, (timestamp_ms, key, value, headers)) in decoded.iter().zip(&records) {
                prop_assert_eq!(got.timestamp_ms, *timestamp_ms);
                prop_assert_eq!(got.key.as_deref(), key.as_deref());
                prop_assert_eq!(got.value.as_deref(), value.as_deref());
                let got_headers: Vec<_> = got.headers.iter().map(|h| (h.key_str().to_string(), h.value.as_deref().map(<[u8]>::to_vec))).collect();
                prop_assert_eq!(&got_headers, headers);
            }
        }
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let limit_bytes = 1 << 20;
        let zeros = vec![0u8; limit_bytes + 1];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bomb = compress(codec, &zeros);
            assert!(bomb.len() < zeros.len() / 20, "{codec:?}");
            let fits = decompress_within(codec, &bomb, limit_bytes + 1);
            assert_eq!(fits.unwrap().len(), zeros.len(), "{codec:?}");
            assert!(
                decompress_within(codec, &bomb, limit_bytes).is_err(),
                "{codec:?}"
            );
        }
    }
}
