//! Durable state: every ban and allow entry with what the kernel maps cannot
//! hold (free-text reason, origin, wall-clock expiry, offence count). Written
//! before the CLI is told "done"; replayed into the kernel on start.
//!
//! [`Store`] is the small interface the agent uses; [`RedbStore`] keeps it in
//! an embedded database on disk. With a fleet, `cluster::ClusterStore`
//! wraps it behind the same trait and shares local bans through etcd.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use redb::{Database, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use tollgate_common::BanReason;

/// A ban as the agent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The banned address or prefix.
    pub cidr: IpNet,
    /// Why: stored and shown by its name (`manual`, `rate-limit`, ...).
    #[serde(with = "crate::proto::ban_kind")]
    pub kind: BanReason,
    /// Free text (the operator's `--reason`, or the rule that fired).
    pub reason: String,
    /// Who made it (`cli`, `agent`, a feed name, `crowdsec`).
    pub origin: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The same instant in Unix milliseconds, when known (see
    /// [`Decision::created_at_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
    /// Unix seconds; `None` = until removed.
    pub expires_at: Option<u64>,
    /// How many times this client has been banned (drives TTL escalation).
    #[serde(default)]
    pub offences: u32,
    /// The fleet host that decided it, when another agent of the fleet did
    /// (received through the cluster store); `None` = this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The other decisions on this prefix (a feed's beside a manual ban,
    /// CrowdSec's beside the engine's): the fields above are the strongest
    /// decision (latest expiry, none = latest), the one the kernel enforces;
    /// lifting it leaves these. Absent in records written before decisions
    /// were kept apart, and when there is only one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Decision>,
}

/// One decision on a prefix: who banned it, why, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Why, by name.
    #[serde(with = "crate::proto::ban_kind")]
    pub kind: BanReason,
    /// Free text.
    pub reason: String,
    /// Who made it (`cli`, `agent`, a feed name, `crowdsec`).
    pub origin: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The same instant in Unix milliseconds, when known: tells a ban made
    /// in the same second as an operator's unban elsewhere apart from one
    /// made before it ([`Self::created_ms`]). Absent in records of agents
    /// that predate it and in decisions restored from the local store (its
    /// layout keeps seconds): those compare in whole seconds, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
    /// Unix seconds; `None` = until removed.
    pub expires_at: Option<u64>,
    /// The fleet host that decided it, when another one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Decision {
    /// Whether `other` comes from the same decider (origin and host): a
    /// decider has at most one decision per prefix, its newer one replaces it.
    #[must_use]
    pub fn same_source(&self, other: &Decision) -> bool {
        self.origin == other.origin && self.host == other.host
    }

    /// When it was made, in Unix milliseconds: `created_at_ms` when it
    /// falls in the second `created_at` says (otherwise it is ignored: a
    /// record cannot move itself out of its second), else the start of that
    /// second.
    #[must_use]
    pub fn created_ms(&self) -> u64 {
        exact_ms(self.created_at, self.created_at_ms)
            .unwrap_or(self.created_at.saturating_mul(1000))
    }
}

/// `ms` when it lies within the Unix second `secs`.
#[must_use]
pub fn exact_ms(secs: u64, ms: Option<u64>) -> Option<u64> {
    ms.filter(|m| m / 1000 == secs)
}

impl BanRecord {
    /// The strongest decision (the record's own fields).
    #[must_use]
    pub fn decision(&self) -> Decision {
        Decision {
            kind: self.kind,
            reason: self.reason.clone(),
            origin: self.origin.clone(),
            created_at: self.created_at,
            created_at_ms: self.created_at_ms,
            expires_at: self.expires_at,
            host: self.host.clone(),
        }
    }

    /// Every decision, strongest first.
    pub fn decisions(&self) -> impl Iterator<Item = Decision> + '_ {
        std::iter::once(self.decision()).chain(self.also.iter().cloned())
    }

    /// Whether any decision matches `f`.
    pub fn any_decision(&self, f: impl Fn(&Decision) -> bool) -> bool {
        f(&self.decision()) || self.also.iter().any(f)
    }

    /// The record holding `decisions` (any order), the strongest on top:
    /// no expiry first, then the latest expiry; on a tie the earlier in
    /// `decisions` wins. `None` when there is none.
    #[must_use]
    pub fn from_decisions(
        cidr: IpNet,
        offences: u32,
        mut decisions: Vec<Decision>,
    ) -> Option<Self> {
        decisions.sort_by_key(|d| std::cmp::Reverse(d.expires_at.unwrap_or(u64::MAX)));
        let mut it = decisions.into_iter();
        let top = it.next()?;
        Some(Self::from_top(cidr, offences, top, it.collect()))
    }

    /// The record with `top` as its strongest decision and `also` beside
    /// it, as given (no reordering).
    fn from_top(cidr: IpNet, offences: u32, top: Decision, also: Vec<Decision>) -> Self {
        Self {
            cidr,
            kind: top.kind,
            reason: top.reason,
            origin: top.origin,
            created_at: top.created_at,
            created_at_ms: top.created_at_ms,
            expires_at: top.expires_at,
            offences,
            host: top.host,
            also,
        }
    }

    /// `self` (a new decision, or a decider's new set) laid over `old`, the
    /// record already held for the prefix: the decisions of `old` from other
    /// deciders are kept, those from the same ones replaced. The new
    /// decisions win ties.
    #[must_use]
    pub fn over(self, old: Option<&BanRecord>) -> BanRecord {
        let Some(old) = old else {
            return self;
        };
        let mine: Vec<Decision> = self.decisions().collect();
        let kept = old
            .decisions()
            .filter(|d| !mine.iter().any(|m| m.same_source(d)));
        let all: Vec<Decision> = mine.iter().cloned().chain(kept).collect();
        let (cidr, offences) = (self.cidr, self.offences);
        Self::from_decisions(cidr, offences, all).unwrap_or(self)
    }

    /// The record without the decisions matching `f`: `None` when none
    /// would be left.
    #[must_use]
    pub fn without(&self, f: impl Fn(&Decision) -> bool) -> Option<BanRecord> {
        let left: Vec<Decision> = self.decisions().filter(|d| !f(d)).collect();
        Self::from_decisions(self.cidr, self.offences, left)
    }

    /// Only the decisions matching `f` (an origin's view of the prefix).
    #[must_use]
    pub fn only(&self, f: impl Fn(&Decision) -> bool) -> Option<BanRecord> {
        self.without(|d| !f(d))
    }

    /// The soonest expiry among the decisions (when the record next changes).
    #[must_use]
    pub fn next_expiry(&self) -> Option<u64> {
        self.decisions().filter_map(|d| d.expires_at).min()
    }
}

