//! The agent's side of the fleet: the cluster task (publishing and
//! watching etcd, `crate::cluster::run`) and the applier that takes what it
//! reads into the state.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::state::{AgentState, Resync};
use crate::proto::Response;
use crate::{
    cluster::{ClusterConfig, ClusterStatus, Inbound, Queued, SharedStatus},
    store::Store,
};

/// What start-up makes before the store is opened and hands on once the
/// state exists.
pub struct Link {
    cfg: ClusterConfig,
    outbox: Option<mpsc::UnboundedReceiver<Queued>>,
    /// Shared with the store and the state.
    pub status: SharedStatus,
    tx: mpsc::UnboundedSender<Queued>,
    /// What the cluster task read, once it runs ([`Self::connect`]).
    inbound: Option<mpsc::Receiver<Inbound>>,
    /// A full read whose pages [`Self::apply_while_loading`] began to apply.
    resync: Option<Resync>,
}

impl Link {
    /// A link for `cfg`, not yet running.
    #[must_use]
    pub fn new(cfg: ClusterConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(ClusterStatus {
            view: crate::proto::ClusterView {
                fleet: cfg.fleet.clone(),
                host_id: cfg.host_id.clone(),
                endpoints: cfg.endpoints.clone(),
                ..crate::proto::ClusterView::default()
            },
            last_sync: 0,
            bans: 0,
            cfg: Some(cfg.clone()),
        }));
        Self {
            cfg,
            outbox: Some(rx),
            status,
            tx,
            inbound: None,
            resync: None,
        }
    }

    /// Starts the cluster task: it connects to etcd and reads the fleet's
    /// set while the agent loads its datapath (a host joining a large
    /// fleet has it read by the time it can apply it); what it reads waits
    /// for [`Self::spawn`].
    pub fn connect(&mut self) {
        let Some(outbox) = self.outbox.take() else {
            return;
        };
        // Bounded: a slow applier slows the watch, not the memory.
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(4096);
        tokio::spawn(crate::cluster::run(
            self.cfg.clone(),
            outbox,
            in_tx,
            Arc::clone(&self.status),
        ));
        self.inbound = Some(in_rx);
    }

    /// Applies what the cluster task has read while the kernel verifies the
    /// programs (the maps take writes meanwhile, as for the stored bans): a
    /// host joining a large fleet has most of its set enforced by the time
    /// it attaches. The applier ([`Self::spawn`]) takes over from there.
    pub async fn apply_while_loading(&mut self, state: &mut AgentState) {
        let Some(rx) = self.inbound.as_mut() else {
            return;
        };
        // The state knows which host it is (its own decisions in etcd's
        // records are told apart by it) before anything is applied.
        state.set_cluster(Arc::clone(&self.status));
        let t = std::time::Instant::now();
        let mut pages = 0u32;
        while state.datapath_mut().programs_loading() {
            // Short waits: the verifier's end is polled, not signalled.
            let first = match tokio::time::timeout(POLL, rx.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => break,
                Err(_) => continue,
            };
            let batch = take_batch(first, rx);
            pages += u32::from(matches!(batch.last(), Some(Inbound::SnapshotPage(_))));
            apply(state, &mut self.resync, batch);
        }
        if pages > 0 {
            info!(
                pages,
                ms = t.elapsed().as_millis(),
                "fleet pages applied while the programs were verified"
            );
        }
    }

    /// `inner` with the fleet behind it.
    #[must_use]
    pub fn wrap(&self, inner: Box<dyn Store>) -> Box<dyn Store> {
        Box::new(crate::cluster::ClusterStore::new(
            inner,
            self.tx.clone(),
            Arc::clone(&self.status),
        ))
    }

    /// Starts the cluster task (unless [`Self::connect`] did) and the
    /// applier.
    pub fn spawn(mut self, state: &Arc<Mutex<AgentState>>) {
        self.connect();
        let Some(mut in_rx) = self.inbound.take() else {
            return;
        };
        if let Ok(mut st) = state.lock() {
            st.set_cluster(Arc::clone(&self.status));
        }
        let every = std::time::Duration::from_secs(self.cfg.reconcile_secs);
        let st = Arc::clone(state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let st = Arc::clone(&st);
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut s) = st.lock() {
                        s.cluster_reconcile();
                    }
                })
                .await;
            }
        });
        let state = Arc::clone(state);
        // A full read under way: its pages are applied as they come.
        let resync = Arc::new(Mutex::new(self.resync.take()));
        tokio::spawn(async move {
            while let Some(first) = in_rx.recv().await {
                let batch = take_batch(first, &mut in_rx);
                let (st, resync) = (Arc::clone(&state), Arc::clone(&resync));
                let applied = tokio::task::spawn_blocking(move || {
                    let Ok(mut st) = st.lock() else { return };
                    timing!("apply_locked");
                    let Ok(mut resync) = resync.lock() else {
                        return;
                    };
                    apply(&mut st, &mut resync, batch);
                })
                .await;
                if let Err(e) = applied {
                    warn!("the fleet applier failed: {e}");
                }
            }
        });
    }
}

