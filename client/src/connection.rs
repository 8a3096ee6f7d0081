//! One async connection to a broker shard (tokio).
//!
//! ```text
//!  call() ─► queue ─► writer task: correlation id, frame, write ─► socket
//!                         └─ pending (by id) ◄── reader task: frame, verify, decode ◄─ socket
//! ```
//!
//! The broker answers each request as it completes, so the reader pairs a
//! response with the pending call of its correlation id; an id nobody waits
//! for is a protocol error. Requests go
//! on the wire in the order [`Connection::send`] calls complete, which is
//! what keeps one producer partition's batches in sequence order. Calls in
//! flight are bounded by `max_in_flight` (a semaphore): a call waits for a
//! permit, which the reader gives back when the response arrives (not when
//! the caller gets around to looking at it). Any I/O or protocol error
//! closes the connection and fails every pending call; the owner reconnects.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use shardlog_wire::protocol::{parse_prefix, ProtocolLimits, FRAME_PREFIX_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::protocol::{decode_response, encode_request, Request, Response};
use crate::Error;

type Reply = oneshot::Sender<Result<Response, Error>>;

/// A request on its way, with the reply slot and the in-flight permit it holds.
type Queued = (Request, Reply, OwnedSemaphorePermit);

/// The response to a request [`Connection::send`] put on the wire.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

/// A cheap, cloneable handle to one connection.
#[derive(Debug, Clone)]
pub struct Connection {
    queue: mpsc::Sender<Queued>,
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
        let pending: Arc<Mutex<PendingCalls>> = Arc::default();
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
        self.send(request).await?.await
    }

    /// Queues a request for the wire (after any queued before it) and
    /// returns the future of its response, bounded by `request_timeout`.
    /// Waits while `max_in_flight` requests are outstanding.
    ///
    /// # Errors
    /// [`Error::Io`] on a broken connection.
    pub async fn send(&self, request: Request) -> Result<ResponseFuture, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed_error())?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.queue
            .send((request, reply_tx, permit))
            .await
            .map_err(|_| closed_error())?;
        let (timeout, closed, addr) = (self.request_timeout, self.closed.clone(), self.addr);
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, reply_rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(closed_error()),
                Err(_) => {
                    // A broker that sat on a request this long is not to be trusted: start afresh.
                    closed.store(true, Ordering::SeqCst);
                    Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no response from {addr} within {timeout:?}"),
                    )))
                }
            }
        }))
    }
}

fn closed_error() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the connection to the broker closed",
    ))
}

/// Requests on the wire by correlation id: where each response goes, and
/// the in-flight permit it holds until the response is read.
type PendingCalls = HashMap<u32, (Reply, OwnedSemaphorePermit)>;

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Queued>,
    pending: Arc<Mutex<PendingCalls>>,
    closed: Arc<AtomicBool>,
) {
    let mut correlation_id = 1u32;
    while let Some((request, reply, permit)) = queue.recv().await {
        let frame = encode_request(correlation_id, &request);
        {
            // `closed` is checked and set under the pending lock, so a
            // request never joins `pending` after the reader failed it all.
            let mut waiting = lock(&pending);
            if closed.load(Ordering::SeqCst) {
                drop(waiting);
                let _ = reply.send(Err(closed_error()));
                continue;
            }
            let earlier = waiting.insert(correlation_id, (reply, permit));
            assert!(
                earlier.is_none(),
                "2^32 requests are never in flight at once"
            );
        }
        // 0 is what the broker answers a frame it could not read an id from.
        correlation_id = correlation_id.wrapping_add(1).max(1);
        if writer.write_all(&frame).await.is_err() {
            fail_all(&pending, &closed);
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    pending: Arc<Mutex<PendingCalls>>,
    closed: Arc<AtomicBool>,
) {
    let limits = ProtocolLimits::default();
    loop {
        let result = read_response(&mut reader, &limits).await;
        let Ok((correlation_id, response)) = result else {
            break;
        };
        let waiting = lock(&pending).remove(&correlation_id);
        match waiting {
            Some((reply, _permit)) => {
                let _ = reply.send(Ok(response));
            }
            // A response to nothing asked (or to a request that timed out,
            // which closes the connection anyway): the stream is not to be trusted.
            None => break,
        }
    }
    fail_all(&pending, &closed);
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
    let body_bytes = prefix.frame_bytes - FRAME_PREFIX_BYTES;
    // Read into spare capacity: a fetch response of many MiB is not zero-filled first.
    let mut body = BytesMut::with_capacity(body_bytes);
    while body.len() < body_bytes {
        let wanted = (body_bytes - body.len()) as u64;
        if (&mut *reader).take(wanted).read_buf(&mut body).await? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the broker closed the connection inside a response",
            )));
        }
    }
    decode_response(body.freeze(), prefix.message_bytes, limits)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks the connection closed and fails every request waiting for a response.
fn fail_all(pending: &Mutex<PendingCalls>, closed: &AtomicBool) {
    let failed: Vec<(Reply, OwnedSemaphorePermit)> = {
        let mut waiting = lock(pending);
        closed.store(true, Ordering::SeqCst);
        waiting.drain().map(|(_, call)| call).collect()
    };
    for (reply, _permit) in failed {
        let _ = reply.send(Err(closed_error()));
    }
}
