//! Rate limits end to end: the real agent and CLI, XDP on a veth pair, a
//! flooding client and a well-behaved one in a client namespace, servers in
//! the root namespace. Every flood is bounded in packets and seconds.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{Agent, Lab, eventually};

/// A UDP server that counts datagrams and answers each with "ok".
struct UdpCounter {
    port: u16,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl UdpCounter {
    fn start(addrs: &[IpAddr]) -> Self {
        let first = UdpSocket::bind(SocketAddr::new(addrs[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut socks = vec![first];
        for a in &addrs[1..] {
            socks.push(UdpSocket::bind(SocketAddr::new(*a, port)).unwrap());
        }
        let got = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for s in socks {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        if buf[..n].starts_with(b"flood") {
                            got.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = s.send_to(b"ok", from);
                        }
                    }
                }
            });
        }
        Self { port, got, stop }
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP server that accepts and holds connections until the peer closes.
struct Holder {
    port: u16,
    open: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Holder {
    fn start(addrs: &[IpAddr]) -> Self {
        let first = TcpListener::bind(SocketAddr::new(addrs[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut ls = vec![first];
        for a in &addrs[1..] {
            ls.push(TcpListener::bind(SocketAddr::new(*a, port)).unwrap());
        }
        let open = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for l in ls {
            l.set_nonblocking(true).unwrap();
            let (open, stop) = (open.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            open.fetch_add(1, Ordering::Relaxed);
                            let (open, stop) = (open.clone(), stop.clone());
                            thread::spawn(move || {
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                                let mut b = [0u8; 64];
                                while !stop.load(Ordering::Relaxed) {
                                    match s.read(&mut b) {
                                        Ok(0) => break,
                                        Err(e)
                                            if e.kind() != std::io::ErrorKind::WouldBlock
                                                && e.kind() != std::io::ErrorKind::TimedOut =>
                                        {
                                            break;
                                        }
                                        _ => {}
                                    }
                                }
                                open.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Self { port, open, stop }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::new(src, 0).into()).ok()?;
    sock.connect_timeout(&dst.into(), timeout).ok()?;
    Some(sock.into())
}

#[test]
fn a_flood_gets_its_rate_and_a_neighbour_gets_everything() {
    let lab = Lab::new();
    let server = UdpCounter::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let agent = Agent::start(&lab.host_if, &[]);
    let port = server.port.to_string();
    agent.ok(&[
        "limits", "set", "--port", &port, "--pps", "200", "--burst", "20",
    ]);
    let shown = agent.json(&["limits", "show"]);
    assert_eq!(shown["ports"][&port]["pps"], 200, "{shown}");

    // The neighbour: request/response at ~25/s from another address.
    let (nsrc, ndst) = (lab.v4(0, 2), SocketAddr::new(lab.v4(0, 1), server.port));
    let answered = Arc::new(AtomicU64::new(0));
    let asked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let neighbour = {
        let (answered, asked, done) = (answered.clone(), asked.clone(), done.clone());
        let path = format!("/run/netns/{}", lab.ns);
        thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = UdpSocket::bind(SocketAddr::new(nsrc, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 16];
            while !done.load(Ordering::Relaxed) {
                asked.fetch_add(1, Ordering::Relaxed);
                s.send_to(b"hello", ndst).unwrap();
                if s.recv_from(&mut buf).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(40));
            }
        })
    };

    // The flood: ~1000 packets/s for 3 s from one address (3,000 packets).
    let (fsrc, fdst) = (lab.v4(1, 2), SocketAddr::new(lab.v4(1, 1), server.port));
    let elapsed = lab.in_client(move || {
        let s = UdpSocket::bind(SocketAddr::new(fsrc, 0)).unwrap();
        let start = Instant::now();
        for i in 0..3000u32 {
            let _ = s.send_to(b"flood", fdst);
            let due = Duration::from_micros(u64::from(i) * 1000);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        start.elapsed()
    });
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    neighbour.join().unwrap();

    let got = server.got.load(Ordering::Relaxed) as f64;
    let expected = 20.0 + 200.0 * elapsed.as_secs_f64();
    assert!(
        (got - expected).abs() <= expected * 0.15,
        "flood got {got} packets through in {elapsed:?}; expected {expected:.0} ± 15 %"
    );
    let (a, q) = (
        answered.load(Ordering::Relaxed),
        asked.load(Ordering::Relaxed),
    );
    assert!(q >= 50, "neighbour asked only {q}");
    assert!(
        a as f64 >= q as f64 * 0.99,
        "neighbour got {a} of {q} answers during the flood"
    );

    let top = agent.json(&["top", "-n", "5"]);
    let flooder = top
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client"] == fsrc.to_string())
        .unwrap_or_else(|| panic!("flooder not in top: {top}"));
    assert!(flooder["dropped"].as_u64().unwrap() > 2000, "{flooder}");
}

#[test]
fn a_syn_flood_is_cut_to_its_limit() {
    let lab = Lab::new();
    let holder = Holder::start(&[lab.v4(0, 1)]);
    let agent = Agent::start(&lab.host_if, &[]);
    let port = holder.port.to_string();
    agent.ok(&[
        "limits",
        "set",
        "--port",
        &port,
        "--syn-rate",
        "10",
        "--syn-burst",
        "5",
    ]);
    let (src, dst) = (lab.v4(0, 2), SocketAddr::new(lab.v4(0, 1), holder.port));
    // 60 connection attempts at once; each dropped SYN would only be retried
    // after a second, so within 400 ms only the burst (plus ~4 refills) gets in.
    let established = lab.in_client(move || {
        let socks: Vec<_> = (0..60)
            .filter_map(|_| {
                use socket2::{Domain, Socket, Type};
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
                s.bind(&SocketAddr::new(src, 0).into()).ok()?;
                s.set_nonblocking(true).ok()?;
                let _ = s.connect(&dst.into());
                Some(s)
            })
            .collect();
        thread::sleep(Duration::from_millis(400));
        socks.iter().filter(|s| s.peer_addr().is_ok()).count()
    });
    assert!(
        (5..=10).contains(&established),
        "{established} of 60 SYNs got through"
    );
    let stats = agent.json(&["stats"]);
    let syn_drops: u64 = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "syn-limited")
        .map(|c| c["packets"].as_u64().unwrap())
        .sum();
    assert!(syn_drops >= 50, "{stats}");
}

#[test]
fn a_client_at_its_connection_cap_cannot_open_more() {
    let lab = Lab::new();
    let holder = Holder::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let mut agent = Agent::start(&lab.host_if, &[]);
    let port = holder.port.to_string();
    agent.ok(&["limits", "set", "--port", &port, "--max-conns", "3"]);
    let (src, dst) = (lab.v4(0, 2), SocketAddr::new(lab.v4(0, 1), holder.port));
    let (other, odst) = (lab.v4(1, 2), SocketAddr::new(lab.v4(1, 1), holder.port));
    let t = Duration::from_millis(600);
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let opened = lab.in_client(move || {
        let mut n = 0;
        for _ in 0..3 {
            if let Some(s) = connect_from(src, dst, t) {
                h.lock().unwrap().push(s);
                n += 1;
            }
        }
        n
    });
    assert_eq!(opened, 3);
    assert!(eventually(Duration::from_secs(3), || holder
        .open
        .load(Ordering::Relaxed)
        == 3));
    assert!(
        lab.in_client(move || connect_from(src, dst, t).is_none()),
        "4th connection got through"
    );
    // The counts live in pinned maps, kept by the pinned sock_ops program:
    // an agent killed and restarted still knows this client holds 3.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    agent.spawn();
    assert!(
        lab.in_client(move || connect_from(src, dst, t).is_none()),
        "cap forgotten across an agent restart"
    );
    assert!(
        lab.in_client(move || connect_from(other, odst, t).is_some()),
        "another client was refused"
    );
    // Closing with RST frees a slot, as does a normal close.
    let s = held.lock().unwrap().pop().unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    assert!(
        eventually(Duration::from_secs(3), || lab
            .in_client(move || connect_from(src, dst, t).is_some())),
        "slot not freed after RST"
    );
    held.lock().unwrap().clear();
    assert!(
        eventually(Duration::from_secs(3), || {
            lab.in_client(move || {
                let a = connect_from(src, dst, t);
                let b = connect_from(src, dst, t);
                a.is_some() && b.is_some()
            })
        }),
        "slots not freed after close"
    );
}

#[test]
fn a_persistent_flooder_is_banned_with_reason_rate_limit() {
    let lab = Lab::new();
    let server = UdpCounter::start(&[lab.v4(1, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "rate_limit:\n  ports:\n    {}: {{ pps: 50, burst: 10 }}\n  escalation:\n    after: 2s\n    ttls: [90s, 10m]\n",
            server.port
        ),
    )
    .unwrap();
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    let (fsrc, fdst) = (lab.v4(1, 2), SocketAddr::new(lab.v4(1, 1), server.port));
    // Escalation bans only sources that completed a handshake (a flood's
    // source may be forged): this one did.
    assert!(lab.handshake(fsrc, lab.v4(1, 1)));
    // ~500 packets/s for up to 6 s, stopping once banned.
    let banned = Arc::new(AtomicBool::new(false));
    let b = banned.clone();
    let flood = lab.udp_flood(fsrc, fdst, b);
    let found = eventually(Duration::from_secs(8), || {
        agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| {
                b["address"] == fsrc.to_string()
                    && b["reason"] == "rate-limit"
                    && b["kind"] == "rate-limit"
            })
    });
    banned.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let bans = agent.json(&["block", "ls"]);
    assert!(found, "flooder not banned: {bans}\n{}", agent.log_text());
    let ttl = bans[0]["ttl_remaining_secs"].as_u64().unwrap();
    assert!(
        (80..=90).contains(&ttl),
        "first offence gets the first TTL: {ttl}"
    );
}
