//! Starting and stopping the broker.
//!
//! ```text
//!  main thread: lock data dir ─► check its format ─► check node.json (node id, voters) ─► bind own ports
//!               ─► --peers? start the Raft thread (ClusterNode) : load metadata.json ─► spawn N shard threads
//!               ─► wait "ready" ×N ─► print listening line ─► wait for SIGINT/SIGTERM or a shard that died
//!               ─► stop the Raft thread ─► join the shards
//!  shard i:  join mesh ─► handshake ─► open own partitions ─► bind shared + own port
//!            shard 0 also: one node: create internal topics (opened on every shard), bind metrics ─► ready ─► serve
//!                          clustered: start the control tasks (shard/control.rs) ─► ready ─► serve
//!            on shutdown: stop accepting, let connections finish, close (flush + fsync) partitions
//! ```
//!
//! The listening line is printed only once every shard has opened every
//! partition it owns and, on a one-node broker, the internal topics exist.
//! A clustered broker is ready before its metadata group has a quorum (its
//! peers may not run yet): its topics arrive as the group applies them.
//! Anything that fails before that ends the process with one line naming
//! what failed; a shard that stops later, for any reason but a requested
//! shutdown, ends it too.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::identity::NodeIdentity;
use crate::cluster::raft::{ClusterHandle, ClusterNode, ClusterNodeConfig};
use crate::cluster::state::BrokerId;
use crate::cluster::transport::TcpTransport;
use crate::config::ServerConfig;
use crate::metadata::ClusterMetadata;
use crate::shard::{ProducerIds, ShardMessage, ShardState, MESH_CHANNEL_CAPACITY};
use crate::{net, Error, Result};

/// Registered I/O memory per shard: enough for several 4 MiB write rounds.
const IO_MEMORY_BYTES: usize = 64 << 20;
/// How often a shard looks at the process-wide stop flag.
const STOP_POLL_MS: u64 = 20;
/// The longest a shard waits for its connections to finish at shutdown.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How often the main thread looks for a stop request while shards run.
const MAIN_POLL_MS: u64 = 50;

/// What a shard thread tells the main thread.
enum ShardEvent {
    /// Every partition it owns is open and its listeners are bound.
    Ready,
    /// Start-up failed.
    Failed(Error),
    /// The shard's thread ended (normally only after a stop request).
    Exited(usize),
}

/// Sends [`ShardEvent::Exited`] when the shard thread ends, however it ends.
struct ExitNotice {
    shard: usize,
    events: mpsc::Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited(self.shard));
    }
}

/// Raises RLIMIT_NOFILE to its hard limit and returns the limit now in force.
pub fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    limit.rlim_cur
}

