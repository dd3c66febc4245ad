//! What the CLI prints: requests to the agent, its answers decoded and
//! shown as tables (or as JSON with `--json`), errors with their exit codes.

use std::{process::ExitCode, time::Duration};

use serde_json::Value;

use crate::{
    client,
    limits::LimitSpec,
    proto::{AllowView, BanView, LimitsView, Request, StatsView, StatusView, TopView},
    table,
};

/// Errors are printed as JSON (`{"error": …, "code": …}` on stderr) when the
/// command line asked for `--json`.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints errors as JSON from now on (the command line has `--json`).
pub fn set_json_errors(on: bool) {
    JSON_ERRORS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Prints an error (as JSON under `--json`) and returns its exit code.
pub fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    let msg = crate::text::printable(&msg.to_string()).into_owned();
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", serde_json::json!({ "error": msg, "code": code }));
    } else {
        eprintln!("error: {msg}");
    }
    ExitCode::from(code)
}

/// Prints a warning (a JSON object `{"warning": …}` under `--json`).
pub(super) fn warn(msg: impl std::fmt::Display) {
    let msg = crate::text::printable(&msg.to_string()).into_owned();
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", serde_json::json!({ "warning": msg }));
    } else {
        eprintln!("warning: {msg}");
    }
}

/// The exit code (and message) of a finished [`client::stream`].
pub(super) fn stream_exit(res: Result<Result<(), String>, client::ClientError>) -> ExitCode {
    match res {
        Err(e) => fail(&e, e.exit_code()),
        Ok(Err(reason)) => fail(reason, 1),
        Ok(Ok(())) => ExitCode::SUCCESS,
    }
}

pub(super) fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    fail(msg, 2)
}

pub(super) fn fmt_spec(s: &LimitSpec) -> Vec<String> {
    let o = |v: Option<u32>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let o64 = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    vec![
        o(s.pps),
        o(s.burst.or(s.pps)),
        o64(s.bps),
        o(s.syn_rate),
        o(s.syn_burst.or(s.syn_rate)),
        o(s.max_conns),
    ]
}

pub(super) fn print_limits(v: &Value) -> Result<(), Undecodable> {
    let l: LimitsView = decode(v, "rate limits")?;
    let mut rows = Vec::new();
    if let Some(d) = &l.default {
        let mut r = vec!["default".to_owned()];
        r.extend(fmt_spec(d));
        rows.push(r);
    }
    for (p, s) in &l.ports {
        let mut r = vec![p.to_string()];
        r.extend(fmt_spec(s));
        rows.push(r);
    }
    if rows.is_empty() {
        println!("no rate limits");
    } else {
        print!(
            "{}",
            table::render(
                &[
                    "PORT",
                    "PPS",
                    "BURST",
                    "BPS",
                    "SYN/S",
                    "SYN BURST",
                    "MAX CONNS"
                ],
                &rows
            )
        );
    }
    println!(
        "IPv6 clients limited per /{}; a source exceeding for {}s is banned for {}",
        l.ipv6_prefix,
        l.ban_after_secs,
        l.ban_ttls_secs
            .iter()
            .map(|t| humantime::format_duration(Duration::from_secs(*t)).to_string())
            .collect::<Vec<_>>()
            .join(", then ")
    );
    Ok(())
}

pub(super) fn print_top(v: &Value) -> Result<(), Undecodable> {
    let rows: Vec<TopView> = decode(v, "a list of sources")?;
    if rows.is_empty() {
        println!("no rate-limited traffic seen (limits apply once set: tollgate limits set ...)");
        return Ok(());
    }
    let rate = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.0}/s"));
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.client.clone(),
                r.class.clone(),
                rate(r.pass_rate),
                rate(r.drop_rate),
                r.passed.to_string(),
                r.dropped.to_string(),
                r.conns.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "CLIENT",
                "CLASS",
                "PASS RATE",
                "DROP RATE",
                "PASSED",
                "DROPPED",
                "CONNS"
            ],
            &t
        )
    );
    Ok(())
}

/// What printing an answer for people came to: `()` when it cannot fail, or
/// a [`Result`] when the answer must first be decoded.
pub(super) trait Shown {
    fn exit_code(self) -> ExitCode;
}

impl Shown for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl Shown for Result<(), Undecodable> {
    fn exit_code(self) -> ExitCode {
        match self {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e, 1),
        }
    }
}

