//! The one definition of everything the kernel programs and the agent share.
//!
//! - map names ([`maps`]) and sizes,
//! - map keys and values ([`BlockEntry`], [`AllowEntry`], [`Config`], [`Counter`]),
//! - verdicts and reasons ([`Verdict`], [`Reason`], [`BanReason`]),
//! - the prefilter layout ([`prefilter`]), computed identically on both sides.
//!
//! Every type is `#[repr(C)]` without implicit padding and its size is asserted,
//! so the two sides cannot drift apart.
#![no_std]

use core::mem::size_of;

/// Names of the maps, as the eBPF object declares them and as they are pinned
/// under the agent's bpffs directory (kernel map names are at most 15 bytes).
pub mod maps {
    /// [`super::Config`], one entry.
    pub const CONFIG: &str = "TG_CONFIG";
    /// Per-CPU [`super::Counter`]s indexed by [`super::counter_index`].
    pub const COUNTERS: &str = "TG_COUNTERS";
    /// IPv4 host bans: exact-match hash keyed by the address (network order bytes).
    pub const BLOCK4: &str = "TG_BLOCK4";
    /// IPv6 host bans: exact-match hash keyed by the 16 address bytes.
    pub const BLOCK6: &str = "TG_BLOCK6";
    /// IPv4 range bans (prefix shorter than /32): LPM trie.
    pub const BLOCK4_LPM: &str = "TG_BLOCK4_LPM";
    /// IPv6 range bans (prefix shorter than /128): LPM trie.
    pub const BLOCK6_LPM: &str = "TG_BLOCK6_LPM";
    /// IPv4 allowlist: LPM trie.
    pub const ALLOW4: &str = "TG_ALLOW4";
    /// IPv6 allowlist: LPM trie.
    pub const ALLOW6: &str = "TG_ALLOW6";
    /// IPv4 prefilter bitmap, see [`super::prefilter`].
    pub const PREFILTER4: &str = "TG_PRE4";
    /// IPv6 prefilter bitmap, see [`super::prefilter`].
    pub const PREFILTER6: &str = "TG_PRE6";
    /// Rate limits per destination port ([`super::LimitCfg`], 65,536 slots).
    pub const LIMITS: &str = "TG_LIMITS";
    /// Per-source rate state ([`super::BucketKey`] -> [`super::Bucket`]), LRU.
    pub const BUCKETS: &str = "TG_BUCKETS";
    /// Established connections per source ([`super::BucketKey`] -> `u64`),
    /// kept by the sock_ops program.
    pub const CONNS: &str = "TG_CONNS";
    /// Ring buffer of [`super::RateEvent`]s for the agent.
    pub const EVENTS: &str = "TG_EVENTS";
    /// API ports (65,536 slots; non-zero = sample this port's traffic).
    pub const API_PORTS: &str = "TG_API_PORTS";
    /// [`super::SampleCfg`], one entry.
    pub const SAMPLING: &str = "TG_SAMPLING";
    /// Per-flow sampling state ([`super::FlowKey`] -> [`super::FlowState`]), LRU.
    pub const FLOWS: &str = "TG_FLOWS";
    /// Ring buffer of [`super::SampleRecord`]s.
    pub const SAMPLES: &str = "TG_SAMPLES";
    /// Per-CPU sampling counters, indexed by [`super::sample_stat`].
    pub const SAMPLE_STATS: &str = "TG_SMPL_STATS";
    /// Young flows: a direct-mapped array of [`super::YoungFlow`] slots, set
    /// by a client's SYN to an API port (not pinned: per-connection state).
    pub const YOUNG: &str = "TG_YOUNG";
    /// Per-CPU countdown to the next 1-in-N sample (not pinned).
    pub const SAMPLE_GAP: &str = "TG_SMPL_GAP";
    /// Tail-call table of the XDP programs (not pinned): slots in [`super::jump`].
    pub const JUMP: &str = "TG_JUMP";
    /// Tail-call table of the TC ingress programs, the same slots (a table
    /// holds programs of one type only).
    pub const JUMP_TC: &str = "TG_JUMP_TC";
    /// Trusted proxies (IPv4): LPM trie, value unused.
    pub const TRUST4: &str = "TG_TRUST4";
    /// Trusted proxies (IPv6).
    pub const TRUST6: &str = "TG_TRUST6";
    /// Connections from trusted proxies: [`super::FlowKey`] (client = the
    /// proxy) -> [`super::ProxyFlow`] (the real client). LRU.
    pub const PROXY_FLOWS: &str = "TG_PFLOWS";
    /// Connections this host's kernel accepted (sock_ops, passive side):
    /// [`super::FlowKey`] -> [`super::Established`]. LRU. A request is judged
    /// for banning only on a flow found here (spoofed segments never are).
    pub const ESTABLISHED: &str = "TG_ESTAB";
    /// Sources that completed a TCP handshake with this host: address
    /// (IPv6 masked as for rate limits) -> boot-clock ns of the latest. LRU.
    /// Rate-limit escalation bans only such sources.
    pub const HANDSHAKES: &str = "TG_HSHAKE";
    /// API sockets whose requests are taken at the socket (sockhash, not
    /// pinned: when the programs go, the sockets go back to normal).
    pub const STREAM_SOCKETS: &str = "TG_SOCKS";
    /// Per-CPU TLS probe counters, indexed by [`super::tls_stat`] (not
    /// pinned: they count what this agent's probes did).
    pub const TLS_STATS: &str = "TG_TLS_STATS";
    /// Processes that use a probed TLS library (tgid -> unused): their
    /// accepts are announced. Filled by the probes and by the agent's
    /// discovery (not pinned).
    pub const TLS_PROCS: &str = "TG_TLS_PROCS";
    /// New TLS streams announced (ring buffer of payload-less sample
    /// headers, not pinned): read at once, apart from the coalesced
    /// samples, so each is resolved while its descriptor is open.
    pub const TLS_NEW: &str = "TG_TLS_NEW";
    /// Each open descriptor's TLS stream ([`super::TlsStreamKey`] ->
    /// [`super::TlsStream`], not pinned): the agent checks a stream's id
    /// here after resolving its descriptor, to prove the socket it found is
    /// that stream's.
    pub const TLS_STREAMS: &str = "TG_TLS_OFF";
    /// Per API socket (cookie): the stream offset up to which the stream
    /// program need not copy (a body the agent passes over). Not pinned.
    pub const STREAM_SKIP: &str = "TG_STREAM_SKIP";

