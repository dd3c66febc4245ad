//! Tollgate's kernel programs. Ingress: one decision ([`decide`]) behind two
//! hooks, XDP (`tollgate_xdp`) and TC/tcx (`tollgate_tc`, for hosts whose XDP
//! hook is taken), and the programs each tail-calls, the same code built for
//! each hook ([`hook::Hook`]): `tollgate_{xdp,tc}_proxy` for trusted proxies,
//! `tollgate_{xdp,tc}_sample` for API sampling. Egress:
//! `tollgate_tc_egress` (response samples, the server's acknowledgements).
//! Sockets: `sockops.rs` and `stream.rs`. TLS plaintext: `tls.rs` (uprobes).
//!
//! Fail-open by construction: a packet is dropped only when its parsed source
//! (behind a trusted proxy, the client its connection carries) matches a
//! live, non-allowlisted ban, or is over one of its limits (packet, byte or
//! SYN rate, concurrent connections), and never in monitor mode. A packet
//! that cannot be parsed, a missing map entry or a full map passes.
// Built for the kernel (bpfel-unknown-none) without std and without `main`.
// A host build (`cargo clippy -p tollgate-ebpf` in CI) is an ordinary binary
// with an empty `main`: it only exists so the code is linted on the host too.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The BPF target has no atomic types in `core`; the intrinsic lowers to the
// BPF atomic add instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go to the helpers by reference: a by-value key \
              (`impl Borrow<K>`) is copied to a second stack slot when it is used \
              again, and some programs' stacks are nearly full"
)]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic add on map values")
)]

#[cfg(feature = "bench")]
mod bench;
mod hook;
mod limit;
mod maps;
mod parse;
mod proxy;
mod sample;
mod sockops;
mod stream;
mod tls;

use aya_ebpf::{
    bindings::{
        tcx_action_base::{TCX_DROP, TCX_NEXT},
        xdp_action,
    },
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use tollgate_common::{
    BlockEntry, DIR_REQUEST, DIR_RESPONSE, Mode, Reason, Verdict, config_flags, counter_index,
    jump, prefilter,
};

use crate::{
    hook::Hook,
    maps::{
        TG_ALLOW4, TG_ALLOW6, TG_BLOCK4, TG_BLOCK4_LPM, TG_BLOCK6, TG_BLOCK6_LPM, TG_CONFIG,
        TG_COUNTERS, TG_PRE4, TG_PRE6,
    },
    parse::{Cursor, Source},
};

/// What happens to a packet after the shared decision.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing more.
    Done,
    /// A passing packet the sampler's cheap decision selected: the sampler.
    Sample,
    /// TCP from a trusted proxy: the proxy program judges it by the client
    /// it carries (and counts it).
    Proxy,
}