/// An answer the CLI cannot read (an agent of another version, most
/// likely): an error, never an empty table.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the agent's answer as {what} (is the agent the same version as this CLI?): {source}"
)]
pub(super) struct Undecodable {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Decodes the data of an answer.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    v: &Value,
    what: &'static str,
) -> Result<T, Undecodable> {
    serde_json::from_value(v.clone()).map_err(|source| Undecodable { what, source })
}

/// Sends a request; prints the data as JSON or through `human`.
pub(super) fn request<S: Shown>(
    socket: &std::path::Path,
    req: &Request,
    json: bool,
    human: impl FnOnce(&Value) -> S,
) -> ExitCode {
    request_within(socket, req, client::timeout(), json, human)
}

/// [`request`] with its own timeout (long operations).
pub(super) fn request_within<S: Shown>(
    socket: &std::path::Path,
    req: &Request,
    limit: Duration,
    json: bool,
    human: impl FnOnce(&Value) -> S,
) -> ExitCode {
    match client::call_within(socket, req, limit) {
        Err(e) => fail(&e, e.exit_code()),
        Ok(resp) if !resp.ok => fail(resp.error.unwrap_or_else(|| "request failed".into()), 1),
        Ok(resp) => {
            if let Some(w) = &resp.warning {
                warn(w);
            }
            let data = resp.data.unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
                ExitCode::SUCCESS
            } else {
                human(&data).exit_code()
            }
        }
    }
}

pub(super) fn ttl_left(secs: Option<u64>) -> String {
    secs.map_or_else(
        || "never".into(),
        |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
    )
}

/// An origin as tables show it: `origin`, or `origin@host` for another
/// fleet host's decision.
pub(super) fn by(origin: &str, host: Option<&str>) -> String {
    match host {
        Some(h) => format!(
            "{}@{}",
            crate::text::printable(origin),
            crate::text::printable(h)
        ),
        None => crate::text::printable(origin).into_owned(),
    }
}

