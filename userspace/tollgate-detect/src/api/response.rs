//! Response-body scanners (API3 excessive data exposure, API8 misconfiguration):
//! payment card numbers, private keys, cloud credentials, password fields, stack
//! traces and debug pages.
//!
//! Findings carry masked evidence only: the last four card digits, a key's prefix,
//! a field name. Each scanner reports at most one finding per response.

use aho_corasick::AhoCorasick;

/// One exposure with its masked evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    Card(String),
    PrivateKey(String),
    CloudKey(String),
    Password(String),
    StackTrace(String),
    /// A database error message: the engine's name and the marker.
    DbError(String),
}

/// Markers of stack traces and framework debug pages. Those ending in a frame shape
/// (`.java:`, `.js:`) are checked further in [`frame_line`].
const TRACE_MARKERS: &[&str] = &[
    "Traceback (most recent call last)",
    "goroutine 1 [running]",
    "[running]:\ngoroutine",
    "panic: runtime error",
    "PHP Fatal error",
    "PHP Warning:",
    "Fatal error</b>:",
    "Stack trace:\n#0 ",
    "Server Error in '/' Application",
    "System.NullReferenceException",
    "System.InvalidOperationException",
    "at System.",
    "Exception in thread \"",
    "You're seeing this error because you have <code>DEBUG = True</code>",
    "Werkzeug Debugger",
    "Whoops! There was an error",
    "Symfony\\Component\\",
    "Action Controller: Exception caught",
    ".java:",
    ".js:",
    ".rb:",
];

/// Error messages of database engines and their drivers, as applications
/// pass them on (an injection probe breaking the query's syntax makes them
/// show): `(engine, marker)`, case-sensitive as the engines write them.
const DB_MARKERS: &[(&str, &str)] = &[
    ("SQLite", "SQLITE_ERROR"),
    ("SQLite", "sqlite3.OperationalError"),
    ("SQLite", "SQLiteException"),
    ("SQLite", "SQLite3::SQLException"),
    ("SQLite", "\": syntax error"),
    ("SQLite", "unrecognized token: \""),
    ("SQLite", "SQLite error"),
    ("MySQL", "You have an error in your SQL syntax"),
    ("MySQL", "corresponds to your MySQL server version"),
    ("MariaDB", "corresponds to your MariaDB server version"),
    ("MySQL", "MySQLSyntaxErrorException"),
    ("MySQL", "com.mysql.jdbc"),
    ("MySQL", "MySql.Data.MySqlClient"),
    ("MySQL", "ER_PARSE_ERROR"),
    ("MySQL", "Warning: mysql_"),
    ("MySQL", "Warning: mysqli_"),
    ("MySQL", "mysqli_sql_exception"),
    ("PostgreSQL", "syntax error at or near \""),
    ("PostgreSQL", "unterminated quoted string at or near"),
    ("PostgreSQL", "invalid input syntax for type"),
    ("PostgreSQL", "PG::SyntaxError"),
    ("PostgreSQL", "psycopg2.errors."),
    ("PostgreSQL", "org.postgresql.util.PSQLException"),
    ("PostgreSQL", "Npgsql.PostgresException"),
    ("PostgreSQL", "pg_query(): Query failed"),
    (
        "MSSQL",
        "Unclosed quotation mark after the character string",
    ),
    ("MSSQL", "Incorrect syntax near '"),
    ("MSSQL", "System.Data.SqlClient.SqlException"),
    ("MSSQL", "Microsoft.Data.SqlClient.SqlException"),
    ("MSSQL", "[Microsoft][ODBC SQL Server Driver]"),
    ("MSSQL", "[Microsoft][ODBC Driver"),
    ("MSSQL", "com.microsoft.sqlserver.jdbc.SQLServerException"),
    ("MSSQL", "Microsoft OLE DB Provider for SQL Server"),
    ("Oracle", "ORA-"),
    ("Oracle", "quoted string not properly terminated"),
    ("Oracle", "SQL command not properly ended"),
    ("Oracle", "oracle.jdbc.OracleDatabaseException"),
    ("Oracle", "cx_Oracle.DatabaseError"),
    ("SQL", "SQLSTATE["),
    ("SQL", "java.sql.SQLSyntaxErrorException"),
    ("SQL", "Microsoft JET Database Engine"),
    ("SQL", "Syntax error in string in query expression"),
    ("SQL", "DB2 SQL error"),
    ("SQL", "SequelizeDatabaseError"),
    ("SQL", "QueryFailedError"),
    ("SQL", "sqlalchemy.exc."),
];

