//! Protocol abuse beyond framing (see `smuggling.rs`): line breaks and NULs
//! injected through the URL, headers and cookies (response splitting, header
//! injection, PHP-FPM path injection, truncation), overlong and invalid percent
//! encodings, ambiguous or evasive charsets, Range abuse, a non-token method,
//! RFC 2109 cookies smuggling cookies, chunked GETs, LDAP filter injection
//! (CRS files it with the protocol attacks), and bytes sent to an API port that
//! are not HTTP at all (`protocol.unparseable`).

use super::rules;
use super::{Category, Input, Location, STRONG, Sink};
use crate::http::Request;

/// Charsets that hide payloads from byte-oriented filters (UTF-7, EBCDIC, UTF-32).
const EVASIVE_CHARSETS: &[&str] = &[
    "utf-7", "utf7", "utf-32", "utf32", "cp037", "cp500", "cp875", "cp1026",
];

/// Charsets every API accepts.
const COMMON_CHARSETS: &[&str] = &[
    "utf-8",
    "utf8",
    "us-ascii",
    "ascii",
    "iso-8859-1",
    "iso-8859-15",
    "latin1",
    "windows-1252",
    "utf-16",
    "utf-16le",
    "utf-16be",
];

/// Rule of a request that could not be parsed.
pub const UNPARSEABLE: &str = rules::PROTOCOL_UNPARSEABLE;

/// Its score: enough to alert, not to ban on its own (a ban needs what the
/// injection detectors find in its bytes as well). The agent does not add it to
/// the client's score either, so repeated broken requests alert without banning.
const UNPARSEABLE_SCORE: u32 = 3;

