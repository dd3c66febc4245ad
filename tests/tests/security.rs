//! Tollgate turned against its users, as an attacker would try it: forged
//! packets must never change who is banned. Raw frames are written onto the
//! client's veth end (AF_PACKET) with source addresses the sender does not
//! own; the same attack over a real connection still bans.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use nix::libc;
use tollgate_tests::{
    Agent, Lab, eventually,
    http::{HttpServer, sqli, try_http},
};

const T: Duration = Duration::from_secs(2);

fn banned(agent: &Agent, cidr: &str) -> bool {
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["cidr"] == cidr)
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP segment with `flags`, random-looking seq/ack, and a checksum that is
/// right for the pseudo-header `pseudo` unless `bad_sum`.
fn tcp_segment(
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
    pseudo: &[u8],
    bad_sum: bool,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&fastrand::u32(..).to_be_bytes());
    t.extend_from_slice(&fastrand::u32(..).to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let mut sum = fold(sum16(&t, sum16(pseudo, 0)));
    if bad_sum {
        sum ^= 0x5a5a;
    }
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

fn udp_datagram(sport: u16, dport: u16, payload: &[u8], pseudo: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let sum = fold(sum16(&u, sum16(pseudo, 0)));
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

/// An IPv4 packet (valid header checksum) carrying the transport segment
/// `make` builds for a pseudo-header (called twice: once to learn its length).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, make: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto, 0, 0]);
    let len = u16::try_from(make(&pseudo).len()).unwrap();
    pseudo[10..12].copy_from_slice(&len.to_be_bytes());
    let l4 = make(&pseudo);
    let total = u16::try_from(20 + l4.len()).unwrap();
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(&l4);
    h
}

/// The same for IPv6.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, make: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, proto]);
    let len = u32::try_from(make(&pseudo).len()).unwrap();
    pseudo[32..36].copy_from_slice(&len.to_be_bytes());
    let l4 = make(&pseudo);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&l4);
    h
}

/// Writes `packets` (IP packets) as Ethernet frames onto the client end of
/// the lab's veth pair, addressed to the host end.
fn inject(lab: &Lab, packets: Vec<Vec<u8>>) {
    let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab.host_if)).unwrap();
    let dst: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let peer = lab.peer_if();
    lab.in_client(move || {
        let name = std::ffi::CString::new(peer).unwrap();
        // SAFETY: plain libc calls on a socket this closure owns.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex != 0, "no client interface");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            for p in packets {
                let v6 = p[0] >> 4 == 6;
                let mut frame = dst.clone();
                frame.extend_from_slice(&[0x02, 0x54, 0x47, 0, 0, 9]);
                frame.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                frame.extend_from_slice(&p);
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = ifindex as i32;
                sll.sll_halen = 6;
                sll.sll_addr[..6].copy_from_slice(&dst);
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert!(n > 0, "sendto: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    });
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("not IPv4"),
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

#[test]
fn spoofed_segments_never_ban_with_requests_taken_at_the_socket() {
    spoofed_segments_never_ban(true);
}

#[test]
fn spoofed_segments_never_ban_with_requests_sampled_at_the_nic() {
    spoofed_segments_never_ban(false);
}

/// Forged PSH/ACK segments with an injection (v4 and v6, good and bad TCP
/// checksum), then the same request over real connections. `stream`: the
/// default capture at the socket (forged segments never reach the agent);
/// else NIC sampling, where each is reported as unverified.
fn spoofed_segments_never_ban(stream: bool) {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1), lab.v6(0, 1)]);
    let port = server.port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    // NIC sampling takes a packet without a handshake (no SYN seen) one in
    // `one_in`: every one here, so each forged segment is judged.
    std::fs::write(
        &policy,
        format!("sampling: {{stream: {stream}, one_in: 1}}\n"),
    )
    .unwrap();
    let agent = Agent::start(
        &lab.host_if,
        &["--api-port", &port, "--config", policy.to_str().unwrap()],
    );
    let st = agent.json(&["status"]);
    assert_eq!(
        st["sampling"]["capture"],
        if stream { "socket" } else { "nic" },
        "{st}"
    );
    let p = server.port;
    // Addresses in the lab's subnets that no host owns: the "victims".
    let (victim4, victim6) = (lab.v4(0, 77), lab.v6(0, 0x77));
    let (srv4, srv6) = (v4(lab.v4(0, 1)), v6(lab.v6(0, 1)));
    let req = sqli();
    let mut packets = Vec::new();
    for (i, bad_sum) in [(0u16, false), (1, true)] {
        // A PSH/ACK with no handshake, random seq/ack; then one with a bad
        // TCP checksum.
        packets.push(ipv4(v4(victim4), srv4, 6, |ph| {
            tcp_segment(41_000 + i, p, 0x18, &req, ph, bad_sum)
        }));
        packets.push(ipv6(v6(victim6), srv6, 6, |ph| {
            tcp_segment(41_000 + i, p, 0x18, &req, ph, bad_sum)
        }));
    }
    let skipped_before = st["samples_kernel"]["skipped"].as_u64().unwrap_or(0);
    inject(&lab, packets);

    if stream {
        // Requests come from sockets: the forged segments, which never make
        // one, are not even sampled at the NIC.
        assert!(
            eventually(Duration::from_secs(3), || {
                agent.json(&["status"])["samples_kernel"]["skipped"]
                    .as_u64()
                    .unwrap_or(0)
                    >= skipped_before + 4
            }),
            "forged segments were not skipped: {}",
            agent.json(&["status"])
        );
    }
    // With NIC sampling each is seen and reported, marked unverified...
    let seen = stream
        || eventually(Duration::from_secs(5), || {
            let ev = agent.events();
            [victim4, victim6].iter().all(|v| {
                ev.iter().any(|e| {
                    e["client"] == v.to_string()
                        && e["type"] == "violation"
                        && e["verified"] == false
                })
            })
        });
    assert!(
        seen,
        "spoofed requests not reported: {:#?}\n{}",
        agent.events(),
        agent.log_text()
    );
    // ... and nobody is banned for them, not the host, not the /64.
    thread::sleep(Duration::from_millis(700));
    let victim6_64 = format!("{}/64", lab.v6(0, 0));
    for cidr in [format!("{victim4}/32"), victim6_64] {
        assert!(
            !banned(&agent, &cidr),
            "forged source {cidr} banned: {}",
            agent.ok(&["block", "ls"])
        );
    }
    let ev = agent.events();
    assert!(
        !ev.iter().any(|e| e["type"] == "ban"),
        "a ban came from forged packets: {ev:#?}"
    );
    assert!(
        ev.iter()
            .filter(|e| e["verified"] == false)
            .all(|e| e["enforced"] == false && e["action"] != "ban"),
        "{ev:#?}"
    );
    let status = agent.json(&["status"]);
    assert!(
        stream || status["sampling"]["unverified"].as_u64().unwrap_or(0) >= 2,
        "status does not count unverified requests: {status}"
    );

    // The same request over a real connection still bans, within the usual
    // latency.
    let attacker = lab.v4(0, 2);
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);
    let _ = try_http(&lab, attacker, dst, sqli(), T);
    let want = format!("{attacker}/32");
    assert!(
        eventually(Duration::from_secs(5), || banned(&agent, &want)),
        "a real attacker was not banned: {:#?}\n{}",
        agent.events(),
        agent.log_text()
    );
    let ev = agent.events();
    let ban = ev
        .iter()
        .find(|e| e["type"] == "ban" && e["client"] == attacker.to_string())
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(ban["verified"], true, "{ban}");
    // IPv6 over a real connection: the /64 is banned.
    let attacker6 = lab.v6(0, 2);
    let dst6 = SocketAddr::new(lab.v6(0, 1), server.port);
    let _ = try_http(&lab, attacker6, dst6, sqli(), T);
    let want6 = format!("{}/64", lab.v6(0, 0));
    assert!(
        eventually(Duration::from_secs(5), || banned(&agent, &want6)),
        "a real IPv6 attacker was not banned: {:#?}",
        agent.events()
    );
}

