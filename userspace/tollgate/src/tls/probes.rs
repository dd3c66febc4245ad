//! Loading and attaching the TLS programs: the system-call tracepoints once,
//! the uprobes once per library file.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{TracePoint, UProbe, uprobe::UProbeScope},
};
use tollgate_common::programs;

/// The probed functions and the entry program of each. `SSL_read` and
/// `SSL_write` exist in every OpenSSL; the `_ex` forms since 1.1.1 (and
/// OpenSSL 3's users, Python's `ssl` and curl among them, call only those).
const FUNCTIONS: [(&str, &str); 4] = [
    ("SSL_read", programs::TLS_READ),
    ("SSL_read_ex", programs::TLS_READ_EX),
    ("SSL_write", programs::TLS_WRITE),
    ("SSL_write_ex", programs::TLS_WRITE_EX),
];

/// System calls through which OpenSSL's socket BIO reads and writes: inside
/// a TLS call, they name the connection's descriptor.
const FD_SYSCALLS: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_readv",
    "sys_enter_recvfrom",
    "sys_enter_recvmsg",
    "sys_enter_write",
    "sys_enter_writev",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
];

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs where the kernel expects it, when it is not there (fresh
/// hosts and containers): tracepoints are attached through it.
///
/// # Errors
/// When it is absent and cannot be mounted.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("failed to mount tracefs at {TRACEFS}"))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut UProbe>::try_from(p).ok())
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut TracePoint> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Loads the programs and attaches the tracepoints.
///
/// # Errors
/// When the kernel refuses a program or a tracepoint.
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    ensure_tracefs()?;
    for (_, name) in FUNCTIONS {
        uprobe(ebpf, name)?
            .load()
            .with_context(|| format!("failed to load {name}"))?;
    }
    uprobe(ebpf, programs::TLS_RETURN)?
        .load()
        .with_context(|| format!("failed to load {}", programs::TLS_RETURN))?;
    for (name, events) in [
        (programs::TLS_FD, &FD_SYSCALLS[..]),
        (programs::TLS_CLOSE, &["sys_enter_close"][..]),
        (programs::TLS_DUP, &["sys_enter_dup3"][..]),
        (
            programs::TLS_ACCEPT,
            &["sys_exit_accept", "sys_exit_accept4"][..],
        ),
    ] {
        let tp = tracepoint(ebpf, name)?;
        tp.load()
            .with_context(|| format!("failed to load {name}"))?;
        for ev in events {
            tp.attach("syscalls", ev)
                .with_context(|| format!("failed to attach {name} to syscalls/{ev}"))?;
        }
    }
    // Not on every architecture (arm64 has only dup3).
    if [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| Path::new(t).join("events/syscalls/sys_enter_dup2").exists())
    {
        tracepoint(ebpf, programs::TLS_DUP)?
            .attach("syscalls", "sys_enter_dup2")
            .context("failed to attach the dup program to syscalls/sys_enter_dup2")?;
    }
    Ok(())
}

/// Attaches the uprobes to one library file (reached through a process's
/// root); returns the functions probed. No process filter: every process
/// mapping the file is covered, those started later included.
///
/// # Errors
/// When the file has none of the functions (stripped, or not OpenSSL).
pub fn attach_library(ebpf: &mut Ebpf, path: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut done = Vec::new();
    let mut last_err = None;
    for (func, name) in FUNCTIONS {
        let entry = uprobe(ebpf, name)?.attach(func, path, UProbeScope::AllProcesses);
        match entry {
            Ok(_) => {}
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        }
        uprobe(ebpf, programs::TLS_RETURN)?
            .attach(func, path, UProbeScope::AllProcesses)
            .with_context(|| format!("failed to attach the return probe to {func}"))?;
        done.push(func);
    }
    if done.is_empty() {
        bail!(
            "none of {} found in {} ({})",
            FUNCTIONS.map(|f| f.0).join(", "),
            path.display(),
            last_err.map_or_else(String::new, |e| e.to_string())
        );
    }
    Ok(done)
}
