//! Incremental HTTP/1.x parsing of untrusted bytes: the one parser of the agent (live
//! flow reassembly) and of `tollgate detect` (offline replay), so both see the same
//! requests.
//!
//! The parser is deliberately lenient about what it *accepts*: at least as lenient
//! as the common servers behind Tollgate (nginx, node, Python's `http.server`), so
//! that a request a server would serve is never skipped for being odd. It accepts
//! empty lines before a request (RFC 9112 §2.2), any token method in any case, runs
//! of spaces or tabs between request-line fields (and spaces inside the target when
//! the line ends in a version, as nginx does), HTTP/0.9 request lines (`GET /x`, no
//! version, no headers), bare LF line endings, obs-fold continuation lines (joined
//! with a space), control bytes in header names and values (kept for the detectors),
//! and chunked bodies with extensions, leading zeros and trailers (de-chunked).
//!
//! Line ends: a LF always ends a line, and a CR right before it belongs to the line
//! end. A bare CR or a NUL inside a header value stays in the value (nginx and node
//! refuse such requests, Python's header parser keeps them): the protocol detector
//! judges them (`protocol.crlf`, `protocol.null_byte`, `protocol.control_char`) rather
//! than the parser dropping the request. In the request line a bare CR, VT and FF
//! separate fields, as Python's `str.split()` does.
//!
//! It is strict about resources: the header section is capped in size
//! ([`MAX_HEADER_BYTES`]) and count ([`MAX_HEADERS`]), bodies are copied only from
//! what is in the buffer and at most [`MAX_BODY_BYTES`] of them, and no allocation
//! follows a length the peer claims.
//!
//! What cannot be parsed is not dropped: [`Request::unparseable`] turns the bytes
//! into a stand-in request the detectors still inspect (`protocol.unparseable`).

use thiserror::Error;

/// Maximum size of the request/status line plus headers, terminator included.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Maximum number of header fields.
pub const MAX_HEADERS: usize = 200;
/// Most body bytes kept per message (the rest is counted as consumed and the
/// message marked truncated).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest accepted method token.
const MAX_METHOD_LEN: usize = 32;
/// Most bytes of an unparseable buffer kept in its stand-in request.
const MAX_UNPARSED_BYTES: usize = 16 * 1024;
/// The `version` of an HTTP/0.9 request (its minor digit).
pub const HTTP_09: u8 = 9;

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
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("neither HTTP/1.x nor TLS")]
    NotHttp,
}

/// Result of a parse attempt on a possibly incomplete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A message; `consumed` bytes of the buffer belong to it.
    Complete { msg: T, consumed: usize },
    /// The header section is not finished yet (or, when waiting, the body).
    Partial,
}

/// A parsed HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The method token as sent (case kept: `get` stays `get`).
    pub method: String,
    /// The request target as sent (path and query, or absolute form).
    pub target: String,
    /// Raw (not percent-decoded) path, without the query.
    pub path: String,
    /// Raw query string without the `?`.
    pub query: Option<String>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1 (and later 1.x), [`HTTP_09`]
    /// for an HTTP/0.9 request line.
    pub version: u8,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked when chunked), possibly only a prefix (see `truncated`).
    pub body: Vec<u8>,
    /// The body announced by the headers was not fully present in the buffer (or
    /// longer than [`MAX_BODY_BYTES`]).
    pub truncated: bool,
    /// Set on a stand-in for bytes that are not an HTTP/1.x request
    /// ([`Request::unparseable`]): why they could not be parsed.
    pub malformed: Option<HttpError>,
}

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// Minor version.
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked when chunked), possibly only a prefix (see `truncated`).
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

    /// A stand-in request for bytes sent to an API port that are not an HTTP/1.x
    /// request (`why`), so that they are reported (`protocol.unparseable`) and the
    /// injection detectors still see them: the first line, without what looks like
    /// a method and a version, is the target (split into path and query at `?`);
    /// the rest of the bytes is the body. At most 16 KiB are kept.
    pub fn unparseable(raw: &[u8], why: HttpError) -> Request {
        let raw = &raw[..raw.len().min(MAX_UNPARSED_BYTES)];
        let start = raw
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(raw.len());
        let raw = &raw[start..];
        let eol = memchr::memchr(b'\n', raw).unwrap_or(raw.len());
        let line = raw[..eol].strip_suffix(b"\r").unwrap_or(&raw[..eol]);
        let rest = raw.get(eol + 1..).unwrap_or_default();
        let mut method = String::new();
        let mut target = trim_ws(line);
        // `TOKEN target...`: the token is the method.
        let tok = target.iter().take_while(|&&b| is_tchar(b)).count();
        if (1..=MAX_METHOD_LEN).contains(&tok) && target.get(tok).is_some_and(|&b| is_ws(b)) {
            method = lossy(&target[..tok]);
            target = trim_ws(&target[tok..]);
        }
        // `... HTTP/x.y`: the version is not part of the target.
        if let Some(sp) = target.iter().rposition(|&b| is_ws(b))
            && target[sp + 1..].starts_with(b"HTTP/")
        {
            target = trim_ws(&target[..sp]);
        }
        let target = lossy(target);
        let (path, query) = split_target(&target);
        Request {
            method,
            path,
            query,
            target,
            version: 1,
            headers: Vec::new(),
            body: rest.to_vec(),
            truncated: false,
            malformed: Some(why),
        }
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
    /// A request (or the start of one): a method token, whitespace and a target,
    /// possibly after empty lines.
    HttpRequest,
    /// `HTTP/1.`: a response.
    HttpResponse,
    /// A TLS record (encrypted API traffic).
    Tls,
    /// Anything else.
    Other,
}