/// Cloud credential shapes: prefix and the length/alphabet of the rest. Only secrets:
/// Google API keys (`AIza…`), for one, are left out because web pages embed them on
/// purpose (browser keys restricted by referrer).
struct KeyShape {
    prefix: &'static str,
    /// Exact (min == max) or bounded length of the part after the prefix.
    min: usize,
    max: usize,
    upper_only: bool,
}

const KEY_SHAPES: &[KeyShape] = &[
    // AWS access key ids (long-term and temporary).
    KeyShape {
        prefix: "AKIA",
        min: 16,
        max: 16,
        upper_only: true,
    },
    KeyShape {
        prefix: "ASIA",
        min: 16,
        max: 16,
        upper_only: true,
    },
    // GitHub tokens.
    KeyShape {
        prefix: "ghp_",
        min: 36,
        max: 36,
        upper_only: false,
    },
    KeyShape {
        prefix: "gho_",
        min: 36,
        max: 36,
        upper_only: false,
    },
    KeyShape {
        prefix: "ghs_",
        min: 36,
        max: 36,
        upper_only: false,
    },
    KeyShape {
        prefix: "github_pat_",
        min: 60,
        max: 90,
        upper_only: false,
    },
    // Stripe live secret keys.
    KeyShape {
        prefix: "sk_live_",
        min: 24,
        max: 99,
        upper_only: false,
    },
    // Slack tokens.
    KeyShape {
        prefix: "xoxb-",
        min: 20,
        max: 120,
        upper_only: false,
    },
    KeyShape {
        prefix: "xoxp-",
        min: 20,
        max: 120,
        upper_only: false,
    },
];

/// Compiled scanners.
pub(crate) struct Scanner {
    traces: AhoCorasick,
    db: AhoCorasick,
    keys: AhoCorasick,
}

impl Scanner {
    pub(crate) fn new() -> Scanner {
        Scanner {
            traces: crate::detect::matcher(TRACE_MARKERS),
            db: crate::detect::matcher(&DB_MARKERS.iter().map(|m| m.1).collect::<Vec<_>>()),
            keys: crate::detect::matcher(&KEY_SHAPES.iter().map(|k| k.prefix).collect::<Vec<_>>()),
        }
    }

    /// Scans a (bounded) response body.
    pub(crate) fn scan(&self, body: &[u8]) -> Vec<Finding> {
        let text = String::from_utf8_lossy(body);
        let mut out = Vec::new();
        if let Some(c) = card(text.as_bytes()) {
            out.push(Finding::Card(c));
        }
        if let Some(k) = private_key(&text) {
            out.push(Finding::PrivateKey(k));
        }
        if let Some(k) = self.cloud_key(text.as_bytes()) {
            out.push(Finding::CloudKey(k));
        }
        if let Some(p) = password_field(&text) {
            out.push(Finding::Password(p));
        }
        if let Some(t) = self.trace(&text) {
            out.push(Finding::StackTrace(t));
        }
        if let Some(d) = self.db_error(&text) {
            out.push(Finding::DbError(d));
        }
        out
    }

