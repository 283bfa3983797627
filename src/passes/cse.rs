//! Common-subexpression elimination: a pure op applied to the same inputs as an earlier
//! identical op is replaced by the earlier one. Ops have real `Eq`/`Hash` (floats compare by
//! bits); random ops (dropout) and parameters are never merged.

use crate::ir::{Graph, Op};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub fn run(g: &mut Graph) -> Vec<String> {
    let Some(order) = g.topo() else {
        return Vec::new();
    };
    let mut seen: HashMap<(Op, Vec<NodeIndex>), NodeIndex> = HashMap::new();
    let mut merged: HashMap<(&'static str, String), usize> = HashMap::new();
    let mut changes = Vec::new();
    for n in order {
        if !g.g.contains_node(n) || !g.g[n].op.is_pure() {
            continue;
        }
        let key = (g.g[n].op.clone(), g.inputs(n));
        match seen.get(&key) {
            Some(&first) => {
                g.replace_uses(n, first);
                *merged
                    .entry((g.g[n].op.name(), g.g[first].layer.clone()))
                    .or_default() += 1;
                g.g.remove_node(n);
            }
            None => {
                seen.insert(key, n);
            }
        }
    }
    let mut merged: Vec<_> = merged.into_iter().collect();
    merged.sort();
    for ((op, layer), count) in merged {
        changes.push(format!("merged {count} {op} op(s) into the one of {layer}"));
    }
    changes
}
