//! GQA repeat elimination.
//!
//! The plain lowering of grouped-query attention repeats each of the H_kv key/value heads
//! G = H_q/H_kv times (`repeat_kv`) so that ordinary multi-head attention can run. This pass
//! feeds the un-repeated K and V to the attention op and records the grouping (`kv_groups`):
//! query head h reads KV head ⌊h/G⌋ directly, and the repeated tensors (G times the K/V
//! memory) are never materialized.

use crate::ir::{Graph, Op};
use crate::ops::attention::{Attention, RepeatKv, SelfAttention};

pub fn run(g: &mut Graph) -> Vec<String> {
    let mut changes = Vec::new();
    let attns: Vec<_> =
        g.g.node_indices()
            .filter(|&n| matches!(g.g[n].op, Op::Attention(Attention::Attend(_))))
            .collect();
    for n in attns {
        let ins = g.inputs(n);
        let (k, v) = (ins[1], ins[2]);
        let (
            Op::Attention(Attention::RepeatKv(RepeatKv { groups: gk })),
            Op::Attention(Attention::RepeatKv(RepeatKv { groups: gv })),
        ) = (&g.g[k].op, &g.g[v].op)
        else {
            continue;
        };
        if gk != gv {
            continue;
        }
        let groups = *gk;
        let (k_src, v_src) = (g.inputs(k)[0], g.inputs(v)[0]);
        if let Op::Attention(Attention::Attend(SelfAttention { kv_groups, .. })) = &mut g.g[n].op {
            *kv_groups *= groups;
        }
        g.set_input(n, 1, k_src);
        g.set_input(n, 2, v_src);
        for r in [k, v] {
            if g.users(r).is_empty() {
                g.g.remove_node(r);
            }
        }
        changes.push(format!(
            "{}: attention reads {} K/V heads shared by groups of {groups} (K/V repeat removed)",
            g.g[n].layer,
            kv_heads(g, k_src)
        ));
    }
    changes
}

fn kv_heads(g: &Graph, k: petgraph::stable_graph::NodeIndex) -> String {
    g.g[k]
        .ty
        .shape
        .get(1)
        .map_or_else(|| "?".into(), |d| d.to_string())
}
