//! End-to-end tests of consumer groups: the real broker, the SDK and the CLI.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardlog_client::{
    Admin, ConsumerConfig, ErrorCode, GroupConsumer, GroupConsumerConfig, NewTopic, Offset,
    OffsetReset, Producer, ProducerConfig, ProducerRecord,
};
use shardlog_tests::{binary, client_config, runtime, Broker};

fn member_config(broker: &Broker, group: &str) -> GroupConsumerConfig {
    let consumer = ConsumerConfig {
        client: client_config(broker),
        max_wait: Duration::from_millis(100),
        auto_offset_reset: OffsetReset::Earliest,
        ..Default::default()
    };
    let mut config = GroupConsumerConfig::new(consumer, group);
    config.session_timeout = Duration::from_secs(3);
    config.auto_commit_interval = Some(Duration::from_millis(300));
    config
}

/// Produces the values, keyed by themselves so that they spread over the partitions.
async fn produce(broker: &Broker, topic: &str, values: impl Iterator<Item = String>) {
    let producer = Producer::new(ProducerConfig {
        client: client_config(broker),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for value in values {
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new(topic, value.clone()).key(value))
                .await
                .unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// (member, value, partition) of every delivery.
type Seen = Arc<Mutex<Vec<(String, String, u32)>>>;

/// A member that records every value it receives until `stop` is set, then closes.
fn spawn_member(
    rt: &tokio::runtime::Runtime,
    config: GroupConsumerConfig,
    topic: &'static str,
    name: &str,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    rt.spawn(async move {
        let mut member = GroupConsumer::new(config);
        member.subscribe(&[topic]);
        while !stop.load(Ordering::SeqCst) {
            for record in member.poll().await.unwrap() {
                let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                seen.lock()
                    .unwrap()
                    .push((name.clone(), value, record.partition));
            }
        }
        member.close().await.unwrap();
    })
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_stable_group_gives_each_record_to_exactly_one_member() {
    let broker = Broker::start(2, &[]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("work", 6)))
        .unwrap();
    let (seen, stop): (Seen, _) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let members: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            spawn_member(
                &rt,
                member_config(&broker, "workers"),
                "work",
                n,
                seen.clone(),
                stop.clone(),
            )
        })
        .collect();
    rt.block_on(wait_for("a stable group of three", async || {
        admin.describe_group("workers").await.is_ok_and(|g| {
            g.members.len() == 3
                && g.state == "stable"
                && g.members.iter().all(|m| m.assignment.len() == 2)
        })
    }));
    rt.block_on(produce(&broker, "work", (0..600).map(|i| format!("w{i}"))));
    rt.block_on(wait_for("every record", async || {
        seen.lock().unwrap().len() >= 600
    }));
    stop.store(true, Ordering::SeqCst);
    for member in members {
        rt.block_on(member).unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, value, _) in seen.iter() {
        *counts.entry(value).or_default() += 1;
    }
    assert_eq!(counts.len(), 600);
    assert!(
        counts.values().all(|c| *c == 1),
        "no record reached two members"
    );
    let members_used: std::collections::HashSet<&str> =
        seen.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(members_used.len(), 3, "every member got work");
}

#[test]
fn members_join_and_leave_while_producers_write_and_nothing_is_lost() {
    let broker = Broker::start(2, &[]);
    let rt = runtime();
    rt.block_on(Admin::new(client_config(&broker)).create_topic(NewTopic::new("flow", 4)))
        .unwrap();
    let seen: Seen = Arc::default();
    let producer_config = ProducerConfig {
        client: client_config(&broker),
        ..Default::default()
    };
    let producing = rt.spawn(async move {
        let producer = Producer::new(producer_config).await.unwrap();
        for i in 0..3000u32 {
            producer
                .send(ProducerRecord::new("flow", format!("f{i}")))
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        producer.close().await.unwrap();
    });
    let stops: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut members = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        members.push(spawn_member(
            &rt,
            member_config(&broker, "flowing"),
            "flow",
            name,
            seen.clone(),
            stops[i].clone(),
        ));
        std::thread::sleep(Duration::from_millis(400));
    }
    for stop in &stops[..2] {
        stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(400));
    }
    rt.block_on(producing).unwrap();
    rt.block_on(wait_for("every record at least once", async || {
        let seen = seen.lock().unwrap();
        let distinct: std::collections::HashSet<&String> = seen.iter().map(|(_, v, _)| v).collect();
        distinct.len() >= 3000
    }));
    stops[2].store(true, Ordering::SeqCst);
    for member in members {
        rt.block_on(member).unwrap();
    }
    let seen = seen.lock().unwrap();
    let distinct: std::collections::HashSet<&String> = seen.iter().map(|(_, v, _)| v).collect();
    assert_eq!(distinct.len(), 3000, "at least once: no record is lost");
    // A record is delivered twice only when its partition moved between members.
    let mut owners: HashMap<u32, std::collections::HashSet<&str>> = HashMap::new();
    let mut deliveries: HashMap<&str, (usize, u32)> = HashMap::new();
    for (member, value, partition) in seen.iter() {
        owners.entry(*partition).or_default().insert(member);
        deliveries.entry(value).or_insert((0, *partition)).0 += 1;
    }
    for (value, (count, partition)) in deliveries {
        assert!(
            count == 1 || owners[&partition].len() > 1,
            "{value} was delivered {count} times from partition {partition}, which never moved"
        );
    }
}

