//! HTTPS seen from inside: the plaintext a server's TLS library reads and
//! writes, taken by uprobes on OpenSSL (`ebpf-programs/tollgate-ebpf/src/tls.rs`)
//! and judged by the same pipeline as plaintext API traffic.
//!
//! - [`procfs`]: which processes map a TLS library; which connection a
//!   process's descriptor is.
//! - [`probes`]: loading the programs, attaching them per library file.
//! - this module: the policy section, discovery (every second, `/proc/*/maps`),
//!   and turning the kernel's (process, descriptor) records into samples of
//!   the connection's 4-tuple, kept only for sockets on TLS ports.

pub mod probes;
pub mod procfs;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tollgate_common::{Established, FlowKey, SampleHeader, sample_source, tls_stat};
use tracing::{info, warn};

pub use crate::policy::TlsPolicy;
use crate::{
    api::sample::Sample,
    proto::{LibraryView, TlsStatus},
};

use procfs::FileId;

#[derive(Clone, Copy)]
struct Cached {
    /// The connection, when it is one to judge.
    flow: Option<(IpAddr, u16, IpAddr, u16)>,
    excluded: bool,
    /// The descriptor was gone or reused when the stream was first read.
    dead: bool,
}

/// Resolution of the kernel's records; shared by the sample reader and the
/// status command.
#[derive(Default)]
pub struct TlsState {
    policy: TlsPolicy,
    ports: BTreeSet<u16>,
    /// By process, descriptor and stream id.
    conns: HashMap<(u32, i32, u32), Cached>,
    /// The streams cached before `conns` last filled up: a stream announced
    /// just before that, whose records are still in the ring, finds its
    /// connection here (its descriptor may be closed by now).
    old_conns: HashMap<(u32, i32, u32), Cached>,
    /// The kernel's record of established connections (`TG_ESTAB`).
    established: Option<aya::maps::HashMap<aya::maps::MapData, FlowKey, Established>>,
    /// What `status` shows.
    pub status: TlsStatus,
}

/// Bound on remembered streams, twice over (see `TlsState::old_conns`;
/// streams forgotten resolve again from their descriptor).
const MAX_CACHED: usize = 1 << 16;

/// The shared TLS state ([`TlsState`]).
pub type Handle = Arc<Mutex<TlsState>>;

impl TlsState {
    /// The connection of stream `id` on the process's descriptor, resolved
    /// once (when its first record is read; a descriptor gone by then, or
    /// reused, drops the stream's records rather than misattributing them).
    fn resolve(&mut self, tgid: u32, fd: i32, id: u32, ts_ns: u64) -> Cached {
        let key = (tgid, fd, id);
        if let Some(c) = self.conns.get(&key) {
            return *c;
        }
        if let Some(c) = self.old_conns.remove(&key) {
            self.cache(key, c);
            return c;
        }
        let c = self.lookup(tgid, fd, ts_ns).unwrap_or(Cached {
            flow: None,
            excluded: false,
            dead: true,
        });
        self.cache(key, c);
        c
    }

    /// Remembers a stream's resolution; past [`MAX_CACHED`], the older half
    /// goes (streams still read come back from it on their next record).
    fn cache(&mut self, key: (u32, i32, u32), c: Cached) {
        if self.conns.len() >= MAX_CACHED {
            self.old_conns = std::mem::take(&mut self.conns);
        }
        self.conns.insert(key, c);
    }

    fn lookup(&self, tgid: u32, fd: i32, ts_ns: u64) -> Option<Cached> {
        // A process the policy does not select (a TLS client on this host
        // using the same library file) is dropped without looking up its
        // connection.
        if procfs::comm(tgid).is_some_and(|c| !self.policy.selects(&c)) {
            return Some(Cached {
                flow: None,
                excluded: true,
                dead: false,
            });
        }
        let conn = procfs::connection_of_fd(tgid, fd).or_else(|| {
            let inode = procfs::socket_inode(tgid, fd)?;
            procfs::connection(tgid, inode)
        })?;
        let excluded = false;
        let flow = self.ports.contains(&conn.local.1).then_some((
            conn.remote.0,
            conn.remote.1,
            conn.local.0,
            conn.local.1,
        ));
        let since_ns = flow
            .and_then(|f| {
                let key = FlowKey {
                    client: mapped(f.0),
                    server: mapped(f.2),
                    client_port: f.1,
                    server_port: f.3,
                };
                self.established.as_ref()?.get(&key, 0).ok()
            })
            .map_or(0, |e| e.since_ns);
        // The connection behind the descriptor now began after the bytes
        // were captured: the descriptor was closed and reused meanwhile.
        if ts_ns < since_ns {
            return None;
        }
        Some(Cached {
            flow,
            excluded,
            dead: false,
        })
    }

