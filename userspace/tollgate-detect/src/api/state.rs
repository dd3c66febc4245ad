//! Per-client state: route request counters, object ids seen per route, 401/403
//! counters.
//!
//! Clients are attacker-controlled, so everything here is bounded: at most
//! `max_clients` clients (the least recently seen are forgotten in batches), at most
//! `max_ids + 1` ids per route and `max_ids_per_client` ids per client, and counters
//! of constant size (sliding-window estimates from two fixed windows).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

/// Request counter over a sliding window, estimated from the current and the
/// previous fixed window (constant memory, exact enough for thresholds).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlidingCounter {
    start_ms: u64,
    prev: u32,
    cur: u32,
}

impl SlidingCounter {
    /// Counts one event at `now_ms` and returns the estimated number of events in the
    /// last `window_ms`, this one included.
    #[cfg(test)]
    pub(crate) fn hit(&mut self, now_ms: u64, window_ms: u64) -> u32 {
        self.add(1, now_ms, window_ms)
    }

    /// [`SlidingCounter::hit`] for `n` events at once (the calls of one
    /// batched GraphQL request).
    pub(crate) fn add(&mut self, n: u32, now_ms: u64, window_ms: u64) -> u32 {
        let w = window_ms.max(1);
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if self.cur == 0 && self.prev == 0 || elapsed >= 2 * w {
            *self = SlidingCounter {
                start_ms: now_ms,
                prev: 0,
                cur: 0,
            };
        } else if elapsed >= w {
            self.prev = self.cur;
            self.cur = 0;
            self.start_ms += w;
        }
        self.cur = self.cur.saturating_add(n);
        let into = now_ms.saturating_sub(self.start_ms).min(w);
        let carried = u64::from(self.prev) * (w - into) / w;
        u32::try_from(carried)
            .unwrap_or(u32::MAX)
            .saturating_add(self.cur)
    }
}

/// Ids seen on one route, oldest first.
#[derive(Debug, Default)]
struct IdSet {
    /// [`Clients::route_key`] or [`Clients::template_key`].
    route: u64,
    ids: VecDeque<(u64, u64)>,
}

/// State of one client.
#[derive(Debug, Default)]
struct Client {
    last_seen: u64,
    limits: Vec<(usize, SlidingCounter)>,
    ids: Vec<IdSet>,
    failures: SlidingCounter,
    /// When a request last looked like an injection, by [`Suspect`] level.
    suspect: [u64; 2],
}

/// How much a client's request looked like an injection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Suspect {
    /// Characters that break out of a quoted or bracketed value (`'`, `"`, an
    /// unbalanced `)`): sqlmap's first probes, or a name like O'Brien.
    Breakout = 0,
    /// A per-request detector found something.
    Finding = 1,
}

/// All clients, bounded.
pub(crate) struct Clients {
    map: HashMap<IpAddr, Client>,
    max_clients: usize,
    max_ids_per_client: usize,
    ipv6_prefix: u8,
    /// Keyed hash of ids, so that crafted ids cannot collide on purpose.
    hasher: RandomState,
}

impl Clients {
    pub(crate) fn new(max_clients: usize, max_ids_per_client: usize, ipv6_prefix: u8) -> Clients {
        Clients {
            map: HashMap::new(),
            max_clients: max_clients.max(1),
            max_ids_per_client: max_ids_per_client.max(1),
            ipv6_prefix: ipv6_prefix.min(128),
            hasher: RandomState::new(),
        }
    }

