//! The CrowdSec bouncer: pulls decisions from a CrowdSec Local API and
//! enforces them in the kernel maps, tagged with origin `crowdsec`.
//!
//! The first pull after start (and after any failure to apply one) asks for
//! the whole set (`/v1/decisions/stream?startup=true`), which is
//! authoritative: CrowdSec bans not in it are lifted. Later pulls
//! (`startup=false`) carry only what changed. Each request is bounded (connect
//! and total timeouts, a cap on the answer's size); errors back off up to
//! [`MAX_BACKOFF`]. An unreachable Local API changes nothing: the bans
//! already in the kernel and store stay, with their own expiries.
//!
//! The client is a bare HTTP/1.1 GET over hyper (plain http: the Local API
//! normally listens on the host's loopback). The API key is read from its
//! file at every pull and never logged.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};
use tracing::{debug, info, warn};

use super::state::{AgentState, crowdsec::CrowdsecReport};
use crate::proto::MAX_TTL;
use crate::{
    clock,
    crowdsec::{BouncerJob, ORIGIN, StreamBatch, Tracker, parse_stream},
};

/// Largest answer read (the community blocklist is a few MiB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Connecting may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request (headers and body) may take this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait between attempts after errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The key file is unreadable or the key unusable.
    #[error("{0}")]
    Key(String),
    /// No connection.
    #[error("cannot connect to the CrowdSec Local API at {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The exchange failed or took too long.
    #[error("the CrowdSec Local API at {addr} did not answer properly: {reason}")]
    Exchange {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A status other than 200.
    #[error("the CrowdSec Local API answered {status}{hint}")]
    Status {
        /// HTTP status.
        status: u16,
        /// What to do about it.
        hint: &'static str,
    },
    /// The body is not a decision stream.
    #[error("unusable answer from the CrowdSec Local API: {0}")]
    Body(String),
}

/// Starts the bouncer task; abort the handle to stop it.
#[must_use]
pub fn spawn(job: BouncerJob, state: &Arc<Mutex<AgentState>>) -> JoinHandle<()> {
    info!(
        lapi = %job.endpoint.authority(),
        poll = ?job.poll,
        scopes = ?job.filter.scopes,
        origins = ?job.filter.origins,
        "CrowdSec bouncer started"
    );
    tokio::spawn(run(job, Arc::clone(state)))
}

async fn run(job: BouncerJob, state: Arc<Mutex<AgentState>>) {
    let mut tracker = Tracker::default();
    let mut startup = true;
    let mut failures = 0u32;
    loop {
        let ok = match pull(&job, startup).await {
            Ok(batch) => {
                let authoritative = startup;
                match apply(&state, &mut tracker, batch, authoritative).await {
                    Ok(()) => {
                        startup = false;
                        true
                    }
                    Err(e) => {
                        warn!(
                            "CrowdSec decisions not applied: {e}; the next pull asks for the whole set"
                        );
                        startup = true;
                        false
                    }
                }
            }
            Err(e) => {
                warn!(
                    failures = failures + 1,
                    "{e}; existing bans stay enforced, retrying"
                );
                false
            }
        };
        let wait = if ok {
            if failures > 0 {
                info!("CrowdSec Local API reachable again");
            }
            failures = 0;
            job.poll
        } else {
            failures = failures.saturating_add(1);
            job.poll
                .saturating_mul(1 << failures.min(6))
                .min(MAX_BACKOFF)
                .max(job.poll)
        };
        tokio::time::sleep(wait).await;
    }
}

async fn apply(
    state: &Arc<Mutex<AgentState>>,
    tracker: &mut Tracker,
    batch: StreamBatch,
    authoritative: bool,
) -> Result<(), String> {
    let now = clock::unix_now();
    let skipped = batch.skipped.clone();
    let (new, deleted) = (batch.new.len(), batch.deleted.len());
    let (put, lift) = if authoritative {
        (tracker.reset(&batch, now, MAX_TTL), Vec::new())
    } else {
        let c = tracker.update(&batch, now, MAX_TTL);
        (c.put, c.lift)
    };
    let st = Arc::clone(state);
    let report: CrowdsecReport = tokio::task::spawn_blocking(move || match st.lock() {
        Ok(mut s) => s
            .apply_crowdsec(&put, &lift, authoritative)
            .map_err(|e| e.to_string()),
        Err(_) => Err("agent state lock poisoned".into()),
    })
    .await
    .map_err(|e| e.to_string())??;
    if skipped.broken() > 0 {
        warn!(
            malformed = skipped.malformed,
            bad_value = skipped.bad_value,
            bad_duration = skipped.bad_duration,
            "CrowdSec decisions skipped: {}",
            skipped.examples.join("; ")
        );
    }
    if !report.refusals.is_empty() {
        warn!(
            refused = report.refused,
            "CrowdSec decisions refused: {}",
            report.refusals.join("; ")
        );
    }
    let other_types: Vec<String> = skipped
        .other_types
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect();
    if authoritative || !report.is_quiet() {
        info!(
            full_set = authoritative,
            new,
            deleted,
            added = report.added,
            updated = report.updated,
            unchanged = report.unchanged,
            removed = report.removed,
            kept_other_origin = report.kept_other_origin,
            refused = report.refused,
            skipped_types = %other_types.join(","),
            skipped_scopes = skipped.other_scopes,
            skipped_origins = skipped.other_origins,
            expired = skipped.expired,
            tracked = tracker.len(),
            origin = ORIGIN,
            "CrowdSec decisions applied"
        );
    } else {
        debug!(new, deleted, "CrowdSec pull: nothing to change");
    }
    Ok(())
}

/// One pull: `GET {base}v1/decisions/stream?startup=..&scopes=..`.
///
/// # Errors
/// See [`PullError`].
pub async fn pull(job: &BouncerJob, startup: bool) -> Result<StreamBatch, PullError> {
    let key = job.key.read().map_err(PullError::Key)?;
    let scopes: Vec<&str> = job.filter.scopes.iter().map(|s| s.query_name()).collect();
    let path = format!(
        "{}v1/decisions/stream?startup={startup}&scopes={}",
        job.endpoint.base,
        scopes.join(",")
    );
    let body = get(job, &path, &key).await?;
    parse_stream(&body, &job.filter).map_err(|e| PullError::Body(e.to_string()))
}

async fn get(job: &BouncerJob, path: &str, key: &str) -> Result<Bytes, PullError> {
    let addr = job.endpoint.authority();
    let connect = TcpStream::connect((job.endpoint.host.as_str(), job.endpoint.port));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| PullError::Connect {
            addr: addr.clone(),
            reason: format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
        })?
        .map_err(|e| PullError::Connect {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let exchange = |reason: String| PullError::Exchange {
        addr: addr.clone(),
        reason,
    };
    let work = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| exchange(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, &addr)
            .header(
                hyper::header::USER_AGENT,
                concat!("tollgate-bouncer/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Api-Key", key)
            .body(Empty::<Bytes>::new())
            .map_err(|e| exchange(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| exchange(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| exchange(format!("reading the answer: {e}")))?
            .to_bytes();
        driver.abort();
        Ok::<_, PullError>((status, body))
    };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| exchange(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))??;
    match status {
        200 => Ok(body),
        401 | 403 => Err(PullError::Status {
            status,
            hint: ": the API key was refused — register the bouncer with `cscli bouncers add \
                   tollgate` and put the key it prints in api_key_file",
        }),
        404 => Err(PullError::Status {
            status,
            hint: ": no decision stream there — is lapi_url the Local API's address?",
        }),
        _ => Err(PullError::Status { status, hint: "" }),
    }
}
