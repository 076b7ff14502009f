//! `runner`: thin entry point. Sets up logging, parses the command line, calls the library,
//! and maps errors to an exit code with the whole error chain printed.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "runner", version, about = "Multi-turn agent rollout benchmarks for SGLang")]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ServeSim { args } => runner::sim::cli::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
