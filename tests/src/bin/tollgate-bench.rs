//! `cargo xtask bench xdp`: what the datapath costs per packet.
//!
//! 1. In the kernel through BPF_PROG_TEST_RUN (>= 1,000,000 repeats each):
//!    the trivial XDP_PASS floor, and Tollgate on a passing and on a dropped
//!    packet with 0, 10,000 and 1,000,000 block entries (a realistic mix).
//!    Repeating one packet keeps its map entries in cache: this is the
//!    single-source cost.
//! 2. On the wire, with sources drawn at random: a live-frames generator
//!    sends IPv4 packets from random addresses of 198.18.0.0/15 (every one
//!    banned, among 1,000,000 entries) over a veth pair; the receiving side
//!    runs Tollgate, then a bare program doing one hash lookup of the source
//!    in a map of `TG_BLOCK4`'s shape and capacity holding the same IPv4
//!    hosts, then the trivial XDP_DROP floor, then nftables with a set of the
//!    same entries. Reported: receive CPU time per packet, read from the
//!    (threaded) NAPI thread.
//!    Where this kernel refuses live frames (EPERM without CAP_SYS_RESOURCE),
//!    an AF_PACKET socket sends instead and the run says so.
//! 3. Kernel memory the maps take at 1,000,000 entries.
//!
//! Between 1 and 2, without the wire's noise: Tollgate, the bare one-lookup
//! program and the drop floor on random banned sources in the kernel
//! (BPF_PROG_TEST_RUN of `bench_rand`, which gives each run a random source
//! and tail-calls the program measured). `TG_BENCH_NO_WIRE=1` stops there.
//!
//! Ratios are computed against baselines measured in the same run.
//!
//! `cargo xtask bench sampling`: samples per second through the agent's
//! pipeline (`ApiHandle::handle`) on a generated mix of API traffic, and
//! the per-packet time sampling adds to the XDP program (with and without
//! API ports configured, in the same run).

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, TestRunResult, Xdp, XdpMode},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tollgate::{
    clock,
    datapath::{Capacities, Datapath},
};
use tollgate_common::{BanReason, BlockEntry, programs};
use tollgate_tests::{pkt, sh};

const REPEAT: u32 = 1_000_000;

fn main() {
    if !cfg!(feature = "bench") {
        eprintln!(
            "tollgate-bench: built without the benchmark programs; run it through \
             `cargo xtask bench` (or build it with `--features bench`)"
        );
        std::process::exit(2);
    }
    let which = std::env::args().nth(1).unwrap_or_else(|| "xdp".into());
    match which.as_str() {
        "xdp" => xdp(),
        "ratelimit" => ratelimit(),
        "sampling" => sampling(),
        "detect" => detect(std::env::args().nth(2)),
        "graphql" => tollgate_tests::gqlbench::run(),
        "block-latency" => {
            let trials = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(60);
            tollgate_tests::latency::run(trials);
        }
        "startup" => tollgate_tests::startup::run(),
        "fleet" => {
            let arg = |i: usize, d: usize| {
                std::env::args()
                    .nth(i)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(d)
            };
            tollgate_tests::fleet::run(arg(2, 200), arg(3, 2), arg(4, 3));
        }
        "parity" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let Some((corpus, extra)) = args.split_first() else {
                eprintln!("usage: tollgate-bench parity CORPUS.jsonl [AGENT FLAGS]");
                std::process::exit(2);
            };
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            tollgate_tests::parity::run(corpus, &extra);
        }
        "capture" => {
            tollgate_tests::capture::run(std::env::args().nth(2).and_then(|r| r.parse().ok()))
        }
        "tls" => tollgate_tests::tlsbench::run(
            std::env::args().nth(2).and_then(|r| r.parse().ok()),
            std::env::args().nth(3),
        ),
        "h2" => tollgate_tests::h2bench::run(std::env::args().nth(2).and_then(|r| r.parse().ok())),
        "ratelimit-wire" => {
            let mut dp = Datapath::load(None, caps()).unwrap();
            ratelimit_wire(&mut dp);
        }
        other => {
            eprintln!(
                "unknown benchmark '{other}' (known: xdp, ratelimit, ratelimit-wire, sampling, detect, graphql, block-latency, startup, capture, parity, tls, fleet, h2)"
            );
            std::process::exit(2);
        }
    }
}

fn caps() -> Capacities {
    Capacities {
        // The bare one-lookup baseline's map has this capacity too.
        block4: programs::BENCH_LOOKUP_ENTRIES,
        block6: 1 << 19,
        block4_lpm: 1 << 17,
        block6_lpm: 1 << 16,
        allow: 1024,
        ..Capacities::small()
    }
}

fn entry() -> BlockEntry {
    BlockEntry {
        expires_ns: 0,
        created_ns: clock::boot_ns(),
        hits: 0,
        reason: BanReason::Feed as u32,
        reserved: 0,
    }
}

/// `n` block entries: 70 % IPv4, 30 % IPv6; 95 % single hosts, 5 % ranges
/// (IPv4 /16–/31, mostly /24; IPv6 /48–/127, mostly /64). Nothing in it
/// covers 198.18.0.0/15 or fd00::/8, which the benchmark's packets use.
fn mix(n: usize, seed: u64) -> Vec<IpNet> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let lab4: Ipv4Net = "198.18.0.0/15".parse().unwrap();
    let lab6: Ipv6Net = "fd00::/8".parse().unwrap();
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    while out.len() < n {
        let range = rng.u8(0..100) < 5;
        let net = if rng.u8(0..100) < 70 {
            let len = if range {
                *[16u8, 20, 22, 24, 24, 24, 24, 26, 28, 31]
                    .get(rng.usize(0..10))
                    .unwrap()
            } else {
                32
            };
            let a = Ipv4Addr::from(rng.u32(0x0100_0000..0xe000_0000));
            let net = Ipv4Net::new(a, len).unwrap().trunc();
            if lab4.contains(&net) || net.contains(&lab4) {
                continue;
            }
            IpNet::V4(net)
        } else {
            let len = if range {
                *[48u8, 56, 64, 64, 64, 96, 112, 127]
                    .get(rng.usize(0..8))
                    .unwrap()
            } else {
                128
            };
            let a =
                Ipv6Addr::from(0x2000_0000_0000_0000_0000_0000_0000_0000u128 | (rng.u128(..) >> 3));
            let net = Ipv6Net::new(a, len).unwrap().trunc();
            if lab6.contains(&net) {
                continue;
            }
            IpNet::V6(net)
        };
        if seen.insert(net) {
            out.push(net);
        }
    }
    out
}

