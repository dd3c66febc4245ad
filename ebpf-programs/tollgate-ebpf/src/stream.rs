//! Request streams taken where the server takes them: a stream verdict
//! program on the sockets of API connections (sock_ops puts each passively
//! established one in `TG_SOCKS`) copies what the socket receives into the
//! sample ring buffer and always passes it.
//!
//! These bytes come after the kernel validated, ordered and reassembled the
//! segments: no spoofed segment, overlap, bad checksum, urgent byte or
//! fragment trick reaches here, every request of a keep-alive connection
//! does, and each record is verified by construction. Records carry the
//! stream offset as their sequence number, so a lost record shows as a gap.

use aya_ebpf::{
    bindings::{__sk_buff, sk_action},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_loop, bpf_skb_load_bytes},
    macros::stream_verdict,
    programs::SkBuffContext,
};
use tollgate_common::{
    DIR_REQUEST, FlowKey, SAMPLE_BYTES, SampleHeader, sample_source, sample_stat,
};

use crate::{
    maps::{TG_SAMPLES, TG_SMPL_STATS, TG_SSCRATCH, TG_STREAM_OFF, TG_STREAM_SKIP},
    parse::{AF_INET, Source, ctx_ip6},
};

/// Chunks copied from one socket buffer: GRO hands over up to 64 KiB at
/// once, and pipelined heads may sit anywhere in it (a body the agent passes
/// over is not copied and does not count). Beyond this, a gap.
const MAX_CHUNKS: u32 = 64;
const HEADER_BYTES: usize = core::mem::size_of::<SampleHeader>();

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = TG_SMPL_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[stream_verdict]
pub fn tollgate_stream(ctx: SkBuffContext) -> u32 {
    capture(&ctx);
    sk_action::SK_PASS
}

#[inline(always)]
fn capture(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    // SAFETY: reading context fields of the program's own skb.
    let (family, len, rport, lport) = unsafe {
        (
            (*skb).family,
            (*skb).len,
            (*skb).remote_port,
            (*skb).local_port,
        )
    };
    if len == 0 {
        return;
    }
    let (client, server) = if family == AF_INET {
        // SAFETY: as above.
        let (r, l) = unsafe { ((*skb).remote_ip4, (*skb).local_ip4) };
        (
            Source::V4(r.to_ne_bytes()).mapped(),
            Source::V4(l.to_ne_bytes()).mapped(),
        )
    } else {
        // SAFETY: as above.
        unsafe {
            (
                ctx_ip6(&raw const (*skb).remote_ip6),
                ctx_ip6(&raw const (*skb).local_ip6),
            )
        }
    };
    let key = FlowKey {
        client,
        server,
        client_port: u32::from_be(rport) as u16,
        server_port: lport as u16,
    };
    let base = match TG_STREAM_OFF.get_ptr_mut(&key) {
        // SAFETY: map value pointer; one socket's data is processed in order.
        Some(off) => unsafe {
            let b = *off;
            *off = b + u64::from(len);
            b
        },
        None => {
            let _ = TG_STREAM_OFF.insert(&key, &u64::from(len), 0);
            0
        }
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the program's own skb.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    // The agent passes over the rest of a long body by its framing: the
    // bytes it named (up to a stream offset, mod 2^32) are not copied. The
    // agent only names bytes of a body it has judged the start of, and the
    // cookie is this socket's alone, so no other connection is affected.
    let mut done: u32 = 0;
    // SAFETY: the value is copied out at once.
    if let Some(until) = unsafe { TG_STREAM_SKIP.get(&cookie) } {
        let ahead = until.wrapping_sub(base as u32) as i32;
        if ahead > 0 {
            done = if (ahead as u32) < len {
                ahead as u32
            } else {
                len
            };
        }
    }
    // Records are written at their real size (a 100-byte request takes 172
    // bytes of ring, not 1,096), from per-CPU scratch: the header once here,
    // each chunk's offset and bytes in the loop.
    let Some(rec) = TG_SSCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `rec` points at this CPU's scratch record.
    unsafe {
        let h = &raw mut (*rec).header;
        (*h).ts_ns = now;
        (*h).flow = key;
        (*h).direction = DIR_REQUEST;
        (*h).tcp_flags = 0;
        (*h).family = if family == AF_INET { 4 } else { 6 };
        (*h).source = sample_source::STREAM;
        (*h).ifindex = 0;
        (*h).cookie = cookie;
    }
    let mut c = Chunks {
        skb,
        base,
        len,
        done,
        stop: 0,
    };
    // One callback verified once, run up to MAX_CHUNKS times (an unrolled
    // loop of that many copies exceeds the verifier's budget).
    // SAFETY: callback and context as the helper expects them.
    unsafe {
        bpf_loop(
            MAX_CHUNKS,
            copy_chunk as *mut core::ffi::c_void,
            (&raw mut c).cast(),
            0,
        )
    };
    if c.stop == 0 && c.done < c.len {
        stat(sample_stat::LOST);
    }
}

/// The state of one socket buffer's copy, shared with [`copy_chunk`].
#[repr(C)]
struct Chunks {
    skb: *mut __sk_buff,
    /// Stream offset of the buffer's first byte.
    base: u64,
    len: u32,
    /// Bytes handled (copied or passed over).
    done: u32,
    /// Set when a copy failed (counted already).
    stop: u32,
}

/// Copies the next chunk of at most [`SAMPLE_BYTES`] into the ring; 1 ends
/// the loop.
#[inline(never)]
extern "C" fn copy_chunk(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let c = ctx.cast::<Chunks>();
    let Some(rec) = TG_SSCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: `ctx` is the caller's `Chunks`; `rec` this CPU's scratch record.
    unsafe {
        let (len, done) = ((*c).len, (*c).done);
        if done >= len {
            return 1;
        }
        let rest = len - done;
        let n = if rest < SAMPLE_BYTES as u32 {
            rest
        } else {
            SAMPLE_BYTES as u32
        };
        let h = &raw mut (*rec).header;
        (*h).seq = ((*c).base + u64::from(done)) as u32;
        (*h).payload_len = n;
        (*h).captured = n;
        // Keep the copy length's range (1..=1024) visible to the verifier.
        let n = (n.wrapping_sub(1) & 0x3ff) + 1;
        let data = (&raw mut (*rec).data).cast::<u8>();
        if bpf_skb_load_bytes((*c).skb.cast(), done, data.cast(), n) != 0 {
            stat(sample_stat::LOST);
            (*c).stop = 1;
            return 1;
        }
        let total = HEADER_BYTES + n as usize;
        // `rec` holds HEADER_BYTES + SAMPLE_BYTES bytes; `total` is at most that.
        let bytes = core::slice::from_raw_parts(rec.cast::<u8>(), total);
        if TG_SAMPLES.output::<[u8]>(bytes, 0).is_err() {
            // Ring full: the agent sees a gap in the offsets.
            stat(sample_stat::LOST);
            (*c).stop = 1;
            return 1;
        }
        stat(sample_stat::TAKEN);
        (*c).done = done + n;
    }
    0
}
