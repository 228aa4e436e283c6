//! The JSON reports' schemas and their field reference, generated from the report types
//! themselves (`schemars`, from their serde attributes and doc comments): `docs/*.schema.json`
//! and `docs/json.md` are these functions' output, and a unit test fails when they are not.
use std::{collections::BTreeSet, fmt::Write as _};

use serde_json::Value;

/// The JSON Schema (2020-12) of `T`.
#[must_use]
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
}

/// A Markdown reference of every field of `schema`: a table for the root and one for each
/// type it uses, in the order they are first met, each field with its type and meaning.
#[must_use]
pub fn fields_markdown(heading: &str, schema: &Value) -> String {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = String::new();
    let root = schema.get("title").and_then(Value::as_str).unwrap_or("Root").to_owned();
    let mut queue = vec![(root, schema.clone())];
    let mut seen = BTreeSet::new();
    let mut first = true;
    while !queue.is_empty() {
        let (name, def) = queue.remove(0);
        if !seen.insert(name.clone()) {
            continue;
        }
        if first {
            let _ = writeln!(out, "## {heading}\n");
            first = false;
        } else {
            let _ = writeln!(out, "### {name}\n");
        }
        if let Some(d) = def.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", one_line(d));
        }
        if let Some(props) = def.get("properties").and_then(Value::as_object) {
            let required: BTreeSet<&str> = def
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str("| field | type | meaning |\n|---|---|---|\n");
            for (field, p) in props {
                let mut ty = type_of(p);
                if !required.contains(field.as_str()) {
                    ty.push_str(" (optional)");
                }
                let meaning = p.get("description").and_then(Value::as_str).map_or_else(
                    || referenced(p).and_then(|r| description_of(&defs, &r)).unwrap_or_default(),
                    one_line,
                );
                let _ = writeln!(out, "| `{field}` | {ty} | {} |", cell(&meaning));
                for r in refs(p) {
                    if let Some(d) = defs.get(&r) {
                        queue.push((r, d.clone()));
                    }
                }
            }
            out.push('\n');
        } else if let Some(values) = variants(&def) {
            out.push_str("| value | meaning |\n|---|---|\n");
            for (value, meaning) in values {
                let _ = writeln!(out, "| `{value}` | {} |", cell(&meaning));
            }
            out.push('\n');
        }
    }
    out
}

/// Text of a doc comment on one line (paragraphs joined).
fn one_line(d: &str) -> String {
    d.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Escapes what would break a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The definition a schema refers to directly, if it is a `$ref`.
fn referenced(v: &Value) -> Option<String> {
    v.get("$ref").and_then(Value::as_str).map(|r| r.trim_start_matches("#/$defs/").to_owned())
}

fn description_of(defs: &Value, name: &str) -> Option<String> {
    defs.get(name)?.get("description").and_then(Value::as_str).map(one_line)
}

/// Every definition `v` refers to, however deep (arrays, maps, optional values).
fn refs(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(r) = referenced(v) {
                    out.push(r);
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The values of a string enum with their meanings, if `def` is one.
fn variants(def: &Value) -> Option<Vec<(String, String)>> {
    if let Some(one_of) = def.get("oneOf").and_then(Value::as_array) {
        return one_of
            .iter()
            .map(|v| {
                let value = v
                    .get("const")
                    .and_then(Value::as_str)
                    .or_else(|| v.get("enum").and_then(Value::as_array)?.first()?.as_str())?;
                let meaning =
                    v.get("description").and_then(Value::as_str).map_or_else(String::new, one_line);
                Some((value.to_owned(), meaning))
            })
            .collect();
    }
    let values = def.get("enum").and_then(Value::as_array)?;
    Some(values.iter().filter_map(Value::as_str).map(|v| (v.to_owned(), String::new())).collect())
}

/// A schema's type in a few words: `integer`, `string or null`, `array of [Site](#site)`.
fn type_of(v: &Value) -> String {
    if let Some(r) = referenced(v) {
        return format!("[{r}](#{})", r.to_lowercase());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let mut names: Vec<String> = alts.iter().map(type_of).collect();
            names.dedup();
            return names.join(" or ");
        }
    }
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return "any".to_owned(),
    };
    types
        .iter()
        .map(|t| match *t {
            "array" => format!("array of {}", v.get("items").map_or_else(|| "any".into(), type_of)),
            "object" => match v.get("additionalProperties") {
                Some(Value::Object(_)) => {
                    format!("map of {}", type_of(&v["additionalProperties"]))
                }
                _ => "object".to_owned(),
            },
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(schemars::JsonSchema)]
    /// A thing.
    #[expect(dead_code, reason = "only its schema is used")]
    struct Thing {
        /// How many.
        count: u32,
        /// Its parts.
        parts: Vec<Part>,
        /// A note, maybe.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    #[derive(schemars::JsonSchema)]
    /// One part.
    #[expect(dead_code, reason = "only its schema is used")]
    struct Part {
        /// Its kind.
        kind: Kind,
    }

    #[derive(schemars::JsonSchema)]
    #[serde(rename_all = "snake_case")]
    /// Kinds.
    #[expect(dead_code, reason = "only its schema is used")]
    enum Kind {
        /// Big ones.
        Big,
        /// Small ones.
        Small,
    }

    #[test]
    fn every_field_and_type_is_in_the_reference() {
        let md = fields_markdown("A thing", &schema_of::<Thing>());
        assert!(md.starts_with("## A thing\n\nA thing.\n\n| field | type | meaning |"), "{md}");
        assert!(md.contains("| `count` | integer | How many. |"), "{md}");
        assert!(md.contains("| `parts` | array of [Part](#part) | Its parts. |"), "{md}");
        assert!(md.contains("| `note` | string or null (optional) | A note, maybe. |"), "{md}");
        assert!(md.contains("### Part\n\nOne part.\n"), "{md}");
        assert!(md.contains("| `kind` | [Kind](#kind) | Its kind. |"), "{md}");
        assert!(md.contains("| `big` | Big ones. |\n| `small` | Small ones. |"), "{md}");
    }
}
