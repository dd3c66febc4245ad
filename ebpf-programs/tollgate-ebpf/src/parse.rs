//! Bounds-checked header parsing. Every read goes through [`Cursor::read`],
//! which the verifier can follow; nothing here ever decides to drop.

use core::mem::size_of;

use tollgate_common::Reason;

/// Ethernet header length; the IPv4 header follows (without VLAN tags).
pub const ETH_HLEN: usize = 14;
/// Ethernet: the EtherType's offset.
const ETH_TYPE: usize = 12;
/// A VLAN tag's length, and the offset of the EtherType it carries.
const VLAN_HLEN: usize = 4;
const VLAN_TYPE: usize = 2;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1ad outer tag plus 802.1Q inner tag (QinQ).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up on the upper layer.
const MAX_EXT_HEADERS: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

/// Address families as the socket programs' contexts report them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// IPv4 header: byte offsets of the fields read.
pub mod ipv4 {
    /// Minimum header length (no options).
    pub const HLEN: usize = 20;
    pub const TOTAL_LEN: usize = 2;
    pub const FRAG_OFF: usize = 6;
    pub const PROTO: usize = 9;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// IPv6 header: byte offsets of the fields read.
mod ipv6 {
    pub const HLEN: usize = 40;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// TCP header: byte offsets of the fields read, and the flag bits.
mod tcp {
    /// Minimum header length (no options).
    pub const HLEN: usize = 20;
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK_SEQ: usize = 8;
    /// Data offset in 32-bit words, in the high nibble.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The packet bytes `[start, end)` of the hook's context.
#[derive(Clone, Copy)]
pub struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// Copies `N` bytes at `off`, or `Truncated` when the packet is shorter.
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Result<[u8; N], Reason> {
        let at = self.start + off;
        if at + size_of::<[u8; N]>() > self.end {
            return Err(Reason::Truncated);
        }
        // SAFETY: bounds checked against the context's data_end just above.
        Ok(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

/// The source address as it appears on the wire.
#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Source {
    /// The 16-byte form map keys use: IPv4 as `::ffff:a.b.c.d`.
    #[inline(always)]
    pub fn mapped(&self) -> [u8; 16] {
        match self {
            Source::V4(v) => {
                let mut a = [0u8; 16];
                a[10] = 0xff;
                a[11] = 0xff;
                a[12..16].copy_from_slice(v);
                a
            }
            Source::V6(v) => *v,
        }
    }

    /// The inverse of [`Source::mapped`]: an IPv4-mapped address is an IPv4
    /// source (dual-stack sockets and PROXY headers carry them).
    #[inline(always)]
    pub fn from_mapped(a: &[u8; 16]) -> Source {
        if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff {
            Source::V4([a[12], a[13], a[14], a[15]])
        } else {
            Source::V6(*a)
        }
    }
}

/// Reads an IPv6 address from a socket program's context field word by word,
/// volatile: the verifier only allows 4-byte reads of these fields, and the
/// compiler would merge plain ones. The bytes come out in network order.
///
/// # Safety
/// `p` must point at a `[u32; 4]` address field of the program's context.
#[inline(always)]
pub unsafe fn ctx_ip6(p: *const [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, chunk) in a.chunks_exact_mut(4).enumerate() {
        // SAFETY: within the four words the caller vouches for.
        let w = unsafe { core::ptr::read_volatile(p.cast::<u32>().add(i)) };
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    a
}

/// What the datapath learned about a packet whose IP header is intact.
#[derive(Clone, Copy)]
pub struct Packet {
    pub src: Source,
    /// Destination address (sampling needs the whole flow).
    pub dst: Source,
    /// Offset just past the IP payload (from the IP length field: frames
    /// may carry Ethernet padding).
    pub l3_end: usize,
    /// `Clean`, or why the upper layers could not be read. A banned source
    /// is dropped whatever this says: its IP header is all a ban needs.
    pub l4_status: Reason,
    /// Upper-layer facts, zero when not reached.
    pub l4: L4,
}

/// What the limiter needs from TCP/UDP.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    /// Destination port (TCP/UDP), 0 otherwise.
    pub dport: u16,
    /// TCP flags byte (`TCP_FIN`, `TCP_SYN`, `TCP_RST`, `TCP_ACK`), 0 otherwise.
    pub tcp_flags: u8,
    /// Source port (TCP/UDP), 0 otherwise.
    pub sport: u16,
    /// TCP sequence number, 0 otherwise.
    pub seq: u32,
    /// TCP acknowledgement number, 0 otherwise.
    pub ack: u32,
    /// Offset of the TCP payload, 0 when not TCP.
    pub payload_off: usize,
    /// Upper-layer protocol number.
    pub proto: u8,
}

/// Parses L2 and L3. `Err` carries the reason the source could not be known
/// (the caller then passes the packet and counts it).
#[inline(always)]
pub fn parse(c: &Cursor) -> Result<Packet, Reason> {
    let eth = c.read::<ETH_HLEN>(0)?;
    let mut ethertype = u16::from_be_bytes([eth[ETH_TYPE], eth[ETH_TYPE + 1]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = c.read::<VLAN_HLEN>(off)?;
        ethertype = u16::from_be_bytes([tag[VLAN_TYPE], tag[VLAN_TYPE + 1]]);
        off += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(c, off),
        ETH_P_IPV6 => parse_v6(c, off),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn parse_v4(c: &Cursor, off: usize) -> Result<Packet, Reason> {
    use ipv4::{DST, FRAG_OFF, HLEN, PROTO, SRC, TOTAL_LEN};
    let ip = c.read::<HLEN>(off)?;
    // Byte 0: version (high nibble) and header length in words (low).
    if ip[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < HLEN {
        return Err(Reason::Malformed);
    }
    let src = Source::V4([ip[SRC], ip[SRC + 1], ip[SRC + 2], ip[SRC + 3]]);
    let dst = Source::V4([ip[DST], ip[DST + 1], ip[DST + 2], ip[DST + 3]]);
    let l3_end = off + usize::from(u16::from_be_bytes([ip[TOTAL_LEN], ip[TOTAL_LEN + 1]]));
    let proto = ip[PROTO];
    // Non-first fragments carry no upper-layer header; the source is enough.
    // Options claimed but cut short: the header is not whole, so pass.
    c.read::<1>(off + ihl - 1)?;
    let frag_offset = u16::from_be_bytes([ip[FRAG_OFF], ip[FRAG_OFF + 1]]) & 0x1fff;
    let (l4_status, l4) = if frag_offset != 0 {
        (Reason::Clean, L4::default())
    } else {
        check_l4(c, off + ihl, proto)
    };
    Ok(Packet {
        src,
        dst,
        l3_end,
        l4_status,
        l4,
    })
}

#[inline(always)]
fn parse_v6(c: &Cursor, off: usize) -> Result<Packet, Reason> {
    use ipv6::{DST, HLEN, NEXT_HEADER, PAYLOAD_LEN, SRC};
    // Read in pieces (the fixed fields before the addresses, then each
    // address): a 40-byte copy costs stack the programs cannot spare.
    let ip = c.read::<SRC>(off)?;
    if ip[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let src = Source::V6(c.read::<16>(off + SRC)?);
    let dst = Source::V6(c.read::<16>(off + DST)?);
    let l3_end =
        off + HLEN + usize::from(u16::from_be_bytes([ip[PAYLOAD_LEN], ip[PAYLOAD_LEN + 1]]));
    let mut next = ip[NEXT_HEADER];
    let mut off = off + HLEN;
    let mut status = Reason::ExtChainTooLong;
    let mut l4 = L4::default();
    // One step per extension header and one for the upper-layer header: up
    // to seven extension headers reach it (another step costs the verifier
    // four times the XDP program's instructions).
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let h = match c.read::<2>(off) {
                    Ok(h) => h,
                    Err(r) => {
                        status = r;
                        break;
                    }
                };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let h = match c.read::<2>(off) {
                    Ok(h) => h,
                    Err(r) => {
                        status = r;
                        break;
                    }
                };
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h = match c.read::<8>(off) {
                    Ok(h) => h,
                    Err(r) => {
                        status = r;
                        break;
                    }
                };
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    // Non-first fragment: no upper-layer header follows.
                    status = Reason::Clean;
                    break;
                }
            }
            IPPROTO_NONE => {
                status = Reason::Clean;
                break;
            }
            _ => {
                (status, l4) = check_l4(c, off, next);
                break;
            }
        }
    }
    Ok(Packet {
        src,
        dst,
        l3_end,
        l4_status: status,
        l4,
    })
}

/// Checks that the upper-layer header the datapath needs is whole and
/// reads ports and flags from it.
#[inline(always)]
fn check_l4(c: &Cursor, off: usize, proto: u8) -> (Reason, L4) {
    let mut l4 = L4 {
        proto,
        ..L4::default()
    };
    let status = match proto {
        IPPROTO_TCP => match c.read::<{ tcp::HLEN }>(off) {
            // Data offset below five words is not a TCP header.
            Ok(h) if h[tcp::DATA_OFF] >> 4 < 5 => Reason::Malformed,
            Ok(h) => {
                use tcp::{ACK_SEQ, DATA_OFF, DPORT, FLAGS, SEQ, SPORT};
                l4.sport = u16::from_be_bytes([h[SPORT], h[SPORT + 1]]);
                l4.dport = u16::from_be_bytes([h[DPORT], h[DPORT + 1]]);
                l4.seq = u32::from_be_bytes([h[SEQ], h[SEQ + 1], h[SEQ + 2], h[SEQ + 3]]);
                l4.ack = u32::from_be_bytes([
                    h[ACK_SEQ],
                    h[ACK_SEQ + 1],
                    h[ACK_SEQ + 2],
                    h[ACK_SEQ + 3],
                ]);
                l4.tcp_flags = h[FLAGS];
                l4.payload_off = off + usize::from(h[DATA_OFF] >> 4) * 4;
                Reason::Clean
            }
            Err(r) => r,
        },
        IPPROTO_UDP => match c.read::<8>(off) {
            Ok(udp) => {
                // The ports sit where TCP's do.
                use tcp::{DPORT, SPORT};
                l4.sport = u16::from_be_bytes([udp[SPORT], udp[SPORT + 1]]);
                l4.dport = u16::from_be_bytes([udp[DPORT], udp[DPORT + 1]]);
                Reason::Clean
            }
            Err(r) => r,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match c.read::<4>(off) {
            Ok(_) => Reason::Clean,
            Err(r) => r,
        },
        _ => Reason::Clean,
    };
    (status, l4)
}
