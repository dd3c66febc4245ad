//! The seam between the agent's decisions and the kernel maps.
//!
//! [`AgentState`](super::state::AgentState) decides who is banned, for how
//! long and why; [`Maps`] is everything those decisions need from the kernel.
//! [`Datapath`] implements it with the real maps; [`MemMaps`] holds the same
//! entries in memory, so the agent's logic runs in a plain `cargo test`
//! without root (the way cs-firewall-bouncer pairs its backends with a
//! dry-run one, and Tollgate's durable state sits behind [`crate::store::Store`]).
//!
//! Loading and attaching programs and taking the ring buffers stay on
//! [`Datapath`]: start-up uses the concrete type for them.

use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::HashMap;

use ipnet::IpNet;
use tollgate_common::{
    AllowEntry, BlockEntry, Bucket, BucketKey, Counter, FlowKey, LimitCfg, Mode, Reason, Verdict,
};

use crate::datapath::{Capacities, Datapath, DatapathError, Fill};

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// What the agent's decisions read from and write to the kernel maps.
pub trait Maps {
    /// Enforce or monitor.
    fn mode(&self) -> Mode;
    /// Inserts or replaces one ban.
    ///
    /// # Errors
    /// When the map write fails (e.g. the map is full).
    fn insert_block(&mut self, net: IpNet, entry: &BlockEntry) -> Result<()>;
    /// Inserts many bans.
    ///
    /// # Errors
    /// On the first failing map write.
    fn insert_blocks(
        &mut self,
        entries: impl IntoIterator<Item = (IpNet, BlockEntry)>,
    ) -> Result<()>;
    /// Removes a ban; `false` when there was none. Call [`Self::maintain`]
    /// after a batch of removals.
    ///
    /// # Errors
    /// When the delete fails for a reason other than a missing key.
    fn remove_block(&mut self, net: IpNet) -> Result<bool>;
    /// Every ban the kernel holds, with its entry (hit counter, reason).
    ///
    /// # Errors
    /// When reading the maps fails.
    fn blocks(&self) -> Result<Vec<(IpNet, BlockEntry)>>;
    /// The kernel's entry for this prefix, read from the map itself: exact
    /// for hosts; for a range, the longest kernel range containing it (the
    /// range itself when the kernel holds it). For hit counters.
    ///
    /// # Errors
    /// When the lookup fails for a reason other than a missing key.
    fn block_entry(&self, net: IpNet) -> Result<Option<BlockEntry>>;
    /// Every kernel ban covering `ip` (host entry and ranges), exactly as
    /// the kernel holds them.
    ///
    /// # Errors
    /// When reading the maps fails.
    fn covering_blocks(&self, ip: std::net::IpAddr) -> Result<Vec<(IpNet, BlockEntry)>>;
    /// Whether the kernel holds a ban for exactly this prefix.
    fn has_block(&self, net: &IpNet) -> bool;
    /// The prefixes the kernel holds bans for (no syscall).
    fn block_nets(&self) -> impl Iterator<Item = IpNet> + '_;
    /// Inserts or replaces an allowlist entry.
    ///
    /// # Errors
    /// When the map write fails.
    fn insert_allow(&mut self, net: IpNet, entry: &AllowEntry) -> Result<()>;
    /// Removes an allowlist entry; `false` when there was none.
    ///
    /// # Errors
    /// When the delete fails for a reason other than a missing key.
    fn remove_allow(&mut self, net: IpNet) -> Result<bool>;
    /// Every allowlist entry with its hit counter.
    ///
    /// # Errors
    /// When reading the maps fails.
    fn allow_entries(&self) -> Result<Vec<(IpNet, AllowEntry)>>;
    /// The allowlist prefixes held (no syscall).
    fn allow_nets(&self) -> impl Iterator<Item = &IpNet>;
    /// After removals: refreshes what the datapath derives from the bans.
    ///
    /// # Errors
    /// When a map write fails.
    fn maintain(&mut self) -> Result<()>;
    /// Packets and bytes by verdict and reason.
    ///
    /// # Errors
    /// When the counters cannot be read.
    fn counters(&self) -> Result<Vec<(Verdict, Reason, Counter)>>;
    /// Fill levels of the ban and allow maps.
    fn fill(&self) -> Fill;
    /// Map capacities in force.
    fn capacities(&self) -> Capacities;
    /// Kernel memory of each map, by name (none when not measurable).
    fn memory(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }
    /// Sampling counters (taken, lost, skipped).
    ///
    /// # Errors
    /// When the counters cannot be read.
    fn sample_stats(&self) -> Result<[u64; 3]>;
    /// Writes the rate limits (`default` and per port).
    ///
    /// # Errors
    /// When a map write fails.
    fn set_limits(
        &mut self,
        default: Option<LimitCfg>,
        table: &BTreeMap<u16, LimitCfg>,
        v6_prefix: u8,
    ) -> Result<()>;
    /// Every tracked rate-limit source and its state.
    ///
    /// # Errors
    /// When reading the map fails.
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>>;
    /// Established-connection counts per source.
    ///
    /// # Errors
    /// When reading the map fails.
    fn conns(&self) -> Result<Vec<(BucketKey, u64)>>;
    /// Boot-clock ns of the latest TCP handshake `addr` completed, if any.
    fn handshake_ns(&self, addr: &[u8; 16]) -> Option<u64>;
    /// Marks a connection from a trusted proxy as carrying a banned client.
    ///
    /// # Errors
    /// When the map write fails.
    fn arm_proxy_flow(&mut self, key: FlowKey, real: std::net::IpAddr) -> Result<()>;
}

