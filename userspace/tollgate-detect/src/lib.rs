//! Tollgate's detection engine (pure: no I/O, no kernel, no async runtime).
//!
//! Modules:
//! - [`http`]: incremental HTTP/1.x request/response parsing of untrusted bytes, as
//!   lenient as common servers: the one parser of the agent and of `tollgate detect`.
//! - [`h2`]: HTTP/2 connections (h2c, and h2 from TLS plaintext) decoded in order,
//!   HPACK per direction, into the same [`Request`] and [`Response`].
//! - [`template`]: folding identifier path segments into `{id}`.
//! - [`decode`]: bounded normalization (percent, HTML entities, JS escapes, overlong UTF-8).
//! - [`detect`]: the [`Engine`], its detectors (SQLi, XSS, command injection,
//!   traversal, SSRF, JNDI, scanners, smuggling/protocol) and the [`DetectConfig`] policy.
//! - [`graphql`]: GraphQL requests parsed (`apollo-parser`) and judged: shape
//!   limits, introspection, batched attempts, inputs named after their argument.
//! - [`eval`]: labelled-corpus evaluation producing a [`eval::Report`].
//! - [`api`]: the stateful OWASP API Top 10 layer: the [`ApiGuard`] checks
//!   credentials, JWTs, object-level authorization, enumeration, mass assignment,
//!   route limits, credential stuffing, response exposures and the OpenAPI inventory
//!   per client, against an [`ApiPolicy`].
//!
//! [`fuzz_one`] is the entry point for fuzzers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// A substring searcher for a constant needle, built once per call site.
/// (`memchr::memmem::find` builds a new searcher on every call, which costs more
/// than the search itself on the short values the detectors see.)
macro_rules! finder {
    ($needle:expr) => {{
        static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new($needle));
        &*FINDER
    }};
}

pub mod api;
pub mod decode;
pub mod detect;
pub mod eval;
pub mod graphql;
pub mod h2;
mod hpack_prepass;
pub mod http;
pub mod template;

pub use api::{ApiGuard, ApiPolicy, ApiPolicyError, ApiRule, is_alert_only};
pub use detect::{
    Action, Category, DetectConfig, DetectorConfig, Engine, Location, ProtoMessage, ProtoMethod,
    ProtoSchema, UNPARSEABLE, Violation,
};
pub use http::{
    BodyRest, ChunkCursor, HTTP_09, HttpError, Kind, MAX_BODY_BYTES, MAX_HEADER_BYTES, Parsed,
    Request, Response, classify, parse_request, parse_request_final, parse_request_streaming,
    parse_request_waiting, parse_response, parse_response_waiting,
};
pub use template::path_template;

/// Parses `data` as a request stream and as a response, and runs the default engine
/// and an [`ApiGuard`] on every parsed request (and the guard on the response). Must never panic whatever the input.
pub fn fuzz_one(data: &[u8]) {
    let _ = classify(data);
    // Building the matchers dominates a single run; build them once per process.
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        Engine::new(DetectConfig::default()).with_graphql(graphql::GraphqlConfig::default())
    });
    thread_local! {
        // The API guard is stateful (&mut): one per fuzzing thread, with a policy that
        // reaches every check.
        static GUARD: std::cell::RefCell<Option<ApiGuard>> =
            std::cell::RefCell::new(fuzz_api_guard());
    }
    let client = std::net::IpAddr::from([192, 0, 2, data.len().to_le_bytes()[0]]);
    let mut rest = data;
    let mut last = None;
    // Pipelined requests; bounded because every step consumes at least one byte.
    loop {
        let (msg, consumed) = match parse_request(rest) {
            Ok(Parsed::Complete { msg, consumed }) => (msg, consumed),
            Ok(Parsed::Partial) => break,
            // What the agent reports as `protocol.unparseable`.
            Err(e) => (Request::unparseable(rest, e), rest.len()),
        };
        let v = engine.inspect_request(&msg);
        let _ = engine.verdict(&v);
        let _ = path_template(&msg.path);
        GUARD.with_borrow_mut(|g| {
            if let Some(g) = g {
                let _ = g.inspect_request(client, &msg, data.len() as u64);
                let _ = g.route_of(&msg);
            }
        });
        last = Some(msg);
        if consumed == 0 || consumed > rest.len() {
            break;
        }
        rest = &rest[consumed..];
    }
    if let Ok(Parsed::Complete { msg, .. }) = parse_response(data, false) {
        GUARD.with_borrow_mut(|g| {
            if let Some(g) = g {
                let _ = g.inspect_response(client, last.as_ref(), &msg, 0);
            }
        });
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = decode::normalize(s, true);
    }
}