    /// Number of tracked clients.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The tracking key: IPv6 addresses are cut to the configured prefix.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
            other => other,
        }
    }

    fn client(&mut self, ip: IpAddr, now_ms: u64) -> &mut Client {
        let key = self.key(ip);
        if !self.map.contains_key(&key) && self.map.len() >= self.max_clients {
            self.evict();
        }
        let c = self.map.entry(key).or_default();
        c.last_seen = c.last_seen.max(now_ms);
        c
    }

    /// Forgets the least recently seen eighth of the clients (at least one), so that
    /// the scan is paid once per many insertions.
    fn evict(&mut self) {
        let mut seen: Vec<u64> = self.map.values().map(|c| c.last_seen).collect();
        let k = (seen.len() / 8).max(1).min(seen.len()) - 1;
        let (_, cutoff, _) = seen.select_nth_unstable(k);
        let cutoff = *cutoff;
        let mut budget = k + 1;
        self.map.retain(|_, c| {
            if budget > 0 && c.last_seen <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Counts a request on a limited route; returns the estimated count in the window.
    pub(crate) fn hit_route(
        &mut self,
        ip: IpAddr,
        route: usize,
        n: u32,
        now_ms: u64,
        window_ms: u64,
    ) -> u32 {
        let c = self.client(ip, now_ms);
        let i = match c.limits.iter().position(|(r, _)| *r == route) {
            Some(i) => i,
            None => {
                c.limits.push((route, SlidingCounter::default()));
                c.limits.len() - 1
            }
        };
        c.limits[i].1.add(n, now_ms, window_ms)
    }

    /// Counts `n` failed attempts (a 401/403 response, or the authentication
    /// errors of a GraphQL response); returns the estimated count in the window.
    pub(crate) fn hit_failure(&mut self, ip: IpAddr, n: u32, now_ms: u64, window_ms: u64) -> u32 {
        self.client(ip, now_ms).failures.add(n, now_ms, window_ms)
    }

    /// Records that a request of `ip` looked like an injection attempt.
    pub(crate) fn note_suspect(&mut self, ip: IpAddr, level: Suspect, now_ms: u64) {
        let c = self.client(ip, now_ms);
        let t = &mut c.suspect[level as usize];
        *t = (*t).max(now_ms);
    }

    /// The strongest suspicion about `ip`'s requests within `within_ms` before
    /// `now_ms`.
    pub(crate) fn suspect(&self, ip: IpAddr, now_ms: u64, within_ms: u64) -> Option<Suspect> {
        let c = self.map.get(&self.key(ip))?;
        let recent = |t: u64| t > 0 && now_ms.saturating_sub(t) <= within_ms;
        if recent(c.suspect[Suspect::Finding as usize]) {
            Some(Suspect::Finding)
        } else if recent(c.suspect[Suspect::Breakout as usize]) {
            Some(Suspect::Breakout)
        } else {
            None
        }
    }

    /// Id-set key of a configured route.
    pub(crate) fn route_key(route: usize) -> u64 {
        route as u64 & !(1 << 63)
    }

    /// Id-set key of a folded path template (routes nobody configured).
    pub(crate) fn template_key(&self, template: &str) -> u64 {
        self.hasher.hash_one(template) | (1 << 63)
    }

    /// Forgets everything about `ip` (e.g. when it is unbanned).
    pub(crate) fn forget(&mut self, ip: IpAddr) {
        let key = self.key(ip);
        self.map.remove(&key);
    }

    /// Records object `id` in the id set `route`; returns the number of distinct ids
    /// seen in the window (capped at `max_ids + 1`: enough to know the limit was
    /// passed).
    pub(crate) fn see_id(
        &mut self,
        ip: IpAddr,
        route: u64,
        id: &str,
        now_ms: u64,
        window_ms: u64,
        max_ids: usize,
    ) -> usize {
        let h = self.hasher.hash_one(id);
        let per_client = self.max_ids_per_client;
        let c = self.client(ip, now_ms);
        let total: usize = c.ids.iter().map(|s| s.ids.len()).sum();
        let i = match c.ids.iter().position(|s| s.route == route) {
            Some(i) => i,
            None => {
                c.ids.push(IdSet {
                    route,
                    ids: VecDeque::new(),
                });
                c.ids.len() - 1
            }
        };
        let horizon = now_ms.saturating_sub(window_ms);
        let set = &mut c.ids[i].ids;
        while set.front().is_some_and(|&(_, t)| t < horizon) {
            set.pop_front();
        }
        if set.iter().any(|&(x, _)| x == h) {
            return set.len();
        }
        if set.len() > max_ids {
            set.pop_front();
        } else if total >= per_client {
            // Make room in the largest other set (this one if it is alone), so that
            // filling one route cannot hide enumeration on another: the route being
            // probed can always reach `max_ids + 1` (`max_ids < max_ids_per_client`).
            let other = c
                .ids
                .iter_mut()
                .enumerate()
                .filter(|(j, s)| *j != i && !s.ids.is_empty())
                .max_by_key(|(_, s)| s.ids.len())
                .map(|(_, s)| s);
            match other {
                Some(big) => big.ids.pop_front(),
                None => c.ids[i].ids.pop_front(),
            };
        }
        c.ids[i].ids.push_back((h, now_ms));
        let n = c.ids[i].ids.len();
        // Sets emptied by eviction go, so the number of sets stays bounded by the ids.
        c.ids.retain(|s| !s.ids.is_empty());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_counter() {
        let mut c = SlidingCounter::default();
        for i in 1..=5 {
            assert_eq!(c.hit(1000 + i, 60_000), u32::try_from(i).unwrap());
        }
        // Half a window into the next one, half of the previous count is carried.
        assert_eq!(c.hit(1000 + 90_000, 60_000), 2 + 1);
        // Long idle: starts over.
        assert_eq!(c.hit(10_000_000, 60_000), 1);
        // Time going backwards does not panic.
        assert!(c.hit(0, 60_000) >= 1);
    }

    #[test]
    fn clients_are_bounded() {
        let mut cs = Clients::new(100, 8, 64);
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            cs.hit_failure(ip, 1, u64::from(i), 60_000);
            assert!(cs.len() <= 100);
        }
        // The most recent client survived.
        assert_eq!(
            cs.hit_failure(IpAddr::from(999u32.to_be_bytes()), 1, 1000, 60_000),
            2
        );
        // IPv6 clients of one /64 share state.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        cs.hit_failure(a, 1, 2000, 60_000);
        assert_eq!(cs.hit_failure(b, 1, 2001, 60_000), 2);
    }

    #[test]
    fn ids_are_bounded() {
        let mut cs = Clients::new(10, 8, 64);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..100 {
            let n = cs.see_id(ip, 0u64, &i.to_string(), 1000, 60_000, 20);
            assert!(n <= 8, "{n}");
        }
        let mut cs = Clients::new(10, 256, 64);
        for i in 0..100 {
            let n = cs.see_id(ip, 0u64, &i.to_string(), 1000, 60_000, 20);
            assert_eq!(n, (i + 1).min(21));
        }
        // Filling one route does not stop counting on another.
        let mut cs = Clients::new(10, 30, 64);
        for i in 0..200 {
            cs.see_id(ip, 0u64, &i.to_string(), 1000, 60_000, 25);
        }
        let n: Vec<usize> = (0..21)
            .map(|i| cs.see_id(ip, 1, &i.to_string(), 1000, 60_000, 20))
            .collect();
        assert_eq!(n.last(), Some(&21), "{n:?}");
        // The same id again does not count twice; old ids leave the window.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(cs.see_id(other, 1, "a", 0, 60_000, 20), 1);
        assert_eq!(cs.see_id(other, 1, "a", 10, 60_000, 20), 1);
        assert_eq!(cs.see_id(other, 1, "b", 70_000, 60_000, 20), 1);
    }
}
