//! The policy file (YAML). Unknown fields are errors, and every error names
//! the line and field, so a typo never silently weakens protection.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod capacity;
mod cluster;
#[cfg(test)]
mod docs_check;
mod events;
mod sampling;
mod scoring;
mod tls;

pub use capacity::CapacityPolicy;
pub use cluster::{
    ClusterSpec, ClusterTls, DEFAULT_FLEET, DEFAULT_RECONCILE_SECS, DEFAULT_REMOTE_TTL,
    DEFAULT_SHARED_PER_MINUTE, check_endpoint, check_name,
};
pub use events::EventsPolicy;
pub use sampling::SamplingPolicy;
pub use scoring::ScoringPolicy;
pub use tls::TlsPolicy;

/// Which hook to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    /// XDP: earliest and cheapest (driver mode, generic as fallback).
    Xdp,
    /// TC ingress through tcx: for hosts whose XDP hook is taken (e.g. Cilium).
    Tc,
}

/// XDP mode preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModePref {
    /// Driver mode, falling back to generic with a warning.
    Auto,
    /// Driver mode only.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// Enforcement mode as written in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// Drop what the policy says to drop.
    Enforce,
    /// Count and report, drop nothing.
    Monitor,
}

impl From<ModeName> for tollgate_common::Mode {
    fn from(m: ModeName) -> Self {
        match m {
            ModeName::Enforce => Self::Enforce,
            ModeName::Monitor => Self::Monitor,
        }
    }
}

/// The policy file. Command-line flags override its fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `enforce` (default) or `monitor`.
    pub mode: Option<ModeName>,
    /// Interfaces to protect.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `xdp` (default) or `tc`.
    pub attach: Option<AttachKind>,
    /// `auto` (default), `driver` or `generic`.
    pub xdp_mode: Option<XdpModePref>,
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// bpffs directory for pins.
    pub pin_dir: Option<PathBuf>,
    /// Durable state directory.
    pub state_dir: Option<PathBuf>,
    /// Sources never dropped (addresses or CIDR prefixes).
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Per-source rate limits and escalation.
    #[serde(default)]
    pub rate_limit: crate::limits::RateLimitPolicy,
    /// TCP ports of the APIs to observe (payloads sampled, parsed, inventoried).
    #[serde(default)]
    pub api_ports: Vec<u16>,
    /// How API payloads are sampled.
    #[serde(default)]
    pub sampling: SamplingPolicy,
    /// Block-list files the agent keeps applied (see [`FeedSpec`]).
    #[serde(default)]
    pub feeds: Vec<FeedSpec>,
    /// The metrics and health endpoint (off when absent).
    pub metrics: Option<MetricsSpec>,
    /// Request detectors: switches, weights, per-request thresholds.
    #[serde(default)]
    pub detectors: tollgate_detect::DetectConfig,
    /// Per-client scores, ban threshold and TTL escalation.
    #[serde(default)]
    pub scoring: ScoringPolicy,
    /// The security event log.
    #[serde(default)]
    pub events: EventsPolicy,
    /// Where credentials are and how tokens are checked (API2).
    #[serde(default)]
    pub auth: tollgate_detect::api::AuthConfig,
    /// Per-route rules: authorization, binding, limits, enumeration, fields.
    #[serde(default)]
    pub routes: Vec<tollgate_detect::api::RouteSpec>,
    /// Switches and weights of the API checks, and their bounds.
    #[serde(default)]
    pub checks: tollgate_detect::api::ApiChecks,
    /// The service's OpenAPI 3 document (inventory, closed request schemas);
    /// relative to the policy file.
    pub openapi: Option<PathBuf>,
    /// GraphQL endpoints: paths, shape limits, introspection, SDL schema
    /// (relative to the policy file).
    #[serde(default)]
    pub graphql: tollgate_detect::graphql::GraphqlConfig,
    /// gRPC services: their protobuf descriptor set.
    #[serde(default)]
    pub grpc: GrpcPolicy,
    /// Load balancers and ingresses in front of the APIs (CIDRs or presets).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Act as a CrowdSec bouncer (off when absent).
    pub crowdsec: Option<crate::crowdsec::CrowdsecSpec>,
    /// Share bans with the fleet through etcd (off when absent).
    pub cluster: Option<ClusterSpec>,
    /// HTTPS plaintext from uprobes on the servers' TLS library.
    #[serde(default)]
    pub tls: TlsPolicy,
    /// Entries each kernel map may hold (applied at the agent's start).
    #[serde(default)]
    pub capacity: CapacityPolicy,
}

