//! HTTP/2 cleartext (h2c, prior knowledge) taken at the socket, and h2 over
//! TLS from the server's libssl, decoded in userspace: `nghttp` and `h2load` against `nghttpd` in the lab. The
//! same detectors judge each stream; an injection bans its client at XDP,
//! a benign client keeps working, and the inventory lists the routes with
//! the right counts on a long-lived connection.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;
use tollgate_tests::{
    Agent, Lab, eventually,
    h2::{
        GRPC_TOKEN, GrpcServer, Nghttpd, UpgradeServer, curl_h2c, grpc_call, grpc_call_gzip,
        grpc_call_method, grpc_multiplexed, h2load, nghttp,
    },
    tls::wait_probed,
};

fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("http://{addr}:{port}{path}")
}

fn hits(inv: &Value, method: &str, path: &str) -> u64 {
    inv.as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == method && e["path"] == path)
        .and_then(|e| e["hits"].as_u64())
        .unwrap_or(0)
}

/// Against an nghttpd on the lab's two server addresses (`url` makes a URL
/// of address and path): a benign client's requests are listed, an
/// injection after a benign request on one connection bans its client at
/// XDP, and the benign client keeps working. Returns `status` at the end.
fn bans_the_injector_only(lab: &Lab, agent: &Agent, url: impl Fn(IpAddr, &str) -> String) -> Value {
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let (to_attacker_side, to_benign_side) = (lab.v4(0, 1), lab.v4(1, 1));

    // Benign: three requests on one connection.
    let (out, codes) = nghttp(
        lab,
        &[
            url(to_benign_side, "/hello"),
            url(to_benign_side, "/index.html"),
            url(to_benign_side, "/items?id=5"),
        ],
    );
    assert_eq!(codes, [200, 200, 200], "{out:?}");
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || hits(&inv(), "GET", "/hello")
            == 1
            && hits(&inv(), "GET", "/items") == 1),
        "h2 routes not in the inventory: {}\nstatus: {}\n{}",
        inv(),
        agent.json(&["status"]),
        agent.log_text()
    );

    // The injection, after a benign request on the same connection.
    let (out, codes) = nghttp(
        lab,
        &[
            url(to_attacker_side, "/hello"),
            url(to_attacker_side, "/items?id=1%27%20OR%20%271%27%3D%271"),
        ],
    );
    assert_eq!(codes.first(), Some(&200), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(attacker)),
        "{attacker} not banned\nevents: {:#?}\nstatus: {}\n{}",
        agent.events(),
        agent.json(&["status"]),
        agent.log_text()
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == attacker.to_string()
            && e["route"].as_str().is_some_and(|r| r.contains("/items"))
            && e["category"] == "sqli"),
        "no SQL injection event on the h2 route from {attacker}: {ev:#?}"
    );
    // Its next connection is dropped at XDP; the benign client still works.
    let (out, codes) = nghttp(lab, &[url(to_attacker_side, "/hello")]);
    assert!(codes.is_empty(), "banned client answered: {out:?}");
    let (out, codes) = nghttp(lab, &[url(to_benign_side, "/hello")]);
    assert_eq!(codes, [200], "{out:?}");
    assert!(
        !agent.policy_banned(benign),
        "{}",
        agent.json(&["block", "ls"])
    );
    // The last connection's records may still wait in the sample ring
    // (reads are held back up to 20 ms under traffic).
    let connections = || agent.json(&["status"])["sampling"]["flows"]["h2_connections"].as_u64();
    assert!(
        eventually(Duration::from_secs(3), || connections() >= Some(3)),
        "{}",
        agent.json(&["status"])
    );
    let st = agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert_eq!(flows["h2_lost"], 0, "{st}");
    assert_eq!(flows["h2_unknown"], 0, "{st}");
    assert_eq!(flows["unparseable"], 0, "{st}");
    st
}

#[test]
fn an_injection_over_h2c_bans_its_client_and_a_benign_one_keeps_working() {
    let lab = Lab::new();
    let server = Nghttpd::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    bans_the_injector_only(&lab, &agent, |to, path| url(to, server.port, path));
}

