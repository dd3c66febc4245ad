//! The one definition of everything the kernel programs and the agent share.
//!
//! - map names ([`maps`]) and sizes,
//! - map keys and values ([`BlockEntry`], [`AllowEntry`], [`Config`], [`Counter`]),
//! - verdicts and reasons ([`Verdict`], [`Reason`], [`BanReason`]),
//! - the prefilter layout ([`prefilter`]), computed identically on both sides.
//!
//! Every type is `#[repr(C)]` without implicit padding and its size is asserted,
//! so the two sides cannot drift apart.
#![no_std]

use core::mem::size_of;

/// Names of the maps, as the eBPF object declares them and as they are pinned
/// under the agent's bpffs directory (kernel map names are at most 15 bytes).
pub mod maps {
    /// [`super::Config`], one entry.
    pub const CONFIG: &str = "TG_CONFIG";
    /// Per-CPU [`super::Counter`]s indexed by [`super::counter_index`].
    pub const COUNTERS: &str = "TG_COUNTERS";
    /// IPv4 host bans: exact-match hash keyed by the address (network order bytes).
    pub const BLOCK4: &str = "TG_BLOCK4";
    /// IPv6 host bans: exact-match hash keyed by the 16 address bytes.
    pub const BLOCK6: &str = "TG_BLOCK6";
    /// IPv4 range bans (prefix shorter than /32): LPM trie.
    pub const BLOCK4_LPM: &str = "TG_BLOCK4_LPM";
    /// IPv6 range bans (prefix shorter than /128): LPM trie.
    pub const BLOCK6_LPM: &str = "TG_BLOCK6_LPM";
    /// IPv4 allowlist: LPM trie.
    pub const ALLOW4: &str = "TG_ALLOW4";
    /// IPv6 allowlist: LPM trie.
    pub const ALLOW6: &str = "TG_ALLOW6";
    /// IPv4 prefilter bitmap, see [`super::prefilter`].
    pub const PREFILTER4: &str = "TG_PRE4";
    /// IPv6 prefilter bitmap, see [`super::prefilter`].
    pub const PREFILTER6: &str = "TG_PRE6";

    /// Every pinned map, for status output and for clean removal.
    pub const ALL: [&str; 10] = [
        CONFIG, COUNTERS, BLOCK4, BLOCK6, BLOCK4_LPM, BLOCK6_LPM, ALLOW4, ALLOW6, PREFILTER4,
        PREFILTER6,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// The XDP ingress program.
    pub const XDP_INGRESS: &str = "tollgate_xdp";
    /// The same logic as a TC (tcx) ingress classifier.
    pub const TC_INGRESS: &str = "tollgate_tc";
    /// Benchmark only: the trivial XDP_PASS floor.
    pub const BENCH_PASS: &str = "bench_pass";
    /// Benchmark only: count and pass.
    pub const BENCH_COUNT: &str = "bench_count";
    /// Benchmark only: count and drop.
    pub const BENCH_DROP: &str = "bench_drop";
    /// Benchmark only: live-frames packet generator.
    pub const BENCH_GEN: &str = "bench_gen";
}

/// Default capacities. The agent may override them at load time; the kernel
/// allocates hash and trie entries lazily (`BPF_F_NO_PREALLOC`), so an empty
/// map costs little.
pub mod capacity {
    /// IPv4 host bans.
    pub const BLOCK4: u32 = 1 << 21;
    /// IPv6 host bans.
    pub const BLOCK6: u32 = 1 << 21;
    /// IPv4 range bans.
    pub const BLOCK4_LPM: u32 = 1 << 18;
    /// IPv6 range bans.
    pub const BLOCK6_LPM: u32 = 1 << 18;
    /// Allowlist entries per family.
    pub const ALLOW: u32 = 1 << 16;
}

/// A cache-friendly bitmap that lets the clean packet out after one array
/// lookup: a set bit means "some ban may cover this bucket", a clear bit means
/// "no ban can". Bits may be stale-set (cost: one more lookup), never
/// stale-clear: the agent sets bits before inserting a ban and clears them only
/// after removing it.
pub mod prefilter {
    /// Number of bucket bits (2^24 = 16 Mi buckets = 2 MiB per family).
    pub const BITS: u32 = 24;
    /// Number of `u64` words in each bitmap array.
    pub const WORDS: u32 = 1 << (BITS - 6);
    /// IPv4 buckets are the /24 a source belongs to.
    pub const V4_BUCKET_PREFIX: u8 = 24;
    /// IPv6 buckets are a hash of the /48 a source belongs to.
    pub const V6_BUCKET_PREFIX: u8 = 48;
    /// IPv6 ranges shorter than this are not enumerated into the bitmap; they
    /// set [`super::config_flags::V6_SHORT_RANGES`], which makes every IPv6
    /// packet consult the trie.
    pub const V6_MIN_ENUMERATED_PREFIX: u8 = 32;

