//! Exponential smoothing attention (ETSformer): each head smooths the values of the positions
//! so far with its own learned rate, ES_t = (1 − α) ES_{t−1} + α v_t from a learned start v₀;
//! then the output map. The Burn forward runs the smoothing as one fused pass through time
//! over each call's positions (its plain path: one causal convolution); decoding carries the
//! latest smoothed value between calls.

use super::{float_input, port, shapes, take_state, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::fused;
use crate::runtime::ops::{mm, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// `(x [b, s, d], v.weight [d, d], v.bias [d], alpha [H] (logits), v0 [d], out.weight [d, d])
/// → [b, s, d]`, d divisible by the heads H (see the `ets_attention` layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ets {
    /// Heads H.
    pub heads: u64,
}

/// What ETS attention carries from one decoding call to the next: the smoothed value ES at
/// the latest position, `[b, d]`.
#[derive(Debug, Clone)]
pub struct EtsState {
    /// ES_{t−1}.
    pub last: Tensor<2>,
}

impl OpState for EtsState {
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        self.last = self.last.clone().select(0, rows.clone());
    }

    fn device(&self) -> Device {
        self.last.device()
    }

    fn key_shape(&self) -> Option<[usize; 4]> {
        None
    }
}

impl Ets {
    /// Exponential smoothing attention over this call's positions from the previous ES value
    /// `init` (v₀ when `None`); returns the outputs and the last ES value. The smoothing is the
    /// fused kernel [`fused::smooth`] (one pass through time); its plain path computes
    /// ES_t = (1 − α)^{t+1} ES_{−1} + Σ_{j≤t} α (1 − α)^j v_{t−j} as a causal convolution.
    fn run(&self, ins: &[&V], ctx: &Ctx, init: Option<EtsState>) -> (Tensor<3>, EtsState) {
        let p = self.ports();
        let x = port(p, ins, "x").f3();
        let [b, s, d] = x.dims();
        let h = self.heads as usize;
        let v = mm(x, port(p, ins, "v.weight").f2().unsqueeze::<3>(), ctx)
            + port(p, ins, "v.bias").f1().reshape([1, 1, d]);
        // The logit of each channel's rate: its head's.
        let a = port(p, ins, "alpha")
            .f1()
            .reshape([h, 1])
            .expand([h, d / h])
            .reshape([d]);
        let prev = match init {
            Some(st) => st.last,
            None => port(p, ins, "v0").f1().reshape([1, d]).expand([b, d]),
        };
        let es = fused::smooth(v, a, prev);
        let last = es.clone().narrow(1, s - 1, 1).reshape([b, d]);
        let out = mm(es, port(p, ins, "out.weight").f2().unsqueeze::<3>(), ctx);
        (out, EtsState { last })
    }
}

