//! Attention weights of the variants: hard (argmax, straight-through in training) and
//! entropy-adaptive, for the Burn forward and, separately (no shared code), for the float64
//! reference.

use burn::prelude::*;
use burn::tensor::activation;

pub(super) use crate::runtime::fused::hard_weights;

/// The entropy-adaptive temperature of Veličković et al. (2024): rows whose softmax entropy H
/// exceeds 0.5 are recomputed as softmax(β·scores) with β = max(poly(H), 1).
/// Masked scores (−∞) count as −1e30: the same weights (0), but a finite gradient of β·scores
/// with respect to β (0 · −∞ would make it, and every gradient before it, NaN).
pub(super) fn adaptive_softmax(scores: Tensor<4>) -> Tensor<4> {
    let scores = scores.clamp_min(-1e30);
    let p = activation::softmax(scores.clone(), 3);
    let h = (p.clone() * p.clamp_min(1e-30).log()).sum_dim(3).neg();
    let poly = ADAPTIVE_POLY
        .iter()
        .fold(h.zeros_like(), |acc, &c| acc * h.clone() + c);
    let beta = poly
        .clamp_min(1.0)
        .mask_where(h.clone().lower_equal_elem(0.5), h.ones_like());
    activation::softmax(scores * beta, 3)
}

/// Coefficients of β(H), highest power first (Veličković et al. 2024, `poly_fit`).
const ADAPTIVE_POLY: [f64; 5] = [-0.037, 0.481, -2.3, 4.917, -1.791];

/// The float64 reference's attention weights of one row of logits (inference): softmax;
/// one-hot on the maximum for hard attention (ties share); softmax(β·logits) with the
/// entropy-adaptive β of Veličković et al. (2024) when `adaptive`.
pub(super) fn attention_weights(logits: &[f64], hard: bool, adaptive: bool) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hard {
        let hits = logits.iter().filter(|&&l| l == m).count() as f64;
        return logits
            .iter()
            .map(|&l| if l == m { 1.0 / hits } else { 0.0 })
            .collect();
    }
    let softmax = |beta: f64| -> Vec<f64> {
        let e: Vec<f64> = logits.iter().map(|l| (beta * (l - m)).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let p = softmax(1.0);
    if !adaptive {
        return p;
    }
    let h: f64 = -p
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|x| x * x.ln())
        .sum::<f64>();
    if h <= 0.5 {
        return p;
    }
    let poly = [-0.037, 0.481, -2.3, 4.917, -1.791]
        .iter()
        .fold(0.0, |acc, c| acc * h + c);
    softmax(poly.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::host;
    use crate::runtime::V;

    #[test]
    fn hard_weights_are_one_hot_with_the_softmax_gradient() {
        let device = Device::flex().autodiff();
        let data = vec![0.3f32, 1.2, -0.5, 1.2, 2.0, 0.1, 0.0, -1.0];
        let make = || {
            Tensor::<4>::from_data(TensorData::new(data.clone(), [1, 1, 2, 4]), &device)
                .require_grad()
        };
        let w = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, -2.0, 0.5, 3.0, 0.7, 1.5, -1.0, 2.0],
                [1, 1, 2, 4],
            ),
            &device,
        );
        // Row 0 ties at 1.2 (the weight is shared), row 1 peaks at 2.0.
        let s = make();
        let h = hard_weights(s.clone(), true);
        assert_eq!(
            host(V::F4(h.clone())),
            vec![0.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0]
        );
        let g_hard = s.grad(&(h * w.clone()).sum().backward()).unwrap();
        let s = make();
        let p = activation::softmax(s.clone(), 3);
        let g_soft = s.grad(&(p * w).sum().backward()).unwrap();
        let (a, b) = (host(V::F4(g_hard)), host(V::F4(g_soft)));
        assert!(a.iter().any(|x| x.abs() > 1e-3), "the gradient is not zero");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        // At inference the weights are hard and carry no softmax term.
        assert_eq!(
            host(V::F4(hard_weights(make(), false)))[4..],
            [1.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn adaptive_softmax_sharpens_only_high_entropy_rows() {
        let device = Device::flex();
        // Row 0: one logit of 1 among 8 (entropy ≈ 1.99 > 0.5); row 1: a confident row.
        let mut data = vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        data.extend([12.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let t = Tensor::<4>::from_data(TensorData::new(data, [1, 1, 2, 8]), &device);
        let got = host(V::F4(adaptive_softmax(t)));
        let soft = |beta: f64, top: f64| {
            let z = (beta * top).exp() + 7.0;
            ((beta * top).exp() / z, 1.0 / z)
        };
        let (p1, p0) = soft(1.0, 1.0);
        let h = -(p1 * p1.ln() + 7.0 * p0 * p0.ln());
        let beta = -0.037 * h.powi(4) + 0.481 * h.powi(3) - 2.3 * h.powi(2) + 4.917 * h - 1.791;
        assert!(beta > 1.0, "β = {beta}");
        let (q1, q0) = soft(beta, 1.0);
        assert!((f64::from(got[0]) - q1).abs() < 1e-6 && (f64::from(got[1]) - q0).abs() < 1e-6);
        let (r1, _) = soft(1.0, 12.0);
        assert!(
            (f64::from(got[8]) - r1).abs() < 1e-6,
            "low-entropy rows keep β = 1"
        );
    }

    #[test]
    fn the_reference_weights_sharpen_only_high_entropy_rows() {
        let soft = |beta: f64, top: f64| {
            let z = (beta * top).exp() + 7.0;
            ((beta * top).exp() / z, 1.0 / z)
        };
        let (p1, p0) = soft(1.0, 1.0);
        let h = -(p1 * p1.ln() + 7.0 * p0 * p0.ln());
        let beta = -0.037 * h.powi(4) + 0.481 * h.powi(3) - 2.3 * h.powi(2) + 4.917 * h - 1.791;
        let (q1, q0) = soft(beta, 1.0);
        let w = attention_weights(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], false, true);
        assert!((w[0] - q1).abs() < 1e-12 && (w[1] - q0).abs() < 1e-12);
        // A confident row keeps β = 1; hard weights share ties.
        let w = attention_weights(&[12.0, 0.0, 0.0], false, true);
        assert_eq!(w, attention_weights(&[12.0, 0.0, 0.0], false, false));
        assert_eq!(
            attention_weights(&[1.0, 2.0, 2.0], true, false),
            [0.0, 0.5, 0.5]
        );
    }
}
