//! Page contexts: what each page shows, as preformatted values built by pure functions from the
//! loaded runs and their aggregates, then rendered by the askama templates in `templates/`.

use crate::aggregate::{CellSeries, RunAggregate, TelemetrySeries};
use crate::assets;
use crate::charts::{self, ChartSpec, ConcurrencyLine, Ids};
use crate::legacy::{LegacyRow, LegacyRun};
use crate::load::{MeasuredRun, Run, RunData, Skipped};
use askama::Template;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use turnbench_schema::{CacheMode, CellSummary, Manifest, Percentiles};

pub const VIEWER_HREF: &str = "viewer.html";
pub const SIMULATED_NOTE: &str = "Simulated results: numbers of runs marked simulated come from turnbench's simulated SGLang engine (a cost model), not from a real GPU.";
pub const LEGACY_NOTE: &str = "Legacy import of the seed's files: its \"tokens\" are word counts, not tokenizer tokens, and its per-turn times are averages (trajectory time ÷ turns).";

/// What every page shares: title, navigation, asset links, and the page-wide labels.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub site_title: String,
    pub page_title: String,
    pub nav: Vec<NavLink>,
    pub css: String,
    pub plotly: String,
    pub charts_js: String,
    /// The page shows simulated numbers: a banner says so.
    pub simulated: bool,
    /// The page shows legacy (seed) numbers: a banner says so.
    pub legacy: bool,
    pub simulated_note: &'static str,
    pub legacy_note: &'static str,
    /// The page shows a run with no engine cost: the banner says its times are not a GPU's.
    pub zero_cost: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NavLink {
    pub href: String,
    pub label: String,
    pub current: bool,
}

impl Layout {
    /// The layout of a page at the site root whose file name is `current`.
    pub fn new(
        site_title: &str,
        page_title: &str,
        gpus: &[GpuLink],
        current: &str,
        simulated: bool,
        legacy: bool,
    ) -> Self {
        let mut nav = vec![NavLink {
            href: "index.html".into(),
            label: "Overview".into(),
            current: current == "index.html",
        }];
        nav.extend(gpus.iter().map(|g| NavLink {
            href: g.href.clone(),
            label: format!("GPU {}", g.label),
            current: current == g.href,
        }));
        nav.push(NavLink {
            href: VIEWER_HREF.into(),
            label: "Viewer".into(),
            current: current == VIEWER_HREF,
        });
        Layout {
            site_title: site_title.to_string(),
            page_title: page_title.to_string(),
            nav,
            css: assets::CSS.href(),
            plotly: assets::PLOTLY.href(),
            charts_js: assets::CHARTS_JS.href(),
            simulated,
            legacy,
            simulated_note: SIMULATED_NOTE,
            legacy_note: LEGACY_NOTE,
            zero_cost: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuLink {
    pub label: String,
    pub href: String,
    pub simulated: bool,
    pub legacy: bool,
    /// Every run on this GPU had no engine cost (`--sim-time-scale inf`).
    pub zero_cost: bool,
}

/// One run's metadata row on the index.
#[derive(Debug, Clone, Serialize)]
pub struct RunMeta {
    pub id: String,
    pub source: String,
    pub simulated: bool,
    pub legacy: bool,
    /// Simulated with no engine cost: its times are the harness's own.
    pub zero_cost: bool,
    pub created: String,
    pub model: String,
    pub engine: String,
    pub launch_args: String,
    pub dataset: String,
    pub tool: String,
    pub gpus: String,
    pub turns: String,
    /// Something the reader should know (torn tail, legacy units).
    pub notes: Vec<String>,
    /// What limits comparing this run's cells ([`prompt_caveat`]).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BestRow {
    pub gpu: String,
    pub href: String,
    pub run_id: String,
    pub simulated: bool,
    pub legacy: bool,
    pub zero_cost: bool,
    pub cache_mode: String,
    pub concurrency: String,
    /// The best cell ran at the highest concurrency tested on the GPU (of several): the
    /// throughput may still rise past it.
    pub at_edge: bool,
    /// The GPU's next best cell by token throughput, `mode · c=N (tok/s, −x %)`, or `—`.
    pub runner_up: String,
    /// The runner-up is within [`NEAR_TIE`] of the best.
    pub near_tie: bool,
    pub tok_s: String,
    pub traj_s: String,
    pub avg_traj: String,
    /// The cell's failed turns (its figures cover the trajectories that did not fail).
    pub failed: String,
    /// The cell's turns the server retracted, with their share ([`retracted_of`]).
    pub retracted: String,
    /// The best cell of the GPU by the seed's other two criteria, `mode · c=N (value)`.
    pub best_traj_s: String,
    pub best_avg_traj: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedupRow {
    pub gpu: String,
    pub run_id: String,
    pub simulated: bool,
    pub legacy: bool,
    pub zero_cost: bool,
    pub concurrency: String,
    pub baseline: String,
    /// (mode, tok/s, speed-up vs baseline by tok/s, by traj/s) for each mode measured.
    pub modes: Vec<(String, String, String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexPage {
    pub runs: Vec<RunMeta>,
    pub skipped: Vec<Skipped>,
    pub gpus: Vec<GpuLink>,
    pub best: Vec<BestRow>,
    pub speedup_modes: Vec<String>,
    pub speedups: Vec<SpeedupRow>,
    /// Runs with no engine cost, left out of everything that compares GPUs or cache modes.
    pub harness_runs: Vec<String>,
    /// When the runs compared ran different workloads: each run with its workload
    /// ([`workload`]); empty when they all ran the same one.
    pub workloads: Vec<(String, String)>,
    pub charts: Vec<ChartSpec>,
    /// Site-relative links to the spreadsheet exports: the turns CSV (one file or its parts,
    /// see [`crate::data::turns_csv_files`]) then `data/summary.csv`.
    pub data_files: Vec<String>,
}

/// One row of the seed's table.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRow {
    pub concurrency: String,
    pub total_time: String,
    pub avg_traj: String,
    pub traj_s: String,
    pub tok_s: String,
    pub total_tokens: String,
    pub tok_turn: String,
    pub failed_turns: String,
    pub best: bool,
    /// See [`partial`].
    pub partial: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedTable {
    /// DOM id, `seed-<section>-<mode>`.
    pub id: String,
    pub cache_mode: String,
    pub legacy: bool,
    pub rows: Vec<SeedRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub concurrency: String,
    /// See [`partial`].
    pub partial: Option<&'static str>,
    /// The successful turns the percentiles are over.
    pub turns: String,
    /// TTFT, ITL (per-turn mean), E2E: p50, p90, p99 each, in ms.
    pub values: Vec<String>,
    /// The median part of a TTFT outside the engine, ms, with its share of the TTFT p50.
    pub outside_engine: String,
    pub cache_hit: String,
    /// Turns the server retracted at least once, with their share of the cell's turns.
    pub retracted: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyTable {
    pub cache_mode: String,
    pub rows: Vec<LatencyRow>,
    /// Some row's p99 is over fewer than [`THIN_P99`] turns (it rests on the few slowest).
    pub thin_p99: bool,
    /// Some row knows the part of its TTFT outside the engine.
    pub outside_engine: bool,
    /// Some row's server says how often it retracted its turns.
    pub retractions: bool,
}

/// Below this many turns a p99 rests on a handful of them (n/100) and moves from run to run.
pub const THIN_P99: u64 = 1000;

/// One run's part of a GPU page.
#[derive(Debug, Clone, Serialize)]
pub struct GpuSection {
    pub run_id: String,
    pub simulated: bool,
    pub legacy: bool,
    pub zero_cost: bool,
    pub seed_tables: Vec<SeedTable>,
    pub latency_tables: Vec<LatencyTable>,
    pub errors: Vec<(String, String)>,
    /// What limits comparing this run's cells ([`prompt_caveat`]).
    pub warnings: Vec<String>,
    pub charts: Vec<ChartSpec>,
    /// The telemetry that tells how the server and GPU ran ([`telemetry_charts`]), then every
    /// other series sampled, one chart each (shown folded).
    pub telemetry: Vec<ChartSpec>,
    pub telemetry_more: Vec<ChartSpec>,
    /// On what clock the run's times are, and what a trajectory's time holds besides the
    /// engine's work ([`time_basis`]); empty for a legacy import.
    pub time_basis: String,
    /// How often telemetry was sampled, on the clock of the run's times ([`sampled_every`]).
    pub sampled_every: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuPage {
    pub label: String,
    pub href: String,
    pub sections: Vec<GpuSection>,
}

impl GpuPage {
    pub fn charts(&self) -> Vec<&ChartSpec> {
        self.sections
            .iter()
            .flat_map(|s| s.charts.iter().chain(&s.telemetry).chain(&s.telemetry_more))
            .collect()
    }
}

#[derive(Template)]
#[template(path = "index.html")]
pub struct IndexTemplate<'a> {
    pub layout: &'a Layout,
    pub page: &'a IndexPage,
}

#[derive(Template)]
#[template(path = "gpu.html")]
pub struct GpuTemplate<'a> {
    pub layout: &'a Layout,
    pub page: &'a GpuPage,
    pub charts: Vec<&'a ChartSpec>,
}

/// All page contexts of a site.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub title: String,
    pub index: IndexPage,
    pub gpu_pages: Vec<GpuPage>,
}

impl Site {
    pub fn layout(&self, page_title: &str, current: &str, simulated: bool, legacy: bool) -> Layout {
        Layout::new(
            &self.title,
            page_title,
            &self.index.gpus,
            current,
            simulated,
            legacy,
        )
    }

    pub fn render_index(&self) -> askama::Result<String> {
        let any_sim = self.index.runs.iter().any(|r| r.simulated);
        let any_legacy = self.index.runs.iter().any(|r| r.legacy);
        let mut layout = self.layout(&self.title, "index.html", any_sim, any_legacy);
        layout.zero_cost = self.index.runs.iter().any(|r| r.zero_cost);
        IndexTemplate {
            layout: &layout,
            page: &self.index,
        }
        .render()
    }

    pub fn render_gpu(&self, page: &GpuPage) -> askama::Result<String> {
        let sim = page.sections.iter().any(|s| s.simulated);
        let legacy = page.sections.iter().any(|s| s.legacy);
        let mut layout = self.layout(&format!("GPU {}", page.label), &page.href, sim, legacy);
        layout.zero_cost = page.sections.iter().any(|s| s.zero_cost);
        GpuTemplate {
            layout: &layout,
            page,
            charts: page.charts(),
        }
        .render()
    }
}

// ---- formatting ----

pub fn num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

pub fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| num(v, decimals))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| num(v * 1e3, 1))
}

/// A GPU label as a file-name part: ASCII letters, digits, `-` and `_` kept, others `_`.
pub fn sanitize_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "gpu".into()
    } else {
        s
    }
}