pub(crate) fn check_request(req: &Request, sink: &mut Sink<'_>) {
    let rl = Location::Request;
    if let Some(why) = &req.malformed {
        // A stand-in for bytes that are not HTTP/1.x: the server answers them with
        // an error at best, or parses them differently from us at worst (request
        // smuggling, parser differentials). Its target and body are the raw bytes,
        // which the other detectors inspect as usual; the request line checks below
        // do not apply to a line that is not one.
        // The error and the line it is about (control bytes escaped in evidence).
        let what = if req.method.is_empty() {
            format!("{why}: {}", req.target)
        } else {
            format!("{why}: {} {}", req.method, req.target)
        };
        sink.push(
            UNPARSEABLE,
            Category::Protocol,
            UNPARSEABLE_SCORE,
            &rl,
            &what,
            0,
        );
        return;
    }
    // Real methods are words (`GET`, `M-SEARCH`, `VERSION-CONTROL`); symbols in
    // the method (`|GET`) probe request-line parsing differences.
    if req
        .method
        .bytes()
        .any(|c| !(c.is_ascii_alphabetic() || c == b'-' || c == b'_'))
    {
        sink.push(
            rules::PROTOCOL_BAD_METHOD,
            Category::Protocol,
            STRONG,
            &rl,
            &req.method,
            0,
        );
    }
    if req.target.contains('#') {
        // Clients strip fragments; only hand-made requests send them.
        sink.push(
            rules::PROTOCOL_FRAGMENT,
            Category::Protocol,
            3,
            &rl,
            &req.target,
            0,
        );
    }
    let raw_url = req.query.as_deref().unwrap_or("");
    for (s, loc) in [
        (req.path.as_str(), Location::Path),
        (raw_url, Location::Query),
    ] {
        if let Some((sc, p)) = bad_encoding(s) {
            sink.push(rules::PROTOCOL_ENCODING, Category::Protocol, sc, &loc, s, p);
        }
    }
    // The decoder drops NULs, so look for them encoded in the raw URL and headers.
    let nul = |s: &str| {
        let b = s.as_bytes();
        memchr::memchr_iter(b'%', b).find(|p| b.get(p + 1..p + 3) == Some(b"00"))
    };
    for (s, loc) in [
        (req.path.as_str(), Location::Path),
        (raw_url, Location::Query),
    ] {
        if let Some(p) = nul(s) {
            sink.push(
                rules::PROTOCOL_NULL_BYTE,
                Category::Protocol,
                STRONG,
                &loc,
                s,
                p,
            );
        }
    }
    for (name, value) in &req.headers {
        if let Some(p) = nul(value) {
            sink.push(
                rules::PROTOCOL_NULL_BYTE,
                Category::Protocol,
                STRONG,
                &Location::Header(name.clone()),
                value,
                p,
            );
        }
    }
    let mut ranges_seen = false;
    for (name, value) in &req.headers {
        let n = name.trim();
        if n.eq_ignore_ascii_case("content-type") {
            content_type(value, &req.body, sink);
        } else if n.eq_ignore_ascii_case("range") || n.eq_ignore_ascii_case("request-range") {
            let count = value.split(',').filter(|r| !r.trim().is_empty()).count();
            let obsolete = n.eq_ignore_ascii_case("request-range");
            // Many (overlapping) ranges make the server build a huge multipart
            // response (CVE-2011-3192); `Request-Range` is the obsolete spelling
            // only that attack tooling still sends.
            let sc = match (count, obsolete) {
                (20.., _) | (6.., true) => STRONG,
                (6.., false) => 8,
                (_, true) => 6,
                _ => 0,
            };
            if sc > 0 && !ranges_seen {
                ranges_seen = true;
                sink.push(
                    rules::PROTOCOL_RANGE,
                    Category::Protocol,
                    sc,
                    &Location::Header(name.clone()),
                    value,
                    0,
                );
            }
        } else if n.eq_ignore_ascii_case("cookie") && value.trim_start().starts_with("$Version") {
            // RFC 2109 quoting lets one quoted value hide more cookies from a
            // filter that splits on `;` while the application parses them.
            let smuggled = value.split('"').nth(1).is_some_and(|q| q.contains(';'));
            let sc = if smuggled { STRONG } else { 5 };
            sink.push(
                rules::PROTOCOL_COOKIE_SMUGGLING,
                Category::Protocol,
                sc,
                &Location::Cookie,
                value,
                0,
            );
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            && (req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD"))
        {
            sink.push(
                rules::PROTOCOL_GET_BODY,
                Category::Protocol,
                STRONG,
                &Location::Header(name.clone()),
                value,
                0,
            );
        }
    }
}

/// Per extracted input: line breaks, NULs and control characters outside bodies,
/// and LDAP filter injection in values.
pub(crate) fn check_inputs(inputs: &[Input], sink: &mut Sink<'_>) {
    for inp in inputs {
        let t = inp.text.as_ref();
        let b = t.as_bytes();
        if inp.is_value
            && memchr::memchr(b')', b).is_some()
            && let Some(p) = ldap_injection(b)
        {
            {
                sink.push(
                    rules::PROTOCOL_LDAP_INJECTION,
                    Category::Protocol,
                    STRONG,
                    &inp.location,
                    t,
                    p,
                );
            }
        }
        if matches!(inp.location, Location::Body | Location::Protobuf(_))
            || !b.iter().any(|c| *c < 0x20 && *c != b'\t')
        {
            continue;
        }
        if let Some(p) = memchr::memchr(0, b) {
            // Truncates paths and strings in C-based back ends.
            sink.push(
                rules::PROTOCOL_NULL_BYTE,
                Category::Protocol,
                STRONG,
                &inp.location,
                t,
                p,
            );
        }
        if let Some(p) = memchr::memchr2(b'\r', b'\n', b) {
            let header_like = header_follows(&t[p..]);
            // A line break in a parameter or cookie name, or in the path, has no
            // benign reading (`parameter%0d%0a=`, `PHP_VALUE%0a...`).
            let name = !inp.is_value && matches!(inp.location, Location::Query | Location::Cookie);
            let sc = if name || matches!(inp.location, Location::Path) || header_like {
                STRONG
            } else if matches!(inp.location, Location::Header(_)) {
                2
            } else {
                4
            };
            sink.push(
                rules::PROTOCOL_CRLF,
                Category::Protocol,
                sc,
                &inp.location,
                t,
                p,
            );
        }
        if let Some(p) = b
            .iter()
            .position(|c| *c < 0x20 && !matches!(c, b'\t' | b'\r' | b'\n' | 0))
        {
            sink.push(
                rules::PROTOCOL_CONTROL_CHAR,
                Category::Protocol,
                5,
                &inp.location,
                t,
                p,
            );
        }
    }
}

/// After a line break: more breaks or blanks, then a header (`Name:`) or markup
/// (a second response body).
fn header_follows(s: &str) -> bool {
    let rest = s.trim_start_matches(['\r', '\n', ' ', '\t']);
    if rest.starts_with('<') {
        return s.contains("\n\r\n") || s.contains("\n\n") || s.contains("\r\r");
    }
    let n = rest
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        .count();
    n > 1
        && rest[n..]
            .trim_start_matches(['\r', '\n', ' ', '\t'])
            .starts_with(':')
}

/// `)(uid=*`, `)(&(objectClass=`, `)(|(password=*`, `) ( & `: a value closing
/// the application's LDAP filter and opening its own.
fn ldap_injection(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = memchr::memchr(b')', &b[from..]) {
        let at = from + p;
        from = at + 1;
        let mut i = at + 1;
        let skip = |i: &mut usize| {
            while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n') {
                *i += 1;
            }
        };
        skip(&mut i);
        if b.get(i) != Some(&b'(') {
            continue;
        }
        i += 1;
        skip(&mut i);
        if matches!(b.get(i), Some(b'&' | b'|' | b'!')) {
            return Some(at);
        }
        let n = b[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'.')
            .count();
        // LDAP attribute names (`cn`, `uid`, `objectClass`), not `f(x)(y=1)`.
        if n < 2 {
            continue;
        }
        let op = &b[i + n..];
        if op.starts_with(b"=")
            || op.starts_with(b"~=")
            || op.starts_with(b">=")
            || op.starts_with(b"<=")
        {
            return Some(at);
        }
    }
    None
}

/// Raw URL part: overlong UTF-8 (`%c0%af`), bytes that cannot start UTF-8
/// (`%f5`..), IIS `%u` escapes and malformed escapes.
fn bad_encoding(s: &str) -> Option<(u32, usize)> {
    let b = s.as_bytes();
    let mut worst: Option<(u32, usize)> = None;
    let mut from = 0;
    while let Some(p) = memchr::memchr(b'%', &b[from..]) {
        let at = from + p;
        from = at + 1;
        let h = |i: usize| b.get(i).and_then(|c| (*c as char).to_digit(16));
        let sc = match (h(at + 1), h(at + 2)) {
            (Some(hi), Some(lo)) => {
                let v = hi * 16 + lo;
                let next = (b.get(at + 3) == Some(&b'%'))
                    .then(|| h(at + 4).zip(h(at + 5)).map(|(a, c)| a * 16 + c))
                    .flatten();
                match v {
                    // Overlong two-byte forms, and three/four-byte forms whose
                    // continuation marks them overlong.
                    0xc0 | 0xc1 => STRONG,
                    0xe0 if next.is_some_and(|n| n < 0xa0) => STRONG,
                    0xf0 if next.is_some_and(|n| n < 0x90) => STRONG,
                    0xf5..=0xff => 6,
                    _ => 0,
                }
            }
            _ if matches!(b.get(at + 1), Some(b'u' | b'U')) => 6,
            // `99%` and `%t` in hand-typed URLs: malformed, rarely hostile.
            _ => 2,
        };
        if sc > worst.map_or(0, |w| w.0) {
            worst = Some((sc, at));
        }
    }
    worst
}

/// Several charsets, evasive charsets, and a boundary on a non-multipart type.
fn content_type(value: &str, body: &[u8], sink: &mut Sink<'_>) {
    let lower = value.to_ascii_lowercase();
    let loc = Location::Header("Content-Type".into());
    let charsets: Vec<&str> = lower
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .map(|c| c.trim().trim_matches(['"', '\'']))
        .collect();
    let sc = if charsets.len() > 1 {
        STRONG
    } else if let Some(c) = charsets.first() {
        charset_score(c)
    } else {
        0
    };
    if sc > 0 {
        sink.push(
            rules::PROTOCOL_CHARSET,
            Category::Protocol,
            sc,
            &loc,
            value,
            0,
        );
    }
    if lower.starts_with("multipart/") {
        // Part headers and the `_charset_` field choose a charset per part.
        let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]).to_ascii_lowercase();
        let mut worst = 0;
        for part in text.split("charset=").skip(1) {
            let c = part.split(['\r', '\n', ';', ' ']).next().unwrap_or("");
            worst = worst.max(charset_score(c.trim_matches(['"', '\''])));
        }
        if let Some(p) = text.find("name=\"_charset_\"") {
            let v = text[p..]
                .split("\r\n\r\n")
                .nth(1)
                .and_then(|v| v.lines().next())
                .unwrap_or("");
            worst = worst.max(charset_score(v.trim()));
        }
        if worst > 0 {
            sink.push(
                rules::PROTOCOL_CHARSET,
                Category::Protocol,
                worst,
                &Location::Body,
                value,
                0,
            );
        }
    } else if lower.contains("boundary=") {
        sink.push(
            rules::PROTOCOL_CONTENT_TYPE,
            Category::Protocol,
            6,
            &loc,
            value,
            0,
        );
    }
}