    /// Every pinned map, for status output and for clean removal.
    pub const ALL: [&str; 24] = [
        CONFIG,
        COUNTERS,
        BLOCK4,
        BLOCK6,
        BLOCK4_LPM,
        BLOCK6_LPM,
        ALLOW4,
        ALLOW6,
        PREFILTER4,
        PREFILTER6,
        LIMITS,
        BUCKETS,
        CONNS,
        EVENTS,
        API_PORTS,
        SAMPLING,
        FLOWS,
        SAMPLES,
        SAMPLE_STATS,
        TRUST4,
        TRUST6,
        PROXY_FLOWS,
        ESTABLISHED,
        HANDSHAKES,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// The XDP ingress program.
    pub const XDP_INGRESS: &str = "tollgate_xdp";
    /// The same logic as a TC (tcx) ingress classifier.
    pub const TC_INGRESS: &str = "tollgate_tc";
    /// XDP request sampler, tail-called by [`XDP_INGRESS`].
    pub const XDP_SAMPLE: &str = "tollgate_xdp_sample";
    /// XDP handling of connections from trusted proxies (PROXY protocol
    /// header, real-client bans and limits), tail-called by [`XDP_INGRESS`].
    pub const XDP_PROXY: &str = "tollgate_xdp_proxy";
    /// [`XDP_SAMPLE`] as a TC program, tail-called by [`TC_INGRESS`].
    pub const TC_SAMPLE: &str = "tollgate_tc_sample";
    /// [`XDP_PROXY`] as a TC program, tail-called by [`TC_INGRESS`].
    pub const TC_PROXY: &str = "tollgate_tc_proxy";
    /// TC (tcx) egress: samples API responses.
    pub const TC_EGRESS: &str = "tollgate_tc_egress";
    /// sock_ops on the root cgroup: counts established connections per client.
    pub const SOCKOPS: &str = "tollgate_sockops";
    /// Stream verdict on API sockets: copies what they receive (requests).
    pub const STREAM: &str = "tollgate_stream";
    /// Uprobe at `SSL_read`'s entry (TLS plaintext, requests).
    pub const TLS_READ: &str = "tollgate_tls_read";
    /// Uprobe at `SSL_read_ex`'s entry.
    pub const TLS_READ_EX: &str = "tollgate_tls_read_ex";
    /// Uprobe at `SSL_write`'s entry (TLS plaintext, responses).
    pub const TLS_WRITE: &str = "tollgate_tls_write";
    /// Uprobe at `SSL_write_ex`'s entry.
    pub const TLS_WRITE_EX: &str = "tollgate_tls_write_ex";
    /// Uretprobe on all four: copies what was read or written.
    pub const TLS_RETURN: &str = "tollgate_tls_return";
    /// Tracepoint on the read/write system calls: the file descriptor a
    /// thread uses inside a TLS call.
    pub const TLS_FD: &str = "tollgate_tls_fd";
    /// Tracepoint on `close`: a descriptor's stream offsets start over.
    pub const TLS_CLOSE: &str = "tollgate_tls_close";
    /// Tracepoint on `dup2`/`dup3`: the target descriptor, replaced without
    /// `close`, ends its stream too.
    pub const TLS_DUP: &str = "tollgate_tls_dup";
    /// Tracepoint on `accept`/`accept4` returning, in processes that made TLS
    /// calls: announces the new connection's stream so the agent resolves it
    /// during the TLS handshake, before any request (and before a short
    /// connection is gone).
    pub const TLS_ACCEPT: &str = "tollgate_tls_accept";
    /// Benchmark only: the trivial XDP_PASS floor.
    pub const BENCH_PASS: &str = "bench_pass";
    /// Benchmark only: count and pass.
    pub const BENCH_COUNT: &str = "bench_count";
    /// Benchmark only: count and drop.
    pub const BENCH_DROP: &str = "bench_drop";
    /// Benchmark only: live-frames packet generator.
    pub const BENCH_GEN: &str = "bench_gen";
    /// Benchmark only: random IPv4 source, then a tail call to the program
    /// under measurement.
    pub const BENCH_RAND: &str = "bench_rand";
    /// Benchmark only: one hash lookup of the IPv4 source, drop on a hit.
    pub const BENCH_LOOKUP: &str = "bench_lookup";
    /// Capacity of `bench_lookup`'s map (`TG_BENCH_LOOK4`); the benchmark
    /// gives `TG_BLOCK4` the same.
    pub const BENCH_LOOKUP_ENTRIES: u32 = 1 << 20;
}

/// Default capacities. The agent may override them at load time; the kernel
/// allocates hash and trie entries lazily (`BPF_F_NO_PREALLOC`), so an empty
/// map costs little.
pub mod capacity {
    /// IPv4 host bans.
    pub const BLOCK4: u32 = 1 << 21;
    /// IPv6 host bans.
    pub const BLOCK6: u32 = 1 << 21;
    /// IPv4 range bans.
    pub const BLOCK4_LPM: u32 = 1 << 18;
    /// IPv6 range bans.
    pub const BLOCK6_LPM: u32 = 1 << 18;
    /// Allowlist entries per family.
    pub const ALLOW: u32 = 1 << 16;
    /// Rate-limited sources tracked at once (LRU: the least recent go first;
    /// preallocated, ~140 B each, so the default is ~35 MiB).
    pub const BUCKETS: u32 = 1 << 18;
    /// Sources with established connections counted.
    pub const CONNS: u32 = 1 << 18;
    /// Event ring buffer bytes.
    pub const EVENTS_BYTES: u32 = 1 << 18;
    /// Port slots in the limits array (every TCP/UDP port; 0 = other protocols).
    pub const LIMIT_SLOTS: u32 = 1 << 16;
    /// Flows whose sampling state is tracked (LRU; the agent sizes the
    /// established and proxied-connection maps the same, ~400 B per slot for
    /// the three, preallocated: ~25 MiB at this default).
    pub const FLOWS: u32 = 1 << 16;
    /// Young-flow slots (a power of two, at most 2^16): flows whose first packets are
    /// still being sampled; a new handshake takes over a slot.
    pub const YOUNG_FLOWS: u32 = 1 << 16;
    /// Sample ring buffer bytes (about 30,000 full 1 KiB samples: a few
    /// seconds of a burst of new API connections while the agent catches
    /// up). The agent sizes it from the policy (`capacity.sample_ring_bytes`).
    pub const SAMPLES_BYTES: u32 = 1 << 25;
    /// Trusted proxy prefixes per family.
    pub const TRUST: u32 = 1 << 10;
    /// Proxied connections followed at once (LRU).
    pub const PROXY_FLOWS: u32 = 1 << 18;
    /// Established connections remembered (LRU).
    pub const ESTABLISHED: u32 = 1 << 18;
    /// Sources with a recent handshake remembered (LRU).
    pub const HANDSHAKES: u32 = 1 << 17;
    /// API sockets whose request streams are taken at once.
    pub const STREAM_SOCKETS: u32 = 1 << 16;
    /// TLS calls in progress at once (threads inside a probed call).
    pub const TLS_CALLS: u32 = 1 << 14;
    /// TLS streams (process, descriptor) whose offsets are kept.
    pub const TLS_STREAMS: u32 = 1 << 17;
    /// Processes known to make TLS calls (their accepts are announced).
    pub const TLS_PROCS: u32 = 1 << 12;
    /// Bytes of the new-stream ring (about 3,000 announcements of 80 bytes:
    /// far more connections than arrive between two of its reads, which
    /// are not held back).
    pub const TLS_NEW_BYTES: u32 = 1 << 18;
}

/// Slots of the tail-call table.
pub mod jump {
    /// The request sampler.
    pub const SAMPLE: u32 = 0;
    /// Connections from trusted proxies.
    pub const PROXY: u32 = 1;
    /// Number of slots.
    pub const COUNT: u32 = 2;
}

/// [`ProxyFlow::state`] values.
pub mod proxy_state {
    /// Nothing to attribute (no PROXY header, no `X-Forwarded-For` the
    /// datapath could read, or the head scan gave up): the agent may arm it.
    pub const NONE: u32 = 0;
    /// The real client came from the PROXY header or `X-Forwarded-For`.
    pub const CLIENT: u32 = 1;
    /// Armed by the agent: the real client (from `X-Forwarded-For` or a
    /// header the datapath does not parse) is banned; drop the connection.
    pub const BANNED: u32 = 2;
    /// The request head is still arriving and being scanned for
    /// `X-Forwarded-For` ([`super::HeadScan`]); its packets pass.
    pub const SCANNING: u32 = 3;
}

/// Head bytes of one proxied connection the datapath scans at most; past
/// this the scan gives up and the agent's arming is the fallback.
pub const HEAD_SCAN_MAX: u32 = 64 * 1024;

/// Where the scan of a proxied request head for `X-Forwarded-For` stands,
/// carried from one packet of the head to the next.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadScan {
    /// TCP sequence number of the next head byte to scan.
    pub next_seq: u32,
    /// Head bytes scanned so far (bounded by [`HEAD_SCAN_MAX`]).
    pub scanned: u32,
    /// Bytes of `\nx-forwarded-for:` matched (case-insensitive).
    pub xff: u8,
    /// Bytes of `\r\n\r\n` matched (the end of the head).
    pub eoh: u8,
    /// 1 inside an `X-Forwarded-For` value.
    pub in_value: u8,
    /// The value's current entry: one of [`head_entry`].
    pub entry: u8,
    /// Octets of the entry's IPv4 address complete so far.
    pub part: u8,
    /// Digits of the current octet.
    pub digits: u8,
    /// The current octet's value.
    pub val: u16,
    /// 1 when `client` holds the client the last `X-Forwarded-For` line so
    /// far names.
    pub found: u32,
    /// The entry's octets so far.
    pub octets: [u8; 4],
    /// The client (IPv4) named by the last complete line.
    pub client: [u8; 4],
    /// Reserved; zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<HeadScan>() == 32);

/// [`HeadScan::entry`] values.
pub mod head_entry {
    /// Reading an address (or spaces before it).
    pub const READING: u8 = 0;
    /// A complete IPv4 address was read; the rest (a port) is ignored.
    pub const DONE: u8 = 1;
    /// Not an IPv4 address (IPv6, a name, `unknown`).
    pub const INVALID: u8 = 2;
}

/// A connection from a trusted proxy and the client it carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyFlow {
    /// The real client (IPv4 as `::ffff:a.b.c.d`).
    pub real: [u8; 16],
    /// One of [`proxy_state`].
    pub state: u32,
    /// Reserved; zero.
    pub reserved: u32,
    /// The head scan, while `state` is [`proxy_state::SCANNING`].
    pub scan: HeadScan,
}
const _: () = assert!(size_of::<ProxyFlow>() == 56);