/// Masks values of secret-looking flags (`--api-key X`, `--api-key=X`, `*token*`, …).
pub fn mask_secrets(args: &[String]) -> String {
    let secret = |a: &str| {
        let a = a.to_ascii_lowercase();
        a.starts_with('-')
            && ["key", "token", "secret", "password", "auth"]
                .iter()
                .any(|w| a.contains(w))
    };
    let mut out = Vec::with_capacity(args.len());
    let mut mask_next = false;
    for a in args {
        if mask_next {
            out.push("***".to_string());
            mask_next = false;
        } else if let Some((flag, _)) = a.split_once('=').filter(|(f, _)| secret(f)) {
            out.push(format!("{flag}=***"));
        } else {
            mask_next = secret(a);
            out.push(a.clone());
        }
    }
    out.join(" ")
}

fn joined<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let set: BTreeSet<&str> = items.filter(|s| !s.is_empty()).collect();
    if set.is_empty() {
        "—".into()
    } else {
        set.into_iter().collect::<Vec<_>>().join(", ")
    }
}

fn run_meta(run: &Run, agg: &Option<RunAggregate>) -> RunMeta {
    match &run.data {
        RunData::Measured(m) => {
            let mut meta = measured_meta(run, m);
            if let Some(e) = &m.summary_error {
                meta.notes.push(format!("summary.json ignored: {e}"));
            }
            if let (Some(recorded), Some(agg)) = (&m.recorded_summary, agg) {
                meta.notes
                    .extend(crate::aggregate::disagreements(recorded, agg));
            }
            if let Some(agg) = agg {
                meta.warnings.extend(run_unfinished(&m.manifest, agg));
            }
            meta
        }
        RunData::Legacy(l) => RunMeta {
            id: l.id.clone(),
            source: run.source.clone(),
            simulated: false,
            legacy: true,
            zero_cost: false,
            created: "—".into(),
            model: "—".into(),
            engine: "—".into(),
            launch_args: "—".into(),
            dataset: "—".into(),
            tool: "seed scripts".into(),
            gpus: l.gpu.clone(),
            turns: l.turns.len().to_string(),
            notes: vec![LEGACY_NOTE.into()],
            warnings: Vec::new(),
        },
    }
}

/// The model(s) a run's servers served (or the simulator modelled).
fn model_of(man: &Manifest) -> String {
    let sim_model = man.backend.sim.as_ref().map(|s| s.model.as_str());
    joined(
        man.servers
            .iter()
            .filter_map(|s| s.model_path.as_deref())
            .chain(sim_model),
    )
}

