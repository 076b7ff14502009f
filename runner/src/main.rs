//! `runner`: thin entry point. Sets up logging, parses the command line, calls the library,
//! and maps errors to an exit code with the whole error chain printed.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the client allocates a few dozen small buffers per
/// streamed turn, and glibc's returned the top of its heap to the kernel between turns only to
/// fault it back in (bench/README.md has the figures).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Multi-turn agent rollout benchmarks for SGLang"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the simulated SGLang engine as an HTTP server. Takes the same flags as
    /// `python -m sglang.launch_server` (unknown SGLang flags are accepted with a warning),
    /// plus `--sim-*` flags. See `runner serve-sim --help`.
    #[command(disable_help_flag = true)]
    ServeSim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a sweep: GPUs × cache modes × concurrency over multi-turn trajectories, recording
    /// every turn into `results/<run-id>/`. With no flags, the demo plan on the simulated engine.
    #[command(args_override_self = true)]
    Sweep(Box<runner::sweep::SweepArgs>),
    /// Pack a run directory into a reproducible `.tar.gz` bundle.
    Pack {
        /// The run directory, e.g. `results/<run-id>`.
        dir: std::path::PathBuf,
        /// Output file (default `<run-id>.tar.gz` in the current directory).
        #[arg(short, long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ServeSim { args } => runner::sim::cli::main(args),
        Command::Sweep(args) => runner::sweep::main(*args),
        Command::Pack { dir, out } => runner::pack::pack(&dir, out.as_deref()).map(|p| {
            println!("{}", p.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
