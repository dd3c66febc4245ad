//! The policy file (YAML). Unknown fields are errors, and every error names
//! the line and field, so a typo never silently weakens protection.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::agent::attach::{AttachKind, XdpModePref};

/// Enforcement mode as written in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// Drop what the policy says to drop.
    Enforce,
    /// Count and report, drop nothing.
    Monitor,
}

impl From<ModeName> for tollgate_common::Mode {
    fn from(m: ModeName) -> Self {
        match m {
            ModeName::Enforce => Self::Enforce,
            ModeName::Monitor => Self::Monitor,
        }
    }
}

/// The policy file. Command-line flags override its fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `enforce` (default) or `monitor`.
    pub mode: Option<ModeName>,
    /// Interfaces to protect.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `xdp` (default) or `tc`.
    pub attach: Option<AttachKind>,
    /// `auto` (default), `driver` or `generic`.
    pub xdp_mode: Option<XdpModePref>,
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// bpffs directory for pins.
    pub pin_dir: Option<PathBuf>,
    /// Durable state directory.
    pub state_dir: Option<PathBuf>,
    /// Sources never dropped (addresses or CIDR prefixes).
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Per-source rate limits and escalation.
    #[serde(default)]
    pub rate_limit: crate::limits::RateLimitPolicy,
}

/// A policy that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable file.
    #[error("failed to read policy file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// YAML or schema error, with its location.
    #[error("{path}:{location}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `line N column M`, when known.
        location: String,
        /// What is wrong.
        message: String,
    },
}

impl Policy {
    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// When unreadable or invalid, with line and field.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses policy text (`path` only labels errors).
    ///
    /// # Errors
    /// When invalid, with line and field.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |location: String, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            location,
            message,
        };
        let p: Self = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location().map_or_else(
                || "?".into(),
                |l| format!("line {} column {}", l.line(), l.column()),
            );
            invalid(loc, e.to_string())
        })?;
        for (i, a) in p.allowlist.iter().enumerate() {
            crate::net::parse_net(a)
                .map_err(|e| invalid(format!("allowlist[{i}]"), e.to_string()))?;
        }
        if let Some(spec) = &p.rate_limit.default {
            spec.validate()
                .map_err(|e| invalid("rate_limit.default".into(), e.to_string()))?;
        }
        for (port, spec) in &p.rate_limit.ports {
            if *port == 0 {
                return Err(invalid(
                    "rate_limit.ports".into(),
                    "port 0 is not a port".into(),
                ));
            }
            spec.validate()
                .map_err(|e| invalid(format!("rate_limit.ports.{port}"), e.to_string()))?;
        }
        if let Some(pl) = p.rate_limit.ipv6_prefix
            && !(16..=128).contains(&pl)
        {
            return Err(invalid(
                "rate_limit.ipv6_prefix".into(),
                format!("{pl} is outside 16..=128"),
            ));
        }
        for (i, name) in p.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("interfaces[{i}]"),
                    format!("'{name}' is not a valid interface name"),
                ));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let p = Policy::parse(
            "mode: monitor\ninterfaces: [eth0]\nattach: tc\nallowlist:\n  - 198.18.0.0/24\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(p.mode, Some(ModeName::Monitor));
        assert_eq!(p.attach, Some(AttachKind::Tc));
        assert_eq!(p.allowlist, vec!["198.18.0.0/24"]);
    }

    #[test]
    fn unknown_fields_are_errors_with_a_line() {
        let e = Policy::parse("mode: enforce\nmodee: monitor\n", Path::new("p.yaml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("modee"), "{s}");
    }

    #[test]
    fn bad_allowlist_entry_names_the_field() {
        let e = Policy::parse("allowlist: [198.18.0.5/24]\n", Path::new("p.yaml")).unwrap_err();
        assert!(e.to_string().contains("allowlist[0]"), "{e}");
    }
}
