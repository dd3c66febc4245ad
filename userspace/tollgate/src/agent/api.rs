//! The agent's API-visibility pipeline: reads the sample ring buffer, turns
//! samples into parsed HTTP exchanges, keeps the inventory, feeds `tap`
//! subscribers, and keeps itself within a CPU budget by lowering the
//! sampling rate (through the datapath's config) when it falls behind.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::broadcast;
use tracing::{info, warn};

use ipnet::IpNet;
use std::net::IpAddr;
use tollgate_common::FlowKey;
use tollgate_detect::Location;

use super::enforce::Finding;
use crate::{
    api::{
        flows::{ApiEvent, Flows},
        inventory::Inventory,
        sample::{Direction, Sample},
    },
    clock,
    engine::Pipeline,
    proto::SamplingStatus,
    verify::{Check, FlowVerifier},
};

/// Flows followed at once.
pub const MAX_FLOWS: usize = 65_536;
/// A streamed request whose connection received nothing for this long is
/// judged as far as it went (head without its body, slowloris head).
pub const STALL_NS: u64 = 1_000_000_000;
/// A flow with nothing sampled for this long is forgotten (its partial
/// message was judged as far as it went; memory stays bounded after floods).
pub const FLOW_IDLE_NS: u64 = 120 * 1_000_000_000;
/// Events buffered for slow `tap` readers (older ones are skipped).
pub const TAP_BUFFER: usize = 4096;
/// Largest sampling divisor the budget control goes to.
const MAX_ONE_IN: u32 = 1 << 20;
/// While records keep coming, the sample reader drains at most once per
/// this: what arrives meanwhile waits in the ring (32 MiB by default: far
/// more than this long holds) and is handled in one wake-up instead of one
/// each. Wake-ups are most of the agent's cost per request at moderate rates
/// (a TLS request makes two or three records; each wake-up costs the
/// runtime's timers and epoll more than parsing a small request does), so
/// this trades at most this much delay in judging, under steady traffic
/// only, for about a fifth of the agent's CPU per request. The first record
/// after a quiet spell is handled at once, so a lone attack request is
/// judged without this delay.
const COALESCE: Duration = Duration::from_millis(20);
/// TLS probes need no exception: a TLS stream's connection is resolved
/// from `/proc` while its descriptor is open, and a short connection
/// (request, answer, close: a few ms) is closed before its records come out
/// of the ring; but the kernel announces each new stream on a ring of its
/// own (`TG_TLS_NEW`), which is read at once, also during the wait, so the
/// connection is resolved and cached under the stream's id before its
/// records are read. Without that ring (an older eBPF object), or while
/// announcements are lost (that ring full) or left unread (more than
/// [`ANNOUNCE_MAX`] at a wake-up), no coalescing: a stream not resolved at
/// its announcement must be resolved from its records while it is open.
const NO_COALESCE: Duration = Duration::ZERO;
/// Announcements handled per wake-up at most.
const ANNOUNCE_MAX: usize = 1024;
/// Records handled per drain at most (a backlog is drained in batches this
/// big, one right after another).
const DRAIN_MAX: usize = 4096;

pub use crate::policy::SamplingPolicy;

/// Shared state of the pipeline.
pub struct ApiState {
    /// Reassembly and parsing.
    pub flows: Flows,
    /// Endpoints seen.
    pub inventory: Inventory,
    /// Status for `tollgate status`.
    pub status: SamplingStatus,
    /// Detectors and client scores.
    pub pipeline: Pipeline,
    /// Trusted proxies: their connections carry other clients.
    pub trusted: Vec<IpNet>,
    /// The header each trusted proxy writes (most specific prefix first;
    /// a proxy not listed writes `X-Forwarded-For`).
    pub proxy_headers: Vec<(IpNet, crate::policy::ProxyHeader)>,
    /// The kernel's record of accepted connections (`None`: every request
    /// counts as verified, as in offline replays and unit tests).
    pub verifier: Option<FlowVerifier>,
    /// Requests waiting for verification.
    waiting: Vec<Waiting>,
    /// When idle flows were last expired (boot-clock ns).
    last_expiry_ns: u64,
    /// When stalled requests were last looked for.
    last_stall_check_ns: u64,
    /// What stand-ins for stalled requests found (rule, location), by
    /// connection, until the rest of the request comes and is judged.
    stood_in: HashMap<(IpAddr, u16, IpAddr, u16), Vec<Found>>,
    /// GraphQL requests awaiting their response, per connection: the
    /// operations each called, so that the response's status is counted
    /// for them (the response's own path is only `/graphql`).
    graphql_pending: GraphqlPending,
}

