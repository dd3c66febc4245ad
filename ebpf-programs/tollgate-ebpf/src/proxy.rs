//! Connections from trusted proxies. The proxy's own address is neither
//! banned nor limited as one client; the client it carries is. The first
//! payload packet of each connection is checked for a PROXY protocol header
//! (v2 binary, TCP over IPv4 or IPv6; v1 text, TCP4): the real client is
//! remembered per connection (a bounded LRU map, entries removed on FIN/RST)
//! and every packet of the connection is judged by the real client's bans and
//! rate limits. Connections whose client only the agent can tell (from
//! `X-Forwarded-For`, or a v1 TCP6 line) are armed by the agent.
//!
//! A banned client's connection is dropped, not reset: the proxy times the
//! connection out and answers its client with an error, and no packet that
//! Tollgate forged ever reaches the server.

use aya_ebpf::{
    helpers::{bpf_loop, bpf_xdp_load_bytes},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use tollgate_common::{Config, FlowKey, ProxyFlow, Reason, Verdict, proxy_state};

use crate::{
    Match, bump, limit, lookup_v4, lookup_v6,
    maps::{TG_PBUF, TG_PFLOWS, TG_PSCRATCH, TG_TRUST4, TG_TRUST6},
    parse::{L4, Packet, Source, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The PROXY protocol v2 signature.
const V2_SIG: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// PROXY v2: offset of the version/command byte, and "version 2, PROXY".
const V2_VER_CMD: usize = 12;
const V2_PROXY: u8 = 0x21;
/// PROXY v2: offset of the family/transport byte, and its two TCP values.
const V2_FAM: usize = 13;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
/// PROXY v2: the fixed header's length (the addresses follow it), and the
/// length of the address block of each family (source, destination, ports).
const V2_HLEN: usize = 16;
const V2_ADDRS4: usize = 12;
const V2_ADDRS6: usize = 36;

/// Whether the source is a trusted proxy.
#[inline(always)]
pub fn trusted(src: &Source) -> bool {
    match src {
        Source::V4(a) => TG_TRUST4.get(Key::new(32, *a)).is_some(),
        Source::V6(a) => TG_TRUST6.get(Key::new(128, *a)).is_some(),
    }
}

/// Judges one TCP packet from a trusted proxy.
#[inline(always)]
pub fn judge(ctx: &XdpContext, pkt: &Packet, config: &Config, len: u64) -> (Verdict, Reason) {
    let l4 = &pkt.l4;
    let Some(sc) = TG_PSCRATCH.get_ptr_mut(0) else {
        return (Verdict::Pass, Reason::Error);
    };
    // SAFETY: per-CPU scratch: no other user while this program runs here.
    let sc = unsafe { &mut *sc };
    sc.key = FlowKey {
        client: pkt.src.mapped(),
        server: pkt.dst.mapped(),
        client_port: l4.sport,
        server_port: l4.dport,
    };
    if l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection on this 4-tuple: an entry left for it belongs to an
        // earlier connection whose FIN/RST was missed; its first payload
        // packet names the new client.
        let _ = TG_PFLOWS.remove(&sc.key);
        return (Verdict::Pass, Reason::Clean);
    }
    // SAFETY: the value is copied out at once.
    match unsafe { TG_PFLOWS.get(&sc.key) } {
        Some(f) => sc.flow = *f,
        None if l4.payload_off != 0 && pkt.l3_end > l4.payload_off => {
            header(
                ctx,
                l4.payload_off,
                pkt.l3_end - l4.payload_off,
                &mut sc.flow,
            );
            let _ = TG_PFLOWS.insert(&sc.key, &sc.flow, 0);
        }
        None => sc.flow.state = proxy_state::NONE,
    }
    let flow = &sc.flow;
    let out = match flow.state {
        proxy_state::BANNED => drop(config, Reason::Blocklisted),
        proxy_state::CLIENT => match real_client(&flow.real, l4, config, len) {
            r @ (Reason::Clean | Reason::Allowlisted) => (Verdict::Pass, r),
            r => drop(config, r),
        },
        _ => (Verdict::Pass, Reason::Clean),
    };
    if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        let _ = TG_PFLOWS.remove(&sc.key);
    }
    out
}

/// The real client's bans, then its rate limits. Its own BPF function (its
/// stack frame is not the caller's).
#[inline(never)]
fn real_client(real: &[u8; 16], l4: &L4, config: &Config, len: u64) -> Reason {
    let real = Source::from_mapped(real);
    let matched = match &real {
        Source::V4(a) => lookup_v4(a, config.flags),
        Source::V6(a) => lookup_v6(a, config.flags),
    };
    match matched {
        Match::Banned(e) => {
            bump(e);
            Reason::Blocklisted
        }
        Match::Allowlisted => Reason::Allowlisted,
        Match::None | Match::Expired => {
            if config.flags & tollgate_common::config_flags::LIMITS == 0 {
                return Reason::Clean;
            }
            match limit::limits_for(l4) {
                Some(cfg) => limit::check(&real, &config.v6_limit_mask, l4, cfg, len),
                None => Reason::Clean,
            }
        }
    }
}

#[inline(always)]
fn drop(config: &Config, reason: Reason) -> (Verdict, Reason) {
    if config.mode == tollgate_common::Mode::Monitor as u32 {
        (Verdict::Monitor, reason)
    } else {
        (Verdict::Drop, reason)
    }
}

/// Reads a PROXY header at the start of the payload, if there is one. Its
/// own BPF function: its buffers do not add to the caller's stack frame.
#[inline(never)]
fn header(ctx: &XdpContext, off: usize, payload_len: usize, f: &mut ProxyFlow) {
    f.real = [0; 16];
    f.state = proxy_state::NONE;
    f.reserved = 0;
    let mut b = [0u8; 16];
    if payload_len < V2_HLEN || !load(ctx, off, &mut b) {
        return;
    }
    if b[..12] == V2_SIG {
        // Version 2, command PROXY (LOCAL carries no client); TCP only.
        if b[V2_VER_CMD] != V2_PROXY {
            return;
        }
        let mut a = [0u8; 4];
        match b[V2_FAM] {
            // Exactly the source address: the header may be all the
            // segment holds.
            V2_TCP4
                if payload_len >= V2_HLEN + V2_ADDRS4
                // SAFETY: `a` is 4 writable bytes.
                && unsafe {
                    bpf_xdp_load_bytes(ctx.ctx, (off + V2_HLEN) as u32, a.as_mut_ptr().cast(), 4)
                } == 0 =>
            {
                f.real = Source::V4(a).mapped();
                f.state = proxy_state::CLIENT;
            }
            V2_TCP6
                if payload_len >= V2_HLEN + V2_ADDRS6 && load(ctx, off + V2_HLEN, &mut f.real) =>
            {
                f.state = proxy_state::CLIENT;
            }
            _ => {}
        }
        return;
    }
    if b[0].is_ascii_uppercase() && &b[..11] != b"PROXY TCP4 " && &b[..6] != b"PROXY " {
        // An HTTP request head, perhaps with the client in X-Forwarded-For.
        if let Some(a) = forwarded_for(ctx, off, payload_len) {
            f.real = Source::V4(a).mapped();
            f.state = proxy_state::CLIENT;
        }
        return;
    }
    if &b[..11] == b"PROXY TCP4 " {
        let mut t = [0u8; 16];
        if payload_len >= 11 + 8
            && load_upto(ctx, off + 11, payload_len - 11, &mut t)
            && let Some(a) = dotted_quad(&t)
        {
            f.real = Source::V4(a).mapped();
            f.state = proxy_state::CLIENT;
        }
    }
}

/// State of the `X-Forwarded-For` scan over the copied head.
#[repr(C)]
struct Scan {
    /// Bytes copied.
    n: u32,
    /// Pattern bytes matched so far.
    m: u32,
    /// Offset just past the last `X-Forwarded-For:` seen; 0 = none.
    last: u32,
    /// `\r\n\r\n` bytes matched (end of the head).
    eoh: u32,
    /// Value scan: offset of the last entry's start.
    entry: u32,
}

const XFF: &[u8; 17] = b"\nx-forwarded-for:";
const EOH: &[u8; 4] = b"\r\n\r\n";

/// One byte of the header scan (a `bpf_loop` callback: verified once, run
/// up to 1024 times).
#[inline(never)]
extern "C" fn scan_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let st = ctx.cast::<Scan>();
    let Some(buf) = TG_PBUF.get_ptr(0) else {
        return 1;
    };
    // SAFETY: `ctx` is the caller's `Scan`; `buf` a map value of 1024 bytes.
    unsafe {
        let i = (i as usize) & 1023;
        if i as u32 >= (*st).n {
            return 1;
        }
        let mut c = (*buf)[i];
        if c.is_ascii_uppercase() {
            c += 32;
        }
        let m = (*st).m as usize;
        if XFF.get(m) == Some(&c) {
            (*st).m += 1;
            if (*st).m as usize == XFF.len() {
                (*st).last = i as u32 + 1;
                (*st).m = 0;
            }
        } else {
            (*st).m = u32::from(c == b'\n');
        }
        let e = (*st).eoh as usize;
        if EOH.get(e) == Some(&c) {
            (*st).eoh += 1;
            if (*st).eoh as usize == EOH.len() {
                return 1;
            }
        } else {
            (*st).eoh = u32::from(c == b'\r');
        }
    }
    0
}

