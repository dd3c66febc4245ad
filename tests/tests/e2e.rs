//! End to end, as an operator runs it: the real `tollgate` binary as agent
//! and CLI, XDP (or tcx) on the root end of a veth pair, a client in its own
//! namespace talking TCP and ICMP to a server in the root namespace.

use std::time::Duration;

use nix::sys::signal::Signal;
use tollgate_tests::{Agent, eventually, setup};

#[test]
fn block_drops_a_client_and_rm_restores_it() {
    let s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    assert!(s.v4_ok(0), "client must reach the server before any ban");
    assert_eq!(s.lab.ping(s.lab.v4(0, 2), s.lab.v4(0, 1), 2), 2);

    s.agent.ok(&["block", "add", &client, "--reason", "e2e"]);
    assert!(!s.v4_ok(0), "banned client still connects");
    assert_eq!(s.lab.ping(s.lab.v4(0, 2), s.lab.v4(0, 1), 2), 0);
    // Everyone else gets through.
    assert!(s.v4_ok(1));
    assert!(s.v6_ok(0));

    let bans = s.agent.json(&["block", "ls"]);
    let ban = &bans.as_array().unwrap()[0];
    assert_eq!(ban["address"], client);
    assert_eq!(ban["reason"], "e2e");
    assert!(ban["hits"].as_u64().unwrap() > 0, "hit counter: {ban}");
    let stats = s.agent.json(&["stats"]);
    let dropped = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["verdict"] == "drop" && c["reason"] == "blocklisted")
        .map(|c| c["packets"].as_u64().unwrap())
        .unwrap_or(0);
    assert!(dropped > 0, "{stats}");

    s.agent.ok(&["block", "rm", &client]);
    assert!(s.v4_ok(0), "unbanned client cannot connect");
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn a_ttl_expires_by_itself() {
    let s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    s.agent.ok(&["block", "add", &client, "--ttl", "2s"]);
    assert!(!s.v4_ok(0));
    let ttl = s.agent.json(&["block", "ls"])[0]["ttl_remaining_secs"]
        .as_u64()
        .unwrap();
    assert!(ttl <= 2, "ttl {ttl}");
    assert!(
        eventually(Duration::from_secs(6), || s.v4_ok(0)),
        "ban did not expire"
    );
    assert!(eventually(Duration::from_secs(3), || s
        .agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .is_empty()));
}

