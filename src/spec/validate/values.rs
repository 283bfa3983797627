//! The checks of one value against its schema: its type, enum, number range, string pattern,
//! array items and object keys.

use super::{first_sentence, Ctx, Validator};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Span};
use crate::spec::yaml::{fmt_f64, Node, Value};
use serde_json::{Map, Value as J};

impl<'s> Validator<'s> {
    pub(super) fn wrong_type(&mut self, expected: &[String], var_ok: bool, node: &Node, ctx: &Ctx) {
        let mut names: Vec<String> = Vec::new();
        for t in expected {
            let n = type_noun(t).to_string();
            if !names.contains(&n) && t != "null" {
                names.push(n);
            }
        }
        if var_ok {
            names.push("a `$variable`".into());
        }
        let want = match names.len() {
            0 => "null".to_string(),
            1 => names[0].clone(),
            n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
        };
        let mut help = None;
        if let Value::Str(s) = &node.value {
            let quoted_number = s.trim().parse::<f64>().is_ok();
            if quoted_number && expected.iter().any(|t| t == "integer" || t == "number") {
                help = Some(format!("remove the quotes: `{}`", s.trim()));
            } else if expected.iter().any(|t| t == "boolean")
                && matches!(
                    s.to_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n"
                )
            {
                help = Some(
                    "write `true` or `false` (YAML 1.2 reads `yes`/`no`/`on`/`off` as strings)"
                        .into(),
                );
            }
        }
        if help.is_none() && matches!(node.value, Value::Null) {
            help = Some(format!("give {} a value, or remove the key", ctx.subject()));
        }
        if help.is_none() {
            let key = ctx
                .key
                .as_deref()
                .filter(|k| !k.contains('['))
                .unwrap_or("key");
            let example = match expected.iter().find(|t| *t != "null").map(String::as_str) {
                Some("integer") => format!("`{key}: 4`"),
                Some("number") => format!("`{key}: 0.5`"),
                Some("boolean") => format!("`{key}: true`"),
                Some("string") => format!("`{key}: some-text`"),
                Some("array") => format!("`{key}: [...]` or one `- item` per line"),
                Some("object") => format!("`{key}:` followed by indented `name: value` lines"),
                _ => "a value of the type above".to_string(),
            };
            help = Some(format!("write it as {example}"));
        }
        self.push(
            Diagnostic::error(
                Code::WrongType,
                Some(node.span),
                format!(
                    "{} must be {want}, found {}",
                    ctx.subject(),
                    node.describe()
                ),
            )
            .label(format!("expected {want}"))
            .maybe_help(help),
        );
    }

    /// Check `type`; returns false (after reporting) when the value has the wrong type.
    pub(super) fn check_type(&mut self, obj: &Map<String, J>, node: &Node, ctx: &Ctx) -> bool {
        let types = match obj.get("type") {
            Some(J::String(t)) => vec![t.clone()],
            Some(J::Array(ts)) => ts
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => return true,
        };
        if types.iter().any(|t| type_matches(t, node)) {
            if let Value::Float(f) = node.value {
                if !f.is_finite() {
                    self.push(
                        Diagnostic::error(
                            Code::OutOfRange,
                            Some(node.span),
                            format!(
                                "{} must be a finite number, found {}",
                                ctx.subject(),
                                node.describe()
                            ),
                        )
                        .label("not finite")
                        .help("`.inf` and `.nan` are not allowed here; write an ordinary number"),
                    );
                    return false;
                }
            }
            return true;
        }
        self.wrong_type(&types, false, node, ctx);
        false
    }

    pub(super) fn check_enum(&mut self, values: &[J], node: &Node, ctx: &Ctx) {
        let json = node.to_json();
        if values.contains(&json) {
            return;
        }
        let names: Vec<String> = values
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
            .collect();
        let given = node.as_str().map(String::from);
        let guess = given
            .as_deref()
            .and_then(|g| did_you_mean(g, names.iter().map(String::as_str)));
        let help = match guess {
            Some(g) => format!("did you mean `{g}`? Expected {}", one_of(&names)),
            None => format!("expected {}", one_of(&names)),
        };
        self.push(
            Diagnostic::error(
                Code::UnknownValue,
                Some(node.span),
                format!(
                    "unknown value {} for {}",
                    match &given {
                        Some(g) => format!("`{g}`"),
                        None => node.describe(),
                    },
                    ctx.subject()
                ),
            )
            .label("not an allowed value")
            .help(help),
        );
    }

