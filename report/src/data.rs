//! Spreadsheet exports: `data/turns.csv` (every per-turn record of every measured run) and
//! `data/summary.csv` (one row per cell, the recomputed summaries; legacy rows marked).
//! Times in `turns.csv` are seconds rounded to the microsecond (the JSONL keeps full precision).
//!
//! GitHub refuses files over 100 MB (a million records make a 162 MB CSV), so past
//! [`TURNS_CSV_PART_ROWS`] records the turns are split into `data/turns-000.csv`,
//! `data/turns-001.csv`, …, each with the header; [`turns_csv_files`] names them.
//!
//! A text field that a spreadsheet would run as a formula (it begins with `=`, `+`, `-`, `@`,
//! a tab or a carriage return: a run id, a dataset's trajectory id, a server's error message)
//! is written with a leading `'`, which spreadsheets show as text.

use crate::aggregate::RunAggregate;
use crate::load::{Run, RunData};
use anyhow::Context as _;
use std::borrow::Cow;
use std::path::Path;

/// `text` as a spreadsheet shows it as text, not a formula (see the module's documentation).
fn text(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Seconds rounded to the microsecond, so the CSV stays readable and about a third smaller.
fn us(t: f64) -> f64 {
    (t * 1e6).round() / 1e6
}

#[derive(serde::Serialize)]
struct TurnRow<'a> {
    run_id: Cow<'a, str>,
    simulated: bool,
    gpu: Cow<'a, str>,
    cache_mode: &'a str,
    concurrency: u32,
    traj: u32,
    traj_id: Cow<'a, str>,
    turn: u32,
    attempt: u32,
    t_send: f64,
    t_first_token: Option<f64>,
    t_end: f64,
    ttft: Option<f64>,
    /// The server's own TTFT (its timestamps), next to the client's.
    server_ttft: Option<f64>,
    e2e: Option<f64>,
    itl_mean: Option<f64>,
    itl_p50: Option<f64>,
    itl_p99: Option<f64>,
    itl_max: Option<f64>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    think_time: f64,
    finish_reason: Option<Cow<'a, str>>,
    error: Option<Cow<'a, str>>,
    in_flight: u32,
    retractions: Option<u32>,
}

/// A cell's total output: the server's token count, or a legacy import's word count (which
/// the seed's files may hold as a fraction).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Tokens {
    Counted(u64),
    Words(f64),
}

#[derive(serde::Serialize)]
struct SummaryRow<'a> {
    run_id: Cow<'a, str>,
    simulated: bool,
    /// Simulated with no engine cost (`--sim-time-scale inf`): the harness's own times.
    zero_cost: bool,
    /// `measured` or `legacy (words, averaged times)`.
    source: &'a str,
    gpu: Cow<'a, str>,
    cache_mode: &'a str,
    concurrency: u32,
    trajectories: Option<u64>,
    trajectories_ok: Option<u64>,
    turns: Option<u64>,
    failed_turns: Option<u64>,
    /// `unfinished` or `in parts`: not one whole measured cell (left out of the site's
    /// comparisons); empty for a whole cell.
    partial: &'a str,
    total_time_s: Option<f64>,
    avg_traj_time_s: Option<f64>,
    traj_per_s: Option<f64>,
    output_tok_per_s: Option<f64>,
    total_output_tokens: Option<Tokens>,
    tokens_per_turn: Option<f64>,
    ttft_p50_s: Option<f64>,
    ttft_p90_s: Option<f64>,
    ttft_p99_s: Option<f64>,
    e2e_p50_s: Option<f64>,
    e2e_p90_s: Option<f64>,
    e2e_p99_s: Option<f64>,
    itl_turn_mean_p50_s: Option<f64>,
    itl_turn_mean_p90_s: Option<f64>,
    itl_turn_mean_p99_s: Option<f64>,
    cache_hit_ratio: Option<f64>,
    retracted_turns: Option<u64>,
}

/// Most rows in one turns CSV file: about 40 MB, well under GitHub's 100 MB per-file limit.
pub const TURNS_CSV_PART_ROWS: usize = 250_000;

/// Records of the measured runs, i.e. the rows of the turns CSV.
pub fn turn_rows(runs: &[Run]) -> usize {
    runs.iter()
        .map(|r| match &r.data {
            RunData::Measured(m) => m.records.len(),
            RunData::Legacy(_) => 0,
        })
        .sum()
}

/// Site-relative paths of the turns CSV: `data/turns.csv` when `rows` fit in one part of
/// `part_rows` (0 counts as 1), else `data/turns-000.csv`, `data/turns-001.csv`, ….
pub fn turns_csv_files(rows: usize, part_rows: usize) -> Vec<String> {
    let part_rows = part_rows.max(1);
    if rows <= part_rows {
        return vec!["data/turns.csv".into()];
    }
    (0..rows.div_ceil(part_rows))
        .map(|i| format!("data/turns-{i:03}.csv"))
        .collect()
}

