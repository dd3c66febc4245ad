//! CrowdSec decisions as the Local API's bouncer stream sends them
//! (`GET /v1/decisions/stream`): parsing and filtering, the bouncer's
//! settings, and the decisions it holds. No network I/O (the agent's
//! `agent/crowdsec.rs` polls the Local API); the one file this module reads
//! is the API key file ([`KeySource::read`], at every pull so a rotated key
//! needs no restart).
//!
//! A stream answer is `{"new": [...] | null, "deleted": [...] | null}`, each
//! decision an object such as
//! `{"id": 4, "origin": "cscli", "scenario": "ssh-bf", "scope": "Ip",
//! "type": "ban", "value": "198.18.7.9", "duration": "3h59m12.5s"}`.
//! The text comes from another program and is treated as untrusted: an entry
//! that cannot be used is skipped and counted (with a few examples kept for
//! the log), never fatal, and the rest is still used. Only `ban` decisions
//! on the scopes asked for are enforceable at L3; others (`captcha`,
//! `throttle`, custom types, `Country`/`AS` scopes) are counted and skipped.

use std::{collections::BTreeMap, time::Duration};

use ipnet::IpNet;
use serde_json::Value;

use crate::net::parse_net;

mod settings;
mod tracker;

pub use settings::*;
pub use tracker::*;

/// How many skipped entries are described in a [`Skipped`] (the rest are
/// only counted).
pub const MAX_EXAMPLES: usize = 5;
/// Longest reason built from a decision (the agent's own limit for reasons).
pub const MAX_REASON: usize = 200;

/// A decision scope Tollgate can enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One address (`Ip`).
    Ip,
    /// A CIDR prefix (`Range`).
    Range,
}

impl Scope {
    /// The name CrowdSec uses (`Ip`, `Range`).
    #[must_use]
    pub fn lapi_name(self) -> &'static str {
        match self {
            Self::Ip => "Ip",
            Self::Range => "Range",
        }
    }

    /// The name in a stream query (`scopes=ip,range`).
    #[must_use]
    pub fn query_name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Range => "range",
        }
    }

    fn from_lapi(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("ip") {
            Some(Self::Ip)
        } else if s.eq_ignore_ascii_case("range") {
            Some(Self::Range)
        } else {
            None
        }
    }
}

/// Which decisions to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Scopes enforced (default: both).
    pub scopes: Vec<Scope>,
    /// Decision origins taken (`crowdsec`, `cscli`, `CAPI`, `lists`, ...;
    /// compared without case); `None` = every origin.
    pub origins: Option<Vec<String>>,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            scopes: vec![Scope::Ip, Scope::Range],
            origins: None,
        }
    }
}

/// One usable decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The Local API's decision id.
    pub id: i64,
    /// The address (as a host prefix) or range.
    pub net: IpNet,
    /// Time left; zero for a decision that has already run out (`deleted`
    /// entries carry negative durations).
    pub ttl: Duration,
    /// Who made it: `crowdsec`, `cscli`, `CAPI`, `lists`, ...
    pub origin: String,
    /// The scenario (or the reason given to `cscli decisions add`).
    pub scenario: String,
}

impl Decision {
    /// A reason for the ban, printable and bounded.
    #[must_use]
    pub fn reason(&self) -> String {
        let text = format!("crowdsec {}: {}", self.origin, self.scenario);
        text.chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect()
    }
}

/// Entries that were not used, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Not an object, or a field missing or of the wrong type.
    pub malformed: usize,
    /// A value that is not an address/prefix for its scope.
    pub bad_value: usize,
    /// A duration that could not be read.
    pub bad_duration: usize,
    /// Types other than `ban`, by type (not enforceable at L3).
    pub other_types: BTreeMap<String, usize>,
    /// Scopes not enforced (`Country`, `AS`, or filtered out).
    pub other_scopes: usize,
    /// Origins filtered out by the policy.
    pub other_origins: usize,
    /// `new` decisions whose time was already up.
    pub expired: usize,
    /// Up to [`MAX_EXAMPLES`] descriptions of malformed entries.
    pub examples: Vec<String>,
}

