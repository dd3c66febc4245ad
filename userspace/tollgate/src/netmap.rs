//! A map keyed by IP prefix that stores hosts as bare addresses: 4 or 16
//! bytes of key instead of an `IpNet`'s 18, and no enum tag to hash. With a
//! million bans every byte of key is a MiB.
//!
//! Hashed with foldhash (seeded at random per table) rather than SipHash: a
//! start-up with a million bans makes several million inserts and lookups
//! here, and SipHash cost about three times as much. Keys are addresses an
//! attacker can choose (the engine bans them), but the seed is secret and
//! nothing shows hash values or bucket order to them.

use std::collections::HashMap;

type Hasher = foldhash::quality::RandomState;

use ipnet::IpNet;

/// Values by prefix: host addresses (`/32`, `/128`) and ranges kept apart.
#[derive(Debug)]
pub struct NetMap<V> {
    v4: HashMap<[u8; 4], V, Hasher>,
    v6: HashMap<[u8; 16], V, Hasher>,
    ranges: HashMap<IpNet, V, Hasher>,
}

/// A set of prefixes.
pub type NetSet = NetMap<()>;

impl<V> Default for NetMap<V> {
    fn default() -> Self {
        Self {
            v4: HashMap::default(),
            v6: HashMap::default(),
            ranges: HashMap::default(),
        }
    }
}

impl<V> NetMap<V> {
    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.ranges.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for exactly this prefix.
    #[must_use]
    pub fn get(&self, net: &IpNet) -> Option<&V> {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.v4.get(&n.addr().octets()),
            IpNet::V6(n) if n.prefix_len() == 128 => self.v6.get(&n.addr().octets()),
            _ => self.ranges.get(net),
        }
    }

    /// Whether exactly this prefix is held.
    #[must_use]
    pub fn contains(&self, net: &IpNet) -> bool {
        self.get(net).is_some()
    }

    /// Sets the value for `net`, returning the one it replaces.
    pub fn insert(&mut self, net: IpNet, v: V) -> Option<V> {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.v4.insert(n.addr().octets(), v),
            IpNet::V6(n) if n.prefix_len() == 128 => self.v6.insert(n.addr().octets(), v),
            _ => self.ranges.insert(net, v),
        }
    }

    /// Removes `net`, returning its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<V> {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.v4.remove(&n.addr().octets()),
            IpNet::V6(n) if n.prefix_len() == 128 => self.v6.remove(&n.addr().octets()),
            _ => self.ranges.remove(net),
        }
    }

    /// Every prefix with its value (no order).
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        let host = |a: std::net::IpAddr| IpNet::from(a);
        self.v4
            .iter()
            .map(move |(k, v)| (host((*k).into()), v))
            .chain(self.v6.iter().map(move |(k, v)| (host((*k).into()), v)))
            .chain(self.ranges.iter().map(|(n, v)| (*n, v)))
    }

    /// Every prefix (no order).
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ranges_are_kept_and_given_back_as_they_went_in() {
        let mut m = NetSet::default();
        let nets: Vec<IpNet> = ["198.18.0.1/32", "198.18.0.0/24", "fd00::1/128", "fd00::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        for n in &nets {
            assert!(m.insert(*n, ()).is_none());
        }
        assert_eq!(m.len(), 4);
        let mut back: Vec<IpNet> = m.keys().collect();
        back.sort();
        let mut want = nets.clone();
        want.sort();
        assert_eq!(back, want);
        assert!(m.contains(&nets[2]) && !m.contains(&"fd00::2/128".parse().unwrap()));
        assert!(m.remove(&nets[0]).is_some() && m.remove(&nets[0]).is_none());
        assert_eq!(m.len(), 3);
    }
}
