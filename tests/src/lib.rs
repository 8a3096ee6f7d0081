//! Helpers for end-to-end tests: start a real `shardlog-server` on free
//! 127.0.0.1 ports with a temporary data directory, stop it, kill it,
//! restart it on the same data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Once};
use std::time::Duration;

use bytes::Bytes;
use shardlog_client::blocking::Connection;
use shardlog_client::protocol::{Acks, FetchPartition, NewTopic, Request, Response};
use shardlog_wire::batch::{BatchBuilder, BatchBuilderOptions, BatchIter, BatchLimits};

pub mod cluster;
pub mod netns;
pub mod replicas;

static BUILD: Once = Once::new();
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The path of a workspace binary, built once per test process.
pub fn binary(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "shardlog-server",
                "-p",
                "shardlog-client",
                "-p",
                "shardlog-bench",
                "--bins",
                // Inert unless a test sets SHARDLOG_FAULTS (disk failure tests).
                "--features",
                "shardlog-server/fault-injection",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug").join(name)
}

/// Ports for test brokers: 10,000..32,000, below Linux's ephemeral range
/// (32,768 and up), so that no client connection's own port (thousands of
/// them in TIME_WAIT after the hostile-crowd test) is ever one of ours.
fn next_port_base(shards: u16) -> u16 {
    const FIRST: u16 = 10_000;
    const LAST: u16 = 32_000;
    if NEXT_PORT.load(Ordering::SeqCst) == 0 {
        let seed = FIRST + (std::process::id() % 1_000) as u16 * 20;
        let _ = NEXT_PORT.compare_exchange(0, seed, Ordering::SeqCst, Ordering::SeqCst);
    }
    let base = NEXT_PORT.fetch_add(shards + 3, Ordering::SeqCst);
    if base > LAST {
        NEXT_PORT.store(FIRST, Ordering::SeqCst);
        return next_port_base(shards);
    }
    base
}

/// A port base for a broker with `shards` shards that must be known before
/// it starts (a cluster's `--peers`): the shared port, one per shard, metrics.
pub fn reserve_port(shards: u16) -> u16 {
    next_port_base(shards)
}

/// A running broker and its data directory.
pub struct Broker {
    child: Option<Child>,
    /// The shared listen address.
    pub addr: SocketAddr,
    /// The number of shards.
    pub shards: u16,
    /// The broker's data directory is `data_root/data`.
    data_root: PathBuf,
    /// Holds the log (and, unless the test gave one, the data root).
    _scratch: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Environment variables for the broker process.
    env: Vec<(String, String)>,
    /// The broker's stderr, kept for failing tests.
    pub log_path: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
}

impl Broker {
    /// Starts a broker with `shards` shards and extra flags.
    pub fn start(shards: u16, extra_args: &[&str]) -> Broker {
        let scratch = tempfile::tempdir().expect("temporary data directory");
        let data_root = scratch.path().to_path_buf();
        Broker::launch_new(data_root, scratch, shards, extra_args, &[])
    }

    /// Starts a broker with environment variables set (`SHARDLOG_FAULTS`, say).
    pub fn start_with_env(shards: u16, extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        let scratch = tempfile::tempdir().expect("temporary data directory");
        let data_root = scratch.path().to_path_buf();
        Broker::launch_new(data_root, scratch, shards, extra_args, env)
    }

    /// Starts a broker whose data lives in `data_root/data` (a test's own
    /// file system, say); its log stays in a temporary directory.
    pub fn start_in(data_root: &Path, shards: u16, extra_args: &[&str]) -> Broker {
        let scratch = tempfile::tempdir().expect("temporary directory");
        Broker::launch_new(data_root.to_path_buf(), scratch, shards, extra_args, &[])
    }

    /// Starts a broker on `port` (from [`reserve_port`]): it keeps that port
    /// across restarts, as a cluster's `--peers` needs.
    pub fn start_on(port: u16, shards: u16, extra_args: &[&str]) -> Broker {
        let scratch = tempfile::tempdir().expect("temporary data directory");
        let data_root = scratch.path().to_path_buf();
        let mut broker = Broker::unlaunched(data_root, scratch, shards, extra_args, &[]);
        broker.addr = SocketAddr::from(([127, 0, 0, 1], port));
        broker.launch();
        broker
    }

