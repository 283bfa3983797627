//! YAML loading with spans.
//!
//! The text is parsed with `saphyr-parser` (a maintained YAML 1.2 parser that reports the span
//! of every event) into a [`Node`] tree that remembers where each key and value came from, so
//! later stages can point at them. Loading is defensive: non-UTF-8 bytes, syntax errors,
//! duplicate keys, alias bombs, deep nesting and oversized files all become diagnostics.

use crate::diag::{Code, Diagnostic, SourceId, SourceMap, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use std::collections::HashMap;

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

enum Frame {
    Seq {
        items: Vec<Node>,
        start: usize,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        start: usize,
        anchor: usize,
        key: Option<(String, Span)>,
    },
}

struct Builder<'a> {
    sources: &'a SourceMap,
    src: SourceId,
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    root: Option<Node>,
    nodes: usize,
    docs: usize,
    diags: Vec<Diagnostic>,
    /// Where the parsed text starts in the source: lines before it, and columns before it on
    /// its first line (a `--set` value starts inside its override).
    origin: (usize, usize),
}

type Fatal = Box<Diagnostic>;

impl<'a> Builder<'a> {
    fn new(sources: &'a SourceMap, src: SourceId) -> Self {
        Builder {
            sources,
            src,
            anchors: HashMap::new(),
            stack: Vec::new(),
            root: None,
            nodes: 0,
            docs: 0,
            diags: Vec::new(),
            origin: (0, 0),
        }
    }

    fn offset(&self, m: &saphyr_parser::Marker) -> usize {
        let (lines, cols) = self.origin;
        let col = if m.line() <= 1 {
            cols + m.col()
        } else {
            m.col()
        };
        self.sources.get(self.src).offset(lines + m.line(), col)
    }

    fn span(&self, s: &YSpan) -> Span {
        Span::new(self.src, self.offset(&s.start), self.offset(&s.end))
    }

