//! Raw-packet TCP games (Ptacek & Newsham) against a real server: scapy, in
//! the client namespace, completes a real handshake with Python's
//! http.server and sends one SQL injection with a trick that makes a naive
//! reassembler see other bytes than the server reads. Each case checks what
//! the server read (its log) and what a user would check: a client whose
//! request reached the server as an attack is banned and its next
//! connection fails; a client whose attack bytes the server's kernel threw
//! away is not banned and is still served.
//!
//! The helper is tests/scripts/rawtcp.py, run with Debian's python3 and
//! scapy (`python3-scapy`, installed by `cargo xtask setup --test-deps`).

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use tollgate_tests::{
    Agent, Lab, eventually,
    http::{PyServer, get, raw_http, sqli, try_http},
    sh,
};

/// Debian's interpreter: the one `python3-scapy` installs for (a `python3`
/// earlier on PATH, e.g. pyenv's, lacks scapy).
const PYTHON: &str = "/usr/bin/python3";

/// The attack's query value (percent-encoded `1' OR '1'='1`).
const ATTACK: &str = "/items?id=1%27%20OR%20%271%27%3D%271";
/// What the server reads when the attack is `ATTACK` (its log shows the
/// request line as sent).
const ATTACK_SEEN: &str = "id=1%27%20OR%20%271%27%3D%271 ";

/// A harmless request line of the same length as the attack's.
fn benign_path() -> String {
    let head = "/items?id=1&page=";
    format!("{head}{}", "2".repeat(ATTACK.len() - head.len()))
}

struct Env {
    lab: Lab,
    port: u16,
    /// One per server address: IPv4 in subnet 0, IPv6 in /48s 0 and 1
    /// (IPv6 bans cover the client's /64, so two IPv6 cases need two).
    py: Vec<PyServer>,
    agent: Agent,
    host_mac: String,
}

fn env(extra: &[&str]) -> Env {
    let lab = Lab::new();
    // A free port on both server addresses: bind, note, release.
    let port = std::net::TcpListener::bind(SocketAddr::new(lab.v4(0, 1), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let py = [lab.v4(0, 1), lab.v6(0, 1), lab.v6(1, 1)]
        .into_iter()
        .map(|a| PyServer::start(SocketAddr::new(a, port)))
        .collect();
    let p = port.to_string();
    let mut args = vec!["--api-port", p.as_str()];
    args.extend_from_slice(extra);
    let agent = Agent::start(&lab.host_if, &args);
    // The client kernel knows nothing of scapy's connections and would reset
    // them: drop its RSTs to the server port, in the client namespace only
    // (scapy's own packets leave through a packet socket, past nftables).
    let nft = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &lab.ns, "nft"];
        v.extend_from_slice(args);
        sh(&v);
    };
    nft(&["add", "table", "inet", "tgraw"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "tgraw",
        "out",
        "{ type filter hook output priority 0; policy accept; }",
    ]);
    let p = port.to_string();
    nft(&[
        "add", "rule", "inet", "tgraw", "out", "tcp", "dport", &p, "tcp", "flags", "&", "rst",
        "==", "rst", "drop",
    ]);
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab.host_if))
        .unwrap()
        .trim()
        .to_owned();
    Env {
        lab,
        port,
        py,
        agent,
        host_mac,
    }
}

/// What rawtcp.py reports.
struct Run {
    out: serde_json::Value,
}

impl Env {
    /// A fresh client address (host `h`) on the client's veth end: IPv4 in
    /// subnet 0, IPv6 in /48 `v6` - 1 (`v6` 0: IPv4).
    fn client(&self, v6: u32, h: u8) -> IpAddr {
        let (src, len) = if v6 > 0 {
            (self.lab.v6(v6 - 1, u16::from(h)), 64)
        } else {
            (self.lab.v4(0, h), 24)
        };
        sh(&[
            "ip",
            "-n",
            &self.lab.ns,
            "addr",
            "add",
            &format!("{src}/{len}"),
            "dev",
            &self.lab.peer_if(),
            "nodad",
        ]);
        src
    }

