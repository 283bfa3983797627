//! The event-to-tree builder: anchors and aliases, limits, duplicate keys, spans.

use super::scalar::{resolve_plain, unsupported_tag};
use super::*;
use crate::diag::{Code, Diagnostic, SourceId, SourceMap, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use std::collections::HashMap;

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

pub(super) struct Builder<'a> {
    sources: &'a SourceMap,
    src: SourceId,
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    pub(super) root: Option<Node>,
    nodes: usize,
    docs: usize,
    pub(super) diags: Vec<Diagnostic>,
    /// Where the parsed text starts in the source: lines before it, and columns before it on
    /// its first line (a `--set` value starts inside its override).
    pub(super) origin: (usize, usize),
}

type Fatal = Box<Diagnostic>;

impl<'a> Builder<'a> {
    pub(super) fn new(sources: &'a SourceMap, src: SourceId) -> Self {
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

    pub(super) fn run<'i>(
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
