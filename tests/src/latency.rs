//! `cargo xtask bench block-latency`: time from an attacker's offending
//! request to its first dropped packet, through the whole path (XDP sampler
//! -> ring buffer -> reassembly -> detectors -> scoring -> kernel blocklist).
//!
//! Per trial: the attacker (in the lab namespace) opens a connection to a
//! real HTTP server, notes the time and sends one SQL injection request,
//! then sends numbered UDP probes to the server every ~50 µs. A receiver in
//! the root namespace records which probes arrived. The first probe that
//! never arrived, after which none did, is the first dropped packet; its
//! send time minus the request's is the latency. Then the ban is lifted and
//! the next trial starts. Bounded: at most 1 s of probes per trial.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    Agent, Lab, eventually,
    http::{HttpServer, get},
};

/// Longest a trial probes.
const PROBE_FOR: Duration = Duration::from_secs(1);
/// Probe spacing.
const PROBE_EVERY: Duration = Duration::from_micros(50);

/// Runs `trials` trials; prints min, median, p90, p99, max.
pub fn run(trials: usize) {
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let attacker = lab.v4(0, 2);
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);

    let sink = ProbeSink::start(lab.v4(0, 1));
    let (seen, arrived, probe_dst) = (sink.seen.clone(), sink.arrived.clone(), sink.addr);

    let mut lat = Vec::new();
    let mut failed = 0;
    for t in 0..trials {
        seen.lock().unwrap().clear();
        arrived.store(0, Ordering::Relaxed);
        let a = arrived.clone();
        let offsets = lab.in_client(move || trial(attacker, dst, probe_dst, a));
        // Let stragglers arrive.
        thread::sleep(Duration::from_millis(30));
        let got = std::mem::take(&mut *seen.lock().unwrap());
        let last = got.iter().copied().max();
        match first_dropped(&got, offsets.len()) {
            Some(i) => lat.push(offsets[i]),
            None => {
                failed += 1;
                eprintln!("trial {t}: no drop within {PROBE_FOR:?} (last probe seen {last:?})");
            }
        }
        let cidr = format!("{attacker}/32");
        // The probes stopped because of the policy ban, not for another reason.
        let bans = agent.ok(&["block", "ls", "--json"]);
        assert!(
            bans.contains(&cidr) && bans.contains("\"policy\""),
            "trial {t}: probes stopped but no policy ban: {bans}"
        );
        // Lift the ban and wait until the attacker's packets pass again.
        let _ = agent.cli(&["block", "rm", &cidr]);
        assert!(
            eventually(Duration::from_secs(3), || {
                !agent.ok(&["block", "ls", "--json"]).contains(&cidr)
            }),
            "ban not lifted"
        );
    }
    sink.stop();
    report(&mut lat, failed, trials);
}

/// The attacker's side: request, then probes. Returns each probe's send
/// time after the request.
fn trial(
    src: IpAddr,
    dst: SocketAddr,
    probe_dst: SocketAddr,
    arrived: Arc<AtomicU32>,
) -> Vec<Duration> {
    use std::io::Write as _;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect_timeout(&dst.into(), Duration::from_secs(2))
        .unwrap();
    let mut s: std::net::TcpStream = sock.into();
    let req = get("/items?id=1%27%20OR%20%271%27%3D%271");
    let t0 = Instant::now();
    s.write_all(&req).unwrap();
    let offsets = probe(src, probe_dst, t0, &arrived);
    drop(s);
    offsets
}

