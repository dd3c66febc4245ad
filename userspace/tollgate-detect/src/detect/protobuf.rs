//! gRPC request bodies walked schema-less: each message (after its 5-byte
//! prefix) is read as protobuf wire format, and its length-delimited fields
//! that are text become inputs for the same detectors as JSON string values,
//! named by their field numbers (`protobuf:1.3`: field 3 of the message in
//! field 1). Fields that are not text are read as nested messages when the
//! whole field parses as one; anything else (numbers, binary bytes) is left
//! alone. Depth, messages and inputs are bounded; a message cut by the body
//! cap is read as far as it parses. Compressed messages (flag 1) are
//! inflated per `grpc-encoding` (`gzip`, `deflate`), all of a body's
//! together to at most the body cap, and read the same way; one in an
//! encoding not read is counted ([`compressed_messages`]), never passed as read.

use std::{borrow::Cow, collections::HashMap};

use super::{Input, Location, MAX_INPUTS, push};
use crate::decode;

/// gRPC messages read per request body.
const MAX_MESSAGES: usize = 64;

/// What a protobuf descriptor set (`protoc --descriptor_set_out`) says of
/// the gRPC methods and their messages: the methods for the inventory, the
/// field names for locating findings (`protobuf:LoginRequest.password`
/// where field numbers alone would say `protobuf:3.2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtoSchema {
    /// By path (`/package.Service/Method`).
    pub methods: HashMap<String, ProtoMethod>,
    /// By full name without the leading dot (`package.LoginRequest`).
    pub messages: HashMap<String, ProtoMessage>,
}

/// One gRPC method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtoMethod {
    /// Full name of its request message (`package.LoginRequest`).
    pub input: String,
    /// Marked deprecated in its options.
    pub deprecated: bool,
}

/// One message type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtoMessage {
    /// Its name without the package (`LoginRequest`).
    pub name: String,
    /// Its fields by number: name, and the full name of the field's message
    /// type when it is one.
    pub fields: HashMap<u64, (String, Option<String>)>,
}

/// Whether a `Content-Type` names gRPC with binary messages (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`, not the base64 `-text`).
pub(crate) fn is_grpc(ctype: &str) -> bool {
    let ctype = ctype.trim_start();
    ctype.starts_with("application/grpc") && !ctype.contains("grpc-web-text")
}

/// Whether `body` is a sequence of gRPC length-prefixed messages (flag 0 or
/// 1, lengths that chain to its end; the last may be cut by the body cap).
/// A body sent with a gRPC type that is not one (JSON, a form) is judged as
/// the application would read it, as text: the type is the sender's claim.
pub(crate) fn framed(body: &[u8]) -> bool {
    let mut rest = body;
    while !rest.is_empty() {
        let [flag, a, b, c, d, tail @ ..] = rest else {
            return false;
        };
        if *flag > 1 {
            return false;
        }
        let len = usize::try_from(u32::from_be_bytes([*a, *b, *c, *d])).unwrap_or(usize::MAX);
        match tail.get(len..) {
            Some(next) => rest = next,
            None => return true,
        }
    }
    true
}

/// The messages of a gRPC body: (compressed flag, message bytes as far as
/// they came), at most [`MAX_MESSAGES`].
fn messages(body: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let [flag, a, b, c, d, tail @ ..] = rest else {
            return None;
        };
        let len = usize::try_from(u32::from_be_bytes([*a, *b, *c, *d])).unwrap_or(usize::MAX);
        let msg = &tail[..len.min(tail.len())];
        rest = tail.get(len..).unwrap_or_default();
        Some((*flag != 0, msg))
    })
    .take(MAX_MESSAGES)
}

/// Whether compressed gRPC messages in `encoding` (the `grpc-encoding`
/// header) are inflated and read.
fn readable(encoding: Option<&str>) -> bool {
    encoding.is_some_and(|e| {
        let e = e.trim();
        e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("deflate")
    })
}

