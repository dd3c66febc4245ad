//! The control-socket protocol: one JSON request per line, one JSON response
//! per line. Requests are untrusted input: the agent validates every field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod query;
pub use query::{BanFilter, BanPage, BlockTestView, CoveringBan, RateStateView};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/tollgate/tollgate.sock";
/// Largest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest answer line the CLI reads (a full `block export` of millions of
/// entries fits; a runaway answer does not exhaust memory).
pub const MAX_ANSWER_BYTES: u64 = 2 << 30;
/// Longest line in the body of a streamed [`Request::BlockImport`].
pub const MAX_IMPORT_LINE: usize = 64;

/// Ban kinds ([`BanReason`]) as the store, the control socket and the CLI
/// spell them: by [`BanReason::name`], the strings the store has always held.
pub mod ban_kind {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use tollgate_common::BanReason;

    /// Every kind, in code order.
    pub const ALL: [BanReason; 5] = [
        BanReason::Manual,
        BanReason::RateLimit,
        BanReason::Policy,
        BanReason::Feed,
        BanReason::Crowdsec,
    ];

    /// The kind with this name.
    #[must_use]
    pub fn parse(name: &str) -> Option<BanReason> {
        ALL.into_iter().find(|k| k.name() == name)
    }

    /// Writes the name.
    ///
    /// # Errors
    /// When the serializer fails.
    pub fn serialize<S: Serializer>(kind: &BanReason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.name())
    }

    /// Reads a name. A name this version does not know (written by a newer
    /// one) reads as `manual`: the ban stays enforced and no feed or
    /// CrowdSec sync treats it as its own — as its kernel entry always did.
    ///
    /// # Errors
    /// When the value is not a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BanReason, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(parse(&name).unwrap_or(BanReason::Manual))
    }
}

