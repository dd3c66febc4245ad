//! SQL injection by tokenizing.
//!
//! The input is tokenized the way a SQL lexer would (strings, numbers, keywords,
//! functions, operators, comments, parentheses) three times: as is, and as if it
//! were spliced after an opening `'` or `"` in the server's query, which is where
//! injected text lands. Rules then look for token sequences that only make sense
//! as SQL: `UNION SELECT`, a string break-out followed by boolean logic, stacked
//! statements, comment truncation, blind/time functions. Prose, even full of SQL
//! words, rarely produces these shapes.

use super::rules;
use super::{ByteSet, Category, Location, STRONG, Sink};

/// Only this much of an input is tokenized.
const MAX_SQL_INPUT: usize = 4096;
/// Tokens kept per pass.
const MAX_TOKENS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// Quoted string; `open` when unterminated.
    Str {
        open: bool,
    },
    Num,
    /// `and`, `or`, `xor`, `&&`, `||`, `not`.
    Logic,
    Union,
    Select,
    /// Statement starters other than SELECT (insert, drop, exec, ...).
    Stmt(Stmt),
    /// Clause keywords after a value (order/group by, having, limit, into ...).
    Clause,
    /// `from`
    From,
    /// Other keyword (where, null, case, as, table, ...).
    Kw,
    /// Identifier followed by `(`; `strong` for functions that exist for injection.
    Func(FuncKind),
    Word,
    /// `@x` or `@@x` (`sys` for the latter).
    Var {
        sys: bool,
    },
    /// Symbolic comparison: `=`, `<`, `>`, `<>`, `!=`.
    Cmp,
    /// Word comparison: `like`, `rlike`, `regexp`, `is`, `in`, `between`.
    CmpWord,
    /// Stored-procedure-like name (`xp_*`, `sp_*`, `master..*`).
    Proc,
    /// System catalog names (`information_schema`, `sqlite_master`, ...).
    Catalog,
    /// Comment that plausibly truncates a query (`--` + blank, `/*`, trailing `#`).
    CommentWeak,
    /// Arithmetic/bitwise operator.
    Op,
    Comment,
    LParen,
    RParen,
    Comma,
    Semi,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stmt {
    Insert,
    Update,
    Delete,
    Drop,
    Create,
    Alter,
    Exec,
    Declare,
    Shutdown,
    Truncate,
    Waitfor,
    Set,
    Grant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FuncKind {
    /// Functions whose only common use in a request is an injection (time/error based).
    Attack,
    /// `sleep(` and similar, ambiguous in prose.
    Delay,
    /// Ordinary SQL functions (version(), concat(), char() ...).
    Sql,
    Other,
}

fn keyword(w: &[u8]) -> Tok {
    match w {
        b"and" | b"or" | b"xor" | b"not" | b"div" => Tok::Logic,
        b"true" | b"false" => Tok::Num,
        b"union" => Tok::Union,
        b"select" => Tok::Select,
        b"insert" => Tok::Stmt(Stmt::Insert),
        b"update" => Tok::Stmt(Stmt::Update),
        b"delete" => Tok::Stmt(Stmt::Delete),
        b"drop" => Tok::Stmt(Stmt::Drop),
        b"create" => Tok::Stmt(Stmt::Create),
        b"alter" => Tok::Stmt(Stmt::Alter),
        b"exec" | b"execute" => Tok::Stmt(Stmt::Exec),
        b"declare" => Tok::Stmt(Stmt::Declare),
        b"shutdown" => Tok::Stmt(Stmt::Shutdown),
        b"truncate" => Tok::Stmt(Stmt::Truncate),
        b"waitfor" => Tok::Stmt(Stmt::Waitfor),
        b"set" => Tok::Stmt(Stmt::Set),
        b"grant" | b"revoke" => Tok::Stmt(Stmt::Grant),
        b"order" | b"group" | b"having" | b"limit" | b"into" | b"procedure" | b"offset"
        | b"rlike_" => Tok::Clause,
        b"from" => Tok::From,
        // Niladic functions that name the session: SQL, not prose.
        b"current_user" | b"session_user" | b"system_user" | b"current_database"
        | b"current_schema" => Tok::Func(FuncKind::Sql),
        b"like" | b"rlike" | b"regexp" | b"is" | b"in" | b"between" | b"sounds" | b"glob"
        | b"notnull" | b"isnull" => Tok::CmpWord,
        b"where" | b"null" | b"case" | b"when" | b"then" | b"else" | b"end" | b"as" | b"table"
        | b"values" | b"all" | b"distinct" | b"by" | b"delay" | b"top" | b"join" | b"outfile"
        | b"dumpfile" | b"asc" | b"desc" | b"database" | b"exists" => Tok::Kw,
        _ => Tok::Word,
    }
}

fn func_kind(w: &[u8]) -> FuncKind {
    match w {
        b"benchmark"
        | b"pg_sleep"
        | b"extractvalue"
        | b"updatexml"
        | b"load_file"
        | b"xp_cmdshell"
        | b"sys_eval"
        | b"sys_exec"
        | b"randomblob"
        | b"pg_read_file"
        | b"lo_import"
        | b"make_set"
        | b"geometrycollection"
        | b"multipoint"
        | b"polygon"
        | b"linestring"
        | b"exp"
        | b"name_const"
        | b"dbms_pipe.receive_message"
        | b"dbms_lock.sleep"
        | b"utl_inaddr.get_host_name"
        | b"utl_http.request"
        | b"ctxsys.drithsx.sn"
        | b"sp_executesql"
        | b"openrowset"
        | b"opendatasource"
        | b"gtid_subset"
        | b"json_keys"
        | b"st_latfromgeohash" => FuncKind::Attack,
        b"sleep" | b"waitfor" => FuncKind::Delay,
        b"version"
        | b"database"
        | b"user"
        | b"current_user"
        | b"system_user"
        | b"session_user"
        | b"schema"
        | b"concat"
        | b"concat_ws"
        | b"group_concat"
        | b"char"
        | b"chr"
        | b"nchar"
        | b"ascii"
        | b"ord"
        | b"substring"
        | b"substr"
        | b"mid"
        | b"hex"
        | b"unhex"
        | b"cast"
        | b"convert"
        | b"if"
        | b"ifnull"
        | b"iif"
        | b"isnull"
        | b"coalesce"
        | b"count"
        | b"md5"
        | b"sha1"
        | b"floor"
        | b"rand"
        | b"length"
        | b"len"
        | b"char_length"
        | b"lower"
        | b"upper"
        | b"left"
        | b"right"
        | b"elt"
        | b"field"
        | b"row"
        | b"db_name"
        | b"user_name"
        | b"@@version"
        | b"sqlite_version"
        | b"last_insert_rowid"
        | b"cos"
        | b"sin"
        | b"tan"
        | b"pi"
        | b"pow"
        | b"power"
        | b"abs"
        | b"ceil"
        | b"sqrt"
        | b"mod"
        | b"round"
        | b"log"
        | b"rtrim"
        | b"ltrim"
        | b"schema_name"
        | b"unicode"
        | b"instr"
        | b"locate"
        | b"position"
        | b"strcmp"
        | b"reverse"
        | b"replace"
        | b"trim"
        | b"now"
        | b"sysdate"
        | b"current_database"
        | b"pg_user"
        | b"to_char"
        | b"decode"
        | b"utl_raw.cast_to_varchar2"
        | b"table_name"
        | b"column_name"
        | b"least"
        | b"greatest"
        | b"bin"
        | b"oct"
        | b"conv"
        | b"quote"
        | b"soundex"
        | b"uuid"
        | b"connection_id"
        | b"found_rows"
        | b"row_count"
        | b"password" => FuncKind::Sql,
        _ => FuncKind::Other,
    }
}

fn is_catalog(w: &[u8]) -> bool {
    let head = w.split(|&b| b == b'.').next().unwrap_or(w);
    matches!(
        head,
        b"information_schema"
            | b"sqlite_master"
            | b"sqlite_schema"
            | b"pg_catalog"
            | b"pg_shadow"
            | b"sysobjects"
            | b"syscolumns"
            | b"msysaccessobjects"
            | b"msysobjects"
            | b"sysibm"
            | b"syscat"
            | b"all_users"
            | b"all_tables"
            | b"dba_users"
            | b"user_tables"
            | b"all_tab_columns"
            | b"sysdatabases"
            | b"msdb"
            | b"sysusers"
            | b"sysservers"
            | b"pg_user"
            | b"pg_group"
            | b"pg_roles"
            | b"pg_database"
            | b"schema_name"
    ) || w == b"mysql.user"
        || w == b"sys.tables"
        || w == b"sys.objects"
}

/// PostgreSQL types a value is cast to in order to fail with its text in
/// the error message (numeric ones) or to read a catalog (`regclass`).
fn cast_type(w: &[u8]) -> bool {
    matches!(
        w,
        b"int"
            | b"integer"
            | b"bigint"
            | b"smallint"
            | b"int2"
            | b"int4"
            | b"int8"
            | b"numeric"
            | b"decimal"
            | b"float"
            | b"float4"
            | b"float8"
            | b"double"
            | b"real"
            | b"regclass"
            | b"oid"
    )
}

/// MongoDB query operators sent where a plain value is expected: `u[$ne]=1`,
/// `{"password": {"$ne": null}}`, `{"$where": "sleep(1000)"}`. Operators that run
/// JavaScript are an attack on their own; the comparison ones alert, since some
/// APIs take Mongo-style filters (`filters[title][$eq]=x`) on purpose.
fn nosql_operator(lower: &str) -> Option<(u32, usize)> {
    const CODE: &[&str] = &["where", "function", "accumulator"];
    const QUERY: &[&str] = &[
        "ne",
        "eq",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "nin",
        "not",
        "nor",
        "or",
        "and",
        "regex",
        "exists",
        "expr",
        "elemmatch",
        "type",
        "size",
        "all",
        "mod",
        "jsonschema",
    ];
    let b = lower.as_bytes();
    memchr::memchr_iter(b'$', b).find_map(|p| {
        // At the start of the input (a JSON key), or after `[`, `{`, or a quote.
        let lead = p == 0 || matches!(b[p - 1], b'[' | b'{' | b'"' | b'\'');
        let name = ident_at(b, p + 1);
        let tail = b.get(p + 1 + name.len());
        let end = tail.is_none_or(|c| matches!(c, b']' | b'"' | b'\'' | b':'));
        let name = std::str::from_utf8(name).ok()?;
        if !(lead && end) {
            return None;
        }
        if CODE.contains(&name) {
            Some((STRONG, p))
        } else if QUERY.contains(&name) {
            Some((6, p))
        } else {
            None
        }
    })
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_ident(b: u8) -> bool {
    IDENT[usize::from(b)]
}

/// [`is_ident`] as a table: identifiers are most of the bytes the tokenizer reads.
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.' || c >= 0x80;
        b += 1;
    }
    t
};

