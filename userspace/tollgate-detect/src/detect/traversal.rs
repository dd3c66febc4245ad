//! Path traversal and local file inclusion: `../` in any encoding (decoding already
//! happened), sensitive absolute paths, `file://` URLs and Windows variants.

use aho_corasick::AhoCorasick;
use memchr::memmem::Finder;

use super::rules;
use super::{ByteSet, Category, Location, STRONG, Sink};

/// Files and directories whose names in a parameter mean a file-read attempt.
/// Separators are normalized to `/` before matching.
const SENSITIVE: &[&str] = &[
    "etc/passwd",
    "etc/shadow",
    "etc/group",
    "etc/hosts",
    "etc/issue",
    "etc/motd",
    "etc/hostname",
    "etc/security/",
    "etc/httpd/",
    "etc/apache",
    "etc/nginx/",
    "etc/mysql/",
    "etc/ssh/",
    "etc/sudoers",
    "etc/crontab",
    "etc/profile",
    "etc/fstab",
    "etc/resolv.conf",
    "etc/environment",
    "etc/inittab",
    "proc/self/",
    "proc/sys/",
    "proc/net/",
    ".aws/credentials",
    ".docker/config.json",
    ".kube/config",
    ".git-credentials",
    ".bash_profile",
    ".bashrc",
    ".history",
    ".mysql_history",
    ".npmrc",
    "proc/version",
    "proc/cpuinfo",
    "proc/1/",
    "/.ssh/",
    "id_rsa",
    "id_dsa",
    ".bash_history",
    ".htpasswd",
    ".htaccess",
    "boot.ini",
    "win.ini",
    "system.ini",
    "windows/system32",
    "winnt/system32",
    "system32/",
    "/inetpub/",
    "web.config",
    "wp-config.php",
    "php.ini",
    "my.cnf",
    "httpd.conf",
    "/var/log/",
    "/var/www/",
    "/usr/local/",
    "/opt/",
    "localstart.asp",
    "autoexec.bat",
    "config.sys",
    "sam",
    "/root/",
    "/home/",
    "/tmp/",
    "/dev/null",
    "/bin/",
    "/usr/bin",
    "etc\u{0}",
];

pub(crate) struct Traversal {
    files: AhoCorasick,
}

impl Traversal {
    pub(crate) fn new() -> Traversal {
        let files = super::matcher(SENSITIVE);
        Traversal { files }
    }

