//! The sampler: throughput each second (the plot, the progress bar) and a
//! 10-second sample of rates, backlog and latency (OMB's result file).
//!
//! Its ticks count from the end of the warmup, so the first second and the
//! first 10-second sample start where the measured window does. The
//! sampler only observes: the window's length comes from
//! [`crate::window::Window`], never from when the sampler last woke.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{lock, Run};
use crate::omb::WindowStats;
use crate::report::Histograms;

/// The sampler's tick.
const TICK: Duration = Duration::from_millis(250);
/// Ticks in a second.
const TICKS_PER_SECOND: u32 = 4;
/// Ticks in one of OMB's samples (10 s).
const TICKS_PER_SAMPLE: u32 = 40;

/// What the sampler saw.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Counted records in each second after the warmup.
    pub per_second: Vec<f64>,
    /// OMB's 10-second samples (the last one may be shorter).
    pub windows: Vec<WindowStats>,
}

/// Waits until the window is open and returns the end of its warmup.
pub(super) async fn wait_for_window(run: &Run) -> Instant {
    loop {
        if let Some(from) = run.window.measure_from() {
            return from;
        }
        if run.stop.load(Ordering::SeqCst) {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counter values at the start of the current sample.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    records: u64,
    published: u64,
    consumed: u64,
    errors: u64,
}

impl Marks {
    fn now(run: &Run) -> Marks {
        let c = &run.counters;
        Marks {
            records: c.records.load(Ordering::Relaxed),
            published: c.published_total.load(Ordering::Relaxed),
            consumed: c.consumed.load(Ordering::Relaxed),
            errors: c.publish_errors.load(Ordering::Relaxed),
        }
    }
}

/// Samples until the run stops (and feeds the progress bar).
pub(super) async fn sample(run: std::sync::Arc<Run>) -> Sampled {
    let progress = progress_bar(run.config.quiet);
    let from = wait_for_window(&run).await;
    // The first marks are taken when counting starts, not during the warmup.
    tokio::time::sleep_until(from).await;
    let mut sampled = Sampled::default();
    let (mut second, mut window) = (Marks::now(&run), Marks::now(&run));
    let mut window_start = from;
    let mut ticks = 0u32;
    while !run.stop.load(Ordering::SeqCst) {
        ticks += 1;
        tokio::time::sleep_until(from + TICK * ticks).await;
        let now = Marks::now(&run);
        if ticks % TICKS_PER_SECOND == 0 {
            sampled
                .per_second
                .push((now.records - second.records) as f64);
            if let Some(bar) = &progress {
                let rate = now.records - second.records;
                bar.set_message(format!(
                    "{rate} records/s, {} records measured",
                    now.records
                ));
            }
            second = now;
        }
        if ticks % TICKS_PER_SAMPLE == 0 {
            let end = from + TICK * ticks;
            sampled
                .windows
                .push(window_stats(&run, window, now, end - window_start));
            (window, window_start) = (now, end);
        }
        if let Some(bar) = &progress {
            bar.tick();
        }
    }
    // The last, shorter sample ends at the last counted event.
    let end = run.window.last_event().unwrap_or(window_start);
    let now = Marks::now(&run);
    if end > window_start && (now.published > window.published || now.consumed > window.consumed) {
        sampled
            .windows
            .push(window_stats(&run, window, now, end - window_start));
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    sampled
}

/// One sample: the counters' growth since `start` and every task's sample histograms.
fn window_stats(run: &Run, start: Marks, end: Marks, length: Duration) -> WindowStats {
    let mut histograms = Histograms::default();
    for stats in lock(&run.tasks).iter() {
        let sample = std::mem::take(&mut lock(stats).sample);
        histograms.merge(&sample);
    }
    WindowStats {
        seconds: length.as_secs_f64(),
        published: end.published - start.published,
        publish_errors: end.errors - start.errors,
        consumed: end.consumed - start.consumed,
        backlog: run.backlog_records(),
        publish: histograms.publish,
        publish_delay: histograms.publish_delay,
        end_to_end: histograms.end_to_end,
    }
}

fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    (!quiet).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    })
}
