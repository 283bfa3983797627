//! RetNet's multi-scale retention (Sun et al. 2023) in the parallel form, from no previous
//! state, followed by the heads' GroupNorm, and its gradients.

use crate::add;
use crate::gemm::{matmul, Mat, View4};
use crate::norm::{norm_row, norm_row_backward, Norm};
use rayon::prelude::*;

/// The sizes of one retention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetShape {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Positions.
    pub len: usize,
    /// Features per query and key.
    pub key_dim: usize,
    /// Features per value.
    pub value_dim: usize,
}

/// Query rows per block: a block's scores stop at its last row's position (skipping most of
/// the zero upper triangle of the decay matrix), and are all of them held at once.
const RET_BLOCK: usize = 32;

/// The row blocks of one (batch row, head): `(first row, rows)`; a block needs the keys up to
/// `first + rows`.
fn blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(RET_BLOCK)
        .map(move |r0| (r0, RET_BLOCK.min(len - r0)))
}

/// Per head, its decay's powers in reverse: entry j is `γ^(len − 1 − j)`, so that the row of
/// position t weighs position m ≤ t by entry `len − 1 − t + m` (a contiguous run). Each power
/// is rounded from f64 once, as kiln's plain path rounds its decay matrix.
fn powers(decays: &[f64], len: usize) -> Vec<f32> {
    decays
        .iter()
        .flat_map(|&g| (0..len).map(move |j| g.powi((len - 1 - j) as i32) as f32))
        .collect()
}

vectorized! {
    /// Multiplies the rows of a block (rows of `r0 + rows` keys, the first one position `r0`)
    /// by the decay matrix D of one head (`pw` its reversed powers): row t keeps `γ^(t−m)` of
    /// key m ≤ t and none of the later ones.
    fn decay_rows(block: &mut [f32], r0: usize, rows: usize, pw: &[f32]) {
        let len = pw.len();
        for (i, row) in block.chunks_exact_mut(r0 + rows).enumerate() {
            let t = r0 + i;
            let (past, future) = row.split_at_mut(t + 1);
            for (x, &p) in past.iter_mut().zip(&pw[len - 1 - t..]) {
                *x *= p;
            }
            future.fill(0.0);
        }
    }
}

/// One block's decayed scores `scale · q_rows kᵀ ⊙ D`, `[n, r0 + n]` row-major in `p`.
fn decayed_scores(
    p: &mut [f32],
    (qm, km): (Mat, Mat),
    (r0, n, dk): (usize, usize, usize),
    scale: f32,
    pw: &[f32],
) {
    let lim = r0 + n;
    let p = &mut p[..n * lim];
    matmul(
        p,
        lim,
        (n, lim, dk),
        (qm.skip_rows(r0), km.t()),
        false,
        scale,
    );
    decay_rows(p, r0, n, pw);
}

/// Checks the sizes of a call's inputs and returns its decays' reversed powers.
fn prepare(sh: RetShape, decays: &[f64], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let width = sh.heads * sh.value_dim;
    assert_eq!(decays.len(), sh.heads, "one decay per head");
    assert!(w.len() == width && b.is_none_or(|b| b.len() == width));
    powers(decays, sh.len)
}

