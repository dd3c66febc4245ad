//! From findings to consequences: every violation becomes a security event,
//! and a ban decision becomes a kernel blocklist entry (kind `policy`, TTL by
//! the client's offence count) unless the agent is in monitor mode or the
//! client is allowlisted — those are reported as not enforced.
//!
//! Detector bans go to the kernel first and to the store second: the point
//! of the ban is the next packet, and a ban the store missed is adopted from
//! the kernel maps by the reconcile loop.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;
use tollgate_common::{BanReason, Mode};
use tollgate_detect::{Action, Location, Violation};
use tracing::{info, warn};

use super::{maps::Maps, state::AgentState};
use crate::{
    clock,
    engine::{Decision, ScoringPolicy},
    events::{EventKind, EventLog, SecurityEvent, now_rfc3339},
    store::BanRecord,
};

/// What the pipeline concluded about one sampled message.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The client (real client when proxied).
    pub client: IpAddr,
    /// The trusted proxy it came through.
    pub proxy: Option<IpAddr>,
    /// The proxy's connection it came on (armed when the client is banned).
    pub flow: Option<tollgate_common::FlowKey>,
    /// API port.
    pub port: u16,
    /// `METHOD /template`.
    pub route: String,
    /// The engine's decision.
    pub decision: Decision,
    /// Why the request could not be tied to its client (spoofable): such
    /// findings are reported and never ban.
    pub unverified: Option<&'static str>,
    /// When the kernel completed the handshake of the connection the
    /// request came on (boot-clock ns), when known.
    pub conn_since_ns: Option<u64>,
}

/// How a ban decision ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanOutcome {
    /// In the kernel now, with this TTL.
    Banned { ttl_secs: u64, offence: u32 },
    /// Not enforced, and why.
    NotEnforced(String),
    /// Already banned: nothing to do.
    AlreadyBanned,
}

/// `location` as events print it.
#[must_use]
pub fn location_name(l: &Location) -> String {
    match l {
        Location::Header(h) => format!("header:{}", h.to_ascii_lowercase()),
        Location::Protobuf(f) => format!("protobuf:{f}"),
        Location::Graphql(at) => format!("graphql:{at}"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "request".into()),
    }
}

fn violation_event(f: &Finding, v: &Violation, enforced: bool) -> SecurityEvent {
    SecurityEvent {
        time: now_rfc3339(),
        kind: EventKind::Violation,
        client: f.client,
        proxy: f.proxy,
        port: Some(f.port),
        rule: v.rule.into(),
        category: v.category,
        score: f64::from(v.score),
        location: Some(location_name(&v.location)),
        evidence: v.evidence.clone(),
        route: f.route.clone(),
        // The engine's decision for the request, as `tollgate detect` says
        // it: findings below the alert threshold are recorded as `allow`.
        action: f.decision.action,
        enforced,
        ban: None,
        ttl_secs: None,
        note: f.unverified.map(|why| format!("unverified: {why}")),
        verified: f.unverified.is_none(),
    }
}

/// Applies a batch of findings: events for all, bans where decided.
pub fn apply<M: Maps>(
    findings: &[Finding],
    state: &Arc<Mutex<AgentState<M>>>,
    log: &Mutex<EventLog>,
    scoring: &ScoringPolicy,
) {
    for f in findings {
        // Belt and braces: the pipeline never decides a ban on an unverified
        // request, and none is carried out if one got here.
        let ban = f.decision.ban.filter(|_| f.unverified.is_none());
        let outcome = ban.map(|net| match state.lock() {
            Ok(mut s) => s.policy_ban(net, f, scoring),
            Err(_) => BanOutcome::NotEnforced("agent state lock poisoned".into()),
        });
        let enforced = matches!(
            outcome,
            Some(BanOutcome::Banned { .. } | BanOutcome::AlreadyBanned)
        );
        if let Ok(mut s) = state.lock() {
            for v in &f.decision.violations {
                s.counters.violation(v.rule);
            }
        }
        let Ok(mut log) = log.lock() else { return };
        for v in &f.decision.violations {
            log.write(&violation_event(f, v, enforced));
        }
        let (Some(net), Some(outcome)) = (ban, outcome) else {
            continue;
        };
        if outcome == BanOutcome::AlreadyBanned {
            continue;
        }
        let top = f.decision.violations.iter().max_by_key(|v| v.score);
        let mut ev = SecurityEvent {
            kind: EventKind::Ban,
            score: f.decision.client_score,
            ban: Some(net.to_string()),
            action: Action::Ban,
            ..top.map_or_else(
                || violation_event(f, &placeholder(), false),
                |v| violation_event(f, v, false),
            )
        };
        match outcome {
            BanOutcome::Banned { ttl_secs, offence } => {
                // Through a proxy: cut the connection it came on too, when
                // that connection is the client's alone.
                if let Some(key) = f.flow
                    && let Ok(mut s) = state.lock()
                    && let Err(e) = s.maps.arm_proxy_flow(key, f.client)
                {
                    warn!("failed to drop the banned client's proxied connection: {e:#}");
                } else if let (None, Some(proxy)) = (f.flow, f.proxy) {
                    info!(
                        client = %f.client, %proxy,
                        "the banned client's connection from the proxy carries other clients too: it is not cut (see docs/proxies.md)"
                    );
                }
                ev.enforced = true;
                ev.ttl_secs = Some(ttl_secs);
                ev.note = Some(format!("offence {offence}"));
            }
            BanOutcome::NotEnforced(why) => ev.note = Some(why),
            BanOutcome::AlreadyBanned => {}
        }
        log.write(&ev);
    }
}

