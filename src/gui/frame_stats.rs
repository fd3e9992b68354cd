//! How long the UI takes per frame, kept apart for frames drawn while a run is in progress.

use std::time::{Duration, Instant};

/// Frames kept per bucket.
const KEEP: usize = 4096;

/// Durations of `App::ui`, split into idle frames and frames during a run.
#[derive(Debug, Default, Clone)]
pub struct FrameStats {
    /// `ui` durations while idle.
    pub idle: Vec<Duration>,
    /// `ui` durations while a run was in progress.
    pub running: Vec<Duration>,
    /// Time from the start of one frame to the start of the next, while a run was in progress
    /// (the UI is reactive: it draws when a job reports, after every denoising step).
    pub running_gaps: Vec<Duration>,
    last_start: Option<Instant>,
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
    /// Records one frame that started at `started`.
    pub fn record(&mut self, started: Instant, running: bool) {
        let took = started.elapsed();
        if let Some(last) = self.last_start.replace(started)
            && running
        {
            push(&mut self.running_gaps, started - last);
        }
        let bucket = if running {
            &mut self.running
        } else {
            &mut self.idle
        };
        push(bucket, took);
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

    /// Every bucket as one line of text.
    pub fn summary(&self) -> String {
        let line = |name: &str, frames: &[Duration]| match Self::summarize(frames) {
            Some(s) => format!(
                "{name}: {} frames, mean {:.2} ms, median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
                s.frames, s.mean_ms, s.median_ms, s.p95_ms, s.max_ms
            ),
            None => format!("{name}: no frames"),
        };
        format!(
            "frame times — {}; {}; {}",
            line("ui idle", &self.idle),
            line("ui during a run", &self.running),
            line("gap between frames during a run", &self.running_gaps)
        )
    }
}

/// Appends `value`, dropping the oldest beyond [`KEEP`].
fn push(bucket: &mut Vec<Duration>, value: Duration) {
    if bucket.len() == KEEP {
        bucket.remove(0);
    }
    bucket.push(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_buckets() {
        let ms = |v: u64| Duration::from_millis(v);
        let s = FrameStats::summarize(&[ms(3), ms(1), ms(2), ms(10)]).unwrap();
        assert_eq!(s.frames, 4);
        assert!((s.mean_ms - 4.0).abs() < 1e-9);
        assert!((s.max_ms - 10.0).abs() < 1e-9);
        assert!(FrameStats::summarize(&[]).is_none());

        let mut stats = FrameStats::default();
        let start = Instant::now();
        stats.record(start, false);
        stats.record(start + ms(5), true);
        assert_eq!((stats.idle.len(), stats.running.len()), (1, 1));
        assert_eq!(stats.running_gaps, vec![ms(5)]);
        assert!(stats.summary().contains("ui during a run: 1 frames"));
    }
}
