//! Bearer tokens: extraction, JWT parsing, time checks and signature verification.
//!
//! Header and payload are decoded here (so that `alg: none`, broken encodings and
//! bad claims get their own findings); signatures are checked with `jsonwebtoken`'s
//! pure-Rust (`rust_crypto`) backend. Tokens are attacker-controlled: their size is
//! capped before anything is decoded and no step can panic.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::policy::{AuthConfig, ClaimSpec, JwtKey, TokenFormat};
use crate::http::Request;

/// A configured verification key.
pub(crate) struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Builds a key from the policy; the error is the reason, without the field path.
pub(crate) fn key_from_policy(k: &JwtKey) -> Result<Key, String> {
    let alg: Algorithm = k
        .alg
        .trim()
        .parse()
        .map_err(|_| format!("unknown algorithm {:?}", k.alg))?;
    let set = [&k.secret, &k.secret_base64, &k.pem]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if set != 1 {
        return Err("set exactly one of secret, secret_base64, pem".to_owned());
    }
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    let key = match (&k.secret, &k.secret_base64, &k.pem) {
        (Some(s), _, _) if hmac => {
            DecodingKey::from_secret(s.as_bytes()).map_err(|e| format!("bad secret: {e}"))?
        }
        (_, Some(b), _) if hmac => {
            DecodingKey::from_base64_secret(b.trim()).map_err(|e| format!("bad base64: {e}"))?
        }
        (_, _, Some(pem)) if !hmac => {
            let pem = pem.as_bytes();
            match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => DecodingKey::from_rsa_pem(pem),
            }
            .map_err(|e| format!("failed to read PEM key: {e}"))?
        }
        _ if hmac => return Err(format!("{:?} needs secret or secret_base64", k.alg)),
        _ => return Err(format!("{:?} needs a pem public key", k.alg)),
    };
    Ok(Key {
        alg,
        kid: k.kid.clone(),
        key,
    })
}

/// Reads the keys of a JWKS document; keys without a usable `alg` are skipped.
pub(crate) fn keys_from_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(text).map_err(|e| format!("failed to parse JWKS: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let Some(alg) = jwk_alg(jwk) else { continue };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWK: {e}"))?;
        out.push(Key {
            alg,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if out.is_empty() {
        return Err("JWKS holds no usable key".to_owned());
    }
    Ok(out)
}

/// The key's `alg`, or the usual one for its key type when it names none.
fn jwk_alg(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    if let Some(a) = jwk.common.key_algorithm {
        return a.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
        _ => None,
    }
}

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    /// A header, by its name as received.
    Header(&'a str),
    Cookie,
    /// The `access_token` query parameter (RFC 6750 §2.3).
    Query,
    /// A cookie of a common name ([`TOKEN_COOKIES`]), not the configured one: it
    /// may hold another service's token, so only a token that is readable (and,
    /// with keys, verified) counts as the client's.
    CommonCookie,
}

/// Headers that clients put a bare token in when the API does not use
/// `Authorization` (lower case).
const TOKEN_HEADERS: &[&str] = &["x-access-token", "x-auth-token"];

/// Schemes in front of a token in `Authorization` besides the configured one.
const TOKEN_SCHEMES: &[&str] = &["bearer", "jwt"];

/// Cookies that hold a session JWT in common frameworks (lower case); only
/// JWT-shaped values count, since these names also hold opaque session ids.
/// In order of preference: an access token before an ID token.
const TOKEN_COOKIES: &[&str] = &[
    "access_token",
    "accesstoken",
    "token",
    "jwt",
    "auth_token",
    "auth",
    "session",
    "id_token",
];

/// The tokens of a request, in order: every configured header (with its scheme),
/// then the configured cookie. More than one distinct token is ambiguous: the back
/// end may read another one than the guard.
///
/// When those hold none and `elsewhere` is set (the route needs credentials), the
/// token is looked for where clients commonly put it instead, so that the route's
/// checks (signature, times, binding) are not skipped because the client chose
/// another place: `Authorization` with the `Bearer` or `JWT` scheme,
/// [`TOKEN_HEADERS`], the `access_token` query parameter, and else one JWT-shaped
/// cookie of [`TOKEN_COOKIES`]. (Only then: a client may well send an access token
/// in `Authorization` and an unrelated ID token in a cookie.) With the `jwt` format
/// only JWT-shaped values count there; opaque tokens are only read from the
/// configured places, whose presence is all that is checked.
pub(crate) fn extract<'a>(
    cfg: &AuthConfig,
    req: &'a Request,
    elsewhere: bool,
) -> Vec<(&'a str, Source<'a>)> {
    let headers = &req.headers;
    let mut out = Vec::new();
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case(&cfg.header) {
            continue;
        }
        let v = value.trim();
        let tok = if cfg.scheme.is_empty() {
            v
        } else {
            match v.split_once(char::is_whitespace) {
                Some((s, t)) if s.eq_ignore_ascii_case(&cfg.scheme) => t.trim(),
                _ => continue,
            }
        };
        if !tok.is_empty() {
            out.push((tok, Source::Header(name.as_str())));
        }
    }
    if let Some(cookie) = cfg.cookie.as_deref() {
        out.extend(
            cookies(headers)
                .filter(|(k, _)| *k == cookie)
                .map(|(_, v)| (v, Source::Cookie)),
        );
    }
    if !out.is_empty() || !elsewhere || cfg.format == TokenFormat::Opaque {
        return out;
    }
    for (name, value) in headers {
        let v = value.trim();
        let tok = if name.eq_ignore_ascii_case("authorization") {
            match v.split_once(char::is_whitespace) {
                Some((s, t)) if TOKEN_SCHEMES.iter().any(|k| s.eq_ignore_ascii_case(k)) => t.trim(),
                _ => continue,
            }
        } else if TOKEN_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            // Some clients repeat a scheme here too.
            v.split_once(char::is_whitespace)
                .filter(|(s, _)| TOKEN_SCHEMES.iter().any(|k| s.eq_ignore_ascii_case(k)))
                .map_or(v, |(_, t)| t.trim())
        } else {
            continue;
        };
        if jwt_shaped(tok) {
            out.push((tok, Source::Header(name.as_str())));
        }
    }
    if let Some(q) = req.query.as_deref() {
        out.extend(
            q.split('&')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| *k == "access_token")
                .map(|(_, v)| v)
                .filter(|v| jwt_shaped(v))
                .map(|v| (v, Source::Query)),
        );
    }
    if !out.is_empty() {
        return out;
    }
    // Cookies are sent without the client choosing to, and a site often holds
    // several JWTs (an access and an ID token, another service's session): take
    // one, by name in the order of preference, and never call two ambiguous.
    let found = TOKEN_COOKIES
        .iter()
        .find_map(|c| cookies(headers).find(|(k, v)| k.eq_ignore_ascii_case(c) && jwt_shaped(v)));
    out.extend(found.map(|(_, v)| (v, Source::CommonCookie)));
    out
}