/// Trusted-proxy presets: name, prefixes.
pub const PROXY_PRESETS: &[(&str, &[&str])] = &[
    ("loopback", &["127.0.0.0/8", "::1/128"]),
    (
        "private",
        &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
    ),
    // As published at https://www.cloudflare.com/ips/ (check it for changes).
    (
        "cloudflare",
        &[
            "173.245.48.0/20",
            "103.21.244.0/22",
            "103.22.200.0/22",
            "103.31.4.0/22",
            "141.101.64.0/18",
            "108.162.192.0/18",
            "190.93.240.0/20",
            "188.114.96.0/20",
            "197.234.240.0/22",
            "198.41.128.0/17",
            "162.158.0.0/15",
            "104.16.0.0/13",
            "104.24.0.0/14",
            "172.64.0.0/13",
            "131.0.72.0/22",
            "2400:cb00::/32",
            "2606:4700::/32",
            "2803:f800::/32",
            "2405:b500::/32",
            "2405:8100::/32",
            "2a06:98c0::/29",
            "2c0f:f248::/32",
        ],
    ),
];

/// A value that is wrong, and where: the field as a path into the policy
/// (`scoring.half_life`, `feeds[1].name`, `trusted_proxies[0]`) and what is
/// wrong with it. [`Policy::parse`] turns the field into a line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which part of a proxied request names its client: the one the proxy
/// writes itself. A header the proxy only passes along is the client's own
/// word, so exactly one source is believed per proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The right-most untrusted `X-Forwarded-For` entry (HAProxy `option
    /// forwardfor`, nginx, most cloud load balancers). The default.
    #[default]
    XForwardedFor,
    /// The right-most untrusted `for=` of `Forwarded` (RFC 7239).
    Forwarded,
    /// Only the PROXY protocol header at the start of the connection.
    ProxyProtocol,
}

