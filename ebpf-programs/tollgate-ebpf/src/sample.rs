//! Sampling of API payloads into a ring buffer for the agent: the first K
//! payload packets of every flow whose handshake the datapath saw (so each
//! connection's request line and headers are seen), then one in N. The
//! decision ([`wanted`]) is inline, a few array lookups and a per-CPU
//! countdown, made before any flow lookup or tail call (a packet to another
//! port pays one lookup); only a selected packet pays for the rest
//! ([`take`]). A full ring buffer loses the sample and counts it; the
//! datapath never waits.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_boot_ns};
use tollgate_common::{
    DIR_REQUEST, FlowKey, SAMPLE_BYTES, SampleRecord, YoungFlow, sample_stat, young_index,
    young_slot,
};

use crate::{
    hook::Hook,
    maps::{
        TG_API_PORTS, TG_CONFIG, TG_ESTAB, TG_FLOWS, TG_SAMPLES, TG_SAMPLING, TG_SMPL_GAP,
        TG_SMPL_STATS, TG_YOUNG,
    },
    parse::{IPPROTO_TCP, Packet, Source, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = TG_SMPL_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// Egress, server to client on an API port: records how far the server has
/// acknowledged the client's bytes on a connection the kernel established.
/// The agent bans on a request only if its bytes lie below this mark, i.e.
/// the server's TCP stack accepted them (a blind spoofer cannot know it).
#[inline(always)]
pub fn note_ack(pkt: &Packet) {
    let l4 = &pkt.l4;
    if l4.proto != IPPROTO_TCP || l4.tcp_flags & TCP_ACK == 0 {
        return;
    }
    match TG_API_PORTS.get(u32::from(l4.sport)) {
        Some(v) if *v != 0 => {}
        _ => return,
    }
    let key = FlowKey {
        client: pkt.dst.mapped(),
        server: pkt.src.mapped(),
        client_port: l4.dport,
        server_port: l4.sport,
    };
    if let Some(est) = TG_ESTAB.get_ptr_mut(&key) {
        // SAFETY: map value pointer; a racing writer on another CPU only
        // leaves an older (smaller) mark, which verifies less, never more.
        unsafe {
            if (l4.ack.wrapping_sub((*est).acked) as i32) > 0 {
                (*est).acked = l4.ack;
                (*est).acked_ns = bpf_ktime_get_boot_ns();
            }
        }
    }
}

/// An address folded to 32 bits for [`young_slot`].
#[inline(always)]
fn fold(a: &Source) -> u32 {
    match a {
        Source::V4(v) => u32::from_ne_bytes(*v),
        Source::V6(v) => {
            u32::from_ne_bytes([v[0], v[1], v[2], v[3]])
                ^ u32::from_ne_bytes([v[4], v[5], v[6], v[7]])
                ^ u32::from_ne_bytes([v[8], v[9], v[10], v[11]])
                ^ u32::from_ne_bytes([v[12], v[13], v[14], v[15]])
        }
    }
}

/// What [`candidate`] found out about a packet, all that [`select`] needs,
/// in one register: the kind (`KIND_*`) above the flow's `TG_YOUNG` tag.
type Candidate = u64;

/// Not an API packet worth sampling.
const NO_CANDIDATE: Candidate = 0;
/// A client's SYN to an API port: its flow becomes young.
const KIND_SYN: u64 = 1;
/// A payload packet to or from an API port.
const KIND_PAYLOAD: u64 = 2;
/// A payload packet that ends its flow: always taken (the sampler forgets
/// the flow).
const KIND_END: u64 = 3;

/// The first half of the sampling decision, without writes, for a packet
/// to (request) or from (response) an API port: payload, or a client's SYN. A
/// function of its own, inlined: since the ingress program reads its config
/// in place its stack has room, and a BPF subprogram call cost every packet
/// more than the work itself (7-8 ns a call where the kernel guards returns
/// against speculation; `tollgate-bench sampling`).
#[inline(always)]
fn candidate(pkt: &Packet, direction: u8) -> Candidate {
    let l4 = &pkt.l4;
    if l4.proto != IPPROTO_TCP {
        return NO_CANDIDATE;
    }
    let request = direction == DIR_REQUEST;
    // `payload_off` is where the TCP header ends; the IP length says
    // whether anything follows.
    let kind = if pkt.l3_end > l4.payload_off {
        if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            KIND_END
        } else {
            KIND_PAYLOAD
        }
    } else if request && l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        KIND_SYN
    } else {
        return NO_CANDIDATE;
    };
    let (api_port, client_port) = if request {
        (l4.dport, l4.sport)
    } else {
        (l4.sport, l4.dport)
    };
    // The port is an API port: [`wanted`] asked [`api_port`] first.
    let (client, server) = if request {
        (&pkt.src, &pkt.dst)
    } else {
        (&pkt.dst, &pkt.src)
    };
    let (_, tag) = young_slot(fold(client), fold(server), client_port, api_port);
    (kind << 32) | u64::from(tag)
}

