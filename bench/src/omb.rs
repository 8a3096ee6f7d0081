//! OpenMessaging Benchmark (OMB) workload files in, OMB result JSON out.
//!
//! OMB describes a workload in a flat YAML file (`topics: 1`,
//! `partitionsPerTopic: 16`, ...) and writes its results as the JSON of its
//! `TestResult` class, which its `bin/create_charts.py` draws. Reading the
//! same files and writing the same JSON puts shardlog's runs on the same
//! charts as the other systems OMB has drivers for.
//!
//! The files are read by a strict parser for the flat subset OMB's files
//! use (`key: value` lines, `#` comments, plain, single- or double-quoted
//! scalars), not by a general YAML crate: the workspace gains no dependency
//! (the well-known `serde_yaml` is deprecated and its forks are young), and
//! anything outside the subset — nesting, lists, anchors, multi-line
//! scalars, a key OMB does not have, a value of the wrong type — is an
//! error naming the line, where a lenient reader would run a different
//! workload than the file meant.
//!
//! Semantics follow OMB's `Workload` and `WorkloadGenerator`: see
//! [`OmbWorkload`] for each key.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;

use serde::Serialize;

use crate::report::Latency;

/// Bytes in one of OMB's "GB" of backlog: it multiplies by 1024³.
pub const OMB_BACKLOG_BYTES_PER_GB: u64 = 1 << 30;
/// Keys OMB's generators pick from for keyed distributions (its `KeyDistributor`).
pub const OMB_KEY_SPACE: u64 = 10_000;

/// A workload as an OMB workload file describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OmbWorkload {
    /// `name`: shown in results and chart titles [default: the file's stem].
    pub name: String,
    /// `topics`: how many topics to create.
    pub topics: u32,
    /// `partitionsPerTopic`.
    pub partitions_per_topic: u32,
    /// `messageSize`: bytes of each record's value.
    pub message_size_bytes: usize,
    /// `keyDistributor`: `NO_KEY` (sticky partitioning) [default], or
    /// `KEY_ROUND_ROBIN` / `RANDOM_NANO` (keys from [`OMB_KEY_SPACE`]).
    pub keyed: bool,
    /// `producersPerTopic`.
    pub producers_per_topic: u32,
    /// `producerRate`: records per second over all producers; 0 is as fast
    /// as possible (OMB instead searches for the highest sustainable rate).
    pub producer_rate_per_second: f64,
    /// `subscriptionsPerTopic`: consumer groups per topic, each reading everything.
    pub subscriptions_per_topic: u32,
    /// `consumerPerSubscription`: members of each group.
    pub consumers_per_subscription: u32,
    /// `consumerBacklogSizeGB`: > 0 pauses the consumers after the warmup
    /// until this much is unread (GB = 2^30 bytes, as OMB computes it),
    /// then lets them drain while the producers go on.
    pub consumer_backlog_size_gb: f64,
    /// `backlogDrainRatio`: the share of the backlog that must drain before
    /// the test duration starts counting down [default 1.0].
    pub backlog_drain_ratio: f64,
    /// `testDurationMinutes`.
    pub test_duration_minutes: f64,
    /// `warmupDurationMinutes` [default 1, as OMB].
    pub warmup_duration_minutes: f64,
}

/// A workload file that cannot be run as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmbParseError {
    /// 1-based line, 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for OmbParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.message),
            line => write!(f, "line {line}: {}", self.message),
        }
    }
}

impl std::error::Error for OmbParseError {}

fn error(line: usize, message: impl Into<String>) -> OmbParseError {
    OmbParseError {
        line,
        message: message.into(),
    }
}

/// Every key OMB's `Workload` has; the ones shardlog cannot honour are refused by value.
const KNOWN_KEYS: [&str; 17] = [
    "name",
    "topics",
    "partitionsPerTopic",
    "keyDistributor",
    "messageSize",
    "useRandomizedPayloads",
    "randomBytesRatio",
    "randomizedPayloadPoolSize",
    "payloadFile",
    "subscriptionsPerTopic",
    "producersPerTopic",
    "consumerPerSubscription",
    "producerRate",
    "consumerBacklogSizeGB",
    "backlogDrainRatio",
    "testDurationMinutes",
    "warmupDurationMinutes",
];

