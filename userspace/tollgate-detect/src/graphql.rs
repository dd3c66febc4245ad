//! GraphQL requests: recognised by path and shape, parsed with `apollo-parser`
//! (error tolerant: a broken document still has a tree to judge, and being
//! broken is a finding), then judged on what GraphQL makes cheap for an
//! attacker: introspection, nesting depth, aliases, field counts (with
//! fragments expanded), directives, fragment cycles, batches and the same
//! mutation repeated (batched brute force). Argument literals and variables
//! become inputs of the injection detectors, named after the field and
//! argument they feed (`graphql:login.password`). The operations (type and
//! top-level fields) are what the API layer and the inventory see as routes
//! (`POST /graphql mutation login`).
//!
//! Everything here is bounded: the parser by a token and a recursion limit, the
//! walks by explicit stacks and a visit budget (a 1 MB `{{{{…` or a fragment
//! bomb costs the limits, not the stack).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use apollo_parser::{Parser, cst};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::detect::rules::{
    GRAPHQL_ALIASES as ALIASES, GRAPHQL_BATCH as BATCH, GRAPHQL_BATCHED_ATTEMPTS as ATTEMPTS,
    GRAPHQL_DEPTH as DEPTH, GRAPHQL_DIRECTIVES as DIRECTIVES, GRAPHQL_FIELDS as FIELDS,
    GRAPHQL_FRAGMENT_CYCLE as FRAGMENT_CYCLE, GRAPHQL_INTROSPECTION as INTROSPECTION,
    GRAPHQL_MALFORMED as MALFORMED, GRAPHQL_OPERATOR_OBJECT as OPERATOR,
    GRAPHQL_TOO_LARGE as TOO_LARGE,
};
use crate::http::Request;

mod partial;
mod scan;

/// What introspection queries (`__schema`, `__type`) lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Introspection {
    /// Not reported (development servers).
    Allow,
    /// Reported, never scored (the default).
    #[default]
    Alert,
    /// Scored as an attack (production APIs).
    Deny,
}

/// The `graphql:` section of a policy. Every limit counts per request; 0 turns
/// a limit off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Paths served by GraphQL (empty: no request is taken for GraphQL).
    pub paths: Vec<String>,
    /// SDL schema file: the inventory marks operations documented, shadow or unused.
    pub schema: Option<std::path::PathBuf>,
    pub introspection: Introspection,
    /// Deepest nesting of field selections.
    pub max_depth: u32,
    /// Aliased fields in one request.
    pub max_aliases: u32,
    /// Fields selected in one request, fragments expanded (a cost estimate).
    pub max_fields: u32,
    /// Operations in one batched (JSON array) request.
    pub max_operations: u32,
    /// Directives in one request.
    pub max_directives: u32,
    /// Calls of the same mutation field in one request (aliases or a batch).
    pub max_attempts: u32,
    /// Tokens parsed per document; longer documents are judged up to it.
    pub max_tokens: u32,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            paths: vec!["/graphql".to_owned()],
            schema: None,
            introspection: Introspection::Alert,
            max_depth: 15,
            max_aliases: 30,
            max_fields: 500,
            max_operations: 10,
            max_directives: 50,
            max_attempts: 5,
            max_tokens: 20_000,
        }
    }
}

/// Nesting the parser follows before it stops with an error (its own limit,
/// far above any sane `max_depth`, keeps its recursion off the stack's end).
const PARSER_RECURSION: usize = 200;
/// Selections and values visited per request, fragments expanded: a fragment
/// bomb (each fragment spreading the next twice) stops here.
const VISIT_BUDGET: u32 = 50_000;
/// Most inputs handed to the detectors from one request.
const MAX_INPUTS: usize = 512;
/// Distinct operations a request is named by (events, inventory); a request
/// calling more fields is named after its first ones.
pub const MAX_ROUTES: usize = 16;
/// Deepest JSON nesting of variables walked.
const MAX_JSON_DEPTH: u32 = 32;
/// Tokens parsed of a document over `max_tokens` (its shape comes from the
/// scan of all of it; this part yields the operations and inputs).
const PARSED_WHEN_TOO_LARGE: usize = 2_000;

/// Documents whose analysis is kept for the next request that sends the same
/// one (clients send a few fixed documents with changing variables); larger
/// ones, and hostile ones that vary, are parsed every time.
const CACHED_DOCUMENT_BYTES: usize = 8 * 1024;
/// Whitespace and comment bytes past which a document is compacted before
/// it is parsed (a few KiB of indentation is cheaper to parse than to copy).
const COMPACT_OVER: usize = 16 * 1024;
/// Documents kept at once; when full the cache starts over.
const CACHED_DOCUMENTS: usize = 512;

/// Operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Query,
    Mutation,
    Subscription,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Query => "query",
            OpKind::Mutation => "mutation",
            OpKind::Subscription => "subscription",
        }
    }
}

/// One executed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: OpKind,
    /// The operation's name as the client wrote it, if any.
    pub name: Option<String>,
    /// Top-level fields in order, one entry per selection (aliases repeat a name).
    pub fields: Vec<String>,
    /// Top-level arguments: `(field, argument, value)` for literal scalars and
    /// variables resolved, for object binding.
    pub arguments: Vec<(String, String, String)>,
}

