//! The ban and allow maps: exact entries, CIDR tries and the prefilter
//! bits kept in step with them.

use aya::maps::IterableMap as _;

use super::*;

impl Datapath {
    /// Inserts or replaces a ban.
    ///
    /// # Errors
    /// When a map write fails (e.g. the map is full); nothing is half-done
    /// that matters: a prefilter bit set for a ban that failed to insert only
    /// costs a lookup and is cleared by the next [`Self::maintain`].
    pub fn insert_block(&mut self, net: IpNet, entry: &BlockEntry) -> Result<()> {
        self.insert_blocks(std::iter::once((net, *entry)))
    }

    /// Inserts many bans, writing each prefilter word once.
    ///
    /// # Errors
    /// On the first failing map write.
    pub fn insert_blocks(
        &mut self,
        entries: impl IntoIterator<Item = (IpNet, BlockEntry)>,
    ) -> Result<()> {
        let entries: Vec<_> = entries.into_iter().collect();
        // Only bits not yet set are written (a million bans in a few
        // thousand buckets are a few thousand words), all in one batch.
        let mut new4 = Vec::new();
        let mut new6 = Vec::new();
        let mut flags = self.config.flags;
        for (net, _) in &entries {
            match net {
                IpNet::V4(n) => {
                    for b in v4_buckets(*n) {
                        let (w, m) = prefilter::word_and_mask(b);
                        if self.mirror4[w as usize] & m == 0 {
                            self.mirror4[w as usize] |= m;
                            new4.push((w, m));
                        }
                    }
                    if n.prefix_len() < 32 {
                        flags |= config_flags::V4_RANGES;
                    }
                }
                IpNet::V6(n) => {
                    let enumerated = each_v6_bucket(*n, |b| {
                        let (w, m) = prefilter::word_and_mask(b);
                        if self.mirror6[w as usize] & m == 0 {
                            self.mirror6[w as usize] |= m;
                            new6.push((w, m));
                        }
                    });
                    if !enumerated {
                        flags |= config_flags::V6_SHORT_RANGES;
                    }
                    if n.prefix_len() < 128 {
                        flags |= config_flags::V6_RANGES;
                    }
                }
            }
        }
        write_words(&mut self.pre4, &mut self.mirror4, &new4, maps::PREFILTER4)?;
        write_words(&mut self.pre6, &mut self.mirror6, &new6, maps::PREFILTER6)?;
        if flags != self.config.flags {
            self.config.flags = flags;
            self.write_config()?;
        }
        // Hosts go in with one syscall per batch where the kernel can
        // (a restore of a million bans), the rest one by one. A failure
        // (a full map) does not stop the others: each map takes what it
        // can, the mirror records exactly what the kernel took, and the
        // first error is returned.
        let (mut k4, mut v4, mut k6, mut v6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (net, entry) in &entries {
            match net {
                IpNet::V4(n) if n.prefix_len() == 32 => {
                    k4.push(n.addr().octets());
                    v4.push(*entry);
                }
                IpNet::V6(n) if n.prefix_len() == 128 => {
                    k6.push(n.addr().octets());
                    v6.push(*entry);
                }
                _ => {}
            }
        }
        let mut first: Option<DatapathError> = None;
        // Per host map: `None` to write one by one, else how many of the
        // batch the kernel took (all unless it failed).
        let taken4 = batch_taken(self.block4.map(), &k4, &v4, maps::BLOCK4, &mut first);
        let taken6 = batch_taken(self.block6.map(), &k6, &v6, maps::BLOCK6, &mut first);
        let (mut seen4, mut seen6) = (0usize, 0usize);
        // A map that refused a write in this call is not tried again for
        // the rest of it (full: every write would fail the same way).
        let mut refused = [false; 4];
        for (net, entry) in entries {
            let (slot, name) = match net {
                IpNet::V4(n) if n.prefix_len() == 32 => {
                    if let Some(taken) = taken4 {
                        seen4 += 1;
                        if seen4 <= taken {
                            self.bans.insert(net, ());
                        }
                        continue;
                    }
                    (0, maps::BLOCK4)
                }
                IpNet::V6(n) if n.prefix_len() == 128 => {
                    if let Some(taken) = taken6 {
                        seen6 += 1;
                        if seen6 <= taken {
                            self.bans.insert(net, ());
                        }
                        continue;
                    }
                    (1, maps::BLOCK6)
                }
                IpNet::V4(_) => (2, maps::BLOCK4_LPM),
                IpNet::V6(_) => (3, maps::BLOCK6_LPM),
            };
            if refused[slot] {
                continue;
            }
            let res = match net {
                IpNet::V4(n) if n.prefix_len() == 32 => {
                    self.block4.insert(n.addr().octets(), entry, 0)
                }
                IpNet::V4(n) => self.block4_lpm.insert(&key4(n), entry, 0),
                IpNet::V6(n) if n.prefix_len() == 128 => {
                    self.block6.insert(n.addr().octets(), entry, 0)
                }
                IpNet::V6(n) => self.block6_lpm.insert(&key6(n), entry, 0),
            };
            match res {
                Ok(()) => {
                    self.bans.insert(net, ());
                }
                Err(e) => {
                    refused[slot] = true;
                    first.get_or_insert(map_err("insert into", name)(e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes a ban; `false` if there was none. Call [`Self::maintain`]
    /// afterwards (once per batch) to clear prefilter bits.
    ///
    /// # Errors
    /// When the map delete fails for a reason other than a missing key.
    pub fn remove_block(&mut self, net: IpNet) -> Result<bool> {
        let res = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.block4.remove(&n.addr().octets()),
            IpNet::V4(n) => self.block4_lpm.remove(&key4(n)),
            IpNet::V6(n) if n.prefix_len() == 128 => self.block6.remove(&n.addr().octets()),
            IpNet::V6(n) => self.block6_lpm.remove(&key6(n)),
        };
        let removed = match res {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(map_err("delete from", "block")(e)),
        };
        self.bans.remove(&net);
        self.prefilter_dirty = true;
        Ok(removed)
    }

    /// One ban's kernel entry (with its hit counter).
    ///
    /// # Errors
    /// When the lookup fails for a reason other than a missing key.
    pub fn get_block(&self, net: IpNet) -> Result<Option<BlockEntry>> {
        let res = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.block4.get(&n.addr().octets(), 0),
            IpNet::V4(n) => self.block4_lpm.get(&key4(n), 0),
            IpNet::V6(n) if n.prefix_len() == 128 => self.block6.get(&n.addr().octets(), 0),
            IpNet::V6(n) => self.block6_lpm.get(&key6(n), 0),
        };
        match res {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("read", "block")(e)),
        }
    }

    /// Every kernel ban covering `ip`, read from the maps themselves (the
    /// host entry by lookup, ranges by one walk of the address family's trie:
    /// a trie lookup answers the longest match, not whether a key exists).
    ///
    /// # Errors
    /// When a lookup or the walk fails.
    pub fn covering_blocks(&self, ip: std::net::IpAddr) -> Result<Vec<(IpNet, BlockEntry)>> {
        let host = IpNet::from(ip);
        let mut out = Vec::new();
        if let Some(e) = self.get_block(host)? {
            out.push((host, e));
        }
        let mut ranges = Vec::new();
        match ip {
            std::net::IpAddr::V4(_) => {
                trie_entries(&self.block4_lpm, maps::BLOCK4_LPM, net4_of, &mut ranges)?;
            }
            std::net::IpAddr::V6(_) => {
                trie_entries(&self.block6_lpm, maps::BLOCK6_LPM, net6_of, &mut ranges)?;
            }
        }
        out.extend(ranges.into_iter().filter(|(n, _)| n.contains(&ip)));
        Ok(out)
    }

    /// Every ban in the kernel, read from the maps.
    ///
    /// # Errors
    /// When iterating a map fails.
    pub fn blocks(&self) -> Result<Vec<(IpNet, BlockEntry)>> {
        let mut out = Vec::new();
        for kv in self.block4.iter() {
            let (k, v) = kv.map_err(map_err("iterate", maps::BLOCK4))?;
            out.push((IpNet::V4(Ipv4Net::from(Ipv4Addr::from(k))), v));
        }
        for kv in self.block6.iter() {
            let (k, v) = kv.map_err(map_err("iterate", maps::BLOCK6))?;
            out.push((IpNet::V6(Ipv6Net::from(Ipv6Addr::from(k))), v));
        }
        trie_entries(&self.block4_lpm, maps::BLOCK4_LPM, net4_of, &mut out)?;
        trie_entries(&self.block6_lpm, maps::BLOCK6_LPM, net6_of, &mut out)?;
        Ok(out)
    }

    /// Whether the kernel holds a ban for exactly this prefix.
    #[must_use]
    pub fn has_block(&self, net: &IpNet) -> bool {
        self.bans.contains(net)
    }

    /// The prefixes the kernel holds bans for (from the mirror: no syscall).
    pub fn block_nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.bans.keys()
    }

    /// Number of bans held.
    #[must_use]
    pub fn block_count(&self) -> usize {
        self.bans.len()
    }

    /// Inserts or replaces an allowlist entry.
    ///
    /// # Errors
    /// When the map write fails.
    pub fn insert_allow(&mut self, net: IpNet, entry: &AllowEntry) -> Result<()> {
        // Flag first: the datapath then consults the trie, which the entry
        // joins a moment later.
        let flag = match net {
            IpNet::V4(_) => config_flags::V4_ALLOW,
            IpNet::V6(_) => config_flags::V6_ALLOW,
        };
        if self.config.flags & flag == 0 {
            self.config.flags |= flag;
            self.write_config()?;
        }
        match net {
            IpNet::V4(n) => self
                .allow4
                .insert(&key4(n), *entry, 0)
                .map_err(map_err("insert into", maps::ALLOW4))?,
            IpNet::V6(n) => self
                .allow6
                .insert(&key6(n), *entry, 0)
                .map_err(map_err("insert into", maps::ALLOW6))?,
        }
        self.allows.insert(net);
        Ok(())
    }

    /// Removes an allowlist entry; `false` if there was none.
    ///
    /// # Errors
    /// When the delete fails for a reason other than a missing key.
    pub fn remove_allow(&mut self, net: IpNet) -> Result<bool> {
        let res = match net {
            IpNet::V4(n) => self.allow4.remove(&key4(n)),
            IpNet::V6(n) => self.allow6.remove(&key6(n)),
        };
        self.allows.remove(&net);
        let flag = match net {
            IpNet::V4(_) => config_flags::V4_ALLOW,
            IpNet::V6(_) => config_flags::V6_ALLOW,
        };
        let family_left = self
            .allows
            .iter()
            .any(|n| matches!(n, IpNet::V4(_)) == matches!(net, IpNet::V4(_)));
        if !family_left && self.config.flags & flag != 0 {
            self.config.flags &= !flag;
            self.write_config()?;
        }
        match res {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err("delete from", "allow")(e)),
        }
    }

    /// Every allowlist entry, read from the maps.
    ///
    /// # Errors
    /// When iterating a map fails.
    pub fn allow_entries(&self) -> Result<Vec<(IpNet, AllowEntry)>> {
        let mut out = Vec::new();
        trie_entries(&self.allow4, maps::ALLOW4, net4_of, &mut out)?;
        trie_entries(&self.allow6, maps::ALLOW6, net6_of, &mut out)?;
        Ok(out)
    }

    /// Allowlist prefixes held.
    pub fn allow_nets(&self) -> impl Iterator<Item = &IpNet> {
        self.allows.iter()
    }
}

/// A batch write of host bans: `None` when the kernel has no batch writes
/// (or there is one key: written one by one), else how many of `keys`, in
/// order, the kernel took (all, unless it failed: the error then goes to
/// `first` unless one is there).
fn batch_taken<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    name: &'static str,
    first: &mut Option<DatapathError>,
) -> Option<usize> {
    if keys.len() <= 1 {
        return None;
    }
    match update_batch(map, keys, values) {
        Ok(true) => Some(keys.len()),
        Ok(false) => None,
        Err((done, e)) => {
            first.get_or_insert(map_err("insert into", name)(e));
            Some(done)
        }
    }
}

/// Writes the prefilter words holding the bits `set` (word, new bits) just
/// set in `mirror`; when the kernel refuses, those bits are taken back out of
/// the mirror, so it never claims a bit the kernel lacks (a missing bit
/// would skip the lookup of a banned source).
fn write_words(
    arr: &mut Array<MapData, u64>,
    mirror: &mut [u64],
    set: &[(u32, u64)],
    name: &'static str,
) -> Result<()> {
    if set.is_empty() {
        return Ok(());
    }
    let mut words: Vec<u32> = set.iter().map(|(w, _)| *w).collect();
    words.sort_unstable();
    words.dedup();
    let values: Vec<u64> = words.iter().map(|w| mirror[*w as usize]).collect();
    let written = match update_batch(IterableMap::map(arr), &words, &values) {
        Ok(true) => Ok(()),
        Ok(false) => words
            .iter()
            .zip(&values)
            .try_for_each(|(w, v)| arr.set(*w, *v, 0)),
        Err((_, e)) => Err(e),
    };
    written.map_err(|e| {
        for (w, m) in set {
            mirror[*w as usize] &= !m;
        }
        map_err("write", name)(e)
    })
}

/// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6 and later).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every key and value of `map`, handed to `f` a chunk at a time, read with
/// one syscall per chunk where the kernel can (a pinned map of a million
/// bans: a few dozen calls instead of a million). `Ok(false)`: the kernel
/// has no batch reads for this map and nothing was handed; the caller reads
/// one by one.
pub(super) fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    f: &mut dyn FnMut(&[K], &[V]),
) -> std::result::Result<bool, MapError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const CHUNK: usize = 1 << 14;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The kernel's position between calls (a bucket or an array index).
    let mut token = [0u64; 4];
    let mut next = [0u64; 4];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` elements of the map's key
        // and value types (aya checked their sizes when it opened the map),
        // the position buffers are larger than any key this is used with;
        // the kernel writes at most `count` of each and the count back.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let n = (attr.count as usize).min(CHUNK);
        if r < 0 {
            let io_error = std::io::Error::last_os_error();
            match io_error.raw_os_error() {
                // The end: what the last call read is valid.
                Some(libc::ENOENT) => {
                    f(&keys[..n], &values[..n]);
                    return Ok(true);
                }
                Some(libc::EINVAL | libc::EOPNOTSUPP | 524) if first => return Ok(false),
                _ => {
                    return Err(MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error,
                    }));
                }
            }
        }
        f(&keys[..n], &values[..n]);
        token = next;
        first = false;
    }
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6 and later).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The batch operations' part of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` into `map` in as few syscalls as the
/// kernel allows (aya has no batch writes). `Ok(false)`: the kernel has no
/// batch writes for this map and nothing was written; the caller writes one
/// by one. On error, also how many leading entries the kernel took.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> std::result::Result<bool, (usize, MapError)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let n = keys.len().min(values.len());
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < n {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: u32::try_from(n - done).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold at least `count` more elements
        // of the map's key and value types (aya checked their sizes against
        // the map when it was opened) and outlive the call; the kernel
        // reads them and writes back only `attr.count` (how many it took).
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if r < 0 {
            let io_error = std::io::Error::last_os_error();
            // Older kernels, or map types without batch operations (524 is
            // the kernel's ENOTSUPP).
            let unsupported = matches!(
                io_error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
            );
            if done == 0 && attr.count == 0 && unsupported {
                return Ok(false);
            }
            // The kernel reports how many it took before the failure.
            let took = (attr.count as usize).min(n - done);
            return Err((
                done + took,
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error,
                }),
            ));
        }
        if attr.count == 0 {
            // No progress: writing them one by one (again) is always right.
            return Ok(false);
        }
        done += attr.count as usize;
    }
    Ok(true)
}
