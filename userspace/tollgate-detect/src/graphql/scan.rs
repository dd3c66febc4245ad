//! One pass over a document's bytes before it is parsed: tokens (never more
//! than the parser would count), selection nesting, aliases and directives of
//! the whole document, and where the parser's share of a long document ends.
//! A 1 MB hostile document is judged from this pass plus a parse of its first
//! part, so its cost is a linear scan, not a parse of everything.

/// What the pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Tokens, counted so that the parser's own count is never lower: a run
    /// of name, number and spread characters is one token here, the parser
    /// may see several.
    pub tokens: usize,
    /// Byte offset just after the `cut_at`-th token (the document's length
    /// when it has fewer): what the parser is given of a long document.
    pub cut: usize,
    /// Deepest `{` nesting outside parentheses (selection sets; an inline
    /// fragment's braces count here, the parser's walk does not count them).
    pub depth: u32,
    /// `name:` outside parentheses: aliases (type definitions, which have no
    /// place in a request, count too).
    pub aliases: u32,
    /// `@` outside strings and comments.
    pub directives: u32,
    /// Bytes of whitespace and comments before `cut` beyond one per run: what
    /// [`compact`] would take out of the parser's share.
    pub ignored: usize,
}

/// Scans `doc`; `cut_at` is the number of tokens the parser is to see.
/// Tokens are counted exactly up to `count_to` (and `cut_at`); past both,
/// `tokens` only says "more" and the rest is read for its shape only.
pub(crate) fn scan(doc: &str, cut_at: usize, count_to: usize) -> Scan {
    let b = doc.as_bytes();
    let mut s = Scan {
        cut: b.len(),
        ..Scan::default()
    };
    // Braces inside parentheses are object values, not selection sets.
    let (mut braces, mut parens) = (0u32, 0u32);
    // A name was the last token outside parentheses (a `:` after it is an alias).
    let mut after_name = false;
    let mut i = 0;
    while i < b.len() {
        if s.tokens > count_to && s.tokens >= cut_at {
            shape_only(b, i, braces, parens, &mut s);
            return s;
        }
        let c = b[i];
        let start = i;
        i += 1;
        let mut is_name = false;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                if s.tokens < cut_at {
                    s.ignored += i - start - 1;
                }
                // Whitespace is a token for the parser but does not separate
                // an alias from its colon.
                s.tokens += 1;
                if s.tokens == cut_at {
                    s.cut = i;
                }
                continue;
            }
            // Text outside strings that is not ASCII is an error to the parser
            // (one token or more); counting none keeps this count the lower one.
            0x80.. => {
                while i < b.len() && b[i] >= 0x80 {
                    i += 1;
                }
                continue;
            }
            b'#' => {
                while i < b.len() && !matches!(b[i], b'\n' | b'\r') {
                    i += 1;
                }
                if s.tokens < cut_at {
                    s.ignored += i - start - 1;
                }
                s.tokens += 1;
                if s.tokens == cut_at {
                    s.cut = i;
                }
                continue;
            }
            b'"' => i = string_end(b, start),
            b'{' | b'}' if parens == 0 => {
                // A run of one brace (`{{{{…`, a megabyte of it) in one
                // step: eight bytes at a time, each brace a token.
                let eight = [c; 8];
                while b.get(i..i + 8) == Some(&eight[..]) {
                    i += 8;
                }
                while b.get(i) == Some(&c) {
                    i += 1;
                }
                let run = u32::try_from(i - start).unwrap_or(u32::MAX);
                if c == b'{' {
                    braces = braces.saturating_add(run);
                    s.depth = s.depth.max(braces);
                } else {
                    braces = braces.saturating_sub(run);
                }
                after_name = false;
                let before = s.tokens;
                s.tokens += i - start;
                if before < cut_at && s.tokens >= cut_at {
                    s.cut = start + (cut_at - before);
                }
                continue;
            }
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b':' if parens == 0 && after_name => s.aliases += 1,
            b'@' => s.directives += 1,
            c if is_word(c) => {
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
                is_name = !c.is_ascii_digit() && c != b'.' && c != b'-' && c != b'+';
            }
            _ => {}
        }
        after_name = is_name && parens == 0;
        s.tokens += 1;
        if s.tokens == cut_at {
            s.cut = i;
        }
    }
    s
}

