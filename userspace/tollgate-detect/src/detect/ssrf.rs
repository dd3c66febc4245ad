//! Server-side request forgery: URLs or host names in parameter values that point at
//! loopback, private, link-local or cloud-metadata addresses, in any of the numeric
//! spellings that URL parsers accept.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::rules;
use super::{Category, Location, STRONG, Sink};

/// Host names that resolve to internal services.
const INTERNAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "metadata.google.internal",
    "metadata",
    "host.docker.internal",
    "gateway.docker.internal",
    "kubernetes.default",
    "kubernetes.default.svc",
    "instance-data",
    "instance-data.ec2.internal",
    "localhost4",
    "localhost6",
    "ipv6-localhost",
    "ipv4-localhost",
    "localtest.me",
    "metadata.azure.com",
    "ip6-localhost",
    "ip6-loopback",
    "0",
];

/// Schemes used to reach non-HTTP internal services.
const RAW_SCHEMES: &[&str] = &[
    "gopher://",
    "dict://",
    "ldap://",
    "tftp://",
    "sftp://",
    "jar:",
    "netdoc://",
    "php://",
    "expect://",
    "phar://",
    "unix:",
];

pub(crate) fn check(lower: &str, loc: &Location, sink: &mut Sink<'_>) {
    let s = lower.trim();
    // URLs and schemes all need a `:`; most values have none and only get the
    // bare-host check.
    let has_colon = memchr::memchr(b':', s.as_bytes()).is_some();
    if has_colon {
        check_urls(s, loc, sink);
    }
    // A bare host as the whole value (`url=localhost/admin`, `host=127.1:8080`).
    let url = has_colon && finder!(b"://").find(s.as_bytes()).is_some();
    if !s.is_empty() && !url {
        let host = host_of(s.trim_start_matches("//"));
        let rest_ok = s
            .get(host.len()..)
            .is_some_and(|r| r.starts_with([':', '/', '?', '#']));
        // Bare values must look like an address, not like a version or decimal number.
        let addr_like = host.bytes().filter(|&b| b == b'.').count() == 3
            || rest_ok
            || !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if (host.len() == s.len() || rest_ok || s.starts_with('['))
            && addr_like
            && let Some(sc) = classify(host, true)
        {
            // Plain private addresses are common legitimate values; loopback and
            // metadata are not.
            sink.push(
                rules::SSRF_INTERNAL_HOST,
                Category::Ssrf,
                if sc >= STRONG { STRONG } else { 3 },
                loc,
                s,
                0,
            );
        }
    }
}

/// URLs, parser-confusion spellings and raw schemes in a value that has a `:`.
fn check_urls(s: &str, loc: &Location, sink: &mut Sink<'_>) {
    let mut from = 0;
    let mut budget = 8;
    // URLs anywhere in the value.
    while let Some(p) = finder!(b"://").find(&s.as_bytes()[from..]) {
        budget -= 1;
        if budget == 0 {
            break;
        }
        let at = from + p;
        let scheme_start = s[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |x| x + 1);
        let host = host_of(&s[at + 3..]);
        if classify(host, false).is_some() {
            // An explicit URL to any internal address is a forgery attempt.
            sink.push(
                rules::SSRF_INTERNAL_URL,
                Category::Ssrf,
                STRONG,
                loc,
                s,
                scheme_start,
            );
        }
        from = at + 3;
    }
    // Parser confusion: `http://public:80 &@internal/` or `http:/2852039166`.
    let colon = finder!(b":/")
        .find(s.as_bytes())
        .or_else(|| finder!(b":\\").find(s.as_bytes()));
    if let Some(colon) = colon {
        let after = s[colon + 1..].trim_start_matches(['/', '\\']);
        let at_hosts = s.match_indices('@').take(4).map(|(p, _)| &s[p + 1..]);
        for cand in std::iter::once(after).chain(at_hosts) {
            if classify(host_of(cand), false).is_some() {
                sink.push(
                    rules::SSRF_INTERNAL_URL,
                    Category::Ssrf,
                    STRONG,
                    loc,
                    s,
                    colon,
                );
                break;
            }
        }
    }
    static SCHEMES: LazyLock<Vec<Finder<'static>>> =
        LazyLock::new(|| RAW_SCHEMES.iter().map(Finder::new).collect());
    for (scheme, f) in RAW_SCHEMES.iter().zip(SCHEMES.iter()) {
        if let Some(p) = f.find(s.as_bytes())
            && (p == 0 || !s.as_bytes()[p - 1].is_ascii_alphanumeric())
        {
            sink.push(
                rules::SSRF_SCHEME,
                Category::Ssrf,
                if *scheme == "unix:" { STRONG } else { 8 },
                loc,
                s,
                p,
            );
        }
    }
}

/// Host part of `authority/path`: userinfo and port removed, brackets kept off.
fn host_of(rest: &str) -> &str {
    let end = rest
        .find(['/', '?', '#', '\\', ' ', '"', '\''])
        .unwrap_or(rest.len());
    let auth = &rest[..end];
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if let Some(b) = auth.strip_prefix('[') {
        return b.split(']').next().unwrap_or(b);
    }
    match auth.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => auth,
    }
}

