//! Fleet-wide bans through etcd.
//!
//! [`ClusterStore`] sits behind the store seam: it writes through to the
//! embedded store and queues every local ban and unban for the fleet (ban
//! records with no `host`: the ones this host decided). [`run`] publishes
//! that queue to etcd in small transactions and watches the fleet's prefix;
//! what it reads is checked ([`decode`]) and handed to the agent as
//! [`Inbound`] changes. Enforcement never waits on etcd: a host cut off
//! keeps what its kernel maps hold, queues its own changes and resyncs
//! (a full read, then a watch from that revision) when etcd is back.
//!
//! Keys: `/tollgate/<fleet>/bans/<cidr>`, values the [`BanRecord`] JSON:
//! every host's decisions on the prefix, each with its `host`. A host only
//! ever rewrites its own decisions in a record ([`fold`], compare-and-swap
//! on the key's revision), so concurrent writers never drop each other's.
//! An operator's unban is explicit: it deletes the key and writes a
//! tombstone, `/tollgate/<fleet>/bans/lifted/<cidr>` ([`Lifted`]: when and
//! by whom), in one transaction. A key that is merely gone (deleted by
//! hand, an etcd wipe, a restore from an old snapshot) lifts no host's own
//! decisions: the other hosts drop their copies, and each owner publishes
//! its own again. Expiry is each decision's absolute `expires_at`; etcd
//! leases, shared per minute of expiry, only collect the keys of expired
//! bans and old tombstones.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    clock,
    net::check_breadth,
    policy::{ClusterSpec, ClusterTls},
    store::{AllowRecord, BanRecord, Decision, LimitsRecord, OffenceRecord, Store, StoreError},
};

/// Everything the cluster task needs, resolved from the policy and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The fleet's name.
    pub fleet: String,
    /// This host's name in the fleet.
    pub host_id: String,
    /// mTLS files.
    pub tls: Option<ClusterTls>,
    /// Bans shared per minute at most.
    pub per_minute: u32,
    /// Longest TTL of a ban received from the fleet, seconds.
    pub max_remote_ttl: u64,
    /// Seconds between two checks of the kernel maps.
    pub reconcile_secs: u64,
}

impl ClusterConfig {
    /// From the policy section, with `host_id` defaulting to `hostname`.
    #[must_use]
    pub fn from_spec(spec: &ClusterSpec, hostname: &str) -> Self {
        Self {
            endpoints: spec.endpoints.clone(),
            fleet: spec
                .fleet
                .clone()
                .unwrap_or_else(|| crate::policy::DEFAULT_FLEET.into()),
            host_id: spec.host_id.clone().unwrap_or_else(|| hostname.into()),
            tls: spec.tls.clone(),
            per_minute: spec
                .max_shared_bans_per_minute
                .unwrap_or(crate::policy::DEFAULT_SHARED_PER_MINUTE),
            max_remote_ttl: spec
                .max_remote_ttl_secs
                .unwrap_or(crate::policy::DEFAULT_REMOTE_TTL),
            reconcile_secs: spec
                .reconcile_secs
                .unwrap_or(crate::policy::DEFAULT_RECONCILE_SECS),
        }
    }

    /// `/tollgate/<fleet>/bans/`.
    #[must_use]
    pub fn ban_prefix(&self) -> String {
        format!("/tollgate/{}/bans/", self.fleet)
    }

    /// `/tollgate/<fleet>/allow/`: the fleet's allowlist.
    #[must_use]
    pub fn allow_prefix(&self) -> String {
        format!("/tollgate/{}/allow/", self.fleet)
    }

    /// `/tollgate/<fleet>/hosts/`: each host's last report of itself.
    #[must_use]
    pub fn host_prefix(&self) -> String {
        format!("/tollgate/{}/hosts/", self.fleet)
    }
}

/// A local change on its way to the fleet (kept in the local store's
/// outbox as this JSON until etcd has it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// This host's decisions on the prefix are now the record's own ones
    /// (those with no `host`; none: it withdraws its decisions, the other
    /// hosts' stay).
    Put(BanRecord),
    /// An operator's unban made here: the prefix is lifted on every host.
    Remove(IpNet),
    /// This host withdraws its decisions on the prefix (a feed dropped
    /// it, its origin was removed); the other hosts' stay.
    Withdraw(IpNet),
    /// An allow entry made here, for the fleet's allowlist.
    Allow(AllowRecord),
    /// An allow entry removed here.
    Unallow(IpNet),
}

impl Change {
    /// The prefix it changes.
    #[must_use]
    pub fn cidr(&self) -> IpNet {
        match self {
            Self::Put(r) => r.cidr,
            Self::Allow(a) => a.cidr,
            Self::Remove(c) | Self::Withdraw(c) | Self::Unallow(c) => *c,
        }
    }

    /// Whether it changes a ban (not the allowlist).
    #[must_use]
    pub fn is_ban(&self) -> bool {
        !matches!(self, Self::Allow(_) | Self::Unallow(_))
    }
}

/// An allow entry as the fleet shares it, under `/tollgate/<fleet>/allow/`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedAllow {
    /// The entry as the writing host holds it.
    #[serde(flatten)]
    pub rec: AllowRecord,
    /// The host that wrote it.
    pub host: String,
}

/// The origin a fleet allow entry gets here: `fleet:<host>` (what tells it
/// apart from this host's own entries, and what `allow ls` shows).
#[must_use]
pub fn fleet_origin(host: &str) -> String {
    format!("{FLEET_ALLOW}{host}")
}

/// How fleet allow entries' origins start.
pub const FLEET_ALLOW: &str = "fleet:";

/// A change read from the fleet, checked, for the agent to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A full read of the shared set at a revision begins (start,
    /// reconnect, lost watch); its records follow in [`Inbound::SnapshotPage`]s
    /// and [`Inbound::SnapshotEnd`] closes it. Everything this host queued
    /// before it is in it, except what is still in the outbox and what the
    /// per-minute cap kept here (`capped`).
    SnapshotStart {
        /// The operators' unbans etcd remembers ([`Lifted`]): prefix and
        /// the last Unix millisecond each lifts ([`Lifted::bound_ms`]), read
        /// before the records. Only these lift this host's own decisions
        /// that etcd lacks (made at or before then); the others are
        /// published again.
        lifted: Vec<(IpNet, u64)>,
        /// Prefixes the per-minute cap (or a prefix too wide to share) kept
        /// local: this host's own decisions on them stay.
        capped: Vec<IpNet>,
    },
    /// Valid records of the full read, one page of it, applied as they
    /// come: each is laid over what this host holds (nothing is lifted for
    /// being absent before [`Inbound::SnapshotEnd`]).
    SnapshotPage(Vec<BanRecord>),
    /// The full read is complete: what this host held that it did not
    /// bring is settled now.
    SnapshotEnd {
        /// Prefixes whose record was unreadable in etcd (skipped) or past
        /// the read's cap: this host's own decisions on them stay.
        unread: Vec<IpNet>,
    },
    /// Records written to the fleet (each with the decisions of every host
    /// on its prefix), in watch order with nothing else between them: a
    /// watch response's run of puts, applied in one kernel batch and one
    /// store transaction (one message, so that the applier, waking at the
    /// first, does not split it in two).
    Puts(Vec<BanRecord>),
    /// A record's key is gone without an unban (deleted by hand, an etcd
    /// wipe, its lease after every decision ended, the last decision
    /// withdrawn): the other hosts' decisions go, this host's own stay and
    /// are published again.
    Gone(IpNet),
    /// The fleet's allowlist at a revision (with every snapshot).
    Allows(Vec<AllowRecord>),
    /// An allow entry added to the fleet's allowlist (origin `fleet:<host>`).
    Allow(AllowRecord),
    /// An allow entry removed from the fleet's allowlist.
    Unallow(IpNet),
    /// An operator's unban from anywhere (a tombstone written): it lifts
    /// the decisions made at or before it ([`Lifted::bound_ms`]).
    Remove(Lifted),
    /// etcd holds every queued change up to this sequence number: the
    /// store may drop them from its outbox.
    Acked(u64),
}

/// A queued change and its outbox sequence number.
pub type Queued = (u64, Change);

/// What `status` and the metrics show of the cluster, kept up to date by
/// the cluster task, the store and the applier.
#[derive(Clone, Debug, Default)]
pub struct ClusterStatus {
    /// Everything but the staleness, which [`Self::view`] works out.
    pub view: crate::proto::ClusterView,
    /// Unix seconds of the last exchange with etcd (0 = never).
    pub last_sync: u64,
    /// Bans this host held at the last drift check.
    pub bans: u64,
    /// The settings, for `cluster status` (which asks etcd itself).
    pub cfg: Option<ClusterConfig>,
}

impl ClusterStatus {
    /// As `status` shows it.
    #[must_use]
    pub fn view(&self) -> crate::proto::ClusterView {
        let mut v = self.view.clone();
        v.staleness_secs =
            (self.last_sync > 0).then(|| clock::unix_now().saturating_sub(self.last_sync));
        if v.connected {
            v.last_error = None;
        }
        v
    }
}

/// The status, shared by the cluster task, the store and the agent.
pub type SharedStatus = Arc<Mutex<ClusterStatus>>;

fn with_status(s: &SharedStatus, f: impl FnOnce(&mut ClusterStatus)) {
    if let Ok(mut g) = s.lock() {
        f(&mut g);
    }
}

/// The store seam with the fleet behind it: writes go to `inner`, and local
/// bans and unbans are queued for etcd.
pub struct ClusterStore {
    inner: Box<dyn Store>,
    outbox: mpsc::UnboundedSender<Queued>,
    status: SharedStatus,
    /// The next outbox sequence number.
    seq: u64,
}

impl ClusterStore {
    /// Wraps `inner`; changes go to `outbox` (read by [`run`]), the ones
    /// `inner` still holds from before a restart first.
    #[must_use]
    pub fn new(
        inner: Box<dyn Store>,
        outbox: mpsc::UnboundedSender<Queued>,
        status: SharedStatus,
    ) -> Self {
        let mut s = Self {
            inner,
            outbox,
            status,
            seq: 1,
        };
        let kept = match s.inner.outbox() {
            Ok(k) => k,
            Err(e) => {
                warn!(
                    "cannot read the fleet outbox: {e}; changes queued before the restart stay unpublished"
                );
                Vec::new()
            }
        };
        let mut back = Vec::with_capacity(kept.len());
        let mut joined = false;
        for (seq, bytes) in kept {
            if seq == JOINED {
                joined = true;
                continue;
            }
            s.seq = s.seq.max(seq + 1);
            match serde_json::from_slice::<Change>(&bytes) {
                Ok(c) => back.push((seq, c)),
                Err(e) => warn!(seq, "skipped an unreadable fleet outbox entry: {e}"),
            }
        }
        if !back.is_empty() {
            info!(
                changes = back.len(),
                "publishing fleet changes queued before the restart"
            );
        }
        s.send(back);
        if !joined {
            s.join();
        }
        s
    }

