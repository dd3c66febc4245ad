//! Untrusted text on the operator's terminal.
//!
//! Feed lines, policy errors (which quote the file), ban reasons and agent
//! errors can carry bytes an attacker chose. Written to a terminal raw, an
//! escape sequence could rewrite earlier lines, change the title or hide
//! what follows; so everything echoed goes through [`printable`] first.

use std::borrow::Cow;

/// `s` with control characters (C0, DEL, C1), bidirectional overrides and
/// other invisible format characters escaped as `\x1b`, `\u{202e}`, ...;
/// tabs stay. Borrows when nothing needs escaping.
#[must_use]
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            let n = u32::from(c);
            if n < 0x100 {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width, LRM/RLM
            | '\u{2028}'..='\u{202e}' // separators, bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_sequences_and_keeps_plain_text() {
        assert!(matches!(printable("1.2.3.4/32 ok"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b\r\n"),
            "a\\x1b]0;pwned\\x07b\\x0d\\x0a"
        );
        assert_eq!(printable("x\u{9b}31m\u{202e}y"), "x\\x9b31m\\u{202e}y");
        assert_eq!(printable("tab\there é"), "tab\there é");
    }
}