/// Payload bytes a sample carries at most.
pub const SAMPLE_BYTES: usize = 1024;

/// Indexes of the per-CPU sampling counters.
pub mod sample_stat {
    /// Samples written to the ring buffer.
    pub const TAKEN: u32 = 0;
    /// Samples lost because the ring buffer was full (the datapath never waits).
    pub const LOST: u32 = 1;
    /// API payload packets not selected by the sampling policy.
    pub const SKIPPED: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Sampling policy, written by the agent (which lowers the rate under load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleCfg {
    /// Every flow's first this-many payload packets are sampled.
    pub first_packets: u32,
    /// Then one in this many (0 or 1 = all).
    pub one_in: u32,
    /// Payload bytes to copy (at most [`SAMPLE_BYTES`]); 0 disables sampling.
    pub max_bytes: u32,
    /// Reserved; zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<SampleCfg>() == 16);

/// A TCP flow, oriented client -> server whichever way the packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address (IPv4 as `::ffff:a.b.c.d`).
    pub client: [u8; 16],
    /// Server address.
    pub server: [u8; 16],
    /// Client port.
    pub client_port: u16,
    /// Server (API) port.
    pub server_port: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 36);

/// Per-flow sampling state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Payload packets seen, both directions.
    pub packets: u64,
}
const _: () = assert!(size_of::<FlowState>() == 8);

/// A connection the kernel established (passive side), as sock_ops saw it,
/// and how far the server has acknowledged the client's bytes (tcx egress).
/// Sequence numbers are the client's: a request segment is one the kernel
/// accepted when `isn <= seq` and `seq + len <= acked` (modulo 2^32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Established {
    /// Boot-clock ns when the handshake completed.
    pub since_ns: u64,
    /// The client's first data sequence number (`rcv_nxt` at establishment).
    pub isn: u32,
    /// The latest acknowledgement number the server sent (0 until one was seen
    /// after establishment; `isn` covers nothing yet).
    pub acked: u32,
    /// Boot-clock ns of that acknowledgement.
    pub acked_ns: u64,
}
const _: () = assert!(size_of::<Established>() == 24);