    pub(super) fn check_number(&mut self, obj: &Map<String, J>, node: &Node, ctx: &Ctx) {
        let x = match node.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => return,
        };
        let min = obj.get("minimum").and_then(J::as_f64);
        let max = obj.get("maximum").and_then(J::as_f64);
        let xmin = obj.get("exclusiveMinimum").and_then(J::as_f64);
        let xmax = obj.get("exclusiveMaximum").and_then(J::as_f64);
        let below = min.is_some_and(|m| x < m) || xmin.is_some_and(|m| x <= m);
        let above = max.is_some_and(|m| x > m) || xmax.is_some_and(|m| x >= m);
        if !(below || above) {
            return;
        }
        let name = ctx.key.clone().unwrap_or_else(|| "value".into());
        let mut lower = None;
        if let Some(m) = xmin {
            lower = Some(format!("{} <", fmt_f64(m)));
        } else if let Some(m) = min {
            lower = Some(format!("{} ≤", fmt_f64(m)));
        }
        let mut upper = None;
        if let Some(m) = xmax {
            upper = Some(format!("< {}", fmt_f64(m)));
        } else if let Some(m) = max {
            upper = Some(format!("≤ {}", fmt_f64(m)));
        }
        let range = match (lower, upper) {
            (Some(l), Some(u)) => format!("{l} {name} {u}"),
            (Some(l), None) => format!("{l} {name}"),
            (None, Some(u)) => format!("{name} {u}"),
            (None, None) => unreachable!("a bound was violated"),
        };
        let (msg, label) = if below {
            let label = match xmin {
                Some(m) => format!("must be greater than {}", fmt_f64(m)),
                None => format!("must be at least {}", fmt_f64(min.unwrap_or_default())),
            };
            (
                format!("{} is too small: {}", ctx.subject(), describe_num(node)),
                label,
            )
        } else {
            let label = match xmax {
                Some(m) => format!("must be less than {}", fmt_f64(m)),
                None => format!("must be at most {}", fmt_f64(max.unwrap_or_default())),
            };
            (
                format!("{} is too large: {}", ctx.subject(), describe_num(node)),
                label,
            )
        };
        let mut d = Diagnostic::error(Code::OutOfRange, Some(node.span), msg)
            .label(label)
            .help(format!("allowed range: {range}"));
        if let Some(via) = &node.via {
            d = d.note(via.1, format!("`${}` is defined here", via.0));
        }
        self.push(d);
    }

    pub(super) fn check_string(&mut self, obj: &Map<String, J>, s: &str, node: &Node, ctx: &Ctx) {
        if let Some(min) = obj.get("minLength").and_then(J::as_u64) {
            if (s.chars().count() as u64) < min {
                self.push(
                    Diagnostic::error(
                        Code::BadString,
                        Some(node.span),
                        format!("{} must not be empty", ctx.subject()),
                    )
                    .label("empty")
                    .help("write at least one character"),
                );
            }
        }
        if let Some(p) = obj.get("pattern").and_then(J::as_str) {
            if let Ok(re) = regex::Regex::new(p) {
                if !re.is_match(s) {
                    self.push(
                        Diagnostic::error(
                            Code::BadString,
                            Some(node.span),
                            format!("{} does not have the required form", ctx.subject()),
                        )
                        .label(format!("must match `{p}`"))
                        .help(format!("the value must match the regular expression `{p}`")),
                    );
                }
            }
        }
    }

    pub(super) fn check_array(
        &mut self,
        obj: &'s Map<String, J>,
        items: &[Node],
        node: &Node,
        ctx: &Ctx,
    ) {
        let min = obj.get("minItems").and_then(J::as_u64);
        let max = obj.get("maxItems").and_then(J::as_u64);
        let n = items.len() as u64;
        if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
            let want = match (min, max) {
                (Some(a), Some(b)) if a == b => format!("exactly {a}"),
                (Some(a), Some(b)) => format!("{a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => unreachable!(),
            };
            self.push(
                Diagnostic::error(
                    Code::BadLength,
                    Some(node.span),
                    format!(
                        "{} needs {want} item{}, found {n}",
                        ctx.subject(),
                        if want.ends_with(" 1") { "" } else { "s" }
                    ),
                )
                .label(format!("{n} item{}", if n == 1 { "" } else { "s" }))
                .help(format!("{} takes {want} item(s)", ctx.subject())),
            );
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, item) in items.iter().enumerate() {
                let sub = Ctx {
                    key: Some(format!("{}[{i}]", ctx.key.as_deref().unwrap_or("item"))),
                    key_span: None,
                    what: ctx.what.clone(),
                };
                self.check(item_schema, item, &sub);
            }
        }
    }

    pub(super) fn check_object(&mut self, obj: &'s Map<String, J>, node: &Node, ctx: &Ctx) {
        let entries = node.as_map().unwrap_or_default();
        let props = obj.get("properties").and_then(J::as_object);
        let extra = obj.get("additionalProperties");
        let names_schema = obj.get("propertyNames");
        let known: Vec<&str> = props
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for e in entries {
            if let Some(ns) = names_schema {
                let key_node = Node::new(Value::Str(e.key.clone()), e.key_span);
                let sub = Ctx {
                    key: Some("the key".into()),
                    key_span: None,
                    what: ctx.what.clone(),
                };
                let before = self.diags.len();
                self.check(ns, &key_node, &sub);
                for d in &mut self.diags[before..] {
                    d.code = Code::BadKey;
                    d.message = format!("`{}` is not a valid name in {}", e.key, ctx.what);
                    d.help = Some(
                        "names start with a letter or `_` and contain only letters, digits and `_`"
                            .into(),
                    );
                }
            }
            let sub = Ctx {
                key: Some(e.key.clone()),
                key_span: Some(e.key_span),
                what: format!("`{}`", e.key),
            };
            if let Some(p) = props.and_then(|p| p.get(&e.key)) {
                self.check(p, &e.value, &sub);
                continue;
            }
            match extra {
                Some(J::Bool(false)) => {
                    let guess = did_you_mean(&e.key, known.iter().copied());
                    let help = match guess {
                        Some(g) => format!("did you mean `{g}`?"),
                        None if known.is_empty() => format!("{} takes no keys", ctx.what),
                        None => format!("{} takes {}", ctx.what, one_of(&known)),
                    };
                    self.push(
                        Diagnostic::error(
                            Code::UnknownKey,
                            Some(e.key_span),
                            format!("unknown key `{}` in {}", e.key, ctx.what),
                        )
                        .label("unknown key")
                        .help(help),
                    );
                }
                Some(s @ J::Object(_)) => self.check(s, &e.value, &sub),
                _ => {}
            }
        }
        if let Some(required) = obj.get("required").and_then(J::as_array) {
            for r in required.iter().filter_map(J::as_str) {
                if entries.iter().any(|e| e.key == r) {
                    continue;
                }
                let span = ctx
                    .key_span
                    .or_else(|| entries.first().map(|e| e.key_span))
                    .unwrap_or(Span::new(node.span.src, node.span.start, node.span.start));
                let doc = props
                    .and_then(|p| p.get(r))
                    .map(|p| self.resolve(p).0)
                    .and_then(|p| p.get("description"))
                    .and_then(J::as_str)
                    .map(first_sentence);
                let help = match doc {
                    Some(d) => format!(
                        "add `{r}: ...` ({})",
                        d.trim_end_matches('.').to_lowercase()
                    ),
                    None => format!("add `{r}: ...`"),
                };
                self.push(
                    Diagnostic::error(
                        Code::MissingKey,
                        Some(span),
                        format!("missing required key `{r}` in {}", ctx.what),
                    )
                    .label(format!("`{r}` is required here"))
                    .help(help),
                );
            }
        }
    }
}

pub(super) fn ctx_name(ctx: &Ctx, noun: &str) -> String {
    match &ctx.key {
        Some(k) if !k.contains('[') => format!("`{k}`"),
        _ => format!("this {noun}"),
    }
}

pub(super) fn describe_num(node: &Node) -> String {
    let d = node.describe();
    match &node.via {
        Some(via) => format!("{d} (from `${}`)", via.0),
        None => d,
    }
}

/// `SpectralGate` → "spectral gate".
pub(super) fn lower_words(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

pub(super) fn schema_types(s: &J) -> Vec<String> {
    match s.get("type") {
        Some(J::String(t)) => vec![t.clone()],
        Some(J::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) fn type_matches(t: &str, node: &Node) -> bool {
    let nt = node.type_name();
    t == nt || (t == "number" && nt == "integer")
}

pub(super) fn type_noun(t: &str) -> &'static str {
    match t {
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (`true`/`false`)",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        "null" => "null",
        _ => "a value",
    }
}
