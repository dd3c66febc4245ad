//! Real attack tools against a lab API (tests/scripts/labapp.py: a real
//! SQLite injection and forgotten files) behind the agent with its built-in
//! policy, dressed as a browser and on keep-alive connections, where the
//! packet sampler once let them hide. Each tool first runs without the
//! agent, to show that the lab gives it something to find.
//!
//! sqlmap (Debian `sqlmap`), gobuster (`gobuster`, with dirb's `small.txt`
//! from `dirb`) and wrk (`wrk`), installed by `cargo xtask setup --test-deps`.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use tollgate_tests::{Agent, Lab, eventually, free_port};

/// The tools are heavy: one test at a time, whatever the harness's threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0";

struct App {
    child: Child,
    log: tempfile::NamedTempFile,
    addr: SocketAddr,
}

impl App {
    fn start(ip: IpAddr) -> Self {
        let addr = SocketAddr::new(ip, free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/labapp.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(ip.to_string())
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("python3 runs the lab app");
        assert!(
            eventually(Duration::from_secs(10), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "the lab app did not come up"
        );
        Self { child, log, addr }
    }

    /// Requests the app answered from `client`.
    fn served(&self, client: IpAddr) -> usize {
        let prefix = format!("{client} ");
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `args` in the lab's client namespace for at most `secs` seconds
/// (then SIGINT, SIGKILL 5 s later) and returns what it printed.
fn run_tool(lab: &Lab, secs: u32, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["-s", "INT", "-k", "5", &secs.to_string()])
        .args(["ip", "netns", "exec", &lab.ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask setup --test-deps)", args[0]));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sqlmap(lab: &Lab, app: &App, out: &Path) -> String {
    let url = format!("http://{}/api/items?id=1", app.addr);
    run_tool(
        lab,
        120,
        &[
            "sqlmap",
            "-u",
            &url,
            "--batch",
            "--keep-alive",
            "--user-agent",
            BROWSER,
            "--timeout",
            "3",
            "--retries",
            "0",
            "--disable-coloring",
            "--output-dir",
            &out.display().to_string(),
        ],
    )
}

/// What sqlmap prints once it has confirmed an injection.
fn sqlmap_confirmed(out: &str) -> bool {
    out.contains("identified the following injection point")
        || out.contains("is vulnerable")
        || out.contains("appears to be")
}

#[test]
fn sqlmap_never_confirms_the_injection() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let client = lab.v4(0, 2);

    // Without the agent sqlmap finds the injection: the lab is a real target.
    let dir = tempfile::tempdir().unwrap();
    {
        // (An app of its own: sqlmap's time-based probes keep SQLite busy.)
        let app = App::start(lab.v4(0, 1));
        let bare = sqlmap(&lab, &app, &dir.path().join("bare"));
        assert!(
            sqlmap_confirmed(&bare),
            "sqlmap found nothing without the agent:\n{bare}"
        );
    }

    let app = App::start(lab.v4(0, 1));
    let port = app.addr.port().to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let before = app.served(client);
    let out = sqlmap(&lab, &app, &dir.path().join("guarded"));
    let reached = app.served(client) - before;
    assert!(
        !sqlmap_confirmed(&out),
        "sqlmap confirmed the injection through the agent ({reached} requests reached the app):\n{out}"
    );
    assert!(
        eventually(Duration::from_secs(5), || agent.banned(client)),
        "sqlmap's address is not banned ({reached} requests reached the app)\nevents: {:#?}\n{out}",
        agent.events()
    );
    eprintln!("sqlmap: {reached} requests reached the app before the ban");
}

fn gobuster(lab: &Lab, app: &App, secs: u32) -> String {
    let url = format!("http://{}/", app.addr);
    run_tool(
        lab,
        secs,
        &[
            "gobuster",
            "dir",
            "-q",
            "-z",
            "--no-error",
            "-u",
            &url,
            "-w",
            "/usr/share/dirb/wordlists/small.txt",
            "-a",
            BROWSER,
            "-t",
            "4",
            "--timeout",
            "2s",
        ],
    )
}

/// The forgotten files gobuster reported (its lines start with a terminal
/// escape; the name is followed by spaces and the status).
fn found(out: &str) -> Vec<&str> {
    ["/backup ", "/backups ", "/dump ", "/cgi-bin/ "]
        .into_iter()
        .filter(|p| out.lines().any(|l| l.contains(p) && l.contains("Status:")))
        .collect()
}

#[test]
fn gobuster_is_banned_before_it_finds_a_forgotten_file() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let client = lab.v4(0, 2);
    {
        let app = App::start(lab.v4(0, 1));
        let bare = gobuster(&lab, &app, 120);
        assert!(
            found(&bare).len() == 4,
            "gobuster did not find the forgotten files without the agent:\n{bare}"
        );
    }

    let app = App::start(lab.v4(0, 1));
    let port = app.addr.port().to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);
    let before = app.served(client);
    // Once banned, every request times out: the run is cut at 30 s.
    let out = gobuster(&lab, &app, 30);
    let reached = app.served(client) - before;
    assert!(
        found(&out).is_empty(),
        "gobuster found {:?} through the agent ({reached} requests reached the app):\n{out}",
        found(&out)
    );
    assert!(
        agent.banned(client),
        "gobuster's address is not banned ({reached} requests reached the app)\nevents: {:#?}",
        agent.events()
    );
    assert!(
        reached < 300,
        "{reached} requests reached the app before the ban"
    );
    eprintln!("gobuster: {reached} requests reached the app before the ban");
}

#[test]
fn a_benign_client_at_full_speed_is_never_banned() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let app = App::start(lab.v4(0, 1));
    let client = lab.v4(0, 2);
    let port = app.addr.port().to_string();
    let agent = Agent::start(&lab.host_if, &["--api-port", &port]);

    let url = format!("http://{}/api/items?id=3", app.addr);
    let ua = format!("User-Agent: {BROWSER}");
    let out = run_tool(
        &lab,
        30,
        &[
            "wrk",
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            "5s",
            "--timeout",
            "2s",
            "-H",
            &ua,
            &url,
        ],
    );
    let served = app.served(client);
    assert!(served > 200, "wrk got only {served} answers:\n{out}");
    assert!(
        !out.contains("Non-2xx") && !out.contains("Socket errors"),
        "wrk saw errors:\n{out}"
    );
    assert!(
        !agent.banned(client),
        "a benign client was banned\nevents: {:#?}",
        agent.events()
    );
    eprintln!("wrk: {served} requests answered, no ban");
}
