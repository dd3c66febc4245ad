//! The datapath in the kernel: the loaded programs run on crafted packets
//! through BPF_PROG_TEST_RUN, and verdicts and counters are read back from
//! the real maps. Each test loads its own unpinned instance.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::IpNet;
use tollgate::{
    clock,
    datapath::{Capacities, Datapath},
};
use tollgate_common::{AllowEntry, BanReason, BlockEntry, Mode, Reason, Verdict, counter_index};
use tollgate_tests::{
    pkt::{self, Frame},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
const TCX_NEXT: u32 = u32::MAX; // -1

fn load() -> Datapath {
    require_root();
    Datapath::load(None, Capacities::small()).unwrap()
}

fn run(dp: &mut Datapath, frame: &[u8]) -> u32 {
    let prog = dp.xdp().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap();
    res.return_value
}

fn run_tc(dp: &mut Datapath, frame: &[u8]) -> u32 {
    let prog = dp.tc().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })
    .unwrap()
    .return_value
}

fn count(dp: &Datapath, v: Verdict, r: Reason) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(cv, cr, _)| counter_index(*cv, *cr) == counter_index(v, r))
        .map(|(_, _, c)| c.packets)
        .unwrap()
}

fn ban(dp: &mut Datapath, net: &str) {
    dp.insert_block(net_of(net), &entry(0)).unwrap();
}

fn entry(expires_ns: u64) -> BlockEntry {
    BlockEntry {
        expires_ns,
        created_ns: clock::boot_ns(),
        hits: 0,
        reason: BanReason::Manual as u32,
        reserved: 0,
    }
}

fn net_of(s: &str) -> IpNet {
    tollgate::net::parse_net(s).unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn clean_ipv4_passes_and_is_counted() {
    let mut dp = load();
    ban(&mut dp, "198.18.9.9");
    let f = Frame::new().ipv4(v4("198.18.1.1"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Clean), 1);
    assert_eq!(count(&dp, Verdict::Drop, Reason::Blocklisted), 0);
}

#[test]
fn banned_ipv4_host_is_dropped_and_hits_counted() {
    let mut dp = load();
    ban(&mut dp, "198.18.1.1");
    for l4 in [
        (pkt::TCP, pkt::tcp(b"GET / HTTP/1.1\r\n")),
        (pkt::UDP, pkt::udp(b"x")),
        (pkt::ICMP, pkt::icmp_echo(false)),
    ] {
        let f = Frame::new().ipv4(v4("198.18.1.1"), l4.0, &l4.1);
        assert_eq!(run(&mut dp, &f), XDP_DROP);
    }
    assert_eq!(count(&dp, Verdict::Drop, Reason::Blocklisted), 3);
    let e = dp.get_block(net_of("198.18.1.1/32")).unwrap().unwrap();
    assert_eq!(e.hits, 3);
    // A neighbour in the same /24 (same prefilter bucket) passes.
    let f = Frame::new().ipv4(v4("198.18.1.2"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_PASS);
}

#[test]
fn ipv4_ranges_drop_inside_and_pass_outside() {
    let mut dp = load();
    ban(&mut dp, "198.18.4.0/24");
    ban(&mut dp, "198.19.0.0/16");
    for (src, want) in [
        ("198.18.4.0", XDP_DROP),
        ("198.18.4.200", XDP_DROP),
        ("198.18.5.1", XDP_PASS),
        ("198.18.3.255", XDP_PASS),
        ("198.19.0.1", XDP_DROP),
        ("198.19.255.254", XDP_DROP),
        ("198.20.0.1", XDP_PASS),
    ] {
        let f = Frame::new().ipv4(v4(src), pkt::UDP, &pkt::udp(b""));
        assert_eq!(run(&mut dp, &f), want, "{src}");
    }
}

#[test]
fn ipv6_hosts_and_ranges_through_extension_headers() {
    let mut dp = load();
    ban(&mut dp, "fd00:1::7");
    ban(&mut dp, "fd00:2:3::/48");
    ban(&mut dp, "fd00:9::/40");
    let hbh = (0u8, pkt::opts_ext());
    let dst = (60u8, pkt::opts_ext());
    let frag = (44u8, pkt::frag_ext(0, true));
    let chains: [Vec<(u8, Vec<u8>)>; 3] =
        [vec![], vec![hbh.clone(), dst.clone()], vec![hbh, frag, dst]];
    for chain in &chains {
        for (src, want) in [
            ("fd00:1::7", XDP_DROP),
            ("fd00:1::8", XDP_PASS),
            ("fd00:2:3:4::1", XDP_DROP),
            ("fd00:2:4::1", XDP_PASS),
            ("fd00:9:ab::1", XDP_DROP),
            ("fd00:9:100::1", XDP_PASS),
        ] {
            let f = Frame::new().ipv6(v6(src), chain, pkt::TCP, &pkt::tcp(b""));
            assert_eq!(
                run(&mut dp, &f),
                want,
                "{src} with {} ext headers",
                chain.len()
            );
        }
    }
}

#[test]
fn short_ipv6_ranges_bypass_the_prefilter() {
    let mut dp = load();
    ban(&mut dp, "fd00::/16");
    let f = Frame::new().ipv6(v6("fd00:abcd::1"), &[], pkt::ICMPV6, &pkt::icmp_echo(true));
    assert_eq!(run(&mut dp, &f), XDP_DROP);
    dp.remove_block(net_of("fd00::/16")).unwrap();
    dp.maintain().unwrap();
    assert_eq!(run(&mut dp, &f), XDP_PASS);
}

#[test]
fn vlan_and_qinq_tagged_frames() {
    let mut dp = load();
    ban(&mut dp, "198.18.6.6");
    ban(&mut dp, "fd00:6::6");
    for frame in [
        Frame::new().vlan(10),
        Frame::new().qinq().vlan(100).vlan(10),
    ] {
        let bad = frame.ipv4(v4("198.18.6.6"), pkt::TCP, &pkt::tcp(b""));
        let good = frame.ipv4(v4("198.18.6.7"), pkt::TCP, &pkt::tcp(b""));
        let bad6 = frame.ipv6(v6("fd00:6::6"), &[], pkt::UDP, &pkt::udp(b""));
        assert_eq!(run(&mut dp, &bad), XDP_DROP);
        assert_eq!(run(&mut dp, &good), XDP_PASS);
        assert_eq!(run(&mut dp, &bad6), XDP_DROP);
    }
    // Three tags is more than the datapath walks: passed as not-IP, never dropped.
    let deep = Frame::new().qinq().vlan(1).vlan(2).vlan(3).ipv4(
        v4("198.18.6.6"),
        pkt::TCP,
        &pkt::tcp(b""),
    );
    assert_eq!(run(&mut dp, &deep), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::NotIp), 1);
}

#[test]
fn truncated_headers_pass_and_are_counted() {
    let mut dp = load();
    ban(&mut dp, "198.18.7.7");
    ban(&mut dp, "fd00:7::7");
    let full = Frame::new().ipv4(v4("198.18.7.7"), pkt::TCP, &pkt::tcp(b""));
    // Ethernet alone (the kernel refuses shorter test frames), and cuts
    // inside the IPv4 header.
    for cut in [14usize, 14 + 10, 14 + 19] {
        assert_eq!(run(&mut dp, &full[..cut]), XDP_PASS, "cut at {cut}");
    }
    // IHL claims options that are not there.
    let mut opts = Frame::new().ipv4_full(
        v4("198.18.7.7"),
        pkt::TCP,
        &[],
        &[1, 1, 1, 1, 1, 1, 1, 1],
        0,
    );
    opts.truncate(14 + 22);
    assert_eq!(run(&mut dp, &opts), XDP_PASS);
    // IPv6 header cut short.
    let v6full = Frame::new().ipv6(v6("fd00:7::7"), &[], pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &v6full[..14 + 30]), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Truncated), 5);
    assert_eq!(count(&dp, Verdict::Drop, Reason::Blocklisted), 0);
    // A whole IP header from a banned source with a cut TCP header is still
    // dropped: the ban needs only the source address.
    assert_eq!(run(&mut dp, &full[..14 + 20 + 8]), XDP_DROP);
    // ...while a clean source with a cut TCP header passes, counted as truncated.
    let clean = Frame::new().ipv4(v4("198.18.7.8"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &clean[..14 + 20 + 8]), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Truncated), 6);
}