    /// The server address in `src`'s subnet.
    fn server(&self, src: IpAddr) -> IpAddr {
        [self.lab.v4(0, 1), self.lab.v6(0, 1), self.lab.v6(1, 1)]
            .into_iter()
            .find(|a| match (a, src) {
                (IpAddr::V6(a), IpAddr::V6(s)) => a.segments()[..4] == s.segments()[..4],
                (a, s) => a.is_ipv4() && s.is_ipv4(),
            })
            .unwrap()
    }

    /// Runs one case of rawtcp.py from `src` and checks its handshake
    /// completed.
    fn raw(&self, src: IpAddr, case: &str, attack: &str, benign: &str, urgent: usize) -> Run {
        let urgent = urgent.to_string();
        let out = self.script(
            src,
            &[
                "--case", case, "--attack", attack, "--benign", benign, "--urgent", &urgent,
            ],
        );
        assert_eq!(out["handshake"], true, "{case}: no handshake: {out}");
        Run { out }
    }

    /// Runs rawtcp.py from `src` with `args` and returns its report
    /// (bounded: the script sends at most 60 packets in about 8 s;
    /// `timeout` ends it after 20 s).
    fn script(&self, src: IpAddr, args: &[&str]) -> serde_json::Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rawtcp.py");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.ns,
                "timeout",
                "20",
                PYTHON,
                script,
            ])
            .args(["--iface", &self.lab.peer_if()])
            .args(["--src", &src.to_string()])
            .args(["--dst", &self.server(src).to_string()])
            .args(["--dport", &self.port.to_string()])
            .args(["--dmac", &self.host_mac])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
            panic!(
                "rawtcp.py {args:?} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The request lines the server logged for `src`.
    fn server_read(&self, src: IpAddr) -> Vec<String> {
        let log: String = self.py.iter().map(PyServer::log).collect();
        let prefix = format!("{src} ");
        log.lines()
            .filter(|l| l.starts_with(&prefix) || l.starts_with(&format!("::ffff:{prefix}")))
            .map(str::to_owned)
            .collect()
    }

    /// Whether a ban covers `src` (`tollgate block ls`).
    fn banned(&self, src: IpAddr) -> bool {
        self.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| {
                b["cidr"]
                    .as_str()
                    .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|n| n.contains(&src))
            })
    }

    /// A new ordinary connection from `src` is served.
    fn served(&self, src: IpAddr) -> bool {
        let dst = SocketAddr::new(self.server(src), self.port);
        try_http(&self.lab, src, dst, get("/"), Duration::from_secs(1)).is_some()
    }

    /// Waits until the agent has judged everything sent before: a plain
    /// attack from a fresh client, sent now, is banned (requests are judged
    /// in the order the sockets received them).
    fn barrier(&self, h: u8) {
        let src = self.client(0, h);
        let dst = SocketAddr::new(self.lab.v4(0, 1), self.port);
        raw_http(&self.lab, src, dst, vec![sqli()]);
        assert!(
            eventually(Duration::from_secs(5), || self.banned(src)),
            "barrier client {src} was not banned: {}",
            self.diag()
        );
    }

    fn diag(&self) -> String {
        format!(
            "status: {}\nevents: {:#?}\nagent log: {}",
            self.agent.json(&["status"]),
            self.agent.events(),
            self.agent.log_text()
        )
    }

    /// The server read the attack from `src`, and `src` is banned and can
    /// no longer connect.
    fn expect_banned(&self, what: &str, src: IpAddr, run: &Run) {
        let read = self.server_read(src);
        assert!(
            read.iter().any(|l| l.contains(ATTACK_SEEN)),
            "{what}: the server did not read the attack (so the case tests nothing): {read:?} {}",
            run.out
        );
        assert!(
            eventually(Duration::from_secs(5), || self.banned(src)),
            "{what}: the server read an injection from {src} and Tollgate did not ban it\n{}\n{}",
            run.out,
            self.diag()
        );
        assert!(
            !self.served(src),
            "{what}: {src} is banned but a new connection was served"
        );
    }

    /// The server read only the benign request from `src`; `src` is not
    /// banned and is still served. Call after a [`Env::barrier`].
    fn expect_not_banned(&self, what: &str, src: IpAddr, run: &Run) {
        let read = self.server_read(src);
        assert!(
            !read.is_empty() && read.iter().all(|l| !l.contains(ATTACK_SEEN)),
            "{what}: the server did not read just the benign request (so the case tests \
             nothing): {read:?} {}",
            run.out
        );
        assert!(
            !self.banned(src),
            "{what}: the server never read an attack from {src}, yet Tollgate banned it \
             (a false ban)\n{}\n{}",
            run.out,
            self.diag()
        );
        assert!(self.served(src), "{what}: {src} is no longer served");
    }
}

