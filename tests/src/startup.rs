//! `cargo xtask bench startup`: time from starting the agent to full
//! enforcement with 1,000,000 stored bans, and the agent's memory then.
//!
//! The store is filled through the agent (`block import` of a generated
//! 1,000,000-line list: the 65,536 hosts of 198.19.0.0/16, the lab client,
//! and IPv6 hosts of fd00:7467:ffff::/48; map data only, the one address
//! that sends traffic is the lab client). Then, twice:
//!
//! - **cold** (as after a reboot): the agent is killed, its pin directory
//!   removed (programs detach, maps are freed), and a fresh agent restores
//!   everything from the store;
//! - **warm** (after a crash): the agent is killed, pins kept, and a new
//!   agent takes the pinned maps and links over.
//!
//! Reported: time until the agent answers `status` (it binds its socket
//! only after restoring and attaching) and its CPU time then (what a busy
//! machine does not inflate), the maps' fill then, whether the
//! banned client's TCP connection is dropped and an unbanned one passes, the
//! agent's VmRSS/VmHWM, and the phases from the agent's own log.

use std::{fmt::Write as _, time::Duration};

use crate::{Agent, Lab, Server, eventually, proc_kb};

const N: usize = 1_000_000;

fn list(lab: &Lab) -> String {
    let mut t = String::with_capacity(N * 26);
    t.push_str("# tollgate startup benchmark\n");
    let client = lab.v4(0, 2).to_string();
    let _ = writeln!(t, "{client}");
    let mut n = 1;
    for i in 0..65_536u32 {
        let _ = writeln!(t, "198.19.{}.{}", i >> 8, i & 0xff);
        n += 1;
    }
    let mut i = 0u64;
    while n < N {
        i += 1;
        let _ = writeln!(
            t,
            "fd00:7467:ffff:{:x}:{:x}::1",
            (i >> 16) & 0xffff,
            i & 0xffff
        );
        n += 1;
    }
    t
}

/// The process's user + system CPU time so far, in seconds.
fn cpu_secs(pid: nix::unistd::Pid) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1);
    ticks as f64 / hz as f64
}

/// Agent log lines about restoring, for the phases.
fn phases(agent: &Agent, from: usize) -> String {
    agent.log_text()[from..]
        .lines()
        .filter(|l| {
            [
                "starting",
                "pinned maps read",
                "maps ready",
                "programs verified",
                "programs ready",
                "datapath loaded",
                "reconcile timings",
                "state restored",
                "attached",
                "control socket ready",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .map(|l| format!("    {l}\n"))
        .collect()
}

fn measure(label: &str, agent: &mut Agent, server: &Server, lab: &Lab) {
    let from = agent.log_text().len();
    let up = agent.spawn_within(Duration::from_secs(300));
    // CPU time is what a busy machine does not inflate.
    let cpu = cpu_secs(agent.pid().unwrap());
    let fill = crate::kernel_bans(agent);
    let dropped = !lab.tcp_ok(
        lab.v4(0, 2),
        lab.v4(0, 1),
        server.port,
        Duration::from_millis(700),
    );
    let passes = eventually(Duration::from_secs(3), || {
        lab.tcp_ok(
            lab.v4(1, 2),
            lab.v4(1, 1),
            server.port,
            Duration::from_millis(700),
        )
    });
    let pid = agent.pid().unwrap();
    println!(
        "{label}: answering after {up:.2?} ({cpu:.2} s of CPU); kernel maps hold {fill} bans; banned client dropped: \
         {dropped}; unbanned client passes: {passes}; VmRSS {} MiB, VmHWM {} MiB",
        proc_kb(pid, "VmRSS") / 1024,
        proc_kb(pid, "VmHWM") / 1024
    );
    print!("{}", phases(agent, from));
    assert!(fill as usize >= N, "{label}: only {fill} bans in the maps");
    assert!(dropped && passes, "{label}: enforcement wrong");
}

/// Runs the benchmark and prints the figures.
pub fn run() {
    // SAFETY: set before any thread is started; the agents inherit it and
    // log their restore phases.
    unsafe { std::env::set_var("TOLLGATE_LOG", "info,tollgate::agent::state=debug") };
    let lab = Lab::new();
    let server = Server::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let mut agent = Agent::start(&lab.host_if, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("startup.txt");
    std::fs::write(&path, list(&lab)).unwrap();
    let t = std::time::Instant::now();
    let out = agent.ok(&[
        "block",
        "import",
        path.to_str().unwrap(),
        "--origin",
        "bench",
    ]);
    println!(
        "filled the store: {N} bans imported in {:.2?} ({})",
        t.elapsed(),
        out.trim()
    );
    let st = std::fs::metadata(agent.state.join(tollgate::store::RedbStore::FILE)).map(|m| m.len());
    if let Ok(bytes) = st {
        println!("store size: {} MiB", bytes >> 20);
    }

    // Cold: nothing in the kernel, everything from the store.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_dir_all(&agent.pins).unwrap();
    let attached = || crate::sh(&["ip", "link", "show", "dev", &lab.host_if]).contains("prog/xdp");
    assert!(
        eventually(Duration::from_secs(10), || !attached()),
        "program still attached after its pins were removed"
    );
    measure("cold start (reboot)", &mut agent, &server, &lab);

    // Warm: pinned maps and links kept.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    measure("warm start (crash, pins kept)", &mut agent, &server, &lab);
}