#[test]
fn ipv4_options_and_fragments() {
    let mut dp = load();
    ban(&mut dp, "198.18.8.8");
    let with_opts = Frame::new().ipv4_full(
        v4("198.18.8.8"),
        pkt::TCP,
        &pkt::tcp(b""),
        &[0x94, 4, 0, 0],
        0,
    );
    assert_eq!(run(&mut dp, &with_opts), XDP_DROP);
    let clean_opts = Frame::new().ipv4_full(
        v4("198.18.8.9"),
        pkt::TCP,
        &pkt::tcp(b""),
        &[0x94, 4, 0, 0],
        0,
    );
    assert_eq!(run(&mut dp, &clean_opts), XDP_PASS);
    // Non-first fragment: no TCP header inside, source still known.
    let frag = Frame::new().ipv4_full(
        v4("198.18.8.8"),
        pkt::TCP,
        b"middle of a segment",
        &[],
        0x2000 | 185,
    );
    assert_eq!(run(&mut dp, &frag), XDP_DROP);
    let clean_frag = Frame::new().ipv4_full(v4("198.18.8.9"), pkt::TCP, b"xx", &[], 185);
    assert_eq!(run(&mut dp, &clean_frag), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Clean), 2);
    // IPv6 non-first fragment.
    ban(&mut dp, "fd00:8::8");
    let f6 = Frame::new().ipv6(
        v6("fd00:8::8"),
        &[(44, pkt::frag_ext(100, false))],
        pkt::TCP,
        b"tail",
    );
    assert_eq!(run(&mut dp, &f6), XDP_DROP);
}

#[test]
fn unknown_ethertypes_and_malformed_ip_pass() {
    let mut dp = load();
    ban(&mut dp, "198.18.1.1");
    let ip_like = Frame::new().ipv4(v4("198.18.1.1"), pkt::TCP, &pkt::tcp(b""));
    for ethertype in [0x0806u16, 0x88cc, 0x8847, 0x1234] {
        let f = Frame::new().raw(ethertype, &ip_like[14..]);
        assert_eq!(run(&mut dp, &f), XDP_PASS, "ethertype {ethertype:#x}");
    }
    assert_eq!(count(&dp, Verdict::Pass, Reason::NotIp), 4);
    // IPv4 ethertype with a version-6 header, and an IHL below 5.
    let mut bad_version = ip_like.clone();
    bad_version[14] = 0x65;
    let mut bad_ihl = ip_like.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(run(&mut dp, &bad_version), XDP_PASS);
    assert_eq!(run(&mut dp, &bad_ihl), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Malformed), 2);
    assert_eq!(count(&dp, Verdict::Drop, Reason::Blocklisted), 0);
}

#[test]
fn allowlist_beats_blocklist() {
    let mut dp = load();
    ban(&mut dp, "198.18.2.0/24");
    ban(&mut dp, "198.18.2.5");
    ban(&mut dp, "fd00:2::/48");
    let allow = AllowEntry {
        created_ns: clock::boot_ns(),
        hits: 0,
    };
    dp.insert_allow(net_of("198.18.2.5"), &allow).unwrap();
    dp.insert_allow(net_of("fd00:2::/64"), &allow).unwrap();
    let f = |s: &str| Frame::new().ipv4(v4(s), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f("198.18.2.5")), XDP_PASS);
    assert_eq!(run(&mut dp, &f("198.18.2.6")), XDP_DROP);
    let g = |s: &str| Frame::new().ipv6(v6(s), &[], pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &g("fd00:2::99")), XDP_PASS);
    assert_eq!(run(&mut dp, &g("fd00:2:0:1::99")), XDP_DROP);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Allowlisted), 2);
    let hits: u64 = dp
        .allow_entries()
        .unwrap()
        .iter()
        .map(|(_, e)| e.hits)
        .sum();
    assert_eq!(hits, 2);
}

#[test]
fn expired_entries_stop_dropping_without_userspace() {
    let mut dp = load();
    let now = clock::boot_ns();
    dp.insert_block(net_of("198.18.3.3"), &entry(now - 1))
        .unwrap();
    dp.insert_block(net_of("198.18.3.0/24"), &entry(now + 3_600_000_000_000))
        .unwrap();
    dp.insert_block(net_of("fd00:3::3"), &entry(now - 1))
        .unwrap();
    // The host entry expired but the live range still covers it.
    let f = Frame::new().ipv4(v4("198.18.3.3"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_DROP);
    let g = Frame::new().ipv6(v6("fd00:3::3"), &[], pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &g), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::Expired), 1);
    // A ban that expires a moment from now drops, then stops by itself.
    let soon = clock::boot_ns() + 300_000_000;
    dp.insert_block(net_of("fd00:3::4"), &entry(soon)).unwrap();
    let h = Frame::new().ipv6(v6("fd00:3::4"), &[], pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &h), XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(run(&mut dp, &h), XDP_PASS);
}

#[test]
fn monitor_mode_counts_and_passes() {
    let mut dp = load();
    ban(&mut dp, "198.18.5.5");
    dp.set_mode(Mode::Monitor).unwrap();
    let f = Frame::new().ipv4(v4("198.18.5.5"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Monitor, Reason::Blocklisted), 1);
    assert_eq!(count(&dp, Verdict::Drop, Reason::Blocklisted), 0);
    dp.set_mode(Mode::Enforce).unwrap();
    assert_eq!(run(&mut dp, &f), XDP_DROP);
}

