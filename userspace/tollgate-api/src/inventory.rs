//! The API inventory: every endpoint seen (method + path template), how
//! often, by how many clients, with which status codes, with credentials or
//! not. Bounded: at most [`MAX_ENDPOINTS`] endpoints and
//! [`MAX_CLIENTS_TRACKED`] distinct clients counted per endpoint.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use tollgate_detect::Request;

/// Endpoints kept; later new ones are counted under `{other}`.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Distinct clients counted exactly per endpoint.
pub const MAX_CLIENTS_TRACKED: usize = 10_000;

/// Folds identifier-looking segments into `{id}`:
/// `/users/42/orders/9f8e7d6c5b4a` -> `/users/{id}/orders/{id}`. The detection
/// library's, so that the inventory and the events' routes agree.
pub use tollgate_detect::path_template;

/// Whether a request carried credentials (Authorization, cookies, API keys).
#[must_use]
pub fn has_credentials(req: &Request) -> bool {
    req.headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("authorization")
            || n.eq_ignore_ascii_case("cookie")
            || n.eq_ignore_ascii_case("x-api-key")
            || n.eq_ignore_ascii_case("api-key")
    }) || req.query.as_deref().is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            matches!(k.as_str(), "api_key" | "apikey" | "access_token" | "token")
        })
    })
}

/// Stats of one endpoint.
#[derive(Clone, Debug, Default)]
struct Endpoint {
    hits: u64,
    clients: HashSet<IpAddr>,
    clients_overflow: bool,
    statuses: BTreeMap<u16, u64>,
    graphql_errors: u64,
    credentials: bool,
    first_seen: u64,
    last_seen: u64,
}

/// One endpoint as `tollgate inventory --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointView {
    /// HTTP method.
    pub method: String,
    /// Path template.
    pub path: String,
    /// Requests seen (sampled).
    pub hits: u64,
    /// Distinct clients (a lower bound past 10,000).
    pub clients: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// GraphQL operations: responses carrying `errors` (a GraphQL server
    /// answers most failures with 200 and says so in the body).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub graphql_errors: u64,
    /// Whether any request carried credentials.
    pub credentials_seen: bool,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds.
    pub last_seen: u64,
    /// With `--openapi`: `documented`, `shadow` or `unused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// With `--openapi`: the documented operation is deprecated but in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<bool>,
}

impl EndpointView {
    /// A documented endpoint (or operation) that no request has used.
    pub fn unused(method: String, path: String, deprecated: Option<bool>) -> Self {
        Self {
            method,
            path,
            hits: 0,
            clients: 0,
            statuses: BTreeMap::new(),
            graphql_errors: 0,
            credentials_seen: false,
            first_seen: 0,
            last_seen: 0,
            status: Some("unused".into()),
            deprecated,
        }
    }
}

/// The inventory.
#[derive(Debug, Default)]
pub struct Inventory {
    endpoints: HashMap<(String, String), Endpoint>,
}

impl Inventory {
    fn key(&mut self, method: &str, template: String) -> (String, String) {
        let method = method.to_ascii_uppercase();
        let k = (method.clone(), template);
        if self.endpoints.len() >= MAX_ENDPOINTS && !self.endpoints.contains_key(&k) {
            (method, "{other}".into())
        } else {
            k
        }
    }

    /// Records a request.
    pub fn on_request(&mut self, client: IpAddr, req: &Request, now: u64) {
        let endpoint = (req.method.clone(), path_template(&req.path));
        self.on_request_at(client, req, &[endpoint], now);
    }

    /// Records a request for the endpoints it calls, `(method, template)`:
    /// its path template, or each GraphQL operation (`/graphql mutation login`).
    pub fn on_request_at(
        &mut self,
        client: IpAddr,
        req: &Request,
        endpoints: &[(String, String)],
        now: u64,
    ) {
        let credentials = has_credentials(req);
        for (method, template) in endpoints {
            let key = self.key(method, template.clone());
            let e = self.endpoints.entry(key).or_insert_with(|| Endpoint {
                first_seen: now,
                ..Endpoint::default()
            });
            e.hits += 1;
            e.last_seen = now;
            e.credentials |= credentials;
            if e.clients.len() < MAX_CLIENTS_TRACKED {
                e.clients.insert(client);
            } else if !e.clients.contains(&client) {
                e.clients_overflow = true;
            }
        }
    }