/// A shape finding: rule id, raw score, evidence.
pub(crate) type Finding = (&'static str, u32, String);

/// An input for the injection detectors: location (`login.password`), text,
/// whether it is a value (as opposed to an object key).
pub(crate) type GqlInput = (String, String, bool);

/// What one GraphQL request contains.
#[derive(Debug, Default)]
pub struct Analysis {
    pub operations: Vec<Operation>,
    /// A GraphQL document was sent (even one without operations).
    pub document: bool,
    pub(crate) findings: Vec<Finding>,
    pub(crate) inputs: Vec<GqlInput>,
}

impl Analysis {
    /// Distinct `(kind, top-level field)` pairs, in order of first appearance,
    /// at most [`MAX_ROUTES`] (what events and the inventory name).
    pub fn routes(&self) -> Vec<(OpKind, &str)> {
        self.attempts()
            .into_iter()
            .take(MAX_ROUTES)
            .map(|(k, f, _)| (k, f))
            .collect()
    }

    /// How many times each `(kind, field)` is called in the request (aliases and
    /// batched operations each count), in order of first appearance.
    pub fn attempts(&self) -> Vec<(OpKind, &str, u32)> {
        let mut out: Vec<(OpKind, &str, u32)> = Vec::new();
        let mut index: HashMap<(OpKind, &str), usize> = HashMap::new();
        for op in &self.operations {
            for f in &op.fields {
                match index.get(&(op.kind, f.as_str())) {
                    Some(&i) => {
                        if let Some(e) = out.get_mut(i) {
                            e.2 += 1;
                        }
                    }
                    None => {
                        index.insert((op.kind, f), out.len());
                        out.push((op.kind, f, 1));
                    }
                }
            }
        }
        out
    }

    /// Rule ids found (for tests and tools).
    pub fn rules(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.0).collect()
    }
}

/// One GraphQL request as sent over HTTP (one element of a batch).
struct Sent {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<Json>,
}

/// Compiled GraphQL settings.
#[derive(Debug, Clone)]
pub struct Graphql {
    cfg: GraphqlConfig,
    /// Normalized paths (no trailing `/`, lower case).
    paths: Vec<String>,
    /// What small documents gave, by document and operation name.
    docs: DocCache,
}

/// What [`Graphql::document`] made of one document, from nothing: the
/// operations, findings and inputs it added, its shape and where its
/// variables go. A pure function of the document and the operation name.
#[derive(Clone)]
struct DocPart {
    operations: Vec<Operation>,
    findings: Vec<Finding>,
    inputs: Vec<GqlInput>,
    shape: Shape,
    var_locs: HashMap<String, String>,
}

type DocKey = (String, Option<String>);

/// Analyses of recent documents, keyed by their whole text (never by a hash
/// alone: a collision would judge one document by another's analysis).
#[derive(Clone, Default)]
struct DocCache(Arc<Mutex<HashMap<DocKey, Arc<DocPart>>>>);

impl std::fmt::Debug for DocCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "DocCache({n} documents)")
    }
}

impl Graphql {
    pub fn new(cfg: GraphqlConfig) -> Graphql {
        let paths = cfg.paths.iter().map(|p| normalize_path(p)).collect();
        Graphql {
            cfg,
            paths,
            docs: DocCache::default(),
        }
    }

    pub fn config(&self) -> &GraphqlConfig {
        &self.cfg
    }

