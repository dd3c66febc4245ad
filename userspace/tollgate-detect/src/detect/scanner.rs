//! Scanners and probes: known tool user agents, requests for secrets and VCS
//! metadata (`/.env`, `/.git/`), backup and dump files, admin consoles.

use aho_corasick::AhoCorasick;

use super::rules;
use super::{Category, Location, STRONG, Sink};
use crate::http::Request;

/// User-agent substrings of attack tools (lowercase).
const AGENTS: &[&str] = &[
    "sqlmap",
    "nikto",
    "nmap",
    "zgrab",
    "masscan",
    "nuclei",
    "acunetix",
    "havij",
    "netsparker",
    "w3af",
    "dirbuster",
    "gobuster",
    "wpscan",
    "openvas",
    "nessus",
    "fimap",
    "whatweb",
    "jaeles",
    "ffuf",
    "feroxbuster",
    "arachni",
    "skipfish",
    "commix",
    "hydra",
    "metasploit",
    "morfeus",
    "zmeu",
    "paros",
    "webinspect",
    "appscan",
    "burpcollaborator",
    "dirsearch",
    "wfuzz",
    "sqlninja",
    "pangolin",
    "bsqlbf",
    "xsser",
    "brutus",
    "grabber",
    "httpx - open-source",
    "interactsh",
    "zap/",
    "joomscan",
    "droopescan",
    "cgichk",
    "jorgee",
    "blackwidow",
    "webshag",
    "uniscan",
    "vega/",
    "nstealth",
    "n-stealth",
    "absinthe",
    "bbqsql",
    "mysqloit",
    "j-baidu",
];

/// Runs of path segments only probes ask for, wherever they stand in the path
/// (lowercase, decoded). A trailing `*` matches a segment prefix
/// (`/phpMyAdmin-5.2`, `/phpinfo.php`).
const PROBES: &[&[&str]] = &[
    &["phpmyadmin*"],
    &["wp-admin"],
    &["wp-login.php"],
    &["wp-content"],
    &["wp-includes"],
    &["xmlrpc.php"],
    &["server-status"],
    &["server-info"],
    &["actuator", "env"],
    &["actuator", "heapdump"],
    &["cgi-bin"],
    &["web-inf"],
    &["meta-inf"],
    &["@fs"],
    &["@id"],
    &["etc", "passwd"],
    &["sys", "class"],
    &["proc", "self"],
    &["manager", "html"],
    &["jmx-console"],
    &["web-console"],
    &["admin.php"],
    &["setup.php"],
    &["install.php"],
    &["shell.php"],
    &["adminer*.php"],
    &["phpinfo*"],
    &["solr", "admin"],
    &["_profiler"],
    &["debug", "pprof"],
    &["vendor", "phpunit"],
    &["boaform"],
    &["hnap1"],
    &["owa", "auth"],
    &["autodiscover", "autodiscover.xml"],
    &["id_rsa*"],
    &["id_dsa*"],
    &["id_ecdsa*"],
    &["id_ed25519*"],
];

/// Everyday words that name a probe only as the first path segment, where
/// wordlist scanners try them: `/backup` and `/dump` are probes, while
/// `/api/v1/backups/42` is a resource of an API.
const ROOT_PROBES: &[&str] = &[
    "backup", "backups", "bak", "dump", "dumps", "sqldump", "console", "pma", "myadmin",
];

/// Extensions whose files disclose code, data or secrets wherever they are
/// served: editor and backup leftovers, database dumps, key stores, VCS data.
const DISCLOSING_EXT: &[&str] = &[
    ".bak",
    ".backup",
    ".old",
    ".orig",
    ".swp",
    ".swo",
    ".sav",
    ".save",
    ".sql",
    ".sql.gz",
    ".sql.zip",
    ".sql.bz2",
    ".db",
    ".sqlite",
    ".sqlite3",
    ".mdb",
    ".rdb",
    ".dump",
    ".key",
    ".kdbx",
    ".pfx",
    ".p12",
    ".jks",
    ".htpasswd",
    ".htaccess",
    ".ds_store",
    ".git",
    ".svn",
    ".env",
    ".yml~",
];

/// Extensions of operational files (logs, configuration, certificates, server
/// includes): a probe when asked for from a site's tree, a legitimate download
/// when an API serves it (`/api/files/server.log`).
const OPERATIONAL_EXT: &[&str] = &[
    ".log", ".tmp", ".inc", ".pem", ".war", ".ini", ".conf", ".cfg",
];

/// Archives: ordinary downloads, a weak hint only.
const ARCHIVE_EXT: &[&str] = &[
    ".zip", ".gz", ".tar", ".tar.gz", ".tgz", ".7z", ".rar", ".bz2",
];

/// Raw score of an operational file or an archive where downloads are normal.
const WEAK: u32 = 2;

