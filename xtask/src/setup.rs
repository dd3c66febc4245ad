//! `cargo xtask setup`: make a fresh machine able to build and test Tollgate.
//! Every step checks first and says what it did, skipped, or why it failed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run as sh;

/// bpf-linker release known to work with the nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn ok(msg: impl AsRef<str>) {
    println!("  ok    {}", msg.as_ref());
}

fn did(msg: impl AsRef<str>) {
    println!("  done  {}", msg.as_ref());
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn steps(test_deps: bool) -> anyhow::Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    bpffs();
    protoc()?;
    tracefs();
    if test_deps {
        nightly_clippy()?;
        debian_packages()?;
        grpcio()?;
        graphql_core()?;
        crowdsec()?;
        kubernetes_validate()?;
    }
    Ok(())
}

pub fn run(test_deps: bool) -> anyhow::Result<()> {
    println!("tollgate setup:");
    steps(test_deps)?;
    println!("ready: `cargo build --release` now produces target/release/tollgate");
    Ok(())
}

/// Whether the eBPF toolchain pieces are present.
fn toolchain_ready() -> bool {
    output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some()
        && linker_version().is_some()
        && rust_src_present()
}

/// What `cargo xtask test`, `bench` and `demo` need, installed when missing:
/// the eBPF toolchain (and with `test_deps`, the tools the tests drive). Runs
/// the setup steps, which check before they change anything, so a ready
/// machine only sees their "ok" lines.
pub fn ensure_ready(what: &str, test_deps: bool) -> anyhow::Result<()> {
    if toolchain_ready() && !test_deps {
        return Ok(());
    }
    println!("{what}: checking what this machine lacks (`cargo xtask setup`):");
    steps(test_deps)
        .with_context(|| format!("{what} needs the eBPF toolchain: `cargo xtask setup` failed"))?;
    if !toolchain_ready() {
        bail!("the eBPF toolchain is still incomplete after `cargo xtask setup`");
    }
    Ok(())
}

/// bpf-linker links against the nightly's libLLVM, which is only on the
/// library path under `rustup run nightly` (as aya-build runs it).
fn linker_version() -> Option<String> {
    output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
}

fn nightly() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        ok(format!("nightly toolchain: {v}"));
        return Ok(());
    }
    println!("  ..    installing the nightly toolchain (minimal profile)");
    sh(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("the eBPF programs need a nightly toolchain (for -Z build-std=core)")?;
    did("installed the nightly toolchain");
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("cannot find the nightly sysroot")
}

fn rust_src_present() -> bool {
    nightly_sysroot().is_ok_and(|s| s.join("lib/rustlib/src/rust/library/core").exists())
}

fn rust_src() -> anyhow::Result<()> {
    if rust_src_present() {
        ok("nightly rust-src (for -Z build-std=core on bpfel-unknown-none)");
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("failed to add rust-src to the nightly toolchain")?;
    did("added rust-src to the nightly toolchain");
    Ok(())
}

/// Clippy for the nightly: CI lints the eBPF crate on its own target
/// (bpfel-unknown-none), which only the nightly can build.
fn nightly_clippy() -> anyhow::Result<()> {
    if let Some(v) =
        output(Command::new("rustup").args(["run", "nightly", "cargo-clippy", "--version"]))
    {
        ok(format!("nightly clippy: {v}"));
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", "nightly"]))
        .context("failed to add clippy to the nightly toolchain")?;
    did("added clippy to the nightly toolchain");
    Ok(())
}

/// The nightly's own LLVM shared library, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`,
/// and its major version.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    let mut found = None;
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && let Some(major) = rest.split('.').next().and_then(|m| m.parse::<u32>().ok())
        {
            found = Some((lib.join(&name), major));
        }
    }
    found.with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let (llvm, major) = nightly_llvm(&sysroot)?;
    if let Some(v) = linker_version() {
        ok(format!("bpf-linker: {v} (nightly LLVM {major})"));
        return Ok(());
    }
    // bpf-linker's default build wants a system LLVM that Debian does not
    // ship in the right version; link it against the nightly's own LLVM.
    println!(
        "  ..    building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    );
    let prefix = std::env::temp_dir().join(format!("tollgate-llvm-prefix-{major}"));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    let link = libdir.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("failed to link {} -> {}", link.display(), llvm.display()))?;
    sh(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))
    .or_else(|_| {
        // --locked can fail when the lock file pins something yanked; retry without.
        sh(Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix))
    })
    .with_context(|| {
        format!(
            "failed to build bpf-linker against {} (LLVM {major}); this bpf-linker release may \
             not know LLVM {major} yet",
            llvm.display()
        )
    })?;
    did(format!(
        "installed bpf-linker {BPF_LINKER_VERSION} (LLVM {major})"
    ));
    Ok(())
}