/// A finding by rule, location and score.
type Found = (&'static str, Location, u32);

/// Stalled requests remembered at once; past it the memory is dropped (a
/// request judged again then scores what its stand-in found once more).
const MAX_STOOD_IN: usize = 4096;

/// Connections with GraphQL requests awaiting their response; past this
/// (responses never seen) the table starts over.
const MAX_GRAPHQL_CONNECTIONS: usize = 4096;

/// Connection (client or proxy, client port, server, port) -> requests to
/// a GraphQL path in order: path and the operations called (empty: no
/// GraphQL in it, or not in the inventory).
type GraphqlPending = HashMap<
    (IpAddr, u16, IpAddr, u16),
    std::collections::VecDeque<(String, Vec<(String, String)>)>,
>;

/// What a batch of samples produced for the enforcer.
#[derive(Default)]
pub struct Batch {
    /// Violations and ban decisions.
    pub findings: Vec<Finding>,
    /// Requests that came through a trusted proxy, with their real client:
    /// the enforcer arms the connection if that client is banned.
    pub proxied: Vec<(FlowKey, IpAddr)>,
    /// Socket cookies and stream offsets up to which the stream program
    /// need not copy (the rest of bodies passed over).
    pub stream_skips: Vec<(u64, u32)>,
}

impl Batch {
    /// Whether there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty() && self.proxied.is_empty() && self.stream_skips.is_empty()
    }
}

/// The datapath's key of a connection (client side = the proxy).
#[must_use]
pub fn flow_key(ev: &ApiEvent, proxy: IpAddr) -> FlowKey {
    let a16 = |a: IpAddr| match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    FlowKey {
        client: a16(proxy),
        server: a16(ev.server),
        client_port: ev.client_port,
        server_port: ev.port,
    }
}

