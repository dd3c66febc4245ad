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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cached {
    /// The connection, when it is one to judge.
    flow: Option<(IpAddr, u16, IpAddr, u16)>,
    excluded: bool,
    /// The descriptor was gone or reused when the stream was first read.
    dead: bool,
}

impl Cached {
    const DEAD: Self = Self {
        flow: None,
        excluded: false,
        dead: true,
    };
}

/// Why a stream's connection is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unresolved {
    /// The descriptor is closed, not a TCP socket, or unreadable.
    Gone,
    /// A connection was found on the descriptor, but the kernel no longer
    /// has the stream on it (closed, maybe reused): it may be another
    /// client's.
    Unproven,
}

/// Reads the id of the kernel's current stream on a (process, descriptor)
/// (`TG_TLS_OFF`); `None` when it has none.
pub type StreamIds = Box<dyn Fn(u32, i32) -> Option<u32> + Send>;

/// Resolution of the kernel's records; shared by the sample reader and the
/// status command.
#[derive(Default)]
pub struct TlsState {
    policy: TlsPolicy,
    ports: BTreeSet<u16>,
    /// Resolved streams, by process and descriptor.
    conns: StreamCache,
    /// The kernel's record of established connections (`TG_ESTAB`).
    established: Option<aya::maps::HashMap<aya::maps::MapData, FlowKey, Established>>,
    /// The kernel's current stream of each descriptor (`TG_TLS_OFF`): without
    /// it no stream is proven, and none is judged.
    stream_ids: Option<StreamIds>,
    /// When the kernel was last seen losing announcements (its ring full).
    announcements_lost_at: Option<std::time::Instant>,
    /// What `status` shows.
    pub status: TlsStatus,
}

/// Per descriptor, how many of its latest streams stay cached whatever
/// their age (up to [`MAX_AGE_NS`]).
const PER_FD: usize = 4;
/// A descriptor's older streams stay cached while resolved less than this
/// ago: their records may still wait in the sample ring (20 ms, seconds in
/// a backlog), and a burst of connections reusing the descriptor must not
/// push them out (their records would be dropped: a way to go unjudged).
const KEEP_NS: u64 = 5_000_000_000;
/// A resolution is used for at most this long (kernel time between the
/// record that resolved it and the one reading it); then the stream
/// resolves again from its descriptor (the same connection while it is
/// open; dropped once closed). Far shorter than any CPU takes to start
/// 2^22 streams (`tollgate_common::TLS_ID_SEQ`: over 400,000 a second), so
/// a repeated stream id never finds a cached one.
const MAX_AGE_NS: u64 = 10_000_000_000;
/// Bound on cached streams, all descriptors together.
const MAX_CACHED: usize = 1 << 16;
/// Past [`MAX_CACHED`], the oldest resolutions go until this many are left.
const CACHE_LOW: usize = MAX_CACHED / 4 * 3;

/// One stream's resolution.
#[derive(Clone, Copy)]
struct Entry {
    id: u32,
    c: Cached,
    /// Kernel time of the record it was resolved for.
    resolved_ns: u64,
}

/// Resolutions of each descriptor's latest streams: the size follows the
/// descriptors open (and the last few seconds' connections), not every
/// connection ever made, and a descriptor's old streams age out as it is
/// reused. Never emptied at once: past its bound, stale streams go first,
/// then the oldest until a quarter is free.
#[derive(Default)]
struct StreamCache {
    by_fd: HashMap<(u32, i32), Vec<Entry>>,
    len: usize,
}

impl StreamCache {
    fn get(&self, tgid: u32, fd: i32, id: u32, now_ns: u64) -> Option<Cached> {
        self.by_fd
            .get(&(tgid, fd))?
            .iter()
            .find(|e| e.id == id && now_ns.saturating_sub(e.resolved_ns) < MAX_AGE_NS)
            .map(|e| e.c)
    }

