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
    Agent, Hook, Lab, eventually,
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
    _conf: tempfile::TempDir,
}

fn env(extra: &[&str]) -> Env {
    env_at(Hook::Xdp, extra)
}

/// The agent at `hook` (at TC with requests sampled at the NIC, see
/// `Hook::nic_args`).
fn env_at(hook: Hook, extra: &[&str]) -> Env {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1)]);
    let port = server.port.to_string();
    let conf = tempfile::tempdir().unwrap();
    let nic = hook.nic_args(conf.path());
    let mut args = vec!["--api-port", &port];
    args.extend(nic.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let agent = Agent::start(&lab.host_if, &args);
    Env {
        lab,
        server,
        agent,
        _conf: conf,
    }
}

// The key tests also at the TC hook; the others (policy files, reloads,
// token binding) do not depend on the hook.
tollgate_tests::on_both_hooks!(
    injection_over_tcp_bans_the_client_at_the_nic,
    ipv6_attacker_is_banned_by_its_64_and_weak_signals_alone_are_not,
);

impl Env {
    fn dst(&self, i: u32) -> SocketAddr {
        SocketAddr::new(self.lab.v4(i, 1), self.server.port)
    }
    fn send(&self, src: IpAddr, i: u32, req: Vec<u8>) -> Option<String> {
        try_http(&self.lab, src, self.dst(i), req, T)
    }
}

fn injection_over_tcp_bans_the_client_at_the_nic(hook: Hook) {
    let e = env_at(hook, &[]);
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

fn ipv6_attacker_is_banned_by_its_64_and_weak_signals_alone_are_not(hook: Hook) {
    let e = env_at(hook, &[]);
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

/// `GET /metrics` on 127.0.0.1:`port`: the sample `name_and_labels`.
fn metric(port: u16, name_and_labels: &str) -> Option<f64> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

const REFUSED: &str = "tollgate_policy_reloads_total{result=\"refused\"}";

#[test]
fn an_emptied_truncated_or_invalid_policy_file_is_refused_and_reported() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    std::fs::write(&feed, format!("{}\n", lab.v4(1, 7))).unwrap();
    let file = dir.path().join("policy.yaml");
    let allowed = lab.v4(0, 3);
    std::fs::write(
        &file,
        format!(
            "mode: enforce\nallowlist: [{allowed}]\nfeeds:\n  - {{name: tg-feed, path: {}}}\n",
            feed.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        &lab.host_if,
        &["--config", file.to_str().unwrap(), "--metrics-addr", &addr],
    );
    let feed_ban = format!("{}/32", lab.v4(1, 7));
    assert!(eventually(Duration::from_secs(10), || ban_of(
        &bans(&agent),
        &feed_ban
    )
    .is_some()));
    let protected = |agent: &Agent| {
        let st = agent.json(&["status"]);
        assert_eq!(st["mode"], "enforce", "{st}");
        assert!(ban_of(&bans(agent), &feed_ban).is_some());
        let allows = agent.json(&["allow", "ls"]);
        assert!(
            allows
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["cidr"] == format!("{allowed}/32")),
            "{allows}"
        );
    };

    // Saved by the watcher: emptied, comments only, invalid, half written.
    let bad_files = [
        ("", "empty"),
        ("\n   \n# emptied by a botched deploy\n", "only comments"),
        ("mode: monitor\nallowlist: [0.0.0.0/0]\n", "allowlist[0]"),
        ("mode: monitor\nfeeds:\n  - {name: tg-feed, pa", "line"),
    ];
    for (n, (text, why)) in bad_files.iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        let want = (n + 1) as f64;
        assert!(
            eventually(Duration::from_secs(10), || metric(port, REFUSED)
                .is_some_and(|v| v >= want)),
            "{text:?} not refused: {}",
            agent.log_text()
        );
        protected(&agent);
        let st = agent.json(&["status"]);
        let reason = st["policy_refused"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{text:?}: {st}");
        assert!(st["policy_refused"]["at"].as_u64().unwrap_or(0) > 0, "{st}");
    }
    let human = agent.ok(&["status"]);
    assert!(human.contains("last policy reload refused"), "{human}");
    assert!(agent.log_text().contains("policy reload refused"));

    // Asked for: the reason, exit 1.
    std::fs::write(&file, "").unwrap();
    let out = agent.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    // Deep nesting parses in quadratic time: refused before parsing, and
    // the control socket keeps answering.
    let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(&file, deep).unwrap();
    let t = std::time::Instant::now();
    let out = agent.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nested deeper"));
    agent.ok(&["status"]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    protected(&agent);

    // A valid file that lifts protection is applied, with a warning.
    std::fs::write(&file, "mode: monitor\n").unwrap();
    let out = agent.cli(&["policy", "reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(agent.json(&["status"])["mode"], "monitor");
    assert!(ban_of(&bans(&agent), &feed_ban).is_none());
    let log = agent.log_text();
    let warn = log
        .lines()
        .find(|l| l.contains("lifts protection"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warn.contains("WARN"), "{warn}");
    for what in ["enforce -> monitor", "feed tg-feed removed"] {
        assert!(warn.contains(what), "{warn}");
    }
}

#[test]
fn policy_check_refuses_what_the_agent_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(tollgate_bin())
            .args(["policy", "check"])
            .arg(&f)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (text, why) in [
        ("allowlist: [0.0.0.0/0]\n", "allowlist[0]"),
        ("metrics: {listen: '0.0.0.0:9477'}\n", "metrics.listen"),
        ("", "empty"),
        ("# just a comment\n", "empty"),
        (&format!("a: {}\n", "[".repeat(5000)), "nested deeper"),
        ("mode: enforce\n\u{1b}[2J: 1\n", "p.yaml"),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, Some(1), "{text:?}: {err}");
        assert!(err.contains(why), "{text:?}: {err}");
        assert!(!err.contains('\u{1b}'), "{err:?}");
    }
    let (code, err) =
        check("mode: enforce\nmetrics: {listen: '0.0.0.0:9477', allow_remote: true}\n");
    assert_eq!(code, Some(0), "{err}");
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, format!("mode: enforce\n{}", "#\n".repeat(3 << 20))).unwrap();
    let out = Command::new(tollgate_bin())
        .args(["policy", "check"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 4 MiB"));
}
