//! `cargo xtask install`: build the release binary and install it as a
//! systemd service with its default policy. Idempotent: every step compares
//! what is there with what it would write and says `ok` (nothing to do),
//! `done` (changed) or, with `--dry-run`, `would` (changes nothing).
//!
//! What goes where (PREFIX defaults to /usr/local):
//!
//! | source                          | destination                              | mode |
//! |---------------------------------|------------------------------------------|------|
//! | target/release/tollgate         | PREFIX/bin/tollgate                      | 0755 |
//! | deploy/systemd/tollgate.service | /etc/systemd/system/tollgate.service     | 0644 |
//! | deploy/policy.yaml              | /etc/tollgate/policy.yaml (if absent)    | 0600 |
//! | docs/deploy.md                  | PREFIX/share/doc/tollgate/deploy.md      | 0644 |
//! | (directory)                     | /var/lib/tollgate                        | 0700 |
//!
//! An existing policy is never overwritten: it is the operator's. The unit's
//! `/usr/local` paths are rewritten when another prefix is chosen. The
//! service is not enabled or started: the policy names `eth0`, which the
//! operator checks first (see docs/deploy.md).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run as sh};

/// Where `cargo xtask install` puts things.
pub struct Options {
    /// Installation prefix for the binary and docs (`/usr/local`).
    pub prefix: PathBuf,
    /// Print what would be done; change nothing, build nothing.
    pub dry_run: bool,
    /// Stage every path under this directory instead of `/` (packaging).
    pub destdir: Option<PathBuf>,
}

/// The prefix the unit in `deploy/systemd/` is written for.
const UNIT_PREFIX: &str = "/usr/local";
const UNIT_DEST: &str = "/etc/systemd/system/tollgate.service";
const POLICY_DEST: &str = "/etc/tollgate/policy.yaml";
const STATE_DIR: &str = "/var/lib/tollgate";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !opts.prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path, not {}",
            opts.prefix.display()
        );
    }
    let root = repo_root();
    let inst = Installer {
        dry_run: opts.dry_run,
        destdir: opts.destdir.clone(),
    };
    // SAFETY: geteuid has no preconditions.
    if !opts.dry_run && opts.destdir.is_none() && unsafe { crate::libc_geteuid() } != 0 {
        bail!(
            "installing under / needs root (it writes {UNIT_DEST} and {POLICY_DEST}); \
             try `cargo xtask install --dry-run` to see what it would do"
        );
    }
    println!(
        "tollgate install{}:",
        if opts.dry_run { " (dry run)" } else { "" }
    );

    let binary = target_dir(&root).join("release/tollgate");
    if opts.dry_run {
        println!("  would run `cargo build --release -p tollgate`");
    } else {
        crate::setup::ensure_ready("cargo xtask install", false)?;
        sh(cargo().args(["build", "--release", "-p", "tollgate"]))?;
    }
    let bin_dest = opts.prefix.join("bin/tollgate");
    let bin = if opts.dry_run {
        fs::read(&binary).ok()
    } else {
        Some(fs::read(&binary).with_context(|| format!("failed to read {}", binary.display()))?)
    };
    inst.file(&bin_dest, bin.as_deref(), 0o755)?;

    let unit = read(&root.join("deploy/systemd/tollgate.service"))?;
    let unit = unit.replace(
        &format!("{UNIT_PREFIX}/"),
        &format!("{}/", opts.prefix.display()),
    );
    let unit_changed = inst.file(Path::new(UNIT_DEST), Some(unit.as_bytes()), 0o644)?;

    let policy = read(&root.join("deploy/policy.yaml"))?;
    inst.new_file_only(Path::new(POLICY_DEST), policy.as_bytes(), 0o600)?;

    let doc = read(&root.join("docs/deploy.md"))?;
    inst.file(
        &opts.prefix.join("share/doc/tollgate/deploy.md"),
        Some(doc.as_bytes()),
        0o644,
    )?;

    inst.private_dir(Path::new(STATE_DIR))?;

    if unit_changed {
        inst.daemon_reload()?;
    }
    println!(
        "next: check `interfaces` in {POLICY_DEST}, then `systemctl enable --now tollgate` \
         and `{} status`",
        bin_dest.display()
    );
    Ok(())
}