/// Retention per (batch row, head): `o = (q kᵀ / √d_k ⊙ D) v` with `D_tm = γ^(t−m)` for m ≤ t
/// and 0 after (γ = `decays[head]`), then the heads' GroupNorm: each position's o of one head
/// normalized over its `value_dim` features (`(o − mean) / sqrt(var + eps)`), then scaled by
/// `w` and shifted by `b` per feature `head · value_dim + j`. `q`, `k` `[batch, heads, len,
/// key_dim]` and `v` `[batch, heads, len, value_dim]` are read through their strides; writes
/// `y` `[batch, len, heads · value_dim]` and, when given, each (batch row, position, head)'s
/// norm statistics `stats` `[batch, len, heads, 2]` (the mean and 1/std), what the backward
/// pass needs. The decay powers are computed here, once per head (no `[heads, len, len]`
/// matrix); batch rows run in parallel, each holding the scores of one block of
/// [`RET_BLOCK`] rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn retention(
    (q, k, v): (View4, View4, View4),
    sh: RetShape,
    decays: &[f64],
    (w, b): (&[f32], &[f32]),
    eps: f32,
    stats: Option<&mut [f32]>,
    y: &mut [f32],
) {
    let RetShape {
        heads: h,
        len: s,
        key_dim: dk,
        value_dim: dv,
        ..
    } = sh;
    let pw = prepare(sh, decays, w, Some(b));
    assert_eq!(y.len(), sh.batch * s * h * dv);
    let (scale, nrm) = (1.0 / (dk as f32).sqrt(), Norm { center: true, eps });
    let stats: Vec<Option<&mut [f32]>> = match stats {
        Some(st) => st.chunks_mut(s * h * 2).map(Some).collect(),
        None => (0..sh.batch).map(|_| None).collect(),
    };
    y.par_chunks_mut(s * h * dv)
        .zip(stats)
        .enumerate()
        .for_each(|(bi, (y, mut stats))| {
            let (mut pb, mut ob) = (vec![0.0f32; RET_BLOCK * s], vec![0.0f32; RET_BLOCK * dv]);
            for hi in 0..h {
                let (qm, km, vm) = (q.mat(bi, hi), k.mat(bi, hi), v.mat(bi, hi));
                let pw = &pw[hi * s..(hi + 1) * s];
                let (wh, bh) = (&w[hi * dv..(hi + 1) * dv], &b[hi * dv..(hi + 1) * dv]);
                for (r0, n) in blocks(s) {
                    let lim = r0 + n;
                    decayed_scores(&mut pb, (qm, km), (r0, n, dk), scale, pw);
                    let ob = &mut ob[..n * dv];
                    matmul(ob, dv, (n, dv, lim), (Mat::rows(&pb, lim), vm), false, 1.0);
                    for (i, o) in ob.chunks_exact(dv).enumerate() {
                        let at = (r0 + i) * h + hi;
                        let st = norm_row(o, wh, bh, nrm, &mut y[at * dv..(at + 1) * dv]);
                        if let Some(stats) = stats.as_deref_mut() {
                            (stats[2 * at], stats[2 * at + 1]) = st;
                        }
                    }
                }
            }
        });
}