#[test]
fn allowlisted_sources_are_never_dropped() {
    let s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    s.agent
        .ok(&["allow", "add", &client, "--reason", "monitoring"]);
    // Overlapping the allowlist needs --force, and the allow entry still wins.
    let out = s.agent.cli(&["block", "add", &s.lab.v4_net(0)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlaps allowlist"));
    s.agent.ok(&["block", "add", &s.lab.v4_net(0), "--force"]);
    assert!(s.v4_ok(0), "allowlisted client was dropped");
    let allows = s.agent.json(&["allow", "ls"]);
    assert!(allows[0]["hits"].as_u64().unwrap() > 0, "{allows}");
    // Removing the allow entry exposes the client to the range ban.
    s.agent.ok(&["allow", "rm", &client]);
    assert!(!s.v4_ok(0));
}

#[test]
fn range_bans_drop_inside_and_nothing_outside() {
    let s = setup(&[]);
    s.agent.ok(&["block", "add", &s.lab.v4_net(1)]);
    s.agent.ok(&["block", "add", &s.lab.v6_net(1)]);
    assert!(!s.v4_ok(1), "address inside the banned /24 connects");
    assert!(!s.v6_ok(1), "address inside the banned /48 connects");
    assert!(s.v4_ok(0), "address outside the banned /24 dropped");
    assert!(s.v6_ok(0), "address outside the banned /48 dropped");
}

#[test]
fn bans_survive_sigkill_and_keep_enforcing_in_between() {
    let mut s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    s.agent
        .ok(&["block", "add", &client, "--reason", "persist"]);
    s.agent
        .ok(&["block", "add", &s.lab.v6_net(0), "--ttl", "1h"]);
    s.agent.ok(&["allow", "add", &s.lab.v4(1, 2).to_string()]);
    assert!(!s.v4_ok(0));
    let hits = |s: &tollgate_tests::Setup| {
        s.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == client)
            .and_then(|b| b["hits"].as_u64())
            .unwrap_or(0)
    };
    let before = hits(&s);
    assert!(before > 0);
    s.agent.kill(Signal::SIGKILL);
    // Nobody in userspace now: the pinned program and maps keep dropping.
    assert!(!s.v4_ok(0), "ban not enforced while the agent is down");
    assert!(!s.v6_ok(0));
    assert!(s.v4_ok(1));
    s.agent.spawn();
    assert!(!s.v4_ok(0), "ban not enforced after restart");
    let bans = s.agent.json(&["block", "ls"]);
    let bans = bans.as_array().unwrap();
    assert_eq!(bans.len(), 2, "{bans:?}");
    assert!(
        bans.iter()
            .any(|b| b["address"] == client && b["reason"] == "persist")
    );
    assert!(
        bans.iter()
            .any(|b| b["ttl_remaining_secs"].as_u64().is_some_and(|t| t > 3500))
    );
    assert_eq!(s.agent.json(&["allow", "ls"]).as_array().unwrap().len(), 1);
    // Hit counters live in the pinned kernel entries the restart keeps.
    let after = hits(&s);
    assert!(
        after > before,
        "hits {before} before the restart, {after} after"
    );
    assert!(
        s.agent.log_text().contains("took over the link"),
        "{}",
        s.agent.log_text()
    );
}

#[test]
fn clean_shutdown_detaches_unless_keep_attached() {
    let mut s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    s.agent.ok(&["block", "add", &client]);
    s.agent.kill(Signal::SIGTERM);
    assert!(s.v4_ok(0), "program still attached after a clean stop");

    let mut k = Agent::start(&s.lab.host_if, &["--keep-attached"]);
    k.ok(&["block", "add", &client]);
    k.kill(Signal::SIGINT);
    assert!(!s.v4_ok(0), "--keep-attached did not keep enforcing");
}

#[test]
fn tc_attach_enforces_too() {
    let s = setup(&["--attach", "tc"]);
    let status = s.agent.json(&["status"]);
    assert_eq!(status["interfaces"][0]["attach"], "tcx", "{status}");
    s.agent.ok(&["block", "add", &s.lab.v4(0, 2).to_string()]);
    assert!(!s.v4_ok(0));
    assert!(s.v4_ok(1));
}

#[test]
fn monitor_mode_counts_but_passes() {
    let s = setup(&["--mode", "monitor"]);
    s.agent.ok(&["block", "add", &s.lab.v4(0, 2).to_string()]);
    assert!(s.v4_ok(0), "monitor mode dropped");
    let stats = s.agent.json(&["stats"]);
    assert!(
        stats["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["verdict"] == "monitor" && c["reason"] == "blocklisted"),
        "{stats}"
    );
}

#[test]
fn bad_input_changes_nothing_and_says_why() {
    let s = setup(&[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["block", "add", "198.18.300.1"],
            "not an IPv4/IPv6 address",
        ),
        (&["block", "add", "198.18.0.5/24"], "host bits set"),
        (&["block", "add", "0.0.0.0/0"], "--force"),
        (&["block", "add", "::/0"], "--force"),
        (&["block", "add", "198.18.0.9", "--ttl", "0s"], "zero"),
        (&["block", "add", "198.18.0.9", "--ttl", "500d"], "maximum"),
        (
            &["block", "add", "198.18.0.9", "--ttl", "soon"],
            "not a duration",
        ),
        (&["allow", "add", "not-an-ip"], "not an IPv4/IPv6 address"),
    ];
    for (args, why) in cases {
        let out = s.agent.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let out = s.agent.cli(&["block", "rm", "198.18.0.77"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not banned"));
    assert!(
        s.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        s.agent
            .json(&["allow", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Raw protocol garbage gets an error answer, not a crash.
    use std::io::{Read as _, Write as _};
    let mut sock = std::os::unix::net::UnixStream::connect(&s.agent.socket).unwrap();
    sock.write_all(
        b"{\"cmd\":\"block_add\",\"cidr\":\"::/0\",\"ttl_secs\":null,\"reason\":null}\n",
    )
    .unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":false"), "{answer}");
    assert!(
        s.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(s.v4_ok(0));
}

#[test]
fn cli_without_agent_and_second_agent_are_clear_errors() {
    let s = setup(&[]);
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["--socket", "/nonexistent/tollgate.sock", "block", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not running") && err.lines().count() == 1,
        "{err}"
    );

    let second = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["agent", "--iface", &s.lab.host_if, "--state-dir"])
        .arg(&s.agent.state)
        .arg("--socket")
        .arg(&s.agent.socket)
        .arg("--pin-dir")
        .arg(&s.agent.pins)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    // The first agent is unharmed.
    s.agent.ok(&["status"]);
}
