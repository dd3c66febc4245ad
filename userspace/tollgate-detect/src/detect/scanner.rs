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

/// Path fragments that are only requested by probes (lowercase, decoded).
const PROBES: &[&str] = &[
    "/phpmyadmin",
    "/pma/",
    "/myadmin",
    "/wp-admin",
    "/wp-login.php",
    "/wp-content/",
    "/wp-includes/",
    "/xmlrpc.php",
    "/server-status",
    "/server-info",
    "/actuator/env",
    "/actuator/heapdump",
    "/cgi-bin/",
    "/web-inf/",
    "/meta-inf/",
    "/@fs/",
    "/@id/",
    "/etc/passwd",
    "/sys/class",
    "/proc/self",
    "/manager/html",
    "/jmx-console",
    "/web-console",
    "/admin.php",
    "/setup.php",
    "/install.php",
    "/shell.php",
    "/phpinfo",
    "/console/",
    "/solr/admin",
    "/_profiler",
    "/debug/pprof",
    "/vendor/phpunit",
    "/boaform",
    "/hnap1",
    "/owa/auth",
    "/autodiscover/autodiscover.xml",
    "/config.json.bak",
    "/backup",
    "/dump",
    "/id_rsa",
];

/// Extensions of backups, dumps and editor leftovers.
const BACKUP_EXT: &[&str] = &[
    ".bak",
    ".backup",
    ".old",
    ".orig",
    ".swp",
    ".swo",
    ".sav",
    ".save",
    ".tmp",
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
    ".log",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".zip",
    ".7z",
    ".rar",
    ".gz",
    ".bz2",
    ".war",
    ".ini",
    ".conf",
    ".cfg",
    ".inc",
    ".pem",
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

pub(crate) struct Scanner {
    agents: AhoCorasick,
    probes: AhoCorasick,
}

impl Scanner {
    pub(crate) fn new() -> Scanner {
        Scanner {
            agents: super::matcher(AGENTS),
            probes: super::matcher(PROBES),
        }
    }

    /// `path` is the request path after [`crate::decode::normalize`].
    pub(crate) fn check_request(&self, req: &Request, path: &str, sink: &mut Sink<'_>) {
        for ua in req.headers_all("user-agent") {
            let l = ua.to_ascii_lowercase();
            if let Some(m) = self.agents.find(&l) {
                sink.push(
                    rules::SCANNER_USER_AGENT,
                    Category::Scanner,
                    STRONG,
                    &Location::Header("User-Agent".into()),
                    &l,
                    m.start(),
                );
            }
        }
        let path = path.to_ascii_lowercase();
        let loc = Location::Path;
        if let Some(m) = self.probes.find(&path) {
            sink.push(
                rules::SCANNER_PROBE_PATH,
                Category::Scanner,
                STRONG,
                &loc,
                &path,
                m.start(),
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
        } else if let Some(ext) = BACKUP_EXT
            .iter()
            // (Every extension starts with a dot.)
            .filter(|_| last.contains('.'))
            .find(|e| last.len() > e.len() && last.ends_with(*e))
        {
            // Archives and logs can be legitimate downloads; SQL dumps and editor
            // backups are not.
            let sc = match *ext {
                ".zip" | ".gz" | ".tar" | ".tgz" | ".7z" | ".rar" | ".bz2" | ".tar.gz" | ".ini"
                | ".conf" | ".cfg" => 2,
                _ => STRONG,
            };
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
            ("/wp-login.php", "x"),
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
        ] {
            assert_eq!(
                get(p, "Mozilla/5.0 (Windows NT 10.0)"),
                Action::Allow,
                "{p}"
            );
        }
    }
}
