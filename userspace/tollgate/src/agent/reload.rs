//! Hot reload of the policy file (SIGHUP or `tollgate policy reload`).
//!
//! The file is read and validated in full before anything changes: an
//! invalid file is refused with the reason and the running policy stays. A
//! valid one applies what can change live — mode (unless `--mode` was given
//! on the command line, which overrides the file), the allowlist entries that
//! came from the file, and feeds (added, changed, and removed feeds' bans
//! lifted) — without touching other bans or detaching. Interfaces, attach
//! mode, paths and the metrics address need a restart; a reload says so.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{
    AgentOptions,
    feeds::{FeedJob, spawn_refresh},
    state::AgentState,
};
use crate::{
    net::{check_breadth, parse_net},
    policy::{ModeName, Policy},
    proto::{Request, Response},
};

/// The reason allowlist entries from the policy file carry.
pub const CONFIG_REASON: &str = "config file";

type Reply = oneshot::Sender<Result<String, String>>;

/// Reload requests from control connections to the agent's main loop (one
/// agent per process).
static RELOAD: OnceLock<mpsc::UnboundedSender<Reply>> = OnceLock::new();

/// Creates the channel the main loop listens on.
#[must_use]
pub fn channel() -> mpsc::UnboundedReceiver<Reply> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = RELOAD.set(tx);
    rx
}

