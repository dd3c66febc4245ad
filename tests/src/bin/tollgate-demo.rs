//! `cargo xtask demo`: Tollgate protecting a sample API, narrated.
//!
//! A lab of network namespaces (198.18.0.0/15 only): a small HTTP API in the
//! root namespace, a well-behaved client and an abusive one on the other side
//! of a veth pair, the real `tollgate` agent attached to the API's interface.
//! Everything is torn down at the end, also on failure.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{Agent, Lab};

fn main() {
    let start = Instant::now();
    let say = |msg: &str| println!("[{:>6.2}s] {msg}", start.elapsed().as_secs_f64());

    say("building the lab: an API host, and a client namespace behind a veth pair");
    let lab = Lab::new();
    let api = lab.v4(0, 1);
    let good = lab.v4(0, 2);
    let bad = lab.v4(1, 2);
    let (port, stop) = serve_api(&[api, lab.v4(1, 1)]);
    say(&format!(
        "sample API listening on {api}:{port} and {}:{port}",
        lab.v4(1, 1)
    ));

    say(&format!(
        "starting `tollgate agent --iface {} --api-port {port}` (XDP on the API host's interface, \
         API payloads sampled and checked by the policy engine)",
        lab.host_if
    ));
    let port_s = port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port_s]);
    let status = agent.json(&["status"]);
    say(&format!(
        "agent up: attach={} program id={} mode={}",
        status["interfaces"][0]["attach"], status["interfaces"][0]["program_id"], status["mode"]
    ));

    let api_bad = lab.v4(1, 1);
    let round = |label: &str, bad_path: &str| {
        let g = request(&lab, good, api, port, "/api/v1/items?page=2");
        let b = request(&lab, bad, api_bad, port, bad_path);
        say(&format!(
            "{label}: good client {good} -> {}   abusive client {bad} -> {}",
            g.unwrap_or_else(|| "no answer (dropped)".into()),
            b.unwrap_or_else(|| "no answer (dropped)".into())
        ));
    };
    round("browsing", "/api/v1/items?q=select+a+union+rep");
    round("browsing", "/api/v1/items?page=3");
    let attack = "/api/v1/items?q=1'%20OR%20'1'='1";
    say(&format!(
        "the abusive client tries a SQL injection: GET {attack}"
    ));
    let sent = std::time::SystemTime::now();
    let b = request(&lab, bad, api_bad, port, attack);
    say(&format!(
        "  it got {} (sampled, not inline: the request itself reaches the API)",
        b.unwrap_or_else(|| "no answer".into())
    ));
    let mut ban = None;
    for _ in 0..100 {
        let out = agent.ok(&["events", "--json"]);
        ban = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["type"] == "ban");
        if ban.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let ban = ban.expect("the policy engine did not ban the attacker");
    let banned_at = humantime::parse_rfc3339_weak(ban["time"].as_str().unwrap_or("")).ok();
    if let Some(ms) = banned_at
        .and_then(|t| t.duration_since(sent).ok())
        .map(|d| d.as_secs_f64() * 1000.0)
    {
        say(&format!(
            "banned by the policy engine {ms:.1} ms after the request was sent (rule {}, TTL {} s); \
             `cargo xtask bench block-latency` measures this to the first dropped packet",
            ban["rule"], ban["ttl_secs"]
        ));
    }
    round("after   ", "/api/v1/items?page=4");
    round("after   ", "/api/v1/items?page=5");
    say(
        "the abusive client's packets now die in XDP, before the kernel allocates anything for them",
    );
    say("$ tollgate events");
    print!("{}", agent.ok(&["events"]));
    say("$ tollgate block ls");
    print!("{}", agent.ok(&["block", "ls"]));
    say("$ tollgate stats");
    print!("{}", agent.ok(&["stats"]));
    say(&format!("$ tollgate block rm {bad}"));
    print!("{}", agent.ok(&["block", "rm", &bad.to_string()]));
    round("lifted  ", "/api/v1/items?page=6");
    say("tearing down: agent stopped (programs detached), namespaces and links removed");
    drop(agent);
    stop.store(true, Ordering::Relaxed);
    drop(lab);
    say("done");
}

/// A tiny JSON API: answers every request with 200 and a small body.
fn serve_api(addrs: &[IpAddr]) -> (u16, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let first = TcpListener::bind(SocketAddr::new(addrs[0], 0)).unwrap();
    let port = first.local_addr().unwrap().port();
    let mut ls = vec![first];
    for a in &addrs[1..] {
        ls.push(TcpListener::bind(SocketAddr::new(*a, port)).unwrap());
    }
    for l in ls {
        l.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf);
                    let body = "{\"items\":[{\"id\":1},{\"id\":2}]}";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                } else {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        });
    }
    (port, stop)
}

/// One HTTP GET from `src` inside the client namespace; the status line, or
/// `None` when nothing came back within a second.
fn request(lab: &Lab, src: IpAddr, dst: IpAddr, port: u16, path: &str) -> Option<String> {
    let path = path.to_owned();
    lab.in_client(move || {
        use socket2::{Domain, Socket, Type};
        let to = SocketAddr::new(dst, port);
        let sock = Socket::new(Domain::for_address(to), Type::STREAM, None).ok()?;
        sock.bind(&SocketAddr::new(src, 0).into()).ok()?;
        sock.connect_timeout(&to.into(), Duration::from_secs(1))
            .ok()?;
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.lines().next().map(|l| format!("{l} (GET {path})"))
    })
}
