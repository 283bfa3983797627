//! xLSTM's sLSTM layer (Beck et al. 2024): a scalar memory per channel with exponential input
//! gates, sigmoid forget gates and a block-diagonal (per head) recurrence, run step by step
//! with the paper's stabilizer; decoding carries the state between calls.

use super::{affine, Xlstm};
use crate::ir::reference::math::sigmoid;
use crate::ops::{port, OpDef, OpState, RefTensor};
use crate::runtime::fused;
use crate::runtime::ops::{linear, mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// The state an sLSTM carries from one decoding call to the next: the cell c, normalizer n,
/// stabilizer m and hidden state h, each `[b, H, 1, dh]` (dh = width / H).
#[derive(Debug, Clone)]
pub struct SlstmState {
    /// c, n, m and h, in that order.
    pub st: [Tensor<4>; 4],
}

impl OpState for SlstmState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        for t in &mut self.st {
            *t = t.clone().select(0, rows.clone());
        }
    }

    fn device(&self) -> Device {
        self.st[0].device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

/// The sLSTM layer step by step from `init` (zeros when `None`), with the paper's stabilizer
/// m_t = max(ln f_t + m_{t−1}, ĩ_t); returns the outputs and the final state.
pub(super) fn forward(
    op: &Xlstm,
    heads: usize,
    ins: &[&V],
    ctx: &Ctx,
    init: Option<SlstmState>,
) -> (Tensor<3>, SlstmState) {
    let p = op.ports();
    let x = port(p, ins, "x").f3();
    let [b, _, d] = x.dims();
    let dh = d / heads;
    // Input pre-activations for all positions, [b, s, 4d] (gate-major, then head).
    let xw = linear(
        x,
        port(p, ins, "weight").f2(),
        Some(port(p, ins, "bias").f1()),
        ctx,
    );
    let r = port(p, ins, "recurrent").f3(); // [H, dh, 4dh]
    let st = match init {
        Some(st) => st.st,
        None => std::array::from_fn(|_| Tensor::zeros([b, heads, 1, dh], ctx.device)),
    };
    let (y, st) = if ctx.matmul_dtype.is_none() {
        fused::slstm(xw, r, st)
    } else {
        fused::slstm_plain(xw, r, st, |a, b| mm(a, b, ctx))
    };
    (y, SlstmState { st })
}

/// The sLSTM layer by its recurrence, unstabilized (Beck et al. 2024, eqs. 8–14) with a sigmoid
/// forget gate: c_t = f_t c_{t−1} + e^{ĩ_t} tanh(z̃_t), n_t = f_t n_{t−1} + e^{ĩ_t},
/// h_t = σ(õ_t) ⊙ c_t / n_t; pre-activations W x_t + R h_{t−1} + b, R block-diagonal per head.
pub(super) fn reference(op: &Xlstm, heads: usize, ins: &[&RefTensor]) -> RefTensor {
    let p = op.ports();
    let (x, w, r, bias) = (
        *port(p, ins, "x"),
        *port(p, ins, "weight"),
        *port(p, ins, "recurrent"),
        *port(p, ins, "bias"),
    );
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = d / heads;
    let mut out = RefTensor::zeros(&[b, s, d]);
    for bi in 0..b {
        let (mut c, mut n, mut h) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        for t in 0..s {
            let xt = &x.data[(bi * s + t) * d..(bi * s + t + 1) * d];
            let mut pre = affine(xt, w, Some(bias));
            // Head hd's recurrent matrix [dh, 4·dh] maps its slice of h to its slices of the
            // four gates (gate g of head hd at columns g·d + hd·dh ..).
            for hd in 0..heads {
                for g in 0..4 {
                    for j in 0..dh {
                        let acc: f64 = (0..dh)
                            .map(|a| h[hd * dh + a] * r.data[(hd * dh + a) * 4 * dh + g * dh + j])
                            .sum();
                        pre[g * d + hd * dh + j] += acc;
                    }
                }
            }
            for u in 0..d {
                let (z, i, f, o) = (
                    pre[u].tanh(),
                    pre[d + u].exp(),
                    sigmoid(pre[2 * d + u]),
                    sigmoid(pre[3 * d + u]),
                );
                c[u] = f * c[u] + i * z;
                n[u] = f * n[u] + i;
                h[u] = o * c[u] / n[u];
            }
            out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&h);
        }
    }
    out
}