pub(crate) struct Scanner {
    agents: AhoCorasick,
}

impl Scanner {
    pub(crate) fn new() -> Scanner {
        Scanner {
            agents: super::matcher(AGENTS),
        }
    }

    /// `path` is the request path after [`crate::decode::normalize`].
    pub(crate) fn check_request(&self, req: &Request, path: &str, sink: &mut Sink<'_>) {
        for ua in req.headers_all("user-agent") {
            let l = ua.to_ascii_lowercase();
            if let Some(at) = self
                .agents
                .find_iter(&l)
                .find(|m| tool_token(l.as_bytes(), m.start(), m.end()))
                .map(|m| m.start())
            {
                sink.push(
                    rules::SCANNER_USER_AGENT,
                    Category::Scanner,
                    STRONG,
                    &Location::Header("User-Agent".into()),
                    &l,
                    at,
                );
            }
        }
        let path = path.to_ascii_lowercase();
        let loc = Location::Path;
        let segs: Vec<(usize, &str)> = segments(&path).skip(1).collect();
        if let Some(off) = probe_at(&segs) {
            sink.push(
                rules::SCANNER_PROBE_PATH,
                Category::Scanner,
                STRONG,
                &loc,
                &path,
                off,
            );
        }
        // Hidden files and directories (`/.env`, `/.git/config`, `/.claude/...`);
        // `/.well-known/` is a legitimate standard location.
        for (off, seg) in segments(&path) {
            if seg.len() > 1
                && seg.starts_with('.')
                && seg != ".."
                && seg != "."
                && seg != ".well-known"
            {
                sink.push(
                    rules::SCANNER_DOTFILE,
                    Category::Scanner,
                    STRONG,
                    &loc,
                    &path,
                    off,
                );
                break;
            }
        }
        let last = path.rsplit('/').next().unwrap_or("");
        if last.ends_with('~') || last.starts_with('#') && last.ends_with('#') {
            sink.push(
                rules::SCANNER_BACKUP_FILE,
                Category::Scanner,
                STRONG,
                &loc,
                &path,
                path.len() - last.len(),
            );
        } else if let Some(sc) = extension_score(last, under_api(&segs)) {
            sink.push(
                rules::SCANNER_BACKUP_FILE,
                Category::Scanner,
                sc,
                &loc,
                &path,
                path.len() - last.len(),
            );
        }
    }
}

/// Whether the probe-name match at `start..end` of a lowercase User-Agent is
/// the tool's own product token, not part of another name: `nmap` counts in
/// `Nmap Scripting Engine` and `sqlmap/1.7`, not in `python-nmap-client/1.0`
/// (a client library named after the tool) or `sqlmap.org`. A name glued to a
/// version with `-` or `.` (`DirBuster-1.0-RC1`) still counts.
fn tool_token(ua: &[u8], start: usize, end: usize) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let first = ua.get(start).copied().unwrap_or(b' ');
    let last = ua.get(end.wrapping_sub(1)).copied().unwrap_or(b' ');
    let left_ok = start == 0 || !word(ua[start - 1]) || !word(first);
    let right_ok = match ua.get(end) {
        None => true,
        Some(_) if !word(last) => true,
        Some(b'-' | b'.') => ua.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(&c) => !word(c),
    };
    left_ok && right_ok
}

/// Offset of the first probe in the path's segments (the leading empty one
/// skipped), if any.
fn probe_at(segs: &[(usize, &str)]) -> Option<usize> {
    // `/backup.zip`, `/dump.tar.gz`: the word with any extension.
    if let Some(&(off, first)) = segs.first()
        && ROOT_PROBES.contains(&first.split('.').next().unwrap_or(first))
    {
        return Some(off);
    }
    (0..segs.len()).find_map(|i| {
        PROBES
            .iter()
            .any(|p| {
                p.len() <= segs.len() - i
                    && p.iter()
                        .zip(&segs[i..])
                        .all(|(want, (_, seg))| seg_matches(want, seg))
            })
            .then_some(segs[i].0)
    })
}

/// One pattern segment against one path segment; `*` in the pattern matches
/// any run of characters (at most one `*` per pattern).
fn seg_matches(want: &str, seg: &str) -> bool {
    match want.split_once('*') {
        Some((head, tail)) => {
            seg.len() >= head.len() + tail.len() && seg.starts_with(head) && seg.ends_with(tail)
        }
        None => want == seg,
    }
}

/// Whether the path's directory names an API (`/api/...`, `/v2/...`,
/// `/graphql/...`): files it serves are resources, not a site's leftovers.
fn under_api(segs: &[(usize, &str)]) -> bool {
    let dirs = &segs[..segs.len().saturating_sub(1)];
    dirs.iter().any(|(_, s)| {
        matches!(*s, "api" | "apis" | "rest" | "graphql")
            || s.len() >= 2 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit())
    })
}

