//! `tollgate detect` (offline replay through the agent's engine), `tollgate
//! events` and `tollgate policy check`.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    path::Path,
    process::ExitCode,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_detect::{
    Action, Kind, Parsed, Request as HttpRequest, classify, parse_request_final,
};

use super::args::{DetectArgs, EventsArgs};
use crate::{
    api::{
        flows::Flows,
        sample::{Direction, Sample},
    },
    client,
    engine::{Decision, Pipeline},
    policy::Policy,
    proto::Request,
};

/// One input line of `--requests`.
#[derive(Deserialize)]
struct RequestLine {
    id: Value,
    raw: String,
    #[serde(default)]
    src: Option<String>,
}

/// One output line.
#[derive(Serialize)]
struct Verdict<'a> {
    id: Value,
    violations: Vec<ViolationOut<'a>>,
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<IpAddr>,
    /// The client's score after this request (with `src`).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ViolationOut<'a> {
    rule: &'a str,
    category: &'a str,
    score: u32,
    location: String,
    evidence: &'a str,
}

fn verdict(id: Value, src: Option<IpAddr>, d: &Decision) -> Verdict<'_> {
    Verdict {
        id,
        violations: d
            .violations
            .iter()
            .map(|v| ViolationOut {
                rule: v.rule,
                category: v.category.as_str(),
                score: v.score,
                location: crate::agent::enforce::location_name(&v.location),
                evidence: &v.evidence,
            })
            .collect(),
        action: d.action,
        src,
        client_score: src.map(|_| (d.client_score * 100.0).round() / 100.0),
        error: None,
    }
}

fn print(v: &impl Serialize) {
    if let Ok(s) = serde_json::to_string(v) {
        println!("{s}");
    }
}

/// `tollgate detect`.
#[must_use]
pub fn detect(args: &DetectArgs) -> ExitCode {
    let mut policy = match args.policy.as_deref().map(Policy::load).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            return super::render::fail(&e, 2);
        }
    };
    if let Some(d) = &args.descriptor_set {
        // As the agent takes its flag: read when the pipeline is built.
        policy.grpc.descriptor_set = Some(d.clone());
        policy.grpc.schema = None;
    }
    let mut pipeline = match Pipeline::from_policy(&policy) {
        Ok(p) => p,
        Err(e) => {
            return super::render::fail(format!("{e:#}"), 2);
        }
    };
    let res = match (&args.requests, &args.pcap) {
        (Some(path), _) => replay_requests(path, &mut pipeline),
        (None, Some(path)) => replay_pcap(path, &mut pipeline),
        (None, None) => Err("give --requests FILE.jsonl or --pcap FILE".into()),
    };
    match res {
        Ok(0) => ExitCode::SUCCESS,
        Ok(bad) => super::render::fail(
            format!("{bad} input line(s) could not be read (see above)"),
            1,
        ),
        Err(e) => super::render::fail(&e, 2),
    }
}

fn open_input(path: &Path) -> Result<Box<dyn Read>, String> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(f) as Box<dyn Read>)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Longest input line accepted (a request of the agent's largest sample
/// size is far smaller; this only bounds memory).
const MAX_LINE: usize = 4 << 20;

fn replay_requests(path: &Path, pipeline: &mut Pipeline) -> Result<usize, String> {
    let mut reader = BufReader::new(open_input(path)?);
    let mut bad = 0;
    let mut buf = String::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if buf.len() > MAX_LINE {
            eprintln!("line {n}: longer than {MAX_LINE} bytes; skipped");
            bad += 1;
            // Skip the rest of this line.
            let mut sink = Vec::new();
            let _ = reader.read_until(b'\n', &mut sink);
            continue;
        }
        let line = buf.trim();
        if line.is_empty() {
            continue;
        }
        let rl: RequestLine = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("line {n}: not a request object ({{\"id\":…,\"raw\":…}}): {e}");
                bad += 1;
                continue;
            }
        };
        let src = match rl.src.as_deref().map(str::parse::<IpAddr>).transpose() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("line {n}: src: {e}");
                bad += 1;
                continue;
            }
        };
        let now = crate::clock::unix_now().saturating_mul(1000);
        match judge_raw(rl.raw.as_bytes(), src, pipeline, now) {
            Some((d, why)) => {
                let mut v = verdict(rl.id, src, &d);
                v.error = why.map(|e| format!("not an HTTP/1.x request: {e}"));
                print(&v);
            }
            None => print(&unparsed(rl.id, src, "empty, incomplete or TLS")),
        }
    }
    Ok(bad)
}

