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
    "metadata.goog",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "ip6-localhost",
    "ip6-loopback",
    "0",
];

/// Schemes used to reach non-HTTP internal services, with their raw score:
/// those that exist only to speak raw bytes to a port (`gopher:` writes any
/// bytes to Redis or SMTP, `dict:` any line) or to wrap a fetch in another
/// (`jar:http://`, `netdoc:`) are forgery on their own; directory and file
/// transfer schemes have other uses.
const RAW_SCHEMES: &[(&str, u32)] = &[
    ("gopher://", STRONG),
    ("dict://", STRONG),
    ("netdoc:", STRONG),
    ("jar:http", STRONG),
    ("jar:file", STRONG),
    ("jar:ftp", STRONG),
    ("unix:", STRONG),
    ("ldap://", 8),
    ("ldaps://", 8),
    ("ldapi://", 8),
    ("tftp://", 8),
    ("sftp://", 8),
    ("php://", 8),
    ("expect://", 8),
    ("phar://", 8),
];

/// Domains whose every name resolves to loopback, by design (local development).
const LOOPBACK_DOMAINS: &[&str] = &[
    "localtest.me",
    "lvh.me",
    "vcap.me",
    "localh.st",
    "lacolhost.com",
    "fuf.me",
];

/// Wildcard DNS services that answer a name with the address written in it
/// (`10.0.0.1.nip.io`, `127-0-0-1.sslip.io`, `app-7f000001.nip.io`), and
/// rebinding services (`7f000001.c0a80001.rbndr.us` alternates between the two).
/// Any domain can be set up that way; these only accept the hex spelling too.
const WILDCARD_DOMAINS: &[&str] = &[
    "nip.io",
    "sslip.io",
    "xip.io",
    "traefik.me",
    "rbndr.us",
    "1u.ms",
    "rebind.it",
    "nip.direct",
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
        LazyLock::new(|| RAW_SCHEMES.iter().map(|(s, _)| Finder::new(s)).collect());
    for ((_, score), f) in RAW_SCHEMES.iter().zip(SCHEMES.iter()) {
        if let Some(p) = f.find(s.as_bytes())
            && (p == 0 || !s.as_bytes()[p - 1].is_ascii_alphanumeric())
        {
            sink.push(rules::SSRF_SCHEME, Category::Ssrf, *score, loc, s, p);
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
    if host.ends_with(".docker.internal")
        || LOOPBACK_DOMAINS
            .iter()
            .any(|d| host == *d || host.strip_suffix(d).is_some_and(|h| h.ends_with('.')))
    {
        return Some(STRONG);
    }
    if host.ends_with(".local")
        || host.ends_with(".internal")
        || host.ends_with(".svc.cluster.local")
    {
        return Some(6);
    }
    if let Some(v4) = parse_ipv4_loose(host) {
        return classify_v4(v4);
    }
    // A name that spells an internal address resolves to it on a wildcard DNS
    // service or the attacker's own (`10.0.0.1.nip.io`, `127-0-0-1.evil.test`).
    if host.bytes().any(|b| b.is_ascii_alphabetic())
        && !host.contains(':')
        && let Some(sc) = embedded_v4(host).filter_map(classify_v4).max()
    {
        return Some(sc);
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
        let low_v4 =
            |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
        // NAT64 (`64:ff9b::/96`, the local-use `64:ff9b:1::/48`) and 6to4
        // (`2002:AABB:CCDD::`) carry an IPv4 address the gateway reaches.
        if seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2..6] == [0; 4] || seg[2] == 1) {
            return classify_v4(low_v4(seg[6], seg[7]));
        }
        if seg[0] == 0x2002 {
            return classify_v4(low_v4(seg[1], seg[2]));
        }
        // Metadata services over IPv6: AWS, GCP.
        if v6 == Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254) {
            return Some(STRONG);
        }
        if v6.is_loopback()
            || v6.is_unspecified()
            || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        {
            return Some(STRONG);
        }
        // Link-local, unique local, and the deprecated site-local fec0::/10.
        if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xfe00 == 0xfc00 || seg[0] & 0xffc0 == 0xfec0 {
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
        // Metadata services: AWS, GCP, Azure, OpenStack, DigitalOcean, Hetzner,
        // Oracle (also 192.0.0.192); Alibaba; AWS ECS task metadata; Azure's
        // wire server (a public address only the tenant's VMs reach).
        || o == [169, 254, 169, 254]
        || o == [100, 100, 100, 200]
        || o == [192, 0, 0, 192]
        || o == [169, 254, 170, 2]
        || o == [168, 63, 129, 16]
    {
        Some(STRONG)
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1])) {
        Some(8)
    } else {
        None
    }
}