/// Keys a file must set (OMB has no useful default for them).
const REQUIRED_KEYS: [&str; 8] = [
    "topics",
    "partitionsPerTopic",
    "messageSize",
    "subscriptionsPerTopic",
    "producersPerTopic",
    "consumerPerSubscription",
    "producerRate",
    "testDurationMinutes",
];

/// Splits the flat YAML subset into `key → (line, scalar)`.
///
/// # Errors
/// A line that is not `key: scalar`, a repeated key, an unterminated quote.
pub fn parse_flat_yaml(text: &str) -> Result<BTreeMap<String, (usize, String)>, OmbParseError> {
    let mut entries = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim() == "---" && entries.is_empty() {
            continue;
        }
        if raw.trim_start().starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            return Err(error(
                line,
                "indented line: workload files are flat `key: value` lines",
            ));
        }
        let Some((key, rest)) = raw.split_once(':') else {
            return Err(error(line, format!("expected `key: value`, found {raw:?}")));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(error(line, format!("{key:?} is not a plain key")));
        }
        let value = scalar(rest, line)?;
        if entries.insert(key.to_string(), (line, value)).is_some() {
            return Err(error(line, format!("{key} is set twice")));
        }
    }
    Ok(entries)
}

/// The scalar after `key:`: quoted (no escapes beyond `''` in single
/// quotes) or plain up to a ` #` comment.
fn scalar(rest: &str, line: usize) -> Result<String, OmbParseError> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(error(
            line,
            "no value (nested maps and lists are not part of a workload file)",
        ));
    }
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
    let Some(quote) = quote else {
        let plain = rest.split(" #").next().unwrap_or(rest).trim();
        if plain.starts_with(['[', '{', '&', '*', '!', '|', '>']) {
            return Err(error(
                line,
                format!("{plain:?}: only plain or quoted scalars are supported"),
            ));
        }
        return Ok(plain.to_string());
    };
    let (body, after) =
        quoted(&rest[1..], quote).ok_or_else(|| error(line, "unterminated quoted string"))?;
    let after = after.trim();
    if !after.is_empty() && !after.starts_with('#') {
        return Err(error(
            line,
            format!("unexpected {after:?} after the quoted string"),
        ));
    }
    if quote == '"' && body.contains('\\') {
        return Err(error(line, "escape sequences in strings are not supported"));
    }
    Ok(body)
}

/// The text of a quoted scalar up to its closing `quote` (`''` stands for
/// `'` in single quotes), and what follows it.
fn quoted(text: &str, quote: char) -> Option<(String, &str)> {
    let mut body = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != quote {
            body.push(c);
            continue;
        }
        if quote == '\'' && chars.peek().is_some_and(|(_, next)| *next == '\'') {
            chars.next();
            body.push('\'');
            continue;
        }
        return Some((body, &text[at + 1..]));
    }
    None
}

