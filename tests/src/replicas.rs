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

/// The partition's leadership as a live broker of `cluster` answers it.
pub fn leadership(cluster: &Cluster, topic: &str, partition: u32) -> Option<PartitionLeadership> {
    // A stopped broker refuses the connection.
    for broker in &cluster.brokers {
        // A broker behind a cut link neither answers nor refuses: bounded waits.
        let Ok(mut connection) = Connection::connect_timeout(broker.addr, PROBE_TIMEOUT) else {
            continue;
        };
        if connection.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
            continue;
        }
        let Ok(Response::Metadata(described)) =
            connection.call(&Request::Metadata(vec![topic.to_string()]))
        else {
            continue;
        };
        let found = described
            .topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.leadership.get(partition as usize).cloned());
        if found.is_some() {
            return found;
        }
    }
    None
}

pub fn create_replicated(cluster: &Cluster, topic: &str, partitions: u32, min_insync: u16) {
    let mut admin = Connection::connect(cluster.brokers[0].addr).expect("connect");
    let request = Request::CreateTopics(vec![NewTopic {
        replication_factor: Some(3),
        min_insync_replicas: Some(min_insync),
        ..NewTopic::new(topic, partitions)
    }]);
    match admin.call(&request).expect("create topics") {
        Response::Topics(results) => {
            assert!(results.iter().all(|(_, e)| e.is_none()), "{results:?}")
        }
        other => panic!("unexpected {other:?}"),
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
