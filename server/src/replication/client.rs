//! A follower shard's connection to one leader shard: one request at a
//! time, every step bounded by a timeout, dropped on any failure (its next
//! bytes could belong to an answer that did not arrive).

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use shardlog_wire::protocol::{self, ProtocolLimits, FRAME_PREFIX_BYTES};

/// Longest a connection attempt to a leader shard may take.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Why a call failed: the caller drops the connection and backs off.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connecting, writing or reading failed, or took too long.
    #[error("{0}")]
    Io(String),
    /// The answer broke the protocol.
    #[error("the leader answered with a bad frame: {0}")]
    Protocol(String),
}

/// A connection to a leader shard.
pub struct PeerConnection {
    stream: TcpStream,
    address: String,
}

/// A response frame: the verified flatbuffer's bytes, then the payload.
pub struct ResponseFrame {
    /// The flatbuffer followed by the payload (one buffer: the batches are
    /// split off it, not copied).
    pub bytes: bytes::BytesMut,
    /// Bytes of the flatbuffer at the start of `bytes`.
    pub message_bytes: usize,
}

impl PeerConnection {
    /// Connects to `host:port`.
    ///
    /// # Errors
    /// [`CallError::Io`] when it cannot within [`CONNECT_TIMEOUT_MS`].
    pub async fn connect(host: &str, port: u16) -> Result<PeerConnection, CallError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = format!("{host}:{port}");
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let stream = TcpStream::connect_timeout(address.as_str(), timeout)
            .await
            .map_err(|e| CallError::Io(format!("connecting to {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(PeerConnection { stream, address })
    }

    /// Sends `frame` and reads the answer, all within `timeout`.
    ///
    /// # Errors
    /// [`CallError`]; the connection must be dropped after one.
    pub async fn call(
        &mut self,
        frame: &[u8],
        timeout: Duration,
        limits: &ProtocolLimits,
    ) -> Result<ResponseFrame, CallError> {
        let exchange = async {
            self.stream
                .write_all(frame)
                .await
                .map_err(|e| CallError::Io(format!("writing to {}: {e}", self.address)))?;
            let mut prefix = [0u8; FRAME_PREFIX_BYTES];
            self.stream
                .read_exact(&mut prefix)
                .await
                .map_err(|e| CallError::Io(format!("reading from {}: {e}", self.address)))?;
            let parsed = protocol::parse_prefix(&prefix, limits)
                .map_err(|e| CallError::Protocol(e.to_string()))?
                .ok_or_else(|| CallError::Protocol("a short prefix".into()))?;
            let mut bytes = bytes::BytesMut::zeroed(parsed.frame_bytes - FRAME_PREFIX_BYTES);
            self.stream
                .read_exact(&mut bytes)
                .await
                .map_err(|e| CallError::Io(format!("reading from {}: {e}", self.address)))?;
            Ok(ResponseFrame {
                bytes,
                message_bytes: parsed.message_bytes,
            })
        };
        let address = self.address.clone();
        let expire = async move {
            glommio::timer::sleep(timeout).await;
            Err(CallError::Io(format!(
                "no answer from {address} within {} ms",
                timeout.as_millis()
            )))
        };
        futures_lite::future::or(exchange, expire).await
    }
}
