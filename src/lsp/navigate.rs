//! Finding things in a document's tree: the nodes under the cursor, `$variables` and their
//! definitions, the recipe's model file, and the layer tree as document symbols.

use super::text::{path_uri, Lines};
use super::Analysis;
use crate::diag::Span;
use crate::spec::yaml::{Node, Value};
use lsp_types as lsp;
use std::path::Path;

/// Keys whose value is a list of layers (or, for `bands` and `branches`, of layer lists).
pub(super) const LAYER_LISTS: &[&str] = &["layers", "encoder", "body", "bands", "branches"];

/// One step from the root to the cursor: the mapping key it went through (if any) and the
/// node reached.
pub(super) struct Step<'a> {
    pub key: Option<(&'a str, Span)>,
    pub node: &'a Node,
}

fn contains(span: Span, at: usize) -> bool {
    span.start <= at && at <= span.end
}

/// The nodes from the root down to the innermost one at byte `at` (a key counts as its
/// value's place).
pub(super) fn chain(root: &Node, at: usize) -> Vec<Step<'_>> {
    let mut out = vec![Step {
        key: None,
        node: root,
    }];
    let mut node = root;
    loop {
        let next = match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|e| contains(e.key_span, at) || contains(e.value.span, at))
                .map(|e| Step {
                    key: Some((e.key.as_str(), e.key_span)),
                    node: &e.value,
                }),
            Value::Seq(items) => items
                .iter()
                .find(|n| contains(n.span, at))
                .map(|n| Step { key: None, node: n }),
            _ => None,
        };
        match next {
            Some(s) => {
                node = s.node;
                out.push(s);
            }
            None => return out,
        }
    }
}

/// The model's mapping in a document's tree: the document itself, or a recipe's inline
/// `model`.
pub(super) fn model_root(root: &Node) -> Option<&Node> {
    match root.get("kind").and_then(Node::as_str) {
        Some("model") => Some(root),
        Some("recipe") => root.get("model").filter(|m| m.as_map().is_some()),
        _ => None,
    }
}

/// The `$name` reference under the cursor, if any.
pub(super) fn var_at<'a>(chain: &[Step<'a>]) -> Option<(&'a str, Span)> {
    let last = chain.last()?;
    let s = last.node.as_str()?;
    let name = s.strip_prefix('$')?;
    (!name.is_empty() && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()))
        .then_some((name, last.node.span))
}

/// Where variable `name` is defined: its key under `vars`, and its value.
pub(super) fn var_def<'a>(root: &'a Node, name: &str) -> Option<(Span, &'a Node)> {
    let e = model_root(root)?.get("vars")?.entry(name)?;
    Some((e.key_span, &e.value))
}

/// Go to definition: a `$variable`'s definition, or the model file a recipe names.
pub(super) fn definition(
    a: &Analysis,
    uri: &lsp::Uri,
    pos: lsp::Position,
) -> Option<lsp::GotoDefinitionResponse> {
    let root = a.raw_tree()?;
    let lines = Lines::new(a.text());
    let at = lines.offset(pos);
    let chain = chain(&root, at);
    if let Some((name, _)) = var_at(&chain) {
        let (span, _) = var_def(&root, name)?;
        return Some(lsp::GotoDefinitionResponse::Scalar(lsp::Location::new(
            uri.clone(),
            lines.range(span.start, span.end),
        )));
    }
    let is_recipe = root.get("kind").and_then(Node::as_str) == Some("recipe");
    match chain.get(1) {
        Some(Step {
            key: Some(("model", _)),
            node,
        }) if is_recipe => {
            let rel = node.as_str()?;
            let dir = a.path.parent().unwrap_or(Path::new(""));
            let target = path_uri(&crate::util::normalize_path(&dir.join(rel)))?;
            Some(lsp::GotoDefinitionResponse::Scalar(lsp::Location::new(
                target,
                lsp::Range::default(),
            )))
        }
        _ => None,
    }
}

/// The document's outline: its top-level keys, with the model's layer tree under
/// `layers` and `encoder` (and under a recipe's inline `model`).
pub(super) fn symbols(a: &Analysis) -> lsp::DocumentSymbolResponse {
    let Some(root) = a.raw_tree() else {
        return lsp::DocumentSymbolResponse::Nested(Vec::new());
    };
    let lines = Lines::new(a.text());
    lsp::DocumentSymbolResponse::Nested(entries(&root, &lines, ""))
}

fn entries(map: &Node, lines: &Lines, path: &str) -> Vec<lsp::DocumentSymbol> {
    let Some(list) = map.as_map() else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let children = if LAYER_LISTS.contains(&e.key.as_str()) {
                layer_list(&e.value, lines, &join(path, &e.key))
            } else if e.key == "model" && path.is_empty() {
                entries(&e.value, lines, "model")
            } else {
                Vec::new()
            };
            let detail = match &e.value.value {
                Value::Map(_) | Value::Seq(_) => None,
                _ => lines
                    .text()
                    .get(e.value.span.start..e.value.span.end)
                    .filter(|t| !t.contains('\n'))
                    .map(short),
            };
            #[allow(deprecated)] // `deprecated` is a required field of the struct
            lsp::DocumentSymbol {
                name: e.key.clone(),
                detail,
                kind: if children.is_empty() {
                    lsp::SymbolKind::PROPERTY
                } else {
                    lsp::SymbolKind::NAMESPACE
                },
                tags: None,
                deprecated: None,
                range: lines.range(e.key_span.start, e.value.span.end.max(e.key_span.end)),
                selection_range: lines.range(e.key_span.start, e.key_span.end),
                children: (!children.is_empty()).then_some(children),
            }
        })
        .collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Symbols of the layers of a list (a list of lists for `bands` and `branches`).
fn layer_list(list: &Node, lines: &Lines, path: &str) -> Vec<lsp::DocumentSymbol> {
    let Value::Seq(items) = &list.value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        match &item.value {
            Value::Seq(_) => out.extend(layer_list(item, lines, &here)),
            Value::Map(entries) => {
                let ty = item.get("type");
                let children: Vec<_> = entries
                    .iter()
                    .filter(|e| LAYER_LISTS.contains(&e.key.as_str()))
                    .flat_map(|e| layer_list(&e.value, lines, &format!("{here}.{}", e.key)))
                    .collect();
                let sel = ty.map_or(item.span, |t| t.span);
                #[allow(deprecated)] // `deprecated` is a required field of the struct
                out.push(lsp::DocumentSymbol {
                    name: ty.and_then(Node::as_str).unwrap_or("layer").to_string(),
                    detail: Some(here),
                    kind: lsp::SymbolKind::CLASS,
                    tags: None,
                    deprecated: None,
                    range: lines.range(item.span.start, item.span.end),
                    selection_range: lines.range(sel.start, sel.end),
                    children: (!children.is_empty()).then_some(children),
                });
            }
            _ => {}
        }
    }
    out
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}
