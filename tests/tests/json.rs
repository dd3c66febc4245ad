//! Every command's `--json` output, from a real agent, validated against the
//! schema in docs/schema/cli.json (the contract docs/json.md describes).

use std::process::Output;

use serde_json::Value;
use tollgate_tests::{Agent, Lab};

/// The schema document, with its root pointed at one definition.
fn validator(def: &str) -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema/cli.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        schema["$defs"].get(def).is_some(),
        "docs/schema/cli.json has no definition `{def}`"
    );
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    jsonschema::validator_for(&schema).unwrap()
}

fn check(def: &str, doc: &Value, what: &str) {
    let v = validator(def);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "`{what}` does not match `{def}`:\n{}\n{doc:#}",
        errors.join("\n")
    );
}

/// Runs `tollgate ARGS --json`, expects `code`, validates stdout as `def`.
fn run(agent: &Agent, args: &[&str], code: i32, def: &str) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out: Output = agent.cli(&a);
    assert_eq!(
        out.status.code(),
        Some(code),
        "tollgate {a:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tollgate {a:?}: stdout is not one JSON document: {e}"));
    check(def, &doc, &a.join(" "));
    doc
}

/// Runs a failing `tollgate ARGS --json`: stderr is the error object.
fn run_err(agent: &Agent, args: &[&str], code: i32) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = agent.cli(&a);
    assert_eq!(out.status.code(), Some(code), "tollgate {a:?}");
    let err: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|e| {
        panic!(
            "tollgate {a:?}: stderr is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    check("error", &err, &a.join(" "));
    assert_eq!(err["code"], code);
}

#[test]
fn every_json_output_matches_the_documented_schema() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "mode: enforce\n").unwrap();
    let policy = policy.display().to_string();
    let agent = Agent::start(&lab.host_if, &["--config", &policy]);
    let a = lab.v4(0, 2).to_string();
    let b = lab.v4(0, 3).to_string();
    let range = lab.v4_net(1);

    run(
        &agent,
        &["block", "add", &a, &range, "--ttl", "10m"],
        0,
        "block_change",
    );
    run(
        &agent,
        &["block", "add", &b, "--reason", "manual"],
        0,
        "block_change",
    );
    let ls = run(&agent, &["block", "ls"], 0, "block_ls");
    assert_eq!(ls.as_array().unwrap().len(), 3);
    run(
        &agent,
        &["block", "ls", "--kind", "manual", "--limit", "1"],
        0,
        "block_ls",
    );
    run(&agent, &["block", "test", &a], 0, "block_test");
    run(
        &agent,
        &["block", "test", &lab.v4(1, 9).to_string()],
        0,
        "block_test",
    );
    run(&agent, &["block", "test", "198.19.255.1"], 1, "block_test");
    let list = dir.path().join("feed.txt");
    std::fs::write(
        &list,
        // `a` is banned by hand already: it gets the feed's decision too.
        format!(
            "{}\n{}\n{a}\nnot-an-address\n",
            lab.v4(0, 20),
            lab.v4(0, 21)
        ),
    )
    .unwrap();
    let list = list.display().to_string();
    let dry = run(
        &agent,
        &["block", "import", &list, "--origin", "f", "--dry-run"],
        0,
        "block_import",
    );
    assert_eq!(dry["dry_run"], true);
    run(
        &agent,
        &["block", "import", &list, "--origin", "f"],
        0,
        "block_import",
    );
    let export = run(&agent, &["block", "export"], 0, "block_export");
    // `block ls --json` and `block export --json` print the same rows.
    let ls = run(&agent, &["block", "ls"], 0, "block_ls");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ls[0]), keys(&export["bans"][0]), "{ls} {export}");
    assert_eq!(export["total"], ls.as_array().unwrap().len());
    let t = run(&agent, &["block", "test", &a], 0, "block_test");
    assert_eq!(
        t["bans"][0]["decisions"].as_array().unwrap().len(),
        2,
        "{t}"
    );
    // Lifting the manual decision leaves the feed's.
    let r = run(&agent, &["block", "rm", &a], 0, "block_change");
    assert_eq!(r["results"][0]["still_banned_by"][0], "f", "{r}");
    run(
        &agent,
        &["block", "rm", "--origin", "f", "--dry-run"],
        0,
        "block_rm_origin",
    );
    run(
        &agent,
        &["block", "rm", "--origin", "f"],
        0,
        "block_rm_origin",
    );
    run(&agent, &["block", "rm", &b], 0, "block_change");
    run(&agent, &["block", "rm", "--exist", &b], 0, "block_change");
    run(
        &agent,
        &["allow", "add", &lab.v4(0, 30).to_string()],
        0,
        "allow_change",
    );
    run(&agent, &["allow", "ls"], 0, "allow_ls");
    // allow import: one bad line and nothing is applied; then a dry run and
    // the import itself.
    let allows = dir.path().join("allow.txt");
    std::fs::write(
        &allows,
        format!(
            "# offices\n{}\n{} ; vpn\nnot-an-address\n",
            lab.v4(0, 31),
            lab.v4_net(2)
        ),
    )
    .unwrap();
    let allows_s = allows.display().to_string();
    run_err(&agent, &["allow", "import", &allows_s], 2);
    assert_eq!(
        run(&agent, &["allow", "ls"], 0, "allow_ls")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let text = std::fs::read_to_string(&allows)
        .unwrap()
        .replace("not-an-address\n", "");
    std::fs::write(&allows, text).unwrap();
    let dry = run(
        &agent,
        &["allow", "import", &allows_s, "--dry-run"],
        0,
        "allow_import",
    );
    assert_eq!(dry["would_add"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(
        run(&agent, &["allow", "ls"], 0, "allow_ls")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let done = run(
        &agent,
        &["allow", "import", &allows_s, "--reason", "office"],
        0,
        "allow_import",
    );
    assert_eq!(
        (done["added"].as_u64(), done["unchanged"].as_u64()),
        (Some(2), Some(0)),
        "{done}"
    );
    let again = run(&agent, &["allow", "import", &allows_s], 0, "allow_import");
    assert_eq!(again["unchanged"], 2, "{again}");
    assert_eq!(
        run(&agent, &["allow", "ls"], 0, "allow_ls")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    run(
        &agent,
        &["allow", "rm", &lab.v4(0, 30).to_string()],
        0,
        "allow_change",
    );
    run(&agent, &["stats"], 0, "stats");
    run(
        &agent,
        &["limits", "set", "--port", "8080", "--pps", "100"],
        0,
        "limits",
    );
    run(&agent, &["limits", "show"], 0, "limits");
    run(&agent, &["limits", "clear", "--port", "8080"], 0, "limits");
    run(&agent, &["top"], 0, "top");
    run(&agent, &["policy", "reload"], 0, "policy_reload");
    run(&agent, &["policy", "check", &policy], 0, "policy_check");
    let status = run(&agent, &["status"], 0, "status");
    assert_eq!(status["policy_file"], policy.as_str(), "{status}");
    assert_eq!(status["last_reload"]["applied"], true, "{status}");
    run(&agent, &["inventory"], 0, "inventory");

    run_err(&agent, &["block", "rm", "198.19.255.1"], 1);
    run_err(&agent, &["block", "add", "not-an-address"], 2);
    run_err(&agent, &["allow", "rm", "198.19.255.1"], 1);
    run_err(&agent, &["block", "test", "198.19.0.0/16"], 2);
    run_err(&agent, &["limits", "set", "--pps", "0"], 2);
    run_err(&agent, &["policy", "frobnicate"], 2);
    // Not in a fleet: a refusal, not an empty report.
    run_err(&agent, &["cluster", "status"], 1);
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["--socket", "/nonexistent/tollgate.sock", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    check("error", &err, "status without an agent");
}

/// `cluster status --json` of an agent in a fleet (a real one-member etcd),
/// then with etcd gone: the report still comes, saying why etcd was not asked.
#[test]
fn cluster_status_matches_the_documented_schema() {
    let mut etcd = tollgate_tests::etcd::Etcd::start();
    let lab = Lab::new();
    let url = etcd.url();
    let agent = Agent::start(
        &lab.host_if,
        &[
            "--cluster-endpoints",
            &url,
            "--cluster-fleet",
            &format!("j{}", std::process::id()),
            "--cluster-host-id",
            "host-j",
        ],
    );
    let report = || run(&agent, &["cluster", "status"], 0, "cluster_status");
    assert!(
        tollgate_tests::eventually(std::time::Duration::from_secs(15), || {
            let r = report();
            r["cluster"]["connected"] == true
                && r["hosts"].as_array().is_some_and(|h| !h.is_empty())
        }),
        "the agent never reported itself: {}",
        report()
    );
    let r = report();
    assert_eq!(r["members"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["members"][0]["reachable"], true, "{r}");
    assert_eq!(r["members"][0]["leader"], true, "{r}");
    assert_eq!(r["hosts"][0]["host"], "host-j", "{r}");
    assert!(
        r["error"].is_null() && r["lag"].as_i64().unwrap() >= 0,
        "{r}"
    );
    etcd.stop();
    let r = report();
    assert!(
        r["error"].is_string() && r["members"].as_array().unwrap().is_empty(),
        "{r}"
    );
}
