//! Attaching the ingress program to interfaces, as pinned bpf links so that
//! enforcement outlives the agent process, and taking those links over again
//! (atomic program replacement) when the agent restarts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya::programs::{
    LinkOrder, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::{XdpLink, XdpMode},
};
use tracing::{info, warn};

use crate::{
    datapath::Datapath,
    policy::{AttachKind, XdpModePref},
};

/// Pin name stem of the sock_ops link (its hook is [`AttachHow::Sockops`]).
pub const SOCKOPS_PIN: &str = "cgroup";

/// Which hook a link holds. Its name is what `status` shows (`attach`) and
/// the stem of the link's pin (`<how>@<interface>`), so a restart finds the
/// links of an earlier run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachHow {
    /// XDP in the driver.
    XdpDriver,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// TC ingress through tcx.
    Tcx,
    /// The response sampler at tcx egress.
    TcxEgress,
    /// The sock_ops program on the cgroup v2 root.
    Sockops,
}

impl AttachHow {
    /// The ingress hooks an interface may hold.
    const INGRESS: [Self; 3] = [Self::XdpDriver, Self::XdpGeneric, Self::Tcx];

    /// Stable name: `xdp-driver`, `xdp-generic`, `tcx`, `tcx-egress`, `sockops`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::XdpDriver => "xdp-driver",
            Self::XdpGeneric => "xdp-generic",
            Self::Tcx => "tcx",
            Self::TcxEgress => "tcx-egress",
            Self::Sockops => "sockops",
        }
    }
}

impl std::fmt::Display for AttachHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cgroup v2 root, found in /proc/mounts (it is not always at
/// /sys/fs/cgroup: hybrid hosts mount it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("failed to read /proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup v2 filesystem is mounted")
}

/// Attaches the sock_ops program (connection counts, handshakes, API
/// sockets for request streams) to the cgroup v2 root, replacing the one an
/// earlier run left pinned (it counts into the same pinned map, so counts
/// stay right across restarts).
///
/// # Errors
/// When no cgroup v2 is mounted or the kernel refuses.
pub fn attach_sockops(dp: &mut Datapath, links_dir: &Path) -> anyhow::Result<Attachment> {
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("failed to create {}", links_dir.display()))?;
    let pin = pin_path(links_dir, SOCKOPS_PIN, AttachHow::Sockops);
    let root = cgroup2_root()?;
    // An earlier run's link holds that run's program, whose socket map for
    // request streams went away with it: replace it with this run's. Both
    // programs run for the moment they overlap, and the connection counts
    // (a pinned map) carry over; state-change callbacks are per socket, so
    // the new program uncounts what the old one counted.
    let earlier = if pin.exists() {
        let p = PinnedLink::from_pin(&pin).ok();
        if p.is_none() {
            let _ = std::fs::remove_file(&pin);
        }
        p
    } else {
        None
    };
    if earlier.is_none() {
        // Nothing counted while no program was attached: start from zero.
        dp.clear_conns();
    }
    let cgroup =
        std::fs::File::open(&root).with_context(|| format!("failed to open {}", root.display()))?;
    let prog = dp.sockops()?;
    // Through a bpf_link, "single" still coexists with other programs'
    // links on the same cgroup (the kernel rejects the multi flag there).
    let id = prog
        .attach(&cgroup, aya::programs::CgroupAttachMode::Single)
        .context("failed to attach sock_ops to the cgroup v2 root")?;
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).map_err(|e| anyhow!(e))?;
    let program_id = prog.info().map(|i| i.id()).unwrap_or(0);
    if let Some(old) = earlier {
        // Unpinned and dropped: the kernel detaches the earlier program.
        if let Ok(l) = old.unpin() {
            drop(l);
        } else {
            let _ = std::fs::remove_file(&pin);
        }
        // Its marks of streamed connections name sockets no map holds now.
        dp.clear_flows();
        info!(cgroup = %root.display(), "replaced the sock_ops program of an earlier run");
    }
    let link: FdLink = fd
        .pin(&pin)
        .with_context(|| format!("failed to pin link at {}", pin.display()))?
        .into();
    info!(cgroup = %root.display(), "sock_ops attached (connection counting)");
    Ok(Attachment {
        iface: root.display().to_string(),
        ifindex: 0,
        how: AttachHow::Sockops,
        program_id,
        link,
        pin,
    })
}

