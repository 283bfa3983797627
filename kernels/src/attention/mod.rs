//! Attention `softmax(scale · q kᵀ) v` with grouped KV heads and a causal limit, and its
//! gradients.

use crate::dropout::{dropout_in_place_chunk, dropout_row, Dropout};
use crate::gemm::{matmul, Mat, View4};
use crate::softmax::{softmax_from_stats, softmax_grad_in_place, softmax_in_place, Visible};
use rayon::prelude::*;

mod blocked;
use blocked::{Buffers, Pair};

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (dividing `heads`: query head h reads KV head h / (heads / kv_heads)).
    pub kv_heads: usize,
    /// Query positions.
    pub queries: usize,
    /// Key positions.
    pub keys: usize,
    /// Features per query and key.
    pub dim: usize,
    /// Features per value (and output).
    pub value_dim: usize,
}

impl AttnShape {
    /// Query heads per KV head, and the row blocks of one head (see [`attn_blocks`]).
    fn plan(&self, vis: Visible) -> (usize, Vec<(usize, usize, usize)>) {
        let group = self.heads / self.kv_heads.max(1);
        (group, attn_blocks(self.queries, self.keys, vis))
    }
}

/// Query rows per block: a causal block's products stop at the last key its last row sees,
/// which skips most of the hidden upper triangle (38 % of the work at 127 keys), and a block's
/// scores are all of them that are ever held at once.
const ATTN_BLOCK: usize = 32;

/// The row blocks of one pair: `(first row, rows, keys the block needs)`. Causal rows come in
/// groups of `vis.queries` (one per query head of the KV head), each cut into blocks.
fn attn_blocks(rows: usize, keys: usize, vis: Visible) -> Vec<(usize, usize, usize)> {
    let q = if vis.causal {
        vis.queries.max(1)
    } else {
        rows.max(1)
    };
    let mut out = Vec::new();
    for g0 in (0..rows).step_by(q) {
        let g1 = (g0 + q).min(rows);
        for r0 in (g0..g1).step_by(ATTN_BLOCK) {
            let n = ATTN_BLOCK.min(g1 - r0);
            out.push((r0, n, vis.limit(r0 + n - 1, keys)));
        }
    }
    out
}

/// The dropout of a block's weights `pb` (rows of `lim`; the block's first element is at
/// index `first` of p, whose rows are `t` long) into `out` (rows of `lim`).
fn drop_block(dr: &Dropout, (first, t): (usize, usize), pb: &[f32], lim: usize, out: &mut [f32]) {
    for (i, (row, out)) in pb.chunks(lim).zip(out.chunks_mut(lim)).enumerate() {
        dropout_row(dr, first + i * t, row, out);
    }
}

/// The first `len` elements of a buffer, or all of it where shorter (an unused buffer).
fn head(buf: &[f32], len: usize) -> &[f32] {
    &buf[..len.min(buf.len())]
}

/// How the values are weighed, beyond the softmax of the scores.
#[derive(Clone, Copy, Debug, Default)]
pub struct Weighing<'a> {
    /// Dropout of the weights before the product with v.
    pub drop: Option<&'a Dropout>,
    /// Hard attention: each row's weights are one-hot on its largest visible score (tied
    /// maxima share the weight equally), and their gradient is the softmax's
    /// (straight-through: `soft + (hard − soft)` with the difference held constant).
    pub hard: bool,
}

/// Hard attention's weights of one row of raw scores: `out[j] = 1 / #ties` where
/// `scores[j]` is the row's largest score (over its first `n`), else 0; `out` is as long as
/// `scores`.
fn hard_row(scores: &[f32], n: usize, out: &mut [f32]) {
    let m = scores[..n]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let hits = scores[..n].iter().filter(|&&x| x == m).count();
    let w = 1.0 / hits as f32;
    for (j, (o, &x)) in out.iter_mut().zip(scores).enumerate() {
        *o = if j < n && x == m { w } else { 0.0 };
    }
}

