//! Hover: a layer's documentation, output shape, parameters and mixing; a `$variable`'s value
//! and definition; the document's totals on its `kind` or `name`.

use super::navigate::{chain, var_at, var_def, Step, LAYER_LISTS};
use super::text::Lines;
use super::Analysis;
use crate::diag::Span;
use crate::ir::{Graph, Mixing, Op};
use crate::spec::yaml::Node;
use crate::spec::Document;
use lsp_types as lsp;
use serde_json::Value as Json;

/// The hover at `pos`, if there is something to say.
pub(super) fn hover(a: &Analysis, pos: lsp::Position) -> Option<lsp::Hover> {
    let root = a.raw_tree()?;
    let lines = Lines::new(a.text());
    let at = lines.offset(pos);
    let chain = chain(&root, at);
    let (text, span) = if let Some((name, span)) = var_at(&chain) {
        (variable(a, &root, name, &lines), span)
    } else if let Some((_, span)) = top_key(&chain).filter(|(k, _)| *k == "kind" || *k == "name") {
        (document(a)?, span)
    } else {
        let (layer, key) = layer_at(&chain)?;
        let span = key.map_or_else(|| layer.get("type").map_or(layer.span, |t| t.span), |k| k.1);
        (describe_layer(a, layer, key.map(|k| k.0)), span)
    };
    Some(lsp::Hover {
        contents: lsp::HoverContents::Markup(lsp::MarkupContent {
            kind: lsp::MarkupKind::Markdown,
            value: text,
        }),
        range: Some(lines.range(span.start, span.end)),
    })
}

/// The top-level key the cursor is in (on the key or its value), with the key's span.
fn top_key<'a>(chain: &[Step<'a>]) -> Option<(&'a str, Span)> {
    let s = chain.get(1)?;
    let (key, key_span) = s.key?;
    (chain.len() == 2).then_some((key, key_span))
}

/// The innermost layer around the cursor (a mapping in a layer list), and the key of it the
/// cursor is on, if any.
fn layer_at<'a>(chain: &[Step<'a>]) -> Option<(&'a Node, Option<(&'a str, Span)>)> {
    for i in (1..chain.len()).rev() {
        let node = chain[i].node;
        if node.as_map().is_none() || node.get("type").is_none() {
            continue;
        }
        // The nearest key above it (through lists) must hold layers.
        let list_key = chain[..i].iter().rev().find_map(|s| s.key.map(|k| k.0));
        if list_key.is_some_and(|k| LAYER_LISTS.contains(&k)) && chain[i].key.is_none() {
            let key = chain.get(i + 1).and_then(|s| s.key);
            return Some((node, key));
        }
    }
    None
}

fn variable(a: &Analysis, root: &Node, name: &str, lines: &Lines) -> String {
    match var_def(root, name) {
        Some((def, value)) => {
            let v = a
                .text()
                .get(value.span.start..value.span.end)
                .unwrap_or("")
                .trim();
            let line = lines.position(def.start).line + 1;
            format!("`${name}` = `{v}`\n\ndefined under `vars` at line {line}")
        }
        None => format!("`${name}` is not defined under `vars`"),
    }
}

/// The schema's description of layer type `ty`.
pub(super) fn layer_doc(ty: &str) -> Option<&'static Json> {
    crate::spec::schema::model_schema()
        .pointer("/definitions/Layer/oneOf")?
        .as_array()?
        .iter()
        .find(|v| v.pointer("/properties/type/const").and_then(Json::as_str) == Some(ty))
}

fn describe_layer(a: &Analysis, layer: &Node, key: Option<&str>) -> String {
    let ty = layer.get("type").and_then(Node::as_str).unwrap_or("?");
    let schema = layer_doc(ty);
    let mut out = format!("**{ty}**");
    if let Some(d) = schema
        .and_then(|s| s.get("description"))
        .and_then(Json::as_str)
    {
        out.push_str(&format!(" — {}", d.replace('\n', " ")));
    }
    if let Some(k) = key.filter(|k| *k != "type") {
        let d = schema
            .and_then(|s| s.pointer(&format!("/properties/{k}/description")))
            .and_then(Json::as_str);
        if let Some(d) = d {
            out.push_str(&format!("\n\n`{k}`: {}", d.replace('\n', " ")));
        }
    }
    match (&a.checked, a.own()) {
        (Some((_, graph)), Some(own)) => {
            out.push_str("\n\n");
            let type_span = layer.get("type").map_or(layer.span, |t| t.span);
            out.push_str(&layer_facts(graph, layer.span, type_span, own));
        }
        _ => out.push_str("\n\n(shape and parameters appear once the document is valid)"),
    }
    out
}