/// What the CLI asks the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Ban an address or prefix.
    BlockAdd {
        /// Address or CIDR.
        cidr: String,
        /// Seconds; `None` = until removed.
        ttl_secs: Option<u64>,
        /// Free text.
        reason: Option<String>,
        /// Allow very broad prefixes and overlaps with the allowlist.
        #[serde(default)]
        force: bool,
    },
    /// Lift a ban.
    BlockRm {
        /// Address or CIDR, exactly as banned.
        cidr: String,
        /// Lift it on this host only, without telling the fleet.
        #[serde(default)]
        local: bool,
        /// A prefix that is not banned is no error: the answer says `absent`.
        #[serde(default)]
        exist: bool,
    },
    /// List bans.
    BlockLs,
    /// Bans matching filters, one page (`block ls` with filters).
    BlockQuery {
        /// Filters and paging.
        #[serde(default)]
        filter: BanFilter,
    },
    /// Everything covering one address (`block test`).
    BlockTest {
        /// The address.
        address: String,
    },
    /// Replace a feed group: the header of a streamed request. Exactly
    /// `count` lines follow the header, one address or CIDR each (at most
    /// [`MAX_IMPORT_LINE`] bytes), so the request is bounded by
    /// `count` ≤ [`crate::feed::MAX_ENTRIES`] and never held in one line.
    /// Bans of kind `feed` with this origin that are not in the stream are
    /// removed; bans from other origins are left alone.
    BlockImport {
        /// Group name (`import:<file name>` or a policy feed's name).
        origin: String,
        /// Lines that follow.
        count: usize,
        /// Seconds; `None` = until removed.
        ttl_secs: Option<u64>,
        /// Free text; default `feed <origin>`.
        reason: Option<String>,
        /// Allow very broad prefixes and overlaps with the allowlist.
        #[serde(default)]
        force: bool,
        /// Only say what would change.
        #[serde(default)]
        dry_run: bool,
    },
    /// Lift every ban with this origin.
    BlockRmOrigin {
        /// The group (as `block ls` shows in ORIGIN).
        origin: String,
        /// Only say what would be lifted.
        #[serde(default)]
        dry_run: bool,
    },
    /// Bans as a plain list (for `block export`).
    BlockExport {
        /// Only this group.
        origin: Option<String>,
    },
    /// Re-read the policy file the agent was started with.
    PolicyReload,
    /// Allowlist an address or prefix.
    AllowAdd {
        /// Address or CIDR.
        cidr: String,
        /// Free text.
        reason: Option<String>,
        /// Allow very broad prefixes.
        #[serde(default)]
        force: bool,
    },
    /// Remove an allowlist entry.
    AllowRm {
        /// Address or CIDR, exactly as added.
        cidr: String,
        /// An entry that is not listed is no error: the answer says `absent`.
        #[serde(default)]
        exist: bool,
    },
    /// List allowlist entries.
    AllowLs,
    /// Datapath counters.
    Stats,
    /// Agent status.
    Status,
    /// The fleet as this agent and etcd see it (`cluster status`).
    ClusterStatus,
    /// Set limits for one port, or the default for all ports.
    LimitsSet {
        /// Destination port; `None` = the default.
        port: Option<u16>,
        /// The limits.
        spec: crate::limits::LimitSpec,
        /// Keep the current values of the fields `spec` leaves unset.
        #[serde(default)]
        merge: bool,
    },
    /// Remove the limits of one port (it falls back to the default), or the default.
    LimitsClear {
        /// Destination port; `None` = the default.
        port: Option<u16>,
    },
    /// The limits in force.
    LimitsShow,
    /// Sources with the highest current rates.
    Top {
        /// How many.
        n: usize,
    },
    /// Stream parsed API requests and responses (JSON lines).
    Tap {
        /// Only this API port.
        #[serde(default)]
        port: Option<u16>,
        /// Only clients in this CIDR.
        #[serde(default)]
        src: Option<String>,
        /// Stop after this many.
        #[serde(default)]
        count: Option<u64>,
    },
    /// The API inventory.
    Inventory,
    /// Security events (JSON lines): past ones, then new ones with `follow`.
    Events {
        /// Only events of the last this-many seconds (default: all kept).
        #[serde(default)]
        since_secs: Option<u64>,
        /// Keep streaming new events.
        #[serde(default)]
        follow: bool,
        /// At most the newest this-many past events.
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Something the operator should know even though it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Response {
    /// Success with a payload.
    #[must_use]
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(data),
            warning: None,
        }
    }

    /// Failure with a reason.
    #[must_use]
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: None,
            warning: None,
        }
    }
}

/// One ban as `block ls --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BanView {
    /// Prefix in CIDR notation (hosts as /32 or /128).
    pub cidr: String,
    /// The address part.
    pub address: String,
    /// Prefix length.
    pub prefix_len: u8,
    /// Free text reason (auto bans: the kind, e.g. `rate-limit`).
    pub reason: String,
    /// `manual`, `rate-limit`, `policy`, `feed`, `crowdsec`.
    #[serde(with = "ban_kind")]
    pub kind: tollgate_common::BanReason,
    /// Who made it.
    pub origin: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or null for permanent bans.
    pub expires_at: Option<String>,
    /// Seconds left, or null for permanent bans.
    pub ttl_remaining_secs: Option<u64>,
    /// Packets dropped (or counted in monitor mode) by this entry.
    pub hits: u64,
    /// How many times this client was banned.
    pub offences: u32,
    /// The fleet host that decided it, when another host did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Every decision on this prefix, strongest (the one above, which the
    /// kernel enforces) first: a manual ban and a feed's on one address are
    /// two, and lifting one leaves the other.
    #[serde(default)]
    pub decisions: Vec<DecisionView>,
}

/// One decision on a banned prefix (`decisions` of a ban).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecisionView {
    /// `manual`, `rate-limit`, `policy`, `feed`, `crowdsec`.
    #[serde(with = "ban_kind")]
    pub kind: tollgate_common::BanReason,
    /// Free text.
    pub reason: String,
    /// Who made it.
    pub origin: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or null for permanent decisions.
    pub expires_at: Option<String>,
    /// Seconds left, or null for permanent decisions.
    pub ttl_remaining_secs: Option<u64>,
    /// The fleet host that decided it, when another host did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One allowlist entry as `allow ls --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllowView {
    /// Prefix in CIDR notation.
    pub cidr: String,
    /// The address part.
    pub address: String,
    /// Prefix length.
    pub prefix_len: u8,
    /// Free text.
    pub reason: String,
    /// Who made it.
    pub origin: String,
    /// RFC 3339.
    pub created_at: String,
    /// Banned packets let through because of this entry.
    pub hits: u64,
}

