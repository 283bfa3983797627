//! Cross-entropy over rows of logits (a language model's head over its vocabulary) with label
//! smoothing, and its gradient. The forward pass reads each row once and keeps only its
//! log-sum-exp; no log-probabilities are materialized, and the backward pass writes the
//! gradient once.

use crate::math::{exp, max, sum};
use crate::rows_per_task;
use rayon::prelude::*;

/// Per row of `v` logits: `loss = (1 − ε)(lse − x[y]) + ε (lse − mean x)`, the cross-entropy
/// against the target distribution (1 − ε)·one-hot(y) + ε/v (PyTorch's label smoothing), and
/// `lse`, the row's log-sum-exp, for the backward pass. Every target must lie in `0..v`.
pub fn cross_entropy(
    x: &[f32],
    v: usize,
    targets: &[usize],
    smoothing: f32,
    loss: &mut [f32],
    lse: &mut [f32],
) {
    let per = rows_per_task(v);
    loss.par_chunks_mut(per)
        .zip(lse.par_chunks_mut(per))
        .zip(x.par_chunks(per * v).zip(targets.par_chunks(per)))
        .for_each(|((loss, lse), (x, y))| {
            for (((l, z), x), &y) in loss.iter_mut().zip(lse).zip(x.chunks(v)).zip(y) {
                let (m, total) = row_stats(x);
                *z = m;
                *l = (1.0 - smoothing) * (m - x[y]) + smoothing * (m - total / v as f32);
            }
        });
}

/// The gradient of [`cross_entropy`] with respect to the logits, from the losses' gradients
/// `g` (one per row) and the rows' log-sum-exps: `dx = g (softmax(x) − (1 − ε)·one-hot(y) −
/// ε/v)`.
pub fn cross_entropy_backward(
    x: &[f32],
    v: usize,
    targets: &[usize],
    smoothing: f32,
    lse: &[f32],
    g: &[f32],
    dx: &mut [f32],
) {
    let per = rows_per_task(v);
    dx.par_chunks_mut(per * v)
        .zip(x.par_chunks(per * v))
        .zip(
            targets
                .par_chunks(per)
                .zip(lse.par_chunks(per).zip(g.par_chunks(per))),
        )
        .for_each(|((dx, x), (y, (lse, g)))| {
            for ((dx, x), (&y, (&z, &g))) in dx
                .chunks_mut(v)
                .zip(x.chunks(v))
                .zip(y.iter().zip(lse.iter().zip(g)))
            {
                row_grad(x, z, g, g * smoothing / v as f32, dx);
                dx[y] -= g * (1.0 - smoothing);
            }
        });
}

vectorized! {
    /// A row's log-sum-exp and the sum of its values.
    fn row_stats(x: &[f32]) -> (f32, f32) {
        let m = max(x);
        let mut acc = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().map(|&x| exp(x - m)).sum();
        for c in chunks {
            for l in 0..8 {
                acc[l] += exp(c[l] - m);
            }
        }
        (m + (acc.iter().sum::<f32>() + rest).ln(), sum(x))
    }
    /// `dx = g·exp(x − lse) − off` (the softmax scaled, less the smoothing's share).
    fn row_grad(x: &[f32], lse: f32, g: f32, off: f32, dx: &mut [f32]) {
        for (d, &x) in dx.iter_mut().zip(x) {
            *d = g * exp(x - lse) - off;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// The loss of every row in f64, from its definition.
    fn reference(x: &[f32], v: usize, targets: &[usize], eps: f64) -> Vec<f64> {
        x.chunks(v)
            .zip(targets)
            .map(|(x, &y)| {
                let z = x.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
                let mean_logp = x.iter().map(|&x| x as f64 - z).sum::<f64>() / v as f64;
                (1.0 - eps) * (z - x[y] as f64) - eps * mean_logp
            })
            .collect()
    }

    #[test]
    fn losses_match_their_definition_and_lse_is_kept() {
        // Row lengths below, at and past the 8 lanes; one large vocabulary.
        for (rows, v, eps) in [(5, 3, 0.0), (4, 8, 0.1), (3, 29, 0.0), (70, 50_257, 0.1)] {
            let x = data(rows * v, v as u64, 6.0);
            let targets: Vec<usize> = (0..rows).map(|r| (r * 7919) % v).collect();
            let (mut loss, mut lse) = (vec![0.0; rows], vec![0.0; rows]);
            cross_entropy(&x, v, &targets, eps as f32, &mut loss, &mut lse);
            assert_close("loss", &loss, &reference(&x, v, &targets, eps), 1e-5);
            let want: Vec<f64> = x
                .chunks(v)
                .map(|x| x.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln())
                .collect();
            assert_close("lse", &lse, &want, 1e-5);
        }
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        for (rows, v, eps) in [(4, 5, 0.0), (3, 11, 0.2)] {
            let x = data(rows * v, 3, 2.0);
            let targets: Vec<usize> = (0..rows).map(|r| (r * 3 + 1) % v).collect();
            let g = data(rows, 4, 1.0);
            let forward = |x: &[f32]| {
                let (mut loss, mut lse) = (vec![0.0; rows], vec![0.0; rows]);
                cross_entropy(x, v, &targets, eps, &mut loss, &mut lse);
                (loss, lse)
            };
            let (_, lse) = forward(&x);
            let mut dx = vec![0.0; x.len()];
            cross_entropy_backward(&x, v, &targets, eps, &lse, &g, &mut dx);
            check_grad("dx", &x, &dx, |x| weighted(&forward(x).0, &g));
        }
    }
}
