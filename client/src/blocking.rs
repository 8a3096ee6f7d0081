//! One connection to a broker over `std::net`, for tools and tests.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardlog_wire::protocol::{parse_prefix, ProtocolLimits, FRAME_PREFIX_BYTES};

use crate::protocol::{decode_response, encode_request, Request, Response};
use crate::Error;

/// A blocking connection. Requests may be pipelined with [`Connection::send`]
/// and [`Connection::receive`]; the broker answers in order.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    next_correlation_id: u32,
    limits: ProtocolLimits,
}

impl Connection {
    /// Connects to a broker.
    ///
    /// # Errors
    /// [`Error::Io`] when the broker cannot be reached.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Connection, Error> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            next_correlation_id: 1,
            limits: ProtocolLimits::default(),
        })
    }

    /// Connects to a broker at `addr`, giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Io`] when the broker cannot be reached in time.
    pub fn connect_timeout(
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            next_correlation_id: 1,
            limits: ProtocolLimits::default(),
        })
    }

    /// Sets how long a receive may wait (None: forever).
    ///
    /// # Errors
    /// [`Error::Io`] from the socket.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        Ok(self.stream.set_read_timeout(timeout)?)
    }

    /// Sends a request and returns its correlation id.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn send(&mut self, request: &Request) -> Result<u32, Error> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.stream
            .write_all(&encode_request(correlation_id, request))?;
        Ok(correlation_id)
    }

    /// Writes raw bytes, for tests of the broker's handling of bad input.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Receives the next response: its correlation id and content.
    ///
    /// # Errors
    /// [`Error::Io`] on a closed connection, [`Error::Protocol`] on a bad frame.
    pub fn receive(&mut self) -> Result<(u32, Response), Error> {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        self.stream.read_exact(&mut prefix)?;
        let prefix = parse_prefix(&prefix, &self.limits)
            .map_err(|e| Error::Protocol(e.to_string()))?
            .ok_or_else(|| Error::Protocol("short prefix".into()))?;
        let mut body = BytesMut::zeroed(prefix.frame_bytes - FRAME_PREFIX_BYTES);
        self.stream.read_exact(&mut body)?;
        decode_response(Bytes::from(body), prefix.message_bytes, &self.limits)
    }

    /// Sends a request and waits for its response.
    ///
    /// # Errors
    /// As [`Connection::send`] and [`Connection::receive`]; a response for another request.
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        let sent = self.send(request)?;
        let (received, response) = self.receive()?;
        if sent != received {
            return Err(Error::Protocol(format!(
                "expected the response to {sent}, got {received}"
            )));
        }
        Ok(response)
    }
}