fn turns_writer(site: &Path, name: &str) -> anyhow::Result<csv::Writer<std::fs::File>> {
    let path = site.join(name);
    csv::WriterBuilder::new()
        .buffer_capacity(1 << 20)
        .from_path(&path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Writes the turns CSV ([`turns_csv_files`] with `part_rows`): every record of every
/// measured run, in load order, a header on each part.
pub fn write_turns(site: &Path, runs: &[Run], part_rows: usize) -> anyhow::Result<()> {
    let dir = site.join("data");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let files = turns_csv_files(turn_rows(runs), part_rows);
    let part_rows = part_rows.max(1);
    let mut part = 0;
    let mut path = site.join(&files[0]);
    let mut w = turns_writer(site, &files[0])?;
    let mut in_part = 0;
    for run in runs {
        if let RunData::Measured(m) = &run.data {
            for r in &m.records {
                if in_part == part_rows {
                    w.flush()
                        .with_context(|| format!("writing {}", path.display()))?;
                    part += 1;
                    path = site.join(&files[part]);
                    w = turns_writer(site, &files[part])?;
                    in_part = 0;
                }
                in_part += 1;
                w.serialize(TurnRow {
                    run_id: text(&m.manifest.run_id),
                    simulated: m.manifest.simulated,
                    gpu: text(&r.gpu),
                    cache_mode: r.cache_mode.as_str(),
                    concurrency: r.concurrency,
                    traj: r.traj,
                    traj_id: text(&r.traj_id),
                    turn: r.turn,
                    attempt: r.attempt,
                    t_send: us(r.t_send),
                    t_first_token: r.t_first_token.map(us),
                    t_end: us(r.t_end),
                    ttft: r.ttft.map(us),
                    server_ttft: r.server_ttft.map(us),
                    e2e: r.e2e.map(us),
                    itl_mean: r.itl.map(|i| us(i.mean)),
                    itl_p50: r.itl.map(|i| us(i.p50)),
                    itl_p99: r.itl.map(|i| us(i.p99)),
                    itl_max: r.itl.map(|i| us(i.max)),
                    prompt_tokens: r.prompt_tokens,
                    cached_tokens: r.cached_tokens,
                    completion_tokens: r.completion_tokens,
                    think_time: us(r.think_time),
                    finish_reason: r.finish_reason.as_deref().map(text),
                    error: r.error.as_deref().map(text),
                    in_flight: r.in_flight,
                    retractions: r.retractions,
                })
                .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes `data/summary.csv`: one row per cell (recomputed), legacy rows marked.
pub fn write_summary(
    site: &Path,
    runs: &[Run],
    aggregates: &[Option<RunAggregate>],
) -> anyhow::Result<()> {
    let dir = site.join("data");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("summary.csv");
    let mut w =
        csv::Writer::from_path(&path).with_context(|| format!("creating {}", path.display()))?;
    for (run, agg) in runs.iter().zip(aggregates) {
        match (&run.data, agg) {
            (RunData::Measured(m), Some(a)) => {
                for c in a.cells.iter().map(|c| &c.summary) {
                    w.serialize(SummaryRow {
                        run_id: text(&m.manifest.run_id),
                        simulated: m.manifest.simulated,
                        zero_cost: m.manifest.zero_cost(),
                        source: "measured",
                        gpu: text(&c.gpu),
                        cache_mode: c.cache_mode.as_str(),
                        concurrency: c.concurrency,
                        trajectories: Some(c.trajectories),
                        trajectories_ok: Some(c.trajectories_ok),
                        turns: Some(c.turns),
                        failed_turns: Some(c.failed_turns),
                        partial: crate::pages::partial(c).unwrap_or(""),
                        total_time_s: Some(c.total_time_s),
                        avg_traj_time_s: c.avg_traj_time_s,
                        traj_per_s: Some(c.traj_per_s),
                        output_tok_per_s: Some(c.output_tok_per_s),
                        total_output_tokens: Some(Tokens::Counted(c.total_output_tokens)),
                        tokens_per_turn: c.tokens_per_turn,
                        ttft_p50_s: c.ttft.p50,
                        ttft_p90_s: c.ttft.p90,
                        ttft_p99_s: c.ttft.p99,
                        e2e_p50_s: c.e2e.p50,
                        e2e_p90_s: c.e2e.p90,
                        e2e_p99_s: c.e2e.p99,
                        itl_turn_mean_p50_s: c.itl_turn_mean.p50,
                        itl_turn_mean_p90_s: c.itl_turn_mean.p90,
                        itl_turn_mean_p99_s: c.itl_turn_mean.p99,
                        cache_hit_ratio: c.cache_hit_ratio,
                        retracted_turns: c.retracted_turns,
                    })?;
                }
            }
            (RunData::Legacy(l), _) => {
                for r in &l.rows {
                    w.serialize(SummaryRow {
                        run_id: text(&l.id),
                        simulated: false,
                        zero_cost: false,
                        source: "legacy (words, averaged times)",
                        gpu: text(&l.gpu),
                        cache_mode: "seed",
                        concurrency: r.batch_size,
                        trajectories: None,
                        trajectories_ok: None,
                        turns: None,
                        failed_turns: None,
                        partial: "",
                        total_time_s: r.total_time_s,
                        avg_traj_time_s: r.avg_traj_time_s,
                        traj_per_s: r.traj_per_s,
                        output_tok_per_s: r.tok_per_s,
                        total_output_tokens: r.total_tokens.map(Tokens::Words),
                        tokens_per_turn: r.tokens_per_turn,
                        ttft_p50_s: None,
                        ttft_p90_s: None,
                        ttft_p99_s: None,
                        e2e_p50_s: None,
                        e2e_p90_s: None,
                        e2e_p99_s: None,
                        itl_turn_mean_p50_s: None,
                        itl_turn_mean_p90_s: None,
                        itl_turn_mean_p99_s: None,
                        cache_hit_ratio: None,
                        retracted_turns: None,
                    })?;
                }
            }
            _ => {}
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
