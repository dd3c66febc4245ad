//! Tollgate's detection engine (pure: no I/O, no kernel, no async runtime).
//!
//! Modules:
//! - [`http`]: incremental HTTP/1.x request/response parsing of untrusted bytes.
//! - [`template`]: folding identifier path segments into `{id}`.
//! - [`decode`]: bounded normalization (percent, HTML entities, JS escapes, overlong UTF-8).
//! - [`detect`]: the [`Engine`], its detectors (SQLi, XSS, command injection,
//!   traversal, SSRF, JNDI, scanners, smuggling/protocol) and the [`DetectConfig`] policy.
//! - [`eval`]: labelled-corpus evaluation producing a [`eval::Report`].
//!
//! [`fuzz_one`] is the entry point for fuzzers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod decode;
pub mod detect;
pub mod eval;
pub mod http;
pub mod template;

pub use detect::{Action, Category, DetectConfig, DetectorConfig, Engine, Location, Violation};
pub use http::{
    HttpError, Kind, Parsed, Request, Response, looks_like_http, parse_request, parse_response,
};
pub use template::path_template;

/// Parses `data` as a request stream and as a response, and runs the default engine
/// on every parsed request. Must never panic whatever the input.
pub fn fuzz_one(data: &[u8]) {
    let _ = looks_like_http(data);
    let engine = Engine::new(DetectConfig::default());
    let mut rest = data;
    // Pipelined requests; bounded because every step consumes at least one byte.
    while let Ok(Parsed::Complete { msg, consumed }) = parse_request(rest) {
        let v = engine.inspect_request(&msg);
        let _ = engine.verdict(&v);
        let _ = path_template(&msg.path);
        if consumed == 0 || consumed > rest.len() {
            break;
        }
        rest = &rest[consumed..];
    }
    let _ = parse_response(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = decode::normalize(s, true);
    }
}
