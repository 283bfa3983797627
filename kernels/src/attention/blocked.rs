//! Attention of the row blocks that see more keys than a key block: the keys are taken
//! `kb` at a time with the online softmax (a running maximum and sum per row, the output
//! accumulated and rescaled whenever the maximum grows), so a block's scores are `ATTN_BLOCK ×
//! kb` at most whatever the length. The backward pass makes two passes over the key blocks:
//! the first sums each row's `D = Σ_j p_j · dp̃_j` (and counts hard attention's tied maxima),
//! the second computes the gradients.

use super::{head, value_weights, Weighing, ATTN_BLOCK};
use crate::dropout::dropout_in_place_chunk;
use crate::gemm::{matmul, Mat};
use crate::math::{dot, exp, max, sum};
use crate::softmax::{softmax_from_stats, Visible};

/// One (batch row, query head) pair: its operands and where its elements of p start.
#[derive(Clone, Copy)]
pub(super) struct Pair<'a> {
    /// q `[queries, dim]`, k `[keys, dim]`, v `[keys, value_dim]` of the pair.
    pub(super) mats: (Mat<'a>, Mat<'a>, Mat<'a>),
    /// The index in p `[b, h, s, t]` of the pair's element (0, 0).
    pub(super) p0: usize,
    /// Keys, features per key, features per value.
    pub(super) sizes: (usize, usize, usize),
    pub(super) scale: f32,
    pub(super) vis: Visible,
    pub(super) how: Weighing<'a>,
    /// Keys per key block.
    pub(super) kb: usize,
}

/// A worker's buffers, each `ATTN_BLOCK` rows of up to `kb` (or `t`) keys: the scores (then
/// the probabilities), the hard weights, the dropped weights, the scores' gradient.
pub(super) struct Buffers {
    pub(super) scores: Vec<f32>,
    pub(super) hard: Vec<f32>,
    pub(super) dropped: Vec<f32>,
    pub(super) ds: Vec<f32>,
}

impl Buffers {
    /// Buffers for blocks of up to `width` keys; `ds` only for a backward pass.
    pub(super) fn new(how: Weighing, width: usize, backward: bool) -> Self {
        let buf = |used: bool| vec![0.0f32; if used { ATTN_BLOCK * width } else { 0 }];
        Buffers {
            scores: buf(true),
            hard: buf(how.hard),
            dropped: buf(how.drop.is_some()),
            ds: buf(backward),
        }
    }
}

vectorized! {
    /// One key block of a row's online softmax: `row[..n]` becomes `exp(x − m')` with `m'` the
    /// new running maximum (kept in `m`), `row[n..]` 0, and the running sum `l` is rescaled and
    /// grows by the block's sum. Returns the factor `exp(m − m')` earlier sums were rescaled by.
    fn online_step(row: &mut [f32], n: usize, m: &mut f32, l: &mut f32) -> f32 {
        let (vis, hidden) = row.split_at_mut(n);
        hidden.fill(0.0);
        if n == 0 {
            return 1.0;
        }
        let mn = max(vis).max(*m);
        for x in vis.iter_mut() {
            *x = exp(*x - mn);
        }
        let alpha = if *m == mn { 1.0 } else if *m == f32::NEG_INFINITY { 0.0 } else { exp(*m - mn) };
        *l = *l * alpha + sum(vis);
        *m = mn;
        alpha
    }
    /// `row *= by`.
    fn scale_row(row: &mut [f32], by: f32) {
        for x in row.iter_mut() {
            *x *= by;
        }
    }
    /// `g ← p (g − d)` (the softmax gradient with the row's `Σ p·g` given).
    fn softmax_grad_given(p: &[f32], g: &mut [f32], d: f32) {
        for (g, &p) in g.iter_mut().zip(p) {
            *g = p * (*g - d);
        }
    }
}