pub(crate) fn repo_root() -> PathBuf {
    let xtask = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| ".".into(), PathBuf::from);
    xtask.parent().map_or(xtask.clone(), Path::to_path_buf)
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

struct Installer {
    dry_run: bool,
    destdir: Option<PathBuf>,
}

impl Installer {
    /// The real path for an absolute install path (under `--destdir` if set).
    fn real(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// Reports a change: done, or only planned with `--dry-run`.
    fn say(&self, what: impl std::fmt::Display) {
        let tag = if self.dry_run { "would" } else { "done" };
        println!("  {tag:<5} {what}");
    }

    /// Installs `content` at `path` with `mode`, replacing what is there
    /// atomically (write a sibling, rename over). Returns whether anything
    /// changed. `None` content (dry run, nothing built yet) counts as a change.
    fn file(&self, path: &Path, content: Option<&[u8]>, mode: u32) -> anyhow::Result<bool> {
        let real = self.real(path);
        let same_content = content.is_some_and(|c| fs::read(&real).is_ok_and(|old| old == c));
        let same_mode = fs::metadata(&real).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if same_content && same_mode {
            ok(format!("{} (unchanged)", path.display()));
            return Ok(false);
        }
        if same_content {
            self.say(format!("chmod {mode:04o} {}", path.display()));
            if !self.dry_run {
                fs::set_permissions(&real, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("failed to chmod {}", real.display()))?;
            }
            return Ok(true);
        }
        let verb = if real.exists() { "update" } else { "install" };
        self.say(format!("{verb} {} (mode {mode:04o})", path.display()));
        let Some(content) = content.filter(|_| !self.dry_run) else {
            return Ok(true);
        };
        let dir = real
            .parent()
            .with_context(|| format!("{} has no parent directory", real.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.tollgate-install",
            real.file_name()
                .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned())
        ));
        fs::write(&tmp, content).with_context(|| format!("failed to write {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("failed to chmod {}", tmp.display()))?;
        // rename() over the old file: a running agent keeps its old inode,
        // and no reader ever sees a half-written file.
        fs::rename(&tmp, &real)
            .with_context(|| format!("failed to move {} to {}", tmp.display(), real.display()))?;
        Ok(true)
    }

    /// Installs `content` at `path` unless something is already there.
    fn new_file_only(&self, path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
        if self.real(path).exists() {
            ok(format!("{} (exists, kept as is)", path.display()));
            return Ok(());
        }
        self.file(path, Some(content), mode).map(drop)
    }

    /// Creates `path` with mode 0700, or tightens an existing one to 0700.
    fn private_dir(&self, path: &Path) -> anyhow::Result<()> {
        let real = self.real(path);
        match fs::metadata(&real) {
            Ok(m) if m.is_dir() && m.permissions().mode() & 0o7777 == 0o700 => {
                ok(format!("{}/ (mode 0700)", path.display()));
            }
            Ok(m) if m.is_dir() => {
                self.say(format!("chmod 0700 {}/", path.display()));
                if !self.dry_run {
                    fs::set_permissions(&real, fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("failed to chmod {}", real.display()))?;
                }
            }
            Ok(_) => bail!("{} exists and is not a directory", real.display()),
            Err(_) => {
                self.say(format!("create {}/ (mode 0700)", path.display()));
                if !self.dry_run {
                    // Parents (/var/lib) keep the usual 0755; only the last is private.
                    if let Some(parent) = real.parent() {
                        fs::create_dir_all(parent)
                            .with_context(|| format!("failed to create {}", parent.display()))?;
                    }
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&real)
                        .with_context(|| format!("failed to create {}", real.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Makes a running systemd see the new or changed unit.
    fn daemon_reload(&self) -> anyhow::Result<()> {
        if self.destdir.is_some() {
            return Ok(());
        }
        // The directory systemd itself documents as "booted with systemd".
        if !self.dry_run && !Path::new("/run/systemd/system").is_dir() {
            println!("  skip  systemctl daemon-reload (systemd is not running here)");
            return Ok(());
        }
        self.say("systemctl daemon-reload");
        if !self.dry_run {
            sh(Command::new("systemctl").arg("daemon-reload"))?;
        }
        Ok(())
    }
}

fn ok(msg: impl AsRef<str>) {
    println!("  ok    {}", msg.as_ref());
}
