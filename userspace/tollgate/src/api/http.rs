//! Bounded HTTP/1.x parsing of sampled bytes (untrusted input: limits on
//! header count and size, no allocation proportional to claimed lengths).

use bytes::Bytes;

/// Most headers a message may have before it is treated as invalid.
pub const MAX_HEADERS: usize = 100;
/// Longest header section accepted.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method as sent.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// Path part of the target.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Minor version (0 or 1).
    pub version: u8,
    /// Headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body prefix seen.
    pub body: Bytes,
    /// Not all of the message was seen.
    pub truncated: bool,
}

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Minor version.
    pub version: u8,
    /// Status code.
    pub status: u16,
    /// Headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body prefix seen.
    pub body: Bytes,
    /// Not all of the message was seen.
    pub truncated: bool,
}

/// Outcome of parsing the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A message, and how many bytes it took.
    Complete {
        /// The message.
        msg: T,
        /// Bytes consumed.
        consumed: usize,
    },
    /// The header section is not complete yet.
    Partial,
    /// Not HTTP (or broken beyond use).
    Invalid,
}

/// What a payload looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Starts like an HTTP/1.x request or response.
    Http,
    /// A TLS record (encrypted API traffic).
    Tls,
    /// Anything else.
    Other,
}

/// Classifies the first bytes of a flow's payload.
#[must_use]
pub fn classify(buf: &[u8]) -> Kind {
    if buf.len() >= 3 && buf[0] == 0x16 && buf[1] == 0x03 && buf[2] <= 0x04 {
        return Kind::Tls;
    }
    let tokens: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"PATCH ",
        b"HEAD ",
        b"OPTIONS ",
        b"TRACE ",
        b"CONNECT ",
        b"HTTP/1.",
    ];
    if tokens.iter().any(|t| buf.starts_with(t)) {
        Kind::Http
    } else {
        Kind::Other
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where the body ends, given the bytes after the head: (body bytes seen,
/// consumed, truncated).
fn body(headers: &[(String, String)], rest: &[u8], until_close: bool) -> (usize, usize, bool) {
    let chunked = header_value(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // The last chunk ends the body; without it, all we have is a prefix.
        if rest.starts_with(b"0\r\n\r\n") {
            return (5, 5, false);
        }
        return match find(rest, b"\r\n0\r\n\r\n") {
            Some(i) => (i + 7, i + 7, false),
            None => (rest.len(), rest.len(), true),
        };
    }
    match header_value(headers, "content-length").map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) if n <= rest.len() => (n, n, false),
        Some(Ok(_)) => (rest.len(), rest.len(), true),
        Some(Err(_)) => (rest.len(), rest.len(), true),
        None if until_close => (rest.len(), rest.len(), false),
        None => (0, 0, false),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Parses one request from the start of `buf`; an incomplete body is a
/// truncated message.
#[must_use]
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    parse_request_waiting(buf, false)
}

/// Like [`parse_request`]; with `wait`, an incomplete body is `Partial`
/// (more bytes of the stream may follow).
#[must_use]
pub fn parse_request_waiting(buf: &[u8], wait: bool) -> Parsed<Request> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                return Parsed::Invalid;
            };
            let headers = collect(req.headers);
            let (blen, used, truncated) = body(&headers, &buf[head..], false);
            if truncated && wait && buf.len() < super::flows::MAX_BUFFER {
                return Parsed::Partial;
            }
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            Parsed::Complete {
                msg: Request {
                    method: method.to_owned(),
                    target: target.to_owned(),
                    path,
                    query,
                    version,
                    headers,
                    body: Bytes::copy_from_slice(&buf[head..head + blen]),
                    truncated,
                },
                consumed: head + used,
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => Parsed::Partial,
        _ => Parsed::Invalid,
    }
}

/// Parses one response from the start of `buf`. `head_request`: it answers
/// a HEAD (no body).
#[must_use]
pub fn parse_response(buf: &[u8], head_request: bool) -> Parsed<Response> {
    parse_response_waiting(buf, head_request, false)
}

/// Like [`parse_response`]; with `wait`, an incomplete body is `Partial`.
#[must_use]
pub fn parse_response_waiting(buf: &[u8], head_request: bool, wait: bool) -> Parsed<Response> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let (Some(status), Some(version)) = (resp.code, resp.version) else {
                return Parsed::Invalid;
            };
            let headers = collect(resp.headers);
            let no_body =
                head_request || status == 204 || status == 304 || (100..200).contains(&status);
            let (blen, used, truncated) = if no_body {
                (0, 0, false)
            } else {
                let keep_alive = version == 1
                    && !header_value(&headers, "connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                body(&headers, &buf[head..], !keep_alive)
            };
            if truncated && wait && buf.len() < super::flows::MAX_BUFFER {
                return Parsed::Partial;
            }
            Parsed::Complete {
                msg: Response {
                    version,
                    status,
                    headers,
                    body: Bytes::copy_from_slice(&buf[head..head + blen]),
                    truncated,
                },
                consumed: head + used,
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => Parsed::Partial,
        _ => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_and_without_bodies() {
        let raw = b"POST /api/v1/users?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcdGET /next HTTP/1.1\r\n\r\n";
        let Parsed::Complete { msg, consumed } = parse_request(raw) else {
            panic!()
        };
        assert_eq!(msg.method, "POST");
        assert_eq!(msg.path, "/api/v1/users");
        assert_eq!(msg.query.as_deref(), Some("x=1"));
        assert_eq!(&msg.body[..], b"abcd");
        assert!(!msg.truncated);
        // Pipelined: the next request starts right after.
        let Parsed::Complete { msg, .. } = parse_request(&raw[consumed..]) else {
            panic!()
        };
        assert_eq!(msg.path, "/next");
    }

    #[test]
    fn partial_truncated_and_invalid() {
        assert_eq!(
            parse_request(b"GET /a HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
        let Parsed::Complete { msg, .. } =
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        else {
            panic!()
        };
        assert!(msg.truncated);
        assert_eq!(parse_request(b"\x16\x03\x01\x02\x00"), Parsed::Invalid);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Kind::Tls);
        assert_eq!(classify(b"SSH-2.0-x"), Kind::Other);
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(parse_request(&huge), Parsed::Invalid);
    }

    #[test]
    fn responses() {
        let raw =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 204 No Content\r\n\r\n";
        let Parsed::Complete { msg, consumed } = parse_response(raw, false) else {
            panic!()
        };
        assert_eq!(msg.status, 404);
        let Parsed::Complete { msg, .. } = parse_response(&raw[consumed..], false) else {
            panic!()
        };
        assert_eq!(msg.status, 204);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        let Parsed::Complete { consumed, msg } = parse_response(chunked, false) else {
            panic!()
        };
        assert_eq!(consumed, chunked.len());
        assert!(!msg.truncated);
    }
}
