//! Prometheus/OpenMetrics rendering of the agent's state, and the few
//! [`Counters`] the agent bumps as things happen (bans issued, violations,
//! reloads; the agent's state owns them). Rendering does no I/O and takes no
//! agent lock: the agent takes a [`Snapshot`] under its lock and [`render`]
//! turns it into text, so the HTTP side never holds the agent's lock while
//! encoding.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the agent counts as it happens, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bans issued, by kind (index: `BanReason` code).
    pub issued: [u64; 6],
    /// Violations found, by rule id (a bounded set: rule ids are compiled in).
    pub violations: BTreeMap<&'static str, u64>,
    /// Policy reloads: applied, refused.
    pub reloads: [u64; 2],
    /// TLS plaintext capture (`tls` module), set each second while it runs:
    /// library files probed, then plaintext bytes captured and lost, then
    /// records judged and dropped (other connections, unresolved, excluded).
    pub tls: [u64; 7],
}

impl Counters {
    /// Counts `n` new bans of `kind` (a `BanReason` name).
    pub fn ban_issued(&mut self, kind: &str, n: u64) {
        if let Some(k) = crate::proto::ban_kind::ALL
            .iter()
            .find(|k| k.name() == kind)
            && let Some(c) = self.issued.get_mut(*k as usize)
        {
            *c += n;
        }
    }

    /// Counts one violation of `rule`.
    pub fn violation(&mut self, rule: &'static str) {
        *self.violations.entry(rule).or_default() += 1;
    }

    /// Counts one reload and whether it was applied.
    pub fn reload(&mut self, applied: bool) {
        self.reloads[usize::from(!applied)] += 1;
    }
}