#[test]
fn a_member_killed_with_kill_9_loses_its_partitions_after_its_session_timeout() {
    let broker = Broker::start(2, &[]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("jobs", 2)))
        .unwrap();
    let mut cli = Command::new(binary("shardlog"))
        .args([
            "consume",
            "jobs",
            "--group",
            "crew",
            "--from-beginning",
            "--session-timeout-ms",
            "2000",
        ])
        .env("SHARDLOG_BROKER", broker.addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    rt.block_on(wait_for(
        "the CLI member to own both partitions",
        async || {
            admin
                .describe_group("crew")
                .await
                .is_ok_and(|g| g.members.len() == 1 && g.members[0].assignment.len() == 2)
        },
    ));
    cli.kill().unwrap();
    cli.wait().unwrap();
    rt.block_on(async {
        let mut member = GroupConsumer::new(member_config(&broker, "crew"));
        member.subscribe(&["jobs"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while member.assignment().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the dead member's partitions never moved"
            );
            member.poll().await.unwrap();
        }
        let group = admin.describe_group("crew").await.unwrap();
        assert_eq!(group.members.len(), 1, "the killed member was dropped");
        member.close().await.unwrap();
    });
}

#[test]
fn committed_offsets_survive_a_restart_and_describe_shows_the_lag() {
    let mut broker = Broker::start(2, &[]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("ledger", 2)))
        .unwrap();
    rt.block_on(produce(
        &broker,
        "ledger",
        (0..100).map(|i| format!("l{i}")),
    ));
    rt.block_on(async {
        let mut member = GroupConsumer::new(member_config(&broker, "auditors"));
        member.subscribe(&["ledger"]);
        let mut count = 0;
        while count < 100 {
            count += member.poll().await.unwrap().len();
        }
        member.close().await.unwrap();
    });
    rt.block_on(produce(&broker, "ledger", (0..20).map(|i| format!("m{i}"))));
    let lag = |group: &shardlog_client::protocol::GroupDescription| {
        group
            .offsets
            .iter()
            .map(|o| o.log_end_offset - o.offset)
            .sum::<i64>()
    };
    let described = rt.block_on(admin.describe_group("auditors")).unwrap();
    assert_eq!(described.state, "empty");
    assert_eq!(lag(&described), 20);
    broker.stop();
    broker.restart();
    let admin = Admin::new(client_config(&broker));
    let described = rt.block_on(admin.describe_group("auditors")).unwrap();
    assert_eq!(
        described.offsets.iter().map(|o| o.offset).sum::<i64>(),
        100,
        "commits survive the restart"
    );
    assert_eq!(lag(&described), 20);
    let metrics = broker.scrape_metrics();
    let lag_series: i64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardlog_group_lag{group=\"auditors\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(lag_series, 20, "lag is on /metrics");
    let cli = Command::new(binary("shardlog"))
        .args(["group", "describe", "auditors"])
        .env("SHARDLOG_BROKER", broker.addr.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    let cli_lag: i64 = text
        .lines()
        .skip(2)
        .map(|l| l.split('\t').nth(5).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(cli_lag, 20, "{text}");
    // The same as JSON, for scripts.
    let cli = Command::new(binary("shardlog"))
        .args(["group", "describe", "auditors", "--format", "json"])
        .env("SHARDLOG_BROKER", broker.addr.to_string())
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let json: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("one JSON object");
    assert_eq!(json["group"], "auditors");
    assert_eq!(json["state"], "empty");
    assert_eq!(json["members"].as_array().map(Vec::len), Some(0), "{json}");
    let offsets = json["offsets"].as_array().expect("offsets");
    assert_eq!(offsets.len(), described.offsets.len(), "{json}");
    let json_lag: i64 = offsets
        .iter()
        .map(|o| o["lag"].as_i64().expect("a lag"))
        .sum();
    let committed: i64 = offsets
        .iter()
        .map(|o| o["committed_offset"].as_i64().expect("committed"))
        .sum();
    assert_eq!((json_lag, committed), (20, 100), "{json}");
}

#[test]
fn reset_works_on_an_empty_group_and_is_refused_otherwise() {
    let broker = Broker::start(2, &[]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("replay", 2)))
        .unwrap();
    rt.block_on(produce(&broker, "replay", (0..40).map(|i| format!("r{i}"))));
    rt.block_on(async {
        let mut member = GroupConsumer::new(member_config(&broker, "readers"));
        member.subscribe(&["replay"]);
        let mut count = 0;
        while count < 40 {
            count += member.poll().await.unwrap().len();
        }
        let refused = admin.reset_offsets("readers", "replay", Offset::Earliest).await;
        assert!(matches!(refused, Err(shardlog_client::Error::Broker(ref e)) if e.code == ErrorCode::GroupNotEmpty), "{refused:?}");
        let refused = admin.delete_group("readers").await;
        assert!(matches!(refused, Err(shardlog_client::Error::Broker(ref e)) if e.code == ErrorCode::GroupNotEmpty));
        member.close().await.unwrap();
        let reset = admin.reset_offsets("readers", "replay", Offset::Earliest).await.unwrap();
        assert!(reset.iter().all(|o| o.offset == 0));
        let mut member = GroupConsumer::new(member_config(&broker, "readers"));
        member.subscribe(&["replay"]);
        let mut again = 0;
        while again < 40 {
            again += member.poll().await.unwrap().len();
        }
        assert_eq!(again, 40, "after a reset to earliest everything is delivered again");
        member.close().await.unwrap();
        let to_offset = admin.reset_offsets("readers", "replay", Offset::At(5)).await.unwrap();
        assert!(to_offset.iter().all(|o| o.offset == 5));
        admin.delete_group("readers").await.unwrap();
        assert!(admin.list_groups().await.unwrap().iter().all(|g| g.group_id != "readers"));
    });
}

/// A member of `config`'s group that has consumed (and committed) the 20 records of "kept".
async fn consume_twenty(config: GroupConsumerConfig) -> GroupConsumer {
    let mut member = GroupConsumer::new(config);
    member.subscribe(&["kept"]);
    let mut count = 0;
    while count < 20 {
        count += member.poll().await.unwrap().len();
    }
    member.commit().await.unwrap();
    member
}

fn group_error(response: shardlog_client::protocol::Response) -> ErrorCode {
    match response {
        shardlog_client::protocol::Response::Error(error) => error.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn names_too_long_to_store_are_refused_before_anything_is_written() {
    use shardlog_client::protocol::{OffsetSpec, Request};
    let mut broker = Broker::start(1, &[]);
    let mut connection = broker.connect();
    shardlog_tests::create_topic(&mut connection, "real", 1);
    let commit = |group: &str, topic: &str| Request::OffsetCommit {
        group_id: group.into(),
        member_id: String::new(),
        offsets: vec![((topic.into(), 0), 1)],
    };
    let heartbeat = |group: &str, topic: &str| Request::GroupHeartbeat {
        group_id: group.into(),
        member_id: String::new(),
        member_epoch: 0,
        subscribed_topics: Some(vec![topic.into()]),
        owned: Vec::new(),
        session_timeout_ms: 10_000,
        assignor: String::new(),
    };
    let reset = |group: &str, topic: &str| Request::ResetOffsets {
        group_id: group.into(),
        topic: topic.into(),
        spec: OffsetSpec::Earliest,
        timestamp_ms: 0,
        to_offset: None,
    };
    let (long_group, huge_group) = ("g".repeat(201), "g".repeat(70_000));
    let (long_topic, huge_topic) = ("t".repeat(201), "t".repeat(70_000));
    for (request, code) in [
        (commit("g", &long_topic), ErrorCode::InvalidTopic),
        (commit("g", &huge_topic), ErrorCode::InvalidTopic),
        (commit(&long_group, "real"), ErrorCode::InvalidGroup),
        (commit(&huge_group, "real"), ErrorCode::InvalidGroup),
        (heartbeat("g", &huge_topic), ErrorCode::InvalidTopic),
        (heartbeat(&huge_group, "real"), ErrorCode::InvalidGroup),
        (reset("g", &huge_topic), ErrorCode::InvalidTopic),
        (reset(&huge_group, "real"), ErrorCode::InvalidGroup),
        (
            Request::DeleteGroup(huge_group.clone()),
            ErrorCode::InvalidGroup,
        ),
    ] {
        assert_eq!(group_error(connection.call(&request).unwrap()), code);
    }
    let mut huge_member = heartbeat("g", "real");
    if let Request::GroupHeartbeat { member_id, .. } = &mut huge_member {
        *member_id = "m".repeat(70_000);
    }
    assert_eq!(
        group_error(connection.call(&huge_member).unwrap()),
        ErrorCode::InvalidRequest
    );
    let too_big = Request::OffsetCommit {
        group_id: "g".into(),
        member_id: String::new(),
        offsets: (0..10_000)
            .map(|p| ((long_topic[..200].to_string(), p), 1))
            .collect(),
    };
    assert_eq!(
        group_error(connection.call(&too_big).unwrap()),
        ErrorCode::BatchTooLarge,
        "a commit larger than one __offsets batch is refused whole"
    );
    let longest = "g".repeat(200);
    assert!(matches!(
        connection.call(&commit(&longest, "real")).unwrap(),
        shardlog_client::protocol::Response::Done
    ));
    let listed = |connection: &mut shardlog_client::blocking::Connection| match connection
        .call(&Request::ListGroups)
        .unwrap()
    {
        shardlog_client::protocol::Response::Groups(groups) => groups,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        listed(&mut connection).len(),
        1,
        "only the valid commit made a group"
    );
    broker.stop();
    broker.restart();
    let mut connection = broker.connect();
    let groups = listed(&mut connection);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].0, longest, "replayed whole");
    let log = std::fs::read_to_string(&broker.log_path).unwrap();
    assert!(
        !log.contains("does not decode"),
        "no record of __offsets is damaged"
    );
}

#[test]
fn empty_groups_expire_after_the_retention_and_stay_deleted_across_a_restart() {
    let mut broker = Broker::start(2, &["--group-retention-ms", "1500"]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("kept", 2)))
        .unwrap();
    rt.block_on(produce(&broker, "kept", (0..20).map(|i| format!("k{i}"))));
    let stop = Arc::new(AtomicBool::new(false));
    let active = {
        let (member, stop) = (
            rt.block_on(consume_twenty(member_config(&broker, "active"))),
            stop.clone(),
        );
        rt.spawn(async move {
            let mut member = member;
            while !stop.load(Ordering::SeqCst) {
                member.poll().await.unwrap();
            }
            member.close().await.unwrap();
        })
    };
    let idle = member_config(&broker, "idle");
    rt.block_on(async { consume_twenty(idle).await.close().await.unwrap() });
    let listed = || async {
        let groups = admin.list_groups().await.unwrap();
        groups.into_iter().map(|g| g.group_id).collect::<Vec<_>>()
    };
    rt.block_on(wait_for("the idle group to expire", async || {
        !listed().await.contains(&"idle".to_string())
    }));
    let described = rt.block_on(admin.describe_group("active")).unwrap();
    assert_eq!(
        described.members.len(),
        1,
        "a group with members does not expire"
    );
    assert_eq!(described.offsets.iter().map(|o| o.offset).sum::<i64>(), 20);
    stop.store(true, Ordering::SeqCst);
    rt.block_on(active).unwrap();
    rt.block_on(wait_for(
        "the active group to expire once empty",
        async || listed().await.is_empty(),
    ));
    broker.stop();
    broker.restart();
    let admin = Admin::new(client_config(&broker));
    assert!(
        rt.block_on(admin.list_groups()).unwrap().is_empty(),
        "deletions are durable"
    );
    let refused = rt.block_on(admin.describe_group("idle"));
    assert!(
        matches!(refused, Err(shardlog_client::Error::Broker(ref e)) if e.code == ErrorCode::UnknownGroup)
    );
    let idle = member_config(&broker, "idle");
    let again = rt.block_on(async { consume_twenty(idle).await.close().await });
    again.unwrap();
}