    /// `set` holds the bytes of `lower`.
    pub(crate) fn check(&self, lower: &str, set: &ByteSet, loc: &Location, sink: &mut Sink<'_>) {
        let s = lower.as_bytes();
        const PATHISH: ByteSet = ByteSet::from(b"./\\:%").union(ByteSet::range(0x80, 0xff));
        let hex_sep = set.any(&ByteSet::from(b"x")) && finder!(b"0x").find(s).is_some();
        if !set.any(&PATHISH) && !hex_sep {
            return;
        }
        // Normalize separators: backslashes and look-alike junk between dots.
        // Most inputs need no separator rewriting; avoid the copy for them.
        const REWRITTEN: ByteSet = ByteSet::from(b"\\%")
            .union(ByteSet::range(0, 0x1f))
            .union(ByteSet::range(0x80, 0xff));
        let needs_rewrite = set.any(&REWRITTEN)
            || hex_sep
            || set.any(&ByteSet::from(b"/")) && finder!(b"//").find(s).is_some();
        let norm: std::borrow::Cow<'_, str> = if needs_rewrite {
            separators(lower).into()
        } else {
            lower.into()
        };
        let n = norm.as_bytes();
        let nset = if needs_rewrite { ByteSet::of(n) } else { *set };
        let dots = if nset.any(&ByteSet::from(b".")) {
            count_dotdot(n)
        } else {
            0
        };
        if dots > 0 {
            let sc = if dots >= 2 || matches!(loc, Location::Path) {
                STRONG
            } else {
                5
            };
            let at = finder!(b"..").find(n).unwrap_or(0);
            sink.push(
                rules::TRAVERSAL_DOTDOT,
                Category::Traversal,
                sc,
                loc,
                &norm,
                at,
            );
        }
        if nset.any(&ByteSet::from(b":"))
            && let Some(p) = finder!(b"file:/").find(n)
        {
            sink.push(
                rules::TRAVERSAL_FILE_URL,
                Category::Traversal,
                STRONG,
                loc,
                &norm,
                p,
            );
        }
        // Windows drive paths: `c:/windows`, `c:/boot.ini`.
        if n.len() >= 3 && n[0].is_ascii_alphabetic() && n[1] == b':' && n[2] == b'/' {
            sink.push(
                rules::TRAVERSAL_ABSOLUTE,
                Category::Traversal,
                6,
                loc,
                &norm,
                0,
            );
        }
        let mut best: Option<(u32, usize)> = None;
        for m in self.files.find_iter(norm.as_ref()) {
            let pat = SENSITIVE[m.pattern().as_usize()];
            let start = m.start();
            // Short or generic names only count at a path boundary after traversal
            // or at the very start of an absolute path.
            let generic = matches!(
                pat,
                "sam"
                    | "/root/"
                    | "/home/"
                    | "/tmp/"
                    | "/dev/null"
                    | "/bin/"
                    | "/usr/bin"
                    | "/var/log/"
                    | "/var/www/"
                    | "/usr/local/"
                    | "/opt/"
                    | "system32/"
            );
            let boundary = start == 0
                || matches!(n[start - 1], b'/' | b'.' | b'=' | b' ' | b'"' | b'\'')
                || pat.starts_with('/');
            if !boundary {
                continue;
            }
            let sc = if generic {
                if dots > 0 || start == 0 { 6 } else { 0 }
            } else if pat.starts_with("etc/") || pat.starts_with("proc/") {
                // `etc/passwd` at the start or after a slash: read attempt.
                if start == 0 || n[start - 1] == b'/' {
                    STRONG
                } else {
                    6
                }
            } else {
                STRONG
            };
            if sc > 0 && best.is_none_or(|b| sc > b.0) {
                best = Some((sc, start));
            }
        }
        if let Some((sc, at)) = best {
            sink.push(
                rules::TRAVERSAL_SENSITIVE_FILE,
                Category::Traversal,
                sc,
                loc,
                &norm,
                at,
            );
        }
        // Heavily obfuscated dotdotpwn-style inputs: dots and separators that survive
        // no decoder (`0x2e0x2e%c1%pc`) but name a system file.
        if best.is_some_and(|b| b.0 >= STRONG) {
            return;
        }
        // (Each pair starts at the first occurrence of its first word, so the four
        // `etc` pairs share one search, and `windows` needs a `win`.)
        let etc = finder!(b"etc").find(n).map(|p| p + 3);
        let win = finder!(b"win").find(n).map(|p| p + 3);
        let named_file = etc.is_some_and(|p| {
            [
                finder!(b"passwd"),
                finder!(b"hosts"),
                finder!(b"issue"),
                finder!(b"shadow"),
            ]
            .iter()
            .any(|w| follows(n, p, w))
        }) || win.is_some_and(|p| {
            follows(n, p, finder!(b"ini"))
                || contains_seq(n, finder!(b"windows"), finder!(b"system32"))
        }) || contains_seq(n, finder!(b"boot"), finder!(b"ini"));
        // With a `..` present, a system file name anywhere is a read attempt even
        // when the separators were mangled beyond recognition.
        let file_word = dots > 0
            && [
                finder!(b"passwd"),
                finder!(b"shadow"),
                finder!(b"boot.ini"),
                finder!(b"win.ini"),
                finder!(b"system32"),
                finder!(b"system.ini"),
            ]
            .iter()
            .any(|w| w.find(n).is_some());
        if named_file || file_word {
            sink.push(
                rules::TRAVERSAL_SENSITIVE_FILE,
                Category::Traversal,
                STRONG,
                loc,
                &norm,
                0,
            );
        }
    }
}

