//! The seed's result files, imported as a *legacy* source:
//! - `per_turn_metrics_<gpu>.jsonl`: `#` comment lines, `# Batch Size N starts` markers, and one
//!   JSON object per turn (batch size, trajectory and turn indices, prompt/response "tokens"
//!   that were really **word counts**, and a turn time that was the trajectory's time ÷ its
//!   turns, an **average**);
//! - `per_turn_summary_<gpu>.json`: the seed's table per batch size.
//!
//! Field names are matched leniently (case and punctuation ignored, common variants accepted),
//! since the seed wrote several spellings. Pages label these numbers as legacy next to them.

use crate::load::LoadError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

pub const METRICS_PREFIX: &str = "per_turn_metrics_";
pub const SUMMARY_PREFIX: &str = "per_turn_summary_";

/// `per_turn_metrics_<suffix>.jsonl` → `suffix`.
pub fn metrics_suffix(name: &str) -> Option<String> {
    let rest = name.strip_prefix(METRICS_PREFIX)?;
    let stem = rest
        .strip_suffix(".jsonl")
        .or_else(|| rest.strip_suffix(".json"))?;
    Some(stem.to_string())
}

/// `per_turn_summary_<suffix>.json` → `suffix`.
pub fn summary_suffix(name: &str) -> Option<String> {
    Some(
        name.strip_prefix(SUMMARY_PREFIX)?
            .strip_suffix(".json")?
            .to_string(),
    )
}

/// One turn of the seed's per-turn file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LegacyTurn {
    pub batch_size: u32,
    pub traj: u32,
    pub turn: u32,
    /// Word count of the prompt (the seed called it tokens).
    pub prompt_words: Option<f64>,
    /// Word count of the response.
    pub response_words: Option<f64>,
    /// Trajectory time ÷ turns: an average, not this turn's latency.
    pub turn_time_avg_s: Option<f64>,
}

/// One row of the seed's table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LegacyRow {
    pub batch_size: u32,
    pub total_time_s: Option<f64>,
    pub avg_traj_time_s: Option<f64>,
    pub traj_per_s: Option<f64>,
    /// Words per second (the seed's "tokens").
    pub tok_per_s: Option<f64>,
    pub total_tokens: Option<f64>,
    pub tokens_per_turn: Option<f64>,
    /// True when the row is the seed summary's own numbers; false when derived from turns.
    pub from_summary: bool,
}

#[derive(Debug, Clone)]
pub struct LegacyRun {
    pub id: String,
    pub gpu: String,
    pub rows: Vec<LegacyRow>,
    pub turns: Vec<LegacyTurn>,
}

const BATCH: &[&str] = &["batchsize", "batch", "bs", "concurrency"];
const TRAJ: &[&str] = &[
    "trajectoryidx",
    "trajidx",
    "trajectoryindex",
    "trajindex",
    "trajectory",
    "traj",
    "trajectoryid",
    "trajid",
];
const TURN: &[&str] = &["turnidx", "turnindex", "turn", "turnid", "turnnumber"];
const PROMPT: &[&str] = &[
    "prompttokens",
    "promptwords",
    "inputtokens",
    "promptlen",
    "promptlength",
    "numprompttokens",
];
const RESPONSE: &[&str] = &[
    "responsetokens",
    "responsewords",
    "completiontokens",
    "outputtokens",
    "responselen",
    "responselength",
    "generatedtokens",
];
const TURN_TIME: &[&str] = &[
    "turntime",
    "avgturntime",
    "turntimes",
    "time",
    "latency",
    "turnlatency",
];
const TOTAL_TIME: &[&str] = &[
    "totaltime",
    "totaltimes",
    "totaltimesec",
    "totaltimeseconds",
];
const AVG_TRAJ: &[&str] = &[
    "avgtimepertraj",
    "avgtimepertrajectory",
    "avgtrajtime",
    "avgtraj",
    "avgtrajs",
    "averagetrajectorytime",
];
const TRAJ_PER_S: &[&str] = &[
    "trajthroughput",
    "trajthroughputtrajs",
    "trajectorythroughput",
    "trajpers",
    "trajectoriespersecond",
];
const TOK_PER_S: &[&str] = &[
    "tokenthroughput",
    "tokenthroughputtoks",
    "tokthroughput",
    "tokenspersecond",
    "tokpers",
];
const TOTAL_TOKENS: &[&str] = &["totaltokens", "totaloutputtokens", "totalwords"];
const TOK_PER_TURN: &[&str] = &["tokensperturn", "tokperturn", "tokturn", "avgtokensperturn"];

