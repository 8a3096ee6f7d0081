//! The benchmark harness, run the way a user runs it: against an embedded broker.

use std::path::Path;
use std::process::{Command, Output};

use shardlog_tests::binary;

/// Runs `shardlog-bench` in `dir` and returns its stdout; fails the test on a non-zero exit.
fn bench(dir: &Path, args: &[&str]) -> String {
    let output: Output = Command::new(binary("shardlog-bench"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A run that moved data reports the CPU both processes spent per GB, and the broker's memory.
fn assert_cpu_per_gb(value: &serde_json::Value) {
    assert!(value["broker_metrics_error"].is_null(), "{value}");
    for key in [
        "broker_cpu_s",
        "client_cpu_s",
        "broker_cpu_s_per_gb",
        "client_cpu_s_per_gb",
    ] {
        let figure = value[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {value}"));
        assert!(figure > 0.0, "{key} = {figure}");
    }
    let peak = value["broker_peak_rss_bytes"].as_u64().unwrap();
    assert!(peak > 1 << 20, "peak RSS {peak}");
    assert!(peak >= value["broker_rss_bytes"].as_u64().unwrap());
}

#[test]
fn the_harness_measures_a_run_and_writes_json_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("produce.json");
    let plot = dir.path().join("produce.svg");
    let stdout = bench(
        dir.path(),
        &[
            "produce",
            "--embedded",
            "--shards",
            "2",
            "--records",
            "3000",
            "--producers",
            "2",
            "--partitions",
            "4",
            "--quiet",
            "--json",
            json_path.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("records/s") && stdout.contains("publish"),
        "{stdout}"
    );
    assert!(
        stdout.contains("core-s/GB") && stdout.contains("peak RSS"),
        "{stdout}"
    );
    let value = json(&json_path);
    assert_eq!(value["records"], 3000);
    assert_eq!(value["workload"], "produce");
    assert!(value["publish_latency_us"]["p99"].as_u64().unwrap() > 0);
    assert_cpu_per_gb(&value);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    let e2e_path = dir.path().join("e2e.json");
    let stdout = bench(
        dir.path(),
        &[
            "e2e",
            "--embedded",
            "--shards",
            "1",
            "--records",
            "500",
            "--rate",
            "1000",
            "--partitions",
            "2",
            "--quiet",
            "--json",
            e2e_path.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("end-to-end") && stdout.contains("poll"),
        "{stdout}"
    );
    let value = json(&e2e_path);
    assert_eq!(value["consumed_records"], 500);
    assert!(value["e2e_latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(value["poll_latency_us"]["p50"].as_u64().unwrap() > 0);
    // The window runs from the producers' start to the last acknowledgement:
    // 500 records on a 1000/s schedule take just under half a second to send.
    let seconds = value["seconds"].as_f64().unwrap();
    assert!(seconds >= 0.499, "{seconds}");
    assert_cpu_per_gb(&value);
    let bad = Command::new(binary("shardlog-bench"))
        .args(["produce", "--record-size", "3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn a_catch_up_read_reports_record_age_and_poll_latency() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("consume.json");
    let stdout = bench(
        dir.path(),
        &[
            "consume",
            "--embedded",
            "--shards",
            "1",
            // Enough for the broker's CPU counter (10 ms ticks) to move in
            // a catch-up read, which costs it little per byte.
            "--records",
            "40000",
            "--partitions",
            "2",
            "--consumers",
            "2",
            "--no-prefetch",
            "--quiet",
            "--json",
            json_path.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("record age") && stdout.contains("poll"),
        "{stdout}"
    );
    let value = json(&json_path);
    assert_eq!(value["records"], 40000);
    assert!(value["e2e_latency_us"].is_null());
    assert!(value["record_age_us"]["p50"].as_u64().unwrap() > 0);
    assert!(value["poll_latency_us"]["max"].as_u64().unwrap() > 0);
    assert_cpu_per_gb(&value);
}

#[test]
fn group_members_and_an_omb_workload_file_run() {
    let dir = tempfile::tempdir().unwrap();
    let group_path = dir.path().join("group.json");
    let stdout = bench(
        dir.path(),
        &[
            "group",
            "--embedded",
            "--shards",
            "1",
            "--records",
            "1000",
            "--rate",
            "1000",
            "--partitions",
            "4",
            "--consumers",
            "2",
            "--group",
            "smoke",
            "--quiet",
            "--json",
            group_path.to_str().unwrap(),
        ],
    );
    assert!(stdout.contains("group rebalances"), "{stdout}");
    let value = json(&group_path);
    assert_eq!(value["consumed_records"], 1000);
    assert!(
        value["group_rebalances"].as_u64().unwrap() >= 2,
        "one grant per member at least"
    );
    assert!(value["e2e_latency_us"]["p50"].as_u64().unwrap() > 0);
    assert_cpu_per_gb(&value);

    // Two topics, two subscriptions each: every record is read twice.
    let file = dir.path().join("small.yaml");
    std::fs::write(
        &file,
        "name: smoke\ntopics: 2\npartitionsPerTopic: 2\nmessageSize: 256\n\
         subscriptionsPerTopic: 2\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
         producerRate: 400\ntestDurationMinutes: 1\nwarmupDurationMinutes: 0\n",
    )
    .unwrap();
    let omb_path = dir.path().join("omb.json");
    let json_path = dir.path().join("workload.json");
    bench(
        dir.path(),
        &[
            "workload",
            file.to_str().unwrap(),
            "--embedded",
            "--shards",
            "1",
            "--duration",
            "3",
            "--quiet",
            "--json",
            json_path.to_str().unwrap(),
            "--omb-json",
            omb_path.to_str().unwrap(),
        ],
    );
    let value = json(&json_path);
    assert_eq!(value["workload"], "workload");
    assert_eq!(value["plan"]["topics"].as_array().unwrap().len(), 2);
    let records = value["records"].as_u64().unwrap();
    assert!(records > 0);
    assert!(
        value["consumed_records"].as_u64().unwrap() > records,
        "two reads per record"
    );
    assert_cpu_per_gb(&value);
    let omb = json(&omb_path);
    assert_eq!(omb["driver"], "shardlog");
    assert_eq!(omb["workload"], "smoke");
    assert_eq!(omb["topics"], 2);
    assert_eq!(omb["partitions"], 2);
    assert_eq!(omb["messageSize"], 256);
    assert!(!omb["publishRate"].as_array().unwrap().is_empty());
    assert!(omb["publishRate"][0].as_f64().unwrap() > 0.0);
    assert!(!omb["aggregatedEndToEndLatencyQuantiles"]
        .as_object()
        .unwrap()
        .is_empty());

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "topics: 1\nreplicationFactor: 3\n").unwrap();
    let refused = Command::new(binary("shardlog-bench"))
        .args(["workload", unknown.to_str().unwrap(), "--embedded"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 2: unknown key replicationFactor"),
        "{stderr}"
    );
}

#[test]
fn an_embedded_three_broker_cluster_is_measured_whole() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("cluster.json");
    let stdout = bench(
        dir.path(),
        &[
            "produce",
            "--embedded",
            "--brokers",
            "3",
            "--replication-factor",
            "3",
            "--shards",
            "1",
            "--records",
            "3000",
            "--partitions",
            "3",
            "--quiet",
            "--json",
            json_path.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("brokers 3  replication factor 3  min-insync-replicas 2"),
        "{stdout}"
    );
    assert!(stdout.contains("over 3 brokers"), "{stdout}");
    let value = json(&json_path);
    assert_eq!(value["records"], 3000);
    assert_eq!(value["broker_count"], 3);
    assert_eq!(value["replication_factor"], 3);
    assert_eq!(value["min_insync_replicas"], 2);
    assert_cpu_per_gb(&value);
    // The CPU figure is every broker's: three endpoints, summed.
    let each = value["per_broker"].as_array().unwrap();
    assert_eq!(each.len(), 3, "{value}");
    let endpoints: Vec<&str> = each
        .iter()
        .map(|b| b["metrics"].as_str().unwrap())
        .collect();
    assert_eq!(value["broker_metrics"], endpoints.join(","));
    let sum: f64 = each.iter().map(|b| b["cpu_s"].as_f64().unwrap()).sum();
    let total = value["broker_cpu_s"].as_f64().unwrap();
    assert!((sum - total).abs() < 1e-9, "{sum} vs {total}");
}
