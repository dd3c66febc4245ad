//! The agent's decisions over in-memory kernel maps ([`MemMaps`]) and a store
//! in a temporary directory: no root, no kernel. Each test checks what an
//! operator would: `block ls`, the kernel entry, the stored record.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tollgate_common::{BanReason, BlockEntry, BucketKey, Mode, RateEvent, Reason};
use tollgate_detect::{Action, Category, Location, Violation};

use super::{AgentState, Dirs};
use crate::{
    agent::{enforce::Finding, maps::MemMaps, ratelimit::RateState},
    clock,
    crowdsec::Wanted,
    engine::{Decision, ScoringPolicy},
    events::{EventLog, EventsPolicy},
    proto::{Request, Response},
    store::{BanRecord, RedbStore, Store},
};

fn net(s: &str) -> IpNet {
    crate::net::parse_net(s).unwrap()
}

/// An agent over empty in-memory maps and a fresh store.
struct Agent {
    state: AgentState<MemMaps>,
    dir: tempfile::TempDir,
}

impl Agent {
    fn new(mode: Mode) -> Self {
        Self::with(MemMaps::new(mode), Vec::new())
    }

    fn with(maps: MemMaps, trusted: Vec<IpNet>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Box<dyn Store> = Box::new(RedbStore::open(dir.path()).unwrap());
        Self::over(maps, trusted, store, dir)
    }

    fn over(
        maps: MemMaps,
        trusted: Vec<IpNet>,
        store: Box<dyn Store>,
        dir: tempfile::TempDir,
    ) -> Self {
        let mut state = AgentState::new(
            maps,
            Some(store),
            None,
            Dirs::default(),
            RateState::default(),
            trusted,
        );
        state.host_addrs = || vec!["192.0.2.254".parse().unwrap()];
        state.reconcile();
        Self { state, dir }
    }

    fn ok(&mut self, req: Request) -> serde_json::Value {
        let r = self.state.handle(req);
        assert!(r.ok, "refused: {:?}", r.error);
        r.data.unwrap_or_default()
    }

    fn refused(&mut self, req: Request) -> String {
        let r: Response = self.state.handle(req);
        assert!(!r.ok, "accepted: {:?}", r.data);
        r.error.unwrap_or_default()
    }

    fn ban(&mut self, cidr: &str, ttl_secs: Option<u64>) -> serde_json::Value {
        self.ok(Request::BlockAdd {
            cidr: cidr.into(),
            ttl_secs,
            reason: None,
            force: false,
        })
    }

    fn allow(&mut self, cidr: &str) {
        self.ok(Request::AllowAdd {
            cidr: cidr.into(),
            reason: None,
            force: false,
        });
    }

    /// `block ls --json`.
    fn ls(&mut self) -> Vec<serde_json::Value> {
        self.ok(Request::BlockLs).as_array().unwrap().clone()
    }

    fn kernel(&self, cidr: &str) -> Option<BlockEntry> {
        self.state.maps().blocks.get(&net(cidr)).copied()
    }

    fn stored(&self) -> Vec<BanRecord> {
        self.state.store.as_ref().unwrap().bans().unwrap()
    }

    /// The agent restarted: same kernel maps, store reopened.
    fn restart(self) -> Self {
        let Self { state, dir } = self;
        let AgentState { maps, store, .. } = state;
        drop(store);
        let store: Box<dyn Store> = Box::new(RedbStore::open(dir.path()).unwrap());
        Self::over(maps, Vec::new(), store, dir)
    }
}

/// `ttl_remaining_secs` of a ban view is `want`, or a second or two less
/// when the clock ticked since the ban was made.
fn assert_ttl(view: &serde_json::Value, want: u64) {
    let ttl = view["ttl_remaining_secs"].as_u64().unwrap();
    assert!(ttl <= want && ttl + 2 >= want, "ttl {ttl}, want {want}");
}

/// A CrowdSec decision for `s` until `expires_at`.
fn wanted(s: &str, expires_at: u64, reason: &str) -> Wanted {
    Wanted {
        net: net(s),
        expires_at,
        reason: reason.into(),
    }
}

fn kind_of(e: &BlockEntry) -> Option<BanReason> {
    BanReason::from_u32(e.reason)
}

#[test]
fn a_manual_ban_is_listed_enforced_stored_and_lifted() {
    let mut a = Agent::new(Mode::Enforce);
    let view = a.ban("192.0.2.7", Some(600));
    assert_eq!(view["cidr"], "192.0.2.7/32");
    assert_eq!(view["kind"], "manual");
    assert_ttl(&view, 600);

    let ls = a.ls();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["origin"], "cli");
    let k = a.kernel("192.0.2.7/32").expect("ban in the kernel map");
    assert_eq!(kind_of(&k), Some(BanReason::Manual));
    assert_ne!(
        k.expires_ns, 0,
        "a ban with a TTL expires in the kernel too"
    );
    assert_eq!(a.stored().len(), 1);
    assert!(a.state.is_banned("192.0.2.7".parse().unwrap()));

    a.ok(Request::BlockRm {
        cidr: "192.0.2.7".into(),
        local: false,
        exist: false,
    });
    assert!(a.ls().is_empty());
    assert!(a.kernel("192.0.2.7/32").is_none());
    assert!(a.stored().is_empty());
    assert!(!a.state.is_banned("192.0.2.7".parse().unwrap()));
    let e = a.refused(Request::BlockRm {
        cidr: "192.0.2.7".into(),
        local: false,
        exist: false,
    });
    assert!(e.contains("is not banned"), "{e}");
}

#[test]
fn a_range_ban_covers_its_hosts() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("198.51.100.0/24", None);
    assert!(a.state.is_banned("198.51.100.42".parse().unwrap()));
    assert!(!a.state.is_banned("198.51.101.1".parse().unwrap()));
    assert_eq!(a.state.maps().blocks[&net("198.51.100.0/24")].expires_ns, 0);
}

#[test]
fn a_full_kernel_map_refuses_the_ban_and_the_store_keeps_nothing() {
    let mut a = Agent::new(Mode::Enforce);
    a.state.maps.full = true;
    let e = a.refused(Request::BlockAdd {
        cidr: "192.0.2.9".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(e.contains("kernel refused"), "{e}");
    assert!(a.ls().is_empty());
    assert!(a.stored().is_empty(), "the store write is undone");
}

/// A manual ban on `cidr` whose time was up a second before `now`.
fn ended_manual(cidr: &str, now: u64) -> BanRecord {
    BanRecord {
        cidr: net(cidr),
        kind: BanReason::Manual,
        reason: "due".into(),
        origin: "cli".into(),
        created_at: now - 100,
        created_at_ms: None,
        expires_at: Some(now - 1),
        offences: 1,
        host: None,
        also: Vec::new(),
    }
}

#[test]
fn expired_bans_are_collected_everywhere_and_live_ones_stay() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.1", Some(3600));
    let now = clock::unix_now();
    a.state.put_ban(ended_manual("192.0.2.2", now)).unwrap();
    assert_eq!(a.state.next_expiry(), Some(now - 1));
    assert_eq!(a.state.gc(), 1);
    let ls = a.ls();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["cidr"], "192.0.2.1/32");
    assert!(a.kernel("192.0.2.2/32").is_none());
    assert_eq!(a.stored().len(), 1);
    assert_eq!(a.state.gc(), 0, "nothing else is due");
}

