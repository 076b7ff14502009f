//! What the operator sees: one indicatif progress line per GPU while the sweep runs
//! (trajectories and turns done, live sliding-10-s and cumulative output tokens/s, failures),
//! then the seed's table per GPU and the best configuration by each criterion.
//!
//! Rates are in engine time, like every recorded figure: on a simulated engine running
//! `time_scale` engine seconds per wall second, the live window covers the last 10 engine
//! seconds (10 / `time_scale` wall seconds), but never less than 1 wall second so that the
//! figure does not flicker; the line says how many engine seconds the window covers.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use turnbench_schema::Summary;

/// Live counters of one GPU (kept on the wall clock, shown in engine time).
pub struct GpuProgress {
    pub gpu: String,
    started: Instant,
    turns: AtomicU64,
    trajectories: AtomicU64,
    failed: AtomicU64,
    tokens: AtomicU64,
    window: Mutex<VecDeque<(Instant, u64)>>,
    pub total_turns: u64,
    /// Engine seconds per wall second, so rates read in engine time.
    pub time_scale: Mutex<f64>,
}

/// The live rate's window, engine seconds…
const WINDOW_ENGINE_S: f64 = 10.0;
/// …but at least this many wall seconds.
const WINDOW_MIN_WALL_S: f64 = 1.0;

impl GpuProgress {
    pub fn new(gpu: &str, total_turns: u64) -> GpuProgress {
        GpuProgress {
            gpu: gpu.to_string(),
            started: Instant::now(),
            turns: AtomicU64::new(0),
            trajectories: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            window: Mutex::new(VecDeque::new()),
            total_turns,
            time_scale: Mutex::new(1.0),
        }
    }

    pub fn turn_done(&self, tokens: u64, failed: bool) {
        self.turn_done_at(Instant::now(), tokens, failed);
    }

