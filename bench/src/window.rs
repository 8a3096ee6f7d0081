//! The measured window of a run: when counting starts and when it ends.
//!
//! ```text
//!  origin        opened            measure_from                 last event   (run ends)
//!    │ consumers    │ producers start    │ counted events ... ........│  close, sampler tick
//!    │ get ready    │◄──── warmup ──────►│◄──────── seconds ─────────►│
//! ```
//!
//! The clock of every value's send time is `origin`, one for the whole
//! process, so that consumers measure end-to-end latency. The window
//! itself opens only when the producers start (for the catch-up `consume`
//! workload, when the consumers start): a consumer's head start — the time
//! it takes to join a group or find the end of its partitions — is not part
//! of the measured time. The window ends at the last counted event, not
//! when the run noticed it had ended: the harness's own wake-ups (a sampler
//! tick, a poll's long wait, closing the clients) would otherwise stretch
//! `seconds` and shrink every rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// An unset time.
const UNSET_US: u64 = u64::MAX;

/// The window's times, in microseconds since `origin`; shared by every task.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    warmup_us: u64,
    duration_us: Option<u64>,
    opened_us: AtomicU64,
    deadline_us: AtomicU64,
    /// One more than the last counted event's time; 0 before any.
    last_event_us: AtomicU64,
}

impl Window {
    /// A window whose clock starts now; it opens with [`Window::open`].
    pub fn new(origin: Instant, warmup: Duration, duration: Option<Duration>) -> Window {
        Window {
            origin,
            warmup_us: warmup.as_micros() as u64,
            duration_us: duration.map(|d| d.as_micros() as u64),
            opened_us: AtomicU64::new(UNSET_US),
            deadline_us: AtomicU64::new(UNSET_US),
            last_event_us: AtomicU64::new(0),
        }
    }

    /// The clock's zero: send times in values count from it.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Microseconds from the origin to `at` (0 before it).
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn instant(&self, micros: u64) -> Option<Instant> {
        (micros != UNSET_US).then(|| self.origin + Duration::from_micros(micros))
    }

    /// The load starts at `at`: warmup, then counting, until the duration (if any) has passed.
    pub fn open(&self, at: Instant) {
        let opened_us = self.micros(at);
        let first = self
            .opened_us
            .compare_exchange(UNSET_US, opened_us, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        assert!(first, "a window opens once");
        if let Some(duration_us) = self.duration_us {
            self.deadline_us
                .store(opened_us + self.warmup_us + duration_us, Ordering::SeqCst);
        }
    }

    /// When counting starts (the end of the warmup), once the window is open.
    pub fn measure_from(&self) -> Option<Instant> {
        let opened_us = self.opened_us.load(Ordering::SeqCst);
        (opened_us != UNSET_US)
            .then(|| self.origin + Duration::from_micros(opened_us + self.warmup_us))
    }

    /// Whether an event at `at` is counted.
    pub fn measuring(&self, at: Instant) -> bool {
        self.measure_from().is_some_and(|from| at >= from)
    }

    /// Counts an event at `at` if it falls in the window; returns whether it did.
    pub fn count(&self, at: Instant) -> bool {
        if !self.measuring(at) {
            return false;
        }
        // Stored plus one, so that 0 means "none yet" and fetch_max works.
        self.last_event_us
            .fetch_max(self.micros(at) + 1, Ordering::Relaxed);
        true
    }

    /// Whether the run's time is up (always false for a run bounded by count).
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// When the run's time is up.
    pub fn deadline(&self) -> Option<Instant> {
        self.instant(self.deadline_us.load(Ordering::SeqCst))
    }

    /// Moves the deadline to `duration` after `at` (a backlog drained: the
    /// test's duration starts over, as in OMB).
    pub fn restart_duration_at(&self, at: Instant) {
        if let Some(duration_us) = self.duration_us {
            self.deadline_us
                .store(self.micros(at) + duration_us, Ordering::SeqCst);
        }
    }

    /// Holds the run open until [`Window::restart_duration_at`] sets a deadline.
    pub fn hold(&self) {
        self.deadline_us.store(UNSET_US, Ordering::SeqCst);
    }

    /// The last counted event, if any.
    pub fn last_event(&self) -> Option<Instant> {
        let stored = self.last_event_us.load(Ordering::Relaxed);
        stored
            .checked_sub(1)
            .and_then(|micros| self.instant(micros))
    }

    /// The measured seconds: from the end of the warmup to the last counted event.
    pub fn seconds(&self) -> f64 {
        match (self.measure_from(), self.last_event()) {
            (Some(from), Some(last)) => measured_seconds(from, last),
            _ => 0.0,
        }
    }
}

/// Seconds from `from` to `last`, never negative.
pub fn measured_seconds(from: Instant, last: Instant) -> f64 {
    last.saturating_duration_since(from).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_window_excludes_the_head_start_and_the_last_tick() {
        let origin = Instant::now();
        let window = Window::new(origin, Duration::ZERO, Some(2000 * MS));
        // Consumers get ready for 500 ms: nothing is counted yet.
        assert!(!window.count(origin + 100 * MS));
        window.open(origin + 500 * MS);
        assert_eq!(window.deadline(), Some(origin + 2500 * MS));
        // Events at a steady 200/s from the producers' start to the deadline.
        for i in 0..=400u32 {
            assert!(window.count(origin + 500 * MS + i * 5 * MS));
        }
        let seconds = window.seconds();
        assert_eq!(seconds, 2.0);
        assert_eq!(401.0 / seconds, 200.5);
        // The old arithmetic measured from the clock's origin (the consumers'
        // start) to after the sampler's last 250 ms sleep: 2.75 s, a 200/s
        // rate read as ~146/s. Keep the two apart.
        let old_seconds = measured_seconds(origin, origin + 2750 * MS);
        assert!(old_seconds > seconds + 0.7);
    }

    #[test]
    fn warmup_is_not_counted_and_events_count_in_any_order() {
        let origin = Instant::now();
        let window = Window::new(origin, 1000 * MS, Some(3000 * MS));
        assert_eq!(window.measure_from(), None);
        assert_eq!(window.seconds(), 0.0);
        window.open(origin + 200 * MS);
        assert_eq!(window.measure_from(), Some(origin + 1200 * MS));
        assert_eq!(window.deadline(), Some(origin + 4200 * MS));
        assert!(!window.count(origin + 1100 * MS), "still warming up");
        assert!(window.count(origin + 3200 * MS));
        assert!(
            window.count(origin + 1700 * MS),
            "a late callback of an earlier event"
        );
        assert_eq!(window.last_event(), Some(origin + 3200 * MS));
        assert_eq!(window.seconds(), 2.0);
        assert!(!window.expired(origin + 4199 * MS));
        assert!(window.expired(origin + 4200 * MS));
    }

    #[test]
    fn a_drained_backlog_restarts_the_duration() {
        let origin = Instant::now();
        let window = Window::new(origin, Duration::ZERO, Some(1000 * MS));
        window.open(origin);
        window.hold();
        assert!(!window.expired(origin + 60_000 * MS));
        window.restart_duration_at(origin + 5000 * MS);
        assert_eq!(window.deadline(), Some(origin + 6000 * MS));
        let unbounded = Window::new(origin, Duration::ZERO, None);
        unbounded.open(origin);
        assert_eq!(unbounded.deadline(), None);
        assert!(!unbounded.expired(origin + 3_600_000 * MS));
    }
}