    /// Bucket of an IPv4 address given as host-order `u32`.
    #[inline(always)]
    #[must_use]
    pub const fn bucket_v4(addr_host_order: u32) -> u32 {
        addr_host_order >> 8
    }

    /// Bucket of an IPv6 address: Fibonacci hash of its first 48 bits.
    #[inline(always)]
    #[must_use]
    pub const fn bucket_v6(addr: &[u8; 16]) -> u32 {
        let top48 = ((addr[0] as u64) << 40)
            | ((addr[1] as u64) << 32)
            | ((addr[2] as u64) << 24)
            | ((addr[3] as u64) << 16)
            | ((addr[4] as u64) << 8)
            | (addr[5] as u64);
        (top48.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as u32
    }

    /// Word index and bit mask of a bucket.
    #[inline(always)]
    #[must_use]
    pub const fn word_and_mask(bucket: u32) -> (u32, u64) {
        (bucket >> 6, 1u64 << (bucket & 63))
    }
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// The IPv4 range trie holds entries.
    pub const V4_RANGES: u32 = 1 << 0;
    /// The IPv6 range trie holds entries.
    pub const V6_RANGES: u32 = 1 << 1;
    /// The IPv6 range trie holds a prefix shorter than
    /// [`super::prefilter::V6_MIN_ENUMERATED_PREFIX`]: bypass the prefilter.
    pub const V6_SHORT_RANGES: u32 = 1 << 2;
    /// The IPv4 allowlist holds entries (else its trie is not consulted).
    pub const V4_ALLOW: u32 = 1 << 3;
    /// The IPv6 allowlist holds entries.
    pub const V6_ALLOW: u32 = 1 << 4;
}

/// Enforcement mode, [`Config::mode`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop what the policy says to drop.
    Enforce = 0,
    /// Count what would be dropped, pass everything.
    Monitor = 1,
}

/// Runtime configuration of the datapath, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`Mode`] as `u32`.
    pub mode: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Reserved for later use; zero.
    pub reserved: [u32; 6],
}
const _: () = assert!(size_of::<Config>() == 32);

/// A ban, as stored in the kernel (host hash or range trie value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// Expiry on the kernel's boot-time clock (`bpf_ktime_get_boot_ns`), in
    /// nanoseconds; 0 = never. The datapath ignores expired entries by itself,
    /// so a ban ends on time even when the agent is gone.
    pub expires_ns: u64,
    /// When the ban was made, boot-time clock nanoseconds.
    pub created_ns: u64,
    /// Packets this entry matched (dropped, or counted in monitor mode).
    pub hits: u64,
    /// [`BanReason`] as `u32`.
    pub reason: u32,
    /// Reserved; zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<BlockEntry>() == 32);

/// An allowlist entry (LPM trie value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// When it was added, boot-time clock nanoseconds.
    pub created_ns: u64,
    /// Packets that matched a ban (or a limit) and were let through because of it.
    pub hits: u64,
}
const _: () = assert!(size_of::<AllowEntry>() == 16);