impl ProxyHeader {
    /// Names as written after `@` in a trusted-proxy entry.
    pub const NAMES: [(&'static str, Self); 3] = [
        ("x-forwarded-for", Self::XForwardedFor),
        ("forwarded", Self::Forwarded),
        ("proxy-protocol", Self::ProxyProtocol),
    ];
}

/// Splits `CIDR|PRESET[@header]` into the address part and the header.
fn split_header(entry: &str) -> Result<(&str, ProxyHeader), String> {
    match entry.split_once('@') {
        None => Ok((entry, ProxyHeader::default())),
        Some((net, h)) => ProxyHeader::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(h.trim()))
            .map(|(_, v)| (net.trim(), *v))
            .ok_or_else(|| {
                format!(
                    "'{h}' is not a client header (one of: {})",
                    ProxyHeader::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

/// The header each trusted proxy writes, from the policy's entries and the
/// `--trusted-proxy` flags (entries that do not parse were refused by
/// validation already and are skipped here).
#[must_use]
pub fn proxy_headers(policy: &[String], flags: &[String]) -> Vec<(ipnet::IpNet, ProxyHeader)> {
    policy
        .iter()
        .chain(flags)
        .filter_map(|e| expand_trusted_headers(std::slice::from_ref(e)).ok())
        .flatten()
        .collect()
}

/// Expands trusted-proxy entries into prefixes, each with the header that
/// names its clients.
///
/// # Errors
/// As [`expand_trusted`].
pub fn expand_trusted_headers(
    entries: &[String],
) -> Result<Vec<(ipnet::IpNet, ProxyHeader)>, FieldError> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = format!("trusted_proxies[{i}]");
        let (_, header) = split_header(e.trim()).map_err(|m| FieldError::new(&field, m))?;
        for n in expand_trusted(std::slice::from_ref(e))
            .map_err(|err| FieldError::new(&field, err.message))?
        {
            out.push((n, header));
        }
    }
    Ok(out)
}

/// Expands trusted-proxy entries (CIDRs and preset names, each optionally
/// followed by `@header`) into prefixes.
///
/// # Errors
/// Names the entry that is neither a preset nor a usable CIDR.
pub fn expand_trusted(entries: &[String]) -> Result<Vec<ipnet::IpNet>, FieldError> {
    let mut out: Vec<ipnet::IpNet> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (e, _) = split_header(e.trim())
            .map_err(|m| FieldError::new(format!("trusted_proxies[{i}]"), m))?;
        let nets: Vec<ipnet::IpNet> = if let Some((_, list)) = PROXY_PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(e))
        {
            list.iter().filter_map(|c| c.parse().ok()).collect()
        } else {
            let n = crate::net::parse_net(e).map_err(|err| {
                FieldError::new(
                    format!("trusted_proxies[{i}]"),
                    format!(
                        "'{e}': {err} (or a preset: {})",
                        PROXY_PRESETS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            // Trusting everyone would let any client name its own address.
            let min = if n.addr().is_ipv4() { 8 } else { 16 };
            if n.prefix_len() < min {
                return Err(FieldError::new(
                    format!("trusted_proxies[{i}]"),
                    format!(
                        "'{e}' is wider than /{min}: every client in it could name any address"
                    ),
                ));
            }
            vec![n]
        };
        for n in nets {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// A block-list file the agent re-reads every `refresh` (when it changed):
/// its entries are banned with kind `feed` and the feed's name as origin,
/// and entries that disappear from the file are lifted.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeedSpec {
    /// Group name, shown as the bans' origin (`block rm --origin NAME`).
    pub name: String,
    /// The list (one address or CIDR per line, `#`/`;` comments); relative
    /// paths are relative to the policy file.
    pub path: PathBuf,
    /// How often to check the file, e.g. `1h` (default), `10m`; at least 1s.
    pub refresh: Option<String>,
}

/// `metrics:` in the policy.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// `ADDR:PORT`, e.g. `127.0.0.1:9477`.
    pub listen: std::net::SocketAddr,
    /// Serve on a non-loopback address (default false: refused).
    #[serde(default)]
    pub allow_remote: bool,
}

/// Default feed refresh interval.
pub const DEFAULT_FEED_REFRESH: std::time::Duration = std::time::Duration::from_secs(3600);

fn feed_refresh(spec: &FeedSpec) -> Result<std::time::Duration, String> {
    let Some(r) = &spec.refresh else {
        return Ok(DEFAULT_FEED_REFRESH);
    };
    let d = humantime::parse_duration(r.trim())
        .map_err(|e| format!("'{r}' is not a duration like 90s, 10m, 1h ({e})"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(31 * 24 * 3600) {
        return Err(format!("refresh {r} must be between 1s and 31d"));
    }
    Ok(d)
}

/// A policy that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable file.
    #[error("failed to read policy file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file as a whole is refused (too large, empty, nested too deeply).
    #[error("{path}: {message}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// YAML or schema error, with its location.
    #[error("{path}:{location}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `line N column M`, when known.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// Largest policy file read (a policy is a few KiB; this bounds the memory
/// and parse time an oversized or endless file, e.g. a device, can cost).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest nesting accepted (blocks, sequences and flow collections
/// together). The YAML parser takes quadratic time in the nesting depth, so
/// it is checked on the text before parsing; real policies stay below 10.
pub const MAX_NESTING: usize = 32;

/// Reads at most [`MAX_FILE_BYTES`] of `path` as UTF-8.
fn read_capped(path: &Path) -> Result<String, PolicyError> {
    use std::io::Read as _;
    let read = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyError::Unusable {
            path: path.to_owned(),
            message: format!(
                "the file is larger than {} MiB; a policy is a few KiB",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    String::from_utf8(buf).map_err(|e| PolicyError::Unusable {
        path: path.to_owned(),
        message: format!("the file is not UTF-8 text ({e})"),
    })
}

/// True when the text holds nothing but whitespace and comments.
#[must_use]
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// The deepest nesting of the text, counted without parsing: indentation
/// levels of block mappings, `- ` sequence items, and open `[`/`{` flow
/// collections (an over-estimate when brackets sit inside strings, which is
/// harmless at the cap's size). Stops counting at `cap + 1`.
#[must_use]
pub fn nesting_depth(text: &str, cap: usize) -> usize {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut deepest = 0usize;
    for line in text.lines() {
        let code = line.trim_start();
        if code.is_empty() || code.starts_with('#') {
            continue;
        }
        let indent = line.len() - code.len();
        if flow == 0 {
            while indents.last().is_some_and(|&i| i > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
        }
        // Compact sequences nest per dash: `- - - a`.
        let mut rest = code;
        let mut dashes = 0usize;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("-\t")) {
            dashes += 1;
            rest = r.trim_start();
        }
        let mut line_flow = flow;
        // Brackets inside quoted strings (a regex, a secret) do not nest.
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = ' ';
        for c in rest.chars() {
            match (quote, c) {
                (Some('"'), '\\') if !escaped => escaped = true,
                (Some(q), _) if c == q && !escaped => quote = None,
                (Some(_), _) => escaped = false,
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => {
                    line_flow += 1;
                    deepest = deepest.max(indents.len() + dashes + line_flow);
                }
                (None, ']' | '}') => line_flow = line_flow.saturating_sub(1),
                (None, '#') if prev.is_whitespace() => break,
                _ => {}
            }
            prev = c;
            if deepest > cap {
                return deepest;
            }
        }
        flow = line_flow;
        deepest = deepest.max(indents.len() + dashes + flow);
        if deepest > cap {
            return deepest;
        }
    }
    deepest
}

/// The policy's `grpc:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcPolicy {
    /// A protobuf descriptor set (`protoc --include_imports
    /// --descriptor_set_out=FILE`), relative to the policy file: the live
    /// inventory marks gRPC methods documented, shadow or unused, and
    /// findings in request fields are located by field name.
    pub descriptor_set: Option<PathBuf>,
    /// The descriptor set as read when the policy was loaded: the file is
    /// read once per load, never again between checking and using it.
    #[serde(skip)]
    pub schema: Option<std::sync::Arc<tollgate_detect::ProtoSchema>>,
}

/// A field (`grpc.descriptor_set`) of the file at `path` that is invalid,
/// located by its line in `text` when found.
fn invalid_at(path: &Path, text: &str, field: &str, message: String) -> PolicyError {
    PolicyError::Invalid {
        path: path.to_owned(),
        location: match locate(text, field) {
            Some(line) => format!("line {line}: {field}"),
            None => field.into(),
        },
        message,
    }
}

impl Policy {
    /// Reads and validates a policy file: the one check used by `tollgate
    /// policy check`, the agent's start and every reload, so they cannot
    /// disagree. Refuses files over [`MAX_FILE_BYTES`], empty or comment-only
    /// files (a truncated file must not silently become the all-defaults
    /// policy), nesting deeper than [`MAX_NESTING`], and everything
    /// [`Self::parse`] refuses, and an API policy the OpenAPI document
    /// refuses (the only part of the detection pipeline that can fail to
    /// build: the engine itself takes any `detectors` section parse accepts).
    ///
    /// # Errors
    /// When unreadable or invalid, with line and field.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = read_capped(path)?;
        if is_blank(&text) {
            return Err(PolicyError::Unusable {
                path: path.to_owned(),
                message: "the file is empty or holds only comments; refusing it (an emptied or \
                          truncated file must not drop the allowlist, feeds and mode). For \
                          an all-defaults policy write `mode: enforce`"
                    .into(),
            });
        }
        let mut p = Self::parse(&text, path)?;
        if let (Some(doc), Some(dir)) = (p.openapi.as_mut(), path.parent())
            && doc.is_relative()
        {
            *doc = dir.join(&*doc);
        }
        if let Some(doc) = &p.openapi {
            let invalid = |message: String| PolicyError::Invalid {
                path: path.to_owned(),
                location: match locate(&text, "openapi") {
                    Some(line) => format!("line {line}: openapi"),
                    None => "openapi".into(),
                },
                message,
            };
            let spec = std::fs::read_to_string(doc)
                .map_err(|e| invalid(format!("cannot read {}: {e}", doc.display())))?;
            tollgate_detect::ApiGuard::new(&p.api_policy(), Some(&spec))
                .map_err(|e| invalid(api_error(e).message))?;
        }
        if let (Some(doc), Some(dir)) = (p.graphql.schema.as_mut(), path.parent())
            && doc.is_relative()
        {
            *doc = dir.join(&*doc);
        }
        if let (Some(doc), Some(dir)) = (p.grpc.descriptor_set.as_mut(), path.parent())
            && doc.is_relative()
        {
            *doc = dir.join(&*doc);
        }
        if let Some(doc) = &p.grpc.descriptor_set {
            let schema = crate::grpc::read_descriptor_set(doc)
                .map_err(|m| invalid_at(path, &text, "grpc.descriptor_set", m))?;
            p.grpc.schema = Some(std::sync::Arc::new(schema));
        }
        if let Some(doc) = &p.graphql.schema {
            let invalid = |message: String| PolicyError::Invalid {
                path: path.to_owned(),
                location: match locate(&text, "graphql.schema") {
                    Some(line) => format!("line {line}: graphql.schema"),
                    None => "graphql.schema".into(),
                },
                message,
            };
            let sdl = std::fs::read_to_string(doc)
                .map_err(|e| invalid(format!("cannot read {}: {e}", doc.display())))?;
            tollgate_detect::graphql::Schema::parse(&sdl).map_err(invalid)?;
        }
        // Feed paths are relative to the policy file, not to wherever the
        // agent happens to be started.
        if let Some(dir) = path.parent() {
            for f in &mut p.feeds {
                if f.path.is_relative() {
                    f.path = dir.join(&f.path);
                }
            }
            if let Some(key) = p.crowdsec.as_mut().and_then(|c| c.api_key_file.as_mut())
                && key.is_relative()
            {
                *key = dir.join(&*key);
            }
            if let Some(tls) = p.cluster.as_mut().and_then(|c| c.tls.as_mut()) {
                for f in [&mut tls.cert, &mut tls.key, &mut tls.ca] {
                    if f.is_relative() {
                        *f = dir.join(&*f);
                    }
                }
            }
        }
        if let Some(job) = p.crowdsec.as_ref().and_then(|c| c.job().ok()) {
            job.key
                .read()
                .map_err(|m| invalid_at(path, &text, "crowdsec.api_key_file", m))?;
        }
        Ok(p)
    }

    /// Parses policy text (`path` only labels errors).
    ///
    /// # Errors
    /// When invalid, with line and field.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |field: String, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            location: match locate(text, &field) {
                Some(line) => format!("line {line}: {field}"),
                None => field,
            },
            message,
        };
        let invalid_field = |e: FieldError| invalid(e.field, e.message);
        let depth = nesting_depth(text, MAX_NESTING);
        if depth > MAX_NESTING {
            return Err(PolicyError::Unusable {
                path: path.to_owned(),
                message: format!(
                    "nested deeper than {MAX_NESTING} levels; a policy needs fewer than 10"
                ),
            });
        }
        let p: Self = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location().map_or_else(
                || "?".into(),
                |l| format!("line {} column {}", l.line(), l.column()),
            );
            invalid(loc, e.to_string())
        })?;
        for (i, a) in p.allowlist.iter().enumerate() {
            // The same breadth rule the agent applies when it adds the entry.
            crate::net::parse_net(a)
                .and_then(|n| crate::net::check_breadth(n, false))
                .map_err(|e| invalid(format!("allowlist[{i}]"), e.to_string()))?;
        }
        if let Some(m) = &p.metrics
            && !m.listen.ip().is_loopback()
            && !m.allow_remote
        {
            return Err(invalid(
                "metrics.listen".into(),
                format!(
                    "{} is not a loopback address and metrics show what is blocked and how \
                     much; use 127.0.0.1/::1, or set metrics.allow_remote: true behind a firewall",
                    m.listen
                ),
            ));
        }
        if let Some(spec) = &p.rate_limit.default {
            spec.validate()
                .map_err(|e| invalid("rate_limit.default".into(), e.to_string()))?;
        }
        for (port, spec) in &p.rate_limit.ports {
            if *port == 0 {
                return Err(invalid(
                    "rate_limit.ports".into(),
                    "port 0 is not a port".into(),
                ));
            }
            spec.validate()
                .map_err(|e| invalid(format!("rate_limit.ports.{port}"), e.to_string()))?;
        }
        if let Some(pl) = p.rate_limit.ipv6_prefix
            && !(16..=128).contains(&pl)
        {
            return Err(invalid(
                "rate_limit.ipv6_prefix".into(),
                format!("{pl} is outside 16..=128"),
            ));
        }
        for (i, port) in p.api_ports.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(
                    format!("api_ports[{i}]"),
                    "port 0 is not a port".into(),
                ));
            }
        }
        p.sampling.validate().map_err(invalid_field)?;
        p.capacity.validate().map_err(invalid_field)?;
        p.tls.validate().map_err(invalid_field)?;
        p.scoring.validate().map_err(invalid_field)?;
        p.events.validate().map_err(invalid_field)?;
        if p.detectors.alert_threshold > p.detectors.ban_threshold {
            return Err(invalid(
                "detectors.alert_threshold".into(),
                "must not be above detectors.ban_threshold".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in p.feeds.iter().enumerate() {
            crate::proto::check_origin(&f.name)
                .map_err(|e| invalid(format!("feeds[{i}].name"), e.to_string()))?;
            if !names.insert(f.name.as_str()) {
                return Err(invalid(
                    format!("feeds[{i}].name"),
                    format!("feed name '{}' is used twice", f.name),
                ));
            }
            if f.path.as_os_str().is_empty() {
                return Err(invalid(
                    format!("feeds[{i}].path"),
                    "path must not be empty".into(),
                ));
            }
            feed_refresh(f).map_err(|e| invalid(format!("feeds[{i}].refresh"), e))?;
        }
        let mut p = p;
        resolve_key_files(&mut p, text, path)?;
        tollgate_detect::ApiGuard::new(&p.api_policy(), None)
            .map_err(|e| invalid_field(api_error(e)))?;
        expand_trusted(&p.trusted_proxies).map_err(invalid_field)?;
        if let Some(c) = &p.crowdsec {
            c.job()
                .map_err(|(field, message)| invalid(format!("crowdsec.{field}"), message))?;
        }
        if let Some(c) = &p.cluster {
            c.check()
                .map_err(|(field, message)| invalid(format!("cluster.{field}"), message))?;
        }
        for (i, name) in p.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("interfaces[{i}]"),
                    format!("'{name}' is not a valid interface name"),
                ));
            }
        }
        Ok(p)
    }
}

