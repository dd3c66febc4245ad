//! HTTPS judged from the server's own TLS library: uprobes on Debian's
//! libssl give the plaintext nginx (and a Python `ssl` server) read and
//! write; the same pipeline as plain HTTP scores it, bans the client at XDP,
//! and lists the route.

use std::{net::IpAddr, time::Duration};

use tollgate_tests::{
    Agent, Lab, eventually,
    tls::{Haproxy, Nginx, PySequential, PyTls, curl, curl_with, py_client, wait_probed},
};

const INJECTION: &str = "/items?id=1%27%20OR%20%271%27%3D%271";

fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("https://{addr}:{port}{path}")
}

fn codes(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_banned(agent: &Agent, addr: IpAddr) {
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(addr)),
        "{addr} not banned\nstatus: {}\nevents: {:#?}\n{}",
        agent.json(&["status"]),
        agent.events(),
        agent.log_text()
    );
}

#[test]
fn an_injection_over_https_through_nginx_bans_its_client_only() {
    let lab = Lab::new();
    let nginx = Nginx::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = nginx.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    wait_probed(&agent);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let (to_attacker_side, to_benign_side) = (lab.v4(0, 1), lab.v4(1, 1));

    // `tap` shows the HTTPS exchanges in plaintext (bounded: 10 s).
    let tap = {
        let socket = agent.socket.clone();
        std::thread::spawn(move || {
            std::process::Command::new("timeout")
                .arg("10")
                .arg(tollgate_tests::tollgate_bin())
                .arg("--socket")
                .arg(socket)
                .args(["tap", "--json", "--count", "4"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Benign requests, two on one keep-alive connection.
    let out = curl(
        &lab,
        &[
            url(to_benign_side, nginx.port, "/items/1"),
            url(to_benign_side, nginx.port, "/items/2"),
        ],
    );
    assert_eq!(
        codes(&out),
        ["200", "200"],
        "{out:?}\n{}",
        nginx.error_log()
    );
    let tapped: Vec<serde_json::Value> = String::from_utf8_lossy(&tap.join().unwrap().stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (dir, path) in [("request", "/items/1"), ("response", "/items/2")] {
        assert!(
            tapped.iter().any(|e| e["direction"] == dir
                && e["path"] == path
                && e["client"] == benign.to_string()),
            "tap did not show the {dir} of {path} from {benign}: {tapped:#?}"
        );
    }
    let seen = eventually(Duration::from_secs(5), || {
        agent
            .json(&["inventory"])
            .as_array()
            .is_some_and(|eps| eps.iter().any(|e| e.to_string().contains("/items/")))
    });
    assert!(
        seen,
        "HTTPS route not in the inventory: {}\nstatus: {}\n{}",
        agent.json(&["inventory"]),
        agent.json(&["status"]),
        agent.log_text()
    );

    // The injection, after a benign request on the same connection.
    let out = curl(
        &lab,
        &[
            url(to_attacker_side, nginx.port, "/hello"),
            url(to_attacker_side, nginx.port, INJECTION),
        ],
    );
    assert_eq!(codes(&out)[0], "200", "{out:?}");
    assert_banned(&agent, attacker);
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e.to_string().contains(&attacker.to_string())
            && e.to_string().contains(&port)),
        "no event for {attacker} on port {port}: {ev:#?}"
    );
    // Its next connection is dropped at XDP; the other client's is not.
    let out = curl(&lab, &[url(to_attacker_side, nginx.port, "/hello")]);
    assert_ne!(
        codes(&out).first().map(String::as_str),
        Some("200"),
        "{out:?}"
    );
    let out = curl(&lab, &[url(to_benign_side, nginx.port, "/hello")]);
    assert_eq!(codes(&out), ["200"], "{out:?}");
    assert!(
        !agent.policy_banned(benign),
        "{benign} banned too\nbans: {}\nevents: {:#?}\nstatus: {}",
        agent.json(&["block", "ls"]),
        agent.events(),
        agent.json(&["status"])
    );
    let st = agent.json(&["status"]);
    assert!(st["tls"]["records"].as_u64().unwrap() > 0, "{st}");
    assert!(st["tls"]["bytes_captured"].as_u64().unwrap() > 0, "{st}");
}

#[test]
fn python_ssl_uses_the_ex_functions_and_is_judged() {
    let lab = Lab::new();
    let server = PyTls::start(lab.v4(0, 1));
    let port = server.port.to_string();
    // A sample ring of another size than the default: the kernel's map has it.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "capacity: {sample_ring_bytes: 8388608}\n").unwrap();
    let agent = Agent::start(
        &lab.host_if,
        &["--api-port", &port, "--config", policy.to_str().unwrap()],
    );
    let pin = agent.pins.join("maps").join("TG_SAMPLES");
    let ring =
        aya::maps::MapInfo::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e:?}", pin.display()));
    assert_eq!(ring.max_entries(), 8_388_608);
    wait_probed(&agent);
    let attacker = lab.v4(0, 2);
    let out = curl(
        &lab,
        &[
            url(lab.v4(0, 1), server.port, "/ok"),
            url(lab.v4(0, 1), server.port, INJECTION),
        ],
    );
    assert_eq!(
        codes(&out).first().map(String::as_str),
        Some("200"),
        "{out:?}"
    );
    assert_banned(&agent, attacker);
    let st = agent.json(&["status"]);
    assert_eq!(st["samples_kernel"]["ring_bytes"], 8_388_608, "{st}");
    assert_eq!(st["samples_kernel"]["lost"], 0, "{st}");
}

#[test]
fn an_injection_over_https_through_haproxy_bans_its_client_only() {
    let lab = Lab::new();
    // HAProxy terminates TLS (plain SSL_read/SSL_write, recv/send through
    // its own BIO, two threads) and forwards to a plain backend.
    let proxy = Haproxy::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = proxy.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    wait_probed(&agent);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let (to_attacker_side, to_benign_side) = (lab.v4(0, 1), lab.v4(1, 1));
    let out = curl(&lab, &[url(to_benign_side, proxy.port, "/items/1")]);
    assert_eq!(codes(&out), ["200"], "{out:?}");
    let out = curl(
        &lab,
        &[
            url(to_attacker_side, proxy.port, "/hello"),
            url(to_attacker_side, proxy.port, INJECTION),
        ],
    );
    assert_eq!(
        codes(&out).first().map(String::as_str),
        Some("200"),
        "{out:?}"
    );
    assert_banned(&agent, attacker);
    // Its next connection is dropped at XDP; the other client's is not.
    let out = curl(&lab, &[url(to_attacker_side, proxy.port, "/hello")]);
    assert_ne!(
        codes(&out).first().map(String::as_str),
        Some("200"),
        "{out:?}"
    );
    let out = curl(&lab, &[url(to_benign_side, proxy.port, "/items/2")]);
    assert_eq!(codes(&out), ["200"], "{out:?}");
    assert!(
        !agent.policy_banned(benign),
        "{benign} banned too\nevents: {:#?}",
        agent.events()
    );
    let st = agent.json(&["status"]);
    assert!(st["tls"]["records"].as_u64().unwrap() > 0, "{st}");
}

#[test]
fn a_server_started_after_the_agent_is_covered() {
    let lab = Lab::new();
    let port = tollgate_tests::tls::free_port();
    let port_s = port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port_s]);
    // nginx on the port the agent already watches; its libssl is found by
    // the periodic scan, and every worker it forks is covered by the same
    // probes (no pid filter). How fast is a benchmark's figure
    // (`cargo xtask bench tls`), not this test's.
    let started = std::time::Instant::now();
    let nginx = Nginx::start_on(&[lab.v4(0, 1)], port);
    wait_probed(&agent);
    eprintln!("probed {:?} after nginx started", started.elapsed());
    // One more discovery round seeds the workers' processes (their accepts
    // are announced from then on).
    std::thread::sleep(Duration::from_millis(1500));
    let out = curl(&lab, &[url(lab.v4(0, 1), nginx.port, INJECTION)]);
    assert_eq!(codes(&out).len(), 1, "{out:?}");
    assert_banned(&agent, lab.v4(0, 2));
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_banned() {
    let lab = Lab::new();
    let nginx = Nginx::start(&[lab.v4(0, 1)]);
    let port = nginx.port.to_string();
    // The client namespace's address plays a load balancer that forwards
    // over TLS and names its clients in X-Forwarded-For.
    let (proxy, real) = (lab.v4(0, 2), lab.v4(1, 77));
    let trusted = format!("{proxy}/32");
    let agent = Agent::start(
        &lab.host_if,
        &["--api-port", &port, "--trusted-proxy", &trusted],
    );
    wait_probed(&agent);
    let xff = format!("X-Forwarded-For: {real}");
    let out = curl_with(
        &lab,
        &["-H", &xff],
        &[url(lab.v4(0, 1), nginx.port, INJECTION)],
    );
    assert_eq!(codes(&out).len(), 1, "{out:?}");
    assert_banned(&agent, real);
    assert!(!agent.policy_banned(proxy), "the proxy itself was banned");
}

/// A keep-alive HTTPS client sending `rate` requests a second for `secs`
/// seconds; prints how many were answered and how many failed.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, json, ssl, sys, time
host, port, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
c = http.client.HTTPSConnection(host, port, context=ssl._create_unverified_context(), timeout=5)
ok, err, n, start = 0, 0, 0, time.monotonic()
while time.monotonic() - start < secs:
    due = start + n / rate
    if due > time.monotonic():
        time.sleep(due - time.monotonic())
    n += 1
    try:
        c.request("GET", "/items/%d" % (n % 5 + 1))
        r = c.getresponse()
        r.read()
        ok += r.status == 200
    except Exception:
        err += 1
        c.close()
print(json.dumps({"ok": ok, "err": err}))
"#;

/// The sample reader holds its drains back (one per 20 ms) under steady
/// traffic, while a short connection (accept, one request, close) is over
/// in a few ms: its stream must be resolved from its announcement, before
/// its records come out of the ring, or its request is dropped unjudged.
#[test]
fn a_short_connection_is_judged_while_steady_keep_alive_traffic_holds_drains_back() {
    let lab = Lab::new();
    let nginx = Nginx::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = nginx.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    wait_probed(&agent);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let background = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns, "python3", "-c", KEEPALIVE_CLIENT])
        .args([&lab.v4(1, 1).to_string(), &port, "150", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Steady traffic first, so drains are being held back.
    std::thread::sleep(Duration::from_secs(2));
    let out = curl(&lab, &[url(lab.v4(0, 1), nginx.port, INJECTION)]);
    assert_eq!(codes(&out).len(), 1, "{out:?}");
    assert_banned(&agent, attacker);
    let out = background.wait_with_output().unwrap();
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "background client: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        done["err"] == 0 && done["ok"].as_u64().unwrap() > 500,
        "the keep-alive client was hindered: {done}"
    );
    assert!(
        !agent.policy_banned(benign),
        "{benign} banned too\nevents: {:#?}",
        agent.events()
    );
    // The reader did batch: several records per drain (one each, or
    // nearly, if every record woke it). The counters are published each
    // second.
    std::thread::sleep(Duration::from_millis(1200));
    let st = agent.json(&["status"]);
    let (records, drains) = (
        st["tls"]["records"].as_u64().unwrap(),
        st["sampling"]["drains"].as_u64().unwrap(),
    );
    assert!(
        drains > 0 && records >= 3 * drains,
        "{records} TLS records in {drains} drains: not held back\n{st}"
    );
    assert!(
        st["tls"]["streams_announced"].as_u64().unwrap() >= 2,
        "{st}"
    );
}

/// Continues a stopped agent when dropped (the test may fail while it is
/// stopped).
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

fn wait_for(what: &str, server: &PySequential, mut ok: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(10), &mut ok),
        "{what}; server log: {:?}",
        server.log_lines()
    );
}

