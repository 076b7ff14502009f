//! The per-turn record: one line of `turns.jsonl`, one generation request.
//!
//! Times are seconds since the **cell** started, on a monotonic clock
//! (`t_send`, `t_first_token`, `t_end`), and durations derived from them (`ttft`, `e2e`).
//! For simulated runs every time is in *engine* time (wall time × the simulator's time scale),
//! and the manifest says so.
//!
//! Definitions:
//! - `ttft` = first chunk that carries generated content − send.
//! - `e2e` = last chunk of the response (the finish chunk, or `[DONE]` when that is last) − send.
//! - inter-token latency (`itl`): for each content chunk after the first, the gap since the
//!   previous content chunk divided evenly over the tokens it added (the change in the server's
//!   `completion_tokens`), as SGLang's `bench_serving.py` does; chunks that add no token are
//!   skipped. `itl` summarizes those per-token gaps for this turn. OpenAI streams give the
//!   count per chunk when asked (`stream_options.continuous_usage_stats`, which the runner
//!   sends); from a server that ignores it each content chunk counts as one token, so a chunk
//!   holding several makes that turn's gaps per chunk (the sweep warns when that happened).
//! - a chunk's time is when its bytes reached the client machine: the kernel's receive time of
//!   the TCP segment that completed it (`SO_TIMESTAMPNS`), put on the monotonic clock, so the
//!   client's own scheduling delay is not counted; the time it was read when the kernel gives
//!   no stamp.
//! - token counts come from the server (`meta_info` / `usage`), never from the client's own count.
//!   `cached_tokens` is `None` when the server did not report it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How conversation history reaches the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Resend the full conversation every turn; the radix cache reuses the prefix.
    Prefix,
    /// SGLang sessions: send only the new text, chained by the previous request id.
    Session,
    /// No reuse: the server runs with the radix cache disabled.
    None,
}

impl CacheMode {
    pub const ALL: [CacheMode; 3] = [CacheMode::Prefix, CacheMode::Session, CacheMode::None];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Prefix => "prefix",
            CacheMode::Session => "session",
            CacheMode::None => "none",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prefix" => Ok(CacheMode::Prefix),
            "session" => Ok(CacheMode::Session),
            "none" => Ok(CacheMode::None),
            other => Err(format!(
                "unknown cache mode {other:?} (expected prefix, session or none)"
            )),
        }
    }
}

/// Inter-token latency of one turn, seconds per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItlSummary {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl ItlSummary {
    /// Summarize per-token gaps (seconds). `None` when there are none (a one-token answer).
    pub fn of(gaps: &[f64]) -> Option<Self> {
        let p = crate::stats::Percentiles::of(gaps);
        Some(ItlSummary {
            mean: p.mean?,
            p50: p.p50?,
            p99: p.p99?,
            max: p.max?,
        })
    }
}

/// One generation request of one trajectory in one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnRecord {
    /// GPU label of the cell (e.g. `"1"`, `"h100"`).
    pub gpu: String,
    pub cache_mode: CacheMode,
    /// Trajectories in flight at once in this cell (the seed's "batch size").
    pub concurrency: u32,
    /// Index of the trajectory in the dataset order.
    pub traj: u32,
    /// The dataset's own id for the trajectory.
    pub traj_id: String,
    /// Turn index within the trajectory, from 0.
    pub turn: u32,
    /// Attempt number of this trajectory in this cell; a resumed run re-runs a partial
    /// trajectory with a higher attempt, and readers keep only the highest attempt.
    #[serde(default)]
    pub attempt: u32,
    /// Request sent (seconds since cell start; when a resumed run finishes a cell, its clock
    /// runs on from the latest `t_end` the interrupted run recorded in it).
    pub t_send: f64,
    /// First content chunk received; `None` if none arrived.
    pub t_first_token: Option<f64>,
    /// Last byte of the response received (or the failure noticed).
    pub t_end: f64,
    /// Time to first token (s).
    pub ttft: Option<f64>,
    /// End-to-end latency (s).
    pub e2e: Option<f64>,
    /// Inter-token latency summary (s/token); `None` with fewer than two tokens.
    pub itl: Option<ItlSummary>,
    /// Prompt tokens as counted by the server (whole concatenated prompt for sessions).
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens served from the prefix cache; `None` when the server does not report it.
    pub cached_tokens: Option<u64>,
    /// Generated tokens as counted by the server.
    pub completion_tokens: Option<u64>,
    /// Think (tool) time slept before the next turn (s); excluded from latency.
    pub think_time: f64,
    /// `stop`, `length`, `abort`, … as reported by the server.
    pub finish_reason: Option<String>,
    /// `None` on success; otherwise what went wrong.
    pub error: Option<String>,
    /// Trajectories active in this cell when the request was sent.
    pub in_flight: u32,
    /// The server's own TTFT (s), from its timestamps (SGLang's `--enable-metrics`:
    /// `prefill_finished_time − request_received_ts`; the simulator's, in engine time), when
    /// it gives them: `ttft` minus this is what lies outside the engine (network, HTTP, the
    /// client; for a simulated engine, the harness's own time × the time scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ttft: Option<f64>,
    /// How often the server retracted (preempted) this request to free KV cache for others
    /// and ran it again later (SGLang's `meta_info.total_retractions`, native API): a
    /// retracted request's prefill is computed again and its latency includes the wait. `None`
    /// when the server does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retractions: Option<u32>,
}

impl TurnRecord {
    /// The cell (GPU, cache mode, concurrency) this turn belongs to.
    pub fn cell(&self) -> crate::manifest::CellId {
        crate::manifest::CellId {
            gpu: self.gpu.clone(),
            cache_mode: self.cache_mode,
            concurrency: self.concurrency,
        }
    }

    /// Time per output token after the first: `(e2e - ttft) / (completion_tokens - 1)`, as
    /// SGLang's `bench_serving.py` defines it. `None` when the stream showed no time after its
    /// first content (every token came with the first chunk): no decode time was seen, and 0
    /// is no time per token. (A first chunk of several tokens makes it understate the decode
    /// step, as it does in bench_serving; the inter-token latency does not.)
    pub fn tpot(&self) -> Option<f64> {
        let n = self.completion_tokens?;
        if n < 2 {
            return None;
        }
        let decode = self.e2e? - self.ttft?;
        (decode > 0.0).then(|| decode / (n - 1) as f64)
    }

    /// Prompt tokens that had to be computed (prompt − cached).
    pub fn new_prompt_tokens(&self) -> Option<u64> {
        Some(self.prompt_tokens?.saturating_sub(self.cached_tokens?))
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// Identity of the (cell, trajectory, turn) this record measures.
    pub fn key(&self) -> (String, CacheMode, u32, u32, u32) {
        (
            self.gpu.clone(),
            self.cache_mode,
            self.concurrency,
            self.traj,
            self.turn,
        )
    }
}

/// Keep, for every (cell, trajectory), only the records of its highest attempt.
/// This is how a resumed run's superseded partial lines are dropped.
pub fn latest_attempts(records: Vec<TurnRecord>) -> Vec<TurnRecord> {
    use std::collections::HashMap;
    let mut best: HashMap<(String, CacheMode, u32, u32), u32> = HashMap::new();
    for r in &records {
        let k = (r.gpu.clone(), r.cache_mode, r.concurrency, r.traj);
        let e = best.entry(k).or_insert(r.attempt);
        *e = (*e).max(r.attempt);
    }
    records
        .into_iter()
        .filter(|r| best[&(r.gpu.clone(), r.cache_mode, r.concurrency, r.traj)] == r.attempt)
        .collect()
}
