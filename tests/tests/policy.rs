//! The policy engine end to end: a real HTTP server behind the agent,
//! clients in a namespace sending real requests over TCP; what gets banned
//! at the NIC, what `tollgate events` reports, and what monitor mode and the
//! allowlist change.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::{
    Agent, Lab, eventually,
    http::{HttpServer, get, sqli, try_http},
    tollgate_bin,
};

const T: Duration = Duration::from_secs(2);

fn bans(agent: &Agent) -> Vec<Value> {
    agent.json(&["block", "ls"]).as_array().unwrap().clone()
}

fn ban_of<'a>(bans: &'a [Value], cidr: &str) -> Option<&'a Value> {
    bans.iter().find(|b| b["cidr"] == cidr)
}

struct Env {
    lab: Lab,
    server: HttpServer,
    agent: Agent,
}

fn env(extra: &[&str]) -> Env {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1)]);
    let port = server.port.to_string();
    let mut args = vec!["--api-port", &port];
    args.extend_from_slice(extra);
    let agent = Agent::start(&lab.host_if, &args);
    Env { lab, server, agent }
}

impl Env {
    fn dst(&self, i: u32) -> SocketAddr {
        SocketAddr::new(self.lab.v4(i, 1), self.server.port)
    }
    fn send(&self, src: IpAddr, i: u32, req: Vec<u8>) -> Option<String> {
        try_http(&self.lab, src, self.dst(i), req, T)
    }
}

#[test]
fn injection_over_tcp_bans_the_client_at_the_nic() {
    let e = env(&[]);
    let (attacker, neighbour) = (e.lab.v4(0, 2), e.lab.v4(1, 2));
    let follow = Command::new(tollgate_bin())
        .arg("--socket")
        .arg(&e.agent.socket)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));

    // Benign look-alike first: served, nothing reported.
    let r = e.send(attacker, 0, get("/search?q=select+a+union+rep"));
    assert!(r.is_some_and(|r| r.starts_with("HTTP/1.1 200")));

    // The attack reaches the server (it is sampled, not inline) ...
    e.send(attacker, 0, sqli());
    let want = format!("{attacker}/32");
    assert!(
        eventually(Duration::from_secs(5), || ban_of(&bans(&e.agent), &want)
            .is_some()),
        "no ban for {want}: {:?}\n{}",
        bans(&e.agent),
        e.agent.log_text()
    );
    let all = bans(&e.agent);
    let b = ban_of(&all, &want).unwrap();
    assert_eq!(b["kind"], "policy", "{b}");
    assert!(b["reason"].as_str().unwrap().starts_with("sqli."), "{b}");
    let ttl = b["ttl_remaining_secs"].as_u64().unwrap_or(0);
    assert!((590..=600).contains(&ttl), "first offence TTL is 10m: {b}");

    // ... and its next packets drop at the NIC, while its neighbour is served.
    assert!(e.send(attacker, 0, get("/items?id=2")).is_none());
    let r = e.send(neighbour, 1, get("/items?id=2"));
    assert!(r.is_some_and(|r| r.starts_with("HTTP/1.1 200")));

    // The event log explains it.
    let ev = e.agent.events();
    let v = ev
        .iter()
        .find(|v| v["type"] == "violation")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(v["client"], attacker.to_string());
    assert!(v["rule"].as_str().unwrap().starts_with("sqli."), "{v}");
    assert_eq!(v["category"], "sqli");
    assert_eq!(v["route"], "GET /items");
    assert_eq!(v["action"], "ban");
    assert_eq!(v["enforced"], true);
    assert!(v["evidence"].as_str().unwrap().contains("or"), "{v}");
    let ban = ev.iter().find(|v| v["type"] == "ban").unwrap();
    assert_eq!(ban["ban"], want);
    assert_eq!(ban["ttl_secs"], 600);
    assert!(
        !ev.iter().any(|v| v["route"] == "GET /search"),
        "benign request reported: {ev:#?}"
    );
    // `--follow` streamed the same events as they happened.
    let mut follow = follow;
    thread::sleep(Duration::from_millis(200));
    let _ = follow.kill();
    let mut out = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.lines().count() >= 2, "{out}");
    assert!(out.contains("\"type\":\"ban\""), "{out}");
    // Human output names the rule and the ban.
    let human = e.agent.ok(&["events"]);
    assert!(
        human.contains("BANNED") && human.contains("sqli."),
        "{human}"
    );
}