    /// The first start of this store in a fleet: its own bans were never
    /// queued, so they are queued now (with the marker, in one
    /// transaction). Later, a ban of its own that etcd lacks and the outbox
    /// does not hold was lifted by the fleet (see `cluster_snapshot`).
    fn join(&mut self) {
        let own: Vec<BanRecord> = match self.inner.bans() {
            Ok(b) => b
                .into_iter()
                .filter(|r| r.any_decision(|d| d.host.is_none()))
                .collect(),
            Err(e) => {
                warn!("cannot read this host's bans to share them with the fleet: {e}");
                return;
            }
        };
        let (q, mut rows) = self.number(own.into_iter().map(Change::Put));
        rows.push((JOINED, b"joined".to_vec()));
        if let Err(e) = self.inner.apply_bans_queued(&[], &[], &rows) {
            warn!("cannot queue this host's bans for the fleet: {e}");
            return;
        }
        if !q.is_empty() {
            info!(
                bans = q.len(),
                "sharing this host's bans with the fleet it joins"
            );
        }
        self.send(q);
    }

    /// Numbers `changes` and encodes them for the outbox table.
    fn number(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> (Vec<Queued>, Vec<(u64, Vec<u8>)>) {
        let mut q = Vec::new();
        let mut rows = Vec::new();
        for c in changes {
            let seq = self.seq;
            self.seq += 1;
            if let Ok(v) = serde_json::to_vec(&c) {
                rows.push((seq, v));
            }
            q.push((seq, c));
        }
        (q, rows)
    }

    fn send(&self, changes: Vec<Queued>) {
        if changes.is_empty() {
            return;
        }
        // Counted before they are sent: the publisher may take, publish and
        // uncount them before this thread runs again, and a count added
        // after that (the subtraction saturates at 0) stayed for good.
        let n = changes.len() as u64;
        with_status(&self.status, |s| s.view.outbox += n);
        let mut closed = 0;
        for c in changes {
            // A closed outbox means the cluster task is gone (shutdown): the
            // local write (and its outbox entry) stands either way.
            if self.outbox.send(c).is_err() {
                closed += 1;
            }
        }
        if closed > 0 {
            with_status(&self.status, |s| {
                s.view.outbox = s.view.outbox.saturating_sub(closed);
            });
        }
    }

    /// Writes the bans and their outbox entries in one transaction, then
    /// hands the changes to the cluster task.
    fn write_shared(
        &mut self,
        put: &[BanRecord],
        remove: &[IpNet],
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let (q, rows) = self.number(changes);
        // Handed to the cluster task before the fsync, so publishing does not
        // wait for the local disk: the caller is answered only after the
        // write below, and an acknowledgement of these changes reaches the
        // store through the agent's state, which this write holds. Shared
        // even when the write fails: the kernel enforces them.
        self.send(q);
        timing!("outbox_sent");
        let r = self.inner.apply_bans_queued(put, remove, &rows);
        timing!("store_written");
        r
    }
}

impl ClusterStore {
    /// Writes an allowlist change with its row in the durable outbox, in
    /// one transaction (published after a restart when etcd was away: an
    /// acknowledged entry is never local only), then for the cluster task.
    fn queue_allow(&mut self, change: Change) -> Result<(), StoreError> {
        let (put, remove) = match &change {
            Change::Allow(a) => (Some(a.clone()), None),
            c => (None, Some(c.cidr())),
        };
        let (q, rows) = self.number([change]);
        self.inner
            .apply_allow_queued(put.as_ref(), remove.as_ref(), &rows)?;
        self.send(q);
        Ok(())
    }
}

/// The outbox row that says this store has joined a fleet (never
/// acknowledged: acknowledgements stop below it).
const JOINED: u64 = u64::MAX;

impl Store for ClusterStore {
    fn put_bans(&mut self, records: &[BanRecord]) -> Result<(), StoreError> {
        let changes = records.iter().map(|r| Change::Put(r.clone())).collect();
        self.write_shared(records, &[], changes)
    }
    fn remove_bans(&mut self, cidrs: &[IpNet]) -> Result<(), StoreError> {
        let changes = cidrs.iter().map(|c| Change::Remove(*c)).collect();
        self.write_shared(&[], cidrs, changes)
    }
    fn forget_bans(&mut self, cidrs: &[IpNet]) -> Result<(), StoreError> {
        self.inner.remove_bans(cidrs)
    }
    fn keep_bans(&mut self, records: &[BanRecord]) -> Result<(), StoreError> {
        self.inner.apply_bans(records, &[])
    }
    fn keep_fleet(
        &mut self,
        records: &[BanRecord],
        offences: &[(IpNet, OffenceRecord)],
    ) -> Result<(), StoreError> {
        self.inner.keep_fleet(records, offences)
    }
    fn bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        self.inner.bans()
    }
    fn ban_batches(
        &self,
        batch: usize,
        f: &mut dyn FnMut(Vec<BanRecord>),
    ) -> Result<(), StoreError> {
        self.inner.ban_batches(batch, f)
    }
    fn ban_stream(
        &self,
        batch: usize,
        f: &mut dyn FnMut(crate::store::BanStream<'_>),
    ) -> Result<(), StoreError> {
        self.inner.ban_stream(batch, f)
    }
    /// A group change (a feed import, a removal by origin): what leaves the
    /// group is withdrawn, not lifted fleet-wide.
    fn apply_bans(&mut self, put: &[BanRecord], remove: &[IpNet]) -> Result<(), StoreError> {
        let changes = put
            .iter()
            .map(|r| Change::Put(r.clone()))
            .chain(remove.iter().map(|c| Change::Withdraw(*c)))
            .collect();
        self.write_shared(put, remove, changes)
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.outbox()
    }
    fn outbox_ack(&mut self, upto: u64) -> Result<(), StoreError> {
        self.inner.outbox_ack(upto)
    }
    fn put_allow(&mut self, record: &AllowRecord) -> Result<(), StoreError> {
        self.queue_allow(Change::Allow(record.clone()))
    }
    fn remove_allow(&mut self, cidr: &IpNet) -> Result<(), StoreError> {
        self.queue_allow(Change::Unallow(*cidr))
    }
    fn keep_allow(&mut self, record: &AllowRecord) -> Result<(), StoreError> {
        self.inner.put_allow(record)
    }
    fn forget_allow(&mut self, cidr: &IpNet) -> Result<(), StoreError> {
        self.inner.remove_allow(cidr)
    }
    fn allows(&self) -> Result<Vec<AllowRecord>, StoreError> {
        self.inner.allows()
    }
    fn put_limits(&mut self, record: &LimitsRecord) -> Result<(), StoreError> {
        self.inner.put_limits(record)
    }
    fn limits(&self) -> Result<Option<LimitsRecord>, StoreError> {
        self.inner.limits()
    }
    fn put_offence(&mut self, cidr: &IpNet, record: &OffenceRecord) -> Result<(), StoreError> {
        self.inner.put_offence(cidr, record)
    }
    fn put_offences(&mut self, batch: &[(IpNet, OffenceRecord)]) -> Result<(), StoreError> {
        self.inner.put_offences(batch)
    }
    fn offences(&self) -> Result<Vec<(IpNet, OffenceRecord)>, StoreError> {
        self.inner.offences()
    }
    fn health(&self) -> Option<String> {
        self.inner.health()
    }
    fn failures(&self) -> u64 {
        self.inner.failures()
    }
    fn retry(&mut self) -> bool {
        self.inner.retry()
    }
}

/// Longest origin of a shared decision, in bytes. One set of limits for
/// the writer ([`fold`] cuts this host's decisions to fit, [`shared`]) and
/// every reader ([`check_decision`] refuses what exceeds them): a record one
/// host writes is never one the others skip. A local origin may be longer
/// ([`crate::proto::MAX_ORIGIN_LEN`] characters, and the policy engine's
/// `agent (<route> on port N)` has no bound): the fleet sees it cut.
pub const MAX_ORIGIN_BYTES: usize = 128;

/// Most decisions one record may carry (one per host and origin); the
/// writer keeps its own and the strongest of the others' within it.
pub const MAX_DECISIONS: usize = 256;

/// `s` with control characters replaced and cut on a character boundary
/// to `bytes` bytes and `chars` characters.
fn fit(s: &str, bytes: usize, chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(bytes));
    for c in s.chars().take(chars) {
        if out.len() + c.len_utf8() > bytes {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// An origin as the fleet carries it (what [`shared`] makes of it).
#[must_use]
pub fn shared_origin(origin: &str) -> String {
    fit(origin, MAX_ORIGIN_BYTES, usize::MAX)
}

/// This host's decision as the fleet carries it: origin and reason cut to
/// what every reader takes. The second value: whether it was cut.
#[must_use]
pub fn shared(d: Decision) -> (Decision, bool) {
    let origin = shared_origin(&d.origin);
    let reason = fit(&d.reason, usize::MAX, crate::proto::MAX_REASON_LEN);
    let cut = origin != d.origin || reason != d.reason;
    (
        Decision {
            origin,
            reason,
            ..d
        },
        cut,
    )
}

/// Whether the fleet takes a ban on `cidr` at all (a forced local ban may
/// be wider than any reader accepts: it stays on this host).
#[must_use]
pub fn shareable(cidr: IpNet) -> bool {
    check_breadth(cidr, false).is_ok() && cidr == cidr.trunc()
}

/// Checks one decision of a record read under `key`.
fn check_decision(key: &str, d: &Decision) -> Result<(), String> {
    match d.host.as_deref() {
        None => return Err(format!("{key}: no deciding host")),
        Some(h) => {
            if let Some(m) = crate::policy::check_name(h) {
                return Err(format!("{key}: host {m}"));
            }
        }
    }
    crate::proto::check_reason(Some(&d.reason)).map_err(|e| format!("{key}: {e}"))?;
    if d.origin.len() > MAX_ORIGIN_BYTES || d.origin.chars().any(char::is_control) {
        return Err(format!("{key}: bad origin"));
    }
    Ok(())
}

/// Checks one record read from etcd under `key`; the record (every
/// decision with its `host`, their expiries cut to `max_ttl` from `now`,
/// the ended ones dropped) or why it is skipped. A record whose decisions
/// have all ended is skipped too (`Ok(None)`).
///
/// # Errors
/// When the record is malformed or hostile.
pub fn decode(
    prefix: &str,
    key: &[u8],
    value: &[u8],
    now: u64,
    max_ttl: u64,
) -> Result<Option<BanRecord>, String> {
    parse(prefix, key, value, now, Some(max_ttl))
}

/// [`decode`], with no cap on expiries when `max_ttl` is `None`.
fn parse(
    prefix: &str,
    key: &[u8],
    value: &[u8],
    now: u64,
    max_ttl: Option<u64>,
) -> Result<Option<BanRecord>, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    let cidr = key
        .strip_prefix(prefix)
        .ok_or_else(|| format!("key {key} is outside {prefix}"))?;
    let mut rec: BanRecord =
        serde_json::from_slice(value).map_err(|e| format!("{key}: not a ban record: {e}"))?;
    if rec.cidr.to_string() != cidr || rec.cidr != rec.cidr.trunc() {
        return Err(format!("{key}: the record is for {}", rec.cidr));
    }
    check_breadth(rec.cidr, false).map_err(|e| format!("{key}: {e}"))?;
    if rec.also.len() + 1 > MAX_DECISIONS {
        return Err(format!("{key}: {} decisions", rec.also.len() + 1));
    }
    // Records of agents that labelled only the leading decision: the others
    // were the writer's.
    let writer = rec.host.clone();
    for d in &mut rec.also {
        if d.host.is_none() {
            d.host.clone_from(&writer);
        }
    }
    let mut live = Vec::with_capacity(rec.also.len() + 1);
    for mut d in rec.decisions() {
        check_decision(key, &d)?;
        // Milliseconds outside their second say nothing (as if absent).
        d.created_at_ms = crate::store::exact_ms(d.created_at, d.created_at_ms);
        if d.expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        if let Some(cap) = max_ttl.map(|t| now.saturating_add(t))
            && d.expires_at.is_none_or(|t| t > cap)
        {
            d.expires_at = Some(cap);
        }
        live.push(d);
    }
    Ok(BanRecord::from_decisions(rec.cidr, rec.offences, live))
}

/// The record etcd should hold for a prefix once this host (`me`) has
/// changed its decisions to `mine`'s own ones (those with no host; `None`
/// withdraws them all): the other hosts' decisions in `current` stay, this
/// host's are replaced, ended ones dropped, the higher offence count kept.
/// The record keeps within the limits every reader checks: this host's
/// decisions are cut to fit ([`shared`]), and past [`MAX_DECISIONS`] the
/// weakest of the others' are left out. `None`: no decision is left (the
/// key goes). The second value: decisions cut or left out.
#[must_use]
pub fn fold(
    current: Option<&BanRecord>,
    me: &str,
    cidr: IpNet,
    mine: Option<&BanRecord>,
    now: u64,
) -> (Option<BanRecord>, u64) {
    let live = |d: &Decision| d.expires_at.is_none_or(|t| t > now);
    let mut cut = 0;
    let mut own: Vec<Decision> = mine
        .into_iter()
        .flat_map(|m| m.decisions())
        .filter(|d| d.host.is_none() && live(d))
        .map(|d| {
            let (d, c) = shared(d);
            cut += u64::from(c);
            Decision {
                host: Some(me.to_owned()),
                ..d
            }
        })
        .collect();
    let mut others: Vec<Decision> = current
        .into_iter()
        .flat_map(|c| c.decisions())
        .filter(|d| d.host.as_deref() != Some(me) && live(d))
        .collect();
    if own.len() + others.len() > MAX_DECISIONS {
        // The strongest first (no expiry, then the latest).
        let strength = |d: &Decision| std::cmp::Reverse(d.expires_at.unwrap_or(u64::MAX));
        own.sort_by_key(strength);
        others.sort_by_key(strength);
        let before = own.len() + others.len();
        own.truncate(MAX_DECISIONS);
        others.truncate(MAX_DECISIONS - own.len());
        cut += (before - own.len() - others.len()) as u64;
    }
    let offences = mine
        .map_or(0, |m| m.offences)
        .max(current.map_or(0, |c| c.offences));
    own.append(&mut others);
    (BanRecord::from_decisions(cidr, offences, own), cut)
}

/// A record as etcd holds it, read leniently for [`fold`]: the other hosts'
/// decisions are written back as they were, except that none may outlast
/// the longest ban any host makes ([`crate::proto::MAX_TTL`]): a hostile
/// expiry would otherwise ask etcd for a lease it refuses and stall this
/// host's publishing. Unreadable or hostile: treated as absent, so this
/// host's write replaces it.
fn current(prefix: &str, key: &[u8], value: &[u8]) -> Option<BanRecord> {
    let max = crate::proto::MAX_TTL.as_secs();
    parse(prefix, key, value, clock::unix_now(), Some(max))
        .ok()
        .flatten()
}

/// etcd's longest lease (seconds).
const MAX_LEASE_TTL: u64 = 9_000_000_000;

/// The lease bucket of an expiry: the end of its minute.
fn bucket(expires_at: u64) -> u64 {
    expires_at.div_ceil(60).saturating_mul(60)
}

/// Publishing state kept across connections.
struct Publisher {
    pending: VecDeque<Queued>,
    /// Highest sequence number taken from the queue.
    taken: u64,
    /// Highest sequence number reported as acknowledged.
    acked: u64,
    /// Lease per expiry bucket.
    leases: HashMap<u64, i64>,
    /// (minute, bans shared in it) for the per-minute cap.
    window: (u64, u32),
    /// This host's bans the cap kept from the fleet (they stay enforced
    /// here: a full read must not lift them).
    capped: HashSet<IpNet>,
}

/// Where tombstones live under the ban prefix (`bans/lifted/<cidr>`): in
/// the same range as the records, so one watch delivers an unban's
/// tombstone and the record's deletion in order.
pub const LIFTED: &str = "lifted/";

/// How long etcd keeps a tombstone (its lease): a host down longer than
/// this and holding its own ban lifted meanwhile publishes it again.
pub const TOMBSTONE_TTL: u64 = 30 * 24 * 3600;

/// An operator's unban as the fleet remembers it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lifted {
    /// The prefix lifted.
    pub cidr: IpNet,
    /// Unix seconds: every decision made at or before then is lifted.
    pub lifted_at: u64,
    /// The same instant in Unix milliseconds (absent from the tombstones of
    /// agents that predate it). With it, a decision that also has its
    /// milliseconds is lifted only if made at or before that millisecond: a
    /// ban made the same second, after the unban, stays. Without either,
    /// the whole second counts, as before ([`Self::bound_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at_ms: Option<u64>,
    /// The host whose operator lifted it.
    pub host: String,
}

impl Lifted {
    /// The last Unix millisecond whose decisions it lifts:
    /// `lifted_at_ms` when it falls in the second `lifted_at` says, else
    /// the end of that second (a decision made at or before it, compared by
    /// [`Decision::created_ms`], is lifted: with both in milliseconds the
    /// exact order decides; with either in whole seconds, the second does,
    /// as it did before milliseconds were written).
    #[must_use]
    pub fn bound_ms(&self) -> u64 {
        crate::store::exact_ms(self.lifted_at, self.lifted_at_ms)
            .unwrap_or_else(|| self.lifted_at.saturating_mul(1000).saturating_add(999))
    }
}

/// What a key under the ban prefix holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A record (`None`: every decision in it has ended).
    Record(Option<BanRecord>),
    /// A tombstone.
    Lifted(Lifted),
}