/// `(name, value)` of every cookie, trimmed, quotes removed, empty values skipped.
fn cookies(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .filter(|(_, v)| !v.is_empty())
}

/// Three dot-separated base64url parts, the first a JSON object (`eyJ`): a JWT (or
/// a broken or unsigned one, which the checks report), not an opaque session id.
fn jwt_shaped(tok: &str) -> bool {
    tok.starts_with("eyJ")
        && tok.split('.').count() == 3
        && tok
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// A decoded (not necessarily valid) JWT.
#[derive(Debug)]
pub(crate) struct Token {
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
    pub(crate) claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    signing_input_len: usize,
}

/// What is wrong with a token that cannot even be read.
pub(crate) fn decode(tok: &str, max_len: usize) -> Result<Token, &'static str> {
    if tok.len() > max_len {
        return Err("token too long");
    }
    let mut parts = tok.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts");
    };
    let header = json_object(h).ok_or("header is not base64url JSON object")?;
    let claims = json_object(p).ok_or("payload is not base64url JSON object")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err("header has no string 'alg'"),
    };
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.clone()),
        _ => None,
    };
    Ok(Token {
        alg,
        kid,
        claims,
        signing_input_len: h.len() + 1 + p.len(),
    })
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Time problem of a token, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeIssue {
    Expired,
    NotYetValid,
    /// `exp`/`nbf` present but not a number.
    Malformed,
}

/// Checks `exp` and `nbf` against `now_s` with `leeway_s` of tolerance.
pub(crate) fn check_time(t: &Token, now_s: i64, leeway_s: i64) -> Option<TimeIssue> {
    let num = |k: &str| -> Option<Result<i64, ()>> {
        t.claims.get(k).map(|v| match v {
            // Fractional timestamps are allowed by RFC 7519 ("NumericDate").
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .ok_or(()),
            _ => Err(()),
        })
    };
    match num("exp") {
        Some(Err(())) => return Some(TimeIssue::Malformed),
        Some(Ok(exp)) if exp.saturating_add(leeway_s) < now_s => return Some(TimeIssue::Expired),
        _ => {}
    }
    match num("nbf") {
        Some(Err(())) => Some(TimeIssue::Malformed),
        Some(Ok(nbf)) if nbf.saturating_sub(leeway_s) > now_s => Some(TimeIssue::NotYetValid),
        _ => None,
    }
}

