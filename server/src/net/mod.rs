//! Listeners and connections.
//!
//! Every shard accepts on the shared port (SO_REUSEPORT: the kernel spreads
//! connections over the shards) and on its own port, `port + 1 + shard`, for
//! clients that know which shard owns a partition.

mod connection;
mod metrics_http;
mod sendfile;

use std::net::SocketAddr;
use std::rc::Rc;

use glommio::net::TcpListener;

use crate::shard::ShardState;
use crate::{Error, Result};

pub use metrics_http::serve as serve_metrics;

/// Binds the shared client port with SO_REUSEPORT: every shard binds it and
/// the kernel spreads connections over them. SO_REUSEADDR too, so that a
/// restart is not refused while old connections on the port sit in
/// TIME_WAIT (std's own listeners, used for the exclusive ports, set it).
///
/// # Errors
/// The address is taken (without SO_REUSEPORT) or not local.
pub fn bind_shared(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let error = |e: std::io::Error| Error::io("binding", addr.to_string(), e);
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)?;
    Ok(adopt(socket.into()))
}

/// Connections the kernel queues on a listener before the shard accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds a port that belongs to one listener alone (a shard's own port, the
/// metrics port): without SO_REUSEPORT, so a second broker on the same
/// ports fails here with "address in use" instead of sharing connections.
/// The main thread binds these before any shard binds the shared port.
///
/// # Errors
/// The address is taken or not local.
pub fn bind_exclusive(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process holds it: stop it or choose other ports)"
        } else {
            ""
        };
        Error::io("binding", format!("{addr}{hint}"), e)
    })
}

/// Hands a listener bound by [`bind_exclusive`] to this shard's reactor.
pub fn adopt(listener: std::net::TcpListener) -> TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership
    // moves from the std listener to glommio's; nothing else holds it.
    unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// The least time between two log lines about refused connections.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until the shard shuts down; each runs as its own task.
pub async fn accept_loop(shard: Rc<ShardState>, listener: TcpListener) {
    let mut refusals_logged_at: Option<std::time::Instant> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.limits.connections_per_shard_max {
            shard.metrics.connection_closed("refused");
            if refusals_logged_at.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                refusals_logged_at = Some(std::time::Instant::now());
                tracing::warn!(
                    limit = shard.config.limits.connections_per_shard_max,
                    "refusing connections: the shard is at --connections-per-shard-max \
                     (counted in shardlog_connections_closed_total, reason refused)"
                );
            }
            drop(stream);
            continue;
        }
        glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
    }
}