impl OmbWorkload {
    /// Reads a workload file.
    ///
    /// # Errors
    /// The file cannot be read, or [`OmbWorkload::parse`] refuses it.
    pub fn load(path: &Path) -> anyhow::Result<OmbWorkload> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let stem = path
            .file_stem()
            .map_or_else(|| "workload".into(), |s| s.to_string_lossy().into_owned());
        OmbWorkload::parse(&text, &stem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses the text of a workload file; `default_name` names a file without `name`.
    ///
    /// # Errors
    /// See [`parse_flat_yaml`]; an unknown or missing key; a value of the
    /// wrong type or out of range; a setting shardlog cannot honour.
    pub fn parse(text: &str, default_name: &str) -> Result<OmbWorkload, OmbParseError> {
        let entries = parse_flat_yaml(text)?;
        if let Some((key, (line, _))) = entries
            .iter()
            .find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
        {
            return Err(error(
                *line,
                format!("unknown key {key} (OMB's workload keys: {KNOWN_KEYS:?})"),
            ));
        }
        if let Some(key) = REQUIRED_KEYS.iter().find(|k| !entries.contains_key(**k)) {
            return Err(error(0, format!("{key} is missing")));
        }
        let values = Values(&entries);
        values.refuse_randomized_payloads()?;
        let workload = OmbWorkload {
            name: values.text("name")?.unwrap_or_else(|| default_name.into()),
            topics: values.count("topics", 1)?,
            partitions_per_topic: values.count("partitionsPerTopic", 1)?,
            keyed: values.keyed()?,
            message_size_bytes: values.count("messageSize", 16)? as usize,
            producers_per_topic: values.count("producersPerTopic", 1)?,
            producer_rate_per_second: values.number("producerRate", 0.0, None)?,
            subscriptions_per_topic: values.count("subscriptionsPerTopic", 0)?,
            consumers_per_subscription: values.count("consumerPerSubscription", 0)?,
            consumer_backlog_size_gb: values.number("consumerBacklogSizeGB", 0.0, Some(0.0))?,
            backlog_drain_ratio: values.number("backlogDrainRatio", 0.0, Some(1.0))?,
            test_duration_minutes: values.number("testDurationMinutes", 0.0, None)?,
            warmup_duration_minutes: values.number("warmupDurationMinutes", 0.0, Some(1.0))?,
        };
        workload.check(&entries)?;
        Ok(workload)
    }

    /// Checks combinations, as OMB's generator does.
    fn check(&self, entries: &BTreeMap<String, (usize, String)>) -> Result<(), OmbParseError> {
        let line = |key: &str| entries.get(key).map_or(0, |(line, _)| *line);
        if self.backlog_drain_ratio > 1.0 {
            return Err(error(
                line("backlogDrainRatio"),
                "backlogDrainRatio must be between 0.0 and 1.0",
            ));
        }
        if self.consumer_backlog_size_gb > 0.0 && self.producer_rate_per_second == 0.0 {
            return Err(error(
                line("consumerBacklogSizeGB"),
                "a backlog needs a fixed producerRate (OMB refuses it with producerRate: 0 too)",
            ));
        }
        let consumers = self.subscriptions_per_topic * self.consumers_per_subscription;
        if self.consumer_backlog_size_gb > 0.0 && consumers == 0 {
            return Err(error(
                line("consumerBacklogSizeGB"),
                "a backlog needs consumers to drain it",
            ));
        }
        if self.test_duration_minutes <= 0.0 {
            return Err(error(
                line("testDurationMinutes"),
                "testDurationMinutes must be positive",
            ));
        }
        Ok(())
    }

    /// The backlog to build, in bytes (0: none).
    pub fn backlog_bytes(&self) -> u64 {
        (self.consumer_backlog_size_gb * OMB_BACKLOG_BYTES_PER_GB as f64) as u64
    }
}

/// Typed access to the parsed entries.
struct Values<'a>(&'a BTreeMap<String, (usize, String)>);

