//! Download speed and time left, averaged over the last few seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the speed is averaged.
const WINDOW: Duration = Duration::from_secs(5);

/// Measures a transfer's speed from `(time, bytes so far)` samples over a sliding
/// window of 5 seconds, so the rate follows changes in bandwidth without jittering.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    /// Samples in time order, none older than the window (except the one just before it).
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// A meter with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `bytes` had been transferred in total at `at` (bytes never decrease;
    /// times never go back) and returns the current speed in bytes per second: 0 until two
    /// samples at least 1 ms apart exist.
    pub fn record(&mut self, at: Instant, bytes: u64) -> f64 {
        self.samples.push_back((at, bytes));
        // Keep one sample at or beyond the window's start, so the span stays ≈ WINDOW.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_duration_since(t) >= WINDOW)
        {
            self.samples.pop_front();
        }
        self.rate()
    }

    /// The current speed in bytes per second (0 when unknown).
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) => {
                let secs = t1.saturating_duration_since(t0).as_secs_f64();
                if secs < 0.001 {
                    0.0
                } else {
                    b1.saturating_sub(b0) as f64 / secs
                }
            }
            _ => 0.0,
        }
    }

    /// Seconds left to transfer `remaining` bytes at the current speed; `None` while the
    /// speed is unknown or zero.
    pub fn eta_secs(&self, remaining: u64) -> Option<f64> {
        let rate = self.rate();
        (rate > 0.0).then(|| remaining as f64 / rate)
    }
}