pub(super) fn print_bans(v: &Value) -> Result<(), Undecodable> {
    let bans: Vec<BanView> = decode(v, "a list of bans")?;
    if bans.is_empty() {
        println!("no bans");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|b| {
            vec![
                crate::net::display(&parse_or(&b.cidr)),
                b.kind.name().to_owned(),
                crate::text::printable(&b.reason).into_owned(),
                ttl_left(b.ttl_remaining_secs),
                b.hits.to_string(),
                // The enforced decision's origin, then the others' (`+feed`).
                b.decisions
                    .iter()
                    .skip(1)
                    .fold(by(&b.origin, b.host.as_deref()), |mut o, d| {
                        o.push_str(" +");
                        o.push_str(&by(&d.origin, d.host.as_deref()));
                        o
                    }),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ADDRESS", "KIND", "REASON", "EXPIRES IN", "HITS", "ORIGIN"],
            &rows
        )
    );
    Ok(())
}

pub(super) fn print_allows(v: &Value) -> Result<(), Undecodable> {
    let allows: Vec<AllowView> = decode(v, "a list of allowlist entries")?;
    if allows.is_empty() {
        println!("no allowlist entries");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = allows
        .iter()
        .map(|a| {
            vec![
                crate::net::display(&parse_or(&a.cidr)),
                crate::text::printable(&a.reason).into_owned(),
                a.hits.to_string(),
                crate::text::printable(&a.origin).into_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["ADDRESS", "REASON", "HITS", "ORIGIN"], &rows)
    );
    Ok(())
}

pub(super) fn print_stats(v: &Value) -> Result<(), Undecodable> {
    let s: StatsView = decode(v, "statistics")?;
    let rows: Vec<Vec<String>> = s
        .counters
        .iter()
        .map(|c| {
            vec![
                c.verdict.clone(),
                c.reason.clone(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        })
        .chain(s.totals.iter().map(|c| {
            vec![
                c.verdict.clone(),
                "(total)".into(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        }))
        .collect();
    print!(
        "{}",
        table::render(&["VERDICT", "REASON", "PACKETS", "BYTES"], &rows)
    );
    Ok(())
}

pub(super) fn print_status(v: &Value) -> Result<(), Undecodable> {
    let s: StatusView = decode(v, "a status")?;
    println!(
        "tollgate {}  mode: {}  uptime: {}",
        s.version,
        s.mode,
        ttl_left(Some(s.uptime_secs))
    );
    println!(
        "pins: {}  state: {}  store: {}",
        s.pin_dir,
        s.state_dir,
        crate::text::printable(&s.store)
    );
    println!(
        "policy: {}  store: {} bans, {} allow entries, {} on disk",
        s.policy_file
            .as_deref()
            .map_or_else(|| "none (built-in defaults)".into(), crate::text::printable),
        s.store_bans,
        s.store_allows,
        s.store_bytes.map_or_else(
            || "?".into(),
            |b| format!("{:.1} MiB", b as f64 / 1_048_576.0)
        ),
    );
    if let Some(r) = &s.last_reload {
        println!(
            "last reload at {}: {}: {}",
            r.at,
            if r.applied { "applied" } else { "REFUSED" },
            crate::text::printable(&r.summary)
        );
    }
    if let Some(r) = &s.policy_refused {
        let ago = crate::clock::unix_now().saturating_sub(r.at);
        println!(
            "last policy reload refused {} ago: {}",
            ttl_left(Some(ago)),
            crate::text::printable(&r.reason)
        );
    }
    if let Some(c) = &s.cluster {
        println!(
            "cluster: fleet {} as {}  connected: {}  revision: {}  last sync: {}  outbox: {}  applied: {}  skipped: {}  refused: {}",
            crate::text::printable(&c.fleet),
            crate::text::printable(&c.host_id),
            c.connected,
            c.revision,
            c.staleness_secs
                .map_or_else(|| "never".into(), |s| format!("{} ago", ttl_left(Some(s)))),
            c.outbox,
            c.applied,
            c.skipped,
            c.refused,
        );
        if let Some(e) = &c.last_error {
            println!("cluster error: {}", crate::text::printable(e));
        }
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .interfaces
        .iter()
        .map(|a| {
            vec![
                a.iface.clone(),
                a.ifindex.to_string(),
                a.attach.clone(),
                a.program_id.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["INTERFACE", "IFINDEX", "ATTACH", "PROGRAM ID"], &rows)
    );
    println!();
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            let pct = if m.capacity == 0 {
                0.0
            } else {
                m.entries as f64 * 100.0 / f64::from(m.capacity)
            };
            vec![
                m.name.clone(),
                m.entries.to_string(),
                m.capacity.to_string(),
                format!("{pct:.1}%"),
                m.memory_bytes.map_or_else(
                    || "-".into(),
                    |b| format!("{:.1} MiB", b as f64 / 1048576.0),
                ),
                m.setting
                    .as_deref()
                    .map_or_else(|| "-".into(), |k| format!("capacity.{k}")),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["MAP", "ENTRIES", "CAPACITY", "FILL", "MEMORY", "SETTING"],
            &rows
        )
    );
    if let Some(l) = &s.limiter {
        println!(
            "rate limiter: {} sources tracked of {} ({:.1}%)",
            l.entries,
            l.capacity,
            if l.capacity == 0 {
                0.0
            } else {
                l.entries as f64 * 100.0 / f64::from(l.capacity)
            }
        );
    }
    if let Some(sm) = &s.sampling {
        println!(
            "\nAPI ports {:?}: first packets of each flow + 1 in {} (configured 1 in {}); \
             {} requests, {} responses parsed, {} truncated; {} TLS and {} other samples skipped; \
             {} unparseable requests; {} flows followed; policy engine: {} messages with violations, {} clients scored, \
             {} tracked by the API checks",
            sm.api_ports,
            sm.one_in_effective,
            sm.one_in_configured,
            sm.flows.requests,
            sm.flows.responses,
            sm.flows.truncated,
            sm.flows.tls,
            sm.flows.other,
            sm.flows.unparseable,
            sm.flows_followed,
            sm.findings,
            sm.clients_scored,
            sm.clients_tracked
        );
    }
    if let Some(k) = &s.samples_kernel
        && k.taken + k.lost + k.skipped > 0
    {
        println!(
            "datapath samples: {} taken, {} lost (ring buffer full: not judged; {} in the last minute, ring {} KiB), {} skipped by policy",
            k.taken,
            k.lost,
            k.lost_last_minute,
            k.ring_bytes / 1024,
            k.skipped
        );
    }
    if let Some(t) = &s.tls {
        print!("{}", crate::tls::describe(t));
    }
    Ok(())
}

pub(super) fn parse_or(s: &str) -> ipnet::IpNet {
    s.parse().unwrap_or_else(|_| ipnet::IpNet::default())
}
