//! Fuzzes what the broker does with bytes from the network: the frame
//! prefix, flatbuffer verification, parsing into requests, and batch
//! validation. Nothing here may panic or read out of bounds.
//!
//! Run: `cargo fuzz run frame` (from the repository root; see README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlog_server::handlers;
use shardlog_wire::batch::{validate, BatchIter, BatchLimits};
use shardlog_wire::protocol::{parse_prefix, verify_request, ProtocolLimits, FRAME_PREFIX_BYTES};

fuzz_target!(|data: &[u8]| {
    let limits = ProtocolLimits::default();
    if let Ok(Some(prefix)) = parse_prefix(data, &limits) {
        let body = &data[FRAME_PREFIX_BYTES.min(data.len())..];
        if let Some(message) = body.get(..prefix.message_bytes) {
            if let Ok(request) = verify_request(message, &limits) {
                let _ = handlers::parse(request, prefix.message_bytes);
            }
        }
    }
    let _ = validate(data, &BatchLimits::default());
    for batch in
        BatchIter::new(bytes::Bytes::copy_from_slice(data), BatchLimits::default()).flatten()
    {
        if let Ok(records) = batch.records() {
            for record in records {
                let _ = record.map(|r| r.headers.len());
            }
        }
    }
});