/// The gradients of [`retention`] from its inputs, the statistics its forward pass wrote and
/// the output's gradient `gy` `[batch, len, heads · value_dim]`: writes `dq`, `dk` laid out
/// as `[batch, len, heads, key_dim]` and `dv` as `[batch, len, heads, value_dim]`, and returns
/// the gradients of the norm's weight and bias. Each block's decayed scores and outputs are
/// computed again (the same products as the forward pass); nothing of size len × len is kept.
#[allow(clippy::too_many_arguments)]
pub fn retention_backward(
    (q, k, v): (View4, View4, View4),
    gy: &[f32],
    stats: &[f32],
    sh: RetShape,
    decays: &[f64],
    w: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) -> (Vec<f32>, Vec<f32>) {
    let RetShape {
        heads: h,
        len: s,
        key_dim: kd,
        value_dim: vd,
        ..
    } = sh;
    let pw = prepare(sh, decays, w, None);
    let (rows, width) = (sh.batch * s * h, h * vd);
    assert!(gy.len() == rows * vd && stats.len() == 2 * rows);
    assert!(dq.len() == rows * kd && dk.len() == dq.len() && dv.len() == gy.len());
    let scale = 1.0 / (kd as f32).sqrt();
    let acc = dq
        .par_chunks_mut(s * h * kd)
        .zip(dk.par_chunks_mut(s * h * kd))
        .zip(dv.par_chunks_mut(s * h * vd))
        .enumerate()
        .map(|(bi, ((dq, dk), dv))| {
            let mut acc = vec![0.0f32; 2 * width];
            dk.fill(0.0);
            dv.fill(0.0);
            let (gw, gb) = acc.split_at_mut(width);
            let (gy, st) = (&gy[bi * s * width..], &stats[bi * s * h * 2..]);
            let mut pb = vec![0.0f32; RET_BLOCK * s];
            let mut gs = vec![0.0f32; RET_BLOCK * s];
            let (mut ob, mut gob) = (vec![0.0f32; RET_BLOCK * vd], vec![0.0f32; RET_BLOCK * vd]);
            for hi in 0..h {
                let (qm, km, vm) = (q.mat(bi, hi), k.mat(bi, hi), v.mat(bi, hi));
                let pw = &pw[hi * s..(hi + 1) * s];
                let f = hi * vd..(hi + 1) * vd;
                for (r0, n) in blocks(s) {
                    let lim = r0 + n;
                    decayed_scores(&mut pb, (qm, km), (r0, n, kd), scale, pw);
                    let pm = Mat::rows(&pb, lim);
                    let (ob, gob) = (&mut ob[..n * vd], &mut gob[..n * vd]);
                    matmul(ob, vd, (n, vd, lim), (pm, vm), false, 1.0);
                    // The norm's gradients: go (of o) per row, dw and db.
                    for (i, (o, go)) in ob
                        .chunks_exact(vd)
                        .zip(gob.chunks_exact_mut(vd))
                        .enumerate()
                    {
                        let at = (r0 + i) * h + hi;
                        let g = &gy[at * vd..(at + 1) * vd];
                        let stat = (st[2 * at], st[2 * at + 1]);
                        let (dw, db) = (&mut gw[f.clone()], &mut gb[f.clone()]);
                        norm_row_backward(o, &w[f.clone()], g, stat, true, go, dw, db);
                    }
                    let gom = Mat::rows(gob, vd);
                    // dv += (decayed scores)ᵀ · go
                    matmul(
                        &mut dv[hi * vd..],
                        h * vd,
                        (lim, vd, n),
                        (pm.t(), gom),
                        true,
                        1.0,
                    );
                    // The scores' gradient: (go · vᵀ) ⊙ D.
                    let gs = &mut gs[..n * lim];
                    matmul(gs, lim, (n, lim, vd), (gom, vm.t()), false, 1.0);
                    decay_rows(gs, r0, n, pw);
                    let gsm = Mat::rows(gs, lim);
                    // dq = scale · gs · k; dk += scale · gsᵀ · q
                    let dqb = &mut dq[r0 * h * kd + hi * kd..];
                    matmul(dqb, h * kd, (n, kd, lim), (gsm, km), false, scale);
                    let qb = qm.skip_rows(r0);
                    matmul(
                        &mut dk[hi * kd..],
                        h * kd,
                        (lim, kd, n),
                        (gsm.t(), qb),
                        true,
                        scale,
                    );
                }
            }
            acc
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; 2 * width], add);
    let (gw, gb) = acc.split_at(width);
    (gw.to_vec(), gb.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, dense, weighted};

    fn sh(batch: usize, heads: usize, len: usize, key_dim: usize, value_dim: usize) -> RetShape {
        RetShape {
            batch,
            heads,
            len,
            key_dim,
            value_dim,
        }
    }

    /// One position; widths off the vector lanes; more positions than a block (two blocks,
    /// the last short); decays far from 1 (so that the powers matter within a block).
    fn cases() -> [(RetShape, Vec<f64>); 4] {
        let papers = |h: usize| (0..h).map(|i| 1.0 - 2f64.powi(-5 - i as i32)).collect();
        [
            (sh(1, 1, 1, 2, 2), papers(1)),
            (sh(2, 3, 7, 4, 5), papers(3)),
            (sh(1, 2, RET_BLOCK + 5, 3, 4), vec![0.9, 0.6]),
            (sh(2, 1, 2 * RET_BLOCK + 1, 2, 3), vec![0.95]),
        ]
    }

    const EPS: f32 = 1e-5;

    /// Runs [`retention`] on dense q, k `[b, h, s, dk]` and v `[b, h, s, dv]`: returns y and
    /// the statistics.
    fn run(
        (q, k, v): (&[f32], &[f32], &[f32]),
        (w, b): (&[f32], &[f32]),
        sh: RetShape,
        decays: &[f64],
    ) -> (Vec<f32>, Vec<f32>) {
        let RetShape {
            batch,
            heads,
            len,
            key_dim,
            value_dim,
        } = sh;
        let (ks, vs) = ([batch, heads, len, key_dim], [batch, heads, len, value_dim]);
        let views = (dense(q, ks), dense(k, ks), dense(v, vs));
        let mut y = vec![0.0f32; batch * len * heads * value_dim];
        let mut st = vec![0.0f32; 2 * batch * len * heads];
        retention(views, sh, decays, (w, b), EPS, Some(&mut st), &mut y);
        // Without the statistics: the same output to the bit.
        let mut y2 = vec![0.0f32; y.len()];
        retention(views, sh, decays, (w, b), EPS, None, &mut y2);
        assert_eq!(y, y2, "{sh:?}");
        (y, st)
    }

    fn inputs(sh: RetShape, seed: u64) -> [Vec<f32>; 5] {
        let RetShape {
            batch,
            heads,
            len,
            key_dim,
            value_dim,
        } = sh;
        let rows = batch * heads * len;
        [
            data(rows * key_dim, seed, 1.5),
            data(rows * key_dim, seed + 1, 1.5),
            data(rows * value_dim, seed + 2, 1.5),
            data(heads * value_dim, seed + 3, 1.5),
            data(heads * value_dim, seed + 4, 1.0),
        ]
    }

    #[test]
    fn retention_matches_its_definition() {
        for (sh, decays) in cases() {
            let RetShape {
                batch,
                heads: h,
                len: s,
                key_dim: dk,
                value_dim: dv,
            } = sh;
            let [q, k, v, w, b] = inputs(sh, 1);
            let (y, st) = run((&q, &k, &v), (&w, &b), sh, &decays);
            let (mut want, mut want_st) = (Vec::new(), Vec::new());
            for bi in 0..batch {
                for t in 0..s {
                    for hi in 0..h {
                        let row = |x: &[f32], d: usize, m: usize| {
                            x[((bi * h + hi) * s + m) * d..][..d]
                                .iter()
                                .map(|&x| x as f64)
                                .collect::<Vec<f64>>()
                        };
                        let mut o = vec![0.0f64; dv];
                        let qt = row(&q, dk, t);
                        for m in 0..=t {
                            let km = row(&k, dk, m);
                            let dot: f64 = qt.iter().zip(&km).map(|(a, b)| a * b).sum();
                            let wt = decays[hi].powi((t - m) as i32) * dot / (dk as f64).sqrt();
                            for (o, vm) in o.iter_mut().zip(row(&v, dv, m)) {
                                *o += wt * vm;
                            }
                        }
                        let mean = o.iter().sum::<f64>() / dv as f64;
                        let var = o.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / dv as f64;
                        let r = 1.0 / (var + EPS as f64).sqrt();
                        for (j, o) in o.iter().enumerate() {
                            let c = hi * dv + j;
                            want.push((o - mean) * r * w[c] as f64 + b[c] as f64);
                        }
                        want_st.extend([mean, r]);
                    }
                }
            }
            assert_close(&format!("{sh:?}"), &y, &want, 2e-5);
            assert_close(&format!("{sh:?} stats"), &st, &want_st, 1e-4);
        }
    }

    /// Queries and keys read through the strides of a `[b, s, h, d]` layout (as the head split
    /// leaves them) give the same output as dense copies.
    #[test]
    fn strided_inputs_are_read_in_place() {
        let (sh, decays) = cases()[2].clone();
        let (b, h, s, dk) = (sh.batch, sh.heads, sh.len, sh.key_dim);
        let [q, k, v, w, bias] = inputs(sh, 5);
        let (want, _) = run((&q, &k, &v), (&w, &bias), sh, &decays);
        // q laid out as [b, s, h, dk], read as [b, h, s, dk].
        let mut qt = vec![0.0f32; q.len()];
        for bi in 0..b {
            for hi in 0..h {
                for t in 0..s {
                    let (from, to) = (((bi * h + hi) * s + t) * dk, ((bi * s + t) * h + hi) * dk);
                    qt[to..to + dk].copy_from_slice(&q[from..from + dk]);
                }
            }
        }
        let qv = View4 {
            data: &qt,
            off: 0,
            strides: [s * h * dk, dk, h * dk],
        };
        let ks = [b, h, s, dk];
        let vs = [b, h, s, sh.value_dim];
        let mut y = vec![0.0f32; want.len()];
        let views = (qv, dense(&k, ks), dense(&v, vs));
        retention(views, sh, &decays, (&w, &bias), EPS, None, &mut y);
        assert_eq!(y, want);
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        for (sh, decays) in cases() {
            let RetShape {
                batch,
                heads: h,
                len: s,
                key_dim: kd,
                value_dim: vd,
            } = sh;
            let [q, k, v, w, b] = inputs(sh, 11);
            let gy = data(batch * s * h * vd, 17, 1.0);
            let (_, st) = run((&q, &k, &v), (&w, &b), sh, &decays);
            let (mut dq, mut dk) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()]);
            let mut dv = vec![0.0f32; v.len()];
            let (ks, vs) = ([batch, h, s, kd], [batch, h, s, vd]);
            let views = (dense(&q, ks), dense(&k, ks), dense(&v, vs));
            let grads = (&mut dq[..], &mut dk[..], &mut dv[..]);
            let (dw, db) = retention_backward(views, &gy, &st, sh, &decays, &w, grads);
            // dq, dk, dv come laid out as [b, s, h, d]: back to [b, h, s, d].
            let heads_first = |x: &[f32], d: usize| {
                let mut out = vec![0.0f32; x.len()];
                for bi in 0..batch {
                    for t in 0..s {
                        for hi in 0..h {
                            let (from, to) =
                                (((bi * s + t) * h + hi) * d, ((bi * h + hi) * s + t) * d);
                            out[to..to + d].copy_from_slice(&x[from..from + d]);
                        }
                    }
                }
                out
            };
            let (dq, dk, dv) = (
                heads_first(&dq, kd),
                heads_first(&dk, kd),
                heads_first(&dv, vd),
            );
            let loss = |q: &[f32], k: &[f32], v: &[f32], w: &[f32], b: &[f32]| {
                weighted(&run((q, k, v), (w, b), sh, &decays).0, &gy)
            };
            let case = format!("{sh:?}");
            check_grad(&format!("{case} dq"), &q, &dq, |q| loss(q, &k, &v, &w, &b));
            check_grad(&format!("{case} dk"), &k, &dk, |k| loss(&q, k, &v, &w, &b));
            check_grad(&format!("{case} dv"), &v, &dv, |v| loss(&q, &k, v, &w, &b));
            check_grad(&format!("{case} dw"), &w, &dw, |w| loss(&q, &k, &v, w, &b));
            check_grad(&format!("{case} db"), &b, &db, |b| loss(&q, &k, &v, &w, b));
        }
    }

    #[test]
    fn blocks_cover_every_row_once() {
        for len in [1, RET_BLOCK, RET_BLOCK + 1, 3 * RET_BLOCK + 7] {
            let mut next = 0;
            for (r0, n) in blocks(len) {
                assert!(r0 == next && n > 0 && n <= RET_BLOCK);
                next = r0 + n;
            }
            assert_eq!(next, len);
        }
    }
}
