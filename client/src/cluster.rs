//! Metadata and connections: which shard owns each partition, and one
//! connection per shard port, shared by every user of a client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use crate::connection::Connection;
use crate::protocol::{Request, Response};
use crate::{BrokerError, Error, ErrorCode};

/// Settings shared by producers, consumers and admins.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Address of the broker (`host:port`) [default `127.0.0.1:7070`].
    pub broker: String,
    /// The longest one request may take before the connection is dropped [default 30 s].
    pub request_timeout: Duration,
    /// Requests in flight on one connection [default 64].
    pub max_in_flight_per_connection: usize,
    /// Send each partition's requests to the port of the shard owning it [default true].
    pub shard_aware: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            broker: "127.0.0.1:7070".into(),
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_connection: 64,
            shard_aware: true,
        }
    }
}

impl ClientConfig {
    /// The default configuration for a broker address.
    pub fn new(broker: impl Into<String>) -> ClientConfig {
        ClientConfig {
            broker: broker.into(),
            ..ClientConfig::default()
        }
    }
}

#[derive(Debug, Default)]
struct State {
    bootstrap: Option<SocketAddr>,
    host: Option<IpAddr>,
    shard_ports: Vec<u16>,
    topics: HashMap<String, Vec<u16>>,
    connections: HashMap<SocketAddr, Connection>,
}

/// The client's view of the broker.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub config: ClientConfig,
    state: Mutex<State>,
}

impl Cluster {
    pub fn new(config: ClientConfig) -> Cluster {
        Cluster {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn bootstrap_addr(&self) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.lock().bootstrap {
            return Ok(addr);
        }
        let mut addrs = tokio::net::lookup_host(&self.config.broker).await?;
        let addr = addrs.next().ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.config.broker),
            ))
        })?;
        self.lock().bootstrap = Some(addr);
        Ok(addr)
    }

    /// A live connection to `addr`, reusing the cached one.
    pub async fn connection(&self, addr: SocketAddr) -> Result<Connection, Error> {
        if let Some(connection) = self
            .lock()
            .connections
            .get(&addr)
            .filter(|c| !c.is_closed())
        {
            return Ok(connection.clone());
        }
        let connection = Connection::connect(
            addr,
            self.config.max_in_flight_per_connection,
            self.config.request_timeout,
        )
        .await?;
        // Another task may have connected meanwhile: everyone uses the first
        // one, so that one caller's requests never split over two connections.
        let mut state = self.lock();
        let open = state
            .connections
            .get(&addr)
            .filter(|c| !c.is_closed())
            .cloned();
        Ok(match open {
            Some(first) => first,
            None => {
                state.connections.insert(addr, connection.clone());
                connection
            }
        })
    }

    /// Sends a request to the bootstrap broker; an error response becomes [`Error::Broker`].
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        let addr = self.bootstrap_addr().await?;
        match self.connection(addr).await?.call(request).await? {
            Response::Error(error) => Err(Error::Broker(error)),
            response => Ok(response),
        }
    }

    /// Reloads the placement of `topics` (all topics when empty).
    pub async fn refresh(&self, topics: &[String]) -> Result<(), Error> {
        let Response::Metadata(cluster) = self.call(Request::Metadata(topics.to_vec())).await?
        else {
            return Err(Error::Protocol(
                "metadata answered with another response".into(),
            ));
        };
        let bootstrap = self.bootstrap_addr().await?;
        let mut state = self.lock();
        let host = cluster
            .host
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| !ip.is_unspecified());
        state.host = Some(host.unwrap_or(bootstrap.ip()));
        state.shard_ports = cluster.shard_ports;
        for topic in cluster.topics {
            match topic.error {
                None => {
                    state.topics.insert(topic.name, topic.partition_shards);
                }
                Some(_) => {
                    state.topics.remove(&topic.name);
                }
            }
        }
        Ok(())
    }

    /// The number of partitions of `topic`.
    ///
    /// # Errors
    /// [`Error::Broker`] with `UnknownTopicOrPartition` when it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, Error> {
        if let Some(shards) = self.lock().topics.get(topic) {
            return Ok(shards.len() as u32);
        }
        self.refresh(&[topic.to_string()]).await?;
        let count = self.lock().topics.get(topic).map(|s| s.len() as u32);
        count.ok_or_else(|| unknown_topic(topic))
    }

    /// The address to send `partition` of `topic`'s requests to.
    pub async fn route(&self, topic: &str, partition: u32) -> Result<SocketAddr, Error> {
        self.partition_count(topic).await?;
        let bootstrap = self.bootstrap_addr().await?;
        let state = self.lock();
        let shard = state
            .topics
            .get(topic)
            .and_then(|s| s.get(partition as usize))
            .copied();
        let Some(shard) = shard else {
            return Err(Error::Broker(BrokerError {
                code: ErrorCode::UnknownTopicOrPartition,
                message: format!("topic {topic:?} has no partition {partition}"),
            }));
        };
        match (
            self.config.shard_aware,
            state.host,
            state.shard_ports.get(usize::from(shard)),
        ) {
            (true, Some(host), Some(port)) => Ok(SocketAddr::new(host, *port)),
            _ => Ok(bootstrap),
        }
    }

    /// Forgets the placement of `topic` (after an error that says it moved or vanished).
    pub fn forget(&self, topic: &str) {
        self.lock().topics.remove(topic);
    }
}

pub(crate) fn unknown_topic(topic: &str) -> Error {
    Error::Broker(BrokerError {
        code: ErrorCode::UnknownTopicOrPartition,
        message: format!("topic {topic:?} does not exist; create it first"),
    })
}
