//! Incremental HTTP/1.x parsing of untrusted bytes.
//!
//! The parser is deliberately lenient about what it *accepts* (the detectors want to
//! see odd requests rather than lose them) but strict about resources: the header
//! section is capped in size and count, and bodies are never copied beyond what is
//! present in the buffer.

use thiserror::Error;

/// Maximum size of the request/status line plus headers, terminator included.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Maximum number of header fields.
pub const MAX_HEADERS: usize = 200;
/// Longest accepted method token.
const MAX_METHOD_LEN: usize = 32;

/// Why a buffer is not an HTTP/1.x message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    #[error("header section exceeds {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed status line")]
    BadStatusLine,
    #[error("invalid method token")]
    BadMethod,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("malformed header line")]
    BadHeader,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("malformed chunked body")]
    BadChunk,
}

/// Result of a parse attempt on a possibly incomplete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A message; `consumed` bytes of the buffer belong to it.
    Complete { msg: T, consumed: usize },
    /// The header section is not finished yet.
    Partial,
}

/// A parsed HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query, or absolute form).
    pub target: String,
    /// Raw (not percent-decoded) path, without the query.
    pub path: String,
    /// Raw query string without the `?`.
    pub query: Option<String>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked when chunked), possibly only a prefix (see `truncated`).
    pub body: Vec<u8>,
    /// The body announced by the headers was not fully present in the buffer.
    pub truncated: bool,
}

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub truncated: bool,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Request {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// All values of a header in order.
    pub fn headers_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        find_headers(&self.headers, name)
    }
}

impl Response {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// All values of a header in order.
    pub fn headers_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        find_headers(&self.headers, name)
    }
}

/// What the start of a payload looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HttpRequest,
    HttpResponse,
    Tls,
    Other,
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"SEARCH ",
    b"PURGE ",
];

/// Classifies the first bytes of a flow (cheap; no full parse).
pub fn looks_like_http(buf: &[u8]) -> Kind {
    // TLS record: handshake content type, major version 3.
    if buf.len() >= 2 && buf[0] == 0x16 && buf[1] == 0x03 {
        return Kind::Tls;
    }
    if buf.starts_with(b"HTTP/1.") {
        return Kind::HttpResponse;
    }
    for m in METHODS {
        let n = m.len().min(buf.len());
        if n > 0 && buf[..n] == m[..n] && (n == m.len() || n == buf.len()) {
            return Kind::HttpRequest;
        }
    }
    // Unknown method token followed by a space and an origin-form target.
    let tok = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    if tok > 0
        && tok <= MAX_METHOD_LEN
        && buf.get(tok) == Some(&b' ')
        && buf.get(tok + 1) == Some(&b'/')
    {
        return Kind::HttpRequest;
    }
    Kind::Other
}

/// Header section split out of the buffer.
struct Head<'a> {
    start_line: &'a [u8],
    headers: Vec<(String, String)>,
    /// Offset of the first body byte.
    body_start: usize,
}

