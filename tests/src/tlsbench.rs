//! `cargo xtask bench tls [RATE] [CORPUS]`, three parts:
//!
//! (a) with a corpus (`../shared/corpus/dev.jsonl` when it exists): its
//! requests sent through nginx over HTTPS and over plain HTTP, each on its
//! own connection from its own address ([`crate::parity::live_to`]), and
//! the verdicts of the two runs compared. Plain HTTP is paced at the rate
//! the HTTPS side reached, so both are judged at the same load.
//!
//! (b) what the TLS probes cost, in one run on one lab: nginx serving HTTPS
//! (2 workers, proxying to a Python backend) under a paced load of
//! keep-alive HTTPS clients, with no agent, with the agent and its TLS
//! probes off, and with them on. Reported: requests, the clients' p50/p99
//! latency, the agent's CPU per request and the machine's busy CPU per
//! request, and what the probes captured.
//!
//! (c) how soon a server started after the agent is covered: nginx started
//! while the agent runs and selects only `nginx` (so its libssl is not
//! probed before), a request every 20 ms from when it listens; the time
//! from nginx's process start to the first request the agent judged.
//!
//! The clients are Python (`ssl`) processes in the lab namespace using their
//! own copy of libssl (another inode), and the agent selects only `nginx`
//! (`tls.include`): the clients' TLS calls are not probed, as a remote
//! client's would not be.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    Agent, Lab,
    capture::{busy, proc_cpu, ticks},
    tls::Nginx,
};

const CLIENTS: u32 = 4;
const SECONDS: u32 = 10;

const CLIENT: &str = r#"
import http.client, json, ssl, sys, time
host, port, rate, secs, tls = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
if tls:
    c = http.client.HTTPSConnection(host, port, context=ssl._create_unverified_context(), timeout=5)
else:
    c = http.client.HTTPConnection(host, port, timeout=5)
lat, n, every = [], 0, 1.0 / rate
start = time.monotonic()
while time.monotonic() - start < secs:
    due = start + n * every
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    t = time.perf_counter()
    c.request("GET", "/items/%d" % (n % 5 + 1), headers={"User-Agent": "bench"})
    c.getresponse().read()
    lat.append(int((time.perf_counter() - t) * 1e6))
    n += 1
print(json.dumps(lat))
"#;

struct Row {
    name: &'static str,
    latencies: Vec<u64>,
    agent_ticks: u64,
    busy_ticks: u64,
    tls: Option<serde_json::Value>,
    parsed: u64,
}

