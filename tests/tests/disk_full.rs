//! A full disk: produce until a small loop-mounted ext4 has no space left.
//! Produce then fails with the retriable `StorageFull`, every acknowledged
//! record reads back, and once space is freed (by deleting a topic, which
//! itself must work on a full disk) produce goes on without a restart.
//!
//! Needs root (losetup and mount); CI runs as root. Elsewhere the test
//! fails unless `SHARDLOG_TESTS_WITHOUT_ROOT=1` says to skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

use shardlog_client::protocol::{Acks, Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::{batch, consume_all, create_topic, Broker};
use shardlog_wire::batch::BatchBuilderOptions;

/// A loop-mounted ext4 image, unmounted on drop.
struct SmallDisk {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size_mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("disk.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("mount point");
        run("truncate", &["-s", &format!("{size_mib}M"), path(&image)]);
        run("mkfs.ext4", &["-q", "-F", path(&image)]);
        run("mount", &["-o", "loop", path(&image), path(&mount_point)]);
        SmallDisk {
            mount_point,
            _dir: dir,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Produces `values` as one batch; the partition's result.
fn try_produce(
    connection: &mut shardlog_client::blocking::Connection,
    topic: &str,
    values: &[String],
) -> Result<i64, shardlog_client::BrokerError> {
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 30_000,
        partitions: vec![(
            topic.into(),
            0,
            batch(values, BatchBuilderOptions::default()),
        )],
    };
    match connection.call(&request).expect("produce") {
        Response::Produce(mut results) => {
            let result = results.remove(0);
            match result.error {
                None => Ok(result.offset),
                Some(error) => Err(error),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_full_disk_refuses_writes_keeps_what_was_acknowledged_and_recovers_when_space_returns() {
    if !is_root() {
        assert!(
            std::env::var_os("SHARDLOG_TESTS_WITHOUT_ROOT").is_some(),
            "this test mounts a loop device and needs root; \
             set SHARDLOG_TESTS_WITHOUT_ROOT=1 to skip it"
        );
        eprintln!("skipped: not root");
        return;
    }
    let disk = SmallDisk::new(96);
    let mut broker = Broker::start_in(
        &disk.mount_point,
        1,
        &[
            "--segment-bytes",
            "4194304",
            "--cache-bytes",
            "8388608",
            "--disk-reserve-bytes",
            "4194304",
        ],
    );
    let mut connection = broker.connect();
    create_topic(&mut connection, "keep", 1);
    create_topic(&mut connection, "filler", 1);
    let filler: Vec<String> = (0..14).map(|i| format!("{i:0>60000}")).collect();
    let mut kept = Vec::new();
    let mut full = None;
    for round in 0..10_000 {
        if let Err(error) = try_produce(&mut connection, "filler", &filler) {
            full = Some(error);
            break;
        }
        let value = format!("keep-{round}");
        match try_produce(&mut connection, "keep", std::slice::from_ref(&value)) {
            Ok(offset) => kept.push((offset as u64, value)),
            Err(error) => {
                full = Some(error);
                break;
            }
        }
    }
    let full = full.expect("the disk filled up");
    assert_eq!(full.code, ErrorCode::StorageFull, "{full:?}");
    assert!(full.code.is_retriable(), "a full disk is worth retrying");
    // Fill what the failed write left with ever smaller writes, down to the
    // last block, until each size fails.
    for size in [200_000, 20_000, 2_000, 10] {
        let mut refused = false;
        for i in 0..10_000 {
            let value = format!("{i}-{}", "x".repeat(size));
            match try_produce(&mut connection, "keep", std::slice::from_ref(&value)) {
                Ok(offset) => kept.push((offset as u64, value)),
                Err(error) => {
                    assert_eq!(error.code, ErrorCode::StorageFull, "{error:?}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "writes of {size} bytes fill the disk too");
    }
    // Writes are refused now, and nothing acknowledged is lost.
    let small = vec!["x".repeat(200_000)];
    let refused = (0..5).all(|_| try_produce(&mut connection, "keep", &small).is_err());
    assert!(
        refused,
        "a write that needs space is refused while the disk is full"
    );
    assert!(
        kept.len() > 10,
        "some records were stored before the disk filled"
    );
    assert_eq!(consume_all(&mut connection, "keep", 0, 0), kept);

    // Deleting a topic frees space, and must work although the disk is full.
    match connection
        .call(&Request::DeleteTopics(vec!["filler".into()]))
        .expect("delete")
    {
        Response::Topics(results) => assert_eq!(results[0].1, None, "deleting on a full disk"),
        other => panic!("unexpected {other:?}"),
    }
    let mut resumed = false;
    for attempt in 0..50 {
        let value = format!("after-{attempt}");
        match try_produce(&mut connection, "keep", std::slice::from_ref(&value)) {
            Ok(offset) => {
                kept.push((offset as u64, value));
                resumed = true;
                break;
            }
            Err(error) => {
                assert_eq!(error.code, ErrorCode::StorageFull, "{error:?}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    assert!(
        resumed,
        "produce goes on once space is back, without a restart"
    );
    for i in 0..20 {
        let value = format!("more-{i}");
        let offset = try_produce(&mut connection, "keep", std::slice::from_ref(&value))
            .expect("space is back");
        kept.push((offset as u64, value));
    }
    assert_eq!(consume_all(&mut connection, "keep", 0, 0), kept);
    broker.stop();
    broker.restart();
    let mut connection = broker.connect();
    assert_eq!(
        consume_all(&mut connection, "keep", 0, 0),
        kept,
        "and all of it is there after a restart"
    );
}
