//! Normalizations over the last axis: LayerNorm, RMSNorm, and the L2 normalization of
//! QK-norm.

use super::{float_input, port, OpDef, RefTensor};
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

    fn mixing(&self) -> Mixing {
        Mixing::Pointwise
    }

    fn infer(&self, ins: &[TensorType]) -> Result<TensorType, String> {
        let x = float_input(port(self.ports(), ins, "x"))?;
        for g in &ins[1..] {
            if g.shape.len() != 1 || Some(&g.shape[0]) != x.shape.last() {
                return Err("norm parameters do not match the input width".into());
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

    fn incremental(&self) -> bool {
        true
    }

    fn reference(&self, ins: &[&RefTensor]) -> RefTensor {
        let p = self.ports();
        let x = *port(p, ins, "x");
        let w = *x.shape.last().unwrap_or(&1);
        let mut out = RefTensor::zeros(&x.shape);
        if w == 0 {
            return out;
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
        out
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
}
