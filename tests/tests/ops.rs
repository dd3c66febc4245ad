//! Running it in production: block-list feeds (import, export, removal by
//! origin, policy feeds), metrics and health endpoints, log format, reload.

use std::{fmt::Write as _, io::Write as _, time::Duration};

use tollgate_tests::{Agent, Lab, Server, Setup, free_port, http_get, http_get_with, setup};

/// A feed of `hosts` addresses from 198.19.0.0/16 plus the lab's subnet 1
/// (v4 and v6), with comments, blank lines, duplicates and 3 malformed lines.
/// Returns the text, the number of distinct valid entries and the malformed
/// line numbers.
fn feed_text(lab: &Lab, hosts: u32) -> (String, usize, Vec<usize>) {
    let mut t = String::from("# FireHOL-style test feed\n; Spamhaus-style comment\n\n");
    let mut line = 3;
    let mut bad = Vec::new();
    for i in 0..hosts {
        line += 1;
        let _ = writeln!(t, "198.19.{}.{}", i / 250, i % 250 + 1);
        if i == 10 {
            line += 1;
            t.push_str("not-an-address\n");
            bad.push(line);
        }
        if i == 20 {
            line += 1;
            t.push_str("198.19.0.5/24 ; host bits set\n");
            bad.push(line);
        }
        if i == 30 {
            line += 1;
            t.push_str("0.0.0.0/0\n");
            bad.push(line);
        }
        if i == 40 {
            line += 1;
            t.push_str("198.19.0.1 ; duplicate\n");
        }
    }
    let _ = writeln!(t, "{} ; SBL123", lab.v4_net(1));
    let _ = writeln!(t, "{}", lab.v6_net(1));
    (t, hosts as usize + 2, bad)
}

