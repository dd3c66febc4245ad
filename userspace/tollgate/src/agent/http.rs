//! The metrics and health endpoint (`--metrics-addr`): `GET /metrics`
//! (OpenMetrics text), `GET /healthz` (200 while the process runs) and
//! `GET /readyz` (200 once attached to every interface with the store
//! readable; 503 with the reason otherwise).
//!
//! Plain hyper, HTTP/1 only, GET only, bounded: headers must arrive within a
//! few seconds, at most [`MAX_CONNECTIONS`] are served at once, and the
//! agent's state lock is held only to take a snapshot, never while encoding
//! or writing. Metrics show what is blocked and how much, so the listener
//! is loopback-only unless the operator says otherwise.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use super::state::AgentState;
use crate::metrics;

/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 32;

/// What the endpoint reads: the agent state once it exists (before that the
/// agent is alive but not ready), and how many interfaces it must attach to.
#[derive(Default)]
pub struct Health {
    state: OnceLock<Arc<Mutex<AgentState>>>,
    /// Interfaces the agent was asked to protect.
    pub ifaces: usize,
}

impl Health {
    /// For an agent protecting `ifaces` interfaces.
    #[must_use]
    pub fn new(ifaces: usize) -> Self {
        Self {
            state: OnceLock::new(),
            ifaces,
        }
    }

    /// Hands over the state once the agent has attached.
    pub fn set_state(&self, state: Arc<Mutex<AgentState>>) {
        let _ = self.state.set(state);
    }
}

/// Binds the listener, refusing non-loopback addresses unless `allow_remote`.
///
/// # Errors
/// When the address is not loopback (without `allow_remote`) or cannot be bound.
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        if !allow_remote {
            bail!(
                "refusing to serve metrics on {addr}: it is not a loopback address and metrics \
                 show what is blocked and how much; use 127.0.0.1/::1, or pass \
                 --metrics-allow-remote (policy: metrics.allow_remote) behind a firewall"
            );
        }
        warn!(%addr, "metrics are served on a non-loopback address: restrict who can reach it");
    }
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind the metrics endpoint on {addr}"))?;
    info!(addr = %l.local_addr().unwrap_or(addr), "metrics endpoint ready");
    Ok(l)
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accept on the metrics endpoint failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let health = Arc::clone(&health);
                async move { Ok::<_, Infallible>(route(&req, &health).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(30), conn).await {
                debug!(%peer, "metrics connection: {e}");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn route(req: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match snapshot(health).await {
            Ok(s) => match s.not_ready {
                None => text(StatusCode::OK, PLAIN, "ready\n".into()),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {why}\n"),
                ),
            },
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match snapshot(health).await {
            Ok(s) if wants_openmetrics(req) => {
                text(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render(&s))
            }
            Ok(s) => text(
                StatusCode::OK,
                metrics::PROMETHEUS_CONTENT_TYPE,
                metrics::to_prometheus_text(&metrics::render(&s)),
            ),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("no metrics yet: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Prometheus asks for OpenMetrics in its Accept header; curl and older
/// scrapers get the classic text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn snapshot(health: &Health) -> Result<metrics::Snapshot, String> {
    let Some(state) = health.state.get() else {
        return Err("starting: not yet attached".into());
    };
    let state = Arc::clone(state);
    let ifaces = health.ifaces;
    tokio::task::spawn_blocking(move || match state.lock() {
        Ok(s) => Ok(s.snapshot(ifaces)),
        Err(_) => Err("agent state lock poisoned".to_owned()),
    })
    .await
    .map_err(|e| e.to_string())?
}