#[test]
fn allowlisted_sources_refuse_bans_unless_forced() {
    let mut a = Agent::new(Mode::Enforce);
    a.allow("10.0.0.0/8");
    let e = a.refused(Request::BlockAdd {
        cidr: "10.1.2.3".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(e.contains("overlaps allowlist entry 10.0.0.0/8"), "{e}");
    assert!(a.ls().is_empty());
    assert!(a.state.maps().allows.contains_key(&net("10.0.0.0/8")));
    a.ok(Request::BlockAdd {
        cidr: "10.1.2.3".into(),
        ttl_secs: None,
        reason: None,
        force: true,
    });
    assert_eq!(a.ls().len(), 1);
}

#[test]
fn trusted_proxies_are_never_banned_by_the_agent() {
    let proxy = net("192.0.2.10");
    let mut a = Agent::with(MemMaps::new(Mode::Enforce), vec![proxy]);
    let e = a.refused(Request::BlockAdd {
        cidr: "192.0.2.0/24".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(e.contains("covers trusted proxy 192.0.2.10"), "{e}");
    let out = a
        .state
        .policy_ban(proxy, &finding(proxy, None), &ScoringPolicy::default());
    assert_eq!(
        out,
        super::super::enforce::BanOutcome::NotEnforced("trusted proxy".into())
    );
    let mut maps = MemMaps::new(Mode::Enforce);
    maps.handshakes.insert(key_of("192.0.2.10").addr, 1);
    a.state.maps = maps;
    a.state.on_rate_event(&rate_event("192.0.2.10", 1));
    a.state
        .on_rate_event(&rate_event("192.0.2.10", 11_000_000_000));
    assert!(a.ls().is_empty());
    assert!(a.state.maps().blocks.is_empty());
}

fn finding(client: IpNet, unverified: Option<&'static str>) -> Finding {
    Finding {
        client: client.addr(),
        proxy: None,
        flow: None,
        port: 8080,
        route: "GET /users/{id}".into(),
        decision: Decision {
            violations: vec![Violation {
                rule: "sqli.union",
                category: Category::Sqli,
                score: 12,
                location: Location::Request,
                evidence: "union select".into(),
            }],
            action: Action::Ban,
            client_score: 12.0,
            ban: Some(client),
        },
        unverified,
        conn_since_ns: None,
    }
}

fn events(dir: &std::path::Path) -> (Mutex<EventLog>, std::path::PathBuf) {
    let path = dir.join("events.jsonl");
    (
        Mutex::new(EventLog::open(path.clone(), EventsPolicy::default()).unwrap()),
        path,
    )
}

/// The fleet's allow entries: applied beside this host's own (which win),
/// removed when the fleet removes them, and a full list replaces the
/// fleet's entries held here.
#[test]
fn fleet_allow_entries_come_and_go() {
    let mut a = Agent::new(Mode::Enforce);
    let fleet = |c: &str| crate::store::AllowRecord {
        cidr: net(c),
        reason: "office".into(),
        origin: crate::cluster::fleet_origin("host-a"),
        created_at: 1,
    };
    a.allow("198.51.100.1");
    assert!(
        !a.state.cluster_allow(fleet("198.51.100.1")),
        "the local entry wins"
    );
    assert!(a.state.cluster_allow(fleet("198.51.100.2")));
    assert!(a.state.allow_overlap(&net("198.51.100.2")).is_some());
    assert!(
        !a.state.cluster_unallow(&net("198.51.100.1")),
        "not the fleet's"
    );
    a.state.cluster_allows(vec![fleet("198.51.100.3")]);
    assert!(a.state.allow_overlap(&net("198.51.100.2")).is_none());
    assert!(a.state.allow_overlap(&net("198.51.100.3")).is_some());
    assert!(a.state.allow_overlap(&net("198.51.100.1")).is_some());
    assert!(a.state.cluster_unallow(&net("198.51.100.3")));
    assert!(a.state.allow_overlap(&net("198.51.100.3")).is_none());
}

/// A fleet record for a prefix this host already bans (its own forced ban)
/// is checked like a fresh one: over an allow entry or a trusted proxy the
/// fleet's decision is refused on every path (a watched record, a full
/// read), and the kernel entry stays this host's.
#[test]
fn fleet_records_merged_onto_a_held_ban_are_checked_like_fresh_ones() {
    let proxy = net("192.0.2.10");
    let mut a = Agent::with(MemMaps::new(Mode::Enforce), vec![proxy]);
    let spec = crate::policy::ClusterSpec {
        host_id: Some("host-a".into()),
        ..crate::policy::ClusterSpec::default()
    };
    let status = std::sync::Arc::new(std::sync::Mutex::new(crate::cluster::ClusterStatus {
        cfg: Some(crate::cluster::ClusterConfig::from_spec(&spec, "x")),
        ..crate::cluster::ClusterStatus::default()
    }));
    a.state.set_cluster(status.clone());
    a.allow("198.51.100.0/24");
    for cidr in ["198.51.100.7", "192.0.2.10"] {
        a.ok(Request::BlockAdd {
            cidr: cidr.into(),
            ttl_secs: Some(60),
            reason: None,
            force: true,
        });
    }
    let now = clock::unix_now();
    let fleet = |cidr: &str| BanRecord {
        cidr: net(cidr),
        kind: BanReason::Policy,
        reason: "sqli".into(),
        origin: "agent".into(),
        created_at: now,
        created_at_ms: None,
        expires_at: Some(now + 86_400),
        offences: 1,
        host: Some("host-b".into()),
        also: Vec::new(),
    };
    let before: Vec<_> = ["198.51.100.7/32", "192.0.2.10/32"]
        .iter()
        .map(|c| a.kernel(c).unwrap().expires_ns)
        .collect();
    a.state
        .cluster_put_many(vec![fleet("198.51.100.7"), fleet("192.0.2.10")]);
    // A full read: etcd's record holds this host's decision beside B's.
    let with_mine = |cidr: &str| BanRecord {
        also: vec![crate::store::Decision {
            host: Some("host-a".into()),
            origin: "cli".into(),
            ..fleet(cidr).decision()
        }],
        ..fleet(cidr)
    };
    a.state.cluster_snapshot(
        vec![with_mine("198.51.100.7"), with_mine("192.0.2.10")],
        &[],
        &[],
    );
    // A fleet ban on a fresh prefix inside the allow entry: refused too.
    a.state.cluster_put_many(vec![fleet("198.51.100.8")]);
    let ls = a.ls();
    assert_eq!(ls.len(), 2, "{ls:?}");
    for b in &ls {
        assert!(
            b["host"].is_null() && b["decisions"].as_array().map(Vec::len) == Some(1),
            "the fleet's decision was taken over a refused prefix: {b}"
        );
        assert_eq!(b["origin"], "cli", "{b}");
    }
    let after: Vec<_> = ["198.51.100.7/32", "192.0.2.10/32"]
        .iter()
        .map(|c| a.kernel(c).unwrap().expires_ns)
        .collect();
    assert_eq!(before, after, "the kernel entries took the fleet's expiry");
    assert!(a.kernel("198.51.100.8/32").is_none());
    assert_eq!(status.lock().unwrap().view.refused, 5);
    assert!(
        a.stored()
            .iter()
            .all(|r| !r.any_decision(|d| d.host.is_some())),
        "{:?}",
        a.stored()
    );
}

/// A client banned twice elsewhere in the fleet gets this host's third
/// TTL step at its first offence here (the offence count is the fleet's).
#[test]
fn escalation_counts_the_fleets_offences() {
    let mut a = Agent::new(Mode::Enforce);
    let client = net("203.0.113.6");
    let scoring = ScoringPolicy::default();
    let now = clock::unix_now();
    a.state.cluster_put_many(vec![BanRecord {
        cidr: client,
        kind: BanReason::Policy,
        reason: "sqli".into(),
        origin: "agent".into(),
        created_at: now,
        created_at_ms: None,
        expires_at: Some(now + 60),
        offences: 2,
        host: Some("host-a".into()),
        also: Vec::new(),
    }]);
    // Recorded: the count survives a restart of this agent.
    let stored = a.state.store.as_ref().unwrap().offences().unwrap();
    assert!(
        stored.iter().any(|(c, h)| *c == client && h.count == 2),
        "{stored:?}"
    );
    // Lifted (as when it ends), then the client offends here.
    assert!(a.state.cluster_remove(&crate::cluster::Lifted {
        cidr: client,
        lifted_at: now,
        lifted_at_ms: None,
        host: "host-a".into(),
    }));
    let out = a.state.policy_ban(client, &finding(client, None), &scoring);
    assert_eq!(
        out,
        super::super::enforce::BanOutcome::Banned {
            ttl_secs: scoring.ttl(3).as_secs(),
            offence: 3
        }
    );
    assert_eq!(a.ls()[0]["offences"], 3);
}

/// A fleet record's offence count is bounded by this host's ladder: a
/// hostile u32::MAX neither overflows the next offence here nor shows.
#[test]
fn the_fleets_offence_counts_are_bounded() {
    let mut a = Agent::new(Mode::Enforce);
    let client = net("203.0.113.7");
    let scoring = ScoringPolicy::default();
    let now = clock::unix_now();
    a.state.cluster_put_many(vec![BanRecord {
        cidr: client,
        kind: BanReason::Policy,
        reason: "sqli".into(),
        origin: "agent".into(),
        created_at: now,
        created_at_ms: None,
        expires_at: Some(now + 60),
        offences: u32::MAX,
        host: Some("host-a".into()),
        also: Vec::new(),
    }]);
    let ladder = a.state.rate.escalation.ttls.len() as u32;
    assert_eq!(a.ls()[0]["offences"], ladder);
    assert!(a.state.cluster_remove(&crate::cluster::Lifted {
        cidr: client,
        lifted_at: now,
        lifted_at_ms: None,
        host: "host-a".into(),
    }));
    let out = a.state.policy_ban(client, &finding(client, None), &scoring);
    assert_eq!(
        out,
        super::super::enforce::BanOutcome::Banned {
            ttl_secs: scoring.ttl(ladder + 1).as_secs(),
            offence: ladder + 1
        }
    );
}

#[test]
fn policy_bans_escalate_their_ttl_with_each_offence() {
    let mut a = Agent::new(Mode::Enforce);
    let client = net("203.0.113.5");
    let scoring = ScoringPolicy::default();
    let mut ttls = Vec::new();
    for offence in 1..=3 {
        let out = a.state.policy_ban(client, &finding(client, None), &scoring);
        let super::super::enforce::BanOutcome::Banned {
            ttl_secs,
            offence: o,
        } = out
        else {
            panic!("not banned: {out:?}");
        };
        assert_eq!(o, offence);
        let ls = a.ls();
        assert_eq!(ls[0]["kind"], "policy");
        assert_eq!(ls[0]["reason"], "sqli.union");
        assert_eq!(ls[0]["offences"], offence);
        assert_eq!(
            kind_of(&a.kernel("203.0.113.5/32").unwrap()),
            Some(BanReason::Policy)
        );
        ttls.push(ttl_secs);
        // While banned, a second conviction changes nothing.
        assert_eq!(
            a.state.policy_ban(client, &finding(client, None), &scoring),
            super::super::enforce::BanOutcome::AlreadyBanned
        );
        a.ok(Request::BlockRm {
            cidr: client.to_string(),
            local: false,
            exist: false,
        });
    }
    let want: Vec<u64> = (1..=3).map(|n| scoring.ttl(n).as_secs()).collect();
    assert_eq!(ttls, want);
    assert!(ttls[0] < ttls[1] && ttls[1] < ttls[2], "{ttls:?}");
}

#[test]
fn requests_from_connections_older_than_a_lift_are_not_a_new_offence() {
    let mut a = Agent::new(Mode::Enforce);
    let client = net("203.0.113.6");
    let scoring = ScoringPolicy::default();
    let opened = crate::clock::boot_ns();
    assert!(matches!(
        a.state.policy_ban(client, &finding(client, None), &scoring),
        super::super::enforce::BanOutcome::Banned { .. }
    ));
    a.ok(Request::BlockRm {
        cidr: client.to_string(),
        local: false,
        exist: false,
    });
    // The retransmission of what the ban dropped, on the old connection.
    let old = Finding {
        conn_since_ns: Some(opened),
        ..finding(client, None)
    };
    let out = a.state.policy_ban(client, &old, &scoring);
    let super::super::enforce::BanOutcome::NotEnforced(why) = out else {
        panic!("re-banned from the past: {out:?}");
    };
    assert!(why.contains("predates the lift"), "{why}");
    assert!(a.ls().is_empty());
    // A new connection after the lift is judged as ever: offence 2.
    let new = Finding {
        conn_since_ns: Some(crate::clock::boot_ns()),
        ..finding(client, None)
    };
    assert!(matches!(
        a.state.policy_ban(client, &new, &scoring),
        super::super::enforce::BanOutcome::Banned { offence: 2, .. }
    ));
}

#[test]
fn unverified_findings_are_reported_and_never_ban() {
    let a = Agent::new(Mode::Enforce);
    let (log, path) = events(a.dir.path());
    let client = net("203.0.113.9");
    let Agent { state, dir } = a;
    let state = Arc::new(Mutex::new(state));
    super::super::enforce::apply(
        &[finding(client, Some("no handshake"))],
        &state,
        &log,
        &ScoringPolicy::default(),
    );
    let s = state.lock().unwrap();
    assert!(s.bans().next().is_none());
    assert!(s.maps().blocks.is_empty());
    drop(log);
    let text = std::fs::read_to_string(path).unwrap();
    let ev: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "violation");
    assert_eq!(ev["enforced"], false);
    assert_eq!(ev["verified"], false);
    assert_eq!(ev["note"], "unverified: no handshake");
    assert_eq!(text.lines().count(), 1, "no ban event: {text}");
    drop(dir);
}

#[test]
fn a_verified_finding_bans_and_logs_the_ban() {
    let a = Agent::new(Mode::Enforce);
    let (log, path) = events(a.dir.path());
    let client = net("203.0.113.10");
    let Agent { state, dir } = a;
    let state = Arc::new(Mutex::new(state));
    super::super::enforce::apply(
        &[finding(client, None)],
        &state,
        &log,
        &ScoringPolicy::default(),
    );
    assert!(state.lock().unwrap().maps().blocks.contains_key(&client));
    drop(log);
    let text = std::fs::read_to_string(path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "ban");
    assert_eq!(last["enforced"], true);
    assert_eq!(last["ban"], "203.0.113.10/32");
    drop(dir);
}

#[test]
fn monitor_mode_bans_nothing() {
    let mut a = Agent::new(Mode::Monitor);
    let client = net("203.0.113.6");
    let out = a
        .state
        .policy_ban(client, &finding(client, None), &ScoringPolicy::default());
    assert_eq!(
        out,
        super::super::enforce::BanOutcome::NotEnforced("monitor mode".into())
    );
    assert!(a.ls().is_empty());
    assert!(a.state.maps().blocks.is_empty());
    assert!(a.stored().is_empty());
}

#[test]
fn allow_beats_a_policy_ban() {
    let mut a = Agent::new(Mode::Enforce);
    a.allow("203.0.113.0/24");
    let client = net("203.0.113.7");
    let out = a
        .state
        .policy_ban(client, &finding(client, None), &ScoringPolicy::default());
    assert_eq!(
        out,
        super::super::enforce::BanOutcome::NotEnforced("allowlisted".into())
    );
    assert!(a.state.maps().blocks.is_empty());
}

fn key_of(ip: &str) -> BucketKey {
    let ip: IpAddr = ip.parse().unwrap();
    let addr = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    BucketKey {
        addr,
        ..BucketKey::default()
    }
}

fn rate_event(ip: &str, ts_ns: u64) -> RateEvent {
    RateEvent {
        key: key_of(ip),
        reason: Reason::RateLimited as u32,
        dropped: 100,
        passed: 10,
        ts_ns,
    }
}

/// Ten seconds of exceeding (the default `escalation.after`), one report a second.
fn flood(a: &mut Agent, ip: &str, start_ns: u64) {
    for s in 0..=10 {
        a.state
            .on_rate_event(&rate_event(ip, start_ns + s * 1_000_000_000));
    }
}

#[test]
fn rate_limit_escalation_needs_a_recent_handshake() {
    let mut a = Agent::new(Mode::Enforce);
    let t0 = 3_600_000_000_000;
    // A source that never completed a handshake: limited, never banned.
    flood(&mut a, "198.51.100.1", t0);
    assert!(a.ls().is_empty());
    assert_eq!(a.state.rate.unverified_offenders, 1);
    // A handshake too old (default window: 10 minutes).
    a.state
        .maps
        .handshakes
        .insert(key_of("198.51.100.1").addr, t0 - 700_000_000_000);
    flood(&mut a, "198.51.100.1", t0 + 20_000_000_000);
    assert!(a.ls().is_empty());
    // A recent one: banned, kind rate-limit, first TTL of the ladder.
    a.state
        .maps
        .handshakes
        .insert(key_of("198.51.100.1").addr, t0);
    flood(&mut a, "198.51.100.1", t0 + 40_000_000_000);
    let ls = a.ls();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["cidr"], "198.51.100.1/32");
    assert_eq!(ls[0]["kind"], "rate-limit");
    assert_eq!(ls[0]["offences"], 1);
    assert_ttl(&ls[0], 60);
    assert_eq!(
        kind_of(&a.kernel("198.51.100.1/32").unwrap()),
        Some(BanReason::RateLimit)
    );
    assert_eq!(a.state.rate.bans_issued, 1);
}

#[test]
fn rate_limit_escalation_without_handshake_check_and_growing_ttls() {
    let mut a = Agent::new(Mode::Enforce);
    a.state.rate.escalation.require_handshake = false;
    let mut ttls = Vec::new();
    for round in 0..4u64 {
        flood(&mut a, "198.51.100.2", (round + 1) * 100_000_000_000);
        let ls = a.ls();
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0]["offences"], round + 1);
        let ttl = ls[0]["ttl_remaining_secs"].as_u64().unwrap();
        // Rounded up to the ladder's step (a second may pass while listing).
        ttls.push(ttl.div_ceil(60) * 60);
        a.ok(Request::BlockRm {
            cidr: "198.51.100.2".into(),
            local: false,
            exist: false,
        });
    }
    // 1 min, 10 min, 1 h, and the last step repeats.
    assert_eq!(ttls, vec![60, 600, 3600, 3600]);
}