/// The client the header `which` names: the right-most address that is not
/// itself a trusted proxy (the left-most is whatever the client wrote). Only
/// the header the proxy writes itself is read: one it merely passes along
/// (`Forwarded` through a proxy that appends to `X-Forwarded-For`) is the
/// client's own word, and believing it would let a client blame anyone.
#[must_use]
pub fn forwarded_client(
    headers: &[(String, String)],
    trusted: &[IpNet],
    which: crate::policy::ProxyHeader,
) -> Option<IpAddr> {
    use crate::policy::ProxyHeader;
    let mut hops: Vec<IpAddr> = Vec::new();
    match which {
        ProxyHeader::ProxyProtocol => return None,
        ProxyHeader::XForwardedFor => {
            for (_, v) in headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
            {
                hops.extend(v.split(',').filter_map(|h| parse_hop(h.trim())));
            }
        }
        ProxyHeader::Forwarded => {
            for (_, v) in headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("forwarded"))
            {
                for elem in v.split(',') {
                    for pair in elem.split(';') {
                        let Some((k, val)) = pair.trim().split_once('=') else {
                            continue;
                        };
                        if k.trim().eq_ignore_ascii_case("for")
                            && let Some(a) = parse_hop(val.trim().trim_matches('"'))
                        {
                            hops.push(a);
                        }
                    }
                }
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|a| !trusted.iter().any(|n| n.contains(a)))
}

/// One hop: `198.18.0.1`, `198.18.0.1:5000`, `[fd00::1]:5000`, `fd00::1`.
fn parse_hop(h: &str) -> Option<IpAddr> {
    if let Ok(a) = h.parse::<IpAddr>() {
        return Some(a);
    }
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    h.rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

fn has_forwarding(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(n, _)| {
            n.eq_ignore_ascii_case("x-forwarded-for") || n.eq_ignore_ascii_case("forwarded")
        })
        .map(|(_, v)| v.as_str())
}

/// Handles the agent keeps.
#[derive(Clone)]
pub struct ApiHandle {
    /// The pipeline's state.
    pub state: Arc<Mutex<ApiState>>,
    /// Parsed exchanges, for `tap`.
    pub tap: broadcast::Sender<Arc<ApiEvent>>,
    /// Resolves TLS plaintext records to their connections.
    pub tls: crate::tls::Handle,
}

impl ApiHandle {
    /// A pipeline for `ports` with `policy`.
    #[must_use]
    pub fn new(ports: &[u16], policy: &SamplingPolicy, pipeline: Pipeline) -> Self {
        let (tap, _) = broadcast::channel(TAP_BUFFER);
        Self {
            state: Arc::new(Mutex::new(ApiState {
                flows: {
                    let mut f = Flows::new(MAX_FLOWS);
                    f.set_body_cap(policy.body_bytes as usize);
                    f
                },
                inventory: Inventory::default(),
                status: SamplingStatus {
                    api_ports: ports.to_vec(),
                    one_in_configured: policy.one_in,
                    one_in_effective: policy.one_in,
                    body_bytes_effective: policy.body_bytes,
                    ..SamplingStatus::default()
                },
                pipeline,
                trusted: Vec::new(),
                proxy_headers: Vec::new(),
                verifier: None,
                waiting: Vec::new(),
                last_expiry_ns: 0,
                last_stall_check_ns: 0,
                stood_in: HashMap::new(),
                graphql_pending: GraphqlPending::new(),
            })),
            tap,
            tls: crate::tls::handle(),
        }
    }

    /// Handles a batch of raw records (and the requests still waiting for
    /// verification); returns the CPU time it took and what the detectors
    /// found.
    pub fn handle(&self, records: &[Vec<u8>], wall_offset: f64) -> (Duration, Batch) {
        let t = thread_cpu();
        let samples: Vec<Sample> = records.iter().filter_map(|raw| self.decode(raw)).collect();
        let batch = self.handle_samples(&samples, wall_offset);
        (thread_cpu().saturating_sub(t), batch)
    }

    /// Decodes one raw ring-buffer record (TLS records resolved to their
    /// connection); `None` for what is not judged.
    #[must_use]
    pub fn decode(&self, raw: &[u8]) -> Option<Sample> {
        self.tls.lock().ok()?.sample(raw)
    }

    /// Resolves a new TLS stream the kernel announced (see
    /// [`crate::tls::TlsState::announce`]).
    pub fn announce(&self, raw: &[u8]) {
        if let Ok(mut t) = self.tls.lock() {
            t.announce(raw);
        }
    }

    /// TLS probes are on (without the announcement ring, records must be
    /// resolved while their connection is open, so they are not held back).
    #[must_use]
    pub fn tls_probing(&self) -> bool {
        self.tls.lock().is_ok_and(|t| t.status.enabled)
    }

    /// The kernel lost TLS stream announcements lately (see
    /// [`crate::tls::TlsState::announcements_lost_lately`]).
    #[must_use]
    pub fn tls_announcements_lost(&self) -> bool {
        self.tls.lock().is_ok_and(|t| t.announcements_lost_lately())
    }

    /// Handles decoded samples (and the requests still waiting for
    /// verification): reassembly, parsing, inventory, detectors, `tap`.
    /// Returns what the detectors found.
    pub fn handle_samples(&self, samples: &[Sample], wall_offset: f64) -> Batch {
        let t = Instant::now();
        let now = clock::unix_now();
        let mut batch = Batch::default();
        let Ok(mut st) = self.state.lock() else {
            return batch;
        };
        let st = &mut *st;
        let now_ns = clock::boot_ns();
        st.flows.clock_ns = now_ns;
        for sample in samples {
            for ev in st.flows.on_sample(sample, wall_offset) {
                // Socket streams need no check: only accepted bytes get there.
                let needs_check =
                    !sample.stream && ev.direction == Direction::Request && ev.request.is_some();
                let check = match (&st.verifier, needs_check) {
                    (Some(v), true) => {
                        // The connection as the kernel knows it (its client is
                        // the proxy for proxied requests).
                        let key = flow_key(&ev, ev.client);
                        let c = v.check(&key, sample.seq, sample.payload_len);
                        if let Check::Pending(_) = c
                            && st.waiting.len() < MAX_WAITING
                        {
                            st.waiting.push(Waiting {
                                ev,
                                key,
                                seq: sample.seq,
                                len: sample.payload_len,
                                deadline: t + VERIFY_WAIT,
                            });
                            continue;
                        }
                        c
                    }
                    _ => Check::Verified,
                };
                let unverified = match check {
                    Check::Verified => None,
                    Check::Refused(why) | Check::Pending(why) => Some(why),
                };
                st.judge(ev, unverified, now, &mut batch, &self.tap);
            }
        }
        // Requests waiting for the kernel's word: it may have come. A flow
        // whose socket stream started meanwhile has them from there.
        let waiting = std::mem::take(&mut st.waiting);
        for w in waiting {
            if st
                .flows
                .is_streamed(&(w.ev.client, w.ev.client_port, w.ev.server, w.ev.port))
            {
                continue;
            }
            let check = st
                .verifier
                .as_ref()
                .map_or(Check::Verified, |v| v.check(&w.key, w.seq, w.len));
            match check {
                Check::Verified => st.judge(w.ev, None, now, &mut batch, &self.tap),
                Check::Refused(why) => st.judge(w.ev, Some(why), now, &mut batch, &self.tap),
                Check::Pending(why) if t >= w.deadline => {
                    st.judge(w.ev, Some(why), now, &mut batch, &self.tap);
                }
                Check::Pending(_) => st.waiting.push(w),
            }
        }
        if now_ns.saturating_sub(st.last_stall_check_ns) >= STALL_NS / 4 {
            st.last_stall_check_ns = now_ns;
            // Streamed bytes come from the socket: verified already.
            for ev in st
                .flows
                .flush_stalled(now_ns.saturating_sub(STALL_NS), wall_offset)
            {
                st.judge(ev, None, now, &mut batch, &self.tap);
            }
        }
        if now_ns.saturating_sub(st.last_expiry_ns) >= 1_000_000_000 {
            st.last_expiry_ns = now_ns;
            st.flows.expire(now_ns.saturating_sub(FLOW_IDLE_NS));
        }
        batch.stream_skips = std::mem::take(&mut st.flows.skip_hints);
        if let Some(client) = st.flows.stats.h2_first_over_share.take() {
            // Once: the counter says how often since.
            warn!(
                %client,
                "an HTTP/2 client holds its whole share of the budget for unfinished header \
                 blocks; its blocks past it are cut and its later requests on those \
                 connections are unknown (sampling.flows.h2_header_blocks_over_share)"
            );
        }
        st.status.flows = st.flows.stats;
        st.status.flows_followed = st.flows.len();
        st.status.clients_scored = st.pipeline.tracked();
        st.status.clients_tracked = st.pipeline.guard_clients();
        st.status.findings += batch.findings.len() as u64;
        st.status.awaiting_verification = st.waiting.len();
        batch
    }

    /// Judges at most `bytes` of each request body from now on.
    pub fn set_body_cap(&self, bytes: u32) {
        if let Ok(mut st) = self.state.lock() {
            st.flows.set_body_cap(bytes as usize);
            st.status.body_bytes_effective = bytes;
        }
    }

    /// Whether requests are waiting for verification (the reader then
    /// wakes up for them even when no sample arrives).
    #[must_use]
    pub fn has_waiting(&self) -> bool {
        self.state.lock().is_ok_and(|st| !st.waiting.is_empty())
    }
}

/// A request held until the kernel shows it accepted the bytes.
pub struct Waiting {
    ev: ApiEvent,
    key: FlowKey,
    seq: u32,
    len: u32,
    deadline: Instant,
}

/// How long a request waits for its handshake and the server's
/// acknowledgement (XDP sees it before the stack does; delayed ACKs wait
/// up to 200 ms on Linux) before it is judged unverified.
pub const VERIFY_WAIT: Duration = Duration::from_millis(500);
/// Requests held at once; past this (a spoofed flood) they are judged
/// unverified at once.
pub const MAX_WAITING: usize = 4096;

impl ApiState {
    /// Judges one parsed message. `unverified` says why a request cannot be
    /// shown to come from its client: it is then reported (`verified: false`)
    /// but neither scores, bans, nor enters the inventory.
    fn judge(
        &mut self,
        mut ev: ApiEvent,
        unverified: Option<&'static str>,
        now: u64,
        batch: &mut Batch,
        tap: &broadcast::Sender<Arc<ApiEvent>>,
    ) {
        let st = self;
        let ms = (ev.time * 1000.0) as u64;
        let conn = (ev.client, ev.client_port, ev.server, ev.port);
        ev.verified = unverified.is_none();
        if unverified.is_some() {
            st.status.unverified += 1;
        }
        let headers = ev.request.as_ref().map(|r| r.headers.as_slice());
        let mut flow = None;
        if st.trusted.iter().any(|n| n.contains(&ev.client)) {
            // A PROXY header names the client of the whole connection;
            // otherwise each request's forwarding header does.
            let which = st
                .proxy_headers
                .iter()
                .filter(|(n, _)| n.contains(&ev.client))
                .max_by_key(|(n, _)| n.prefix_len())
                .map_or_else(Default::default, |(_, h)| *h);
            let by_header = headers.and_then(|h| forwarded_client(h, &st.trusted, which));
            let real = match ev.direction {
                Direction::Request => ev.header_client.or(by_header),
                // HTTP/2: the client of the response's own stream (a proxy
                // multiplexes clients on one connection); HTTP/1: the
                // connection's latest, as responses come in request order.
                Direction::Response => ev.header_client.or_else(|| match &ev.stream_forwarding {
                    Some(h) => forwarded_client(h, &st.trusted, which),
                    None => ev.forwarded_client,
                }),
            };
            if let Some(real) = real {
                let proxy = ev.client;
                // A connection is cut for its banned client only while it
                // carries that client alone: a PROXY header names one client
                // for the whole connection; forwarding headers, only as long
                // as no other client shows up on it (see `set_real`).
                let id = (proxy, ev.client_port, ev.server, ev.port);
                let alone = if ev.header_client.is_some() {
                    true
                } else if by_header.is_some() && unverified.is_none() {
                    st.flows.set_real(id, real)
                } else {
                    st.flows.carries_alone(id, real)
                };
                ev.proxy = Some(proxy);
                ev.client = real;
                if alone {
                    let key = flow_key(&ev, proxy);
                    flow = Some(key);
                    if ev.direction == Direction::Request && unverified.is_none() {
                        batch.proxied.push((key, real));
                    }
                } else if ev.direction == Direction::Request {
                    st.status.proxied_shared += 1;
                }
            }
        } else if let Some(v) = headers.and_then(has_forwarding) {
            batch.findings.push(spoofed_forwarding(&ev, v));
        }
        let mut operation = None;
        let decided = match (&ev.request, ev.direction) {
            (Some(req), Direction::Request) => {
                let before = if ev.resumed {
                    st.stood_in.remove(&conn).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let mut endpoints = Vec::new();
                let d = if unverified.is_some() {
                    // Judged on its own: no client score, no ban.
                    let mut d = if ev.resumed {
                        st.pipeline.on_request_resumed(None, req, &before, ms)
                    } else {
                        st.pipeline.on_request(None, req, ms)
                    };
                    if d.action == tollgate_detect::Action::Ban {
                        d.action = tollgate_detect::Action::Alert;
                    }
                    d.ban = None;
                    d
                } else if ev.resumed {
                    // Counted in the inventory when its stand-in was.
                    st.pipeline
                        .on_request_resumed(Some(ev.client), req, &before, ms)
                } else {
                    let d = st.pipeline.on_request(Some(ev.client), req, ms);
                    // A stand-in for unparseable bytes is no endpoint.
                    if req.malformed.is_none() {
                        endpoints = st.pipeline.endpoints(req);
                        st.inventory.on_request_at(ev.client, req, &endpoints, now);
                    }
                    d
                };
                if ev.stalled {
                    let mut found = before;
                    found.extend(
                        d.violations
                            .iter()
                            .map(|v| (v.rule, v.location.clone(), v.score)),
                    );
                    if st.stood_in.len() >= MAX_STOOD_IN {
                        st.stood_in.clear();
                    }
                    st.stood_in.insert(conn, found);
                }
                // What `tap` shows of a GraphQL request's operations.
                let ops: Vec<String> = st.pipeline.graphql_operations(req).into_iter().collect();
                if !ops.is_empty() {
                    operation = Some(ops.join(", "));
                } else {
                    endpoints.clear();
                }
                // A resumed request's response was awaited since its stand-in.
                if !ev.resumed && st.pipeline.is_graphql_path(req) {
                    st.graphql_sent(&ev, req.path.clone(), endpoints);
                }
                Some((None, d))
            }
            (_, Direction::Response) => {
                if let (Some(m), Some(p), Some(s)) = (&ev.method, &ev.path, ev.status) {
                    match st.graphql_answered(&ev, p) {
                        Some(ops) if !ops.is_empty() => {
                            let errors = ev
                                .response
                                .as_ref()
                                .is_some_and(|r| tollgate_detect::graphql::has_errors(&r.body));
                            st.inventory.on_response_at(&ops, s, errors);
                        }
                        _ => st.inventory.on_response(m, p, s),
                    }
                }
                ev.response.as_ref().map(|resp| {
                    // What the pairing kept of the request: method and path.
                    let req = ev.method.as_ref().zip(ev.path.as_ref()).map(|(m, p)| {
                        tollgate_detect::Request {
                            method: m.clone(),
                            target: p.clone(),
                            path: p.clone(),
                            ..tollgate_detect::Request::default()
                        }
                    });
                    let d = st.pipeline.on_response(ev.client, req.as_ref(), resp, ms);
                    (Some(req), d)
                })
            }
            _ => None,
        };
        // Inflated past what the detectors read: judged only in part.
        if let Some((_, d)) = &decided
            && d.violations
                .iter()
                .any(|v| v.rule == tollgate_detect::detect::INFLATE_LIMIT)
        {
            ev.truncated = true;
        }
        if let Some((resp_req, d)) = decided
            && (!d.violations.is_empty() || d.ban.is_some())
        {
            // The route names a finding only: made when there is one (the
            // route depends on nothing the decision changed).
            let route = match resp_req {
                None => ev
                    .request
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |r| st.pipeline.route_of(r)),
                Some(req) => req
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |r| st.pipeline.route_of(r)),
            };
            // The connection's age decides whether a ban may follow a lift
            // (looked up only when a ban is at stake).
            let conn_since_ns = d
                .ban
                .and(st.verifier.as_ref())
                .and_then(|v| v.since_ns(&flow.unwrap_or_else(|| flow_key(&ev, ev.client))));
            batch.findings.push(Finding {
                client: ev.client,
                proxy: ev.proxy,
                flow,
                port: ev.port,
                route,
                decision: d,
                unverified,
                conn_since_ns,
            });
        }
        // Nobody listening (no `tap`): nothing to send.
        if tap.receiver_count() > 0 {
            ev.operation = operation;
            let _ = tap.send(Arc::new(ev));
        }
    }
}

