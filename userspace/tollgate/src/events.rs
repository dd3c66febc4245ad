//! Security events: every violation and every ban, as one JSON object per
//! line in a local file (rotated by size), optionally copied to syslog, and
//! streamed to `tollgate events --follow`.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::{fs::OpenOptionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::warn;

pub use crate::policy::EventsPolicy;

/// Events buffered for slow `events --follow` readers.
const FOLLOW_BUFFER: usize = 4096;

/// Windows of the per-client, per-rule event limit kept at once (oldest
/// dropped first: a flood of distinct clients cannot grow memory).
const MAX_WINDOWS: usize = 65_536;

/// One client's and rule's minute: written, suppressed.
struct Window {
    start: std::time::Instant,
    written: u32,
    suppressed: u64,
    /// The event that opened the window (for the summary).
    sample: SecurityEvent,
}

/// What a security event records (its `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A rule matched.
    Violation,
    /// A client was banned (or would have been: see `enforced`).
    Ban,
    /// Violation events of one client and rule left out by the per-minute
    /// limit (`note` says how many).
    Suppressed,
}

/// One security event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `violation`, `ban` or `suppressed`.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The client (the real client when it came through a trusted proxy).
    pub client: IpAddr,
    /// The trusted proxy the request came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<IpAddr>,
    /// API port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Stable rule id (`sqli.tautology`, ...); for bans the strongest rule.
    pub rule: String,
    /// Attack category.
    pub category: tollgate_detect::Category,
    /// Score the rule added (bans: the client's score).
    pub score: f64,
    /// Where in the message (`query`, `header:user-agent`, `body`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Short excerpt, long tokens masked.
    #[serde(default)]
    pub evidence: String,
    /// Method and path template, e.g. `GET /users/{id}`.
    #[serde(default)]
    pub route: String,
    /// `alert` or `ban`.
    pub action: tollgate_detect::Action,
    /// False in monitor mode (or when the client is allowlisted): nothing was
    /// dropped.
    pub enforced: bool,
    /// Bans: the banned address or prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<String>,
    /// Bans: seconds until it lifts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Why a ban was not enforced, or other context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the client is verified (the kernel accepted the request on a
    /// completed handshake); `false` events never ban.
    #[serde(default = "verified_default")]
    pub verified: bool,
}

/// The current time as events write it.
#[must_use]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Unix milliseconds of an event time; `None` if unparsable.
#[must_use]
pub fn unix_ms(time: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(time).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// Writes events: file with rotation, syslog, followers.
pub struct EventLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    policy: EventsPolicy,
    syslog: Option<UnixDatagram>,
    follow: broadcast::Sender<Arc<String>>,
    written: u64,
    windows: std::collections::HashMap<(std::net::IpAddr, String), Window>,
    /// Violation events suppressed by the per-client, per-rule limit.
    pub suppressed: u64,
}