/// Tokenizes `s` (already lowercased). `prefix` simulates an opening quote before it.
fn tokenize(s: &[u8], prefix: Option<u8>, out: &mut Vec<(Tok, usize)>) {
    out.clear();
    let mut i = 0;
    if let Some(q) = prefix {
        let (end, open) = scan_string(s, 0, q);
        out.push((Tok::Str { open }, 0));
        i = end;
    }
    while i < s.len() && out.len() < MAX_TOKENS {
        let c = s[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
            b'\'' | b'"' => {
                let (end, open) = scan_string(s, i + 1, c);
                out.push((Tok::Str { open }, start));
                i = end;
            }
            b'`' => {
                // Quoted identifier.
                i = memchr::memchr(b'`', &s[i + 1..]).map_or(s.len(), |p| i + 1 + p + 1);
                out.push((Tok::Word, start));
            }
            b'0'..=b'9' => {
                i = scan_number(s, i);
                out.push((Tok::Num, start));
            }
            b'.' if s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = scan_number(s, i + 1);
                out.push((Tok::Num, start));
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                // `--x` is not a comment in MySQL and rare as a truncation elsewhere.
                let strong = s.get(i + 2).is_none_or(|b| !b.is_ascii_alphanumeric());
                out.push((
                    if strong {
                        Tok::Comment
                    } else {
                        Tok::CommentWeak
                    },
                    start,
                ));
                i = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |p| i + p + 1);
            }
            b'#' => {
                // `#` truncates when it ends the input; `#2 circular` is prose.
                let end = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |p| i + p);
                let strong = s[i + 1..end].iter().all(u8::is_ascii_whitespace);
                out.push((
                    if strong {
                        Tok::Comment
                    } else {
                        Tok::CommentWeak
                    },
                    start,
                ));
                i = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |p| i + p + 1);
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                if s.get(i + 2) == Some(&b'!') {
                    // MySQL executable comment: its body is code. Skip the marker and
                    // an optional version number; the closing `*/` is skipped below.
                    i += 3;
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
                let end = finder!(b"*/")
                    .find(&s[i + 2..])
                    .map_or(s.len(), |p| i + 2 + p + 2);
                // A comment used as a separator inside code is not a truncation.
                out.push((Tok::Comment, start));
                i = end;
            }
            b'*' if s.get(i + 1) == Some(&b'/') => {
                i += 2;
                continue;
            }
            b'@' => {
                let sys = s.get(i + 1) == Some(&b'@');
                i += if sys { 2 } else { 1 };
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                out.push((Tok::Var { sys }, start));
            }
            b'(' => {
                out.push((Tok::LParen, start));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, start));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, start));
                i += 1;
            }
            b';' => {
                out.push((Tok::Semi, start));
                i += 1;
            }
            b'&' if s.get(i + 1) == Some(&b'&') => {
                out.push((Tok::Logic, start));
                i += 2;
            }
            b'|' if s.get(i + 1) == Some(&b'|') => {
                out.push((Tok::Logic, start));
                i += 2;
            }
            b'=' | b'<' | b'>' | b'!' | b':' => {
                while i < s.len()
                    && matches!(s[i], b'=' | b'<' | b'>' | b'!' | b':')
                    && i - start < 3
                {
                    i += 1;
                }
                // A lone `!` is too common outside SQL (`println!`, "hi!") to be NOT.
                let tok = if &s[start..i] == b"!" {
                    Tok::Op
                } else {
                    Tok::Cmp
                };
                out.push((tok, start));
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'&' | b'|' | b'~' => {
                out.push((Tok::Op, start));
                i += 1;
            }
            _ if is_ident_start(c) => {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                // (Compared as bytes; a word that is not UTF-8 is no keyword.)
                let mut w = &s[start..i];
                if !w.is_ascii() && std::str::from_utf8(w).is_err() {
                    w = b"";
                }
                while let [head @ .., b'.'] = w {
                    w = head;
                }
                // Function: identifier followed (after blanks or comments) by `(`.
                let mut j = i;
                loop {
                    while j < s.len() && s[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if s[j..].starts_with(b"/*") && !s[j..].starts_with(b"/*!") {
                        j = finder!(b"*/")
                            .find(&s[j + 2..])
                            .map_or(s.len(), |p| j + 2 + p + 2);
                        continue;
                    }
                    break;
                }
                let kw = if w.starts_with(b"xp_")
                    || w.starts_with(b"sp_")
                    || w.starts_with(b"master.")
                {
                    Tok::Proc
                } else if is_catalog(w) {
                    Tok::Catalog
                } else {
                    keyword(w)
                };
                let tok = if s.get(j) == Some(&b'(')
                    && !matches!(
                        kw,
                        Tok::Logic
                            | Tok::Union
                            | Tok::Select
                            | Tok::From
                            | Tok::Cmp
                            | Tok::CmpWord
                            | Tok::Stmt(Stmt::Exec)
                            | Tok::Func(_)
                    ) {
                    Tok::Func(func_kind(w))
                } else {
                    kw
                };
                out.push((tok, start));
            }
            _ => {
                out.push((Tok::Other, start));
                i += 1;
            }
        }
    }
}