#[test]
fn a_short_burst_is_not_escalated() {
    let mut a = Agent::new(Mode::Enforce);
    a.state.rate.escalation.require_handshake = false;
    a.state.rate.escalation.after = Duration::from_secs(10);
    for s in 0..5 {
        a.state
            .on_rate_event(&rate_event("198.51.100.3", s * 1_000_000_000));
    }
    // A gap longer than the continuity window starts a new run.
    for s in 0..6 {
        a.state
            .on_rate_event(&rate_event("198.51.100.3", (20 + s) * 1_000_000_000));
    }
    assert!(a.ls().is_empty());
}

fn import(a: &mut Agent, origin: &str, cidrs: &[&str]) -> crate::feed::ImportReport {
    let cidrs: Vec<String> = cidrs.iter().map(|s| (*s).to_owned()).collect();
    a.state
        .import_group(origin, &cidrs, None, None, false)
        .unwrap()
}

#[test]
fn a_feed_replacement_lifts_what_the_group_no_longer_lists() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.50", None);
    let r = import(
        &mut a,
        "spamhaus",
        &["192.0.2.1", "192.0.2.2", "192.0.2.50"],
    );
    // 192.0.2.50 gets the feed's decision beside the manual one.
    assert_eq!((r.added, r.kept_other_origin), (3, 1));
    let r = import(&mut a, "spamhaus", &["192.0.2.2", "192.0.2.3"]);
    assert_eq!((r.added, r.unchanged, r.removed), (1, 1, 2));
    let mut banned: Vec<String> = a
        .ls()
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["cidr"].as_str().unwrap(),
                v["kind"].as_str().unwrap()
            )
        })
        .collect();
    banned.sort();
    assert_eq!(
        banned,
        [
            "192.0.2.2/32 feed",
            "192.0.2.3/32 feed",
            "192.0.2.50/32 manual"
        ]
    );
    assert!(a.kernel("192.0.2.1/32").is_none(), "lifted in the kernel");
    assert_eq!(a.stored().len(), 3);
    // An empty download never wipes the group.
    assert!(
        a.state
            .import_group("spamhaus", &[], None, None, false)
            .is_err()
    );
    assert_eq!(a.ls().len(), 3);
    // Another group is left alone.
    import(&mut a, "other", &["192.0.2.9"]);
    import(&mut a, "spamhaus", &["192.0.2.3"]);
    assert!(a.kernel("192.0.2.9/32").is_some());
    assert!(a.kernel("192.0.2.2/32").is_none());
}

/// A list is held to what `block add` refuses: loopback, this host's own
/// address, a trusted proxy, an allowlisted range; each is reported, the
/// rest is applied, and `--force` takes them all.
#[test]
fn a_feed_cannot_ban_loopback_the_host_or_its_proxy() {
    let proxy: IpNet = "198.51.100.10/32".parse().unwrap();
    let mut a = Agent::with(MemMaps::default(), vec![proxy]);
    a.allow("203.0.113.0/24");
    let list = [
        "127.0.0.0/8",
        "192.0.2.254",
        "198.51.100.0/24",
        "203.0.113.7",
        "192.0.2.1",
    ];
    let r = import(&mut a, "level1", &list);
    assert_eq!((r.added, r.rejected_count), (1, 4), "{r:?}");
    let why: Vec<&str> = r.rejected.iter().map(|(_, w)| w.as_str()).collect();
    assert!(why[0].contains("loopback"), "{why:?}");
    assert!(why[1].contains("own address"), "{why:?}");
    assert!(why[2].contains("trusted proxy"), "{why:?}");
    assert!(why[3].contains("allowlist"), "{why:?}");
    assert!(a.kernel("127.0.0.0/8").is_none());
    assert!(a.kernel("192.0.2.1/32").is_some());
    let cidrs: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    let r = a
        .state
        .import_group("level1", &cidrs, None, None, true)
        .unwrap();
    assert_eq!((r.added, r.rejected_count), (4, 0), "{r:?}");
}

#[test]
fn crowdsec_decisions_are_applied_and_lifted() {
    let mut a = Agent::new(Mode::Enforce);
    a.allow("192.0.2.128/25");
    let later = clock::unix_now() + 3600;
    let want = |s: &str| wanted(s, later, "crowdsecurity/ssh-bf");
    let r = a
        .state
        .apply_crowdsec(&[want("192.0.2.1"), want("192.0.2.200")], &[], false)
        .unwrap();
    assert_eq!((r.added, r.refused), (1, 1), "{r:?}");
    assert_eq!(
        kind_of(&a.kernel("192.0.2.1/32").unwrap()),
        Some(BanReason::Crowdsec)
    );
    let r = a
        .state
        .apply_crowdsec(&[], &[net("192.0.2.1")], false)
        .unwrap();
    assert_eq!(r.removed, 1);
    assert!(a.ls().is_empty());
}

