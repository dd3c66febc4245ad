//! Bounds-checked header parsing. Every read goes through [`Cursor::read`],
//! which the verifier can follow; nothing here ever decides to drop.

use core::mem::size_of;

use tollgate_common::Reason;

const ETH_HLEN: usize = 14;
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
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10), 0 otherwise.
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

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Parses L2 and L3. `Err` carries the reason the source could not be known
/// (the caller then passes the packet and counts it).
#[inline(always)]
pub fn parse(c: &Cursor) -> Result<Packet, Reason> {
    let eth = c.read::<ETH_HLEN>(0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = c.read::<4>(off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(c, off),
        ETH_P_IPV6 => parse_v6(c, off),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn parse_v4(c: &Cursor, off: usize) -> Result<Packet, Reason> {
    let ip = c.read::<20>(off)?;
    if ip[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Reason::Malformed);
    }
    let src = Source::V4([ip[12], ip[13], ip[14], ip[15]]);
    let dst = Source::V4([ip[16], ip[17], ip[18], ip[19]]);
    let l3_end = off + usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let proto = ip[9];
    // Non-first fragments carry no upper-layer header; the source is enough.
    // Options claimed but cut short: the header is not whole, so pass.
    c.read::<1>(off + ihl - 1)?;
    let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
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
    // Read in pieces: a 40-byte copy costs stack the programs cannot spare.
    let ip = c.read::<8>(off)?;
    if ip[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let src = Source::V6(c.read::<16>(off + 8)?);
    let dst = Source::V6(c.read::<16>(off + 24)?);
    let l3_end = off + 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut next = ip[6];
    let mut off = off + 40;
    let mut status = Reason::ExtChainTooLong;
    let mut l4 = L4::default();
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
        IPPROTO_TCP => match c.read::<20>(off) {
            // Data offset below five words is not a TCP header.
            Ok(tcp) if tcp[12] >> 4 < 5 => Reason::Malformed,
            Ok(tcp) => {
                l4.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
                l4.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
                l4.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
                l4.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
                l4.tcp_flags = tcp[13];
                l4.payload_off = off + usize::from(tcp[12] >> 4) * 4;
                Reason::Clean
            }
            Err(r) => r,
        },
        IPPROTO_UDP => match c.read::<8>(off) {
            Ok(udp) => {
                l4.sport = u16::from_be_bytes([udp[0], udp[1]]);
                l4.dport = u16::from_be_bytes([udp[2], udp[3]]);
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