fn scan_string(s: &[u8], mut i: usize, q: u8) -> (usize, bool) {
    while i < s.len() {
        let c = s[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if c == q {
            // A doubled quote is an escaped quote inside the string.
            if s.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return (i + 1, false);
        }
        i += 1;
    }
    (s.len(), true)
}

fn scan_number(s: &[u8], mut i: usize) -> usize {
    if s[i] == b'0' && matches!(s.get(i + 1), Some(b'x' | b'b')) {
        i += 2;
        while i < s.len() && s[i].is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while i < s.len() && (s[i].is_ascii_digit() || s[i] == b'.') {
        i += 1;
    }
    if i < s.len()
        && s[i] == b'e'
        && s.get(i + 1)
            .is_some_and(|c| c.is_ascii_digit() || *c == b'-' || *c == b'+')
    {
        i += 2;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
    }
    i
}

fn is_value(t: Tok) -> bool {
    matches!(
        t,
        Tok::Str { .. } | Tok::Num | Tok::Var { .. } | Tok::Func(_) | Tok::Word | Tok::Kw
    )
}

fn is_literal(t: Tok) -> bool {
    matches!(
        t,
        Tok::Str { .. }
            | Tok::Num
            | Tok::Var { .. }
            | Tok::Func(FuncKind::Sql | FuncKind::Attack | FuncKind::Delay)
    )
}

pub(crate) struct Sqli;

/// Tokens, findings and analysis scratch, kept between inputs.
type Buffers = (Vec<(Tok, usize)>, Vec<Hit>, Scratch);

/// A finding inside one token stream: rule, score, byte offset.
type Hit = (&'static str, u32, usize);

impl Sqli {
    pub(crate) fn new() -> Sqli {
        Sqli
    }

    /// `set` holds the bytes of `lower`.
    pub(crate) fn check(&self, lower: &str, set: &ByteSet, loc: &Location, sink: &mut Sink<'_>) {
        if set.any(&ByteSet::from(b"$"))
            && let Some((sc, at)) = nosql_operator(crate::decode::truncate(lower, MAX_SQL_INPUT))
        {
            sink.push(
                rules::SQLI_NOSQL_OPERATOR,
                Category::Sqli,
                sc,
                loc,
                lower,
                at,
            );
        }
        let s = crate::decode::truncate(lower, MAX_SQL_INPUT).as_bytes();
        // Cheap pre-filter: injections need at least one of these bytes or words.
        const TRIGGERS: ByteSet = ByteSet::from(b"'\"(;=#-@|&<>/`");
        let trigger = if s.len() == lower.len() {
            set.any(&TRIGGERS)
        } else {
            ByteSet::of(s).any(&TRIGGERS)
        };
        if !trigger
            && memchr::memmem::find(s, b"::").is_none()
            && !s.split(|b| !b.is_ascii_alphanumeric()).any(|w| {
                matches!(
                    w,
                    b"union" | b"or" | b"and" | b"order" | b"having" | b"xor" | b"select"
                )
            })
        {
            return;
        }
        // Buffers are reused across inputs: this runs for most values of every request.
        thread_local! {
            static BUFS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
        }
        BUFS.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                return;
            };
            let (toks, hits, scratch) = &mut *b;
            hits.clear();
            Self::check_with(s, loc, sink, toks, hits, scratch);
        });
    }

    fn check_with(
        s: &[u8],
        loc: &Location,
        sink: &mut Sink<'_>,
        toks: &mut Vec<(Tok, usize)>,
        hits: &mut Vec<Hit>,
        scratch: &mut Scratch,
    ) {
        passes(s, toks, hits, scratch);
        // `un/**/ion sel/**/ect`: keywords split by comments, for filters that
        // strip comments. Tokenize once more with such comments removed.
        if let Some(joined) = join_split_words(s) {
            let before = hits.len();
            passes(&joined, toks, hits, scratch);
            // Offsets into the joined copy do not point into `s`.
            for h in &mut hits[before..] {
                h.2 = 0;
            }
        }
        let text = std::str::from_utf8(s).unwrap_or("");
        for &(rule, score, at) in hits.iter() {
            sink.push(rule, Category::Sqli, score, loc, text, at);
        }
    }
}