/// Checks a tombstone read under `key` (relative to the ban prefix, its
/// `lifted/` stripped).
fn decode_lifted(key: &str, cidr: &str, value: &[u8], now: u64) -> Result<Lifted, String> {
    let l: Lifted =
        serde_json::from_slice(value).map_err(|e| format!("{key}: not a tombstone: {e}"))?;
    if l.cidr.to_string() != cidr || l.cidr != l.cidr.trunc() {
        return Err(format!("{key}: the tombstone is for {}", l.cidr));
    }
    check_breadth(l.cidr, false).map_err(|e| format!("{key}: {e}"))?;
    if let Some(m) = crate::policy::check_name(&l.host) {
        return Err(format!("{key}: host {m}"));
    }
    // One from the future would lift bans made after it.
    if l.lifted_at > now.saturating_add(60) {
        return Err(format!("{key}: lifted in the future ({})", l.lifted_at));
    }
    // Milliseconds outside their second say nothing (as if absent).
    let lifted_at_ms = crate::store::exact_ms(l.lifted_at, l.lifted_at_ms);
    Ok(Lifted { lifted_at_ms, ..l })
}

/// Checks one key and value read under the ban prefix: a record
/// ([`decode`]) or a tombstone.
///
/// # Errors
/// When it is malformed or hostile.
pub fn decode_entry(
    prefix: &str,
    key: &[u8],
    value: &[u8],
    now: u64,
    max_ttl: u64,
) -> Result<Entry, String> {
    let k = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    match k
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(LIFTED))
    {
        Some(cidr) => decode_lifted(k, cidr, value, now).map(Entry::Lifted),
        None => decode(prefix, key, value, now, max_ttl).map(Entry::Record),
    }
}

/// The prefix a key under the ban prefix names (a record's or a
/// tombstone's).
fn key_cidr(prefix: &str, key: &[u8]) -> Option<(IpNet, bool)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    match rest.strip_prefix(LIFTED) {
        Some(c) => c.parse().ok().map(|c| (c, true)),
        None => rest.parse().ok().map(|c| (c, false)),
    }
}

/// Checks one allow entry read from etcd under `key`: the entry (origin
/// `fleet:<host>`) or why it is skipped (malformed, wider than a ban may
/// be).
///
/// # Errors
/// When the entry is malformed or hostile.
pub fn decode_allow(prefix: &str, key: &[u8], value: &[u8]) -> Result<AllowRecord, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    let cidr = key
        .strip_prefix(prefix)
        .ok_or_else(|| format!("key {key} is outside {prefix}"))?;
    let a: SharedAllow =
        serde_json::from_slice(value).map_err(|e| format!("{key}: not an allow entry: {e}"))?;
    if a.rec.cidr.to_string() != cidr || a.rec.cidr != a.rec.cidr.trunc() {
        return Err(format!("{key}: the entry is for {}", a.rec.cidr));
    }
    check_breadth(a.rec.cidr, false).map_err(|e| format!("{key}: {e}"))?;
    if let Some(m) = crate::policy::check_name(&a.host) {
        return Err(format!("{key}: host {m}"));
    }
    crate::proto::check_reason(Some(&a.rec.reason)).map_err(|e| format!("{key}: {e}"))?;
    Ok(AllowRecord {
        origin: fleet_origin(&a.host),
        ..a.rec
    })
}

/// Most operations in one etcd transaction (etcd's default limit is 128).
const TXN_OPS: usize = 100;

/// Operations a change costs in its transaction at most: an unban writes
/// its tombstone and deletes the record.
fn ops(c: &Change) -> usize {
    match c {
        Change::Remove(_) => 2,
        _ => 1,
    }
}