/// Sample direction: client to server (captured at ingress).
pub const DIR_REQUEST: u8 = 0;
/// Sample direction: server to client (captured at egress).
pub const DIR_RESPONSE: u8 = 1;

/// Metadata of one sampled packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHeader {
    /// Boot-clock ns.
    pub ts_ns: u64,
    /// The flow.
    pub flow: FlowKey,
    /// [`DIR_REQUEST`] or [`DIR_RESPONSE`].
    pub direction: u8,
    /// TCP flags.
    pub tcp_flags: u8,
    /// 4 or 6.
    pub family: u8,
    /// Where the bytes were taken ([`sample_source`]).
    pub source: u8,
    /// TCP sequence number of the first payload byte; for
    /// [`sample_source::STREAM`] and [`sample_source::TLS`] records, the
    /// offset in the stream (mod 2^32).
    pub seq: u32,
    /// Interface index it was seen on; for [`sample_source::TLS`] records,
    /// the file descriptor the process read or wrote through.
    pub ifindex: u32,
    /// Payload bytes in the packet.
    pub payload_len: u32,
    /// Payload bytes copied into the sample.
    pub captured: u32,
    /// [`sample_source::STREAM`] records: the socket's cookie (the agent
    /// names it when it tells the stream program which bytes it need not
    /// copy, `TG_STREAM_SKIP`). [`sample_source::TLS`] records: the process
    /// (tgid) in the low 32 bits and the stream's [`TlsStream::id`] in the
    /// high 32 (with `ifindex`, what the agent resolves to the connection;
    /// `flow` is zero in such records). 0 for packets. Every byte is
    /// written: ring-buffer memory is not zeroed.
    pub cookie: u64,
}
const _: () = assert!(size_of::<SampleHeader>() == 72);
const _: () = assert!(core::mem::offset_of!(SampleHeader, cookie) + 8 == 72);

