//! Recurrent layers: `lstm`, `mamba`, the xLSTM cells `mlstm` and `slstm`, and `ets_attention`.

use crate::ir::{Init, Op, Real};
use crate::lower::{linear_init, At, Lowerer};
use crate::ops::lstm::Lstm;
use crate::ops::mamba::Mamba;
use crate::spec::Layer;
use petgraph::stable_graph::NodeIndex;

impl Lowerer {
    pub(in crate::lower) fn lstm(
        &mut self,
        at: At,
        x: NodeIndex,
        hidden: &u32,
        layers: &u32,
        dropout: &f64,
    ) -> Option<NodeIndex> {
        let h = u64::from(*hidden);
        let mut ins = vec![x];
        let mut inp = self.width(x);
        let init = Init::Uniform(Real(1.0 / (h as f64).sqrt()));
        for l in 0..*layers {
            ins.push(self.param(&at, &format!("l{l}.w_ih"), &[inp, 4 * h], init));
            ins.push(self.param(&at, &format!("l{l}.w_hh"), &[h, 4 * h], init));
            ins.push(self.param(&at, &format!("l{l}.b_ih"), &[4 * h], init));
            ins.push(self.param(&at, &format!("l{l}.b_hh"), &[4 * h], init));
            inp = h;
        }
        self.op(
            &at,
            Op::Lstm(Lstm {
                layers: u64::from(*layers),
                hidden: h,
                dropout: Real(*dropout),
            }),
            &ins,
        )
    }

    pub(in crate::lower) fn mamba(
        &mut self,
        at: At,
        x: NodeIndex,
        d_state: &u32,
        d_conv: &u32,
        expand: &u32,
        dt_rank: &Option<u32>,
    ) -> Option<NodeIndex> {
        let d = self.width(x);
        let e = d * u64::from(*expand);
        let (n, k) = (u64::from(*d_state), u64::from(*d_conv));
        let r = dt_rank.map_or(d.div_ceil(16), u64::from);
        // Δ starts near 0.01: the bias is softplus⁻¹(0.01).
        let dt_bias = (0.01f64.exp() - 1.0).ln();
        let ins = vec![
            x,
            self.param(&at, "in_proj.weight", &[d, 2 * e], linear_init(d)),
            self.param(&at, "conv.weight", &[e, k], linear_init(k)),
            self.param(&at, "conv.bias", &[e], linear_init(k)),
            self.param(&at, "x_proj.weight", &[e, r + 2 * n], linear_init(e)),
            self.param(&at, "dt_proj.weight", &[r, e], linear_init(r)),
            self.param(&at, "dt_proj.bias", &[e], Init::Const(Real(dt_bias))),
            self.param(&at, "A_log", &[e, n], Init::LogRange),
            self.param(&at, "D", &[e], Init::Ones),
            self.param(&at, "out_proj.weight", &[e, d], linear_init(e)),
        ];
        self.op(
            &at,
            Op::Mamba(Mamba {
                d_state: n,
                d_conv: k,
                dt_rank: r,
            }),
            &ins,
        )
    }

    pub(in crate::lower) fn xlstm_or_ets(
        &mut self,
        at: At,
        x: NodeIndex,
        layer: &Layer,
        heads: &u32,
    ) -> Option<NodeIndex> {
        let (d, h) = self.heads_divide(&at, x, *heads)?;
        if let Layer::EtsAttention { .. } = layer {
            let ins = vec![
                x,
                self.param(&at, "v.weight", &[d, d], linear_init(d)),
                self.param(&at, "v.bias", &[d], linear_init(d)),
                // α = σ(0) = 0.5 at first.
                self.param(&at, "alpha", &[h], Init::Zeros),
                self.param(&at, "v0", &[d], Init::Normal(Real(0.02))),
                self.param(&at, "out.weight", &[d, d], linear_init(d)),
            ];
            self.op(&at, Op::Ets(crate::ops::ets::Ets { heads: h }), &ins)
        } else if let Layer::Mlstm { .. } = layer {
            let ins = vec![
                x,
                self.param(&at, "qkvo.weight", &[d, 4 * d], linear_init(d)),
                self.param(&at, "qkvo.bias", &[4 * d], linear_init(d)),
                self.param(&at, "igate.weight", &[d, h], linear_init(d)),
                self.param(&at, "igate.bias", &[h], Init::Zeros),
                self.param(&at, "fgate.weight", &[d, h], linear_init(d)),
                // Forget gates start near σ(3) ≈ 0.95: a long memory.
                self.param(&at, "fgate.bias", &[h], Init::Const(Real(3.0))),
                self.param(&at, "out.weight", &[d, d], linear_init(d)),
            ];
            self.op(
                &at,
                Op::Xlstm(crate::ops::xlstm::Xlstm::Mlstm { heads: h }),
                &ins,
            )
        } else {
            let dh = d / h;
            let ins = vec![
                x,
                self.param(&at, "weight", &[d, 4 * d], linear_init(d)),
                self.param(&at, "recurrent", &[h, dh, 4 * dh], linear_init(dh)),
                self.param(&at, "bias", &[4 * d], Init::Zeros),
            ];
            self.op(
                &at,
                Op::Xlstm(crate::ops::xlstm::Xlstm::Slstm { heads: h }),
                &ins,
            )
        }
    }
}