/// Compressed messages of a gRPC request, and how many of them the
/// detectors do not read: its `grpc-encoding` is missing or one not
/// inflated (`snappy`, `zstd`...).
#[must_use]
pub fn compressed_messages(req: &crate::Request) -> (u64, u64) {
    let grpc = req.header("content-type").is_some_and(is_grpc) && framed(&req.body);
    if !grpc {
        return (0, 0);
    }
    let n = messages(&req.body)
        .filter(|(compressed, _)| *compressed)
        .count() as u64;
    let unread = if readable(req.header("grpc-encoding")) {
        0
    } else {
        n
    };
    (n, unread)
}

/// Compressed messages that inflate past the budget: what came after it was
/// not judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PastBudget {
    /// Compressed bytes of the message the budget ran out in (or of the
    /// first one left uninflated).
    pub compressed: usize,
    /// What that message inflated to within the budget (0: none of it).
    pub inflated: usize,
    /// What that message inflates to in all, counted (not kept) up to just
    /// past [`BOMB_BYTES`] (0 when it was left uninflated).
    pub total: u64,
}

/// A gRPC message inflating past this is one no gRPC server takes by
/// default (their receive limit is 4 MiB): a compression bomb, not a large
/// sparse message (those compress past 50:1 too, and must not score).
pub(crate) const BOMB_BYTES: u64 = 4 << 20;

/// Pushes the text fields of the gRPC messages in `body`; compressed ones
/// are inflated per `encoding`, at most `inflate_cap` bytes for the body.
/// `schema` names the fields of the message type `input`, when known.
/// Returns where that budget ran out while compressed bytes were left.
pub(crate) fn walk_grpc<'a>(
    v: &mut Vec<Input<'a>>,
    body: &'a [u8],
    depth: u32,
    encoding: Option<&str>,
    inflate_cap: usize,
    names: Names<'_>,
) -> Option<PastBudget> {
    let mut budget = inflate_cap;
    let mut past = None;
    for (compressed, msg) in messages(body) {
        if !compressed {
            walk(v, &fields(msg).0, depth, "", names);
            continue;
        }
        let Some(enc) = encoding.filter(|e| readable(Some(e))) else {
            continue;
        };
        if budget == 0 {
            past.get_or_insert(PastBudget {
                compressed: msg.len(),
                inflated: 0,
                total: 0,
            });
            continue;
        }
        if v.len() >= MAX_INPUTS {
            continue;
        }
        // One byte more than the budget tells a message that ends there
        // from one that goes on past it.
        let Some(mut plain) = crate::http::inflate(enc, msg, budget + 1) else {
            continue;
        };
        if plain.len() > budget {
            plain.truncate(budget);
            // Counted once per body (the first message past the budget), so
            // a body of many bombs costs one count, bounded by BOMB_BYTES.
            past.get_or_insert_with(|| PastBudget {
                compressed: msg.len(),
                inflated: budget,
                total: crate::http::inflated_len(enc, msg, BOMB_BYTES + 1),
            });
        }
        budget -= plain.len().min(budget);
        // The inflated bytes live here only: their texts are kept owned.
        let mut found = Vec::new();
        walk(&mut found, &fields(&plain).0, depth, "", names);
        for i in found {
            push(v, i.location, Cow::Owned(i.text.into_owned()), i.is_value);
        }
    }
    past
}

/// The schema and the message type being walked, when the descriptor set
/// knows it.
#[derive(Clone, Copy)]
pub(crate) struct Names<'s> {
    pub schema: Option<&'s ProtoSchema>,
    pub message: Option<&'s str>,
}