#[test]
fn long_extension_chains_pass_unless_banned() {
    let mut dp = load();
    ban(&mut dp, "fd00:5::5");
    let chain: Vec<(u8, Vec<u8>)> = (0..10).map(|_| (60u8, pkt::opts_ext())).collect();
    let clean = Frame::new().ipv6(v6("fd00:5::6"), &chain, pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &clean), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::ExtChainTooLong), 1);
    // Padding the chain does not smuggle a banned source past the NIC.
    let banned = Frame::new().ipv6(v6("fd00:5::5"), &chain, pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &banned), XDP_DROP);
    // Seven extension headers (the documented most) still reach TCP;
    // eight pass uninspected, counted.
    let seven: Vec<(u8, Vec<u8>)> = (0..7).map(|_| (60u8, pkt::opts_ext())).collect();
    let ok = Frame::new().ipv6(v6("fd00:5::6"), &seven, pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &ok), XDP_PASS);
    assert_eq!(
        count(&dp, Verdict::Pass, Reason::ExtChainTooLong),
        1,
        "7 headers are parsed through"
    );
    assert_eq!(count(&dp, Verdict::Pass, Reason::Clean), 1);
    let eight: Vec<(u8, Vec<u8>)> = (0..8).map(|_| (60u8, pkt::opts_ext())).collect();
    let long = Frame::new().ipv6(v6("fd00:5::6"), &eight, pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &long), XDP_PASS);
    assert_eq!(count(&dp, Verdict::Pass, Reason::ExtChainTooLong), 2);
}

#[test]
fn removal_clears_prefilter_without_hiding_neighbours() {
    let mut dp = load();
    ban(&mut dp, "198.18.12.1");
    ban(&mut dp, "198.18.12.2");
    assert!(dp.remove_block(net_of("198.18.12.1")).unwrap());
    dp.maintain().unwrap();
    let f = |s: &str| Frame::new().ipv4(v4(s), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f("198.18.12.1")), XDP_PASS);
    assert_eq!(run(&mut dp, &f("198.18.12.2")), XDP_DROP);
    assert!(!dp.remove_block(net_of("198.18.12.1")).unwrap());
}

