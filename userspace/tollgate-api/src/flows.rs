//! Per-flow reassembly of sampled segments into HTTP exchanges. Segments
//! are appended while they follow each other (TCP sequence numbers); a gap
//! (an unsampled segment) restarts the buffer, and whatever was not seen
//! whole is marked truncated rather than guessed. Requests queue per flow
//! so responses pair with them in order (keep-alive and pipelining).
//!
//! Parsing is `tollgate_detect`'s, the same as `tollgate detect` offline. A
//! request stream that is not HTTP/1.x (nor TLS), or stops parsing, is not
//! skipped: when it starts where a message starts, it becomes a stand-in
//! request ([`Request::unparseable`]) that the detectors report as
//! `protocol.unparseable` and inspect for injections, once per connection (a
//! server stops reading a connection at its first unparseable request).
//!
//! A request stream that starts with the HTTP/2 client preface (prior
//! knowledge, or after an `Upgrade: h2c` request) is handed to a
//! [`tollgate_detect::h2::Decoder`] when its bytes come in order from the
//! socket (or a capture file): frames, HPACK in order, one request per
//! stream. Connections seen only through NIC samples (the first packets, then
//! one in N) are not decoded as HTTP/2: HPACK cannot survive the gaps. They
//! are counted (`h2_not_decoded`).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;

use tollgate_detect::{
    BodyRest, HTTP_09, HttpError, Kind, MAX_HEADER_BYTES, Parsed, Request, Response, classify,
    h2::{self, Preface},
    parse_request_final, parse_request_streaming, parse_response_waiting,
};

use super::sample::{Direction, Sample};

/// Response bytes buffered per flow before giving up on a message.
pub const MAX_BUFFER: usize = 16 * 1024;
/// Body bytes of a request judged by default (`sampling.body_bytes`): the
/// head is always judged whole, a body from its start up to this many bytes;
/// the rest is passed over by its framing to the next request.
pub const DEFAULT_BODY_CAP: usize = 16 * 1024;
/// Bytes after which a flow's first token must have ended (longer tokens
/// are not HTTP methods any server accepts).
const UNDECIDED_MAX: usize = 24;
/// Requests awaiting their response, per flow.
const MAX_PENDING: usize = 64;

/// One parsed request or response, as `tollgate tap` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ApiEvent {
    /// Unix time, seconds with fraction.
    pub time: f64,
    /// The client.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// The server.
    pub server: IpAddr,
    /// API port.
    pub port: u16,
    /// `request` or `response`.
    pub direction: Direction,
    /// Method (a response carries its request's, once paired).
    pub method: Option<String>,
    /// Path (without query).
    pub path: Option<String>,
    /// Query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// GraphQL requests: the operations called (`mutation login`, several
    /// joined by `, `).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Status code (responses).
    pub status: Option<u16>,
    /// Milliseconds from request to response, when paired.
    pub latency_ms: Option<f64>,
    /// Part of the message was not seen.
    pub truncated: bool,
    /// The kernel accepted this request's bytes on a connection whose
    /// handshake completed (false: possibly spoofed; never scored or banned).
    pub verified: bool,
    /// The parsed request, for detectors and the inventory (not printed).
    #[serde(skip)]
    pub request: Option<Request>,
    /// The parsed response, for the response-side checks (not printed).
    #[serde(skip)]
    pub response: Option<Response>,
    /// The trusted proxy the request came through (`client` is then the
    /// client the proxy named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<IpAddr>,
    /// The client a PROXY header at the start of the connection named (used
    /// only when the connection comes from a trusted proxy).
    #[serde(skip)]
    pub header_client: Option<IpAddr>,
    /// The client the connection's last forwarding header named (for
    /// HTTP/1 responses, which carry none).
    #[serde(skip)]
    pub forwarded_client: Option<IpAddr>,
    /// HTTP/2 responses: the forwarding fields (`X-Forwarded-For`,
    /// `Forwarded`) of the request on the same stream, empty when that
    /// request was not seen. A proxy multiplexes many clients on one
    /// connection, so its latest forwarding header says nothing about the
    /// client a response goes to; the stream's own request does.
    #[serde(skip)]
    pub stream_forwarding: Option<Vec<(String, String)>>,
    /// A stand-in for a request whose stream stalled part-way: judged as far
    /// as it went, and again once the rest comes (see `resumed`).
    #[serde(skip)]
    pub stalled: bool,
    /// This request was judged before, as a stand-in when its stream
    /// stalled: what that judgement found (and counted) is not counted again.
    #[serde(skip)]
    pub resumed: bool,
}

/// Counters of what the pipeline saw.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct FlowStats {
    /// Samples handled.
    pub samples: u64,
    /// Requests parsed.
    pub requests: u64,
    /// Responses parsed.
    pub responses: u64,
    /// Samples from TLS flows (skipped).
    pub tls: u64,
    /// Samples that are neither HTTP nor TLS (responses skipped, requests
    /// reported as unparseable).
    pub other: u64,
    /// Request buffers that were not HTTP/1.x: reported once per connection
    /// as `protocol.unparseable`.
    #[serde(default)]
    pub unparseable: u64,
    /// Messages marked truncated.
    pub truncated: u64,
    /// Flows evicted to stay within bounds.
    pub evicted: u64,
    /// Flows forgotten after being idle.
    #[serde(default)]
    pub expired: u64,
    /// Body bytes passed over unjudged (beyond `sampling.body_bytes`),
    /// following the body's framing to the next request.
    #[serde(default)]
    pub body_bytes_passed: u64,
    /// Times the request stream lost its place (bytes missing outside a
    /// body being passed over, or broken chunk framing): until the next
    /// request line, bytes are not taken for requests.
    #[serde(default)]
    pub resyncs: u64,
    /// Connections decoded as HTTP/2 (h2c, or h2 in TLS plaintext).
    #[serde(default)]
    pub h2_connections: u64,
    /// HTTP/2 requests whose header block could not be decoded (the HPACK
    /// table was out of step after an error): unknown, never guessed.
    #[serde(default)]
    pub h2_unknown: u64,
    /// HTTP/2 connections whose decoder stopped (bytes missing outside a
    /// body being passed over, or a frame the server refuses): their later
    /// requests are not seen.
    #[serde(default)]
    pub h2_lost: u64,
    /// HTTP/2 connections seen only through NIC samples: not decoded.
    #[serde(default)]
    pub h2_not_decoded: u64,
    /// HTTP/2 connections whose response decoder stopped (NIC samples of
    /// responses beyond a connection's first packets have gaps): their later
    /// responses (statuses, `grpc-status`) are not judged.
    #[serde(default)]
    pub h2_responses_lost: u64,
    /// HTTP/2 response header blocks that could not be decoded: unknown,
    /// never guessed.
    #[serde(default)]
    pub h2_responses_unknown: u64,
    /// Compressed gRPC request messages (flag 1).
    #[serde(default)]
    pub grpc_compressed_messages: u64,
    /// Compressed gRPC request messages the detectors did not read: their
    /// `grpc-encoding` is none they inflate (gzip and deflate are read).
    #[serde(default)]
    pub grpc_unread_messages: u64,
    /// HTTP/2 header blocks past 64 KiB or 128 CONTINUATION frames: decoded
    /// whole all the same (the HPACK table stays in step), the fields past
    /// the bounds dropped, the request judged truncated.
    #[serde(default)]
    pub h2_header_blocks_cut: u64,
    /// HTTP/2 header blocks past 256 KiB: HPACK cannot be fed the whole
    /// within the bounds, so what decoded of their first bytes was judged
    /// (truncated) and later blocks of that connection are unknown.
    #[serde(default)]
    pub h2_header_blocks_lost: u64,
    /// Of `h2_header_blocks_lost`, those cut because their client (an IPv4
    /// address, an IPv6 /64; behind a trusted proxy's PROXY header, the
    /// client it named) held its whole share of the budget for unfinished
    /// header blocks (1 MiB over all its connections): that client's
    /// requests go unknown, no other's.
    #[serde(default)]
    pub h2_header_blocks_over_share: u64,
    /// HTTP/2 streams awaiting their response dropped from a connection's
    /// table (more than 128 unanswered at once): their responses are not
    /// paired and, behind a proxy, attributed to no client.
    #[serde(default)]
    pub h2_streams_evicted: u64,
    /// The connection peer of the first block cut for its share (for the
    /// agent's log; not in `status`).
    #[serde(skip)]
    pub h2_first_over_share: Option<IpAddr>,
}

#[derive(Default)]
struct Half {
    buf: Vec<u8>,
    next_seq: Option<u32>,
    /// The buffer does not start at a message boundary we saw.
    broken: bool,
    /// What this direction turned out to be.
    kind: Option<Kind>,
    /// A sample of this direction was seen.
    seen: bool,
    /// Bytes were missed since the last message boundary: where the buffer
    /// starts is unknown (the middle of a body, say), so failing to parse it
    /// says nothing about the client.
    unknown_start: bool,
    /// What is left of the body of a request judged from its start
    /// (requests only): passed over, not buffered.
    skip: BodyRest,
    /// The request at the start of the buffer was judged as a stand-in when
    /// the stream stalled; it stays buffered so that the whole of it is
    /// judged when the rest comes (a server acts on the whole).
    stood_in: bool,
}

struct Pending {
    method: String,
    path: String,
    ts_ns: u64,
    /// HTTP/2: the request's forwarding fields (see [`forwarding_of`]).
    forwarding: Vec<(String, String)>,
}

/// Forwarding fields kept of each name (`X-Forwarded-For`, `Forwarded`)
/// per HTTP/2 stream awaiting its response.
const MAX_FORWARDING_FIELDS: usize = 4;
/// Bytes kept of each: the end of the value, where the hop the proxy
/// added (the one attribution reads) is.
const MAX_FORWARDING_VALUE: usize = 512;

/// The forwarding fields of a request, bounded: the last few of each name,
/// each cut to its last whole hops. Counted per name, as the agent reads
/// only the one its trusted proxy writes: fields of the other name, the
/// client's own words passed along, cannot push the proxy's out.
fn forwarding_of(fields: &[(String, String)]) -> Vec<(String, String)> {
    let (mut xff, mut fwd) = (0, 0);
    let mut out: Vec<(String, String)> = fields
        .iter()
        .rev()
        .filter(|(n, _)| {
            let count = if n.eq_ignore_ascii_case("forwarded") {
                &mut fwd
            } else if h2::is_forwarding(n) {
                &mut xff
            } else {
                return false;
            };
            *count += 1;
            *count <= MAX_FORWARDING_FIELDS
        })
        .map(|(n, v)| {
            let mut v = v.as_str();
            if v.len() > MAX_FORWARDING_VALUE {
                let mut at = v.len() - MAX_FORWARDING_VALUE;
                while !v.is_char_boundary(at) {
                    at += 1;
                }
                // From the first whole hop on.
                let tail = &v[at..];
                v = tail.split_once(',').map_or("", |(_, rest)| rest);
            }
            (n.clone(), v.to_owned())
        })
        .collect();
    out.reverse();
    out
}