/// The line (1-based) where a field path like `feeds[1].name` or
/// `scoring.half_life` is written, found by walking the keys in order. A
/// best effort for errors found after parsing (values out of range).
#[must_use]
pub fn locate(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0usize;
    let mut found = None;
    for seg in field.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let pos = (at..lines.len()).find(|&i| has_key(lines[i], key))?;
        at = pos;
        found = Some(pos);
        if let Some(n) = index {
            // Block list: the n-th `- ` item below; flow list: same line.
            if !lines[pos].contains('[') {
                let mut seen = 0;
                for (i, l) in lines.iter().enumerate().skip(pos + 1) {
                    if l.trim_start().starts_with("- ") || l.trim() == "-" {
                        if seen == n {
                            at = i;
                            found = Some(i);
                            break;
                        }
                        seen += 1;
                    }
                }
            }
        }
    }
    found.map(|i| i + 1)
}

fn has_key(line: &str, key: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    code.match_indices(key).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + key.len()..].trim_start();
        matches!(before, None | Some(' ' | '{' | ',' | '-' | '\t')) && after.starts_with(':')
    })
}

/// Reads key material named by `*_file` fields (relative to the policy
/// file) into the fields the API guard uses, so secrets need not sit in the
/// policy itself.
fn resolve_key_files(p: &mut Policy, text: &str, path: &Path) -> Result<(), PolicyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let read = |field: String, f: &Path| -> Result<String, PolicyError> {
        let full = if f.is_relative() {
            dir.join(f)
        } else {
            f.to_owned()
        };
        let meta = std::fs::metadata(&full);
        let body = std::fs::read_to_string(&full).map_err(|e| PolicyError::Invalid {
            path: path.to_owned(),
            location: locate(text, &field).map_or(field.clone(), |l| format!("line {l}: {field}")),
            message: format!("cannot read {}: {e}", full.display()),
        })?;
        // Key files are secrets: say so when anyone may read them.
        if let Ok(m) = meta {
            use std::os::unix::fs::PermissionsExt as _;
            if m.permissions().mode() & 0o004 != 0 {
                tracing::warn!(
                    "{} is readable by every user; key files should be 0600",
                    full.display()
                );
            }
        }
        Ok(body)
    };
    if let Some(f) = p.auth.jwks_file.take() {
        if p.auth.jwks.is_some() {
            return Err(PolicyError::Invalid {
                path: path.to_owned(),
                location: "auth.jwks_file".into(),
                message: "give jwks or jwks_file, not both".into(),
            });
        }
        p.auth.jwks = Some(read("auth.jwks_file".into(), &f)?);
    }
    for (i, k) in p.auth.keys.iter_mut().enumerate() {
        if let Some(f) = k.secret_file.take() {
            k.secret = Some(
                read(format!("auth.keys[{i}].secret_file"), &f)?
                    .trim_end()
                    .to_owned(),
            );
        }
        if let Some(f) = k.pem_file.take() {
            k.pem = Some(read(format!("auth.keys[{i}].pem_file"), &f)?);
        }
    }
    Ok(())
}

