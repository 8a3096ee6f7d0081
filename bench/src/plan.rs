//! The shape of a run: topics, producers, consumers, rate, length.
//!
//! The options describe one topic with N producers and M consumers; an OMB
//! workload file describes T topics, each with its producers and its
//! subscriptions (consumer groups). Both become a [`Plan`], and the run
//! only ever looks at the plan, so the two cannot drift apart.

use std::time::Duration;

use serde::Serialize;

use crate::config::{BenchConfig, Workload};
use crate::omb::{OmbShape, OmbWorkload, OMB_KEY_SPACE};

/// How the consumers find their partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consumers {
    /// No consumers.
    None,
    /// `count` consumers, each assigned every `count`-th partition of the
    /// (single) topic, from the earliest offset (`catch_up`) or the latest.
    Assigned {
        /// Consumers.
        count: usize,
        /// From the beginning (a catch-up read) rather than the end.
        catch_up: bool,
    },
    /// `subscriptions_per_topic` consumer groups on every topic, each with
    /// `members` `GroupConsumer`s subscribed to it; each group reads everything.
    Groups {
        /// Groups per topic.
        subscriptions_per_topic: usize,
        /// Members of each group.
        members: usize,
        /// The id of the single group of the `group` workload; OMB runs
        /// name theirs after the topic.
        group_id: Option<String>,
    },
}

