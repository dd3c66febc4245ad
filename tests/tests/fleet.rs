//! Fleet-wide bans through a real etcd (Debian's `etcd-server`, installed
//! by `cargo xtask setup --test-deps`): each test runs its own etcd (one
//! member, or three) on free loopback ports with throwaway data directories
//! and kills it when done. Agents, each on its own lab veth (XDP) with its
//! own state, pins and socket, share one fleet: a ban made on one is
//! enforced by the others, an unban lifts it, a partition (etcd stopped, or
//! one host's link to etcd cut) changes nothing that is enforced, what
//! changed during it arrives after the heal, and changes acknowledged while
//! cut off survive SIGKILL of the agent (its durable outbox).

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{
    Agent, EXCHANGE_TIMEOUT, Lab, Server,
    etcd::Etcd,
    eventually,
    http::{HttpServer, get},
};

fn cluster(agent: &Agent) -> serde_json::Value {
    agent.json(&["status"])["cluster"].clone()
}

fn banned_from(agent: &Agent, ip: IpAddr) -> Option<String> {
    let want = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cidr"] == want.as_str())
        .map(|b| b["host"].as_str().unwrap_or("").to_owned())
}

/// Polls B's ban list every 2 ms until `ip` is (or is not) there; how long
/// that took.
fn until_listed(agent: &Agent, ip: IpAddr, listed: bool, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if banned_from(agent, ip).is_some() == listed {
            return Some(t0.elapsed());
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// An agent on `lab` in `fleet` as `host`.
fn member(lab: &Lab, url: &str, fleet: &str, host: &str, extra: &[&str]) -> Agent {
    let flags = [
        "--cluster-endpoints",
        url,
        "--cluster-fleet",
        fleet,
        "--cluster-host-id",
        host,
    ];
    Agent::start(&lab.host_if, &[&flags[..], extra].concat())
}

/// Waits until the lab passes traffic (just after the agents attach, a
/// loaded machine may need a moment).
fn lab_works(ok: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(10), ok),
        "the lab must work before any ban"
    );
}

/// Waits until every agent is in sync with the fleet.
fn joined(agents: &[&Agent]) {
    for ag in agents {
        assert!(
            eventually(Duration::from_secs(15), || cluster(ag)["connected"] == true),
            "agent never joined the fleet: {}",
            ag.log_text()
        );
    }
}

