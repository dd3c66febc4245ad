//! The `api:` policy section as users write it (serde model only; [`super::ApiGuard::new`]
//! validates it and compiles it).
//!
//! Durations are strings (`"30s"`, `"1m"`, `"1h"`) read by [`parse_duration`] when the
//! guard is built, so that a mistake is reported with the field path it sits at.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::DetectorConfig;

/// The API protection policy: credentials, per-route rules and detector switches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiPolicy {
    /// Where credentials are found and how JWTs are checked.
    pub auth: AuthConfig,
    /// Route rules; the first route whose pattern (and method prefix) matches a request
    /// applies, the others are ignored for that request.
    pub routes: Vec<RouteSpec>,
    /// Switches, weights and global limits of the detectors.
    pub checks: ApiChecks,
}

/// What a bearer token is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// Tokens are JWTs: parsed, time-checked and (with keys) verified.
    #[default]
    Jwt,
    /// Tokens are opaque: only their presence is checked.
    Opaque,
}

/// Credentials: where the token is read from and how JWTs are validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Header carrying the token (case-insensitive). Default `Authorization`.
    pub header: String,
    /// Scheme in front of the token in that header (case-insensitive), `""` for a bare
    /// token. Default `Bearer`.
    pub scheme: String,
    /// Cookie carrying the token, looked at when the header has none.
    pub cookie: Option<String>,
    /// `jwt` (default) or `opaque`.
    pub format: TokenFormat,
    /// Clock skew tolerated on `exp` and `nbf`. Default `"60s"`.
    pub leeway: String,
    /// Verification keys. With none (and no `jwks`), signatures are not checked.
    pub keys: Vec<JwtKey>,
    /// A JWKS document (JSON text) with more verification keys, matched by `kid`.
    pub jwks: Option<String>,
    /// A file holding the JWKS document (read by the caller into `jwks`; this
    /// crate does no I/O).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Longest token looked at; longer ones are reported as malformed.
    pub max_token_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            header: "Authorization".to_owned(),
            scheme: "Bearer".to_owned(),
            cookie: None,
            format: TokenFormat::Jwt,
            leeway: "60s".to_owned(),
            keys: Vec::new(),
            jwks: None,
            jwks_file: None,
            max_token_bytes: 8 * 1024,
        }
    }
}

/// One JWT verification key. Exactly one of `secret`, `secret_base64`, `pem` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtKey {
    /// Algorithm the key verifies: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384 or EdDSA. A token signed with any other algorithm fails verification
    /// (this is what stops `HS256`-with-the-public-key confusion).
    pub alg: String,
    /// Only used for tokens whose header names this `kid` (when set).
    pub kid: Option<String>,
    /// HMAC shared secret, as text.
    pub secret: Option<String>,
    /// HMAC shared secret, base64 encoded.
    pub secret_base64: Option<String>,
    /// PEM public key (RSA, EC or Ed25519) for the asymmetric algorithms.
    pub pem: Option<String>,
    /// A file holding the shared secret (read by the caller into `secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<std::path::PathBuf>,
    /// A file holding the PEM public key (read by the caller into `pem`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pem_file: Option<std::path::PathBuf>,
}

/// Whether a route needs credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequirement {
    /// Requests without a token are reported (`auth.missing`).
    Required,
    /// Tokens are checked when present.
    #[default]
    Optional,
}

/// Rules of one route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSpec {
    /// Pattern, optionally prefixed by a method: `/users/{id}/**`, `POST /login`.
    /// `{name}` matches one segment (also inside one: `/files/{name}.json`), `*` one
    /// segment, `**` the rest of the path (last only). Literals compare ASCII
    /// case-insensitively against the decoded, normalized path.
    pub path: String,
    /// Allowed methods; others are reported (`protocol.method_not_allowed`). `HEAD` is
    /// allowed with `GET`. Empty: any method.
    pub methods: Vec<String>,
    /// `required` or `optional` (default). `bind` and `admin_claim` imply `required`.
    pub auth: AuthRequirement,
    /// Object-level authorization: a path parameter that must equal a token claim.
    pub bind: Option<BindSpec>,
    /// A claim the token must carry to call this route.
    pub admin_claim: Option<ClaimSpec>,
    /// Distinct object ids one client may touch on this route within a window.
    pub enumeration: Option<EnumerationSpec>,
    /// JSON (or form) body properties that must never be sent to this route, at any
    /// depth, compared case-insensitively.
    pub forbidden_fields: Vec<String>,
    /// Requests per client allowed on this route.
    pub limit: Option<LimitSpec>,
}

/// `bind: { param: id, claim: sub }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BindSpec {
    /// Name of a `{param}` of the route pattern.
    pub param: String,
    /// Claim (dotted path into nested objects, e.g. `user.id`) the parameter must equal.
    pub claim: String,
    /// Tokens carrying this claim value may touch any object (e.g. support staff).
    pub unless: Option<ClaimSpec>,
}

/// A claim requirement: `{ claim: role, value: admin }`. The claim matches when it is
/// that string (or number), an array containing it, or a space-separated list (OAuth
/// `scope`) containing it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimSpec {
    /// Claim name, dotted path into nested objects (`realm_access.roles`).
    pub claim: String,
    pub value: String,
}

