//! The agent's side of the fleet: the cluster task (publishing and
//! watching etcd, `crate::cluster::run`) and the applier that takes what it
//! reads into the state.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::warn;

use super::state::AgentState;
use crate::{
    cluster::{Change, ClusterConfig, ClusterStatus, Inbound, SharedStatus},
    store::Store,
};

/// What start-up makes before the store is opened and hands on once the
/// state exists.
pub struct Link {
    cfg: ClusterConfig,
    outbox: Option<mpsc::UnboundedReceiver<Change>>,
    /// Shared with the store and the state.
    pub status: SharedStatus,
    tx: mpsc::UnboundedSender<Change>,
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
        }));
        Self {
            cfg,
            outbox: Some(rx),
            status,
            tx,
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

    /// Starts the cluster task and the applier.
    pub fn spawn(mut self, state: &Arc<Mutex<AgentState>>) {
        let Some(outbox) = self.outbox.take() else {
            return;
        };
        if let Ok(mut st) = state.lock() {
            st.set_cluster(Arc::clone(&self.status));
        }
        // Bounded: a slow applier slows the watch, not the memory.
        let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(4096);
        tokio::spawn(crate::cluster::run(
            self.cfg.clone(),
            outbox,
            in_tx,
            Arc::clone(&self.status),
        ));
        let state = Arc::clone(state);
        tokio::spawn(async move {
            while let Some(first) = in_rx.recv().await {
                // Take what else is waiting under the same lock.
                let mut batch = vec![first];
                while batch.len() < 1024
                    && let Ok(more) = in_rx.try_recv()
                {
                    batch.push(more);
                }
                let st = Arc::clone(&state);
                let applied = tokio::task::spawn_blocking(move || {
                    let Ok(mut st) = st.lock() else { return };
                    // Runs of bans go to the kernel and the store together.
                    let mut puts = Vec::new();
                    for change in batch {
                        match change {
                            Inbound::Put(r) => puts.push(r),
                            Inbound::Snapshot { records, since } => {
                                st.cluster_put_many(std::mem::take(&mut puts));
                                st.cluster_snapshot(records, since);
                            }
                            Inbound::Remove(n) => {
                                st.cluster_put_many(std::mem::take(&mut puts));
                                st.cluster_remove(&n);
                            }
                        }
                    }
                    st.cluster_put_many(puts);
                })
                .await;
                if let Err(e) = applied {
                    warn!("the fleet applier failed: {e}");
                }
            }
        });
    }
}
