//! The agent's side of rate limiting: the limits in force (policy file,
//! overridden by run-time changes that persist in the store), escalation of
//! persistent offenders to the blocklist, and the `top` view.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::json;
use tollgate_common::{BanReason, BucketKey, RateEvent, Reason};
use tracing::{info, warn};

use super::{maps::Maps, state::AgentState};
use crate::{
    clock,
    limits::{Escalation, LimitSpec, RateLimitPolicy},
    proto::{LimitsView, RateStateView, Refused, TopView},
    store::{BanRecord, LimitsRecord, OffenceRecord},
};

/// A gap longer than this between two events of one source ends its run
/// of exceeding (the datapath reports an offender about once a second).
const CONTINUITY_NS: u64 = 3_000_000_000;

/// Passed and dropped packets per source, at one moment.
type Counts = HashMap<BucketKey, (u64, u64)>;

/// Rate-limit state owned by the agent.
#[derive(Default)]
pub struct RateState {
    /// Limits in force.
    pub limits: LimitsRecord,
    /// When offenders get banned.
    pub escalation: Escalation,
    /// Sources currently exceeding: (first, last) event time, boot-clock ns.
    offenders: HashMap<BucketKey, (u64, u64)>,
    /// Offence history per client.
    pub history: HashMap<IpNet, OffenceRecord>,
    /// Previous `top` snapshot.
    last_top: Option<(Instant, Counts)>,
    /// Rate-limit bans issued by this agent run.
    pub bans_issued: u64,
    /// Offenders not banned for want of a handshake (this run).
    pub unverified_offenders: u64,
}

impl RateState {
    /// The limits from the policy file.
    #[must_use]
    pub fn from_policy(p: &RateLimitPolicy) -> Self {
        Self {
            limits: LimitsRecord {
                ipv6_prefix: p.ipv6_prefix.unwrap_or(64),
                default: p.default,
                ports: p.ports.clone(),
            },
            escalation: p.escalation.clone(),
            ..Self::default()
        }
    }
}

/// The client a bucket key stands for: an IPv4 host or an IPv6 prefix.
#[must_use]
pub fn client_of(key: &BucketKey, v6_prefix: u8) -> IpNet {
    let a = key.addr;
    if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff {
        IpNet::V4(Ipv4Net::from(Ipv4Addr::new(a[12], a[13], a[14], a[15])))
    } else {
        let net = Ipv6Net::new(Ipv6Addr::from(a), v6_prefix.min(128))
            .map_or_else(|_| Ipv6Net::from(Ipv6Addr::from(a)), |n| n.trunc());
        IpNet::V6(net)
    }
}

impl<M: Maps> AgentState<M> {
    /// Writes the limits in force into the datapath.
    ///
    /// # Errors
    /// When a map write fails.
    pub fn apply_limits(&mut self) -> Result<(), Refused> {
        let l = &self.rate.limits;
        let table: BTreeMap<u16, _> = l.ports.iter().map(|(p, s)| (*p, s.to_cfg())).collect();
        self.maps
            .set_limits(l.default.map(|s| s.to_cfg()), &table, l.ipv6_prefix)
            .map_err(|e| Refused::new(format!("failed to write limits: {e:#}")))
    }

    pub(super) fn limits_set(
        &mut self,
        port: Option<u16>,
        spec: LimitSpec,
        merge: bool,
    ) -> Result<serde_json::Value, Refused> {
        // Merging keeps what the operator did not name (`limits set --pps`
        // must not drop the port's --max-conns).
        let spec = match (merge, port) {
            (false, _) => spec,
            (true, Some(p)) => spec.or(self.rate.limits.ports.get(&p)),
            (true, None) => spec.or(self.rate.limits.default.as_ref()),
        };
        spec.validate().map_err(|e| Refused::new(e.to_string()))?;
        if port == Some(0) {
            return Err(Refused::new(
                "port must be 1-65535 (omit --port for the default)",
            ));
        }
        let before = self.rate.limits.clone();
        match port {
            Some(p) => {
                self.rate.limits.ports.insert(p, spec);
            }
            None => self.rate.limits.default = Some(spec),
        }
        self.commit_limits(before)?;
        info!(port = ?port, ?spec, "limits set");
        Ok(self.limits_view())
    }