fn frame_v4(src: Ipv4Addr) -> Vec<u8> {
    pkt::Frame::new().ipv4(src, pkt::UDP, &pkt::udp(&[0u8; 18]))
}

fn frame_v6(src: Ipv6Addr) -> Vec<u8> {
    pkt::Frame::new().ipv6(src, &[], pkt::UDP, &pkt::udp(&[0u8; 18]))
}

/// Kernel-reported ns per run over `REPEAT` runs (best of 3, to shed noise).
fn ns_per_packet(prog: &mut Xdp, frame: &[u8], want: u32) -> u64 {
    ns_per_run(prog, frame, Some(want))
}

/// The same for any program BPF_PROG_TEST_RUN accepts; `want`: the
/// verdict every run must return.
fn ns_per_run<P>(prog: &P, frame: &[u8], want: Option<u32>) -> u64
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    (0..3)
        .map(|_| {
            let mut out = vec![0u8; frame.len() + 256];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    repeat: REPEAT,
                    ..TestRunOptions::default()
                })
                .unwrap();
            if let Some(want) = want {
                assert_eq!(r.return_value, want, "unexpected verdict");
            }
            u64::try_from(r.duration.as_nanos()).unwrap()
        })
        .min()
        .unwrap()
}

/// Kernel memory of this process's Tollgate maps (fdinfo `memlock`, which
/// this kernel reports as the map's actual memory use).
fn map_memory() -> u64 {
    let ours: std::collections::HashSet<u32> = aya::maps::loaded_maps()
        .flatten()
        .filter(|m| {
            m.name_as_str()
                .is_some_and(|n| n.starts_with("TG_") && !n.starts_with("TG_BENCH"))
        })
        .map(|m| m.id())
        .collect();
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let is_ours = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("map_id:")
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
            .is_some_and(|id| ours.contains(&id));
        if is_ours {
            total += text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("memlock:")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
        }
    }
    total
}

fn xdp() {
    tollgate_tests::require_root();
    println!("# cargo xtask bench xdp\n");
    println!(
        "## Per-packet time in the kernel (BPF_PROG_TEST_RUN, {REPEAT} repeats, one source, best of 3)\n"
    );
    let mut dp = Datapath::load(None, caps()).unwrap();
    let clean4 = frame_v4(Ipv4Addr::new(198, 18, 1, 1));
    // Shares the banned host's prefilter bucket: the pass path's worst case.
    let near4 = frame_v4(Ipv4Addr::new(198, 18, 0, 1));
    let banned4 = frame_v4(Ipv4Addr::new(198, 18, 0, 2));
    let clean6 = frame_v6("fd00:1::1".parse().unwrap());
    let near6 = frame_v6("fd00::1".parse().unwrap());
    let banned6 = frame_v6("fd00::2".parse().unwrap());
    let floor = ns_per_packet(dp.extra_xdp(programs::BENCH_PASS).unwrap(), &clean4, 2);
    println!("floor (XDP_PASS program): {floor} ns\n");
    println!(
        "Pass = a clean source; near = a clean source sharing a banned host's prefilter bucket"
    );
    println!("(same IPv4 /24 or IPv6 /48): the pass path's worst case.\n");
    println!(
        "| entries | v4 pass | v4 near | v4 drop | v6 pass | v6 near | v6 drop | floor | pass,drop / floor | near / floor |"
    );
    println!(
        "|--------:|--------:|--------:|--------:|--------:|--------:|--------:|------:|------------------:|-------------:|"
    );
    let mut mem = 0;
    let mut loaded = 0usize;
    let all = mix(1_000_000, 7);
    for n in [0usize, 10_000, 1_000_000] {
        let t = Instant::now();
        dp.insert_blocks(all[loaded..n.max(loaded)].iter().map(|net| (*net, entry())))
            .unwrap();
        loaded = n.max(loaded);
        // The banned sources the drop path is measured with.
        dp.insert_block("198.18.0.2/32".parse().unwrap(), &entry())
            .unwrap();
        dp.insert_block("fd00::2/128".parse().unwrap(), &entry())
            .unwrap();
        let fill = t.elapsed();
        let floor_now = ns_per_packet(dp.extra_xdp(programs::BENCH_PASS).unwrap(), &clean4, 2);
        let prog = dp.xdp().unwrap();
        let p4 = ns_per_packet(prog, &clean4, 2);
        let n4 = ns_per_packet(prog, &near4, 2);
        let d4 = ns_per_packet(prog, &banned4, 1);
        let p6 = ns_per_packet(prog, &clean6, 2);
        let n6 = ns_per_packet(prog, &near6, 2);
        let d6 = ns_per_packet(prog, &banned6, 1);
        let f = floor_now.max(1) as f64;
        println!(
            "| {n} | {p4} ns | {n4} ns | {d4} ns | {p6} ns | {n6} ns | {d6} ns | {floor_now} ns | {:.1}x | {:.1}x |",
            p4.max(d4).max(p6).max(d6) as f64 / f,
            n4.max(n6) as f64 / f,
        );
        eprintln!("(filled {n} entries in {:.1}s)", fill.as_secs_f64());
        if n == 1_000_000 {
            mem = map_memory();
        }
    }
    println!(
        "\nKernel memory of the maps at 1,000,000 entries: {:.1} MiB (fdinfo memlock)\n",
        mem as f64 / 1048576.0
    );
    wire(&mut dp, &all);
}

struct Netns {
    name: String,
    orig: File,
}

impl Netns {
    fn enter(name: &str) -> Self {
        let orig = File::open("/proc/self/ns/net").unwrap();
        let fd = File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        Self {
            name: name.into(),
            orig,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.orig, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let s = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{dev}/address"),
    ]);
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// CPU time (ns) the kernel thread doing `dev`'s NAPI has used.
fn napi_cpu_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn napi_thread(dev: &str) -> u32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            && comm.trim().starts_with("napi/")
            && comm.trim().contains(dev)
        {
            return pid;
        }
    }
    panic!("no threaded NAPI kernel thread for {dev}");
}

/// Veth NAPI exists only while an XDP program is attached, and a new one
/// gets a new kernel thread: make it threaded, find it, pin it to CPU 1.
fn napi_on_cpu1(ns: &str) -> u32 {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        "echo 1 > /sys/class/net/tgbrcv/threaded",
    ]);
    let pid = napi_thread("tgbrcv");
    sh(&["taskset", "-pc", "1", &pid.to_string()]);
    pid
}

