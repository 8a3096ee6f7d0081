//! One client connection.
//!
//! ```text
//!  socket ─► reader: prefix ─► limits ─► body (charged as it arrives) ─► verify ─► parse ─► spawn handler ─┐
//!                                                                                                         │ bounded queue
//!  socket ◄─ writer: awaits handlers in request order, writes each response, gives back its memory ◄──────┘ (inflight_requests_max)
//! ```
//!
//! Requests are handled concurrently but answered in the order they came,
//! so a client may pipeline. What a connection may hold is bounded three
//! ways: requests in flight (the queue), bytes (request bodies and fetched
//! data count against the connection's and the shard's memory budget, see
//! `budget.rs`), and time: a connection that sends nothing for
//! `connection_idle_timeout_ms`, whose frame stalls for
//! `frame_read_timeout_ms` once begun, or that does not take a response
//! within `response_write_timeout_ms` is closed.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::io::{BufferedFile, ReadResult};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use shardlog_wire::protocol::{self, fb, FRAME_PREFIX_BYTES};

use super::budget::{Budget, MemoryCharge};
use super::sendfile::{send_file, set_nonblocking};
use crate::error::WireError;
use crate::handlers;
use crate::shard::ShardState;

/// Request body bytes reserved (not touched) up front; larger bodies grow as they arrive.
const BODY_RESERVE_BYTES: usize = 1 << 20;
/// The first read of a body asks for this much; each next read for up to
/// what has arrived so far, so a stalled frame holds little memory.
const BODY_FIRST_READ_BYTES: usize = 4096;

/// A response ready to be written: the flatbuffer, then the raw payload.
#[derive(Debug)]
pub struct Outgoing {
    pub message: Vec<u8>,
    pub payload: Vec<PayloadPart>,
}

/// A response and the memory its payload holds, given back once it is written.
#[derive(Debug)]
pub struct Answer {
    pub outgoing: Outgoing,
    pub charge: Option<MemoryCharge>,
}

impl From<Outgoing> for Answer {
    fn from(outgoing: Outgoing) -> Answer {
        Answer {
            outgoing,
            charge: None,
        }
    }
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
    /// Bytes in this part.
    pub fn len(&self) -> u64 {
        match self {
            PayloadPart::Bytes(bytes) => bytes.len() as u64,
            PayloadPart::Direct(result) => result.len() as u64,
            PayloadPart::File { length, .. } => *length,
        }
    }