#[test]
fn tc_program_makes_the_same_decisions() {
    let mut dp = load();
    ban(&mut dp, "198.18.11.0/24");
    let bad = Frame::new().ipv4(v4("198.18.11.9"), pkt::TCP, &pkt::tcp(b""));
    let good = Frame::new().ipv4(v4("198.18.10.9"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run_tc(&mut dp, &bad), TC_ACT_SHOT);
    assert_eq!(run_tc(&mut dp, &good), TCX_NEXT);
}

mod limits {
    use std::{collections::BTreeMap, thread::sleep, time::Duration};

    use tollgate::limits::LimitSpec;

    use super::*;

    fn set(dp: &mut Datapath, default: Option<LimitSpec>, ports: &[(u16, LimitSpec)], v6: u8) {
        let table: BTreeMap<u16, _> = ports.iter().map(|(p, s)| (*p, s.to_cfg())).collect();
        dp.set_limits(default.map(|s| s.to_cfg()), &table, v6)
            .unwrap();
    }

    fn pps(rate: u32, burst: u32) -> LimitSpec {
        LimitSpec {
            pps: Some(rate),
            burst: Some(burst),
            ..LimitSpec::default()
        }
    }

    fn udp4(src: &str, dport: u16) -> Vec<u8> {
        Frame::new().ipv4(v4(src), pkt::UDP, &pkt::udp_to(dport, b"x"))
    }

    fn passes(dp: &mut Datapath, f: &[u8], n: usize) -> usize {
        (0..n).filter(|_| run(dp, f) == XDP_PASS).count()
    }

    #[test]
    fn burst_then_refill() {
        let mut dp = load();
        set(&mut dp, Some(pps(10, 5)), &[], 64);
        let f = udp4("198.18.20.1", 53);
        assert_eq!(passes(&mut dp, &f, 8), 5, "burst of 5");
        assert_eq!(count(&dp, Verdict::Drop, Reason::RateLimited), 3);
        // 10 pps: after 300 ms about 3 more tokens (timing is loose on a busy machine).
        sleep(Duration::from_millis(300));
        let refilled = passes(&mut dp, &f, 10);
        assert!((2..=5).contains(&refilled), "refilled {refilled}");
        // Another source has its own bucket.
        assert_eq!(passes(&mut dp, &udp4("198.18.20.2", 53), 5), 5);
    }

    #[test]
    fn ipv6_sources_aggregate_per_prefix() {
        let mut dp = load();
        set(&mut dp, Some(pps(1, 3)), &[], 64);
        let a = Frame::new().ipv6(v6("fd00:20:1:1::a"), &[], pkt::UDP, &pkt::udp_to(53, b""));
        let b = Frame::new().ipv6(v6("fd00:20:1:1::b"), &[], pkt::UDP, &pkt::udp_to(53, b""));
        let other = Frame::new().ipv6(v6("fd00:20:1:2::a"), &[], pkt::UDP, &pkt::udp_to(53, b""));
        assert_eq!(passes(&mut dp, &a, 2), 2);
        assert_eq!(passes(&mut dp, &b, 3), 1, "same /64 shares the bucket");
        assert_eq!(passes(&mut dp, &other, 3), 3, "another /64 does not");
        // With a /48 aggregation the other /64 shares it too.
        let mut dp = load();
        set(&mut dp, Some(pps(1, 3)), &[], 48);
        assert_eq!(passes(&mut dp, &a, 2) + passes(&mut dp, &other, 3), 3);
    }

    #[test]
    fn syn_limit_counts_only_syns() {
        let mut dp = load();
        let spec = LimitSpec {
            syn_rate: Some(1),
            syn_burst: Some(2),
            ..LimitSpec::default()
        };
        set(&mut dp, None, &[(443, spec)], 64);
        let syn = Frame::new().ipv4(v4("198.18.21.1"), pkt::TCP, &pkt::tcp_to(443, 0x02, b""));
        let ack = Frame::new().ipv4(
            v4("198.18.21.1"),
            pkt::TCP,
            &pkt::tcp_to(443, 0x10, b"data"),
        );
        let synack = Frame::new().ipv4(v4("198.18.21.1"), pkt::TCP, &pkt::tcp_to(443, 0x12, b""));
        assert_eq!(passes(&mut dp, &syn, 4), 2);
        assert_eq!(count(&dp, Verdict::Drop, Reason::SynLimited), 2);
        assert_eq!(
            passes(&mut dp, &ack, 20),
            20,
            "established traffic is not a new connection"
        );
        assert_eq!(passes(&mut dp, &synack, 5), 5);
        // Other ports have no limit.
        let syn80 = Frame::new().ipv4(v4("198.18.21.1"), pkt::TCP, &pkt::tcp_to(80, 0x02, b""));
        assert_eq!(passes(&mut dp, &syn80, 5), 5);
    }

    #[test]
    fn port_classes_are_separate() {
        let mut dp = load();
        set(&mut dp, Some(pps(100, 2)), &[(8080, pps(100, 4))], 64);
        let api = udp4("198.18.22.1", 8080);
        let dns = udp4("198.18.22.1", 53);
        assert_eq!(passes(&mut dp, &api, 6), 4);
        assert_eq!(
            passes(&mut dp, &dns, 6),
            2,
            "default class has its own bucket"
        );
        let b = dp.buckets().unwrap();
        assert_eq!(b.len(), 2);
        let api_bucket = b.iter().find(|(k, _)| k.class == 8080).unwrap().1;
        assert_eq!((api_bucket.passed, api_bucket.dropped), (4, 2));
    }

    #[test]
    fn byte_rate() {
        let mut dp = load();
        let spec = LimitSpec {
            bps: Some(1000),
            bps_burst: Some(1000),
            ..LimitSpec::default()
        };
        set(&mut dp, Some(spec), &[], 64);
        let big = Frame::new().ipv4(v4("198.18.23.1"), pkt::UDP, &pkt::udp_to(53, &[0u8; 558]));
        assert_eq!(big.len(), 600);
        assert_eq!(
            passes(&mut dp, &big, 4),
            2,
            "1000 B burst admits two 600 B frames"
        );
    }

    #[test]
    fn allowlisted_sources_are_never_limited() {
        let mut dp = load();
        set(&mut dp, Some(pps(1, 1)), &[], 64);
        let allow = AllowEntry {
            created_ns: clock::boot_ns(),
            hits: 0,
        };
        dp.insert_allow(net_of("198.18.24.0/24"), &allow).unwrap();
        assert_eq!(passes(&mut dp, &udp4("198.18.24.9", 53), 10), 10);
        assert_eq!(passes(&mut dp, &udp4("198.18.25.9", 53), 10), 1);
    }

    #[test]
    fn monitor_mode_counts_and_passes_over_limit() {
        let mut dp = load();
        set(&mut dp, Some(pps(1, 2)), &[], 64);
        dp.set_mode(Mode::Monitor).unwrap();
        assert_eq!(passes(&mut dp, &udp4("198.18.26.1", 53), 6), 6);
        assert_eq!(count(&dp, Verdict::Monitor, Reason::RateLimited), 4);
    }

    #[test]
    fn offenders_are_reported_once_a_second() {
        let mut dp = load();
        set(&mut dp, Some(pps(1, 1)), &[], 64);
        let mut events = dp.take_events().unwrap();
        assert_eq!(passes(&mut dp, &udp4("198.18.27.1", 53), 50), 1);
        let mut got = Vec::new();
        while let Some(item) = events.next() {
            let ev: tollgate_common::RateEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            got.push(ev);
        }
        assert_eq!(got.len(), 1, "one event per source per second");
        assert_eq!(got[0].reason, Reason::RateLimited as u32);
        assert_eq!(&got[0].key.addr[12..], &[198, 18, 27, 1]);
    }

    #[test]
    fn clearing_limits_lets_everything_through() {
        let mut dp = load();
        set(&mut dp, Some(pps(1, 1)), &[], 64);
        assert_eq!(passes(&mut dp, &udp4("198.18.28.1", 53), 3), 1);
        set(&mut dp, None, &[], 64);
        assert_eq!(passes(&mut dp, &udp4("198.18.28.1", 53), 3), 3);
    }
}

/// Verifier complexity baselines: how many instructions the verifier walks
/// for each program. The limit is 1,000,000; a change that doubles a count
/// should be a conscious one, so the test prints the counts and fails well
/// before the kernel would refuse the program.
#[test]
fn verifier_complexity_stays_within_budget() {
    let mut dp = load();
    let xdp = dp
        .xdp()
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .unwrap_or(0);
    let tc = dp
        .tc()
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .unwrap_or(0);
    let egress = dp
        .tc_egress()
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .unwrap_or(0);
    let mut tail = |name: &str| {
        dp.ebpf_mut()
            .unwrap()
            .program(name)
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count()
            .unwrap_or(0)
    };
    use tollgate_common::programs::{TC_PROXY, TC_SAMPLE, XDP_PROXY, XDP_SAMPLE};
    let (xdp_proxy, xdp_sample) = (tail(XDP_PROXY), tail(XDP_SAMPLE));
    let (tc_proxy, tc_sample) = (tail(TC_PROXY), tail(TC_SAMPLE));
    eprintln!(
        "verified instructions: xdp {xdp}, tc {tc}, tc egress {egress}, xdp proxy {xdp_proxy}, \
         xdp sample {xdp_sample}, tc proxy {tc_proxy}, tc sample {tc_sample}"
    );
    for (name, n) in [
        ("xdp", xdp),
        ("tc", tc),
        ("tc egress", egress),
        ("xdp proxy", xdp_proxy),
        ("xdp sample", xdp_sample),
        ("tc proxy", tc_proxy),
        ("tc sample", tc_sample),
    ] {
        assert!(n > 0, "{name}: the kernel reported no count");
        assert!(
            n < 500_000,
            "{name}: {n} verified instructions, half the kernel's limit"
        );
    }
}

/// The socket programs are loaded lazily by the agent; the verifier must
/// accept them too.
#[test]
fn socket_programs_pass_the_verifier() {
    let mut dp = load();
    let sockops = dp
        .sockops()
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .unwrap_or(0);
    dp.attach_stream().unwrap();
    let stream = dp
        .ebpf_mut()
        .unwrap()
        .program(tollgate_common::programs::STREAM)
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .unwrap_or(0);
    eprintln!("verified instructions: sock_ops {sockops}, stream {stream}");
    for (name, n) in [("sock_ops", sockops), ("stream verdict", stream)] {
        assert!(n > 0, "{name}: not loaded, or the kernel reported no count");
        assert!(
            n < 500_000,
            "{name}: {n} verified instructions, half the kernel's limit"
        );
    }
}

/// The benchmark programs are only in the benchmark build's object.
#[test]
fn the_agent_object_carries_no_benchmark_programs() {
    let mut dp = load();
    let names: Vec<String> = dp
        .ebpf_mut()
        .unwrap()
        .programs()
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == tollgate_common::programs::XDP_INGRESS)
    );
    let bench = names
        .iter()
        .any(|n| n == tollgate_common::programs::BENCH_PASS);
    assert_eq!(
        bench,
        cfg!(feature = "bench"),
        "benchmark programs present: {bench}, programs {names:?}"
    );
}

/// Connections from trusted proxies: the PROXY header's client decides.
mod proxy {
    use super::*;

