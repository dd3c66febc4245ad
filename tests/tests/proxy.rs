//! Clients behind a real load balancer (HAProxy, in the lab namespace, in
//! front of the API host): the proxy is trusted, the clients it carries are
//! judged and banned one by one, per connection, in the kernel; the proxy is
//! never banned. Once with the PROXY protocol (v1 and v2), once with
//! `X-Forwarded-For` (also behind a padded head spanning several packets);
//! and a direct client's forged `X-Forwarded-For` does not shift blame.
//! Every test runs at both ingress hooks (`NAME::xdp`, `NAME::tc`).

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::{
    Agent, Hook, Lab, eventually,
    http::{HttpServer, get, try_http},
    sh,
};

const T: Duration = Duration::from_secs(3);

/// HAProxy in the lab namespace, listening on `listen`, forwarding to `api`.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(
        lab: &Lab,
        listen: SocketAddr,
        api: SocketAddr,
        server_opts: &str,
        backend_opts: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        // One server connection per client connection, unless the test
        // asks for reuse (HAProxy's mode is the more closing of frontend's
        // and backend's, so the default stays off both).
        let per_client = if backend_opts.contains("http-reuse") {
            ""
        } else {
            "  option http-server-close\n  http-reuse never\n"
        };
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 256\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 1500ms\n\
                 frontend fe\n  bind {listen}\n  default_backend be\n\
                 backend be\n{per_client}{backend_opts}  server api {api} {server_opts}\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns, "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed (cargo xtask setup --test-deps)");
        let h = Self { child, _dir: dir };
        assert!(
            eventually(Duration::from_secs(5), || lab.in_client(move || {
                std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
            })),
            "haproxy did not come up"
        );
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    lab: Lab,
    server: HttpServer,
    agent: Agent,
    _proxy: Haproxy,
    proxy_ip: IpAddr,
    front: SocketAddr,
    good: IpAddr,
    bad: IpAddr,
}

/// Lab + API + agent (trusting the proxy) + HAProxy; two clients behind it
/// (extra addresses inside the namespace).
fn env(hook: Hook, server_opts: &str, backend_opts: &str) -> Env {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let proxy_ip = lab.v4(0, 2);
    let port = server.port.to_string();
    let trusted = format!("{proxy_ip}/32");
    let mut args = vec!["--api-port", &port, "--trusted-proxy", &trusted];
    args.extend(hook.args());
    let agent = Agent::start(&lab.host_if, &args);
    let (good, bad) = (lab.v4(1, 4), lab.v4(1, 3));
    for a in [good, bad] {
        sh(&[
            "ip",
            "-n",
            &lab.ns,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ]);
    }
    // Not the API port: the agent takes API-port sockets of every network
    // namespace at the socket, the proxy's frontend would be one of them.
    let front_port = 20_000 + (server.port % 20_000);
    let front_port = if front_port == server.port {
        front_port - 1
    } else {
        front_port
    };
    let front = SocketAddr::new(proxy_ip, front_port);
    let api = SocketAddr::new(lab.v4(0, 1), server.port);
    let proxy = Haproxy::start(&lab, front, api, server_opts, backend_opts);
    Env {
        lab,
        server,
        agent,
        _proxy: proxy,
        proxy_ip,
        front,
        good,
        bad,
    }
}

