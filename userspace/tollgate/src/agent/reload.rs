//! Hot reload of the policy file (SIGHUP, `tollgate policy reload`, or the
//! file changing on disk).
//!
//! The file is read and validated in full ([`Policy::load`], the same check
//! as `policy check` and the agent's start; on a blocking thread, off the
//! agent's state lock and its main loop) before anything changes: an
//! invalid, empty or comment-only file is refused with the reason, logged,
//! counted and shown by `tollgate status`, and the running policy stays.
//! Changes that lift protection (enforce to monitor, feeds or the CrowdSec
//! bouncer removed, allowlist entries or trusted proxies added, detectors
//! disabled) are logged at warn level with what changed. A
//! valid one applies what can change live — mode (unless `--mode` was given
//! on the command line, which overrides the file), the allowlist entries that
//! came from the file, and feeds (added, changed, and removed feeds' bans
//! lifted) — without touching other bans or detaching. Interfaces, attach
//! mode, paths and the metrics address need a restart; a reload says so.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{AgentOptions, feeds::spawn_refresh, state::AgentState};
use crate::{
    feed::FeedJob,
    net::{check_breadth, parse_net},
    policy::{ModeName, Policy},
    proto::{Request, Response},
};

/// The reason allowlist entries from the policy file carry.
pub const CONFIG_REASON: &str = "config file";

/// Where a control connection waits for its reload's outcome.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// The sending end of reload requests: control connections hold a clone,
/// the agent's main loop the receiving end.
#[derive(Clone)]
pub struct Requests(mpsc::UnboundedSender<Reply>);

/// The channel from control connections to the main loop.
#[must_use]
pub fn channel() -> (Requests, mpsc::UnboundedReceiver<Reply>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Requests(tx), rx)
}

