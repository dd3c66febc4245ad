//! Every map the programs use. Names and value types come from
//! `tollgate-common`; all maps are pinned by name so bans and counters outlive
//! the agent process.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use tollgate_common::{
    AllowEntry, BlockEntry, Bucket, BucketKey, COUNTER_SLOTS, Config, Counter, Established,
    FlowKey, FlowState, LimitCfg, ProxyFlow, SampleCfg, YoungFlow, capacity, jump, prefilter,
    sample_stat,
};

// BPF_F_NO_PREALLOC: entries are allocated on insert, so an empty
// million-entry map costs nothing.

#[map]
pub static TG_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static TG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map]
pub static TG_BLOCK4: HashMap<[u8; 4], BlockEntry> =
    HashMap::pinned(capacity::BLOCK4, BPF_F_NO_PREALLOC);

#[map]
pub static TG_BLOCK6: HashMap<[u8; 16], BlockEntry> =
    HashMap::pinned(capacity::BLOCK6, BPF_F_NO_PREALLOC);

#[map]
pub static TG_BLOCK4_LPM: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::pinned(capacity::BLOCK4_LPM, 0);

#[map]
pub static TG_BLOCK6_LPM: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(capacity::BLOCK6_LPM, 0);

#[map]
pub static TG_ALLOW4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::pinned(capacity::ALLOW, 0);

#[map]
pub static TG_ALLOW6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::pinned(capacity::ALLOW, 0);

#[map]
pub static TG_PRE4: Array<u64> = Array::pinned(prefilter::WORDS, 0);

#[map]
pub static TG_PRE6: Array<u64> = Array::pinned(prefilter::WORDS, 0);

#[map]
pub static TG_LIMITS: Array<LimitCfg> = Array::pinned(capacity::LIMIT_SLOTS, 0);

#[map]
pub static TG_BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::pinned(capacity::BUCKETS, 0);

#[map]
pub static TG_CONNS: HashMap<BucketKey, u64> = HashMap::pinned(capacity::CONNS, BPF_F_NO_PREALLOC);

#[map]
pub static TG_EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

#[map]
pub static TG_API_PORTS: Array<u32> = Array::pinned(capacity::LIMIT_SLOTS, 0);

#[map]
pub static TG_SAMPLING: Array<SampleCfg> = Array::pinned(1, 0);

#[map]
pub static TG_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(capacity::FLOWS, 0);

#[map]
pub static TG_SAMPLES: RingBuf = RingBuf::pinned(capacity::SAMPLES_BYTES, 0);

#[map]
pub static TG_SMPL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(sample_stat::COUNT, 0);

/// Young flows, by [`tollgate_common::young_slot`]: an array (its lookup is
/// a bounds check and an add, no hashing of a 36-byte key) decides whether a
/// packet is among its flow's first. Not pinned: only fresh handshakes fill it.
#[map]
pub static TG_YOUNG: Array<YoungFlow> = Array::with_max_entries(capacity::YOUNG_FLOWS, 0);

/// Per-CPU countdown to the next 1-in-N sample.
#[map]
pub static TG_SMPL_GAP: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Tail calls (slots in `tollgate_common::jump`). Not pinned: it empties
/// when the agent goes away, and the datapath then passes without sampling
/// (and judges proxied connections by the proxy's address only).
#[map]
pub static TG_JUMP: ProgramArray = ProgramArray::with_max_entries(jump::COUNT, 0);

/// The same slots for the TC ingress programs.
#[map]
pub static TG_JUMP_TC: ProgramArray = ProgramArray::with_max_entries(jump::COUNT, 0);

#[map]
pub static TG_TRUST4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(capacity::TRUST, 0);

#[map]
pub static TG_TRUST6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(capacity::TRUST, 0);

/// Per-CPU scratch for the proxy program (its stack is nearly full).
#[map]
pub static TG_PSCRATCH: PerCpuArray<ProxyScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of one chunk of a proxied request's head, for the
/// `X-Forwarded-For` scan.
#[map]
pub static TG_PBUF: PerCpuArray<[u8; 4096]> = PerCpuArray::with_max_entries(1, 0);