fn charset_score(c: &str) -> u32 {
    if c.is_empty() || COMMON_CHARSETS.contains(&c) {
        0
    } else if EVASIVE_CHARSETS.contains(&c) || c.starts_with("ibm") || c.starts_with("ebcdic") {
        STRONG
    } else {
        4
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::tests::run;
    use crate::detect::{Action, Category};

    #[test]
    fn attacks() {
        for raw in [
            "GET / HTTP/1.1\r\nSomeHeader: Headerdata%0dInjectedHeader: response_splitting_code\r\n\r\n",
            "GET /get?parameter%0d%0a=test HTTP/1.1\r\n\r\n",
            "GET /get?x=a&%0d%0aRemote-addr%0d%0d%0d:%20foo.bar.com HTTP/1.1\r\n\r\n",
            "GET /index.php/PHP_VALUE%0Asession.auto_start=1;;;?QQQ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nCookie: oreo=munchmuch%0d%0a%0d%0a<HTML><title></title></HTML>\r\n\r\n",
            "GET /?param=foo%00 HTTP/1.1\r\n\r\n",
            "GET /?param=%c0%af HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8; CHARSET=utf-7\r\nContent-Length: 10\r\n\r\ntest=value",
            "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded;charset=ibm037\r\nContent-Length: 10\r\n\r\ntest=value",
            "GET /f.pdf HTTP/1.1\r\nRange: bytes=0-1,2-3,4-5,6-7,8-9,10-11,12-13,14-15,16-17,18-19,20-21,22-23,24-25,26-27,28-29,30-31,32-33,34-35,36-37,38-39,40-41\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nHi \r\n0\r\n\r\n",
            "|GET /get HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nCookie: $Version=1; session=\"deadbeef; PHPSESSID=secret; dummy=qaz\"\r\n\r\n",
            "GET /?username=admin)(%7C(password%3D* HTTP/1.1\r\n\r\n",
            "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 46\r\n\r\nusername=admin)(%26(objectClass%3D*)&password=x",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
        let mp = "POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 90\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n+ADw-\r\n--B--\r\n";
        assert_eq!(run(mp).1, Action::Ban);
    }

    #[test]
    fn benign() {
        for raw in [
            "GET /f.pdf HTTP/1.1\r\nRange: bytes=0-1023\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: 2\r\n\r\n{}",
            "GET /?q=50%25+off HTTP/1.1\r\n\r\n",
            "GET /?q=caf%C3%A9 HTTP/1.1\r\n\r\n",
            "GET /?q=(a)(b) HTTP/1.1\r\n\r\n",
            "GET /?q=f(x)(y%3D1) HTTP/1.1\r\n\r\n",
            "POST /n HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"text\":\"line1\\nline2\"}  ",
        ] {
            assert_ne!(run(raw).1, Action::Ban, "{raw}");
        }
    }

    #[test]
    fn unparseable_alerts_and_its_bytes_are_inspected() {
        use crate::detect::{DetectConfig, Engine};
        use crate::http::{HttpError, Request};
        let engine = Engine::new(DetectConfig::default());
        let judge = |raw: &[u8], why| {
            let v = engine.inspect_request(&Request::unparseable(raw, why));
            (v.clone(), engine.verdict(&v))
        };
        // Not HTTP at all: reported, not banned.
        let (v, action) = judge(b"\x00\x01\x02binary junk\r\n", HttpError::NotHttp);
        assert_eq!(action, Action::Alert, "{v:?}");
        let found = v.iter().find(|v| v.rule == "protocol.unparseable").unwrap();
        assert_eq!(
            found.evidence,
            "neither HTTP/1.x nor TLS: \\u{0}\\u{1}\\u{2}binary junk"
        );
        // A broken request line still carrying an injection: banned.
        let (v, action) = judge(
            b"GET /x?q=1' OR '1'='1 HTTP/7.0\r\nHost: a\r\n\r\n",
            HttpError::BadVersion,
        );
        assert_eq!(action, Action::Ban, "{v:?}");
        assert!(v.iter().any(|v| v.rule == "protocol.unparseable"), "{v:?}");
        assert!(v.iter().any(|v| v.category == Category::Sqli), "{v:?}");
        // In the body too.
        let (_, action) = judge(
            b"\x00garbage\nq=<script>alert(document.cookie)</script>",
            HttpError::NotHttp,
        );
        assert_eq!(action, Action::Ban);
        // The method-like token of a stand-in is not judged as a method.
        let (v, _) = judge(b"G(T / HTTP/1.1\r\n\r\n", HttpError::BadMethod);
        assert!(v.iter().all(|v| v.rule != "protocol.bad_method"), "{v:?}");
    }
}