/// Well-known methods: a buffer that ends inside one of them (a request split
/// after a few bytes) is taken for a request.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"TRACE",
    b"CONNECT",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"PURGE",
];

/// Classifies the first bytes of a flow (cheap; no full parse). Anything the
/// request parser could accept is [`Kind::HttpRequest`]: empty lines first, then a
/// token of any case followed by whitespace and a target.
pub fn classify(buf: &[u8]) -> Kind {
    // TLS record: handshake content type, major version 3 (or only its first byte).
    if buf.first() == Some(&0x16) && buf.get(1).is_none_or(|&b| b == 0x03) {
        return Kind::Tls;
    }
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    if buf.is_empty() {
        // Only empty lines (or nothing) so far: what follows decides.
        return if start > 0 {
            Kind::HttpRequest
        } else {
            Kind::Other
        };
    }
    let http = b"HTTP/1.";
    if buf.starts_with(http) || (buf.len() < http.len() && http.starts_with(buf)) {
        return Kind::HttpResponse;
    }
    let tok = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|&&b| is_tchar(b))
        .count();
    if tok == 0 || tok > MAX_METHOD_LEN {
        return Kind::Other;
    }
    let rest = &buf[tok..];
    if rest.is_empty() {
        // Cut inside the method: only a known one counts.
        return if METHODS
            .iter()
            .any(|m| m.len() >= tok && m[..tok].eq_ignore_ascii_case(buf))
        {
            Kind::HttpRequest
        } else {
            Kind::Other
        };
    }
    let ws = rest.iter().take_while(|&&b| is_ws(b)).count();
    if ws == 0 {
        return Kind::Other;
    }
    match rest.get(ws) {
        // Cut before the target.
        None => Kind::HttpRequest,
        Some(b'\n') => Kind::Other,
        Some(_) => Kind::HttpRequest,
    }
}

/// Whitespace between request-line fields: SP and HTAB (RFC 9112 §3), and VT, FF
/// and a bare CR, which Python's `str.split()` also splits on.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ws(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|&b| !is_ws(b)).unwrap_or(s.len());
    let e = s.iter().rposition(|&b| !is_ws(b)).map_or(a, |p| p + 1);
    &s[a..e.max(a)]
}

/// Header section split out of the buffer.
struct Head<'a> {
    start_line: &'a [u8],
    headers: Vec<(String, String)>,
    /// Offset of the first body byte.
    body_start: usize,
    /// An HTTP/0.9 request line: no headers, no body.
    http09: bool,
}

/// The next line of `buf` from `from`: (line without CR LF, offset after its LF).
fn line_at(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let eol = memchr::memchr(b'\n', rest)?;
    let line = &rest[..eol];
    Some((line.strip_suffix(b"\r").unwrap_or(line), from + eol + 1))
}

/// Finds the end of the header section and splits it into lines. `request`: the
/// start line may be an HTTP/0.9 request line, which ends the head by itself.
fn parse_head(buf: &[u8], request: bool) -> Result<Option<Head<'_>>, HttpError> {
    // Empty lines before the start line (RFC 9112 §2.2; nginx and node skip any
    // number of them).
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let window = &buf[..buf.len().min(start + MAX_HEADER_BYTES)];
    let too_large = || {
        if window.len() >= start + MAX_HEADER_BYTES {
            Err(HttpError::HeadersTooLarge)
        } else {
            Ok(None)
        }
    };
    let Some((start_line, mut pos)) = line_at(window, start) else {
        return too_large();
    };
    if request && is_http09(start_line) {
        return Ok(Some(Head {
            start_line,
            headers: Vec::new(),
            body_start: pos,
            http09: true,
        }));
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let Some((line, next)) = line_at(window, pos) else {
            return too_large();
        };
        pos = next;
        if line.is_empty() {
            break;
        }
        // Obsolete line folding: the value goes on, after one space (RFC 9112 §5.2).
        // A fold before any field has nothing to continue and is ignored.
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(&lossy(trim(line)));
            }
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        // Names and values are kept as sent, control bytes included, for the
        // detectors to judge; only the optional whitespace around the value goes.
        // A line without a colon (Python keeps reading past it) becomes a value
        // without a name, so that it is still inspected.
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => (&line[..colon], trim(&line[colon + 1..])),
            None => (&b""[..], trim(line)),
        };
        headers.push((lossy(name), lossy(value)));
    }
    Ok(Some(Head {
        start_line,
        headers,
        body_start: pos,
        http09: false,
    }))
}