#[test]
fn reconcile_adopts_kernel_bans_the_store_lost_and_restores_stored_ones() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.1", None);
    // A ban only the kernel holds (store reset, or written before a crash).
    let mut maps = std::mem::take(&mut a.state.maps);
    maps.blocks.insert(
        net("192.0.2.77"),
        BlockEntry {
            reason: BanReason::RateLimit as u32,
            ..BlockEntry::default()
        },
    );
    // And one the kernel lost (maps recreated) but the store holds.
    maps.blocks.remove(&net("192.0.2.1"));
    a.state.maps = maps;
    let mut a = a.restart();
    let mut got: Vec<(String, String, String)> = a
        .ls()
        .iter()
        .map(|v| {
            (
                v["cidr"].as_str().unwrap().to_owned(),
                v["kind"].as_str().unwrap().to_owned(),
                v["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("192.0.2.1/32".into(), "manual".into(), "cli".into()),
            ("192.0.2.77/32".into(), "rate-limit".into(), "kernel".into())
        ]
    );
    assert!(a.kernel("192.0.2.1/32").is_some(), "restored to the kernel");
    assert_eq!(a.stored().len(), 2, "adopted into the store");
}

/// A store whose writes fail while `full` is set (a full disk), and that
/// keeps what it was given otherwise.
#[derive(Default)]
struct FlakyStore {
    full: Arc<std::sync::atomic::AtomicBool>,
    bans: std::collections::BTreeMap<IpNet, BanRecord>,
    allows: Vec<crate::store::AllowRecord>,
    failures: u64,
}

impl FlakyStore {
    fn check(&mut self) -> Result<(), crate::store::StoreError> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            self.failures += 1;
            return Err(crate::store::StoreError::Io {
                op: "write",
                message: "No space left on device".into(),
            });
        }
        Ok(())
    }
}

impl Store for FlakyStore {
    fn put_bans(&mut self, records: &[BanRecord]) -> Result<(), crate::store::StoreError> {
        self.check()?;
        for r in records {
            self.bans.insert(r.cidr, r.clone());
        }
        Ok(())
    }
    fn remove_bans(&mut self, cidrs: &[IpNet]) -> Result<(), crate::store::StoreError> {
        self.check()?;
        for c in cidrs {
            self.bans.remove(c);
        }
        Ok(())
    }
    fn bans(&self) -> Result<Vec<BanRecord>, crate::store::StoreError> {
        Ok(self.bans.values().cloned().collect())
    }
    fn put_allow(
        &mut self,
        record: &crate::store::AllowRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.check()?;
        self.allows.push(record.clone());
        Ok(())
    }
    fn remove_allow(&mut self, cidr: &IpNet) -> Result<(), crate::store::StoreError> {
        self.check()?;
        self.allows.retain(|a| a.cidr != *cidr);
        Ok(())
    }
    fn allows(&self) -> Result<Vec<crate::store::AllowRecord>, crate::store::StoreError> {
        Ok(self.allows.clone())
    }
    fn put_limits(
        &mut self,
        _: &crate::store::LimitsRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.check()
    }
    fn limits(&self) -> Result<Option<crate::store::LimitsRecord>, crate::store::StoreError> {
        Ok(None)
    }
    fn put_offence(
        &mut self,
        _: &IpNet,
        _: &crate::store::OffenceRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.check()
    }
    fn offences(
        &self,
    ) -> Result<Vec<(IpNet, crate::store::OffenceRecord)>, crate::store::StoreError> {
        Ok(Vec::new())
    }
    fn health(&self) -> Option<String> {
        self.full
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| "degraded: No space left on device".into())
    }
    fn failures(&self) -> u64 {
        self.failures
    }
}

#[test]
fn a_full_disk_refuses_manual_bans_enforces_automatic_ones_and_catches_up() {
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = FlakyStore {
        full: Arc::clone(&full),
        ..FlakyStore::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::over(
        MemMaps::new(Mode::Enforce),
        Vec::new(),
        Box::new(store),
        dir,
    );
    full.store(true, std::sync::atomic::Ordering::Relaxed);

    // The operator is told; nothing is half-done.
    let e = a.refused(Request::BlockAdd {
        cidr: "192.0.2.1".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(e.contains("failed to record the ban durably"), "{e}");
    assert!(a.kernel("192.0.2.1/32").is_none());
    // A ban the agent decides is enforced all the same.
    let client = net("203.0.113.20");
    let out = a
        .state
        .policy_ban(client, &finding(client, None), &ScoringPolicy::default());
    assert!(
        matches!(out, super::super::enforce::BanOutcome::Banned { .. }),
        "{out:?}"
    );
    assert!(a.kernel("203.0.113.20/32").is_some());
    assert!(a.state.store_health().is_some());
    assert!(a.stored().is_empty());

    // Space again: the next retry writes what was enforced meanwhile.
    full.store(false, std::sync::atomic::Ordering::Relaxed);
    a.state.store_retry();
    assert!(a.state.store_health().is_none());
    let stored: Vec<IpNet> = a.stored().iter().map(|r| r.cidr).collect();
    assert_eq!(stored, vec![client]);
}

#[test]
fn an_authoritative_crowdsec_pull_replaces_only_crowdsec_bans() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.100", None);
    let later = clock::unix_now() + 3600;
    let want = |s: &str| wanted(s, later, "crowdsecurity/http-probing");
    a.state
        .apply_crowdsec(&[want("192.0.2.1"), want("192.0.2.2")], &[], true)
        .unwrap();
    // Same decisions again: nothing changes.
    let r = a
        .state
        .apply_crowdsec(&[want("192.0.2.1"), want("192.0.2.2")], &[], true)
        .unwrap();
    assert!(r.is_quiet(), "{r:?}");
    let r = a
        .state
        .apply_crowdsec(&[want("192.0.2.2"), want("192.0.2.100")], &[], true)
        .unwrap();
    assert_eq!((r.removed, r.kept_other_origin), (1, 1), "{r:?}");
    let mut got: Vec<String> = a
        .ls()
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["cidr"].as_str().unwrap(),
                v["kind"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, ["192.0.2.100/32 manual", "192.0.2.2/32 crowdsec"]);
}

#[test]
fn removal_by_origin_lifts_one_group() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.100", None);
    import(&mut a, "blocklist-de", &["192.0.2.1", "192.0.2.2"]);
    a.ok(Request::BlockRmOrigin {
        origin: "blocklist-de".into(),
        dry_run: false,
    });
    let ls = a.ls();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["origin"], "cli");
    assert!(a.kernel("192.0.2.1/32").is_none());
    assert_eq!(a.stored().len(), 1);
}

#[test]
fn a_banned_client_behind_a_trusted_proxy_loses_its_connection_not_the_proxy() {
    let proxy = net("192.0.2.10");
    let a = Agent::with(MemMaps::new(Mode::Enforce), vec![proxy]);
    let (log, _path) = events(a.dir.path());
    let client = net("203.0.113.30");
    let flow = tollgate_common::FlowKey::default();
    let f = Finding {
        proxy: Some(proxy.addr()),
        flow: Some(flow),
        ..finding(client, None)
    };
    let Agent { state, dir } = a;
    let state = Arc::new(Mutex::new(state));
    super::super::enforce::apply(&[f], &state, &log, &ScoringPolicy::default());
    let s = state.lock().unwrap();
    assert!(s.maps().blocks.contains_key(&client));
    assert!(!s.maps().blocks.contains_key(&proxy));
    assert_eq!(s.maps().proxy_flows, vec![(flow, client.addr())]);
    drop(dir);
}

#[test]
fn an_ipv6_offender_is_banned_as_its_prefix() {
    let mut a = Agent::new(Mode::Enforce);
    a.state.rate.escalation.require_handshake = false;
    a.state.rate.limits.ipv6_prefix = 64;
    flood(&mut a, "2001:db8:1:2:3:4:5:6", 1_000_000_000);
    let ls = a.ls();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["cidr"], "2001:db8:1:2::/64");
    assert!(a.state.is_banned("2001:db8:1:2:ffff::1".parse().unwrap()));
    assert!(!a.state.is_banned("2001:db8:1:3::1".parse().unwrap()));
}

#[test]
fn a_restart_drops_bans_that_expired_while_the_agent_was_down() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.1", None);
    let now = clock::unix_now();
    let stale = BanRecord {
        cidr: net("192.0.2.2"),
        kind: BanReason::Feed,
        reason: "feed x".into(),
        origin: "x".into(),
        created_at: now - 7200,
        created_at_ms: None,
        expires_at: Some(now - 3600),
        offences: 1,
        host: None,
        also: Vec::new(),
    };
    a.state
        .store
        .as_mut()
        .unwrap()
        .put_bans(std::slice::from_ref(&stale))
        .unwrap();
    a.state
        .maps
        .blocks
        .insert(stale.cidr, BlockEntry::default());
    let mut a = a.restart();
    let ls = a.ls();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["cidr"], "192.0.2.1/32");
    assert!(a.kernel("192.0.2.2/32").is_none());
    assert_eq!(a.stored().len(), 1);
}

#[test]
fn bans_issued_are_counted_by_the_agent_that_issued_them() {
    let mut a = Agent::new(Mode::Enforce);
    let b = Agent::new(Mode::Enforce);
    a.ban("192.0.2.7", None);
    a.ban("192.0.2.8", Some(60));
    let text = crate::metrics::render(&a.state.snapshot(0));
    assert!(
        text.contains("tollgate_bans_issued_total{kind=\"manual\"} 2\n"),
        "{text}"
    );
    // The counters belong to one agent's state, not to the process.
    let other = crate::metrics::render(&b.state.snapshot(0));
    assert!(
        other.contains("tollgate_bans_issued_total{kind=\"manual\"} 0\n"),
        "{other}"
    );
}