/// Score for an internal host, `None` for public or unparseable hosts.
fn classify(host: &str, bare: bool) -> Option<u32> {
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    // A bare `0` or `0x0` is a number, not `0.0.0.0`.
    if bare && (host.split('.').count() == 1 && host.len() < 8 || host == "0") {
        return None;
    }
    if INTERNAL_NAMES.contains(&host)
        || host.ends_with(".localhost")
        || host.ends_with(".internal") && host.starts_with("metadata")
    {
        return Some(STRONG);
    }
    if host.ends_with(".docker.internal") || host.ends_with(".localtest.me") {
        return Some(STRONG);
    }
    if host.ends_with(".local")
        || host.ends_with(".internal")
        || host.ends_with(".svc.cluster.local")
    {
        return Some(6);
    }
    // Services that resolve any name to a loopback/private address.
    if host.ends_with(".nip.io") || host.ends_with(".sslip.io") || host.ends_with(".xip.io") {
        return Some(STRONG);
    }
    if let Some(v4) = parse_ipv4_loose(host) {
        return classify_v4(v4);
    }
    let h = host.split('%').next().unwrap_or(host);
    // (An IPv6 address always has a `:`; most hosts are names.)
    if h.contains(':')
        && let Ok(v6) = h.parse::<Ipv6Addr>()
    {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return classify_v4(v4);
        }
        let seg = v6.segments();
        if v6.is_loopback()
            || v6.is_unspecified()
            || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        {
            return Some(STRONG);
        }
        if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xfe00 == 0xfc00 {
            return Some(8);
        }
        // IPv4-compatible (deprecated) `::a.b.c.d`.
        if seg[..6].iter().all(|&x| x == 0) {
            let v4 = Ipv4Addr::new(
                (seg[6] >> 8) as u8,
                seg[6] as u8,
                (seg[7] >> 8) as u8,
                seg[7] as u8,
            );
            return classify_v4(v4);
        }
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Option<u32> {
    let o = ip.octets();
    if ip.is_loopback()
        || ip.is_unspecified()
        || o == [169, 254, 169, 254]
        || o == [100, 100, 100, 200]
        || o == [192, 0, 0, 192]
    {
        Some(STRONG)
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1])) {
        Some(8)
    } else {
        None
    }
}

/// Parses IPv4 the way `inet_aton` does: 1 to 4 parts, each decimal, octal
/// (leading 0) or hex (0x); the last part fills the remaining bytes.
fn parse_ipv4_loose(h: &str) -> Option<Ipv4Addr> {
    if h.is_empty()
        || !h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x')
    {
        return None;
    }
    let parts: Vec<&str> = h.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = [0u64; 4];
    for (i, p) in parts.iter().enumerate() {
        nums[i] = parse_part(p)?;
    }
    let n = parts.len();
    // A single all-decimal part shorter than 8 digits is far more likely a plain
    // number (an id, a price) than an address.
    if n == 1 && !h.starts_with('0') && h.len() < 8 {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &x) in nums.iter().enumerate().take(n - 1) {
        if x > 255 {
            return None;
        }
        v |= x << (24 - 8 * i);
    }
    let last_bits = 8 * (4 - (n - 1)) as u32;
    let last = nums[n - 1];
    if last >= (1u64 << last_bits) {
        return None;
    }
    v |= last;
    Some(Ipv4Addr::from(v as u32))
}

fn parse_part(p: &str) -> Option<u64> {
    if p.is_empty() || p.len() > 12 {
        return None;
    }
    if let Some(x) = p.strip_prefix("0x") {
        // Some parsers keep only the low 32 bits of an oversized hex number.
        let x = if x.len() > 8 { &x[x.len() - 8..] } else { x };
        return if x.is_empty() {
            Some(0)
        } else {
            u64::from_str_radix(x, 16).ok()
        };
    }
    if p.len() > 1 && p.starts_with('0') {
        return u64::from_str_radix(&p[1..], 8).ok();
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Action;
    use crate::detect::tests::run;

    fn q(payload: &str) -> Action {
        run(&format!(
            "GET /api/v1/fetch?url={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            payload.replace(' ', "%20")
        ))
        .1
    }

    #[test]
    fn ipv4_forms() {
        for h in [
            "2130706433",
            "0177.0.0.1",
            "0x7f000001",
            "127.1",
            "0x7f.1",
            "127.0.0.1",
        ] {
            assert_eq!(parse_ipv4_loose(h), Some(Ipv4Addr::LOCALHOST), "{h}");
        }
        assert_eq!(parse_ipv4_loose("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4_loose("12345"), None);
    }

    #[test]
    fn attacks() {
        for p in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f000001/admin",
            "http://127.1:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]/",
            "http://localhost/admin",
            "https://user@127.0.0.1:443/",
            "LOCALHOST/",
            "gopher://127.0.0.1:6379/_INFO",
            "http%3A%2F%2F10.0.0.5%2Finternal",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
        let body = "POST /api/v1/hooks HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 48\r\n\r\n{\"callback\":\"http://169.254.169.254/latest/x\"}  ";
        assert_eq!(run(body).1, Action::Ban);
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "https://example.com/",
            "https://www.wikipedia.org/wiki/Localhost",
            "12345",
            "10.5",
            "1.2.3",
            "http://8.8.8.8/",
        ] {
            assert_eq!(q(p), Action::Allow, "{p}");
        }
        // The Host header alone is not SSRF.
        assert_eq!(
            run("GET / HTTP/1.1\r\nHost: localhost\r\nReferer: http://localhost/\r\n\r\n").1,
            Action::Allow
        );
    }
}
