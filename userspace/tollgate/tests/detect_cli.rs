//! `tollgate detect` and `tollgate policy check` as a user runs them (no
//! kernel, no root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

fn tollgate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn verdicts(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn line(id: &str, raw: &str, src: Option<&str>) -> String {
    let mut v = serde_json::json!({ "id": id, "raw": raw });
    if let Some(s) = src {
        v["src"] = Value::from(s);
    }
    v.to_string() + "\n"
}

#[test]
fn requests_get_one_verdict_each_in_the_documented_shape() {
    let input = [
        line(
            "sqli",
            "GET /items?id=1%27%20OR%20%271%27%3D%271 HTTP/1.1\r\nHost: a\r\n\r\n",
            None,
        ),
        line(
            "benign",
            "GET /search?q=select+a+union+rep HTTP/1.1\r\nHost: a\r\n\r\n",
            None,
        ),
        "this is not json\n".to_owned(),
        line(
            "xss-body",
            "POST /comments HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 48\r\n\r\n{\"text\":\"<script>alert(document.cookie)</script>\"}",
            None,
        ),
    ]
    .concat();
    let out = tollgate(&["detect", "--requests", "-"], &input);
    // A bad line is reported and the rest judged.
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    let v = verdicts(&out);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["id"], "sqli");
    assert_eq!(v[0]["action"], "ban");
    let first = &v[0]["violations"][0];
    assert!(first["rule"].as_str().unwrap().starts_with("sqli."));
    assert_eq!(first["category"], "sqli");
    assert!(first["score"].as_u64().unwrap() >= 10);
    assert_eq!(v[1]["action"], "allow");
    assert_eq!(v[1]["violations"], serde_json::json!([]));
    assert_eq!(v[2]["action"], "ban");
    assert_eq!(v[2]["violations"][0]["category"], "xss");
}

#[test]
fn weak_signals_add_up_per_src() {
    let weak = "GET /files?name=../a.txt HTTP/1.1\r\nHost: a\r\n\r\n";
    let one = tollgate(&["detect", "--requests", "-"], &line("1", weak, None));
    assert_eq!(verdicts(&one)[0]["action"], "alert");
    let input: String = (0..6)
        .map(|i| line(&i.to_string(), weak, Some("198.18.0.9")))
        .collect();
    let v = verdicts(&tollgate(&["detect", "--requests", "-"], &input));
    assert_eq!(v[0]["action"], "alert");
    assert_eq!(v.last().unwrap()["action"], "ban", "{v:#?}");
    assert!(v[1]["client_score"].as_f64().unwrap() > v[0]["client_score"].as_f64().unwrap());
}

#[test]
fn a_policy_changes_the_verdicts_and_bad_policies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, "detectors:\n  sqli: {enabled: false}\n").unwrap();
    let input = line(
        "sqli",
        "GET /items?id=1%27%20OR%20%271%27%3D%271 HTTP/1.1\r\nHost: a\r\n\r\n",
        None,
    );
    let v = verdicts(&tollgate(
        &["detect", "--policy", p.to_str().unwrap(), "--requests", "-"],
        &input,
    ));
    assert!(
        v[0]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["category"] != "sqli"),
        "{v:?}"
    );
    std::fs::write(&p, "scoring:\n  ban_threshold: -1\n").unwrap();
    let out = tollgate(&["policy", "check", p.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: scoring.ban_threshold"), "{err}");
    let out = tollgate(
        &["detect", "--policy", p.to_str().unwrap(), "--requests", "-"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let ok = tollgate(
        &[
            "policy",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.yaml"),
        ],
        "",
    );
    assert!(ok.status.success(), "{ok:?}");
}

/// Ethernet + IPv4 + TCP frame.
fn frame(
    src: [u8; 4],
    dst: [u8; 4],
    sp: u16,
    dp: u16,
    seq: u32,
    syn: bool,
    data: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64);
    let b = if syn {
        b.tcp(sp, dp, seq, 65535).syn()
    } else {
        b.tcp(sp, dp, seq, 65535).ack(1).psh()
    };
    let mut out = Vec::new();
    b.write(&mut out, data).unwrap();
    out
}

#[test]
fn a_capture_is_reassembled_and_judged() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pcap");
    let client = [198, 18, 0, 2];
    let server = [198, 18, 0, 1];
    let req = b"GET /items?id=1%27%20OR%20%271%27%3D%271 HTTP/1.1\r\nHost: a\r\n\r\n";
    let ok = b"GET /items?id=7 HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let mut frames = vec![frame(client, server, 40000, 8080, 0, true, b"")];
    // The attack split over two segments.
    frames.push(frame(client, server, 40000, 8080, 1, false, &req[..20]));
    frames.push(frame(client, server, 40000, 8080, 21, false, &req[20..]));
    frames.push(frame(server, client, 8080, 40000, 1, false, resp));
    frames.push(frame(
        client,
        server,
        40000,
        8080,
        1 + req.len() as u32,
        false,
        ok,
    ));
    let mut w =
        PcapWriter::with_header(std::fs::File::create(&path).unwrap(), PcapHeader::default())
            .unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            std::time::Duration::from_millis(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
    drop(w);
    let out = tollgate(&["detect", "--pcap", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{out:?}");
    let v = verdicts(&out);
    assert_eq!(v.len(), 2, "{v:#?}");
    assert_eq!(v[0]["action"], "ban");
    assert_eq!(v[0]["src"], "198.18.0.2");
    assert_eq!(v[0]["path"], "/items");
    assert_eq!(v[0]["port"], 8080);
    assert_eq!(v[1]["violations"], serde_json::json!([]));
    let bad = dir.path().join("not.pcap");
    std::fs::write(&bad, b"hello").unwrap();
    let out = tollgate(&["detect", "--pcap", bad.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap"));
}
