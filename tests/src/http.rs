//! A real HTTP/1.1 server and a raw client for end-to-end tests.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{Lab, eventually};

/// A minimal HTTP/1.1 server: keep-alive, pipelined requests answered in
/// order, 404 for paths starting with /missing.
pub struct HttpServer {
    /// The port it listens on (same on every address).
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Listens on the same free port on every address.
    pub fn start(addrs: &[IpAddr]) -> Self {
        let first = TcpListener::bind(SocketAddr::new(addrs[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut ls = vec![first];
        for a in &addrs[1..] {
            ls.push(TcpListener::bind(SocketAddr::new(*a, port)).unwrap());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        for l in ls {
            l.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            let served = served.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let served = served.clone();
                            thread::spawn(move || serve(s, &served));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Self { port, stop, served }
    }

    /// The paths of the requests it answered, in order.
    pub fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, served: &Mutex<Vec<String>>) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut header_checked = false;
    loop {
        // A load balancer may open the connection with a PROXY header.
        if !header_checked {
            match tollgate::api::proxyproto::parse(&buf) {
                tollgate::api::proxyproto::Header::Incomplete => {}
                tollgate::api::proxyproto::Header::Complete { len, .. } => {
                    buf.drain(..len);
                    header_checked = true;
                }
                tollgate::api::proxyproto::Header::None => header_checked = true,
            }
        }
        // Answer every complete request in the buffer, in order.
        while header_checked && !buf.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                break;
            };
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < head + len {
                break;
            }
            let path = req.path.unwrap_or("/").to_owned();
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
            });
            buf.drain(..head + len);
            served.lock().unwrap().push(path.clone());
            let (code, body) = if path.starts_with("/missing") {
                ("404 Not Found", "{\"error\":\"not found\"}".to_owned())
            } else {
                ("200 OK", format!("{{\"path\":\"{path}\"}}"))
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).is_err() || close {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `chunks` on one connection from `src` (a pause between chunks, so
/// each leaves as its own segment) and reads for a while.
pub fn raw_http(lab: &Lab, src: IpAddr, dst: SocketAddr, chunks: Vec<Vec<u8>>) -> String {
    lab.in_client(move || {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
        // A SYN lost on a busy machine is retried by the kernel after 1 s.
        sock.connect_timeout(&dst.into(), Duration::from_secs(5))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let mut s: TcpStream = sock.into();
        for c in chunks {
            s.write_all(&c).unwrap();
            thread::sleep(Duration::from_millis(60));
        }
        s.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        String::from_utf8_lossy(&read_all(&mut s, false)).into_owned()
    })
}

/// Reads until the peer closes or pauses; with `one`, a short pause after
/// the first header block ends it.
fn read_all(s: &mut TcpStream, one: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[..n]);
        if one && out.windows(4).any(|w| w == b"\r\n\r\n") {
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        }
    }
    out
}

/// A request with a classic SQL injection in the query (percent-encoded, as
/// a client library would send it).
pub fn sqli() -> Vec<u8> {
    get("/items?id=1%27%20OR%20%271%27%3D%271")
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nUser-Agent: e2e\r\n\r\n").into_bytes()
}

/// Sends one request from `src` on a new connection and returns the answer,
/// or `None` when the connection cannot be made within `timeout` (dropped).
pub fn try_http(
    lab: &Lab,
    src: IpAddr,
    dst: SocketAddr,
    req: Vec<u8>,
    timeout: Duration,
) -> Option<String> {
    lab.in_client(move || {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None).ok()?;
        sock.bind(&SocketAddr::new(src, 0).into()).ok()?;
        sock.connect_timeout(&dst.into(), timeout).ok()?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(&req).ok()?;
        let out = read_all(&mut s, true);
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    })
}

/// Python's http.server (`python3 -m http.server`) on `addr` in the root
/// namespace, serving an empty directory: a lenient real server that
/// answers every request (404 for paths that are no files) and logs each
/// request line it read, with the client's address, to [`PyServer::log`].
pub struct PyServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl PyServer {
    /// Starts it and waits (up to 10 s) until it accepts connections.
    pub fn start(addr: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", &addr.port().to_string(), "--bind"])
            .arg(addr.ip().to_string())
            .arg("--directory")
            .arg(&www)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 runs the lenient reference server");
        assert!(
            eventually(Duration::from_secs(10), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "python3 -m http.server did not come up"
        );
        Self { child, dir }
    }

    /// What the server logged so far: one line per request it read,
    /// `ADDR - - [time] "REQUEST LINE" STATUS -`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
