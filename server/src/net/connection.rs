//! One client connection.
//!
//! ```text
//!  socket ─► reader: slot ─► prefix ─► limits ─► body (charged as it arrives) ─► verify ─► parse ─► spawn handler
//!                (inflight_requests_max)                                                               │ each, when done
//!  socket ◄─ writer: writes each answer as it completes, gives back its memory and slot ◄──────────────┘
//! ```
//!
//! Requests are handled concurrently and answered as they complete, each
//! response carrying its request's correlation id: a produce waiting for an
//! fdatasync does not hold back a metadata answer, nor one slow partition
//! the acknowledgements of others. Handlers start in arrival order (glommio
//! runs a spawned task at once), which is what keeps one producer
//! partition's batches in order. What a connection may hold is bounded three
//! ways: requests in flight (slots), bytes (request bodies and fetched
//! data count against the connection's and the shard's memory budget, see
//! `budget.rs`), and time: a connection that sends nothing for
//! `connection_idle_timeout_ms`, whose frame stalls for
//! `frame_read_timeout_ms` once begun, or that does not take a response
//! within `response_write_timeout_ms` is closed.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use shardlog_wire::protocol::{self, fb, FRAME_PREFIX_BYTES};

use super::sendfile::{send_file, set_nonblocking, write_slices};
use crate::error::WireError;
use crate::handlers::{self, Answer, ConnectionContext, Outgoing, PayloadPart};
use crate::shard::budget::{Budget, MemoryCharge};
use crate::shard::ShardState;
use crate::socket::recv_ready;

/// Request body bytes reserved (not touched) up front; larger bodies grow as they arrive.
const BODY_RESERVE_BYTES: usize = 1 << 20;
/// The most a read waiting for an empty socket takes in at once (into a
/// stack buffer); the rest is received straight into the body.
const BODY_WAIT_READ_BYTES: usize = 4096;
/// The first direct receive of a body asks for this much; each next one for
/// up to what is charged already.
const RECV_FIRST_BYTES: usize = 64 * 1024;

/// A handled request, ready to be written.
struct Done {
    answer: Answer,
    /// The request's body, given back once its response is written.
    _charge: MemoryCharge,
    /// Its place among the requests in flight, given back with it.
    _slot: StaticPermit,
}

/// Shared by the reader and every handler task; the channel closes when the last goes.
type DoneSender = Rc<local_channel::LocalSender<Done>>;

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
    let slots = Rc::new(Semaphore::new(limits.inflight_requests_max as u64));
    // Each request in flight holds a slot and sends at most once: never full.
    let (done_tx, done_rx) = local_channel::new_bounded::<Done>(limits.inflight_requests_max);
    let (writer_shard, writer_slots) = (shard.clone(), slots.clone());
    let writer_task = glommio::spawn_local(async move {
        write_loop(writer_shard, writer, socket, done_rx, writer_slots).await
    });
    let done_tx: DoneSender = Rc::new(done_tx);
    let closed = read_loop(&shard, &context, reader, socket, &slots, &done_tx).await;
    match &closed {
        Close::Done => {}
        Close::Idle => shard.metrics.connection_closed("idle"),
        Close::StalledFrame => shard.metrics.connection_closed("stalled_frame"),
        Close::Broken(reason) => {
            shard.metrics.connection_closed("broken");
            tracing::debug!(%reason, "closing connection");
        }
    }
    drop(done_tx);
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
    socket: std::os::fd::RawFd,
    slots: &Rc<Semaphore>,
    done: &DoneSender,
) -> Close {
    let limits = protocol::ProtocolLimits {
        frame_bytes_max: shard.config.limits.frame_bytes_max,
        ..protocol::ProtocolLimits::default()
    };
    loop {
        // With every slot taken, the next frame is not read: pushback.
        let Ok(slot) = slots.acquire_static_permit(1).await else {
            return Close::Broken("the writer stopped".into());
        };
        let frame = match read_frame(shard, context, &mut reader, socket, &limits).await {
            Ok(frame) => frame,
            Err(close) => return close,
        };
        let answer = match frame.message_bytes {
            Some(message_bytes) => dispatch(shard, context, frame.body, message_bytes, &limits),
            None => Box::pin(ready(handlers::error_response(
                0,
                &malformed("the message length exceeds the frame"),
            ))),
        };
        let (done, charge) = (done.clone(), frame.charge);
        glommio::spawn_local(async move {
            let done_answer = Done {
                answer: answer.await,
                _charge: charge,
                _slot: slot,
            };
            // Fails only once the writer stopped: the answer is dropped.
            let _ = done.send(done_answer).await;
        })
        .detach();
    }
}

/// Reads one whole frame: its first byte may take up to the idle timeout,
/// the rest must come within the frame timeout. The body is charged to the
/// budget as it arrives, and read no faster than the budget allows.
async fn read_frame(
    shard: &Rc<ShardState>,
    context: &ConnectionContext,
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    socket: std::os::fd::RawFd,
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
    let body = read_body(reader, socket, body_bytes, &mut charge, deadline, shard).await?;
    Ok(Frame {
        body,
        message_bytes,
        charge,
    })
}