/// A control connection's `policy reload`: asks the main loop, waits (bounded).
pub async fn request() -> Response {
    let Some(tx) = RELOAD.get() else {
        return Response::err("this agent cannot reload its policy");
    };
    let (otx, orx) = oneshot::channel();
    if tx.send(otx).is_err() {
        return Response::err("the agent is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(60), orx).await {
        Ok(Ok(Ok(summary))) => Response::ok(serde_json::Value::String(summary)),
        Ok(Ok(Err(e))) => Response::err(e),
        Ok(Err(_)) | Err(_) => Response::err("the reload did not finish in time"),
    }
}

/// What reload needs to remember between reloads.
pub struct Reloader {
    config: Option<PathBuf>,
    mode_flag: bool,
    opts: AgentOptions,
    feeds: Vec<FeedJob>,
    handles: Vec<JoinHandle<()>>,
    /// The CrowdSec bouncer, when the policy has a `crowdsec:` section.
    bouncer: Option<(crate::crowdsec::BouncerJob, JoinHandle<()>)>,
    api: Option<super::api::ApiHandle>,
    /// Modification time and size of the file when last read.
    seen: Option<(std::time::SystemTime, u64)>,
}

fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Reloader {
    /// Starts the feeds of `opts` and remembers how the agent was started.
    #[must_use]
    pub fn start(opts: &AgentOptions, state: &Arc<Mutex<AgentState>>) -> Self {
        Self {
            config: opts.config.clone(),
            mode_flag: opts.mode_flag,
            opts: opts.clone(),
            feeds: opts.feeds.clone(),
            handles: spawn_refresh(&opts.feeds, state),
            bouncer: opts
                .policy
                .crowdsec_job()
                .map(|job| (job.clone(), super::crowdsec::spawn(job, state))),
            api: None,
            seen: opts.config.as_deref().and_then(stamp),
        }
    }

    /// The API pipeline whose detectors a reload replaces.
    pub fn set_api(&mut self, api: super::api::ApiHandle) {
        self.api = Some(api);
    }

    /// True when the policy file changed since it was last read (polled by
    /// the agent: a watched file is reloaded without a signal).
    pub fn file_changed(&mut self) -> bool {
        let Some(path) = &self.config else {
            return false;
        };
        let now = stamp(path);
        if now.is_some() && now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }

    /// Stops the feed tasks and the CrowdSec bouncer.
    pub fn stop(&mut self) {
        self.stop_feeds();
        if let Some((_, h)) = self.bouncer.take() {
            h.abort();
        }
    }

    fn stop_feeds(&mut self) {
        for h in self.handles.drain(..) {
            h.abort();
        }
    }

    /// Re-reads the policy file and applies it; returns what changed.
    ///
    /// # Errors
    /// When there is no file, it is invalid, or applying it failed.
    pub fn reload(&mut self, state: &Arc<Mutex<AgentState>>) -> Result<String, String> {
        let r = self.apply(state);
        crate::metrics::reload(r.is_ok());
        r
    }

    fn apply(&mut self, state: &Arc<Mutex<AgentState>>) -> Result<String, String> {
        let Some(path) = self.config.clone() else {
            return Err(
                "this agent was started without --config; there is no policy file to reload".into(),
            );
        };
        self.seen = stamp(&path);
        let p = Policy::load(&path).map_err(|e| format!("{e}; the running policy stays"))?;
        let pipeline = crate::engine::Pipeline::from_policy(&p)
            .map_err(|e| format!("{}: {e:#}; the running policy stays", path.display()))?;
        let mut allow = HashSet::new();
        for (i, a) in p.allowlist.iter().enumerate() {
            let net = parse_net(a)
                .and_then(|n| check_breadth(n, false).map(|()| n))
                .map_err(|e| {
                    format!(
                        "{}: allowlist[{i}]: {e}; the running policy stays",
                        path.display()
                    )
                })?;
            allow.insert(net);
        }
        let mut changes = Vec::new();
        let mut restart = Vec::new();
        let new_ifaces = if p.interfaces.is_empty() {
            self.opts.ifaces.clone()
        } else {
            p.interfaces.clone()
        };
        if new_ifaces != self.opts.ifaces {
            restart.push("interfaces");
        }
        if p.attach.is_some_and(|a| a != self.opts.attach) {
            restart.push("attach");
        }
        if p.metrics.as_ref().map(|m| m.listen) != self.opts.metrics_addr && p.metrics.is_some() {
            restart.push("metrics");
        }
        let jobs = p.feed_jobs();
        let mut trusted = crate::policy::expand_trusted(&p.trusted_proxies).map_err(|e| {
            format!(
                "{}: trusted_proxies{e}; the running policy stays",
                path.display()
            )
        })?;
        for t in &self.opts.trusted_flags {
            if !trusted.contains(t) {
                trusted.push(*t);
            }
        }
        {
            let mut s = state
                .lock()
                .map_err(|_| "agent state lock poisoned".to_owned())?;
            if !self.mode_flag {
                let mode: tollgate_common::Mode = p.mode.unwrap_or(ModeName::Enforce).into();
                if s.dp.mode() != mode {
                    s.dp.set_mode(mode)
                        .map_err(|e| format!("failed to set the mode: {e:#}"))?;
                    changes.push(format!("mode {mode:?}").to_lowercase());
                }
            }
            if s.trusted != trusted {
                s.dp.set_trusted(&trusted)
                    .map_err(|e| format!("failed to set the trusted proxies: {e:#}"))?;
                s.trusted.clone_from(&trusted);
                if let Some(api) = &self.api
                    && let Ok(mut st) = api.state.lock()
                {
                    st.trusted.clone_from(&trusted);
                }
                changes.push("trusted proxies".into());
            }
            let have: HashSet<IpNet> = s.allows.keys().copied().collect();
            for net in allow.iter().filter(|n| !have.contains(n)) {
                let r = s.handle(Request::AllowAdd {
                    cidr: net.to_string(),
                    reason: Some(CONFIG_REASON.into()),
                    force: false,
                });
                if !r.ok {
                    return Err(format!(
                        "allowlist entry {net}: {}",
                        r.error.unwrap_or_default()
                    ));
                }
                changes.push(format!("allow {net}"));
            }
            let gone: Vec<IpNet> = s
                .allows
                .values()
                .filter(|r| r.reason == CONFIG_REASON && !allow.contains(&r.cidr))
                .map(|r| r.cidr)
                .collect();
            for net in gone {
                let r = s.handle(Request::AllowRm {
                    cidr: net.to_string(),
                });
                if r.ok {
                    changes.push(format!("unallow {net}"));
                } else {
                    warn!(cidr = %net, "failed to remove allow entry: {:?}", r.error);
                }
            }
            for old in &self.feeds {
                if !jobs.iter().any(|j| j.name == old.name) {
                    let r = s.handle(Request::BlockRmOrigin {
                        origin: old.name.clone(),
                    });
                    changes.push(format!(
                        "feed {} removed{}",
                        old.name,
                        if r.ok { " and its bans lifted" } else { "" }
                    ));
                }
            }
        }
        if jobs != self.feeds {
            for j in jobs.iter().filter(|j| !self.feeds.contains(j)) {
                changes.push(format!("feed {} (re)started", j.name));
            }
            self.stop_feeds();
            self.handles = spawn_refresh(&jobs, state);
            self.feeds = jobs;
        }
        let bouncer = p.crowdsec_job();
        if bouncer.as_ref() != self.bouncer.as_ref().map(|(j, _)| j) {
            if let Some((_, h)) = self.bouncer.take() {
                h.abort();
            }
            match bouncer {
                Some(job) => {
                    changes.push("CrowdSec bouncer (re)started".into());
                    self.bouncer = Some((job.clone(), super::crowdsec::spawn(job, state)));
                }
                None => {
                    let lifted = state.lock().ok().map(|mut s| {
                        s.handle(Request::BlockRmOrigin {
                            origin: crate::crowdsec::ORIGIN.into(),
                        })
                        .ok
                    });
                    changes.push(format!(
                        "CrowdSec bouncer stopped{}",
                        if lifted == Some(true) {
                            " and its bans lifted"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        if let Some(api) = &self.api
            && let Ok(mut st) = api.state.lock()
        {
            st.pipeline.reconfigure(pipeline);
            changes.push("detectors and scoring re-read".into());
        }
        let mut summary = if changes.is_empty() {
            "no changes".to_owned()
        } else {
            changes.join(", ")
        };
        if !restart.is_empty() {
            summary.push_str(&format!(
                "; changes to {} need a restart of the agent",
                restart.join(", ")
            ));
        }
        info!(file = %path.display(), "policy reloaded: {summary}");
        Ok(summary)
    }
}
