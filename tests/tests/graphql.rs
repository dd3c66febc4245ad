//! GraphQL end to end: a real GraphQL server (graphql-core behind Python's
//! http.server, tests/scripts/graphql_server.py) in the root namespace,
//! clients in a namespace, the agent judging each operation live.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tollgate_tests::{Agent, Lab, eventually, http::raw_http, sh};

const SDL: &str = "type Query { user(id: ID!): User me: User products(search: String): [Product] }
type Mutation { login(username: String!, password: String!): Token setNote(text: String): Boolean }
type User { id: ID! name: String }
type Product { id: ID! name: String }
type Token { token: String }
";

/// The GraphQL server; killed on drop.
struct GqlServer(Child);

impl GqlServer {
    fn start(addr: SocketAddr, schema: &std::path::Path) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/graphql_server.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(schema)
            .stdout(Stdio::null())
            .spawn()
            .expect("/usr/bin/python3 with graphql-core 3 (cargo xtask setup --test-deps)");
        let s = GqlServer(child);
        assert!(
            eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "the GraphQL server did not come up"
        );
        s
    }
}

impl Drop for GqlServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A POST /graphql request with a JSON body.
fn post(body: &str) -> Vec<u8> {
    format!(
        "POST /graphql HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn op(query: &str, variables: &str) -> Vec<u8> {
    let q = serde_json::to_string(query).unwrap();
    post(&format!(r#"{{"query":{q},"variables":{variables}}}"#))
}

fn add_addr(lab: &Lab, a: IpAddr) {
    sh(&[
        "ip",
        "-n",
        &lab.ns,
        "addr",
        "add",
        &format!("{a}/24"),
        "dev",
        &lab.peer_if(),
    ]);
}

/// Asserts that `client` was neither banned nor named in any event.
fn assert_untouched(agent: &Agent, events: &[serde_json::Value], client: IpAddr, who: &str) {
    let s = client.to_string();
    assert!(
        !banned(agent, client)
            && !events
                .iter()
                .any(|e| e["client"].as_str() == Some(s.as_str())),
        "{who} flagged: {events:#?}"
    );
}

fn banned(agent: &Agent, a: IpAddr) -> bool {
    let want = format!("{a}/32");
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["cidr"] == want)
}

/// The lab, the server and an agent with `graphql_policy` (plus the schema).
fn setup(graphql_policy: &str) -> (Lab, GqlServer, Agent, SocketAddr, tempfile::TempDir) {
    let lab = Lab::new();
    let server = lab.v4(0, 1);
    let port = std::net::TcpListener::bind(SocketAddr::new(server, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dst = SocketAddr::new(server, port);
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.graphql");
    std::fs::write(&schema, SDL).unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "api_ports: [{port}]\nsampling: {{one_in: 1, body_bytes: 65536}}\ngraphql:\n  schema: schema.graphql\n{graphql_policy}"
        ),
    )
    .unwrap();
    let srv = GqlServer::start(dst, &schema);
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    (lab, srv, agent, dst, dir)
}

#[test]
fn graphql_attacks_are_judged_per_operation_and_benign_clients_pass() {
    let (lab, _srv, agent, dst, _dir) = setup("");
    // A benign client: ordinary queries and mutations on one keep-alive connection.
    let benign = lab.v4(0, 2);
    let mut calls = Vec::new();
    for i in 0..10 {
        calls.push(op(
            "query U($id: ID!) { user(id: $id) { id name } }",
            &format!(r#"{{"id":"{}"}}"#, 7 + i % 2),
        ));
        calls.push(op("{ me { name } }", "{}"));
        calls.push(op(
            "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
            r#"{"u":"ana","p":"secret"}"#,
        ));
        calls.push(op(
            "mutation($t: String) { setNote(text: $t) }",
            r#"{"t":"Lunch at 12; don't forget the O'Reilly book (2nd ed.)"}"#,
        ));
    }
    calls.push(op("{ internalStats }", "{}"));
    let answer = raw_http(&lab, benign, dst, calls);
    assert!(answer.contains("t-7"), "{answer}");

    // Introspection: alerted, not banned (default `alert`).
    let intro = lab.v4(0, 3);
    add_addr(&lab, intro);
    raw_http(
        &lab,
        intro,
        dst,
        vec![op("{ __schema { types { name } } }", "{}")],
    );

    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "depth 30",
            op(
                &format!("{{ {}id{} }}", "user(id: 7) { ".repeat(30), " }".repeat(30)),
                "{}",
            ),
        ),
        (
            "500 aliases",
            op(
                &format!(
                    "{{ {} }}",
                    (0..500)
                        .map(|i| format!("a{i}: me {{ name }}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                "{}",
            ),
        ),
        (
            "200 aliased logins",
            op(
                &format!(
                    "mutation {{ {} }}",
                    (0..200)
                        .map(|i| format!(
                            "l{i}: login(username: \"ana\", password: \"pw{i}\") {{ token }}"
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                "{}",
            ),
        ),
        (
            "SQL injection in a variable",
            op(
                "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
                r#"{"u":"admin' OR '1'='1' --","p":"x"}"#,
            ),
        ),
        (
            "NoSQL operator in a variable",
            op(
                "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
                r#"{"u":"admin","p":{"$ne":null}}"#,
            ),
        ),
    ];
    let mut missed = Vec::new();
    for (k, (what, req)) in attacks.into_iter().enumerate() {
        let src = lab.v4(0, 20 + u8::try_from(k).unwrap());
        add_addr(&lab, src);
        raw_http(&lab, src, dst, vec![req]);
        if !eventually(Duration::from_secs(5), || banned(&agent, src)) {
            missed.push(what);
        }
    }
    let events = agent.events();
    assert!(
        missed.is_empty(),
        "not banned: {missed:?}\nevents: {events:#?}"
    );
    let intro_s = intro.to_string();
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("graphql.introspection")
                && e.to_string().contains(&intro_s)),
        "introspection not reported: {events:#?}"
    );
    assert!(!banned(&agent, intro), "introspection banned under alert");
    assert_untouched(&agent, &events, benign, "benign client");
    // The inventory lists operations, marked against the schema.
    let inv = agent.json(&["inventory"]);
    let status = |path: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["status"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        status("/graphql mutation login").as_deref(),
        Some("documented"),
        "{inv:#}"
    );
    assert_eq!(
        status("/graphql query user").as_deref(),
        Some("documented"),
        "{inv:#}"
    );
    assert_eq!(
        status("/graphql query internalStats").as_deref(),
        Some("shadow"),
        "{inv:#}"
    );
    assert_eq!(
        status("/graphql query products").as_deref(),
        Some("unused"),
        "{inv:#}"
    );
    // Each operation has its responses' statuses; `internalStats` (no such
    // field) was answered 200 with GraphQL errors.
    let row = |path: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .cloned()
            .unwrap_or_default()
    };
    let user = row("/graphql query user");
    assert!(user["statuses"]["200"].as_u64() >= Some(10), "{inv:#}");
    // `me` was only ever asked validly.
    let me = row("/graphql query me");
    assert!(me["statuses"]["200"].as_u64() >= Some(10), "{inv:#}");
    assert!(me.get("graphql_errors").is_none(), "{me:#}");
    let login = row("/graphql mutation login");
    assert!(login["statuses"]["200"].as_u64() >= Some(10), "{inv:#}");
    let shadow = row("/graphql query internalStats");
    assert_eq!(shadow["statuses"]["200"], 1, "{inv:#}");
    assert_eq!(shadow["graphql_errors"], 1, "{inv:#}");
    // The table shows them too.
    let table = agent.ok(&["inventory"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("/graphql query internalStats") && l.contains("200:1 errors:1")),
        "{table}"
    );
}

#[test]
fn introspection_is_banned_under_deny() {
    let (lab, _srv, agent, dst, _dir) = setup("  introspection: deny\n");
    let src = lab.v4(0, 3);
    add_addr(&lab, src);
    raw_http(
        &lab,
        src,
        dst,
        vec![op("{ __schema { types { name } } }", "{}")],
    );
    assert!(
        eventually(Duration::from_secs(5), || banned(&agent, src)),
        "events: {:#?}",
        agent.events()
    );
}

/// BOLA through an argument: a route names the operation and the argument
/// bound to the token's claim; a client holding a token for user 7 may read
/// `user(id: 7)`, asking for `user(id: 8)` (literal or variable) is flagged
/// and, repeated, banned; the server answered every time.
#[test]
fn bola_through_arguments_is_flagged() {
    let (lab, _srv, agent, dst, _dir) =
        setup("routes:\n  - path: POST /graphql query user\n    bind: {param: id, claim: sub}\n");
    // {"alg":"HS256"} . {"sub":"7"} . signature (no keys configured: read, not verified)
    let with_token = |query: &str, variables: &str| {
        let q = serde_json::to_string(query).unwrap();
        let body = format!(r#"{{"query":{q},"variables":{variables}}}"#);
        format!(
            "POST /graphql HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2ln\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let own = lab.v4(0, 2);
    let answer = raw_http(
        &lab,
        own,
        dst,
        (0..5)
            .map(|_| {
                with_token(
                    "query U($id: ID!) { user(id: $id) { id name } }",
                    r#"{"id":"7"}"#,
                )
            })
            .collect(),
    );
    assert!(
        answer.contains("\"id\": \"7\"") || answer.contains("\"id\":\"7\""),
        "{answer}"
    );
    let other = lab.v4(0, 30);
    add_addr(&lab, other);
    raw_http(
        &lab,
        other,
        dst,
        vec![
            with_token("{ user(id: 8) { id name } }", "{}"),
            with_token(
                "query U($id: ID!) { user(id: $id) { id name } }",
                r#"{"id":"8"}"#,
            ),
            with_token("{ user(id: 8) { name } }", "{}"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(5), || banned(&agent, other)),
        "user(id: 8) with a token for 7 not banned: {:#?}",
        agent.events()
    );
    let events = agent.events();
    let other_s = other.to_string();
    let bola: Vec<_> = events
        .iter()
        .filter(|e| {
            e["client"].as_str() == Some(other_s.as_str())
                && e.to_string().contains("authz.object_binding")
        })
        .collect();
    assert!(!bola.is_empty(), "{events:#?}");
    assert!(
        bola.iter()
            .any(|e| e.to_string().contains("/graphql query user")),
        "the event does not name the operation: {bola:#?}"
    );
    assert_untouched(&agent, &events, own, "the owner");
}

/// Schema probing without introspection: a client sending queries with
/// misspelt fields reads the server's "Did you mean ...?" answers; past
/// `checks.not_found.paths` distinct ones it is banned
/// (`graphql.field_suggestions`). A client making one typo among ordinary
/// queries is not.
#[test]
fn field_suggestion_probing_is_banned() {
    let (lab, _srv, agent, dst, _dir) = setup("");
    let benign = lab.v4(0, 2);
    let mut calls: Vec<Vec<u8>> = (0..20)
        .map(|i| op(&format!("{{ user(id: {}) {{ name }} }}", 7 + i % 2), "{}"))
        .collect();
    calls.insert(5, op("{ usr(id: 7) { name } }", "{}"));
    let answer = raw_http(&lab, benign, dst, calls);
    assert!(answer.contains("Did you mean"), "{answer}");
    // A wordlist of near misses of `products`, each answered with a suggestion.
    let prober = lab.v4(0, 40);
    add_addr(&lab, prober);
    let mut probes = Vec::new();
    for at in 0..8 {
        for c in ['q', 'x', 'z', 'j', 'k', 'v'] {
            let mut name: Vec<char> = "products".chars().collect();
            name[at] = c;
            let name: String = name.into_iter().collect();
            probes.push(op(&format!("{{ {name} {{ id }} }}"), "{}"));
        }
    }
    let answer = raw_http(&lab, prober, dst, probes);
    assert!(answer.contains("Did you mean"), "{answer}");
    assert!(
        eventually(Duration::from_secs(5), || banned(&agent, prober)),
        "the prober was not banned: {:#?}",
        agent.events()
    );
    let events = agent.events();
    let prober_s = prober.to_string();
    assert!(
        events
            .iter()
            .any(|e| e["client"].as_str() == Some(prober_s.as_str())
                && e.to_string().contains("graphql.field_suggestions")),
        "{events:#?}"
    );
    assert_untouched(&agent, &events, benign, "benign client");
}