fn measured_meta(run: &Run, m: &MeasuredRun) -> RunMeta {
    let man: &Manifest = &m.manifest;
    let model = model_of(man);
    let versions = joined(man.servers.iter().filter_map(|s| s.version.as_deref()));
    let kind = match man.backend.kind {
        turnbench_schema::BackendKind::Sglang => "SGLang",
        turnbench_schema::BackendKind::Openai => "OpenAI-compatible",
        turnbench_schema::BackendKind::Sim => "simulated SGLang engine",
    };
    let mut engine = format!(
        "{kind} {versions} ({}, {} API)",
        man.backend.access, man.backend.api
    );
    if let Some(sim) = &man.backend.sim {
        // (Each GPU's own profile is in the GPUs line: a run may simulate several.)
        if sim.zero_cost {
            engine.push_str("; time scale ∞ (no engine cost: times are the harness's own)");
        } else {
            engine.push_str(&format!("; time scale ×{}", sim.time_scale));
        }
    }
    let launch = joined(
        man.servers
            .iter()
            .filter_map(|s| s.launch_command.as_ref().map(|c| mask_secrets(c)))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    // Each GPU with its hardware (nvidia-smi's name, or the simulated profile) and memory.
    let gpus = man
        .gpus
        .iter()
        .map(|g| {
            let mut hw: Vec<String> = Vec::new();
            if let Some(n) = g.name.as_deref().filter(|n| *n != g.label) {
                hw.push(n.to_string());
            }
            if let Some(b) = g.memory_bytes {
                hw.push(format!("{:.0} GiB", b as f64 / f64::from(1u32 << 30)));
            }
            if hw.is_empty() {
                g.label.clone()
            } else {
                format!("{} ({})", g.label, hw.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut notes = Vec::new();
    if m.truncated_tail {
        notes.push(
            "turns.jsonl ended in a torn line (interrupted run); that line was ignored.".into(),
        );
    }
    notes.extend(implausible(&m.records));
    RunMeta {
        id: man.run_id.clone(),
        source: run.source.clone(),
        simulated: man.simulated,
        legacy: false,
        zero_cost: man.zero_cost(),
        created: man.created.clone(),
        model,
        engine,
        launch_args: launch,
        dataset: dataset_line(&man.dataset),
        tool: format!(
            "{} {}{}",
            man.tool.name,
            man.tool.version,
            man.tool
                .git_commit
                .as_deref()
                .map(|c| format!(" ({})", prefix(c, 12)))
                .unwrap_or_default()
        ),
        gpus,
        turns: m.records.len().to_string(),
        notes,
        warnings: prompt_caveat(man)
            .into_iter()
            .chain(zero_cost_caveat(man))
            .collect(),
    }
}

/// The first `n` characters of `s` (a hash or commit, shortened; any text is safe).
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The dataset as the run pages describe it: kind, source, size, history source, lines skipped
/// and content hash.
fn dataset_line(d: &turnbench_schema::DatasetInfo) -> String {
    let hash = d
        .content_hash
        .as_deref()
        .map(|h| format!(", sha256 {}", prefix(h, 12)))
        .unwrap_or_default();
    let skipped = match d.skipped_lines {
        0 => String::new(),
        n => format!(", {n} malformed line(s) skipped (--skip-bad-lines)"),
    };
    let history = match d.history {
        turnbench_schema::HistorySource::Generated => "generated",
        turnbench_schema::HistorySource::Recorded => "recorded",
    };
    format!(
        "{}: {} ({} trajectories, {} turns, history {history}{skipped}{hash})",
        d.kind,
        source_text(&d.source),
        d.trajectories,
        d.turns
    )
}

/// A dataset's source as a reader takes it in: the synthetic generator's parameters (the
/// runner writes them as JSON after `synthetic `) as `key value` pairs, a range as `a–b`;
/// any other source as it is.
fn source_text(source: &str) -> String {
    let Some(serde_json::Value::Object(params)) = source
        .strip_prefix("synthetic ")
        .and_then(|j| serde_json::from_str(j).ok())
    else {
        return source.to_string();
    };
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("–"),
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), value(v)))
        .collect();
    format!("generator with {}", pairs.join(", "))
}

/// The warning for a run whose cells did not replay the same prompts: with `--history
/// generated` each turn's prompt holds what the engine generated before, and at temperature
/// above 0 that differs from cell to cell (as do output lengths), so part of any difference
/// between its cache modes, concurrencies or GPUs is the workload's. A plan without a
/// temperature sampled at the server's default, 1.
/// A run on a simulated engine with no cost (`--sim-time-scale inf`): its times are the
/// harness's own, not a GPU's.
pub fn zero_cost_caveat(man: &Manifest) -> Option<String> {
    man.zero_cost().then(|| {
        "No engine cost: this run's simulated engine answered at once (--sim-time-scale inf), \
         so its times are the harness's own wall time (client, HTTP, simulator), not a GPU's. \
         It tests the harness; do not compare GPUs or cache modes with it."
            .to_string()
    })
}

pub fn prompt_caveat(man: &Manifest) -> Option<String> {
    let d = &man.dataset;
    let set = man
        .plan
        .get("temperature")
        .and_then(serde_json::Value::as_f64);
    let temperature = set.unwrap_or(1.0);
    let shown = match set {
        Some(t) => format!("temperature {t}"),
        None => "the server's default temperature (1)".into(),
    };
    let multi_turn = d.turns > d.trajectories;
    let recorded_lengths = man
        .plan
        .get("output_len")
        .and_then(serde_json::Value::as_str)
        == Some("recorded");
    if d.history == turnbench_schema::HistorySource::Recorded
        && !recorded_lengths
        && temperature > 0.0
    {
        // The same prompts everywhere, but answers of sampled lengths.
        return Some(format!(
            "Answer lengths differ between cells: this run replayed recorded history (the same \
             prompts in every cell) but let the engine choose each answer's length at {shown}, \
             so its cells generated different numbers of tokens. Token throughput compares; \
             times per turn and per trajectory carry that difference. Add --output-len recorded \
             for identical answer lengths."
        ));
    }
    (d.history == turnbench_schema::HistorySource::Generated && temperature > 0.0 && multi_turn)
        .then(|| {
            format!(
                "Not like-for-like: this run used generated history at {shown}, \
                 so from the second turn on every cell (cache mode, concurrency, GPU) sent \
                 prompts holding its own sampled answers, and generated answers of its own \
                 lengths. Part of any difference between its cells comes from that. For \
                 byte-identical prompts in every cell, run with --history recorded (datasets \
                 that record assistant turns; add --output-len recorded for identical answer \
                 lengths)."
            )
        })
}

/// What keeps a cell's figures from being those of one whole measured cell, if anything: an
/// interrupted run left it part-way ("unfinished"), or an earlier runner resumed it in two
/// parts ("in parts"; see [`resumed`]). Such cells are marked in the tables and left out of
/// the charts that compare cells, the speed-ups and the best configuration.
pub fn partial(c: &CellSummary) -> Option<&'static str> {
    if c.complete != Some(false) {
        return None;
    }
    // A failed turn ends its trajectory: failed trajectories = failed turns.
    let finished = (c.trajectories_ok + c.failed_turns).min(c.trajectories);
    Some(if finished < c.trajectories_planned.unwrap_or(u64::MAX) {
        "unfinished"
    } else {
        "in parts"
    })
}

/// An error message as a kind of failure: numbers of four digits or more (token counts,
/// ports, ids) read `N`, so "The input (5509 tokens) is longer…" and "(6120 tokens)" are one
/// row of the failures table, not one row per prompt length. Status codes stay.
fn error_kind(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 4 {
            out.push('N');
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for ch in msg.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            flush(&mut digits, &mut out);
            out.push(ch);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// A note when records hold values no measurement gives (more cached tokens than prompt
/// tokens, a first token after the last, negative times): the figures built on them are
/// shown as they are, but the reader should know.
fn implausible(records: &[turnbench_schema::TurnRecord]) -> Option<String> {
    let mut what: Vec<String> = Vec::new();
    let mut count = |n: usize, label: &str| {
        if n > 0 {
            what.push(format!("{label} in {n}"));
        }
    };
    count(
        records
            .iter()
            .filter(|r| matches!((r.cached_tokens, r.prompt_tokens), (Some(c), Some(p)) if c > p))
            .count(),
        "more cached than prompt tokens",
    );
    count(
        records
            .iter()
            .filter(|r| matches!((r.ttft, r.e2e), (Some(t), Some(e)) if t > e))
            .count(),
        "a TTFT longer than the E2E latency",
    );
    count(
        records
            .iter()
            .filter(|r| {
                r.t_send < 0.0
                    || r.t_end < r.t_send
                    || r.think_time < 0.0
                    || r.ttft.is_some_and(|t| t < 0.0)
                    || r.e2e.is_some_and(|t| t < 0.0)
            })
            .count(),
        "negative times",
    );
    (!what.is_empty()).then(|| {
        format!(
            "Implausible records in turns.jsonl ({}): no measurement gives these values (was the \
             file edited, or did the server report them?); the figures below include them as \
             they are.",
            what.join("; ")
        )
    })
}

/// A warning for each `none` cell whose server reused cached tokens all the same (an attached
/// server started without `--disable-radix-cache`): its figures are not those of no reuse.
pub fn cache_not_off<'a>(cells: impl Iterator<Item = &'a CellSummary>) -> Option<String> {
    let bad: Vec<String> = cells
        .filter(|c| c.cache_not_off())
        .map(|c| {
            format!(
                "concurrency {} ({} cached tokens)",
                c.concurrency,
                c.cached_tokens_total.unwrap_or(0)
            )
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "Cache mode none did not run without reuse here: the server reported cached tokens \
             in {} — its radix cache was on (an attached server must be started with \
             --disable-radix-cache). These rows are not a no-reuse baseline, and are left out of \
             the best configuration.",
            bad.join(", ")
        )
    })
}

/// A warning naming the cells of `gpu` an interrupted run left part-way or never started:
/// their figures are not those of the whole cell.
/// The index's word on a run some of whose cells did not finish (each GPU page says which).
fn run_unfinished(man: &Manifest, agg: &RunAggregate) -> Option<String> {
    let gpus: BTreeSet<&str> = man.cells.iter().map(|c| c.gpu.as_str()).collect();
    let left: Vec<&str> = gpus
        .into_iter()
        .filter(|&g| {
            let cells = agg.cells.iter().map(|c| &c.summary).filter(|c| c.gpu == g);
            unfinished(man, g, cells).is_some()
        })
        .collect();
    (!left.is_empty()).then(|| {
        format!(
            "Unfinished run: cells of GPU {} did not finish or never started (their pages say \
             which); finish it with runner sweep --resume {}.",
            left.join(", "),
            man.run_id
        )
    })
}

pub fn unfinished<'a>(
    man: &Manifest,
    gpu: &str,
    cells: impl Iterator<Item = &'a CellSummary>,
) -> Option<String> {
    let cells: Vec<&CellSummary> = cells.collect();
    let mut parts: Vec<String> = cells
        .iter()
        .filter(|c| c.complete == Some(false))
        // Every trajectory finished, under different attempts: a cell resumed in parts
        // (named by `resumed`), not an unfinished one.
        .filter(|c| {
            (c.trajectories_ok + c.failed_turns).min(c.trajectories)
                < c.trajectories_planned.unwrap_or(u64::MAX)
        })
        .map(|c| {
            // A failed turn ends its trajectory: failed trajectories = failed turns.
            let finished = (c.trajectories_ok + c.failed_turns).min(c.trajectories);
            format!(
                "{} at concurrency {} finished {} of {} trajectories",
                c.cache_mode,
                c.concurrency,
                finished,
                c.trajectories_planned.unwrap_or(0)
            )
        })
        .collect();
    let never: Vec<String> = man
        .cells
        .iter()
        .filter(|id| id.gpu == gpu)
        .filter(|id| {
            !cells
                .iter()
                .any(|c| c.cache_mode == id.cache_mode && c.concurrency == id.concurrency)
        })
        .map(|id| format!("{} at concurrency {}", id.cache_mode, id.concurrency))
        .collect();
    if !never.is_empty() {
        parts.push(format!("{} never started", never.join(", ")));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "Unfinished run: {}. The figures of a cell left part-way cover only the turns it \
             ran (trajectories still running count neither as successes nor in the time per \
             trajectory), and it is left out of the best configuration. Finish the run with \
             runner sweep --resume {}.",
            parts.join("; "),
            man.run_id
        )
    })
}