/// Where a sample's bytes were taken, [`SampleHeader::source`].
pub mod sample_source {
    /// A packet at the NIC (XDP, tcx): may be spoofed, needs verification.
    pub const WIRE: u8 = 0;
    /// What an established socket received (stream verdict): in order,
    /// reassembled, and from a client that completed a handshake.
    pub const STREAM: u8 = 1;
    /// Plaintext a server process's TLS library returned from a read
    /// (requests) or was given to write (responses), from uprobes on it: in
    /// order, from an established connection. `flow` is zero; `cookie`
    /// and `ifindex` name the process, stream and file descriptor.
    pub const TLS: u8 = 2;
}

/// Indexes of the per-CPU TLS probe counters ([`maps::TLS_STATS`]).
pub mod tls_stat {
    /// Calls of the probed read/write functions that returned data.
    pub const CALLS: u32 = 0;
    /// Plaintext bytes written to the ring buffer.
    pub const BYTES: u32 = 1;
    /// Plaintext bytes not captured (ring full, past the per-call cap,
    /// unreadable memory).
    pub const LOST: u32 = 2;
    /// Calls whose connection's file descriptor was not known.
    pub const NO_FD: u32 = 3;
    /// New streams whose announcement did not fit in the announcement ring
    /// (they resolve when their data is read).
    pub const NEW_LOST: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// A TLS call in progress on one thread, between the uprobe at its entry and
/// the uretprobe at its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The `SSL *` argument.
    pub ssl: u64,
    /// The buffer argument.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library stores the byte count
    /// (0 for `SSL_read`/`SSL_write`, which return it).
    pub count_ptr: u64,
    /// The file descriptor a read/write system call made inside this call
    /// used (-1 until one is seen).
    pub fd: i32,
    /// [`DIR_REQUEST`] (read) or [`DIR_RESPONSE`] (write).
    pub direction: u32,
}
const _: () = assert!(size_of::<TlsCall>() == 32);

/// A process's file descriptor: the key of its TLS stream ([`TlsStream`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsStreamKey {
    /// Process (tgid).
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
}
const _: () = assert!(size_of::<TlsStreamKey>() == 8);

/// The TLS stream on a descriptor, from its first captured call until the
/// descriptor is closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStream {
    /// Plaintext bytes so far, indexed by direction ([`DIR_REQUEST`],
    /// [`DIR_RESPONSE`]): the records' offsets.
    pub offsets: [u64; 2],
    /// Tells this stream from earlier ones on the same descriptor (the
    /// descriptor is reused once closed): carried in every record
    /// ([`SampleHeader::cookie`]'s high half), so the agent never takes one stream's
    /// bytes for another's, even when records were lost. Never 0; unique
    /// until a CPU has started [`TLS_ID_SEQ`] streams (see [`tls_stream_id`]).
    pub id: u32,
    /// Reserved; zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<TlsStream>() == 24);

/// Low bits of a TLS stream id that hold the CPU which started it (the rest
/// counts that CPU's streams): up to 1,024 CPUs are told apart.
pub const TLS_ID_CPU_BITS: u32 = 10;
/// Streams a CPU starts before its ids repeat (2^22).
pub const TLS_ID_SEQ: u32 = 1 << (32 - TLS_ID_CPU_BITS);

/// The id of the `seq`-th stream started on `cpu` (seq counted per CPU from
/// 0): distinct for distinct (cpu mod 1,024, seq mod 2^22), and never 0.
#[must_use]
pub const fn tls_stream_id(cpu: u32, seq: u32) -> u32 {
    let cpu = cpu & ((1 << TLS_ID_CPU_BITS) - 1);
    // seq + 1: CPU 0's first stream would otherwise be id 0 ("no id");
    // after 2^22 streams the count wraps past 0 to 1 again.
    let mut s = seq.wrapping_add(1) & (TLS_ID_SEQ - 1);
    if s == 0 {
        s = 1;
    }
    (s << TLS_ID_CPU_BITS) | cpu
}

/// A TLS connection object of a process: the key under which the file
/// descriptor last seen with it is remembered (a read served from the
/// library's buffer makes no system call).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSslKey {
    /// Process (tgid).
    pub tgid: u32,
    /// Reserved; zero.
    pub reserved: u32,
    /// The `SSL *`.
    pub ssl: u64,
}
const _: () = assert!(size_of::<TlsSslKey>() == 16);

/// [`FlowState::packets`] bit set by sock_ops on connections whose request
/// stream is taken at the socket: the XDP sampler then leaves their request
/// packets alone.
pub const FLOW_STREAMED: u64 = 1 << 63;

/// A young flow's slot in [`maps::YOUNG`]: which flow holds it
/// ([`young_slot`]'s tag) and how many of its first payload packets are
/// still to be sampled, per direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct YoungFlow {
    /// The flow's tag (never 0: 0 is an empty slot).
    pub tag: u32,
    /// Payload packets still to sample, indexed by [`DIR_REQUEST`] /
    /// [`DIR_RESPONSE`].
    pub left: [u16; 2],
}
const _: () = assert!(size_of::<YoungFlow>() == 8);

