//! docs/policy.md and the policy schema agree: every field the docs name
//! (a `### \`field\`` heading, a key in a YAML example) is one the parser
//! accepts, and every field the parser accepts, top level and one level
//! down, is documented. The parser's own list of fields is read from its
//! "unknown field, expected one of …" error (serde's `deny_unknown_fields`),
//! so there is no second list to keep in step.

use std::path::Path;

use super::Policy;

const DOC: &str = include_str!("../../../../docs/policy.md");

/// Pages a section may hand its sub-fields to (it links them).
const LINKED: [(&str, &str); 2] = [
    (
        "api-rules.md",
        include_str!("../../../../docs/api-rules.md"),
    ),
    (
        "detectors.md",
        include_str!("../../../../docs/detectors.md"),
    ),
];

/// The fields the parser accepts where `probe` puts an unknown one, or
/// `None` when that place takes no named fields (a list, a map, a scalar).
fn accepted(probe: &str) -> Option<Vec<String>> {
    let err = Policy::parse(probe, Path::new("probe.yaml"))
        .err()?
        .to_string();
    let list = err.split("expected one of ").nth(1)?;
    let list = list.split(" at line").next().unwrap_or(list);
    Some(
        list.split(", ")
            .map(|f| f.trim().trim_matches('`').to_owned())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

/// The text of each `### ` section under "## Fields", by heading.
fn sections() -> Vec<(String, String)> {
    let fields = DOC.split("\n## Fields\n").nth(1).unwrap_or_default();
    let fields = fields.split("\n## ").next().unwrap_or(fields);
    fields
        .split("\n### ")
        .skip(1)
        .map(|s| {
            let (head, body) = s.split_once('\n').unwrap_or((s, ""));
            (head.to_owned(), body.to_owned())
        })
        .collect()
}

/// The backquoted names of a heading (`` `auth`, `routes` ``).
fn names(head: &str) -> Vec<String> {
    head.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_documented_policy_field_exists() {
    let top = accepted("zzz_unknown: 1\n").expect("the policy lists its fields");
    let mut missing = Vec::new();
    for (head, _) in sections() {
        for n in names(&head) {
            if !top.contains(&n) {
                missing.push(format!("heading `{n}`"));
            }
        }
    }
    // Each YAML example parses, or fails for its values (a fragment), never
    // for a field the parser does not know.
    let mut in_yaml = false;
    let mut block = String::new();
    let mut blocks = 0;
    for line in DOC.lines() {
        if line.trim_start().starts_with("```") {
            if in_yaml {
                blocks += 1;
                if let Err(e) = Policy::parse(&block, Path::new("docs/policy.md")) {
                    let e = e.to_string();
                    if e.contains("unknown field") {
                        missing.push(format!("{e}\nin:\n{block}"));
                    }
                }
                block.clear();
            }
            in_yaml = !in_yaml && line.trim_start().starts_with("```yaml");
            continue;
        }
        if in_yaml {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert!(blocks >= 10, "only {blocks} YAML examples found");
    assert!(
        missing.is_empty(),
        "documented but unknown to the parser:\n{missing:#?}"
    );
}

#[test]
fn every_policy_field_is_documented() {
    let top = accepted("zzz_unknown: 1\n").expect("the policy lists its fields");
    assert!(top.len() > 20, "{top:?}");
    let sections = sections();
    let mut undocumented = Vec::new();
    for field in &top {
        let Some((_, body)) = sections.iter().find(|(h, _)| names(h).contains(field)) else {
            undocumented.push(field.clone());
            continue;
        };
        // One level down: each field of a section is named in its text.
        let Some(subs) = accepted(&format!("{field}:\n  zzz_unknown: 1\n")) else {
            continue;
        };
        // The section's text and the pages it links.
        let texts: Vec<&str> = std::iter::once(body.as_str())
            .chain(
                LINKED
                    .iter()
                    .filter(|(page, _)| body.contains(&format!("({page}")))
                    .map(|(_, text)| *text),
            )
            .collect();
        for sub in subs {
            let named = texts.iter().any(|t| {
                t.contains(&format!("`{sub}`"))
                    || t.contains(&format!("{sub}:"))
                    || t.contains(&format!("`{field}.{sub}`"))
            });
            if !named {
                undocumented.push(format!("{field}.{sub}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "policy fields docs/policy.md does not describe: {undocumented:?}"
    );
}
