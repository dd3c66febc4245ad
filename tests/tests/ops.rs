//! Running it in production: block-list feeds (import, export, removal by
//! origin, policy feeds), metrics and health endpoints, log format, reload.

use std::{fmt::Write as _, io::Write as _, net::IpAddr, time::Duration};

use tollgate_tests::{Agent, Lab, Server};

const T: Duration = Duration::from_millis(700);

struct Setup {
    lab: Lab,
    server: Server,
    agent: Agent,
}

fn setup(extra: &[&str]) -> Setup {
    let lab = Lab::new();
    let server = Server::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1), lab.v6(1, 1)]);
    let agent = Agent::start(&lab.host_if, extra);
    Setup { lab, server, agent }
}

impl Setup {
    fn tcp(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.lab.tcp_ok(src, dst, self.server.port, T)
    }
    fn v4_ok(&self, i: u32) -> bool {
        self.tcp(self.lab.v4(i, 2), self.lab.v4(i, 1))
    }
    fn v6_ok(&self, i: u32) -> bool {
        self.tcp(self.lab.v6(i, 2), self.lab.v6(i, 1))
    }
}

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
    let (text, valid, bad) = feed_text(&s.lab, 3000);
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
    assert_eq!(export_lines(&s.agent, origin).len(), valid - 250 - 1);

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

    // rm --origin lifts the whole group and nothing else.
    let out = s.agent.ok(&["block", "rm", "--origin", origin]);
    assert!(out.contains(&format!("removed {}", valid - 251)), "{out}");
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

#[test]
fn feed_import_from_stdin_with_ttl_and_origin() {
    let s = setup(&[]);
    let mut child = std::process::Command::new(tollgate_tests::tollgate_bin())
        .arg("--socket")
        .arg(&s.agent.socket)
        .args(["block", "import", "-", "--origin", "drop", "--ttl", "1h"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{} ; SBL1\nfd00:bad::/48\n", s.lab.v4_net(1)).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bans = s.agent.json(&["block", "ls"]);
    assert_eq!(bans.as_array().unwrap().len(), 2);
    assert!(bans[0]["ttl_remaining_secs"].as_u64().unwrap() > 3500);
    assert_eq!(bans[0]["origin"], "drop");
    assert!(!s.v4_ok(1));
    let j = s.agent.json(&["block", "export"]);
    assert_eq!(j["bans"].as_array().unwrap().len(), 2);
}
