//! JSON Schemas generated from the spec types (`kiln schema`).
//!
//! The schemas are draft-07 (the dialect yaml-language-server and most editors understand best).
//! Two rewrites follow generation: non-standard `format` annotations (`uint32`, `double`, ...)
//! are dropped, so strict validators such as ajv accept the schemas; and every number or
//! boolean of a model also accepts a `$name` variable reference.

use super::model::ModelSpec;
use super::recipe::RecipeSpec;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// Name of the definition that `$name` references validate against.
pub const VAR_REF: &str = "VarRef";
/// Pattern of a `$name` variable reference.
pub const VAR_REF_PATTERN: &str = "^\\$[A-Za-z_][A-Za-z0-9_]*$";

/// The schema of `kind: model` documents (generated once per process).
pub fn model_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| generate::<ModelSpec>("model"))
}

/// The schema of `kind: recipe` documents (generated once per process).
pub fn recipe_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| generate::<RecipeSpec>("recipe"))
}

/// `(file name, schema)` for every committed schema.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("model.schema.json", model_schema().clone()),
        ("recipe.schema.json", recipe_schema().clone()),
    ]
}

/// The text written to disk for a schema (pretty JSON with a final newline).
pub fn to_text(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas serialize");
    s.push('\n');
    s
}

fn generate<T: JsonSchema>(kind: &str) -> Value {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut v = schema.to_value();
    strip_formats(&mut v);
    describe_tags(&mut v);
    let obj = v.as_object_mut().expect("root schema is an object");
    obj.insert(
        "$id".into(),
        json!(format!("https://kiln.dev/schemas/{kind}.schema.json")),
    );
    let defs = obj
        .entry("definitions")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("definitions is an object");
    defs.insert(
        VAR_REF.into(),
        json!({
            "description": "A reference to a variable of the model's `vars`, e.g. `$d_model`.",
            "type": "string",
            "pattern": VAR_REF_PATTERN,
        }),
    );
    for name in ["Layer", "Rope"] {
        if let Some(def) = defs.get_mut(name) {
            allow_var_refs(def);
        }
    }
    // The model's own top-level numbers (`vocab`): at the root of model.schema.json, or in
    // the ModelSpec definition of recipe.schema.json.
    let model_props = if kind == "model" {
        obj.get_mut("properties")
    } else {
        obj.get_mut("definitions")
            .and_then(|d| d.get_mut("ModelSpec"))
            .and_then(|m| m.get_mut("properties"))
    };
    if let Some(Value::Object(props)) = model_props {
        for (name, prop) in props.iter_mut() {
            if name != "vars" {
                wrap_scalar(prop);
            }
        }
    }
    v
}

/// Drop `format` annotations that are not standard JSON Schema formats.
fn strip_formats(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if matches!(m.get("format"), Some(Value::String(f)) if !STANDARD_FORMATS.contains(&f.as_str()))
            {
                m.remove("format");
            }
            m.values_mut().for_each(strip_formats);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_formats),
        _ => {}
    }
}

/// Give the tag property of every variant of a tagged union (`type: attention`) the variant's
/// description, so editors show it on hover and in completion.
fn describe_tags(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(alts)) = m.get_mut("oneOf") {
                for alt in alts.iter_mut() {
                    let Some(alt) = alt.as_object_mut() else {
                        continue;
                    };
                    let doc = alt
                        .get("description")
                        .and_then(Value::as_str)
                        .map(String::from);
                    let Some(Value::Object(props)) = alt.get_mut("properties") else {
                        continue;
                    };
                    for prop in props.values_mut() {
                        if let Some(p) = prop.as_object_mut() {
                            if p.contains_key("const") && !p.contains_key("description") {
                                if let Some(d) = &doc {
                                    p.insert("description".into(), Value::String(d.clone()));
                                }
                            }
                        }
                    }
                }
            }
            m.values_mut().for_each(describe_tags);
        }
        Value::Array(a) => a.iter_mut().for_each(describe_tags),
        _ => {}
    }
}

const STANDARD_FORMATS: &[&str] = &["date-time", "date", "time", "email", "uri", "regex"];

/// Make every integer, number or boolean property below `v` also accept a `$name` reference.
fn allow_var_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                props.values_mut().for_each(wrap_scalar);
            }
            m.values_mut().for_each(allow_var_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(allow_var_refs),
        _ => {}
    }
}

/// `{type: integer, minimum: 1, description, default}` →
/// `{description, default, anyOf: [{type: integer, minimum: 1}, {$ref: VarRef}]}`.
fn wrap_scalar(prop: &mut Value) {
    let Some(m) = prop.as_object_mut() else {
        return;
    };
    let scalar = match m.get("type") {
        Some(Value::String(t)) => matches!(t.as_str(), "integer" | "number" | "boolean"),
        Some(Value::Array(ts)) => ts
            .iter()
            .any(|t| matches!(t.as_str(), Some("integer" | "number" | "boolean"))),
        _ => false,
    };
    if !scalar {
        return;
    }
    let mut inner = Map::new();
    let mut outer = Map::new();
    for (k, val) in std::mem::take(m) {
        if matches!(k.as_str(), "description" | "default" | "title") {
            outer.insert(k, val);
        } else {
            inner.insert(k, val);
        }
    }
    outer.insert(
        "anyOf".into(),
        json!([Value::Object(inner), {"$ref": format!("#/definitions/{VAR_REF}")}]),
    );
    *m = outer;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_layers_accept_variables() {
        let s = model_schema();
        let text = s.to_string();
        assert!(text.contains("#/definitions/VarRef"));
        assert!(!text.contains("\"format\":\"uint32\""));
    }
}
