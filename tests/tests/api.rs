//! API visibility end to end: a real HTTP/1.1 server (keep-alive,
//! pipelining) in the root namespace, clients in a namespace, the agent
//! sampling the API port; what `tollgate tap` and `tollgate inventory` show.
//! Every test runs at both ingress hooks (`NAME::xdp`, `NAME::tc`; at TC
//! with requests sampled at the NIC, see `Hook::nic_args`).

use std::{
    io::Read as _,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use tollgate_tests::{
    Agent, Hook, Lab, eventually,
    http::{HttpServer, get, raw_http},
    tollgate_bin,
};

tollgate_tests::on_both_hooks!(
    tap_sees_plain_keepalive_pipelined_split_and_ipv6_requests,
    non_http_flows_are_counted_and_skipped,
    inventory_matches_what_was_called_and_finds_the_shadow_endpoint,
);

/// The agent at `hook`, sampling `port`; its policy file lives in `dir`.
fn agent(hook: Hook, lab: &Lab, port: &str, dir: &tempfile::TempDir) -> Agent {
    let mut args = vec!["--api-port".to_owned(), port.to_owned()];
    args.extend(hook.nic_args(dir.path()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&lab.host_if, &argv)
}

/// Starts `tollgate tap --json --count n`; returns a handle to collect lines.
fn tap(agent: &Agent, n: usize) -> std::process::Child {
    let child = Command::new(tollgate_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["tap", "--json", "--count", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it subscribe before traffic starts.
    thread::sleep(Duration::from_millis(300));
    child
}

fn collect(child: std::process::Child) -> Vec<serde_json::Value> {
    let out = wait_bounded(child, Duration::from_secs(10));
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_bounded(mut child: std::process::Child, t: Duration) -> Vec<u8> {
    let deadline = std::time::Instant::now() + t;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    out
}

fn find<'a>(
    events: &'a [serde_json::Value],
    dir: &str,
    path: &str,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["direction"] == dir && e["path"] == path)
}

fn tap_sees_plain_keepalive_pipelined_split_and_ipv6_requests(hook: Hook) {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v6(0, 1)]);
    let port = server.port.to_string();
    let conf = tempfile::tempdir().unwrap();
    let agent = agent(hook, &lab, &port, &conf);
    let (src, dst) = (lab.v4(0, 2), SocketAddr::new(lab.v4(0, 1), server.port));
    let (src6, dst6) = (lab.v6(0, 2), SocketAddr::new(lab.v6(0, 1), server.port));

    // 6 requests, each with its response: 12 events.
    let t = tap(&agent, 12);
    // Plain.
    let r = raw_http(&lab, src, dst, vec![get("/plain")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Keep-alive: two requests, one after the other, on one connection.
    raw_http(&lab, src, dst, vec![get("/keep/1"), get("/missing/2")]);
    // Pipelined: two requests in one segment.
    let mut both = get("/pipe/a");
    both.extend(get("/pipe/b"));
    raw_http(&lab, src, dst, vec![both]);
    // Split over two segments.
    let whole = b"POST /split HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"name\":\"x\"}\n".to_vec();
    raw_http(
        &lab,
        src,
        dst,
        vec![whole[..25].to_vec(), whole[25..].to_vec()],
    );
    let ev = collect(t);
    // IPv6 on its own tap.
    let t6 = tap(&agent, 2);
    raw_http(&lab, src6, dst6, vec![get("/six")]);
    let ev6 = collect(t6);

    for (path, status) in [
        ("/plain", 200),
        ("/keep/1", 200),
        ("/missing/2", 404),
        ("/pipe/a", 200),
        ("/pipe/b", 200),
        ("/split", 200),
    ] {
        let req =
            find(&ev, "request", path).unwrap_or_else(|| panic!("no request {path}: {ev:#?}"));
        assert_eq!(req["client"], src.to_string());
        assert!(req["method"] == "GET" || path == "/split");
        let resp =
            find(&ev, "response", path).unwrap_or_else(|| panic!("no response {path}: {ev:#?}"));
        assert_eq!(resp["status"], status, "{resp}");
        assert!(resp["latency_ms"].as_f64().is_some(), "{resp}");
        assert_eq!(resp["truncated"], false, "{resp}");
    }
    assert_eq!(find(&ev, "request", "/split").unwrap()["method"], "POST");
    let six = find(&ev6, "response", "/six").unwrap_or_else(|| panic!("{ev6:#?}"));
    assert_eq!(six["client"], src6.to_string());
    assert_eq!(six["status"], 200);
}

fn non_http_flows_are_counted_and_skipped(hook: Hook) {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1)]);
    let port = server.port.to_string();
    let conf = tempfile::tempdir().unwrap();
    let agent = agent(hook, &lab, &port, &conf);
    let (src, dst) = (lab.v4(0, 2), SocketAddr::new(lab.v4(0, 1), server.port));
    // A TLS ClientHello-looking record, then plain HTTP on another connection.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01];
    hello.extend([0u8; 64]);
    raw_http(&lab, src, dst, vec![hello]);
    raw_http(&lab, src, dst, vec![get("/after")]);
    assert!(
        eventually(Duration::from_secs(3), || {
            let st = agent.json(&["status"]);
            st["sampling"]["flows"]["tls"].as_u64().unwrap_or(0) >= 1
                && st["sampling"]["flows"]["requests"].as_u64().unwrap_or(0) >= 1
        }),
        "{}",
        agent.json(&["status"])
    );
    let inv = agent.json(&["inventory"]);
    let paths: Vec<&str> = inv
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec!["/after"],
        "only the HTTP flow is in the inventory"
    );
}