/// Slot and tag of a flow in [`maps::YOUNG`] from its addresses folded to
/// 32 bits (an IPv4 address as is, IPv6 as the XOR of its four words) and
/// its ports. A multiplicative hash: a few instructions per packet, and a
/// collision only costs a flow its first-packet samples.
#[inline(always)]
#[must_use]
pub fn young_slot(client: u32, server: u32, client_port: u16, server_port: u16) -> (u32, u32) {
    let ports = (u32::from(client_port) << 16) | u32::from(server_port);
    let mut h = client.wrapping_mul(0x9e37_79b1) ^ server.rotate_left(16) ^ ports;
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    let tag = h | 1;
    (young_index(tag), tag)
}

/// The slot of a flow in [`maps::YOUNG`] from its tag (the tag's high bits,
/// so that the pair packs into one register).
#[inline(always)]
#[must_use]
pub const fn young_index(tag: u32) -> u32 {
    (tag >> 16) & (capacity::YOUNG_FLOWS - 1)
}

/// One ring-buffer sample: metadata plus the first payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleRecord {
    /// Metadata.
    pub header: SampleHeader,
    /// `header.captured` bytes of payload, the rest undefined.
    pub data: [u8; SAMPLE_BYTES],
}
const _: () = assert!(size_of::<SampleRecord>() == 72 + SAMPLE_BYTES);

/// A cache-friendly bitmap that lets the clean packet out after one array
/// lookup: a set bit means "some ban may cover this bucket", a clear bit means
/// "no ban can". Bits may be stale-set (cost: one more lookup), never
/// stale-clear: the agent sets bits before inserting a ban and clears them only
/// after removing it.
pub mod prefilter {
    /// Number of bucket bits (2^24 = 16 Mi buckets = 2 MiB per family).
    pub const BITS: u32 = 24;
    /// Number of `u64` words in each bitmap array.
    pub const WORDS: u32 = 1 << (BITS - 6);
    /// IPv4 buckets are the /24 a source belongs to.
    pub const V4_BUCKET_PREFIX: u8 = 24;
    /// IPv6 buckets are a hash of the /48 a source belongs to.
    pub const V6_BUCKET_PREFIX: u8 = 48;
    /// IPv6 ranges shorter than this are not enumerated into the bitmap; they
    /// set [`super::config_flags::V6_SHORT_RANGES`], which makes every IPv6
    /// packet consult the trie.
    pub const V6_MIN_ENUMERATED_PREFIX: u8 = 32;

    /// Bucket of an IPv4 address given as host-order `u32`.
    #[inline(always)]
    #[must_use]
    pub const fn bucket_v4(addr_host_order: u32) -> u32 {
        addr_host_order >> 8
    }

    /// Bucket of an IPv6 address: Fibonacci hash of its first 48 bits.
    #[inline(always)]
    #[must_use]
    pub const fn bucket_v6(addr: &[u8; 16]) -> u32 {
        let top48 = ((addr[0] as u64) << 40)
            | ((addr[1] as u64) << 32)
            | ((addr[2] as u64) << 24)
            | ((addr[3] as u64) << 16)
            | ((addr[4] as u64) << 8)
            | (addr[5] as u64);
        (top48.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as u32
    }

    /// Word index and bit mask of a bucket.
    #[inline(always)]
    #[must_use]
    pub const fn word_and_mask(bucket: u32) -> (u32, u64) {
        (bucket >> 6, 1u64 << (bucket & 63))
    }
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// The IPv4 range trie holds entries.
    pub const V4_RANGES: u32 = 1 << 0;
    /// The IPv6 range trie holds entries.
    pub const V6_RANGES: u32 = 1 << 1;
    /// The IPv6 range trie holds a prefix shorter than
    /// [`super::prefilter::V6_MIN_ENUMERATED_PREFIX`]: bypass the prefilter.
    pub const V6_SHORT_RANGES: u32 = 1 << 2;
    /// The IPv4 allowlist holds entries (else its trie is not consulted).
    pub const V4_ALLOW: u32 = 1 << 3;
    /// The IPv6 allowlist holds entries.
    pub const V6_ALLOW: u32 = 1 << 4;
    /// Some rate limit is configured (else the limiter is skipped).
    pub const LIMITS: u32 = 1 << 5;
    /// API ports are configured: sample their payloads.
    pub const SAMPLING: u32 = 1 << 6;
    /// Trusted proxies are configured: their connections carry real clients.
    pub const TRUSTED: u32 = 1 << 7;
    /// The stream verdict program is attached: sock_ops puts API sockets in
    /// `TG_SOCKS` and their requests are taken at the socket.
    pub const STREAM: u32 = 1 << 8;
}

/// Enforcement mode, [`Config::mode`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop what the policy says to drop.
    Enforce = 0,
    /// Count what would be dropped, pass everything.
    Monitor = 1,
}

/// Runtime configuration of the datapath, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`Mode`] as `u32`.
    pub mode: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// IPv6 clients are rate-limited per prefix of this length (default 64).
    pub v6_limit_prefix: u32,
    /// That prefix as a byte mask (the datapath masks without branching).
    pub v6_limit_mask: [u8; 16],
    /// Reserved for later use; zero.
    pub reserved: u32,
}

