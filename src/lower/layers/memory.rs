//! `memory_tokens`: learned tokens prepended to the sequence around a body.

use crate::diag::Code;
use crate::ir::{Init, Op, Real};
use crate::lower::{seq_items, At, Lowerer};
use crate::ops::memory::Memory;
use crate::spec::Layer;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn memory_tokens(
        &mut self,
        at: At,
        x: NodeIndex,
        kind: &str,
        count: &u32,
        body: &[Layer],
    ) -> Option<NodeIndex> {
        let (node, path) = (at.node, at.path.as_str());
        self.vectors(&at, x, kind)?;
        let m = u64::from(*count);
        let memory = self.param(&at, "memory", &[m, self.width(x)], Init::Normal(Real(0.02)));
        let xm = self.op(&at, Op::Memory(Memory::Prepend), &[x, memory])?;
        let nodes = node.and_then(|n| n.get("body")).and_then(seq_items);
        let saved = (self.positions, self.memory);
        (self.positions, self.memory) = (xm, self.memory + m);
        let y = self.seq(body, nodes, xm, path);
        (self.positions, self.memory) = saved;
        let y = y?;
        if self.g.g[y].ty != self.g.g[xm].ty {
            let (a, b) = (self.g.g[xm].ty.to_string(), self.g.g[y].ty.to_string());
            self.error(
                Code::Shape,
                at.span,
                format!("the memory body turns {a} into {b}; it must keep the shape"),
                "memory_tokens here",
                "make the body end with the width it starts with",
            );
            return None;
        }
        self.op(&at, Op::Memory(Memory::Drop { count: m }), &[y])
    }
}
