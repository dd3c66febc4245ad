//! The bouncer's settings: the policy's `crowdsec:` section, the Local
//! API endpoint and its key, validated into a [`BouncerJob`].

use std::time::Duration;

use super::{Filter, Scope};

/// The origin (group) every CrowdSec ban carries: `block rm --origin
/// crowdsec` lifts them all.
pub const ORIGIN: &str = "crowdsec";
/// Default poll interval.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// Largest API key accepted (CrowdSec's are 32 characters).
pub const MAX_KEY_LEN: usize = 256;

/// `crowdsec:` in the policy: where the Local API is and which decisions
/// to enforce.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecSpec {
    /// The Local API, e.g. `http://127.0.0.1:8080/`.
    pub lapi_url: String,
    /// A file holding the bouncer's API key (`cscli bouncers add tollgate`);
    /// relative paths are relative to the policy file.
    pub api_key_file: Option<std::path::PathBuf>,
    /// The key inline (prefer `api_key_file`: policy files get copied).
    pub api_key: Option<String>,
    /// How often to pull, e.g. `10s` (default); 1s to 1h.
    pub poll: Option<String>,
    /// Decision scopes to enforce: `ip`, `range` (default both).
    pub scopes: Option<Vec<Scope>>,
    /// Only decisions from these origins (`crowdsec`, `cscli`, `CAPI`,
    /// `lists`, ...); default every origin.
    pub origins: Option<Vec<String>>,
}

impl std::fmt::Debug for CrowdsecSpec {
    // The key never reaches a log line, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrowdsecSpec")
            .field("lapi_url", &self.lapi_url)
            .field("api_key_file", &self.api_key_file)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("poll", &self.poll)
            .field("scopes", &self.scopes)
            .field("origins", &self.origins)
            .finish()
    }
}

/// Where a plain-HTTP Local API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix ending in `/` (usually just `/`).
    pub base: String,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PREFIX]`.
    ///
    /// # Errors
    /// What is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .trim()
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https is not supported yet: use the Local API over http on the host \
                     (http://127.0.0.1:8080/) or a local TLS-terminating proxy"
                        .into(),
                );
            }
            _ => return Err(format!("'{url}' must start with http://")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("'{url}' names no host"))?;
        if uri.query().is_some() {
            return Err(format!("'{url}' must not carry a query"));
        }
        if url.contains('@') {
            return Err(format!("'{url}' must not carry credentials"));
        }
        let mut base = uri.path().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
            base,
        })
    }

    /// The `Host` header value.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where the API key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Read from this file at every pull (rotating it needs no restart).
    File(std::path::PathBuf),
    /// Inline in the policy.
    Inline(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl KeySource {
    /// The key, checked.
    ///
    /// # Errors
    /// When the file cannot be read or the key is unusable (the message
    /// never contains the key).
    pub fn read(&self) -> Result<String, String> {
        let key = match self {
            Self::Inline(k) => k.clone(),
            Self::File(p) => {
                let meta = std::fs::metadata(p)
                    .map_err(|e| format!("cannot read api_key_file {}: {e}", p.display()))?;
                if meta.len() > 4096 {
                    return Err(format!("api_key_file {} is too large", p.display()));
                }
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read api_key_file {}: {e}", p.display()))?
            }
        };
        let key = key.trim().to_owned();
        check_key(&key)?;
        Ok(key)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the API key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "the API key is longer than {MAX_KEY_LEN} characters"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the API key must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// A validated `crowdsec:` section, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BouncerJob {
    /// The Local API.
    pub endpoint: Endpoint,
    /// The key.
    pub key: KeySource,
    /// Poll interval.
    pub poll: Duration,
    /// What to take.
    pub filter: Filter,
}

impl CrowdsecSpec {
    /// Checks the section; `Err((field, message))` names the field below
    /// `crowdsec.`.
    ///
    /// # Errors
    /// The first problem found.
    pub fn job(&self) -> Result<BouncerJob, (String, String)> {
        let endpoint = Endpoint::parse(&self.lapi_url).map_err(|m| ("lapi_url".into(), m))?;
        let key = match (&self.api_key_file, &self.api_key) {
            (Some(_), Some(_)) => {
                return Err((
                    "api_key".into(),
                    "give api_key_file or api_key, not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    "api_key_file".into(),
                    "the bouncer needs an API key: `cscli bouncers add tollgate` prints one; \
                     put it in a file named by api_key_file"
                        .into(),
                ));
            }
            (Some(p), None) if p.as_os_str().is_empty() => {
                return Err(("api_key_file".into(), "path must not be empty".into()));
            }
            (Some(p), None) => KeySource::File(p.clone()),
            (None, Some(k)) => {
                check_key(k.trim()).map_err(|m| ("api_key".into(), m))?;
                KeySource::Inline(k.trim().to_owned())
            }
        };
        let poll = match &self.poll {
            None => DEFAULT_POLL,
            Some(p) => {
                let d = humantime::parse_duration(p.trim()).map_err(|e| {
                    (
                        "poll".to_owned(),
                        format!("'{p}' is not a duration like 10s, 1m ({e})"),
                    )
                })?;
                if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                    return Err(("poll".into(), format!("{p} must be between 1s and 1h")));
                }
                d
            }
        };
        let scopes = self
            .scopes
            .clone()
            .unwrap_or_else(|| vec![Scope::Ip, Scope::Range]);
        if scopes.is_empty() {
            return Err(("scopes".into(), "name at least one of ip, range".into()));
        }
        if let Some(origins) = &self.origins {
            for (i, o) in origins.iter().enumerate() {
                if o.is_empty() || o.len() > 64 || o.chars().any(|c| c.is_whitespace()) {
                    return Err((
                        format!("origins[{i}]"),
                        format!("'{o}' is not an origin name (crowdsec, cscli, CAPI, lists, ...)"),
                    ));
                }
            }
            if origins.is_empty() {
                return Err((
                    "origins".into(),
                    "an empty list would take nothing; omit it to take every origin".into(),
                ));
            }
        }
        Ok(BouncerJob {
            endpoint,
            key,
            poll,
            filter: Filter {
                scopes,
                origins: self.origins.clone(),
            },
        })
    }
}
