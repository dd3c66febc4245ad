//! `cargo xtask`: set up the toolchain, run the tests, benchmarks and demo.
//!
//! Kept free of the eBPF build (no dependency on the `tollgate` crate), so
//! `cargo xtask setup` works on a fresh machine before anything else does.

mod fuzz;
mod install;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Tollgate's build, test, bench and demo tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker built
    /// against the nightly's LLVM, bpffs, test tools. Idempotent.
    Setup {
        /// Also install the Debian packages the tests and benchmarks use.
        #[arg(long)]
        test_deps: bool,
    },
    /// Run every test: unit, kernel (BPF_PROG_TEST_RUN) and end-to-end
    /// (veth namespaces). Needs root.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: `xdp` (block/allow datapath) and `ratelimit` (the limiter),
    /// in the kernel and on the wire, against nftables; `ratelimit-wire`
    /// (the limiter on the wire only); `sampling` (the API
    /// sample pipeline and what sampling adds to the XDP program);
    /// `detect CORPUS` (requests/s per core through the default policy);
    /// `graphql` (GraphQL vs equivalent REST requests/s per core through the
    /// default policy; time to judge 1 MB hostile documents);
    /// `block-latency [TRIALS]` (offending request -> first dropped packet).
    /// `startup` (cold and warm start with 1,000,000 stored bans: time to
    /// enforcement, agent RSS). `capture [RATE]` (every request taken at the
    /// socket vs NIC sampling vs no sampling: requests/s, agent and machine
    /// CPU per request). `parity CORPUS [--attach tc]` (every request of a
    /// labelled corpus sent over real TCP, each from its own address,
    /// through an agent in monitor mode: per-category figures live and by
    /// `tollgate detect`, and every request where they disagree). `tls
    /// [RATE]` (nginx over HTTPS with the TLS probes off and on: p50/p99
    /// latency, agent CPU per request). `h2 [REQUESTS]` (h2load over long-lived
    /// h2c connections to 50 methods: the share decoded right from the start
    /// and when the agent joins busy connections, wrong ones, CPU per request).
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["xdp", "ratelimit", "ratelimit-wire", "sampling", "detect", "graphql", "block-latency", "startup", "capture", "parity", "tls", "fleet", "h2"])]
        which: String,
        /// Arguments passed to the benchmark binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Evaluate the default detection policy on a labelled corpus: recall per
    /// attack category and source, false positives on benign requests.
    ///
    /// The corpus is not part of the repository: give its path.
    ///
    /// Example: cargo xtask eval ../shared/corpus/dev.jsonl
    Eval {
        /// JSON Lines corpus (`id`, `source`, `label`, `category`, `raw`);
        /// a relative path is taken from the current directory, else from
        /// the repository root.
        corpus: std::path::PathBuf,
        /// Also list missed attacks and false positives.
        #[arg(long)]
        verbose: bool,
    },
    /// Fuzz the parsers of untrusted bytes (HTTP, flow reassembly, path
    /// templates) and the detection engine with libFuzzer; fails if a crash is found. Installs
    /// cargo-fuzz if missing; needs the nightly toolchain.
    ///
    /// Example: cargo xtask fuzz --seconds 300
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// A narrated lab: a sample API, a good client and an abusive one, the
    /// agent protecting the API, then a clean teardown. Needs root.
    Demo,
    /// Build the release binary and install it with the systemd unit, the
    /// default policy (never overwriting one) and /var/lib/tollgate. Idempotent.
    Install {
        /// Prefix for bin/tollgate and share/doc/tollgate.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Print what would be done; build and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stage every file under this directory instead of / (packaging).
        #[arg(long, value_name = "DIR")]
        destdir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup { test_deps } => setup::run(test_deps),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { which, args } => bench(&which, &args),
        Cmd::Eval { corpus, verbose } => eval(&corpus, verbose),
        Cmd::Fuzz { seconds } => fuzz::run_all(seconds),
        Cmd::Demo => demo(),
        Cmd::Install {
            prefix,
            dry_run,
            destdir,
        } => install::run(&install::Options {
            prefix,
            dry_run,
            destdir,
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, inheriting stdio; fails on a non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("failed to start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} needs root: it loads eBPF programs and creates network namespaces");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn test(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    require_root("cargo xtask test")?;
    setup::ensure_ready("cargo xtask test", true)?;
    // The end-to-end tests drive the real binary.
    run(cargo().args(["build", "-p", "tollgate"]))?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "tollgate-ebpf",
        "--no-fail-fast",
    ]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    // Stream the output and total the per-binary results, so the run ends
    // with one line that says what ran.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut w = part.split_whitespace().rev();
                    let (Some(what), Some(n)) = (w.next(), w.next()) else {
                        continue;
                    };
                    let n: u64 = n
                        .trim_start_matches("ok.")
                        .trim_start_matches("FAILED.")
                        .parse()
                        .unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tollgate: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    // Last, a short fuzzing run of the parsers of untrusted bytes; the
    // totals are repeated so the run still ends with them.
    fuzz::run_all(30)?;
    println!("fuzz: no crash in 30 s per target");
    println!("tollgate: {passed} passed, {failed} failed, {ignored} skipped");
    Ok(())
}

fn bench(which: &str, args: &[String]) -> anyhow::Result<()> {
    // The detection benchmark is pure userspace; the others load eBPF.
    let pure = matches!(which, "detect" | "graphql");
    if !pure {
        require_root("cargo xtask bench")?;
    }
    setup::ensure_ready("cargo xtask bench", !pure)?;
    // Benchmarks that run the agent use the release binary next to them.
    run(cargo().args(["build", "--release", "-p", "tollgate"]))?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "tollgate-tests",
            "--features",
            "bench",
            "--bin",
            "tollgate-bench",
            "--",
        ])
        .arg(which)
        .args(args)
        .env("TOLLGATE_BIN", release_dir().join("tollgate")))
}

/// `release` of the build's target directory (`CARGO_TARGET_DIR` when set,
/// as the cargo this runs does; else the workspace's `target`).
fn release_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return std::path::PathBuf::from(dir).join("release");
    }
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    std::path::Path::new(&root).join("../target/release")
}

fn eval(corpus: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    // `cargo xtask` keeps the caller's directory; the README's commands are
    // run from the repository root, so that is the second place to look.
    let root = std::env::var("CARGO_MANIFEST_DIR").map_or_else(
        |_| std::path::PathBuf::from("."),
        |d| std::path::PathBuf::from(d).join(".."),
    );
    let path = if corpus.exists() || corpus.is_absolute() {
        corpus.to_owned()
    } else {
        root.join(corpus)
    };
    if !path.is_file() {
        bail!(
            "corpus {} not found (looked in the current directory and the repository root): \
             give the path to a JSON Lines corpus with `id`, `source`, `label`, `category`, `raw`",
            corpus.display()
        );
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "tollgate-detect",
        "--example",
        "eval",
        "--",
    ])
    .arg(&path);
    if verbose {
        cmd.args(["--missed", "--fp"]);
    }
    run(&mut cmd)
}

fn demo() -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    setup::ensure_ready("cargo xtask demo", false)?;
    run(cargo().args(["build", "--release", "-p", "tollgate"]))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tollgate-tests",
        "--bin",
        "tollgate-demo",
    ]))?;
    let target = release_dir();
    run(Command::new(target.join("tollgate-demo")).env("TOLLGATE_BIN", target.join("tollgate")))
}