/// Judges one whole request (a `--requests` line) the way the agent judges
/// a request it reassembled: the same parser, and bytes that do not parse
/// become the same `protocol.unparseable` stand-in (the error is returned
/// with the decision). `None` when there is no request at all, or TLS.
pub(crate) fn judge_raw(
    raw: &[u8],
    src: Option<IpAddr>,
    pipeline: &mut Pipeline,
    now_ms: u64,
) -> Option<(Decision, Option<tollgate_detect::HttpError>)> {
    // A line holds one whole request: a head missing its final blank line is
    // still a request to judge, not a partial one to wait for (as the agent
    // judges what a connection sent before it closed).
    let mut parsed = parse_request_final(raw);
    // As in the agent: TLS is not judged, and what the classifier does not
    // take for a request is a stand-in.
    match classify(raw) {
        Kind::Tls => return None,
        Kind::Other if !raw.is_empty() => parsed = Err(tollgate_detect::HttpError::NotHttp),
        _ => {}
    }
    let (req, why, consumed) = match parsed {
        Ok(Parsed::Complete { msg, consumed }) => (msg, None, consumed),
        Ok(Parsed::Partial) => return None,
        Err(e) => (HttpRequest::unparseable(raw, e.clone()), Some(e), raw.len()),
    };
    let mut d = pipeline.on_request(src, &req, now_ms);
    // What follows the first request on the line is the connection's next
    // request, as the agent (and the server) read it: judged too, at most a
    // few (a line is one connection's bytes).
    if let Some((next, _)) = judge_raw_rest(&raw[consumed..], src, pipeline, now_ms, 8) {
        merge(&mut d, next);
    }
    Some((d, why))
}

/// [`judge_raw`] on the bytes after a request, unless they are only line
/// ends (which servers skip), with at most `depth` more requests.
fn judge_raw_rest(
    rest: &[u8],
    src: Option<IpAddr>,
    pipeline: &mut Pipeline,
    now_ms: u64,
    depth: u32,
) -> Option<(Decision, Option<tollgate_detect::HttpError>)> {
    if depth == 0 || rest.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return None;
    }
    let (req, why, consumed) = match parse_request_final(rest) {
        Ok(Parsed::Complete { msg, consumed }) if consumed > 0 => (msg, None, consumed),
        Ok(_) => return None,
        Err(e) => (
            HttpRequest::unparseable(rest, e.clone()),
            Some(e),
            rest.len(),
        ),
    };
    let mut d = pipeline.on_request(src, &req, now_ms);
    if let Some((next, _)) = judge_raw_rest(&rest[consumed..], src, pipeline, now_ms, depth - 1) {
        merge(&mut d, next);
    }
    Some((d, why))
}

/// One connection's decisions as one: every finding, the strongest action,
/// the client's latest score.
fn merge(d: &mut Decision, next: Decision) {
    d.violations.extend(next.violations);
    d.action = d.action.max(next.action);
    d.client_score = next.client_score;
    d.ban = d.ban.or(next.ban);
}

fn unparsed(id: Value, src: Option<IpAddr>, why: &str) -> Verdict<'static> {
    Verdict {
        id,
        violations: Vec::new(),
        action: Action::Allow,
        src,
        client_score: None,
        error: Some(format!("not an HTTP/1.x request: {why}")),
    }
}

/// Which side of a TCP connection is the server: the target of a SYN, or
/// else the peer of whoever spoke HTTP first.
#[derive(Default)]
struct Sides(HashMap<(IpAddr, u16, IpAddr, u16), bool>);

