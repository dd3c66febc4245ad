//! The agent's API-visibility pipeline: reads the sample ring buffer, turns
//! samples into parsed HTTP exchanges, keeps the inventory, feeds `tap`
//! subscribers, and keeps itself within a CPU budget by lowering the
//! sampling rate (through the datapath's config) when it falls behind.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::enforce::Finding;
use crate::{
    api::{
        flows::{ApiEvent, FlowStats, Flows},
        inventory::Inventory,
        sample::{Direction, Sample},
    },
    clock,
    engine::Pipeline,
};

/// Flows followed at once.
pub const MAX_FLOWS: usize = 65_536;
/// Events buffered for slow `tap` readers (older ones are skipped).
pub const TAP_BUFFER: usize = 4096;
/// Largest sampling divisor the budget control goes to.
const MAX_ONE_IN: u32 = 1 << 20;

/// The policy's `sampling` section.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingPolicy {
    /// Every flow's first this-many payload packets are sampled.
    pub first_packets: u32,
    /// Then one in this many.
    pub one_in: u32,
    /// Payload bytes copied per sample (at most 1024).
    pub max_bytes: u32,
    /// CPU the pipeline may use, percent of one core.
    pub cpu_budget_percent: f64,
}

impl Default for SamplingPolicy {
    fn default() -> Self {
        Self {
            first_packets: 4,
            one_in: 10,
            max_bytes: 1024,
            cpu_budget_percent: 10.0,
        }
    }
}

impl SamplingPolicy {
    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.one_in == 0 {
            return Err(("sampling.one_in".into(), "must be at least 1".into()));
        }
        if self.max_bytes == 0 || self.max_bytes as usize > tollgate_common::SAMPLE_BYTES {
            return Err((
                "sampling.max_bytes".into(),
                format!("must be 1..={}", tollgate_common::SAMPLE_BYTES),
            ));
        }
        if !(self.cpu_budget_percent > 0.0 && self.cpu_budget_percent <= 100.0) {
            return Err((
                "sampling.cpu_budget_percent".into(),
                "must be in (0, 100]".into(),
            ));
        }
        Ok(())
    }

    /// The datapath form with a given divisor.
    #[must_use]
    pub fn cfg(&self, one_in: u32) -> tollgate_common::SampleCfg {
        tollgate_common::SampleCfg {
            first_packets: self.first_packets,
            one_in,
            max_bytes: self.max_bytes,
            reserved: 0,
        }
    }
}

/// What `status` reports about sampling.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SamplingStatus {
    /// API ports sampled.
    pub api_ports: Vec<u16>,
    /// The configured 1-in-N.
    pub one_in_configured: u32,
    /// The 1-in-N in force (raised under load).
    pub one_in_effective: u32,
    /// Pipeline counters.
    pub flows: FlowStats,
    /// Flows followed now.
    pub flows_followed: usize,
    /// Clients with a policy score now.
    #[serde(default)]
    pub clients_scored: usize,
    /// Clients the API guard keeps state for (limits, ids, failures).
    #[serde(default)]
    pub clients_tracked: usize,
    /// Requests and responses with at least one violation.
    #[serde(default)]
    pub findings: u64,
}

/// Shared state of the pipeline.
pub struct ApiState {
    /// Reassembly and parsing.
    pub flows: Flows,
    /// Endpoints seen.
    pub inventory: Inventory,
    /// Status for `tollgate status`.
    pub status: SamplingStatus,
    /// Detectors and client scores.
    pub pipeline: Pipeline,
}

/// Handles the agent keeps.
#[derive(Clone)]
pub struct ApiHandle {
    /// The pipeline's state.
    pub state: Arc<Mutex<ApiState>>,
    /// Parsed exchanges, for `tap`.
    pub tap: broadcast::Sender<Arc<ApiEvent>>,
}

impl ApiHandle {
    /// A pipeline for `ports` with `policy`.
    #[must_use]
    pub fn new(ports: &[u16], policy: &SamplingPolicy, pipeline: Pipeline) -> Self {
        let (tap, _) = broadcast::channel(TAP_BUFFER);
        Self {
            state: Arc::new(Mutex::new(ApiState {
                flows: Flows::new(MAX_FLOWS),
                inventory: Inventory::default(),
                status: SamplingStatus {
                    api_ports: ports.to_vec(),
                    one_in_configured: policy.one_in,
                    one_in_effective: policy.one_in,
                    ..SamplingStatus::default()
                },
                pipeline,
            })),
            tap,
        }
    }

