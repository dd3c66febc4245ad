//! The kernel side as the agent sees it: loading the embedded eBPF object,
//! typed access to every map, and the prefilter bookkeeping that keeps the
//! clean-packet path to one array lookup.
//!
//! The agent is the single writer of these maps. Ordering rules that keep the
//! datapath correct while it runs: prefilter bits and config flags are set
//! *before* a ban is inserted and cleared only *after* it is removed, so a
//! live ban is never hidden behind a clear bit.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tollgate_common::{
    AllowEntry, BlockEntry, Bucket, BucketKey, Config, Counter, LimitCfg, Mode, Reason, Verdict,
    capacity, config_flags, counter_index, maps, prefilter, programs,
};

mod bans;

/// The compiled eBPF object, embedded at build time: one file to copy to a host.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf"));

/// Errors from loading or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (verifier, memlock, pinned map mismatch...).
    #[error("failed to load the eBPF programs{hint}")]
    Load {
        /// Extra advice for the operator.
        hint: String,
        /// The underlying error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object or failed the verifier.
    #[error("failed to load program {name}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object.
    #[error("map {name} missing from the eBPF object")]
    MissingMap {
        /// Map name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("failed to {op} map {name}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// Map name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: Box<MapError>,
    },
    /// Could not create the pin directory or mount bpffs.
    #[error("{message}: {}", path.display())]
    PinDir {
        /// What failed.
        message: &'static str,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The pin directory is not on a bpf filesystem.
    #[error(
        "{} is not on a bpf filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) or choose another --pin-dir",
        path.display()
    )]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(op: &'static str, name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        op,
        name,
        source: Box::new(source),
    }
}

/// How many entries each map may hold (set at load time).
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    /// IPv4 host bans.
    pub block4: u32,
    /// IPv6 host bans.
    pub block6: u32,
    /// IPv4 range bans.
    pub block4_lpm: u32,
    /// IPv6 range bans.
    pub block6_lpm: u32,
    /// Allowlist entries per family.
    pub allow: u32,
    /// Rate-limited sources tracked at once (LRU, preallocated).
    pub buckets: u32,
    /// Sources with counted connections.
    pub conns: u32,
    /// Connections followed at once (sampling marks, established
    /// connections, proxied connections; LRU).
    pub flows: u32,
    /// Bytes of the sample ring buffer (a power of two, at least a page).
    pub samples: u32,
}

impl Capacities {
    /// Small maps for tests and tools that load many instances.
    #[must_use]
    pub fn small() -> Self {
        Self {
            block4: 4096,
            block6: 4096,
            block4_lpm: 1024,
            block6_lpm: 1024,
            allow: 256,
            buckets: 4096,
            conns: 1024,
            flows: 4096,
            samples: 1 << 22,
        }
    }
}

impl Capacities {
    /// Each sized map with the capacity it gets.
    #[must_use]
    pub fn per_map(&self) -> [(&'static str, u32); 12] {
        [
            (maps::BLOCK4, self.block4),
            (maps::BLOCK6, self.block6),
            (maps::BLOCK4_LPM, self.block4_lpm),
            (maps::BLOCK6_LPM, self.block6_lpm),
            (maps::ALLOW4, self.allow),
            (maps::ALLOW6, self.allow),
            (maps::BUCKETS, self.buckets),
            (maps::CONNS, self.conns),
            (maps::FLOWS, self.flows),
            (maps::ESTABLISHED, self.flows),
            (maps::PROXY_FLOWS, self.flows),
            (maps::SAMPLES, self.samples),
        ]
    }
}

impl Default for Capacities {
    fn default() -> Self {
        use tollgate_common::capacity as c;
        Self {
            block4: c::BLOCK4,
            block6: c::BLOCK6,
            block4_lpm: c::BLOCK4_LPM,
            block6_lpm: c::BLOCK6_LPM,
            allow: c::ALLOW,
            buckets: c::BUCKETS,
            conns: c::CONNS,
            flows: c::FLOWS,
            samples: c::SAMPLES_BYTES,
        }
    }
}

/// Kernel memory of this process's maps by name: fdinfo's `memlock`, which
/// current kernels report as the map's actual memory use (the part fixed by
/// its capacity, such as a hash map's buckets, plus its entries).
#[must_use]
pub fn map_memory() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        if let Ok(id) = u32::try_from(id)
            && let Ok(info) = aya::maps::MapInfo::from_id(id)
            && let Some(name) = info.name_as_str()
        {
            out.insert(name.to_owned(), mem);
        }
    }
    out
}

/// Map fill levels, for `tollgate status`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Fill {
    /// IPv4 host bans held.
    pub block4: usize,
    /// IPv6 host bans held.
    pub block6: usize,
    /// IPv4 range bans held.
    pub block4_ranges: usize,
    /// IPv6 range bans held.
    pub block6_ranges: usize,
    /// Allowlist entries held.
    pub allow: usize,
}