/// Connections from trusted proxies whose real client is banned: armed, so
/// the datapath drops the rest of them.
pub fn arm_proxied<M: Maps>(
    proxied: &[(tollgate_common::FlowKey, IpAddr)],
    state: &Arc<Mutex<AgentState<M>>>,
) {
    if proxied.is_empty() {
        return;
    }
    let Ok(mut s) = state.lock() else { return };
    for (key, real) in proxied {
        if s.is_banned(*real)
            && let Err(e) = s.maps.arm_proxy_flow(*key, *real)
        {
            warn!(client = %real, "failed to drop a banned client's proxied connection: {e:#}");
        }
    }
}

fn placeholder() -> Violation {
    Violation {
        rule: "score.threshold",
        category: tollgate_detect::Category::Protocol,
        score: 0,
        location: Location::Request,
        evidence: String::new(),
    }
}

impl<M: Maps> AgentState<M> {
    /// Bans a client the policy engine convicted.
    pub fn policy_ban(&mut self, net: IpNet, f: &Finding, scoring: &ScoringPolicy) -> BanOutcome {
        if self.maps.mode() == Mode::Monitor {
            return BanOutcome::NotEnforced("monitor mode".into());
        }
        if self.allow_overlap(&net).is_some() {
            return BanOutcome::NotEnforced("allowlisted".into());
        }
        if self.trusted_overlap(&net).is_some() {
            // The proxy's clients are banned one by one, never the proxy.
            return BanOutcome::NotEnforced("trusted proxy".into());
        }
        if self.ban(&net).is_some() {
            return BanOutcome::AlreadyBanned;
        }
        // A ban drops a client's packets, not its connections: once lifted,
        // what it sent meanwhile arrives as retransmissions. Requests on a
        // connection from before the lift are judged and reported, but they
        // are the past, not a new offence.
        if let Some(since) = f.conn_since_ns
            && let Some(lift) = self.lifted_after(f.client, since)
        {
            let ago = clock::boot_ns().saturating_sub(lift) / 1_000_000_000;
            return BanOutcome::NotEnforced(format!(
                "the connection predates the lift of a ban {ago}s ago (held-back bytes are not a new offence)"
            ));
        }
        let now_ms = clock::unix_now_ms();
        let now = now_ms / 1000;
        let mut hist = self.rate.history.get(&net).cloned().unwrap_or_default();
        hist.count = hist.count.saturating_add(1);
        hist.last = now;
        let ttl = scoring.ttl(hist.count).as_secs();
        let rule = f
            .decision
            .violations
            .iter()
            .max_by_key(|v| v.score)
            .map_or("score.threshold", |v| v.rule);
        let rec = BanRecord {
            cidr: net,
            kind: BanReason::Policy,
            reason: rule.into(),
            origin: format!("agent ({} on port {})", f.route, f.port),
            created_at: now,
            created_at_ms: Some(now_ms),
            expires_at: Some(now + ttl),
            offences: hist.count,
            host: None,
            also: Vec::new(),
        };
        if let Err(e) = self.put_ban_kernel_first(rec) {
            warn!(client = %net, "failed to ban: {e}");
            return BanOutcome::NotEnforced(format!("ban failed: {e}"));
        }
        if let Some(s) = self.store.as_mut()
            && let Err(e) = s.put_offence(&net, &hist)
        {
            warn!("failed to record offence history: {e}");
        }
        let offence = hist.count;
        self.rate.history.insert(net, hist);
        info!(client = %net, rule, offence, ttl_secs = ttl, "policy violation: client banned");
        BanOutcome::Banned {
            ttl_secs: ttl,
            offence,
        }
    }
}
