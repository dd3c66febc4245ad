//! Live/offline parity (`cargo xtask bench parity CORPUS.jsonl`, and
//! tests/tests/parity.rs): every request of a labelled corpus is sent over
//! real TCP to a sink server behind an agent in monitor mode with the
//! built-in policy, each from its own source address (AnyIP: the client
//! namespace owns 198.19.0.0/16 through a `local` route), so no client state
//! carries from one request to the next. The live verdict of each request
//! (from the agent's events for its client) is compared with what
//! `tollgate detect --requests` says for the same bytes, where a line
//! without `src` is judged as from a fresh client too.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{Agent, Lab, sh, tollgate_bin};

/// One corpus line.
#[derive(Clone, Debug)]
pub struct Case {
    /// The corpus id.
    pub id: String,
    /// `attack` or `benign`.
    pub label: String,
    /// Attack category (`benign` for benign requests).
    pub category: String,
    /// The request bytes.
    pub raw: String,
}

/// A verdict: the action and the rules that matched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// `allow`, `alert` or `ban`.
    pub action: String,
    /// Rule ids, sorted, without repeats.
    pub rules: Vec<String>,
}

/// Reads a JSON Lines corpus (`id`, `label`, `category`, `raw`).
pub fn load(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()));
            let s = |k: &str| v[k].as_str().map(str::to_owned);
            Case {
                id: s("id").unwrap_or_else(|| v["id"].to_string()),
                label: s("label").unwrap_or_default(),
                category: s("category").unwrap_or_default(),
                raw: s("raw").unwrap_or_default(),
            }
        })
        .collect()
}