fn req(path: &str) -> String {
    String::from_utf8(get(path)).unwrap()
}

#[test]
fn reordered_overlapping_and_fragmented_attacks_are_judged_as_the_server_reads_them() {
    let e = env(&[]);
    let attack = req(ATTACK);
    let benign = req(&benign_path());
    let cases: [(&str, u32); 6] = [
        ("plain", 0),
        ("out-of-order", 0),
        // Linux keeps the first copy of overlapping data: the attack.
        ("overlap-attack-first", 0),
        ("ipv4-fragments", 0),
        ("ipv6-fragments", 1),
        ("ipv6-ext-headers", 2),
    ];
    for (k, (case, v6)) in cases.into_iter().enumerate() {
        let src = e.client(v6, 20 + u8::try_from(k).unwrap());
        let run = e.raw(src, case, &attack, &benign, 0);
        e.expect_banned(case, src, &run);
        if case == "ipv6-ext-headers" {
            // The ban holds against the same trick: a SYN behind eight
            // extension headers gets no answer.
            let again = e.script(src, &["--case", case, "--syn-only"]);
            assert_eq!(
                again["handshake"], false,
                "a banned client completed a handshake behind 8 extension headers: {again}"
            );
        }
    }
}

#[test]
fn attack_bytes_the_server_kernel_discards_do_not_ban() {
    let e = env(&[]);
    let attack = req(ATTACK);
    let benign = req(&benign_path());
    let cases = [
        // Linux keeps the first copy: the server reads the benign one.
        "overlap-benign-first",
        "bad-tcp-checksum",
        "bad-ip-checksum",
        "no-ack-flag",
        "rst-data",
    ];
    let mut runs = Vec::new();
    for (k, case) in cases.into_iter().enumerate() {
        let src = e.client(0, 40 + u8::try_from(k).unwrap());
        runs.push((case, src, e.raw(src, case, &attack, &benign, 0)));
    }
    e.barrier(60);
    for (case, src, run) in &runs {
        e.expect_not_banned(case, *src, run);
    }
}

#[test]
fn urgent_data_is_judged_as_the_server_reads_it() {
    let e = env(&[]);
    // One byte of each request goes as urgent data (URG, the pointer just
    // past it). A receiver without SO_OOBINLINE may read the stream without
    // it: `1' OZR '1'='1` with the `Z` urgent then reads as an injection,
    // and `1' OR '1'='1` with the `R` urgent as harmless `1' O '1'='1`.
    // Whichever the server read, Tollgate must judge that.
    let hide = req("/items?id=1%27%20OZR%20%271%27%3D%271");
    let show = req(ATTACK);
    let wires = [
        (hide.clone(), hide.find("OZR").unwrap() + 1),
        (show.clone(), show.find("%20OR%20").unwrap() + 4),
    ];
    let mut runs = Vec::new();
    for (k, (wire, urgent)) in wires.into_iter().enumerate() {
        let src = e.client(0, 70 + u8::try_from(k).unwrap());
        let run = e.raw(src, "urgent", &wire, "", urgent);
        runs.push((src, wire, urgent, run));
    }
    e.barrier(72);
    for (src, wire, urgent, run) in &runs {
        let line = |r: &str| r.lines().next().unwrap_or_default().to_owned();
        let mut without = wire.clone();
        without.remove(*urgent);
        let read = e.server_read(*src);
        let kept = read.iter().any(|l| l.contains(&line(wire)));
        let dropped = read.iter().any(|l| l.contains(&line(&without)));
        assert!(
            kept || dropped,
            "the server read neither form of {:?}: {read:?} {}",
            line(wire),
            run.out
        );
        let what = format!(
            "urgent byte {:?} of {:?} (the server read it {})",
            char::from(wire.as_bytes()[*urgent]),
            line(wire),
            if kept { "inline" } else { "removed" }
        );
        if read.iter().any(|l| l.contains(ATTACK_SEEN)) {
            e.expect_banned(&what, *src, run);
        } else {
            e.expect_not_banned(&what, *src, run);
        }
    }
}
