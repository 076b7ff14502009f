//! Shared helpers: fixture runs, builds, and an independent recomputation of the seed table.

use report::fixture::{self, FixtureSpec};
use report::site::{self, BuildOptions, BuildReport};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use turnbench_schema::CacheMode;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Small enough to check snapshot numbers by hand: 1 GPU, 2 cache modes, concurrency 1 and 2,
/// 3 trajectories of 3 turns.
pub fn tiny_spec(run_id: &str) -> FixtureSpec {
    FixtureSpec {
        run_id: run_id.into(),
        gpus: vec!["h100".into()],
        modes: vec![CacheMode::Prefix, CacheMode::None],
        concurrencies: vec![1, 2],
        trajectories: 3,
        turns: 3,
        seed: 11,
        hostile: false,
        error_rate: 0.0,
    }
}

pub fn write_run(parent: &Path, name: &str, spec: &FixtureSpec) -> PathBuf {
    fixture::write_run(parent, name, spec).expect("writing a fixture run")
}

pub fn build(inputs: &[PathBuf], out: &Path, archive: Option<&Path>) -> BuildReport {
    try_build(inputs, out, archive).expect("report build")
}

/// [`build`], its error returned.
pub fn try_build(
    inputs: &[PathBuf],
    out: &Path,
    archive: Option<&Path>,
) -> anyhow::Result<BuildReport> {
    site::build(&BuildOptions {
        inputs: inputs.to_vec(),
        out: out.to_path_buf(),
        archive: archive.map(Path::to_path_buf),
        title: "turnbench test".into(),
        dump_contexts: false,
        csv_part_rows: report::data::TURNS_CSV_PART_ROWS,
    })
}

/// The seed table of one cell, recomputed here from `turns.jsonl` without the schema crate's
/// summary code (plain JSON values), to check the pages against.
#[derive(Debug, Default, Clone)]
pub struct SeedNumbers {
    pub total_time: f64,
    pub avg_traj: f64,
    pub traj_s: f64,
    pub tok_s: f64,
    pub total_tokens: u64,
    pub tok_turn: f64,
}

pub fn recompute_seed(turns: &Path) -> BTreeMap<(String, String, u32), SeedNumbers> {
    let text = std::fs::read_to_string(turns).unwrap();
    #[derive(Default)]
    struct Acc {
        end: f64,
        tokens: u64,
        counted: u64,
        trajs: BTreeMap<u64, (f64, f64, bool)>,
    }
    let mut cells: BTreeMap<(String, String, u32), Acc> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let key = (
            v["gpu"].as_str().unwrap().to_string(),
            v["cache_mode"].as_str().unwrap().to_string(),
            v["concurrency"].as_u64().unwrap() as u32,
        );
        let acc = cells.entry(key).or_default();
        let (send, end) = (v["t_send"].as_f64().unwrap(), v["t_end"].as_f64().unwrap());
        acc.end = acc.end.max(end);
        if let Some(c) = v["completion_tokens"].as_u64() {
            acc.tokens += c;
            acc.counted += 1;
        }
        let t = acc
            .trajs
            .entry(v["traj"].as_u64().unwrap())
            .or_insert((send, end, true));
        t.0 = t.0.min(send);
        t.1 = t.1.max(end);
        t.2 &= v["error"].is_null();
    }
    cells
        .into_iter()
        .map(|(k, a)| {
            let ok = a.trajs.values().filter(|t| t.2).count() as f64;
            // Over the trajectories that succeeded (the fixture's run to their end).
            let durations: Vec<f64> = a
                .trajs
                .values()
                .filter(|t| t.2)
                .map(|t| t.1 - t.0)
                .collect();
            let n = SeedNumbers {
                total_time: a.end,
                avg_traj: durations.iter().sum::<f64>() / durations.len() as f64,
                traj_s: ok / a.end,
                tok_s: a.tokens as f64 / a.end,
                total_tokens: a.tokens,
                tok_turn: a.tokens as f64 / a.counted as f64,
            };
            (k, n)
        })
        .collect()
}

/// `shown` (a table cell, possibly with a ★) equals `expected` to the shown precision.
pub fn assert_shown(shown: &str, expected: f64, what: &str) {
    let text: String = shown
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    let value: f64 = text
        .parse()
        .unwrap_or_else(|_| panic!("{what}: {shown:?} is not a number"));
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    let tolerance = 0.5 * 10f64.powi(-(decimals as i32)) + 1e-9;
    assert!(
        (value - expected).abs() <= tolerance,
        "{what}: page shows {shown}, recomputed {expected}"
    );
}