/// One counter row of `stats --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CounterView {
    /// `pass`, `drop`, `monitor`.
    pub verdict: String,
    /// Reason name.
    pub reason: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// `stats --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsView {
    /// Non-zero counters by verdict and reason.
    pub counters: Vec<CounterView>,
    /// Totals by verdict.
    pub totals: Vec<CounterView>,
}

/// One attachment in `status --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachView {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub ifindex: u32,
    /// `xdp-driver`, `xdp-generic` or `tcx`.
    pub attach: String,
    /// Kernel program id.
    pub program_id: u32,
}

/// `status --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// Agent version.
    pub version: String,
    /// `enforce` or `monitor`.
    pub mode: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Where maps and links are pinned.
    pub pin_dir: String,
    /// Where durable state lives.
    pub state_dir: String,
    /// `ok` or why the store is unavailable or degraded (writes failing).
    pub store: String,
    /// The last policy reload the agent refused (the running policy stayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_refused: Option<PolicyRefusalView>,
    /// Attachments.
    pub interfaces: Vec<AttachView>,
    /// Map fill levels.
    pub maps: Vec<MapFillView>,
    /// The API pipeline (when API ports are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingStatus>,
    /// Samples taken, lost (ring buffer full) and skipped by the datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_kernel: Option<SampleCounters>,
    /// The fleet link (when the agent shares bans through etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    /// HTTPS plaintext from the TLS probes (when API ports are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// The policy file the agent reads (`--config`); null without one.
    #[serde(default)]
    pub policy_file: Option<String>,
    /// The last policy reload (file watch, SIGHUP or `policy reload`); null
    /// when there was none since start.
    #[serde(default)]
    pub last_reload: Option<ReloadView>,
    /// Bytes the state directory's files take on disk.
    #[serde(default)]
    pub store_bytes: Option<u64>,
    /// Bans held (the store's records).
    #[serde(default)]
    pub store_bans: usize,
    /// Allowlist entries held.
    #[serde(default)]
    pub store_allows: usize,
    /// Rate-limiter table fill (sources tracked).
    #[serde(default)]
    pub limiter: Option<MapFillView>,
    /// What the restore of the stored bans at start could not do.
    #[serde(default)]
    pub restore: RestoreView,
}

/// `status --json`'s `restore`: what the start's restore left undone (all
/// zero and null after a clean start).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestoreView {
    /// Stored ban rows that could not be decoded and were skipped.
    pub skipped_rows: usize,
    /// Why the read of the stored bans stopped early (the bans after that
    /// point were not restored); null when it read them all.
    pub read_error: Option<String>,
    /// Stored bans the kernel does not hold: a map refused them (full?).
    pub not_enforced: usize,
    /// The kernel's first refusal.
    pub kernel_error: Option<String>,
    /// Kernel bans kept as they were, not adopted into the store, because
    /// their stored rows were not read or could not be decoded.
    pub kernel_only: usize,
}

/// A policy reload as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadView {
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// Applied (true) or refused, the running policy staying (false).
    pub applied: bool,
    /// What changed, or why it was refused.
    pub summary: String,
}