const WIRE_PACKETS: u32 = 4_000_000;

/// Sends `WIRE_PACKETS` random-source frames from `gen`; returns receive
/// CPU ns per packet and packets the receiver processed.
fn blast(
    gen_dp: &mut Datapath,
    gen_ifindex: u32,
    frame: &[u8],
    napi_pid: u32,
    counted: &dyn Fn() -> u64,
) -> (f64, u64) {
    let before_cpu = napi_cpu_ns(napi_pid);
    let before = counted();
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&u32::try_from(frame.len()).unwrap().to_ne_bytes());
    ctx[12..16].copy_from_slice(&gen_ifindex.to_ne_bytes());
    let t = Instant::now();
    let mut sent = 0;
    while !SOCKET_GEN.load(Ordering::Relaxed)
        && sent < WIRE_PACKETS
        && t.elapsed() < Duration::from_secs(30)
    {
        let prog = gen_dp.extra_xdp(programs::BENCH_GEN).unwrap();
        match prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 500_000,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        }) {
            Ok(_) => sent += 500_000,
            Err(aya::programs::ProgramError::SyscallError(e))
                if sent == 0 && e.io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                SOCKET_GEN.store(true, Ordering::Relaxed);
                println!(
                    "(live frames refused with EPERM here, as without CAP_SYS_RESOURCE: the \
                     packets are sent from an AF_PACKET socket instead, so they arrive as socket \
                     buffers, which adds the same copy to every receiver measured)\n"
                );
            }
            Err(e) => panic!("live-frames generator: {e}"),
        }
    }
    if SOCKET_GEN.load(Ordering::Relaxed) {
        let cfg: Array<_, [u32; 4]> =
            Array::try_from(gen_dp.ebpf_mut().unwrap().map("TG_BENCH_GEN").unwrap()).unwrap();
        let [base, mask, ..] = cfg.get(&0, 0).unwrap();
        send_socket(gen_ifindex, frame, base, mask);
    }
    std::thread::sleep(Duration::from_millis(200));
    let pkts = counted() - before;
    let cpu = napi_cpu_ns(napi_pid) - before_cpu;
    (cpu as f64 / pkts.max(1) as f64, pkts)
}

/// Set once live frames were refused: [`send_socket`] generates instead.
static SOCKET_GEN: AtomicBool = AtomicBool::new(false);

/// The second generator: `WIRE_PACKETS` frames (at most 30 s) from an
/// AF_PACKET socket on `ifindex` that bypasses the qdisc, in batches of 64,
/// each with a source `base | (random & mask)` (from a pool of 2^16 frames
/// made up front).
fn send_socket(ifindex: u32, frame: &[u8], base: u32, mask: u32) {
    const POOL: usize = 1 << 16;
    const BATCH: usize = 64;
    let src_off = 14 + 12;
    let len = frame.len();
    let mut rng = fastrand::Rng::with_seed(u64::from(mask) ^ 0x5eed);
    let mut pool = vec![0u8; POOL * len];
    for f in pool.chunks_exact_mut(len) {
        f.copy_from_slice(frame);
        f[src_off..src_off + 4].copy_from_slice(&(base | (rng.u32(..) & mask)).to_be_bytes());
    }
    // SAFETY: plain socket calls on a descriptor owned here; every pointer
    // handed to the kernel points into live local buffers of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = i32::try_from(ifindex).unwrap();
        let rc = libc::bind(
            fd,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut iov: Vec<libc::iovec> = pool
            .chunks_exact_mut(len)
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let t = Instant::now();
        let mut sent = 0usize;
        let mut at = 0usize;
        while sent < WIRE_PACKETS as usize && t.elapsed() < Duration::from_secs(30) {
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr().add(at), BATCH as u32, 0);
            if n > 0 {
                sent += n as usize;
            }
            at = (at + BATCH) % POOL;
        }
        libc::close(fd);
    }
}

/// A veth pair inside a private namespace (this thread enters it): frames
/// generated on `tgbgen` with random sources from 198.18.0.0/15 arrive on
/// `tgbrcv`, whose NAPI thread runs pinned on CPU 1.
struct WireLab {
    ns: String,
    gen_ifindex: u32,
    rcv_ifindex: u32,
    frame: Vec<u8>,
    gen_dp: Datapath,
    _guard: Netns,
}

