//! `--set key.path=value` overrides: parsed as YAML values with spans in their own source,
//! applied to the document tree before validation.

use super::yaml::{self, Entry, Node, Value};
use crate::diag::{Code, Diagnostic, Origin, SourceMap, Span};

/// One parsed `--set` argument.
pub(super) struct Override {
    pub(super) path: Vec<(String, Span)>,
    pub(super) value: Node,
    pub(super) whole: Span,
}

pub(super) fn parse_overrides(
    overrides: &[String],
    sources: &mut SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let mut out = Vec::new();
    for (i, text) in overrides.iter().enumerate() {
        let id = sources.add(Origin::Override(i + 1), text.clone());
        let whole = Span::new(id, 0, text.len());
        let Some(eq) = text.find('=') else {
            diags.push(
                Diagnostic::error(
                    Code::BadOverride,
                    Some(whole),
                    format!("`--set {text}` has no `=`"),
                )
                .label("expected KEY.PATH=VALUE")
                .help("write e.g. `--set train.optimizer.lr=3e-4`"),
            );
            continue;
        };
        let mut path = Vec::new();
        let mut pos = 0;
        let mut ok = true;
        for seg in text[..eq].split('.') {
            let span = Span::new(id, pos, pos + seg.len());
            let seg_trim = seg.trim();
            if seg_trim.is_empty() {
                diags.push(
                    Diagnostic::error(Code::BadOverride, Some(span), "empty key in `--set` path")
                        .label("empty")
                        .help("separate keys with single dots, e.g. `train.batch_size=64`"),
                );
                ok = false;
            }
            path.push((seg_trim.to_string(), span));
            pos += seg.len() + 1;
        }
        if !ok {
            continue;
        }
        match yaml::parse_value(sources, id, eq + 1) {
            Ok(value) => out.push(Override { path, value, whole }),
            Err(d) => diags.push(d),
        }
    }
    out
}

pub(super) fn apply_override(root: &mut Node, o: Override, diags: &mut Vec<Diagnostic>) {
    let mut cur = root;
    let n = o.path.len();
    for (i, (key, span)) in o.path.iter().enumerate() {
        let last = i + 1 == n;
        let shown: Vec<&str> = o.path[..i].iter().map(|(k, _)| k.as_str()).collect();
        let parent = if shown.is_empty() {
            "the document".to_string()
        } else {
            format!("`{}`", shown.join("."))
        };
        let what = cur.describe();
        match &mut cur.value {
            Value::Map(entries) => {
                let idx = match entries.iter().position(|e| &e.key == key) {
                    Some(idx) => idx,
                    None => {
                        entries.push(Entry {
                            key: key.clone(),
                            key_span: *span,
                            value: Node::new(Value::Map(Vec::new()), *span),
                        });
                        entries.len() - 1
                    }
                };
                if last {
                    entries[idx].key_span = *span;
                    entries[idx].value = o.value;
                    return;
                }
                cur = &mut entries[idx].value;
            }
            Value::Seq(items) => {
                let len = items.len();
                let Some(idx) = key.parse::<usize>().ok().filter(|&i| i < len) else {
                    diags.push(
                        Diagnostic::error(Code::BadOverride, Some(*span), format!("{parent} is a list of {len} items; `{key}` is not an index into it"))
                            .label("not a valid index")
                            .help(format!("use a number from 0 to {}", len.saturating_sub(1))),
                    );
                    return;
                };
                if last {
                    items[idx] = o.value;
                    return;
                }
                cur = &mut items[idx];
            }
            _ => {
                diags.push(
                    Diagnostic::error(
                        Code::BadOverride,
                        Some(*span),
                        format!("cannot set `{key}` inside {parent}: it is {what}, not a mapping"),
                    )
                    .label("cannot go into a plain value")
                    .note(o.whole, "in this override")
                    .help(format!(
                        "set {parent} itself (`--set PATH=VALUE` with its path), or leave out `.{key}`"
                    )),
                );
                return;
            }
        }
    }
}
