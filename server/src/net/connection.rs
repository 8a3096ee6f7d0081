//! One client connection.
//!
//! ```text
//!  socket ─► reader: prefix ─► limits ─► body ─► verify ─► parse ─► spawn handler ─┐
//!                                                                                 │ bounded queue
//!  socket ◄─ writer: awaits handlers in request order, writes each response ◄──────┘ (inflight_requests_max)
//! ```
//!
//! Requests are handled concurrently but answered in the order they came,
//! so a client may pipeline. Two bounds push back: the in-flight queue per
//! connection, and the shard's budget of request bytes held, which a frame
//! takes before its body is read and gives back once answered.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::io::{BufferedFile, ReadResult};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use shardlog_wire::protocol::{self, fb, FRAME_PREFIX_BYTES};

use super::sendfile::{send_file, set_nonblocking};
use crate::error::WireError;
use crate::handlers;
use crate::shard::ShardState;

/// A response ready to be written: the flatbuffer, then the raw payload.
#[derive(Debug)]
pub struct Outgoing {
    pub message: Vec<u8>,
    pub payload: Vec<PayloadPart>,
}

/// A piece of a response's raw payload.
#[derive(Debug)]
pub enum PayloadPart {
    /// Bytes in memory (tail cache, or copied from another shard).
    Bytes(Bytes),
    /// Bytes read with O_DIRECT.
    Direct(ReadResult),
    /// A range of a sealed segment, sent with sendfile.
    File {
        file: Rc<BufferedFile>,
        position: u64,
        length: u64,
    },
}

impl PayloadPart {
    fn len(&self) -> u64 {
        match self {
            PayloadPart::Bytes(bytes) => bytes.len() as u64,
            PayloadPart::Direct(result) => result.len() as u64,
            PayloadPart::File { length, .. } => *length,
        }
    }
}

struct InFlight {
    response: JoinHandle<Outgoing>,
    request_bytes: u64,
}