/// The weights of the values of one block: the softmax probabilities `pb`, or with `hard` the
/// one-hot rows in `hard`, both the block's rows of `lim`, then dropped out into `dropped` (rows of `lim`)
/// with `drop`. `first`: the index of the block's first element in p, whose rows are `t` long.
fn value_weights<'b>(
    how: Weighing,
    (first, t, lim): (usize, usize, usize),
    pb: &'b [f32],
    hard: &'b [f32],
    dropped: &'b mut [f32],
) -> Mat<'b> {
    let src = if how.hard { hard } else { pb };
    match how.drop {
        Some(dr) => {
            drop_block(dr, (first, t), src, lim, dropped);
            Mat::rows(dropped, lim)
        }
        None => Mat::rows(src, lim),
    }
}

/// Keys per key block: a row block that sees more keys than this takes them this many at a
/// time with the online softmax ([`blocked`]), so its scores stay in cache at any length.
pub const KEY_BLOCK: usize = 512;

/// Attention `o = softmax(scale · q kᵀ) v` per (batch, query head), each row over the keys
/// `vis` lets it see (hidden keys get probability 0; `vis.queries` is the number of query
/// positions). Query head h reads KV head h / (heads / kv_heads). `q` `[batch, heads, queries,
/// dim]`, `k` `[batch, kv_heads, keys, dim]` and `v` `[batch, kv_heads, keys, value_dim]` are
/// read through their strides. Writes `o` laid out as `[batch, queries, heads, value_dim]` (the
/// layout the heads are merged in) and, when
/// given, each row's softmax statistics `stats` `[batch, heads, queries, 2]` (its largest score
/// and the inverse of its sum of exponentials), all the backward pass needs: memory linear in
/// the length. Batch rows run in parallel; each holds the scores of one block of
/// [`ATTN_BLOCK`] rows at a time, over all its keys when they are at most [`KEY_BLOCK`], else
/// over [`KEY_BLOCK`] keys at a time with the online softmax (a running maximum and sum per
/// row, the output rescaled when the maximum grows; the statistics are the row's own).
///
/// With `how.drop`, the weights are dropped out before the product with v: element
/// `((b·heads + h)·queries + i)·keys + j` of p (its row-major index) is kept, and scaled by
/// `1 / (1 − p)`, exactly when [`Dropout::keeps`] says so, the mask [`crate::dropout`] applies to
/// the tensor p with the same key. With `how.hard`, the weights are one-hot on each row's
/// largest score (see [`Weighing`]); the statistics are still the softmax's.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: View4,
    k: View4,
    v: View4,
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    how: Weighing,
    stats: Option<&mut [f32]>,
    o: &mut [f32],
) {
    attention_kb(q, k, v, sh, scale, vis, how, stats, o, KEY_BLOCK);
}