/// Finds the end of the header section and splits it into lines.
fn parse_head(buf: &[u8]) -> Result<Option<Head<'_>>, HttpError> {
    // Tolerate empty lines before the start line (RFC 9112 §2.2).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') && start < 16 {
        start += 1;
    }
    let window = &buf[start..buf.len().min(start + MAX_HEADER_BYTES)];
    let (head_len, term_len) = match find_terminator(window) {
        Some(v) => v,
        None => {
            return if window.len() >= MAX_HEADER_BYTES {
                Err(HttpError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
    };
    let head = &window[..head_len];
    let mut from = 0;
    let mut lines = memchr::memchr_iter(b'\n', head)
        .chain(std::iter::once(head.len()))
        .map(|end| {
            let l = &head[from..end];
            from = end + 1;
            l.strip_suffix(b"\r").unwrap_or(l)
        });
    let start_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let fields = memchr::memchr_iter(b'\n', head).count();
    let mut headers: Vec<(String, String)> = Vec::with_capacity(fields.min(MAX_HEADERS));
    for line in lines {
        if line.is_empty() {
            continue;
        }
        // Obsolete line folding: append to the previous value.
        if line[0] == b' ' || line[0] == b'\t' {
            let last = headers.last_mut().ok_or(HttpError::BadHeader)?;
            last.1.push(' ');
            last.1
                .push_str(String::from_utf8_lossy(trim(line)).as_ref());
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let colon = memchr::memchr(b':', line).ok_or(HttpError::BadHeader)?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|&b| b <= b' ' || b == 0x7f) {
            // Whitespace before the colon is a classic smuggling vector; keep the
            // field (trimmed) so the protocol detector can see it, but reject
            // control bytes.
            if name.iter().any(|&b| b < b' ' && b != b'\t' || b == 0x7f) || trim(name).is_empty() {
                return Err(HttpError::BadHeader);
            }
        }
        let value = trim(&line[colon + 1..]);
        headers.push((lossy(name), lossy(value)));
    }
    Ok(Some(Head {
        start_line,
        headers,
        body_start: start + head_len + term_len,
    }))
}

/// Position of the blank line ending the head and the terminator length.
fn find_terminator(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = finder!(b"\r\n\r\n").find(buf);
    // A bare-LF blank line only ends the head when it comes first, so it is only
    // looked for before the CRLF one (not through the whole body).
    let lf_end = crlf.map_or(buf.len(), |a| a + 2);
    let lf = finder!(b"\n\n").find(&buf[..lf_end]);
    match (crlf, lf) {
        (_, Some(b)) => Some((b, 2)),
        (Some(a), None) => Some((a, 4)),
        (None, None) => None,
    }
}

/// `String::from_utf8_lossy(b).into_owned()`, without the slower lossy scan for the
/// (usual) valid input.
fn lossy(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let e = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(a, |p| p + 1);
    &s[a..e.max(a)]
}

fn parse_version(v: &[u8]) -> Result<u8, HttpError> {
    match v {
        b"HTTP/1.1" => Ok(1),
        b"HTTP/1.0" => Ok(0),
        _ => Err(HttpError::BadVersion),
    }
}

/// How the body is delimited.
enum Framing {
    None,
    Length(usize),
    Chunked,
    /// Responses without length: until close.
    UntilClose,
}

fn framing(headers: &[(String, String)], request: bool) -> Result<Framing, HttpError> {
    let te_chunked = find_headers(headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
    if te_chunked {
        return Ok(Framing::Chunked);
    }
    let mut len: Option<usize> = None;
    for v in find_headers(headers, "content-length") {
        for part in v.split(',') {
            let p = part.trim();
            if p.is_empty() || p.len() > 18 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadContentLength);
            }
            let n: usize = p.parse().map_err(|_| HttpError::BadContentLength)?;
            // Conflicting values are left to the smuggling detector; frame by the first.
            len.get_or_insert(n);
        }
    }
    Ok(match len {
        Some(n) => Framing::Length(n),
        None if request => Framing::None,
        None => Framing::UntilClose,
    })
}

/// Extracts the body; returns (body, truncated, consumed-from-body-start).
fn read_body(rest: &[u8], framing: Framing) -> Result<(Vec<u8>, bool, usize), HttpError> {
    match framing {
        Framing::None => Ok((Vec::new(), false, 0)),
        Framing::Length(n) => {
            if rest.len() >= n {
                Ok((rest[..n].to_vec(), false, n))
            } else {
                Ok((rest.to_vec(), true, rest.len()))
            }
        }
        Framing::UntilClose => Ok((rest.to_vec(), false, rest.len())),
        Framing::Chunked => dechunk(rest),
    }
}

fn dechunk(rest: &[u8]) -> Result<(Vec<u8>, bool, usize), HttpError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = memchr::memchr(b'\n', &rest[pos..]) else {
            return Ok((body, true, rest.len()));
        };
        let line = &rest[pos..pos + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
        let size_part = trim(size_part);
        if size_part.is_empty()
            || size_part.len() > 15
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(HttpError::BadChunk);
        }
        let mut size = 0usize;
        for &b in size_part {
            size = size * 16 + (b as char).to_digit(16).unwrap_or(0) as usize;
        }
        pos += eol + 1;
        if size == 0 {
            // Skip trailers up to the blank line.
            loop {
                let Some(eol) = memchr::memchr(b'\n', &rest[pos..]) else {
                    return Ok((body, true, rest.len()));
                };
                let line = &rest[pos..pos + eol];
                pos += eol + 1;
                if line.is_empty() || line == b"\r" {
                    return Ok((body, false, pos));
                }
            }
        }
        let avail = rest.len() - pos;
        if avail < size {
            body.extend_from_slice(&rest[pos..]);
            return Ok((body, true, rest.len()));
        }
        body.extend_from_slice(&rest[pos..pos + size]);
        pos += size;
        // Chunk data is followed by CRLF (tolerate bare LF).
        if rest[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else if rest[pos..].starts_with(b"\n") {
            pos += 1;
        } else if pos + 1 >= rest.len() {
            return Ok((body, true, rest.len()));
        } else {
            return Err(HttpError::BadChunk);
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one HTTP/1.x request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<Request>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(Parsed::Partial);
    };
    let line = head.start_line;
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = parts.next().ok_or(HttpError::BadRequestLine)?;
    let target = parts.next().ok_or(HttpError::BadRequestLine)?;
    let version = parts.next().ok_or(HttpError::BadRequestLine)?;
    if parts.next().is_some() {
        return Err(HttpError::BadRequestLine);
    }
    if method.len() > MAX_METHOD_LEN || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadMethod);
    }
    if target.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return Err(HttpError::BadRequestLine);
    }
    let version = parse_version(version)?;
    let target = lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.clone(), None),
    };
    // Fragments are never sent by browsers; keep them out of the path template.
    let path = match path.split_once('#') {
        Some((p, _)) => p.to_owned(),
        None => path,
    };
    let fr = framing(&head.headers, true)?;
    let (body, truncated, used) = read_body(&buf[head.body_start..], fr)?;
    Ok(Parsed::Complete {
        msg: Request {
            method: lossy(method),
            target,
            path,
            query,
            version,
            headers: head.headers,
            body,
            truncated,
        },
        consumed: head.body_start + used,
    })
}