#[test]
fn bans_cross_the_fleet_and_survive_a_partition() {
    let started = Instant::now();
    let mut etcd = Etcd::start();
    let fleet = format!("t{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = Server::start(&[lb.v4(0, 1), lb.v4(1, 1), lb.v6(0, 1), lb.v6(1, 1)]);
    let url = etcd.url();
    let flags = |host: &'static str| {
        vec![
            "--cluster-endpoints".to_owned(),
            url.clone(),
            "--cluster-fleet".to_owned(),
            fleet.clone(),
            "--cluster-host-id".to_owned(),
            host.to_owned(),
        ]
    };
    let fa = flags("host-a");
    let fb = flags("host-b");
    let a = Agent::start(
        &la.host_if,
        &fa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Agent::start(
        &lb.host_if,
        &fb.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for ag in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || cluster(ag)["connected"] == true),
            "agent never joined the fleet: {}",
            ag.log_text()
        );
    }
    assert_eq!(cluster(&b)["host_id"], "host-b");
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    let (c4, s4) = (lb.v4(0, 2), lb.v4(0, 1));
    let (c6, s6) = (lb.v6(0, 2), lb.v6(0, 1));
    let (o4, os4) = (lb.v4(1, 2), lb.v4(1, 1));
    lab_works(|| tcp(c4, s4) && tcp(c6, s6) && tcp(o4, os4));

    // A ban on A: B enforces it, marked with the host that decided it.
    a.ok(&["block", "add", &c4.to_string(), "--reason", "fleet test"]);
    let took = until_listed(&b, c4, true, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the ban never reached B: {}", b.log_text()));
    println!("fleet: ban on A listed on B after {took:?}");
    assert_eq!(banned_from(&b, c4).as_deref(), Some("host-a"));
    assert!(!tcp(c4, s4), "B must drop the client banned on A");
    assert!(tcp(o4, os4), "other clients pass on B");
    // B's own view of it is not shared back as B's.
    assert_eq!(banned_from(&a, c4).as_deref(), Some(""));

    // The unban on A lifts it on B.
    a.ok(&["block", "rm", &c4.to_string()]);
    let took =
        until_listed(&b, c4, false, Duration::from_secs(5)).expect("the unban never reached B");
    println!("fleet: unban on A lifted on B after {took:?}");
    assert!(tcp(c4, s4), "B must pass the client once unbanned on A");

    // Malformed and hostile records written straight into etcd are skipped.
    let prefix = format!("/tollgate/{fleet}/bans/");
    let before = cluster(&b)["skipped"].as_u64().unwrap();
    assert!(etcd.put_raw(&format!("{prefix}{o4}/32"), b"{not json"));
    let wide = r#"{"cidr":"0.0.0.0/0","kind":"manual","reason":"x","origin":"cli","created_at":1,"expires_at":null,"offences":1,"host":"evil"}"#;
    assert!(etcd.put_raw(&format!("{prefix}0.0.0.0/0"), wide.as_bytes()));
    let mismatched = wide.replace("0.0.0.0/0", &format!("{s4}/32"));
    assert!(etcd.put_raw(&format!("{prefix}{o4}/32"), mismatched.as_bytes()));
    assert!(
        eventually(Duration::from_secs(5), || cluster(&b)["skipped"]
            .as_u64()
            .unwrap()
            >= before + 3),
        "hostile records were not counted as skipped: {}",
        cluster(&b)
    );
    assert!(
        tcp(o4, os4) && tcp(c4, s4),
        "a hostile record must ban nothing"
    );
    assert!(banned_from(&b, o4).is_none());

    // A fleet ban never overrides B's allowlist (B's entry is the fleet's
    // too, so A bans it only with --force).
    b.ok(&["allow", "add", &o4.to_string()]);
    let refused = cluster(&b)["refused"].as_u64().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !a
            .cli(&["block", "add", &o4.to_string()])
            .status
            .success()),
        "A must refuse to ban what B's allow entry covers fleet-wide"
    );
    a.ok(&["block", "add", "--force", &o4.to_string()]);
    assert!(
        eventually(Duration::from_secs(5), || cluster(&b)["refused"]
            .as_u64()
            .unwrap()
            > refused),
        "B did not refuse the allowlisted ban: {}",
        cluster(&b)
    );
    assert!(
        banned_from(&b, o4).is_none() && tcp(o4, os4),
        "allowlisted on B"
    );

    // `block rm --local` lifts a fleet ban on one host only: had B told the
    // fleet, A (which made it) would have lifted it too.
    let (o6, os6) = (lb.v6(1, 2), lb.v6(1, 1));
    a.ok(&["block", "add", &o6.to_string()]);
    until_listed(&b, o6, true, Duration::from_secs(5)).expect("the IPv6 ban never reached B");
    assert!(!tcp(o6, os6));
    b.ok(&["block", "rm", "--local", &o6.to_string()]);
    assert!(tcp(o6, os6), "--local lifts it on B");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        banned_from(&a, o6).as_deref(),
        Some(""),
        "--local leaves the fleet's ban"
    );
    a.ok(&["block", "rm", &o6.to_string()]);

    // Partition: etcd goes away. B keeps enforcing what it has; A keeps
    // banning and unbanning locally.
    a.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    until_listed(&b, c4, true, Duration::from_secs(5)).expect("second ban never reached B");
    etcd.stop();
    assert!(
        eventually(Duration::from_secs(10), || cluster(&b)["connected"]
            == false),
        "B did not notice etcd is gone: {}",
        cluster(&b)
    );
    assert!(!tcp(c4, s4), "B keeps enforcing through the partition");
    a.ok(&[
        "block",
        "add",
        &c6.to_string(),
        "--reason",
        "during partition",
    ]);
    a.ok(&["block", "rm", &c4.to_string()]);
    assert!(
        eventually(Duration::from_secs(5), || cluster(&a)["outbox"].as_u64()
            == Some(2)),
        "A must queue its partition-time changes: {}",
        cluster(&a)
    );
    assert!(tcp(c6, s6), "B cannot know A's partition-time ban yet");
    assert!(!tcp(c4, s4), "nor its partition-time unban");

    // Heal: both reconnect, A's queue reaches etcd, B converges.
    let healed = Instant::now();
    etcd.spawn();
    until_listed(&b, c6, true, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("A's partition-time ban never reached B: {}", b.log_text()));
    until_listed(&b, c4, false, Duration::from_secs(10))
        .expect("A's partition-time unban never reached B");
    println!(
        "fleet: converged {:?} after etcd came back",
        healed.elapsed()
    );
    assert!(!tcp(c6, s6) && tcp(c4, s4), "B enforces the healed set");
    for ag in [&a, &b] {
        assert!(eventually(Duration::from_secs(10), || {
            let c = cluster(ag);
            c["connected"] == true && c["outbox"] == 0
        }));
    }
    println!("fleet: whole test {:?}", started.elapsed());
}

#[test]
fn a_detected_injection_on_one_host_bans_on_the_others() {
    let etcd = Etcd::start();
    let fleet = format!("p{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = HttpServer::start(&[la.v4(0, 1)]);
    let port = server.port.to_string();
    let url = etcd.url();
    let a = member(&la, &url, &fleet, "host-a", &["--api-port", &port]);
    let b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    // The attacker sends one SQL injection to A's API; A's policy engine
    // bans it, and B enforces that ban as A's.
    let (attacker, dst) = (
        la.v4(0, 2),
        std::net::SocketAddr::new(la.v4(0, 1), server.port),
    );
    la.in_client(move || {
        use std::io::Write as _;
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&std::net::SocketAddr::new(attacker, 0).into())
            .unwrap();
        sock.connect_timeout(&dst.into(), Duration::from_secs(2))
            .unwrap();
        let mut s: std::net::TcpStream = sock.into();
        s.write_all(&get("/items?id=1%27%20OR%20%271%27%3D%271"))
            .unwrap();
        thread::sleep(Duration::from_millis(200));
    });
    until_listed(&b, attacker, true, Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "A's policy ban never reached B: {}\n{}",
            a.log_text(),
            b.log_text()
        )
    });
    let bans = b.json(&["block", "ls"]);
    let ban = bans
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["cidr"] == format!("{attacker}/32").as_str())
        .unwrap();
    assert_eq!(ban["kind"], "policy", "{ban}");
    assert_eq!(ban["host"], "host-a", "{ban}");
}

