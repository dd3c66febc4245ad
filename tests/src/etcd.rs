//! A real etcd for the fleet tests and benchmark (Debian's `etcd-server`,
//! installed by `cargo xtask setup --test-deps`): one member, or a cluster
//! of several, on free loopback ports with throwaway data directories,
//! killed on drop. Each member also listens on 127.0.0.2, so that one
//! agent's link to etcd can be cut ([`Cut`]) while the others keep theirs.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{eventually, free_port};

/// An etcd member on loopback; restartable on the same data directory.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    name: String,
    /// `--initial-cluster`.
    initial: String,
    /// More flags for every start.
    extra: Vec<String>,
}

impl Etcd {
    /// Starts a one-member etcd on free loopback ports with a fresh data
    /// directory.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more flags (limits such as
    /// `--max-request-bytes`).
    #[must_use]
    pub fn start_with(flags: &[&str]) -> Self {
        let mut e = Self::member("t");
        e.initial = format!("t={}", e.peer_url());
        e.extra = flags.iter().map(|f| (*f).to_owned()).collect();
        e.spawn();
        e
    }

    /// Starts a cluster of `n` members (all launched, then each waited for:
    /// a member needs a quorum to answer).
    #[must_use]
    pub fn cluster(n: usize) -> Vec<Self> {
        let mut members: Vec<Self> = (0..n).map(|i| Self::member(&format!("m{i}"))).collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial.clone_from(&initial);
            m.launch();
        }
        for m in &members {
            m.wait_up();
        }
        members
    }

    fn member(name: &str) -> Self {
        let have = Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            have,
            "etcd is needed: run `cargo xtask setup --test-deps` (Debian package etcd-server)"
        );
        Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
            name: name.to_owned(),
            initial: String::new(),
            extra: Vec::new(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    /// Its client URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Its client URL on 127.0.0.2, the address a [`Cut`] drops.
    #[must_use]
    pub fn cut_url(&self) -> String {
        format!("http://127.0.0.2:{}", self.client)
    }

    /// Its client port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.client
    }

    /// (Re)starts the process on the same data directory.
    pub fn spawn(&mut self) {
        self.launch();
        self.wait_up();
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(&mut self) {
        let peer = self.peer_url();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("{},{}", self.url(), self.cut_url()),
            ])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--log-level", "warn"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the member takes a write.
    pub fn wait_up(&self) {
        assert!(
            eventually(Duration::from_secs(15), || self.put_raw("/probe", b"1")),
            "etcd did not come up: {}",
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        );
    }

    /// Kills the process (the data directory stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes a key directly through etcd's JSON gateway (as a hostile or
    /// broken writer would); true when etcd took it.
    pub fn put_raw(&self, key: &str, value: &[u8]) -> bool {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        );
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let req = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200") && out.contains("revision")
    }
}

impl Etcd {
    /// Writes many keys, 100 per transaction, through the JSON gateway;
    /// true when etcd took them all.
    pub fn put_many(&self, kvs: &[(String, Vec<u8>)]) -> bool {
        put_many_on(self.client, kvs)
    }

    /// Bytes in its data directory (etcd's disk use).
    #[must_use]
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |d| {
                d.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map_or(0, |m| m.len()),
                    })
                    .sum()
            })
        }
        walk(self.dir.path())
    }

    /// Deletes every key under `prefix` behind the agents' backs (what an
    /// operator's `etcdctl del --prefix` or a wipe does); true when etcd
    /// answered.
    pub fn delete_prefix(&self, prefix: &str) -> bool {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        self.post(
            "/v3/kv/deleterange",
            &format!(
                r#"{{"key":"{}","range_end":"{}"}}"#,
                b64(prefix.as_bytes()),
                b64(&end)
            ),
        )
        .contains("revision")
    }

    /// Whether etcd holds `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.post(
            "/v3/kv/range",
            &format!(r#"{{"key":"{}","count_only":true}}"#, b64(key.as_bytes())),
        )
        .contains(r#""count":"1""#)
    }

    /// The value etcd holds under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.post(
            "/v3/kv/range",
            &format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes())),
        );
        let body = out.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        unb64(v["kvs"][0]["value"].as_str()?)
    }

    /// Puts `puts` and deletes `deletes` in one transaction (what an agent's
    /// unban writes: its tombstone and the record's deletion); true when
    /// etcd took it.
    pub fn txn(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> bool {
        let ops: Vec<String> = puts
            .iter()
            .map(|(k, v)| put_op(k, v))
            .chain(deletes.iter().map(|k| {
                format!(
                    r#"{{"requestDeleteRange":{{"key":"{}"}}}}"#,
                    b64(k.as_bytes())
                )
            }))
            .collect();
        self.post(
            "/v3/kv/txn",
            &format!(r#"{{"success":[{}]}}"#, ops.join(",")),
        )
        .contains("revision")
    }

    fn post(&self, path: &str, body: &str) -> String {
        post_on(self.client, path, body)
    }
}

/// Standard base64 (as etcd's gateway writes values) decoded.
fn unb64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

fn post_on(port: u16, path: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// [`Etcd::put_many`] to the member serving on loopback `port` (from a
/// thread that does not own the member).
pub fn put_many_on(port: u16, kvs: &[(String, Vec<u8>)]) -> bool {
    kvs.chunks(100).all(|chunk| {
        let ops: Vec<String> = chunk.iter().map(|(k, v)| put_op(k, v)).collect();
        post_on(
            port,
            "/v3/kv/txn",
            &format!(r#"{{"success":[{}]}}"#, ops.join(",")),
        )
        .contains("revision")
    })
}

/// Drops (silently, as a partition does) the traffic to and from the
/// members' 127.0.0.2 addresses on the given client ports; lifted on drop.
pub struct Cut {
    table: String,
}

impl Cut {
    /// Cuts every link to `ports` on 127.0.0.2.
    #[must_use]
    pub fn new(ports: &[u16]) -> Self {
        let table = format!("tollgate_cut_{}", std::process::id());
        let set = ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let nft = |rule: &str| {
            let ok = Command::new("sh")
                .args(["-c", &format!("nft {rule}")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "nft refused: {rule}");
        };
        nft(&format!("add table inet {table}"));
        nft(&format!(
            "'add chain inet {table} out {{ type filter hook output priority 0; }}'"
        ));
        nft(&format!(
            "'add rule inet {table} out ip daddr 127.0.0.2 tcp dport {{ {set} }} drop'"
        ));
        nft(&format!(
            "'add rule inet {table} out ip saddr 127.0.0.2 tcp sport {{ {set} }} drop'"
        ));
        Self { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One put in etcd's JSON gateway's transaction format.
fn put_op(key: &str, value: &[u8]) -> String {
    format!(
        r#"{{"requestPut":{{"key":"{}","value":"{}"}}}}"#,
        b64(key.as_bytes()),
        b64(value)
    )
}
