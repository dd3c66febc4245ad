//! The OWASP API Security Top 10 layer: stateful, per-client checks of API traffic
//! against an [`ApiPolicy`] and, optionally, the service's OpenAPI document.
//!
//! Unlike the per-request injection detectors ([`crate::Engine`]), the
//! [`ApiGuard`] keeps state per client (request counters per route, object ids seen,
//! 401/403 counts), so it takes `&mut self`, the client address and the time. It
//! does no I/O and reads no clock: time is the caller's `now_ms` (Unix milliseconds),
//! which makes every result reproducible.
//!
//! What it checks (rule ids, categories and scores are in [`RULES`] and
//! `docs/api-rules.md`):
//! - credentials (API2): tokens missing on routes that need them; JWTs with
//!   `alg: none`, broken encodings, expired or not yet valid, or failing signature
//!   verification against the configured keys;
//! - authorization (API1, API5): admin routes called without the configured claim,
//!   and object-level binding (`/users/{id}` whose `{id}` must equal the `sub` claim);
//! - enumeration (API1): one client touching too many distinct ids of a route;
//! - mass assignment (API3): forbidden properties, or properties a closed OpenAPI
//!   schema does not allow, in request bodies;
//! - route limits (API4, API6) and credential stuffing (bursts of 401/403);
//! - exposures in responses (API3, API8): card numbers, private keys, cloud keys,
//!   password fields, stack traces and debug pages;
//! - inventory (API9): endpoints absent from the OpenAPI document;
//! - methods a route does not allow.
//!
//! Scores follow the engine's scale: 10 (`STRONG`, the engine's default ban
//! threshold) marks an unambiguous attack on its own (`alg: none`, a forged signature,
//! a credential-stuffing burst, enumeration over the limit, a route limit exceeded
//! twice over); weaker signals (a missing token, one object-binding mismatch, one
//! request over a limit, an unknown endpoint) score 2–6 and only add up to a ban.
//!
//! **Exposure findings are alert-only.** They describe what the *server* sent, not
//! what the client did, so callers report them but never ban the client for them:
//! [`is_alert_only`] says which categories are meant that way. Everything
//! [`ApiGuard::inspect_response`] returns is an exposure except the client's
//! doing, which may ban: `auth.credential_stuffing` (401/403 bursts),
//! `enumeration.not_found` (404/405 bursts on new paths) and the client's part of
//! a leaked error (`sqli.error_response`, `protocol.error_response`, scored by
//! how much the client's recent requests looked like an injection).
//!
//! Route matching: the request path is percent-decoded and normalized (`//`, `/./`,
//! `..`, `;params`, `\`, trailing `/`, letter case of literals), the method
//! upper-cased; the **first** route (in policy order) whose
//! method prefix and pattern match is the one applied. Put specific routes first.
//!
//! ```
//! use tollgate_detect::{ApiGuard, ApiPolicy, Parsed, is_alert_only, parse_request};
//!
//! let policy: ApiPolicy = serde_yaml_ng::from_str(r#"
//! routes:
//!   - path: POST /login
//!     limit: { requests: 5, per: 1m }
//!   - path: /users/{id}/**
//!     methods: [GET, PUT]
//!     bind: { param: id, claim: sub }
//!     forbidden_fields: [role, is_admin]
//! "#).unwrap();
//! let mut guard = ApiGuard::new(&policy, None).unwrap();
//! let Ok(Parsed::Complete { msg: req, .. }) =
//!     parse_request(b"DELETE /users/8 HTTP/1.1\r\nHost: api\r\n\r\n") else { panic!() };
//! let client = "192.0.2.7".parse().unwrap();
//! let found = guard.inspect_request(client, &req, 1_700_000_000_000);
//! let rules: Vec<&str> = found.iter().map(|v| v.rule).collect();
//! assert_eq!(rules, ["auth.missing", "protocol.method_not_allowed"]);
//! assert!(found.iter().all(|v| !is_alert_only(v.category)));
//! assert_eq!(guard.route_of(&req), "DELETE /users/{id}/**");
//! ```

mod json;
mod jwt;
mod openapi;
mod policy;
mod response;
mod routes;
mod state;

use std::net::IpAddr;

use serde_json::Value;
use thiserror::Error;

pub use policy::{
    ApiChecks, ApiPolicy, AuthConfig, AuthRequirement, BindSpec, ClaimSpec, EnumerationSpec,
    JwtKey, LimitSpec, RouteSpec, StuffingSpec, TokenFormat, parse_duration,
};

use crate::detect::{Category, DetectorConfig, Location, Violation};
use crate::graphql::{Analysis, OpKind};
use crate::http::{Request, Response};

/// A rule of the API layer with its default (unweighted) score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRule {
    /// Stable rule id, as in [`Violation::rule`].
    pub id: &'static str,
    pub category: Category,
    /// Score before the `checks.*` weight is applied.
    pub score: u32,
}

const STRONG: u32 = 10;

macro_rules! rules {
    ($($name:ident = $id:literal, $cat:ident, $score:expr;)*) => {
        $(const $name: ApiRule = ApiRule { id: $id, category: Category::$cat, score: $score };)*
        /// Every rule of the API layer.
        pub const RULES: &[ApiRule] = &[$($name),*];
    };
}

