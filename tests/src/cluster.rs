//! Helpers for cluster tests: brokers 1..=n started with `--node-id` and
//! `--peers` on ports chosen beforehand, and waits with a bound.

use std::time::{Duration, Instant};

use shardlog_client::protocol::{ClusterDescription, NewTopic, Request, Response};
use shardlog_client::BrokerError;

use crate::{reserve_port, Broker};

/// Shards of every cluster test broker.
pub const SHARDS: u16 = 2;
/// The longest a test waits for the group to elect, apply or spread a change.
pub const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Brokers 1..=n of one cluster, on 127.0.0.1.
pub struct Cluster {
    /// Broker `id` is `brokers[id - 1]`.
    pub brokers: Vec<Broker>,
}

impl Cluster {
    /// Starts brokers 1..=count, each listed in every `--peers`.
    pub fn start(count: u64) -> Cluster {
        Cluster::start_with(count, &[])
    }

    /// [`Cluster::start`] with more flags for every broker.
    pub fn start_with(count: u64, extra_args: &[&str]) -> Cluster {
        let local = |_: usize| std::net::IpAddr::from([127, 0, 0, 1]);
        Cluster::launch(count as usize, local, extra_args, |_, _, port, args| {
            Broker::start_on(port, SHARDS, args)
        })
    }

    /// Starts brokers 1..=count, broker `i` in namespace `i` of `lab` on
    /// its address there, each listed in every `--peers` by that address.
    pub fn start_in_lab(lab: &crate::netns::Lab, count: u8, extra_args: &[&str]) -> Cluster {
        let host = |i: usize| lab.address(i as u8 + 1);
        Cluster::launch(count.into(), host, extra_args, |i, host, port, args| {
            Broker::start_in_netns(&lab.namespace(i as u8 + 1), host, port, SHARDS, args)
        })
    }

    /// Brokers 1..=count on `host(i)` and reserved ports, all in every
    /// `--peers`, started by `start`; returns once all are alive
    /// (placement uses registered, alive brokers only).
    fn launch(
        count: usize,
        host: impl Fn(usize) -> std::net::IpAddr,
        extra_args: &[&str],
        start: impl Fn(usize, std::net::IpAddr, u16, &[&str]) -> Broker,
    ) -> Cluster {
        let ports: Vec<u16> = (0..count).map(|_| reserve_port(SHARDS)).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@{}:{port}", i + 1, host(i)))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let id = (i + 1).to_string();
                let mut args = vec!["--node-id", &id, "--peers", &peers];
                args.extend_from_slice(extra_args);
                start(i, host(i), *port, &args)
            })
            .collect();
        let cluster = Cluster { brokers };
        eventually(&cluster, "every broker registered and alive", || {
            describe(&cluster.brokers[0]).is_some_and(|d| {
                d.brokers.len() == cluster.brokers.len() && d.brokers.iter().all(|b| b.alive)
            })
        });
        cluster
    }

    /// Stops every broker (SIGTERM, a clean exit asserted).
    pub fn stop_all(&mut self) {
        for broker in &mut self.brokers {
            broker.stop();
        }
    }

    /// The broker with id `id` (1-based).
    pub fn broker(&mut self, id: u32) -> &mut Broker {
        &mut self.brokers[id as usize - 1]
    }

    pub fn logs(&self) -> String {
        // SHARDLOG_TEST_LOG_LINES shows more of each log when a failure needs it.
        let lines = std::env::var("SHARDLOG_TEST_LOG_LINES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(60);
        self.brokers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let log = std::fs::read_to_string(&b.log_path).unwrap_or_default();
                // openraft's replication retries would fill the whole tail.
                let quiet = |line: &&str| {
                    !line.contains("openraft::replication") && !line.contains("replication_handler")
                };
                let tail: Vec<&str> = log.lines().rev().filter(quiet).take(lines).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- broker {} ---\n{}", i + 1, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Prints a test's step with the wall-clock time the brokers' logs use
/// (UTC), so a failure's output lines the test's steps up with the logs.
pub fn step(what: &str) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds_of_day = since_epoch.as_secs() % 86_400;
    println!(
        "{:02}:{:02}:{:02}.{:03} test: {what}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        since_epoch.subsec_millis()
    );
}

/// Metadata from one broker, or `None` when it does not answer.
pub fn describe(broker: &Broker) -> Option<ClusterDescription> {
    let mut connection = shardlog_client::blocking::Connection::connect(broker.addr).ok()?;
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    match connection.call(&Request::Metadata(Vec::new())).ok()? {
        Response::Metadata(description) => Some(*description),
        _ => None,
    }
}

pub fn topics(broker: &Broker) -> Vec<String> {
    let mut names: Vec<String> = describe(broker)
        .map(|d| d.topics.into_iter().map(|t| t.name).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// [`topics`] without "refused": the create that timed out without a
/// majority may still commit once the group is whole again, when the
/// leader that appended it wins the next election (a timeout's answer says
/// so; Raft cannot withdraw an entry).
pub fn settled_topics(broker: &Broker) -> Vec<String> {
    let mut names = topics(broker);
    names.retain(|name| name != "refused");
    names
}

/// Creates a topic through `broker`: the broker's error, if any.
pub fn try_create(broker: &Broker, name: &str, partitions: u32) -> Result<(), BrokerError> {
    let mut connection =
        shardlog_client::blocking::Connection::connect(broker.addr).expect("connect");
    connection
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = Request::CreateTopics(vec![NewTopic::new(name, partitions)]);
    match connection.call(&request).expect("create topics") {
        Response::Topics(mut results) => results.pop().and_then(|(_, e)| e).map_or(Ok(()), Err),
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until `check` holds, or fails the test with `what` and the brokers' logs.
pub fn eventually(cluster: &Cluster, what: &str, mut check: impl FnMut() -> bool) {
    step(&format!("waiting for {what}"));
    let deadline = Instant::now() + SETTLE_WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {SETTLE_WAIT:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller that every running broker in `ids` names, once they agree.
pub fn agreed_controller(cluster: &Cluster, ids: &[u32]) -> Option<u32> {
    let named: Vec<Option<u32>> = ids
        .iter()
        .map(|id| describe(&cluster.brokers[*id as usize - 1]).and_then(|d| d.controller_id))
        .collect();
    let first = named.first().copied().flatten()?;
    named.iter().all(|n| *n == Some(first)).then_some(first)
}

/// Creates a topic through `broker`, retrying while the group cannot commit.
pub fn create_retrying(broker: &Broker, name: &str, partitions: u32) -> Result<(), BrokerError> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        match try_create(broker, name, partitions) {
            Err(error) if error.code.is_retriable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            outcome => return outcome,
        }
    }
}

/// Creates a topic through broker `id`, retrying while the group cannot commit.
pub fn create_when_ready(cluster: &Cluster, id: u32, name: &str, partitions: u32) {
    if let Err(error) = create_retrying(&cluster.brokers[id as usize - 1], name, partitions) {
        panic!("creating {name}: {error:?}\n{}", cluster.logs());
    }
}
