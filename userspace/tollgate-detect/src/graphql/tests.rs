use super::*;
use crate::{Action, DetectConfig, Engine, Location, Parsed, parse_request};

fn req(raw: &str) -> Request {
    match parse_request(raw.as_bytes()) {
        Ok(Parsed::Complete { msg, .. }) => msg,
        other => panic!("not a request: {other:?}"),
    }
}

fn post(body: &str) -> Request {
    req(&format!(
        "POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// A JSON GraphQL request body for `query` and `variables`.
fn body(query: &str, variables: &str) -> String {
    let q = serde_json::to_string(query).unwrap();
    format!(r#"{{"query":{q},"variables":{variables}}}"#)
}

fn engine() -> Engine {
    Engine::new(DetectConfig::default()).with_graphql(GraphqlConfig::default())
}

fn analyze(r: &Request) -> Analysis {
    Graphql::new(GraphqlConfig::default())
        .analyze(r)
        .expect("a GraphQL request")
}

const LOGIN: &str =
    "mutation Login($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";

#[test]
fn ordinary_requests_are_clean_and_named() {
    let e = engine();
    let cases = [
        post(&body(
            LOGIN,
            r#"{"u":"ana","p":"correct horse battery staple"}"#,
        )),
        post(&body(
            "query User($id: ID!) { user(id: $id) { id name email friends(first: 10) { edges { node { name } } } } }",
            r#"{"id":"7"}"#,
        )),
        post(&body(
            "{ products(search: \"red shoes\", first: 20) { id ...P } } fragment P on Product { name price __typename }",
            "null",
        )),
        post(
            r#"[{"query":"{ a: user(id: 1) { name } b: user(id: 2) { name } }"},{"query":"query { me { name } }"}]"#,
        ),
        req("GET /graphql?query=%7B%20me%20%7B%20name%20%7D%20%7D HTTP/1.1\r\nHost: a\r\n\r\n"),
        req(
            "POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Type: application/graphql\r\nContent-Length: 15\r\n\r\n{ me { name } }",
        ),
    ];
    for r in &cases {
        let v = e.inspect_request(r);
        assert!(v.is_empty(), "{r:?}: {v:?}");
        assert!(!analyze(r).operations.is_empty());
    }
    let a = analyze(&cases[0]);
    assert_eq!(a.routes(), [(OpKind::Mutation, "login")]);
    assert_eq!(a.operations[0].name.as_deref(), Some("Login"));
    let a = analyze(&cases[3]);
    assert_eq!(
        a.attempts(),
        [(OpKind::Query, "user", 2), (OpKind::Query, "me", 1)]
    );
    assert_eq!(
        analyze(&cases[1]).operations[0].arguments,
        [("user".to_owned(), "id".to_owned(), "7".to_owned())]
    );
    // Not GraphQL: another path, or the IDE page.
    let g = Graphql::new(GraphqlConfig::default());
    assert!(
        g.analyze(&req("GET /api/graphql HTTP/1.1\r\nHost: a\r\n\r\n"))
            .is_none()
    );
    assert!(
        g.analyze(&req("GET /graphql HTTP/1.1\r\nHost: a\r\n\r\n"))
            .is_none()
    );
}

#[test]
fn injections_in_variables_and_arguments_are_named() {
    let e = engine();
    let v = e.inspect_request(&post(&body(
        LOGIN,
        r#"{"u":"admin' OR '1'='1' --","p":"x"}"#,
    )));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    assert!(
        v.iter()
            .any(|v| v.location == Location::Graphql("login.username".into())),
        "{v:?}"
    );
    // NoSQL operator objects through a JSON scalar.
    let v = e.inspect_request(&post(&body(LOGIN, r#"{"u":"admin","p":{"$ne":null}}"#)));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    assert!(v.iter().any(|v| v.rule == "graphql.operator_object"));
    assert!(v.iter().any(|v| v.rule == "sqli.nosql_operator"
        && v.location == Location::Graphql("login.password".into())));
    // Literals in the document, SSRF and command injection.
    let v = e.inspect_request(&post(&body(
        "mutation { importFeed(url: \"http://169.254.169.254/latest/meta-data/\") { ok } }",
        "{}",
    )));
    assert!(
        v.iter().any(|v| v.rule == "ssrf.internal_url"
            && v.location == Location::Graphql("importFeed.url".into())),
        "{v:?}"
    );
    let v = e.inspect_request(&post(&body(
        "mutation($h: String) { ping(host: $h) { out } }",
        r#"{"h":"8.8.8.8; cat /etc/passwd"}"#,
    )));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    // A body on the GraphQL path that is no GraphQL is judged as JSON.
    let v = e.inspect_request(&post(r#"{"username":"admin' OR '1'='1' --"}"#));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    // A form body, as some servers take it.
    let form = "query=mutation%7Blogin(username%3A%22admin%27%20OR%201%3D1--%22%2Cpassword%3A%22x%22)%7Btoken%7D%7D";
    let v = e.inspect_request(&req(&format!(
        "POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    // GET parameters.
    let v = e.inspect_request(&req(
        "GET /graphql?query=%7Buser(name%3A%22x%27%20union%20select%20password%20from%20users--%22)%7Bid%7D%7D HTTP/1.1\r\nHost: a\r\n\r\n",
    ));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
}

#[test]
fn introspection_follows_the_policy() {
    let q = post(&body("{ __schema { types { name } } }", "{}"));
    let e = engine();
    let v = e.inspect_request(&q);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!((v[0].rule, v[0].score), ("graphql.introspection", 0));
    let deny = Engine::new(DetectConfig::default()).with_graphql(GraphqlConfig {
        introspection: Introspection::Deny,
        ..GraphqlConfig::default()
    });
    assert_eq!(deny.verdict(&deny.inspect_request(&q)), Action::Ban);
    let allow = Engine::new(DetectConfig::default()).with_graphql(GraphqlConfig {
        introspection: Introspection::Allow,
        ..GraphqlConfig::default()
    });
    assert!(allow.inspect_request(&q).is_empty());
    // `__typename` is no introspection.
    assert!(
        e.inspect_request(&post(&body("{ me { __typename } }", "{}")))
            .is_empty()
    );
}

#[test]
fn shapes_over_the_limits_are_flagged() {
    let e = engine();
    let rules = |r: &Request| {
        let v = e.inspect_request(r);
        (v.iter().map(|v| v.rule).collect::<Vec<_>>(), e.verdict(&v))
    };
    let deep = format!("{}x{}", "{ a ".repeat(30), "}".repeat(30));
    assert_eq!(
        rules(&post(&body(&deep, "{}"))),
        (vec!["graphql.depth"], Action::Ban)
    );
    let wide: String = (0..500).map(|i| format!("a{i}: me {{ name }} ")).collect();
    let (r, act) = rules(&post(&body(&format!("{{ {wide} }}"), "{}")));
    assert!(
        r.contains(&"graphql.aliases") && act == Action::Ban,
        "{r:?}"
    );
    let logins: String = (0..200)
        .map(|i| format!("l{i}: login(username: \"u{i}\", password: \"p{i}\") {{ token }} "))
        .collect();
    let a = analyze(&post(&body(&format!("mutation {{ {logins} }}"), "{}")));
    assert_eq!(a.attempts(), [(OpKind::Mutation, "login", 200)]);
    assert!(a.rules().contains(&"graphql.batched_attempts"));
    let batch: Vec<String> = (0..30)
        .map(|i| body(LOGIN, &format!(r#"{{"u":"u{i}","p":"p"}}"#)))
        .collect();
    let (r, act) = rules(&post(&format!("[{}]", batch.join(","))));
    assert!(
        r.contains(&"graphql.batch") && r.contains(&"graphql.batched_attempts"),
        "{r:?}"
    );
    assert_eq!(act, Action::Ban);
    let cycle = "{ ...A } fragment A on Q { ...B } fragment B on Q { ...A }";
    assert!(
        rules(&post(&body(cycle, "{}")))
            .0
            .contains(&"graphql.fragment_cycle")
    );
    let dirs = format!("{{ me {} {{ name }} }}", "@include(if: true) ".repeat(120));
    assert!(
        rules(&post(&body(&dirs, "{}")))
            .0
            .contains(&"graphql.directives")
    );
    let broken = post(&body("{ me { name ", "{}"));
    assert_eq!(rules(&broken).0, ["graphql.malformed"]);
    let not_json = post("{\"query\": ");
    assert_eq!(rules(&not_json).0, ["graphql.malformed"]);
}

/// Each fragment spreads the next twice: 2^20 fields if expanded; stopped by
/// the visit budget.
#[test]
fn a_fragment_bomb_is_bounded() {
    let mut doc = String::from("{ ...F0 }");
    for i in 0..20 {
        doc.push_str(&format!(
            " fragment F{i} on Q {{ a: f {{ ...F{n} }} b: f {{ ...F{n} }} }}",
            n = i + 1
        ));
    }
    doc.push_str(" fragment F20 on Q { x }");
    let a = analyze(&post(&body(&doc, "{}")));
    assert!(a.rules().contains(&"graphql.fields"), "{:?}", a.rules());
}

/// One megabyte of nesting, and one of width: judged within the limits,
/// without exhausting the stack.
#[test]
fn hostile_megabyte_documents() {
    let e = engine();
    for doc in [
        "{".repeat(1 << 20),
        format!("{{ {} }}", "a ".repeat(1 << 19)),
        format!("{}{}", "{ a ".repeat(1 << 18), "}".repeat(1 << 18)),
    ] {
        // Time is the benchmark's to measure (`cargo xtask bench graphql`).
        let v = e.inspect_request(&post(&body(&doc, "{}")));
        assert!(e.verdict(&v) != Action::Allow, "{v:?}");
    }
}

/// 20,000 distinct top-level fields: counted in linear time, named after
/// the first few.
#[test]
fn many_distinct_fields_stay_cheap() {
    let wide: String = (0..20_000).map(|i| format!("f{i} ")).collect();
    let a = analyze(&post(&body(&format!("{{ {wide} }}"), "{}")));
    // Over the token limit, the first 2,000 tokens are parsed: about 1,000 fields.
    assert!(a.attempts().len() > 800, "{}", a.attempts().len());
    assert!(a.rules().contains(&"graphql.too_large"));
    assert_eq!(a.routes().len(), MAX_ROUTES);
    assert!(a.rules().contains(&"graphql.fields"));
}

#[test]
fn schema_lists_root_fields() {
    let s = Schema::parse(
        "type Query { user(id: ID!): User me: User } type Mutation { login(username: String!, password: String!): Token } type User { id: ID! } type Token { token: String }",
    )
    .unwrap();
    assert!(s.documents(OpKind::Mutation, "login"));
    assert!(s.documents(OpKind::Query, "user"));
    assert!(!s.documents(OpKind::Query, "id"));
    assert!(Schema::parse("type Query {").is_err());
}

/// A body cut where capture stopped: the part of the document that arrived
/// is judged (200 aliased logins cut after 60 still count 60).
#[test]
fn a_truncated_body_is_judged_on_its_first_part() {
    let logins: String = (0..200)
        .map(|i| format!("l{i}: login(username: \"u{i}\", password: \"p\\u0027{i}\") {{ token }} "))
        .collect();
    let full = body(&format!("mutation {{ {logins} }}"), "{}");
    let mut r = post(&full);
    r.body.truncate(60 * 60);
    r.truncated = true;
    let a = analyze(&r);
    let rules = a.rules();
    assert!(rules.contains(&"graphql.malformed"), "{rules:?}");
    assert!(rules.contains(&"graphql.batched_attempts"), "{rules:?}");
    assert!(rules.contains(&"graphql.aliases"), "{rules:?}");
    assert!(a.attempts()[0].2 >= 50, "{:?}", a.attempts());
}

/// A large benign query cut where capture stopped is broken for us, not for
/// the server: the malformed finding is said without a score, so it never
/// bans; an injection in the part that arrived still does.
#[test]
fn a_truncated_benign_body_scores_nothing() {
    let e = engine();
    let fields: String = (0..400).map(|i| format!("f{i} ")).collect();
    let full = body(&format!("query {{ catalog {{ {fields} }} }}"), "{}");
    let mut r = post(&full);
    r.body.truncate(1000);
    r.truncated = true;
    let a = analyze(&r);
    assert!(a.rules().contains(&"graphql.malformed"), "{:?}", a.rules());
    assert!(a.findings.iter().all(|f| f.0 != MALFORMED || f.1 == 0));
    let v = e.inspect_request(&r);
    assert_ne!(e.verdict(&v), Action::Ban, "{v:?}");
    assert!(v.iter().all(|f| f.score == 0), "{v:?}");
    let pad: String = (0..400).map(|i| format!("f{i} ")).collect();
    let q = format!(
        "mutation {{ login(username: \"admin' OR 1=1--\", password: \"x\") {{ token {pad} }} }}"
    );
    let mut r = post(&body(&q, "{}"));
    r.body.truncate(1000);
    r.truncated = true;
    assert_eq!(e.verdict(&e.inspect_request(&r)), Action::Ban);
}

/// A body cut where capture stopped, variables first (as Apollo Client sends
/// them) or after a short document: the variables that arrived whole are
/// judged where they feed; the value the cut went through is not.
#[test]
fn variables_complete_before_the_cut_are_judged() {
    let e = engine();
    let pad: String = (0..400).map(|i| format!("f{i} ")).collect();
    let cut = |full: &str, keep: usize| {
        let mut r = post(full);
        r.body.truncate(keep);
        r.truncated = true;
        r
    };
    // Variables before the document: an injection in them bans, named.
    let q = serde_json::to_string(&format!(
        "mutation Login($u: String!, $p: String!) {{ login(username: $u, password: $p) {{ token {pad} }} }}"
    ))
    .unwrap();
    let full = format!(
        r#"{{"operationName":"Login","variables":{{"u":"admin' OR '1'='1' --","p":"x"}},"query":{q}}}"#
    );
    let v = e.inspect_request(&cut(&full, 600));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    assert!(
        v.iter().any(|v| v.rule.starts_with("sqli")
            && v.location == Location::Graphql("login.username".into())),
        "{v:?}"
    );
    // NoSQL operator objects too.
    let full = format!(r#"{{"variables":{{"u":"admin","p":{{"$ne":null}}}},"query":{q}}}"#);
    let v = e.inspect_request(&cut(&full, 500));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    assert!(
        v.iter().any(|v| v.rule == "graphql.operator_object"),
        "{v:?}"
    );
    // After a short document, the cut inside the variables: those before it count.
    let full = body(
        LOGIN,
        &format!(
            r#"{{"u":"admin' OR '1'='1' --","p":"{}"}}"#,
            "x".repeat(4000)
        ),
    );
    let v = e.inspect_request(&cut(&full, 300));
    assert_eq!(e.verdict(&v), Action::Ban, "{v:?}");
    // Benign variables cut anywhere (mid-string, mid-escape, mid-number, in
    // a key, in a nested object): nothing scores.
    let full = format!(
        r#"{{"operationName":"Note","variables":{{"note":"Lunch at 12; don't forget O'Reilly \u00e9 \"2nd\" ed.","n":12345,"tags":["a","b'c"],"o":{{"k":"v"}}}},"query":{q}}}"#
    );
    for keep in 1..full.len().min(400) {
        let r = cut(&full, keep);
        let v = e.inspect_request(&r);
        assert!(v.iter().all(|f| f.score == 0), "cut at {keep}: {v:?}");
    }
    // The values that arrived are inputs, the one cut is not.
    let a = analyze(&cut(&full, full.find("\"2nd").unwrap()));
    assert!(
        a.inputs.iter().all(|i| !i.1.contains("Lunch")),
        "{:?}",
        a.inputs
    );
    let a = analyze(&cut(&full, full.find(r#""o":"#).unwrap() + 8));
    let texts: Vec<&str> = a.inputs.iter().map(|i| i.1.as_str()).collect();
    assert!(
        texts.contains(&"b'c") && texts.iter().any(|t| t.contains("Lunch")),
        "{texts:?}"
    );
    assert!(!texts.contains(&"k"), "{texts:?}");
}

/// File uploads (the GraphQL multipart request): the `operations` part is the
/// request; an injection in its variables is found, a benign upload is clean.
#[test]
fn multipart_uploads_are_judged_by_their_operations_part() {
    let e = engine();
    let upload = |vars: &str| {
        let ops = body(
            "mutation Up($file: Upload!, $note: String) { upload(file: $file, note: $note) { id } }",
            vars,
        );
        let b = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{ops}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\":[\"variables.file\"]}}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"0\"; filename=\"a.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n\x01\x02{{not json\r\n--XyZ--\r\n"
        );
        req(&format!(
            "POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ))
    };
    let r = upload(r#"{"file":null,"note":"holiday photos"}"#);
    let v = e.inspect_request(&r);
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(analyze(&r).routes(), [(OpKind::Mutation, "upload")]);
    let r = upload(r#"{"file":null,"note":"x' UNION SELECT password FROM users--"}"#);
    assert_eq!(e.verdict(&e.inspect_request(&r)), Action::Ban);
    // No `operations` part: not GraphQL (not malformed either).
    let r = req(
        "POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 52\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--B--\r\n",
    );
    assert!(Graphql::new(GraphqlConfig::default()).analyze(&r).is_none());
}

/// Padding cannot push an injection out of what is judged: 600 cookies in
/// the head, or an undeclared variable holding 600 strings sorted first.
#[test]
fn padding_does_not_push_arguments_out() {
    let e = engine();
    let vars = format!(
        r#"{{"aaaa":[{}],"u":"admin' OR 1=1--","p":"x"}}"#,
        (0..600)
            .map(|i| format!("\"s{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = post(&body(LOGIN, &vars));
    assert_eq!(e.verdict(&e.inspect_request(&r)), Action::Ban);
    let cookies: String = (0..600).map(|i| format!("c{i}=v; ")).collect();
    let b = body(LOGIN, r#"{"u":"admin' OR 1=1--","p":"x"}"#);
    let r = req(&format!(
        "POST /graphql HTTP/1.1\r\nHost: a\r\nCookie: {cookies}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    ));
    assert_eq!(e.verdict(&e.inspect_request(&r)), Action::Ban);
}

/// The scan never counts more tokens than the parser, so a document within
/// the token limit is never taken for a longer one.
#[test]
fn the_scan_counts_no_more_tokens_than_the_parser() {
    let docs = [
        LOGIN,
        "{ a(x: -1.5e3, y: \"s \\\" } (\", z: \"\"\"blk \\\"\"\" } {\"\"\") ...F @d } # c { {\n fragment F on T { b }",
        "{ é ..on ....x }",
        "query { a: b, c : d, e :f }",
        "\"unterminated\n{ x { y } }",
        "{ a(o: {k: [1, 2], l: {m: $v}}) @skip(if: false) }",
        "\u{feff}{ a }\t\r\n,,,",
        "{ a(s: \"\\u00e9\\uD83D\\uDE00\") }",
        "",
    ];
    for d in docs {
        let parser = Parser::new(d).parse().token_limit().high;
        let sc = scan::scan(d, usize::MAX, usize::MAX);
        assert!(
            sc.tokens <= parser,
            "{d:?}: scan {} > parser {parser}",
            sc.tokens
        );
        assert_eq!(sc.cut, d.len());
        // Counting stopped early reads the same shape.
        for count_to in 0..sc.tokens {
            let early = scan::scan(d, 0, count_to);
            assert_eq!(
                (early.depth, early.aliases, early.directives),
                (sc.depth, sc.aliases, sc.directives),
                "{d:?} counted to {count_to}"
            );
            assert!(early.tokens > count_to);
        }
    }
    let sc = scan::scan("{ a: b(c: {d: 1}) { e @x } }", 3, usize::MAX);
    assert_eq!((sc.depth, sc.aliases, sc.directives), (2, 1, 1));
    // Cut after `{`, ` ` and `a`.
    assert_eq!(sc.cut, 3);
}

fn analyze_with(cfg: GraphqlConfig, doc: &str) -> Analysis {
    Graphql::new(cfg)
        .analyze(&post(&body(doc, "{}")))
        .expect("a GraphQL request")
}

/// A document at the token limit is judged exactly as without a limit; one
/// over it is judged on the scan of all of it and a parse of its first part.
#[test]
fn the_token_limit_from_both_sides() {
    let doc = "mutation Q($p: String) { a { b c d } l1: login(password: $p) { t } l2: login(password: \"x' OR 1=1--\") { t } }";
    let parser = Parser::new(doc).parse().token_limit().high;
    let cfg = |max_tokens| GraphqlConfig {
        max_tokens,
        max_attempts: 1,
        ..GraphqlConfig::default()
    };
    let free = analyze_with(cfg(0), doc);
    for limit in [parser, parser + 1, 100_000] {
        let a = analyze_with(cfg(u32::try_from(limit).unwrap()), doc);
        assert_eq!(a.findings, free.findings, "limit {limit}");
        assert_eq!(a.operations, free.operations, "limit {limit}");
        assert_eq!(a.inputs, free.inputs, "limit {limit}");
    }
    assert_eq!(free.rules(), ["graphql.batched_attempts"]);
    let scanned = scan::scan(doc, usize::MAX, usize::MAX).tokens;
    let a = analyze_with(cfg(u32::try_from(scanned - 1).unwrap()), doc);
    assert!(a.rules().contains(&"graphql.too_large"), "{:?}", a.rules());
}

/// Past the parsed part, the scan still finds depth and aliases over their
/// limits, and nothing at the limits themselves.
#[test]
fn shape_past_the_parsed_part_from_both_sides() {
    let cfg = GraphqlConfig {
        max_tokens: 50,
        max_depth: 5,
        max_aliases: 4,
        ..GraphqlConfig::default()
    };
    let filler = "f ".repeat(100);
    let nested = |n: usize| {
        format!(
            "{{ {filler} {}x{} }}",
            "a { ".repeat(n - 1),
            " }".repeat(n - 1)
        )
    };
    let aliased = |n: usize| {
        let al: String = (0..n).map(|i| format!("a{i}: x ")).collect();
        format!("{{ {filler} {al} }}")
    };
    let rules = |doc: &str| analyze_with(cfg.clone(), doc).rules();
    assert_eq!(rules(&nested(5)), ["graphql.too_large"]);
    assert!(rules(&nested(6)).contains(&"graphql.depth"));
    assert_eq!(rules(&aliased(4)), ["graphql.too_large"]);
    assert!(rules(&aliased(5)).contains(&"graphql.aliases"));
}

/// Spreads are counted as if expanded: by walking them within the budget,
/// by their fragments' sums past it, with the same counts.
#[test]
fn fragments_count_as_expanded() {
    let cfg = GraphqlConfig {
        max_fields: 1,
        max_depth: 1,
        max_aliases: 1,
        ..GraphqlConfig::default()
    };
    let spread = "{ u { ...A } v: w { x { ...A } } } fragment A on T { p: q { r ...B } } fragment B on T { s @d t }";
    let inline = "{ u { p: q { r s @d t } } v: w { x { p: q { r s @d t } } } }";
    let a = analyze_with(cfg.clone(), spread);
    assert_eq!(a.findings, analyze_with(cfg, inline).findings);
    assert!(!a.findings.is_empty());
    // 2^40 fields expanded: summed, not walked.
    let mut bomb = String::from("{ ...F0 }");
    for i in 0..40 {
        bomb.push_str(&format!(
            " fragment F{i} on Q {{ a: f {{ ...F{n} }} b: f {{ ...F{n} }} }}",
            n = i + 1
        ));
    }
    bomb.push_str(" fragment F40 on Q { x }");
    let a = analyze(&post(&body(&bomb, "{}")));
    let fields = a
        .findings
        .iter()
        .find(|f| f.0 == "graphql.fields")
        .map(|f| f.2.clone());
    assert_eq!(
        fields.as_deref(),
        Some(format!("{} fields (fragments expanded) (limit 500)", u32::MAX).as_str())
    );
    assert!(a.rules().contains(&"graphql.depth"), "{:?}", a.rules());
}

/// A document sent again (another request, other variables) is judged from
/// the cached analysis exactly as the first time: its own literals, the new
/// variables, shape limits; and another operation name is another entry.
#[test]
fn a_repeated_document_is_judged_as_the_first_time() {
    let e = engine();
    let doc =
        "query U($id: ID!) { user(id: $id) { id name } a1: user(id: \"1' OR '1'='1\") { id } }";
    let rules = |v: &[crate::Violation]| {
        let mut r: Vec<(&str, Location)> = v.iter().map(|v| (v.rule, v.location.clone())).collect();
        r.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        r
    };
    let first = e.inspect_request(&post(&body(doc, r#"{"id":"7"}"#)));
    assert!(!first.is_empty(), "the literal injection is found");
    for _ in 0..3 {
        let again = e.inspect_request(&post(&body(doc, r#"{"id":"7"}"#)));
        assert_eq!(rules(&again), rules(&first));
    }
    // New variables on the cached document: judged, named by their argument.
    let evil = e.inspect_request(&post(&body(
        doc,
        r#"{"id":"1 UNION SELECT password FROM users--"}"#,
    )));
    assert!(
        evil.iter()
            .any(|v| v.location == Location::Graphql("user.id".into())),
        "{evil:?}"
    );
    let a = analyze(&post(&body(doc, r#"{"id":"9"}"#)));
    assert_eq!(a.operations.len(), 1);
    assert!(
        a.operations[0]
            .arguments
            .iter()
            .any(|(f, arg, v)| f == "user" && arg == "id" && v == "9"),
        "{:?}",
        a.operations[0].arguments
    );
    // The same text with another operation name picks another operation.
    let two = "query A { me { id } } query B { user(id: 2) { id } }";
    let g = Graphql::new(GraphqlConfig::default());
    let named = |n: &str| {
        let b = format!(
            r#"{{"query":{},"operationName":"{n}"}}"#,
            serde_json::to_string(two).unwrap()
        );
        g.analyze(&post(&b)).unwrap().operations[0].fields.clone()
    };
    assert_eq!(named("A"), ["me"]);
    assert_eq!(named("B"), ["user"]);
    assert_eq!(named("A"), ["me"]);
}

/// String literals in the document cannot use up the inputs before the
/// variables: an injection in a variable is judged behind 600 literals.
#[test]
fn document_literals_do_not_crowd_out_variables() {
    let e = engine();
    let list: Vec<String> = (0..600).map(|i| format!("\"x{i}\"")).collect();
    let doc = format!(
        "query Q($id: ID!) {{ tags(names: [{}]) {{ id }} user(id: $id) {{ id }} }}",
        list.join(",")
    );
    let v = e.inspect_request(&post(&body(&doc, r#"{"id":"1' OR '1'='1' --"}"#)));
    assert!(
        v.iter()
            .any(|v| v.location == Location::Graphql("user.id".into())),
        "{v:?}"
    );
}

/// Whitespace and comments are ignored tokens: taking their runs out before
/// the parser changes nothing it sees, strings (block strings too) keep
/// every space, `#` and quote they hold, and a megabyte of padding anywhere
/// in a document leaves its analysis as it was.
#[test]
fn padding_is_compacted_and_changes_nothing() {
    let doc = "query Q($p: String = \"a  #b\\\"  c\")  {\n\n  # a comment { here\n  login(password: \"\"\"  x\n  \\\"\"\" # y \"\"\", id: 1) @skip(if: false) { t }\n}";
    assert_eq!(
        scan::compact(doc),
        "query Q($p: String = \"a  #b\\\"  c\") { login(password: \"\"\"  x\n  \\\"\"\" # y \"\"\", id: 1) @skip(if: false) { t } }"
    );
    let plain = analyze_with(GraphqlConfig::default(), doc);
    // Under the capture limit once JSON-escaped, over the compaction threshold.
    let pad = " \n\t".repeat(1 << 16);
    let comment = format!("# {}\n", "x".repeat(1 << 18));
    for padded in [
        format!("{doc}{pad}"),
        doc.replacen("{\n", &format!("{{{pad}"), 1),
        doc.replacen("{\n", &format!("{{{comment}"), 1),
    ] {
        let a = analyze_with(GraphqlConfig::default(), &padded);
        assert_eq!(a.operations, plain.operations);
        assert_eq!(a.inputs, plain.inputs);
        assert_eq!(a.rules(), plain.rules());
    }
    // A padded fragment bomb is still one: the padding hides nothing.
    let mut bomb = String::from("{ ...F0 }");
    for i in 0..20 {
        bomb.push_str(&format!(
            " fragment F{i} on Q {{ a: f {{ ...F{n} }}{pad} b: f {{ ...F{n} }} }}",
            n = i + 1,
            pad = if i == 3 { pad.as_str() } else { "" }
        ));
    }
    bomb.push_str(" fragment F20 on Q { x }");
    let a = analyze_with(GraphqlConfig::default(), &bomb);
    assert!(a.rules().contains(&"graphql.fields"), "{:?}", a.rules());
}

/// The cut document's text is unescaped as JSON does it: whole, it is what
/// serde_json reads; cut anywhere, a prefix of that (never a byte more).
#[test]
fn a_cut_query_string_is_unescaped_as_json_reads_it() {
    let doc = "mutation { l0: login(p: \"a\\\\b \\\"q\\\" é ✓ 😀 UNION\u{c}SELECT\u{8}\") { t } }\n\t# \u{1}";
    let json = format!(r#"{{"query":{}}}"#, serde_json::to_string(doc).unwrap())
        .replace('é', "\\u00e9")
        .replace('/', "\\/");
    assert_eq!(json_string_prefix(&json, "query").as_deref(), Some(doc));
    for cut in 0..json.len() {
        let Some(part) = json.get(..cut) else {
            continue;
        };
        if let Some(got) = json_string_prefix(part, "query") {
            assert!(doc.starts_with(&got), "cut at {cut}: {got:?}");
        }
    }
}