#[test]
fn an_injection_over_h2_in_tls_bans_its_client_and_a_benign_one_keeps_working() {
    let lab = Lab::new();
    let server = Nghttpd::start_tls(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    wait_probed(&agent);
    // nghttp negotiates h2 by ALPN; the plaintext comes from libssl.
    let st = bans_the_injector_only(&lab, &agent, |to, path| {
        format!("https://{to}:{}{path}", server.port)
    });
    // Responses come whole from SSL_write: paired and decoded.
    let flows = &st["sampling"]["flows"];
    assert!(flows["responses"].as_u64() >= Some(4), "{st}");
    assert_eq!(flows["h2_responses_lost"], 0, "{st}");
}

#[test]
fn a_long_lived_connection_keeps_every_path() {
    let lab = Lab::new();
    let server = Nghttpd::start(&[lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let to = lab.v4(1, 1);
    // 300 requests on one connection, ten at a time, alternating two paths:
    // every later header block refers to the HPACK table the first built.
    let out = h2load(
        &lab,
        300,
        1,
        &[
            url(to, server.port, "/hello"),
            url(to, server.port, "/index.html"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 succeeded"),
        "h2load: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let i = inv();
            hits(&i, "GET", "/hello") == 150 && hits(&i, "GET", "/index.html") == 150
        }),
        "inventory: {}\nstatus: {}",
        inv(),
        agent.json(&["status"])
    );
    // Nothing else was made up.
    assert_eq!(inv().as_array().unwrap().len(), 2, "{}", inv());
    let st = agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert_eq!(flows["h2_connections"], 1, "{st}");
    assert_eq!(flows["h2_unknown"], 0, "{st}");
    assert_eq!(flows["requests"], 300, "{st}");
}

/// h2c by `Upgrade` (`curl --http2`): the server answers `101 Switching
/// Protocols`, then HTTP/2. The responses after the 101 are decoded (the
/// upgraded request's is on stream 1), so their statuses feed the
/// auth-failure bursts: a client refused again and again is banned.
#[test]
fn h2c_responses_after_an_upgrade_feed_auth_failure_bursts() {
    let lab = Lab::new();
    let to = lab.v4(0, 1);
    let server = UpgradeServer::start(to);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let attacker = lab.v4(0, 2);
    let url = |path: &str| format!("http://{to}:{}{path}", server.port);
    let out = curl_h2c(&lab, &url("/hello"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("101 Switching Protocols"), "{text}");
    let mut refused = 0;
    for _ in 0..20 {
        if agent.policy_banned(attacker) {
            break;
        }
        let out = curl_h2c(&lab, &url("/secret"));
        if String::from_utf8_lossy(&out.stderr).contains("< HTTP/2 401") {
            refused += 1;
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(attacker)),
        "{attacker} not banned after {refused} refusals\nevents: {:#?}\nstatus: {}",
        agent.events(),
        agent.json(&["status"])
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == attacker.to_string()
            && e["rule"] == "auth.credential_stuffing"),
        "{ev:#?}"
    );
    let inv = agent.json(&["inventory"]);
    let hello = inv
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/hello")
        .map(|e| e["statuses"].clone());
    assert_eq!(hello, Some(serde_json::json!({"200": 1})), "{inv}");
}

/// A protobuf length-delimited field.
fn field(num: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![num << 3 | 2, u8::try_from(payload.len()).unwrap()];
    f.extend_from_slice(payload);
    f
}

#[test]
fn an_injection_in_a_grpc_string_field_bans_its_client() {
    let lab = Lab::new();
    let server = GrpcServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let benign_msg = [field(1, b"groceries"), field(2, b"milk, eggs and bread")].concat();
    assert_eq!(
        grpc_call(&lab, lab.v4(1, 1), server.port, &benign_msg),
        Ok(benign_msg.clone())
    );
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || hits(
            &inv(),
            "POST",
            "/notes.Notes/Create"
        ) == 1),
        "gRPC method not in the inventory: {}\nstatus: {}",
        inv(),
        agent.json(&["status"])
    );
    // Against a descriptor set (built by hand: FileDescriptorSet > file >
    // service > method names): Create documented, Archive unused.
    let method = |name: &[u8]| field(2, &field(1, name));
    let service = [field(1, b"Notes"), method(b"Create"), method(b"Archive")].concat();
    let file = [
        field(1, b"notes.proto"),
        field(2, b"notes"),
        field(6, &service),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("notes.pb");
    std::fs::write(&set, field(1, &file)).unwrap();
    let set = set.to_str().unwrap();
    let inv = agent.json(&["inventory", "--descriptor-set", set]);
    let status = |path: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["status"].clone())
    };
    assert_eq!(
        (
            status("/notes.Notes/Create"),
            status("/notes.Notes/Archive")
        ),
        (Some("documented".into()), Some("unused".into())),
        "{inv}"
    );
    // A file that is no descriptor set is refused with a reason.
    let bad = dir.path().join("api.yaml");
    std::fs::write(&bad, "openapi: 3.0.3\npaths: {}\n").unwrap();
    let out = agent.cli(&["inventory", "--descriptor-set", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a protobuf descriptor set"),
        "{out:?}"
    );
    // Compressed (gzip) messages are inflated and read: a benign one passes.
    let padding = field(4, &[b'a'; 120]);
    let benign_gz = [benign_msg.clone(), padding.clone()].concat();
    assert_eq!(
        grpc_call_gzip(&lab, lab.v4(1, 1), server.port, &benign_gz),
        Ok(benign_gz.clone())
    );
    // The injection sits in field 2 of the message in field 3, gzip-compressed
    // (padded so that gzip makes it smaller: gRPC sends it compressed).
    let evil = [
        field(1, b"x"),
        field(3, &field(2, b"1' UNION SELECT password FROM users--")),
        padding,
    ]
    .concat();
    let _ = grpc_call_gzip(&lab, lab.v4(0, 1), server.port, &evil);
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(attacker)),
        "{attacker} not banned\nevents: {:#?}\nstatus: {}",
        agent.events(),
        agent.json(&["status"])
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == attacker.to_string()
            && e["location"] == "protobuf:3.2"
            && e["route"]
                .as_str()
                .is_some_and(|r| r.contains("/notes.Notes/Create"))),
        "no event locating the protobuf field: {ev:#?}"
    );
    let st = agent.json(&["status"]);
    let flows = &st["sampling"]["flows"];
    assert_eq!(flows["grpc_compressed_messages"], 2, "{st}");
    assert_eq!(flows["grpc_unread_messages"], 0, "{st}");
    assert!(grpc_call(&lab, lab.v4(0, 1), server.port, &benign_msg).is_err());
    assert_eq!(
        grpc_call(&lab, lab.v4(1, 1), server.port, &benign_msg),
        Ok(benign_msg.clone())
    );
    assert!(!agent.policy_banned(benign));
}