/// A body as the application's body parser sees it: `Content-Encoding:
/// gzip` or `deflate` (which Express-style parsers inflate) undone, at most
/// [`MAX_BODY_BYTES`] of it (a compression bomb inflates no further). A
/// body that does not inflate, or a prefix of one, is kept as far as it
/// went; other encodings are left alone.
fn decode_content(headers: &[(String, String)], body: Vec<u8>) -> Vec<u8> {
    let Some(enc) = find_headers(headers, "content-encoding").next() else {
        return body;
    };
    if body.is_empty() {
        return body;
    }
    inflate(enc, &body, MAX_BODY_BYTES).unwrap_or(body)
}

/// `bytes` inflated per the encoding `enc` names (`gzip`, `x-gzip`,
/// `deflate`), at most `limit` bytes of output: a compression bomb costs no
/// more. A stream cut short yields what came before the cut. `None`: another
/// encoding, or nothing inflated.
pub(crate) fn inflate(enc: &str, bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let enc = enc.trim().to_ascii_lowercase();
    let limit = limit as u64;
    let mut out = Vec::new();
    let res = match enc.as_str() {
        // RFC 9110 (and gRPC) say zlib-wrapped; some clients send raw deflate.
        "deflate" if bytes.first().is_some_and(|b| b & 0x0f == 8) => {
            flate2::read::ZlibDecoder::new(bytes)
                .take(limit)
                .read_to_end(&mut out)
        }
        "deflate" => flate2::read::DeflateDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out),
        _ => return None,
    };
    (res.is_ok() || !out.is_empty()).then_some(out)
}

/// How many bytes `bytes` inflates to per `enc`, counted up to `limit`
/// without keeping them (0 for another encoding). A stream that breaks off
/// (trailing bytes, a cut) counts what came before.
pub(crate) fn inflated_len(enc: &str, bytes: &[u8], limit: u64) -> u64 {
    use std::io::Read;
    fn count(r: impl Read, limit: u64) -> u64 {
        let mut r = r.take(limit);
        let mut buf = [0u8; 16 * 1024];
        let mut n = 0u64;
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    }
    let enc = enc.trim().to_ascii_lowercase();
    match enc.as_str() {
        "deflate" if bytes.first().is_some_and(|b| b & 0x0f == 8) => {
            count(flate2::read::ZlibDecoder::new(bytes), limit)
        }
        "deflate" => count(flate2::read::DeflateDecoder::new(bytes), limit),
        "gzip" | "x-gzip" => count(flate2::read::MultiGzDecoder::new(bytes), limit),
        _ => 0,
    }
}

/// `METHOD target` without a version: an HTTP/0.9 request line.
fn is_http09(line: &[u8]) -> bool {
    let mut fields = line.split(|&b| is_ws(b)).filter(|f| !f.is_empty());
    fields.next().is_some() && fields.next().is_some() && fields.next().is_none()
}

/// `String::from_utf8_lossy(b).into_owned()`, without the slower lossy scan for the
/// (usual) valid input.
pub(crate) fn lossy(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Strips the optional whitespace around a field value.
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

/// `HTTP/1.x` (any minor digit; above 1 counts as 1.1, as nginx and Python do).
fn parse_version(v: &[u8]) -> Result<u8, HttpError> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => {
            Ok(u8::from(*d != b'0'))
        }
        _ => Err(HttpError::BadVersion),
    }
}

pub(crate) fn split_target(target: &str) -> (String, Option<String>) {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    // Fragments are never sent by browsers; keep them out of the path template.
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    (path.to_owned(), query)
}

/// How the body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    /// Responses without length on a closing connection: until close.
    UntilClose,
}