impl Values<'_> {
    fn text(&self, key: &str) -> Result<Option<String>, OmbParseError> {
        Ok(self.0.get(key).map(|(_, value)| value.clone()))
    }

    /// A whole number ≥ `min` (OMB's `int` fields).
    fn count(&self, key: &str, min: u32) -> Result<u32, OmbParseError> {
        let (line, value) = self
            .0
            .get(key)
            .ok_or_else(|| error(0, format!("{key} is missing")))?;
        let count: u32 = value.parse().map_err(|_| {
            error(
                *line,
                format!("{key}: {value:?} is not a whole number ≥ {min}"),
            )
        })?;
        if count < min {
            return Err(error(*line, format!("{key} must be at least {min}")));
        }
        Ok(count)
    }

    /// A number ≥ `min`; `default` for an absent optional key. Decimals are
    /// accepted where OMB has whole numbers (minutes, GB), so that a short
    /// trial run can be written; OMB's own files use whole numbers.
    fn number(&self, key: &str, min: f64, default: Option<f64>) -> Result<f64, OmbParseError> {
        let Some((line, value)) = self.0.get(key) else {
            return default.ok_or_else(|| error(0, format!("{key} is missing")));
        };
        let number: f64 = value
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| error(*line, format!("{key}: {value:?} is not a number")))?;
        if number < min {
            return Err(error(*line, format!("{key} must be at least {min}")));
        }
        Ok(number)
    }

    fn keyed(&self) -> Result<bool, OmbParseError> {
        match self.0.get("keyDistributor") {
            None => Ok(false),
            Some((_, v)) if v == "NO_KEY" => Ok(false),
            Some((_, v)) if v == "KEY_ROUND_ROBIN" || v == "RANDOM_NANO" => Ok(true),
            Some((line, v)) => Err(error(
                *line,
                format!("keyDistributor {v:?}: use NO_KEY, KEY_ROUND_ROBIN or RANDOM_NANO"),
            )),
        }
    }

    /// shardlog's values carry their send time and a fixed filler; random
    /// payloads (which matter for compression) are not generated.
    fn refuse_randomized_payloads(&self) -> Result<(), OmbParseError> {
        match self.0.get("useRandomizedPayloads") {
            None => Ok(()),
            Some((_, v)) if v == "false" => Ok(()),
            Some((line, v)) if v == "true" => Err(error(
                *line,
                "useRandomizedPayloads: true is not supported (values are the send time and a fixed filler)",
            )),
            Some((line, v)) => Err(error(
                *line,
                format!("useRandomizedPayloads: {v:?} is not true or false"),
            )),
        }
    }
}

/// One 10-second window of a run, as OMB's driver samples it.
#[derive(Debug, Clone, Default)]
pub struct WindowStats {
    /// The window's length in seconds (the last one may be shorter).
    pub seconds: f64,
    /// Records acknowledged in the window.
    pub published: u64,
    /// Sends that failed in the window.
    pub publish_errors: u64,
    /// Records received in the window, over every subscription.
    pub consumed: u64,
    /// Records produced but not yet consumed at the window's end, over every subscription.
    pub backlog: u64,
    /// Send → acknowledgement.
    pub publish: Latency,
    /// Intended send time → actual send (in OMB, microseconds).
    pub publish_delay: Latency,
    /// Send → receipt.
    pub end_to_end: Latency,
}

/// What the result file describes besides the windows.
#[derive(Debug, Clone)]
pub struct OmbShape {
    /// The workload's name.
    pub workload: String,
    /// Bytes of each record's value.
    pub message_size_bytes: u64,
    /// Topics.
    pub topics: u32,
    /// Partitions per topic.
    pub partitions: u32,
    /// Producers per topic.
    pub producers_per_topic: u32,
    /// Members per subscription (OMB's `consumersPerTopic` is `consumerPerSubscription`).
    pub consumers_per_topic: u32,
}

/// The aggregated histograms of the measured part of the run.
#[derive(Debug, Clone, Copy)]
pub struct OmbTotals<'a> {
    /// Send → acknowledgement.
    pub publish: &'a Latency,
    /// Intended → actual send.
    pub publish_delay: &'a Latency,
    /// Send → receipt.
    pub end_to_end: &'a Latency,
}

