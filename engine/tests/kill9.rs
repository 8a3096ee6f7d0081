//! A child process appends under `flush = always` and prints each
//! acknowledged batch; the test kills it with SIGKILL at a random moment,
//! reopens the log and finds every acknowledged batch intact. Three rounds
//! run on the same directory, so recovery also follows recovery.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{batch_of, read_records, small_segments};
use shardlog_engine::{FlushPolicy, PartitionLog, ShardConfig, StorageShard};

const DIR_ENV: &str = "SHARDLOG_KILL9_DIR";
const APPENDERS: u64 = 4;

/// The value of record `index` of batch `sequence` from `appender`.
fn value(appender: u64, sequence: u64, index: u64) -> Vec<u8> {
    let mut value = format!("{appender}:{sequence}:{index}:").into_bytes();
    value.resize(64 + (sequence as usize * 13) % 700, b'x');
    value
}

/// The child: runs only when the parent starts this binary with the directory set.
#[test]
#[ignore = "run by acknowledged_batches_survive_kill_9 in a child process"]
fn kill9_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let first_sequence: u64 = std::env::var("SHARDLOG_KILL9_ROUND")
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1_000_000;
    glommio::LocalExecutor::default().run(async move {
        let shard = StorageShard::new(ShardConfig::default());
        let config = shardlog_engine::LogConfig {
            flush: FlushPolicy::Always,
            ..small_segments()
        };
        let log = PartitionLog::open(&dir, config, &shard).await.unwrap();
        println!("ready");
        let mut tasks = Vec::new();
        for appender in 0..APPENDERS {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for sequence in first_sequence.. {
                    let count = 1 + sequence % 3;
                    let records: Vec<_> = (0..count)
                        .map(|i| (sequence as i64, value(appender, sequence, i)))
                        .collect();
                    let info = log.append(batch_of(&records)).await.unwrap();
                    println!(
                        "ack {} {} {appender} {sequence}",
                        info.base_offset, info.last_offset
                    );
                }
            }));
        }
        for task in tasks {
            task.await;
        }
    });
}

#[test]
fn acknowledged_batches_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x2545_f491_4f6c_dd1d;
    let mut total_acks = 0usize;
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "kill9_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, dir.path())
            .env("SHARDLOG_KILL9_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() == 5 && fields[0] == "ack" {
                    let parsed: Vec<u64> = fields[1..].iter().map(|f| f.parse().unwrap()).collect();
                    acks.push((parsed[0], parsed[1], parsed[2], parsed[3]));
                }
            }
            acks
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(
            !acks.is_empty(),
            "round {round}: the child acknowledged nothing before the kill"
        );
        total_acks += acks.len();
        verify(dir.path(), &acks);
    }
    assert!(total_acks > 0);
}

fn verify(dir: &std::path::Path, acks: &[(u64, u64, u64, u64)]) {
    let dir = dir.to_path_buf();
    let acks = acks.to_vec();
    glommio::LocalExecutor::default().run(async move {
        let shard = StorageShard::new(ShardConfig::default());
        let log = PartitionLog::open(&dir, small_segments(), &shard)
            .await
            .unwrap();
        let records = read_records(&log, 0, 1 << 20).await;
        assert_eq!(
            records.len() as u64,
            log.high_watermark(),
            "offsets are dense from 0"
        );
        for (base_offset, last_offset, appender, sequence) in acks {
            for offset in base_offset..=last_offset {
                let record = records
                    .get(offset as usize)
                    .unwrap_or_else(|| panic!("acknowledged offset {offset} lost"));
                assert_eq!(record.offset, offset);
                assert_eq!(
                    record.value,
                    value(appender, sequence, offset - base_offset),
                    "offset {offset}"
                );
            }
        }
        log.close().await.unwrap();
    });
}
