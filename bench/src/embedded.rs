//! `--embedded`: shardlog-servers on temporary directories and free ports.
//!
//! Each broker is a child process, not threads of the bench: its CPU time
//! and memory are its own, read from its `/metrics`, and never mixed with
//! the load generator's.
//!
//! `--brokers 1` (the default) is a one-node broker, without `--peers`.
//! `--brokers N` starts N brokers as one cluster: broker `i` has
//! `--node-id i` and every broker's `--peers` names all N at their
//! `--listen` addresses. Their ports come from one free range, broker after
//! broker: the shared port, one per shard, then the metrics port. The run
//! starts once every broker is registered and alive and the internal
//! `__offsets` topic exists, so that its topics are placed on all of them.
//!
//! A one-node broker's stderr is the bench's. A cluster's brokers' lines
//! are passed on with their node id while the run goes on; what they log
//! while the cluster forms (votes to peers not started yet) is held and
//! shown only if it does not form, and what they log once asked to stop
//! (peers that went first) is dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{ClusterDescription, Request, Response};

/// The longest a broker may take to print that it listens.
const LISTENING_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a cluster may take to register every broker and create `__offsets`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between looks at the cluster's metadata while it forms.
const CLUSTER_POLL: Duration = Duration::from_millis(100);
/// The longest one metadata request may take while the cluster forms.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a broker may take to exit after SIGTERM before it is killed
/// (a clustered broker's controlled shutdown takes at most 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The internal topic a cluster creates once every voter is alive.
const OFFSETS_TOPIC: &str = "__offsets";
/// The most stderr lines held while a cluster forms (the last ones are kept).
const HELD_LINES_MAX: usize = 200;

/// One broker process of an [`EmbeddedCluster`].
pub struct EmbeddedBroker {
    child: Child,
    /// Its `--node-id` (0 for a one-node broker).
    pub node_id: u32,
    /// Its address.
    pub addr: String,
    /// Its metrics endpoint.
    pub metrics_addr: String,
    _data_dir: tempfile::TempDir,
}

/// The brokers started for one run; stopped (SIGTERM, then waited for) when dropped.
pub struct EmbeddedCluster {
    /// Broker `i` (1-based) of a cluster is `brokers[i - 1]`.
    pub brokers: Vec<EmbeddedBroker>,
    /// Where a cluster's brokers' stderr goes.
    stderr: Arc<StderrGate>,
}

/// A cluster's brokers' stderr: passed on, held, or dropped.
#[derive(Debug, Default)]
struct StderrGate {
    /// Lines are passed on to the bench's stderr.
    open: AtomicBool,
    /// Lines are dropped (the brokers were asked to stop).
    closed: AtomicBool,
    /// Lines from before the gate opened, the last [`HELD_LINES_MAX`].
    held: Mutex<VecDeque<String>>,
}

impl StderrGate {
    fn line(&self, node_id: u32, line: &str) {
        let line = format!("broker {node_id}: {line}");
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        if self.open.load(Ordering::SeqCst) {
            eprintln!("{line}");
            return;
        }
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.len() == HELD_LINES_MAX {
            held.pop_front();
        }
        held.push_back(line);
    }

    /// From now on lines are passed on; the held ones are dropped.
    fn open(&self) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.clear();
        self.open.store(true, Ordering::SeqCst);
    }

    /// Shows the held lines: the cluster did not form, they may say why.
    fn show_held(&self) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in held.iter() {
            eprintln!("{line}");
        }
    }
}

fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.parent().map(|d| d.join("shardlog-server"));
    let candidates = [
        beside.clone(),
        beside.and_then(|p| p.parent().map(|d| d.join("shardlog-server"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("shardlog-server not found next to shardlog-bench; build it: cargo build --release --bin shardlog-server"))
}

/// A base port with the `count` ports after it free on 127.0.0.1, outside
/// the kernel's ephemeral range: client connections take their local ports
/// from that range and leave them in TIME_WAIT, where a new listener cannot
/// bind, and a busy machine (or a test suite) holds thousands of them.
fn free_port_range(count: u16) -> anyhow::Result<u16> {
    let (low, high) = ephemeral_ports();
    let count32 = u32::from(count);
    // Above the ephemeral range if it leaves room, else below it.
    let (first, last) = if 65_535 - u32::from(high) > count32 * 8 {
        (u32::from(high) + 1, 65_535 - count32)
    } else {
        (1_024, u32::from(low).saturating_sub(count32 + 1))
    };
    anyhow::ensure!(
        last > first,
        "no ports outside the ephemeral range {low}-{high} (net.ipv4.ip_local_port_range)"
    );
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    for _ in 0..FREE_PORT_ATTEMPTS {
        // A linear congruential step: spread, not secret.
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let base = first + (seed >> 8) % (last - first);
        let base = u16::try_from(base)?;
        if (0..=count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no free range of {count} ports on 127.0.0.1")
}

/// How many random port ranges [`free_port_range`] tries.
const FREE_PORT_ATTEMPTS: usize = 200;

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_ports() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

/// Ports of one broker: the shared one (`--listen`), then one per shard, then metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerPorts {
    /// `--listen`'s port; shard `i` accepts on `listen + 1 + i`.
    pub listen: u16,
    /// `--metrics-listen`'s port, past the shards' ports.
    pub metrics: u16,
}

/// The ports of `brokers` brokers of `shards` shards each, from one range
/// starting at `base`: each broker takes `shards + 2` ports.
pub fn broker_ports(base: u16, brokers: u16, shards: u16) -> Vec<BrokerPorts> {
    (0..brokers)
        .map(|i| {
            let listen = base + i * (shards + 2);
            BrokerPorts {
                listen,
                metrics: listen + shards + 1,
            }
        })
        .collect()
}

/// `--peers` of a cluster on 127.0.0.1: `1@127.0.0.1:P1,2@127.0.0.1:P2,...`.
pub fn peers_flag(ports: &[BrokerPorts]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.listen))
        .collect::<Vec<_>>()
        .join(",")
}

impl EmbeddedCluster {
    /// Starts `--brokers` brokers and waits until each listens; a cluster,
    /// also until every broker is registered and alive and `__offsets`
    /// exists.
    ///
    /// # Errors
    /// The binary is missing, a broker did not start, or the cluster did not form.
    pub fn start(config: &crate::config::BenchConfig) -> anyhow::Result<EmbeddedCluster> {
        let binary = server_binary()?;
        let shard_count = config
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let shards = u16::try_from(shard_count)
            .map_err(|_| anyhow::anyhow!("--shards {shard_count} is too many"))?;
        let count = u16::try_from(config.brokers)
            .map_err(|_| anyhow::anyhow!("--brokers {} is too many", config.brokers))?;
        let range = count.checked_mul(shards + 2).ok_or_else(|| {
            anyhow::anyhow!("{count} brokers of {shards} shards need too many ports")
        })?;
        let ports = broker_ports(free_port_range(range)?, count, shards);
        let peers = (count > 1).then(|| peers_flag(&ports));
        let mut cluster = EmbeddedCluster {
            brokers: Vec::with_capacity(ports.len()),
            stderr: Arc::default(),
        };
        let mut listening = Vec::with_capacity(ports.len());
        for (i, p) in ports.iter().enumerate() {
            let node_id = if peers.is_some() { i as u32 + 1 } else { 0 };
            let member = peers
                .as_deref()
                .map(|peers| (peers, cluster.stderr.clone()));
            match spawn(&binary, config, shard_count, *p, node_id, member) {
                Ok((broker, lines)) => {
                    cluster.brokers.push(broker);
                    listening.push(lines);
                }
                Err(error) => {
                    cluster.kill();
                    return Err(error);
                }
            }
        }
        // Every broker of a cluster is started before any is waited for:
        // they need each other to elect a controller.
        for (broker, lines) in cluster.brokers.iter().zip(&listening) {
            match lines.recv_timeout(LISTENING_TIMEOUT) {
                Ok(line) if line.contains("listening on") => {}
                _ => {
                    let what = match broker.node_id {
                        0 => "the embedded broker".to_string(),
                        id => format!("embedded broker {id} ({})", broker.addr),
                    };
                    cluster.kill();
                    anyhow::bail!("{what} did not start")
                }
            }
        }
        if peers.is_some() {
            if let Err(error) = cluster.wait_until_formed() {
                cluster.kill();
                return Err(error);
            }
            cluster.stderr.open();
        }
        Ok(cluster)
    }

    /// The brokers' addresses, comma-separated: the client's bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every broker's metrics endpoint, in node-id order.
    pub fn metrics_addrs(&self) -> Vec<String> {
        self.brokers
            .iter()
            .map(|b| b.metrics_addr.clone())
            .collect()
    }

    /// Waits until the first broker's metadata lists every broker alive and
    /// `__offsets` exists.
    fn wait_until_formed(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let first = &self.brokers[0].addr;
        loop {
            let last = match cluster_state(first) {
                Ok(state) => {
                    let alive = state.brokers.iter().filter(|b| b.alive).count();
                    if alive == self.brokers.len() && state.offsets_exists {
                        return Ok(());
                    }
                    format!(
                        "{} of {} brokers registered, {alive} alive, {OFFSETS_TOPIC} {}",
                        state.brokers.len(),
                        self.brokers.len(),
                        if state.offsets_exists {
                            "created"
                        } else {
                            "missing"
                        }
                    )
                }
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the embedded cluster of {} brokers did not form within {CLUSTER_READY_TIMEOUT:?}: {last}",
                    self.brokers.len()
                );
            }
            std::thread::sleep(CLUSTER_POLL);
        }
    }

    /// SIGKILL to every broker, then reaps them, and shows what a
    /// cluster's brokers logged: for a start that failed.
    fn kill(&mut self) {
        for broker in &mut self.brokers {
            let _ = broker.child.kill();
        }
        for broker in &mut self.brokers {
            let _ = broker.child.wait();
        }
        self.brokers.clear();
        self.stderr.show_held();
    }
}