fn norm(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The first field whose normalized name is in `names` (in the order of `names`).
fn field<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    let normalized: Vec<(String, &Value)> = obj.iter().map(|(k, v)| (norm(k), v)).collect();
    names
        .iter()
        .find_map(|n| normalized.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads the metrics and/or summary file of one GPU.
pub fn load(metrics: Option<&Path>, summary: Option<&Path>) -> Result<LegacyRun, LoadError> {
    let suffix = metrics
        .and_then(|p| metrics_suffix(&p.file_name()?.to_string_lossy()))
        .or_else(|| summary.and_then(|p| summary_suffix(&p.file_name()?.to_string_lossy())))
        .unwrap_or_else(|| "legacy".into());
    let turns = match metrics {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| io_err(p, e))?;
            read_metrics(std::io::BufReader::new(f), p)?
        }
        None => Vec::new(),
    };
    let mut rows = match summary {
        Some(p) => {
            let text = std::fs::read(p).map_err(|e| io_err(p, e))?;
            read_summary(&text, p)?
        }
        None => Vec::new(),
    };
    for derived in rows_from_turns(&turns) {
        if !rows.iter().any(|r| r.batch_size == derived.batch_size) {
            rows.push(derived);
        }
    }
    rows.sort_by_key(|r| r.batch_size);
    if rows.is_empty() {
        let p = metrics.or(summary).expect("a legacy input names a file");
        return Err(LoadError::Invalid {
            path: p.display().to_string(),
            message: "no legacy rows found".into(),
        });
    }
    Ok(LegacyRun {
        id: format!("legacy-{suffix}"),
        gpu: suffix,
        rows,
        turns,
    })
}