/// Runs a broker until SIGINT or SIGTERM; returns once every shard has
/// flushed and closed its partitions.
///
/// # Errors
/// A locked data directory, unreadable metadata, a partition that does not
/// open, a taken port, a shard that failed.
pub fn run(config: ServerConfig) -> Result<()> {
    assert!(config.data_dir.is_absolute(), "paths are resolved at start");
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::io("creating data directory", &config.data_dir, e))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    crate::metadata::check_data_format(&config.data_dir)?;
    crate::metadata::ensure_disk_reserve(&config.data_dir, config.limits.disk_reserve_bytes)?;
    let voters = config
        .peers
        .as_ref()
        .map(|peers| peers.keys().copied().collect())
        .unwrap_or_default();
    let identity = crate::cluster::identity::check(&config.data_dir, config.node_id, voters)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::io("installing signal handler", "", e))?;
    }
    let config = Arc::new(config);
    // The ports that are ours alone are bound first, so a second broker on
    // the same ports stops here before it binds the shared one.
    let mut listeners = (0..config.shards)
        .map(|id| net::bind_exclusive(SocketAddr::new(config.listen.ip(), config.shard_port(id))))
        .collect::<Result<Vec<_>>>()?;
    let mut metrics = Some(net::bind_exclusive(config.metrics_listen)?);
    let listeners = listeners
        .drain(..)
        .enumerate()
        .map(|(id, own)| OwnListeners {
            own,
            metrics: if id == 0 { metrics.take() } else { None },
        })
        .collect();
    let cluster = start_cluster(&config, identity)?;
    let metadata = match &cluster {
        Some(parts) => Arc::new(ClusterMetadata::from_cluster(
            &parts.handle.state(),
            BrokerId(config.node_id),
        )),
        None => Arc::new(ClusterMetadata::load(&config.data_dir)?),
    };
    let (events_tx, events) = mpsc::channel::<ShardEvent>();
    let proceed = Arc::new(AtomicBool::new(false));
    let flags = (stop.clone(), proceed.clone());
    let handles = spawn_shards(&config, &metadata, &flags, &events_tx, listeners, &cluster)?;
    drop(events_tx);
    for _ in 0..config.shards {
        match events.recv() {
            Ok(ShardEvent::Ready) => {}
            Ok(ShardEvent::Failed(error)) => return Err(error),
            Ok(ShardEvent::Exited(shard)) => {
                let message = "stopped during start-up".into();
                return Err(Error::Shard { shard, message });
            }
            Err(mpsc::RecvError) => {
                let message = "every shard stopped during start-up".into();
                return Err(Error::Shard { shard: 0, message });
            }
        }
    }
    println!(
        "shardlog-server listening on {}, data in {}",
        config.listen,
        config.data_dir.display()
    );
    tracing::info!(listen = %config.listen, shards = config.shards, data_dir = %config.data_dir.display(), metrics = %config.metrics_listen, "broker ready");
    // Then the controlled shutdown (shard 0, on a clustered broker), which
    // needs the metadata group still running.
    for flag in [&stop, &proceed] {
        if let Some(shard) = wait_for_stop(flag, &events) {
            let message = "stopped unexpectedly; the broker cannot serve its partitions".into();
            return Err(Error::Shard { shard, message });
        }
    }
    let mut outcome = Ok(());
    if let Some(parts) = &cluster {
        futures_lite::future::block_on(parts.handle.shutdown());
    }
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => outcome = outcome.and(Err(error)),
            Err(error) => {
                outcome = outcome.and(Err(Error::Config(format!(
                    "a shard thread failed: {error}"
                ))))
            }
        }
    }
    outcome
}

