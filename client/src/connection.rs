//! One async connection to a broker shard (tokio).
//!
//! ```text
//!  call() ─► queue ─► writer task: correlation id, frame, write ─► socket
//!                         └─ pending (FIFO) ◄── reader task: frame, verify, decode ◄─ socket
//! ```
//!
//! The broker answers in request order, so the reader pairs each response
//! with the oldest pending call and checks the correlation id. Calls in
//! flight are bounded by `max_in_flight` (a semaphore); a call waits for a
//! permit. Any I/O or protocol error closes the connection and fails every
//! pending call; the owner reconnects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardlog_wire::protocol::{parse_prefix, ProtocolLimits, FRAME_PREFIX_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::protocol::{decode_response, encode_request, Request, Response};
use crate::Error;

type Reply = oneshot::Sender<Result<Response, Error>>;

/// A cheap, cloneable handle to one connection.
#[derive(Debug, Clone)]
pub struct Connection {
    queue: mpsc::Sender<(Request, Reply)>,
    permits: Arc<Semaphore>,
    closed: Arc<AtomicBool>,
    request_timeout: Duration,
    addr: SocketAddr,
}

impl Connection {
    /// Connects and starts the connection's reader and writer tasks.
    ///
    /// # Errors
    /// [`Error::Io`] when the broker cannot be reached within `request_timeout`.
    pub async fn connect(
        addr: SocketAddr,
        max_in_flight: usize,
        request_timeout: Duration,
    ) -> Result<Connection, Error> {
        let connect = tokio::time::timeout(request_timeout, TcpStream::connect(addr)).await;
        let stream = connect.map_err(|_| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            ))
        })??;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let (queue_tx, queue_rx) = mpsc::channel(max_in_flight.max(1));
        let pending: Arc<Mutex<VecDeque<(u32, Reply)>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_loop(
            writer,
            queue_rx,
            pending.clone(),
            closed.clone(),
        ));
        tokio::spawn(read_loop(reader, pending, closed.clone()));
        Ok(Connection {
            queue: queue_tx,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            closed,
            request_timeout,
            addr,
        })
    }

    /// The broker address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the connection broke; make a new one.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.queue.is_closed()
    }

    /// Sends a request and waits for its response, at most `request_timeout`.
    ///
    /// # Errors
    /// [`Error::Io`] on a broken connection or a timeout; [`Error::Protocol`] on a bad response.
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        let _permit = self.permits.acquire().await.map_err(|_| closed_error())?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.queue
            .send((request, reply_tx))
            .await
            .map_err(|_| closed_error())?;
        match tokio::time::timeout(self.request_timeout, reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed_error()),
            Err(_) => {
                // The response would arrive out of step with what follows: start afresh.
                self.closed.store(true, Ordering::SeqCst);
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no response from {} within {:?}",
                        self.addr, self.request_timeout
                    ),
                )))
            }
        }
    }
}

fn closed_error() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the connection to the broker closed",
    ))
}

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<(Request, Reply)>,
    pending: Arc<Mutex<VecDeque<(u32, Reply)>>>,
    closed: Arc<AtomicBool>,
) {
    let mut correlation_id = 1u32;
    while let Some((request, reply)) = queue.recv().await {
        if closed.load(Ordering::SeqCst) {
            let _ = reply.send(Err(closed_error()));
            continue;
        }
        let frame = encode_request(correlation_id, &request);
        lock(&pending).push_back((correlation_id, reply));
        correlation_id = correlation_id.wrapping_add(1);
        if writer.write_all(&frame).await.is_err() {
            closed.store(true, Ordering::SeqCst);
            fail_all(&pending);
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    pending: Arc<Mutex<VecDeque<(u32, Reply)>>>,
    closed: Arc<AtomicBool>,
) {
    let limits = ProtocolLimits::default();
    loop {
        let result = read_response(&mut reader, &limits).await;
        let Ok((correlation_id, response)) = result else {
            break;
        };
        let next = lock(&pending).pop_front();
        match next {
            Some((expected, reply)) if expected == correlation_id => {
                let _ = reply.send(Ok(response));
            }
            Some((expected, reply)) => {
                let message =
                    format!("response {correlation_id} arrived where {expected} was expected");
                let _ = reply.send(Err(Error::Protocol(message)));
                break;
            }
            None => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    fail_all(&pending);
}

async fn read_response(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    limits: &ProtocolLimits,
) -> Result<(u32, Response), Error> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    reader.read_exact(&mut prefix).await?;
    let prefix = parse_prefix(&prefix, limits)
        .map_err(|e| Error::Protocol(e.to_string()))?
        .ok_or_else(|| Error::Protocol("short prefix".into()))?;
    let mut body = BytesMut::zeroed(prefix.frame_bytes - FRAME_PREFIX_BYTES);
    reader.read_exact(&mut body).await?;
    decode_response(Bytes::from(body), prefix.message_bytes, limits)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fail_all(pending: &Mutex<VecDeque<(u32, Reply)>>) {
    for (_, reply) in lock(pending).drain(..) {
        let _ = reply.send(Err(closed_error()));
    }
}