/// The second half, made before any flow lookup or tail call so that other
/// packets pay almost nothing: a young flow's first packets, else this
/// CPU's one in N. True: [`take`] the packet. Inlined, as [`candidate`].
#[inline(always)]
fn select(c: Candidate, direction: u8) -> bool {
    let kind = c >> 32;
    if kind == 0 {
        return false;
    }
    let tag = c as u32;
    let slot = young_index(tag);
    let Some(cfg) = TG_SAMPLING.get(0) else {
        return false;
    };
    if cfg.max_bytes == 0 {
        return false;
    }
    if kind == KIND_SYN {
        if cfg.first_packets != 0
            && let Some(y) = TG_YOUNG.get_ptr_mut(slot)
        {
            let n = if cfg.first_packets > 0xffff {
                0xffff
            } else {
                cfg.first_packets as u16
            };
            // SAFETY: array slot; a racing handshake hashed to the same slot
            // only takes it over, as a later one would.
            unsafe { *y = YoungFlow { tag, left: [n, n] } };
        }
        return false;
    }
    if kind == KIND_END {
        return true;
    }
    if let Some(y) = TG_YOUNG.get_ptr_mut(slot) {
        let i = usize::from(direction & 1);
        // SAFETY: array slot; a flow's packets normally stay on one CPU, and
        // a lost decrement only takes one more packet.
        unsafe {
            if (*y).tag == tag && (*y).left[i] != 0 {
                (*y).left[i] -= 1;
                return true;
            }
        }
    }
    if cfg.one_in <= 1 {
        return true;
    }
    let Some(gap) = TG_SMPL_GAP.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot: no other writer while this program runs here.
    unsafe {
        if *gap > 1 {
            *gap -= 1;
            stat(sample_stat::SKIPPED);
            return false;
        }
        // The next gap is drawn uniformly from 1..=2N-1 (mean N), so a
        // client cannot time its requests around a fixed period.
        let span = if cfg.one_in > 1 << 30 {
            (1 << 31) - 1
        } else {
            2 * cfg.one_in - 1
        };
        *gap = 1 + bpf_get_prandom_u32() % span;
    }
    true
}

/// Whether `pkt` is TCP to (request) or from (response) an API port: the
/// test every packet pays first, so that other packets pay one array
/// lookup and nothing else.
#[inline(always)]
pub fn api_port(pkt: &Packet, direction: u8) -> bool {
    let port = if direction == DIR_REQUEST {
        pkt.l4.dport
    } else {
        pkt.l4.sport
    };
    pkt.l4.proto == IPPROTO_TCP && TG_API_PORTS.get(u32::from(port)).is_some_and(|v| *v != 0)
}

/// [`api_port`], then [`candidate`] and [`select`].
#[inline(always)]
pub fn wanted(pkt: &Packet, direction: u8) -> bool {
    api_port(pkt, direction) && select(candidate(pkt, direction), direction)
}