/// In a fleet: the agent's own changes go to the outbox, the fleet's are
/// enforced and never sent back, the allowlist wins, expiry and `--local`
/// stay local, and a full read reconciles both ways.
#[test]
fn fleet_bans_are_applied_shared_and_reconciled() {
    use crate::cluster::{Change, ClusterStatus, ClusterStore};
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = crate::policy::ClusterSpec {
        host_id: Some("host-b".into()),
        ..crate::policy::ClusterSpec::default()
    };
    let status = std::sync::Arc::new(std::sync::Mutex::new(ClusterStatus {
        cfg: Some(crate::cluster::ClusterConfig::from_spec(&spec, "x")),
        ..ClusterStatus::default()
    }));
    let store: Box<dyn Store> = Box::new(ClusterStore::new(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        tx,
        status.clone(),
    ));
    let mut a = Agent::over(MemMaps::new(Mode::Enforce), Vec::new(), store, dir);
    a.state.set_cluster(status.clone());
    let mut sent = || {
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            v.push(c);
        }
        v
    };
    let now = clock::unix_now();
    let remote = |cidr: &str, expires_at: u64| BanRecord {
        cidr: net(cidr),
        kind: BanReason::Policy,
        reason: "sqli".into(),
        origin: "agent".into(),
        created_at: now,
        created_at_ms: None,
        expires_at: Some(expires_at),
        offences: 2,
        host: Some("host-a".into()),
        also: Vec::new(),
    };

    // A local ban is shared as this host's.
    a.ban("198.51.100.1", Some(600));
    assert!(matches!(&sent()[..], [(_, Change::Put(r))] if r.host.is_none()));

    // The fleet's bans are enforced, recorded with their host, not sent back;
    // one overlapping the allowlist is refused. The allow entry is shared.
    a.allow("198.51.100.9");
    assert!(matches!(&sent()[..], [(_, Change::Allow(r))] if r.cidr == net("198.51.100.9")));
    let n = a.state.cluster_put_many(vec![
        remote("198.51.100.2", now + 600),
        remote("198.51.100.9", now + 600),
    ]);
    assert_eq!(n, 1);
    assert!(a.kernel("198.51.100.2").is_some() && a.kernel("198.51.100.9").is_none());
    assert!(
        a.stored()
            .iter()
            .any(|r| r.host.as_deref() == Some("host-a"))
    );
    assert!(sent().is_empty());
    assert_eq!(status.lock().unwrap().view.refused, 1);
    let ls = a.ls();
    assert!(ls.iter().any(|b| b["host"] == "host-a"));

    // A later expiry from the fleet wins over the local one; an earlier does not.
    assert_eq!(
        a.state
            .cluster_put_many(vec![remote("198.51.100.1", now + 60)]),
        0
    );
    assert_eq!(
        a.state
            .cluster_put_many(vec![remote("198.51.100.1", now + 6000)]),
        1
    );
    assert_eq!(
        a.state.ban(&net("198.51.100.1")).unwrap().expires_at,
        Some(now + 6000)
    );

    // `--local` and fleet removals are not sent; a plain unban is. An
    // unban from the fleet lifts the decisions made at or before it: this
    // host's own later one stays, also once etcd had it (its Put comes
    // after the tombstone's echo and is not taken back), and a stale or
    // replayed tombstone lifts none of them; this host's own unban's echo
    // lifts none of its own (they were made after it).
    a.ok(Request::BlockRm {
        cidr: "198.51.100.2".into(),
        local: true,
        exist: false,
    });
    let tomb = |cidr: &str, lifted_at: u64, host: &str| crate::cluster::Lifted {
        cidr: net(cidr),
        lifted_at,
        lifted_at_ms: None,
        host: host.into(),
    };
    let own_only = |a: &Agent, cidr: &str| {
        let r = a.state.ban(&net(cidr)).unwrap();
        (r.host.is_none(), r.also.len())
    };
    a.state.cluster_acked(u64::MAX - 1);
    for t in [
        tomb("198.51.100.1", now - 1, "host-a"),
        tomb("198.51.100.1", 0, "host-a"),
        tomb("198.51.100.1", now + 60, "host-b"),
    ] {
        a.state
            .cluster_put_many(vec![remote("198.51.100.1", now + 6000)]);
        assert!(!a.state.cluster_remove(&t), "{t:?}");
        assert_eq!(own_only(&a, "198.51.100.1"), (true, 0), "{t:?}");
    }
    assert!(
        a.state
            .cluster_remove(&tomb("198.51.100.1", now + 60, "host-a"))
            && sent().is_empty()
    );
    // Made before the unban but still in the outbox: lifted, and withdrawn
    // from the fleet (its queued Put must not bring it back fleet-wide).
    a.ban("198.51.100.1", Some(600));
    sent();
    assert!(
        a.state
            .cluster_remove(&tomb("198.51.100.1", now + 60, "host-a"))
    );
    assert!(
        matches!(&sent()[..], [(_, Change::Withdraw(c))] if *c == net("198.51.100.1")),
        "the lifted queued ban is withdrawn"
    );
    a.ban("198.51.100.3", Some(600));
    a.ok(Request::BlockRm {
        cidr: "198.51.100.3".into(),
        local: false,
        exist: false,
    });
    assert!(matches!(
        &sent()[..],
        [(_, Change::Put(_)), (_, Change::Remove(_))]
    ));

    // Removing a feed's origin withdraws this host's decisions only:
    // another host running the same feed keeps the prefix banned.
    let feed = |origin: &str| BanRecord {
        kind: BanReason::Feed,
        origin: origin.into(),
        ..remote("198.51.100.20", now + 600)
    };
    a.state
        .import_group("f1", &["198.51.100.20".into()], Some(300), None, false)
        .unwrap();
    a.state.cluster_put_many(vec![feed("f1")]);
    sent();
    a.ok(Request::BlockRmOrigin {
        origin: "f1".into(),
        dry_run: false,
    });
    let left = a.state.ban(&net("198.51.100.20")).unwrap();
    assert_eq!((left.host.as_deref(), left.also.len()), (Some("host-a"), 0));
    assert!(a.kernel("198.51.100.20").is_some());
    assert!(
        matches!(&sent()[..], [(_, Change::Put(r))] if !r.any_decision(|d| d.host.is_none())),
        "the withdrawal is shared as this host's empty set, not an unban"
    );
    // `--local` beside another decision rewrites nothing shared.
    a.ban("198.51.100.21", Some(600));
    a.state
        .import_group("f2", &["198.51.100.21".into()], Some(300), None, false)
        .unwrap();
    sent();
    a.ok(Request::BlockRm {
        cidr: "198.51.100.21".into(),
        local: true,
        exist: false,
    });
    assert!(sent().is_empty(), "--local shares nothing");
    assert_eq!(a.state.ban(&net("198.51.100.21")).unwrap().origin, "f2");

    // A full read: the fleet's bans missing from it are lifted; this
    // host's own missing from it are kept while in the outbox or kept back
    // by the per-minute cap, lifted once etcd had them when a tombstone at
    // least as recent says an operator lifted them (elsewhere, while this
    // host was away), and published again when etcd merely lost them (a
    // wipe, a key deleted by hand).
    a.state
        .cluster_put_many(vec![remote("198.51.100.4", now + 600)]);
    a.ban("198.51.100.8", Some(600));
    a.ban("198.51.100.10", Some(600));
    a.ban("198.51.100.11", Some(600));
    a.state.cluster_acked(u64::MAX - 1);
    a.ban("198.51.100.5", Some(600));
    sent();
    let before = a.state.bans().count();
    // This host's own decision as etcd holds it: kept.
    let f2 = a.state.ban(&net("198.51.100.21")).unwrap();
    let as_etcd = BanRecord {
        host: Some("host-b".into()),
        ..f2
    };
    let (applied, lifted) = a.state.cluster_snapshot(
        vec![remote("198.51.100.6", now + 600), feed("f1"), as_etcd],
        // The last millisecond each tombstone lifts (whole seconds here).
        &[
            (net("198.51.100.8"), clock::unix_now() * 1000 + 999),
            // An older unban does not lift a later ban.
            (net("198.51.100.11"), (now - 3600) * 1000 + 999),
            // A ban queued while cut off from etcd, made before an
            // operator's unban elsewhere: lifted, not published again.
            (net("198.51.100.5"), (clock::unix_now() + 60) * 1000 + 999),
        ],
        &[net("198.51.100.10")],
    );
    assert_eq!((applied, lifted), (1, 3), "{:?}", a.ls());
    assert!(a.kernel("198.51.100.4").is_none() && a.kernel("198.51.100.8").is_none());
    assert!(a.kernel("198.51.100.5").is_none() && a.kernel("198.51.100.10").is_some());
    assert!(a.kernel("198.51.100.6").is_some() && a.kernel("198.51.100.11").is_some());
    assert_eq!(a.state.bans().count(), before - 2);
    let shared = sent();
    assert!(
        matches!(&shared[..], [(_, Change::Withdraw(w)), (_, Change::Put(r))]
            if *w == net("198.51.100.5") && r.cidr == net("198.51.100.11")),
        "only the ban etcd lost is shared again; the lifted queued one is withdrawn: {shared:?}"
    );
    assert_eq!(status.lock().unwrap().view.republished, 1);

    // A key deleted behind the agents' backs: the other hosts' decisions
    // held here go, this host's own stay enforced and are shared again.
    a.state
        .cluster_put_many(vec![remote("198.51.100.11", now + 900)]);
    assert_eq!(a.state.ban(&net("198.51.100.11")).unwrap().also.len(), 1);
    assert!(!a.state.cluster_gone(&net("198.51.100.11")));
    let own = a.state.ban(&net("198.51.100.11")).unwrap();
    assert_eq!((own.host.as_deref(), own.also.len()), (None, 0));
    assert!(a.kernel("198.51.100.11").is_some());
    assert!(matches!(&sent()[..], [(_, Change::Put(r))] if r.cidr == net("198.51.100.11")));
    a.state
        .cluster_put_many(vec![remote("198.51.100.12", now + 900)]);
    assert!(
        a.state.cluster_gone(&net("198.51.100.12")),
        "a fleet-only ban goes"
    );
    assert!(a.kernel("198.51.100.12").is_none() && sent().is_empty());

    use crate::agent::maps::Maps as _;
    // The drift check: a kernel entry lost behind the agent's back is
    // written again, one no ban accounts for is removed; then no drift.
    assert_eq!(a.state.cluster_reconcile(), Some(0));
    a.state.maps.remove_block(net("198.51.100.6")).unwrap();
    let stray = BlockEntry {
        expires_ns: 0,
        created_ns: 0,
        hits: 0,
        reason: BanReason::Manual as u32,
        reserved: 0,
    };
    a.state
        .maps
        .insert_block(net("198.51.100.7"), &stray)
        .unwrap();
    assert_eq!(a.state.cluster_reconcile(), Some(2));
    assert!(a.kernel("198.51.100.6").is_some() && a.kernel("198.51.100.7").is_none());
    assert_eq!(a.state.cluster_reconcile(), Some(0));
    let v = status.lock().unwrap().view.clone();
    assert_eq!((v.drift_entries, v.repaired), (Some(0), 2));
    assert!(sent().is_empty(), "repairs are not shared");
}