/// What the proxy program keeps off its stack. The head scan works on
/// `flow.scan` here rather than on the stack: values read from a map are
/// unknown to the verifier, so the scan callback's states converge at once
/// (tracked stack constants made it walk every combination).
#[repr(C)]
pub struct ProxyScratch {
    pub key: FlowKey,
    pub flow: ProxyFlow,
    /// Bytes of the packet's part scanned when the head ended there; 0 =
    /// not ended.
    pub end: u32,
    /// 1 when a copy out of the packet failed.
    pub err: u32,
}

#[map]
pub static TG_PFLOWS: LruHashMap<FlowKey, ProxyFlow> = LruHashMap::pinned(capacity::PROXY_FLOWS, 0);

#[map]
pub static TG_ESTAB: LruHashMap<FlowKey, Established> =
    LruHashMap::pinned(capacity::ESTABLISHED, 0);

#[map]
pub static TG_HSHAKE: LruHashMap<[u8; 16], u64> = LruHashMap::pinned(capacity::HANDSHAKES, 0);

/// API sockets whose received bytes the stream verdict program copies. Not
/// pinned: without the programs, the sockets go back to the plain path.
#[map]
pub static TG_SOCKS: SockHash<FlowKey> = SockHash::with_max_entries(capacity::STREAM_SOCKETS, 0);

/// Bytes each streamed socket has received so far (the records' offsets).
#[map]
pub static TG_STREAM_OFF: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(capacity::STREAM_SOCKETS, 0);

/// Per socket (cookie): the stream offset (mod 2^32) up to which the stream
/// program need not copy, the rest of a long body the agent passes over.
/// Written by the agent only.
#[map]
pub static TG_STREAM_SKIP: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(capacity::STREAM_SOCKETS, 0);

/// Per-CPU scratch where the stream program builds a record before writing
/// it to the ring at its real size.
#[map]
pub static TG_SSCRATCH: PerCpuArray<tollgate_common::SampleRecord> =
    PerCpuArray::with_max_entries(1, 0);

/// TLS calls in progress, by thread (`pid_tgid`): what the entry uprobe saw,
/// for the return probe.
#[map]
pub static TG_TLS_CALLS: HashMap<u64, tollgate_common::TlsCall> =
    HashMap::with_max_entries(capacity::TLS_CALLS, 0);

/// The file descriptor last seen under each `SSL *`, for calls the library
/// serves from its buffer without a system call.
#[map]
pub static TG_TLS_SSLFD: LruHashMap<tollgate_common::TlsSslKey, i32> =
    LruHashMap::with_max_entries(capacity::TLS_STREAMS, 0);

/// Each descriptor's TLS stream: offsets per direction, and its id.
#[map]
pub static TG_TLS_OFF: LruHashMap<tollgate_common::TlsStreamKey, tollgate_common::TlsStream> =
    LruHashMap::with_max_entries(capacity::TLS_STREAMS, 0);

/// Processes that made TLS calls (value unused): their accepted connections
/// are announced to the agent.
#[map]
pub static TG_TLS_PROCS: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(tollgate_common::capacity::TLS_PROCS, 0);

/// New TLS streams announced to the agent (see `tls.rs`).
#[map]
pub static TG_TLS_NEW: RingBuf =
    RingBuf::with_byte_size(tollgate_common::capacity::TLS_NEW_BYTES, 0);

/// Per CPU: TLS streams started there (the count part of their ids, see
/// `tollgate_common::tls_stream_id`).
#[map]
pub static TG_TLS_IDS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static TG_TLS_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tollgate_common::tls_stat::COUNT, 0);

/// Per-CPU scratch of the TLS return probe (its own: a stream verdict may
/// interrupt it on the same CPU).
#[map]
pub static TG_TSCRATCH: PerCpuArray<tollgate_common::SampleRecord> =
    PerCpuArray::with_max_entries(1, 0);
