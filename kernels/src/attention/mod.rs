//! Attention `softmax(scale · q kᵀ) v` with grouped KV heads and a causal limit, and its
//! gradients.

use crate::dropout::{dropout_in_place_chunk, dropout_row, Dropout};
use crate::gemm::{matmul, Mat, View4};
use crate::softmax::{softmax_from_stats, softmax_grad_in_place, softmax_in_place, Visible};
use rayon::prelude::*;

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

/// The dropout of a block's weights `pb` (rows `rs` apart; the block's first element is at
/// index `first` of p, whose rows are `t` long) into `out`, rows of their first `lim` keys.
fn drop_block(
    dr: &Dropout,
    (first, t): (usize, usize),
    pb: &[f32],
    rs: usize,
    lim: usize,
    out: &mut [f32],
) {
    for (i, (row, out)) in pb.chunks(rs).zip(out.chunks_mut(lim)).enumerate() {
        dropout_row(dr, first + i * t, &row[..lim], out);
    }
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

/// The weights of the values of one block: the softmax probabilities `pb` (rows of `t`), or
/// with `hard` the one-hot rows in `hard` (rows of `lim`), then dropped out into `dropped`
/// (rows of `lim`) with `drop`. `first`: the index of the block's first element in p.
fn value_weights<'b>(
    how: Weighing,
    (first, t, lim): (usize, usize, usize),
    pb: &'b [f32],
    hard: &'b [f32],
    dropped: &'b mut [f32],
) -> Mat<'b> {
    let (src, rs) = if how.hard { (hard, lim) } else { (pb, t) };
    match how.drop {
        Some(dr) => {
            drop_block(dr, (first, t), src, rs, lim, dropped);
            Mat::rows(dropped, lim)
        }
        None => Mat::rows(src, rs),
    }
}

/// Attention `o = softmax(scale · q kᵀ) v` per (batch, query head), each row over the keys
/// `vis` lets it see (hidden keys get probability 0; `vis.queries` is the number of query
/// positions). Query head h reads KV head h / (heads / kv_heads). `q` `[batch, heads, queries,
/// dim]`, `k` `[batch, kv_heads, keys, dim]` and `v` `[batch, kv_heads, keys, value_dim]` are
/// read through their strides. Writes `o` laid out as `[batch, queries, heads, value_dim]` (the
/// layout the heads are merged in) and, when
/// given, each row's softmax statistics `stats` `[batch, heads, queries, 2]` (its largest score
/// and the inverse of its sum of exponentials), all the backward pass needs: memory linear in
/// the length. Batch rows run in parallel (blocks of [`ATTN_BLOCK`] rows of them when there
/// are fewer batch rows than threads); each task holds the scores of one block at a time.
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
    let (heads, s, t, d, e) = (sh.heads, sh.queries, sh.keys, sh.dim, sh.value_dim);
    let (group, blocks) = sh.plan(vis);
    // A task per batch row, or, when there are fewer batch rows than threads (one long
    // sequence), per row block of a batch row: it runs every head of its rows, owns their
    // slice of o (the blocks cover the rows in order) and returns their statistics.
    let per_task = if sh.batch >= rayon::current_num_threads() {
        blocks.len()
    } else {
        1
    };
    let mut tasks = Vec::new();
    for (bi, ob) in o.chunks_mut(s * heads * e).enumerate() {
        let mut rest = ob;
        for bl in blocks.chunks(per_task) {
            let rows: usize = bl.iter().map(|b| b.1).sum();
            let (mine, more) = rest.split_at_mut(rows * heads * e);
            tasks.push((bi, bl, (bl[0].0, rows), mine));
            rest = more;
        }
    }
    // Hard weights without a backward pass to come need no softmax.
    let want_stats = stats.is_some();
    let soft = !how.hard || want_stats;
    // Each task's statistics, with the batch row and the rows (first, count) they are for.
    let task_stats: Vec<(usize, (usize, usize), Vec<f32>)> = tasks
        .into_par_iter()
        .map_init(
            || {
                // The scores, the dropped weights and the hard weights of one block, made once
                // per worker, not per task.
                let scratch = vec![0.0f32; ATTN_BLOCK * t];
                (
                    scratch,
                    block_buffer(how.drop.is_some(), t),
                    block_buffer(how.hard, t),
                )
            },
            |(scratch, dropped, hard), (bi, bl, (r_base, rows), ob)| {
                // The statistics of these rows, [heads, rows, 2].
                let mut st = vec![0.0f32; if want_stats { heads * rows * 2 } else { 0 }];
                for h in 0..heads {
                    let (qm, km, vm) = (q.mat(bi, h), k.mat(bi, h / group), v.mat(bi, h / group));
                    for &(r0, n, lim) in bl {
                        let pb = &mut scratch[..n * t];
                        matmul(pb, t, (n, lim, d), (qm.skip_rows(r0), km.t()), false, scale);
                        for (i, row) in pb.chunks_mut(t).enumerate() {
                            let seen = vis.limit(r0 + i, t);
                            if how.hard {
                                hard_row(&row[..lim], seen, &mut hard[i * lim..(i + 1) * lim]);
                            }
                            if !soft {
                                continue;
                            }
                            let row_st = softmax_in_place(&mut row[..lim], seen);
                            if want_stats {
                                let at = 2 * (h * rows + r0 - r_base + i);
                                (st[at], st[at + 1]) = row_st;
                            }
                        }
                        let first = ((bi * heads + h) * s + r0) * t;
                        let pm = value_weights(how, (first, t, lim), pb, hard, dropped);
                        let ob = &mut ob[(r0 - r_base) * heads * e + h * e..];
                        matmul(ob, heads * e, (n, e, lim), (pm, vm), false, 1.0);
                    }
                }
                (bi, (r_base, rows), st)
            },
        )
        .collect();
    if let Some(stats) = stats {
        for (bi, (r_base, rows), st) in &task_stats {
            let (bi, r_base, rows) = (*bi, *r_base, *rows);
            for h in 0..heads {
                let at = 2 * ((bi * heads + h) * s + r_base);
                stats[at..at + 2 * rows].copy_from_slice(&st[2 * h * rows..2 * (h + 1) * rows]);
            }
        }
    }
}

