//! The frequency-curriculum mask of a spectral gate's parameter: the identity, except during
//! the steps of a frequency curriculum, where the runtime's [`Ctx::freq_mask`] low-passes the
//! gate's bins or the kernel's DCT coefficients.

use super::super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::reference::definitions;
use crate::ir::{DType, Dim, Mixing, TensorType};
use crate::runtime::ops::{consts, Ctx};
use crate::runtime::V;
use burn::prelude::*;

/// Frequency-curriculum mask of a spectral gate's parameter (identity outside a frequency
/// curriculum; see [`FreqCutoff`]). `dct: false`: a complex gate `[f, d, 2]`, each rfft bin
/// scaled by its weight. `dct: true`: a causal kernel `[l, d]`, low-passed in the orthonormal
/// DCT-II basis over its l taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FreqMask {
    /// The parameter is a time-domain kernel (DCT basis).
    pub dct: bool,
}

/// The frequency-curriculum mask at one step: bin k of F (normalized frequency
/// f_k = k/(F − 1)) gets weight 1 if f_k ≤ cutoff else 0, or sigmoid(slope · (cutoff − f_k))
/// with a slope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreqCutoff {
    /// Cutoff, a fraction of the band.
    pub cutoff: f64,
    /// Slope of the soft mask; `None` for a hard one.
    pub slope: Option<f64>,
}

impl FreqCutoff {
    /// The weights of `bins` frequency bins, lowest first.
    pub fn weights(&self, bins: usize) -> Vec<f64> {
        (0..bins)
            .map(|k| {
                let f = if bins > 1 {
                    k as f64 / (bins - 1) as f64
                } else {
                    0.0
                };
                match self.slope {
                    None => f64::from(u8::from(f <= self.cutoff + 1e-12)),
                    Some(a) => 1.0 / (1.0 + (-a * (self.cutoff - f)).exp()),
                }
            })
            .collect()
    }
}

/// The orthonormal DCT-II basis of `l` taps, row-major `[k, t]`: basis vector k at tap t is
/// √(s/l)·cos(π(t + ½)k/l), s = 1 for k = 0 and 2 otherwise.
pub fn dct_basis(l: usize) -> Vec<f64> {
    (0..l * l)
        .map(|i| {
            let (k, t) = (i / l, i % l);
            let s = if k == 0 { 1.0 } else { 2.0 };
            (s / l as f64).sqrt()
                * (std::f64::consts::PI * (t as f64 + 0.5) * k as f64 / l as f64).cos()
        })
        .collect()
}

impl FreqMask {
    /// The float64 reference under the mask `m` by its definition: a gate's bins
    /// (`[f, d, 2]`) scaled one by one; a kernel's taps (`[l, d]`) taken to the orthonormal
    /// DCT-II basis, its coefficients scaled, and transformed back. (Without a mask the op is
    /// the identity, [`OpDef::reference`].)
    pub fn reference_masked(&self, p: &RefTensor, m: &FreqCutoff) -> RefTensor {
        let mut out = p.clone();
        let bins = p.shape[0];
        let w = definitions::curriculum_weights(m, bins);
        let inner = p.data.len() / bins.max(1);
        if !self.dct {
            for (k, wk) in w.iter().enumerate() {
                for v in &mut out.data[k * inner..(k + 1) * inner] {
                    *v *= wk;
                }
            }
            return out;
        }
        let basis = |k: usize, t: usize| definitions::dct(bins, k, t);
        for c in 0..inner {
            let coef: Vec<f64> = (0..bins)
                .map(|k| {
                    (0..bins)
                        .map(|t| basis(k, t) * p.data[t * inner + c])
                        .sum::<f64>()
                        * w[k]
                })
                .collect();
            for t in 0..bins {
                out.data[t * inner + c] = (0..bins).map(|k| basis(k, t) * coef[k]).sum();
            }
        }
        out
    }
}