/// Verifies the signature with the configured keys: a key must have the token's
/// algorithm (and its `kid` when both name one).
pub(crate) fn verify(t: &Token, raw: &str, keys: &[Key]) -> bool {
    let Ok(alg) = t.alg.parse::<Algorithm>() else {
        return false;
    };
    let (Some(msg), Some(sig)) = (
        raw.get(..t.signing_input_len),
        raw.get(t.signing_input_len + 1..),
    ) else {
        return false;
    };
    keys.iter()
        .filter(|k| k.alg == alg)
        .filter(|k| match (&k.kid, &t.kid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .any(|k| {
            matches!(
                jsonwebtoken::crypto::verify(sig, msg.as_bytes(), &k.key, alg),
                Ok(true)
            )
        })
}

/// Signature verdicts remembered; the cache is emptied when full.
const VERIFY_CACHE: usize = 4096;

/// Remembers signature verdicts per token: clients send the same token with every
/// request, and an ECDSA or RSA verification costs far more than the rest of the
/// checks together. Tokens are keyed by a hash with a random key, so a forged token
/// cannot be made to collide with a verified one.
#[derive(Default)]
pub(crate) struct VerifyCache {
    verdicts: HashMap<u64, bool>,
    hasher: RandomState,
}

impl VerifyCache {
    /// [`verify`], remembered.
    pub(crate) fn verify(&mut self, t: &Token, raw: &str, keys: &[Key]) -> bool {
        let h = self.hasher.hash_one(raw);
        if let Some(&ok) = self.verdicts.get(&h) {
            return ok;
        }
        let ok = verify(t, raw, keys);
        if self.verdicts.len() >= VERIFY_CACHE {
            self.verdicts.clear();
        }
        self.verdicts.insert(h, ok);
        ok
    }
}

/// Most nesting followed in a dotted claim path.
const MAX_CLAIM_DEPTH: usize = 8;

/// Looks up a dotted claim path (`realm_access.roles`).
pub(crate) fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.').take(MAX_CLAIM_DEPTH);
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A claim value as text, for comparing with path parameters.
pub(crate) fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether the claims satisfy `spec` (see [`ClaimSpec`]).
pub(crate) fn has_claim(claims: &Map<String, Value>, spec: &ClaimSpec) -> bool {
    let want = spec.value.as_str();
    match claim(claims, &spec.claim) {
        Some(Value::String(s)) => s == want || s.split_whitespace().any(|w| w == want),
        Some(Value::Array(a)) => a.iter().any(|x| claim_text(x).as_deref() == Some(want)),
        Some(Value::Bool(b)) => want == if *b { "true" } else { "false" },
        Some(v @ Value::Number(_)) => claim_text(v).as_deref() == Some(want),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    pub(crate) fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// Unsigned token with the given header and claims JSON.
    pub(crate) fn unsigned(header: &str, claims: &str) -> String {
        format!("{}.{}.", b64(header), b64(claims))
    }

    /// HS256 token signed with `secret`.
    pub(crate) fn hs256(claims: &str, secret: &str) -> String {
        let msg = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(claims));
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{msg}.{sig}")
    }

    #[test]
    fn decode_and_verify() {
        let t = hs256(r#"{"sub":"7"}"#, "s3cret");
        let tok = decode(&t, 8192).unwrap();
        assert_eq!(tok.alg, "HS256");
        let good = key_from_policy(&JwtKey {
            alg: "HS256".into(),
            secret: Some("s3cret".into()),
            ..JwtKey::default()
        })
        .unwrap();
        let bad = key_from_policy(&JwtKey {
            alg: "HS256".into(),
            secret_base64: Some(STANDARD.encode("other")),
            ..JwtKey::default()
        })
        .unwrap();
        assert!(verify(&tok, &t, std::slice::from_ref(&good)));
        assert!(!verify(&tok, &t, std::slice::from_ref(&bad)));
        // Tampered payload.
        let forged = t.replacen(&b64(r#"{"sub":"7"}"#), &b64(r#"{"sub":"8"}"#), 1);
        assert!(!verify(
            &decode(&forged, 8192).unwrap(),
            &forged,
            std::slice::from_ref(&good)
        ));
        // The cache gives the same verdicts, again and again.
        let mut cache = VerifyCache::default();
        for _ in 0..3 {
            assert!(cache.verify(&tok, &t, std::slice::from_ref(&good)));
            assert!(!cache.verify(
                &decode(&forged, 8192).unwrap(),
                &forged,
                std::slice::from_ref(&good)
            ));
        }
        for i in 0..VERIFY_CACHE + 10 {
            let other = format!("{t}{i}");
            let _ = cache.verify(&tok, &other, std::slice::from_ref(&good));
        }
        assert!(cache.verdicts.len() <= VERIFY_CACHE);
        assert!(cache.verify(&tok, &t, &[good]));
    }

    #[test]
    fn malformed_inputs_do_not_panic() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            "€.€.€",
            "e30.e30.",
            "W10.e30.",
            "eyJhbGciOjF9.e30.x",
        ] {
            assert!(decode(t, 8192).is_err(), "{t}");
        }
        assert!(decode(&"a".repeat(9000), 8192).is_err());
    }

    #[test]
    fn claims_lookup() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"a":{"b":["x","admin"]},"scope":"read write","n":7}"#)
                .unwrap();
        let spec = |c: &str, v: &str| ClaimSpec {
            claim: c.into(),
            value: v.into(),
        };
        assert!(has_claim(&m, &spec("a.b", "admin")));
        assert!(has_claim(&m, &spec("scope", "write")));
        assert!(has_claim(&m, &spec("n", "7")));
        assert!(!has_claim(&m, &spec("scope", "admin")));
        assert!(!has_claim(&m, &spec("a.c", "x")));
    }
}
