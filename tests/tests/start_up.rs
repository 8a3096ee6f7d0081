//! Starting and refusing to start: ports, partitions that do not open, the
//! open-file budget, and produce requests whose handler gives up first.

use std::process::{Command, Stdio};
use std::time::Duration;

use shardlog_client::protocol::{Acks, NewTopic, Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::{binary, consume_all, create_topic, idempotent_batch, init_producer, Broker};

/// Runs the broker binary to its end (it must not start); (exit code, stdout, stderr).
fn run_to_failure(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(binary("shardlog-server"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardlog-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn a_second_broker_on_the_same_ports_stops_with_a_clear_error() {
    let broker = Broker::start(2, &[]);
    let other = tempfile::tempdir().unwrap();
    let listen = broker.addr.to_string();
    let metrics = format!("127.0.0.1:{}", broker.addr.port() + 3);
    let data_dir = other.path().join("data");
    let (code, stdout, stderr) = run_to_failure(&[
        "--shards",
        "2",
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(!stdout.contains("listening"), "{stdout}");
    let own_port = format!("127.0.0.1:{}", broker.addr.port() + 1);
    assert!(
        stderr.contains(&own_port) && stderr.contains("Address already in use"),
        "the error names the taken port: {stderr}"
    );
    // The first broker still owns its ports and serves.
    let mut connection = broker.connect();
    create_topic(&mut connection, "still-mine", 1);
}

#[test]
fn a_partition_that_does_not_open_stops_the_start_with_its_path() {
    let mut broker = Broker::start(1, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "broken", 2);
    drop(connection);
    broker.stop();
    let topics = broker.data_dir().join("data/topics");
    let topic_dir = std::fs::read_dir(&topics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("broken-")
        })
        .expect("the topic's directory");
    // Partition 1's directory becomes a plain file: it cannot open.
    let partition = topic_dir.join("1");
    std::fs::remove_dir_all(&partition).unwrap();
    std::fs::write(&partition, b"not a directory").unwrap();
    let data_dir = broker.data_dir().join("data");
    let (code, stdout, stderr) = run_to_failure(&[
        "--shards",
        "1",
        "--listen",
        &broker.addr.to_string(),
        "--metrics-listen",
        &format!("127.0.0.1:{}", broker.addr.port() + 2),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains("listening"), "no ready line: {stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("shardlog-server: ") && last.contains(partition.to_str().unwrap()),
        "one line naming the path: {stderr}"
    );
}

#[test]
fn a_data_directory_of_the_old_batch_format_is_refused_with_what_to_do() {
    let mut broker = Broker::start(1, &[]);
    create_topic(&mut broker.connect(), "old", 1);
    broker.stop();
    let data_dir = broker.data_dir().join("data");
    // Data written before the format marker existed: shardlog's own batch format.
    std::fs::remove_file(data_dir.join("format")).expect("the broker wrote its format marker");
    let (code, stdout, stderr) = run_to_failure(&[
        "--shards",
        "1",
        "--listen",
        &broker.addr.to_string(),
        "--metrics-listen",
        &format!("127.0.0.1:{}", broker.addr.port() + 2),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains("listening"), "no ready line: {stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(data_dir.to_str().unwrap()) && last.contains("move or delete"),
        "one line naming the directory and what to do: {stderr}"
    );
    std::fs::write(data_dir.join("format"), "shardlog-data-format 2\n").unwrap();
    broker.restart();
    broker.connect();
}

#[test]
fn create_topics_is_refused_up_front_past_the_open_file_budget() {
    // 10 of the 100 files stay free for reading sealed segments, and the
    // 16 internal __offsets partitions hold 16: 74 partitions are left.
    let mut broker = Broker::start(1, &["--open-files-per-shard-max", "100"]);
    let mut connection = broker.connect();
    let request = Request::CreateTopics(vec![NewTopic::new("too-many", 75)]);
    match connection.call(&request).unwrap() {
        Response::Topics(results) => {
            let error = results[0].1.as_ref().expect("refused");
            assert_eq!(error.code, ErrorCode::InvalidPartitions);
            assert!(
                error.message.contains("--open-files-per-shard-max"),
                "{error:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    create_topic(&mut connection, "just-right", 74);
    drop(connection);
    broker.stop();
    broker.restart();
    let mut connection = broker.connect();
    match connection.call(&Request::Metadata(vec![])).unwrap() {
        Response::Metadata(cluster) => {
            let names: Vec<_> = cluster.topics.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                vec!["just-right"],
                "the broker starts again with them"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_produce_whose_handler_times_out_still_settles_and_its_retry_is_stored_once() {
    let broker = Broker::start(1, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "hasty", 1);
    let producer_id = init_producer(&mut connection);
    let mut stored = Vec::new();
    for sequence in 0..20 {
        let value = format!("hasty-{sequence}");
        let data = idempotent_batch(producer_id, sequence, std::slice::from_ref(&value));
        // A 1 ms timeout: the handler usually gives up before the fdatasync.
        let hasty = Request::Produce {
            acks: Acks::All,
            timeout_ms: 1,
            partitions: vec![("hasty".into(), 0, data.clone())],
        };
        let Response::Produce(first) = connection.call(&hasty).unwrap() else {
            panic!()
        };
        if let Some(error) = &first[0].error {
            assert_eq!(error.code, ErrorCode::RequestTimedOut, "{error:?}");
        }
        // The retry: answered with the original offset once the append
        // settles (Busy until then), never stuck and never stored twice.
        let retry = Request::Produce {
            acks: Acks::All,
            timeout_ms: 30_000,
            partitions: vec![("hasty".into(), 0, data)],
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let offset = loop {
            let Response::Produce(results) = connection.call(&retry).unwrap() else {
                panic!()
            };
            match &results[0].error {
                None => break results[0].offset,
                Some(error) if error.code == ErrorCode::Busy => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the timed-out append never settled"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Some(error) => panic!("retry of {sequence}: {error:?}"),
            }
        };
        if first[0].error.is_none() {
            assert_eq!(offset, first[0].offset, "a retry gets the original offset");
        }
        stored.push((offset as u64, value));
    }
    assert_eq!(consume_all(&mut connection, "hasty", 0, 0), stored);
}

/// A shard that dies (here: a test build's requested panic) ends the whole
/// process with a failure, instead of leaving its partitions unserved.
#[test]
fn a_dying_shard_ends_the_whole_broker() {
    let mut broker = Broker::start_with_env(2, &[], &[("SHARDLOG_PANIC_SHARD", "1:1500")]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "doomed", 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while broker.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker outlived its dead shard"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = broker.exit_status().expect("it ended");
    assert!(!status.success(), "a dead shard is a failure: {status}");
    let log = std::fs::read_to_string(&broker.log_path).unwrap_or_default();
    assert!(log.contains("asked shard 1 to panic"), "{log}");
}

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_have_no_colours_in_a_file() {
    for format in ["json", "text"] {
        let mut broker = Broker::start(1, &["--log-format", format]);
        let mut connection = broker.connect();
        create_topic(&mut connection, "logged", 1);
        drop(connection);
        broker.stop();
        let log = std::fs::read_to_string(&broker.log_path).unwrap();
        assert!(log.lines().count() >= 2, "{log}");
        assert!(!log.contains('\u{1b}'), "no ANSI escapes in a file: {log}");
        if format == "json" {
            for line in log.lines() {
                let object: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(object.get("level").is_some() && object.get("fields").is_some());
            }
        }
    }
}