    /// [`Inventory::list`] with GraphQL operations marked against the schema:
    /// `documented`, `shadow` (called, not in the schema) and `unused` (in the
    /// schema, never called; listed under `POST` and the first GraphQL path
    /// seen, `/graphql` when none was).
    #[must_use]
    pub fn list_marked(
        &self,
        schema: Option<&tollgate_detect::graphql::Schema>,
    ) -> Vec<EndpointView> {
        let mut rows = self.list();
        let Some(schema) = schema else { return rows };
        let mut used = std::collections::BTreeSet::new();
        let mut path = None;
        for r in &mut rows {
            let mut words = r.path.split(' ');
            let (Some(p), Some(kind), Some(field)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let kind = match kind {
                "query" => tollgate_detect::graphql::OpKind::Query,
                "mutation" => tollgate_detect::graphql::OpKind::Mutation,
                "subscription" => tollgate_detect::graphql::OpKind::Subscription,
                _ => continue,
            };
            path.get_or_insert_with(|| p.to_owned());
            if schema.documents(kind, field) {
                used.insert((kind, field.to_owned()));
                r.status = Some("documented".into());
            } else {
                r.status = Some("shadow".into());
            }
        }
        let path = path.unwrap_or_else(|| "/graphql".to_owned());
        for (kind, field) in &schema.operations {
            if !used.contains(&(*kind, field.clone())) {
                rows.push(EndpointView::unused(
                    "POST".into(),
                    format!("{path} {} {field}", kind.as_str()),
                    None,
                ));
            }
        }
        rows
    }

    /// Records the status of a response paired with its request.
    pub fn on_response(&mut self, method: &str, path: &str, status: u16) {
        let key = self.key(method, path_template(path));
        if let Some(e) = self.endpoints.get_mut(&key) {
            *e.statuses.entry(status).or_default() += 1;
        }
    }

    /// Records the status of a response to a request that called
    /// `endpoints` (GraphQL operations, as given to [`Inventory::on_request_at`]);
    /// `errors`: the body carried GraphQL `errors`.
    pub fn on_response_at(&mut self, endpoints: &[(String, String)], status: u16, errors: bool) {
        for (method, template) in endpoints {
            let key = self.key(method, template.clone());
            if let Some(e) = self.endpoints.get_mut(&key) {
                *e.statuses.entry(status).or_default() += 1;
                e.graphql_errors += u64::from(errors);
            }
        }
    }

    /// Every endpoint, busiest first.
    #[must_use]
    pub fn list(&self) -> Vec<EndpointView> {
        let mut v: Vec<EndpointView> = self
            .endpoints
            .iter()
            .map(|((m, p), e)| EndpointView {
                method: m.clone(),
                path: p.clone(),
                hits: e.hits,
                clients: e.clients.len() as u64,
                statuses: e.statuses.clone(),
                graphql_errors: e.graphql_errors,
                credentials_seen: e.credentials,
                first_seen: e.first_seen,
                last_seen: e.last_seen,
                status: None,
                deprecated: None,
            })
            .collect();
        v.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.path.cmp(&b.path)));
        v
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Marks gRPC methods in `rows` against a descriptor set: a called method
/// it has is `documented` (`deprecated` from its options), a called one
/// that looks like a gRPC method (`POST /package.Service/Method`) and that
/// it lacks is `shadow`, and each method it has that was never called is
/// listed `unused`. Other rows are left as they are.
#[must_use]
pub fn mark_grpc(
    mut rows: Vec<EndpointView>,
    schema: Option<&tollgate_detect::ProtoSchema>,
) -> Vec<EndpointView> {
    let Some(schema) = schema else { return rows };
    let mut used = std::collections::BTreeSet::new();
    for r in &mut rows {
        if r.method != "POST" {
            continue;
        }
        if let Some(m) = schema.methods.get(&r.path) {
            used.insert(r.path.clone());
            r.status = Some("documented".into());
            r.deprecated = Some(m.deprecated);
        } else if looks_like_grpc(&r.path) {
            r.status = Some("shadow".into());
        }
    }
    let mut unused: Vec<_> = schema
        .methods
        .iter()
        .filter(|(p, _)| !used.contains(*p))
        .collect();
    unused.sort_by_key(|(p, _)| *p);
    for (p, m) in unused {
        rows.push(EndpointView::unused(
            "POST".into(),
            p.clone(),
            Some(m.deprecated),
        ));
    }
    rows
}

/// `/package.Service/Method`: two segments, the service's name qualified.
fn looks_like_grpc(path: &str) -> bool {
    let mut seg = path.strip_prefix('/').unwrap_or_default().split('/');
    matches!(
        (seg.next(), seg.next(), seg.next()),
        (Some(svc), Some(m), None) if svc.contains('.') && !m.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_operations_get_their_responses_statuses() {
        let mut inv = Inventory::default();
        let req = match tollgate_detect::parse_request(
            b"POST /graphql HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        ) {
            Ok(tollgate_detect::Parsed::Complete { msg, .. }) => msg,
            other => panic!("{other:?}"),
        };
        let ops = [
            ("POST".to_owned(), "/graphql mutation login".to_owned()),
            ("POST".to_owned(), "/graphql query me".to_owned()),
        ];
        let client = IpAddr::from([198, 18, 0, 2]);
        inv.on_request_at(client, &req, &ops, 1);
        inv.on_request_at(client, &req, &ops[..1], 2);
        inv.on_response_at(&ops, 200, true);
        inv.on_response_at(&ops[..1], 200, false);
        inv.on_response_at(&ops[..1], 400, false);
        // A response for an operation never requested makes no row.
        inv.on_response_at(&[("POST".into(), "/graphql query x".into())], 200, false);
        let rows = inv.list();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let login = &rows[0];
        assert_eq!(login.path, "/graphql mutation login");
        assert_eq!(login.statuses, BTreeMap::from([(200, 2), (400, 1)]));
        assert_eq!(login.graphql_errors, 1);
        assert_eq!(rows[1].statuses, BTreeMap::from([(200, 1)]));
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["graphql_errors"], 1, "{json}");
        // A REST endpoint's row has no such field.
        inv.on_request(client, &req, 3);
        let rest = serde_json::to_value(inv.list().iter().find(|r| r.path == "/graphql").unwrap())
            .unwrap();
        assert!(rest.get("graphql_errors").is_none(), "{rest}");
    }

    #[test]
    fn templates_fold_identifiers_only() {
        for (p, t) in [
            ("/users/42/orders/9f8e7d6c5b4a", "/users/{id}/orders/{id}"),
            ("/api/v1/users", "/api/v1/users"),
            (
                "/v2/items/123e4567-e89b-12d3-a456-426614174000",
                "/v2/items/{id}",
            ),
            ("/files/dGhpcyBpcyBhIHRva2VuMTIz", "/files/{id}"),
            ("/users/alice", "/users/alice"),
            ("/deadbeef", "/deadbeef"),
            ("/a0b1c2d3e4", "/{id}"),
            ("/", "/"),
            ("/search?q=1", "/search"),
            ("/files/deadbeefdeadbeef", "/files/{id}"),
            ("/items/-5", "/items/{id}"),
        ] {
            assert_eq!(path_template(p), t, "{p}");
        }
    }

    #[test]
    fn grpc_methods_are_marked_against_a_descriptor_set() {
        let mut schema = tollgate_detect::ProtoSchema::default();
        for (p, deprecated) in [("/notes.Notes/Create", false), ("/notes.Notes/Old", true)] {
            schema.methods.insert(
                p.into(),
                tollgate_detect::ProtoMethod {
                    input: String::new(),
                    deprecated,
                },
            );
        }
        let row = |path: &str| EndpointView {
            hits: 1,
            status: None,
            ..EndpointView::unused("POST".into(), path.into(), None)
        };
        let rows = vec![
            row("/notes.Notes/Create"),
            row("/notes.Notes/Drop"),
            row("/login"),
        ];
        let got: Vec<_> = mark_grpc(rows, Some(&schema))
            .into_iter()
            .map(|r| (r.path, r.status))
            .collect();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            got,
            [
                ("/notes.Notes/Create".into(), s("documented")),
                ("/notes.Notes/Drop".into(), s("shadow")),
                ("/login".into(), None),
                ("/notes.Notes/Old".into(), s("unused")),
            ]
        );
    }
}