/// The run, resolved from the options and any workload file.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The workload's name (the OMB file's `name`, or the workload kind).
    pub name: String,
    /// Topic names.
    pub topics: Vec<String>,
    /// Partitions of each topic.
    pub partitions_per_topic: u32,
    /// Bytes of each record's value.
    pub record_size_bytes: usize,
    /// Distinct keys (0: no keys).
    pub key_space: u64,
    /// Producer clients per topic.
    pub producers_per_topic: usize,
    /// Records per second over all producers; None: as fast as possible.
    pub rate_per_second: Option<f64>,
    /// Records to send over all producers, for a run bounded by count.
    pub records: Option<u64>,
    /// The measured time, for a run bounded by time.
    #[serde(serialize_with = "seconds")]
    pub duration: Option<Duration>,
    /// Excluded time at the start of the load.
    #[serde(serialize_with = "seconds")]
    pub warmup: Option<Duration>,
    /// The consumers.
    pub consumers: Consumers,
    /// A backlog to build before the consumers read (bytes of values; 0: none).
    pub backlog_bytes: u64,
    /// The share of the backlog that must drain before the duration counts down.
    pub backlog_drain_ratio: f64,
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Plan {
    /// The plan of a workload given by options alone.
    pub fn from_options(config: &BenchConfig) -> Plan {
        assert!(
            config.workload != Workload::Omb,
            "a workload file has its own plan"
        );
        let consumers = match config.workload {
            Workload::Produce => Consumers::None,
            Workload::Group => Consumers::Groups {
                subscriptions_per_topic: 1,
                members: config.consumers,
                group_id: Some(config.group.clone()),
            },
            workload => Consumers::Assigned {
                count: config.consumers,
                catch_up: workload == Workload::Consume,
            },
        };
        Plan {
            name: config.workload.name(),
            topics: vec![config.topic.clone()],
            partitions_per_topic: config.partitions,
            record_size_bytes: config.record_size,
            key_space: config.key_space,
            producers_per_topic: config.producers.max(1),
            rate_per_second: config.rate,
            records: config.records,
            duration: config.duration_secs().map(Duration::from_secs_f64),
            warmup: Some(Duration::from_secs_f64(config.warmup)),
            consumers,
            backlog_bytes: 0,
            backlog_drain_ratio: 1.0,
        }
    }

    /// The plan of an OMB workload: `topic_suffix` keeps this run's topics
    /// apart from an earlier run's on the same broker (OMB adds a random
    /// suffix too). `--duration` and `--warmup`, when given, override the file.
    pub fn from_omb(config: &BenchConfig, omb: &OmbWorkload, topic_suffix: &str) -> Plan {
        let minutes = |m: f64| Duration::from_secs_f64(m * 60.0);
        let duration = config
            .duration
            .map(Duration::from_secs_f64)
            .unwrap_or_else(|| minutes(omb.test_duration_minutes));
        let warmup = match config.warmup {
            w if w > 0.0 => Duration::from_secs_f64(w),
            _ => minutes(omb.warmup_duration_minutes),
        };
        let consumers = match omb.subscriptions_per_topic * omb.consumers_per_subscription {
            0 => Consumers::None,
            _ => Consumers::Groups {
                subscriptions_per_topic: omb.subscriptions_per_topic as usize,
                members: omb.consumers_per_subscription as usize,
                group_id: None,
            },
        };
        Plan {
            name: omb.name.clone(),
            topics: (0..omb.topics)
                .map(|i| format!("{}-{topic_suffix}-{i:04}", config.topic))
                .collect(),
            partitions_per_topic: omb.partitions_per_topic,
            record_size_bytes: omb.message_size_bytes,
            key_space: if omb.keyed { OMB_KEY_SPACE } else { 0 },
            producers_per_topic: omb.producers_per_topic as usize,
            rate_per_second: (omb.producer_rate_per_second > 0.0)
                .then_some(omb.producer_rate_per_second),
            records: None,
            duration: Some(duration),
            warmup: Some(warmup),
            consumers,
            backlog_bytes: omb.backlog_bytes(),
            backlog_drain_ratio: omb.backlog_drain_ratio,
        }
    }

    /// Producer clients over all topics.
    pub fn producer_count(&self) -> usize {
        self.topics.len() * self.producers_per_topic
    }

    /// How many times each record is read (one per subscription or consumer set).
    pub fn reads_per_record(&self) -> u64 {
        match &self.consumers {
            Consumers::None => 0,
            Consumers::Assigned { .. } => 1,
            Consumers::Groups {
                subscriptions_per_topic,
                ..
            } => *subscriptions_per_topic as u64,
        }
    }

    /// The group ids of topic `topic_index`.
    pub fn group_ids(&self, topic_index: usize) -> Vec<String> {
        let Consumers::Groups {
            subscriptions_per_topic,
            group_id,
            ..
        } = &self.consumers
        else {
            return Vec::new();
        };
        match group_id {
            Some(id) => vec![id.clone()],
            None => (0..*subscriptions_per_topic)
                .map(|s| format!("{}-sub-{s:03}", self.topics[topic_index]))
                .collect(),
        }
    }

    /// What OMB's result file says about the run's shape.
    pub fn omb_shape(&self) -> OmbShape {
        let consumers_per_topic = match &self.consumers {
            Consumers::None => 0,
            Consumers::Assigned { count, .. } => *count,
            Consumers::Groups { members, .. } => *members,
        };
        OmbShape {
            workload: self.name.clone(),
            message_size_bytes: self.record_size_bytes as u64,
            topics: self.topics.len() as u32,
            partitions: self.partitions_per_topic,
            producers_per_topic: self.producers_per_topic as u32,
            consumers_per_topic: consumers_per_topic as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const FILE: &str = "name: 2 topics / 8 partitions\n\
                        topics: 2\n\
                        partitionsPerTopic: 8\n\
                        messageSize: 512\n\
                        keyDistributor: \"KEY_ROUND_ROBIN\"\n\
                        subscriptionsPerTopic: 2\n\
                        consumerPerSubscription: 3\n\
                        producersPerTopic: 4\n\
                        producerRate: 20000\n\
                        consumerBacklogSizeGB: 1\n\
                        testDurationMinutes: 2\n\
                        warmupDurationMinutes: 1\n";

    #[test]
    fn an_omb_workload_maps_onto_the_plan() {
        let config = BenchConfig::try_parse_from(["shardlog-bench", "workload", "w.yaml"]).unwrap();
        let omb = OmbWorkload::parse(FILE, "w").unwrap();
        let plan = Plan::from_omb(&config, &omb, "abc");
        assert_eq!(plan.topics, ["bench-abc-0000", "bench-abc-0001"]);
        assert_eq!(plan.partitions_per_topic, 8);
        assert_eq!(plan.record_size_bytes, 512);
        assert_eq!(plan.key_space, OMB_KEY_SPACE);
        assert_eq!(plan.producer_count(), 8);
        assert_eq!(plan.rate_per_second, Some(20_000.0));
        assert_eq!(plan.duration, Some(Duration::from_secs(120)));
        assert_eq!(plan.warmup, Some(Duration::from_secs(60)));
        assert_eq!(plan.backlog_bytes, 1 << 30);
        assert_eq!(plan.reads_per_record(), 2);
        assert_eq!(
            plan.group_ids(1),
            ["bench-abc-0001-sub-000", "bench-abc-0001-sub-001"]
        );
        assert_eq!(plan.omb_shape().consumers_per_topic, 3);
        // --duration and --warmup shorten a trial run.
        let short = BenchConfig::try_parse_from([
            "shardlog-bench",
            "workload",
            "w.yaml",
            "--duration",
            "5",
            "--warmup",
            "1",
        ])
        .unwrap();
        let plan = Plan::from_omb(&short, &omb, "abc");
        assert_eq!(plan.duration, Some(Duration::from_secs(5)));
        assert_eq!(plan.warmup, Some(Duration::from_secs(1)));
        // producerRate 0: as fast as possible.
        let omb = OmbWorkload::parse(
            &FILE
                .replace("producerRate: 20000", "producerRate: 0")
                .replace("consumerBacklogSizeGB: 1", "consumerBacklogSizeGB: 0"),
            "w",
        )
        .unwrap();
        assert_eq!(Plan::from_omb(&config, &omb, "x").rate_per_second, None);
    }

    #[test]
    fn options_map_onto_the_plan() {
        let config = BenchConfig::try_parse_from([
            "shardlog-bench",
            "group",
            "--consumers",
            "2",
            "--group",
            "g",
            "--records",
            "10",
        ])
        .unwrap();
        let plan = Plan::from_options(&config);
        assert_eq!(plan.topics, ["bench"]);
        assert_eq!(plan.group_ids(0), ["g"]);
        assert_eq!(plan.records, Some(10));
        assert_eq!(plan.duration, None);
        let consume = BenchConfig::try_parse_from(["shardlog-bench", "consume"]).unwrap();
        assert_eq!(
            Plan::from_options(&consume).consumers,
            Consumers::Assigned {
                count: 1,
                catch_up: true
            }
        );
    }
}