/// What [`wait_until_formed`](EmbeddedCluster::wait_until_formed) looks at.
struct ClusterState {
    brokers: Vec<shardlog_client::protocol::BrokerDescription>,
    offsets_exists: bool,
}

/// One broker's view of the cluster: its brokers, and whether `__offsets` exists.
fn cluster_state(addr: &str) -> anyhow::Result<ClusterState> {
    let mut connection = Connection::connect(addr)?;
    connection.set_read_timeout(Some(METADATA_TIMEOUT))?;
    let description = match connection.call(&Request::Metadata(vec![OFFSETS_TOPIC.to_string()]))? {
        Response::Metadata(description) => *description,
        other => anyhow::bail!("{addr} answered metadata with {other:?}"),
    };
    let ClusterDescription {
        brokers, topics, ..
    } = description;
    let offsets_exists = topics
        .iter()
        .any(|t| t.name == OFFSETS_TOPIC && t.error.is_none());
    Ok(ClusterState {
        brokers,
        offsets_exists,
    })
}

/// Starts one broker, a member of a cluster when given its `--peers` and
/// where its stderr goes; the receiver gets its stdout's lines.
fn spawn(
    binary: &std::path::Path,
    config: &crate::config::BenchConfig,
    shard_count: usize,
    ports: BrokerPorts,
    node_id: u32,
    member: Option<(&str, Arc<StderrGate>)>,
) -> anyhow::Result<(EmbeddedBroker, std::sync::mpsc::Receiver<String>)> {
    let data_dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let addr = format!("127.0.0.1:{}", ports.listen);
    let metrics_addr = format!("127.0.0.1:{}", ports.metrics);
    let mut command = Command::new(binary);
    command
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--listen", &addr, "--metrics-listen", &metrics_addr])
        .args([
            "--shards",
            &shard_count.to_string(),
            "--flush",
            config.flush.as_str(),
            "--log-level",
            config.broker_log_level.as_str(),
        ])
        .args(config.segment_bytes.map(|b| format!("--segment-bytes={b}")))
        .args(config.cache_bytes.map(|b| format!("--cache-bytes={b}")));
    let stderr = match &member {
        Some((peers, _)) => {
            command.args(["--node-id", &node_id.to_string(), "--peers", peers]);
            Stdio::piped()
        }
        None => Stdio::inherit(),
    };
    let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn()?;
    if let (Some((_, gate)), Some(stderr)) = (member, child.stderr.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                gate.line(node_id, &line);
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("no stdout");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((
        EmbeddedBroker {
            child,
            node_id,
            addr,
            metrics_addr,
            _data_dir: data_dir,
        },
        rx,
    ))
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        // What brokers log while their peers stop is not the run's.
        self.stderr.closed.store(true, Ordering::SeqCst);
        // Every broker is asked first, so that a cluster's controlled
        // shutdowns run side by side rather than one after another.
        for broker in &self.brokers {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(broker.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for broker in &mut self.brokers {
            while matches!(broker.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(broker.child.try_wait(), Ok(None)) {
                eprintln!(
                    "shardlog-bench: embedded broker at {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it",
                    broker.addr
                );
                let _ = broker.child.kill();
            }
            let _ = broker.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_stay_out_of_the_ephemeral_range_and_are_free() {
        let (low, high) = ephemeral_ports();
        assert!(low <= high);
        // A port this process holds as a client's local port, in TIME_WAIT
        // or not, comes from [low, high]: never hand out one of those.
        for _ in 0..20 {
            let base = free_port_range(9).unwrap();
            let ports = u32::from(base)..=u32::from(base) + 9;
            assert!(
                *ports.end() < u32::from(low) || *ports.start() > u32::from(high),
                "{ports:?} overlaps {low}-{high}"
            );
            let held = std::net::TcpListener::bind(("127.0.0.1", base)).unwrap();
            drop(held);
        }
    }

    #[test]
    fn a_forming_clusters_lines_are_held_then_passed_on_then_dropped() {
        let gate = StderrGate::default();
        for i in 0..HELD_LINES_MAX + 5 {
            gate.line(2, &format!("vote {i}"));
        }
        {
            let held = gate.held.lock().unwrap();
            assert_eq!(held.len(), HELD_LINES_MAX, "bounded");
            assert_eq!(held.front().map(String::as_str), Some("broker 2: vote 5"));
        }
        gate.open();
        assert!(gate.held.lock().unwrap().is_empty());
        gate.closed.store(true, Ordering::SeqCst);
        gate.line(1, "stopping");
        assert!(gate.held.lock().unwrap().is_empty(), "dropped once closed");
    }

    #[test]
    fn brokers_take_consecutive_ranges_of_ports() {
        // One broker: today's layout, shared port, shards, then metrics.
        assert_eq!(
            broker_ports(20_000, 1, 2),
            [BrokerPorts {
                listen: 20_000,
                metrics: 20_003
            }]
        );
        let three = broker_ports(20_000, 3, 2);
        assert_eq!(
            three
                .iter()
                .map(|p| (p.listen, p.metrics))
                .collect::<Vec<_>>(),
            [(20_000, 20_003), (20_004, 20_007), (20_008, 20_011)]
        );
        assert_eq!(
            peers_flag(&three),
            "1@127.0.0.1:20000,2@127.0.0.1:20004,3@127.0.0.1:20008"
        );
    }
}