impl WireLab {
    /// Sources are `198.18.0.0 | (random & mask)`.
    fn new(mask: u32) -> Self {
        let ns = format!("tgbench{}", std::process::id() % 100_000);
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "-n", &ns, "link", "add", "tgbgen", "type", "veth", "peer", "name", "tgbrcv",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "tgbgen", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "tgbrcv", "up"]);
        let rcv_mac = mac(&ns, "tgbrcv");
        let gen_mac = mac(&ns, "tgbgen");
        let guard = Netns::enter(&ns);
        let gen_ifindex = nix::net::if_::if_nametoindex("tgbgen").unwrap();
        let rcv_ifindex = nix::net::if_::if_nametoindex("tgbrcv").unwrap();
        let mut frame = frame_v4(Ipv4Addr::new(198, 18, 0, 1));
        frame[0..6].copy_from_slice(&rcv_mac);
        frame[6..12].copy_from_slice(&gen_mac);
        let mut gen_dp = Datapath::load(None, Capacities::small()).unwrap();
        {
            let mut cfg: Array<_, [u32; 4]> =
                Array::try_from(gen_dp.ebpf_mut().unwrap().map_mut("TG_BENCH_GEN").unwrap())
                    .unwrap();
            cfg.set(0, [0xc612_0000, mask, 0, 0], 0).unwrap();
        }
        pin_to_cpu(0);
        Self {
            ns,
            gen_ifindex,
            rcv_ifindex,
            frame,
            gen_dp,
            _guard: guard,
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// BPF_PROG_TEST_RUN of `bench_rand` with `target` (None: Tollgate) in
/// its slot: kernel ns per run, each run from a random source of
/// 198.18.0.0/15 (best of 3 x `REPEAT`).
fn rand_ns(dp: &mut Datapath, target: Option<&'static str>, want: u32) -> u64 {
    let fd = match target {
        None => dp.xdp().unwrap().fd().unwrap().try_clone().unwrap(),
        Some(name) => dp
            .extra_xdp(name)
            .unwrap()
            .fd()
            .unwrap()
            .try_clone()
            .unwrap(),
    };
    let mut jump: ProgramArray<_> =
        ProgramArray::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_JUMP").unwrap()).unwrap();
    jump.set(0, &fd, 0).unwrap();
    let frame = frame_v4(Ipv4Addr::new(198, 18, 0, 1));
    ns_per_run(
        dp.extra_xdp(programs::BENCH_RAND).unwrap(),
        &frame,
        Some(want),
    )
}

/// Random banned sources in the kernel, without the wire's noise: Tollgate,
/// the bare one-lookup program and the drop floor, each behind
/// `bench_rand` (which adds the same random source and tail call to all).
fn random_in_kernel(dp: &mut Datapath) {
    {
        let mut cfg: Array<_, [u32; 4]> =
            Array::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_GEN").unwrap()).unwrap();
        cfg.set(0, [0xc612_0000, 0x1_ffff, 0, 0], 0).unwrap();
    }
    println!(
        "## In the kernel, random sources from 198.18.0.0/15 (all banned; BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 3)\n"
    );
    let floor = rand_ns(dp, Some(programs::BENCH_DROP), 1);
    let tg = rand_ns(dp, None, 1);
    let bare = rand_ns(dp, Some(programs::BENCH_LOOKUP), 1);
    let floor2 = rand_ns(dp, Some(programs::BENCH_DROP), 1).min(floor);
    println!(
        "| program (after a random source and a tail call) | ns per packet | above the floor |"
    );
    println!("|---|--:|--:|");
    println!("| trivial XDP_DROP (floor) | {floor2} ns | 0 ns |");
    println!("| Tollgate | {tg} ns | {} ns |", tg.saturating_sub(floor2));
    println!(
        "| bare one-lookup | {bare} ns | {} ns |",
        bare.saturating_sub(floor2)
    );
    println!(
        "\nTollgate / bare one-lookup: {:.2}; above the floor: {:.2}\n",
        tg as f64 / bare.max(1) as f64,
        tg.saturating_sub(floor2) as f64 / bare.saturating_sub(floor2).max(1) as f64
    );
}

/// Attaches the bench program `name` (counting in `TG_BENCH_CNT`) to the
/// receiver, blasts, detaches: CPU ns per packet and packets counted.
fn counted_on_wire(
    dp: &mut Datapath,
    name: &'static str,
    ns: &str,
    rcv_ifindex: u32,
    gen_dp: &mut Datapath,
    gen_ifindex: u32,
    frame: &[u8],
) -> (f64, u64) {
    let link = dp
        .extra_xdp(name)
        .unwrap()
        .attach_to_if_index(rcv_ifindex, XdpMode::Driver)
        .unwrap();
    let cnt: PerCpuArray<_, u64> =
        PerCpuArray::try_from(dp.ebpf_mut().unwrap().map("TG_BENCH_CNT").unwrap()).unwrap();
    let counted = move || cnt.get(&0, 0).unwrap().iter().sum::<u64>();
    let napi = napi_on_cpu1(ns);
    let r = blast(gen_dp, gen_ifindex, frame, napi, &counted);
    dp.extra_xdp(name).unwrap().detach(link).unwrap();
    r
}

fn wire(dp: &mut Datapath, entries: &[IpNet]) {
    let mut w = WireLab::new(0x1_ffff);
    let (ns, gen_ifindex, rcv_ifindex) = (w.ns.clone(), w.gen_ifindex, w.rcv_ifindex);

    // All 131,072 host addresses of the lab range are banned too.
    let lab: Vec<(IpNet, BlockEntry)> = (0u32..1 << 17)
        .map(|i| {
            (
                IpNet::V4(Ipv4Net::from(Ipv4Addr::from(0xc612_0000 | i))),
                entry(),
            )
        })
        .collect();
    dp.insert_blocks(lab).unwrap();
    let total = dp.block_count();
    // The bare one-lookup program: the same IPv4 hosts as TG_BLOCK4, inserted
    // in the same order, in a map of the same shape and capacity.
    let bare_keys = {
        let mut look: aya::maps::HashMap<_, [u8; 4], BlockEntry> =
            aya::maps::HashMap::try_from(dp.ebpf_mut().unwrap().map_mut("TG_BENCH_LOOK4").unwrap())
                .unwrap();
        let hosts = entries
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) if n.prefix_len() == 32 => Some(n.addr().octets()),
                _ => None,
            })
            .chain((0u32..1 << 17).map(|i| (0xc612_0000 | i).to_be_bytes()));
        let e = entry();
        let mut n = 0u64;
        for k in hosts {
            look.insert(k, e, 0).unwrap();
            n += 1;
        }
        n
    };
    random_in_kernel(dp);
    if std::env::var_os("TG_BENCH_NO_WIRE").is_some() {
        return;
    }
    println!(
        "## On the wire: random sources from 198.18.0.0/15 (all banned, among 1,000,000 entries)\n"
    );
    let frame = w.frame.clone();
    let gen_dp = &mut w.gen_dp;
    // The generator program must be attached somewhere for XDP_TX on veth;
    // the sending veth needs an XDP program on its peer to receive at all.
    pin_to_cpu(0);

    // Tollgate on the receiver.
    let link = dp
        .xdp()
        .unwrap()
        .attach_to_if_index(rcv_ifindex, XdpMode::Driver)
        .unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "sh",
        "-c",
        "echo 1 > /sys/class/net/tgbrcv/threaded",
    ]);
    let napi = napi_thread("tgbrcv");
    sh(&["taskset", "-pc", "1", &napi.to_string()]);
    let dropped_before = dp_drops(dp);
    let (tg_ns, tg_pkts) = blast(gen_dp, gen_ifindex, &frame, napi, &|| 0);
    let tg_dropped = dp_drops(dp) - dropped_before;
    let tg_ns = tg_ns * tg_pkts.max(1) as f64 / tg_dropped.max(1) as f64;
    dp.xdp().unwrap().detach(link).unwrap();

    let (bare_ns, bare_pkts) = counted_on_wire(
        dp,
        programs::BENCH_LOOKUP,
        &ns,
        rcv_ifindex,
        gen_dp,
        gen_ifindex,
        &frame,
    );
    // The floor on the wire: a program that only counts and drops.
    let (floor_ns, floor_pkts) = counted_on_wire(
        dp,
        programs::BENCH_DROP,
        &ns,
        rcv_ifindex,
        gen_dp,
        gen_ifindex,
        &frame,
    );

    // nftables on the receiver: a counting XDP_PASS so veth hands frames to
    // the stack, and a netdev ingress set of the same entries.
    let nft_file = std::env::temp_dir().join(format!("tgbench-{}.nft", std::process::id()));
    {
        let mut f = File::create(&nft_file).unwrap();
        writeln!(f, "table netdev tgbench {{").unwrap();
        writeln!(
            f,
            "  set b4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{"
        )
        .unwrap();
        let mut v4: Vec<String> = entries
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(ToString::to_string)
            .collect();
        v4.push("198.18.0.0/15".into());
        writeln!(f, "{} }} }}", v4.join(",\n")).unwrap();
        writeln!(
            f,
            "  set b6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{"
        )
        .unwrap();
        let v6: Vec<String> = entries
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)))
            .map(ToString::to_string)
            .collect();
        writeln!(f, "{} }} }}", v6.join(",\n")).unwrap();
        writeln!(f, "  chain ingress {{ type filter hook ingress device tgbrcv priority 0; ip saddr @b4 drop; ip6 saddr @b6 drop; }}").unwrap();
        writeln!(f, "}}").unwrap();
    }
    let t = Instant::now();
    let nft_ok = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f"])
        .arg(&nft_file)
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&nft_file);
    let nft_load = t.elapsed();
    let mut nft_result = None;
    if nft_ok {
        let counter = dp.extra_xdp(programs::BENCH_COUNT).unwrap();
        let link = counter
            .attach_to_if_index(rcv_ifindex, XdpMode::Driver)
            .unwrap();
        let cnt: PerCpuArray<_, u64> =
            PerCpuArray::try_from(dp.ebpf_mut().unwrap().map("TG_BENCH_CNT").unwrap()).unwrap();
        let counted = move || cnt.get(&0, 0).unwrap().iter().sum::<u64>();
        let napi = napi_on_cpu1(&ns);
        let r = blast(gen_dp, gen_ifindex, &frame, napi, &counted);
        nft_result = Some(r);
        dp.extra_xdp(programs::BENCH_COUNT)
            .unwrap()
            .detach(link)
            .unwrap();
    }
    drop(w);

    println!("| receiver | entries | packets processed | CPU per packet |");
    println!("|----------|--------:|------------------:|---------------:|");
    println!("| trivial XDP_DROP (floor) | 0 | {floor_pkts} | {floor_ns:.0} ns |");
    println!("| Tollgate XDP (drop) | {total} | {tg_dropped} | {tg_ns:.0} ns |");
    println!(
        "| bare one-lookup XDP (hash, drop on hit) | {bare_keys} | {bare_pkts} | {bare_ns:.0} ns |"
    );
    if let Some((ns_pp, pkts)) = nft_result {
        println!(
            "| nftables netdev ingress set (drop) | {} | {pkts} | {ns_pp:.0} ns |",
            entries.len() + 1
        );
    }
    if SOCKET_GEN.load(Ordering::Relaxed) && floor_ns >= tg_ns.min(bare_ns) {
        println!(
            "\n(the floor cost more than a lookup: the socket generator is slower than these \
             receivers, so their NAPI thread wakes for a few packets at a time and the wake-ups \
             weigh most on the cheapest one; these figures do not rank the programs: the \
             in-kernel random-source figures above do)"
        );
    }
    // Above the floor: what each receiver adds to the same delivery (the
    // socket generator's copy on receive weighs on the plain ratios).
    let above = |x: f64| (x - floor_ns).max(1.0);
    println!(
        "\nTollgate / bare one-lookup CPU per dropped packet: {:.2} (goal <= 1.2); above the floor: {:.2}; bare / floor: {:.2}",
        tg_ns / bare_ns,
        above(tg_ns) / above(bare_ns),
        bare_ns / floor_ns
    );
    match nft_result {
        Some((ns_pp, _)) => {
            println!(
                "Tollgate / nftables CPU per dropped packet: {:.2} (goal <= 0.5); above the floor: {:.2}; Tollgate / floor: {:.2} (nftables set loaded in {:.1}s)",
                tg_ns / ns_pp,
                above(tg_ns) / above(ns_pp),
                tg_ns / floor_ns,
                nft_load.as_secs_f64()
            );
        }
        None => println!("| nftables | - | - | failed to load the set (is nftables installed?) |"),
    }
}