/// Raw score of the last segment's extension by what such a file discloses.
fn extension_score(last: &str, api: bool) -> Option<u32> {
    // The name must have a stem: `.env` alone is a dotfile, scored elsewhere.
    let has = |set: &[&str]| {
        set.iter()
            .any(|e| last.len() > e.len() && last.ends_with(e))
    };
    if has(DISCLOSING_EXT) {
        Some(STRONG)
    } else if has(OPERATIONAL_EXT) {
        Some(if api { WEAK } else { STRONG })
    } else if has(ARCHIVE_EXT) {
        Some(WEAK)
    } else {
        None
    }
}

fn segments(path: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut off = 0;
    path.split('/').map(move |s| {
        let o = off;
        off += s.len() + 1;
        (o, s)
    })
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::run;

    fn get(path: &str, ua: &str) -> Action {
        run(&format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {ua}\r\n\r\n"
        ))
        .1
    }

    #[test]
    fn attacks() {
        for (p, ua) in [
            ("/", "sqlmap/1.7.2#stable (https://sqlmap.org)"),
            ("/", "Mozilla/5.00 (Nikto/2.1.6)"),
            ("/", "Mozilla/5.0 zgrab/0.x"),
            (
                "/",
                "Mozilla/5.0 (compatible; Nuclei - Open-source project)",
            ),
            ("/.env", "curl/8.0"),
            ("/.git/config", "curl/8.0"),
            ("/app/.svn/entries", "x"),
            ("/index.php~", "x"),
            ("/backup.sql", "x"),
            ("/get/dump%2Erdb", "x"),
            ("/phpmyadmin/index.php", "x"),
            ("/phpMyAdmin-5.2.1/", "x"),
            ("/wp-login.php", "x"),
            ("/backup", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/backups/", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/dump", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/backup.zip", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/dump.tar.gz", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/wp-admin", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("/blog/wp-admin/install.php", "x"),
            ("/cgi-bin/", "x"),
            ("/error.log", "x"),
            ("/logs/access.log", "x"),
            ("/api/v1/files/db.sql", "x"),
            (
                "/",
                "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
            ),
            (
                "/",
                "DirBuster-1.0-RC1 (http://www.owasp.org/index.php/Category:OWASP_DirBuster_Project)",
            ),
            ("/", "gobuster/3.5"),
        ] {
            assert_eq!(get(p, ua), Action::Ban, "{p} {ua}");
        }
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "/.well-known/openid-configuration",
            "/api/v1/users",
            "/downloads/report.pdf",
            "/static/app.js",
            "/api/v1/files/archive.zip",
            // Everyday words of probe lists, as resources of an API.
            "/api/v1/backups/42",
            "/api/v1/backups",
            "/api/menu/dumplings",
            "/api/v1/consoles/7/dump",
            "/api/v1/backups/42.zip",
            "/shop/console-tables",
            "/api/v1/wp-administrators",
            // Logs and configuration an API serves as files.
            "/api/files/server.log",
            "/api/v2/exports/nightly.conf",
            "/api/v1/certs/ca.pem",
        ] {
            assert_eq!(
                get(p, "Mozilla/5.0 (Windows NT 10.0)"),
                Action::Allow,
                "{p}"
            );
        }
    }

    #[test]
    fn tool_names_are_tokens() {
        // A client library named after a tool is not the tool.
        for ua in [
            "python-nmap-client/1.0",
            "my-sqlmap-wrapper/2",
            "Mozilla/5.0 (X11) hydrant/3.1",
            "https://example.org/see-sqlmap.org-docs",
        ] {
            assert_eq!(get("/api/v1/users", ua), Action::Allow, "{ua}");
        }
    }

    #[test]
    fn disclosure_by_extension() {
        let score = |p: &str| {
            run(&format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n"))
                .0
                .iter()
                .filter(|v| v.rule == "scanner.backup_file")
                .map(|v| v.score)
                .sum::<u32>()
        };
        // Dumps and key stores disclose everywhere; logs only outside an API.
        assert!(score("/api/v1/files/users.sqlite") >= 10);
        assert!(score("/api/v1/files/site.key") >= 10);
        assert!(score("/debug.log") >= 10);
        assert!(score("/api/files/server.log") < 10);
        assert!(score("/api/files/server.log") > 0);
        assert!(score("/downloads/release.tar.gz") < 10);
        assert_eq!(score("/api/files/readme.txt"), 0);
    }

    #[test]
    fn benign_browser_paths() {
        for p in ["/backup-and-restore-guide", "/docs/console"] {
            assert_eq!(
                get(p, "Mozilla/5.0 (Windows NT 10.0)"),
                Action::Allow,
                "{p}"
            );
        }
    }
}
