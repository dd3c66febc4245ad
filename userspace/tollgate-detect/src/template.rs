//! Path templating: folds identifier-like segments into `{id}` so that per-endpoint
//! statistics and policies key on `/users/{id}` rather than on every user.

/// Replaces identifier segments of a raw path with `{id}`; a query or fragment is
/// dropped and an empty path is `/`. The one templating of the agent: events,
/// routes and the inventory key on it alike.
///
/// Words (`api`, `v1`, `users`, `health-check`) are kept; numbers, UUIDs, long hex
/// strings and long mixed letter/digit tokens (base64, base64url, hashes) are folded.
pub fn path_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_identifier(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// Whether one path segment is an identifier (folded into `{id}`).
pub fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    // Decimal numbers (also signed), any length.
    if b.iter().all(u8::is_ascii_digit)
        || (b[0] == b'-' && b.len() > 1 && b[1..].iter().all(u8::is_ascii_digit))
    {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    // Hex strings of 8+ characters (hashes, object ids); require a digit so that
    // words spelled in hex letters ("deadbeef", "facade") survive... unless long.
    if b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) && (digits > 0 || b.len() >= 16) {
        return true;
    }
    // Opaque tokens: base64/base64url alphabets, 16+ chars, mixing digits and letters.
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if b.len() >= 16
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'%'))
        && letters >= 2
        && (digits >= 2
            || digits >= 1
                && b.iter().any(u8::is_ascii_uppercase)
                && b.iter().any(u8::is_ascii_lowercase))
    {
        return true;
    }
    // Prefixed ids such as `usr_2x9Kd81` or `ord-20240511-7781`: a short word prefix
    // followed by a mostly-digit remainder.
    if let Some(pos) = seg.find(['_', '-']) {
        let rest = &b[pos + 1..];
        let rest_digits = rest.iter().filter(|c| c.is_ascii_digit()).count();
        if rest.len() >= 6
            && rest_digits * 2 >= rest.len()
            && rest
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return true;
        }
    }
    false
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::path_template as t;

    #[test]
    fn folds_ids() {
        assert_eq!(
            t("/users/42/orders/9f8e7d6c5b4a"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            t("/items/550e8400-e29b-41d4-a716-446655440000"),
            "/items/{id}"
        );
        assert_eq!(t("/files/dGhpcyBpcyBhIHRva2VuMTIz"), "/files/{id}");
        assert_eq!(t("/tok/eyJhbGciOiJIUzI1NiJ9_abc-12"), "/tok/{id}");
        assert_eq!(t("/c/d41d8cd98f00b204e9800998ecf8427e"), "/c/{id}");
        assert_eq!(t("/o/ord-20240511-7781"), "/o/{id}");
        assert_eq!(t("/n/-5"), "/n/{id}");
        assert_eq!(t("/0"), "/{id}");
        // Events and the inventory both fold these (they once disagreed).
        assert_eq!(t("/files/deadbeefdeadbeef"), "/files/{id}");
        assert_eq!(t("/items/-5"), "/items/{id}");
        assert_eq!(t("/a0b1c2d3e4"), "/{id}");
    }

    #[test]
    fn keeps_words() {
        assert_eq!(t("/api/v1/users"), "/api/v1/users");
        assert_eq!(t("/v2"), "/v2");
        assert_eq!(t("/"), "/");
        assert_eq!(t(""), "/");
        assert_eq!(t("/search?q=1"), "/search");
        assert_eq!(t("/users/alice"), "/users/alice");
        assert_eq!(t("/health-check/readiness"), "/health-check/readiness");
        assert_eq!(t("/deadbeef"), "/deadbeef");
        assert_eq!(t("/oauth2/authorize"), "/oauth2/authorize");
        assert_eq!(t("/internationalization"), "/internationalization");
        assert_eq!(t("/users//x"), "/users//x");
        assert_eq!(t("/static/app.min.js"), "/static/app.min.js");
        assert_eq!(t("/ipv6"), "/ipv6");
        assert_eq!(t("/api/v1/users/"), "/api/v1/users/");
    }
}