impl Sides {
    /// `Some(true)` when (src, sport) is the client.
    fn client_is_src(
        &mut self,
        key: (IpAddr, u16, IpAddr, u16),
        syn_only: bool,
        payload: &[u8],
    ) -> Option<bool> {
        let rev = (key.2, key.3, key.0, key.1);
        if let Some(v) = self.0.get(&key) {
            return Some(*v);
        }
        if let Some(v) = self.0.get(&rev) {
            return Some(!*v);
        }
        let looks_request = classify(payload) == Kind::HttpRequest;
        let decided = if syn_only {
            Some(true)
        } else if !payload.is_empty() {
            Some(looks_request)
        } else {
            None
        };
        if let Some(v) = decided {
            self.0.insert(key, v);
        }
        decided
    }
}

fn replay_pcap(path: &Path, pipeline: &mut Pipeline) -> Result<usize, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = pcap_file::pcap::PcapReader::new(file)
        .map(Capture::Pcap)
        .or_else(|_| {
            std::fs::File::open(path)
                .map_err(pcap_file::PcapError::IoError)
                .and_then(pcap_file::pcapng::PcapNgReader::new)
                .map(Capture::PcapNg)
        })
        .map_err(|e| format!("{}: not a pcap or pcapng file: {e}", path.display()))?;
    let mut flows = Flows::new(crate::agent::api::MAX_FLOWS);
    // A capture holds every packet of a flow: h2c is decoded from it.
    flows.decode_h2_from_packets();
    let mut sides = Sides::default();
    let mut n = 0u64;
    let mut bad = 0usize;
    while let Some(pkt) = reader.next_packet() {
        let (ts_ns, data) = match pkt {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}; stopping here", path.display());
                bad += 1;
                break;
            }
        };
        let Some(seg) = tcp_segment(&data) else {
            continue;
        };
        let key = (seg.src, seg.sport, seg.dst, seg.dport);
        let syn_only = seg.flags & 0x12 == 0x02;
        let Some(client_is_src) = sides.client_is_src(key, syn_only, seg.payload) else {
            continue;
        };
        if seg.payload.is_empty() && seg.flags & 0x05 == 0 {
            continue;
        }
        let (client, client_port, server, server_port, direction) = if client_is_src {
            (seg.src, seg.sport, seg.dst, seg.dport, Direction::Request)
        } else {
            (seg.dst, seg.dport, seg.src, seg.sport, Direction::Response)
        };
        let sample = Sample {
            cookie: 0,
            stream: false,
            tls: false,
            ts_ns,
            client,
            server,
            client_port,
            server_port,
            direction,
            seq: seg.seq,
            tcp_flags: seg.flags,
            ifindex: 0,
            payload_len: u32::try_from(seg.payload.len()).unwrap_or(u32::MAX),
            data: bytes::Bytes::copy_from_slice(seg.payload),
        };
        for ev in flows.on_sample(&sample, 0.0) {
            let Some(req) = ev
                .request
                .as_ref()
                .filter(|_| ev.direction == Direction::Request)
            else {
                continue;
            };
            n += 1;
            let d = pipeline.on_request(Some(ev.client), req, (ev.time * 1000.0) as u64);
            let mut out = serde_json::to_value(verdict(Value::from(n), Some(ev.client), &d))
                .unwrap_or_default();
            out["method"] = Value::from(req.method.as_str());
            out["path"] = Value::from(req.path.as_str());
            out["port"] = Value::from(ev.port);
            print(&out);
        }
    }
    Ok(bad)
}

enum Capture {
    Pcap(pcap_file::pcap::PcapReader<std::fs::File>),
    PcapNg(pcap_file::pcapng::PcapNgReader<std::fs::File>),
}

impl Capture {
    /// Next packet: timestamp (ns) and bytes from the link layer.
    fn next_packet(&mut self) -> Option<Result<(u64, Vec<u8>), String>> {
        match self {
            Capture::Pcap(r) => r.next_packet().map(|p| {
                p.map(|p| {
                    (
                        u64::try_from(p.timestamp.as_nanos()).unwrap_or(0),
                        p.data.into_owned(),
                    )
                })
                .map_err(|e| e.to_string())
            }),
            Capture::PcapNg(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.to_string())),
                };
                use pcap_file::pcapng::Block;
                match block {
                    Block::EnhancedPacket(p) => {
                        return Some(Ok((
                            u64::try_from(p.timestamp.as_nanos()).unwrap_or(0),
                            p.data.into_owned(),
                        )));
                    }
                    Block::SimplePacket(p) => return Some(Ok((0, p.data.into_owned()))),
                    _ => {}
                }
            },
        }
    }
}

