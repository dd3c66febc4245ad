//! Parsing and validating the addresses and prefixes operators and peers send.
//! Everything here treats its input as untrusted and explains refusals.

use std::{net::IpAddr, str::FromStr as _};

use ipnet::{IpNet, Ipv4Net};

/// Why an address or prefix was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// Not an address nor a prefix.
    #[error("'{input}' is not an IPv4/IPv6 address or CIDR prefix")]
    Malformed {
        /// What was given.
        input: String,
    },
    /// A prefix with bits set after the prefix length.
    #[error("'{input}' has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// What was given.
        input: String,
        /// The network it probably meant.
        suggestion: IpNet,
    },
    /// A prefix so wide that banning it would cut the host off the network.
    #[error("refusing to act on {net}: it covers {scope}; pass --force if you really mean it")]
    TooBroad {
        /// The prefix.
        net: IpNet,
        /// Human description of how much it covers.
        scope: &'static str,
    },
    /// An address no client sends from, or one that cuts the host off.
    #[error("refusing to ban {net}: it {what}; pass --force if you really mean it")]
    Special {
        /// The prefix.
        net: IpNet,
        /// What it is or covers.
        what: String,
    },
}

/// Ranges no ban should touch by accident: (range, what it is).
const SPECIAL: [(&str, &str); 7] = [
    ("0.0.0.0/32", "the unspecified address"),
    ("127.0.0.0/8", "loopback"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "the broadcast address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("ff00::/8", "multicast"),
];

/// Refuses bans overlapping loopback, unspecified, multicast or broadcast
/// addresses, unless `force`.
///
/// # Errors
/// [`NetError::Special`].
pub fn check_special(net: IpNet, force: bool) -> Result<(), NetError> {
    if force {
        return Ok(());
    }
    for (range, what) in SPECIAL {
        let Ok(r) = range.parse::<IpNet>() else {
            continue;
        };
        if overlaps(&r, &net) {
            return Err(NetError::Special {
                net,
                what: format!("covers {what} ({})", display(&r)),
            });
        }
    }
    Ok(())
}

/// This host's own addresses (every interface's), canonical form.
#[must_use]
pub fn host_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let s = a.address?;
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .map(canonical)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `IP` (a host) or `IP/LEN` (a prefix whose host bits are zero).
///
/// # Errors
/// [`NetError::Malformed`] or [`NetError::HostBits`].
pub fn parse_net(input: &str) -> Result<IpNet, NetError> {
    let s = input.trim();
    let malformed = || NetError::Malformed {
        input: input.to_owned(),
    };
    if s.is_empty() || s.len() > 64 {
        return Err(malformed());
    }
    if let Ok(addr) = IpAddr::from_str(s) {
        return Ok(IpNet::from(canonical(addr)));
    }
    let net = IpNet::from_str(s).map_err(|_| malformed())?;
    // An IPv4-mapped IPv6 prefix would never match: the datapath sees IPv4.
    let net = match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).map_err(|_| malformed())?),
            None => net,
        },
        _ => net,
    };
    if net.trunc() != net {
        return Err(NetError::HostBits {
            input: input.to_owned(),
            suggestion: net.trunc(),
        });
    }
    Ok(net)
}

/// IPv4-mapped IPv6 addresses are IPv4 clients.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// Refuses prefixes wider than a /8 (IPv4) or /16 (IPv6) unless `force`:
/// such a ban (or allow entry) almost certainly is a typo.
///
/// # Errors
/// [`NetError::TooBroad`].
pub fn check_breadth(net: IpNet, force: bool) -> Result<(), NetError> {
    if force {
        return Ok(());
    }
    let scope = match net {
        IpNet::V4(n) if n.prefix_len() == 0 => Some("every IPv4 address"),
        IpNet::V6(n) if n.prefix_len() == 0 => Some("every IPv6 address"),
        IpNet::V4(n) if n.prefix_len() < 8 => Some("more than a /8 of the IPv4 internet"),
        IpNet::V6(n) if n.prefix_len() < 16 => Some("more than a /16 of the IPv6 internet"),
        _ => None,
    };
    match scope {
        Some(scope) => Err(NetError::TooBroad { net, scope }),
        None => Ok(()),
    }
}

/// Whether two prefixes share any address.
#[must_use]
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Shows hosts without their `/32` or `/128`.
#[must_use]
pub fn display(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_prefixes() {
        assert_eq!(
            parse_net("198.18.0.7").unwrap().to_string(),
            "198.18.0.7/32"
        );
        assert_eq!(
            parse_net(" 198.18.0.0/24 ").unwrap().to_string(),
            "198.18.0.0/24"
        );
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_net("fd00:1::/48").unwrap().to_string(), "fd00:1::/48");
        assert_eq!(
            parse_net("::ffff:198.18.0.9").unwrap().to_string(),
            "198.18.0.9/32"
        );
        assert_eq!(
            parse_net("::ffff:198.18.0.0/120").unwrap().to_string(),
            "198.18.0.0/24"
        );
    }

    #[test]
    fn rejects_garbage_and_host_bits() {
        for bad in [
            "",
            "1.2.3",
            "198.18.0.0/33",
            "fd00::/129",
            "hello",
            "1.2.3.4/-1",
            "1.2.3.4/",
        ] {
            assert!(
                matches!(parse_net(bad), Err(NetError::Malformed { .. })),
                "{bad}"
            );
        }
        let err = parse_net("198.18.0.5/24").unwrap_err();
        assert_eq!(
            err.to_string(),
            "'198.18.0.5/24' has host bits set; did you mean 198.18.0.0/24?"
        );
    }

    #[test]
    fn broad_prefixes_need_force() {
        let all = parse_net("0.0.0.0/0").unwrap();
        assert!(check_breadth(all, false).is_err());
        assert!(check_breadth(all, true).is_ok());
        assert!(check_breadth(parse_net("::/0").unwrap(), false).is_err());
        assert!(check_breadth(parse_net("198.18.0.0/15").unwrap(), false).is_ok());
        assert!(check_breadth(parse_net("fd00::/8").unwrap(), false).is_err());
        assert!(check_breadth(parse_net("fd00::/16").unwrap(), false).is_ok());
    }

    #[test]
    fn overlap_is_symmetric() {
        let a = parse_net("198.18.0.0/24").unwrap();
        let b = parse_net("198.18.0.9").unwrap();
        let c = parse_net("198.18.1.0/24").unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
    }
}