/// How many of the first `pending` changes fit in `limit` operations (at
/// least one: a single change never exceeds etcd's limit).
fn batch_len<'a>(pending: impl IntoIterator<Item = &'a Change>, limit: usize) -> usize {
    let mut used = 0;
    let mut n = 0;
    for c in pending {
        used += ops(c);
        if used > limit && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// etcd refused the transaction for its size (its --max-txn-ops or
/// --max-request-bytes is below this host's batch, or gRPC's message limit
/// is): a smaller batch goes through, the same one never.
fn too_big(e: &anyhow::Error) -> bool {
    let e = format!("{e:#}");
    [
        "too many operations in txn request",
        "request is too large",
        "message larger than max",
    ]
    .iter()
    .any(|m| e.contains(m))
}

impl Publisher {
    /// Takes what the agent queued; bans over the per-minute cap stay local.
    fn take(&mut self, cfg: &ClusterConfig, status: &SharedStatus, (seq, change): Queued) {
        self.taken = self.taken.max(seq);
        if let Change::Put(r) = &change
            && !shareable(r.cidr)
        {
            // Every reader would skip it: it stays on this host, as one the
            // cap kept (a full read does not lift it).
            warn!(cidr = %r.cidr, "ban not shared: the fleet takes no prefix this wide (it stays enforced here)");
            with_status(status, |s| {
                s.view.unshared += 1;
                s.view.outbox = s.view.outbox.saturating_sub(1);
            });
            self.capped.insert(r.cidr);
            return;
        }
        if let Change::Put(r) = &change {
            let minute = clock::unix_now() / 60;
            if self.window.0 != minute {
                self.window = (minute, 0);
            }
            if self.window.1 >= cfg.per_minute {
                // Once per minute: a feed import can hit the cap by thousands.
                if self.window.1 == cfg.per_minute {
                    warn!(cidr = %r.cidr, cap = cfg.per_minute, "bans not shared for the rest of this minute: this host's per-minute cap is reached (they stay enforced here)");
                    self.window.1 += 1;
                }
                with_status(status, |s| {
                    s.view.rate_limited += 1;
                    s.view.outbox = s.view.outbox.saturating_sub(1);
                });
                self.capped.insert(r.cidr);
                return;
            }
            self.window.1 += 1;
        } else if change.is_ban() {
            self.capped.remove(&change.cidr());
        }
        self.pending.push_back((seq, change));
    }

    /// Everything taken up to here is in etcd (or was kept local by the
    /// cap): the sequence number to acknowledge, when it moved.
    fn ack(&mut self) -> Option<u64> {
        let upto = self
            .pending
            .front()
            .map_or(self.taken, |(s, _)| s.saturating_sub(1));
        (upto > self.acked).then(|| {
            self.acked = upto;
            upto
        })
    }

    async fn lease(&mut self, client: &mut Client, expires_at: u64) -> anyhow::Result<i64> {
        let now = clock::unix_now();
        let b = bucket(expires_at);
        self.leases.retain(|k, _| *k > now);
        if let Some(id) = self.leases.get(&b) {
            return Ok(*id);
        }
        // Rounded up a minute past the bucket: a key never dies before its ban.
        let ttl = b.saturating_sub(now).saturating_add(60).min(MAX_LEASE_TTL);
        let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
        timing!("lease_grant");
        let id = client.lease_grant(ttl, None).await?.id();
        timing!("lease_granted");
        self.leases.insert(b, id);
        Ok(id)
    }

    /// Writes the pending changes, a transaction at a time; what fails
    /// stays pending.
    async fn flush(
        &mut self,
        client: &mut Client,
        cfg: &ClusterConfig,
        status: &SharedStatus,
    ) -> anyhow::Result<()> {
        let mut limit = TXN_OPS;
        while !self.pending.is_empty() {
            let n = batch_len(self.pending.iter().map(|(_, c)| c), limit);
            let batch: Vec<Change> = self
                .pending
                .iter()
                .take(n)
                .map(|(_, c)| c.clone())
                .collect();
            let puts = match self.write(client, cfg, status, &batch).await {
                Ok(p) => p,
                Err(e) if n > 1 && too_big(&e) => {
                    warn!(
                        changes = n,
                        "etcd refused a transaction this large (its --max-txn-ops or --max-request-bytes); splitting it"
                    );
                    limit = (batch.iter().map(ops).sum::<usize>() / 2).max(1);
                    continue;
                }
                Err(e) if too_big(&e) => {
                    // One change alone is more than this etcd takes: sent
                    // again it would be refused again, and hold every later
                    // change back for good. It stays on this host only.
                    error!(
                        cidr = %batch.first().map_or_else(String::new, |c| c.cidr().to_string()),
                        "etcd refuses even this one change ({e:#}); it stays on this host, unshared (raise etcd's --max-txn-ops / --max-request-bytes)"
                    );
                    self.pending.pop_front();
                    with_status(status, |s| {
                        s.view.outbox = s.view.outbox.saturating_sub(1);
                        s.view.unshared += 1;
                    });
                    continue;
                }
                Err(e) => {
                    // A lease that expired or vanished with etcd's data fails
                    // the whole transaction: grant fresh ones next time.
                    self.leases.clear();
                    return Err(e);
                }
            };
            self.pending.drain(..n);
            for c in batch.iter().filter(|c| c.is_ban()) {
                self.capped.remove(&c.cidr());
            }
            with_status(status, |s| {
                s.view.outbox = s.view.outbox.saturating_sub(n as u64);
                s.view.published += puts;
                s.last_sync = clock::unix_now();
            });
        }
        Ok(())
    }

    /// Writes the batch's allow entries (before its bans, in their own
    /// transaction). Where this host's credentials may not write the
    /// fleet's allowlist (production: only the operator role may), they
    /// stay local and the bans go on.
    async fn write_allows(
        &mut self,
        client: &mut Client,
        cfg: &ClusterConfig,
        batch: &[Change],
    ) -> anyhow::Result<()> {
        let prefix = cfg.allow_prefix();
        let mut ops = Vec::new();
        for c in batch {
            match c {
                Change::Allow(a) => {
                    let v = serde_json::to_vec(&SharedAllow {
                        rec: a.clone(),
                        host: cfg.host_id.clone(),
                    })?;
                    ops.push(TxnOp::put(format!("{prefix}{}", a.cidr), v, None));
                }
                Change::Unallow(n) => ops.push(TxnOp::delete(format!("{prefix}{n}"), None)),
                _ => {}
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        timing!("allow_txn");
        match client.txn(Txn::new().and_then(ops)).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("permission denied") => {
                warn!(
                    "allow entries not shared: this host may not write {prefix} (the operator role writes the fleet's allowlist); they stay on this host"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one batch in one transaction: per prefix, this host's last
    /// word laid over what etcd holds ([`fold`]), under a compare on each
    /// key's revision so that another host's concurrent write is never
    /// overwritten (read again and retried). The first try assumes new
    /// keys, so a fresh ban costs one round trip. Returns the records put.
    async fn write(
        &mut self,
        client: &mut Client,
        cfg: &ClusterConfig,
        status: &SharedStatus,
        batch: &[Change],
    ) -> anyhow::Result<u64> {
        self.write_allows(client, cfg, batch).await?;
        let prefix = cfg.ban_prefix();
        // Per prefix, in first-seen order: whether an unban comes first
        // (etcd's record no longer counts) and this host's last decisions
        // (`None`: only an unban).
        let mut order: Vec<IpNet> = Vec::new();
        let mut want: HashMap<IpNet, (bool, Option<Option<BanRecord>>)> = HashMap::new();
        for c in batch.iter().filter(|c| c.is_ban()) {
            let e = want.entry(c.cidr()).or_insert_with(|| {
                order.push(c.cidr());
                (false, None)
            });
            match c {
                Change::Remove(_) => *e = (true, None),
                Change::Withdraw(_) => e.1 = Some(None),
                Change::Put(r) => e.1 = Some(Some(r.clone())),
                Change::Allow(_) | Change::Unallow(_) => {}
            }
        }
        // What etcd holds for the keys whose outcome depends on it: (its
        // record, its revision); absent = (None, 0).
        let mut held: HashMap<IpNet, (Option<BanRecord>, i64)> = HashMap::new();
        let key = |c: &IpNet| format!("{prefix}{c}");
        for attempt in 0..8 {
            let now_ms = clock::unix_now_ms();
            let now = now_ms / 1000;
            let mut cmps = Vec::new();
            let mut reads = Vec::new();
            let mut ops = Vec::new();
            let mut puts = 0;
            for c in &order {
                let (reset, mine) = &want[c];
                if *reset && shareable(*c) {
                    // The unban, explicit: what lifts the owners' own
                    // decisions; a key merely gone lifts none.
                    let t = Lifted {
                        cidr: *c,
                        lifted_at: now,
                        lifted_at_ms: Some(now_ms),
                        host: cfg.host_id.clone(),
                    };
                    let lease = self
                        .lease(client, now.saturating_add(TOMBSTONE_TTL))
                        .await?;
                    ops.push(TxnOp::put(
                        format!("{prefix}{LIFTED}{c}"),
                        serde_json::to_vec(&t)?,
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
                let Some(mine) = mine else {
                    ops.push(TxnOp::delete(key(c), None));
                    continue;
                };
                let (cur, rev) = if *reset {
                    (None, None)
                } else {
                    let (r, v) = held.get(c).cloned().unwrap_or((None, 0));
                    (r, Some(v))
                };
                if let Some(rev) = rev {
                    cmps.push(if attempt == 0 {
                        Compare::version(key(c), CompareOp::Equal, 0)
                    } else {
                        Compare::mod_revision(key(c), CompareOp::Equal, rev)
                    });
                    reads.push((*c, TxnOp::get(key(c), None)));
                }
                let (folded, cut) = fold(cur.as_ref(), &cfg.host_id, *c, mine.as_ref(), now);
                if cut > 0 && attempt == 0 {
                    warn!(cidr = %c, decisions = cut, "fleet record cut to the limits every host reads (origin over {MAX_ORIGIN_BYTES} bytes, reason too long, or over {MAX_DECISIONS} decisions)");
                    with_status(status, |s| s.view.unshared += cut);
                }
                match folded {
                    Some(r) => {
                        let value = serde_json::to_vec(&r)?;
                        let opts = match r.expires_at {
                            Some(t) => {
                                Some(PutOptions::new().with_lease(self.lease(client, t).await?))
                            }
                            None => None,
                        };
                        ops.push(TxnOp::put(key(c), value, opts));
                        puts += 1;
                    }
                    // Nothing of anyone's left (this host withdrew its last
                    // decision, or all ended while queued).
                    None if cur.is_some() || *reset => ops.push(TxnOp::delete(key(c), None)),
                    None => {}
                }
            }
            let (cidrs, gets): (Vec<IpNet>, Vec<TxnOp>) = reads.into_iter().unzip();
            timing!("txn_sent", attempt, changes = order.len());
            let resp = client
                .txn(Txn::new().when(cmps).and_then(ops).or_else(gets))
                .await?;
            timing!("txn_done", attempt, ok = resp.succeeded());
            if resp.succeeded() {
                return Ok(puts);
            }
            // Someone else wrote one of these keys: read them, fold again.
            for (c, r) in cidrs.iter().zip(resp.op_responses()) {
                let TxnOpResponse::Get(g) = r else { continue };
                let entry = match g.kvs().first() {
                    Some(kv) => (current(&prefix, kv.key(), kv.value()), kv.mod_revision()),
                    None => (None, 0),
                };
                held.insert(*c, entry);
            }
            debug!(
                attempt,
                "a fleet record changed under this write; folding again"
            );
        }
        anyhow::bail!("fleet records kept changing under this host's writes")
    }
}

async fn connect(cfg: &ClusterConfig) -> anyhow::Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // etcd answers pings more often than every 5 s (its default
        // --grpc-keepalive-min-time) with GOAWAY; the 2 s probe in
        // `session` notices a silent partition sooner anyway.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let t = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?))
            .identity(etcd_client::Identity::from_pem(
                read(&tls.cert)?,
                read(&tls.key)?,
            ));
        opts = opts.with_tls(t);
    }
    Ok(Client::connect(&cfg.endpoints, Some(opts)).await?)
}

/// Records per page of the full read (fewer pages: etcd 3.4 walks its index
/// over every key left in the range for each page).
const PAGE: i64 = 20_000;

/// Records per [`Inbound::SnapshotPage`] (what the applier takes under one
/// lock).
const APPLY_PAGE: usize = 5000;

/// Most records a full read takes (twice the million bans an agent is
/// built to hold): what a hostile or runaway writer adds past it is
/// skipped, this host's own decisions on those prefixes stay.
const MAX_RECORDS: usize = 2_000_000;
/// Most tombstones a full read takes (one past it lifts nothing here).
const MAX_TOMBSTONES: usize = 1_000_000;

/// Takes one full-read entry unless its kind's cap is reached; false when
/// it is skipped (counted, warned of once).
fn under_cap(held: usize, cap: usize, what: &str, skipped: &mut u64) -> bool {
    if held < cap {
        return true;
    }
    if *skipped == 0 {
        warn!(
            cap,
            "the fleet holds more {what} than a full read takes; the rest are skipped"
        );
    }
    *skipped += 1;
    false
}

/// The first key past every key that starts with `start`.
fn range_end(start: &str) -> Vec<u8> {
    let mut e = start.as_bytes().to_vec();
    if let Some(last) = e.last_mut() {
        *last += 1;
    }
    e
}

/// Where the time of a full read went (logged with "in sync").
#[derive(Default)]
struct ReadStats {
    pages: u32,
    keys: usize,
    /// Waiting for etcd (what decoding the previous page did not hide).
    etcd: Duration,
    /// Checking and decoding what it sent.
    decode: Duration,
    /// Waiting for the applier to take a page (it applies the previous ones).
    handoff: Duration,
}

/// Largest answer taken from etcd (a page of the full read).
const MAX_PAGE_BYTES: usize = 64 << 20;

/// A page too large for [`MAX_PAGE_BYTES`] (records of up to etcd's
/// request size, 1.5 MiB by default, written by a hostile or buggy host):
/// asked again in halves, down to one record, so the read goes through.
fn page_too_big(e: &etcd_client::Error) -> bool {
    let e = e.to_string();
    ["message length too large", "larger than max"]
        .iter()
        .any(|m| e.contains(m))
}

/// Reads the keys in `[from, end)` at `revision`, page by page; the next
/// page is asked for before this one is decoded (`decode`: what to hand to
/// the agent, if anything). False when the agent is gone.
async fn read_pages(
    client: &Client,
    (from, end): (Vec<u8>, Vec<u8>),
    revision: i64,
    inbound: &mpsc::Sender<Inbound>,
    stats: &mut ReadStats,
    mut decode: impl FnMut(&[etcd_client::KeyValue]) -> Vec<Inbound>,
) -> anyhow::Result<bool> {
    let kv = client.kv_client().max_decoding_message_size(MAX_PAGE_BYTES);
    let get = |from: Vec<u8>, limit: i64| {
        let mut kv = kv.clone();
        let o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_revision(revision);
        let asked = from.clone();
        (
            asked,
            tokio::spawn(async move { kv.get(from, Some(o)).await }),
        )
    };
    let mut limit = PAGE;
    let mut next = Some(get(from, limit));
    while let Some((asked, fetch)) = next.take() {
        let t = std::time::Instant::now();
        let resp = match fetch.await? {
            Ok(r) => r,
            Err(e) if limit > 1 && page_too_big(&e) => {
                limit = (limit / 2).max(1);
                warn!(
                    limit,
                    "a page of the fleet's records is too large; reading smaller ones"
                );
                next = Some(get(asked, limit));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        stats.etcd += t.elapsed();
        // Back up after a page that fitted: a few huge records (a hostile
        // host's) must not leave the rest of the read in tiny pages, each
        // of which etcd 3.4 walks the remaining range for.
        limit = (limit.saturating_mul(2)).min(PAGE);
        if resp.more()
            && let Some(kv) = resp.kvs().last()
        {
            let mut k = kv.key().to_vec();
            k.push(0);
            next = Some(get(k, limit));
        }
        let t = std::time::Instant::now();
        let msgs = decode(resp.kvs());
        stats.decode += t.elapsed();
        stats.pages += 1;
        stats.keys += resp.kvs().len();
        for m in msgs {
            let t = std::time::Instant::now();
            if inbound.send(m).await.is_err() {
                if let Some((_, n)) = next {
                    n.abort();
                }
                return Ok(false);
            }
            stats.handoff += t.elapsed();
        }
    }
    Ok(true)
}

/// Reads every record and tombstone under the ban prefix at `revision`
/// and hands them to the agent as they come: the tombstones first (with
/// [`Inbound::SnapshotStart`]: a page of records is settled against them),
/// then the records page by page. Returns the prefixes whose record was
/// skipped, for [`Inbound::SnapshotEnd`]; `None` when the agent is gone.
async fn read_bans(
    client: &Client,
    cfg: &ClusterConfig,
    status: &SharedStatus,
    revision: i64,
    capped: Vec<IpNet>,
    inbound: &mpsc::Sender<Inbound>,
    stats: &mut ReadStats,
) -> anyhow::Result<Option<Vec<IpNet>>> {
    let prefix = cfg.ban_prefix();
    let tombs = format!("{prefix}{LIFTED}");
    let now = clock::unix_now();
    let mut skipped = 0;
    // (records, tombstones) past the caps.
    let mut over = (0, 0);
    let mut lifted = Vec::new();
    let tomb_range = (tombs.clone().into_bytes(), range_end(&tombs));
    let read = read_pages(client, tomb_range, revision, inbound, stats, |kvs| {
        for kv in kvs {
            match decode_entry(&prefix, kv.key(), kv.value(), now, cfg.max_remote_ttl) {
                Ok(Entry::Lifted(l)) => {
                    if under_cap(lifted.len(), MAX_TOMBSTONES, "tombstones", &mut over.1) {
                        lifted.push((l.cidr, l.bound_ms()));
                    }
                }
                // Not under `lifted/`.
                Ok(Entry::Record(_)) => {}
                Err(e) => {
                    warn!("skipped a fleet record: {e}");
                    skipped += 1;
                }
            }
        }
        Vec::new()
    })
    .await?;
    if !read
        || inbound
            .send(Inbound::SnapshotStart { lifted, capped })
            .await
            .is_err()
    {
        return Ok(None);
    }
    // The records: every key but the tombstones, on both sides of them.
    let mut unread = Vec::new();
    let mut taken = 0;
    for range in [
        (prefix.clone().into_bytes(), tombs.clone().into_bytes()),
        (range_end(&tombs), range_end(&prefix)),
    ] {
        let read = read_pages(client, range, revision, inbound, stats, |kvs| {
            let mut page = Vec::with_capacity(kvs.len());
            for kv in kvs {
                match decode(&prefix, kv.key(), kv.value(), now, cfg.max_remote_ttl) {
                    Ok(Some(r)) => {
                        if under_cap(taken, MAX_RECORDS, "records", &mut over.0) {
                            taken += 1;
                            page.push(r);
                        } else {
                            unread.push(r.cidr);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!("skipped a fleet record: {e}");
                        skipped += 1;
                        // The prefix as its key names it: this host's own
                        // decisions on it are not taken as lifted.
                        if let Some((c, false)) = key_cidr(&prefix, kv.key()) {
                            unread.push(c);
                        }
                    }
                }
            }
            // Applied in pieces: the lock is let go between them.
            let mut msgs = Vec::new();
            let mut page = page.into_iter().peekable();
            while page.peek().is_some() {
                msgs.push(Inbound::SnapshotPage(
                    page.by_ref().take(APPLY_PAGE).collect(),
                ));
            }
            msgs
        })
        .await?;
        if !read {
            return Ok(None);
        }
    }
    with_status(status, |s| s.view.skipped += skipped + over.0 + over.1);
    Ok(Some(unread))
}

/// Most fleet allow entries read.
const MAX_ALLOWS: i64 = 100_000;

/// The fleet's allowlist, now, and the revision it was read at (the one
/// the full read of the bans then takes).
async fn read_allows(
    client: &mut Client,
    cfg: &ClusterConfig,
    status: &SharedStatus,
) -> anyhow::Result<(Vec<AllowRecord>, i64)> {
    let prefix = cfg.allow_prefix();
    let resp = client
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_limit(MAX_ALLOWS)),
        )
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    // Every page of the full read is taken at this revision: 0 would read
    // each at whatever etcd holds then.
    anyhow::ensure!(revision > 0, "etcd answered without a revision");
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match decode_allow(&prefix, kv.key(), kv.value()) {
            Ok(a) => out.push(a),
            Err(e) => {
                warn!("skipped a fleet allow entry: {e}");
                with_status(status, |s| s.view.skipped += 1);
            }
        }
    }
    Ok((out, revision))
}

/// Keeps this host in the fleet until `outbox` closes: publishes local
/// changes, sends the fleet's to `inbound`, reconnects with backoff.
pub async fn run(
    cfg: ClusterConfig,
    mut outbox: mpsc::UnboundedReceiver<Queued>,
    inbound: mpsc::Sender<Inbound>,
    status: SharedStatus,
) {
    let mut publisher = Publisher {
        pending: VecDeque::new(),
        taken: 0,
        acked: 0,
        leases: HashMap::new(),
        window: (0, 0),
        capped: HashSet::new(),
    };
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    loop {
        let err = match session(&cfg, &mut outbox, &inbound, &status, &mut publisher).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let was = status.lock().map(|s| s.view.connected).unwrap_or(false);
        let first = status.lock().map(|s| s.view.resyncs == 0).unwrap_or(false) && !warned;
        warned = true;
        with_status(&status, |s| {
            s.view.connected = false;
            s.view.last_error = Some(format!("{err:#}"));
        });
        if was {
            warn!("lost etcd: {err:#}; enforcing what this host holds, retrying");
            backoff = Duration::from_millis(200);
        } else if first {
            warn!("etcd unreachable: {err:#}; enforcing what this host holds, retrying");
        } else {
            debug!("etcd unreachable: {err:#}");
        }
        // Keep taking local changes while waiting: they stay queued.
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => break,
                c = outbox.recv() => match c {
                    Some(c) => publisher.take(&cfg, &status, c),
                    None => return,
                },
            }
        }
        // At most 2 s between tries: a healed partition is noticed within
        // about that (plus the 2 s connect timeout of a try under way).
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Most records in one [`Inbound::Puts`].
const PUTS_PER_MESSAGE: usize = 256;

/// Watches everything under `prefix` after `revision`.
async fn watch_after(
    client: &mut Client,
    prefix: &str,
    revision: i64,
) -> anyhow::Result<etcd_client::WatchStream> {
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    // The page reads' limit: a watch catching up delivers up to 1,000
    // revisions at once, and a few records of etcd's maximum size (a
    // hostile host's) past the default 4 MiB would fail the stream, then
    // every full read after it, for good.
    let mut w = client
        .watch_client()
        .max_decoding_message_size(MAX_PAGE_BYTES);
    Ok(w.watch(prefix, Some(opts)).await?)
}

async fn session(
    cfg: &ClusterConfig,
    outbox: &mut mpsc::UnboundedReceiver<Queued>,
    inbound: &mpsc::Sender<Inbound>,
    status: &SharedStatus,
    publisher: &mut Publisher,
) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let mut client = connect(cfg).await?;
    let connect_ms = t.elapsed().as_millis();
    // What this host queued while cut off goes first, so that the read
    // below already holds it.
    while let Ok(c) = outbox.try_recv() {
        publisher.take(cfg, status, c);
    }
    publisher.flush(&mut client, cfg, status).await?;
    if let Some(upto) = publisher.ack()
        && inbound.send(Inbound::Acked(upto)).await.is_err()
    {
        return Ok(());
    }
    let t = std::time::Instant::now();
    // The allowlist first: it wins over the bans that come after it.
    let (allows, revision) = read_allows(&mut client, cfg, status).await?;
    if inbound.send(Inbound::Allows(allows)).await.is_err() {
        return Ok(());
    }
    let mut stats = ReadStats::default();
    let capped = publisher.capped.iter().copied().collect();
    let Some(unread) =
        read_bans(&client, cfg, status, revision, capped, inbound, &mut stats).await?
    else {
        return Ok(());
    };
    let read_ms = t.elapsed().as_millis();
    let allow_prefix = cfg.allow_prefix();
    let mut allow_stream = watch_after(&mut client, &allow_prefix, revision).await?;
    let prefix = cfg.ban_prefix();
    let mut stream = watch_after(&mut client, &prefix, revision).await?;
    if inbound.send(Inbound::SnapshotEnd { unread }).await.is_err() {
        return Ok(());
    }
    let now = clock::unix_now();
    with_status(status, |s| {
        s.view.connected = true;
        s.view.revision = revision;
        s.last_sync = now;
        s.view.resyncs += 1;
        s.view.last_error = None;
    });
    info!(
        revision,
        keys = stats.keys,
        pages = stats.pages,
        read_ms,
        etcd_ms = stats.etcd.as_millis(),
        decode_ms = stats.decode.as_millis(),
        handoff_ms = stats.handoff.as_millis(),
        connect_ms,
        fleet = %cfg.fleet,
        host = %cfg.host_id,
        "in sync with the fleet"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            c = outbox.recv() => {
                let Some(c) = c else { return Ok(()) };
                timing!("pub_taken");
                publisher.take(cfg, status, c);
                // Whatever else is already queued goes in the same transaction.
                while let Ok(c) = outbox.try_recv() {
                    publisher.take(cfg, status, c);
                }
                publisher.flush(&mut client, cfg, status).await?;
                if let Some(upto) = publisher.ack()
                    && inbound.send(Inbound::Acked(upto)).await.is_err()
                {
                    return Ok(());
                }
            }
            m = stream.message() => {
                let Some(resp) = m? else { anyhow::bail!("the watch stream ended") };
                if resp.compact_revision() > 0 {
                    anyhow::bail!("the watch was compacted past revision {}", resp.compact_revision());
                }
                if resp.canceled() {
                    anyhow::bail!("the watch was cancelled: {}", resp.cancel_reason());
                }
                let now = clock::unix_now();
                timing!("watch_rx", events = resp.events().len());
                let mut puts = Vec::new();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    tracing::trace!(target: "tollgate::timing", key = ?String::from_utf8_lossy(kv.key()), "watch_key");
                    let change = match ev.event_type() {
                        // This host's own writes come back too: the record
                        // also holds the other hosts' decisions as etcd has them.
                        EventType::Put => match decode_entry(&prefix, kv.key(), kv.value(), now, cfg.max_remote_ttl) {
                            Ok(Entry::Record(Some(r))) => {
                                puts.push(r);
                                // Bounded, as the channel's memory was by its
                                // length when each put was a message.
                                if puts.len() >= PUTS_PER_MESSAGE && inbound.send(Inbound::Puts(std::mem::take(&mut puts))).await.is_err() {
                                    return Ok(());
                                }
                                continue;
                            }
                            Ok(Entry::Record(None)) => continue,
                            // Written with the record's deletion, before it.
                            Ok(Entry::Lifted(l)) => Inbound::Remove(l),
                            Err(e) => {
                                warn!("skipped a fleet record: {e}");
                                with_status(status, |s| s.view.skipped += 1);
                                continue;
                            }
                        },
                        EventType::Delete => match key_cidr(&prefix, kv.key()) {
                            Some((c, false)) => Inbound::Gone(c),
                            // A tombstone collected by its lease.
                            Some((_, true)) => continue,
                            None => {
                                with_status(status, |s| s.view.skipped += 1);
                                continue;
                            }
                        },
                    };
                    // The puts before it first, in watch order.
                    if !puts.is_empty() && inbound.send(Inbound::Puts(std::mem::take(&mut puts))).await.is_err() {
                        return Ok(());
                    }
                    if inbound.send(change).await.is_err() {
                        return Ok(());
                    }
                }
                if !puts.is_empty() && inbound.send(Inbound::Puts(puts)).await.is_err() {
                    return Ok(());
                }
                let rev = resp.header().map_or(0, |h| h.revision());
                with_status(status, |s| {
                    s.view.revision = s.view.revision.max(rev);
                    s.last_sync = now;
                });
            }
            m = allow_stream.message() => {
                let Some(resp) = m? else { anyhow::bail!("the allowlist watch ended") };
                if resp.compact_revision() > 0 || resp.canceled() {
                    anyhow::bail!("the allowlist watch was cancelled or compacted");
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let change = match ev.event_type() {
                        EventType::Put => match decode_allow(&allow_prefix, kv.key(), kv.value()) {
                            Ok(a) => Inbound::Allow(a),
                            Err(e) => {
                                warn!("skipped a fleet allow entry: {e}");
                                with_status(status, |s| s.view.skipped += 1);
                                continue;
                            }
                        },
                        EventType::Delete => {
                            let parsed = std::str::from_utf8(kv.key()).ok()
                                .and_then(|k| k.strip_prefix(allow_prefix.as_str()))
                                .and_then(|c| c.parse::<IpNet>().ok());
                            let Some(c) = parsed else { continue };
                            Inbound::Unallow(c)
                        }
                    };
                    if inbound.send(change).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = tick.tick() => {
                // A cheap read proves the link is alive (staleness stays low
                // on a quiet fleet) and retries anything still pending.
                publisher.flush(&mut client, cfg, status).await?;
                if let Some(upto) = publisher.ack()
                    && inbound.send(Inbound::Acked(upto)).await.is_err()
                {
                    return Ok(());
                }
                // Every 10 s (and at once): this host's report for `cluster
                // status`; otherwise a cheap read.
                if ticks.is_multiple_of(5) {
                    report(&mut client, cfg, status).await?;
                } else {
                    client.get(format!("/tollgate/{}/alive", cfg.fleet), Some(GetOptions::new().with_count_only())).await?;
                }
                ticks = ticks.wrapping_add(1);
                let now = clock::unix_now();
                with_status(status, |s| s.last_sync = now);
            }
        }
    }
}

/// Writes this host's report under `/tollgate/<fleet>/hosts/<host_id>`
/// (overwritten every 10 s: one key per host, no lease).
async fn report(
    client: &mut Client,
    cfg: &ClusterConfig,
    status: &SharedStatus,
) -> anyhow::Result<()> {
    let now = clock::unix_now();
    let view = status
        .lock()
        .map(|s| crate::proto::HostView {
            host: cfg.host_id.clone(),
            last_sync: clock::rfc3339_ms(now as f64),
            age_secs: 0,
            connected: true,
            revision: s.view.revision,
            outbox: s.view.outbox,
            drift_entries: s.view.drift_entries,
            bans: s.bans,
        })
        .map_err(|_| anyhow::anyhow!("cluster status lock poisoned"))?;
    let rec = HostRecord { at: now, view };
    client
        .put(
            format!("{}{}", cfg.host_prefix(), cfg.host_id),
            serde_json::to_vec(&rec)?,
            None,
        )
        .await?;
    Ok(())
}

/// A host's report as stored in etcd.
#[derive(serde::Serialize, serde::Deserialize)]
struct HostRecord {
    /// Unix seconds.
    at: u64,
    #[serde(flatten)]
    view: crate::proto::HostView,
}

/// Most host reports `cluster status` reads.
const MAX_HOSTS: i64 = 10_000;

/// Most members `cluster status` asks one by one.
const MAX_MEMBERS: usize = 16;

/// `cluster status`: asks etcd for its members and the hosts' reports,
/// each step bounded in time; what fails is said in `error`.
pub async fn query(
    cfg: &ClusterConfig,
    view: crate::proto::ClusterView,
) -> crate::proto::ClusterReport {
    let mut out = crate::proto::ClusterReport {
        cluster: view,
        ..crate::proto::ClusterReport::default()
    };
    let asked = tokio::time::timeout(Duration::from_secs(5), ask(cfg, &mut out)).await;
    match asked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(format!("{e:#}")),
        Err(_) => out.error = Some("etcd did not answer within 5 s".into()),
    }
    out
}

async fn ask(cfg: &ClusterConfig, out: &mut crate::proto::ClusterReport) -> anyhow::Result<()> {
    let mut client = connect(cfg).await?;
    let members = client.member_list().await?;
    let leader = client.status().await.ok().map(|s| s.leader());
    for m in members.members().iter().take(MAX_MEMBERS) {
        let mut mv = crate::proto::MemberView {
            name: m.name().to_owned(),
            id: format!("{:x}", m.id()),
            client_urls: m.client_urls().to_vec(),
            leader: leader == Some(m.id()),
            ..crate::proto::MemberView::default()
        };
        let one = ClusterConfig {
            endpoints: m.client_urls().to_vec(),
            ..cfg.clone()
        };
        let st = tokio::time::timeout(Duration::from_secs(1), async {
            connect(&one)
                .await?
                .status()
                .await
                .map_err(anyhow::Error::from)
        })
        .await;
        if let Ok(Ok(st)) = st {
            mv.reachable = true;
            mv.revision = st.header().map(|h| h.revision());
            mv.db_size_bytes = Some(st.db_size());
        }
        out.members.push(mv);
    }
    let prefix = cfg.host_prefix();
    let resp = client
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_limit(MAX_HOSTS)),
        )
        .await?;
    let rev = resp.header().map(|h| h.revision());
    out.etcd_revision = rev;
    out.lag = rev.map(|r| r.saturating_sub(out.cluster.revision).max(0));
    let now = clock::unix_now();
    for kv in resp.kvs() {
        // Reports are written by every agent: checked like ban records.
        let host = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(prefix.as_str()));
        let Some(host) = host.filter(|h| crate::policy::check_name(h).is_none()) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<HostRecord>(kv.value()) else {
            continue;
        };
        if rec.view.host != host || rec.view.last_sync.len() > 40 {
            continue;
        }
        out.hosts.push(crate::proto::HostView {
            age_secs: now.saturating_sub(rec.at),
            ..rec.view
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/tollgate/f/bans/";

    fn rec(cidr: &str, host: Option<&str>, expires_at: Option<u64>) -> Vec<u8> {
        let r = BanRecord {
            cidr: cidr.parse().unwrap(),
            kind: tollgate_common::BanReason::Manual,
            reason: "x".into(),
            origin: "cli".into(),
            created_at: 1,
            created_at_ms: None,
            expires_at,
            offences: 1,
            host: host.map(Into::into),
            also: Vec::new(),
        };
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn decode_checks_every_record() {
        let now = 1_000;
        let k = |c: &str| format!("{P}{c}").into_bytes();
        let ok = decode(
            P,
            &k("198.18.0.1/32"),
            &rec("198.18.0.1/32", Some("a"), Some(2_000)),
            now,
            100_000,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.expires_at, Some(2_000));
        assert_eq!(ok.host.as_deref(), Some("a"));
        // Permanent and overlong bans are cut to the cap.
        let cut = decode(
            P,
            &k("198.18.0.1/32"),
            &rec("198.18.0.1/32", Some("a"), None),
            now,
            60,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cut.expires_at, Some(1_060));
        // Expired: ignored, not an error.
        assert_eq!(
            decode(
                P,
                &k("198.18.0.1/32"),
                &rec("198.18.0.1/32", Some("a"), Some(10)),
                now,
                60
            ),
            Ok(None)
        );
        // Malformed or hostile: refused.
        assert!(decode(P, &k("198.18.0.1/32"), b"{not json", now, 60).is_err());
        assert!(
            decode(
                P,
                &k("198.18.0.2/32"),
                &rec("198.18.0.1/32", Some("a"), None),
                now,
                60
            )
            .is_err()
        );
        assert!(
            decode(
                P,
                &k("0.0.0.0/0"),
                &rec("0.0.0.0/0", Some("a"), None),
                now,
                60
            )
            .is_err()
        );
        assert!(
            decode(
                P,
                &k("198.18.0.1/32"),
                &rec("198.18.0.1/32", None, None),
                now,
                60
            )
            .is_err()
        );
        assert!(
            decode(
                P,
                &k("198.18.0.1/32"),
                &rec("198.18.0.1/32", Some("a/b"), None),
                now,
                60
            )
            .is_err()
        );
        assert!(
            decode(
                P,
                b"/other/198.18.0.1/32",
                &rec("198.18.0.1/32", Some("a"), None),
                now,
                60
            )
            .is_err()
        );
    }

    #[test]
    fn the_per_minute_cap_keeps_the_rest_local() {
        let cfg = ClusterConfig {
            endpoints: vec![],
            fleet: "f".into(),
            host_id: "a".into(),
            tls: None,
            per_minute: 2,
            max_remote_ttl: 60,
            reconcile_secs: 30,
        };
        let status = SharedStatus::default();
        let mut p = Publisher {
            pending: VecDeque::new(),
            taken: 0,
            acked: 0,
            leases: HashMap::new(),
            window: (0, 0),
            capped: HashSet::new(),
        };
        let ban: BanRecord = serde_json::from_slice(&rec("198.18.0.1/32", None, None)).unwrap();
        for seq in 1..=4 {
            p.take(&cfg, &status, (seq, Change::Put(ban.clone())));
        }
        // Unbans are never capped.
        p.take(&cfg, &status, (5, Change::Remove(ban.cidr)));
        assert_eq!(p.pending.len(), 3);
        assert_eq!(status.lock().unwrap().view.rate_limited, 2);
        // The unban of the capped prefix: nothing of it is kept back.
        assert!(p.capped.is_empty());
        p.take(&cfg, &status, (6, Change::Put(ban.clone())));
        assert_eq!(p.capped.iter().collect::<Vec<_>>(), vec![&ban.cidr]);
        // Nothing is acknowledged while the first change waits for etcd;
        // once the queue is empty, the capped ones are acknowledged too.
        assert_eq!(p.ack(), None);
        p.pending.clear();
        assert_eq!(p.ack(), Some(6));
        assert_eq!(p.ack(), None);
    }

    #[test]
    fn a_host_rewrites_only_its_own_decisions_in_a_record() {
        let cidr: IpNet = "198.18.0.1/32".parse().unwrap();
        let one = |host: Option<&str>, origin: &str, exp: Option<u64>| BanRecord {
            origin: origin.into(),
            ..serde_json::from_slice::<BanRecord>(&rec("198.18.0.1/32", host, exp)).unwrap()
        };
        let now = 1_000;
        // etcd holds B's feed decision and an old one of A's.
        let held = BanRecord {
            also: vec![one(Some("a"), "feed", Some(1_500)).decision()],
            ..one(Some("b"), "feed", Some(2_000))
        };
        // A's new set (its manual ban; its local view of B's is ignored).
        let mine = BanRecord {
            also: vec![one(Some("b"), "feed", Some(9_999)).decision()],
            ..one(None, "cli", Some(3_000))
        };
        let r = fold(Some(&held), "a", cidr, Some(&mine), now).0.unwrap();
        let ds: Vec<_> = r
            .decisions()
            .map(|d| (d.host.unwrap(), d.origin, d.expires_at))
            .collect();
        assert_eq!(
            ds,
            vec![
                ("a".into(), "cli".into(), Some(3_000)),
                ("b".into(), "feed".into(), Some(2_000))
            ]
        );
        // A withdraws: B's stays; with nothing else, the key goes.
        let w = fold(Some(&r), "a", cidr, None, now).0.unwrap();
        assert_eq!((w.host.as_deref(), w.also.len()), (Some("b"), 0));
        assert_eq!(fold(Some(&w), "b", cidr, None, now), (None, 0));
        // Ended decisions are dropped; a new key holds this host's only.
        assert_eq!(fold(Some(&w), "a", cidr, None, 2_001), (None, 0));
        let fresh = fold(None, "a", cidr, Some(&mine), now).0.unwrap();
        assert_eq!((fresh.host.as_deref(), fresh.also.len()), (Some("a"), 0));
    }

    #[test]
    fn every_decision_of_a_record_is_checked() {
        let k = format!("{P}198.18.0.1/32").into_bytes();
        let with = |also: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&rec("198.18.0.1/32", Some("a"), Some(2_000))).unwrap();
            v["also"] = serde_json::from_str(also).unwrap();
            serde_json::to_vec(&v).unwrap()
        };
        let d = |host: &str, origin: &str| {
            format!(
                r#"[{{"kind":"manual","reason":"x","origin":"{origin}","created_at":1,"expires_at":null{host}}}]"#
            )
        };
        // A decision with no host was the writer's; its permanent expiry cut.
        let r = decode(P, &k, &with(&d("", "cli")), 1_000, 60)
            .unwrap()
            .unwrap();
        assert_eq!(r.also[0].host.as_deref(), Some("a"));
        assert!(
            r.decisions()
                .all(|d| d.expires_at.is_some_and(|t| t <= 2_000))
        );
        assert!(decode(P, &k, &with(&d(r#","host":"a/b""#, "cli")), 1_000, 60).is_err());
        let long = "o".repeat(MAX_ORIGIN_BYTES + 1);
        assert!(decode(P, &k, &with(&d("", &long)), 1_000, 60).is_err());
        let many = format!(
            "[{}]",
            vec![&d("", "x")[1..d("", "x").len() - 1]; 300].join(",")
        );
        assert!(decode(P, &k, &with(&many), 1_000, 60).is_err());
    }

    /// What this host writes, every host reads: a policy ban's origin
    /// longer than the readers' limit, a reason with control characters and
    /// more decisions than a record may carry are cut by the writer, never
    /// written for the readers to skip.
    #[test]
    fn the_writer_keeps_within_the_readers_limits() {
        let cidr: IpNet = "198.18.0.1/32".parse().unwrap();
        let now = 1_000;
        let base: BanRecord =
            serde_json::from_slice(&rec("198.18.0.1/32", None, Some(5_000))).unwrap();
        let route = format!("agent (/{} on port 8080)", "é".repeat(150));
        let mine = BanRecord {
            origin: route.clone(),
            reason: format!("sqli\u{7}{}", "r".repeat(400)),
            ..base.clone()
        };
        // etcd holds 300 decisions of other hosts (an old writer's record).
        let held = BanRecord {
            host: Some("h0".into()),
            also: (1..300)
                .map(|i| Decision {
                    host: Some(format!("h{i}")),
                    expires_at: Some(2_000 + i),
                    ..base.decision()
                })
                .collect(),
            ..base.clone()
        };
        let (r, cut) = fold(Some(&held), "a", cidr, Some(&mine), now);
        let r = r.unwrap();
        assert_eq!(r.decisions().count(), MAX_DECISIONS);
        assert_eq!(
            cut,
            1 + (300 + 1 - MAX_DECISIONS as u64),
            "this host's decision cut, the weakest left out"
        );
        let own = r
            .decisions()
            .find(|d| d.host.as_deref() == Some("a"))
            .unwrap();
        assert_eq!(own.origin, shared_origin(&route));
        assert!(own.origin.len() <= MAX_ORIGIN_BYTES && route.starts_with(&own.origin));
        // The strongest of the others' stay.
        assert!(r.decisions().any(|d| d.host.as_deref() == Some("h299")));
        assert!(!r.decisions().any(|d| d.host.as_deref() == Some("h1")));
        let bytes = serde_json::to_vec(&r).unwrap();
        let k = format!("{P}198.18.0.1/32").into_bytes();
        let read = decode(P, &k, &bytes, now, 100_000)
            .expect("every reader takes what the writer wrote")
            .unwrap();
        assert_eq!(read.decisions().count(), MAX_DECISIONS);
        // A prefix wider than any reader takes is not shared at all.
        assert!(!shareable("10.0.0.0/4".parse().unwrap()));
        assert!(shareable(cidr));
    }

    #[test]
    fn a_transaction_holds_at_most_txn_ops_operations() {
        let c: IpNet = "198.18.0.1/32".parse().unwrap();
        // 65 unbans are 130 operations: over etcd's default 128.
        let unbans = vec![Change::Remove(c); 65];
        let n = batch_len(&unbans, TXN_OPS);
        assert_eq!(n, TXN_OPS / 2);
        assert!(unbans[..n].iter().map(ops).sum::<usize>() <= TXN_OPS);
        let withdrawals = vec![Change::Withdraw(c); 150];
        assert_eq!(batch_len(&withdrawals, TXN_OPS), TXN_OPS);
        // A split always makes progress: one change goes alone.
        assert_eq!(batch_len(&unbans, 1), 1);
        assert!(too_big(&anyhow::anyhow!(
            "grpc request error: status: InvalidArgument, message: \"etcdserver: too many operations in txn request\""
        )));
        assert!(too_big(&anyhow::anyhow!(
            "grpc request error: status: InvalidArgument, message: \"etcdserver: request is too large\""
        )));
        assert!(!too_big(&anyhow::anyhow!(
            "grpc request error: status: Unavailable, message: \"etcdserver: leader changed\""
        )));
    }

    #[test]
    fn a_full_read_takes_at_most_its_cap() {
        let mut over = 0;
        let taken = (0..10)
            .filter(|held| under_cap(*held.min(&3), 3, "records", &mut over))
            .count();
        assert_eq!((taken, over), (3, 7));
    }

    #[test]
    fn tombstones_are_told_apart_and_checked() {
        let now = 1_000;
        let k = |c: &str| format!("{P}{LIFTED}{c}").into_bytes();
        let v = |c: &str, at: u64, host: &str| {
            format!(r#"{{"cidr":"{c}","lifted_at":{at},"host":"{host}"}}"#).into_bytes()
        };
        let t = decode_entry(
            P,
            &k("198.18.0.1/32"),
            &v("198.18.0.1/32", 900, "a"),
            now,
            60,
        );
        assert!(matches!(t, Ok(Entry::Lifted(l)) if l.lifted_at == 900 && l.host == "a"));
        // A record is still a record.
        let r = decode_entry(
            P,
            format!("{P}198.18.0.1/32").as_bytes(),
            &rec("198.18.0.1/32", Some("a"), Some(2_000)),
            now,
            60,
        );
        assert!(matches!(r, Ok(Entry::Record(Some(_)))));
        // Hostile: from the future, for another prefix, too wide, bad host.
        for (key, value) in [
            (k("198.18.0.1/32"), v("198.18.0.1/32", 99_999, "a")),
            (k("198.18.0.1/32"), v("198.18.0.2/32", 900, "a")),
            (k("0.0.0.0/0"), v("0.0.0.0/0", 900, "a")),
            (k("198.18.0.1/32"), v("198.18.0.1/32", 900, "a/b")),
            (k("198.18.0.1/32"), b"{".to_vec()),
        ] {
            assert!(decode_entry(P, &key, &value, now, 60).is_err());
        }
        assert_eq!(
            key_cidr(P, &k("198.18.0.1/32")),
            Some(("198.18.0.1/32".parse().unwrap(), true))
        );
        assert_eq!(
            key_cidr(P, format!("{P}fd00::/8").as_bytes()),
            Some(("fd00::/8".parse().unwrap(), false))
        );
    }

    #[test]
    fn fleet_allow_entries_are_checked() {
        let p = "/tollgate/f/allow/";
        let k = |c: &str| format!("{p}{c}").into_bytes();
        let v = |c: &str, host: &str| {
            format!(
                r#"{{"cidr":"{c}","reason":"office","origin":"cli","created_at":1,"host":"{host}"}}"#
            )
        };
        let a = decode_allow(p, &k("198.18.0.0/24"), v("198.18.0.0/24", "a").as_bytes()).unwrap();
        assert_eq!(a.origin, "fleet:a");
        assert!(decode_allow(p, &k("0.0.0.0/0"), v("0.0.0.0/0", "a").as_bytes()).is_err());
        assert!(decode_allow(p, &k("198.18.0.1/32"), v("198.18.0.2/32", "a").as_bytes()).is_err());
        assert!(
            decode_allow(p, &k("198.18.0.1/32"), v("198.18.0.1/32", "a/b").as_bytes()).is_err()
        );
        assert!(decode_allow(p, &k("198.18.0.1/32"), b"{").is_err());
    }

    /// Allowlist changes made while etcd is away wait in the durable
    /// outbox like bans: a restart publishes them.
    #[test]
    fn allow_changes_survive_a_restart_in_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let open = |tx| {
            ClusterStore::new(
                Box::new(crate::store::RedbStore::open(dir.path()).unwrap()),
                tx,
                SharedStatus::default(),
            )
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = open(tx);
        let a = AllowRecord {
            cidr: "198.18.0.0/24".parse().unwrap(),
            reason: "office".into(),
            origin: "cli".into(),
            created_at: 1,
        };
        s.put_allow(&a).unwrap();
        s.remove_allow(&"198.18.0.0/24".parse().unwrap()).unwrap();
        s.put_allow(&a).unwrap();
        drop(s);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _s = open(tx);
        let mut back = Vec::new();
        while let Ok((_, c)) = rx.try_recv() {
            back.push(c);
        }
        assert_eq!(
            back,
            vec![
                Change::Allow(a.clone()),
                Change::Unallow(a.cidr),
                Change::Allow(a)
            ]
        );
    }

    /// The milliseconds beside the seconds: read and kept when they fall
    /// in their second, ignored otherwise; absent from old records and
    /// tombstones, which then compare in whole seconds as before; written
    /// only beside the old fields (an old reader sees what it always did).
    #[test]
    fn milliseconds_order_a_ban_and_an_unban_of_the_same_second() {
        let now = 1_000;
        let k = |c: &str| format!("{P}{LIFTED}{c}").into_bytes();
        let tomb = |extra: &str| {
            let v = format!(r#"{{"cidr":"198.18.0.1/32","lifted_at":900,"host":"a"{extra}}}"#);
            match decode_entry(P, &k("198.18.0.1/32"), v.as_bytes(), now, 60) {
                Ok(Entry::Lifted(l)) => l,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(tomb("").lifted_at_ms, None);
        assert_eq!(
            tomb("").bound_ms(),
            900_999,
            "old tombstones lift their whole second"
        );
        assert_eq!(tomb(r#","lifted_at_ms":900250"#).bound_ms(), 900_250);
        // Outside its second (hostile or broken): as if absent.
        for bad in [r#","lifted_at_ms":901000"#, r#","lifted_at_ms":899999"#] {
            let l = tomb(bad);
            assert_eq!((l.lifted_at_ms, l.bound_ms()), (None, 900_999), "{bad}");
        }
        assert!(
            decode_entry(
                P,
                &k("198.18.0.1/32"),
                br#"{"cidr":"198.18.0.1/32","lifted_at":900,"lifted_at_ms":"x","host":"a"}"#,
                now,
                60
            )
            .is_err(),
            "a tombstone with malformed milliseconds is skipped"
        );

        let record = |ms: &str| {
            let v = format!(
                r#"{{"cidr":"198.18.0.1/32","kind":"manual","reason":"x","origin":"cli","created_at":900{ms},"expires_at":null,"offences":1,"host":"b"}}"#
            );
            decode(
                P,
                b"/tollgate/f/bans/198.18.0.1/32",
                v.as_bytes(),
                now,
                3600,
            )
            .unwrap()
            .unwrap()
            .decision()
        };
        assert_eq!(record("").created_at_ms, None);
        assert_eq!(record("").created_ms(), 900_000);
        let made = record(r#","created_at_ms":900251"#);
        assert_eq!(made.created_at_ms, Some(900_251));
        assert_eq!(record(r#","created_at_ms":12"#).created_at_ms, None);
        // Made after the unban, the same second: not lifted; before: lifted.
        assert!(made.created_ms() > tomb(r#","lifted_at_ms":900250"#).bound_ms());
        assert!(made.created_ms() <= tomb(r#","lifted_at_ms":900251"#).bound_ms());
        // Either side in whole seconds: the second decides, as before.
        assert!(made.created_ms() <= tomb("").bound_ms());
        assert!(record("").created_ms() <= tomb(r#","lifted_at_ms":900000"#).bound_ms());

        // Written beside the old fields, never instead of them.
        let t = Lifted {
            cidr: "198.18.0.1/32".parse().unwrap(),
            lifted_at: 900,
            lifted_at_ms: Some(900_250),
            host: "a".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&t).unwrap();
        assert_eq!(
            (v["lifted_at"].as_u64(), v["lifted_at_ms"].as_u64()),
            (Some(900), Some(900_250))
        );
        let old = serde_json::to_value(Lifted {
            lifted_at_ms: None,
            ..t
        })
        .unwrap();
        assert!(old.get("lifted_at_ms").is_none());
        let (r, _) = fold(
            None,
            "b",
            "198.18.0.1/32".parse().unwrap(),
            Some(&BanRecord {
                created_at: 900,
                created_at_ms: Some(900_251),
                ..serde_json::from_slice(&rec("198.18.0.1/32", None, None)).unwrap()
            }),
            now,
        );
        let v = serde_json::to_value(r.unwrap()).unwrap();
        assert_eq!(
            (v["created_at"].as_u64(), v["created_at_ms"].as_u64()),
            (Some(900), Some(900_251))
        );
    }

    #[test]
    fn buckets_end_their_minute() {
        assert_eq!(bucket(60), 60);
        assert_eq!(bucket(61), 120);
        // A hostile expiry near the end of time neither overflows nor wraps.
        assert!(bucket(u64::MAX) >= u64::MAX - 60);
    }
}
