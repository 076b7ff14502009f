//! What the operator sees: one indicatif progress line per GPU while the sweep runs
//! (trajectories and turns done, live sliding-10-s and cumulative output tokens/s, failures),
//! then the seed's table per GPU and the best configuration by each criterion.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use turnbench_schema::Summary;

/// Live counters of one GPU (wall clock; the table afterwards is in engine time).
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

const WINDOW: Duration = Duration::from_secs(10);

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
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.push_back((now, tokens));
        while w.front().is_some_and(|(t, _)| now - *t > WINDOW) {
            w.pop_front();
        }
    }

    pub fn trajectory_done(&self) {
        self.trajectories.fetch_add(1, Ordering::Relaxed);
    }

    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// (sliding-10-s, cumulative) output tokens per second of wall time.
    pub fn rates(&self) -> (f64, f64) {
        let now = Instant::now();
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let recent: u64 = w
            .iter()
            .filter(|(t, _)| now - *t <= WINDOW)
            .map(|x| x.1)
            .sum();
        let span = (now - self.started).min(WINDOW).as_secs_f64().max(1e-3);
        let total = self.tokens.load(Ordering::Relaxed) as f64;
        let cum = total / (now - self.started).as_secs_f64().max(1e-3);
        (recent as f64 / span, cum)
    }

    fn message(&self) -> String {
        let (live, cum) = self.rates();
        let scale = *self.time_scale.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "traj {} · turns {} · {:.0} tok/s (10 s) · {:.0} tok/s (all) · failed {}",
            self.trajectories.load(Ordering::Relaxed),
            self.turns(),
            live / scale,
            cum / scale,
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

/// The seed's table per GPU, then the best configuration by each criterion.
pub fn tables(summary: &Summary) -> String {
    let mut out = String::new();
    let mut gpus: Vec<&str> = summary.cells.iter().map(|c| c.gpu.as_str()).collect();
    gpus.dedup();
    let sim = if summary.simulated {
        " (simulated, engine time)"
    } else {
        ""
    };
    for gpu in gpus {
        let _ = writeln!(out, "\nGPU {gpu}{sim}");
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>14} {:>12} {:>16} {:>16} {:>12} {:>10} {:>9} {:>7}",
            "Cache",
            "Batch Size",
            "Total Time (s)",
            "Avg/Traj (s)",
            "Traj Throughput",
            "Token Throughput",
            "Total Tokens",
            "Tok/Turn",
            "Hit ratio",
            "Failed"
        );
        for c in summary.cells.iter().filter(|c| c.gpu == gpu) {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>14.2} {:>12} {:>16.4} {:>16.2} {:>12} {:>10} {:>9} {:>7}",
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
