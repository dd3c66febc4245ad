//! Normalization of attacker-controlled strings before detection.
//!
//! Every function here does work linear in its input and caps its output at
//! [`MAX_DECODED`] bytes, so that a crafted input cannot make detection expensive.

use std::borrow::Cow;

/// Longest decoded output kept; detectors never look further.
pub const MAX_DECODED: usize = 16 * 1024;
/// Maximum rounds of repeated decoding (handles `%252e` and entity-in-percent).
pub const MAX_ROUNDS: usize = 3;

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// Percent-decodes `input` (`%XX` and IIS-style `%uXXXX`), optionally mapping `+`
/// to a space (query strings and form bodies). Invalid escapes are kept literally.
/// Bytes are then read as UTF-8 with overlong and fullwidth forms folded.
pub fn percent_decode(input: &str, plus_as_space: bool) -> String {
    let b = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len().min(MAX_DECODED));
    let mut i = 0;
    while i < b.len() && out.len() < MAX_DECODED {
        let c = b[i];
        if c == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            if matches!(b.get(i + 1), Some(b'u' | b'U'))
                && let Some(cp) = hex4(&b[i + 2..])
            {
                push_char(&mut out, cp);
                i += 6;
                continue;
            }
            out.push(c);
        } else if c == b'+' && plus_as_space {
            out.push(b' ');
        } else {
            out.push(c);
        }
        i += 1;
    }
    fold_vec(out)
}

fn hex4(b: &[u8]) -> Option<u32> {
    if b.len() < 4 {
        return None;
    }
    let mut v = 0;
    for &c in &b[..4] {
        v = v * 16 + hex(c)?;
    }
    Some(v)
}

fn push_char(out: &mut Vec<u8>, cp: u32) {
    let ch = fold_char(char::from_u32(cp).unwrap_or('\u{fffd}'));
    let mut buf = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
}

/// Maps look-alike code points that servers have been known to normalize into
/// their ASCII meaning (fullwidth forms, division slash and the like).
fn fold_char(c: char) -> char {
    match c as u32 {
        // Fullwidth ASCII block.
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
        // Enclosed alphanumerics (①, Ⓐ, ⓐ), which NFKC maps to ASCII.
        0x2460..=0x2468 => char::from_u32(c as u32 - 0x2460 + u32::from(b'1')).unwrap_or(c),
        0x24EA => '0',
        0x24B6..=0x24CF => char::from_u32(c as u32 - 0x24B6 + u32::from(b'a')).unwrap_or(c),
        0x24D0..=0x24E9 => char::from_u32(c as u32 - 0x24D0 + u32::from(b'a')).unwrap_or(c),
        0x3002 | 0xFF61 => '.',
        0x2215 | 0x2044 => '/',
        0x2216 | 0xFE68 => '\\',
        0x2024 | 0xFE52 => '.',
        0x02BC | 0x2018 | 0x2019 => '\'',
        0x201C | 0x201D => '"',
        0x00A0 | 0x3000 => ' ',
        _ => c,
    }
}

/// [`utf8_fold`] of a decoder's output, taking it over as is when it is ASCII (which
/// folding leaves unchanged).
fn fold_vec(out: Vec<u8>) -> String {
    match String::from_utf8(out) {
        Ok(s) if s.is_ascii() => s,
        Ok(s) => utf8_fold(s.as_bytes()),
        Err(e) => utf8_fold(e.as_bytes()),
    }
}

/// Lossy UTF-8 decoding that also folds overlong encodings (`C0 AE` = `.`),
/// which some old decoders accepted, instead of replacing them.
fn utf8_fold(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x80 {
            out.push(c as char);
            i += 1;
            continue;
        }
        // Two-byte overlong: C0/C1 + continuation.
        if (c == 0xC0 || c == 0xC1) && b.get(i + 1).is_some_and(|&n| n & 0xC0 == 0x80) {
            let n = b[i + 1];
            out.push(char::from(((c & 1) << 6) | (n & 0x3F)));
            i += 2;
            continue;
        }
        // Three-byte overlong: E0 80..9F + continuation.
        if c == 0xE0
            && b.get(i + 1).is_some_and(|&n| (0x80..0xA0).contains(&n))
            && b.get(i + 2).is_some_and(|&n| n & 0xC0 == 0x80)
        {
            let v = ((u32::from(b[i + 1]) & 0x3F) << 6) | (u32::from(b[i + 2]) & 0x3F);
            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            i += 3;
            continue;
        }
        let len = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        match b.get(i..i + len).and_then(|s| std::str::from_utf8(s).ok()) {
            Some(s) => {
                for ch in s.chars() {
                    out.push(fold_char(ch));
                }
                i += len;
            }
            None => {
                out.push('\u{fffd}');
                i += 1;
            }
        }
    }
    out
}