/// OMB's `TestResult`, field for field: latencies in milliseconds except
/// the publish delay (microseconds), rates in records per second, one
/// array entry per 10-second window.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OmbResult {
    pub workload: String,
    pub driver: String,
    pub message_size: u64,
    pub topics: u32,
    pub partitions: u32,
    pub producers_per_topic: u32,
    pub consumers_per_topic: u32,
    pub publish_rate: Vec<f64>,
    pub publish_error_rate: Vec<f64>,
    pub consume_rate: Vec<f64>,
    pub backlog: Vec<u64>,
    #[serde(flatten)]
    pub publish_latency: WindowSeries<PublishLatency>,
    #[serde(flatten)]
    pub publish_delay_latency: WindowSeries<PublishDelayLatency>,
    #[serde(flatten)]
    pub end_to_end_latency: WindowSeries<EndToEndLatency>,
    #[serde(flatten)]
    pub aggregated_publish_latency: Aggregated<AggregatedPublishLatency>,
    #[serde(flatten)]
    pub aggregated_publish_delay_latency: Aggregated<AggregatedPublishDelayLatency>,
    #[serde(flatten)]
    pub aggregated_end_to_end_latency: Aggregated<AggregatedEndToEndLatency>,
}

/// The name prefix of a family of latency fields, and its unit.
pub trait SeriesName {
    /// E.g. `publishLatency`.
    const PREFIX: &'static str;
    /// Microseconds per unit written: 1000 for milliseconds, 1 for microseconds.
    const US_PER_UNIT: f64;
}

macro_rules! series_name {
    ($type:ident, $prefix:literal, $us_per_unit:literal) => {
        #[doc = concat!("The `", $prefix, "…` fields.")]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $type;
        impl SeriesName for $type {
            const PREFIX: &'static str = $prefix;
            const US_PER_UNIT: f64 = $us_per_unit;
        }
    };
}

series_name!(PublishLatency, "publishLatency", 1000.0);
series_name!(PublishDelayLatency, "publishDelayLatency", 1.0);
series_name!(EndToEndLatency, "endToEndLatency", 1000.0);
series_name!(AggregatedPublishLatency, "aggregatedPublishLatency", 1000.0);
series_name!(
    AggregatedPublishDelayLatency,
    "aggregatedPublishDelayLatency",
    1.0
);
series_name!(
    AggregatedEndToEndLatency,
    "aggregatedEndToEndLatency",
    1000.0
);

/// The field suffixes OMB writes for a latency family, with their quantile (None: the mean).
const SUFFIXES: [(&str, Option<f64>); 9] = [
    ("Avg", None),
    ("50pct", Some(0.5)),
    ("75pct", Some(0.75)),
    ("95pct", Some(0.95)),
    ("99pct", Some(0.99)),
    ("999pct", Some(0.999)),
    ("9999pct", Some(0.9999)),
    ("99999pct", Some(0.99999)),
    ("Max", Some(1.0)),
];

fn statistic(latency: &Latency, quantile: Option<f64>, us_per_unit: f64) -> f64 {
    let us = match quantile {
        None => latency.mean_us(),
        Some(q) if q >= 1.0 => latency.max_us() as f64,
        Some(q) => latency.quantile_us(q) as f64,
    };
    us / us_per_unit
}

/// `<prefix>Avg`, `<prefix>50pct`, … `<prefix>Max`: one array each, one entry per window.
#[derive(Debug, Clone, Default)]
pub struct WindowSeries<N: SeriesName> {
    windows: Vec<Latency>,
    name: PhantomData<N>,
}

impl<N: SeriesName> Serialize for WindowSeries<N> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(SUFFIXES.len()))?;
        for (suffix, quantile) in SUFFIXES {
            let values: Vec<f64> = self
                .windows
                .iter()
                .map(|l| statistic(l, quantile, N::US_PER_UNIT))
                .collect();
            map.serialize_entry(&format!("{}{suffix}", N::PREFIX), &values)?;
        }
        map.end()
    }
}

/// `<prefix>Avg` … `<prefix>Max` scalars and `<prefix>Quantiles`, over the whole measured run.
#[derive(Debug, Clone, Default)]
pub struct Aggregated<N: SeriesName> {
    total: Latency,
    name: PhantomData<N>,
}