/// Waits for a stop request; returns the shard that ended first if one ended before it.
fn wait_for_stop(stop: &AtomicBool, events: &mpsc::Receiver<ShardEvent>) -> Option<usize> {
    while !stop.load(Ordering::SeqCst) {
        match events.recv_timeout(Duration::from_millis(MAIN_POLL_MS)) {
            Ok(ShardEvent::Exited(shard)) if !stop.load(Ordering::SeqCst) => return Some(shard),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
    None
}

type ShardHandle = glommio::ExecutorJoinHandle<Result<()>>;

/// A clustered broker's metadata node and what shard 0 needs to serve it.
#[derive(Clone)]
struct ClusterParts {
    handle: ClusterHandle,
    identity: NodeIdentity,
    /// Shared with the transport, which sends it with every request.
    cluster_id: Arc<OnceLock<String>>,
}

/// Starts the metadata group's node on its own thread, for a broker started with `--peers`.
fn start_cluster(config: &ServerConfig, identity: NodeIdentity) -> Result<Option<ClusterParts>> {
    let Some(peers) = &config.peers else {
        return Ok(None);
    };
    let cluster_id = Arc::new(OnceLock::new());
    if let Some(id) = &identity.cluster_id {
        let _ = cluster_id.set(id.clone());
    }
    let limits = shardlog_wire::protocol::ProtocolLimits {
        frame_bytes_max: config.limits.frame_bytes_max,
        ..Default::default()
    };
    let transport = TcpTransport::new(config.node_id, cluster_id.clone(), limits);
    let node_config = ClusterNodeConfig {
        broker_session_timeout_ms: config.broker_session_timeout_ms,
        ..ClusterNodeConfig::new(config.node_id, peers.clone(), config.data_dir.clone())
    };
    let handle = ClusterNode::start(node_config, Arc::new(transport))?;
    tracing::info!(node = config.node_id, voters = ?peers.keys(), "metadata node started");
    Ok(Some(ClusterParts {
        handle,
        identity,
        cluster_id,
    }))
}

/// The listeners a shard gets from the main thread.
struct OwnListeners {
    own: std::net::TcpListener,
    /// Shard 0 serves the metrics endpoint.
    metrics: Option<std::net::TcpListener>,
}

fn spawn_shards(
    config: &Arc<ServerConfig>,
    metadata: &Arc<ClusterMetadata>,
    stop: &StopFlags,
    events: &mpsc::Sender<ShardEvent>,
    listeners: Vec<OwnListeners>,
    cluster: &Option<ClusterParts>,
) -> Result<Vec<ShardHandle>> {
    let mesh = MeshBuilder::<ShardMessage, _>::full(config.shards, MESH_CHANNEL_CAPACITY);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(config.shards);
    for (id, listeners) in listeners.into_iter().enumerate() {
        let (config, metadata, mesh, events, stop, cluster) = (
            config.clone(),
            metadata.clone(),
            mesh.clone(),
            events.clone(),
            stop.clone(),
            cluster.clone(),
        );
        let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cores))
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let _notice = ExitNotice {
                    shard: id,
                    events: events.clone(),
                };
                let result = shard_main(
                    id, config, metadata, mesh, listeners, &events, stop, cluster,
                )
                .await;
                if let Err(error) = &result {
                    let message = error.to_string();
                    let _ = events.send(ShardEvent::Failed(Error::Shard { shard: id, message }));
                }
                result
            })
            .map_err(|e| Error::Config(format!("starting shard {id}: {e}")))?;
        handles.push(handle);
    }
    Ok(handles)
}

#[allow(clippy::too_many_arguments)]
async fn shard_main(
    id: usize,
    config: Arc<ServerConfig>,
    metadata: Arc<ClusterMetadata>,
    mesh: MeshBuilder<ShardMessage, glommio::channels::channel_mesh::Full>,
    listeners: OwnListeners,
    events: &mpsc::Sender<ShardEvent>,
    stop: StopFlags,
    cluster: Option<ClusterParts>,
) -> Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| Error::Config("joining the shard mesh failed".into()))?;
    let producer_ids = ProducerIds::load(&config.data_dir, broker_index(&config), id)?;
    let shard = ShardState::new(
        id,
        config.clone(),
        metadata.clone(),
        senders,
        receivers,
        producer_ids,
        cluster.as_ref().map(|parts| parts.handle.clone()),
        crate::handlers::serve_boxed,
    );
    shard.mesh.handshake().await;
    shard.apply_metadata(metadata).await?;
    crate::replication::after_metadata(&shard);
    crate::replication::start(&shard);
    match cluster {
        // A clustered broker is ready before its group has a quorum: the
        // topics, `__offsets` included, arrive as the group applies them.
        Some(parts) if id == 0 => {
            crate::shard::control::start(&shard, parts.identity, parts.cluster_id);
        }
        None if id == 0 => crate::handlers::admin::ensure_offsets_topic(&shard)
            .await
            .map_err(|e| Error::Config(format!("creating the offsets topic: {}", e.message)))?,
        _ => {}
    }
    let own = net::adopt(listeners.own);
    let shared = net::bind_shared(config.listen)?;
    if let Some(metrics) = listeners.metrics {
        glommio::spawn_local(net::serve_metrics(shard.clone(), net::adopt(metrics))).detach();
    }
    let _ = events.send(ShardEvent::Ready);
    glommio::spawn_local(watch_stop(shard.clone(), stop.0, stop.1)).detach();
    #[cfg(feature = "fault-injection")]
    panic_on_request(id);
    glommio::spawn_local(retention_loop(shard.clone())).detach();
    let expiring = shard.clone();
    glommio::spawn_local(async move {
        crate::groups::expiry_loop(expiring.groups(), &expiring.shutdown).await;
    })
    .detach();
    let accept_shared = glommio::spawn_local(net::accept_loop(shard.clone(), shared));
    let accept_own = glommio::spawn_local(net::accept_loop(shard.clone(), own));
    accept_shared.await;
    accept_own.await;
    drain_connections(&shard).await;
    shard.partitions.close_partitions().await;
    tracing::debug!(shard = id, "shard stopped");
    Ok(())
}