impl EventLog {
    /// Opens (creates, 0600) the log.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: PathBuf, policy: EventsPolicy) -> std::io::Result<Self> {
        let file = open_append(&path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        let syslog = if policy.syslog {
            match UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|()| s)) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("events will not go to syslog: /dev/log: {e}");
                    None
                }
            }
        } else {
            None
        };
        let (follow, _) = broadcast::channel(FOLLOW_BUFFER);
        Ok(Self {
            path,
            file: Some(file),
            size,
            policy,
            syslog,
            follow,
            written: 0,
            windows: std::collections::HashMap::new(),
            suppressed: 0,
        })
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotated files kept.
    #[must_use]
    pub fn keep(&self) -> u32 {
        self.policy.keep
    }

    /// Events written since start.
    #[cfg(test)]
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// New events, for `events --follow`.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<String>> {
        self.follow.subscribe()
    }

    /// Records one event. Failures are logged, never fatal: enforcement does
    /// not wait for a full disk.
    pub fn write(&mut self, ev: &SecurityEvent) {
        if ev.kind == EventKind::Violation && !self.admit(ev) {
            return;
        }
        self.write_line(ev);
    }

    /// The per-client, per-rule limit: whether `ev` is written. Ends the
    /// minutes that are over first, writing a summary for each that
    /// suppressed something.
    fn admit(&mut self, ev: &SecurityEvent) -> bool {
        let limit = self.policy.per_client_rule_per_minute;
        if limit == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        let minute = std::time::Duration::from_secs(60);
        let key = (ev.client, ev.rule.clone());
        if self
            .windows
            .get(&key)
            .is_some_and(|w| now - w.start >= minute)
            || (!self.windows.contains_key(&key) && self.windows.len() >= MAX_WINDOWS)
        {
            self.close_windows(now, minute);
        }
        let w = self.windows.entry(key).or_insert_with(|| Window {
            start: now,
            written: 0,
            suppressed: 0,
            sample: ev.clone(),
        });
        if w.written < limit {
            w.written += 1;
            true
        } else {
            w.suppressed += 1;
            self.suppressed += 1;
            false
        }
    }

    /// Writes the summaries of minutes that are over (called periodically,
    /// so a flood that stopped still gets its summary).
    pub fn tick(&mut self) {
        if !self.windows.is_empty() {
            self.close_windows(
                std::time::Instant::now(),
                std::time::Duration::from_secs(60),
            );
        }
    }

    /// Ends every window older than `minute` (or, when full, the oldest
    /// half), writing a `suppressed` event for each that held events back.
    fn close_windows(&mut self, now: std::time::Instant, minute: std::time::Duration) {
        let full = self.windows.len() >= MAX_WINDOWS;
        let mut ended: Vec<(std::net::IpAddr, String)> = self
            .windows
            .iter()
            .filter(|(_, w)| now - w.start >= minute)
            .map(|(k, _)| k.clone())
            .collect();
        if full && ended.len() < MAX_WINDOWS / 2 {
            let mut by_age: Vec<_> = self
                .windows
                .iter()
                .map(|(k, w)| (w.start, k.clone()))
                .collect();
            by_age.sort_by_key(|(t, _)| *t);
            ended.extend(by_age.into_iter().take(MAX_WINDOWS / 2).map(|(_, k)| k));
        }
        for k in ended {
            let Some(w) = self.windows.remove(&k) else {
                continue;
            };
            if w.suppressed > 0 {
                let mut summary = w.sample;
                summary.time = now_rfc3339();
                summary.kind = EventKind::Suppressed;
                summary.evidence = String::new();
                summary.note = Some(format!(
                    "{} more violation events of this rule from this client within {} s were not written",
                    w.suppressed,
                    (now - w.start).as_secs().max(1)
                ));
                self.write_line(&summary);
            }
        }
    }

    fn write_line(&mut self, ev: &SecurityEvent) {
        let Ok(mut line) = serde_json::to_string(ev) else {
            return;
        };
        line.push('\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.policy.max_bytes {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(line.as_bytes()) {
                Ok(()) => self.size += len,
                Err(e) => warn!(
                    "failed to write a security event to {}: {e}",
                    self.path.display()
                ),
            }
        }
        if let Some(s) = &self.syslog {
            // <84> = facility authpriv (10) * 8 + severity warning (4).
            let msg = format!("<84>tollgate[{}]: {}", std::process::id(), line.trim_end());
            let _ = s.send(msg.as_bytes());
        }
        self.written += 1;
        let _ = self.follow.send(Arc::new(line));
    }

    fn rotate(&mut self) {
        self.file = None;
        for i in (1..self.policy.keep).rev() {
            let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        let r = if self.policy.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            std::fs::rename(&self.path, rotated(&self.path, 1))
        };
        if let Err(e) = r {
            warn!("failed to rotate {}: {e}", self.path.display());
        }
        match open_append(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                self.size = 0;
            }
            Err(e) => warn!("failed to reopen {}: {e}", self.path.display()),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Lines of the log (rotated files first, oldest first) with a time at or
/// after `since_ms`; at most the newest `limit`.
#[must_use]
pub fn read_since(path: &Path, keep: u32, since_ms: u64, limit: usize) -> Vec<String> {
    let mut files: Vec<PathBuf> = (1..=keep).rev().map(|i| rotated(path, i)).collect();
    files.push(path.to_owned());
    let mut out = std::collections::VecDeque::new();
    for f in files {
        let Ok(file) = File::open(&f) else { continue };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            let recent = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("time").and_then(|t| t.as_str()).and_then(unix_ms))
                .is_some_and(|t| t >= since_ms);
            if recent {
                out.push_back(line);
                if out.len() > limit {
                    out.pop_front();
                }
            }
        }
    }
    out.into()
}

