//! Path normalization and route patterns, shared by the policy routes and the
//! OpenAPI inventory.
//!
//! Requests are matched on what a back end is likely to serve, not on the bytes sent:
//! the path is percent-decoded (once, then again if it still holds escapes), `\` is
//! read as `/`, empty and `.` segments are dropped, `..` removes the previous segment,
//! `;params` are cut from each segment, and literals compare case-insensitively. Each
//! of these folds an evasion (`/users%2F8`, `//users/8`, `/users/8/`, `/./users/8`,
//! `/users;x=1/8`, `/users%00x/8`, `/USERS/8`) into the form the policy was written for.

use crate::decode;

/// Splits a raw request path into normalized, decoded segments.
pub(crate) fn segments(raw: &str) -> Vec<String> {
    let mut path = raw;
    // Absolute form: `http://host/users/8`.
    if let Some(p) = path.find("://") {
        let after = &path[p + 3..];
        path = after.find('/').map_or("/", |i| &after[i..]);
    }
    let mut decoded = decode::percent_decode(path, false);
    if decoded.contains('%') {
        decoded = decode::percent_decode(&decoded, false);
    }
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        // `;params` (servlet containers) and a NUL (C back ends) end a segment.
        let seg = seg.split([';', '\0']).next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            // No cap on the count: `..` after many segments must still apply, and the
            // decoded path is bounded (`decode::MAX_DECODED`).
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// Normalized path as text: `/` followed by the segments.
pub(crate) fn normalized(segs: &[String]) -> String {
    format!("/{}", segs.join("/"))
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `{name}` with optional literal text around it in the same segment.
    Param {
        name: String,
        prefix: String,
        suffix: String,
    },
    /// `*`: any one segment.
    Any,
    /// `**`: the rest of the path (possibly nothing).
    Rest,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    segs: Vec<Seg>,
    /// Literal segments count, for preferring specific patterns.
    pub(crate) literals: usize,
}

/// Why a pattern is not valid.
pub(crate) fn parse_pattern(p: &str) -> Result<Pattern, String> {
    let p = p.trim();
    if !p.starts_with('/') {
        return Err(format!("pattern {p:?} must start with '/'"));
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, s) in parts.iter().enumerate() {
        let seg = if *s == "**" {
            if i + 1 != parts.len() {
                return Err(format!("'**' must be the last segment of {p:?}"));
            }
            Seg::Rest
        } else if *s == "*" {
            Seg::Any
        } else if let Some(open) = s.find('{') {
            let close = s[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("unclosed '{{' in {p:?}"))?;
            let name = &s[open + 1..close];
            let suffix = &s[close + 1..];
            if name.is_empty() || suffix.contains(['{', '}']) || s[..open].contains('}') {
                return Err(format!("segment {s:?} of {p:?} must hold one {{name}}"));
            }
            Seg::Param {
                name: name.to_owned(),
                prefix: s[..open].to_owned(),
                suffix: suffix.to_owned(),
            }
        } else if s.contains('}') {
            return Err(format!("stray '}}' in {p:?}"));
        } else {
            Seg::Literal(decode::percent_decode(s, false))
        };
        segs.push(seg);
    }
    let literals = segs.iter().filter(|s| matches!(s, Seg::Literal(_))).count();
    Ok(Pattern { segs, literals })
}

/// Prefix/suffix comparison that never panics on char boundaries.
fn strip_ci<'a>(s: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let b = s.as_bytes();
    if b.len() < prefix.len() + suffix.len()
        || !b[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        || !b[b.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    {
        return None;
    }
    s.get(prefix.len()..s.len() - suffix.len())
}

impl Pattern {
    /// Names of the `{params}`, in order.
    pub(crate) fn params(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Param { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches normalized segments; returns the captured parameters.
    pub(crate) fn matches<'a>(&self, path: &'a [String]) -> Option<Vec<(&str, &'a str)>> {
        let mut caps = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            if *seg == Seg::Rest {
                return Some(caps);
            }
            let got = path.get(i)?;
            match seg {
                Seg::Literal(l) => {
                    if !l.eq_ignore_ascii_case(got) {
                        return None;
                    }
                }
                Seg::Param {
                    name,
                    prefix,
                    suffix,
                } => {
                    let v = strip_ci(got, prefix, suffix).filter(|v| !v.is_empty())?;
                    caps.push((name.as_str(), v));
                }
                Seg::Any | Seg::Rest => {}
            }
        }
        (path.len() == self.segs.len()).then_some(caps)
    }
}

/// Splits an optional method prefix: `POST /login` → (`Some("POST")`, `/login`).
pub(crate) fn split_method(spec: &str) -> (Option<String>, &str) {
    let spec = spec.trim();
    match spec.split_once(char::is_whitespace) {
        Some((m, rest)) if !m.starts_with('/') => (Some(m.to_ascii_uppercase()), rest.trim()),
        _ => (None, spec),
    }
}

/// Whether `method` (upper case) is in `allowed` (upper case); `HEAD` rides on `GET`.
pub(crate) fn method_allowed(allowed: &[String], method: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|a| a == method)
        || (method == "HEAD" && allowed.iter().any(|a| a == "GET"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        segments(p)
    }

    #[test]
    fn normalization_folds_evasions() {
        let want = vec!["users".to_owned(), "8".to_owned()];
        for p in [
            "/users/8",
            "/users/8/",
            "//users//8",
            "/./users/8",
            "/x/../users/8",
            "/users%2F8",
            "/%75sers/8",
            "/users%252F8",
            "/users;jsessionid=1/8",
            "/users%00.json/8",
            "\\users\\8",
            "http://api.example/users/8",
        ] {
            assert_eq!(segs(p), want, "{p}");
        }
        assert_eq!(normalized(&segs("/a/../../b")), "/b");
        // Padding before `..` cannot push the real target out of reach.
        let padded = format!("{}{}/users/8", "/a".repeat(100), "/..".repeat(100));
        assert_eq!(segs(&padded), want);
        assert_eq!(normalized(&segs("/")), "/");
    }

    #[test]
    fn patterns_match() {
        let p = parse_pattern("/users/{id}/**").unwrap();
        assert_eq!(p.matches(&segs("/users/8")).unwrap(), vec![("id", "8")]);
        assert_eq!(
            p.matches(&segs("/USERS/8/orders/1")).unwrap(),
            vec![("id", "8")]
        );
        assert!(p.matches(&segs("/users")).is_none());
        let f = parse_pattern("/files/{name}.json").unwrap();
        assert_eq!(
            f.matches(&segs("/files/a.JSON")).unwrap(),
            vec![("name", "a")]
        );
        assert!(f.matches(&segs("/files/.json")).is_none());
        assert!(f.matches(&segs("/files/a.xml")).is_none());
        let a = parse_pattern("/a/*/c").unwrap();
        assert!(a.matches(&segs("/a/b/c")).unwrap().is_empty());
        assert!(a.matches(&segs("/a/b/c/d")).is_none());
        assert_eq!(
            parse_pattern("/").unwrap().matches(&segs("/")),
            Some(vec![])
        );
        for bad in ["users", "/a/**/b", "/a/{id", "/a/{}", "/a/id}", "/a/{x}{y}"] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn method_prefix() {
        assert_eq!(
            split_method("post /login"),
            (Some("POST".to_owned()), "/login")
        );
        assert_eq!(split_method("/login"), (None, "/login"));
        assert!(method_allowed(&["GET".to_owned()], "HEAD"));
        assert!(!method_allowed(&["GET".to_owned()], "DELETE"));
        assert!(method_allowed(&[], "DELETE"));
    }
}