    fn db_error(&self, text: &str) -> Option<String> {
        self.db.find_iter(text).find_map(|m| {
            let (engine, marker) = DB_MARKERS[m.pattern().as_usize()];
            // Oracle codes are `ORA-` and five digits (`ORA-00933:`).
            let rest = text.as_bytes().get(m.end()..m.end() + 6).unwrap_or(&[]);
            let glued = m.start() > 0 && text.as_bytes()[m.start() - 1].is_ascii_alphanumeric();
            let code =
                rest.len() == 6 && rest[..5].iter().all(u8::is_ascii_digit) && rest[5] == b':';
            if marker == "ORA-" && (glued || !code) {
                return None;
            }
            let at = &text[m.start()..];
            let end = at.find('\n').unwrap_or(at.len());
            Some(format!(
                "{engine}: {}",
                crate::decode::truncate(&at[..end], 60)
            ))
        })
    }

    fn cloud_key(&self, b: &[u8]) -> Option<String> {
        for m in self.keys.find_iter(b) {
            let shape = &KEY_SHAPES[m.pattern().as_usize()];
            if m.start() > 0 && is_token_byte(b[m.start() - 1]) {
                continue;
            }
            let rest = &b[m.end()..];
            let len = rest.iter().take_while(|&&c| is_token_byte(c)).count();
            let alphabet_ok = rest[..len].iter().all(|&c| {
                if shape.upper_only {
                    c.is_ascii_uppercase() || c.is_ascii_digit()
                } else {
                    is_token_byte(c)
                }
            });
            if (shape.min..=shape.max).contains(&len) && alphabet_ok {
                return Some(format!("{}****", shape.prefix));
            }
        }
        None
    }

    fn trace(&self, text: &str) -> Option<String> {
        for m in self.traces.find_iter(text) {
            let marker = TRACE_MARKERS[m.pattern().as_usize()];
            if marker.starts_with('.') {
                if let Some(frame) = frame_line(text, m.start(), m.end()) {
                    return Some(frame);
                }
                continue;
            }
            return Some(crate::decode::truncate(marker, 60).replace('\n', "\\n"));
        }
        None
    }
}

/// Characters of credential tokens.
fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// A source-file reference (`Foo.java:12)`, `app.js:10:5)`, `x.rb:3:in`) counts as a
/// stack frame when the line reads `at …(` (Java, .NET, Node) or `…:in` (Ruby).
fn frame_line(text: &str, start: usize, end: usize) -> Option<String> {
    let b = text.as_bytes();
    let digits = b[end..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let after = &text[end + digits..];
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..start].trim_start();
    let ruby = after.starts_with(":in ");
    let java_node = line.starts_with("at ") && line.contains('(');
    if !(ruby || java_node) {
        return None;
    }
    let frame = &text[line_start..(end + digits).min(text.len())];
    Some(crate::decode::truncate(frame.trim(), 80).to_owned())
}

/// First PEM private key header.
fn private_key(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN ") {
        let after = &rest[i + 11..];
        let label_end = after.find("-----")?;
        let label = &after[..label_end];
        if label.len() <= 40 && label.ends_with("PRIVATE KEY") || label == "PGP PRIVATE KEY BLOCK" {
            return Some(format!("-----BEGIN {label}-----"));
        }
        rest = after;
    }
    None
}

