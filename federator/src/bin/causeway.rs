//! `causeway`: the operator CLI. Thin: parse, set up tracing, run, report.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use causeway_federator::cli::{self, Cli};

fn main() -> ExitCode {
    // Usage errors exit with clap's code 2 and its message.
    let cli = Cli::parse();

    // Diagnostics go to stderr so that stdout stays the command's output.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("CAUSEWAY_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causeway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("causeway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