#[test]
fn a_full_coordinator_refuses_new_groups_until_an_empty_one_expires() {
    let broker = Broker::start(
        1,
        &[
            "--groups-per-shard-max",
            "2",
            "--group-retention-ms",
            "1000",
        ],
    );
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("few", 1)))
        .unwrap();
    rt.block_on(produce(&broker, "few", (0..5).map(|i| format!("f{i}"))));
    let join = |group: &str| {
        let mut member = GroupConsumer::new(member_config(&broker, group));
        member.subscribe(&["few"]);
        member
    };
    let (mut first, mut second) = (join("first"), join("second"));
    rt.block_on(async {
        let mut count = 0;
        while count < 5 {
            count += first.poll().await.unwrap().len();
        }
        second.poll().await.unwrap();
        let mut third = join("third");
        match third.poll().await {
            Err(shardlog_client::Error::Broker(error)) => {
                assert_eq!(error.code, ErrorCode::Busy);
                assert!(error.is_retriable());
                assert!(error.message.contains("groups-per-shard-max"), "{}", error.message);
            }
            other => panic!("a third group does not fit: {other:?}"),
        }
        let outside = admin.reset_offsets("fourth", "few", Offset::Earliest).await;
        assert!(matches!(outside, Err(shardlog_client::Error::Broker(ref e)) if e.code == ErrorCode::Busy), "{outside:?}");
        first.close().await.unwrap();
        // "first" committed, so it stays until it expires; "second" keeps its member alive.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            second.poll().await.unwrap();
            match third.poll().await {
                Ok(_) if !third.member_id().is_empty() => break,
                Ok(_) => {}
                Err(shardlog_client::Error::Broker(error)) if error.code == ErrorCode::Busy => {}
                Err(other) => panic!("{other}"),
            }
            assert!(Instant::now() < deadline, "the expired group never made room");
        }
        let groups: Vec<String> = admin.list_groups().await.unwrap().into_iter().map(|g| g.group_id).collect();
        assert_eq!(groups, vec!["second".to_string(), "third".to_string()]);
        second.close().await.unwrap();
        third.close().await.unwrap();
    });
}

