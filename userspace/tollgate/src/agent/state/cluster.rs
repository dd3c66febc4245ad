//! Bans received from the fleet applied to the agent's state. They go to
//! the kernel and the local store like any ban, marked with the host that
//! decided them, and are never shared back; the allowlist and trusted
//! proxies win over them.
//!
//! A fleet record holds every host's decisions on a prefix: it replaces the
//! other hosts' decisions held here, this host's own stay (this host is the
//! one that says what they are). Only an operator's unban (a tombstone in
//! etcd) lifts this host's own decisions: a key that is merely gone (by
//! hand, an etcd wipe, a restore from an old snapshot) makes this host
//! publish its own again. A full read settles them the same way: one etcd
//! lacks is lifted only when a tombstone at least as recent says so, and
//! published again otherwise.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{AgentState, Maps};
use crate::{
    clock,
    cluster::SharedStatus,
    store::{BanRecord, Decision},
};

/// What this host holds for a prefix once the fleet's record `new` (every
/// host's decisions; `None`: etcd has none) is laid over `old`: this host's
/// own decisions (no host) for which `keep_own` holds stay, the other
/// hosts' are those of `new` (this host's decisions as etcd has them are
/// skipped: the local ones say what they are); the higher offence count is
/// kept. `None`: no decision is left.
fn merge(
    old: Option<&BanRecord>,
    new: Option<&BanRecord>,
    me: &str,
    mut keep_own: impl FnMut(&Decision) -> bool,
) -> Option<BanRecord> {
    let cidr = old.or(new)?.cidr;
    let own = old
        .into_iter()
        .flat_map(|o| o.decisions())
        .filter(|d| d.host.is_none() && keep_own(d));
    // Their milliseconds stay in etcd: only this host's own decisions are
    // ever weighed against an unban here, and a copy without them equals
    // the one the local store gives back after a restart (its layout keeps
    // seconds), so a full read then rewrites nothing.
    let fleet = new
        .into_iter()
        .flat_map(|n| n.decisions())
        .filter(|d| d.host.as_deref().is_some_and(|h| h != me))
        .map(|d| Decision {
            created_at_ms: None,
            ..d
        });
    let offences = old
        .map_or(0, |o| o.offences)
        .max(new.map_or(0, |n| n.offences));
    BanRecord::from_decisions(cidr, offences, own.chain(fleet).collect())
}