impl<N: SeriesName> Serialize for Aggregated<N> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(SUFFIXES.len() + 1))?;
        for (suffix, quantile) in SUFFIXES {
            let value = statistic(&self.total, quantile, N::US_PER_UNIT);
            map.serialize_entry(&format!("{}{suffix}", N::PREFIX), &value)?;
        }
        let quantiles: BTreeMap<String, f64> = self
            .total
            .quantile_curve()
            .into_iter()
            .map(|(percentile, us)| (format!("{percentile}"), us as f64 / N::US_PER_UNIT))
            .collect();
        map.serialize_entry(&format!("{}Quantiles", N::PREFIX), &quantiles)?;
        map.end()
    }
}

impl OmbResult {
    /// Builds the result from a run's windows and totals.
    pub fn new(shape: &OmbShape, windows: &[WindowStats], totals: OmbTotals<'_>) -> OmbResult {
        let rate = |n: u64, w: &WindowStats| n as f64 / w.seconds.max(1e-9);
        let series = |pick: fn(&WindowStats) -> &Latency| -> Vec<Latency> {
            windows.iter().map(|w| pick(w).clone()).collect()
        };
        OmbResult {
            workload: shape.workload.clone(),
            driver: "shardlog".into(),
            message_size: shape.message_size_bytes,
            topics: shape.topics,
            partitions: shape.partitions,
            producers_per_topic: shape.producers_per_topic,
            consumers_per_topic: shape.consumers_per_topic,
            publish_rate: windows.iter().map(|w| rate(w.published, w)).collect(),
            publish_error_rate: windows.iter().map(|w| rate(w.publish_errors, w)).collect(),
            consume_rate: windows.iter().map(|w| rate(w.consumed, w)).collect(),
            backlog: windows.iter().map(|w| w.backlog).collect(),
            publish_latency: WindowSeries {
                windows: series(|w| &w.publish),
                name: PhantomData,
            },
            publish_delay_latency: WindowSeries {
                windows: series(|w| &w.publish_delay),
                name: PhantomData,
            },
            end_to_end_latency: WindowSeries {
                windows: series(|w| &w.end_to_end),
                name: PhantomData,
            },
            aggregated_publish_latency: Aggregated {
                total: totals.publish.clone(),
                name: PhantomData,
            },
            aggregated_publish_delay_latency: Aggregated {
                total: totals.publish_delay.clone(),
                name: PhantomData,
            },
            aggregated_end_to_end_latency: Aggregated {
                total: totals.end_to_end.clone(),
                name: PhantomData,
            },
        }
    }

    /// Writes the result file.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as OMB ships them (`workloads/1-topic-16-partitions-1kb.yaml`).
    const GOOD: &str = "# A comment line\n\
        name: 1 topic / 16 partitions / 1Kb\n\
        \n\
        topics: 1\n\
        partitionsPerTopic: 16\n\
        keyDistributor: \"NO_KEY\"\n\
        messageSize: 1024\n\
        payloadFile: \"payload/payload-1Kb.data\"\n\
        subscriptionsPerTopic: 1\n\
        consumerPerSubscription: 1\n\
        producersPerTopic: 1\n\
        producerRate: 50000   # messages per second, all producers\n\
        consumerBacklogSizeGB: 0\n\
        testDurationMinutes: 15\n";

