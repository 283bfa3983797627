//! The LSTM recurrence and its backward pass through time.

use crate::gemm::{matmul, product, Mat};
use crate::math::{sigmoid, tanh};
use rayon::prelude::*;

/// The sizes of an LSTM recurrence: batch, positions, hidden width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Hidden width (the gates are 4 × this).
    pub hidden: usize,
}

impl LstmShape {
    /// Batch rows per rayon task: the batch split evenly over the pool, so that each task's
    /// recurrent product is one `[rows, h] × [h, 4h]` product per position.
    pub(crate) fn rows_per_task(&self) -> usize {
        let tasks = rayon::current_num_threads().clamp(1, self.batch.max(1));
        self.batch.div_ceil(tasks).max(1)
    }
}

vectorized! {
    /// One position's cell update of one row: `gates` `[4h]` holds the pre-activations
    /// (i, f, g, o) and gets the activations; `h`, `c` `[h]` are updated in place.
    fn lstm_cell(gates: &mut [f32], h: &mut [f32], c: &mut [f32]) {
        let w = h.len();
        let (i, rest) = gates.split_at_mut(w);
        let (f, rest) = rest.split_at_mut(w);
        let (g, o) = rest.split_at_mut(w);
        for j in 0..w {
            let (ij, fj, gj, oj) = (sigmoid(i[j]), sigmoid(f[j]), tanh(g[j]), sigmoid(o[j]));
            c[j] = fj * c[j] + ij * gj;
            h[j] = oj * tanh(c[j]);
            (i[j], f[j], g[j], o[j]) = (ij, fj, gj, oj);
        }
    }

    /// One position's cell update backward for one row. In: the activations `act` `[4h]`,
    /// this cell `c` and the previous one `c_prev`, the gradient `dh` of this h (from the
    /// output and the next position). `dc` holds the gradient of this cell from the next
    /// position and gets that of the previous cell; `dg` `[4h]` gets the gradients of the
    /// pre-activations.
    fn lstm_cell_backward(
        act: &[f32],
        c: &[f32],
        c_prev: &[f32],
        dh: &[f32],
        dc: &mut [f32],
        dg: &mut [f32],
    ) {
        let w = c.len();
        let (i, f, g, o) = (&act[..w], &act[w..2 * w], &act[2 * w..3 * w], &act[3 * w..]);
        let (di, rest) = dg.split_at_mut(w);
        let (df, rest) = rest.split_at_mut(w);
        let (dgg, d_o) = rest.split_at_mut(w);
        for j in 0..w {
            let tc = tanh(c[j]);
            let dcj = dc[j] + dh[j] * o[j] * (1.0 - tc * tc);
            d_o[j] = dh[j] * tc * o[j] * (1.0 - o[j]);
            di[j] = dcj * g[j] * i[j] * (1.0 - i[j]);
            dgg[j] = dcj * i[j] * (1.0 - g[j] * g[j]);
            df[j] = dcj * c_prev[j] * f[j] * (1.0 - f[j]);
            dc[j] = dcj * f[j];
        }
    }
}