#[derive(Default)]
struct Flow {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    last_ns: u64,
    /// The start of the request stream was checked for a PROXY header.
    proxy_checked: bool,
    /// The client it named.
    real: Option<IpAddr>,
    /// The peer that sent that header is a trusted proxy: the client it
    /// named is whose share of the header-block budget the connection takes.
    real_trusted: bool,
    /// The client a forwarding header named last.
    forwarded: Option<IpAddr>,
    /// Forwarding headers named more than one client on this connection.
    shared: bool,
    /// Requests come from the socket (stream records); packets sampled at
    /// the NIC in that direction are duplicates and ignored.
    streamed: bool,
    /// Both directions come from the server's TLS library (plaintext):
    /// whatever else is taken of the connection is ciphertext and ignored.
    tls: bool,
    /// The socket (cookie) of the last record taken at the socket, and the
    /// stream offset after it: where the stream program can stop copying
    /// once the connection turns out to be TLS.
    socket_end: Option<(u64, u32)>,
    /// What was buffered when the stream stalled was judged; cleared by the
    /// next bytes.
    stalled: bool,
    /// The agent's clock ([`Flows::clock_ns`]) when a sample last came.
    touched_ns: u64,
    /// An unparseable request was reported for this connection.
    unparseable_reported: bool,
    /// A request asked to switch protocols (`Upgrade`, `CONNECT`): what the
    /// client sends next may be WebSocket frames, HTTP/2 or a tunnel, not
    /// HTTP/1.x, and failing to parse it says nothing.
    upgrade_asked: bool,
    /// The request stream is HTTP/2, decoded in order.
    h2: Option<Box<h2::Decoder>>,
    /// The request stream is HTTP/2 but only NIC samples of it come: its
    /// bytes are not judged.
    h2_undecoded: bool,
    /// The response stream is HTTP/2, decoded in order from the server's
    /// preface (the first response bytes seen).
    h2_resp: Option<Box<h2::Decoder>>,
    /// HTTP/2 requests awaiting their response, by stream.
    h2_pending: BTreeMap<u32, Pending>,
}

type FlowId = (IpAddr, u16, IpAddr, u16);

impl Flow {
    /// Whose share of the HTTP/2 header-block budget this connection's
    /// decoders take: the client a trusted proxy's PROXY header named (a
    /// proxy in TCP mode passes each client's bytes, unfinished header
    /// blocks too, on a connection of its own), else the peer. Forwarding
    /// headers cannot name it: they sit inside the header blocks being
    /// charged, and a proxy that writes them reads whole blocks before it
    /// forwards any, so its connections hold next to nothing.
    fn h2_source(&self, peer: IpAddr) -> h2::Source {
        match self.real {
            Some(real) if self.real_trusted => h2::Source::of(real),
            _ => h2::Source::of(peer),
        }
    }

    /// One client's connection as far as is known: no second client named
    /// on it, and not HTTP/2 (multiplexed).
    fn alone(&self) -> bool {
        !self.shared && self.h2.is_none() && self.h2_resp.is_none()
    }
}

/// All flows being followed.
pub struct Flows {
    flows: HashMap<FlowId, Flow>,
    max_flows: usize,
    /// What was seen.
    pub stats: FlowStats,
    /// The agent's clock (boot-clock ns) as the caller last set it: when
    /// flows were touched, for expiry and stalls (sample timestamps may come
    /// from elsewhere, as in replays).
    pub clock_ns: u64,
    /// Body bytes of a request judged ([`DEFAULT_BODY_CAP`]).
    body_cap: usize,
    /// Stream offsets up to which the kernel may stop copying a socket's
    /// bytes (a body being passed over), by socket cookie; the agent hands
    /// them to the stream program.
    pub skip_hints: Vec<(u64, u32)>,
    /// HTTP/2 is decoded from NIC samples too (a capture file holds every
    /// packet; the agent's NIC sampler does not).
    h2_from_packets: bool,
    /// Trusted proxies: a PROXY header from one names the connection's
    /// source (see [`Flow::h2_source`]).
    trusted: Vec<IpNet>,
}

impl Flows {
    /// Follows at most `max_flows` flows at once (least recent evicted).
    #[must_use]
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: HashMap::new(),
            max_flows: max_flows.max(16),
            stats: FlowStats::default(),
            clock_ns: 0,
            body_cap: DEFAULT_BODY_CAP,
            skip_hints: Vec::new(),
            h2_from_packets: false,
            trusted: Vec::new(),
        }
    }

    /// The trusted proxies (for connections that start from now on).
    pub fn set_trusted(&mut self, nets: &[IpNet]) {
        self.trusted = nets.to_vec();
    }

    /// Decodes HTTP/2 from packets that are not socket records (replaying a
    /// capture file, which holds every packet of a flow in order).
    pub fn decode_h2_from_packets(&mut self) {
        self.h2_from_packets = true;
    }

    /// Judges at most `bytes` of each request body (heads are always judged
    /// whole).
    pub fn set_body_cap(&mut self, bytes: usize) {
        self.body_cap = bytes;
    }

    /// Remembers the real client of a flow from a trusted proxy (named by a
    /// forwarding header), for its later messages. Returns whether the
    /// connection has carried this client alone so far: never for HTTP/2
    /// (a proxy multiplexes its clients on one connection), and no longer
    /// once a second client was named on it (a proxy reusing its backend
    /// connections for several clients). Only such a connection may be cut
    /// when its client is banned: cutting a shared one would cut every
    /// client on it, a lever for an attacker to deny service to the rest.
    pub fn set_real(&mut self, id: (IpAddr, u16, IpAddr, u16), real: IpAddr) -> bool {
        let Some(f) = self.flows.get_mut(&id) else {
            return false;
        };
        if f.forwarded.is_some_and(|prev| prev != real) {
            f.shared = true;
        }
        f.forwarded = Some(real);
        f.alone()
    }

    /// Whether the connection has carried `real` alone so far (see
    /// [`Self::set_real`]), without naming a client.
    #[must_use]
    pub fn carries_alone(&self, id: (IpAddr, u16, IpAddr, u16), real: IpAddr) -> bool {
        self.flows
            .get(&id)
            .is_some_and(|f| f.forwarded == Some(real) && f.alone())
    }

    /// Judges the requests of streamed connections that stalled: nothing
    /// received since `before_ns` (the agent's clock) while a head, or a head and part of its
    /// body, waits in the buffer. A route handler may act on a head whose
    /// body never comes (`Expect: 100-continue`, a `Content-Length` the
    /// client never fills, a slowloris head), so the head is judged as far
    /// as it went; what arrives later is not taken for a new request.
    pub fn flush_stalled(&mut self, before_ns: u64, wall_offset: f64) -> Vec<ApiEvent> {
        let mut out = Vec::new();
        for (id, flow) in &mut self.flows {
            if flow.touched_ns < before_ns
                && !flow.stalled
                && let Some(dec) = flow.h2.as_deref_mut()
                && dec.has_open()
            {
                // Streams whose end did not come are judged as far as they
                // went, as an HTTP/1 head is (a handler may act on them).
                flow.stalled = true;
                let mut msgs = Vec::new();
                dec.flush(&mut msgs);
                let s = stalled_sample(*id, flow);
                let time = s.ts_ns as f64 / 1e9 + wall_offset;
                h2_events(flow, &s, time, msgs, &mut out, &mut self.stats);
                continue;
            }
            // One stand-in per request: a client dripping a byte a second
            // would otherwise have the whole buffer judged again each time
            // (the whole request is judged when it completes).
            if !flow.streamed
                || flow.req.buf.is_empty()
                || flow.req.kind != Some(Kind::HttpRequest)
                || flow.touched_ns >= before_ns
                || flow.stalled
                || flow.req.stood_in
            {
                continue;
            }
            flow.stalled = true;
            let s = stalled_sample(*id, flow);
            let time = s.ts_ns as f64 / 1e9 + wall_offset;
            let before = out.len();
            let held = flow.req.buf.clone();
            let stream = Stream {
                whole: false,
                wait: false,
                ended: true,
            };
            parse_all(
                flow,
                &s,
                time,
                stream,
                self.body_cap,
                &mut out,
                &mut self.stats,
            );
            if out.len() > before && !flow.req.unknown_start {
                // The rest of this message may still come: the request stays
                // buffered, to be judged whole with it (what the stand-in
                // found is not counted twice), so nothing a client sends
                // after a pause goes unjudged.
                for ev in &mut out[before..] {
                    ev.stalled = true;
                }
                flow.req.buf = held;
                flow.req.skip = BodyRest::Done;
                flow.req.stood_in = true;
            }
        }
        out
    }

    /// Forgets flows with nothing seen since `before_ns` (the agent's clock).
    pub fn expire(&mut self, before_ns: u64) {
        let n = self.flows.len();
        self.flows.retain(|_, f| f.touched_ns >= before_ns);
        self.stats.expired += (n - self.flows.len()) as u64;
        if self.flows.capacity() > 4 * self.flows.len().max(1024) {
            self.flows.shrink_to_fit();
        }
    }

    /// Whether the flow's requests come from the socket.
    #[must_use]
    pub fn is_streamed(&self, id: &(IpAddr, u16, IpAddr, u16)) -> bool {
        self.flows.get(id).is_some_and(|f| f.streamed)
    }

    /// Flows followed now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is followed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn evict(&mut self) {
        // Drop the least recent tenth in one go (amortised).
        let mut ages: Vec<(u64, FlowId)> =
            self.flows.iter().map(|(k, f)| (f.last_ns, *k)).collect();
        ages.sort_unstable_by_key(|(t, _)| *t);
        for (_, k) in ages.into_iter().take(self.max_flows / 10 + 1) {
            self.flows.remove(&k);
            self.stats.evicted += 1;
        }
    }

    /// Feeds one sample; returns the messages it completed. `wall_offset`
    /// converts the boot clock to Unix seconds.
    pub fn on_sample(&mut self, s: &Sample, wall_offset: f64) -> Vec<ApiEvent> {
        self.stats.samples += 1;
        let id = (s.client, s.client_port, s.server, s.server_port);
        if !self.flows.contains_key(&id) && self.flows.len() >= self.max_flows {
            self.evict();
        }
        let flow = self.flows.entry(id).or_default();
        flow.last_ns = s.ts_ns;
        flow.touched_ns = self.clock_ns;
        flow.stalled = false;
        if s.stream && !s.tls && s.cookie != 0 {
            flow.socket_end = Some((s.cookie, s.seq.wrapping_add(s.payload_len)));
        }
        if s.tls && !flow.tls {
            // What was taken of the connection so far is ciphertext.
            flow.tls = true;
            flow.streamed = true;
            flow.req = Half::default();
            flow.resp = Half::default();
            flow.proxy_checked = false;
            cipher_hint(flow, &mut self.skip_hints);
        } else if flow.tls && !s.tls {
            // More ciphertext: past the hint's reach (or the hint was lost).
            cipher_hint(flow, &mut self.skip_hints);
            return Vec::new();
        }
        if s.direction == Direction::Request {
            if s.stream && !flow.streamed {
                // The socket's stream starts at the connection's first byte:
                // what the NIC sampler buffered before is superseded.
                flow.streamed = true;
                flow.req = Half::default();
                flow.proxy_checked = false;
            } else if !s.stream && flow.streamed {
                return Vec::new();
            }
        }
        if s.direction == Direction::Response
            && (flow.h2_resp.is_some()
                || (!flow.resp.seen && !flow.h2_undecoded && h2::server_preface(&s.data)))
        {
            let time = s.ts_ns as f64 / 1e9 + wall_offset;
            let out = h2_response_sample(flow, s, time, self.body_cap, &mut self.stats);
            if s.tcp_flags & 0x05 != 0 {
                self.flows.remove(&id);
            }
            return out;
        }
        // Responses to an `Upgrade: h2c` request start as HTTP/1 (the 101),
        // then switch (see `switch_to_h2`).
        let upgrading = s.direction == Direction::Response && flow.upgrade_asked;
        if (flow.h2.is_some() || flow.h2_undecoded) && !upgrading {
            let time = s.ts_ns as f64 / 1e9 + wall_offset;
            let out = h2_sample(flow, s, time, &mut self.stats, &mut self.skip_hints);
            if s.tcp_flags & 0x05 != 0 {
                self.flows.remove(&id);
            }
            return out;
        }
        // The rest of a body being passed over: dropped here, by its framing,
        // so the next request is found where the server finds it.
        let mut data: &[u8] = &s.data;
        let mut seq = s.seq;
        if s.direction == Direction::Request && flow.req.skip != BodyRest::Done {
            let n = pass_body(&mut flow.req, s, &mut self.stats);
            data = &data[n..];
            seq = seq.wrapping_add(n as u32);
            if flow.req.skip == BodyRest::Done {
                flow.req.next_seq = Some(seq);
            } else {
                hint(flow, s, &mut self.skip_hints);
            }
            if data.is_empty() {
                flow.req.next_seq = (s.data.len() == s.payload_len as usize)
                    .then(|| s.seq.wrapping_add(s.payload_len));
                if s.tcp_flags & 0x05 != 0 {
                    self.flows.remove(&id);
                }
                return Vec::new();
            }
        }
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        let mut out = Vec::new();
        if half.next_seq != Some(seq) {
            // First sample of this direction, or a gap: what is buffered will
            // not be completed; report it as truncated, then start over.
            if !half.buf.is_empty()
                && matches!(half.kind, Some(Kind::HttpRequest | Kind::HttpResponse))
            {
                let time = s.ts_ns as f64 / 1e9 + wall_offset;
                let cut = Stream {
                    whole: false,
                    wait: false,
                    ended: false,
                };
                parse_all(flow, s, time, cut, self.body_cap, &mut out, &mut self.stats);
            }
            let half = match s.direction {
                Direction::Request => &mut flow.req,
                Direction::Response => &mut flow.resp,
            };
            half.broken = half.next_seq.is_some() && !half.buf.is_empty();
            half.unknown_start = half.seen;
            half.buf.clear();
            half.stood_in = false;
        }
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        half.buf.extend_from_slice(data);
        half.seen = true;
        let whole = s.data.len() == s.payload_len as usize;
        half.next_seq = whole.then(|| s.seq.wrapping_add(s.payload_len));
        if s.direction == Direction::Request && !flow.proxy_checked {
            match super::proxyproto::parse(&flow.req.buf) {
                super::proxyproto::Header::Incomplete if whole => {}
                super::proxyproto::Header::Complete { client, len } => {
                    flow.real = client;
                    flow.real_trusted = self.trusted.iter().any(|n| n.contains(&s.client));
                    flow.req.buf.drain(..len.min(flow.req.buf.len()));
                    flow.proxy_checked = true;
                }
                _ => flow.proxy_checked = true,
            }
            if !flow.proxy_checked || flow.req.buf.is_empty() {
                return Vec::new();
            }
        }
        let closing = s.tcp_flags & 0x05 != 0;
        if s.direction == Direction::Request
            && let Some(out) = self.start_h2(id, s, wall_offset, whole && !closing)
        {
            return out;
        }
        let flow = self.flows.entry(id).or_default();
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        // A stream that began with a TLS handshake stays TLS: its next
        // records (application data, alerts) are no handshake.
        if half.kind != Some(Kind::Tls) && (half.kind.is_none() || half.buf.len() == data.len()) {
            // A stream may start with a byte or two (`G`, `E`, ...): decide
            // only once the first token can be told apart, as a server would.
            let undecided = half.buf.len() < UNDECIDED_MAX && half.buf.iter().all(|b| is_tchar(*b));
            half.kind = (!undecided).then(|| classify(&half.buf));
            if half.kind.is_none() && whole && !closing {
                return out;
            }
        }
        match half.kind {
            Some(Kind::Tls) => {
                self.stats.tls += 1;
                half.buf.clear();
            }
            Some(Kind::Other)
                if s.direction == Direction::Request && h2::looks_like_frames(&half.buf) =>
            {
                // HTTP/2 joined after its start (no preface to see): its
                // header blocks cannot be decoded; counted, not judged.
                self.stats.h2_not_decoded += 1;
                flow.h2_undecoded = true;
                flow.req.buf = Vec::new();
            }
            Some(Kind::Other) => {
                self.stats.other += 1;
                if s.direction == Direction::Request {
                    let time = s.ts_ns as f64 / 1e9 + wall_offset;
                    unparseable(flow, s, time, HttpError::NotHttp, &mut out, &mut self.stats);
                }
                let half = match s.direction {
                    Direction::Request => &mut flow.req,
                    Direction::Response => &mut flow.resp,
                };
                half.buf.clear();
                // The next bytes continue what was not parsed.
                half.unknown_start = true;
            }
            _ => {
                let time = s.ts_ns as f64 / 1e9 + wall_offset;
                // Wait for the rest of a body while the stream is whole and
                // open; once it ended, a head without its empty line is ended.
                let stream = Stream {
                    whole,
                    wait: whole && !closing,
                    ended: whole && closing,
                };
                parse_all(
                    flow,
                    s,
                    time,
                    stream,
                    self.body_cap,
                    &mut out,
                    &mut self.stats,
                );
                if s.direction == Direction::Request && flow.req.skip != BodyRest::Done {
                    hint(flow, s, &mut self.skip_hints);
                }
                // An `Upgrade: h2c` request answered, then the preface.
                if s.direction == Direction::Request
                    && let Some(more) = self.start_h2(id, s, wall_offset, whole && !closing)
                {
                    out.extend(more);
                }
            }
        }
        if closing {
            // FIN or RST: the flow is over.
            self.flows.remove(&id);
        }
        out
    }
}

