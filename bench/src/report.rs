//! Latency histograms, the summary table, the JSON file and the plot.
//!
//! The JSON file is the table's figures with their units in the names
//! (`..._us`, `..._bytes`, `..._s_per_gb`) plus the options and the plan
//! they came from, so that a sitting's write-up can be rebuilt from it.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::BenchConfig;
use crate::plan::Plan;
use crate::resources::Usage;

/// The largest latency recorded (longer ones are clamped): one hour in microseconds.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
        }
    }
}

impl Latency {
    /// Records one latency.
    pub fn record_us(&mut self, micros: u64) {
        let _ = self.histogram.record(micros.clamp(1, LATENCY_US_MAX));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The mean, in microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        self.histogram.mean()
    }

    /// The largest recorded, in microseconds (0 when empty).
    pub fn max_us(&self) -> u64 {
        self.histogram.max()
    }

    /// The value at `quantile` (0..=1), in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        assert!((0.0..=1.0).contains(&quantile));
        self.histogram.value_at_quantile(quantile)
    }

    /// (percentile, microseconds) at the steps OMB reports its aggregated
    /// quantiles at (HdrHistogram's percentile iteration, 100 ticks per
    /// half distance).
    pub fn quantile_curve(&self) -> Vec<(f64, u64)> {
        if self.count() == 0 {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(100)
            .map(|v| (v.percentile(), v.value_iterated_to()))
            .collect()
    }

    /// The percentiles the report shows.
    pub fn percentiles(&self) -> Percentiles {
        let q = |quantile: f64| self.histogram.value_at_quantile(quantile);
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: self.histogram.max(),
        }
    }

    /// (percentile, microseconds) points for the percentile curve.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        [
            0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, self.histogram.value_at_percentile(*p)))
        .collect()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

/// The histograms one task keeps, and a run's once merged.
#[derive(Debug, Clone, Default)]
pub struct Histograms {
    /// Send → acknowledgement (from the intended send time under a rate).
    pub publish: Latency,
    /// Intended send time → the moment the record was handed to the producer.
    pub publish_delay: Latency,
    /// Send time carried in the value → receipt: end-to-end latency, or a
    /// catch-up read's record age.
    pub end_to_end: Latency,
    /// Each consumer poll that returned records, from call to return.
    pub poll: Latency,
}

impl Histograms {
    /// Adds another set's counts.
    pub fn merge(&mut self, other: &Histograms) {
        self.publish.merge(&other.publish);
        self.publish_delay.merge(&other.publish_delay);
        self.end_to_end.merge(&other.end_to_end);
        self.poll.merge(&other.poll);
    }
}

/// The counts of a run that the report is built from.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Records the workload counts (acknowledged; consumed in `consume`).
    pub records: u64,
    /// Bytes of those records' values.
    pub bytes: u64,
    /// Records consumers received in the window, over every subscription.
    pub consumed_records: u64,
    /// Seconds from the end of the warmup to the last counted event.
    pub seconds: f64,
    /// The window's histograms.
    pub histograms: Histograms,
    /// CPU and memory of the window.
    pub usage: Usage,
    /// Assignment changes the group members saw (whole run, measured window), for groups.
    pub rebalances: Option<(u64, u64)>,
    /// Counted records in each second after the warmup.
    pub per_second: Vec<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    /// The plan's name (an OMB file's `name`).
    pub name: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub consumed_records: u64,
    pub publish_latency_us: Option<Percentiles>,
    /// Workloads with producers and consumers together.
    pub e2e_latency_us: Option<Percentiles>,
    /// The catch-up `consume`: how old each record was when it arrived.
    pub record_age_us: Option<Percentiles>,
    /// Every workload with consumers.
    pub poll_latency_us: Option<Percentiles>,
    /// Copies of each partition of the topics the run created.
    pub replication_factor: u16,
    /// The min-insync-replicas of the topics the run created.
    pub min_insync_replicas: u16,
    /// What the bytes of the CPU figures are.
    pub gb_means: &'static str,
    #[serde(flatten)]
    pub usage: Usage,
    /// Assignment changes (an `on_assigned` or `on_revoked` call on a member), whole run.
    pub group_rebalances: Option<u64>,
    /// The same, inside the measured window.
    pub group_rebalances_measured: Option<u64>,
    pub plan: Plan,
    pub config: BenchConfig,
    /// Records per second in each second of the run (after warmup).
    pub throughput_per_second: Vec<f64>,
}