struct Segment<'a> {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
}

/// The TCP segment of an Ethernet frame (or a raw IP packet); `None` for
/// anything else.
fn tcp_segment(data: &[u8]) -> Option<Segment<'_>> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(data)
        .ok()
        .filter(|p| p.net.is_some())
        .or_else(|| SlicedPacket::from_ip(data).ok())?;
    let (src, dst) = match p.net? {
        NetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        NetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
    };
    let TransportSlice::Tcp(tcp) = p.transport? else {
        return None;
    };
    let flags = u8::from(tcp.fin())
        | u8::from(tcp.syn()) << 1
        | u8::from(tcp.rst()) << 2
        | u8::from(tcp.psh()) << 3
        | u8::from(tcp.ack()) << 4;
    Some(Segment {
        src,
        dst,
        sport: tcp.source_port(),
        dport: tcp.destination_port(),
        seq: tcp.sequence_number(),
        flags,
        payload: tcp.payload(),
    })
}

/// `tollgate events`.
#[must_use]
pub fn events(args: &EventsArgs, socket: &Path) -> ExitCode {
    let req = Request::Events {
        since_secs: args.since.map(|d| d.as_secs()),
        follow: args.follow,
        limit: args.limit,
    };
    let mut shown = 0usize;
    let res = client::stream(socket, &req, |line| {
        if args.json {
            println!("{line}");
        } else if let Ok(v) = serde_json::from_str::<Value>(line) {
            println!("{}", crate::text::printable(&human(&v)));
        }
        shown += 1;
        true
    });
    // An empty table must not look like a hung command (JSON Lines stay empty).
    if shown == 0 && !args.json && matches!(res, Ok(Ok(()))) {
        println!(
            "no events{}",
            if args.since.is_some() {
                " in that time"
            } else {
                ""
            }
        );
    }
    super::render::stream_exit(res)
}

fn human(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let enforced = v.get("enforced").and_then(Value::as_bool) == Some(true);
    let action = match (s("type").as_str(), s("action").as_str(), enforced) {
        ("ban", _, true) => "BANNED".to_owned(),
        ("ban", _, false) => format!(
            "WOULD-BAN ({})",
            v.get("note")
                .and_then(Value::as_str)
                .unwrap_or("not enforced")
        ),
        (_, a, _) => a.to_owned(),
    };
    let client = match v.get("proxy").and_then(Value::as_str) {
        Some(p) => format!("{} via {p}", s("client")),
        None => s("client"),
    };
    let score = v.get("score").and_then(Value::as_f64).unwrap_or(0.0);
    let ttl = v
        .get("ttl_secs")
        .and_then(Value::as_u64)
        .map_or_else(String::new, |t| {
            format!(
                " ttl {}",
                humantime::format_duration(Duration::from_secs(t))
            )
        });
    format!(
        "{} {:<9} {action:<6} {client} {} [{}] score {score:.0} {} {:?}{ttl}",
        s("time"),
        s("type"),
        s("rule"),
        s("category"),
        s("route"),
        s("evidence"),
    )
}

