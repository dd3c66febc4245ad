//! The policy's `capacity:` section: how many entries each kernel map may
//! hold. Applied when the maps are created, so a change takes effect at the
//! agent's next start (the store puts the bans back into the new maps).

use serde::{Deserialize, Serialize};
use tollgate_common::capacity as c;

use super::FieldError;

/// The policy's `capacity` section (entries per map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityPolicy {
    /// IPv4 host bans (`TG_BLOCK4`).
    pub hosts_v4: u32,
    /// IPv6 host bans (`TG_BLOCK6`).
    pub hosts_v6: u32,
    /// IPv4 range bans (`TG_BLOCK4_LPM`).
    pub ranges_v4: u32,
    /// IPv6 range bans (`TG_BLOCK6_LPM`).
    pub ranges_v6: u32,
    /// Allowlist entries per family (`TG_ALLOW4`, `TG_ALLOW6`).
    pub allowlist: u32,
    /// Sources the rate limiter tracks at once (`TG_BUCKETS`, LRU).
    pub rate_limit_sources: u32,
    /// Sources whose open connections are counted (`TG_CONNS`).
    pub connection_sources: u32,
    /// Connections followed at once for sampling, request verification and
    /// trusted proxies (`TG_FLOWS`, `TG_ESTAB`, `TG_PFLOWS`, LRU).
    pub flows: u32,
    /// Bytes of the ring buffer that carries API samples to the agent
    /// (`TG_SAMPLES`): a power of two from 64 KiB to 1 GiB. A full ring
    /// loses records, and requests in them are not judged.
    pub sample_ring_bytes: u32,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        Self {
            hosts_v4: c::BLOCK4,
            hosts_v6: c::BLOCK6,
            ranges_v4: c::BLOCK4_LPM,
            ranges_v6: c::BLOCK6_LPM,
            allowlist: c::ALLOW,
            rate_limit_sources: c::BUCKETS,
            connection_sources: c::CONNS,
            flows: c::FLOWS,
            sample_ring_bytes: c::SAMPLES_BYTES,
        }
    }
}

/// Bounds of `sample_ring_bytes`: the kernel wants a power of two and a
/// whole number of pages; 1 GiB is far past any sane backlog.
pub const SAMPLE_RING_BYTES: std::ops::RangeInclusive<u32> = (1 << 16)..=(1 << 30);

/// Upper bound of every capacity: 2^26 entries (a 64 Mi-entry ban map is
/// already several GiB of kernel memory).
pub const MAX_CAPACITY: u32 = 1 << 26;

impl CapacityPolicy {
    /// Each field with its policy key.
    #[must_use]
    pub fn fields(&self) -> [(&'static str, u32); 8] {
        [
            ("hosts_v4", self.hosts_v4),
            ("hosts_v6", self.hosts_v6),
            ("ranges_v4", self.ranges_v4),
            ("ranges_v6", self.ranges_v6),
            ("allowlist", self.allowlist),
            ("rate_limit_sources", self.rate_limit_sources),
            ("connection_sources", self.connection_sources),
            ("flows", self.flows),
        ]
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (name, v) in self.fields() {
            if !(1..=MAX_CAPACITY).contains(&v) {
                return Err(FieldError::new(
                    format!("capacity.{name}"),
                    format!("must be 1..={MAX_CAPACITY}"),
                ));
            }
        }
        let ring = self.sample_ring_bytes;
        if !ring.is_power_of_two() || !SAMPLE_RING_BYTES.contains(&ring) {
            return Err(FieldError::new(
                "capacity.sample_ring_bytes",
                format!(
                    "must be a power of two from {} to {} (bytes)",
                    SAMPLE_RING_BYTES.start(),
                    SAMPLE_RING_BYTES.end()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_datapath_defaults_and_zero_is_refused() {
        let p = CapacityPolicy::default();
        assert_eq!(p.ranges_v4, 262_144);
        assert_eq!(p.hosts_v4, 2_097_152);
        p.validate().unwrap();
        let e = CapacityPolicy { ranges_v6: 0, ..p }.validate().unwrap_err();
        assert_eq!(e.field, "capacity.ranges_v6");
        assert_eq!(p.sample_ring_bytes, 32 << 20);
        for bad in [3 << 20, 1 << 12, 1 << 31] {
            let e = CapacityPolicy {
                sample_ring_bytes: bad,
                ..p
            }
            .validate()
            .unwrap_err();
            assert_eq!(e.field, "capacity.sample_ring_bytes");
        }
        CapacityPolicy {
            sample_ring_bytes: 1 << 26,
            ..p
        }
        .validate()
        .unwrap();
    }
}
