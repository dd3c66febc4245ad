//! Connections from trusted proxies, at either ingress hook. The proxy's own
//! address is neither banned nor limited as one client; the client it
//! carries is. The first payload packet of each connection is checked for a
//! PROXY protocol header (v2 binary, TCP over IPv4 or IPv6; v1 text, TCP4);
//! a request head instead is scanned for `X-Forwarded-For` across all the
//! packets it spans, whatever their number and size (scan state in the flow
//! entry, up to `HEAD_SCAN_MAX` bytes). The real client is remembered per
//! connection (a bounded LRU map, entries removed on FIN/RST) and every
//! packet of the connection is judged by the real client's bans and rate
//! limits from the packet that names it on, so a banned client's head never
//! completes at the server. Connections whose client only the agent can tell
//! (an IPv6 `X-Forwarded-For` entry, a v1 TCP6 line, a head the scan gave up
//! on) are armed by the agent.
//!
//! A banned client's connection is dropped, not reset: the proxy times the
//! connection out and answers its client with an error, and no packet that
//! Tollgate forged ever reaches the server.

use aya_ebpf::{helpers::bpf_loop, maps::lpm_trie::Key};
use tollgate_common::{
    Config, FlowKey, HEAD_SCAN_MAX, HeadScan, ProxyFlow, Reason, Verdict, head_entry, proxy_state,
};

