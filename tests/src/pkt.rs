//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet (optionally VLAN/QinQ
//! tagged), IPv4 with options and fragments, IPv6 with extension headers,
//! TCP/UDP/ICMP. Checksums are left zero: the datapath does not verify them.

use std::net::{Ipv4Addr, Ipv6Addr};

/// IP protocol numbers used here.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMP.
pub const ICMP: u8 = 1;
/// ICMPv6.
pub const ICMPV6: u8 = 58;

/// Builder for one frame.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    vlans: Vec<u16>,
    qinq_outer: bool,
}

impl Frame {
    /// An untagged frame.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an 802.1Q tag.
    #[must_use]
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    /// Makes the first tag an 802.1ad (QinQ) outer tag.
    #[must_use]
    pub fn qinq(mut self) -> Self {
        self.qinq_outer = true;
        self
    }

    fn l2(&self, ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.qinq_outer {
                0x88a8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// A frame with an arbitrary ethertype and payload.
    #[must_use]
    pub fn raw(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = self.l2(ethertype);
        f.extend_from_slice(payload);
        f
    }

    /// IPv4 packet from `src` carrying `l4` (a transport header + payload).
    #[must_use]
    pub fn ipv4(&self, src: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        self.ipv4_full(src, proto, l4, &[], 0)
    }

    /// IPv4 with `options` (padded to 4 bytes) and a raw fragment field
    /// (flags + offset in 8-byte units).
    #[must_use]
    pub fn ipv4_full(
        &self,
        src: Ipv4Addr,
        proto: u8,
        l4: &[u8],
        options: &[u8],
        frag: u16,
    ) -> Vec<u8> {
        let mut opts = options.to_vec();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let ihl = u8::try_from(5 + opts.len() / 4).unwrap_or(15);
        let total = u16::try_from(20 + opts.len() + l4.len()).unwrap_or(u16::MAX);
        let mut ip = vec![0x40 | ihl, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 1]);
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&Ipv4Addr::new(198, 18, 255, 1).octets());
        ip.extend_from_slice(&opts);
        ip.extend_from_slice(l4);
        self.raw(0x0800, &ip)
    }

    /// IPv6 packet from `src`; `ext` is a chain of (header type, body) pairs
    /// placed before the upper-layer header `l4` of protocol `proto`.
    #[must_use]
    pub fn ipv6(&self, src: Ipv6Addr, ext: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, (_, body)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
            chain.push(next);
            chain.extend_from_slice(body);
        }
        let first = ext.first().map_or(proto, |(t, _)| *t);
        let plen = u16::try_from(chain.len() + l4.len()).unwrap_or(u16::MAX);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&plen.to_be_bytes());
        ip.push(first);
        ip.push(64);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(
            &"fd00:ffff::1"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or([0; 16]),
        );
        ip.extend_from_slice(&chain);
        ip.extend_from_slice(l4);
        self.raw(0x86dd, &ip)
    }
}

/// Body (after the next-header byte) of an 8-byte hop-by-hop or
/// destination-options header: length 0, PadN.
#[must_use]
pub fn opts_ext() -> Vec<u8> {
    vec![0, 1, 4, 0, 0, 0, 0]
}

/// Body of a fragment header with `offset` (8-byte units) and more-fragments.
#[must_use]
pub fn frag_ext(offset: u16, more: bool) -> Vec<u8> {
    let v = (offset << 3) | u16::from(more);
    let mut b = vec![0];
    b.extend_from_slice(&v.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 7]);
    b
}

/// A TCP SYN to port 80 (20-byte header) with `payload`.
#[must_use]
pub fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut h = vec![
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram to port 53.
#[must_use]
pub fn udp(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut h = vec![0x9c, 0x40, 0, 53];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An ICMP(v6) echo request header.
#[must_use]
pub fn icmp_echo(v6: bool) -> Vec<u8> {
    vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]
}

/// A TCP header to `dport` with `flags` (0x02 SYN, 0x10 ACK, ...) and `payload`.
#[must_use]
pub fn tcp_to(dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = tcp(payload);
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[13] = flags;
    h
}

/// A UDP datagram to `dport`.
#[must_use]
pub fn udp_to(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = udp(payload);
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}
