//! Read-only questions about the ban set: `block test` (what covers one
//! address, and does the kernel agree with the store) and the filtered,
//! paged `block ls`.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use serde_json::json;
use tollgate_common::Mode;

use super::{AgentState, Maps, Refused, allow_view, ban_view, refuse};
use crate::{
    clock,
    net::{display, overlaps, parse_net},
    proto::{BanFilter, BanPage, BlockTestView, CoveringBan, ban_kind},
    store::BanRecord,
};

/// Above this many bans in a page, hit counters are read with one walk of
/// the maps instead of one lookup per ban.
const LOOKUPS_PER_PAGE: usize = 1000;

impl<M: Maps> AgentState<M> {
    /// One page of the bans matching `f`, sorted by address.
    pub(super) fn block_query(&self, f: &BanFilter) -> Result<serde_json::Value, Refused> {
        let matching = f
            .matching
            .as_deref()
            .map(parse_net)
            .transpose()
            .map_err(|e| refuse(e.to_string()))?;
        let kind = match f.kind.as_deref() {
            None => None,
            Some(k) => Some(ban_kind::parse(k).ok_or_else(|| {
                refuse(format!(
                    "unknown kind '{k}': one of {}",
                    ban_kind::ALL.map(|k| k.name()).join(", ")
                ))
            })?),
        };
        let reason = f.reason.as_deref().map(str::to_lowercase);
        let deadline = f
            .expiring_within_secs
            .map(|s| clock::unix_now().saturating_add(s));
        let mut recs: Vec<BanRecord> = self
            .bans
            .values()
            .filter(|r| matching.is_none_or(|m| overlaps(&m, &r.cidr)))
            // A prefix matches when any of its decisions does.
            .filter(|r| kind.is_none_or(|k| r.any_decision(|d| d.kind == k)))
            .filter(|r| {
                f.origin
                    .as_deref()
                    .is_none_or(|o| r.any_decision(|d| d.origin == o))
            })
            .filter(|r| {
                reason
                    .as_deref()
                    .is_none_or(|t| r.any_decision(|d| d.reason.to_lowercase().contains(t)))
            })
            .filter(|r| deadline.is_none_or(|d| r.expires_at.is_some_and(|t| t <= d)))
            .collect();
        let total = recs.len();
        recs.sort_unstable_by_key(|r| (r.cidr.addr(), r.cidr.prefix_len()));
        let page: Vec<BanRecord> = recs
            .into_iter()
            .skip(f.offset)
            .take(f.limit.unwrap_or(usize::MAX))
            .collect();
        let bulk: HashMap<IpNet, u64> = if page.len() > LOOKUPS_PER_PAGE {
            self.block_hits()
        } else {
            HashMap::new()
        };
        let hits = |net: IpNet| {
            if page.len() > LOOKUPS_PER_PAGE {
                bulk.get(&net).copied().unwrap_or(0)
            } else {
                self.maps
                    .block_entry(net)
                    .ok()
                    .flatten()
                    .map_or(0, |e| e.hits)
            }
        };
        Ok(json!(BanPage {
            total,
            offset: f.offset,
            bans: page.iter().map(|r| ban_view(r, hits(r.cidr))).collect(),
        }))
    }

    /// Everything that decides whether `address` is dropped: covering bans
    /// (each checked against the kernel map itself), kernel entries the
    /// store does not know, allowlist entries, trusted proxies, rate state.
    pub(super) fn block_test(&self, address: &str) -> Result<serde_json::Value, Refused> {
        let net = parse_net(address).map_err(|e| refuse(e.to_string()))?;
        if net.prefix_len() != net.max_prefix_len() {
            return Err(refuse(format!(
                "{} is a prefix: give one address (`tollgate block ls --match {}` lists the \
                 bans overlapping a prefix)",
                display(&net),
                display(&net)
            )));
        }
        let ip: IpAddr = net.addr();
        let now_ns = clock::boot_ns();
        let in_kernel: HashMap<IpNet, tollgate_common::BlockEntry> = self
            .maps
            .covering_blocks(ip)
            .map_err(|e| refuse(format!("failed to read the kernel ban maps: {e:#}")))?
            .into_iter()
            .collect();
        let mut bans = Vec::new();
        let mut kernel_only = Vec::new();
        for len in (0..=net.max_prefix_len()).rev() {
            let Ok(n) = IpNet::new(ip, len).map(|n| n.trunc()) else {
                continue;
            };
            let entry = in_kernel.get(&n).copied();
            let kernel = match entry {
                None => "missing",
                Some(e) if e.expires_ns != 0 && e.expires_ns <= now_ns => "expired",
                Some(_) => "present",
            };
            match self.bans.get(&n) {
                Some(rec) => bans.push(CoveringBan {
                    ban: ban_view(&rec, entry.map_or(0, |e| e.hits)),
                    kernel: kernel.into(),
                }),
                None if kernel == "present" => kernel_only.push(display(&n)),
                None => {}
            }
        }
        let allow_hits = self.allow_hits();
        let mut allows: Vec<_> = self
            .allows
            .values()
            .filter(|a| a.cidr.contains(&ip))
            .map(|a| allow_view(a, allow_hits.get(&a.cidr).copied().unwrap_or(0)))
            .collect();
        allows.sort_by_key(|a| std::cmp::Reverse(a.prefix_len));
        let enforced = bans.iter().any(|b| b.kernel == "present") || !kernel_only.is_empty();
        let kernel_agrees = kernel_only.is_empty() && bans.iter().all(|b| b.kernel != "missing");
        Ok(json!(BlockTestView {
            address: ip.to_string(),
            blocked: enforced && allows.is_empty(),
            mode: match self.maps.mode() {
                Mode::Enforce => "enforce".into(),
                Mode::Monitor => "monitor".into(),
            },
            bans,
            allows,
            trusted_proxy: self.trusted.iter().find(|t| t.contains(&ip)).map(display),
            kernel_only,
            kernel_agrees,
            rate_limit: self.rate_state_of(ip),
            offences: self.offences_of(ip),
        }))
    }
}
