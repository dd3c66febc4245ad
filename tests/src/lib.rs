//! Helpers for Tollgate's root-only tests: crafted packets for
//! BPF_PROG_TEST_RUN ([`pkt`]), network labs of namespaces and veth pairs
//! ([`Lab`]), and a running agent with its CLI ([`Agent`]). Every helper
//! cleans up on drop, names what it creates uniquely, and bounds its waits.
//! Addresses come only from 198.18.0.0/15 and fd00::/8.

pub mod capture;
pub mod etcd;
pub mod fleet;
pub mod gqlbench;
pub mod h2;
pub mod h2bench;
pub mod http;
pub mod latency;
pub mod parity;
pub mod pkt;
pub mod startup;
pub mod tls;
pub mod tlsbench;

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails loudly unless running as root: these tests never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests load eBPF programs and create namespaces: run them as root (cargo xtask test)"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client namespace joined to the root namespace by a veth pair. The root
/// end (`host_if`) is where Tollgate attaches; the server listens there.
/// Each lab owns two IPv4 /24s and two IPv6 /48s so range bans can be
/// checked to drop inside and pass outside.
pub struct Lab {
    /// Client namespace name.
    pub ns: String,
    /// Root-namespace end of the veth pair.
    pub host_if: String,
    /// Index of the lab's subnets.
    pub n: u32,
}

