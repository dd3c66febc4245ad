//! The subset of an OpenAPI 3.x document the guard uses: which method + path pairs
//! exist (inventory, API9) and, per operation, the top-level properties a JSON request
//! body may carry when its schema closes them with `additionalProperties: false`
//! (mass assignment, API3).
//!
//! YAML and JSON documents are both read with the YAML parser (JSON is YAML). Local
//! `$ref`s (`#/components/schemas/X`) are followed to a bounded depth and `allOf`
//! members are merged; anything fancier leaves the operation without a property list,
//! which only means no `mass_assignment.unknown_property` findings for it.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use super::routes::{self, Pattern};

/// Deepest `$ref`/`allOf` chain followed.
const MAX_REF_DEPTH: usize = 8;
/// Most paths read from a document.
const MAX_PATHS: usize = 10_000;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation of the document.
#[derive(Debug)]
pub(crate) struct Operation {
    /// Upper-case method.
    pub(crate) method: String,
    /// Allowed top-level body properties, when the schema is closed.
    pub(crate) properties: Option<BTreeSet<String>>,
}

/// One path of the document with its operations.
#[derive(Debug)]
pub(crate) struct PathItem {
    pub(crate) template: String,
    pub(crate) pattern: Pattern,
    pub(crate) ops: Vec<Operation>,
}

/// The parsed inventory.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) paths: Vec<PathItem>,
}

impl Inventory {
    /// Parses the document; the error is the reason (the caller adds the context).
    pub(crate) fn parse(text: &str) -> Result<Inventory, String> {
        let doc: Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("failed to parse document: {e}"))?;
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
        if !version.starts_with('3') {
            return Err("not an OpenAPI 3.x document (no `openapi: 3.x` field)".to_owned());
        }
        let paths = doc
            .get("paths")
            .and_then(Value::as_mapping)
            .ok_or("document has no `paths` mapping")?;
        // Paths are relative to the servers' base paths (`servers: [{url: .../v1}]`).
        let mut bases: Vec<String> = doc
            .get("servers")
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(|srv| srv.get("url").and_then(Value::as_str))
                    .map(base_path)
                    .collect()
            })
            .unwrap_or_default();
        if bases.is_empty() {
            bases.push(String::new());
        }
        bases.sort();
        bases.dedup();
        let mut out = Inventory::default();
        for (k, item) in paths.iter().take(MAX_PATHS) {
            let Some(path) = k.as_str() else { continue };
            let ops: Vec<Operation> = METHODS
                .iter()
                .filter_map(|m| {
                    let op = item.get(*m)?;
                    Some(Operation {
                        method: m.to_ascii_uppercase(),
                        properties: body_properties(&doc, op),
                    })
                })
                .collect();
            for base in &bases {
                let template = format!("{base}{path}");
                let pattern =
                    routes::parse_pattern(&template).map_err(|e| format!("path {path:?}: {e}"))?;
                out.paths.push(PathItem {
                    template,
                    pattern,
                    ops: ops
                        .iter()
                        .map(|o| Operation {
                            method: o.method.clone(),
                            properties: o.properties.clone(),
                        })
                        .collect(),
                });
            }
        }
        // Most specific first, so that `/users/me` wins over `/users/{id}`.
        out.paths
            .sort_by_key(|p| std::cmp::Reverse(p.pattern.literals));
        Ok(out)
    }

    /// The operation serving `method` on the normalized path, if the document has one.
    pub(crate) fn find(&self, method: &str, segs: &[String]) -> Option<(&PathItem, &Operation)> {
        self.paths
            .iter()
            .filter(|p| p.pattern.matches(segs).is_some())
            .find_map(|p| {
                p.ops
                    .iter()
                    .find(|o| o.method == method || (method == "HEAD" && o.method == "GET"))
                    .map(|o| (p, o))
            })
    }
}