/// `tollgate detect --requests` on the cases, in order.
pub fn offline(cases: &[Case]) -> Vec<Verdict> {
    let mut input = String::new();
    for (i, c) in cases.iter().enumerate() {
        let line = serde_json::json!({"id": i, "raw": c.raw});
        let _ = writeln!(input, "{line}");
    }
    let mut child = Command::new(tollgate_bin())
        .args(["detect", "--requests", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let mut verdicts = vec![Verdict::default(); cases.len()];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(i) = v["id"].as_u64().and_then(|i| usize::try_from(i).ok()) else {
            continue;
        };
        let mut rules: Vec<String> = v["violations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["rule"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        rules.sort();
        rules.dedup();
        if let Some(slot) = verdicts.get_mut(i) {
            *slot = Verdict {
                action: v["action"].as_str().unwrap_or("?").to_owned(),
                rules,
            };
        }
    }
    assert!(
        verdicts.iter().all(|v| !v.action.is_empty()),
        "tollgate detect left requests without a verdict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdicts
}

/// The source address of request `i`: 198.19.0.0/16, one per request.
fn client(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap();
    assert!(i < 254 * 256, "at most {} requests per run", 254 * 256);
    Ipv4Addr::new(
        198,
        19,
        u8::try_from(i / 254).unwrap(),
        u8::try_from(i % 254 + 1).unwrap(),
    )
}

fn index(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    let o = v4.octets();
    (o[0] == 198 && o[1] == 19 && o[3] >= 1 && o[3] <= 254)
        .then(|| usize::from(o[2]) * 254 + usize::from(o[3]) - 1)
}

/// A sink: reads what a connection sends until the client half-closes
/// (bounded), answers 200 with an empty JSON object, closes. It never echoes
/// the request, so no response-side rule sees request bytes.
pub struct Sink {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Sink {
    /// Listens on `addr`.
    pub fn start(addr: IpAddr) -> Self {
        let l = TcpListener::bind(SocketAddr::new(addr, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut b = [0u8; 16384];
                            let mut total = 0usize;
                            while let Ok(n) = s.read(&mut b) {
                                total += n;
                                if n == 0 || total > 4 << 20 {
                                    break;
                                }
                            }
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                            );
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Removes the root namespace's route to the clients' block.
struct Route(String);

impl Drop for Route {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", &self.0]).status();
    }
}

/// What a live run gave.
pub struct Live {
    /// Per request, in corpus order.
    pub verdicts: Vec<Verdict>,
    /// Requests whose connection failed (never reached the server).
    pub failed: usize,
    /// Seconds spent sending.
    pub send_secs: f64,
    /// The agent's `status --json` at the end.
    pub status: serde_json::Value,
}

const BLOCK: &str = "198.19.0.0/16";

/// Sends every case over its own connection from its own address through
/// an agent in monitor mode started with `extra` flags, and reads the
/// verdicts from its events.
pub fn live(cases: &[Case], extra: &[&str], workers: usize) -> Live {
    let lab = Lab::new();
    let sink = Sink::start(lab.v4(0, 1));
    live_to(&lab, sink.port, None, cases, extra, workers, None)
}

/// [`live`] against a server the caller runs at `lab.v4(0, 1)` on `port`
/// (the agent's API port); with `tls`, each connection is HTTPS. With
/// `rate` (requests per second, all workers together), request `i` starts
/// no sooner than `i / rate` seconds after the first: two runs compared at
/// one rate compare verdicts, not how fast each side can send.
pub fn live_to(
    lab: &Lab,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    cases: &[Case],
    extra: &[&str],
    workers: usize,
    rate: Option<f64>,
) -> Live {
    // One run at a time in a process: every run routes the same block
    // (tests run in parallel threads).
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server = lab.v4(0, 1);
    sh(&[
        "ip", "-n", &lab.ns, "route", "replace", "local", BLOCK, "dev", "lo",
    ]);
    // Through the client's one address, not on-link: 19,514 neighbours
    // would overflow the host's neighbour table.
    sh(&[
        "ip",
        "route",
        "replace",
        BLOCK,
        "via",
        &lab.v4(0, 2).to_string(),
        "dev",
        &lab.host_if,
    ]);
    let _route = Route(BLOCK.into());
    let dst = SocketAddr::new(server, port);
    let port = port.to_string();
    let mut args = vec!["--api-port", port.as_str(), "--mode", "monitor"];
    args.extend_from_slice(extra);
    let agent = Agent::start(&lab.host_if, &args);

    let raws: Arc<Vec<Vec<u8>>> =
        Arc::new(cases.iter().map(|c| c.raw.clone().into_bytes()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let ns = format!("/run/netns/{}", lab.ns);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (raws, next, failed, ns) = (raws.clone(), next.clone(), failed.clone(), ns.clone());
            let tls = tls.cloned();
            thread::spawn(move || {
                let f = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(raw) = raws.get(i) else { break };
                    if let Some(r) = rate.filter(|r| *r > 0.0) {
                        let due = started + Duration::from_secs_f64(i as f64 / r);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                    }
                    if send_one(client(i), dst, raw, tls.as_ref()).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Judging may lag the sending: wait until the event log stops growing
    // (at most 120 s).
    let size = || events_size(&agent.state);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (size(), Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(250));
        let s = size();
        if s != last.0 {
            last = (s, Instant::now());
        }
    }
    let mut acc: Vec<(u8, Vec<String>)> = vec![(0, Vec::new()); cases.len()];
    for ev in read_events(&agent.state) {
        let Some(i) = ev["client"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .and_then(index)
        else {
            continue;
        };
        let Some(slot) = acc.get_mut(i) else { continue };
        // The engine's decision for the request, as the event gives it.
        let rank = match ev["action"].as_str() {
            Some("ban") => 2,
            Some("alert") => 1,
            _ => 0,
        };
        slot.0 = slot.0.max(rank);
        if ev["type"] == "violation"
            && let Some(r) = ev["rule"].as_str()
        {
            slot.1.push(r.to_owned());
        }
    }
    let verdicts = acc
        .into_iter()
        .map(|(rank, mut rules)| {
            rules.sort();
            rules.dedup();
            Verdict {
                action: ["allow", "alert", "ban"][usize::from(rank)].to_owned(),
                rules,
            }
        })
        .collect();
    Live {
        verdicts,
        failed: failed.load(Ordering::Relaxed),
        send_secs,
        status: agent.json(&["status"]),
    }
}

/// One request on its own connection: connect from `src`, send, half-close
/// (over TLS: close_notify), read the answer (bounded).
fn send_one(
    src: Ipv4Addr,
    dst: SocketAddr,
    raw: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src.into(), 0).into())?;
    sock.connect_timeout(&dst.into(), Duration::from_secs(3))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut b = [0u8; 512];
    let Some(cfg) = tls else {
        s.write_all(raw)?;
        s.shutdown(std::net::Shutdown::Write)?;
        while s.read(&mut b)? > 0 {}
        return Ok(());
    };
    let name = rustls::pki_types::ServerName::IpAddress(dst.ip().into());
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(cfg), name).map_err(std::io::Error::other)?;
    let mut t = rustls::Stream::new(&mut conn, &mut s);
    t.write_all(raw)?;
    t.conn.send_close_notify();
    t.flush()?;
    loop {
        match t.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A server that closes without close_notify: the answer is in.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A TLS client configuration that accepts any certificate (the benchmark's
/// servers use self-signed ones made at run time).
#[must_use]
#[expect(
    deprecated,
    reason = "ring is the provider already in the tree; a benchmark client needs no post-quantum key exchange"
)]
pub fn tls_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The event log and its rotated files, oldest first.
fn event_files(state: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(state)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rest = name.strip_prefix("events.jsonl")?;
                    let n = if rest.is_empty() {
                        0
                    } else {
                        rest.strip_prefix('.')?.parse().ok()?
                    };
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

fn events_size(state: &Path) -> u64 {
    event_files(state)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn read_events(state: &Path) -> Vec<serde_json::Value> {
    event_files(state)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Requests whose live and offline actions differ: (index, offline, live).
pub fn disagreements<'a>(
    off: &'a [Verdict],
    live: &'a [Verdict],
) -> Vec<(usize, &'a Verdict, &'a Verdict)> {
    off.iter()
        .zip(live)
        .enumerate()
        .filter(|(_, (o, l))| o.action != l.action)
        .map(|(i, (o, l))| (i, o, l))
        .collect()
}

/// Per-category figures of one side: requests, alerted or banned, banned.
fn tally(cases: &[Case], v: &[Verdict]) -> BTreeMap<String, (usize, usize, usize)> {
    let mut t = BTreeMap::new();
    for (c, v) in cases.iter().zip(v) {
        let e = t.entry(c.category.clone()).or_insert((0, 0, 0));
        e.0 += 1;
        e.1 += usize::from(v.action != "allow");
        e.2 += usize::from(v.action == "ban");
    }
    t
}

/// The table and the disagreements, as text.
pub fn report(cases: &[Case], off: &[Verdict], live: &Live, show: usize) -> String {
    let pct = |a: usize, n: usize| 100.0 * a as f64 / n.max(1) as f64;
    let (to, tl) = (tally(cases, off), tally(cases, &live.verdicts));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<18} {:>6}  {:>15} {:>15}  {:>15} {:>15}",
        "category", "n", "offline judged", "live judged", "offline banned", "live banned"
    );
    for (cat, o) in &to {
        let l = tl.get(cat).copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "{cat:<18} {:>6}  {:>14.2}% {:>14.2}%  {:>14.2}% {:>14.2}%",
            o.0,
            pct(o.1, o.0),
            pct(l.1, l.0),
            pct(o.2, o.0),
            pct(l.2, l.0)
        );
    }
    let _ = writeln!(
        s,
        "(judged: alerted or banned; for benign requests these are the false alarms)"
    );
    let d = disagreements(off, &live.verdicts);
    let _ = writeln!(
        s,
        "{} requests, {} connections failed, sent in {:.1} s; {} disagreements",
        cases.len(),
        live.failed,
        live.send_secs,
        d.len()
    );
    for (i, o, l) in d.iter().take(show) {
        let _ = writeln!(
            s,
            "  {} [{}] offline {} {:?} / live {} {:?}: {:.120?}",
            cases[*i].id, cases[*i].category, o.action, o.rules, l.action, l.rules, cases[*i].raw
        );
    }
    if d.len() > show {
        let _ = writeln!(s, "  ... and {} more", d.len() - show);
    }
    s
}

/// `cargo xtask bench parity CORPUS [AGENT FLAGS]`: the agent on its
/// default (XDP) hook unless `extra` says otherwise (`--attach tc`).
pub fn run(corpus: &str, extra: &[&str]) {
    let cases = load(Path::new(corpus));
    let t = Instant::now();
    let off = offline(&cases);
    let off_secs = t.elapsed().as_secs_f64();
    let live = live(&cases, extra, 16);
    println!(
        "parity on {corpus} (agent {}; offline took {off_secs:.1} s)",
        if extra.is_empty() {
            "--attach xdp".to_owned()
        } else {
            extra.join(" ")
        }
    );
    print!("{}", report(&cases, &off, &live, 60));
    println!(
        "agent sampling status: {}",
        live.status
            .get("sampling")
            .unwrap_or(&serde_json::Value::Null)
    );
}