fn dp_total(dp: &Datapath) -> u64 {
    dp.counters()
        .unwrap()
        .iter()
        .map(|(_, _, c)| c.packets)
        .sum()
}

fn dp_drops(dp: &Datapath) -> u64 {
    dp.counters()
        .unwrap()
        .iter()
        .filter(|(v, _, _)| *v == tollgate_common::Verdict::Drop)
        .map(|(_, _, c)| c.packets)
        .sum()
}

fn limits(dp: &mut Datapath, pps: u32, burst: u32) {
    let spec = tollgate::limits::LimitSpec {
        pps: Some(pps),
        burst: Some(burst),
        ..Default::default()
    };
    dp.set_limits(Some(spec.to_cfg()), &std::collections::BTreeMap::new(), 64)
        .unwrap();
}

/// Runs `frame` once through the program (fills a bucket for its source).
fn once(prog: &mut Xdp, frame: &[u8]) {
    let mut out = vec![0u8; frame.len() + 256];
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })
    .unwrap();
}

/// `cargo xtask bench ratelimit`.
fn ratelimit() {
    tollgate_tests::require_root();
    println!("# cargo xtask bench ratelimit\n");
    println!(
        "## Per-packet time with the limiter on (BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 3)\n"
    );
    let mut dp = Datapath::load(
        None,
        Capacities {
            buckets: 1 << 20,
            ..caps()
        },
    )
    .unwrap();
    let src = frame_v4(Ipv4Addr::new(198, 18, 1, 1));
    let floor = ns_per_packet(dp.extra_xdp(programs::BENCH_PASS).unwrap(), &src, 2);
    dp.insert_blocks(mix(1_000_000, 7).into_iter().map(|n| (n, entry())))
        .unwrap();
    println!("1,000,000 block entries loaded; floor (XDP_PASS program): {floor} ns\n");
    println!(
        "| tracked sources | under the limit (pass) | over the limit (drop) | pass / floor | drop / floor |"
    );
    println!(
        "|----------------:|-----------------------:|----------------------:|-------------:|-------------:|"
    );
    for tracked in [1usize, 1_000_000] {
        if tracked > 1 {
            limits(&mut dp, 1_000_000_000, 1);
            let t = Instant::now();
            let prog = dp.xdp().unwrap();
            for i in 0u32..1 << 17 {
                once(prog, &frame_v4(Ipv4Addr::from(0xc612_0000 | i)));
            }
            for i in 0..u32::try_from(tracked).unwrap() - (1 << 17) {
                let a = Ipv6Addr::from(
                    0xfd00_0000_0000_0000_0000_0000_0000_0001u128 | (u128::from(i) << 64),
                );
                once(prog, &frame_v6(a));
            }
            eprintln!(
                "(tracked {} sources in {:.1}s)",
                dp.buckets().unwrap().len(),
                t.elapsed().as_secs_f64()
            );
        }
        limits(&mut dp, 2_000_000_000, 2_000_000_000);
        let pass = ns_per_packet(dp.xdp().unwrap(), &src, 2);
        limits(&mut dp, 1000, 1000);
        let drop = ns_per_packet(dp.xdp().unwrap(), &src, 1);
        let f = floor.max(1) as f64;
        println!(
            "| {tracked} | {pass} ns | {drop} ns | {:.1}x | {:.1}x |",
            pass as f64 / f,
            drop as f64 / f
        );
    }

    println!("\n## Accounting across CPUs\n");
    // Two threads, pinned to different CPUs, hammer one source; every
    // packet that passes is counted once, whichever CPU it ran on.
    limits(&mut dp, 200_000, 100);
    let frame = frame_v4(Ipv4Addr::new(198, 18, 9, 9));
    let start = Instant::now();
    // Each thread opens the same loaded program through a pin.
    let pin =
        std::path::PathBuf::from(format!("/sys/fs/bpf/tollgate-bench-{}", std::process::id()));
    dp.xdp().unwrap().pin(&pin).unwrap();
    let handles: Vec<_> = (0..2usize)
        .map(|cpu| {
            let frame = frame.clone();
            let pin = pin.clone();
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                let prog =
                    Xdp::from_pin(&pin, aya_obj::programs::XdpAttachType::Interface).unwrap();
                let mut out = vec![0u8; frame.len() + 256];
                prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    repeat: 20_000_000,
                    ..TestRunOptions::default()
                })
                .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&pin);
    let b = dp
        .buckets()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.addr[12..] == [198, 18, 9, 9])
        .unwrap()
        .1;
    let expected = 100.0 + 200_000.0 * elapsed;
    println!(
        "2 CPUs x 20,000,000 packets from one source, limit 200,000 pps (burst 100), {elapsed:.2}s: \
         passed {} (expected at most {expected:.0}: {:.3}x), dropped {}",
        b.passed,
        b.passed as f64 / expected,
        b.dropped
    );
    ratelimit_wire(&mut dp);
}