/// The fleet link as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterView {
    /// The fleet.
    pub fleet: String,
    /// This host's name in it.
    pub host_id: String,
    /// etcd URLs.
    pub endpoints: Vec<String>,
    /// Reading and writing etcd works now.
    pub connected: bool,
    /// The last etcd revision applied.
    pub revision: i64,
    /// Seconds since the last exchange with etcd (null: never).
    pub staleness_secs: Option<u64>,
    /// Local changes not yet written to etcd.
    pub outbox: u64,
    /// Local bans shared since start.
    pub published: u64,
    /// Local bans kept local: the per-minute cap was reached.
    pub rate_limited: u64,
    /// Fleet records skipped as malformed or hostile.
    pub skipped: u64,
    /// This host's decisions the fleet does not carry whole: cut to the
    /// record limits every host reads (long origin or reason, too many
    /// decisions on a prefix) or kept local (a prefix wider than the fleet
    /// takes).
    #[serde(default)]
    pub unshared: u64,
    /// Prefixes of this host's own bans published again because etcd lost
    /// them without an unban (a key deleted by hand, a wipe, a restore).
    #[serde(default)]
    pub republished: u64,
    /// Fleet bans refused here (allowlisted, trusted proxy).
    pub refused: u64,
    /// Fleet changes applied here since start.
    pub applied: u64,
    /// Full reads of the fleet's set (start, reconnects, lost watches).
    pub resyncs: u64,
    /// Entries the last check found different between the kernel ban maps
    /// and the bans this host holds (null: not checked yet); each was
    /// repaired.
    #[serde(default)]
    pub drift_entries: Option<u64>,
    /// Kernel entries repaired by the checks since start.
    #[serde(default)]
    pub repaired: u64,
    /// Why the last exchange with etcd failed, while disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `cluster status`: this host's link ([`ClusterView`]) and what etcd
/// says of the fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterReport {
    /// This host's link, as `status` shows it.
    pub cluster: ClusterView,
    /// etcd's current revision (null: etcd not reachable now).
    pub etcd_revision: Option<i64>,
    /// Revisions this host is behind etcd (null: etcd not reachable now).
    pub lag: Option<i64>,
    /// The etcd members.
    pub members: Vec<MemberView>,
    /// Every host of the fleet that reported itself, by name.
    pub hosts: Vec<HostView>,
    /// Why etcd could not be asked, when it could not.
    pub error: Option<String>,
}

/// One etcd member.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberView {
    /// Member name.
    pub name: String,
    /// Member id, hexadecimal as etcdctl prints it.
    pub id: String,
    /// Client URLs.
    pub client_urls: Vec<String>,
    /// Answered a status request just now.
    pub reachable: bool,
    /// It is the raft leader.
    pub leader: bool,
    /// Its revision (null: not reachable).
    pub revision: Option<i64>,
    /// Its database size (null: not reachable).
    pub db_size_bytes: Option<i64>,
}

/// One fleet host, as it last reported itself in etcd.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostView {
    /// Its host id.
    pub host: String,
    /// When it last reported, RFC 3339, UTC.
    pub last_sync: String,
    /// Seconds since then.
    pub age_secs: u64,
    /// Connected to etcd when it reported.
    pub connected: bool,
    /// The fleet revision it had applied.
    pub revision: i64,
    /// Its changes not yet in etcd.
    pub outbox: u64,
    /// Its last drift check (null: none yet).
    pub drift_entries: Option<u64>,
    /// Bans it enforced.
    pub bans: u64,
}

/// A refused policy reload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRefusalView {
    /// Unix seconds (deprecated: read `refused_at`).
    pub at: u64,
    /// RFC 3339, UTC, milliseconds.
    #[serde(default)]
    pub refused_at: String,
    /// Why (file, line, field).
    pub reason: String,
}

/// The datapath's sampling counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SampleCounters {
    /// Written to the ring buffer.
    pub taken: u64,
    /// Lost: the ring buffer was full.
    pub lost: u64,
    /// Not selected by the policy.
    pub skipped: u64,
    /// Lost in the last minute (what this agent saw).
    #[serde(default)]
    pub lost_last_minute: u64,
    /// The ring buffer's size (`capacity.sample_ring_bytes`).
    #[serde(default)]
    pub ring_bytes: u64,
}

/// One map's fill level.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapFillView {
    /// Map name.
    pub name: String,
    /// Entries held.
    pub entries: usize,
    /// Capacity.
    pub capacity: u32,
    /// Kernel memory the map takes now, in bytes (what the kernel reports
    /// for it: the fixed part for its capacity plus its entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The policy setting that sizes it (`capacity.KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
}

