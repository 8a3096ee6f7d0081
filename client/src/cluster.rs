//! Metadata and connections: which shard owns each partition, and one
//! connection per shard port, shared by every user of a client.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use crate::connection::Connection;
use crate::protocol::{OffsetSpec, PartitionResult, Request, Response};
use crate::{BrokerError, Error, ErrorCode};
use shardlog_wire::offsets::{offsets_partition, OFFSETS_TOPIC};

/// Pause between tries of a group request while its coordinator moves.
pub const COORDINATOR_RETRY_BACKOFF_MS: u64 = 100;

/// Settings shared by producers, consumers and admins.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Address of the broker (`host:port`), or several separated by commas:
    /// any one that answers is enough [default `127.0.0.1:7070`].
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
    /// Each partition's (leader broker, shard), by topic.
    topics: HashMap<String, Vec<(Option<u32>, u16)>>,
    /// The other brokers of a cluster: id → (shared port address, shard ports).
    brokers: HashMap<u32, (SocketAddr, Vec<u16>)>,
    /// The broker the bootstrap address reaches.
    answered_by: u32,
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

    /// The first address of `config.broker` (a comma-separated list) that
    /// takes a connection; kept until a call to it fails.
    async fn bootstrap_addr(&self) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.lock().bootstrap {
            return Ok(addr);
        }
        let mut last_error = None;
        let brokers = self.config.broker.split(',').map(str::trim);
        for broker in brokers.filter(|b| !b.is_empty()) {
            let addrs = match tokio::net::lookup_host(broker).await {
                Ok(addrs) => addrs,
                Err(error) => {
                    last_error = Some(Error::Io(error));
                    continue;
                }
            };
            for addr in addrs {
                match self.connection(addr).await {
                    Ok(_) => {
                        self.lock().bootstrap = Some(addr);
                        return Ok(addr);
                    }
                    Err(error) => last_error = Some(error),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{:?} names no reachable broker", self.config.broker),
            ))
        }))
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
        let answer = match self.connection(addr).await {
            Ok(connection) => connection.call(request).await,
            Err(error) => Err(error),
        };
        if let Err(Error::Io(_)) = &answer {
            // The next call looks for a broker that answers, from the first address.
            self.lock().bootstrap = None;
        }
        match answer? {
            Response::Error(error) => Err(Error::Broker(error)),
            response => Ok(response),
        }
    }

    /// Sends a group request to the group's coordinator: the leader (its
    /// owning shard) of the group's `__offsets` partition, computed from the
    /// group id as the broker does. While the coordinator moves (a
    /// failover) or is not ready, the request is tried again, with fresh
    /// metadata, for up to `request_timeout`.
    ///
    /// # Errors
    /// As [`Cluster::call`], once retrying ran out or for a final error.
    pub async fn call_coordinator(
        &self,
        group_id: &str,
        request: Request,
    ) -> Result<Response, Error> {
        let deadline = std::time::Instant::now() + self.config.request_timeout;
        loop {
            let answer = self.call_coordinator_once(group_id, request.clone()).await;
            let retry = match &answer {
                Err(Error::Io(_)) => true,
                Err(Error::Broker(error)) => matches!(
                    error.code,
                    ErrorCode::NotLeader
                        | ErrorCode::ShuttingDown
                        | ErrorCode::NotEnoughReplicas
                        | ErrorCode::RequestTimedOut
                        | ErrorCode::ControllerUnavailable
                ),
                _ => false,
            };
            let backoff = std::time::Duration::from_millis(COORDINATOR_RETRY_BACKOFF_MS);
            if !retry || std::time::Instant::now() + backoff >= deadline {
                return answer;
            }
            self.forget(OFFSETS_TOPIC);
            tokio::time::sleep(backoff).await;
        }
    }

    async fn call_coordinator_once(
        &self,
        group_id: &str,
        request: Request,
    ) -> Result<Response, Error> {
        let Ok(addr) = self.route(OFFSETS_TOPIC, offsets_partition(group_id)).await else {
            // No `__offsets` placement known (yet): any broker answers, or says to retry.
            return self.call(request).await;
        };
        match self.connection(addr).await?.call(request).await? {
            Response::Error(error) => Err(Error::Broker(error)),
            response => Ok(response),
        }
    }

    /// ListOffsets, each query sent to its partition's leader (its owning
    /// shard); one result per query, in the order of the queries.
    pub async fn list_offsets(
        &self,
        queries: Vec<(String, u32, OffsetSpec, i64)>,
    ) -> Result<Vec<PartitionResult>, Error> {
        let count = queries.len();
        let mut by_addr: BTreeMap<SocketAddr, (Vec<usize>, Vec<_>)> = BTreeMap::new();
        for (index, query) in queries.into_iter().enumerate() {
            let addr = self.route(&query.0, query.1).await?;
            let (indexes, queries) = by_addr.entry(addr).or_default();
            indexes.push(index);
            queries.push(query);
        }
        let mismatch = || Error::Protocol("list offsets answered with another response".into());
        let mut results: Vec<Option<PartitionResult>> = vec![None; count];
        for (addr, (indexes, queries)) in by_addr {
            let topics: Vec<String> = queries.iter().map(|q| q.0.clone()).collect();
            let answer = match self.connection(addr).await {
                Ok(connection) => connection.call(Request::ListOffsets(queries)).await,
                Err(error) => Err(error),
            };
            if let Err(Error::Io(_)) = &answer {
                // The leader may be gone: the next call asks where the
                // partitions are now (a failed lookup keeps what is known).
                let _ = self.refresh(&topics).await;
            }
            let answers = match answer? {
                Response::ListOffsets(answers) if answers.len() == indexes.len() => answers,
                Response::Error(error) => return Err(Error::Broker(error)),
                _ => return Err(mismatch()),
            };
            for (index, answer) in indexes.into_iter().zip(answers) {
                results[index] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(mismatch))
            .collect()
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
        let mut brokers = HashMap::new();
        for broker in cluster
            .brokers
            .iter()
            .filter(|b| b.id != cluster.answered_by)
        {
            let resolved = tokio::net::lookup_host((broker.host.as_str(), broker.port)).await;
            if let Some(addr) = resolved.ok().and_then(|mut addrs| addrs.next()) {
                brokers.insert(broker.id, (addr, broker.shard_ports.clone()));
            }
        }
        let mut state = self.lock();
        let host = cluster
            .host
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| !ip.is_unspecified());
        state.host = Some(host.unwrap_or(bootstrap.ip()));
        state.shard_ports = cluster.shard_ports;
        state.brokers = brokers;
        state.answered_by = cluster.answered_by;
        for topic in cluster.topics {
            match topic.error {
                None => {
                    let placed = topic.partition_shards.iter().enumerate().map(|(p, shard)| {
                        let leader = topic.leadership.get(p).and_then(|l| l.leader);
                        (leader, *shard)
                    });
                    state.topics.insert(topic.name, placed.collect());
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

    /// The address to send `partition` of `topic`'s requests to: the
    /// owning shard's port of the partition's leader broker.
    pub async fn route(&self, topic: &str, partition: u32) -> Result<SocketAddr, Error> {
        self.partition_count(topic).await?;
        let bootstrap = self.bootstrap_addr().await?;
        let state = self.lock();
        let placed = state
            .topics
            .get(topic)
            .and_then(|s| s.get(partition as usize))
            .copied();
        let Some((leader, shard)) = placed else {
            return Err(Error::Broker(BrokerError {
                code: ErrorCode::UnknownTopicOrPartition,
                message: format!("topic {topic:?} has no partition {partition}"),
            }));
        };
        // Led by another broker of the cluster: its shard's port, or its shared port.
        if let Some((addr, shard_ports)) = leader.and_then(|l| state.brokers.get(&l)) {
            let port = shard_ports
                .get(usize::from(shard))
                .filter(|_| self.config.shard_aware);
            return Ok(port.map_or(*addr, |port| SocketAddr::new(addr.ip(), *port)));
        }
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