fn io_err(p: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn parse_err(p: &Path, line: usize, message: impl Into<String>) -> LoadError {
    LoadError::Parse {
        path: p.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Parses `# Batch Size N starts` (any case and spacing); `None` for other comments.
fn batch_marker(comment: &str) -> Option<u32> {
    let n = norm(comment);
    let rest = n.strip_prefix("batchsize")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

pub fn read_metrics(reader: impl BufRead, path: &Path) -> Result<Vec<LegacyTurn>, LoadError> {
    let mut out = Vec::new();
    let mut batch: Option<u32> = None;
    let mut traj_ids: BTreeMap<String, u32> = BTreeMap::new();
    for (i, line) in reader.lines().enumerate() {
        let lineno = i + 1;
        let line = line.map_err(|e| io_err(path, e))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(comment) = text.strip_prefix('#') {
            if let Some(b) = batch_marker(comment) {
                batch = Some(b);
            }
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| parse_err(path, lineno, crate::load::line_message(&e.to_string())))?;
        let Value::Object(obj) = value else {
            return Err(parse_err(path, lineno, "expected a JSON object"));
        };
        let batch_size = field(&obj, BATCH)
            .and_then(number)
            .map(|b| b as u32)
            .or(batch)
            .ok_or_else(|| {
                parse_err(
                    path,
                    lineno,
                    "no batch size: neither a batch_size field nor a '# Batch Size N starts' line before it",
                )
            })?;
        let traj = match field(&obj, TRAJ) {
            Some(v) => match number(v) {
                Some(n) => n as u32,
                None => {
                    let key = v.to_string();
                    let next = traj_ids.len() as u32;
                    *traj_ids.entry(key).or_insert(next)
                }
            },
            None => {
                return Err(parse_err(
                    path,
                    lineno,
                    format!("no trajectory index field (one of {TRAJ:?})"),
                ))
            }
        };
        let turn = field(&obj, TURN).and_then(number).ok_or_else(|| {
            parse_err(
                path,
                lineno,
                format!("no turn index field (one of {TURN:?})"),
            )
        })? as u32;
        out.push(LegacyTurn {
            batch_size,
            traj,
            turn,
            prompt_words: field(&obj, PROMPT).and_then(number),
            response_words: field(&obj, RESPONSE).and_then(number),
            turn_time_avg_s: field(&obj, TURN_TIME).and_then(number),
        });
    }
    Ok(out)
}

pub fn read_summary(text: &[u8], path: &Path) -> Result<Vec<LegacyRow>, LoadError> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| parse_err(path, e.line(), e.to_string()))?;
    let mut rows = Vec::new();
    collect_rows(&value, None, &mut rows, path)?;
    if rows.is_empty() {
        return Err(LoadError::Invalid {
            path: path.display().to_string(),
            message:
                "no per-batch-size rows (expected objects with a batch size and the seed's columns)"
                    .into(),
        });
    }
    Ok(rows)
}

/// Accepts a list of row objects, an object keyed by batch size, or an object wrapping either.
fn collect_rows(
    value: &Value,
    key_batch: Option<u32>,
    rows: &mut Vec<LegacyRow>,
    path: &Path,
) -> Result<(), LoadError> {
    match value {
        Value::Array(items) => {
            for item in items {
                collect_rows(item, None, rows, path)?;
            }
        }
        Value::Object(obj) => {
            let looks_like_row = field(obj, TOTAL_TIME).is_some()
                || field(obj, TOK_PER_S).is_some()
                || field(obj, TOTAL_TOKENS).is_some();
            if looks_like_row {
                let batch_size = field(obj, BATCH)
                    .and_then(number)
                    .map(|b| b as u32)
                    .or(key_batch)
                    .ok_or_else(|| LoadError::Invalid {
                        path: path.display().to_string(),
                        message: format!(
                            "a summary row has no batch size: {}",
                            Value::Object(obj.clone())
                        ),
                    })?;
                let get = |names| field(obj, names).and_then(number);
                rows.push(LegacyRow {
                    batch_size,
                    total_time_s: get(TOTAL_TIME),
                    avg_traj_time_s: get(AVG_TRAJ),
                    traj_per_s: get(TRAJ_PER_S),
                    tok_per_s: get(TOK_PER_S),
                    total_tokens: get(TOTAL_TOKENS),
                    tokens_per_turn: get(TOK_PER_TURN),
                    from_summary: true,
                });
            } else {
                for (k, v) in obj {
                    let digits: String = k.chars().filter(|c| c.is_ascii_digit()).collect();
                    collect_rows(v, digits.parse().ok(), rows, path)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rows the turns alone support: tokens, tokens per turn, and trajectory time (Σ of the
/// averaged turn times of a trajectory is its time). Total time is unknown.
fn rows_from_turns(turns: &[LegacyTurn]) -> Vec<LegacyRow> {
    let mut by_batch: BTreeMap<u32, Vec<&LegacyTurn>> = BTreeMap::new();
    for t in turns {
        by_batch.entry(t.batch_size).or_default().push(t);
    }
    by_batch
        .into_iter()
        .map(|(batch_size, ts)| {
            let mut traj_time: BTreeMap<u32, f64> = BTreeMap::new();
            for t in &ts {
                *traj_time.entry(t.traj).or_default() += t.turn_time_avg_s.unwrap_or(0.0);
            }
            let words: Vec<f64> = ts.iter().filter_map(|t| t.response_words).collect();
            let total: f64 = words.iter().sum();
            let times: Vec<f64> = traj_time.into_values().collect();
            LegacyRow {
                batch_size,
                total_time_s: None,
                avg_traj_time_s: turnbench_schema::stats::mean(&times),
                traj_per_s: None,
                tok_per_s: None,
                total_tokens: (!words.is_empty()).then_some(total),
                tokens_per_turn: (!words.is_empty()).then(|| total / words.len() as f64),
                from_summary: false,
            }
        })
        .collect()
}
