//! Projections: `linear`, and `position_linear` (a weight per pair of positions).

use crate::ir::Op;
use crate::lower::{linear_init, At, Lowerer};
use crate::ops::position_linear::PositionLinear;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn linear_layer(
        &mut self,
        at: At,
        x: NodeIndex,
        out: &u32,
        bias: &bool,
    ) -> Option<NodeIndex> {
        self.linear(&at, "proj", x, u64::from(*out), *bias)
    }

    pub(in crate::lower) fn position_linear(
        &mut self,
        at: At,
        x: NodeIndex,
        kind: &str,
        max_len: &u32,
        out: &Option<u32>,
        bias: &bool,
    ) -> Option<NodeIndex> {
        let l = u64::from(*max_len);
        self.check_len(&at, l, kind)?;
        let i = self.width(x);
        let o = out.map_or(self.opts.vocab, u64::from);
        let init = linear_init(i * l);
        let w = self.param(&at, "weight", &[l, i, l, o], init);
        let mut ins = vec![x, w];
        if *bias {
            ins.push(self.param(&at, "bias", &[l, o], init));
        }
        self.op(
            &at,
            Op::PositionLinear(PositionLinear {
                max_len: l,
                bias: *bias,
            }),
            &ins,
        )
    }
}
