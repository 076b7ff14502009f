//! Telemetry: time series sampled during a run (one line of `telemetry.jsonl`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One sample from one source for one GPU.
///
/// `source` is `"nvidia-smi"` (keys such as `memory_used_bytes`, `utilization`, `power_w`)
/// or `"metrics"` (the server's Prometheus `/metrics`, keys named after the `sglang:` series
/// without the prefix, e.g. `num_running_reqs`, `num_queue_reqs`, `token_usage`,
/// `cache_hit_rate`, `gen_throughput`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySample {
    /// Seconds since the run started (monotonic; engine time for simulated runs).
    pub t: f64,
    pub gpu: String,
    pub source: String,
    /// The cell running on that GPU when sampled, if any: `"<cache_mode>/<concurrency>"`.
    #[serde(default)]
    pub cell: Option<String>,
    pub values: BTreeMap<String, f64>,
}
