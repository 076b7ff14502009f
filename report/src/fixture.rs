//! Synthetic results for tests, demos and the benchmark: a run directory in the schema's
//! format, made by a small closed-loop model (not the simulated engine), always marked
//! simulated. `report gen-fixture` exposes it on the command line.

use anyhow::Context as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use turnbench_schema::manifest::CellId;
use turnbench_schema::summary::{best_cells, summarize_cell_with};
use turnbench_schema::{
    files, jsonl, BackendInfo, BackendKind, CacheMode, DatasetInfo, GpuInfo, HistorySource,
    HostInfo, ItlSummary, Manifest, PhysicalLimits, ServerInfo, SimInfo, Summary, TelemetrySample,
    ToolInfo, TurnRecord, SCHEMA_VERSION,
};

/// Strings that must render as text wherever they appear.
pub const HOSTILE_MODEL: &str = "qwen</script><script>alert('model')</script>\"'&";
pub const HOSTILE_DATASET: &str = "<img src=x onerror=alert(1)></script>\"data'set\"";
pub const HOSTILE_RUN_ID: &str = "run</script><b>\"bold\"</b>&'";

/// What to generate.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub run_id: String,
    pub gpus: Vec<String>,
    pub modes: Vec<CacheMode>,
    pub concurrencies: Vec<u32>,
    pub trajectories: u32,
    pub turns: u32,
    pub seed: u64,
    /// Put hostile strings into model name and dataset source (the run id is the caller's).
    pub hostile: bool,
    /// Fail this fraction of turns with an error message.
    pub error_rate: f64,
}

impl FixtureSpec {
    /// A small, fast run: 2 GPUs × 2 cache modes × 3 concurrencies.
    pub fn small(run_id: &str) -> Self {
        FixtureSpec {
            run_id: run_id.to_string(),
            gpus: vec!["h100".into(), "a100".into()],
            modes: vec![CacheMode::Prefix, CacheMode::None],
            concurrencies: vec![1, 4, 16],
            trajectories: 16,
            turns: 8,
            seed: 7,
            hostile: false,
            error_rate: 0.01,
        }
    }

    /// Records this spec produces.
    pub fn record_count(&self) -> u64 {
        (self.gpus.len() * self.modes.len() * self.concurrencies.len()) as u64
            * u64::from(self.trajectories)
            * u64::from(self.turns)
    }

    /// A spec that yields about `n` records (for the benchmark).
    /// 2 GPUs × (prefix, none) × 5 concurrencies × 40 turns: 1,000,000 is 1,250 trajectories.
    pub fn with_records(run_id: &str, n: u64) -> Self {
        let mut spec = FixtureSpec::small(run_id);
        spec.concurrencies = vec![1, 4, 16, 32, 64];
        spec.turns = 40;
        let per_traj = spec.record_count() / u64::from(spec.trajectories);
        spec.trajectories = (n / per_traj).max(1) as u32;
        spec
    }
}

/// Per-GPU speed of the toy model.
struct GpuModel {
    itl_s: f64,
    prefill_tok_s: f64,
}

fn gpu_model(label: &str) -> GpuModel {
    if label.contains("a100") {
        GpuModel {
            itl_s: 0.022,
            prefill_tok_s: 9_000.0,
        }
    } else {
        GpuModel {
            itl_s: 0.014,
            prefill_tok_s: 16_000.0,
        }
    }
}