/// The loaded programs and their maps.
pub struct Datapath {
    /// The object with its programs; `None` while the kernel verifies them
    /// on another thread (see [`Self::load_background`]).
    ebpf: Option<Ebpf>,
    /// The thread verifying the programs, until [`Self::wait_programs`];
    /// joined on drop, before the maps' descriptors close.
    loading: Option<std::thread::JoinHandle<Result<Ebpf>>>,
    /// That thread's kernel id, once it runs.
    verifier_tid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    config_map: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counter>,
    block4: HashMap<MapData, [u8; 4], BlockEntry>,
    block6: HashMap<MapData, [u8; 16], BlockEntry>,
    block4_lpm: LpmTrie<MapData, [u8; 4], BlockEntry>,
    block6_lpm: LpmTrie<MapData, [u8; 16], BlockEntry>,
    allow4: LpmTrie<MapData, [u8; 4], AllowEntry>,
    allow6: LpmTrie<MapData, [u8; 16], AllowEntry>,
    pre4: Array<MapData, u64>,
    pre6: Array<MapData, u64>,
    limits: Array<MapData, LimitCfg>,
    buckets: HashMap<MapData, BucketKey, Bucket>,
    conns: HashMap<MapData, BucketKey, u64>,
    /// The event ring buffer, until the agent takes it.
    events: Option<aya::maps::RingBuf<MapData>>,
    /// The sample ring buffer, until the agent takes it.
    samples: Option<aya::maps::RingBuf<MapData>>,
    api_ports: Array<MapData, u32>,
    sampling: Array<MapData, tollgate_common::SampleCfg>,
    sample_stats: PerCpuArray<MapData, u64>,
    trust4: LpmTrie<MapData, [u8; 4], u32>,
    trust6: LpmTrie<MapData, [u8; 16], u32>,
    proxy_flows: HashMap<MapData, tollgate_common::FlowKey, tollgate_common::ProxyFlow>,
    /// Connections the kernel established, until the API pipeline takes them.
    established: Option<HashMap<MapData, tollgate_common::FlowKey, tollgate_common::Established>>,
    handshakes: HashMap<MapData, [u8; 16], u64>,
    flows: HashMap<MapData, tollgate_common::FlowKey, tollgate_common::FlowState>,
    /// The API sockets whose requests are taken at the socket (kept open
    /// while the stream verdict program is attached to it).
    stream_sockets: Option<aya::maps::SockHash<MapData, tollgate_common::FlowKey>>,
    /// Per API socket: where the stream program may resume copying.
    stream_skip: HashMap<MapData, u64, u32>,
    /// What the limits array holds, slot by slot.
    limits_mirror: Vec<LimitCfg>,
    /// What the prefilter arrays hold, so updates write only changed words.
    mirror4: Vec<u64>,
    mirror6: Vec<u64>,
    /// Every ban in the kernel maps, by prefix.
    bans: crate::netmap::NetSet,
    allows: HashSet<IpNet>,
    config: Config,
    prefilter_dirty: bool,
    capacities: Capacities,
}

impl Datapath {
    /// Loads the embedded object. With `pin_dir`, maps are pinned there by
    /// name and reused if already pinned (bans survive agent restarts).
    ///
    /// # Errors
    /// When the kernel refuses the object or a map cannot be read.
    pub fn load(pin_dir: Option<&Path>, capacities: Capacities) -> Result<Self> {
        let mut dp = Self::load_background(pin_dir, capacities)?;
        dp.wait_programs()?;
        Ok(dp)
    }