    /// Whether the request goes to a GraphQL path.
    pub fn is_graphql_path(&self, req: &Request) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        let p = normalize_path(&crate::decode::percent_decode(&req.path, false));
        self.paths.contains(&p)
    }

    /// Analyzes a request to a GraphQL path; `None` when it is not one or
    /// carries no GraphQL (a GET of the IDE page, a CORS preflight).
    pub fn analyze(&self, req: &Request) -> Option<Analysis> {
        let mut a = self.analyze_sent(req)?;
        if req.truncated {
            // A body cut where capture stopped is broken for us, not for the
            // server: said, never scored (a large benign query must not ban).
            for f in &mut a.findings {
                if f.0 == MALFORMED {
                    f.1 = 0;
                }
            }
        }
        Some(a)
    }

    fn analyze_sent(&self, req: &Request) -> Option<Analysis> {
        if !self.is_graphql_path(req) {
            return None;
        }
        let mut a = Analysis::default();
        let sent = match self.sent(req, &mut a) {
            Some(s) if !s.is_empty() => s,
            Some(_) => return Some(a),
            None => return None,
        };
        if let Some(sc) = over(sent.len(), self.cfg.max_operations) {
            a.findings.push((
                BATCH,
                sc,
                format!(
                    "{} operations in one request (limit {})",
                    sent.len(),
                    self.cfg.max_operations
                ),
            ));
        }
        if let [one] = sent.as_slice()
            && let Some(q) = one.query.as_deref()
            && q.len() <= CACHED_DOCUMENT_BYTES
        {
            // The common request: one small document, maybe variables.
            if let Some(name) = &one.operation_name {
                push_input(&mut a.inputs, "operationName", name, true);
            }
            a.document = true;
            let part = self.document_part(q, one.operation_name.as_deref());
            a.operations.extend(part.operations.iter().cloned());
            a.findings.extend(part.findings.iter().cloned());
            a.inputs.extend(part.inputs.iter().cloned());
            let mut shape = part.shape.clone();
            if let Some(vars) = &one.variables {
                variables(vars, &part.var_locs, &mut a, &mut shape);
                resolve_arguments(&mut a.operations, vars);
            }
            self.judge_shape(&shape, &mut a);
            return Some(a);
        }
        let mut shape = Shape::default();
        for s in &sent {
            if let Some(name) = &s.operation_name {
                push_input(&mut a.inputs, "operationName", name, true);
            }
            let mut var_locs: HashMap<String, String> = HashMap::new();
            let first = a.operations.len();
            if let Some(q) = &s.query {
                a.document = true;
                self.document(
                    q,
                    s.operation_name.as_deref(),
                    &mut a,
                    &mut shape,
                    &mut var_locs,
                );
            }
            if let Some(vars) = &s.variables {
                variables(vars, &var_locs, &mut a, &mut shape);
                resolve_arguments(&mut a.operations[first..], vars);
            }
        }
        self.judge_shape(&shape, &mut a);
        Some(a)
    }

    /// The requests carried: a JSON object or array, a raw document, or GET
    /// parameters. `None`: nothing GraphQL in it.
    fn sent(&self, req: &Request, a: &mut Analysis) -> Option<Vec<Sent>> {
        if req.method.eq_ignore_ascii_case("GET") {
            return from_pairs(req.query.as_deref()?, a);
        }
        if req.body.is_empty() {
            return None;
        }
        let ctype = req
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        // Valid UTF-8 (almost every body) is checked by the fast validator
        // and borrowed; only a broken one pays for the lossy copy.
        let mut text = match std::str::from_utf8(&req.body) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(&req.body),
        };
        if ctype.starts_with("multipart/form-data") {
            // The GraphQL multipart request (file uploads): the operations
            // are the JSON of the part named `operations`, the rest are files.
            // Without it, not GraphQL (the body's other checks still apply).
            let raw = req.header("content-type").unwrap_or("");
            text = multipart_part(&req.body, raw, "operations")?.into();
        }
        // Some servers take form bodies as they take GET parameters.
        if ctype.starts_with("application/x-www-form-urlencoded") {
            return Some(from_pairs(&text, a).unwrap_or_default());
        }
        if ctype.starts_with("application/graphql") && !ctype.contains("json") {
            return Some(vec![Sent {
                query: Some(text.into_owned()),
                operation_name: None,
                variables: None,
            }]);
        }
        // A body cut where capture stopped is no complete JSON: parsing it
        // whole first would only cost a pass over a megabyte to fail.
        let parsed = if req.truncated {
            None
        } else {
            Some(serde_json::from_str::<Json>(&text))
        };
        match parsed {
            Some(Ok(j)) => Some(items(j, a)),
            None => {
                // The body was cut where capture stopped: what arrived whole
                // (operation name, variables, batch elements) is judged as
                // sent, and the part of the document that arrived (the parser
                // takes a broken end).
                a.findings.push((
                    MALFORMED,
                    6,
                    "body larger than what was captured: judged its first part".to_owned(),
                ));
                let (mut sent, cut) = match partial::close(&text) {
                    Some((j, cut)) => (items(j, a), cut),
                    None => (Vec::new(), 0),
                };
                if sent.is_empty() {
                    sent.push(Sent {
                        query: None,
                        operation_name: None,
                        variables: None,
                    });
                }
                // The document the cut went through: its first part.
                if let Some(last) = sent.last_mut()
                    && last.query.is_none()
                {
                    last.query = json_string_prefix(text.get(cut..).unwrap_or(""), "query");
                }
                sent.retain(|s| s.query.is_some() || s.variables.is_some());
                Some(sent)
            }
            Some(Err(e)) => {
                a.findings
                    .push((MALFORMED, 6, format!("body is not JSON: {e}")));
                Some(Vec::new())
            }
        }
    }

    /// [`Self::document`] of `text` from nothing, as the cache holds it or
    /// made now (and kept).
    fn document_part(&self, text: &str, operation_name: Option<&str>) -> Arc<DocPart> {
        let key = (text.to_owned(), operation_name.map(str::to_owned));
        if let Some(p) = self.docs.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return p;
        }
        let mut a = Analysis::default();
        let mut shape = Shape::default();
        let mut var_locs = HashMap::new();
        self.document(text, operation_name, &mut a, &mut shape, &mut var_locs);
        let part = Arc::new(DocPart {
            operations: a.operations,
            findings: a.findings,
            inputs: a.inputs,
            shape,
            var_locs,
        });
        if let Ok(mut m) = self.docs.0.lock() {
            if m.len() >= CACHED_DOCUMENTS {
                m.clear();
            }
            m.insert(key, part.clone());
        }
        part
    }

    /// Parses one document and records its operations, shape and inputs.
    fn document(
        &self,
        text: &str,
        operation_name: Option<&str>,
        a: &mut Analysis,
        shape: &mut Shape,
        var_locs: &mut HashMap<String, String>,
    ) {
        let max_tokens = if self.cfg.max_tokens == 0 {
            usize::MAX
        } else {
            self.cfg.max_tokens as usize
        };
        // A document over the token limit is judged on the scan of all of it
        // and a parse of its first part only: its cost stays that of a scan.
        let sc = scan::scan(text, max_tokens.min(PARSED_WHEN_TOO_LARGE), max_tokens);
        let parsed = if sc.tokens > max_tokens {
            shape.too_large = true;
            shape.scanned.depth = shape.scanned.depth.max(sc.depth);
            shape.scanned.aliases = shape.scanned.aliases.saturating_add(sc.aliases);
            shape.scanned.directives = shape.scanned.directives.saturating_add(sc.directives);
            text.get(..sc.cut).unwrap_or(text)
        } else {
            text
        };
        // Padding is taken out before the parser sees it: it lexes a
        // character at a time, and a megabyte of spaces would cost it ms.
        let compacted;
        let parsed = if sc.ignored > COMPACT_OVER {
            compacted = scan::compact(parsed);
            compacted.as_str()
        } else {
            parsed
        };
        let tree = Parser::new(parsed)
            .recursion_limit(PARSER_RECURSION)
            .token_limit(max_tokens)
            .parse();
        let mut syntax = None;
        for e in tree.errors() {
            if e.is_limit() {
                if e.message().contains("token") {
                    shape.too_large = true;
                } else {
                    shape.too_deep = true;
                }
            } else if syntax.is_none() {
                syntax = Some(format!("{} at byte {}", e.message(), e.index()));
            }
        }
        if let Some(why) = syntax
            && !shape.too_large
        {
            a.findings
                .push((MALFORMED, 6, crate::decode::truncate(&why, 100).to_owned()));
        }
        let doc = tree.document();
        let mut fragments: HashMap<String, cst::FragmentDefinition> = HashMap::new();
        let mut ops = Vec::new();
        for def in doc.definitions() {
            match def {
                cst::Definition::OperationDefinition(op) => ops.push(op),
                cst::Definition::FragmentDefinition(f) => {
                    if let Some(n) = f.fragment_name().and_then(|n| n.name()) {
                        fragments.insert(n.text().to_string(), f);
                    }
                }
                // Type system definitions have no place in a request.
                _ => shape.foreign_definitions = true,
            }
        }
        let order = fragment_cycles(&fragments, shape);
        let sums = fragment_sums(&fragments, &order);
        // The operation the server runs: the named one, or the only one (a
        // flag per operation: a broken document can hold thousands).
        let chosen: Vec<bool> = match operation_name {
            Some(n) if ops.len() > 1 => ops
                .iter()
                .map(|o| o.name().is_some_and(|m| m.text() == n))
                .collect(),
            _ => vec![true; ops.len()],
        };
        // Operations not run are still walked for shape and inputs: they cost
        // the server a parse and validation, and carry payloads all the same.
        for (op, runs) in ops.iter().zip(chosen) {
            let kind = match op.operation_type() {
                Some(t) if t.mutation_token().is_some() => OpKind::Mutation,
                Some(t) if t.subscription_token().is_some() => OpKind::Subscription,
                _ => OpKind::Query,
            };
            if let Some(vars) = op.variable_definitions() {
                for vd in vars.variable_definitions() {
                    if let Some(dv) = vd.default_value().and_then(|d| d.value()) {
                        let name = vd
                            .variable()
                            .and_then(|v| v.name())
                            .map(|n| format!("${}", n.text()))
                            .unwrap_or_default();
                        literal(dv, &name, a, shape, var_locs);
                    }
                }
            }
            shape.n.directives = shape
                .n
                .directives
                .saturating_add(directive_count(op.directives()));
            let mut operation = Operation {
                kind,
                name: op.name().map(|n| n.text().to_string()),
                fields: Vec::new(),
                arguments: Vec::new(),
            };
            if let Some(sel) = op.selection_set() {
                walk(sel, (&fragments, &sums), a, shape, var_locs, &mut operation);
            }
            if runs {
                a.operations.push(operation);
            }
        }
    }

    fn judge_shape(&self, s: &Shape, a: &mut Analysis) {
        let c = &self.cfg;
        if s.n.introspection > 0 {
            let score = match c.introspection {
                Introspection::Allow => None,
                Introspection::Alert => Some(0),
                Introspection::Deny => Some(10),
            };
            if let Some(sc) = score {
                a.findings.push((
                    INTROSPECTION,
                    sc,
                    format!(
                        "{} introspection field(s): __schema/__type",
                        s.n.introspection
                    ),
                ));
            }
        }
        // Past the token limit the scan of the whole document knows more.
        let depth = s.n.depth.max(s.scanned.depth);
        let aliases = s.n.aliases.max(s.scanned.aliases);
        let directives = s.n.directives.max(s.scanned.directives);
        if s.too_deep || depth as usize > PARSER_RECURSION {
            a.findings.push((
                DEPTH,
                10,
                format!("nesting beyond {PARSER_RECURSION} (parser stopped)"),
            ));
        } else if let Some(sc) = over(depth as usize, c.max_depth) {
            a.findings.push((
                DEPTH,
                sc,
                format!("selection depth {depth} (limit {})", c.max_depth),
            ));
        }
        let checks = [
            (ALIASES, aliases, c.max_aliases, "aliases"),
            (
                FIELDS,
                s.n.fields,
                c.max_fields,
                "fields (fragments expanded)",
            ),
            (DIRECTIVES, directives, c.max_directives, "directives"),
        ];
        for (rule, n, max, what) in checks {
            if let Some(sc) = over(n as usize, max) {
                let more = if s.budget_spent { "at least " } else { "" };
                a.findings
                    .push((rule, sc, format!("{more}{n} {what} (limit {max})")));
            }
        }
        if (s.budget_spent || s.summed) && !a.findings.iter().any(|f| f.0 == FIELDS) {
            a.findings.push((
                FIELDS,
                10,
                format!("more than {VISIT_BUDGET} selections with fragments expanded"),
            ));
        }
        if let Some(name) = &s.cycle {
            a.findings.push((
                FRAGMENT_CYCLE,
                10,
                format!("fragment {name} spreads itself"),
            ));
        }
        if s.too_large {
            a.findings.push((
                TOO_LARGE,
                6,
                format!("document over {} tokens: judged up to it", c.max_tokens),
            ));
        }
        if s.foreign_definitions {
            a.findings.push((
                MALFORMED,
                6,
                "type system definitions in a request".to_owned(),
            ));
        }
        if let Some(ev) = &s.operator {
            a.findings.push((OPERATOR, 10, ev.clone()));
        }
        // The mutation called most often (aliases and batch elements alike).
        let worst = a
            .attempts()
            .into_iter()
            .filter(|(k, _, _)| *k == OpKind::Mutation)
            .max_by_key(|(_, _, n)| *n)
            .and_then(|(_, f, n)| over(n as usize, c.max_attempts).map(|sc| (sc, f.to_owned(), n)));
        if let Some((sc, f, n)) = worst {
            a.findings.push((
                ATTEMPTS,
                sc,
                format!(
                    "mutation {f} called {n} times in one request (limit {})",
                    c.max_attempts
                ),
            ));
        }
    }
}

