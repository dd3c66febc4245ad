//! Requests judged as the server receives them: taken at the socket (stream
//! verdict), so size, segmentation and keep-alive hide nothing. Each case
//! hid an injection from the packet sampler; each must now ban its sender.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use tollgate_tests::{
    Agent, Lab, eventually,
    http::{HttpServer, get, raw_http},
};

struct Env {
    lab: Lab,
    server: HttpServer,
    agent: Agent,
}

fn env() -> Env {
    env_with(&[])
}

fn env_with(extra: &[&str]) -> Env {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let mut args = vec!["--api-port", port.as_str()];
    args.extend_from_slice(extra);
    let agent = Agent::start(&lab.host_if, &args);
    Env { lab, server, agent }
}

impl Env {
    /// Sends `chunks` on one connection from the client in the lab's subnet
    /// `i` and asserts that the client ends up banned for an injection.
    fn assert_banned(&self, i: u32, chunks: Vec<Vec<u8>>, what: &str) {
        let src = self.lab.v4(i, 2);
        let dst = SocketAddr::new(self.lab.v4(i, 1), self.server.port);
        raw_http(&self.lab, src, dst, chunks);
        let banned = eventually(Duration::from_secs(5), || self.agent.policy_banned(src));
        assert!(
            banned,
            "{what}: {src} not banned\nstatus: {}\nevents: {:#?}\n{}",
            self.agent.json(&["status"]),
            self.agent.events(),
            self.agent.log_text()
        );
    }
}

/// Connects from `src` inside the lab's namespace (file `ns`); the calling
/// thread joins that namespace.
fn connect_in(ns: &str, src: std::net::IpAddr, dst: SocketAddr) -> std::net::TcpStream {
    let f = std::fs::File::open(ns).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect_timeout(&dst.into(), Duration::from_secs(3))
        .unwrap();
    sock.into()
}

const INJECTION: &str = "/items?id=1%27%20OR%20%271%27%3D%271";

#[test]
fn requests_are_taken_at_the_socket() {
    let e = env();
    let st = e.agent.json(&["status"]);
    assert_eq!(st["sampling"]["capture"], "socket", "{st}");
    assert!(
        e.agent.log_text().contains("taken at the socket"),
        "{}",
        e.agent.log_text()
    );
}

#[test]
fn a_request_padded_past_a_kilobyte_is_judged() {
    let e = env();
    // The injection in the request line, then a 1,000-byte cookie and more
    // padding: the head alone spans several packets' worth of sample.
    let cookie = "a".repeat(1000);
    let pad = "b".repeat(3000);
    let req = format!(
        "GET {INJECTION} HTTP/1.1\r\nHost: api.test\r\nCookie: session={cookie}\r\nX-Pad: {pad}\r\n\r\n"
    );
    e.assert_banned(0, vec![req.into_bytes()], "padded head");
    // The injection at the end of a 6 KB JSON body.
    let body = format!(
        "{{\"pad\":\"{}\",\"q\":\"1' OR '1'='1\"}}",
        "c".repeat(6000)
    );
    let req = format!(
        "POST /search HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    e.assert_banned(1, vec![req.into_bytes()], "padded body");
}

#[test]
fn a_request_in_tiny_segments_is_judged() {
    let e = env();
    let req = get(INJECTION);
    // `G`, `E`, `T`, ` ` alone, then 3-byte segments (each written with
    // TCP_NODELAY and a pause, so each leaves as its own segment).
    let mut chunks: Vec<Vec<u8>> = req[..4].iter().map(|b| vec![*b]).collect();
    chunks.extend(req[4..].chunks(3).map(<[u8]>::to_vec));
    e.assert_banned(0, chunks, "1-3 byte segments");
}

#[test]
fn every_request_on_a_keepalive_connection_is_judged() {
    let e = env();
    // Thirty ordinary requests, then the attack on the same connection:
    // far past the sampler's first packets, at any 1-in-N.
    let mut chunks: Vec<Vec<u8>> = (0..30).map(|i| get(&format!("/items/{i}"))).collect();
    chunks.push(get(INJECTION));
    e.assert_banned(0, chunks, "31st request on a keep-alive connection");
    // Nothing before the attack was reported.
    let ev = e.agent.events();
    assert!(
        ev.iter()
            .filter(|v| v["type"] == "violation")
            .all(|v| v["route"] == "GET /items"),
        "{ev:#?}"
    );
}

#[test]
fn a_request_after_a_long_body_is_judged_and_the_body_is_not_copied() {
    let e = env();
    // A 2 MiB upload whose body carries a decoy request line with a length
    // that would swallow what follows, then the attack on the same
    // connection: the body is passed over by its length, not parsed.
    let body_len = 2 << 20;
    let mut upload =
        format!("POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: {body_len}\r\n\r\n")
            .into_bytes();
    let start = upload.len();
    upload.resize(start + 64 * 1024, b'a');
    upload.extend_from_slice(b"\r\nPOST /decoy HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
    upload.resize(start + body_len, b'b');
    // The head and the body's start, a pause (the agent judges them and
    // tells the kernel where the body ends), then the rest.
    let rest = upload.split_off(start + 32 * 1024);
    let mut chunks = vec![upload];
    chunks.extend(std::iter::repeat_n(Vec::new(), 8));
    chunks.extend([rest, get(INJECTION)]);
    e.assert_banned(0, chunks, "request after a 2 MiB body");
    let st = e.agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert!(
        flows["body_bytes_passed"].as_u64().unwrap() > 1_900_000,
        "the body beyond the judged 16 KiB was passed over: {st}"
    );
    assert_eq!(flows["resyncs"], 0, "{st}");
    // The stream program stopped copying once told where the body ends:
    // far fewer 1 KiB records than the body has kilobytes.
    let taken = st["samples_kernel"]["taken"].as_u64().unwrap();
    assert!(taken < 1024, "{taken} records for a 2 MiB body: {st}");
}

#[test]
fn a_head_whose_body_never_comes_is_judged_while_the_connection_waits() {
    let e = env();
    let src = e.lab.v4(0, 2);
    let dst = SocketAddr::new(e.lab.v4(0, 1), e.server.port);
    // The head announces a body it never sends, and the connection stays
    // open: the server's route handler may already act on the head.
    let head = format!(
        "POST {INJECTION} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"a\":"
    );
    let ns = format!("/run/netns/{}", e.lab.ns);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = connect_in(&ns, src, dst);
        s.write_all(head.as_bytes()).unwrap();
        // Hold the connection open until the test is done (at most 8 s).
        let _ = rx.recv_timeout(Duration::from_secs(8));
        drop(s);
    });
    let banned = eventually(Duration::from_secs(6), || e.agent.banned(src));
    let _ = tx.send(());
    client.join().unwrap();
    assert!(
        banned,
        "a head without its body was not judged while the connection stayed open: {:#?}\n{}",
        e.agent.events(),
        e.agent.log_text()
    );
}

