//! Validation of a [`Node`] tree against a JSON Schema, with diagnostics a person can act on.
//!
//! The committed schemas are the single source of truth; this validator walks them (the
//! draft-07 subset that `kiln schema` emits) and reports *every* problem, each at the key or
//! value it concerns. Unions tagged by a `type` (or `kind`) key are read tag-first: the user
//! sees one precise error for the variant they chose, never a flood of `oneOf` alternatives.

use super::schema::VAR_REF;
use super::yaml::{fmt_f64, Node, Value};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Span};
use serde_json::{Map, Value as J};

/// Validate `node` against `schema` (a root schema with `definitions`), describing the document
/// as `what` (e.g. "recipe") in messages.
pub fn validate(schema: &J, node: &Node, what: &str) -> Vec<Diagnostic> {
    let mut v = Validator {
        root: schema,
        diags: Vec::new(),
    };
    let ctx = Ctx {
        key: None,
        key_span: None,
        what: what.to_string(),
    };
    v.check(schema, node, &ctx);
    v.diags
}

struct Validator<'s> {
    root: &'s J,
    diags: Vec<Diagnostic>,
}

/// What the value being checked is, for messages.
#[derive(Clone)]
struct Ctx {
    /// The key the value sits under, if any.
    key: Option<String>,
    /// Where that key (or, for a list item of a tagged union, its tag) is written.
    key_span: Option<Span>,
    /// How to name the enclosing object in messages, e.g. "`attention` layer".
    what: String,
}

impl Ctx {
    /// "`heads`" or "this value".
    fn subject(&self) -> String {
        match &self.key {
            Some(k) => format!("`{k}`"),
            None => "this value".into(),
        }
    }
}

fn first_sentence(s: &str) -> &str {
    let s = s.trim();
    match s.find(". ") {
        Some(i) => &s[..=i],
        None => s,
    }
}

impl<'s> Validator<'s> {
    fn resolve(&self, schema: &'s J) -> (&'s J, Option<&'s str>) {
        let mut s = schema;
        let mut name = None;
        for _ in 0..32 {
            match s.get("$ref").and_then(J::as_str) {
                Some(r) => {
                    let n = r.rsplit('/').next().unwrap_or(r);
                    name = Some(n);
                    match self.root.pointer(r.trim_start_matches('#')) {
                        Some(t) => s = t,
                        None => break,
                    }
                }
                None => break,
            }
        }
        (s, name)
    }

    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn check(&mut self, schema: &'s J, node: &Node, ctx: &Ctx) {
        let (schema, def_name) = self.resolve(schema);
        if def_name == Some(VAR_REF) {
            self.check_var_ref(node, ctx);
            return;
        }
        let Some(obj) = schema.as_object() else {
            if schema == &J::Bool(false) {
                self.push(
                    Diagnostic::error(
                        Code::UnknownKey,
                        Some(node.span),
                        "no value is allowed here",
                    )
                    .label("not allowed")
                    .help("remove this value"),
                );
            }
            return;
        };
        let alts = obj
            .get("oneOf")
            .or_else(|| obj.get("anyOf"))
            .and_then(J::as_array);
        if let Some(alts) = alts {
            self.check_union(alts, def_name, node, ctx);
            if obj.get("type").is_none() {
                return;
            }
        }
        if let Some(all) = obj.get("allOf").and_then(J::as_array) {
            for s in all {
                self.check(s, node, ctx);
            }
        }
        if !self.check_type(obj, node, ctx) {
            return;
        }
        if let Some(c) = obj.get("const") {
            self.check_enum(std::slice::from_ref(c), node, ctx);
        }
        if let Some(values) = obj.get("enum").and_then(J::as_array) {
            self.check_enum(values, node, ctx);
        }
        match &node.value {
            Value::Int(_) | Value::Float(_) => self.check_number(obj, node, ctx),
            Value::Str(s) => self.check_string(obj, s, node, ctx),
            Value::Seq(items) => self.check_array(obj, items, node, ctx),
            Value::Map(_) => self.check_object(obj, node, ctx),
            _ => {}
        }
    }

