//! Questions about one address or a slice of the ban set: `block test` and
//! filtered, paged `block ls`. Kept apart from the request list so the
//! answers' shapes are read in one place (docs/json.md documents them).

use serde::{Deserialize, Serialize};

use super::{AllowView, BanView};

/// Filters and paging of `block ls`, applied by the agent so a large set is
/// never sent whole to show one page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BanFilter {
    /// Only bans sharing an address with this address or prefix (covering
    /// it, or inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
    /// Only this kind (`manual`, `rate-limit`, `policy`, `feed`, `crowdsec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this origin (group), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only bans expiring within this many seconds (permanent ones never do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiring_within_secs: Option<u64>,
    /// Skip this many matching bans (sorted by address).
    #[serde(default)]
    pub offset: usize,
    /// At most this many bans (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One page of bans.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BanPage {
    /// Bans matching the filters, before paging.
    pub total: usize,
    /// Matching bans skipped.
    pub offset: usize,
    /// This page, sorted by address.
    pub bans: Vec<BanView>,
}

/// A ban covering the tested address, and what the kernel holds for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoveringBan {
    /// The ban as `block ls` shows it.
    #[serde(flatten)]
    pub ban: BanView,
    /// `present`: the kernel holds the entry and enforces it; `missing`: the
    /// store has it but the kernel does not (not enforced); `expired`: the
    /// kernel entry's time is up (ignored, removed at the next expiry pass).
    pub kernel: String,
}

/// Rate-limit state of the tested address, per limit class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateStateView {
    /// The limited client (IPv4 address, or IPv6 prefix).
    pub client: String,
    /// Destination port of the limit class; null: the default class.
    pub port: Option<u16>,
    /// The limit class as the table names it: `default`, or the port.
    #[serde(default)]
    pub class: String,
    /// Packets passed.
    pub passed: u64,
    /// Packets dropped (or counted in monitor mode) by the limit.
    pub dropped: u64,
    /// Exceeding its limit now (a ban follows if it keeps on).
    pub exceeding: bool,
}

/// `block test`: everything that decides whether an address is dropped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockTestView {
    /// The address asked about.
    pub address: String,
    /// A ban the kernel enforces covers it and no allowlist entry overrides
    /// it (in monitor mode: it would be dropped).
    pub blocked: bool,
    /// `enforce` or `monitor` (then nothing is dropped, only counted).
    pub mode: String,
    /// Every ban covering the address, narrowest first (host entry, then
    /// ranges; feed groups show as kind `feed` with their origin).
    pub bans: Vec<CoveringBan>,
    /// Allowlist entries covering it: they override every ban.
    pub allows: Vec<AllowView>,
    /// The trusted proxy prefix covering it: its clients' bans are enforced
    /// per connection, not on the address.
    pub trusted_proxy: Option<String>,
    /// Kernel ban entries covering it that the store does not know.
    pub kernel_only: Vec<String>,
    /// The kernel holds exactly the covering bans the store holds.
    pub kernel_agrees: bool,
    /// Rate-limit state (empty: no limit has seen it).
    pub rate_limit: Vec<RateStateView>,
    /// Bans the rate limiter issued to it so far.
    pub offences: u32,
}
