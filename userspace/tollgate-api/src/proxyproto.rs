//! The PROXY protocol header (v1 text, v2 binary) a load balancer puts at
//! the start of each connection to name the client it accepted. Untrusted
//! bytes: bounded, never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The v2 signature.
pub const V2_SIG: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// Longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// What the start of a connection holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Not a PROXY header.
    None,
    /// Could be one; more bytes needed.
    Incomplete,
    /// A header of `len` bytes; `client` when it names one (not `UNKNOWN` or
    /// `LOCAL`).
    Complete {
        /// The client the proxy accepted.
        client: Option<IpAddr>,
        /// Bytes to skip.
        len: usize,
    },
}

/// Reads a PROXY header at the start of `buf`.
#[must_use]
pub fn parse(buf: &[u8]) -> Header {
    if buf.len() < V2_SIG.len() {
        let n = buf.len();
        return if V2_SIG.starts_with(buf) || b"PROXY ".starts_with(&buf[..n.min(6)]) {
            Header::Incomplete
        } else {
            Header::None
        };
    }
    if buf.starts_with(&V2_SIG) {
        return v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return v1(buf);
    }
    Header::None
}

fn v1(buf: &[u8]) -> Header {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() < V1_MAX {
            Header::Incomplete
        } else {
            Header::None
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Header::None;
    }
    let Ok(line) = std::str::from_utf8(&buf[..end - 1]) else {
        return Header::None;
    };
    let mut f = line.split(' ');
    let (Some("PROXY"), Some(proto)) = (f.next(), f.next()) else {
        return Header::None;
    };
    let client = match proto {
        "UNKNOWN" => None,
        "TCP4" => match f.next().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
            Some(a) => Some(IpAddr::V4(a)),
            None => return Header::None,
        },
        "TCP6" => match f.next().and_then(|a| a.parse::<Ipv6Addr>().ok()) {
            Some(a) => Some(IpAddr::V6(a)),
            None => return Header::None,
        },
        _ => return Header::None,
    };
    Header::Complete {
        client,
        len: end + 1,
    }
}

fn v2(buf: &[u8]) -> Header {
    let Some(&[ver_cmd, fam, hi, lo]) = buf.get(12..16) else {
        return Header::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Header::None;
    }
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    let Some(body) = buf.get(16..len) else {
        return Header::Incomplete;
    };
    // Command LOCAL (0x0) carries no client; PROXY (0x1) over TCP does.
    let client = match (ver_cmd & 0x0f, fam) {
        (1, 0x11) => body
            .get(..4)
            .and_then(|a| <[u8; 4]>::try_from(a).ok())
            .map(|a| IpAddr::V4(a.into())),
        (1, 0x21) => body
            .get(..16)
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
            .map(|a| IpAddr::V6(a.into())),
        (0 | 1, _) => None,
        _ => return Header::None,
    };
    Header::Complete { client, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2() {
        assert_eq!(
            parse(b"PROXY TCP4 198.18.0.9 198.18.0.1 5000 80\r\nGET /"),
            Header::Complete {
                client: Some("198.18.0.9".parse().unwrap()),
                len: 42
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 fd00::9 fd00::1 5000 80\r\n"),
            Header::Complete {
                client: Some("fd00::9".parse().unwrap()),
                len: 36
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Header::Complete {
                client: None,
                len: 15
            }
        );
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 18, 0, 9, 198, 18, 0, 1, 0, 1, 0, 2]);
        v2.extend_from_slice(b"GET");
        assert_eq!(
            parse(&v2),
            Header::Complete {
                client: Some("198.18.0.9".parse().unwrap()),
                len: 28
            }
        );
        assert_eq!(parse(&v2[..20]), Header::Incomplete);
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Header::Complete {
                client: None,
                len: 16
            }
        );
    }

    #[test]
    fn anything_else_is_not_a_header() {
        for b in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 198.18.0.999 1.1.1.1 1 2\r\n",
            b"PROXY TCP4 fd00::1 1.1.1.1 1 2\r\n",
            b"PROXY SCTP 1 2 3 4\r\n",
            b"PROXY TCP4 198.18.0.9 198.18.0.1 5000 80\n",
            &[
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x31, 0, 0,
                0,
            ],
        ] {
            assert_eq!(parse(b), Header::None, "{b:?}");
        }
        assert_eq!(parse(b"PROX"), Header::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 198.18"), Header::Incomplete);
        assert_eq!(parse(&[b'P'; 200]), Header::None);
        // Arbitrary bytes never panic.
        let mut x = 7u32;
        for n in 0..2000 {
            let v: Vec<u8> = (0..n % 120)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x & 0xff) as u8
                })
                .collect();
            let mut w = V2_SIG.to_vec();
            w.extend_from_slice(&v);
            let _ = parse(&v);
            let _ = parse(&w);
        }
    }
}