/// Decodes HTML character references: common named ones, `&#NN;` and `&#xHH;`
/// (the `;` is optional for numeric references, as in browsers).
pub fn html_decode(input: &str) -> String {
    if !input.contains('&') {
        return input.to_owned();
    }
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut last = 0;
    while let Some(off) = memchr::memchr(b'&', &b[i..]) {
        let amp = i + off;
        out.push_str(&input[last..amp]);
        let (ch, used) = entity(&b[amp + 1..]);
        match ch {
            Some(c) => {
                out.push(fold_char(c));
                i = amp + 1 + used;
            }
            None => {
                out.push('&');
                i = amp + 1;
            }
        }
        last = i;
        if out.len() >= MAX_DECODED {
            return out;
        }
    }
    out.push_str(&input[last..]);
    out
}

/// Parses one entity after `&`; returns the character and the bytes consumed.
fn entity(b: &[u8]) -> (Option<char>, usize) {
    if b.first() == Some(&b'#') {
        let (radix, start) = if matches!(b.get(1), Some(b'x' | b'X')) {
            (16, 2)
        } else {
            (10, 1)
        };
        let mut v: u32 = 0;
        let mut j = start;
        // Zero padding is a common evasion (`&#0000060`): skip it (bounded), then
        // cap the significant digits.
        while j < b.len() && j < start + 64 && b[j] == b'0' {
            j += 1;
        }
        let sig = j;
        while j < b.len() && j < sig + 8 {
            match (b[j] as char).to_digit(radix) {
                Some(d) => v = v.saturating_mul(radix).saturating_add(d),
                None => break,
            }
            j += 1;
        }
        if j == start {
            return (None, 0);
        }
        if b.get(j) == Some(&b';') {
            j += 1;
        }
        return (Some(char::from_u32(v).unwrap_or('\u{fffd}')), j);
    }
    const NAMED: &[(&[u8], char)] = &[
        (b"lt", '<'),
        (b"gt", '>'),
        (b"amp", '&'),
        (b"quot", '"'),
        (b"apos", '\''),
        (b"colon", ':'),
        (b"tab", '\t'),
        (b"newline", '\n'),
        (b"lpar", '('),
        (b"rpar", ')'),
        (b"sol", '/'),
        (b"bsol", '\\'),
        (b"equals", '='),
        (b"nbsp", ' '),
        (b"period", '.'),
        (b"comma", ','),
        (b"semi", ';'),
        (b"grave", '`'),
        (b"lsqb", '['),
        (b"rsqb", ']'),
        (b"lcub", '{'),
        (b"lbrace", '{'),
        (b"rbrace", '}'),
        (b"rcub", '}'),
        (b"excl", '!'),
        (b"num", '#'),
        (b"dollar", '$'),
        (b"percnt", '%'),
        (b"plus", '+'),
    ];
    let n = b
        .iter()
        .take(8)
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    let name = &b[..n];
    for (k, c) in NAMED {
        if name.eq_ignore_ascii_case(k) {
            let used = if b.get(n) == Some(&b';') { n + 1 } else { n };
            return (Some(*c), used);
        }
    }
    (None, 0)
}