impl ApiState {
    /// The connection of an event, as the sockets see it.
    fn connection(ev: &ApiEvent) -> (IpAddr, u16, IpAddr, u16) {
        (
            ev.proxy.unwrap_or(ev.client),
            ev.client_port,
            ev.server,
            ev.port,
        )
    }

    /// Remembers a request to a GraphQL path until its response.
    fn graphql_sent(&mut self, ev: &ApiEvent, path: String, ops: Vec<(String, String)>) {
        let conn = Self::connection(ev);
        if self.graphql_pending.len() >= MAX_GRAPHQL_CONNECTIONS
            && !self.graphql_pending.contains_key(&conn)
        {
            self.graphql_pending.clear();
        }
        let q = self.graphql_pending.entry(conn).or_default();
        if q.len() >= 64 {
            q.pop_front();
        }
        q.push_back((path, ops));
    }

    /// The operations of the request a response to `path` answers, when it
    /// went to a GraphQL path (requests whose response was not seen are
    /// passed over).
    fn graphql_answered(&mut self, ev: &ApiEvent, path: &str) -> Option<Vec<(String, String)>> {
        let conn = Self::connection(ev);
        let q = self.graphql_pending.get_mut(&conn)?;
        if !q.iter().any(|(p, _)| p == path) {
            return None;
        }
        let mut found = None;
        while let Some((p, ops)) = q.pop_front() {
            if p == path {
                found = Some(ops);
                break;
            }
        }
        if q.is_empty() {
            self.graphql_pending.remove(&conn);
        }
        found
    }
}