/// A note naming the cells of `gpu` that a resume ran again (records of a later attempt):
/// whole, from their start (the runner re-runs a cell it finds unfinished), or, in runs of
/// earlier runners, only their cut trajectories (two parts under different attempts).
fn resumed(records: &[turnbench_schema::TurnRecord], gpu: &str) -> Option<String> {
    let mut attempts: BTreeMap<(CacheMode, u32), BTreeSet<u32>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.gpu == gpu) {
        attempts
            .entry((r.cache_mode, r.concurrency))
            .or_default()
            .insert(r.attempt);
    }
    let name = |(m, c): &(CacheMode, u32)| format!("{m} at concurrency {c}");
    let whole: Vec<String> = attempts
        .iter()
        .filter(|(_, a)| a.len() == 1 && a.iter().all(|&x| x > 0))
        .map(|(k, _)| name(k))
        .collect();
    let parts: Vec<String> = attempts
        .iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(k, _)| name(k))
        .collect();
    let mut notes = Vec::new();
    if !whole.is_empty() {
        notes.push(format!(
            "Re-run: {} {} stopped part-way (an interrupted run, or a server that stopped \
             answering) and ran again from the start; the figures are those of the whole \
             re-run.",
            whole.join(", "),
            if whole.len() == 1 { "was" } else { "were" }
        ));
    }
    if !parts.is_empty() {
        notes.push(format!(
            "Resumed in parts: {} ran in two parts (an interrupted run, and a --resume that \
             re-ran only the trajectories it had cut). Their total time is the time of both \
             parts, the pause excluded, and the re-run trajectories ran after the others, so \
             the throughput is not the cell's; they are left out of the best configuration.",
            parts.join(", ")
        ));
    }
    (!notes.is_empty()).then(|| notes.join(" "))
}

/// Page file names of GPU labels (in site order): `gpu-<sanitized>.html`, a numeric suffix
/// telling apart labels that sanitize alike.
pub fn gpu_hrefs(labels: &[String]) -> Vec<String> {
    let mut used = BTreeSet::new();
    labels
        .iter()
        .map(|label| {
            let base = sanitize_label(label);
            let mut name = base.clone();
            let mut n = 2;
            while !used.insert(name.clone()) {
                name = format!("{base}-{n}");
                n += 1;
            }
            format!("gpu-{name}.html")
        })
        .collect()
}

pub const DEFAULT_TITLE: &str = "turnbench results";

/// The GPUs of the site in page order (each run's labels sorted, runs in order), with the
/// page each gets. Needs only the records, so the viewer can be written before aggregation.
pub fn gpu_links(runs: &[Run]) -> Vec<GpuLink> {
    let per_run: Vec<BTreeSet<&str>> = runs
        .iter()
        .map(|run| match &run.data {
            RunData::Measured(m) => m.records.iter().map(|r| r.gpu.as_str()).collect(),
            RunData::Legacy(l) => BTreeSet::from([l.gpu.as_str()]),
        })
        .collect();
    let mut labels: Vec<String> = Vec::new();
    for l in per_run.iter().flatten() {
        if !labels.iter().any(|x| x == l) {
            labels.push(l.to_string());
        }
    }
    let hrefs = gpu_hrefs(&labels);
    labels
        .into_iter()
        .zip(hrefs)
        .map(|(label, href)| {
            let on = |i: usize| per_run[i].contains(label.as_str());
            GpuLink {
                simulated: (0..runs.len()).any(|i| on(i) && runs[i].simulated()),
                legacy: (0..runs.len())
                    .any(|i| on(i) && matches!(runs[i].data, RunData::Legacy(_))),
                zero_cost: (0..runs.len())
                    .filter(|&i| on(i))
                    .all(|i| zero_cost(&runs[i])),
                label,
                href,
            }
        })
        .collect()
}

/// Builds every page context. `aggregates[i]` belongs to `runs[i]` (None for legacy runs);
/// `gpus` is [`gpu_links`] of the runs.
pub fn site(
    title: &str,
    runs: &[Run],
    aggregates: &[Option<RunAggregate>],
    gpus: Vec<GpuLink>,
    skipped: &[Skipped],
    csv_part_rows: usize,
) -> Site {
    let gpu_pages = gpus.iter().map(|g| gpu_page(g, runs, aggregates)).collect();
    let mut index = index_page(&gpus, runs, aggregates, skipped);
    index.data_files = crate::data::turns_csv_files(crate::data::turn_rows(runs), csv_part_rows);
    index.data_files.push("data/summary.csv".into());
    Site {
        title: title.to_string(),
        index,
        gpu_pages,
    }
}

/// A runner-up closer than this (relative) to the best cell is a near tie: one run cannot
/// tell them apart (run-to-run variation is of this order).
pub const NEAR_TIE: f64 = 0.05;

/// The next best of `cells` after `best` by token throughput, as `mode · c=N (tok/s, −x %)`,
/// with its relative margin.
fn runner_up(best: &CellSummary, cells: &[&CellSummary]) -> Option<(String, f64)> {
    let r = cells
        .iter()
        .filter(|c| !(c.cache_mode == best.cache_mode && c.concurrency == best.concurrency))
        .max_by(|a, b| a.output_tok_per_s.total_cmp(&b.output_tok_per_s))?;
    if best.output_tok_per_s <= 0.0 {
        return None;
    }
    let margin = 1.0 - r.output_tok_per_s / best.output_tok_per_s;
    Some((
        format!(
            "{} · c={} ({}, −{} %)",
            r.cache_mode,
            r.concurrency,
            num(r.output_tok_per_s, 1),
            num(margin * 100.0, 1)
        ),
        margin,
    ))
}

/// The run was simulated with no engine cost (`--sim-time-scale inf`).
fn zero_cost(run: &Run) -> bool {
    matches!(&run.data, RunData::Measured(m) if m.manifest.zero_cost())
}

fn href_of<'a>(gpus: &'a [GpuLink], label: &str) -> &'a str {
    gpus.iter()
        .find(|g| g.label == label)
        .map_or("index.html", |g| g.href.as_str())
}