/// The receiving end of the probes: records each probe's number.
pub(crate) struct ProbeSink {
    /// Probe numbers received, in arrival order.
    pub seen: Arc<Mutex<Vec<u32>>>,
    /// One past the highest probe number received.
    pub arrived: Arc<AtomicU32>,
    /// Where probes go.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl ProbeSink {
    /// Listens on a free UDP port of `ip` (in the root namespace).
    pub(crate) fn start(ip: IpAddr) -> Self {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = udp.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
        let arrived = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, arrived) = (seen.clone(), stop.clone(), arrived.clone());
            thread::spawn(move || {
                let mut b = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = udp.recv_from(&mut b)
                        && n >= 4
                    {
                        let seq = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        seen.lock().unwrap().push(seq);
                        arrived.fetch_max(seq + 1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            seen,
            arrived,
            addr,
            stop,
            thread,
        }
    }

    /// Stops listening.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Sends numbered UDP probes from `src` to `probe_dst` every
/// [`PROBE_EVERY`] until some 20 ms of them in a row went missing (or
/// [`PROBE_FOR`] passed). Returns each probe's send time after `t0`.
pub(crate) fn probe(
    src: IpAddr,
    probe_dst: SocketAddr,
    t0: Instant,
    arrived: &AtomicU32,
) -> Vec<Duration> {
    probe_paced(src, probe_dst, t0, arrived, Pace::Spin)
}

/// How probes are spaced.
#[derive(Clone, Copy)]
pub(crate) enum Pace {
    /// Every [`PROBE_EVERY`], spinning in between: the finest resolution,
    /// for one core's worth of CPU.
    Spin,
    /// Every [`SLEPT_EVERY`], sleeping in between (with a 1 µs timer
    /// slack): for a benchmark whose other processes need that core (the
    /// fleet: 20 agents and 3 etcd members on 2 cores).
    Sleep,
}

/// Probe spacing of [`Pace::Sleep`].
pub(crate) const SLEPT_EVERY: Duration = Duration::from_micros(100);

/// [`probe`], spaced as `pace` says.
pub(crate) fn probe_paced(
    src: IpAddr,
    probe_dst: SocketAddr,
    t0: Instant,
    arrived: &AtomicU32,
    pace: Pace,
) -> Vec<Duration> {
    let udp = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
    let every = match pace {
        Pace::Spin => PROBE_EVERY,
        Pace::Sleep => {
            // The default 50 µs slack would make every sleep that late.
            let _ = nix::sys::prctl::set_timerslack(1000);
            SLEPT_EVERY
        }
    };
    // Some 20 ms of probes in a row gone: the ban is in, stop early.
    let gone = u32::try_from(20_000 / every.as_micros()).unwrap_or(400);
    let mut offsets = Vec::new();
    let mut seq = 0u32;
    while t0.elapsed() < PROBE_FOR {
        let at = t0.elapsed();
        let _ = udp.send_to(&seq.to_le_bytes(), probe_dst);
        offsets.push(at);
        seq += 1;
        let next = at + every;
        match pace {
            Pace::Spin => {
                while t0.elapsed() < next {
                    std::hint::spin_loop();
                }
            }
            Pace::Sleep => {
                if let Some(d) = next.checked_sub(t0.elapsed()) {
                    thread::sleep(d);
                }
            }
        }
        if seq.saturating_sub(arrived.load(Ordering::Relaxed)) > gone {
            break;
        }
    }
    offsets
}

/// Index of the first probe after which nothing arrived (and that did not
/// arrive itself); `None` when the last probes still arrived.
pub(crate) fn first_dropped(seen: &[u32], sent: usize) -> Option<usize> {
    first_dropped_after(seen, sent, 200)
}

/// [`first_dropped`] when `gone` probes unanswered at the end make a drop.
pub(crate) fn first_dropped_after(seen: &[u32], sent: usize, gone: usize) -> Option<usize> {
    let last_seen = seen.iter().copied().max().map_or(0, |m| m as usize + 1);
    // Enough probes went unanswered at the end to call it a drop, not loss.
    (sent.saturating_sub(last_seen) >= gone).then_some(last_seen)
}

fn report(lat: &mut [Duration], failed: usize, trials: usize) {
    summary(lat, "block latency", "request sent -> first dropped packet");
    println!("  goal: median <= 5 ms, p99 <= 20 ms; trials without a drop: {failed} of {trials}");
}

/// Prints `what` over `lat` (sorted here): min, median, p90, p99, max.
pub(crate) fn summary(lat: &mut [Duration], what: &str, from_to: &str) {
    summary_every(lat, what, from_to, PROBE_EVERY);
}

/// [`summary`] for probes every `every`.
pub(crate) fn summary_every(lat: &mut [Duration], what: &str, from_to: &str, every: Duration) {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            Duration::ZERO
        } else {
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i.min(lat.len() - 1)]
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what} over {} trials ({from_to}; probes every {} us):",
        lat.len(),
        every.as_micros()
    );
    println!(
        "  min {:.2} ms, median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.0)),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
}