    fn check_var_ref(&mut self, node: &Node, ctx: &Ctx) {
        let ok = node.as_str().is_some_and(|s| {
            s.len() > 1
                && s.starts_with('$')
                && s[1..].chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                })
        });
        if !ok {
            self.push(
                Diagnostic::error(
                    Code::BadString,
                    Some(node.span),
                    format!("{} is not a valid variable reference", node.describe()),
                )
                .label("expected `$name`")
                .help(format!(
                    "write a variable reference as `$` followed by a name of letters, digits and `_`, e.g. `$d_model` (in {})",
                    ctx.what
                )),
            );
        }
    }

    /// The discriminating property of a union: every alternative is an object that requires
    /// property P with a single constant value.
    fn discriminator(&self, alts: &'s [J]) -> Option<(String, Vec<(String, &'s J)>)> {
        let mut prop: Option<String> = None;
        let mut variants = Vec::new();
        for alt in alts {
            let (alt, _) = self.resolve(alt);
            let props = alt.get("properties")?.as_object()?;
            let required = alt.get("required")?.as_array()?;
            let found = props.iter().find_map(|(k, p)| {
                let (p, _) = self.resolve(p);
                let value = p.get("const").or_else(|| {
                    p.get("enum")
                        .and_then(J::as_array)
                        .filter(|a| a.len() == 1)
                        .map(|a| &a[0])
                })?;
                let value = value.as_str()?;
                required
                    .iter()
                    .any(|r| r.as_str() == Some(k))
                    .then(|| (k.clone(), value.to_string()))
            })?;
            match &prop {
                None => prop = Some(found.0.clone()),
                Some(p) if *p != found.0 => return None,
                _ => {}
            }
            variants.push((found.1, alt));
        }
        Some((prop?, variants))
    }

    fn check_union(&mut self, alts: &'s [J], def_name: Option<&str>, node: &Node, ctx: &Ctx) {
        if let Some((tag, variants)) = self.discriminator(alts) {
            self.check_tagged(&tag, &variants, def_name, node, ctx);
            return;
        }
        // A union of constants (how serde enums with documented variants come out) is one enum.
        let consts: Option<Vec<Vec<J>>> = alts
            .iter()
            .map(|a| {
                let (a, _) = self.resolve(a);
                a.get("const")
                    .cloned()
                    .map(|c| vec![c])
                    .or_else(|| a.get("enum").and_then(J::as_array).cloned())
            })
            .collect();
        if let Some(consts) = consts {
            let values: Vec<J> = consts.into_iter().flatten().collect();
            self.check_enum(&values, node, ctx);
            return;
        }
        // Untagged: accept when any alternative accepts; otherwise report the errors of the
        // alternative that fits the value's type best.
        let mut best: Option<(usize, Vec<Diagnostic>)> = None;
        let mut expected = Vec::new();
        for alt in alts {
            let (resolved, name) = self.resolve(alt);
            let is_var = name == Some(VAR_REF);
            if is_var {
                if node.as_str().is_some_and(|s| s.starts_with('$')) {
                    let mut sub = Validator {
                        root: self.root,
                        diags: Vec::new(),
                    };
                    sub.check_var_ref(node, ctx);
                    if sub.diags.is_empty() {
                        return;
                    }
                    best = Some((0, sub.diags));
                    break;
                }
                continue;
            }
            let types = schema_types(resolved);
            expected.extend(types.iter().cloned());
            let fits = types.is_empty() || types.iter().any(|t| type_matches(t, node));
            let mut sub = Validator {
                root: self.root,
                diags: Vec::new(),
            };
            sub.check(alt, node, ctx);
            if sub.diags.is_empty() {
                return;
            }
            if fits && best.as_ref().is_none_or(|(n, _)| sub.diags.len() < *n) {
                best = Some((sub.diags.len(), sub.diags));
            }
        }
        match best {
            Some((_, diags)) => self.diags.extend(diags),
            None => {
                let var_ok = alts.iter().any(|a| self.resolve(a).1 == Some(VAR_REF));
                self.wrong_type(&expected, var_ok, node, ctx);
            }
        }
    }

    fn check_tagged(
        &mut self,
        tag: &str,
        variants: &[(String, &'s J)],
        def_name: Option<&str>,
        node: &Node,
        ctx: &Ctx,
    ) {
        let noun = def_name.map_or_else(|| "section".to_string(), lower_words);
        let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
        let Value::Map(_) = &node.value else {
            self.push(
                Diagnostic::error(
                    Code::WrongType,
                    Some(node.span),
                    format!(
                        "{} must be a mapping with a `{tag}` key, found {}",
                        ctx.subject(),
                        node.describe()
                    ),
                )
                .label("expected a mapping")
                .help(format!(
                    "write e.g. `{tag}: {}`; the {tag} is one of {}",
                    names[0],
                    one_of(&names)
                )),
            );
            return;
        };
        let Some(entry) = node.entry(tag) else {
            let span =
                ctx.key_span
                    .unwrap_or(Span::new(node.span.src, node.span.start, node.span.start));
            self.push(
                Diagnostic::error(
                    Code::MissingKey,
                    Some(span),
                    format!("missing `{tag}` in {}", ctx_name(ctx, &noun)),
                )
                .label(format!("this {noun} needs a `{tag}`"))
                .help(format!("add `{tag}: ...`, one of {}", one_of(&names))),
            );
            return;
        };
        let given = entry.value.as_str();
        let Some((name, variant)) = given.and_then(|g| variants.iter().find(|(n, _)| n == g))
        else {
            let guess = given.and_then(|g| did_you_mean(g, names.iter().copied()));
            let help = match guess {
                Some(g) => format!(
                    "did you mean `{g}`? The {noun} {tag}s are {}",
                    one_of(&names)
                ),
                None => format!("the {noun} {tag}s are {}", one_of(&names)),
            };
            self.push(
                Diagnostic::error(
                    Code::UnknownVariant,
                    Some(entry.value.span),
                    format!(
                        "unknown {noun} {tag} {}",
                        match given {
                            Some(g) => format!("`{g}`"),
                            None => entry.value.describe(),
                        }
                    ),
                )
                .label(format!("not a known {noun}"))
                .help(help),
            );
            return;
        };
        let sub = Ctx {
            key: ctx.key.clone(),
            key_span: Some(entry.value.span),
            what: format!("`{name}` {noun}"),
        };
        self.check(variant, node, &sub);
    }

    fn wrong_type(&mut self, expected: &[String], var_ok: bool, node: &Node, ctx: &Ctx) {
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
    fn check_type(&mut self, obj: &Map<String, J>, node: &Node, ctx: &Ctx) -> bool {
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

    fn check_enum(&mut self, values: &[J], node: &Node, ctx: &Ctx) {
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

    fn check_number(&mut self, obj: &Map<String, J>, node: &Node, ctx: &Ctx) {
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

    fn check_string(&mut self, obj: &Map<String, J>, s: &str, node: &Node, ctx: &Ctx) {
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

    fn check_array(&mut self, obj: &'s Map<String, J>, items: &[Node], node: &Node, ctx: &Ctx) {
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

    fn check_object(&mut self, obj: &'s Map<String, J>, node: &Node, ctx: &Ctx) {
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

fn ctx_name(ctx: &Ctx, noun: &str) -> String {
    match &ctx.key {
        Some(k) if !k.contains('[') => format!("`{k}`"),
        _ => format!("this {noun}"),
    }
}

fn describe_num(node: &Node) -> String {
    let d = node.describe();
    match &node.via {
        Some(via) => format!("{d} (from `${}`)", via.0),
        None => d,
    }
}

/// `SpectralGate` → "spectral gate".
fn lower_words(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn schema_types(s: &J) -> Vec<String> {
    match s.get("type") {
        Some(J::String(t)) => vec![t.clone()],
        Some(J::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

fn type_matches(t: &str, node: &Node) -> bool {
    let nt = node.type_name();
    t == nt || (t == "number" && nt == "integer")
}

fn type_noun(t: &str) -> &'static str {
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
