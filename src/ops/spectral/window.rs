//! The windowed spectral gate (short-time FFT filtering): frames of `window` steps `hop`
//! apart, windowed by a learned mix of Hann, Hamming and rectangular windows, transformed,
//! gated, transformed back, windowed again and overlap-added.

use super::super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use super::fft::{
    complex_mul, complex_mul_reference, irfft4, irfft_reference, rfft3, rfft_reference,
};
use crate::ir::reference::definitions;
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::{consts, Ctx};
use crate::runtime::V;
use burn::prelude::*;
use burn::tensor::activation;

/// Windowed spectral gate `(x [b, s, d], mix [3], gate [w/2+1, d, 2]) → [b, s, d]` (see the
/// `windowed_spectral_gate` layer): frames of `window` steps `hop` apart, windowed by
/// softmax(mix)·(Hann, Hamming, rectangular), rfft, gated, irfft, windowed again, overlap-added
/// and divided by Σ window².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowedGate {
    /// Frame length w.
    pub window: u64,
    /// Hop between frame starts.
    pub hop: u64,
}

/// The three windows a `windowed_spectral_gate` mixes, periodic, of length w: Hann
/// 0.5 − 0.5·cos(2πn/w), Hamming 0.54 − 0.46·cos(2πn/w) and rectangular 1 (`[3][w]`, row-major).
pub fn window_basis(w: usize) -> Vec<f64> {
    let mut out = vec![0.0; 3 * w];
    for n in 0..w {
        let c = (2.0 * std::f64::consts::PI * n as f64 / w as f64).cos();
        out[n] = 0.5 - 0.5 * c;
        out[w + n] = 0.54 - 0.46 * c;
        out[2 * w + n] = 1.0;
    }
    out
}

/// Framing of a sequence of `len` steps into frames of `window` steps, `hop` apart:
/// `(pad, count)`: the first frame starts `pad` = window − hop steps before the sequence, and
/// `count` frames cover it (the padded sequence has (count − 1)·hop + window steps).
pub fn frames(window: usize, hop: usize, len: usize) -> (usize, usize) {
    let pad = window - hop;
    let count = (pad + len).saturating_sub(window).div_ceil(hop) + 1;
    (pad, count)
}

