//! What the agent checks and takes before it loads anything, and how a
//! failed start cleans up after itself.
//!
//! - [`preflight`]: interfaces exist, the allowlist is usable, the control
//!   socket path is free (or a stale socket): refused before any program is
//!   loaded or map pinned.
//! - [`lock_interfaces`]: one agent per interface, host-wide. The lock files
//!   are keyed by network namespace and interface index, so agents in
//!   different namespaces (or on different interfaces) coexist.
//! - [`PinGuard`]: pins created by a start that then fails are removed;
//!   pins that were there before (a running or crashed agent's, which carry
//!   bans) are left alone.

use std::{
    collections::HashSet,
    fs::File,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tracing::warn;

use super::AgentOptions;

/// Where the per-interface locks live (on tmpfs: gone at reboot, and a
/// crashed agent's `flock` is released by the kernel).
pub const LOCK_DIR: &str = "/run/tollgate/locks";

/// Checks everything that can be checked without touching the kernel.
///
/// # Errors
/// Names the interface, allowlist entry or socket path that is wrong.
pub fn preflight(opts: &AgentOptions) -> anyhow::Result<()> {
    for iface in &opts.ifaces {
        nix::net::if_::if_nametoindex(iface.as_str()).map_err(|e| {
            anyhow::anyhow!(
                "interface {iface} does not exist in this network namespace ({e}); \
                 see `ip -br link`"
            )
        })?;
    }
    for cidr in &opts.allowlist {
        crate::net::parse_net(cidr)
            .and_then(|n| crate::net::check_breadth(n, false))
            .with_context(|| format!("allowlist entry '{cidr}' in the config file"))?;
    }
    match std::fs::symlink_metadata(&opts.socket) {
        Ok(m) if !m.file_type().is_socket() => bail!(
            "refusing to replace {}: it exists and is not a socket; remove it yourself or \
             choose another --socket path",
            opts.socket.display()
        ),
        _ => Ok(()),
    }
}

/// Takes a host-wide lock for each interface, held for the process lifetime.
///
/// # Errors
/// When another agent holds one (it names the interface) or the lock
/// directory cannot be used.
pub fn lock_interfaces(ifaces: &[String]) -> anyhow::Result<Vec<File>> {
    lock_interfaces_in(Path::new(LOCK_DIR), ifaces)
}

fn lock_interfaces_in(dir: &Path, ifaces: &[String]) -> anyhow::Result<Vec<File>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .context("failed to identify the network namespace")?;
    let mut locks = Vec::new();
    for iface in ifaces {
        let index = nix::net::if_::if_nametoindex(iface.as_str())
            .with_context(|| format!("interface {iface} does not exist"))?;
        let path = dir.join(format!("iface-{netns}-{index}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => locks.push(f),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another tollgate agent is already running on {iface} (it holds {}); \
                 stop it first: two agents on one interface would replace each other's programs",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("failed to lock {}", path.display()));
            }
        }
    }
    Ok(locks)
}

/// Removes, on drop, the pins a start created unless [`PinGuard::keep`] was
/// called (the start succeeded).
pub struct PinGuard {
    dirs: Vec<(PathBuf, HashSet<std::ffi::OsString>, bool)>,
    root: Option<PathBuf>,
    armed: bool,
}

fn entries(dir: &Path) -> Option<HashSet<std::ffi::OsString>> {
    std::fs::read_dir(dir)
        .ok()
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
}

impl PinGuard {
    /// Remembers what `pin_dir` and the sub-directories `subs` hold now.
    #[must_use]
    pub fn new(pin_dir: &Path, subs: &[&Path]) -> Self {
        let root = (!pin_dir.exists()).then(|| pin_dir.to_owned());
        let dirs = subs
            .iter()
            .map(|d| {
                let before = entries(d);
                (
                    d.to_path_buf(),
                    before.clone().unwrap_or_default(),
                    before.is_none(),
                )
            })
            .collect();
        Self {
            dirs,
            root,
            armed: true,
        }
    }

    /// The start succeeded: keep everything.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut removed = 0usize;
        for (dir, before, created) in &self.dirs {
            for name in entries(dir).unwrap_or_default() {
                if before.contains(&name) {
                    continue;
                }
                let p = dir.join(&name);
                match std::fs::remove_file(&p) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        warn!(pin = %p.display(), "failed to remove a pin of the failed start: {e}")
                    }
                }
            }
            if *created {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if let Some(root) = &self.root {
            let _ = std::fs::remove_dir(root);
        }
        if removed > 0 {
            warn!(removed, "the start failed: removed the pins it had created");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_guard_removes_only_new_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let maps = tmp.path().join("maps");
        std::fs::create_dir(&maps).unwrap();
        std::fs::write(maps.join("OLD"), b"").unwrap();
        let links = tmp.path().join("links");
        let g = PinGuard::new(tmp.path(), &[&maps, &links]);
        std::fs::write(maps.join("NEW"), b"").unwrap();
        std::fs::create_dir(&links).unwrap();
        std::fs::write(links.join("x"), b"").unwrap();
        drop(g);
        assert!(maps.join("OLD").exists());
        assert!(!maps.join("NEW").exists());
        assert!(!links.exists());

        let g = PinGuard::new(tmp.path(), &[&maps]);
        std::fs::write(maps.join("NEW"), b"").unwrap();
        g.keep();
        assert!(maps.join("NEW").exists());
    }

    #[test]
    fn interface_locks_are_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let lo = vec!["lo".to_owned()];
        let held = lock_interfaces_in(tmp.path(), &lo).unwrap();
        let e = lock_interfaces_in(tmp.path(), &lo).unwrap_err().to_string();
        assert!(e.contains("already running on lo"), "{e}");
        drop(held);
        lock_interfaces_in(tmp.path(), &lo).unwrap();
        assert!(lock_interfaces_in(tmp.path(), &["tg-no-such-if".into()]).is_err());
    }
}
