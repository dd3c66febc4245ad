//! Programs used only by `cargo xtask bench`, compiled in only with the
//! `bench` feature (the agent's object does not carry them): the XDP_PASS
//! floor, a counting pass for in-stack comparisons, and a packet generator
//! that rewrites the IPv4 source for BPF_PROG_TEST_RUN live frames.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use tollgate_common::{BlockEntry, programs::BENCH_LOOKUP_ENTRIES};

use crate::parse::{ETH_HLEN, ipv4};

/// Where the generator rewrites the source: an untagged IPv4 frame.
const SRC_OFF: usize = ETH_HLEN + ipv4::SRC;

/// Generator settings: `[base (host order), mask, 0, 0]`.
#[map]
static TG_BENCH_GEN: Array<[u32; 4]> = Array::with_max_entries(1, 0);

/// Packets seen by `bench_count`.
#[map]
static TG_BENCH_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The bare one-lookup baseline's map: the shape of `TG_BLOCK4` (key,
/// value, flags) at the capacity the benchmark gives `TG_BLOCK4`.
#[map]
static TG_BENCH_LOOK4: HashMap<[u8; 4], BlockEntry> =
    HashMap::with_max_entries(BENCH_LOOKUP_ENTRIES, BPF_F_NO_PREALLOC);

/// The floor: the cheapest possible XDP program.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts and passes (so veth delivers frames to the stack for nftables).
#[xdp]
pub fn bench_count(_ctx: XdpContext) -> u32 {
    if let Some(c) = TG_BENCH_CNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_PASS
}

/// Counts and drops: the cheapest possible drop, the wire benchmark's floor.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    if let Some(c) = TG_BENCH_CNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// The least a hash-based deny list can do: one lookup of the IPv4 source
/// in `TG_BENCH_LOOK4`, drop on a hit; counts like `bench_drop`. Assumes an
/// untagged IPv4 frame (the generator's).
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN + ipv4::HLEN > end {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = TG_BENCH_CNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { core::ptr::read_unaligned((start + 12) as *const [u8; 2]) };
    if ethertype != [0x08, 0x00] {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: as above.
    let src = unsafe { core::ptr::read_unaligned((start + SRC_OFF) as *const [u8; 4]) };
    if TG_BENCH_LOOK4.get_ptr(&src).is_some() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// `bench_rand`'s target, in slot 0: the program under measurement.
#[map]
static TG_BENCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Gives the frame a random IPv4 source in `base/mask` (as `bench_gen`),
/// then tail-calls the program under measurement: BPF_PROG_TEST_RUN of this
/// one times that program on random sources (a repeated frame otherwise
/// keeps its map entries in cache).
#[xdp]
pub fn bench_rand(ctx: XdpContext) -> u32 {
    if !random_source(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: slot 0 holds an XDP program or nothing.
    unsafe { TG_BENCH_JUMP.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Rewrites the IPv4 source to a random address in `base/mask` and transmits.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    if random_source(&ctx) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// Rewrites an untagged IPv4 frame's source to `base | (random & mask)`
/// (`TG_BENCH_GEN`). False: too short, or no settings.
#[inline(always)]
fn random_source(ctx: &XdpContext) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN + ipv4::HLEN > end {
        return false;
    }
    let Some(cfg) = TG_BENCH_GEN.get(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    let src = cfg[0] | (r & cfg[1]);
    // SAFETY: bounds checked above.
    unsafe { core::ptr::write_unaligned((start + SRC_OFF) as *mut [u8; 4], src.to_be_bytes()) };
    true
}