fn index_page(
    gpus: &[GpuLink],
    runs: &[Run],
    aggregates: &[Option<RunAggregate>],
    skipped: &[Skipped],
) -> IndexPage {
    let several_runs = runs.len() > 1;
    let mut best = Vec::new();
    let mut lines = Vec::new();
    let mut speedups = Vec::new();
    let mut speedup_bars = Vec::new();
    // One legend group per GPU of each run: its lines share a marker symbol, its bars a pattern;
    // colors are the cache modes'.
    let mut groups = 0;
    let mut tradeoff_groups: Vec<(charts::Group, Vec<&CellSummary>)> = Vec::new();
    let mut baselines = BTreeSet::new();
    let mut speedup_modes = BTreeSet::new();
    let mut harness_runs = Vec::new();
    // On a site mixing real and simulated runs, the cross-GPU charts say which is which.
    let mixed = runs.iter().any(|r| r.simulated()) && runs.iter().any(|r| !r.simulated());
    for (run, agg) in runs.iter().zip(aggregates) {
        let group_of = |gpu: &str, index: usize| charts::Group {
            title: format!(
                "{}{}",
                if several_runs {
                    format!("{gpu} · {}", run.id())
                } else {
                    gpu.to_string()
                },
                if mixed && run.simulated() {
                    " (simulated)"
                } else {
                    ""
                }
            ),
            index,
        };
        match (&run.data, agg) {
            // An engine with no cost measures the harness, not a GPU: nothing to compare.
            (RunData::Measured(m), Some(_)) if m.manifest.zero_cost() => {
                harness_runs.push(run.id().to_string());
            }
            (RunData::Measured(m), Some(a)) => {
                for gpu in a.gpus() {
                    let group = group_of(gpu, groups);
                    groups += 1;
                    // Cells left part-way are not compared (marked on the GPU page).
                    let cells: Vec<&CellSummary> = a
                        .cells_of(gpu)
                        .map(|c| &c.summary)
                        .filter(|c| partial(c).is_none())
                        .collect();
                    tradeoff_groups.push((group.clone(), cells.clone()));
                    if let Some(b) = overall_best(&a.best, gpu, "output_tok_per_s") {
                        if let Some(c) = cells.iter().find(|c| {
                            c.cache_mode == b.best_cache_mode && c.concurrency == b.best_concurrency
                        }) {
                            let next = runner_up(c, &cells);
                            best.push(BestRow {
                                gpu: gpu.to_string(),
                                href: href_of(gpus, gpu).to_string(),
                                run_id: run.id().to_string(),
                                simulated: run.simulated(),
                                legacy: false,
                                zero_cost: false,
                                cache_mode: c.cache_mode.to_string(),
                                concurrency: c.concurrency.to_string(),
                                at_edge: {
                                    let top = cells.iter().map(|x| x.concurrency).max();
                                    let low = cells.iter().map(|x| x.concurrency).min();
                                    top == Some(c.concurrency) && low != top
                                },
                                near_tie: next.as_ref().is_some_and(|(_, m)| *m < NEAR_TIE),
                                runner_up: next.map_or_else(|| "—".into(), |(r, _)| r),
                                tok_s: num(c.output_tok_per_s, 1),
                                traj_s: num(c.traj_per_s, 4),
                                avg_traj: opt(c.avg_traj_time_s, 2),
                                failed: c.failed_turns.to_string(),
                                retracted: retracted_of(c),
                                best_traj_s: best_by(&a.best, &cells, gpu, "traj_per_s", 4, ""),
                                best_avg_traj: best_by(
                                    &a.best,
                                    &cells,
                                    gpu,
                                    "avg_traj_time_s",
                                    2,
                                    " s",
                                ),
                            });
                        }
                    }
                    for mode in CacheMode::ALL {
                        let pts: Vec<(u32, f64)> = cells
                            .iter()
                            .filter(|c| c.cache_mode == mode)
                            .map(|c| (c.concurrency, c.output_tok_per_s))
                            .collect();
                        if !pts.is_empty() {
                            lines.push(ConcurrencyLine {
                                name: mode.to_string(),
                                points: pts,
                                limit: false,
                                color: Some(charts::mode_color(mode)),
                                group: Some(group.clone()),
                            });
                        }
                    }
                    if let Some(l) = m.manifest.limits.iter().find(|l| l.gpu == gpu) {
                        lines.push(ConcurrencyLine {
                            name: "physical limit".into(),
                            points: l.decode_tok_per_s.clone(),
                            limit: true,
                            color: None,
                            group: Some(group.clone()),
                        });
                    }
                    // Speed-up of each cache mode against the baseline (none if measured, else prefix).
                    let modes: Vec<CacheMode> = CacheMode::ALL
                        .into_iter()
                        .filter(|m| cells.iter().any(|c| c.cache_mode == *m))
                        .collect();
                    if modes.len() >= 2 {
                        // `none` is the baseline only where it really ran without reuse.
                        let none_ok = cells.iter().any(|c| c.cache_mode == CacheMode::None)
                            && !cells.iter().any(|c| c.cache_not_off());
                        let base = if none_ok {
                            CacheMode::None
                        } else {
                            modes
                                .iter()
                                .copied()
                                .find(|m| *m != CacheMode::None)
                                .unwrap_or(modes[0])
                        };
                        baselines.insert(base.to_string());
                        let mut per_mode: BTreeMap<CacheMode, Vec<(u32, f64)>> = BTreeMap::new();
                        for bc in cells.iter().filter(|c| c.cache_mode == base) {
                            let mut row = SpeedupRow {
                                gpu: gpu.to_string(),
                                run_id: run.id().to_string(),
                                simulated: run.simulated(),
                                legacy: false,
                                zero_cost: false,
                                concurrency: bc.concurrency.to_string(),
                                baseline: base.to_string(),
                                modes: Vec::new(),
                            };
                            for mode in &modes {
                                speedup_modes.insert(mode.to_string());
                                match cells.iter().find(|c| {
                                    c.cache_mode == *mode && c.concurrency == bc.concurrency
                                }) {
                                    Some(c) if bc.output_tok_per_s > 0.0 => {
                                        let x = c.output_tok_per_s / bc.output_tok_per_s;
                                        // By trajectories too: where answers differ in
                                        // length between cells (generated history, sampled
                                        // lengths) the two can rank modes differently.
                                        let by_traj = if bc.traj_per_s > 0.0 {
                                            format!("×{}", num(c.traj_per_s / bc.traj_per_s, 2))
                                        } else {
                                            "—".into()
                                        };
                                        row.modes.push((
                                            mode.to_string(),
                                            num(c.output_tok_per_s, 1),
                                            format!("×{}", num(x, 2)),
                                            by_traj,
                                        ));
                                        if *mode != base {
                                            per_mode
                                                .entry(*mode)
                                                .or_default()
                                                .push((bc.concurrency, x));
                                        }
                                    }
                                    _ => row.modes.push((
                                        mode.to_string(),
                                        "—".into(),
                                        String::new(),
                                        String::new(),
                                    )),
                                }
                            }
                            speedups.push(row);
                        }
                        for (mode, points) in per_mode {
                            speedup_bars.push(charts::SpeedupBars {
                                name: format!("{mode} ÷ {base}"),
                                mode,
                                group: Some(group.clone()),
                                points,
                            });
                        }
                    }
                }
            }
            (RunData::Legacy(l), _) => {
                if let Some(row) = legacy_best(&l.rows) {
                    best.push(BestRow {
                        gpu: l.gpu.clone(),
                        href: href_of(gpus, &l.gpu).to_string(),
                        run_id: l.id.clone(),
                        simulated: false,
                        legacy: true,
                        zero_cost: false,
                        cache_mode: "seed (prefix)".into(),
                        concurrency: row.batch_size.to_string(),
                        at_edge: false,
                        runner_up: "—".into(),
                        near_tie: false,
                        tok_s: format!("{} words/s", opt(row.tok_per_s, 1)),
                        traj_s: opt(row.traj_per_s, 4),
                        avg_traj: opt(row.avg_traj_time_s, 2),
                        failed: "—".into(),
                        retracted: "—".into(),
                        best_traj_s: "—".into(),
                        best_avg_traj: "—".into(),
                    });
                }
            }
            _ => {}
        }
    }
    let mut ids = Ids::default();
    let mut charts_out = Vec::new();
    if !lines.is_empty() {
        charts_out.push(charts::throughput_vs_concurrency(
            &mut ids,
            "Token throughput vs concurrency, all GPUs",
            &lines,
        ));
    }
    if !speedup_bars.is_empty() {
        let base = baselines.into_iter().collect::<Vec<_>>().join("/");
        charts_out.push(charts::speedup(&mut ids, &speedup_bars, &base));
    }
    charts_out.extend(tradeoff_charts(
        &mut ids,
        &[PER_TRAJECTORY],
        ", all GPUs",
        &tradeoff_groups
            .iter()
            .map(|(g, c)| (Some(g.clone()), c))
            .collect::<Vec<_>>(),
    ));
    let order = |m: &String| CacheMode::ALL.iter().position(|c| c.as_str() == m);
    let mut speedup_modes: Vec<String> = speedup_modes.into_iter().collect();
    speedup_modes.sort_by_key(order);
    // Every row has a cell under every column (a run without a mode gets a dash there).
    for row in &mut speedups {
        for m in &speedup_modes {
            if !row.modes.iter().any(|r| &r.0 == m) {
                row.modes
                    .push((m.clone(), "—".into(), String::new(), String::new()));
            }
        }
        row.modes.sort_by_key(|m| order(&m.0));
    }
    IndexPage {
        runs: runs
            .iter()
            .zip(aggregates)
            .map(|(r, a)| run_meta(r, a))
            .collect(),
        skipped: skipped.to_vec(),
        gpus: gpus.to_vec(),
        best,
        speedup_modes,
        speedups,
        harness_runs,
        workloads: {
            let compared: Vec<(String, String)> = runs
                .iter()
                .filter_map(|r| match &r.data {
                    RunData::Measured(m) if !m.manifest.zero_cost() => {
                        Some((r.id().to_string(), workload(&m.manifest)))
                    }
                    _ => None,
                })
                .collect();
            let kinds: BTreeSet<&str> = compared.iter().map(|w| w.1.as_str()).collect();
            if kinds.len() > 1 {
                compared
            } else {
                Vec::new()
            }
        },
        charts: charts_out,
        data_files: Vec::new(),
    }
}

/// What a run made the server do, as far as it decides the numbers: the model, the dataset's
/// content (its hash, else its source), size and history, and the generation settings. Two
/// runs of one workload differ only by GPU, server and configuration.
fn workload(man: &Manifest) -> String {
    let d = &man.dataset;
    let model = model_of(man);
    let content = d
        .content_hash
        .as_deref()
        .map_or_else(|| d.source.clone(), |h| format!("sha256 {}", prefix(h, 12)));
    let history = match d.history {
        turnbench_schema::HistorySource::Generated => "generated",
        turnbench_schema::HistorySource::Recorded => "recorded",
    };
    let plan = |k: &str| {
        man.plan.get(k).map_or_else(
            || "—".to_string(),
            |v| v.to_string().trim_matches('"').to_string(),
        )
    };
    format!(
        "model {model}; {} data {content}, {} trajectories, {} turns, history {history}; \
         max_new_tokens {}, temperature {}, output lengths {}",
        d.kind,
        d.trajectories,
        d.turns,
        plan("max_new_tokens"),
        plan("temperature"),
        plan("output_len"),
    )
}

/// A trade-off chart's title, its latency axis, and that latency of a cell (if it has one).
type Tradeoff = (&'static str, &'static str, fn(&CellSummary) -> Option<f64>);

const PER_TRAJECTORY: Tradeoff = (
    "Throughput vs time per trajectory",
    "time per trajectory (s)",
    |c| c.avg_traj_time_s,
);

const TTFT_P99: Tradeoff = ("Throughput vs TTFT p99", "TTFT p99 (ms)", |c| {
    c.ttft.p99.map(|v| v * 1e3)
});

/// For cells of fewer than [`THIN_P99`] turns, whose p99 rests on the slowest few.
const TTFT_P90: Tradeoff = ("Throughput vs TTFT p90", "TTFT p90 (ms)", |c| {
    c.ttft.p90.map(|v| v * 1e3)
});