/// The review's fd-reuse case, made deterministic by stopping the agent:
/// the attacker holds the server (one connection at a time) while its next
/// connection and then a benign client's wait in the accept queue (both
/// TCP handshakes done, so the kernel's record of established connections
/// predates the attacker's bytes). The attacker's connection is accepted,
/// sends an injection and closes; the benign client's is accepted on the
/// same descriptor and stays open. Only then does the agent read the
/// attacker's stream: the descriptor now holds the benign client, so the
/// stream cannot be proven and its records are dropped (counted), and the
/// benign client is not banned. The attacker's next injection, read in
/// time, bans it.
#[test]
fn a_closed_attackers_bytes_are_not_judged_as_the_next_client_on_its_descriptor() {
    fd_reused_while_unread(false);
}

/// The same with the descriptor replaced by `dup2` instead of closed and
/// reused: the kernel ends the stream there too.
#[test]
fn an_attackers_bytes_are_not_judged_as_the_client_dup2_put_on_its_descriptor() {
    fd_reused_while_unread(true);
}

fn fd_reused_while_unread(dup2: bool) {
    let lab = Lab::new();
    let server = PySequential::start(lab.v4(0, 1), dup2);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    wait_probed(&agent);
    let (attacker, benign, dst) = (lab.v4(0, 2), lab.v4(1, 2), lab.v4(0, 1));
    let mut hold = py_client(&lab, attacker, dst, server.port, "/items/0", true);
    wait_for("the holding connection not served", &server, || {
        server.log_lines().iter().any(|l| l.starts_with("served"))
    });
    let mut attack = py_client(&lab, attacker, dst, server.port, INJECTION, false);
    wait_for("the attack not queued", &server, || server.queued() == 1);
    let mut victim = py_client(&lab, benign, dst, server.port, "/items/1", true);
    wait_for("the benign client not queued", &server, || {
        server.queued() == 2
    });
    let pid = agent.pid().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    drop(hold.stdin.take());
    let benign_s = benign.to_string();
    wait_for("the benign client not served", &server, || {
        server
            .log_lines()
            .iter()
            .any(|l| l.starts_with("served") && l.contains(&benign_s))
    });
    // The scenario happened: three connections in turn on one descriptor.
    let fds: Vec<String> = server
        .log_lines()
        .iter()
        .filter(|l| l.starts_with("accept"))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .collect();
    assert_eq!(fds.len(), 3, "{:?}", server.log_lines());
    assert!(fds.iter().all(|f| *f == fds[0]), "{:?}", server.log_lines());
    drop(resume);
    // Until the agent has read the attacker's stream one way or the other.
    eventually(Duration::from_secs(5), || {
        agent.policy_banned(benign)
            || agent.json(&["status"])["tls"]["streams_unproven"]
                .as_u64()
                .is_some_and(|n| n >= 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !agent.policy_banned(benign),
        "the benign client was banned for the attacker's bytes\nstatus: {}\nevents: {:#?}",
        agent.json(&["status"]),
        agent.events()
    );
    let st = agent.json(&["status"]);
    assert!(st["tls"]["streams_unproven"].as_u64() >= Some(1), "{st}");
    assert!(st["tls"]["records_unresolved"].as_u64() >= Some(1), "{st}");
    // Both clients were answered.
    for (name, c) in [("attack", &mut attack), ("hold", &mut hold)] {
        let out = c.wait_with_output_ref();
        assert_eq!(out.trim(), "200", "{name}: {out}");
    }
    drop(victim.stdin.take());
    let out = victim.wait_with_output_ref();
    assert_eq!(out.trim(), "200", "victim: {out}");
    // Read in time, the attacker's injection bans it, and only it.
    let out = curl(&lab, &[url(dst, server.port, INJECTION)]);
    assert_eq!(codes(&out), ["200"], "{out:?}");
    assert_banned(&agent, attacker);
    assert!(!agent.policy_banned(benign));
}

/// Waits for a child and returns its stdout (stderr appended on failure).
trait WaitOut {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOut for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read as _;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(o) = self.stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(e) = self.stderr.as_mut() {
            let mut err = String::new();
            let _ = e.read_to_string(&mut err);
            if !err.is_empty() {
                s.push_str(&err);
            }
        }
        s
    }
}
