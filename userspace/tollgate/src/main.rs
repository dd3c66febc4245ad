//! The `tollgate` binary: agent and CLI. All logic lives in the library.
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tollgate::cli::run(tollgate::cli::Cli::parse())
}
