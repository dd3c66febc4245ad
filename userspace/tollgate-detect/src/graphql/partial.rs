//! A JSON text cut where capture stopped, closed after its last complete
//! value: `{"variables":{"u":"ana","p":"x' OR` becomes
//! `{"variables":{"u":"ana"}}`. What arrived whole is judged as the server
//! reads it; the value the cut went through is dropped, so half a string (an
//! unbalanced quote, half an escape) never becomes a finding of its own.

/// Containers deeper than this end the text (deeper variables are not walked
/// anyway, see `MAX_JSON_DEPTH`).
const MAX_DEPTH: usize = 64;

/// `text` up to the end of its last complete value, with the containers
/// still open closed, and where that end is (what follows is the value the
/// cut went through). `None` when no container or value started whole, or
/// when the text is broken before the cut (that is no JSON to judge).
pub(crate) fn close(text: &str) -> Option<(serde_json::Value, usize)> {
    let b = text.as_bytes();
    // Open containers (`{` or `[`), and those open at the last good point.
    let mut stack: Vec<u8> = Vec::new();
    let mut good_stack: Vec<u8> = Vec::new();
    // Where the text may be cut and closed: after an opening bracket or a
    // complete value inside a container.
    let mut good: Option<usize> = None;
    // The last structural byte: a string after `{` or `,` in an object is a key.
    let mut prev = 0u8;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let end = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' | b'[' => {
                if stack.len() >= MAX_DEPTH {
                    break;
                }
                stack.push(c);
                prev = c;
                i += 1;
                good = Some(i);
                good_stack.clone_from(&stack);
                continue;
            }
            b'}' | b']' => {
                let open = if c == b'}' { b'{' } else { b'[' };
                if stack.pop() != Some(open) {
                    return None;
                }
                i + 1
            }
            b',' | b':' => {
                prev = c;
                i += 1;
                continue;
            }
            b'"' => {
                let Some(e) = string_end(b, i) else { break };
                if stack.last() == Some(&b'{') && matches!(prev, b'{' | b',') {
                    // A key: complete only with its value.
                    prev = b'k';
                    i = e;
                    continue;
                }
                e
            }
            _ => {
                // A number, `true`, `false` or `null`: whole only once
                // something follows it.
                let mut e = i;
                while e < b.len()
                    && !matches!(b[e], b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']')
                {
                    e += 1;
                }
                if e == b.len() {
                    break;
                }
                e
            }
        };
        // A value ended at `end`.
        prev = b'v';
        i = end;
        if stack.is_empty() {
            // The top-level value is complete: nothing was cut.
            return serde_json::from_str(&text[..end]).ok().map(|v| (v, end));
        }
        good = Some(end);
        good_stack.clone_from(&stack);
    }
    let good = good?;
    let mut closed = text.get(..good)?.to_owned();
    for open in good_stack.iter().rev() {
        closed.push(if *open == b'{' { '}' } else { ']' });
    }
    serde_json::from_str(&closed).ok().map(|v| (v, good))
}

/// The byte after the string starting at `at` (a `"`); `None` when the text
/// ends first.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while let Some(k) = memchr::memchr2(b'"', b'\\', b.get(i..)?) {
        let at = i + k;
        if b[at] == b'"' {
            return Some(at + 1);
        }
        i = at + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::close;

    #[test]
    fn closes_after_the_last_complete_value() {
        for (cut, want) in [
            (r#"{"a":"x","b":"cu"#, json!({"a": "x"})),
            (r#"{"a":"x"} "#, json!({"a": "x"})),
            (r#"{"a":"x","b":"#, json!({"a": "x"})),
            (r#"{"a":"x","b""#, json!({"a": "x"})),
            (r#"{"a":"x","#, json!({"a": "x"})),
            (r#"{"a":{"b":["p",1,tr"#, json!({"a": {"b": ["p", 1]}})),
            (r#"{"a":12"#, json!({})),
            (r#"{"a":12,"b":null}"#, json!({"a": 12, "b": null})),
            (r#"{"a":"x\"y\\","b":"\u00"#, json!({"a": "x\"y\\"})),
            (
                r#"[{"query":"{ a }"},{"query":"{ b"#,
                json!([{"query": "{ a }"}, {}]),
            ),
            ("  {", json!({})),
        ] {
            assert_eq!(close(cut).map(|c| c.0), Some(want), "{cut}");
        }
    }

    #[test]
    fn nothing_whole_or_broken_before_the_cut_is_none() {
        for cut in ["", "   ", r#""abc"#, "12", r#"{"a":]"#, r#"{"a" "b"}"#] {
            assert_eq!(close(cut), None, "{cut}");
        }
    }

    #[test]
    fn deep_nesting_ends_the_text() {
        let deep = format!(r#"{{"v":"x","d":{}"#, "[".repeat(10_000));
        let (v, _) = close(&deep).expect("closed at the depth limit");
        assert_eq!(v["v"], "x");
        assert!(v["d"].is_array());
    }

    #[test]
    fn the_cut_value_follows_the_end() {
        let t = r#"{"operationName":"X","query":"{ a"#;
        assert_eq!(&t[close(t).unwrap().1..], r#","query":"{ a"#);
    }
}
