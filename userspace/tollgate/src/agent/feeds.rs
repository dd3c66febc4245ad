//! Feeds on the agent side: the streamed `block import` request and the
//! periodic refresh of the feeds a policy file names.
//!
//! A control request is one line of at most 64 KiB, which a million-line feed
//! cannot fit in. So `block_import` is a header line announcing `count`,
//! followed by exactly `count` lines of one prefix each: the agent raises the
//! read limit to `count` short lines (never more than
//! [`crate::feed::MAX_ENTRIES`] of them), reads them under one deadline, and
//! applies them all at once (one store transaction, one batched map update).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader, Take},
    net::unix::OwnedReadHalf,
    task::JoinHandle,
};
use tracing::{info, warn};

use super::state::AgentState;
use crate::{
    feed::FeedJob,
    feed::{self, ImportReport, MAX_ENTRIES},
    proto::{MAX_IMPORT_LINE, Response},
};

/// How long the body of one import may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest feed file the agent reads for a policy feed.
pub const MAX_FEED_FILE: u64 = 512 * 1024 * 1024;

/// The header of a streamed import.
#[derive(Clone, Debug)]
pub struct ImportHeader {
    /// Group name.
    pub origin: String,
    /// Lines that follow.
    pub count: usize,
    /// Seconds; `None` = permanent.
    pub ttl_secs: Option<u64>,
    /// Free text.
    pub reason: Option<String>,
    /// Allow broad prefixes and allowlist overlaps.
    pub force: bool,
    /// Only report what would change.
    pub dry_run: bool,
}

/// Reads the body of a streamed import and applies it.
pub async fn serve_import(
    reader: &mut Take<BufReader<OwnedReadHalf>>,
    h: ImportHeader,
    state: Arc<Mutex<AgentState>>,
) -> Response {
    if h.count > MAX_ENTRIES {
        return Response::err(format!(
            "an import may carry at most {MAX_ENTRIES} entries, not {}",
            h.count
        ));
    }
    let per_line = MAX_IMPORT_LINE as u64 + 2;
    reader.set_limit((h.count as u64).saturating_mul(per_line));
    let cidrs = match tokio::time::timeout(BODY_TIMEOUT, read_lines(reader, h.count)).await {
        Err(_) => {
            return Response::err(format!(
                "the import did not arrive within {}s",
                BODY_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Response::err(e),
        Ok(Ok(v)) => v,
    };
    let res = tokio::task::spawn_blocking(move || match state.lock() {
        Ok(mut s) => s
            .import_group_as(
                &h.origin,
                &cidrs,
                h.ttl_secs,
                h.reason.as_deref(),
                h.force,
                h.dry_run,
            )
            .map_err(|e| e.to_string()),
        Err(_) => Err("agent state lock poisoned".into()),
    })
    .await;
    match res {
        Err(e) => Response::err(format!("import failed: {e}")),
        Ok(Err(e)) => Response::err(e),
        Ok(Ok(report)) => {
            let mut resp = Response::ok(json!(report));
            if report.rejected_count > 0 {
                resp.warning = Some(format!(
                    "the agent refused {} entries",
                    report.rejected_count
                ));
            }
            resp
        }
    }
}

async fn read_lines(
    reader: &mut Take<BufReader<OwnedReadHalf>>,
    count: usize,
) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut line = String::new();
    for i in 0..count {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("failed to read import entry {}: {e}", i + 1))?;
        if n == 0 {
            return Err(format!(
                "the import ended after {i} of {count} entries (or an entry was longer than \
                 {MAX_IMPORT_LINE} bytes)"
            ));
        }
        out.push(line.trim_end().to_owned());
    }
    Ok(out)
}

/// Starts one refresh task per feed; abort the handles to stop them.
#[must_use]
pub fn spawn_refresh(jobs: &[FeedJob], state: &Arc<Mutex<AgentState>>) -> Vec<JoinHandle<()>> {
    jobs.iter()
        .map(|job| tokio::spawn(refresh_loop(job.clone(), Arc::clone(state))))
        .collect()
}

async fn refresh_loop(job: FeedJob, state: Arc<Mutex<AgentState>>) {
    let mut tick = tokio::time::interval(job.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Option<SystemTime>, u64)> = None;
    loop {
        tick.tick().await;
        let meta = match tokio::fs::metadata(&job.path).await {
            Ok(m) => m,
            Err(e) => {
                warn!(feed = %job.name, path = %job.path.display(), "cannot read feed: {e}");
                continue;
            }
        };
        let key = (meta.modified().ok(), meta.len());
        if last == Some(key) {
            continue;
        }
        if meta.len() > MAX_FEED_FILE {
            warn!(feed = %job.name, "feed file is larger than {MAX_FEED_FILE} bytes; ignored");
            continue;
        }
        let j = job.clone();
        let st = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || apply_file(&j, &st, Some(key))).await {
            Ok(Ok(r)) => {
                if r.rejected_count > 0 {
                    let first: Vec<String> = r
                        .rejected
                        .iter()
                        .take(5)
                        .map(|(c, why)| format!("{c}: {why}"))
                        .collect();
                    warn!(
                        feed = %job.name,
                        rejected = r.rejected_count,
                        "feed entries refused: {}",
                        first.join("; ")
                    );
                }
                info!(
                    feed = %job.name,
                    added = r.added,
                    removed = r.removed,
                    unchanged = r.unchanged,
                    rejected = r.rejected_count,
                    "feed refreshed"
                );
                last = Some(key);
            }
            Ok(Err(e)) => warn!(feed = %job.name, "feed refresh failed: {e}"),
            Err(e) => warn!(feed = %job.name, "feed refresh failed: {e}"),
        }
    }
}

