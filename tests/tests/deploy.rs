//! The deployment files under `deploy/`: Kubernetes manifests validated
//! offline against the API schema (`kubernetes-validate --strict`, which ships
//! the schemas), their security posture checked field by field, both policies
//! parsed by the agent's own parser, and the systemd unit checked for its
//! hardening (and by `systemd-analyze verify` when present).
//!
//! Needs no root and no cluster. `kubernetes-validate` is required: the test
//! fails, never skips, without it (`cargo xtask setup --test-deps` installs it).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_yaml_ng::Value;
use tollgate::policy::Policy;

/// Kubernetes versions the manifests must validate against: the newest
/// schemas the tool ships, and an older release still common in production.
const KUBERNETES_VERSIONS: [Option<&str>; 2] = [None, Some("1.28.0")];

/// The capabilities the agent may add (see the DaemonSet's comments).
const ALLOWED_CAPS: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"];

/// The only host paths the agent may mount.
const ALLOWED_HOST_PATHS: [&str; 2] = ["/sys/fs/bpf", "/var/lib/tollgate"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every manifest (not the kustomization itself), sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", k8s_dir().display());
    files
}

/// Every YAML document of a file, with its file name for messages.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn all_documents() -> Vec<(String, Value)> {
    manifest_files()
        .iter()
        .flat_map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            documents(p).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

/// `doc.a.b.c` for a dotted path; `Null` when absent.
fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .unwrap_or(&Value::Null)
}

fn kind_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        get(doc, "kind").as_str().unwrap_or("?"),
        get(doc, "metadata.name").as_str().unwrap_or("?")
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod spec of a workload, if the document is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match get(doc, "kind").as_str()? {
        "Pod" => Some(get(doc, "spec")),
        "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
            Some(get(doc, "spec.template.spec"))
        }
        "CronJob" => Some(get(doc, "spec.jobTemplate.spec.template.spec")),
        _ => None,
    }
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_sequence))
        .flatten()
        .collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = documents(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = strings(get(&k[0], "resources")).into_iter().collect();
    let present: BTreeSet<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "deploy/kubernetes/kustomization.yaml `resources` must list exactly the manifests in the directory"
    );
    assert_eq!(get(&k[0], "namespace").as_str(), Some("tollgate"));
}

#[test]
fn manifests_validate_against_the_kubernetes_schema_offline() {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "`kubernetes-validate` is not installed, so the Kubernetes manifests cannot be checked \
         against the API schema. Install it with `cargo xtask setup --test-deps` (or \
         `python3 -m pip install kubernetes-validate`); it validates offline with the schemas \
         it ships. ({found:?})"
    );
    let files = manifest_files();
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new("kubernetes-validate");
        // --strict: unknown fields are errors (a typo would otherwise be
        // dropped by the API server without a word).
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = cmd.args(&files).output().unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict (Kubernetes {}) rejected the manifests:\n{}{}",
            version.unwrap_or("latest bundled"),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The rendered kustomization too, when kubectl (which embeds kustomize)
    // is there; the files alone were checked above either way.
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(k8s_dir())
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let rendered = dir.path().join("rendered.yaml");
            std::fs::write(&rendered, &out.stdout).unwrap();
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet"])
                .arg(&rendered)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the output of `kubectl kustomize deploy/kubernetes` does not validate:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out) => panic!(
            "`kubectl kustomize deploy/kubernetes` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "note: kubectl is not installed; the rendered kustomization was not validated \
             (each manifest was)"
        ),
    }
}