/// Output shape, parameters and mixing of the graph nodes lowered from the layer written at
/// `span` (its nested layers included).
fn layer_facts(graph: &Graph, span: Span, type_span: Span, own: crate::diag::SourceId) -> String {
    let inside = |s: &Option<Span>| {
        s.is_some_and(|s| s.src == own && s.start >= span.start && s.end <= span.end)
    };
    let order = graph.topo().unwrap_or_default();
    let nodes: Vec<_> = order
        .into_iter()
        .filter(|&n| inside(&graph.g[n].span))
        .collect();
    if nodes.is_empty() {
        return "(not part of the graph)".into();
    }
    let params: u64 = nodes
        .iter()
        .filter_map(|&n| match &graph.g[n].op {
            Op::Param(p) => Some(p.shape.iter().product::<u64>()),
            _ => None,
        })
        .sum();
    let out = nodes
        .iter()
        .rev()
        .find(|&&n| !matches!(graph.g[n].op, Op::Param(_)))
        .map(|&n| graph.g[n].ty.to_string())
        .unwrap_or_else(|| "?".into());
    let mixing = nodes
        .iter()
        .map(|&n| graph.g[n].mixing.unwrap_or_else(|| graph.g[n].op.mixing()))
        .max_by_key(|m| match m {
            Mixing::Pointwise => 0,
            Mixing::Causal => 1,
            Mixing::Full => 2,
        })
        .unwrap_or(Mixing::Pointwise);
    // The layer's own nodes: one layer path per copy (inside `repeat`).
    let mut copies: Vec<&str> = nodes
        .iter()
        .filter(|&&n| graph.g[n].span.is_some_and(|s| s.start == type_span.start))
        .map(|&n| graph.g[n].layer.as_str())
        .collect();
    copies.sort_unstable();
    copies.dedup();
    let path = match copies.len() {
        0 => String::new(),
        1 => format!("`{}`", copies[0]),
        n => format!(
            "`{}` and {} more copies (parameters: all copies)",
            copies[0],
            n - 1
        ),
    };
    let mixing = match mixing {
        Mixing::Pointwise => "no: each position on its own",
        Mixing::Causal => "yes, causally: a position sees earlier positions only",
        Mixing::Full => "yes, across the whole sequence: a position sees later positions",
    };
    format!(
        "| | |\n|---|---|\n| output | `{out}` |\n| parameters | {} |\n| mixes positions | {mixing} |\n| graph layer | {path} |",
        crate::util::group_digits(params)
    )
}

/// The document's totals, as `kiln graph` and `kiln validate` give them.
fn document(a: &Analysis) -> Option<String> {
    let Some((doc, graph)) = &a.checked else {
        return Some(format!(
            "{} problem(s): totals appear once the document is valid",
            a.diags.len()
        ));
    };
    let mut g = graph.clone();
    let all: Vec<_> = crate::passes::ALL.iter().collect();
    crate::passes::optimize(&mut g, &all, false).ok()?;
    let seq = match doc {
        Document::Recipe(r) => r.spec.task.max_seq(),
        Document::Model(_) => 128,
    };
    let mut out = format!(
        "**{}**: {} parameters, {} ops\n\nactivation memory ≈ {} per example at seq {seq} (f32, all intermediate values)\n\ncausal: {}",
        g.name,
        crate::util::group_digits(g.param_count()),
        g.g.node_count(),
        crate::os::memory::human(g.activation_bytes(seq)),
        if crate::lower::is_causal(&g) { "yes" } else { "no (a position can see later positions)" }
    );
    if let Document::Recipe(r) = doc {
        let est = crate::train::memory::training(&g, &r.spec, 1);
        out.push_str(&format!(
            "\n\ntraining needs {}",
            crate::os::memory::human(est.total())
        ));
    }
    if matches!(doc, Document::Model(_)) {
        out.push_str("\n\n(a model file on its own: placeholder vocabulary and lengths; a recipe gives its task's)");
    }
    Some(out)
}