/// Writes `<parent>/<dir_name>/` with manifest, turns, summary and telemetry; returns the path.
/// Streams cell by cell, so memory stays bounded by one cell.
pub fn write_run(parent: &Path, dir_name: &str, spec: &FixtureSpec) -> anyhow::Result<PathBuf> {
    let dir = parent.join(dir_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = manifest(spec);
    write_json(&dir.join(files::MANIFEST), &manifest)?;

    let turns_path = dir.join(files::TURNS);
    let mut turns = BufWriter::new(
        File::create(&turns_path).with_context(|| format!("creating {}", turns_path.display()))?,
    );
    let tele_path = dir.join(files::TELEMETRY);
    let mut tele = BufWriter::new(
        File::create(&tele_path).with_context(|| format!("creating {}", tele_path.display()))?,
    );
    let mut cells = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut run_clock = BTreeMap::<String, f64>::new();
    for cell in &manifest.cells {
        let records = cell_records(spec, cell, &mut rng);
        for r in &records {
            jsonl::write_line(&mut turns, r)?;
        }
        let refs: Vec<&TurnRecord> = records.iter().collect();
        let summary = summarize_cell_with(&refs, &manifest.dataset.turns_per_trajectory)
            .expect("a generated cell has records");
        let start = run_clock.entry(cell.gpu.clone()).or_insert(0.0);
        for s in telemetry(cell, &records, *start, summary.total_time_s) {
            jsonl::write_line(&mut tele, &s)?;
        }
        *start += summary.total_time_s;
        cells.push(summary);
    }
    turns.flush()?;
    tele.flush()?;
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        run_id: spec.run_id.clone(),
        simulated: true,
        best: best_cells(&cells),
        cells,
    };
    write_json(&dir.join(files::SUMMARY), &summary)?;
    Ok(dir)
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// All records of a spec, in memory (for tests).
pub fn records(spec: &FixtureSpec) -> Vec<TurnRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    manifest(spec)
        .cells
        .iter()
        .flat_map(|cell| cell_records(spec, cell, &mut rng))
        .collect()
}

pub fn manifest(spec: &FixtureSpec) -> Manifest {
    let model = if spec.hostile {
        HOSTILE_MODEL.to_string()
    } else {
        "qwen2.5-14b".to_string()
    };
    let source = if spec.hostile {
        HOSTILE_DATASET.to_string()
    } else {
        format!("synthetic(seed={})", spec.seed)
    };
    let mut cells = Vec::new();
    for gpu in &spec.gpus {
        for &cache_mode in &spec.modes {
            for &concurrency in &spec.concurrencies {
                cells.push(CellId {
                    gpu: gpu.clone(),
                    cache_mode,
                    concurrency,
                });
            }
        }
    }
    Manifest {
        schema_version: SCHEMA_VERSION,
        run_id: spec.run_id.clone(),
        created: "2026-11-27T12:00:00Z".into(),
        tool: ToolInfo {
            name: "turnbench-fixture".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_commit: None,
        },
        simulated: true,
        plan: serde_json::json!({
            "concurrency": spec.concurrencies,
            "cache_modes": spec.modes,
            "trajectories": spec.trajectories,
            "turns": spec.turns,
            "think_time": "replay",
        }),
        backend: BackendInfo {
            kind: BackendKind::Sim,
            access: "sim".into(),
            api: "native".into(),
            sim: Some(SimInfo {
                time_scale: 100.0,
                gpu_profile: spec.gpus.first().cloned().unwrap_or_default(),
                model: model.clone(),
                zero_cost: false,
            }),
            chat_template: None,
        },
        servers: spec
            .gpus
            .iter()
            .map(|gpu| ServerInfo {
                gpu: gpu.clone(),
                url: "http://127.0.0.1:30000".into(),
                version: Some("sim-0.1".into()),
                model_path: Some(model.clone()),
                mem_fraction_static: Some(0.88),
                max_total_num_tokens: Some(400_000),
                max_running_requests: Some(256),
                context_length: Some(32_768),
                chunked_prefill_size: Some(8192),
                disable_radix_cache: Some(false),
                launch_command: Some(vec![
                    "python".into(),
                    "-m".into(),
                    "sglang.launch_server".into(),
                    "--model-path".into(),
                    model.clone(),
                    "--api-key".into(),
                    "sk-fixture-secret".into(),
                ]),
                raw: serde_json::Value::Null,
            })
            .collect(),
        gpus: spec
            .gpus
            .iter()
            .enumerate()
            .map(|(i, gpu)| GpuInfo {
                label: gpu.clone(),
                index: Some(i as u32),
                name: Some(format!("simulated {gpu}")),
                memory_bytes: Some(80 << 30),
            })
            .collect(),
        dataset: DatasetInfo {
            kind: "synthetic".into(),
            source,
            content_hash: Some("ab".repeat(32)),
            trajectories: u64::from(spec.trajectories),
            turns: u64::from(spec.trajectories) * u64::from(spec.turns),
            history: HistorySource::Generated,
            skipped_lines: 0,
            turns_per_trajectory: vec![spec.turns; spec.trajectories as usize],
        },
        host: HostInfo {
            hostname: Some("fixture-host".into()),
            os: "linux".into(),
            cpus: 2,
        },
        limits: spec
            .gpus
            .iter()
            .map(|gpu| {
                let m = gpu_model(gpu);
                PhysicalLimits {
                    gpu: gpu.clone(),
                    decode_tok_per_s: spec
                        .concurrencies
                        .iter()
                        .map(|&c| (c, f64::from(c) / (m.itl_s * 0.8)))
                        .collect(),
                    prefill_tok_per_s: m.prefill_tok_s,
                    note: "memory-bound decode at the mean context (fixture model)".into(),
                }
            })
            .collect(),
        cells,
    }
}