    fn run<'i>(
        &mut self,
        mut parser: Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(), Fatal> {
        loop {
            let (event, yspan) = match parser.next_event() {
                None => return Ok(()),
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(Box::new(self.syntax_error(&e))),
            };
            let span = self.span(&yspan);
            match event {
                Event::StreamEnd => return Ok(()),
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::DocumentStart(_) => {
                    self.docs += 1;
                    if self.docs > 1 {
                        return Err(Box::new(
                            Diagnostic::error(
                                Code::MultipleDocuments,
                                Some(span),
                                "the file holds more than one YAML document",
                            )
                            .label("a second document starts here")
                            .help("put each model or recipe in its own file"),
                        ));
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    let value = self.scalar(&text, style, tag.as_deref(), span)?;
                    self.push(Node::new(value, span), anchor)?;
                }
                Event::Alias(id) => {
                    let Some(node) = self.anchors.get(&id) else {
                        return Err(Box::new(
                            Diagnostic::error(Code::YamlSyntax, Some(span), "unknown alias")
                                .label("no anchor with this name was defined before"),
                        ));
                    };
                    self.nodes += node.size();
                    self.check_size(span)?;
                    let mut node = node.clone();
                    node.span = span;
                    self.push(node, 0)?;
                }
                Event::SequenceStart(anchor, tag) => {
                    self.check_tag(tag.as_deref(), span)?;
                    self.open(
                        Frame::Seq {
                            items: Vec::new(),
                            start: span.start,
                            anchor,
                        },
                        span,
                    )?;
                }
                Event::MappingStart(anchor, tag) => {
                    self.check_tag(tag.as_deref(), span)?;
                    self.open(
                        Frame::Map {
                            entries: Vec::new(),
                            start: span.start,
                            anchor,
                            key: None,
                        },
                        span,
                    )?;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let frame = self.stack.pop().expect("parser balances collections");
                    let (value, start, anchor) = match frame {
                        Frame::Seq {
                            items,
                            start,
                            anchor,
                        } => (Value::Seq(items), start, anchor),
                        Frame::Map {
                            entries,
                            start,
                            anchor,
                            ..
                        } => (Value::Map(entries), start, anchor),
                    };
                    let end = match &value {
                        Value::Seq(items) => items.last().map(|n| n.span.end),
                        Value::Map(entries) => entries.last().map(|e| e.value.span.end),
                        _ => None,
                    }
                    .unwrap_or(span.end)
                    .max(span.start.min(span.end))
                    .max(start);
                    self.push(Node::new(value, Span::new(self.src, start, end)), anchor)?;
                }
            }
        }
    }

    fn check_size(&self, span: Span) -> Result<(), Fatal> {
        if self.nodes > MAX_NODES {
            return Err(Box::new(
                Diagnostic::error(
                    Code::TooLarge,
                    Some(span),
                    format!("the document expands to more than {MAX_NODES} values"),
                )
                .label("expansion passes the limit here")
                .help("aliases (`*name`) copy what their anchor holds; a chain of them can grow without bound (an alias bomb)"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, span: Span) -> Result<(), Fatal> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Box::new(
                Diagnostic::error(
                    Code::TooLarge,
                    Some(span),
                    format!("the document nests deeper than {MAX_DEPTH} levels"),
                )
                .label("too deep")
                .help("model specs never need this much nesting; use `repeat` for repeated blocks"),
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Fatal> {
        self.nodes += 1;
        self.check_size(node.span)?;
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let k = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => fmt_f64(f),
                        Value::Null => "null".into(),
                        Value::Seq(_) | Value::Map(_) => {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::BadKey,
                                    Some(node.span),
                                    "mapping keys must be plain strings",
                                )
                                .label("a list or mapping used as a key")
                                .help("write keys as plain words, e.g. `heads: 4`"),
                            );
                            String::new()
                        }
                    };
                    *key = Some((k, node.span));
                }
                Some((k, key_span)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == k) {
                        let first_span = first.key_span;
                        self.diags.push(
                            Diagnostic::error(
                                Code::DuplicateKey,
                                Some(key_span),
                                format!("duplicate key `{k}`"),
                            )
                            .label("this key is already set above")
                            .note(first_span, "first set here")
                            .help("remove one of the two; YAML mappings cannot repeat a key"),
                        );
                    } else if !k.is_empty() || !matches!(node.value, Value::Null) {
                        entries.push(Entry {
                            key: k,
                            key_span,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }

    fn check_tag(&self, tag: Option<&saphyr_parser::Tag>, span: Span) -> Result<(), Fatal> {
        match tag {
            None => Ok(()),
            Some(t) if t.is_yaml_core_schema() && matches!(t.suffix.as_str(), "map" | "seq") => {
                Ok(())
            }
            Some(t) => Err(Box::new(unsupported_tag(t, span))),
        }
    }

    fn scalar(
        &self,
        text: &str,
        style: ScalarStyle,
        tag: Option<&saphyr_parser::Tag>,
        span: Span,
    ) -> Result<Value, Fatal> {
        if let Some(t) = tag {
            if !t.is_yaml_core_schema() {
                return Err(Box::new(unsupported_tag(t, span)));
            }
            let v = match t.suffix.as_str() {
                "str" => Some(Value::Str(text.to_string())),
                "null" => Some(Value::Null),
                "bool" => resolve_plain(text).filter(|v| matches!(v, Value::Bool(_))),
                "int" => {
                    resolve_plain(text).filter(|v| matches!(v, Value::Int(_) | Value::Float(_)))
                }
                "float" => resolve_plain(text)
                    .map(|v| match v {
                        Value::Int(i) => Value::Float(i as f64),
                        v => v,
                    })
                    .filter(|v| matches!(v, Value::Float(_))),
                _ => None,
            };
            return v.ok_or_else(|| {
                Box::new(
                    Diagnostic::error(
                        Code::YamlSyntax,
                        Some(span),
                        format!("`{text}` is not a valid `!!{}`", t.suffix),
                    )
                    .label("value does not match its tag"),
                )
            });
        }
        Ok(match style {
            ScalarStyle::Plain => {
                resolve_plain(text).unwrap_or_else(|| Value::Str(text.to_string()))
            }
            _ => Value::Str(text.to_string()),
        })
    }

    fn syntax_error(&self, e: &saphyr_parser::ScanError) -> Diagnostic {
        let start = self.offset(e.marker());
        let text = &self.sources.get(self.src).text;
        let end = text[start.min(text.len())..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8());
        let info = e.info();
        let line_text = text[..start.min(text.len())]
            .rsplit('\n')
            .next()
            .unwrap_or("");
        let help = if info.contains("tab")
            || line_text.contains('\t')
            || text[start.min(text.len())..].starts_with('\t')
        {
            "YAML does not allow tab characters for indentation; indent with spaces"
        } else if info.contains("mapping values are not allowed") {
            "check the indentation of this line against the lines above it, or quote a value that contains `: `"
        } else if info.contains("did not find expected key") || info.contains("block") {
            "check the indentation: keys of one mapping must start in the same column"
        } else if info.contains("flow") {
            "a `[` or `{` is not closed here, or its items are not separated by commas"
        } else if info.contains("did not find expected")
            || info.contains("unclosed")
            || info.contains("end of stream")
        {
            "a quote, bracket or brace is not closed"
        } else {
            "the YAML syntax breaks at this position; compare it with the lines above"
        };
        Diagnostic::error(
            Code::YamlSyntax,
            Some(Span::new(self.src, start, end)),
            format!("invalid YAML: {info}"),
        )
        .label("here")
        .help(help)
    }
}

fn unsupported_tag(t: &saphyr_parser::Tag, span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::YamlSyntax,
        Some(span),
        format!("unsupported YAML tag `{}{}`", t.handle, t.suffix),
    )
    .label("custom tags are not part of kiln's format")
    .help("remove the tag; kiln reads plain YAML values")
}

/// Resolve a plain scalar with the YAML 1.2 core schema. `None` means "a string".
fn resolve_plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(Value::Float(f64::INFINITY))
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(Value::Float(f64::NAN)),
        _ => {}
    }
    let bytes = text.as_bytes();
    let (sign, digits) = match bytes[0] {
        b'+' | b'-' => (&text[..1], &text[1..]),
        _ => ("", text),
    };
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(
                i64::from_str_radix(hex, 16)
                    .map_or_else(|_| Value::Float(f64::INFINITY), Value::Int),
            );
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Some(
                i64::from_str_radix(oct, 8)
                    .map_or_else(|_| Value::Float(f64::INFINITY), Value::Int),
            );
        }
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(
                format!("{sign}{digits}")
                    .parse::<f64>()
                    .unwrap_or(f64::INFINITY),
            ),
        });
    }
    if is_float_syntax(digits) {
        return text.parse::<f64>().ok().map(Value::Float);
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` without the sign.
fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
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
