//! Listeners and connections.
//!
//! Every shard accepts on the shared port (SO_REUSEPORT: the kernel spreads
//! connections over the shards) and on its own port, `port + 1 + shard`, for
//! clients that know which shard owns a partition.

mod connection;
mod sendfile;

use std::net::SocketAddr;
use std::rc::Rc;

use glommio::net::TcpListener;

use crate::shard::ShardState;
use crate::{Error, Result};

pub use connection::{Outgoing, PayloadPart};

/// Binds a listener (glommio sets SO_REUSEPORT, so every shard can bind the shared port).
///
/// # Errors
/// The address is taken or not local.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| Error::io("binding", addr.to_string(), std::io::Error::from(e)))
}

/// Accepts connections until the shard shuts down; each runs as its own task.
pub async fn accept_loop(shard: Rc<ShardState>, listener: TcpListener) {
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
        if shard.connections.get() >= shard.config.connections_per_shard_max {
            tracing::warn!(
                limit = shard.config.connections_per_shard_max,
                "refusing a connection: the shard is at its limit"
            );
            drop(stream);
            continue;
        }
        glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
    }
}
