//! JSON helpers for attacker-controlled bodies: object keys of a parsed value, and a
//! text scan of `"key": value` members that also works on truncated or broken JSON.

use serde_json::Value;

/// Most keys collected from one body.
pub(crate) const MAX_KEYS: usize = 4096;
/// Deepest nesting walked.
const MAX_DEPTH: usize = 16;

/// Object keys of `v` with their depth (0 = top level, also for objects in a
/// top-level array: batch endpoints).
pub(crate) fn keys(v: &Value, out: &mut Vec<(usize, String)>) {
    walk(v, 0, out);
}

fn walk(v: &Value, depth: usize, out: &mut Vec<(usize, String)>) {
    if depth > MAX_DEPTH || out.len() >= MAX_KEYS {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if out.len() >= MAX_KEYS {
                    return;
                }
                out.push((depth, k.clone()));
                walk(x, depth + 1, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, depth + usize::from(depth > 0), out);
            }
        }
        _ => {}
    }
}

/// `"key": rest` members found in JSON-looking text: each quoted string followed by a
/// colon, with the text after the colon (leading spaces removed). Escaped quotes are
/// not interpreted, so this is a best-effort scan for text that does not parse.
pub(crate) fn members(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let b = text.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            let q = from + memchr::memchr(b'"', b.get(from..)?)?;
            let close = q + 1 + memchr::memchr(b'"', b.get(q + 1..)?)?;
            from = close + 1;
            let rest = text.get(close + 1..)?.trim_start();
            if let Some(rest) = rest.strip_prefix(':') {
                return Some((text.get(q + 1..close)?, rest.trim_start()));
            }
        }
    })
    .take(MAX_KEYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_members() {
        let m: Vec<(&str, &str)> = members(r#"{"a": "b", "c":{"d" :1, "e": "#).collect();
        assert_eq!(
            m,
            [
                ("a", "\"b\", \"c\":{\"d\" :1, \"e\": "),
                ("c", "{\"d\" :1, \"e\": "),
                ("d", "1, \"e\": "),
                ("e", "")
            ]
        );
        assert_eq!(members("\"x\"").count(), 0);
        assert_eq!(members("\"").count(), 0);
    }

    #[test]
    fn value_keys() {
        let v: Value = serde_json::from_str(r#"[{"a":{"b":[{"c":1}]}},{"d":2}]"#).unwrap();
        let mut out = Vec::new();
        keys(&v, &mut out);
        let got: Vec<(usize, &str)> = out.iter().map(|(d, k)| (*d, k.as_str())).collect();
        assert_eq!(got, [(0, "a"), (1, "b"), (3, "c"), (0, "d")]);
    }
}