/// The definition of GB in the CPU figures.
pub const GB_MEANS: &str = "10^9 bytes of record values counted in the measured window";

fn percentiles(latency: &Latency) -> Option<Percentiles> {
    (latency.count() > 0).then(|| latency.percentiles())
}

impl Report {
    /// Builds a report from the counts of a run.
    pub fn new(config: &BenchConfig, plan: &Plan, measured: Measured) -> Report {
        let seconds = measured.seconds.max(1e-9);
        let workload = config.workload;
        let h = &measured.histograms;
        Report {
            workload: workload.name(),
            name: plan.name.clone(),
            records: measured.records,
            bytes: measured.bytes,
            seconds,
            records_per_sec: measured.records as f64 / seconds,
            mb_per_sec: measured.bytes as f64 / seconds / 1e6,
            consumed_records: measured.consumed_records,
            publish_latency_us: percentiles(&h.publish),
            e2e_latency_us: workload
                .at_the_tail()
                .then(|| percentiles(&h.end_to_end))
                .flatten(),
            record_age_us: (workload == crate::config::Workload::Consume)
                .then(|| percentiles(&h.end_to_end))
                .flatten(),
            poll_latency_us: percentiles(&h.poll),
            replication_factor: config.replication_factor,
            min_insync_replicas: config.min_insync_replicas(),
            gb_means: GB_MEANS,
            usage: measured.usage,
            group_rebalances: measured.rebalances.map(|r| r.0),
            group_rebalances_measured: measured.rebalances.map(|r| r.1),
            plan: plan.clone(),
            config: config.clone(),
            throughput_per_second: measured.per_second,
        }
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "workload {}  records {}  seconds {:.2}\nthroughput: {:.0} records/s  {:.1} MB/s",
            self.workload, self.records, self.seconds, self.records_per_sec, self.mb_per_sec
        );
        if self.config.workload.consumes() {
            out.push_str(&format!("  (consumed {} records)", self.consumed_records));
        }
        out.push('\n');
        out.push_str(&format!(
            "brokers {}  replication factor {}  min-insync-replicas {}\n",
            self.usage.broker_count, self.replication_factor, self.min_insync_replicas
        ));
        out.push_str("latency (ms)        p50      p90      p99    p99.9   p99.99      max\n");
        for (name, latency) in [
            ("publish", &self.publish_latency_us),
            ("end-to-end", &self.e2e_latency_us),
            ("record age", &self.record_age_us),
            ("poll", &self.poll_latency_us),
        ] {
            if let Some(p) = latency {
                let ms = |us: u64| us as f64 / 1000.0;
                out.push_str(&format!(
                    "{name:<12} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}\n",
                    ms(p.p50),
                    ms(p.p90),
                    ms(p.p99),
                    ms(p.p999),
                    ms(p.p9999),
                    ms(p.max)
                ));
            }
        }
        out.push_str(&self.usage_table());
        if let (Some(total), Some(measured)) =
            (self.group_rebalances, self.group_rebalances_measured)
        {
            out.push_str(&format!(
                "group rebalances: {total} assignment changes ({measured} in the measured window)\n"
            ));
        }
        out
    }

    fn usage_table(&self) -> String {
        let u = &self.usage;
        let per_gb = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let mut out = format!("CPU per GB (core-s per GB, GB = {GB_MEANS}):\n");
        out.push_str(&format!(
            "  client   {:>8} core-s/GB  ({:.2} core-s)\n",
            per_gb(u.client_cpu_s_per_gb),
            u.client_cpu_s
        ));
        let mib = |b: Option<u64>| b.map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
        match (&u.broker_metrics_error, u.broker_cpu_s) {
            (None, Some(cpu_s)) if u.per_broker.len() > 1 => {
                let each: Vec<String> = u
                    .per_broker
                    .iter()
                    .map(|b| format!("{:.2}", b.cpu_s))
                    .collect();
                out.push_str(&format!(
                    "  brokers  {:>8} core-s/GB  ({cpu_s:.2} core-s over {} brokers: {})  \
                     peak RSS {:.1} MiB (largest broker)\n",
                    per_gb(u.broker_cpu_s_per_gb),
                    u.per_broker.len(),
                    each.join(" + "),
                    mib(u.broker_peak_rss_bytes)
                ));
            }
            (None, Some(cpu_s)) => {
                out.push_str(&format!(
                    "  broker   {:>8} core-s/GB  ({cpu_s:.2} core-s)  peak RSS {:.1} MiB\n",
                    per_gb(u.broker_cpu_s_per_gb),
                    mib(u.broker_peak_rss_bytes)
                ));
            }
            (error, _) => out.push_str(&format!(
                "  {}not measured: no metrics from {} ({})\n",
                if u.broker_count > 1 {
                    "brokers  "
                } else {
                    "broker   "
                },
                u.broker_metrics,
                error.as_deref().unwrap_or("unknown")
            )),
        }
        out
    }

    /// Writes the JSON file.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut value = serde_json::to_value(self)?;
        if let Some(object) = value.as_object_mut() {
            object.remove("throughput_per_second");
        }
        std::fs::write(path, serde_json::to_vec_pretty(&value)?)?;
        Ok(())
    }

    /// Draws throughput over time and the latency percentile curve, as SVG
    /// or PNG by the extension of `path`.
    ///
    /// # Errors
    /// No TrueType font to draw text with (see [`register_font`]), or drawing
    /// or writing failed.
    pub fn plot(&self, path: &Path, histograms: &Histograms) -> anyhow::Result<()> {
        use plotters::prelude::*;
        register_font()?;
        let size = (1000, 420);
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => self.draw(
                BitMapBackend::new(path, size).into_drawing_area(),
                histograms,
            ),
            _ => self.draw(SVGBackend::new(path, size).into_drawing_area(), histograms),
        }
    }

    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
        histograms: &Histograms,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        use plotters::prelude::*;
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(500);
        let max_rate = self
            .throughput_per_second
            .iter()
            .copied()
            .fold(1.0, f64::max)
            * 1.1;
        let seconds = self.throughput_per_second.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&left)
            .caption("throughput (records/s)", (FONT_FAMILY, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..seconds, 0f64..max_rate)?;
        chart
            .configure_mesh()
            .label_style((FONT_FAMILY, 12))
            .x_desc("seconds")
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.throughput_per_second
                .iter()
                .enumerate()
                .map(|(i, r)| (i as f64 + 1.0, *r)),
            &BLUE,
        ))?;
        self.draw_latency(&right, histograms)?;
        root.present()?;
        Ok(())
    }
}