    /// Handles a batch of raw records; returns the processing time and
    /// what the detectors found.
    pub fn handle(&self, records: &[Vec<u8>], wall_offset: f64) -> (Duration, Vec<Finding>) {
        let t = Instant::now();
        let now = clock::unix_now();
        let mut findings = Vec::new();
        let Ok(mut st) = self.state.lock() else {
            return (t.elapsed(), findings);
        };
        for raw in records {
            let Some(sample) = Sample::from_record(raw) else {
                continue;
            };
            for ev in st.flows.on_sample(&sample, wall_offset) {
                let ms = (ev.time * 1000.0) as u64;
                let decided = match (&ev.request, ev.direction) {
                    (Some(req), Direction::Request) => {
                        st.inventory.on_request(ev.client, req, now);
                        let dreq = to_detect(req);
                        let d = st.pipeline.on_request(Some(ev.client), &dreq, ms);
                        Some((st.pipeline.route_of(&dreq), d))
                    }
                    (_, Direction::Response) => {
                        if let (Some(m), Some(p), Some(s)) = (&ev.method, &ev.path, ev.status) {
                            st.inventory.on_response(m, p, s);
                        }
                        ev.response.as_ref().map(|resp| {
                            // What the pairing kept of the request: method and path.
                            let req = ev.method.as_ref().zip(ev.path.as_ref()).map(|(m, p)| {
                                tollgate_detect::Request {
                                    method: m.clone(),
                                    target: p.clone(),
                                    path: p.clone(),
                                    ..tollgate_detect::Request::default()
                                }
                            });
                            let route = req
                                .as_ref()
                                .map_or_else(|| "-".to_owned(), |r| st.pipeline.route_of(r));
                            let d = st.pipeline.on_response(
                                ev.client,
                                req.as_ref(),
                                &to_detect_response(resp),
                                ms,
                            );
                            (route, d)
                        })
                    }
                    _ => None,
                };
                if let Some((route, d)) = decided
                    && (!d.violations.is_empty() || d.ban.is_some())
                {
                    findings.push(Finding {
                        client: ev.client,
                        proxy: None,
                        port: ev.port,
                        route,
                        decision: d,
                    });
                }
                // Nobody listening is fine.
                let _ = self.tap.send(Arc::new(ev));
            }
        }
        st.status.flows = st.flows.stats;
        st.status.flows_followed = st.flows.len();
        st.status.clients_scored = st.pipeline.tracked();
        st.status.clients_tracked = st.pipeline.guard_clients();
        st.status.findings += findings.len() as u64;
        (t.elapsed(), findings)
    }
}

/// The detectors' view of a parsed response.
#[must_use]
pub fn to_detect_response(resp: &crate::api::http::Response) -> tollgate_detect::Response {
    tollgate_detect::Response {
        version: resp.version,
        status: resp.status,
        reason: String::new(),
        headers: resp.headers.clone(),
        body: resp.body.to_vec(),
        truncated: resp.truncated,
    }
}

/// The detectors' view of a parsed request (the sample record does not
/// depend on where it came from).
#[must_use]
pub fn to_detect(req: &crate::api::http::Request) -> tollgate_detect::Request {
    tollgate_detect::Request {
        method: req.method.clone(),
        target: req.target.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        version: req.version,
        headers: req.headers.clone(),
        body: req.body.to_vec(),
        truncated: req.truncated,
    }
}

/// Unix seconds minus boot-clock seconds, to date samples.
#[must_use]
pub fn wall_offset() -> f64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    unix - clock::boot_ns() as f64 / 1e9
}

/// Reads the sample ring buffer until the agent stops. `set_rate` writes a
/// new 1-in-N into the datapath.
pub async fn read_samples(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    api: ApiHandle,
    policy: SamplingPolicy,
    set_rate: impl Fn(u32) + Send + 'static,
    mut on_findings: impl FnMut(Vec<Finding>) + Send + 'static,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open and is
    // not reused while registered.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "failed to watch the sample ring buffer: {}",
            e.into_parts().1
        )
    })?;
    let offset = wall_offset();
    let budget = policy.cpu_budget_percent / 100.0;
    let mut one_in = policy.one_in.max(1);
    let mut window = Instant::now();
    let mut busy = Duration::ZERO;
    let mut calm_windows = 0u32;
    loop {
        let mut guard = fd.readable_mut().await?;
        let mut batch = Vec::new();
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                batch.push(item.to_vec());
                if batch.len() >= 1024 {
                    break;
                }
            }
        }
        if batch.len() < 1024 {
            guard.clear_ready();
        }
        drop(guard);
        let (spent, findings) = api.handle(&batch, offset);
        busy += spent;
        if !findings.is_empty() {
            on_findings(findings);
        }
        let elapsed = window.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let used = busy.as_secs_f64() / elapsed.as_secs_f64();
            if used > budget && one_in < MAX_ONE_IN {
                one_in = (one_in * 2).min(MAX_ONE_IN);
                set_rate(one_in);
                warn!(
                    used_percent = used * 100.0,
                    one_in, "sampling lowered to stay within the CPU budget"
                );
                calm_windows = 0;
            } else if used < budget / 4.0 && one_in > policy.one_in {
                calm_windows += 1;
                if calm_windows >= 10 {
                    one_in = (one_in / 2).max(policy.one_in);
                    set_rate(one_in);
                    info!(one_in, "sampling raised again (load went down)");
                    calm_windows = 0;
                }
            }
            if let Ok(mut st) = api.state.lock() {
                st.status.one_in_effective = one_in;
            }
            window = Instant::now();
            busy = Duration::ZERO;
        }
    }
}