impl Flows {
    /// Switches the flow's request stream to HTTP/2 when its buffer starts,
    /// at a message boundary, with the client preface: returns the events of
    /// what was buffered, or `Some(empty)` while a prefix of the preface
    /// waits for more (`wait`). `None`: not HTTP/2, carry on with HTTP/1.
    fn start_h2(
        &mut self,
        id: FlowId,
        s: &Sample,
        wall_offset: f64,
        wait: bool,
    ) -> Option<Vec<ApiEvent>> {
        let flow = self.flows.get_mut(&id)?;
        if flow.req.unknown_start || flow.req.broken || flow.h2.is_some() {
            return None;
        }
        match h2::preface(&flow.req.buf) {
            Preface::No => None,
            Preface::Partial => wait.then(Vec::new),
            Preface::Complete if !s.stream && !self.h2_from_packets => {
                self.stats.h2_not_decoded += 1;
                flow.h2_undecoded = true;
                flow.req.buf = Vec::new();
                Some(Vec::new())
            }
            Preface::Complete => {
                self.stats.h2_connections += 1;
                let mut dec = h2::Decoder::new(h2::Side::Client, self.body_cap)
                    .with_source(flow.h2_source(s.client));
                let mut msgs = Vec::new();
                let before = BlockCounts::of(&dec);
                dec.feed(&std::mem::take(&mut flow.req.buf), &mut msgs);
                if dec.lost().is_some() {
                    self.stats.h2_lost += 1;
                }
                before.add_since(&dec, s.client, &mut self.stats);
                flow.h2 = Some(Box::new(dec));
                let time = s.ts_ns as f64 / 1e9 + wall_offset;
                let mut out = Vec::new();
                h2_events(flow, s, time, msgs, &mut out, &mut self.stats);
                h2_hint(flow, s, &mut self.skip_hints);
                Some(out)
            }
        }
    }
}

/// What a decoder's cut and lost header blocks were before it read more.
#[derive(Clone, Copy)]
struct BlockCounts {
    cut: u64,
    lost: u64,
    over_share: u64,
}

impl BlockCounts {
    fn of(dec: &h2::Decoder) -> Self {
        Self {
            cut: dec.counters.blocks_cut,
            lost: dec.counters.blocks_lost,
            over_share: dec.counters.blocks_over_share,
        }
    }

    /// Adds what `dec` counted since to `stats`; names `client` the first
    /// time a block is cut for its share.
    fn add_since(self, dec: &h2::Decoder, client: IpAddr, stats: &mut FlowStats) {
        let now = Self::of(dec);
        stats.h2_header_blocks_cut += now.cut - self.cut;
        stats.h2_header_blocks_lost += now.lost - self.lost;
        if now.over_share > self.over_share {
            if stats.h2_header_blocks_over_share == 0 {
                stats.h2_first_over_share = Some(client);
            }
            stats.h2_header_blocks_over_share += now.over_share - self.over_share;
        }
    }
}

/// A stand-in sample for judging what a stalled flow holds.
fn stalled_sample(id: FlowId, flow: &Flow) -> Sample {
    Sample {
        ts_ns: flow.last_ns,
        client: id.0,
        client_port: id.1,
        server: id.2,
        server_port: id.3,
        direction: Direction::Request,
        seq: flow.req.next_seq.unwrap_or(0),
        tcp_flags: 0,
        ifindex: 0,
        payload_len: 0,
        stream: true,
        tls: flow.tls,
        cookie: 0,
        data: bytes::Bytes::new(),
    }
}

/// One sample of an HTTP/2 connection. Requests go through its decoder in
/// order: bytes missing where the decoder may pass over them (DATA beyond
/// the body cap, the kernel told to skip) cost nothing, anywhere else the
/// decoder stops and later requests are not seen. Responses are not decoded.
fn h2_sample(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    stats: &mut FlowStats,
    hints: &mut Vec<(u64, u32)>,
) -> Vec<ApiEvent> {
    let mut out = Vec::new();
    if s.direction != Direction::Request || (!s.stream && flow.streamed) {
        return out;
    }
    let Some(dec) = flow.h2.as_deref_mut() else {
        return out;
    };
    let was_lost = dec.lost().is_some();
    let before = BlockCounts::of(dec);
    let mut msgs = Vec::new();
    feed_in_order(dec, &mut flow.req.next_seq, s, &mut msgs);
    before.add_since(dec, s.client, stats);
    if s.tcp_flags & 0x05 != 0 {
        dec.flush(&mut msgs);
    }
    if !was_lost && dec.lost().is_some() {
        stats.h2_lost += 1;
    }
    h2_events(flow, s, time, msgs, &mut out, stats);
    h2_hint(flow, s, hints);
    out
}

