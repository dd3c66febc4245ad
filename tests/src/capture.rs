//! `cargo xtask bench capture`: what taking every request at the socket
//! costs, against sampling packets at the NIC and against no API sampling at
//! all, in the same run on the same lab.
//!
//! Per configuration: an agent on a fresh lab, a real HTTP server, and
//! `CONNS` keep-alive connections from the client namespace sending small
//! GET requests back to back for `SECONDS`. Reported: requests/s the
//! clients got through, the agent's CPU (user + system, from /proc), the
//! machine's total busy CPU (softirq included: the stream verdict program
//! runs there), and both per request; requests the agent parsed; samples
//! lost in the kernel.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{Agent, Lab, http::HttpServer};

const CONNS: usize = 8;
const SECONDS: u64 = 5;

pub(crate) fn ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn proc_cpu(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat; `after` starts at field 3.
    num(11) + num(12)
}

/// Busy ticks of the whole machine (everything but idle and iowait).
pub(crate) fn busy() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

struct Row {
    name: &'static str,
    requests: u64,
    secs: f64,
    agent_ticks: u64,
    busy_ticks: u64,
    parsed: u64,
    lost: u64,
}

fn run_one(name: &'static str, policy: Option<&str>, api: bool, rate: Option<u64>) -> Row {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1)]);
    let port = server.port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = Vec::new();
    if api {
        args.extend(["--api-port".into(), port.clone()]);
    }
    if let Some(p) = policy {
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, p).unwrap();
        args.extend(["--config".into(), path.display().to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&lab.host_if, &argv);
    let pid = agent.pid().map_or(0, |p| p.as_raw().unsigned_abs());
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);
    let src = lab.v4(0, 2);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, busy0, t0) = (proc_cpu(pid), busy(), Instant::now());
    let workers: Vec<_> = (0..CONNS)
        .map(|i| {
            let (count, stop) = (count.clone(), stop.clone());
            let ns = format!("/run/netns/{}", lab.ns);
            thread::spawn(move || {
                let f = std::fs::File::open(ns).unwrap();
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let sock =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .unwrap();
                sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
                sock.connect_timeout(&dst.into(), Duration::from_secs(3))
                    .unwrap();
                let mut s: TcpStream = sock.into();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 4096];
                let mut n = 0u64;
                // Paced: each connection sends its share of `rate`.
                let every = rate.map(|r| Duration::from_secs_f64(CONNS as f64 / r.max(1) as f64));
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(every) = every {
                        let due = every.mul_f64(n as f64);
                        let now = start.elapsed();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    }
                    let req = format!(
                        "GET /api/v1/items/{} HTTP/1.1\r\nHost: api.test\r\nUser-Agent: bench\r\nAccept: application/json\r\n\r\n",
                        n * CONNS as u64 + i as u64
                    );
                    if s.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    // One response (the server answers with Content-Length).
                    let mut got = Vec::new();
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                        if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if got.len() >= h + 4 + len {
                                break;
                            }
                        }
                    }
                    n += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, busy1) = (proc_cpu(pid), busy());
    // Let the agent finish what is queued before reading its counters.
    thread::sleep(Duration::from_millis(500));
    let st = agent.json(&["status"]);
    Row {
        name,
        requests: count.load(Ordering::Relaxed),
        secs,
        agent_ticks: cpu1.saturating_sub(cpu0),
        busy_ticks: busy1.saturating_sub(busy0),
        parsed: st["sampling"]["flows"]["requests"].as_u64().unwrap_or(0),
        lost: st["samples_kernel"]["lost"].as_u64().unwrap_or(0),
    }
}

/// Runs the three configurations and prints a table; `rate`: requests per
/// second over all connections (else back to back).
pub fn run(rate: Option<u64>) {
    crate::require_root();
    println!("# cargo xtask bench capture\n");
    let pace = rate.map_or_else(
        || "back to back".to_owned(),
        |r| format!("at {r} requests/s in all"),
    );
    println!(
        "{CONNS} keep-alive connections, small GET requests {pace} for {SECONDS} s per configuration; one lab each.\n"
    );
    let rows = [
        run_one("no API port (floor)", None, false, rate),
        run_one(
            "NIC sampling (first 4 packets, then 1 in 10)",
            Some("sampling: {stream: false}\n"),
            true,
            rate,
        ),
        run_one("every request at the socket (default)", None, true, rate),
    ];
    let hz = ticks() as f64;
    println!(
        "| configuration | requests/s | agent CPU | agent µs/request | machine busy µs/request | requests parsed | samples lost |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for r in &rows {
        let rps = r.requests as f64 / r.secs;
        let agent_s = r.agent_ticks as f64 / hz;
        let busy_s = r.busy_ticks as f64 / hz;
        let per = |s: f64| s * 1e6 / (r.requests.max(1) as f64);
        println!(
            "| {} | {:.0} | {:.1} % | {:.1} | {:.1} | {} of {} | {} |",
            r.name,
            rps,
            agent_s / r.secs * 100.0,
            per(agent_s),
            per(busy_s),
            r.parsed,
            r.requests,
            r.lost
        );
    }
    let floor = &rows[0];
    let base = floor.busy_ticks as f64 / floor.requests.max(1) as f64;
    for r in &rows[1..] {
        let x = r.busy_ticks as f64 / r.requests.max(1) as f64;
        println!(
            "\n{}: machine CPU per request {:.2}x the floor",
            r.name,
            x / base.max(f64::MIN_POSITIVE)
        );
    }
}
