//! Position tables added to the sequence: `sinusoidal_positions` and `learned_positions`.

use crate::diag::Code;
use crate::ir::{Dim, Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::positions::Positions;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn sinusoidal_positions(
        &mut self,
        at: At,
        x: NodeIndex,
    ) -> Option<NodeIndex> {
        let dim = self.width(x);
        let table = self.op(
            &at,
            Op::Positions(Positions::SinusoidalTable { dim }),
            &[self.positions],
        )?;
        self.op(&at, Op::Positions(Positions::Add), &[x, table])
    }

    pub(in crate::lower) fn learned_positions(
        &mut self,
        at: At,
        x: NodeIndex,
        kind: &str,
        max_len: &u32,
    ) -> Option<NodeIndex> {
        self.check_len(&at, u64::from(*max_len), kind)?;
        if let Some(Dim::Fixed(n)) = self.g.g[x].ty.shape.get(1) {
            if *n > u64::from(*max_len) {
                self.error(
                    Code::Shape,
                    at.field_span("max_len"),
                    format!("`{kind}` handles at most {max_len} positions, but its input has {n}"),
                    "too short",
                    &format!("set `max_len: {n}` or more"),
                );
                return None;
            }
        }
        let table = self.param(
            &at,
            "weight",
            &[u64::from(*max_len), self.width(x)],
            Init::Normal(Real(0.02)),
        );
        self.op(&at, Op::Positions(Positions::Add), &[x, table])
    }
}
