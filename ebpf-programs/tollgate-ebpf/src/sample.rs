//! Sampling of API payloads into a ring buffer for the agent: the first K
//! payload packets of every flow (so each connection's request line and
//! headers are seen), then one in N. A full ring buffer loses the sample
//! and counts it; the datapath never waits.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_boot_ns};
use tollgate_common::{FlowKey, FlowState, SAMPLE_BYTES, SampleRecord, sample_stat};

use crate::{
    hook::Hook,
    maps::{TG_API_PORTS, TG_CONFIG, TG_ESTAB, TG_FLOWS, TG_SAMPLES, TG_SAMPLING, TG_SMPL_STATS},
    parse::{IPPROTO_TCP, Packet, Source, TCP_ACK, TCP_FIN, TCP_RST},
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

/// Samples `pkt` (the packet of `ctx`) if it carries API payload and the
/// policy selects it.
#[inline(always)]
pub fn maybe_sample<C: Hook>(ctx: &C, pkt: &Packet, direction: u8) {
    let frame_len = ctx.wire_len();
    let l4 = &pkt.l4;
    if l4.proto != IPPROTO_TCP || l4.payload_off == 0 {
        return;
    }
    let api_port = if direction == tollgate_common::DIR_REQUEST {
        l4.dport
    } else {
        l4.sport
    };
    match TG_API_PORTS.get(u32::from(api_port)) {
        Some(v) if *v != 0 => {}
        _ => return,
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
    let (client, server, client_port, server_port) = if direction == tollgate_common::DIR_REQUEST {
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
    let marked = match TG_FLOWS.get_ptr_mut(&key) {
        Some(st) => {
            // SAFETY: map value pointer; a flow's packets normally stay on
            // one CPU, and a lost increment only shifts the policy by one.
            let n = unsafe { (*st).packets };
            unsafe { (*st).packets = n + 1 };
            n
        }
        None => {
            let _ = TG_FLOWS.insert(&key, &FlowState { packets: 1 }, 0);
            0
        }
    };
    if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        let _ = TG_FLOWS.remove(&key);
    }
    if marked & tollgate_common::FLOW_STREAMED != 0 && direction == tollgate_common::DIR_REQUEST {
        // Its requests come whole from the socket (stream verdict).
        return;
    }
    if direction == tollgate_common::DIR_REQUEST
        && TG_CONFIG
            .get(0)
            .is_some_and(|c| c.flags & tollgate_common::config_flags::STREAM != 0)
        && TG_ESTAB.get_ptr(&key).is_none()
    {
        // Requests are taken at the socket; a request packet of a connection
        // the kernel never established (spoofed, or older than the agent)
        // could never ban, and in a flood it would crowd real requests out
        // of the ring buffer.
        stat(sample_stat::SKIPPED);
        return;
    }
    let seen = marked & !tollgate_common::FLOW_STREAMED;
    let take = seen < u64::from(cfg.first_packets)
        || cfg.one_in <= 1
        // SAFETY: helper without arguments.
        || unsafe { bpf_get_prandom_u32() } % cfg.one_in == 0;
    if !take {
        stat(sample_stat::SKIPPED);
        return;
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