#[xdp]
pub fn tollgate_xdp(ctx: XdpContext) -> u32 {
    if ingress(&ctx) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Tail-called by `tollgate_xdp` for TCP from trusted proxies.
#[xdp]
pub fn tollgate_xdp_proxy(ctx: XdpContext) -> u32 {
    if proxied(&ctx) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Tail-called by `tollgate_xdp` for passing TCP payload packets when API
/// sampling is on.
#[xdp]
pub fn tollgate_xdp_sample(ctx: XdpContext) -> u32 {
    sample_request(&ctx);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn tollgate_tc(ctx: TcContext) -> i32 {
    if ingress(&ctx) { TCX_DROP } else { TCX_NEXT }
}

/// Tail-called by `tollgate_tc`: `tollgate_xdp_proxy` at the TC hook.
#[classifier]
pub fn tollgate_tc_proxy(ctx: TcContext) -> i32 {
    if proxied(&ctx) { TCX_DROP } else { TCX_NEXT }
}

/// Tail-called by `tollgate_tc`: `tollgate_xdp_sample` at the TC hook.
#[classifier]
pub fn tollgate_tc_sample(ctx: TcContext) -> i32 {
    sample_request(&ctx);
    TCX_NEXT
}

/// The ingress decision, then the tail call it asks for. True: drop.
#[inline(always)]
fn ingress<C: Hook>(ctx: &C) -> bool {
    let (start, end) = ctx.bounds();
    let len = ctx.wire_len() as u64;
    match decide(start, end, len) {
        (Verdict::Drop, _) => true,
        (_, Next::Proxy) => {
            // SAFETY: the slot holds a program of this hook's type or nothing.
            unsafe { C::jumps().tail_call(ctx, jump::PROXY) };
            // No proxy program (no agent): the proxy is passed, as before.
            count(Verdict::Pass, Reason::Clean, len);
            false
        }
        (_, Next::Sample) => {
            // Sampling runs as its own program (its own stack and verifier
            // budget). If the jump fails (no sampler loaded), just pass.
            // SAFETY: as above.
            unsafe { C::jumps().tail_call(ctx, jump::SAMPLE) };
            false
        }
        (_, Next::Done) => false,
    }
}

/// TCP from a trusted proxy: judged by the real client of its connection,
/// counted, and sampled. True: drop.
#[inline(always)]
fn proxied<C: Hook>(ctx: &C) -> bool {
    let (start, end) = ctx.bounds();
    let len = ctx.wire_len() as u64;
    let Some(config) = TG_CONFIG.get(0) else {
        count(Verdict::Pass, Reason::Error, len);
        return false;
    };
    let Ok(pkt) = parse::parse(&Cursor::new(start, end)) else {
        count(Verdict::Pass, Reason::Error, len);
        return false;
    };
    let (verdict, reason) = proxy::judge(ctx, &pkt, config, len);
    count(verdict, reason, len);
    if verdict == Verdict::Drop {
        return true;
    }
    if config.flags & config_flags::SAMPLING != 0 && sample::wanted(&pkt, DIR_REQUEST) {
        // SAFETY: the slot holds a program of this hook's type or nothing.
        unsafe { C::jumps().tail_call(ctx, jump::SAMPLE) };
    }
    false
}

/// Samples a request packet to an API port that the caller's
/// [`sample::wanted`] selected. Always passes.
#[inline(always)]
fn sample_request<C: Hook>(ctx: &C) {
    let (start, end) = ctx.bounds();
    if let Ok(pkt) = parse::parse(&Cursor::new(start, end)) {
        sample::take(ctx, &pkt, DIR_REQUEST);
    }
}

/// Egress: samples API responses (never drops anything).
#[classifier]
pub fn tollgate_tc_egress(ctx: TcContext) -> i32 {
    let Some(config) = TG_CONFIG.get(0) else {
        return TCX_NEXT;
    };
    if config.flags & config_flags::SAMPLING == 0 {
        return TCX_NEXT;
    }
    let (start, end) = ctx.bounds();
    if let Ok(pkt) = parse::parse(&Cursor::new(start, end)) {
        sample::note_ack(&pkt);
        if sample::wanted(&pkt, DIR_RESPONSE) {
            sample::take(&ctx, &pkt, DIR_RESPONSE);
        }
    }
    TCX_NEXT
}

/// Decides, counts, and returns the verdict for the packet in `[start, end)`
/// (`len` bytes in all) and what comes next (the proxy program, when it is
/// tail-called, counts the packet itself).
#[inline(always)]
fn decide(start: usize, end: usize, len: u64) -> (Verdict, Next) {
    let mut next = Next::Done;
    // The agent's configuration is read in place: copying it took 32 bytes
    // of a stack that was nearly full and made the compiler spill more
    // (this program's frame went from 496 to 376 bytes). The agent rewrites
    // it whole, rarely; a packet that reads fields of two versions is judged
    // by settings that were each in force. Index 0 of a one-entry array is
    // always there; were it not, the packet would pass.
    let Some(config) = TG_CONFIG.get(0) else {
        count(Verdict::Pass, Reason::Error, len);
        return (Verdict::Pass, Next::Done);
    };
    let (verdict, reason) = match parse::parse(&Cursor::new(start, end)) {
        Err(reason) => (Verdict::Pass, reason),
        Ok(pkt) => {
            let matched = match pkt.src {
                Source::V4(addr) => lookup_v4(&addr, config.flags),
                Source::V6(addr) => lookup_v6(&addr, config.flags),
            };
            // A trusted proxy is not one client: it is not limited as one,
            // and its connections are judged by the clients they carry.
            let proxy = config.flags & config_flags::TRUSTED != 0
                && matches!(matched, Match::None | Match::Expired)
                && proxy::trusted(&pkt.src);
            if proxy && pkt.l4.proto == parse::IPPROTO_TCP {
                return (Verdict::Pass, Next::Proxy);
            }
            let judged = match matched {
                Match::None | Match::Expired
                    if !proxy
                        && config.flags & config_flags::LIMITS != 0
                        && let Some(cfg) = limit::limits_for(&pkt.l4)
                        && !allowlisted(&pkt.src, config.flags) =>
                {
                    match limit::check(&pkt.src, &config.v6_limit_mask, &pkt.l4, cfg, len) {
                        Reason::Clean if matches!(matched, Match::Expired) => {
                            (Verdict::Pass, Reason::Expired)
                        }
                        Reason::Clean => (Verdict::Pass, pkt.l4_status),
                        r if config.mode == Mode::Monitor as u32 => (Verdict::Monitor, r),
                        r => (Verdict::Drop, r),
                    }
                }
                Match::None => (Verdict::Pass, pkt.l4_status),
                Match::Expired => (Verdict::Pass, Reason::Expired),
                Match::Allowlisted => (Verdict::Pass, Reason::Allowlisted),
                Match::Banned(entry) => {
                    bump(entry);
                    if config.mode == Mode::Monitor as u32 {
                        (Verdict::Monitor, Reason::Blocklisted)
                    } else {
                        (Verdict::Drop, Reason::Blocklisted)
                    }
                }
            };
            // The sampler's cheap decision comes before any tail call (and
            // before the sampler's flow lookups).
            if judged.0 != Verdict::Drop
                && config.flags & config_flags::SAMPLING != 0
                && sample::wanted(&pkt, DIR_REQUEST)
            {
                next = Next::Sample;
            }
            judged
        }
    };
    count(verdict, reason, len);
    (verdict, next)
}

enum Match {
    None,
    Expired,
    Allowlisted,
    Banned(*mut BlockEntry),
}

#[inline(always)]
fn lookup_v4(addr: &[u8; 4], flags: u32) -> Match {
    let bucket = prefilter::bucket_v4(u32::from_be_bytes(*addr));
    if !prefilter_hit(&TG_PRE4, bucket) {
        return Match::None;
    }
    let mut now = 0;
    let mut expired = false;
    if let Some(e) = TG_BLOCK4.get_ptr_mut(addr) {
        if live(e, &mut now) {
            return allow_or_ban_v4(addr, e, flags);
        }
        expired = true;
    }
    if flags & config_flags::V4_RANGES != 0
        && let Some(e) = TG_BLOCK4_LPM.get(Key::new(32, *addr))
    {
        let e = e as *const BlockEntry as *mut BlockEntry;
        if live(e, &mut now) {
            return allow_or_ban_v4(addr, e, flags);
        }
        expired = true;
    }
    if expired { Match::Expired } else { Match::None }
}

#[inline(always)]
fn lookup_v6(addr: &[u8; 16], flags: u32) -> Match {
    if flags & config_flags::V6_SHORT_RANGES == 0
        && !prefilter_hit(&TG_PRE6, prefilter::bucket_v6(addr))
    {
        return Match::None;
    }
    let mut now = 0;
    let mut expired = false;
    if let Some(e) = TG_BLOCK6.get_ptr_mut(addr) {
        if live(e, &mut now) {
            return allow_or_ban_v6(addr, e, flags);
        }
        expired = true;
    }
    if flags & config_flags::V6_RANGES != 0
        && let Some(e) = TG_BLOCK6_LPM.get(Key::new(128, *addr))
    {
        let e = e as *const BlockEntry as *mut BlockEntry;
        if live(e, &mut now) {
            return allow_or_ban_v6(addr, e, flags);
        }
        expired = true;
    }
    if expired { Match::Expired } else { Match::None }
}

/// A missing bitmap word reads as "maybe banned": the maps decide.
#[inline(always)]
fn prefilter_hit(bitmap: &aya_ebpf::maps::Array<u64>, bucket: u32) -> bool {
    let (word, mask) = prefilter::word_and_mask(bucket);
    bitmap.get(word).is_none_or(|w| w & mask != 0)
}

/// Whether a ban is still in force; reads the clock at most once per packet.
#[inline(always)]
fn live(entry: *mut BlockEntry, now: &mut u64) -> bool {
    // SAFETY: `entry` points at a value inside a map, valid for this program run.
    let expires = unsafe { (*entry).expires_ns };
    if expires == 0 {
        return true;
    }
    if *now == 0 {
        // SAFETY: helper without arguments.
        *now = unsafe { bpf_ktime_get_boot_ns() };
    }
    *now < expires
}

#[inline(always)]
fn allow_or_ban_v4(addr: &[u8; 4], entry: *mut BlockEntry, flags: u32) -> Match {
    if flags & config_flags::V4_ALLOW == 0 {
        return Match::Banned(entry);
    }
    match TG_ALLOW4.get(Key::new(32, *addr)) {
        Some(a) => {
            atomic_inc(&a.hits as *const u64 as *mut u64);
            Match::Allowlisted
        }
        None => Match::Banned(entry),
    }
}

#[inline(always)]
fn allow_or_ban_v6(addr: &[u8; 16], entry: *mut BlockEntry, flags: u32) -> Match {
    if flags & config_flags::V6_ALLOW == 0 {
        return Match::Banned(entry);
    }
    match TG_ALLOW6.get(Key::new(128, *addr)) {
        Some(a) => {
            atomic_inc(&a.hits as *const u64 as *mut u64);
            Match::Allowlisted
        }
        None => Match::Banned(entry),
    }
}

/// Whether the source is on the allowlist (only consulted when the family's
/// allowlist is non-empty).
#[inline(always)]
fn allowlisted(src: &Source, flags: u32) -> bool {
    match src {
        Source::V4(a) => {
            flags & config_flags::V4_ALLOW != 0 && TG_ALLOW4.get(Key::new(32, *a)).is_some()
        }
        Source::V6(a) => {
            flags & config_flags::V6_ALLOW != 0 && TG_ALLOW6.get(Key::new(128, *a)).is_some()
        }
    }
}

#[inline(always)]
fn bump(entry: *mut BlockEntry) {
    // SAFETY: map value pointer, valid for this run; the field is 8-aligned.
    atomic_inc(unsafe { &raw mut (*entry).hits });
}

/// Map values are shared between CPUs: count with an atomic add.
#[inline(always)]
fn atomic_inc(p: *mut u64) {
    atomic_add(p, 1);
}

/// Atomic add on a u64 in a map value (the BPF `lock xadd` instruction; the
/// result is not fetched, which keeps it within the baseline BPF ISA).
#[inline(always)]
pub(crate) fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points at an aligned u64 inside a map value.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    let _ = (p, v);
}

#[inline(always)]
fn count(verdict: Verdict, reason: Reason, bytes: u64) {
    if let Some(c) = TG_COUNTERS.get_ptr_mut(counter_index(verdict, reason)) {
        // SAFETY: per-CPU slot: no other writer while this program runs here.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
