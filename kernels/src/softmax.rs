//! Row softmax with a causal limit (attention's scores), and its gradient.

use crate::math::{dot, exp, max, sum};
use crate::rows_per_task;
use rayon::prelude::*;

/// Which keys a row of attention scores may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    /// Rows per query group: row r is query r mod `queries` (grouped attention stacks the G
    /// query heads of a KV head as G·s rows).
    pub queries: usize,
    /// Causal: query i sees keys j ≤ `offset` + i; otherwise every key.
    pub causal: bool,
    /// Positions before this call (incremental decoding).
    pub offset: usize,
}

impl Visible {
    /// Keys visible to row `r` of a matrix with `t` columns.
    #[inline]
    pub(crate) fn limit(&self, r: usize, t: usize) -> usize {
        if self.causal {
            (self.offset + r % self.queries.max(1) + 1).min(t)
        } else {
            t
        }
    }
}

/// Softmax of each row of `t` elements of `x` (matrices of `rows` rows laid end to end) over
/// the keys `vis` lets it see; hidden keys get 0.
pub fn softmax_rows(x: &[f32], t: usize, rows: usize, vis: Visible, y: &mut [f32]) {
    let per = rows_per_task(t);
    y.par_chunks_mut(per * t)
        .zip(x.par_chunks(per * t))
        .enumerate()
        .for_each(|(task, (y, x))| {
            y.copy_from_slice(x);
            for (i, y) in y.chunks_mut(t).enumerate() {
                softmax_in_place(y, vis.limit((task * per + i) % rows, t));
            }
        });
}

/// The gradient of [`softmax_rows`] from its output `y`: `dx = y (g − Σ g·y)` on the visible
/// keys; `dx` must be zero elsewhere.
pub fn softmax_rows_backward(
    y: &[f32],
    g: &[f32],
    t: usize,
    rows: usize,
    vis: Visible,
    dx: &mut [f32],
) {
    let per = rows_per_task(t);
    dx.par_chunks_mut(per * t)
        .zip(y.par_chunks(per * t).zip(g.par_chunks(per * t)))
        .enumerate()
        .for_each(|(task, (d, (y, g)))| {
            for (i, (d, (y, g))) in d
                .chunks_mut(t)
                .zip(y.chunks(t).zip(g.chunks(t)))
                .enumerate()
            {
                let n = vis.limit((task * per + i) % rows, t);
                d[..n].copy_from_slice(&g[..n]);
                softmax_grad_in_place(&y[..n], &mut d[..n]);
            }
        });
}

vectorized! {
    /// Softmax of `row[..n]` in place; `row[n..]` becomes 0. Returns the row's statistics
    /// `(max, 1 / Σ exp(x − max))`, from which [`softmax_from_stats`] computes the same values
    /// again.
    pub(crate) fn softmax_in_place(row: &mut [f32], n: usize) -> (f32, f32) {
        let (vis, hidden) = row.split_at_mut(n);
        let m = max(vis);
        for x in vis.iter_mut() {
            *x = exp(*x - m);
        }
        let inv = 1.0 / sum(vis);
        for x in vis.iter_mut() {
            *x *= inv;
        }
        hidden.fill(0.0);
        (m, inv)
    }
    /// The softmax of `row[..n]` in place from the statistics [`softmax_in_place`] returned
    /// for the same scores: `exp(x − max) · inv`, the same operations in the same order, so the
    /// same values to the bit; `row[n..]` becomes 0.
    pub(crate) fn softmax_from_stats(row: &mut [f32], n: usize, stats: (f32, f32)) {
        let (m, inv) = stats;
        let (vis, hidden) = row.split_at_mut(n);
        for x in vis.iter_mut() {
            *x = exp(*x - m) * inv;
        }
        hidden.fill(0.0);
    }
    /// `g ← y (g − Σ g·y)` in place (the softmax gradient from its output y).
    pub(crate) fn softmax_grad_in_place(y: &[f32], g: &mut [f32]) {
        let s = dot(y, g);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// Two query groups of 3 rows (grouped heads), causal after 1 earlier position, 5 keys;
    /// then every key visible.
    const CASES: [(usize, usize, Visible); 2] = [
        (
            6,
            5,
            Visible {
                queries: 3,
                causal: true,
                offset: 1,
            },
        ),
        (
            4,
            9,
            Visible {
                queries: 4,
                causal: false,
                offset: 0,
            },
        ),
    ];

    #[test]
    fn rows_are_softmaxes_over_the_visible_keys() {
        for (rows, t, vis) in CASES {
            // Two matrices laid end to end.
            let x = data(2 * rows * t, 1, 5.0);
            let mut y = vec![0.0f32; x.len()];
            softmax_rows(&x, t, rows, vis, &mut y);
            let mut want = vec![0.0f64; x.len()];
            for (r, (x, w)) in x.chunks(t).zip(want.chunks_mut(t)).enumerate() {
                let q = r % rows % vis.queries;
                let n = if vis.causal {
                    (vis.offset + q + 1).min(t)
                } else {
                    t
                };
                let z: f64 = x[..n].iter().map(|&x| (x as f64).exp()).sum();
                for (w, &x) in w[..n].iter_mut().zip(x) {
                    *w = (x as f64).exp() / z;
                }
            }
            assert_close("y", &y, &want, 1e-6);
        }
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        for (rows, t, vis) in CASES {
            let (x, w) = (data(rows * t, 2, 3.0), data(rows * t, 3, 1.0));
            let forward = |x: &[f32]| {
                let mut y = vec![0.0f32; x.len()];
                softmax_rows(x, t, rows, vis, &mut y);
                y
            };
            let mut dx = vec![0.0f32; x.len()];
            softmax_rows_backward(&forward(&x), &w, t, rows, vis, &mut dx);
            check_grad("dx", &x, &dx, |x| weighted(&forward(x), &w));
        }
    }
}