rules! {
    AUTH_MISSING = "auth.missing", Auth, 3;
    JWT_ALG_NONE = "jwt.alg_none", Auth, STRONG;
    JWT_EXPIRED = "jwt.expired", Auth, 3;
    JWT_NOT_YET_VALID = "jwt.not_yet_valid", Auth, 3;
    JWT_MALFORMED = "jwt.malformed", Auth, 5;
    JWT_BAD_SIGNATURE = "jwt.bad_signature", Auth, STRONG;
    AUTHZ_ADMIN = "authz.admin_claim", Authz, 5;
    AUTHZ_BINDING = "authz.object_binding", Authz, 5;
    ENUMERATION = "enumeration.ids", Enumeration, STRONG;
    MASS_FORBIDDEN = "mass_assignment.forbidden", MassAssignment, 6;
    MASS_UNKNOWN = "mass_assignment.unknown_property", MassAssignment, 3;
    LIMIT_ROUTE = "limit.route", RateLimit, 3;
    STUFFING = "auth.credential_stuffing", Auth, STRONG;
    NOT_FOUND = "enumeration.not_found", Enumeration, STRONG;
    DB_ERROR = "sqli.error_response", Sqli, STRONG;
    TRACE_ERROR = "protocol.error_response", Protocol, 6;
    EXPOSURE_CARD = "exposure.card", Exposure, 5;
    EXPOSURE_PRIVATE_KEY = "exposure.private_key", Exposure, STRONG;
    EXPOSURE_CLOUD_KEY = "exposure.cloud_key", Exposure, 8;
    EXPOSURE_PASSWORD = "exposure.password", Exposure, 5;
    EXPOSURE_STACK_TRACE = "exposure.stack_trace", Exposure, 3;
    INVENTORY_UNKNOWN = "inventory.unknown_endpoint", Inventory, 2;
    METHOD_NOT_ALLOWED = "protocol.method_not_allowed", Protocol, 3;
    GRAPHQL_SUGGESTIONS = "graphql.field_suggestions", Graphql, STRONG;
}

/// Whether findings of `category` are for reporting only: the caller raises an alert
/// but never bans the client for them, whatever their score. True for
/// [`Category::Exposure`] (what a response revealed is the server's fault).
pub fn is_alert_only(category: Category) -> bool {
    matches!(category, Category::Exposure)
}

/// Why an [`ApiPolicy`] or OpenAPI document was rejected. `field` is the path of the
/// offending policy field, e.g. `routes[2].bind.claim`.
#[derive(Debug, Error)]
pub enum ApiPolicyError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: invalid duration {value:?}")]
    Duration {
        field: String,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("openapi: {reason}")]
    OpenApi { reason: String },
}

