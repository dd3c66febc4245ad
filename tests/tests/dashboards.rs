//! The Grafana dashboard and the Prometheus alerting rules under deploy/:
//! valid (`promtool check rules`, JSON that parses, every panel with a
//! query), and every `tollgate_*` metric they name is one a real agent
//! exports on /metrics — with API sampling, a violation and a fleet link,
//! so the metric families that appear only then are there too.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use tollgate_tests::{
    Agent, Lab, eventually, free_port,
    http::{HttpServer, raw_http, sqli},
    http_get,
};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(path)
}

/// Every `tollgate_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The metric names in a Prometheus text exposition (from `# TYPE` lines
/// and samples, with the `_total`/`_bucket` forms as exported).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("# TYPE ").unwrap_or(l);
            if l.starts_with('#') {
                return None;
            }
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.starts_with("tollgate_").then_some(name)
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = deploy("prometheus/alerts.yaml");
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (run `cargo xtask setup --test-deps`: Debian package prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_and_rules_name_only_metrics_the_agent_exports() {
    let dash_text = std::fs::read_to_string(deploy("grafana/tollgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash_text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} has no description",
            p["title"]
        );
    }
    let rules_text = std::fs::read_to_string(deploy("prometheus/alerts.yaml")).unwrap();
    let mut used = metric_names(&dash_text);
    used.extend(metric_names(&rules_text));

    // An agent with everything that adds metric families: API sampling
    // (and a violation), a fleet link, metrics on.
    let lab = Lab::new();
    let server = HttpServer::start(&[lab.v4(0, 1)]);
    let etcd = tollgate_tests::etcd::Etcd::start();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let api = server.port.to_string();
    let url = etcd.url();
    let agent = Agent::start(
        &lab.host_if,
        &[
            "--metrics-addr",
            &metrics,
            "--api-port",
            &api,
            "--cluster-endpoints",
            &url,
        ],
    );
    let dst = SocketAddr::new(lab.v4(0, 1), server.port);
    let scrape = || http_get(port, "/metrics").1;
    let violated = eventually(Duration::from_secs(20), || {
        raw_http(&lab, lab.v4(0, 2), dst, vec![sqli()]);
        scrape().contains("tollgate_violations_total{")
    });
    let text = scrape();
    assert!(
        violated,
        "no violation counted:\n{text}\n{}",
        agent.log_text()
    );
    let have = exported(&text);
    let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alert rules name metrics /metrics does not export: {missing:?}\nexported: {have:?}"
    );
    drop(agent);
}

/// The Kustomize component under deploy/monitoring carries the same
/// dashboard and rules as deploy/grafana and deploy/prometheus (so promtool
/// and the metric-name test above cover it too), and the overlay that adds it
/// to the DaemonSet renders: the dashboard ConfigMap for Grafana's sidecar and
/// the PrometheusRule, in the agent's namespace.
#[test]
fn the_monitoring_component_matches_the_files_and_renders() {
    let yaml = |p: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy(p)).unwrap())
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let cm = yaml("monitoring/grafana-dashboard.yaml");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1"),
        "the label Grafana's dashboard sidecar looks for"
    );
    let embedded: serde_json::Value =
        serde_json::from_str(cm["data"]["tollgate.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/tollgate.json")).unwrap())
            .unwrap();
    assert!(
        embedded == file,
        "deploy/monitoring/grafana-dashboard.yaml is not deploy/grafana/tollgate.json: copy \
         the JSON into its data"
    );
    let rule = yaml("monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert!(
        rule["spec"]["groups"] == yaml("prometheus/alerts.yaml")["groups"],
        "deploy/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: copy \
         its groups into spec.groups"
    );

    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy("kubernetes-with-monitoring"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "note: kubectl is not installed ({e}); the overlay was not rendered (its files \
                 were checked above)"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/kubernetes-with-monitoring:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    for (kind, name) in [
        ("DaemonSet", "tollgate"),
        ("ConfigMap", "tollgate-dashboard"),
        ("PrometheusRule", "tollgate"),
    ] {
        let found = docs.iter().find(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        });
        let found = found.unwrap_or_else(|| panic!("no {kind} {name} rendered:\n{text}"));
        assert_eq!(
            found["metadata"]["namespace"].as_str(),
            Some("tollgate"),
            "{kind} {name}"
        );
    }
}