/// `limits show --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LimitsView {
    /// IPv6 clients are limited per prefix of this length.
    pub ipv6_prefix: u8,
    /// Limits for ports without their own.
    pub default: Option<crate::limits::LimitSpec>,
    /// Limits per destination port.
    pub ports: std::collections::BTreeMap<u16, crate::limits::LimitSpec>,
    /// Continuous exceeding for this many seconds gets a ban.
    pub ban_after_secs: u64,
    /// Ban TTLs (seconds) for the 1st, 2nd, ... offence.
    pub ban_ttls_secs: Vec<u64>,
}

/// A limit class by the name tables and JSON share: `default` (class 0),
/// or the destination port.
#[must_use]
pub fn limit_class(class: u32) -> String {
    match class {
        0 => "default".into(),
        p => p.to_string(),
    }
}

/// One row of `top --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopView {
    /// The source (IPv4 address, or IPv6 prefix).
    pub client: String,
    /// Destination port of its limit class, or null for the default class.
    pub port: Option<u16>,
    /// The limit class as the table names it: `default`, or the port.
    #[serde(default)]
    pub class: String,
    /// Packets passed so far.
    pub passed: u64,
    /// Packets dropped so far.
    pub dropped: u64,
    /// Passed per second since the previous `top` (null on the first call).
    pub pass_rate: Option<f64>,
    /// Dropped per second since the previous `top`.
    pub drop_rate: Option<f64>,
    /// Established connections counted for it.
    pub conns: u64,
}

/// `block export`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportView {
    /// RFC 3339.
    pub generated_at: String,
    /// Bans exported (as `block ls`'s page: the whole set, from offset 0).
    #[serde(default)]
    pub total: usize,
    /// Always 0: an export is never paged.
    #[serde(default)]
    pub offset: usize,
    /// Bans, sorted by address, each as `block ls --json` prints it
    /// (`cidr`, `kind`, `origin`, `expires_at` as before, and the rest).
    pub bans: Vec<BanView>,
}

/// What `status` reports about sampling.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SamplingStatus {
    /// API ports sampled.
    pub api_ports: Vec<u16>,
    /// The configured 1-in-N.
    pub one_in_configured: u32,
    /// The 1-in-N in force (raised under load).
    pub one_in_effective: u32,
    /// Body bytes of each request judged now (`sampling.body_bytes`,
    /// lowered first when the agent is over its CPU budget).
    #[serde(default)]
    pub body_bytes_effective: u32,
    /// Pipeline counters.
    pub flows: crate::api::flows::FlowStats,
    /// Flows followed now.
    pub flows_followed: usize,
    /// Clients with a policy score now.
    #[serde(default)]
    pub clients_scored: usize,
    /// Clients the API guard keeps state for (limits, ids, failures).
    #[serde(default)]
    pub clients_tracked: usize,
    /// Requests and responses with at least one violation.
    #[serde(default)]
    pub findings: u64,
    /// Requests judged without a verified client (no handshake, bytes the
    /// server never acknowledged): reported, never scored or banned.
    #[serde(default)]
    pub unverified: u64,
    /// Requests from trusted proxies on connections that carry more than
    /// one client (HTTP/2, or a proxy reusing its backend connections): a
    /// banned client among them is banned and reported, but its connection
    /// is not cut, which would cut the other clients on it too.
    #[serde(default)]
    pub proxied_shared: u64,
    /// Requests waiting for the kernel to show it accepted them.
    #[serde(default)]
    pub awaiting_verification: usize,
    /// Where requests are taken: `socket` (every request, as the server
    /// reads it) or `nic` (sampled packets).
    #[serde(default)]
    pub capture: String,
    /// Reads of the sample ring that found records (with the records per
    /// read, how well the agent batches: drains are held back to one per
    /// 20 ms under steady traffic).
    #[serde(default)]
    pub drains: u64,
}

// Values the agent accepts in requests. The CLI checks them before it
// sends, and the policy checks feed names, with the agent's own rules.

/// Longest ban a request may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest free-text reason.
pub const MAX_REASON_LEN: usize = 256;