impl ApiPolicyError {
    /// Path of the rejected field (`openapi` for the document).
    pub fn field(&self) -> &str {
        match self {
            ApiPolicyError::Invalid { field, .. } | ApiPolicyError::Duration { field, .. } => field,
            ApiPolicyError::OpenApi { .. } => "openapi",
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiPolicyError {
    ApiPolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses a policy duration into milliseconds; zero is rejected.
fn duration_ms(field: String, value: &str) -> Result<u64, ApiPolicyError> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err(invalid(field, "duration must be positive")),
        Ok(d) => Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        Err(source) => Err(ApiPolicyError::Duration {
            field,
            value: value.to_owned(),
            source,
        }),
    }
}

/// A compiled route.
struct Route {
    /// Method prefix (`POST /login`), upper case.
    method: Option<String>,
    /// The pattern as written, without the method prefix.
    text: String,
    pattern: routes::Pattern,
    methods: Vec<String>,
    needs_auth: bool,
    bind: Option<BindSpec>,
    admin: Option<ClaimSpec>,
    /// `(max_ids, window_ms, param)`.
    enumeration: Option<(usize, u64, Option<String>)>,
    /// Lower case.
    forbidden: Vec<String>,
    /// `(requests, window_ms)`.
    limit: Option<(u32, u64)>,
    /// A GraphQL operation (`POST /graphql mutation login`): the route applies
    /// to each call of that top-level field (kind `None`: any kind), not to
    /// requests by path.
    operation: Option<GqlOperation>,
}

/// A route's GraphQL operation: kind (any when `None`) and top-level field.
type GqlOperation = (Option<OpKind>, String);

impl Route {
    fn compile(i: usize, spec: &RouteSpec, policy: &ApiPolicy) -> Result<Route, ApiPolicyError> {
        let at = |f: &str| format!("routes[{i}].{f}");
        let (method, text) = routes::split_method(&spec.path);
        let (text, operation) = split_operation(text).map_err(|e| invalid(at("path"), e))?;
        let pattern = routes::parse_pattern(text).map_err(|e| invalid(at("path"), e))?;
        let params: Vec<&str> = pattern.params().collect();
        let mut methods = Vec::with_capacity(spec.methods.len());
        for (j, m) in spec.methods.iter().enumerate() {
            let m = m.trim();
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(invalid(
                    at(&format!("methods[{j}]")),
                    format!("invalid method {m:?}"),
                ));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let opaque = policy.auth.format == TokenFormat::Opaque;
        if let Some(b) = &spec.bind {
            // On a GraphQL operation the parameter is an argument of the field.
            if operation.is_none() && !params.contains(&b.param.as_str()) {
                return Err(invalid(
                    at("bind.param"),
                    format!(
                        "{:?} is not a parameter of {text:?} (has {params:?})",
                        b.param
                    ),
                ));
            }
            check_claim(&at("bind.claim"), &b.claim, opaque)?;
            if let Some(u) = &b.unless {
                check_claim(&at("bind.unless.claim"), &u.claim, opaque)?;
            }
        }
        if let Some(a) = &spec.admin_claim {
            check_claim(&at("admin_claim.claim"), &a.claim, opaque)?;
        }
        let enumeration = match &spec.enumeration {
            None => None,
            Some(e) => {
                // On a GraphQL operation the parameter is an argument.
                if let Some(p) = &e.param
                    && operation.is_none()
                    && !params.contains(&p.as_str())
                {
                    return Err(invalid(
                        at("enumeration.param"),
                        format!("{p:?} is not a parameter of {text:?}"),
                    ));
                }
                if params.is_empty() && operation.is_none() {
                    return Err(invalid(
                        at("enumeration"),
                        format!("{text:?} has no {{param}} to count"),
                    ));
                }
                let (max, window) =
                    check_enumeration(&at("enumeration"), e, policy.checks.max_ids_per_client)?;
                Some((max, window, e.param.clone()))
            }
        };
        let limit = match &spec.limit {
            None => None,
            Some(l) if l.requests == 0 => {
                return Err(invalid(at("limit.requests"), "must be at least 1"));
            }
            Some(l) => Some((l.requests, duration_ms(at("limit.per"), &l.per)?)),
        };
        if let Some(j) = spec
            .forbidden_fields
            .iter()
            .position(|f| f.trim().is_empty())
        {
            return Err(invalid(
                at(&format!("forbidden_fields[{j}]")),
                "empty field name",
            ));
        }
        Ok(Route {
            method,
            text: text.trim().to_owned(),
            pattern,
            methods,
            needs_auth: spec.auth == AuthRequirement::Required
                || spec.bind.is_some()
                || spec.admin_claim.is_some(),
            bind: spec.bind.clone(),
            admin: spec.admin_claim.clone(),
            enumeration,
            forbidden: spec
                .forbidden_fields
                .iter()
                .map(|f| f.trim().to_ascii_lowercase())
                .collect(),
            limit,
            operation,
        })
    }
}

/// Splits `/graphql mutation login` into the path and the GraphQL operation.
fn split_operation(text: &str) -> Result<(&str, Option<GqlOperation>), String> {
    let text = text.trim();
    let Some((path, op)) = text.split_once(char::is_whitespace) else {
        return Ok((text, None));
    };
    let words: Vec<&str> = op.split_whitespace().collect();
    let (kind, field) = match words[..] {
        [field] => (None, field),
        [kind, field] => {
            let kind = match kind {
                "query" => OpKind::Query,
                "mutation" => OpKind::Mutation,
                "subscription" => OpKind::Subscription,
                _ => return Err(format!("{kind:?} is not query, mutation or subscription")),
            };
            (Some(kind), field)
        }
        _ => {
            return Err(format!(
                "expected `PATH [query|mutation|subscription] FIELD`, got {text:?}"
            ));
        }
    };
    let name_ok = field
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if !name_ok {
        return Err(format!("{field:?} is not a GraphQL field name"));
    }
    Ok((path, Some((kind, field.to_owned()))))
}

/// Validates an enumeration limit at `field`; returns `(max_ids, window_ms)`.
fn check_enumeration(
    field: &str,
    e: &EnumerationSpec,
    max_ids_per_client: u32,
) -> Result<(usize, u64), ApiPolicyError> {
    if e.max_ids == 0 || e.max_ids >= max_ids_per_client {
        return Err(invalid(
            format!("{field}.max_ids"),
            format!(
                "must be between 1 and checks.max_ids_per_client - 1 ({})",
                max_ids_per_client.saturating_sub(1)
            ),
        ));
    }
    let window = duration_ms(format!("{field}.window"), &e.window)?;
    Ok((e.max_ids as usize, window))
}

fn check_claim(field: &str, claim: &str, opaque: bool) -> Result<(), ApiPolicyError> {
    if claim.trim().is_empty() {
        return Err(invalid(field, "claim name is empty"));
    }
    if opaque {
        return Err(invalid(
            field,
            "claims need auth.format: jwt (tokens are opaque)",
        ));
    }
    Ok(())
}

/// The stateful API guard. Build once per policy with [`ApiGuard::new`]; feed it every
/// request and (when available) every response of the protected service.
pub struct ApiGuard {
    tokens: Tokens,
    routes: Vec<Route>,
    inventory: Option<openapi::Inventory>,
    checks: ApiChecks,
    stuffing_window_ms: u64,
    /// `(paths, per_route, window_ms)` of `enumeration.not_found`.
    not_found: (usize, usize, u64),
    /// `(max_ids, window_ms)` for paths without a route enumeration.
    enumeration_default: Option<(usize, u64)>,
    scanner: response::Scanner,
    clients: state::Clients,
}

/// Credential settings, keys and the signature cache.
struct Tokens {
    auth: AuthConfig,
    leeway_s: i64,
    keys: Vec<jwt::Key>,
    cache: jwt::VerifyCache,
}

impl Tokens {
    /// Token checks; returns the claims of a readable JWT.
    fn check(
        &mut self,
        req: &Request,
        route: Option<&Route>,
        now_ms: u64,
        out: &mut Out<'_>,
    ) -> Option<serde_json::Map<String, Value>> {
        let needs_auth = route.is_some_and(|r| r.needs_auth);
        let mut tokens = jwt::extract(&self.auth, req, needs_auth);
        // A JWT in a cookie of a common name is the client's token only when it can
        // be read and, with keys, verified: otherwise it is taken for another
        // service's, and the request is one without a token.
        tokens.retain(|&(raw, source)| {
            source != jwt::Source::CommonCookie
                || jwt::decode(raw, self.auth.max_token_bytes)
                    .is_ok_and(|t| self.keys.is_empty() || self.cache.verify(&t, raw, &self.keys))
        });
        let Some(&(raw, source)) = tokens.first() else {
            if let Some(r) = route.filter(|_| needs_auth) {
                // Say what could not be checked: a route with binding passes
                // unchecked only in the sense that nothing could be compared.
                let unchecked = r
                    .bind
                    .as_ref()
                    .map(|b| format!("; {}={} binding not checked", b.param, b.claim))
                    .unwrap_or_default();
                out.push(
                    AUTH_MISSING,
                    Location::Request,
                    format!(
                        "no token in {}, token headers, cookies or access_token{unchecked}",
                        self.auth.header
                    ),
                );
            }
            return None;
        };
        if self.auth.format == TokenFormat::Opaque {
            return None;
        }
        let loc = match source {
            jwt::Source::Header(name) => Location::Header(name.to_owned()),
            jwt::Source::Cookie | jwt::Source::CommonCookie => Location::Cookie,
            jwt::Source::Query => Location::Query,
        };
        if tokens.iter().any(|(t, _)| *t != raw) {
            out.push(
                JWT_MALFORMED,
                loc.clone(),
                format!("{} different tokens in one request", tokens.len()),
            );
        }
        let tok = match jwt::decode(raw, self.auth.max_token_bytes) {
            Ok(t) => t,
            Err(why) => {
                // Without keys, a token with no dots may be an opaque token of an API
                // that is not using JWTs; it is only an error where claims are needed.
                let needs_claims = route.is_some_and(|r| r.bind.is_some() || r.admin.is_some());
                if !self.keys.is_empty() || raw.contains('.') || needs_claims {
                    out.push(JWT_MALFORMED, loc, why.to_owned());
                }
                return None;
            }
        };
        let alg = crate::decode::truncate(&tok.alg, 16);
        if tok.alg.trim().eq_ignore_ascii_case("none") {
            out.push(JWT_ALG_NONE, loc.clone(), format!("alg {alg:?}"));
        } else if raw.ends_with('.') {
            out.push(
                JWT_MALFORMED,
                loc.clone(),
                format!("alg {alg:?} without signature"),
            );
        } else if !self.keys.is_empty() && !self.cache.verify(&tok, raw, &self.keys) {
            out.push(
                JWT_BAD_SIGNATURE,
                loc.clone(),
                format!("alg {alg:?} not verified by any key"),
            );
        }
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        match jwt::check_time(&tok, now_s, self.leeway_s) {
            Some(jwt::TimeIssue::Expired) => out.push(JWT_EXPIRED, loc, "exp is past".to_owned()),
            Some(jwt::TimeIssue::NotYetValid) => {
                out.push(JWT_NOT_YET_VALID, loc, "nbf is in the future".to_owned());
            }
            Some(jwt::TimeIssue::Malformed) => {
                out.push(JWT_MALFORMED, loc, "exp or nbf is not a number".to_owned());
            }
            None => {}
        }
        Some(tok.claims)
    }
}

/// Findings of one call, weighted and filtered by the `checks.*` switches.
struct Out<'a> {
    checks: &'a ApiChecks,
    v: Vec<Violation>,
}

impl Out<'_> {
    fn push(&mut self, rule: ApiRule, location: Location, evidence: String) {
        self.push_scored(rule, rule.score, location, evidence);
    }

    /// [`Out::push`] with a raw score below the rule's strongest.
    fn push_scored(&mut self, rule: ApiRule, raw: u32, location: Location, evidence: String) {
        let c = &self.checks;
        let dc: DetectorConfig = match rule.id.split('.').next().unwrap_or("") {
            "jwt" => c.jwt,
            "auth" if rule == STUFFING => c.credential_stuffing,
            "enumeration" if rule == NOT_FOUND => c.forced_browsing,
            // Wrong field names answered with suggestions are GraphQL's 404s.
            "graphql" if rule == GRAPHQL_SUGGESTIONS => c.forced_browsing,
            _ if rule == DB_ERROR || rule == TRACE_ERROR => c.error_leak,
            "auth" => c.auth,
            "authz" => c.authz,
            "enumeration" => c.enumeration,
            "mass_assignment" => c.mass_assignment,
            "limit" => c.rate_limit,
            "exposure" => c.exposure,
            "inventory" => c.inventory,
            _ => c.methods,
        };
        if !dc.enabled {
            return;
        }
        self.v.push(Violation {
            rule: rule.id,
            category: rule.category,
            score: raw.min(rule.score).saturating_mul(dc.weight) / 100,
            location,
            evidence: crate::decode::truncate(&evidence, 120).to_owned(),
        });
    }
}

impl ApiGuard {
    /// Validates and compiles `policy`. `openapi`: the OpenAPI 3.x document text (YAML
    /// or JSON) if configured; the caller reads the file. Errors name the field path,
    /// e.g. `routes[2].bind.claim: ...`.
    pub fn new(policy: &ApiPolicy, openapi: Option<&str>) -> Result<ApiGuard, ApiPolicyError> {
        let auth = &policy.auth;
        if auth.header.trim().is_empty() {
            return Err(invalid("auth.header", "header name is empty"));
        }
        if auth.max_token_bytes == 0 {
            return Err(invalid("auth.max_token_bytes", "must be at least 1"));
        }
        let leeway_s = match parse_duration(&auth.leeway) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(source) => {
                return Err(ApiPolicyError::Duration {
                    field: "auth.leeway".to_owned(),
                    value: auth.leeway.clone(),
                    source,
                });
            }
        };
        let opaque = auth.format == TokenFormat::Opaque;
        let mut keys = Vec::new();
        for (i, k) in auth.keys.iter().enumerate() {
            keys.push(jwt::key_from_policy(k).map_err(|e| invalid(format!("auth.keys[{i}]"), e))?);
        }
        if let Some(j) = &auth.jwks {
            keys.extend(jwt::keys_from_jwks(j).map_err(|e| invalid("auth.jwks", e))?);
        }
        if opaque && !keys.is_empty() {
            return Err(invalid("auth.keys", "keys need auth.format: jwt"));
        }
        let routes = policy
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::compile(i, r, policy))
            .collect::<Result<Vec<_>, _>>()?;
        let c = &policy.checks;
        if c.max_clients == 0 {
            return Err(invalid("checks.max_clients", "must be at least 1"));
        }
        if c.stuffing.failures == 0 {
            return Err(invalid("checks.stuffing.failures", "must be at least 1"));
        }
        if c.ipv6_prefix > 128 {
            return Err(invalid("checks.ipv6_prefix", "must be at most 128"));
        }
        let enumeration_default = match &c.enumeration_default {
            None => None,
            Some(e) if e.param.is_some() => {
                return Err(invalid(
                    "checks.enumeration_default.param",
                    "templates have no named parameters",
                ));
            }
            Some(e) => Some(check_enumeration(
                "checks.enumeration_default",
                e,
                c.max_ids_per_client,
            )?),
        };
        let stuffing_window_ms =
            duration_ms("checks.stuffing.window".to_owned(), &c.stuffing.window)?;
        let nf = &c.not_found;
        let most = c.max_ids_per_client.saturating_sub(1);
        for (field, n) in [("paths", nf.paths), ("per_route", nf.per_route)] {
            if n == 0 || n > most {
                return Err(invalid(
                    format!("checks.not_found.{field}"),
                    format!("must be between 1 and checks.max_ids_per_client - 1 ({most})"),
                ));
            }
        }
        let not_found = (
            nf.paths as usize,
            nf.per_route as usize,
            duration_ms("checks.not_found.window".to_owned(), &nf.window)?,
        );
        let inventory = openapi
            .map(openapi::Inventory::parse)
            .transpose()
            .map_err(|reason| ApiPolicyError::OpenApi { reason })?;
        Ok(ApiGuard {
            tokens: Tokens {
                auth: auth.clone(),
                leeway_s,
                keys,
                cache: jwt::VerifyCache::default(),
            },
            routes,
            inventory,
            checks: c.clone(),
            stuffing_window_ms,
            not_found,
            enumeration_default,
            scanner: response::Scanner::new(),
            clients: state::Clients::new(
                c.max_clients,
                c.max_ids_per_client as usize,
                c.ipv6_prefix,
            ),
        })
    }

    /// Tells the guard that a per-request detector flagged a request of
    /// `client` at `now_ms`: a database error or stack trace the server sends
    /// it shortly after scores as that injection's result
    /// (`sqli.error_response`, `protocol.error_response`).
    pub fn note_injection(&mut self, client: IpAddr, now_ms: u64) {
        if self.checks.error_leak.enabled {
            self.clients
                .note_suspect(client, state::Suspect::Finding, now_ms);
        }
    }

    /// Drops the state of `client` (counters, ids seen), e.g. when it is unbanned.
    pub fn forget(&mut self, client: IpAddr) {
        self.clients.forget(client);
    }

    /// Number of clients with state (for metrics); at most `checks.max_clients`.
    pub fn tracked_clients(&self) -> usize {
        self.clients.len()
    }

    /// Route template for events, e.g. `GET /users/{id}`: the configured route's
    /// pattern when one matches, else the OpenAPI path when one matches, else the
    /// normalized path with id-like segments folded ([`crate::path_template`]).
    pub fn route_of(&self, req: &Request) -> String {
        self.route_of_with(req, None)
    }

    /// [`ApiGuard::route_of`] of a GraphQL request: `POST /graphql mutation
    /// login`, after the first top-level field called (the path alone when
    /// the request called none).
    pub fn route_of_with(&self, req: &Request, gql: Option<&Analysis>) -> String {
        let method = req.method.to_ascii_uppercase();
        let segs = routes::segments(&req.path);
        if let Some((kind, field)) = gql.and_then(|a| a.routes().first().copied()) {
            return format!(
                "{method} {} {} {field}",
                routes::normalized(&segs),
                kind.as_str()
            );
        }
        if let Some((_, r, _)) = find_route(&self.routes, &method, &segs) {
            return format!("{method} {}", r.text);
        }
        if let Some((p, _)) = self
            .inventory
            .as_ref()
            .and_then(|inv| inv.find(&method, &segs))
        {
            return format!("{method} {}", p.template);
        }
        format!("{method} {}", folded(&segs).0)
    }

    /// Checks one request of `client` at `now_ms` (Unix milliseconds) and updates the
    /// client's state. Returns the findings, weighted; the caller sums scores.
    pub fn inspect_request(
        &mut self,
        client: IpAddr,
        req: &Request,
        now_ms: u64,
    ) -> Vec<Violation> {
        self.inspect_request_with(client, req, None, now_ms)
    }

    /// [`ApiGuard::inspect_request`] of a request whose GraphQL content is
    /// known: each call of a top-level field is also a request of the route
    /// naming that operation (`POST /graphql mutation login`), so 200 aliased
    /// logins count 200 against its limit, and its object binding compares
    /// the field's argument with the claim.
    pub fn inspect_request_with(
        &mut self,
        client: IpAddr,
        req: &Request,
        gql: Option<&Analysis>,
        now_ms: u64,
    ) -> Vec<Violation> {
        let mut out = Out {
            checks: &self.checks,
            v: Vec::new(),
        };
        let method = req.method.to_ascii_uppercase();
        let segs = routes::segments(&req.path);
        let route = find_route(&self.routes, &method, &segs);
        // Browsers send CORS preflights without credentials, whatever the route needs.
        let preflight =
            method == "OPTIONS" && req.header("access-control-request-method").is_some();
        let claims = self.tokens.check(
            req,
            route.as_ref().map(|r| r.1).filter(|_| !preflight),
            now_ms,
            &mut out,
        );
        if let Some((idx, r, caps)) = &route {
            if !preflight && !routes::method_allowed(&r.methods, &method) {
                out.push(
                    METHOD_NOT_ALLOWED,
                    Location::Request,
                    format!("{method} not in {}", r.methods.join(", ")),
                );
            }
            if let Some(claims) = claims.as_ref().filter(|_| !preflight) {
                check_claims(r, caps, claims, &mut out);
            }
            if let Some((max, window, param)) = &r.enumeration
                && out.checks.enumeration.enabled
            {
                let id: String = caps
                    .iter()
                    .filter(|(n, _)| param.as_deref().is_none_or(|p| p == *n))
                    .map(|(_, v)| *v)
                    .collect::<Vec<_>>()
                    .join("/");
                let key = state::Clients::route_key(*idx);
                let n = self.clients.see_id(client, key, &id, now_ms, *window, *max);
                if n > *max {
                    out.push(
                        ENUMERATION,
                        Location::Path,
                        enumeration_evidence(&id, *max, &r.text, *window),
                    );
                }
            }
            if let Some((requests, per)) = r.limit
                && out.checks.rate_limit.enabled
            {
                let n = self.clients.hit_route(client, *idx, 1, now_ms, per);
                limit_finding(n, requests, per, &r.text, &mut out);
            }
        }
        if let Some(a) = gql {
            graphql_calls(
                &self.routes,
                &mut self.clients,
                (client, now_ms),
                a,
                (&method, &segs),
                claims.as_ref(),
                &mut out,
            );
        }
        if let Some((max, window)) = self.enumeration_default
            && self.checks.enumeration.enabled
            && route.as_ref().is_none_or(|r| r.1.enumeration.is_none())
        {
            let (template, ids) = folded(&segs);
            if !ids.is_empty() {
                let key = self.clients.template_key(&template);
                let n = self.clients.see_id(client, key, &ids, now_ms, window, max);
                if n > max {
                    out.push(
                        ENUMERATION,
                        Location::Path,
                        enumeration_evidence(&ids, max, &template, window),
                    );
                }
            }
        }
        let op = self.inventory.as_ref().map(|inv| inv.find(&method, &segs));
        if let Some(None) = op {
            out.push(
                INVENTORY_UNKNOWN,
                Location::Path,
                format!("{method} {}", routes::normalized(&segs)),
            );
        }
        if self.checks.error_leak.enabled && breaks_out(req) {
            self.clients
                .note_suspect(client, state::Suspect::Breakout, now_ms);
        }
        let forbidden = route.as_ref().map_or(&[][..], |r| &r.1.forbidden[..]);
        let allowed = op.flatten().and_then(|(_, o)| o.properties.as_ref());
        if (!forbidden.is_empty() || allowed.is_some()) && !req.body.is_empty() {
            check_body(
                req,
                forbidden,
                allowed,
                self.checks.max_body_bytes,
                &mut out,
            );
        }
        out.v
    }

    /// Checks one response sent to `client`. `req`: the request this response answers,
    /// when known (paired). Returns `auth.credential_stuffing`,
    /// `enumeration.not_found` and `*.error_response` (which may ban) and
    /// `exposure.*` findings, which are **alert-only** (see [`is_alert_only`]).
    pub fn inspect_response(
        &mut self,
        client: IpAddr,
        req: Option<&Request>,
        resp: &Response,
        now_ms: u64,
    ) -> Vec<Violation> {
        let not_found = if matches!(resp.status, 404 | 405) && self.checks.forced_browsing.enabled {
            self.not_found(client, req, now_ms)
        } else {
            None
        };
        // GraphQL answers failed logins with 200 and one error per failed call,
        // wrong field names with 200 or 400 and a suggestion.
        let gql = if matches!(resp.status, 200 | 400) && scannable(resp) {
            crate::graphql::response_errors(
                &resp.body[..resp.body.len().min(self.checks.max_response_bytes)],
            )
        } else {
            crate::graphql::ResponseErrors::default()
        };
        let probing = if gql.suggestions.is_empty() || !self.checks.forced_browsing.enabled {
            None
        } else {
            self.suggestions(client, &gql.suggestions, now_ms)
        };
        let mut out = Out {
            checks: &self.checks,
            v: Vec::new(),
        };
        let failures = if matches!(resp.status, 401 | 403) || grpc_auth_failure(resp) {
            1
        } else if resp.status == 200 {
            gql.auth
        } else {
            0
        };
        if let Some(ev) = probing {
            out.push(GRAPHQL_SUGGESTIONS, Location::Response, ev);
        }
        if failures > 0 && out.checks.credential_stuffing.enabled {
            let n = self
                .clients
                .hit_failure(client, failures, now_ms, self.stuffing_window_ms);
            let s = &self.checks.stuffing;
            if n >= s.failures {
                let on = req
                    .map(|r| format!(" (last: {})", self.route_of(r)))
                    .unwrap_or_default();
                out.push(
                    STUFFING,
                    Location::Response,
                    format!(
                        "{n} failed attempts (401/403, GraphQL auth errors, gRPC \
                         UNAUTHENTICATED/PERMISSION_DENIED) within {}{on}",
                        s.window
                    ),
                );
            }
        }
        if let Some(ev) = not_found {
            out.push(NOT_FOUND, Location::Response, ev);
        }
        if (out.checks.exposure.enabled || out.checks.error_leak.enabled) && scannable(resp) {
            let body = &resp.body[..resp.body.len().min(self.checks.max_response_bytes)];
            let suspect = self.clients.suspect(client, now_ms, SUSPECT_WINDOW_MS);
            let mut trace_reported = false;
            for f in self.scanner.scan(body) {
                // The client's part of a leaked error: (rule, score alone,
                // score after a breakout).
                let leak = match f {
                    response::Finding::StackTrace(_) => Some((TRACE_ERROR, 2, 3)),
                    response::Finding::DbError(_) => Some((DB_ERROR, 3, 6)),
                    _ => None,
                };
                let (rule, ev) = match f {
                    response::Finding::Card(e) => (EXPOSURE_CARD, e),
                    response::Finding::PrivateKey(e) => (EXPOSURE_PRIVATE_KEY, e),
                    response::Finding::CloudKey(e) => (EXPOSURE_CLOUD_KEY, e),
                    response::Finding::Password(e) => (EXPOSURE_PASSWORD, e),
                    response::Finding::StackTrace(e) => (EXPOSURE_STACK_TRACE, e),
                    response::Finding::DbError(e) => (EXPOSURE_STACK_TRACE, e),
                };
                if let Some((leak, alone, breakout)) = leak {
                    let raw = leak_score(suspect, alone, breakout);
                    out.push_scored(leak, raw, Location::ResponseBody, ev.clone());
                }
                // A database error is a stack trace's kind of exposure; one
                // report of the server's part is enough.
                if rule == EXPOSURE_STACK_TRACE {
                    if trace_reported {
                        continue;
                    }
                    trace_reported = true;
                }
                out.push(rule, Location::ResponseBody, ev);
            }
        }
        out.v
    }
}

