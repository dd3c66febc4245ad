//! The agent's single owner of state: kernel maps, durable store and the
//! in-memory index of bans. Every request from the control socket ends here,
//! validated first; a refused request changes nothing.

use std::{collections::HashMap, time::Instant};

use ipnet::IpNet;
use serde_json::json;
use tollgate_common::{AllowEntry, BanReason, BlockEntry, Mode, Verdict, maps};
use tracing::{debug, error, info, warn};

mod cluster;
pub use cluster::Resync;
pub(super) mod crowdsec;
mod index;
mod ops;
mod query;

use super::attach::Attachment;
use crate::{
    agent::maps::Maps,
    clock,
    datapath::Datapath,
    net::{check_breadth, display, overlaps, parse_net},
    proto::{
        AllowView, AttachView, BanView, CounterView, MapFillView, Request, Response, StatsView,
        StatusView,
    },
    store::{AllowRecord, BanRecord, BanStream, Store},
};
// The request checks live with the protocol; the state's parts use them.
use crate::proto::{Refused, check_reason, check_ttl};

/// Everything the agent owns.
///
/// The ban index, the expiry index and the kernel maps change together, only
/// through the methods here ([`Self::put_ban`], [`Self::gc`], ...); they are
/// private to the agent.
pub struct AgentState<M = Datapath> {
    /// The kernel maps ([`Datapath`] in the agent, [`MemMaps`](super::maps::MemMaps) in tests).
    pub(in crate::agent) maps: M,
    /// Durable store; `None` when it could not be opened (enforcement goes on).
    pub(in crate::agent) store: Option<Box<dyn Store>>,
    /// Why the store is unavailable.
    store_error: Option<String>,
    /// Ban records by prefix, with their expiry index.
    bans: index::BanIndex,
    /// Allow records by prefix.
    allows: HashMap<IpNet, AllowRecord>,
    /// Live attachments.
    pub(in crate::agent) attachments: Vec<Attachment>,
    /// Agent start.
    started: Instant,
    /// Pin directory, for status.
    pin_dir: String,
    /// State directory, for status.
    state_dir: String,
    /// The policy file, for status.
    policy_file: Option<String>,
    /// The last policy reload: Unix seconds, applied or not, and its
    /// summary or why it was refused (for `status`).
    pub(in crate::agent) last_reload: Option<(u64, bool, String)>,
    /// Rate limits, escalation, `top`.
    pub(in crate::agent) rate: super::ratelimit::RateState,
    /// Trusted proxies: never banned by the agent, refused for manual bans
    /// without `--force`.
    pub(in crate::agent) trusted: Vec<IpNet>,
    /// The last policy reload refused: Unix seconds and why (for `status`).
    pub(in crate::agent) policy_refused: Option<(u64, String)>,
    /// Store write failures already repaired by rewriting the state.
    store_failures_synced: u64,
    /// Bans issued, violations and reloads since start, for the metrics.
    pub(in crate::agent) counters: crate::metrics::Counters,
    /// The fleet link's status, when this agent shares bans through etcd.
    pub(in crate::agent) cluster: Option<crate::cluster::SharedStatus>,
    /// Until when `/readyz` waits for the first full read of the fleet's
    /// set (`None`: not in a fleet, or read).
    pub(in crate::agent) fleet_wait: Option<std::time::Instant>,
    /// Bans lifted lately (by hand, by origin, by expiry): the prefix and
    /// when (boot-clock ns). What a client sent on a connection from before
    /// a lift (retransmissions of what the ban dropped) is not a new offence.
    lifted: std::collections::VecDeque<(IpNet, u64)>,
    /// A warning for the answer to the request being handled.
    warning: Option<String>,
    /// This host's addresses, never banned by hand without --force (a
    /// function, so tests do not depend on the machine's interfaces).
    pub(in crate::agent) host_addrs: fn() -> Vec<std::net::IpAddr>,
    /// Sample records lost to a full ring buffer, lately.
    sample_loss: super::loss::LossWatch,
    /// What the start's restore could not do (`status`, `/readyz`).
    restore_report: RestoreReport,
}

/// What went wrong restoring the stored bans at start.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    /// Stored rows that could not be decoded (skipped; the rest restored).
    pub skipped_rows: usize,
    /// Why the store's read stopped before its end (the bans after that
    /// point were not restored), if it did.
    pub read_error: Option<String>,
    /// Stored bans the kernel does not hold (a map write failed).
    pub not_enforced: usize,
    /// The first kernel write failure.
    pub kernel_error: Option<String>,
    /// Kernel bans left as they were, neither adopted nor lifted: their
    /// stored rows were not read or could not be decoded.
    pub kernel_only: usize,
}

/// A record of the restore stream: the record, its kernel entry (`None`:
/// expired) and its tail in the index.
type RestoreSlot = (BanRecord, Option<BlockEntry>, Option<u32>);

/// Stored bans read, indexed and written to the kernel at a time on start.
const RESTORE_BATCH: usize = 16_384;

/// How long a lift is remembered.
const LIFT_MEMORY_NS: u64 = 600 * 1_000_000_000;
/// Lifts remembered at most (oldest forgotten first).
const MAX_LIFTS: usize = 4096;

/// Where the agent keeps its pins and its state, for `status`.
#[derive(Clone, Debug, Default)]
pub struct Dirs {
    /// Pin directory.
    pub pin_dir: String,
    /// State directory.
    pub state_dir: String,
    /// The policy file (`--config`), if any.
    pub policy_file: Option<String>,
}

impl AgentState<Datapath> {
    /// The datapath itself, for what is no decision: attaching programs,
    /// taking ring buffers.
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.maps
    }

    /// The TLS capture's figures for the metrics (set each second by its
    /// discovery task).
    pub(crate) fn set_tls_counters(&mut self, counts: [u64; 7]) {
        self.counters.tls = counts;
    }
}

