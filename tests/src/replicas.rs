//! Helpers for replication tests: clusters with quick failover, the
//! leadership a live broker reports, single-record produces, and reading a
//! partition whole.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{NewTopic, PartitionLeadership, Request, Response};
use shardlog_client::{Acks, ClientConfig, Consumer, ConsumerConfig, Offset};

use crate::cluster::{eventually, Cluster};
use crate::runtime;

/// Brokers fence a silent peer quickly, and followers leave the ISR soon,
/// so a test's failovers take seconds.
pub const FAST_FAILOVER: &[&str] = &[
    "--broker-session-timeout-ms",
    "2000",
    "--replica-lag-time-max-ms",
    "6000",
];

/// How long a probe of one broker's metadata may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The partition's leadership in the newest metadata any live broker of
/// `cluster` answers with. Every broker is asked (at once): a broker just
/// healed from a cut still answers from the metadata it had before the cut
/// until it catches up, and the first answer could be that stale one.
pub fn leadership(cluster: &Cluster, topic: &str, partition: u32) -> Option<PartitionLeadership> {
    let answers: Vec<Option<(u64, PartitionLeadership)>> = std::thread::scope(|scope| {
        let probes: Vec<_> = cluster
            .brokers
            .iter()
            .map(|broker| scope.spawn(move || probe(broker.addr, topic, partition)))
            .collect();
        probes
            .into_iter()
            .map(|probe| probe.join().ok().flatten())
            .collect()
    });
    answers
        .into_iter()
        .flatten()
        .max_by_key(|(revision, _)| *revision)
        .map(|(_, leadership)| leadership)
}

/// One broker's metadata revision and the partition's leadership in it;
/// `None` when it does not answer (stopped: refused; cut off: bounded waits).
fn probe(
    addr: std::net::SocketAddr,
    topic: &str,
    partition: u32,
) -> Option<(u64, PartitionLeadership)> {
    let mut connection = Connection::connect_timeout(addr, PROBE_TIMEOUT).ok()?;
    connection.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let Ok(Response::Metadata(described)) =
        connection.call(&Request::Metadata(vec![topic.to_string()]))
    else {
        return None;
    };
    let found = described
        .topics
        .iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.leadership.get(partition as usize).cloned())?;
    Some((described.metadata_revision, found))
}

pub fn create_replicated(cluster: &Cluster, topic: &str, partitions: u32, min_insync: u16) {
    create_replicated_topic(
        cluster,
        NewTopic {
            replication_factor: Some(3),
            min_insync_replicas: Some(min_insync),
            ..NewTopic::new(topic, partitions)
        },
    );
}

