//! `tollgate block import`, `block export`, `block rm --origin` and
//! `policy reload`.
//!
//! Import exit codes: 0 when the agent applied the list, even if some lines
//! were rejected (they are listed on stderr with their line numbers, with a
//! warning giving the count); 1 when nothing in the list could be used or the
//! agent refused the import (nothing changed then); 2 for bad flags or an
//! unreadable file.

use std::{collections::HashMap, io::Write as _, path::Path, process::ExitCode, time::Duration};

use super::render::{request_within, usage_error};
use crate::{
    client,
    feed::{self, ImportReport},
    net,
    proto::{ExportView, Request},
    proto::{check_origin, check_reason, check_ttl},
};

/// Rejected lines listed by name on stderr (the count is always given).
const SHOWN_REJECTS: usize = 20;

/// Flags of `block import`.
#[derive(Debug)]
pub struct ImportArgs {
    /// File, or `-` for stdin.
    pub file: String,
    /// TTL for every entry.
    pub ttl: Option<Duration>,
    /// Reason for every entry.
    pub reason: Option<String>,
    /// Group name.
    pub origin: Option<String>,
    /// Broad prefixes and allowlist overlaps.
    pub force: bool,
    /// Report what would change, change nothing.
    pub dry_run: bool,
    /// Print the report as JSON.
    pub json: bool,
}

/// Reads and parses the list line by line: memory stays bounded whatever
/// the input (`/dev/zero`, an endless pipe), an over-long line stops it.
pub(super) fn read_input(file: &str, force: bool) -> Result<feed::Parsed, feed::ReadError> {
    if file == "-" {
        feed::parse_reader(std::io::stdin().lock(), force)
    } else {
        let f = std::fs::File::open(file).map_err(feed::ReadError::Io)?;
        feed::parse_reader(std::io::BufReader::with_capacity(1 << 16, f), force)
    }
}

/// `import:<file name>`, or `import:stdin`.
fn default_origin(file: &str) -> String {
    let name = if file == "-" {
        "stdin".to_owned()
    } else {
        Path::new(file)
            .file_name()
            .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned())
    };
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .take(100)
        .collect();
    format!("import:{name}")
}

/// Runs `block import`.
#[must_use]
pub fn import(a: ImportArgs, socket: &Path) -> ExitCode {
    let origin = a.origin.clone().unwrap_or_else(|| default_origin(&a.file));
    if let Err(e) = check_origin(&origin) {
        return usage_error(e);
    }
    let ttl_secs = a.ttl.map(|d| d.as_secs());
    if let Err(e) = check_ttl(ttl_secs) {
        return usage_error(e);
    }
    if let Err(e) = check_reason(a.reason.as_deref()) {
        return usage_error(e);
    }
    let parsed = match read_input(&a.file, a.force) {
        Ok(p) => p,
        Err(e) => {
            return usage_error(format!(
                "{}: {}; nothing changed",
                crate::text::printable(&a.file),
                e
            ));
        }
    };
    let mut rejected: Vec<(usize, String, String)> = parsed
        .rejected
        .iter()
        .map(|r| (r.line, r.text.clone(), r.reason.clone()))
        .collect();
    if parsed.entries.is_empty() {
        let total = rejected.len() + parsed.rejected_unlisted;
        print_rejects(&rejected, total);
        return super::render::fail(
            format!(
                "nothing in {} can be used ({total} lines rejected); nothing changed",
                crate::text::printable(&a.file),
            ),
            1,
        );
    }
    let body: Vec<String> = parsed.entries.iter().map(ToString::to_string).collect();
    let line_of: HashMap<&str, usize> = body
        .iter()
        .map(String::as_str)
        .zip(parsed.lines.iter().copied())
        .collect();
    let req = Request::BlockImport {
        origin: origin.clone(),
        count: body.len(),
        ttl_secs,
        reason: a.reason.clone(),
        force: a.force,
        dry_run: a.dry_run,
    };
    let what = format!("sending {} entries to the agent", body.len());
    let resp = match super::progress::while_waiting(&what, a.json, || {
        client::call_stream(socket, &req, &body, client::long_timeout())
    }) {
        Ok(r) => r,
        Err(e) => {
            return super::render::fail(&e, e.exit_code());
        }
    };
    if !resp.ok {
        print_rejects(&rejected, rejected.len());
        return super::render::fail(resp.error.unwrap_or_else(|| "import failed".into()), 1);
    }
    let report: ImportReport =
        match serde_json::from_value(resp.data.clone().unwrap_or(serde_json::Value::Null)) {
            Ok(r) => r,
            // The import happened; what it did is unknown: say so.
            Err(e) => {
                eprintln!(
                    "error: the import was sent, but the agent's report cannot be read (is the \
                     agent the same version as this CLI?): {e}"
                );
                return ExitCode::from(1);
            }
        };
    for (cidr, why) in &report.rejected {
        let line = line_of.get(cidr.as_str()).copied().unwrap_or(0);
        rejected.push((line, cidr.clone(), why.clone()));
    }
    rejected.sort_by_key(|r| r.0);
    let total_rejected = parsed.rejected.len() + parsed.rejected_unlisted + report.rejected_count;
    if a.json {
        let v = serde_json::json!({
            "file": a.file,
            "origin": report.origin,
            "entries": body.len(),
            "duplicates": parsed.duplicates,
            "added": report.added,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "removed": report.removed,
            "kept_other_origin": report.kept_other_origin,
            "rejected_count": total_rejected,
            "rejected": rejected.iter().map(|(l, t, r)| serde_json::json!({
                "line": l, "text": t, "reason": r,
            })).collect::<Vec<_>>(),
            "dry_run": report.dry_run,
            "would_add": report.would_add,
            "would_remove": report.would_remove,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} {} as '{}': {} added, {} updated, {} unchanged, {} removed, \
             {} already banned by another origin",
            if report.dry_run {
                "dry run, nothing changed: importing"
            } else {
                "imported"
            },
            a.file,
            report.origin,
            report.added,
            report.updated,
            report.unchanged,
            report.removed,
            report.kept_other_origin
        );
        // A dry run lists what would change: `+` added, `-` lifted.
        for c in &report.would_add {
            println!("+ {c}");
        }
        for c in &report.would_remove {
            println!("- {c}");
        }
    }
    if total_rejected > 0 {
        print_rejects(&rejected, total_rejected);
        super::render::warn(format!(
            "{total_rejected} lines rejected; the rest was applied"
        ));
    }
    ExitCode::SUCCESS
}