/// Decodes JavaScript/JSON-style escapes: `\uXXXX`, `\u{X..}`, `\xHH`, and octal-free
/// simple escapes are left alone (they do not hide payload characters).
pub fn js_unescape(input: &str) -> String {
    if !input.contains('\\') {
        return input.to_owned();
    }
    let b = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() && out.len() < MAX_DECODED {
        if b[i] == b'\\' {
            match b.get(i + 1) {
                Some(b'u') => {
                    if let Some(cp) = hex4(&b[i + 2..]) {
                        push_char(&mut out, cp);
                        i += 6;
                        continue;
                    }
                    if b.get(i + 2) == Some(&b'{') {
                        let digits = b[i + 3..]
                            .iter()
                            .take(7)
                            .take_while(|c| c.is_ascii_hexdigit())
                            .count();
                        if digits > 0 && b.get(i + 3 + digits) == Some(&b'}') {
                            let cp = b[i + 3..i + 3 + digits]
                                .iter()
                                .fold(0u32, |a, &c| a * 16 + hex(c).unwrap_or(0));
                            push_char(&mut out, cp);
                            i += 4 + digits;
                            continue;
                        }
                    }
                }
                Some(b'x') => {
                    if let (Some(h), Some(l)) = (
                        b.get(i + 2).copied().and_then(hex),
                        b.get(i + 3).copied().and_then(hex),
                    ) {
                        out.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    fold_vec(out)
}

/// Full normalization for detection: repeated percent, HTML-entity and JS-escape
/// decoding until a fixed point (bounded by [`MAX_ROUNDS`]), NUL bytes dropped.
/// Case is preserved; detectors fold case themselves where it matters.
pub fn normalize(input: &str, plus_as_space: bool) -> String {
    normalize_cow(input, plus_as_space).into_owned()
}

/// [`normalize`], borrowing the (truncated) input when there is nothing to decode
/// or fold, which is the case for most values (words, numbers, ids).
pub fn normalize_cow(input: &str, plus_as_space: bool) -> Cow<'_, str> {
    let input = truncate(input, MAX_DECODED);
    // The bytes that start an escape, a look-alike character or a NUL; without any
    // of them every step below is the identity.
    let untouched = !input
        .bytes()
        .any(|b| matches!(b, b'%' | b'&' | b'\\' | 0) || b >= 0x80 || (plus_as_space && b == b'+'));
    if untouched {
        return Cow::Borrowed(input);
    }
    let mut cur = input.to_owned();
    for round in 0..MAX_ROUNDS {
        let needs = cur.contains('%')
            || cur.contains('&')
            || cur.contains('\\')
            || (round == 0 && plus_as_space && cur.contains('+'));
        if !needs {
            break;
        }
        let mut next = percent_decode(&cur, plus_as_space && round == 0);
        // (Both return a copy of their input when it has nothing to decode.)
        if next.contains('&') {
            next = html_decode(&next);
        }
        if next.contains('\\') {
            next = js_unescape(&next);
        }
        if next == cur {
            break;
        }
        cur = next;
    }
    // Raw (unescaped) look-alike characters need folding too.
    if !cur.is_ascii() {
        cur = utf8_fold(cur.as_bytes());
    }
    if cur.contains('\0') {
        cur.retain(|c| c != '\0');
    }
    Cow::Owned(cur)
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Replaces `/* ... */` comments (including MySQL `/*! */`) by a space: both SQL
/// and shells/JS treat them as separators, attackers use them to split keywords.
pub fn strip_c_comments(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(p) = rest.find("/*") {
        out.push_str(&rest[..p]);
        out.push(' ');
        match rest[p + 2..].find("*/") {
            Some(e) => rest = &rest[p + 2 + e + 2..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// ASCII lowercase copy (Unicode case folding is not needed for ASCII keywords).
pub fn lower(input: &str) -> String {
    input.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%20b+c", true), "a b c");
        assert_eq!(percent_decode("a%20b+c", false), "a b+c");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%u003cscript%u003e", false), "<script>");
        assert_eq!(percent_decode("%c0%ae%c0%ae%c0%af", false), "../");
        assert_eq!(percent_decode("%e0%80%ae", false), ".");
        assert_eq!(percent_decode("%ef%bc%9cscript", false), "<script");
        assert_eq!(percent_decode("%u2216windows", false), "\\windows");
        assert_eq!(percent_decode("caf%C3%A9", false), "café");
        assert_eq!(percent_decode("%ff", false), "\u{fffd}");
    }

    #[test]
    fn double_and_mixed() {
        assert_eq!(normalize("%252e%252e%252f", false), "../");
        assert_eq!(normalize("%26lt%3Bscript%26gt%3B", false), "<script>");
        assert_eq!(normalize("\\u003cimg", false), "<img");
        assert_eq!(normalize("a+b", true), "a b");
        assert_eq!(normalize("a%2Bb", true), "a+b");
        assert_eq!(normalize("x%00y", false), "xy");
    }

    #[test]
    fn entities() {
        assert_eq!(
            html_decode("&lt;a&gt; &#60;&#x3C;&#0000060 &amp;amp; &bogus;"),
            "<a> <<< &amp; &bogus;"
        );
        assert_eq!(
            html_decode("javascript&colon;alert&lpar;1&rpar;"),
            "javascript:alert(1)"
        );
        assert_eq!(html_decode("Tom & Jerry"), "Tom & Jerry");
    }

    #[test]
    fn js() {
        assert_eq!(js_unescape("\\x3cscript\\u{3e}"), "<script>");
        assert_eq!(js_unescape("C:\\new\\x"), "C:\\new\\x");
    }

    #[test]
    fn comments_and_bounds() {
        assert_eq!(
            strip_c_comments("UN/**/ION SEL/*!50000*/ECT /* open"),
            "UN ION SEL ECT  "
        );
        let long = "%41".repeat(MAX_DECODED);
        assert!(normalize(&long, false).len() <= MAX_DECODED);
        assert_eq!(truncate("éé", 3), "é");
    }
}