fn framing(headers: &[(String, String)]) -> Result<Option<Framing>, HttpError> {
    // Chunked when it is the last coding (RFC 9112 §6.3); a server that sees
    // `chunked` anywhere (nginx) reads chunks too.
    let te_chunked = find_headers(headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .any(|c| c.trim().eq_ignore_ascii_case("chunked"));
    if te_chunked {
        return Ok(Some(Framing::Chunked));
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
    Ok(len.map(Framing::Length))
}

/// A body read from the bytes after the head.
struct Body {
    bytes: Vec<u8>,
    /// Not all of it was in the buffer, or not all of it was kept.
    truncated: bool,
    /// All of it was in the buffer.
    complete: bool,
    /// Bytes of the buffer it took.
    consumed: usize,
}

fn capped(b: &[u8]) -> Vec<u8> {
    b[..b.len().min(MAX_BODY_BYTES)].to_vec()
}

fn read_body(rest: &[u8], framing: Framing) -> Result<Body, HttpError> {
    let whole = |b: &[u8]| Body {
        bytes: capped(b),
        truncated: b.len() > MAX_BODY_BYTES,
        complete: true,
        consumed: b.len(),
    };
    Ok(match framing {
        Framing::None => whole(&[]),
        Framing::Length(n) if n <= rest.len() => whole(&rest[..n]),
        Framing::Length(_) => Body {
            complete: false,
            truncated: true,
            ..whole(rest)
        },
        Framing::UntilClose => whole(rest),
        Framing::Chunked => dechunk(rest)?,
    })
}

/// The chunk size of a chunk-size line: hex digits (leading zeros allowed), then
/// optional whitespace and `;ext=val` extensions (RFC 9112 §7.1).
fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let size = line.split(|&b| b == b';').next().unwrap_or(line);
    let size = trim(size);
    let digits = match size.iter().position(|&b| b != b'0') {
        Some(p) => &size[p..],
        None => &[][..],
    };
    if size.is_empty() || digits.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(HttpError::BadChunk);
    }
    Ok(digits.iter().fold(0usize, |n, &b| {
        let d = (b as char).to_digit(16).unwrap_or(0) as usize;
        n.saturating_mul(16).saturating_add(d)
    }))
}

fn dechunk(rest: &[u8]) -> Result<Body, HttpError> {
    let mut bytes = Vec::new();
    let mut capped = false;
    let mut pos = 0;
    // The buffer ends inside the body: all of it is consumed, the body is a prefix.
    let partial = |bytes| Body {
        bytes,
        truncated: true,
        complete: false,
        consumed: rest.len(),
    };
    loop {
        let Some((line, next)) = line_at(rest, pos) else {
            return Ok(partial(bytes));
        };
        let size = chunk_size(line)?;
        pos = next;
        if size == 0 {
            // Trailer fields up to the blank line (read over, not kept).
            loop {
                let Some((line, next)) = line_at(rest, pos) else {
                    return Ok(partial(bytes));
                };
                pos = next;
                if line.is_empty() {
                    return Ok(Body {
                        bytes,
                        truncated: capped,
                        complete: true,
                        consumed: pos,
                    });
                }
            }
        }
        let avail = rest.len() - pos;
        let take = avail.min(size);
        let room = MAX_BODY_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&rest[pos..pos + take.min(room)]);
        capped |= take > room;
        if avail < size {
            return Ok(partial(bytes));
        }
        pos += size;
        // Chunk data is followed by CRLF (bare LF tolerated).
        if rest[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else if rest[pos..].starts_with(b"\n") {
            pos += 1;
        } else if rest.len() - pos < 2 {
            return Ok(partial(bytes));
        } else {
            return Err(HttpError::BadChunk);
        }
    }
}

/// Where a request's body stands when only its start was in the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BodyRest {
    /// Nothing more belongs to the request.
    #[default]
    Done,
    /// This many more body bytes follow.
    Bytes(u64),
    /// A chunked body goes on; the cursor follows its framing.
    Chunked(ChunkCursor),
}

/// The longest chunk-size or trailer line a [`ChunkCursor`] buffers.
const MAX_CHUNK_LINE: usize = 4096;

/// Follows the framing of a chunked body over bytes that are not kept, by the
/// parser's own rules (sizes with leading zeros and extensions, bare LF, trailers):
/// where each chunk's data ends and where the body does. A fake terminator inside
/// chunk data is data, as it is to the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkCursor {
    state: ChunkState,
    /// The part of a size or trailer line seen so far.
    line: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In a chunk-size line.
    #[default]
    Size,
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: its line end (`cr`: the CR was seen).
    DataEnd { cr: bool },
    /// In the trailer section (ends at an empty line).
    Trailer,
    /// The body ended.
    Done,
}