/// A gRPC call refused for its credentials: `grpc-status` 16
/// (UNAUTHENTICATED) or 7 (PERMISSION_DENIED), in the trailers or in a
/// Trailers-Only response's head (both end up among the response's fields),
/// the gRPC counterparts of 401 and 403.
fn grpc_auth_failure(resp: &Response) -> bool {
    matches!(resp.header("grpc-status").map(str::trim), Some("16" | "7"))
}

/// `limit.route` when `n` requests within `per` are over `requests`.
fn limit_finding(n: u32, requests: u32, per: u64, on: &str, out: &mut Out<'_>) {
    if n <= requests {
        return;
    }
    // Twice the limit is a flood, not a client slightly over.
    let rule = if n >= requests.saturating_mul(2) {
        ApiRule {
            score: STRONG,
            ..LIMIT_ROUTE
        }
    } else {
        LIMIT_ROUTE
    };
    out.push(
        rule,
        Location::Request,
        format!(
            "{n} requests to {on} within {} (limit {requests})",
            fmt_ms(per)
        ),
    );
}

/// Routes naming GraphQL operations: limits counted per call, object
/// binding on the field's argument.
fn graphql_calls(
    routes: &[Route],
    clients: &mut state::Clients,
    (client, now_ms): (IpAddr, u64),
    a: &Analysis,
    (method, segs): (&str, &[String]),
    claims: Option<&serde_json::Map<String, Value>>,
    out: &mut Out<'_>,
) {
    for (kind, field, n) in a.attempts() {
        let Some((idx, r)) = routes.iter().enumerate().find(|(_, r)| {
            r.operation
                .as_ref()
                .is_some_and(|(k, f)| f == field && k.is_none_or(|k| k == kind))
                && r.method.as_deref().is_none_or(|m| m == method)
                && r.pattern.matches(segs).is_some()
        }) else {
            continue;
        };
        let on = format!("{} {} {field}", r.text, kind.as_str());
        if let Some((requests, per)) = r.limit
            && out.checks.rate_limit.enabled
        {
            let n = clients.hit_route(client, idx, n, now_ms, per);
            limit_finding(n, requests, per, &on, out);
        }
        // Each call's argument is an id of the route (aliased `user(id:)`
        // calls walk ids in one request).
        if let Some((max, window, param)) = &r.enumeration
            && out.checks.enumeration.enabled
        {
            let key = state::Clients::route_key(idx);
            let ids = a
                .operations
                .iter()
                .filter(|o| o.kind == kind)
                .flat_map(|o| &o.arguments)
                .filter(|(f, arg, _)| f == field && param.as_ref().is_none_or(|p| p == arg));
            let mut over = None;
            for (_, _, id) in ids {
                let n = clients.see_id(client, key, id, now_ms, *window, *max);
                if n > *max {
                    over = Some(id);
                }
            }
            if let Some(id) = over {
                out.push(
                    ENUMERATION,
                    Location::Request,
                    enumeration_evidence(id, *max, &on, *window),
                );
            }
        }
        if let Some(claims) = claims {
            for op in a.operations.iter().filter(|o| o.kind == kind) {
                for (f, arg, value) in &op.arguments {
                    if f == field && r.bind.as_ref().is_some_and(|b| &b.param == arg) {
                        check_claims(r, &[(arg.as_str(), value.as_str())], claims, out);
                    }
                }
            }
        } else if r.needs_auth {
            out.push(
                AUTH_MISSING,
                Location::Request,
                format!("no token for {on}"),
            );
        }
    }
}

