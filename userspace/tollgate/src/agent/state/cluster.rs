//! Bans received from the fleet applied to the agent's state. They go to
//! the kernel and the local store like any ban, marked with the host that
//! decided them, and are never shared back; the allowlist and trusted
//! proxies win over them.

use std::collections::HashSet;

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{AgentState, Maps};
use crate::{cluster::SharedStatus, store::BanRecord};

/// Which of two records for one prefix stands: the later expiry (no expiry
/// is latest), the higher offence count kept either way.
fn merge(old: &BanRecord, new: BanRecord) -> Option<BanRecord> {
    let later = match (old.expires_at, new.expires_at) {
        _ if old.host == new.host => true,
        (None, _) => false,
        (Some(_), None) => true,
        (Some(a), Some(b)) => b > a,
    };
    later.then(|| BanRecord {
        offences: new.offences.max(old.offences),
        ..new
    })
}

impl<M: Maps> AgentState<M> {
    /// The cluster's status, when this agent is in a fleet.
    pub fn set_cluster(&mut self, status: SharedStatus) {
        self.cluster = Some(status);
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

    /// Applies a ban from another host; true when the kernel changed.
    pub fn cluster_put(&mut self, rec: BanRecord) -> bool {
        if let Some(a) = self.allow_overlap(&rec.cidr) {
            debug!(cidr = %rec.cidr, allow = %a, host = ?rec.host, "fleet ban refused: allowlisted");
            self.cluster_count(|s| s.view.refused += 1);
            return false;
        }
        if let Some(p) = self.trusted_overlap(&rec.cidr) {
            debug!(cidr = %rec.cidr, proxy = %p, host = ?rec.host, "fleet ban refused: trusted proxy");
            self.cluster_count(|s| s.view.refused += 1);
            return false;
        }
        let rec = match self.bans.get(&rec.cidr) {
            Some(old) => match merge(old, rec) {
                Some(r) if &r != old => r,
                _ => return false,
            },
            None => rec,
        };
        // The record has a host, so the cluster store does not share it back.
        match self.put_ban_kernel_first(rec) {
            Ok(()) => {
                self.cluster_count(|s| s.view.applied += 1);
                true
            }
            Err(e) => {
                warn!("fleet ban not applied: {e}");
                false
            }
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
        let mut applied = 0;
        for r in records {
            applied += usize::from(self.cluster_put(r));
        }
        let missing: Vec<BanRecord> = self
            .bans
            .values()
            .filter(|r| !present.contains(&r.cidr))
            .cloned()
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
        }
    }

    #[test]
    fn merge_keeps_the_later_expiry_and_the_higher_count() {
        let local = rec(None, Some(100), 3);
        assert_eq!(merge(&local, rec(Some("b"), Some(50), 1)), None);
        let m = merge(&local, rec(Some("b"), Some(200), 1)).unwrap();
        assert_eq!(
            (m.expires_at, m.offences, m.host.as_deref()),
            (Some(200), 3, Some("b"))
        );
        assert_eq!(
            merge(&rec(None, None, 1), rec(Some("b"), Some(200), 1)),
            None
        );
        // The same host's newer record replaces its older one.
        let m = merge(&rec(Some("b"), Some(200), 1), rec(Some("b"), Some(50), 1)).unwrap();
        assert_eq!(m.expires_at, Some(50));
    }
}