impl Skipped {
    /// Everything skipped.
    #[cfg(test)]
    #[must_use]
    pub fn total(&self) -> usize {
        self.malformed
            + self.bad_value
            + self.bad_duration
            + self.other_types.values().sum::<usize>()
            + self.other_scopes
            + self.other_origins
            + self.expired
    }

    /// Skipped because the entry was broken (as opposed to filtered out).
    #[must_use]
    pub fn broken(&self) -> usize {
        self.malformed + self.bad_value + self.bad_duration
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what.chars().take(160).collect());
        }
    }
}

/// A parsed stream answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamBatch {
    /// Decisions to enforce.
    pub new: Vec<Decision>,
    /// Decisions withdrawn (deleted or expired at the Local API).
    pub deleted: Vec<Decision>,
    /// What was not used.
    pub skipped: Skipped,
}

/// Why a whole answer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// Not JSON at all.
    #[error("the answer is not JSON: {0}")]
    Json(String),
    /// JSON, but not `{"new": .., "deleted": ..}`.
    #[error("the answer is not a decision stream: {0}")]
    Shape(String),
}

/// Parses a stream answer, keeping the decisions `filter` selects.
///
/// # Errors
/// When the body is not a JSON object with `new`/`deleted` arrays (or null).
pub fn parse_stream(body: &[u8], filter: &Filter) -> Result<StreamBatch, StreamError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| StreamError::Json(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(StreamError::Shape("not an object".into()));
    };
    let mut out = StreamBatch::default();
    for (key, deleted) in [("new", false), ("deleted", true)] {
        let items = match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(StreamError::Shape(format!("'{key}' is not a list"))),
        };
        for item in items {
            if let Some(d) = decision(item, deleted, filter, &mut out.skipped) {
                if deleted {
                    out.deleted.push(d);
                } else {
                    out.new.push(d);
                }
            }
        }
    }
    Ok(out)
}

fn decision(item: &Value, deleted: bool, filter: &Filter, skip: &mut Skipped) -> Option<Decision> {
    let field = |name: &str| item.get(name).and_then(Value::as_str);
    let (Some(kind), Some(scope), Some(value), Some(duration)) = (
        field("type"),
        field("scope"),
        field("value"),
        field("duration"),
    ) else {
        skip.malformed += 1;
        let shown = item.to_string();
        skip.example(format!("missing type/scope/value/duration: {shown}"));
        return None;
    };
    let Some(id) = item.get("id").and_then(Value::as_i64) else {
        skip.malformed += 1;
        skip.example(format!("missing id: {item}"));
        return None;
    };
    let origin = field("origin").unwrap_or("unknown");
    if !kind.eq_ignore_ascii_case("ban") {
        let k: String = kind.chars().filter(|c| !c.is_control()).take(32).collect();
        *skip.other_types.entry(k).or_default() += 1;
        return None;
    }
    let Some(sc) = Scope::from_lapi(scope).filter(|s| filter.scopes.contains(s)) else {
        skip.other_scopes += 1;
        return None;
    };
    if let Some(origins) = &filter.origins
        && !origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    {
        skip.other_origins += 1;
        return None;
    }
    let net = match sc {
        // An Ip decision is one host; a Range one a prefix (host bits are
        // cleared: CrowdSec accepts `1.2.3.4/24` and means the /24).
        Scope::Ip => parse_net(value)
            .ok()
            .filter(|n| n.prefix_len() == n.max_prefix_len()),
        Scope::Range => parse_net(value).ok().or_else(|| {
            value
                .trim()
                .parse::<IpNet>()
                .ok()
                .and_then(|n| parse_net(&n.trunc().to_string()).ok())
        }),
    };
    let Some(net) = net else {
        skip.bad_value += 1;
        skip.example(format!("{} value '{value}' (id {id})", sc.lapi_name()));
        return None;
    };
    let Some(ttl) = go_duration(duration) else {
        skip.bad_duration += 1;
        skip.example(format!("duration '{duration}' (id {id})"));
        return None;
    };
    let ttl = ttl.unwrap_or_default();
    if !deleted && ttl.is_zero() {
        skip.expired += 1;
        return None;
    }
    Some(Decision {
        id,
        net,
        ttl,
        origin: origin
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect(),
        scenario: field("scenario")
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect(),
    })
}