/// `now - d` in Unix milliseconds.
#[must_use]
pub fn since_ms(d: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(now.saturating_sub(d.as_millis())).unwrap_or(0)
}

fn verified_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rule: &str) -> SecurityEvent {
        SecurityEvent {
            time: now_rfc3339(),
            kind: EventKind::Violation,
            client: "198.18.0.2".parse().unwrap(),
            proxy: None,
            port: Some(8080),
            rule: rule.into(),
            category: tollgate_detect::Category::Sqli,
            score: 10.0,
            location: Some("query".into()),
            evidence: "1' or '1'='1".into(),
            route: "GET /items".into(),
            action: tollgate_detect::Action::Ban,
            enforced: true,
            ban: None,
            ttl_secs: None,
            note: None,
            verified: true,
        }
    }

    /// The enums write the strings the event contract names.
    #[test]
    fn event_fields_keep_their_strings() {
        use tollgate_detect::{Action, Category};
        let mut e = ev("mass_assignment.forbidden");
        e.category = Category::MassAssignment;
        e.action = Action::Alert;
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            (&v["type"], &v["category"], &v["action"]),
            (
                &serde_json::json!("violation"),
                &serde_json::json!("mass_assignment"),
                &serde_json::json!("alert")
            )
        );
        e.kind = EventKind::Ban;
        e.category = Category::RateLimit;
        e.action = Action::Ban;
        let line = serde_json::to_string(&e).unwrap();
        assert!(
            line.contains(r#""type":"ban""#)
                && line.contains(r#""category":"rate_limit""#)
                && line.contains(r#""action":"ban""#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<SecurityEvent>(&line).unwrap(), e);
    }

    #[test]
    fn writes_rotates_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev/events.jsonl");
        let policy = EventsPolicy {
            max_bytes: 4096,
            keep: 2,
            ..EventsPolicy::default()
        };
        let mut log = EventLog::open(path.clone(), policy).unwrap();
        let mut rx = log.subscribe();
        for i in 0..100 {
            log.write(&ev(&format!("rule.{i}")));
        }
        assert_eq!(log.written(), 100);
        assert!(rx.try_recv().is_ok());
        // Bounded: the live file plus at most two rotated ones.
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let lines = read_since(&path, 2, 0, 1000);
        assert!(!lines.is_empty() && lines.len() < 100);
        let last: SecurityEvent = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last.rule, "rule.99");
        // Newest `limit` only, and nothing from the future.
        assert_eq!(read_since(&path, 2, 0, 3).len(), 3);
        assert!(read_since(&path, 2, since_ms(Duration::ZERO) + 60_000, 10).is_empty());
        // The file is private.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn a_flood_of_one_clients_violations_is_limited_and_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(path.clone(), EventsPolicy::default()).unwrap();
        for _ in 0..25 {
            log.write(&ev("sqli.tautology"));
        }
        // Another rule and a ban are not held back by that flood.
        log.write(&ev("xss.script"));
        let mut ban = ev("sqli.tautology");
        ban.kind = EventKind::Ban;
        log.write(&ban);
        let lines = read_since(&path, 5, 0, 1000);
        let of = |kind: EventKind, rule: &str| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<SecurityEvent>(l).ok())
                .filter(|e| e.kind == kind && e.rule == rule)
                .count()
        };
        assert_eq!(of(EventKind::Violation, "sqli.tautology"), 20);
        assert_eq!(of(EventKind::Violation, "xss.script"), 1);
        assert_eq!(of(EventKind::Ban, "sqli.tautology"), 1);
        assert_eq!(log.suppressed, 5);
        // When the minute is over, one summary says what was left out.
        log.close_windows(
            std::time::Instant::now() + Duration::from_secs(61),
            Duration::from_secs(60),
        );
        let lines = read_since(&path, 5, 0, 1000);
        let summary: SecurityEvent = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<SecurityEvent>(l).ok())
            .find(|e| e.kind == EventKind::Suppressed)
            .unwrap();
        assert_eq!(summary.rule, "sqli.tautology");
        assert!(summary.note.unwrap().starts_with("5 more"));
    }

    #[test]
    fn event_json_has_the_documented_fields() {
        let v: serde_json::Value = serde_json::to_value(ev("sqli.tautology")).unwrap();
        for k in [
            "time", "type", "client", "rule", "category", "evidence", "route", "action",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(unix_ms(v["time"].as_str().unwrap()).is_some());
    }
}
