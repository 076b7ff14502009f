//! The `report` binary: parses the command line and calls the library (see `lib.rs`).

use clap::{Parser, Subcommand};
use report::site::{self, BuildOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "report",
    version,
    about = "Builds the turnbench static site from sweep results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the site: index, one page per GPU, the viewer, CSV data, assets.
    Build {
        /// Run directories, `runner pack` bundles (.tar.gz), the seed's per_turn_metrics_*.jsonl /
        /// per_turn_summary_*.json files, or folders holding them. Default: every run under results/.
        inputs: Vec<PathBuf>,
        /// Where the site goes; a previous site there is replaced, any other non-empty folder is refused.
        #[arg(long, default_value = "site")]
        out: PathBuf,
        /// Also write a reproducible tar.gz of the site (same inputs → same bytes).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Title shown on every page.
        #[arg(long, default_value = report::pages::DEFAULT_TITLE)]
        title: String,
        /// Write each page's context as JSON next to it (for debugging templates).
        #[arg(long, hide = true)]
        dump_contexts: bool,
        /// Print stage timings and peak RSS (used by `report bench`).
        #[arg(long, hide = true)]
        stats: bool,
    },
    /// Write a synthetic (simulated) run directory for demos and tests.
    #[command(hide = true)]
    GenFixture {
        /// Folder to create the run in.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "fixture-run")]
        run_id: String,
        /// About this many turn records (default: a small 2-GPU run).
        #[arg(long)]
        records: Option<u64>,
        /// Put script-injection strings into the model name and dataset.
        #[arg(long)]
        hostile: bool,
    },
    /// Benchmark: generate N records and time `report build` on them.
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Keep the generated run and site here (default: a temporary folder).
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            inputs,
            out,
            archive,
            title,
            dump_contexts,
            stats,
        } => {
            let started = std::time::Instant::now();
            let report = site::build(&BuildOptions {
                inputs,
                out: out.clone(),
                archive,
                title,
                dump_contexts,
                csv_part_rows: report::data::TURNS_CSV_PART_ROWS,
            })?;
            for s in &report.skipped {
                eprintln!("report: skipped {}: {}", s.source, s.reason);
            }
            println!(
                "report: {} run(s), {} records → {} ({} pages, {:.1} MB)",
                report.runs,
                report.records,
                out.display(),
                report.pages.len(),
                report.site_bytes as f64 / 1e6
            );
            if stats {
                let stages: Vec<String> = report
                    .timings
                    .iter()
                    .map(|(n, t, cpu, rss)| {
                        format!(
                            "{n} {t:.2} s wall / {cpu:.2} s CPU (peak RSS {:.0} MB)",
                            *rss as f64 / 1e6
                        )
                    })
                    .collect();
                println!("stages: {}", stages.join("; "));
                println!(
                    "build: wall {:.2} s, CPU {:.2} s, peak RSS {:.0} MB (VmHWM), site {:.1} MB",
                    started.elapsed().as_secs_f64(),
                    report::bench::cpu_seconds().unwrap_or(0.0),
                    report::bench::peak_rss_bytes().unwrap_or(0) as f64 / 1e6,
                    report.site_bytes as f64 / 1e6
                );
            }
            Ok(())
        }
        Command::GenFixture {
            out,
            run_id,
            records,
            hostile,
        } => {
            let mut spec = match records {
                Some(n) => report::fixture::FixtureSpec::with_records(&run_id, n),
                None => report::fixture::FixtureSpec::small(&run_id),
            };
            spec.hostile = hostile;
            let dir = report::fixture::write_run(&out, &run_id, &spec)?;
            println!(
                "report: wrote {} records to {}",
                spec.record_count(),
                dir.display()
            );
            Ok(())
        }
        Command::Bench { records, keep } => {
            let tmp;
            let work = match keep {
                Some(dir) => dir,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            report::bench::run(records, &work)
        }
    }
}
