//! `tollgate allow import`: an allowlist from a file in the same formats as
//! `block import` (one address or CIDR per line, `#`/`;` comments). Every
//! line is checked before anything is sent: one bad line changes nothing
//! (an allowlist half applied is worse than none: its missing entries are
//! the sources that get banned). Entries already listed are left as they
//! are; if the agent refuses one, the entries this import added are removed
//! again.
//!
//! Exit codes: 0 applied (or, with `--dry-run`, checked); 1 the agent
//! refused (nothing changed then); 2 bad flags, an unreadable file or bad
//! lines (nothing sent); 3/4 the agent cannot be reached.

use std::{collections::HashSet, path::Path, process::ExitCode};

use ipnet::IpNet;

use super::{
    feeds::{print_rejects, read_input},
    progress::Progress,
    render::{decode, fail, usage_error},
};
use crate::{
    client,
    net::{display, parse_net},
    proto::{AllowView, Request, check_reason},
    text::printable,
};

/// Flags of `allow import`.
#[derive(Debug)]
pub struct AllowImportArgs {
    /// File, or `-` for stdin.
    pub file: String,
    /// Reason for every entry.
    pub reason: Option<String>,
    /// Broad prefixes.
    pub force: bool,
    /// Check and report, change nothing.
    pub dry_run: bool,
    /// Print the report as JSON.
    pub json: bool,
}

/// Runs `allow import`.
#[must_use]
pub fn import(a: &AllowImportArgs, socket: &Path) -> ExitCode {
    if let Err(e) = check_reason(a.reason.as_deref()) {
        return usage_error(e);
    }
    let parsed = match read_input(&a.file, a.force) {
        Ok(p) => p,
        Err(e) => {
            return usage_error(format!("{}: {e}; nothing changed", printable(&a.file)));
        }
    };
    let total_rejected = parsed.rejected.len() + parsed.rejected_unlisted;
    if total_rejected > 0 || parsed.entries.is_empty() {
        let rejected: Vec<(usize, String, String)> = parsed
            .rejected
            .iter()
            .map(|r| (r.line, r.text.clone(), r.reason.clone()))
            .collect();
        // Under --json the error is one object: it names the first line.
        if !a.json {
            print_rejects(&rejected, total_rejected);
        }
        let first = rejected
            .first()
            .map(|(l, t, why)| {
                format!(" (first: line {l}: '{}': {})", printable(t), printable(why))
            })
            .unwrap_or_default();
        return usage_error(format!(
            "{}: {total_rejected} lines rejected{first}, {} usable; nothing changed (an \
             allowlist is applied whole or not at all)",
            printable(&a.file),
            parsed.entries.len()
        ));
    }
    // What is listed already: those entries are left as they are.
    let listed: HashSet<IpNet> = match client::call(socket, &Request::AllowLs) {
        Ok(r) if r.ok => match decode::<Vec<AllowView>>(&r.data.unwrap_or_default(), "allows") {
            Ok(v) => v.iter().filter_map(|a| parse_net(&a.cidr).ok()).collect(),
            Err(e) => return fail(e, 1),
        },
        Ok(r) => return fail(r.error.unwrap_or_else(|| "request failed".into()), 1),
        Err(e) => return fail(&e, e.exit_code()),
    };
    let new: Vec<(IpNet, usize)> = parsed
        .entries
        .iter()
        .copied()
        .zip(parsed.lines.iter().copied())
        .filter(|(n, _)| !listed.contains(n))
        .collect();
    let unchanged = parsed.entries.len() - new.len();
    let mut added = Vec::with_capacity(new.len());
    if !a.dry_run {
        let mut p = Progress::new("allow import", Some(new.len() as u64), a.json);
        for (net, line) in &new {
            let req = Request::AllowAdd {
                cidr: net.to_string(),
                reason: a.reason.clone(),
                force: a.force,
            };
            let refused = match client::call(socket, &req) {
                Ok(r) if r.ok => None,
                Ok(r) => Some(r.error.unwrap_or_else(|| "refused".into())),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = refused {
                p.finish();
                let undone = undo(socket, &added);
                return fail(
                    format!(
                        "line {line}: {}: {why}; the {} entries this import had added are \
                         removed again{}",
                        display(net),
                        added.len(),
                        if undone { "" } else { " (not all: see above)" }
                    ),
                    1,
                );
            }
            added.push(*net);
            p.inc(1);
        }
    }
    let would_add: Vec<String> = new.iter().map(|(n, _)| display(n)).collect();
    if a.json {
        let v = serde_json::json!({
            "file": a.file,
            "entries": parsed.entries.len(),
            "duplicates": parsed.duplicates,
            "added": added.len(),
            "unchanged": unchanged,
            "dry_run": a.dry_run,
            "would_add": if a.dry_run { would_add } else { Vec::new() },
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if a.dry_run {
        println!(
            "dry run, nothing changed: importing {} would add {} allowlist entries, {} listed \
             already",
            printable(&a.file),
            would_add.len(),
            unchanged
        );
        for c in &would_add {
            println!("+ {c}");
        }
    } else {
        println!(
            "imported {}: {} allowlist entries added, {} listed already",
            printable(&a.file),
            added.len(),
            unchanged
        );
    }
    ExitCode::SUCCESS
}

/// Removes what an import added before the agent refused an entry; false
/// when some could not be removed (each is named on stderr).
fn undo(socket: &Path, added: &[IpNet]) -> bool {
    let mut all = true;
    for net in added {
        let req = Request::AllowRm {
            cidr: net.to_string(),
            exist: true,
        };
        if !client::call(socket, &req).is_ok_and(|r| r.ok) {
            eprintln!("error: could not remove {} again", display(net));
            all = false;
        }
    }
    all
}