/// What one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (verdict, reason, packets, bytes).
    pub counters: Vec<(&'static str, &'static str, u64, u64)>,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
    /// Active bans by kind (every kind present, zeros included).
    pub bans_active: BTreeMap<String, u64>,
    /// The IPv4 /16 and IPv6 /32 prefixes holding the most bans (at most
    /// [`TOP_PREFIXES`]) with their counts: a bounded view of where bans
    /// concentrate.
    pub top_prefixes: Vec<(String, u64)>,
    /// Whether the durable store is open and readable.
    pub store_up: bool,
    /// Why the agent is not ready, if it is not.
    pub not_ready: Option<String>,
    /// Datapath samples: taken, lost (ring buffer full), skipped by policy.
    pub samples: Option<[u64; 3]>,
    /// Bans issued, violations and reloads since the agent started.
    pub since_start: Counters,
    /// The fleet link, when the agent shares bans through etcd.
    pub cluster: Option<crate::proto::ClusterView>,
    /// What the restore of the stored bans at start left undone.
    pub restore: crate::proto::RestoreView,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictReason {
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// Prefixes `tollgate_bans_by_prefix` shows at most.
pub const TOP_PREFIXES: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrefixLabel {
    prefix: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders a snapshot in the OpenMetrics text format.
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut reg = Registry::default();

    let packets = Family::<VerdictReason, Counter>::default();
    let bytes = Family::<VerdictReason, Counter>::default();
    for (verdict, reason, p, b) in &s.counters {
        let l = VerdictReason {
            verdict: (*verdict).into(),
            reason: (*reason).into(),
        };
        packets.get_or_create(&l).inc_by(*p);
        bytes.get_or_create(&l).inc_by(*b);
    }
    reg.register(
        "tollgate_packets",
        "Packets seen by the datapath, by verdict and reason",
        packets,
    );
    reg.register(
        "tollgate_bytes",
        "Bytes seen by the datapath, by verdict and reason",
        bytes,
    );

    let entries = Family::<MapLabel, Gauge>::default();
    let capacity = Family::<MapLabel, Gauge>::default();
    for (map, n, cap) in &s.maps {
        let l = MapLabel { map: (*map).into() };
        entries.get_or_create(&l).set(gauge_value(*n as u64));
        capacity.get_or_create(&l).set(i64::from(*cap));
    }
    reg.register(
        "tollgate_map_entries",
        "Entries held by each kernel map",
        entries,
    );
    reg.register(
        "tollgate_map_capacity",
        "Entries each kernel map can hold",
        capacity,
    );

    let active = Family::<KindLabel, Gauge>::default();
    for (kind, n) in &s.bans_active {
        active
            .get_or_create(&KindLabel { kind: kind.clone() })
            .set(gauge_value(*n));
    }
    reg.register("tollgate_bans_active", "Bans in force, by kind", active);

    let by_prefix = Family::<PrefixLabel, Gauge>::default();
    for (prefix, n) in &s.top_prefixes {
        by_prefix
            .get_or_create(&PrefixLabel {
                prefix: prefix.clone(),
            })
            .set(gauge_value(*n));
    }
    reg.register(
        "tollgate_bans_by_prefix",
        "Bans in force inside each of the IPv4 /16 and IPv6 /32 prefixes holding the most \
         (at most 10 series)",
        by_prefix,
    );

    let issued = Family::<KindLabel, Counter>::default();
    for k in crate::proto::ban_kind::ALL {
        let n = s.since_start.issued.get(k as usize).copied().unwrap_or(0);
        issued
            .get_or_create(&KindLabel {
                kind: k.name().into(),
            })
            .inc_by(n);
    }
    reg.register(
        "tollgate_bans_issued",
        "Bans issued since the agent started, by kind",
        issued,
    );

    let violations = Family::<RuleLabel, Counter>::default();
    for (rule, n) in &s.since_start.violations {
        violations
            .get_or_create(&RuleLabel {
                rule: (*rule).into(),
            })
            .inc_by(*n);
    }
    reg.register(
        "tollgate_violations",
        "Policy violations found in sampled API traffic, by rule",
        violations,
    );

    let samples = Family::<ResultLabel, Counter>::default();
    if let Some(counts) = s.samples {
        for (result, n) in ["taken", "lost", "skipped"].iter().zip(counts) {
            samples
                .get_or_create(&ResultLabel {
                    result: (*result).into(),
                })
                .inc_by(n);
        }
    }
    reg.register(
        "tollgate_samples",
        "API payload samples by the datapath: taken, lost (ring buffer full), skipped by the sampling policy",
        samples,
    );

    let tls_libraries = Gauge::<i64>::default();
    let tls = &s.since_start.tls;
    tls_libraries.set(i64::try_from(tls[0]).unwrap_or(i64::MAX));
    reg.register(
        "tollgate_tls_libraries",
        "TLS library files the uprobes are attached to",
        tls_libraries,
    );
    for (name, help, labels, slots) in [
        (
            "tollgate_tls_bytes",
            "TLS plaintext bytes from the uprobes: captured, lost (ring buffer full, past the per-call cap)",
            &["captured", "lost"][..],
            &tls[1..3],
        ),
        (
            "tollgate_tls_records",
            "TLS plaintext records: judged, or dropped as another connection's, unresolved, or of an excluded process",
            &["judged", "other", "unresolved", "excluded"][..],
            &tls[3..7],
        ),
    ] {
        let family = Family::<ResultLabel, Counter>::default();
        for (result, c) in labels.iter().zip(slots) {
            family
                .get_or_create(&ResultLabel {
                    result: (*result).into(),
                })
                .inc_by(*c);
        }
        reg.register(name, help, family);
    }

    let reloads = Family::<ResultLabel, Counter>::default();
    for (result, n) in ["applied", "refused"].iter().zip(s.since_start.reloads) {
        reloads
            .get_or_create(&ResultLabel {
                result: (*result).into(),
            })
            .inc_by(n);
    }
    reg.register(
        "tollgate_policy_reloads",
        "Policy reloads since the agent started, applied or refused",
        reloads,
    );

    let build = Family::<VersionLabel, Gauge>::default();
    build
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
    reg.register("tollgate_build_info", "Agent version (always 1)", build);

    let store = Gauge::<i64>::default();
    store.set(i64::from(s.store_up));
    reg.register(
        "tollgate_store_up",
        "Whether the durable state store is open and readable",
        store,
    );

    let ready = Gauge::<i64>::default();
    ready.set(i64::from(s.not_ready.is_none()));
    reg.register(
        "tollgate_ready",
        "Whether the agent is attached to every interface with its store readable",
        ready,
    );

    // What the start's restore left undone: an alert on any of these
    // finds a node that does not enforce all it stored.
    let restore: [(&str, &str, usize); 3] = [
        (
            "tollgate_restore_skipped_rows",
            "Stored ban rows skipped at start because they could not be decoded",
            s.restore.skipped_rows,
        ),
        (
            "tollgate_restore_not_enforced",
            "Stored bans the kernel refused at start (a map full?)",
            s.restore.not_enforced,
        ),
        (
            "tollgate_restore_kernel_only",
            "Kernel bans kept at start but not adopted into the store (their rows were not read)",
            s.restore.kernel_only,
        ),
    ];
    for (name, help, v) in restore {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        reg.register(name, help, g);
    }
    let partial = Gauge::<i64>::default();
    partial.set(i64::from(s.restore.read_error.is_some()));
    reg.register(
        "tollgate_restore_read_partial",
        "Whether the read of the stored bans at start stopped early (1: some were not restored)",
        partial,
    );

    if let Some(c) = &s.cluster {
        register_cluster(&mut reg, c);
    }

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The fleet link's gauges and counters (only for agents in a fleet).
fn register_cluster(reg: &mut Registry, c: &crate::proto::ClusterView) {
    let gauges: [(&str, &str, i64); 5] = [
        (
            "tollgate_cluster_connected",
            "Whether the agent reads and writes etcd now",
            i64::from(c.connected),
        ),
        (
            "tollgate_cluster_revision",
            "The last etcd revision of the fleet's bans applied here",
            c.revision,
        ),
        (
            "tollgate_cluster_staleness_seconds",
            "Seconds since the last exchange with etcd (-1: never)",
            c.staleness_secs.map_or(-1, gauge_value),
        ),
        (
            "tollgate_cluster_outbox",
            "Local ban changes not yet written to etcd",
            gauge_value(c.outbox),
        ),
        (
            "tollgate_cluster_drift_entries",
            "Kernel ban entries the last check found different from this host's bans (-1: not checked yet)",
            c.drift_entries.map_or(-1, gauge_value),
        ),
    ];
    for (name, help, v) in gauges {
        let g = Gauge::<i64>::default();
        g.set(v);
        reg.register(name, help, g);
    }
    let counters: [(&str, &str, u64); 8] = [
        (
            "tollgate_cluster_published",
            "Local bans shared with the fleet",
            c.published,
        ),
        (
            "tollgate_cluster_applied",
            "Bans and unbans from the fleet applied here",
            c.applied,
        ),
        (
            "tollgate_cluster_skipped",
            "Fleet records skipped as malformed or hostile",
            c.skipped,
        ),
        (
            "tollgate_cluster_refused",
            "Fleet bans refused here (allowlisted, trusted proxy)",
            c.refused,
        ),
        (
            "tollgate_cluster_rate_limited",
            "Local bans kept local: the per-minute sharing cap was reached",
            c.rate_limited,
        ),
        (
            "tollgate_cluster_unshared",
            "Local decisions cut to the fleet's record limits or kept local (a prefix too wide to share)",
            c.unshared,
        ),
        (
            "tollgate_cluster_republished",
            "Prefixes of this host's own bans published again: etcd lost them without an unban",
            c.republished,
        ),
        (
            "tollgate_cluster_repaired",
            "Kernel ban entries repaired by the drift checks",
            c.repaired,
        ),
    ];
    for (name, help, v) in counters {
        let ctr = Counter::<u64>::default();
        ctr.inc_by(v);
        reg.register(name, help, ctr);
    }
}

/// Content type of [`to_prometheus_text`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic Prometheus text format (what `promtool check metrics` and
/// scrapers that do not ask for OpenMetrics read): a counter's family is
/// named with its `_total` suffix there, and there is no `# EOF`.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let mut since_start = Counters::default();
        since_start.ban_issued("feed", 3);
        since_start.ban_issued("nonsense", 3);
        since_start.violation("sqli.tautology");
        since_start.reload(true);
        let s = Snapshot {
            counters: vec![("drop", "blocklisted", 5, 300)],
            maps: vec![("TG_BLOCK4", 2, 100)],
            bans_active: [("feed".to_owned(), 2)].into_iter().collect(),
            top_prefixes: vec![("198.18.0.0/16".to_owned(), 3)],
            store_up: true,
            not_ready: None,
            samples: Some([7, 1, 2]),
            since_start,
            cluster: None,
            restore: crate::proto::RestoreView {
                skipped_rows: 2,
                read_error: Some("i/o".into()),
                not_enforced: 3,
                kernel_error: None,
                kernel_only: 4,
            },
        };
        let t = render(&s);
        for want in [
            "tollgate_packets_total{verdict=\"drop\",reason=\"blocklisted\"} 5",
            "tollgate_bytes_total{verdict=\"drop\",reason=\"blocklisted\"} 300",
            "tollgate_map_entries{map=\"TG_BLOCK4\"} 2",
            "tollgate_map_capacity{map=\"TG_BLOCK4\"} 100",
            "tollgate_bans_active{kind=\"feed\"} 2",
            "tollgate_bans_by_prefix{prefix=\"198.18.0.0/16\"} 3",
            "tollgate_bans_issued_total{kind=\"manual\"} 0",
            "tollgate_bans_issued_total{kind=\"feed\"} 3",
            "tollgate_build_info{version=\"",
            "tollgate_store_up 1",
            "tollgate_violations_total{rule=\"sqli.tautology\"} 1",
            "tollgate_samples_total{result=\"lost\"} 1",
            "tollgate_policy_reloads_total{result=\"applied\"} 1",
            "tollgate_policy_reloads_total{result=\"refused\"} 0",
            "tollgate_restore_skipped_rows 2",
            "tollgate_restore_not_enforced 3",
            "tollgate_restore_kernel_only 4",
            "tollgate_restore_read_partial 1",
            "# EOF",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
        assert!(!t.contains("nonsense"));
        assert!(
            !t.contains("tollgate_cluster_"),
            "no fleet, no fleet metrics"
        );
    }

    #[test]
    fn renders_the_fleet_link() {
        let t = to_prometheus_text(&render(&Snapshot {
            cluster: Some(crate::proto::ClusterView {
                connected: true,
                revision: 42,
                staleness_secs: Some(1),
                outbox: 3,
                skipped: 2,
                ..crate::proto::ClusterView::default()
            }),
            ..Snapshot::default()
        }));
        for want in [
            "tollgate_cluster_connected 1",
            "tollgate_cluster_revision 42",
            "tollgate_cluster_staleness_seconds 1",
            "tollgate_cluster_outbox 3",
            "tollgate_cluster_drift_entries -1",
            "tollgate_cluster_skipped_total 2",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let t = to_prometheus_text(&render(&Snapshot {
            counters: vec![("pass", "clean", 1, 60)],
            ..Snapshot::default()
        }));
        assert!(t.contains("# TYPE tollgate_packets_total counter\n"), "{t}");
        assert!(t.contains("# HELP tollgate_bans_issued_total Bans"), "{t}");
        assert!(t.contains("# TYPE tollgate_store_up gauge\n"), "{t}");
        assert!(!t.contains("# EOF"));
    }
}