/// Attaches the response sampler at tcx egress of `iface` (last in the
/// chain: it only observes), or takes over the link an earlier run pinned.
///
/// # Errors
/// When the interface is gone or the kernel refuses.
pub fn attach_egress(
    dp: &mut Datapath,
    iface: &str,
    links_dir: &Path,
) -> anyhow::Result<Attachment> {
    let ifindex = ifindex(iface)?;
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("failed to create {}", links_dir.display()))?;
    let pin = pin_path(links_dir, iface, AttachHow::TcxEgress);
    if pin.exists() {
        let reused = (|| -> anyhow::Result<FdLink> {
            let fd: FdLink = PinnedLink::from_pin(&pin)?.into();
            let link = SchedClassifierLink::try_from(fd).map_err(|e: LinkError| anyhow!(e))?;
            let prog = dp.tc_egress()?;
            let id = prog.attach_to_link(link)?;
            let link = prog.take_link(id)?;
            FdLink::try_from(link).map_err(|e| anyhow!(e))
        })();
        match reused {
            Ok(link) => {
                let program_id = dp.tc_egress()?.info().map(|i| i.id()).unwrap_or(0);
                info!(iface, "took over the egress sampler link of an earlier run");
                return Ok(Attachment {
                    iface: iface.to_owned(),
                    ifindex,
                    how: AttachHow::TcxEgress,
                    program_id,
                    link,
                    pin,
                });
            }
            Err(e) => {
                warn!(
                    iface,
                    "cannot reuse the pinned egress link ({e:#}); attaching afresh"
                );
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let prog = dp.tc_egress()?;
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::last()),
        )
        .with_context(|| format!("failed to attach the egress sampler to {iface}"))?;
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).map_err(|e| anyhow!(e))?;
    let program_id = prog.info().map(|i| i.id()).unwrap_or(0);
    let link: FdLink = fd
        .pin(&pin)
        .with_context(|| format!("failed to pin link at {}", pin.display()))?
        .into();
    info!(iface, "egress sampler attached (API responses)");
    Ok(Attachment {
        iface: iface.to_owned(),
        ifindex,
        how: AttachHow::TcxEgress,
        program_id,
        link,
        pin,
    })
}

/// One live attachment.
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub ifindex: u32,
    /// The hook.
    pub how: AttachHow,
    /// Kernel id of the attached program.
    pub program_id: u32,
    /// The link, kept open while the agent runs.
    link: FdLink,
    /// Where the link is pinned.
    pin: PathBuf,
}

impl Attachment {
    /// Detaches: removes the pin and closes the link.
    pub fn detach(self) {
        if let Err(e) = std::fs::remove_file(&self.pin) {
            warn!(iface = %self.iface, pin = %self.pin.display(), "failed to remove link pin: {e}");
        }
        drop(self.link);
        info!(iface = %self.iface, how = %self.how, "detached");
    }

    /// Leaves the program attached (the pin keeps the link alive).
    pub fn keep(self) {
        info!(iface = %self.iface, how = %self.how, pin = %self.pin.display(), "left attached");
    }
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("no network interface named '{iface}'"))
}

/// bpffs refuses names containing '.', which interface names may hold
/// (VLAN devices such as `eth0.100`), so the name is percent-escaped.
fn pin_name(iface: &str, how: AttachHow) -> String {
    let iface = iface.replace('%', "%25").replace('.', "%2e");
    format!("{how}@{iface}")
}

fn pin_path(links_dir: &Path, iface: &str, how: AttachHow) -> PathBuf {
    links_dir.join(pin_name(iface, how))
}

