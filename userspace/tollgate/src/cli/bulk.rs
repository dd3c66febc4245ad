//! `block add/rm` and `allow add/rm` over several addresses: every address
//! is checked before any request is sent (a typo changes nothing), then one
//! request per address; a refusal of one does not stop the others.
//!
//! `--json` prints one document: `{"results": [{"cidr", "status", "ban"?,
//! "error"?}], "ok": N, "failed": N}`; exit 0 when every address succeeded,
//! 1 when any was refused, 3/4 when the agent cannot be reached.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::render::{decode, fail, parse_or, usage_error, warn};
use crate::{
    client,
    net::{check_breadth, display, parse_net},
    proto::{BanView, Request},
};

/// What happened to one address.
struct Outcome {
    cidr: String,
    status: &'static str,
    data: Option<Value>,
    error: Option<String>,
}

/// Which change, for the messages.
#[derive(Clone, Copy)]
pub(super) enum Op {
    BlockAdd,
    BlockRm,
    AllowAdd,
    AllowRm,
}

/// Checks every address (for additions, breadth; for bans, loopback,
/// multicast and the like too, unless `force`), so nothing is sent when
/// one would be refused that way.
pub(super) fn check_all(cidrs: &[String], op: Op, force: bool) -> Result<(), ExitCode> {
    for c in cidrs {
        let net = parse_net(c).map_err(usage_error)?;
        if matches!(op, Op::BlockAdd | Op::AllowAdd) {
            check_breadth(net, force).map_err(usage_error)?;
        }
        if matches!(op, Op::BlockAdd) {
            // A refusal, as the agent would give it (exit 1), not a usage error.
            crate::net::check_special(net, force).map_err(|e| fail(e, 1))?;
        }
    }
    Ok(())
}

/// Sends `make(cidr)` for each address and reports.
pub(super) fn run(
    socket: &std::path::Path,
    op: Op,
    cidrs: &[String],
    json: bool,
    make: impl Fn(&str) -> Request,
) -> ExitCode {
    let mut outcomes = Vec::with_capacity(cidrs.len());
    for c in cidrs {
        let shown = display(&parse_or(c.trim()));
        let resp = match client::call(socket, &make(c.trim())) {
            Ok(r) => r,
            // The agent is gone or out of reach: the rest would fail alike.
            Err(e) => return fail(&e, e.exit_code()),
        };
        if let Some(w) = &resp.warning {
            warn(w);
        }
        let outcome = if resp.ok {
            let data = resp.data.unwrap_or(Value::Null);
            let status = match op {
                _ if data.get("absent").is_some() => "absent",
                Op::BlockAdd | Op::AllowAdd => "added",
                Op::BlockRm | Op::AllowRm => "removed",
            };
            Outcome {
                cidr: shown,
                status,
                data: (matches!(op, Op::BlockAdd | Op::AllowAdd)
                    || data.get("still_banned_by").is_some())
                .then_some(data),
                error: None,
            }
        } else {
            Outcome {
                cidr: shown,
                status: "error",
                data: None,
                error: Some(resp.error.unwrap_or_else(|| "request failed".into())),
            }
        };
        if !json {
            print_one(op, &outcome);
        }
        outcomes.push(outcome);
    }
    let failed = outcomes.iter().filter(|o| o.status == "error").count();
    if json {
        let key = match op {
            Op::BlockAdd | Op::BlockRm => "ban",
            Op::AllowAdd | Op::AllowRm => "allow",
        };
        let results: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                let mut v = json!({ "cidr": o.cidr, "status": o.status });
                match &o.data {
                    // A lifted manual ban with other deciders' left standing.
                    Some(d) if d.get("still_banned_by").is_some() => {
                        v["still_banned_by"] = d["still_banned_by"].clone();
                    }
                    Some(d) => v[key] = d.clone(),
                    None => {}
                }
                if let Some(e) = &o.error {
                    v["error"] = json!(e);
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "results": results,
                "ok": outcomes.len() - failed,
                "failed": failed,
            }))
            .unwrap_or_default()
        );
    }
    match failed {
        0 => ExitCode::SUCCESS,
        _ if outcomes.len() == 1 => {
            if json {
                fail(outcomes[0].error.as_deref().unwrap_or_default(), 1)
            } else {
                ExitCode::from(1)
            }
        }
        n => fail(format!("{n} of {} failed (see above)", outcomes.len()), 1),
    }
}

fn print_one(op: Op, o: &Outcome) {
    if let Some(e) = &o.error {
        eprintln!(
            "error: {}: {}",
            crate::text::printable(&o.cidr),
            crate::text::printable(e)
        );
        return;
    }
    match (op, o.status) {
        (Op::BlockAdd, _) => {
            let until = o
                .data
                .as_ref()
                .and_then(|d| decode::<BanView>(d, "a ban").ok())
                .and_then(|b| b.expires_at);
            match until {
                Some(t) => println!("blocked {} until {t}", o.cidr),
                None => println!("blocked {} (permanent)", o.cidr),
            }
        }
        (Op::BlockRm, "absent") => println!("{} was not banned", o.cidr),
        (Op::BlockRm, _) => match o
            .data
            .as_ref()
            .and_then(|d| d["still_banned_by"].as_array())
        {
            Some(by) => println!(
                "lifted the manual ban on {}; still banned by {}",
                o.cidr,
                by.iter()
                    .filter_map(Value::as_str)
                    .map(|s| crate::text::printable(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => println!("unblocked {}", o.cidr),
        },
        (Op::AllowAdd, _) => println!("allowed {}", o.cidr),
        (Op::AllowRm, "absent") => println!("{} was not on the allowlist", o.cidr),
        (Op::AllowRm, _) => println!("removed {} from the allowlist", o.cidr),
    }
}
