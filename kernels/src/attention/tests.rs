//! Tests of the attention kernel: against its definition, finite differences, and the split
//! of the work.

use super::*;
use crate::testing::{assert_close, check_grad, data, dense, weighted};

/// `[n0, a, b, d]` values laid out as `[n0, b, a, d]`.
fn swap12(v: &[f32], [n0, a, b, d]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0f32; v.len()];
    for i in 0..n0 {
        for j in 0..a {
            for l in 0..b {
                let (from, to) = (((i * a + j) * b + l) * d, ((i * b + l) * a + j) * d);
                out[to..to + d].copy_from_slice(&v[from..from + d]);
            }
        }
    }
    out
}

/// (shape, visibility): grouped heads with a decoding offset; more causal rows than a
/// block (values wider than the keys); cross attention with every key visible, in one
/// block and in two (values narrower).
fn cases() -> [(AttnShape, Visible); 4] {
    let sh = |batch, heads, kv_heads, queries, keys, (dim, value_dim)| AttnShape {
        batch,
        heads,
        kv_heads,
        queries,
        keys,
        dim,
        value_dim,
    };
    let vis = |queries, causal, offset| Visible {
        queries,
        causal,
        offset,
    };
    [
        (sh(2, 4, 2, 3, 5, (4, 4)), vis(3, true, 2)),
        (
            sh(1, 2, 1, ATTN_BLOCK + 3, ATTN_BLOCK + 3, (3, 5)),
            vis(ATTN_BLOCK + 3, true, 0),
        ),
        (sh(2, 2, 2, 3, 4, (5, 5)), vis(3, false, 0)),
        (
            sh(1, 2, 2, ATTN_BLOCK + 5, 7, (3, 2)),
            vis(ATTN_BLOCK + 5, false, 0),
        ),
    ]
}

/// Runs [`attention`] on dense q `[b, h, s, d]`, k, v `[b, hk, t, d]`: returns o
/// `[b, s, h, d]` and the row statistics.
fn run(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: AttnShape,
    vis: Visible,
    how: Weighing,
) -> (Vec<f32>, Vec<f32>) {
    let AttnShape {
        batch: b,
        heads: h,
        kv_heads: hk,
        queries: s,
        keys: t,
        dim: d,
        value_dim: e,
    } = sh;
    // NaN where the kernel has not written: every element must be.
    let (mut st, mut o) = (vec![f32::NAN; b * h * s * 2], vec![f32::NAN; b * s * h * e]);
    let (qs, ks) = ([b, h, s, d], [b, hk, t, d]);
    let (q, k, v) = (dense(q, qs), dense(k, ks), dense(v, [b, hk, t, e]));
    attention(q, k, v, sh, 0.7, vis, how, Some(&mut st), &mut o);
    // Without the statistics (no backward pass to come): the same output to the bit.
    let mut o2 = vec![f32::NAN; o.len()];
    attention(q, k, v, sh, 0.7, vis, how, None, &mut o2);
    assert_eq!(o, o2, "{sh:?} {vis:?}");
    (o, st)
}

/// No dropout, and dropout of 0.3 (the mask of key 5).
fn drops() -> [Option<Dropout>; 2] {
    [None, Some(Dropout::new(5, 0.3))]
}

/// Every case with every dropout, soft and hard.
fn variants() -> Vec<((AttnShape, Visible), Option<Dropout>, bool)> {
    let mut out = Vec::new();
    for c in cases() {
        for d in drops() {
            for hard in [false, true] {
                out.push((c, d, hard));
            }
        }
    }
    out
}

#[test]
fn attention_matches_its_definition() {
    for ((sh, vis), drop, hard) in variants() {
        let how = Weighing {
            drop: drop.as_ref(),
            hard,
        };
        let AttnShape {
            batch: b,
            heads: h,
            kv_heads: hk,
            queries: s,
            keys: t,
            dim: d,
            value_dim: e,
        } = sh;
        let q = data(b * h * s * d, 1, 1.5);
        let (k, v) = (data(b * hk * t * d, 2, 1.5), data(b * hk * t * e, 3, 1.5));
        let (o, _) = run(&q, &k, &v, sh, vis, how);
        let mut want = vec![0.0f64; o.len()];
        for bi in 0..b {
            for hi in 0..h {
                let kh = hi / (h / hk);
                for i in 0..s {
                    let n = if vis.causal {
                        (vis.offset + i + 1).min(t)
                    } else {
                        t
                    };
                    let qr = &q[((bi * h + hi) * s + i) * d..][..d];
                    let row = |m: &[f32], j: usize, d: usize| {
                        m[((bi * hk + kh) * t + j) * d..][..d].to_vec()
                    };
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let kr = row(&k, j, d);
                            0.7 * (0..d).map(|l| qr[l] as f64 * kr[l] as f64).sum::<f64>()
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|x| (x - mx).exp()).sum();
                    // Hard: one-hot on the largest score (no ties in this data).
                    let weight = |sc: f64| {
                        if hard {
                            f64::from(u8::from(sc == mx))
                        } else {
                            (sc - mx).exp() / z
                        }
                    };
                    let out = &mut want[((bi * s + i) * h + hi) * e..][..e];
                    for (j, sc) in scores.iter().enumerate() {
                        let vr = row(&v, j, e);
                        // The mask of element (bi, hi, i, j) of p [b, h, s, t].
                        let m = drop.map_or(1.0, |dr| {
                            let at = ((bi * h + hi) * s + i) * t + j;
                            if dr.keeps(at) {
                                dr.scale as f64
                            } else {
                                0.0
                            }
                        });
                        for l in 0..e {
                            out[l] += m * weight(*sc) * vr[l] as f64;
                        }
                    }
                }
            }
        }
        assert_close(&format!("{sh:?} {vis:?} {how:?}"), &o, &want, 1e-5);
    }
}

