//! Tests of the guard as a whole: policy loading, every rule with evasive variants
//! and benign look-alikes.

use std::net::IpAddr;

use super::jwt::tests::{b64, hs256, unsigned};
use super::*;
use crate::http::{Parsed, parse_request};

/// Test keys and tokens made once with a throwaway key pair (private keys discarded):
/// claims `{"sub":"7","role":"user"}`, no expiry.
const ES256_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIofzdCR8nuurKOsR3vqitpOJf9fn\nHqMBdS74qPgUA5VWU550hr/9tD69FSzXj33AsRWpHRLAmaSn5s/N9KJ4PQ==\n-----END PUBLIC KEY-----\n";
const ES256_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjMSJ9.eyJzdWIiOiI3Iiwicm9sZSI6InVzZXIifQ.kCFhUWPMqGthJJkvIFNJKDcCk3KI0J2bcNUmyIgX2Ljaqf1ByE3FQKz2_y5jAaISWGKa9qBNAuHlhVyp6mhj2g";
const RS256_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtlSVe1OCMydGcEBKnVxw\nDtSy3SG1Hn/4vbNhO0KAm+ttU0xGIpySg5eOkZEfEMmuj1gv4EygIbCcwyZ5FbMs\nSHLA7+0liQcGD+OenBlZ0GOEkJLGkGT5SHAqEde5VJnn7aYU39GR6Q+az0XRpdln\nZyX17qxDXjKsyVwW36eUymN+m5/jPuFrwdxOLQEnEhqU0BSO5f2OjKffnEFRBSO0\nciGQ5pczlYoquM45EsYcm+c/dvJfXzQbftgZGdiNZ3BspigeYo2v5wlC+ld7XZJr\n4dKdY95sbCoQzTx57uyLCM4oSXdH/WYlP0OaI5O/1T5RNpX7kWqEb/FxXc6GVykA\nRQIDAQAB\n-----END PUBLIC KEY-----\n";
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYTEifQ.eyJzdWIiOiI3Iiwicm9sZSI6InVzZXIifQ.Z4hXJz3ZamhZDwMuqXj0w1kb3Yfi7NE7z2Y2li5P47wL8y2wFEywZ0fIvENOcufjt-ltKfCZoc10KHAb12cnoM1WApkHBJ0RPPzN2KGA8lojK8LUI5i0-5evvONTk7BkqOtPVLGK5KW5OIhlCSpQ3ZJWEIpz7RdXAmRNEeDFq7imHApQTOQhUeojL6XOfB3gArT9-fUeKSqBozOXMMzsf6wlPRqI2vJ0Z1WXZ6F_E85Zdm3E_Pl2Pu9MSVQdHkEUry-4Ci3uCWtHgr3ErItExi1K9D1vxYtoAfpsQCWom-T30IsH31fa3yet-nF67qDwMd1f1EvQb7WCrAnOU70Ymw";
const RS256_JWKS: &str = "{\"keys\": [{\"kty\": \"RSA\", \"kid\": \"rsa1\", \"use\": \"sig\", \"n\": \"tlSVe1OCMydGcEBKnVxwDtSy3SG1Hn_4vbNhO0KAm-ttU0xGIpySg5eOkZEfEMmuj1gv4EygIbCcwyZ5FbMsSHLA7-0liQcGD-OenBlZ0GOEkJLGkGT5SHAqEde5VJnn7aYU39GR6Q-az0XRpdlnZyX17qxDXjKsyVwW36eUymN-m5_jPuFrwdxOLQEnEhqU0BSO5f2OjKffnEFRBSO0ciGQ5pczlYoquM45EsYcm-c_dvJfXzQbftgZGdiNZ3BspigeYo2v5wlC-ld7XZJr4dKdY95sbCoQzTx57uyLCM4oSXdH_WYlP0OaI5O_1T5RNpX7kWqEb_FxXc6GVykARQ\", \"e\": \"AQAB\"}]}";

const SECRET: &str = "test-secret-0123456789";
/// 2026-11-28, in ms.
const NOW: u64 = 1_795_000_000_000;
const NOW_S: u64 = NOW / 1000;

const POLICY: &str = r#"
auth:
  keys:
    - { alg: HS256, secret: "test-secret-0123456789" }