fn ratelimit_wire(dp: &mut Datapath) {
    println!("\n## On the wire: a flood from 1,024 random sources, limited to 10 packets/s each\n");
    let mut w = WireLab::new(0x3ff);
    limits(dp, 10, 10);
    let before = dp_drops(dp);
    let before_all = dp_total(dp);
    let link = dp
        .xdp()
        .unwrap()
        .attach_to_if_index(w.rcv_ifindex, XdpMode::Driver)
        .unwrap();
    let napi = napi_on_cpu1(&w.ns);
    let frame = w.frame.clone();
    let (ns_all, processed) = blast(&mut w.gen_dp, w.gen_ifindex, &frame, napi, &|| 0);

    let _ = processed;
    let _ = processed;
    let dropped = dp_drops(dp) - before;
    let seen = dp_total(dp) - before_all;
    dp.xdp().unwrap().detach(link).unwrap();
    let tg_ns = ns_all / seen.max(1) as f64;

    let nft = "table netdev tgbench {\n\
        set m { type ipv4_addr; size 1048576; flags dynamic, timeout; timeout 30s; }\n\
        chain ingress { type filter hook ingress device tgbrcv priority 0; \
        add @m { ip saddr limit rate over 10/second burst 10 packets } drop; }\n}\n";
    let ok = Command::new("ip")
        .args(["netns", "exec", &w.ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(nft.as_bytes())?;
            c.wait()
        })
        .is_ok_and(|s| s.success());
    let mut nft_result = None;
    if ok {
        let link = dp
            .extra_xdp(programs::BENCH_COUNT)
            .unwrap()
            .attach_to_if_index(w.rcv_ifindex, XdpMode::Driver)
            .unwrap();
        let cnt: PerCpuArray<_, u64> =
            PerCpuArray::try_from(dp.ebpf_mut().unwrap().map("TG_BENCH_CNT").unwrap()).unwrap();
        let counted = move || cnt.get(&0, 0).unwrap().iter().sum::<u64>();
        let napi = napi_on_cpu1(&w.ns);
        nft_result = Some(blast(&mut w.gen_dp, w.gen_ifindex, &frame, napi, &counted));
        dp.extra_xdp(programs::BENCH_COUNT)
            .unwrap()
            .detach(link)
            .unwrap();
    }
    drop(w);
    println!("| receiver | packets processed | CPU per packet | absorbed per CPU-second |");
    println!("|----------|------------------:|---------------:|------------------------:|");
    println!(
        "| Tollgate XDP limiter | {seen} ({dropped} dropped) | {tg_ns:.0} ns | {:.2} M/s |",
        1e3 / tg_ns
    );
    match nft_result {
        Some((ns_pp, pkts)) => {
            println!(
                "| nftables netdev dynamic set + limit | {pkts} | {ns_pp:.0} ns | {:.2} M/s |",
                1e3 / ns_pp
            );
            println!(
                "\nTollgate absorbs {:.2}x the flood nftables does per CPU-second",
                ns_pp / tg_ns
            );
        }
        None => println!("| nftables | - | - | failed to load the ruleset |"),
    }
}

/// One ring-buffer record, as the kernel writes it.
fn record(flow: u32, dir: u8, seq: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut client = [0u8; 16];
    client[10] = 0xff;
    client[11] = 0xff;
    client[12..].copy_from_slice(&(0xc612_0000 | (flow >> 6)).to_be_bytes());
    let mut server = [0u8; 16];
    server[10] = 0xff;
    server[11] = 0xff;
    server[12..].copy_from_slice(&[198, 19, 0, 1]);
    let h = tollgate_common::SampleHeader {
        ts_ns: clock::boot_ns(),
        flow: tollgate_common::FlowKey {
            client,
            server,
            client_port: 10_000 + u16::try_from(flow & 0x3f).unwrap(),
            server_port: 8080,
        },
        direction: dir,
        tcp_flags: flags,
        family: 4,
        source: 0,
        seq,
        ifindex: 1,
        payload_len: u32::try_from(data.len()).unwrap(),
        captured: u32::try_from(data.len()).unwrap(),
        cookie: 0,
    };
    // SAFETY: SampleHeader is repr(C), 72 bytes without padding.
    let head = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(&h).cast::<u8>(),
            std::mem::size_of::<tollgate_common::SampleHeader>(),
        )
    };
    let mut r = head.to_vec();
    r.extend_from_slice(data);
    r
}