    /// Like [`Self::load`], but returns once the maps exist (created, or
    /// taken over from `pin_dir`): the kernel verifies the programs on
    /// another thread meanwhile, so the maps can be filled at the same
    /// time. Nothing can be attached before [`Self::wait_programs`] (every
    /// program accessor waits for it): a restore fills the maps first, then
    /// waits, then attaches.
    ///
    /// # Errors
    /// As [`Self::load`], except for a program the kernel refuses, which
    /// [`Self::wait_programs`] reports.
    pub fn load_background(pin_dir: Option<&Path>, capacities: Capacities) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, n) in capacities.per_map() {
            loader.map_max_entries(name, n);
        }
        // Maps are declared pinned by name (so bans outlive the agent). An
        // unpinned instance (tests, benchmarks) pins into a private scratch
        // directory and unlinks it right after loading: the maps then live
        // exactly as long as this process holds them.
        static SCRATCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let scratch = pin_dir.is_none().then(|| {
            PathBuf::from(format!(
                "/sys/fs/bpf/tollgate-scratch-{}-{}",
                std::process::id(),
                SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        });
        let dir = pin_dir.or(scratch.as_deref());
        if let Some(dir) = dir {
            ensure_bpffs(dir)?;
            loader.default_map_pin_directory(dir);
            // Proxied connections' entries grew a head scan: an earlier
            // version's map of them (another value size) would make the
            // verifier refuse the programs. They are per-connection state,
            // lost at no cost (their connections are judged anew).
            // A pinned map of another size (the policy's `capacity`
            // changed) is replaced by a new one: the agent's store puts the
            // bans and allowlist back (reconcile at start), and the rest is
            // per-connection or per-source state, rebuilt as traffic comes.
            for (name, n) in capacities.per_map() {
                let pin = dir.join(name);
                if let Ok(info) = aya::maps::MapInfo::from_pin(&pin)
                    && info.max_entries() != n
                {
                    tracing::info!(
                        map = name,
                        from = info.max_entries(),
                        to = n,
                        "map capacity changed: a new map replaces the pinned one"
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
            Self::replace_foreign_pins(dir);
        }
        // Maps created by this load start zeroed: no need to read them back.
        let fresh = scratch.is_some() || pin_dir.is_some_and(|d| !d.join(maps::CONFIG).exists());
        let t_maps = std::time::Instant::now();
        let loaded = loader.load(EBPF_OBJECT);
        if let Some(s) = &scratch {
            let _ = std::fs::remove_dir_all(s);
        }
        let mut ebpf = loaded.map_err(|source| DatapathError::Load {
            hint: pin_dir.map_or_else(String::new, |d| {
                format!(
                    " (if maps pinned under {} come from an incompatible Tollgate version, \
                     stop the agent and remove that directory)",
                    d.display()
                )
            }),
            source: Box::new(source),
        })?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(DatapathError::MissingMap { name })
        };
        let config_map =
            Array::try_from(take(maps::CONFIG)?).map_err(map_err("open", maps::CONFIG))?;
        let counters = PerCpuArray::try_from(take(maps::COUNTERS)?)
            .map_err(map_err("open", maps::COUNTERS))?;
        let block4 =
            HashMap::try_from(take(maps::BLOCK4)?).map_err(map_err("open", maps::BLOCK4))?;
        let block6 =
            HashMap::try_from(take(maps::BLOCK6)?).map_err(map_err("open", maps::BLOCK6))?;
        let block4_lpm = LpmTrie::try_from(take(maps::BLOCK4_LPM)?)
            .map_err(map_err("open", maps::BLOCK4_LPM))?;
        let block6_lpm = LpmTrie::try_from(take(maps::BLOCK6_LPM)?)
            .map_err(map_err("open", maps::BLOCK6_LPM))?;
        let allow4 =
            LpmTrie::try_from(take(maps::ALLOW4)?).map_err(map_err("open", maps::ALLOW4))?;
        let allow6 =
            LpmTrie::try_from(take(maps::ALLOW6)?).map_err(map_err("open", maps::ALLOW6))?;
        let pre4 =
            Array::try_from(take(maps::PREFILTER4)?).map_err(map_err("open", maps::PREFILTER4))?;
        let pre6 =
            Array::try_from(take(maps::PREFILTER6)?).map_err(map_err("open", maps::PREFILTER6))?;
        let limits = Array::try_from(take(maps::LIMITS)?).map_err(map_err("open", maps::LIMITS))?;
        let buckets =
            HashMap::try_from(take(maps::BUCKETS)?).map_err(map_err("open", maps::BUCKETS))?;
        let conns = HashMap::try_from(take(maps::CONNS)?).map_err(map_err("open", maps::CONNS))?;
        let events = aya::maps::RingBuf::try_from(take(maps::EVENTS)?)
            .map_err(map_err("open", maps::EVENTS))?;
        let samples = aya::maps::RingBuf::try_from(take(maps::SAMPLES)?)
            .map_err(map_err("open", maps::SAMPLES))?;
        let api_ports =
            Array::try_from(take(maps::API_PORTS)?).map_err(map_err("open", maps::API_PORTS))?;
        let sampling =
            Array::try_from(take(maps::SAMPLING)?).map_err(map_err("open", maps::SAMPLING))?;
        let sample_stats = PerCpuArray::try_from(take(maps::SAMPLE_STATS)?)
            .map_err(map_err("open", maps::SAMPLE_STATS))?;
        let trust4 =
            LpmTrie::try_from(take(maps::TRUST4)?).map_err(map_err("open", maps::TRUST4))?;
        let trust6 =
            LpmTrie::try_from(take(maps::TRUST6)?).map_err(map_err("open", maps::TRUST6))?;
        let proxy_flows = HashMap::try_from(take(maps::PROXY_FLOWS)?)
            .map_err(map_err("open", maps::PROXY_FLOWS))?;
        let established = HashMap::try_from(take(maps::ESTABLISHED)?)
            .map_err(map_err("open", maps::ESTABLISHED))?;
        let handshakes = HashMap::try_from(take(maps::HANDSHAKES)?)
            .map_err(map_err("open", maps::HANDSHAKES))?;
        let flows = HashMap::try_from(take(maps::FLOWS)?).map_err(map_err("open", maps::FLOWS))?;
        let stream_sockets = aya::maps::SockHash::try_from(take(maps::STREAM_SOCKETS)?)
            .map_err(map_err("open", maps::STREAM_SOCKETS))?;
        let stream_skip = HashMap::try_from(take(maps::STREAM_SKIP)?)
            .map_err(map_err("open", maps::STREAM_SKIP))?;
        let config = config_map
            .get(&0, 0)
            .map_err(map_err("read", maps::CONFIG))?;
        // The jump tables stay in the object: the loader thread fills them.
        // The maps taken out of it above stay open until that thread is
        // done (`Drop` joins it): the programs refer to them by descriptor
        // number, and a number closed and reused meanwhile would hand the
        // verifier another file, or another map.
        let verifier_tid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let tid = std::sync::Arc::clone(&verifier_tid);
        let loading = std::thread::Builder::new()
            .name("tg-verify".into())
            .spawn(move || {
                tid.store(
                    nix::unistd::gettid().as_raw(),
                    std::sync::atomic::Ordering::Release,
                );
                load_programs(ebpf)
            })
            .map_err(|source| DatapathError::Program {
                name: "(verifier thread)",
                source: Box::new(ProgramError::IOError(source)),
            })?;
        let t_adopt = std::time::Instant::now();
        let mut dp = Self {
            ebpf: None,
            loading: Some(loading),
            verifier_tid,
            config_map,
            counters,
            block4,
            block6,
            block4_lpm,
            block6_lpm,
            allow4,
            allow6,
            pre4,
            pre6,
            limits,
            buckets,
            conns,
            events: Some(events),
            samples: Some(samples),
            api_ports,
            sampling,
            sample_stats,
            trust4,
            trust6,
            proxy_flows,
            established: Some(established),
            handshakes,
            flows,
            stream_sockets: Some(stream_sockets),
            stream_skip,
            limits_mirror: Vec::new(),
            mirror4: Vec::new(),
            mirror6: Vec::new(),
            bans: crate::netmap::NetSet::default(),
            allows: HashSet::new(),
            config,
            prefilter_dirty: false,
            capacities,
        };
        dp.adopt_kernel_state(fresh)?;
        tracing::info!(
            open = ?t_adopt.duration_since(t_maps),
            adopt = ?t_adopt.elapsed(),
            bans = dp.bans.len(),
            "pinned maps read"
        );
        Ok(dp)
    }

    /// Whether the kernel is still verifying the programs (the maps are
    /// usable meanwhile).
    #[must_use]
    pub fn programs_loading(&self) -> bool {
        self.loading.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Waits until the kernel has verified and loaded the programs (at once
    /// after [`Self::load`]).
    ///
    /// # Errors
    /// When the kernel refused a program (the first error, once; later
    /// calls say the programs are not loaded).
    pub fn wait_programs(&mut self) -> Result<()> {
        if let Some(h) = self.loading.take() {
            let t = std::time::Instant::now();
            let ebpf = h.join().map_err(|_| DatapathError::Program {
                name: "(verifier thread)",
                source: Box::new(ProgramError::NotLoaded),
            })??;
            tracing::info!(waited = ?t.elapsed(), "programs ready");
            self.ebpf = Some(ebpf);
        }
        Ok(())
    }

    /// The kernel's id of the thread verifying the programs, while there is
    /// one (tests check that nothing outlives the datapath).
    #[doc(hidden)]
    #[must_use]
    pub fn verifier_tid(&self) -> Option<i32> {
        let tid = self.verifier_tid.load(std::sync::atomic::Ordering::Acquire);
        (tid > 0).then_some(tid)
    }

    /// The object, once its programs are loaded.
    fn obj(&mut self) -> Result<&mut Ebpf> {
        self.wait_programs()?;
        self.ebpf.as_mut().ok_or(DatapathError::Program {
            name: "(all)",
            source: Box::new(ProgramError::NotLoaded),
        })
    }
}

impl Drop for Datapath {
    /// A start that fails (or a datapath dropped) while the kernel still
    /// verifies the programs waits for it: the fields, the map descriptors
    /// the programs refer to among them, close only after this.
    fn drop(&mut self) {
        if let Some(h) = self.loading.take() {
            let _ = h.join();
        }
    }
}

impl Datapath {
    /// Unlinks every pinned map whose type or key or value size is not what this
    /// build's object declares (a map of an older or newer version, or one
    /// planted under its name), so the load creates a fresh one. The agent
    /// reads and writes pinned maps while the kernel still verifies the
    /// programs, and the verifier is what used to refuse such a map: read or
    /// written at the wrong stride it would corrupt memory or enforce garbage.
    /// A map replaced here loses nothing durable: the store puts the bans and
    /// allow entries back, the rest is per-connection or per-source state. A
    /// program of the previous agent still attached keeps its own map until
    /// this agent's programs take its links over.
    fn replace_foreign_pins(dir: &Path) {
        let Ok(obj) = aya_obj::Object::parse(EBPF_OBJECT) else {
            return;
        };
        for (name, def) in &obj.maps {
            let pin = dir.join(name);
            let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
                continue;
            };
            let kernel = (
                info.map_type().map_or(u32::MAX, |t| t as u32),
                info.key_size(),
                info.value_size(),
            );
            let declared = (def.map_type(), def.key_size(), def.value_size());
            if kernel != declared {
                tracing::warn!(
                    map = %name,
                    pinned = ?kernel,
                    expected = ?declared,
                    "a pinned map of another layout (type, key size, value size) is replaced by a new one"
                );
                let _ = std::fs::remove_file(&pin);
            }
        }
    }

    /// Reads what pinned maps already hold (after a restart) so the mirrors
    /// match the kernel, then repairs the prefilter and flags.
    fn adopt_kernel_state(&mut self, fresh: bool) -> Result<()> {
        if fresh {
            let words = prefilter::WORDS as usize;
            self.mirror4 = vec![0; words];
            self.mirror6 = vec![0; words];
            self.limits_mirror = vec![LimitCfg::default(); capacity::LIMIT_SLOTS as usize];
            return Ok(());
        }
        // Keys only, straight into the mirror, a chunk at a time (with a
        // million pinned bans a full read would be tens of MiB held at
        // once, and one syscall per key takes seconds).
        adopt_hosts(&self.block4, &mut self.bans, maps::BLOCK4)?;
        adopt_hosts(&self.block6, &mut self.bans, maps::BLOCK6)?;
        let mut ranges = Vec::new();
        trie_entries(&self.block4_lpm, maps::BLOCK4_LPM, net4_of, &mut ranges)?;
        trie_entries(&self.block6_lpm, maps::BLOCK6_LPM, net6_of, &mut ranges)?;
        for (net, _) in ranges {
            self.bans.insert(net, ());
        }
        for (net, _) in self.allow_entries()? {
            self.allows.insert(net);
        }
        let mut flags = self.config.flags & !(config_flags::V4_ALLOW | config_flags::V6_ALLOW);
        if self.allows.iter().any(|n| matches!(n, IpNet::V4(_))) {
            flags |= config_flags::V4_ALLOW;
        }
        if self.allows.iter().any(|n| matches!(n, IpNet::V6(_))) {
            flags |= config_flags::V6_ALLOW;
        }
        if flags != self.config.flags {
            self.config.flags = flags;
            self.write_config()?;
        }
        self.limits_mirror = self
            .limits
            .iter()
            .map(|w| w.map_err(map_err("read", maps::LIMITS)))
            .collect::<Result<_>>()?;
        self.mirror4 = read_words(&self.pre4, maps::PREFILTER4)?;
        self.mirror6 = read_words(&self.pre6, maps::PREFILTER6)?;
        self.prefilter_dirty = true;
        self.maintain()
    }

    /// The XDP program, loaded.
    ///
    /// # Errors
    /// Never in practice: `load` checked it is there.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        self.xdp_program(programs::XDP_INGRESS)
    }

    /// One of the XDP programs (`programs::XDP_*`), loaded.
    ///
    /// # Errors
    /// When there is no such loaded program.
    pub fn xdp_program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        self.obj()?
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })
    }

    /// The TC (tcx) program, loaded.
    ///
    /// # Errors
    /// Never in practice: `load` checked it is there.
    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        let name = programs::TC_INGRESS;
        self.obj()?
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })
    }

    /// The loaded object, for benchmarks and tools that need its other
    /// programs (`bench_*`) and maps, and for the TLS probes.
    ///
    /// # Errors
    /// When the programs failed to load (see [`Self::wait_programs`]).
    pub fn ebpf_mut(&mut self) -> Result<&mut Ebpf> {
        self.obj()
    }

    /// Loads (once) and returns one of the object's other XDP programs.
    ///
    /// # Errors
    /// When the program is missing or the kernel refuses it.
    pub fn extra_xdp(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let missing = || DatapathError::Program {
            name,
            source: Box::new(ProgramError::NotLoaded),
        };
        let prog: &mut Xdp = self
            .obj()?
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or_else(missing)?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        Ok(prog)
    }

    /// Current mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        if self.config.mode == Mode::Monitor as u32 {
            Mode::Monitor
        } else {
            Mode::Enforce
        }
    }

    /// Switches enforce/monitor.
    ///
    /// # Errors
    /// When the config map cannot be written.
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        self.config.mode = mode as u32;
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_err("write", maps::CONFIG))
    }

    /// Writes the limits: `default` into slot 0 (every port without its
    /// own limits, and non-TCP/UDP traffic), `table[p]` into slot `p` (its
    /// `class` is the port, which marks the slot as the port's own). Only
    /// changed slots are written; the `LIMITS` flag follows whether any
    /// limit is active.
    ///
    /// # Errors
    /// When a map write fails.
    pub fn set_limits(
        &mut self,
        default: Option<LimitCfg>,
        table: &std::collections::BTreeMap<u16, LimitCfg>,
        v6_prefix: u8,
    ) -> Result<()> {
        let slots = capacity::LIMIT_SLOTS as usize;
        if self.limits_mirror.len() != slots {
            self.limits_mirror = vec![LimitCfg::default(); slots];
        }
        let mut want: std::collections::BTreeMap<usize, LimitCfg> = table
            .iter()
            .filter(|(p, _)| **p != 0)
            .map(|(p, c)| {
                let mut c = *c;
                c.class = u32::from(*p);
                (usize::from(*p), c)
            })
            .collect();
        let mut d = default.unwrap_or_default();
        d.class = 0;
        want.insert(0, d);
        let any = want.values().any(LimitCfg::is_active);
        // Slots that held a port's own limits and no longer should.
        let stale: Vec<usize> = self
            .limits_mirror
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != 0 && c.class != 0 && !want.contains_key(i))
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            want.insert(i, LimitCfg::default());
        }
        for (slot, cfg) in want {
            if self.limits_mirror[slot] != cfg {
                self.limits
                    .set(u32::try_from(slot).unwrap_or(0), cfg, 0)
                    .map_err(map_err("write", maps::LIMITS))?;
                self.limits_mirror[slot] = cfg;
            }
        }
        let mut flags = self.config.flags & !config_flags::LIMITS;
        if any {
            flags |= config_flags::LIMITS;
        }
        if flags != self.config.flags || self.config.v6_limit_prefix != u32::from(v6_prefix) {
            self.config.flags = flags;
            self.config.v6_limit_prefix = u32::from(v6_prefix);
            self.config.v6_limit_mask = tollgate_common::v6_mask(v6_prefix);
            self.write_config()?;
        }
        Ok(())
    }

    /// Every tracked rate-limit source and its state.
    ///
    /// # Errors
    /// When iterating the map fails.
    pub fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        self.buckets
            .iter()
            .map(|kv| kv.map_err(map_err("iterate", maps::BUCKETS)))
            .collect()
    }

    /// Established-connection counts per source.
    ///
    /// # Errors
    /// When iterating the map fails.
    pub fn conns(&self) -> Result<Vec<(BucketKey, u64)>> {
        self.conns
            .iter()
            .map(|kv| kv.map_err(map_err("iterate", maps::CONNS)))
            .collect()
    }

    /// Forgets every connection count (used when no program was counting).
    pub fn clear_conns(&mut self) {
        let keys: Vec<BucketKey> = self
            .conns
            .keys()
            .filter_map(std::result::Result::ok)
            .collect();
        for k in keys {
            let _ = self.conns.remove(&k);
        }
    }

    /// Sets the API ports whose TCP payloads are sampled (empty: sampling off).
    ///
    /// # Errors
    /// When a map write fails.
    pub fn set_api_ports(
        &mut self,
        ports: &std::collections::BTreeSet<u16>,
        cfg: tollgate_common::SampleCfg,
    ) -> Result<()> {
        for p in 1..=u16::MAX {
            let want = u32::from(ports.contains(&p));
            // Only touch slots that change (reads are cheap, writes flush).
            let have = self.api_ports.get(&u32::from(p), 0).unwrap_or(0);
            if have != want {
                self.api_ports
                    .set(u32::from(p), want, 0)
                    .map_err(map_err("write", maps::API_PORTS))?;
            }
        }
        self.set_sampling(cfg)?;
        let mut flags = self.config.flags & !config_flags::SAMPLING;
        if !ports.is_empty() && cfg.max_bytes > 0 {
            flags |= config_flags::SAMPLING;
        }
        if flags != self.config.flags {
            self.config.flags = flags;
            self.write_config()?;
        }
        Ok(())
    }

    /// Replaces the trusted proxies (empty: none; their connections are then
    /// judged by the proxy's address like any source).
    ///
    /// # Errors
    /// When a map write fails.
    pub fn set_trusted(&mut self, nets: &[IpNet]) -> Result<()> {
        let old4: Vec<_> = self.trust4.keys().filter_map(|k| k.ok()).collect();
        let old6: Vec<_> = self.trust6.keys().filter_map(|k| k.ok()).collect();
        for net in nets {
            match net {
                IpNet::V4(n) => self
                    .trust4
                    .insert(&key4(*n), 1, 0)
                    .map_err(map_err("insert into", maps::TRUST4))?,
                IpNet::V6(n) => self
                    .trust6
                    .insert(&key6(*n), 1, 0)
                    .map_err(map_err("insert into", maps::TRUST6))?,
            }
        }
        let keep4: HashSet<(u32, [u8; 4])> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some((u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V6(_) => None,
            })
            .collect();
        let keep6: HashSet<(u32, [u8; 16])> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) => Some((u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V4(_) => None,
            })
            .collect();
        for k in old4 {
            if !keep4.contains(&(k.prefix_len(), k.data())) {
                let _ = self.trust4.remove(&k);
            }
        }
        for k in old6 {
            if !keep6.contains(&(k.prefix_len(), k.data())) {
                let _ = self.trust6.remove(&k);
            }
        }
        let mut flags = self.config.flags & !config_flags::TRUSTED;
        if !nets.is_empty() {
            flags |= config_flags::TRUSTED;
        }
        if flags != self.config.flags {
            self.config.flags = flags;
            self.write_config()?;
        }
        Ok(())
    }

    /// Marks a connection from a trusted proxy as carrying a banned client:
    /// the datapath drops its packets from now on (until FIN/RST or LRU).
    ///
    /// # Errors
    /// When the map write fails.
    pub fn arm_proxy_flow(
        &mut self,
        key: tollgate_common::FlowKey,
        real: std::net::IpAddr,
    ) -> Result<()> {
        let real = match real {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        let flow = tollgate_common::ProxyFlow {
            real,
            state: tollgate_common::proxy_state::BANNED,
            ..tollgate_common::ProxyFlow::default()
        };
        self.proxy_flows
            .insert(key, flow, 0)
            .map_err(map_err("insert into", maps::PROXY_FLOWS))
    }

    /// The datapath's record of a proxied connection, if any.
    #[must_use]
    pub fn proxy_flow(&self, key: &tollgate_common::FlowKey) -> Option<tollgate_common::ProxyFlow> {
        self.proxy_flows.get(key, 0).ok()
    }

    /// Writes the sampling policy (the agent lowers the rate under load).
    ///
    /// # Errors
    /// When the map write fails.
    pub fn set_sampling(&mut self, cfg: tollgate_common::SampleCfg) -> Result<()> {
        self.sampling
            .set(0, cfg, 0)
            .map_err(map_err("write", maps::SAMPLING))
    }

    /// Sampling counters (taken, lost, skipped), summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn sample_stats(&self) -> Result<[u64; 3]> {
        let mut out = [0u64; 3];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .sample_stats
                .get(&u32::try_from(i).unwrap_or(0), 0)
                .map_err(map_err("read", maps::SAMPLE_STATS))?;
            *slot = v.iter().sum();
        }
        Ok(out)
    }

    /// Lets the stream program stop copying the bytes of socket `cookie`
    /// before stream offset `until` (mod 2^32).
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn skip_stream(&mut self, cookie: u64, until: u32) -> Result<()> {
        self.stream_skip
            .insert(cookie, until, 0)
            .map_err(map_err("write", maps::STREAM_SKIP))?;
        Ok(())
    }

    /// Takes API requests at the socket from now on: attaches the stream
    /// verdict program to the API-socket map and tells sock_ops to fill it.
    /// Until this succeeds, requests are sampled at the NIC.
    ///
    /// # Errors
    /// When the kernel refuses the program or the attachment.
    pub fn attach_stream(&mut self) -> Result<()> {
        let name = programs::STREAM;
        if self.stream_sockets.is_none() {
            return Ok(());
        }
        self.obj()?;
        let (Some(ebpf), Some(socks)) = (self.ebpf.as_mut(), self.stream_sockets.as_ref()) else {
            return Ok(());
        };
        let prog: &mut aya::programs::SkSkb = ebpf
            .program_mut(name)
            .and_then(|p| <&mut aya::programs::SkSkb>::try_from(p).ok())
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })?;
        let err = |source| DatapathError::Program {
            name,
            source: Box::new(source),
        };
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        prog.attach(socks.fd()).map_err(err)?;
        self.config.flags |= config_flags::STREAM;
        self.write_config()
    }

    /// Forgets every flow's sampling state (the marks of streamed
    /// connections included): used when the sock_ops program that set them
    /// is replaced, so no connection's requests stay unsampled.
    pub fn clear_flows(&mut self) {
        let keys: Vec<tollgate_common::FlowKey> =
            self.flows.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.flows.remove(&k);
        }
    }

    /// Hands the record of kernel-established connections to the API
    /// pipeline (once), which bans only on requests it verifies there.
    pub fn take_flow_verifier(&mut self) -> Option<crate::verify::FlowVerifier> {
        self.established
            .take()
            .map(crate::verify::FlowVerifier::new)
    }

    /// Boot-clock ns of the latest TCP handshake `addr` (IPv4 mapped, IPv6
    /// masked as for rate limits) completed with this host, if remembered.
    #[must_use]
    pub fn handshake_ns(&self, addr: &[u8; 16]) -> Option<u64> {
        self.handshakes.get(addr, 0).ok()
    }

    /// Hands the sample ring buffer to its reader (once).
    pub fn take_samples(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.samples.take()
    }

    /// The TC egress (response sampling) program.
    ///
    /// # Errors
    /// Never in practice: `load` loaded it.
    pub fn tc_egress(&mut self) -> Result<&mut SchedClassifier> {
        let name = programs::TC_EGRESS;
        self.obj()?
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })
    }

    /// Hands the event ring buffer to its reader (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.events.take()
    }

    /// The sock_ops program, loaded on first use.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn sockops(&mut self) -> Result<&mut aya::programs::SockOps> {
        let name = programs::SOCKOPS;
        let prog: &mut aya::programs::SockOps = self
            .obj()?
            .program_mut(name)
            .and_then(|p| <&mut aya::programs::SockOps>::try_from(p).ok())
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        Ok(prog)
    }

    /// Map capacities in force.
    #[must_use]
    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// Packets and bytes by verdict and reason, summed over CPUs.
    ///
    /// # Errors
    /// When the counters map cannot be read.
    pub fn counters(&self) -> Result<Vec<(Verdict, Reason, Counter)>> {
        let mut out = Vec::new();
        for v in Verdict::ALL {
            for r in Reason::ALL {
                let per_cpu = self
                    .counters
                    .get(&counter_index(v, r), 0)
                    .map_err(map_err("read", maps::COUNTERS))?;
                let mut sum = Counter::default();
                for c in per_cpu.iter() {
                    sum.packets += c.packets;
                    sum.bytes += c.bytes;
                }
                out.push((v, r, sum));
            }
        }
        Ok(out)
    }

    /// Fill levels of the ban and allow maps.
    #[must_use]
    pub fn fill(&self) -> Fill {
        let mut f = Fill {
            allow: self.allows.len(),
            ..Fill::default()
        };
        for n in self.bans.keys() {
            match n {
                IpNet::V4(n) if n.prefix_len() == 32 => f.block4 += 1,
                IpNet::V4(_) => f.block4_ranges += 1,
                IpNet::V6(n) if n.prefix_len() == 128 => f.block6 += 1,
                IpNet::V6(_) => f.block6_ranges += 1,
            }
        }
        f
    }

    /// After removals: recomputes the prefilter and flags from the bans still
    /// held and writes the words that changed (clearing stale bits).
    ///
    /// # Errors
    /// When a map write fails.
    pub fn maintain(&mut self) -> Result<()> {
        if !self.prefilter_dirty {
            return Ok(());
        }
        let words = prefilter::WORDS as usize;
        let mut new4 = vec![0u64; words];
        let mut new6 = vec![0u64; words];
        let mut flags = self.config.flags
            & !(config_flags::V4_RANGES | config_flags::V6_RANGES | config_flags::V6_SHORT_RANGES);
        for net in self.bans.keys() {
            match &net {
                IpNet::V4(n) => {
                    for b in v4_buckets(*n) {
                        let (w, m) = prefilter::word_and_mask(b);
                        new4[w as usize] |= m;
                    }
                    if n.prefix_len() < 32 {
                        flags |= config_flags::V4_RANGES;
                    }
                }
                IpNet::V6(n) => {
                    let enumerated = each_v6_bucket(*n, |b| {
                        let (w, m) = prefilter::word_and_mask(b);
                        new6[w as usize] |= m;
                    });
                    if !enumerated {
                        flags |= config_flags::V6_SHORT_RANGES;
                    }
                    if n.prefix_len() < 128 {
                        flags |= config_flags::V6_RANGES;
                    }
                }
            }
        }
        // Set bits first (already set by insert), then flags, then clear.
        if flags != self.config.flags {
            self.config.flags = flags;
            self.write_config()?;
        }
        for (i, (new, old)) in new4.iter().zip(self.mirror4.iter_mut()).enumerate() {
            if new != old {
                self.pre4
                    .set(i as u32, *new, 0)
                    .map_err(map_err("write", maps::PREFILTER4))?;
                *old = *new;
            }
        }
        for (i, (new, old)) in new6.iter().zip(self.mirror6.iter_mut()).enumerate() {
            if new != old {
                self.pre6
                    .set(i as u32, *new, 0)
                    .map_err(map_err("write", maps::PREFILTER6))?;
                *old = *new;
            }
        }
        self.prefilter_dirty = false;
        Ok(())
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `pin_dir` exists on a bpffs, mounting one at /sys/fs/bpf when
/// that is where it should be and nothing is mounted there (fresh hosts).
///
/// # Errors
/// When mounting or creating the directory fails, or it is on another filesystem.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        let _ = std::fs::create_dir_all(root);
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DatapathError::PinDir {
            message: "bpffs is not mounted and mounting it failed",
            path: root.to_owned(),
            source: e.into(),
        })?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir {
        message: "failed to create pin directory",
        path: pin_dir.to_owned(),
        source,
    })?;
    if !is_bpffs(pin_dir) {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_owned(),
        });
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Appends every prefix of an LPM trie with its value.
fn trie_entries<const N: usize, V: aya::Pod>(
    trie: &LpmTrie<MapData, [u8; N], V>,
    name: &'static str,
    net_of: fn(&Key<[u8; N]>) -> Option<IpNet>,
    out: &mut Vec<(IpNet, V)>,
) -> Result<()> {
    for kv in trie.iter() {
        let (k, v) = kv.map_err(map_err("iterate", name))?;
        if let Some(n) = net_of(&k) {
            out.push((n, v));
        }
    }
    Ok(())
}