#[test]
fn grpc_unauthenticated_bursts_ban_like_401s() {
    let lab = Lab::new();
    let server = GrpcServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let secret = "/notes.Notes/Secret";
    // A benign client: a few refusals (a mistyped token), then its calls go through.
    for msg in [&b"typo"[..], b"typo2", GRPC_TOKEN, GRPC_TOKEN] {
        let r = grpc_call_method(&lab, lab.v4(1, 1), server.port, secret, msg);
        assert_eq!(r.is_ok(), msg == GRPC_TOKEN, "{r:?}");
    }
    // Refusals answer in the response head (Trailers-Only): the agent sees
    // them as responses carrying grpc-status 16.
    assert!(
        eventually(Duration::from_secs(5), || {
            let st = agent.json(&["status"]);
            st["sampling"]["flows"]["responses"].as_u64() >= Some(4)
        }),
        "h2 responses not decoded: {}",
        agent.json(&["status"])
    );
    // Token guessing: one refused call after another.
    let mut refused = 0;
    for i in 0..30 {
        if agent.policy_banned(attacker) {
            break;
        }
        let guess = format!("token-{i}");
        match grpc_call_method(&lab, lab.v4(0, 1), server.port, secret, guess.as_bytes()) {
            Err(e) if e.contains("UNAUTHENTICATED") => refused += 1,
            // The ban landed during this call: its packets were dropped.
            Err(_) if agent.policy_banned(attacker) => break,
            other => panic!("call {i}: {other:?}"),
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(attacker)),
        "{attacker} not banned after {refused} refused calls\nevents: {:#?}\nstatus: {}",
        agent.events(),
        agent.json(&["status"])
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == attacker.to_string()
            && e["rule"] == "auth.credential_stuffing"
            && e["route"].as_str().is_some_and(|r| r.contains(secret))),
        "no credential stuffing event on {secret}: {ev:#?}"
    );
    assert!(refused >= 5, "banned after only {refused} refusals");
    // Dropped at XDP now; the benign client still works.
    assert!(grpc_call_method(&lab, lab.v4(0, 1), server.port, secret, GRPC_TOKEN).is_err());
    assert_eq!(
        grpc_call_method(&lab, lab.v4(1, 1), server.port, secret, GRPC_TOKEN),
        Ok(GRPC_TOKEN.to_vec())
    );
    assert!(
        !agent.policy_banned(benign),
        "{}",
        agent.json(&["block", "ls"])
    );
}