#[test]
fn a_body_sent_after_a_pause_is_judged() {
    let e = env();
    let src = e.lab.v4(0, 2);
    let dst = SocketAddr::new(e.lab.v4(0, 1), e.server.port);
    // A clean head, a pause longer than the agent waits before judging a
    // stalled request, then the body the server reads, with the injection.
    let body = r#"{"q":"1' UNION SELECT username,password FROM users--"}"#;
    let head = format!(
        "POST /items HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let ns = format!("/run/netns/{}", e.lab.ns);
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = connect_in(&ns, src, dst);
        s.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        let _ = paused_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(5));
        s.write_all(body.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    paused_rx
        .recv_timeout(Duration::from_secs(8))
        .expect("the client paused");
    // The stand-in for the head alone was judged and found nothing.
    assert!(!e.agent.banned(src), "a clean head banned its client");
    let _ = go_tx.send(());
    let banned = eventually(Duration::from_secs(5), || e.agent.policy_banned(src));
    client.join().unwrap();
    assert!(
        banned,
        "the body sent after a pause was not judged: {:#?}\n{}",
        e.agent.events(),
        e.agent.log_text()
    );
}

#[test]
fn the_tc_hook_judges_every_request_too() {
    // Hosts whose XDP hook is taken (Cilium) run with `--attach tc`: the
    // requests are taken at the socket there as well, and bans drop at tcx.
    let e = env_with(&["--attach", "tc"]);
    let st = e.agent.json(&["status"]);
    assert_eq!(st["sampling"]["capture"], "socket", "{st}");
    let mut chunks: Vec<Vec<u8>> = (0..12).map(|i| get(&format!("/items/{i}"))).collect();
    chunks.push(get(INJECTION));
    e.assert_banned(
        0,
        chunks,
        "13th request on a keep-alive connection, tc hook",
    );
    // The ban drops at the tc hook: a new connection from the client fails.
    let src = e.lab.v4(0, 2);
    let dst = SocketAddr::new(e.lab.v4(0, 1), e.server.port);
    assert!(
        tollgate_tests::http::try_http(&e.lab, src, dst, get("/items/1"), Duration::from_secs(1))
            .is_none(),
        "banned client still served with the tc hook"
    );
}

#[test]
fn a_lifted_client_is_not_banned_again_for_what_the_ban_held_back() {
    let e = env();
    let src = e.lab.v4(0, 2);
    let dst = SocketAddr::new(e.lab.v4(0, 1), e.server.port);
    let mut s = e.lab.in_client(move || {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
        sock.connect_timeout(&dst.into(), Duration::from_secs(5))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        std::net::TcpStream::from(sock)
    });
    s.write_all(&get(INJECTION)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || e.agent.banned(src)),
        "the attack was not banned: {:#?}",
        e.agent.events()
    );
    // Sent while banned: dropped at the NIC, then retransmitted by the
    // client's kernel until it gets through.
    s.write_all(&get(INJECTION)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    e.agent.ok(&["block", "rm", &format!("{src}/32")]);
    let held_back = eventually(Duration::from_secs(10), || {
        e.agent.events().iter().any(|v| {
            v["client"] == src.to_string()
                && v["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("predates the lift"))
        })
    });
    assert!(
        held_back,
        "the held-back request was not judged as the past: {:#?}",
        e.agent.events()
    );
    assert!(!e.agent.banned(src), "re-banned for what the ban held back");
    drop(s);
    // A new connection with a new attack is an offence again.
    e.assert_banned(0, vec![get(INJECTION)], "a new attack after the lift");
}