/// [`attention`] with key blocks of `kb` keys.
#[allow(clippy::too_many_arguments)]
fn attention_kb(
    q: View4,
    k: View4,
    v: View4,
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    how: Weighing,
    stats: Option<&mut [f32]>,
    o: &mut [f32],
    kb: usize,
) {
    let (heads, s, t, d, e) = (sh.heads, sh.queries, sh.keys, sh.dim, sh.value_dim);
    let kb = kb.max(1);
    let (group, blocks) = sh.plan(vis);
    let stats: Vec<Option<&mut [f32]>> = match stats {
        Some(st) => st.chunks_mut(heads * s * 2).map(Some).collect(),
        None => (0..sh.batch).map(|_| None).collect(),
    };
    o.par_chunks_mut(s * heads * e)
        .zip(stats)
        .enumerate()
        .for_each(|(bi, (o, mut stats))| {
            // Scores (then weights), hard weights and dropped weights of one block, rows of
            // its `lim` keys (or of one key block).
            let mut buf = Buffers::new(how, t.min(kb), false);
            // Hard weights without a backward pass to come need no softmax.
            let soft = !how.hard || stats.is_some();
            for h in 0..heads {
                let mats = (q.mat(bi, h), k.mat(bi, h / group), v.mat(bi, h / group));
                let (qm, km, vm) = mats;
                let p0 = (bi * heads + h) * s * t;
                for &(r0, n, lim) in &blocks {
                    let ob = &mut o[r0 * heads * e + h * e..];
                    if lim > kb {
                        let (sizes, st) = ((t, d, e), stats.as_deref_mut());
                        let pr = Pair {
                            mats,
                            p0,
                            sizes,
                            scale,
                            vis,
                            how,
                            kb,
                        };
                        let st = st.map(|st| &mut st[2 * (h * s + r0)..]);
                        blocked::forward_rows(&pr, (r0, n, lim), &mut buf, st, ob, heads * e);
                        continue;
                    }
                    let pb = &mut buf.scores[..n * lim];
                    matmul(
                        pb,
                        lim,
                        (n, lim, d),
                        (qm.skip_rows(r0), km.t()),
                        false,
                        scale,
                    );
                    for (i, row) in pb.chunks_mut(lim).enumerate() {
                        let seen = vis.limit(r0 + i, t);
                        if how.hard {
                            hard_row(row, seen, &mut buf.hard[i * lim..(i + 1) * lim]);
                        }
                        if !soft {
                            continue;
                        }
                        let st = softmax_in_place(row, seen);
                        if let Some(stats) = stats.as_deref_mut() {
                            let at = 2 * (h * s + r0 + i);
                            (stats[at], stats[at + 1]) = st;
                        }
                    }
                    let (pb, hard) = (&buf.scores[..n * lim], head(&buf.hard, n * lim));
                    let first = p0 + r0 * t;
                    let pm = value_weights(how, (first, t, lim), pb, hard, &mut buf.dropped);
                    matmul(ob, heads * e, (n, e, lim), (pm, vm), false, 1.0);
                }
            }
        });
}

/// The gradients of [`attention`] from its inputs, the row statistics its forward pass wrote
/// and the output's gradient `go` (a view like q): writes `dq` laid out as `[batch, queries,
/// heads, dim]`, `dk` as `[batch, keys, kv_heads, dim]` and `dv` as `[batch, keys, kv_heads,
/// value_dim]`. Each block's scores are
/// computed again and turned into the forward pass's probabilities to the bit (the same
/// products and the same `exp`); with the forward pass's `how.drop`, the mask is computed
/// again from its key and each element's index; with `how.hard`, v's gradient comes from the
/// hard weights and the scores' from the softmax (straight-through). Nothing of size queries ×
/// keys is kept. Row blocks that see more than [`KEY_BLOCK`] keys take them in key blocks; the
/// softmax gradient's row term `Σ_j p_j · dp̃_j` is `go · o` where the forward pass's output `o`
/// (laid out as it wrote it, `[batch, queries, heads, value_dim]`) is given and the weights
/// were soft; otherwise (hard attention, or no `o`) a first pass over the key blocks sums it.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    ins: (View4, View4, View4, View4),
    stats: (&[f32], Option<&[f32]>),
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    how: Weighing,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    attention_backward_kb(ins, stats, sh, scale, vis, how, (dq, dk, dv), KEY_BLOCK);
}