    /// Resolves a new stream announced on the kernel's `TG_TLS_NEW` ring,
    /// now, while its descriptor is surely open: its data, read later from
    /// the sample ring (held back to be read in batches), finds the
    /// connection cached under the stream's id even if it was closed
    /// meanwhile. A record that is not an announcement changes nothing.
    pub fn announce(&mut self, raw: &[u8]) {
        let Some(a) = Announcement::parse(raw) else {
            return;
        };
        self.status.streams_announced += 1;
        let _ = self.resolve(a.tgid, a.fd, a.id, a.ts_ns);
    }

    /// Decodes one ring-buffer record: a TLS record becomes a sample of its
    /// connection (or `None`: not one to judge); others decode as they are.
    pub fn sample(&mut self, raw: &[u8]) -> Option<Sample> {
        let mut s = Sample::from_record(raw)?;
        if !s.tls {
            return Some(s);
        }
        // SAFETY: `from_record` checked the length; SampleHeader is POD.
        let h: SampleHeader = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        debug_assert_eq!(h.source, sample_source::TLS);
        let fd = i32::try_from(h.ifindex).ok()?;
        let c = self.resolve(h.cookie as u32, fd, (h.cookie >> 32) as u32, h.ts_ns);
        if h.payload_len == 0 {
            // An accepted connection announced: resolved now, nothing to judge.
            return None;
        }
        if c.dead {
            self.status.records_unresolved += 1;
            return None;
        }
        if c.excluded {
            self.status.records_excluded += 1;
            return None;
        }
        let Some((client, client_port, server, server_port)) = c.flow else {
            self.status.records_other += 1;
            return None;
        };
        self.status.records += 1;
        s.client = client;
        s.client_port = client_port;
        s.server = server;
        s.server_port = server_port;
        s.ifindex = 0;
        Some(s)
    }
}

/// A new TLS stream as the kernel announces it: a payload-less TLS sample
/// header naming the process (cookie's low half), the descriptor
/// (`ifindex`) and the stream id (cookie's high half).
#[derive(Debug, PartialEq, Eq)]
struct Announcement {
    tgid: u32,
    fd: i32,
    id: u32,
    ts_ns: u64,
}

impl Announcement {
    /// `None` for anything else: short, not a TLS record, carrying data,
    /// a descriptor out of range, or no stream id (the kernel never uses
    /// 0).
    fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() < std::mem::size_of::<SampleHeader>() {
            return None;
        }
        // SAFETY: length checked; SampleHeader is POD.
        let h: SampleHeader = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let id = (h.cookie >> 32) as u32;
        if h.source != sample_source::TLS || h.payload_len != 0 || h.captured != 0 || id == 0 {
            return None;
        }
        Some(Self {
            tgid: h.cookie as u32,
            fd: i32::try_from(h.ifindex).ok()?,
            id,
            ts_ns: h.ts_ns,
        })
    }
}

/// An address as the datapath's keys hold it (IPv4 mapped into IPv6).
fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

/// A disabled TLS state (records, if any, are dropped as unresolved).
#[must_use]
pub fn handle() -> Handle {
    Arc::new(Mutex::new(TlsState::default()))
}