/// Feeds `s` to `dec`, which expects the direction's byte `next_seq` next:
/// bytes before it (a retransmission) are read already, bytes missing before
/// or within the sample are passed over where the decoder may (DATA not
/// followed), and lose it anywhere else.
fn feed_in_order(
    dec: &mut h2::Decoder,
    next_seq: &mut Option<u32>,
    s: &Sample,
    msgs: &mut Vec<h2::Message>,
) {
    let mut data: &[u8] = &s.data;
    if let Some(expected) = *next_seq
        && expected != s.seq
    {
        let gap = s.seq.wrapping_sub(expected);
        if gap >= 1 << 31 {
            // Bytes from before what was read (a retransmission): read already,
            // unless the sample reaches past them.
            let dup = expected.wrapping_sub(s.seq) as usize;
            data = data.get(dup..).unwrap_or_default();
        } else {
            dec.skip_unseen(u64::from(gap), msgs);
        }
    }
    if !data.is_empty() {
        dec.feed(data, msgs);
    }
    let missing = (s.payload_len as usize).saturating_sub(s.data.len());
    dec.skip_unseen(missing as u64, msgs);
    let end = s.seq.wrapping_add(s.payload_len);
    if next_seq.is_none_or(|n| end.wrapping_sub(n) < 1 << 31) {
        *next_seq = Some(end);
    }
}

/// One response sample of an HTTP/2 connection, from the server's preface
/// on, in order: each stream's response (with its trailers' fields, so
/// `grpc-status` too) paired with its request by stream. NIC samples of a
/// long-lived connection have gaps past its first packets: the decoder then
/// stops (counted), later responses are not judged, never guessed.
fn h2_response_sample(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    body_cap: usize,
    stats: &mut FlowStats,
) -> Vec<ApiEvent> {
    let mut out = Vec::new();
    flow.resp.seen = true;
    let source = flow.h2_source(s.client);
    let dec = flow.h2_resp.get_or_insert_with(|| {
        Box::new(h2::Decoder::new(h2::Side::Server, body_cap).with_source(source))
    });
    if dec.lost().is_some() {
        return out;
    }
    let before = BlockCounts::of(dec);
    let mut msgs = Vec::new();
    feed_in_order(dec, &mut flow.resp.next_seq, s, &mut msgs);
    before.add_since(dec, s.client, stats);
    if dec.lost().is_some() {
        stats.h2_responses_lost += 1;
    }
    h2_response_events(flow, s, time, msgs, &mut out, stats);
    out
}

/// The events of decoded HTTP/2 responses, each paired with its request by
/// stream.
fn h2_response_events(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    msgs: Vec<h2::Message>,
    out: &mut Vec<ApiEvent>,
    stats: &mut FlowStats,
) {
    for m in msgs {
        match m {
            h2::Message::Response { stream, response } => {
                // Interim (1xx) heads do not answer the request.
                if response.status < 200 {
                    continue;
                }
                stats.responses += 1;
                stats.truncated += u64::from(response.truncated);
                let mut ev = base_event(flow, s, time, Direction::Response);
                ev.status = Some(response.status);
                ev.truncated = response.truncated;
                // Never the connection's latest forwarding header: the
                // stream's own request names its client.
                ev.forwarded_client = None;
                if let Some(p) = flow.h2_pending.remove(&stream) {
                    ev.latency_ms = Some(s.ts_ns.saturating_sub(p.ts_ns) as f64 / 1e6);
                    ev.method = Some(p.method);
                    ev.path = Some(p.path);
                    ev.stream_forwarding = Some(p.forwarding);
                } else {
                    // Answered before the request ended (a refusal in the
                    // response head): its head is still held.
                    let open = flow.h2.as_deref().and_then(|d| d.fields_of(stream));
                    ev.stream_forwarding = Some(open.map(forwarding_of).unwrap_or_default());
                }
                ev.response = Some(response);
                out.push(ev);
            }
            h2::Message::Unknown { .. } => stats.h2_responses_unknown += 1,
            // The server refused the stream: no (further) response comes.
            h2::Message::Reset { stream } => {
                flow.h2_pending.remove(&stream);
            }
            h2::Message::Request { .. } => {}
        }
    }
}

/// The response stream switched to HTTP/2 after `101 Switching Protocols`
/// (an `Upgrade: h2c` request answered): what follows the 101 is the
/// server's preface and frames, and the upgraded request is stream 1.
fn switch_to_h2(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    body_cap: usize,
    out: &mut Vec<ApiEvent>,
    stats: &mut FlowStats,
) {
    if let Some(p) = flow.pending.pop_front() {
        flow.h2_pending.insert(1, p);
    }
    let rest = std::mem::take(&mut flow.resp.buf);
    let mut dec =
        h2::Decoder::new(h2::Side::Server, body_cap).with_source(flow.h2_source(s.client));
    let mut msgs = Vec::new();
    dec.feed(&rest, &mut msgs);
    if dec.lost().is_some() {
        stats.h2_responses_lost += 1;
    }
    flow.h2_resp = Some(Box::new(dec));
    h2_response_events(flow, s, time, msgs, out, stats);
}

/// The events of decoded HTTP/2 messages.
fn h2_events(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    msgs: Vec<h2::Message>,
    out: &mut Vec<ApiEvent>,
    stats: &mut FlowStats,
) {
    for m in msgs {
        match m {
            h2::Message::Request { stream, request } => {
                let truncated = request.truncated;
                stats.requests += 1;
                let (compressed, unread) =
                    tollgate_detect::detect::grpc_compressed_messages(&request);
                stats.grpc_compressed_messages += compressed;
                stats.grpc_unread_messages += unread;
                if flow.h2_pending.len() >= h2::MAX_OPEN_STREAMS
                    && !flow.h2_pending.contains_key(&stream)
                {
                    // Streams never answered (or answered unseen): the oldest go.
                    flow.h2_pending.pop_first();
                    stats.h2_streams_evicted += 1;
                }
                flow.h2_pending.insert(
                    stream,
                    Pending {
                        method: request.method.clone(),
                        path: request.path.clone(),
                        ts_ns: s.ts_ns,
                        forwarding: forwarding_of(&request.headers),
                    },
                );
                stats.truncated += u64::from(truncated);
                out.push(request_event(flow, s, time, request, truncated));
            }
            h2::Message::Unknown { .. } => stats.h2_unknown += 1,
            // The client gave up on the stream: no response comes.
            h2::Message::Reset { stream } => {
                flow.h2_pending.remove(&stream);
            }
            h2::Message::Response { .. } => {}
        }
    }
}

/// Tells the stream program how many bytes of the HTTP/2 stream it need not
/// copy (DATA past the body cap, frames passed over).
fn h2_hint(flow: &Flow, s: &Sample, hints: &mut Vec<(u64, u32)>) {
    let (Some(dec), Some(next)) = (flow.h2.as_deref(), flow.req.next_seq) else {
        return;
    };
    let left = dec.skippable();
    if s.stream && s.cookie != 0 && left >= 4096 {
        let left = u32::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        hints.push((s.cookie, next.wrapping_add(left)));
    }
}

/// Passes over the start of `s` that belongs to the body being skipped;
/// returns how many of its captured bytes that is. Bytes missing before it
/// (a lost record, an unsampled packet) are fine inside that body; anywhere
/// else the stream lost its place: the gap handling that follows resyncs.
fn pass_body(half: &mut Half, s: &Sample, stats: &mut FlowStats) -> usize {
    let Some(expected) = half.next_seq else {
        half.skip = BodyRest::Done;
        stats.resyncs += 1;
        return 0;
    };
    let gap = u64::from(s.seq.wrapping_sub(expected));
    if gap >= 1 << 31 {
        // Bytes from before what was seen (a retransmission): not the body's.
        half.skip = BodyRest::Done;
        stats.resyncs += 1;
        return 0;
    }
    let n = match &mut half.skip {
        BodyRest::Done => return 0,
        BodyRest::Bytes(left) if gap <= *left => {
            *left -= gap;
            let take = (*left).min(s.data.len() as u64);
            *left -= take;
            if *left == 0 {
                half.skip = BodyRest::Done;
            }
            take as usize
        }
        BodyRest::Chunked(c) if c.data_left() >= gap => {
            c.skip_unseen(gap);
            let advanced = c.advance(&s.data);
            match advanced {
                Ok(Some(end)) => {
                    half.skip = BodyRest::Done;
                    end
                }
                Ok(None) => s.data.len(),
                Err(_) => {
                    // The server refuses a broken chunk and stops reading the
                    // connection: what follows is not a request.
                    half.skip = BodyRest::Done;
                    half.unknown_start = true;
                    stats.resyncs += 1;
                    stats.body_bytes_passed += s.data.len() as u64;
                    return s.data.len();
                }
            }
        }
        _ => {
            half.skip = BodyRest::Done;
            stats.resyncs += 1;
            return 0;
        }
    };
    stats.body_bytes_passed += gap + n as u64;
    n
}

/// Tells the stream program where the body being passed over ends (or the
/// current chunk's data), so it need not copy those bytes.
fn hint(flow: &Flow, s: &Sample, hints: &mut Vec<(u64, u32)>) {
    if !s.stream || s.cookie == 0 {
        return;
    }
    let Some(next) = flow.req.next_seq else {
        return;
    };
    let left = match &flow.req.skip {
        BodyRest::Bytes(n) => *n,
        BodyRest::Chunked(c) => c.data_left(),
        BodyRest::Done => 0,
    };
    // Small remainders are not worth a map write.
    if left >= 4096 {
        let left = u32::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        hints.push((s.cookie, next.wrapping_add(left)));
    }
}

/// The ciphertext a TLS connection's socket receives is ignored (its
/// plaintext comes from the library): the stream program need not copy it,
/// which saves a ring record and a wake-up of the agent per request. The
/// hint reaches 1 GiB past the last record seen (its furthest), and is
/// renewed if ciphertext comes again.
fn cipher_hint(flow: &mut Flow, hints: &mut Vec<(u64, u32)>) {
    if let Some((cookie, end)) = flow.socket_end.take() {
        hints.push((cookie, end.wrapping_add(1 << 30)));
    }
}

/// RFC 9110 token characters (what a method is made of).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The event of a request ready for the detectors.
fn base_event(flow: &Flow, s: &Sample, time: f64, direction: Direction) -> ApiEvent {
    ApiEvent {
        time,
        client: s.client,
        client_port: s.client_port,
        server: s.server,
        port: s.server_port,
        direction,
        method: None,
        path: None,
        query: None,
        operation: None,
        status: None,
        latency_ms: None,
        truncated: false,
        verified: true,
        request: None,
        response: None,
        proxy: None,
        header_client: flow.real,
        forwarded_client: flow.forwarded,
        stream_forwarding: None,
        stalled: false,
        resumed: false,
    }
}

fn request_event(flow: &Flow, s: &Sample, time: f64, req: Request, truncated: bool) -> ApiEvent {
    let mut ev = base_event(flow, s, time, Direction::Request);
    ev.method = (!req.method.is_empty()).then(|| req.method.clone());
    ev.path = Some(req.path.clone());
    ev.query.clone_from(&req.query);
    ev.truncated = truncated;
    ev.request = Some(req);
    ev
}

