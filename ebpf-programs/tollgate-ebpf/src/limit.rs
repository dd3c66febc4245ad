//! Per-source rate limits: GCRA ("virtual scheduling") per source and limit
//! class, for packets, bytes and SYNs, plus the concurrent-connection cap
//! kept by the sock_ops program.
//!
//! Why GCRA: one timestamp per limit, advanced with an atomic add when a
//! packet passes, so a source whose packets arrive on several CPUs is
//! accounted exactly while it is over its rate (the only store that can race
//! is the reset of an idle bucket, which can let one extra packet through).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_boot_ns};
use tollgate_common::{Bucket, BucketKey, LimitCfg, RateEvent, Reason};

use crate::{
    atomic_add,
    maps::{TG_BUCKETS, TG_CONNS, TG_EVENTS, TG_LIMITS},
    parse::{IPPROTO_TCP, L4, Source, TCP_ACK, TCP_SYN},
};

/// At most one event per source per second.
const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// The accounting key for a source: IPv4 as `::ffff:a.b.c.d`, IPv6 masked to
/// the configured prefix (so a host cannot dodge its limit by rotating
/// addresses). The mask comes precomputed from the agent: no branches here.
#[inline(always)]
pub fn key_of(src: &Source, v6_mask: &[u8; 16], class: u32) -> BucketKey {
    let mut addr = src.mapped();
    if let Source::V6(_) = src {
        for (b, m) in addr.iter_mut().zip(v6_mask) {
            *b &= m;
        }
    }
    BucketKey { addr, class }
}

/// GCRA check on one timestamp: true (and the TAT advanced by `cost`) if the
/// packet conforms.
#[inline(always)]
fn conform(tat: *mut u64, now: u64, cost: u64, tolerance: u64) -> bool {
    // SAFETY: `tat` points into a map value, valid for this program run.
    let t = unsafe { core::ptr::read_volatile(tat) };
    let base = if t < now {
        // Idle: restart from now. Racy by design, see the module docs.
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(tat, now) };
        now
    } else {
        t
    };
    if base - now > tolerance {
        return false;
    }
    atomic_add(tat, cost);
    true
}

/// The limits for a packet's destination port, if any are active: the
/// port's own slot when it has one (`class != 0`), else the default in slot 0.
#[inline(always)]
pub fn limits_for(l4: &L4) -> Option<&'static LimitCfg> {
    let own = TG_LIMITS.get(u32::from(l4.dport))?;
    let cfg = if own.class != 0 {
        own
    } else {
        TG_LIMITS.get(0)?
    };
    if cfg.is_active() { Some(cfg) } else { None }
}

/// Applies the limits of `cfg` to one packet of `len` bytes. `Reason::Clean`
/// when it conforms, else why it does not.
#[inline(always)]
pub fn check(src: &Source, v6_mask: &[u8; 16], l4: &L4, cfg: &LimitCfg, len: u64) -> Reason {
    let key = key_of(src, v6_mask, cfg.class);
    let is_syn =
        l4.proto == IPPROTO_TCP && l4.tcp_flags & TCP_SYN != 0 && l4.tcp_flags & TCP_ACK == 0;
    if is_syn && cfg.max_conns != 0
        && let Some(n) = TG_CONNS.get_ptr(&key)
        // SAFETY: map value pointer.
        && let count = unsafe { core::ptr::read_volatile(n) }
        // A count that wrapped below zero (racing decrements) reads as zero.
        && count < (1 << 63)
        && count >= u64::from(cfg.max_conns)
    {
        return over(&key, Reason::ConnLimited);
    }
    if cfg.pps == 0 && cfg.bps == 0 && (!is_syn || cfg.syn_rate == 0) {
        return Reason::Clean;
    }
    let bucket = match TG_BUCKETS.get_ptr_mut(&key) {
        Some(b) => b,
        None => {
            let _ = TG_BUCKETS.insert(&key, &Bucket::default(), u64::from(BPF_NOEXIST));
            match TG_BUCKETS.get_ptr_mut(&key) {
                Some(b) => b,
                // Fail open: a full or failing map never drops.
                None => return Reason::Clean,
            }
        }
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `bucket` points at a live map value for this run.
    let b = unsafe { &mut *bucket };
    let verdict = if is_syn
        && cfg.syn_rate != 0
        && !conform(
            &raw mut b.syn_tat,
            now,
            cfg.syn_interval_ns,
            cfg.syn_tolerance_ns,
        ) {
        Reason::SynLimited
    } else if (cfg.pps != 0
        && !conform(
            &raw mut b.pkt_tat,
            now,
            cfg.pkt_interval_ns,
            cfg.pkt_tolerance_ns,
        ))
        // Only a packet within its packet rate is charged to the byte rate.
        || (cfg.bps != 0
            && !conform(
                &raw mut b.byte_tat,
                now,
                (len * cfg.ns_per_kib) >> 10,
                cfg.byte_tolerance_ns,
            ))
    {
        Reason::RateLimited
    } else {
        Reason::Clean
    };
    if verdict == Reason::Clean {
        atomic_add(&raw mut b.passed, 1);
    } else {
        atomic_add(&raw mut b.dropped, 1);
        // SAFETY: as above.
        let last = unsafe { core::ptr::read_volatile(&raw const b.last_report_ns) };
        if now.wrapping_sub(last) > REPORT_INTERVAL_NS {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&raw mut b.last_report_ns, now) };
            report(&key, verdict, b.dropped, b.passed, now);
        }
    }
    verdict
}

/// Conn-cap refusals have no bucket; report them (rate-limited by the
/// bucket's clock when there is one) and count them.
#[inline(always)]
fn over(key: &BucketKey, reason: Reason) -> Reason {
    if let Some(b) = TG_BUCKETS.get_ptr_mut(key) {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        // SAFETY: map value pointer.
        let b = unsafe { &mut *b };
        atomic_add(&raw mut b.dropped, 1);
        let last = b.last_report_ns;
        if now.wrapping_sub(last) > REPORT_INTERVAL_NS {
            b.last_report_ns = now;
            report(key, reason, b.dropped, b.passed, now);
        }
    } else {
        let fresh = Bucket {
            dropped: 1,
            // SAFETY: helper without arguments.
            last_report_ns: unsafe { bpf_ktime_get_boot_ns() },
            ..Bucket::default()
        };
        let _ = TG_BUCKETS.insert(key, &fresh, u64::from(BPF_NOEXIST));
        report(key, reason, 1, 0, fresh.last_report_ns);
    }
    reason
}

/// Best effort: a full ring buffer drops the event, never the datapath.
#[inline(always)]
fn report(key: &BucketKey, reason: Reason, dropped: u64, passed: u64, now: u64) {
    let ev = RateEvent {
        key: *key,
        reason: reason as u32,
        dropped,
        passed,
        ts_ns: now,
    };
    let _ = TG_EVENTS.output::<RateEvent>(&ev, 0);
}
