//! `tollgate cluster status`: the fleet as this agent and etcd see it.

use serde_json::Value;

use super::render::{Undecodable, decode, ttl_left};
use crate::{proto::ClusterReport, table, text::printable};

/// Prints a [`ClusterReport`] for people.
pub(super) fn print_cluster(v: &Value) -> Result<(), Undecodable> {
    let r: ClusterReport = decode(v, "a cluster status")?;
    let c = &r.cluster;
    println!(
        "fleet {} as {}  connected: {}  revision: {} (etcd: {}, lag: {})  last sync: {}",
        printable(&c.fleet),
        printable(&c.host_id),
        c.connected,
        c.revision,
        r.etcd_revision
            .map_or_else(|| "?".into(), |x| x.to_string()),
        r.lag.map_or_else(|| "?".into(), |x| x.to_string()),
        c.staleness_secs
            .map_or_else(|| "never".into(), |s| format!("{} ago", ttl_left(Some(s)))),
    );
    println!(
        "outbox: {}  drift: {}  published: {}  applied: {}  skipped: {}  refused: {}  resyncs: {}",
        c.outbox,
        c.drift_entries
            .map_or_else(|| "not checked yet".into(), |d| d.to_string()),
        c.published,
        c.applied,
        c.skipped,
        c.refused,
        c.resyncs,
    );
    if let Some(e) = r.error.as_ref().or(c.last_error.as_ref()) {
        println!("etcd: {}", printable(e));
    }
    println!();
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            vec![
                printable(&m.name).into_owned(),
                m.id.clone(),
                printable(&m.client_urls.join(",")).into_owned(),
                if m.reachable { "yes" } else { "no" }.into(),
                if m.leader { "yes" } else { "" }.into(),
                m.revision.map_or_else(String::new, |x| x.to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "MEMBER",
                "ID",
                "CLIENT URLS",
                "REACHABLE",
                "LEADER",
                "REVISION"
            ],
            &rows
        )
    );
    println!();
    let rows: Vec<Vec<String>> = r
        .hosts
        .iter()
        .map(|h| {
            vec![
                printable(&h.host).into_owned(),
                format!("{} ago", ttl_left(Some(h.age_secs))),
                h.revision.to_string(),
                h.bans.to_string(),
                h.outbox.to_string(),
                h.drift_entries
                    .map_or_else(|| "-".into(), |d| d.to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["HOST", "LAST SYNC", "REVISION", "BANS", "OUTBOX", "DRIFT"],
            &rows
        )
    );
    Ok(())
}