    fn turn_done_at(&self, now: Instant, tokens: u64, failed: bool) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let window = self.window_wall();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.push_back((now, tokens));
        while w.front().is_some_and(|(t, _)| now - *t > window) {
            w.pop_front();
        }
    }

    fn scale(&self) -> f64 {
        let s = *self.time_scale.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_finite() && s > 0.0 {
            s
        } else {
            1.0
        }
    }

    /// The live window in wall time: 10 engine seconds, at least 1 wall second.
    fn window_wall(&self) -> Duration {
        // (Capped at an hour: a time scale near 0 would not fit a Duration.)
        Duration::from_secs_f64((WINDOW_ENGINE_S / self.scale()).clamp(WINDOW_MIN_WALL_S, 3600.0))
    }

    pub fn trajectory_done(&self) {
        self.trajectories.fetch_add(1, Ordering::Relaxed);
    }

    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// (live window, cumulative) output tokens per engine second, and the engine seconds the
    /// live window covers.
    pub fn rates(&self) -> (f64, f64, f64) {
        self.rates_at(Instant::now())
    }

    fn rates_at(&self, now: Instant) -> (f64, f64, f64) {
        let (scale, window) = (self.scale(), self.window_wall());
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let recent: u64 = w
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|x| x.1)
            .sum();
        let elapsed = now.saturating_duration_since(self.started);
        // Engine seconds = wall seconds × scale.
        let span = elapsed.min(window).as_secs_f64().max(1e-3) * scale;
        let total = self.tokens.load(Ordering::Relaxed) as f64;
        let cum = total / (elapsed.as_secs_f64().max(1e-3) * scale);
        (recent as f64 / span, cum, window.as_secs_f64() * scale)
    }

    fn message(&self) -> String {
        let (live, cum, window) = self.rates();
        format!(
            "traj {} · turns {} · {:.0} tok/s (last {:.0} s) · {:.0} tok/s (all) · failed {}",
            self.trajectories.load(Ordering::Relaxed),
            self.turns(),
            live,
            window,
            cum,
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Progress bars for all GPUs, redrawn by a ticker task.
pub struct Display {
    bars: Vec<(ProgressBar, std::sync::Arc<GpuProgress>)>,
    _multi: MultiProgress,
}

impl Display {
    pub fn new(gpus: &[std::sync::Arc<GpuProgress>], quiet: bool) -> Display {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len} turns · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bars = gpus
            .iter()
            .map(|g| {
                let b = multi.add(ProgressBar::new(g.total_turns));
                b.set_style(style.clone());
                b.set_prefix(format!("GPU {}", g.gpu));
                (b, g.clone())
            })
            .collect();
        Display {
            bars,
            _multi: multi,
        }
    }

    pub fn tick(&self) {
        for (b, g) in &self.bars {
            b.set_position(g.turns());
            b.set_message(g.message());
        }
    }

    pub fn finish(&self) {
        self.tick();
        for (b, _) in &self.bars {
            b.finish();
        }
    }
}

/// The seed's table per GPU, then the best configuration by each criterion. `zero_cost`: the
/// simulated engine did not wait at all (`--sim-time-scale inf`).
pub fn tables(summary: &Summary, zero_cost: bool) -> String {
    let mut out = String::new();
    let mut gpus: Vec<&str> = summary.cells.iter().map(|c| c.gpu.as_str()).collect();
    gpus.dedup();
    let sim = match (summary.simulated, zero_cost) {
        (true, true) => {
            " (simulated with no engine cost, --sim-time-scale inf: the harness's own wall \
             time, no GPU's)"
        }
        (true, false) => " (simulated, engine time)",
        _ => "",
    };
    for gpu in gpus {
        let _ = writeln!(out, "\nGPU {gpu}{sim}");
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>14} {:>12} {:>16} {:>16} {:>12} {:>10} {:>9} {:>7} {:>9}",
            "Cache",
            "Batch Size",
            "Total Time (s)",
            "Avg/Traj (s)",
            "Traj Throughput",
            "Token Throughput",
            "Total Tokens",
            "Tok/Turn",
            "Hit ratio",
            "Failed",
            "Retracted"
        );
        for c in summary.cells.iter().filter(|c| c.gpu == gpu) {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>14.2} {:>12} {:>16.4} {:>16.2} {:>12} {:>10} {:>9} {:>7} {:>9}",
                c.cache_mode.as_str(),
                c.concurrency,
                c.total_time_s,
                c.avg_traj_time_s.map_or("-".into(), |v| format!("{v:.2}")),
                c.traj_per_s,
                c.output_tok_per_s,
                c.total_output_tokens,
                c.tokens_per_turn.map_or("-".into(), |v| format!("{v:.1}")),
                c.cache_hit_ratio
                    .map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
                c.failed_turns,
                c.retracted_turns.map_or("-".into(), |n| n.to_string()),
            );
        }
        for b in summary
            .best
            .iter()
            .filter(|b| b.gpu == gpu && b.cache_mode.is_none())
        {
            let what = match b.criterion.as_str() {
                "output_tok_per_s" => "token throughput",
                "traj_per_s" => "trajectory throughput",
                _ => "time per trajectory",
            };
            let _ = writeln!(
                out,
                "Best by {what}: cache {} · batch size {} ({:.3})",
                b.best_cache_mode, b.best_concurrency, b.value
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates read in engine time, over a window of 10 engine seconds (at least 1 wall second).
    #[test]
    fn live_and_cumulative_rates_are_per_engine_second() {
        let ms = Duration::from_millis;
        // A real engine: 1 engine second per wall second, a 10 s window.
        let p = GpuProgress::new("0", 100);
        let t0 = p.started;
        p.turn_done_at(t0 + ms(1_000), 500, false);
        p.turn_done_at(t0 + ms(15_000), 300, false);
        let (live, cum, window) = p.rates_at(t0 + ms(20_000));
        assert_eq!(window, 10.0);
        assert!((live - 300.0 / 10.0).abs() < 1e-9, "{live}");
        assert!((cum - 800.0 / 20.0).abs() < 1e-9, "{cum}");

        // A simulated engine at 100 engine seconds per wall second: 10 engine seconds would be
        // 0.1 wall seconds, so the window is 1 wall second = 100 engine seconds.
        let p = GpuProgress::new("0", 100);
        *p.time_scale.lock().unwrap() = 100.0;
        let t0 = p.started;
        p.turn_done_at(t0 + ms(500), 1_000, false);
        p.turn_done_at(t0 + ms(1_900), 2_000, true);
        let (live, cum, window) = p.rates_at(t0 + ms(2_000));
        assert_eq!(window, 100.0);
        assert!((live - 2_000.0 / 100.0).abs() < 1e-9, "{live}");
        assert!((cum - 3_000.0 / 200.0).abs() < 1e-9, "{cum}");
        assert!(p.message().contains("failed 1"));

        // At 1 engine second per 10 wall seconds, 10 engine seconds are 100 wall seconds.
        let p = GpuProgress::new("0", 100);
        *p.time_scale.lock().unwrap() = 0.1;
        assert_eq!(p.window_wall(), Duration::from_secs(100));
    }
}