/// The LSTM recurrence over `xw` `[batch, len, 4h]` (the input projection plus both biases,
/// gates in the order i, f, g, o) with the recurrent weight `w_hh` `[h, 4h]`: per position
/// `gates = xw_t + h · w_hh`, `c ← σ(f) c + σ(i) tanh(g)`, `h ← σ(o) tanh(c)`, `y_t = h`.
/// `h`, `c` `[batch, h]` hold the initial state in and the final one out; `y` is
/// `[batch, len, h]`. Runs per block of batch rows in parallel. With `keep`, also writes the
/// gate activations `[batch, len, 4h]` and every cell `[batch, len, h]` (what
/// [`lstm_backward`] reads).
pub fn lstm(
    xw: &[f32],
    w_hh: &[f32],
    sh: LstmShape,
    (h, c): (&mut [f32], &mut [f32]),
    y: &mut [f32],
    keep: Option<(&mut [f32], &mut [f32])>,
) {
    let LstmShape {
        batch,
        len: s,
        hidden: w,
    } = sh;
    assert!(xw.len() == batch * s * 4 * w && w_hh.len() == w * 4 * w);
    assert!(h.len() == batch * w && c.len() == batch * w && y.len() == batch * s * w);
    let rb = sh.rows_per_task();
    let blocks = batch.div_ceil(rb);
    // Each task's share of the kept activations and cells (empty slices when not kept).
    let (acts, cells): (Vec<&mut [f32]>, Vec<&mut [f32]>) = match keep {
        Some((a, cs)) => {
            assert!(a.len() == xw.len() && cs.len() == y.len());
            (
                a.chunks_mut(rb * s * 4 * w).collect(),
                cs.chunks_mut(rb * s * w).collect(),
            )
        }
        None => (0..blocks).map(|_| <_>::default()).unzip(),
    };
    let tasks: Vec<_> = h
        .chunks_mut(rb * w)
        .zip(c.chunks_mut(rb * w))
        .zip(y.chunks_mut(rb * s * w))
        .zip(acts.into_iter().zip(cells))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(blk, (((h, c), y), (acts, cells)))| {
            let rows = h.len() / w;
            let mut gates = vec![0.0f32; rows * 4 * w];
            for t in 0..s {
                for (r, g) in gates.chunks_exact_mut(4 * w).enumerate() {
                    let src = ((blk * rb + r) * s + t) * 4 * w;
                    g.copy_from_slice(&xw[src..src + 4 * w]);
                }
                let ops = (Mat::rows(h, w), Mat::rows(w_hh, 4 * w));
                matmul(&mut gates, 4 * w, (rows, 4 * w, w), ops, true, 1.0);
                for (r, g) in gates.chunks_exact_mut(4 * w).enumerate() {
                    let (hr, cr) = (&mut h[r * w..(r + 1) * w], &mut c[r * w..(r + 1) * w]);
                    lstm_cell(g, hr, cr);
                    let at = (r * s + t) * w;
                    y[at..at + w].copy_from_slice(hr);
                    if !cells.is_empty() {
                        cells[at..at + w].copy_from_slice(cr);
                        acts[4 * at..4 * (at + w)].copy_from_slice(g);
                    }
                }
            }
        });
}

