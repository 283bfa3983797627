//! Harmonic layers: `wave_encoding`, `harmonic_select`, and `phase_attention`.

use crate::diag::Code;
use crate::ir::op::Act;
use crate::ir::{Init, Op, Real};
use crate::lower::{At, Lowerer};
use crate::ops::elementwise::Elementwise;
use crate::ops::heads::Heads;
use crate::ops::phase_attention::PhaseAttention;
use crate::ops::wave::Wave;
use crate::spec::model::PhaseMode;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn wave_encoding(
        &mut self,
        at: At,
        x: NodeIndex,
        harmonics: &u32,
    ) -> Option<NodeIndex> {
        let h = u64::from(*harmonics);
        let y = self.linear(&at, "proj", x, 3 * h, true)?;
        self.op(&at, Op::Wave(Wave::Encoding { harmonics: h }), &[y])
    }

    pub(in crate::lower) fn harmonic_select(
        &mut self,
        at: At,
        x: NodeIndex,
        harmonics: &u32,
        k: &u32,
        temperature: &f64,
    ) -> Option<NodeIndex> {
        let (h, k) = (self.harmonic_groups(&at, x, *harmonics)?.0, u64::from(*k));
        if k > h {
            self.error(
                Code::Shape,
                at.field_span("k"),
                format!("cannot keep {k} of {h} harmonics"),
                "more than `harmonics`",
                "make `k` at most `harmonics`",
            );
            return None;
        }
        let scores = self.linear(&at, "score", x, h, true)?;
        let op = Op::Wave(Wave::Select {
            k,
            temperature: Real(*temperature),
        });
        self.op(&at, op, &[x, scores])
    }

    pub(in crate::lower) fn phase_attention(
        &mut self,
        at: At,
        x: NodeIndex,
        heads: &u32,
        phases: &u32,
        mode: &PhaseMode,
        causal: &bool,
    ) -> Option<NodeIndex> {
        let (w, h) = self.heads_divide(&at, x, *heads)?;
        let p = u64::from(*phases);
        let complex = *mode == crate::spec::model::PhaseMode::Complex;
        let mut ins = Vec::new();
        for name in ["q", "k", "v"] {
            let y = self.linear(&at, name, x, w, true)?;
            ins.push(self.op(&at, Op::Heads(Heads::Split { heads: h }), &[y])?);
        }
        let ph = self.linear(&at, "phase", x, h * p, true)?;
        let ph = self.op(&at, Op::Elementwise(Elementwise::Act(Act::Tanh)), &[ph])?;
        let ph = self.op(
            &at,
            Op::Elementwise(Elementwise::Scale(Real(std::f64::consts::PI))),
            &[ph],
        )?;
        ins.push(self.op(&at, Op::Heads(Heads::Split { heads: h }), &[ph])?);
        if complex {
            let a = self.linear(&at, "amp", x, h * p, true)?;
            let a = self.op(&at, Op::Elementwise(Elementwise::Act(Act::Softplus)), &[a])?;
            ins.push(self.op(&at, Op::Heads(Heads::Split { heads: h }), &[a])?);
        }
        ins.push(self.param(&at, "blend", &[2], Init::Ones));
        let op = Op::PhaseAttention(PhaseAttention {
            causal: *causal,
            complex,
        });
        let o = self.op(&at, op, &ins)?;
        let o = self.op(&at, Op::Heads(Heads::Merge), &[o])?;
        self.linear(&at, "out", o, w, true)
    }
}
