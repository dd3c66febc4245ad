//! The sample record the pipeline consumes.

use std::net::{IpAddr, Ipv6Addr};

use bytes::Bytes;
use tollgate_common::{DIR_REQUEST, SampleHeader};

/// Which way the bytes flowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Response,
}

/// One sampled TCP segment of an API flow.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Boot-clock nanoseconds.
    pub ts_ns: u64,
    /// Client address.
    pub client: IpAddr,
    /// Server address.
    pub server: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Server (API) port.
    pub server_port: u16,
    /// Which way.
    pub direction: Direction,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// TCP flags.
    pub tcp_flags: u8,
    /// Interface index.
    pub ifindex: u32,
    /// Payload length in the packet.
    pub payload_len: u32,
    /// Taken at the socket (stream verdict): in order and from a verified
    /// client; else a packet at the NIC.
    pub stream: bool,
    /// Plaintext from the server's TLS library (then also `stream`): the
    /// connection's packets and socket bytes are ciphertext and ignored.
    pub tls: bool,
    /// The socket's cookie (stream records; 0 otherwise).
    pub cookie: u64,
    /// The captured payload prefix.
    pub data: Bytes,
}

/// IPv4 clients travel as IPv4-mapped IPv6 in the record.
fn addr(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

impl Sample {
    /// Decodes a ring-buffer record (`header` then payload bytes). `None`
    /// when the record is shorter than it claims.
    #[must_use]
    pub fn from_record(raw: &[u8]) -> Option<Self> {
        let hlen = std::mem::size_of::<SampleHeader>();
        if raw.len() < hlen {
            return None;
        }
        // SAFETY: length checked; SampleHeader is POD.
        let h: SampleHeader = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let captured = usize::try_from(h.captured).ok()?;
        let data = raw.get(hlen..hlen + captured)?;
        Some(Self {
            ts_ns: h.ts_ns,
            client: addr(h.flow.client),
            server: addr(h.flow.server),
            client_port: h.flow.client_port,
            server_port: h.flow.server_port,
            direction: if h.direction == DIR_REQUEST {
                Direction::Request
            } else {
                Direction::Response
            },
            seq: h.seq,
            tcp_flags: h.tcp_flags,
            ifindex: h.ifindex,
            payload_len: h.payload_len,
            stream: matches!(
                h.source,
                tollgate_common::sample_source::STREAM | tollgate_common::sample_source::TLS
            ),
            tls: h.source == tollgate_common::sample_source::TLS,
            cookie: if h.source == tollgate_common::sample_source::STREAM {
                h.cookie
            } else {
                0
            },
            data: Bytes::copy_from_slice(data),
        })
    }
}
