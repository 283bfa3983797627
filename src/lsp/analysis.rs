//! Checking a buffer: the `kiln validate` pipeline ([`crate::compile::check`]) run on the
//! editor's text (and the unsaved text of the other open files), and its diagnostics as the
//! protocol's.

use super::text::{path_uri, Lines};
use crate::diag::{Diagnostic, Origin, Severity, SourceId, SourceMap, Span};
use crate::ir::Graph;
use crate::spec::yaml::{self, Node};
use crate::spec::Document;
use lsp_types as lsp;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The result of checking one document.
pub struct Analysis {
    /// The document's path.
    pub path: PathBuf,
    /// Every source read: the document first, then its model file.
    pub sources: SourceMap,
    /// What `kiln validate` reports (empty when the document is valid).
    pub diags: Vec<Diagnostic>,
    /// The validated document and its graph, when it is valid.
    pub checked: Option<(Document, Graph)>,
}

impl Analysis {
    /// Check the document at `path`; `overlay` holds the text of every open buffer (this
    /// document's included), which stands in for the files on disk.
    pub fn run(path: &Path, overlay: HashMap<PathBuf, String>) -> Analysis {
        let mut sources = SourceMap::with_overlay(overlay);
        let (diags, checked) = match crate::compile::check(path, &[], &mut sources) {
            Ok(c) => (Vec::new(), Some(c)),
            Err(e) => (e.diags, None),
        };
        Analysis {
            path: path.to_path_buf(),
            sources,
            diags,
            checked,
        }
    }

    /// The document's own source (absent only when it could not be read).
    pub fn own(&self) -> Option<SourceId> {
        self.sources.find_file(&self.path)
    }

    /// The document's text.
    pub fn text(&self) -> &str {
        self.own()
            .map_or("", |id| self.sources.get(id).text.as_str())
    }

    /// The document's YAML tree as written (before composition and substitution), when it
    /// parses.
    pub fn raw_tree(&self) -> Option<Node> {
        yaml::parse(&self.sources, self.own()?).0
    }

    /// The other files this document read (its model file).
    pub fn deps(&self) -> Vec<PathBuf> {
        self.sources
            .files()
            .filter(|p| *p != self.path)
            .map(Path::to_path_buf)
            .collect()
    }

    /// The diagnostics as the protocol's, each with the file it belongs to. One that points
    /// into the recipe's model file is published on that file and, at the recipe's `model:`
    /// line, on the recipe.
    pub fn published(&self) -> Vec<(PathBuf, lsp::Diagnostic)> {
        let model_span = self.raw_tree().and_then(|t| t.get("model").map(|m| m.span));
        let mut out = Vec::new();
        for d in &self.diags {
            let file = d.span.and_then(|s| self.file_of(s));
            match (d.span, file) {
                (Some(span), Some(file)) if file == self.path => {
                    out.push((file, self.convert(d, span, "")));
                }
                (Some(span), Some(file)) => {
                    let (line, col) = self.sources.get(span.src).line_col(span.start);
                    let mut here = self.convert(d, span, "");
                    here.range = model_span.map_or_else(lsp::Range::default, |s| self.range(s));
                    here.message = format!("{}:{line}:{col}: {}", file.display(), here.message);
                    here.related_information
                        .get_or_insert_with(Vec::new)
                        .insert(0, self.related(span, "the problem is here"));
                    out.push((self.path.clone(), here));
                    let via = format!(" (with recipe `{}`)", self.path.display());
                    out.push((file, self.convert(d, span, &via)));
                }
                _ => {
                    let mut ld = self.convert(d, Span::new(SourceId(0), 0, 0), "");
                    ld.range = lsp::Range::default();
                    out.push((self.path.clone(), ld));
                }
            }
        }
        out
    }

    fn file_of(&self, span: Span) -> Option<PathBuf> {
        match &self.sources.get(span.src).origin {
            Origin::File(p) => Some(p.clone()),
            Origin::Override(_) => None,
        }
    }

    fn range(&self, span: Span) -> lsp::Range {
        let text = &self.sources.get(span.src).text;
        Lines::new(text).range(span.start, span.end)
    }

    fn related(&self, span: Span, label: &str) -> lsp::DiagnosticRelatedInformation {
        let uri = self
            .file_of(span)
            .and_then(|p| path_uri(&p))
            .unwrap_or_else(|| "file:///".parse().expect("a valid URI"));
        lsp::DiagnosticRelatedInformation {
            location: lsp::Location::new(uri, self.range(span)),
            message: label.to_string(),
        }
    }

    /// The protocol's diagnostic: code, source `kiln`, the message with its `help:` line,
    /// the label and notes as related locations, and `kiln validate --format json`'s object
    /// for it as `data`.
    fn convert(&self, d: &Diagnostic, span: Span, suffix: &str) -> lsp::Diagnostic {
        let mut message = format!("{}{suffix}", d.message);
        if let Some(help) = &d.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let mut related = Vec::new();
        if !d.label.is_empty() {
            related.push(self.related(span, &d.label));
        }
        related.extend(d.notes.iter().map(|(s, t)| self.related(*s, t)));
        lsp::Diagnostic {
            range: self.range(span),
            severity: Some(match d.severity {
                Severity::Error => lsp::DiagnosticSeverity::ERROR,
                Severity::Warning => lsp::DiagnosticSeverity::WARNING,
            }),
            code: Some(lsp::NumberOrString::String(d.code.as_str().to_string())),
            source: Some("kiln".to_string()),
            message,
            related_information: (!related.is_empty()).then_some(related),
            data: Some(crate::diag::diagnostic_json(d, &self.sources)),
            ..Default::default()
        }
    }
}
