//! Aggregation: one pass over a run's turn records, grouped by cell, into the numbers the pages
//! show. Table numbers come from [`turnbench_schema::summary::summarize_cell`] (the runner's own
//! definition); distributions use [`turnbench_schema::stats`]. Every series is bounded in size
//! (a fixed time grid, one point per turn index, fixed quantiles), whatever the record count.

use crate::load::MeasuredRun;
use std::collections::BTreeMap;
use turnbench_schema::stats::{mean, percentile_sorted};
use turnbench_schema::summary::{best_cells, summarize_cell_with};
use turnbench_schema::{BestCell, CacheMode, CellSummary, Summary, TelemetrySample, TurnRecord};

/// Points of every time series.
pub const TIME_POINTS: usize = 200;
/// The seed's sliding throughput window (s).
pub const WINDOW_S: f64 = 10.0;
/// Quantiles of the latency distributions: 0, 1, …, 100.
pub const QUANTILES: usize = 101;
/// At most this many points per telemetry series.
pub const TELEMETRY_POINTS: usize = 500;

/// p10 / p50 / p90 of one quantity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Band {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl Band {
    fn of(values: &mut [f64]) -> Option<Band> {
        values.sort_by(f64::total_cmp);
        Some(Band {
            p10: percentile_sorted(values, 10.0)?,
            p50: percentile_sorted(values, 50.0)?,
            p90: percentile_sorted(values, 90.0)?,
        })
    }
}

/// Per turn index of one cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TurnIndexStats {
    pub turn: u32,
    pub turns: u64,
    pub ttft: Option<Band>,
    pub e2e: Option<Band>,
    pub prompt_tokens_mean: Option<f64>,
    pub cached_tokens_mean: Option<f64>,
    /// Σ cached / Σ prompt over turns reporting both.
    pub cache_hit_ratio: Option<f64>,
}

/// Throughput at one time of the cell (output tokens/s).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ThroughputPoint {
    pub t: f64,
    /// Tokens finished in the last [`WINDOW_S`] seconds ÷ the window (÷ t before t = window).
    pub sliding: f64,
    /// Tokens finished so far ÷ t.
    pub cumulative: f64,
}

/// Everything the pages show about one cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CellSeries {
    pub summary: CellSummary,
    pub by_turn: Vec<TurnIndexStats>,
    pub throughput: Vec<ThroughputPoint>,
    /// (t, trajectories in flight), a trajectory counting from its first send to its last end.
    pub in_flight: Vec<(f64, u32)>,
    /// Quantiles 0..=100 of successful turns' TTFT, E2E and mean ITL (empty when none).
    pub ttft_quantiles: Vec<f64>,
    pub e2e_quantiles: Vec<f64>,
    pub itl_quantiles: Vec<f64>,
    /// Median over successful turns with the server's own TTFT of (TTFT − server TTFT):
    /// the part of a TTFT outside the engine (network, HTTP, the client; for a simulated
    /// engine the harness's own time × its time scale). `None` when the server gives none.
    pub outside_engine_p50: Option<f64>,
    /// The largest of those parts: one turn the harness or the network held up.
    pub outside_engine_max: Option<f64>,
}

/// One telemetry series: (gpu, source, key) → points, one list per session of the run.
/// A resumed run's telemetry is its sessions one after another, each timed from its own
/// start; here each later session's times go on from the end of the one before (the time the
/// run was stopped is not on this axis).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TelemetrySeries {
    pub gpu: String,
    pub source: String,
    pub key: String,
    pub sessions: Vec<Vec<(f64, f64)>>,
    /// When each cell ran, as the samples of this series' stream (GPU, source) say, on the
    /// same time axis: the bands a telemetry chart marks the cells with.
    pub cells: Vec<CellSpan>,
}

/// A stretch of a telemetry stream sampled while one cell ran (`"<cache_mode>/<concurrency>"`),
/// from its first sample to its last.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CellSpan {
    pub start: f64,
    pub end: f64,
    pub cell: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunAggregate {
    /// In cell order (gpu, cache mode, concurrency).
    pub cells: Vec<CellSeries>,
    pub best: Vec<BestCell>,
    pub telemetry: Vec<TelemetrySeries>,
}

impl RunAggregate {
    pub fn gpus(&self) -> Vec<&str> {
        let mut g: Vec<&str> = self.cells.iter().map(|c| c.summary.gpu.as_str()).collect();
        g.dedup();
        g
    }
    pub fn cells_of<'a>(&'a self, gpu: &'a str) -> impl Iterator<Item = &'a CellSeries> + 'a {
        self.cells.iter().filter(move |c| c.summary.gpu == gpu)
    }
}