/// What [`Store::ban_stream`] hands over.
#[derive(Debug)]
pub enum BanStream<'a> {
    /// Record number `.0`: what the bans naming it share (its `cidr` is any
    /// one of theirs).
    Record(u32, BanRecord),
    /// Banned prefixes, each with the number of its record.
    Bans(&'a [(IpNet, u32)]),
    /// A row that cannot be decoded, skipped: the rows after it are still
    /// handed over. `net` is its key's prefix when the key is one (its
    /// kernel entry, if any, is then not the store's to adopt).
    Skipped {
        /// The row's key as stored.
        key: String,
        /// The key as a prefix, when it parses.
        net: Option<IpNet>,
        /// Why it cannot be decoded.
        error: String,
    },
}

/// An allowlist entry as the agent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRecord {
    /// The allowed address or prefix.
    pub cidr: IpNet,
    /// Free text.
    pub reason: String,
    /// Who made it.
    pub origin: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// Rate limits changed at run time (`tollgate limits set/clear`); when
/// present they win over the policy file's `rate_limit` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsRecord {
    /// IPv6 aggregation prefix.
    pub ipv6_prefix: u8,
    /// Limits for ports without their own.
    pub default: Option<crate::limits::LimitSpec>,
    /// Limits per destination port.
    pub ports: std::collections::BTreeMap<u16, crate::limits::LimitSpec>,
}

