//! RetNet's multi-scale retention (`retention`, Sun et al. 2023): projections, the rotation
//! Θ on queries and keys, the retention op with its per-head decays and GroupNorm (see
//! [`crate::ops::retention`]), the swish gate and the output projection.

use crate::diag::Code;
use crate::ir::{Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::elementwise::Elementwise;
use crate::ops::heads::Heads;
use crate::ops::positions::Positions;
use crate::ops::retention::Retention;
use petgraph::stable_graph::NodeIndex;

/// The rotation's frequency base (the paper's Θ, as in RoPE).
const THETA_BASE: f64 = 10000.0;

impl Lowerer {
    /// `(swish(x W_G) ⊙ GroupNorm(Retention(X))) W_O`, with Q = (X W_Q) ⊙ Θ, K = (X W_K) ⊙ Θ̄
    /// and V = X W_V, all without biases as in the paper.
    pub(in crate::lower) fn retention(
        &mut self,
        at: At,
        x: NodeIndex,
        heads: &u32,
    ) -> Option<NodeIndex> {
        let (w, h) = self.heads_divide(&at, x, *heads)?;
        let hd = w / h;
        if hd % 2 != 0 {
            self.error(
                Code::Shape,
                at.field_span("heads"),
                format!("the rotation of queries and keys needs an even head width, got {hd}"),
                "odd head width",
                "choose `heads` so that width / heads is even",
            );
            return None;
        }
        let split = Op::Heads(Heads::Split { heads: h });
        let q = self.linear(&at, "q", x, w, false)?;
        let k = self.linear(&at, "k", x, w, false)?;
        let v = self.linear(&at, "v", x, w, false)?;
        let (q, k) = (
            self.op(&at, split.clone(), &[q])?,
            self.op(&at, split.clone(), &[k])?,
        );
        let v = self.op(&at, split, &[v])?;
        let table = Op::Positions(Positions::RopeTable {
            head_dim: hd,
            base: Real(THETA_BASE),
            yarn: None,
        });
        let table = self.op(&at, table, &[self.positions])?;
        let rotate = Op::Positions(Positions::ApplyRope);
        let (q, k) = (
            self.op(&at, rotate.clone(), &[q, table])?,
            self.op(&at, rotate, &[k, table])?,
        );
        let weight = self.param(&at, "norm.weight", &[w], Init::Ones);
        let bias = self.param(&at, "norm.bias", &[w], Init::Zeros);
        let op = Op::Retention(Retention { eps: Real(1e-5) });
        let r = self.op(&at, op, &[q, k, v, weight, bias])?;
        let g = self.linear(&at, "g", x, w, false)?;
        let g = self.op(
            &at,
            Op::Elementwise(Elementwise::Act(crate::ir::op::Act::Silu)),
            &[g],
        )?;
        let y = self.op(&at, Op::Elementwise(Elementwise::Mul), &[g, r])?;
        self.linear(&at, "out", y, w, false)
    }
}