/// A forwarding header from a client that is not a trusted proxy: ignored
/// for attribution (the client wrote it) and reported.
fn spoofed_forwarding(ev: &ApiEvent, value: &str) -> Finding {
    Finding {
        client: ev.client,
        proxy: None,
        flow: None,
        port: ev.port,
        route: format!(
            "{} {}",
            ev.method.as_deref().unwrap_or("-"),
            crate::api::inventory::path_template(ev.path.as_deref().unwrap_or("/"))
        ),
        decision: crate::engine::Decision {
            violations: vec![tollgate_detect::Violation {
                rule: "proxy.untrusted_forwarding",
                category: tollgate_detect::Category::Protocol,
                score: 0,
                location: tollgate_detect::Location::Header("x-forwarded-for".into()),
                evidence: value.chars().take(80).collect(),
            }],
            action: tollgate_detect::Action::Alert,
            client_score: 0.0,
            ban: None,
        },
        unverified: None,
        conn_since_ns: None,
    }
}

/// CPU time of the calling thread. The CPU budget is the agent's own use: a
/// busy host that keeps the agent waiting for a core must not make it judge
/// less of each request (wall time would count the waiting).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Unix seconds minus boot-clock seconds, to date samples.
#[must_use]
pub fn wall_offset() -> f64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    unix - clock::boot_ns() as f64 / 1e9
}