/// Deletes report a missing key as ENOENT from the syscall.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Every key of a pinned host ban map into `bans`, one syscall per chunk
/// where the kernel can.
fn adopt_hosts<const N: usize>(
    map: &HashMap<MapData, [u8; N], BlockEntry>,
    bans: &mut crate::netmap::NetSet,
    name: &'static str,
) -> Result<()>
where
    [u8; N]: aya::Pod + Default,
    std::net::IpAddr: From<[u8; N]>,
{
    let batched = bans::lookup_batch(
        IterableMap::map(map),
        &mut |ks: &[[u8; N]], _: &[BlockEntry]| {
            for k in ks {
                bans.insert(IpNet::from(std::net::IpAddr::from(*k)), ());
            }
        },
    )
    .map_err(map_err("iterate", name))?;
    if !batched {
        for k in map.keys() {
            let k = k.map_err(map_err("iterate", name))?;
            bans.insert(IpNet::from(std::net::IpAddr::from(k)), ());
        }
    }
    Ok(())
}

fn read_words(arr: &Array<MapData, u64>, name: &'static str) -> Result<Vec<u64>> {
    // One syscall per chunk, not per word (2 × 262,144 words on a warm start).
    let mut words = vec![0u64; arr.len() as usize];
    let batched = bans::lookup_batch(IterableMap::map(arr), &mut |ks: &[u32], vs: &[u64]| {
        for (k, v) in ks.iter().zip(vs) {
            if let Some(w) = words.get_mut(*k as usize) {
                *w = *v;
            }
        }
    })
    .map_err(map_err("read", name))?;
    if batched {
        return Ok(words);
    }
    arr.iter()
        .map(|w| w.map_err(map_err("read", name)))
        .collect()
}