/// An etcd that takes only small requests (`--max-request-bytes 1500`,
/// `--max-txn-ops 8`): A's batches are refused for their size and split
/// until they go through; every ban of a 60-line import reaches B, and A's
/// outbox drains (a refused batch was once sent again for good, holding
/// every later change back).
#[test]
fn an_etcd_that_takes_only_small_requests_still_gets_every_ban() {
    let etcd = Etcd::start_with(&["--max-request-bytes", "1500", "--max-txn-ops", "8"]);
    let fleet = format!("s{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let url = etcd.url();
    let a = member(&la, &url, &fleet, "host-a", &[]);
    let b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    let lines: String = (0..60).map(|i| format!("198.19.200.{i}\n")).collect();
    std::fs::write(&list, lines).unwrap();
    a.ok(&[
        "block",
        "import",
        list.to_str().unwrap(),
        "--origin",
        "small-etcd",
    ]);
    let on_b = || {
        b.json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| {
                x["cidr"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("198.19.200."))
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(30), || on_b() == 60),
        "B holds {} of A's 60 bans: {}\n{}",
        on_b(),
        cluster(&a),
        a.log_text()
    );
    assert!(
        eventually(Duration::from_secs(10), || cluster(&a)["outbox"] == 0),
        "A's outbox never drained: {}",
        cluster(&a)
    );
    assert!(
        a.log_text().contains("refused a transaction this large"),
        "etcd's limits were never hit, so this tested nothing: {}",
        a.log_text()
    );
}

/// A ban and an unban acknowledged on A while etcd is down sit in A's
/// durable outbox: A killed with SIGKILL before etcd comes back publishes
/// both after its restart (B gets the ban and lifts the unbanned one), and
/// A does not take back from etcd the ban it lifted.
#[test]
fn acknowledged_changes_survive_kill_9_of_the_agent() {
    let mut etcd = Etcd::start();
    let fleet = format!("k{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = Server::start(&[lb.v4(0, 1), lb.v6(0, 1)]);
    let url = etcd.url();
    let mut a = member(&la, &url, &fleet, "host-a", &[]);
    let b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    let (c4, s4) = (lb.v4(0, 2), lb.v4(0, 1));
    let (c6, s6) = (lb.v6(0, 2), lb.v6(0, 1));
    a.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    until_listed(&b, c4, true, Duration::from_secs(5)).expect("the ban never reached B");
    assert!(!tcp(c4, s4) && tcp(c6, s6));

    etcd.stop();
    assert!(
        eventually(Duration::from_secs(10), || cluster(&a)["connected"]
            == false),
        "A did not notice etcd is gone"
    );
    a.ok(&["block", "add", &c6.to_string(), "--ttl", "10m"]);
    a.ok(&["block", "rm", &c4.to_string()]);
    assert_eq!(cluster(&a)["outbox"], 2, "{}", cluster(&a));
    a.kill(nix::sys::signal::Signal::SIGKILL);

    etcd.spawn();
    a.spawn_within(Duration::from_secs(60));
    until_listed(&b, c6, true, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the ban queued before the kill never reached B: {}",
            a.log_text()
        )
    });
    until_listed(&b, c4, false, Duration::from_secs(10))
        .expect("the unban queued before the kill never reached B");
    assert!(
        !tcp(c6, s6) && tcp(c4, s4),
        "B enforces what A acknowledged"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = cluster(&a);
            c["connected"] == true && c["outbox"] == 0
        }),
        "A's outbox never drained: {}",
        cluster(&a)
    );
    assert!(
        banned_from(&a, c4).is_none(),
        "A took back from etcd the ban it had lifted"
    );
    // The outbox was trimmed: a second restart publishes nothing again.
    // (A loaded CI machine can take long to re-attach: a roomier limit.)
    a.kill(nix::sys::signal::Signal::SIGKILL);
    a.spawn_within(Duration::from_secs(60));
    assert!(eventually(
        Duration::from_secs(10),
        || cluster(&a)["connected"] == true
    ));
    assert_eq!(cluster(&a)["published"], 0, "{}", cluster(&a));
}

/// The ban set `agent` holds: (cidr, deciding host or "" for its own).
fn ban_set(agent: &Agent) -> std::collections::BTreeSet<String> {
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cidr"].as_str().unwrap().to_owned())
        .collect()
}