const NOTES_PROTO: &str = r#"syntax = "proto3";
package notes;
message Meta { string tag = 2; }
message Note { string title = 1; string body = 2; Meta meta = 3; }
service Notes {
  rpc Create(Note) returns (Note);
  rpc Archive(Note) returns (Note) { option deprecated = true; }
}
"#;

/// `tollgate agent --descriptor-set FILE` (a set `protoc` wrote): the live
/// inventory marks the gRPC methods documented, shadow or unused, and a
/// finding in a request field is located by the field's name. A file that
/// is no descriptor set stops the agent at start with the reason.
#[test]
fn a_descriptor_set_names_methods_and_fields_in_the_live_inventory_and_events() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.proto"), NOTES_PROTO).unwrap();
    let set = dir.path().join("notes.pb");
    let out = std::process::Command::new("protoc")
        .arg(format!("-I{}", dir.path().display()))
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", set.display()))
        .arg("notes.proto")
        .output()
        .expect("protoc (Debian protobuf-compiler: cargo xtask setup --test-deps)");
    assert!(out.status.success(), "{out:?}");
    // A bad file: refused at start, nothing attached.
    let bad = dir.path().join("api.yaml");
    std::fs::write(&bad, "openapi: 3.0.3\n").unwrap();
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["agent", "--iface", &lab.host_if, "--descriptor-set"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--descriptor-set") && err.contains("not a protobuf descriptor set"),
        "{err}"
    );
    let server = GrpcServer::start(&[lab.v4(0, 1), lab.v4(1, 1)]);
    let port = server.port.to_string();
    let agent = Agent::start(
        &lab.host_if,
        &[
            "--api-port",
            &port,
            "--descriptor-set",
            set.to_str().unwrap(),
        ],
    );
    let benign = [field(1, b"groceries"), field(2, b"milk and bread")].concat();
    assert_eq!(
        grpc_call(&lab, lab.v4(1, 1), server.port, &benign),
        Ok(benign.clone())
    );
    // A method the set does not document.
    let _ = grpc_call_method(
        &lab,
        lab.v4(1, 1),
        server.port,
        "/notes.Notes/Secret",
        GRPC_TOKEN,
    );
    let status = |inv: &Value, path: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| (e["status"].clone(), e["deprecated"].clone()))
    };
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || status(
            &inv(),
            "/notes.Notes/Secret"
        )
        .is_some()),
        "{}",
        inv()
    );
    let i = inv();
    assert_eq!(
        (
            status(&i, "/notes.Notes/Create"),
            status(&i, "/notes.Notes/Archive"),
            status(&i, "/notes.Notes/Secret"),
        ),
        (
            Some(("documented".into(), false.into())),
            Some(("unused".into(), true.into())),
            Some(("shadow".into(), Value::Null)),
        ),
        "{i}"
    );
    // The injection in Note.meta.tag: located by name.
    let evil = [
        field(1, b"x"),
        field(3, &field(2, b"1' UNION SELECT password FROM users--")),
    ]
    .concat();
    let _ = grpc_call(&lab, lab.v4(0, 1), server.port, &evil);
    let attacker = lab.v4(0, 2);
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(attacker)),
        "{attacker} not banned: {:#?}",
        agent.events()
    );
    let ev = agent.events();
    assert!(
        ev.iter()
            .any(|e| e["client"] == attacker.to_string() && e["location"] == "protobuf:Meta.tag"),
        "no event naming the field: {ev:#?}"
    );
    // Offline, `tollgate detect --descriptor-set` names the field alike.
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(evil.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&evil);
    let raw = format!(
        "POST /notes.Notes/Create HTTP/1.1\r\nHost: api\r\nContent-Type: application/grpc\r\nContent-Length: {}\r\n\r\n{}",
        framed.len(),
        String::from_utf8(framed).unwrap()
    );
    let input = dir.path().join("requests.jsonl");
    std::fs::write(
        &input,
        format!("{}\n", serde_json::json!({"id": 1, "raw": raw})),
    )
    .unwrap();
    let offline = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(tollgate_tests::tollgate_bin())
            .args(["detect", "--requests"])
            .arg(&input)
            .args(extra)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["violations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["location"].as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let named = offline(&["--descriptor-set".as_ref(), set.as_os_str()]);
    assert!(named.iter().any(|l| l == "protobuf:Meta.tag"), "{named:?}");
    let bare = offline(&[]);
    assert!(
        !bare.is_empty() && !bare.iter().any(|l| l == "protobuf:Meta.tag"),
        "{bare:?}"
    );
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["detect", "--requests"])
        .arg(&input)
        .arg("--descriptor-set")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A trusted proxy multiplexing two clients on one h2c connection (as
/// Envoy or nginx `grpc_pass` do): each round, the guesser's call and then
/// the benign client's are in flight together, and the server answers the
/// guesser UNAUTHENTICATED after the benign client's forwarding header was
/// the connection's latest. Only the guesser is banned; the benign client
/// and the proxy never are.
#[test]
fn behind_a_multiplexing_proxy_only_the_guesser_is_banned() {
    let lab = Lab::new();
    let server = GrpcServer::start(&[lab.v4(0, 1)]);
    let port = server.port.to_string();
    let proxy = lab.v4(0, 2);
    // h2c responses come from the NIC's egress samples: every packet of
    // this long-lived connection is taken, so its HPACK stays in step.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("api_ports: [{port}]\nsampling: {{one_in: 1}}\ntrusted_proxies: [{proxy}/32]\n"),
    )
    .unwrap();
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    let (guesser, benign) = (lab.v4(1, 3), lab.v4(1, 4));
    let rounds: Vec<Vec<(IpAddr, Vec<u8>)>> = (0..12)
        .map(|i| {
            vec![
                (guesser, format!("guess-{i}").into_bytes()),
                (benign, GRPC_TOKEN.to_vec()),
            ]
        })
        .collect();
    let out = grpc_multiplexed(
        &lab,
        lab.v4(0, 1),
        server.port,
        "/notes.Notes/SlowSecret",
        &rounds,
    );
    // Before the ban: the guesser refused, the benign client served.
    assert_eq!(
        out.get(..4),
        Some(
            &[
                "error StatusCode.UNAUTHENTICATED",
                "ok",
                "error StatusCode.UNAUTHENTICATED",
                "ok"
            ]
            .map(String::from)[..]
        ),
        "{out:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || agent.policy_banned(guesser)),
        "{guesser} not banned\ncalls: {out:?}\nevents: {:#?}\nstatus: {}",
        agent.events(),
        agent.json(&["status"])
    );
    let ev = agent.events();
    assert!(
        ev.iter().any(|e| e["client"] == guesser.to_string()
            && e["proxy"] == proxy.to_string()
            && e["rule"] == "auth.credential_stuffing"),
        "no credential stuffing event for {guesser} through {proxy}: {ev:#?}"
    );
    assert!(
        !ev.iter().any(|e| e["client"] == benign.to_string()),
        "the benign client was blamed: {ev:#?}"
    );
    assert!(
        !agent.policy_banned(benign),
        "{}",
        agent.json(&["block", "ls"])
    );
    assert!(!agent.banned(proxy), "{}", agent.json(&["block", "ls"]));
}