impl<M: Maps> AgentState<M> {
    /// A state over `maps` and `store` (`store_error` says why there is no
    /// store) that holds nothing yet: [`Self::reconcile`] fills it.
    pub fn new(
        maps: M,
        store: Option<Box<dyn Store>>,
        store_error: Option<String>,
        dirs: Dirs,
        rate: super::ratelimit::RateState,
        trusted: Vec<IpNet>,
    ) -> Self {
        Self {
            maps,
            store,
            store_error,
            bans: index::BanIndex::default(),
            allows: HashMap::new(),
            attachments: Vec::new(),
            started: Instant::now(),
            pin_dir: dirs.pin_dir,
            state_dir: dirs.state_dir,
            policy_file: dirs.policy_file,
            last_reload: None,
            rate,
            trusted,
            policy_refused: None,
            store_failures_synced: 0,
            lifted: std::collections::VecDeque::new(),
            warning: None,
            host_addrs: crate::net::host_addresses,
            counters: crate::metrics::Counters::default(),
            cluster: None,
            fleet_wait: None,
            sample_loss: super::loss::LossWatch::default(),
            restore_report: RestoreReport::default(),
        }
    }

    /// Reads the kernel's count of sample records lost to a full ring
    /// buffer (each second) and warns when it grew: requests in them were
    /// not judged.
    pub fn watch_sample_loss(&mut self) {
        let Ok([_, lost, _]) = self.maps.sample_stats() else {
            return;
        };
        if let Some((n, over)) = self.sample_loss.observe(lost, Instant::now()) {
            warn!(
                lost = n,
                seconds = over.as_secs(),
                ring_bytes = self.maps.capacities().samples,
                "API sample records lost: the ring buffer was full, and requests in them were not judged \
                 (raise capacity.sample_ring_bytes, or spread the load)"
            );
        }
    }

    /// The kernel maps, read-only.
    #[cfg(test)]
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The ban record for exactly this prefix.
    #[must_use]
    pub fn ban(&self, net: &IpNet) -> Option<BanRecord> {
        self.bans.get(net)
    }

    /// Every ban record (no order; rebuilt from the compact index).
    #[cfg(test)]
    pub fn bans(&self) -> impl Iterator<Item = BanRecord> + '_ {
        self.bans.values()
    }

    /// Number of bans held.
    #[must_use]
    pub fn ban_count(&self) -> usize {
        self.bans.len()
    }

    /// Every allow record (no order).
    pub fn allows(&self) -> impl Iterator<Item = &AllowRecord> {
        self.allows.values()
    }

    /// The allowlist prefix overlapping `net`, if any.
    #[must_use]
    pub fn allow_overlap(&self, net: &IpNet) -> Option<IpNet> {
        self.allows.keys().find(|a| overlaps(a, net)).copied()
    }

    /// The soonest expiry, if any ban expires.
    #[cfg(test)]
    #[must_use]
    pub fn next_expiry(&self) -> Option<u64> {
        self.bans.next_expiry()
    }
}

fn refuse(msg: impl Into<String>) -> Refused {
    Refused::new(msg)
}