fn key4(n: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

fn key6(n: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

fn net4_of(k: &Key<[u8; 4]>) -> Option<IpNet> {
    let len = u8::try_from(k.prefix_len()).ok()?;
    Ipv4Net::new(Ipv4Addr::from(k.data()), len)
        .ok()
        .map(IpNet::V4)
}

fn net6_of(k: &Key<[u8; 16]>) -> Option<IpNet> {
    let len = u8::try_from(k.prefix_len()).ok()?;
    Ipv6Net::new(Ipv6Addr::from(k.data()), len)
        .ok()
        .map(IpNet::V6)
}

/// Prefilter buckets an IPv4 prefix covers.
fn v4_buckets(n: Ipv4Net) -> std::ops::Range<u32> {
    let first = prefilter::bucket_v4(u32::from(n.network()));
    let len = n.prefix_len();
    let count = if len >= prefilter::V4_BUCKET_PREFIX {
        1
    } else {
        1u32 << (prefilter::V4_BUCKET_PREFIX - len)
    };
    first..first + count
}

/// Calls `f` with each prefilter bucket an IPv6 prefix covers; `false` (and
/// no call) when it is too short to enumerate (the datapath then bypasses
/// the IPv6 prefilter). A host or long prefix is one bucket, no allocation.
fn each_v6_bucket(n: Ipv6Net, mut f: impl FnMut(u32)) -> bool {
    if n.prefix_len() >= prefilter::V6_BUCKET_PREFIX {
        f(prefilter::bucket_v6(&n.network().octets()));
        return true;
    }
    match v6_buckets(n) {
        Some(bs) => {
            bs.into_iter().for_each(f);
            true
        }
        None => false,
    }
}

/// Prefilter buckets an IPv6 prefix covers, or `None` when it is too short to
/// enumerate (the datapath then bypasses the IPv6 prefilter).
fn v6_buckets(n: Ipv6Net) -> Option<Vec<u32>> {
    let len = n.prefix_len();
    if len < prefilter::V6_MIN_ENUMERATED_PREFIX {
        return None;
    }
    let base = n.network().octets();
    if len >= prefilter::V6_BUCKET_PREFIX {
        return Some(vec![prefilter::bucket_v6(&base)]);
    }
    let free = u32::from(prefilter::V6_BUCKET_PREFIX - len);
    let top = u64::from_be_bytes([0, 0, base[0], base[1], base[2], base[3], base[4], base[5]]);
    Some(
        (0..1u64 << free)
            .map(|i| {
                let t = (top | i).to_be_bytes();
                let mut a = [0u8; 16];
                a[..6].copy_from_slice(&t[2..8]);
                prefilter::bucket_v6(&a)
            })
            .collect(),
    )
}

/// Has the kernel verify and load the hook programs and the tail-called
/// ones (filling their jump tables), returning the object.
fn load_programs(mut ebpf: Ebpf) -> Result<Ebpf> {
    let t0 = std::time::Instant::now();
    let cpu = || crate::clock::cpu(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID);
    for name in [
        programs::XDP_INGRESS,
        programs::TC_INGRESS,
        programs::TC_EGRESS,
    ] {
        let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
            name,
            source: Box::new(ProgramError::NotLoaded),
        })?;
        let res = match prog {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => Err(ProgramError::UnexpectedProgramType),
        };
        res.map_err(|source| DatapathError::Program {
            name,
            source: Box::new(source),
        })?;
    }
    // The request sampler and the proxy program are reached by tail call
    // from the ingress program of either hook, each through its own table.
    for (name, table, slot) in [
        (
            programs::XDP_SAMPLE,
            maps::JUMP,
            tollgate_common::jump::SAMPLE,
        ),
        (
            programs::XDP_PROXY,
            maps::JUMP,
            tollgate_common::jump::PROXY,
        ),
        (
            programs::TC_SAMPLE,
            maps::JUMP_TC,
            tollgate_common::jump::SAMPLE,
        ),
        (
            programs::TC_PROXY,
            maps::JUMP_TC,
            tollgate_common::jump::PROXY,
        ),
    ] {
        let prog_err = |source| DatapathError::Program {
            name,
            source: Box::new(source),
        };
        let prog = ebpf
            .program_mut(name)
            .ok_or(prog_err(ProgramError::NotLoaded))?;
        let loaded = match &mut *prog {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => Err(ProgramError::UnexpectedProgramType),
        };
        let fd = loaded
            .and_then(|()| prog.fd()?.try_clone().map_err(ProgramError::IOError))
            .map_err(prog_err)?;
        let jump = ebpf
            .map_mut(table)
            .ok_or(DatapathError::MissingMap { name: table })?;
        let mut jump = aya::maps::ProgramArray::try_from(jump).map_err(map_err("open", table))?;
        jump.set(slot, &fd, 0).map_err(map_err("write", table))?;
    }
    tracing::info!(took = ?t0.elapsed(), cpu = ?cpu(), "programs verified");
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_bucket_ranges() {
        let n: Ipv4Net = "198.18.0.0/16".parse().unwrap();
        let r = v4_buckets(n);
        assert_eq!(r.len(), 256);
        assert_eq!(r.start, u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 8);
        let h: Ipv4Net = "198.18.3.4/32".parse().unwrap();
        assert_eq!(v4_buckets(h).len(), 1);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(v4_buckets(all).len(), 1 << 24);
    }

    #[test]
    fn v6_buckets_cover_every_address_in_the_prefix() {
        let n: Ipv6Net = "fd00:1:200::/40".parse().unwrap();
        let bs = v6_buckets(n).unwrap();
        assert_eq!(bs.len(), 256);
        let inside: Ipv6Addr = "fd00:1:2ab::77".parse().unwrap();
        assert!(bs.contains(&prefilter::bucket_v6(&inside.octets())));
        let short: Ipv6Net = "fd00::/24".parse().unwrap();
        assert!(v6_buckets(short).is_none());
    }
}