/// Five agents (each on its own lab veth with XDP, its own pins, state and
/// socket) share a three-member etcd: a ban on A drops on every host, an
/// unban lifts it everywhere, expiry lifts it everywhere with all of etcd
/// stopped, one host cut off from etcd for 60 s (its packets to etcd
/// dropped) keeps enforcing and banning, and converges after the heal with
/// every host holding the same set and no drift (no ban lost, none that
/// ended during the partition brought back), and a hostile record is
/// skipped by all.
#[test]
fn five_hosts_on_three_members_converge() {
    let started = Instant::now();
    let mut members = Etcd::cluster(3);
    let fleet = format!("f{}", std::process::id());
    let labs: Vec<Lab> = (0..5).map(|_| Lab::new()).collect();
    let server = Server::start(&labs.iter().map(|l| l.v4(0, 1)).collect::<Vec<_>>());
    let urls = |cut: bool| {
        members
            .iter()
            .map(|m| if cut { m.cut_url() } else { m.url() })
            .collect::<Vec<_>>()
            .join(",")
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["host-a", "host-b", "host-c", "host-d", "host-e"];
    let agents: Vec<Agent> = labs
        .iter()
        .zip(names)
        .map(|(lab, name)| {
            // E reaches etcd through the addresses the partition cuts.
            let url = urls(name == "host-e");
            let policy = dir.path().join(format!("{name}.yaml"));
            std::fs::write(
                &policy,
                "mode: enforce\ncluster: {endpoints: [http://127.0.0.1:1], reconcile_secs: 2}\n",
            )
            .unwrap();
            member(
                lab,
                &url,
                &fleet,
                name,
                &["--config", policy.to_str().unwrap()],
            )
        })
        .collect();
    joined(&agents.iter().collect::<Vec<_>>());
    let (a, e) = (&agents[0], &agents[4]);
    let client = |i: usize| labs[i].v4(0, 2);
    let passes =
        |i: usize| labs[i].tcp_ok(client(i), labs[i].v4(0, 1), server.port, EXCHANGE_TIMEOUT);
    for i in 0..5 {
        assert!(
            eventually(Duration::from_secs(10), || passes(i)),
            "lab {i} must work before any ban"
        );
    }
    let every_client: Vec<String> = (0..5).map(|i| client(i).to_string()).collect();
    let args = |verb: &'static str, extra: &[&'static str]| {
        let mut v = vec!["block", verb];
        v.extend(every_client.iter().map(String::as_str));
        v.extend(extra);
        v
    };

    // A ban on A (each lab's client) drops on every host.
    let t = Instant::now();
    a.ok(&args("add", &["--reason", "fleet of five"]));
    for (i, ag) in agents.iter().enumerate() {
        until_listed(ag, client(i), true, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("the ban never reached {}", names[i]));
        assert!(!passes(i), "{} must drop the client banned on A", names[i]);
    }
    println!("five: ban on A enforced on all after {:?}", t.elapsed());
    // The unban on A lifts it everywhere.
    a.ok(&args("rm", &[]));
    for (i, ag) in agents.iter().enumerate() {
        until_listed(ag, client(i), false, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("the unban never reached {}", names[i]));
        assert!(passes(i), "{} must pass the client again", names[i]);
    }

    // Expiry lifts it everywhere with every etcd member stopped.
    a.ok(&args("add", &["--ttl", "6s"]));
    for (i, ag) in agents.iter().enumerate() {
        until_listed(ag, client(i), true, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("the expiring ban never reached {}", names[i]));
    }
    for m in &mut members {
        m.stop();
    }
    for (i, ag) in agents.iter().enumerate() {
        until_listed(ag, client(i), false, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the ban never expired on {}", names[i]));
        assert!(
            passes(i),
            "{} must pass the client once the ban expired",
            names[i]
        );
    }
    for m in &mut members {
        m.launch();
    }
    for m in &members {
        m.wait_up();
    }
    joined(&agents.iter().collect::<Vec<_>>());

    // Partition: E's link to etcd is cut. It keeps enforcing what it has and
    // bans locally; A unbans what E enforces and bans something new.
    let (p1, p2, p3) = (labs[4].v4(0, 2), labs[4].v4(0, 3), labs[1].v4(0, 3));
    a.ok(&["block", "add", &p1.to_string(), "--ttl", "10m"]);
    until_listed(e, p1, true, Duration::from_secs(5)).expect("p1 never reached E");
    let ports: Vec<u16> = members.iter().map(Etcd::port).collect();
    let cut = tollgate_tests::etcd::Cut::new(&ports);
    let cut_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || cluster(e)["connected"] == false),
        "E did not notice the partition: {}",
        cluster(e)
    );
    println!("five: E noticed the partition after {:?}", cut_at.elapsed());
    a.ok(&["block", "rm", &p1.to_string()]);
    a.ok(&["block", "add", &p2.to_string(), "--ttl", "10m"]);
    e.ok(&["block", "add", &p3.to_string(), "--ttl", "10m"]);
    // Ends while E is cut off: never published, never back.
    let p4 = labs[2].v4(0, 4);
    e.ok(&["block", "add", &p4.to_string(), "--ttl", "20s"]);
    until_listed(&agents[1], p2, true, Duration::from_secs(5)).expect("p2 never reached B");
    assert!(!passes(4), "E keeps enforcing p1 while cut off");
    assert!(banned_from(e, p2).is_none() && banned_from(&agents[1], p3).is_none());
    assert_eq!(cluster(e)["outbox"], 2, "{}", cluster(e));
    // Keep it cut for 60 s in all.
    thread::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed()));
    assert!(banned_from(e, p4).is_none(), "p4 ended on E while cut off");
    println!("five: E was cut off for {:?}", cut_at.elapsed());
    drop(cut);
    let healed = Instant::now();
    let want: std::collections::BTreeSet<String> =
        [p2, p3].iter().map(|p| format!("{p}/32")).collect();
    for (i, ag) in agents.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(20), || ban_set(ag) == want),
            "{} did not converge: {:?} (want {want:?}); {}",
            names[i],
            ban_set(ag),
            cluster(ag)
        );
    }
    let converged = healed.elapsed();
    println!("five: every host agrees {converged:?} after the heal (goal: 5 s)");
    assert!(passes(4), "the unban made during the partition reached E");
    for (i, ag) in agents.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || {
                let c = cluster(ag);
                c["connected"] == true && c["outbox"] == 0 && c["drift_entries"] == 0
            }),
            "{} is not in sync with zero drift: {}",
            names[i],
            cluster(ag)
        );
    }

    // A hostile record written into one member is skipped by every host.
    let before: Vec<u64> = agents
        .iter()
        .map(|ag| cluster(ag)["skipped"].as_u64().unwrap())
        .collect();
    let wide = r#"{"cidr":"0.0.0.0/0","kind":"manual","reason":"x","origin":"cli","created_at":1,"expires_at":null,"offences":1,"host":"evil"}"#;
    assert!(members[2].put_raw(
        &format!("/tollgate/{fleet}/bans/0.0.0.0/0"),
        wide.as_bytes()
    ));
    for (i, ag) in agents.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(5), || cluster(ag)["skipped"]
                .as_u64()
                .unwrap()
                > before[i]),
            "{} did not skip the hostile record",
            names[i]
        );
        assert_eq!(ban_set(ag), want, "{} banned something", names[i]);
    }
    assert!(passes(0) && passes(2), "a hostile record bans nothing");
    let report = a.json(&["cluster", "status"]);
    assert_eq!(report["members"].as_array().unwrap().len(), 3, "{report}");
    assert!(
        eventually(Duration::from_secs(12), || {
            a.json(&["cluster", "status"])["hosts"]
                .as_array()
                .is_some_and(|h| h.len() == 5)
        }),
        "not every host reported itself: {}",
        a.json(&["cluster", "status"])
    );
    println!("five: whole test {:?}", started.elapsed());
}