/// The API guard [`fuzz_one`] drives: every route feature, a key and an OpenAPI
/// document, so that fuzzing reaches the JWT, body and inventory code.
fn fuzz_api_guard() -> Option<ApiGuard> {
    const POLICY: &str = r#"
auth: { keys: [{ alg: HS256, secret: fuzz }], cookie: session }
routes:
  - { path: POST /login, limit: { requests: 2, per: 1m } }
  - path: /users/{id}/**
    methods: [GET, PUT]
    bind: { param: id, claim: sub }
    admin_claim: { claim: role, value: admin }
    enumeration: { max_ids: 3, window: 1m }
    forbidden_fields: [role]
"#;
    const OPENAPI: &str = r#"{"openapi":"3.0.0","paths":{"/users/{id}":{"put":{"requestBody":
        {"content":{"application/json":{"schema":{"additionalProperties":false,
        "properties":{"name":{}}}}}}}}}}"#;
    let policy: ApiPolicy = serde_yaml_ng::from_str(POLICY).ok()?;
    ApiGuard::new(&policy, Some(OPENAPI)).ok()
}

#[cfg(test)]
mod tests {
    use super::fuzz_one;

    #[test]
    fn fuzz_guard_builds() {
        assert!(super::fuzz_api_guard().is_some());
    }

    /// Cheap stand-in for the fuzzer: adversarial shapes and pseudo-random bytes.
    #[test]
    fn fuzz_one_never_panics() {
        let fixed: &[&[u8]] = &[
            b"",
            b"GET",
            b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"GET /%%%25%u12%c0%\xff\xfe HTTP/1.1\r\nCookie: =;;=\r\n\r\n",
            b"GET /?a=${${${${${${${${${${${ HTTP/1.1\r\nUser-Agent: ${jndi:${lower:${upper:}}}\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n[[[[[[[[[[[[[[[[[[[[",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"\x16\x03\x01\x00",
            b"PUT /users/8 HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOjd9.\r\nContent-Length: 26\r\n\r\n{\"role\":\"admin\",\"x\":[[{}]]}",
            b"GET /users/%2e%2e/8 HTTP/1.1\r\nCookie: session=a.b.c\r\nAuthorization: Bearer \xff.\xfe.\r\n\r\n",
            b"HTTP/1.1 401 No\r\nContent-Length: 40\r\n\r\n4111 1111 1111 1111 \"password\": \"x\" AKIA",
            b"POST /graphql HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"query\":\"{{{{...A} fragment A on Q {...A\\u00",
            b"GET /graphql?query=%7Ba(x:%22%5Cu%22)%7B%7B%7B&variables=%7B%22a%22:%7B%22$ne%22:1%7D%7D HTTP/1.1\r\n\r\n",
        ];
        for f in fixed {
            fuzz_one(f);
        }
        // xorshift: deterministic pseudo-random inputs around an HTTP skeleton.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"GET /?=&%;'\"<>()$`|{}\\\r\n :.-_0123456789abcdefXYZ\x00\xc0\xaf\xff";
        for _ in 0..2000 {
            let mut buf = b"GET /".to_vec();
            for _ in 0..(x % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            buf.extend_from_slice(b" HTTP/1.1\r\nX-A: ");
            buf.extend_from_slice(&buf.clone()[5..]);
            buf.extend_from_slice(b"\r\n\r\n");
            fuzz_one(&buf);
        }
    }
}