fn bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    });
    if mounted {
        ok("bpffs mounted at /sys/fs/bpf");
        return;
    }
    match Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
    {
        Ok(s) if s.success() => did("mounted bpffs at /sys/fs/bpf"),
        _ => println!(
            "  skip  bpffs is not mounted at /sys/fs/bpf and mounting failed (not root?); \
             the agent mounts it itself when run as root"
        ),
    }
}

/// The TLS probes attach syscall tracepoints through tracefs, which a fresh
/// machine may not have mounted (the agent mounts it too when run as root).
fn tracefs() {
    if std::path::Path::new("/sys/kernel/tracing/events").exists() {
        ok("tracefs mounted at /sys/kernel/tracing");
        return;
    }
    match Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
    {
        Ok(s) if s.success() => did("mounted tracefs at /sys/kernel/tracing"),
        _ => println!(
            "  skip  tracefs is not mounted at /sys/kernel/tracing and mounting failed (not root?); \
             the agent mounts it itself when run as root"
        ),
    }
}

/// Debian packages the tests and benchmarks drive.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("nft", "nftables"),
    ("curl", "curl"),
    // `promtool check metrics` lints the agent's /metrics in tests/tests/ops.rs,
    // `promtool check rules` checks deploy/prometheus/ (tests/tests/dashboards.rs)
    // (about 19 MB; the Prometheus server it also carries is not started).
    ("promtool", "prometheus"),
    // A real load balancer in front of the test API (tests/tests/proxy.rs):
    // PROXY protocol v1/v2 and X-Forwarded-For.
    ("haproxy", "haproxy"),
    // Python's http.server is the lenient reference server of the evasion
    // tests (tests/tests/evasion.rs).
    ("python3", "python3"),
    // A real etcd for the fleet tests (tests/tests/fleet.rs start their own
    // members; the packaged service is not used).
    ("etcd", "etcd-server"),
    // An HTTPS server with a dynamically linked libssl (tests/tests/tls.rs),
    // and openssl to make its self-signed certificate.
    ("nginx", "nginx-light"),
    ("openssl", "openssl"),
    // scapy crafts the raw-packet TCP games of tests/tests/rawtcp.rs (run
    // with Debian's /usr/bin/python3, which this package installs for).
    ("scapy", "python3-scapy"),
    // Real attack tools and a load generator against the lab API of
    // tests/tests/tools.rs; dirb brings the wordlists gobuster is run with.
    ("sqlmap", "sqlmap"),
    ("gobuster", "gobuster"),
    ("dirb", "dirb"),
    ("wrk", "wrk"),
    // An h2c server and client (prior knowledge) for tests/tests/h2.rs.
    ("nghttpd", "nghttp2-server"),
    ("nghttp", "nghttp2-client"),
];

/// `apt-get update`, then installs `packages` without recommends.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    sh(Command::new("apt-get").arg("update").arg("-qq")).context("apt-get update failed")?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Where Debian's `libprotobuf-dev` puts protobuf's own definitions.
const PROTOBUF_INCLUDES: &str = "/usr/include/google/protobuf/descriptor.proto";

