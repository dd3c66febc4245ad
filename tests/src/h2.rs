//! HTTP/2 cleartext (h2c) in the lab: `nghttpd` serves files on the host's
//! lab addresses, `nghttp` (prior knowledge) and `h2load` send requests
//! from the client namespace, several on one connection.

use std::{
    net::IpAddr,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Lab, free_port};

/// `nghttpd --no-tls` on the given addresses (one process each, one port);
/// killed on drop.
pub struct Nghttpd {
    /// The port it listens on.
    pub port: u16,
    children: Vec<Child>,
    /// Its document root (files `index.html`, `items`, `hello`).
    pub root: tempfile::TempDir,
}

impl Nghttpd {
    /// Starts the server on `addrs` and waits until it accepts on each.
    #[must_use]
    pub fn start(addrs: &[IpAddr]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for f in ["index.html", "items", "hello"] {
            std::fs::write(root.path().join(f), "ok\n").unwrap();
        }
        let port = free_port();
        let mut server = Self {
            port,
            children: Vec::new(),
            root,
        };
        for addr in addrs {
            let child = Command::new("nghttpd")
                .args(["--no-tls", "-d"])
                .arg(server.root.path())
                .arg(format!("--address={addr}"))
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nghttpd (Debian nghttp2-server: cargo xtask setup --test-deps)");
            server.children.push(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect((*addr, port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nghttpd did not start on {addr}:{port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `nghttp` from the client namespace: all `urls` on one h2c connection
/// (prior knowledge), bounded to 5 s. Returns the output and the `:status`
/// of each response in order of arrival.
#[must_use]
pub fn nghttp(lab: &Lab, urls: &[String]) -> (Output, Vec<u16>) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "timeout", "5", "nghttp", "-nv"])
        .args(["-t", "3"])
        .args(urls)
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("recv (stream_id="))
        .filter_map(|l| l.split(":status: ").nth(1))
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    (out, codes)
}

/// `h2load` from the client namespace: `n` requests over `clients`
/// connections (h2c), bounded to 30 s. Returns its output.
#[must_use]
pub fn h2load(lab: &Lab, n: u32, clients: u32, urls: &[String]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns, "timeout", "30", "h2load"])
        .args(["-n", &n.to_string(), "-c", &clients.to_string(), "-m", "10"])
        .args(urls)
        .output()
        .unwrap()
}