/// One per-CPU counter cell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by the hook).
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// What happened to a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the stack.
    Pass = 0,
    /// Dropped.
    Drop = 1,
    /// Would have been dropped; passed because the mode is monitor.
    Monitor = 2,
}

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Self; 3] = [Self::Pass, Self::Drop, Self::Monitor];
    /// Stable lower-case name, used by the CLI, metrics and events.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Monitor => "monitor",
        }
    }
}

/// Why the datapath decided what it did. Defined once, printed by name everywhere.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Parsed, no rule matched.
    Clean = 0,
    /// Matched a ban but the source is allowlisted.
    Allowlisted = 1,
    /// Matched a live ban.
    Blocklisted = 2,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = 3,
    /// Headers cut short: passed, never dropped.
    Truncated = 4,
    /// Headers that make no sense (bad IHL, version mismatch): passed.
    Malformed = 5,
    /// IPv6 extension header chain longer than the datapath walks: passed.
    ExtChainTooLong = 6,
    /// Matched a ban that has expired: passed (the agent garbage-collects it).
    Expired = 7,
    /// An internal error (e.g. a failed map lookup that should not fail): passed.
    Error = 8,
}

impl Reason {
    /// Number of reasons; counters are laid out `verdict * COUNT + reason`.
    pub const COUNT: u32 = 9;
    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Clean,
        Self::Allowlisted,
        Self::Blocklisted,
        Self::NotIp,
        Self::Truncated,
        Self::Malformed,
        Self::ExtChainTooLong,
        Self::Expired,
        Self::Error,
    ];
    /// Stable kebab-case name, used by the CLI, metrics and events.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Allowlisted => "allowlisted",
            Self::Blocklisted => "blocklisted",
            Self::NotIp => "not-ip",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::ExtChainTooLong => "ext-chain-too-long",
            Self::Expired => "expired",
            Self::Error => "error",
        }
    }
}

/// Number of cells in the counters map.
pub const COUNTER_SLOTS: u32 = Verdict::ALL.len() as u32 * Reason::COUNT;

/// Index of the counter cell for a verdict and reason.
#[inline(always)]
#[must_use]
pub const fn counter_index(verdict: Verdict, reason: Reason) -> u32 {
    verdict as u32 * Reason::COUNT + reason as u32
}

/// Why a ban exists (kept in the kernel entry; the free-text reason lives in
/// the agent's store).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanReason {
    /// Added by an operator (`tollgate block add`).
    Manual = 1,
    /// A client that kept exceeding its rate limit.
    RateLimit = 2,
    /// The policy engine's detectors.
    Policy = 3,
    /// An imported block-list feed.
    Feed = 4,
    /// A CrowdSec decision.
    Crowdsec = 5,
}

impl BanReason {
    /// Stable name, as `tollgate block ls` shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::RateLimit => "rate-limit",
            Self::Policy => "policy",
            Self::Feed => "feed",
            Self::Crowdsec => "crowdsec",
        }
    }

    /// The reason for a stored code; unknown codes read as `None`.
    #[must_use]
    pub const fn from_u32(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Manual),
            2 => Some(Self::RateLimit),
            3 => Some(Self::Policy),
            4 => Some(Self::Feed),
            5 => Some(Self::Crowdsec),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers, without
    // padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_unique() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for v in Verdict::ALL {
            for r in Reason::ALL {
                let i = counter_index(v, r) as usize;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn prefilter_buckets_stay_in_range() {
        assert_eq!(prefilter::bucket_v4(u32::MAX), (1 << 24) - 1);
        let b = prefilter::bucket_v6(&[0xff; 16]);
        assert!(b < (1 << prefilter::BITS));
        // Addresses in the same /48 share a bucket.
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        let mut c = a;
        c[15] = 1;
        c[7] = 9;
        assert_eq!(prefilter::bucket_v6(&a), prefilter::bucket_v6(&c));
        let (w, m) = prefilter::word_and_mask(b);
        assert!(w < prefilter::WORDS && m != 0);
    }
}
