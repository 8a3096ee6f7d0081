//! The broker answers bad input with an error, or closes the connection when
//! the frame boundary is lost, and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use shardlog_client::protocol::{encode_request, Acks, Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::{batch, consume_all, create_topic, produce, Broker};
use shardlog_wire::batch::BatchBuilderOptions;
use shardlog_wire::protocol::{encode_prefix, fb};

fn still_serves(broker: &Broker) {
    let mut connection = broker.connect();
    assert!(
        matches!(connection.call(&Request::ApiVersions).unwrap(), Response::ApiVersions(apis) if apis.len() >= 8)
    );
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = encode_prefix(message.len(), 0).to_vec();
    frame.extend_from_slice(message);
    frame
}

fn raw_request(body_type: fb::RequestBody, api_version: u16) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let body = fb::ApiVersionsRequest::create(
        &mut fbb,
        &fb::ApiVersionsRequestArgs {
            client_software: None,
        },
    );
    finish_request(fbb, body_type, body.as_union_value(), api_version)
}

/// Wraps `body` in a `Request` (correlation id 77) and a frame.
fn finish_request(
    mut fbb: FlatBufferBuilder<'_>,
    body_type: fb::RequestBody,
    body: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
    api_version: u16,
) -> Vec<u8> {
    let args = fb::RequestArgs {
        correlation_id: 77,
        api_version,
        client_id: None,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    frame(fbb.finished_data())
}

#[test]
fn garbage_inside_an_intact_frame_gets_an_error_and_the_connection_lives() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let garbage: Vec<u8> = (0..(seed % 300) as usize)
            .map(|i| (seed >> (i % 56)) as u8 ^ i as u8)
            .collect();
        connection.send_raw(&frame(&garbage)).unwrap();
        let (_, response) = connection.receive().unwrap();
        assert!(
            matches!(response, Response::Error(ref e) if e.code == ErrorCode::MalformedFrame),
            "round {round}: {response:?}"
        );
    }
    assert!(
        matches!(
            connection.call(&Request::ApiVersions).unwrap(),
            Response::ApiVersions(_)
        ),
        "the same connection still works"
    );
}

/// A CreateTopics frame built by hand, with replication values no SDK sends.
fn create_topics_frame(name: &str, replication_factor: i16, min_insync_replicas: i16) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let name = fbb.create_string(name);
    let spec = fb::TopicSpec::create(
        &mut fbb,
        &fb::TopicSpecArgs {
            name: Some(name),
            partitions: 1,
            retention_bytes: -1,
            retention_ms: -1,
            segment_bytes: -1,
            replication_factor,
            min_insync_replicas,
            unclean_leader_election: false,
        },
    );
    let topics = fbb.create_vector(&[spec]);
    let body = fb::CreateTopicsRequest::create(
        &mut fbb,
        &fb::CreateTopicsRequestArgs {
            topics: Some(topics),
        },
    );
    finish_request(
        fbb,
        fb::RequestBody::CreateTopicsRequest,
        body.as_union_value(),
        0,
    )
}

#[test]
fn replication_values_out_of_range_are_refused_and_create_nothing() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    for (factor, min) in [
        (0, -1),
        (-7, -1),
        (i16::MIN, 1),
        (2, -1),
        (1, 2),
        (1, 0),
        (1, -9),
    ] {
        connection
            .send_raw(&create_topics_frame("never", factor, min))
            .unwrap();
        let (_, response) = connection.receive().unwrap();
        let Response::Topics(results) = response else {
            panic!("{factor} {min}: {response:?}");
        };
        let error = results[0].1.clone().expect("refused");
        assert_eq!(
            error.code,
            ErrorCode::InvalidReplicationFactor,
            "{factor} {min}: {error:?}"
        );
    }
    let Response::Metadata(cluster) = connection.call(&Request::Metadata(vec![])).unwrap() else {
        panic!()
    };
    assert!(
        cluster.topics.iter().all(|t| t.name != "never"),
        "nothing was created: {cluster:?}"
    );
    still_serves(&broker);
}