/// The path part of a server URL without its trailing `/` (`https://h/v1/` → `/v1`).
fn base_path(url: &str) -> String {
    let rest = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("", |j| &url[i + 3 + j..]),
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    // Server variables (`/{version}`) cannot be resolved; keep the pattern syntax.
    if rest.is_empty() || rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

/// Top-level properties of the JSON request body schema, when it is closed.
fn body_properties(doc: &Value, op: &Value) -> Option<BTreeSet<String>> {
    let content = resolve(doc, op.get("requestBody")?, 0)?
        .get("content")?
        .as_mapping()?;
    let schema = content
        .iter()
        .find(|(k, _)| k.as_str().is_some_and(|k| k.contains("json")))?
        .1
        .get("schema")?;
    let mut props = BTreeSet::new();
    closed_properties(doc, schema, 0, &mut props).then_some(props)
}

/// Collects the properties of `schema` (following `$ref` and `allOf`); true when the
/// schema (or one `allOf` member) says `additionalProperties: false`.
fn closed_properties(
    doc: &Value,
    schema: &Value,
    depth: usize,
    out: &mut BTreeSet<String>,
) -> bool {
    let Some(schema) = resolve(doc, schema, depth) else {
        return false;
    };
    if let Some(p) = schema.get("properties").and_then(Value::as_mapping) {
        out.extend(p.keys().filter_map(Value::as_str).map(str::to_owned));
    }
    let mut closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    if let Some(all) = schema.get("allOf").and_then(Value::as_sequence) {
        for s in all {
            if depth < MAX_REF_DEPTH {
                closed |= closed_properties(doc, s, depth + 1, out);
            }
        }
    }
    closed
}

/// Follows local `$ref`s (`#/a/b/c`) up to [`MAX_REF_DEPTH`].
fn resolve<'a>(doc: &'a Value, v: &'a Value, depth: usize) -> Option<&'a Value> {
    let mut cur = v;
    for _ in depth..MAX_REF_DEPTH {
        let Some(r) = cur.get("$ref").and_then(Value::as_str) else {
            return Some(cur);
        };
        let ptr = r.strip_prefix("#/")?;
        let mut target = doc;
        for part in ptr.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            target = target.get(part.as_str())?;
        }
        cur = target;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DOC: &str = r#"
openapi: 3.0.3
info: { title: shop, version: "1" }
servers:
  - url: https://api.example.com/
paths:
  /users/{userId}:
    get:
      responses:
        200: { description: ok }
    put:
      requestBody:
        content:
          application/json:
            schema: { $ref: '#/components/schemas/UserUpdate' }
      responses:
        "204": { description: ok }
  /users/me:
    get: {}
  /login:
    post:
      requestBody:
        $ref: '#/components/requestBodies/Login'
  /files/{name}.json:
    get: {}
components:
  requestBodies:
    Login:
      content:
        application/json:
          schema:
            type: object
            properties: { user: {type: string}, password: {type: string} }
  schemas:
    Named:
      type: object
      properties: { name: { type: string } }
    UserUpdate:
      additionalProperties: false
      allOf:
        - $ref: '#/components/schemas/Named'
        - properties: { email: { type: string } }
"#;

    fn segs(p: &str) -> Vec<String> {
        routes::segments(p)
    }

    #[test]
    fn parses_paths_methods_and_schemas() {
        let inv = Inventory::parse(DOC).unwrap();
        let (p, op) = inv.find("PUT", &segs("/users/42")).unwrap();
        assert_eq!(p.template, "/users/{userId}");
        let props: Vec<&str> = op
            .properties
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(props, ["email", "name"]);
        assert!(inv.find("HEAD", &segs("/users/42")).is_some());
        assert!(inv.find("DELETE", &segs("/users/42")).is_none());
        assert_eq!(
            inv.find("GET", &segs("/users/me")).unwrap().0.template,
            "/users/me"
        );
        // Open schema: no property list.
        assert!(
            inv.find("POST", &segs("/login"))
                .unwrap()
                .1
                .properties
                .is_none()
        );
        assert!(inv.find("GET", &segs("/files/a.json")).is_some());
        assert!(inv.find("GET", &segs("/admin")).is_none());
    }

    #[test]
    fn json_documents_and_base_paths() {
        let doc = r#"{"openapi":"3.1.0","servers":[{"url":"/v1"}],"paths":{"/ping":{"get":{}}}}"#;
        let inv = Inventory::parse(doc).unwrap();
        assert!(inv.find("GET", &segs("/v1/ping")).is_some());
        assert!(inv.find("GET", &segs("/ping")).is_none());
        assert!(Inventory::parse("swagger: '2.0'\npaths: {}").is_err());
        assert!(Inventory::parse("{{{").is_err());
        // A `$ref` loop ends at the depth bound.
        let looped = "openapi: 3.0.0\npaths:\n  /a:\n    post:\n      requestBody: {$ref: '#/x'}\nx: {$ref: '#/x'}\n";
        assert!(
            Inventory::parse(looped).unwrap().paths[0].ops[0]
                .properties
                .is_none()
        );
    }
}
