//! The run manifest (`manifest.json`): written first, before any request is sent.

use crate::turn::CacheMode;
use serde::{Deserialize, Serialize};

/// Everything needed to know what a run measured and to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub run_id: String,
    /// RFC 3339 UTC timestamp of the run's start.
    pub created: String,
    pub tool: ToolInfo,
    /// True when any number in this run comes from the simulated engine.
    pub simulated: bool,
    /// The full resolved sweep plan, as the runner validated it (no secrets).
    pub plan: serde_json::Value,
    pub backend: BackendInfo,
    /// Every server that served the run, in the order they started: one per GPU, plus one
    /// per restart (a cache mode that needs the radix cache off or back on) and per GPU again
    /// for each `--resume`.
    pub servers: Vec<ServerInfo>,
    pub gpus: Vec<GpuInfo>,
    pub dataset: DatasetInfo,
    pub host: HostInfo,
    /// Roofline bounds per GPU for the plan, from the cost model (so the report can draw them).
    #[serde(default)]
    pub limits: Vec<PhysicalLimits>,
    /// Cells the plan contains, in run order: (gpu, cache mode, concurrency).
    #[serde(default)]
    pub cells: Vec<CellId>,
}

impl Manifest {
    /// The run's simulated engine had no cost (`--sim-time-scale inf`): its times are the
    /// harness's own ([`SimInfo::zero_cost`]).
    pub fn zero_cost(&self) -> bool {
        self.backend.sim.as_ref().is_some_and(|s| s.zero_cost)
    }
}

/// One point of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellId {
    pub gpu: String,
    pub cache_mode: CacheMode,
    pub concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub git_commit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A real SGLang server (launched or attached), native `/generate` API.
    Sglang,
    /// Any OpenAI-compatible server, `/v1/chat/completions`.
    Openai,
    /// turnbench's simulated SGLang engine.
    Sim,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// How servers came to exist: `launch`, `attach` or `sim`.
    pub access: String,
    /// `native` (`/generate`) or `openai` (`/v1/chat/completions`).
    pub api: String,
    /// Present for simulated runs.
    pub sim: Option<SimInfo>,
    /// The chat template the runner rendered `native` prompts with: `chatml (built-in)` or
    /// `<file name> sha256:<first 16 hex digits of the file's SHA-256>`. Absent for the
    /// `openai` API (the server templates) and in manifests written before it was recorded.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// What the simulated engine simulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimInfo {
    /// Engine seconds per wall second; recorded times are engine time.
    pub time_scale: f64,
    /// GPU profile, e.g. `h100`.
    pub gpu_profile: String,
    /// Model shape, e.g. `qwen2.5-14b`.
    pub model: String,
    /// The engine did not wait at all (`--sim-time-scale inf`): recorded times are the
    /// harness's own wall time (`time_scale` 1), no engine's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_cost: bool,
}

/// What the server said about itself (`/get_server_info`, `/get_model_info`). Never secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    pub gpu: String,
    /// Base URL the runner talked to (credentials stripped).
    pub url: String,
    pub version: Option<String>,
    pub model_path: Option<String>,
    pub mem_fraction_static: Option<f64>,
    /// The real KV pool size in tokens (`max_total_num_tokens`).
    pub max_total_num_tokens: Option<u64>,
    pub max_running_requests: Option<u64>,
    pub context_length: Option<u64>,
    pub chunked_prefill_size: Option<i64>,
    pub disable_radix_cache: Option<bool>,
    /// Launch command line, when the runner launched the server (API keys masked).
    #[serde(default)]
    pub launch_command: Option<Vec<String>>,
    /// The server's own answer with secret-looking keys removed.
    #[serde(default)]
    pub raw: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    /// Label used in records and page names.
    pub label: String,
    /// Device index (`CUDA_VISIBLE_DEVICES`), when known.
    pub index: Option<u32>,
    /// Device name (e.g. `NVIDIA H100 80GB HBM3`, or `simulated h100`).
    pub name: Option<String>,
    pub memory_bytes: Option<u64>,
}

/// Where turns' history came from, for datasets that record assistant messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistorySource {
    /// The next prompt contains what the engine just generated (the seed's behaviour).
    Generated,
    /// The next prompt contains the dataset's recorded assistant message.
    Recorded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// `synthetic`, `r2e-gym`, `openai-messages`, `sharegpt`.
    pub kind: String,
    /// File path or generator description.
    pub source: String,
    /// Hex SHA-256 of the input bytes (or of the generator parameters).
    pub content_hash: Option<String>,
    pub trajectories: u64,
    /// Total turns across trajectories (after `--turns` truncation).
    pub turns: u64,
    pub history: HistorySource,
    /// Lines skipped under `--skip-bad-lines`.
    #[serde(default)]
    pub skipped_lines: u64,
    /// Turns of each trajectory, in dataset order (what a cell runs of each), so readers can
    /// tell a finished trajectory from one an interrupted run left part-way. Empty in runs
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns_per_trajectory: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub hostname: Option<String>,
    pub os: String,
    pub cpus: u32,
}

/// Physical (roofline) bounds for one GPU and model, from the cost model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicalLimits {
    pub gpu: String,
    /// Decode output tokens/s upper bound at each concurrency of the plan, at the mean context.
    pub decode_tok_per_s: Vec<(u32, f64)>,
    /// Prefill tokens/s upper bound (compute bound).
    pub prefill_tok_per_s: f64,
    /// What the bound assumes, in words.
    pub note: String,
}
