//! `runner sweep` and `runner pack` end to end: the real binary, real loopback HTTP, the
//! simulated engine in process (`sim` backend), as a spawned `runner serve-sim` (`launch`), or
//! behind a recording proxy (`attach`).

mod cache_modes;
mod chat_template;
mod datasets;
mod faults;
mod launch;
mod openai_compat;
mod pack;
mod resume;
mod session_wire;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use turnbench_schema::summary::summarize_with;
use turnbench_schema::turn::latest_attempts;
use turnbench_schema::{files, jsonl, Manifest, Summary, TurnRecord};

pub fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runner"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sweep")
        .join(name)
}

/// Flags of a small, fast sweep: one simulated H100, 2 trajectories × 4 turns, concurrency
/// 1 and 2, engine time 1000× faster than real; `over` replaces or adds flags.
pub fn small_with(out: &Path, id: &str, over: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(String, String)> = [
        ("--out", out.to_str().unwrap()),
        ("--run-id", id),
        ("--gpus", "h100"),
        ("--trajectories", "2"),
        ("--turns", "4"),
        ("--batch-sizes", "1,2"),
        ("--sim-time-scale", "1000"),
        ("--think-time", "off"),
        ("--max-new-tokens", "32"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in over {
        match flags
            .iter_mut()
            .find(|f| f.0 == *k && !k.starts_with("--sim-args"))
        {
            Some(f) => f.1 = v.to_string(),
            None => flags.push((k.to_string(), v.to_string())),
        }
    }
    let mut a = vec!["sweep".to_string(), "--quiet".to_string()];
    for (k, v) in flags {
        if v.is_empty() {
            a.push(k);
        } else {
            a.push(format!("{k}={v}"));
        }
    }
    a
}

pub fn small(out: &Path, id: &str) -> Vec<String> {
    small_with(out, id, &[])
}

/// Run the binary; panics with its output when it fails.
/// `runner sweep --quiet --out OUT --resume ID` and `extra`.
pub fn resume_args(out: &Path, id: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["sweep", "--quiet", "--out"].map(String::from).to_vec();
    v.extend([out.display().to_string(), "--resume".into(), id.into()]);
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

pub fn run_ok(args: &[String]) -> Output {
    let out = runner().args(args).output().expect("runner starts");
    assert!(
        out.status.success(),
        "runner {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run the binary expecting failure; returns stderr.
pub fn run_err(args: &[String]) -> String {
    let out = runner().args(args).output().expect("runner starts");
    assert!(!out.status.success(), "runner {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The (cached, prompt) tokens of trajectory `traj`'s turns in order, in cache mode `mode` at
/// concurrency 1.
pub fn token_series(
    turns: &[TurnRecord],
    mode: turnbench_schema::CacheMode,
    traj: u32,
) -> (Vec<u64>, Vec<u64>) {
    let mut tr: Vec<&TurnRecord> = turns
        .iter()
        .filter(|r| r.cache_mode == mode && r.concurrency == 1 && r.traj == traj)
        .collect();
    tr.sort_by_key(|r| r.turn);
    (
        tr.iter().map(|r| r.cached_tokens.unwrap()).collect(),
        tr.iter().map(|r| r.prompt_tokens.unwrap()).collect(),
    )
}

pub struct Run {
    pub manifest: Manifest,
    /// Every line of turns.jsonl, superseded attempts included.
    pub raw: Vec<TurnRecord>,
    pub summary: Summary,
}

impl Run {
    pub fn load(dir: &Path) -> Run {
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(files::MANIFEST)).unwrap()).unwrap();
        let raw: Vec<TurnRecord> = jsonl::read_all(std::io::BufReader::new(
            std::fs::File::open(dir.join(files::TURNS)).unwrap(),
        ))
        .unwrap();
        let summary: Summary =
            serde_json::from_slice(&std::fs::read(dir.join(files::SUMMARY)).unwrap()).unwrap();
        Run {
            manifest,
            raw,
            summary,
        }
    }

    pub fn turns(&self) -> Vec<TurnRecord> {
        latest_attempts(self.raw.clone())
    }

    /// Every (cell, trajectory, turn) of the plan exactly once (a trajectory may end early
    /// only at a failed turn), and the summary equal to a recomputation from turns.jsonl.
    pub fn assert_complete(&self, turns_per_traj: &[u32]) {
        let turns = self.turns();
        for c in &self.manifest.cells {
            for (t, &n) in turns_per_traj.iter().enumerate() {
                let mut got: Vec<&TurnRecord> = turns
                    .iter()
                    .filter(|r| {
                        r.gpu == c.gpu
                            && r.cache_mode == c.cache_mode
                            && r.concurrency == c.concurrency
                            && r.traj == t as u32
                    })
                    .collect();
                got.sort_by_key(|r| r.turn);
                let idx: Vec<u32> = got.iter().map(|r| r.turn).collect();
                let ended_by_failure = got.last().is_some_and(|r| r.error.is_some());
                let want: Vec<u32> = (0..if ended_by_failure {
                    idx.len() as u32
                } else {
                    n
                })
                    .collect();
                assert_eq!(idx, want, "cell {c:?} trajectory {t}: turns recorded");
            }
        }
        let planned = &self.manifest.dataset.turns_per_trajectory;
        assert_eq!(
            planned, turns_per_traj,
            "the manifest lists each trajectory's turns"
        );
        let recomputed = serde_json::to_value(summarize_with(&turns, planned)).unwrap();
        assert!(
            self.summary.cells.iter().all(|c| c.complete == Some(true)),
            "every cell finished"
        );
        let written = serde_json::to_value(&self.summary.cells).unwrap();
        assert!(
            same(&written, &recomputed),
            "summary.json = recomputation from turns.jsonl:\n{written}\n{recomputed}"
        );
    }
}

/// Equal JSON, numbers to 1e-9 relative (a JSON float round trip may move the last bit).
pub fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
