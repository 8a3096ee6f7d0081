//! The README's first commands, exactly as written, as a new user runs them:
//! from a fresh working directory, with no flags but those the README gives.
//! Every other test passes explicit ports and an absolute data directory;
//! this one is where the defaults (`./data`, 7070, 9644) are tried.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The command lines of the first ```sh block after `heading`, comments cut.
fn commands_under(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no sh block under {heading:?}"))
        .0;
    block
        .lines()
        .map(|line| line.split_once(" #").map_or(line, |(command, _)| command))
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

/// A shell in the fresh directory: how a user runs a README line.
fn shell(dir: &Path, command: &str) -> std::process::Output {
    Command::new("bash")
        .args(["-c", command])
        .current_dir(dir)
        .env_remove("SHARDLOG_BROKER")
        .output()
        .expect("run bash")
}

/// GET /metrics on the default metrics port; true on a 200.
fn scrape(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200 OK")
}

#[test]
fn the_readme_set_up_and_quick_start_work_as_written() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let setup = commands_under(&readme, "## Set up");
    let run_broker = setup
        .iter()
        .find(|c| c.contains("--bin shardlog-server"))
        .expect("the set-up block starts a broker");
    // A fresh working directory inside the workspace, so that cargo finds
    // the workspace as it does for a user in a fresh clone.
    let scratch = root.join("target").join("readme-test");
    std::fs::create_dir_all(&scratch).expect("target/readme-test");
    let fresh = tempfile::tempdir_in(&scratch).expect("a fresh working directory");
    let mut broker = Command::new("bash")
        .args(["-c", &format!("exec {run_broker}")])
        .current_dir(fresh.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the broker as the README says");
    let stdout = broker.stdout.take().expect("stdout");
    let stderr = broker.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    // The first `cargo run --release` may build the release binaries.
    let ready = rx.recv_timeout(Duration::from_secs(1800));
    let Ok(ready) = ready else {
        let _ = broker.kill();
        let _ = broker.wait();
        panic!(
            "the broker never said it was ready; stderr:\n{}",
            log.join().unwrap_or_default()
        );
    };
    let data_dir = fresh.path().join("data");
    assert_eq!(
        ready,
        format!(
            "shardlog-server listening on 127.0.0.1:7070, data in {}",
            data_dir.display()
        ),
        "the ready line names the default address and the absolute data directory"
    );

    // The quick start, line by line (its broker is the one just started).
    let mut acknowledged = None;
    let mut consumed = None;
    for command in commands_under(&readme, "## Quick start") {
        if command.ends_with('&') {
            assert!(command.contains("--bin shardlog-server"), "{command}");
            continue;
        }
        let output = shell(fresh.path(), &command);
        let err = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "`{command}` failed:\n{err}");
        if command.contains(" produce ") {
            acknowledged = err.lines().last().map(str::to_string);
        }
        if command.contains(" consume ") {
            consumed = Some(String::from_utf8_lossy(&output.stdout).to_string());
        }
    }
    assert_eq!(acknowledged.as_deref(), Some("acknowledged: 1000"));
    let mut values: Vec<u32> = consumed
        .expect("the quick start consumes")
        .lines()
        .map(|l| l.parse().expect("a number per line"))
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=1000).collect::<Vec<u32>>());

    // The default metrics port is the metrics endpoint's alone.
    let scraped = (0..20).filter(|_| scrape("127.0.0.1:9644")).count();
    assert_eq!(scraped, 20, "every scrape of 127.0.0.1:9644 is answered");
    assert!(
        data_dir.join("metadata.json").is_file(),
        "data went to ./data"
    );

    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(broker.id() as libc::pid_t, libc::SIGTERM) };
    let status = broker.wait().expect("wait for the broker");
    let log = log.join().unwrap_or_default();
    assert!(status.success(), "SIGTERM ends the broker cleanly:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes when stderr is not a terminal"
    );
}
