//! Per-cell summaries (`summary.json`) and the one function that computes them from turn
//! records, so the runner's summary and any recomputation (report, tests) agree exactly.
//!
//! The seed's columns, with their definitions here:
//! - **Total Time (s)** `total_time_s`: the cell's makespan, from cell start (time 0) to the
//!   last response's end (`max t_end`).
//! - **Avg/Traj (s)** `avg_traj_time_s`: mean over the trajectories that succeeded (ran to
//!   their end without a failed turn) of (last `t_end` − first `t_send`), think time included.
//!   A failed trajectory ends early, so it is left out, as the seed's total ÷ processed did.
//! - **Traj Throughput** `traj_per_s`: trajectories that finished without error / total time.
//! - **Token Throughput** `output_tok_per_s`: server-counted generated tokens / total time.
//! - **Total Tokens** `total_output_tokens`: Σ server `completion_tokens`.
//! - **Tok/Turn** `tokens_per_turn`: total output tokens / turns that returned a count.
//!
//! Latency distributions are over successful turns: `ttft`, `e2e`, `tpot` per turn, and
//! `itl_turn_mean` = the distribution of each turn's mean inter-token latency.

use crate::stats::Percentiles;
use crate::turn::{CacheMode, TurnRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub schema_version: u32,
    pub run_id: String,
    pub simulated: bool,
    pub cells: Vec<CellSummary>,
    /// Best cell per GPU (and cache mode) by each criterion.
    pub best: Vec<BestCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSummary {
    pub gpu: String,
    pub cache_mode: CacheMode,
    pub concurrency: u32,
    /// Distinct trajectories with at least one record.
    pub trajectories: u64,
    /// Trajectories none of whose turns failed.
    pub trajectories_ok: u64,
    pub turns: u64,
    pub failed_turns: u64,
    pub total_time_s: f64,
    pub avg_traj_time_s: Option<f64>,
    pub traj_per_s: f64,
    pub output_tok_per_s: f64,
    pub total_output_tokens: u64,
    pub tokens_per_turn: Option<f64>,
    pub ttft: Percentiles,
    pub e2e: Percentiles,
    pub tpot: Percentiles,
    pub itl_turn_mean: Percentiles,
    pub prompt_tokens_total: u64,
    /// Σ cached tokens over turns that reported them; `None` if none did.
    pub cached_tokens_total: Option<u64>,
    /// Prompt tokens the engine computed (prompt − cached), over turns reporting both.
    pub prefill_tokens_computed: Option<u64>,
    /// Prompt tokens served from cache instead of computed (= cached tokens).
    pub prefill_tokens_saved: Option<u64>,
    /// cached / prompt over turns reporting both.
    pub cache_hit_ratio: Option<f64>,
    /// Failure messages and how often each occurred (first 80 chars of the message).
    pub errors: BTreeMap<String, u64>,
    /// Trajectories the cell was to run (the dataset's), when the run's manifest lists their
    /// turn counts (`dataset.turns_per_trajectory`); else unknown.
    #[serde(default)]
    pub trajectories_planned: Option<u64>,
    /// Every planned trajectory finished (all its turns, or a failed turn that ended it);
    /// `Some(false)` for a cell an interrupted run left part-way. Unknown without turn counts.
    #[serde(default)]
    pub complete: Option<bool>,
    /// Turns (failed ones included) the server retracted at least once to free KV cache for
    /// others, over the turns that report it ([`TurnRecord::retractions`]); `None` if none
    /// did. Many of them mean the concurrency overcommits the GPU's KV pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retracted_turns: Option<u64>,
}

/// Criteria by which a best cell is chosen.
pub const CRITERIA: [&str; 3] = ["output_tok_per_s", "traj_per_s", "avg_traj_time_s"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestCell {
    pub gpu: String,
    /// `None` when the best is taken across all cache modes of the GPU.
    pub cache_mode: Option<CacheMode>,
    /// One of [`CRITERIA`].
    pub criterion: String,
    pub best_cache_mode: CacheMode,
    pub best_concurrency: u32,
    pub value: f64,
}

impl CellSummary {
    pub fn criterion(&self, name: &str) -> Option<f64> {
        match name {
            "output_tok_per_s" => Some(self.output_tok_per_s),
            "traj_per_s" => Some(self.traj_per_s),
            "avg_traj_time_s" => self.avg_traj_time_s,
            _ => None,
        }
    }

    /// A `none` (no reuse) cell in which the server reported cached tokens all the same: its
    /// radix cache was on (an attached server started without `--disable-radix-cache`).
    pub fn cache_not_off(&self) -> bool {
        self.cache_mode == CacheMode::None && self.cached_tokens_total.unwrap_or(0) > 0
    }
}

/// Summarize the records of one cell. Records of superseded attempts must already be
/// dropped ([`crate::turn::latest_attempts`]). Returns `None` for an empty slice.
pub fn summarize_cell(records: &[&TurnRecord]) -> Option<CellSummary> {
    summarize_cell_with(records, &[])
}

/// [`summarize_cell`] knowing how many turns each trajectory has (`turns_per_traj[t]`, the
/// manifest's `dataset.turns_per_trajectory`; empty when unknown): a trajectory then counts
/// as finished only when it has all its turns or ended in a failure, so an interrupted cell's
/// trajectories that were still running are neither successes nor in the mean time per
/// trajectory, and the cell says it is not `complete`.
pub fn summarize_cell_with(records: &[&TurnRecord], turns_per_traj: &[u32]) -> Option<CellSummary> {
    let first = records.first()?;
    let mut by_traj: BTreeMap<u32, (f64, f64, bool)> = BTreeMap::new();
    let mut turns_seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut total_time: f64 = 0.0;
    let (mut ttft, mut e2e, mut tpot, mut itl) = (vec![], vec![], vec![], vec![]);
    let mut out_tokens = 0u64;
    let mut counted_turns = 0u64;
    let mut failed = 0u64;
    let mut prompt_total = 0u64;
    let (mut cached_total, mut both_prompt, mut any_cached) = (0u64, 0u64, false);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut retracted: Option<u64> = None;
    for r in records {
        total_time = total_time.max(r.t_end);
        if let Some(n) = r.retractions {
            *retracted.get_or_insert(0) += u64::from(n > 0);
        }
        let e = by_traj.entry(r.traj).or_insert((r.t_send, r.t_end, true));
        e.0 = e.0.min(r.t_send);
        e.1 = e.1.max(r.t_end);
        *turns_seen.entry(r.traj).or_default() += 1;
        if let Some(c) = r.completion_tokens {
            out_tokens = out_tokens.saturating_add(c);
            counted_turns += 1;
        }
        if let Some(p) = r.prompt_tokens {
            prompt_total = prompt_total.saturating_add(p);
            if let Some(c) = r.cached_tokens {
                any_cached = true;
                cached_total = cached_total.saturating_add(c);
                both_prompt = both_prompt.saturating_add(p);
            }
        }
        match &r.error {
            Some(msg) => {
                failed += 1;
                e.2 = false;
                let key: String = msg.chars().take(80).collect();
                *errors.entry(key).or_default() += 1;
            }
            None => {
                ttft.extend(r.ttft);
                e2e.extend(r.e2e);
                tpot.extend(r.tpot());
                itl.extend(r.itl.map(|i| i.mean));
            }
        }
    }
    let known = !turns_per_traj.is_empty();
    // Finished: all its turns recorded, or ended by a failure (unknowable without counts).
    let finished = |t: u32, ok: bool| {
        !known
            || !ok
            || turns_per_traj
                .get(t as usize)
                .is_some_and(|&n| turns_seen.get(&t).copied().unwrap_or(0) >= n)
    };
    let succeeded: Vec<(f64, f64)> = by_traj
        .iter()
        .filter(|(t, v)| v.2 && finished(**t, v.2))
        .map(|(_, v)| (v.0, v.1))
        .collect();
    let trajectories_ok = succeeded.len() as u64;
    // The mean time of the trajectories that ran to their end without failing (a failure
    // ends a trajectory early, so counting it would make failing cells look fast).
    let durations: Vec<f64> = succeeded.iter().map(|t| t.1 - t.0).collect();
    // A cell is run whole under one attempt number (a resume runs an unfinished cell again
    // from its start): trajectories from different attempts are a run that was cut again.
    let one_attempt = records.iter().all(|r| r.attempt == first.attempt);
    let complete = known.then(|| {
        one_attempt
            && (0..turns_per_traj.len() as u32)
                .all(|t| by_traj.get(&t).is_some_and(|v| finished(t, v.2)))
    });
    let rate = |x: f64| {
        if total_time > 0.0 {
            x / total_time
        } else {
            0.0
        }
    };
    Some(CellSummary {
        gpu: first.gpu.clone(),
        cache_mode: first.cache_mode,
        concurrency: first.concurrency,
        trajectories: by_traj.len() as u64,
        trajectories_ok,
        turns: records.len() as u64,
        failed_turns: failed,
        total_time_s: total_time,
        avg_traj_time_s: crate::stats::mean(&durations),
        traj_per_s: rate(trajectories_ok as f64),
        output_tok_per_s: rate(out_tokens as f64),
        total_output_tokens: out_tokens,
        tokens_per_turn: (counted_turns > 0).then(|| out_tokens as f64 / counted_turns as f64),
        ttft: Percentiles::of(&ttft),
        e2e: Percentiles::of(&e2e),
        tpot: Percentiles::of(&tpot),
        itl_turn_mean: Percentiles::of(&itl),
        prompt_tokens_total: prompt_total,
        cached_tokens_total: any_cached.then_some(cached_total),
        prefill_tokens_computed: any_cached.then_some(both_prompt - cached_total.min(both_prompt)),
        prefill_tokens_saved: any_cached.then_some(cached_total),
        cache_hit_ratio: (any_cached && both_prompt > 0)
            .then(|| cached_total as f64 / both_prompt as f64),
        errors,
        trajectories_planned: known.then_some(turns_per_traj.len() as u64),
        complete,
        retracted_turns: retracted,
    })
}

/// Group records by cell (gpu, cache mode, concurrency) and summarize each, in cell order.
pub fn summarize(records: &[TurnRecord]) -> Vec<CellSummary> {
    summarize_with(records, &[])
}

/// [`summarize`] knowing each trajectory's turn count ([`summarize_cell_with`]).
pub fn summarize_with(records: &[TurnRecord], turns_per_traj: &[u32]) -> Vec<CellSummary> {
    let mut cells: BTreeMap<(&str, CacheMode, u32), Vec<&TurnRecord>> = BTreeMap::new();
    for r in records {
        cells
            .entry((r.gpu.as_str(), r.cache_mode, r.concurrency))
            .or_default()
            .push(r);
    }
    cells
        .values()
        .filter_map(|v| summarize_cell_with(v, turns_per_traj))
        .collect()
}

/// The best cell per GPU, per (GPU, cache mode), by each criterion. Higher is better except
/// for `avg_traj_time_s`. Not candidates: cells where every trajectory failed, cells an
/// interrupted run left part-way (`complete == Some(false)`), `none` cells whose server reused
/// cache all the same ([`CellSummary::cache_not_off`]); and where some candidates ran without
/// any failure, only those (failures end trajectories early, which can flatter a cell).
pub fn best_cells(cells: &[CellSummary]) -> Vec<BestCell> {
    let mut out = Vec::new();
    let mut gpus: Vec<&str> = cells.iter().map(|c| c.gpu.as_str()).collect();
    gpus.sort();
    gpus.dedup();
    for gpu in gpus {
        let mut scopes: Vec<Option<CacheMode>> = vec![None];
        for m in CacheMode::ALL {
            if cells.iter().any(|c| c.gpu == gpu && c.cache_mode == m) {
                scopes.push(Some(m));
            }
        }
        for scope in scopes {
            for crit in CRITERIA {
                let lower_is_better = crit == "avg_traj_time_s";
                let candidates: Vec<&CellSummary> = cells
                    .iter()
                    .filter(|c| c.gpu == gpu && scope.is_none_or(|m| c.cache_mode == m))
                    .filter(|c| {
                        c.trajectories_ok > 0 && c.complete != Some(false) && !c.cache_not_off()
                    })
                    .collect();
                let clean = candidates.iter().any(|c| c.failed_turns == 0);
                let best = candidates
                    .into_iter()
                    .filter(|c| !clean || c.failed_turns == 0)
                    .filter_map(|c| c.criterion(crit).map(|v| (c, v)))
                    .reduce(|a, b| {
                        let better = if lower_is_better {
                            b.1 < a.1
                        } else {
                            b.1 > a.1
                        };
                        if better {
                            b
                        } else {
                            a
                        }
                    });
                if let Some((c, v)) = best {
                    out.push(BestCell {
                        gpu: gpu.to_string(),
                        cache_mode: scope,
                        criterion: crit.to_string(),
                        best_cache_mode: c.cache_mode,
                        best_concurrency: c.concurrency,
                        value: v,
                    });
                }
            }
        }
    }
    out
}