/// Largest feed file read (4M entries with comments fit).
const MAX_FEED_BYTES: u64 = 1 << 30;

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads, parses and applies one feed file (blocking). With `seen` (the
/// file's modification time and length before reading), a file that changed
/// while being read is left for the next refresh rather than applied half
/// written (writers should still replace feed files atomically, by rename).
///
/// # Errors
/// When the file is unreadable, changed while read, or the agent refuses
/// the import.
pub fn apply_file(
    job: &FeedJob,
    state: &Arc<Mutex<AgentState>>,
    seen: Option<(Option<SystemTime>, u64)>,
) -> Result<ImportReport, String> {
    // Read a line at a time with the CLI's caps: a feed path pointing at a
    // device or an endless pipe costs bounded memory and stops.
    let file =
        std::fs::File::open(&job.path).map_err(|e| format!("{}: {e}", job.path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(
        1 << 16,
        Counting {
            inner: std::io::Read::take(file, MAX_FEED_BYTES + 1),
            n: 0,
        },
    );
    let parsed = feed::parse_reader(&mut reader, false).map_err(|e| {
        format!(
            "{}: {e}; the feed's bans stay as they are",
            job.path.display()
        )
    })?;
    let read = reader.get_ref().n;
    if read > MAX_FEED_BYTES {
        return Err(format!(
            "{} is larger than {} MiB; the feed's bans stay as they are",
            job.path.display(),
            MAX_FEED_BYTES >> 20
        ));
    }
    if let Some(seen) = seen {
        let now = std::fs::metadata(&job.path)
            .map(|m| (m.modified().ok(), m.len()))
            .map_err(|e| format!("{}: {e}", job.path.display()))?;
        if now != seen || read != seen.1 {
            return Err(format!(
                "{} changed while being read; trying again at the next refresh",
                job.path.display()
            ));
        }
    }
    if !parsed.rejected.is_empty() {
        let first: Vec<String> = parsed
            .rejected
            .iter()
            .take(5)
            .map(|r| format!("line {}: {}", r.line, r.reason))
            .collect();
        warn!(
            feed = %job.name,
            rejected = parsed.rejected.len(),
            "feed has lines that cannot be used: {}",
            first.join("; ")
        );
    }
    let cidrs: Vec<String> = parsed.entries.iter().map(ToString::to_string).collect();
    let mut s = state
        .lock()
        .map_err(|_| "agent state lock poisoned".to_owned())?;
    s.import_group(&job.name, &cidrs, None, None, false)
        .map_err(|e| e.to_string())
}