/// The value scan: from `last`, the start of the line's last entry, until
/// the end of the line.
#[inline(never)]
extern "C" fn value_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let st = ctx.cast::<Scan>();
    let Some(buf) = TG_PBUF.get_ptr(0) else {
        return 1;
    };
    // SAFETY: as in `scan_step`.
    unsafe {
        let i = ((*st).last as usize + i as usize) & 1023;
        if i as u32 >= (*st).n {
            return 1;
        }
        match (*buf)[i] {
            b'\r' | b'\n' => return 1,
            b',' => (*st).entry = i as u32 + 1,
            _ => {}
        }
    }
    0
}

/// The right-most IPv4 client in the last `X-Forwarded-For` header of the
/// request head at `off` (IPv6 entries are left to the agent).
#[inline(always)]
fn forwarded_for(ctx: &XdpContext, off: usize, payload_len: usize) -> Option<[u8; 4]> {
    let buf = TG_PBUF.get_ptr_mut(0)?;
    let n = if payload_len < 1024 {
        payload_len
    } else {
        1024
    };
    // Keeps the length's range visible to the verifier.
    let n = (n.wrapping_sub(1) & 0x3ff) + 1;
    // SAFETY: `buf` is 1024 writable bytes; `n` is in 1..=1024.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf.cast(), n as u32) } != 0 {
        return None;
    }
    let mut st = Scan {
        n: n as u32,
        m: 1, // the request line ends with the `\n` the pattern starts with
        last: 0,
        eoh: 0,
        entry: 0,
    };
    let ctxp = (&raw mut st).cast::<core::ffi::c_void>();
    // SAFETY: callbacks and context as the helper expects them.
    unsafe { bpf_loop(1024, scan_step as *mut core::ffi::c_void, ctxp, 0) };
    if st.last == 0 {
        return None;
    }
    st.entry = st.last;
    // SAFETY: as above.
    unsafe { bpf_loop(1024, value_step as *mut core::ffi::c_void, ctxp, 0) };
    let mut t = [0u8; 16];
    for (k, slot) in t.iter_mut().enumerate() {
        let i = (st.entry as usize + k) & 1023;
        if i as u32 >= st.n {
            break;
        }
        // SAFETY: `i` < 1024 within the map value.
        *slot = unsafe { (*buf)[i] };
    }
    // Optional spaces after the comma or colon.
    let skip = t.iter().take(4).take_while(|c| **c == b' ').count();
    let mut u = [b' '; 16];
    for k in 0..16 - 4 {
        u[k] = t[(k + skip) & 15];
    }
    dotted_quad(&u)
}