    /// Runs a frame through one hook's ingress program; the verdict as XDP's.
    type Run = fn(&mut Datapath, &[u8]) -> u32;

    fn tc_as_xdp(dp: &mut Datapath, frame: &[u8]) -> u32 {
        match run_tc(dp, frame) {
            TC_ACT_SHOT => XDP_DROP,
            TCX_NEXT => XDP_PASS,
            v => panic!("tc verdict {v}"),
        }
    }

    /// The proxy path is the same code at both hooks: every case runs on
    /// each, on a fresh datapath.
    fn both(case: fn(Run)) {
        for (hook, run) in [("xdp", run as Run), ("tc", tc_as_xdp as Run)] {
            eprintln!("hook {hook}");
            case(run);
        }
    }

    const PROXY: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
    const ACK_PSH: u8 = 0x18;
    const FIN_ACK: u8 = 0x11;

    /// A TCP segment from the proxy (source port `sport`) to port 8080.
    fn seg(sport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = pkt::tcp_to(8080, flags, payload);
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        Frame::new().ipv4(PROXY, 6, &t)
    }

    fn v1(client: &str) -> Vec<u8> {
        format!("PROXY TCP4 {client} 198.18.255.1 51000 8080\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .into_bytes()
    }

    fn v2(client: std::net::IpAddr) -> Vec<u8> {
        let mut h = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
        ];
        match client {
            std::net::IpAddr::V4(a) => {
                h.extend_from_slice(&[0x11, 0, 12]);
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&[198, 18, 255, 1, 0xc7, 0x38, 0x1f, 0x90]);
            }
            std::net::IpAddr::V6(a) => {
                h.extend_from_slice(&[0x21, 0, 36]);
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                h.extend_from_slice(&[0xc7, 0x38, 0x1f, 0x90]);
            }
        }
        h.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        h
    }

    fn setup() -> Datapath {
        let mut dp = load();
        dp.set_trusted(&[net_of("198.18.7.0/24")]).unwrap();
        ban(&mut dp, "198.18.9.9");
        ban(&mut dp, "fd00:9::/64");
        dp
    }

    #[test]
    fn a_new_connection_on_a_reused_port_forgets_the_old_client() {
        both(a_new_connection_on_a_reused_port_forgets_the_old_client_on);
    }

    fn a_new_connection_on_a_reused_port_forgets_the_old_client_on(run: Run) {
        let mut dp = setup();
        // Connection 1 carries the banned client and ends without a FIN this
        // program saw (e.g. lost or taken by another path).
        assert_eq!(
            run(&mut dp, &seg(1100, ACK_PSH, &v1("198.18.9.9"))),
            XDP_DROP
        );
        assert_eq!(run(&mut dp, &seg(1100, ACK_PSH, b"x")), XDP_DROP);
        // The proxy reuses the source port for a clean client: the SYN
        // passes and clears the stale entry, the new header is judged.
        assert_eq!(run(&mut dp, &seg(1100, 0x02, b"")), XDP_PASS);
        assert_eq!(
            run(&mut dp, &seg(1100, ACK_PSH, &v1("198.18.9.10"))),
            XDP_PASS
        );
        assert_eq!(run(&mut dp, &seg(1100, ACK_PSH, b"y")), XDP_PASS);
        // A SYN-ACK is not a new connection: a banned flow stays banned.
        assert_eq!(
            run(&mut dp, &seg(1101, ACK_PSH, &v1("198.18.9.9"))),
            XDP_DROP
        );
        assert_eq!(run(&mut dp, &seg(1101, 0x12, b"")), XDP_DROP);
    }

    #[test]
    fn a_banned_client_behind_a_proxy_is_dropped_per_connection() {
        both(a_banned_client_behind_a_proxy_is_dropped_per_connection_on);
    }

    fn a_banned_client_behind_a_proxy_is_dropped_per_connection_on(run: Run) {
        let mut dp = setup();
        // The proxy itself is never judged as the banned client.
        assert_eq!(run(&mut dp, &seg(1000, 0x02, b"")), XDP_PASS);
        // Connection 1 carries the banned client: its header packet and every
        // later packet drop; its FIN drops and forgets the connection.
        assert_eq!(
            run(&mut dp, &seg(1000, ACK_PSH, &v1("198.18.9.9"))),
            XDP_DROP
        );
        assert_eq!(
            run(&mut dp, &seg(1000, ACK_PSH, b"GET /2 HTTP/1.1\r\n\r\n")),
            XDP_DROP
        );
        assert_eq!(run(&mut dp, &seg(1000, FIN_ACK, b"")), XDP_DROP);
        // Connection 2 from the same proxy carries a clean client: passes.
        assert_eq!(
            run(&mut dp, &seg(1001, ACK_PSH, &v1("198.18.9.10"))),
            XDP_PASS
        );
        assert_eq!(
            run(&mut dp, &seg(1001, ACK_PSH, b"GET /3 HTTP/1.1\r\n\r\n")),
            XDP_PASS
        );
        // v2, IPv4 and IPv6 (banned by its /64).
        assert_eq!(
            run(
                &mut dp,
                &seg(1002, ACK_PSH, &v2("198.18.9.9".parse().unwrap()))
            ),
            XDP_DROP
        );
        assert_eq!(
            run(
                &mut dp,
                &seg(1003, ACK_PSH, &v2("fd00:9::77".parse().unwrap()))
            ),
            XDP_DROP
        );
        assert_eq!(
            run(
                &mut dp,
                &seg(1004, ACK_PSH, &v2("fd00:8::77".parse().unwrap()))
            ),
            XDP_PASS
        );
        // A header alone in its segment (HAProxy writes it separately).
        let mut bare = v2("198.18.9.9".parse().unwrap());
        bare.truncate(28);
        assert_eq!(run(&mut dp, &seg(1005, ACK_PSH, &bare)), XDP_DROP);
        assert_eq!(
            run(&mut dp, &seg(1005, ACK_PSH, b"GET / HTTP/1.1\r\n\r\n")),
            XDP_DROP
        );
        assert!(count(&dp, Verdict::Drop, Reason::Blocklisted) >= 5);
    }

    #[test]
    fn x_forwarded_for_names_the_client_of_a_connection() {
        both(x_forwarded_for_names_the_client_of_a_connection_on);
    }

    fn x_forwarded_for_names_the_client_of_a_connection_on(run: Run) {
        let mut dp = setup();
        let req = |xff: &str| {
            format!("GET /items HTTP/1.1\r\nHost: api\r\nUser-Agent: x\r\n{xff}Accept: */*\r\n\r\n")
                .into_bytes()
        };
        // The right-most entry of the last header is the proxy's own view.
        assert_eq!(
            run(
                &mut dp,
                &seg(4000, ACK_PSH, &req("X-Forwarded-For: 198.18.9.9\r\n"))
            ),
            XDP_DROP
        );
        assert_eq!(
            run(&mut dp, &seg(4000, ACK_PSH, b"GET /again HTTP/1.1\r\n\r\n")),
            XDP_DROP
        );
        // A client writing the banned address on the left changes nothing.
        assert_eq!(
            run(
                &mut dp,
                &seg(
                    4001,
                    ACK_PSH,
                    &req("x-forwarded-for: 198.18.9.9, 198.18.9.10\r\n")
                )
            ),
            XDP_PASS
        );
        assert_eq!(
            run(
                &mut dp,
                &seg(
                    4002,
                    ACK_PSH,
                    &req("X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 198.18.9.10,198.18.9.9\r\n")
                )
            ),
            XDP_DROP
        );
        // A header only in the body is not a header.
        let mut body = req("");
        body.extend_from_slice(b"\r\nX-Forwarded-For: 198.18.9.9\r\n");
        assert_eq!(run(&mut dp, &seg(4003, ACK_PSH, &body)), XDP_PASS);
        // Garbage values pass.
        for (i, v) in [
            "X-Forwarded-For: unknown\r\n",
            "X-Forwarded-For: 198.18.9\r\n",
            "X-Forwarded-For:\r\n",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                run(&mut dp, &seg(4010 + i as u16, ACK_PSH, &req(v))),
                XDP_PASS,
                "{v}"
            );
        }
    }

    #[test]
    fn what_is_not_a_proxy_header_passes() {
        both(what_is_not_a_proxy_header_passes_on);
    }

    fn what_is_not_a_proxy_header_passes_on(run: Run) {
        let mut dp = setup();
        let cases: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nX-Real-IP: 198.18.9.9\r\nX-Forwarded-Fo: 198.18.9.9\r\n\r\n",
            b"PROXY TCP4 198.18.9\r\n",
            b"PROXY TCP4 198.18.9.999 198.18.255.1 1 2\r\n\r\n",
            b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 198.18.9.9x 198.18.255.1 1 2\r\n",
            b"\r\n\r\n\x00\r\nQUIT\n\x20\x11\x00\x0c\xc6\x12\x09\x09",
        ];
        for (i, c) in cases.iter().enumerate() {
            let port = 2000 + u16::try_from(i).unwrap();
            assert_eq!(run(&mut dp, &seg(port, ACK_PSH, c)), XDP_PASS, "case {i}");
            // Nor does the rest of such a connection drop.
            assert_eq!(
                run(&mut dp, &seg(port, ACK_PSH, b"more")),
                XDP_PASS,
                "case {i}"
            );
        }
        // A header in the middle of a connection is not a header.
        assert_eq!(
            run(&mut dp, &seg(2100, ACK_PSH, b"GET / HTTP/1.1\r\n\r\n")),
            XDP_PASS
        );
        assert_eq!(
            run(&mut dp, &seg(2100, ACK_PSH, &v1("198.18.9.9"))),
            XDP_PASS
        );
        // Without trusted proxies, a PROXY line from anyone means nothing.
        dp.set_trusted(&[]).unwrap();
        assert_eq!(
            run(&mut dp, &seg(2200, ACK_PSH, &v1("198.18.9.9"))),
            XDP_PASS
        );
    }

    #[test]
    fn the_agent_can_arm_a_connection_and_the_proxy_is_not_rate_limited() {
        both(the_agent_can_arm_a_connection_and_the_proxy_is_not_rate_limited_on);
    }

    fn the_agent_can_arm_a_connection_and_the_proxy_is_not_rate_limited_on(run: Run) {
        let mut dp = setup();
        let spec = tollgate::limits::LimitSpec {
            pps: Some(1),
            burst: Some(2),
            ..tollgate::limits::LimitSpec::default()
        };
        let table: std::collections::BTreeMap<u16, _> = [(8080, spec.to_cfg())].into();
        dp.set_limits(None, &table, 64).unwrap();
        // Plain connections through the proxy (no header): the proxy's own
        // address is not limited as one client.
        for i in 0..20 {
            assert_eq!(
                run(&mut dp, &seg(3000 + i, ACK_PSH, b"GET / HTTP/1.1\r\n\r\n")),
                XDP_PASS
            );
        }
        // One real client over many connections is limited as itself.
        let verdicts: Vec<u32> = (0..6)
            .map(|i| run(&mut dp, &seg(3100 + i, ACK_PSH, &v1("198.18.9.20"))))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == XDP_PASS).count(),
            2,
            "{verdicts:?}"
        );
        // A connection the agent attributes (X-Forwarded-For) and arms.
        assert_eq!(
            run(&mut dp, &seg(3200, ACK_PSH, b"GET / HTTP/1.1\r\n\r\n")),
            XDP_PASS
        );
        let key = tollgate_common::FlowKey {
            client: PROXY.to_ipv6_mapped().octets(),
            server: Ipv4Addr::new(198, 18, 255, 1).to_ipv6_mapped().octets(),
            client_port: 3200,
            server_port: 8080,
        };
        dp.arm_proxy_flow(key, "198.18.9.30".parse().unwrap())
            .unwrap();
        assert_eq!(
            run(&mut dp, &seg(3200, ACK_PSH, b"GET /x HTTP/1.1\r\n\r\n")),
            XDP_DROP
        );
        assert_eq!(run(&mut dp, &seg(3200, 0x14, b"")), XDP_DROP);
        assert!(dp.proxy_flow(&key).is_none(), "RST forgets the connection");
    }

    /// A segment from the proxy at sequence number `seq`.
    fn seg_at(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = pkt::tcp_to(8080, flags, payload);
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        Frame::new().ipv4(PROXY, 6, &t)
    }

    /// A request head whose `X-Forwarded-For` (naming `client`) comes after
    /// a 3 KiB cookie.
    fn padded_head(client: &str) -> Vec<u8> {
        let pad = "a".repeat(3 * 1024);
        format!(
            "GET /items HTTP/1.1\r\nHost: api\r\nCookie: c={pad}\r\n\
             X-Forwarded-For: {client}\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes()
    }

    /// Runs `head` cut at `cuts` as consecutive segments (sequence numbers
    /// from 1); the verdict of each.
    fn segments(run: Run, dp: &mut Datapath, sport: u16, head: &[u8], cuts: &[usize]) -> Vec<u32> {
        let mut at = 0;
        let mut out = Vec::new();
        for &end in cuts.iter().chain([head.len()].iter()) {
            let seq = 1 + u32::try_from(at).unwrap();
            out.push(run(dp, &seg_at(sport, seq, ACK_PSH, &head[at..end])));
            at = end;
        }
        out
    }

    #[test]
    fn x_forwarded_for_is_found_across_the_packets_of_a_long_head() {
        both(x_forwarded_for_is_found_across_the_packets_of_a_long_head_on);
    }

    fn x_forwarded_for_is_found_across_the_packets_of_a_long_head_on(run: Run) {
        let mut dp = setup();
        let bad = padded_head("198.18.9.9");
        let name = bad
            .windows(16)
            .position(|w| w == b"X-Forwarded-For:")
            .unwrap();
        // Three segments, the last cut inside the header's name: the two
        // first pass (the head is not complete), the one that completes it
        // names the banned client and drops, and so does what follows.
        let v = segments(run, &mut dp, 5000, &bad, &[1400, name + 5]);
        assert_eq!(v, [XDP_PASS, XDP_PASS, XDP_DROP]);
        let last = seg_at(
            5000,
            1 + u32::try_from(name + 5).unwrap(),
            ACK_PSH,
            &bad[name + 5..],
        );
        assert_eq!(run(&mut dp, &last), XDP_DROP, "its retransmission");
        assert_eq!(
            run(
                &mut dp,
                &seg_at(5000, 1 + u32::try_from(bad.len()).unwrap(), ACK_PSH, b"x")
            ),
            XDP_DROP
        );
        // The same head for a clean client passes, segment by segment.
        let good = padded_head("198.18.9.10");
        let v = segments(run, &mut dp, 5001, &good, &[1400, name + 5]);
        assert_eq!(v, [XDP_PASS; 3]);
        // Two segments cut inside the address, and a retransmission of the
        // first in between: the scan resumes where it left off.
        let value = name + "X-Forwarded-For: 198.18.".len();
        assert_eq!(
            run(&mut dp, &seg_at(5002, 1, ACK_PSH, &bad[..value])),
            XDP_PASS
        );
        assert_eq!(
            run(&mut dp, &seg_at(5002, 1, ACK_PSH, &bad[..1000])),
            XDP_PASS
        );
        let rest = seg_at(
            5002,
            1 + u32::try_from(value).unwrap(),
            ACK_PSH,
            &bad[value..],
        );
        assert_eq!(run(&mut dp, &rest), XDP_DROP);
        // The whole head in one 3 KiB segment (scanned in several chunks).
        assert_eq!(segments(run, &mut dp, 5003, &bad, &[]), [XDP_DROP]);
        assert_eq!(segments(run, &mut dp, 5004, &good, &[]), [XDP_PASS]);
        // Only the last header's right-most entry counts, wherever the
        // packets are cut.
        let mut two = padded_head("198.18.9.9");
        let at = two.len() - 2;
        two.splice(at..at, b"X-Forwarded-For: 198.18.9.10\r\n".iter().copied());
        assert_eq!(
            segments(run, &mut dp, 5005, &two, &[1000, 2500, name + 20]),
            [XDP_PASS; 4]
        );
        // A gap (a segment missing): the scan cannot follow what the server
        // will read and gives up; nothing drops (the agent arms such flows).
        assert_eq!(
            run(&mut dp, &seg_at(5006, 1, ACK_PSH, &bad[..1400])),
            XDP_PASS
        );
        let after_gap = seg_at(5006, 2801, ACK_PSH, &bad[2800..]);
        assert_eq!(run(&mut dp, &after_gap), XDP_PASS);
        assert_eq!(
            run(&mut dp, &seg_at(5006, 1401, ACK_PSH, &bad[1400..2800])),
            XDP_PASS
        );
        assert_eq!(run(&mut dp, &after_gap), XDP_PASS);
    }

    #[test]
    fn requests_through_a_proxy_are_sampled_at_either_hook() {
        both(requests_through_a_proxy_are_sampled_at_either_hook_on);
    }

    fn requests_through_a_proxy_are_sampled_at_either_hook_on(run: Run) {
        let mut dp = setup();
        let cfg = tollgate_common::SampleCfg {
            first_packets: 4,
            one_in: 1,
            max_bytes: 1024,
            reserved: 0,
        };
        dp.set_api_ports(&[8080].into(), cfg).unwrap();
        let mut ring = dp.take_samples().unwrap();
        let head = padded_head("198.18.9.10");
        // Through the proxy (proxy program, then sampler) and direct.
        assert_eq!(run(&mut dp, &seg_at(6000, 1, ACK_PSH, &head)), XDP_PASS);
        let mut t = pkt::tcp_to(8080, ACK_PSH, b"GET /direct HTTP/1.1\r\n\r\n");
        t[0..2].copy_from_slice(&6001u16.to_be_bytes());
        let direct = Frame::new().ipv4(v4("198.18.3.3"), 6, &t);
        assert_eq!(run(&mut dp, &direct), XDP_PASS);
        let mut got = Vec::new();
        while let Some(item) = ring.next() {
            let h = item.as_ptr().cast::<tollgate_common::SampleHeader>();
            // SAFETY: the record starts with its header (repr(C), Pod).
            let h = unsafe { h.read_unaligned() };
            let off = size_of::<tollgate_common::SampleHeader>();
            let data = item[off..off + h.captured as usize].to_vec();
            got.push((h.flow.client_port, h.payload_len, data));
        }
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        assert_eq!(got[0].0, 6000);
        assert_eq!(got[0].1 as usize, head.len());
        assert_eq!(got[0].2, head[..1024]);
        assert_eq!(got[1].0, 6001);
        assert!(got[1].2.starts_with(b"GET /direct"));
    }
}