routes:
  - path: POST /login
    limit: { requests: 5, per: 1m }
  - path: /admin/**
    admin_claim: { claim: role, value: admin }
  - path: /users/{id}/**
    methods: [GET, PUT]
    auth: required
    bind: { param: id, claim: sub, unless: { claim: role, value: support } }
    enumeration: { max_ids: 20, window: 1m }
    forbidden_fields: [role, is_admin]
  - path: /orders/{order}
    enumeration: { max_ids: 3, window: 1m }
"#;

fn guard() -> ApiGuard {
    let p: ApiPolicy = serde_yaml_ng::from_str(POLICY).unwrap();
    ApiGuard::new(&p, None).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req(method: &str, path: &str, token: Option<&str>, body: &str) -> Request {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match parse_request(raw.as_bytes()) {
        Ok(Parsed::Complete { msg, .. }) => msg,
        other => panic!("{raw}: {other:?}"),
    }
}

fn token(claims: &str) -> String {
    hs256(claims, SECRET)
}

fn user7() -> String {
    token(&format!(
        r#"{{"sub":"7","role":"user","exp":{}}}"#,
        NOW_S + 600
    ))
}

fn rules(v: &[Violation]) -> Vec<&'static str> {
    v.iter().map(|v| v.rule).collect()
}

fn total(v: &[Violation]) -> u32 {
    v.iter().map(|v| v.score).sum()
}

fn check(g: &mut ApiGuard, r: &Request) -> Vec<Violation> {
    g.inspect_request(ip("192.0.2.1"), r, NOW)
}

#[test]
fn policy_from_yaml_round_trips() {
    let p: ApiPolicy = serde_yaml_ng::from_str(POLICY).unwrap();
    assert_eq!(p.routes.len(), 4);
    assert_eq!(p.routes[2].bind.as_ref().unwrap().claim, "sub");
    assert_eq!(p.checks, ApiChecks::default());
    let back: ApiPolicy = serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert!(ApiGuard::new(&ApiPolicy::default(), None).is_ok());
    // Unknown fields are rejected by serde.
    assert!(serde_yaml_ng::from_str::<ApiPolicy>("routes: [{path: /a, bogus: 1}]").is_err());
}

#[test]
fn rejected_policies_name_the_field() {
    let cases = [
        (
            "routes: [{path: /a, bind: {param: id, claim: sub}}]",
            "routes[0].bind.param",
        ),
        (
            "routes: [{path: /a}, {path: '/u/{id}', bind: {param: id, claim: ''}}]",
            "routes[1].bind.claim",
        ),
        (
            "routes: [{path: /a, limit: {requests: 5, per: 1x}}]",
            "routes[0].limit.per",
        ),
        (
            "routes: [{path: /a, limit: {requests: 0, per: 1m}}]",
            "routes[0].limit.requests",
        ),
        ("routes: [{path: a}]", "routes[0].path"),
        (
            "routes: [{path: /a, methods: ['G T']}]",
            "routes[0].methods[0]",
        ),
        (
            "routes: [{path: '/u/{id}', enumeration: {max_ids: 0}}]",
            "routes[0].enumeration.max_ids",
        ),
        (
            "routes: [{path: '/u/{id}', enumeration: {window: soon}}]",
            "routes[0].enumeration.window",
        ),
        ("auth: {keys: [{alg: HS256}]}", "auth.keys[0]"),
        ("auth: {keys: [{alg: XX1, secret: a}]}", "auth.keys[0]"),
        ("auth: {keys: [{alg: RS256, pem: nope}]}", "auth.keys[0]"),
        ("auth: {leeway: forever}", "auth.leeway"),
        ("auth: {jwks: '{}'}", "auth.jwks"),
        (
            "auth: {format: opaque}\nroutes: [{path: /a, admin_claim: {claim: r, value: a}}]",
            "routes[0].admin_claim.claim",
        ),
        (
            "checks: {stuffing: {failures: 0}}",
            "checks.stuffing.failures",
        ),
        ("checks: {not_found: {paths: 0}}", "checks.not_found.paths"),
        (
            "checks: {not_found: {per_route: 300}}",
            "checks.not_found.per_route",
        ),
        (
            "checks: {not_found: {window: never}}",
            "checks.not_found.window",
        ),
        (
            "checks: {enumeration_default: {max_ids: 500}}",
            "checks.enumeration_default.max_ids",
        ),
        (
            "checks: {enumeration_default: {param: id}}",
            "checks.enumeration_default.param",
        ),
        (
            "checks: {enumeration_default: {window: 0s}}",
            "checks.enumeration_default.window",
        ),
    ];
    for (yaml, field) in cases {
        let p: ApiPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        let Err(e) = ApiGuard::new(&p, None) else {
            panic!("{yaml} accepted")
        };
        assert_eq!(e.field(), field, "{yaml}: {e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
    let e = ApiGuard::new(&ApiPolicy::default(), Some("openapi: 3.0.0"))
        .err()
        .unwrap();
    assert_eq!(e.field(), "openapi");
}

#[test]
fn object_binding() {
    let mut g = guard();
    // The lead's end-to-end case: user 7 reading user 8.
    let v = check(&mut g, &req("GET", "/users/8", Some(&user7()), ""));
    assert_eq!(rules(&v), ["authz.object_binding"], "{v:?}");
    assert_eq!(v[0].category, Category::Authz);
    assert!(v[0].score < STRONG);
    // Own object, also below it and through evasive spellings of the path.
    for p in [
        "/users/7",
        "/users/7/",
        "/users/7/orders/3",
        "//users/7",
        "/USERS/7",
    ] {
        let v = check(&mut g, &req("GET", p, Some(&user7()), ""));
        assert!(v.is_empty(), "{p}: {v:?}");
    }
    for p in [
        "/users/8/",
        "//users/8",
        "/users%2F8",
        "/Users/8",
        "/x/../users/8",
        "/users/8;a=b",
        "/users/%38",
    ] {
        let v = check(&mut g, &req("GET", p, Some(&user7()), ""));
        assert_eq!(rules(&v), ["authz.object_binding"], "{p}: {v:?}");
    }
    let v = check(&mut g, &req("get", "/users/8", Some(&user7()), ""));
    assert_eq!(
        rules(&v),
        ["authz.object_binding"],
        "lower-case method: {v:?}"
    );
    // Numeric claims compare as text; `unless` exempts support staff.
    let num = token(r#"{"sub":8}"#);
    assert!(check(&mut g, &req("GET", "/users/8", Some(&num), "")).is_empty());
    let support = token(r#"{"sub":"1","role":"support"}"#);
    assert!(check(&mut g, &req("GET", "/users/8", Some(&support), "")).is_empty());
}

/// A user reading their own object with the id spelled another way is the same
/// user: a UUID in the other letter case, leading zeros, `7.0`, a percent-encoded
/// claim. A session of such reads adds nothing; another object is still a mismatch.
#[test]
fn object_binding_compares_canonical_forms() {
    let mut g = guard();
    let uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let exp = NOW_S + 600;
    let same = [
        (
            format!(r#"{{"sub":"{uuid}","exp":{exp}}}"#),
            format!("/users/{}", uuid.to_ascii_uppercase()),
        ),
        (
            format!(r#"{{"sub":"{}","exp":{exp}}}"#, uuid.to_ascii_uppercase()),
            format!("/users/{uuid}/orders"),
        ),
        (
            format!(r#"{{"sub":"7","exp":{exp}}}"#),
            "/users/07".to_owned(),
        ),
        (
            format!(r#"{{"sub":"7","exp":{exp}}}"#),
            "/users/0007/orders/3".to_owned(),
        ),
        (
            format!(r#"{{"sub":7,"exp":{exp}}}"#),
            "/users/007".to_owned(),
        ),
        (
            format!(r#"{{"sub":7.0,"exp":{exp}}}"#),
            "/users/7".to_owned(),
        ),
        (
            format!(r#"{{"sub":"7.0","exp":{exp}}}"#),
            "/users/7".to_owned(),
        ),
        (
            format!(r#"{{"sub":"007","exp":{exp}}}"#),
            "/users/7".to_owned(),
        ),
        (
            format!(r#"{{"sub":0,"exp":{exp}}}"#),
            "/users/00".to_owned(),
        ),
        (
            format!(r#"{{"sub":"ann%40example.com","exp":{exp}}}"#),
            "/users/ann@example.com".to_owned(),
        ),
    ];
    for (claims, path) in &same {
        for _ in 0..5 {
            let v = check(&mut g, &req("GET", path, Some(&token(claims)), ""));
            assert!(v.is_empty(), "{claims} {path}: {v:?}");
        }
    }
    let other = [
        (r#"{"sub":"7"}"#, "/users/8"),
        (r#"{"sub":7}"#, "/users/08"),
        (r#"{"sub":7.5}"#, "/users/7"),
        (r#"{"sub":"7"}"#, "/users/7.5"),
        (r#"{"sub":"7"}"#, "/users/70"),
        (r#"{"sub":"7"}"#, "/users/0x7"),
        (r#"{"sub":"7"}"#, "/users/-7"),
        (r#"{"sub":"7"}"#, "/users/7a"),
        (r#"{"sub":"ann"}"#, "/users/ANN"),
        (
            r#"{"sub":"3f2504e0-4f89-11d3-9a0c-0305e82c3301"}"#,
            "/users/3F2504E0-4F89-11D3-9A0C-0305E82C3302",
        ),
        (
            r#"{"sub":"3f2504e0-4f89-11d3-9a0c-0305e82c3301"}"#,
            "/users/3f2504e04f8911d39a0c0305e82c3301",
        ),
    ];
    for (claims, path) in other {
        let v = check(&mut g, &req("GET", path, Some(&token(claims)), ""));
        assert_eq!(
            rules(&v),
            ["authz.object_binding"],
            "{claims} {path}: {v:?}"
        );
    }
}

#[test]
fn missing_credentials() {
    let mut g = guard();
    for p in ["/users/7", "/users/7/", "//users/7", "/%75sers/7"] {
        let v = check(&mut g, &req("GET", p, None, ""));
        assert_eq!(rules(&v), ["auth.missing"], "{p}: {v:?}");
        assert!(v[0].score < STRONG);
    }
    // Other schemes are not a bearer token.
    let mut r = req("GET", "/users/7", None, "");
    r.headers
        .push(("Authorization".into(), "Basic dXNlcjpwYXNz".into()));
    assert_eq!(rules(&check(&mut g, &r)), ["auth.missing"]);
    // Optional routes and unknown paths do not need a token.
    assert!(check(&mut g, &req("GET", "/health", None, "")).is_empty());
}

#[test]
fn token_from_cookie() {
    let p: ApiPolicy = serde_yaml_ng::from_str(
        "auth: {cookie: session}\nroutes: [{path: '/users/{id}', bind: {param: id, claim: sub}}]",
    )
    .unwrap();
    let mut g = ApiGuard::new(&p, None).unwrap();
    let mut r = req("GET", "/users/8", None, "");
    r.headers
        .push(("Cookie".into(), format!("a=b; session={}", user7())));
    let v = check(&mut g, &r);
    assert_eq!(rules(&v), ["authz.object_binding"], "{v:?}");
}

/// Tokens are found where clients put them when the configured header has none:
/// a session JWT in a cookie of a common name, the `JWT` scheme, `X-Access-Token`,
/// `?access_token=`. The owner reads freely, another user's object is a mismatch,
/// and a forged token there is as forged as in `Authorization`.
#[test]
fn tokens_found_where_clients_put_them() {
    let mut g = guard();
    let places = |tok: &str, path: &str| -> Vec<Request> {
        let mut out = Vec::new();
        for name in ["token", "access_token", "jwt", "auth", "session", "Session"] {
            let mut r = req("GET", path, None, "");
            r.headers.push((
                "Cookie".into(),
                format!("theme=dark; {name}={tok}; lang=en"),
            ));
            out.push(r);
        }
        for (h, v) in [
            ("Authorization", format!("JWT {tok}")),
            ("authorization", format!("jwt {tok}")),
            ("X-Access-Token", tok.to_owned()),
            ("x-auth-token", tok.to_owned()),
            ("X-Access-Token", format!("Bearer {tok}")),
        ] {
            let mut r = req("GET", path, None, "");
            r.headers.push((h.into(), v));
            out.push(r);
        }
        out.push(req(
            "GET",
            &format!("{path}?a=1&access_token={tok}"),
            None,
            "",
        ));
        out
    };
    for r in places(&user7(), "/users/7") {
        for _ in 0..5 {
            let v = check(&mut g, &r);
            assert!(v.is_empty(), "{r:?}: {v:?}");
        }
    }
    for r in places(&user7(), "/users/8") {
        let v = check(&mut g, &r);
        assert_eq!(rules(&v), ["authz.object_binding"], "{r:?}: {v:?}");
    }
    // A forged token sent on purpose (a header, the query) is as forged as in
    // `Authorization`. One in a cookie of a common name may be another service's:
    // it is not taken for the client's token, and the request is one without.
    let forged = token(r#"{"sub":"8"}"#).replace(&b64(r#"{"sub":"8"}"#), &b64(r#"{"sub":"7"}"#));
    let none = unsigned(r#"{"alg":"none"}"#, r#"{"sub":"7"}"#);
    for (tok, rule) in [(&forged, "jwt.bad_signature"), (&none, "jwt.alg_none")] {
        for r in places(tok, "/users/7") {
            let v = check(&mut g, &r);
            let cookie = r.header("cookie").is_some();
            let want = if cookie { "auth.missing" } else { rule };
            assert!(rules(&v).contains(&want), "{r:?}: {v:?}");
            assert!(!cookie || v[0].evidence.contains("binding not checked"));
        }
    }
    // Tokens are only looked for elsewhere where the route needs one: another
    // service's JWT cookie on a public path is none of the guard's business.
    for path in ["/health", "/orders/1"] {
        for r in places(&forged, path).into_iter().chain(places(&none, path)) {
            assert!(check(&mut g, &r).is_empty(), "{r:?}");
        }
    }
    // Several JWT cookies (an access and an ID token) are not ambiguous: the
    // access token is the one read.
    let mut r = req("GET", "/users/7", None, "");
    r.headers.push((
        "Cookie".into(),
        format!(
            "id_token={}; access_token={}",
            token(r#"{"sub":"ann@example.com"}"#),
            user7()
        ),
    ));
    assert!(check(&mut g, &r).is_empty());
    // The configured header wins: an unrelated ID token in a cookie is no second
    // token.
    let mut r = req("GET", "/users/7", Some(&user7()), "");
    r.headers.push((
        "Cookie".into(),
        format!("id_token={}", token(r#"{"sub":"ann@example.com"}"#)),
    ));
    assert!(check(&mut g, &r).is_empty());
    // No token anywhere (an opaque session id is none): said, with the binding
    // that could not be checked.
    let mut r = req("GET", "/users/7", None, "");
    r.headers
        .push(("Cookie".into(), "session=s%3Aabc123def456.sig".into()));
    let v = check(&mut g, &r);
    assert_eq!(rules(&v), ["auth.missing"], "{v:?}");
    assert!(v[0].evidence.contains("binding not checked"), "{v:?}");
}

#[test]
fn alg_none_is_strong() {
    let mut g = guard();
    for alg in ["none", "NoNe", "NONE", " none"] {
        let t = unsigned(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"sub":"7"}"#);
        let v = check(&mut g, &req("GET", "/users/7", Some(&t), ""));
        assert_eq!(rules(&v), ["jwt.alg_none"], "{alg}: {v:?}");
        assert!(total(&v) >= STRONG);
    }
    // Also flagged where no route applies and no key is configured.
    let mut open = ApiGuard::new(&ApiPolicy::default(), None).unwrap();
    let t = unsigned(r#"{"alg":"none"}"#, r#"{"sub":"1"}"#);
    let v = check(&mut open, &req("GET", "/anything", Some(&t), ""));
    assert_eq!(rules(&v), ["jwt.alg_none"]);
}

#[test]
fn signatures() {
    let mut g = guard();
    assert!(check(&mut g, &req("GET", "/users/7", Some(&user7()), "")).is_empty());
    let forged = hs256(r#"{"sub":"7"}"#, "guessed");
    let v = check(&mut g, &req("GET", "/users/7", Some(&forged), ""));
    assert_eq!(rules(&v), ["jwt.bad_signature"]);
    assert!(total(&v) >= STRONG);
    // Stripped signature.
    let stripped = user7().rsplit_once('.').unwrap().0.to_owned() + ".";
    assert_eq!(
        rules(&check(&mut g, &req("GET", "/users/7", Some(&stripped), ""))),
        ["jwt.malformed"]
    );
    // Algorithm confusion: an RS256 token against HMAC-only keys.
    assert_eq!(
        rules(&check(
            &mut g,
            &req("GET", "/users/7", Some(RS256_TOKEN), "")
        )),
        ["jwt.bad_signature"]
    );
}

#[test]
fn asymmetric_keys_and_jwks() {
    let policy = |auth: serde_json::Value| -> ApiGuard {
        let p: ApiPolicy = serde_json::from_value(serde_json::json!({ "auth": auth })).unwrap();
        ApiGuard::new(&p, None).unwrap()
    };
    let mut es = policy(serde_json::json!({"keys": [{"alg": "ES256", "pem": ES256_PEM}]}));
    let mut rs =
        policy(serde_json::json!({"keys": [{"alg": "RS256", "pem": RS256_PEM, "kid": "rsa1"}]}));
    let mut jwks = policy(serde_json::json!({"jwks": RS256_JWKS}));
    for (g, good, bad) in [
        (&mut es, ES256_TOKEN, RS256_TOKEN),
        (&mut rs, RS256_TOKEN, ES256_TOKEN),
        (&mut jwks, RS256_TOKEN, ES256_TOKEN),
    ] {
        assert!(check(g, &req("GET", "/x", Some(good), "")).is_empty());
        assert_eq!(
            rules(&check(g, &req("GET", "/x", Some(bad), ""))),
            ["jwt.bad_signature"]
        );
        // HS256 signed with the public key text (key confusion).
        let pem = if good == ES256_TOKEN {
            ES256_PEM
        } else {
            RS256_PEM
        };
        let confused = hs256(r#"{"sub":"7"}"#, pem);
        assert_eq!(
            rules(&check(g, &req("GET", "/x", Some(&confused), ""))),
            ["jwt.bad_signature"]
        );
    }
}

#[test]
fn token_times() {
    let mut g = guard();
    let old = token(&format!(r#"{{"sub":"7","exp":{}}}"#, NOW_S - 3600));
    let v = check(&mut g, &req("GET", "/users/7", Some(&old), ""));
    assert_eq!(rules(&v), ["jwt.expired"]);
    assert!(total(&v) < STRONG);
    // Within the default 60 s leeway.
    let just = token(&format!(r#"{{"sub":"7","exp":{}}}"#, NOW_S - 30));
    assert!(check(&mut g, &req("GET", "/users/7", Some(&just), "")).is_empty());
    let early = token(&format!(r#"{{"sub":"7","nbf":{}}}"#, NOW_S + 3600));
    assert_eq!(
        rules(&check(&mut g, &req("GET", "/users/7", Some(&early), ""))),
        ["jwt.not_yet_valid"]
    );
    let text = token(r#"{"sub":"7","exp":"tomorrow"}"#);
    assert_eq!(
        rules(&check(&mut g, &req("GET", "/users/7", Some(&text), ""))),
        ["jwt.malformed"]
    );
}

#[test]
fn malformed_tokens() {
    let mut g = guard();
    let long = "a".repeat(10_000);
    for t in [
        "abc",
        "a.b.c",
        "x.y",
        "e30.e30.e30.e30",
        long.as_str(),
        "%%%.%%%.%%%",
    ] {
        let v = check(&mut g, &req("GET", "/users/7", Some(t), ""));
        assert_eq!(rules(&v), ["jwt.malformed"], "{t}: {v:?}");
        assert!(v[0].evidence.len() <= 120);
    }
}

#[test]
fn admin_claim() {
    let mut g = guard();
    let v = check(&mut g, &req("POST", "/admin/users", Some(&user7()), ""));
    assert_eq!(rules(&v), ["authz.admin_claim"]);
    let admin = token(r#"{"sub":"1","role":"admin"}"#);
    assert!(check(&mut g, &req("POST", "/ADMIN//users", Some(&admin), "")).is_empty());
    let v = check(&mut g, &req("GET", "/admin", None, ""));
    assert_eq!(rules(&v), ["auth.missing"]);
    let v = check(&mut g, &req("GET", "/%61dmin/x", Some(&user7()), ""));
    assert_eq!(rules(&v), ["authz.admin_claim"]);
}

#[test]
fn enumeration() {
    let mut g = guard();
    let c = ip("198.51.100.9");
    for i in 0..3 {
        assert!(
            g.inspect_request(c, &req("GET", &format!("/orders/{i}"), None, ""), NOW)
                .is_empty()
        );
        // Revisiting an id is not enumeration.
        assert!(
            g.inspect_request(c, &req("GET", "/orders/0", None, ""), NOW)
                .is_empty()
        );
    }
    let v = g.inspect_request(c, &req("GET", "/orders/99", None, ""), NOW + 1);
    assert_eq!(rules(&v), ["enumeration.ids"]);
    assert!(total(&v) >= STRONG);
    // Another client is not affected; the window expires.
    assert!(check(&mut g, &req("GET", "/orders/99", None, "")).is_empty());
    assert!(
        g.inspect_request(c, &req("GET", "/orders/100", None, ""), NOW + 120_000)
            .is_empty()
    );
}

#[test]
fn route_limits() {
    let mut g = guard();
    let c = ip("203.0.113.5");
    let mut scores = Vec::new();
    for i in 0..10u64 {
        let method = if i % 2 == 0 { "POST" } else { "post" };
        let v = g.inspect_request(c, &req(method, "/login/", None, "{}"), NOW + i * 1000);
        scores.push(total(&v));
    }
    assert_eq!(scores, [0, 0, 0, 0, 0, 3, 3, 3, 3, 10]);
    // GET /login is another route (none), and a minute later the budget is back.
    assert!(
        g.inspect_request(c, &req("GET", "/login", None, ""), NOW)
            .is_empty()
    );
    assert!(
        g.inspect_request(c, &req("POST", "/login", None, "{}"), NOW + 200_000)
            .is_empty()
    );
}

#[test]
fn credential_stuffing() {
    let mut g = guard();
    let c = ip("203.0.113.7");
    let login = req("POST", "/login", None, "{}");
    let denied = Response {
        status: 401,
        ..Response::default()
    };
    for i in 0..9 {
        assert!(
            g.inspect_response(c, Some(&login), &denied, NOW + i)
                .is_empty()
        );
    }
    let v = g.inspect_response(c, Some(&login), &denied, NOW + 10);
    assert_eq!(rules(&v), ["auth.credential_stuffing"]);
    assert!(total(&v) >= STRONG);
    assert!(!is_alert_only(v[0].category));
    assert!(v[0].evidence.contains("POST /login"), "{}", v[0].evidence);
    // Successes do not count; slow failures do not add up.
    let ok = Response {
        status: 200,
        ..Response::default()
    };
    let other = ip("203.0.113.8");
    for i in 0..20 {
        assert!(g.inspect_response(other, None, &ok, NOW + i).is_empty());
        let slow = NOW + i * 120_000;
        assert!(g.inspect_response(other, None, &denied, slow).is_empty());
    }
}

/// gRPC answers with HTTP 200 and says how the call went in `grpc-status`.
fn grpc(status: &str) -> Response {
    Response {
        version: 2,
        status: 200,
        headers: vec![
            ("content-type".into(), "application/grpc".into()),
            ("grpc-status".into(), status.into()),
        ],
        ..Response::default()
    }
}

#[test]
fn grpc_unauthenticated_and_permission_denied_are_failed_attempts() {
    let mut g = guard();
    let call = req("POST", "/auth.Login/Check", None, "");
    for (n, refused) in ["16", "7", " 16 "].into_iter().enumerate() {
        let c = ip(&format!("203.0.113.{}", 20 + n));
        for i in 0..9 {
            assert!(
                g.inspect_response(c, Some(&call), &grpc(refused), NOW + i)
                    .is_empty()
            );
        }
        let v = g.inspect_response(c, Some(&call), &grpc(refused), NOW + 10);
        assert_eq!(rules(&v), ["auth.credential_stuffing"], "{refused}");
        assert!(v[0].evidence.contains("gRPC"), "{}", v[0].evidence);
    }
    // OK, NOT_FOUND, UNAVAILABLE, INTERNAL and made-up values are not.
    let c = ip("203.0.113.30");
    for i in 0..40 {
        for other in ["0", "5", "14", "13", "160", "", "unauthenticated"] {
            assert!(
                g.inspect_response(c, Some(&call), &grpc(other), NOW + i)
                    .is_empty(),
                "{other}"
            );
        }
    }
}

fn status(code: u16) -> Response {
    Response {
        status: code,
        ..Response::default()
    }
}

/// A wordlist scanner with a browser User-Agent: most of its paths do not
/// exist. It is reported before its 50th request.
#[test]
fn forced_browsing_by_status() {
    let mut g = guard();
    let c = ip("203.0.113.20");
    let words = [
        "admin", "backup", "old", "test", "dev", "tmp", "private", "staging", "db", "data",
    ];
    let mut first = None;
    for i in 0..100u64 {
        let path = format!("/{}{}", words[i as usize % words.len()], i / 10);
        let r = req("GET", &path, None, "");
        // One in ten words exists.
        let resp = status(if i % 10 == 3 { 200 } else { 404 });
        let v = g.inspect_response(c, Some(&r), &resp, NOW + i * 20);
        if !v.is_empty() && first.is_none() {
            first = Some(i);
            assert_eq!(rules(&v), ["enumeration.not_found"]);
            assert!(total(&v) >= STRONG);
            assert!(!is_alert_only(v[0].category));
            assert!(v[0].evidence.contains("404/405"), "{}", v[0].evidence);
        }
    }
    assert!(first.is_some_and(|i| i < 50), "{first:?}");
    // 405s count too: trying methods on a path.
    let c = ip("203.0.113.21");
    let hits = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        .iter()
        .flat_map(|m| (0..10).map(move |i| (*m, format!("/api/thing{i}"))))
        .enumerate()
        .filter(|(i, (m, p))| {
            !g.inspect_response(c, Some(&req(m, p, None, "")), &status(405), NOW + *i as u64)
                .is_empty()
        })
        .count();
    assert!(hits > 0);
}

/// A normal client: occasional 404s, and polling one deleted resource, are
/// never reported.
#[test]
fn occasional_not_found_is_fine() {
    let mut g = guard();
    let c = ip("203.0.113.22");
    let gone = req("GET", "/api/jobs/9f1c2a", None, "");
    for i in 0..500u64 {
        assert!(
            g.inspect_response(c, Some(&gone), &status(404), NOW + i * 100)
                .is_empty()
        );
    }
    // 30 distinct missing paths a minute (a page with broken links), for ten
    // minutes: under the default 40.
    for i in 0..300u64 {
        let r = req("GET", &format!("/static/img/missing-{i}.png"), None, "");
        assert!(
            g.inspect_response(c, Some(&r), &status(404), NOW + 60_000 + i * 2_000)
                .is_empty(),
            "{i}"
        );
    }
    // Unpaired answers never add up.
    let d = ip("203.0.113.23");
    for i in 0..100u64 {
        assert!(
            g.inspect_response(d, None, &status(404), NOW + i)
                .is_empty()
        );
    }
}

/// Guessing ids of one route: fewer paths, one template.
#[test]
fn id_guessing_by_status() {
    let mut g = guard();
    let c = ip("203.0.113.24");
    let v: Vec<Vec<Violation>> = (0..25u64)
        .map(|i| {
            let r = req("GET", &format!("/invoices/{}", 1000 + i * 7), None, "");
            g.inspect_response(c, Some(&r), &status(404), NOW + i)
        })
        .collect();
    assert!(v[..20].iter().all(Vec::is_empty));
    assert_eq!(rules(&v[20]), ["enumeration.not_found"]);
    assert!(
        v[20][0].evidence.contains("/invoices/{id}"),
        "{}",
        v[20][0].evidence
    );
    // Switched off: nothing.
    let p: ApiPolicy =
        serde_yaml_ng::from_str("checks: {forced_browsing: {enabled: false}}").unwrap();
    let mut g = ApiGuard::new(&p, None).unwrap();
    for i in 0..100u64 {
        let r = req("GET", &format!("/w{i}"), None, "");
        assert!(
            g.inspect_response(c, Some(&r), &status(404), NOW + i)
                .is_empty()
        );
    }
}

/// sqlmap's first probe breaks the query and the server answers with the
/// database's error: the leak scores against the client, more when its
/// request looked like an injection.
#[test]
fn leaked_errors_score_the_client() {
    let sqlite = Response {
        status: 500,
        body: br#"{"error":"near \")\": syntax error"}"#.to_vec(),
        ..Response::default()
    };
    let leak = |v: &[Violation]| {
        v.iter()
            .filter(|x| x.rule == "sqli.error_response")
            .map(|x| x.score)
            .sum::<u32>()
    };
    // A clean request (a buggy endpoint): an alert's worth.
    let mut g = guard();
    let c = ip("198.51.100.30");
    let clean = req("GET", "/items?id=12", None, "");
    assert!(g.inspect_request(c, &clean, NOW).is_empty());
    let v = g.inspect_response(c, Some(&clean), &sqlite, NOW + 5);
    assert_eq!(leak(&v), 3);
    assert!(
        v.iter()
            .any(|x| x.rule == "exposure.stack_trace" && is_alert_only(x.category))
    );
    // The probe `1.')"(.,)(.` breaks out of quotes and brackets: more.
    let c = ip("198.51.100.31");
    let probe = req("GET", "/items?id=1.%27)%22(.,)(.", None, "");
    g.inspect_request(c, &probe, NOW);
    assert_eq!(
        leak(&g.inspect_response(c, Some(&probe), &sqlite, NOW + 5)),
        6
    );
    // A request a detector flagged: a ban on its own.
    let c = ip("198.51.100.32");
    g.note_injection(c, NOW);
    assert_eq!(leak(&g.inspect_response(c, None, &sqlite, NOW + 5)), STRONG);
    // Long after: back to the error alone.
    assert_eq!(leak(&g.inspect_response(c, None, &sqlite, NOW + 60_000)), 3);
    // JSON bodies are all quotes: not a breakout by themselves.
    let c = ip("198.51.100.33");
    let json = req("POST", "/items", None, r#"{"name":"O'Brien (senior"}"#);
    g.inspect_request(c, &json, NOW);
    assert_eq!(
        leak(&g.inspect_response(c, Some(&json), &sqlite, NOW + 5)),
        3
    );
    // Switched off: the server's part still alerts, the client is not scored.
    let p: ApiPolicy = serde_yaml_ng::from_str("checks: {error_leak: {enabled: false}}").unwrap();
    let mut g = ApiGuard::new(&p, None).unwrap();
    g.note_injection(c, NOW);
    assert_eq!(
        rules(&g.inspect_response(c, None, &sqlite, NOW + 5)),
        ["exposure.stack_trace"]
    );
}

#[test]
fn exposures_are_alert_only() {
    let mut g = guard();
    let body = r#"{"id":7,"card":"4111 1111 1111 1111","password":"hunter2","key":"AKIAIOSFODNN7EXAMPLE"}"#;
    let resp = Response {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
        ..Response::default()
    };
    let v = g.inspect_response(ip("192.0.2.1"), None, &resp, NOW);
    assert_eq!(
        rules(&v),
        ["exposure.card", "exposure.cloud_key", "exposure.password"]
    );
    for x in &v {
        assert!(is_alert_only(x.category));
        assert_eq!(x.location, Location::ResponseBody);
        assert!(
            !x.evidence.contains("hunter2")
                && !x.evidence.contains("4111 1111 1111")
                && !x.evidence.contains("IOSF")
        );
    }
    // Compressed or binary bodies are not read.
    let mut gz = resp.clone();
    gz.headers.push(("Content-Encoding".into(), "gzip".into()));
    assert!(
        g.inspect_response(ip("192.0.2.1"), None, &gz, NOW)
            .is_empty()
    );
    let trace = Response {
        status: 500,
        body: b"Traceback (most recent call last):\n  File \"/app/x.py\"".to_vec(),
        ..Response::default()
    };
    // The server's part alerts; the client's part scores low on its own.
    let v = g.inspect_response(ip("192.0.2.1"), None, &trace, NOW);
    assert_eq!(
        rules(&v),
        ["protocol.error_response", "exposure.stack_trace"]
    );
    assert!(!is_alert_only(v[0].category) && v[0].score < 3);
    let benign = Response {
        status: 200,
        body: br#"{"order_id":"4111111111111112","text":"Reset your password here"}"#.to_vec(),
        ..Response::default()
    };
    assert!(
        g.inspect_response(ip("192.0.2.1"), None, &benign, NOW)
            .is_empty()
    );
}

#[test]
fn mass_assignment() {
    let mut g = guard();
    let t = user7();
    for body in [
        r#"{"name":"x","role":"admin"}"#,
        r#"{"profile":{"Is_Admin":true}}"#,
        r#"[{"name":"x"},{"role":"admin"}]"#,
    ] {
        let v = check(&mut g, &req("PUT", "/users/7", Some(&t), body));
        assert_eq!(rules(&v), ["mass_assignment.forbidden"], "{body}: {v:?}");
    }
    let mut form = req("PUT", "/users/7", Some(&t), "name=x&user%5Brole%5D=admin");
    form.headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
    assert_eq!(rules(&check(&mut g, &form)), ["mass_assignment.forbidden"]);
    // Values that merely mention the word are fine.
    let ok = check(
        &mut g,
        &req("PUT", "/users/7", Some(&t), r#"{"bio":"my role is admin"}"#),
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn openapi_inventory_and_schema() {
    let p: ApiPolicy = serde_yaml_ng::from_str(POLICY).unwrap();
    let mut g = ApiGuard::new(&p, Some(super::openapi::tests::DOC)).unwrap();
    let t = user7();
    assert!(check(&mut g, &req("GET", "/users/7", Some(&t), "")).is_empty());
    let v = check(&mut g, &req("GET", "/internal/metrics", None, ""));
    assert_eq!(rules(&v), ["inventory.unknown_endpoint"]);
    assert!(total(&v) < STRONG);
    // Known path, undocumented method.
    let v = check(&mut g, &req("PATCH", "/users/7", Some(&t), ""));
    assert_eq!(
        rules(&v),
        ["protocol.method_not_allowed", "inventory.unknown_endpoint"]
    );
    let v = check(
        &mut g,
        &req(
            "PUT",
            "/users/7",
            Some(&t),
            r#"{"name":"a","email":"b","credit":100}"#,
        ),
    );
    assert_eq!(rules(&v), ["mass_assignment.unknown_property"]);
    assert!(v[0].evidence.contains("credit"));
    assert!(check(&mut g, &req("PUT", "/users/7", Some(&t), r#"{"name":"a"}"#)).is_empty());
    // Open schemas (login) accept anything.
    assert!(
        check(
            &mut g,
            &req("POST", "/login", None, r#"{"user":"a","x":1}"#)
        )
        .is_empty()
    );
    assert_eq!(
        g.route_of(&req("GET", "/users/me", None, "")),
        "GET /users/{id}/**"
    );
    assert_eq!(
        g.route_of(&req("GET", "/files/a.json", None, "")),
        "GET /files/{name}.json"
    );
}

#[test]
fn methods_not_allowed() {
    let mut g = guard();
    let t = user7();
    let v = check(&mut g, &req("DELETE", "/users/7", Some(&t), ""));
    assert_eq!(rules(&v), ["protocol.method_not_allowed"]);
    assert_eq!(v[0].category, Category::Protocol);
    for m in ["GET", "get", "HEAD", "PUT"] {
        assert!(
            check(&mut g, &req(m, "/users/7", Some(&t), "")).is_empty(),
            "{m}"
        );
    }
}

#[test]
fn route_of() {
    let g = guard();
    assert_eq!(
        g.route_of(&req("get", "/users/8/", None, "")),
        "GET /users/{id}/**"
    );
    assert_eq!(g.route_of(&req("POST", "/login", None, "")), "POST /login");
    assert_eq!(g.route_of(&req("GET", "/login", None, "")), "GET /login");
    assert_eq!(
        g.route_of(&req("GET", "/items/123/x", None, "")),
        "GET /items/{id}/x"
    );
}

#[test]
fn switches_and_weights() {
    let mut p: ApiPolicy = serde_yaml_ng::from_str(POLICY).unwrap();
    p.checks.authz.enabled = false;
    p.checks.jwt.weight = 50;
    let mut g = ApiGuard::new(&p, None).unwrap();
    assert!(check(&mut g, &req("GET", "/users/8", Some(&user7()), "")).is_empty());
    let t = unsigned(r#"{"alg":"none"}"#, r#"{"sub":"8"}"#);
    let v = check(&mut g, &req("GET", "/users/8", Some(&t), ""));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].score, STRONG / 2);
}

#[test]
fn rules_are_documented() {
    let doc = include_str!("../../../../docs/api-rules.md");
    for r in RULES {
        assert!(
            doc.contains(&format!("`{}`", r.id)),
            "{} missing from docs/api-rules.md",
            r.id
        );
        assert!(doc.contains(&format!("| {} |", r.score)), "{}", r.id);
    }
    let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), RULES.len());
}

#[test]
fn hostile_inputs_do_not_panic() {
    let mut g = ApiGuard::new(
        &serde_yaml_ng::from_str(POLICY).unwrap(),
        Some(super::openapi::tests::DOC),
    )
    .unwrap();
    let deep = "[".repeat(5000);
    let nested = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    for (path, body) in [
        ("/users/%ff%fe/..%2f..%2f", deep.as_str()),
        ("/users/7", nested.as_str()),
        ("/\u{00e9}/\u{1F600}", "\u{0}"),
        (&"/a".repeat(5000), "{}"),
    ] {
        let mut r = req("PUT", "/", Some("\u{00e9}.\u{00e9}.\u{00e9}"), body);
        r.path = path.to_owned();
        let _ = g.inspect_request(ip("::1"), &r, NOW);
        let _ = g.route_of(&r);
        let resp = Response {
            body: body.as_bytes().to_vec(),
            ..Response::default()
        };
        let _ = g.inspect_response(ip("::1"), Some(&r), &resp, 0);
    }
}

#[test]
fn several_tokens_are_ambiguous() {
    let mut g = guard();
    let mut r = req("GET", "/users/7", Some(&user7()), "");
    r.headers.push((
        "authorization".into(),
        format!("Bearer {}", token(r#"{"sub":"8"}"#)),
    ));
    let v = check(&mut g, &r);
    assert_eq!(rules(&v), ["jwt.malformed"], "{v:?}");
    // The same token twice is fine.
    let mut r = req("GET", "/users/7", Some(&user7()), "");
    r.headers
        .push(("Authorization".into(), format!("Bearer {}", user7())));
    assert!(check(&mut g, &r).is_empty());
}

#[test]
fn truncated_json_bodies() {
    let mut g = guard();
    let mut r = req(
        "PUT",
        "/users/7",
        Some(&user7()),
        r#"{"name":"x","role":"admin","bio":"aaaa"#,
    );
    r.truncated = true;
    assert_eq!(rules(&check(&mut g, &r)), ["mass_assignment.forbidden"]);
}

#[test]
fn guard_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ApiGuard>();
    let mut g = guard();
    check(&mut g, &req("GET", "/orders/1", None, ""));
    assert_eq!(g.tracked_clients(), 1);
}

#[test]
fn cors_preflight_and_opaque_tokens() {
    let mut g = guard();
    let mut pre = req("OPTIONS", "/users/8", None, "");
    pre.headers
        .push(("Access-Control-Request-Method".into(), "PUT".into()));
    assert!(check(&mut g, &pre).is_empty());
    // A plain OPTIONS is not a preflight.
    let v = check(&mut g, &req("OPTIONS", "/users/8", None, ""));
    assert_eq!(rules(&v), ["auth.missing", "protocol.method_not_allowed"]);
    // Without keys, opaque tokens pass where no claims are needed, not where they are.
    let p: ApiPolicy = serde_yaml_ng::from_str(
        "routes: [{path: '/users/{id}', bind: {param: id, claim: sub}}, {path: /items, auth: required}]",
    )
    .unwrap();
    let mut open = ApiGuard::new(&p, None).unwrap();
    assert!(check(&mut open, &req("GET", "/items", Some("opaque123"), "")).is_empty());
    assert!(check(&mut open, &req("GET", "/other", Some("opaque123"), "")).is_empty());
    let v = check(&mut open, &req("GET", "/users/8", Some("opaque123"), ""));
    assert_eq!(rules(&v), ["jwt.malformed"]);
    // With keys configured, every token must be a JWT.
    assert_eq!(
        rules(&check(&mut g, &req("GET", "/other", Some("opaque123"), ""))),
        ["jwt.malformed"]
    );
}

#[test]
fn default_enumeration_on_folded_templates() {
    let mut p: ApiPolicy = serde_yaml_ng::from_str(POLICY).unwrap();
    p.checks.enumeration_default = Some(EnumerationSpec {
        max_ids: 3,
        window: "1m".into(),
        param: None,
    });
    let mut g = ApiGuard::new(&p, None).unwrap();
    let c = ip("198.51.100.20");
    for i in 0..3 {
        let r = req("GET", &format!("/invoices/{i}/pdf"), None, "");
        assert!(g.inspect_request(c, &r, NOW).is_empty());
        // Another template has its own count.
        let r = req("GET", &format!("/shops/{i}"), None, "");
        assert!(g.inspect_request(c, &r, NOW).is_empty());
    }
    let v = g.inspect_request(c, &req("GET", "//invoices/77/pdf/", None, ""), NOW);
    assert_eq!(rules(&v), ["enumeration.ids"]);
    assert!(
        v[0].evidence.contains("/invoices/{id}/pdf"),
        "{}",
        v[0].evidence
    );
    // Words are not ids.
    assert!(
        g.inspect_request(c, &req("GET", "/invoices/list/pdf", None, ""), NOW)
            .is_empty()
    );
    // Forgetting the client resets it.
    g.forget(c);
    assert!(
        g.inspect_request(c, &req("GET", "/invoices/78/pdf", None, ""), NOW)
            .is_empty()
    );
}
