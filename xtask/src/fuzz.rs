//! `cargo xtask fuzz`: libFuzzer over the parsers of untrusted bytes
//! (`fuzz/`, a crate outside the workspace built by cargo-fuzz with the
//! nightly toolchain and sanitizer flags).

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{cargo, run};

/// The fuzz targets, each run for the given time.
const TARGETS: &[&str] = &["http_flows", "detect"];

fn root() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| "xtask".into());
    PathBuf::from(manifest).join("..")
}

/// `cargo +nightly fuzz`, run from the repository root (cargo-fuzz finds
/// `fuzz/` there).
fn cargo_fuzz() -> Command {
    // The nightly comes from rustup's `cargo` proxy; a CARGO pointing at the
    // stable toolchain's own binary would ignore `+nightly`.
    let mut cmd = Command::new("cargo");
    cmd.env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg("+nightly")
        .arg("fuzz")
        .current_dir(root());
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let works = cargo_fuzz()
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        println!("xtask: installing cargo-fuzz");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Builds and runs every target for `seconds` each; fails if one crashes
/// (libFuzzer exits non-zero and leaves the input under `fuzz/artifacts/`).
pub fn run_all(seconds: u64) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let t = Instant::now();
    for target in TARGETS {
        run(cargo_fuzz().args(["build", "--release", target]))
            .with_context(|| format!("failed to build fuzz target {target}"))?;
    }
    println!(
        "xtask: fuzz targets built in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    for target in TARGETS {
        let corpus = format!("fuzz/corpus/{target}");
        std::fs::create_dir_all(root().join(&corpus))
            .with_context(|| format!("failed to create {corpus}"))?;
        let seeds = format!("fuzz/seeds/{target}");
        let res = run(cargo_fuzz()
            .args(["run", "--release", target, &corpus, &seeds, "--"])
            .arg(format!("-max_total_time={seconds}"))
            // Bounded memory is part of what is checked.
            .args(["-rss_limit_mb=1024", "-malloc_limit_mb=256", "-timeout=10"]));
        if res.is_err() {
            bail!(
                "fuzz target {target} found a crash: the input is under fuzz/artifacts/{target}/"
            );
        }
        println!("xtask: fuzz target {target}: no crash in {seconds}s");
    }
    Ok(())
}
