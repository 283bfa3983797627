//! The vocabulary's two ends: `embedding` reads token ids, `head` returns logits.

use crate::diag::Code;
use crate::ir::{Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::elementwise::Elementwise;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn embedding(
        &mut self,
        at: At,
        x: NodeIndex,
        dim: &u32,
        scale: &bool,
    ) -> Option<NodeIndex> {
        if !self.is_tokens(x) {
            self.error(
                Code::Shape,
                at.span,
                "an `embedding` reads token ids, but its input is already a sequence of vectors"
                    .into(),
                "second embedding",
                "use `linear` to change the width of vectors",
            );
            return None;
        }
        let table = self.param(
            &at,
            "weight",
            &[self.opts.vocab, u64::from(*dim)],
            Init::Normal(Real(1.0)),
        );
        let e = self.op(
            &at,
            Op::Embedding(crate::ops::embedding::Embedding),
            &[x, table],
        )?;
        if *scale {
            self.op(
                &at,
                Op::Elementwise(Elementwise::Scale(Real(f64::from(*dim).sqrt()))),
                &[e],
            )
        } else {
            Some(e)
        }
    }

    pub(in crate::lower) fn head(
        &mut self,
        at: At,
        x: NodeIndex,
        bias: &bool,
    ) -> Option<NodeIndex> {
        self.linear(&at, "proj", x, self.opts.vocab, *bias)
    }
}
