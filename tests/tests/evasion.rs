//! Requests that a lenient real server (Python's http.server) accepts must
//! not slip past the agent: each evasive form of one SQL injection, sent by
//! its own client over a real connection, bans that client live, and
//! `tollgate detect` says "ban" for the same bytes offline.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use tollgate_tests::{
    Agent, Lab, eventually,
    http::{PyServer, raw_http},
    sh, tollgate_bin,
};

const Q: &str = "/items?id=1%27%20OR%20%271%27%3D%271";

/// The evasive forms, each one request.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "control byte in a header value",
            format!("GET {Q} HTTP/1.1\r\nHost: api.test\r\nX-Note: a\x01b\x1b[0m\r\n\r\n")
                .into_bytes(),
        ),
        (
            "tab-separated request line",
            format!("GET\t{Q}\tHTTP/1.1\r\nHost: api.test\r\n\r\n").into_bytes(),
        ),
        ("HTTP/0.9 request line", format!("GET {Q}\r\n").into_bytes()),
        (
            "bare LF line ends",
            format!("GET {Q} HTTP/1.1\nHost: api.test\nUser-Agent: x\n\n").into_bytes(),
        ),
        (
            "obs-fold header",
            format!("GET {Q} HTTP/1.1\r\nHost: api.test\r\nX-Long: a\r\n  folded\r\n\r\n")
                .into_bytes(),
        ),
        (
            "leading blank lines",
            format!("\r\n\r\nGET {Q} HTTP/1.1\r\nHost: api.test\r\n\r\n").into_bytes(),
        ),
    ]
}

#[test]
fn evasive_requests_python_serves_are_banned_live_and_offline() {
    let lab = Lab::new();
    let server = lab.v4(0, 1);
    // A free port for python: bind, note, release.
    let port = std::net::TcpListener::bind(SocketAddr::new(server, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dst = SocketAddr::new(server, port);
    let _py = PyServer::start(dst);
    let agent = Agent::start(&lab.host_if, &["--api-port", &port.to_string()]);
    let peer = lab.peer_if();

    let mut missed = Vec::new();
    for (k, (what, req)) in cases().into_iter().enumerate() {
        // One client address per case: a ban from one case cannot hide
        // another.
        let src = lab.v4(0, 20 + u8::try_from(k).unwrap());
        sh(&[
            "ip",
            "-n",
            &lab.ns,
            "addr",
            "add",
            &format!("{src}/24"),
            "dev",
            &peer,
        ]);
        let answer = raw_http(&lab, src, dst, vec![req.clone()]);
        // Python answered it: the request reached a server that acts on it
        // (leading blank lines are skipped by nginx and node, not Python;
        // HTTP/0.9 answers carry no status line and depend on the version).
        assert!(
            !answer.is_empty() || what.starts_with("leading") || what.contains("0.9"),
            "{what}: python did not answer"
        );

        let want = format!("{src}/32");
        let live = eventually(Duration::from_secs(5), || {
            agent
                .json(&["block", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["cidr"] == want)
        });
        let line = serde_json::json!({"id": what, "raw": String::from_utf8_lossy(&req)});
        let mut child = Command::new(tollgate_bin())
            .args(["detect", "--requests", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let offline: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or(&[]))
                .unwrap_or_default();
        if !live || offline["action"] != "ban" {
            missed.push(format!(
                "{what}: live banned={live}, offline={}",
                offline["action"]
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "evasions not judged alike:\n{}\nstatus: {}\nevents: {:#?}",
        missed.join("\n"),
        agent.json(&["status"]),
        agent.events()
    );
}
