//! The policy engine the agent and `tollgate detect` share: per-request
//! detectors (`tollgate-detect`), then a per-client score that decays over
//! time. A request is banned when its own score reaches the detectors' ban
//! threshold or when it pushes its client's score over the scoring threshold,
//! so one unambiguous attack bans at once and weak signals must add up.
//!
//! Time comes from the caller (`now_ms`, Unix milliseconds): the agent passes
//! the sample's time, offline replay the file's, tests whatever they need.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tollgate_detect::{Action, DetectConfig, Engine, Violation};

/// Clients whose score is tracked at once; beyond it the coldest are dropped
/// (an attacker controls how many clients there seem to be).
pub const MAX_TRACKED: usize = 100_000;

/// The policy's `scoring:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringPolicy {
    /// A client whose decayed score reaches this is banned.
    pub ban_threshold: f64,
    /// Time for a client's score to halve.
    #[serde(with = "crate::limits::humantime_serde_secs")]
    pub half_life: Duration,
    /// Ban TTLs for the 1st, 2nd, ... ban of a client; the last repeats.
    #[serde(with = "crate::limits::humantime_serde_vec")]
    pub ban_ttls: Vec<Duration>,
    /// IPv6 clients are scored and banned by this prefix (an attacker holds
    /// the whole /64 and could otherwise step to the next address).
    pub ipv6_prefix: u8,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            ban_threshold: 10.0,
            half_life: Duration::from_secs(600),
            ban_ttls: vec![
                Duration::from_secs(600),
                Duration::from_secs(3600),
                Duration::from_secs(24 * 3600),
            ],
            ipv6_prefix: 64,
        }
    }
}

impl ScoringPolicy {
    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.ban_threshold.is_finite() && self.ban_threshold > 0.0) {
            return Err((
                "scoring.ban_threshold".into(),
                "must be a positive number".into(),
            ));
        }
        if self.half_life < Duration::from_secs(1) {
            return Err(("scoring.half_life".into(), "must be at least 1s".into()));
        }
        if !(16..=128).contains(&self.ipv6_prefix) {
            return Err((
                "scoring.ipv6_prefix".into(),
                format!("{} is outside 16..=128", self.ipv6_prefix),
            ));
        }
        Ok(())
    }

    /// The ban TTL for a client's `offence`-th ban (1-based).
    #[must_use]
    pub fn ttl(&self, offence: u32) -> Duration {
        crate::limits::ladder(&self.ban_ttls, offence, Duration::from_secs(600))
    }

    /// The unit a client is scored and banned as: the address, or its IPv6
    /// prefix.
    #[must_use]
    pub fn client_net(&self, ip: IpAddr) -> IpNet {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let len = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
    }
}

/// What the engine decided about one request or response.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Findings, weights applied.
    pub violations: Vec<Violation>,
    /// `allow`, `alert` or `ban`.
    pub action: Action,
    /// The client's decayed score after this message.
    pub client_score: f64,
    /// The client (address or IPv6 prefix) to ban, when `action` is `ban`.
    pub ban: Option<IpNet>,
}

/// Detectors plus per-client scores.
pub struct Pipeline {
    engine: Engine,
    scoring: ScoringPolicy,
    scores: HashMap<IpNet, (f64, u64)>,
}

impl Pipeline {
    /// A pipeline for a detector configuration and scoring policy.
    #[must_use]
    pub fn new(detect: DetectConfig, scoring: ScoringPolicy) -> Self {
        Self {
            engine: Engine::new(detect),
            scoring,
            scores: HashMap::new(),
        }
    }

    /// The pipeline a policy file describes.
    ///
    /// # Errors
    /// When a part of the policy cannot be compiled.
    pub fn from_policy(p: &crate::policy::Policy) -> anyhow::Result<Self> {
        Ok(Self::new(p.detectors.clone(), p.scoring.clone()))
    }

    /// Takes a new configuration (a policy reload) but keeps the clients'
    /// scores, so a reload is not an amnesty.
    pub fn reconfigure(&mut self, new: Pipeline) {
        let scores = std::mem::take(&mut self.scores);
        *self = new;
        self.scores = scores;
    }

    /// The scoring policy in force.
    #[must_use]
    pub fn scoring(&self) -> &ScoringPolicy {
        &self.scoring
    }

    /// Inspects one request from `client`. `client = None` scores the request
    /// on its own (offline replay without source addresses).
    pub fn on_request(
        &mut self,
        client: Option<IpAddr>,
        req: &tollgate_detect::Request,
        now_ms: u64,
    ) -> Decision {
        let violations = self.engine.inspect_request(req);
        let mut action = self.engine.verdict(&violations);
        let total: f64 = violations.iter().map(|v| f64::from(v.score)).sum();
        let Some(ip) = client else {
            return Decision {
                violations,
                action,
                client_score: total,
                ban: None,
            };
        };
        let net = self.scoring.client_net(ip);
        let client_score = if total > 0.0 {
            self.add(net, total, now_ms)
        } else {
            self.score_of(&net, now_ms)
        };
        if client_score >= self.scoring.ban_threshold {
            action = Action::Ban;
        }
        let ban = (action == Action::Ban).then_some(net);
        if ban.is_some() {
            // The ban is the consequence; a client comes back from it clean.
            self.scores.remove(&net);
        }
        Decision {
            violations,
            action,
            client_score,
            ban,
        }
    }

