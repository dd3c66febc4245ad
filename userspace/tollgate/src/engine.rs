//! The policy engine the agent and `tollgate detect` share: per-request
//! detectors (`tollgate-detect`), then a per-client score that decays over
//! time. A request is banned when its own score reaches the detectors' ban
//! threshold or when it pushes its client's score over the scoring threshold,
//! so one unambiguous attack bans at once and weak signals must add up.
//!
//! Time comes from the caller (`now_ms`, Unix milliseconds): the agent passes
//! the sample's time, offline replay the file's, tests whatever they need.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use tollgate_detect::{
    Action, ApiGuard, ApiPolicy, DetectConfig, Engine, Violation, is_alert_only,
};

pub use crate::policy::ScoringPolicy;

/// Stands for "one request on its own" in the API guard's per-client state
/// when replaying without source addresses.
const NO_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Clients whose score is tracked at once; beyond it the coldest are dropped
/// (an attacker controls how many clients there seem to be).
pub const MAX_TRACKED: usize = 100_000;

/// What the engine decided about one request or response.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Findings, weights applied.
    pub violations: Vec<Violation>,
    /// `allow`, `alert` or `ban`.
    pub action: Action,
    /// The client's decayed score after this message, rounded to hundredths: the
    /// score compared with the ban threshold.
    pub client_score: f64,
    /// The client (address or IPv6 prefix) to ban, when `action` is `ban`.
    pub ban: Option<IpNet>,
}

/// Detectors (per request), the API guard (per client: credentials,
/// authorization, enumeration, limits, responses) and per-client scores.
pub struct Pipeline {
    engine: Engine,
    guard: ApiGuard,
    scoring: ScoringPolicy,
    scores: HashMap<IpNet, (f64, u64)>,
    /// The GraphQL schema's root fields, for the inventory.
    schema: Option<tollgate_detect::graphql::Schema>,
    /// The gRPC descriptor set, for the inventory and field names.
    proto: Option<std::sync::Arc<tollgate_detect::ProtoSchema>>,
    /// Routes of the last GraphQL request judged, keyed by a hash of the
    /// request, so that the route and the inventory do not parse it again.
    last_graphql: Option<(u64, Vec<String>)>,
}

impl Pipeline {
    /// A pipeline for detector, API and scoring policies; `openapi` is the
    /// OpenAPI document's text, if one is configured.
    ///
    /// # Errors
    /// When the API policy or the OpenAPI document is invalid.
    pub fn new(
        detect: DetectConfig,
        scoring: ScoringPolicy,
        api: &ApiPolicy,
        openapi: Option<&str>,
    ) -> Result<Self, tollgate_detect::ApiPolicyError> {
        Ok(Self {
            engine: Engine::new(detect),
            guard: ApiGuard::new(api, openapi)?,
            scoring,
            scores: HashMap::new(),
            schema: None,
            proto: None,
            last_graphql: None,
        })
    }

    /// Names gRPC methods and fields after a descriptor set.
    #[must_use]
    pub fn with_protobuf(
        mut self,
        schema: Option<std::sync::Arc<tollgate_detect::ProtoSchema>>,
    ) -> Self {
        self.proto = schema;
        self.engine = std::mem::replace(&mut self.engine, Engine::new(DetectConfig::default()))
            .with_protobuf(self.proto.clone());
        self
    }

    /// The gRPC descriptor set configured, if any.
    #[must_use]
    pub fn proto_schema(&self) -> Option<&tollgate_detect::ProtoSchema> {
        self.proto.as_deref()
    }

    /// Recognises GraphQL requests (`graphql:` policy section); `schema` is
    /// the SDL text, if one is configured.
    ///
    /// # Errors
    /// When the schema does not parse.
    pub fn with_graphql(
        mut self,
        cfg: tollgate_detect::graphql::GraphqlConfig,
        schema: Option<&str>,
    ) -> anyhow::Result<Self> {
        self.schema = schema
            .map(tollgate_detect::graphql::Schema::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("graphql.schema: {e}"))?;
        self.engine = std::mem::replace(&mut self.engine, Engine::new(DetectConfig::default()))
            .with_graphql(cfg);
        Ok(self)
    }