/// NIC request sampling: the decision made in the ingress program, before
/// any tail call: a young flow's first packets, then one in N, and nothing
/// for packets to other ports.
mod sampling {
    use super::*;

    /// Runs a frame through one hook's ingress program.
    type Run = fn(&mut Datapath, &[u8]) -> u32;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
    const SYN: u8 = 0x02;
    const ACK_PSH: u8 = 0x18;

    /// A TCP segment from `CLIENT`, source port `sport`, to `dport`.
    fn seg(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = pkt::tcp_to(dport, flags, payload);
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        Frame::new().ipv4(CLIENT, 6, &t)
    }

    fn tc_run(dp: &mut Datapath, frame: &[u8]) -> u32 {
        run_tc(dp, frame)
    }

    #[test]
    fn young_flows_first_packets_then_one_in_n_and_other_ports_pay_nothing() {
        // The 1-in-N countdown is per CPU: keep every run on one.
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
        for (hook, run) in [("xdp", run as Run), ("tc", tc_run as Run)] {
            eprintln!("hook {hook}");
            case(run);
        }
    }

    fn case(run: Run) {
        let mut dp = load();
        let cfg = tollgate_common::SampleCfg {
            first_packets: 2,
            one_in: 1_000_000,
            max_bytes: 1024,
            reserved: 0,
        };
        dp.set_api_ports(&[8080].into(), cfg).unwrap();
        let mut ring = dp.take_samples().unwrap();
        let get = |p: u16, i: u32| format!("GET /{p}/{i} HTTP/1.1\r\n\r\n").into_bytes();
        // A fresh countdown takes the first packet it sees; later ones wait
        // for a gap of about a million.
        run(&mut dp, &seg(7000, 8080, ACK_PSH, &get(7000, 0)));
        // The SYN makes flow 7001 young: its first two payload packets are
        // taken, not the third.
        run(&mut dp, &seg(7001, 8080, SYN, b""));
        for i in 0..3 {
            run(&mut dp, &seg(7001, 8080, ACK_PSH, &get(7001, i)));
        }
        // A flow whose handshake was not seen: one in N only.
        for i in 0..3 {
            run(&mut dp, &seg(7002, 8080, ACK_PSH, &get(7002, i)));
        }
        let before = dp.sample_stats().unwrap();
        // Not an API port: not sampled, not even counted as skipped.
        for i in 0..3 {
            run(&mut dp, &seg(7003, 9090, ACK_PSH, &get(7003, i)));
        }
        let after = dp.sample_stats().unwrap();
        assert_eq!(before, after, "packets to port 9090 reached the sampler");
        let mut got = Vec::new();
        while let Some(item) = ring.next() {
            let h = item.as_ptr().cast::<tollgate_common::SampleHeader>();
            // SAFETY: the record starts with its header (repr(C), Pod).
            let h = unsafe { h.read_unaligned() };
            let off = size_of::<tollgate_common::SampleHeader>();
            got.push(String::from_utf8_lossy(&item[off..off + h.captured as usize]).into_owned());
        }
        let firsts: Vec<&str> = got.iter().filter_map(|g| g.split(' ').nth(1)).collect();
        assert_eq!(firsts, ["/7000/0", "/7001/0", "/7001/1"], "{got:?}");
        // taken, lost, skipped: the third of 7001 and all of 7002 skipped.
        assert_eq!(after[0], 3);
        assert_eq!(after[2], 4, "{after:?}");
    }
}

