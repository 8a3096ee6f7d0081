//! The benchmark harness, run the way a user runs it: against an embedded broker.

use std::process::Command;

use shardlog_tests::binary;

#[test]
fn the_harness_measures_a_run_and_writes_json_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("produce.json");
    let plot = dir.path().join("produce.svg");
    let output = Command::new(binary("shardlog-bench"))
        .current_dir(dir.path())
        .args([
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
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("records/s") && stdout.contains("publish"),
        "{stdout}"
    );
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(value["records"], 3000);
    assert_eq!(value["workload"], "produce");
    assert!(value["publish_latency_us"]["p99"].as_u64().unwrap() > 0);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    let e2e = Command::new(binary("shardlog-bench"))
        .current_dir(dir.path())
        .args([
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
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&e2e.stdout);
    assert!(
        e2e.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&e2e.stderr)
    );
    assert!(stdout.contains("end-to-end"), "{stdout}");
    let bad = Command::new(binary("shardlog-bench"))
        .args(["produce", "--record-size", "3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