use crate::{
    Match, bump,
    hook::Hook,
    limit, lookup_v4, lookup_v6,
    maps::{ProxyScratch, TG_PBUF, TG_PFLOWS, TG_PSCRATCH, TG_TRUST4, TG_TRUST6},
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
pub fn judge<C: Hook>(ctx: &C, pkt: &Packet, config: &Config, len: u64) -> (Verdict, Reason) {
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
    let payload = l4.payload_off != 0 && pkt.l3_end > l4.payload_off;
    // SAFETY: the value is copied out at once.
    let known = match unsafe { TG_PFLOWS.get(&sc.key) } {
        Some(f) => {
            sc.flow = *f;
            true
        }
        None if payload => {
            header(
                ctx,
                l4.payload_off,
                pkt.l3_end - l4.payload_off,
                &mut sc.flow,
            );
            sc.flow.scan.next_seq = l4.seq;
            false
        }
        None => {
            sc.flow.state = proxy_state::NONE;
            true
        }
    };
    if sc.flow.state == proxy_state::SCANNING && payload {
        scan_head(
            ctx,
            &raw mut *sc,
            l4.payload_off,
            pkt.l3_end - l4.payload_off,
            l4.seq,
        );
        let _ = TG_PFLOWS.insert(&sc.key, &sc.flow, 0);
    } else if !known {
        let _ = TG_PFLOWS.insert(&sc.key, &sc.flow, 0);
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

/// Reads a PROXY header at the start of the connection's first payload, if
/// there is one; a request head instead is to be scanned for
/// `X-Forwarded-For` (state `SCANNING`, from this packet on). Its own BPF
/// function: its buffers do not add to the caller's stack frame.
#[inline(never)]
fn header<C: Hook>(ctx: &C, off: usize, payload_len: usize, f: &mut ProxyFlow) {
    f.real = [0; 16];
    f.state = proxy_state::NONE;
    f.reserved = 0;
    f.scan = HeadScan::default();
    let mut b = [0u8; 16];
    if payload_len < V2_HLEN {
        // A head may start with a short segment (written in pieces): its
        // first byte tells a request head (a short PROXY line would find no
        // `X-Forwarded-For` and be left to the agent).
        if ctx.load(off, b.as_mut_ptr(), 1) && b[0].is_ascii_uppercase() {
            f.state = proxy_state::SCANNING;
        }
        return;
    }
    if !load(ctx, off, &mut b) {
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
                // `a` is 4 writable bytes.
                && ctx.load(off + V2_HLEN, a.as_mut_ptr(), 4) =>
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
    if b[0].is_ascii_uppercase() && &b[..6] != b"PROXY " {
        // An HTTP request head, perhaps with the client in X-Forwarded-For.
        f.state = proxy_state::SCANNING;
        return;
    }
    if &b[..11] == b"PROXY TCP4 " {
        // The shortest whole v1 line, `PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n`,
        // has 21 bytes after the prefix: 16 can always be copied at once (a
        // shorter copy would leave the verifier one state per length).
        let mut t = [0u8; 16];
        if payload_len >= 11 + 16
            && load(ctx, off + 11, &mut t)
            && let Some(a) = dotted_quad(&t)
        {
            f.real = Source::V4(a).mapped();
            f.state = proxy_state::CLIENT;
        }
    }
}

const XFF: &[u8; 17] = b"\nx-forwarded-for:";
const EOH: &[u8; 4] = b"\r\n\r\n";
/// Bytes copied out of the packet at once (`TG_PBUF`).
const CHUNK: usize = 4096;

/// What the scan callback needs besides the scratch: the hook's context (to
/// copy the next chunk) and which bytes to scan. Only read by the callback.
#[repr(C)]
struct Walk<C> {
    hook: *const C,
    /// Packet offset of the first byte to scan.
    off: usize,
    /// Bytes to scan.
    todo: usize,
}

/// One byte of the head scan (a `bpf_loop` callback: verified once, run once
/// per byte; it copies the next chunk of the packet at each chunk start).
/// Tracks the end of the head, `X-Forwarded-For` header names at line
/// starts, and the IPv4 address in the last entry of each such header's
/// value, digit by digit. Its state is in the per-CPU scratch, not on the
/// stack: values read from a map are unknown to the verifier, so it walks
/// this body a few times instead of once per combination of values.
#[inline(never)]
extern "C" fn scan_step<C: Hook>(i: u64, walk: *mut core::ffi::c_void) -> i64 {
    let walk = walk.cast::<Walk<C>>();
    let (Some(sc), Some(buf)) = (TG_PSCRATCH.get_ptr_mut(0), TG_PBUF.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: `walk` is the caller's; the scratch and the buffer (CHUNK
    // bytes) are per-CPU map values with no other user while this runs.
    unsafe {
        let i = i as usize;
        let todo = (*walk).todo;
        if i >= todo {
            return 1;
        }
        let k = i & (CHUNK - 1);
        if k == 0 {
            let left = todo - i;
            let n = if left < CHUNK { left } else { CHUNK };
            // 1..=CHUNK, in a form that keeps the bound visible to the verifier.
            let n = (n.wrapping_sub(1) & (CHUNK - 1)) + 1;
            if !(*(*walk).hook).load((*walk).off + i, buf.cast(), n as u32) {
                (*sc).err = 1;
                return 1;
            }
        }
        let st = &mut (*sc).flow.scan;
        let c = (*buf)[k];
        if st.in_value != 0 {
            value_byte(st, c);
        }
        let lc = c.to_ascii_lowercase();
        let m = st.xff as usize;
        if XFF.get(m) == Some(&lc) {
            st.xff += 1;
            if st.xff as usize == XFF.len() {
                st.xff = 0;
                st.in_value = 1;
                new_entry(st);
            }
        } else {
            st.xff = u8::from(c == b'\n');
        }
        let e = st.eoh as usize;
        if EOH.get(e) == Some(&c) {
            st.eoh += 1;
            if st.eoh as usize == EOH.len() {
                (*sc).end = i as u32 + 1;
                return 1;
            }
        } else {
            st.eoh = u8::from(c == b'\r');
        }
    }
    0
}

#[inline(always)]
fn new_entry(st: &mut HeadScan) {
    st.entry = head_entry::READING;
    st.part = 0;
    st.digits = 0;
    st.val = 0;
}

/// One byte of an `X-Forwarded-For` value: entries split at commas, spaces
/// before an entry skipped, an IPv4 address read octet by octet (what
/// follows a complete one after a space or colon, e.g. a port, ignored). At
/// the end of the line the last entry names the client (the right-most entry
/// of the last such line is the proxy's own view), or, when it is not an
/// IPv4 address, nobody the datapath can judge.
#[inline(always)]
fn value_byte(st: &mut HeadScan, c: u8) {
    match c {
        b'\r' | b'\n' => {
            st.in_value = 0;
            finish(st);
            if st.entry == head_entry::DONE {
                st.client = st.octets;
                st.found = 1;
            } else {
                st.found = 0;
            }
        }
        b',' => new_entry(st),
        _ if st.entry != head_entry::READING => {}
        b' ' | b'\t' if st.part == 0 && st.digits == 0 => {}
        b' ' | b'\t' | b':' => finish(st),
        b'0'..=b'9' => {
            st.val = st.val * 10 + u16::from(c - b'0');
            st.digits += 1;
            if st.val > 255 || st.digits > 3 {
                st.entry = head_entry::INVALID;
            }
        }
        b'.' if st.digits != 0 && st.part < 3 => {
            st.octets[(st.part & 3) as usize] = st.val as u8;
            st.part += 1;
            st.digits = 0;
            st.val = 0;
        }
        _ => st.entry = head_entry::INVALID,
    }
}

/// Ends the entry being read: complete if it holds four octets.
#[inline(always)]
fn finish(st: &mut HeadScan) {
    if st.entry != head_entry::READING {
        return;
    }
    if st.part == 3 && st.digits != 0 {
        st.octets[3] = st.val as u8;
        st.entry = head_entry::DONE;
    } else {
        st.entry = head_entry::INVALID;
    }
}

/// Scans this packet's part of a proxied connection's request head (its
/// payload: `payload_len` bytes at `off`, TCP sequence number `seq`), from
/// where the last packet left off, whole (one `bpf_loop` over its bytes);
/// the flow is the scratch's (`sc`, which the scan callback also writes:
/// hence raw pointers only). When the head ends, the flow gets its client
/// (or none); a gap, a failed copy, or a head longer than `HEAD_SCAN_MAX`
/// ends the scan without one (the agent arms such flows).
#[inline(never)]
fn scan_head<C: Hook>(ctx: &C, sc: *mut ProxyScratch, off: usize, payload_len: usize, seq: u32) {
    // SAFETY: `sc` is the per-CPU scratch: no other user while this program
    // runs here but the callback, which runs inside `bpf_loop` only.
    unsafe {
        let f = &raw mut (*sc).flow;
        let ahead = seq.wrapping_sub((*f).scan.next_seq) as i32;
        if ahead > 0 {
            // Bytes before this segment are missing (reordered or lost):
            // what the server will read cannot be followed.
            (*f).state = proxy_state::NONE;
            return;
        }
        // A retransmission: skip what was scanned already.
        let skip = ahead.unsigned_abs() as usize;
        if skip >= payload_len {
            return;
        }
        let room = HEAD_SCAN_MAX.saturating_sub((*f).scan.scanned) as usize;
        let todo = payload_len - skip;
        let todo = if todo < room { todo } else { room };
        (*sc).end = 0;
        (*sc).err = 0;
        let mut walk = Walk {
            hook: core::ptr::from_ref(ctx),
            off: off + skip,
            todo,
        };
        bpf_loop(
            HEAD_SCAN_MAX,
            scan_step::<C> as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        );
        if core::ptr::read_volatile(&raw const (*sc).err) != 0 {
            (*f).state = proxy_state::NONE;
            return;
        }
        let end = core::ptr::read_volatile(&raw const (*sc).end) as usize;
        let done = if end != 0 { end } else { todo };
        (*f).scan.next_seq = (*f).scan.next_seq.wrapping_add(done as u32);
        (*f).scan.scanned = (*f).scan.scanned.saturating_add(done as u32);
        if end != 0 {
            if (*f).scan.found != 0 {
                (*f).real = Source::V4((*f).scan.client).mapped();
                (*f).state = proxy_state::CLIENT;
            } else {
                (*f).state = proxy_state::NONE;
            }
        } else if (*f).scan.scanned >= HEAD_SCAN_MAX {
            (*f).state = proxy_state::NONE;
        }
    }
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
fn load<C: Hook>(ctx: &C, off: usize, dst: &mut [u8; 16]) -> bool {
    ctx.load(off, dst.as_mut_ptr(), 16)
}