/// Tokenizes and analyzes `s` as is and as if spliced after each quote it contains.
fn passes(s: &[u8], toks: &mut Vec<(Tok, usize)>, hits: &mut Vec<Hit>, scratch: &mut Scratch) {
    for prefix in [None, Some(b'\''), Some(b'"')] {
        if let Some(q) = prefix
            && memchr::memchr(q, s).is_none()
        {
            continue;
        }
        tokenize(s, prefix, toks);
        analyze(s, toks, prefix.is_some(), hits, scratch);
    }
}

/// `s` without the `/*...*/` comments that sit inside a word (`un/**/ion`), if any.
fn join_split_words(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut last = 0;
    for p in finder!(b"/*").find_iter(s) {
        if p < last || p == 0 || !s[p - 1].is_ascii_alphanumeric() {
            continue;
        }
        let Some(e) = finder!(b"*/").find(&s[p + 2..]).map(|e| p + 2 + e + 2) else {
            break;
        };
        if s.get(e).is_some_and(u8::is_ascii_alphanumeric) {
            out.extend_from_slice(&s[last..p]);
            last = e;
        }
    }
    if last == 0 {
        return None;
    }
    out.extend_from_slice(&s[last..]);
    Some(out)
}

/// The identifier starting at `p`.
fn ident_at(s: &[u8], p: usize) -> &[u8] {
    let rest = s.get(p..).unwrap_or_default();
    let n = rest
        .iter()
        .take_while(|&&b| is_ident(b) && b != b'.')
        .count();
    &rest[..n]
}

/// `length(version())`, `ascii(substring(password,1,1))`: a character code or
/// length of a slice or of a session function, which is how blind injection reads
/// data one character at a time. Spreadsheet formulas nest other functions.
fn blind_extraction(outer: &[u8], inner: &[u8]) -> bool {
    const INFO: &[&[u8]] = &[
        b"version",
        b"user",
        b"current_user",
        b"system_user",
        b"session_user",
        b"database",
        b"schema",
        b"db_name",
        b"user_name",
        b"sqlite_version",
        b"current_database",
    ];
    INFO.contains(&inner)
        || matches!(
            outer,
            b"ascii" | b"ord" | b"unicode" | b"hex" | b"conv" | b"length" | b"char_length"
        ) && matches!(inner, b"substring" | b"substr" | b"mid")
}

fn add(hits: &mut Vec<Hit>, rule: &'static str, score: u32, at: usize) {
    match hits.iter_mut().find(|h| h.0 == rule) {
        Some(h) => h.1 = h.1.max(score),
        None => hits.push((rule, score, at)),
    }
}

/// Does a SQL statement start at `i` (token after `;` or a break-out)?
fn statement_at(t: &[Tok], i: usize) -> bool {
    let at = |k: usize| t.get(i + k).copied();
    match at(0) {
        Some(Tok::Select) => {
            matches!(at(1), Some(tk) if is_value(tk) || tk == Tok::Op || tk == Tok::LParen)
        }
        Some(Tok::Stmt(st)) => match st {
            Stmt::Insert => matches!(at(1), Some(Tok::Clause)),
            Stmt::Delete => {
                matches!(at(1), Some(Tok::From))
                    || matches!(at(1), Some(Tok::Word))
                        && matches!(at(2), Some(Tok::Kw | Tok::From))
            }
            Stmt::Update => {
                matches!(at(1), Some(Tok::Word)) && matches!(at(2), Some(Tok::Stmt(Stmt::Set)))
            }
            Stmt::Drop | Stmt::Create | Stmt::Alter | Stmt::Truncate => {
                matches!(at(1), Some(Tok::Kw | Tok::Word)) && {
                    // Object kinds; checked by token kind only, words like "table" are Kw.
                    matches!(at(1), Some(Tok::Kw))
                        || matches!(at(2), Some(Tok::Word | Tok::Semi | Tok::Comment) | None)
                }
            }
            Stmt::Exec => matches!(
                at(1),
                Some(Tok::Proc | Tok::Str { .. } | Tok::LParen | Tok::Var { .. })
            ),
            Stmt::Declare => matches!(at(1), Some(Tok::Var { .. })),
            Stmt::Set => matches!(at(1), Some(Tok::Var { .. })),
            Stmt::Grant => {
                matches!(at(1), Some(Tok::Word | Tok::Kw | Tok::Stmt(_)))
                    && matches!(at(2), Some(Tok::Word | Tok::Kw | Tok::Comma))
            }
            Stmt::Shutdown => matches!(at(1), None | Some(Tok::Comment | Tok::Semi)),
            Stmt::Waitfor => {
                matches!(at(1), Some(Tok::Kw)) && matches!(at(2), Some(Tok::Str { .. }))
            }
        },
        _ => false,
    }
}