/// `a.b.c.d` at the start of `t`, ended by a space, CR, `:` or `,`.
#[inline(always)]
fn dotted_quad(t: &[u8; 16]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let (mut part, mut val, mut digits) = (0usize, 0u32, 0u32);
    for &c in t {
        match c {
            b'0'..=b'9' => {
                val = val * 10 + u32::from(c - b'0');
                digits += 1;
                if val > 255 || digits > 3 {
                    return None;
                }
            }
            b'.' | b' ' | b'\r' | b':' | b',' => {
                if digits == 0 || part > 3 {
                    return None;
                }
                out[part] = val as u8;
                part += 1;
                (val, digits) = (0, 0);
                if c != b'.' {
                    return (part == 4).then_some(out);
                }
            }
            _ => return None,
        }
    }
    None
}

#[inline(always)]
fn load(ctx: &XdpContext, off: usize, dst: &mut [u8; 16]) -> bool {
    // SAFETY: `dst` is 16 writable bytes.
    unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, dst.as_mut_ptr().cast(), 16) == 0 }
}

/// Loads 16 bytes, or fewer when the payload is shorter (the rest stays 0).
#[inline(always)]
fn load_upto(ctx: &XdpContext, off: usize, avail: usize, dst: &mut [u8; 16]) -> bool {
    if avail >= 16 {
        return load(ctx, off, dst);
    }
    // Short v1 lines: copy byte by byte (bounded by 16).
    for (i, d) in dst.iter_mut().enumerate() {
        if i >= avail {
            break;
        }
        let mut c = [0u8; 1];
        // SAFETY: one writable byte.
        if unsafe { bpf_xdp_load_bytes(ctx.ctx, (off + i) as u32, c.as_mut_ptr().cast(), 1) } != 0 {
            return false;
        }
        *d = c[0];
    }
    true
}