/// Samples `pkt` (the packet of `ctx`), which [`wanted`] selected, unless
/// its request is taken at the socket or its connection was never
/// established.
#[inline(always)]
pub fn take<C: Hook>(ctx: &C, pkt: &Packet, direction: u8) {
    let frame_len = ctx.wire_len();
    let l4 = &pkt.l4;
    if l4.proto != IPPROTO_TCP || l4.payload_off == 0 {
        return;
    }
    let end = if pkt.l3_end < frame_len {
        pkt.l3_end
    } else {
        frame_len
    };
    if end <= l4.payload_off {
        return;
    }
    let payload_len = end - l4.payload_off;
    let Some(cfg) = TG_SAMPLING.get(0) else {
        return;
    };
    if cfg.max_bytes == 0 {
        return;
    }
    let (client, server, client_port, server_port) = if direction == DIR_REQUEST {
        (pkt.src.mapped(), pkt.dst.mapped(), l4.sport, l4.dport)
    } else {
        (pkt.dst.mapped(), pkt.src.mapped(), l4.dport, l4.sport)
    };
    let key = FlowKey {
        client,
        server,
        client_port,
        server_port,
    };
    if direction == DIR_REQUEST
        && TG_CONFIG
            .get(0)
            .is_some_and(|c| c.flags & tollgate_common::config_flags::STREAM != 0)
    {
        // Only sock_ops marks flows (streamed ones), and only in this mode.
        let streamed = TG_FLOWS.get_ptr(&key).is_some_and(|st| {
            // SAFETY: map value pointer, valid for this program run.
            (unsafe { (*st).packets } & tollgate_common::FLOW_STREAMED) != 0
        });
        if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            let _ = TG_FLOWS.remove(&key);
        }
        if streamed {
            // Its requests come whole from the socket (stream verdict).
            return;
        }
        if TG_ESTAB.get_ptr(&key).is_none() {
            // A request packet of a connection the kernel never established
            // (spoofed, or older than the agent) could never ban, and in a
            // flood it would crowd real requests out of the ring buffer.
            stat(sample_stat::SKIPPED);
            return;
        }
    }
    let Some(mut entry) = TG_SAMPLES.reserve::<SampleRecord>(0) else {
        stat(sample_stat::LOST);
        return;
    };
    let rec = entry.as_mut_ptr();
    let max = if (cfg.max_bytes as usize) < SAMPLE_BYTES {
        cfg.max_bytes as usize
    } else {
        SAMPLE_BYTES
    };
    let mut len = if payload_len < max { payload_len } else { max };
    // Keep the verifier's bound on the copy length explicit.
    len &= 0x7ff;
    if len > SAMPLE_BYTES {
        len = SAMPLE_BYTES;
    }
    // SAFETY: `rec` points at the reserved, writable record.
    unsafe {
        let h = &raw mut (*rec).header;
        (*h).ts_ns = bpf_ktime_get_boot_ns();
        (*h).flow = key;
        (*h).direction = direction;
        (*h).tcp_flags = l4.tcp_flags;
        (*h).family = if matches!(pkt.src, Source::V4(_)) {
            4
        } else {
            6
        };
        (*h).source = tollgate_common::sample_source::WIRE;
        (*h).seq = l4.seq;
        (*h).ifindex = ctx.ifindex();
        (*h).payload_len = payload_len as u32;
        (*h).captured = len as u32;
        (*h).cookie = 0;
    }
    // SAFETY: as above; `len` is within the data array.
    let data = unsafe { (&raw mut (*rec).data).cast::<u8>() };
    // 1..=1024 in a form that keeps the range visible to the verifier (a
    // plain check gets optimised away).
    let n = ((len as u32).wrapping_sub(1) & 0x3ff) + 1;
    if len == 0 || !ctx.load(l4.payload_off, data, n) {
        entry.discard(0);
        stat(sample_stat::LOST);
        return;
    }
    entry.submit(0);
    stat(sample_stat::TAKEN);
}