/// The field and message of an API policy error.
fn api_error(e: tollgate_detect::ApiPolicyError) -> FieldError {
    use tollgate_detect::ApiPolicyError as E;
    match e {
        E::Invalid { field, reason } => FieldError::new(field, reason),
        E::Duration {
            field,
            value,
            source,
        } => FieldError::new(
            field,
            format!("'{value}' is not a duration like 30s, 1m, 1h ({source})"),
        ),
        E::OpenApi { reason } => FieldError::new("openapi", reason),
    }
}

impl Policy {
    /// The API guard's part of the policy.
    #[must_use]
    pub fn api_policy(&self) -> tollgate_detect::ApiPolicy {
        tollgate_detect::ApiPolicy {
            auth: self.auth.clone(),
            routes: self.routes.clone(),
            checks: self.checks.clone(),
        }
    }

    /// The CrowdSec bouncer, ready to run (validated when parsed).
    #[must_use]
    pub fn crowdsec_job(&self) -> Option<crate::crowdsec::BouncerJob> {
        self.crowdsec.as_ref().and_then(|c| c.job().ok())
    }

    /// The feeds, ready to run (the policy was validated when parsed).
    #[must_use]
    pub fn feed_jobs(&self) -> Vec<crate::feed::FeedJob> {
        self.feeds
            .iter()
            .map(|f| crate::feed::FeedJob {
                name: f.name.clone(),
                path: f.path.clone(),
                refresh: feed_refresh(f).unwrap_or(DEFAULT_FEED_REFRESH),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let p = Policy::parse(
            "mode: monitor\ninterfaces: [eth0]\nattach: tc\nallowlist:\n  - 198.18.0.0/24\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(p.mode, Some(ModeName::Monitor));
        assert_eq!(p.attach, Some(AttachKind::Tc));
        assert_eq!(p.allowlist, vec!["198.18.0.0/24"]);
    }

    #[test]
    fn unknown_fields_are_errors_with_a_line() {
        let e = Policy::parse("mode: enforce\nmodee: monitor\n", Path::new("p.yaml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("modee"), "{s}");
    }

    /// A `grpc.descriptor_set` that is no descriptor set is refused with
    /// its line and the reason (at start, `policy check` and reload alike).
    #[test]
    fn a_bad_descriptor_set_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.pb"), "openapi: 3.0.3\n").unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "mode: enforce\ngrpc:\n  descriptor_set: api.pb\n").unwrap();
        let e = Policy::load(&file).unwrap_err().to_string();
        assert!(e.contains("grpc.descriptor_set"), "{e}");
        assert!(e.contains("not a protobuf descriptor set"), "{e}");
        std::fs::write(&file, "grpc:\n  descriptor_set: absent.pb\n").unwrap();
        let e = Policy::load(&file).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_descriptor_set_is_read_once_per_load() {
        use prost::Message as _;
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("h.proto".into()),
                service: vec![ServiceDescriptorProto {
                    name: Some("Health".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Check".into()),
                        ..MethodDescriptorProto::default()
                    }],
                    ..ServiceDescriptorProto::default()
                }],
                ..FileDescriptorProto::default()
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let pb = dir.path().join("api.pb");
        std::fs::write(&pb, set.encode_to_vec()).unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "grpc:\n  descriptor_set: api.pb\n").unwrap();
        let p = Policy::load(&file).unwrap();
        // Replaced after the check: what was checked is what is used.
        std::fs::write(&pb, "not a descriptor set").unwrap();
        let schema = p.grpc.schema.clone().unwrap();
        assert!(schema.methods.contains_key("/Health/Check"));
        assert!(crate::engine::Pipeline::from_policy(&p).is_ok());
    }

    #[test]
    fn bad_allowlist_entry_names_the_field() {
        let e = Policy::parse("allowlist: [198.18.0.5/24]\n", Path::new("p.yaml")).unwrap_err();
        assert!(e.to_string().contains("allowlist[0]"), "{e}");
    }

    #[test]
    fn a_bad_trusted_proxy_names_its_entry_and_line() {
        let e = expand_trusted(&["10.0.0.1".into(), "0.0.0.0/4".into()]).unwrap_err();
        assert_eq!(e.field, "trusted_proxies[1]");
        assert!(e.message.starts_with("'0.0.0.0/4' is wider than /8"), "{e}");
        let e = expand_trusted(&["nonsense".into()]).unwrap_err();
        assert_eq!(e.field, "trusted_proxies[0]");
        assert!(e.message.contains("or a preset"), "{e}");
        let text = "mode: enforce\ntrusted_proxies:\n  - 10.0.0.1\n  - 0.0.0.0/4\n";
        let e = Policy::parse(text, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4: trusted_proxies[1]"), "{e}");
    }

    #[test]
    fn section_checks_name_their_field() {
        let scoring = ScoringPolicy {
            ipv6_prefix: 8,
            ..Default::default()
        };
        assert_eq!(
            scoring.validate(),
            Err(FieldError::new(
                "scoring.ipv6_prefix",
                "8 is outside 16..=128"
            ))
        );
        let events = EventsPolicy {
            keep: 1000,
            ..Default::default()
        };
        assert_eq!(events.validate().unwrap_err().field, "events.keep");
    }

    #[test]
    fn key_material_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs.key"), "s3cret\n").unwrap();
        let policy = dir.path().join("p.yaml");
        let p = Policy::parse(
            "auth:\n  keys:\n    - {alg: HS256, secret_file: hs.key}\n",
            &policy,
        )
        .unwrap();
        assert_eq!(p.auth.keys[0].secret.as_deref(), Some("s3cret"));
        let e = Policy::parse(
            "auth:\n  keys:\n    - {alg: HS256, secret_file: missing.key}\n",
            &policy,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3: auth.keys[0].secret_file") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn value_errors_point_at_the_line() {
        let text = "mode: enforce\nallowlist:\n  - 198.18.0.1\n  - 198.18.0.5/24\nscoring:\n  ban_threshold: 10\n  half_life: 0s # oops\n";
        let e = Policy::parse(text, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4: allowlist[1]"), "{e}");
        let text = "allowlist: []\nscoring:\n  ban_threshold: 10\n  half_life: 0s\n";
        let e = Policy::parse(text, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4: scoring.half_life"), "{e}");
        assert_eq!(
            locate(
                "feeds:\n  - {name: a, path: /x}\n  - {name: a, path: /y}\n",
                "feeds[1].name"
            ),
            Some(3)
        );
        assert_eq!(locate("a: 1\n", "nothing.here"), None);
    }

    #[test]
    fn blank_deep_and_unsafe_files_are_refused() {
        assert!(is_blank(""));
        assert!(is_blank("  \n# only a comment\n\t\n---\n"));
        assert!(!is_blank("mode: enforce\n"));
        assert!(nesting_depth("mode: enforce\nfeeds:\n  - {name: a, path: /x}\n", 99) < 5);
        let deep = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(nesting_depth(&deep, MAX_NESTING) > MAX_NESTING);
        let e = Policy::parse(&deep, Path::new("p.yaml")).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
        let mut blocks = String::new();
        for i in 0..100 {
            blocks.push_str(&" ".repeat(i));
            blocks.push_str("k:\n");
        }
        assert!(nesting_depth(&blocks, MAX_NESTING) > MAX_NESTING);
        let dashes = format!("a:\n  {}x\n", "- ".repeat(100));
        assert!(nesting_depth(&dashes, MAX_NESTING) > MAX_NESTING);
        let quoted = "a: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"\"\nb: '{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'\n";
        assert!(nesting_depth(quoted, MAX_NESTING) < 5, "{quoted}");
        // What the agent refuses at start, the check refuses too.
        for (bad, field) in [
            ("allowlist: [0.0.0.0/0]\n", "allowlist[0]"),
            ("allowlist: ['::/0']\n", "allowlist[0]"),
            ("metrics: {listen: '0.0.0.0:9477'}\n", "metrics.listen"),
        ] {
            let e = Policy::parse(bad, Path::new("p.yaml")).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        Policy::parse(
            "metrics: {listen: '0.0.0.0:9477', allow_remote: true}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "# nothing\n").unwrap();
        let e = Policy::load(&f).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let big = "# padding\n".repeat((MAX_FILE_BYTES / 10 + 1) as usize);
        std::fs::write(&f, format!("mode: enforce\n{big}")).unwrap();
        let e = Policy::load(&f).unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");
    }

    #[test]
    fn feeds_and_metrics() {
        let p = Policy::parse(
            "feeds:\n  - {name: spamhaus-drop, path: /etc/tollgate/drop.txt, refresh: 12h}\n  - {name: firehol, path: /x}\nmetrics:\n  listen: 127.0.0.1:9477\n  allow_remote: false\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let jobs = p.feed_jobs();
        assert_eq!(jobs[0].refresh, std::time::Duration::from_secs(12 * 3600));
        assert_eq!(jobs[1].refresh, DEFAULT_FEED_REFRESH);
        assert_eq!(p.metrics.unwrap().listen.port(), 9477);
        for (bad, field) in [
            ("feeds: [{name: 'a b', path: /x}]\n", "feeds[0].name"),
            (
                "feeds: [{name: a, path: /x}, {name: a, path: /y}]\n",
                "feeds[1].name",
            ),
            (
                "feeds: [{name: a, path: /x, refresh: soon}]\n",
                "feeds[0].refresh",
            ),
        ] {
            let e = Policy::parse(bad, Path::new("p.yaml")).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        assert!(
            Policy::parse(
                "feeds: [{name: a, path: /x, url: y}]\n",
                Path::new("p.yaml")
            )
            .is_err()
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The policies in the repository load: the documented example (every
    /// field) and the one `cargo xtask install` ships.
    #[test]
    fn example_and_deploy_policies_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ex = Policy::load(&root.join("examples/policy.yaml")).unwrap();
        assert_eq!(ex.api_ports, vec![8080, 8443]);
        assert_eq!(ex.rate_limit.ports.len(), 1);
        assert_eq!(ex.feeds.len(), 1);
        assert_eq!(ex.sampling, SamplingPolicy::default());
        assert!(ex.metrics.is_some());
        Policy::load(&root.join("deploy/policy.yaml")).unwrap();
    }
}