/// Longest origin (group) name.
pub const MAX_ORIGIN_LEN: usize = 128;

/// Checks a group name: printable, bounded, not empty.
///
/// # Errors
/// When it is empty, too long or carries control characters or whitespace.
pub fn check_origin(origin: &str) -> Result<(), Refused> {
    if origin.is_empty() {
        return Err(refuse("origin must not be empty"));
    }
    if origin.chars().count() > MAX_ORIGIN_LEN {
        return Err(refuse(format!(
            "origin is longer than {MAX_ORIGIN_LEN} characters"
        )));
    }
    if origin.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse(
            "origin must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A request the agent refuses, with the reason for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl Refused {
    /// A refusal with its reason.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

fn refuse(msg: impl Into<String>) -> Refused {
    Refused(msg.into())
}

/// Checks a free-text reason.
///
/// # Errors
/// When it is too long or carries control characters.
pub fn check_reason(reason: Option<&str>) -> Result<Option<String>, Refused> {
    match reason {
        None => Ok(None),
        Some(r) if r.chars().count() > MAX_REASON_LEN => Err(refuse(format!(
            "reason is longer than {MAX_REASON_LEN} characters"
        ))),
        Some(r) if r.chars().any(char::is_control) => {
            Err(refuse("reason must not contain control characters"))
        }
        Some(r) => Ok(Some(r.trim().to_owned())),
    }
}

/// Checks a TTL in seconds.
///
/// # Errors
/// When it is zero or longer than [`MAX_TTL`].
pub fn check_ttl(ttl_secs: Option<u64>) -> Result<Option<u64>, Refused> {
    match ttl_secs {
        Some(0) => Err(refuse(
            "a ttl of zero would expire at once; omit --ttl for a permanent ban",
        )),
        Some(t) if t > MAX_TTL.as_secs() => Err(refuse(format!(
            "ttl {} is longer than the maximum of {}; omit --ttl for a permanent ban",
            humantime::format_duration(Duration::from_secs(t)),
            humantime::format_duration(MAX_TTL)
        ))),
        t => Ok(t),
    }
}

/// A library file the probes are attached to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LibraryView {
    /// Path in the first process it was found in.
    pub path: String,
    /// That process.
    pub pid: u32,
    /// `dev:inode` of the file.
    pub file: String,
    /// Functions probed.
    pub functions: Vec<String>,
    /// Why it could not be probed (then `functions` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `status` shows under `tls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsStatus {
    /// Probing is on.
    pub enabled: bool,
    /// Why it is off or failed, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ports whose connections are judged.
    pub ports: Vec<u16>,
    /// Library files found (probed, or why not).
    pub libraries: Vec<LibraryView>,
    /// Probed calls that returned data (kernel counter).
    pub calls: u64,
    /// Plaintext bytes captured (kernel counter).
    pub bytes_captured: u64,
    /// Plaintext bytes lost: ring buffer full, past the per-call cap
    /// (kernel counter).
    pub bytes_lost: u64,
    /// Calls whose connection was not known (kernel counter).
    pub calls_without_fd: u64,
    /// Records handed to the pipeline (TLS-port connections of selected
    /// processes).
    pub records: u64,
    /// Records of other connections (TLS clients, other ports): dropped.
    pub records_other: u64,
    /// Records whose descriptor was gone, reused or not a TCP socket when
    /// their stream was first read: dropped.
    pub records_unresolved: u64,
    /// Records of processes the policy excludes: dropped.
    pub records_excluded: u64,
    /// New streams announced by the kernel and resolved at once (before
    /// their data is read).
    #[serde(default)]
    pub streams_announced: u64,
    /// New streams the kernel could not announce (its announcement ring
    /// full; kernel counter): they resolve when their data is read, and
    /// sample reads are not held back for a while after.
    #[serde(default)]
    pub announcements_lost: u64,
    /// Streams whose descriptor no longer held them when their connection
    /// was looked up (closed, maybe reused by another client): their
    /// records are dropped (counted in `records_unresolved`).
    #[serde(default)]
    pub streams_unproven: u64,
}
