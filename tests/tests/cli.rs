//! The operator's CLI against a real agent: "is this address blocked, and
//! by what?", filtered `block ls`, bulk and idempotent changes, dry runs,
//! refusals of dangerous bans, and JSON errors.

use tollgate_tests::setup;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn block_test_names_the_range_that_drops_an_address() {
    let s = setup(&[]);
    let client = s.lab.v4(0, 2).to_string();
    let range = s.lab.v4_net(0);
    assert!(s.v4_ok(0));
    // Not blocked: exit 1.
    let out = s.agent.cli(&["block", "test", &client]);
    assert_eq!(code(&out), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("NOT BLOCKED"), "{}", stdout(&out));

    s.agent
        .ok(&["block", "add", &range, "--reason", "scanner subnet"]);
    assert!(!s.v4_ok(0), "the range ban drops the client");
    // Lifting the address alone is refused, naming the range.
    let out = s.agent.cli(&["block", "rm", &client]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(&range), "{}", stderr(&out));
    // `block test`: blocked (exit 0), by the range, kernel agrees.
    let out = s.agent.cli(&["block", "test", &client, "--json"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocked"], true, "{v}");
    assert_eq!(v["bans"][0]["cidr"], range, "{v}");
    assert_eq!(v["bans"][0]["reason"], "scanner subnet", "{v}");
    assert_eq!(v["bans"][0]["kernel"], "present", "{v}");
    assert_eq!(v["kernel_agrees"], true, "{v}");
    assert!(v["bans"][0]["hits"].as_u64().unwrap() > 0, "{v}");
    let human = s.agent.ok(&["block", "test", &client]);
    assert!(
        human.contains("BLOCKED") && human.contains(&range),
        "{human}"
    );

    // The allowlist overrides: not blocked, and the client gets through.
    s.agent.ok(&["allow", "add", &client]);
    let out = s.agent.cli(&["block", "test", &client, "--json"]);
    assert_eq!(code(&out), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocked"], false, "{v}");
    assert_eq!(v["allows"][0]["cidr"], format!("{client}/32"), "{v}");
    assert!(s.v4_ok(0));

    // `block ls --match` lists the range covering the address, and filters.
    let ls = s.agent.json(&["block", "ls", "--match", &client]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    let ls = s.agent.json(&["block", "ls", "--kind", "feed"]);
    assert!(ls.as_array().unwrap().is_empty(), "{ls}");

    // A bad address is an error (2), not "not blocked".
    let out = s.agent.cli(&["block", "test", "nonsense"]);
    assert_eq!(code(&out), Some(2));
}

#[test]
fn bulk_idempotent_and_dry_run_changes() {
    let s = setup(&[]);
    let a = s.lab.v4(1, 7).to_string();
    let b = s.lab.v4(1, 8).to_string();
    let c = s.lab.v4(1, 9).to_string();
    let added = s.agent.json(&["block", "add", &a, &b, &c, "--ttl", "10m"]);
    assert_eq!(added["ok"], 3, "{added}");
    assert_eq!(added["results"][0]["status"], "added", "{added}");
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 3);
    // Paging is done by the agent.
    let page = s
        .agent
        .json(&["block", "ls", "--limit", "1", "--offset", "1"]);
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page[0]["address"], b, "{page}");
    // One malformed address: nothing is sent at all.
    let out = s.agent.cli(&["block", "rm", &a, "not-an-ip"]);
    assert_eq!(code(&out), Some(2));
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 3);
    // rm of a missing entry: an error, unless --exist.
    let gone = s.lab.v4(1, 77).to_string();
    let out = s.agent.cli(&["block", "rm", &a, &gone]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let v = s.agent.json(&["block", "rm", "--exist", &b, &gone]);
    assert_eq!(v["results"][1]["status"], "absent", "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    // Dry runs change nothing.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, format!("{a}\n{b}\n")).unwrap();
    let list = list.display().to_string();
    let r = s
        .agent
        .json(&["block", "import", &list, "--origin", "grp", "--dry-run"]);
    assert_eq!(r["dry_run"], true, "{r}");
    assert_eq!(r["added"], 2, "{r}");
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 1);
    s.agent.ok(&["block", "import", &list, "--origin", "grp"]);
    let r = s
        .agent
        .json(&["block", "rm", "--origin", "grp", "--dry-run"]);
    assert_eq!(r["would_remove"], 2, "{r}");
    assert_eq!(s.agent.json(&["block", "ls"]).as_array().unwrap().len(), 3);
    let human = s.agent.ok(&["block", "rm", "--origin", "grp", "--dry-run"]);
    assert!(human.contains("dry run") && human.contains(&a), "{human}");
}

#[test]
fn dangerous_or_ambiguous_requests_are_refused_with_a_hint() {
    let s = setup(&[]);
    for addr in [
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
    ] {
        let out = s.agent.cli(&["block", "add", addr]);
        assert_eq!(code(&out), Some(1), "{addr}");
        assert!(stderr(&out).contains("--force"), "{addr}: {}", stderr(&out));
    }
    // One refused address among several: nothing is sent, nothing banned.
    let out = s
        .agent
        .cli(&["block", "add", "198.18.0.5", "127.0.0.1", "198.18.0.6"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    // The host's own address (the lab's host end).
    let own = s.lab.v4(0, 1).to_string();
    let out = s.agent.cli(&["block", "add", &own]);
    assert!(stderr(&out).contains("own address"), "{}", stderr(&out));
    assert!(
        s.agent
            .json(&["block", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // `M` is a month to the parser and a minute to people.
    let out = s.agent.cli(&["block", "add", "198.18.0.9", "--ttl", "1M"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("ambiguous"), "{}", stderr(&out));
    // Errors under --json are one JSON object on stderr with the exit code.
    let out = s.agent.cli(&["block", "rm", "198.18.0.77", "--json"]);
    assert_eq!(code(&out), Some(1));
    let e: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(e["code"], 1, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not banned"), "{e}");
    let out = s.agent.cli(&["block", "ls", "--kind", "nope", "--json"]);
    assert_eq!(code(&out), Some(2));
    let e: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(e["code"], 2, "{e}");
    let out = s.agent.cli(&["block", "frobnicate", "--json"]);
    assert_eq!(code(&out), Some(2));
    let e: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(e["code"], 2, "{e}");
    // `limits set` changes only the values given.
    s.agent.ok(&[
        "limits",
        "set",
        "--port",
        "8080",
        "--pps",
        "100",
        "--max-conns",
        "5",
    ]);
    let l = s
        .agent
        .json(&["limits", "set", "--port", "8080", "--pps", "200"]);
    assert_eq!(l["ports"]["8080"]["pps"], 200, "{l}");
    assert_eq!(l["ports"]["8080"]["max_conns"], 5, "{l}");
    let l = s.agent.json(&[
        "limits",
        "set",
        "--port",
        "8080",
        "--pps",
        "300",
        "--replace",
    ]);
    assert!(l["ports"]["8080"].get("max_conns").is_none(), "{l}");
    // `events` on an empty log says so.
    let ev = s.agent.ok(&["events"]);
    assert!(ev.contains("no events"), "{ev}");
}
