//! Tollgate as a CrowdSec bouncer, against a real CrowdSec Local API
//! (Debian's `crowdsec` package, installed by `cargo xtask setup
//! --test-deps`): the test runs its own LAPI only (`crowdsec -no-cs
//! -no-capi`) with a throwaway config and SQLite database on a free loopback
//! port, registers a bouncer and a machine with `cscli`, and stops it when
//! done.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{Agent, Lab, Server, Setup, eventually};

/// A running CrowdSec Local API with its own config directory.
struct Lapi {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

const KEY: &str = "tollgate0test0bouncer0key0123456";

impl Lapi {
    fn start() -> Self {
        let have = Command::new("sh")
            .args(["-c", "command -v crowdsec && command -v cscli"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            have,
            "crowdsec and cscli are needed: run `cargo xtask setup --test-deps` (Debian package crowdsec)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display().to_string();
        for sub in ["data", "hub", "notifications"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: .\n\
                 config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n\
                 \x20 hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/notifications/\n\
                 \x20 plugin_dir: /usr/lib/crowdsec/plugins/\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: false\n\
                 api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n\
                 \x20 server:\n    listen_uri: 127.0.0.1:{port}\n    profiles_path: {d}/profiles.yaml\n\
                 prometheus:\n  enabled: false\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("simulation.yaml"), "simulation: false\n").unwrap();
        std::fs::write(
            dir.path().join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n  - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n  - type: ban\n    duration: 4h\non_success: break\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("local_api_credentials.yaml"),
            format!("url: http://127.0.0.1:{port}/\n"),
        )
        .unwrap();
        let mut lapi = Self {
            child: None,
            dir,
            port,
        };
        // The database is created by the first cscli call; the machine's
        // credentials (for `cscli decisions`) land in the credentials file.
        lapi.cscli(&[
            "machines",
            "add",
            "tollgate-test-machine",
            "--auto",
            "--force",
        ]);
        lapi.cscli(&["bouncers", "add", "tollgate-test", "-k", KEY]);
        lapi.spawn();
        lapi
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lapi.log"))
            .unwrap();
        let child = Command::new("crowdsec")
            .arg("-c")
            .arg(self.config())
            .args(["-no-cs", "-no-capi"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the CrowdSec Local API did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cscli(&self, args: &[&str]) -> String {
        let out = Command::new("cscli")
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cscli {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CrowdSec bans as (cidr, ttl left) from `block ls`, checking their tags.
fn crowdsec_bans(agent: &Agent) -> Vec<(String, u64)> {
    agent
        .json(&["block", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["origin"] == "crowdsec")
        .map(|b| {
            assert_eq!(b["kind"], "crowdsec", "{b}");
            (
                b["cidr"].as_str().unwrap().to_owned(),
                b["ttl_remaining_secs"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn write_policy(path: &Path, iface: &str, key_file: &Path, port: u16) {
    std::fs::write(
        path,
        format!(
            "interfaces: [{iface}]\ncrowdsec:\n  lapi_url: http://127.0.0.1:{port}/\n  api_key_file: {}\n  poll: 1s\n  scopes: [ip, range]\n",
            key_file.display()
        ),
    )
    .unwrap();
}

#[test]
fn crowdsec_decisions_are_enforced_lifted_and_survive_restarts() {
    let mut lapi = Lapi::start();
    let lab = Lab::new();
    let server = Server::start(&[lab.v4(0, 1), lab.v4(1, 1), lab.v6(0, 1), lab.v6(1, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("crowdsec.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let policy = dir.path().join("policy.yaml");
    write_policy(&policy, &lab.host_if, &key_file, lapi.port);
    let out = Command::new(tollgate_tests::tollgate_bin())
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let client = lab.v4(0, 2).to_string();
    lapi.cscli(&["decisions", "add", "--ip", &client, "--duration", "1h"]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        &lab.v6_net(1),
        "--duration",
        "2h",
        "--reason",
        "scan",
    ]);
    // Not enforceable at L3: counted and skipped.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &lab.v4(1, 2).to_string(),
        "--duration",
        "1h",
        "--type",
        "captcha",
    ]);
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    let mut s = Setup { lab, server, agent };
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || crowdsec_bans(&s.agent).len()
            == 2),
        "decisions not enforced: {:?}\n{}",
        crowdsec_bans(&s.agent),
        s.agent.log_text()
    );
    eprintln!(
        "startup pull enforced within {:?} of the agent answering",
        started.elapsed()
    );
    let bans = crowdsec_bans(&s.agent);
    let ttl = |cidr: &str| bans.iter().find(|(c, _)| c == cidr).map(|(_, t)| *t);
    let t = ttl(&format!("{client}/32")).unwrap();
    assert!((3580..=3600).contains(&t), "ttl {t} for a 1h decision");
    let t = ttl(&s.lab.v6_net(1)).unwrap();
    assert!((7180..=7200).contains(&t), "ttl {t} for a 2h decision");
    assert!(!s.v4_ok(0), "banned client connects");
    assert!(!s.v6_ok(1), "client in a banned range connects");
    assert!(s.v4_ok(1), "captcha decision must not drop");
    assert!(s.v6_ok(0));
    let log = s.agent.log_text();
    assert!(
        log.contains("CrowdSec decisions applied") && log.contains("captcha=1"),
        "{log}"
    );
    assert!(!log.contains(KEY), "the API key was logged");

    // A decision added while running arrives with the next pull; a deleted
    // one is lifted.
    let other = s.lab.v6(0, 2).to_string();
    let t0 = Instant::now();
    lapi.cscli(&["decisions", "add", "--ip", &other, "--duration", "30m"]);
    assert!(
        eventually(Duration::from_secs(5), || !s.v6_ok(0)),
        "new decision not enforced"
    );
    eprintln!("new decision enforced within {:?}", t0.elapsed());
    let t0 = Instant::now();
    lapi.cscli(&["decisions", "delete", "--ip", &client]);
    assert!(
        eventually(Duration::from_secs(5), || s.v4_ok(0)),
        "deleted decision still enforced: {:?}",
        crowdsec_bans(&s.agent)
    );
    eprintln!("deleted decision lifted within {:?}", t0.elapsed());
    assert_eq!(crowdsec_bans(&s.agent).len(), 2);

    // kill -9 and restart: the bans stay enforced throughout, same TTLs.
    s.agent.kill(nix::sys::signal::Signal::SIGKILL);
    assert!(
        !s.v6_ok(0) && !s.v6_ok(1),
        "not enforced while the agent is down"
    );
    s.agent.spawn();
    assert!(!s.v6_ok(0) && !s.v6_ok(1), "not enforced after a restart");
    let after = crowdsec_bans(&s.agent);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(_, t)| *t > 1700), "{after:?}");

    // The Local API goes down: nothing changes, the agent says so.
    lapi.stop();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(crowdsec_bans(&s.agent).len(), 2);
    assert!(!s.v6_ok(0));
    assert!(
        s.agent.log_text().contains("existing bans stay enforced"),
        "{}",
        s.agent.log_text()
    );
    // While the agent is down a decision is deleted; the full set pulled
    // after its restart is authoritative, so that ban is lifted.
    s.agent.kill(nix::sys::signal::Signal::SIGKILL);
    lapi.spawn();
    lapi.cscli(&["decisions", "delete", "--ip", &other]);
    s.agent.spawn();
    assert!(
        eventually(Duration::from_secs(10), || crowdsec_bans(&s.agent).len()
            == 1),
        "{:?}\n{}",
        crowdsec_bans(&s.agent),
        s.agent.log_text()
    );
    assert!(
        s.v6_ok(0),
        "a decision deleted during the restart is still enforced"
    );
    assert!(!s.v6_ok(1));

    // Removing the section from the policy stops the bouncer and lifts its bans.
    std::fs::write(&policy, format!("interfaces: [{}]\n", s.lab.host_if)).unwrap();
    let out = s.agent.ok(&["policy", "reload"]);
    assert!(out.contains("CrowdSec bouncer stopped"), "{out}");
    assert!(crowdsec_bans(&s.agent).is_empty());
    assert!(
        s.v6_ok(1),
        "{}",
        String::from_utf8_lossy(
            &s.agent
                .cli(&["block", "test", &s.lab.v6(1, 2).to_string()])
                .stdout
        )
    );
}

#[test]
fn a_wrong_key_or_missing_lapi_is_reported_and_changes_nothing() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("crowdsec.key");
    std::fs::write(&key_file, "not-the-key\n").unwrap();
    let policy = dir.path().join("policy.yaml");
    let mut lapi = Lapi::start();
    write_policy(&policy, &lab.host_if, &key_file, lapi.port);
    let agent = Agent::start(&lab.host_if, &["--config", policy.to_str().unwrap()]);
    agent.ok(&["block", "add", &lab.v4(0, 2).to_string(), "--ttl", "1h"]);
    assert!(
        eventually(Duration::from_secs(5), || agent
            .log_text()
            .contains("answered 403")),
        "{}",
        agent.log_text()
    );
    assert!(!agent.log_text().contains("not-the-key"));
    lapi.stop();
    assert!(
        eventually(Duration::from_secs(20), || agent
            .log_text()
            .contains("cannot connect to the CrowdSec Local API")),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.json(&["block", "ls"]).as_array().unwrap().len(), 1);
    // A missing key file is a policy error with its line.
    std::fs::remove_file(&key_file).unwrap();
    let out = Command::new(tollgate_tests::tollgate_bin())
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 4: crowdsec.api_key_file"), "{err}");
}
