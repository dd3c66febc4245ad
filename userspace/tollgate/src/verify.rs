//! Which requests may ban: only those the server's own TCP stack accepted.
//!
//! XDP sees packets before the kernel validates them, so a sampled segment
//! may be spoofed: a forged source, a 4-tuple no handshake ever created,
//! sequence numbers nowhere near the connection's, a bad checksum. The kernel
//! drops such segments; the server never reads them. The datapath records
//! two facts nobody off-path can forge:
//! - sock_ops writes each passively established connection (handshake
//!   completed with this host) and the client's first data sequence number;
//! - tcx egress writes the latest acknowledgement number the server sent on
//!   it: every client byte below it was accepted by the stack.
//!
//! A request segment is verified when its connection is there and its bytes
//! lie between the first sequence number and the server's acknowledgement.
//! A blind spoofer would have to hit a live connection's 4-tuple and a
//! sequence number inside the bytes that connection already carried.

use aya::maps::{HashMap, MapData};
use tollgate_common::{Established, FlowKey};

/// The outcome of checking one request segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The kernel accepted these bytes on an established connection.
    Verified,
    /// Not (yet) known to be accepted: the handshake or the server's
    /// acknowledgement may still be on its way (XDP runs before the stack).
    Pending(&'static str),
    /// Can never be verified (sequence numbers before the connection began).
    Refused(&'static str),
}

/// Checks `len` request bytes at `seq` against the connection's record.
#[must_use]
pub fn check(est: Option<&Established>, seq: u32, len: u32) -> Check {
    let Some(est) = est else {
        return Check::Pending("no completed handshake on this connection");
    };
    let start = seq.wrapping_sub(est.isn);
    let end = start.wrapping_add(len);
    // Offsets are within the connection when below 2^31 (RFC 1323's
    // comparison): anything "before" the first byte is not this connection's.
    if start >= 1 << 31 || end >= 1 << 31 || end < start {
        return Check::Refused("sequence numbers outside the connection");
    }
    let acked = est.acked.wrapping_sub(est.isn);
    if acked < 1 << 31 && end <= acked {
        Check::Verified
    } else {
        Check::Pending("bytes not acknowledged by the server")
    }
}

/// Read access to the kernel's record of established connections.
pub struct FlowVerifier {
    map: HashMap<MapData, FlowKey, Established>,
}

impl FlowVerifier {
    /// Wraps the datapath's map.
    #[must_use]
    pub fn new(map: HashMap<MapData, FlowKey, Established>) -> Self {
        Self { map }
    }

    /// Checks one request segment of the connection `key` (client side is
    /// the peer that connected: the proxy, for proxied requests).
    #[must_use]
    pub fn check(&self, key: &FlowKey, seq: u32, len: u32) -> Check {
        check(self.map.get(key, 0).ok().as_ref(), seq, len)
    }

    /// When the kernel completed the connection's handshake (boot-clock ns).
    #[must_use]
    pub fn since_ns(&self, key: &FlowKey) -> Option<u64> {
        self.map.get(key, 0).ok().map(|e| e.since_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(isn: u32, acked: u32) -> Established {
        Established {
            since_ns: 1,
            isn,
            acked,
            acked_ns: 1,
        }
    }

    #[test]
    fn accepted_bytes_verify_and_others_do_not() {
        // 100 bytes acknowledged: a request in them verifies, one past them waits.
        let e = est(1000, 1100);
        assert_eq!(check(Some(&e), 1000, 100), Check::Verified);
        assert_eq!(check(Some(&e), 1050, 50), Check::Verified);
        assert!(matches!(check(Some(&e), 1050, 51), Check::Pending(_)));
        // Before the connection's first byte: never.
        assert!(matches!(check(Some(&e), 999, 10), Check::Refused(_)));
        assert!(matches!(
            check(Some(&e), 1000u32.wrapping_sub(1 << 20), 10),
            Check::Refused(_)
        ));
        // Nothing acknowledged yet.
        assert!(matches!(check(Some(&est(7, 7)), 7, 1), Check::Pending(_)));
        // No handshake at all (a spoofed segment's 4-tuple).
        assert!(matches!(check(None, 1000, 10), Check::Pending(_)));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let e = est(u32::MAX - 10, 20);
        assert_eq!(check(Some(&e), u32::MAX - 10, 31), Check::Verified);
        assert_eq!(check(Some(&e), 5, 15), Check::Verified);
        assert!(matches!(check(Some(&e), 5, 16), Check::Pending(_)));
    }

    #[test]
    fn a_random_sequence_number_almost_never_verifies() {
        // A blind spoofer on a live 4-tuple with 64 KiB acknowledged: count
        // verified guesses over a spread of sequence numbers.
        let e = est(0x1234_5678, 0x1234_5678 + 65_536);
        let hits = (0u32..65_536)
            .map(|i| i.wrapping_mul(65_537).wrapping_mul(2_654_435_761))
            .filter(|s| check(Some(&e), *s, 200) == Check::Verified)
            .count();
        assert!(hits <= 4, "{hits} of 65536 random guesses verified");
    }
}