impl<'s> Names<'s> {
    /// No schema: fields are named by their numbers.
    #[cfg(test)]
    pub(crate) const NONE: Names<'static> = Names {
        schema: None,
        message: None,
    };

    /// The names for the request message of the gRPC method at `path`.
    pub(crate) fn for_method(schema: Option<&'s ProtoSchema>, path: &str) -> Self {
        let message = schema
            .and_then(|s| s.methods.get(path))
            .map(|m| m.input.as_str());
        Self { schema, message }
    }

    /// Field `num` of the message: its location (`LoginRequest.password`,
    /// or `LoginRequest.7` for a field the schema does not have, numbers
    /// after `path` below a message it does not know) and the names of its
    /// own fields if it is a message.
    fn field(self, path: &str, num: u64) -> (String, Names<'s>) {
        let msg = self
            .schema
            .zip(self.message)
            .and_then(|(s, m)| s.messages.get(m));
        let unknown = Names {
            schema: self.schema,
            message: None,
        };
        match msg {
            Some(m) => match m.fields.get(&num) {
                Some((name, sub)) => (
                    format!("{}.{name}", m.name),
                    Names {
                        schema: self.schema,
                        message: sub.as_deref(),
                    },
                ),
                None => (format!("{}.{num}", m.name), unknown),
            },
            None if path.is_empty() => (num.to_string(), unknown),
            None => (format!("{path}.{num}"), unknown),
        }
    }
}