/// The requests of a GraphQL JSON body: one object or a batch's array.
fn items(json: Json, a: &mut Analysis) -> Vec<Sent> {
    // Taken apart by value: a megabyte document is not copied again.
    let items: Vec<Json> = match json {
        Json::Array(v) => v,
        o @ Json::Object(_) => vec![o],
        _ => {
            a.findings
                .push((MALFORMED, 6, "body is not a GraphQL request".to_owned()));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let Json::Object(mut o) = it else {
            a.findings
                .push((MALFORMED, 6, "batch element is not an object".to_owned()));
            continue;
        };
        let mut text = |k: &str| match o.remove(k) {
            Some(Json::String(s)) => Some(s),
            _ => None,
        };
        let (query, operation_name) = (text("query"), text("operationName"));
        let variables = match o.remove("variables") {
            // Some clients send variables as a JSON string.
            Some(Json::String(s)) => serde_json::from_str(&s).ok(),
            Some(Json::Null) | None => None,
            Some(v) => Some(v),
        };
        out.push(Sent {
            query,
            operation_name,
            variables,
        });
    }
    out
}

/// A request in URL parameters (`query=`, `operationName=`, `variables=`);
/// `None` without `query`.
fn from_pairs(q: &str, a: &mut Analysis) -> Option<Vec<Sent>> {
    let mut s = Sent {
        query: None,
        operation_name: None,
        variables: None,
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::decode::percent_decode(v, true);
        match k {
            "query" => s.query = Some(v),
            "operationName" => s.operation_name = Some(v),
            "variables" => match serde_json::from_str(&v) {
                Ok(j) => s.variables = Some(j),
                Err(e) => a.findings.push((MALFORMED, 6, format!("variables: {e}"))),
            },
            _ => {}
        }
    }
    s.query.is_some().then(|| vec![s])
}

/// The content of the `multipart/form-data` part named `name` (lossy UTF-8),
/// with the boundary from `content_type`. `None`: no such part.
fn multipart_part(body: &[u8], content_type: &str, name: &str) -> Option<String> {
    let boundary = content_type.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
    })?;
    if boundary.is_empty() {
        return None;
    }
    let delim = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    let want = format!("name=\"{name}\"");
    for part in text.split(delim.as_str()).skip(1) {
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, content)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        let named = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("content-disposition:") && l.contains(&want)
        });
        if named {
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            return Some(content.strip_suffix('\n').unwrap_or(content).to_owned());
        }
    }
    None
}

