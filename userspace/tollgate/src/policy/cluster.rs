//! The policy's `cluster:` section: share bans with the other agents of a
//! fleet through etcd (off when absent).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The fleet a host is part of when none is named.
pub const DEFAULT_FLEET: &str = "default";

/// The policy's `cluster:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// etcd client URLs (`http://10.0.0.1:2379`, `https://...` with `tls`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The fleet's name: agents share bans with those of the same fleet
    /// (keys under `/tollgate/<fleet>/`). Default `default`.
    pub fleet: Option<String>,
    /// This host's name in the fleet (default: the hostname).
    pub host_id: Option<String>,
    /// mTLS to etcd: this host's client certificate and key, and the CA
    /// that signed the members' certificates (PEM files).
    pub tls: Option<ClusterTls>,
    /// Bans this host shares per minute at most; the rest stay local (one
    /// compromised or buggy agent cannot ban the world). Default 600.
    pub max_shared_bans_per_minute: Option<u32>,
    /// The longest a ban received from another host lasts here, in seconds
    /// (permanent and longer bans are cut to it). Default 7 days.
    pub max_remote_ttl_secs: Option<u64>,
    /// How often, in seconds, the kernel ban maps are checked against the
    /// bans this host holds (its own and the fleet's); what differs is
    /// counted as drift and repaired. Default 30.
    pub reconcile_secs: Option<u64>,
}

/// Client certificate, key and CA for etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// This host's client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate etcd's members are checked against (PEM).
    pub ca: PathBuf,
}

/// Default of `max_shared_bans_per_minute`.
pub const DEFAULT_SHARED_PER_MINUTE: u32 = 600;
/// Default of `max_remote_ttl_secs`.
pub const DEFAULT_REMOTE_TTL: u64 = 7 * 24 * 3600;
/// Default of `reconcile_secs`.
pub const DEFAULT_RECONCILE_SECS: u64 = 30;

/// Why a fleet or host name is refused, if it is: they become etcd key
/// segments, so only `[A-Za-z0-9._-]`, 1–63 characters.
#[must_use]
pub fn check_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some(format!("'{name}' must be 1 to 63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Some(format!(
            "'{name}' may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

impl ClusterSpec {
    /// Checks the section: (field, message) of the first problem.
    ///
    /// # Errors
    /// When a field is invalid.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.endpoints.is_empty() {
            return Err(("endpoints".into(), "at least one etcd URL is needed".into()));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Some(m) = check_endpoint(e, self.tls.is_some()) {
                return Err((format!("endpoints[{i}]"), m));
            }
        }
        for (field, v) in [("fleet", &self.fleet), ("host_id", &self.host_id)] {
            if let Some(m) = v.as_deref().and_then(check_name) {
                return Err((field.into(), m));
            }
        }
        if self.max_shared_bans_per_minute == Some(0) {
            return Err((
                "max_shared_bans_per_minute".into(),
                "must be at least 1 (leave `cluster` out to share nothing)".into(),
            ));
        }
        if self.max_remote_ttl_secs == Some(0) {
            return Err(("max_remote_ttl_secs".into(), "must be at least 1".into()));
        }
        if self.reconcile_secs == Some(0) {
            return Err(("reconcile_secs".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why an etcd URL is refused, if it is.
#[must_use]
pub fn check_endpoint(url: &str, tls: bool) -> Option<String> {
    let rest = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => {
            if tls {
                return Some(format!("'{url}': with `tls` set, use https://"));
            }
            r
        }
        (_, Some(r)) => {
            if !tls {
                return Some(format!("'{url}': https:// needs the `tls` section"));
            }
            r
        }
        _ => return Some(format!("'{url}' must start with http:// or https://")),
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains(['/', ' ']) || !hostport.contains(':') {
        return Some(format!("'{url}' must be scheme://host:port"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_sections() {
        let ok = ClusterSpec {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..ClusterSpec::default()
        };
        assert!(ok.check().is_ok());
        let none = ClusterSpec::default();
        assert_eq!(none.check().unwrap_err().0, "endpoints");
        let mut bad = ok.clone();
        bad.endpoints = vec!["127.0.0.1:2379".into()];
        assert_eq!(bad.check().unwrap_err().0, "endpoints[0]");
        bad.endpoints = vec!["https://127.0.0.1:2379".into()];
        assert_eq!(bad.check().unwrap_err().0, "endpoints[0]");
        let mut bad = ok.clone();
        bad.fleet = Some("a/b".into());
        assert_eq!(bad.check().unwrap_err().0, "fleet");
        let mut bad = ok;
        bad.host_id = Some(String::new());
        assert_eq!(bad.check().unwrap_err().0, "host_id");
    }
}