/// Creates `new` and waits until every partition's leader serves it.
pub fn create_replicated_topic(cluster: &Cluster, new: NewTopic) {
    let (topic, partitions) = (new.name.clone(), new.partitions);
    let topic = topic.as_str();
    let mut admin = Connection::connect(cluster.brokers[0].addr).expect("connect");
    let request = Request::CreateTopics(vec![new]);
    match admin.call(&request).expect("create topics") {
        Response::Topics(results) => {
            assert!(results.iter().all(|(_, e)| e.is_none()), "{results:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // Every partition's leader serves it (its owning shard applied the topic).
    for partition in 0..partitions {
        eventually(cluster, "every partition served by its leader", || {
            let Some(leader) = leadership(cluster, topic, partition).and_then(|l| l.leader) else {
                return false;
            };
            let Ok(mut connection) = Connection::connect_timeout(
                cluster.brokers[leader as usize - 1].addr,
                PROBE_TIMEOUT,
            ) else {
                return false;
            };
            let query = (
                topic.to_string(),
                partition,
                shardlog_client::protocol::OffsetSpec::Latest,
                0,
            );
            matches!(
                connection.call(&Request::ListOffsets(vec![query])),
                Ok(Response::ListOffsets(results)) if results.iter().all(|r| r.error.is_none())
            )
        });
    }
    // Every broker has applied it (a produce to one that has not yet would be refused).
    for broker in &cluster.brokers {
        let addr = broker.addr;
        eventually(cluster, "every broker knows the new topic", || {
            let Ok(mut connection) = Connection::connect(addr) else {
                return false;
            };
            let answer = connection.call(&Request::Metadata(vec![topic.to_string()]));
            matches!(answer, Ok(Response::Metadata(described)) if described
                .topics
                .iter()
                .any(|t| t.name == topic && t.error.is_none() && t.leadership.iter().all(|l| l.leader.is_some())))
        });
    }
}

pub fn bootstrap(cluster: &Cluster) -> String {
    cluster
        .brokers
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Every record of partition 0 of `topic` from offset 0 to the high watermark.
pub fn read_all(servers: &str, topic: &str) -> BTreeMap<u64, String> {
    runtime().block_on(async {
        let mut consumer = Consumer::new(ConsumerConfig {
            max_wait: Duration::from_millis(100),
            client: ClientConfig::new(servers),
            ..Default::default()
        });
        consumer.assign(topic, &[0], Offset::Earliest);
        let mut records = BTreeMap::new();
        let mut quiet_polls = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while quiet_polls < 10 && Instant::now() < deadline {
            match consumer.poll().await {
                Ok(polled) if polled.is_empty() => quiet_polls += 1,
                Ok(polled) => {
                    quiet_polls = 0;
                    for record in polled {
                        let value =
                            String::from_utf8_lossy(&record.value.unwrap_or_default()).to_string();
                        records.insert(record.offset, value);
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        records
    })
}

pub fn signal(broker: &crate::Broker, name: &str) {
    let pid = broker.pid().expect("a running broker");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// One produce of `value` to partition 0 over `connection`.
pub fn produce_one(
    connection: &mut Connection,
    topic: &str,
    value: &str,
    acks: Acks,
    timeout_ms: u32,
) -> shardlog_client::protocol::PartitionResult {
    let data = crate::batch(
        &[value.to_string()],
        shardlog_wire::batch::BatchBuilderOptions::default(),
    );
    let request = Request::Produce {
        acks,
        timeout_ms,
        partitions: vec![(topic.to_string(), 0, data)],
    };
    match connection.call(&request).expect("produce") {
        Response::Produce(mut results) => results.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn connect_to(cluster: &Cluster, broker: u32) -> Connection {
    Connection::connect(cluster.brokers[broker as usize - 1].addr).expect("connect")
}

/// The committed offset of partition 0 of `topic` for `group`, as the group's coordinator says.
pub fn committed(servers: &str, group: &str, topic: &str) -> Option<i64> {
    runtime().block_on(async {
        let admin = shardlog_client::Admin::new(ClientConfig::new(servers));
        let described = admin.describe_group(group).await.ok()?;
        described
            .offsets
            .iter()
            .find(|o| o.topic == topic && o.partition == 0)
            .map(|o| o.offset)
    })
}

/// The value of `name` for partition 0 of `topic` on broker `id`'s metrics.
pub fn metric(cluster: &Cluster, id: u32, name: &str, topic: &str) -> Option<u64> {
    let prefix = format!("{name}{{topic=\"{topic}\",partition=\"0\"");
    cluster.brokers[id as usize - 1]
        .scrape_metrics()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// [`produce_one`] with `acks=all`, tried again while the answer is a
/// retriable refusal (an ISR still settling on a loaded machine), for up to
/// [`crate::cluster::SETTLE_WAIT`].
pub fn produce_replicated(
    connection: &mut Connection,
    topic: &str,
    value: &str,
) -> shardlog_client::protocol::PartitionResult {
    let deadline = Instant::now() + crate::cluster::SETTLE_WAIT;
    loop {
        let result = produce_one(connection, topic, value, Acks::All, 10_000);
        let retry = result.error.as_ref().is_some_and(|e| {
            e.code == shardlog_client::ErrorCode::NotEnoughReplicas
                || e.code == shardlog_client::ErrorCode::RequestTimedOut
        });
        if !retry || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An idempotent `acks=all` producer writing `0, 1, 2, …` to partition 0
/// of a topic on its own thread, `in_flight` records at a time, until
/// [`LoadProducer::finish`].
pub struct LoadProducer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked_count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<LoadOutcome>,
}

/// What a [`LoadProducer`] saw: each acknowledged value with its offset,
/// and each failure.
pub struct LoadOutcome {
    /// (value, offset), in the order sent.
    pub acked: Vec<(u64, u64)>,
    /// (value, error) of every record that failed.
    pub errors: Vec<(u64, String)>,
}

impl LoadProducer {
    /// Starts producing to `topic` through the bootstrap list `servers`.
    pub fn start(servers: &str, topic: &str, in_flight: usize) -> LoadProducer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (servers, topic) = (servers.to_string(), topic.to_string());
        let (stopping, counting) = (stop.clone(), acked_count.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let producer = shardlog_client::Producer::new(shardlog_client::ProducerConfig {
                    acks: Acks::All,
                    idempotent: true,
                    linger: Duration::from_millis(2),
                    delivery_timeout: Duration::from_secs(120),
                    client: ClientConfig::new(servers.as_str()),
                    ..Default::default()
                })
                .await
                .expect("producer");
                let mut outcome = LoadOutcome {
                    acked: Vec::new(),
                    errors: Vec::new(),
                };
                let mut next = 0u64;
                while !stopping.load(Ordering::SeqCst) {
                    let mut pending = Vec::with_capacity(in_flight);
                    for _ in 0..in_flight {
                        let record =
                            shardlog_client::ProducerRecord::new(topic.as_str(), next.to_string())
                                .partition(0);
                        pending.push((next, producer.enqueue(record).await.expect("enqueue")));
                        next += 1;
                    }
                    for (value, delivery) in pending {
                        match delivery.await {
                            Ok(meta) => {
                                let offset = meta.offset.expect("acks=all has an offset");
                                outcome.acked.push((value, offset));
                                counting.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(error) => outcome.errors.push((value, error.to_string())),
                        }
                    }
                }
                outcome
            })
        });
        LoadProducer {
            stop,
            acked_count,
            thread,
        }
    }

    /// Waits (bounded) until `more` records beyond those acknowledged now are.
    pub fn wait_acks(&self, cluster: &Cluster, more: u64) {
        use std::sync::atomic::Ordering;
        let target = self.acked_count.load(Ordering::SeqCst) + more;
        eventually(cluster, "acknowledgements continue", || {
            self.acked_count.load(Ordering::SeqCst) >= target
        });
    }

    /// Stops after the records in flight and returns what it saw.
    pub fn finish(self) -> LoadOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the producer thread")
    }
}

/// The values of partition 0 of `topic`, in offset order, read through every broker of `cluster`.
pub fn values(cluster: &Cluster, topic: &str) -> Vec<String> {
    read_all(&bootstrap(cluster), topic).into_values().collect()
}

/// The replicas of a partition other than its leader.
pub fn followers(leadership: &PartitionLeadership) -> Vec<u32> {
    let leader = leadership.leader;
    let others = leadership.replicas.iter().copied();
    others.filter(|b| Some(*b) != leader).collect()
}