impl OpDef for Ets {
    fn name(&self) -> &'static str {
        "ets"
    }

    fn attrs(&self) -> String {
        format!("heads={}", self.heads)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x", "v.weight", "v.bias", "alpha", "v0", "out.weight"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Causal
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let (p, heads) = (self.ports(), self.heads);
        if heads == 0 {
            return Err(InferError::Attribute(
                "ets needs at least one head".to_string(),
            ));
        }
        let x = float_input(port(p, ins, "x"))?;
        let d = match x.shape.as_slice() {
            [_, _, Dim::Fixed(d)] if d % heads == 0 => *d,
            _ => {
                return Err(shapes(format!(
                    "expects [batch, seq, width] with the width divisible by {heads} heads, got {x}"
                )))
            }
        };
        let want: [&[u64]; 5] = [&[d, d], &[d], &[heads], &[d], &[d, d]];
        for (k, (name, w)) in p[1..].iter().zip(want).enumerate() {
            let w: Vec<Dim> = w.iter().map(|&n| Dim::Fixed(n)).collect();
            let got = port(p, ins, name);
            if got.shape != w {
                return Err(shapes(format!(
                    "ets parameter {} has shape {got}, expected {w:?}",
                    k + 1
                )));
            }
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, ins: &[&TensorType], batch: u64, seq: u64) -> u64 {
        // Its value and output projections (the smoothing is O(b·s·d), no product).
        ["v.weight", "out.weight"]
            .iter()
            .map(|name| {
                let w = port(self.ports(), ins, name);
                2 * batch * seq * w.len(0, seq) * w.len(1, seq)
            })
            .sum()
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        true
    }

    /// ETS attention by its recurrence: ES_t = (1 − α) ES_{t−1} + α v_t from ES_{−1} = v₀,
    /// α = σ(a) per head, v = x W_v + b; then the output map.
    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let x = *port(p, ins, "x");
        let (wv, bv, alpha, v0, wo) = (
            *port(p, ins, "v.weight"),
            *port(p, ins, "v.bias"),
            *port(p, ins, "alpha"),
            *port(p, ins, "v0"),
            *port(p, ins, "out.weight"),
        );
        let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
        let dh = d / self.heads as usize;
        // Row `r` of length i times `w` [i, o].
        let times = |r: &[f64], w: &RefTensor| -> Vec<f64> {
            let o = w.shape[1];
            (0..o)
                .map(|j| {
                    r.iter()
                        .enumerate()
                        .map(|(i, v)| v * w.data[i * o + j])
                        .sum()
                })
                .collect()
        };
        let mut out = RefTensor::zeros(&[b, s, d]);
        for bi in 0..b {
            let mut es = v0.data.clone();
            for t in 0..s {
                let v = times(&x.data[(bi * s + t) * d..(bi * s + t + 1) * d], wv);
                for c in 0..d {
                    let alpha = 1.0 / (1.0 + (-alpha.data[c / dh]).exp());
                    es[c] = (1.0 - alpha) * es[c] + alpha * (v[c] + bv.data[c]);
                }
                let y = times(&es, wo);
                out.data[(bi * s + t) * d..(bi * s + t + 1) * d].copy_from_slice(&y);
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        V::F3(self.run(ins, ctx, None).0)
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, state: &mut Option<Box<dyn OpState>>) -> V {
        let (out, next) = self.run(ins, ctx, take_state(state));
        *state = Some(Box::new(next));
        V::F3(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    fn ty(shape: &[u64]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.iter().map(|&n| Dim::Fixed(n)).collect(),
        }
    }

    /// Its arguments for `b` sequences of `s` positions of width `d` with `h` heads.
    fn args(b: usize, s: usize, d: usize, h: usize, rng: &mut Rng) -> Vec<Arg> {
        vec![
            Arg::seq(&[b, s, d], 1, rng),
            Arg::fixed(&[d, d], rng),
            Arg::fixed(&[d], rng),
            Arg::fixed(&[h], rng),
            Arg::fixed(&[d], rng),
            Arg::fixed(&[d, d], rng),
        ]
    }

    #[test]
    fn every_check_passes_on_random_shapes() {
        let mut rng = Rng::new(23);
        // The plain path: a dense convolution up to DENSE_MAX positions, an FFT beyond.
        let long = crate::passes::DENSE_MAX as usize + 3;
        for (b, s, d, h) in [(2, 6, 8, 2), (1, 5, 6, 3), (3, 7, 5, 1), (2, long, 4, 2)] {
            let op = Ets { heads: h as u64 };
            let case = Case {
                op: &op,
                args: args(b, s, d, h, &mut rng),
                out_seq: Some(1),
                tol: 1e-4,
            };
            // The fused smoothing, then its plain path (the convolution).
            for fused_on in [true, false] {
                let checks = || {
                    // Beam search: rows reversed, and the first twice.
                    let rows: Vec<usize> = (0..b).rev().chain([0]).collect();
                    case.passes_the_checks_of_a_decoding_op(3, &rows);
                };
                if fused_on {
                    let before = fused::calls(fused::Kernel::Smooth);
                    checks();
                    let after = fused::calls(fused::Kernel::Smooth);
                    assert!(after.forward > before.forward, "the fused smoothing ran");
                } else {
                    fused::plain_on_this_thread(checks);
                }
            }
        }
    }

    #[test]
    fn infer_errors_name_their_cause() {
        let op = Ets { heads: 2 };
        let x = TensorType {
            dtype: DType::F32,
            shape: vec![Dim::Batch, Dim::Seq, Dim::Fixed(8)],
        };
        let ins = vec![
            x.clone(),
            ty(&[8, 8]),
            ty(&[8]),
            ty(&[2]),
            ty(&[8]),
            ty(&[8, 8]),
        ];
        assert_eq!(op.infer(&ins).unwrap(), x);
        let mut ids = ins.clone();
        ids[0] = TensorType {
            dtype: DType::I64,
            shape: vec![Dim::Batch, Dim::Seq],
        };
        assert_eq!(op.infer(&ids).unwrap_err(), InferError::TokenIds);
        let mut odd = ins.clone();
        odd[0].shape[2] = Dim::Fixed(7);
        assert!(matches!(op.infer(&odd), Err(InferError::Shapes(m)) if m.contains("divisible")));
        let mut bad = ins.clone();
        bad[3] = ty(&[3]);
        assert!(matches!(op.infer(&bad), Err(InferError::Shapes(m)) if m.contains("parameter 3")));
        assert!(matches!(
            Ets { heads: 0 }.infer(&ins),
            Err(InferError::Attribute(_))
        ));
        let refs: Vec<&TensorType> = ins.iter().collect();
        assert_eq!(op.matmul_flops(&refs, 3, 5), 2 * 3 * 5 * (8 * 8 + 8 * 8));
        assert_eq!(op.attrs(), "heads=2");
    }
}