    fn insert(&mut self, tgid: u32, fd: i32, id: u32, c: Cached, now_ns: u64) {
        if self.len >= MAX_CACHED {
            self.evict(now_ns);
        }
        let v = self.by_fd.entry((tgid, fd)).or_default();
        let before = v.len();
        v.retain(|e| e.id != id);
        v.push(Entry {
            id,
            c,
            resolved_ns: now_ns,
        });
        prune(v, now_ns);
        self.len = self.len + v.len() - before;
    }

    /// Drops stale resolutions everywhere, then, if that was not enough,
    /// the oldest down to [`CACHE_LOW`].
    fn evict(&mut self, now_ns: u64) {
        let mut len = 0;
        self.by_fd.retain(|_, v| {
            prune(v, now_ns);
            len += v.len();
            !v.is_empty()
        });
        self.len = len;
        if self.len <= CACHE_LOW {
            return;
        }
        let mut ages: Vec<u64> = self
            .by_fd
            .values()
            .flatten()
            .map(|e| e.resolved_ns)
            .collect();
        let drop = self.len - CACHE_LOW;
        let (below, cut, _) = ages.select_nth_unstable(drop - 1);
        let cut = *cut;
        // Those resolved before `cut` go, and of those resolved at `cut`
        // only as many as are still to go (ties must not take them all).
        let mut at_cut = drop - below.iter().filter(|t| **t < cut).count();
        let mut len = 0;
        self.by_fd.retain(|_, v| {
            v.retain(|e| {
                if e.resolved_ns == cut && at_cut > 0 {
                    at_cut -= 1;
                    return false;
                }
                e.resolved_ns >= cut
            });
            len += v.len();
            !v.is_empty()
        });
        self.len = len;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

/// A descriptor's streams past its latest [`PER_FD`] go once [`KEEP_NS`]
/// old, every one once [`MAX_AGE_NS`] old (oldest first in `v`).
fn prune(v: &mut Vec<Entry>, now_ns: u64) {
    let latest_from = v.len().saturating_sub(PER_FD);
    let mut i = 0;
    v.retain(|e| {
        let age = now_ns.saturating_sub(e.resolved_ns);
        let keep = age < MAX_AGE_NS && (i >= latest_from || age < KEEP_NS);
        i += 1;
        keep
    });
}

/// The shared TLS state ([`TlsState`]).
pub type Handle = Arc<Mutex<TlsState>>;

/// Announcements lost this recently: sample drains are not held back (the
/// streams whose announcement was lost resolve when their data is read,
/// which must then be while they are open).
const LOST_HURRY: Duration = Duration::from_secs(2);

impl TlsState {
    /// The connection of stream `id` on the process's descriptor, resolved
    /// once (cached, see [`StreamCache`]). A record's stream that cannot be
    /// resolved, or not proven to be the one on the descriptor now, is
    /// cached dead: its records are dropped rather than misattributed. An
    /// announcement's (`data: false`) is not cached: its data resolves again.
    fn resolve(&mut self, tgid: u32, fd: i32, id: u32, ts_ns: u64, data: bool) -> Option<Cached> {
        if let Some(c) = self.conns.get(tgid, fd, id, ts_ns) {
            return Some(c);
        }
        let c = match self.lookup(tgid, fd, id, ts_ns) {
            Ok(c) => c,
            Err(_) if !data => return None,
            Err(why) => {
                if why == Unresolved::Unproven {
                    self.status.streams_unproven += 1;
                }
                Cached::DEAD
            }
        };
        self.conns.insert(tgid, fd, id, c, ts_ns);
        Some(c)
    }

    /// Whether the kernel's stream on the descriptor is `id` now.
    fn holds(&self, tgid: u32, fd: i32, id: u32) -> bool {
        self.stream_ids
            .as_ref()
            .is_some_and(|f| f(tgid, fd) == Some(id))
    }

    fn lookup(&self, tgid: u32, fd: i32, id: u32, ts_ns: u64) -> Result<Cached, Unresolved> {
        // A process the policy does not select (a TLS client on this host
        // using the same library file) is dropped without looking up its
        // connection.
        if procfs::comm(tgid).is_some_and(|c| !self.policy.selects(&c)) {
            return Ok(Cached {
                flow: None,
                excluded: true,
                dead: false,
            });
        }
        let conn = procfs::connection_of_fd(tgid, fd)
            .or_else(|| {
                let inode = procfs::socket_inode(tgid, fd)?;
                procfs::connection(tgid, inode)
            })
            .ok_or(Unresolved::Gone)?;
        let flow = self.ports.contains(&conn.local.1).then_some((
            conn.remote.0,
            conn.remote.1,
            conn.local.0,
            conn.local.1,
        ));
        // The socket was taken from the descriptor above. The kernel drops a
        // descriptor's stream when `close` begins, before the descriptor is
        // freed, and a new stream never has an earlier one's id: the
        // stream still on it now was on it then, so the socket is the
        // stream's. Otherwise it may be the next client's (a descriptor
        // closed and reused before its stream was resolved).
        if flow.is_some() && !self.holds(tgid, fd, id) {
            return Err(Unresolved::Unproven);
        }
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
        // were captured (a second guard; the id check above is the proof).
        if ts_ns < since_ns {
            return Err(Unresolved::Unproven);
        }
        Ok(Cached {
            flow,
            excluded: false,
            dead: false,
        })
    }

    /// Notes the kernel's count of lost announcements.
    fn set_announcements_lost(&mut self, n: u64) {
        if n > self.status.announcements_lost {
            self.announcements_lost_at = Some(std::time::Instant::now());
        }
        self.status.announcements_lost = n;
    }

    /// Announcements were lost lately: records must be read without delay.
    #[must_use]
    pub fn announcements_lost_lately(&self) -> bool {
        self.announcements_lost_at
            .is_some_and(|t| t.elapsed() < LOST_HURRY)
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
        let _ = self.resolve(a.tgid, a.fd, a.id, a.ts_ns, false);
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
        if h.payload_len == 0 {
            // An announcement (they come on their own ring): nothing to judge.
            return None;
        }
        let c = self.resolve(h.cookie as u32, fd, (h.cookie >> 32) as u32, h.ts_ns, true)?;
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
        t.stream_ids = ebpf
            .take_map(tollgate_common::maps::TLS_STREAMS)
            .and_then(|m| {
                aya::maps::HashMap::<_, tollgate_common::TlsStreamKey, tollgate_common::TlsStream>::try_from(m).ok()
            })
            .map(|m| -> StreamIds {
                Box::new(move |tgid, fd| {
                    m.get(&tollgate_common::TlsStreamKey { tgid, fd }, 0)
                        .ok()
                        .map(|s| s.id)
                })
            });
        if t.stream_ids.is_none() {
            // Nothing could be proven: every record would be dropped.
            warn!("HTTPS plaintext will not be judged: the eBPF object has no TLS stream map");
            t.status.error = Some("no TLS stream map in the eBPF object".into());
        }
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
                    t.set_announcements_lost(sum(tls_stat::NEW_LOST));
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
         {} calls without a known connection; {} streams announced, {} announcements lost, \
         {} streams not proven on their descriptor; {} records judged, \
         {} of other connections, {} unresolved, {} excluded\n",
        s.ports,
        s.calls,
        s.bytes_captured,
        s.bytes_lost,
        s.calls_without_fd,
        s.streams_announced,
        s.announcements_lost,
        s.streams_unproven,
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
        assert!(t.conns.len() == 0 && t.status.streams_announced == 0);
    }

    fn live(port: u16) -> Cached {
        Cached {
            flow: Some((
                "198.18.0.2".parse().unwrap(),
                port,
                "198.18.0.1".parse().unwrap(),
                8443,
            )),
            excluded: false,
            dead: false,
        }
    }

    /// A busy descriptor's old streams age out (its latest few stay, and
    /// any recent enough that their records may still be unread).
    #[test]
    fn a_reused_descriptors_old_streams_age_out() {
        let mut c = StreamCache::default();
        for id in 1..=10 {
            c.insert(7, 5, id, live(40000 + id as u16), u64::from(id));
        }
        // A burst on one descriptor pushes none out while recent.
        assert_eq!(c.len(), 10);
        assert_eq!(c.get(7, 5, 1, 20), Some(live(40001)));
        // Seconds later: the latest four stay, the rest are gone.
        let later = KEEP_NS + 100;
        c.insert(7, 5, 11, live(40011), later);
        assert_eq!(c.len(), 4);
        for id in 1..=7 {
            assert_eq!(c.get(7, 5, id, later), None, "{id}");
        }
        for id in 8..=11 {
            assert_eq!(c.get(7, 5, id, later), Some(live(40000 + id as u16)));
        }
        // Other descriptors and processes are apart.
        assert_eq!(c.get(7, 6, 11, later), None);
        assert_eq!(c.get(8, 5, 11, later), None);
        // A resolution is not used past its age (resolved again instead).
        assert_eq!(c.get(7, 5, 11, later + MAX_AGE_NS), None);
        // Re-resolving a stream replaces its entry.
        c.insert(7, 5, 11, Cached::DEAD, later + 1);
        assert_eq!(c.get(7, 5, 11, later + 1), Some(Cached::DEAD));
        assert_eq!(c.len(), 4);
    }

    /// Connections over time do not grow the cache past its bound, and
    /// reaching it never empties it: stale streams go first, then only
    /// the oldest; the stream just resolved is kept.
    #[test]
    fn the_cache_is_bounded_and_never_emptied() {
        let mut c = StreamCache::default();
        let n = u32::try_from(MAX_CACHED).unwrap();
        // Half of it stale (older than any use), half recent.
        for i in 0..n {
            let ts = if i < n / 2 { 0 } else { MAX_AGE_NS };
            c.insert(1, i32::try_from(i).unwrap(), 1, live(1), ts);
        }
        assert_eq!(c.len(), MAX_CACHED);
        c.insert(2, 0, 9, live(2), MAX_AGE_NS + 1);
        assert_eq!(c.len(), MAX_CACHED / 2 + 1);
        assert_eq!(c.get(2, 0, 9, MAX_AGE_NS + 1), Some(live(2)));
        assert_eq!(
            c.get(1, i32::try_from(n - 1).unwrap(), 1, MAX_AGE_NS + 1),
            Some(live(1))
        );
        // All recent, and many resolved in the same nanosecond: the oldest
        // go, down to three quarters, not more.
        let mut c = StreamCache::default();
        for i in 0..n {
            c.insert(1, i32::try_from(i).unwrap(), 1, live(1), u64::from(i / 4));
        }
        c.insert(3, 0, 9, live(3), u64::from(n));
        assert_eq!(c.len(), CACHE_LOW + 1);
        assert_eq!(c.get(3, 0, 9, u64::from(n)), Some(live(3)));
        assert_eq!(c.get(1, 0, 1, u64::from(n)), None);
        assert_eq!(
            c.get(1, i32::try_from(n - 1).unwrap(), 1, u64::from(n)),
            Some(live(1))
        );
        // A tie split by the cut: only as many as are to go, go.
        let mut c = StreamCache::default();
        for i in 0..n {
            c.insert(1, i32::try_from(i).unwrap(), 1, live(1), u64::from(i / 3));
        }
        c.insert(3, 0, 9, live(3), u64::from(n));
        assert_eq!(c.len(), CACHE_LOW + 1);
    }

    /// A state whose kernel stream map is a fake: `cur` is the id of the
    /// stream on every descriptor (0: none).
    fn with_streams(port: u16, cur: &Arc<std::sync::atomic::AtomicU32>) -> TlsState {
        let mut t = TlsState::default();
        t.ports.insert(port);
        let cur = Arc::clone(cur);
        t.stream_ids = Some(Box::new(move |_, _| {
            Some(cur.load(std::sync::atomic::Ordering::Relaxed)).filter(|i| *i != 0)
        }));
        t
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
        let cur = Arc::new(std::sync::atomic::AtomicU32::new(77));
        let mut t = with_streams(port, &cur);
        let me = std::process::id();
        let fd = u32::try_from(s.as_raw_fd()).unwrap();
        t.announce(&record(me, fd, 77, b""));
        assert_eq!(t.status.streams_announced, 1);
        drop(s);
        drop(c);
        cur.store(0, std::sync::atomic::Ordering::Relaxed);
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

    /// The review's case: a stream whose announcement was not read in time
    /// (lost, or the agent behind), whose connection closed and whose
    /// descriptor now holds the next accepted client's connection. Its
    /// records must not be judged as that client's: the kernel's stream on
    /// the descriptor is the new one, so they are dropped; the new stream's
    /// records are the new client's.
    #[test]
    fn a_stream_no_longer_on_its_descriptor_is_dropped_not_given_to_the_next_client() {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _attacker = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let fd = a.as_raw_fd();
        let _victim = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, victim) = l.accept().unwrap();
        // The attacker's connection closes and the victim's lands on its
        // descriptor number (as the lowest free one would).
        // SAFETY: `fd` is `a`'s own descriptor, replaced in place: `a` then
        // holds the victim's connection (and closes it once).
        assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), fd) }, fd);
        drop(b);
        let b = a;
        let cur = Arc::new(std::sync::atomic::AtomicU32::new(79));
        let mut t = with_streams(port, &cur);
        let me = std::process::id();
        let ufd = u32::try_from(fd).unwrap();
        let attack = b"GET /?q=1'%20OR%201=1-- HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(t.sample(&record(me, ufd, 77, attack)).is_none());
        assert_eq!((t.status.records, t.status.records_unresolved), (0, 1));
        assert_eq!(t.status.streams_unproven, 1);
        // Dropped for good: its later records too.
        assert!(t.sample(&record(me, ufd, 77, attack)).is_none());
        assert_eq!(t.status.streams_unproven, 1);
        // The descriptor's stream now is the victim's.
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let got = t.sample(&record(me, ufd, 79, req)).expect("judged");
        assert_eq!((got.client, got.client_port), (victim.ip(), victim.port()));
        // Without the kernel's stream map nothing is proven.
        let mut t = TlsState::default();
        t.ports.insert(port);
        assert!(t.sample(&record(me, ufd, 79, req)).is_none());
        assert_eq!(t.status.records_unresolved, 1);
        drop(b);
    }

    /// A lookup that fails at announcement (here: the kernel's stream map
    /// not showing the stream yet) is not remembered: the stream's data
    /// resolves again when it is read.
    #[test]
    fn a_failed_announcement_lookup_is_retried_at_data_time() {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let cur = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut t = with_streams(port, &cur);
        let me = std::process::id();
        let fd = u32::try_from(s.as_raw_fd()).unwrap();
        t.announce(&record(me, fd, 5, b""));
        assert_eq!(t.conns.len(), 0);
        cur.store(5, std::sync::atomic::Ordering::Relaxed);
        let got = t.sample(&record(me, fd, 5, b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(got.map(|g| g.client_port), Some(peer.port()));
    }

    #[test]
    fn lost_announcements_hurry_the_reader_for_a_while() {
        let mut t = TlsState::default();
        assert!(!t.announcements_lost_lately());
        t.set_announcements_lost(0);
        assert!(!t.announcements_lost_lately());
        t.set_announcements_lost(3);
        assert!(t.announcements_lost_lately());
        assert_eq!(t.status.announcements_lost, 3);
        t.announcements_lost_at = Some(std::time::Instant::now() - LOST_HURRY);
        t.set_announcements_lost(3);
        assert!(!t.announcements_lost_lately());
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