/// Removes pinned links of earlier runs that this run does not want (other
/// interfaces or another hook), detaching those programs.
pub fn remove_unwanted_pins(links_dir: &Path, wanted: &[(String, AttachHow)]) {
    let Ok(dir) = std::fs::read_dir(links_dir) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = wanted
            .iter()
            .any(|(iface, how)| name == pin_name(iface, *how));
        if !keep {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(pin = %entry.path().display(), "detached a link left by an earlier run")
                }
                Err(e) => {
                    warn!(pin = %entry.path().display(), "failed to remove stale link pin: {e}")
                }
            }
        }
    }
}

/// The pin an earlier run left for this interface, if any.
fn existing_pin(links_dir: &Path, iface: &str, kind: AttachKind) -> Option<(PathBuf, AttachHow)> {
    AttachHow::INGRESS
        .into_iter()
        .filter(|h| (kind == AttachKind::Tc) == (*h == AttachHow::Tcx))
        .map(|h| (pin_path(links_dir, iface, h), h))
        .find(|(p, _)| p.exists())
}

/// Attaches (or takes over) the program on `iface`.
///
/// # Errors
/// When the interface does not exist, its hook is held by a program Tollgate
/// did not attach, or the kernel refuses.
pub fn attach(
    dp: &mut Datapath,
    iface: &str,
    kind: AttachKind,
    xdp_mode: XdpModePref,
    links_dir: &Path,
) -> anyhow::Result<Attachment> {
    let ifindex = ifindex(iface)?;
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("failed to create {}", links_dir.display()))?;
    if let Some((pin, how)) = existing_pin(links_dir, iface, kind) {
        match take_over(dp, kind, &pin) {
            Ok((link, program_id)) => {
                info!(
                    iface,
                    %how, "took over the link pinned by an earlier run (no gap in enforcement)"
                );
                return Ok(Attachment {
                    iface: iface.to_owned(),
                    ifindex,
                    how,
                    program_id,
                    link,
                    pin,
                });
            }
            Err(e) => {
                warn!(iface, pin = %pin.display(), "cannot reuse pinned link ({e:#}); attaching afresh");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let (link, how) = match kind {
        AttachKind::Xdp => attach_xdp(dp, iface, xdp_mode)?,
        AttachKind::Tc => (attach_tcx(dp, iface)?, AttachHow::Tcx),
    };
    let program_id = program_id(dp, kind)?;
    let pin = pin_path(links_dir, iface, how);
    let pinned = link
        .pin(&pin)
        .with_context(|| format!("failed to pin link at {}", pin.display()))?;
    let link: FdLink = pinned.into();
    info!(iface, ifindex, %how, program_id, "attached");
    Ok(Attachment {
        iface: iface.to_owned(),
        ifindex,
        how,
        program_id,
        link,
        pin,
    })
}

fn program_id(dp: &mut Datapath, kind: AttachKind) -> anyhow::Result<u32> {
    let info = match kind {
        AttachKind::Xdp => dp.xdp()?.info(),
        AttachKind::Tc => dp.tc()?.info(),
    };
    Ok(info.context("failed to read program info")?.id())
}

fn take_over(dp: &mut Datapath, kind: AttachKind, pin: &Path) -> anyhow::Result<(FdLink, u32)> {
    let pinned = PinnedLink::from_pin(pin).context("failed to open pinned link")?;
    let fd: FdLink = pinned.into();
    match kind {
        AttachKind::Xdp => {
            let link = XdpLink::try_from(fd).map_err(|e: LinkError| anyhow!(e))?;
            let prog = dp.xdp()?;
            let id = prog
                .attach_to_link(link)
                .context("bpf_link_update failed")?;
            let link = prog.take_link(id)?;
            let fd = FdLink::try_from(link).map_err(|e| anyhow!(e))?;
            Ok((fd, program_id(dp, kind)?))
        }
        AttachKind::Tc => {
            let link = SchedClassifierLink::try_from(fd).map_err(|e: LinkError| anyhow!(e))?;
            let prog = dp.tc()?;
            let id = prog
                .attach_to_link(link)
                .context("bpf_link_update failed")?;
            let link = prog.take_link(id)?;
            let fd = FdLink::try_from(link).map_err(|e| anyhow!(e))?;
            Ok((fd, program_id(dp, kind)?))
        }
    }
}

/// Whether the kernel said the hook is taken (EBUSY/EEXIST).
fn is_busy(e: &aya::programs::ProgramError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
        {
            return true;
        }
        src = s.source();
    }
    false
}

enum XdpAttachError {
    /// Another program holds the hook.
    Busy,
    Other(anyhow::Error),
}

fn try_xdp(
    prog: &mut aya::programs::Xdp,
    iface: &str,
    mode: XdpMode,
) -> Result<FdLink, XdpAttachError> {
    let id = prog.attach(iface, mode).map_err(|e| {
        if is_busy(&e) {
            XdpAttachError::Busy
        } else {
            XdpAttachError::Other(anyhow!(e))
        }
    })?;
    let link = prog
        .take_link(id)
        .map_err(|e| XdpAttachError::Other(anyhow!(e)))?;
    FdLink::try_from(link).map_err(|e| XdpAttachError::Other(anyhow!(e)))
}

fn attach_xdp(
    dp: &mut Datapath,
    iface: &str,
    pref: XdpModePref,
) -> anyhow::Result<(FdLink, AttachHow)> {
    let prog = dp.xdp()?;
    let fail = |e: XdpAttachError, mode: &str| match e {
        XdpAttachError::Busy => anyhow!(
            "interface {iface} already has an XDP program that Tollgate did not attach; \
             Tollgate never replaces it. Run with --attach tc to enforce at TC ingress instead, \
             or detach the other program first (ip link set dev {iface} xdp off)"
        ),
        XdpAttachError::Other(e) => {
            e.context(format!("failed to attach XDP to {iface} in {mode} mode"))
        }
    };
    match pref {
        XdpModePref::Generic => try_xdp(prog, iface, XdpMode::Skb)
            .map(|l| (l, AttachHow::XdpGeneric))
            .map_err(|e| fail(e, "generic")),
        XdpModePref::Driver => try_xdp(prog, iface, XdpMode::Driver)
            .map(|l| (l, AttachHow::XdpDriver))
            .map_err(|e| fail(e, "driver")),
        XdpModePref::Auto => match try_xdp(prog, iface, XdpMode::Driver) {
            Ok(l) => Ok((l, AttachHow::XdpDriver)),
            Err(XdpAttachError::Busy) => Err(fail(XdpAttachError::Busy, "driver")),
            Err(XdpAttachError::Other(e)) => {
                warn!(
                    iface,
                    "driver-mode XDP not available ({e:#}); falling back to generic mode, \
                     which runs later in the stack and costs more per packet"
                );
                try_xdp(prog, iface, XdpMode::Skb)
                    .map(|l| (l, AttachHow::XdpGeneric))
                    .map_err(|e| fail(e, "generic"))
            }
        },
    }
}

fn attach_tcx(dp: &mut Datapath, iface: &str) -> anyhow::Result<FdLink> {
    let prog = dp.tc()?;
    // First in the chain: banned traffic should cost nothing downstream.
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .with_context(|| {
            format!("failed to attach the TC program to {iface} (tcx needs Linux 6.6 or newer)")
        })?;
    let link = prog.take_link(id)?;
    FdLink::try_from(link).map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::{AttachHow, pin_name};

    /// Pins of earlier runs keep their names, so a restart takes them over.
    #[test]
    fn pin_names_and_status_names_are_stable() {
        let names: Vec<String> = [
            AttachHow::XdpDriver,
            AttachHow::XdpGeneric,
            AttachHow::Tcx,
            AttachHow::TcxEgress,
        ]
        .into_iter()
        .map(|h| pin_name("eth0.100", h))
        .collect();
        assert_eq!(
            names,
            [
                "xdp-driver@eth0%2e100",
                "xdp-generic@eth0%2e100",
                "tcx@eth0%2e100",
                "tcx-egress@eth0%2e100"
            ]
        );
        assert_eq!(
            pin_name(super::SOCKOPS_PIN, AttachHow::Sockops),
            "sockops@cgroup"
        );
    }
}
