//! The metrics endpoint: `GET /metrics` on `--metrics-listen`, served by
//! shard 0, which gathers every shard's rendering ([`crate::metrics`]) over
//! the mesh, the process's CPU and memory, and the groups' lag.

use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{header, ProcessStats};
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// The most bytes of an HTTP request to the metrics endpoint.
const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Gathers every shard's rendering (shard 0 serves scrapes).
pub async fn gather(shard: &Rc<ShardState>) -> String {
    let mut text = String::from(header());
    match ProcessStats::read() {
        Ok(stats) => text.push_str(&stats.render()),
        Err(error) => tracing::warn!(%error, "cannot read the process's CPU and memory"),
    }
    let renders = (0..shard.count).map(|target| shard.call(target, ShardRequest::Metrics));
    for response in futures_util::future::join_all(renders).await {
        if let ShardResponse::Metrics(rendered) = response {
            text.push_str(&rendered);
        }
    }
    text.push_str(&group_lag(shard).await);
    text
}

/// Committed offset and lag of every group's partitions: commits come from
/// each coordinator, log end offsets from each partition's owner.
async fn group_lag(shard: &Rc<ShardState>) -> String {
    use crate::shard::messages::{GroupCall, GroupReply};
    let calls =
        (0..shard.count).map(|target| shard.call(target, ShardRequest::Group(GroupCall::Commits)));
    let mut commits = Vec::new();
    for response in futures_util::future::join_all(calls).await {
        if let ShardResponse::Group(GroupReply::Commits(list)) = response {
            commits.extend(list);
        }
    }
    commits.sort();
    let ends = commits
        .iter()
        .map(|(_, (topic, partition), _)| crate::handlers::latest_offset(shard, topic, *partition));
    let ends = futures_util::future::join_all(ends).await;
    let mut out = String::new();
    for ((group, (topic, partition), committed), end) in commits.into_iter().zip(ends) {
        let Some(end) = end else { continue };
        let labels = format!("group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"");
        let _ = writeln!(
            out,
            "shardlog_group_committed_offset{{{labels}}} {committed}"
        );
        let _ = writeln!(
            out,
            "shardlog_group_lag{{{labels}}} {}",
            (end - committed).max(0)
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until the shard shuts down: at most
/// `metrics_connections_max` connections at once (more are closed at once)
/// and `metrics_request_timeout_ms` for each, reading and answering.
pub async fn serve(shard: Rc<ShardState>, listener: glommio::net::TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let Some(Ok(stream)) = accepted else {
            if shard.shutdown.is_started() {
                return;
            }
            continue;
        };
        if open.get() >= shard.config.limits.metrics_connections_max {
            shard.metrics.connection_closed("refused");
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        glommio::spawn_local(async move {
            let timeout = Duration::from_millis(shard.config.limits.metrics_request_timeout_ms);
            let answered = futures_lite::future::or(
                async {
                    answer_http(&shard, stream).await;
                    true
                },
                async {
                    glommio::timer::sleep(timeout).await;
                    false
                },
            )
            .await;
            if !answered {
                shard.metrics.connection_closed("stalled_frame");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Reads one HTTP request head and answers it; the connection closes after.
async fn answer_http(shard: &Rc<ShardState>, mut stream: glommio::net::TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < HTTP_REQUEST_BYTES_MAX {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?")
    {
        let body = gather(shard).await;
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}
