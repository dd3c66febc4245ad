//! `cargo xtask bench h2`: HTTP/2 method decoding on long-lived h2c
//! connections. `nghttpd` serves 50 gRPC-style methods (`/bench.Svc/M0` ..
//! `M49`); `h2load` sends requests over 4 connections, 10 streams in
//! flight each. Reported, from the agent's inventory and status:
//! - connections seen from their start: the share of requests whose method
//!   was decoded right, requests under a wrong method (any inventory path
//!   not sent), and the agent's CPU per request;
//! - connections joined busy (the agent starts while they run): the same
//!   shares and what the agent counted as HTTP/2 it did not decode.

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    Agent, Lab,
    capture::{proc_cpu, ticks},
    h2::Nghttpd,
};

const METHODS: u32 = 50;
const CONNECTIONS: u32 = 4;

fn urls(addr: std::net::IpAddr, port: u16) -> Vec<String> {
    (0..METHODS)
        .map(|i| format!("http://{addr}:{port}/bench.Svc/M{i}"))
        .collect()
}

fn h2load(lab: &Lab, args: &[String], urls: &[String]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns, "timeout", "120", "h2load"])
        .args(["-c", &CONNECTIONS.to_string(), "-m", "10"])
        .args(args)
        .args(urls)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Requests h2load reports done.
fn done(child: Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("requests: ")
                .and_then(|r| r.split(" done").next())
                .and_then(|r| r.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// (right, wrong) requests in the inventory.
fn tally(agent: &Agent, sent: &HashSet<String>) -> (u64, u64) {
    let inv = agent.json(&["inventory"]);
    let mut right = 0;
    let mut wrong = 0;
    for e in inv.as_array().into_iter().flatten() {
        let hits = e["hits"].as_u64().unwrap_or(0);
        let ok = e["method"] == "GET" && e["path"].as_str().is_some_and(|p| sent.contains(p));
        if ok {
            right += hits;
        } else {
            wrong += hits;
        }
    }
    (right, wrong)
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// Runs both scenarios and prints a table.
pub fn run(requests: Option<u64>) {
    let n = requests.unwrap_or(20_000);
    let lab = Lab::new();
    let server = Nghttpd::start(&[lab.v4(1, 1)]);
    let dir = server.root.path().join("bench.Svc");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..METHODS {
        std::fs::write(dir.join(format!("M{i}")), "ok\n").unwrap();
    }
    let port = server.port.to_string();
    let sent: HashSet<String> = (0..METHODS).map(|i| format!("/bench.Svc/M{i}")).collect();
    let all = urls(lab.v4(1, 1), server.port);
    println!(
        "| scenario | requests sent | decoded right | wrong | h2 connections decoded / not decoded | agent CPU per request |"
    );
    println!("|---|---|---|---|---|---|");

    // From the start.
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let pid = agent.pid().map_or(0, |p| p.as_raw().unsigned_abs());
    let cpu0 = proc_cpu(pid);
    let load = h2load(&lab, &["-n".into(), n.to_string()], &all);
    let sent_n = done(load);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = proc_cpu(pid) - cpu0;
    let (right, wrong) = tally(&agent, &sent);
    let flows = agent.json(&["status"])["sampling"]["flows"].clone();
    println!(
        "| from the start | {sent_n} | {right} ({:.2} %) | {wrong} | {} / {} | {:.1} µs |",
        pct(right, sent_n),
        flows["h2_connections"],
        flows["h2_not_decoded"],
        cpu as f64 * 1e6 / ticks() as f64 / sent_n.max(1) as f64
    );
    drop(agent);

    // Joined busy: the connections open before the agent.
    let load = h2load(&lab, &["-D".into(), "12".into()], &all);
    std::thread::sleep(Duration::from_secs(2));
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let sent_n = done(load);
    std::thread::sleep(Duration::from_secs(2));
    let (right, wrong) = tally(&agent, &sent);
    let flows = agent.json(&["status"])["sampling"]["flows"].clone();
    println!(
        "| joined busy (requests after the join: fewer than sent) | {sent_n} | {right} ({:.2} % of all sent) | {wrong} | {} / {} | - |",
        pct(right, sent_n),
        flows["h2_connections"],
        flows["h2_not_decoded"],
    );
}
