//! The policy's `scoring:` section: per-client scores, the ban threshold
//! and TTL escalation.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::FieldError;

/// The policy's `scoring:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringPolicy {
    /// A client whose decayed score reaches this is banned.
    pub ban_threshold: f64,
    /// Time for a client's score to halve.
    #[serde(with = "crate::limits::humantime_serde_secs")]
    pub half_life: Duration,
    /// Ban TTLs for the 1st, 2nd, ... ban of a client; the last repeats.
    #[serde(with = "crate::limits::humantime_serde_vec")]
    pub ban_ttls: Vec<Duration>,
    /// IPv6 clients are scored and banned by this prefix (an attacker holds
    /// the whole /64 and could otherwise step to the next address).
    pub ipv6_prefix: u8,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            ban_threshold: 10.0,
            half_life: Duration::from_secs(600),
            ban_ttls: vec![
                Duration::from_secs(600),
                Duration::from_secs(3600),
                Duration::from_secs(24 * 3600),
            ],
            ipv6_prefix: 64,
        }
    }
}

impl ScoringPolicy {
    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(self.ban_threshold.is_finite() && self.ban_threshold > 0.0) {
            return Err(FieldError::new(
                "scoring.ban_threshold",
                "must be a positive number",
            ));
        }
        if self.half_life < Duration::from_secs(1) {
            return Err(FieldError::new("scoring.half_life", "must be at least 1s"));
        }
        if !(16..=128).contains(&self.ipv6_prefix) {
            return Err(FieldError::new(
                "scoring.ipv6_prefix",
                format!("{} is outside 16..=128", self.ipv6_prefix),
            ));
        }
        Ok(())
    }

    /// The ban TTL for a client's `offence`-th ban (1-based).
    #[must_use]
    pub fn ttl(&self, offence: u32) -> Duration {
        crate::limits::ladder(&self.ban_ttls, offence, Duration::from_secs(600))
    }

    /// The unit a client is scored and banned as: the address, or its IPv6
    /// prefix.
    #[must_use]
    pub fn client_net(&self, ip: IpAddr) -> IpNet {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let len = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
    }
}
