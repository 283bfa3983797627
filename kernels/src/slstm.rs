//! xLSTM's sLSTM recurrence and its backward pass through time.

use crate::add;
use crate::gemm::{matmul, Mat};
use crate::lstm::LstmShape;
use crate::math::{exp, log_sigmoid, sigmoid, tanh};
use rayon::prelude::*;

/// The sizes of an sLSTM recurrence: batch, positions, heads, width per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlstmShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Heads (the recurrence is block-diagonal over them).
    pub heads: usize,
    /// Width per head.
    pub head_dim: usize,
}

impl SlstmShape {
    fn rows_per_task(&self) -> usize {
        LstmShape {
            batch: self.batch,
            len: self.len,
            hidden: 1,
        }
        .rows_per_task()
    }
    /// The model width, heads × width per head.
    pub(crate) fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Values kept per position, head and row for the backward pass: z, i, f, o, σ(f̃) (the
/// activations) then c and n, each `head_dim` wide.
const SLSTM_KEPT: usize = 7;

vectorized! {
    /// One position's cell update of one row of one head: `pre` `[4 dh]` holds the
    /// pre-activations (z̃, ĩ, f̃, õ); `c`, `n`, `m`, `h` `[dh]` are updated in place; `kept`
    /// `[7 dh]` gets the activations and the new c and n.
    fn slstm_cell(pre: &[f32], st: [&mut [f32]; 4], kept: &mut [f32]) {
        let [c, n, m, h] = st;
        let w = c.len();
        let (pz, rest) = pre.split_at(w);
        let (pi, rest) = rest.split_at(w);
        let (pf, po) = rest.split_at(w);
        let (kz, rest) = kept.split_at_mut(w);
        let (ki, rest) = rest.split_at_mut(w);
        let (kf, rest) = rest.split_at_mut(w);
        let (ko, rest) = rest.split_at_mut(w);
        let (ksf, rest) = rest.split_at_mut(w);
        let (kc, kn) = rest.split_at_mut(w);
        for j in 0..w {
            let z = tanh(pz[j]);
            let ip = pi[j];
            let sf = sigmoid(pf[j]);
            let logf = log_sigmoid(pf[j]);
            let o = sigmoid(po[j]);
            let m_new = if logf + m[j] > ip { logf + m[j] } else { ip };
            let i = exp(ip - m_new);
            let f = exp(logf + m[j] - m_new);
            c[j] = f * c[j] + i * z;
            n[j] = f * n[j] + i;
            m[j] = m_new;
            h[j] = o * c[j] / n[j];
            (kz[j], ki[j], kf[j], ko[j], ksf[j], kc[j], kn[j]) = (z, i, f, o, sf, c[j], n[j]);
        }
    }
}

vectorized! {
    /// One position's cell update backward for one row of one head. In: `kept` `[7 dh]`
    /// from [`slstm_cell`], the previous c and n, the gradient `dh` of this h. `dc`, `dn`
    /// hold the gradients of this c and n from the next position and get those of the
    /// previous ones; `dpre` `[4 dh]` gets the gradients of the pre-activations. The
    /// stabilizer m is held constant: the outputs do not depend on it (c and n carry the same
    /// factor e^{−m}, which cancels in h = o c / n), so its gradient paths sum to zero.
    fn slstm_cell_backward(
        kept: &[f32],
        prev: (&[f32], &[f32]),
        dh: &[f32],
        dc: &mut [f32],
        dn: &mut [f32],
        dpre: &mut [f32],
    ) {
        let w = dh.len();
        let (c_prev, n_prev) = prev;
        for j in 0..w {
            let [z, i, f, o, sf, c, n] = [0, 1, 2, 3, 4, 5, 6].map(|g| kept[g * w + j]);
            let dhj = dh[j];
            let d_o = dhj * c / n;
            let dcj = dc[j] + dhj * o / n;
            // (dh·o/n)·(c/n), not dh·o·c/n²: n² underflows for tiny n where c/n stays ≤ 1.
            let dnj = dn[j] - (dhj * o / n) * (c / n);
            let df = dcj * c_prev[j] + dnj * n_prev[j];
            let di = dcj * z + dnj;
            dpre[j] = dcj * i * (1.0 - z * z);
            dpre[w + j] = di * i;
            dpre[2 * w + j] = df * f * (1.0 - sf);
            dpre[3 * w + j] = d_o * o * (1.0 - o);
            dc[j] = dcj * f;
            dn[j] = dnj * f;
        }
    }
}

/// xLSTM's sLSTM recurrence (Beck et al. 2024) with the paper's stabilizer. `xw`
/// `[batch, len, 4, heads, dh]` holds the input's pre-activations (z̃, ĩ, f̃, õ; projection
/// plus bias), `r` `[heads, dh, 4 dh]` the recurrent weights (block-diagonal over heads,
/// columns gate-major). Per position and head: `pre = xw_t + h · r`, z = tanh z̃,
/// o = σ(õ), m' = max(ln σ(f̃) + m, ĩ), i = e^{ĩ − m'}, f = e^{ln σ(f̃) + m − m'},
/// c ← f c + i z, n ← f n + i, h = o c / n. `state` = c, n, m, h `[batch, heads, dh]`, the
/// initial state in and the final one out; `y` `[batch, len, heads · dh]` gets every h. Runs
/// per block of batch rows in parallel. With `keep` (`[batch, len, heads, 7 dh]`), also
/// writes what [`slstm_backward`] reads.
pub fn slstm(
    xw: &[f32],
    r: &[f32],
    sh: SlstmShape,
    state: [&mut [f32]; 4],
    y: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    assert!(xw.len() == batch * s * 4 * d && r.len() == nh * w * 4 * w);
    assert!(state.iter().all(|x| x.len() == batch * d) && y.len() == batch * s * d);
    let rb = sh.rows_per_task();
    let blocks = batch.div_ceil(rb);
    let kept: Vec<&mut [f32]> = match keep {
        Some(k) => {
            assert_eq!(k.len(), batch * s * nh * SLSTM_KEPT * w);
            k.chunks_mut(rb * s * nh * SLSTM_KEPT * w).collect()
        }
        None => (0..blocks).map(|_| <&mut [f32]>::default()).collect(),
    };
    let [c, n, m, h] = state;
    let tasks: Vec<_> = c
        .chunks_mut(rb * d)
        .zip(n.chunks_mut(rb * d))
        .zip(m.chunks_mut(rb * d).zip(h.chunks_mut(rb * d)))
        .zip(y.chunks_mut(rb * s * d).zip(kept))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(blk, (((c, n), (m, h)), (y, kept)))| {
            let rows = c.len() / d;
            let mut pre = vec![0.0f32; rows * 4 * w];
            let mut scratch = vec![0.0f32; SLSTM_KEPT * w];
            for t in 0..s {
                for hd in 0..nh {
                    for (r_, p) in pre.chunks_exact_mut(4 * w).enumerate() {
                        let src = ((blk * rb + r_) * s + t) * 4 * d + hd * w;
                        for (g, pg) in p.chunks_exact_mut(w).enumerate() {
                            pg.copy_from_slice(&xw[src + g * d..][..w]);
                        }
                    }
                    // pre += h · r_hd (the rows of this head's h are d apart).
                    let hm = Mat {
                        data: &h[hd * w..],
                        rs: d,
                        cs: 1,
                    };
                    let rm = Mat::rows(&r[hd * w * 4 * w..(hd + 1) * w * 4 * w], 4 * w);
                    matmul(&mut pre, 4 * w, (rows, 4 * w, w), (hm, rm), true, 1.0);
                    for (r_, p) in pre.chunks_exact(4 * w).enumerate() {
                        let at = r_ * d + hd * w;
                        let st = [&mut c[at..at + w], &mut n[at..at + w], &mut m[at..at + w]];
                        let [cs, ns, ms] = st;
                        let k = if kept.is_empty() {
                            &mut scratch[..]
                        } else {
                            let base = ((r_ * s + t) * nh + hd) * SLSTM_KEPT * w;
                            &mut kept[base..base + SLSTM_KEPT * w]
                        };
                        slstm_cell(p, [cs, ns, ms, &mut h[at..at + w]], k);
                        y[(r_ * s + t) * d + hd * w..][..w].copy_from_slice(&h[at..at + w]);
                    }
                }
            }
        });
}

/// The gradients of [`slstm`] from the gradient `gy` of y, the values it kept, its outputs
/// `y` and the initial c, n and h `[batch, heads, dh]`: returns the gradients of `xw`
/// (`[batch, len, 4, heads, dh]`) and of `r`. Backward through time per block of batch rows
/// in parallel; each position's recurrent gradients are two small products per head.
pub fn slstm_backward(
    r: &[f32],
    sh: SlstmShape,
    (c0, n0, h0): (&[f32], &[f32], &[f32]),
    (kept, y): (&[f32], &[f32]),
    gy: &[f32],
) -> [Vec<f32>; 2] {
    let SlstmShape {
        batch,
        len: s,
        heads: nh,
        head_dim: w,
    } = sh;
    let d = sh.width();
    assert!(kept.len() == batch * s * nh * SLSTM_KEPT * w && y.len() == batch * s * d);
    assert!(gy.len() == y.len() && h0.len() == batch * d);
    assert!(c0.len() == batch * d && n0.len() == batch * d && r.len() == nh * w * 4 * w);
    let rb = sh.rows_per_task();
    let mut dxw = vec![0.0f32; batch * s * 4 * d];
    let dr = dxw
        .par_chunks_mut(rb * s * 4 * d)
        .enumerate()
        .map(|(blk, dxw)| {
            let rows = dxw.len() / (s * 4 * d);
            let first = blk * rb;
            let mut dr = vec![0.0f32; nh * w * 4 * w];
            // Gradients flowing into h, c and n from the next position, [rows, d].
            let mut dh_next = vec![0.0f32; rows * d];
            let (mut dc, mut dn) = (vec![0.0f32; rows * d], vec![0.0f32; rows * d]);
            let mut dpre = vec![0.0f32; rows * 4 * w];
            let mut dh = vec![0.0f32; w];
            let mut dh_prev = vec![0.0f32; rows * w];
            for t in (0..s).rev() {
                for hd in 0..nh {
                    for (r_, dp) in dpre.chunks_exact_mut(4 * w).enumerate() {
                        let bi = first + r_;
                        let at = r_ * d + hd * w;
                        let yo = (bi * s + t) * d + hd * w;
                        for ((o, &g), &x) in dh.iter_mut().zip(&gy[yo..yo + w]).zip(&dh_next[at..])
                        {
                            *o = g + x;
                        }
                        let base = ((bi * s + t) * nh + hd) * SLSTM_KEPT * w;
                        let prev = if t == 0 {
                            let o = bi * d + hd * w;
                            (&c0[o..o + w], &n0[o..o + w])
                        } else {
                            let pb = base - nh * SLSTM_KEPT * w;
                            (&kept[pb + 5 * w..pb + 6 * w], &kept[pb + 6 * w..pb + 7 * w])
                        };
                        let (dcs, dns) = (&mut dc[at..at + w], &mut dn[at..at + w]);
                        let k = &kept[base..base + SLSTM_KEPT * w];
                        slstm_cell_backward(k, prev, &dh, dcs, dns, dp);
                        let dst = (r_ * s + t) * 4 * d + hd * w;
                        for (g, dg) in dp.chunks_exact(w).enumerate() {
                            dxw[dst + g * d..][..w].copy_from_slice(dg);
                        }
                    }
                    let rm = &r[hd * w * 4 * w..(hd + 1) * w * 4 * w];
                    // The previous h of these rows: y at t − 1, or the initial h.
                    let hp = if t == 0 {
                        Mat {
                            data: &h0[first * d + hd * w..],
                            rs: d,
                            cs: 1,
                        }
                    } else {
                        Mat {
                            data: &y[(first * s + t - 1) * d + hd * w..],
                            rs: s * d,
                            cs: 1,
                        }
                    };
                    // r_hd's gradient += h_prevᵀ · dpre; h_prev's = dpre · r_hdᵀ.
                    let drh = &mut dr[hd * w * 4 * w..(hd + 1) * w * 4 * w];
                    let ops = (hp.t(), Mat::rows(&dpre, 4 * w));
                    matmul(drh, 4 * w, (w, 4 * w, rows), ops, true, 1.0);
                    let ops = (Mat::rows(&dpre, 4 * w), Mat::transposed(rm, 4 * w));
                    matmul(&mut dh_prev, w, (rows, w, 4 * w), ops, false, 1.0);
                    for (r_, g) in dh_prev.chunks_exact(w).enumerate() {
                        dh_next[r_ * d + hd * w..][..w].copy_from_slice(g);
                    }
                }
            }
            dr
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; nh * w * 4 * w], add);
    [dxw, dr]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grad, data, weighted};