#[test]
fn ipv6_attacker_is_banned_by_its_64_and_weak_signals_alone_are_not() {
    let e = env(&[]);
    let dst6 = SocketAddr::new(e.lab.v6(0, 1), e.server.port);
    // A lone `../` is a weak signal: reported, not banned.
    let r = try_http(
        &e.lab,
        e.lab.v4(0, 2),
        e.dst(0),
        get("/files?name=../a.txt"),
        T,
    );
    assert!(r.is_some());
    let xss = get("/comments?text=%3Cscript%3Ealert(document.cookie)%3C/script%3E");
    try_http(&e.lab, e.lab.v6(0, 2), dst6, xss, T);
    let net = format!(
        "{}/64",
        match e.lab.v6(0, 2) {
            IpAddr::V6(a) => {
                let s = a.segments();
                std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
            }
            IpAddr::V4(_) => unreachable!(),
        }
    );
    assert!(
        eventually(Duration::from_secs(5), || ban_of(&bans(&e.agent), &net)
            .is_some()),
        "no /64 ban {net}: {:?}",
        bans(&e.agent)
    );
    assert!(
        try_http(&e.lab, e.lab.v6(0, 2), dst6, get("/x"), T).is_none(),
        "the /64 is dropped"
    );
    let v4 = format!("{}/32", e.lab.v4(0, 2));
    assert!(ban_of(&bans(&e.agent), &v4).is_none(), "weak signal banned");
    let ev = e.agent.events();
    assert!(
        ev.iter()
            .any(|v| v["route"] == "GET /files" && v["action"] == "alert"),
        "{ev:#?}"
    );
}

#[test]
fn monitor_mode_reports_the_same_and_bans_nothing() {
    let e = env(&["--mode", "monitor"]);
    let attacker = e.lab.v4(0, 2);
    e.send(attacker, 0, sqli());
    assert!(
        eventually(Duration::from_secs(5), || e
            .agent
            .events()
            .iter()
            .any(|v| v["type"] == "ban")),
        "{:#?}",
        e.agent.events()
    );
    let ev = e.agent.events();
    let ban = ev.iter().find(|v| v["type"] == "ban").unwrap();
    assert_eq!(ban["enforced"], false);
    assert_eq!(ban["note"], "monitor mode");
    assert!(
        ev.iter()
            .any(|v| v["type"] == "violation" && v["action"] == "ban")
    );
    assert!(bans(&e.agent).is_empty());
    assert!(e.send(attacker, 0, get("/items?id=3")).is_some());
}

#[test]
fn allowlisted_clients_are_never_banned() {
    let e = env(&[]);
    let attacker = e.lab.v4(0, 2);
    e.agent.ok(&["allow", "add", &attacker.to_string()]);
    e.send(attacker, 0, sqli());
    assert!(
        eventually(Duration::from_secs(5), || e
            .agent
            .events()
            .iter()
            .any(|v| v["type"] == "ban" && v["note"] == "allowlisted")),
        "{:#?}",
        e.agent.events()
    );
    assert!(bans(&e.agent).is_empty());
    assert!(e.send(attacker, 0, get("/items?id=3")).is_some());
}

