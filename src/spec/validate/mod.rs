//! Validation of a [`Node`] tree against a JSON Schema, with diagnostics a person can act on.
//!
//! The committed schemas are the single source of truth; this validator walks them (the
//! draft-07 subset that `kiln schema` emits) and reports *every* problem, each at the key or
//! value it concerns. Unions tagged by a `type` (or `kind`) key are read tag-first: the user
//! sees one precise error for the variant they chose, never a flood of `oneOf` alternatives.

use super::schema::VAR_REF;
use super::yaml::{Node, Value};
use crate::diag::{did_you_mean, one_of, Code, Diagnostic, Span};
use serde_json::Value as J;

mod values;

use values::{ctx_name, lower_words, schema_types, type_matches};

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
}