impl Report {
    /// The curves the latency chart shows: every histogram the table shows.
    fn curves<'a>(&self, h: &'a Histograms) -> Vec<(&'static str, &'a Latency)> {
        let e2e = if self.record_age_us.is_some() {
            "record age"
        } else {
            "end-to-end"
        };
        [
            ("publish", &h.publish),
            (e2e, &h.end_to_end),
            ("poll", &h.poll),
        ]
        .into_iter()
        .filter(|(_, l)| l.count() > 0)
        .collect()
    }

    fn draw_latency<DB: plotters::prelude::DrawingBackend>(
        &self,
        area: &plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
        histograms: &Histograms,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        use plotters::prelude::*;
        let curves = self.curves(histograms);
        let points = Latency::default().curve().len();
        let max_ms = curves
            .iter()
            .flat_map(|(_, l)| l.curve())
            .map(|(_, us)| us as f64 / 1000.0)
            .fold(0.001, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption("latency by percentile (ms)", (FONT_FAMILY, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..points - 1, 0f64..max_ms)?;
        let labels: Vec<String> = Latency::default()
            .curve()
            .iter()
            .map(|(p, _)| format!("{p}"))
            .collect();
        chart
            .configure_mesh()
            .label_style((FONT_FAMILY, 12))
            .x_labels(points)
            .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
            .x_desc("percentile")
            .draw()?;
        let colors = [RED, BLUE, GREEN];
        for ((name, latency), color) in curves.into_iter().zip(colors) {
            let curve = latency.curve();
            chart
                .draw_series(LineSeries::new(
                    curve
                        .iter()
                        .enumerate()
                        .map(|(i, (_, us))| (i, *us as f64 / 1000.0)),
                    color,
                ))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT_FAMILY, 12))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        Ok(())
    }
}

