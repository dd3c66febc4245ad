//! Rate limits as operators write them (policy `rate_limit:` section and
//! `tollgate limits set`), and their translation into the datapath's
//! [`LimitCfg`] (GCRA intervals computed here, so the kernel never divides).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use tollgate_common::LimitCfg;

/// Largest rate accepted, per second (packets, SYNs).
pub const MAX_RATE: u32 = 100_000_000;
/// Largest byte rate accepted, per second.
pub const MAX_BPS: u64 = 100_000_000_000;

/// One set of limits. Unset fields are unlimited; a burst defaults to one
/// second's worth of its rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<u32>,
    /// Packets allowed back to back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u64>,
    /// Bytes allowed back to back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps_burst: Option<u64>,
    /// New TCP connections (SYN without ACK) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_rate: Option<u32>,
    /// SYNs allowed back to back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_burst: Option<u32>,
    /// Established connections per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u32>,
}

/// An invalid limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct LimitError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> LimitError {
    LimitError {
        field,
        message: message.into(),
    }
}

impl LimitSpec {
    /// Checks ranges and combinations.
    ///
    /// # Errors
    /// On zero rates, absurd values, or a burst without its rate.
    pub fn validate(&self) -> Result<(), LimitError> {
        for (field, rate) in [("pps", self.pps), ("syn_rate", self.syn_rate)] {
            match rate {
                Some(0) => {
                    return Err(err(field, "must be at least 1 (leave it out for no limit)"));
                }
                Some(r) if r > MAX_RATE => {
                    return Err(err(field, format!("must be at most {MAX_RATE}")));
                }
                _ => {}
            }
        }
        match self.bps {
            Some(0) => return Err(err("bps", "must be at least 1 (leave it out for no limit)")),
            Some(b) if b > MAX_BPS => return Err(err("bps", format!("must be at most {MAX_BPS}"))),
            _ => {}
        }
        for (field, burst, rate) in [
            ("burst", self.burst, self.pps.is_some()),
            ("syn_burst", self.syn_burst, self.syn_rate.is_some()),
        ] {
            match burst {
                Some(_) if !rate => return Err(err(field, "needs its rate (--pps / --syn-rate)")),
                Some(0) => return Err(err(field, "must be at least 1")),
                Some(b) if b > MAX_RATE => {
                    return Err(err(field, format!("must be at most {MAX_RATE}")));
                }
                _ => {}
            }
        }
        if self.bps_burst.is_some() && self.bps.is_none() {
            return Err(err("bps_burst", "needs --bps"));
        }
        if self.bps_burst == Some(0) {
            return Err(err("bps_burst", "must be at least 1"));
        }
        if self.max_conns == Some(0) {
            return Err(err(
                "max_conns",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if *self == Self::default() {
            return Err(err(
                "limits",
                "no limit given (use `tollgate limits clear` to remove limits)",
            ));
        }
        Ok(())
    }

    /// These limits, with `base`'s values where these leave a field unset.
    #[must_use]
    pub fn or(self, base: Option<&Self>) -> Self {
        let Some(b) = base else { return self };
        Self {
            pps: self.pps.or(b.pps),
            burst: self.burst.or(b.burst),
            bps: self.bps.or(b.bps),
            bps_burst: self.bps_burst.or(b.bps_burst),
            syn_rate: self.syn_rate.or(b.syn_rate),
            syn_burst: self.syn_burst.or(b.syn_burst),
            max_conns: self.max_conns.or(b.max_conns),
        }
    }

    /// The datapath form (class is filled in by the datapath per slot).
    #[must_use]
    pub fn to_cfg(&self) -> LimitCfg {
        const NS: u64 = 1_000_000_000;
        let interval = |rate: u32| NS / u64::from(rate.max(1));
        let pps = self.pps.unwrap_or(0);
        let burst = self.burst.unwrap_or(pps).max(1);
        let syn = self.syn_rate.unwrap_or(0);
        let syn_burst = self.syn_burst.unwrap_or(syn).max(1);
        let bps = self.bps.unwrap_or(0);
        let bps_burst = self.bps_burst.unwrap_or(bps).max(1);
        let pkt_interval_ns = if pps == 0 { 0 } else { interval(pps) };
        let syn_interval_ns = if syn == 0 { 0 } else { interval(syn) };
        let ns_per_kib = (1024 * NS).checked_div(bps).unwrap_or(0);
        LimitCfg {
            pps,
            burst,
            syn_rate: syn,
            syn_burst,
            max_conns: self.max_conns.unwrap_or(0),
            class: 0,
            bps,
            bps_burst,
            pkt_interval_ns,
            pkt_tolerance_ns: u64::from(burst - 1) * pkt_interval_ns,
            syn_interval_ns,
            syn_tolerance_ns: u64::from(syn_burst - 1) * syn_interval_ns,
            ns_per_kib,
            byte_tolerance_ns: if bps == 0 {
                0
            } else {
                u64::try_from(u128::from(bps_burst) * u128::from(NS) / u128::from(bps))
                    .unwrap_or(u64::MAX)
            },
        }
    }
}

/// When a source that keeps exceeding its limits is banned, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// Continuous exceeding for this long gets a ban (e.g. `10s`).
    #[serde(default = "default_after", with = "humantime_serde_secs")]
    pub after: Duration,
    /// Ban TTLs for the 1st, 2nd, ... offence; the last repeats.
    #[serde(default = "default_ttls", with = "humantime_serde_vec")]
    pub ttls: Vec<Duration>,
    /// Ban only sources that completed a TCP handshake with this host within
    /// `handshake_within` (a flood's source address may be forged; a
    /// handshake's cannot). `false` lets UDP-only services escalate on
    /// spoofable sources: limiting still drops their packets either way.
    #[serde(default = "default_true")]
    pub require_handshake: bool,
    /// How recent that handshake must be.
    #[serde(default = "default_handshake_within", with = "humantime_serde_secs")]
    pub handshake_within: Duration,
}

fn default_true() -> bool {
    true
}

fn default_handshake_within() -> Duration {
    Duration::from_secs(600)
}

fn default_after() -> Duration {
    Duration::from_secs(10)
}

fn default_ttls() -> Vec<Duration> {
    vec![
        Duration::from_secs(60),
        Duration::from_secs(600),
        Duration::from_secs(3600),
    ]
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            after: default_after(),
            ttls: default_ttls(),
            require_handshake: true,
            handshake_within: default_handshake_within(),
        }
    }
}