#[test]
fn hard_weights_share_tied_maxima() {
    let mut out = [9.0f32; 5];
    hard_row(&[0.5, 2.0, -1.0, 2.0, 7.0], 4, &mut out);
    assert_eq!(out, [0.0, 0.5, 0.0, 0.5, 0.0]);
}

/// q `[b, h, s, d]`, k `[b, hk, t, d]`, v `[b, hk, t, e]` and a loss's weights `w` laid out
/// like o, `[b, s, h, e]`.
fn inputs(sh: AttnShape) -> [Vec<f32>; 4] {
    let (b, h, hk, s, t) = (sh.batch, sh.heads, sh.kv_heads, sh.queries, sh.keys);
    [
        data(b * h * s * sh.dim, 4, 1.5),
        data(b * hk * t * sh.dim, 5, 1.5),
        data(b * hk * t * sh.value_dim, 6, 1.5),
        data(b * s * h * sh.value_dim, 7, 1.0),
    ]
}

/// [`attention_backward`] of the loss `Σ w · o` from the statistics `st`: dq `[b, s, h, d]`,
/// dk `[b, t, hk, d]` and dv `[b, t, hk, e]`, as the kernel lays them out.
fn backward(
    [q, k, v, w]: &[Vec<f32>; 4],
    st: &[f32],
    (sh, vis): (AttnShape, Visible),
    how: Weighing,
) -> [Vec<f32>; 3] {
    let (b, h, hk, s, t) = (sh.batch, sh.heads, sh.kv_heads, sh.queries, sh.keys);
    let (d, e) = (sh.dim, sh.value_dim);
    // NaN where the kernel has not written: every element must be.
    let (mut dq, mut dk) = (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()]);
    let mut dv = vec![f32::NAN; v.len()];
    // o's gradient read as [b, h, s, e] through its [b, s, h, e] layout.
    let go = View4 {
        data: w,
        off: 0,
        strides: [s * h * e, e, h * e],
    };
    let ins = (
        dense(q, [b, h, s, d]),
        dense(k, [b, hk, t, d]),
        dense(v, [b, hk, t, e]),
        go,
    );
    attention_backward(ins, st, sh, 0.7, vis, how, &mut dq, &mut dk, &mut dv);
    [dq, dk, dv]
}

/// Hard attention's gradients: v's those of its forward pass (linear in v), the scores'
/// the softmax's (straight-through), so q's and k's are soft attention's to the bit.
#[test]
fn the_gradients_match_finite_differences() {
    for ((sh, vis), drop, hard) in variants() {
        let how = Weighing {
            drop: drop.as_ref(),
            hard,
        };
        let (b, h, hk, s, t) = (sh.batch, sh.heads, sh.kv_heads, sh.queries, sh.keys);
        let (d, e) = (sh.dim, sh.value_dim);
        let ins = inputs(sh);
        let [q, k, v, w] = &ins;
        let (_, st) = run(q, k, v, sh, vis, how);
        let grads = |how| {
            let [dq, dk, dv] = backward(&ins, &st, (sh, vis), how);
            // As [b, h, s, d] and [b, hk, t, ·], like q, k and v.
            let dq = swap12(&dq, [b, s, h, d]);
            (dq, swap12(&dk, [b, t, hk, d]), swap12(&dv, [b, t, hk, e]))
        };
        let (dq, dk, dv) = grads(how);
        let case = format!("{sh:?} {vis:?} {how:?}");
        let loss = |q: &[f32], k: &[f32], v: &[f32]| weighted(&run(q, k, v, sh, vis, how).0, w);
        check_grad(&format!("{case} dv"), v, &dv, |v| loss(q, k, v));
        if hard {
            let (sq, sk, _) = grads(Weighing { hard: false, ..how });
            assert_eq!((dq, dk), (sq, sk), "{case}");
            continue;
        }
        check_grad(&format!("{case} dq"), q, &dq, |q| loss(q, k, v));
        check_grad(&format!("{case} dk"), k, &dk, |k| loss(q, k, v));
    }
}

/// The work is split by batch row, or by row block and KV head when there are fewer batch
/// rows than threads: both splits give the same output, statistics and gradients, to the
/// bit.
#[test]
fn the_split_of_the_work_changes_no_bit() {
    let in_pool = |threads: usize, f: &(dyn Fn() -> Vec<Vec<f32>> + Sync)| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(f)
    };
    for ((sh, vis), drop, hard) in variants() {
        let how = Weighing {
            drop: drop.as_ref(),
            hard,
        };
        let ins = inputs(sh);
        let all = || {
            let [q, k, v, _] = &ins;
            let (o, st) = run(q, k, v, sh, vis, how);
            let [dq, dk, dv] = backward(&ins, &st, (sh, vis), how);
            vec![o, st, dq, dk, dv]
        };
        // One thread: a task per batch row; more threads than batch rows: the split.
        assert!(sh.batch < 8);
        assert_eq!(in_pool(1, &all), in_pool(8, &all), "{sh:?} {vis:?} {how:?}");
    }
}

#[test]
fn causal_blocks_cover_every_row_once() {
    let vis = Visible {
        queries: 70,
        causal: true,
        offset: 5,
    };
    // Two query groups of 70 rows.
    let blocks = attn_blocks(140, 80, vis);
    let mut next = 0;
    for (r0, n, lim) in blocks {
        assert_eq!(r0, next);
        assert!(n <= ATTN_BLOCK && n > 0);
        assert_eq!(lim, vis.limit(r0 + n - 1, 80));
        next = r0 + n;
    }
    assert_eq!(next, 140);
}
