//! Printing graphs as text, Graphviz DOT and JSON, with values numbered in topological order
//! (so the output is stable and diffable).

use super::{Graph, Op};
use petgraph::stable_graph::NodeIndex;
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write;

fn numbering(graph: &Graph) -> (Vec<NodeIndex>, HashMap<NodeIndex, usize>) {
    let order = graph
        .topo()
        .unwrap_or_else(|| graph.g.node_indices().collect());
    let ids = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    (order, ids)
}

/// One line per node: `%3 = linear(%1, %2) bias=true : f32[batch, seq, 32]  # layers[0]`.
pub fn to_text(graph: &Graph) -> String {
    let (order, ids) = numbering(graph);
    let mut out = String::new();
    writeln!(out, "graph {} {{", graph.name).unwrap();
    for n in order {
        let node = &graph.g[n];
        let args: Vec<String> = graph
            .inputs(n)
            .iter()
            .map(|i| format!("%{}", ids[i]))
            .collect();
        let attrs = node.op.attrs();
        if let Op::Param(_) = node.op {
            writeln!(out, "  %{} = param {attrs} : {}", ids[&n], node.ty).unwrap();
            continue;
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {attrs}")
        };
        let layer = if node.layer.is_empty() {
            String::new()
        } else {
            format!("  # {}", node.layer)
        };
        writeln!(
            out,
            "  %{} = {}({}){} : {}{}",
            ids[&n],
            node.op.name(),
            args.join(", "),
            attrs,
            node.ty,
            layer
        )
        .unwrap();
    }
    writeln!(out, "}}").unwrap();
    out
}

/// Graphviz DOT: parameters as small boxes, ops as ellipses, edges labelled with ports.
pub fn to_dot(graph: &Graph) -> String {
    let (order, ids) = numbering(graph);
    let mut out = String::new();
    writeln!(
        out,
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];",
        graph.name.replace('"', "'")
    )
    .unwrap();
    for &n in &order {
        let node = &graph.g[n];
        let (label, shape) = match &node.op {
            Op::Param(crate::ir::Param { name, .. }) => (format!("{name}\\n{}", node.ty), "box"),
            op => (
                format!(
                    "%{} {}\\n{}\\n{}",
                    ids[&n],
                    op.name(),
                    op.attrs().replace('"', "'"),
                    node.ty
                ),
                "ellipse",
            ),
        };
        writeln!(out, "  n{} [label=\"{}\", shape={shape}];", ids[&n], label).unwrap();
    }
    for &n in &order {
        for (port, i) in graph.inputs(n).iter().enumerate() {
            writeln!(out, "  n{} -> n{} [label=\"{port}\"];", ids[i], ids[&n]).unwrap();
        }
    }
    writeln!(out, "}}").unwrap();
    out
}

/// JSON: `{"name", "nodes": [{"id", "op", "attrs", "inputs", "type", "layer"}]}`.
pub fn to_json(graph: &Graph) -> serde_json::Value {
    let (order, ids) = numbering(graph);
    let nodes: Vec<_> = order
        .iter()
        .map(|&n| {
            let node = &graph.g[n];
            json!({
                "id": ids[&n],
                "op": node.op.name(),
                "attrs": node.op.attrs(),
                "inputs": graph.inputs(n).iter().map(|i| ids[i]).collect::<Vec<_>>(),
                "type": node.ty.to_string(),
                "layer": node.layer,
            })
        })
        .collect();
    json!({"name": graph.name, "nodes": nodes})
}