#[test]
fn unknown_apis_and_versions_are_refused_by_code() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    connection
        .send_raw(&raw_request(fb::RequestBody(200), 0))
        .unwrap();
    let (correlation_id, response) = connection.receive().unwrap();
    assert_eq!(correlation_id, 77);
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::UnknownApi),
        "{response:?}"
    );
    connection
        .send_raw(&raw_request(fb::RequestBody::ApiVersionsRequest, 9))
        .unwrap();
    let (_, response) = connection.receive().unwrap();
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::UnsupportedVersion),
        "{response:?}"
    );
    let mut overrun = 100u32.to_le_bytes().to_vec();
    overrun.extend_from_slice(&500u32.to_le_bytes());
    overrun.extend_from_slice(&[0u8; 96]);
    connection.send_raw(&overrun).unwrap();
    let (_, response) = connection.receive().unwrap();
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::MalformedFrame),
        "{response:?}"
    );
    assert!(matches!(
        connection.call(&Request::ApiVersions).unwrap(),
        Response::ApiVersions(_)
    ));
}

#[test]
fn an_absurd_length_closes_the_connection_only() {
    let broker = Broker::start(2, &[]);
    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    stream.write_all(&[0u8; 64]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        stream.read(&mut buf).unwrap_or(0),
        0,
        "the broker closed the connection"
    );
    still_serves(&broker);
}

#[test]
fn truncated_frames_and_abandoned_connections_do_not_disturb_others() {
    let broker = Broker::start(2, &[]);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        let request = encode_request(1, &Request::Metadata(vec![]));
        stream.write_all(&request[..request.len() / 2]).unwrap();
        drop(stream);
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        stream.write_all(&[1, 2, 3]).unwrap();
        drop(stream);
    }
    still_serves(&broker);
}

#[test]
fn a_corrupt_batch_is_refused_and_nothing_is_stored() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "safe", 2);
    produce(&mut connection, "safe", 1, &["good".to_string()]);
    let good = batch(
        &["a".to_string(), "b".to_string()],
        BatchBuilderOptions::default(),
    );
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x20;
    // A good batch followed by a corrupt one in the same partition: all or nothing.
    let mut both = good.to_vec();
    both.extend_from_slice(&corrupt);
    for data in [corrupt.clone(), both, good[..good.len() - 3].to_vec()] {
        let request = Request::Produce {
            acks: Acks::All,
            timeout_ms: 5_000,
            partitions: vec![("safe".into(), 1, data.into())],
        };
        let Response::Produce(results) = connection.call(&request).unwrap() else {
            panic!()
        };
        assert_eq!(
            results[0].error.as_ref().unwrap().code,
            ErrorCode::CorruptBatch
        );
    }
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 5_000,
        partitions: vec![("safe".into(), 9, good.clone())],
    };
    let Response::Produce(results) = connection.call(&request).unwrap() else {
        panic!()
    };
    assert_eq!(
        results[0].error.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        consume_all(&mut connection, "safe", 1, 0),
        vec![(0, "good".to_string())]
    );
}