struct ConnectionGuard(Rc<ShardState>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

/// Serves one connection until the client closes it, it breaks the
/// protocol beyond repair, or the shard shuts down.
pub async fn serve(shard: Rc<ShardState>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    let _guard = ConnectionGuard(shard.clone());
    let socket = stream.as_raw_fd();
    if let Err(error) = set_nonblocking(socket) {
        tracing::warn!(%error, "cannot make the socket non-blocking; closing it");
        return;
    }
    let _ = stream.set_nodelay(true);
    let (reader, writer) = futures_lite::io::split(stream);
    let (queue_tx, queue_rx) =
        local_channel::new_bounded::<InFlight>(shard.config.inflight_requests_max);
    let writer_shard = shard.clone();
    let writer_task =
        glommio::spawn_local(
            async move { write_loop(writer_shard, writer, socket, queue_rx).await },
        );
    if let Err(reason) = read_loop(&shard, reader, &queue_tx).await {
        tracing::debug!(%reason, "closing connection");
    }
    drop(queue_tx);
    writer_task.await;
}

async fn read_loop(
    shard: &Rc<ShardState>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    queue: &local_channel::LocalSender<InFlight>,
) -> Result<(), String> {
    let limits = protocol::ProtocolLimits::default();
    loop {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        let read = futures_lite::future::or(
            async { Some(reader.read_exact(&mut prefix).await) },
            async {
                shard.shutdown.wait().await;
                None
            },
        );
        match read.await {
            None => return Ok(()),
            Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Some(Err(error)) => return Err(error.to_string()),
            Some(Ok(())) => {}
        }
        let (frame_bytes, message_bytes) = match protocol::parse_prefix(&prefix, &limits) {
            Ok(Some(p)) => (p.frame_bytes, Some(p.message_bytes)),
            Ok(None) => unreachable!("eight bytes always hold a whole prefix"),
            Err(protocol::PrefixError::AbsurdLength { frame_len, .. }) => {
                return Err(format!("absurd frame length {frame_len}"));
            }
            Err(protocol::PrefixError::MessageOverrun { frame_bytes, .. }) => (frame_bytes, None),
        };
        let body_bytes = frame_bytes - FRAME_PREFIX_BYTES;
        let permits = body_bytes as u64;
        shard
            .request_bytes
            .acquire(permits)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = BytesMut::zeroed(body_bytes);
        if let Err(error) = reader.read_exact(&mut body).await {
            shard.request_bytes.signal(permits);
            return Err(error.to_string());
        }
        let response = match message_bytes {
            Some(message_bytes) => dispatch(shard, body, message_bytes, &limits),
            None => ready(handlers::error_response(
                0,
                &malformed("the message length exceeds the frame"),
            )),
        };
        if queue
            .send(InFlight {
                response,
                request_bytes: permits,
            })
            .await
            .is_err()
        {
            shard.request_bytes.signal(permits);
            return Err("the writer stopped".into());
        }
    }
}

fn malformed(message: &str) -> WireError {
    WireError::new(fb::ErrorCode::MalformedFrame, message)
}

fn ready(outgoing: Outgoing) -> JoinHandle<Outgoing> {
    glommio::spawn_local(async move { outgoing }).detach()
}

/// Verifies and parses one frame, and starts its handler.
fn dispatch(
    shard: &Rc<ShardState>,
    body: BytesMut,
    message_bytes: usize,
    limits: &protocol::ProtocolLimits,
) -> JoinHandle<Outgoing> {
    let started = std::time::Instant::now();
    let mut api = 0u8;
    let parsed = match protocol::verify_request(&body[..message_bytes], limits) {
        Ok(request) => {
            api = request.body_type().0;
            handlers::parse(request, message_bytes)
        }
        Err(error) => Err((
            0,
            malformed(&format!("the request does not verify: {error}")),
        )),
    };
    shard
        .metrics
        .request(api, (FRAME_PREFIX_BYTES + body.len()) as u64);
    match parsed {
        Ok((correlation_id, request)) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let outgoing = handlers::handle(&shard, correlation_id, request, body).await;
                shard.metrics.latency(api, started.elapsed());
                outgoing
            })
            .detach()
        }
        Err((correlation_id, error)) => ready(handlers::error_response(correlation_id, &error)),
    }
}

async fn write_loop(
    shard: Rc<ShardState>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    queue: local_channel::LocalReceiver<InFlight>,
) {
    while let Some(in_flight) = queue.recv().await {
        let outgoing = in_flight.response.await;
        let written = match outgoing {
            Some(outgoing) => {
                let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
                let bytes = (FRAME_PREFIX_BYTES + outgoing.message.len()) as u64 + payload_bytes;
                shard.metrics.bytes_out(bytes);
                write_response(&mut writer, socket, outgoing).await
            }
            None => Err(std::io::Error::other("a request handler was cancelled")),
        };
        shard.request_bytes.signal(in_flight.request_bytes);
        if let Err(error) = written {
            tracing::debug!(%error, "writing a response failed; closing the connection");
            break;
        }
    }
    // Give back the budget of requests that will never be answered.
    while let Some(in_flight) = queue.recv().await {
        shard.request_bytes.signal(in_flight.request_bytes);
    }
    let _ = writer.close().await;
}

async fn write_response(
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    outgoing: Outgoing,
) -> std::io::Result<()> {
    let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
    let mut head = Vec::with_capacity(FRAME_PREFIX_BYTES + outgoing.message.len());
    head.extend_from_slice(&protocol::encode_prefix(
        outgoing.message.len(),
        payload_bytes as usize,
    ));
    head.extend_from_slice(&outgoing.message);
    writer.write_all(&head).await?;
    for part in outgoing.payload {
        match part {
            PayloadPart::Bytes(bytes) => writer.write_all(&bytes).await?,
            PayloadPart::Direct(result) => writer.write_all(&result).await?,
            PayloadPart::File {
                file,
                position,
                length,
            } => send_file(writer, socket, &file, position, length).await?,
        }
    }
    writer.flush().await
}