impl ChunkCursor {
    /// Follows `data`, the next bytes of the body. `Some(n)`: the body ended after
    /// its first `n` bytes; `None`: all of them belong to it.
    ///
    /// # Errors
    /// [`HttpError::BadChunk`] when the framing is broken (the server refuses it).
    pub fn advance(&mut self, data: &[u8]) -> Result<Option<usize>, HttpError> {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let take = left.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state = match left - take {
                        0 => ChunkState::DataEnd { cr: false },
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::DataEnd { cr } => {
                    self.state = match (cr, data[pos]) {
                        (_, b'\n') => ChunkState::Size,
                        (false, b'\r') => ChunkState::DataEnd { cr: true },
                        _ => return Err(HttpError::BadChunk),
                    };
                    pos += 1;
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let rest = &data[pos..];
                    let Some(eol) = memchr::memchr(b'\n', rest) else {
                        if self.line.len() + rest.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk);
                        }
                        self.line.extend_from_slice(rest);
                        break;
                    };
                    if self.line.len() + eol > MAX_CHUNK_LINE {
                        return Err(HttpError::BadChunk);
                    }
                    self.line.extend_from_slice(&rest[..eol]);
                    pos += eol + 1;
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    self.state = match self.state {
                        ChunkState::Size => match chunk_size(line)? {
                            0 => ChunkState::Trailer,
                            n => ChunkState::Data(n as u64),
                        },
                        _ if line.is_empty() => ChunkState::Done,
                        s => s,
                    };
                    self.line.clear();
                }
            }
        }
        Ok((self.state == ChunkState::Done).then_some(pos))
    }

    /// Chunk data bytes left before the next framing byte (0 outside chunk data).
    #[must_use]
    pub fn data_left(&self) -> u64 {
        match self.state {
            ChunkState::Data(n) => n,
            _ => 0,
        }
    }

    /// Passes over `n` bytes that were not seen, if they are all chunk data.
    pub fn skip_unseen(&mut self, n: u64) -> bool {
        match self.state {
            ChunkState::Data(left) if n <= left => {
                self.state = match left - n {
                    0 => ChunkState::DataEnd { cr: false },
                    r => ChunkState::Data(r),
                };
                true
            }
            _ => n == 0,
        }
    }
}

/// Parses one HTTP/1.x request from the start of `buf`; an incomplete body is a
/// truncated message.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<Request>, HttpError> {
    parse_request_waiting(buf, false)
}

/// Like [`parse_request`]; with `wait`, an incomplete body is `Partial` (more bytes
/// of the stream may follow).
pub fn parse_request_waiting(buf: &[u8], wait: bool) -> Result<Parsed<Request>, HttpError> {
    let wait = if wait { Wait::Whole } else { Wait::No };
    parse_request_at(buf, wait).map(|(p, _)| p)
}

/// Parses one request from a stream that judges every head at once and keeps at
/// most `body_cap` bytes of a body: an incomplete body is waited for until that
/// many of its bytes are in the buffer; then the request is complete (truncated),
/// consumes the whole buffer, and [`BodyRest`] says how the rest of its body is
/// framed, so the caller can pass over it and find the next request where the
/// server will.
pub fn parse_request_streaming(
    buf: &[u8],
    body_cap: usize,
) -> Result<(Parsed<Request>, BodyRest), HttpError> {
    parse_request_at(buf, Wait::UpTo(body_cap))
}

/// How long an incomplete body is waited for.
#[derive(Clone, Copy)]
enum Wait {
    /// Not at all: what is there is the message.
    No,
    /// Until all of it is there.
    Whole,
    /// Until this many of its bytes are there.
    UpTo(usize),
}

fn parse_request_at(buf: &[u8], wait: Wait) -> Result<(Parsed<Request>, BodyRest), HttpError> {
    let Some(head) = parse_head(buf, true)? else {
        return Ok((Parsed::Partial, BodyRest::Done));
    };
    let line = head.start_line;
    let fields: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < line.len() {
            if is_ws(line[i]) {
                i += 1;
                continue;
            }
            let s = i;
            while i < line.len() && !is_ws(line[i]) {
                i += 1;
            }
            v.push((s, i));
        }
        v
    };
    let (&(m0, m1), rest) = fields.split_first().ok_or(HttpError::BadRequestLine)?;
    let method = &line[m0..m1];
    if method.len() > MAX_METHOD_LEN || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadMethod);
    }
    let (target, version) = match rest {
        [(t0, t1)] if head.http09 => (&line[*t0..*t1], HTTP_09),
        [(t0, _), .., (_, t1), (v0, v1)] | [(t0, t1), (v0, v1)] => {
            let version = &line[*v0..*v1];
            if !version.starts_with(b"HTTP/") {
                return Err(HttpError::BadRequestLine);
            }
            // Spaces inside the target (nginx keeps them): everything between
            // the method and the version.
            (&line[*t0..*t1], parse_version(version)?)
        }
        _ => return Err(HttpError::BadRequestLine),
    };
    let target = lossy(target);
    let (path, query) = split_target(&target);
    let fr = framing(&head.headers)?.unwrap_or(Framing::None);
    let body_bytes = &buf[head.body_start..];
    let body = read_body(body_bytes, fr)?;
    let waiting = match wait {
        Wait::No => false,
        Wait::Whole => !body.complete,
        Wait::UpTo(cap) => !body.complete && body_bytes.len() < cap,
    };
    if waiting {
        return Ok((Parsed::Partial, BodyRest::Done));
    }
    let rest = match fr {
        _ if body.complete => BodyRest::Done,
        Framing::Length(n) => BodyRest::Bytes(n.saturating_sub(body_bytes.len()) as u64),
        Framing::Chunked => {
            let mut c = ChunkCursor::default();
            match c.advance(body_bytes)? {
                Some(_) => BodyRest::Done,
                None => BodyRest::Chunked(c),
            }
        }
        Framing::None | Framing::UntilClose => BodyRest::Done,
    };
    let bytes = decode_content(&head.headers, body.bytes);
    let msg = Parsed::Complete {
        msg: Request {
            method: lossy(method),
            target,
            path,
            query,
            version,
            headers: head.headers,
            body: bytes,
            truncated: body.truncated,
            malformed: None,
        },
        consumed: head.body_start + body.consumed,
    };
    Ok((msg, rest))
}