/// One cell of a closed loop: `concurrency` workers each take the next trajectory and run
/// all its turns in order.
fn cell_records(spec: &FixtureSpec, cell: &CellId, rng: &mut ChaCha8Rng) -> Vec<TurnRecord> {
    let m = gpu_model(&cell.gpu);
    let c = cell.concurrency.max(1);
    let slowdown = 1.0 + 0.06 * f64::from(c - 1);
    let mut workers = vec![0.0f64; c as usize];
    let mut out = Vec::with_capacity((spec.trajectories * spec.turns) as usize);
    for traj in 0..spec.trajectories {
        let (w, _) = workers
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one worker");
        let mut t = workers[w];
        let in_flight = c.min(spec.trajectories - traj + traj.min(c - 1));
        let mut context: u64 = rng.random_range(1500..2500);
        for turn in 0..spec.turns {
            let new_tokens: u64 = if turn == 0 {
                context
            } else {
                rng.random_range(100..900)
            };
            let prompt = if turn == 0 {
                context
            } else {
                context + new_tokens
            };
            let cached = match cell.cache_mode {
                CacheMode::None => 0,
                _ => prompt - new_tokens,
            };
            let computed = prompt - cached;
            let completion: u64 = rng.random_range(40..400);
            let ttft =
                0.02 + computed as f64 / m.prefill_tok_s * slowdown * rng.random_range(0.9..1.2);
            let itl = m.itl_s * slowdown * rng.random_range(0.95..1.1);
            let e2e = ttft + (completion - 1) as f64 * itl;
            let failed = rng.random::<f64>() < spec.error_rate;
            let think = rng.random_range(0.0..2.0);
            let record = TurnRecord {
                gpu: cell.gpu.clone(),
                cache_mode: cell.cache_mode,
                concurrency: cell.concurrency,
                traj,
                traj_id: format!("traj-{traj:05}"),
                turn,
                attempt: 0,
                t_send: t,
                t_first_token: (!failed).then_some(t + ttft),
                t_end: t + if failed { ttft } else { e2e },
                ttft: (!failed).then_some(ttft),
                e2e: (!failed).then_some(e2e),
                itl: (!failed).then_some(ItlSummary {
                    mean: itl,
                    p50: itl * 0.98,
                    p99: itl * 1.6,
                    max: itl * 2.2,
                }),
                prompt_tokens: Some(prompt),
                cached_tokens: Some(cached),
                completion_tokens: (!failed).then_some(completion),
                think_time: think,
                finish_reason: Some(if failed { "abort" } else { "stop" }.into()),
                error: failed.then(|| "HTTP 503: server overloaded".to_string()),
                in_flight,
                // The 20 ms base of the TTFT above is the part outside the engine.
                server_ttft: (!failed).then_some(ttft - 0.02),
                // With more than one stream, every fifth turn was preempted once.
                retractions: Some(u32::from(c > 1 && (traj + turn) % 5 == 0)),
            };
            t = record.t_end + think;
            context = prompt + completion;
            out.push(record);
        }
        workers[w] = t;
    }
    out
}

fn telemetry(
    cell: &CellId,
    records: &[TurnRecord],
    start: f64,
    total: f64,
) -> Vec<TelemetrySample> {
    let steps = 20;
    (0..=steps)
        .map(|i| {
            let t = total * f64::from(i) / f64::from(steps);
            let running = records
                .iter()
                .filter(|r| r.t_send <= t && r.t_end > t)
                .count() as f64;
            TelemetrySample {
                t: start + t,
                gpu: cell.gpu.clone(),
                source: "metrics".into(),
                cell: Some(format!("{}/{}", cell.cache_mode, cell.concurrency)),
                values: BTreeMap::from([
                    ("num_running_reqs".to_string(), running),
                    (
                        "token_usage".to_string(),
                        (0.05 * f64::from(cell.concurrency)).min(0.95),
                    ),
                ]),
            }
        })
        .collect()
}