/// `tollgate policy check FILE`.
#[must_use]
pub fn policy_check(path: &Path, json: bool) -> ExitCode {
    // The same check as the agent's start and reloads.
    match Policy::load(path) {
        Ok(p) if json => {
            println!(
                "{}",
                serde_json::json!({
                    "file": path.display().to_string(),
                    "valid": true,
                    "mode": match p.mode {
                        Some(crate::policy::ModeName::Monitor) => "monitor",
                        _ => "enforce",
                    },
                    "api_ports": p.api_ports,
                    "allowlist_entries": p.allowlist.len(),
                    "ban_threshold": p.scoring.ban_threshold,
                })
            );
            ExitCode::SUCCESS
        }
        Ok(p) => {
            println!(
                "{}: valid (mode {}, {} API port(s), {} allowlist entr{}, ban at score {})",
                path.display(),
                match p.mode {
                    Some(crate::policy::ModeName::Monitor) => "monitor",
                    _ => "enforce",
                },
                p.api_ports.len(),
                p.allowlist.len(),
                if p.allowlist.len() == 1 { "y" } else { "ies" },
                p.scoring.ban_threshold,
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::render::fail(&e, 1),
    }
}

#[cfg(test)]
mod tests {
    //! The agent (samples through `Flows` and the pipeline, as `ApiHandle`
    //! runs them) and `tollgate detect` (a `--requests` line) must judge the
    //! same bytes the same way.

    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::{
        agent::api::{ApiHandle, SamplingPolicy},
        api::flows::ApiEvent,
        engine::ScoringPolicy,
    };

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const SQLI: &str = "/search?q=1'%20OR%20'1'='1'--";

    fn pipeline() -> Pipeline {
        Pipeline::new(
            tollgate_detect::DetectConfig::default(),
            ScoringPolicy::default(),
            &tollgate_detect::ApiPolicy::default(),
            None,
        )
        .unwrap()
    }

    fn sample(seq: u32, data: &[u8], flags: u8) -> Sample {
        Sample {
            cookie: 0,
            stream: false,
            tls: false,
            ts_ns: 1_000_000,
            client: CLIENT,
            server: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            client_port: 40000,
            server_port: 8080,
            direction: Direction::Request,
            seq,
            tcp_flags: flags,
            ifindex: 1,
            payload_len: u32::try_from(data.len()).unwrap(),
            data: bytes::Bytes::copy_from_slice(data),
        }
    }

    /// What the agent does with `raw` sent on a fresh connection, in segments
    /// of at most `seg` bytes: the strongest action of its findings and their
    /// rules, and the request events it emitted.
    fn live(raw: &[u8], seg: usize) -> (Action, Vec<&'static str>, Vec<Arc<ApiEvent>>) {
        let handle = ApiHandle::new(&[8080], &SamplingPolicy::default(), pipeline());
        let mut tap = handle.tap.subscribe();
        let mut samples = Vec::new();
        let mut seq = 1000u32;
        for chunk in raw.chunks(seg) {
            samples.push(sample(seq, chunk, 0x18));
            seq += u32::try_from(chunk.len()).unwrap();
        }
        let batch = handle.handle_samples(&samples, 0.0);
        let action = batch
            .findings
            .iter()
            .map(|f| f.decision.action)
            .max()
            .unwrap_or(Action::Allow);
        let mut rules: Vec<&'static str> = batch
            .findings
            .iter()
            .flat_map(|f| f.decision.violations.iter().map(|v| v.rule))
            .collect();
        rules.sort_unstable();
        rules.dedup();
        let mut events = Vec::new();
        while let Ok(ev) = tap.try_recv() {
            events.push(ev);
        }
        (action, rules, events)
    }

    /// What `tollgate detect --requests` decides for `raw`.
    fn offline(raw: &[u8]) -> (Action, Vec<&'static str>) {
        let (d, _) = judge_raw(raw, Some(CLIENT), &mut pipeline(), 1_000).unwrap();
        let mut rules: Vec<&'static str> = d.violations.iter().map(|v| v.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        (d.action, rules)
    }

    /// The odd-but-served forms of a request, with `target` as its target.
    fn forms(target: &str) -> Vec<(&'static str, Vec<u8>)> {
        let host = "Host: api\r\n";
        let chunked = |q: &str| {
            let json = format!("{{\"q\":\"{q}\"}}");
            let (a, b) = json.split_at(9);
            format!(
                "POST /search HTTP/1.1\r\n{host}Content-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n000\r\n\r\n",
                a.len(),
                b.len()
            )
        };
        let q = if target.contains('\'') {
            "admin'--"
        } else {
            "admin"
        };
        vec![
            (
                "control byte in a header value",
                format!("GET {target} HTTP/1.1\r\n{host}X-Note: a\x01b\x07c\x1bd\r\n\r\n"),
            ),
            (
                "tab-separated request line",
                format!("GET\t{target}\tHTTP/1.1\r\n{host}\r\n"),
            ),
            ("HTTP/0.9 request line", format!("GET {target}\r\n")),
            (
                "bare LF line ends",
                format!("GET {target} HTTP/1.1\nHost: api\nAccept: */*\n\n"),
            ),
            (
                "obs-fold header",
                format!("GET {target} HTTP/1.1\r\n{host}X-Long: one\r\n  two\r\n\r\n"),
            ),
            (
                "leading empty lines",
                format!("\r\n\n\r\nGET {target} HTTP/1.1\r\n{host}\r\n"),
            ),
            (
                "lower-case method",
                format!("get {target} HTTP/1.1\r\n{host}\r\n"),
            ),
            (
                "PROPFIND method",
                format!("PROPFIND {target} HTTP/1.1\r\n{host}Depth: 1\r\n\r\n"),
            ),
            ("chunked JSON body", chunked(q)),
        ]
        .into_iter()
        .map(|(name, raw)| (name, raw.into_bytes()))
        .collect()
    }

    #[test]
    fn an_injection_in_a_lenient_form_bans_live_and_offline() {
        for (name, raw) in forms(SQLI) {
            let (off_action, off_rules) = offline(&raw);
            assert_eq!(off_action, Action::Ban, "offline, {name}: {off_rules:?}");
            assert!(
                !off_rules.contains(&"protocol.unparseable"),
                "offline parses {name}: {off_rules:?}"
            );
            // Whole, and cut into small segments (a request split across packets).
            for seg in [raw.len(), 7] {
                let (action, rules, events) = live(&raw, seg);
                assert_eq!(action, Action::Ban, "live, {name} in {seg}-byte segments");
                assert_eq!(rules, off_rules, "live and offline differ on {name}");
                let reqs: Vec<_> = events.iter().filter_map(|e| e.request.as_ref()).collect();
                assert_eq!(reqs.len(), 1, "{name}: {reqs:?}");
                assert_eq!(reqs[0].malformed, None, "{name}");
            }
        }
    }

    #[test]
    fn what_follows_a_request_on_the_line_is_judged_live_and_offline() {
        // A decoy, then the attack pipelined behind it.
        let raw = format!(
            "GET /ok HTTP/1.1\r\nHost: api\r\n\r\nGET {SQLI} HTTP/1.1\r\nHost: api\r\n\r\n"
        );
        let (off_action, off_rules) = offline(raw.as_bytes());
        let (live_action, live_rules, _) = live(raw.as_bytes(), 1400);
        assert_eq!(off_action, Action::Ban, "offline: {off_rules:?}");
        assert_eq!((off_action, off_rules), (live_action, live_rules));
        // A body the head does not announce is the connection's next
        // request to the server (and to the agent once the connection stalls
        // or closes): a request that does not parse.
        let (off_action, off_rules) = offline(b"POST /x HTTP/1.1\r\nHost: api\r\n\r\nhi=test");
        assert_eq!(
            (off_action, off_rules),
            (Action::Alert, vec!["protocol.unparseable"])
        );
    }

    #[test]
    fn a_head_ended_by_the_connection_closing_is_judged_live_and_offline() {
        let raw = format!("GET {SQLI} HTTP/1.1\r\nHost: api");
        let (off_action, off_rules) = offline(raw.as_bytes());
        assert_eq!(off_action, Action::Ban);
        let handle = ApiHandle::new(&[8080], &SamplingPolicy::default(), pipeline());
        // Open: a head may still come; nothing to judge yet.
        let batch = handle.handle_samples(&[sample(1, raw.as_bytes(), 0x18)], 0.0);
        assert!(batch.findings.is_empty());
        // FIN: the head ended there.
        let next = 1 + u32::try_from(raw.len()).unwrap();
        let batch = handle.handle_samples(&[sample(next, b"", 0x11)], 0.0);
        assert_eq!(batch.findings.len(), 1);
        assert_eq!(batch.findings[0].decision.action, Action::Ban);
        let mut rules: Vec<_> = batch.findings[0]
            .decision
            .violations
            .iter()
            .map(|v| v.rule)
            .collect();
        rules.sort_unstable();
        rules.dedup();
        assert_eq!(rules, off_rules);
    }

    #[test]
    fn the_same_forms_without_an_injection_pass_live_and_offline() {
        for (name, raw) in forms("/search?q=hello") {
            let (off_action, off_rules) = offline(&raw);
            // Control bytes in a header are worth an alert (`protocol.control_char`);
            // nothing else here is.
            let expect = if name.starts_with("control") {
                Action::Alert
            } else {
                Action::Allow
            };
            assert_eq!(off_action, expect, "offline, {name}: {off_rules:?}");
            let (action, rules, events) = live(&raw, raw.len());
            assert_eq!((action, &rules), (expect, &off_rules), "live, {name}");
            let req = events.iter().find_map(|e| e.request.as_ref()).unwrap();
            assert_eq!(req.path, "/search", "{name}");
            if name == "chunked JSON body" {
                // De-chunked live as offline.
                assert_eq!(req.body, br#"{"q":"admin"}"#);
            }
        }
    }

    #[test]
    fn what_does_not_parse_is_reported_live_and_offline() {
        for (raw, expect) in [
            // Not HTTP at all: an alert, not a ban.
            (&b"\x00\x01\x02\x03 binary hello\r\n"[..], Action::Alert),
            // Broken, but carrying an injection: the bytes are still inspected.
            (
                b"GET /x?q=1' OR '1'='1 HTTP/7.1\r\nHost: api\r\n\r\n",
                Action::Ban,
            ),
            (b"\x00\x01 /x?q=1' OR '1'='1\r\n\r\n", Action::Ban),
        ] {
            let (off_action, off_rules) = offline(raw);
            assert_eq!(off_action, expect, "offline {raw:?}: {off_rules:?}");
            assert!(off_rules.contains(&"protocol.unparseable"), "{off_rules:?}");
            let (action, rules, events) = live(raw, raw.len());
            assert_eq!((action, &rules), (expect, &off_rules), "live {raw:?}");
            let req = events.iter().find_map(|e| e.request.as_ref()).unwrap();
            assert!(req.malformed.is_some());
        }
        // Events name such a request's route with `-` for a missing method.
        let (_, _, events) = live(b"\x00\x01 /x\r\n", 5);
        let req = events.iter().find_map(|e| e.request.as_ref()).unwrap();
        assert_eq!(pipeline().route_of(req), "- /x");
        // Broken requests over and over, on new connections: each one is
        // reported, none bans (the rule does not add to the client's score).
        let handle = ApiHandle::new(&[8080], &SamplingPolicy::default(), pipeline());
        let mut offline_pipeline = pipeline();
        for port in 0..20u16 {
            let raw = b"SSH-2.0-OpenSSH_9.2\r\n";
            let mut s = sample(1, raw, 0x18);
            s.client_port = 30000 + port;
            let batch = handle.handle_samples(&[s], 0.0);
            assert_eq!(batch.findings.len(), 1);
            assert_eq!(batch.findings[0].decision.action, Action::Alert);
            let (d, _) = judge_raw(raw, Some(CLIENT), &mut offline_pipeline, 1_000).unwrap();
            assert_eq!(d.action, Action::Alert);
        }
        // HTTP/2 seen only in NIC samples is not decoded, and not a finding
        // either (counted as `h2_not_decoded`); the socket capture decodes it.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let (action, rules, events) = live(preface, preface.len());
        assert_eq!((action, rules.len(), events.len()), (Action::Allow, 0, 0));
        // TLS is encrypted traffic, not a finding.
        let hello = b"\x16\x03\x01\x00\x05hello";
        assert!(judge_raw(hello, Some(CLIENT), &mut pipeline(), 0).is_none());
        let (action, rules, events) = live(hello, hello.len());
        assert_eq!((action, rules.len(), events.len()), (Action::Allow, 0, 0));
    }
}