impl<M: Maps> AgentState<M> {
    /// Reconciles the store with the kernel maps at start: every stored
    /// entry is (re)written to the kernel with its remaining TTL; kernel
    /// entries the store does not know are adopted into it, but only after
    /// a complete read (a kernel ban whose row was not read, or could not be
    /// decoded, is left as it is: adopting it would overwrite its real
    /// record). Returns how many entries were repaired each way; what went
    /// wrong is kept for `status` and `/readyz` ([`RestoreReport`]).
    pub fn reconcile(&mut self) -> (usize, usize)
    where
        M: Send,
    {
        let mut to_store = 0;
        let now = clock::unix_now();
        let t0 = Instant::now();
        let mut report = RestoreReport::default();
        // The store is streamed in batches: the store's thread reads and
        // decodes, this one indexes, and a third writes each batch to the
        // kernel (a million bans: about a second of syscalls, overlapped
        // with the rest). A million stored bans are never held twice
        // (records and index) at once. Bans sharing a record (an import)
        // share its decoding, expiry check and kernel entry.
        let mut expired = Vec::new();
        // Prefixes of rows that could not be decoded: their kernel entries
        // are not adopted (the store has a record for them, unreadable).
        let mut unread: std::collections::HashSet<IpNet> = std::collections::HashSet::new();
        let (maps, bans, store) = (&mut self.maps, &mut self.bans, self.store.as_ref());
        // The writer holds the maps for the whole restore; without a
        // thread, this one writes each batch itself.
        let maps = std::sync::Mutex::new(maps);
        let (read, written) = std::thread::scope(|scope| {
            let shared = &maps;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(IpNet, BlockEntry)>>(2);
            let writer = std::thread::Builder::new()
                .name("tg-restore-kw".into())
                .spawn_scoped(scope, move || match shared.lock() {
                    Ok(mut m) => write_restored(&mut **m, &rx),
                    Err(_) => KernelWrites::failed("the kernel maps' lock is poisoned"),
                });
            let writer = writer
                .inspect_err(|e| warn!("restoring without a kernel writer thread: {e}"))
                .ok();
            // By the stream's record number: the record, its kernel entry
            // (`None`: expired) and its tail in the index.
            let mut records: Vec<Option<RestoreSlot>> = Vec::new();
            let mut inline_out = KernelWrites::default();
            let mut restore = |step: BanStream<'_>| match step {
                BanStream::Record(id, rec) => {
                    let entry = rec
                        .expires_at
                        .is_none_or(|t| t > now)
                        .then(|| kernel_entry(&rec));
                    let i = id as usize;
                    if records.len() <= i {
                        records.resize_with(i + 1, || None);
                    }
                    records[i] = Some((rec, entry, None));
                }
                BanStream::Bans(nets) => {
                    let mut put = Vec::with_capacity(nets.len());
                    for &(net, id) in nets {
                        let Some(Some((rec, entry, hint))) = records.get_mut(id as usize) else {
                            continue;
                        };
                        let Some(entry) = entry else {
                            expired.push(net);
                            continue;
                        };
                        put.push((net, *entry));
                        bans.insert_hinted(net, rec, hint);
                    }
                    if writer.is_some() {
                        // Fails only when the writer is gone (it panicked):
                        // its join reports it.
                        let _ = tx.send(put);
                    } else if let Ok(mut m) = maps.lock() {
                        inline_out.absorb(write_batch(&mut **m, put));
                    }
                }
                BanStream::Skipped { key, net, error } => {
                    report.skipped_rows += 1;
                    // The first few by name; the count says the rest.
                    if report.skipped_rows <= 10 {
                        error!(key, "a stored ban cannot be decoded; skipped: {error}");
                    }
                    if let Some(net) = net {
                        unread.insert(net);
                    }
                }
            };
            let read = match store {
                Some(s) => s.ban_stream(RESTORE_BATCH, &mut restore),
                None => Ok(()),
            };
            drop(tx);
            let written = match writer {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|_| KernelWrites::failed("the kernel writer thread failed")),
                None => inline_out,
            };
            (read, written)
        });
        if let Err(e) = read {
            error!(
                indexed = self.bans.len(),
                "cannot read bans from the state store: {e}; the restore stopped there \
                 (bans the kernel holds are still enforced; none is adopted)"
            );
            self.store_error = Some(format!("restore stopped: {e}"));
            report.read_error = Some(e.to_string());
        }
        if report.skipped_rows > 0 {
            error!(
                skipped = report.skipped_rows,
                "stored bans that cannot be decoded were skipped (see `tollgate status`); \
                 their kernel entries, if any, are left as they are"
            );
        }
        let to_kernel = written.written;
        let t_kernel = written.busy;
        if let Some((batches, e)) = &written.error {
            // Which bans the kernel lacks: those the datapath did not take.
            report.not_enforced = self.bans.keys().filter(|n| !self.maps.has_block(n)).count();
            report.kernel_error = Some(e.clone());
            error!(
                batches,
                not_enforced = report.not_enforced,
                "failed to restore bans into the kernel: {e}"
            );
        }
        let t_restore = t0.elapsed();
        // Reading the kernel maps back (two syscalls per entry) is only
        // needed when they hold bans the store does not know. Every indexed
        // ban is in the kernel unless a write failed, so equal counts say
        // there is none without a lookup per ban.
        let unknown = (report.not_enforced > 0
            || self.maps.block_nets().count() != self.bans.len())
            && self.maps.block_nets().any(|n| !self.bans.contains_key(&n));
        let kernel = if unknown {
            self.maps.blocks().unwrap_or_else(|e| {
                error!("failed to read the kernel ban maps: {e:#}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let mut adopt = Vec::new();
        // A ban the store knows as expired is lifted, not adopted, whatever
        // its kernel entry says.
        let stored_expired: std::collections::HashSet<IpNet> = expired.iter().copied().collect();
        let complete = report.read_error.is_none();
        for (net, entry) in kernel {
            if self.bans.contains_key(&net) || stored_expired.contains(&net) {
                continue;
            }
            if !complete || unread.contains(&net) {
                // Its record may be in the rows not read: left as it is.
                report.kernel_only += 1;
                continue;
            }
            let rec = adopted_record(net, &entry, now);
            if rec.expires_at.is_some_and(|t| t <= now) {
                expired.push(net);
                continue;
            }
            adopt.push(rec.clone());
            self.index(rec);
            to_store += 1;
        }
        if report.kernel_only > 0 {
            warn!(
                kernel_only = report.kernel_only,
                "kernel bans whose stored rows were not read are left as they are (not adopted)"
            );
        }
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.put_bans(&adopt) {
                warn!("failed to record adopted bans: {e}");
            }
            if let Err(e) = store.forget_bans(&expired) {
                warn!("failed to drop expired bans from the store: {e}");
            }
        }
        for net in expired {
            let _ = self.maps.remove_block(net);
        }
        self.restore_report = report;
        let mut to_kernel = to_kernel;
        // Allow entries.
        let mut allows_read = true;
        let stored_allows = match self.store.as_ref().map(|s| s.allows()) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                error!("cannot read allow entries from the state store: {e}");
                allows_read = false;
                Vec::new()
            }
            None => Vec::new(),
        };
        for rec in stored_allows {
            if !self.maps.allow_nets().any(|n| *n == rec.cidr) {
                let entry = AllowEntry {
                    created_ns: clock::boot_ns(),
                    hits: 0,
                };
                if let Err(e) = self.maps.insert_allow(rec.cidr, &entry) {
                    error!(cidr = %rec.cidr, "failed to restore allow entry: {e:#}");
                    continue;
                }
                to_kernel += 1;
            }
            self.allows.insert(rec.cidr, rec);
        }
        let kernel_allows: Vec<IpNet> = self.maps.allow_nets().copied().collect();
        for net in kernel_allows {
            if !self.allows.contains_key(&net) {
                // Its record may be among those not read: kept in memory
                // for this run, not written over the stored one.
                let write = allows_read;
                let rec = AllowRecord {
                    cidr: net,
                    reason: "restored from kernel".into(),
                    origin: "kernel".into(),
                    created_at: now,
                };
                if write
                    && let Some(s) = self.store.as_mut()
                    && let Err(e) = s.put_allow(&rec)
                {
                    warn!("failed to record adopted allow entry: {e}");
                }
                self.allows.insert(net, rec);
                to_store += usize::from(write);
            }
        }
        if let Err(e) = self.maps.maintain() {
            error!("failed to refresh the prefilter: {e:#}");
        }
        debug!(
            ?t_restore,
            ?t_kernel,
            total = ?t0.elapsed(),
            "reconcile timings (cumulative)"
        );
        (to_kernel, to_store)
    }

    fn index(&mut self, rec: BanRecord) {
        // The index keys expiry by the soonest expiry of any decision: a
        // weaker decision ending is a change of the record too (see `gc`).
        self.bans.insert(rec);
    }

    fn unindex(&mut self, net: &IpNet) -> Option<BanRecord> {
        let rec = self.bans.remove(net)?;
        let now = clock::boot_ns();
        while self.lifted.len() >= MAX_LIFTS
            || self
                .lifted
                .front()
                .is_some_and(|(_, t)| now.saturating_sub(*t) > LIFT_MEMORY_NS)
        {
            self.lifted.pop_front();
        }
        self.lifted.push_back((*net, now));
        Some(rec)
    }

    /// When a ban covering `addr` was lifted after `since_ns` (boot clock),
    /// within the last ten minutes: the latest such lift.
    #[must_use]
    pub(in crate::agent) fn lifted_after(
        &self,
        addr: std::net::IpAddr,
        since_ns: u64,
    ) -> Option<u64> {
        let now = clock::boot_ns();
        self.lifted
            .iter()
            .rev()
            .find(|(net, t)| {
                *t > since_ns && now.saturating_sub(*t) <= LIFT_MEMORY_NS && net.contains(&addr)
            })
            .map(|(_, t)| *t)
    }

    /// `None` when the store is open and writes work; otherwise why not
    /// (`status`, `/readyz`, `tollgate_store_up`).
    #[must_use]
    pub fn store_health(&self) -> Option<String> {
        match (&self.store, &self.store_error) {
            (_, Some(e)) => Some(e.clone()),
            (None, None) => Some("not open".into()),
            (Some(s), None) => s.health(),
        }
    }

    /// Why the start's restore left stored bans unenforced or unread, if it
    /// did (`/readyz` answers 503 with it).
    #[must_use]
    pub fn restore_problem(&self) -> Option<String> {
        let r = &self.restore_report;
        if r.not_enforced > 0 {
            return Some(format!(
                "{} stored bans are not enforced: the kernel refused them at start ({}); \
                 see `tollgate status` (maps' fill and capacity)",
                r.not_enforced,
                r.kernel_error.as_deref().unwrap_or("unknown error")
            ));
        }
        r.read_error
            .as_ref()
            .map(|e| format!("the stored bans were read only in part at start: {e}"))
    }

    /// Periodic: a degraded store tries to reopen and write again; once
    /// writes work after failures, every ban and allow entry in memory is
    /// written again (bans the agent enforced while the store was failing
    /// were not recorded).
    pub fn store_retry(&mut self) {
        let Some(s) = self.store.as_mut() else {
            return;
        };
        if s.health().is_some() && !s.retry() {
            return;
        }
        if s.failures() == self.store_failures_synced {
            return;
        }
        let bans: Vec<BanRecord> = self.bans.values().collect();
        // Rewritten here only: the fleet was told when each was made.
        let mut ok = s.keep_bans(&bans).is_ok();
        for a in self.allows.values() {
            ok &= s.keep_allow(a).is_ok();
        }
        if ok {
            self.store_failures_synced = s.failures();
            info!(
                bans = bans.len(),
                allows = self.allows.len(),
                "the state store is healthy again; bans and allow entries rewritten to it"
            );
        }
    }

    /// Removes bans whose time is up (the kernel already ignores them).
    /// Returns how many were removed.
    pub fn gc(&mut self) -> usize {
        let now = clock::unix_now();
        let due: Vec<IpNet> = self.bans.due(now);
        if due.is_empty() {
            return 0;
        }
        // A prefix with decisions left keeps its ban (and its kernel entry:
        // the strongest decision ends last); only the ended ones go.
        let mut due_whole = Vec::with_capacity(due.len());
        let mut trimmed = Vec::new();
        for net in due {
            match self
                .bans
                .get(&net)
                .and_then(|r| r.without(|d| d.expires_at.is_some_and(|t| t <= now)))
            {
                Some(r) => trimmed.push(r),
                None => due_whole.push(net),
            }
        }
        if !trimmed.is_empty() {
            // Every host ends decisions itself: nothing to tell the fleet.
            if let Some(s) = self.store.as_mut()
                && let Err(e) = s.keep_bans(&trimmed)
            {
                warn!("failed to drop ended decisions from the store: {e}");
            }
            for r in trimmed {
                self.index(r);
            }
        }
        let due = due_whole;
        if due.is_empty() {
            return 0;
        }
        for net in &due {
            if let Err(e) = self.maps.remove_block(*net) {
                warn!(cidr = %net, "failed to remove expired ban: {e:#}");
            }
            self.unindex(net);
        }
        // Every host expires bans itself (and etcd's leases collect the
        // keys): nothing to tell the fleet.
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.forget_bans(&due)
        {
            warn!("failed to drop expired bans from the store: {e}");
        }
        if let Err(e) = self.maps.maintain() {
            warn!("failed to refresh the prefilter: {e:#}");
        }
        info!(count = due.len(), "expired bans removed");
        due.len()
    }

    /// Carries out one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        let res = match req {
            Request::BlockAdd {
                cidr,
                ttl_secs,
                reason,
                force,
            } => self.block_add(&cidr, ttl_secs, reason.as_deref(), force),
            Request::BlockRm { cidr, local, exist } => self.block_rm(&cidr, local, exist),
            Request::BlockLs => Ok(self.block_ls()),
            Request::BlockQuery { filter } => self.block_query(&filter),
            Request::BlockTest { address } => self.block_test(&address),
            Request::AllowAdd {
                cidr,
                reason,
                force,
            } => self.allow_add(&cidr, reason.as_deref(), force),
            Request::AllowRm { cidr, exist } => self.allow_rm(&cidr, exist),
            Request::AllowLs => Ok(self.allow_ls()),
            Request::Stats => self.stats(),
            Request::Status => Ok(self.status()),
            Request::LimitsSet { port, spec, merge } => self.limits_set(port, spec, merge),
            Request::LimitsClear { port } => self.limits_clear(port),
            Request::LimitsShow => Ok(self.limits_view()),
            Request::Top { n } => self.top(n),
            Request::Tap { .. } | Request::Inventory | Request::Events { .. } => {
                Err(refuse("tap and inventory are served by the API pipeline"))
            }
            Request::ClusterStatus => Err(refuse("cluster status is served by the fleet link")),
            Request::BlockImport { .. } => Err(refuse(
                "block_import carries its entries on the lines after the request; \
                 use `tollgate block import`",
            )),
            Request::BlockRmOrigin { origin, dry_run } => self.block_rm_origin(&origin, dry_run),
            Request::BlockExport { origin } => Ok(self.block_export(origin.as_deref())),
            Request::PolicyReload => Err(refuse(
                "this agent was started without --config; there is no policy file to reload",
            )),
        };
        let warning = self.warning.take();
        match res {
            Ok(data) => Response {
                warning,
                ..Response::ok(data)
            },
            Err(e) => Response::err(e.to_string()),
        }
    }

    fn block_add(
        &mut self,
        cidr: &str,
        ttl_secs: Option<u64>,
        reason: Option<&str>,
        force: bool,
    ) -> Result<serde_json::Value, Refused> {
        let net = parse_net(cidr).map_err(|e| refuse(e.to_string()))?;
        check_breadth(net, force).map_err(|e| refuse(e.to_string()))?;
        let own = (self.host_addrs)();
        self.refusal(&net, force, &own).map_err(refuse)?;
        if let Some(a) = own
            .into_iter()
            .find(|a| net.contains(a))
            .filter(|_| net.prefix_len() < net.max_prefix_len())
        {
            self.warning = Some(format!(
                "{} covers this host's own address {a}",
                display(&net)
            ));
        }
        let ttl = check_ttl(ttl_secs)?;
        let reason = check_reason(reason)?;
        let now_ms = clock::unix_now_ms();
        let now = now_ms / 1000;
        let offences = self.bans.get(&net).map_or(1, |r| r.offences.max(1));
        let rec = BanRecord {
            cidr: net,
            kind: BanReason::Manual,
            reason: reason.unwrap_or_else(|| BanReason::Manual.name().into()),
            origin: "cli".into(),
            created_at: now,
            created_at_ms: Some(now_ms),
            expires_at: ttl.map(|t| now + t),
            offences,
            host: None,
            also: Vec::new(),
        };
        self.put_ban(rec.clone())?;
        info!(cidr = %net, ttl = ?ttl, reason = %rec.reason, "ban added");
        // The prefix's whole record: other deciders' bans stay beside this one.
        let held = self.bans.get(&net).unwrap_or(rec);
        Ok(json!(ban_view(&held, 0)))
    }

    /// Records and enforces a ban (store first, then kernel; the store write
    /// is undone if the kernel refuses). A ban the agent decided itself (not
    /// `manual`) is enforced even when the store write fails: a full disk
    /// must not switch protection off. The store's recovery writes it later
    /// ([`Self::store_retry`]).
    ///
    /// # Errors
    /// When the kernel write fails, or the store write of a manual ban;
    /// nothing changes then.
    pub fn put_ban(&mut self, rec: BanRecord) -> Result<(), Refused> {
        let previous = self.bans.get(&rec.cidr);
        let rec = rec.over(previous.as_ref());
        let mut stored = false;
        if let Some(s) = self.store.as_mut() {
            match s.put_bans(std::slice::from_ref(&rec)) {
                Ok(()) => stored = true,
                Err(e) if rec.kind == BanReason::Manual => {
                    return Err(refuse(format!("failed to record the ban durably: {e}")));
                }
                Err(e) => {
                    warn!(cidr = %rec.cidr, "ban enforced but not recorded durably: {e}");
                }
            }
        }
        let kernel = self.maps.insert_block(rec.cidr, &kernel_entry(&rec));
        timing!("ban_kernel", cidr = %rec.cidr);
        if let Err(e) = kernel {
            if stored && let Some(s) = self.store.as_mut() {
                let undo = match &previous {
                    Some(p) => s.put_bans(std::slice::from_ref(p)),
                    // Withdrawn, not an unban of the fleet's.
                    None => s.apply_bans(&[], &[rec.cidr]),
                };
                if let Err(u) = undo {
                    warn!("failed to undo the store write: {u}");
                }
            }
            return Err(refuse(format!("the kernel refused the ban: {e:#}")));
        }
        if previous.is_none() {
            self.counters.ban_issued(rec.kind.name(), 1);
        }
        self.index(rec);
        Ok(())
    }

    /// Why banning `net` would hurt this host or override the operator,
    /// unless `force`: loopback, unspecified, multicast or broadcast
    /// addresses, this host's own address, an allowlist entry, a trusted
    /// proxy. Every way a ban is made by hand or from a list asks this.
    ///
    /// # Errors
    /// The reason, for the user.
    /// `own`: this host's addresses, read once per request by the caller.
    pub fn refusal(
        &self,
        net: &IpNet,
        force: bool,
        own: &[std::net::IpAddr],
    ) -> Result<(), String> {
        if force {
            return Ok(());
        }
        crate::net::check_special(*net, false).map_err(|e| e.to_string())?;
        if net.prefix_len() == net.max_prefix_len() && own.iter().any(|a| net.contains(a)) {
            return Err(format!(
                "refusing to ban {}: it is this host's own address; pass --force if you really \
                 mean it",
                display(net)
            ));
        }
        if let Some(a) = self.allows.keys().find(|a| overlaps(a, net)) {
            return Err(format!(
                "{} overlaps allowlist entry {}; allowlisted sources are never dropped, so \
                 remove the allow entry first, or pass --force to ban the rest of the range",
                display(net),
                display(a)
            ));
        }
        if let Some(p) = self.trusted_overlap(net) {
            return Err(format!(
                "{} covers trusted proxy {}: banning it cuts off every client behind it \
                 (their own bans are enforced per connection); pass --force if that is meant",
                display(net),
                display(&p)
            ));
        }
        Ok(())
    }

    /// The trusted proxy prefix a ban would cover, if any.
    #[must_use]
    pub fn trusted_overlap(&self, net: &IpNet) -> Option<IpNet> {
        self.trusted.iter().find(|t| overlaps(t, net)).copied()
    }

    /// Whether `ip` is covered by a ban (host, any enclosing range).
    #[must_use]
    pub fn is_banned(&self, ip: std::net::IpAddr) -> bool {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().any(|len| {
            IpNet::new(ip, len)
                .map(|n| n.trunc())
                .is_ok_and(|n| self.bans.contains_key(&n))
        })
    }

    /// Like [`Self::put_ban`] but the kernel first: for bans the agent
    /// decides itself, where the next packet matters more than the fsync. A
    /// failed store write leaves the kernel entry (reconcile adopts it).
    ///
    /// # Errors
    /// When the kernel refuses; nothing changes then.
    pub fn put_ban_kernel_first(&mut self, rec: BanRecord) -> Result<(), Refused> {
        let held = self.bans.get(&rec.cidr);
        let rec = rec.over(held.as_ref());
        self.maps
            .insert_block(rec.cidr, &kernel_entry(&rec))
            .map_err(|e| refuse(format!("the kernel refused the ban: {e:#}")))?;
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.put_bans(std::slice::from_ref(&rec))
        {
            warn!(cidr = %rec.cidr, "ban enforced but not recorded durably: {e}");
        }
        if !self.bans.contains_key(&rec.cidr) {
            self.counters.ban_issued(rec.kind.name(), 1);
        }
        self.index(rec);
        Ok(())
    }

    /// Lifts a ban; `local`: here only (the fleet keeps it).
    fn block_rm(
        &mut self,
        cidr: &str,
        local: bool,
        exist: bool,
    ) -> Result<serde_json::Value, Refused> {
        let net = parse_net(cidr).map_err(|e| refuse(e.to_string()))?;
        if !self.bans.contains_key(&net) && !self.maps.has_block(&net) {
            if exist {
                return Ok(json!({ "absent": net.to_string() }));
            }
            return Err(refuse(not_banned(self, net)));
        }
        // A manual ban beside other deciders' (a feed, CrowdSec, the
        // engine): only the manual one is lifted, theirs stand.
        if let Some(rest) = self.bans.get(&net).and_then(|r| {
            r.any_decision(is_manual)
                .then(|| r.without(is_manual))
                .flatten()
        }) {
            return self.lift_manual(net, rest, local);
        }
        if let Some(s) = self.store.as_mut() {
            let removed = if local {
                s.forget_bans(&[net])
            } else {
                s.remove_bans(&[net])
            };
            removed.map_err(|e| refuse(format!("failed to record the removal durably: {e}")))?;
        }
        self.maps
            .remove_block(net)
            .map_err(|e| refuse(format!("the kernel refused the removal: {e:#}")))?;
        self.unindex(&net);
        if let Err(e) = self.maps.maintain() {
            warn!("failed to refresh the prefilter: {e:#}");
        }
        info!(cidr = %net, "ban removed");
        Ok(json!({ "removed": net.to_string() }))
    }

    /// Lifts the manual decision on `net`, leaving `rest` (the other
    /// deciders' bans) enforced: the kernel entry becomes the strongest of them.
    fn lift_manual(
        &mut self,
        net: IpNet,
        rest: BanRecord,
        local: bool,
    ) -> Result<serde_json::Value, Refused> {
        if let Some(s) = self.store.as_mut() {
            let one = std::slice::from_ref(&rest);
            // With a fleet: this host's manual decision leaves the shared
            // record (the other decisions on it stay); `--local`: here only.
            if local {
                s.keep_bans(one)
            } else {
                s.put_bans(one)
            }
            .map_err(|e| refuse(format!("failed to record the removal durably: {e}")))?;
        }
        self.maps
            .insert_block(net, &kernel_entry(&rest))
            .map_err(|e| refuse(format!("the kernel refused the change: {e:#}")))?;
        let still: Vec<String> = rest.decisions().map(|d| d.origin).collect();
        self.warning = Some(format!(
            "the manual ban on {} is lifted, but it stays banned by {} (`tollgate block test {}` \
             shows each decision)",
            display(&net),
            still.join(", "),
            display(&IpNet::from(net.addr())),
        ));
        self.index(rest);
        info!(cidr = %net, remaining = ?still, "manual ban lifted, other decisions stand");
        Ok(json!({ "removed": net.to_string(), "still_banned_by": still }))
    }

    /// Ban hit counters by prefix, in one walk of the maps (empty when they
    /// cannot be read).
    pub(super) fn block_hits(&self) -> HashMap<IpNet, u64> {
        self.maps
            .blocks()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, e)| (n, e.hits))
            .collect()
    }

    fn block_ls(&self) -> serde_json::Value {
        let hits = self.block_hits();
        let mut recs: Vec<BanRecord> = self.bans.values().collect();
        recs.sort_by_key(|r| (r.cidr.addr(), r.cidr.prefix_len()));
        let views: Vec<BanView> = recs
            .iter()
            .map(|r| ban_view(r, hits.get(&r.cidr).copied().unwrap_or(0)))
            .collect();
        json!(views)
    }

    fn allow_add(
        &mut self,
        cidr: &str,
        reason: Option<&str>,
        force: bool,
    ) -> Result<serde_json::Value, Refused> {
        let net = parse_net(cidr).map_err(|e| refuse(e.to_string()))?;
        check_breadth(net, force).map_err(|e| refuse(e.to_string()))?;
        let reason = check_reason(reason)?;
        let rec = AllowRecord {
            cidr: net,
            reason: reason.unwrap_or_default(),
            origin: "cli".into(),
            created_at: clock::unix_now(),
        };
        if let Some(s) = self.store.as_mut() {
            s.put_allow(&rec)
                .map_err(|e| refuse(format!("failed to record the allow entry durably: {e}")))?;
        }
        let entry = AllowEntry {
            created_ns: clock::boot_ns(),
            hits: 0,
        };
        if let Err(e) = self.maps.insert_allow(net, &entry) {
            if let Some(s) = self.store.as_mut() {
                let _ = s.remove_allow(&net);
            }
            return Err(refuse(format!("the kernel refused the allow entry: {e:#}")));
        }
        self.allows.insert(net, rec.clone());
        info!(cidr = %net, "allow entry added");
        Ok(json!(allow_view(&rec, 0)))
    }

    fn allow_rm(&mut self, cidr: &str, exist: bool) -> Result<serde_json::Value, Refused> {
        let net = parse_net(cidr).map_err(|e| refuse(e.to_string()))?;
        if !self.allows.contains_key(&net) {
            if exist {
                return Ok(json!({ "absent": net.to_string() }));
            }
            return Err(refuse(format!("{} is not on the allowlist", display(&net))));
        }
        if let Some(s) = self.store.as_mut() {
            s.remove_allow(&net)
                .map_err(|e| refuse(format!("failed to record the removal durably: {e}")))?;
        }
        self.maps
            .remove_allow(net)
            .map_err(|e| refuse(format!("the kernel refused the removal: {e:#}")))?;
        self.allows.remove(&net);
        info!(cidr = %net, "allow entry removed");
        Ok(json!({ "removed": net.to_string() }))
    }

    /// Allowlist hit counters by prefix (empty when the map cannot be read).
    fn allow_hits(&self) -> HashMap<IpNet, u64> {
        self.maps
            .allow_entries()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, e)| (n, e.hits))
            .collect()
    }

    fn allow_ls(&self) -> serde_json::Value {
        let hits = self.allow_hits();
        let mut recs: Vec<&AllowRecord> = self.allows.values().collect();
        recs.sort_by_key(|r| (r.cidr.addr(), r.cidr.prefix_len()));
        json!(
            recs.into_iter()
                .map(|r| allow_view(r, hits.get(&r.cidr).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
        )
    }

    fn stats(&self) -> Result<serde_json::Value, Refused> {
        let rows = self
            .maps
            .counters()
            .map_err(|e| refuse(format!("failed to read counters: {e:#}")))?;
        let mut counters = Vec::new();
        let mut totals: Vec<CounterView> = Verdict::ALL
            .iter()
            .map(|v| CounterView {
                verdict: v.name().into(),
                reason: "all".into(),
                packets: 0,
                bytes: 0,
            })
            .collect();
        for (v, r, c) in rows {
            if let Some(t) = totals.get_mut(v as usize) {
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
            if c.packets > 0 {
                counters.push(CounterView {
                    verdict: v.name().into(),
                    reason: r.name().into(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
        Ok(json!(StatsView { counters, totals }))
    }

    /// What the start's restore left undone, as `status` and the metrics
    /// show it.
    pub(crate) fn restore_view(&self) -> crate::proto::RestoreView {
        let r = &self.restore_report;
        crate::proto::RestoreView {
            skipped_rows: r.skipped_rows,
            read_error: r.read_error.clone(),
            not_enforced: r.not_enforced,
            kernel_error: r.kernel_error.clone(),
            kernel_only: r.kernel_only,
        }
    }

    fn status(&self) -> serde_json::Value {
        let fill = self.maps.fill();
        let cap = self.maps.capacities();
        let mem = self.maps.memory();
        let view = |name: &str, entries, capacity, setting: &str, parts: &[&str]| MapFillView {
            name: name.into(),
            entries,
            capacity,
            memory_bytes: parts
                .iter()
                .map(|p| mem.get(*p).copied())
                .sum::<Option<u64>>(),
            setting: Some(setting.into()),
        };
        let maps = vec![
            view(
                maps::BLOCK4,
                fill.block4,
                cap.block4,
                "hosts_v4",
                &[maps::BLOCK4],
            ),
            view(
                maps::BLOCK6,
                fill.block6,
                cap.block6,
                "hosts_v6",
                &[maps::BLOCK6],
            ),
            view(
                maps::BLOCK4_LPM,
                fill.block4_ranges,
                cap.block4_lpm,
                "ranges_v4",
                &[maps::BLOCK4_LPM],
            ),
            view(
                maps::BLOCK6_LPM,
                fill.block6_ranges,
                cap.block6_lpm,
                "ranges_v6",
                &[maps::BLOCK6_LPM],
            ),
            view(
                "TG_ALLOW4+6",
                fill.allow,
                cap.allow * 2,
                "allowlist",
                &[maps::ALLOW4, maps::ALLOW6],
            ),
        ];
        json!(StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: match self.maps.mode() {
                Mode::Enforce => "enforce".into(),
                Mode::Monitor => "monitor".into(),
            },
            uptime_secs: self.started.elapsed().as_secs(),
            pin_dir: self.pin_dir.clone(),
            state_dir: self.state_dir.clone(),
            store: self.store_health().unwrap_or_else(|| "ok".into()),
            policy_refused: self.policy_refused.as_ref().map(|(at, reason)| {
                crate::proto::PolicyRefusalView {
                    at: *at,
                    refused_at: clock::rfc3339(*at),
                    reason: reason.clone(),
                }
            }),
            interfaces: self
                .attachments
                .iter()
                .map(|a| AttachView {
                    iface: a.iface.clone(),
                    ifindex: a.ifindex,
                    attach: a.how.as_str().into(),
                    program_id: a.program_id,
                })
                .collect(),
            maps,
            sampling: None,
            samples_kernel: self.maps.sample_stats().ok().map(|[taken, lost, skipped]| {
                crate::proto::SampleCounters {
                    taken,
                    lost,
                    skipped,
                    lost_last_minute: self.sample_loss.last_minute(),
                    ring_bytes: u64::from(self.maps.capacities().samples),
                }
            }),
            cluster: self.cluster_view(),
            tls: None,
            policy_file: self.policy_file.clone(),
            last_reload: self.last_reload.as_ref().map(|(at, applied, summary)| {
                crate::proto::ReloadView {
                    at: clock::rfc3339(*at),
                    applied: *applied,
                    summary: summary.clone(),
                }
            }),
            store_bytes: dir_bytes(&self.state_dir),
            store_bans: self.bans.len(),
            store_allows: self.allows.len(),
            limiter: self.maps.buckets().ok().map(|b| {
                view(
                    maps::BUCKETS,
                    b.len(),
                    cap.buckets,
                    "rate_limit_sources",
                    &[maps::BUCKETS],
                )
            }),
            restore: self.restore_view(),
        })
    }
}

/// Bytes of the files directly in `dir` (the store's database), or `None`
/// when it cannot be read.
fn dir_bytes(dir: &str) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum(),
    )
}

/// "X is not banned", naming the bans that cover it when there are: lifting
/// an address that a range drops changes nothing.
fn not_banned<M: Maps>(state: &AgentState<M>, net: IpNet) -> String {
    let mut covering: Vec<IpNet> = state.bans.keys().filter(|b| b.contains(&net)).collect();
    if covering.is_empty() {
        return format!("{} is not banned", display(&net));
    }
    covering.sort_unstable_by_key(|n| std::cmp::Reverse(n.prefix_len()));
    format!(
        "{} has no ban of its own, but {} cover{} it (lift {} instead; `tollgate block test {}` \
         shows why it is dropped)",
        display(&net),
        covering.iter().map(display).collect::<Vec<_>>().join(", "),
        if covering.len() == 1 { "s" } else { "" },
        if covering.len() == 1 { "that" } else { "those" },
        display(&IpNet::from(net.addr())),
    )
}

/// A decision the operator made by hand (`block add`).
fn is_manual(d: &crate::store::Decision) -> bool {
    d.kind == BanReason::Manual && d.origin == "cli" && d.host.is_none()
}

fn ban_view(rec: &BanRecord, hits: u64) -> BanView {
    let now = clock::unix_now();
    BanView {
        cidr: rec.cidr.to_string(),
        address: rec.cidr.addr().to_string(),
        prefix_len: rec.cidr.prefix_len(),
        reason: rec.reason.clone(),
        kind: rec.kind,
        origin: rec.origin.clone(),
        created_at: clock::rfc3339(rec.created_at),
        expires_at: rec.expires_at.map(clock::rfc3339),
        ttl_remaining_secs: rec.expires_at.map(|t| t.saturating_sub(now)),
        hits,
        offences: rec.offences,
        host: rec.host.clone(),
        decisions: rec
            .decisions()
            .map(|d| crate::proto::DecisionView {
                kind: d.kind,
                reason: d.reason,
                origin: d.origin,
                created_at: clock::rfc3339(d.created_at),
                expires_at: d.expires_at.map(clock::rfc3339),
                ttl_remaining_secs: d.expires_at.map(|t| t.saturating_sub(now)),
                host: d.host,
            })
            .collect(),
    }
}

fn allow_view(rec: &AllowRecord, hits: u64) -> AllowView {
    AllowView {
        cidr: rec.cidr.to_string(),
        address: rec.cidr.addr().to_string(),
        prefix_len: rec.cidr.prefix_len(),
        reason: rec.reason.clone(),
        origin: rec.origin.clone(),
        created_at: clock::rfc3339(rec.created_at),
        hits,
    }
}

/// The kernel entry for a record (remaining TTL on the boot clock).
fn kernel_entry(rec: &BanRecord) -> BlockEntry {
    BlockEntry {
        expires_ns: clock::boot_deadline(rec.expires_at),
        created_ns: clock::boot_ns(),
        hits: 0,
        reason: rec.kind as u32,
        reserved: 0,
    }
}

/// A record for a kernel entry the store did not know (store lost or reset).
/// What the restore's kernel writer did.
#[derive(Default)]
struct KernelWrites {
    /// Bans written.
    written: usize,
    /// Time spent writing.
    busy: std::time::Duration,
    /// Batches that failed, and the first failure.
    error: Option<(usize, String)>,
}

impl KernelWrites {
    fn failed(why: &str) -> Self {
        Self {
            error: Some((1, why.into())),
            ..Self::default()
        }
    }

    fn absorb(&mut self, o: Self) {
        self.written += o.written;
        self.busy += o.busy;
        if let Some((n, e)) = o.error {
            match &mut self.error {
                Some((batches, _)) => *batches += n,
                None => self.error = Some((n, e)),
            }
        }
    }
}

/// Writes each restored batch to the kernel (the bans it does not hold
/// yet) until the sender is gone.
fn write_restored<M: Maps>(
    maps: &mut M,
    rx: &std::sync::mpsc::Receiver<Vec<(IpNet, BlockEntry)>>,
) -> KernelWrites {
    let mut out = KernelWrites::default();
    for put in rx {
        out.absorb(write_batch(maps, put));
    }
    out
}

fn write_batch<M: Maps>(maps: &mut M, mut put: Vec<(IpNet, BlockEntry)>) -> KernelWrites {
    let t = Instant::now();
    put.retain(|(net, _)| !maps.has_block(net));
    let written = put.len();
    let error = maps.insert_blocks(put).err().map(|e| (1, format!("{e:#}")));
    KernelWrites {
        written,
        busy: t.elapsed(),
        error,
    }
}

fn adopted_record(net: IpNet, e: &BlockEntry, now: u64) -> BanRecord {
    let boot = clock::boot_ns();
    let expires_at =
        (e.expires_ns != 0).then(|| now + e.expires_ns.saturating_sub(boot) / 1_000_000_000);
    let kind = BanReason::from_u32(e.reason).unwrap_or(BanReason::Manual);
    BanRecord {
        cidr: net,
        kind,
        reason: kind.name().into(),
        origin: "kernel".into(),
        created_at: now,
        created_at_ms: None,
        expires_at,
        offences: 1,
        host: None,
        also: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
