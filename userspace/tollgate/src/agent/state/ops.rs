//! Operations on whole groups of bans: feed imports (replace a group in one
//! store transaction and one batched map update), removal by origin, export,
//! and the snapshot the metrics endpoint renders.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use serde_json::json;
use tollgate_common::{BanReason, maps};
use tracing::{debug, info, warn};

use super::{AgentState, Maps, Refused, check_reason, check_ttl, kernel_entry, refuse};
use crate::proto::check_origin;
use crate::{
    clock,
    feed::{ImportReport, MAX_ENTRIES, MAX_REPORTED_REJECTS},
    metrics::Snapshot,
    net::{check_breadth, display, parse_net},
    proto::ExportView,
    proto::ban_kind,
    store::{BanRecord, Decision},
};

impl<M: Maps> AgentState<M> {
    /// Makes the feed group `origin` exactly `cidrs` (untrusted text, each
    /// validated): new entries are added, entries whose TTL or reason changed
    /// are rewritten, entries of the group no longer listed are removed, and
    /// everything else is left untouched, so re-importing the same list
    /// changes nothing. Bans from other origins are never touched. Refused
    /// entries are reported, the rest applied; if no entry is valid nothing
    /// changes (an empty or garbled download must not wipe a group — use
    /// `block rm --origin` for that).
    ///
    /// # Errors
    /// When the arguments are invalid, nothing is valid, or the store or
    /// kernel write fails (nothing changes then).
    pub fn import_group(
        &mut self,
        origin: &str,
        cidrs: &[String],
        ttl_secs: Option<u64>,
        reason: Option<&str>,
        force: bool,
    ) -> Result<ImportReport, Refused> {
        self.import_group_as(origin, cidrs, ttl_secs, reason, force, false)
    }

