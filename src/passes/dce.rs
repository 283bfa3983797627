//! Dead-node elimination: remove every node whose result cannot reach the output (the input
//! node stays: it is the graph's interface).

use crate::ir::{Graph, Op};
use std::collections::{BTreeMap, HashSet};

pub fn run(g: &mut Graph) -> Vec<String> {
    let Some(out) = g.output() else {
        return Vec::new();
    };
    let mut live = HashSet::new();
    let mut stack = vec![out];
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.inputs(n));
        }
    }
    let dead: Vec<_> =
        g.g.node_indices()
            .filter(|n| !live.contains(n) && g.g[*n].op != Op::Input(crate::ir::Input))
            .collect();
    if dead.is_empty() {
        return Vec::new();
    }
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for &n in &dead {
        *kinds.entry(g.g[n].op.name()).or_default() += 1;
    }
    for n in &dead {
        g.g.remove_node(*n);
    }
    let what: Vec<String> = kinds.iter().map(|(k, c)| format!("{c} {k}")).collect();
    vec![format!(
        "removed {} dead node(s): {}",
        dead.len(),
        what.join(", ")
    )]
}
