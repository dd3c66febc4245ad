//! The policy's `sampling:` section: how API payloads are sampled.

use serde::{Deserialize, Serialize};

use super::FieldError;

/// The policy's `sampling` section.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingPolicy {
    /// Every flow's first this-many payload packets are sampled.
    pub first_packets: u32,
    /// Then one in this many.
    pub one_in: u32,
    /// Payload bytes copied per sample (at most 1024).
    pub max_bytes: u32,
    /// CPU the pipeline may use, percent of one core.
    pub cpu_budget_percent: f64,
    /// Take requests at the socket (stream verdict on API connections):
    /// every request of every connection, as the server reads it. `false`
    /// samples request packets at the NIC like responses.
    pub stream: bool,
    /// Body bytes of each request judged (heads are always judged whole);
    /// the rest of a longer body is passed over by its framing, and the
    /// stream program stops copying it.
    pub body_bytes: u32,
}

impl Default for SamplingPolicy {
    fn default() -> Self {
        Self {
            first_packets: 4,
            one_in: 10,
            max_bytes: 1024,
            cpu_budget_percent: 10.0,
            stream: true,
            body_bytes: crate::api::flows::DEFAULT_BODY_CAP as u32,
        }
    }
}

impl SamplingPolicy {
    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.one_in == 0 {
            return Err(FieldError::new("sampling.one_in", "must be at least 1"));
        }
        if self.max_bytes == 0 || self.max_bytes as usize > tollgate_common::SAMPLE_BYTES {
            return Err(FieldError::new(
                "sampling.max_bytes",
                format!("must be 1..={}", tollgate_common::SAMPLE_BYTES),
            ));
        }
        if self.body_bytes as usize > tollgate_detect::MAX_BODY_BYTES {
            return Err(FieldError::new(
                "sampling.body_bytes",
                format!("must be at most {}", tollgate_detect::MAX_BODY_BYTES),
            ));
        }
        if !(self.cpu_budget_percent > 0.0 && self.cpu_budget_percent <= 100.0) {
            return Err(FieldError::new(
                "sampling.cpu_budget_percent",
                "must be in (0, 100]",
            ));
        }
        Ok(())
    }

    /// The datapath form with a given divisor.
    #[must_use]
    pub fn cfg(&self, one_in: u32) -> tollgate_common::SampleCfg {
        tollgate_common::SampleCfg {
            first_packets: self.first_packets,
            one_in,
            max_bytes: self.max_bytes,
            reserved: 0,
        }
    }
}
