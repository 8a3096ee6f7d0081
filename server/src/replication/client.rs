//! A follower shard's connection to one leader shard: one request at a
//! time, every step bounded by a timeout, dropped on any failure (its next
//! bytes could belong to an answer that did not arrive).

use std::time::Duration;

use std::os::fd::AsRawFd;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use shardlog_wire::protocol::{self, ProtocolLimits, FRAME_PREFIX_BYTES};

/// Bytes of the small read that waits for a quiet socket to have data.
const WAIT_READ_BYTES: usize = 4096;

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

    /// Reads `len` bytes into a new buffer without zero-filling it: what the
    /// socket holds goes straight into the spare capacity; only when it
    /// holds nothing does a small read wait for more.
    async fn read_body(&mut self, len: usize) -> Result<bytes::BytesMut, CallError> {
        let socket = self.stream.as_raw_fd();
        let mut body = bytes::BytesMut::with_capacity(len);
        let mut scratch = [0u8; WAIT_READ_BYTES];
        let closed = || {
            CallError::Io(format!(
                "{} closed the connection inside a frame",
                self.address
            ))
        };
        while body.len() < len {
            let want = len - body.len();
            match crate::socket::recv_ready(socket, &mut body, want) {
                Ok(Some(0)) => return Err(closed()),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let want = (len - body.len()).min(scratch.len());
                    let n = self.stream.read(&mut scratch[..want]).await.map_err(|e| {
                        CallError::Io(format!("reading from {}: {e}", self.address))
                    })?;
                    if n == 0 {
                        return Err(closed());
                    }
                    body.extend_from_slice(&scratch[..n]);
                }
                Err(e) => return Err(CallError::Io(format!("reading from {}: {e}", self.address))),
            }
        }
        Ok(body)
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
        let address = self.address.clone();
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
            let bytes = self
                .read_body(parsed.frame_bytes - FRAME_PREFIX_BYTES)
                .await?;
            Ok(ResponseFrame {
                bytes,
                message_bytes: parsed.message_bytes,
            })
        };
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
