//! Normalizations over the last axis: LayerNorm, RMSNorm, and the L2 normalization of
//! QK-norm.

use super::{float_input, port, shapes, InferError, OpDef, OpState, RefTensor};
use crate::ir::{DType, Mixing, Real, TensorType};
use crate::runtime::ops::Ctx;
use crate::runtime::{fused, V};

/// A normalization over the last axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `(x − mean) / sqrt(var + eps) · weight + bias`.
    Layer {
        /// Added to the variance.
        eps: Real,
    },
    /// `x / sqrt(mean(x²) + eps) · weight`.
    Rms {
        /// Added to the mean square.
        eps: Real,
    },
    /// `x / max(‖x‖, 1e-12)` (no parameters; `[b, h, s, d]`, for QK-norm).
    L2,
}

impl OpDef for Norm {
    fn name(&self) -> &'static str {
        match self {
            Norm::Layer { .. } => "layernorm",
            Norm::Rms { .. } => "rmsnorm",
            Norm::L2 => "l2norm",
        }
    }

    fn attrs(&self) -> String {
        match self {
            Norm::Layer { eps } | Norm::Rms { eps } => format!("eps={eps}"),
            Norm::L2 => String::new(),
        }
    }

    fn ports(&self) -> &'static [&'static str] {
        match self {
            Norm::Layer { .. } => &["x", "weight", "bias"],
            Norm::Rms { .. } => &["x", "weight"],
            Norm::L2 => &["x"],
        }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, InferError> {
        let p = self.ports();
        let x = float_input(port(p, ins, "x"))?;
        let params = p.iter().filter(|n| **n != "x").map(|n| port(p, ins, n));
        for g in params {
            if g.shape.len() != 1 || Some(&g.shape[0]) != x.shape.last() {
                return Err(shapes("norm parameters do not match the input width"));
            }
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
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> Result<RefTensor, String> {
        let p = self.ports();
        let x = *port(p, ins, "x");
        let w = *x.shape.last().unwrap_or(&1);
        let mut out = RefTensor::zeros(&x.shape);
        if w == 0 {
            return Ok(out);
        }
        for (src, dst) in x.data.chunks(w).zip(out.data.chunks_mut(w)) {
            let n = w as f64;
            match self {
                Norm::Layer { eps } => {
                    let (g, b) = (port(p, ins, "weight"), port(p, ins, "bias"));
                    let mean = src.iter().sum::<f64>() / n;
                    let var = src.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    for (j, v) in src.iter().enumerate() {
                        dst[j] = (v - mean) / (var + eps.0).sqrt() * g.data[j] + b.data[j];
                    }
                }
                Norm::Rms { eps } => {
                    let g = port(p, ins, "weight");
                    let ms = src.iter().map(|v| v * v).sum::<f64>() / n;
                    for (j, v) in src.iter().enumerate() {
                        dst[j] = v / (ms + eps.0).sqrt() * g.data[j];
                    }
                }
                Norm::L2 => {
                    let norm = src.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                    for (j, v) in src.iter().enumerate() {
                        dst[j] = v / norm;
                    }
                }
            }
        }
        Ok(out)
    }

    fn forward(&self, ins: &[&V], _: &Ctx) -> V {
        let p = self.ports();
        let x = port(p, ins, "x");
        match self {
            Norm::Layer { eps } => V::F3(fused::layernorm(
                x.f3(),
                port(p, ins, "weight").f1(),
                port(p, ins, "bias").f1(),
                eps.0,
            )),
            Norm::Rms { eps } => V::F3(fused::rmsnorm(x.f3(), port(p, ins, "weight").f1(), eps.0)),
            Norm::L2 => {
                let x = x.f4();
                let norm = x.clone().powi_scalar(2).sum_dim(3).sqrt().clamp_min(1e-12);
                V::F4(x / norm)
            }
        }
    }

    fn decode(&self, ins: &[&V], ctx: &Ctx, _: &mut Option<Box<dyn OpState>>) -> V {
        self.forward(ins, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, host, random, value};
    use super::*;
    use crate::ir::Dim;
    use crate::runtime::DeviceKind;
    use crate::util::Rng;
    use burn::prelude::*;

    const ALL: [Norm; 3] = [
        Norm::Layer { eps: Real(1e-5) },
        Norm::Rms { eps: Real(1e-6) },
        Norm::L2,
    ];

    fn ty(shape: &[Dim]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    /// The op's input shapes: x `[b, s, d]` (`[b, 2, s, d]` for L2), weight and bias `[d]`.
    fn shapes(op: &Norm, b: usize, s: usize, d: usize) -> Vec<Vec<usize>> {
        let x = match op {
            Norm::L2 => vec![b, 2, s, d],
            _ => vec![b, s, d],
        };
        std::iter::once(x)
            .chain(std::iter::repeat_n(vec![d], op.ports().len() - 1))
            .collect()
    }

    fn run(op: &Norm, ins: &[RefTensor], device: &Device) -> Vec<f32> {
        let vs: Vec<V> = ins.iter().map(|t| value(t, device)).collect();
        let refs: Vec<&V> = vs.iter().collect();
        let s = ins[0].shape[ins[0].shape.len() - 2];
        host(op.forward(&refs, &ctx(device, ins[0].shape[0], s)))
    }

    #[test]
    fn shapes_are_inferred_and_mismatches_explained() {
        for op in ALL {
            let x = ty(&[Dim::Batch, Dim::Seq, Dim::Fixed(8)]);
            let w = ty(&[Dim::Fixed(8)]);
            let ins: Vec<TensorType> = std::iter::once(x.clone())
                .chain(std::iter::repeat_n(w, op.ports().len() - 1))
                .collect();
            assert_eq!(op.infer(&ins).unwrap(), x, "{op:?}");
            let ids = TensorType {
                dtype: DType::I64,
                shape: vec![Dim::Batch, Dim::Seq],
            };
            let mut bad = ins.clone();
            bad[0] = ids;
            assert!(
                op.infer(&bad).unwrap_err() == InferError::TokenIds,
                "{op:?}"
            );
            if ins.len() > 1 {
                let mut bad = ins.clone();
                bad[1] = ty(&[Dim::Fixed(7)]);
                assert!(
                    op.infer(&bad)
                        .unwrap_err()
                        .to_string()
                        .contains("do not match"),
                    "{op:?}"
                );
            }
            assert_eq!(op.mixing(), Mixing::Pointwise);
            assert_eq!(op.matmul_flops(&[], 4, 16), 0);
        }
    }

    #[test]
    fn the_burn_forward_matches_the_float64_reference_on_random_shapes() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(7);
        for op in ALL {
            for (b, s, d) in [(1, 1, 1), (2, 5, 8), (3, 7, 33), (1, 3, 128)] {
                let ins: Vec<RefTensor> = shapes(&op, b, s, d)
                    .iter()
                    .map(|sh| random(sh, &mut rng))
                    .collect();
                let want = op.reference(&ins.iter().collect::<Vec<_>>()).unwrap();
                let got = run(&op, &ins, &device);
                assert_eq!(got.len(), want.data.len());
                for (g, w) in got.iter().zip(&want.data) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "{op:?} [{b}, {s}, {d}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_reach_every_input() {
        let device = DeviceKind::Cpu.device(true);
        let mut rng = Rng::new(3);
        for op in ALL {
            let ins: Vec<RefTensor> = shapes(&op, 2, 4, 6)
                .iter()
                .map(|sh| random(sh, &mut rng))
                .collect();
            let vs: Vec<V> = ins
                .iter()
                .map(|t| value(t, &device).require_grad())
                .collect();
            let refs: Vec<&V> = vs.iter().collect();
            let y = op.forward(&refs, &ctx(&device, 2, 4));
            // A loss that is not invariant to the normalization (a weighted sum).
            let loss = match y {
                V::F3(t) => (t.clone() * t.clone().tanh()).sum(),
                V::F4(t) => (t.clone() * t.clone().tanh()).sum(),
                other => panic!("unexpected {other:?}"),
            };
            let grads = loss.backward();
            for (name, v) in op.ports().iter().zip(&vs) {
                let g = v
                    .grad(&grads)
                    .unwrap_or_else(|| panic!("{op:?}: no gradient for `{name}`"));
                let g = host(g);
                assert!(g.iter().all(|x| x.is_finite()), "{op:?} `{name}`");
                assert!(g.iter().any(|x| *x != 0.0), "{op:?} `{name}` is all zero");
            }
        }
    }

    #[test]
    fn a_later_position_changes_no_earlier_output_and_a_prefix_decodes_alike() {
        let device = DeviceKind::Cpu.device(false);
        let mut rng = Rng::new(11);
        for op in ALL {
            assert!(op.incremental());
            let ins: Vec<RefTensor> = shapes(&op, 2, 6, 5)
                .iter()
                .map(|sh| random(sh, &mut rng))
                .collect();
            let whole = run(&op, &ins, &device);
            // Perturb the last position of x: the outputs of the others do not move.
            let mut moved = ins.clone();
            let x = &mut moved[0];
            let (s, d) = (x.shape[x.shape.len() - 2], x.shape[x.shape.len() - 1]);
            for (i, v) in x.data.iter_mut().enumerate() {
                if (i / d) % s == s - 1 {
                    *v += 3.0;
                }
            }
            let after = run(&op, &moved, &device);
            for (i, (a, b)) in whole.iter().zip(&after).enumerate() {
                if (i / d) % s != s - 1 {
                    assert_eq!(a, b, "{op:?}: output {i} saw a later position");
                }
            }
            // The first 4 positions alone give the same outputs (what a decoding step sees).
            let mut prefix = ins.clone();
            let x = &mut prefix[0];
            let mut shape = x.shape.clone();
            let r = shape.len();
            shape[r - 2] = 4;
            x.data = x
                .data
                .chunks(s * d)
                .flat_map(|c| c[..4 * d].to_vec())
                .collect();
            x.shape = shape;
            let part = run(&op, &prefix, &device);
            let kept: Vec<f32> = whole
                .chunks(s * d)
                .flat_map(|c| c[..4 * d].to_vec())
                .collect();
            for (a, b) in part.iter().zip(&kept) {
                assert!((a - b).abs() < 1e-6, "{op:?}: {a} vs {b}");
            }
        }
    }
}