impl OpDef for FreqMask {
    fn name(&self) -> &'static str {
        "freq_mask"
    }

    fn attrs(&self) -> String {
        format!("basis={}", if self.dct { "dct" } else { "rfft" })
    }

    fn ports(&self) -> &'static [&'static str] {
        &["param"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    /// It reads a parameter, which has no positions.
    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = float_input(port(self.ports(), ins, "param"))?;
        let ok = if self.dct {
            p.shape.len() == 2
        } else {
            p.shape.len() == 3 && p.shape[2] == Dim::Fixed(2)
        };
        if !ok {
            return Err(shapes(format!(
                "a frequency mask does not fit parameter {p}"
            )));
        }
        Ok(TensorType {
            dtype: DType::F32,
            shape: p.shape.clone(),
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
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        Ok((*port(self.ports(), ins, "param")).clone())
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let p = *port(self.ports(), ins, "param");
        let Some(m) = ctx.freq_mask else {
            return p.clone();
        };
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        if self.dct {
            // h' = Cᵀ·(m ⊙ C·h).
            let h = p.f2();
            let l = h.dims()[0];
            let c: Tensor<2> = consts(f32s(dct_basis(l)), [l, l], ctx);
            let w: Tensor<2> = consts(f32s(m.weights(l)), [l, 1], ctx);
            V::F2(c.clone().transpose().matmul(c.matmul(h) * w))
        } else {
            let g = p.f3();
            let f = g.dims()[0];
            V::F3(g * consts(f32s(m.weights(f)), [f, 1, 1], ctx))
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{Arg, Case};
    use super::*;
    use crate::util::Rng;

    const MASKS: [FreqCutoff; 3] = [
        FreqCutoff {
            cutoff: 0.3,
            slope: None,
        },
        FreqCutoff {
            cutoff: 0.5,
            slope: Some(12.0),
        },
        FreqCutoff {
            cutoff: 1.0,
            slope: None,
        },
    ];

    /// The parameter's shapes: a gate `[f, d, 2]` or a kernel `[l, d]`, odd and even sizes.
    fn params(dct: bool) -> [Vec<usize>; 3] {
        if dct {
            [vec![16, 3], vec![7, 1], vec![33, 5]]
        } else {
            [vec![9, 3, 2], vec![4, 1, 2], vec![17, 5, 2]]
        }
    }

    /// Without a mask (every step outside a frequency curriculum) the op is the identity.
    #[test]
    fn every_check_passes_without_a_mask() {
        let mut rng = Rng::new(41);
        for dct in [false, true] {
            let op = FreqMask { dct };
            for shape in params(dct) {
                let case = Case {
                    op: &op,
                    args: vec![Arg::fixed(&shape, &mut rng)],
                    out_seq: None,
                    tol: 1e-6,
                };
                case.infers_the_forward_shape();
                case.matches_the_reference();
                case.gradients_reach_every_input(&[]);
                case.later_positions_change_no_earlier_output();
            }
        }
    }

    /// With a cutoff in the context: hard and soft masks of gates (rfft bins) and kernels
    /// (DCT coefficients) against the reference's own weights and DCT; the masked parameter
    /// still learns.
    #[test]
    fn every_check_passes_under_a_frequency_cutoff() {
        let mut rng = Rng::new(42);
        for dct in [false, true] {
            let op = FreqMask { dct };
            for shape in params(dct) {
                for m in MASKS {
                    let case = Case {
                        op: &op,
                        args: vec![Arg::fixed(&shape, &mut rng)],
                        out_seq: None,
                        tol: 1e-5,
                    };
                    let want = op.reference_masked(&case.args[0].t, &m);
                    case.matches_under_mask(m, &want);
                    case.gradients_reach_every_input_under_mask(m, &[]);
                    if m.cutoff < 1.0 && shape[0] > 4 {
                        // The mask removes something.
                        assert!(want.max_abs_diff(&case.args[0].t) > 1e-3, "{op:?} {m:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn infer_errors_have_their_variant() {
        let ty = |dtype, dims: &[u64]| TensorType {
            dtype,
            shape: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        };
        for dct in [false, true] {
            let op = FreqMask { dct };
            assert_eq!(
                op.infer(&[ty(DType::I64, &[4, 3])]),
                Err(InferError::TokenIds)
            );
            let bad = if dct { &[4, 3, 2][..] } else { &[4, 3][..] };
            assert!(matches!(
                op.infer(&[ty(DType::F32, bad)]),
                Err(InferError::Shapes(_))
            ));
        }
        assert!(matches!(
            FreqMask { dct: false }.infer(&[ty(DType::F32, &[4, 3, 3])]),
            Err(InferError::Shapes(_))
        ));
    }
}