#[test]
fn a_changed_policy_file_is_applied_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    // SQL injection detection off (and nothing else that would fire).
    let off = "detectors:\n  sqli: {enabled: false}\n";
    std::fs::write(&file, off).unwrap();
    let e = env(&["--config", file.to_str().unwrap()]);
    let attacker = e.lab.v4(0, 2);
    e.send(attacker, 0, sqli());
    thread::sleep(Duration::from_millis(500));
    assert!(bans(&e.agent).is_empty(), "{:?}", bans(&e.agent));
    // An invalid edit is refused and the running policy stays.
    std::fs::write(&file, "detectors:\n  sqli: {enabled: maybe}\n").unwrap();
    assert!(
        eventually(Duration::from_secs(6), || e
            .agent
            .log_text()
            .contains("policy reload refused")),
        "{}",
        e.agent.log_text()
    );
    // Detection back on: picked up from the file by itself.
    std::fs::write(&file, "detectors:\n  sqli: {enabled: true, weight: 100}\n").unwrap();
    assert!(
        eventually(Duration::from_secs(6), || e
            .agent
            .log_text()
            .contains("detectors and scoring re-read")),
        "{}",
        e.agent.log_text()
    );
    e.send(attacker, 0, sqli());
    let want = format!("{attacker}/32");
    assert!(
        eventually(Duration::from_secs(5), || ban_of(&bans(&e.agent), &want)
            .is_some()),
        "{}",
        e.agent.log_text()
    );
}

/// HS256, `{"sub":"7","exp":4102444800}`, signed with the policy's secret.
const TOKEN_USER_7: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3IiwiZXhwIjo0MTAyNDQ0ODAwfQ.u4I8mT5Oc6K2J9qzjNwuQtEij1YWUMCzXekVRCzNs8w";
/// `alg: none`, claiming `role: admin`.
const TOKEN_ALG_NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI3IiwiZXhwIjo0MTAyNDQ0ODAwLCJyb2xlIjoiYWRtaW4ifQ.";

fn authed(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

#[test]
fn object_binding_flags_user_7_reading_user_8_and_valid_tokens_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "auth:\n  keys: [{alg: HS256, secret: tollgate-e2e-secret}]\nroutes:\n  - path: /users/{id}/**\n    bind: {param: id, claim: sub}\n",
    )
    .unwrap();
    let e = env(&["--config", file.to_str().unwrap()]);
    let (good, nosy) = (e.lab.v4(0, 2), e.lab.v4(1, 2));
    // A valid token on its own objects: served, never reported.
    for p in ["/users/7", "/users/7/orders", "/users/7/"] {
        let r = e.send(good, 0, authed(p, TOKEN_USER_7));
        assert!(r.is_some_and(|r| r.starts_with("HTTP/1.1 200")), "{p}");
    }
    // The same token reading user 8: flagged (one mismatch is not a ban).
    e.send(nosy, 1, authed("/users/8", TOKEN_USER_7));
    assert!(
        eventually(Duration::from_secs(5), || e
            .agent
            .events()
            .iter()
            .any(|v| v["rule"] == "authz.object_binding")),
        "{:#?}\n{}",
        e.agent.events(),
        e.agent.log_text()
    );
    let ev = e.agent.events();
    let v = ev
        .iter()
        .find(|v| v["rule"] == "authz.object_binding")
        .unwrap();
    assert_eq!(v["client"], nosy.to_string());
    assert_eq!(v["category"], "authz");
    assert_eq!(v["route"], "GET /users/{id}/**");
    assert_eq!(v["action"], "alert");
    assert!(
        ev.iter().all(|v| v["client"] != good.to_string()),
        "valid token reported: {ev:#?}"
    );
    assert!(bans(&e.agent).is_empty());
    assert!(e.send(good, 0, authed("/users/7", TOKEN_USER_7)).is_some());
    assert!(e.send(nosy, 1, authed("/users/7", TOKEN_USER_7)).is_some());
    // A forged token (alg none) is unambiguous: banned at once.
    let dst6 = SocketAddr::new(e.lab.v6(0, 1), e.server.port);
    try_http(
        &e.lab,
        e.lab.v6(0, 2),
        dst6,
        authed("/users/7", TOKEN_ALG_NONE),
        T,
    );
    assert!(
        eventually(Duration::from_secs(5), || bans(&e.agent)
            .iter()
            .any(|b| b["reason"] == "jwt.alg_none")),
        "{:?}",
        bans(&e.agent)
    );
}