    pub(super) fn limits_clear(&mut self, port: Option<u16>) -> Result<serde_json::Value, Refused> {
        let before = self.rate.limits.clone();
        match port {
            Some(p) => {
                if self.rate.limits.ports.remove(&p).is_none() {
                    return Err(Refused::new(format!("port {p} has no limits of its own")));
                }
            }
            None => {
                if self.rate.limits.default.take().is_none() {
                    return Err(Refused::new("no default limits are set"));
                }
            }
        }
        self.commit_limits(before)?;
        info!(port = ?port, "limits cleared");
        Ok(self.limits_view())
    }

    /// Persists then applies; restores `before` if either fails.
    fn commit_limits(&mut self, before: LimitsRecord) -> Result<(), Refused> {
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.put_limits(&self.rate.limits)
        {
            self.rate.limits = before;
            return Err(Refused::new(format!(
                "failed to record the limits durably: {e}"
            )));
        }
        if let Err(e) = self.apply_limits() {
            self.rate.limits = before;
            if let Some(s) = self.store.as_mut() {
                let _ = s.put_limits(&self.rate.limits);
            }
            let _ = self.apply_limits();
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn limits_view(&self) -> serde_json::Value {
        let l = &self.rate.limits;
        json!(LimitsView {
            ipv6_prefix: l.ipv6_prefix,
            default: l.default,
            ports: l.ports.clone(),
            ban_after_secs: self.rate.escalation.after.as_secs(),
            ban_ttls_secs: self
                .rate
                .escalation
                .ttls
                .iter()
                .map(|d| d.as_secs())
                .collect(),
        })
    }

    /// The rate-limit state of `ip` in every limit class (`block test`).
    pub(super) fn rate_state_of(&self, ip: std::net::IpAddr) -> Vec<RateStateView> {
        let prefix = self.rate.limits.ipv6_prefix;
        let mut rows: Vec<RateStateView> = self
            .maps
            .buckets()
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| client_of(k, prefix).contains(&ip))
            .map(|(k, b)| RateStateView {
                client: crate::net::display(&client_of(k, prefix)),
                port: u16::try_from(k.class).ok().filter(|p| *p != 0),
                class: crate::proto::limit_class(k.class),
                passed: b.passed,
                dropped: b.dropped,
                exceeding: self.rate.offenders.contains_key(k),
            })
            .collect();
        rows.sort_by_key(|r| r.port);
        rows
    }

    /// Bans the rate limiter issued to the client `ip` belongs to.
    pub(super) fn offences_of(&self, ip: std::net::IpAddr) -> u32 {
        self.rate
            .history
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .map(|(_, r)| r.count)
            .max()
            .unwrap_or(0)
    }

    pub(super) fn top(&mut self, n: usize) -> Result<serde_json::Value, Refused> {
        let buckets = self
            .maps
            .buckets()
            .map_err(|e| Refused::new(format!("failed to read rate state: {e:#}")))?;
        let conns: HashMap<BucketKey, u64> = self
            .maps
            .conns()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, c)| *c < (1 << 63))
            .collect();
        let now = Instant::now();
        let prev = self
            .rate
            .last_top
            .take()
            .filter(|(t, _)| now.duration_since(*t).as_secs() < 30);
        let dt = prev
            .as_ref()
            .map(|(t, _)| now.duration_since(*t).as_secs_f64());
        let prefix = self.rate.limits.ipv6_prefix;
        let mut rows: Vec<TopView> = buckets
            .iter()
            .map(|(k, b)| {
                let rate = |cur: u64, old: Option<u64>| match (dt, old) {
                    (Some(dt), Some(o)) if dt > 0.0 => Some(cur.saturating_sub(o) as f64 / dt),
                    (Some(dt), None) if dt > 0.0 => Some(cur as f64 / dt),
                    _ => None,
                };
                let old = prev.as_ref().and_then(|(_, m)| m.get(k));
                TopView {
                    client: crate::net::display(&client_of(k, prefix)),
                    port: u16::try_from(k.class).ok().filter(|p| *p != 0),
                    class: crate::proto::limit_class(k.class),
                    passed: b.passed,
                    dropped: b.dropped,
                    pass_rate: rate(b.passed, old.map(|o| o.0)),
                    drop_rate: rate(b.dropped, old.map(|o| o.1)),
                    conns: conns.get(k).copied().unwrap_or(0),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            let key = |r: &TopView| {
                r.pass_rate.unwrap_or(0.0)
                    + r.drop_rate.unwrap_or(0.0)
                    + if dt.is_none() {
                        (r.passed + r.dropped) as f64
                    } else {
                        0.0
                    }
            };
            key(b).total_cmp(&key(a))
        });
        rows.truncate(n.clamp(1, 10_000));
        self.rate.last_top = Some((
            now,
            buckets
                .iter()
                .map(|(k, b)| (*k, (b.passed, b.dropped)))
                .collect(),
        ));
        Ok(json!(rows))
    }

