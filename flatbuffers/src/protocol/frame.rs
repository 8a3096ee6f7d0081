//! Frame prefixes and verification.

use flatbuffers::{
    FlatBufferBuilder, InvalidFlatbuffer, UnionWIPOffset, VerifierOptions, WIPOffset,
};

use super::fb;

/// Bytes before the flatbuffer: `frame_len` and `message_len`.
pub const FRAME_PREFIX_BYTES: usize = 8;

/// The limits every frame from the network is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolLimits {
    /// Largest frame accepted, prefix included (default 64 MiB).
    pub frame_bytes_max: u32,
    /// Deepest nesting the verifier follows (default 64).
    pub verifier_depth_max: usize,
    /// Most tables the verifier visits in one message (default 1,000,000).
    pub verifier_tables_max: usize,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        ProtocolLimits {
            frame_bytes_max: 64 * 1024 * 1024,
            verifier_depth_max: 64,
            verifier_tables_max: 1_000_000,
        }
    }
}

/// Where the parts of a frame lie, once its prefix is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// The whole frame, prefix included.
    pub frame_bytes: usize,
    /// The flatbuffer, which starts at [`FRAME_PREFIX_BYTES`].
    pub message_bytes: usize,
}

impl FramePrefix {
    /// Bytes of raw payload after the flatbuffer.
    pub fn payload_bytes(&self) -> usize {
        self.frame_bytes - FRAME_PREFIX_BYTES - self.message_bytes
    }
}

/// What is wrong with a frame prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length cannot be trusted: the connection must close.
    #[error("frame length {frame_len} is outside 4..={frame_len_max}")]
    AbsurdLength {
        /// The `frame_len` field.
        frame_len: u32,
        /// The largest allowed.
        frame_len_max: u32,
    },
    /// The frame's boundary is known but its message length does not fit:
    /// answer with an error and skip `frame_bytes`.
    #[error("message length {message_len} exceeds the frame's {available} bytes")]
    MessageOverrun {
        /// The `message_len` field.
        message_len: u32,
        /// Bytes the frame has for it.
        available: u32,
        /// The whole frame, to skip.
        frame_bytes: usize,
    },
}

/// Reads the prefix at the start of `buf`: `Ok(None)` until 8 bytes are there.
///
/// # Errors
/// [`PrefixError::AbsurdLength`] (close the connection) or
/// [`PrefixError::MessageOverrun`] (answer and skip the frame).
pub fn parse_prefix(
    buf: &[u8],
    limits: &ProtocolLimits,
) -> Result<Option<FramePrefix>, PrefixError> {
    let (Some(frame_len), Some(message_len)) = (read_u32(buf, 0), read_u32(buf, 4)) else {
        return match read_u32(buf, 0) {
            Some(frame_len) => check_frame_len(frame_len, limits).map(|_| None),
            None => Ok(None),
        };
    };
    check_frame_len(frame_len, limits)?;
    let frame_bytes = frame_len as usize + 4;
    let available = frame_len - 4;
    if message_len > available {
        return Err(PrefixError::MessageOverrun {
            message_len,
            available,
            frame_bytes,
        });
    }
    Ok(Some(FramePrefix {
        frame_bytes,
        message_bytes: message_len as usize,
    }))
}

fn check_frame_len(frame_len: u32, limits: &ProtocolLimits) -> Result<(), PrefixError> {
    let frame_len_max = limits.frame_bytes_max.saturating_sub(4);
    if frame_len < 4 || frame_len > frame_len_max {
        return Err(PrefixError::AbsurdLength {
            frame_len,
            frame_len_max,
        });
    }
    Ok(())
}

/// The 8-byte prefix of a frame carrying `message_bytes` of flatbuffer and
/// `payload_bytes` after it, or `None` when the frame would not fit the
/// 32-bit length field.
pub fn checked_prefix(
    message_bytes: usize,
    payload_bytes: u64,
) -> Option<[u8; FRAME_PREFIX_BYTES]> {
    let frame_len = (message_bytes as u64)
        .checked_add(payload_bytes)?
        .checked_add(4)?;
    let frame_len = u32::try_from(frame_len).ok()?;
    let message_len = u32::try_from(message_bytes).ok()?;
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    prefix[..4].copy_from_slice(&frame_len.to_le_bytes());
    prefix[4..].copy_from_slice(&message_len.to_le_bytes());
    Some(prefix)
}

/// The 8-byte prefix of a frame carrying `message_bytes` of flatbuffer and `payload_bytes` after it.
///
/// # Panics
/// If the frame would exceed 4 GiB: for requests a client builds, which
/// stay far below that. Anything sized by the network uses [`checked_prefix`].
pub fn encode_prefix(message_bytes: usize, payload_bytes: usize) -> [u8; FRAME_PREFIX_BYTES] {
    checked_prefix(message_bytes, payload_bytes as u64).expect("frames stay below 4 GiB")
}

fn verifier_options(limits: &ProtocolLimits) -> VerifierOptions {
    VerifierOptions {
        max_depth: limits.verifier_depth_max,
        max_tables: limits.verifier_tables_max,
        max_apparent_size: limits.frame_bytes_max as usize,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies a request flatbuffer from the network and returns its root.
///
/// # Errors
/// The verifier's description of what is wrong.
pub fn verify_request<'a>(
    message: &'a [u8],
    limits: &ProtocolLimits,
) -> Result<fb::Request<'a>, InvalidFlatbuffer> {
    flatbuffers::root_with_opts::<fb::Request>(&verifier_options(limits), message)
}

/// Verifies a response flatbuffer from the network and returns its root.
///
/// # Errors
/// The verifier's description of what is wrong.
pub fn verify_response<'a>(
    message: &'a [u8],
    limits: &ProtocolLimits,
) -> Result<fb::Response<'a>, InvalidFlatbuffer> {
    flatbuffers::root_with_opts::<fb::Response>(&verifier_options(limits), message)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Finishes a `Request` around `body` (built in `fbb`) and frames it, with
/// no payload: how a broker sends another broker a request.
pub fn request_frame(
    mut fbb: FlatBufferBuilder<'_>,
    correlation_id: u32,
    client_id: Option<&str>,
    body_type: fb::RequestBody,
    body: WIPOffset<UnionWIPOffset>,
) -> Vec<u8> {
    let client_id = client_id.map(|id| fbb.create_string(id));
    let request = fb::Request::create(
        &mut fbb,
        &fb::RequestArgs {
            correlation_id,
            api_version: 0,
            client_id,
            body_type,
            body: Some(body),
        },
    );
    fbb.finish(request, None);
    let message = fbb.finished_data();
    let mut frame = Vec::with_capacity(FRAME_PREFIX_BYTES + message.len());
    frame.extend_from_slice(&encode_prefix(message.len(), 0));
    frame.extend_from_slice(message);
    frame
}
