//! Real API traffic shapes that look like attacks to a naive matcher: REST
//! resources named like probe words, GraphQL documents, JSON bodies with prose,
//! code and SQL in comments, file names, search queries. None may be banned by
//! the detectors or the API guard (with the built-in policy), and at most a few
//! may alert.

#![allow(clippy::expect_used, clippy::unwrap_used)]
use tollgate_detect::{
    Action, ApiGuard, ApiPolicy, DetectConfig, Engine, Parsed, Request, Response, parse_request,
};

fn get(target: &str, headers: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: application/json\r\n{headers}\r\n"
    )
}

fn json(method: &str, target: &str, body: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: okhttp/4.12.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn form(target: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn graphql(query: &str, variables: &str) -> String {
    let body = serde_json::json!({ "query": query, "variables": serde_json::from_str::<serde_json::Value>(variables).unwrap() });
    json("POST", "/graphql", &body.to_string())
}

fn shapes() -> Vec<(&'static str, String)> {
    vec![
        // REST resources whose names are probe words elsewhere.
        ("backups resource", get("/api/v1/backups/42", "")),
        (
            "backups list",
            get("/api/v1/backups?status=completed&page=2", ""),
        ),
        ("menu item", get("/api/menu/dumplings", "")),
        ("console resource", get("/api/v2/consoles/7/sessions", "")),
        ("log file download", get("/api/files/server.log", "")),
        ("config export", get("/api/v1/exports/nightly.conf", "")),
        (
            "archive download",
            get("/api/v1/files/archive-2024.tar.gz", ""),
        ),
        (
            "admin users page",
            get("/api/v1/admin/users?sort=-created_at", ""),
        ),
        // Clients named after tools.
        (
            "nmap client library",
            get("/api/v1/scans/17", "X-Client: python-nmap-client/1.0\r\n").replace(
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "python-nmap-client/1.0",
            ),
        ),
        // Filters, ranges, sorting, sparse fields.
        (
            "filter expression",
            get(
                "/api/v1/orders?filter=status%20eq%20%27shipped%27%20and%20total%20gt%20100",
                "",
            ),
        ),
        (
            "json:api fields",
            get(
                "/api/v1/articles?fields[articles]=title,body&include=author&sort=-published",
                "",
            ),
        ),
        (
            "range filter",
            get(
                "/api/v1/events?from=2024-01-01T00:00:00Z&to=2024-01-31T23:59:59Z&limit=100",
                "",
            ),
        ),
        (
            "select param",
            get("/api/v1/users?select=id,name,email&order=name.asc", ""),
        ),
        (
            "or filter",
            get("/api/v1/products?or=(price.lt.10,stock.gt.100)", ""),
        ),
        // Search queries people type.
        (
            "search rock and roll",
            get("/api/v1/search?q=rock%20%26%20roll", ""),
        ),
        (
            "search languages",
            get("/api/v1/search?q=c%2B%2B%20vs%20c%23", ""),
        ),
        (
            "search discount",
            get("/api/v1/search?q=50%25%20off%20shoes", ""),
        ),
        (
            "search question",
            get("/api/v1/search?q=who%27s%20on%20first%3F", ""),
        ),
        ("search surname", get("/api/v1/people?name=O%27Brien", "")),
        ("search or", get("/api/v1/search?q=tea%20or%20coffee", "")),
        (
            "search select",
            get(
                "/api/v1/search?q=select%20a%20color%20from%20the%20list",
                "",
            ),
        ),
        (
            "search drop",
            get("/api/v1/search?q=drop%20table%20legs%20walnut", ""),
        ),
        (
            "search script",
            get(
                "/api/v1/search?q=javascript%20tutorial%20for%20beginners",
                "",
            ),
        ),
        // Redirect and callback parameters with public URLs.
        (
            "oauth redirect",
            get(
                "/oauth/authorize?client_id=abc&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback&state=xyz&scope=openid%20profile",
                "",
            ),
        ),
        (
            "return to",
            get("/login?next=%2Fdashboard%3Ftab%3Dbilling", ""),
        ),
        (
            "webhook",
            json(
                "POST",
                "/api/v1/webhooks",
                r#"{"url":"https://hooks.slack.com/services/T000/B000/XXXX","events":["order.created"]}"#,
            ),
        ),
        (
            "image by url",
            json(
                "POST",
                "/api/v1/avatars",
                r#"{"source_url":"https://images.example.org/u/42.png?size=256"}"#,
            ),
        ),
        // GraphQL.
        (
            "graphql query",
            graphql(
                "query User($id: ID!) { user(id: $id) { id name posts(first: 10, orderBy: {field: CREATED_AT, direction: DESC}) { edges { node { title } } } } }",
                r#"{"id":"42"}"#,
            ),
        ),
        (
            "graphql mutation",
            graphql(
                "mutation Update($input: UpdateUserInput!) { updateUser(input: $input) { user { id } errors { field message } } }",
                r#"{"input":{"id":"42","bio":"I build things; sometimes they work & sometimes not."}}"#,
            ),
        ),
        (
            "graphql fragment",
            graphql(
                "fragment f on User { id name } query { viewer { ...f friends(where: {name_contains: \"or\"}) { ...f } } }",
                "{}",
            ),
        ),
        (
            "graphql introspection",
            graphql(
                "query { __schema { types { name fields { name } } } }",
                "{}",
            ),
        ),
        // JSON bodies with prose, code and SQL in comments.
        (
            "issue comment with sql",
            json(
                "POST",
                "/api/v1/issues/12/comments",
                r#"{"body":"The report is slow. I think the query `SELECT id, total FROM orders WHERE created_at > now() - interval '1 day'` needs an index on created_at."}"#,
            ),
        ),
        (
            "code review comment",
            json(
                "POST",
                "/api/v1/reviews",
                r#"{"comment":"Please don't call eval() here; use JSON.parse(text) instead. Also <b>bold</b> is deprecated in our docs.","line":42}"#,
            ),
        ),
        (
            "markdown with shell",
            json(
                "POST",
                "/api/v1/docs",
                r#"{"title":"Install","markdown":"Run `npm install` then `npm run build`. On Windows use PowerShell."}"#,
            ),
        ),
        (
            "chat message",
            json(
                "POST",
                "/api/v1/messages",
                r#"{"text":"lol; more than that, we need 1 or 2 more people & a van","channel":"general"}"#,
            ),
        ),
        (
            "product description html",
            json(
                "PUT",
                "/api/v1/products/9",
                r#"{"description":"<p class=\"lead\">Hand made. <a href=\"/care\">Care guide</a></p>","price":19.99}"#,
            ),
        ),
        (
            "address",
            json(
                "POST",
                "/api/v1/addresses",
                r#"{"line1":"12 O'Connell St.","line2":"Apt #4; ring twice","city":"Dublin"}"#,
            ),
        ),
        (
            "math",
            json(
                "POST",
                "/api/v1/notes",
                r#"{"text":"if x = 1 and y = 1 then x = y; 2 > 1 is true"}"#,
            ),
        ),
        (
            "paths in text",
            json(
                "POST",
                "/api/v1/tickets",
                r#"{"summary":"Upload fails","details":"The file C:\\Users\\ana\\Documents\\report.docx fails, /home/ana/report.docx works."}"#,
            ),
        ),
        // File names.
        (
            "upload metadata",
            json(
                "POST",
                "/api/v1/uploads",
                r#"{"filename":"Q3 report (final) v2.pdf","size":120334}"#,
            ),
        ),
        (
            "upload apostrophe",
            json(
                "POST",
                "/api/v1/uploads",
                r#"{"filename":"O'Brien's CV.docx"}"#,
            ),
        ),
        (
            "upload dotted",
            json(
                "POST",
                "/api/v1/uploads",
                r#"{"filename":"data.2024-01-01.backup-notes.txt"}"#,
            ),
        ),
        // Forms.
        (
            "login form",
            form(
                "/login",
                "username=ana%40example.com&password=Tr0ub4dor%263&remember=on",
            ),
        ),
        (
            "search form",
            form("/search", "q=select+shoes+size+42&category=men"),
        ),
        // Cookies and tokens.
        (
            "session cookie",
            get(
                "/api/v1/me",
                "Cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl; theme=dark\r\n",
            ),
        ),
        (
            "etag",
            get(
                "/api/v1/items/5",
                "If-None-Match: W/\"5d41402abc4b2a76b9719d911017c592\"\r\n",
            ),
        ),
    ]
}

fn parse(raw: &str) -> Request {
    match parse_request(raw.as_bytes()) {
        Ok(Parsed::Complete { msg, .. }) => msg,
        other => panic!("{raw}: {other:?}"),
    }
}

#[test]
fn real_api_shapes_are_not_banned() {
    let engine = Engine::new(DetectConfig::default());
    let mut guard = ApiGuard::new(&ApiPolicy::default(), None).unwrap();
    let client = "192.0.2.10".parse().unwrap();
    let ok = Response {
        status: 200,
        ..Response::default()
    };
    let mut alerts = Vec::new();
    let mut bans = Vec::new();
    let shapes = shapes();
    for (i, (name, raw)) in shapes.iter().enumerate() {
        let req = parse(raw);
        let now = 1_795_000_000_000 + i as u64 * 1000;
        let mut v = engine.inspect_request(&req);
        v.extend(guard.inspect_request(client, &req, now));
        v.extend(guard.inspect_response(client, Some(&req), &ok, now + 5));
        match engine.verdict(&v) {
            Action::Ban => bans.push((*name, v)),
            Action::Alert => alerts.push((*name, v)),
            Action::Allow => {}
        }
    }
    assert!(bans.is_empty(), "banned: {bans:#?}");
    // A few alerts are the price of catching short probes; more is noise.
    assert!(alerts.len() * 20 <= shapes.len(), "alerts: {alerts:#?}");
}
