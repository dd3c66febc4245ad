//! Block-list feeds: plain lists of addresses and prefixes as FireHOL,
//! Spamhaus DROP and most threat-intel exports publish them.
//!
//! One address or CIDR per line; `#` and `;` start a comment (a whole line or
//! the rest of one, e.g. `1.2.3.0/24 ; SBL123`); blank lines are ignored.
//! Everything else that is not a valid prefix is rejected with its line
//! number, and the rest is still used. The text is untrusted: lines are
//! bounded, nothing panics on odd bytes.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use ipnet::IpNet;

use crate::net::{check_breadth, parse_net};

/// Longest line looked at; longer lines are rejected (no prefix is that long,
/// even with a trailing comment this is generous).
pub const MAX_LINE: usize = 4096;
/// Most entries one import may carry (the default map capacities hold 2M
/// IPv4 hosts; this leaves room without letting a request grow unbounded).
pub const MAX_ENTRIES: usize = 4 * 1024 * 1024;

/// A line that was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number.
    pub line: usize,
    /// The text (trimmed, shortened).
    pub text: String,
    /// Why.
    pub reason: String,
}

/// Rejected lines kept with their text (the rest are only counted).
pub const MAX_LISTED_REJECTS: usize = 10_000;

/// Why a list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line longer than [`MAX_LINE`]: not a block list (or a device).
    #[error("line {line} is longer than {MAX_LINE} bytes: this is not an address list")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
    },
    /// Reading failed.
    #[error("cannot read it: {0}")]
    Io(#[source] std::io::Error),
}

/// A parsed feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Valid prefixes in file order, without duplicates.
    pub entries: Vec<IpNet>,
    /// The 1-based line each entry came from (same order as `entries`).
    pub lines: Vec<usize>,
    /// Lines that were not used.
    pub rejected: Vec<Rejected>,
    /// Lines repeating an entry seen earlier (not an error).
    pub duplicates: usize,
    /// Rejected lines beyond [`MAX_LISTED_REJECTS`], counted only.
    pub rejected_unlisted: usize,
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// Strips comments and whitespace; `None` for a line with nothing on it.
fn content(line: &str) -> Option<&str> {
    let end = line.find(['#', ';']).unwrap_or(line.len());
    let s = line[..end].trim();
    (!s.is_empty()).then_some(s)
}

/// Parses feed text. Prefixes wider than a /8 (IPv4) or /16 (IPv6) are
/// rejected unless `force`, like `block add`.
#[cfg(test)]
#[must_use]
pub fn parse(text: &str, force: bool) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        parse_line(&mut out, &mut seen, i + 1, raw, force);
    }
    out
}

/// Parses a list from a reader, a line at a time, never holding more than
/// one line of at most [`MAX_LINE`] bytes (plus the entries) in memory.
///
/// # Errors
/// An over-long line (naming it) or a read error; nothing is used then.
pub fn parse_reader(mut r: impl std::io::BufRead, force: bool) -> Result<Parsed, ReadError> {
    use std::io::{BufRead as _, Read as _};
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    let mut buf = Vec::with_capacity(256);
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Ok(out);
        }
        line += 1;
        let mut body: &[u8] = &buf;
        body = body.strip_suffix(b"\n").unwrap_or(body);
        body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.len() > MAX_LINE {
            return Err(ReadError::LineTooLong { line });
        }
        if line == 1 {
            body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
        }
        let text = String::from_utf8_lossy(body);
        parse_line(&mut out, &mut seen, line, &text, force);
    }
}

fn parse_line(out: &mut Parsed, seen: &mut HashSet<IpNet>, line: usize, raw: &str, force: bool) {
    let reject = |out: &mut Parsed, reason: String| {
        if out.rejected.len() < MAX_LISTED_REJECTS {
            out.rejected.push(Rejected {
                line,
                text: shorten(raw.trim()),
                reason,
            });
        } else {
            out.rejected_unlisted += 1;
        }
    };
    if raw.len() > MAX_LINE {
        reject(out, format!("line longer than {MAX_LINE} bytes"));
        return;
    }
    let Some(s) = content(raw) else { return };
    // Some lists put more than the prefix on a line ("1.2.3.4 tab info"):
    // take the first field, reject if there is anything else that is not
    // a comment — a silently truncated line is worse than a rejected one.
    let mut fields = s.split_whitespace();
    let first = fields.next().unwrap_or_default();
    if fields.next().is_some() {
        reject(
            out,
            "more than one field on the line (expected one address or CIDR)".into(),
        );
        return;
    }
    let net = match parse_net(first).and_then(|n| check_breadth(n, force).map(|()| n)) {
        Ok(n) => n,
        Err(e) => {
            reject(out, e.to_string());
            return;
        }
    };
    if !seen.insert(net) {
        out.duplicates += 1;
        return;
    }
    if out.entries.len() >= MAX_ENTRIES {
        reject(
            out,
            format!("more than {MAX_ENTRIES} entries in one import"),
        );
        return;
    }
    out.entries.push(net);
    out.lines.push(line);
}