/// Throughput against each latency of `axes`, a line per cache mode (and group, when several
/// GPUs or runs share the chart); cells without the latency are left out.
fn tradeoff_charts(
    ids: &mut Ids,
    axes: &[Tradeoff],
    suffix: &str,
    groups: &[(Option<charts::Group>, &Vec<&CellSummary>)],
) -> Vec<ChartSpec> {
    let mut out = Vec::new();
    for (title, latency, pick) in axes {
        let mut lines = Vec::new();
        for (group, cells) in groups {
            for mode in CacheMode::ALL {
                let points: Vec<(u32, f64, f64)> = cells
                    .iter()
                    .filter(|c| c.cache_mode == mode)
                    .filter_map(|c| Some((c.concurrency, pick(c)?, c.output_tok_per_s)))
                    .collect();
                if !points.is_empty() {
                    lines.push(charts::TradeoffLine {
                        mode,
                        group: group.clone(),
                        points,
                    });
                }
            }
        }
        if !lines.is_empty() {
            out.push(charts::throughput_vs_latency(
                ids,
                &format!("{title}{suffix}"),
                latency,
                &lines,
            ));
        }
    }
    out
}

/// The GPU's best cell over all its cache modes by `criterion` (one of the summary's).
fn overall_best<'a>(
    best: &'a [turnbench_schema::BestCell],
    gpu: &str,
    criterion: &str,
) -> Option<&'a turnbench_schema::BestCell> {
    best.iter()
        .find(|b| b.gpu == gpu && b.cache_mode.is_none() && b.criterion == criterion)
}

/// [`overall_best`] as `mode · c=N (value)`, with the cell's failed turns if it had any
/// (its figures then cover the trajectories that did not fail).
fn best_by(
    best: &[turnbench_schema::BestCell],
    cells: &[&CellSummary],
    gpu: &str,
    criterion: &str,
    decimals: usize,
    unit: &str,
) -> String {
    overall_best(best, gpu, criterion).map_or_else(
        || "—".into(),
        |b| {
            let failed = cells
                .iter()
                .find(|c| c.cache_mode == b.best_cache_mode && c.concurrency == b.best_concurrency)
                .map_or(0, |c| c.failed_turns);
            format!(
                "{} · c={} ({}{unit}){}",
                b.best_cache_mode,
                b.best_concurrency,
                num(b.value, decimals),
                failed_note(failed)
            )
        },
    )
}

/// A cell's turns the server retracted, with their share of its turns: `N (x %)`, or `—` when
/// its server does not say.
fn retracted_of(c: &CellSummary) -> String {
    match c.retracted_turns {
        Some(n) if c.turns > 0 => format!("{n} ({} %)", num(n as f64 / c.turns as f64 * 100.0, 1)),
        Some(n) => n.to_string(),
        None => "—".into(),
    }
}

/// `, N failed turn(s)` when N > 0.
fn failed_note(failed: u64) -> String {
    match failed {
        0 => String::new(),
        1 => ", 1 failed turn".into(),
        n => format!(", {n} failed turns"),
    }
}

fn legacy_best(rows: &[LegacyRow]) -> Option<&LegacyRow> {
    rows.iter()
        .filter(|r| r.tok_per_s.is_some())
        .max_by(|a, b| {
            a.tok_per_s
                .unwrap_or(0.0)
                .total_cmp(&b.tok_per_s.unwrap_or(0.0))
        })
}

fn gpu_page(link: &GpuLink, runs: &[Run], aggregates: &[Option<RunAggregate>]) -> GpuPage {
    let mut ids = Ids::default();
    let mut sections = Vec::new();
    for (run, agg) in runs.iter().zip(aggregates) {
        let n = sections.len();
        match (&run.data, agg) {
            (RunData::Measured(m), Some(a)) if a.gpus().contains(&link.label.as_str()) => {
                sections.push(measured_section(&mut ids, n, run, m, a, &link.label));
            }
            (RunData::Legacy(l), _) if l.gpu == link.label => {
                sections.push(legacy_section(&mut ids, n, l));
            }
            _ => {}
        }
    }
    GpuPage {
        label: link.label.clone(),
        href: link.href.clone(),
        sections,
    }
}

/// A cell's row of the seed's table; times to the hundredth of a second, as the seed's, or
/// to the ten-thousandth in a run with no engine cost, whose times are the harness's
/// milliseconds.
fn seed_row(c: &CellSummary, best: bool, zero_cost: bool) -> SeedRow {
    let time = if zero_cost { 4 } else { 2 };
    SeedRow {
        concurrency: c.concurrency.to_string(),
        total_time: num(c.total_time_s, time),
        avg_traj: opt(c.avg_traj_time_s, time),
        traj_s: num(c.traj_per_s, 4),
        tok_s: num(c.output_tok_per_s, 1),
        total_tokens: c.total_output_tokens.to_string(),
        tok_turn: opt(c.tokens_per_turn, 1),
        failed_turns: c.failed_turns.to_string(),
        best,
        partial: partial(c),
    }
}

fn pct3(p: &Percentiles) -> [String; 3] {
    [ms(p.p50), ms(p.p90), ms(p.p99)]
}

fn measured_section(
    ids: &mut Ids,
    n: usize,
    run: &Run,
    m: &MeasuredRun,
    a: &RunAggregate,
    gpu: &str,
) -> GpuSection {
    let cells: Vec<&CellSeries> = a.cells_of(gpu).collect();
    let modes: Vec<CacheMode> = CacheMode::ALL
        .into_iter()
        .filter(|md| cells.iter().any(|c| c.summary.cache_mode == *md))
        .collect();
    let mut seed_tables = Vec::new();
    let mut latency_tables = Vec::new();
    let mut charts_out = Vec::new();
    let mut lines = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for mode in &modes {
        let mc: Vec<&CellSeries> = cells
            .iter()
            .copied()
            .filter(|c| c.summary.cache_mode == *mode)
            .collect();
        let best = a.best.iter().find(|b| {
            b.gpu == gpu && b.cache_mode == Some(*mode) && b.criterion == "output_tok_per_s"
        });
        seed_tables.push(SeedTable {
            id: format!("seed-{n}-{mode}"),
            cache_mode: mode.to_string(),
            legacy: false,
            rows: mc
                .iter()
                .map(|c| {
                    seed_row(
                        &c.summary,
                        best.is_some_and(|b| b.best_concurrency == c.summary.concurrency),
                        m.manifest.zero_cost(),
                    )
                })
                .collect(),
        });
        latency_tables.push(LatencyTable {
            cache_mode: mode.to_string(),
            thin_p99: mc.iter().any(|c| c.summary.ttft.count < THIN_P99),
            outside_engine: mc.iter().any(|c| c.outside_engine_p50.is_some()),
            retractions: mc.iter().any(|c| c.summary.retracted_turns.is_some()),
            rows: mc
                .iter()
                .map(|c| {
                    let s = &c.summary;
                    let mut values = Vec::new();
                    values.extend(pct3(&s.ttft));
                    values.extend(
                        [
                            s.itl_turn_mean.p50,
                            s.itl_turn_mean.p90,
                            s.itl_turn_mean.p99,
                        ]
                        .map(|v| v.map_or_else(|| "—".into(), |v| num(v * 1e3, 2))),
                    );
                    values.extend(pct3(&s.e2e));
                    LatencyRow {
                        concurrency: s.concurrency.to_string(),
                        partial: partial(s),
                        turns: s.ttft.count.to_string(),
                        values,
                        outside_engine: {
                            let max = c
                                .outside_engine_max
                                .map(|m| format!(" · max {}", num(m * 1e3, 1)))
                                .unwrap_or_default();
                            match (c.outside_engine_p50, s.ttft.p50) {
                                (Some(o), Some(t)) if t > 0.0 => format!(
                                    "{} ({} %){max}",
                                    num(o * 1e3, 1),
                                    num(o / t * 100.0, 0)
                                ),
                                (Some(o), _) => format!("{}{max}", num(o * 1e3, 1)),
                                _ => "—".into(),
                            }
                        },
                        cache_hit: s
                            .cache_hit_ratio
                            .map_or_else(|| "—".into(), |r| format!("{}%", num(r * 100.0, 1))),
                        retracted: retracted_of(s),
                    }
                })
                .collect(),
        });
        for c in &mc {
            for (k, v) in &c.summary.errors {
                *errors
                    .entry(format!(
                        "{mode} c={}: {}",
                        c.summary.concurrency,
                        error_kind(k)
                    ))
                    .or_default() += v;
            }
        }
        lines.push(ConcurrencyLine {
            name: mode.to_string(),
            points: mc
                .iter()
                .filter(|c| partial(&c.summary).is_none())
                .map(|c| (c.summary.concurrency, c.summary.output_tok_per_s))
                .collect(),
            limit: false,
            color: Some(charts::mode_color(*mode)),
            group: None,
        });
    }
    if let Some(l) = m.manifest.limits.iter().find(|l| l.gpu == gpu) {
        lines.push(ConcurrencyLine {
            name: "physical limit".into(),
            points: l.decode_tok_per_s.clone(),
            limit: true,
            color: None,
            group: None,
        });
    }
    charts_out.push(charts::throughput_vs_concurrency(
        ids,
        "Token throughput vs concurrency",
        &lines,
    ));
    let summaries: Vec<&CellSummary> = cells
        .iter()
        .map(|c| &c.summary)
        .filter(|c| partial(c).is_none())
        .collect();
    // The tail the latency tables say to compare cells by: p99 only where every cell has
    // enough turns for one.
    let ttft_tail = if summaries.iter().any(|c| c.ttft.count < THIN_P99) {
        TTFT_P90
    } else {
        TTFT_P99
    };
    charts_out.extend(tradeoff_charts(
        ids,
        &[PER_TRAJECTORY, ttft_tail],
        "",
        &[(None, &summaries)],
    ));
    for mode in &modes {
        let mc: Vec<&CellSeries> = cells
            .iter()
            .copied()
            .filter(|c| c.summary.cache_mode == *mode)
            .collect();
        charts_out.push(charts::throughput_over_time(ids, *mode, &mc, false));
        charts_out.push(charts::throughput_over_time(ids, *mode, &mc, true));
        charts_out.push(charts::by_turn_band(ids, *mode, &mc, "TTFT", |t| t.ttft));
        charts_out.push(charts::by_turn_band(ids, *mode, &mc, "E2E latency", |t| {
            t.e2e
        }));
        charts_out.push(charts::prompt_vs_cached(ids, *mode, &mc));
        charts_out.push(charts::in_flight(ids, *mode, &mc));
        charts_out.push(charts::latency_distribution(ids, *mode, &mc, "TTFT", |c| {
            &c.ttft_quantiles
        }));
        charts_out.push(charts::latency_distribution(
            ids,
            *mode,
            &mc,
            "E2E latency",
            |c| &c.e2e_quantiles,
        ));
    }
    let (telemetry, telemetry_more) = telemetry_charts(ids, a, gpu);
    GpuSection {
        run_id: run.id().to_string(),
        simulated: run.simulated(),
        legacy: false,
        zero_cost: m.manifest.zero_cost(),
        seed_tables,
        latency_tables,
        errors: errors
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        warnings: prompt_caveat(&m.manifest)
            .into_iter()
            .chain(zero_cost_caveat(&m.manifest))
            .chain(cache_not_off(cells.iter().map(|c| &c.summary)))
            .chain(unfinished(
                &m.manifest,
                gpu,
                cells.iter().map(|c| &c.summary),
            ))
            .chain(resumed(&m.records, gpu))
            .collect(),
        charts: charts_out,
        telemetry,
        telemetry_more,
        time_basis: time_basis(&m.manifest),
        sampled_every: sampled_every(&m.manifest),
    }
}