impl OpDef for WindowedGate {
    fn name(&self) -> &'static str {
        "windowed_gate"
    }

    fn attrs(&self) -> String {
        format!("window={} hop={}", self.window, self.hop)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x", "mix", "gate"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    /// A frame reaches `window − 1` steps ahead.
    fn mixing(&self) -> Mixing {
        Mixing::Full
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let (window, hop, p) = (self.window, self.hop, self.ports());
        let x = float_input(port(p, ins, "x"))?;
        let [_, _, Dim::Fixed(d)] = x.shape.as_slice() else {
            return Err(shapes(format!("expects [batch, seq, width], got {x}")));
        };
        if hop == 0 || hop > window {
            return Err(InferError::Attribute(format!(
                "a hop of {hop} does not fit frames of {window}"
            )));
        }
        let fx = |v: &[u64]| v.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
        let (mix, gate) = (port(p, ins, "mix"), port(p, ins, "gate"));
        if mix.shape != fx(&[3]) || gate.shape != fx(&[window / 2 + 1, *d, 2]) {
            return Err(shapes(format!(
                "windowed gate parameters {mix} and {gate} do not fit {x}"
            )));
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: x.shape.clone(),
        })
    }

    fn matmul_flops(&self, _: &[&TensorType], _: u64, _: u64) -> u64 {
        0
    }

    fn workspace_bytes(&self, _: &[&TensorType], _: u64) -> u64 {
        0
    }

    fn position_limit(&self, _: &[&TensorType]) -> Option<usize> {
        None
    }

    fn incremental(&self) -> bool {
        false
    }

    /// By its definition: frame, window, rfft, gate, irfft, window, overlap-add, divide by the
    /// summed squared window (with the reference's own windows and framing).
    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let (window, hop) = (self.window as usize, self.hop as usize);
        let p = self.ports();
        let (x, mix, gate) = (port(p, ins, "x"), port(p, ins, "mix"), port(p, ins, "gate"));
        let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
        let g = definitions::learned_window(window, &mix.data);
        let (pad, count) = definitions::frame_layout(window, hop, s);
        // Position t of the sequence is step n of frame c when c·hop + n = pad + t.
        let at = |c: usize, n: usize| (c * hop + n).checked_sub(pad).filter(|&t| t < s);
        let mut fr = RefTensor::zeros(&[b * count, window, d]);
        for bi in 0..b {
            for c in 0..count {
                for (n, gn) in g.iter().enumerate() {
                    if let Some(t) = at(c, n) {
                        for ch in 0..d {
                            fr.data[((bi * count + c) * window + n) * d + ch] =
                                x.data[(bi * s + t) * d + ch] * gn;
                        }
                    }
                }
            }
        }
        let spec = complex_mul_reference(&rfft_reference(&fr, window), gate);
        let y = irfft_reference(&spec, window);
        let mut den = vec![0.0; s];
        for c in 0..count {
            for (n, gn) in g.iter().enumerate() {
                if let Some(t) = at(c, n) {
                    den[t] += gn * gn;
                }
            }
        }
        let mut out = RefTensor::zeros(&[b, s, d]);
        for bi in 0..b {
            for c in 0..count {
                for (n, gn) in g.iter().enumerate() {
                    if let Some(t) = at(c, n) {
                        for ch in 0..d {
                            out.data[(bi * s + t) * d + ch] +=
                                y.data[((bi * count + c) * window + n) * d + ch] * gn
                                    / den[t].max(1e-12);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = self.ports();
        V::F3(windowed_gate(
            port(p, ins, "x").f3(),
            port(p, ins, "mix").f1(),
            port(p, ins, "gate").f3(),
            (self.window as usize, self.hop as usize),
            ctx,
        ))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// The windowed spectral gate: frames gathered with one `select`, transformed together, and
/// overlap-added with one `select_assign`.
fn windowed_gate(
    x: Tensor<3>,
    mix: Tensor<1>,
    gate: Tensor<3>,
    (window, hop): (usize, usize),
    ctx: &Ctx,
) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let basis = window_basis(window).into_iter().map(|v| v as f32).collect();
    let g = activation::softmax(mix, 0)
        .reshape([1, 3])
        .matmul(consts(basis, [3, window], ctx))
        .reshape([window]);
    let (pad, count) = frames(window, hop, s);
    let lp = (count - 1) * hop + window;
    let mut parts = Vec::new();
    if pad > 0 {
        parts.push(Tensor::zeros([b, pad, d], ctx.device));
    }
    parts.push(x);
    if lp > pad + s {
        parts.push(Tensor::zeros([b, lp - pad - s, d], ctx.device));
    }
    let xp = Tensor::cat(parts, 1);
    let idx: Vec<i64> = (0..count)
        .flat_map(|c| (0..window).map(move |n| (c * hop + n) as i64))
        .collect();
    let idx = Tensor::<1, Int>::from_ints(idx.as_slice(), ctx.device);
    let gw = g.clone().reshape([1, window, 1]);
    let frames = xp.select(1, idx.clone()).reshape([b * count, window, d]) * gw.clone();
    let spec = complex_mul(rfft3(frames, window, ctx), gate);
    let y = (irfft4(spec, window, ctx) * gw).reshape([b, count * window, d]);
    let num = Tensor::<3>::zeros([b, lp, d], ctx.device).select_assign(
        1,
        idx.clone(),
        y,
        burn::tensor::IndexingUpdateOp::Add,
    );
    let g2 = g
        .powi_scalar(2)
        .reshape([1, window])
        .repeat_dim(0, count)
        .reshape([count * window]);
    let den = Tensor::<1>::zeros([lp], ctx.device).select_assign(
        0,
        idx,
        g2,
        burn::tensor::IndexingUpdateOp::Add,
    );
    // Σ g² > 0 wherever the rectangular window has weight; the floor only guards a mix
    // saturated to pure Hann without overlap.
    (num / den.clamp_min(1e-12).reshape([1, lp, 1])).narrow(1, pad, s)
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    /// Every check with a hop that divides the window (8/4, 6/6, 4/1) and hops that do not
    /// (8/3, 7/2), on lengths that frames divide and lengths they do not, shorter than a frame
    /// too.
    #[test]
    fn every_check_passes_with_hops_that_divide_the_window_and_hops_that_do_not() {
        let mut rng = Rng::new(51);
        for (window, hop, b, s, d) in [
            (8, 4, 2, 13, 3),
            (6, 6, 1, 12, 2),
            (4, 1, 2, 9, 1),
            (8, 3, 2, 20, 3),
            (7, 2, 1, 16, 2),
            (16, 5, 2, 3, 2),
        ] {
            let op = WindowedGate { window, hop };
            let f = window as usize / 2 + 1;
            let case = Case {
                op: &op,
                args: vec![
                    Arg::seq(&[b, s, d], 1, &mut rng),
                    Arg::fixed(&[3], &mut rng),
                    Arg::fixed(&[f, d, 2], &mut rng),
                ],
                out_seq: Some(1),
                tol: 1e-4,
            };
            case.infers_the_forward_shape();
            case.matches_the_reference();
            case.gradients_reach_every_input(&[]);
            case.later_positions_change_no_earlier_output();
        }
    }

    #[test]
    fn infer_errors_have_their_variant() {
        let ty = |dtype, shape: Vec<Dim>| TensorType { dtype, shape };
        let fx = |v: &[u64]| ty(DType::F32, v.iter().map(|&d| Dim::Fixed(d)).collect());
        let x = ty(DType::F32, vec![Dim::Batch, Dim::Seq, Dim::Fixed(3)]);
        let op = WindowedGate { window: 8, hop: 3 };
        assert_eq!(op.infer(&[x.clone(), fx(&[3]), fx(&[5, 3, 2])]).unwrap(), x);
        let ids = ty(DType::I64, vec![Dim::Batch, Dim::Seq]);
        assert_eq!(
            op.infer(&[ids, fx(&[3]), fx(&[5, 3, 2])]),
            Err(InferError::TokenIds)
        );
        for hop in [0, 9] {
            let e = WindowedGate { window: 8, hop }
                .infer(&[x.clone(), fx(&[3]), fx(&[5, 3, 2])])
                .unwrap_err();
            assert_eq!(
                e,
                InferError::Attribute(format!("a hop of {hop} does not fit frames of 8"))
            );
        }
        for (mix, gate) in [(fx(&[2]), fx(&[5, 3, 2])), (fx(&[3]), fx(&[4, 3, 2]))] {
            assert!(matches!(
                op.infer(&[x.clone(), mix, gate]),
                Err(InferError::Shapes(_))
            ));
        }
    }
}
