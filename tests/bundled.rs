//! The bundled models and recipes, and the committed schemas.

use kiln::diag::{render_text, SourceMap};
use kiln::spec::{schema, yaml};
use serde_json::Value;
use std::path::PathBuf;

fn bundled() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["models", "recipes"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_bundled_file_validates() {
    let files = bundled();
    assert!(files.len() >= 6);
    for f in files {
        let mut sources = SourceMap::new();
        if let Err(e) = kiln::spec::load(&f, &[], &mut sources) {
            panic!(
                "{} is invalid:\n{}",
                f.display(),
                render_text(&e.diags, &sources, false)
            );
        }
    }
}

#[test]
fn every_bundled_file_starts_with_the_schema_modeline() {
    for f in bundled() {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().next().unwrap_or("");
        let kind = if text.contains("\nkind: model") {
            "model"
        } else {
            "recipe"
        };
        assert_eq!(
            first,
            format!("# yaml-language-server: $schema=../schemas/{kind}.schema.json"),
            "{} lacks the modeline",
            f.display()
        );
    }
}

#[test]
fn committed_schemas_are_up_to_date() {
    for (name, s) in schema::all() {
        let path = format!("schemas/{name}");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == schema::to_text(&s),
            "{path} is stale: run `cargo run -- schema --out schemas/` and commit the result"
        );
    }
}

#[test]
fn schemas_are_valid_draft7() {
    for (name, s) in schema::all() {
        assert!(
            jsonschema::draft7::meta::is_valid(&s),
            "{name} is not a valid draft-07 schema"
        );
        jsonschema::draft7::new(&s).unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
    }
}

/// Walk every object schema; every property needs a description, and every optional one a
/// default, so editors can show hover docs and complete values.
#[test]
fn every_field_has_a_description_and_optional_fields_a_default() {
    fn walk(v: &Value, path: &str, problems: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    let required: Vec<&str> = m
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    for (k, p) in props {
                        if p.get("description").is_none() {
                            problems.push(format!("{path}.{k}: no description"));
                        }
                        if !required.contains(&k.as_str()) && p.get("default").is_none() {
                            problems.push(format!("{path}.{k}: optional without default"));
                        }
                    }
                }
                for (k, sub) in m {
                    walk(sub, &format!("{path}/{k}"), problems);
                }
            }
            Value::Array(a) => {
                for (i, sub) in a.iter().enumerate() {
                    walk(sub, &format!("{path}/{i}"), problems);
                }
            }
            _ => {}
        }
    }
    for (name, s) in schema::all() {
        let mut problems = Vec::new();
        walk(&s, name, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

fn raw_json(path: &std::path::Path) -> Option<Value> {
    let mut sm = SourceMap::new();
    let id = kiln::spec::load::read_source(path, &mut sm).ok()?;
    let (node, diags) = yaml::parse(&sm, id);
    if !diags.is_empty() {
        return None;
    }
    Some(node?.to_json())
}

/// A second, independent validator (the `jsonschema` crate) accepts every bundled file as it
/// is written, and rejects the golden cases that kiln rejects for schema reasons.
#[test]
fn independent_validator_agrees() {
    let validators: Vec<(String, jsonschema::Validator)> = schema::all()
        .into_iter()
        .map(|(n, s)| (n.to_string(), jsonschema::draft7::new(&s).unwrap()))
        .collect();
    let pick = |doc: &Value| {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        validators
            .iter()
            .find(|(n, _)| n.starts_with(kind) && !kind.is_empty())
            .map(|(_, v)| v)
    };
    for f in bundled() {
        let doc = raw_json(&f).unwrap();
        let v = pick(&doc).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    let schema_codes = ["K101", "K102", "K103", "K104", "K105", "K106", "K112"];
    let mut checked = 0;
    for e in std::fs::read_dir("tests/golden/cases").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|e| e != "yaml") || p.with_extension("args").exists() {
            continue;
        }
        let Some(doc) = raw_json(&p) else { continue };
        let Some(v) = pick(&doc) else { continue };
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(p.with_extension("json")).unwrap())
                .unwrap();
        let ours_schema_error = expected.as_array().unwrap().iter().any(|d| {
            schema_codes.contains(&d["code"].as_str().unwrap())
                && d["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(p.file_name().unwrap().to_str().unwrap()))
        });
        if ours_schema_error {
            assert!(
                !v.is_valid(&doc),
                "{}: kiln reports a schema error, jsonschema accepts it",
                p.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} golden cases were cross-checked"
    );
}
