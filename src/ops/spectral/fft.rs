//! The real FFT along the sequence axis and its inverse (dense DFT products), the complex
//! product of a spectrum and a gate, and complex values as real features.

use super::super::{f32_type, float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{Dim, Mixing, TensorType};
use crate::runtime::ops::{consts, Ctx};
use crate::runtime::V;
use burn::prelude::*;
use std::f64::consts::PI;

/// Real FFT along the second-to-last axis (length n): `[.., n, d] → [.., n/2+1, d, 2]` (real
/// and imaginary parts last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rfft {
    /// Transform length.
    pub n: u64,
}

/// Inverse of [`Rfft`] (with the 1/n factor): `[.., n/2+1, d, 2] → [.., n, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Irfft {
    /// Output length.
    pub n: u64,
}

/// Complex product `(x [b, f, d, 2], gate [f, d, 2]) → [b, f, d, 2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComplexMul;

/// Complex values to features `[.., f, d, 2] → [.., f, 2d]`: real parts, then imaginary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComplexFeatures;

impl OpDef for Rfft {
    fn name(&self) -> &'static str {
        "rfft"
    }

    fn attrs(&self) -> String {
        format!("n={}", self.n)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Full
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let n = self.n;
        let x = float_input(port(self.ports(), ins, "x"))?;
        let r = x.shape.len();
        if r < 2 || x.shape[r - 2] != Dim::Fixed(n) {
            return Err(shapes(format!("rfft of length {n} does not fit {x}")));
        }
        let mut s = x.shape.clone();
        s[r - 2] = Dim::Fixed(n / 2 + 1);
        s.push(Dim::Fixed(2));
        f32_type(s)
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

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let x = port(self.ports(), ins, "x");
        Ok(rfft_reference(x, self.n as usize))
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        let n = self.n as usize;
        match port(self.ports(), ins, "x") {
            // A kernel `[n, d]`.
            V::F2(x) => {
                let [len, d] = x.dims();
                let y = rfft3(x.clone().reshape([1, len, d]), n, ctx);
                let [_, f, d, _] = y.dims();
                V::F3(y.reshape([f, d, 2]))
            }
            other => V::F4(rfft3(other.f3(), n, ctx)),
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

impl OpDef for Irfft {
    fn name(&self) -> &'static str {
        "irfft"
    }

    fn attrs(&self) -> String {
        format!("n={}", self.n)
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Full
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let n = self.n;
        let x = float_input(port(self.ports(), ins, "x"))?;
        let r = x.shape.len();
        if r < 3 || x.shape[r - 3] != Dim::Fixed(n / 2 + 1) || x.shape[r - 1] != Dim::Fixed(2) {
            return Err(shapes(format!("irfft of length {n} does not fit {x}")));
        }
        let mut s = x.shape[..r - 1].to_vec();
        s[r - 3] = Dim::Fixed(n);
        f32_type(s)
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

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let x = port(self.ports(), ins, "x");
        Ok(irfft_reference(x, self.n as usize))
    }

    fn forward(&self, ins: &[&V], ctx: &Ctx) -> V {
        V::F3(irfft4(
            port(self.ports(), ins, "x").f4(),
            self.n as usize,
            ctx,
        ))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

impl OpDef for ComplexMul {
    fn name(&self) -> &'static str {
        "complex_mul"
    }

    fn attrs(&self) -> String {
        String::new()
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x", "gate"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    /// Frequency bins, mixed already by the FFT before it.
    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let g = float_input(port(p, ins, "gate"))?;
        if x.shape.len() < g.shape.len() || x.shape[x.shape.len() - g.shape.len()..] != g.shape[..]
        {
            return Err(shapes(format!("gate {g} does not fit spectrum {x}")));
        }
        f32_type(x.shape.clone())
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

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let (x, gate) = (port(p, ins, "x"), port(p, ins, "gate"));
        Ok(complex_mul_reference(x, gate))
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let p = self.ports();
        V::F4(complex_mul(
            port(p, ins, "x").f4(),
            port(p, ins, "gate").f3(),
        ))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

impl OpDef for ComplexFeatures {
    fn name(&self) -> &'static str {
        "complex_features"
    }

    fn attrs(&self) -> String {
        String::new()
    }

    fn ports(&self) -> &'static [&'static str] {
        &["x"]
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let x = float_input(port(self.ports(), ins, "x"))?;
        match x.shape.as_slice() {
            [b, f, Dim::Fixed(d), Dim::Fixed(2)] => f32_type(vec![*b, *f, Dim::Fixed(2 * d)]),
            _ => Err(shapes(format!(
                "expects complex values [.., f, width, 2], got {x}"
            ))),
        }
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
        let x = port(self.ports(), ins, "x");
        let (b, f, d) = (x.shape[0], x.shape[1], x.shape[2]);
        let mut out = RefTensor::zeros(&[b, f, 2 * d]);
        for r in 0..b * f {
            for c in 0..d {
                out.data[r * 2 * d + c] = x.data[(r * d + c) * 2];
                out.data[r * 2 * d + d + c] = x.data[(r * d + c) * 2 + 1];
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let x = port(self.ports(), ins, "x").f4();
        let [b, f, d, _] = x.dims();
        V::F3(x.permute([0, 1, 3, 2]).reshape([b, f, 2 * d]))
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

/// Real DFT matrices for length n: `cos[f, t]`, `sin[f, t]` with f < n/2+1 (forward), and the
/// inverse `icos[t, f]`, `isin[t, f]` including the 1/n factor and the weight 2 of the bins that
/// stand for their conjugates.
fn dft(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let f = n / 2 + 1;
    let (mut c, mut s) = (vec![0.0f32; f * n], vec![0.0f32; f * n]);
    let (mut ic, mut is) = (vec![0.0f32; n * f], vec![0.0f32; n * f]);
    for k in 0..f {
        let w = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
            1.0
        } else {
            2.0
        };
        for t in 0..n {
            let a = 2.0 * PI * ((k * t) % n) as f64 / n as f64;
            c[k * n + t] = a.cos() as f32;
            s[k * n + t] = -(a.sin()) as f32;
            ic[t * f + k] = (w * a.cos() / n as f64) as f32;
            is[t * f + k] = (-w * a.sin() / n as f64) as f32;
        }
    }
    (c, s, ic, is)
}

/// rfft along axis 1 of `[b, n, d]` (dense DFT): `[b, f, d, 2]`.
pub(super) fn rfft3(x: Tensor<3>, n: usize, ctx: &Ctx) -> Tensor<4> {
    let f = n / 2 + 1;
    let (c, s, _, _) = dft(n);
    let c: Tensor<3> = consts(c, [1, f, n], ctx);
    let s: Tensor<3> = consts(s, [1, f, n], ctx);
    let re = c.matmul(x.clone());
    let im = s.matmul(x);
    Tensor::stack(vec![re, im], 3)
}

/// irfft of `[b, f, d, 2]` to `[b, n, d]` (dense).
pub(super) fn irfft4(x: Tensor<4>, n: usize, ctx: &Ctx) -> Tensor<3> {
    let [b, f, d, _] = x.dims();
    let (_, _, ic, is) = dft(n);
    let ic: Tensor<3> = consts(ic, [1, n, f], ctx);
    let is: Tensor<3> = consts(is, [1, n, f], ctx);
    let re = x.clone().narrow(3, 0, 1).reshape([b, f, d]);
    let im = x.narrow(3, 1, 1).reshape([b, f, d]);
    ic.matmul(re) + is.matmul(im)
}

/// Complex product `[b, f, d, 2] · [f, d, 2]`.
pub(super) fn complex_mul(x: Tensor<4>, g: Tensor<3>) -> Tensor<4> {
    let g = g.unsqueeze::<4>();
    let (xr, xi) = (x.clone().narrow(3, 0, 1), x.narrow(3, 1, 1));
    let (gr, gi) = (g.clone().narrow(3, 0, 1), g.narrow(3, 1, 1));
    Tensor::cat(
        vec![
            xr.clone() * gr.clone() - xi.clone() * gi.clone(),
            xr * gi + xi * gr,
        ],
        3,
    )
}

/// The real DFT of length n along the second-to-last axis of `x` `[.., len, d]` by its
/// definition, X_k = Σ_t x_t e^{−2πikt/n} for k ≤ n/2 (positions past len are zeros).
pub(super) fn rfft_reference(x: &RefTensor, n: usize) -> RefTensor {
    let r = x.shape.len();
    let (outer, len, d) = (
        x.shape[..r - 2].iter().product::<usize>(),
        x.shape[r - 2],
        x.shape[r - 1],
    );
    let f = n / 2 + 1;
    let mut shape = x.shape.clone();
    shape[r - 2] = f;
    shape.push(2);
    let mut out = RefTensor::zeros(&shape);
    for o in 0..outer {
        for k in 0..f {
            for c in 0..d {
                let (mut re, mut im) = (0.0, 0.0);
                for t in 0..len {
                    let a = -2.0 * PI * (k * t) as f64 / n as f64;
                    let v = x.data[(o * len + t) * d + c];
                    re += v * a.cos();
                    im += v * a.sin();
                }
                let idx = ((o * f + k) * d + c) * 2;
                out.data[idx] = re;
                out.data[idx + 1] = im;
            }
        }
    }
    out
}

/// Inverse real DFT along the second-to-last axis of a `[.., f, d, 2]` spectrum, with 1/n.
pub(super) fn irfft_reference(x: &RefTensor, n: usize) -> RefTensor {
    let r = x.shape.len();
    let (outer, f, d) = (
        x.shape[..r - 3].iter().product::<usize>(),
        x.shape[r - 3],
        x.shape[r - 2],
    );
    let mut shape = x.shape[..r - 1].to_vec();
    shape[r - 3] = n;
    let mut out = RefTensor::zeros(&shape);
    for o in 0..outer {
        for t in 0..n {
            for c in 0..d {
                let mut acc = 0.0;
                for k in 0..f {
                    let idx = ((o * f + k) * d + c) * 2;
                    let (re, im) = (x.data[idx], x.data[idx + 1]);
                    let a = 2.0 * PI * (k * t) as f64 / n as f64;
                    let term = re * a.cos() - im * a.sin();
                    // Bins other than DC and (for even n) Nyquist stand for their conjugates too.
                    let weight = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                        1.0
                    } else {
                        2.0
                    };
                    acc += weight * term;
                }
                out.data[(o * n + t) * d + c] = acc / n as f64;
            }
        }
    }
    out
}

/// `x` `[.., d, 2]` times the complex `g`, repeated over x's leading axes.
pub(super) fn complex_mul_reference(x: &RefTensor, g: &RefTensor) -> RefTensor {
    let gl = g.data.len();
    let mut out = x.clone();
    for (i, pair) in out.data.chunks_mut(2).enumerate() {
        let gi = (i * 2) % gl;
        let (a, b) = (pair[0], pair[1]);
        let (c, d) = (g.data[gi], g.data[gi + 1]);
        pair[0] = a * c - b * d;
        pair[1] = a * d + b * c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{Arg, Case};
    use super::*;
    use crate::ir::DType;
    use crate::util::Rng;

    fn ty(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    fn fixed(dims: &[u64]) -> TensorType {
        ty(DType::F32, dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    fn check<O: OpDef + std::fmt::Debug>(op: &O, args: Vec<Arg>, out_seq: Option<usize>) {
        let case = Case {
            op,
            args,
            out_seq,
            tol: 1e-4,
        };
        case.infers_the_forward_shape();
        case.matches_the_reference();
        case.gradients_reach_every_input(&[]);
        case.later_positions_change_no_earlier_output();
        if op.incremental() {
            case.decodes_like_the_whole_sequence(2);
        }
    }

    #[test]
    fn rfft_passes_every_check_on_sequences_and_kernels() {
        let mut rng = Rng::new(21);
        // Even and odd lengths; a batch of sequences `[b, n, d]` and a kernel `[n, d]` (its
        // own branch of the forward). The transform's axis is fixed, not the symbolic
        // sequence, so no input has a position axis.
        for (b, n, d) in [(2, 8, 3), (1, 7, 2), (3, 16, 5)] {
            let op = Rfft { n: n as u64 };
            check(&op, vec![Arg::fixed(&[b, n, d], &mut rng)], None);
            check(&op, vec![Arg::fixed(&[n, d], &mut rng)], None);
        }
    }

    #[test]
    fn irfft_passes_every_check_and_inverts_rfft() {
        let mut rng = Rng::new(22);
        for (b, n, d) in [(2, 8, 3), (1, 7, 2), (3, 13, 4)] {
            let op = Irfft { n: n as u64 };
            check(&op, vec![Arg::fixed(&[b, n / 2 + 1, d, 2], &mut rng)], None);
            let x = Arg::fixed(&[b, n, d], &mut rng).t;
            let back = op
                .reference(&[&Rfft { n: n as u64 }.reference(&[&x]).unwrap()])
                .unwrap();
            assert!(back.max_abs_diff(&x) < 1e-9, "n {n}");
        }
    }

    #[test]
    fn complex_mul_passes_every_check() {
        let mut rng = Rng::new(23);
        for (b, f, d) in [(2, 5, 3), (1, 9, 1), (3, 4, 6)] {
            check(
                &ComplexMul,
                vec![
                    Arg::fixed(&[b, f, d, 2], &mut rng),
                    Arg::fixed(&[f, d, 2], &mut rng),
                ],
                None,
            );
        }
    }

    #[test]
    fn complex_features_passes_every_check() {
        let mut rng = Rng::new(24);
        for (b, f, d) in [(2, 5, 3), (1, 9, 1), (3, 4, 6)] {
            check(
                &ComplexFeatures,
                vec![Arg::seq(&[b, f, d, 2], 1, &mut rng)],
                Some(1),
            );
        }
    }

    #[test]
    fn infer_errors_have_their_variant() {
        let ids = ty(DType::I64, vec![Dim::Batch, Dim::Seq]);
        for op in [
            &Rfft { n: 8 } as &dyn OpDef,
            &Irfft { n: 8 },
            &ComplexFeatures,
        ] {
            assert_eq!(
                op.infer(std::slice::from_ref(&ids)),
                Err(InferError::TokenIds),
                "{}",
                op.name()
            );
        }
        assert_eq!(
            ComplexMul.infer(&[ids, fixed(&[5, 3, 2])]),
            Err(InferError::TokenIds)
        );
        let shape_error = |r: Result<TensorType, InferError>| {
            assert!(matches!(r, Err(InferError::Shapes(_))), "{r:?}");
        };
        shape_error(Rfft { n: 8 }.infer(&[fixed(&[2, 7, 3])]));
        shape_error(Rfft { n: 8 }.infer(&[fixed(&[8])]));
        shape_error(Irfft { n: 8 }.infer(&[fixed(&[2, 4, 3, 2])]));
        shape_error(Irfft { n: 8 }.infer(&[fixed(&[2, 5, 3, 3])]));
        shape_error(ComplexMul.infer(&[fixed(&[2, 5, 3, 2]), fixed(&[4, 3, 2])]));
        shape_error(ComplexFeatures.infer(&[fixed(&[2, 5, 3, 1])]));
        assert_eq!(
            Rfft { n: 8 }.infer(&[fixed(&[8, 3])]).unwrap(),
            fixed(&[5, 3, 2])
        );
    }
}
