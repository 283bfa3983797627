//! Rendering diagnostics as rustc-style text or as JSON.

use super::{Diagnostic, Severity, SourceMap, Span};
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde_json::{json, Value};

/// Render diagnostics as text, rustc style: `error[K101]: ...`, `--> file:line:col`, the source
/// line with the offending key or value underlined and labelled, and a `help:` line.
pub fn render_text(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for d in diags {
        let level = match d.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let mut title = level.primary_title(d.message.as_str()).id(d.code.as_str());
        let mut group_elems: Vec<annotate_snippets::Element> = Vec::new();
        if let Some(span) = d.span {
            let src = sources.get(span.src);
            let mut snippet = Snippet::source(src.text.as_str())
                .path(src.name())
                .annotation(AnnotationKind::Primary.span(clamp(span, &src.text)).label(
                    if d.label.is_empty() {
                        None
                    } else {
                        Some(d.label.as_str())
                    },
                ));
            for (nspan, text) in &d.notes {
                if nspan.src == span.src {
                    snippet = snippet.annotation(
                        AnnotationKind::Context
                            .span(clamp(*nspan, &src.text))
                            .label(text.as_str()),
                    );
                }
            }
            group_elems.push(snippet.into());
            for (nspan, text) in &d.notes {
                if nspan.src != span.src {
                    let nsrc = sources.get(nspan.src);
                    group_elems.push(
                        Snippet::source(nsrc.text.as_str())
                            .path(nsrc.name())
                            .annotation(
                                AnnotationKind::Context
                                    .span(clamp(*nspan, &nsrc.text))
                                    .label(text.as_str()),
                            )
                            .into(),
                    );
                }
            }
        }
        if let Some(help) = &d.help {
            group_elems.push(Level::HELP.message(help.as_str()).into());
        }
        title = title.id(d.code.as_str());
        let group: Group = title.elements(group_elems);
        out.push_str(&renderer.render(&[group]));
        out.push_str("\n\n");
    }
    out
}

fn clamp(span: Span, text: &str) -> std::ops::Range<usize> {
    let start = floor_char(text, span.start.min(text.len()));
    let end = floor_char(text, span.end.min(text.len())).max(start);
    start..end
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One JSON object per diagnostic: code, severity, message, file, line, column, end_line,
/// end_column (1-based, columns in characters), label, help and notes.
pub fn diagnostic_json(d: &Diagnostic, sources: &SourceMap) -> Value {
    let loc = |span: Span| {
        let src = sources.get(span.src);
        let (line, column) = src.line_col(span.start);
        let (end_line, end_column) = src.line_col(span.end);
        (src.name(), line, column, end_line, end_column)
    };
    let mut obj = json!({
        "code": d.code.as_str(),
        "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
        "message": d.message,
    });
    if let Some(span) = d.span {
        let (file, line, column, end_line, end_column) = loc(span);
        obj["file"] = json!(file);
        obj["line"] = json!(line);
        obj["column"] = json!(column);
        obj["end_line"] = json!(end_line);
        obj["end_column"] = json!(end_column);
    }
    obj["label"] = json!(d.label);
    obj["help"] = json!(d.help);
    obj["notes"] = Value::Array(
        d.notes
            .iter()
            .map(|(span, text)| {
                let (file, line, column, _, _) = loc(*span);
                json!({"file": file, "line": line, "column": column, "label": text})
            })
            .collect(),
    );
    obj
}

/// All diagnostics as a JSON array.
pub fn render_json(diags: &[Diagnostic], sources: &SourceMap) -> Value {
    Value::Array(diags.iter().map(|d| diagnostic_json(d, sources)).collect())
}