impl Maps for Datapath {
    fn mode(&self) -> Mode {
        Datapath::mode(self)
    }
    fn insert_block(&mut self, net: IpNet, entry: &BlockEntry) -> Result<()> {
        Datapath::insert_block(self, net, entry)
    }
    fn insert_blocks(
        &mut self,
        entries: impl IntoIterator<Item = (IpNet, BlockEntry)>,
    ) -> Result<()> {
        Datapath::insert_blocks(self, entries)
    }
    fn remove_block(&mut self, net: IpNet) -> Result<bool> {
        Datapath::remove_block(self, net)
    }
    fn blocks(&self) -> Result<Vec<(IpNet, BlockEntry)>> {
        Datapath::blocks(self)
    }
    fn block_entry(&self, net: IpNet) -> Result<Option<BlockEntry>> {
        Datapath::get_block(self, net)
    }
    fn covering_blocks(&self, ip: std::net::IpAddr) -> Result<Vec<(IpNet, BlockEntry)>> {
        Datapath::covering_blocks(self, ip)
    }
    fn has_block(&self, net: &IpNet) -> bool {
        Datapath::has_block(self, net)
    }
    fn block_nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        Datapath::block_nets(self)
    }
    fn insert_allow(&mut self, net: IpNet, entry: &AllowEntry) -> Result<()> {
        Datapath::insert_allow(self, net, entry)
    }
    fn remove_allow(&mut self, net: IpNet) -> Result<bool> {
        Datapath::remove_allow(self, net)
    }
    fn allow_entries(&self) -> Result<Vec<(IpNet, AllowEntry)>> {
        Datapath::allow_entries(self)
    }
    fn allow_nets(&self) -> impl Iterator<Item = &IpNet> {
        Datapath::allow_nets(self)
    }
    fn maintain(&mut self) -> Result<()> {
        Datapath::maintain(self)
    }
    fn counters(&self) -> Result<Vec<(Verdict, Reason, Counter)>> {
        Datapath::counters(self)
    }
    fn fill(&self) -> Fill {
        Datapath::fill(self)
    }
    fn capacities(&self) -> Capacities {
        Datapath::capacities(self)
    }
    fn memory(&self) -> std::collections::BTreeMap<String, u64> {
        crate::datapath::map_memory()
    }
    fn sample_stats(&self) -> Result<[u64; 3]> {
        Datapath::sample_stats(self)
    }
    fn set_limits(
        &mut self,
        default: Option<LimitCfg>,
        table: &BTreeMap<u16, LimitCfg>,
        v6_prefix: u8,
    ) -> Result<()> {
        Datapath::set_limits(self, default, table, v6_prefix)
    }
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        Datapath::buckets(self)
    }
    fn conns(&self) -> Result<Vec<(BucketKey, u64)>> {
        Datapath::conns(self)
    }
    fn handshake_ns(&self, addr: &[u8; 16]) -> Option<u64> {
        Datapath::handshake_ns(self, addr)
    }
    fn arm_proxy_flow(&mut self, key: FlowKey, real: std::net::IpAddr) -> Result<()> {
        Datapath::arm_proxy_flow(self, key, real)
    }
}

/// The kernel maps held in memory: what the agent wrote is what it reads
/// back. For unit tests; nothing reaches a packet.
#[cfg(test)]
#[derive(Debug)]
pub struct MemMaps {
    /// Enforce or monitor.
    pub mode: Mode,
    /// Bans by prefix.
    pub blocks: BTreeMap<IpNet, BlockEntry>,
    /// Allowlist entries by prefix.
    pub allows: BTreeMap<IpNet, AllowEntry>,
    /// Latest handshake per source address (boot-clock ns).
    pub handshakes: HashMap<[u8; 16], u64>,
    /// Connections armed as carrying a banned client, and that client.
    pub proxy_flows: Vec<(FlowKey, std::net::IpAddr)>,
    /// The limits last written: default, per port, IPv6 prefix.
    pub limits: Option<(Option<LimitCfg>, BTreeMap<u16, LimitCfg>, u8)>,
    /// Rate-limit sources, as the kernel would report them.
    pub buckets: Vec<(BucketKey, Bucket)>,
    /// When set, every insert is refused as by a full map.
    pub full: bool,
    /// How often [`Maps::maintain`] ran.
    pub maintained: u64,
}