impl Escalation {
    /// The ban TTL for the `offence`-th offence (1-based).
    #[must_use]
    pub fn ttl(&self, offence: u32) -> Duration {
        ladder(&self.ttls, offence, Duration::from_secs(60))
    }
}

/// The `offence`-th (1-based) step of a TTL ladder; the last step repeats.
#[must_use]
pub fn ladder(ttls: &[Duration], offence: u32, fallback: Duration) -> Duration {
    let i = usize::try_from(offence.saturating_sub(1)).unwrap_or(usize::MAX);
    ttls.get(i).or(ttls.last()).copied().unwrap_or(fallback)
}

/// The policy's `rate_limit:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// IPv6 clients are limited per prefix of this length (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Limits for every port without its own.
    #[serde(default)]
    pub default: Option<LimitSpec>,
    /// Limits per destination port.
    #[serde(default)]
    pub ports: BTreeMap<u16, LimitSpec>,
    /// Auto-ban of persistent offenders.
    #[serde(default)]
    pub escalation: Escalation,
}

pub(crate) mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod humantime_serde_vec {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer, ser::SerializeSeq as _};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        let out = v
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() || out.iter().any(Duration::is_zero) {
            return Err(serde::de::Error::custom(
                "ttls must be a non-empty list of non-zero durations",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_parameters() {
        let c = LimitSpec {
            pps: Some(100),
            burst: Some(10),
            ..LimitSpec::default()
        }
        .to_cfg();
        assert_eq!(c.pkt_interval_ns, 10_000_000);
        assert_eq!(c.pkt_tolerance_ns, 90_000_000);
        let d = LimitSpec {
            syn_rate: Some(4),
            bps: Some(1_000_000),
            ..LimitSpec::default()
        }
        .to_cfg();
        assert_eq!(d.syn_burst, 4);
        assert_eq!(d.syn_tolerance_ns, 750_000_000);
        assert_eq!(d.ns_per_kib, 1_024_000);
        assert_eq!(d.byte_tolerance_ns, 1_000_000_000);
        assert!(d.is_active() && c.is_active());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |s: LimitSpec| s.validate().unwrap_err().field;
        assert_eq!(
            bad(LimitSpec {
                pps: Some(0),
                ..LimitSpec::default()
            }),
            "pps"
        );
        assert_eq!(
            bad(LimitSpec {
                burst: Some(3),
                ..LimitSpec::default()
            }),
            "burst"
        );
        assert_eq!(
            bad(LimitSpec {
                bps_burst: Some(3),
                ..LimitSpec::default()
            }),
            "bps_burst"
        );
        assert_eq!(bad(LimitSpec::default()), "limits");
        assert!(
            LimitSpec {
                max_conns: Some(5),
                ..LimitSpec::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn escalation_ladder_repeats_its_last_step() {
        let e = Escalation::default();
        assert_eq!(e.ttl(1), Duration::from_secs(60));
        assert_eq!(e.ttl(3), Duration::from_secs(3600));
        assert_eq!(e.ttl(9), Duration::from_secs(3600));
    }
}