    /// The operations (`mutation login`) of the request last judged by
    /// [`Pipeline::on_request`], when it is `req` and GraphQL.
    #[must_use]
    pub fn graphql_operations(&self, req: &tollgate_detect::Request) -> Vec<String> {
        match &self.last_graphql {
            Some((k, routes)) if *k == request_key(req) => routes
                .iter()
                .filter_map(|r| r.split_once(' ').map(|(_, op)| op.to_owned()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the request goes to a path served by GraphQL.
    #[must_use]
    pub fn is_graphql_path(&self, req: &tollgate_detect::Request) -> bool {
        self.engine.is_graphql_path(req)
    }

    /// The GraphQL schema configured, if any.
    #[must_use]
    pub fn graphql_schema(&self) -> Option<&tollgate_detect::graphql::Schema> {
        self.schema.as_ref()
    }

    /// The pipeline a policy file describes (reads its OpenAPI document).
    ///
    /// # Errors
    /// When a part of the policy cannot be compiled or the document read.
    pub fn from_policy(p: &crate::policy::Policy) -> anyhow::Result<Self> {
        let doc = match &p.openapi {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("openapi: cannot read {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let schema = match &p.graphql.schema {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("graphql.schema: cannot read {}: {e}", path.display())
            })?),
            None => None,
        };
        let proto = match (&p.grpc.schema, &p.grpc.descriptor_set) {
            (Some(schema), _) => Some(schema.clone()),
            (None, Some(path)) => Some(std::sync::Arc::new(
                crate::grpc::read_descriptor_set(path)
                    .map_err(|e| anyhow::anyhow!("grpc.descriptor_set: {e}"))?,
            )),
            (None, None) => None,
        };
        Self::new(
            p.detectors.clone(),
            p.scoring.clone(),
            &p.api_policy(),
            doc.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_graphql(p.graphql.clone(), schema.as_deref())
        .map(|pl| pl.with_protobuf(proto))
    }

    /// The endpoints a request is for, as `(method, template)`: its GraphQL
    /// operations (`POST`, `/graphql mutation login`) or its path template.
    #[must_use]
    pub fn endpoints(&self, req: &tollgate_detect::Request) -> Vec<(String, String)> {
        let method = req.method.to_ascii_uppercase();
        let routes = match &self.last_graphql {
            Some((k, r)) if *k == request_key(req) => r.clone(),
            _ => graphql_routes(self.engine.graphql(req).as_ref(), req),
        };
        if routes.is_empty() {
            return vec![(method, tollgate_detect::path_template(&req.path))];
        }
        routes.into_iter().map(|r| (method.clone(), r)).collect()
    }

    /// `METHOD /template` of a request, for events (`-` for the method of
    /// unparseable bytes that had none).
    #[must_use]
    pub fn route_of(&self, req: &tollgate_detect::Request) -> String {
        let route = match &self.last_graphql {
            Some((k, r)) if *k == request_key(req) && !r.is_empty() => {
                format!("{} {}", req.method.to_ascii_uppercase(), r[0])
            }
            _ => self
                .guard
                .route_of_with(req, self.engine.graphql(req).as_ref()),
        };
        if req.method.is_empty() {
            format!("-{route}")
        } else {
            route
        }
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
        let gql = self.engine.graphql(req);
        self.last_graphql = gql
            .as_ref()
            .map(|a| (request_key(req), graphql_routes(Some(a), req)));
        let mut violations = self.engine.inspect_with(req, gql.as_ref());
        // What the server leaks in answer to a flagged request scores more.
        if let Some(ip) = client
            && violations.iter().any(|v| v.score > 0)
        {
            self.guard.note_injection(ip, now_ms);
        }
        // A stand-in for bytes that are not HTTP (`protocol.unparseable`) has no
        // route, credentials or parameters for the API guard to judge: it would
        // only count it against limits and report missing credentials.
        if req.malformed.is_none() {
            violations.extend(self.guard.inspect_request_with(
                client.unwrap_or(NO_CLIENT),
                req,
                gql.as_ref(),
                now_ms,
            ));
            if client.is_none() {
                self.guard.forget(NO_CLIENT);
            }
        }
        self.decide(client, violations, now_ms)
    }

    /// Inspects a request judged before as a stand-in, when its stream
    /// stalled, now that the rest of it came. The detectors see the whole
    /// request; what the stand-in found (`before`: rule and location) is not
    /// scored again, and the API guard, which counted the request then, does
    /// not count it twice.
    pub fn on_request_resumed(
        &mut self,
        client: Option<IpAddr>,
        req: &tollgate_detect::Request,
        before: &[(&'static str, tollgate_detect::Location, u32)],
        now_ms: u64,
    ) -> Decision {
        let gql = self.engine.graphql(req);
        let mut violations = self.engine.inspect_with(req, gql.as_ref());
        // What the stand-in scored per rule and place is taken off once: the
        // same finding is not counted again, a stronger one (a weak payload
        // before the pause, a strong one after it) counts its difference.
        let mut had: HashMap<(&'static str, tollgate_detect::Location), u32> = HashMap::new();
        for (r, l, sc) in before {
            *had.entry((*r, l.clone())).or_default() += sc;
        }
        violations.retain_mut(|v| {
            let Some(h) = had.get_mut(&(v.rule, v.location.clone())) else {
                return true;
            };
            if v.score <= *h {
                *h -= v.score;
                return false;
            }
            v.score -= std::mem::take(h);
            true
        });
        if let Some(ip) = client
            && violations.iter().any(|v| v.score > 0)
        {
            self.guard.note_injection(ip, now_ms);
        }
        self.decide(client, violations, now_ms)
    }

    /// Inspects one response to `client`; `req` is the request it answers
    /// when known (at least method and path). Exposures in it alert and never
    /// ban (the server leaked, not the client); a burst of 401/403 to one
    /// client (credential stuffing) or of 404/405 on new paths (forced
    /// browsing) is the client's doing and scores.
    pub fn on_response(
        &mut self,
        client: IpAddr,
        req: Option<&tollgate_detect::Request>,
        resp: &tollgate_detect::Response,
        now_ms: u64,
    ) -> Decision {
        let violations = self.guard.inspect_response(client, req, resp, now_ms);
        self.decide(Some(client), violations, now_ms)
    }

    fn decide(
        &mut self,
        client: Option<IpAddr>,
        violations: Vec<Violation>,
        now_ms: u64,
    ) -> Decision {
        // Alert-only findings are reported but neither ban nor score; so is a
        // request that did not parse (`protocol.unparseable`): only what its
        // bytes trigger besides may ban, and a client sending broken requests
        // (a misdirected HTTP/2 or binary client) is reported, not banned.
        // A finding that scores nothing (GraphQL introspection under `alert`)
        // is reported the same way.
        let scored: Vec<Violation> = violations
            .iter()
            .filter(|v| {
                !is_alert_only(v.category) && v.rule != tollgate_detect::UNPARSEABLE && v.score > 0
            })
            .cloned()
            .collect();
        let mut action = self.engine.verdict(&scored);
        if action == Action::Allow && violations.len() > scored.len() {
            action = Action::Alert;
        }
        let total: f64 = scored.iter().map(|v| f64::from(v.score)).sum();
        let Some(ip) = client else {
            return Decision {
                violations,
                action,
                client_score: total,
                ban: None,
            };
        };
        let net = self.scoring.client_net(ip);
        let decayed = if total > 0.0 {
            self.add(net, total, now_ms)
        } else {
            self.score_of(&net, now_ms)
        };
        // Scores are whole points; rounding to hundredths keeps two findings a few
        // milliseconds apart from missing the threshold by a hair of decay. The
        // rounded score is both the one compared and the one reported, so a ban
        // never shows a score under the threshold.
        let client_score = round_centi(decayed);
        if client_score >= self.scoring.ban_threshold {
            action = Action::Ban;
        }
        let ban = (action == Action::Ban).then_some(net);
        if ban.is_some() {
            // The ban is the consequence; a client comes back from it clean.
            self.scores.remove(&net);
            self.guard.forget(ip);
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

    /// Clients the API guard keeps state for.
    #[must_use]
    pub fn guard_clients(&self) -> usize {
        self.guard.tracked_clients()
    }

    /// Clients tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.scores.len()
    }
}

/// Identifies a request for the GraphQL route cache: method, path, query and
/// the body's length, start and end. The cache is asked about the request
/// just judged, so this only has to tell consecutive requests apart; hashing
/// all of a megabyte body would cost more than judging its document.
fn request_key(req: &tollgate_detect::Request) -> u64 {
    use std::hash::{Hash, Hasher};
    const EDGE: usize = 4096;
    let b = &req.body;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&req.method, &req.path, &req.query, b.len()).hash(&mut h);
    b[..b.len().min(EDGE)].hash(&mut h);
    b[b.len().saturating_sub(EDGE)..].hash(&mut h);
    h.finish()
}

/// `/graphql mutation login` for each field a GraphQL request calls.
fn graphql_routes(
    gql: Option<&tollgate_detect::graphql::Analysis>,
    req: &tollgate_detect::Request,
) -> Vec<String> {
    let Some(a) = gql else { return Vec::new() };
    let path = tollgate_detect::path_template(&req.path);
    a.routes()
        .into_iter()
        .map(|(k, f)| format!("{path} {} {f}", k.as_str()))
        .collect()
}

/// `score` rounded to hundredths, the precision scores are compared and shown at.
fn round_centi(score: f64) -> f64 {
    (score * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(super) fn req(raw: &str) -> tollgate_detect::Request {
        match tollgate_detect::parse_request(raw.as_bytes()) {
            Ok(tollgate_detect::Parsed::Complete { msg, .. }) => msg,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pipeline(scoring: ScoringPolicy) -> Pipeline {
        Pipeline::new(
            DetectConfig::default(),
            scoring,
            &ApiPolicy::default(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn one_unambiguous_injection_bans() {
        let mut p = pipeline(ScoringPolicy::default());
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
        let mut p = pipeline(ScoringPolicy::default());
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
        let mut p = pipeline(scoring);
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

    /// A client pushed to the threshold by findings milliseconds apart is banned,
    /// and the ban reports the score that was compared: at the threshold, not 9.99.
    #[test]
    fn the_score_shown_is_the_score_that_banned() {
        let mut p = pipeline(ScoringPolicy::default());
        let c = Some(ip("198.18.0.11"));
        // A weak finding (one `../`) scores under the ban threshold alone.
        let weak = req("GET /files?name=../a HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut t = 1_000;
        let mut last = None;
        for _ in 0..10 {
            let d = p.on_request(c, &weak, t);
            t += 7;
            if d.action == Action::Ban {
                last = Some(d);
                break;
            }
            assert!(d.client_score < 10.0, "{d:?}");
        }
        let d = last.expect("weak findings add up to a ban");
        assert!(d.client_score >= 10.0, "ban shown with {}", d.client_score);
        // Decayed sums are reported at the precision they are compared at.
        assert_eq!(round_centi(9.996), 10.0);
        assert_eq!(round_centi(9.994), 9.99);
        assert!(round_centi(9.994) < ScoringPolicy::default().ban_threshold);
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
        let mut p = pipeline(ScoringPolicy::default());
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let a = std::net::Ipv4Addr::from(0xC612_0000 + i);
            p.add(IpNet::from(IpAddr::V4(a)), 1.0 + f64::from(i % 7), 0);
        }
        assert!(p.tracked() <= MAX_TRACKED);
    }
}

#[cfg(test)]
mod api_tests {
    use super::{tests::req, *};

    fn policy(yaml: &str) -> Pipeline {
        let p = crate::policy::Policy::parse(yaml, std::path::Path::new("p.yaml")).unwrap();
        Pipeline::from_policy(&p).unwrap()
    }

    #[test]
    fn exposures_alert_but_never_ban() {
        let mut p = policy("");
        let resp = tollgate_detect::Response {
            version: 1,
            status: 200,
            reason: "OK".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: b"{\"key\":\"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\"}".to_vec(),
            truncated: false,
        };
        let c: IpAddr = "198.18.0.4".parse().unwrap();
        for t in 0..5 {
            let d = p.on_response(c, None, &resp, t);
            assert_eq!(d.action, Action::Alert, "{d:?}");
            assert!(d.ban.is_none());
        }
    }

    /// A response with a status and nothing else.
    fn bare_response(status: u16) -> tollgate_detect::Response {
        tollgate_detect::Response {
            version: 1,
            status,
            ..tollgate_detect::Response::default()
        }
    }

    #[test]
    fn credential_stuffing_bans() {
        let mut p = policy("checks:\n  stuffing: {failures: 5, window: 1m}\n");
        let login = req("POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        let denied = bare_response(401);
        let c: IpAddr = "198.18.0.5".parse().unwrap();
        let bans = (0..5)
            .filter(|t| {
                p.on_response(c, Some(&login), &denied, t * 100)
                    .ban
                    .is_some()
            })
            .count();
        assert_eq!(bans, 1);
    }

    /// A request judged as a stand-in when its stream stalled, then whole:
    /// what the stand-in found does not score twice, what the rest brought does.
    #[test]
    fn a_resumed_request_scores_only_what_is_new() {
        let mut p = policy("");
        let c: IpAddr = "198.18.0.9".parse().unwrap();
        let head = req("GET /items?q=1950%20or%201960 HTTP/1.1\r\nHost: a\r\n\r\n");
        let stand_in = p.on_request(Some(c), &head, 1_000);
        assert!(
            stand_in.ban.is_none() && stand_in.client_score > 0.0,
            "{stand_in:?}"
        );
        let before: Vec<_> = stand_in
            .violations
            .iter()
            .map(|v| (v.rule, v.location.clone(), v.score))
            .collect();
        let again = p.on_request_resumed(Some(c), &head, &before, 1_010);
        assert!(again.violations.is_empty(), "{again:?}");
        assert!(again.client_score <= stand_in.client_score, "{again:?}");
        let whole = req(
            "POST /items?q=1950%20or%201960 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n{\"q\":\"1' UNION SELECT username,password FROM users--\"}",
        );
        let d = p.on_request_resumed(Some(c), &whole, &before, 1_020);
        assert!(d.ban.is_some(), "{d:?}");
        assert!(
            d.violations
                .iter()
                .all(|v| v.location == tollgate_detect::Location::Body),
            "{d:?}"
        );
    }

    /// A weak payload before the pause and a strong one of the same rule, in
    /// the same place, after it: the strong one still counts (its score less
    /// what the stand-in scored).
    #[test]
    fn a_stronger_finding_after_a_pause_still_bans() {
        let mut p = policy("");
        let c: IpAddr = "198.18.0.10".parse().unwrap();
        let post = |body: &str| {
            req(&format!(
                "POST /items HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        };
        let stand_in = p.on_request(Some(c), &post(r#"{"a":"1950 or 1960"}"#), 1_000);
        assert!(stand_in.ban.is_none(), "{stand_in:?}");
        let before: Vec<_> = stand_in
            .violations
            .iter()
            .map(|v| (v.rule, v.location.clone(), v.score))
            .collect();
        let whole = post(r#"{"a":"1950 or 1960","q":"1' OR '1'='1' --"}"#);
        let d = p.on_request_resumed(Some(c), &whole, &before, 1_010);
        assert!(d.ban.is_some(), "{d:?}");
    }

    /// An injection that stays under the ban threshold on its own, answered
    /// with the database's error: the pair bans. The same error after a clean
    /// request only alerts.
    #[test]
    fn leaked_db_error_after_injection_bans() {
        let mut p = policy("");
        let mut error = bare_response(500);
        error.body = b"You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version".to_vec();
        let c: IpAddr = "198.18.0.7".parse().unwrap();
        let probe = req("GET /items?q=1950%20or%201960 HTTP/1.1\r\nHost: a\r\n\r\n");
        let d = p.on_request(Some(c), &probe, 1_000);
        assert!(d.ban.is_none() && d.client_score > 0.0, "{d:?}");
        let d = p.on_response(c, Some(&probe), &error, 1_050);
        assert!(d.ban.is_some(), "{d:?}");
        let c: IpAddr = "198.18.0.8".parse().unwrap();
        let clean = req("GET /items?q=lamps HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(p.on_request(Some(c), &clean, 1_000).violations.is_empty());
        let d = p.on_response(c, Some(&clean), &error, 1_050);
        assert_eq!(d.action, Action::Alert, "{d:?}");
        assert!(d.ban.is_none());
    }

    /// A wordlist walk with a browser User-Agent: no request is an attack on
    /// its own, the 404s are; banned within its first 100 requests.
    #[test]
    fn forced_browsing_bans() {
        let mut p = policy("");
        let missing = bare_response(404);
        let c: IpAddr = "198.18.0.6".parse().unwrap();
        let banned_at = (0..100u64).find(|i| {
            let r = req(&format!(
                "GET /word{i} HTTP/1.1\r\nHost: a\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\n\r\n"
            ));
            assert!(p.on_request(Some(c), &r, i * 10).ban.is_none());
            p.on_response(c, Some(&r), &missing, i * 10 + 5).ban.is_some()
        });
        assert!(banned_at.is_some_and(|i| i < 100), "{banned_at:?}");
    }

    /// Issue 21 §6: a browser app user making many API calls, each with the page's
    /// URL (and its `&sort=`, `&id=`, `&type=`, `&date=` parameters) as Referer,
    /// an Origin, the browser's headers, a session JWT in a cookie or under the
    /// `JWT` scheme and their own object id spelled in another letter case or with
    /// leading zeros, is never banned; the attacks those places can carry still are.
    #[test]
    fn a_browser_app_user_is_not_banned() {
        let mut p =
            policy("routes:\n  - path: /users/{id}/**\n    bind: {param: id, claim: sub}\n");
        // {"alg":"HS256"} . {"sub":"3f2504e0-…"} . sig (no keys: not verified)
        let uuid_tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIzZjI1MDRlMC00Zjg5LTExZDMtOWEwYy0wMzA1ZTgyYzMzMDEifQ.c2ln";
        // {"alg":"HS256"} . {"sub":7.0} . sig
        let num_tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjcuMH0.c2ln";
        let browser = "Host: app.example\r\nOrigin: https://app.example\r\n\
            Accept: application/json, text/plain, */*\r\n\
            Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
            X-Request-Id: f058ebd6-02f7-4d3f-942e-904344e8cde5\r\n";
        let c = Some("198.18.0.12".parse().unwrap());
        let mut t = 0;
        for i in 0..30 {
            let referer = format!(
                "https://app.example/orders?page={i}&sort=date&id={i}&type=all&date=2026-12-0{}&time=now&file=x&host=a",
                i % 9 + 1
            );
            let (path, auth) = match i % 4 {
                0 => (
                    "/users/3F2504E0-4F89-11D3-9A0C-0305E82C3301".to_owned(),
                    format!("Cookie: theme=dark; token={uuid_tok}"),
                ),
                1 => (
                    "/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/orders".to_owned(),
                    format!("Authorization: JWT {uuid_tok}"),
                ),
                2 => ("/users/07".to_owned(), format!("X-Access-Token: {num_tok}")),
                _ => (format!("/users/7?access_token={num_tok}"), String::new()),
            };
            let r = req(&format!(
                "GET {path} HTTP/1.1\r\n{browser}Referer: {referer}\r\n{auth}\r\n\r\n"
            ));
            let d = p.on_request(c, &r, t);
            t += 250;
            assert!(d.violations.is_empty(), "call {i}: {d:?}");
            assert_eq!(d.action, Action::Allow);
        }
        // The attacks those places carry.
        for (n, extra) in [
            "Referer: https://app.example/orders?sort=date&q=;cat /etc/passwd",
            "Origin: https://app.example?x=$(id)",
            "Accept-Language: en' union select password from users--",
            "X-Request-Id: 1' or '1'='1",
            "Authorization: Basic YWRtaW4nIG9yICcxJz0nMSctLTp4", // admin' or '1'='1'--:x
        ]
        .iter()
        .enumerate()
        {
            let c = Some(format!("198.18.1.{n}").parse().unwrap());
            let r = req(&format!(
                "GET /items HTTP/1.1\r\nHost: a\r\n{extra}\r\n\r\n"
            ));
            let d = p.on_request(c, &r, 0);
            assert_eq!(d.action, Action::Ban, "{extra}: {d:?}");
        }
        // Another user's object, whatever the token's place: adds up to a ban.
        let c = Some("198.18.2.1".parse().unwrap());
        let other = req(&format!(
            "GET /users/8 HTTP/1.1\r\nHost: a\r\nCookie: token={num_tok}\r\n\r\n"
        ));
        let d = p.on_request(c, &other, 0);
        assert_eq!(d.violations[0].rule, "authz.object_binding", "{d:?}");
        let d = p.on_request(c, &other, 1);
        assert_eq!(d.action, Action::Ban, "{d:?}");
    }

    fn gql(body: &str, auth: &str) -> tollgate_detect::Request {
        req(&format!(
            "POST /graphql HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Operations are routes: limits count each aliased call, the route
    /// names the operation, the inventory sees it, and failed logins reported
    /// as GraphQL errors count one failure per call.
    #[test]
    fn graphql_operations_are_routes() {
        let mut p = policy(
            "routes:\n  - path: POST /graphql mutation login\n    limit: {requests: 20, per: 1m}\n  - path: POST /graphql query user\n    bind: {param: id, claim: sub}\ngraphql:\n  max_attempts: 100\n  max_aliases: 100\n",
        );
        let c = Some("198.18.0.20".parse().unwrap());
        let one = gql(
            r#"{"query":"mutation($u:String!,$p:String!){login(username:$u,password:$p){token}}","variables":{"u":"ana","p":"secret"}}"#,
            "",
        );
        let d = p.on_request(c, &one, 0);
        assert!(d.violations.is_empty(), "{d:?}");
        assert_eq!(p.route_of(&one), "POST /graphql mutation login");
        assert_eq!(p.graphql_operations(&one), ["mutation login"]);
        assert_eq!(
            p.endpoints(&one),
            [("POST".to_owned(), "/graphql mutation login".to_owned())]
        );
        // 50 aliased logins in one request: 51 calls against a limit of 20.
        let many: String = (0..50)
            .map(|i| {
                format!("l{i}: login(username: \\\"u{i}\\\", password: \\\"p\\\") {{ token }} ")
            })
            .collect();
        let d = p.on_request(
            c,
            &gql(&format!(r#"{{"query":"mutation {{ {many} }}"}}"#), ""),
            1,
        );
        assert!(
            d.violations
                .iter()
                .any(|v| v.rule == "limit.route" && v.score == 10),
            "{d:?}"
        );
        assert_eq!(d.action, Action::Ban);
        // Object binding on the argument: {"sub":"7"} asking for user 8.
        let tok = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2ln\r\n";
        let c = Some("198.18.0.21".parse().unwrap());
        let own = gql(r#"{"query":"{ user(id: 7) { name } }"}"#, tok);
        assert!(p.on_request(c, &own, 0).violations.is_empty());
        let other = gql(
            r#"{"query":"query($id: ID!) { user(id: $id) { name } }","variables":{"id":"8"}}"#,
            tok,
        );
        let d = p.on_request(c, &other, 1);
        assert_eq!(d.violations[0].rule, "authz.object_binding", "{d:?}");
        // Aliased `user(id:)` calls walking ids: enumeration in one request.
        let mut p2 = policy(
            "routes:\n  - path: POST /graphql query user\n    enumeration: {max_ids: 10, window: 1m, param: id}\n",
        );
        let walk: String = (0..30)
            .map(|i| format!("u{i}: user(id: {i}) {{ name }} "))
            .collect();
        let d = p2.on_request(c, &gql(&format!(r#"{{"query":"{{ {walk} }}"}}"#), ""), 0);
        assert!(
            d.violations.iter().any(|v| v.rule == "enumeration.ids"),
            "{d:?}"
        );
        // Failed logins as GraphQL errors: one failure per aliased call.
        let mut errors = bare_response(200);
        errors.headers = vec![("Content-Type".into(), "application/json".into())];
        let list: Vec<String> = (0..12)
            .map(|i| format!(r#"{{"message":"Invalid credentials","path":["l{i}"]}}"#))
            .collect();
        errors.body = format!(r#"{{"data":null,"errors":[{}]}}"#, list.join(",")).into_bytes();
        let c: IpAddr = "198.18.0.22".parse().unwrap();
        let d = p.on_response(c, None, &errors, 0);
        assert!(d.ban.is_some(), "{d:?}");
    }

    /// Wrong field names answered with suggestions (`Did you mean …?`) are
    /// counted per client like 404s on new paths: 40 distinct ones are
    /// allowed within a minute, the 41st is probing; one typo repeated is not.
    #[test]
    fn field_suggestion_probing() {
        let mut p = policy("");
        let answer = |status: u16, name: &str| {
            let mut r = bare_response(status);
            r.headers = vec![("Content-Type".into(), "application/json".into())];
            r.body = format!(
                r#"{{"errors":[{{"message":"Cannot query field \"{name}\" on type \"Query\". Did you mean \"user\"?","locations":[{{"line":1,"column":3}}]}}]}}"#
            )
            .into_bytes();
            r
        };
        let prober: IpAddr = "198.18.0.30".parse().unwrap();
        for i in 0..40 {
            let d = p.on_response(
                prober,
                None,
                &answer(if i % 2 == 0 { 200 } else { 400 }, &format!("usr{i}")),
                i,
            );
            assert!(d.violations.is_empty(), "{i}: {d:?}");
        }
        let d = p.on_response(prober, None, &answer(200, "usr40"), 41);
        assert_eq!(d.violations[0].rule, "graphql.field_suggestions", "{d:?}");
        assert!(d.ban.is_some(), "{d:?}");
        let typo: IpAddr = "198.18.0.31".parse().unwrap();
        for i in 0..100 {
            let d = p.on_response(typo, None, &answer(200, "usr"), i);
            assert!(d.violations.is_empty(), "{d:?}");
        }
    }

    #[test]
    fn api_violations_add_to_the_client_score() {
        // One BOLA mismatch is flagged, a few more ban.
        let mut p =
            policy("routes:\n  - path: /users/{id}/**\n    bind: {param: id, claim: sub}\n");
        // {"alg":"HS256"} . {"sub":"7"} . sig (no keys: not verified)
        let tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2ln";
        let own = req(&format!(
            "GET /users/7 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ));
        let other = req(&format!(
            "GET /users/8 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ));
        let c: Option<IpAddr> = Some("198.18.0.6".parse().unwrap());
        let d = p.on_request(c, &own, 0);
        assert!(d.violations.is_empty(), "{d:?}");
        let d = p.on_request(c, &other, 1);
        assert_eq!(d.violations[0].rule, "authz.object_binding");
        assert_eq!(d.action, Action::Alert);
        assert_eq!(p.route_of(&other), "GET /users/{id}/**");
        let d = p.on_request(c, &other, 2);
        assert_eq!(d.action, Action::Ban, "{d:?}");
    }
}
