//! How long the UI takes per frame, kept apart for frames drawn while a run is in progress.

use std::time::Duration;

/// Frames kept per bucket.
const KEEP: usize = 4096;

/// Durations of `App::ui`, split into idle frames and frames during a run.
#[derive(Debug, Default, Clone)]
pub struct FrameStats {
    /// `ui` durations while idle.
    pub idle: Vec<Duration>,
    /// `ui` durations while a run was in progress.
    pub running: Vec<Duration>,
}

/// Summary numbers of one bucket, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Frames counted.
    pub frames: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub median_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl FrameStats {
    /// Records one frame.
    pub fn record(&mut self, took: Duration, running: bool) {
        let bucket = if running {
            &mut self.running
        } else {
            &mut self.idle
        };
        if bucket.len() == KEEP {
            bucket.remove(0);
        }
        bucket.push(took);
    }

    /// Summary of a bucket; `None` when empty.
    pub fn summarize(frames: &[Duration]) -> Option<Summary> {
        if frames.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = frames.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Summary {
            frames: ms.len(),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            median_ms: at(0.5),
            p95_ms: at(0.95),
            max_ms: at(1.0),
        })
    }

    /// Both buckets as one line of text.
    pub fn summary(&self) -> String {
        let line = |name: &str, frames: &[Duration]| match Self::summarize(frames) {
            Some(s) => format!(
                "{name}: {} frames, ui mean {:.2} ms, median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
                s.frames, s.mean_ms, s.median_ms, s.p95_ms, s.max_ms
            ),
            None => format!("{name}: no frames"),
        };
        format!(
            "frame times — {}; {}",
            line("idle", &self.idle),
            line("running", &self.running)
        )
    }
}