/// The clock a run's times are on, and what a trajectory's time holds besides the engine's
/// work: the tool time replayed between turns (`think_time`), by the plan's setting.
fn time_basis(man: &Manifest) -> String {
    let clock = match &man.backend.sim {
        Some(sim) if sim.zero_cost => {
            "Times are the harness's own wall time (no engine cost).".to_string()
        }
        Some(sim) => format!(
            "Times are engine time: the simulator's clock, wall time × {}, what the simulated \
             GPU would take.",
            sim.time_scale
        ),
        None => "Times are wall time, on the runner's monotonic clock.".to_string(),
    };
    let think = match man.plan.get("think_time").and_then(|v| v.as_str()) {
        // An engine with no cost replays no think time, whatever the plan says.
        _ if man.zero_cost() => "no think time (none is slept with no engine cost)".to_string(),
        Some("off") => "no think time between turns (think time off)".to_string(),
        Some("replay") => {
            "the dataset's tool time, slept between turns (think time replay), included".into()
        }
        Some(t) => match t.strip_prefix("scale=") {
            Some(f) => format!(
                "the dataset's tool time × {f}, slept between turns (think time {t}), included"
            ),
            None => format!("think time {t}"),
        },
        None => "the time between turns (think time, if any)".into(),
    };
    format!("{clock} Total Time and Avg/Traj hold {think}; TTFT, ITL and E2E never do.")
}

/// How often the run sampled telemetry, on the clock of its times: every wall second, which
/// a simulated run's engine time stretches by its time scale.
fn sampled_every(man: &Manifest) -> String {
    match &man.backend.sim {
        Some(sim) if !sim.zero_cost && sim.time_scale != 1.0 => format!(
            "every wall-clock second, so every {} s of the engine time the tables and charts \
             use (a cell shorter than that may have one sample or none)",
            sim.time_scale
        ),
        _ => "every second".into(),
    }
}