/// What an import changed, as the agent reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    /// The group.
    pub origin: String,
    /// New bans.
    pub added: usize,
    /// Bans of this group whose TTL or reason changed.
    pub updated: usize,
    /// Bans of this group already exactly as asked.
    pub unchanged: usize,
    /// Bans of this group no longer in the feed, removed.
    pub removed: usize,
    /// Entries already banned by someone else (a manual ban, another feed):
    /// left as they are.
    pub kept_other_origin: usize,
    /// Entries the agent refused, with why (at most
    /// [`MAX_REPORTED_REJECTS`]; `rejected_count` has the total).
    pub rejected: Vec<(String, String)>,
    /// How many entries the agent refused.
    pub rejected_count: usize,
    /// Nothing was changed: the counts say what the import would do.
    #[serde(default)]
    pub dry_run: bool,
    /// In a dry run: the entries that would be added (at most
    /// [`MAX_REPORTED_REJECTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_add: Vec<String>,
    /// In a dry run: the group's entries that would be lifted (at most
    /// [`MAX_REPORTED_REJECTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_remove: Vec<String>,
}

/// How many refused entries the agent lists by name in its answer.
pub const MAX_REPORTED_REJECTS: usize = 1000;

/// A feed named in the policy file, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedJob {
    /// Group name (the bans' origin).
    pub name: String,
    /// The list on disk.
    pub path: PathBuf,
    /// How often the file is checked for changes.
    pub refresh: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_trailing_comments() {
        let p = parse(
            "# FireHOL level1\n\n; Spamhaus DROP\n198.18.1.0/24 ; SBL123\n  198.18.2.7  \n198.18.3.0/24 # x\n\t\n",
            false,
        );
        assert_eq!(
            p.entries,
            vec![
                "198.18.1.0/24".parse::<IpNet>().unwrap(),
                "198.18.2.7/32".parse().unwrap(),
                "198.18.3.0/24".parse().unwrap(),
            ]
        );
        assert_eq!(p.lines, vec![4, 5, 6]);
        assert!(p.rejected.is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let p = parse(
            "198.18.0.1\nnot-an-ip\n198.18.0.0/33\n198.18.0.5/24\n198.18.0.2 extra\n198.18.0.3\n",
            false,
        );
        assert_eq!(p.entries.len(), 2);
        let lines: Vec<usize> = p.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(
            p.rejected[2].reason.contains("host bits"),
            "{:?}",
            p.rejected
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let p = parse("fd00:bad::/48\nfd00::1\n::ffff:198.18.0.9\n", false);
        assert_eq!(
            p.entries,
            vec![
                "fd00:bad::/48".parse::<IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap(),
                "198.18.0.9/32".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn duplicates_are_counted_not_repeated() {
        let p = parse("198.18.0.1\n198.18.0.1/32\n198.18.0.1 ; again\n", false);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.duplicates, 2);
        assert!(p.rejected.is_empty());
    }

    #[test]
    fn broad_prefixes_need_force() {
        let text = "0.0.0.0/0\n10.0.0.0/7\nfd00::/8\n198.0.0.0/8\n";
        let p = parse(text, false);
        assert_eq!(p.entries, vec!["198.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(p.rejected.len(), 3);
        assert_eq!(parse(text, true).entries.len(), 4);
    }

    #[test]
    fn the_reader_is_bounded_and_names_the_long_line() {
        let text = "198.18.0.1\r\n# c\n198.18.0.0/24 ; x\n";
        let p = parse_reader(text.as_bytes(), false).unwrap();
        assert_eq!(p, parse(text, false));
        let mut long = "198.18.0.2\n".to_owned();
        long.push_str(&"1".repeat(MAX_LINE + 1));
        let e = parse_reader(long.as_bytes(), false).unwrap_err();
        assert!(matches!(e, ReadError::LineTooLong { line: 2 }), "{e}");
        // An endless input without newlines stops at the cap.
        let zeros = std::io::BufReader::new(std::io::repeat(0));
        let e = parse_reader(zeros, false).unwrap_err();
        assert!(matches!(e, ReadError::LineTooLong { line: 1 }), "{e}");
        let exact = "1".repeat(MAX_LINE);
        assert_eq!(
            parse_reader(exact.as_bytes(), false)
                .unwrap()
                .rejected
                .len(),
            1
        );
    }

    #[test]
    fn odd_bytes_and_long_lines_do_not_panic() {
        let long = "1".repeat(MAX_LINE + 1);
        let text = format!("\u{feff}198.18.0.1\n{long}\n\u{0}\n198.18.0.2\r\n;;;\n#\n");
        let p = parse(&text, false);
        assert!(p.entries.contains(&"198.18.0.1/32".parse().unwrap()));
        assert!(p.entries.contains(&"198.18.0.2/32".parse().unwrap()));
        assert!(p.rejected.iter().any(|r| r.line == 2));
    }
}