/// The family name plots register their font under.
const FONT_FAMILY: &str = "sans-serif";

/// Where plots look for a TrueType font, after `SHARDLOG_BENCH_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Loads a TrueType font for the plots' text, once per process: the file
/// in `SHARDLOG_BENCH_FONT`, or the first of [`FONT_PATHS`] that exists.
///
/// # Errors
/// No font found, or the file is not a font.
pub fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let mut candidates = std::env::var("SHARDLOG_BENCH_FONT")
                .ok()
                .into_iter()
                .chain(FONT_PATHS.iter().map(|p| p.to_string()));
            let Some((path, bytes)) =
                candidates.find_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
            else {
                return Err(format!(
                    "plots need a TrueType font for their text: install one \
                     (Debian: apt-get install fonts-dejavu-core) or set \
                     SHARDLOG_BENCH_FONT=/path/to/font.ttf; looked in {FONT_PATHS:?}"
                ));
            };
            // The plotting library keeps registered fonts for the whole
            // process; this runs once, so the one leaked copy is bounded.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT_FAMILY, plotters::style::FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a TrueType font"))
        })
        .clone()
        .map_err(|message| anyhow::anyhow!(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut latency = Latency::default();
        for us in 1..=10_000u64 {
            latency.record_us(us);
        }
        let p = latency.percentiles();
        assert!((4_990..=5_010).contains(&p.p50), "{p:?}");
        assert!((9_890..=9_910).contains(&p.p99), "{p:?}");
        assert!(
            (10_000..=10_010).contains(&p.max),
            "max within the histogram's 3-digit precision: {p:?}"
        );
        let mut other = Latency::default();
        other.record_us(1_000_000);
        latency.merge(&other);
        assert_eq!(latency.count(), 10_001);
        let max = latency.percentiles().max;
        assert!(
            (1_000_000..=1_001_000).contains(&max),
            "max within the histogram's precision: {max}"
        );
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let config =
            BenchConfig::try_parse_from(["shardlog-bench", "e2e", "--records", "100"]).unwrap();
        let plan = Plan::from_options(&config);
        let mut histograms = Histograms::default();
        histograms.publish.record_us(1500);
        histograms.end_to_end.record_us(2000);
        histograms.poll.record_us(700);
        let usage = Usage {
            broker_metrics: "127.0.0.1:9644".into(),
            broker_cpu_s: Some(0.5),
            client_cpu_s: 1.0,
            broker_cpu_s_per_gb: Some(5.0),
            client_cpu_s_per_gb: Some(10.0),
            broker_peak_rss_bytes: Some(64 << 20),
            broker_rss_bytes: Some(32 << 20),
            broker_metrics_error: None,
            broker_count: 1,
            per_broker: Vec::new(),
        };
        let measured = Measured {
            records: 100,
            bytes: 100_000_000,
            consumed_records: 100,
            seconds: 2.0,
            histograms: histograms.clone(),
            usage,
            rebalances: None,
            per_second: vec![50.0, 50.0],
        };
        let report = Report::new(&config, &plan, measured);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        report.write_json(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for key in [
            "workload",
            "name",
            "records",
            "bytes",
            "seconds",
            "records_per_sec",
            "mb_per_sec",
            "consumed_records",
            "publish_latency_us",
            "e2e_latency_us",
            "record_age_us",
            "poll_latency_us",
            "gb_means",
            "broker_metrics",
            "broker_metrics_error",
            "broker_cpu_s",
            "client_cpu_s",
            "broker_cpu_s_per_gb",
            "client_cpu_s_per_gb",
            "broker_peak_rss_bytes",
            "broker_rss_bytes",
            "broker_count",
            "per_broker",
            "replication_factor",
            "min_insync_replicas",
            "group_rebalances",
            "group_rebalances_measured",
            "plan",
            "config",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["records_per_sec"], 50.0);
        assert_eq!(value["publish_latency_us"]["p50"], 1500);
        assert_eq!(value["e2e_latency_us"]["p50"], 2000);
        assert!(
            value["record_age_us"].is_null(),
            "e2e reports end-to-end, not age"
        );
        assert_eq!(value["poll_latency_us"]["p50"], 700);
        assert_eq!(value["broker_cpu_s_per_gb"], 5.0);
        assert_eq!(value["broker_peak_rss_bytes"], 64 << 20);
        assert_eq!(value["broker_count"], 1);
        assert_eq!(value["replication_factor"], 1);
        assert_eq!(value["min_insync_replicas"], 1);
        assert_eq!(value["config"]["records"], 100);
        assert_eq!(value["plan"]["topics"][0], "bench");
        let table = report.table();
        for line in [
            "publish",
            "end-to-end",
            "poll",
            "core-s/GB",
            "peak RSS 64.0 MiB",
            "10^9 bytes",
            "brokers 1  replication factor 1  min-insync-replicas 1",
            "  broker   ",
        ] {
            assert!(table.contains(line), "{line} in {table}");
        }
        let svg = dir.path().join("out.svg");
        report.plot(&svg, &histograms).unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("poll") && svg.contains("end-to-end"),
            "a legend"
        );
        let png = dir.path().join("out.png");
        report.plot(&png, &histograms).unwrap();
        let png = std::fs::read(png).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    }

    #[test]
    fn a_clusters_report_shows_its_brokers_and_replication() {
        let config = BenchConfig::try_parse_from([
            "shardlog-bench",
            "produce",
            "--embedded",
            "--brokers",
            "3",
            "--replication-factor",
            "3",
        ])
        .unwrap();
        let plan = Plan::from_options(&config);
        let broker = |metrics: &str, cpu_s| crate::resources::BrokerUsage {
            metrics: metrics.into(),
            cpu_s,
            peak_rss_bytes: 64 << 20,
            rss_bytes: 32 << 20,
        };
        let usage = Usage {
            broker_metrics: "a:1,b:2,c:3".into(),
            broker_count: 3,
            broker_cpu_s: Some(3.0),
            broker_cpu_s_per_gb: Some(30.0),
            broker_peak_rss_bytes: Some(64 << 20),
            broker_rss_bytes: Some(32 << 20),
            per_broker: vec![broker("a:1", 1.5), broker("b:2", 1.0), broker("c:3", 0.5)],
            ..Usage::default()
        };
        let measured = Measured {
            records: 100,
            bytes: 100_000_000,
            seconds: 1.0,
            usage,
            ..Measured::default()
        };
        let report = Report::new(&config, &plan, measured);
        let table = report.table();
        for line in [
            "brokers 3  replication factor 3  min-insync-replicas 2",
            "  brokers    30.000 core-s/GB  (3.00 core-s over 3 brokers: 1.50 + 1.00 + 0.50)",
            "peak RSS 64.0 MiB (largest broker)",
        ] {
            assert!(table.contains(line), "{line} in {table}");
        }
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["broker_count"], 3);
        assert_eq!(value["replication_factor"], 3);
        assert_eq!(value["min_insync_replicas"], 2);
        assert_eq!(value["broker_cpu_s_per_gb"], 30.0);
        assert_eq!(value["per_broker"][1]["metrics"], "b:2");
        assert_eq!(value["per_broker"][1]["cpu_s"], 1.0);
        assert_eq!(value["config"]["brokers"], 3);
    }

    #[test]
    fn a_catch_up_read_reports_record_age_and_a_missing_broker() {
        let config = BenchConfig::try_parse_from(["shardlog-bench", "consume"]).unwrap();
        let plan = Plan::from_options(&config);
        let mut histograms = Histograms::default();
        histograms.end_to_end.record_us(9_000_000);
        let measured = Measured {
            records: 10,
            bytes: 10_240,
            histograms,
            usage: Usage {
                broker_metrics: "127.0.0.1:9644".into(),
                broker_metrics_error: Some("connection refused".into()),
                ..Usage::default()
            },
            ..Measured::default()
        };
        let report = Report::new(&config, &plan, measured);
        assert!(report.e2e_latency_us.is_none());
        assert!(report.record_age_us.is_some_and(|p| p.p50 >= 8_990_000));
        let table = report.table();
        assert!(table.contains("record age"), "{table}");
        assert!(
            table.contains(
                "broker   not measured: no metrics from 127.0.0.1:9644 (connection refused)"
            ),
            "{table}"
        );
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["broker_metrics_error"], "connection refused");
        assert!(value["broker_cpu_s_per_gb"].is_null());
    }
}