/// First plausible card number: 13–19 digits, single spaces or dashes between digit
/// groups, a known issuer prefix and a valid Luhn check digit. Evidence keeps the
/// last four digits.
fn card(b: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < b.len() {
        // Digits glued to a word or a decimal (`v1.4111…`, `ab4111…`) are not a card.
        let glued = i > 0
            && (b[i - 1].is_ascii_alphanumeric()
                || (b[i - 1] == b'.' && i > 1 && b[i - 2].is_ascii_digit()));
        if !b[i].is_ascii_digit() || glued {
            i += 1;
            continue;
        }
        let mut digits: Vec<u8> = Vec::with_capacity(19);
        let mut j = i;
        while j < b.len() && digits.len() <= 19 {
            let c = b[j];
            if c.is_ascii_digit() {
                digits.push(c - b'0');
                j += 1;
            } else if matches!(c, b' ' | b'-')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
                && j > i
            {
                j += 1;
            } else {
                break;
            }
        }
        let bounded = b.get(j).is_none_or(|c| {
            !(c.is_ascii_alphanumeric()
                || (*c == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
        });
        if bounded && (13..=19).contains(&digits.len()) && issuer(&digits) && luhn(&digits) {
            let last4: String = digits[digits.len() - 4..]
                .iter()
                .map(|d| char::from(b'0' + d))
                .collect();
            return Some(format!("**** **** **** {last4}"));
        }
        i = j.max(i + 1);
    }
    None
}

/// Known issuer prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay),
/// so that timestamps and random ids that happen to pass Luhn are not reported.
fn issuer(d: &[u8]) -> bool {
    let n = |k: usize| d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x));
    let len = d.len();
    match d[0] {
        4 => matches!(len, 13 | 16 | 19),
        5 => (51..=55).contains(&n(2)) && len == 16,
        2 => (2221..=2720).contains(&n(4)) && len == 16,
        3 => {
            (matches!(n(2), 34 | 37) && len == 15)
                || ((3528..=3589).contains(&n(4)) && len >= 16)
                || (matches!(n(2), 36 | 38 | 39) || (300..=305).contains(&n(3))) && len >= 14
        }
        6 => n(4) == 6011 || n(2) == 65 || (644..=649).contains(&n(3)) || n(2) == 62,
        _ => false,
    }
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Values that are clearly not a secret (masked or empty placeholders).
fn placeholder(v: &str) -> bool {
    let v = v.trim();
    v.is_empty()
        || v.chars()
            .all(|c| matches!(c, '*' | '•' | 'x' | 'X' | '#' | '.'))
        || v.eq_ignore_ascii_case("redacted")
        || v.eq_ignore_ascii_case("[redacted]")
        || v.eq_ignore_ascii_case("[filtered]")
        || v.eq_ignore_ascii_case("null")
}

/// A JSON member `"…password": "<value>"` (also `passwd`, `pwd`, `secret`,
/// `…_secret`, `password_hash`) with a non-empty, unmasked string value. Works on
/// truncated JSON too, since it reads the text rather than parsing it.
fn password_field(text: &str) -> Option<String> {
    super::json::members(text).find_map(|(key, rest)| {
        if key.len() > 40 || !secret_key(key) {
            return None;
        }
        let val = rest.strip_prefix('"')?;
        let end = val.find('"').unwrap_or(val.len());
        (!placeholder(&val[..end])).then(|| format!("\"{key}\": \"****\""))
    })
}

fn secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    k.ends_with("password")
        || k.ends_with("passwd")
        || k == "pwd"
        || k.ends_with("secret")
        || k == "passwordhash"
        || k == "passworddigest"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &str) -> Vec<Finding> {
        Scanner::new().scan(s.as_bytes())
    }

    #[test]
    fn cards() {
        for s in [
            r#"{"card":"4111111111111111"}"#,
            "pay with 4111 1111 1111 1111 today",
            "4111-1111-1111-1111",
            "amex 378282246310005.",
            "mc 5555555555554444",
        ] {
            let f = scan(s);
            assert!(
                matches!(&f[..], [Finding::Card(e)] if e.starts_with("**** ")),
                "{s}: {f:?}"
            );
            assert!(!format!("{f:?}").contains("41111111"));
        }
        assert_eq!(
            scan("4111 1111 1111 1111"),
            vec![Finding::Card("**** **** **** 1111".into())]
        );
        for s in [
            r#"{"order_id":"4111111111111112"}"#,            // fails Luhn
            r#"{"ts":1732800000000,"id":1234567812345670}"#, // no issuer prefix
            "sha 4111111111111111abc",
            "v1.4111111111111111",
            "4111 1111 1111",
        ] {
            assert!(scan(s).is_empty(), "{s}: {:?}", scan(s));
        }
    }

    #[test]
    fn keys_and_secrets() {
        let f = scan("-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----");
        assert_eq!(
            f,
            vec![Finding::PrivateKey(
                "-----BEGIN RSA PRIVATE KEY-----".into()
            )]
        );
        assert!(scan("-----BEGIN PUBLIC KEY-----\nMII").is_empty());
        let f = scan(r#"{"aws_access_key_id":"AKIAIOSFODNN7EXAMPLE"}"#);
        assert_eq!(f, vec![Finding::CloudKey("AKIA****".into())]);
        assert!(scan("AKIAIOSFODNN7EXAMPLEX").is_empty());
        assert!(scan("xAKIAIOSFODNN7EXAMPLE").is_empty());
        assert_eq!(
            scan(r#"{"user":"bob","Password":"hunter2"}"#),
            vec![Finding::Password("\"Password\": \"****\"".into())]
        );
        assert_eq!(scan(r#"[{"client_secret" : "abc"#).len(), 1);
        for benign in [
            "<p>Forgot your password? We will send a password reset link.</p>",
            r#"<input type="password" name="password">"#,
            r#"{"password":"","secret":"********","passwordPolicy":"min 8"}"#,
            r#"{"password_changed":true}"#,
        ] {
            assert!(scan(benign).is_empty(), "{benign}: {:?}", scan(benign));
        }
    }

    #[test]
    fn db_errors() {
        for (s, engine) in [
            (r#"{"error":"near \")\": syntax error"}"#, "SQLite"),
            (
                r#"sqlite3.OperationalError: unrecognized token: "')""#,
                "SQLite",
            ),
            (
                "You have an error in your SQL syntax; check the manual that corresponds to your MariaDB server version",
                "MySQL",
            ),
            (
                "ERROR:  syntax error at or near \"'\"\nLINE 1: SELECT",
                "PostgreSQL",
            ),
            (
                "ERROR: unterminated quoted string at or near \"'1\"",
                "PostgreSQL",
            ),
            (
                "Unclosed quotation mark after the character string '1'.",
                "MSSQL",
            ),
            (
                "Microsoft OLE DB Provider for SQL Server error '80040e14'",
                "MSSQL",
            ),
            ("ORA-01756: quoted string not properly terminated", "Oracle"),
            ("ORA-00933: SQL command not properly ended", "Oracle"),
            (
                "SQLSTATE[42000]: Syntax error or access violation: 1064",
                "SQL",
            ),
        ] {
            let f = scan(s);
            assert!(
                f.iter()
                    .any(|x| matches!(x, Finding::DbError(e) if e.starts_with(engine))),
                "{s}: {f:?}"
            );
        }
        for benign in [
            "Our SQL course covers syntax errors and how to fix them",
            "FLORA-12345 is a product code, FLORA-12345: its id",
            r#"{"name":"ORA-12 gasket","stock":4}"#,
            "Sorry, that page could not be found.",
        ] {
            assert!(scan(benign).is_empty(), "{benign}: {:?}", scan(benign));
        }
    }

    #[test]
    fn traces() {
        for s in [
            "java.lang.NullPointerException\n\tat com.shop.Cart.total(Cart.java:42)\n",
            "Traceback (most recent call last):\n  File \"app.py\", line 3",
            "panic: runtime error: index out of range\n\ngoroutine 1 [running]:",
            "<b>Fatal error</b>:  Uncaught Error in /var/www/x.php:3\nStack trace:\n#0 {main}",
            "TypeError: x is undefined\n    at Object.<anonymous> (/app/server.js:10:5)",
            "app/models/user.rb:12:in `save'",
        ] {
            let f = scan(s);
            assert!(matches!(&f[..], [Finding::StackTrace(_)]), "{s}: {f:?}");
        }
        for benign in [
            "Download the app.js: it is 10kB",
            "We meet at noon (see Notes.java:1 for the rota)",
            "see file.rb:12 for details",
        ] {
            assert!(scan(benign).is_empty(), "{benign}: {:?}", scan(benign));
        }
    }
}