/// The gradients of [`lstm`] from the gradient `gy` of y, the kept activations `acts` and
/// cells, the outputs `y` and the initial state `(h0, c0)`: returns the gradients of `xw`
/// (those of the gate pre-activations, `[batch, len, 4h]`) and of `w_hh`. Runs backward
/// through time per block of batch rows in parallel (each position's recurrent gradient is one
/// `[rows, 4h] × [4h, h]` product), then `w_hh`'s gradient as one product over all positions.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    w_hh: &[f32],
    sh: LstmShape,
    (h0, c0): (&[f32], &[f32]),
    (acts, cells, y): (&[f32], &[f32], &[f32]),
    gy: &[f32],
) -> [Vec<f32>; 2] {
    let LstmShape {
        batch,
        len: s,
        hidden: w,
    } = sh;
    assert!(acts.len() == batch * s * 4 * w && cells.len() == batch * s * w);
    assert!(y.len() == cells.len() && gy.len() == cells.len() && w_hh.len() == 4 * w * w);
    assert!(h0.len() == batch * w && c0.len() == batch * w);
    let rb = sh.rows_per_task();
    let mut dxw = vec![0.0f32; batch * s * 4 * w];
    dxw.par_chunks_mut(rb * s * 4 * w)
        .enumerate()
        .for_each(|(blk, dxw)| {
            let rows = dxw.len() / (s * 4 * w);
            let first = blk * rb;
            // The gradients flowing into h and c from the next position.
            let mut dh_next = vec![0.0f32; rows * w];
            let mut dc = vec![0.0f32; rows * w];
            let mut dh = vec![0.0f32; w];
            for t in (0..s).rev() {
                for r in 0..rows {
                    let at = ((first + r) * s + t) * w;
                    for ((d, &g), &n) in dh.iter_mut().zip(&gy[at..at + w]).zip(&dh_next[r * w..]) {
                        *d = g + n;
                    }
                    let c_prev = if t == 0 {
                        &c0[(first + r) * w..][..w]
                    } else {
                        &cells[at - w..at]
                    };
                    let dg = &mut dxw[(r * s + t) * 4 * w..][..4 * w];
                    lstm_cell_backward(
                        &acts[4 * at..4 * (at + w)],
                        &cells[at..at + w],
                        c_prev,
                        &dh,
                        &mut dc[r * w..(r + 1) * w],
                        dg,
                    );
                }
                // dh_next = dgates_t · w_hhᵀ (the rows of this position are s·4h apart).
                let dg = Mat {
                    data: &dxw[t * 4 * w..],
                    rs: s * 4 * w,
                    cs: 1,
                };
                let ops = (dg, Mat::transposed(w_hh, 4 * w));
                matmul(&mut dh_next, w, (rows, w, 4 * w), ops, false, 1.0);
            }
        });
    // w_hh's gradient: Σ over rows and positions of h_{t−1}ᵀ · dgates_t.
    let mut h_prev = vec![0.0f32; batch * s * w];
    h_prev
        .par_chunks_mut(s * w)
        .enumerate()
        .for_each(|(bi, hp)| {
            hp[..w].copy_from_slice(&h0[bi * w..(bi + 1) * w]);
            hp[w..].copy_from_slice(&y[bi * s * w..(bi * s + s - 1) * w]);
        });
    let dw = product(
        w,
        4 * w,
        batch * s,
        Mat::transposed(&h_prev, w),
        Mat::rows(&dxw, 4 * w),
        None,
    );
    [dxw, dw]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// Runs the recurrence from (h0, c0): returns y, the final h and c, the activations and
    /// cells.
    fn run(xw: &[f32], w_hh: &[f32], sh: LstmShape, h0: &[f32], c0: &[f32]) -> [Vec<f32>; 5] {
        let (mut h, mut c) = (h0.to_vec(), c0.to_vec());
        let mut y = vec![0.0f32; sh.batch * sh.len * sh.hidden];
        let (mut acts, mut cells) = (vec![0.0f32; 4 * y.len()], vec![0.0f32; y.len()]);
        lstm(
            xw,
            w_hh,
            sh,
            (&mut h, &mut c),
            &mut y,
            Some((&mut acts, &mut cells)),
        );
        [y, h, c, acts, cells]
    }

    /// On a pool of 3 threads, 5 batch rows run as blocks of 2, 2 and 1.
    fn on_three_threads(f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(f);
    }

    const SH: LstmShape = LstmShape {
        batch: 5,
        len: 4,
        hidden: 3,
    };

    #[test]
    fn the_recurrence_matches_its_definition() {
        on_three_threads(|| {
            let LstmShape {
                batch: b,
                len: s,
                hidden: w,
            } = SH;
            let (xw, w_hh) = (data(b * s * 4 * w, 1, 2.0), data(w * 4 * w, 2, 0.8));
            let (h0, c0) = (data(b * w, 3, 1.0), data(b * w, 4, 1.5));
            let [y, h, c, _, _] = run(&xw, &w_hh, SH, &h0, &c0);
            let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
            let mut want = vec![0.0f64; y.len()];
            let (mut wh, mut wc) = (vec![0.0f64; b * w], vec![0.0f64; b * w]);
            for bi in 0..b {
                let mut hs: Vec<f64> = h0[bi * w..(bi + 1) * w].iter().map(|&x| x as f64).collect();
                let mut cs: Vec<f64> = c0[bi * w..(bi + 1) * w].iter().map(|&x| x as f64).collect();
                for t in 0..s {
                    let g: Vec<f64> = (0..4 * w)
                        .map(|j| {
                            let rec: f64 = (0..w).map(|l| hs[l] * w_hh[l * 4 * w + j] as f64).sum();
                            xw[(bi * s + t) * 4 * w + j] as f64 + rec
                        })
                        .collect();
                    for j in 0..w {
                        let (i, f) = (sig(g[j]), sig(g[w + j]));
                        let (gg, o) = (g[2 * w + j].tanh(), sig(g[3 * w + j]));
                        cs[j] = f * cs[j] + i * gg;
                        hs[j] = o * cs[j].tanh();
                        want[(bi * s + t) * w + j] = hs[j];
                    }
                }
                wh[bi * w..(bi + 1) * w].copy_from_slice(&hs);
                wc[bi * w..(bi + 1) * w].copy_from_slice(&cs);
            }
            assert_close("y", &y, &want, 1e-5);
            assert_close("final h", &h, &wh, 1e-5);
            assert_close("final c", &c, &wc, 1e-5);
        });
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        on_three_threads(|| {
            let LstmShape {
                batch: b,
                len: s,
                hidden: w,
            } = SH;
            let (xw, w_hh) = (data(b * s * 4 * w, 5, 2.0), data(w * 4 * w, 6, 0.8));
            let (h0, c0) = (data(b * w, 7, 1.0), data(b * w, 8, 1.5));
            let [y, _, _, acts, cells] = run(&xw, &w_hh, SH, &h0, &c0);
            let gy = data(y.len(), 9, 1.0);
            let [dxw, dw] = lstm_backward(&w_hh, SH, (&h0, &c0), (&acts, &cells, &y), &gy);
            check_grad("xw", &xw, &dxw, |x| {
                weighted(&run(x, &w_hh, SH, &h0, &c0)[0], &gy)
            });
            check_grad("w_hh", &w_hh, &dw, |x| {
                weighted(&run(&xw, x, SH, &h0, &c0)[0], &gy)
            });
        });
    }
}
