//! The turnbench results format, version 1: the one contract between `runner`
//! (which writes results), `report` (which reads them into a site) and
//! `viewer-wasm` (which slices per-turn records in the browser).
//!
//! A run lives in `results/<run-id>/`:
//!
//! | file | type | written |
//! |---|---|---|
//! | `manifest.json` | [`Manifest`] | first, before any request |
//! | `turns.jsonl` | one [`TurnRecord`] per line | appended and flushed as each turn ends |
//! | `summary.json` | [`Summary`] | atomically (write + rename) after every cell |
//! | `telemetry.jsonl` | one [`TelemetrySample`] per line | every sampling period |
//!
//! Modules:
//! - [`manifest`]: what was run, where, on what (plan, backend, servers, GPUs, dataset, host).
//! - [`turn`]: the per-turn record, the unit of measurement.
//! - [`summary`]: per-cell aggregates (the seed's columns plus percentiles) and how they are
//!   computed from turn records ([`summary::summarize_cell`]), so runner and report agree.
//! - [`telemetry`]: time series samples (GPU and server metrics).
//! - [`stats`]: the single percentile definition used everywhere.
//! - [`jsonl`]: line-oriented readers and writers that name the line at fault.
//!
//! Every type rejects unknown fields (`deny_unknown_fields`), so a reader never silently
//! drops data written by a newer writer; bump [`SCHEMA_VERSION`] on any incompatible change.
//! Times are seconds (f64); token counts are integers reported by the server.

pub mod jsonl;
pub mod manifest;
pub mod stats;
pub mod summary;
pub mod telemetry;
pub mod turn;

pub use manifest::{
    BackendInfo, BackendKind, DatasetInfo, GpuInfo, HistorySource, HostInfo, Manifest,
    PhysicalLimits, ServerInfo, SimInfo, ToolInfo,
};
pub use stats::{percentile, Percentiles};
pub use summary::{BestCell, CellSummary, Summary};
pub use telemetry::TelemetrySample;
pub use turn::{CacheMode, ItlSummary, TurnRecord};

/// Version of the results format written by this crate. Readers accept exactly this version.
pub const SCHEMA_VERSION: u32 = 1;

/// File names inside a run directory.
pub mod files {
    pub const MANIFEST: &str = "manifest.json";
    pub const TURNS: &str = "turns.jsonl";
    pub const SUMMARY: &str = "summary.json";
    pub const TELEMETRY: &str = "telemetry.jsonl";
    pub const LOGS_DIR: &str = "logs";
}