#[cfg(test)]
impl Default for MemMaps {
    fn default() -> Self {
        Self::new(Mode::Enforce)
    }
}

#[cfg(test)]
impl MemMaps {
    /// Empty maps in the given mode.
    #[must_use]
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            blocks: BTreeMap::new(),
            allows: BTreeMap::new(),
            handshakes: HashMap::new(),
            proxy_flows: Vec::new(),
            limits: None,
            buckets: Vec::new(),
            full: false,
            maintained: 0,
        }
    }

    fn refuse(&self) -> Result<()> {
        if self.full {
            return Err(DatapathError::Map {
                op: "insert into",
                name: "block",
                source: Box::new(aya::maps::MapError::OutOfBounds {
                    index: 0,
                    max_entries: 0,
                }),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
impl Maps for MemMaps {
    fn mode(&self) -> Mode {
        self.mode
    }
    fn insert_block(&mut self, net: IpNet, entry: &BlockEntry) -> Result<()> {
        self.refuse()?;
        self.blocks.insert(net, *entry);
        Ok(())
    }
    fn insert_blocks(
        &mut self,
        entries: impl IntoIterator<Item = (IpNet, BlockEntry)>,
    ) -> Result<()> {
        for (net, e) in entries {
            self.insert_block(net, &e)?;
        }
        Ok(())
    }
    fn remove_block(&mut self, net: IpNet) -> Result<bool> {
        Ok(self.blocks.remove(&net).is_some())
    }
    fn blocks(&self) -> Result<Vec<(IpNet, BlockEntry)>> {
        Ok(self.blocks.iter().map(|(n, e)| (*n, *e)).collect())
    }
    fn block_entry(&self, net: IpNet) -> Result<Option<BlockEntry>> {
        Ok(self.blocks.get(&net).copied())
    }
    fn covering_blocks(&self, ip: std::net::IpAddr) -> Result<Vec<(IpNet, BlockEntry)>> {
        Ok(self
            .blocks
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .map(|(n, e)| (*n, *e))
            .collect())
    }
    fn has_block(&self, net: &IpNet) -> bool {
        self.blocks.contains_key(net)
    }
    fn block_nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.blocks.keys().copied()
    }
    fn insert_allow(&mut self, net: IpNet, entry: &AllowEntry) -> Result<()> {
        self.refuse()?;
        self.allows.insert(net, *entry);
        Ok(())
    }
    fn remove_allow(&mut self, net: IpNet) -> Result<bool> {
        Ok(self.allows.remove(&net).is_some())
    }
    fn allow_entries(&self) -> Result<Vec<(IpNet, AllowEntry)>> {
        Ok(self.allows.iter().map(|(n, e)| (*n, *e)).collect())
    }
    fn allow_nets(&self) -> impl Iterator<Item = &IpNet> {
        self.allows.keys()
    }
    fn maintain(&mut self) -> Result<()> {
        self.maintained += 1;
        Ok(())
    }
    fn counters(&self) -> Result<Vec<(Verdict, Reason, Counter)>> {
        Ok(Vec::new())
    }
    fn fill(&self) -> Fill {
        let mut f = Fill {
            allow: self.allows.len(),
            ..Fill::default()
        };
        for n in self.blocks.keys() {
            match n {
                IpNet::V4(n) if n.prefix_len() == 32 => f.block4 += 1,
                IpNet::V4(_) => f.block4_ranges += 1,
                IpNet::V6(n) if n.prefix_len() == 128 => f.block6 += 1,
                IpNet::V6(_) => f.block6_ranges += 1,
            }
        }
        f
    }
    fn capacities(&self) -> Capacities {
        Capacities::small()
    }
    fn sample_stats(&self) -> Result<[u64; 3]> {
        Ok([0; 3])
    }
    fn set_limits(
        &mut self,
        default: Option<LimitCfg>,
        table: &BTreeMap<u16, LimitCfg>,
        v6_prefix: u8,
    ) -> Result<()> {
        self.limits = Some((default, table.clone(), v6_prefix));
        Ok(())
    }
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        Ok(self.buckets.clone())
    }
    fn conns(&self) -> Result<Vec<(BucketKey, u64)>> {
        Ok(Vec::new())
    }
    fn handshake_ns(&self, addr: &[u8; 16]) -> Option<u64> {
        self.handshakes.get(addr).copied()
    }
    fn arm_proxy_flow(&mut self, key: FlowKey, real: std::net::IpAddr) -> Result<()> {
        self.proxy_flows.push((key, real));
        Ok(())
    }
}