    /// The decayed score of a client now.
    #[must_use]
    pub fn score_of(&self, net: &IpNet, now_ms: u64) -> f64 {
        self.scores
            .get(net)
            .map_or(0.0, |&(s, t)| self.decay(s, t, now_ms))
    }

    fn decay(&self, score: f64, then_ms: u64, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(then_ms) as f64 / 1000.0;
        score * 0.5f64.powf(dt / self.scoring.half_life.as_secs_f64())
    }

    fn add(&mut self, net: IpNet, points: f64, now_ms: u64) -> f64 {
        if self.scores.len() >= MAX_TRACKED && !self.scores.contains_key(&net) {
            self.evict(now_ms);
        }
        let prev = self.score_of(&net, now_ms);
        let s = prev + points;
        self.scores.insert(net, (s, now_ms));
        s
    }

    /// Drops clients whose score decayed to almost nothing, then, if still
    /// full, the lower-scoring half.
    fn evict(&mut self, now_ms: u64) {
        let half_life = self.scoring.half_life.as_secs_f64();
        let decayed =
            |s: f64, t: u64| s * 0.5f64.powf(now_ms.saturating_sub(t) as f64 / 1000.0 / half_life);
        self.scores.retain(|_, &mut (s, t)| decayed(s, t) >= 0.5);
        if self.scores.len() >= MAX_TRACKED {
            let mut v: Vec<f64> = self.scores.values().map(|&(s, t)| decayed(s, t)).collect();
            let mid = v.len() / 2;
            v.select_nth_unstable_by(mid, f64::total_cmp);
            let cut = v[mid];
            self.scores.retain(|_, &mut (s, t)| decayed(s, t) > cut);
        }
    }

    /// Clients tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.scores.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> tollgate_detect::Request {
        match tollgate_detect::parse_request(raw.as_bytes()) {
            Ok(tollgate_detect::Parsed::Complete { msg, .. }) => msg,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_unambiguous_injection_bans() {
        let mut p = Pipeline::new(DetectConfig::default(), ScoringPolicy::default());
        let d = p.on_request(
            Some(ip("198.18.0.7")),
            &req("GET /items?id=1%27%20OR%20%271%27=%271 HTTP/1.1\r\nHost: a\r\n\r\n"),
            1_000,
        );
        assert_eq!(d.action, Action::Ban, "{d:?}");
        assert_eq!(d.ban, Some("198.18.0.7/32".parse().unwrap()));
        // The client starts clean after its ban.
        assert_eq!(p.score_of(&"198.18.0.7/32".parse().unwrap(), 1_000), 0.0);
    }

    #[test]
    fn clean_requests_do_nothing() {
        let mut p = Pipeline::new(DetectConfig::default(), ScoringPolicy::default());
        let d = p.on_request(
            Some(ip("198.18.0.7")),
            &req("GET /search?q=select+a+union+rep HTTP/1.1\r\nHost: a\r\n\r\n"),
            0,
        );
        assert_eq!(d.action, Action::Allow, "{d:?}");
        assert!(d.ban.is_none() && d.violations.is_empty());
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn weak_signals_add_up_and_decay() {
        let scoring = ScoringPolicy {
            ban_threshold: 10.0,
            half_life: Duration::from_secs(60),
            ..ScoringPolicy::default()
        };
        let mut p = Pipeline::new(DetectConfig::default(), scoring);
        let net: IpNet = "198.18.0.9/32".parse().unwrap();
        p.add(net, 6.0, 0);
        // One half-life later 3 are left: another 6 does not reach 10.
        assert!((p.score_of(&net, 60_000) - 3.0).abs() < 1e-9);
        p.add(net, 6.0, 60_000);
        assert!(p.score_of(&net, 60_000) < 10.0);
        // Right away, 6 + 6 would.
        let other: IpNet = "198.18.0.10/32".parse().unwrap();
        p.add(other, 6.0, 0);
        assert!(p.add(other, 6.0, 0) >= 10.0);
    }

    #[test]
    fn ipv6_clients_are_scored_by_prefix() {
        let s = ScoringPolicy::default();
        assert_eq!(
            s.client_net(ip("fd00:1:2:3:4:5:6:7")),
            "fd00:1:2:3::/64".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            s.client_net(ip("::ffff:198.18.0.1")),
            "198.18.0.1/32".parse::<IpNet>().unwrap()
        );
        let s48 = ScoringPolicy {
            ipv6_prefix: 48,
            ..s
        };
        assert_eq!(
            s48.client_net(ip("fd00:1:2:3::1")),
            "fd00:1:2::/48".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn ttls_escalate_and_the_last_repeats() {
        let s = ScoringPolicy::default();
        assert_eq!(s.ttl(1), Duration::from_secs(600));
        assert_eq!(s.ttl(2), Duration::from_secs(3600));
        assert_eq!(s.ttl(9), Duration::from_secs(86400));
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let mut p = Pipeline::new(DetectConfig::default(), ScoringPolicy::default());
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let a = std::net::Ipv4Addr::from(0xC612_0000 + i);
            p.add(IpNet::from(IpAddr::V4(a)), 1.0 + f64::from(i % 7), 0);
        }
        assert!(p.tracked() <= MAX_TRACKED);
    }
}
