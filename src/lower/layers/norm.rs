//! Normalization: `layernorm` and `rmsnorm`.

use crate::ir::{Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::norm::Norm;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn layernorm(
        &mut self,
        at: At,
        x: NodeIndex,
        eps: &f64,
    ) -> Option<NodeIndex> {
        let w = self.width(x);
        let g = self.param(&at, "weight", &[w], Init::Ones);
        let b = self.param(&at, "bias", &[w], Init::Zeros);
        self.op(&at, Op::Norm(Norm::Layer { eps: Real(*eps) }), &[x, g, b])
    }

    pub(in crate::lower) fn rmsnorm(
        &mut self,
        at: At,
        x: NodeIndex,
        eps: &f64,
    ) -> Option<NodeIndex> {
        let w = self.width(x);
        let g = self.param(&at, "weight", &[w], Init::Ones);
        self.op(&at, Op::Norm(Norm::Rms { eps: Real(*eps) }), &[x, g])
    }
}