/// The (possibly cut) value of the last string member `key` of a JSON text
/// that does not parse as a whole, unescaped as far as it goes (the last:
/// the cut goes through the last element of a batch; inside a string the
/// name's quotes are escaped).
fn json_string_prefix(text: &str, key: &str) -> Option<String> {
    let at = text.rfind(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let b = rest.strip_prefix('"')?.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    // The next quote or backslash from `from`: a document's escapes come
    // every few bytes (`\"` around each string), so the first bytes are
    // looked at one by one; a long run is left to the vectorised search.
    let next = |from: usize| {
        let near = (from + 16).min(b.len());
        b[from..near]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')
            .map(|k| from + k)
            .or_else(|| memchr::memchr2(b'"', b'\\', &b[near..]).map(|k| near + k))
    };
    let mut i = 0;
    while let Some(at) = next(i) {
        out.extend_from_slice(&b[i..at]);
        if b[at] == b'"' {
            i = b.len();
            break;
        }
        i = at + 2;
        match b.get(at + 1) {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            // Form feed and backspace reach the server as such (whitespace to
            // SQL between two keywords), not as the letters.
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'u') => {
                let hex = b
                    .get(at + 2..at + 6)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(ch) = hex
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                {
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                i = (at + 6).min(b.len());
            }
            // `\"`, `\\`, `\/` and the rest stand for themselves.
            Some(&c) if c.is_ascii() => out.push(c),
            // A non-ASCII byte is copied with the rest of its character.
            Some(_) => i = at + 1,
            None => i = b.len(),
        }
    }
    out.extend_from_slice(&b[i.min(b.len())..]);
    // Cuts fall on ASCII bytes (or after whole escapes), so this is UTF-8.
    Some(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// Score for a count over a limit: 6 over it, 10 at twice it; `None` within
/// it or when the limit is off (0).
fn over(n: usize, max: u32) -> Option<u32> {
    let max = max as usize;
    if max == 0 || n <= max {
        None
    } else if n >= max.saturating_mul(2) {
        Some(10)
    } else {
        Some(6)
    }
}

fn normalize_path(p: &str) -> String {
    let t = p.trim().trim_end_matches('/');
    if t.is_empty() {
        "/".to_owned()
    } else {
        t.to_ascii_lowercase()
    }
}

/// Counters over a whole request (all operations of a batch).
#[derive(Default, Clone)]
struct Shape {
    /// Depth, fields, aliases, directives, introspection fields.
    n: Sum,
    visits: u32,
    budget_spent: bool,
    too_deep: bool,
    too_large: bool,
    foreign_definitions: bool,
    cycle: Option<String>,
    /// Evidence of a `$`-named key in an input object.
    operator: Option<String>,
    /// Counts of the scans of documents over the token limit (parsed in
    /// part only): floors for the counts of the parsed parts.
    scanned: scan::Scan,
    /// A spread was counted by its fragment's sum (expanding it would have
    /// gone past the visit budget).
    summed: bool,
    /// Inputs taken from variables ([`push_variable`]).
    variable_inputs: usize,
}

impl Shape {
    /// Counts a fragment spread at `depth` by its sum, not by walking it.
    fn add(&mut self, x: Sum, depth: u32) {
        self.summed = true;
        self.n.add(x, depth);
    }

    /// Counts one visit; false once the budget is spent.
    fn visit(&mut self) -> bool {
        if self.visits >= VISIT_BUDGET {
            self.budget_spent = true;
            return false;
        }
        self.visits += 1;
        true
    }
}

/// Walks an operation's selections with an explicit stack: depth, aliases,
/// fields, directives, introspection, arguments; fragments expanded within
/// the visit budget (a spread adds no depth, as the server sees it).
fn walk(
    root: cst::SelectionSet,
    (fragments, sums): (
        &HashMap<String, cst::FragmentDefinition>,
        &HashMap<&str, Sum>,
    ),
    a: &mut Analysis,
    shape: &mut Shape,
    var_locs: &mut HashMap<String, String>,
    op: &mut Operation,
) {
    // (selection set, depth of its fields, spreads on the way: cycles stop).
    let mut stack: Vec<(cst::SelectionSet, u32, u32)> = vec![(root, 1, 0)];
    while let Some((set, depth, spreads)) = stack.pop() {
        for sel in set.selections() {
            if !shape.visit() {
                return;
            }
            match sel {
                cst::Selection::Field(f) => {
                    let Some(name) = f.name().map(|n| n.text().to_string()) else {
                        continue;
                    };
                    shape.n.fields = shape.n.fields.saturating_add(1);
                    shape.n.depth = shape.n.depth.max(depth);
                    if f.alias().is_some() {
                        shape.n.aliases = shape.n.aliases.saturating_add(1);
                    }
                    if is_introspection(&name) {
                        shape.n.introspection = shape.n.introspection.saturating_add(1);
                    }
                    shape.n.directives = shape
                        .n
                        .directives
                        .saturating_add(directive_count(f.directives()));
                    if depth == 1 && spreads == 0 && !name.starts_with("__") {
                        op.fields.push(name.clone());
                    }
                    if let Some(args) = f.arguments() {
                        for arg in args.arguments() {
                            let Some(an) = arg.name().map(|n| n.text().to_string()) else {
                                continue;
                            };
                            let Some(v) = arg.value() else { continue };
                            let loc = format!("{name}.{an}");
                            if depth == 1
                                && let Some(text) = scalar_text(&v)
                            {
                                op.arguments.push((name.clone(), an.clone(), text));
                            }
                            literal(v, &loc, a, shape, var_locs);
                        }
                    }
                    if let Some(s) = f.selection_set() {
                        stack.push((s, depth + 1, spreads));
                    }
                }
                cst::Selection::InlineFragment(i) => {
                    shape.n.directives = shape
                        .n
                        .directives
                        .saturating_add(directive_count(i.directives()));
                    if let Some(s) = i.selection_set() {
                        stack.push((s, depth, spreads));
                    }
                }
                cst::Selection::FragmentSpread(s) => {
                    shape.n.directives = shape
                        .n
                        .directives
                        .saturating_add(directive_count(s.directives()));
                    // A cycle is reported by `fragment_cycles`; expanding stops at
                    // a spread chain as long as there are fragments.
                    if spreads as usize > fragments.len() {
                        continue;
                    }
                    let name = s.fragment_name().and_then(|n| n.name()).map(|n| n.text());
                    // A spread that would take the walk past its budget (a
                    // fragment bomb) adds its fragment's sum instead.
                    if let Some(sum) = name.as_ref().and_then(|n| sums.get(n.as_ref()))
                        && shape.visits.saturating_add(sum.selections) > VISIT_BUDGET
                    {
                        shape.add(*sum, depth);
                        continue;
                    }
                    let frag = name.and_then(|n| fragments.get(n.as_ref()));
                    if let Some(set) = frag.and_then(cst::FragmentDefinition::selection_set) {
                        stack.push((set, depth, spreads + 1));
                    }
                }
            }
        }
    }
}

/// The text of a scalar literal (or a variable's name with `$`).
fn scalar_text(v: &cst::Value) -> Option<String> {
    match v {
        cst::Value::StringValue(s) => Some(String::from(s)),
        cst::Value::IntValue(i) => Some(i.text().to_string()),
        cst::Value::Variable(var) => var.name().map(|n| format!("${}", n.text())),
        _ => None,
    }
}

trait Text {
    fn text(&self) -> String;
}

impl Text for cst::IntValue {
    fn text(&self) -> String {
        use cst::CstNode;
        self.syntax().text().to_string().trim().to_owned()
    }
}

/// An argument's literal value: strings become inputs at `loc`; variables
/// remember which argument they feed.
fn literal(
    v: cst::Value,
    loc: &str,
    a: &mut Analysis,
    shape: &mut Shape,
    var_locs: &mut HashMap<String, String>,
) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if !shape.visit() {
            return;
        }
        match v {
            cst::Value::StringValue(s) => push_input(&mut a.inputs, loc, &String::from(&s), true),
            cst::Value::Variable(var) => {
                if let Some(n) = var.name() {
                    var_locs
                        .entry(n.text().to_string())
                        .or_insert_with(|| loc.to_owned());
                }
            }
            cst::Value::ListValue(l) => stack.extend(l.values()),
            cst::Value::ObjectValue(o) => {
                stack.extend(o.object_fields().filter_map(|f| f.value()));
            }
            // Numbers, booleans, null and enum names carry no payload.
            _ => {}
        }
    }
}

/// Variables: strings become inputs at the argument they feed (or `$name`);
/// object keys are inputs too, and a key spelled with `$` (no GraphQL name
/// can hold one) is a MongoDB operator passed through a JSON scalar.
fn variables(vars: &Json, var_locs: &HashMap<String, String>, a: &mut Analysis, shape: &mut Shape) {
    let Json::Object(o) = vars else { return };
    // Declared variables first: an undeclared one (servers ignore it) must
    // not use up the input and visit budgets before those that are used.
    let (declared, other): (Vec<_>, Vec<_>) =
        o.iter().partition(|(n, _)| var_locs.contains_key(*n));
    let before = a.inputs.len();
    for (name, v) in declared.into_iter().chain(other) {
        let loc = var_locs
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("${name}"));
        let mut stack: Vec<(&Json, u32)> = vec![(v, 0)];
        while let Some((v, d)) = stack.pop() {
            if !shape.visit() || d > MAX_JSON_DEPTH {
                break;
            }
            match v {
                Json::String(s) => push_variable(&mut a.inputs, shape, &loc, s, true),
                Json::Array(items) => stack.extend(items.iter().map(|x| (x, d + 1))),
                Json::Object(m) => {
                    for (k, x) in m {
                        if k.starts_with('$') && shape.operator.is_none() {
                            shape.operator = Some(format!(
                                "{loc}: {{{:?}: …}}",
                                crate::decode::truncate(k, 24)
                            ));
                        }
                        push_variable(&mut a.inputs, shape, &loc, k, false);
                        stack.push((x, d + 1));
                    }
                }
                _ => {}
            }
        }
    }
    // Judged first: the detectors take a bounded number of inputs, and
    // literals the client wrote into the document must not crowd them out.
    let pushed = a.inputs.len() - before;
    a.inputs.rotate_right(pushed);
}

