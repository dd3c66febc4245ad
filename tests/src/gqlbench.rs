//! `cargo xtask bench graphql`: requests per second on one core through the
//! full pipeline (parse, detectors, GraphQL analysis, API guard, client
//! scores) for a mix of GraphQL requests, against the same engine on the
//! equivalent REST requests in the same run; and how long one 1 MB hostile
//! document (deep, wide, aliased, fragment bomb) takes to judge.

use std::time::{Duration, Instant};

use tollgate::{engine::Pipeline, policy::Policy};
use tollgate_detect::{Parsed, Request, parse_request};

fn raw(method: &str, target: &str, ctype: &str, body: &str) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: api.test\r\nUser-Agent: app/2.1\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2ln\r\n"
    );
    if !body.is_empty() {
        r.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn gql(query: &str, variables: &str) -> Vec<u8> {
    let q = serde_json::to_string(query).unwrap_or_default();
    raw(
        "POST",
        "/graphql",
        "application/json",
        &format!(r#"{{"query":{q},"variables":{variables}}}"#),
    )
}

/// The two mixes: the same work asked the GraphQL way and the REST way.
fn mixes() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut g = Vec::new();
    let mut r = Vec::new();
    // A large document: a product page with fragments (~2 KB).
    let fields: String = (0..60).map(|i| format!("attr{i} ")).collect();
    let large = format!(
        "query Page($id: ID!) {{ product(id: $id) {{ ...P reviews(first: 20) {{ edges {{ node {{ id rating text author {{ name }} }} }} }} }} }} fragment P on Product {{ id name price {fields} }}"
    );
    for i in 0..64 {
        let id = 1000 + i;
        g.push(gql("{ me { id name email } }", "{}"));
        r.push(raw("GET", "/me", "", ""));
        g.push(gql(
            "query U($id: ID!) { user(id: $id) { id name orders(first: 5) { id total } } }",
            &format!(r#"{{"id":"{id}"}}"#),
        ));
        r.push(raw(
            "GET",
            &format!("/users/{id}?include=orders&limit=5"),
            "",
            "",
        ));
        g.push(gql(
            "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
            &format!(r#"{{"u":"user{i}@example.com","p":"correct horse {i}"}}"#),
        ));
        r.push(raw(
            "POST",
            "/login",
            "application/json",
            &format!(r#"{{"username":"user{i}@example.com","password":"correct horse {i}"}}"#),
        ));
        g.push(gql(
            "mutation N($t: String!) { addReview(productId: 7, text: $t) { id } }",
            &format!(
                r#"{{"t":"Great lamp, bright enough for reading; arrived in {i} days. Would buy again!"}}"#
            ),
        ));
        r.push(raw(
            "POST",
            "/products/7/reviews",
            "application/json",
            &format!(
                r#"{{"text":"Great lamp, bright enough for reading; arrived in {i} days. Would buy again!"}}"#
            ),
        ));
        if i % 8 == 0 {
            g.push(gql(&large, &format!(r#"{{"id":"{id}"}}"#)));
            r.push(raw(
                "GET",
                &format!("/products/{id}?include=reviews,author&first=20&fields=id,name,price"),
                "",
                "",
            ));
        }
    }
    (g, r)
}

fn parse(raw: &[u8]) -> Option<Request> {
    match parse_request(raw) {
        Ok(Parsed::Complete { msg, .. }) => Some(msg),
        _ => None,
    }
}

/// CPU time of this thread: on a shared machine, wall time also counts
/// the time other processes ran.
fn cpu_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Pairs of REST and GraphQL passes.
const ROUNDS: usize = 5;

/// Requests per second through the pipeline for ~2 s of work.
fn rate(p: &mut Pipeline, reqs: &[Vec<u8>]) -> (f64, usize) {
    let passes = (60_000 / reqs.len()).max(3);
    let (mut n, mut flagged) = (0u64, 0usize);
    let t = Instant::now();
    for _ in 0..passes {
        for (i, r) in reqs.iter().enumerate() {
            let client = std::net::IpAddr::from([198, 18, (i >> 8 & 15) as u8, i as u8]);
            if let Some(req) = parse(r) {
                let d = p.on_request(Some(client), &req, n);
                flagged += usize::from(!d.violations.is_empty());
            }
            n += 1;
        }
    }
    (n as f64 / t.elapsed().as_secs_f64(), flagged)
}

/// Runs the benchmark and prints the figures.
pub fn run() {
    let mut set = nix::sched::CpuSet::new();
    if set.set(0).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
    let policy = Policy::default();
    let mut p = Pipeline::from_policy(&policy).expect("default policy");
    let (g, r) = mixes();
    // Warm both, then alternate REST and GraphQL passes: each pair gives a
    // ratio measured under the same load; the median of the pairs is the figure.
    rate(&mut p, &r[..16]);
    rate(&mut p, &g[..16]);
    println!("graphql: the default policy on one core, GraphQL and REST mixes of the same calls");
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let (rest, rf) = rate(&mut p, &r);
        let (graphql, gf) = rate(&mut p, &g);
        ratios.push(graphql / rest);
        println!(
            "  round {round}: REST {rest:.0} requests/s ({:.2} us; {rf} flagged), GraphQL {graphql:.0} requests/s ({:.2} us; {gf} flagged) = {:.2}x",
            1e6 / rest,
            1e6 / graphql,
            graphql / rest
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  GraphQL/REST: median {:.2}x, lowest {:.2}x, highest {:.2}x over {ROUNDS} rounds (goal >= 0.5x)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    let mb = 1 << 20;
    let bomb = {
        let mut d = String::from("{ ...F0 }");
        for i in 0..24 {
            d.push_str(&format!(
                " fragment F{i} on Q {{ a: f {{ ...F{n} }} b: f {{ ...F{n} }} }}",
                n = i + 1
            ));
        }
        d.push_str(" fragment F24 on Q { x }");
        d.push_str(&" ".repeat(mb - d.len()));
        d
    };
    let hostile: Vec<(&str, String)> = vec![
        ("deep: 1 MB of `{`", "{".repeat(mb)),
        (
            "deep: `{ a ` nested to 1 MB",
            format!("{}{}", "{ a ".repeat(mb / 8), "}".repeat(mb / 8)),
        ),
        (
            "wide: 1 MB of fields",
            format!("{{ {} }}", "a ".repeat(mb / 2)),
        ),
        (
            "aliases: 1 MB of aliased logins",
            format!(
                "mutation {{ {} }}",
                (0..mb / 48)
                    .map(|i| format!("l{i}: login(username: \"u\", password: \"p{i}\") {{ t }}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        ("fragment bomb (2^24 fields), padded to 1 MB", bomb),
    ];
    println!(
        "  1 MB hostile documents (POST /graphql, JSON body), judged (HTTP parse + pipeline), best and worst of 5, wall and thread CPU time:"
    );
    let mut worst_all = Duration::ZERO;
    let mut worst_cpu = Duration::ZERO;
    for (what, doc) in hostile {
        let req = gql(&doc, "{}");
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut rules = Vec::new();
        for k in 0..5u8 {
            let c = cpu_now();
            let t = Instant::now();
            let Some(parsed) = parse(&req) else {
                println!("    {what}: did not parse as HTTP");
                break;
            };
            let d = p.on_request(Some(std::net::IpAddr::from([198, 19, 0, k])), &parsed, 0);
            times.push(t.elapsed());
            cpu.push(cpu_now().saturating_sub(c));
            rules = d.violations.iter().map(|v| v.rule).collect();
        }
        times.sort();
        cpu.sort();
        if let (Some(best), Some(worst), Some(cbest), Some(cworst)) =
            (times.first(), times.last(), cpu.first(), cpu.last())
        {
            worst_all = worst_all.max(*worst);
            worst_cpu = worst_cpu.max(*cworst);
            println!(
                "    {what}: wall {:.2} .. {:.2} ms, CPU {:.2} .. {:.2} ms ({} bytes; {rules:?})",
                best.as_secs_f64() * 1e3,
                worst.as_secs_f64() * 1e3,
                cbest.as_secs_f64() * 1e3,
                cworst.as_secs_f64() * 1e3,
                req.len()
            );
        }
    }
    println!(
        "  worst hostile document: wall {:.2} ms, CPU {:.2} ms (goal < 5 ms)",
        worst_all.as_secs_f64() * 1e3,
        worst_cpu.as_secs_f64() * 1e3
    );
}