#[test]
fn a_spoofed_flood_is_limited_but_its_source_is_not_banned() {
    let lab = Lab::new();
    let sink = UdpSocket::bind(SocketAddr::new(lab.v4(1, 1), 0)).unwrap();
    let port = sink.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "rate_limit:\n  ports:\n    {port}: {{ pps: 50, burst: 10 }}\n  escalation:\n    after: 1s\n    ttls: [90s]\n"
        ),
    )
    .unwrap();
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    let dst = v4(lab.v4(1, 1));

    // Forged: 2,000 datagrams over ~3 s from an address nobody in the lab
    // owns. The limiter drops most of them; escalation must not ban.
    let forged = lab.v4(1, 66);
    let frames: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            ipv4(v4(forged), dst, 17, |ph| {
                udp_datagram(40_000, port, b"flood", ph)
            })
        })
        .collect();
    for chunk in frames.chunks(100) {
        inject(&lab, chunk.to_vec());
        thread::sleep(Duration::from_millis(150));
    }
    thread::sleep(Duration::from_millis(500));
    let bans = agent.json(&["block", "ls"]);
    assert!(
        !bans
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["address"] == forged.to_string()),
        "forged flood source banned: {bans}"
    );
    let top = agent.json(&["top", "-n", "50"]);
    assert!(
        top.to_string().contains(&forged.to_string()),
        "the forged flood was not even limited: {top}"
    );

    // Honest: the same flood from a source that completed a handshake is
    // banned as before.
    let real = lab.v4(1, 2);
    assert!(lab.handshake(real, lab.v4(1, 1)), "handshake failed");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let fdst = SocketAddr::new(lab.v4(1, 1), port);
    let flood = lab.udp_flood(real, fdst, s2);
    let found = eventually(Duration::from_secs(8), || {
        agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["address"] == real.to_string() && b["kind"] == "rate-limit")
    });
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(
        found,
        "verified flooder not banned: {}\n{}",
        agent.json(&["block", "ls"]),
        agent.log_text()
    );
    drop(sink);
}
