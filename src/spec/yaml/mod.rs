//! YAML loading with spans.
//!
//! The text is parsed with `saphyr-parser` (a maintained YAML 1.2 parser that reports the span
//! of every event) into a [`Node`] tree that remembers where each key and value came from, so
//! later stages can point at them. Loading is defensive: non-UTF-8 bytes, syntax errors,
//! duplicate keys, alias bombs, deep nesting and oversized files all become diagnostics.

use crate::diag::{Code, Diagnostic, SourceId, SourceMap, Span};
use saphyr_parser::Parser;

mod builder;
mod scalar;

use builder::Builder;

/// Largest accepted document, in bytes.
pub const MAX_BYTES: usize = 8 << 20;
/// Deepest accepted nesting of mappings and lists.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold after its aliases are expanded.
pub const MAX_NODES: usize = 200_000;

/// A YAML value with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the value is written.
    pub span: Span,
    /// When the value was substituted for a `$name` reference: the variable's name and where its
    /// value is defined.
    pub via: Option<Box<(String, Span)>>,
}

/// A YAML value (core schema).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number (including integers too large for 64 bits).
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    Seq(Vec<Node>),
    /// A mapping with string keys, in document order.
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key is written.
    pub key_span: Span,
    /// The value.
    pub value: Node,
}

impl Node {
    /// A node without a variable origin.
    pub fn new(value: Value, span: Span) -> Self {
        Node {
            value,
            span,
            via: None,
        }
    }

    /// The entries of a mapping, or `None`.
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The string, or `None`.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entry for `key` in a mapping.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    /// The value for `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// Mutable value for `key` in a mapping.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(m) => m.iter_mut().find(|e| e.key == key).map(|e| &mut e.value),
            _ => None,
        }
    }

    /// The JSON type name of the value, as JSON Schema sees it.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(f) if is_integral(*f) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "object",
        }
    }

    /// A short rendering of the value for messages, e.g. `` `4` `` or ``a list``.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".into(),
            Value::Bool(b) => format!("`{b}`"),
            Value::Int(i) => format!("`{i}`"),
            Value::Float(f) => format!("`{}`", fmt_f64(*f)),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                let dots = if s.chars().count() > 40 { "…" } else { "" };
                format!("the string `{short}{dots}`")
            }
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// Convert to JSON. Integral floats become integers (JSON Schema treats `2.0` as an
    /// integer; serde then reads it as one); non-finite floats become `null` (validation rejects
    /// them first).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) if is_integral(*f) && f.abs() < 9.0e15 => J::from(*f as i64),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Number of nodes in the tree.
    pub fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|e| e.value.size()).sum(),
            _ => 0,
        }
    }
}

/// `true` for finite floats without a fractional part.
pub fn is_integral(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0
}

pub use crate::util::fmt_f64;

/// Parse the text of source `src` into one document.
///
/// Returns the root node (a `Null` node for an empty document) or the diagnostics that made
/// loading impossible. Duplicate keys are reported but do not stop loading (the first value
/// wins), so other problems in the file are still found.
pub fn parse(sources: &SourceMap, src: SourceId) -> (Option<Node>, Vec<Diagnostic>) {
    let text = sources.get(src).text.as_str();
    let mut diags = Vec::new();
    if text.len() > MAX_BYTES {
        diags.push(
            Diagnostic::error(
                Code::TooLarge,
                Some(Span::new(src, 0, 0)),
                format!(
                    "the file is {} bytes; kiln reads documents of at most {MAX_BYTES} bytes",
                    text.len()
                ),
            )
            .label("file starts here")
            .help("model specs and recipes are small; is this the right file?"),
        );
        return (None, diags);
    }
    let mut b = Builder::new(sources, src);
    let result = b.run(Parser::new_from_str(text));
    diags.append(&mut b.diags);
    match result {
        Ok(()) => {
            let root = b
                .root
                .unwrap_or_else(|| Node::new(Value::Null, Span::new(src, 0, 0)));
            (Some(root), diags)
        }
        Err(d) => {
            diags.push(*d);
            (None, diags)
        }
    }
}

/// Parse a single YAML value written on the command line (the value of a `--set`).
pub fn parse_value(sources: &SourceMap, src: SourceId, start: usize) -> Result<Node, Diagnostic> {
    let text = &sources.get(src).text[start..];
    if text.trim().is_empty() {
        return Ok(Node::new(
            Value::Str(String::new()),
            Span::new(src, start, start),
        ));
    }
    let mut b = Builder::new(sources, src);
    // The parser counts lines and columns from `start`: where that is in the whole source.
    let before = &sources.get(src).text[..start];
    let line = before.matches('\n').count();
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count();
    b.origin = (line, col);
    b.run(Parser::new_from_str(text)).map_err(|d| *d)?;
    if let Some(d) = b.diags.pop() {
        return Err(d);
    }
    Ok(b.root
        .unwrap_or_else(|| Node::new(Value::Null, Span::new(src, start, start))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Origin;

    fn load(text: &str) -> (Option<Node>, Vec<Diagnostic>) {
        let mut sm = SourceMap::new();
        let id = sm.add(Origin::File("t.yaml".into()), text.to_string());
        parse(&sm, id)
    }

    #[test]
    fn resolves_core_schema_scalars() {
        let (n, d) = load("a: 1\nb: 2.5\nc: 3e-4\nd: true\ne: ~\nf: '1'\ng: x\nh: 0x10\ni: 99999999999999999999999\n");
        assert!(d.is_empty());
        let n = n.unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        assert_eq!(n.get("b").unwrap().value, Value::Float(2.5));
        assert_eq!(n.get("c").unwrap().value, Value::Float(3e-4));
        assert_eq!(n.get("d").unwrap().value, Value::Bool(true));
        assert_eq!(n.get("e").unwrap().value, Value::Null);
        assert_eq!(n.get("f").unwrap().value, Value::Str("1".into()));
        assert_eq!(n.get("g").unwrap().value, Value::Str("x".into()));
        assert_eq!(n.get("h").unwrap().value, Value::Int(16));
        assert_eq!(n.get("i").unwrap().value, Value::Float(1e23));
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let text = "train:\n  lr: 0.5\n";
        let (n, _) = load(text);
        let n = n.unwrap();
        let train = n.get("train").unwrap();
        let e = train.entry("lr").unwrap();
        assert_eq!(&text[e.key_span.start..e.key_span.end], "lr");
        assert_eq!(&text[e.value.span.start..e.value.span.end], "0.5");
    }

    #[test]
    fn duplicate_keys_are_reported_and_first_wins() {
        let (n, d) = load("a: 1\na: 2\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].code, Code::DuplicateKey);
        assert_eq!(n.unwrap().get("a").unwrap().value, Value::Int(1));
    }

    #[test]
    fn alias_bomb_is_stopped() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (n, d) = load(&text);
        assert!(n.is_none());
        assert_eq!(d.last().unwrap().code, Code::TooLarge);
    }

    #[test]
    fn deep_nesting_is_stopped() {
        let text = "[".repeat(10_000);
        let (n, d) = load(&text);
        assert!(n.is_none());
        assert!(matches!(d[0].code, Code::TooLarge | Code::YamlSyntax));
    }

    #[test]
    fn tabs_get_a_hint() {
        let (n, d) = load("a:\n\tb: 1\n");
        assert!(n.is_none());
        assert_eq!(d[0].code, Code::YamlSyntax);
        assert!(d[0].help.as_deref().unwrap().contains("tab"));
    }
}