/// The byte mask of an IPv6 prefix length.
#[must_use]
pub const fn v6_mask(prefix: u8) -> [u8; 16] {
    let mut m = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bit = i as u32 * 8;
        let p = prefix as u32;
        m[i] = if bit + 8 <= p {
            0xff
        } else if bit >= p {
            0
        } else {
            0xffu8 << (8 - (p - bit))
        };
        i += 1;
    }
    m
}
const _: () = assert!(size_of::<Config>() == 32);

/// A ban, as stored in the kernel (host hash or range trie value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// Expiry on the kernel's boot-time clock (`bpf_ktime_get_boot_ns`), in
    /// nanoseconds; 0 = never. The datapath ignores expired entries by itself,
    /// so a ban ends on time even when the agent is gone.
    pub expires_ns: u64,
    /// When the ban was made, boot-time clock nanoseconds.
    pub created_ns: u64,
    /// Packets this entry matched (dropped, or counted in monitor mode).
    pub hits: u64,
    /// [`BanReason`] as `u32`.
    pub reason: u32,
    /// Reserved; zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<BlockEntry>() == 32);

/// An allowlist entry (LPM trie value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// When it was added, boot-time clock nanoseconds.
    pub created_ns: u64,
    /// Packets that matched a ban (or a limit) and were let through because of it.
    pub hits: u64,
}
const _: () = assert!(size_of::<AllowEntry>() == 16);

/// One per-CPU counter cell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by the hook).
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// What happened to a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the stack.
    Pass = 0,
    /// Dropped.
    Drop = 1,
    /// Would have been dropped; passed because the mode is monitor.
    Monitor = 2,
}

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Self; 3] = [Self::Pass, Self::Drop, Self::Monitor];
    /// Stable lower-case name, used by the CLI, metrics and events.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Monitor => "monitor",
        }
    }
}

/// Why the datapath decided what it did. Defined once, printed by name everywhere.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Parsed, no rule matched.
    Clean = 0,
    /// Matched a ban but the source is allowlisted.
    Allowlisted = 1,
    /// Matched a live ban.
    Blocklisted = 2,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = 3,
    /// Headers cut short: passed, never dropped.
    Truncated = 4,
    /// Headers that make no sense (bad IHL, version mismatch): passed.
    Malformed = 5,
    /// IPv6 extension header chain longer than the datapath walks: passed.
    ExtChainTooLong = 6,
    /// Matched a ban that has expired: passed (the agent garbage-collects it).
    Expired = 7,
    /// An internal error (e.g. a failed map lookup that should not fail): passed.
    Error = 8,
    /// Over its packet or byte rate.
    RateLimited = 9,
    /// Over its new-connection (SYN) rate.
    SynLimited = 10,
    /// At its concurrent-connection cap: new SYNs refused.
    ConnLimited = 11,
}

impl Reason {
    /// Number of reasons; counters are laid out `verdict * COUNT + reason`.
    pub const COUNT: u32 = 12;
    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Clean,
        Self::Allowlisted,
        Self::Blocklisted,
        Self::NotIp,
        Self::Truncated,
        Self::Malformed,
        Self::ExtChainTooLong,
        Self::Expired,
        Self::Error,
        Self::RateLimited,
        Self::SynLimited,
        Self::ConnLimited,
    ];
    /// Stable kebab-case name, used by the CLI, metrics and events.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Allowlisted => "allowlisted",
            Self::Blocklisted => "blocklisted",
            Self::NotIp => "not-ip",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::ExtChainTooLong => "ext-chain-too-long",
            Self::Expired => "expired",
            Self::Error => "error",
            Self::RateLimited => "rate-limited",
            Self::SynLimited => "syn-limited",
            Self::ConnLimited => "conn-limited",
        }
    }
}

/// Number of cells in the counters map.
pub const COUNTER_SLOTS: u32 = Verdict::ALL.len() as u32 * Reason::COUNT;

/// Index of the counter cell for a verdict and reason.
#[inline(always)]
#[must_use]
pub const fn counter_index(verdict: Verdict, reason: Reason) -> u32 {
    verdict as u32 * Reason::COUNT + reason as u32
}

/// Why a ban exists (kept in the kernel entry; the free-text reason lives in
/// the agent's store).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanReason {
    /// Added by an operator (`tollgate block add`).
    Manual = 1,
    /// A client that kept exceeding its rate limit.
    RateLimit = 2,
    /// The policy engine's detectors.
    Policy = 3,
    /// An imported block-list feed.
    Feed = 4,
    /// A CrowdSec decision.
    Crowdsec = 5,
}

impl BanReason {
    /// Stable name, as `tollgate block ls` shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::RateLimit => "rate-limit",
            Self::Policy => "policy",
            Self::Feed => "feed",
            Self::Crowdsec => "crowdsec",
        }
    }

    /// The reason for a stored code; unknown codes read as `None`.
    #[must_use]
    pub const fn from_u32(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Manual),
            2 => Some(Self::RateLimit),
            3 => Some(Self::Policy),
            4 => Some(Self::Feed),
            5 => Some(Self::Crowdsec),
            _ => None,
        }
    }
}

