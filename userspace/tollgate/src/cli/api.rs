//! CLI side of API visibility: `tap` and `inventory` (with the OpenAPI
//! comparison and export done here, against a document the operator gives).

use std::{collections::BTreeMap, path::Path, process::ExitCode};

use serde_json::Value;

use crate::{
    api::inventory::EndpointView,
    cli::args::{InventoryArgs, InventoryCmd, TapArgs},
    client,
    proto::Request,
    table,
};

/// `tollgate tap`.
#[must_use]
pub fn tap(args: &TapArgs, socket: &Path) -> ExitCode {
    if let Some(src) = &args.src
        && let Err(e) = crate::net::parse_net(src)
    {
        return super::render::fail(format!("--src: {e}"), 2);
    }
    let req = Request::Tap {
        port: args.port,
        src: args.src.clone(),
        count: args.count,
    };
    let mut shown = 0u64;
    let res = client::stream(socket, &req, |line| {
        if args.json {
            println!("{line}");
        } else if let Ok(v) = serde_json::from_str::<Value>(line) {
            println!("{}", crate::text::printable(&human(&v)));
        }
        shown += 1;
        args.count.is_none_or(|c| shown < c)
    });
    super::render::stream_exit(res)
}

fn human(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let time = v.get("time").and_then(Value::as_f64).unwrap_or(0.0);
    let t = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(time.max(0.0)),
    );
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".into(), |s| s.to_string());
    let latency = v
        .get("latency_ms")
        .and_then(Value::as_f64)
        .map_or_else(String::new, |l| format!(" {l:.1}ms"));
    let trunc = if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        " [truncated]"
    } else {
        ""
    };
    let arrow = if s("direction") == "request" {
        "->"
    } else {
        "<-"
    };
    format!(
        "{t} {}:{} {arrow} :{} {} {} {status}{latency}{trunc}",
        s("client"),
        v.get("client_port").and_then(Value::as_u64).unwrap_or(0),
        v.get("port").and_then(Value::as_u64).unwrap_or(0),
        s("method"),
        s("path"),
    )
}

/// A documented operation.
struct Documented {
    method: String,
    path: String,
    deprecated: bool,
}

/// Reads the operations of an OpenAPI 3 document (YAML or JSON).
fn read_openapi(path: &Path) -> Result<Vec<Documented>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("{}: not YAML/JSON: {e}", path.display()))?;
    let paths = doc
        .get("paths")
        .and_then(serde_yaml_ng::Value::as_mapping)
        .ok_or_else(|| {
            format!(
                "{}: no `paths` object: is this an OpenAPI document?",
                path.display()
            )
        })?;
    let mut out = Vec::new();
    for (p, item) in paths {
        let Some(p) = p.as_str() else { continue };
        let Some(item) = item.as_mapping() else {
            continue;
        };
        for (m, op) in item {
            let Some(m) = m.as_str() else { continue };
            let m = m.to_ascii_uppercase();
            if ![
                "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
            ]
            .contains(&m.as_str())
            {
                continue;
            }
            let deprecated = op
                .get("deprecated")
                .and_then(serde_yaml_ng::Value::as_bool)
                .unwrap_or(false);
            out.push(Documented {
                method: m,
                path: p.to_owned(),
                deprecated,
            });
        }
    }
    Ok(out)
}