/// Parses a Go `time.Duration` string (`3h59m12.5s`, `1.5s`, `500ms`,
/// `-19.57ms`, `0s`). `Some(None)` for a negative duration (the decision has
/// run out); `None` when it cannot be read.
#[must_use]
pub fn go_duration(s: &str) -> Option<Option<Duration>> {
    let s = s.trim();
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(Some(Duration::ZERO));
    }
    if rest.is_empty() || rest.len() > 64 {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut part = int.checked_mul(per)?;
        // Fractional digits beyond nanosecond precision are dropped.
        let mut scale = per;
        for d in frac.bytes().take(20) {
            if !d.is_ascii_digit() {
                return None;
            }
            scale /= 10;
            part = part.checked_add(u128::from(d - b'0') * scale)?;
        }
        nanos = nanos.checked_add(part)?;
        rest = next;
    }
    if negative && nanos > 0 {
        return Some(None);
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Some(Duration::new(secs, sub)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| go_duration(s).unwrap().unwrap();
        assert_eq!(d("3h59m12.5s"), Duration::from_millis(14_352_500));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("29m59.194065644s"), Duration::new(1799, 194_065_644));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("2µs"), Duration::from_micros(2));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(
            d("2562047h47m16.854775807s"),
            Duration::new(9_223_372_036, 854_775_807)
        );
        assert_eq!(go_duration("-19.570703ms"), Some(None));
        assert_eq!(go_duration("-0s"), Some(Some(Duration::ZERO)));
        for bad in [
            "", "h", "1", "1x", "1..5s", "s1", "1h-2m", "--1s", "1.s.", "💥",
        ] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    /// Recorded from CrowdSec 1.4.6 (Debian bookworm), with broken entries
    /// added by hand.
    const STARTUP: &str = r#"{"deleted":null,"new":[
      {"duration":"29m59.194065644s","id":3,"origin":"cscli","scenario":"manual 'captcha' from 'tmach'","scope":"Ip","type":"captcha","value":"fd00::5"},
      {"duration":"29m59.194063882s","id":4,"origin":"cscli","scenario":"manual 'ban' from 'tmach'","scope":"Ip","type":"ban","value":"fd00::6"},
      {"duration":"59m59.194063379s","id":1,"origin":"cscli","scenario":"manual 'ban' from 'tmach'","scope":"Ip","type":"ban","value":"198.18.99.9"},
      {"duration":"1h59m59.194062671s","id":2,"origin":"cscli","scenario":"test","scope":"Range","type":"ban","value":"198.18.98.0/24"},
      {"duration":"3h59m12.5s","id":5,"origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Range","type":"ban","value":"198.18.97.7/24"},
      {"duration":"4h","id":6,"origin":"CAPI","scenario":"crowdsecurity/http-probing","scope":"Ip","type":"ban","value":"::ffff:198.18.96.1"},
      {"duration":"1h","id":7,"origin":"crowdsec","scenario":"x","scope":"Country","type":"ban","value":"FR"},
      {"duration":"1h","id":8,"origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"not-an-ip"},
      {"duration":"1h","id":9,"origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"198.18.0.0/24"},
      {"duration":"soon","id":10,"origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"198.18.0.1"},
      {"duration":"-1s","id":11,"origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"198.18.0.2"},
      {"id":12,"scope":"Ip","type":"ban","value":"198.18.0.3"},
      {"duration":"1h","id":"13","origin":"crowdsec","scope":"Ip","type":"ban","value":"198.18.0.4"},
      42,
      {"duration":"1h","id":14,"origin":"crowdsec","scenario":"x","scope":"Ip","type":"throttle","value":"198.18.0.5"}
    ]}"#;

    #[test]
    fn a_recorded_startup_answer() {
        let b = parse_stream(STARTUP.as_bytes(), &Filter::default()).unwrap();
        let got: Vec<(i64, String, u64)> = b
            .new
            .iter()
            .map(|d| (d.id, d.net.to_string(), d.ttl.as_secs()))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, "fd00::6/128".into(), 1799),
                (1, "198.18.99.9/32".into(), 3599),
                (2, "198.18.98.0/24".into(), 7199),
                (5, "198.18.97.0/24".into(), 14352),
                (6, "198.18.96.1/32".into(), 14400),
            ]
        );
        assert!(b.deleted.is_empty());
        let s = &b.skipped;
        assert_eq!(s.other_types.get("captcha"), Some(&1));
        assert_eq!(s.other_types.get("throttle"), Some(&1));
        assert_eq!(s.other_scopes, 1);
        assert_eq!(s.bad_value, 2, "{s:?}");
        assert_eq!(s.bad_duration, 1);
        assert_eq!(s.expired, 1);
        assert_eq!(s.malformed, 3, "{s:?}");
        assert_eq!(s.total(), 10);
        assert_eq!(s.examples.len(), MAX_EXAMPLES);
        assert_eq!(b.new[2].reason(), "crowdsec cscli: test");
    }

    #[test]
    fn deletions_filters_and_bad_answers() {
        let body = br#"{"deleted":[{"duration":"-19.570703ms","id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"198.18.99.9"}],"new":null}"#;
        let b = parse_stream(body, &Filter::default()).unwrap();
        assert_eq!(b.deleted.len(), 1);
        assert_eq!(b.deleted[0].ttl, Duration::ZERO);
        assert!(b.new.is_empty());

        let only_ips = Filter {
            scopes: vec![Scope::Ip],
            origins: Some(vec!["CSCLI".into()]),
        };
        let b = parse_stream(STARTUP.as_bytes(), &only_ips).unwrap();
        let ids: Vec<i64> = b.new.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![4, 1]);
        assert_eq!(b.skipped.other_scopes, 3);
        assert!(b.skipped.other_origins >= 1);

        assert!(matches!(
            parse_stream(b"<html>", &Filter::default()),
            Err(StreamError::Json(_))
        ));
        assert!(matches!(
            parse_stream(b"[]", &Filter::default()),
            Err(StreamError::Shape(_))
        ));
        assert!(matches!(
            parse_stream(br#"{"new": 5}"#, &Filter::default()),
            Err(StreamError::Shape(_))
        ));
        let empty = parse_stream(br#"{"new":null,"deleted":null}"#, &Filter::default()).unwrap();
        assert_eq!(empty, StreamBatch::default());
    }
    fn dec(id: i64, net: &str, secs: u64) -> Decision {
        Decision {
            id,
            net: net.parse().unwrap(),
            ttl: Duration::from_millis(secs * 1000 + 300),
            origin: "crowdsec".into(),
            scenario: format!("s{id}"),
        }
    }

    #[test]
    fn the_tracker_keeps_a_prefix_while_any_decision_lives() {
        let max = Duration::from_secs(366 * 86_400);
        let mut t = Tracker::default();
        let batch = StreamBatch {
            new: vec![
                dec(1, "198.18.0.1/32", 60),
                dec(2, "198.18.0.1/32", 600),
                dec(3, "198.18.1.0/24", 30),
            ],
            ..StreamBatch::default()
        };
        let all = t.reset(&batch, 1000, max);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].expires_at, 1000 + 601, "the longest decision wins");
        assert_eq!(all[0].reason, "crowdsec crowdsec: s2");
        // Decision 2 deleted: the address stays banned by decision 1.
        let del = |id, net| StreamBatch {
            deleted: vec![dec(id, net, 0)],
            ..StreamBatch::default()
        };
        let c = t.update(&del(2, "198.18.0.1/32"), 1010, max);
        assert_eq!(c.put.len(), 1);
        assert_eq!(c.put[0].expires_at, 1061);
        assert!(c.lift.is_empty());
        let c = t.update(&del(1, "198.18.0.1/32"), 1011, max);
        assert_eq!(c.lift, vec!["198.18.0.1/32".parse::<IpNet>().unwrap()]);
        // An unknown id still lifts a prefix nothing else holds.
        let c = t.update(&del(99, "198.18.5.5/32"), 1012, max);
        assert_eq!(c.lift.len(), 1);
        // Expired decisions are forgotten; a new pull extends.
        let c = t.update(&StreamBatch::default(), 2000, max);
        assert_eq!(c, Changes::default());
        assert!(t.is_empty());
        let c = t.update(
            &StreamBatch {
                new: vec![dec(7, "fd00::/64", 10 * 366 * 86_400)],
                ..StreamBatch::default()
            },
            3000,
            max,
        );
        assert_eq!(c.put[0].expires_at, 3000 + max.as_secs(), "capped");
    }

    #[test]
    fn policy_sections() {
        let spec = |yaml: &str| serde_yaml_ng::from_str::<CrowdsecSpec>(yaml).unwrap();
        let j = spec("lapi_url: http://127.0.0.1:8080/\napi_key: abc123\n")
            .job()
            .unwrap();
        assert_eq!(j.endpoint.authority(), "127.0.0.1:8080");
        assert_eq!(j.endpoint.base, "/");
        assert_eq!(j.poll, DEFAULT_POLL);
        assert_eq!(j.filter, Filter::default());
        assert!(!format!("{j:?}").contains("abc123"));
        assert!(!format!("{:?}", spec("lapi_url: x\napi_key: abc123\n")).contains("abc123"));
        let j = spec("lapi_url: 'http://[::1]:81/lapi'\napi_key_file: k\npoll: 2s\nscopes: [ip]\norigins: [cscli]\n")
            .job()
            .unwrap();
        assert_eq!(j.endpoint.host, "::1");
        assert_eq!(j.endpoint.authority(), "[::1]:81");
        assert_eq!(j.endpoint.base, "/lapi/");
        assert_eq!(j.poll, Duration::from_secs(2));
        for (yaml, field) in [
            ("lapi_url: https://lapi:8080/\napi_key: k\n", "lapi_url"),
            ("lapi_url: ftp://x/\napi_key: k\n", "lapi_url"),
            ("lapi_url: 'http://u:p@x/'\napi_key: k\n", "lapi_url"),
            ("lapi_url: http://x/\n", "api_key_file"),
            (
                "lapi_url: http://x/\napi_key: k\napi_key_file: f\n",
                "api_key",
            ),
            ("lapi_url: http://x/\napi_key: 'a b'\n", "api_key"),
            ("lapi_url: http://x/\napi_key: k\npoll: 0s\n", "poll"),
            ("lapi_url: http://x/\napi_key: k\npoll: often\n", "poll"),
            ("lapi_url: http://x/\napi_key: k\nscopes: []\n", "scopes"),
            ("lapi_url: http://x/\napi_key: k\norigins: []\n", "origins"),
            (
                "lapi_url: http://x/\napi_key: k\norigins: ['a b']\n",
                "origins[0]",
            ),
        ] {
            let e = spec(yaml).job().unwrap_err();
            assert_eq!(e.0, field, "{yaml}: {e:?}");
        }
        assert!(
            serde_yaml_ng::from_str::<CrowdsecSpec>("lapi_url: x\nscopes: [country]\n").is_err()
        );
    }
}
