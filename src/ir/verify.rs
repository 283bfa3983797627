//! The verifier: checks a whole graph. Passes must leave a graph that verifies; the tests run
//! it after every pass.

use super::{Graph, Op, Port};
use petgraph::Direction;
use std::collections::HashSet;

/// Check that the graph has no cycles, every node has exactly its ports connected, every
/// stored type is what the op infers from its inputs, there is one input and one output, and
/// parameter names are unique. Returns every problem found.
pub fn verify(graph: &Graph) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let g = &graph.g;
    if graph.topo().is_none() {
        problems.push("the graph has a cycle".to_string());
        return Err(problems);
    }
    let count = |want: &Op| {
        g.node_weights()
            .filter(|n| std::mem::discriminant(&n.op) == std::mem::discriminant(want))
            .count()
    };
    let inputs = count(&Op::Input(crate::ir::Input))
        + count(&Op::Series(crate::ir::Series {
            lookback: 0,
            channels: 0,
        }));
    if inputs != 1 {
        problems.push(format!("expected one input node, found {inputs}"));
    }
    if count(&Op::Output(crate::ir::Output)) != 1 {
        problems.push(format!(
            "expected one output node, found {}",
            count(&Op::Output(crate::ir::Output))
        ));
    }
    let mut names = HashSet::new();
    for n in g.node_indices() {
        let node = &g[n];
        if let Op::Param(crate::ir::Param { name, .. }) = &node.op {
            if !names.insert(name.clone()) {
                problems.push(format!("parameter name `{name}` is used twice"));
            }
        }
        let mut ports: Vec<Port> = g
            .edges_directed(n, Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        ports.sort();
        let want: Vec<Port> = (0..node.op.arity() as Port).collect();
        if ports != want {
            problems.push(format!(
                "node {} ({}): input ports {ports:?}, expected {want:?}",
                n.index(),
                node.op.name()
            ));
            continue;
        }
        let tys: Vec<_> = graph.inputs(n).iter().map(|&i| g[i].ty.clone()).collect();
        match node.op.infer(&tys) {
            Ok(ty) if ty == node.ty => {}
            Ok(ty) => problems.push(format!(
                "node {} ({}): stored type {} but inputs give {ty}",
                n.index(),
                node.op.name(),
                node.ty
            )),
            Err(e) => problems.push(format!("node {} ({}): {e}", n.index(), node.op.name())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