/// Starts TLS capture: loads the programs, attaches the tracepoints, and
/// spawns discovery, which attaches the uprobes to every library file found
/// (now and every [`DISCOVERY_TICK`] after). `api_ports` are the default TLS ports;
/// `maps_dir` is where the datapath's maps are pinned.
pub fn start(
    policy: &TlsPolicy,
    api_ports: &[u16],
    maps_dir: &std::path::Path,
    state: &Arc<Mutex<crate::agent::AgentState>>,
    tls: &Handle,
) {
    let ports: BTreeSet<u16> = if policy.ports.is_empty() {
        api_ports.iter().copied().collect()
    } else {
        policy.ports.iter().copied().collect()
    };
    let (stats, mut procs) = {
        let Ok(mut t) = tls.lock() else { return };
        t.policy = policy.clone();
        t.ports.clone_from(&ports);
        t.status.ports = ports.iter().copied().collect();
        if !policy.enabled || ports.is_empty() {
            t.status.error = Some(if policy.enabled {
                "no TLS port (set api_ports or tls.ports)".into()
            } else {
                "disabled by the policy (tls.enabled: false)".into()
            });
            return;
        }
        let Ok(mut st) = state.lock() else { return };
        let ebpf = match st.datapath_mut().ebpf_mut() {
            Ok(ebpf) => match probes::load(ebpf) {
                Ok(()) => ebpf,
                Err(e) => {
                    warn!("HTTPS plaintext will not be judged: {e:#}");
                    t.status.error = Some(format!("{e:#}"));
                    return;
                }
            },
            Err(e) => {
                t.status.error = Some(format!("{e:#}"));
                return;
            }
        };
        t.status.enabled = true;
        let procs = ebpf
            .take_map(tollgate_common::maps::TLS_PROCS)
            .and_then(|m| aya::maps::HashMap::<_, u32, u32>::try_from(m).ok());
        // A second handle on the pinned map (the request verifier owns the
        // datapath's).
        t.established =
            aya::maps::MapData::from_pin(maps_dir.join(tollgate_common::maps::ESTABLISHED))
                .ok()
                .and_then(|m| aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).ok());
        let stats = ebpf
            .take_map(tollgate_common::maps::TLS_STATS)
            .and_then(|m| aya::maps::PerCpuArray::<_, u64>::try_from(m).ok());
        (stats, procs)
    };
    info!(ports = ?ports, "TLS libraries are probed for HTTPS plaintext");
    let (state, tls, policy) = (Arc::clone(state), Arc::clone(tls), policy.clone());
    tokio::spawn(async move {
        let mut discovery = Discovery::default();
        let mut tick = tokio::time::interval(DISCOVERY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let found = tokio::task::spawn_blocking({
                let mut d = std::mem::take(&mut discovery);
                let policy = policy.clone();
                move || {
                    let new = d.scan(&policy);
                    (d, new)
                }
            })
            .await;
            let Ok((d, (new, users))) = found else {
                continue;
            };
            discovery = d;
            if let Some(m) = procs.as_mut() {
                for pid in users {
                    // Full (LRU: the least recent go) or gone: announcements
                    // only make resolving earlier.
                    let _ = m.insert(pid, 1, 0);
                }
            }
            let mut views = Vec::new();
            if !new.is_empty()
                && let Ok(mut st) = state.lock()
            {
                for (pid, m) in new {
                    let path = procfs::through_root(pid, &m.path);
                    let r = st
                        .datapath_mut()
                        .ebpf_mut()
                        .map_err(anyhow::Error::from)
                        .and_then(|ebpf| probes::attach_library(ebpf, &path));
                    let view = LibraryView {
                        path: m.path.clone(),
                        pid,
                        file: format!("{}:{}", m.file.dev, m.file.inode),
                        functions: r
                            .as_ref()
                            .map(|f| f.iter().map(|s| (*s).to_owned()).collect())
                            .unwrap_or_default(),
                        error: r.as_ref().err().map(|e| format!("{e:#}")),
                    };
                    match &view.error {
                        None => {
                            info!(path = %m.path, pid, functions = ?view.functions, "TLS library probed");
                        }
                        Some(e) => warn!(path = %m.path, pid, "TLS library not probed: {e}"),
                    }
                    views.push(view);
                }
            }
            if let Ok(mut t) = tls.lock() {
                t.status.libraries.extend(views);
                if let Some(m) = &stats {
                    let sum = |i: u32| m.get(&i, 0).map_or(0, |v| v.iter().sum::<u64>());
                    t.status.calls = sum(tls_stat::CALLS);
                    t.status.bytes_captured = sum(tls_stat::BYTES);
                    t.status.bytes_lost = sum(tls_stat::LOST);
                    t.status.calls_without_fd = sum(tls_stat::NO_FD);
                }
                let st = &t.status;
                let probed = st.libraries.iter().filter(|l| l.error.is_none()).count() as u64;
                let counts = [
                    probed,
                    st.bytes_captured,
                    st.bytes_lost,
                    st.records,
                    st.records_other,
                    st.records_unresolved,
                    st.records_excluded,
                ];
                if let Ok(mut s) = state.lock() {
                    s.set_tls_counters(counts);
                }
            }
        }
    });
}