/// The decisions `agent` holds on `ip`: (origin, deciding host or "").
fn decisions(agent: &Agent, ip: IpAddr) -> Vec<(String, String)> {
    let want = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["cidr"] == want.as_str())
        .flat_map(|b| b["decisions"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["origin"].as_str().unwrap_or("").to_owned(),
                d["host"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits until neither agent has anything left to publish.
fn settled(agents: &[&Agent]) {
    for ag in agents {
        assert!(
            eventually(Duration::from_secs(10), || {
                let c = cluster(ag);
                c["connected"] == true && c["outbox"] == 0
            }),
            "outbox never drained: {}",
            cluster(ag)
        );
    }
    // The watch delivers within milliseconds; a loaded machine gets a margin.
    thread::sleep(Duration::from_millis(500));
}

/// A host down while its ban is lifted elsewhere does not share it again
/// after its restart (only its outbox is published); a host removing its
/// feed's origin withdraws its own decisions only (the other host running
/// the same feed keeps the prefix banned fleet-wide); `block rm --local`
/// beside another decision rewrites nothing shared; an operator's unban of
/// an address lifts it on every host.
#[test]
fn a_restart_keeps_unbans_and_a_host_withdraws_only_its_own_decisions() {
    let etcd = Etcd::start();
    let fleet = format!("w{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = Server::start(&[lb.v4(0, 1), lb.v4(1, 1), lb.v6(0, 1)]);
    let url = etcd.url();
    let a = member(&la, &url, &fleet, "host-a", &[]);
    let mut b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    let (c4, s4) = (lb.v4(0, 2), lb.v4(0, 1));
    let (o4, os4) = (lb.v4(1, 2), lb.v4(1, 1));
    let (c6, s6) = (lb.v6(0, 2), lb.v6(0, 1));
    lab_works(|| tcp(c4, s4) && tcp(o4, os4) && tcp(c6, s6));

    // B's own ban reaches A; B is killed; A's operator lifts it; B comes
    // back: the ban stays lifted on both (B does not share it again).
    b.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    until_listed(&a, c4, true, Duration::from_secs(5)).expect("B's ban never reached A");
    settled(&[&a, &b]);
    b.kill(nix::sys::signal::Signal::SIGKILL);
    a.ok(&["block", "rm", &c4.to_string()]);
    b.spawn_within(Duration::from_secs(60));
    joined(&[&b]);
    until_listed(&b, c4, false, Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "B kept its ban lifted by A while it was down: {}",
            b.log_text()
        )
    });
    thread::sleep(Duration::from_secs(2));
    assert!(
        banned_from(&a, c4).is_none() && banned_from(&b, c4).is_none(),
        "the unban made while B was down was undone: A {:?}, B {:?}",
        decisions(&a, c4),
        decisions(&b, c4)
    );
    assert!(tcp(c4, s4), "B passes the client lifted while it was down");
    assert_eq!(cluster(&b)["published"], 0, "{}", cluster(&b));

    // One feed on both hosts: A removing its origin withdraws A's decision;
    // B's keeps the prefix banned on both.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("drop.txt");
    std::fs::write(&list, format!("{o4}\n")).unwrap();
    let list = list.to_str().unwrap();
    a.ok(&["block", "import", list, "--origin", "drop-list"]);
    b.ok(&["block", "import", list, "--origin", "drop-list"]);
    settled(&[&a, &b]);
    let both = vec![
        ("drop-list".to_owned(), String::new()),
        ("drop-list".to_owned(), "host-b".to_owned()),
    ];
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut d = decisions(&a, o4);
            d.sort();
            d == both
        }),
        "A should hold both hosts' feed decisions: {:?}",
        decisions(&a, o4)
    );
    a.ok(&["block", "rm", "--origin", "drop-list"]);
    settled(&[&a, &b]);
    assert_eq!(
        decisions(&a, o4),
        vec![("drop-list".to_owned(), "host-b".to_owned())],
        "A keeps B's decision of the same feed"
    );
    assert_eq!(
        decisions(&b, o4),
        vec![("drop-list".to_owned(), String::new())],
        "B's own feed decision stands, A's is withdrawn"
    );
    assert!(!tcp(o4, os4), "B still drops what its feed lists");

    // A manual ban beside a feed's on B; `--local` lifts B's manual one
    // on B only: A keeps seeing both of B's decisions.
    b.ok(&["block", "add", &c6.to_string()]);
    std::fs::write(dir.path().join("d6.txt"), format!("{c6}\n")).unwrap();
    b.ok(&[
        "block",
        "import",
        dir.path().join("d6.txt").to_str().unwrap(),
        "--origin",
        "drop-list-6",
        "--ttl",
        "10m",
    ]);
    settled(&[&a, &b]);
    assert_eq!(decisions(&a, c6).len(), 2, "{:?}", decisions(&a, c6));
    b.ok(&["block", "rm", "--local", &c6.to_string()]);
    settled(&[&a, &b]);
    assert_eq!(
        decisions(&b, c6),
        vec![("drop-list-6".to_owned(), String::new())]
    );
    assert_eq!(
        decisions(&a, c6).len(),
        2,
        "--local rewrote the shared record: {:?}",
        decisions(&a, c6)
    );
    // The operator's unban on A lifts the address on every host.
    a.ok(&["block", "rm", &c6.to_string()]);
    until_listed(&b, c6, false, Duration::from_secs(5))
        .expect("the operator's unban on A never reached B");
    assert!(tcp(c6, s6));

    // An allow entry made on A is the fleet's: it covers a ban on B.
    a.ok(&["allow", "add", &c6.to_string(), "--reason", "office"]);
    let fleet_allowed = |ag: &Agent| {
        ag.json(&["allow", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["cidr"] == format!("{c6}/128").as_str() && e["origin"] == "fleet:host-a")
    };
    assert!(
        eventually(Duration::from_secs(5), || fleet_allowed(&b)),
        "A's allow entry never reached B: {}",
        b.json(&["allow", "ls"])
    );
    let refused = b.cli(&["block", "add", &c6.to_string()]);
    assert!(
        !refused.status.success(),
        "B must refuse to ban what the fleet allows"
    );
    b.ok(&["block", "add", "--force", &c6.to_string()]);
    assert!(tcp(c6, s6), "the fleet's allow entry wins over B's ban");
    // Hostile allow entries written straight into etcd are skipped.
    let before = cluster(&b)["skipped"].as_u64().unwrap();
    let prefix = format!("/tollgate/{fleet}/allow/");
    let wide = r#"{"cidr":"0.0.0.0/0","reason":"x","origin":"cli","created_at":1,"host":"evil"}"#;
    assert!(etcd.put_raw(&format!("{prefix}0.0.0.0/0"), wide.as_bytes()));
    assert!(etcd.put_raw(&format!("{prefix}{o4}/32"), b"{not json"));
    assert!(
        eventually(Duration::from_secs(5), || cluster(&b)["skipped"]
            .as_u64()
            .unwrap()
            >= before + 2),
        "hostile allow entries were not skipped: {}",
        cluster(&b)
    );
    assert!(!tcp(o4, os4), "a hostile allow entry allows nothing");
    // Removed on A: B's ban drops again.
    a.ok(&["allow", "rm", &c6.to_string()]);
    assert!(
        eventually(Duration::from_secs(5), || !fleet_allowed(&b)),
        "A's allow removal never reached B"
    );
    assert!(
        !tcp(c6, s6),
        "B's ban drops once the fleet's allow entry is gone"
    );
}