/// A ban made here in the same second as an operator's unban elsewhere,
/// but after it, outlives the unban's tombstone (both carry milliseconds),
/// also in a full read; one made before it is lifted; a tombstone of an
/// agent without milliseconds lifts the whole second, as before.
#[test]
fn a_ban_made_the_same_second_after_an_unban_elsewhere_stays() {
    use crate::cluster::{ClusterStatus, ClusterStore, Lifted};
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = crate::policy::ClusterSpec {
        host_id: Some("host-b".into()),
        ..crate::policy::ClusterSpec::default()
    };
    let status = std::sync::Arc::new(std::sync::Mutex::new(ClusterStatus {
        cfg: Some(crate::cluster::ClusterConfig::from_spec(&spec, "x")),
        ..ClusterStatus::default()
    }));
    let store: Box<dyn Store> = Box::new(ClusterStore::new(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        tx,
        status.clone(),
    ));
    let mut a = Agent::over(MemMaps::new(Mode::Enforce), Vec::new(), store, dir);
    a.state.set_cluster(status);
    let sec = clock::unix_now();
    // Made at .500 of the second.
    let ban = |a: &mut Agent, cidr: &str| {
        a.state
            .put_ban(BanRecord {
                cidr: net(cidr),
                kind: BanReason::Manual,
                reason: "manual".into(),
                origin: "cli".into(),
                created_at: sec,
                created_at_ms: Some(sec * 1000 + 500),
                expires_at: Some(sec + 600),
                offences: 1,
                host: None,
                also: Vec::new(),
            })
            .unwrap();
    };
    let tomb = |cidr: &str, ms: Option<u64>| Lifted {
        cidr: net(cidr),
        lifted_at: sec,
        lifted_at_ms: ms,
        host: "host-a".into(),
    };
    ban(&mut a, "198.51.100.1");
    assert!(
        !a.state
            .cluster_remove(&tomb("198.51.100.1", Some(sec * 1000 + 499)))
    );
    assert!(
        a.kernel("198.51.100.1").is_some(),
        "made after the unban: it stays"
    );
    assert!(
        a.state
            .cluster_remove(&tomb("198.51.100.1", Some(sec * 1000 + 500)))
    );
    assert!(
        a.kernel("198.51.100.1").is_none(),
        "made at the unban's millisecond: lifted"
    );
    ban(&mut a, "198.51.100.2");
    assert!(a.state.cluster_remove(&tomb("198.51.100.2", None)));
    assert!(
        a.kernel("198.51.100.2").is_none(),
        "a tombstone in whole seconds lifts its second"
    );
    // Milliseconds outside their second are no ordering: the second counts.
    ban(&mut a, "198.51.100.3");
    assert!(
        a.state
            .cluster_remove(&tomb("198.51.100.3", Some(sec * 1000 - 1)))
    );
    // A full read (the ban still queued, etcd without it): the same order.
    ban(&mut a, "198.51.100.4");
    ban(&mut a, "198.51.100.5");
    let bound = |ms: u64| tomb("198.51.100.4", Some(ms)).bound_ms();
    let (_, lifted) = a.state.cluster_snapshot(
        Vec::new(),
        &[
            (net("198.51.100.4"), bound(sec * 1000 + 499)),
            (net("198.51.100.5"), tomb("198.51.100.5", None).bound_ms()),
        ],
        &[],
    );
    assert_eq!(lifted, 1);
    assert!(a.kernel("198.51.100.4").is_some() && a.kernel("198.51.100.5").is_none());
}

#[test]
fn block_test_names_every_covering_entry_and_the_allowlist_override() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.0/24", None);
    import(&mut a, "drop-list", &["192.0.2.0/25", "198.51.100.9"]);
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.5".into(),
    });
    assert_eq!(t["blocked"], true, "{t}");
    let covering: Vec<(&str, &str)> = t["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["cidr"].as_str().unwrap(), b["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(
        covering,
        [("192.0.2.0/25", "drop-list"), ("192.0.2.0/24", "cli")],
        "{t}"
    );
    assert_eq!(t["kernel_agrees"], true, "{t}");
    // An address outside every ban.
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.200".into(),
    });
    assert_eq!(t["bans"].as_array().unwrap().len(), 1, "{t}");
    let t = a.ok(Request::BlockTest {
        address: "203.0.113.1".into(),
    });
    assert_eq!(t["blocked"], false, "{t}");
    // An allow entry overrides: still listed, no longer blocked.
    a.state.handle(Request::AllowAdd {
        cidr: "192.0.2.5".into(),
        reason: None,
        force: true,
    });
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.5".into(),
    });
    assert_eq!(t["blocked"], false, "{t}");
    assert_eq!(t["allows"][0]["cidr"], "192.0.2.5/32", "{t}");
    assert_eq!(t["bans"].as_array().unwrap().len(), 2, "{t}");
    // A prefix is no address.
    a.refused(Request::BlockTest {
        address: "192.0.2.0/24".into(),
    });
}

#[test]
fn block_test_sees_the_kernel_disagree_with_the_store() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.7", None);
    // The kernel loses the entry behind the agent's back ...
    a.state.maps.blocks.remove(&net("192.0.2.7"));
    // ... and holds one the store never had.
    a.state
        .maps
        .blocks
        .insert(net("192.0.2.0/30"), BlockEntry::default());
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.7".into(),
    });
    assert_eq!(t["kernel_agrees"], false, "{t}");
    assert_eq!(t["bans"][0]["kernel"], "missing", "{t}");
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.1".into(),
    });
    assert_eq!(t["kernel_only"][0], "192.0.2.0/30", "{t}");
    assert_eq!(t["blocked"], true, "{t}");
}

