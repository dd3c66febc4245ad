//! The in-memory ban index, compact enough for millions of bans.
//!
//! Bans made together share everything but their prefix (an import: kind,
//! reason, origin, times, offences), so a record is split in two: the
//! prefix, kept as a bare key (4 bytes for an IPv4 host, 16 for an IPv6
//! host, the prefix itself for a range), and the rest (its "tail"), stored
//! once per distinct value with a count of the prefixes holding it. A key
//! costs its bytes plus a 4-byte tail number; a million imported hosts take
//! tens of MiB instead of the hundreds a map of full records took. Records
//! are rebuilt on demand, identical to what was indexed.
//!
//! Expiry is a property of the tail (the soonest expiry of its decisions),
//! so the expiry index holds tails, not prefixes: an import with one TTL is
//! one entry. A due tail held by one prefix knows it; one held by many is
//! resolved by one walk of the keys (a whole import expiring at once).

use std::{
    collections::{BTreeSet, HashSet},
    hash::{BuildHasher, Hash, Hasher},
};

use ipnet::IpNet;

use crate::{
    netmap::NetMap,
    store::{BanRecord, Decision},
};

/// The prefix stored in tails (each key knows its own).
const NO_PREFIX: IpNet = IpNet::V4(ipnet::Ipv4Net::new_assert(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// What prefixes with equal records share.
struct Tail {
    /// The record, its prefix replaced by [`NO_PREFIX`].
    rec: BanRecord,
    /// Prefixes holding it.
    refs: u32,
    /// The prefix holding it, while exactly one does and it is known (the
    /// usual case for bans the engine issues one by one): expiry then needs
    /// no walk of the keys.
    sole: Option<IpNet>,
    /// Its hash, for the lookup table.
    hash: u64,
}

/// Ban records by prefix (see the module comment).
pub(in crate::agent) struct BanIndex {
    /// Tail numbers by prefix.
    keys: NetMap<u32>,
    tails: Vec<Option<Tail>>,
    free: Vec<u32>,
    /// Tail numbers by content.
    lookup: hashbrown::HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    /// (soonest expiry, tail number).
    expiry: BTreeSet<(u64, u32)>,
}

impl Default for BanIndex {
    fn default() -> Self {
        Self {
            keys: NetMap::default(),
            tails: Vec::new(),
            free: Vec::new(),
            lookup: hashbrown::HashTable::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            expiry: BTreeSet::new(),
        }
    }
}

fn hash_decision(h: &mut impl Hasher, d: &Decision) {
    (d.kind as u32).hash(h);
    d.reason.hash(h);
    d.origin.hash(h);
    d.created_at.hash(h);
    d.expires_at.hash(h);
    d.host.hash(h);
}

impl BanIndex {
    /// Number of bans.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn slot(&self, net: &IpNet) -> Option<u32> {
        self.keys.get(net).copied()
    }

    /// Tail `id`; every key names a live one (kept so by `insert` and
    /// `remove`, the only writers).
    fn tail(&self, id: u32) -> Option<&Tail> {
        self.tails.get(id as usize)?.as_ref()
    }

    fn materialize(&self, net: IpNet, id: u32) -> Option<BanRecord> {
        let mut rec = self.tail(id)?.rec.clone();
        rec.cidr = net;
        Some(rec)
    }

    /// Whether a ban is held for exactly this prefix.
    #[must_use]
    pub fn contains_key(&self, net: &IpNet) -> bool {
        self.slot(net).is_some()
    }

    /// The record for exactly this prefix.
    #[must_use]
    pub fn get(&self, net: &IpNet) -> Option<BanRecord> {
        self.slot(net).and_then(|id| self.materialize(*net, id))
    }

    /// Every prefix with its tail number (no order).
    fn slots(&self) -> impl Iterator<Item = (IpNet, u32)> + '_ {
        self.keys.iter().map(|(n, id)| (n, *id))
    }

    /// Every banned prefix (no order).
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.slots().map(|(n, _)| n)
    }

    /// Every record, rebuilt (no order).
    pub fn values(&self) -> impl Iterator<Item = BanRecord> + '_ {
        self.slots().filter_map(|(n, id)| self.materialize(n, id))
    }

    /// Every prefix with its record's fields (its `cidr` is not the
    /// prefix): for walks that read a field or two of every ban without
    /// rebuilding them.
    pub fn shared(&self) -> impl Iterator<Item = (IpNet, &BanRecord)> + '_ {
        self.slots()
            .filter_map(|(n, id)| Some((n, &self.tail(id)?.rec)))
    }

    fn hash_of(&self, rec: &BanRecord) -> u64 {
        let mut h = self.hasher.build_hasher();
        (rec.kind as u32).hash(&mut h);
        rec.reason.hash(&mut h);
        rec.origin.hash(&mut h);
        rec.created_at.hash(&mut h);
        rec.expires_at.hash(&mut h);
        rec.offences.hash(&mut h);
        rec.host.hash(&mut h);
        rec.also.len().hash(&mut h);
        for d in &rec.also {
            hash_decision(&mut h, d);
        }
        h.finish()
    }

    /// The tail number for `rec` (its prefix already [`NO_PREFIX`]), one
    /// more reference taken by `net`.
    fn intern(&mut self, rec: BanRecord, net: IpNet) -> u32 {
        let hash = self.hash_of(&rec);
        let tails = &self.tails;
        let found = self
            .lookup
            .find(hash, |id| {
                tails[*id as usize]
                    .as_ref()
                    .is_some_and(|t| t.hash == hash && t.rec == rec)
            })
            .copied();
        if let Some(id) = found {
            if let Some(t) = self.tails[id as usize].as_mut() {
                t.refs += 1;
                t.sole = None;
            }
            return id;
        }
        let expiry = rec.next_expiry();
        let tail = Tail {
            rec,
            refs: 1,
            sole: Some(net),
            hash,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.tails[id as usize] = Some(tail);
                id
            }
            None => {
                // Four billion distinct records do not fit in memory anyway.
                let id = u32::try_from(self.tails.len()).unwrap_or(u32::MAX);
                self.tails.push(Some(tail));
                id
            }
        };
        let tails = &self.tails;
        self.lookup.insert_unique(hash, id, |i| {
            tails[*i as usize].as_ref().map_or(0, |t| t.hash)
        });
        if let Some(t) = expiry {
            self.expiry.insert((t, id));
        }
        id
    }

    /// Drops `net`'s reference to tail `id`.
    fn release(&mut self, id: u32) {
        let Some(t) = self.tails[id as usize].as_mut() else {
            return;
        };
        t.refs -= 1;
        if t.refs > 0 {
            // Which prefix is left is not known here.
            t.sole = None;
            return;
        }
        let hash = t.hash;
        if let Some(e) = t.rec.next_expiry() {
            self.expiry.remove(&(e, id));
        }
        if let Ok(entry) = self.lookup.find_entry(hash, |i| *i == id) {
            entry.remove();
        }
        self.tails[id as usize] = None;
        self.free.push(id);
    }

    /// Holds `rec` for its prefix, replacing what was held.
    pub fn insert(&mut self, mut rec: BanRecord) {
        let net = rec.cidr;
        rec.cidr = NO_PREFIX;
        if let Some(old) = self.slot(&net)
            && self.tail(old).is_some_and(|t| t.rec == rec)
        {
            return;
        }
        let id = self.intern(rec, net);
        if let Some(old) = self.keys.insert(net, id) {
            self.release(old);
        }
    }

    /// Holds `rec` for `net` (`rec.cidr` is ignored), as [`Self::insert`];
    /// `hint` is the tail `rec` got last time, reused while it still holds
    /// that record, and set: a restore of many prefixes sharing one record
    /// hashes it once, not once per prefix.
    pub fn insert_hinted(&mut self, net: IpNet, rec: &BanRecord, hint: &mut Option<u32>) {
        let same = |t: &Tail| {
            let r = &t.rec;
            (r.kind, &r.reason, &r.origin, r.created_at, r.expires_at)
                == (
                    rec.kind,
                    &rec.reason,
                    &rec.origin,
                    rec.created_at,
                    rec.expires_at,
                )
                && (r.offences, &r.host, &r.also) == (rec.offences, &rec.host, &rec.also)
        };
        let id = match *hint {
            Some(id) if self.tail(id).is_some_and(same) => {
                if let Some(t) = self.tails[id as usize].as_mut() {
                    t.refs += 1;
                    t.sole = None;
                }
                id
            }
            _ => {
                let mut tail = rec.clone();
                tail.cidr = NO_PREFIX;
                self.intern(tail, net)
            }
        };
        *hint = Some(id);
        if let Some(old) = self.keys.insert(net, id) {
            self.release(old);
        }
    }

    /// Removes the record for exactly this prefix.
    pub fn remove(&mut self, net: &IpNet) -> Option<BanRecord> {
        let id = self.keys.remove(net)?;
        let rec = self.materialize(*net, id);
        self.release(id);
        rec
    }

    /// The soonest expiry of any decision held.
    #[cfg(test)]
    #[must_use]
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// The prefixes whose records have a decision ending at or before
    /// `now` (no order).
    #[must_use]
    pub fn due(&self, now: u64) -> Vec<IpNet> {
        let mut out = Vec::new();
        let mut walk = HashSet::new();
        for (_, id) in self.expiry.iter().take_while(|(t, _)| *t <= now) {
            match self.tail(*id).and_then(|t| t.sole) {
                Some(net) => out.push(net),
                None => {
                    walk.insert(*id);
                }
            }
        }
        if !walk.is_empty() {
            out.extend(
                self.slots()
                    .filter(|(_, id)| walk.contains(id))
                    .map(|(n, _)| n),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tollgate_common::BanReason;

    use super::*;

    fn rec(net: &str, reason: &str, expires: Option<u64>) -> BanRecord {
        BanRecord {
            cidr: net.parse().unwrap(),
            kind: BanReason::Feed,
            reason: reason.into(),
            origin: "list".into(),
            created_at: 10,
            created_at_ms: None,
            expires_at: expires,
            offences: 1,
            host: None,
            also: Vec::new(),
        }
    }

    /// Records come back as they went in, shared tails or not, and a tail
    /// nobody holds any more is gone (with its expiry).
    #[test]
    fn records_round_trip_and_tails_are_shared_and_freed() {
        let mut ix = BanIndex::default();
        let nets = [
            "198.18.0.1/32",
            "fd00::1/128",
            "198.18.4.0/24",
            "fd00:1::/48",
        ];
        for n in nets {
            ix.insert(rec(n, "same", Some(100)));
        }
        let mut other = rec("198.18.0.2/32", "own", Some(50));
        other.also.push(rec("198.18.0.2/32", "x", None).decision());
        ix.insert(other.clone());
        assert_eq!(ix.len(), 5);
        assert_eq!(ix.tails.iter().flatten().count(), 2);
        for n in nets {
            assert_eq!(ix.get(&n.parse().unwrap()), Some(rec(n, "same", Some(100))));
        }
        assert_eq!(ix.get(&other.cidr), Some(other.clone()));
        assert_eq!(ix.next_expiry(), Some(50));
        assert_eq!(ix.due(60), vec![other.cidr]);
        let mut due: Vec<IpNet> = ix.due(100);
        due.sort();
        assert_eq!(due.len(), 5);
        // Replacing a record moves the prefix to another tail.
        ix.insert(rec("198.18.0.1/32", "new", None));
        assert_eq!(
            ix.get(&"198.18.0.1/32".parse().unwrap()).unwrap().reason,
            "new"
        );
        assert_eq!(ix.remove(&other.cidr), Some(other));
        assert_eq!(ix.next_expiry(), Some(100));
        for n in &nets[1..] {
            ix.remove(&n.parse().unwrap());
        }
        assert_eq!(ix.next_expiry(), None);
        assert_eq!(ix.tails.iter().flatten().count(), 1);
        assert_eq!(
            ix.keys().collect::<Vec<_>>(),
            vec!["198.18.0.1/32".parse::<IpNet>().unwrap()]
        );
        assert!(ix.get(&"fd00::1/128".parse().unwrap()).is_none());
    }
}