/// How often discovery looks for new processes: a server started (or a
/// worker forked onto a library file not probed yet) is covered within about
/// this; a scan of processes already seen only lists `/proc`.
const DISCOVERY_TICK: Duration = Duration::from_millis(250);

/// Every this many scans (30 s), the maps of every process are read again.
const FULL_SCAN_EVERY: u64 = 120;

/// What discovery has seen: processes whose maps were read, library files
/// handled.
#[derive(Default)]
struct Discovery {
    seen_pids: HashSet<u32>,
    files: HashSet<FileId>,
    scans: u64,
}

impl Discovery {
    /// Reads the maps of processes not seen before (all of them every
    /// [`FULL_SCAN_EVERY`] scans: a running process may load the library
    /// later); returns each
    /// library file not handled yet, with a selected process that maps it
    /// (a file only other processes map is not probed: they would pay the
    /// traps for nothing).
    ///
    /// Also returns the processes seen for the first time that map a TLS
    /// library: their accepts are announced from then on.
    fn scan(&mut self, policy: &TlsPolicy) -> (Vec<(u32, procfs::Mapped)>, Vec<u32>) {
        let full = self.scans.is_multiple_of(FULL_SCAN_EVERY);
        self.scans += 1;
        let pids = procfs::pids();
        let me = std::process::id();
        let mut out = Vec::new();
        let mut users = Vec::new();
        for &pid in &pids {
            if pid == me || (!full && self.seen_pids.contains(&pid)) {
                continue;
            }
            if !procfs::comm(pid).is_some_and(|c| policy.selects(&c)) {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                continue;
            };
            let found = procfs::libssl_in_maps(&maps);
            if !found.is_empty() && !self.seen_pids.contains(&pid) {
                users.push(pid);
            }
            for m in found {
                if self.files.insert(m.file) {
                    out.push((pid, m));
                }
            }
        }
        self.seen_pids = pids.into_iter().collect();
        (out, users)
    }
}