impl ApiGuard {
    /// Counts a 404/405 answer by distinct path, per client and per route;
    /// returns the evidence when either count is over its threshold. Repeating
    /// one missing path (polling a deleted resource) counts once: a wordlist
    /// walk or id guessing asks for new paths. Without the request (unpaired)
    /// every answer counts as the same path, which never adds up to a ban.
    /// Counts the distinct suggestion errors a client was answered (each a
    /// wrong name it tried) against the `enumeration.not_found` path limit and
    /// window: a schema reconstructed by guessing is forced browsing.
    fn suggestions(&mut self, client: IpAddr, messages: &[String], now_ms: u64) -> Option<String> {
        let (max, _, window) = self.not_found;
        // Keys apart from the enumeration ones: templates start with `/`.
        let key = self.clients.template_key("graphql suggestions");
        let mut n = 0;
        for m in messages {
            n = self.clients.see_id(client, key, m, now_ms, window, max);
        }
        (n > max).then(|| {
            format!(
                "more than {max} wrong GraphQL names answered with suggestions within {} (last: {})",
                fmt_ms(window),
                messages.last().map_or("", |m| crate::decode::truncate(m, 80))
            )
        })
    }

    fn not_found(&mut self, client: IpAddr, req: Option<&Request>, now_ms: u64) -> Option<String> {
        let (paths, per_route, window) = self.not_found;
        let (path, route) = match req {
            Some(r) => {
                let segs = routes::segments(&r.path);
                (
                    format!(
                        "{} {}",
                        r.method.to_ascii_uppercase(),
                        routes::normalized(&segs)
                    ),
                    self.route_of(r),
                )
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        // Keys apart from the enumeration ones: templates start with `/`.
        let all = self.clients.template_key("404");
        let one = self.clients.template_key(&format!("404 {route}"));
        let n = self
            .clients
            .see_id(client, all, &path, now_ms, window, paths);
        let m = self
            .clients
            .see_id(client, one, &path, now_ms, window, per_route);
        let within = fmt_ms(window);
        if n > paths {
            Some(format!(
                "more than {paths} paths answered 404/405 within {within} (last: {path})"
            ))
        } else if m > per_route {
            Some(format!(
                "more than {per_route} paths of {route} answered 404/405 within {within} (last: {path})"
            ))
        } else {
            None
        }
    }
}

/// How long after a request that looked like an injection the error a
/// response of that client leaks is taken as its consequence (responses to a
/// client follow its requests within this on any sane service).
const SUSPECT_WINDOW_MS: u64 = 10_000;

/// Raw score of a leaked error: `alone` when the client's recent requests looked
/// clean, `breakout` after quote or bracket characters, the rule's strongest
/// after a request a detector flagged (an injection that makes the server leak
/// is a stronger signal than either).
fn leak_score(suspect: Option<state::Suspect>, alone: u32, breakout: u32) -> u32 {
    match suspect {
        None => alone,
        Some(state::Suspect::Breakout) => breakout,
        Some(state::Suspect::Finding) => u32::MAX,
    }
}

/// Whether a request carries characters that break out of a quoted or
/// bracketed value in its query or form body: a quote, a backtick, or
/// parentheses that do not balance. JSON bodies are left out (their syntax
/// is quotes).
fn breaks_out(req: &Request) -> bool {
    let form = req.header("content-type").is_some_and(|t| {
        t.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let body = if form {
        String::from_utf8_lossy(&req.body[..req.body.len().min(4096)])
    } else {
        std::borrow::Cow::Borrowed("")
    };
    [req.query.as_deref().unwrap_or(""), &body]
        .iter()
        .any(|raw| {
            let v = crate::decode::percent_decode(raw, true);
            let depth = v.bytes().fold(0i64, |d, c| match c {
                b'(' => d + 1,
                b')' => d - 1,
                _ => d,
            });
            depth != 0 || v.contains(['\'', '"', '`'])
        })
}

/// A matched route: its index, the route and the captured `(param, value)` pairs.
type RouteMatch<'r, 's> = (usize, &'r Route, Vec<(&'r str, &'s str)>);

/// The first route matching the request, with its index and captured parameters.
fn find_route<'r, 's>(
    routes: &'r [Route],
    method: &str,
    segs: &'s [String],
) -> Option<RouteMatch<'r, 's>> {
    routes.iter().enumerate().find_map(|(i, r)| {
        if r.method.as_deref().is_some_and(|m| m != method) || r.operation.is_some() {
            return None;
        }
        r.pattern.matches(segs).map(|caps| (i, r, caps))
    })
}

/// Whether a response body is text we can read: not compressed, not media.
fn scannable(resp: &Response) -> bool {
    if resp.body.is_empty() {
        return false;
    }
    let enc = resp.header("content-encoding").unwrap_or("identity").trim();
    if !enc.is_empty() && !enc.eq_ignore_ascii_case("identity") {
        return false;
    }
    let ct = resp
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    ![
        "image/",
        "audio/",
        "video/",
        "font/",
        "application/octet-stream",
        "application/zip",
        "application/pdf",
    ]
    .iter()
    .any(|p| ct.starts_with(p))
}

/// Object binding and admin claim of a matched route.
fn check_claims(
    r: &Route,
    caps: &[(&str, &str)],
    claims: &serde_json::Map<String, Value>,
    out: &mut Out<'_>,
) {
    if let Some(a) = &r.admin
        && !jwt::has_claim(claims, a)
    {
        out.push(
            AUTHZ_ADMIN,
            Location::Request,
            format!("token lacks {}={} for {}", a.claim, a.value, r.text),
        );
    }
    let Some(b) = &r.bind else { return };
    if b.unless.as_ref().is_some_and(|u| jwt::has_claim(claims, u)) {
        return;
    }
    let Some((_, param)) = caps.iter().find(|(n, _)| *n == b.param) else {
        return;
    };
    let have = jwt::claim(claims, &b.claim).and_then(jwt::claim_text);
    let same = have
        .as_deref()
        .is_some_and(|h| canonical_id(h) == canonical_id(param));
    if !same {
        let shown = have
            .as_deref()
            .map_or("(none)", |h| crate::decode::truncate(h, 40));
        out.push(
            AUTHZ_BINDING,
            Location::Path,
            format!(
                "{}={} but {}={shown}",
                b.param,
                crate::decode::truncate(param, 40),
                b.claim
            ),
        );
    }
}

/// The form of an object id that two spellings of the same id share, so that a
/// user is not taken for another because a client spells the id differently:
/// percent-decoded once and trimmed; a UUID in lower case; a decimal number without
/// leading zeros and without an all-zero fraction (`07`, `7.0` and `7` are one id).
/// Anything else is compared as it is: `8` is never `7`, `0x7` never `7`.
fn canonical_id(raw: &str) -> String {
    let decoded = if raw.contains('%') {
        crate::decode::percent_decode(raw, false)
    } else {
        raw.to_owned()
    };
    let s = decoded.trim();
    if is_uuid(s) {
        return s.to_ascii_lowercase();
    }
    let (sign, unsigned) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let decimal = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b == b'0');
    if !decimal {
        return s.to_owned();
    }
    let digits = int.trim_start_matches('0');
    if digits.is_empty() {
        return "0".to_owned();
    }
    format!("{sign}{digits}")
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Mass assignment: forbidden properties at any depth; with an OpenAPI closed schema,
/// top-level properties it does not list.
fn check_body(
    req: &Request,
    forbidden: &[String],
    allowed: Option<&std::collections::BTreeSet<String>>,
    max_bytes: usize,
    out: &mut Out<'_>,
) {
    let body = &req.body[..req.body.len().min(max_bytes)];
    let mut keys: Vec<(usize, String)> = Vec::new();
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        json::keys(&v, &mut keys);
    } else if text.trim_start().starts_with(['{', '[']) {
        // Truncated or broken JSON: the back end may still parse more than we saw.
        // Depth is unknown, so these keys only count for forbidden fields.
        keys.extend(json::members(&text).map(|(k, _)| (usize::MAX, k.to_owned())));
    } else if !forbidden.is_empty() {
        // Form bodies: `role=admin`, `user[role]=admin`, `user.role=admin`.
        for pair in text.split('&').take(json::MAX_KEYS) {
            let name = crate::decode::percent_decode(pair.split('=').next().unwrap_or(""), true);
            for (depth, part) in name
                .split(['[', ']', '.'])
                .filter(|p| !p.is_empty())
                .enumerate()
            {
                keys.push((depth, part.to_owned()));
            }
        }
    }
    if let Some(k) = keys
        .iter()
        .find(|(_, k)| forbidden.iter().any(|f| k.eq_ignore_ascii_case(f)))
    {
        out.push(
            MASS_FORBIDDEN,
            Location::Body,
            format!("property {:?}", crate::decode::truncate(&k.1, 40)),
        );
    }
    if let Some(allowed) = allowed {
        let unknown: Vec<&str> = keys
            .iter()
            .filter(|(d, k)| *d == 0 && !allowed.contains(k))
            .map(|(_, k)| crate::decode::truncate(k, 40))
            .take(3)
            .collect();
        if !unknown.is_empty() {
            out.push(
                MASS_UNKNOWN,
                Location::Body,
                format!("properties {unknown:?} not in schema"),
            );
        }
    }
}

/// The folded template of normalized segments and its id segments joined by `/`.
fn folded(segs: &[String]) -> (String, String) {
    let mut template = String::new();
    let mut ids = String::new();
    for s in segs {
        let id = crate::template::is_identifier(s);
        template.push('/');
        template.push_str(if id { "{id}" } else { s });
        if id {
            if !ids.is_empty() {
                ids.push('/');
            }
            ids.push_str(s);
        }
    }
    if template.is_empty() {
        template.push('/');
    }
    (template, ids)
}

fn enumeration_evidence(id: &str, max: usize, on: &str, window_ms: u64) -> String {
    format!(
        "id {:?}: more than {max} distinct ids on {on} within {}",
        crate::decode::truncate(id, 24),
        fmt_ms(window_ms)
    )
}

/// `60000` → `1m`, for evidence.
fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests;