/// `doc` with each run of whitespace and comments outside strings made one
/// space: the same document to a GraphQL parser (both are ignored tokens),
/// without the megabyte of padding a hostile one hides its shape behind,
/// which the parser would otherwise walk a character at a time.
pub(crate) fn compact(doc: &str) -> String {
    let b = doc.as_bytes();
    let mut out = Vec::with_capacity(b.len().min(64 * 1024));
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'#' => {
                while i < b.len() {
                    match b[i] {
                        b' ' | b'\t' | b'\n' | b'\r' => i += 1,
                        b'#' => {
                            i = memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |k| i + k);
                        }
                        _ => break,
                    }
                }
                out.push(b' ');
            }
            b'"' => {
                let end = string_end(b, i).min(b.len());
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'#' | b'"') {
                    i += 1;
                }
                out.extend_from_slice(&b[start..i]);
            }
        }
    }
    // Cuts fall on ASCII bytes only, so the text stays UTF-8; the lossy
    // path is never taken but costs nothing to keep panic-free.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Bytes [`shape_only`] stops at: everything else is names, numbers,
/// whitespace and punctuation that change no count.
const SHAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let special = b"{}():@\"#";
    while k < special.len() {
        t[special[k] as usize] = true;
        k += 1;
    }
    t
};

/// The rest of a long document from `i` (a token boundary), for depth,
/// aliases and directives only: bytes that change no count are passed over
/// in a tight loop, and whether a `:` follows a name is read backwards, so
/// a megabyte of fields costs a pass over its bytes, not a step per token.
fn shape_only(b: &[u8], mut i: usize, mut braces: u32, mut parens: u32, s: &mut Scan) {
    while i < b.len() {
        if !SHAPE[b[i] as usize] {
            i += 1;
            continue;
        }
        let c = b[i];
        i += 1;
        match c {
            b'"' => i = string_end(b, i - 1),
            b'#' => {
                i = memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |k| i + k);
            }
            b'{' if parens == 0 => {
                braces = braces.saturating_add(1);
                s.depth = s.depth.max(braces);
            }
            b'}' if parens == 0 => braces = braces.saturating_sub(1),
            b'(' => parens = parens.saturating_add(1),
            b')' => parens = parens.saturating_sub(1),
            b':' if parens == 0 && follows_name(b, i - 1) => s.aliases += 1,
            b'@' => s.directives += 1,
            _ => {}
        }
    }
}

/// Whether the last token before `at` (whitespace passed over) is a name:
/// a run of word characters not starting as a number or spread does.
fn follows_name(b: &[u8], at: usize) -> bool {
    let mut k = at;
    while k > 0 && matches!(b[k - 1], b' ' | b'\t' | b'\n' | b'\r') {
        k -= 1;
    }
    let end = k;
    while k > 0 && is_word(b[k - 1]) {
        k -= 1;
    }
    k < end && !matches!(b[k], b'0'..=b'9' | b'.' | b'-' | b'+')
}

/// Characters of names, numbers and the spread operator.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+')
}

/// The end of the string starting at `at` (a `"`): a block string ends at
/// `"""` (not escaped), a plain one at `"` (past line ends, as for the parser).
fn string_end(b: &[u8], at: usize) -> usize {
    if b[at..].starts_with(b"\"\"\"") {
        let mut i = at + 3;
        while i < b.len() {
            if b[i] == b'\\' && b[i + 1..].starts_with(b"\"\"\"") {
                i += 4;
            } else if b[i..].starts_with(b"\"\"\"") {
                return i + 3;
            } else {
                i += 1;
            }
        }
        return b.len();
    }
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return i + 1,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    b.len()
}