fn inventory_matches_what_was_called_and_finds_the_shadow_endpoint(hook: Hook) {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let conf = tempfile::tempdir().unwrap();
    let agent = agent(hook, &lab, &port, &conf);
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);
    let dst1 = SocketAddr::new(lab.v4(1, 1), server.port);
    for id in [1, 2, 3] {
        raw_http(&lab, lab.v4(0, 2), dst, vec![get(&format!("/users/{id}"))]);
    }
    raw_http(&lab, lab.v4(1, 2), dst1, vec![get("/users/77")]);
    let order = b"POST /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer abc\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    raw_http(&lab, lab.v4(0, 2), dst, vec![order]);
    raw_http(&lab, lab.v4(0, 2), dst, vec![get("/internal/debug")]);

    let inventory = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(3), || inventory()
            .as_array()
            .unwrap()
            .len()
            == 3),
        "{}",
        inventory()
    );
    let inv = inventory();
    let by = |m: &str, p: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == m && e["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{m} {p} missing: {inv}"))
    };
    let users = by("GET", "/users/{id}");
    assert_eq!(users["hits"], 4);
    assert_eq!(users["clients"], 2);
    assert_eq!(users["statuses"]["200"], 4);
    assert_eq!(users["credentials_seen"], false);
    assert_eq!(by("POST", "/orders")["credentials_seen"], true);
    by("GET", "/internal/debug");

    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.yaml");
    std::fs::write(
        &spec,
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /users/{userId}:\n    get: {responses: {'200': {description: ok}}}\n  /orders:\n    post: {deprecated: true, responses: {'201': {description: ok}}}\n  /legacy:\n    get: {responses: {'200': {description: ok}}}\n",
    )
    .unwrap();
    let out = agent.ok(&["inventory", "--json", "--openapi", spec.to_str().unwrap()]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let status = |m: &str, p: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == m && e["path"] == p)
            .map(|e| (e["status"].clone(), e["deprecated"].clone()))
    };
    assert_eq!(status("GET", "/users/{id}").unwrap().0, "documented");
    assert_eq!(
        status("POST", "/orders").unwrap(),
        ("documented".into(), true.into())
    );
    assert_eq!(status("GET", "/internal/debug").unwrap().0, "shadow");
    assert_eq!(status("GET", "/legacy").unwrap().0, "unused");
    // The observed skeleton is valid YAML naming its path parameter.
    let skel = agent.ok(&["inventory", "export", "--openapi"]);
    assert!(
        skel.contains("/users/{id}") && skel.contains("openapi: 3.0.3"),
        "{skel}"
    );
}