/// `enumeration: { max_ids: 20, window: 1m }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnumerationSpec {
    /// Most distinct ids per client and window; one more is reported.
    pub max_ids: u32,
    /// Window length, e.g. `"1m"`.
    pub window: String,
    /// Path parameter holding the id. Default: all parameters of the pattern together.
    pub param: Option<String>,
}

impl Default for EnumerationSpec {
    fn default() -> Self {
        EnumerationSpec {
            max_ids: 20,
            window: "1m".to_owned(),
            param: None,
        }
    }
}

/// `limit: { requests: 5, per: 1m }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSpec {
    pub requests: u32,
    /// Window length, e.g. `"1m"`, `"1h"`.
    pub per: String,
}

impl Default for LimitSpec {
    fn default() -> Self {
        LimitSpec {
            requests: 60,
            per: "1m".to_owned(),
        }
    }
}

/// `credential_stuffing: { failures: 10, window: 1m }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StuffingSpec {
    /// 401/403 responses to one client within `window` that are reported.
    pub failures: u32,
    pub window: String,
}

impl Default for StuffingSpec {
    fn default() -> Self {
        StuffingSpec {
            failures: 10,
            window: "1m".to_owned(),
        }
    }
}

/// `not_found: { paths: 40, per_route: 20, window: 1m }`: forced browsing and
/// enumeration by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotFoundSpec {
    /// Distinct paths answered 404/405 to one client within `window` that are
    /// reported (a wordlist walk).
    pub paths: u32,
    /// Distinct paths of one route or folded template (`/users/{id}`) answered
    /// 404/405 to one client within `window` that are reported (guessing ids).
    pub per_route: u32,
    pub window: String,
}

impl Default for NotFoundSpec {
    fn default() -> Self {
        NotFoundSpec {
            paths: 40,
            per_route: 20,
            window: "1m".to_owned(),
        }
    }
}

/// Detector switches and weights (`{enabled, weight}` as for the injection
/// detectors), plus the global bounds of the per-client state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiChecks {
    /// `auth.missing`.
    pub auth: DetectorConfig,
    /// `jwt.*`.
    pub jwt: DetectorConfig,
    /// `authz.admin_claim`, `authz.object_binding`.
    pub authz: DetectorConfig,
    /// `enumeration.ids`.
    pub enumeration: DetectorConfig,
    /// `mass_assignment.*`.
    pub mass_assignment: DetectorConfig,
    /// `limit.route`.
    pub rate_limit: DetectorConfig,
    /// `auth.credential_stuffing`.
    pub credential_stuffing: DetectorConfig,
    /// `enumeration.not_found`.
    pub forced_browsing: DetectorConfig,
    /// `sqli.error_response`, `protocol.error_response`.
    pub error_leak: DetectorConfig,
    /// `exposure.*` (alert-only).
    pub exposure: DetectorConfig,
    /// `inventory.unknown_endpoint` (only with an OpenAPI document).
    pub inventory: DetectorConfig,
    /// `protocol.method_not_allowed`.
    pub methods: DetectorConfig,
    /// Threshold of `auth.credential_stuffing`.
    pub stuffing: StuffingSpec,
    /// Thresholds of `enumeration.not_found`.
    pub not_found: NotFoundSpec,
    /// Enumeration limit for every path that no route with `enumeration` covers, by
    /// folded template (`/items/{id}`: numbers, UUIDs, hex and opaque ids). Off when
    /// absent; `param` is not allowed here.
    pub enumeration_default: Option<EnumerationSpec>,
    /// Most clients with per-client state; the least recently seen are forgotten.
    pub max_clients: usize,
    /// Most object ids remembered per client over all routes.
    pub max_ids_per_client: u32,
    /// IPv6 clients are tracked by this prefix (64: one subscriber network), so that
    /// rotating addresses inside one network does not reset the counters.
    pub ipv6_prefix: u8,
    /// Most request body bytes parsed for mass assignment.
    pub max_body_bytes: usize,
    /// Most response body bytes scanned for exposures.
    pub max_response_bytes: usize,
}

impl Default for ApiChecks {
    fn default() -> Self {
        ApiChecks {
            auth: DetectorConfig::default(),
            jwt: DetectorConfig::default(),
            authz: DetectorConfig::default(),
            enumeration: DetectorConfig::default(),
            mass_assignment: DetectorConfig::default(),
            rate_limit: DetectorConfig::default(),
            credential_stuffing: DetectorConfig::default(),
            forced_browsing: DetectorConfig::default(),
            error_leak: DetectorConfig::default(),
            exposure: DetectorConfig::default(),
            inventory: DetectorConfig::default(),
            methods: DetectorConfig::default(),
            stuffing: StuffingSpec::default(),
            not_found: NotFoundSpec::default(),
            enumeration_default: None,
            max_clients: 10_000,
            max_ids_per_client: 256,
            ipv6_prefix: 64,
            max_body_bytes: 64 * 1024,
            max_response_bytes: 256 * 1024,
        }
    }
}

/// Parses a policy duration such as `"90s"`, `"1m"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s.trim())
}
