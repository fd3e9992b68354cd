//! What the micro benchmarks share.

use std::time::{Duration, Instant};

/// Best time of `run` over at least three runs and half a second (after one warm-up run).
pub fn best_of(mut run: impl FnMut()) -> Duration {
    run();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < Duration::from_millis(500) {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}
