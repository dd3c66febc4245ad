//! The policy's `events:` section: where the security event log goes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FieldError;

/// File name of the event log inside the state directory.
pub const FILE_NAME: &str = "events.jsonl";

/// The policy's `events:` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsPolicy {
    /// The JSON Lines file (default: `events.jsonl` in the state directory).
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` is the newest).
    pub keep: u32,
    /// Also send each event to the local syslog (`/dev/log`).
    pub syslog: bool,
    /// Violation events written per client and rule per minute; the rest
    /// are counted and summed up in one `suppressed` event when the minute
    /// ends (bans are always written). 0 = no limit.
    pub per_client_rule_per_minute: u32,
}

impl Default for EventsPolicy {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
            syslog: false,
            per_client_rule_per_minute: 20,
        }
    }
}

impl EventsPolicy {
    /// Checks ranges.
    ///
    /// # Errors
    /// With the field and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_bytes < 4096 {
            return Err(FieldError::new("events.max_bytes", "must be at least 4096"));
        }
        if self.keep > 100 {
            return Err(FieldError::new("events.keep", "must be at most 100"));
        }
        Ok(())
    }

    /// The file, given the state directory.
    #[must_use]
    pub fn file(&self, state_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| state_dir.join(FILE_NAME))
    }
}