pub(super) fn print_rejects(rejected: &[(usize, String, String)], total: usize) {
    for (line, text, why) in rejected.iter().take(SHOWN_REJECTS) {
        eprintln!(
            "line {line}: '{}': {}",
            crate::text::printable(text),
            crate::text::printable(why)
        );
    }
    if total > SHOWN_REJECTS {
        eprintln!("… and {} more rejected lines", total - SHOWN_REJECTS);
    }
}

/// Bans lifted by `block rm --origin` without asking, on a terminal.
const LIFT_WITHOUT_ASKING: u64 = 10;

/// On a terminal, when `block rm --origin` would lift more than a handful of
/// bans: asks. `true` to go on (also when not on a terminal, or when the
/// count cannot be had: the removal itself then reports the error).
#[must_use]
pub fn confirm_rm_origin(origin: &str, socket: &Path) -> bool {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return true;
    }
    let req = Request::BlockRmOrigin {
        origin: origin.to_owned(),
        dry_run: true,
    };
    let n = match client::call_within(socket, &req, client::long_timeout()) {
        Ok(r) if r.ok => r.data.and_then(|d| d["would_remove"].as_u64()).unwrap_or(0),
        _ => return true,
    };
    if n <= LIFT_WITHOUT_ASKING {
        return true;
    }
    eprint!(
        "lift {n} bans with origin '{}'? [y/N] ",
        crate::text::printable(origin)
    );
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// Runs `block rm --origin NAME`.
#[must_use]
pub fn rm_origin(origin: String, dry_run: bool, json: bool, socket: &Path) -> ExitCode {
    if let Err(e) = check_origin(&origin) {
        return usage_error(e);
    }
    let limit = client::long_timeout();
    request_within(
        socket,
        &Request::BlockRmOrigin { origin, dry_run },
        limit,
        json,
        |v| {
            let origin = crate::text::printable(v["origin"].as_str().unwrap_or_default());
            if dry_run {
                println!(
                    "dry run, nothing changed: {} bans with origin '{origin}' would be lifted",
                    v["would_remove"].as_u64().unwrap_or(0),
                );
                for c in v["entries"].as_array().into_iter().flatten() {
                    println!(
                        "- {}",
                        crate::text::printable(c.as_str().unwrap_or_default())
                    );
                }
            } else {
                println!(
                    "removed {} bans with origin '{origin}'",
                    v["removed"].as_u64().unwrap_or(0),
                );
            }
        },
    )
}

/// Runs `block export`.
#[must_use]
pub fn export(origin: Option<String>, json: bool, socket: &Path) -> ExitCode {
    if let Some(o) = &origin
        && let Err(e) = check_origin(o)
    {
        return usage_error(e);
    }
    let req = Request::BlockExport { origin };
    if json {
        return request_within(socket, &req, client::long_timeout(), json, |_| {});
    }
    // Decoded straight into rows: a million-entry export stays quick.
    let resp = match super::progress::while_waiting("exporting", json, || {
        client::call_as::<ExportView>(socket, &req, client::long_timeout())
    }) {
        Ok(r) => r,
        Err(e) => {
            return super::render::fail(&e, e.exit_code());
        }
    };
    if !resp.ok {
        return super::render::fail(resp.error.unwrap_or_else(|| "request failed".into()), 1);
    }
    if let Some(w) = &resp.warning {
        super::render::warn(w);
    }
    match resp.data {
        Some(view) => print_export(&view),
        None => super::render::warn("the agent sent no data"),
    }
    ExitCode::SUCCESS
}

fn print_export(view: &ExportView) {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let _ = writeln!(
        w,
        "# tollgate block export at {}: {} entries",
        view.generated_at,
        view.bans.len()
    );
    for b in &view.bans {
        let shown = b
            .cidr
            .parse()
            .map_or_else(|_| b.cidr.clone(), |n| net::display(&n));
        let _ = writeln!(w, "{shown}");
    }
    let _ = w.flush();
}

/// Runs `policy reload`.
#[must_use]
pub fn policy_reload(socket: &Path, json: bool) -> ExitCode {
    let limit = client::long_timeout();
    if json {
        // One object, not the agent's bare summary string.
        return request_within(socket, &Request::PolicyReload, limit, false, |v| {
            println!(
                "{}",
                serde_json::json!({ "reloaded": true, "summary": v.as_str().unwrap_or_default() })
            );
        });
    }
    request_within(socket, &Request::PolicyReload, limit, false, |v| {
        println!(
            "policy reloaded: {}",
            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
        );
    })
}
