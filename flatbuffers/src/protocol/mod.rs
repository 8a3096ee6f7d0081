//! The request/response protocol: frames, verification with limits, the API
//! table, and the generated flatbuffers types (`fb`).
//!
//! ```text
//!  frame:  u32 LE frame_len | u32 LE message_len | flatbuffer (message_len) | payload
//!          └─ bytes after it ┘                                               └ frame_len - 4 - message_len
//! ```
//!
//! The payload is empty except in a fetch or replica fetch response, where
//! it carries the record batches of each partition back to back, in the
//! order the header lists them (`records_bytes` says how many each).
//! Every flatbuffer from the network is verified (`root_with_opts`) before
//! use; the batch CRC32C protects the bytes inside `[ubyte]` payloads.

mod frame;

pub use frame::{
    checked_prefix, encode_prefix, parse_prefix, request_frame, verify_request, verify_response,
    FramePrefix, PrefixError, ProtocolLimits, FRAME_PREFIX_BYTES,
};

/// The flatbuffers types generated from `flatbuffers/schema/shardlog.fbs`.
pub use crate::generated::shardlog::wire as fb;

/// Protocol versions of each API this build serves: `(api, min, max)`.
/// `api` is the `RequestBody` union tag.
pub const API_VERSIONS: &[(fb::RequestBody, u16, u16)] = &[
    (fb::RequestBody::ApiVersionsRequest, 0, 0),
    (fb::RequestBody::MetadataRequest, 0, 0),
    (fb::RequestBody::CreateTopicsRequest, 0, 0),
    (fb::RequestBody::DeleteTopicsRequest, 0, 0),
    (fb::RequestBody::ProduceRequest, 0, 0),
    (fb::RequestBody::FetchRequest, 0, 0),
    (fb::RequestBody::ListOffsetsRequest, 0, 0),
    (fb::RequestBody::InitProducerRequest, 0, 0),
    (fb::RequestBody::GroupHeartbeatRequest, 0, 0),
    (fb::RequestBody::OffsetCommitRequest, 0, 0),
    (fb::RequestBody::OffsetFetchRequest, 0, 0),
    (fb::RequestBody::ListGroupsRequest, 0, 0),
    (fb::RequestBody::DescribeGroupsRequest, 0, 0),
    (fb::RequestBody::DeleteGroupRequest, 0, 0),
    (fb::RequestBody::ResetOffsetsRequest, 0, 0),
    (fb::RequestBody::RecoverPartitionsRequest, 0, 0),
    (fb::RequestBody::RaftRequest, 0, 0),
    (fb::RequestBody::ReplicaFetchRequest, 0, 0),
];

/// The highest version of `api` this build serves, if it serves it at all.
pub fn max_version(api: fb::RequestBody) -> Option<u16> {
    API_VERSIONS
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, _, max)| *max)
}

impl fb::ErrorCode {
    /// True when the same request may succeed if sent again later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            fb::ErrorCode::StorageFull
                | fb::ErrorCode::RequestTimedOut
                | fb::ErrorCode::Busy
                | fb::ErrorCode::ShuttingDown
                | fb::ErrorCode::PartitionPoisoned
                | fb::ErrorCode::ControllerUnavailable
                | fb::ErrorCode::NotEnoughReplicas
                | fb::ErrorCode::NotLeader
                | fb::ErrorCode::FencedLeaderEpoch
                | fb::ErrorCode::UnknownLeaderEpoch
        )
    }
}

#[cfg(test)]
mod tests;