/// The benchmark's baselines measure what they claim: the bare lookup drops
/// a listed IPv4 source and passes any other (and non-IPv4 frames), and
/// `bench_rand` gives each run a source inside its range before the program
/// it measures decides.
#[cfg(feature = "bench")]
#[test]
fn bench_baselines_decide_as_described() {
    use aya::maps::{Array, HashMap, ProgramArray};
    use tollgate_common::programs::{BENCH_LOOKUP, BENCH_RAND};
    let mut dp = load();
    let run_bench = |dp: &mut Datapath, name: &'static str, frame: &[u8]| {
        let mut out = vec![0u8; frame.len() + 256];
        dp.extra_xdp(name)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap()
            .return_value
    };
    {
        let mut look: HashMap<_, [u8; 4], BlockEntry> =
            HashMap::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_LOOK4").unwrap()).unwrap();
        look.insert([198, 18, 7, 7], entry(0), 0).unwrap();
    }
    let f = |s: &str| Frame::new().ipv4(v4(s), pkt::UDP, &pkt::udp(b"x"));
    assert_eq!(run_bench(&mut dp, BENCH_LOOKUP, &f("198.18.7.7")), XDP_DROP);
    assert_eq!(run_bench(&mut dp, BENCH_LOOKUP, &f("198.18.7.8")), XDP_PASS);
    let v6 = Frame::new().ipv6(v6("fd00::1"), &[], pkt::UDP, &pkt::udp(b"x"));
    assert_eq!(run_bench(&mut dp, BENCH_LOOKUP, &v6), XDP_PASS);

    // bench_rand -> bench_lookup over 198.18.7.6/31: half the sources are
    // the listed one, so both verdicts show up, and nothing else.
    let target = dp
        .extra_xdp(BENCH_LOOKUP)
        .unwrap()
        .fd()
        .unwrap()
        .try_clone()
        .unwrap();
    {
        let mut jump: ProgramArray<_> =
            ProgramArray::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_JUMP").unwrap())
                .unwrap();
        jump.set(0, &target, 0).unwrap();
        let mut gen_cfg: Array<_, [u32; 4]> =
            Array::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_GEN").unwrap()).unwrap();
        gen_cfg.set(0, [0xc612_0706, 1, 0, 0], 0).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        seen.insert(run_bench(&mut dp, BENCH_RAND, &f("198.18.0.1")));
    }
    assert_eq!(seen, [XDP_DROP, XDP_PASS].into_iter().collect());
}

