//! Request smuggling and protocol abuse: ambiguous message framing (CL + TE,
//! conflicting Content-Length, obfuscated Transfer-Encoding), duplicate Host,
//! TRACE, oversized headers, and requests or header injections hidden in values.

use super::rules;
use super::{ByteSet, Category, Location, STRONG, Sink};
use crate::http::Request;

/// A single header value above this size is abnormal for an API.
const MAX_HEADER_VALUE: usize = 8 * 1024;

pub(crate) fn check_request(req: &Request, sink: &mut Sink<'_>) {
    let req_loc = Location::Request;
    let mut cl_values: Vec<&str> = Vec::new();
    let mut te_values: Vec<&str> = Vec::new();
    let mut hosts = 0;
    for (name, value) in &req.headers {
        let trimmed = name.trim();
        // Whitespace inside the field name (`Transfer-Encoding :`) is parsed
        // differently by proxies and back ends.
        if trimmed.len() != name.len() || name.contains([' ', '\t']) {
            sink.push(
                rules::SMUGGLING_HEADER_WHITESPACE,
                Category::Smuggling,
                STRONG,
                &Location::Header(name.clone()),
                name,
                0,
            );
        }
        if trimmed.eq_ignore_ascii_case("content-length") {
            cl_values.push(value);
        } else if trimmed.eq_ignore_ascii_case("transfer-encoding") {
            te_values.push(value);
        } else if trimmed.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
        if value.len() > MAX_HEADER_VALUE {
            sink.push(
                rules::PROTOCOL_OVERSIZED_HEADER,
                Category::Protocol,
                5,
                &Location::Header(name.clone()),
                name,
                0,
            );
        }
    }
    if !cl_values.is_empty() && !te_values.is_empty() {
        sink.push(
            rules::SMUGGLING_CL_TE,
            Category::Smuggling,
            STRONG,
            &req_loc,
            "content-length + transfer-encoding",
            0,
        );
    }
    let mut distinct: Vec<&str> = cl_values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 1 {
        sink.push(
            rules::SMUGGLING_CONFLICTING_CL,
            Category::Smuggling,
            STRONG,
            &req_loc,
            &cl_values.join(", "),
            0,
        );
    } else if cl_values.len() > 1 {
        sink.push(
            rules::SMUGGLING_DUPLICATE_CL,
            Category::Smuggling,
            5,
            &req_loc,
            &cl_values.join(", "),
            0,
        );
    }
    for te in &te_values {
        if !te.eq_ignore_ascii_case("chunked") && !te.eq_ignore_ascii_case("identity") {
            sink.push(
                rules::SMUGGLING_TE_OBFUSCATED,
                Category::Smuggling,
                STRONG,
                &Location::Header("Transfer-Encoding".into()),
                te,
                0,
            );
        }
    }
    if te_values.len() > 1 {
        sink.push(
            rules::SMUGGLING_TE_DUPLICATE,
            Category::Smuggling,
            STRONG,
            &req_loc,
            &te_values.join(", "),
            0,
        );
    }
    if !te_values.is_empty() && req.version == 0 {
        sink.push(
            rules::SMUGGLING_TE_HTTP10,
            Category::Smuggling,
            6,
            &req_loc,
            "HTTP/1.0 with Transfer-Encoding",
            0,
        );
    }
    if hosts > 1 {
        sink.push(
            rules::SMUGGLING_DUPLICATE_HOST,
            Category::Smuggling,
            8,
            &req_loc,
            "multiple Host headers",
            0,
        );
    }
    if req.method.eq_ignore_ascii_case("TRACE") || req.method.eq_ignore_ascii_case("TRACK") {
        sink.push(
            rules::PROTOCOL_TRACE,
            Category::Protocol,
            6,
            &req_loc,
            &req.method,
            0,
        );
    }
    // A body that embeds another request line is a smuggled request.
    if !req.body.is_empty() {
        let body = String::from_utf8_lossy(&req.body[..req.body.len().min(4096)]);
        if let Some(p) = embedded_request_line(&body) {
            sink.push(
                rules::SMUGGLING_EMBEDDED_REQUEST,
                Category::Smuggling,
                STRONG,
                &Location::Body,
                &body,
                p,
            );
        }
    }
}

/// Checks one decoded value for an embedded request line or injected header lines.
/// `set` holds the bytes of `text` (ASCII letters possibly lowercased).
pub(crate) fn check_value(text: &str, set: &ByteSet, loc: &Location, sink: &mut Sink<'_>) {
    // A request line has a blank and the `/` of `HTTP/`; an injected header a newline.
    if set.any(&ByteSet::from(b" "))
        && set.any(&ByteSet::from(b"/"))
        && let Some(p) = embedded_request_line(text)
    {
        sink.push(
            rules::SMUGGLING_EMBEDDED_REQUEST,
            Category::Smuggling,
            STRONG,
            loc,
            text,
            p,
        );
    }
    // CRLF followed by a header name: response splitting / header injection.
    if set.any(&ByteSet::from(b"\n"))
        && let Some(p) = text.find('\n')
    {
        let rest = text[p + 1..].trim_start_matches('\r');
        let name_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        if name_len > 1 && rest[name_len..].starts_with(':') {
            let name = rest[..name_len].to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "set-cookie"
                    | "location"
                    | "content-length"
                    | "content-type"
                    | "transfer-encoding"
                    | "host"
                    | "refresh"
                    | "x-xss-protection"
                    | "access-control-allow-origin"
            ) {
                sink.push(
                    rules::PROTOCOL_HEADER_INJECTION,
                    Category::Protocol,
                    STRONG,
                    loc,
                    text,
                    p,
                );
            }
        }
    }
}

/// Position of an HTTP request line (`METHOD target HTTP/x`) inside `s`.
fn embedded_request_line(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = finder!(b" HTTP/").find(&s.as_bytes()[from..]) {
        let at = from + p;
        from = at + 6;
        // Walk back over the target and the method.
        let before = &s[..at];
        let Some(sp) = before.rfind(' ') else {
            continue;
        };
        let target = &before[sp + 1..];
        // (After the last character that is not an upper-case letter, which may
        // be more than one byte long.)
        let method_start = before[..sp]
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_uppercase())
            .map_or(0, |(x, c)| x + c.len_utf8());
        let method = &before[method_start..sp];
        if !target.is_empty()
            && matches!(
                method,
                "GET"
                    | "POST"
                    | "PUT"
                    | "DELETE"
                    | "HEAD"
                    | "OPTIONS"
                    | "PATCH"
                    | "TRACE"
                    | "CONNECT"
            )
        {
            return Some(method_start);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::run;

    #[test]
    fn attacks() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 36\r\n\r\nbarGET /a.html HTTP/1.1\r\nSomething: GET",
            "GET /?arg1=GET%20http%3A%2F%2Fwww.foo.bar%20HTTP%2F3.2 HTTP/1.1\r\n\r\n",
            "GET /?r=x%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
        assert_eq!(run("TRACE / HTTP/1.1\r\n\r\n").1, Action::Alert);
        assert_eq!(
            run("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").1,
            Action::Alert
        );
    }

    #[test]
    fn benign() {
        assert_eq!(
            run("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").1,
            Action::Allow
        );
        assert_eq!(
            run("GET /?q=HTTP/1.1+is+old HTTP/1.1\r\n\r\n").1,
            Action::Allow
        );
    }
}
