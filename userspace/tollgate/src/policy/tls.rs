//! The policy's `tls:` section: which HTTPS connections are judged from the
//! TLS library's plaintext.

use serde::{Deserialize, Serialize};

use super::FieldError;

/// The policy's `tls` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPolicy {
    /// Probe TLS libraries for the plaintext of HTTPS APIs.
    pub enabled: bool,
    /// Local ports whose connections are judged (empty: the API ports).
    pub ports: Vec<u16>,
    /// Only these processes (by name, `comm`), when not empty.
    pub include: Vec<String>,
    /// Never these processes (by name).
    pub exclude: Vec<String>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl TlsPolicy {
    /// Checks the values.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(i) = self.ports.iter().position(|p| *p == 0) {
            return Err(FieldError::new(
                format!("tls.ports[{i}]"),
                "must be a port (1-65535)",
            ));
        }
        for (list, names) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, n) in names.iter().enumerate() {
                // The kernel keeps 15 bytes of a process name.
                if n.is_empty() || n.len() > 15 || n.contains('/') {
                    return Err(FieldError::new(
                        format!("tls.{list}[{i}]"),
                        "must be a process name (comm: 1-15 bytes, no '/')",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether a process of this name is judged.
    #[must_use]
    pub fn selects(&self, comm: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|n| n == comm))
            && !self.exclude.iter().any(|n| n == comm)
    }
}
