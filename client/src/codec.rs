//! Compression of a batch's records section as one block (producer side)
//! and its decompression (consumer side). The broker never does either.

use shardlog_wire::batch::Compression;

/// The largest records section a consumer will decompress (a bound against
/// decompression bombs).
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Compresses a records section with `codec`.
pub fn compress(codec: Compression, records: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => records.to_vec(),
        Compression::Lz4 => lz4_flex::block::compress_prepend_size(records),
        // Level 3 is zstd's default; compressing into memory cannot fail except on allocation.
        Compression::Zstd => zstd::bulk::compress(records, 3).unwrap_or_else(|_| Vec::new()),
    }
}

/// Decompresses a records section.
///
/// # Errors
/// A block that does not decompress, or that would exceed [`DECOMPRESSED_BYTES_MAX`].
pub fn decompress(codec: Compression, block: &[u8]) -> Result<Vec<u8>, shardlog_wire::Error> {
    let bad = |_| shardlog_wire::Error::MalformedRecords {
        reason: "the compressed records do not decompress",
    };
    match codec {
        Compression::None => Ok(block.to_vec()),
        Compression::Lz4 => {
            let size = block
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(usize::MAX);
            if size > DECOMPRESSED_BYTES_MAX {
                return Err(shardlog_wire::Error::MalformedRecords {
                    reason: "the records decompress past the size limit",
                });
            }
            lz4_flex::block::decompress_size_prepended(block).map_err(|_| bad(()))
        }
        Compression::Zstd => {
            zstd::bulk::decompress(block, DECOMPRESSED_BYTES_MAX).map_err(|_| bad(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_refuse_garbage() {
        let records: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let block = compress(codec, &records);
            assert!(block.len() < records.len());
            assert_eq!(decompress(codec, &block).unwrap(), records);
            assert!(decompress(codec, &[0xff; 16]).is_err());
        }
        let mut bomb = (u32::MAX).to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0; 8]);
        assert!(decompress(Compression::Lz4, &bomb).is_err());
    }
}