/// A small xorshift generator: the same hostile input on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Steady clients: one producing, one reading back, counting what worked.
struct Steady {
    produced: Arc<AtomicU64>,
    fetched: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Steady {
    fn start(broker: &Broker) -> Steady {
        let (produced, fetched) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut connection = broker.connect();
        let (count, done) = (produced.clone(), stop.clone());
        let producer = std::thread::spawn(move || {
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                let value = format!("steady-{i}");
                produce(&mut connection, "steady", (i % 2) as u32, &[value]);
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        });
        let mut connection = broker.connect();
        let (count, done) = (fetched.clone(), stop.clone());
        let consumer = std::thread::spawn(move || {
            let mut offsets = [0u64; 2];
            while !done.load(Ordering::SeqCst) {
                for (partition, offset) in offsets.iter_mut().enumerate() {
                    let got = consume_all(&mut connection, "steady", partition as u32, *offset);
                    if let Some((last, _)) = got.last() {
                        *offset = last + 1;
                        count.fetch_add(got.len() as u64, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Steady {
            produced,
            fetched,
            stop,
            threads: vec![producer, consumer],
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.produced.load(Ordering::SeqCst),
            self.fetched.load(Ordering::SeqCst),
        )
    }

    /// Waits until both clients made progress since `before`: they were not starved.
    fn progressed_since(&self, before: (u64, u64), what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let now = self.counts();
            if now.0 > before.0 && now.1 > before.1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "steady clients made no progress during {what}: {before:?} -> {:?}",
            self.counts()
        );
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a steady client failed");
        }
        self.produced.load(Ordering::SeqCst)
    }
}

/// Samples the broker's resident memory until stopped; returns the largest seen.
fn watch_memory(broker: &Broker, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let pid = broker.pid().expect("the broker runs");
    std::thread::spawn(move || {
        let mut peak = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            peak = peak.max(rss_kib * 1024);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

fn closed_by_broker(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const MIB: u64 = 1 << 20;
const CACHE_BYTES: u64 = 16 * MIB;
const SHARD_MEMORY_BYTES: u64 = 128 * MIB;
const CONNECTION_MEMORY_BYTES: u64 = 64 * MIB;

/// Slowloris frames, fetchers that never read, thousands of idle
/// connections and random frames, all at once: the steady clients go on,
/// every bad connection is dealt with by its limit, and the broker stays
/// within the memory its settings allow.
/// A fetch frame for all of partition 0 of "big", up to `partition_bytes` of it.
fn big_fetch(partition_bytes: u32) -> bytes::Bytes {
    encode_request(
        5,
        &Request::Fetch {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 50 << 20,
            partitions: vec![shardlog_client::protocol::FetchPartition {
                topic: "big".into(),
                partition: 0,
                offset: 0,
                max_bytes: partition_bytes,
            }],
        },
    )
}

/// A client that asks for one big fetch and then neither reads nor sends:
/// the broker's write gives up after `--response-write-timeout-ms` and the
/// connection closes then, although its reader has slots free and sits
/// waiting for a frame (before the fix it stayed open until the idle
/// timeout, ten minutes).
#[test]
fn a_client_that_stops_reading_and_sending_is_closed_at_the_write_timeout() {
    let broker = Broker::start(
        2,
        &[
            "--response-write-timeout-ms",
            "1000",
            "--fetch-partition-bytes-max",
            "41943040",
        ],
    );
    let mut setup = broker.connect();
    create_topic(&mut setup, "big", 1);
    // 40 MB: more than the two sockets' buffers hold, so the write blocks.
    let chunk: Vec<String> = (0..16).map(|i| format!("{i:0>62500}")).collect();
    for _ in 0..40 {
        produce(&mut setup, "big", 0, &chunk);
    }
    let fetch = big_fetch(40 << 20);
    let mut deaf = TcpStream::connect(broker.addr).unwrap();
    deaf.write_all(&fetch).unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        closed_by_broker(&mut deaf),
        "closed {:?} after the request",
        started.elapsed()
    );
    let metrics = broker.scrape_metrics();
    assert!(
        metric(
            &metrics,
            "shardlog_connections_closed_total",
            "reason=\"write_timeout\""
        ) >= 1,
        "counted as a write timeout"
    );
    still_serves(&broker);
}

#[test]
fn a_hostile_crowd_cannot_starve_others_or_grow_the_broker() {
    let descriptors = shardlog_tests::raise_file_limit();
    assert!(
        descriptors >= 6_000,
        "this test opens 5,000 connections: raise the hard RLIMIT_NOFILE ({descriptors})"
    );
    let cache = CACHE_BYTES.to_string();
    let shard_memory = SHARD_MEMORY_BYTES.to_string();
    let connection_memory = CONNECTION_MEMORY_BYTES.to_string();
    let broker = Broker::start(
        2,
        &[
            "--cache-bytes",
            &cache,
            "--shard-memory-bytes-max",
            &shard_memory,
            "--connection-memory-bytes-max",
            &connection_memory,
            "--frame-read-timeout-ms",
            "2000",
            "--response-write-timeout-ms",
            "3000",
            "--connections-per-shard-max",
            "4000",
        ],
    );
    let mut setup = broker.connect();
    create_topic(&mut setup, "steady", 2);
    create_topic(&mut setup, "big", 1);
    // 48 MiB in the active segment, most of it out of the 16 MiB cache:
    // fetches of it are O_DIRECT reads into new memory.
    let chunk: Vec<String> = (0..16).map(|i| format!("{i:0>60000}")).collect();
    for _ in 0..48 {
        produce(&mut setup, "big", 0, &chunk);
    }
    let (rss_idle, _) = broker.resident_bytes().expect("the broker's memory");
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = watch_memory(&broker, stop_watch.clone());
    let steady = Steady::start(&broker);
    steady.progressed_since((0, 0), "start-up");

    // 1. Slowloris: prefixes announcing 64 MiB frames, then nothing.
    let before = steady.counts();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(broker.addr).unwrap();
            let frame_len = (64 * MIB - 8) as u32;
            stream.write_all(&frame_len.to_le_bytes()).unwrap();
            stream.write_all(&100u32.to_le_bytes()).unwrap();
            stream.write_all(&[7u8; 100]).unwrap();
            stream
        })
        .collect();

    // 2. Fetchers that pipeline big fetches and never read an answer: two,
    // whose connection budgets add up to the shard's (a third would only get
    // watermark-only answers, small enough to sit in its socket buffer).
    let fetch = big_fetch(10 << 20);
    let mut deaf: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(broker.addr).unwrap();
            for _ in 0..64 {
                stream.write_all(&fetch).unwrap();
            }
            stream
        })
        .collect();

    // 3. Five thousand connections that connect and say nothing.
    let idle: Vec<TcpStream> = (0..5_000)
        .map(|i| {
            TcpStream::connect(broker.addr)
                .unwrap_or_else(|e| panic!("idle connection {i} refused: {e}"))
        })
        .collect();

    // 4. Ten thousand random frames, each in an intact frame, on a few connections.
    let mut noise = Noise(0x5eed_f00d_dead_beef);
    let mut answered = 0usize;
    for _ in 0..10 {
        let mut connection = broker.connect();
        for _ in 0..1_000 {
            let len = (noise.next() % 2048) as usize;
            let message = noise.bytes(len);
            connection.send_raw(&frame(&message)).unwrap();
            let (_, response) = connection
                .receive()
                .expect("an answer to each intact frame");
            if matches!(response, Response::Error(_)) {
                answered += 1;
            }
        }
        still_serves(&broker);
    }
    assert!(
        answered >= 9_000,
        "random frames get error answers ({answered})"
    );
    steady.progressed_since(before, "the hostile crowd");

    // Each bad connection met its limit: the slow frames and deaf fetchers
    // were closed by the broker; the idle ones are still open (10 minutes).
    for stream in slow.iter_mut() {
        assert!(closed_by_broker(stream), "a stalled frame was closed");
    }
    for stream in deaf.iter_mut() {
        // Draining now must end: the broker gave up on this connection after
        // its write timeout (no FIN from us, which would close it as EOF).
        assert!(
            closed_by_broker(stream),
            "a client that never reads was closed"
        );
    }
    let metrics = broker.scrape_metrics();
    assert!(
        metric(
            &metrics,
            "shardlog_connections_closed_total",
            "reason=\"stalled_frame\""
        ) >= 50,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "shardlog_connections_closed_total",
            "reason=\"write_timeout\""
        ) >= 2,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "shardlog_connections", "shard=") >= 5_000,
        "the idle connections are still open"
    );
    drop(idle);
    let before = steady.counts();
    steady.progressed_since(before, "the end");
    stop_watch.store(true, Ordering::SeqCst);
    let peak = watcher.join().unwrap();
    let (_, high_water) = broker.resident_bytes().expect("the broker's memory");
    let produced = steady.stop();
    // What the settings allow on top of what the broker held before the
    // crowd came: per shard the cache and the memory budget, and a few KiB
    // for each of the 5,000 connections' own state.
    let allowed = rss_idle + 2 * (CACHE_BYTES + SHARD_MEMORY_BYTES) + 5_000 * 16 * 1024;
    eprintln!(
        "resident memory: {} MiB before, peak {} MiB sampled, {} MiB VmHWM; allowed {} MiB",
        rss_idle / MIB,
        peak / MIB,
        high_water / MIB,
        allowed / MIB
    );
    assert!(
        peak <= allowed && high_water <= allowed,
        "resident memory peaked at {} MiB (sampled) / {} MiB (VmHWM); the settings allow {} MiB",
        peak / MIB,
        high_water / MIB,
        allowed / MIB
    );
    let stored: usize = (0..2)
        .map(|p| consume_all(&mut setup, "steady", p, 0).len())
        .sum();
    assert_eq!(stored as u64, produced, "every steady record was stored");
}