/// `protoc` (Debian's `protobuf-compiler`) and protobuf's own definitions
/// (`libprotobuf-dev`, only a recommendation of the compiler's package):
/// the etcd client crate compiles etcd's gRPC definitions, which import
/// them, when the agent is built.
fn protoc() -> anyhow::Result<()> {
    let have_protoc = output(Command::new("sh").args(["-c", "command -v protoc"])).is_some();
    let have_includes = std::path::Path::new(PROTOBUF_INCLUDES).exists();
    if have_protoc && have_includes {
        ok("protoc and protobuf's definitions (etcd client build)");
        return Ok(());
    }
    apt_install(&["protobuf-compiler", "libprotobuf-dev"])
        .context("failed to install protobuf-compiler and libprotobuf-dev")?;
    did("installed protobuf-compiler (protoc) and libprotobuf-dev");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(bin, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(bin, _)| *bin).collect();
        ok(format!("test tools ({})", names.join(", ")));
        return Ok(());
    }
    apt_install(&missing).context("failed to install test tools")?;
    did(format!("installed {}", missing.join(", ")));
    Ok(())
}

/// graphql-core 3 for Debian's python3, the real GraphQL server of
/// tests/tests/graphql.rs (tests/scripts/graphql_server.py needs its 3.x API,
/// `graphql_sync`; bookworm packages only 2.3, so it comes from PyPI).
fn graphql_core() -> anyhow::Result<()> {
    let has = || {
        output(Command::new("/usr/bin/python3").args(["-c", "from graphql import graphql_sync"]))
            .is_some()
    };
    if has() {
        ok("graphql-core 3 (GraphQL test)");
        return Ok(());
    }
    if output(Command::new("/usr/bin/python3").args(["-m", "pip", "--version"])).is_none() {
        apt_install(&["python3-pip"]).context("failed to install python3-pip")?;
    }
    sh(Command::new("/usr/bin/python3").args([
        "-m",
        "pip",
        "install",
        "-q",
        "--break-system-packages",
        "graphql-core>=3.2,<3.3",
    ]))
    .context("failed to install graphql-core 3 from PyPI")?;
    if !has() {
        anyhow::bail!("graphql-core installed but `from graphql import graphql_sync` fails");
    }
    did("installed graphql-core 3 (PyPI)");
    Ok(())
}

/// Python's `grpc` module for Debian's python3 (`python3-grpcio`): the gRPC
/// server and client of tests/tests/h2.rs. A module, no command to look for.
fn grpcio() -> anyhow::Result<()> {
    if output(Command::new("/usr/bin/python3").args(["-c", "import grpc"])).is_some() {
        ok("python3-grpcio (gRPC test)");
        return Ok(());
    }
    apt_install(&["python3-grpcio"]).context("failed to install python3-grpcio")?;
    did("installed python3-grpcio");
    Ok(())
}

/// CrowdSec (Debian's `crowdsec`, 1.4.6 on bookworm): tests/tests/crowdsec.rs
/// runs its own Local API from it. The package's post-install step registers
/// with the online Central API, which fails offline; a non-empty
/// `online_api_credentials.yaml` written beforehand is the package's own way
/// to skip that (see its postinst). The packaged service is disabled again
/// where systemd runs: the tests start and stop their own LAPI.
fn crowdsec() -> anyhow::Result<()> {
    if output(Command::new("sh").args(["-c", "command -v crowdsec && command -v cscli"])).is_some()
    {
        ok("crowdsec and cscli (CrowdSec bouncer test)");
        return Ok(());
    }
    let capi = std::path::Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if !capi.exists() {
        std::fs::create_dir_all("/etc/crowdsec").context("failed to create /etc/crowdsec")?;
        std::fs::write(
            capi,
            "# written by `cargo xtask setup`: no Central API registration (offline test host)\n",
        )
        .context("failed to write /etc/crowdsec/online_api_credentials.yaml")?;
    }
    apt_install(&["crowdsec"]).context("failed to install crowdsec")?;
    if std::path::Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "crowdsec"])
            .status();
    }
    did("installed crowdsec (its service is not used by the tests)");
    Ok(())
}

/// `kubernetes-validate` (PyPI): tests/deploy.rs checks the Kubernetes
/// manifests against the API schemas it ships, offline.
fn kubernetes_validate() -> anyhow::Result<()> {
    if output(Command::new("kubernetes-validate").arg("--version")).is_some() {
        ok("kubernetes-validate (offline Kubernetes schema checks)");
        return Ok(());
    }
    sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes-validate"]))
        .context("failed to install kubernetes-validate (needs python3 with pip)")?;
    did("installed kubernetes-validate");
    Ok(())
}