/// Top-level arguments given as variables take the variables' scalar values
/// (what object binding compares).
fn resolve_arguments(ops: &mut [Operation], vars: &Json) {
    for op in ops {
        for (_, _, value) in &mut op.arguments {
            let Some(name) = value.strip_prefix('$') else {
                continue;
            };
            match vars.get(name) {
                Some(Json::String(s)) => *value = s.clone(),
                Some(n @ Json::Number(_)) => *value = n.to_string(),
                _ => {}
            }
        }
    }
}

/// Errors of a GraphQL response (one object, or a batch's array) that say
/// authentication failed: one per failed call, so 200 aliased logins that fail
/// count 200 failures. 0 for anything else.
pub fn auth_errors(body: &[u8]) -> u32 {
    response_errors(body).auth
}

/// What the errors of a GraphQL response say about the client.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseErrors {
    /// Errors saying authentication failed, one per failed call.
    pub auth: u32,
    /// Messages of errors suggesting a name (`Cannot query field "usr" on
    /// type "Query". Did you mean "user"?`): what a client reconstructing a
    /// schema without introspection reads, one per wrong name it tried. At most
    /// [`MAX_SUGGESTIONS`] kept.
    pub suggestions: Vec<String>,
}

/// Whether a GraphQL response (one object, or a batch's array) carries
/// `errors` (most failures are answered with 200 and told in the body).
pub fn has_errors(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'[')) || memchr::memmem::find(body, b"\"errors\"").is_none() {
        return false;
    }
    let Ok(json) = serde_json::from_slice::<Json>(body) else {
        return false;
    };
    let errors = |o: &Json| {
        o.get("errors")
            .and_then(Json::as_array)
            .is_some_and(|e| !e.is_empty())
    };
    match &json {
        Json::Array(v) => v.iter().any(errors),
        o => errors(o),
    }
}

