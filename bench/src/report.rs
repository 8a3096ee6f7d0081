//! Latency histograms, the summary table, the JSON file and the plot.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::BenchConfig;

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

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub publish_latency_us: Option<Percentiles>,
    pub e2e_latency_us: Option<Percentiles>,
    pub config: BenchConfig,
    /// Records per second in each second of the run (after warmup).
    pub throughput_per_second: Vec<f64>,
}

impl Report {
    /// Builds a report from the counts of a run.
    pub fn new(
        config: &BenchConfig,
        records: u64,
        bytes: u64,
        seconds: f64,
        publish: Option<&Latency>,
        e2e: Option<&Latency>,
        per_second: Vec<f64>,
    ) -> Report {
        let seconds = seconds.max(1e-9);
        Report {
            workload: format!("{:?}", config.workload).to_lowercase(),
            records,
            bytes,
            seconds,
            records_per_sec: records as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
            publish_latency_us: publish.filter(|l| l.count() > 0).map(Latency::percentiles),
            e2e_latency_us: e2e.filter(|l| l.count() > 0).map(Latency::percentiles),
            config: config.clone(),
            throughput_per_second: per_second,
        }
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "workload {}  records {}  seconds {:.2}\nthroughput: {:.0} records/s  {:.1} MB/s\n",
            self.workload, self.records, self.seconds, self.records_per_sec, self.mb_per_sec
        );
        out.push_str("latency (ms)        p50      p90      p99    p99.9   p99.99      max\n");
        for (name, latency) in [
            ("publish", &self.publish_latency_us),
            ("end-to-end", &self.e2e_latency_us),
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
    pub fn plot(&self, path: &Path, latency: &Latency) -> anyhow::Result<()> {
        use plotters::prelude::*;
        register_font()?;
        let size = (1000, 420);
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => self.draw(BitMapBackend::new(path, size).into_drawing_area(), latency),
            _ => self.draw(SVGBackend::new(path, size).into_drawing_area(), latency),
        }
    }

    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
        latency: &Latency,
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
        let curve = latency.curve();
        let max_ms = curve
            .iter()
            .map(|(_, us)| *us as f64 / 1000.0)
            .fold(0.001, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&right)
            .caption("latency by percentile (ms)", (FONT_FAMILY, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..curve.len() - 1, 0f64..max_ms)?;
        let labels: Vec<String> = curve.iter().map(|(p, _)| format!("{p}")).collect();
        chart
            .configure_mesh()
            .label_style((FONT_FAMILY, 12))
            .x_labels(curve.len())
            .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
            .x_desc("percentile")
            .draw()?;
        chart.draw_series(LineSeries::new(
            curve
                .iter()
                .enumerate()
                .map(|(i, (_, us))| (i, *us as f64 / 1000.0)),
            &RED,
        ))?;
        root.present()?;
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
        let mut latency = Latency::default();
        latency.record_us(1500);
        let report = Report::new(
            &config,
            100,
            102_400,
            2.0,
            Some(&latency),
            None,
            vec![50.0, 50.0],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        report.write_json(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for key in [
            "workload",
            "records",
            "bytes",
            "seconds",
            "records_per_sec",
            "mb_per_sec",
            "publish_latency_us",
            "e2e_latency_us",
            "config",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["records_per_sec"], 50.0);
        assert_eq!(value["publish_latency_us"]["p50"], 1500);
        assert!(value["e2e_latency_us"].is_null());
        assert_eq!(value["config"]["records"], 100);
        assert!(report.table().contains("publish"));
        let svg = dir.path().join("out.svg");
        report.plot(&svg, &latency).unwrap();
        assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
        let png = dir.path().join("out.png");
        report.plot(&png, &latency).unwrap();
        let png = std::fs::read(png).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    }
}
