//! The decisions the bouncer holds, and what a new stream answer changes.

use std::{collections::BTreeMap, time::Duration};

use ipnet::IpNet;

use super::{Decision, StreamBatch};

/// A ban the bouncer wants, merged over every live decision on its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The prefix.
    pub net: IpNet,
    /// Unix seconds (the latest of its decisions).
    pub expires_at: u64,
    /// The reason of the decision that lasts longest.
    pub reason: String,
}

/// What to change after an incremental pull.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Bans to add or extend.
    pub put: Vec<Wanted>,
    /// Prefixes with no live decision left.
    pub lift: Vec<IpNet>,
}

/// The live decisions, by id and prefix: a prefix stays banned while any
/// of its decisions lives (CrowdSec can hold several for one address, from
/// different scenarios), until the latest of them ends.
#[derive(Debug, Default)]
pub struct Tracker {
    by_net: std::collections::HashMap<IpNet, BTreeMap<i64, (u64, String)>>,
    net_of: std::collections::HashMap<i64, IpNet>,
}

/// `now + ttl`, rounded up, capped at `max_ttl`.
fn expiry(now: u64, ttl: Duration, max_ttl: Duration) -> u64 {
    let secs = ttl.min(max_ttl).as_secs() + u64::from(ttl.subsec_nanos() > 0);
    now.saturating_add(secs.min(max_ttl.as_secs()))
}

impl Tracker {
    /// Prefixes tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_net.len()
    }

    /// True when nothing is tracked.
    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_net.is_empty()
    }

    fn add(&mut self, d: &Decision, now: u64, max_ttl: Duration) {
        self.remove(d.id);
        self.by_net
            .entry(d.net)
            .or_default()
            .insert(d.id, (expiry(now, d.ttl, max_ttl), d.reason()));
        self.net_of.insert(d.id, d.net);
    }

    /// Forgets decision `id`; returns its prefix.
    fn remove(&mut self, id: i64) -> Option<IpNet> {
        let net = self.net_of.remove(&id)?;
        if let Some(ids) = self.by_net.get_mut(&net) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_net.remove(&net);
            }
        }
        Some(net)
    }

    fn wanted(&self, net: &IpNet, now: u64) -> Option<Wanted> {
        self.by_net
            .get(net)?
            .values()
            .filter(|(t, _)| *t > now)
            .max_by_key(|(t, _)| *t)
            .map(|(t, reason)| Wanted {
                net: *net,
                expires_at: *t,
                reason: reason.clone(),
            })
    }

    /// A `startup=true` answer: the whole set, replacing what was tracked.
    /// Returns every ban wanted.
    pub fn reset(&mut self, batch: &StreamBatch, now: u64, max_ttl: Duration) -> Vec<Wanted> {
        *self = Self::default();
        for d in &batch.new {
            self.add(d, now, max_ttl);
        }
        let mut out: Vec<Wanted> = self
            .by_net
            .keys()
            .filter_map(|n| self.wanted(n, now))
            .collect();
        out.sort_by_key(|w| (w.net.addr(), w.net.prefix_len()));
        out
    }

    /// A `startup=false` answer: what changed since the last pull.
    pub fn update(&mut self, batch: &StreamBatch, now: u64, max_ttl: Duration) -> Changes {
        let mut touched = std::collections::BTreeSet::new();
        for d in &batch.new {
            self.add(d, now, max_ttl);
            touched.insert(d.net);
        }
        for d in &batch.deleted {
            // A decision never seen (or filtered out) still lifts its prefix
            // when no live decision holds it.
            self.remove(d.id);
            touched.insert(d.net);
        }
        // Forget decisions whose time is up (the kernel already ignores them).
        let dead: Vec<i64> = self
            .by_net
            .values()
            .flat_map(|ids| {
                ids.iter()
                    .filter(|(_, (t, _))| *t <= now)
                    .map(|(id, _)| *id)
            })
            .collect();
        for id in dead {
            self.remove(id);
        }
        let mut out = Changes::default();
        for net in touched {
            match self.wanted(&net, now) {
                Some(w) => out.put.push(w),
                None => out.lift.push(net),
            }
        }
        out
    }
}