    #[test]
    fn a_good_file_parses_with_omb_defaults() {
        let workload = OmbWorkload::parse(GOOD, "stem").unwrap();
        assert_eq!(workload.name, "1 topic / 16 partitions / 1Kb");
        assert_eq!(workload.topics, 1);
        assert_eq!(workload.partitions_per_topic, 16);
        assert_eq!(workload.message_size_bytes, 1024);
        assert!(!workload.keyed);
        assert_eq!(workload.producer_rate_per_second, 50_000.0);
        assert_eq!(workload.subscriptions_per_topic, 1);
        assert_eq!(workload.consumers_per_subscription, 1);
        assert_eq!(workload.test_duration_minutes, 15.0);
        assert_eq!(workload.warmup_duration_minutes, 1.0, "OMB's default");
        assert_eq!(workload.backlog_drain_ratio, 1.0, "OMB's default");
        assert_eq!(workload.backlog_bytes(), 0);
        let unnamed = OmbWorkload::parse(
            &GOOD.replace("name: 1 topic / 16 partitions / 1Kb\n", ""),
            "stem",
        )
        .unwrap();
        assert_eq!(unnamed.name, "stem");
        let quoted = OmbWorkload::parse(
            &GOOD.replace("name: 1 topic", "name: 'it''s 1 topic'  # x\nx_: 1"),
            "s",
        );
        assert!(quoted.is_err(), "x_ is not an OMB key");
        let quoted = OmbWorkload::parse(
            &GOOD.replace(
                "name: 1 topic / 16 partitions / 1Kb",
                "name: 'it''s one'  # x",
            ),
            "s",
        )
        .unwrap();
        assert_eq!(quoted.name, "it's one");
        let backlog = OmbWorkload::parse(
            &GOOD.replace("consumerBacklogSizeGB: 0", "consumerBacklogSizeGB: 1"),
            "s",
        )
        .unwrap();
        assert_eq!(backlog.backlog_bytes(), 1 << 30);
    }

