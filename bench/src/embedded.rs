//! `--embedded`: a shardlog-server on a temporary directory and free ports.
//!
//! The broker is a child process, not threads of the bench: its CPU time
//! and memory are its own, read from its `/metrics`, and never mixed with
//! the load generator's.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A broker started for one run; stopped (SIGTERM) when dropped.
pub struct EmbeddedBroker {
    child: Child,
    /// Its address.
    pub addr: String,
    /// Its metrics endpoint.
    pub metrics_addr: String,
    _data_dir: tempfile::TempDir,
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

fn free_port_range(count: u16) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = probe.local_addr()?.port();
        drop(probe);
        if base < 60_000
            && (1..=count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return Ok(base);
        }
    }
    anyhow::bail!("no free range of {count} ports on 127.0.0.1")
}

impl EmbeddedBroker {
    /// Starts a broker and waits until it listens.
    ///
    /// # Errors
    /// The binary is missing or the broker did not start.
    pub fn start(config: &crate::config::BenchConfig) -> anyhow::Result<EmbeddedBroker> {
        let (shards, flush) = (config.shards, config.flush.as_str());
        let data_dir = tempfile::tempdir_in(std::env::current_dir()?)?;
        let shard_count =
            shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let base = free_port_range(shard_count as u16 + 2)?;
        let addr = format!("127.0.0.1:{base}");
        let metrics_addr = format!("127.0.0.1:{}", base + shard_count as u16 + 1);
        let mut child = Command::new(server_binary()?)
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen", &addr, "--metrics-listen", &metrics_addr])
            .args([
                "--shards",
                &shard_count.to_string(),
                "--flush",
                flush,
                "--log-level",
                "warn",
            ])
            .args(config.segment_bytes.map(|b| format!("--segment-bytes={b}")))
            .args(config.cache_bytes.map(|b| format!("--cache-bytes={b}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("listening on") => Ok(EmbeddedBroker {
                child,
                addr,
                metrics_addr,
                _data_dir: data_dir,
            }),
            _ => {
                let _ = child.kill();
                anyhow::bail!("the embedded broker did not start")
            }
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
