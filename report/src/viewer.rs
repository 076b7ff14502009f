//! The wasm viewer's page (`viewer.html`) and its data; owned by the viewer work.
//!
//! Stub: writes nothing yet. The report pipeline calls [`write`] once per build.

use std::path::Path;

use turnbench_schema::TurnRecord;

/// The per-turn records of one run, as handed to the viewer.
pub struct RunRecords<'a> {
    pub run_id: &'a str,
    pub simulated: bool,
    pub records: &'a [TurnRecord],
}

/// Writes `viewer.html` and its data files into `site_dir`.
pub fn write(site_dir: &Path, runs: &[RunRecords<'_>]) -> anyhow::Result<()> {
    let _ = (site_dir, runs);
    Ok(())
}
