//! CrowdSec decisions applied to the agent's state: like a feed import
//! (one store transaction, one batched map update), but every ban carries
//! its own expiry, and an incremental pull changes only what it names.

use std::collections::HashSet;

use ipnet::IpNet;
use tollgate_common::BanReason;

use super::{AgentState, Maps, Refused};
use crate::{
    clock,
    crowdsec::{ORIGIN, Wanted},
    net::{check_breadth, display, overlaps},
    store::{BanRecord, Decision},
};

/// How far an expiry may move before a ban is rewritten: the Local API
/// reports time left, so the same decision pulled twice differs by the time
/// between the pulls.
const EXPIRY_SLACK_SECS: u64 = 5;

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrowdsecReport {
    /// New bans.
    pub added: usize,
    /// Bans whose expiry or reason changed.
    pub updated: usize,
    /// Bans already as wanted.
    pub unchanged: usize,
    /// Bans lifted.
    pub removed: usize,
    /// Prefixes banned by another origin (left alone).
    pub kept_other_origin: usize,
    /// Decisions refused (allowlisted, trusted proxy, too broad).
    pub refused: usize,
    /// Up to 5 refusals, described.
    pub refusals: Vec<String>,
}

impl CrowdsecReport {
    /// True when the apply changed nothing.
    #[must_use]
    pub fn is_quiet(&self) -> bool {
        self.added + self.updated + self.removed + self.refused == 0
    }
}

impl<M: Maps> AgentState<M> {
    /// Applies CrowdSec bans: `put` are added or rewritten, `lift` are
    /// removed; with `authoritative` (a `startup=true` pull) every CrowdSec
    /// ban not in `put` is removed too. Bans of other origins are never
    /// touched; allowlisted prefixes and trusted proxies are refused.
    ///
    /// # Errors
    /// When the store or the kernel refuses the write (nothing changes then).
    pub fn apply_crowdsec(
        &mut self,
        put: &[Wanted],
        lift: &[IpNet],
        authoritative: bool,
    ) -> Result<CrowdsecReport, Refused> {
        let kind = BanReason::Crowdsec;
        let now = clock::unix_now();
        let mut report = CrowdsecReport::default();
        let refuse_one = |report: &mut CrowdsecReport, why: String| {
            report.refused += 1;
            if report.refusals.len() < 5 {
                report.refusals.push(why);
            }
        };
        // Another host's CrowdSec bans are the fleet's: this bouncer's pulls
        // neither rewrite nor lift them.
        let ours = |d: &Decision| d.origin == ORIGIN && d.kind == kind && d.host.is_none();
        let mut wanted = HashSet::with_capacity(put.len());
        let mut records = Vec::new();
        let mut previous = Vec::new();
        for w in put {
            if let Err(e) = check_breadth(w.net, false) {
                refuse_one(&mut report, e.to_string());
                continue;
            }
            if let Some(a) = self.allows.keys().find(|a| overlaps(a, &w.net)) {
                refuse_one(
                    &mut report,
                    format!(
                        "{} overlaps allowlist entry {}",
                        display(&w.net),
                        display(a)
                    ),
                );
                continue;
            }
            if let Some(p) = self.trusted_overlap(&w.net) {
                refuse_one(
                    &mut report,
                    format!("{} covers trusted proxy {}", display(&w.net), display(&p)),
                );
                continue;
            }
            if w.expires_at <= now || !wanted.insert(w.net) {
                continue;
            }
            let held = self.bans.get(&w.net);
            let held = held.as_ref();
            // Other deciders' bans on the prefix stay beside CrowdSec's.
            if held.is_some_and(|r| r.any_decision(|d| !ours(d))) {
                report.kept_other_origin += 1;
            }
            let mine = BanRecord {
                cidr: w.net,
                kind,
                reason: w.reason.clone(),
                origin: ORIGIN.into(),
                created_at: now,
                created_at_ms: None,
                expires_at: Some(w.expires_at),
                offences: held.map_or(1, |r| r.offences),
                host: None,
                also: Vec::new(),
            };
            match held.and_then(|r| r.decisions().find(|d| ours(d)).map(|d| (r, d))) {
                Some((_, d))
                    if d.reason == w.reason
                        && d.expires_at
                            .is_some_and(|t| t.abs_diff(w.expires_at) <= EXPIRY_SLACK_SECS) =>
                {
                    report.unchanged += 1;
                }
                Some((r, d)) => {
                    report.updated += 1;
                    previous.push(r.clone());
                    records.push(
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
                    records.push(mine.over(held));
                }
            }
        }
        let lift: HashSet<IpNet> = lift.iter().copied().collect();
        let (trimmed, stale) = self.lift_where(
            |r| !wanted.contains(&r.cidr) && (authoritative || lift.contains(&r.cidr)),
            ours,
        );
        report.removed = stale.len() + trimmed.len();
        previous.extend(trimmed.iter().filter_map(|r| self.bans.get(&r.cidr)));
        records.extend(trimmed);
        if records.is_empty() && stale.is_empty() {
            return Ok(report);
        }
        self.write_batch(records, &previous, &stale, "CrowdSec decisions")?;
        self.counters.ban_issued(kind.name(), report.added as u64);
        Ok(report)
    }
}
