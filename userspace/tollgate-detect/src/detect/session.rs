//! Session fixation: a session identifier handed to the application through the URL
//! or the body instead of the cookie jar (so that a victim following an attacker's
//! link uses the attacker's session), and cookie attributes or `Set-Cookie` meta
//! tags injected into values.

use super::rules;
use super::{Category, Input, Location, STRONG, Sink};
use crate::http::Request;

/// Session cookie names of web frameworks: never a parameter of a cookie-based API.
const FRAMEWORK: &[&str] = &[
    "phpsessid",
    "phpsession",
    "jsessionid",
    "asp.net_sessionid",
    "cfid",
    "cftoken",
    "cfsid",
    "jservsession",
    "jwsession",
    "_flask_session",
    "play_session",
    "koa:sess",
    "koa.sess",
    "shiny-token",
    "cakephp",
    "laravel_session",
    "connect.sid",
    "ci_session",
    "sails.sid",
    "express:sess",
    "express.sid",
    "rack.session",
    "next-auth.session-token",
    "__host-next-auth.session-token",
    "__secure-next-auth.session-token",
];

/// Generic session parameter names: some APIs take them legitimately.
const GENERIC: &[&str] = &[
    "sessionid",
    "session-id",
    "_session_id",
    "sessid",
    "session_token",
];

pub(crate) fn check(req: &Request, inputs: &[Input], sink: &mut Sink<'_>) {
    let mut offsite: Option<bool> = None;
    for inp in inputs {
        let t = inp.text.as_ref();
        if inp.is_value {
            // Cookie attributes smuggled into a value that ends up in a cookie or in
            // markup: `x.cookie;expires=`, `<meta http-equiv="Set-Cookie" ...>`.
            if (t.len() > 8 && memchr::memchr(b';', t.as_bytes()).is_some()) || t.contains("quiv") {
                let lower = t.to_ascii_lowercase();
                if let Some(p) = cookie_injection(&lower) {
                    sink.push(
                        rules::SESSION_FIXATION,
                        Category::Session,
                        STRONG,
                        &inp.location,
                        t,
                        p,
                    );
                }
            }
            continue;
        }
        match inp.location {
            Location::Query | Location::Body | Location::Protobuf(_) => {}
            Location::Path => {
                // `;jsessionid=` URL rewriting is how servlet containers track
                // sessions without cookies; only an off-site link makes it fixation.
                let lower = t.to_ascii_lowercase();
                if let Some(p) = lower
                    .find(";jsessionid=")
                    .or_else(|| lower.find(";phpsessid="))
                {
                    let sc = if *offsite.get_or_insert_with(|| offsite_referer(req)) {
                        STRONG
                    } else {
                        4
                    };
                    sink.push(
                        rules::SESSION_FIXATION,
                        Category::Session,
                        sc,
                        &inp.location,
                        t,
                        p,
                    );
                }
                continue;
            }
            _ => continue,
        }
        if t.len() > 40
            || !t
                .bytes()
                .any(|c| matches!(c, b's' | b'S' | b'c' | b'C' | b't' | b'T'))
        {
            continue;
        }
        let framework = FRAMEWORK.iter().any(|f| f.eq_ignore_ascii_case(t))
            || t.get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case("aspsessionid"));
        let generic = GENERIC.iter().any(|g| g.eq_ignore_ascii_case(t));
        if !framework && !generic {
            continue;
        }
        let off = *offsite.get_or_insert_with(|| offsite_referer(req));
        let sc = if framework || off { STRONG } else { 6 };
        sink.push(
            rules::SESSION_FIXATION,
            Category::Session,
            sc,
            &inp.location,
            t,
            0,
        );
    }
}

/// Position of a cookie attribute or `Set-Cookie` meta injection in `lower`.
fn cookie_injection(lower: &str) -> Option<usize> {
    if let Some(p) = lower.find("http-equiv") {
        let rest = lower[p + 10..].trim_start_matches(['=', '"', '\'', ' ']);
        if rest.starts_with("set-cookie") {
            return Some(p);
        }
    }
    let p = lower.find(".cookie")?;
    let rest = &lower[p + 7..];
    let semi = rest.find(';')?;
    let attr = rest[semi + 1..].trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    (attr.starts_with("expires") || attr.starts_with("domain") || attr.starts_with("path="))
        .then_some(p)
}

/// The Referer names another site than the Host the request was sent to.
fn offsite_referer(req: &Request) -> bool {
    let Some(referer) = req.header("referer") else {
        return false;
    };
    let Some((_, rest)) = referer.split_once("://") else {
        return false;
    };
    let rhost = rest.split(['/', '?', '#']).next().unwrap_or("");
    let rhost = rhost.rsplit_once('@').map_or(rhost, |(_, h)| h);
    let rhost = rhost.split(':').next().unwrap_or("").to_ascii_lowercase();
    let host = req
        .header("host")
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    !rhost.is_empty() && !host.is_empty() && rhost != host
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::run;

    #[test]
    fn attacks() {
        for raw in [
            "GET /login?PHPSESSid=abc123 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /login.php?jsessionid=74B0CB414BD77D17B5680A6386EF1666 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /login?asp.net_sessionid=abc123def456 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /auth?session-id=xyz789 HTTP/1.1\r\nHost: a\r\nReferer: http://badactor.com/\r\n\r\n",
            "GET /x;jsessionid=ABC HTTP/1.1\r\nHost: a\r\nReferer: https://evil.example/\r\n\r\n",
            "GET /foo.php?test=.cookie;expires= HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /p?q=%3Cmeta%20http-equiv%3D%22Set-Cookie%22%20content%3D%22a%3Db%22%3E HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(run(raw).1, Action::Ban, "{raw}");
        }
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{ \"jsessionid\":\"foo\" }";
        assert_eq!(run(raw).1, Action::Ban);
    }

    #[test]
    fn benign() {
        for raw in [
            // Stripe Checkout's success URL carries `session_id`.
            "GET /success?session_id=cs_test_a1b2c3 HTTP/1.1\r\nHost: shop.example\r\nReferer: https://checkout.stripe.com/\r\n\r\n",
            "GET /app;jsessionid=ABC HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /s?sessionid=abc HTTP/1.1\r\nHost: a\r\nReferer: http://a/page\r\n\r\n",
            "GET /s?q=how+do+cookies+expire%3B+domain+rules HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_ne!(run(raw).1, Action::Ban, "{raw}");
        }
    }
}