fn export_lines(agent: &Agent, origin: &str) -> Vec<String> {
    agent
        .ok(&["block", "export", "--origin", origin])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn feed_import_applies_reports_and_is_idempotent() {
    let s = setup(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("level1.txt");
    let (text, valid, bad) = feed_text(&s.lab, 6000);
    // Streamed: far more than the 64 KiB a single control request may hold.
    assert!(text.len() > 64 * 1024);
    std::fs::write(&path, &text).unwrap();
    let file = path.to_str().unwrap();
    assert!(s.v4_ok(1) && s.v6_ok(1), "lab must work before the import");

    let out = s
        .agent
        .cli(&["block", "import", file, "--reason", "level1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{stderr}");
    for l in &bad {
        assert!(
            stderr.contains(&format!("line {l}:")),
            "line {l} not reported: {stderr}"
        );
    }
    assert!(stderr.contains("3 lines rejected"), "{stderr}");
    assert!(stdout.contains(&format!("{valid} added")), "{stdout}");

    let origin = "import:level1.txt";
    let bans = s.agent.json(&["block", "ls"]);
    let bans = bans.as_array().unwrap();
    assert_eq!(bans.len(), valid);
    assert!(
        bans.iter()
            .all(|b| b["kind"] == "feed" && b["origin"] == origin && b["reason"] == "level1")
    );
    let exported = export_lines(&s.agent, origin);
    assert_eq!(exported.len(), valid);
    let header = s.agent.ok(&["block", "export"]);
    assert!(
        header.starts_with("# tollgate block export at "),
        "{header}"
    );
    assert!(
        header
            .lines()
            .next()
            .unwrap()
            .contains(&format!("{valid} entries"))
    );

    // The imported ranges drop the lab's subnet 1, and nothing else.
    assert!(!s.v4_ok(1), "client inside an imported IPv4 range connects");
    assert!(!s.v6_ok(1), "client inside an imported IPv6 range connects");
    assert!(s.v4_ok(0) && s.v6_ok(0), "client outside the feed dropped");

    // Re-importing changes nothing.
    let again = s
        .agent
        .json(&["block", "import", file, "--reason", "level1"]);
    assert_eq!(again["added"], 0, "{again}");
    assert_eq!(again["removed"], 0, "{again}");
    assert_eq!(again["unchanged"], valid, "{again}");
    assert_eq!(again["rejected_count"], 3, "{again}");
    assert_eq!(
        s.agent.json(&["block", "ls"]).as_array().unwrap().len(),
        valid
    );

    // A manual ban on a listed address is left alone; lines dropped from
    // the file are lifted on the next import.
    s.agent
        .ok(&["block", "add", "198.19.0.7", "--reason", "manual"]);
    let shorter: String =
        text.lines()
            .filter(|l| !l.starts_with("198.19.1."))
            .fold(String::new(), |mut a, l| {
                a.push_str(l);
                a.push('\n');
                a
            });
    std::fs::write(&path, shorter).unwrap();
    let r = s
        .agent
        .json(&["block", "import", file, "--reason", "level1"]);
    assert_eq!(r["removed"], 250, "{r}");
    assert_eq!(r["kept_other_origin"], 1, "{r}");
    // The manually banned address keeps the feed's decision too.
    assert_eq!(export_lines(&s.agent, origin).len(), valid - 250);

    // Several decisions on one prefix: an hour's manual ban on the feed's
    // range of the lab is kept beside the feed's (which the kernel goes on
    // enforcing: it has no expiry); lifting the manual one leaves the
    // feed's, and the lab's subnet stays dropped.
    let range = s.lab.v4_net(1);
    let client = s.lab.v4(1, 2).to_string();
    let v = s
        .agent
        .json(&["block", "add", &range, "--ttl", "1h", "--reason", "by hand"]);
    let v = &v["results"][0]["ban"];
    assert_eq!(v["origin"], origin, "the stronger decision leads: {v}");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2, "{v}");
    let t = s.agent.json(&["block", "test", &client]);
    let covering = &t["bans"][0];
    assert_eq!(covering["kernel"], "present", "{t}");
    let by: Vec<&str> = covering["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["origin"].as_str().unwrap())
        .collect();
    assert_eq!(by, [origin, "cli"], "{t}");
    let table = s.agent.ok(&["block", "test", &client]);
    assert!(table.contains("also  kind manual  origin cli"), "{table}");
    let r = s.agent.json(&["block", "rm", &range]);
    assert_eq!(
        r["results"][0]["still_banned_by"],
        serde_json::json!([origin]),
        "{r}"
    );
    let t = s.agent.json(&["block", "test", &client]);
    assert_eq!(t["blocked"], true, "{t}");
    assert_eq!(
        t["bans"][0]["decisions"].as_array().unwrap().len(),
        1,
        "{t}"
    );
    assert!(!s.v4_ok(1), "lifting the manual ban freed the feed's range");

    // The allowlist wins: overlapping entries are rejected and reported.
    s.agent.ok(&["allow", "add", &s.lab.v4(0, 2).to_string()]);
    std::fs::write(
        dir.path().join("overlap.txt"),
        format!("{}\n198.19.200.1\n", s.lab.v4_net(0)),
    )
    .unwrap();
    let out = s.agent.cli(&[
        "block",
        "import",
        dir.path().join("overlap.txt").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 1:") && stderr.contains("overlaps allowlist"),
        "{stderr}"
    );
    assert!(s.v4_ok(0));

    // Nothing usable: exit 1, nothing changes.
    std::fs::write(dir.path().join("junk.txt"), "# only junk\nfoo\n").unwrap();
    let out = s.agent.cli(&[
        "block",
        "import",
        dir.path().join("junk.txt").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // rm --origin lifts the whole group's decisions and nothing else (the
    // manual ban on 198.19.0.7 stays, without the feed's decision).
    let out = s.agent.ok(&["block", "rm", "--origin", origin]);
    assert!(out.contains(&format!("removed {}", valid - 250)), "{out}");
    let left = s.agent.json(&["block", "ls"]);
    let left: Vec<_> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["origin"].as_str().unwrap().to_owned())
        .collect();
    assert!(left.iter().all(|o| o != origin), "{left:?}");
    assert!(left.contains(&"cli".to_owned()));
    assert!(
        s.v4_ok(1) && s.v6_ok(1),
        "clients still dropped after rm --origin"
    );
    // Bad usage: neither CIDR nor origin.
    assert_eq!(s.agent.cli(&["block", "rm"]).status.code(), Some(2));
}

/// `tollgate block import -` with `text` on stdin; panics unless it succeeds.
fn import_stdin(agent: &Agent, text: &str, args: &[&str]) {
    let mut child = std::process::Command::new(tollgate_tests::tollgate_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["block", "import", "-"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn feed_import_from_stdin_with_ttl_and_origin() {
    let s = setup(&[]);
    import_stdin(
        &s.agent,
        &format!("{} ; SBL1\nfd00:bad::/48\n", s.lab.v4_net(1)),
        &["--origin", "drop", "--ttl", "1h"],
    );
    let bans = s.agent.json(&["block", "ls"]);
    assert_eq!(bans.as_array().unwrap().len(), 2);
    assert!(bans[0]["ttl_remaining_secs"].as_u64().unwrap() > 3500);
    assert_eq!(bans[0]["origin"], "drop");
    assert!(!s.v4_ok(1));
    let j = s.agent.json(&["block", "export"]);
    assert_eq!(j["bans"].as_array().unwrap().len(), 2);
}

/// The value of the sample line starting with `name_and_labels `.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

#[test]
fn metrics_health_and_json_logs() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = setup(&["--metrics-addr", &addr, "--log-format", "json"]);
    assert_eq!(http_get(port, "/healthz").0, 200);
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_get(port, "/nope").0, 404);

    let client = s.lab.v4(0, 2);
    s.agent.ok(&["block", "add", &client.to_string()]);
    assert!(!s.v4_ok(0));
    assert_eq!(s.lab.ping(client, s.lab.v4(0, 1), 3), 0);

    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{text}");
    let dropped = sample(
        &text,
        "tollgate_packets_total{verdict=\"drop\",reason=\"blocklisted\"}",
    )
    .unwrap_or(0.0);
    assert!(dropped >= 3.0, "drop counter {dropped}:\n{text}");
    assert!(
        sample(
            &text,
            "tollgate_bytes_total{verdict=\"drop\",reason=\"blocklisted\"}"
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        sample(&text, "tollgate_bans_active{kind=\"manual\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "tollgate_bans_issued_total{kind=\"manual\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "tollgate_map_entries{map=\"TG_BLOCK4\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "tollgate_map_capacity{map=\"TG_BLOCK4\"}").unwrap_or(0.0) > 1.0);
    assert_eq!(sample(&text, "tollgate_store_up"), Some(1.0));
    assert!(text.contains("tollgate_build_info{version=\""), "{text}");
    assert!(
        text.contains("# TYPE tollgate_packets_total counter"),
        "{text}"
    );
    // Prometheus asks for OpenMetrics and gets it.
    let (code, om) = http_get_with(
        port,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(code, 200);
    assert!(
        om.contains("# TYPE tollgate_packets counter") && om.trim_end().ends_with("# EOF"),
        "{om}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!(
            "promtool not run ({e}): install Debian's `prometheus` package to lint the output"
        ),
    }

    // Every log line of the agent is one JSON object.
    let log = s.agent.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

#[test]
fn metrics_refuse_non_loopback_addresses() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["agent", "--iface", &lab.host_if, "--metrics-addr"])
        .arg(format!("{}:9", lab.v4(0, 1)))
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--pin-dir")
        .arg(format!(
            "/sys/fs/bpf/tollgate-test-{}-nl",
            std::process::id()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn policy_feeds_refresh_and_reload() {
    let lab = Lab::new();
    let server = Server::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1), lab.v6(1, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    let config = dir.path().join("policy.yaml");
    std::fs::write(&feed, format!("# test feed\n{}\n", lab.v4_net(1))).unwrap();
    let host_if = lab.host_if.clone();
    let policy = |extra: &str| format!("interfaces: [{host_if}]\n{extra}");
    let with_feed = format!(
        "feeds:\n  - {{name: testfeed, path: {}, refresh: 1s}}\n",
        feed.display()
    );
    std::fs::write(&config, policy(&with_feed)).unwrap();
    let agent = Agent::start(&lab.host_if, &["--config", config.to_str().unwrap()]);
    let s = Setup { lab, server, agent };

    let feed_bans = |s: &Setup| -> Vec<String> {
        s.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["origin"] == "testfeed" && b["kind"] == "feed")
            .map(|b| b["cidr"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        tollgate_tests::eventually(Duration::from_secs(5), || feed_bans(&s)
            == vec![s.lab.v4_net(1)]),
        "feed not applied: {:?}\n{}",
        feed_bans(&s),
        s.agent.log_text()
    );
    assert!(!s.v4_ok(1));

    // The file changes: the new entry is banned, the one gone is lifted.
    std::fs::write(&feed, format!("# test feed, v2\n{}\n", s.lab.v6_net(1))).unwrap();
    assert!(
        tollgate_tests::eventually(Duration::from_secs(5), || feed_bans(&s)
            == vec![s.lab.v6_net(1)]),
        "feed not refreshed: {:?}",
        feed_bans(&s)
    );
    assert!(s.v4_ok(1) && !s.v6_ok(1));

    // An invalid file is refused with the reason; nothing changes.
    s.agent.ok(&["block", "add", &s.lab.v4(0, 9).to_string()]);
    std::fs::write(&config, policy("mode: monitor\nmodee: x\n")).unwrap();
    let out = s.agent.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("modee") && err.contains("running policy stays"),
        "{err}"
    );
    assert_eq!(s.agent.json(&["status"])["mode"], "enforce");

    // A valid one applies mode, allowlist and feed changes; bans stay,
    // nothing detaches.
    let allowed = s.lab.v4(0, 2).to_string();
    std::fs::write(
        &config,
        policy(&format!("mode: monitor\nallowlist: [{allowed}]\n")),
    )
    .unwrap();
    let out = s.agent.ok(&["policy", "reload"]);
    assert!(
        out.contains("mode monitor") && out.contains("feed testfeed removed"),
        "{out}"
    );
    let st = s.agent.json(&["status"]);
    assert_eq!(st["mode"], "monitor");
    assert_eq!(st["interfaces"].as_array().unwrap().len(), 1);
    assert!(feed_bans(&s).is_empty());
    assert_eq!(s.agent.json(&["allow", "ls"])[0]["address"], allowed);
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 1);

    // SIGHUP does the same: back to enforce, allow entry from the file gone.
    std::fs::write(&config, policy("mode: enforce\n")).unwrap();
    nix::sys::signal::kill(s.agent.pid().unwrap(), nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(tollgate_tests::eventually(Duration::from_secs(5), || {
        s.agent.json(&["status"])["mode"] == "enforce"
    }));
    assert!(tollgate_tests::eventually(Duration::from_secs(5), || {
        s.agent
            .json(&["allow", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    }));
    assert!(s.v4_ok(1) && s.v6_ok(1));
}

/// Import rate for a 1,000,000-line feed (run by hand, release build
/// recommended: `TOLLGATE_BIN=target/release/tollgate cargo test -p
/// tollgate-tests --test ops -- --ignored --nocapture a_million`). The
/// addresses are map data only (100.64.0.0/10), never traffic.
#[test]
#[ignore = "benchmark: run by hand"]
fn a_million_line_feed_imports() {
    let s = setup(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.txt");
    let mut t = String::with_capacity(40_000_000);
    t.push_str("# 1,000,000 hosts\n");
    for i in 0..1_000_000u32 {
        let a = std::net::Ipv4Addr::from(0x6440_0000 + i);
        let _ = writeln!(t, "{a} ; entry {i}");
    }
    std::fs::write(&path, t).unwrap();
    let file = path.to_str().unwrap();
    let timed = |args: &[&str]| {
        let start = std::time::Instant::now();
        let out = s.agent.ok(args);
        (start.elapsed(), out)
    };
    let (d, out) = timed(&["block", "import", file]);
    eprintln!(
        "import 1M: {d:?} ({:.0} entries/s): {out}",
        1e6 / d.as_secs_f64()
    );
    assert!(out.contains("1000000 added"), "{out}");
    let (d, out) = timed(&["block", "import", file]);
    eprintln!("re-import 1M (no changes): {d:?}: {out}");
    assert!(out.contains("1000000 unchanged"), "{out}");
    let (d, out) = timed(&["block", "export"]);
    eprintln!("export 1M: {d:?}");
    assert_eq!(out.lines().count(), 1_000_001);
    let st = s.agent.json(&["status"]);
    eprintln!("status maps: {}", st["maps"]);
    assert!(s.v4_ok(0), "an unrelated client is dropped");
    let (d, out) = timed(&["block", "rm", "--origin", "import:big.txt"]);
    eprintln!("rm --origin 1M: {d:?}: {out}");
}

/// A simulated reboot: the agent is killed, its pins (maps, program links)
/// are removed so the kernel forgets everything, as after a reboot, and a
/// fresh agent on the same state directory enforces the same bans, allow
/// entries and TTLs (counting down, not reset) from the store alone.
#[test]
fn state_survives_a_simulated_reboot() {
    let mut s = setup(&[]);
    let manual = s.lab.v4(0, 2).to_string();
    s.agent
        .ok(&["block", "add", &manual, "--ttl", "1h", "--reason", "reboot"]);
    s.agent.ok(&["block", "add", &s.lab.v4_net(1)]);
    s.agent.ok(&["allow", "add", &s.lab.v4(1, 2).to_string()]);
    import_stdin(
        &s.agent,
        &format!("{}\n", s.lab.v6_net(1)),
        &["--origin", "drop", "--ttl", "2h"],
    );
    // Retried briefly: one TCP exchange can time out on a busy host.
    let enforced = |s: &Setup| {
        tollgate_tests::eventually(Duration::from_secs(3), || {
            !s.v4_ok(0) && !s.v6_ok(1) && s.v4_ok(1) && s.v6_ok(0)
        })
    };
    assert!(enforced(&s), "lab not as set up before the reboot");
    let ttls = |s: &Setup| -> Vec<(String, String, String, Option<u64>)> {
        let mut v: Vec<_> = s
            .agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["cidr"].as_str().unwrap().to_owned(),
                    b["kind"].as_str().unwrap().to_owned(),
                    b["origin"].as_str().unwrap().to_owned(),
                    b["ttl_remaining_secs"].as_u64(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = ttls(&s);
    assert_eq!(before.len(), 3, "{before:?}");

    // "Reboot": no agent, no pins, so no programs and no maps.
    s.agent.kill(nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_dir_all(&s.agent.pins).unwrap();
    // The kernel releases the links asynchronously once the last pin and
    // file are gone.
    let attached =
        || tollgate_tests::sh(&["ip", "link", "show", "dev", &s.lab.host_if]).contains("xdp");
    assert!(
        tollgate_tests::eventually(Duration::from_secs(5), || !attached()),
        "program still attached after its pins were removed"
    );
    assert!(
        tollgate_tests::eventually(Duration::from_secs(3), || s.v4_ok(0) && s.v6_ok(1)),
        "still dropping after the pins are gone: this was no reboot"
    );
    std::thread::sleep(Duration::from_secs(2));

    s.agent.spawn();
    assert!(enforced(&s), "state not enforced after the reboot");
    let after = ttls(&s);
    assert_eq!(after.len(), before.len(), "{after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.1, &b.2), (&a.0, &a.1, &a.2));
        match (b.3, a.3) {
            (None, None) => {}
            (Some(tb), Some(ta)) => assert!(
                ta < tb && ta + 10 > tb,
                "{}: ttl {tb} before, {ta} after: must count down, not reset",
                a.0
            ),
            other => panic!("{}: ttl {other:?}", a.0),
        }
    }
    assert_eq!(s.agent.json(&["allow", "ls"]).as_array().unwrap().len(), 1);
    let log = s.agent.log_text();
    assert!(log.contains("restored_to_kernel=4"), "{log}");
}

/// Start-up fills the maps while the kernel verifies the programs: the
/// agent must still answer `status` only once every stored ban is in the
/// kernel and the program enforcing them is attached, after a reboot
/// (nothing pinned) and after a crash (pins kept) alike. Checked at the
/// first answer, without retrying: a start that attached or answered
/// before its restore finished shows fewer bans or a client let through.
#[test]
fn a_restart_enforces_every_stored_ban_before_it_answers() {
    const HOSTS: u32 = 60_000;
    let mut s = setup(&[]);
    // Both families, the lab's clients among many others.
    let mut t = String::with_capacity(HOSTS as usize * 16);
    for i in 0..HOSTS {
        let _ = writeln!(t, "198.19.{}.{}", i >> 8, i & 0xff);
    }
    let _ = writeln!(t, "{}", s.lab.v4(0, 2));
    let _ = writeln!(t, "{}", s.lab.v6(0, 2));
    import_stdin(&s.agent, &t, &["--origin", "order"]);
    // A ban lifted and one expired before the restart stay out.
    s.agent.ok(&["block", "rm", "198.19.0.7"]);
    s.agent
        .ok(&["block", "add", &s.lab.v4(1, 2).to_string(), "--ttl", "1s"]);
    let want = u64::from(HOSTS) + 2 - 1;
    assert!(
        tollgate_tests::eventually(Duration::from_secs(5), || tollgate_tests::kernel_bans(
            &s.agent
        ) == want),
        "the 1 s ban did not expire"
    );
    for reboot in [true, false] {
        s.agent.kill(nix::sys::signal::Signal::SIGKILL);
        if reboot {
            std::fs::remove_dir_all(&s.agent.pins).unwrap();
            let attached = || {
                tollgate_tests::sh(&["ip", "link", "show", "dev", &s.lab.host_if]).contains("xdp")
            };
            assert!(
                tollgate_tests::eventually(Duration::from_secs(5), || !attached()),
                "program still attached after its pins were removed"
            );
            assert!(
                tollgate_tests::eventually(Duration::from_secs(3), || s.v4_ok(0)),
                "still dropping after the pins are gone: this was no reboot"
            );
        }
        let from = s.agent.log_text().len();
        s.agent.spawn();
        // At the first answer, no retry.
        let held = tollgate_tests::kernel_bans(&s.agent);
        let attached =
            tollgate_tests::sh(&["ip", "link", "show", "dev", &s.lab.host_if]).contains("xdp");
        assert_eq!(
            held, want,
            "reboot={reboot}: kernel bans at the first answer"
        );
        assert!(
            attached,
            "reboot={reboot}: answering before the program is attached"
        );
        assert!(
            !s.v4_ok(0),
            "reboot={reboot}: banned IPv4 client let through"
        );
        assert!(
            !s.v6_ok(0),
            "reboot={reboot}: banned IPv6 client let through"
        );
        assert_eq!(export_lines(&s.agent, "order").len(), HOSTS as usize + 1);
        let listed = |cidr: &str| {
            s.agent
                .json(&["block", "ls", "--match", cidr])
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(
            listed(&format!("{}/32", s.lab.v4(1, 2))),
            0,
            "expired ban restored"
        );
        assert_eq!(listed("198.19.0.7/32"), 0, "lifted ban restored");
        assert_eq!(listed("198.19.0.8/32"), 1);
        // The order as logged: everything restored and the programs loaded
        // before the first attach, the socket last.
        let log = s.agent.log_text()[from..].to_owned();
        let at = |k: &str| log.find(k).unwrap_or_else(|| panic!("no '{k}' in {log}"));
        let hook = if reboot {
            "attached"
        } else {
            "took over the link"
        };
        assert!(at("state restored") < at("datapath loaded"), "{log}");
        assert!(at("datapath loaded") < at(hook), "{log}");
        assert!(at(hook) < at("control socket ready"), "{log}");
    }
    assert!(s.v4_ok(1), "the expired client is dropped");
}

/// The opposite of a reboot: the store is lost but the pinned maps are not;
/// the restarted agent adopts the kernel's bans into a new store.
#[test]
fn kernel_bans_are_adopted_when_the_store_is_lost() {
    let mut s = setup(&[]);
    s.agent
        .ok(&["block", "add", &s.lab.v4(0, 2).to_string(), "--ttl", "1h"]);
    s.agent.kill(nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_file(s.agent.state.join(tollgate::store::RedbStore::FILE)).unwrap();
    s.agent.spawn();
    let bans = s.agent.json(&["block", "ls"]);
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans}");
    assert_eq!(bans[0]["origin"], "kernel");
    assert!(bans[0]["ttl_remaining_secs"].as_u64().unwrap() > 3500);
    assert!(!s.v4_ok(0));
    assert!(s.agent.log_text().contains("adopted_from_kernel=1"));
}

/// A tmpfs mounted for one test, unmounted (lazily, so a busy file cannot
/// keep it) when dropped, even if the test fails.
struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        tollgate_tests::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tollgate-test",
            path.to_str().unwrap(),
        ]);
        Self { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_degrades_the_store_loudly_and_it_recovers() {
    let fs = Tmpfs::mount("16m");
    let state = fs.path.join("state");
    let lab = Lab::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start_in(&lab.host_if, Some(&state), &["--metrics-addr", &addr]);
    assert_eq!(agent.json(&["status"])["store"], "ok");
    assert_eq!(http_get(port, "/readyz").0, 200);

    let filler = fs.path.join("filler");
    fill(&filler);
    // Enough bans that the database must grow: the write fails.
    let list: String = (0..40_000u32)
        .map(|i| format!("198.19.{}.{}\n", i / 250, i % 250 + 1))
        .collect();
    let list_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list_file.path(), &list).unwrap();
    let out = agent.cli(&[
        "block",
        "import",
        list_file.path().to_str().unwrap(),
        "--origin",
        "disk-full",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let add = agent.cli(&["block", "add", &lab.v4(0, 9).to_string()]);
    assert!(!add.status.success(), "{add:?}");

    // Degraded, everywhere, and it stays so while the disk is full.
    let status = agent.json(&["status"]);
    let store = status["store"].as_str().unwrap().to_owned();
    assert!(store.starts_with("degraded"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        agent.json(&["status"])["store"]
            .as_str()
            .unwrap()
            .starts_with("degraded")
    );
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    let (_, metrics) = http_get(port, "/metrics");
    assert_eq!(
        sample(&metrics, "tollgate_store_up"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        agent.log_text().contains("state store write failed"),
        "{}",
        agent.log_text()
    );

    // Room again: the store reopens by itself and health comes back.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        tollgate_tests::eventually(Duration::from_secs(10), || agent.json(&["status"])["store"]
            == "ok"),
        "{}\n{}",
        agent.json(&["status"]),
        agent.log_text()
    );
    assert_eq!(http_get(port, "/readyz").0, 200);
    let (_, metrics) = http_get(port, "/metrics");
    assert_eq!(sample(&metrics, "tollgate_store_up"), Some(1.0));
    let banned = lab.v4(0, 9).to_string();
    agent.ok(&["block", "add", &banned, "--reason", "after the disk filled"]);
    agent.ok(&[
        "block",
        "import",
        list_file.path().to_str().unwrap(),
        "--origin",
        "disk-full",
    ]);

    // Persisted: a cold start (no pins) gets them back from the store.
    let mut agent = agent;
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    let _ = std::fs::remove_dir_all(&agent.pins);
    agent.spawn();
    let bans = agent.json(&["block", "ls"]);
    let bans = bans.as_array().unwrap();
    assert!(
        bans.iter()
            .any(|b| b["cidr"] == format!("{banned}/32") && b["reason"] == "after the disk filled"),
        "{bans:?}"
    );
    assert_eq!(bans.len(), 40_001);
    drop(agent);
    drop(fs);
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `tollgate agent` with its own socket, state and pin paths that is
/// expected to fail before serving: (exit code, stderr).
fn failed_start(iface: &str, socket: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["agent", "--iface", iface, "--socket"])
        .arg(socket)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn state_files_are_private_and_socket_paths_are_checked() {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start_in(&lab.host_if, Some(&state), &[]);
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(mode_of(&state.join("state.redb")), 0o600);
    assert_eq!(mode_of(&state.join("agent.lock")), 0o600);
    assert_eq!(mode_of(&agent.socket), 0o600);
    drop(agent);

    let pins = format!("/sys/fs/bpf/tollgate-test-{}-sock", std::process::id());
    let pin_args = ["--pin-dir", pins.as_str()];
    // A socket directory others can write to, or owned by another user.
    let open_dir = tmp.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(open_dir.join("planted"), "").unwrap();
    let (code, err) = failed_start(&lab.host_if, &open_dir.join("s.sock"), &pin_args);
    assert_eq!(code, Some(1));
    assert!(err.contains("writable by group or others"), "{err}");
    let (_, err) = failed_start(
        &lab.host_if,
        std::path::Path::new("/tmp/tg-test.sock"),
        &pin_args,
    );
    assert!(err.contains("writable by group or others"), "{err}");
    // ... but a fresh, empty volume of ours (a Kubernetes emptyDir is 0777)
    // is tightened.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(serves(
        &lab.host_if,
        &fresh.join("s.sock"),
        &tmp.path().join("state3"),
        &pins
    ));
    assert_eq!(mode_of(&fresh), 0o700);
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (_, err) = failed_start(&lab.host_if, &theirs.join("s.sock"), &pin_args);
    assert!(err.contains("owned by uid 65534"), "{err}");
    // Something that is not a socket is never deleted as a "stale socket".
    let file = tmp.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (_, err) = failed_start(&lab.host_if, &file, &pin_args);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(
        !std::path::Path::new(&pins).join("maps").exists(),
        "refused before loading"
    );

    // A stale socket (nobody listening) is replaced.
    let stale = tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    assert!(
        serves(&lab.host_if, &stale, &tmp.path().join("state2"), &pins),
        "the agent did not replace the stale socket"
    );
}

/// Starts an agent on `socket`, true if it answered `status` (within 20 s);
/// stops it and removes `pins`.
fn serves(iface: &str, socket: &std::path::Path, state: &std::path::Path, pins: &str) -> bool {
    let mut child = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["agent", "--iface", iface, "--socket"])
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .args(["--pin-dir", pins])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let up = tollgate_tests::eventually(Duration::from_secs(20), || {
        std::process::Command::new(tollgate_tests::tollgate_bin())
            .arg("--socket")
            .arg(socket)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(pins);
    up
}

#[test]
fn the_cli_is_bounded_in_memory_and_time_and_escapes_untrusted_text() {
    let s = setup(&[]);
    // An endless line: a clear error naming it, fast, bounded memory.
    let t = std::time::Instant::now();
    let out = s.agent.cli(&["block", "import", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1 is longer than 4096 bytes"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Rejected lines with terminal escapes are shown escaped.
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.txt");
    std::fs::write(
        &evil,
        format!("{}\n\u{1b}]0;pwned\u{7}\u{1b}[2J\n", s.lab.v4(1, 7)),
    )
    .unwrap();
    let out = s.agent.cli(&["block", "import", evil.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07),
        "{out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2: '\\x1b]0;pwned\\x07\\x1b[2J'"),
        "{err}"
    );

    // A stopped agent: every command gives up, with exit code 3.
    let pid = s.agent.pid().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = std::time::Instant::now();
    let out = s.agent.cli(&["--timeout", "1s", "status"]);
    let took = t.elapsed();
    let out2 = std::process::Command::new(tollgate_tests::tollgate_bin())
        .env("TOLLGATE_TIMEOUT", "1s")
        .arg("--socket")
        .arg(&s.agent.socket)
        .args(["block", "ls"])
        .output()
        .unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer within 1s"), "{err}");
    assert_eq!(out2.status.code(), Some(3), "{out2:?}");
    s.agent.ok(&["status"]);
}

#[test]
fn failed_starts_leave_no_pins_and_one_agent_per_interface() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let pins = format!("/sys/fs/bpf/tollgate-test-{}-fail", std::process::id());
    let pin_count = || {
        std::fs::read_dir(std::path::Path::new(&pins).join("maps"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    struct RmPins(String);
    impl Drop for RmPins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmPins(pins.clone());
    let sock = tmp.path().join("s.sock");

    // Refused before anything is loaded.
    let (code, err) = failed_start("tg-no-such-if", &sock, &["--pin-dir", &pins]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("interface tg-no-such-if does not exist"),
        "{err}"
    );
    let policy = tmp.path().join("p.yaml");
    std::fs::write(&policy, "allowlist: [0.0.0.0/0]\n").unwrap();
    let (code, err) = failed_start(
        &lab.host_if,
        &sock,
        &["--pin-dir", &pins, "--config", policy.to_str().unwrap()],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("allowlist[0]"), "{err}");
    assert_eq!(pin_count(), 0);
    assert!(!std::path::Path::new(&pins).exists());

    // Failing after the load (the socket path is too long to bind): the
    // pins this start created are removed...
    let long = tmp.path().join(format!("{}.sock", "s".repeat(120)));
    let (code, err) = failed_start(&lab.host_if, &long, &["--pin-dir", &pins]);
    assert_eq!(code, Some(1));
    assert!(err.contains("failed to bind control socket"), "{err}");
    assert_eq!(pin_count(), 0, "pins left behind");

    // ... but a crashed agent's pins (they carry its bans) are kept.
    let mut agent = Agent::start_at(&lab.host_if, None, Some(std::path::Path::new(&pins)), &[]);
    agent.ok(&["block", "add", &lab.v4(0, 5).to_string()]);
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    let before = pin_count();
    assert!(before > 10);
    let (code, _) = failed_start(&lab.host_if, &long, &["--pin-dir", &pins]);
    assert_eq!(code, Some(1));
    assert_eq!(pin_count(), before);

    // One agent per interface, whatever its state directory.
    agent.spawn();
    let other_pins = format!("{pins}-2");
    let _rm2 = RmPins(other_pins.clone());
    let (code, err) = failed_start(&lab.host_if, &sock, &["--pin-dir", &other_pins]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("already running on {}", lab.host_if)),
        "{err}"
    );
    agent.ok(&["status"]);
}

/// The policy's `capacity` sizes the ban maps: `status` shows each map's
/// capacity, memory and setting; an import that does not fit is refused
/// whole, naming the map, by how much and the setting to raise; a larger
/// capacity applies at the next start, with the bans carried over.
#[test]
fn a_small_capacity_is_honoured_and_a_larger_one_applies_at_restart_with_bans_kept() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "capacity: {ranges_v4: 4}\n").unwrap();
    let mut s = setup(&["--config", policy.to_str().unwrap()]);
    let lpm = |agent: &Agent| {
        let st = agent.json(&["status"]);
        st["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "TG_BLOCK4_LPM")
            .cloned()
            .unwrap()
    };
    let m = lpm(&s.agent);
    assert_eq!(m["capacity"], 4, "{m}");
    assert_eq!(m["setting"], "ranges_v4", "{m}");
    // An empty trie takes no memory; the field is there all the same.
    assert!(m["memory_bytes"].as_u64().is_some(), "{m}");

    // Six IPv4 ranges, the lab's subnet 1 last: two too many.
    let feed = dir.path().join("ranges.txt");
    let ranges = |n: usize| {
        let mut t = String::new();
        for i in 0..n - 1 {
            let _ = writeln!(t, "198.19.{i}.0/24");
        }
        let _ = writeln!(t, "{}", s.lab.v4_net(1));
        t
    };
    std::fs::write(&feed, ranges(6)).unwrap();
    let file = feed.to_str().unwrap();
    let out = s.agent.cli(&["block", "import", file, "--reason", "cap"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("TG_BLOCK4_LPM") && err.contains("2 too many") && err.contains("ranges_v4: 8"),
        "{err}"
    );
    let bans = |agent: &Agent| agent.json(&["block", "ls"]).as_array().unwrap().len();
    assert_eq!(bans(&s.agent), 0, "a refused import left bans");
    assert!(s.v4_ok(1), "a refused import dropped traffic");

    // Four fit.
    std::fs::write(&feed, ranges(4)).unwrap();
    s.agent.ok(&["block", "import", file, "--reason", "cap"]);
    assert!(!s.v4_ok(1), "imported range not enforced");
    let m = lpm(&s.agent);
    assert_eq!(m["entries"], 4, "{m}");
    assert!(m["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{m}");

    // A larger capacity, applied at restart: same bans, still enforced.
    std::fs::write(&policy, "capacity: {ranges_v4: 8}\n").unwrap();
    s.agent.kill(nix::sys::signal::Signal::SIGTERM);
    s.agent.spawn();
    assert_eq!(lpm(&s.agent)["capacity"], 8);
    assert_eq!(bans(&s.agent), 4);
    assert!(!s.v4_ok(1), "ban lost across the capacity change");
    assert!(s.v4_ok(0));
    std::fs::write(&feed, ranges(6)).unwrap();
    s.agent.ok(&["block", "import", file, "--reason", "cap"]);
    assert_eq!(bans(&s.agent), 6);
}