/// Maps everything that may act as a path separator or dot after a sloppy or
/// hostile decoder to `/` and `.`: backslashes, literal `0x2f`/`0x5c`/`0x2e`, invalid
/// percent escapes (`%c0%9v` leftovers) and replacement characters.
fn separators(lower: &str) -> String {
    let b = lower.as_bytes();
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"0x2f") || rest.starts_with(b"0x5c") {
            out.push('/');
            i += 4;
        } else if rest.starts_with(b"0x2e") {
            out.push('.');
            i += 4;
        } else if rest[0] == b'%'
            && rest.len() >= 3
            && !(rest[1].is_ascii_hexdigit() && rest[2].is_ascii_hexdigit())
            && rest[1].is_ascii_alphanumeric()
            && rest[2].is_ascii_alphanumeric()
        {
            out.push('/');
            i += 3;
        } else if rest[0] < 0x20 || rest[0] == b'\\' {
            out.push('/');
            i += 1;
        } else {
            let ch = lower[i..].chars().next().unwrap_or('/');
            // Non-ASCII symbols (replacement characters, private-use code points from
            // `%uF025`) are treated as separators; letters are kept.
            if !ch.is_ascii() && !ch.is_alphanumeric() {
                out.push('/');
            } else {
                out.push(ch);
            }
            i += ch.len_utf8();
        }
    }
    // Runs of separators are one separator to file systems.
    while out.contains("//") {
        out = out.replace("//", "/");
    }
    out
}

/// Counts `..` segments followed by a separator or at the end, also with junk
/// between dot and separator that decoders mangle (`..%c0%af` leftovers, `.?/`).
fn count_dotdot(n: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while let Some(p) = n[i..].windows(2).position(|w| w == b"..") {
        let a = i + p;
        let mut j = a + 2;
        while j < n.len() && n[j] == b'.' {
            j += 1;
        }
        let before_ok = a == 0 || !n[a - 1].is_ascii_alphanumeric();
        // What follows: separator, end, or a few junk bytes then separator.
        let mut k = j;
        while k < n.len() && k < j + 3 && !n[k].is_ascii_alphanumeric() && n[k] != b'/' {
            k += 1;
        }
        let after_ok = j == n.len()
            || n.get(k) == Some(&b'/')
            || n.get(j) == Some(&b'/')
            || (k > j && k < n.len() && !n[j].is_ascii_alphanumeric() && n[j] != b' ');
        if before_ok && after_ok {
            count += 1;
        }
        i = j;
    }
    count
}

/// Are the two words present in order with at most 8 non-alphanumeric bytes (or
/// encoding leftovers) between them?
fn contains_seq(n: &[u8], first: &Finder<'_>, second: &Finder<'_>) -> bool {
    first
        .find(n)
        .is_some_and(|p| follows(n, p + first.needle().len(), second))
}

/// Does `word` follow offset `pos` after at most 8 non-alphanumeric bytes (or
/// encoding leftovers)?
fn follows(n: &[u8], pos: usize, word: &Finder<'_>) -> bool {
    matches!(
        word.find(&n[pos..]),
        Some(p) if p <= 8
            && n[pos..pos + p]
                .iter()
                .all(|b| !b.is_ascii_alphabetic() || b"cpuv".contains(b))
    )
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::{q, run};

    #[test]
    fn attacks() {
        for p in [
            "../../../etc/passwd",
            "..%2F..%2F..%2Fetc%2Fpasswd",
            "%252e%252e%252f%252e%252e%252fwin.ini",
            "..%c0%af..%c0%afetc/passwd",
            "..\\..\\windows\\win.ini",
            "%u2216..%u2216..%u2216boot.ini",
            "/etc/shadow",
            "file:///etc/passwd",
            "....//....//etc/hosts",
            "c:\\windows\\system32\\drivers\\etc\\hosts",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
        assert_eq!(
            run("GET /static/..%2f..%2fapp.py HTTP/1.1\r\n\r\n").1,
            Action::Ban
        );
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "wait...",
            "see+page+2..5",
            "version+1.2.3",
            "/home",
            "etc.+and+so+on",
            "a/b/c.txt",
            "https://example.com/a/b",
        ] {
            assert_eq!(q(p), Action::Allow, "{p}");
        }
    }
}