/// IPv4 addresses a host name spells: four decimal labels in a row
/// (`10.0.0.1.nip.io`), a label ending in four dash-separated numbers
/// (`127-0-0-1.sslip.io`, `app-10-0-0-1.example`), and 8-digit hex labels when
/// the name has two of them (a rebinding pair, `7f000001.c0a80001.rbndr.us`) or
/// is under a known wildcard service (`app-7f000001.nip.io`).
fn embedded_v4(host: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let labels: Vec<&str> = host.split('.').collect();
    let octet = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let quad = |ps: &[&str]| -> Option<Ipv4Addr> {
        let mut o = [0u8; 4];
        for (d, p) in o.iter_mut().zip(ps) {
            *d = p.parse().ok()?;
        }
        Some(Ipv4Addr::from(o))
    };
    let mut found: Vec<Ipv4Addr> = Vec::new();
    if labels.len() > 4 {
        found.extend(
            labels
                .windows(4)
                .filter(|w| w.iter().all(|l| octet(l)))
                .filter_map(&quad),
        );
    }
    let hex_tail = |l: &str| {
        let t = l.rsplit('-').next().unwrap_or(l);
        (t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(t, 16).ok().map(Ipv4Addr::from))
            .flatten()
    };
    let wildcard = WILDCARD_DOMAINS
        .iter()
        .any(|d| host.strip_suffix(d).is_some_and(|h| h.ends_with('.')));
    let hex: Vec<Ipv4Addr> = labels[..labels.len().saturating_sub(1)]
        .iter()
        .filter_map(|l| hex_tail(l))
        .collect();
    if wildcard || hex.len() >= 2 {
        found.extend(hex);
    }
    if labels.len() > 1 {
        for l in &labels[..labels.len() - 1] {
            let parts: Vec<&str> = l.rsplitn(5, '-').collect();
            if parts.len() >= 4 && parts[..4].iter().all(|p| octet(p)) {
                let mut ps: Vec<&str> = parts[..4].to_vec();
                ps.reverse();
                found.extend(quad(&ps));
            }
        }
    }
    found.into_iter()
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
    if let Some(x) = p.strip_prefix("0x") {
        // Some parsers keep only the low 32 bits of an oversized hex number
        // (`0x41414141A9FEA9FE` is 169.254.169.254).
        if x.len() > 32 {
            return None;
        }
        let x = if x.len() > 8 { &x[x.len() - 8..] } else { x };
        return if x.is_empty() {
            Some(0)
        } else {
            u64::from_str_radix(x, 16).ok()
        };
    }
    if p.is_empty() || p.len() > 12 {
        return None;
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
            // Every integer spelling, oversized hex keeping its low 32 bits.
            "http://0x41414141A9FEA9FE/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.254.0251.0xfe/",
            "http://169.16689662/",
            "http://0/",
            // IPv6 forms carrying an internal IPv4: mapped, NAT64, 6to4.
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::169.254.169.254]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[fd20:ce::254]/computeMetadata/v1/",
            // Names that resolve to what they spell.
            "http://10.0.0.1.nip.io/admin",
            "http://127-0-0-1.sslip.io/",
            "http://app-7f000001.nip.io/",
            "http://7f000001.c0a80001.rbndr.us/",
            "http://169.254.169.254.attacker.example/",
            "http://admin.lvh.me:8080/",
            // Metadata endpoints of other providers.
            "http://100.100.100.200/latest/meta-data/",
            "http://169.254.170.2/v2/credentials/x",
            "http://168.63.129.16/machine?comp=goalstate",
            "http://metadata.tencentyun.com/latest/meta-data/",
            // Schemes that speak raw bytes to a port, or wrap a fetch.
            "gopher://mail.example.com:25/_HELO",
            "dict://cache.example.com:11211/stats",
            "jar:http://example.com/evil.jar!/",
            "netdoc:///etc/passwd",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
        // URL-bearing values anywhere: JSON keys of any name, headers.
        let body = "POST /api/v1/profile HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"avatar\":{\"src\":\"http://[64:ff9b::a9fe:a9fe]/\"}}           ";
        assert_eq!(run(body).1, Action::Ban);
        let hdr = "GET /api/v1/x HTTP/1.1\r\nHost: a\r\nX-Callback-Url: http://127-0-0-1.sslip.io/\r\n\r\n";
        assert_eq!(run(hdr).1, Action::Ban);
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
            // Public callbacks and wildcard names of public addresses.
            "https://hooks.example.com/callback?id=42",
            "https://api.partner.example/v2/webhooks/0a1b2c3d",
            "https://app.52.14.200.7.nip.io/",
            "https://ec2-52-14-200-7.us-east-2.compute.amazonaws.com/",
            "https://cdn.example.com/assets/7f000001/logo.png",
            "https://deadbeef.example.com/",
            "https://[2001:db8::1]/",
            "https://[64:ff9b::808:808]/",
            "release-2024-10-01.tar.gz",
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