/// A client's offence history (drives ban-TTL escalation; outlives bans).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffenceRecord {
    /// Bans issued so far.
    pub count: u32,
    /// Unix seconds of the last one.
    pub last: u64,
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (unreadable, corrupt, locked).
    #[error("failed to open state database {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// A read or write failed.
    #[error("state database {op} failed: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error, rendered.
        message: String,
    },
    /// A record did not decode.
    #[error("state database holds an unreadable record for {key}")]
    Decode {
        /// The key.
        key: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the agent needs from durable state.
pub trait Store: Send {
    /// Writes (or replaces) bans, durably, in one transaction.
    ///
    /// # Errors
    /// When the write fails; nothing is written then.
    fn put_bans(&mut self, records: &[BanRecord]) -> Result<()>;
    /// Removes bans, durably.
    ///
    /// # Errors
    /// When the write fails.
    fn remove_bans(&mut self, cidrs: &[IpNet]) -> Result<()>;
    /// Removes bans here without telling the fleet (expiry, which every
    /// host applies itself; a removal received from the fleet; `block rm
    /// --local`). The embedded store has no fleet: the same as
    /// [`Self::remove_bans`].
    ///
    /// # Errors
    /// When the write fails.
    fn forget_bans(&mut self, cidrs: &[IpNet]) -> Result<()> {
        self.remove_bans(cidrs)
    }
    /// Records bans here without telling the fleet (what the fleet itself
    /// sent, laid over this host's own decisions). The embedded store has
    /// no fleet: the same as [`Self::put_bans`].
    ///
    /// # Errors
    /// When the write fails.
    fn keep_bans(&mut self, records: &[BanRecord]) -> Result<()> {
        self.put_bans(records)
    }
    /// Records what the fleet sent ([`Self::keep_bans`]) with the offence
    /// counts it raised, durably, in one transaction (the default in two).
    ///
    /// # Errors
    /// When the write fails.
    fn keep_fleet(
        &mut self,
        records: &[BanRecord],
        offences: &[(IpNet, OffenceRecord)],
    ) -> Result<()> {
        if !records.is_empty() {
            self.keep_bans(records)?;
        }
        if !offences.is_empty() {
            self.put_offences(offences)?;
        }
        Ok(())
    }
    /// Every ban.
    ///
    /// # Errors
    /// When the read fails or a record is unreadable.
    fn bans(&self) -> Result<Vec<BanRecord>>;
    /// Records an allow entry here without telling the fleet (one the
    /// fleet sent). The embedded store has no fleet: [`Self::put_allow`].
    ///
    /// # Errors
    /// When the write fails.
    fn keep_allow(&mut self, record: &AllowRecord) -> Result<()> {
        self.put_allow(record)
    }
    /// Removes an allow entry here without telling the fleet.
    ///
    /// # Errors
    /// When the write fails.
    fn forget_allow(&mut self, cidr: &IpNet) -> Result<()> {
        self.remove_allow(cidr)
    }
    /// Every ban, handed to `f` in batches of at most `batch` records (a
    /// restore of millions never holds them all at once). The default reads
    /// them all first; stores that can stream override it.
    ///
    /// # Errors
    /// When the read fails or a record is unreadable; the batches before
    /// it were handed over.
    fn ban_batches(&self, batch: usize, f: &mut dyn FnMut(Vec<BanRecord>)) -> Result<()> {
        let mut all = self.bans()?.into_iter().peekable();
        while all.peek().is_some() {
            f(all.by_ref().take(batch.max(1)).collect());
        }
        Ok(())
    }
    /// Every ban, for a restore: each distinct record (everything but the
    /// prefix) handed once as [`BanStream::Record`] under a number, then the
    /// prefixes in batches of at most `batch`, each naming its record's
    /// number. A number stays valid until it is handed again with another
    /// record; a ban always names one handed before it. A million bans made
    /// by one import are then one record decoded, not a million. The default
    /// numbers each record of [`Self::ban_batches`] on its own.
    ///
    /// # Errors
    /// As [`Self::ban_batches`].
    fn ban_stream(&self, batch: usize, f: &mut dyn FnMut(BanStream<'_>)) -> Result<()> {
        let mut nets = Vec::new();
        self.ban_batches(batch, &mut |recs| {
            nets.clear();
            for (i, rec) in recs.into_iter().enumerate() {
                let id = u32::try_from(i).unwrap_or(u32::MAX);
                nets.push((rec.cidr, id));
                f(BanStream::Record(id, rec));
            }
            f(BanStream::Bans(&nets));
        })
    }
    /// Writes `put` and removes `remove` in one transaction (feed imports:
    /// a group is replaced all at once or not at all). The default does it
    /// in two; stores that can should override it.
    ///
    /// # Errors
    /// When the write fails.
    fn apply_bans(&mut self, put: &[BanRecord], remove: &[IpNet]) -> Result<()> {
        self.put_bans(put)?;
        self.remove_bans(remove)
    }
    /// Like [`Self::apply_bans`], appending `queued` (changes on their way
    /// to the fleet, by sequence number, opaque here) to the outbox in the
    /// same transaction: an acknowledged local ban is then either in etcd or
    /// in the outbox, whatever happens to the process. Stores without an
    /// outbox keep nothing of `queued` (the fleet queue stays in memory).
    ///
    /// # Errors
    /// When the write fails; nothing is written then.
    fn apply_bans_queued(
        &mut self,
        put: &[BanRecord],
        remove: &[IpNet],
        queued: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        let _ = queued;
        self.apply_bans(put, remove)
    }
    /// Writes the allow entry `put` or removes the one on `remove`,
    /// appending `queued` to the outbox in the same transaction (as
    /// [`Self::apply_bans_queued`] does for bans). The default does it in
    /// two; stores that can should override it.
    ///
    /// # Errors
    /// When the write fails.
    fn apply_allow_queued(
        &mut self,
        put: Option<&AllowRecord>,
        remove: Option<&IpNet>,
        queued: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        if let Some(r) = put {
            self.put_allow(r)?;
        }
        if let Some(c) = remove {
            self.remove_allow(c)?;
        }
        self.apply_bans_queued(&[], &[], queued)
    }
    /// Every outbox entry, in sequence order.
    ///
    /// # Errors
    /// When the read fails.
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(Vec::new())
    }
    /// Drops the outbox entries up to `upto` (etcd has them).
    ///
    /// # Errors
    /// When the write fails.
    fn outbox_ack(&mut self, upto: u64) -> Result<()> {
        let _ = upto;
        Ok(())
    }
    /// Writes (or replaces) an allow entry.
    ///
    /// # Errors
    /// When the write fails.
    fn put_allow(&mut self, record: &AllowRecord) -> Result<()>;
    /// Removes an allow entry.
    ///
    /// # Errors
    /// When the write fails.
    fn remove_allow(&mut self, cidr: &IpNet) -> Result<()>;
    /// Every allow entry.
    ///
    /// # Errors
    /// When the read fails or a record is unreadable.
    fn allows(&self) -> Result<Vec<AllowRecord>>;
    /// Replaces the run-time limits.
    ///
    /// # Errors
    /// When the write fails.
    fn put_limits(&mut self, record: &LimitsRecord) -> Result<()>;
    /// The run-time limits, if ever set.
    ///
    /// # Errors
    /// When the read fails or the record is unreadable.
    fn limits(&self) -> Result<Option<LimitsRecord>>;
    /// Records a client's offence history.
    ///
    /// # Errors
    /// When the write fails.
    fn put_offence(&mut self, cidr: &IpNet, record: &OffenceRecord) -> Result<()>;
    /// Records many clients' offence histories (one transaction where the
    /// store can: the fleet's counts come by the thousand with a full read).
    ///
    /// # Errors
    /// When the write fails.
    fn put_offences(&mut self, batch: &[(IpNet, OffenceRecord)]) -> Result<()> {
        batch.iter().try_for_each(|(c, r)| self.put_offence(c, r))
    }
    /// Every client's offence history.
    ///
    /// # Errors
    /// When the read fails or a record is unreadable.
    fn offences(&self) -> Result<Vec<(IpNet, OffenceRecord)>>;
    /// `None` while writes work; otherwise why the store is degraded.
    fn health(&self) -> Option<String> {
        None
    }
    /// How many writes have failed since the store was opened.
    fn failures(&self) -> u64 {
        0
    }
    /// Tries to bring a degraded store back (reopen, probe write); true
    /// when writes work.
    fn retry(&mut self) -> bool {
        self.health().is_none()
    }
}

const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");
const ALLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("allows");
const LIMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("limits");
const OFFENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("offences");

/// Writes `rows` (key, encoded value) into `table` within `w`.
fn insert_rows(
    w: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    rows: &[(String, Vec<u8>)],
) -> Result<()> {
    let mut t = w.open_table(table).map_err(|e| io("write")(&e))?;
    for (k, v) in rows {
        t.insert(k.as_str(), v.as_slice())
            .map_err(|e| io("write")(&e))?;
    }
    Ok(())
}
/// Fleet changes not yet in etcd, by sequence number.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The embedded on-disk store (`STATE_DIR/state.redb`).
///
/// A failed write (a full disk, an I/O error) leaves redb refusing every
/// later transaction until the database is reopened; so a failed write is
/// logged, the store reports itself degraded ([`Store::health`]), the
/// database is closed, and the next write (or [`Store::retry`], called
/// periodically by the agent) reopens it. Health comes back with the first
/// write that succeeds.
pub struct RedbStore {
    db: Option<Database>,
    path: PathBuf,
    degraded: Option<String>,
    failures: u64,
}

fn io(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io {
        op,
        message: e.to_string(),
    }
}

/// The database's page cache (reads and write buffer together).
const CACHE_BYTES: usize = 16 << 20;

/// Opens (or creates) the database file with its tables, owner-only.
fn open_db(path: &Path) -> Result<Database> {
    // Create the file 0600 before redb opens it (redb would use the umask).
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("open")(&format!("{}: {e}", path.display())))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("open")(&format!("{}: {e}", path.display())))?;
    }
    // redb caches up to 1 GiB of pages by default: a restore reading a
    // million records would keep most of the file in memory for good.
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let w = db.begin_write().map_err(|e| io("open")(&e))?;
    w.open_table(BANS).map_err(|e| io("open")(&e))?;
    w.open_table(ALLOWS).map_err(|e| io("open")(&e))?;
    w.open_table(LIMITS).map_err(|e| io("open")(&e))?;
    w.open_table(OFFENCES).map_err(|e| io("open")(&e))?;
    w.open_table(OUTBOX).map_err(|e| io("open")(&e))?;
    w.commit().map_err(|e| io("open")(&e))?;
    Ok(db)
}

impl RedbStore {
    /// Writes a ban row as given, decodable or not (tests of damaged
    /// stores).
    #[cfg(test)]
    pub(crate) fn put_raw_ban(&mut self, key: &str, value: &[u8]) {
        self.write("raw row", |w| {
            let mut t = w.open_table(BANS).map_err(|e| io("write")(&e))?;
            t.insert(key, value).map_err(|e| io("write")(&e))?;
            Ok(())
        })
        .unwrap();
    }