    /// Runs the recurrence from `init` (c, n, m, h): returns y and the kept values.
    fn run(xw: &[f32], r: &[f32], sh: SlstmShape, init: &[Vec<f32>; 4]) -> [Vec<f32>; 2] {
        let [mut c, mut n, mut m, mut h] = init.clone();
        let mut y = vec![0.0f32; sh.batch * sh.len * sh.width()];
        let mut kept = vec![0.0f32; y.len() * SLSTM_KEPT];
        let state = [&mut c[..], &mut n, &mut m, &mut h];
        slstm(xw, r, sh, state, &mut y, Some(&mut kept));
        [y, kept]
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        // 5 batch rows on 3 threads: blocks of 2, 2 and 1.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let sh = SlstmShape {
                batch: 5,
                len: 4,
                heads: 2,
                head_dim: 3,
            };
            let (d, rows) = (sh.width(), sh.batch * sh.width());
            let xw = data(sh.batch * sh.len * 4 * d, 1, 2.0);
            let r = data(sh.heads * sh.head_dim * 4 * sh.head_dim, 2, 0.7);
            // c, n > 0 (a sum of positive terms), m, h.
            let n0: Vec<f32> = data(rows, 4, 1.0).iter().map(|x| x.abs() + 0.5).collect();
            let init = [
                data(rows, 3, 1.0),
                n0,
                data(rows, 5, 1.0),
                data(rows, 6, 0.5),
            ];
            let [y, kept] = run(&xw, &r, sh, &init);
            let gy = data(y.len(), 7, 1.0);
            let [c0, n0, _, h0] = &init;
            let [dxw, dr] = slstm_backward(&r, sh, (c0, n0, h0), (&kept, &y), &gy);
            check_grad("xw", &xw, &dxw, |x| {
                weighted(&run(x, &r, sh, &init)[0], &gy)
            });
            check_grad("r", &r, &dr, |x| weighted(&run(&xw, x, sh, &init)[0], &gy));
        });
    }
}