/// How long after joining a fleet `/readyz` waits for the first full read
/// of its set: a rollout does not count a node ready before it enforces the
/// fleet's bans, nor stalls for good while etcd is away (the link's metrics
/// say so then).
pub const FLEET_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl<M: Maps> AgentState<M> {
    /// The cluster's status, when this agent is in a fleet.
    pub fn set_cluster(&mut self, status: SharedStatus) {
        if self.cluster.is_none() {
            self.fleet_wait = Some(std::time::Instant::now() + FLEET_READ_WAIT);
        }
        self.cluster = Some(status);
    }

    /// Why the agent is not ready yet for the fleet: the first full read of
    /// its set is not applied, and the wait for it has not run out.
    #[must_use]
    pub fn fleet_not_ready(&self) -> Option<String> {
        let until = self.fleet_wait?;
        (std::time::Instant::now() < until).then(|| {
            format!(
                "reading the fleet's shared bans (not ready for at most {} s more)",
                until
                    .saturating_duration_since(std::time::Instant::now())
                    .as_secs()
            )
        })
    }

    /// The fleet link's shared status, when in a fleet.
    #[must_use]
    pub fn cluster_link(&self) -> Option<SharedStatus> {
        self.cluster.clone()
    }

    /// The fleet link for `status` and the metrics.
    #[must_use]
    pub fn cluster_view(&self) -> Option<crate::proto::ClusterView> {
        self.cluster
            .as_ref()
            .and_then(|s| s.lock().ok().map(|g| g.view()))
    }

    fn cluster_count(&self, f: impl FnOnce(&mut crate::cluster::ClusterStatus)) {
        if let Some(s) = &self.cluster
            && let Ok(mut g) = s.lock()
        {
            f(&mut g);
        }
    }

    /// This host's name in the fleet.
    fn fleet_host(&self) -> String {
        self.cluster
            .as_ref()
            .and_then(|s| {
                s.lock()
                    .ok()
                    .and_then(|g| g.cfg.as_ref().map(|c| c.host_id.clone()))
            })
            .unwrap_or_default()
    }

    /// Prefixes with a change of this host's still in the outbox (not yet
    /// acknowledged by etcd).
    fn in_flight(&self) -> HashSet<IpNet> {
        let Some(s) = self.store.as_ref() else {
            return HashSet::new();
        };
        match s.outbox() {
            Ok(rows) => rows
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice::<crate::cluster::Change>(v).ok())
                .filter(crate::cluster::Change::is_ban)
                .map(|c| c.cidr())
                .collect(),
            Err(e) => {
                warn!("cannot read the fleet outbox: {e}");
                HashSet::new()
            }
        }
    }

    /// Records from the fleet (every host's decisions on a prefix) laid
    /// over what this host holds, in one kernel batch and one store
    /// transaction (a full read brings the whole set at once). Returns how
    /// many changed the kernel.
    pub fn cluster_put_many(&mut self, mut records: Vec<BanRecord>) -> usize {
        let me = self.fleet_host();
        // A prefix written twice in one batch: its last record (watch order)
        // is the one that stands; both would merge onto the same old one,
        // and the store would keep either.
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        records.reverse();
        records.retain(|r| seen.insert(r.cidr));
        records.reverse();
        let out = records
            .into_iter()
            .map(|rec| {
                let old = self.bans.get(&rec.cidr);
                (rec.cidr, merge(old.as_ref(), Some(&rec), &me, |_| true))
            })
            .collect();
        self.settle(out).0
    }

    /// Strips the fleet's decisions from the records on prefixes this host
    /// refuses to ban (what a local `block add` without `--force` refuses:
    /// its allowlist, the fleet's allow entries, its trusted proxies, its
    /// own and special addresses). Every fleet path ends in [`Self::settle`],
    /// which asks this first: a record merged onto a ban held here is checked
    /// exactly like a fresh one. This host's own decisions stay (its
    /// operator forced them). Returns the records refused.
    fn screen(&self, records: &mut [(IpNet, Option<BanRecord>)]) -> u64 {
        let fleet = |d: &Decision| d.host.is_some();
        let mut own_addrs = None;
        let mut refused = 0;
        for (cidr, rec) in records.iter_mut() {
            let Some(r) = rec.as_ref().filter(|r| r.any_decision(fleet)) else {
                continue;
            };
            let own = own_addrs.get_or_insert_with(|| (self.host_addrs)());
            let Err(why) = self.refusal(cidr, false, own) else {
                continue;
            };
            debug!(cidr = %cidr, host = ?r.host, "fleet ban refused: {why}");
            refused += 1;
            let mine = r.decisions().filter(|d| !fleet(d)).collect();
            *rec = BanRecord::from_decisions(*cidr, r.offences, mine);
        }
        refused
    }

    /// Makes the records for these prefixes what they are paired with
    /// (`None`: lifted), kernel first. Returns (kernel entries written,
    /// prefixes lifted).
    fn settle(&mut self, records: Vec<(IpNet, Option<BanRecord>)>) -> (usize, usize) {
        self.settle_timed(records, None)
    }

    /// [`Self::settle`], adding where the time went to `spent`.
    fn settle_timed(
        &mut self,
        mut records: Vec<(IpNet, Option<BanRecord>)>,
        mut spent: Option<&mut ApplyTimes>,
    ) -> (usize, usize) {
        let mut t = std::time::Instant::now();
        let mut lap = |f: fn(&mut ApplyTimes) -> &mut std::time::Duration| {
            if let Some(s) = spent.as_deref_mut() {
                *f(s) += t.elapsed();
            }
            t = std::time::Instant::now();
        };
        let refused = self.screen(&mut records);
        if refused > 0 {
            self.cluster_count(|s| s.view.refused += refused);
        }
        let mut take = Vec::with_capacity(records.len());
        let mut enforce = Vec::with_capacity(records.len());
        let mut lift = Vec::new();
        // A fleet record's offence count goes no further than this host's
        // escalation ladder (its last step repeats; a hostile count must not
        // overflow the next offence here).
        let ladder = u32::try_from(self.rate.escalation.ttls.len()).unwrap_or(u32::MAX);
        for (cidr, mut r) in records {
            let old = self.bans.get(&cidr);
            if let Some(r) = r.as_mut() {
                let cap = ladder.max(old.as_ref().map_or(0, |o| o.offences));
                r.offences = r.offences.min(cap);
            }
            match (r, old) {
                (None, Some(_)) => lift.push(cidr),
                (None, None) => {}
                (Some(r), Some(old)) if r == old => {}
                (Some(r), old) => {
                    // Only a new strongest decision changes the kernel
                    // entry (rewriting it would also reset its hits).
                    enforce
                        .push(old.is_none_or(|o| r.expires_at != o.expires_at || r.kind != o.kind));
                    take.push(r);
                }
            }
        }
        lap(|s| &mut s.merge);
        let mut n = 0;
        if !take.is_empty() {
            // Kernel first, as for the agent's own bans: the next packet
            // matters more than the fsync.
            let to_kernel: Vec<_> = take
                .iter()
                .zip(&enforce)
                .filter(|(_, e)| **e)
                .map(|(r, _)| (r.cidr, super::kernel_entry(r)))
                .collect();
            n = to_kernel.len();
            if tracing::enabled!(target: "tollgate::timing", tracing::Level::TRACE) {
                for (c, _) in &to_kernel {
                    tracing::trace!(target: "tollgate::timing", cidr = %c, "fleet_kernel_cidr");
                }
            }
            let kernel = self.maps.insert_blocks(to_kernel);
            timing!("fleet_kernel", n);
            if let Err(e) = kernel {
                warn!("fleet bans not applied: the kernel refused them: {e:#}");
                n = 0;
                take.clear();
            }
        }
        lap(|s| &mut s.kernel);
        if !take.is_empty() {
            // Offences count fleet-wide: this host's next ban of the client
            // (after this one ends) takes the next TTL step, also after a
            // restart (recorded with this host's own history).
            let mut raised = Vec::new();
            for r in &take {
                let h = self.rate.history.entry(r.cidr).or_default();
                if r.offences > h.count {
                    h.count = r.offences;
                    h.last = h.last.max(r.created_at);
                    raised.push((r.cidr, h.clone()));
                }
            }
            // Kept here, never shared back: the bans and the counts in one
            // transaction, durable (a full read's pages too: see
            // `cluster_snapshot_page`).
            if let Some(s) = self.store.as_mut()
                && let Err(e) = s.keep_fleet(&take, &raised)
            {
                warn!(
                    count = take.len(),
                    "fleet bans enforced but not recorded durably: {e}"
                );
            }
            timing!("fleet_stored", n = take.len());
            lap(|s| &mut s.store);
            for r in take {
                if !self.bans.contains_key(&r.cidr) {
                    self.counters.ban_issued(r.kind.name(), 1);
                }
                self.index(r);
            }
            lap(|s| &mut s.index);
        }
        let mut lifted = Vec::with_capacity(lift.len());
        for net in lift {
            if let Err(e) = self.maps.remove_block(net) {
                warn!(cidr = %net, "failed to lift a fleet unban: {e:#}");
                continue;
            }
            self.unindex(&net);
            lifted.push(net);
        }
        if !lifted.is_empty() {
            if let Some(s) = self.store.as_mut()
                && let Err(e) = s.forget_bans(&lifted)
            {
                warn!(
                    count = lifted.len(),
                    "fleet unbans not recorded durably: {e}"
                );
            }
            if let Err(e) = self.maps.maintain() {
                warn!("failed to refresh the prefilter: {e:#}");
            }
        }
        let changed = (n + lifted.len()) as u64;
        self.cluster_count(|s| s.view.applied += changed);
        (n, lifted.len())
    }

    /// Compares the kernel ban maps with the bans this host holds (its own
    /// and the fleet's): bans without a live kernel entry are written again,
    /// kernel entries no ban accounts for are removed. Returns the drift
    /// found (and repaired), also shown as `drift_entries`.
    pub fn cluster_reconcile(&mut self) -> Option<usize> {
        let kernel = match self.maps.blocks() {
            Ok(k) => k,
            Err(e) => {
                warn!("drift check skipped: cannot read the kernel ban maps: {e:#}");
                return None;
            }
        };
        let (now, now_ns) = (clock::unix_now(), clock::boot_ns());
        let live: HashMap<IpNet, tollgate_common::BlockEntry> = kernel
            .into_iter()
            .filter(|(_, e)| e.expires_ns == 0 || e.expires_ns > now_ns)
            .collect();
        // Checked on the shared fields, rebuilt only when missing.
        let missing: Vec<BanRecord> = self
            .bans
            .shared()
            // Due for the next expiry sweep: not drift.
            .filter(|(n, r)| r.expires_at.is_none_or(|t| t > now) && !live.contains_key(n))
            .filter_map(|(n, _)| self.bans.get(&n))
            .collect();
        let stray: Vec<IpNet> = live
            .keys()
            .filter(|n| !self.bans.contains_key(n))
            .copied()
            .collect();
        let drift = missing.len() + stray.len();
        if drift > 0 {
            warn!(
                missing = missing.len(),
                stray = stray.len(),
                "the kernel ban maps drifted from this host's bans; repairing"
            );
            if let Err(e) = self
                .maps
                .insert_blocks(missing.iter().map(|r| (r.cidr, super::kernel_entry(r))))
            {
                warn!("drift not repaired: the kernel refused the missing bans: {e:#}");
            }
            for n in &stray {
                if let Err(e) = self.maps.remove_block(*n) {
                    warn!(cidr = %n, "drift not repaired: failed to remove a stray kernel entry: {e:#}");
                }
            }
            if let Err(e) = self.maps.maintain() {
                warn!("failed to refresh the prefilter: {e:#}");
            }
        }
        let bans = self.bans.len() as u64;
        self.cluster_count(|s| {
            s.bans = bans;
            s.view.drift_entries = Some(drift as u64);
            s.view.repaired += drift as u64;
        });
        Some(drift)
    }

    /// etcd holds the queued changes up to `upto`: they leave the outbox.
    pub fn cluster_acked(&mut self, upto: u64) {
        timing!("ack_start");
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.outbox_ack(upto)
        {
            // They stay in the outbox and are published again after a
            // restart: a repeated put or delete changes nothing.
            warn!(upto, "fleet outbox not trimmed: {e}");
        }
        timing!("ack_done");
    }

    /// Adds an allow entry of the fleet's allowlist (origin `fleet:<host>`)
    /// to the kernel and the local store; this host's own entry for the
    /// prefix wins. True when it changed something.
    pub fn cluster_allow(&mut self, rec: crate::store::AllowRecord) -> bool {
        if let Some(held) = self.allows.get(&rec.cidr)
            && (!held.origin.starts_with(crate::cluster::FLEET_ALLOW) || *held == rec)
        {
            return false;
        }
        let entry = tollgate_common::AllowEntry {
            created_ns: clock::boot_ns(),
            hits: 0,
        };
        if !self.allows.contains_key(&rec.cidr)
            && let Err(e) = self.maps.insert_allow(rec.cidr, &entry)
        {
            warn!(cidr = %rec.cidr, "fleet allow entry not applied: {e:#}");
            return false;
        }
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.keep_allow(&rec)
        {
            warn!(cidr = %rec.cidr, "fleet allow entry not recorded durably: {e}");
        }
        self.cluster_count(|s| s.view.applied += 1);
        self.allows.insert(rec.cidr, rec);
        true
    }

    /// Removes a fleet allow entry the fleet removed (this host's own
    /// entries stay). True when one was removed.
    pub fn cluster_unallow(&mut self, net: &IpNet) -> bool {
        if !self
            .allows
            .get(net)
            .is_some_and(|a| a.origin.starts_with(crate::cluster::FLEET_ALLOW))
        {
            return false;
        }
        if let Err(e) = self.maps.remove_allow(*net) {
            warn!(cidr = %net, "fleet allow removal not applied: {e:#}");
            return false;
        }
        self.allows.remove(net);
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.forget_allow(net)
        {
            warn!(cidr = %net, "fleet allow removal not recorded durably: {e}");
        }
        self.cluster_count(|s| s.view.applied += 1);
        true
    }

    /// Makes the fleet allow entries held here the fleet's whole allowlist.
    pub fn cluster_allows(&mut self, list: Vec<crate::store::AllowRecord>) {
        let wanted: HashSet<IpNet> = list.iter().map(|a| a.cidr).collect();
        let gone: Vec<IpNet> = self
            .allows
            .values()
            .filter(|a| {
                a.origin.starts_with(crate::cluster::FLEET_ALLOW) && !wanted.contains(&a.cidr)
            })
            .map(|a| a.cidr)
            .collect();
        for n in gone {
            self.cluster_unallow(&n);
        }
        for a in list {
            self.cluster_allow(a);
        }
    }

    /// An operator's unban (a tombstone): every decision on the prefix made
    /// at or before it is lifted, as a full read does. This host's own
    /// later ones stay (a `block add` after the unban: its Put that follows
    /// is not taken back from the fleet), and so do all of them when the
    /// unban was this host's (it lifted them locally already; its echo comes
    /// after the outbox ack, often after a new ban). A queued own decision
    /// the unban lifts is withdrawn from the outbox's way to the fleet.
    /// True when the kernel entry was lifted.
    pub fn cluster_remove(&mut self, tomb: &crate::cluster::Lifted) -> bool {
        let net = &tomb.cidr;
        let Some(old) = self.bans.get(net) else {
            return false;
        };
        let me = self.fleet_host();
        let mine = tomb.host == me;
        let mut dropped = false;
        let rest = merge(Some(&old), None, &me, |d| {
            let keep = mine || d.created_ms() > tomb.bound_ms();
            dropped |= !keep;
            keep
        });
        if dropped && self.in_flight().contains(net) {
            self.withdraw_queued(*net, rest.as_ref());
        }
        self.settle(vec![(*net, rest)]).1 > 0
    }

    /// A queued own decision on `net` was lifted by an unban made after it:
    /// the fleet gets this host's decisions as they are now (`rest`), so
    /// the Put still in the outbox does not bring it back fleet-wide.
    fn withdraw_queued(&mut self, net: IpNet, rest: Option<&BanRecord>) {
        let Some(s) = self.store.as_mut() else {
            return;
        };
        let r = match rest {
            Some(r) => s.put_bans(std::slice::from_ref(r)),
            None => s.apply_bans(&[], &[net]),
        };
        if let Err(e) = r {
            warn!(cidr = %net, "a lifted ban's withdrawal not queued for the fleet: {e}");
        }
    }

    /// A record's key is gone from etcd without an unban: the other hosts'
    /// decisions held here go (they are copies of etcd's), this host's own
    /// stay and are published again (their owners do the same). True when
    /// the kernel entry was lifted.
    pub fn cluster_gone(&mut self, net: &IpNet) -> bool {
        let Some(old) = self.bans.get(net) else {
            return false;
        };
        let me = self.fleet_host();
        let rest = merge(Some(&old), None, &me, |_| true);
        let lifted = self.settle(vec![(*net, rest.clone())]).1 > 0;
        if let Some(r) = rest {
            self.republish(vec![r]);
        }
        lifted
    }

    /// Publishes this host's own live decisions in `records` again (etcd
    /// lost them); they are enforced here already.
    fn republish(&mut self, records: Vec<BanRecord>) {
        let now = clock::unix_now();
        let live: Vec<BanRecord> = records
            .into_iter()
            .filter(|r| {
                r.any_decision(|d| d.host.is_none() && d.expires_at.is_none_or(|t| t > now))
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let n = live.len() as u64;
        info!(
            prefixes = n,
            "etcd lost this host's own bans without an unban: publishing them again"
        );
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.put_bans(&live)
        {
            warn!(count = n, "own bans not queued for the fleet again: {e}");
            return;
        }
        self.cluster_count(|s| s.view.republished += n);
    }

    /// Makes this host agree with the fleet's whole set at once (a full
    /// read in one page): [`Self::cluster_snapshot_start`], one page,
    /// [`Self::cluster_snapshot_end`]. Returns (applied, lifted).
    #[cfg(test)]
    pub fn cluster_snapshot(
        &mut self,
        records: Vec<BanRecord>,
        lifted: &[(IpNet, u64)],
        capped: &[IpNet],
    ) -> (usize, usize) {
        let mut rs = self.cluster_snapshot_start(lifted, capped);
        self.cluster_snapshot_page(&mut rs, records);
        self.cluster_snapshot_end(rs, &[])
    }

    /// A full read of the fleet's set begins: what settles its pages (the
    /// tombstones, read before the records), and the prefixes held now,
    /// which the read must bring or see settled at its end.
    #[must_use]
    pub fn cluster_snapshot_start(&self, lifted: &[(IpNet, u64)], capped: &[IpNet]) -> Resync {
        Resync {
            me: self.fleet_host(),
            queued: self.in_flight(),
            capped: capped.iter().copied().collect(),
            tombs: lifted.iter().copied().collect(),
            unseen: self.bans.keys().collect(),
            again: Vec::new(),
            applied: 0,
            pages: 0,
            spent: ApplyTimes::default(),
        }
    }

    /// One page of a full read: every record is laid over what this host
    /// holds, as [`Self::cluster_snapshot_end`] describes, except that
    /// nothing is lifted for being absent (that waits for the whole read)
    /// and this host's own decisions etcd lacks are published again only
    /// at the end. Returns how many changed the kernel.
    pub fn cluster_snapshot_page(&mut self, rs: &mut Resync, records: Vec<BanRecord>) -> usize {
        let t = std::time::Instant::now();
        let me = rs.me.clone();
        let mut out = Vec::with_capacity(records.len());
        let mut withdraw = Vec::new();
        for new in records {
            let cidr = new.cidr;
            rs.unseen.remove(&cidr);
            // New to this host: as any fleet record (allowlist checked in
            // `settle`).
            let Some(old) = self.bans.get(&cidr) else {
                out.push((cidr, merge(None, Some(&new), &me, |_| true)));
                continue;
            };
            let merged = rs.reconcile(&old, Some(&new), &mut withdraw);
            if merged.as_ref() != Some(&old) {
                out.push((cidr, merged));
            }
        }
        for (cidr, rest) in withdraw {
            self.withdraw_queued(cidr, rest.as_ref());
        }
        rs.spent.merge += t.elapsed();
        // Each page is committed durably: its bans are in the pinned kernel
        // maps already, and a restart after a crash mid-read would adopt
        // kernel bans its store lacks as this host's own (and share them).
        let applied = self.settle_timed(out, Some(&mut rs.spent)).0;
        rs.applied += applied;
        rs.pages += 1;
        applied
    }

    /// Makes this host agree with the fleet's whole set, once every page of
    /// the full read is in: every record was laid over what this host
    /// holds; the other hosts' bans the set no longer holds are lifted now.
    /// This host's own decisions stay where etcd holds them; one etcd lacks
    /// is lifted when a tombstone (an operator's unban, the last Unix
    /// millisecond it lifts) at least as recent says so (an unban elsewhere while this host was down
    /// or cut off), also when it is still in the outbox (then withdrawn
    /// from it) or kept local; otherwise it stays where it is still in the
    /// outbox or kept local (capped: the per-minute cap, too wide to share;
    /// `unread`: its record unreadable), and is published again (etcd lost
    /// it: a wipe, a key deleted by hand, a restore from an old snapshot).
    /// Returns (applied, lifted) over the whole read.
    pub fn cluster_snapshot_end(&mut self, mut rs: Resync, unread: &[IpNet]) -> (usize, usize) {
        self.fleet_wait = None;
        rs.capped.extend(unread.iter().copied());
        let mut out = Vec::new();
        let mut withdraw = Vec::new();
        // Held when the read began and absent from it (a prefix that went
        // meanwhile is skipped).
        for cidr in std::mem::take(&mut rs.unseen) {
            let Some(old) = self.bans.get(&cidr) else {
                continue;
            };
            let merged = rs.reconcile(&old, None, &mut withdraw);
            if merged.as_ref() != Some(&old) {
                out.push((cidr, merged));
            }
        }
        for (cidr, rest) in withdraw {
            self.withdraw_queued(cidr, rest.as_ref());
        }
        let (applied, lifted) = self.settle(out);
        // As held now (a local change may have come between two pages); a
        // page could not know the read's unreadable prefixes yet.
        let again: Vec<BanRecord> = std::mem::take(&mut rs.again)
            .into_iter()
            .filter(|c| !rs.capped.contains(c))
            .filter_map(|c| self.bans.get(&c))
            .collect();
        let republished = again.len();
        self.republish(again);
        let applied = rs.applied + applied;
        let s = &rs.spent;
        info!(
            applied,
            lifted,
            republished,
            merge_ms = s.merge.as_millis(),
            kernel_ms = s.kernel.as_millis(),
            store_ms = s.store.as_millis(),
            index_ms = s.index.as_millis(),
            "fleet set reconciled"
        );
        (applied, lifted)
    }
}

/// Where applying a full read's pages spent its time (logged at its end).
#[derive(Default, Debug)]
pub struct ApplyTimes {
    /// Laying records over what is held, checking them against the allowlist.
    pub merge: std::time::Duration,
    /// Writing the kernel maps.
    pub kernel: std::time::Duration,
    /// Recording the bans and the offence counts they raised in the local
    /// store.
    pub store: std::time::Duration,
    /// The in-memory index.
    pub index: std::time::Duration,
}

/// A full read of the fleet's set being applied page by page (see
/// [`AgentState::cluster_snapshot_start`]).
pub struct Resync {
    me: String,
    /// Prefixes with a change of this host's in the outbox when it began.
    queued: HashSet<IpNet>,
    /// Prefixes kept local (the cap, too wide) or unreadable in etcd.
    capped: HashSet<IpNet>,
    /// The operators' unbans etcd remembers: prefix, the last Unix
    /// millisecond each lifts.
    tombs: HashMap<IpNet, u64>,
    /// Prefixes held when it began that no page has brought yet.
    unseen: HashSet<IpNet>,
    /// Prefixes with decisions of this host's that etcd lacks, published
    /// again at the end.
    again: Vec<IpNet>,
    /// Kernel entries written so far.
    applied: usize,
    /// Pages applied so far.
    pages: u32,
    spent: ApplyTimes,
}

impl Resync {
    /// Whether this host's own decisions on `cidr` are held back from etcd
    /// (still queued, or kept local): etcd lacking them lost nothing.
    fn held(&self, cidr: &IpNet) -> bool {
        self.queued.contains(cidr) || self.capped.contains(cidr)
    }

    /// Whether an operator's unban at least as recent as `d` lifted it.
    fn lifted_after(&self, cidr: &IpNet, d: &Decision) -> bool {
        self.tombs.get(cidr).is_some_and(|t| *t >= d.created_ms())
    }

    /// `old` (held here) with etcd's record `new` laid over it (`None`:
    /// etcd has none). This host's own decisions that etcd holds stay; one
    /// etcd lacks was written before an unban's tombstone if one is at
    /// least as recent (the unban deletes the key in the same transaction),
    /// and goes (withdrawn from the outbox when still queued); otherwise it
    /// stays, and is published again unless held back here (queued or kept
    /// local). Returns the merged record.
    fn reconcile(
        &mut self,
        old: &BanRecord,
        new: Option<&BanRecord>,
        withdraw: &mut Vec<(IpNet, Option<BanRecord>)>,
    ) -> Option<BanRecord> {
        let cidr = old.cidr;
        let held = self.held(&cidr);
        let (mut lost, mut dropped) = (false, false);
        let merged = merge(Some(old), new, &self.me, |d| {
            // This host's own decision as etcd has it (origin as shared,
            // the same creation time).
            if new.is_some_and(|n| {
                n.any_decision(|e| {
                    e.host.as_deref() == Some(self.me.as_str())
                        && e.created_at == d.created_at
                        && e.origin == crate::cluster::shared_origin(&d.origin)
                })
            }) {
                return true;
            }
            if self.lifted_after(&cidr, d) {
                dropped = true;
                return false;
            }
            lost |= !held;
            true
        });
        if dropped && self.queued.contains(&cidr) {
            withdraw.push((cidr, merged.clone()));
        }
        if lost && merged.is_some() {
            self.again.push(cidr);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: Option<&str>, expires_at: Option<u64>, offences: u32) -> BanRecord {
        BanRecord {
            cidr: "198.18.0.1/32".parse().unwrap(),
            kind: tollgate_common::BanReason::Manual,
            reason: "x".into(),
            origin: "cli".into(),
            created_at: 1,
            created_at_ms: None,
            expires_at,
            offences,
            host: host.map(Into::into),
            also: Vec::new(),
        }
    }

    #[test]
    fn a_fleet_record_replaces_the_other_hosts_decisions_and_keeps_this_hosts() {
        let all = |_: &Decision| true;
        let local = rec(None, Some(100), 3);
        // The fleet's later decision leads; the local one stays beside it.
        let m = merge(Some(&local), Some(&rec(Some("b"), Some(200), 1)), "a", all).unwrap();
        assert_eq!(
            (m.expires_at, m.offences, m.host.as_deref(), m.also.len()),
            (Some(200), 3, Some("b"), 1)
        );
        // B's next record (it withdrew its decision; C's is there) replaces
        // B's: only C's and the local one are left.
        let c = BanRecord {
            also: vec![rec(Some("a"), Some(999), 1).decision()],
            ..rec(Some("c"), Some(50), 1)
        };
        let m2 = merge(Some(&m), Some(&c), "a", all).unwrap();
        assert_eq!(
            m2.decisions().map(|d| d.host).collect::<Vec<_>>(),
            vec![None, Some("c".into())],
            "this host's decision as etcd has it is not taken over the local one"
        );
        // The key gone: the fleet's decisions go, the local one stays only
        // when kept.
        let gone = merge(Some(&m2), None, "a", all).unwrap();
        assert_eq!((gone.host, gone.also.len()), (None, 0));
        assert_eq!(merge(Some(&m2), None, "a", |_| false), None);
        // A fleet decision's milliseconds stay in etcd (the copy here equals
        // what the local store gives back after a restart); this host's
        // own keep theirs.
        let timed = |host: Option<&str>| BanRecord {
            created_at_ms: Some(1_500),
            ..rec(host, Some(300), 1)
        };
        let m3 = merge(Some(&timed(None)), Some(&timed(Some("b"))), "a", all).unwrap();
        assert_eq!(
            m3.decisions()
                .map(|d| (d.host, d.created_at_ms))
                .collect::<Vec<_>>(),
            vec![(None, Some(1_500)), (Some("b".into()), None)]
        );
    }
}
