//! RMSNorm and LayerNorm over the last axis, and their gradients.

use crate::math::sum;
use crate::{add, rows_per_task};
use rayon::prelude::*;

/// A row normalization over the last axis: RMSNorm `x · r · w` with r = 1/sqrt(mean(x²) + eps),
/// or, when `center`, LayerNorm `(x − mean) · r · w + b` with r = 1/sqrt(var + eps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    /// Subtract each row's mean first (LayerNorm).
    pub center: bool,
    /// Added to the variance (or mean square).
    pub eps: f32,
}

vectorized! {
    /// One row: writes y and returns (mean, r); the mean is 0 without centering.
    pub(crate) fn norm_row(x: &[f32], w: &[f32], b: &[f32], n: Norm, y: &mut [f32]) -> (f32, f32) {
        let d = x.len() as f32;
        let mu = if n.center { sum(x) / d } else { 0.0 };
        let mut acc = [0.0f32; 8];
        let (n8, len) = (x.len() / 8 * 8, x.len());
        for i in (0..n8).step_by(8) {
            for l in 0..8 {
                let c = x[i + l] - mu;
                acc[l] += c * c;
            }
        }
        let sq = acc.iter().sum::<f32>() + (n8..len).map(|i| (x[i] - mu) * (x[i] - mu)).sum::<f32>();
        let r = 1.0 / (sq / d + n.eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = (x - mu) * r * w;
        }
        for (y, &b) in y.iter_mut().zip(b) {
            *y += b;
        }
        (mu, r)
    }

    /// One row's gradients from the output's `g`: with x̂ = (x − mean)·r and u = g·w,
    /// `dx = r (u − mean(u) − x̂ mean(u x̂))` (RMSNorm: without the mean(u) term); `dw += g x̂`,
    /// `db += g` (when `db` is not empty).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_row_backward(
        x: &[f32],
        w: &[f32],
        g: &[f32],
        stat: (f32, f32),
        center: bool,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let d = x.len() as f32;
        let (mu, r) = stat;
        let (mut su, mut sux) = ([0.0f32; 8], [0.0f32; 8]);
        let (n8, len) = (x.len() / 8 * 8, x.len());
        for i in (0..n8).step_by(8) {
            for l in 0..8 {
                let u = g[i + l] * w[i + l];
                su[l] += u;
                sux[l] += u * (x[i + l] - mu) * r;
            }
        }
        let rest = n8..len;
        let su = su.iter().sum::<f32>() + rest.clone().map(|i| g[i] * w[i]).sum::<f32>();
        let sux = sux.iter().sum::<f32>()
            + rest.map(|i| g[i] * w[i] * (x[i] - mu) * r).sum::<f32>();
        let (mean_u, mean_ux) = (if center { su / d } else { 0.0 }, sux / d);
        for (((dx, &x), &w), &g) in dx.iter_mut().zip(x).zip(w).zip(g) {
            *dx = r * (g * w - mean_u - (x - mu) * r * mean_ux);
        }
        for ((dw, &x), &g) in dw.iter_mut().zip(x).zip(g) {
            *dw += g * (x - mu) * r;
        }
        for (db, &g) in db.iter_mut().zip(g) {
            *db += g;
        }
    }
}

/// Normalizes each row of `d = w.len()` elements (see [`Norm`]), plus `b` when given; each
/// row's (mean, r) goes to `stats` (two per row), what [`norm_backward`] reads.
pub fn norm(x: &[f32], w: &[f32], b: Option<&[f32]>, n: Norm, y: &mut [f32], stats: &mut [f32]) {
    let d = w.len();
    let b = b.unwrap_or(&[]);
    assert!(b.is_empty() || b.len() == d);
    let per = rows_per_task(d);
    y.par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d))
        .zip(stats.par_chunks_mut(2 * per))
        .for_each(|((y, x), st)| {
            for ((y, x), st) in y.chunks_mut(d).zip(x.chunks(d)).zip(st.chunks_mut(2)) {
                (st[0], st[1]) = norm_row(x, w, b, n, y);
            }
        });
}