    /// [`Self::import_group`]; with `dry_run` nothing changes and the report
    /// says what would (with the entries added and lifted, bounded).
    ///
    /// # Errors
    /// As [`Self::import_group`].
    pub fn import_group_as(
        &mut self,
        origin: &str,
        cidrs: &[String],
        ttl_secs: Option<u64>,
        reason: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> Result<ImportReport, Refused> {
        check_origin(origin)?;
        let t0 = std::time::Instant::now();
        let ttl = check_ttl(ttl_secs)?;
        let reason = check_reason(reason)?.unwrap_or_else(|| format!("feed {origin}"));
        if cidrs.len() > MAX_ENTRIES {
            return Err(refuse(format!(
                "{} entries is more than the {MAX_ENTRIES} one import may carry",
                cidrs.len()
            )));
        }
        let kind = BanReason::Feed;
        let now = clock::unix_now();
        let expires_at = ttl.map(|t| now + t);
        let mut report = ImportReport {
            origin: origin.to_owned(),
            ..ImportReport::default()
        };
        let reject = |report: &mut ImportReport, cidr: &str, why: String| {
            report.rejected_count += 1;
            if report.rejected.len() < MAX_REPORTED_REJECTS {
                report.rejected.push((cidr.chars().take(80).collect(), why));
            }
        };
        // This group's decisions; another fleet host's of the same origin
        // are the fleet's, not this feed's.
        let ours = |d: &Decision| d.origin == origin && d.kind == kind && d.host.is_none();
        // Read once for the whole list, not once per entry.
        let own = if force {
            Vec::new()
        } else {
            (self.host_addrs)()
        };
        let mut wanted = HashSet::with_capacity(cidrs.len());
        let mut put = Vec::new();
        let mut previous = Vec::new();
        for c in cidrs {
            let net = match parse_net(c).and_then(|n| check_breadth(n, force).map(|()| n)) {
                Ok(n) => n,
                Err(e) => {
                    reject(&mut report, c, e.to_string());
                    continue;
                }
            };
            // A list is checked as `block add` is: a feed carrying 127.0.0.0/8,
            // this host's address or the load balancer's must not ban it.
            if let Err(why) = self.refusal(&net, force, &own) {
                reject(&mut report, c, why);
                continue;
            }
            if !wanted.insert(net) {
                continue;
            }
            let held = self.bans.get(&net);
            let held = held.as_ref();
            // Another decider's ban (a manual one, another feed, the same
            // origin from another fleet host) stays beside this group's.
            if held.is_some_and(|r| r.any_decision(|d| !ours(d))) {
                report.kept_other_origin += 1;
            }
            let mine = BanRecord {
                cidr: net,
                kind,
                reason: reason.clone(),
                origin: origin.to_owned(),
                created_at: now,
                created_at_ms: None,
                expires_at,
                offences: held.map_or(1, |r| r.offences),
                host: None,
                also: Vec::new(),
            };
            match held.and_then(|r| r.decisions().find(|d| ours(d)).map(|d| (r, d))) {
                Some((_, d)) if d.reason == reason && d.expires_at.is_none() && ttl.is_none() => {
                    report.unchanged += 1;
                }
                Some((r, d)) => {
                    report.updated += 1;
                    previous.push(r.clone());
                    put.push(
                        BanRecord {
                            created_at: d.created_at,
                            ..mine
                        }
                        .over(Some(r)),
                    );
                }
                None => {
                    report.added += 1;
                    if let Some(r) = held {
                        previous.push(r.clone());
                    }
                    put.push(mine.over(held));
                }
            }
        }
        if wanted.is_empty() {
            let first = report
                .rejected
                .first()
                .map(|(c, why)| format!(" (first: '{c}': {why})"))
                .unwrap_or_default();
            return Err(refuse(format!(
                "none of the {} entries can be used{first}; nothing changed (to empty a group, \
                 use `tollgate block rm --origin {origin}`)",
                cidrs.len()
            )));
        }
        let (trimmed, stale) = self.lift_where(|r| !wanted.contains(&r.cidr), ours);
        report.removed = stale.len() + trimmed.len();
        let t_validate = t0.elapsed();
        if dry_run {
            report.dry_run = true;
            report.would_add = put
                .iter()
                .filter(|r| !self.bans.contains_key(&r.cidr))
                .take(MAX_REPORTED_REJECTS)
                .map(|r| display(&r.cidr))
                .collect();
            report.would_remove = stale
                .iter()
                .chain(trimmed.iter().map(|r| &r.cidr))
                .take(MAX_REPORTED_REJECTS)
                .map(display)
                .collect();
            return Ok(report);
        }
        previous.extend(trimmed.iter().filter_map(|r| self.bans.get(&r.cidr)));
        put.extend(trimmed);
        self.write_batch(put, &previous, &stale, "the import")?;
        self.counters.ban_issued(kind.name(), report.added as u64);
        debug!(?t_validate, total = ?t0.elapsed(), "import timings (cumulative)");
        info!(
            origin,
            added = report.added,
            updated = report.updated,
            unchanged = report.unchanged,
            removed = report.removed,
            kept_other_origin = report.kept_other_origin,
            rejected = report.rejected_count,
            "feed imported"
        );
        Ok(report)
    }

    /// Refuses a change the ban maps cannot hold, before anything is
    /// written: names the map, by how much it is short, and the policy
    /// setting that would make room.
    fn check_fits(&self, put: &[BanRecord], stale: &[IpNet], what: &str) -> Result<(), Refused> {
        // Indexes into `rows` below: hosts v4, hosts v6, ranges v4, ranges v6.
        let slot = |n: &IpNet| match n {
            IpNet::V4(n) if n.prefix_len() == 32 => 0,
            IpNet::V6(n) if n.prefix_len() == 128 => 1,
            IpNet::V4(_) => 2,
            IpNet::V6(_) => 3,
        };
        let mut added = [0u64; 4];
        let mut freed = [0u64; 4];
        for r in put {
            if !self.bans.contains_key(&r.cidr) {
                added[slot(&r.cidr)] += 1;
            }
        }
        for n in stale {
            freed[slot(n)] += 1;
        }
        let fill = self.maps.fill();
        let cap = self.maps.capacities();
        let rows = [
            (
                maps::BLOCK4,
                "IPv4 hosts",
                "hosts_v4",
                fill.block4,
                cap.block4,
            ),
            (
                maps::BLOCK6,
                "IPv6 hosts",
                "hosts_v6",
                fill.block6,
                cap.block6,
            ),
            (
                maps::BLOCK4_LPM,
                "IPv4 ranges",
                "ranges_v4",
                fill.block4_ranges,
                cap.block4_lpm,
            ),
            (
                maps::BLOCK6_LPM,
                "IPv6 ranges",
                "ranges_v6",
                fill.block6_ranges,
                cap.block6_lpm,
            ),
        ];
        for (i, (name, label, key, used, capacity)) in rows.into_iter().enumerate() {
            let need = (used as u64 + added[i]).saturating_sub(freed[i]);
            if added[i] > 0 && need > u64::from(capacity) {
                let suggest = need
                    .next_power_of_two()
                    .min(u64::from(crate::policy::capacity::MAX_CAPACITY));
                return Err(refuse(format!(
                    "{what} does not fit: {name} ({label}) holds at most {capacity} entries, \
                     {used} are in use and {what} adds {} ({} too many); nothing changed — \
                     set `capacity: {{{key}: {suggest}}}` in the policy and restart the agent \
                     (its bans are carried over)",
                    added[i],
                    need - u64::from(capacity),
                )));
            }
        }
        Ok(())
    }

    /// Writes a group change: `put` (new and rewritten records; `previous`
    /// holds the rewritten ones as they were) and `stale` (lifted) go to the
    /// store in one transaction and to the kernel in one batched update, then
    /// into the index. If the kernel refuses, the store and kernel are put
    /// back as they were. `what` names the change in errors.
    ///
    /// # Errors
    /// When the store or kernel write fails (nothing changes then).
    pub(super) fn write_batch(
        &mut self,
        put: Vec<BanRecord>,
        previous: &[BanRecord],
        stale: &[IpNet],
        what: &str,
    ) -> Result<(), Refused> {
        self.check_fits(&put, stale, what)?;
        if let Some(s) = self.store.as_mut() {
            s.apply_bans(&put, stale)
                .map_err(|e| refuse(format!("failed to record {what} durably: {e}")))?;
        }
        if let Err(e) = self
            .maps
            .insert_blocks(put.iter().map(|r| (r.cidr, kernel_entry(r))))
        {
            // Undo: the kernel keeps only what it had, the store too.
            let added: Vec<IpNet> = put
                .iter()
                .filter(|r| !self.bans.contains_key(&r.cidr))
                .map(|r| r.cidr)
                .collect();
            for net in &added {
                let _ = self.maps.remove_block(*net);
            }
            for r in previous {
                let _ = self.maps.insert_block(r.cidr, &kernel_entry(r));
            }
            if let Err(e) = self.maps.maintain() {
                warn!("failed to refresh the prefilter: {e:#}");
            }
            if let Some(s) = self.store.as_mut() {
                let restore: Vec<BanRecord> = previous
                    .iter()
                    .cloned()
                    .chain(stale.iter().filter_map(|n| self.bans.get(n)))
                    .collect();
                if let Err(u) = s.apply_bans(&restore, &added) {
                    warn!("failed to undo the store write: {u}");
                }
            }
            return Err(refuse(format!(
                "the kernel refused {what} ({e:#}); nothing changed — are the maps full? \
                 (`tollgate status` shows each map's fill and the `capacity` setting that \
                 sizes it)"
            )));
        }
        for net in stale {
            if let Err(e) = self.maps.remove_block(*net) {
                warn!(cidr = %net, "failed to lift a ban dropped from its group: {e:#}");
            }
            self.unindex(net);
        }
        if let Err(e) = self.maps.maintain() {
            warn!("failed to refresh the prefilter: {e:#}");
        }
        for r in put {
            self.index(r);
        }
        Ok(())
    }

    /// Where `which` holds, the decisions matching `decision` are lifted:
    /// the records that keep other decisions (to rewrite), and the prefixes
    /// left with none (to lift).
    pub(super) fn lift_where(
        &self,
        which: impl Fn(&BanRecord) -> bool,
        decision: impl Fn(&Decision) -> bool,
    ) -> (Vec<BanRecord>, Vec<IpNet>) {
        let mut trimmed = Vec::new();
        let mut stale = Vec::new();
        for r in self.bans.values() {
            if !r.any_decision(&decision) || !which(&r) {
                continue;
            }
            match r.without(&decision) {
                Some(rest) => trimmed.push(rest),
                None => stale.push(r.cidr),
            }
        }
        (trimmed, stale)
    }

    /// Lifts every decision of this host with this origin (any kind; a
    /// prefix that other deciders ban stays banned by them, and other fleet
    /// hosts' decisions of the same origin stay: with a fleet, this host's
    /// are withdrawn from the shared records); `dry_run`: only lists them
    /// (sorted by address).
    pub(super) fn block_rm_origin(
        &mut self,
        origin: &str,
        dry_run: bool,
    ) -> Result<serde_json::Value, Refused> {
        check_origin(origin)?;
        let (trimmed, stale) =
            self.lift_where(|_| true, |d| d.origin == origin && d.host.is_none());
        let mut nets: Vec<IpNet> = stale
            .iter()
            .copied()
            .chain(trimmed.iter().map(|r| r.cidr))
            .collect();
        if nets.is_empty() {
            return Err(refuse(format!("no bans with origin '{origin}'")));
        }
        if dry_run {
            nets.sort_unstable_by_key(|n| (n.addr(), n.prefix_len()));
            return Ok(json!({
                "origin": origin,
                "removed": 0,
                "would_remove": nets.len(),
                "dry_run": true,
                "entries": nets.iter().take(MAX_REPORTED_REJECTS).map(display).collect::<Vec<_>>(),
            }));
        }
        let t0 = std::time::Instant::now();
        let previous: Vec<BanRecord> = trimmed
            .iter()
            .filter_map(|r| self.bans.get(&r.cidr))
            .collect();
        self.write_batch(trimmed, &previous, &stale, "the removal")?;
        debug!(elapsed = ?t0.elapsed(), "removed from the store and the kernel");
        info!(origin, count = nets.len(), "bans removed by origin");
        Ok(json!({ "origin": origin, "removed": nets.len(), "dry_run": false }))
    }

    /// Bans as a plain list, sorted by address; rows as `block ls` shows
    /// them. With `origin`, each row holds that origin's decision only (what
    /// re-importing the export as that group would make).
    pub(super) fn block_export(&self, origin: Option<&str>) -> serde_json::Value {
        let mut recs: Vec<BanRecord> = self
            .bans
            .values()
            .filter_map(|r| match origin {
                None => Some(r),
                Some(o) => r.only(|d| d.origin == o),
            })
            .collect();
        recs.sort_by_key(|r| (r.cidr.addr(), r.cidr.prefix_len()));
        let hits = self.block_hits();
        json!(ExportView {
            generated_at: clock::rfc3339(clock::unix_now()),
            total: recs.len(),
            offset: 0,
            bans: recs
                .iter()
                .map(|r| super::ban_view(r, hits.get(&r.cidr).copied().unwrap_or(0)))
                .collect(),
        })
    }

    /// The IPv4 /16 and IPv6 /32 prefixes holding the most bans, most
    /// first (a broader ban counts under its own prefix), at most
    /// [`crate::metrics::TOP_PREFIXES`].
    fn top_prefixes(&self) -> Vec<(String, u64)> {
        let mut counts: std::collections::HashMap<IpNet, u64> = std::collections::HashMap::new();
        for net in self.bans.keys() {
            let len = if net.addr().is_ipv4() { 16 } else { 32 };
            let agg = IpNet::new(net.addr(), len.min(net.prefix_len())).map_or(net, |n| n.trunc());
            *counts.entry(agg).or_default() += 1;
        }
        let mut top: Vec<(IpNet, u64)> = counts.into_iter().collect();
        top.sort_unstable_by_key(|(n, c)| (std::cmp::Reverse(*c), n.addr(), n.prefix_len()));
        top.truncate(crate::metrics::TOP_PREFIXES);
        top.into_iter().map(|(n, c)| (display(&n), c)).collect()
    }

    /// What the metrics endpoint shows, read under the lock (cheap: counters
    /// are one map read per verdict and reason, the rest is in memory).
    #[must_use]
    pub fn snapshot(&self, wanted_ifaces: usize) -> Snapshot {
        let fill = self.maps.fill();
        let cap = self.maps.capacities();
        let mut bans_active: BTreeMap<String, u64> = ban_kind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), 0))
            .collect();
        for (_, r) in self.bans.shared() {
            *bans_active.entry(r.kind.name().to_owned()).or_default() += 1;
        }
        let store_health = self.store_health();
        let store_up = store_health.is_none();
        let not_ready = if self.attachments.len() < wanted_ifaces {
            Some(format!(
                "attached to {} of {wanted_ifaces} interfaces",
                self.attachments.len()
            ))
        } else if let Some(why) = self.restore_problem() {
            Some(why)
        } else if !store_up {
            Some(format!(
                "state store unavailable: {}",
                store_health.as_deref().unwrap_or("not open")
            ))
        } else {
            self.fleet_not_ready()
        };
        Snapshot {
            top_prefixes: self.top_prefixes(),
            counters: self
                .maps
                .counters()
                .map(|rows| {
                    rows.into_iter()
                        .map(|(v, r, c)| (v.name(), r.name(), c.packets, c.bytes))
                        .collect()
                })
                .unwrap_or_default(),
            maps: vec![
                (maps::BLOCK4, fill.block4, cap.block4),
                (maps::BLOCK6, fill.block6, cap.block6),
                (maps::BLOCK4_LPM, fill.block4_ranges, cap.block4_lpm),
                (maps::BLOCK6_LPM, fill.block6_ranges, cap.block6_lpm),
                ("TG_ALLOW4+6", fill.allow, cap.allow.saturating_mul(2)),
            ],
            bans_active,
            store_up,
            not_ready,
            samples: self.maps.sample_stats().ok(),
            since_start: self.counters.clone(),
            cluster: self.cluster_view(),
            restore: self.restore_view(),
        }
    }
}
