//! Linear maps `x · w (+ bias)` and their gradients.

use crate::gemm::{product, Mat};
use crate::{add, rows_per_task};
use rayon::prelude::*;

/// A linear map of `n` rows: `x [n, i] · w [i, o] (+ bias [o])` → `[n, o]`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f32> {
    product(n, o, i, Mat::rows(x, i), Mat::rows(w, o), bias)
}

/// The gradients of [`linear`] from the output's gradient `g [n, o]`: `dx = g · wᵀ`,
/// `dw = xᵀ · g`, `db = Σ_rows g`, each only when asked for.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    (n, i, o): (usize, usize, usize),
    want: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let dx = want[0].then(|| product(n, i, o, Mat::rows(g, o), Mat::transposed(w, o), None));
    let dw = want[1].then(|| product(i, o, n, Mat::transposed(x, i), Mat::rows(g, o), None));
    let db = want[2].then(|| {
        g.par_chunks(rows_per_task(o) * o)
            .map(|rows| {
                let mut acc = vec![0.0f32; o];
                for row in rows.chunks(o) {
                    acc.iter_mut().zip(row).for_each(|(a, r)| *a += r);
                }
                acc
            })
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0.0f32; o], add)
    });
    [dx, dw, db]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data};

    /// The bias gradient sums the rows' partial sums in task order, so repeated runs agree to
    /// the bit on a pool whose threads steal work differently each time (rayon's fold/reduce
    /// grouped the rows as the stealing happened to split them).
    #[test]
    fn the_bias_gradient_is_the_same_to_the_bit_on_every_run() {
        let (n, i, o) = (4099, 3, 37);
        let (x, w, g) = (
            data(n * i, 1, 1.0),
            data(i * o, 2, 1.0),
            data(n * o, 3, 1e3),
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let first = pool.install(|| linear_backward(&x, &w, &g, (n, i, o), [false, false, true]));
        for _ in 0..40 {
            let again =
                pool.install(|| linear_backward(&x, &w, &g, (n, i, o), [false, false, true]));
            assert_eq!(again[2], first[2]);
        }
    }

    /// `a [m, k] · b [k, n]` in f64.
    fn naive(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                    .sum();
            }
        }
        out
    }

    fn transpose(a: &[f32], (r, c): (usize, usize)) -> Vec<f32> {
        (0..c)
            .flat_map(|j| (0..r).map(move |i| a[i * c + j]))
            .collect()
    }

    #[test]
    fn the_map_and_its_gradients_match_plain_products() {
        for (n, i, o) in [(1, 1, 1), (5, 3, 7), (33, 17, 9)] {
            let (x, w, bias) = (data(n * i, 1, 2.0), data(i * o, 2, 1.0), data(o, 3, 1.0));
            let xw = naive(&x, &w, (n, i, o));
            let y = linear(&x, &w, None, n, i, o);
            assert_close("y", &y, &xw, 1e-5);
            let y = linear(&x, &w, Some(&bias), n, i, o);
            let want: Vec<f64> = xw
                .iter()
                .enumerate()
                .map(|(at, v)| v + bias[at % o] as f64)
                .collect();
            assert_close("y + bias", &y, &want, 1e-5);
            let g = data(n * o, 4, 1.0);
            let [dx, dw, db] = linear_backward(&x, &w, &g, (n, i, o), [true; 3]);
            let want = naive(&g, &transpose(&w, (i, o)), (n, o, i));
            assert_close("dx", &dx.unwrap(), &want, 1e-5);
            let want = naive(&transpose(&x, (n, i)), &g, (i, n, o));
            assert_close("dw", &dw.unwrap(), &want, 1e-5);
            let want: Vec<f64> = (0..o)
                .map(|j| (0..n).map(|r| g[r * o + j] as f64).sum())
                .collect();
            assert_close("db", &db.unwrap(), &want, 1e-5);
            let none = linear_backward(&x, &w, &g, (n, i, o), [false, true, false]);
            assert!(none[0].is_none() && none[1].is_some() && none[2].is_none());
        }
    }
}
