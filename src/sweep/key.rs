//! Content keys: what makes two trials the same trial.
//!
//! A trial's key is the SHA-256 (first 16 hex digits) of canonical JSON holding kiln's
//! version, its resolved recipe (model inlined, overrides applied, data paths absolute) and
//! each data file's size and modification time. The recipe's `sweep` section (which lists the
//! trials, not what one trial is), `name` and `description` are left out. The configuration
//! key is the same without `train.seed`: the seeds of one point share it.

use crate::spec::LoadedRecipe;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A trial's key and its configuration's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Identity of the trial.
    pub key: String,
    /// Identity of its configuration (the trial without its seed).
    pub config: String,
}

/// The keys of a loaded trial recipe (its data paths already absolute). Errors name a data
/// file that cannot be read.
pub fn keys(doc: &LoadedRecipe) -> Result<Keys, String> {
    let mut spec = doc.resolved();
    spec.sweep = None;
    let mut recipe = serde_json::to_value(&spec).expect("recipe serializes");
    forget_labels(&mut recipe);
    if let Some(model) = recipe.get_mut("model") {
        forget_labels(model);
    }
    let mut data = serde_json::Map::new();
    for path in doc.data_files() {
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("data file `{}`: {e}", path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        data.insert(
            path.display().to_string(),
            serde_json::json!({"bytes": meta.len(), "modified_ns": mtime.to_string()}),
        );
    }
    let mut whole = serde_json::json!({
        "kiln": env!("CARGO_PKG_VERSION"),
        "recipe": recipe,
        "data": data,
    });
    let key = digest(&whole);
    whole["recipe"]["train"]["seed"] = Value::Null;
    Ok(Keys {
        key,
        config: digest(&whole),
    })
}

/// Labels that do not change what is trained.
fn forget_labels(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
        o.remove("description");
    }
}

fn digest(v: &Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with object keys sorted at every level: equal values give equal text.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        v => out.push_str(&v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 3}], "x": null}});
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, {"p": 3, "q": 2}]}, "b": 1}"#)
                .unwrap();
        assert_eq!(digest(&a), digest(&b));
        let mut c = b.clone();
        c["a"]["y"][0] = 2.into();
        assert_ne!(digest(&a), digest(&c));
        let mut s = String::new();
        canonical(&a, &mut s);
        assert_eq!(s, r#"{"a":{"x":null,"y":[1,{"p":3,"q":2}]},"b":1}"#);
    }
}