/// The request buffer is not HTTP/1.x (`why`): a stand-in request for the
/// detectors, when the buffer starts where a message starts and the
/// connection has not had one yet. The caller drops the buffer.
fn unparseable(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    why: HttpError,
    out: &mut Vec<ApiEvent>,
    stats: &mut FlowStats,
) {
    stats.unparseable += 1;
    if flow.req.unknown_start
        || flow.unparseable_reported
        || flow.upgrade_asked
        || flow.req.buf.is_empty()
    {
        return;
    }
    flow.unparseable_reported = true;
    let req = Request::unparseable(&flow.req.buf, why);
    out.push(request_event(flow, s, time, req, flow.req.broken));
}

/// What is known of the stream a buffer was taken from.
#[derive(Clone, Copy)]
struct Stream {
    /// The last sample was captured whole.
    whole: bool,
    /// More may follow: an incomplete body is waited for.
    wait: bool,
    /// Nothing more follows (FIN or RST): a head without its empty line ended.
    ended: bool,
}

fn parse_all(
    flow: &mut Flow,
    s: &Sample,
    time: f64,
    stream: Stream,
    body_cap: usize,
    out: &mut Vec<ApiEvent>,
    stats: &mut FlowStats,
) {
    let Stream { whole, wait, ended } = stream;
    loop {
        let mut dropped = false;
        let mut switched = false;
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        if half.buf.is_empty() {
            break;
        }
        let consumed = match s.direction {
            Direction::Request => {
                if !half.unknown_start && h2::preface(&half.buf) != Preface::No {
                    // HTTP/2 from here (after `Upgrade: h2c`): the caller switches.
                    break;
                }
                // Heads are waited for up to the parser's own limit, bodies
                // up to the cap; then what is left of a body is passed over.
                let parsed = parse_request_streaming(&half.buf, if wait { body_cap } else { 0 })
                    .and_then(|(p, rest)| match p {
                        Parsed::Partial if ended => {
                            parse_request_final(&half.buf).map(|p| (p, BodyRest::Done))
                        }
                        p => Ok((p, rest)),
                    });
                match parsed.map(|(p, rest)| {
                    if matches!(p, Parsed::Complete { .. }) {
                        half.skip = rest;
                    }
                    p
                }) {
                    // After a gap, any `word word` line in a body would look like
                    // an HTTP/0.9 request: resynchronise on versioned lines only.
                    Ok(Parsed::Complete { msg, .. })
                        if half.unknown_start && msg.version == HTTP_09 =>
                    {
                        dropped = true;
                        half.buf.len()
                    }
                    Ok(Parsed::Complete { msg, consumed }) => {
                        let resumed = std::mem::take(&mut half.stood_in);
                        let truncated =
                            msg.truncated || half.broken || !whole && consumed == half.buf.len();
                        stats.requests += 1;
                        stats.truncated += u64::from(truncated);
                        flow.upgrade_asked |= msg.header("upgrade").is_some()
                            || msg.method.eq_ignore_ascii_case("CONNECT");
                        if flow.pending.len() < MAX_PENDING {
                            flow.pending.push_back(Pending {
                                method: msg.method.clone(),
                                path: msg.path.clone(),
                                ts_ns: s.ts_ns,
                                forwarding: Vec::new(),
                            });
                        }
                        let mut ev = request_event(flow, s, time, msg, truncated);
                        ev.resumed = resumed;
                        out.push(ev);
                        consumed
                    }
                    Ok(Parsed::Partial) => break,
                    Err(e) => {
                        half.stood_in = false;
                        unparseable(flow, s, time, e, out, stats);
                        dropped = true;
                        flow.req.buf.len()
                    }
                }
            }
            Direction::Response => {
                let head = flow
                    .pending
                    .front()
                    .is_some_and(|p| p.method.eq_ignore_ascii_case("HEAD"));
                let wait = wait && half.buf.len() < MAX_BUFFER;
                match parse_response_waiting(&half.buf, head, wait) {
                    Ok(Parsed::Complete { msg, consumed }) => {
                        switched = msg.status == 101
                            && msg
                                .header("upgrade")
                                .is_some_and(|u| u.trim().eq_ignore_ascii_case("h2c"));
                        let truncated = msg.truncated || half.broken;
                        stats.responses += 1;
                        stats.truncated += u64::from(truncated);
                        let mut ev = base_event(flow, s, time, Direction::Response);
                        ev.status = Some(msg.status);
                        ev.truncated = truncated;
                        // Interim (1xx) responses do not answer the request.
                        if msg.status >= 200
                            && let Some(p) = flow.pending.pop_front()
                        {
                            ev.latency_ms = Some(s.ts_ns.saturating_sub(p.ts_ns) as f64 / 1e6);
                            ev.method = Some(p.method);
                            ev.path = Some(p.path);
                        }
                        ev.response = Some(msg);
                        out.push(ev);
                        consumed
                    }
                    Ok(Parsed::Partial) => break,
                    Err(_) => {
                        dropped = true;
                        half.buf.len()
                    }
                }
            }
        };
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        half.buf.drain(..consumed.min(half.buf.len()));
        half.broken = false;
        // What follows a message starts the next one; what follows bytes
        // that were dropped unparsed may be anything.
        half.unknown_start = dropped;
        if switched {
            // HTTP/2 from here: its statuses and `grpc-status` are judged.
            switch_to_h2(flow, s, time, body_cap, out, stats);
            return;
        }
    }
    let half = match s.direction {
        Direction::Request => &mut flow.req,
        Direction::Response => &mut flow.resp,
    };
    let limit = match s.direction {
        Direction::Request => MAX_HEADER_BYTES + body_cap,
        Direction::Response => MAX_BUFFER,
    };
    if half.buf.len() > limit {
        if s.direction == Direction::Request {
            // A request head longer than any server reads (nginx: 8 KiB lines).
            unparseable(flow, s, time, HttpError::HeadersTooLarge, out, stats);
        }
        let half = match s.direction {
            Direction::Request => &mut flow.req,
            Direction::Response => &mut flow.resp,
        };
        half.buf.clear();
        half.stood_in = false;
        half.unknown_start = true;
        half.broken = true;
        stats.truncated += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use bytes::Bytes;

    use super::*;

    fn sample(dir: Direction, seq: u32, data: &[u8], ts: u64) -> Sample {
        Sample {
            stream: false,
            tls: false,
            ts_ns: ts,
            client: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            server: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            client_port: 40000,
            server_port: 8080,
            direction: dir,
            seq,
            tcp_flags: 0x18,
            ifindex: 1,
            payload_len: u32::try_from(data.len()).unwrap(),
            cookie: 0,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// A socket stream's bytes cut in records of `rec` bytes from `off`.
    fn stream(
        f: &mut Flows,
        off: u32,
        bytes: &[u8],
        rec: usize,
        skip: &[(u32, u32)],
    ) -> Vec<ApiEvent> {
        let mut out = Vec::new();
        for (i, chunk) in bytes.chunks(rec).enumerate() {
            let seq = off + (i * rec) as u32;
            // Records the kernel did not copy (a lost record, a body passed over).
            if skip.iter().any(|(a, b)| seq >= *a && seq < *b) {
                continue;
            }
            let mut s = sample(Direction::Request, seq, chunk, 1);
            s.stream = true;
            s.cookie = 7;
            out.extend(f.on_sample(&s, 0.0));
        }
        out
    }

    fn paths(ev: &[ApiEvent]) -> Vec<String> {
        ev.iter().filter_map(|e| e.path.clone()).collect()
    }

    #[test]
    fn a_body_sent_after_a_stall_is_judged_with_its_head() {
        let mut f = Flows::new(100);
        let head = b"POST /items HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"a\":";
        let rest = b"\"1' OR '1'='1\",\"b\":\"xxxxxxxxx\"}";
        let next = b"GET /next HTTP/1.1\r\n\r\n";
        f.clock_ns = 1_000;
        assert!(stream(&mut f, 0, head, 1024, &[]).is_empty());
        // The client pauses: the head is judged as far as it went.
        f.clock_ns = 3_000_000_000;
        let stand_in = f.flush_stalled(2_000_000_000, 0.0);
        assert_eq!(paths(&stand_in), ["/items"]);
        assert!(stand_in[0].stalled && !stand_in[0].resumed);
        // Once, not at every check, nor after more of it trickles in.
        assert!(f.flush_stalled(2_500_000_000, 0.0).is_empty());
        let drip = stream(&mut f, head.len() as u32, &rest[..1], 1, &[]);
        assert!(drip.is_empty());
        f.clock_ns = 9_000_000_000;
        assert!(f.flush_stalled(8_000_000_000, 0.0).is_empty());
        // The body comes after the pause: the whole request is judged again,
        // with the body the server reads.
        let mut bytes = rest[1..].to_vec();
        bytes.extend_from_slice(next);
        let off = head.len() as u32 + 1;
        let ev = stream(&mut f, off, &bytes, 5, &[]);
        assert_eq!(paths(&ev), ["/items", "/next"]);
        assert!(ev[0].resumed && !ev[0].stalled);
        let body = &ev[0].request.as_ref().unwrap().body;
        assert!(body.ends_with(b"xxxxxxxxx\"}"), "{body:?}");
        assert!(!ev[1].resumed, "the next request is a request of its own");
        assert_eq!(f.stats.resyncs, 0);
    }

    #[test]
    fn a_request_after_a_long_body_is_judged() {
        let mut f = Flows::new(100);
        let mut bytes = b"POST /upload HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
        let head_len = bytes.len();
        // A body that carries a decoy request whose length would swallow
        // what follows.
        bytes.extend(std::iter::repeat_n(b'a', 100_000));
        bytes.extend_from_slice(b"\r\nGET /decoy HTTP/1.1\r\nContent-Length: 999999\r\n\r\n");
        bytes.resize(head_len + 200_000, b'b');
        bytes.extend_from_slice(b"GET /search?q=1'+OR+'1'='1 HTTP/1.1\r\n\r\n");
        let ev = stream(&mut f, 0, &bytes, 1024, &[]);
        assert_eq!(paths(&ev), ["/upload", "/search"]);
        assert!(ev[0].truncated, "judged from the body's first bytes");
        assert!(f.stats.body_bytes_passed > 180_000);
        assert_eq!(f.stats.resyncs, 0);
        // The kernel was told where the body ends.
        assert!(f.skip_hints.contains(&(7, (head_len + 200_000) as u32)));
    }

    #[test]
    fn bytes_missing_inside_a_passed_body_lose_nothing() {
        let mut f = Flows::new(100);
        f.set_body_cap(1000);
        let mut bytes = b"PUT /blob HTTP/1.1\r\nContent-Length: 50000\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 50_000, b'z');
        bytes.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        // Records from 10 KiB to 40 KiB never came (the kernel stopped
        // copying, or the ring was full).
        let ev = stream(&mut f, 5, &bytes, 1024, &[(10_240, 40_960)]);
        assert_eq!(paths(&ev), ["/blob", "/next"]);
        assert_eq!(f.stats.resyncs, 0);
        // Missing bytes outside a body: the stream lost its place.
        let mut g = Flows::new(100);
        let ev = stream(&mut g, 0, &bytes, 1024, &[(0, 60_000)]);
        assert!(paths(&ev).is_empty() || g.stats.truncated > 0);
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_real_end() {
        let mut f = Flows::new(100);
        f.set_body_cap(64);
        let mut bytes = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let data = [b'x'; 3000];
        for _ in 0..10 {
            bytes.extend_from_slice(b"BB8;ext=1\r\n");
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(b"\r\n");
        }
        // A fake terminator and request inside chunk data are data.
        let fake = b"0\r\n\r\nGET /fake HTTP/1.1\r\n\r\n";
        bytes.extend_from_slice(format!("{:x}\r\n", fake.len()).as_bytes());
        bytes.extend_from_slice(fake);
        bytes.extend_from_slice(b"\r\n000\r\nTrailer: x\r\n\r\n");
        bytes.extend_from_slice(b"GET /real?id=1;cat+/etc/passwd HTTP/1.1\r\n\r\n");
        for rec in [1, 7, 1024] {
            let mut f = Flows::new(100);
            f.set_body_cap(64);
            let ev = stream(&mut f, 0, &bytes, rec, &[]);
            assert_eq!(paths(&ev), ["/c", "/real"], "records of {rec} bytes");
            assert_eq!(f.stats.resyncs, 0);
        }
        // Broken framing: the server stops reading; nothing after is a request.
        let ev = stream(
            &mut f,
            0,
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX",
            1024,
            &[],
        );
        assert_eq!(paths(&ev), ["/b"]);
    }

    #[test]
    fn split_request_pipelining_and_pairing() {
        let mut f = Flows::new(100);
        let a = b"GET /users/1 HTTP/1.1\r\nHo";
        let b = b"st: x\r\n\r\nGET /users/2 HTTP/1.1\r\n\r\n";
        assert!(
            f.on_sample(&sample(Direction::Request, 100, a, 1_000_000), 0.0)
                .is_empty()
        );
        let ev = f.on_sample(
            &sample(Direction::Request, 100 + a.len() as u32, b, 2_000_000),
            0.0,
        );
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].path.as_deref(), Some("/users/1"));
        assert_eq!(ev[1].path.as_deref(), Some("/users/2"));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let ev = f.on_sample(&sample(Direction::Response, 5, r, 4_000_000), 0.0);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            (ev[0].status, ev[0].path.as_deref()),
            (Some(200), Some("/users/1"))
        );
        assert_eq!(
            (ev[1].status, ev[1].path.as_deref()),
            (Some(404), Some("/users/2"))
        );
        // Latency runs from the request being seen whole (2 ms) to its response.
        assert_eq!(ev[0].latency_ms, Some(2.0));
    }

    #[test]
    fn gaps_tls_and_other_are_not_guessed() {
        let mut f = Flows::new(100);
        f.on_sample(
            &sample(
                Direction::Request,
                1,
                b"POST /x HTTP/1.1\r\nContent-Length: 9000\r\n",
                1,
            ),
            0.0,
        );
        // A gap: the next sample does not follow on; it is not glued on.
        let ev = f.on_sample(&sample(Direction::Request, 5000, b"\r\nbody", 2), 0.0);
        assert!(ev.is_empty());
        let mut g = Flows::new(100);
        g.on_sample(
            &sample(Direction::Request, 1, b"\x16\x03\x01\x00\x10hello", 1),
            0.0,
        );
        assert_eq!(g.stats.tls, 1);
        g.on_sample(
            &sample(Direction::Response, 1, b"SSH-2.0-OpenSSH_9.2\r\n", 1),
            0.0,
        );
        assert_eq!(g.stats.other, 1);
        assert_eq!(g.stats.requests, 0);
    }

    #[test]
    fn tls_plaintext_supersedes_the_ciphertext_of_its_connection() {
        let mut f = Flows::new(100);
        // The ClientHello taken at the socket, then the library's plaintext
        // (offsets of its own), then more ciphertext: only plaintext counts.
        let mut hello = sample(Direction::Request, 0, b"\x16\x03\x01\x00\x10hello", 1);
        (hello.stream, hello.cookie) = (true, 7);
        f.on_sample(&hello, 0.0);
        let mut plain = sample(
            Direction::Request,
            0,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            2,
        );
        (plain.stream, plain.tls) = (true, true);
        assert_eq!(f.on_sample(&plain, 0.0).len(), 1);
        let mut more = sample(Direction::Request, 15, b"\x17\x03\x03\x00\x20data", 3);
        (more.stream, more.cookie) = (true, 7);
        assert!(f.on_sample(&more, 0.0).is_empty());
        // The stream program is told to stop copying that socket's
        // ciphertext for the next GiB: when the plaintext starts, and again
        // if ciphertext still comes.
        assert_eq!(f.skip_hints, [(7, 10 + (1 << 30)), (7, 15 + 9 + (1 << 30))]);
        let mut resp = sample(
            Direction::Response,
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            4,
        );
        resp.tls = true;
        let ev = f.on_sample(&resp, 0.0);
        assert_eq!(
            (ev[0].status, ev[0].path.as_deref()),
            (Some(200), Some("/a"))
        );
    }

    #[test]
    fn junk_at_the_start_is_reported_once_per_connection() {
        let mut f = Flows::new(100);
        let junk = b"\x00\x01\x02 hello?q=1\r\n";
        let ev = f.on_sample(&sample(Direction::Request, 1, junk, 1), 0.0);
        assert_eq!(ev.len(), 1);
        let req = ev[0].request.as_ref().unwrap();
        assert_eq!(req.malformed, Some(HttpError::NotHttp));
        assert_eq!(req.query.as_deref(), Some("q=1"));
        assert_eq!(ev[0].method, None);
        // More of the same connection: counted, not reported again.
        let next = 1 + junk.len() as u32;
        assert!(
            f.on_sample(&sample(Direction::Request, next, junk, 2), 0.0)
                .is_empty()
        );
        assert_eq!((f.stats.unparseable, f.stats.requests), (2, 0));
        // A request that starts like HTTP and breaks is reported too.
        let mut g = Flows::new(100);
        let ev = g.on_sample(
            &sample(Direction::Request, 1, b"GET /x HTTP/3.0\r\n\r\n", 1),
            0.0,
        );
        let req = ev[0].request.as_ref().unwrap();
        assert_eq!(req.malformed, Some(HttpError::BadVersion));
        assert_eq!(ev[0].method.as_deref(), Some("GET"));
    }

    #[test]
    fn frames_after_an_upgrade_are_not_judged() {
        let mut f = Flows::new(100);
        let up =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            f.on_sample(&sample(Direction::Request, 1, up, 1), 0.0)
                .len(),
            1
        );
        // A masked WebSocket text frame, then HTTP/2's preface on another
        // connection that asked for h2c.
        let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        let next = 1 + up.len() as u32;
        assert!(
            f.on_sample(&sample(Direction::Request, next, frame, 2), 0.0)
                .is_empty()
        );
        let mut g = Flows::new(100);
        let up = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n";
        g.on_sample(&sample(Direction::Request, 1, up, 1), 0.0);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let next = 1 + up.len() as u32;
        assert!(
            g.on_sample(&sample(Direction::Request, next, preface, 2), 0.0)
                .is_empty()
        );
    }

    #[test]
    fn bytes_after_a_gap_are_not_judged() {
        // A request, then a sampling gap into the middle of an upload: those
        // bytes start nowhere in particular and are not reported.
        let mut f = Flows::new(100);
        let head = b"POST /up HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(
            f.on_sample(&sample(Direction::Request, 1, head, 1), 0.0)
                .len(),
            1
        );
        let body = b"\x89PNG\r\n\x1a\n\x00\x00 binary";
        assert!(
            f.on_sample(&sample(Direction::Request, 90_000, body, 2), 0.0)
                .is_empty()
        );
        assert!(
            f.on_sample(
                &sample(Direction::Request, 90_000 + body.len() as u32, body, 3),
                0.0
            )
            .is_empty()
        );
        // Nor is text that would read as an HTTP/0.9 line.
        assert!(
            f.on_sample(
                &sample(Direction::Request, 150_000, b"hello world\r\nmore text", 3),
                0.0
            )
            .is_empty()
        );
        // A whole request after the gap still parses.
        let ev = f.on_sample(
            &sample(Direction::Request, 200_000, b"GET /ok HTTP/1.1\r\n\r\n", 4),
            0.0,
        );
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].request.as_ref().unwrap().malformed, None);
    }

    #[test]
    fn an_endless_head_is_reported() {
        let mut f = Flows::new(100);
        let mut seq = 1;
        let mut out = Vec::new();
        let mut line = b"GET /x HTTP/1.1\r\n".to_vec();
        // Servers read heads up to their own limits (tens of KiB): so does
        // the parser, then it reports the head.
        while seq < 2 * MAX_HEADER_BYTES as u32 {
            out.extend(f.on_sample(&sample(Direction::Request, seq, &line, 1), 0.0));
            seq += line.len() as u32;
            // Long fields: the size bound comes before the header count.
            line = [&b"X-Filler: "[..], &[b'a'; 1000], b"\r\n"].concat();
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let req = out[0].request.as_ref().unwrap();
        assert_eq!(req.malformed, Some(HttpError::HeadersTooLarge));
        assert_eq!(req.path, "/x");
    }

    /// An HTTP/2 frame.
    fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HEADERS of a request (HPACK by hand: static `:method`, `:scheme
    /// http`, then `:path` as a literal not indexed).
    fn h2_request(stream: u32, method: u8, path: &str, end: bool) -> Vec<u8> {
        let mut b = vec![method, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        b.extend_from_slice(path.as_bytes());
        h2_frame(1, 0x4 | u8::from(end), stream, &b)
    }

    /// One h2c connection on the socket from `peer`, its stream starting
    /// with a PROXY header naming `named` (if any), then `frames`.
    fn h2_via(
        f: &mut Flows,
        peer: IpAddr,
        port: u16,
        named: Option<&str>,
        frames: &[u8],
    ) -> Vec<ApiEvent> {
        let mut bytes = named
            .map(|n| format!("PROXY TCP4 {n} 198.18.0.1 {port} 8080\r\n").into_bytes())
            .unwrap_or_default();
        bytes.extend_from_slice(h2::PREFACE);
        bytes.extend(h2_frame(4, 0, 0, &[]));
        bytes.extend_from_slice(frames);
        let mut out = Vec::new();
        for (i, chunk) in bytes.chunks(16_384).enumerate() {
            let mut s = sample(Direction::Request, (i * 16_384) as u32, chunk, 1);
            (s.client, s.client_port, s.stream, s.cookie) = (peer, port, true, u64::from(port));
            out.extend(f.on_sample(&s, 0.0));
        }
        out
    }

    #[test]
    fn a_trusted_proxys_proxy_header_names_whose_header_block_share_a_connection_takes() {
        let mut f = Flows::new(100);
        f.set_trusted(&["198.18.9.1/32".parse().unwrap()]);
        let (proxy, untrusted) = (
            IpAddr::V4(Ipv4Addr::new(198, 18, 9, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 9, 2)),
        );
        // A header block as large as is decoded, never ended.
        let held = h2_frame(1, 0x1, 1, &vec![0x82; h2::MAX_HPACK_BLOCK]);
        // Through the trusted proxy, one client holds blocks open on five
        // connections: the fifth is past its share.
        for port in 41_000..41_005 {
            h2_via(&mut f, proxy, port, Some("198.18.5.5"), &held);
        }
        assert_eq!(f.stats.h2_header_blocks_over_share, 1);
        assert_eq!(f.stats.h2_first_over_share, Some(proxy));
        // Another client through the same proxy still decodes: the share
        // spent was the named client's, not the proxy's.
        let ev = h2_via(
            &mut f,
            proxy,
            41_005,
            Some("198.18.5.6"),
            &h2_request(1, 0x82, "/fine", true),
        );
        assert_eq!(paths(&ev), ["/fine"]);
        // A peer that is not trusted names whom it likes: its connections
        // take its own share whatever they name.
        for (i, port) in (42_000..42_005).enumerate() {
            h2_via(
                &mut f,
                untrusted,
                port,
                Some(&format!("198.18.6.{}", i + 1)),
                &held,
            );
        }
        assert_eq!(f.stats.h2_header_blocks_over_share, 2);
        assert_eq!(f.stats.h2_header_blocks_lost, 2);
    }

    #[test]
    fn h2c_requests_on_the_socket_are_judged_by_stream() {
        let mut bytes = h2::PREFACE.to_vec();
        bytes.extend(h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for i in 0..200u32 {
            bytes.extend(h2_request(2 * i + 1, 0x82, &format!("/v1/items/{i}"), true));
        }
        // A POST whose DATA goes far past the cap, then one more request.
        bytes.extend(h2_request(401, 0x83, "/upload?id=1", false));
        bytes.extend(h2_frame(0, 0, 401, b"{\"a\":\"1' OR '1'='1\"}"));
        bytes.extend(h2_frame(0, 1, 401, &[b'z'; 16_000]));
        bytes.extend(h2_request(403, 0x82, "/after", true));
        for rec in [1usize, 100, 1024] {
            let mut f = Flows::new(100);
            f.set_body_cap(64);
            let ev = stream(&mut f, 0, &bytes, rec, &[]);
            let p = paths(&ev);
            assert_eq!(p.len(), 202, "records of {rec}");
            assert_eq!(p[199], "/v1/items/199");
            assert_eq!(p[200..], ["/upload", "/after"]);
            let up = ev[200].request.as_ref().unwrap();
            assert_eq!(
                (up.method.as_str(), up.query.as_deref()),
                ("POST", Some("id=1"))
            );
            assert!(up.body.starts_with(b"{\"a\""));
            assert!(ev[200].truncated);
            assert_eq!((f.stats.h2_connections, f.stats.h2_lost), (1, 0));
            assert_eq!(f.stats.unparseable, 0);
        }
        // The kernel may skip DATA past the cap: the hint names where it ends,
        // and the bytes it did not copy lose nothing.
        let mut f = Flows::new(100);
        f.set_body_cap(64);
        let ev = stream(&mut f, 0, &bytes, 1024, &[]);
        let hinted = f.skip_hints.iter().find(|(c, _)| *c == 7).map(|h| h.1);
        let end = hinted.expect("a skip hint for the long DATA frame");
        let mut g = Flows::new(100);
        g.set_body_cap(64);
        let skipped = (end.div_ceil(1024) * 1024 - 2048, end / 1024 * 1024);
        let ev2 = stream(&mut g, 0, &bytes, 1024, &[skipped]);
        assert!(skipped.1 > skipped.0, "{skipped:?}");
        assert_eq!(paths(&ev), paths(&ev2));
        assert_eq!(g.stats.h2_lost, 0);
    }

    #[test]
    fn h2_gaps_upgrades_and_nic_samples() {
        let mut bytes = h2::PREFACE.to_vec();
        for i in 0..20u32 {
            bytes.extend(h2_request(2 * i + 1, 0x82, &format!("/p{i}"), true));
        }
        // A record lost in the middle of the header blocks: what follows is
        // not guessed.
        let mut f = Flows::new(100);
        let ev = stream(&mut f, 0, &bytes, 100, &[(200, 300)]);
        assert!(paths(&ev).len() < 20);
        assert!(paths(&ev).iter().all(|p| p.starts_with("/p")));
        assert_eq!(f.stats.h2_lost, 1);
        // After `Upgrade: h2c`, the preface follows on the same stream.
        let mut up = b"GET /first HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n".to_vec();
        up.extend_from_slice(&bytes);
        for rec in [7, 4096] {
            let mut f = Flows::new(100);
            let p = paths(&stream(&mut f, 0, &up, rec, &[]));
            assert_eq!(
                (p.len(), p[0].as_str(), p[20].as_str()),
                (21, "/first", "/p19")
            );
            assert_eq!(f.stats.unparseable, 0);
        }
        // Joined after the preface (the agent started late): frames are
        // recognised, counted and not reported as unparseable.
        let mut f = Flows::new(100);
        let ev = f.on_sample(&sample(Direction::Request, 1, &bytes[24..], 1), 0.0);
        assert!(ev.is_empty());
        assert_eq!((f.stats.h2_not_decoded, f.stats.unparseable), (1, 0));
        // Only NIC samples of an HTTP/2 connection: counted, not decoded, not
        // reported as unparseable.
        let mut f = Flows::new(100);
        let ev = f.on_sample(&sample(Direction::Request, 1, &bytes, 1), 0.0);
        assert!(ev.is_empty());
        assert_eq!((f.stats.h2_not_decoded, f.stats.unparseable), (1, 0));
        // A capture file holds every packet: decoded.
        let mut f = Flows::new(100);
        f.decode_h2_from_packets();
        let ev = f.on_sample(&sample(Direction::Request, 1, &bytes, 1), 0.0);
        assert_eq!(ev.len(), 20);
    }

    /// A header block of `:status 200` (static index) and literal fields.
    fn h2_head(stream: u32, flags: u8, status: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = if status { vec![0x88] } else { Vec::new() };
        for (n, v) in fields {
            b.extend([0, u8::try_from(n.len()).unwrap()]);
            b.extend_from_slice(n.as_bytes());
            b.push(u8::try_from(v.len()).unwrap());
            b.extend_from_slice(v.as_bytes());
        }
        h2_frame(1, 0x4 | flags, stream, &b)
    }

    /// A request HEADERS frame with a forwarding field (literal, as a
    /// proxy writes it), the stream left open for DATA unless `end`.
    fn h2_proxied(stream: u32, path: &str, xff: &str, end: bool) -> Vec<u8> {
        let mut b = vec![0x83, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        b.extend_from_slice(path.as_bytes());
        b.extend([0, 15]);
        b.extend_from_slice(b"x-forwarded-for");
        b.push(u8::try_from(xff.len()).unwrap());
        b.extend_from_slice(xff.as_bytes());
        h2_frame(1, 0x4 | u8::from(end), stream, &b)
    }

    /// Behind a proxy that multiplexes clients on one connection, each
    /// response carries the forwarding field of its own stream's request,
    /// not the connection's latest; a client's trailers cannot rename it,
    /// and a body judged after its head was judged early keeps it.
    #[test]
    fn a_proxy_connection_counts_as_one_clients_until_a_second_is_named() {
        let (a, b) = (
            IpAddr::V4(Ipv4Addr::new(198, 18, 9, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 9, 2)),
        );
        let s = sample(Direction::Request, 0, b"GET /a HTTP/1.1\r\n\r\n", 1);
        let id = (s.client, s.client_port, s.server, s.server_port);
        let mut f = Flows::new(100);
        assert!(!f.set_real(id, a), "an unknown connection is nobody's");
        f.on_sample(&s, 0.0);
        assert!(f.set_real(id, a) && f.set_real(id, a));
        assert!(f.carries_alone(id, a) && !f.carries_alone(id, b));
        // The proxy reuses the connection for another client: from now on
        // it is shared, also when the first client comes back.
        assert!(!f.set_real(id, b));
        assert!(!f.set_real(id, a) && !f.carries_alone(id, a));
        // HTTP/2 multiplexes: never one client's.
        let mut h = h2::PREFACE.to_vec();
        h.extend(h2_proxied(1, "/a.S/M", "198.18.9.1", true));
        let mut g = Flows::new(100);
        let mut s2 = sample(Direction::Request, 0, &h, 1);
        s2.stream = true;
        s2.cookie = 7;
        let id2 = (s2.client, s2.client_port, s2.server, s2.server_port);
        assert_eq!(paths(&g.on_sample(&s2, 0.0)), ["/a.S/M"]);
        assert!(!g.set_real(id2, a));
    }

    #[test]
    fn h2_responses_carry_their_own_streams_client() {
        let mut req = h2::PREFACE.to_vec();
        // Stream 1 (198.18.9.1) and 3 (198.18.9.2) interleaved; 3 ends
        // last, 5 (198.18.9.3) stays open, its client's trailers try to
        // name someone else.
        req.extend(h2_proxied(1, "/a.S/Login", "198.18.9.1", false));
        req.extend(h2_proxied(3, "/a.S/Login", "198.18.9.2", false));
        req.extend(h2_frame(0, 1, 1, b"\0\0\0\0\0"));
        req.extend(h2_frame(0, 1, 3, b"\0\0\0\0\0"));
        req.extend(h2_proxied(5, "/a.S/Login", "198.18.9.3", false));
        req.extend(h2_proxied(7, "/a.S/Gone", "198.18.9.4", true));
        req.extend(h2_frame(3, 0, 7, &[0, 0, 0, 8]));
        let mut f = Flows::new(100);
        let ev = stream(&mut f, 0, &req, 1024, &[]);
        assert_eq!(paths(&ev), ["/a.S/Login", "/a.S/Login", "/a.S/Gone"]);
        // The client reset stream 7: nothing awaits its answer any more.
        assert!(!f.flows.values().any(|fl| fl.h2_pending.contains_key(&7)));
        let mut resp = h2_frame(4, 0, 0, &[]);
        resp.extend(h2_head(1, 1, true, &[("grpc-status", "16")]));
        resp.extend(h2_head(3, 1, true, &[("grpc-status", "0")]));
        // Answered while its request is still open (a refusal up front).
        resp.extend(h2_head(5, 1, true, &[("grpc-status", "16")]));
        let mut ev = Vec::new();
        for (i, part) in resp.chunks(20).enumerate() {
            let seq = 5000 + 20 * u32::try_from(i).unwrap();
            ev.extend(f.on_sample(&sample(Direction::Response, seq, part, 2), 0.0));
        }
        let named: Vec<_> = ev
            .iter()
            .map(|e| {
                assert_eq!(e.forwarded_client, None, "never the connection's latest");
                let fw = e.stream_forwarding.as_ref().unwrap();
                (e.status, fw.first().map(|(_, v)| v.clone()))
            })
            .collect();
        assert_eq!(
            named,
            [
                (Some(200), Some("198.18.9.1".into())),
                (Some(200), Some("198.18.9.2".into())),
                (Some(200), Some("198.18.9.3".into())),
            ]
        );
        // Trailers of the client's own: a forwarding field there is dropped.
        let mut req = h2::PREFACE.to_vec();
        req.extend(h2_proxied(1, "/a.S/Login", "198.18.9.1", false));
        req.extend(h2_head(1, 1, false, &[("x-forwarded-for", "198.18.9.9")]));
        let mut f = Flows::new(100);
        let ev = stream(&mut f, 0, &req, 1024, &[]);
        let r = ev[0].request.as_ref().unwrap();
        let xff: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(xff, ["198.18.9.1"]);
        // A stream judged at a stall, its body later: judged again with
        // its client's forwarding field.
        let mut f = Flows::new(100);
        f.clock_ns = 1_000;
        let mut req = h2::PREFACE.to_vec();
        req.extend(h2_proxied(1, "/a.S/Login", "198.18.9.1", false));
        assert!(stream(&mut f, 0, &req, 1024, &[]).is_empty());
        f.clock_ns = 3_000_000_000;
        let early = f.flush_stalled(2_000_000_000, 0.0);
        assert_eq!(paths(&early), ["/a.S/Login"]);
        let body = h2_frame(0, 1, 1, b"\0\0\0\0\x02\x0a\x00");
        let later = stream(&mut f, u32::try_from(req.len()).unwrap(), &body, 1024, &[]);
        let r = later[0].request.as_ref().unwrap();
        assert_eq!(r.header("x-forwarded-for"), Some("198.18.9.1"));
        // A client behind a proxy that writes X-Forwarded-For sends many
        // `Forwarded` fields of its own (passed along before the proxy's
        // field): the proxy's is still kept, so the response is still its
        // client's; each name stays bounded.
        let mut fields: Vec<(String, String)> = (0..10)
            .map(|i| ("forwarded".into(), format!("for=198.18.7.{i}")))
            .collect();
        fields.push(("x-forwarded-for".into(), "198.18.9.1".into()));
        fields.extend((0..10).map(|i| ("Forwarded".into(), format!("for=198.18.8.{i}"))));
        let kept = forwarding_of(&fields);
        let xff: Vec<_> = kept
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .collect();
        assert_eq!(xff.len(), 1, "{kept:?}");
        assert_eq!(xff[0].1, "198.18.9.1");
        assert_eq!(kept.len(), 1 + MAX_FORWARDING_FIELDS, "{kept:?}");
        assert_eq!(kept.last().unwrap().1, "for=198.18.8.9");
        // Long forwarding lists keep their last whole hops, bounded.
        let long = format!("{}198.18.9.7", "198.18.0.1, ".repeat(100));
        let kept = forwarding_of(&[("X-Forwarded-For".into(), long)]);
        assert!(kept[0].1.len() <= MAX_FORWARDING_VALUE, "{kept:?}");
        assert!(kept[0].1.trim().starts_with("198.18.0.1"), "{kept:?}");
        assert!(kept[0].1.ends_with(", 198.18.9.7"), "{kept:?}");
    }

    /// After `Upgrade: h2c` is answered `101 Switching Protocols`, the
    /// responses are HTTP/2: decoded, the upgraded request's on stream 1,
    /// so their statuses count.
    #[test]
    fn h2c_responses_after_101_are_decoded() {
        let mut req = b"GET /first HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n".to_vec();
        req.extend_from_slice(h2::PREFACE);
        req.extend(h2_frame(4, 0, 0, &[]));
        req.extend(h2_request(3, 0x83, "/auth.Login/Try", true));
        for rec in [9usize, 4096] {
            let mut f = Flows::new(100);
            assert_eq!(
                paths(&stream(&mut f, 0, &req, 4096, &[])),
                ["/first", "/auth.Login/Try"]
            );
            let mut resp =
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                    .to_vec();
            resp.extend(h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
            resp.extend(h2_head(1, 1, false, &[(":status", "401")]));
            resp.extend(h2_head(3, 1, true, &[("grpc-status", "16")]));
            let mut ev = Vec::new();
            for (i, part) in resp.chunks(rec).enumerate() {
                let seq = 5000 + u32::try_from(i * rec).unwrap();
                ev.extend(f.on_sample(&sample(Direction::Response, seq, part, 2), 0.0));
            }
            let got: Vec<_> = ev
                .iter()
                .map(|e| {
                    let r = e.response.as_ref().unwrap();
                    (
                        e.path.clone().unwrap_or_default(),
                        e.status,
                        r.header("grpc-status").map(str::to_owned),
                    )
                })
                .collect();
            // The 101 itself answers nothing (interim).
            let want = [
                ("/first".to_owned(), Some(401), None),
                (
                    "/auth.Login/Try".to_owned(),
                    Some(200),
                    Some("16".to_owned()),
                ),
            ];
            assert_eq!(
                got.iter().filter(|g| g.1 != Some(101)).collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>(),
                "records of {rec}"
            );
            assert_eq!(f.stats.h2_responses_lost, 0);
        }
    }

    #[test]
    fn h2_responses_pair_by_stream_with_their_grpc_status() {
        let mut req = h2::PREFACE.to_vec();
        for i in 0..3u32 {
            req.extend(h2_request(
                2 * i + 1,
                0x83,
                &format!("/auth.Login/M{i}"),
                true,
            ));
        }
        let mut f = Flows::new(100);
        assert_eq!(paths(&stream(&mut f, 0, &req, 1024, &[])).len(), 3);
        // The server's preface, then stream 3 answered in full (head, DATA,
        // trailers), then stream 1 Trailers-Only.
        let mut resp = h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        resp.extend(h2_frame(4, 1, 0, &[]));
        resp.extend(h2_head(3, 0, true, &[("content-type", "application/grpc")]));
        resp.extend(h2_frame(0, 0, 3, &[0, 0, 0, 0, 2, 8, 1]));
        resp.extend(h2_head(3, 1, false, &[("grpc-status", "16")]));
        resp.extend(h2_head(1, 1, true, &[("grpc-status", "7")]));
        let mut ev = Vec::new();
        let mut seq = 5000u32;
        for part in resp.chunks(20) {
            ev.extend(f.on_sample(&sample(Direction::Response, seq, part, 2), 0.0));
            seq += u32::try_from(part.len()).unwrap();
        }
        let got: Vec<_> = ev
            .iter()
            .map(|e| {
                let r = e.response.as_ref().unwrap();
                (
                    e.path.clone().unwrap_or_default(),
                    e.method.clone().unwrap_or_default(),
                    e.status,
                    r.header("grpc-status").unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/auth.Login/M1".into(),
                    "POST".into(),
                    Some(200),
                    "16".into()
                ),
                (
                    "/auth.Login/M0".into(),
                    "POST".into(),
                    Some(200),
                    "7".into()
                ),
            ]
        );
        assert!(ev.iter().all(|e| e.direction == Direction::Response));
        assert_eq!(f.stats.responses, 2);
        // A gap (NIC sampling past the first packets) inside a header block:
        // the response stream is lost, counted, and nothing is guessed.
        let late = h2_head(5, 1, true, &[("grpc-status", "16")]);
        let ev = f.on_sample(&sample(Direction::Response, seq + 7, &late, 3), 0.0);
        assert!(ev.is_empty());
        assert_eq!(f.stats.h2_responses_lost, 1);
        let ev = f.on_sample(&sample(Direction::Response, seq + 100, &late, 3), 0.0);
        assert!(ev.is_empty());
        assert_eq!(f.stats.h2_responses_lost, 1);
        // A connection joined late: its first response bytes seen are no
        // server preface, so they are never decoded against a table not seen.
        let mut g = Flows::new(100);
        let ev = g.on_sample(&sample(Direction::Response, 9, &late, 3), 0.0);
        assert!(ev.is_empty());
        assert_eq!((g.stats.responses, g.stats.h2_responses_lost), (0, 0));
    }

    #[test]
    fn an_oversized_header_block_is_judged_as_far_as_it_went_and_the_next_decodes() {
        let mut req = h2::PREFACE.to_vec();
        // `:method POST`, `:scheme http`, `:path` with an injection, then
        // 80 KiB of fields over CONTINUATION frames.
        let mut b = vec![0x83, 0x86, 0x04, 20];
        b.extend_from_slice(b"/a?id=1' OR '1'='1--");
        req.extend(h2_frame(1, 0, 1, &b));
        let pad = [
            &[0u8, 5][..],
            b"x-pad",
            &[0x7f, 0x81, 0x7f],
            &[b'p'; 16_384],
        ]
        .concat();
        for _ in 0..5 {
            req.extend(h2_frame(9, 0, 1, &pad));
        }
        req.extend(h2_frame(9, 0x4, 1, &[]));
        req.extend(h2_frame(0, 0x1, 1, b"{}"));
        req.extend(h2_request(3, 0x82, "/next", true));
        let mut f = Flows::new(100);
        let ev = stream(&mut f, 0, &req, 1024, &[]);
        // Decoded whole, its fields past 64 KiB dropped: the table stays in
        // step and the next request is known.
        assert_eq!(paths(&ev), ["/a", "/next"]);
        assert_eq!(ev[0].query.as_deref(), Some("id=1' OR '1'='1--"));
        assert!(ev[0].truncated && !ev[1].truncated);
        assert_eq!(f.stats.h2_header_blocks_cut, 1);
        assert_eq!(f.stats.h2_header_blocks_lost, 0);
        assert_eq!((f.stats.h2_unknown, f.stats.h2_lost), (0, 0));
    }

    #[test]
    fn grpc_messages_in_an_encoding_not_read_are_counted() {
        let mut req = h2::PREFACE.to_vec();
        // `content-type: application/grpc`, `grpc-encoding: snappy`, literal.
        let mut b = vec![0x83, 0x86, 0x04, 6];
        b.extend_from_slice(b"/a.B/C");
        for (n, v) in [
            ("content-type", "application/grpc"),
            ("grpc-encoding", "snappy"),
        ] {
            b.extend([0, u8::try_from(n.len()).unwrap()]);
            b.extend_from_slice(n.as_bytes());
            b.push(u8::try_from(v.len()).unwrap());
            b.extend_from_slice(v.as_bytes());
        }
        req.extend(h2_frame(1, 0x4, 1, &b));
        req.extend(h2_frame(0, 1, 1, &[1, 0, 0, 0, 3, 9, 9, 9]));
        let mut f = Flows::new(100);
        assert_eq!(paths(&stream(&mut f, 0, &req, 1024, &[])), ["/a.B/C"]);
        assert_eq!(
            (
                f.stats.grpc_compressed_messages,
                f.stats.grpc_unread_messages
            ),
            (1, 1)
        );
    }

    #[test]
    fn idle_flows_expire() {
        let mut f = Flows::new(100);
        // A head that never completes, seen at t=1 s and t=200 s.
        f.clock_ns = 1_000_000_000;
        f.on_sample(
            &sample(Direction::Request, 1, b"GET /a HTTP/1.1\r\n", 1_000_000_000),
            0.0,
        );
        let mut late = sample(
            Direction::Request,
            1,
            b"GET /b HTTP/1.1\r\n",
            200_000_000_000,
        );
        late.client_port += 1;
        f.clock_ns = 200_000_000_000;
        f.on_sample(&late, 0.0);
        assert_eq!(f.len(), 2);
        f.expire(100_000_000_000);
        assert_eq!(f.len(), 1);
        assert_eq!(f.stats.expired, 1);
    }

    #[test]
    fn bounded_flows() {
        let mut f = Flows::new(16);
        for p in 0..100u16 {
            let mut s = sample(
                Direction::Request,
                1,
                b"GET / HTTP/1.1\r\n\r\n",
                u64::from(p),
            );
            s.client_port = p;
            s.tcp_flags = 0x10;
            f.on_sample(&s, 0.0);
        }
        assert!(f.len() <= 16);
        assert!(f.stats.evicted > 0);
    }
}