    /// One offender report from the datapath: bans a source that has kept
    /// exceeding its limits for the escalation period.
    pub fn on_rate_event(&mut self, ev: &RateEvent) {
        let entry = self
            .rate
            .offenders
            .entry(ev.key)
            .or_insert((ev.ts_ns, ev.ts_ns));
        if ev.ts_ns.saturating_sub(entry.1) > CONTINUITY_NS {
            entry.0 = ev.ts_ns;
        }
        entry.1 = ev.ts_ns;
        let exceeding_for = ev.ts_ns.saturating_sub(entry.0);
        let after = u64::try_from(self.rate.escalation.after.as_nanos()).unwrap_or(u64::MAX);
        if exceeding_for < after {
            return;
        }
        self.rate.offenders.remove(&ev.key);
        let cidr = client_of(&ev.key, self.rate.limits.ipv6_prefix);
        if self.rate.escalation.require_handshake {
            let within =
                u64::try_from(self.rate.escalation.handshake_within.as_nanos()).unwrap_or(u64::MAX);
            let verified = self
                .maps
                .handshake_ns(&ev.key.addr)
                .is_some_and(|t| ev.ts_ns.saturating_sub(t) <= within);
            if !verified {
                // The source may be forged: limiting drops its packets, but
                // a ban would outlive the flood and hit whoever owns it.
                self.rate.unverified_offenders += 1;
                if self.rate.unverified_offenders.is_power_of_two() {
                    info!(
                        client = %cidr,
                        seen = self.rate.unverified_offenders,
                        "rate-limit offender not banned: no TCP handshake from it (its address may be forged)"
                    );
                }
                return;
            }
        }
        if self.ban(&cidr).is_some()
            || self.allow_overlap(&cidr).is_some()
            || self.trusted_overlap(&cidr).is_some()
        {
            return;
        }
        let now_ms = clock::unix_now_ms();
        let now = now_ms / 1000;
        let mut hist = self.rate.history.get(&cidr).cloned().unwrap_or_default();
        hist.count = hist.count.saturating_add(1);
        hist.last = now;
        let ttl = self.rate.escalation.ttl(hist.count);
        let reason = Reason::ALL
            .iter()
            .find(|r| **r as u32 == ev.reason)
            .map_or("rate-limited", |r| r.name());
        let rec = BanRecord {
            cidr,
            kind: BanReason::RateLimit,
            reason: BanReason::RateLimit.name().into(),
            origin: format!("agent ({reason} for {}s)", exceeding_for / 1_000_000_000),
            created_at: now,
            created_at_ms: Some(now_ms),
            expires_at: Some(now + ttl.as_secs()),
            offences: hist.count,
            host: None,
            also: Vec::new(),
        };
        match self.put_ban(rec) {
            Ok(()) => {
                self.rate.bans_issued += 1;
                info!(
                    client = %cidr,
                    offence = hist.count,
                    ttl = %humantime::format_duration(ttl),
                    "persistent rate-limit offender banned"
                );
                if let Some(s) = self.store.as_mut()
                    && let Err(e) = s.put_offence(&cidr, &hist)
                {
                    warn!("failed to record offence history: {e}");
                }
                self.rate.history.insert(cidr, hist);
            }
            Err(e) => warn!(client = %cidr, "failed to ban a rate-limit offender: {e}"),
        }
    }

    /// Forgets offenders that went quiet (bounded memory).
    pub fn prune_offenders(&mut self) {
        let now = clock::boot_ns();
        self.rate
            .offenders
            .retain(|_, (_, last)| now.saturating_sub(*last) < 10 * CONTINUITY_NS);
    }
}
