//! What `/proc` says about TLS servers: which processes map a TLS library
//! (and which file it is), and which TCP connection a process's file
//! descriptor is, read from the process's own network namespace.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

/// A shared library file, as the kernel identifies it: uprobes attach to the
/// inode, so each file is probed once whichever processes map it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device (`major:minor` of the maps line, packed as `major << 20 | minor`).
    pub dev: u64,
    /// Inode.
    pub inode: u64,
}

/// One library a process maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// Path inside the process's mount namespace.
    pub path: String,
    /// The file.
    pub file: FileId,
}

/// Which TLS library a path is, by file name (`libssl.so.3`, `libssl.so.1.1`).
#[must_use]
pub fn is_libssl(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("libssl.so"))
}

/// The TLS libraries in a `/proc/<pid>/maps` text (each once).
#[must_use]
pub fn libssl_in_maps(maps: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.split_ascii_whitespace();
        let (Some(_), Some(_), Some(_), Some(dev), Some(inode), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !path.starts_with('/') || !is_libssl(path) {
            continue;
        }
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(inode)) = (
            u64::from_str_radix(maj, 16),
            u64::from_str_radix(min, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let file = FileId {
            dev: (maj << 20) | min,
            inode,
        };
        if !out.iter().any(|m| m.file == file) {
            out.push(Mapped {
                path: path.to_owned(),
                file,
            });
        }
    }
    out
}

/// The path through which the agent reaches a file a process maps, in that
/// process's mount namespace (containers included).
#[must_use]
pub fn through_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// Process ids now running.
#[must_use]
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's name (`comm`).
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The socket inode behind a process's file descriptor.
#[must_use]
pub fn socket_inode(tgid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A TCP connection as the process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Local address and port (the server side).
    pub local: (IpAddr, u16),
    /// Remote address and port (the client).
    pub remote: (IpAddr, u16),
}

/// Connections of a `/proc/<pid>/net/tcp` or `tcp6` text, by socket inode.
#[must_use]
pub fn parse_tcp_table(text: &str) -> HashMap<u64, Conn> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let (Some(l), Some(r), Some(ino)) = (f.get(1), f.get(2), f.get(9)) else {
            continue;
        };
        let (Some(local), Some(remote), Ok(ino)) = (endpoint(l), endpoint(r), ino.parse::<u64>())
        else {
            continue;
        };
        if ino != 0 {
            out.insert(ino, Conn { local, remote });
        }
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in the
/// host's byte order, and the port in hex.
fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Both ends of a process's TCP socket, from a duplicate of its descriptor
/// (`pidfd_getfd`, Linux 5.6+, the same permission as reading its
/// `/proc/<pid>/fd`): constant time, where [`connection`] reads every socket
/// of the namespace (thousands in `TIME_WAIT` on a busy server) per
/// connection. The duplicate is closed at once; the process's descriptor is
/// untouched. `None` when the kernel or the permission does not allow it,
/// or the socket is not a connected TCP one.
#[must_use]
pub fn connection_of_fd(tgid: u32, fd: i32) -> Option<Conn> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let pid = libc::pid_t::try_from(tgid).ok()?;
    // SAFETY: a plain system call; the descriptor it returns is owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = i32::try_from(pidfd).ok().filter(|f| *f >= 0)?;
    // SAFETY: a descriptor just returned to us and owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: as above.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let dup = i32::try_from(dup).ok().filter(|f| *f >= 0)?;
    // SAFETY: as above.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let mut proto: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `proto` and `len` are valid for the option's size.
    let r = unsafe {
        libc::getsockopt(
            dup.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&raw mut proto).cast(),
            &raw mut len,
        )
    };
    if r != 0 || proto != libc::IPPROTO_TCP {
        return None;
    }
    let end = |peer: bool| -> Option<(IpAddr, u16)> {
        // SAFETY: zeroed storage is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let p = (&raw mut ss).cast::<libc::sockaddr>();
        // SAFETY: `ss` holds any socket address; `len` says how much.
        let r = unsafe {
            if peer {
                libc::getpeername(dup.as_raw_fd(), p, &raw mut len)
            } else {
                libc::getsockname(dup.as_raw_fd(), p, &raw mut len)
            }
        };
        if r != 0 {
            return None;
        }
        match libc::c_int::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says which address this is.
                let a: libc::sockaddr_in = unsafe { std::ptr::read((&raw const ss).cast()) };
                Some((
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: as above.
                let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const ss).cast()) };
                let v6 = Ipv6Addr::from(a.sin6_addr.s6_addr);
                // As the /proc tables are read: mapped IPv4 as IPv4.
                let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
                Some((ip, u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    };
    Some(Conn {
        local: end(false)?,
        remote: end(true)?,
    })
}

/// Finds the connection of socket `inode` in the process's network namespace.
#[must_use]
pub fn connection(tgid: u32, inode: u64) -> Option<Conn> {
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/net/{table}")) else {
            continue;
        };
        if let Some(c) = parse_tcp_table(&text).remove(&inode) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_found_once_per_file() {
        let maps = "\
7f1a00000000-7f1a00020000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a00020000-7f1a00080000 r-xp 00020000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a00100000-7f1a00200000 r-xp 00020000 fe:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1a00300000-7f1a00400000 rw-p 00000000 00:00 0 [heap]
7f1a00500000-7f1a00600000 r-xp 00000000 08:02 77 /opt/app/lib/libssl.so.1.1 (deleted)
";
        let got = libssl_in_maps(maps);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(
            got[0].file,
            FileId {
                dev: (0xfe << 20) | 1,
                inode: 1234
            }
        );
        assert_eq!(got[1].file.inode, 77);
    }

    #[test]
    fn a_descriptor_gives_its_connection() {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let me = std::process::id();
        // A process may always duplicate its own descriptors (Linux 5.6+).
        assert_eq!(
            connection_of_fd(me, s.as_raw_fd()),
            Some(Conn {
                local: (l.local_addr().unwrap().ip(), l.local_addr().unwrap().port()),
                remote: (peer.ip(), peer.port()),
            })
        );
        // Not a TCP socket: nothing.
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(connection_of_fd(me, u.as_raw_fd()), None);
        drop(c);
    }

    #[test]
    fn tcp_tables_give_both_ends() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 010012C6:20FB 020012C6:B0A2 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
";
        let t = parse_tcp_table(v4);
        let c = t[&222];
        assert_eq!(c.local, ("198.18.0.1".parse().unwrap(), 8443));
        assert_eq!(c.remote, ("198.18.0.2".parse().unwrap(), 0xB0A2));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 000000FD000000000000000001000000:20FB 000000FD000000000000000002000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF0000010012C6:20FB 0000000000000000FFFF0000020012C6:9C41 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 20 4 30 10 -1
";
        let t = parse_tcp_table(v6);
        assert_eq!(t[&333].local.0, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(t[&333].remote, ("fd00::2".parse().unwrap(), 0x9C40));
        // An IPv4 client on a dual-stack socket is an IPv4 client.
        assert_eq!(t[&444].remote.0, "198.18.0.2".parse::<IpAddr>().unwrap());
    }
}
