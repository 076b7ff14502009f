//! The wasm viewer's page (`viewer.html`), its data and its code.
//!
//! Everything loads from classic `<script>` tags so the page works from `file://` and
//! unchanged on GitHub Pages:
//! - `data/viewer-meta.js`: the table's description and dictionaries (JSON in a string).
//! - `data/viewer-<column>-<chunk>.js`: one chunk of one column, base64 of its little-endian
//!   values (the encoding is `viewer_wasm::table`'s, so writer and reader are one crate).
//! - `assets/viewer-wasm.<hash>.js`: wasm-bindgen's no-modules glue plus the wasm bytes in
//!   base64 (built by `build.rs`), started synchronously from memory.
//! - `assets/viewer.<hash>.js` / `.css`: the page's controls, table, chart and CSV.

use crate::pages::{Layout, VIEWER_HREF};
use anyhow::Context as _;
use askama::Template;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::Path;
use turnbench_schema::TurnRecord;
use viewer_wasm::{Field, RunSource, Table};

/// The per-turn records of one run, as handed to the viewer.
pub struct RunRecords<'a> {
    pub run_id: &'a str,
    pub simulated: bool,
    /// A simulated engine without cost (`--sim-time-scale inf`): the run's times are the
    /// harness's own, which the viewer says as every page does.
    pub zero_cost: bool,
    /// What limits comparing the run's cells, as its GPU pages say it (e.g. prompts that differ
    /// between cells): said above the controls too.
    pub caveats: Vec<String>,
    pub records: &'a [TurnRecord],
}

/// wasm-bindgen's `--target no-modules` glue for the viewer (from `build.rs`).
const GLUE_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/viewer_wasm.js"));
/// The viewer's WebAssembly (from `build.rs`).
pub const WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/viewer_wasm_bg.wasm"));
const UI_JS: &str = include_str!("../assets/viewer/viewer.js");
const UI_CSS: &str = include_str!("../assets/viewer/viewer.css");

#[derive(Template)]
#[template(path = "viewer.html")]
struct ViewerTemplate<'a> {
    layout: &'a Layout,
    page: &'a ViewerPage,
}

/// What `viewer.html` links to.
struct ViewerPage {
    /// Said above the controls, escaped (a run id is any text).
    warnings: Vec<String>,
    rows: u64,
    runs: usize,
    /// Where the site has several runs, the one a link without a view opens on: the first
    /// with an engine cost (pooling runs pools their workloads and GPUs' settings).
    landing_run: Option<String>,
    data_scripts: Vec<String>,
    wasm_js: String,
    ui_js: String,
    ui_css: String,
}

/// Writes `viewer.html`, its data (`data/viewer-*.js`) and code (`assets/viewer*`) into
/// `site_dir`, with a navigation of its own (overview and viewer).
pub fn write(site_dir: &Path, runs: &[RunRecords<'_>]) -> anyhow::Result<()> {
    let simulated = runs.iter().any(|r| r.simulated);
    let layout = Layout::new("turnbench", "Viewer", &[], VIEWER_HREF, simulated, false);
    write_with_layout(site_dir, &layout, runs)
}

/// [`write`] with the site's own layout (title, navigation to every GPU page).
pub fn write_with_layout(
    site_dir: &Path,
    layout: &Layout,
    runs: &[RunRecords<'_>],
) -> anyhow::Result<()> {
    let sources: Vec<RunSource<'_>> = runs
        .iter()
        .map(|r| RunSource {
            run_id: r.run_id,
            simulated: r.simulated,
            records: r.records,
        })
        .collect();
    let table = Table::from_runs(&sources).context("building the viewer's table")?;
    let data_scripts = write_data(site_dir, &table)?;

    let assets = site_dir.join("assets");
    create_dir(&assets)?;
    let wasm_b64 = base64::engine::general_purpose::STANDARD.encode(WASM);
    let wasm_js = format!("{GLUE_JS}\nwindow.TURNBENCH_VIEWER_WASM = \"{wasm_b64}\";\n");
    let page = ViewerPage {
        warnings: runs
            .iter()
            .filter(|r| r.zero_cost)
            .map(|r| {
                format!(
                    "Run {}: no engine cost (--sim-time-scale inf): its times are the harness's \
                     own wall time (client, HTTP, simulator), not a GPU's; do not compare GPUs or \
                     cache modes with them.",
                    r.run_id
                )
            })
            .chain(runs.iter().flat_map(|r| {
                r.caveats
                    .iter()
                    .map(move |c| format!("Run {}: {c}", r.run_id))
            }))
            .collect(),
        rows: table.meta.rows,
        runs: table.meta.runs.len(),
        landing_run: (runs.len() > 1)
            .then(|| runs.iter().find(|r| !r.zero_cost).or(runs.first()))
            .flatten()
            .map(|r| r.run_id.to_string()),
        data_scripts,
        wasm_js: write_hashed(&assets, "viewer-wasm", "js", &wasm_js)?,
        ui_js: write_hashed(&assets, "viewer", "js", UI_JS)?,
        ui_css: write_hashed(&assets, "viewer", "css", UI_CSS)?,
    };
    let html = ViewerTemplate {
        layout,
        page: &page,
    }
    .render()
    .context("rendering viewer.html")?;
    write_file(&site_dir.join(VIEWER_HREF), html.as_bytes())
}

/// The table as classic scripts under `data/`; returns their relative URLs, meta first.
fn write_data(site_dir: &Path, table: &Table) -> anyhow::Result<Vec<String>> {
    let data = site_dir.join("data");
    create_dir(&data)?;
    let meta = serde_json::to_string(&table.meta)?;
    // A JS string literal holding the JSON; `<` escaped so no `</script>` can ever appear.
    let literal = serde_json::to_string(&meta)?.replace('<', "\\u003c");
    let mut scripts = vec!["data/viewer-meta.js".to_string()];
    write_file(
        &site_dir.join(&scripts[0]),
        format!("window.TURNBENCH_VIEWER_META = {literal};\n").as_bytes(),
    )?;
    for chunk in 0..table.meta.chunks() {
        for field in Field::ALL {
            let name = format!("data/viewer-{}-{chunk}.js", field.name());
            let js = format!(
                "(window.TURNBENCH_VIEWER_CHUNKS = window.TURNBENCH_VIEWER_CHUNKS || []).push([\"{}\", {chunk}, \"{}\"]);\n",
                field.name(),
                table.encode_chunk(field, chunk)
            );
            write_file(&site_dir.join(&name), js.as_bytes())?;
            scripts.push(name);
        }
    }
    Ok(scripts)
}

/// Writes `assets/<stem>.<hash>.<ext>`; returns its URL relative to the site root.
fn write_hashed(assets: &Path, stem: &str, ext: &str, text: &str) -> anyhow::Result<String> {
    let digest = Sha256::digest(text.as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let name = format!("{stem}.{hash}.{ext}");
    write_file(&assets.join(&name), text.as_bytes())?;
    Ok(format!("assets/{name}"))
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
