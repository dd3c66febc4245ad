//! `block test` (is this address blocked, and by what?) and the filtered,
//! paged `block ls`.

use std::process::ExitCode;

use super::{
    args::BlockLsArgs,
    render::{Undecodable, by, decode, fail, print_bans, request, ttl_left, usage_error, warn},
};
use crate::{
    client,
    net::parse_net,
    proto::{BanFilter, BanPage, BlockTestView, Request, check_origin, check_reason},
    text::printable,
};

/// Runs `block test ADDR`: exit 0 blocked, 1 not blocked, 2 error (3 and 4
/// when the agent cannot be reached, as everywhere).
#[must_use]
pub fn test(address: &str, json: bool, socket: &std::path::Path) -> ExitCode {
    match parse_net(address) {
        Ok(n) if n.prefix_len() == n.max_prefix_len() => {}
        Ok(_) => {
            return usage_error(format!(
                "'{}' is a prefix: give one address (`tollgate block ls --match PREFIX` lists \
                 the bans overlapping a prefix)",
                printable(address)
            ));
        }
        Err(e) => return usage_error(e),
    }
    let req = Request::BlockTest {
        address: address.trim().to_owned(),
    };
    let resp = match client::call(socket, &req) {
        Ok(r) => r,
        Err(e) => return fail(&e, e.exit_code()),
    };
    if !resp.ok {
        return fail(resp.error.unwrap_or_else(|| "request failed".into()), 2);
    }
    let data = resp.data.unwrap_or_default();
    let view: BlockTestView = match decode(&data, "a block test") {
        Ok(v) => v,
        Err(e) => return fail(e, 2),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&data).unwrap_or_default()
        );
    } else {
        print_test(&view);
    }
    if view.blocked {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_test(v: &BlockTestView) {
    let verdict = match (v.blocked, v.mode.as_str()) {
        (true, "monitor") => "BLOCKED (monitor mode: counted, not dropped)",
        (true, _) => "BLOCKED",
        (false, _) if !v.allows.is_empty() && !v.bans.is_empty() => {
            "NOT BLOCKED (the allowlist overrides its bans)"
        }
        (false, _) => "NOT BLOCKED",
    };
    println!("{}: {verdict}", v.address);
    for b in &v.bans {
        println!(
            "  ban {}  kind {}  origin {}  reason \"{}\"  expires in {}  hits {}  kernel: {}",
            crate::net::display(&super::render::parse_or(&b.ban.cidr)),
            b.ban.kind.name(),
            by(&b.ban.origin, b.ban.host.as_deref()),
            printable(&b.ban.reason),
            ttl_left(b.ban.ttl_remaining_secs),
            b.ban.hits,
            b.kernel,
        );
        // The other decisions on the same prefix: lifting the one above
        // leaves these enforced.
        for d in b.ban.decisions.iter().skip(1) {
            println!(
                "    also  kind {}  origin {}  reason \"{}\"  expires in {}",
                d.kind.name(),
                by(&d.origin, d.host.as_deref()),
                printable(&d.reason),
                ttl_left(d.ttl_remaining_secs),
            );
        }
    }
    for k in &v.kernel_only {
        println!("  kernel-only entry {k}: dropped by the kernel, unknown to the store");
    }
    for a in &v.allows {
        println!(
            "  allow {}  reason \"{}\"  origin {}  (overrides every ban)",
            crate::net::display(&super::render::parse_or(&a.cidr)),
            printable(&a.reason),
            printable(&a.origin),
        );
    }
    if let Some(t) = &v.trusted_proxy {
        println!("  trusted proxy {t}: its clients are judged per connection");
    }
    for r in &v.rate_limit {
        println!(
            "  rate limit {} class {}: {} passed, {} dropped{}",
            r.client,
            r.class,
            r.passed,
            r.dropped,
            if r.exceeding { ", exceeding now" } else { "" }
        );
    }
    if v.offences > 0 {
        println!("  rate-limit offences so far: {}", v.offences);
    }
    if v.bans.is_empty() && v.kernel_only.is_empty() {
        println!("  no ban covers it");
    }
    if v.kernel_agrees {
        println!("  kernel maps agree with the store");
    } else {
        println!("  kernel maps DISAGREE with the store (restart the agent to reconcile)");
    }
}

/// Runs `block ls` with its filters and paging.
#[must_use]
pub fn ls(a: &BlockLsArgs, socket: &std::path::Path) -> ExitCode {
    if let Some(m) = &a.matching
        && let Err(e) = parse_net(m)
    {
        return usage_error(format!("--match: {e}"));
    }
    if let Some(k) = &a.kind
        && crate::proto::ban_kind::parse(k).is_none()
    {
        return usage_error(format!(
            "--kind '{}': one of {}",
            printable(k),
            crate::proto::ban_kind::ALL.map(|k| k.name()).join(", ")
        ));
    }
    if let Some(o) = &a.origin
        && let Err(e) = check_origin(o)
    {
        return usage_error(format!("--origin: {e}"));
    }
    if let Err(e) = check_reason(a.reason.as_deref()) {
        return usage_error(format!("--reason: {e}"));
    }
    let req = Request::BlockQuery {
        filter: BanFilter {
            matching: a.matching.clone(),
            kind: a.kind.clone(),
            origin: a.origin.clone(),
            reason: a.reason.clone(),
            expiring_within_secs: a.expiring_within.map(|d| d.as_secs()),
            offset: a.offset,
            limit: a.limit,
        },
    };
    let json = a.json;
    // `--json` prints the page's array of bans: the shape `block ls --json`
    // always had; the total is on stderr only for people.
    request(socket, &req, false, move |v| {
        let page: BanPage = decode(v, "a page of bans")?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&page.bans).unwrap_or_default()
            );
            return Ok::<(), Undecodable>(());
        }
        let shown = page.bans.len();
        print_bans(&serde_json::json!(page.bans))?;
        if shown < page.total {
            warn(format!(
                "showing {}-{} of {} matching bans (--offset/--limit for more)",
                page.offset + usize::from(shown > 0),
                page.offset + shown,
                page.total
            ));
        }
        Ok(())
    })
}