impl Lab {
    /// Creates the namespace, the veth pair and the addresses.
    pub fn new() -> Self {
        require_root();
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 10_000;
        // Two /24s per lab: 198.18.(2k).0/24 and 198.18.(2k+1).0/24, one
        // that no interface here holds yet (a lab a killed run left behind
        // would otherwise take this lab's traffic).
        let used = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let taken = |n: u32| (n..n + 2).any(|k| used.contains(&format!(" 198.18.{k}.")));
        let n = (0..120)
            .map(|step| 2 * ((pid + id * 7 + step * 11) % 120) + 8)
            .find(|&n| !taken(n))
            .unwrap_or(2 * ((pid + id * 7) % 120) + 8);
        let ns = format!("tgt-{pid}-{id}");
        let host_if = format!("tg{pid}h{id}");
        let peer_if = format!("tg{pid}p{id}");
        let lab = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            n,
        };
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &ns]);
        for (side_ns, dev, host) in [
            (None, host_if.as_str(), 1),
            (Some(ns.as_str()), peer_if.as_str(), 2),
        ] {
            let run = |args: &[&str]| match side_ns {
                Some(ns) => {
                    let mut v = vec!["ip", "-n", ns];
                    v.extend_from_slice(args);
                    sh(&v)
                }
                None => {
                    let mut v = vec!["ip"];
                    v.extend_from_slice(args);
                    sh(&v)
                }
            };
            for (a, p) in [(lab.v4(0, host), "24"), (lab.v4(1, host), "24")] {
                run(&["addr", "add", &format!("{a}/{p}"), "dev", dev]);
            }
            for i in 0..2 {
                run(&[
                    "addr",
                    "add",
                    &format!("{}/64", lab.v6(i, host.into())),
                    "dev",
                    dev,
                    "nodad",
                ]);
            }
            run(&["link", "set", dev, "up"]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        lab
    }

    /// The client namespace's end of the veth pair.
    #[must_use]
    pub fn peer_if(&self) -> String {
        match self.host_if.rfind('h') {
            Some(i) => format!("{}p{}", &self.host_if[..i], &self.host_if[i + 1..]),
            None => self.host_if.clone(),
        }
    }

    /// Completes one TCP handshake from `src` (client namespace) to a
    /// listener this opens on `dst`, then closes: what rate-limit escalation
    /// requires of a source before it bans it.
    pub fn handshake(&self, src: IpAddr, dst: IpAddr) -> bool {
        let listener = TcpListener::bind(SocketAddr::new(dst, 0)).unwrap();
        let to = listener.local_addr().unwrap();
        let ok = self.in_client(move || {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            s.bind(&SocketAddr::new(src, 0).into()).unwrap();
            s.connect_timeout(&to.into(), Duration::from_secs(3))
                .is_ok()
        });
        let _ = listener.accept();
        ok
    }

    /// Floods `dst` with UDP from `src` (client namespace), ~500 datagrams/s,
    /// at most 3,000, until `stop` is set. Returns the sender's thread.
    pub fn udp_flood(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> thread::JoinHandle<()> {
        let path = format!("/run/netns/{}", self.ns);
        thread::spawn(move || {
            let f = File::open(path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = s.send_to(b"flood", dst);
                thread::sleep(Duration::from_millis(2));
            }
        })
    }

    /// IPv4 address `host` in the lab's subnet `i` (0 or 1).
    pub fn v4(&self, i: u32, host: u8) -> IpAddr {
        IpAddr::from([198, 18, u8::try_from(self.n + i).unwrap(), host])
    }

    /// The /24 of subnet `i`.
    pub fn v4_net(&self, i: u32) -> String {
        format!("198.18.{}.0/24", self.n + i)
    }

    /// IPv6 address `host` in the lab's /48 number `i` (0 or 1).
    pub fn v6(&self, i: u32, host: u16) -> IpAddr {
        IpAddr::from([
            0xfd00,
            0x7467,
            u16::try_from(self.n * 2 + i).unwrap(),
            0,
            0,
            0,
            0,
            host,
        ])
    }

    /// The /48 of IPv6 subnet `i`.
    pub fn v6_net(&self, i: u32) -> String {
        format!("fd00:7467:{:x}::/48", self.n * 2 + i)
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// Opens a TCP connection from `src` (inside the client namespace) to
    /// `dst:port`, exchanging one line; true if it worked within `timeout`.
    pub fn tcp_ok(&self, src: IpAddr, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        self.in_client(move || tcp_exchange(src, SocketAddr::new(dst, port), timeout).is_ok())
    }

    /// Pings `dst` from the client namespace: number of replies out of `count`.
    pub fn ping(&self, src: IpAddr, dst: IpAddr, count: u32) -> u32 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                &src.to_string(),
                &dst.to_string(),
            ])
            .output()
            .expect("ping (iputils-ping) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(',')
            .find_map(|p| {
                p.trim()
                    .strip_suffix(" received")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn tcp_exchange(src: IpAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"ping\n")?;
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf)?;
    if &buf == b"ok\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("bad reply"))
    }
}

/// A TCP server in the root namespace answering "ok\n" to every connection,
/// on all the lab's host addresses. Stops when dropped.
pub struct Server {
    /// Port it listens on (same on every address).
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Starts listening on `addrs` (one port for all).
    pub fn start(addrs: &[IpAddr]) -> Self {
        let first = TcpListener::bind(SocketAddr::new(addrs[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for a in &addrs[1..] {
            listeners.push(TcpListener::bind(SocketAddr::new(*a, port)).unwrap());
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for l in listeners {
            l.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut b = [0u8; 5];
                            if s.read_exact(&mut b).is_ok() {
                                let _ = s.write_all(b"ok\n");
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Self { port, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The ingress hook an agent attaches at. End-to-end tests whose promise
/// holds at both take one and are defined for each by [`on_both_hooks!`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP (the default).
    Xdp,
    /// TC through tcx (`--attach tc`, for hosts whose XDP hook is taken).
    Tc,
}

impl Hook {
    /// The agent flags that select this hook.
    #[must_use]
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Self::Xdp => &[],
            Self::Tc => &["--attach", "tc"],
        }
    }

    /// [`Hook::args`], and at TC a policy (written under `dir`) that takes
    /// requests at the NIC (`sampling: {stream: false}`), so that the TC
    /// request sampler, the part that differs between the hooks, is what a
    /// test sees; the XDP variant keeps the default (socket capture, which
    /// does not depend on the hook).
    #[must_use]
    pub fn nic_args(self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = self.args().iter().map(|s| (*s).to_owned()).collect();
        if self == Self::Tc {
            let p = dir.join("nic-sampling.yaml");
            std::fs::write(&p, "sampling: {stream: false}\n").unwrap();
            v.extend(["--config".to_owned(), p.display().to_string()]);
        }
        v
    }
}

/// For each `fn NAME(hook: Hook)`, the tests `NAME::xdp` and `NAME::tc`
/// (`cargo test -- NAME` runs both, `-- ::tc` every TC variant).
#[macro_export]
macro_rules! on_both_hooks {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn xdp() {
                super::$name($crate::Hook::Xdp);
            }
            #[test]
            fn tc() {
                super::$name($crate::Hook::Tc);
            }
        }
    )+};
}

/// The `tollgate` binary under test: `TOLLGATE_BIN`, or the one cargo built
/// next to this test executable.
pub fn tollgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("tollgate");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p tollgate) or set TOLLGATE_BIN",
        bin.display()
    );
    bin
}

/// A running agent with its own socket, state and pin directories.
pub struct Agent {
    child: Option<Child>,
    /// Control socket.
    pub socket: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Pin directory (removed on drop).
    pub pins: PathBuf,
    args: Vec<String>,
    /// `TOLLGATE_LOG` for the agent (none: the default, `info`).
    log_filter: Option<String>,
    _tmp: tempfile::TempDir,
    /// Where the agent's log goes.
    pub log: PathBuf,
}

impl Agent {
    /// Starts `tollgate agent --iface IF` plus `extra` flags and waits until it serves.
    pub fn start(iface: &str, extra: &[&str]) -> Self {
        Self::start_at(iface, None, None, extra)
    }

    /// [`Self::start`] with `TOLLGATE_LOG` set to `filter` (timing points
    /// for the benchmarks that read them from the log).
    pub fn start_logged(iface: &str, extra: &[&str], filter: &str) -> Self {
        Self::build(iface, None, None, extra, Some(filter.to_owned()))
    }

    /// Like [`Agent::start`], with the state directory at `state` (e.g. on a
    /// small file system) instead of a fresh temporary one.
    pub fn start_in(iface: &str, state: Option<&Path>, extra: &[&str]) -> Self {
        Self::start_at(iface, state, None, extra)
    }

    /// Like [`Agent::start_in`], with the pin directory at `pins` too.
    pub fn start_at(
        iface: &str,
        state: Option<&Path>,
        pins: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        Self::build(iface, state, pins, extra, None)
    }

    fn build(
        iface: &str,
        state: Option<&Path>,
        pins: Option<&Path>,
        extra: &[&str],
        log_filter: Option<String>,
    ) -> Self {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let pins = pins.map_or_else(
            || {
                PathBuf::from(format!(
                    "/sys/fs/bpf/tollgate-test-{}-{id}",
                    std::process::id()
                ))
            },
            Path::to_path_buf,
        );
        let socket = tmp.path().join("tollgate.sock");
        let state = state.map_or_else(|| tmp.path().join("state"), Path::to_path_buf);
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--iface".into(),
            iface.into(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--pin-dir".into(),
            pins.display().to_string(),
            "--gc-interval".into(),
            "200ms".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = tmp.path().join("agent.log");
        let mut a = Self {
            child: None,
            socket,
            state,
            pins,
            args,
            log_filter,
            _tmp: tmp,
            log,
        };
        a.spawn();
        a
    }

    /// (Re)starts the process with the same arguments.
    pub fn spawn(&mut self) {
        self.spawn_within(Duration::from_secs(20));
    }

    /// (Re)starts the process and waits up to `limit` for it to answer
    /// `status`; returns how long that took (polled every 10 ms).
    pub fn spawn_within(&mut self, limit: Duration) -> Duration {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(tollgate_bin());
        if let Some(f) = &self.log_filter {
            cmd.env("TOLLGATE_LOG", f);
        }
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            // A connect is cheap; a CLI process every 10 ms would steal CPU
            // from the agent being timed. The socket is bound only once the
            // agent has restored its state and attached.
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self.cli(&["status", "--json"]).status.success()
            {
                return started.elapsed();
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("agent exited early ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up: {}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.child
            .as_ref()
            .map(|c| nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()))
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(tollgate_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs the CLI and panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tollgate {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `--json` appended and parses the output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `ip`'s own entry in `block ls` (its `/32` or `/128`), if it has one.
    fn host_entry(&self, ip: std::net::IpAddr) -> Option<serde_json::Value> {
        let want = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
        self.json(&["block", "ls"])
            .as_array()?
            .iter()
            .find(|b| b["cidr"] == want)
            .cloned()
    }

    /// Whether `ip` has a host entry in `block ls`, of any kind.
    pub fn banned(&self, ip: std::net::IpAddr) -> bool {
        self.host_entry(ip).is_some()
    }

    /// Whether the policy engine banned `ip` (its host entry is of kind
    /// `policy`).
    pub fn policy_banned(&self, ip: std::net::IpAddr) -> bool {
        self.host_entry(ip).is_some_and(|b| b["kind"] == "policy")
    }

    /// The security events so far (`tollgate events --json`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.ok(&["events", "--json"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Kills the agent with a signal and waits for it (bounded).
    pub fn kill(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// IPv4 host bans in the agent's kernel map, from `status`.
pub fn kernel_hosts_v4(agent: &Agent) -> u64 {
    agent.json(&["status"])["maps"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|x| x["name"] == tollgate_common::maps::BLOCK4)
                .and_then(|x| x["entries"].as_u64())
        })
        .unwrap_or(0)
}

/// Every ban in `agent`'s kernel maps (hosts and ranges, both families),
/// from `status`.
pub fn kernel_bans(agent: &Agent) -> u64 {
    agent.json(&["status"])["maps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("TG_BLOCK"))
        })
        .map(|m| m["entries"].as_u64().unwrap())
        .sum()
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`); 0 when unread.
#[must_use]
pub fn proc_kb(pid: nix::unistd::Pid, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A port nothing listens on right now on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// How long a TCP exchange may take before it counts as dropped.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(700);

/// The usual lab: a client namespace, a TCP server on all four host
/// addresses, and an agent on the host end.
pub struct Setup {
    /// The namespaces and links.
    pub lab: Lab,
    /// The server.
    pub server: Server,
    /// The agent.
    pub agent: Agent,
}

/// Builds a [`Setup`], passing `extra` flags to the agent.
pub fn setup(extra: &[&str]) -> Setup {
    let lab = Lab::new();
    let server = Server::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1), lab.v6(1, 1)]);
    let agent = Agent::start(&lab.host_if, extra);
    Setup { lab, server, agent }
}

impl Setup {
    /// One TCP exchange from `src` to `dst` on the server's port.
    pub fn tcp(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.lab
            .tcp_ok(src, dst, self.server.port, EXCHANGE_TIMEOUT)
    }
    /// The client's address in IPv4 subnet `i` reaches the server there.
    pub fn v4_ok(&self, i: u32) -> bool {
        self.tcp(self.lab.v4(i, 2), self.lab.v4(i, 1))
    }
    /// The client's address in IPv6 subnet `i` reaches the server there.
    pub fn v6_ok(&self, i: u32) -> bool {
        self.tcp(self.lab.v6(i, 2), self.lab.v6(i, 1))
    }
}

/// A bare HTTP/1.1 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, "")
}

/// A bare HTTP/1.1 GET with extra header lines (each ending in `\r\n`).
pub fn http_get_with(port: u16, path: &str, headers: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut s, &mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