fn walk<'a>(
    v: &mut Vec<Input<'a>>,
    found: &[(u64, &'a [u8])],
    depth: u32,
    path: &str,
    names: Names<'_>,
) {
    for &(num, bytes) in found {
        if v.len() >= MAX_INPUTS {
            return;
        }
        let (name, sub_names) = names.field(path, num);
        let Ok(text) = std::str::from_utf8(bytes) else {
            // Binary bytes: maybe a nested message, never text.
            if depth > 1 {
                let (sub, whole) = fields(bytes);
                if whole {
                    walk(v, &sub, depth - 1, &name, sub_names);
                }
            }
            continue;
        };
        if text.is_empty() {
            continue;
        }
        // UTF-8 with control characters that parses whole as a message is
        // most likely one (its strings are judged as fields); any other
        // UTF-8 is a string, a control byte in it included (else one byte
        // would hide an injection).
        // A field the schema says is a message is one.
        if (has_controls(text) || sub_names.message.is_some()) && depth > 1 {
            let (sub, whole) = fields(bytes);
            if whole {
                walk(v, &sub, depth - 1, &name, sub_names);
                continue;
            }
        }
        let loc = Location::Protobuf(name);
        push(v, loc, decode::normalize_cow(text, false), true);
    }
}

/// Control characters other than tab and line ends.
fn has_controls(s: &str) -> bool {
    s.bytes()
        .any(|c| c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r'))
}

/// The length-delimited fields of a message, as far as it parses, and
/// whether all of it did.
fn fields(mut b: &[u8]) -> (Vec<(u64, &[u8])>, bool) {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some((key, n)) = varint(b) else {
            return (out, false);
        };
        b = &b[n..];
        let num = key >> 3;
        if num == 0 {
            return (out, false);
        }
        let skip = match key & 7 {
            0 => match varint(b) {
                Some((_, n)) => n,
                None => return (out, false),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some((len, n)) = varint(b) else {
                    return (out, false);
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let Some(field) = b.get(n..).and_then(|r| r.get(..len)) else {
                    return (out, false);
                };
                out.push((num, field));
                n + len
            }
            // Groups (deprecated) and reserved wire types.
            _ => return (out, false),
        };
        let Some(next) = b.get(skip..) else {
            return (out, false);
        };
        b = next;
    }
    (out, true)
}

/// A base-128 varint: its value and length (at most 10 bytes).
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Text inputs found in `body`, for tests: (location name, text).
#[cfg(test)]
fn texts(body: &[u8]) -> Vec<(String, String)> {
    texts_in(body, None)
}

/// [`texts`] of a body whose compressed messages are in `encoding`.
#[cfg(test)]
fn texts_in(body: &[u8], encoding: Option<&str>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    walk_grpc(&mut v, body, 16, encoding, 16 * 1024, Names::NONE);
    v.into_iter()
        .map(|i| match i.location {
            Location::Protobuf(n) => (n, i.text.into_owned()),
            other => (format!("{other:?}"), i.text.into_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![num << 3 | 2, u8::try_from(payload.len()).unwrap()];
        f.extend_from_slice(payload);
        f
    }

    fn grpc(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0];
        b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn strings_nested_messages_and_numbers() {
        // { 1: 150 (varint), 2: "alice", 3: { 1: "1' OR '1'='1", 2: 7 (fixed32) } }
        let inner = [ld(1, b"1' OR '1'='1"), vec![2 << 3 | 5, 7, 0, 0, 0]].concat();
        let msg = [vec![1 << 3, 0x96, 0x01], ld(2, b"alice"), ld(3, &inner)].concat();
        let body = [grpc(&msg), grpc(&ld(4, b"second"))].concat();
        assert_eq!(
            texts(&body),
            [
                ("2".to_owned(), "alice".to_owned()),
                ("3.1".to_owned(), "1' OR '1'='1".to_owned()),
                ("4".to_owned(), "second".to_owned()),
            ]
        );
    }

    #[test]
    fn hostile_and_cut_messages() {
        // Cut by the body cap: read as far as it parses.
        let msg = [ld(1, b"first"), ld(2, b"second-is-cut")].concat();
        let mut body = grpc(&msg);
        body.truncate(body.len() - 3);
        assert_eq!(texts(&body), [("1".to_owned(), "first".to_owned())]);
        // Deep nesting stops at the depth bound; lengths past the end, bad
        // varints, groups and compressed messages yield nothing.
        let mut deep = ld(1, b"x");
        for _ in 0..40 {
            deep = ld(1, &deep[..deep.len().min(200)]);
        }
        let _ = texts(&grpc(&deep));
        for bad in [
            vec![0x0a, 0x7f, b'a'],
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![0x0b, 0x0c],
        ] {
            assert!(texts(&grpc(&bad)).is_empty(), "{bad:?}");
        }
        let mut compressed = grpc(&ld(1, b"hidden"));
        compressed[0] = 1;
        assert!(texts(&compressed).is_empty());
        assert!(texts_in(&compressed, Some("gzip")).is_empty(), "not gzip");
        assert!(texts(&[0, 0xff, 0xff, 0xff, 0xff, 1]).is_empty());
        // Binary bytes are not text.
        assert!(texts(&grpc(&ld(1, &[0xff, 0x00, 0x10]))).is_empty());
    }

    /// A message compressed with `enc`, flag 1.
    fn compressed(enc: &str, msg: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let z = match enc {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(msg).unwrap();
                e.finish().unwrap()
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(msg).unwrap();
                e.finish().unwrap()
            }
            _ => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(msg).unwrap();
                e.finish().unwrap()
            }
        };
        let mut b = grpc(&z);
        b[0] = 1;
        b
    }

    #[test]
    fn compressed_messages_are_inflated_per_grpc_encoding() {
        let msg = [ld(1, b"x"), ld(3, &ld(2, b"1' UNION SELECT 1--"))].concat();
        let want = [
            ("1".to_owned(), "x".to_owned()),
            ("3.2".to_owned(), "1' UNION SELECT 1--".to_owned()),
        ];
        for (enc, header) in [
            ("gzip", "gzip"),
            ("deflate", "deflate"),
            ("raw", " Deflate "),
        ] {
            let body = compressed(enc, &msg);
            assert_eq!(texts_in(&body, Some(header)), want, "{enc}");
            // Mixed with an uncompressed message in one stream.
            let both = [grpc(&ld(4, b"plain")), body].concat();
            assert_eq!(texts_in(&both, Some(header)).len(), 3, "{enc}");
        }
        // Cut by the body cap: what inflated before the cut is read.
        let long = [ld(1, b"first"), ld(2, &[b'a'; 120]), ld(3, b"third")].concat();
        let mut body = compressed("gzip", &long);
        body.truncate(body.len() - 12);
        assert!(texts_in(&body, Some("gzip")).contains(&("1".to_owned(), "first".to_owned())));
    }

    #[test]
    fn a_compression_bomb_inflates_no_further_than_the_cap() {
        // 16 MiB of one field's bytes compress to ~16 KiB; a string field
        // after it would come only past the cap.
        let mut msg = vec![1 << 3 | 2, 0x80, 0x80, 0x80, 0x08];
        msg.resize(msg.len() + (16 << 20), b'a');
        msg.extend(ld(2, b"1' OR '1'='1"));
        let body = compressed("gzip", &msg);
        assert!(body.len() < 200_000, "{}", body.len());
        let mut v = Vec::new();
        let start = std::time::Instant::now();
        let past = walk_grpc(&mut v, &body, 16, Some("gzip"), 16 * 1024, Names::NONE);
        // Inflating 16 KiB, not 16 MiB: well under what the whole costs.
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
        assert!(v.iter().all(|i| i.text.len() <= 16 * 1024));
        // What lies past the budget is said to be unread.
        assert_eq!(
            past,
            Some(PastBudget {
                compressed: body.len() - 5,
                inflated: 16 * 1024,
                total: BOMB_BYTES + 1,
            })
        );
        // A message that inflates to exactly the budget leaves nothing unread.
        let exact = compressed("gzip", &[b'a'; 1000]);
        assert_eq!(
            walk_grpc(&mut Vec::new(), &exact, 16, Some("gzip"), 1000, Names::NONE),
            None
        );
        let twice = [exact.clone(), exact].concat();
        let past = walk_grpc(&mut Vec::new(), &twice, 16, Some("gzip"), 1000, Names::NONE);
        assert_eq!(past.map(|p| p.inflated), Some(0));
        // Many bombs in one body share one budget.
        let many: Vec<u8> = (0..MAX_MESSAGES).flat_map(|_| body.clone()).collect();
        let mut v = Vec::new();
        let start = std::time::Instant::now();
        walk_grpc(&mut v, &many, 16, Some("gzip"), 16 * 1024, Names::NONE);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn compressed_messages_in_an_encoding_not_read_are_counted() {
        let req = |enc: Option<&str>, body: Vec<u8>| {
            let mut headers = vec![("content-type".into(), "application/grpc".into())];
            if let Some(e) = enc {
                headers.push(("grpc-encoding".into(), e.into()));
            }
            crate::Request {
                method: "POST".into(),
                headers,
                body,
                ..crate::Request::default()
            }
        };
        let z = compressed("gzip", &ld(1, b"hidden"));
        let two = [z.clone(), grpc(&ld(1, b"plain")), z.clone()].concat();
        assert_eq!(
            compressed_messages(&req(Some("snappy"), two.clone())),
            (2, 2)
        );
        assert_eq!(compressed_messages(&req(None, two.clone())), (2, 2));
        assert_eq!(compressed_messages(&req(Some("gzip"), two)), (2, 0));
        assert_eq!(
            compressed_messages(&req(Some("zstd"), grpc(b"\x0a\x01a"))),
            (0, 0)
        );
        let mut json = req(Some("snappy"), z);
        json.headers[0].1 = "application/json".into();
        assert_eq!(compressed_messages(&json), (0, 0));
    }

    #[test]
    fn the_detectors_judge_protobuf_strings_as_json_values() {
        use crate::{DetectConfig, Engine, Request};
        let engine = Engine::new(DetectConfig::default());
        for payload in [
            "1' OR '1'='1",
            "<script>alert(document.cookie)</script>",
            "; cat /etc/passwd",
            "../../../../etc/passwd",
            "${jndi:ldap://x.example/a}",
            "a harmless note about union members",
        ] {
            let grpc_req = Request {
                method: "POST".into(),
                path: "/notes.Notes/Create".into(),
                headers: vec![("content-type".into(), "application/grpc".into())],
                body: grpc(&[ld(1, b"title"), ld(2, payload.as_bytes())].concat()),
                ..Request::default()
            };
            let json_req = Request {
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::json!({"a": "title", "b": payload})
                    .to_string()
                    .into_bytes(),
                ..grpc_req.clone()
            };
            let rules = |r: &Request| {
                let mut v: Vec<_> = engine.inspect_request(r).iter().map(|v| v.rule).collect();
                v.sort_unstable();
                v
            };
            assert_eq!(rules(&grpc_req), rules(&json_req), "{payload}");
            // The same message gzip-compressed is judged the same.
            let mut gz = grpc_req.clone();
            gz.headers.push(("grpc-encoding".into(), "gzip".into()));
            gz.body = compressed("gzip", &grpc_req.body[5..]);
            assert_eq!(rules(&gz), rules(&json_req), "{payload}");
            let found = engine.inspect_request(&grpc_req);
            assert_eq!(
                found.is_empty(),
                payload.starts_with("a harmless"),
                "{payload}"
            );
            assert!(
                found
                    .iter()
                    .all(|v| v.location == Location::Protobuf("2".into())),
                "{payload}: {found:?}"
            );
        }
    }

    /// A control byte does not turn a string into binary; a body that is no
    /// gRPC framing under a gRPC type is judged as text (JSON here).
    #[test]
    fn a_control_byte_or_a_false_content_type_hides_nothing() {
        use crate::{DetectConfig, Engine, Request};
        let body = grpc(&ld(2, b"x' OR 1=1 -- \x01"));
        assert_eq!(
            texts(&body),
            [("2".to_owned(), "x' OR 1=1 -- \u{1}".to_owned())]
        );
        assert!(framed(&body));
        assert!(framed(&body[..body.len() - 4]), "cut by the body cap");
        let json = br#"{"q":"' OR 1=1--"}"#;
        assert!(!framed(json));
        assert!(!framed(&[0, 0, 0]));
        let engine = Engine::new(DetectConfig::default());
        let r = Request {
            method: "POST".into(),
            path: "/search".into(),
            headers: vec![("content-type".into(), "application/grpc".into())],
            body: json.to_vec(),
            ..Request::default()
        };
        let found = engine.inspect_request(&r);
        assert!(
            found.iter().any(|v| v.rule.starts_with("sqli")),
            "{found:?}"
        );
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(!is_grpc("application/grpc-web-text"));
        assert!(!is_grpc("application/json"));
    }

    /// With a descriptor set, fields are located by name: the message's
    /// own name and the field's (`LoginRequest.password`), nested messages
    /// by theirs; fields it does not know keep their numbers.
    #[test]
    fn a_schema_names_the_fields() {
        let mut schema = ProtoSchema::default();
        schema.methods.insert(
            "/auth.Auth/Login".into(),
            ProtoMethod {
                input: "auth.LoginRequest".into(),
                deprecated: false,
            },
        );
        let msg = |name: &str, fields: &[(u64, &str, Option<&str>)]| ProtoMessage {
            name: name.into(),
            fields: fields
                .iter()
                .map(|(n, f, m)| (*n, ((*f).to_owned(), m.map(str::to_owned))))
                .collect(),
        };
        schema.messages.insert(
            "auth.LoginRequest".into(),
            msg(
                "LoginRequest",
                &[(1, "user", None), (3, "meta", Some("auth.Meta"))],
            ),
        );
        schema
            .messages
            .insert("auth.Meta".into(), msg("Meta", &[(2, "device", None)]));
        let body = grpc(
            &[
                ld(1, b"alice"),
                ld(3, &[ld(2, b"phone"), ld(9, b"x")].concat()),
                ld(7, b"extra"),
            ]
            .concat(),
        );
        let names = |path: &str| {
            let mut v = Vec::new();
            walk_grpc(
                &mut v,
                &body,
                16,
                None,
                1024,
                Names::for_method(Some(&schema), path),
            );
            v.into_iter()
                .map(|i| match i.location {
                    Location::Protobuf(n) => n,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("/auth.Auth/Login"),
            [
                "LoginRequest.user",
                "Meta.device",
                "Meta.9",
                "LoginRequest.7"
            ]
        );
        // A method the set does not have: numbers, as without a schema.
        assert_eq!(names("/auth.Auth/Other"), ["1", "3.2", "3.9", "7"]);
    }
}