/// Parses one request from bytes after which nothing more comes (the connection
/// closed, or a whole `tollgate detect` line): a head that lacks only its final
/// empty line is taken as ended there, so that the agent and `tollgate detect`
/// judge it alike. `consumed` never exceeds `buf.len()`.
pub fn parse_request_final(buf: &[u8]) -> Result<Parsed<Request>, HttpError> {
    if let Parsed::Complete { msg, consumed } = parse_request(buf)? {
        return Ok(Parsed::Complete { msg, consumed });
    }
    let end = buf
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n'))
        .map_or(0, |p| p + 1);
    if end == 0 {
        return Ok(Parsed::Partial);
    }
    let mut ended = Vec::with_capacity(end + 4);
    ended.extend_from_slice(&buf[..end]);
    ended.extend_from_slice(b"\r\n\r\n");
    Ok(match parse_request(&ended)? {
        Parsed::Complete { msg, consumed } => Parsed::Complete {
            msg,
            consumed: consumed.min(buf.len()),
        },
        Parsed::Partial => Parsed::Partial,
    })
}

/// Parses one HTTP/1.x response from the start of `buf`. `head_request`: it answers
/// a HEAD (no body).
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Parsed<Response>, HttpError> {
    parse_response_waiting(buf, head_request, false)
}