/// One client really sends unfinished header blocks (256 KiB each, in
/// 16 KiB frames, never ended) on 80 h2c connections it keeps open: 20 MiB,
/// more than the agent's whole budget for open header blocks. Only that
/// client's blocks past its share are cut (counted); another client's
/// request after it still decodes. Before shares, the flood held the whole
/// budget and the other client's header block was cut: its request unknown.
#[test]
fn a_client_holding_header_blocks_open_cuts_only_its_own() {
    use std::io::{Read, Write};
    let lab = Lab::new();
    let (attacker, benign) = (lab.v4(0, 2), lab.v4(1, 2));
    let server_addr = lab.v4(0, 1);
    // A server that reads and drops what it gets: the socket capture sees
    // every byte as it arrives, and nothing answers or closes.
    let listener = std::net::TcpListener::bind((server_addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(100) {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let agent = Agent::start(&lab.host_if, &["--api-port", &port.to_string()]);
    let start = || {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        v.extend(frame(4, 0, 0, &[]));
        v
    };
    let connect = move |src: IpAddr| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::new(src, 0).into()).unwrap();
        s.connect(&std::net::SocketAddr::new(server_addr, port).into())
            .unwrap();
        std::net::TcpStream::from(s)
    };
    let held: Vec<std::net::TcpStream> = lab.in_client(move || {
        (0..80)
            .map(|_| {
                let mut c = connect(attacker);
                let mut bytes = start();
                // `:method: GET` over and over, 256 KiB, no END_HEADERS.
                bytes.extend(frame(1, 0x1, 1, &[0x82; 16_384]));
                for _ in 0..15 {
                    bytes.extend(frame(9, 0, 1, &[0x82; 16_384]));
                }
                c.write_all(&bytes).unwrap();
                // Paced: the agent reads each connection's blocks whole.
                std::thread::sleep(Duration::from_millis(15));
                c
            })
            .collect()
    });
    let over =
        || agent.json(&["status"])["sampling"]["flows"]["h2_header_blocks_over_share"].as_u64();
    assert!(
        eventually(Duration::from_secs(5), || over() >= Some(1)),
        "no block cut for its share: {}\n{}",
        agent.json(&["status"]),
        agent.log_text()
    );
    lab.in_client(move || {
        let mut c = connect(benign);
        let mut bytes = start();
        bytes.extend(get_frame(1, "/after-the-flood"));
        c.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let inv = || agent.json(&["inventory"]);
    assert!(
        eventually(Duration::from_secs(5), || hits(
            &inv(),
            "GET",
            "/after-the-flood"
        ) == 1),
        "the other client's request was not decoded: {}\nstatus: {}",
        inv(),
        agent.json(&["status"])
    );
    assert!(
        agent.log_text().contains("whole share of the budget"),
        "{}",
        agent.log_text()
    );
    drop(held);
}

/// An HTTP/2 frame.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET on `stream` (HPACK: static `:method GET`, `:scheme http`, `:path`
/// as a literal), ending the stream.
fn get_frame(stream: u32, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    b.extend_from_slice(path.as_bytes());
    frame(1, 0x5, stream, &b)
}

/// A pcap (Ethernet) of one TCP connection from 198.18.0.2:40000 to
/// 198.18.0.1:`port`: the handshake, then `payload` in segments of `mss`.
fn pcap(port: u16, payload: &[u8], mss: usize) -> Vec<u8> {
    let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let mut packet = |t: u32, from_client: bool, seq: u32, flags: u8, data: &[u8]| {
        let (src, dst, sport, dport) = if from_client {
            ([198, 18, 0, 2], [198, 18, 0, 1], 40000u16, port)
        } else {
            ([198, 18, 0, 1], [198, 18, 0, 2], port, 40000u16)
        };
        let mut p = vec![0u8; 12];
        p.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        p.extend_from_slice(&u16::try_from(40 + data.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(data);
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let n = u32::try_from(p.len()).unwrap().to_le_bytes();
        out.extend_from_slice(&n);
        out.extend_from_slice(&n);
        out.extend_from_slice(&p);
    };
    packet(1, true, 999, 0x02, &[]);
    packet(1, false, 5000, 0x12, &[]);
    let mut seq = 1000u32;
    for (i, c) in payload.chunks(mss).enumerate() {
        packet(2 + u32::try_from(i).unwrap(), true, seq, 0x18, c);
        seq += u32::try_from(c.len()).unwrap();
    }
    out
}

#[test]
fn detect_reads_h2c_captures() {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(4, 0, 0, &[]));
    bytes.extend(get_frame(1, "/hello"));
    bytes.extend(get_frame(3, "/items?id=1%27%20OR%20%271%27%3D%271"));
    bytes.extend(get_frame(5, "/index.html"));
    let dir = tempfile::tempdir().unwrap();
    for mss in [7, 1400] {
        let file = dir.path().join(format!("h2c-{mss}.pcap"));
        std::fs::write(&file, pcap(8080, &bytes, mss)).unwrap();
        let out = std::process::Command::new(tollgate_tests::tollgate_bin())
            .args(["detect", "--pcap"])
            .arg(&file)
            .output()
            .unwrap();
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let verdicts: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l["path"].as_str().unwrap(), l["action"].as_str().unwrap()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("/hello", "allow"),
                ("/items", "ban"),
                ("/index.html", "allow")
            ],
            "segments of {mss}: {out:?}"
        );
        assert!(lines.iter().all(|l| l["method"] == "GET"), "{lines:?}");
    }
}
