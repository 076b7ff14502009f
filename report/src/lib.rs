//! `report`: turns sweep results into a static site that works from `file://` and on GitHub
//! Pages. The pipeline is pure until the last step: load → aggregate → page contexts → templates.
//!
//! Modules:
//! - [`load`]: run directories, `runner pack` bundles (read in place, unsafe paths rejected) and
//!   legacy seed files; a bad input is skipped with its reason.
//! - [`legacy`]: the seed's `per_turn_metrics_*.jsonl` / `per_turn_summary_*.json`, leniently.
//! - [`aggregate`]: one pass per cell into the numbers the pages show (bounded in size).
//! - [`charts`]: plotly figure specs as data.
//! - [`pages`]: page contexts (preformatted) and the askama templates that render them.
//! - [`assets`]: embedded, content-hashed plotly.js, CSS and chart script.
//! - [`data`]: `data/turns.csv` (split into `data/turns-NNN.csv` parts past 250,000 rows) and `data/summary.csv`.
//! - [`archive`]: reproducible `.tar.gz` of the site.
//! - [`site`]: the `report build` orchestration.
//! - [`viewer`]: the wasm viewer's page (`viewer.html`).
//! - [`fixture`]: synthetic results for tests, demos and the benchmark.
//! - [`bench`]: the 1M-record benchmark.

pub mod aggregate;
pub mod archive;
pub mod assets;
pub mod bench;
pub mod charts;
pub mod data;
pub mod fixture;
pub mod legacy;
pub mod load;
pub mod pages;
pub mod site;
pub mod viewer;