#[test]
fn a_member_without_a_committed_offset_starts_where_auto_offset_reset_says() {
    let broker = Broker::start(1, &[]);
    let rt = runtime();
    let admin = Admin::new(client_config(&broker));
    rt.block_on(admin.create_topic(NewTopic::new("fresh", 1)))
        .unwrap();
    rt.block_on(produce(&broker, "fresh", (0..10).map(|i| format!("f{i}"))));
    let member = |group: &str, reset: OffsetReset| {
        let mut config = member_config(&broker, group);
        config.consumer.auto_offset_reset = reset;
        let mut member = GroupConsumer::new(config);
        member.subscribe(&["fresh"]);
        member
    };
    rt.block_on(async {
        let mut strict = member("strict", OffsetReset::None);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match strict.poll().await {
                Ok(records) => {
                    assert!(records.is_empty(), "no record before a position");
                    assert!(
                        Instant::now() < deadline,
                        "none: the member is told its partition has no committed offset"
                    );
                }
                Err(shardlog_client::Error::NoCommittedOffset {
                    group,
                    topic,
                    partition,
                }) => {
                    assert_eq!(
                        (group.as_str(), topic.as_str(), partition),
                        ("strict", "fresh", 0)
                    );
                    break;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            matches!(
                strict.poll().await,
                Err(shardlog_client::Error::NoCommittedOffset { .. })
            ),
            "every poll until a seek"
        );
        strict.seek("fresh", 0, 7);
        let mut records = Vec::new();
        while records.len() < 3 {
            records.extend(strict.poll().await.unwrap());
        }
        assert_eq!(records[0].offset, 7);
        strict.close().await.unwrap();
        let committed = admin.describe_group("strict").await.unwrap();
        assert_eq!(committed.offsets[0].offset, 10);

        let mut latest = member("latest", OffsetReset::Latest);
        while latest.assignment().is_empty() {
            assert!(latest.poll().await.unwrap().is_empty());
        }
        for _ in 0..3 {
            assert!(
                latest.poll().await.unwrap().is_empty(),
                "latest: nothing old"
            );
        }
        produce(&broker, "fresh", std::iter::once("new".to_string())).await;
        let mut records = Vec::new();
        while records.is_empty() {
            records.extend(latest.poll().await.unwrap());
        }
        assert_eq!(records[0].offset, 10);
        latest.close().await.unwrap();
    });
}
