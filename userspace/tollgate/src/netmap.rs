//! A map keyed by IP prefix that stores hosts as bare addresses: 4 or 16
//! bytes of key instead of an `IpNet`'s 18, and no enum tag to hash. With a
//! million bans every byte of key is a MiB.
//!
//! Hashed with foldhash rather than SipHash: a start-up with a million bans
//! makes several million inserts and lookups here, and SipHash cost about
//! three times as much. Keys are addresses an attacker can choose (the
//! engine bans them), so the seeds come from the kernel's random source
//! ([`OsSeeded`]), not from foldhash's own (addresses and the clock), and
//! nothing shows hash values or bucket order to them.

use std::collections::HashMap;

type Hasher = OsSeeded;

/// A foldhash builder seeded from the kernel's random source: one secret
/// shared seed per process, and a distinct per-table seed derived from a
/// second secret. Should the source fail (no `getrandom`, no
/// `/dev/urandom`), foldhash's own seeding is used and that is logged.
#[derive(Clone, Debug)]
pub struct OsSeeded(foldhash::quality::SeedableRandomState);

/// The process's secrets: foldhash's shared seed and a base for per-table
/// seeds; `None` when the kernel gave no random bytes.
fn secrets() -> Option<&'static (foldhash::SharedSeed, u64)> {
    static SECRETS: std::sync::OnceLock<Option<(foldhash::SharedSeed, u64)>> =
        std::sync::OnceLock::new();
    SECRETS
        .get_or_init(|| {
            let mut b = [0u8; 16];
            match os_random(&mut b) {
                Ok(()) => {
                    let (shared, base) = b.split_at(8);
                    let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
                    Some((foldhash::SharedSeed::from_u64(word(shared)), word(base)))
                }
                Err(e) => {
                    tracing::error!(
                        "no random bytes from the kernel ({e}): hash tables fall back to \
                         foldhash's own seeding (addresses and the clock)"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, else
/// `/dev/urandom`).
pub fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most `buf.len() - done` bytes into `buf[done..]`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        match usize::try_from(n) {
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ENOSYS) => {
                        use std::io::Read as _;
                        return std::fs::File::open("/dev/urandom")?.read_exact(&mut buf[done..]);
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

impl Default for OsSeeded {
    fn default() -> Self {
        static TABLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        match secrets() {
            Some((shared, base)) => {
                let n = TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Distinct per table (an odd multiplier is a bijection),
                // unknown without `base`.
                let per_table = base ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                Self(foldhash::quality::SeedableRandomState::with_seed(
                    per_table, shared,
                ))
            }
            None => Self(foldhash::quality::SeedableRandomState::random()),
        }
    }
}

impl std::hash::BuildHasher for OsSeeded {
    type Hasher = foldhash::quality::FoldHasher;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

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

    /// The tables' seeds are the kernel's random bytes, not foldhash's
    /// global seed (derived from addresses and the clock): hashing with
    /// foldhash's global seed and the same per-table seed gives other
    /// values. And each table hashes differently.
    #[test]
    fn tables_are_seeded_from_the_kernel() {
        use std::hash::BuildHasher as _;
        let mut b = [0u8; 32];
        os_random(&mut b).unwrap();
        assert_ne!(b, [0u8; 32]);
        let (shared, _) = secrets().expect("the kernel gave random bytes");
        let keys: Vec<[u8; 16]> = (0..64u8).map(|i| [i; 16]).collect();
        let ours = OsSeeded::default();
        // The per-table seed is not visible; what is: with the shared seed
        // ours, tables differ from one another, and none matches foldhash's
        // global seed under any of the first per-table seeds tried.
        let other = OsSeeded::default();
        let differ = keys
            .iter()
            .filter(|k| ours.hash_one(k) != other.hash_one(k))
            .count();
        assert!(differ > 60, "{differ}");
        let global = foldhash::SharedSeed::global_random();
        assert!(!std::ptr::eq(shared, global));
        let ours_fixed = foldhash::quality::SeedableRandomState::with_seed(7, shared);
        let global_fixed = foldhash::quality::SeedableRandomState::with_seed(7, global);
        let same = keys
            .iter()
            .filter(|k| ours_fixed.hash_one(k) == global_fixed.hash_one(k))
            .count();
        assert!(
            same < 4,
            "{same} of 64 hashes equal under foldhash's global seed"
        );
    }

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