/// How often [`Link::apply_while_loading`] looks whether the programs are in.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// `first` and what else is waiting, to apply under one lock; a page of a
/// full read ends it (the lock is let go between pages).
fn take_batch(first: Inbound, rx: &mut mpsc::Receiver<Inbound>) -> Vec<Inbound> {
    let records = |m: &Inbound| match m {
        Inbound::Puts(rs) | Inbound::SnapshotPage(rs) => rs.len(),
        _ => 1,
    };
    let mut held = records(&first);
    let mut batch = vec![first];
    // Bounded by records, not messages: the state lock is held for the
    // whole batch, and local bans wait for it.
    while held < MAX_BATCH_RECORDS
        && !matches!(batch.last(), Some(Inbound::SnapshotPage(_)))
        && let Ok(more) = rx.try_recv()
    {
        held += records(&more);
        batch.push(more);
    }
    batch
}

/// Records applied under one hold of the state lock, about (a batch ends
/// past it).
const MAX_BATCH_RECORDS: usize = 4096;

/// Applies what the cluster task read, in order.
fn apply(st: &mut AgentState, resync: &mut Option<Resync>, batch: Vec<Inbound>) {
    // Runs of bans go to the kernel and the store together.
    let mut puts = Vec::new();
    for change in batch {
        match change {
            Inbound::Puts(rs) => puts.extend(rs),
            Inbound::SnapshotStart { lifted, capped } => {
                st.cluster_put_many(std::mem::take(&mut puts));
                // A read cut short before its end settled nothing: this one
                // starts over.
                *resync = Some(st.cluster_snapshot_start(&lifted, &capped));
            }
            Inbound::SnapshotPage(records) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                match resync.as_mut() {
                    Some(rs) => {
                        st.cluster_snapshot_page(rs, records);
                    }
                    None => {
                        st.cluster_put_many(records);
                    }
                }
            }
            Inbound::SnapshotEnd { unread } => {
                st.cluster_put_many(std::mem::take(&mut puts));
                if let Some(rs) = resync.take() {
                    st.cluster_snapshot_end(rs, &unread);
                }
            }
            Inbound::Gone(n) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                st.cluster_gone(&n);
            }
            Inbound::Remove(l) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                st.cluster_remove(&l);
            }
            Inbound::Acked(upto) => st.cluster_acked(upto),
            Inbound::Allows(list) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                st.cluster_allows(list);
            }
            Inbound::Allow(a) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                st.cluster_allow(a);
            }
            Inbound::Unallow(n) => {
                st.cluster_put_many(std::mem::take(&mut puts));
                st.cluster_unallow(&n);
            }
        }
    }
    st.cluster_put_many(puts);
}

/// `cluster status`: this host's link, then etcd asked (off the state lock).
pub async fn status(state: &Arc<Mutex<AgentState>>) -> Response {
    let link = state.lock().ok().and_then(|s| s.cluster_link());
    let Some(link) = link else {
        return Response::err(
            "this agent is not in a fleet: start it with --cluster-endpoints \
             (or a `cluster:` section in the policy)",
        );
    };
    let (cfg, view) = match link.lock() {
        Ok(s) => (s.cfg.clone(), s.view()),
        Err(_) => return Response::err("cluster status lock poisoned"),
    };
    let Some(cfg) = cfg else {
        return Response::err("the fleet link has no settings");
    };
    let report = crate::cluster::query(&cfg, view).await;
    Response::ok(serde_json::json!(report))
}