/// One key block of a row's hard attention: the weights `hw` are 1 on the raw scores equal
/// to the running maximum `hm` (over `row[..n]`), else 0; `count` counts them. When the block
/// raises the maximum, the earlier ties and their values (`acc`) are dropped.
fn hard_step(
    row: &[f32],
    n: usize,
    hm: &mut f32,
    count: &mut f32,
    hw: &mut [f32],
    acc: &mut [f32],
) {
    let bm = row[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if bm > *hm {
        (*hm, *count) = (bm, 0.0);
        acc.fill(0.0);
    }
    for (j, (w, &x)) in hw.iter_mut().zip(row).enumerate() {
        let hit = j < n && x == *hm;
        *count += f32::from(u8::from(hit));
        *w = f32::from(u8::from(hit));
    }
}

/// The output rows `r0..r0 + n` of a pair (and their statistics, two per row from the block's
/// first, when given) over the `lim` keys they need, `kb` keys at a time. `o`: the block's first
/// output row, rows `o_rs` apart.
pub(super) fn forward_rows(
    pr: &Pair,
    (r0, n, lim): (usize, usize, usize),
    buf: &mut Buffers,
    mut stats: Option<&mut [f32]>,
    o: &mut [f32],
    o_rs: usize,
) {
    let ((qm, km, vm), (t, d, e), how) = (pr.mats, pr.sizes, pr.how);
    // Hard weights without a backward pass to come need no softmax.
    let soft = !how.hard || stats.is_some();
    let mut m = [f32::NEG_INFINITY; ATTN_BLOCK];
    let mut l = [0.0f32; ATTN_BLOCK];
    let mut hm = [f32::NEG_INFINITY; ATTN_BLOCK];
    let mut count = [0.0f32; ATTN_BLOCK];
    for i in 0..n {
        o[i * o_rs..][..e].fill(0.0);
    }
    for c0 in (0..lim).step_by(pr.kb) {
        let w = pr.kb.min(lim - c0);
        let sb = &mut buf.scores[..n * w];
        let kt = km.skip_rows(c0).t();
        matmul(sb, w, (n, w, d), (qm.skip_rows(r0), kt), false, pr.scale);
        for (i, row) in sb.chunks_mut(w).enumerate() {
            let seen = pr.vis.limit(r0 + i, t).saturating_sub(c0).min(w);
            let orow = &mut o[i * o_rs..][..e];
            if how.hard {
                let hw = &mut buf.hard[i * w..(i + 1) * w];
                hard_step(row, seen, &mut hm[i], &mut count[i], hw, orow);
            }
            if soft {
                let alpha = online_step(row, seen, &mut m[i], &mut l[i]);
                if !how.hard && alpha != 1.0 {
                    scale_row(orow, alpha);
                }
            }
        }
        let first = pr.p0 + r0 * t + c0;
        let (sb, hard) = (&buf.scores[..n * w], head(&buf.hard, n * w));
        let pm = value_weights(how, (first, t, w), sb, hard, &mut buf.dropped);
        matmul(o, o_rs, (n, e, w), (pm, vm.skip_rows(c0)), true, 1.0);
    }
    for i in 0..n {
        let inv = 1.0 / l[i];
        if let Some(st) = stats.as_deref_mut() {
            (st[2 * i], st[2 * i + 1]) = (m[i], inv);
        }
        let by = if how.hard { 1.0 / count[i] } else { inv };
        scale_row(&mut o[i * o_rs..][..e], by);
    }
}

/// Where the gradients go: dq, dk and dv with their row strides.
pub(super) type Grads<'g> = (
    (&'g mut [f32], usize),
    (&'g mut [f32], usize),
    (&'g mut [f32], usize),
);

/// The gradients of rows `r0..r0 + n` of a pair, `kb` keys at a time: `stats` holds the rows'
/// statistics (two per row from the block's first), `out` the pair's output `[queries,
/// value_dim]` where kept (soft attention: then the first pass is skipped), `gm` the output's
/// gradient of the pair;
/// `dq` starts at the block's first row (rows `dq_rs` apart, written), `dk` and `dv` at the
/// pair's KV head (rows `dk_rs` and `dv_rs` apart, accumulated).
pub(super) fn backward_rows(
    pr: &Pair,
    (r0, n, lim): (usize, usize, usize),
    buf: &mut Buffers,
    (stats, out): (&[f32], Option<Mat>),
    gm: Mat,
    outs: Grads,
) {
    let ((dq, dq_rs), (dk, dk_rs), (dv, dv_rs)) = outs;
    let ((qm, km, vm), (t, d, e), how) = (pr.mats, pr.sizes, pr.how);
    let (qb, gob) = (qm.skip_rows(r0), gm.skip_rows(r0));
    let st = |i: usize| (stats[2 * i], stats[2 * i + 1]);
    // Each row's Σ_j p_j · dp̃_j, and its count of tied maxima (hard).
    let mut dsum = [0.0f32; ATTN_BLOCK];
    let mut count = [0.0f32; ATTN_BLOCK];
    // Soft attention's output gives the sums at once: Σ_j p_j · mask_j · (go · v_j) = go · o.
    let given = out.filter(|_| !how.hard);
    if let Some(om) = given {
        let om = om.skip_rows(r0);
        for (i, s) in dsum.iter_mut().take(n).enumerate() {
            *s = dot(&gob.data[i * gob.rs..][..e], &om.data[i * om.rs..][..e]);
        }
    }
    for pass in usize::from(given.is_some())..2 {
        for c0 in (0..lim).step_by(pr.kb) {
            let w = pr.kb.min(lim - c0);
            let first = pr.p0 + r0 * t + c0;
            // The block's probabilities as the forward pass had them (and the hard weights).
            let sb = &mut buf.scores[..n * w];
            matmul(
                sb,
                w,
                (n, w, d),
                (qb, km.skip_rows(c0).t()),
                false,
                pr.scale,
            );
            for (i, row) in sb.chunks_mut(w).enumerate() {
                let seen = pr.vis.limit(r0 + i, t).saturating_sub(c0).min(w);
                let (mx, _) = st(i);
                if how.hard && pass == 0 {
                    count[i] += row[..seen].iter().filter(|&&x| x == mx).count() as f32;
                } else if how.hard {
                    let hw = &mut buf.hard[i * w..(i + 1) * w];
                    for (j, (h, &x)) in hw.iter_mut().zip(&*row).enumerate() {
                        *h = if j < seen && x == mx {
                            1.0 / count[i]
                        } else {
                            0.0
                        };
                    }
                }
                softmax_from_stats(row, seen, st(i));
            }
            let (sb, hard) = (&buf.scores[..n * w], head(&buf.hard, n * w));
            if pass == 1 {
                // dv += (dropped weights)ᵀ · go
                let pm = value_weights(how, (first, t, w), sb, hard, &mut buf.dropped);
                let dvb = &mut dv[c0 * dv_rs..];
                matmul(dvb, dv_rs, (w, e, n), (pm.t(), gob), true, 1.0);
            }
            // dp̃ = (go · vᵀ) · mask / (1 − p), rows of w.
            let ds = &mut buf.ds[..n * w];
            matmul(ds, w, (n, w, e), (gob, vm.skip_rows(c0).t()), false, 1.0);
            for (i, (g, p)) in ds.chunks_mut(w).zip(sb.chunks(w)).enumerate() {
                if let Some(dr) = how.drop {
                    dropout_in_place_chunk(dr, first + i * t, g);
                }
                if pass == 0 {
                    dsum[i] += dot(p, g);
                } else {
                    softmax_grad_given(p, g, dsum[i]);
                }
            }
            if pass == 0 {
                continue;
            }
            // dq (+)= scale · ds · k; dk += scale · dsᵀ · q
            let dsb = Mat::rows(ds, w);
            matmul(
                dq,
                dq_rs,
                (n, d, w),
                (dsb, km.skip_rows(c0)),
                c0 > 0,
                pr.scale,
            );
            let dkb = &mut dk[c0 * dk_rs..];
            matmul(dkb, dk_rs, (w, d, n), (dsb.t(), qb), true, pr.scale);
        }
    }
}