/// A control connection's `policy reload`: asks the main loop, waits (bounded).
pub async fn request(requests: &Requests) -> Response {
    let (otx, orx) = oneshot::channel();
    if requests.0.send(otx).is_err() {
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
    /// The policy in force (to tell what a reload lifts).
    current: Policy,
}

/// A policy file read and validated off the main loop, or why not.
pub type Loaded = Result<Policy, String>;

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
            current: opts.policy.clone(),
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

    /// The file to read for a reload (remembering its stamp, so the watcher
    /// does not read the same version twice).
    ///
    /// # Errors
    /// When the agent was started without `--config`.
    pub fn begin(&mut self) -> Result<PathBuf, String> {
        let Some(path) = self.config.clone() else {
            return Err(
                "this agent was started without --config; there is no policy file to reload".into(),
            );
        };
        self.seen = stamp(&path);
        Ok(path)
    }

    /// Reads and validates `path` (blocking: call it on a blocking thread).
    ///
    /// # Errors
    /// When the file is unreadable or invalid, with the reason.
    pub fn load(path: &std::path::Path) -> Loaded {
        Policy::load(path).map_err(|e| e.to_string())
    }

    /// Applies a loaded policy; returns what changed. A refusal is logged,
    /// counted and kept for `tollgate status`.
    ///
    /// # Errors
    /// When the file was invalid or applying it failed.
    pub fn finish(
        &mut self,
        loaded: Loaded,
        state: &Arc<Mutex<AgentState>>,
    ) -> Result<String, String> {
        let r = loaded
            .map_err(|e| format!("{e}; the running policy stays"))
            .and_then(|p| self.apply(p, state));
        if let Ok(mut s) = state.lock() {
            s.counters.reload(r.is_ok());
            let summary = match &r {
                Ok(m) | Err(m) => m.clone(),
            };
            s.last_reload = Some((crate::clock::unix_now(), r.is_ok(), summary));
        }
        if let Err(e) = &r {
            error!("policy reload refused: {e}");
            if let Ok(mut s) = state.lock() {
                s.policy_refused = Some((crate::clock::unix_now(), e.clone()));
            }
        }
        r
    }

    fn apply(&mut self, mut p: Policy, state: &Arc<Mutex<AgentState>>) -> Result<String, String> {
        let path = self.config.clone().unwrap_or_default();
        if let Some(d) = &self.opts.descriptor_set {
            // The flag's file, read when the pipeline is built.
            p.grpc.descriptor_set = Some(d.clone());
            p.grpc.schema = None;
        }
        let mut lifted = lifted_detectors(&self.current, &p);
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
        // The fleet link is made at start (flags over the file): a changed
        // section only says so.
        if p.cluster != self.opts.policy.cluster {
            restart.push("cluster");
        }
        if p.tls != self.opts.policy.tls {
            restart.push("tls");
        }
        // Map sizes are fixed when the maps are created.
        if p.capacity != self.opts.policy.capacity {
            restart.push("capacity");
        }
        let jobs = p.feed_jobs();
        let mut trusted = crate::policy::expand_trusted(&p.trusted_proxies)
            .map_err(|e| format!("{}: {e}; the running policy stays", path.display()))?;
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
                if s.maps.mode() != mode {
                    if mode == tollgate_common::Mode::Monitor {
                        lifted.push("mode enforce -> monitor (nothing is dropped)".into());
                    }
                    s.maps
                        .set_mode(mode)
                        .map_err(|e| format!("failed to set the mode: {e:#}"))?;
                    changes.push(format!("mode {mode:?}").to_lowercase());
                }
            }
            if let Some(api) = &self.api
                && let Ok(mut st) = api.state.lock()
            {
                st.proxy_headers = crate::policy::proxy_headers(
                    &p.trusted_proxies,
                    &self.opts.trusted_flag_entries,
                );
            }
            if s.trusted != trusted {
                for t in trusted.iter().filter(|t| !s.trusted.contains(t)) {
                    lifted.push(format!(
                        "trusted proxy {t} added (never banned, names its clients)"
                    ));
                }
                s.maps
                    .set_trusted(&trusted)
                    .map_err(|e| format!("failed to set the trusted proxies: {e:#}"))?;
                s.trusted.clone_from(&trusted);
                if let Some(api) = &self.api
                    && let Ok(mut st) = api.state.lock()
                {
                    st.trusted.clone_from(&trusted);
                    st.flows.set_trusted(&trusted);
                }
                changes.push("trusted proxies".into());
            }
            let have: HashSet<IpNet> = s.allows().map(|r| r.cidr).collect();
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
                lifted.push(format!("allowlist entry {net} added (never dropped)"));
            }
            let gone: Vec<IpNet> = s
                .allows()
                .filter(|r| r.reason == CONFIG_REASON && !allow.contains(&r.cidr))
                .map(|r| r.cidr)
                .collect();
            for net in gone {
                let r = s.handle(Request::AllowRm {
                    cidr: net.to_string(),
                    exist: false,
                });
                if r.ok {
                    changes.push(format!("unallow {net}"));
                } else {
                    warn!(cidr = %net, "failed to remove allow entry: {:?}", r.error);
                }
            }
            for old in &self.feeds {
                if !jobs.iter().any(|j| j.name == old.name) {
                    lifted.push(format!("feed {} removed (its bans lifted)", old.name));
                    let r = s.handle(Request::BlockRmOrigin {
                        origin: old.name.clone(),
                        dry_run: false,
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
                    lifted.push("CrowdSec bouncer removed (its bans lifted)".into());
                    let gone = state.lock().ok().map(|mut s| {
                        s.handle(Request::BlockRmOrigin {
                            origin: crate::crowdsec::ORIGIN.into(),
                            dry_run: false,
                        })
                        .ok
                    });
                    changes.push(format!(
                        "CrowdSec bouncer stopped{}",
                        if gone == Some(true) {
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
        if !lifted.is_empty() {
            warn!(
                file = %path.display(),
                "policy reload lifts protection: {}",
                lifted.join("; ")
            );
        }
        info!(file = %path.display(), "policy reloaded: {summary}");
        self.current = p;
        Ok(summary)
    }
}

/// Detectors the new policy switches off that the current one had on.
fn lifted_detectors(old: &Policy, new: &Policy) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(&old.detectors),
        serde_json::to_value(&new.detectors),
    ) else {
        return Vec::new();
    };
    let on = |v: Option<&serde_json::Value>| {
        v.and_then(|d| d.get("enabled"))
            .and_then(serde_json::Value::as_bool)
    };
    a.iter()
        .filter(|(k, v)| on(Some(v)) == Some(true) && on(b.get(*k)) == Some(false))
        .map(|(k, _)| format!("detector {k} disabled"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn disabled_detectors_are_named() {
        let on = Policy::parse("mode: enforce\n", Path::new("p.yaml")).unwrap();
        let off = Policy::parse(
            "detectors:\n  sqli: {enabled: false}\n  xss: {enabled: true, weight: 50}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(lifted_detectors(&on, &off), vec!["detector sqli disabled"]);
        assert!(lifted_detectors(&off, &on).is_empty());
        assert!(lifted_detectors(&on, &on).is_empty());
    }
}