/// The gradients of [`norm`]: `dx` (written), and the weight's and (with `bias`) the bias's
/// gradients (returned).
pub fn norm_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    stats: &[f32],
    (center, bias): (bool, bool),
    dx: &mut [f32],
) -> (Vec<f32>, Option<Vec<f32>>) {
    let d = w.len();
    let per = rows_per_task(d);
    let nb = if bias { d } else { 0 };
    // Each task accumulates its own partial weight and bias gradients ([dw | db]); they are
    // summed after.
    let acc = dx
        .par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d).zip(g.par_chunks(per * d)))
        .zip(stats.par_chunks(2 * per))
        .fold(
            || vec![0.0f32; d + nb],
            |mut acc, ((dx, (x, g)), st)| {
                let (dw, db) = acc.split_at_mut(d);
                let rows = dx.chunks_mut(d).zip(x.chunks(d).zip(g.chunks(d)));
                for ((dx, (x, g)), st) in rows.zip(st.chunks(2)) {
                    norm_row_backward(x, w, g, (st[0], st[1]), center, dx, dw, db);
                }
                acc
            },
        )
        .reduce(|| vec![0.0f32; d + nb], add);
    let (dw, db) = acc.split_at(d);
    (dw.to_vec(), bias.then(|| db.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// RMSNorm and LayerNorm of rows shorter and longer than the 8 lanes.
    fn cases() -> impl Iterator<Item = (Norm, usize, bool)> {
        [
            (false, 5, false),
            (false, 19, false),
            (true, 5, true),
            (true, 19, true),
        ]
        .into_iter()
        .map(|(center, d, bias)| (Norm { center, eps: 1e-5 }, d, bias))
    }

    #[test]
    fn rows_are_normalized() {
        for (n, d, bias) in cases() {
            let rows = 7;
            let (x, w, b) = (data(rows * d, 1, 3.0), data(d, 2, 1.5), data(d, 3, 1.0));
            let b = bias.then_some(&b[..]);
            let (mut y, mut stats) = (vec![0.0f32; x.len()], vec![0.0f32; 2 * rows]);
            norm(&x, &w, b, n, &mut y, &mut stats);
            let mut want = Vec::new();
            for x in x.chunks(d) {
                let x: Vec<f64> = x.iter().map(|&x| x as f64).collect();
                let mu = if n.center {
                    x.iter().sum::<f64>() / d as f64
                } else {
                    0.0
                };
                let var = x.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / d as f64;
                let r = 1.0 / (var + n.eps as f64).sqrt();
                for j in 0..d {
                    let shift = b.map_or(0.0, |b| b[j] as f64);
                    want.push((x[j] - mu) * r * w[j] as f64 + shift);
                }
            }
            assert_close(&format!("{n:?} d {d}"), &y, &want, 1e-5);
        }
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        for (n, d, bias) in cases() {
            let rows = 3;
            let (x, w, b) = (data(rows * d, 4, 2.0), data(d, 5, 1.5), data(d, 6, 1.0));
            let gy = data(rows * d, 7, 1.0);
            let forward = |x: &[f32], w: &[f32], b: &[f32]| {
                let (mut y, mut stats) = (vec![0.0f32; x.len()], vec![0.0f32; 2 * rows]);
                norm(x, w, bias.then_some(b), n, &mut y, &mut stats);
                (y, stats)
            };
            let (_, stats) = forward(&x, &w, &b);
            let mut dx = vec![0.0f32; x.len()];
            let (dw, db) = norm_backward(&x, &w, &gy, &stats, (n.center, bias), &mut dx);
            let case = format!("{n:?} d {d}");
            check_grad(&format!("{case} dx"), &x, &dx, |x| {
                weighted(&forward(x, &w, &b).0, &gy)
            });
            check_grad(&format!("{case} dw"), &w, &dw, |w| {
                weighted(&forward(&x, w, &b).0, &gy)
            });
            match db {
                Some(db) => check_grad(&format!("{case} db"), &b, &db, |b| {
                    weighted(&forward(&x, &w, b).0, &gy)
                }),
                None => assert!(!bias),
            }
        }
    }
}
