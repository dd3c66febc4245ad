//! HTTP/2 cleartext (h2c) in the lab: `nghttpd` serves files on the host's
//! lab addresses, `nghttp` (prior knowledge) and `h2load` send requests
//! from the client namespace, several on one connection; a Python `grpcio`
//! service and client speak gRPC over h2c.

use std::{
    net::IpAddr,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Lab, free_port};

/// Waits (10 s at most) until `what` accepts connections on `addr:port`.
fn wait_accepting(addr: IpAddr, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((addr, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on {addr}:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nghttpd --no-tls` on the given addresses (one process each, one port);
/// killed on drop.
pub struct Nghttpd {
    /// The port it listens on.
    pub port: u16,
    children: Vec<Child>,
    /// Its document root (files `index.html`, `items`, `hello`).
    pub root: tempfile::TempDir,
    /// TLS: where its key and certificate are.
    keys: Option<tempfile::TempDir>,
}

impl Nghttpd {
    /// Starts the server on `addrs` and waits until it accepts on each.
    #[must_use]
    pub fn start(addrs: &[IpAddr]) -> Self {
        Self::start_with(addrs, false)
    }

    /// The same server over TLS (a self-signed certificate, ALPN `h2`):
    /// nghttpd links Debian's libssl dynamically, so the agent's TLS probes
    /// hand its plaintext on.
    #[must_use]
    pub fn start_tls(addrs: &[IpAddr]) -> Self {
        Self::start_with(addrs, true)
    }

    fn start_with(addrs: &[IpAddr], tls: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        for f in ["index.html", "items", "hello"] {
            std::fs::write(root.path().join(f), "ok\n").unwrap();
        }
        let port = free_port();
        let mut server = Self {
            port,
            children: Vec::new(),
            root,
            keys: None,
        };
        // Key and certificate outside the document root.
        server.keys = tls.then(|| tempfile::tempdir().unwrap());
        let pair = server
            .keys
            .as_ref()
            .map(|k| crate::tls::self_signed(k.path()));
        for addr in addrs {
            let mut cmd = Command::new("nghttpd");
            if pair.is_none() {
                cmd.arg("--no-tls");
            }
            cmd.arg("-d")
                .arg(server.root.path())
                .arg(format!("--address={addr}"))
                .arg(port.to_string());
            if let Some((cert, key)) = &pair {
                cmd.arg(key).arg(cert);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nghttpd (Debian nghttp2-server: cargo xtask setup --test-deps)");
            server.children.push(child);
            wait_accepting(*addr, port, "nghttpd");
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

/// `nghttp` from the client namespace: all `urls` on one connection (h2c
/// with prior knowledge, or `https://` with ALPN `h2`), bounded to 5 s. Returns the output and the `:status`
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

/// A gRPC service (Python `grpcio`, Debian's python3) on the given
/// addresses: `/notes.Notes/Create` answers every message with its own
/// bytes (no schema: raw bytes in and out); `/notes.Notes/Secret` does too
/// when the message is [`GRPC_TOKEN`], and refuses anything else with
/// `grpc-status` 16 (UNAUTHENTICATED); `/notes.Notes/SlowSecret` is
/// `Secret` answering after 0.2 s. Killed on drop.
pub struct GrpcServer {
    /// The port it listens on.
    pub port: u16,
    child: Child,
}

const GRPC_SERVER: &str = r"
import sys, time, grpc
from concurrent import futures
port = int(sys.argv[1])
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
def secret(req, ctx):
    if req != b'valid-token':
        ctx.abort(grpc.StatusCode.UNAUTHENTICATED, 'bad token')
    return req
guarded = grpc.unary_unary_rpc_method_handler(secret)
def slow(req, ctx):
    time.sleep(0.2)
    return secret(req, ctx)
slow_guarded = grpc.unary_unary_rpc_method_handler(slow)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler('notes.Notes', {'Create': echo, 'Secret': guarded, 'SlowSecret': slow_guarded}),))
for a in sys.argv[2:]:
    server.add_insecure_port(f'{a}:{port}')
server.start()
print('ready', flush=True)
server.wait_for_termination()
";

const GRPC_CLIENT: &str = r"
import sys, grpc
target, msg, method = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
gzip = grpc.Compression.Gzip if sys.argv[4:] == ['gzip'] else grpc.Compression.NoCompression
with grpc.insecure_channel(target, compression=gzip) as ch:
    call = ch.unary_unary(method)
    try:
        print('ok', call(msg, timeout=3).hex())
    except grpc.RpcError as e:
        print('error', e.code())
";

impl GrpcServer {
    /// Starts the service and waits until it accepts on each address.
    #[must_use]
    pub fn start(addrs: &[IpAddr]) -> Self {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", GRPC_SERVER, &port.to_string()])
            .args(addrs.iter().map(ToString::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with grpc (Debian python3-grpcio: cargo xtask setup --test-deps)");
        let server = Self { port, child };
        for addr in addrs {
            wait_accepting(*addr, port, "the gRPC server");
        }
        server
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message `/notes.Notes/Secret` of [`GrpcServer`] accepts.
pub const GRPC_TOKEN: &[u8] = b"valid-token";

/// One unary call of `/notes.Notes/Create` with `msg` (protobuf bytes) from
/// the client namespace, bounded to 10 s: `Ok(reply)` or `Err(status)`.
pub fn grpc_call(lab: &Lab, to: IpAddr, port: u16, msg: &[u8]) -> Result<Vec<u8>, String> {
    grpc_call_method(lab, to, port, "/notes.Notes/Create", msg)
}

/// [`grpc_call`] with the message gzip-compressed (`grpc-encoding: gzip`;
/// gRPC sends a message uncompressed when gzip would not make it smaller).
pub fn grpc_call_gzip(lab: &Lab, to: IpAddr, port: u16, msg: &[u8]) -> Result<Vec<u8>, String> {
    grpc_run(lab, to, port, "/notes.Notes/Create", msg, &["gzip"])
}

/// One unary call of `method` (`/notes.Notes/Secret`, say) on its own
/// connection, as [`grpc_call`]; `Err` holds the status (`error
/// StatusCode.UNAUTHENTICATED`).
pub fn grpc_call_method(
    lab: &Lab,
    to: IpAddr,
    port: u16,
    method: &str,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    grpc_run(lab, to, port, method, msg, &[])
}

fn grpc_run(
    lab: &Lab,
    to: IpAddr,
    port: u16,
    method: &str,
    msg: &[u8],
    extra: &[&str],
) -> Result<Vec<u8>, String> {
    let mut args = vec![format!("{to}:{port}"), hex(msg), method.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let out = python_in_client(lab, 10, GRPC_CLIENT, &args);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match text.split_once(' ') {
        Some(("ok", reply)) => Ok((0..reply.len() / 2)
            .filter_map(|i| u8::from_str_radix(reply.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()),
        _ => Err(format!(
            "{text} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

const GRPC_MUX: &str = r"
import sys, time, grpc
target, method = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(target) as ch:
    call = ch.unary_unary(method)
    for batch in sys.argv[3:]:
        futs = []
        for c in batch.split(','):
            xff, msg = c.split('=')
            futs.append(call.future(bytes.fromhex(msg), timeout=5, metadata=(('x-forwarded-for', xff),)))
            time.sleep(0.02)
        for f in futs:
            try:
                f.result()
                print('ok', flush=True)
            except grpc.RpcError as e:
                print('error', e.code(), flush=True)
";

/// A proxy that multiplexes clients on one connection, as Envoy or nginx's
/// `grpc_pass` do: from the client namespace, one gRPC channel (one h2c
/// connection) calls `method` for each round's `(client, message)` pairs,
/// each call naming its client in `X-Forwarded-For`; a round's calls are
/// all in flight (sent 20 ms apart) before the next round starts. Bounded
/// to 60 s. Returns one line per call (`ok`, or `error StatusCode...`).
#[must_use]
pub fn grpc_multiplexed(
    lab: &Lab,
    to: IpAddr,
    port: u16,
    method: &str,
    rounds: &[Vec<(IpAddr, Vec<u8>)>],
) -> Vec<String> {
    let mut args = vec![format!("{to}:{port}"), method.to_owned()];
    args.extend(rounds.iter().map(|r| {
        r.iter()
            .map(|(c, m)| format!("{c}={}", hex(m)))
            .collect::<Vec<_>>()
            .join(",")
    }));
    let out = python_in_client(lab, 60, GRPC_MUX, &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Hex digits of `bytes` (how the Python helpers take messages).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a Python `script` with `args` in the client namespace, bounded to
/// `secs` seconds.
fn python_in_client(lab: &Lab, secs: u32, script: &str, args: &[String]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns, "timeout", &secs.to_string()])
        .args(["/usr/bin/python3", "-c", script])
        .args(args)
        .output()
        .unwrap()
}

const UPGRADE_SERVER: &str = r"
import socket, sys, threading, time
addr, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(64)
def serve(c):
    buf = b''
    while b'\r\n\r\n' not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    status = b'401' if b' /secret' in buf.split(b'\r\n')[0] else b'200'
    # :status as a literal field (HPACK), on stream 1: the upgraded request.
    block = b'\x00\x07:status\x03' + status
    headers = len(block).to_bytes(3, 'big') + b'\x01\x05' + (1).to_bytes(4, 'big') + block
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n'
              + b'\x00\x00\x00\x04\x00\x00\x00\x00\x00' + headers)
    time.sleep(0.3)
    c.close()
print('ready', flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// A minimal h2c server by `Upgrade` (Python, no HTTP/2 library): it
/// answers every request `101 Switching Protocols`, its SETTINGS, then the
/// upgraded request's response on stream 1 (`:status` 401 for `/secret`,
/// else 200). Killed on drop.
pub struct UpgradeServer {
    /// The port it listens on.
    pub port: u16,
    child: Child,
}

impl UpgradeServer {
    /// Starts it on `addr` and waits until it accepts.
    #[must_use]
    pub fn start(addr: IpAddr) -> Self {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", UPGRADE_SERVER, &addr.to_string(), &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let server = Self { port, child };
        wait_accepting(addr, port, "the h2c upgrade server");
        server
    }
}

impl Drop for UpgradeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl --http2` (h2c by `Upgrade`) from the client namespace, bounded to
/// 5 s; returns its output.
#[must_use]
pub fn curl_h2c(lab: &Lab, url: &str) -> Output {
    Command::new("ip")
        .args([
            "netns", "exec", &lab.ns, "timeout", "5", "curl", "-sv", "--http2",
        ])
        .arg(url)
        .output()
        .unwrap()
}