impl Env {
    fn via_proxy(&self, src: IpAddr, path: &str) -> Option<String> {
        try_http(&self.lab, src, self.front, get(path), T)
    }
    fn ok(&self, src: IpAddr, path: &str) -> bool {
        self.via_proxy(src, path)
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    }
    fn bans(&self) -> Vec<Value> {
        self.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .clone()
    }
    fn banned(&self, ip: IpAddr) -> bool {
        let want = format!("{ip}/32");
        self.bans().iter().any(|b| b["cidr"] == want)
    }
    fn events(&self) -> Vec<Value> {
        self.agent
            .ok(&["events", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

const SQLI: &str = "/items?id=1%27%20OR%20%271%27%3D%271";

/// Both clients are served, then the attacker's injection gets it banned
/// (and never the proxy).
fn good_then_attacker(e: &Env) {
    assert!(e.ok(e.good, "/items?id=5"), "good client before");
    assert!(e.ok(e.bad, "/items?id=6"), "attacker before its attack");
    e.via_proxy(e.bad, SQLI);
    assert!(
        eventually(Duration::from_secs(5), || e.banned(e.bad)),
        "attacker not banned: {:?}\n{}",
        e.bans(),
        e.agent.log_text()
    );
    assert!(!e.banned(e.proxy_ip), "the proxy was banned");
}

/// The attacker behind the proxy is banned and its requests stop; the other
/// client keeps working; the proxy is never in the blocklist.
fn attacker_is_cut_off_alone(e: &Env) {
    good_then_attacker(e);
    // Its next requests through the proxy are dropped in the kernel (the
    // proxy times out and answers 504), the other client's pass.
    for i in 0..3 {
        let r = e.via_proxy(e.bad, &format!("/items?id={i}"));
        assert!(
            !r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")),
            "attacker still served: {r:?}"
        );
        assert!(
            e.ok(e.good, &format!("/items?id={i}")),
            "good client cut off"
        );
    }
    let ev = e.events();
    let v = ev
        .iter()
        .find(|v| v["type"] == "violation" && v["category"] == "sqli")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(v["client"], e.bad.to_string());
    assert_eq!(v["proxy"], e.proxy_ip.to_string(), "{ev:#?}");
    assert!(!e.banned(e.proxy_ip));
    // A manual ban of the proxy is refused without --force.
    let out = e.agent.cli(&["block", "add", &e.proxy_ip.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trusted proxy"),
        "{out:?}"
    );
    let dropped = e.agent.json(&["stats"]);
    assert!(
        dropped["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["verdict"] == "drop"
                && c["reason"] == "blocklisted"
                && c["packets"].as_u64().unwrap_or(0) > 0),
        "{dropped}"
    );
}

tollgate_tests::on_both_hooks!(
    proxy_protocol_v1_clients_are_judged_one_by_one,
    proxy_protocol_v2_clients_are_judged_one_by_one,
    x_forwarded_for_clients_are_judged_one_by_one,
    a_banned_client_padding_its_head_past_the_first_packets_is_stopped,
    a_forged_forwarded_for_from_a_direct_client_does_not_shift_blame,
    a_forwarded_header_passed_through_an_x_forwarded_for_proxy_blames_nobody_else,
    a_connection_the_proxy_shares_between_clients_is_not_cut_for_one,
);

fn proxy_protocol_v1_clients_are_judged_one_by_one(hook: Hook) {
    let e = env(hook, "send-proxy", "");
    attacker_is_cut_off_alone(&e);
}

fn proxy_protocol_v2_clients_are_judged_one_by_one(hook: Hook) {
    let e = env(hook, "send-proxy-v2", "");
    attacker_is_cut_off_alone(&e);
}

fn x_forwarded_for_clients_are_judged_one_by_one(hook: Hook) {
    let e = env(hook, "", "  option forwardfor\n");
    attacker_is_cut_off_alone(&e);
    // `tap` shows the real client and the proxy.
    let tap = Command::new(tollgate_tests::tollgate_bin())
        .arg("--socket")
        .arg(&e.agent.socket)
        .args(["tap", "--json", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(e.ok(e.good, "/tapped"));
    let out = tap.wait_with_output().unwrap();
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["client"], e.good.to_string(), "{line}");
    assert_eq!(line["proxy"], e.proxy_ip.to_string(), "{line}");
}

/// HAProxy appends its `X-Forwarded-For` after the client's headers: a
/// client can push it past the first packets of the head. The kernel scans
/// the whole head, so the packet that completes it is judged by the banned
/// client and the request never reaches the server.
fn a_banned_client_padding_its_head_past_the_first_packets_is_stopped(hook: Hook) {
    let e = env(hook, "", "  option forwardfor\n");
    e.agent.ok(&["block", "add", &e.bad.to_string()]);
    let padded = |path: &str| {
        let cookie = "c".repeat(3 * 1024);
        format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nCookie: s={cookie}\r\n\r\n").into_bytes()
    };
    let r = try_http(&e.lab, e.bad, e.front, padded("/padded-bad"), T);
    assert!(
        !r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "banned client served: {r:?}"
    );
    let r = try_http(&e.lab, e.good, e.front, padded("/padded-good"), T);
    assert!(
        r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "clean client not served: {r:?}"
    );
    let served = e.server.served();
    assert!(served.iter().any(|p| p == "/padded-good"), "{served:?}");
    assert!(
        !served.iter().any(|p| p == "/padded-bad"),
        "the banned client's request reached the server: {served:?}"
    );
    assert!(!e.banned(e.proxy_ip), "the proxy was banned");
}

fn a_forged_forwarded_for_from_a_direct_client_does_not_shift_blame(hook: Hook) {
    let e = env(hook, "", "  option forwardfor\n");
    let direct = e.lab.v4(1, 2);
    let dst = SocketAddr::new(e.lab.v4(1, 1), e.server.port);
    let req = format!(
        "GET {SQLI} HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: {}\r\n\r\n",
        e.good
    );
    try_http(&e.lab, direct, dst, req.into_bytes(), T);
    assert!(
        eventually(Duration::from_secs(5), || e.banned(direct)),
        "{:?}",
        e.bans()
    );
    assert!(!e.banned(e.good), "blame shifted to the forged address");
    assert!(e.ok(e.good, "/items?id=1"));
    assert!(
        e.events()
            .iter()
            .any(|v| v["rule"] == "proxy.untrusted_forwarding" && v["client"] == direct.to_string()),
        "{:#?}",
        e.events()
    );
}

fn a_forwarded_header_passed_through_an_x_forwarded_for_proxy_blames_nobody_else(hook: Hook) {
    // HAProxy appends to X-Forwarded-For and passes `Forwarded` untouched:
    // that header is the client's own word. The attacker names its
    // neighbour in it; the attacker is banned, the neighbour is not.
    let e = env(hook, "", "  option forwardfor\n");
    let req = format!(
        "GET {SQLI} HTTP/1.1\r\nHost: api.test\r\nForwarded: for={}\r\n\r\n",
        e.good
    );
    let _ = try_http(&e.lab, e.bad, e.front, req.into_bytes(), T);
    assert!(
        eventually(Duration::from_secs(5), || e.banned(e.bad)),
        "attacker not banned: {:?}\n{}",
        e.bans(),
        e.agent.log_text()
    );
    assert!(
        !e.banned(e.good),
        "the named neighbour was banned: {:?}",
        e.bans()
    );
    assert!(e.ok(e.good, "/items?id=1"), "the neighbour is cut off");
}

/// HAProxy reusing one server connection for every client (`http-reuse
/// always`, keep-alive to the server): the benign client's requests opened
/// it. The attacker's injection on it bans the attacker, and the connection
/// is not cut for it: that would cut the benign client's requests too.
fn a_connection_the_proxy_shares_between_clients_is_not_cut_for_one(hook: Hook) {
    let e = env(hook, "", "  option forwardfor\n  http-reuse always\n");
    good_then_attacker(&e);
    let status = e.agent.json(&["status"]);
    assert!(
        status["sampling"]["proxied_shared"].as_u64().unwrap_or(0) > 0,
        "the proxy did not share its connection (the test needs it to): {status}"
    );
    for i in 0..5 {
        assert!(
            e.ok(e.good, &format!("/items?id={i}")),
            "the good client was cut off with the attacker's shared connection"
        );
    }
    let served = e.server.served();
    assert!(served.iter().any(|p| p == "/items?id=4"), "{served:?}");
}