/// A block's buffer of weights (`ATTN_BLOCK` rows of up to `t` keys) where `used`, else empty.
fn block_buffer(used: bool, t: usize) -> Vec<f32> {
    vec![0.0f32; if used { ATTN_BLOCK * t } else { 0 }]
}

/// The gradients of [`attention`] from its inputs, the row statistics its forward pass wrote
/// and the output's gradient `go` (a view like q): writes `dq` laid out as `[batch, queries,
/// heads, dim]`, `dk` as `[batch, keys, kv_heads, dim]` and `dv` as `[batch, keys, kv_heads,
/// value_dim]`. Each block's scores are
/// computed again and turned into the forward pass's probabilities to the bit (the same
/// products and the same `exp`); with the forward pass's `how.drop`, the mask is computed
/// again from its key and each element's index; with `how.hard`, v's gradient comes from the
/// hard weights and the scores' from the softmax (straight-through). Nothing of size queries ×
/// keys is kept.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    (q, k, v, go): (View4, View4, View4, View4),
    stats: &[f32],
    sh: AttnShape,
    scale: f32,
    vis: Visible,
    how: Weighing,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (heads, s, t, d, e) = (sh.heads, sh.queries, sh.keys, sh.dim, sh.value_dim);
    let (group, blocks) = sh.plan(vis);
    let per = heads * s;
    let (kv_rs, v_rs) = (sh.kv_heads * d, sh.kv_heads * e);
    // The gradients of batch row `bi` from KV heads `khs` and the query heads that read them,
    // written at rows of `rs` (dq, dk, dv) from column 0 for the first head of the range. The
    // sums run over the heads and blocks in order, however the work is split.
    let grads = |bi: usize,
                 khs: std::ops::Range<usize>,
                 (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
                 (q_rs, k_rs, v_rs): (usize, usize, usize)| {
        let mut ds = vec![0.0f32; ATTN_BLOCK * t];
        let mut dropped = block_buffer(how.drop.is_some(), t);
        let mut hard = block_buffer(how.hard, t);
        let mut scratch = vec![0.0f32; ATTN_BLOCK * t];
        let (h0, kh0) = (khs.start * group, khs.start);
        for h in khs.start * group..khs.end * group {
            let kh = h / group;
            let (qm, km, vm, gm) = (q.mat(bi, h), k.mat(bi, kh), v.mat(bi, kh), go.mat(bi, h));
            let (dv, dk) = (&mut dv[(kh - kh0) * e..], &mut dk[(kh - kh0) * d..]);
            for &(r0, n, lim) in &blocks {
                let first = ((bi * heads + h) * s + r0) * t;
                // The block's probabilities, rows of t, as the forward pass had them.
                let pb = &mut scratch[..n * t];
                matmul(pb, t, (n, lim, d), (qm.skip_rows(r0), km.t()), false, scale);
                for (i, row) in pb.chunks_mut(t).enumerate() {
                    let at = 2 * (bi * per + h * s + r0 + i);
                    let (st, seen) = ((stats[at], stats[at + 1]), vis.limit(r0 + i, t));
                    if how.hard {
                        hard_row(&row[..lim], seen, &mut hard[i * lim..(i + 1) * lim]);
                    }
                    softmax_from_stats(&mut row[..lim], seen, st);
                }
                let pb = &*pb;
                let pm = value_weights(how, (first, t, lim), pb, &hard, &mut dropped);
                let gob = gm.skip_rows(r0);
                // dv += (dropped weights)ᵀ · go
                matmul(dv, v_rs, (lim, e, n), (pm.t(), gob), true, 1.0);
                // ds = softmax gradient of (go · vᵀ) (times the mask / (1 − p)), rows of `lim`
                matmul(&mut ds, lim, (n, lim, e), (gob, vm.t()), false, 1.0);
                for (i, g) in ds.chunks_mut(lim).take(n).enumerate() {
                    if let Some(dr) = how.drop {
                        dropout_in_place_chunk(dr, first + i * t, g);
                    }
                    softmax_grad_in_place(&pb[i * t..i * t + lim], g);
                }
                let dsb = Mat::rows(&ds, lim);
                // dq = scale · ds · k; dk += scale · dsᵀ · q
                let dqb = &mut dq[r0 * q_rs + (h - h0) * d..];
                matmul(dqb, q_rs, (n, d, lim), (dsb, km), false, scale);
                let qb = qm.skip_rows(r0);
                matmul(dk, k_rs, (lim, d, n), (dsb.t(), qb), true, scale);
            }
        }
    };
    let (dq_n, dk_n, dv_n) = (s * heads * d, t * kv_rs, t * v_rs);
    let rows = dq
        .par_chunks_mut(dq_n)
        .zip(dk.par_chunks_mut(dk_n).zip(dv.par_chunks_mut(dv_n)))
        .enumerate();
    if sh.batch >= rayon::current_num_threads() {
        // A task per batch row, writing its gradients in place.
        rows.for_each(|(bi, (dq, (dk, dv)))| {
            dk.fill(0.0);
            dv.fill(0.0);
            grads(bi, 0..sh.kv_heads, (dq, dk, dv), (heads * d, kv_rs, v_rs));
        });
        return;
    }
    // Fewer batch rows than threads (one long sequence): a task per (batch row, KV head),
    // each into buffers of its own (dq of its query heads `[s, group · d]`, dk `[t, d]`, dv
    // `[t, e]`), copied into place after.
    rows.for_each(|(bi, (dq, (dk, dv)))| {
        let parts: Vec<_> = (0..sh.kv_heads)
            .into_par_iter()
            .map(|kh| {
                let mut g = (
                    vec![0.0f32; s * group * d],
                    vec![0.0f32; t * d],
                    vec![0.0f32; t * e],
                );
                grads(
                    bi,
                    kh..kh + 1,
                    (&mut g.0, &mut g.1, &mut g.2),
                    (group * d, d, e),
                );
                g
            })
            .collect();
        for (kh, (gq, gk, gv)) in parts.iter().enumerate() {
            let (w, at) = (group * d, kh * group * d);
            for (to, from) in dq.chunks_mut(heads * d).zip(gq.chunks(w)) {
                to[at..at + w].copy_from_slice(from);
            }
            for (to, from) in dk.chunks_mut(kv_rs).zip(gk.chunks(d)) {
                to[kh * d..(kh + 1) * d].copy_from_slice(from);
            }
            for (to, from) in dv.chunks_mut(v_rs).zip(gv.chunks(e)) {
                to[kh * e..(kh + 1) * e].copy_from_slice(from);
            }
        }
    });
}

#[cfg(test)]
mod tests;