/// Suggestion messages kept from one response.
pub const MAX_SUGGESTIONS: usize = 64;

/// The errors of a GraphQL response (one object, or a batch's array); none
/// for anything else.
pub fn response_errors(body: &[u8]) -> ResponseErrors {
    const WORDS: &[&str] = &[
        "invalid credentials",
        "invalid password",
        "wrong password",
        "incorrect password",
        "invalid username or password",
        "login failed",
        "authentication failed",
        "unauthenticated",
        "not authenticated",
        "unauthorized",
        "unauthorised",
        "forbidden",
        "access denied",
    ];
    const CODES: &[&str] = &["UNAUTHENTICATED", "FORBIDDEN", "UNAUTHORIZED"];
    let mut out = ResponseErrors::default();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'[')) || memchr::memmem::find(body, b"\"errors\"").is_none() {
        return out;
    }
    let Ok(json) = serde_json::from_slice::<Json>(body) else {
        return out;
    };
    let items: Vec<&Json> = match &json {
        Json::Array(v) => v.iter().collect(),
        o => vec![o],
    };
    for it in items {
        let Some(Json::Array(errors)) = it.get("errors") else {
            continue;
        };
        for e in errors {
            let text = e.get("message").and_then(Json::as_str).unwrap_or("");
            let msg = text.to_ascii_lowercase();
            if msg.contains("did you mean") && out.suggestions.len() < MAX_SUGGESTIONS {
                out.suggestions
                    .push(crate::decode::truncate(text, 120).to_owned());
            }
            let code = e
                .get("extensions")
                .and_then(|x| x.get("code"))
                .and_then(Json::as_str)
                .unwrap_or("");
            if WORDS.iter().any(|w| msg.contains(w)) || CODES.contains(&code) {
                out.auth = out.auth.saturating_add(1);
            }
        }
    }
    out
}

/// A variable's text: variables have a budget of their own, so string
/// literals in the document (which a client writes too) cannot use up the
/// inputs before the variables are judged.
fn push_variable(
    inputs: &mut Vec<GqlInput>,
    shape: &mut Shape,
    loc: &str,
    text: &str,
    is_value: bool,
) {
    if shape.variable_inputs < MAX_INPUTS && !text.is_empty() {
        shape.variable_inputs += 1;
        inputs.push((loc.to_owned(), text.to_owned(), is_value));
    }
}

fn push_input(inputs: &mut Vec<GqlInput>, loc: &str, text: &str, is_value: bool) {
    if inputs.len() < MAX_INPUTS && !text.is_empty() {
        inputs.push((loc.to_owned(), text.to_owned(), is_value));
    }
}

