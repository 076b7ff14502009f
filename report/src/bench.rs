//! `report bench`: N generated per-turn records → a complete site, timed in a child
//! `report build --stats` process so its peak RSS is the build's alone.

use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) this process used so far, in seconds (all threads).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub fn run(records: u64, work: &Path) -> anyhow::Result<()> {
    let spec = crate::fixture::FixtureSpec::with_records("bench-1m", records);
    let t = Instant::now();
    let run_dir = crate::fixture::write_run(work, "bench-run", &spec)?;
    let turns = std::fs::metadata(run_dir.join(turnbench_schema::files::TURNS))?.len();
    println!(
        "generated {} records ({:.1} MB turns.jsonl) in {:.2} s",
        spec.record_count(),
        turns as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let exe = std::env::current_exe().context("locating the report binary")?;
    let site = work.join("site");
    let t = Instant::now();
    let status = Command::new(exe)
        .arg("build")
        .arg(&run_dir)
        .arg("--out")
        .arg(&site)
        .arg("--stats")
        .status()
        .context("running report build")?;
    let wall = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("report build failed: {status}");
    }
    println!(
        "bench: {} records → site in {wall:.2} s wall (child process, including its start-up)",
        spec.record_count()
    );
    Ok(())
}