/// A recorded mix of API traffic: `flows` keep-alive connections, each
/// with several exchanges: GETs with typical headers, POST/PUT with JSON
/// bodies, a pipelined pair in one segment, responses with Content-Length
/// and chunked JSON bodies, a request split over two segments; each flow
/// ends with a FIN.
fn sample_mix(flows: u32) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut out = Vec::new();
    let hdrs = "Host: api.example.com\r\nUser-Agent: okhttp/4.12.0\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl\r\nX-Request-Id: 3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b\r\n";
    for f in 0..flows {
        let (mut rs, mut ps) = (1000u32, 5000u32);
        let send = |out: &mut Vec<Vec<u8>>, dir: u8, seq: &mut u32, flags: u8, d: &[u8]| {
            out.push(record(f, dir, *seq, flags, d));
            *seq = seq.wrapping_add(u32::try_from(d.len()).unwrap());
        };
        for x in 0..6u32 {
            let id = rng.u32(1..1_000_000);
            let body = format!(
                "{{\"id\":{id},\"name\":\"user{id}\",\"email\":\"u{id}@example.com\",\"roles\":[\"reader\",\"writer\"],\"active\":true}}"
            );
            let (req, resp) = match x {
                0 | 3 => (
                    format!("GET /api/v1/users/{id}?fields=name,email HTTP/1.1\r\n{hdrs}\r\n"),
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDate: Sat, 28 Nov 2026 12:00:00 GMT\r\n\r\n{body}",
                        body.len()
                    ),
                ),
                1 => (
                    format!(
                        "POST /api/v1/orders HTTP/1.1\r\n{hdrs}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                    format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    ),
                ),
                2 => (
                    // Pipelined: two requests in one segment, two responses in one.
                    format!(
                        "GET /api/v1/orders/{id} HTTP/1.1\r\n{hdrs}\r\nDELETE /api/v1/sessions/{:x} HTTP/1.1\r\n{hdrs}\r\n",
                        u64::from(id) * 0x1_0000_0001
                    ),
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\n{\"error\":\"not found\"}HTTP/1.1 204 No Content\r\n\r\n"
                        .to_owned(),
                ),
                _ => (
                    format!(
                        "PUT /api/v1/users/{id}/profile HTTP/1.1\r\n{hdrs}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                ),
            };
            if x == 4 {
                // Split over two segments.
                let (a, b) = req.as_bytes().split_at(req.len() / 2);
                send(&mut out, tollgate_common::DIR_REQUEST, &mut rs, 0x18, a);
                send(&mut out, tollgate_common::DIR_REQUEST, &mut rs, 0x18, b);
            } else {
                send(
                    &mut out,
                    tollgate_common::DIR_REQUEST,
                    &mut rs,
                    0x18,
                    req.as_bytes(),
                );
            }
            let fin = if x == 5 { 0x19 } else { 0x18 };
            send(
                &mut out,
                tollgate_common::DIR_RESPONSE,
                &mut ps,
                fin,
                resp.as_bytes(),
            );
        }
    }
    out
}

/// `cargo xtask bench sampling`.
fn sampling() {
    tollgate_tests::require_root();
    println!("# cargo xtask bench sampling\n");
    println!("## Pipeline throughput (one core, ApiHandle::handle, batches of 1024)\n");
    pin_to_cpu(0);
    let recs = sample_mix(20_000);
    let bytes: usize = recs.iter().map(Vec::len).sum();
    let policy = tollgate::agent::api::SamplingPolicy::default();
    let mut best = f64::MAX;
    let mut handle = None;
    for _ in 0..3 {
        let h = tollgate::agent::api::ApiHandle::new(
            &[8080],
            &policy,
            tollgate::engine::Pipeline::from_policy(&tollgate::policy::Policy::default()).unwrap(),
        );
        // No `tap` subscriber: events are built, not sent.
        let t = Instant::now();
        for batch in recs.chunks(1024) {
            h.handle(batch, 0.0);
        }
        best = best.min(t.elapsed().as_secs_f64());
        handle = Some(h);
    }
    let h = handle.unwrap();
    let st = h.state.lock().unwrap();
    let fs = st.flows.stats;
    println!(
        "{} samples ({:.1} MiB, {} flows, requests {}, responses {}, truncated {}): best of 3 {:.3}s = **{:.0} samples/s** ({:.0} MiB/s); inventory {} endpoints\n",
        recs.len(),
        bytes as f64 / 1048576.0,
        20_000,
        fs.requests,
        fs.responses,
        fs.truncated,
        best,
        recs.len() as f64 / best,
        bytes as f64 / 1048576.0 / best,
        st.inventory.list().len(),
    );
    drop(st);

    println!(
        "## What sampling adds to the XDP program (BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 3)\n"
    );
    let mut dp = Datapath::load(None, caps()).unwrap();
    let req = b"GET /api/v1/users/42 HTTP/1.1\r\nHost: api.example.com\r\nAccept: application/json\r\nAuthorization: Bearer abc\r\n\r\n";
    let frame = pkt::Frame::new().ipv4(
        Ipv4Addr::new(198, 18, 1, 1),
        pkt::TCP,
        &pkt::tcp_to(8080, 0x18, req),
    );
    let floor = ns_per_packet(dp.extra_xdp(programs::BENCH_PASS).unwrap(), &frame, 2);
    let off = ns_per_packet(dp.xdp().unwrap(), &frame, 2);
    let ports: std::collections::BTreeSet<u16> = [8080].into();
    dp.set_api_ports(&ports, policy.cfg(policy.one_in)).unwrap();
    let other = pkt::Frame::new().ipv4(
        Ipv4Addr::new(198, 18, 1, 1),
        pkt::TCP,
        &pkt::tcp_to(9090, 0x18, req),
    );
    let non_api = ns_per_packet(dp.xdp().unwrap(), &other, 2);
    let before = dp.sample_stats().unwrap();
    let on = ns_per_packet(dp.xdp().unwrap(), &frame, 2);
    let after = dp.sample_stats().unwrap();
    let sel = tollgate::agent::api::SamplingPolicy {
        first_packets: 0,
        one_in: 1_000_000,
        ..policy
    };
    dp.set_api_ports(&ports, sel.cfg(sel.one_in)).unwrap();
    let before_sel = dp.sample_stats().unwrap();
    let only_sel = ns_per_packet(dp.xdp().unwrap(), &frame, 2);
    let after_sel = dp.sample_stats().unwrap();
    let pct = |x: u64| (x as f64 / off.max(1) as f64 - 1.0) * 100.0;
    println!(
        "HTTP request packet ({} bytes) to API port 8080; floor (XDP_PASS program) {floor} ns\n",
        frame.len()
    );
    println!(
        "| configuration | ns/packet | extra vs no sampling | samples taken, lost, skipped (3 x {REPEAT} runs) |"
    );
    println!("|---|--:|--:|---|");
    println!("| no API ports (sampling off) | {off} ns | - | - |");
    let d = |a: [u64; 3], b: [u64; 3]| format!("{}, {}, {}", b[0] - a[0], b[1] - a[1], b[2] - a[2]);
    println!(
        "| default policy (first 4, 1 in 10, 1024 B), ring buffer not drained | {on} ns | {:+.1} % | {} |",
        pct(on),
        d(before, after)
    );
    println!(
        "| sampling on, same packet to a non-API port (9090) | {non_api} ns | {:+.1} % | - |",
        pct(non_api)
    );
    println!(
        "| first_packets=0, one_in=1000000 (selection cost only) | {only_sel} ns | {:+.1} % | {} |",
        pct(only_sel),
        d(before_sel, after_sel)
    );

    // What verification adds: the egress program notes the server's
    // acknowledgement on API connections (a port lookup, then a lookup in
    // the established-connection map). The XDP ingress path is unchanged.
    println!(
        "\n## What request verification adds at tcx egress (BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 3)\n"
    );
    let ack_from = |sport: u16| {
        let mut t = pkt::tcp_to(40_000, 0x10, b"");
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        pkt::Frame::new().ipv4(Ipv4Addr::new(198, 18, 1, 1), pkt::TCP, &t)
    };
    let (api_ack, other_ack) = (ack_from(8080), ack_from(9090));
    dp.set_api_ports(&ports, policy.cfg(policy.one_in)).unwrap();
    let egress = dp.tc_egress().unwrap();
    let other = ns_per_run(&*egress, &other_ack, None);
    let api = ns_per_run(&*egress, &api_ack, None);
    println!("| egress packet | ns/packet |");
    println!("|---|--:|");
    println!("| pure ACK from a non-API port (no verification work) | {other} ns |");
    println!(
        "| pure ACK from API port 8080 (port and connection lookups) | {api} ns ({:+} ns) |",
        api as i64 - other as i64
    );

    // tc ingress makes the same tail calls as XDP (its own table): what
    // they cost on the same request packet, against no tail call.
    println!(
        "\n## tc ingress with and without its tail calls (BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 3)\n"
    );
    let mut dp = Datapath::load(None, caps()).unwrap();
    let tc_none = ns_per_run(&*dp.tc().unwrap(), &frame, None);
    dp.set_api_ports(&ports, policy.cfg(policy.one_in)).unwrap();
    let tc_sample = ns_per_run(&*dp.tc().unwrap(), &frame, None);
    dp.set_trusted(&["198.18.1.0/24".parse().unwrap()]).unwrap();
    let tc_proxy = ns_per_run(&*dp.tc().unwrap(), &frame, None);
    let pct = |x: u64| (x as f64 / tc_none.max(1) as f64 - 1.0) * 100.0;
    println!("| tc ingress, same request packet | ns/packet | extra vs no tail call |");
    println!("|---|--:|--:|");
    println!("| sampling off: no tail call | {tc_none} ns | - |");
    println!(
        "| sampling on: tail call to the sampler (default policy, ring not drained) | {tc_sample} ns | {:+.1} % |",
        pct(tc_sample)
    );
    println!(
        "| from a trusted proxy: tail calls to the proxy judge, then the sampler (connection known after the first run) | {tc_proxy} ns | {:+.1} % |",
        pct(tc_proxy)
    );
}

/// `cargo xtask bench detect [CORPUS]`: requests per second on one core
/// through the agent's full default policy (parse, detectors, client
/// scores), on the corpus mix, against parsing alone in the same run.
fn detect(corpus: Option<String>) {
    // The corpus is not part of the repository.
    let Some(path) = corpus else {
        eprintln!("tollgate-bench detect: give the path to a JSON Lines corpus (`raw` fields)");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let raws: Vec<Vec<u8>> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["raw"].as_str().map(|r| r.as_bytes().to_vec()))
        .collect();
    assert!(!raws.is_empty(), "{path}: no requests");
    pin_to_cpu(0);
    let parse = |raw: &[u8]| match tollgate_detect::parse_request(raw) {
        Ok(tollgate_detect::Parsed::Complete { msg, .. }) => Some(msg),
        _ => None,
    };
    // Enough passes for ~2 s of work; at least 3.
    let passes = (400_000 / raws.len()).max(3);
    let t = Instant::now();
    let mut parsed = 0usize;
    for _ in 0..passes {
        for r in &raws {
            parsed += usize::from(std::hint::black_box(parse(r)).is_some());
        }
    }
    let parse_rate = (raws.len() * passes) as f64 / t.elapsed().as_secs_f64();
    let mut p = tollgate::engine::Pipeline::from_policy(&tollgate::policy::Policy::default())
        .expect("default policy");
    let t = Instant::now();
    let (mut bans, mut n) = (0usize, 0u64);
    for _ in 0..passes {
        for (i, r) in raws.iter().enumerate() {
            // 4,096 clients, so scores are kept and looked up as in the agent.
            let client = std::net::IpAddr::from([198, 18, (i >> 8 & 15) as u8, i as u8]);
            if let Some(req) = parse(r) {
                let d = p.on_request(Some(client), &req, n);
                bans += usize::from(d.ban.is_some());
            }
            n += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!(
        "detect: {} requests ({} distinct, {passes} passes, {} parsed per pass) through the default policy on one core",
        n,
        raws.len(),
        parsed / passes
    );
    println!(
        "  full pipeline: {rate:.0} requests/s ({:.2} us/request; {bans} bans); parsing alone: {parse_rate:.0} requests/s (pipeline = {:.1}x parse cost)",
        secs * 1e6 / n as f64,
        parse_rate / rate
    );
    println!("  goal: >= 100,000 requests/s per core");
}
