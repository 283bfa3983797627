//! Position-wise feed-forward layers: `mlp`, `swiglu`, and `dropout`.

use crate::ir::op::Act;
use crate::ir::{Op, Real};
use crate::lower::{act_of, At, Lowerer};
use crate::ops::elementwise::Elementwise;
use crate::spec::Activation;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn mlp(
        &mut self,
        at: At,
        x: NodeIndex,
        hidden: &u32,
        activation: &Activation,
        bias: &bool,
        dropout: &f64,
    ) -> Option<NodeIndex> {
        let w = self.width(x);
        let h = self.linear(&at, "up", x, u64::from(*hidden), *bias)?;
        let mut h = self.op(
            &at,
            Op::Elementwise(Elementwise::Act(act_of(*activation))),
            &[h],
        )?;
        if *dropout > 0.0 {
            h = self.op(
                &at,
                Op::Elementwise(Elementwise::Dropout(Real(*dropout))),
                &[h],
            )?;
        }
        self.linear(&at, "down", h, w, *bias)
    }

    pub(in crate::lower) fn swiglu(
        &mut self,
        at: At,
        x: NodeIndex,
        hidden: &u32,
        bias: &bool,
    ) -> Option<NodeIndex> {
        let w = self.width(x);
        let a = self.linear(&at, "gate", x, u64::from(*hidden), *bias)?;
        let b = self.linear(&at, "up", x, u64::from(*hidden), *bias)?;
        let a = self.op(&at, Op::Elementwise(Elementwise::Act(Act::Silu)), &[a])?;
        let h = self.op(&at, Op::Elementwise(Elementwise::Mul), &[a, b])?;
        self.linear(&at, "down", h, w, *bias)
    }

    pub(in crate::lower) fn dropout(&mut self, at: At, x: NodeIndex, p: &f64) -> Option<NodeIndex> {
        if *p > 0.0 {
            self.op(&at, Op::Elementwise(Elementwise::Dropout(Real(*p))), &[x])
        } else {
            Some(x)
        }
    }
}