/// Reads the sample ring buffer until the agent stops, and the TLS
/// new-stream ring (`announcements`) whenever it has records (and before
/// each drain of samples). `set_rate` writes a new 1-in-N into the datapath.
pub async fn read_samples(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    announcements: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    api: ApiHandle,
    policy: SamplingPolicy,
    set_rate: impl Fn(u32) + Send + 'static,
    mut on_findings: impl FnMut(Batch) + Send + 'static,
) -> anyhow::Result<()> {
    let mut ring = super::ring::Reader::new(ring, "sample")?;
    // The ring stays open for as long as this reads (unwatched if it cannot
    // be watched): the TLS programs, loaded later, refer to it.
    let (mut news, _unwatched) = match announcements.map(super::ring::Reader::watch) {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(b)) => {
            let (ring, e) = *b;
            warn!("TLS streams resolve when their data is read (failed to watch their ring: {e})");
            (None, Some(ring))
        }
        None => (None, None),
    };
    let offset = wall_offset();
    let budget = policy.cpu_budget_percent / 100.0;
    let mut one_in = policy.one_in.max(1);
    // Over budget, bodies are shed first: the body bytes judged per request
    // go down to none before anything else; heads are always judged.
    let mut body_cap = policy.body_bytes;
    let mut window = Instant::now();
    let mut busy = Duration::ZERO;
    let mut calm_windows = 0u32;
    // When the last drain that found records ran, unless it left a backlog.
    let mut last_drain: Option<Instant> = None;
    let mut drains = 0u64;
    // The last wake-up left announcements unread.
    let mut news_behind = false;
    loop {
        // Requests held for verification are re-checked every 2 ms: holding
        // the drain back would let the queue overflow into unverified ones.
        let coalesce = if api.has_waiting()
            || (news.is_none() && api.tls_probing())
            || news_behind
            || api.tls_announcements_lost()
        {
            NO_COALESCE
        } else {
            COALESCE
        };
        let now = tokio::time::Instant::now();
        let hold = last_drain
            .and_then(|t| coalesce.checked_sub(t.elapsed()))
            .filter(|g| !g.is_zero())
            .map(|g| now + g);
        // Held requests are re-checked every few milliseconds; otherwise the
        // loop still wakes each second, so idle flows expire and a raised
        // sampling divisor comes down again without new samples.
        let tick = if api.has_waiting() {
            Duration::from_millis(2)
        } else {
            Duration::from_secs(1)
        };
        let until = hold.unwrap_or(now) + tick;
        // Until samples are due (held back, then waited for), new TLS
        // streams are resolved as they are announced.
        news_behind = false;
        loop {
            let samples_due = async {
                if let Some(h) = hold {
                    tokio::time::sleep_until(h).await;
                }
                ring.wait(Some(until)).await
            };
            let announced = async {
                match news.as_mut() {
                    Some(n) => n.wait(None).await,
                    None => std::future::pending().await,
                }
            };
            let woke_for_news = tokio::select! {
                biased;
                r = samples_due => { r?; false }
                r = announced => { r?; true }
            };
            if let Some(n) = news.as_mut() {
                news_behind = n.read(ANNOUNCE_MAX, |item| api.announce(item)) >= ANNOUNCE_MAX;
            }
            if !woke_for_news {
                break;
            }
        }
        // Records are decoded straight from the ring (one copy of their
        // bytes); the CPU time counted starts at the first one.
        let mut samples = Vec::new();
        let mut taken = 0usize;
        let mut cpu_start = None;
        ring.read(DRAIN_MAX, |item| {
            cpu_start.get_or_insert_with(thread_cpu);
            taken += 1;
            samples.extend(api.decode(item));
        });
        drains += u64::from(taken > 0);
        // A full drain means a backlog: the next one follows at once.
        last_drain = (taken > 0 && taken < DRAIN_MAX).then(Instant::now);
        let t = cpu_start.unwrap_or_else(thread_cpu);
        let found = api.handle_samples(&samples, offset);
        busy += thread_cpu().saturating_sub(t);
        if !found.is_empty() {
            on_findings(found);
        }
        let elapsed = window.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let used = busy.as_secs_f64() / elapsed.as_secs_f64();
            if used > budget && body_cap > 0 {
                body_cap = if body_cap > 256 { body_cap / 4 } else { 0 };
                api.set_body_cap(body_cap);
                warn!(
                    used_percent = used * 100.0,
                    body_bytes = body_cap,
                    "judging less of each request body to stay within the CPU budget (heads are always judged)"
                );
                calm_windows = 0;
            } else if used > budget && one_in < MAX_ONE_IN {
                one_in = (one_in * 2).min(MAX_ONE_IN);
                set_rate(one_in);
                warn!(
                    used_percent = used * 100.0,
                    one_in, "sampling lowered to stay within the CPU budget"
                );
                calm_windows = 0;
            } else if used < budget / 4.0
                && (one_in > policy.one_in || body_cap < policy.body_bytes)
            {
                calm_windows += 1;
                if calm_windows >= 10 {
                    if one_in > policy.one_in {
                        one_in = (one_in / 2).max(policy.one_in);
                        set_rate(one_in);
                        info!(one_in, "sampling raised again (load went down)");
                    } else {
                        body_cap = (body_cap.max(64) * 4).min(policy.body_bytes);
                        api.set_body_cap(body_cap);
                        info!(
                            body_bytes = body_cap,
                            "judging more of each request body again (load went down)"
                        );
                    }
                    calm_windows = 0;
                }
            }
            if let Ok(mut st) = api.state.lock() {
                st.status.one_in_effective = one_in;
                st.status.drains = drains;
            }
            window = Instant::now();
            busy = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProxyHeader;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A pipeline on port 8080 with the default policy.
    fn default_api() -> ApiHandle {
        let pipeline = Pipeline::new(
            tollgate_detect::DetectConfig::default(),
            crate::engine::ScoringPolicy::default(),
            &tollgate_detect::ApiPolicy::default(),
            None,
        )
        .unwrap();
        ApiHandle::new(&[8080], &SamplingPolicy::default(), pipeline)
    }

    #[test]
    fn events_and_the_inventory_fold_paths_alike() {
        let api = default_api();
        let client: IpAddr = "198.18.0.2".parse().unwrap();
        let samples: Vec<Sample> = ["/files/deadbeefdeadbeef", "/items/-5"]
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let raw = format!("get {path}?q=1'%20OR%20'1'='1'-- HTTP/1.1\r\nHost: a\r\n\r\n");
                Sample {
                    cookie: 0,
                    stream: false,
                    tls: false,
                    ts_ns: 1,
                    client,
                    server: "198.18.0.1".parse().unwrap(),
                    client_port: 40000 + u16::try_from(i).unwrap(),
                    server_port: 8080,
                    direction: Direction::Request,
                    seq: 1,
                    tcp_flags: 0x18,
                    ifindex: 1,
                    payload_len: u32::try_from(raw.len()).unwrap(),
                    data: bytes::Bytes::from(raw),
                }
            })
            .collect();
        let batch = api.handle_samples(&samples, 0.0);
        let mut routes: Vec<String> = batch.findings.iter().map(|f| f.route.clone()).collect();
        routes.sort();
        let st = api.state.lock().unwrap();
        let mut endpoints: Vec<String> = st
            .inventory
            .list()
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        endpoints.sort();
        assert_eq!(routes, ["GET /files/{id}", "GET /items/{id}"]);
        assert_eq!(endpoints, routes);
    }

    /// An HTTP/2 frame.
    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header block of literal fields (not indexed), after `prefix`.
    fn head(prefix: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = prefix.to_vec();
        for (n, v) in fields {
            b.extend([0, u8::try_from(n.len()).unwrap()]);
            b.extend_from_slice(n.as_bytes());
            b.push(u8::try_from(v.len()).unwrap());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    /// A trusted proxy multiplexes two clients on one h2c connection: each
    /// round, the guesser's call and then the benign client's are in flight
    /// before either is answered (UNAUTHENTICATED, then OK). Only the
    /// guesser is convicted of credential stuffing: a response goes to its
    /// own stream's client, not to the client the connection's latest
    /// forwarding header named.
    #[test]
    fn multiplexed_clients_behind_a_proxy_are_judged_by_stream() {
        let api = default_api();
        let proxy: IpAddr = "198.18.7.2".parse().unwrap();
        let (guesser, benign) = ("198.18.9.1", "198.18.9.2");
        api.state.lock().unwrap().trusted = vec!["198.18.7.0/24".parse().unwrap()];
        let mk = |dir: Direction, seq: u32, data: Vec<u8>| Sample {
            cookie: 9,
            stream: dir == Direction::Request,
            tls: false,
            ts_ns: 1,
            client: proxy,
            server: "198.18.0.1".parse().unwrap(),
            client_port: 41000,
            server_port: 8080,
            direction: dir,
            seq,
            tcp_flags: 0x18,
            ifindex: 1,
            payload_len: u32::try_from(data.len()).unwrap(),
            data: bytes::Bytes::from(data),
        };
        // Next sequence number of each direction.
        let mut seqs = [0u32; 2];
        let push =
            |samples: &mut Vec<Sample>, seqs: &mut [u32; 2], dir: Direction, data: Vec<u8>| {
                let seq = &mut seqs[usize::from(dir == Direction::Response)];
                let len = u32::try_from(data.len()).unwrap();
                samples.push(mk(dir, *seq, data));
                *seq += len;
            };
        let mut samples = Vec::new();
        push(
            &mut samples,
            &mut seqs,
            Direction::Request,
            tollgate_detect::h2::PREFACE.to_vec(),
        );
        push(
            &mut samples,
            &mut seqs,
            Direction::Response,
            frame(4, 0, 0, &[]),
        );
        let mut findings = Vec::new();
        for round in 0..15u32 {
            let (g, b) = (4 * round + 1, 4 * round + 3);
            for (stream, who) in [(g, guesser), (b, benign)] {
                let fields = [
                    (":path", "/a.S/Secret"),
                    ("content-type", "application/grpc"),
                    ("x-forwarded-for", who),
                ];
                // :method POST, :scheme http (static), then literals.
                let block = head(&[0x83, 0x86], &fields);
                let mut bytes = frame(1, 0x4, stream, &block);
                bytes.extend(frame(0, 0x1, stream, b"\0\0\0\0\0"));
                push(&mut samples, &mut seqs, Direction::Request, bytes);
            }
            for (stream, status) in [(g, "16"), (b, "0")] {
                let block = head(&[0x88], &[("grpc-status", status)]);
                push(
                    &mut samples,
                    &mut seqs,
                    Direction::Response,
                    frame(1, 0x5, stream, &block),
                );
            }
            findings.extend(
                api.handle_samples(&std::mem::take(&mut samples), 0.0)
                    .findings,
            );
        }
        let convicted: Vec<String> = findings
            .iter()
            .filter(|f| {
                f.decision
                    .violations
                    .iter()
                    .any(|v| v.rule == "auth.credential_stuffing")
            })
            .map(|f| f.client.to_string())
            .collect();
        assert!(!convicted.is_empty(), "{findings:?}");
        assert!(convicted.iter().all(|c| c == guesser), "{convicted:?}");
        assert!(findings.iter().all(|f| f.proxy == Some(proxy)));
    }

    const XFF: ProxyHeader = ProxyHeader::XForwardedFor;

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["198.18.7.0/24".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // The client wrote the left-most entry itself: never believed.
        assert_eq!(
            forwarded_client(
                &h(&[("X-Forwarded-For", "1.2.3.4, 198.18.0.5, 198.18.7.2")]),
                &trusted,
                XFF
            ),
            ip("198.18.0.5")
        );
        assert_eq!(
            forwarded_client(&h(&[("x-forwarded-for", "198.18.0.5")]), &trusted, XFF),
            ip("198.18.0.5")
        );
        // Several headers are one list, in order.
        assert_eq!(
            forwarded_client(
                &h(&[
                    ("X-Forwarded-For", "9.9.9.9"),
                    ("X-Forwarded-For", "198.18.0.6")
                ]),
                &trusted,
                XFF
            ),
            ip("198.18.0.6")
        );
        // Only the header the proxy writes counts: a `Forwarded` the client
        // sent through an X-Forwarded-For proxy is ignored, and the other
        // way round.
        let both = h(&[
            (
                "Forwarded",
                "for=1.2.3.4, for=\"[fd00::5]:4711\";proto=https",
            ),
            ("X-Forwarded-For", "198.18.0.9"),
        ]);
        assert_eq!(forwarded_client(&both, &trusted, XFF), ip("198.18.0.9"));
        assert_eq!(
            forwarded_client(&both, &trusted, ProxyHeader::Forwarded),
            ip("fd00::5")
        );
        assert_eq!(
            forwarded_client(&both, &trusted, ProxyHeader::ProxyProtocol),
            None
        );
        assert_eq!(
            forwarded_client(&h(&[("X-Forwarded-For", "198.18.0.7:5000")]), &trusted, XFF),
            ip("198.18.0.7")
        );
        // Nothing usable: no client.
        assert_eq!(
            forwarded_client(
                &h(&[("X-Forwarded-For", "unknown, _hidden")]),
                &trusted,
                XFF
            ),
            None
        );
        assert_eq!(
            forwarded_client(&h(&[("X-Forwarded-For", "198.18.7.9")]), &trusted, XFF),
            None
        );
        assert_eq!(forwarded_client(&h(&[]), &trusted, XFF), None);
    }
}