/// [`attention_backward`] with key blocks of `kb` keys.
#[allow(clippy::too_many_arguments)]
fn attention_backward_kb(
    (q, k, v, go): (View4, View4, View4, View4),
    (stats, out): (&[f32], Option<&[f32]>),
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    how: Weighing,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    kb: usize,
) {
    let (heads, s, t, d, e) = (sh.heads, sh.queries, sh.keys, sh.dim, sh.value_dim);
    let kb = kb.max(1);
    let (group, blocks) = sh.plan(vis);
    let (kv_rs, v_rs) = (sh.kv_heads * d, sh.kv_heads * e);
    let per = heads * s;
    dq.par_chunks_mut(s * heads * d)
        .zip(
            dk.par_chunks_mut(t * kv_rs)
                .zip(dv.par_chunks_mut(t * v_rs)),
        )
        .enumerate()
        .for_each(|(bi, (dq, (dk, dv)))| {
            dk.fill(0.0);
            dv.fill(0.0);
            let mut buf = Buffers::new(how, t.min(kb), true);
            for h in 0..heads {
                let kh = h / group;
                let mats = (q.mat(bi, h), k.mat(bi, kh), v.mat(bi, kh));
                let ((qm, km, vm), gm) = (mats, go.mat(bi, h));
                let p0 = (bi * heads + h) * s * t;
                for &(r0, n, lim) in &blocks {
                    let dqb = &mut dq[r0 * heads * d + h * d..];
                    if lim > kb {
                        let pr = Pair {
                            mats,
                            p0,
                            sizes: (t, d, e),
                            scale,
                            vis,
                            how,
                            kb,
                        };
                        let st = &stats[2 * (bi * per + h * s + r0)..];
                        // The pair's output, rows `heads · e` apart.
                        let om = out.map(|o| Mat {
                            data: &o[(bi * s * heads + h) * e..],
                            rs: heads * e,
                            cs: 1,
                        });
                        let (dkh, dvh) = (&mut dk[kh * d..], &mut dv[kh * e..]);
                        let outs = ((dqb, heads * d), (dkh, kv_rs), (dvh, v_rs));
                        let sto = (st, om);
                        blocked::backward_rows(&pr, (r0, n, lim), &mut buf, sto, gm, outs);
                        continue;
                    }
                    let first = p0 + r0 * t;
                    // The block's probabilities, rows of lim, as the forward pass had them.
                    let pb = &mut buf.scores[..n * lim];
                    matmul(
                        pb,
                        lim,
                        (n, lim, d),
                        (qm.skip_rows(r0), km.t()),
                        false,
                        scale,
                    );
                    for (i, row) in pb.chunks_mut(lim).enumerate() {
                        let at = 2 * (bi * per + h * s + r0 + i);
                        let (st, seen) = ((stats[at], stats[at + 1]), vis.limit(r0 + i, t));
                        if how.hard {
                            hard_row(row, seen, &mut buf.hard[i * lim..(i + 1) * lim]);
                        }
                        softmax_from_stats(row, seen, st);
                    }
                    let (pb, hard) = (&buf.scores[..n * lim], head(&buf.hard, n * lim));
                    let pm = value_weights(how, (first, t, lim), pb, hard, &mut buf.dropped);
                    let gob = gm.skip_rows(r0);
                    // dv += (dropped weights)ᵀ · go
                    matmul(
                        &mut dv[kh * e..],
                        v_rs,
                        (lim, e, n),
                        (pm.t(), gob),
                        true,
                        1.0,
                    );
                    // ds = softmax gradient of (go · vᵀ) (times the mask / (1 − p)), rows of
                    // `lim`
                    let ds = &mut buf.ds[..n * lim];
                    matmul(ds, lim, (n, lim, e), (gob, vm.t()), false, 1.0);
                    for (i, g) in ds.chunks_mut(lim).enumerate() {
                        if let Some(dr) = how.drop {
                            dropout_in_place_chunk(dr, first + i * t, g);
                        }
                        softmax_grad_in_place(&pb[i * lim..(i + 1) * lim], g);
                    }
                    let dsb = Mat::rows(ds, lim);
                    // dq = scale · ds · k; dk += scale · dsᵀ · q
                    matmul(dqb, heads * d, (n, d, lim), (dsb, km), false, scale);
                    let qb = qm.skip_rows(r0);
                    matmul(
                        &mut dk[kh * d..],
                        kv_rs,
                        (lim, d, n),
                        (dsb.t(), qb),
                        true,
                        scale,
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests;