#[test]
fn block_ls_filters_and_pages_on_the_agent() {
    let mut a = Agent::new(Mode::Enforce);
    for i in 1..=5 {
        a.ban(&format!("192.0.2.{i}"), Some(60));
    }
    a.ban("198.51.100.0/24", None);
    import(&mut a, "feed-x", &["203.0.113.1", "203.0.113.2"]);
    let q = |a: &mut Agent, filter: crate::proto::BanFilter| a.ok(Request::BlockQuery { filter });
    let page = q(
        &mut a,
        crate::proto::BanFilter {
            matching: Some("192.0.2.0/24".into()),
            offset: 1,
            limit: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(page["total"], 5, "{page}");
    let cidrs: Vec<&str> = page["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["192.0.2.2/32", "192.0.2.3/32"]);
    let feed = q(
        &mut a,
        crate::proto::BanFilter {
            kind: Some("feed".into()),
            ..Default::default()
        },
    );
    assert_eq!(feed["total"], 2, "{feed}");
    let covering = q(
        &mut a,
        crate::proto::BanFilter {
            matching: Some("198.51.100.77".into()),
            ..Default::default()
        },
    );
    assert_eq!(covering["bans"][0]["cidr"], "198.51.100.0/24", "{covering}");
    let expiring = q(
        &mut a,
        crate::proto::BanFilter {
            expiring_within_secs: Some(120),
            ..Default::default()
        },
    );
    assert_eq!(expiring["total"], 5, "{expiring}");
    let none = q(
        &mut a,
        crate::proto::BanFilter {
            reason: Some("FEED feed-x".into()),
            origin: Some("cli".into()),
            ..Default::default()
        },
    );
    assert_eq!(none["total"], 0, "{none}");
}

#[test]
fn special_and_own_addresses_need_force() {
    let mut a = Agent::new(Mode::Enforce);
    for cidr in [
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.0/8",
        "255.255.255.255",
        "::1",
        "ff02::1",
    ] {
        let e = a.refused(Request::BlockAdd {
            cidr: cidr.into(),
            ttl_secs: None,
            reason: None,
            force: false,
        });
        assert!(e.contains("--force"), "{cidr}: {e}");
    }
    a.ok(Request::BlockAdd {
        cidr: "127.0.0.2".into(),
        ttl_secs: Some(60),
        reason: None,
        force: true,
    });
    // This host's own address: refused; a range covering it: a warning.
    let e = a.refused(Request::BlockAdd {
        cidr: "192.0.2.254".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(e.contains("own address"), "{e}");
    let r = a.state.handle(Request::BlockAdd {
        cidr: "192.0.2.128/25".into(),
        ttl_secs: None,
        reason: None,
        force: false,
    });
    assert!(r.ok, "{r:?}");
    assert!(
        r.warning
            .as_deref()
            .is_some_and(|w| w.contains("192.0.2.254")),
        "{r:?}"
    );
}

#[test]
fn rm_with_exist_tolerates_a_missing_entry_and_names_covering_ranges() {
    let mut a = Agent::new(Mode::Enforce);
    a.ban("192.0.2.0/24", None);
    let e = a.refused(Request::BlockRm {
        cidr: "192.0.2.5".into(),
        local: false,
        exist: false,
    });
    assert!(e.contains("192.0.2.0/24"), "{e}");
    let v = a.ok(Request::BlockRm {
        cidr: "192.0.2.5".into(),
        local: false,
        exist: true,
    });
    assert_eq!(v["absent"], "192.0.2.5/32");
    assert_eq!(a.ls().len(), 1);
}

#[test]
fn dry_runs_change_nothing() {
    let mut a = Agent::new(Mode::Enforce);
    import(&mut a, "g", &["192.0.2.1", "192.0.2.2"]);
    let cidrs = vec!["192.0.2.2".to_owned(), "192.0.2.3".to_owned()];
    let r = a
        .state
        .import_group_as("g", &cidrs, None, None, false, true)
        .unwrap();
    assert!(r.dry_run);
    assert_eq!((r.added, r.removed), (1, 1));
    assert_eq!(r.would_add, ["192.0.2.3"]);
    assert_eq!(r.would_remove, ["192.0.2.1"]);
    let v = a.ok(Request::BlockRmOrigin {
        origin: "g".into(),
        dry_run: true,
    });
    assert_eq!(v["would_remove"], 2, "{v}");
    assert_eq!(a.ls().len(), 2);
    assert!(a.kernel("192.0.2.1").is_some());
}

/// The decisions on one prefix, as `block ls --json` shows them: (origin,
/// kind) strongest first.
fn decisions_of(a: &mut Agent, cidr: &str) -> Vec<(String, String)> {
    let ls = a.ls();
    let row = ls
        .iter()
        .find(|v| v["cidr"] == cidr)
        .unwrap_or_else(|| panic!("{cidr} not listed: {ls:?}"));
    row["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["origin"].as_str().unwrap().to_owned(),
                d["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_manual_ban_on_a_feed_address_keeps_the_feeds_and_lifting_it_leaves_it() {
    let mut a = Agent::new(Mode::Enforce);
    import(&mut a, "spamhaus", &["192.0.2.7", "192.0.2.8"]);
    // A manual ban for an hour on an address the feed bans for good: both
    // decisions are kept, the kernel enforces the stronger (no expiry).
    let v = a.ban("192.0.2.7", Some(3600));
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        decisions_of(&mut a, "192.0.2.7/32"),
        [
            ("spamhaus".into(), "feed".into()),
            ("cli".into(), "manual".into())
        ]
    );
    let e = a.kernel("192.0.2.7/32").unwrap();
    assert_eq!((e.expires_ns, kind_of(&e)), (0, Some(BanReason::Feed)));
    // `block test` shows every decision on the covering entry.
    let t = a.ok(Request::BlockTest {
        address: "192.0.2.7".into(),
    });
    assert_eq!(
        t["bans"][0]["decisions"].as_array().unwrap().len(),
        2,
        "{t}"
    );
    // Filters match any decision.
    let page = a.ok(Request::BlockQuery {
        filter: crate::proto::BanFilter {
            kind: Some("manual".into()),
            ..Default::default()
        },
    });
    assert_eq!(page["total"], 1, "{page}");

    // Both survive a restart.
    let mut a = a.restart();
    assert_eq!(decisions_of(&mut a, "192.0.2.7/32").len(), 2);

    // Lifting the manual ban leaves the feed's, still enforced.
    let r = a.ok(Request::BlockRm {
        cidr: "192.0.2.7".into(),
        local: false,
        exist: false,
    });
    assert_eq!(r["still_banned_by"], serde_json::json!(["spamhaus"]), "{r}");
    assert_eq!(
        decisions_of(&mut a, "192.0.2.7/32"),
        [("spamhaus".into(), "feed".into())]
    );
    assert!(
        a.kernel("192.0.2.7/32").is_some(),
        "the feed's ban is lifted"
    );
    let stored = a.stored();
    let rec = stored.iter().find(|r| r.cidr == net("192.0.2.7")).unwrap();
    assert!(rec.also.is_empty() && rec.origin == "spamhaus", "{rec:?}");
    // A second `rm` (no manual decision left) lifts what remains.
    a.ok(Request::BlockRm {
        cidr: "192.0.2.7".into(),
        local: false,
        exist: false,
    });
    assert!(a.kernel("192.0.2.7/32").is_none());
}

#[test]
fn the_kernel_follows_the_strongest_remaining_decision() {
    let mut a = Agent::new(Mode::Enforce);
    // A permanent manual ban, then CrowdSec's for an hour on the same address.
    a.ban("192.0.2.9", None);
    let later = clock::unix_now() + 3600;
    let want = |s: &str| wanted(s, later, "crowdsecurity/ssh-bf");
    let r = a
        .state
        .apply_crowdsec(&[want("192.0.2.9")], &[], true)
        .unwrap();
    assert_eq!((r.added, r.kept_other_origin), (1, 1), "{r:?}");
    let e = a.kernel("192.0.2.9/32").unwrap();
    assert_eq!((e.expires_ns, kind_of(&e)), (0, Some(BanReason::Manual)));
    // Lifting the manual one: CrowdSec's hour is what the kernel holds now.
    a.ok(Request::BlockRm {
        cidr: "192.0.2.9".into(),
        local: false,
        exist: false,
    });
    let e = a.kernel("192.0.2.9/32").unwrap();
    assert_eq!(kind_of(&e), Some(BanReason::Crowdsec));
    assert!(e.expires_ns > clock::boot_ns(), "{e:?}");
    // CrowdSec lifting its decision lifts the ban: nothing else holds it.
    a.state.apply_crowdsec(&[], &[], true).unwrap();
    assert!(a.kernel("192.0.2.9/32").is_none());
    assert!(a.ls().is_empty());
}

#[test]
fn an_ended_decision_goes_and_the_others_stay() {
    let mut a = Agent::new(Mode::Enforce);
    import(&mut a, "spamhaus", &["192.0.2.10"]);
    let now = clock::unix_now();
    a.state.put_ban(ended_manual("192.0.2.10", now)).unwrap();
    assert_eq!(decisions_of(&mut a, "192.0.2.10/32").len(), 2);
    assert_eq!(a.state.gc(), 0, "the prefix stays banned");
    assert_eq!(
        decisions_of(&mut a, "192.0.2.10/32"),
        [("spamhaus".into(), "feed".into())]
    );
    assert!(a.kernel("192.0.2.10/32").is_some());
    assert!(a.stored()[0].also.is_empty(), "{:?}", a.stored());
    assert_eq!(a.state.next_expiry(), None);
}

#[test]
fn removing_an_origin_leaves_the_other_decisions() {
    let mut a = Agent::new(Mode::Enforce);
    import(&mut a, "spamhaus", &["192.0.2.11", "192.0.2.12"]);
    a.ban("192.0.2.11", None);
    let dry = a.ok(Request::BlockRmOrigin {
        origin: "spamhaus".into(),
        dry_run: true,
    });
    assert_eq!(dry["would_remove"], 2, "{dry}");
    a.ok(Request::BlockRmOrigin {
        origin: "spamhaus".into(),
        dry_run: false,
    });
    assert_eq!(
        decisions_of(&mut a, "192.0.2.11/32"),
        [("cli".into(), "manual".into())]
    );
    assert!(a.kernel("192.0.2.12/32").is_none());
    let e = a.kernel("192.0.2.11/32").unwrap();
    assert_eq!(kind_of(&e), Some(BanReason::Manual));
    // The export of one origin holds only that origin's decisions.
    a.ban("192.0.2.13", None);
    import(&mut a, "other", &["192.0.2.13"]);
    let x = a.ok(Request::BlockExport {
        origin: Some("other".into()),
    });
    assert_eq!(x["total"], 1, "{x}");
    assert_eq!(x["bans"][0]["origin"], "other", "{x}");
    assert_eq!(x["bans"][0]["decisions"].as_array().unwrap().len(), 1);
}

#[test]
fn the_metrics_show_the_prefixes_holding_the_most_bans() {
    let mut a = Agent::new(Mode::Enforce);
    import(
        &mut a,
        "f",
        &[
            "198.18.1.1",
            "198.18.2.2",
            "198.18.3.0/24",
            "198.19.0.1",
            "fd00:1::1",
        ],
    );
    // A ban broader than the /16 counts under its own prefix.
    import(&mut a, "g", &["198.16.0.0/14"]);
    let top = a.state.snapshot(0).top_prefixes;
    assert_eq!(
        top,
        [
            ("198.18.0.0/16".to_owned(), 3),
            ("198.16.0.0/14".to_owned(), 1),
            ("198.19.0.0/16".to_owned(), 1),
            ("fd00:1::/32".to_owned(), 1),
        ]
    );
    let many: Vec<String> = (0..30).map(|i| format!("10.{i}.0.1")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    import(&mut a, "h", &many);
    assert_eq!(
        a.state.snapshot(0).top_prefixes.len(),
        crate::metrics::TOP_PREFIXES
    );
}

/// A full read applied page by page: each page is enforced as it comes,
/// nothing is lifted for being absent before the read's end, and what its
/// end settles is what a read in one piece settles (a read cut short and
/// started over settles nothing).
#[test]
fn a_full_read_in_pages_lifts_only_at_its_end() {
    use crate::cluster::{Change, ClusterStatus, ClusterStore};
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = crate::policy::ClusterSpec {
        host_id: Some("host-b".into()),
        ..crate::policy::ClusterSpec::default()
    };
    let status = std::sync::Arc::new(std::sync::Mutex::new(ClusterStatus {
        cfg: Some(crate::cluster::ClusterConfig::from_spec(&spec, "x")),
        ..ClusterStatus::default()
    }));
    let store: Box<dyn Store> = Box::new(ClusterStore::new(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        tx,
        status.clone(),
    ));
    let mut a = Agent::over(MemMaps::new(Mode::Enforce), Vec::new(), store, dir);
    a.state.set_cluster(status.clone());
    // Not ready until the first full read is in (bounded, see below).
    let why = a.state.snapshot(0).not_ready;
    assert!(
        why.as_deref().is_some_and(|w| w.contains("fleet")),
        "{why:?}"
    );
    let mut sent = || {
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            v.push(c);
        }
        v
    };
    let now = clock::unix_now();
    let remote = |cidr: &str| BanRecord {
        cidr: net(cidr),
        kind: BanReason::Policy,
        reason: "sqli".into(),
        origin: "agent".into(),
        created_at: now,
        created_at_ms: None,
        expires_at: Some(now + 600),
        offences: 1,
        host: Some("host-a".into()),
        also: Vec::new(),
    };
    // Held: a fleet ban, this host's own ban etcd had (acknowledged), one
    // still queued, and one whose record turns out unreadable.
    a.state.cluster_put_many(vec![remote("198.51.100.1")]);
    a.ban("198.51.100.2", Some(600));
    a.ban("198.51.100.4", Some(600));
    a.state.cluster_acked(u64::MAX - 1);
    a.ban("198.51.100.3", Some(600));
    sent();

    // A read cut short (the link lost after a page): its page is enforced,
    // nothing it lacked is lifted.
    let mut rs = a.state.cluster_snapshot_start(&[], &[]);
    a.state
        .cluster_snapshot_page(&mut rs, vec![remote("198.51.100.5")]);
    assert!(a.kernel("198.51.100.5").is_some());
    drop(rs);
    assert!(a.kernel("198.51.100.1").is_some() && a.kernel("198.51.100.2").is_some());

    // The next read, in two pages.
    let mut rs = a.state.cluster_snapshot_start(&[], &[]);
    assert_eq!(
        a.state
            .cluster_snapshot_page(&mut rs, vec![remote("198.51.100.6")]),
        1
    );
    assert!(
        a.kernel("198.51.100.6").is_some(),
        "a page is enforced before the read ends"
    );
    assert!(
        a.kernel("198.51.100.1").is_some() && a.kernel("198.51.100.5").is_some(),
        "nothing is lifted for being absent before the read ends"
    );
    // A local unban between two pages: the end does not bring it back.
    a.ok(Request::BlockRm {
        cidr: "198.51.100.3".into(),
        local: false,
        exist: false,
    });
    sent();
    a.state
        .cluster_snapshot_page(&mut rs, vec![remote("198.51.100.7")]);
    assert!(
        a.state.snapshot(0).not_ready.is_some(),
        "ready before the read's end"
    );
    let (_, lifted) = a.state.cluster_snapshot_end(rs, &[net("198.51.100.4")]);
    assert_eq!(a.state.snapshot(0).not_ready, None, "the whole read is in");
    // The fleet's bans the read lacked are lifted now; this host's own
    // that etcd lost is kept and shared again; its own whose record was
    // unreadable is kept and not shared again.
    assert_eq!(lifted, 2);
    assert!(a.kernel("198.51.100.1").is_none() && a.kernel("198.51.100.5").is_none());
    for kept in [
        "198.51.100.2",
        "198.51.100.4",
        "198.51.100.6",
        "198.51.100.7",
    ] {
        assert!(a.kernel(kept).is_some(), "{kept} lifted");
    }
    assert!(a.kernel("198.51.100.3").is_none());
    let shared = sent();
    assert!(
        matches!(&shared[..], [(_, Change::Put(r))] if r.cidr == net("198.51.100.2")),
        "only the ban etcd lost is shared again: {shared:?}"
    );
    assert_eq!(a.stored().len(), 4, "{:?}", a.stored());
}

/// Bans 198.18.0.1 .. 198.18.0.`n` by hand; kernel and store hold them all.
fn agent_with_bans(n: u8) -> Agent {
    let mut a = Agent::new(Mode::Enforce);
    for i in 1..=n {
        a.ban(&format!("198.18.0.{i}"), None);
    }
    a
}

fn restore_view(a: &mut Agent) -> serde_json::Value {
    a.ok(Request::Status)["restore"].clone()
}

/// A stored row that cannot be decoded is skipped and counted (status,
/// not a stopped restore): every other ban is restored, the agent is
/// ready, and the kernel's entry for the bad row is neither adopted over
/// the stored row nor lifted.
#[test]
fn a_bad_store_row_is_skipped_counted_and_its_kernel_ban_kept_unadopted() {
    let a = agent_with_bans(4);
    let Agent { state, dir } = a;
    let AgentState { maps, store, .. } = state;
    drop(store);
    let mut raw = RedbStore::open(dir.path()).unwrap();
    raw.put_raw_ban("198.18.0.2/32", &[1, 0xff]);
    let store: Box<dyn Store> = Box::new(raw);
    let mut a = Agent::over(maps, Vec::new(), store, dir);
    let mut listed: Vec<String> = a
        .ls()
        .iter()
        .map(|v| v["cidr"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["198.18.0.1/32", "198.18.0.3/32", "198.18.0.4/32"]);
    let r = restore_view(&mut a);
    assert_eq!(r["skipped_rows"], 1, "{r}");
    assert_eq!(r["kernel_only"], 1, "{r}");
    assert!(r["read_error"].is_null(), "{r}");
    assert_eq!(a.state.snapshot(0).not_ready, None);
    assert!(a.kernel("198.18.0.2/32").is_some(), "still enforced");
    drop(a.state.store.take());
    let raw = RedbStore::open(a.dir.path()).unwrap();
    assert_eq!(
        raw.raw_ban("198.18.0.2/32").as_deref(),
        Some(&[1u8, 0xff][..]),
        "the stored row was not overwritten by an adoption"
    );
}

/// A store whose ban stream ends in an error after `after` bans (a
/// failing disk, a reader thread that died).
struct StopsReading {
    inner: RedbStore,
    after: usize,
}

impl Store for StopsReading {
    fn put_bans(&mut self, records: &[BanRecord]) -> Result<(), crate::store::StoreError> {
        self.inner.put_bans(records)
    }
    fn remove_bans(&mut self, cidrs: &[IpNet]) -> Result<(), crate::store::StoreError> {
        self.inner.remove_bans(cidrs)
    }
    fn bans(&self) -> Result<Vec<BanRecord>, crate::store::StoreError> {
        self.inner.bans()
    }
    fn ban_stream(
        &self,
        _: usize,
        f: &mut dyn FnMut(crate::store::BanStream<'_>),
    ) -> Result<(), crate::store::StoreError> {
        let mut all = self.inner.bans()?;
        all.sort_by_key(|r| r.cidr);
        let nets: Vec<(IpNet, u32)> = all.iter().take(self.after).map(|r| (r.cidr, 0)).collect();
        for (i, rec) in all.into_iter().take(self.after).enumerate() {
            f(crate::store::BanStream::Record(0, rec));
            f(crate::store::BanStream::Bans(&nets[i..=i]));
        }
        Err(crate::store::StoreError::Io {
            op: "read",
            message: "the store reader thread failed".into(),
        })
    }
    fn put_allow(
        &mut self,
        record: &crate::store::AllowRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.put_allow(record)
    }
    fn remove_allow(&mut self, cidr: &IpNet) -> Result<(), crate::store::StoreError> {
        self.inner.remove_allow(cidr)
    }
    fn allows(&self) -> Result<Vec<crate::store::AllowRecord>, crate::store::StoreError> {
        self.inner.allows()
    }
    fn put_limits(
        &mut self,
        r: &crate::store::LimitsRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.put_limits(r)
    }
    fn limits(&self) -> Result<Option<crate::store::LimitsRecord>, crate::store::StoreError> {
        self.inner.limits()
    }
    fn put_offence(
        &mut self,
        c: &IpNet,
        r: &crate::store::OffenceRecord,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.put_offence(c, r)
    }
    fn offences(
        &self,
    ) -> Result<Vec<(IpNet, crate::store::OffenceRecord)>, crate::store::StoreError> {
        self.inner.offences()
    }
}

/// A warm start whose store read stops part way: the bans read are
/// restored, the kernel's other bans stay enforced, and none is adopted as
/// a `kernel` record over its real stored one; status and readiness say
/// the read was partial.
#[test]
fn a_partial_store_read_adopts_no_kernel_ban() {
    let a = agent_with_bans(4);
    let Agent { state, dir } = a;
    let AgentState { maps, store, .. } = state;
    drop(store);
    let store: Box<dyn Store> = Box::new(StopsReading {
        inner: RedbStore::open(dir.path()).unwrap(),
        after: 2,
    });
    let mut a = Agent::over(maps, Vec::new(), store, dir);
    assert_eq!(a.ls().len(), 2);
    for i in 1..=4 {
        assert!(
            a.kernel(&format!("198.18.0.{i}/32")).is_some(),
            "{i} still enforced"
        );
    }
    let stored = a.stored();
    assert_eq!(stored.len(), 4);
    assert!(
        stored.iter().all(|r| r.origin == "cli"),
        "records overwritten: {stored:?}"
    );
    let r = restore_view(&mut a);
    assert_eq!(r["kernel_only"], 2, "{r}");
    assert!(r["read_error"].as_str().unwrap().contains("reader"), "{r}");
    let why = a.state.snapshot(0).not_ready.unwrap();
    assert!(why.contains("read only in part"), "{why}");
}

/// Stored bans the kernel refuses at start (a full map) are counted and
/// make the agent not ready, with the kernel's reason.
#[test]
fn stored_bans_the_kernel_refuses_at_start_are_counted_and_not_ready() {
    let a = agent_with_bans(3);
    let Agent { state, dir } = a;
    let AgentState { store, .. } = state;
    drop(store);
    // A cold start into maps that take nothing.
    let mut maps = MemMaps::new(Mode::Enforce);
    maps.full = true;
    let store: Box<dyn Store> = Box::new(RedbStore::open(dir.path()).unwrap());
    let mut a = Agent::over(maps, Vec::new(), store, dir);
    assert_eq!(a.ls().len(), 3);
    let r = restore_view(&mut a);
    assert_eq!(r["not_enforced"], 3, "{r}");
    assert!(!r["kernel_error"].as_str().unwrap().is_empty(), "{r}");
    let why = a.state.snapshot(0).not_ready.unwrap();
    assert!(why.contains("3 stored bans are not enforced"), "{why}");
    // A clean start says so too.
    let mut b = agent_with_bans(1).restart();
    let r = restore_view(&mut b);
    assert_eq!(
        (
            r["skipped_rows"].as_u64(),
            r["not_enforced"].as_u64(),
            r["kernel_only"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(b.state.snapshot(0).not_ready, None);
}

/// A fleet whose set cannot be read (etcd away) holds `/readyz` back only
/// for a while: a rollout waits for the fleet's bans, never for good.
#[test]
fn the_wait_for_the_fleets_set_runs_out() {
    let mut a = Agent::new(Mode::Enforce);
    assert_eq!(a.state.snapshot(0).not_ready, None, "not in a fleet");
    a.state
        .set_cluster(std::sync::Arc::new(std::sync::Mutex::new(
            crate::cluster::ClusterStatus::default(),
        )));
    assert!(a.state.snapshot(0).not_ready.is_some());
    a.state.fleet_wait = Some(std::time::Instant::now());
    assert_eq!(a.state.snapshot(0).not_ready, None);
}