    fn launch_new(
        data_root: PathBuf,
        scratch: tempfile::TempDir,
        shards: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Broker {
        let mut broker = Broker::unlaunched(data_root, scratch, shards, extra_args, env);
        broker.launch();
        broker
    }

    fn unlaunched(
        data_root: PathBuf,
        scratch: tempfile::TempDir,
        shards: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Broker {
        let log_path = scratch.path().join("broker.log");
        Broker {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards,
            data_root,
            _scratch: scratch,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_path,
            netns: None,
        }
    }

    /// Starts a broker in network namespace `netns`, listening on
    /// `host:port` (from [`reserve_port`]), its port kept across restarts.
    pub fn start_in_netns(
        netns: &str,
        host: std::net::IpAddr,
        port: u16,
        shards: u16,
        extra_args: &[&str],
    ) -> Broker {
        let scratch = tempfile::tempdir().expect("temporary data directory");
        let data_root = scratch.path().to_path_buf();
        let mut broker = Broker::unlaunched(data_root, scratch, shards, extra_args, &[]);
        broker.addr = SocketAddr::new(host, port);
        broker.netns = Some(netns.to_string());
        broker.launch();
        broker
    }

    /// The directory holding the data directory `data` (it outlives restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_root
    }

    /// The address of shard `shard`'s own port.
    pub fn shard_addr(&self, shard: u16) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.addr.port() + 1 + shard)
    }

    fn launch(&mut self) {
        for attempt in 0..40 {
            // A restart tries the old port first, so clients can reconnect to the same address.
            let port = if self.addr.port() != 0 && attempt < 30 {
                self.addr.port()
            } else {
                next_port_base(self.shards)
            };
            let host = match self.addr.port() {
                0 => std::net::IpAddr::from([127, 0, 0, 1]),
                _ => self.addr.ip(),
            };
            let addr = SocketAddr::new(host, port);
            let metrics = SocketAddr::new(host, port + self.shards + 1);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("log file");
            let mut command = match &self.netns {
                // `ip netns exec` execs the broker: the child's pid is the broker's.
                Some(netns) => {
                    let mut command = Command::new("ip");
                    command
                        .args(["netns", "exec", netns])
                        .arg(binary("shardlog-server"));
                    command
                }
                None => Command::new(binary("shardlog-server")),
            };
            let mut child = command
                .arg("--data-dir")
                .arg(self.data_root.join("data"))
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--metrics-listen",
                    &metrics.to_string(),
                ])
                .args(["--shards", &self.shards.to_string()])
                .args(&self.extra_args)
                .env("RUST_LOG", "info")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn shardlog-server");
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let wait = if self.addr.port() != 0 {
                Duration::from_secs(20)
            } else {
                Duration::from_secs(60)
            };
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    let data_dir = self.data_root.join("data");
                    assert_eq!(
                        line,
                        format!(
                            "shardlog-server listening on {addr}, data in {}",
                            data_dir.display()
                        )
                    );
                    self.child = Some(child);
                    self.addr = addr;
                    return;
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    // Exit status 2 is a configuration error: no port will help.
                    if status.is_ok_and(|s| s.code() == Some(2)) {
                        panic!(
                            "the broker refused its configuration: {}",
                            std::fs::read_to_string(&self.log_path).unwrap_or_default()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "the broker did not start; its log: {}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        );
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let status = child.wait().expect("wait for the broker");
            assert!(
                status.success(),
                "the broker exited with {status} after SIGTERM"
            );
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the broker");
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.launch();
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's resident memory now and at its peak (VmRSS, VmHWM), in bytes.
    pub fn resident_bytes(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// How the process ended, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The Prometheus text of `/metrics`.
    pub fn scrape_metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = SocketAddr::new(self.addr.ip(), self.addr.port() + self.shards + 1);
        let mut stream =
            std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send the scrape");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the scrape");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    /// A connection to the shared port.
    pub fn connect(&self) -> Connection {
        let connection = Connection::connect(self.addr).expect("connect to the broker");
        connection
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        connection
    }

    /// A connection to a shard's own port.
    pub fn connect_shard(&self, shard: u16) -> Connection {
        let connection = Connection::connect(self.shard_addr(shard)).expect("connect to the shard");
        connection
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        connection
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates a topic and asserts it worked.
pub fn create_topic(connection: &mut Connection, name: &str, partitions: u32) {
    match connection
        .call(&Request::CreateTopics(vec![NewTopic::new(
            name, partitions,
        )]))
        .expect("create topic")
    {
        Response::Topics(results) => assert_eq!(results[0].1, None, "creating {name}"),
        other => panic!("unexpected {other:?}"),
    }
}

/// A batch of records whose values are the given strings.
pub fn batch(values: &[String], options: BatchBuilderOptions) -> Bytes {
    let mut builder = BatchBuilder::new(options);
    for value in values {
        builder
            .append(1_700_000_000_000, None, Some(value.as_bytes()), &[])
            .expect("append");
    }
    builder.finish().expect("finish").freeze()
}

/// A batch of `values` from idempotent producer `producer_id` (epoch 0),
/// its first record at `base_sequence`.
pub fn idempotent_batch(producer_id: i64, base_sequence: i32, values: &[String]) -> Bytes {
    let options = BatchBuilderOptions {
        producer_id,
        producer_epoch: 0,
        base_sequence,
        ..BatchBuilderOptions::default()
    };
    batch(values, options)
}

/// A new idempotent producer id.
pub fn init_producer(connection: &mut Connection) -> i64 {
    let request = Request::InitProducer {
        producer_id: -1,
        producer_epoch: -1,
    };
    match connection.call(&request).expect("init producer") {
        Response::InitProducer { producer_id, .. } => producer_id,
        other => panic!("unexpected {other:?}"),
    }
}

/// Produces one batch of `values` and returns its base offset.
pub fn produce(connection: &mut Connection, topic: &str, partition: u32, values: &[String]) -> i64 {
    let data = batch(values, BatchBuilderOptions::default());
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 30_000,
        partitions: vec![(topic.into(), partition, data)],
    };
    match connection.call(&request).expect("produce") {
        Response::Produce(results) => {
            assert_eq!(results[0].error, None, "produce to {topic}/{partition}");
            results[0].offset
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Reads every record of a partition from `offset` to its high watermark: (offset, value).
pub fn consume_all(
    connection: &mut Connection,
    topic: &str,
    partition: u32,
    mut offset: u64,
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let patience = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let request = Request::Fetch {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 4 << 20,
            partitions: vec![FetchPartition {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 1 << 20,
            }],
        };
        let fetched = match connection.call(&request).expect("fetch") {
            Response::Fetch(mut partitions) => partitions.remove(0),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(fetched.error, None, "fetch {topic}/{partition} at {offset}");
        if fetched.records.is_empty() {
            if offset == fetched.high_watermark as u64 {
                return out;
            }
            // Below the end, an empty answer means the broker had no memory
            // free for it just then (its budgets push back): ask again.
            assert!(
                std::time::Instant::now() < patience,
                "fetches of {topic}/{partition} at {offset} stayed empty below the high watermark {}",
                fetched.high_watermark
            );
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for batch in BatchIter::new(fetched.records, BatchLimits::default()) {
            let batch = batch.expect("a valid batch");
            for record in batch.records().expect("uncompressed") {
                let record = record.expect("a valid record");
                if record.offset >= offset {
                    out.push((
                        record.offset,
                        String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8"),
                    ));
                }
            }
            offset = batch.header().next_offset();
        }
    }
}

/// A client configuration pointing at `broker`.
pub fn client_config(broker: &Broker) -> shardlog_client::ClientConfig {
    shardlog_client::ClientConfig::new(broker.addr.to_string())
}

/// Raises this process's RLIMIT_NOFILE to its hard limit (tests that open
/// thousands of connections) and returns the limit now in force.
pub fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// A tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Writes one request `frame` to `stream` and reads the answer's whole
/// frame back; returns its flatbuffer (the payload after it is dropped).
pub fn exchange_frame(stream: &mut std::net::TcpStream, frame: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    stream.write_all(frame).expect("send");
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).expect("an answer");
    let frame_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let message_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    let mut rest = vec![0u8; frame_len - 4];
    stream.read_exact(&mut rest).expect("the whole answer");
    rest.truncate(message_len);
    rest
}