/// Test builds only: `SHARDLOG_PANIC_SHARD=<shard>:<after_ms>` makes that
/// shard panic, so that a test can see a dying shard end the whole process.
#[cfg(feature = "fault-injection")]
fn panic_on_request(shard: usize) {
    let Ok(spec) = std::env::var("SHARDLOG_PANIC_SHARD") else {
        return;
    };
    let Some((target, after_ms)) = spec.split_once(':') else {
        return;
    };
    if target.parse::<usize>().ok() != Some(shard) {
        return;
    }
    let after = Duration::from_millis(after_ms.parse().unwrap_or(0));
    glommio::spawn_local(async move {
        glommio::timer::sleep(after).await;
        panic!("SHARDLOG_PANIC_SHARD asked shard {shard} to panic");
    })
    .detach();
}

/// The signal handlers' flag, and the flag shard 0 sets once the broker may stop serving.
type StopFlags = (Arc<AtomicBool>, Arc<AtomicBool>);

/// Waits for SIGINT/SIGTERM, then starts this shard's shutdown. On a
/// clustered broker shard 0 first hands leadership over (controlled
/// shutdown) while every shard still serves; the others stop after it.
async fn watch_stop(shard: Rc<ShardState>, stop: Arc<AtomicBool>, proceed: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    if shard.id == crate::shard::CONTROLLER_SHARD {
        crate::shard::control::controlled_shutdown(&shard).await;
        proceed.store(true, Ordering::SeqCst);
    }
    while !proceed.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    tracing::info!(
        shard = shard.id,
        "stopping: no new connections; finishing requests in flight"
    );
    shard.shutdown.start();
}

async fn drain_connections(shard: &ShardState) {
    let mut waited_ms = 0;
    while shard.connections.get() > 0 && waited_ms < DRAIN_TIMEOUT_MS {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        waited_ms += 10;
    }
}

async fn retention_loop(shard: Rc<ShardState>) {
    let interval = Duration::from_millis(shard.config.retention_check_interval_ms);
    while !shard.shutdown.is_started() {
        futures_lite::future::or(glommio::timer::sleep(interval), shard.shutdown.wait()).await;
        if shard.shutdown.is_started() {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for ((topic, partition), state) in shard.partitions.local_partitions() {
            if let Err(error) = state.log.apply_retention(now_ms).await {
                tracing::warn!(topic, partition, %error, "retention failed");
            }
        }
    }
}

/// Holds an exclusive `flock` on `<data-dir>/.lock` for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Locks the data directory so that a second broker refuses to share it.
///
/// # Errors
/// [`Error::DataDirLocked`] when another process holds it.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<DataDirLock> {
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    // SAFETY: the descriptor is open and owned by `file` for the whole call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::DataDirLocked {
                path: data_dir.to_path_buf(),
            });
        }
        return Err(Error::io("locking data directory", path, error));
    }
    Ok(DataDirLock { _file: file })
}

/// This broker's place among the cluster's voters (0 for a one-node broker).
fn broker_index(config: &ServerConfig) -> usize {
    config
        .peers
        .as_ref()
        .and_then(|peers| peers.keys().position(|id| *id == config.node_id))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(Error::DataDirLocked { .. })
        ));
        drop(first);
        assert!(lock_data_dir(dir.path()).is_ok());
    }
}