    /// True when the part holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a handler may know of the connection its request came on.
#[derive(Debug)]
pub struct ConnectionContext {
    /// The connection's memory budget (inside the shard's).
    pub budget: Rc<Budget>,
}

struct InFlight {
    response: JoinHandle<Answer>,
    /// The request's body, given back once its response is written.
    _charge: MemoryCharge,
}

/// Why a connection closes.
#[derive(Debug)]
enum Close {
    /// The client closed it, or the shard is stopping.
    Done,
    /// Nothing arrived for `connection_idle_timeout_ms`.
    Idle,
    /// A begun frame did not arrive whole in `frame_read_timeout_ms`.
    StalledFrame,
    /// Anything else: a broken socket, an absurd length.
    Broken(String),
}

struct ConnectionGuard(Rc<ShardState>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

/// Serves one connection until the client closes it, it breaks the
/// protocol beyond repair, a timeout fires, or the shard shuts down.
pub async fn serve(shard: Rc<ShardState>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    let _guard = ConnectionGuard(shard.clone());
    let socket = stream.as_raw_fd();
    if let Err(error) = set_nonblocking(socket) {
        tracing::warn!(%error, "cannot make the socket non-blocking; closing it");
        return;
    }
    let _ = stream.set_nodelay(true);
    let limits = &shard.config.limits;
    let context = Rc::new(ConnectionContext {
        budget: Budget::new(limits.connection_memory_bytes_max, shard.memory.clone()),
    });
    let (reader, writer) = futures_lite::io::split(stream);
    let (queue_tx, queue_rx) = local_channel::new_bounded::<InFlight>(limits.inflight_requests_max);
    let writer_shard = shard.clone();
    let writer_task =
        glommio::spawn_local(
            async move { write_loop(writer_shard, writer, socket, queue_rx).await },
        );
    let closed = read_loop(&shard, &context, reader, &queue_tx).await;
    match &closed {
        Close::Done => {}
        Close::Idle => shard.metrics.connection_closed("idle"),
        Close::StalledFrame => shard.metrics.connection_closed("stalled_frame"),
        Close::Broken(reason) => {
            shard.metrics.connection_closed("broken");
            tracing::debug!(%reason, "closing connection");
        }
    }
    drop(queue_tx);
    writer_task.await;
}

/// One frame read off the socket.
struct Frame {
    body: BytesMut,
    /// `None` when the message length overran the frame (answered with an error).
    message_bytes: Option<usize>,
    charge: MemoryCharge,
}

async fn read_loop(
    shard: &Rc<ShardState>,
    context: &Rc<ConnectionContext>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    queue: &local_channel::LocalSender<InFlight>,
) -> Close {
    let limits = protocol::ProtocolLimits {
        frame_bytes_max: shard.config.limits.frame_bytes_max,
        ..protocol::ProtocolLimits::default()
    };
    loop {
        let frame = match read_frame(shard, context, &mut reader, &limits).await {
            Ok(frame) => frame,
            Err(close) => return close,
        };
        let response = match frame.message_bytes {
            Some(message_bytes) => dispatch(shard, context, frame.body, message_bytes, &limits),
            None => ready(handlers::error_response(
                0,
                &malformed("the message length exceeds the frame"),
            )),
        };
        let in_flight = InFlight {
            response,
            _charge: frame.charge,
        };
        if queue.send(in_flight).await.is_err() {
            return Close::Broken("the writer stopped".into());
        }
    }
}

/// Reads one whole frame: its first byte may take up to the idle timeout,
/// the rest must come within the frame timeout. The body is charged to the
/// budget as it arrives, and read no faster than the budget allows.
async fn read_frame(
    shard: &Rc<ShardState>,
    context: &ConnectionContext,
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    limits: &protocol::ProtocolLimits,
) -> Result<Frame, Close> {
    let config = &shard.config.limits;
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let idle = Duration::from_millis(config.connection_idle_timeout_ms);
    let first = read_some(reader, &mut prefix, Instant::now() + idle, shard).await;
    let mut filled = match first {
        Ok(0) => return Err(Close::Done),
        Ok(n) => n,
        Err(Close::StalledFrame) => return Err(Close::Idle),
        Err(close) => return Err(close),
    };
    let deadline = Instant::now() + Duration::from_millis(config.frame_read_timeout_ms);
    while filled < FRAME_PREFIX_BYTES {
        match read_some(reader, &mut prefix[filled..], deadline, shard).await? {
            0 => return Err(Close::Broken("the connection closed inside a frame".into())),
            n => filled += n,
        }
    }
    let (frame_bytes, message_bytes) = match protocol::parse_prefix(&prefix, limits) {
        Ok(Some(p)) => (p.frame_bytes, Some(p.message_bytes)),
        Ok(None) => return Err(Close::Broken("an eight-byte prefix did not parse".into())),
        Err(protocol::PrefixError::AbsurdLength { frame_len, .. }) => {
            return Err(Close::Broken(format!("absurd frame length {frame_len}")));
        }
        Err(protocol::PrefixError::MessageOverrun { frame_bytes, .. }) => (frame_bytes, None),
    };
    let body_bytes = frame_bytes - FRAME_PREFIX_BYTES;
    let mut charge = context.budget.charge();
    let body = read_body(reader, body_bytes, &mut charge, deadline, shard).await?;
    Ok(Frame {
        body,
        message_bytes,
        charge,
    })
}

/// Reads `body_bytes`, charging each read to `charge` once it has arrived.
/// Zeroing memory ahead of a read is what makes it resident, so each read
/// asks for at most as much as has arrived already (from 4 KiB): a frame
/// whose sender stalls holds little more than what it sent.
async fn read_body(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    body_bytes: usize,
    charge: &mut MemoryCharge,
    deadline: Instant,
    shard: &ShardState,
) -> Result<BytesMut, Close> {
    let mut body = BytesMut::with_capacity(body_bytes.min(BODY_RESERVE_BYTES));
    while body.len() < body_bytes {
        let filled = body.len();
        let ask = filled.max(BODY_FIRST_READ_BYTES).min(body_bytes - filled);
        body.resize(filled + ask, 0);
        let read = read_some(reader, &mut body[filled..], deadline, shard).await;
        let n = match read {
            Ok(0) => return Err(Close::Broken("the connection closed inside a frame".into())),
            Ok(n) => n,
            Err(close) => return Err(close),
        };
        body.truncate(filled + n);
        charge
            .grow(n as u64)
            .await
            .map_err(|e| Close::Broken(format!("memory budget: {e}")))?;
    }
    assert!(body.len() == body_bytes);
    Ok(body)
}

/// One read, bounded by `deadline` (timing out as [`Close::StalledFrame`])
/// and by the shard's shutdown (as [`Close::Done`]).
async fn read_some(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    buf: &mut [u8],
    deadline: Instant,
    shard: &ShardState,
) -> Result<usize, Close> {
    let wait = deadline.saturating_duration_since(Instant::now());
    let read = async { Some(reader.read(buf).await) };
    let timeout = async {
        glommio::timer::sleep(wait).await;
        None
    };
    let stop = async {
        shard.shutdown.wait().await;
        Some(Ok(0))
    };
    match futures_lite::future::or(read, futures_lite::future::or(stop, timeout)).await {
        Some(Ok(n)) => Ok(n),
        Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Some(Err(error)) => Err(Close::Broken(error.to_string())),
        None => Err(Close::StalledFrame),
    }
}

fn malformed(message: &str) -> WireError {
    WireError::new(fb::ErrorCode::MalformedFrame, message)
}

fn ready(outgoing: Outgoing) -> JoinHandle<Answer> {
    glommio::spawn_local(async move { Answer::from(outgoing) }).detach()
}

/// Verifies and parses one frame, and starts its handler.
fn dispatch(
    shard: &Rc<ShardState>,
    context: &Rc<ConnectionContext>,
    body: BytesMut,
    message_bytes: usize,
    limits: &protocol::ProtocolLimits,
) -> JoinHandle<Answer> {
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
            let (shard, context) = (shard.clone(), context.clone());
            glommio::spawn_local(async move {
                let answer =
                    handlers::handle(&shard, &context, correlation_id, request, body).await;
                shard.metrics.latency(api, started.elapsed());
                answer
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
    let timeout = Duration::from_millis(shard.config.limits.response_write_timeout_ms);
    while let Some(in_flight) = queue.recv().await {
        let answer = in_flight.response.await;
        let written = match answer {
            Some(Answer {
                outgoing,
                charge: _charge,
            }) => {
                let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
                let bytes = (FRAME_PREFIX_BYTES + outgoing.message.len()) as u64 + payload_bytes;
                shard.metrics.bytes_out(bytes);
                let write = async { Some(write_response(&mut writer, socket, outgoing).await) };
                let expire = async {
                    glommio::timer::sleep(timeout).await;
                    None
                };
                match futures_lite::future::or(write, expire).await {
                    Some(result) => result,
                    None => {
                        shard.metrics.connection_closed("write_timeout");
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client did not take a response within response_write_timeout_ms",
                        ))
                    }
                }
            }
            None => Err(std::io::Error::other("a request handler was cancelled")),
        };
        if let Err(error) = written {
            tracing::debug!(%error, "writing a response failed; closing the connection");
            break;
        }
    }
    // Requests that will never be answered give their memory back as they drop.
    drop(queue);
    let _ = writer.close().await;
}

async fn write_response(
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    outgoing: Outgoing,
) -> std::io::Result<()> {
    let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
    let prefix = protocol::checked_prefix(outgoing.message.len(), payload_bytes)
        .ok_or_else(|| std::io::Error::other("a response exceeds the 4 GiB frame limit"))?;
    let mut head = Vec::with_capacity(FRAME_PREFIX_BYTES + outgoing.message.len());
    head.extend_from_slice(&prefix);
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