/// Parses one HTTP/1.x response from the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Parsed<Response>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(Parsed::Partial);
    };
    let line = head.start_line;
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parse_version(parts.next().ok_or(HttpError::BadStatusLine)?)?;
    let code = parts.next().ok_or(HttpError::BadStatusLine)?;
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadStatusLine);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &b| acc * 10 + u16::from(b - b'0'));
    let reason = lossy(parts.next().unwrap_or_default());
    let fr = if status < 200 || status == 204 || status == 304 {
        Framing::None
    } else {
        framing(&head.headers, false)?
    };
    let (body, truncated, used) = read_body(&buf[head.body_start..], fr)?;
    Ok(Parsed::Complete {
        msg: Response {
            version,
            status,
            reason,
            headers: head.headers,
            body,
            truncated,
        },
        consumed: head.body_start + used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf) {
            Ok(Parsed::Complete { msg, consumed }) => (msg, consumed),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let (r, n) = req(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query.as_deref(), Some("x=1&y=%20"));
        assert_eq!(r.version, 1);
        assert_eq!(r.header("HOST"), Some("h"));
        assert_eq!(r.headers_all("x-a").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(n, 56);
        assert!(!r.truncated);
    }

    #[test]
    fn partial_and_truncated() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(Parsed::Partial)
        );
        let (r, n) = req(b"POST / HTTP/1.0\r\nContent-Length: 10\r\n\r\nabc");
        assert!(r.truncated);
        assert_eq!(r.body, b"abc");
        assert_eq!(n, 42);
        assert_eq!(r.version, 0);
    }

    #[test]
    fn pipelining() {
        let buf = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\n";
        let (a, n) = req(buf);
        assert_eq!(a.body, b"hi");
        let (b, m) = req(&buf[n..]);
        assert_eq!(b.path, "/b");
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn chunked() {
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT";
        let (r, n) = req(buf);
        assert_eq!(r.body, b"abcde");
        assert_eq!(&buf[n..], b"NEXT");
        let (r, _) = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        assert!(r.truncated);
        assert_eq!(r.body, b"ab");
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::BadChunk)
        );
    }

    #[test]
    fn limits_and_errors() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert_eq!(parse_request(&big), Err(HttpError::HeadersTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("h{i}: v\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(parse_request(&many), Err(HttpError::TooManyHeaders));
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HttpError::BadVersion)
        );
        assert_eq!(
            parse_request(b"G(T / HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadMethod)
        );
        assert_eq!(
            parse_request(b"GET /\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(HttpError::BadHeader)
        );
    }

    #[test]
    fn response() {
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
        match parse_response(buf) {
            Ok(Parsed::Complete { msg, consumed }) => {
                assert_eq!(msg.status, 404);
                assert_eq!(msg.reason, "Not Found");
                assert_eq!(msg.body, b"abc");
                assert_eq!(consumed, buf.len());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classify() {
        assert_eq!(looks_like_http(b"GET / HTTP/1.1"), Kind::HttpRequest);
        assert_eq!(looks_like_http(b"PO"), Kind::HttpRequest);
        assert_eq!(looks_like_http(b"HTTP/1.1 200 OK"), Kind::HttpResponse);
        assert_eq!(looks_like_http(&[0x16, 0x03, 0x01, 0x02]), Kind::Tls);
        assert_eq!(looks_like_http(b"\x00\x01binary"), Kind::Other);
        assert_eq!(looks_like_http(b""), Kind::Other);
    }
}