/// The gRPC methods of a protobuf descriptor set: `POST
/// /package.Service/Method` each, deprecated when its options say so.
fn read_descriptor_set(path: &Path) -> Result<Vec<Documented>, String> {
    let schema = crate::grpc::read_descriptor_set(path)?;
    let mut out: Vec<Documented> = schema
        .methods
        .into_iter()
        .map(|(path, m)| Documented {
            method: "POST".into(),
            path,
            deprecated: m.deprecated,
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Whether an observed template is an instance of a documented path:
/// `{param}` segments match anything, others must be equal.
fn matches(documented: &str, observed: &str) -> bool {
    let d: Vec<&str> = documented.trim_end_matches('/').split('/').collect();
    let o: Vec<&str> = observed.trim_end_matches('/').split('/').collect();
    d.len() == o.len()
        && d.iter()
            .zip(&o)
            .all(|(d, o)| (d.starts_with('{') && d.ends_with('}')) || d == o)
}

/// `tollgate inventory`.
#[must_use]
pub fn inventory(args: &InventoryArgs, socket: &Path) -> ExitCode {
    let resp = match client::call(socket, &Request::Inventory) {
        Err(e) => {
            return super::render::fail(&e, e.exit_code());
        }
        Ok(r) if !r.ok => {
            return super::render::fail(r.error.unwrap_or_default(), 1);
        }
        Ok(r) => r,
    };
    let mut rows: Vec<EndpointView> = match serde_json::from_value(resp.data.unwrap_or(Value::Null))
    {
        Ok(rows) => rows,
        // Never an empty inventory for an answer this CLI cannot read.
        Err(e) => {
            eprintln!(
                "error: cannot read the agent's answer as an inventory (is the agent the \
                     same version as this CLI?): {e}"
            );
            return ExitCode::from(1);
        }
    };
    if let Some(InventoryCmd::Export { openapi: _, output }) = &args.cmd {
        let text = export_openapi(&rows);
        return match output {
            Some(p) => match std::fs::write(p, text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => super::render::fail(format!("cannot write {}: {e}", p.display()), 1),
            },
            None => {
                print!("{text}");
                ExitCode::SUCCESS
            }
        };
    }
    if args.openapi.is_some() || args.descriptor_set.is_some() {
        // REST operations and gRPC methods alike: what either document names.
        let mut docs = Vec::new();
        let read = [
            args.openapi.as_deref().map(read_openapi),
            args.descriptor_set.as_deref().map(read_descriptor_set),
        ];
        for r in read.into_iter().flatten() {
            match r {
                Ok(d) => docs.extend(d),
                Err(e) => return super::render::fail(&e, 2),
            }
        }
        let mut used = vec![false; docs.len()];
        for r in &mut rows {
            let hit = docs
                .iter()
                .enumerate()
                .find(|(_, d)| d.method == r.method && matches(&d.path, &r.path));
            match hit {
                Some((i, d)) => {
                    used[i] = true;
                    r.status = Some("documented".into());
                    r.deprecated = Some(d.deprecated);
                }
                None => r.status = Some("shadow".into()),
            }
        }
        for (d, u) in docs.iter().zip(used) {
            if !u {
                rows.push(EndpointView::unused(
                    d.method.clone(),
                    d.path.clone(),
                    Some(d.deprecated),
                ));
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("no API calls seen yet (is the agent started with --api-port?)");
        return ExitCode::SUCCESS;
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.method.clone(),
                crate::text::printable(&r.path).into_owned(),
                r.hits.to_string(),
                r.clients.to_string(),
                r.statuses
                    .iter()
                    .map(|(s, n)| format!("{s}:{n}"))
                    .chain((r.graphql_errors > 0).then(|| format!("errors:{}", r.graphql_errors)))
                    .collect::<Vec<_>>()
                    .join(" "),
                if r.credentials_seen { "yes" } else { "no" }.into(),
                match (&r.status, r.deprecated) {
                    (Some(s), Some(true)) if s == "documented" => {
                        "documented (DEPRECATED, in use)".into()
                    }
                    (Some(s), _) => s.clone(),
                    (None, _) => "-".into(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "METHOD",
                "PATH",
                "HITS",
                "CLIENTS",
                "STATUSES",
                "CREDENTIALS",
                "OPENAPI"
            ],
            &t
        )
    );
    ExitCode::SUCCESS
}

/// An OpenAPI 3 skeleton of what was observed: each `{id}` becomes a named
/// path parameter, each status code seen a response.
#[must_use]
pub fn export_openapi(rows: &[EndpointView]) -> String {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for r in rows {
        let mut n = 0;
        let mut params = Vec::new();
        let path: Vec<String> = r
            .path
            .split('/')
            .map(|seg| {
                if seg == "{id}" {
                    n += 1;
                    let name = if n == 1 { "id".to_owned() } else { format!("id{n}") };
                    params.push(serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
                    format!("{{{name}}}")
                } else {
                    seg.to_owned()
                }
            })
            .collect();
        let mut responses = serde_json::Map::new();
        for s in r.statuses.keys() {
            responses.insert(
                s.to_string(),
                serde_json::json!({"description": "observed"}),
            );
        }
        if responses.is_empty() {
            responses.insert(
                "default".into(),
                serde_json::json!({"description": "no response observed"}),
            );
        }
        let mut op = serde_json::json!({
            "summary": format!("observed {} times from {} clients", r.hits, r.clients),
            "responses": responses,
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if r.credentials_seen {
            op["security"] = serde_json::json!([{"observedCredentials": []}]);
        }
        paths
            .entry(path.join("/"))
            .or_default()
            .insert(r.method.to_ascii_lowercase(), op);
    }
    let doc = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "API observed by Tollgate", "version": "observed"},
        "paths": paths,
        "components": {"securitySchemes": {"observedCredentials": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
    });
    serde_yaml_ng::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_paths_match_templates() {
        assert!(matches("/users/{userId}", "/users/{id}"));
        assert!(matches("/users/{name}", "/users/alice"));
        assert!(!matches("/users/{id}", "/users/{id}/orders"));
        assert!(!matches("/admin", "/users"));
    }

    #[test]
    fn descriptor_sets_name_grpc_methods_and_bad_files_are_refused() {
        use prost::Message as _;
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, MethodOptions,
            ServiceDescriptorProto,
        };
        let method = |name: &str, deprecated: bool| MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".notes.Note".into()),
            output_type: Some(".notes.Note".into()),
            options: deprecated.then(|| MethodOptions {
                deprecated: Some(true),
                ..MethodOptions::default()
            }),
            ..MethodDescriptorProto::default()
        };
        let set = FileDescriptorSet {
            file: vec![
                FileDescriptorProto {
                    name: Some("notes.proto".into()),
                    package: Some("notes".into()),
                    service: vec![ServiceDescriptorProto {
                        name: Some("Notes".into()),
                        method: vec![method("Create", false), method("Old", true)],
                        ..ServiceDescriptorProto::default()
                    }],
                    ..FileDescriptorProto::default()
                },
                FileDescriptorProto {
                    name: Some("health.proto".into()),
                    service: vec![ServiceDescriptorProto {
                        name: Some("Health".into()),
                        method: vec![method("Check", false)],
                        ..ServiceDescriptorProto::default()
                    }],
                    ..FileDescriptorProto::default()
                },
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("api.pb");
        std::fs::write(&good, set.encode_to_vec()).unwrap();
        let got: Vec<_> = read_descriptor_set(&good)
            .unwrap()
            .into_iter()
            .map(|d| (d.method, d.path, d.deprecated))
            .collect();
        assert_eq!(
            got,
            [
                ("POST".into(), "/Health/Check".into(), false),
                ("POST".into(), "/notes.Notes/Create".into(), false),
                ("POST".into(), "/notes.Notes/Old".into(), true),
            ]
        );
        // Not a descriptor set, an empty one, one without services, no file.
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "yaml",
                b"openapi: 3.0.3\npaths: {}\n".to_vec(),
                "not a protobuf descriptor set",
            ),
            ("empty", Vec::new(), "no gRPC service method"),
            (
                "messages",
                FileDescriptorSet {
                    file: vec![FileDescriptorProto {
                        name: Some("m.proto".into()),
                        ..FileDescriptorProto::default()
                    }],
                }
                .encode_to_vec(),
                "no gRPC service method",
            ),
            (
                "cut",
                set.encode_to_vec()[..20].to_vec(),
                "not a protobuf descriptor set",
            ),
        ];
        for (name, bytes, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = read_descriptor_set(&p).err().unwrap_or_default();
            assert!(e.contains(want), "{name}: {e}");
        }
        let e = read_descriptor_set(&dir.path().join("absent"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("cannot read"), "{e}");
        // A file past the cap is refused unread, endless ones included.
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(crate::grpc::MAX_DESCRIPTOR_SET_BYTES + 1))
            .unwrap();
        for p in [big.as_path(), Path::new("/dev/zero")] {
            let e = read_descriptor_set(p).err().unwrap_or_default();
            assert!(e.contains("larger than 16 MiB"), "{e}");
        }
    }

    #[test]
    fn export_names_parameters() {
        let rows = vec![EndpointView {
            method: "GET".into(),
            path: "/users/{id}/orders/{id}".into(),
            hits: 3,
            clients: 1,
            statuses: BTreeMap::from([(200, 3)]),
            graphql_errors: 0,
            credentials_seen: true,
            first_seen: 0,
            last_seen: 0,
            status: None,
            deprecated: None,
        }];
        let y = export_openapi(&rows);
        assert!(y.contains("/users/{id}/orders/{id2}"), "{y}");
        assert!(y.contains("'200'") || y.contains("\"200\""), "{y}");
    }
}