/// A line of a telemetry group: (source, key, name, scale).
type GroupLine = (&'static str, &'static str, &'static str, f64);

/// The telemetry charts that read at a glance, each a unit: (title, y-axis title, lines).
const TELEMETRY_GROUPS: &[(&str, &str, &[GroupLine])] = &[
    (
        "Server: requests running and queued",
        "requests",
        &[
            ("metrics", "num_running_reqs", "running", 1.0),
            ("metrics", "num_queue_reqs", "queued", 1.0),
        ],
    ),
    (
        "Server: KV cache pool in use, and prefix cache hit rate",
        "fraction",
        &[
            ("metrics", "token_usage", "KV pool in use", 1.0),
            (
                DERIVED,
                HIT_RATE,
                "prefix cache hit rate (prompt tokens of each interval)",
                1.0,
            ),
            (
                "metrics",
                "cache_hit_rate",
                "cache hit rate (recent prefills)",
                1.0,
            ),
        ],
    ),
    (
        "Server: its own generation throughput",
        "tokens/s",
        &[("metrics", "gen_throughput", "gen_throughput", 1.0)],
    ),
    (
        "GPU memory",
        "GiB",
        &[
            (
                "nvidia-smi",
                "memory_used_bytes",
                "used",
                1.0 / 1_073_741_824.0,
            ),
            (
                "nvidia-smi",
                "memory_total_bytes",
                "total",
                1.0 / 1_073_741_824.0,
            ),
        ],
    ),
    (
        "GPU utilization",
        "fraction of time a kernel ran",
        &[("nvidia-smi", "utilization", "utilization", 1.0)],
    ),
    ("GPU power", "W", &[("nvidia-smi", "power_w", "power", 1.0)]),
];

/// The source of series computed here from the scraped ones.
const DERIVED: &str = "derived";
/// The prefix cache's hit rate between two samples, from SGLang's token counters.
const HIT_RATE: &str = "prefill_cache_hit_rate";

/// The prefix cache's hit rate over each interval between samples: of the prompt tokens
/// prefilled in it, the share found in the cache (`realtime_tokens_total` by mode, counters).
/// SGLang's `cache_hit_rate` gauge is the last prefill batch's alone, and set to 0 at every
/// decode log interval, so sampled each second it flips between a batch's value and 0. An
/// interval without prefill has no point; a counter that went back (a restarted server)
/// neither.
fn hit_rate_from_counters(of_gpu: &[&TelemetrySeries]) -> Option<TelemetrySeries> {
    let find = |key: &str| {
        of_gpu
            .iter()
            .find(|s| s.source == "metrics" && s.key == key)
    };
    let cached = find("realtime_tokens_total.prefill_cache")?;
    let computed = find("realtime_tokens_total.prefill_compute")?;
    let sessions = cached
        .sessions
        .iter()
        .zip(&computed.sessions)
        .map(|(c, p)| {
            let pairs: Vec<(f64, f64, f64)> = c
                .iter()
                .zip(p)
                .filter(|(a, b)| a.0 == b.0)
                .map(|(a, b)| (a.0, a.1, b.1))
                .collect();
            pairs
                .windows(2)
                .filter_map(|w| {
                    let (dc, dp) = (w[1].1 - w[0].1, w[1].2 - w[0].2);
                    (dc >= 0.0 && dp >= 0.0 && dc + dp > 0.0).then(|| (w[1].0, dc / (dc + dp)))
                })
                .collect::<Vec<_>>()
        })
        .filter(|s: &Vec<(f64, f64)>| !s.is_empty())
        .collect::<Vec<_>>();
    (!sessions.is_empty()).then(|| TelemetrySeries {
        gpu: cached.gpu.clone(),
        source: DERIVED.into(),
        key: HIT_RATE.into(),
        sessions,
        cells: cached.cells.clone(),
    })
}

/// A GPU's telemetry: the groups of [`TELEMETRY_GROUPS`] it has, then every other series on a
/// chart of its own.
fn telemetry_charts(
    ids: &mut Ids,
    a: &RunAggregate,
    gpu: &str,
) -> (Vec<ChartSpec>, Vec<ChartSpec>) {
    let of_gpu: Vec<&TelemetrySeries> = a.telemetry.iter().filter(|s| s.gpu == gpu).collect();
    let derived = hit_rate_from_counters(&of_gpu);
    let of_gpu: Vec<&TelemetrySeries> = of_gpu.into_iter().chain(derived.as_ref()).collect();
    let find = |source: &str, key: &str| {
        of_gpu
            .iter()
            .copied()
            .find(|s| s.source == source && s.key == key)
    };
    let mut grouped = Vec::new();
    for (title, y, members) in TELEMETRY_GROUPS {
        let lines: Vec<charts::TelemetryLine<'_>> = members
            .iter()
            // (The gauge only where the counters are not there to give the rate.)
            .filter(|(_, key, ..)| !(*key == "cache_hit_rate" && derived.is_some()))
            .filter_map(|(source, key, name, scale)| {
                find(source, key).map(|series| charts::TelemetryLine {
                    series,
                    name: name.to_string(),
                    scale: *scale,
                })
            })
            .collect();
        if !lines.is_empty() {
            grouped.push(charts::telemetry_group(ids, title, y, &lines));
        }
    }
    let in_group = |s: &TelemetrySeries| {
        TELEMETRY_GROUPS.iter().any(|(_, _, members)| {
            members
                .iter()
                .any(|(source, key, ..)| s.source == *source && s.key == *key)
        })
    };
    let more = of_gpu
        .iter()
        .filter(|s| !in_group(s))
        .map(|s| charts::telemetry(ids, s))
        .collect();
    (grouped, more)
}

fn legacy_section(ids: &mut Ids, n: usize, l: &LegacyRun) -> GpuSection {
    let best = legacy_best(&l.rows).map(|r| r.batch_size);
    let rows = l
        .rows
        .iter()
        .map(|r| SeedRow {
            concurrency: r.batch_size.to_string(),
            total_time: opt(r.total_time_s, 2),
            avg_traj: opt(r.avg_traj_time_s, 2),
            traj_s: opt(r.traj_per_s, 4),
            tok_s: opt(r.tok_per_s, 1),
            total_tokens: opt(r.total_tokens, 0),
            tok_turn: opt(r.tokens_per_turn, 1),
            failed_turns: "—".into(),
            best: best == Some(r.batch_size),
            partial: None,
        })
        .collect();
    let mut charts_out = Vec::new();
    let pts: Vec<(u32, f64)> = l
        .rows
        .iter()
        .filter_map(|r| Some((r.batch_size, r.tok_per_s?)))
        .collect();
    if !pts.is_empty() {
        let mut c = charts::throughput_vs_concurrency(
            ids,
            "Legacy: word throughput vs batch size",
            &[ConcurrencyLine {
                name: "seed (words/s)".into(),
                points: pts,
                limit: false,
                color: None,
                group: None,
            }],
        );
        c.note = "LEGACY (seed import): throughput counts words, not tokens.".into();
        c.layout["yaxis"]["title"]["text"] = "words/s (legacy)".into();
        c.layout["xaxis"]["title"]["text"] = "batch size".into();
        charts_out.push(c);
    }
    if l.turns.iter().any(|t| t.turn_time_avg_s.is_some()) {
        charts_out.push(charts::legacy_turn_time(ids, l));
    }
    GpuSection {
        run_id: l.id.clone(),
        simulated: false,
        legacy: true,
        zero_cost: false,
        seed_tables: vec![SeedTable {
            id: format!("seed-{n}-legacy"),
            cache_mode: "seed".into(),
            legacy: true,
            rows,
        }],
        latency_tables: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        charts: charts_out,
        telemetry: Vec::new(),
        telemetry_more: Vec::new(),
        time_basis: String::new(),
        sampled_every: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{manifest, FixtureSpec};
    use turnbench_schema::HistorySource;

    #[test]
    fn the_hit_rate_is_each_intervals_share_of_prefill_found_in_the_cache() {
        let series = |key: &str, sessions: Vec<Vec<(f64, f64)>>| TelemetrySeries {
            gpu: "h100".into(),
            source: "metrics".into(),
            key: key.into(),
            sessions,
            cells: vec![],
        };
        // Counters: 100 tokens prefilled in the first second, 75 of them cached; none in the
        // next; then the server restarted (the counters start again) in a second session.
        let cached = series(
            "realtime_tokens_total.prefill_cache",
            vec![
                vec![(1.0, 0.0), (2.0, 75.0), (3.0, 75.0)],
                vec![(4.0, 10.0), (5.0, 10.0)],
            ],
        );
        let computed = series(
            "realtime_tokens_total.prefill_compute",
            vec![
                vec![(1.0, 0.0), (2.0, 25.0), (3.0, 25.0)],
                vec![(4.0, 5.0), (5.0, 15.0)],
            ],
        );
        let rate = hit_rate_from_counters(&[&cached, &computed]).unwrap();
        assert_eq!(rate.sessions, vec![vec![(2.0, 0.75)], vec![(5.0, 0.0)]]);
        assert_eq!(
            (rate.source.as_str(), rate.key.as_str()),
            (DERIVED, HIT_RATE)
        );
        // Without the counters (an older SGLang) there is none, and the gauge is charted.
        assert!(hit_rate_from_counters(&[&cached]).is_none());
    }

    #[test]
    fn cells_are_flagged_not_like_for_like_only_with_sampled_generated_history() {
        let base = manifest(&FixtureSpec::small("caveat"));
        let with = |history, temperature: Option<f64>, turns: u64| {
            let mut m = base.clone();
            m.dataset.history = history;
            m.dataset.turns = turns;
            match temperature {
                Some(t) => m.plan["temperature"] = serde_json::json!(t),
                None => {
                    m.plan.as_object_mut().unwrap().remove("temperature");
                }
            }
            prompt_caveat(&m)
        };
        let multi = base.dataset.trajectories * 5;
        let warned = with(HistorySource::Generated, Some(0.7), multi).expect("flagged");
        assert!(warned.contains("temperature 0.7"), "{warned}");
        assert!(warned.contains("--history recorded"), "{warned}");
        // The server's default temperature (1) samples too.
        let default = with(HistorySource::Generated, None, multi).expect("flagged");
        assert!(default.contains("default temperature"), "{default}");
        // Recorded history, greedy decoding, or one turn per trajectory: every cell saw the
        // same prompts; with recorded history, answer lengths still differ unless recorded.
        let lengths = with(HistorySource::Recorded, Some(0.7), multi).expect("flagged");
        assert!(lengths.starts_with("Answer lengths differ"), "{lengths}");
        assert!(lengths.contains("--output-len recorded"), "{lengths}");
        let mut fixed = base.clone();
        fixed.dataset.history = HistorySource::Recorded;
        fixed.plan["temperature"] = serde_json::json!(0.7);
        fixed.plan["output_len"] = serde_json::json!("recorded");
        assert_eq!(prompt_caveat(&fixed), None);
        assert_eq!(with(HistorySource::Recorded, Some(0.0), multi), None);
        assert_eq!(with(HistorySource::Generated, Some(0.0), multi), None);
        let single = base.dataset.trajectories;
        assert_eq!(with(HistorySource::Generated, Some(0.7), single), None);
    }

    #[test]
    fn the_dataset_line_states_history_and_skipped_lines() {
        let mut d = manifest(&FixtureSpec::small("d")).dataset;
        d.history = HistorySource::Recorded;
        assert!(dataset_line(&d).contains("history recorded"));
        assert!(!dataset_line(&d).contains("skipped"));
        d.skipped_lines = 3;
        assert!(dataset_line(&d).contains("3 malformed line(s) skipped"));
    }

    #[test]
    fn a_synthetic_datasets_parameters_read_as_words_not_json() {
        // The source as the runner writes it, in the committed demo's manifest.
        let demo = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../results/demo-sim/manifest.json"
        );
        let man: Manifest = serde_json::from_str(&std::fs::read_to_string(demo).unwrap()).unwrap();
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(man.dataset.source.strip_prefix("synthetic ").unwrap()).unwrap();
        let line = dataset_line(&man.dataset);
        assert!(line.starts_with("synthetic: generator with "), "{line}");
        assert!(!line.contains('{') && !line.contains('"'), "{line}");
        for (k, v) in &params {
            let v = match v {
                serde_json::Value::Array(a) => format!("{}–{}", a[0], a[1]),
                v => v.to_string(),
            };
            assert!(
                line.contains(&format!("{} {v}", k.replace('_', " "))),
                "{k}: {line}"
            );
        }
        // Any other source stays as it is.
        let mut d = man.dataset.clone();
        d.source = "data/swe.jsonl".into();
        assert!(dataset_line(&d).starts_with("synthetic: data/swe.jsonl ("));
    }
}
