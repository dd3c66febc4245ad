//! Arbitrary bytes through everything that parses sampled API traffic: the
//! HTTP request/response parsers (tollgate-detect's, the agent's only ones),
//! the unparseable stand-in, the classifier, per-flow reassembly and
//! pairing (`Flows::on_sample`, HTTP/2 frames and HPACK, segments with derived sequence numbers,
//! directions and flags) and path templating. None of it may panic, and
//! memory must stay bounded (libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb`).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_api::{
    flows::Flows,
    inventory,
    sample::{Direction, Sample},
};
use tollgate_detect::{self as http, Parsed};

fn parsers(data: &[u8]) {
    let _ = http::classify(data);
    for wait in [false, true] {
        if let Ok(Parsed::Complete { msg, consumed }) = http::parse_request_waiting(data, wait) {
            assert!(consumed <= data.len());
            assert!(msg.body.len() <= data.len());
            let _ = inventory::path_template(&msg.path);
            let _ = inventory::has_credentials(&msg);
        }
        for head in [false, true] {
            if let Ok(Parsed::Complete { msg, consumed }) =
                http::parse_response_waiting(data, head, wait)
            {
                assert!(consumed <= data.len());
                assert!(msg.body.len() <= data.len());
            }
        }
    }
    if let Err(e) = http::parse_request(data) {
        let r = http::Request::unparseable(data, e);
        assert!(r.body.len() <= data.len());
        let _ = inventory::path_template(&r.path);
    }
    let _ = http::parse_response(data, false);
    let _ = inventory::path_template(&String::from_utf8_lossy(data));
    // HTTP/2 frames and HPACK blocks, both sides, in records of 7 bytes
    // (a frame header split across feeds).
    for side in [http::h2::Side::Client, http::h2::Side::Server] {
        let mut d = http::h2::Decoder::new(side, 1024);
        let mut out = Vec::new();
        if side == http::h2::Side::Client {
            d.feed(http::h2::PREFACE, &mut out);
        }
        for c in data.chunks(7) {
            d.feed(c, &mut out);
        }
        d.flush(&mut out);
        assert!(out.len() <= data.len());
    }
}

/// Cuts the input into segments: each starts with a control byte and a
/// length byte. Control bits: 0 direction, 1 follows on (else a gap),
/// 2 capture shorter than the payload, 3 FIN, 4 RST, 5..7 flow (client port).
fn flows(data: &[u8]) {
    let mut f = Flows::new(16);
    f.decode_h2_from_packets();
    let mut seq = [[1000u32; 2]; 8];
    let mut rest = data;
    let mut ts = 0u64;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (seg, next) = tail.split_at(n);
        rest = next;
        let dir = usize::from(ctl & 1);
        let flow = usize::from(ctl >> 5);
        let short = ctl & 4 != 0;
        let payload_len = u32::try_from(n).unwrap_or(u32::MAX) + if short { 100 } else { 0 };
        if ctl & 2 == 0 {
            seq[flow][dir] = seq[flow][dir].wrapping_add(7919);
        }
        let s = Sample {
            stream: false,
            cookie: 0,
            tls: false,
            ts_ns: ts,
            client: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            server: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            client_port: 40000 + u16::from(ctl >> 5),
            server_port: 8080,
            direction: if dir == 0 {
                Direction::Request
            } else {
                Direction::Response
            },
            seq: seq[flow][dir],
            tcp_flags: 0x18
                | if ctl & 8 != 0 { 0x01 } else { 0 }
                | if ctl & 16 != 0 { 0x04 } else { 0 },
            ifindex: 1,
            payload_len,
            data: Bytes::copy_from_slice(seg),
        };
        seq[flow][dir] = seq[flow][dir].wrapping_add(payload_len);
        ts += 1_000;
        for ev in f.on_sample(&s, 0.0) {
            if let Some(p) = &ev.path {
                let _ = inventory::path_template(p);
            }
            if let Some(req) = &ev.request {
                let _ = inventory::has_credentials(req);
            }
        }
        assert!(f.len() <= 16);
    }
}

fuzz_target!(|data: &[u8]| {
    parsers(data);
    flows(data);
});
