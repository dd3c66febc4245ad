//! The `tollgate` binary: agent and CLI. All logic lives in the library.
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tollgate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    // Under --json every error is a JSON object on stderr, bad usage included.
    let json = std::env::args_os().any(|a| a == "--json");
    tollgate::cli::set_json_errors(json);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json && e.use_stderr() => {
            let msg = e.kind().as_str().map_or_else(
                || e.to_string().trim().to_owned(),
                |k| format!("{k}: {}", e.to_string().trim()),
            );
            return tollgate::cli::fail(msg, 2);
        }
        Err(e) => e.exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match &cli.command {
        Command::Agent(a) if a.log_format == LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        _ => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // The first timing point of a CLI command (see the library's `timing!`).
    tracing::debug!(target: "tollgate::timing", us = tollgate::clock::boot_ns() / 1000, "cli_main");
    tollgate::cli::run(cli)
}
