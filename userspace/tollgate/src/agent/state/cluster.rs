//! Bans received from the fleet applied to the agent's state. They go to
//! the kernel and the local store like any ban, marked with the host that
//! decided them, and are never shared back; the allowlist and trusted
//! proxies win over them.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{AgentState, Maps};
use crate::{clock, cluster::SharedStatus, store::BanRecord};

/// A fleet record laid over what this host holds for the prefix: it becomes
/// one more decision (replacing that host's earlier one), the local ones
/// (a feed's, CrowdSec's, the engine's) are kept, the strongest is enforced
/// and the higher offence count kept. `None`: nothing changes.
fn merge(old: &BanRecord, new: BanRecord) -> Option<BanRecord> {
    let offences = new.offences.max(old.offences);
    let r = BanRecord { offences, ..new }.over(Some(old));
    (&r != old).then_some(r)
}

impl<M: Maps> AgentState<M> {
    /// The cluster's status, when this agent is in a fleet.
    pub fn set_cluster(&mut self, status: SharedStatus) {
        self.cluster = Some(status);
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

    /// Applies bans from other hosts in one kernel batch and one store
    /// transaction (a full read brings the whole set at once). Returns how
    /// many changed the kernel.
    pub fn cluster_put_many(&mut self, records: Vec<BanRecord>) -> usize {
        let mut take = Vec::with_capacity(records.len());
        let mut enforce = Vec::with_capacity(records.len());
        let mut refused = 0;
        for rec in records {
            if let Some(a) = self.allow_overlap(&rec.cidr) {
                debug!(cidr = %rec.cidr, allow = %a, host = ?rec.host, "fleet ban refused: allowlisted");
                refused += 1;
                continue;
            }
            if let Some(p) = self.trusted_overlap(&rec.cidr) {
                debug!(cidr = %rec.cidr, proxy = %p, host = ?rec.host, "fleet ban refused: trusted proxy");
                refused += 1;
                continue;
            }
            match self.bans.get(&rec.cidr) {
                Some(old) => {
                    if let Some(r) = merge(&old, rec) {
                        // Only a new strongest decision changes the kernel
                        // entry (rewriting it would also reset its hits).
                        enforce.push(r.expires_at != old.expires_at || r.kind != old.kind);
                        take.push(r);
                    }
                }
                None => {
                    enforce.push(true);
                    take.push(rec);
                }
            }
        }
        if refused > 0 {
            self.cluster_count(|s| s.view.refused += refused);
        }
        if take.is_empty() {
            return 0;
        }
        // Kernel first, as for the agent's own bans: the next packet
        // matters more than the fsync.
        let to_kernel: Vec<_> = take
            .iter()
            .zip(&enforce)
            .filter(|(_, e)| **e)
            .map(|(r, _)| (r.cidr, super::kernel_entry(r)))
            .collect();
        let n = to_kernel.len();
        if let Err(e) = self.maps.insert_blocks(to_kernel) {
            warn!("fleet bans not applied: the kernel refused them: {e:#}");
            return 0;
        }
        // Kept here, never shared back (a record led by a local decision
        // was shared when that decision was made).
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.keep_bans(&take)
        {
            warn!(
                count = take.len(),
                "fleet bans enforced but not recorded durably: {e}"
            );
        }
        for r in take {
            if !self.bans.contains_key(&r.cidr) {
                self.counters.ban_issued(r.kind.name(), 1);
            }
            self.index(r);
        }
        self.cluster_count(|s| s.view.applied += n as u64);
        n
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
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.outbox_ack(upto)
        {
            // They stay in the outbox and are published again after a
            // restart: a repeated put or delete changes nothing.
            warn!(upto, "fleet outbox not trimmed: {e}");
        }
    }

    /// Lifts a ban the fleet removed; true when one was lifted.
    pub fn cluster_remove(&mut self, net: &IpNet) -> bool {
        if !self.bans.contains_key(net) {
            return false;
        }
        if let Err(e) = self.maps.remove_block(*net) {
            warn!(cidr = %net, "failed to lift a fleet unban: {e:#}");
            return false;
        }
        self.unindex(net);
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.forget_bans(&[*net])
        {
            warn!(cidr = %net, "fleet unban not recorded durably: {e}");
        }
        if let Err(e) = self.maps.maintain() {
            warn!("failed to refresh the prefilter: {e:#}");
        }
        self.cluster_count(|s| s.view.applied += 1);
        true
    }

    /// Makes this host agree with the fleet's whole set: every record is
    /// applied; bans from other hosts that the set no longer holds are
    /// lifted; this host's own bans missing from it are shared again when
    /// made after `since` (they may never have reached etcd) and lifted
    /// otherwise (someone removed them). Returns (applied, lifted, shared).
    pub fn cluster_snapshot(
        &mut self,
        records: Vec<BanRecord>,
        since: u64,
    ) -> (usize, usize, usize) {
        let present: HashSet<IpNet> = records.iter().map(|r| r.cidr).collect();
        let applied = self.cluster_put_many(records);
        let missing: Vec<BanRecord> = self
            .bans
            .values()
            .filter(|r| !present.contains(&r.cidr))
            .collect();
        let (mut lifted, mut shared) = (0, 0);
        for r in missing {
            if r.host.is_none() && r.created_at.saturating_add(1) >= since {
                if let Some(s) = self.store.as_mut()
                    && s.put_bans(std::slice::from_ref(&r)).is_ok()
                {
                    shared += 1;
                }
            } else {
                lifted += usize::from(self.cluster_remove(&r.cidr));
            }
        }
        info!(applied, lifted, shared, "fleet set reconciled");
        (applied, lifted, shared)
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
            expires_at,
            offences,
            host: host.map(Into::into),
            also: Vec::new(),
        }
    }

    #[test]
    fn merge_keeps_the_later_expiry_the_higher_count_and_local_decisions() {
        let local = rec(None, Some(100), 3);
        // An earlier fleet expiry is kept as a decision; the local one leads.
        let m = merge(&local, rec(Some("b"), Some(50), 1)).unwrap();
        assert_eq!(
            (m.expires_at, m.host.as_deref(), m.also.len()),
            (Some(100), None, 1)
        );
        let m = merge(&local, rec(Some("b"), Some(200), 1)).unwrap();
        assert_eq!(
            (m.expires_at, m.offences, m.host.as_deref()),
            (Some(200), 3, Some("b"))
        );
        // Lifting the fleet's decision leaves the local one.
        let rest = m.without(|d| d.host.is_some()).unwrap();
        assert_eq!((rest.expires_at, rest.host), (Some(100), None));
        // The same host's newer record replaces its older one.
        let m = merge(&rec(Some("b"), Some(200), 1), rec(Some("b"), Some(50), 1)).unwrap();
        assert_eq!((m.expires_at, m.also.len()), (Some(50), 0));
        // Nothing new: no change.
        let same = rec(Some("b"), Some(200), 1);
        assert_eq!(merge(&same, same.clone()), None);
    }
}
