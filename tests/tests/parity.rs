//! The live agent and `tollgate detect` give the same verdict on the same
//! requests: tests/data/parity.jsonl (benign API calls with cookies and JSON
//! bodies, attacks of every gated category) sent over real TCP, each
//! request from its own address, on both hooks. And on long keep-alive
//! connections every attack request is judged, not just the first packets.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use tollgate_tests::{
    Agent, Lab, eventually,
    http::HttpServer,
    parity::{self, Case},
};

fn corpus() -> Vec<Case> {
    parity::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/parity.jsonl"))
}

fn same_verdicts(attach: &str) {
    let cases = corpus();
    let off = parity::offline(&cases);
    // The corpus means something: every attack is judged and no benign
    // request bans offline.
    for (c, v) in cases.iter().zip(&off) {
        if c.label == "attack" {
            assert_ne!(v.action, "allow", "{}: attack allowed offline", c.id);
        } else {
            assert_ne!(v.action, "ban", "{}: benign request banned offline", c.id);
        }
    }
    let live = parity::live(&cases, &["--attach", attach], 4);
    assert_eq!(live.failed, 0, "connections failed");
    let d = parity::disagreements(&off, &live.verdicts);
    assert!(
        d.is_empty(),
        "--attach {attach}: live and offline verdicts differ:\n{}",
        parity::report(&cases, &off, &live, 100)
    );
}

#[test]
fn live_and_offline_verdicts_agree_on_the_xdp_hook() {
    same_verdicts("xdp");
}

#[test]
fn live_and_offline_verdicts_agree_on_the_tc_hook() {
    same_verdicts("tc");
}

/// Reads one response (head and `Content-Length` body) from a keep-alive
/// connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = s.read(&mut b).expect("response");
        assert!(n > 0, "server closed the keep-alive connection");
        buf.extend_from_slice(&b[..n]);
    }
}

#[test]
fn every_attack_on_long_keepalive_connections_is_judged() {
    const CONNS: usize = 3;
    const PER_CONN: usize = 40;
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1)]);
    let port = server.port.to_string();
    // Monitor mode: the first attack would otherwise ban the client and end
    // its connection.
    let agent = Agent::start(&lab.host_if, &["--api-port", &port, "--mode", "monitor"]);
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);
    // One client per connection: the event log writes at most 20 events per
    // client and rule a minute, and one client's 24 attacks would exceed it.
    let peer = lab.peer_if();
    let srcs: Vec<std::net::IpAddr> = (0..CONNS)
        .map(|c| {
            let a = lab.v4(0, 30 + u8::try_from(c).unwrap());
            tollgate_tests::sh(&[
                "ip",
                "-n",
                &lab.ns,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                &peer,
            ]);
            a
        })
        .collect();
    // Each request has its own first path segment (`/k{conn}r{n}`), kept
    // as a word by the path templater, so its events name it in `route`.
    let request = |c: usize, n: usize| -> (bool, Vec<u8>) {
        let attack = n % 5 == 4;
        let seg = format!("k{c}r{n}");
        let raw = match (attack, n.is_multiple_of(2)) {
            (true, true) => format!(
                "GET /{seg}/items?id=1%27%20OR%20%271%27%3D%271 HTTP/1.1\r\nHost: api.test\r\nCookie: session=3f9a1c0e7b2d4a55\r\n\r\n"
            ),
            (true, false) => {
                let body = "{\"q\":\"x' OR 1=1 -- \"}";
                format!(
                    "POST /{seg}/search HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            (false, true) => format!(
                "GET /{seg}/items?page={n}&sort=name HTTP/1.1\r\nHost: api.test\r\nCookie: session=3f9a1c0e7b2d4a55\r\n\r\n"
            ),
            (false, false) => {
                let body = format!("{{\"note\":\"order {n}, leave at the door\",\"qty\":2}}");
                format!(
                    "POST /{seg}/search HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        (attack, raw.into_bytes())
    };
    let ns = format!("/run/netns/{}", lab.ns);
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let ns = ns.clone();
            let reqs: Vec<Vec<u8>> = (0..PER_CONN).map(|n| request(c, n).1).collect();
            let src = srcs[c];
            std::thread::spawn(move || {
                let f = std::fs::File::open(ns).unwrap();
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
                sock.connect_timeout(&dst.into(), Duration::from_secs(5))
                    .unwrap();
                let mut s: TcpStream = sock.into();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for r in reqs {
                    s.write_all(&r).unwrap();
                    let answer = read_response(&mut s);
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let route = |c: usize, n: usize| {
        let seg = format!("k{c}r{n}");
        if n.is_multiple_of(2) {
            format!("GET /{seg}/items")
        } else {
            format!("POST /{seg}/search")
        }
    };
    let attacks: Vec<String> = (0..CONNS)
        .flat_map(|c| (0..PER_CONN).map(move |n| (c, n)))
        .filter(|(c, n)| request(*c, *n).0)
        .map(|(c, n)| route(c, n))
        .collect();
    assert_eq!(attacks.len(), CONNS * PER_CONN / 5);
    let judged = |events: &[serde_json::Value], r: &str| {
        events
            .iter()
            .any(|e| e["type"] == "violation" && e["category"] == "sqli" && e["route"] == r)
    };
    let all = eventually(Duration::from_secs(10), || {
        let ev = agent.events();
        attacks.iter().all(|r| judged(&ev, r))
    });
    let ev = agent.events();
    let missed: Vec<&String> = attacks.iter().filter(|r| !judged(&ev, r)).collect();
    assert!(
        all && missed.is_empty(),
        "{} of {} attack requests on keep-alive connections were not judged: {missed:?}\nstatus: {}",
        missed.len(),
        attacks.len(),
        agent.json(&["status"])
    );
    // And nothing was said about the clean requests between them.
    let noisy: Vec<&serde_json::Value> = ev
        .iter()
        .filter(|e| e["type"] == "violation" && !attacks.iter().any(|r| e["route"] == *r))
        .collect();
    assert!(noisy.is_empty(), "clean requests reported: {noisy:#?}");
}