/// Is there a boolean expression at `i` that makes the condition trivially true or
/// false: `1=1`, `'a'='a`, `2>1`, `1`, `'x' like 'x'`, `sleep(5)`?
/// Is the literal at `p` a truth value (`0`, `1`, `true`, `false`: how an
/// injected bare condition is written), rather than a quantity?
fn truth_literal(s: &[u8], p: usize) -> bool {
    let rest = s.get(p..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    matches!(word, b"0" | b"1")
        || word.eq_ignore_ascii_case(b"true")
        || word.eq_ignore_ascii_case(b"false")
}

/// Score of a condition that is only an open quoted word (`"x" and "y`).
const PHRASE: u32 = 2;

fn logic_operand(t: &[Tok], s: &[u8], pos: &[usize], mut i: usize) -> Option<u32> {
    while matches!(
        t.get(i),
        Some(Tok::LParen) | Some(Tok::Op) | Some(Tok::Logic)
    ) {
        i += 1;
    }
    let a = *t.get(i)?;
    match a {
        Tok::Func(FuncKind::Attack | FuncKind::Delay | FuncKind::Sql) => return Some(STRONG),
        Tok::Select => return Some(STRONG),
        _ => {}
    }
    if !is_value(a) {
        return None;
    }
    let mut j = i + 1;
    // Arithmetic on the left side: `1+2=3+4`.
    while matches!(t.get(j), Some(Tok::Op)) && t.get(j + 1).is_some_and(|&x| is_literal(x)) {
        j += 2;
    }
    while matches!(t.get(j), Some(Tok::RParen)) {
        j += 1;
    }
    match t.get(j) {
        Some(Tok::Cmp | Tok::CmpWord) => {
            let mut k = j + 1;
            while matches!(
                t.get(k),
                Some(Tok::Cmp | Tok::CmpWord | Tok::LParen | Tok::Op | Tok::Logic)
            ) {
                k += 1;
            }
            // Postfix tests (`x notnull`, `x is null`) end the condition.
            let Some(&b) = t.get(k) else { return Some(6) };
            if matches!(b, Tok::Select)
                || matches!(
                    b,
                    Tok::Func(FuncKind::Attack | FuncKind::Delay | FuncKind::Sql)
                )
            {
                return Some(STRONG);
            }
            // Literal against literal (`1=1`, `'a'='a'`, `2>1`) is decided without any
            // column: a tautology or contradiction.
            if matches!(a, Tok::Num | Tok::Str { open: false })
                && matches!(b, Tok::Num | Tok::Str { .. })
            {
                return Some(STRONG);
            }
            // word = word after a break-out is still suspicious, but weaker.
            if is_value(b) { Some(7) } else { None }
        }
        // A bare literal condition ending the input or cut by a comment: `' or 1--`.
        Some(Tok::Comment) | Some(Tok::Semi) if is_literal(a) => Some(STRONG),
        // `1 or 2` and `"x" and "y` are also how people write searches.
        None if is_literal(a) => Some(match a {
            Tok::Str { open: true } => PHRASE,
            // `or 1` makes anything true; `1950 or 1960` is a search.
            Tok::Num if !truth_literal(s, pos.get(i).copied().unwrap_or(0)) => PHRASE,
            _ => 6,
        }),
        Some(Tok::Logic) if is_literal(a) => Some(8),
        // `or 1 group by ...`, `or 1 having ...`.
        Some(Tok::Clause) if is_literal(a) => Some(STRONG),
        Some(Tok::Op) if is_literal(a) => Some(6),
        _ => None,
    }
}

/// Per-call buffers reused across the three tokenizer passes.
#[derive(Default)]
struct Scratch {
    t: Vec<Tok>,
    pos: Vec<usize>,
    comment_after: Vec<bool>,
}

fn analyze(
    s: &[u8],
    toks: &[(Tok, usize)],
    quoted: bool,
    hits: &mut Vec<Hit>,
    scratch: &mut Scratch,
) {
    // Comments are separators for everything except truncation.
    let Scratch {
        t,
        pos,
        comment_after,
    } = scratch;
    t.clear();
    pos.clear();
    comment_after.clear();
    for &(tk, p) in toks {
        if tk == Tok::CommentWeak {
            continue;
        }
        if tk == Tok::Comment {
            if let Some(last) = comment_after.last_mut() {
                *last = true;
            }
            continue;
        }
        t.push(tk);
        pos.push(p);
        comment_after.push(false);
    }
    let n = t.len();
    let at = |i: usize| pos.get(i).copied().unwrap_or(0);
    // The condition after the logic operator at `k`. A search phrase
    // (`"x" and "y`) is below the alert level unless the operator is glued
    // to a quote that closes a word (`a'or'a`): people put spaces there,
    // crafted input does not. A quoted keyword (`"not"`) opens its quote.
    let operand = |k: usize| {
        logic_operand(t, s, pos, k + 1).map(|sc| {
            let p = at(k);
            let glued = p > 0
                && matches!(s.get(p - 1), Some(b'\'' | b'"' | b'`'))
                && (p == 1 || s.get(p - 2).is_some_and(u8::is_ascii_alphanumeric));
            if sc == PHRASE && glued {
                PHRASE + 1
            } else {
                sc
            }
        })
    };

    for i in 0..n {
        match t[i] {
            Tok::Union => {
                let mut j = i + 1;
                while matches!(t.get(j), Some(Tok::Kw | Tok::LParen | Tok::Op)) {
                    j += 1;
                }
                if t.get(j) == Some(&Tok::Select) {
                    add(hits, rules::SQLI_UNION, STRONG, at(i));
                }
            }
            Tok::Semi if statement_at(t, i + 1) => {
                add(hits, rules::SQLI_STACKED, STRONG, at(i));
            }
            Tok::Func(FuncKind::Attack) => add(hits, rules::SQLI_FUNCTION, STRONG, at(i)),
            Tok::Func(FuncKind::Delay) => {
                let prev = if i > 0 { t.get(i - 1).copied() } else { None };
                let ctx = matches!(
                    prev,
                    Some(
                        Tok::Logic
                            | Tok::Op
                            | Tok::Cmp
                            | Tok::CmpWord
                            | Tok::Select
                            | Tok::Comma
                            | Tok::LParen
                            | Tok::Str { .. }
                            | Tok::Semi
                            | Tok::Clause
                    )
                );
                // `sleep(5)`: a call with a literal delay is a probe anywhere.
                let literal_call = matches!(
                    t.get(i + 1..i + 4),
                    Some([Tok::LParen, Tok::Num, Tok::RParen])
                );
                add(
                    hits,
                    rules::SQLI_TIME_BLIND,
                    if ctx || literal_call { STRONG } else { 4 },
                    at(i),
                );
            }
            // A lone server variable (`@@version`) is a probe.
            Tok::Var { sys: true } => add(
                hits,
                rules::SQLI_SYSVAR,
                if n == 1 { STRONG } else { 6 },
                at(i),
            ),
            Tok::Stmt(Stmt::Waitfor)
                if t.get(i + 1) == Some(&Tok::Kw)
                    && matches!(t.get(i + 2), Some(Tok::Str { .. })) =>
            {
                add(hits, rules::SQLI_TIME_BLIND, STRONG, at(i));
            }
            Tok::Stmt(Stmt::Exec) if matches!(t.get(i + 1), Some(Tok::Proc)) => {
                add(hits, rules::SQLI_STACKED, STRONG, at(i));
            }
            Tok::Clause
                if t.get(i + 1) == Some(&Tok::Kw)
                    && matches!(t.get(i + 2), Some(Tok::Str { .. })) =>
            {
                // `into outfile '...'` / `into dumpfile '...'`.
                add(hits, rules::SQLI_FILE_WRITE, STRONG, at(i));
            }
            Tok::Func(FuncKind::Sql) if i == 0 => {
                // A value that is a bare SQL function call, e.g. `database(` or
                // `concat(`: an unclosed call with nothing else is a probe.
                let bare = n <= 2 && t.get(1).is_none_or(|&x| x == Tok::LParen);
                add(
                    hits,
                    rules::SQLI_FUNCTION,
                    if bare { STRONG } else { 6 },
                    at(i),
                );
            }
            Tok::Select => {
                // Subquery in an expression: `=(select`, `and (select`, `,(select`.
                let prev = if i > 0 { t.get(i - 1).copied() } else { None };
                let prev2 = if i > 1 { t.get(i - 2).copied() } else { None };
                if prev == Some(Tok::LParen)
                    && matches!(
                        prev2,
                        Some(
                            Tok::Cmp
                                | Tok::CmpWord
                                | Tok::Logic
                                | Tok::Op
                                | Tok::Comma
                                | Tok::Str { .. }
                                | Tok::Num
                                | Tok::LParen
                                | Tok::Func(_)
                        )
                    )
                    && statement_at(t, i)
                {
                    add(hits, rules::SQLI_SUBQUERY, STRONG, at(i));
                } else if statement_at(t, i) {
                    // `select x from y` in isolation is only a hint (could be a
                    // question about SQL); it needs a FROM with SQL-ish neighbours.
                    let window = &t[i + 1..n.min(i + 12)];
                    if let Some(f) = window.iter().position(|&x| x == Tok::From) {
                        let sqlish = window[..f].iter().any(|x| {
                            matches!(
                                x,
                                Tok::Func(_) | Tok::Var { .. } | Tok::Num | Tok::Comma | Tok::Op
                            )
                        }) && matches!(
                            window.get(f + 1),
                            Some(Tok::Word | Tok::LParen | Tok::Kw)
                        );
                        // (Prose "how to select rows from a table" stays below the alert level.)
                        add(hits, rules::SQLI_SELECT, if sqlish { 6 } else { 2 }, at(i));
                    }
                }
            }
            Tok::Word => {
                // References to the catalog are reconnaissance.
                let p = at(i);
                let _ = p;
            }
            _ => {}
        }
        // Tautology anywhere: logic operator followed by a literal comparison.
        if t[i] == Tok::Logic
            && i > 0
            && let Some(sc) = operand(i)
        {
            let prev = t[i - 1];
            let strong_ctx =
                quoted && i <= 3 || matches!(prev, Tok::Num | Tok::Str { .. } | Tok::RParen);
            if sc >= STRONG {
                // Literal-vs-literal or function comparisons after a logic operator.
                add(hits, rules::SQLI_TAUTOLOGY, STRONG, at(i));
            } else if quoted && i <= 3 || strong_ctx && sc >= 6 && quoted {
                add(hits, rules::SQLI_TAUTOLOGY, sc.min(6), at(i));
            }
        }
    }

    // A value that starts with a logic operator continues a condition: `and 1=2)`.
    let ends_in_comment = comment_after.last().copied().unwrap_or(false);
    if !quoted
        && t.first() == Some(&Tok::Logic)
        && let Some(sc) = operand(0)
    {
        // Cut off by a comment it is an injected condition, not a search phrase.
        let sc = if ends_in_comment && sc >= 6 {
            STRONG
        } else {
            sc
        };
        add(hits, rules::SQLI_TAUTOLOGY, sc, at(0));
    }
    // A value starting with a clause: `having 1=1#`, `order by 3--`.
    if !quoted && t.first() == Some(&Tok::Clause) {
        let shaped = match t.get(1) {
            Some(Tok::Kw) => matches!(t.get(2), Some(Tok::Num | Tok::Func(_))),
            Some(Tok::Num) => matches!(t.get(2), Some(Tok::Cmp) | None),
            _ => false,
        };
        if shaped {
            add(hits, rules::SQLI_CLAUSE, STRONG, at(0));
        }
    }
    // A complete statement as the value: `select * from users`, `select @@version`.
    if !quoted && t.first() == Some(&Tok::Select) && statement_at(t, 0) {
        // `select * from menu` is also a search; the star alone is not SQL enough.
        let window = &t[1..n.min(12)];
        let window = window.strip_prefix(&[Tok::Op]).unwrap_or(window);
        let sqlish = window.iter().any(|x| {
            matches!(
                x,
                Tok::Func(_) | Tok::Var { .. } | Tok::Op | Tok::Comma | Tok::Catalog | Tok::Proc
            )
        });
        let shaped = window.contains(&Tok::From) || t.last() == Some(&Tok::Semi) || n <= 3;
        if sqlish && shaped || matches!(t.get(1), Some(Tok::Var { sys: true } | Tok::Func(_))) {
            // Probes are short (`select @@version`, `select * from sysusers;`); a long
            // statement is more likely a snippet shared through the API.
            add(
                hits,
                rules::SQLI_SELECT,
                if n <= 8 { STRONG } else { 6 },
                at(0),
            );
        }
    }
    // Nested calls that read data a character at a time.
    for i in 0..n.saturating_sub(2) {
        if matches!(t[i], Tok::Func(FuncKind::Sql))
            && t[i + 1] == Tok::LParen
            && matches!(t[i + 2], Tok::Func(FuncKind::Sql))
            && blind_extraction(ident_at(s, at(i)), ident_at(s, at(i + 2)))
        {
            add(hits, rules::SQLI_BLIND_EXTRACTION, STRONG, at(i));
            break;
        }
    }
    // A value that is a procedural statement: `declare @q ...`, `exec(@q)`,
    // `exec master..xp_cmdshell`, `waitfor delay '0:0:5'`.
    if !quoted
        && matches!(
            t.first(),
            Some(Tok::Stmt(
                Stmt::Declare | Stmt::Exec | Stmt::Waitfor | Stmt::Set
            ))
        )
        && statement_at(t, 0)
        && (t.first() != Some(&Tok::Stmt(Stmt::Exec))
            || t.iter().any(|&x| matches!(x, Tok::Var { .. } | Tok::Proc)))
    {
        add(hits, rules::SQLI_STACKED, STRONG, at(0));
    }
    // PostgreSQL casts force conversion errors that leak the value: of a call
    // result (`lo_get(1)::int`, `f(x)::double precision`) a ban, of a column
    // (`password::int`) an alert.
    if let Some(p) = memchr::memmem::find_iter(s, b"::").find(|&p| {
        p > 0 && (s[p - 1] == b')' || is_ident(s[p - 1])) && cast_type(ident_at(s, p + 2))
    }) {
        let sc = if s[p - 1] == b')' { STRONG } else { 6 };
        add(hits, rules::SQLI_ERROR_BASED, sc, p);
    }
    // Catalog tables are only named by reconnaissance queries.
    if let Some(p) = t.iter().position(|&x| x == Tok::Catalog) {
        add(hits, rules::SQLI_CATALOG, STRONG, at(p));
    }
    if let Some(p) = t.iter().position(|&x| x == Tok::Proc)
        && t.iter()
            .any(|&x| matches!(x, Tok::Stmt(Stmt::Exec) | Tok::Semi))
    {
        add(hits, rules::SQLI_STACKED, STRONG, at(p));
    }

    // Break-out analysis: what follows the (simulated) string or a leading number.
    let lead_num =
        !quoted && n > 0 && (t[0] == Tok::Num || (t[0] == Tok::Op && t.get(1) == Some(&Tok::Num)));
    if quoted && matches!(t.first(), Some(Tok::Str { open: false })) || lead_num {
        let mut j = if lead_num && t[0] == Tok::Op { 2 } else { 1 };
        let lead_comment = comment_after.get(j - 1).copied().unwrap_or(false);
        while matches!(t.get(j), Some(Tok::RParen)) {
            j += 1;
        }
        // A list of numbers (`17,23 order by 16`) is one value.
        while lead_num && t.get(j) == Some(&Tok::Comma) && t.get(j + 1) == Some(&Tok::Num) {
            j += 2;
        }
        let next = t.get(j).copied();
        match next {
            // `-1 union/*`: a union cut off by a comment.
            Some(Tok::Union) if j + 1 == n && comment_after.get(j).copied().unwrap_or(false) => {
                add(hits, rules::SQLI_UNION, STRONG, at(j));
            }
            // `1 select * from users having 1=1#`: a statement glued to the value.
            Some(Tok::Select) if statement_at(t, j) && t[j..n.min(j + 12)].contains(&Tok::From) => {
                add(hits, rules::SQLI_UNION, STRONG, at(j));
            }
            // `' || f(x) || '`: a call concatenated into the string.
            // After a number (`1 || lpad(user,7,1)`) it is also MySQL's OR: reported.
            Some(Tok::Logic)
                if (quoted || lead_num)
                    && s[at(j)..].starts_with(b"||")
                    && matches!(t.get(j + 1), Some(Tok::Func(_)))
                    && t.get(j + 2) == Some(&Tok::LParen)
                    && t[j + 2..]
                        .iter()
                        .position(|&x| x == Tok::RParen)
                        .is_some_and(|r| matches!(t.get(j + 3 + r), Some(Tok::Logic) | None)) =>
            {
                add(
                    hits,
                    rules::SQLI_CONCAT,
                    if quoted { STRONG } else { 6 },
                    at(j),
                );
            }
            None if quoted && lead_comment => {
                add(hits, rules::SQLI_COMMENT_TRUNCATION, STRONG, at(j - 1))
            }
            Some(Tok::Logic) => {
                if let Some(sc) = operand(j) {
                    // Right after a string break-out any condition is injected logic;
                    // after a number, any comparison is.
                    let sc = if quoted && sc >= 6 || sc >= 7 {
                        STRONG
                    } else {
                        sc
                    };
                    add(hits, rules::SQLI_TAUTOLOGY, sc, at(j));
                }
            }
            Some(Tok::Clause) => {
                // `order by 1`, `group by x`, `having 1=1`, `limit 1`, `into outfile`.
                let shaped = match t.get(j + 1) {
                    Some(Tok::Kw) => matches!(
                        t.get(j + 2),
                        Some(
                            Tok::Num | Tok::Word | Tok::Func(_) | Tok::Str { .. } | Tok::Var { .. }
                        )
                    ),
                    Some(Tok::Num | Tok::Var { .. } | Tok::Func(_)) => true,
                    _ => false,
                };
                if shaped {
                    add(hits, rules::SQLI_CLAUSE, STRONG, at(j));
                }
            }
            Some(Tok::Cmp) if quoted => {
                if matches!(
                    t.get(j + 1),
                    Some(Tok::Str { .. } | Tok::Num | Tok::Select | Tok::Func(_) | Tok::LParen)
                ) {
                    add(hits, rules::SQLI_TAUTOLOGY, STRONG, at(j));
                }
            }
            Some(Tok::Op) if quoted => {
                if matches!(
                    t.get(j + 1),
                    Some(Tok::Func(_) | Tok::Select | Tok::LParen | Tok::Var { .. })
                ) {
                    add(hits, rules::SQLI_CONCAT, 8, at(j));
                }
            }
            Some(Tok::Semi) if comment_after.get(j).copied().unwrap_or(false) && quoted => {
                add(hits, rules::SQLI_COMMENT_TRUNCATION, STRONG, at(j));
            }
            _ => {}
        }
        // `admin'--`: a closed string cut off by a comment after a few tokens.
        if quoted && lead_comment && j == 1 && n == 1 {
            add(hits, rules::SQLI_COMMENT_TRUNCATION, STRONG, at(0));
        }
    }
    // Injection ending in a comment that swallows the rest of the original query,
    // after SQL-shaped tokens.
    if quoted && n >= 3 && comment_after.last().copied().unwrap_or(false) {
        let has_logic_cmp = t.windows(3).any(|w| {
            w[0] == Tok::Logic && is_value(w[1]) && matches!(w[2], Tok::Cmp | Tok::CmpWord)
        });
        if has_logic_cmp {
            add(hits, rules::SQLI_COMMENT_TRUNCATION, 8, at(n - 1));
        } else if t[..n - 1].iter().any(|&x| {
            matches!(
                x,
                Tok::Logic
                    | Tok::Cmp
                    | Tok::CmpWord
                    | Tok::Union
                    | Tok::Select
                    | Tok::Clause
                    | Tok::Stmt(_)
            )
        }) {
            // Any SQL operator between the break-out and the comment
            // (`'or(glob 1)--`): enough to report, not to ban.
            add(hits, rules::SQLI_COMMENT_TRUNCATION, 6, at(n - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::run;

    fn q(payload: &str) -> Action {
        let raw = format!(
            "GET /api/v1/items?q={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            payload.replace(' ', "%20")
        );
        run(&raw).1
    }

    fn flagged(raw: &str) -> Vec<(&'static str, u32)> {
        run(raw).0.iter().map(|v| (v.rule, v.score)).collect()
    }

    #[test]
    fn nosql_operators_casts_and_reported_forms() {
        let get = |q: &str| format!("GET /api/v1/items?{q} HTTP/1.1\r\nHost: a\r\n\r\n");
        let post = |b: &str| {
            format!(
                "POST /api/v1/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
        };
        // Operators that run JavaScript ban; comparison operators report.
        assert_eq!(run(&post(r#"{"$where": "sleep(1000)"}"#)).1, Action::Ban);
        assert!(
            flagged(&post(r#"{"user":"ana","password":{"$ne":null}}"#))
                .contains(&("sqli.nosql_operator", 6))
        );
        assert!(flagged(&get("user[$ne]=x")).contains(&("sqli.nosql_operator", 6)));
        assert!(flagged(&get("q=[$lte]5")).contains(&("sqli.nosql_operator", 6)));
        // Prices, templates and JSON Schema keywords are not operators.
        for q in [
            "price=$5",
            "tpl=${name}",
            "note=pay%20$in%20cash",
            "total=US$100",
        ] {
            assert!(flagged(&get(q)).is_empty(), "{q}");
        }
        assert!(flagged(&post(r##"{"$schema":"x","$ref":"#/a"}"##)).is_empty());
        // PostgreSQL casts: of a call result a ban, of a column a report.
        assert_eq!(
            run(&get("id=function(foo)::double%20precision")).1,
            Action::Ban
        );
        assert!(flagged(&get("id=password::int")).contains(&("sqli.error_based", 6)));
        assert!(flagged(&get("ns=std::string&ip=fe80::1")).is_empty());
        // A break-out closed by a comment around any SQL operator: reported.
        assert_eq!(run(&get("var=%27or%28glob%201%29--")).1, Action::Alert);
        // `||` after a number is MySQL's OR: reported.
        assert_eq!(
            run(&get("id=1+%7C%7C+lpad%28user%2C7%2C1%29")).1,
            Action::Alert
        );
    }

    #[test]
    fn attacks() {
        for p in [
            "1%27%20or%20%271%27%3D%271",
            "admin%27--",
            "admin'%23",
            "1+union+select+1,2,3",
            "-1%20UNION%20ALL%20SELECT%20NULL,version()--",
            "1;drop+table+users",
            "x%27;DROP TABLE users;--",
            "1%20and%20sleep(5)",
            "1%27+AND+(SELECT+*+FROM+(SELECT(SLEEP(5)))bAKL)--+",
            "1+or+1%3D1",
            "%27%20or%20%27%27%3D%27",
            "1%27%20ORDER%20BY%203--%20",
            "1)+or+(1=1",
            "1+AND+extractvalue(1,concat(0x7e,version()))",
            "1/**/union/**/select/**/1,2",
            "1%2527%2520or%25201%253D1--",
            "1';waitfor delay '0:0:5'--",
            "%27%20or%20benchmark(1000000,md5(1))%23",
            // Keywords split by comments, union cut off by a comment.
            "1+un/**/ion+sel/**/ect+1,2,3--",
            "-1%20union/*",
            // Blind extraction through nested functions.
            "ascii(substring(version()%20from%201%20for%201))",
            "LENGTH(version())",
            "foo%27+%2B+(1+/+ASCII(substring(passwd,1,1))-4)--",
            // Statements as the whole value, procedural and catalog probes.
            "declare+@q+nvarchar(200)+set+@q%3D0x73+exec(@q)",
            "select+%2A+from+sysusers",
            "select+session_user%3B",
            "select+grantee+from+syscat.dbauth%3B",
            "17,23%20order%20by%2016",
            "1%20SELECT%20*%20from%20t%20group%20by%20t.id%20having%201=1%23",
            // Concatenated calls and PostgreSQL error casts.
            "%27+%7C%7C+myapp.adduser(%27admin%27,+%27x%27)+%7C%7C+%27",
            "encode(lo_get(16200),%27base64%27)::int",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
    }

    #[test]
    fn bare_conditions_by_form() {
        // A truth value, or a quote that closes a word glued to the operator,
        // is how injected conditions are written: still flagged.
        for p in ["1+or+1", "or+true--", "a%27or%27a"] {
            assert_ne!(q(p), Action::Allow, "{p}");
        }
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "O%27Brien",
            "O%27+UNION+selected+a+few+friends",
            "select+a+union",
            "drop+me+a+line",
            "Tom+%26+Jerry",
            "rock+%27n%27+roll+or+blues",
            "how+to+select+rows+from+a+table",
            "1-2-3",
            "it%27s+fine+--+really",
            "2024-05-01",
            "first+and+second",
            "email%3Djohn%40example.com",
            "(555)+123-4567",
            "select+all+items+from+the+list",
            // Searches with quoted words and year ranges.
            "1950+or+1960",
            "christmas+stocking+%22not%22+stuffer",
            "%27countdown+calendar%22+and+%22disney",
        ] {
            assert_eq!(q(p), Action::Allow, "{p}");
        }
        // Code and formulas may alert, but are not banned.
        for p in [
            "drop+table+reservation",
            "=ROUND(SUM(A1:A3),2)",
            "len(str(x))",
            "see+/*+note+*/+below",
            "3+select+items",
            "it%27s+a+||+b",
            "price::integer",
            "select+%2A+from+menu",
        ] {
            assert_ne!(q(p), Action::Ban, "{p}");
        }
    }
}
