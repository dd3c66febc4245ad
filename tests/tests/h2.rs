//! HTTP/2 cleartext (h2c, prior knowledge) taken at the socket and decoded
//! in userspace: `nghttp` and `h2load` against `nghttpd` in the lab. The
//! same detectors judge each stream; an injection bans its client at XDP,
//! a benign client keeps working, and the inventory lists the routes with
//! the right counts on a long-lived connection.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;
use tollgate_tests::{
    Agent, Lab, eventually,
    h2::{Nghttpd, h2load, nghttp},
};

fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("http://{addr}:{port}{path}")
}

fn policy_banned(agent: &Agent, ip: IpAddr) -> bool {
    let want = format!("{ip}/32");
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["cidr"] == want && b["kind"] == "policy")
}

fn hits(inv: &Value, method: &str, path: &str) -> u64 {
    inv.as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == method && e["path"] == path)
        .and_then(|e| e["hits"].as_u64())
        .unwrap_or(0)
}

#[test]
fn an_injection_over_h2c_bans_its_client_and_a_benign_one_keeps_working() {
    let lab = Lab::new();
    let server = Nghttpd::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let (to_attacker_side, to_benign_side) = (lab.v4(0, 1), lab.v4(1, 1));

    // Benign: three requests on one connection.
    let (out, codes) = nghttp(
        &lab,
        &[
            url(to_benign_side, server.port, "/hello"),
            url(to_benign_side, server.port, "/index.html"),
            url(to_benign_side, server.port, "/items?id=5"),
        ],
    );
    assert_eq!(codes, [200, 200, 200], "{out:?}");
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || hits(&inv(), "GET", "/hello")
            == 1
            && hits(&inv(), "GET", "/items") == 1),
        "h2c routes not in the inventory: {}\nstatus: {}\n{}",
        inv(),
        agent.json(&["status"]),
        agent.log_text()
    );

    // The injection, after a benign request on the same connection.
    let (out, codes) = nghttp(
        &lab,
        &[
            url(to_attacker_side, server.port, "/hello"),
            url(
                to_attacker_side,
                server.port,
                "/items?id=1%27%20OR%20%271%27%3D%271",
            ),
        ],
    );
    assert_eq!(codes.first(), Some(&200), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || policy_banned(&agent, attacker)),
        "{attacker} not banned\nevents: {:#?}\nstatus: {}\n{}",
        agent.events(),
        agent.json(&["status"]),
        agent.log_text()
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == attacker.to_string()
            && e["route"].as_str().is_some_and(|r| r.contains("/items"))
            && e["category"] == "sqli"),
        "no SQL injection event on the h2 route from {attacker}: {ev:#?}"
    );
    // Its next connection is dropped at XDP; the benign client still works.
    let (out, codes) = nghttp(&lab, &[url(to_attacker_side, server.port, "/hello")]);
    assert!(codes.is_empty(), "banned client answered: {out:?}");
    let (out, codes) = nghttp(&lab, &[url(to_benign_side, server.port, "/hello")]);
    assert_eq!(codes, [200], "{out:?}");
    assert!(
        !policy_banned(&agent, benign),
        "{}",
        agent.json(&["block", "ls"])
    );
    let st = agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert!(flows["h2_connections"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(flows["h2_lost"], 0, "{st}");
    assert_eq!(flows["h2_unknown"], 0, "{st}");
    assert_eq!(flows["unparseable"], 0, "{st}");
}

#[test]
fn a_long_lived_connection_keeps_every_path() {
    let lab = Lab::new();
    let server = Nghttpd::start(&[lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let to = lab.v4(1, 1);
    // 300 requests on one connection, ten at a time, alternating two paths:
    // every later header block refers to the HPACK table the first built.
    let out = h2load(
        &lab,
        300,
        1,
        &[
            url(to, server.port, "/hello"),
            url(to, server.port, "/index.html"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 succeeded"),
        "h2load: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let i = inv();
            hits(&i, "GET", "/hello") == 150 && hits(&i, "GET", "/index.html") == 150
        }),
        "inventory: {}\nstatus: {}",
        inv(),
        agent.json(&["status"])
    );
    // Nothing else was made up.
    assert_eq!(inv().as_array().unwrap().len(), 2, "{}", inv());
    let st = agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert_eq!(flows["h2_connections"], 1, "{st}");
    assert_eq!(flows["h2_unknown"], 0, "{st}");
    assert_eq!(flows["requests"], 300, "{st}");
}