/// `status` lines for people.
#[must_use]
pub fn describe(s: &TlsStatus) -> String {
    let mut out = String::new();
    if !s.enabled {
        out.push_str(&format!(
            "TLS plaintext: off ({})\n",
            s.error.as_deref().unwrap_or("not started")
        ));
        return out;
    }
    let probed = s.libraries.iter().filter(|l| l.error.is_none()).count();
    out.push_str(&format!(
        "TLS plaintext on ports {:?}: {probed} libraries probed; {} calls, {} bytes captured, {} lost, \
         {} calls without a known connection; {} streams announced; {} records judged, \
         {} of other connections, {} unresolved, {} excluded\n",
        s.ports,
        s.calls,
        s.bytes_captured,
        s.bytes_lost,
        s.calls_without_fd,
        s.streams_announced,
        s.records,
        s.records_other,
        s.records_unresolved,
        s.records_excluded
    ));
    for l in &s.libraries {
        match &l.error {
            None => out.push_str(&format!(
                "  {} (pid {}, {}): {}\n",
                crate::text::printable(&l.path),
                l.pid,
                l.file,
                l.functions.join(", ")
            )),
            Some(e) => out.push_str(&format!(
                "  {} (pid {}): not probed: {}\n",
                crate::text::printable(&l.path),
                l.pid,
                crate::text::printable(e)
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS record as the kernel writes it: header, then `payload`.
    fn record(tgid: u32, fd: u32, id: u32, payload: &[u8]) -> Vec<u8> {
        let n = u32::try_from(payload.len()).unwrap();
        let h = SampleHeader {
            ts_ns: crate::clock::boot_ns(),
            source: sample_source::TLS,
            ifindex: fd,
            payload_len: n,
            captured: n,
            cookie: u64::from(tgid) | (u64::from(id) << 32),
            ..SampleHeader::default()
        };
        // SAFETY: SampleHeader is POD (repr(C), no padding).
        let mut v = unsafe {
            std::slice::from_raw_parts((&raw const h).cast::<u8>(), size_of::<SampleHeader>())
        }
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn announcements_parse_and_nothing_else_does() {
        let a = record(4242, 7, 9, b"");
        let got = Announcement::parse(&a).unwrap();
        assert_eq!((got.tgid, got.fd, got.id), (4242, 7, 9));
        // Truncated, carrying data, no stream id, descriptor past i32.
        assert_eq!(Announcement::parse(&a[..a.len() - 1]), None);
        assert_eq!(Announcement::parse(&record(4242, 7, 9, b"GET")), None);
        assert_eq!(Announcement::parse(&record(4242, 7, 0, b"")), None);
        assert_eq!(Announcement::parse(&record(4242, 1 << 31, 9, b"")), None);
        // Not a TLS record (a packet sample's header).
        let mut wire = a.clone();
        wire[std::mem::offset_of!(SampleHeader, source)] = sample_source::WIRE;
        assert_eq!(Announcement::parse(&wire), None);
        // Garbage changes nothing.
        let mut t = TlsState::default();
        t.announce(&[0xff; 100]);
        t.announce(&[]);
        assert!(t.conns.is_empty() && t.status.streams_announced == 0);
    }

    /// A stream resolved just before the cache filled up keeps its
    /// connection (its records may still be in the ring, its descriptor
    /// closed).
    #[test]
    fn the_cache_rolls_over_without_forgetting_the_latest() {
        let mut t = TlsState::default();
        let flow = Some((
            "198.18.0.2".parse().unwrap(),
            40000,
            "198.18.0.1".parse().unwrap(),
            8443,
        ));
        let live = Cached {
            flow,
            excluded: false,
            dead: false,
        };
        // No such process: a lookup would find nothing.
        let key = (u32::MAX, 3, 5);
        for i in 0..MAX_CACHED - 1 {
            t.cache((u32::MAX, 4, u32::try_from(i).unwrap() + 1), live);
        }
        t.cache(key, live);
        t.cache((u32::MAX, 6, 1), live);
        assert!(t.conns.len() < MAX_CACHED);
        assert_eq!(t.resolve(key.0, key.1, key.2, 0).flow, flow);
        assert!(t.resolve(u32::MAX, 7, 1, 0).dead);
    }

    /// The short-connection case the announcement ring is for: the stream
    /// is announced at accept, the connection closes, and its data, read
    /// afterwards, is still attributed to the client that sent it; data
    /// under another stream id on the same descriptor is not.
    #[test]
    fn an_announced_stream_keeps_its_client_after_close() {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let port = l.local_addr().unwrap().port();
        let mut t = TlsState::default();
        t.ports.insert(port);
        let me = std::process::id();
        let fd = u32::try_from(s.as_raw_fd()).unwrap();
        t.announce(&record(me, fd, 77, b""));
        assert_eq!(t.status.streams_announced, 1);
        drop(s);
        drop(c);
        let req = b"GET /items/1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let got = t.sample(&record(me, fd, 77, req)).expect("judged");
        assert_eq!((got.client, got.client_port), (peer.ip(), peer.port()));
        assert_eq!(got.server_port, port);
        assert_eq!(&got.data[..], req);
        assert_eq!(t.status.records, 1);
        // The descriptor's next stream (closed, maybe reused by another
        // test's socket): never the announced stream's client.
        let other = t.sample(&record(me, fd, 79, req));
        assert!(other.is_none(), "{other:?}");
        assert_eq!(t.status.records, 1);
    }

    #[test]
    fn policy_defaults_and_checks() {
        let p: TlsPolicy = serde_yaml_ng::from_str("{}").unwrap();
        assert!(p.enabled && p.ports.is_empty());
        assert!(p.selects("nginx"));
        let p: TlsPolicy =
            serde_yaml_ng::from_str("{include: [nginx, python3], exclude: [python3]}").unwrap();
        assert!(p.selects("nginx") && !p.selects("python3") && !p.selects("curl"));
        let bad: TlsPolicy = serde_yaml_ng::from_str("{ports: [8443, 0]}").unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "tls.ports[1]");
        let bad: TlsPolicy =
            serde_yaml_ng::from_str("{exclude: [a-very-long-process-name]}").unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "tls.exclude[0]");
        assert!(serde_yaml_ng::from_str::<TlsPolicy>("{port: [1]}").is_err());
    }
}