/// etcd's leader killed with SIGKILL in the middle of a burst of bans on
/// A: every ban the CLI acknowledged ends up on B (and stays on A), with
/// nothing left in A's outbox.
#[test]
fn acknowledged_bans_survive_kill_9_of_the_etcd_leader() {
    let mut members = Etcd::cluster(3);
    let fleet = format!("l{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let urls = members.iter().map(Etcd::url).collect::<Vec<_>>().join(",");
    let a = member(&la, &urls, &fleet, "host-a", &[]);
    let b = member(&lb, &urls, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let report = a.json(&["cluster", "status"]);
    let leader = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["leader"] == true)
        .and_then(|m| m["name"].as_str())
        .unwrap_or_else(|| panic!("no leader in {report}"))
        .to_owned();
    let idx: usize = leader.trim_start_matches('m').parse().unwrap();
    let t0 = Instant::now();
    let mut acked = Vec::new();
    for k in 0..60u8 {
        if k == 20 {
            members[idx].stop();
            println!("leader: killed {leader} after {} bans", acked.len());
        }
        let ip = lb.v4(1, 10 + k);
        a.ok(&["block", "add", &ip.to_string(), "--ttl", "10m"]);
        acked.push(ip);
        thread::sleep(Duration::from_millis(20));
    }
    let want: std::collections::BTreeSet<String> =
        acked.iter().map(|ip| format!("{ip}/32")).collect();
    assert!(
        eventually(Duration::from_secs(30), || ban_set(&b) == want),
        "B lacks acknowledged bans: {:?}; A: {}; {}",
        want.difference(&ban_set(&b)).collect::<Vec<_>>(),
        cluster(&a),
        a.log_text()
    );
    println!(
        "leader: all {} acknowledged bans on B {:?} after the burst began",
        acked.len(),
        t0.elapsed()
    );
    assert_eq!(ban_set(&a), want);
    assert!(
        eventually(Duration::from_secs(10), || cluster(&a)["outbox"] == 0),
        "{}",
        cluster(&a)
    );
    // The killed member comes back and catches up: a read through it
    // holds every ban too.
    members[idx].launch();
    members[idx].wait_up();
    assert!(eventually(Duration::from_secs(10), || {
        a.json(&["cluster", "status"])["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["reachable"] == true))
    }));
}

/// Only an operator's unban lifts a host's own ban. The fleet's prefix
/// wiped behind the agents' backs (`etcdctl del --prefix`, as an etcd
/// wipe or a restore from an old snapshot leaves it): the owner keeps
/// enforcing and publishes its ban again, the other host takes it back;
/// the same while the owner is down (its full read after the restart
/// publishes it again). A tombstone from the future written straight into
/// etcd is skipped. `block rm` on the other host still lifts it on the
/// owner.
#[test]
fn a_wiped_fleet_lifts_no_ban_and_an_unban_still_does() {
    let etcd = Etcd::start();
    let fleet = format!("x{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = Server::start(&[lb.v4(0, 1), lb.v4(1, 1)]);
    let url = etcd.url();
    let a = member(&la, &url, &fleet, "host-a", &[]);
    let mut b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    let (c4, s4, o4, os4) = (lb.v4(0, 2), lb.v4(0, 1), lb.v4(1, 2), lb.v4(1, 1));
    lab_works(|| tcp(c4, s4) && tcp(o4, os4));
    let root = format!("/tollgate/{fleet}/");
    let key = format!("{root}bans/{c4}/32");

    // B's own ban reaches A; then the whole fleet prefix is wiped.
    b.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    until_listed(&a, c4, true, Duration::from_secs(5)).expect("B's ban never reached A");
    settled(&[&a, &b]);
    assert!(etcd.delete_prefix(&root), "etcd refused the wipe");
    assert!(
        eventually(Duration::from_secs(5), || etcd.has_key(&key)),
        "B never published its ban again: {}",
        b.log_text()
    );
    until_listed(&a, c4, true, Duration::from_secs(5))
        .expect("A never took B's ban back after the wipe");
    assert_eq!(banned_from(&b, c4).as_deref(), Some(""));
    assert!(!tcp(c4, s4), "B keeps dropping its banned client");
    assert!(cluster(&b)["republished"].as_u64().unwrap() >= 1);

    // Wiped while B is down: B's full read after its restart publishes it
    // again instead of lifting it.
    settled(&[&a, &b]);
    b.kill(nix::sys::signal::Signal::SIGKILL);
    assert!(etcd.delete_prefix(&root), "etcd refused the wipe");
    b.spawn_within(Duration::from_secs(60));
    joined(&[&b]);
    assert!(
        eventually(Duration::from_secs(10), || etcd.has_key(&key)),
        "B did not publish its ban again after its restart: {}",
        b.log_text()
    );
    assert_eq!(
        banned_from(&b, c4).as_deref(),
        Some(""),
        "B lifted its own ban"
    );
    assert!(!tcp(c4, s4), "B drops its banned client after the restart");
    until_listed(&a, c4, true, Duration::from_secs(10)).expect("A never took it back");

    // A hostile tombstone (an unban dated in the future) is skipped.
    let before = cluster(&b)["skipped"].as_u64().unwrap();
    let evil = format!(r#"{{"cidr":"{c4}/32","lifted_at":99999999999,"host":"evil"}}"#);
    assert!(etcd.put_raw(&format!("{root}bans/lifted/{c4}/32"), evil.as_bytes()));
    assert!(
        eventually(Duration::from_secs(5), || cluster(&b)["skipped"]
            .as_u64()
            .unwrap()
            > before),
        "the hostile tombstone was not skipped: {}",
        cluster(&b)
    );
    assert!(banned_from(&b, c4).is_some() && !tcp(c4, s4));

    // An operator's unban on A lifts B's own ban on B.
    a.ok(&["block", "rm", &c4.to_string()]);
    until_listed(&b, c4, false, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the unban on A never reached B: {}", b.log_text()));
    assert!(tcp(c4, s4), "B passes the client unbanned on A");
    assert!(tcp(o4, os4));

    // `block rm` then `block add` on B: the echo of B's unban (after its
    // outbox ack) does not lift B's new ban, which every host enforces.
    b.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    until_listed(&a, c4, true, Duration::from_secs(5)).expect("B's ban never reached A");
    b.ok(&["block", "rm", &c4.to_string()]);
    b.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
    settled(&[&a, &b]);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        banned_from(&b, c4).as_deref(),
        Some(""),
        "B lifted its own ban made after its unban: {}",
        b.log_text()
    );
    assert!(!tcp(c4, s4), "B drops the client it banned again");
    assert!(banned_from(&a, c4).is_some());

    // A stale or replayed tombstone (dated 0) lifts nobody's later ban.
    let stale = format!(r#"{{"cidr":"{c4}/32","lifted_at":0,"host":"evil"}}"#);
    assert!(etcd.put_raw(&format!("{root}bans/lifted/{c4}/32"), stale.as_bytes()));
    thread::sleep(Duration::from_secs(2));
    assert_eq!(banned_from(&b, c4).as_deref(), Some(""), "{}", b.log_text());
    assert!(!tcp(c4, s4), "the stale tombstone lifted B's ban");
}

/// An operator's unban decided on A a few milliseconds before a ban on B,
/// in the same second, that reaches B after it (the order in which etcd
/// delivers them): the unban lifts what was made at or before it, never
/// B's later ban, which every host enforces. The unban is written straight
/// into etcd as A's agent writes one (its tombstone with milliseconds and
/// the record's deletion, in one transaction), so that its time can be set
/// to just before B's ban; one of the ban's own millisecond lifts it.
#[test]
fn a_ban_made_the_same_second_after_an_unban_elsewhere_is_enforced_everywhere() {
    let etcd = Etcd::start();
    let fleet = format!("ms{}", std::process::id());
    let (la, lb) = (Lab::new(), Lab::new());
    let server = Server::start(&[lb.v4(0, 1), lb.v4(1, 1)]);
    let url = etcd.url();
    let a = member(&la, &url, &fleet, "host-a", &[]);
    let b = member(&lb, &url, &fleet, "host-b", &[]);
    joined(&[&a, &b]);
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    let (c4, s4) = (lb.v4(0, 2), lb.v4(0, 1));
    lab_works(|| tcp(c4, s4));
    let root = format!("/tollgate/{fleet}/bans/");
    let key = format!("{root}{c4}/32");
    let tomb_key = format!("{root}lifted/{c4}/32");
    // B's ban, in etcd and on A; when it was made (B's record says).
    let ban = || {
        b.ok(&["block", "add", &c4.to_string(), "--ttl", "10m"]);
        until_listed(&a, c4, true, Duration::from_secs(5)).expect("B's ban never reached A");
        let rec: serde_json::Value =
            serde_json::from_slice(&etcd.get(&key).expect("B's record is not in etcd")).unwrap();
        (
            rec["created_at"].as_u64().unwrap(),
            rec["created_at_ms"]
                .as_u64()
                .expect("B's record has no milliseconds"),
        )
    };
    let unban = |secs: u64, ms: u64| {
        let t = format!(
            r#"{{"cidr":"{c4}/32","lifted_at":{secs},"lifted_at_ms":{ms},"host":"host-a"}}"#
        );
        assert!(
            etcd.txn(
                &[(tomb_key.clone(), t.into_bytes())],
                std::slice::from_ref(&key)
            ),
            "etcd refused the unban"
        );
    };
    // A ban made on a second's first millisecond has no earlier one in its
    // second: made again.
    let (secs, made) = loop {
        let (s, m) = ban();
        if m % 1000 != 0 {
            break (s, m);
        }
        b.ok(&["block", "rm", &c4.to_string()]);
        until_listed(&a, c4, false, Duration::from_secs(5)).expect("the unban never reached A");
    };
    unban(secs, made - 1);
    // B keeps its ban and publishes it again (the unban deleted its key);
    // A takes it back.
    assert!(
        eventually(Duration::from_secs(5), || etcd.has_key(&key)),
        "B did not keep and publish again its ban made after the unban: {}",
        b.log_text()
    );
    settled(&[&a, &b]);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        banned_from(&b, c4).as_deref(),
        Some(""),
        "B lifted its own ban made after the unban: {}",
        b.log_text()
    );
    assert!(!tcp(c4, s4), "B drops the client it banned after the unban");
    until_listed(&a, c4, true, Duration::from_secs(5)).expect("A never took B's ban back");

    // An unban of the ban's own millisecond (made at or before it) lifts it
    // everywhere. (A fresh ban first: etcd then holds its time.)
    b.ok(&["block", "rm", &c4.to_string()]);
    until_listed(&a, c4, false, Duration::from_secs(5)).expect("the unban never reached A");
    let (secs, made) = ban();
    unban(secs, made);
    until_listed(&b, c4, false, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the unban never lifted B's ban: {}", b.log_text()));
    until_listed(&a, c4, false, Duration::from_secs(5)).expect("A kept the lifted ban");
    assert!(tcp(c4, s4), "B passes the client again");
}

use tollgate_tests::kernel_hosts_v4 as kernel_hosts;

/// A host joining a fleet that holds more records than one page of the
/// full read (the read is applied page by page, some of it while the
/// kernel still verifies the programs) ends up enforcing every one, the
/// fleet's unbans (tombstones read before the records) lift nothing it
/// should hold, and hostile records among the pages are skipped.
#[test]
fn a_host_joining_a_large_fleet_enforces_it_all() {
    const N: u32 = 45_000;
    let etcd = Etcd::start();
    let fleet = format!("j{}", std::process::id());
    let lb = Lab::new();
    let server = Server::start(&[lb.v4(0, 1), lb.v4(1, 1)]);
    let prefix = format!("/tollgate/{fleet}/bans/");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let record = |cidr: &str| {
        serde_json::json!({
            "cidr": cidr, "kind": "policy", "reason": "sqli", "origin": "agent",
            "created_at": now, "expires_at": now + 3600, "offences": 1, "host": "host-a",
        })
        .to_string()
        .into_bytes()
    };
    // Bulk records in 198.19.0.0/16 (no lab uses it), then the lab's client.
    let (c4, s4, o4, os4) = (lb.v4(0, 2), lb.v4(0, 1), lb.v4(1, 2), lb.v4(1, 1));
    let mut kvs: Vec<(String, Vec<u8>)> = (0..N - 1)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0xc613_0000 + i);
            (format!("{prefix}{ip}/32"), record(&format!("{ip}/32")))
        })
        .collect();
    kvs.push((format!("{prefix}{c4}/32"), record(&format!("{c4}/32"))));
    assert!(etcd.put_many(&kvs), "etcd refused the fleet's records");
    // Hostile records between the good ones (in the second page), and an
    // operator's unban of the other client (it holds no ban: nothing to lift).
    let wide = r#"{"cidr":"0.0.0.0/0","kind":"manual","reason":"x","origin":"cli","created_at":1,"expires_at":null,"offences":1,"host":"evil"}"#;
    assert!(etcd.put_raw(&format!("{prefix}0.0.0.0/0"), wide.as_bytes()));
    assert!(etcd.put_raw(&format!("{prefix}198.19.100.1/31"), b"{not json"));
    let tomb = serde_json::json!({"cidr": format!("{o4}/32"), "lifted_at": now, "host": "host-a"});
    assert!(etcd.put_raw(
        &format!("{prefix}lifted/{o4}/32"),
        tomb.to_string().as_bytes()
    ));

    let t0 = Instant::now();
    let b = member(&lb, &etcd.url(), &fleet, "host-b", &[]);
    assert!(
        eventually(Duration::from_secs(30), || kernel_hosts(&b) >= u64::from(N)),
        "the joining host never enforced the whole fleet ({} of {N}): {}",
        kernel_hosts(&b),
        b.log_text()
    );
    println!(
        "fleet: a host joining a fleet of {N} bans enforced them all {:?} after its start",
        t0.elapsed()
    );
    joined(&[&b]);
    let c = cluster(&b);
    assert_eq!(kernel_hosts(&b), u64::from(N), "{c}");
    assert!(
        c["skipped"].as_u64().unwrap() >= 2,
        "hostile records not skipped: {c}"
    );
    let tcp = |src: IpAddr, dst: IpAddr| lb.tcp_ok(src, dst, server.port, EXCHANGE_TIMEOUT);
    assert!(
        tcp(o4, os4),
        "a hostile record bans nothing; other clients pass"
    );
    assert!(!tcp(c4, s4), "the fleet's ban on the client is enforced");
    assert_eq!(banned_from(&b, c4).as_deref(), Some("host-a"));
    // Applied in pages: the log says so.
    assert!(
        b.log_text().contains("fleet set reconciled"),
        "{}",
        b.log_text()
    );
}