/// Fragment spreads that lead back to their own fragment (a server without
/// validation loops on them). Iterative depth-first search with colours.
/// Returns the fragments in post-order (each after those it spreads, cycles
/// aside); empty when the visit budget ran out.
fn fragment_cycles<'f>(
    fragments: &'f HashMap<String, cst::FragmentDefinition>,
    shape: &mut Shape,
) -> Vec<&'f str> {
    // Direct spreads of each fragment (inline fragments included).
    let mut edges: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, f) in fragments {
        let mut out = Vec::new();
        let mut stack: Vec<cst::SelectionSet> = f.selection_set().into_iter().collect();
        while let Some(set) = stack.pop() {
            for sel in set.selections() {
                if !shape.visit() {
                    return Vec::new();
                }
                match sel {
                    cst::Selection::Field(f) => stack.extend(f.selection_set()),
                    cst::Selection::InlineFragment(i) => stack.extend(i.selection_set()),
                    cst::Selection::FragmentSpread(s) => {
                        if let Some(n) = s.fragment_name().and_then(|n| n.name()) {
                            out.push(n.text().to_string());
                        }
                    }
                }
            }
        }
        edges.insert(name.as_str(), out);
    }
    // 0 unseen, 1 on the path, 2 done.
    let mut colour: HashMap<&str, u8> = HashMap::new();
    let mut order = Vec::with_capacity(edges.len());
    for start in edges.keys() {
        if colour.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        colour.insert(start, 1);
        while let Some((node, i)) = path.last_mut() {
            let next = edges.get(*node).and_then(|e| e.get(*i));
            *i += 1;
            match next {
                None => {
                    colour.insert(node, 2);
                    order.push(*node);
                    path.pop();
                }
                Some(n) => {
                    let Some((key, _)) = edges.get_key_value(n.as_str()) else {
                        continue;
                    };
                    match colour.get(key).copied().unwrap_or(0) {
                        1 if shape.cycle.is_none() => {
                            shape.cycle = Some(crate::decode::truncate(key, 40).to_owned());
                        }
                        0 => {
                            colour.insert(key, 1);
                            path.push((key, 0));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    order
}

/// What a fragment adds where it is spread, its own spreads included.
#[derive(Debug, Default, Clone, Copy)]
struct Sum {
    selections: u32,
    fields: u32,
    aliases: u32,
    directives: u32,
    introspection: u32,
    /// Deepest field, the fragment's own top fields being at 1.
    depth: u32,
}

/// The [`Sum`] of every fragment, computed in `order` (each after the ones it
/// spreads) from those before: a fragment bomb costs its size, not its
/// expansion. A spread of a fragment not summed (a cycle) adds nothing.
fn fragment_sums<'f>(
    fragments: &'f HashMap<String, cst::FragmentDefinition>,
    order: &[&'f str],
) -> HashMap<&'f str, Sum> {
    let mut sums: HashMap<&str, Sum> = HashMap::with_capacity(order.len());
    for name in order {
        let Some(set) = fragments
            .get(*name)
            .and_then(cst::FragmentDefinition::selection_set)
        else {
            continue;
        };
        let mut sum = Sum::default();
        let mut stack: Vec<(cst::SelectionSet, u32)> = vec![(set, 1)];
        while let Some((set, depth)) = stack.pop() {
            for sel in set.selections() {
                sum.selections = sum.selections.saturating_add(1);
                match sel {
                    cst::Selection::Field(f) => {
                        sum.fields = sum.fields.saturating_add(1);
                        sum.depth = sum.depth.max(depth);
                        if f.alias().is_some() {
                            sum.aliases = sum.aliases.saturating_add(1);
                        }
                        if f.name().is_some_and(|n| is_introspection(&n.text())) {
                            sum.introspection = sum.introspection.saturating_add(1);
                        }
                        sum.directives = sum
                            .directives
                            .saturating_add(directive_count(f.directives()));
                        if let Some(s) = f.selection_set() {
                            stack.push((s, depth + 1));
                        }
                    }
                    cst::Selection::InlineFragment(i) => {
                        sum.directives = sum
                            .directives
                            .saturating_add(directive_count(i.directives()));
                        stack.extend(i.selection_set().map(|s| (s, depth)));
                    }
                    cst::Selection::FragmentSpread(sp) => {
                        sum.directives = sum
                            .directives
                            .saturating_add(directive_count(sp.directives()));
                        let inner = sp
                            .fragment_name()
                            .and_then(|n| n.name())
                            .and_then(|n| sums.get(n.text().as_ref()).copied());
                        if let Some(x) = inner {
                            sum.add(x, depth);
                        }
                    }
                }
            }
        }
        sums.insert(name, sum);
    }
    sums
}

impl Sum {
    /// Adds a fragment spread at `depth`.
    fn add(&mut self, x: Sum, depth: u32) {
        self.selections = self.selections.saturating_add(x.selections);
        self.fields = self.fields.saturating_add(x.fields);
        self.aliases = self.aliases.saturating_add(x.aliases);
        self.directives = self.directives.saturating_add(x.directives);
        self.introspection = self.introspection.saturating_add(x.introspection);
        if x.depth > 0 {
            self.depth = self.depth.max(depth.saturating_add(x.depth - 1));
        }
    }
}

fn directive_count(d: Option<cst::Directives>) -> u32 {
    d.map_or(0, |d| {
        u32::try_from(d.directives().count()).unwrap_or(u32::MAX)
    })
}

fn is_introspection(name: &str) -> bool {
    name == "__schema" || name == "__type"
}

/// The root fields of a schema (SDL), for the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// `(kind, field)` of every root field.
    pub operations: BTreeSet<(OpKind, String)>,
}

impl Schema {
    /// Parses SDL. Root types are `Query`, `Mutation`, `Subscription` unless a
    /// `schema { … }` definition names others. Errors: syntax errors, or no root field.
    pub fn parse(sdl: &str) -> Result<Schema, String> {
        let tree = Parser::new(sdl).recursion_limit(PARSER_RECURSION).parse();
        if let Some(e) = tree.errors().next() {
            return Err(format!("{} at byte {}", e.message(), e.index()));
        }
        let doc = tree.document();
        let mut roots: HashMap<String, OpKind> = [
            ("Query".to_owned(), OpKind::Query),
            ("Mutation".to_owned(), OpKind::Mutation),
            ("Subscription".to_owned(), OpKind::Subscription),
        ]
        .into_iter()
        .collect();
        for def in doc.definitions() {
            if let cst::Definition::SchemaDefinition(s) = def {
                roots.clear();
                for r in s.root_operation_type_definitions() {
                    let kind = match r.operation_type() {
                        Some(t) if t.mutation_token().is_some() => OpKind::Mutation,
                        Some(t) if t.subscription_token().is_some() => OpKind::Subscription,
                        _ => OpKind::Query,
                    };
                    if let Some(n) = r.named_type().and_then(|n| n.name()) {
                        roots.insert(n.text().to_string(), kind);
                    }
                }
            }
        }
        let mut operations = BTreeSet::new();
        for def in doc.definitions() {
            let (name, fields) = match def {
                cst::Definition::ObjectTypeDefinition(o) => (o.name(), o.fields_definition()),
                cst::Definition::ObjectTypeExtension(o) => (o.name(), o.fields_definition()),
                _ => continue,
            };
            let Some(kind) = name.and_then(|n| roots.get(n.text().as_ref()).copied()) else {
                continue;
            };
            for f in fields
                .iter()
                .flat_map(cst::FieldsDefinition::field_definitions)
            {
                if let Some(n) = f.name() {
                    operations.insert((kind, n.text().to_string()));
                }
            }
        }
        if operations.is_empty() {
            return Err("no field on a root type (Query, Mutation, Subscription)".to_owned());
        }
        Ok(Schema { operations })
    }

    /// Whether the schema defines this root field.
    pub fn documents(&self, kind: OpKind, field: &str) -> bool {
        self.operations.contains(&(kind, field.to_owned()))
    }
}

#[cfg(test)]
mod tests;