/// Reads `body_bytes`, charging each read to `charge` once it has arrived.
/// Bytes the socket already holds are received straight into the body's
/// spare capacity ([`recv_ready`]), so a body is never zero-filled first;
/// only when the socket is empty does the read wait, through glommio, for
/// at most a small scratch buffer. Capacity is reserved up to 1 MiB (not
/// touched, so not resident) and grown only as bytes arrive, so a frame
/// whose sender stalls holds little more than what it sent.
async fn read_body(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    body_bytes: usize,
    charge: &mut MemoryCharge,
    mut deadline: Instant,
    shard: &ShardState,
) -> Result<BytesMut, Close> {
    let mut body = BytesMut::with_capacity(body_bytes.min(BODY_RESERVE_BYTES));
    let mut scratch = [0u8; BODY_WAIT_READ_BYTES];
    while body.len() < body_bytes {
        // Up to what is charged already (from 64 KiB): uncharged bytes in
        // hand stay within that, however fast a sender is while the budget waits.
        let charged = usize::try_from(charge.bytes()).unwrap_or(usize::MAX);
        let want = (body_bytes - body.len()).min(charged.max(RECV_FIRST_BYTES));
        let n = match recv_ready(socket, &mut body, want) {
            Ok(Some(0)) => {
                return Err(Close::Broken("the connection closed inside a frame".into()))
            }
            Ok(Some(n)) => n,
            Ok(None) => {
                let ask = want.min(scratch.len());
                match read_some(reader, &mut scratch[..ask], deadline, shard).await? {
                    0 => return Err(Close::Broken("the connection closed inside a frame".into())),
                    n => {
                        body.extend_from_slice(&scratch[..n]);
                        n
                    }
                }
            }
            Err(error) => return Err(Close::Broken(error.to_string())),
        };
        // Time spent waiting for the budget is the broker's, not the sender's:
        // it does not count against the frame's deadline.
        let waiting_since = Instant::now();
        charge
            .grow(n as u64)
            .await
            .map_err(|e| Close::Broken(format!("memory budget: {e}")))?;
        deadline += waiting_since.elapsed();
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

async fn ready(outgoing: Outgoing) -> Answer {
    Answer::from(outgoing)
}

type Handling = std::pin::Pin<Box<dyn std::future::Future<Output = Answer>>>;

/// Verifies and parses one frame; the future that handles it.
fn dispatch(
    shard: &Rc<ShardState>,
    context: &Rc<ConnectionContext>,
    body: BytesMut,
    message_bytes: usize,
    limits: &protocol::ProtocolLimits,
) -> Handling {
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
            Box::pin(async move {
                let answer =
                    handlers::handle(&shard, &context, correlation_id, request, body).await;
                shard.metrics.latency(api, started.elapsed());
                answer
            })
        }
        Err((correlation_id, error)) => {
            Box::pin(ready(handlers::error_response(correlation_id, &error)))
        }
    }
}

async fn write_loop(
    shard: Rc<ShardState>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    done: local_channel::LocalReceiver<Done>,
    slots: Rc<Semaphore>,
) {
    let timeout = Duration::from_millis(shard.config.limits.response_write_timeout_ms);
    // `done_answer` lives to the end of each turn: its memory and slot come back once written.
    while let Some(done_answer) = done.recv().await {
        let outgoing = &done_answer.answer.outgoing;
        let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
        let bytes = (FRAME_PREFIX_BYTES + outgoing.message.len()) as u64 + payload_bytes;
        shard.metrics.bytes_out(bytes);
        let write = async { Some(write_response(&mut writer, socket, outgoing).await) };
        let expire = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        let written = match futures_lite::future::or(write, expire).await {
            Some(result) => result,
            None => {
                shard.metrics.connection_closed("write_timeout");
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not take a response within response_write_timeout_ms",
                ))
            }
        };
        if let Err(error) = written {
            tracing::debug!(%error, "writing a response failed; closing the connection");
            // The reader may be waiting on the socket for a frame that never
            // comes (a client that stopped reading may also stop sending):
            // shutting the socket down wakes it, so the connection ends now,
            // not at the idle timeout.
            // SAFETY: `socket` is the descriptor of the stream whose halves
            // this task and the reader still hold, so it is open; shutdown
            // changes the connection's state and frees nothing.
            unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
            break;
        }
    }
    // The reader stops at its next slot; answers still to come are dropped
    // as they arrive, giving back their memory and slots.
    slots.close();
    while done.recv().await.is_some() {}
    let _ = writer.close().await;
}

async fn write_response(
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    outgoing: &Outgoing,
) -> std::io::Result<()> {
    let payload_bytes: u64 = outgoing.payload.iter().map(PayloadPart::len).sum();
    let prefix = protocol::checked_prefix(outgoing.message.len(), payload_bytes)
        .ok_or_else(|| std::io::Error::other("a response exceeds the 4 GiB frame limit"))?;
    // Runs of memory parts go out in one writev each; a sealed-file range
    // with sendfile between them.
    let mut run: Vec<&[u8]> = Vec::with_capacity(2 + outgoing.payload.len());
    run.push(&prefix);
    run.push(&outgoing.message);
    for part in &outgoing.payload {
        match part {
            PayloadPart::Bytes(bytes) => run.push(bytes),
            PayloadPart::Direct(result) => run.push(result),
            PayloadPart::File {
                file,
                position,
                length,
            } => {
                write_slices(writer, socket, &run).await?;
                run.clear();
                send_file(writer, socket, file, *position, *length).await?;
            }
        }
    }
    write_slices(writer, socket, &run).await?;
    writer.flush().await
}