#[test]
fn workloads_have_the_documented_security_posture() {
    let mut workloads = 0;
    for (file, doc) in all_documents() {
        let Some(spec) = pod_spec(&doc) else { continue };
        workloads += 1;
        let what = format!("{file}: {}", kind_name(&doc));
        assert_ne!(
            spec.get("hostPID"),
            Some(&Value::Bool(true)),
            "{what}: hostPID"
        );
        assert_ne!(
            spec.get("hostIPC"),
            Some(&Value::Bool(true)),
            "{what}: hostIPC"
        );
        assert_eq!(
            spec.get("automountServiceAccountToken"),
            Some(&Value::Bool(false)),
            "{what}: the agent calls no Kubernetes API, so no token should be mounted"
        );
        for vol in spec
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(path) = get(vol, "hostPath.path").as_str() {
                assert!(
                    ALLOWED_HOST_PATHS.contains(&path),
                    "{what}: hostPath {path} is not one of {ALLOWED_HOST_PATHS:?}"
                );
            }
        }
        let containers = containers(spec);
        assert!(!containers.is_empty(), "{what}: no containers");
        for c in containers {
            let name = get(c, "name").as_str().unwrap_or("?");
            let what = format!("{what} container {name}");
            let sc = get(c, "securityContext");
            assert_ne!(
                sc.get("privileged"),
                Some(&Value::Bool(true)),
                "{what}: privileged containers are not allowed; add capabilities instead"
            );
            assert_eq!(
                sc.get("allowPrivilegeEscalation"),
                Some(&Value::Bool(false)),
                "{what}: allowPrivilegeEscalation must be false"
            );
            assert_eq!(
                sc.get("readOnlyRootFilesystem"),
                Some(&Value::Bool(true)),
                "{what}: readOnlyRootFilesystem must be true"
            );
            let drop = strings(get(sc, "capabilities.drop"));
            assert!(
                drop.iter().any(|d| d == "ALL"),
                "{what}: capabilities.drop must contain ALL (has {drop:?})"
            );
            for cap in strings(get(sc, "capabilities.add")) {
                assert!(
                    ALLOWED_CAPS.contains(&cap.as_str()),
                    "{what}: capability {cap} is not one the agent needs ({ALLOWED_CAPS:?})"
                );
            }
            for m in c
                .get("volumeMounts")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                assert_ne!(
                    get(m, "mountPropagation").as_str(),
                    Some("Bidirectional"),
                    "{what}: Bidirectional propagation needs a privileged container and the \
                     agent mounts nothing"
                );
            }
        }
    }
    assert!(workloads > 0, "no workload found under deploy/kubernetes");
}

#[test]
fn rbac_grants_nothing_the_agent_does_not_use() {
    for (file, doc) in all_documents() {
        let kind = get(&doc, "kind").as_str().unwrap_or_default();
        // The agent makes no API calls today: any binding is a grant too many.
        assert!(
            !matches!(kind, "RoleBinding" | "ClusterRoleBinding"),
            "{file}: {} binds permissions the agent does not use",
            kind_name(&doc)
        );
        if matches!(kind, "Role" | "ClusterRole") {
            for rule in get(&doc, "rules").as_sequence().into_iter().flatten() {
                for field in ["verbs", "resources", "apiGroups"] {
                    assert!(
                        !strings(get(rule, field)).iter().any(|s| s == "*"),
                        "{file}: {} uses a wildcard in {field}",
                        kind_name(&doc)
                    );
                }
            }
        }
    }
}

#[test]
fn policies_parse_and_match_the_mounts() {
    // The host policy, as the agent will read it.
    let host = Policy::load(&repo().join("deploy/policy.yaml")).unwrap();
    assert!(
        !host.interfaces.is_empty(),
        "deploy/policy.yaml names no interface"
    );

    let docs = all_documents();
    let cm = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| get(d, "kind").as_str() == Some("ConfigMap"))
        .expect("a ConfigMap with the policy");
    let text = get(cm, "data")
        .get("policy.yaml")
        .and_then(Value::as_str)
        .expect("ConfigMap key policy.yaml");
    let policy = Policy::parse(text, Path::new("configmap.yaml:data.policy.yaml")).unwrap();
    assert!(
        !policy.interfaces.is_empty(),
        "the ConfigMap policy names no interface"
    );

    // The paths in the policy must be on the volumes the DaemonSet mounts.
    let ds = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| get(d, "kind").as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    let spec = pod_spec(ds).unwrap();
    let agent = containers(spec)[0];
    let mounts: Vec<String> = get(agent, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| get(m, "mountPath").as_str().map(str::to_owned))
        .collect();
    let on_mount = |p: &Path| mounts.iter().any(|m| p.starts_with(m));
    for (field, path) in [
        ("socket", policy.socket.clone()),
        ("pin_dir", policy.pin_dir.clone()),
        ("state_dir", policy.state_dir.clone()),
    ] {
        let path = path.unwrap_or_else(|| panic!("the ConfigMap policy should set {field}"));
        assert!(
            on_mount(&path),
            "ConfigMap policy {field} {} is on no volume of the DaemonSet ({mounts:?}); \
             with a read-only root filesystem the agent could not write it",
            path.display()
        );
    }
    let args = strings(get(agent, "args"));
    let config = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("the DaemonSet passes --config");
    assert!(
        on_mount(Path::new(config)),
        "--config {config} is not on a mounted volume"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            strings(get(agent, &format!("{probe}.exec.command"))),
            ["tollgate", "status"],
            "{probe} should ask the agent over its socket"
        );
    }
}

