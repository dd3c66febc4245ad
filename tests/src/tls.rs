//! HTTPS servers for the TLS tests: Debian's nginx and HAProxy (dynamic
//! libssl) in front of a plain backend (Python's http.server), and a Python
//! `ssl` server, each with a self-signed certificate made at test time,
//! stopped on drop.

use std::{
    net::{IpAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Lab, sh};

/// A free TCP port on this host (bound and released).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = sh(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if !ss.trim().is_empty() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited ({st})");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A self-signed certificate and key in `dir`.
pub(crate) fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=api.test",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A Python http.server on loopback serving `/hello` and `/items/<n>` from
/// `dir/www`; its process and port.
fn plain_backend(dir: &std::path::Path) -> (Child, u16) {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("items")).unwrap();
    std::fs::write(www.join("hello"), "hello\n").unwrap();
    for i in 1..=5 {
        std::fs::write(www.join("items").join(i.to_string()), format!("item {i}\n")).unwrap();
    }
    let port = free_port();
    let mut backend = Command::new("python3")
        .args(["-m", "http.server", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port, "python http.server", &mut backend);
    (backend, port)
}

/// nginx serving HTTPS on `port` at the given addresses (keep-alive),
/// proxying to a Python http.server on loopback that serves `/hello` and
/// `/items/<n>`.
pub struct Nginx {
    /// The HTTPS port.
    pub port: u16,
    /// The same server over plain HTTP (for comparisons).
    pub plain_port: u16,
    nginx: Child,
    backend: Child,
    /// Where its files are.
    pub dir: tempfile::TempDir,
    /// When the nginx process was started (after its backend).
    pub spawned: Instant,
}

impl Nginx {
    /// Starts the backend and nginx (2 workers) on a free port.
    pub fn start(addrs: &[IpAddr]) -> Self {
        Self::start_on(addrs, free_port())
    }

    /// Starts the backend and nginx (2 workers) on `port` (and plain HTTP on
    /// another port).
    pub fn start_on(addrs: &[IpAddr], port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (backend, backend_port) = plain_backend(dir.path());
        let (cert, key) = self_signed(dir.path());
        let plain_port = free_port();
        let p = dir.path().display();
        let listen: String = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(_) => {
                    format!("    listen {a}:{port} ssl;\n    listen {a}:{plain_port};\n")
                }
                IpAddr::V6(_) => {
                    format!("    listen [{a}]:{port} ssl;\n    listen [{a}]:{plain_port};\n")
                }
            })
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             keepalive_timeout 30s;\n  server {{\n{listen}    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             location / {{ proxy_pass http://127.0.0.1:{backend_port}; }}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let spawned = Instant::now();
        let mut nginx = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "nginx", &mut nginx);
        Self {
            port,
            plain_port,
            nginx,
            backend,
            dir,
            spawned,
        }
    }

    /// nginx's error log.
    #[must_use]
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Pid of the master process.
    #[must_use]
    pub fn master_pid(&self) -> u32 {
        self.nginx.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (a SIGKILL
        // would leave the workers running, orphaned).
        if let Ok(pid) = i32::try_from(self.nginx.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline && matches!(self.nginx.try_wait(), Ok(None)) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

/// HAProxy terminating TLS (one process, two threads, keep-alive) in front
/// of a plain backend like [`Nginx`]'s, stopped on drop.
pub struct Haproxy {
    /// The HTTPS port.
    pub port: u16,
    haproxy: Child,
    backend: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts the backend and HAProxy on a free port at `addrs`.
    pub fn start(addrs: &[IpAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (backend, backend_port) = plain_backend(dir.path());
        let (cert, key) = self_signed(dir.path());
        // HAProxy wants the certificate and its key in one file.
        let pem = dir.path().join("both.pem");
        let mut both = std::fs::read(&cert).unwrap();
        both.extend(std::fs::read(&key).unwrap());
        std::fs::write(&pem, both).unwrap();
        let port = free_port();
        let binds: String = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(_) => format!("  bind {a}:{port} ssl crt {}\n", pem.display()),
                IpAddr::V6(_) => format!("  bind [{a}]:{port} ssl crt {}\n", pem.display()),
            })
            .collect();
        let conf = format!(
            "global\n  nbthread 2\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend api\n{binds}  default_backend app\n\
             backend app\n  server app 127.0.0.1:{backend_port}\n",
        );
        let conf_path = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_path, conf).unwrap();
        // `-db`: in the foreground, one process (no master, no daemon), so
        // killing the child stops it all.
        let mut haproxy = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "haproxy", &mut haproxy);
        Self {
            port,
            haproxy,
            backend,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

/// A Python `ssl` server (OpenSSL 3's `SSL_read_ex`/`SSL_write_ex`)
/// answering every HTTP/1.1 request with `200 ok`, keep-alive.
pub struct PyTls {
    /// The HTTPS port.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

const PY_SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

impl PyTls {
    /// Starts it on `addr`.
    pub fn start(addr: IpAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", PY_SERVER, &addr.to_string(), &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "python ssl server", &mut child);
        Self {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for PyTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python `ssl` server that serves one connection at a time, in accept
/// order (each until its client closes): a connection closed is followed
/// at once by the next queued one, on the same descriptor (the lowest free).
/// It logs `accept FD IP PORT` and `served FD IP PORT` lines. With
/// `dup2`, a finished connection's descriptor is not closed: the next
/// connection's socket is moved onto it with `dup2`.
pub struct PySequential {
    /// The HTTPS port.
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

const PY_SEQUENTIAL: &str = r#"
import os, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
log = open(sys.argv[5], "a", buffering=1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
dup2 = sys.argv[6] == "dup2"
prev = None
while True:
    raw, peer = s.accept()
    if dup2 and prev is not None:
        # The finished connection's descriptor takes the new one's socket
        # (replaced without close).
        os.dup2(raw.fileno(), prev)
        raw.close()
        raw = socket.socket(fileno=prev)
    fd = raw.fileno()
    log.write(f"accept {fd} {peer[0]} {peer[1]}\n")
    c = None
    try:
        c = ctx.wrap_socket(raw, server_side=True)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            log.write(f"served {fd} {peer[0]} {peer[1]}\n")
    except Exception as e:
        log.write(f"error {fd} {e}\n")
    finally:
        if dup2:
            prev = (c or raw).detach()
        else:
            (c or raw).close()
"#;

impl PySequential {
    /// Starts it on `addr`.
    pub fn start(addr: IpAddr, dup2: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let log = dir.path().join("server.log");
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", PY_SEQUENTIAL, &addr.to_string(), &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg(&log)
            .arg(if dup2 { "dup2" } else { "close" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "python ssl server", &mut child);
        Self {
            port,
            child,
            log,
            _dir: dir,
        }
    }

    /// Its log lines so far.
    #[must_use]
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Connections waiting in its accept queue.
    #[must_use]
    pub fn queued(&self) -> usize {
        // `ss -Hltn`: State Recv-Q ...; for a listener Recv-Q is the queue.
        sh(&["ss", "-Hltn", &format!("sport = :{}", self.port)])
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PySequential {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PY_CLIENT: &str = r#"
import socket, ssl, sys
src, dst, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.create_connection((dst, port), timeout=20, source_address=(src, 0))
c = ctx.wrap_socket(raw)
c.sendall(f"GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
got = b""
while not got.endswith(b"ok\n"):
    d = c.recv(4096)
    if not d:
        break
    got += d
print(got.split(b" ")[1].decode() if got.startswith(b"HTTP/") else "none", flush=True)
if sys.argv[5] == "hold":
    sys.stdin.read()
c.close()
"#;

/// An HTTPS client in the lab's client namespace, from `src`: one request
/// for `path`, then (with `hold`) the connection stays open until the
/// child's stdin is closed. Prints the status code.
#[must_use]
pub fn py_client(lab: &Lab, src: IpAddr, dst: IpAddr, port: u16, path: &str, hold: bool) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns, "python3", "-c", PY_CLIENT])
        .arg(src.to_string())
        .arg(dst.to_string())
        .arg(port.to_string())
        .arg(path)
        .arg(if hold { "hold" } else { "close" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// curl from the lab's client namespace (insecure: self-signed), each URL
/// in turn on one connection (keep-alive); prints the status codes.
#[must_use]
pub fn curl(lab: &Lab, urls: &[String]) -> Output {
    curl_with(lab, &[], urls)
}

/// [`curl`] with extra arguments (headers) before the URLs.
#[must_use]
pub fn curl_with(lab: &Lab, extra: &[&str], urls: &[String]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns, "curl", "-sk"])
        .args(["--connect-timeout", "2", "-m", "5"])
        .args(["-w", "%{http_code}\\n"])
        .args(extra);
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    cmd.output().unwrap()
}

/// Waits until the agent reports a probed libssl.
pub fn wait_probed(agent: &crate::Agent) {
    let probed = crate::eventually(Duration::from_secs(5), || {
        let st = agent.json(&["status"]);
        st["tls"]["libraries"].as_array().is_some_and(|l| {
            l.iter().any(|x| {
                x["path"].as_str().is_some_and(|p| p.contains("libssl"))
                    && x["functions"].as_array().is_some_and(|f| f.len() >= 2)
            })
        })
    });
    assert!(
        probed,
        "no TLS library probed: {}\n{}",
        agent.json(&["status"]),
        agent.log_text()
    );
}
