//! xLSTM's mLSTM layer (Beck et al. 2024): a matrix memory per head, written with exponential
//! input gates and sigmoid forget gates, read by a query. The Burn forward runs the stabilized
//! parallel form over each call's positions, or from a zero memory a fused kernel in the
//! equal chunkwise form (memory linear in the positions); decoding carries the memory between
//! calls.

use super::{affine, Xlstm};
use crate::ir::reference::math::sigmoid;
use crate::ops::{port, OpDef, OpState, RefTensor};
use crate::runtime::fused;
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;
use burn::tensor::activation;

/// The memory an mLSTM carries from one decoding call to the next: the stabilized matrix
/// memory C̄ `[b, H, dh, dh]`, normalizer n̄ `[b, H, 1, dh]` and stabilizer m `[b, H, 1, 1]`
/// (dh = width / H).
#[derive(Debug, Clone)]
pub struct MlstmState {
    /// C̄.
    pub c: Tensor<4>,
    /// n̄.
    pub n: Tensor<4>,
    /// m.
    pub m: Tensor<4>,
}

impl OpState for MlstmState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        for t in [&mut self.c, &mut self.n, &mut self.m] {
            *t = t.clone().select(0, rows.clone());
        }
    }

    fn device(&self) -> Device {
        self.c.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

/// The mLSTM layer over this call's positions, continuing from `init` (a zero memory when
/// `None`); returns the outputs and the final memory. Stabilized parallel form over the
/// chunk: with F_t = Σ_{u≤t} ln σ(f̃_u), position t weighs the carried memory by
/// e^{F_t + m₀} and position s ≤ t by e^{F_t − F_s + ĩ_s}, all divided by e^{m_t} where m_t is
/// the largest of these exponents, so nothing overflows; m_t cancels in the result, so it is
/// held constant for the gradient.
pub(super) fn forward(
    op: &Xlstm,
    heads: usize,
    ins: &[&V],
    ctx: &Ctx,
    init: Option<MlstmState>,
) -> (Tensor<3>, MlstmState) {
    let p = op.ports();
    let x = port(p, ins, "x").f3();
    let [b, s, d] = x.dims();
    let h = heads;
    let dh = d / h;
    let proj = |w: &str, bias: &str, o: usize| {
        mm(x.clone(), port(p, ins, w).f2().unsqueeze::<3>(), ctx)
            + port(p, ins, bias).f1().reshape([1, 1, o])
    };
    let qkvo = proj("qkvo.weight", "qkvo.bias", 4 * d);
    let heads_of = |i: usize| {
        qkvo.clone()
            .narrow(2, i * d, d)
            .reshape([b, s, h, dh])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (
        heads_of(0),
        heads_of(1).div_scalar((dh as f64).sqrt()),
        heads_of(2),
    );
    let og = qkvo.narrow(2, 3 * d, d);
    // Gates [b, H, s].
    let ig = proj("igate.weight", "igate.bias", h).swap_dims(1, 2);
    let logf = activation::log_sigmoid(proj("fgate.weight", "fgate.bias", h).swap_dims(1, 2));
    let (hcat, [c, n, m]) = match init {
        None if ctx.matmul_dtype.is_none() => fused::mlstm([q, k, v], [ig, logf], ctx.consts),
        init => {
            let init = init.map(|st| [st.c, st.n, st.m]);
            fused::mlstm_plain([q, k, v], [ig, logf], init, ctx.consts, |a, b| {
                mm(a, b, ctx)
            })
        }
    };
    let out = mm(
        activation::sigmoid(og) * hcat,
        port(p, ins, "out.weight").f2().unsqueeze::<3>(),
        ctx,
    );
    (out, MlstmState { c, n, m })
}

/// The mLSTM layer by its recurrence, unstabilized (Beck et al. 2024, eqs. 19–27):
/// C_t = f_t C_{t−1} + e^{ĩ_t} v_t k_tᵀ, n_t = f_t n_{t−1} + e^{ĩ_t} k_t,
/// h_t = σ(o_t) ⊙ C_t q_t / max(|n_tᵀ q_t|, 1), k scaled by 1/√d; then the output map.
pub(super) fn reference(op: &Xlstm, heads: usize, ins: &[&RefTensor]) -> RefTensor {
    let p = op.ports();
    let x = *port(p, ins, "x");
    let w = |name: &str| *port(p, ins, name);
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = d / heads;
    let mut out = RefTensor::zeros(&[b, s, d]);
    for bi in 0..b {
        let mut c = vec![vec![0.0; dh * dh]; heads];
        let mut n = vec![vec![0.0; dh]; heads];
        for t in 0..s {
            let xt = &x.data[(bi * s + t) * d..(bi * s + t + 1) * d];
            let qkvo = affine(xt, w("qkvo.weight"), Some(w("qkvo.bias")));
            let ig = affine(xt, w("igate.weight"), Some(w("igate.bias")));
            let fg = affine(xt, w("fgate.weight"), Some(w("fgate.bias")));
            let mut hcat = vec![0.0; d];
            for h in 0..heads {
                let q = &qkvo[h * dh..(h + 1) * dh];
                let k: Vec<f64> = qkvo[d + h * dh..d + (h + 1) * dh]
                    .iter()
                    .map(|v| v / (dh as f64).sqrt())
                    .collect();
                let v = &qkvo[2 * d + h * dh..2 * d + (h + 1) * dh];
                let (f, i) = (sigmoid(fg[h]), ig[h].exp());
                for a in 0..dh {
                    for bb in 0..dh {
                        c[h][a * dh + bb] = f * c[h][a * dh + bb] + i * v[a] * k[bb];
                    }
                    n[h][a] = f * n[h][a] + i * k[a];
                }
                let den = (0..dh).map(|a| n[h][a] * q[a]).sum::<f64>().abs().max(1.0);
                for a in 0..dh {
                    let num: f64 = (0..dh).map(|bb| c[h][a * dh + bb] * q[bb]).sum();
                    hcat[h * dh + a] = sigmoid(qkvo[3 * d + h * dh + a]) * num / den;
                }
            }
            let y = affine(&hcat, w("out.weight"), None);
            out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&y);
        }
    }
    out
}