pub fn aggregate(run: &MeasuredRun) -> RunAggregate {
    let mut groups: BTreeMap<(&str, CacheMode, u32), Vec<&TurnRecord>> = BTreeMap::new();
    for r in &run.records {
        groups
            .entry((r.gpu.as_str(), r.cache_mode, r.concurrency))
            .or_default()
            .push(r);
    }
    let turns = &run.manifest.dataset.turns_per_trajectory;
    let cells: Vec<CellSeries> = groups
        .values()
        .filter_map(|g| cell_series(g, turns))
        .collect();
    let summaries: Vec<CellSummary> = cells.iter().map(|c| c.summary.clone()).collect();
    RunAggregate {
        best: best_cells(&summaries),
        cells,
        telemetry: telemetry_series(&run.telemetry),
    }
}

fn quantiles(values: &mut [f64]) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    (0..QUANTILES)
        .filter_map(|q| percentile_sorted(values, q as f64))
        .collect()
}

fn grid(end: f64) -> impl Iterator<Item = f64> {
    (1..=TIME_POINTS).map(move |i| end * i as f64 / TIME_POINTS as f64)
}

/// One cell's figures and series; `turns_per_traj` as in [`summarize_cell_with`].
pub fn cell_series(records: &[&TurnRecord], turns_per_traj: &[u32]) -> Option<CellSeries> {
    let summary = summarize_cell_with(records, turns_per_traj)?;
    let mut per_turn: BTreeMap<u32, TurnAcc> = BTreeMap::new();
    let mut ends: Vec<(f64, u64)> = Vec::with_capacity(records.len());
    let mut spans: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    let (mut ttft, mut e2e, mut itl) = (Vec::new(), Vec::new(), Vec::new());
    let mut outside = Vec::new();
    for r in records {
        let acc = per_turn.entry(r.turn).or_default();
        acc.turns += 1;
        if let Some(p) = r.prompt_tokens {
            acc.prompt.push(p as f64);
            if let Some(c) = r.cached_tokens {
                acc.cached.push(c as f64);
                acc.both_prompt = acc.both_prompt.saturating_add(p);
                acc.both_cached = acc.both_cached.saturating_add(c);
            }
        }
        if r.is_ok() {
            if let Some(v) = r.ttft {
                acc.ttft.push(v);
                ttft.push(v);
                outside.extend(r.server_ttft.map(|s| v - s));
            }
            if let Some(v) = r.e2e {
                acc.e2e.push(v);
                e2e.push(v);
            }
            if let Some(i) = r.itl {
                itl.push(i.mean);
            }
        }
        if let Some(c) = r.completion_tokens {
            ends.push((r.t_end, c));
        }
        let span = spans.entry(r.traj).or_insert((r.t_send, r.t_end));
        span.0 = span.0.min(r.t_send);
        span.1 = span.1.max(r.t_end);
    }
    let by_turn = per_turn
        .into_iter()
        .map(|(turn, mut a)| TurnIndexStats {
            turn,
            turns: a.turns,
            ttft: Band::of(&mut a.ttft),
            e2e: Band::of(&mut a.e2e),
            prompt_tokens_mean: mean(&a.prompt),
            cached_tokens_mean: mean(&a.cached),
            cache_hit_ratio: (a.both_prompt > 0)
                .then(|| a.both_cached as f64 / a.both_prompt as f64),
        })
        .collect();

    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let times: Vec<f64> = ends.iter().map(|e| e.0).collect();
    let mut cum_tokens = Vec::with_capacity(ends.len() + 1);
    cum_tokens.push(0u64);
    for e in &ends {
        cum_tokens.push(cum_tokens.last().copied().unwrap_or(0).saturating_add(e.1));
    }
    let done_by = |t: f64| cum_tokens[times.partition_point(|&x| x <= t)];
    let total = summary.total_time_s;
    let throughput = if total > 0.0 {
        grid(total)
            .map(|t| {
                let window = WINDOW_S.min(t);
                let recent = done_by(t).saturating_sub(done_by(t - window));
                ThroughputPoint {
                    t,
                    sliding: recent as f64 / window,
                    cumulative: done_by(t) as f64 / t,
                }
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut starts: Vec<f64> = spans.values().map(|s| s.0).collect();
    let mut stops: Vec<f64> = spans.values().map(|s| s.1).collect();
    starts.sort_by(f64::total_cmp);
    stops.sort_by(f64::total_cmp);
    let in_flight = if total > 0.0 {
        std::iter::once(0.0)
            .chain(grid(total))
            .map(|t| {
                let started = starts.partition_point(|&x| x <= t);
                let stopped = stops.partition_point(|&x| x <= t);
                (t, (started - stopped) as u32)
            })
            .collect()
    } else {
        Vec::new()
    };

    outside.sort_by(f64::total_cmp);
    Some(CellSeries {
        outside_engine_p50: percentile_sorted(&outside, 50.0),
        outside_engine_max: outside.last().copied(),
        summary,
        by_turn,
        throughput,
        in_flight,
        ttft_quantiles: quantiles(&mut ttft),
        e2e_quantiles: quantiles(&mut e2e),
        itl_quantiles: quantiles(&mut itl),
    })
}

#[derive(Default)]
struct TurnAcc {
    turns: u64,
    ttft: Vec<f64>,
    e2e: Vec<f64>,
    prompt: Vec<f64>,
    cached: Vec<f64>,
    both_prompt: u64,
    both_cached: u64,
}

fn telemetry_series(samples: &[TelemetrySample]) -> Vec<TelemetrySeries> {
    // (gpu, source, key) → session → points. Samples are in the order written, and one
    // GPU's samples from one source a second apart: a session (the first run, then each
    // resume) starts where that stream's time goes back.
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut series: BTreeMap<Key<'_>, BTreeMap<usize, Vec<(f64, f64)>>> = BTreeMap::new();
    // (gpu, source) → (session, offset, last time, end of the sessions so far).
    let mut streams: BTreeMap<(&str, &str), (usize, f64, f64, f64)> = BTreeMap::new();
    let mut spans: BTreeMap<(&str, &str), Vec<CellSpan>> = BTreeMap::new();
    for s in samples {
        if !s.t.is_finite() {
            continue;
        }
        let (session, offset, last, end) = streams
            .entry((s.gpu.as_str(), s.source.as_str()))
            .or_insert((0, 0.0, f64::NEG_INFINITY, 0.0));
        if s.t < *last {
            *session += 1;
            *offset = *end;
        }
        *last = s.t;
        let t = s.t + *offset;
        *end = end.max(t);
        let session = *session;
        if let Some(cell) = &s.cell {
            let stream = spans
                .entry((s.gpu.as_str(), s.source.as_str()))
                .or_default();
            match stream.last_mut() {
                Some(last) if last.cell == *cell && t >= last.end => last.end = t,
                _ => stream.push(CellSpan {
                    start: t,
                    end: t,
                    cell: cell.clone(),
                }),
            }
        }
        for (k, v) in &s.values {
            if v.is_finite() {
                series
                    .entry((s.gpu.as_str(), s.source.as_str(), k.as_str()))
                    .or_default()
                    .entry(session)
                    .or_default()
                    .push((t, *v));
            }
        }
    }
    series
        .into_iter()
        .map(|((gpu, source, key), sessions)| {
            let n: usize = sessions.values().map(Vec::len).sum();
            let step = n.div_ceil(TELEMETRY_POINTS).max(1);
            TelemetrySeries {
                gpu: gpu.to_string(),
                source: source.to_string(),
                key: key.to_string(),
                cells: spans.get(&(gpu, source)).cloned().unwrap_or_default(),
                sessions: sessions
                    .into_values()
                    .map(|mut points| {
                        points.sort_by(|a, b| a.0.total_cmp(&b.0));
                        points.into_iter().step_by(step).collect()
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Where a run's own `summary.json` disagrees with the summaries recomputed from its
/// `turns.jsonl` (counts exactly, total time to 1e-9 relative), one message per cell.
pub fn disagreements(recorded: &Summary, agg: &RunAggregate) -> Vec<String> {
    let name = |c: &CellSummary| format!("{} {} c={}", c.gpu, c.cache_mode, c.concurrency);
    let mut out = Vec::new();
    for r in &recorded.cells {
        let found = agg.cells.iter().map(|c| &c.summary).find(|c| {
            c.gpu == r.gpu && c.cache_mode == r.cache_mode && c.concurrency == r.concurrency
        });
        let Some(c) = found else {
            out.push(format!("{}: in summary.json but no turn records", name(r)));
            continue;
        };
        let mut diffs = Vec::new();
        for (what, a, b) in [
            ("turns", r.turns, c.turns),
            ("failed turns", r.failed_turns, c.failed_turns),
            ("trajectories", r.trajectories, c.trajectories),
            ("total tokens", r.total_output_tokens, c.total_output_tokens),
        ] {
            if a != b {
                diffs.push(format!("{what} {a} vs {b}"));
            }
        }
        if (r.total_time_s - c.total_time_s).abs() > 1e-9 * c.total_time_s.abs().max(1.0) {
            diffs.push(format!(
                "total time {} vs {}",
                r.total_time_s, c.total_time_s
            ));
        }
        if !diffs.is_empty() {
            out.push(format!(
                "{}: summary.json vs turns.jsonl: {}",
                name(r),
                diffs.join(", ")
            ));
        }
    }
    for c in agg.cells.iter().map(|c| &c.summary) {
        let listed = recorded.cells.iter().any(|r| {
            c.gpu == r.gpu && c.cache_mode == r.cache_mode && c.concurrency == r.concurrency
        });
        if !listed {
            out.push(format!(
                "{}: has turn records but is not in summary.json (interrupted run?)",
                name(c)
            ));
        }
    }
    out
}