#[test]
fn systemd_unit_is_hardened() {
    let path = repo().join("deploy/systemd/tollgate.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, want) in [
        (
            "ExecStart",
            "/usr/local/bin/tollgate agent --config /etc/tollgate/policy.yaml",
        ),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "tollgate"),
        ("RuntimeDirectory", "tollgate"),
        ("RuntimeDirectoryMode", "0700"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("LimitMEMLOCK", "infinity"),
    ] {
        assert_eq!(value(key), [want], "{}: {key}=", path.display());
    }
    let caps: BTreeSet<&str> = value("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(
        caps,
        BTreeSet::from([
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SYS_RESOURCE"
        ]),
        "the agent runs without CAP_SYS_ADMIN (bpffs is mounted by ExecStartPre=+)"
    );
    let rw: BTreeSet<&str> = value("ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(
        rw,
        BTreeSet::from(["/var/lib/tollgate", "/run/tollgate", "/sys/fs/bpf"])
    );

    // systemd's own parser, when installed (nothing is installed for it).
    // It reports unknown keys and bad values as warnings with exit code 0,
    // so any output fails the test. ExecStart's binary must exist for it,
    // so the copy points at /bin/true.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: systemd-analyze is not installed; the unit was not verified by systemd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tollgate.service");
    std::fs::write(
        &copy,
        unit.replace("ExecStart=/usr/local/bin/tollgate", "ExecStart=/bin/true"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify found problems in {}:\n{said}",
        path.display()
    );
    // systemd's exposure score (0 best, 10 worst; --threshold is in tenths):
    // 1.7 when written, the rest being root, the host network and the
    // capabilities the agent cannot do without. Fail on a regression past 2.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("unrecognized option") {
        eprintln!("note: this systemd-analyze (before 250) cannot score unit files offline");
        return;
    }
    assert!(
        out.status.success(),
        "the unit's systemd exposure score rose above 2.0:\n{}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The documents of the overlay at `dir` (relative to the repository), as
/// `kubectl kustomize` renders them, after `kubernetes-validate --strict`
/// accepted them.
fn render_overlay(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render {dir} (cargo xtask setup --test-deps): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let rendered = tmp.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let v = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&rendered)
        .output()
        .expect("kubernetes-validate is needed (cargo xtask setup --test-deps)");
    assert!(
        v.status.success(),
        "{dir} does not validate:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    documents(&rendered)
}

/// The TLS overlay renders, validates against the API schema, and gives the
/// agent what the probes need (docs/tls.md): the host's pid namespace,
/// `SYS_PTRACE` beside the base's capabilities, and the host's tracefs
/// read-only; nothing else of the base's posture changes.
#[test]
fn the_tls_overlay_renders_validates_and_adds_what_the_probes_need() {
    let docs = render_overlay("deploy/kubernetes-tls");
    let ds = docs
        .iter()
        .find(|d| get(d, "kind").as_str() == Some("DaemonSet"))
        .expect("no DaemonSet rendered");
    let spec = pod_spec(ds).unwrap();
    assert_eq!(get(spec, "hostPID").as_bool(), Some(true), "{spec:?}");
    assert_ne!(get(spec, "hostIPC").as_bool(), Some(true));
    let agent = containers(spec)
        .into_iter()
        .find(|c| strings(get(c, "args")).first().map(String::as_str) == Some("agent"))
        .expect("no agent container");
    let caps = strings(get(agent, "securityContext.capabilities.add"));
    for cap in ["BPF", "PERFMON", "SYS_PTRACE"] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing: {caps:?}");
    }
    assert_ne!(
        get(agent, "securityContext.privileged").as_bool(),
        Some(true),
        "the overlay must not make the agent privileged"
    );
    let mounts = get(agent, "volumeMounts")
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert!(
        mounts.iter().any(
            |m| get(m, "mountPath").as_str() == Some("/sys/kernel/tracing")
                && get(m, "readOnly").as_bool() == Some(true)
        ),
        "tracefs not mounted read-only: {mounts:?}"
    );
}

/// The fleet overlay renders, validates against the API schema, keeps the
/// base's security posture, and hands the agent what `--cluster-*` expects:
/// the endpoints and fleet from its ConfigMap, the node's name as the host
/// id, and the client certificate Secret mounted read-only where
/// `--cluster-tls-dir` looks for `tls.crt`, `tls.key` and `ca.crt`.
#[test]
fn the_fleet_overlay_renders_validates_and_wires_the_etcd_link() {
    let docs = render_overlay("deploy/kubernetes-fleet");
    let ds = docs
        .iter()
        .find(|d| get(d, "kind").as_str() == Some("DaemonSet"))
        .expect("no DaemonSet rendered");
    let cm = docs
        .iter()
        .find(|d| {
            get(d, "kind").as_str() == Some("ConfigMap")
                && get(d, "metadata.name")
                    .as_str()
                    .is_some_and(|n| n.starts_with("tollgate-fleet"))
        })
        .expect("no tollgate-fleet ConfigMap rendered");
    let spec = pod_spec(ds).unwrap();
    let agent = containers(spec)
        .into_iter()
        .find(|c| strings(get(c, "args")).first().map(String::as_str) == Some("agent"))
        .expect("no agent container");
    let args = strings(get(agent, "args"));
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{flag} missing from {args:?}"))
            .clone()
    };
    let env = get(agent, "env").as_sequence().cloned().unwrap_or_default();
    let var = |name: &str| {
        env.iter()
            .find(|e| get(e, "name").as_str() == Some(name))
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    // $(VAR) arguments expand from env entries that exist.
    assert_eq!(after("--cluster-endpoints"), "$(TOLLGATE_ETCD_ENDPOINTS)");
    assert_eq!(after("--cluster-fleet"), "$(TOLLGATE_FLEET)");
    assert_eq!(after("--cluster-host-id"), "$(NODE_NAME)");
    assert_eq!(
        get(&var("NODE_NAME"), "valueFrom.fieldRef.fieldPath").as_str(),
        Some("spec.nodeName")
    );
    assert_eq!(
        get(cm, "metadata.namespace"),
        get(ds, "metadata.namespace"),
        "the ConfigMap must be in the DaemonSet's namespace"
    );
    let cm_name = get(cm, "metadata.name").as_str().unwrap();
    for (name, key) in [
        ("TOLLGATE_ETCD_ENDPOINTS", "endpoints"),
        ("TOLLGATE_FLEET", "fleet"),
    ] {
        let r = var(name);
        assert_eq!(
            get(&r, "valueFrom.configMapKeyRef.name").as_str(),
            Some(cm_name),
            "{name} must come from the rendered ConfigMap"
        );
        assert_eq!(get(&r, "valueFrom.configMapKeyRef.key").as_str(), Some(key));
        assert!(
            get(cm, &format!("data.{key}")).as_str().is_some(),
            "no {key} in {cm_name}"
        );
    }
    for url in get(cm, "data.endpoints").as_str().unwrap().split(',') {
        assert!(
            url.starts_with("https://"),
            "an endpoint without TLS: {url}"
        );
    }
    let tls_dir = after("--cluster-tls-dir");
    let mount = get(agent, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| get(m, "mountPath").as_str() == Some(tls_dir.as_str()))
        .unwrap_or_else(|| panic!("nothing mounted at {tls_dir}"));
    assert_eq!(get(mount, "readOnly").as_bool(), Some(true));
    let vol_name = get(mount, "name").as_str().unwrap();
    let vol = get(spec, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| get(v, "name").as_str() == Some(vol_name))
        .expect("the mounted volume is not declared");
    assert_eq!(
        get(vol, "secret.secretName").as_str(),
        Some("tollgate-etcd-client")
    );
    // The Secret's keys are the file names --cluster-tls-dir reads (the
    // create command in the overlay's header and in docs/deploy.md).
    let header =
        std::fs::read_to_string(repo().join("deploy/kubernetes-fleet/kustomization.yaml")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            header.contains(&format!("--from-file={f}=")),
            "the overlay's Secret command does not make {f}"
        );
    }
    // The overlay adds the etcd link and nothing that widens the agent.
    let base = all_documents()
        .into_iter()
        .find(|(_, d)| get(d, "kind").as_str() == Some("DaemonSet"))
        .unwrap()
        .1;
    let base_agent = containers(pod_spec(&base).unwrap())
        .into_iter()
        .find(|c| strings(get(c, "args")).first().map(String::as_str) == Some("agent"))
        .unwrap()
        .clone();
    assert_eq!(
        get(agent, "securityContext"),
        get(&base_agent, "securityContext"),
        "the fleet overlay changed the agent's security context"
    );
    assert_eq!(
        get(spec, "hostNetwork"),
        get(pod_spec(&base).unwrap(), "hostNetwork")
    );
}