/// A map pinned under one of the datapath's names with another layout (an
/// older or newer version's, or one planted there: here TG_BLOCK6, 16-byte
/// keys, pinned as TG_BLOCK4) is replaced at load, never read or written at
/// the wrong stride; the datapath then bans and drops as usual.
#[test]
fn a_pinned_map_of_another_layout_is_replaced() {
    require_root();
    let base = format!("/sys/fs/bpf/tollgate-test-layout-{}", std::process::id());
    let (a, b) = (format!("{base}-a"), format!("{base}-b"));
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    drop(Datapath::load(Some(std::path::Path::new(&a)), Capacities::small()).unwrap());
    std::fs::create_dir_all(&b).unwrap();
    let six = aya::maps::MapData::from_pin(format!("{a}/TG_BLOCK6")).unwrap();
    six.pin(format!("{b}/TG_BLOCK4")).unwrap();
    let key = |p: &str| aya::maps::MapInfo::from_pin(p).unwrap().key_size();
    assert_eq!(key(&format!("{b}/TG_BLOCK4")), 16);
    let mut dp = Datapath::load(Some(std::path::Path::new(&b)), Capacities::small())
        .expect("a foreign pinned map must be replaced, not refused or used");
    assert_eq!(
        key(&format!("{b}/TG_BLOCK4")),
        4,
        "the foreign map is still pinned"
    );
    ban(&mut dp, "198.18.7.7");
    let f = Frame::new().ipv4(v4("198.18.7.7"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_DROP);
    let f = Frame::new().ipv4(v4("198.18.7.8"), pkt::TCP, &pkt::tcp(b""));
    assert_eq!(run(&mut dp, &f), XDP_PASS);
}

/// A datapath dropped while the kernel still verifies its programs (a
/// start that fails during the restore) waits for the verifier thread
/// before its maps' descriptors close: the programs being loaded refer to
/// the maps by descriptor number, and a number closed and reused meanwhile
/// would hand the kernel another file or map.
#[test]
fn a_datapath_dropped_during_verification_outlives_its_verifier() {
    require_root();
    let dp = Datapath::load_background(None, Capacities::small()).unwrap();
    // The thread records its id as it starts.
    let mut tid = None;
    for _ in 0..200 {
        tid = dp.verifier_tid();
        if tid.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let tid = tid.expect("the verifier thread started");
    let task = format!("/proc/self/task/{tid}");
    assert!(
        std::path::Path::new(&task).exists(),
        "verification ended before the drop; the test proves nothing"
    );
    drop(dp);
    // The kernel reaps a joined thread's task within moments; a verifier
    // still running takes hundreds of milliseconds more.
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(2));
        !std::path::Path::new(&task).exists()
    });
    assert!(gone, "the verifier thread outlived the datapath");
}