/// One configuration: `tls` None runs no agent; `plain` sends plain HTTP
/// (the agent's API port is then nginx's plain port).
fn run_one(
    name: &'static str,
    tls: Option<bool>,
    plain: bool,
    rate: u32,
    libdir: &std::path::Path,
) -> Row {
    let lab = Lab::new();
    let nginx = Nginx::start(&[lab.v4(0, 1)]);
    let port = if plain { nginx.plain_port } else { nginx.port }.to_string();
    let dir = tempfile::tempdir().unwrap();
    let agent = tls.map(|on| {
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, format!("tls: {{enabled: {on}, include: [nginx]}}\n")).unwrap();
        let a = Agent::start(
            &lab.host_if,
            &["--api-port", &port, "--config", path.to_str().unwrap()],
        );
        if on && !plain {
            let ok = crate::eventually(Duration::from_secs(5), || {
                a.json(&["status"])["tls"]["libraries"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty())
            });
            assert!(ok, "libssl not probed: {}", a.log_text());
        }
        a
    });
    let pid = agent
        .as_ref()
        .and_then(Agent::pid)
        .map_or(0, |p| p.as_raw().unsigned_abs());
    let per_client = f64::from(rate) / f64::from(CLIENTS);
    let (cpu0, busy0) = (proc_cpu(pid), busy());
    let children: Vec<_> = (0..CLIENTS)
        .map(|_| {
            Command::new("ip")
                .args(["netns", "exec", &lab.ns, "env"])
                .arg(format!("LD_LIBRARY_PATH={}", libdir.display()))
                .args(["python3", "-c", CLIENT, &lab.v4(0, 1).to_string(), &port])
                .arg(per_client.to_string())
                .arg(SECONDS.to_string())
                .arg(if plain { "0" } else { "1" })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut latencies = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let v: Vec<u64> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        latencies.extend(v);
    }
    let (cpu1, busy1) = (proc_cpu(pid), busy());
    std::thread::sleep(Duration::from_millis(1500));
    let st = agent.as_ref().map(|a| a.json(&["status"]));
    latencies.sort_unstable();
    Row {
        name,
        latencies,
        agent_ticks: cpu1.saturating_sub(cpu0),
        busy_ticks: busy1.saturating_sub(busy0),
        tls: st.as_ref().map(|s| s["tls"].clone()),
        parsed: st
            .as_ref()
            .and_then(|s| s["sampling"]["flows"]["requests"].as_u64())
            .unwrap_or(0),
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// (a): the corpus over HTTPS and over plain HTTP through one nginx.
fn parity(corpus: &std::path::Path) {
    use crate::parity;
    let cases = parity::load(corpus);
    let lab = Lab::new();
    let nginx = Nginx::start(&[lab.v4(0, 1)]);
    // The agent judges what nginx reads; nginx's own answers (400 for what
    // it cannot parse) are the same on both ports.
    let select = tempfile::tempdir().unwrap();
    let path = select.path().join("policy.yaml");
    std::fs::write(&path, "tls: {include: [nginx]}\n").unwrap();
    let extra = ["--config", path.to_str().unwrap()];
    // HTTPS first, as fast as its 16 senders go (handshakes bound it); then
    // plain HTTP paced at the rate HTTPS reached. Unpaced, plain HTTP goes
    // out several times faster, past what the agent judges per second, and
    // the ring buffer drops records: the comparison would measure capacity,
    // not verdicts. Each side's losses are printed below.
    let tls = parity::live_to(
        &lab,
        nginx.port,
        Some(&parity::tls_client()),
        &cases,
        &extra,
        16,
        None,
    );
    let rate = cases.len() as f64 / tls.send_secs.max(1e-3);
    let plain = parity::live_to(&lab, nginx.plain_port, None, &cases, &extra, 16, Some(rate));
    let d = parity::disagreements(&plain.verdicts, &tls.verdicts);
    let same = cases.len() - d.len();
    println!(
        "(a) parity: {} requests of {} through nginx, each on its own connection: HTTPS and plain HTTP \
         gave the same verdict for {same} ({:.2} %; goal >= 99 %); connections failed: {} plain, {} HTTPS; \
         TLS records judged {}, lost bytes {}",
        cases.len(),
        corpus.display(),
        100.0 * same as f64 / cases.len().max(1) as f64,
        plain.failed,
        tls.failed,
        tls.status["tls"]["records"],
        tls.status["tls"]["bytes_lost"],
    );
    println!("plain HTTP paced at the HTTPS side's rate: {rate:.0} requests/s");
    for (name, side) in [("plain HTTP", &plain), ("HTTPS", &tls)] {
        println!(
            "{name}: sent in {:.1} s; ring buffer records lost {} (requests in them not judged); \
             agent samples {}, flows {}",
            side.send_secs,
            side.status["samples_kernel"]["lost"],
            side.status["samples_kernel"],
            side.status["sampling"]["flows"]
        );
    }
    println!("\n(columns: \"offline\" is plain HTTP, \"live\" is HTTPS)");
    print!("{}", parity::report(&cases, &plain.verdicts, &tls, 20));
    println!();
}

/// (c): from nginx's start to the first request the agent judged.
fn first_capture() {
    let lab = Lab::new();
    let port = crate::tls::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "tls: {include: [nginx]}\n").unwrap();
    let agent = Agent::start(
        &lab.host_if,
        &[
            "--api-port",
            &port.to_string(),
            "--config",
            path.to_str().unwrap(),
        ],
    );
    let judged = |a: &Agent| a.json(&["status"])["tls"]["records"].as_u64().unwrap_or(0);
    assert_eq!(judged(&agent), 0);
    let nginx = Nginx::start_on(&[lab.v4(0, 1)], port);
    let started = nginx.spawned;
    let listening = started.elapsed();
    let url = format!("https://{}:{port}/hello", lab.v4(0, 1));
    // One request every 20 ms, each on a new connection, until one is judged
    // (at most 10 s).
    let mut first = None;
    while started.elapsed() < Duration::from_secs(10) {
        let sent = started.elapsed();
        let _ = crate::tls::curl(&lab, std::slice::from_ref(&url));
        if judged(&agent) > 0 {
            first = Some(sent);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(nginx);
    match first {
        Some(t) => println!(
            "(c) first capture: nginx (master and workers) listening {:.0} ms after its process started; \
             the first request judged was sent {:.0} ms after that start (goal <= 1 s; discovery looks \
             for new processes every 250 ms)\n",
            listening.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3
        ),
        None => println!(
            "(c) first capture: no request judged within 10 s of nginx's start\n{}",
            agent.log_text()
        ),
    }
}

/// Runs (b) at `rate` requests/s in all, (c), and (a) unless `corpus` is
/// `none` (or none is given and the default one is absent).
pub fn run(rate: Option<u32>, corpus: Option<String>) {
    crate::require_root();
    let rate = rate.unwrap_or(400);
    println!("# cargo xtask bench tls\n");
    let corpus = corpus.map(std::path::PathBuf::from).or_else(|| {
        let p = std::path::Path::new("../shared/corpus/dev.jsonl");
        p.exists().then(|| p.to_owned())
    });
    // The clients' own libssl: another inode, so the probes on nginx's do not
    // trap the load generator.
    let libdir = tempfile::tempdir().unwrap();
    for lib in ["libssl.so.3", "libcrypto.so.3"] {
        let src = std::path::Path::new("/usr/lib/x86_64-linux-gnu").join(lib);
        std::fs::copy(&src, libdir.path().join(lib))
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    println!(
        "(b) cost: nginx (2 workers, HTTPS, keep-alive) in front of a Python backend; {CLIENTS} Python HTTPS \
         clients at {rate} requests/s in all for {SECONDS} s per configuration; one lab each. \
         Machine busy CPU includes everything else running on the host.\n"
    );
    let rows = [
        run_one("no agent", None, false, rate, libdir.path()),
        run_one(
            "agent, TLS probes off",
            Some(false),
            false,
            rate,
            libdir.path(),
        ),
        run_one(
            "agent, TLS probes on",
            Some(true),
            false,
            rate,
            libdir.path(),
        ),
        run_one(
            "plain HTTP to the same nginx, socket capture (reference)",
            Some(false),
            true,
            rate,
            libdir.path(),
        ),
    ];
    let hz = ticks() as f64;
    println!(
        "| configuration | requests | p50 ms | p99 ms | agent µs/request | machine busy µs/request | requests parsed | TLS calls | bytes captured | bytes lost |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &rows {
        let n = r.latencies.len().max(1) as f64;
        let tls = |k: &str| {
            r.tls
                .as_ref()
                .and_then(|t| t[k].as_u64())
                .map_or_else(|| "-".to_owned(), |v| v.to_string())
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.name,
            r.latencies.len(),
            pct(&r.latencies, 0.5),
            pct(&r.latencies, 0.99),
            r.agent_ticks as f64 / hz * 1e6 / n,
            r.busy_ticks as f64 / hz * 1e6 / n,
            r.parsed,
            tls("calls"),
            tls("bytes_captured"),
            tls("bytes_lost"),
        );
    }
    let (off, on) = (&rows[1], &rows[2]);
    let added = (on.agent_ticks as f64 / on.latencies.len().max(1) as f64
        - off.agent_ticks as f64 / off.latencies.len().max(1) as f64)
        / hz
        * 1e6;
    println!(
        "\nTLS probes: agent CPU {added:+.1} µs/request, p99 {:+.1} % (probes on vs off)",
        (pct(&on.latencies, 0.99) / pct(&off.latencies, 0.99).max(1e-9) - 1.0) * 100.0
    );
    println!();
    first_capture();
    match corpus {
        Some(c) if c.as_os_str() != "none" => parity(&c),
        _ => println!("(a) parity: no corpus (cargo xtask bench tls RATE CORPUS)"),
    }
}