/// Rate limits for one destination-port slot, as the datapath reads them.
/// The agent derives the GCRA intervals so the datapath never divides.
/// A zero rate means "not limited".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCfg {
    /// Packets per second (0 = unlimited).
    pub pps: u32,
    /// Packets allowed back to back.
    pub burst: u32,
    /// New connections (SYN without ACK) per second (0 = unlimited).
    pub syn_rate: u32,
    /// SYNs allowed back to back.
    pub syn_burst: u32,
    /// Established connections per client (0 = unlimited).
    pub max_conns: u32,
    /// The port whose limits these are (0 = the default for all ports);
    /// sources are accounted per class.
    pub class: u32,
    /// Bytes per second (0 = unlimited).
    pub bps: u64,
    /// Bytes allowed back to back.
    pub bps_burst: u64,
    /// 1e9 / pps.
    pub pkt_interval_ns: u64,
    /// (burst - 1) * pkt_interval_ns.
    pub pkt_tolerance_ns: u64,
    /// 1e9 / syn_rate.
    pub syn_interval_ns: u64,
    /// (syn_burst - 1) * syn_interval_ns.
    pub syn_tolerance_ns: u64,
    /// Nanoseconds of budget per 1024 bytes: 1024e9 / bps.
    pub ns_per_kib: u64,
    /// Byte-burst tolerance in nanoseconds.
    pub byte_tolerance_ns: u64,
}
const _: () = assert!(size_of::<LimitCfg>() == 88);

impl LimitCfg {
    /// Whether any limit is set.
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.pps != 0 || self.syn_rate != 0 || self.bps != 0 || self.max_conns != 0
    }
}

/// Who a rate is accounted to: the source (IPv4 as `::ffff:a.b.c.d`, IPv6
/// masked to the configured prefix) and the limit class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Address bytes.
    pub addr: [u8; 16],
    /// [`LimitCfg::class`].
    pub class: u32,
}
const _: () = assert!(size_of::<BucketKey>() == 20);

/// Per-source rate state: GCRA theoretical arrival times (boot-clock ns),
/// advanced with atomic adds so packets on different CPUs all count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Packet-rate TAT.
    pub pkt_tat: u64,
    /// SYN-rate TAT.
    pub syn_tat: u64,
    /// Byte-rate TAT.
    pub byte_tat: u64,
    /// Packets passed.
    pub passed: u64,
    /// Packets dropped (or counted in monitor mode).
    pub dropped: u64,
    /// When the last [`RateEvent`] was sent for this source.
    pub last_report_ns: u64,
}
const _: () = assert!(size_of::<Bucket>() == 48);

/// Sent at most once a second per offending source, so the agent can
/// escalate persistent offenders to the blocklist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateEvent {
    /// The offender.
    pub key: BucketKey,
    /// [`Reason`] as `u32`: rate-, SYN- or conn-limited.
    pub reason: u32,
    /// Dropped so far (bucket total).
    pub dropped: u64,
    /// Passed so far (bucket total).
    pub passed: u64,
    /// Boot-clock ns.
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<RateEvent>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers, without
    // padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::LimitCfg {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::RateEvent {}
    unsafe impl aya::Pod for super::SampleCfg {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Established {}
    unsafe impl aya::Pod for super::ProxyFlow {}
    unsafe impl aya::Pod for super::HeadScan {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::TlsStreamKey {}
    unsafe impl aya::Pod for super::TlsStream {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_stream_ids_are_nonzero_and_distinct_per_cpu_and_count() {
        // The id gives back its CPU and count: two streams share an id only
        // when both are equal (mod 1,024 and 2^22).
        for cpu in [0, 1, 2, 255, 1023] {
            for seq in (0..5000).chain(TLS_ID_SEQ - 3..TLS_ID_SEQ - 1) {
                let id = tls_stream_id(cpu, seq);
                assert_ne!(id, 0);
                assert_eq!(id & ((1 << TLS_ID_CPU_BITS) - 1), cpu);
                assert_eq!(id >> TLS_ID_CPU_BITS, seq + 1, "cpu {cpu} seq {seq}");
            }
        }
        // The count wraps (after 2^22 streams of one CPU), never to 0.
        assert_eq!(tls_stream_id(0, TLS_ID_SEQ - 1), 1 << TLS_ID_CPU_BITS);
        assert_ne!(tls_stream_id(0, u32::MAX), 0);
        assert_eq!(tls_stream_id(1024 + 7, 0), tls_stream_id(7, 0));
    }

    #[test]
    fn counter_indices_are_dense_and_unique() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for v in Verdict::ALL {
            for r in Reason::ALL {
                let i = counter_index(v, r) as usize;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn v6_masks() {
        assert_eq!(v6_mask(0), [0; 16]);
        assert_eq!(v6_mask(128), [0xff; 16]);
        let m = v6_mask(60);
        assert_eq!(m[..7], [0xff; 7]);
        assert_eq!(m[7], 0xf0);
        assert_eq!(m[8..], [0; 8]);
    }

    #[test]
    fn prefilter_buckets_stay_in_range() {
        assert_eq!(prefilter::bucket_v4(u32::MAX), (1 << 24) - 1);
        let b = prefilter::bucket_v6(&[0xff; 16]);
        assert!(b < (1 << prefilter::BITS));
        // Addresses in the same /48 share a bucket.
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        let mut c = a;
        c[15] = 1;
        c[7] = 9;
        assert_eq!(prefilter::bucket_v6(&a), prefilter::bucket_v6(&c));
        let (w, m) = prefilter::word_and_mask(b);
        assert!(w < prefilter::WORDS && m != 0);
    }
}