    /// A ban row's stored bytes (tests of damaged stores).
    #[cfg(test)]
    pub(crate) fn raw_ban(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.db().ok()?.begin_read().ok()?;
        let t = r.open_table(BANS).ok()?;
        t.get(key).ok()?.map(|v| v.value().to_vec())
    }

    /// File name inside the state directory.
    pub const FILE: &'static str = "state.redb";

    /// Records removed at once that make the file worth compacting.
    pub const COMPACT_AFTER: usize = 10_000;

    /// Opens (or creates) the database in `dir`.
    ///
    /// # Errors
    /// When the file is unreadable or corrupt.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let db = open_db(&path)?;
        Ok(Self {
            db: Some(db),
            path,
            degraded: None,
            failures: 0,
        })
    }

    fn db(&self) -> Result<&Database> {
        self.db.as_ref().ok_or_else(|| StoreError::Io {
            op: "read",
            message: format!(
                "the database is closed after a failed write ({})",
                self.degraded.as_deref().unwrap_or("reopening")
            ),
        })
    }

    /// Runs one write transaction; on failure logs it, marks the store
    /// degraded and closes the database so the next write reopens it.
    fn write(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        self.write_as(what, redb::Durability::Immediate, f)
    }

    /// [`Self::write`] committed with `durability`.
    fn write_as(
        &mut self,
        what: &'static str,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        let r = self.try_write_as(durability, f);
        match &r {
            Ok(()) => {
                if let Some(was) = self.degraded.take() {
                    tracing::info!(
                        path = %self.path.display(),
                        "state store writes work again (were failing: {was})"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "state store write failed ({what}): {e}");
                self.degraded = Some(format!("degraded: writes failing: {e}"));
                self.failures += 1;
                // redb refuses every transaction after an I/O error until it
                // is reopened: close it now, reopen on the next attempt.
                self.db = None;
            }
        }
        r
    }

    fn try_write_as(
        &mut self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        if self.db.is_none() {
            self.db = Some(open_db(&self.path)?);
        }
        let db = self.db()?;
        let mut w = db.begin_write().map_err(|e| io("write")(&e))?;
        w.set_durability(durability);
        f(&w)?;
        w.commit().map_err(|e| io("commit")(&e))
    }

    /// After a removal of `removed` records: gives the space back to the
    /// file system once a large batch went (a lifted feed, an expired wave),
    /// since the database file otherwise never shrinks. Compaction rewrites
    /// the live pages, so it is kept to batches worth it; a failure only
    /// leaves the file as large as it was.
    fn compact_after(&mut self, removed: usize) {
        if removed < Self::COMPACT_AFTER {
            return;
        }
        let before = std::fs::metadata(&self.path).map(|m| m.len()).ok();
        if let Some(db) = self.db.as_mut() {
            let t = std::time::Instant::now();
            match db.compact() {
                Ok(_) => tracing::info!(
                    removed,
                    bytes_before = before,
                    bytes_after = std::fs::metadata(&self.path).map(|m| m.len()).ok(),
                    took = ?t.elapsed(),
                    "state store compacted"
                ),
                Err(e) => {
                    tracing::warn!("state store compaction failed (the file keeps its size): {e}")
                }
            }
        }
    }

    fn read_all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>> {
        let r = self.db()?.begin_read().map_err(|e| io("read")(&e))?;
        let t = r.open_table(table).map_err(|e| io("read")(&e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| io("read")(&e))? {
            let (k, v) = row.map_err(|e| io("read")(&e))?;
            let rec = serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
                key: k.value().to_owned(),
                source,
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    fn put_one<T: Serialize>(
        &mut self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let v = serde_json::to_vec(value).map_err(|e| io("encode")(&e))?;
        self.write("record", |w| {
            let mut t = w.open_table(table).map_err(|e| io("write")(&e))?;
            t.insert(key, v.as_slice()).map_err(|e| io("write")(&e))?;
            Ok(())
        })
    }
}

/// First byte of a ban record in the compact binary layout (version 1).
/// Earlier versions wrote JSON, which starts with `{`: both are read.
const BAN_V1: u8 = 1;

/// A ban record as stored: [`BAN_V1`], the strongest decision, the offence
/// count, then the other decisions. Numbers are LEB128, strings length and
/// bytes; about 30 bytes for an imported host against ~150 in JSON.
fn encode_ban(r: &BanRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.reason.len() + r.origin.len());
    out.push(BAN_V1);
    put_decision(&mut out, &r.decision());
    put_uint(&mut out, u64::from(r.offences));
    put_uint(&mut out, r.also.len() as u64);
    for d in &r.also {
        put_decision(&mut out, d);
    }
    out
}

fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_decision(out: &mut Vec<u8>, d: &Decision) {
    put_uint(out, u64::from(d.kind as u32));
    put_str(out, &d.reason);
    put_str(out, &d.origin);
    put_uint(out, d.created_at);
    match d.expires_at {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_uint(out, t);
        }
    }
    match &d.host {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            put_str(out, h);
        }
    }
}

/// Reads the binary layout; every length is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn uint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.uint()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    fn decision(&mut self) -> Option<Decision> {
        // A kind this version does not know reads as `manual`, as in JSON.
        let kind = u32::try_from(self.uint()?)
            .ok()
            .and_then(BanReason::from_u32);
        let reason = self.string()?;
        let origin = self.string()?;
        let created_at = self.uint()?;
        let expires_at = match self.byte()? {
            0 => None,
            1 => Some(self.uint()?),
            _ => return None,
        };
        let host = match self.byte()? {
            0 => None,
            1 => Some(self.string()?),
            _ => return None,
        };
        Some(Decision {
            kind: kind.unwrap_or(BanReason::Manual),
            reason,
            origin,
            created_at,
            created_at_ms: None,
            expires_at,
            host,
        })
    }
}

fn decode_v1(cidr: IpNet, v: &[u8]) -> Option<BanRecord> {
    let mut r = Reader(v);
    let top = r.decision()?;
    let offences = u32::try_from(r.uint()?).ok()?;
    let n = r.uint()?;
    // Each decision takes at least 7 bytes: a count beyond that is corrupt.
    if n > r.0.len() as u64 / 7 {
        return None;
    }
    let also = (0..n).map(|_| r.decision()).collect::<Option<Vec<_>>>()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(BanRecord::from_top(cidr, offences, top, also))
}

