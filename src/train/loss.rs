//! Losses: cross-entropy with label smoothing, the multi-scale distribution loss, and the
//! validation loss.

use crate::runtime::{tokens_tensor, Runtime};
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// Mean cross-entropy over all positions, with label smoothing ε (PyTorch semantics: the
/// target is (1 − ε)·one-hot + ε/K); one fused kernel on the CPU.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, smoothing: f64) -> Tensor<1> {
    let targets = targets_of(&logits, targets);
    crate::runtime::fused::cross_entropy(logits, targets, smoothing).mean()
}

/// The targets the logits predict. An encoder-decoder's logits cover only the target part of
/// each row: its last positions.
fn targets_of(logits: &Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2, Int> {
    let (s, t) = (logits.dims()[1], targets.dims()[1]);
    if t > s {
        targets.narrow(1, t - s, s)
    } else {
        targets
    }
}

/// The multi-scale distribution loss (see [`crate::spec::recipe::DistributionLoss`]): the
/// mean over `scales` of KL(target histogram ‖ mean predicted probability) with the classes
/// cut into that many contiguous bins (class c of V in bin ⌊c·s/V⌋).
pub fn distribution_loss(logits: Tensor<3>, targets: Tensor<2, Int>, scales: &[u32]) -> Tensor<1> {
    let v = logits.dims()[2];
    let targets = targets_of(&logits, targets);
    let device = logits.device();
    let p = softmax(logits, 2)
        .reshape([-1, v as i32])
        .mean_dim(0)
        .reshape([v]);
    // Bin masses as differences of a cumulative sum, in f64: in f32 a bin of mass ~1e-7 (a
    // large vocabulary at a fine scale) would drown in the sum's rounding.
    let cum = p.cast(burn::tensor::FloatDType::F64).cumsum(0);
    let ys: Vec<i64> = targets
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    let n = ys.len().max(1) as f64;
    let mut total: Option<Tensor<1>> = None;
    for &bins in scales {
        let bins = (bins as usize).clamp(1, v);
        // Bin b holds classes ⌈b·V/s⌉ ..= ⌈(b+1)·V/s⌉ − 1.
        let ends: Vec<i64> = (0..bins)
            .map(|b| ((b + 1) * v).div_ceil(bins) as i64 - 1)
            .collect();
        let at_end = cum
            .clone()
            .select(0, Tensor::<1, Int>::from_ints(ends.as_slice(), &device));
        let before = Tensor::cat(
            vec![
                Tensor::<1>::zeros([1], &device).cast(burn::tensor::FloatDType::F64),
                at_end.clone().narrow(0, 0, bins - 1),
            ],
            0,
        );
        let q = (at_end - before)
            .clamp_min(1e-12)
            .cast(burn::tensor::FloatDType::F32);
        let mut hist = vec![0f64; bins];
        for &y in &ys {
            hist[(y.max(0) as usize * bins / v).min(bins - 1)] += 1.0 / n;
        }
        // Σ t ln t is a constant; − Σ t ln q carries the gradient.
        let entropy: f64 = hist.iter().filter(|&&h| h > 0.0).map(|h| h * h.ln()).sum();
        let w = Tensor::<1>::from_data(
            TensorData::new(hist.iter().map(|&h| h as f32).collect::<Vec<_>>(), [bins]),
            &device,
        );
        let kl = (w * q.log()).sum().neg().add_scalar(entropy);
        total = Some(match total {
            Some(a) => a + kl,
            None => kl,
        });
    }
    total.map_or_else(
        || Tensor::zeros([1], &device),
        |t| t.div_scalar(scales.len() as f64),
    )
}

pub(crate) fn split_xy(batch: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let x: Vec<Vec<i64>> = batch.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
    let y: Vec<Vec<i64>> = batch.iter().map(|s| s[1..].to_vec()).collect();
    (tokens_tensor(&x, device), tokens_tensor(&y, device))
}

/// Mean validation loss over `data` in chunks of `batch`.
pub fn eval_loss(rt: &Runtime, data: &[Vec<i64>], batch: usize) -> f64 {
    let inner = rt.device.clone().without_autodiff();
    let (mut total, mut n) = (0.0, 0usize);
    for chunk in data.chunks(batch.max(1)) {
        let (x, y) = split_xy(chunk, &inner);
        let l: f32 = cross_entropy(
            rt.forward(x.autodiff_if(&rt.device), false),
            y.autodiff_if(&rt.device),
            0.0,
        )
        .into_scalar();
        total += f64::from(l) * chunk.len() as f64;
        n += chunk.len();
    }
    total / n.max(1) as f64
}

trait AutodiffIf {
    fn autodiff_if(self, device: &Device) -> Self;
}
impl AutodiffIf for Tensor<2, Int> {
    fn autodiff_if(self, device: &Device) -> Self {
        if device.is_autodiff() {
            self.autodiff()
        } else {
            self
        }
    }
}