    #[test]
    fn the_shipped_workload_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let workload = OmbWorkload::load(&path).unwrap();
            assert!(
                workload.test_duration_minutes <= 1.0,
                "{}: short enough to run here",
                path.display()
            );
            count += 1;
        }
        assert!(count >= 3, "{count} files in {}", dir.display());
    }

    fn refused(text: &str) -> OmbParseError {
        match OmbWorkload::parse(text, "w") {
            Err(error) => error,
            Ok(workload) => panic!("accepted {workload:?}"),
        }
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let error = refused(&GOOD.replace("topics: 1\n", "topics: 1\npartitionPerTopic: 4\n"));
        assert_eq!(error.line, 5);
        assert!(
            error.message.contains("unknown key partitionPerTopic"),
            "{error}"
        );
        assert!(format!("{error}").starts_with("line 5: "));
    }

    #[test]
    fn bad_values_and_shapes_are_refused() {
        let cases = [
            (
                "partitionsPerTopic: 16",
                "partitionsPerTopic: sixteen",
                "not a whole number",
            ),
            (
                "partitionsPerTopic: 16",
                "partitionsPerTopic: 0",
                "at least 1",
            ),
            (
                "partitionsPerTopic: 16",
                "partitionsPerTopic: -3",
                "not a whole number",
            ),
            ("messageSize: 1024", "messageSize: 8", "at least 16"),
            ("producerRate: 50000", "producerRate: fast", "not a number"),
            (
                "testDurationMinutes: 15",
                "testDurationMinutes: 0",
                "must be positive",
            ),
            (
                "keyDistributor: \"NO_KEY\"",
                "keyDistributor: RANDOM",
                "keyDistributor",
            ),
            ("topics: 1", "topics: 1\ntopics: 2", "set twice"),
            ("topics: 1", "topics:\n  - 1", "no value"),
            ("topics: 1", "topics: [1, 2]", "only plain or quoted"),
            (
                "name: 1 topic / 16 partitions / 1Kb",
                "name: \"open",
                "unterminated",
            ),
            ("topics: 1", "topics 1", "expected `key: value`"),
            (
                "producerRate: 50000",
                "producerRate: 0\nconsumerBacklogSizeGB: 1",
                "set twice",
            ),
        ];
        for (from, to, expected) in cases {
            let error = refused(&GOOD.replace(from, to));
            assert!(error.message.contains(expected), "{to:?}: {error}");
            assert!(error.line > 0, "{to:?} names its line: {error}");
        }
        let missing = refused(&GOOD.replace("messageSize: 1024\n", ""));
        assert_eq!(missing.message, "messageSize is missing");
        let no_rate = refused(
            &GOOD
                .replace("producerRate: 50000", "producerRate: 0")
                .replace("consumerBacklogSizeGB: 0", "consumerBacklogSizeGB: 2"),
        );
        assert!(no_rate.message.contains("fixed producerRate"), "{no_rate}");
        let random = refused(&format!("{GOOD}useRandomizedPayloads: true\n"));
        assert!(random.message.contains("not supported"), "{random}");
    }

    /// The keys OMB's `bin/create_charts.py` reads from every result file.
    const CHART_KEYS: [&str; 11] = [
        "workload",
        "driver",
        "publishLatency99pct",
        "publishDelayLatency99pct",
        "publishRate",
        "endToEndLatency95pct",
        "consumeRate",
        "endToEndLatencyAvg",
        "aggregatedPublishLatencyQuantiles",
        "aggregatedPublishDelayLatencyQuantiles",
        "aggregatedEndToEndLatencyQuantiles",
    ];

    #[test]
    fn the_result_has_omb_keys_and_units() {
        let mut window = WindowStats {
            seconds: 10.0,
            published: 5000,
            consumed: 4000,
            backlog: 1000,
            ..WindowStats::default()
        };
        for us in [500, 1000, 2000] {
            window.publish.record_us(us);
            window.end_to_end.record_us(us * 2);
        }
        window.publish_delay.record_us(30);
        let shape = OmbShape {
            workload: "w".into(),
            message_size_bytes: 1024,
            topics: 1,
            partitions: 16,
            producers_per_topic: 2,
            consumers_per_topic: 3,
        };
        let totals = OmbTotals {
            publish: &window.publish,
            publish_delay: &window.publish_delay,
            end_to_end: &window.end_to_end,
        };
        let result = OmbResult::new(&shape, std::slice::from_ref(&window), totals);
        let value = serde_json::to_value(&result).unwrap();
        for key in CHART_KEYS {
            assert!(value.get(key).is_some(), "create_charts.py reads {key}");
        }
        for key in [
            "messageSize",
            "topics",
            "partitions",
            "producersPerTopic",
            "consumersPerTopic",
            "publishErrorRate",
            "backlog",
            "publishLatencyAvg",
            "publishLatency50pct",
            "publishLatency75pct",
            "publishLatency95pct",
            "publishLatency999pct",
            "publishLatency9999pct",
            "publishLatencyMax",
            "endToEndLatency50pct",
            "endToEndLatencyMax",
            "aggregatedPublishLatencyAvg",
            "aggregatedPublishLatency99pct",
            "aggregatedPublishLatencyMax",
            "aggregatedEndToEndLatency9999pct",
            "aggregatedPublishDelayLatency50pct",
        ] {
            assert!(value.get(key).is_some(), "TestResult has {key}");
        }
        assert_eq!(value["driver"], "shardlog");
        assert_eq!(value["consumersPerTopic"], 3);
        assert_eq!(value["publishRate"][0], 500.0, "records per second");
        assert_eq!(value["consumeRate"][0], 400.0);
        assert_eq!(value["backlog"][0], 1000);
        assert_eq!(value["publishLatency50pct"][0], 1.0, "milliseconds");
        assert_eq!(value["publishLatencyMax"][0], 2.0);
        assert_eq!(
            value["endToEndLatencyAvg"][0].as_f64().unwrap().round(),
            2.0
        );
        assert_eq!(
            value["publishDelayLatency50pct"][0], 30.0,
            "microseconds, as in OMB"
        );
        assert_eq!(value["aggregatedPublishLatency50pct"], 1.0);
        let quantiles = value["aggregatedEndToEndLatencyQuantiles"]
            .as_object()
            .unwrap();
        assert!(!quantiles.is_empty());
        for (percentile, ms) in quantiles {
            let percentile: f64 = percentile.parse().unwrap();
            assert!((0.0..=100.0).contains(&percentile), "{percentile}");
            assert!((1.0..=4.01).contains(&ms.as_f64().unwrap()), "{ms}");
        }
    }
}