/// A stored ban record, in either layout.
fn decode_ban(key: &str, v: &[u8]) -> Result<BanRecord> {
    let bad = |what: &str| StoreError::Decode {
        key: key.to_owned(),
        source: <serde_json::Error as serde::de::Error>::custom(what),
    };
    match v.split_first() {
        Some((&BAN_V1, rest)) => {
            let cidr: IpNet = key.parse().map_err(|_| bad("the key is no prefix"))?;
            decode_v1(cidr, rest).ok_or_else(|| bad("truncated or malformed binary record"))
        }
        _ => serde_json::from_slice(v).map_err(|source| StoreError::Decode {
            key: key.to_owned(),
            source,
        }),
    }
}

/// Free space a degraded store waits for before it tries writing again.
const MIN_FREE_BYTES: u64 = 1 << 20;

/// Key of the write probe (`retry`) in the limits table; never read back.
const PROBE_KEY: &str = "probe";

impl Store for RedbStore {
    fn health(&self) -> Option<String> {
        self.degraded.clone()
    }

    fn failures(&self) -> u64 {
        self.failures
    }

    fn retry(&mut self) -> bool {
        if self.degraded.is_none() {
            return true;
        }
        // A nearly full file system lets a tiny probe through while real
        // writes still fail: wait for some room first.
        if let Some(dir) = self.path.parent()
            && let Ok(st) = nix::sys::statvfs::statvfs(dir)
        {
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            if free < MIN_FREE_BYTES {
                self.degraded = Some(format!(
                    "degraded: writes failing, {} KiB free on the file system of {}",
                    free / 1024,
                    dir.display()
                ));
                return false;
            }
        }
        // A real write, so "healthy" means writes work, not just the open.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let r = self.write("probe", |w| {
            let mut t = w.open_table(OFFENCES).map_err(|e| io("write")(&e))?;
            let v = now.to_le_bytes();
            t.insert(PROBE_KEY, v.as_slice())
                .map_err(|e| io("write")(&e))?;
            t.remove(PROBE_KEY).map_err(|e| io("write")(&e))?;
            Ok(())
        });
        r.is_ok()
    }

    fn put_bans(&mut self, records: &[BanRecord]) -> Result<()> {
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            rows.push((r.cidr.to_string(), encode_ban(r)));
        }
        self.write("ban", |w| insert_rows(w, BANS, &rows))
    }

    fn remove_bans(&mut self, cidrs: &[IpNet]) -> Result<()> {
        self.write("ban removal", |w| {
            let mut t = w.open_table(BANS).map_err(|e| io("write")(&e))?;
            for c in cidrs {
                t.remove(c.to_string().as_str())
                    .map_err(|e| io("write")(&e))?;
            }
            Ok(())
        })?;
        self.compact_after(cidrs.len());
        Ok(())
    }

    fn bans(&self) -> Result<Vec<BanRecord>> {
        let mut all = Vec::new();
        self.ban_batches(usize::MAX, &mut |b| all.extend(b))?;
        Ok(all)
    }

    fn ban_batches(&self, batch: usize, f: &mut dyn FnMut(Vec<BanRecord>)) -> Result<()> {
        let r = self.db()?.begin_read().map_err(|e| io("read")(&e))?;
        let t = r.open_table(BANS).map_err(|e| io("read")(&e))?;
        let batch = batch.max(1);
        let room = batch.min(1 << 16);
        let mut out = Vec::with_capacity(room);
        for row in t.iter().map_err(|e| io("read")(&e))? {
            let (k, v) = row.map_err(|e| io("read")(&e))?;
            out.push(decode_ban(k.value(), v.value())?);
            if out.len() >= batch {
                f(std::mem::replace(&mut out, Vec::with_capacity(room)));
            }
        }
        if !out.is_empty() {
            f(out);
        }
        Ok(())
    }

    fn ban_stream(&self, batch: usize, f: &mut dyn FnMut(BanStream<'_>)) -> Result<()> {
        // The rows are read and decoded on a thread of their own while the
        // caller writes the previous batches to the kernel; at most
        // `IN_FLIGHT` batches wait between the two, so memory stays bounded.
        const IN_FLIGHT: usize = 2;
        let db = self.db()?;
        let batch = batch.max(1);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Streamed>>(IN_FLIGHT);
            let reader = std::thread::Builder::new()
                .name("tg-store-read".into())
                .spawn_scoped(scope, move || read_bans(db, batch, &tx))
                .map_err(|e| io("read")(&e))?;
            for chunk in rx {
                let mut nets: Vec<(IpNet, u32)> = Vec::new();
                for item in chunk {
                    match item {
                        Streamed::Record(id, rec) => f(BanStream::Record(id, rec)),
                        Streamed::Bans(b) => {
                            nets = b;
                            f(BanStream::Bans(&nets));
                        }
                        Streamed::Skipped { key, net, error } => {
                            f(BanStream::Skipped { key, net, error });
                        }
                    }
                }
                drop(nets);
            }
            reader
                .join()
                .unwrap_or_else(|_| Err(io("read")(&"the store reader thread failed")))
        })
    }

    fn apply_bans(&mut self, put: &[BanRecord], remove: &[IpNet]) -> Result<()> {
        self.apply_bans_queued(put, remove, &[])
    }

    fn apply_bans_queued(
        &mut self,
        put: &[BanRecord],
        remove: &[IpNet],
        queued: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        // Keys in order: a B-tree takes sorted batches several times faster
        // (what makes a million-entry feed import take seconds, not tens).
        let mut rows = Vec::with_capacity(put.len());
        for r in put {
            rows.push((r.cidr.to_string(), encode_ban(r)));
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut gone: Vec<String> = remove.iter().map(ToString::to_string).collect();
        gone.sort_unstable();
        self.write("ban batch", |w| {
            let mut t = w.open_table(BANS).map_err(|e| io("write")(&e))?;
            for (k, v) in &rows {
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| io("write")(&e))?;
            }
            for k in &gone {
                t.remove(k.as_str()).map_err(|e| io("write")(&e))?;
            }
            if !queued.is_empty() {
                let mut o = w.open_table(OUTBOX).map_err(|e| io("write")(&e))?;
                for (seq, v) in queued {
                    o.insert(*seq, v.as_slice()).map_err(|e| io("write")(&e))?;
                }
            }
            Ok(())
        })?;
        self.compact_after(gone.len());
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let r = self.db()?.begin_read().map_err(|e| io("read")(&e))?;
        let t = r.open_table(OUTBOX).map_err(|e| io("read")(&e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| io("read")(&e))? {
            let (k, v) = row.map_err(|e| io("read")(&e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn outbox_ack(&mut self, upto: u64) -> Result<()> {
        self.write("outbox", |w| {
            let mut t = w.open_table(OUTBOX).map_err(|e| io("write")(&e))?;
            t.retain_in(..=upto, |_, _| false)
                .map_err(|e| io("write")(&e))?;
            Ok(())
        })
    }

    fn put_allow(&mut self, record: &AllowRecord) -> Result<()> {
        self.apply_allow_queued(Some(record), None, &[])
    }

    fn remove_allow(&mut self, cidr: &IpNet) -> Result<()> {
        self.apply_allow_queued(None, Some(cidr), &[])
    }

    fn apply_allow_queued(
        &mut self,
        put: Option<&AllowRecord>,
        remove: Option<&IpNet>,
        queued: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        let v = put
            .map(|r| serde_json::to_vec(r).map_err(|e| io("encode")(&e)))
            .transpose()?;
        self.write("allow entry", |w| {
            let mut t = w.open_table(ALLOWS).map_err(|e| io("write")(&e))?;
            if let (Some(r), Some(v)) = (put, &v) {
                t.insert(r.cidr.to_string().as_str(), v.as_slice())
                    .map_err(|e| io("write")(&e))?;
            }
            if let Some(c) = remove {
                t.remove(c.to_string().as_str())
                    .map_err(|e| io("write")(&e))?;
            }
            if !queued.is_empty() {
                let mut o = w.open_table(OUTBOX).map_err(|e| io("write")(&e))?;
                for (seq, v) in queued {
                    o.insert(*seq, v.as_slice()).map_err(|e| io("write")(&e))?;
                }
            }
            Ok(())
        })
    }

    fn allows(&self) -> Result<Vec<AllowRecord>> {
        self.read_all(ALLOWS)
    }

    fn put_limits(&mut self, record: &LimitsRecord) -> Result<()> {
        self.put_one(LIMITS, "current", record)
    }

    fn limits(&self) -> Result<Option<LimitsRecord>> {
        Ok(self.read_all(LIMITS)?.into_iter().next())
    }

    fn put_offence(&mut self, cidr: &IpNet, record: &OffenceRecord) -> Result<()> {
        self.put_one(OFFENCES, &cidr.to_string(), &(cidr, record))
    }

    fn put_offences(&mut self, batch: &[(IpNet, OffenceRecord)]) -> Result<()> {
        let mut rows = Vec::with_capacity(batch.len());
        for (c, r) in batch {
            let v = serde_json::to_vec(&(c, r)).map_err(|e| io("encode")(&e))?;
            rows.push((c.to_string(), v));
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write("offences", |w| insert_rows(w, OFFENCES, &rows))
    }

    fn offences(&self) -> Result<Vec<(IpNet, OffenceRecord)>> {
        self.read_all(OFFENCES)
    }

    fn keep_fleet(
        &mut self,
        records: &[BanRecord],
        offences: &[(IpNet, OffenceRecord)],
    ) -> Result<()> {
        // Keys in order, as in `apply_bans_queued`.
        let mut bans: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|r| (r.cidr.to_string(), encode_ban(r)))
            .collect();
        bans.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut counts = Vec::with_capacity(offences.len());
        for (c, r) in offences {
            let v = serde_json::to_vec(&(c, r)).map_err(|e| io("encode")(&e))?;
            counts.push((c.to_string(), v));
        }
        counts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write_as("fleet bans", redb::Durability::Immediate, |w| {
            insert_rows(w, BANS, &bans)?;
            insert_rows(w, OFFENCES, &counts)
        })
    }
}

/// What the store's reader thread hands over (an owned [`BanStream`]).
enum Streamed {
    Record(u32, BanRecord),
    Bans(Vec<(IpNet, u32)>),
    Skipped {
        key: String,
        net: Option<IpNet>,
        error: String,
    },
}

/// Reads every ban row, numbering distinct records, and sends them in
/// order in chunks of about `batch` prefixes (see `ban_stream`). Stops
/// early when the receiver is gone.
fn read_bans(
    db: &Database,
    batch: usize,
    tx: &std::sync::mpsc::SyncSender<Vec<Streamed>>,
) -> Result<()> {
    // Records are compared by their stored bytes: equal bytes decode to
    // equal records. Bounded, so a store of a million distinct records
    // (bans the engine issued one by one) holds no million copies.
    const SHARED: u32 = 4096;
    let r = db.begin_read().map_err(|e| io("read")(&e))?;
    let t = r.open_table(BANS).map_err(|e| io("read")(&e))?;
    // One lookup per row: foldhash (seeded from the kernel), not SipHash.
    let mut seen: std::collections::HashMap<Vec<u8>, u32, crate::netmap::OsSeeded> =
        std::collections::HashMap::default();
    let mut next = 0u32;
    let mut out: Vec<(IpNet, u32)> = Vec::with_capacity(batch.min(1 << 16));
    let mut chunk: Vec<Streamed> = Vec::new();
    // Hands `out` (and the records before it) over; `false`: nobody reads.
    let flush = |chunk: &mut Vec<Streamed>, out: &mut Vec<(IpNet, u32)>| {
        if !out.is_empty() {
            chunk.push(Streamed::Bans(std::mem::replace(
                out,
                Vec::with_capacity(batch.min(1 << 16)),
            )));
        }
        chunk.is_empty() || tx.send(std::mem::take(chunk)).is_ok()
    };
    for row in t.iter().map_err(|e| io("read")(&e))? {
        // A row the database cannot read ends the stream (what follows is
        // unknown); a row that reads but does not decode is skipped.
        let (k, v) = row.map_err(|e| io("read")(&e))?;
        let (key, val) = (k.value(), v.value());
        let skip = |chunk: &mut Vec<Streamed>, error: String| {
            chunk.push(Streamed::Skipped {
                key: key.to_owned(),
                net: key.parse().ok(),
                error,
            });
        };
        if let Some(&id) = seen.get(val) {
            match key.parse() {
                Ok(cidr) => out.push((cidr, id)),
                Err(_) => skip(&mut chunk, "the key is no prefix".into()),
            }
        } else {
            let rec = match decode_ban(key, val) {
                Ok(rec) => rec,
                Err(e) => {
                    skip(&mut chunk, e.to_string());
                    continue;
                }
            };
            if next == SHARED {
                // Numbers are reused from here: hand over the bans naming
                // the old ones first.
                if !flush(&mut chunk, &mut out) {
                    return Ok(());
                }
                seen.clear();
                next = 0;
            }
            let id = next;
            next += 1;
            // A JSON record holds its prefix: never shared.
            if val.first() == Some(&BAN_V1) {
                seen.insert(val.to_vec(), id);
            }
            out.push((rec.cidr, id));
            chunk.push(Streamed::Record(id, rec));
        }
        // Skipped rows count too: a store of bad rows is not held whole.
        if (out.len() >= batch || chunk.len() >= batch) && !flush(&mut chunk, &mut out) {
            return Ok(());
        }
    }
    flush(&mut chunk, &mut out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ban_kind;

    fn ban(c: &str) -> BanRecord {
        BanRecord {
            cidr: c.parse().unwrap(),
            kind: BanReason::Manual,
            reason: "test".into(),
            origin: "cli".into(),
            created_at: 1,
            created_at_ms: None,
            expires_at: Some(100),
            offences: 1,
            host: None,
            also: Vec::new(),
        }
    }

    #[test]
    fn a_large_removal_gives_the_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        let recs: Vec<BanRecord> = (0..40_000u32)
            .map(|i| ban(&format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i))))
            .collect();
        s.apply_bans(&recs, &[]).unwrap();
        let size = || {
            std::fs::metadata(dir.path().join(RedbStore::FILE))
                .unwrap()
                .len()
        };
        let full = size();
        let all: Vec<IpNet> = recs.iter().map(|r| r.cidr).collect();
        s.apply_bans(&[], &all).unwrap();
        let empty = size();
        assert!(empty * 4 < full, "{full} -> {empty} bytes");
        assert!(s.bans().unwrap().is_empty());
        drop(s);
        assert!(
            RedbStore::open(dir.path())
                .unwrap()
                .bans()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn fleet_bans_and_their_offence_counts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let count = OffenceRecord { count: 2, last: 1 };
        let net: IpNet = "198.18.0.2/32".parse().unwrap();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.keep_fleet(&[ban("198.18.0.1/32")], &[]).unwrap();
            s.keep_fleet(&[ban("198.18.0.2/32")], &[(net, count.clone())])
                .unwrap();
            assert_eq!(s.bans().unwrap().len(), 2);
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            s.bans().unwrap(),
            vec![ban("198.18.0.1/32"), ban("198.18.0.2/32")]
        );
        assert_eq!(s.offences().unwrap(), vec![(net, count)]);
    }

    #[test]
    fn the_outbox_survives_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.apply_bans_queued(
                &[ban("198.18.0.1/32")],
                &[],
                &[(1, b"a".to_vec()), (2, b"b".to_vec())],
            )
            .unwrap();
            s.apply_bans_queued(&[], &[], &[(3, b"c".to_vec())])
                .unwrap();
        }
        let mut s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.bans().unwrap(), vec![ban("198.18.0.1/32")]);
        assert_eq!(s.outbox().unwrap().len(), 3);
        s.outbox_ack(2).unwrap();
        drop(s);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.outbox().unwrap(), vec![(3, b"c".to_vec())]);
    }

    #[test]
    fn an_allow_entry_and_its_outbox_row_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let a = AllowRecord {
            cidr: "198.18.9.0/24".parse().unwrap(),
            reason: "ops".into(),
            origin: "cli".into(),
            created_at: 5,
        };
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.apply_allow_queued(Some(&a), None, &[(1, b"a".to_vec())])
                .unwrap();
        }
        let mut s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            (s.allows().unwrap(), s.outbox().unwrap()),
            (vec![a.clone()], vec![(1, b"a".to_vec())])
        );
        s.apply_allow_queued(None, Some(&a.cidr), &[(2, b"b".to_vec())])
            .unwrap();
        assert!(s.allows().unwrap().is_empty());
        assert_eq!(s.outbox().unwrap().len(), 2);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.put_bans(&[ban("198.18.0.1/32"), ban("fd00::/48")])
                .unwrap();
            s.put_allow(&AllowRecord {
                cidr: "198.18.9.0/24".parse().unwrap(),
                reason: "ops".into(),
                origin: "cli".into(),
                created_at: 5,
            })
            .unwrap();
            s.remove_bans(&["fd00::/48".parse().unwrap()]).unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.bans().unwrap(), vec![ban("198.18.0.1/32")]);
        assert_eq!(s.allows().unwrap().len(), 1);
    }

    /// Records as earlier versions wrote them (kind as a plain string) read
    /// back as the enum and are written again byte for byte.
    #[test]
    fn stored_ban_kinds_round_trip() {
        for (name, kind) in [
            ("manual", BanReason::Manual),
            ("rate-limit", BanReason::RateLimit),
            ("policy", BanReason::Policy),
            ("feed", BanReason::Feed),
            ("crowdsec", BanReason::Crowdsec),
        ] {
            let stored = format!(
                r#"{{"cidr":"198.18.0.1/32","kind":"{name}","reason":"r","origin":"cli","created_at":1,"expires_at":null,"offences":2}}"#
            );
            let rec: BanRecord = serde_json::from_str(&stored).unwrap();
            assert_eq!(rec.kind, kind);
            assert_eq!(serde_json::to_string(&rec).unwrap(), stored);
        }
        assert_eq!(ban_kind::ALL.len(), 5);
        for k in ban_kind::ALL {
            assert_eq!(ban_kind::parse(k.name()), Some(k));
            assert_eq!(BanReason::from_u32(k as u32), Some(k));
        }
    }

    /// A kind this version does not know (a newer one wrote it) reads as
    /// `manual` instead of making the whole store unreadable.
    #[test]
    fn an_unknown_stored_kind_reads_as_manual() {
        let rec: BanRecord = serde_json::from_str(
            r#"{"cidr":"198.18.0.1/32","kind":"geo","reason":"r","origin":"x","created_at":1,"expires_at":null}"#,
        )
        .unwrap();
        assert_eq!(rec.kind, BanReason::Manual);
        assert_eq!(rec.offences, 0);
    }

    #[test]
    fn stored_records_read_back_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        let rec = BanRecord {
            kind: BanReason::RateLimit,
            ..ban("198.18.0.2/32")
        };
        s.put_bans(std::slice::from_ref(&rec)).unwrap();
        drop(s);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.bans().unwrap(), vec![rec]);
    }

    /// Several decisions on one prefix are one record: stored, read back
    /// through the database, and the strongest stays on top.
    #[test]
    fn decisions_round_trip_and_the_strongest_leads() {
        let feed = BanRecord {
            kind: BanReason::Feed,
            origin: "spamhaus".into(),
            expires_at: None,
            ..ban("198.18.0.3/32")
        };
        let manual = ban("198.18.0.3/32");
        let both = manual.clone().over(Some(&feed));
        assert_eq!((both.origin.as_str(), both.also.len()), ("spamhaus", 1));
        assert_eq!(both.next_expiry(), Some(100));
        // The same decider replaces its own decision.
        let again = BanRecord {
            expires_at: Some(500),
            ..manual
        }
        .over(Some(&both));
        assert_eq!(again.also.len(), 1);
        assert_eq!(again.also[0].expires_at, Some(500));
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        s.put_bans(std::slice::from_ref(&again)).unwrap();
        drop(s);
        let back = RedbStore::open(dir.path()).unwrap().bans().unwrap();
        assert_eq!(back, vec![again.clone()]);
        let rest = again.without(|d| d.origin == "spamhaus").unwrap();
        assert_eq!((rest.origin.as_str(), rest.expires_at), ("cli", Some(500)));
        assert!(rest.without(|d| d.origin == "cli").is_none());
    }

    /// A store written by an earlier version (every ban as JSON) opens with
    /// every ban as it was; bans written now take the binary layout, and
    /// both kinds read back side by side after a reopen.
    #[test]
    fn a_store_of_json_records_keeps_every_ban() {
        let dir = tempfile::tempdir().unwrap();
        let mut old: Vec<BanRecord> = (0..300u32)
            .map(|i| ban(&format!("{}/32", std::net::Ipv4Addr::from(0xc612_0000 + i))))
            .collect();
        old.push(BanRecord {
            host: Some("edge-2".into()),
            also: vec![Decision {
                kind: BanReason::Feed,
                reason: "listed".into(),
                origin: "spamhaus".into(),
                created_at: 3,
                created_at_ms: None,
                expires_at: None,
                host: None,
            }],
            ..ban("fd00:7467::/48")
        });
        {
            let db = redb::Database::create(dir.path().join(RedbStore::FILE)).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(BANS).unwrap();
                for r in &old {
                    let v = serde_json::to_vec(r).unwrap();
                    t.insert(r.cidr.to_string().as_str(), v.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let mut s = RedbStore::open(dir.path()).unwrap();
        let sorted = |mut v: Vec<BanRecord>| {
            v.sort_by_key(|r| r.cidr);
            v
        };
        assert_eq!(sorted(s.bans().unwrap()), sorted(old.clone()));
        let new = BanRecord {
            kind: BanReason::RateLimit,
            reason: "ünïcode reason".into(),
            expires_at: Some(u64::MAX),
            offences: u32::MAX,
            ..ban("fd00::9/128")
        };
        s.put_bans(std::slice::from_ref(&new)).unwrap();
        drop(s);
        let s = RedbStore::open(dir.path()).unwrap();
        let mut all = old;
        all.push(new);
        assert_eq!(sorted(s.bans().unwrap()), sorted(all.clone()));
        let mut batches = 0;
        let mut streamed = Vec::new();
        s.ban_batches(100, &mut |b| {
            assert!(b.len() <= 100);
            batches += 1;
            streamed.extend(b);
        })
        .unwrap();
        assert_eq!((batches, sorted(streamed)), (4, sorted(all)));
    }

    /// The binary layout is small, exact, and a damaged record is an error
    /// naming its key (never a panic or a wrong ban).
    #[test]
    fn binary_records_are_small_and_damage_is_refused() {
        let rec = BanRecord {
            origin: "bench".into(),
            reason: "feed".into(),
            ..ban("fd00:7467:ffff:1:2::1/128")
        };
        let v = encode_ban(&rec);
        assert!(v.len() < 32, "{} bytes", v.len());
        assert!(serde_json::to_vec(&rec).unwrap().len() > 4 * v.len());
        let key = rec.cidr.to_string();
        assert_eq!(decode_ban(&key, &v).unwrap(), rec);
        for cut in 1..v.len() {
            let err = decode_ban(&key, &v[..cut]).unwrap_err();
            assert!(err.to_string().contains(&key), "{err}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_ban(&key, &longer).is_err());
        // A huge count of decisions is refused before anything is allocated.
        let mut many = v[..v.len() - 1].to_vec();
        many.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_ban(&key, &many).is_err());
        assert!(decode_ban("not a prefix", &v).is_err());
    }

    /// One damaged row does not stop the restore: it is handed over as
    /// skipped (with its key, as a prefix when it is one) and every other
    /// ban still comes, records shared by several rows included.
    #[test]
    fn a_row_that_cannot_be_decoded_is_skipped_and_the_rest_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        let recs: Vec<BanRecord> = (1..=6u8)
            .map(|i| BanRecord {
                origin: "feed".into(),
                ..ban(&format!("198.18.0.{i}/32"))
            })
            .collect();
        s.apply_bans(&recs, &[]).unwrap();
        // A truncated binary record, a JSON one that is no record, and a
        // key that is no prefix.
        s.put_raw_ban("198.18.0.2/32", &[BAN_V1, 0xff]);
        s.put_raw_ban("198.18.0.4/32", b"{\"cidr\": 7}");
        s.put_raw_ban("no prefix", &encode_ban(&recs[0]));
        let mut got = Vec::new();
        let mut skipped = Vec::new();
        let mut records = std::collections::HashMap::new();
        s.ban_stream(2, &mut |step| match step {
            BanStream::Record(id, rec) => {
                records.insert(id, rec);
            }
            BanStream::Bans(nets) => {
                for (net, id) in nets {
                    assert_eq!(records[id].origin, "feed");
                    got.push(net.to_string());
                }
            }
            BanStream::Skipped { key, net, error } => {
                assert!(!error.is_empty());
                skipped.push((key, net.map(|n| n.to_string())));
            }
        })
        .unwrap();
        got.sort();
        skipped.sort();
        assert_eq!(
            got,
            [
                "198.18.0.1/32",
                "198.18.0.3/32",
                "198.18.0.5/32",
                "198.18.0.6/32"
            ]
        );
        assert_eq!(
            skipped,
            [
                ("198.18.0.2/32".into(), Some("198.18.0.2/32".into())),
                ("198.18.0.4/32".into(), Some("198.18.0.4/32".into())),
                ("no prefix".into(), None),
            ]
        );
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RedbStore::FILE), b"not a database at all").unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("failed to open state database"));
    }
}