/// Like [`parse_response`]; with `wait`, an incomplete body is `Partial`.
pub fn parse_response_waiting(
    buf: &[u8],
    head_request: bool,
    wait: bool,
) -> Result<Parsed<Response>, HttpError> {
    let Some(head) = parse_head(buf, false)? else {
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
    let fr = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else {
        match framing(&head.headers)? {
            Some(f) => f,
            // Without a length a response runs until the connection closes; on a
            // kept-alive HTTP/1.1 connection that is taken as no body, so that the
            // next response still pairs with its request.
            None if version == 0
                || find_header(&head.headers, "connection")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("close")) =>
            {
                Framing::UntilClose
            }
            None => Framing::None,
        }
    };
    let body = read_body(&buf[head.body_start..], fr)?;
    if wait && !body.complete {
        return Ok(Parsed::Partial);
    }
    Ok(Parsed::Complete {
        msg: Response {
            version,
            status,
            reason,
            headers: head.headers,
            body: body.bytes,
            truncated: body.truncated,
        },
        consumed: head.body_start + body.consumed,
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
        assert_eq!(r.malformed, None);
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
        // Waiting for the rest of the stream: not done yet.
        assert_eq!(
            parse_request_waiting(b"POST / HTTP/1.0\r\nContent-Length: 10\r\n\r\nabc", true),
            Ok(Parsed::Partial)
        );
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
    fn lenient_request_lines() {
        // Tabs and runs of spaces between fields.
        let (r, _) = req(b"GET\t/a?q=1 \t HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/a?q=1"));
        // Any token method, case kept.
        let (r, _) = req(b"get /x HTTP/1.1\r\n\r\n");
        assert_eq!(r.method, "get");
        let (r, _) = req(b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n");
        assert_eq!(r.method, "PROPFIND");
        // Empty lines before the request (CRLF and LF) belong to it.
        let raw = b"\r\n\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let (r, n) = req(raw);
        assert_eq!((r.path.as_str(), n), ("/x", raw.len()));
        // HTTP/0.9: no version, no headers; the line ends the request.
        let raw = b"GET /old?a=1\r\nGET /next HTTP/1.1\r\n\r\n";
        let (r, n) = req(raw);
        assert_eq!((r.version, r.path.as_str()), (HTTP_09, "/old"));
        assert!(r.headers.is_empty());
        assert_eq!(&raw[n..], b"GET /next HTTP/1.1\r\n\r\n");
        // Spaces inside the target when the line ends in a version (nginx).
        let (r, _) = req(b"GET /a b?q=1 2 HTTP/1.1\r\n\r\n");
        assert_eq!(r.target, "/a b?q=1 2");
        // HTTP/1.2 is served as 1.1.
        assert_eq!(req(b"GET / HTTP/1.2\r\n\r\n").0.version, 1);
    }

    #[test]
    fn lenient_headers() {
        // Bare LF line endings, folded values, control bytes kept.
        let (r, n) = req(
            b"GET / HTTP/1.1\nX-A: one\n  two\n\tthree\nX-B: a\x01b\x07c\x1bd\nNoColon\n\nrest",
        );
        assert_eq!(r.header("x-a"), Some("one two three"));
        assert_eq!(r.header("x-b"), Some("a\x01b\x07c\x1bd"));
        assert_eq!(r.header(""), Some("NoColon"));
        assert_eq!(n, 59);
        // A bare CR inside a value is not a line end.
        let (r, _) = req(b"GET / HTTP/1.1\r\nX-C: a\rb\r\n\r\n");
        assert_eq!(r.header("x-c"), Some("a\rb"));
    }

    #[test]
    fn gzip_and_deflate_bodies_are_inflated_within_bounds() {
        use std::io::Write as _;
        let json = br#"{"q":"1' OR '1'='1"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = gz.finish().unwrap();
        let mut head = format!(
            "POST /s HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            gz.len()
        )
        .into_bytes();
        head.extend_from_slice(&gz);
        let (r, _) = req(&head);
        assert_eq!(r.body, json);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        let z = z.finish().unwrap();
        let mut head = format!(
            "POST /s HTTP/1.1\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
            z.len()
        )
        .into_bytes();
        head.extend_from_slice(&z);
        assert_eq!(req(&head).0.body, json);
        // A bomb: 64 MiB of zeros inflate to at most MAX_BODY_BYTES.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            gz.write_all(&[0u8; 1 << 20]).unwrap();
        }
        let gz = gz.finish().unwrap();
        let mut head = format!(
            "POST /s HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            gz.len()
        )
        .into_bytes();
        head.extend_from_slice(&gz);
        assert_eq!(req(&head).0.body.len(), MAX_BODY_BYTES);
        // Not actually gzip: kept as sent.
        let (r, _) =
            req(b"POST /s HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(r.body, b"abc"); // Two gzip members, as Go's and Java's readers inflate them: the
        // second one (the payload) is judged too.
        let member = |b: &[u8]| {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            g.write_all(b).unwrap();
            g.finish().unwrap()
        };
        let mut two = member(br#"{"a":"ok","#);
        two.extend(member(br#""q":"1' OR '1'='1"}"#));
        let mut head = format!(
            "POST /s HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            two.len()
        )
        .into_bytes();
        head.extend_from_slice(&two);
        assert_eq!(req(&head).0.body, br#"{"a":"ok","q":"1' OR '1'='1"}"#);
    }

    #[test]
    fn chunked() {
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT";
        let (r, n) = req(buf);
        assert_eq!(r.body, b"abcde");
        assert_eq!(&buf[n..], b"NEXT");
        // Leading zeros, upper-case hex, extensions with spaces, trailers, bare LF.
        let buf = b"POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n00A ; a=b\n0123456789\n000\nX-T: 1\n\nNEXT";
        let (r, n) = req(buf);
        assert_eq!(
            (r.body.as_slice(), r.truncated),
            (&b"0123456789"[..], false)
        );
        assert_eq!(&buf[n..], b"NEXT");
        let (r, _) = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        assert!(r.truncated);
        assert_eq!(r.body, b"ab");
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::BadChunk)
        );
        // A claimed size larger than anything is not allocated.
        let (r, _) =
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nabc");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"abc"[..], true));
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
            parse_request(b"GET\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(
            parse_request(b"GET / x y\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
    }

    #[test]
    fn a_final_head_without_its_empty_line_is_ended() {
        let Ok(Parsed::Complete { msg, consumed }) =
            parse_request_final(b"GET /x?q=1 HTTP/1.1\r\nHost: a")
        else {
            panic!()
        };
        assert_eq!(
            (msg.query.as_deref(), msg.header("host")),
            (Some("q=1"), Some("a"))
        );
        assert_eq!(consumed, 28);
        assert_eq!(
            parse_request_final(b"GET /x HT"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(parse_request_final(b"\r\n"), Ok(Parsed::Partial));
        assert_eq!(parse_request_final(b""), Ok(Parsed::Partial));
    }

    #[test]
    fn unparseable_stand_in() {
        let r = Request::unparseable(
            b"\r\nGET /x?q=1' OR '1'='1 HTTP/9.9\r\nHost: a\r\n\r\n",
            HttpError::BadVersion,
        );
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/x");
        assert_eq!(r.query.as_deref(), Some("q=1' OR '1'='1"));
        assert_eq!(r.body, b"Host: a\r\n\r\n");
        assert_eq!(r.malformed, Some(HttpError::BadVersion));
        let r = Request::unparseable(b"\x00\x01binary", HttpError::NotHttp);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("", "\0\x01binary"));
        let big = vec![b'a'; 100_000];
        assert!(Request::unparseable(&big, HttpError::NotHttp).target.len() <= 16 * 1024);
    }

    #[test]
    fn response() {
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
        match parse_response(buf, false) {
            Ok(Parsed::Complete { msg, consumed }) => {
                assert_eq!(msg.status, 404);
                assert_eq!(msg.reason, "Not Found");
                assert_eq!(msg.body, b"abc");
                assert_eq!(consumed, buf.len());
            }
            other => panic!("unexpected {other:?}"),
        }
        // HEAD answers and kept-alive responses without a length have no body.
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        let Ok(Parsed::Complete { consumed, .. }) = parse_response(buf, true) else {
            panic!()
        };
        let Ok(Parsed::Complete { consumed: m, .. }) = parse_response(&buf[consumed..], false)
        else {
            panic!()
        };
        assert_eq!(consumed + m, buf.len());
        // Closing: until the end.
        let buf = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        let Ok(Parsed::Complete { msg, consumed }) = parse_response(buf, false) else {
            panic!()
        };
        assert_eq!(
            (msg.body.as_slice(), consumed),
            (&b"all of it"[..], buf.len())
        );
    }

    #[test]
    fn classify_first_bytes() {
        for req in [
            &b"GET / HTTP/1.1"[..],
            b"PO",
            b"get /x",
            b"PROPFIND /dav HTTP/1.1",
            b"REPORT /cal HTTP/1.1",
            b"FOO\t/x",
            b"\r\n\r\nGET / HTTP/1.1",
            b"\n",
            b"GET ",
        ] {
            assert_eq!(classify(req), Kind::HttpRequest, "{req:?}");
        }
        assert_eq!(classify(b"HTTP/1.1 200 OK"), Kind::HttpResponse);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Kind::Tls);
        assert_eq!(classify(b"\x00\x01binary"), Kind::Other);
        assert_eq!(classify(b"SSH-2.0-x"), Kind::Other);
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Kind::Other);
        assert_eq!(classify(b"GET \r\n"), Kind::Other);
        assert_eq!(classify(b""), Kind::Other);
    }

    #[test]
    fn a_long_body_is_judged_from_its_start_and_framed_to_its_end() {
        let mut head = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
        head.extend_from_slice(&[b'a'; 5000]);
        // Under the cap: wait.
        let (p, _) = parse_request_streaming(&head, 8192).unwrap();
        assert_eq!(p, Parsed::Partial);
        // At the cap: judged now, truncated, the rest of the body announced.
        let (p, rest) = parse_request_streaming(&head, 4096).unwrap();
        let Parsed::Complete { msg, consumed } = p else {
            panic!("not complete")
        };
        assert!(msg.truncated);
        assert_eq!(consumed, head.len());
        assert_eq!(rest, BodyRest::Bytes(95_000));
        // A complete message needs nothing more.
        let (_, rest) = parse_request_streaming(b"GET / HTTP/1.1\r\n\r\n", 0).unwrap();
        assert_eq!(rest, BodyRest::Done);
    }

    #[test]
    fn the_chunk_cursor_follows_the_framing_like_the_parser() {
        let mut req = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(b"0010;ext=1\r\n");
        req.extend_from_slice(b"0\r\n\r\nGET /fake H\r\n");
        let (p, rest) = parse_request_streaming(&req, 16).unwrap();
        assert!(matches!(p, Parsed::Complete { .. }));
        let BodyRest::Chunked(mut c) = rest else {
            panic!("{rest:?}")
        };
        assert_eq!(c.data_left(), 0);
        // A fake terminator inside chunk data is data; the real one ends it,
        // trailers included, and what follows is the next request.
        let more = b"5\r\n0\r\n\r\n\r\n000;x=y\r\nTrailer: 1\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let end = c.advance(more).unwrap().unwrap();
        assert!(more[end..].starts_with(b"GET /next"));
        // Byte by byte alike.
        let mut c = ChunkCursor::default();
        let body = b"3\r\nabc\r\n0\r\n\r\nrest";
        let mut ended = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.advance(std::slice::from_ref(b)).unwrap() {
                ended = Some(i + n);
                break;
            }
        }
        assert_eq!(ended, Some(body.len() - 4));
        // Unseen bytes are passed over only inside chunk data.
        let mut c = ChunkCursor::default();
        assert_eq!(c.advance(b"10\r\nab").unwrap(), None);
        assert_eq!(c.data_left(), 14);
        assert!(c.skip_unseen(14));
        assert!(!c.skip_unseen(1));
        assert_eq!(c.advance(b"\r\n0\r\n\r\n").unwrap(), Some(7));
        // Broken framing is an error, as the server's.
        assert_eq!(
            ChunkCursor::default().advance(b"zz\r\n"),
            Err(HttpError::BadChunk)
        );
        assert_eq!(
            ChunkCursor::default().advance(b"2\r\nabXY"),
            Err(HttpError::BadChunk)
        );
    }
}
