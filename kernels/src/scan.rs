//! Mamba's selective scan and its backward pass through time.

use crate::add;
use crate::math::{dot, exp};
use rayon::prelude::*;

/// The inputs of a selective scan: dt, a, dtx, bm, cm (see [`selective_scan`]).
pub type ScanInputs<'a> = [&'a [f32]; 5];

/// The sizes of a selective scan: batch, positions, channels, state size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Channels (each has its own state vector).
    pub channels: usize,
    /// State size per channel.
    pub state: usize,
}

/// Mamba's selective scan, per batch row in parallel: for each position t and channel c,
/// `h[c] ← exp(dt[t, c] · a[c]) ⊙ h[c] + dtx[t, c] · bm[t]` (vectors over the state) and
/// `y[t, c] = cm[t] · h[c]`. `dt`, `dtx` are `[batch, len, channels]`, `bm`, `cm`
/// `[batch, len, state]`, `a` `[channels, state]`, `h` `[batch, channels, state]` (the initial
/// state in, the final one out). Writes `y` and, when given, every state after every position
/// into `hs` `[batch, len, channels, state]` (what the backward pass needs).
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    [dt, a, dtx, bm, cm]: ScanInputs,
    sh: ScanShape,
    h: &mut [f32],
    y: &mut [f32],
    hs: Option<&mut [f32]>,
) {
    let ScanShape {
        len: s,
        channels: e,
        state: n,
        ..
    } = sh;
    let (hs, keep) = match hs {
        Some(hs) => (hs, true),
        None => (&mut [][..], false),
    };
    let hs_chunk = if keep { s * e * n } else { 0 };
    let go = |bi: usize, h: &mut [f32], y: &mut [f32], hs: &mut [f32]| {
        for t in 0..s {
            let row = bi * s + t;
            let (bt, ct) = (&bm[row * n..][..n], &cm[row * n..][..n]);
            let (d, u) = (&dt[row * e..][..e], &dtx[row * e..][..e]);
            scan_step(h, a, d, u, bt, ct, &mut y[t * e..(t + 1) * e]);
            if keep {
                hs[t * e * n..(t + 1) * e * n].copy_from_slice(h);
            }
        }
    };
    if keep {
        h.par_chunks_mut(e * n)
            .zip(y.par_chunks_mut(s * e))
            .zip(hs.par_chunks_mut(hs_chunk))
            .enumerate()
            .for_each(|(bi, ((h, y), hs))| go(bi, h, y, hs));
    } else {
        h.par_chunks_mut(e * n)
            .zip(y.par_chunks_mut(s * e))
            .enumerate()
            .for_each(|(bi, (h, y))| go(bi, h, y, &mut []));
    }
}

vectorized! {
    /// One position's step for every channel: updates the states `h` `[e, n]` and writes
    /// `y[c] = cm · h[c]`.
    #[allow(clippy::too_many_arguments)]
    fn scan_step(
        h: &mut [f32],
        a: &[f32],
        dt: &[f32],
        dtx: &[f32],
        b: &[f32],
        c: &[f32],
        y: &mut [f32],
    ) {
        let n = b.len();
        for (((h, a), (&d, &u)), y) in h
            .chunks_exact_mut(n)
            .zip(a.chunks_exact(n))
            .zip(dt.iter().zip(dtx))
            .zip(y.iter_mut())
        {
            for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                *h = exp(d * a) * *h + u * b;
            }
            *y = dot(c, h);
        }
    }
}

/// The gradients of [`selective_scan`] from the states `hs` it kept, the initial state `h0`
/// and the gradient `gy` of `y`: returns (d dt, d a, d dtx, d bm, d cm), shaped like the
/// inputs. Runs backward through time, per batch row in parallel; `a`'s gradient is summed
/// over the rows.
pub fn selective_scan_backward(
    [dt, a, dtx, bm, cm]: ScanInputs,
    sh: ScanShape,
    h0: &[f32],
    hs: &[f32],
    gy: &[f32],
) -> [Vec<f32>; 5] {
    let ScanShape {
        batch,
        len: s,
        channels: e,
        state: n,
    } = sh;
    let mut gdt = vec![0.0f32; batch * s * e];
    let mut gdtx = vec![0.0f32; batch * s * e];
    let mut gb = vec![0.0f32; batch * s * n];
    let mut gc = vec![0.0f32; batch * s * n];
    let ga = gdt
        .par_chunks_mut(s * e)
        .zip(gdtx.par_chunks_mut(s * e))
        .zip(gb.par_chunks_mut(s * n).zip(gc.par_chunks_mut(s * n)))
        .enumerate()
        .map(|(bi, ((gdt, gdtx), (gb, gc)))| {
            let mut ga = vec![0.0f32; e * n];
            // The gradient flowing into the state, per channel.
            let mut gh = vec![0.0f32; e * n];
            let mut scratch = vec![0.0f32; 2 * n];
            for t in (0..s).rev() {
                let row = bi * s + t;
                let (bt, ct) = (&bm[row * n..][..n], &cm[row * n..][..n]);
                let (gbt, gct) = (&mut gb[t * n..][..n], &mut gc[t * n..][..n]);
                let cur = &hs[row * e * n..][..e * n];
                let prev = if t == 0 {
                    &h0[bi * e * n..][..e * n]
                } else {
                    &hs[(row - 1) * e * n..][..e * n]
                };
                scan_step_backward(
                    (&mut gh, &mut ga, &mut scratch),
                    (gbt, gct),
                    (cur, prev, a),
                    (
                        &dt[row * e..][..e],
                        &dtx[row * e..][..e],
                        &gy[row * e..][..e],
                    ),
                    (bt, ct),
                    (&mut gdt[t * e..(t + 1) * e], &mut gdtx[t * e..(t + 1) * e]),
                );
            }
            ga
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; e * n], add);
    [gdt, ga, gdtx, gb, gc]
}

/// The state gradient, `a`'s gradient and scratch space (2n values).
type ScanGrads<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// One position's step backward for every channel: adds y's gradient to each state's,
/// accumulates the gradients of a, b and c, writes those of dt and dtx, and carries the state
/// gradients to the previous position. Arguments: see [`ScanGrads`]; b's and c's gradients at
/// this position; this state, the previous one and `a`; dt, dtx and y's gradient at this
/// position; b and c; where dt's and dtx's gradients go.
fn scan_step_backward(
    g: ScanGrads,
    gbc: (&mut [f32], &mut [f32]),
    states: (&[f32], &[f32], &[f32]),
    pos: (&[f32], &[f32], &[f32]),
    bc: (&[f32], &[f32]),
    out: (&mut [f32], &mut [f32]),
) {
    scan_step_backward_wide(g.0, g.1, g.2, gbc.0, gbc.1, states, pos, bc, out);
}

vectorized! {
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn scan_step_backward_wide(
        gh: &mut [f32],
        ga: &mut [f32],
        scratch: &mut [f32],
        gb: &mut [f32],
        gc: &mut [f32],
        states: (&[f32], &[f32], &[f32]),
        pos: (&[f32], &[f32], &[f32]),
        bc: (&[f32], &[f32]),
        out: (&mut [f32], &mut [f32]),
    ) {
        let (cur, prev, a) = states;
        let (dt, dtx, gy) = pos;
        let (b, c) = bc;
        let (gdt, gdtx) = out;
        let n = b.len();
        let (da, gda) = scratch.split_at_mut(n);
        for c_ in 0..dt.len() {
            let r = c_ * n..(c_ + 1) * n;
            let (d, u, gy) = (dt[c_], dtx[c_], gy[c_]);
            let (g, ga) = (&mut gh[r.clone()], &mut ga[r.clone()]);
            let (cur, prev, a) = (&cur[r.clone()], &prev[r.clone()], &a[r]);
            // y = c · h: the state's gradient gains gy·c, c's gains gy·h.
            for (((g, gc), &cj), &h) in g.iter_mut().zip(gc.iter_mut()).zip(c).zip(cur) {
                *g += gy * cj;
                *gc += gy * h;
            }
            // h = exp(d a) ⊙ h_prev + u b
            gdtx[c_] = dot(g, b);
            for (gb, &g) in gb.iter_mut().zip(g.iter()) {
                *gb += g * u;
            }
            for ((((da, gda), &aj), &p), &g) in
                da.iter_mut().zip(gda.iter_mut()).zip(a).zip(prev).zip(g.iter())
            {
                *da = exp(d * aj);
                *gda = g * p * *da;
            }
            gdt[c_] = dot(gda, a);
            for (ga, &gda) in ga.iter_mut().zip(gda.iter()) {
                *ga += gda * d;
            }
            for (g, &da) in g.iter_mut().zip(da.iter()) {
                *g *= da;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// Mamba's inputs: step sizes > 0 and a < 0 (as softplus and −exp make them).
    fn inputs(sh: ScanShape) -> [Vec<f32>; 6] {
        let ScanShape {
            batch: b,
            len: s,
            channels: e,
            state: n,
        } = sh;
        let pos = |v: Vec<f32>, k: f32| v.iter().map(|x| x.exp() * k).collect::<Vec<_>>();
        [
            pos(data(b * s * e, 1, 1.0), 0.3),
            pos(data(e * n, 2, 1.0), -1.0),
            data(b * s * e, 3, 1.0),
            data(b * s * n, 4, 1.0),
            data(b * s * n, 5, 1.0),
            data(b * e * n, 6, 1.0),
        ]
    }

    /// Runs the scan from `h0`: returns y, every state and the final one.
    fn run(ins: ScanInputs, sh: ScanShape, h0: &[f32]) -> [Vec<f32>; 3] {
        let mut h = h0.to_vec();
        let mut y = vec![0.0f32; sh.batch * sh.len * sh.channels];
        let mut hs = vec![0.0f32; y.len() * sh.state];
        selective_scan(ins, sh, &mut h, &mut y, Some(&mut hs));
        [y, hs, h]
    }

    const SHAPES: [ScanShape; 2] = [
        ScanShape {
            batch: 2,
            len: 5,
            channels: 3,
            state: 4,
        },
        ScanShape {
            batch: 1,
            len: 3,
            channels: 2,
            state: 9,
        },
    ];

    #[test]
    fn the_scan_matches_its_recurrence() {
        for sh in SHAPES {
            let [dt, a, dtx, bm, cm, h0] = inputs(sh);
            let [y, _, h] = run([&dt, &a, &dtx, &bm, &cm], sh, &h0);
            let ScanShape {
                batch: b,
                len: s,
                channels: e,
                state: n,
            } = sh;
            let mut st: Vec<f64> = h0.iter().map(|&x| x as f64).collect();
            let mut want = vec![0.0f64; y.len()];
            for bi in 0..b {
                for t in 0..s {
                    let row = bi * s + t;
                    for c in 0..e {
                        let (d, u) = (dt[row * e + c] as f64, dtx[row * e + c] as f64);
                        let mut acc = 0.0;
                        for j in 0..n {
                            let at = (bi * e + c) * n + j;
                            let da = (d * a[c * n + j] as f64).exp();
                            st[at] = da * st[at] + u * bm[row * n + j] as f64;
                            acc += cm[row * n + j] as f64 * st[at];
                        }
                        want[row * e + c] = acc;
                    }
                }
            }
            assert_close("y", &y, &want, 1e-5);
            assert_close("final state", &h, &st, 1e-5);
        }
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        for sh in SHAPES {
            let [dt, a, dtx, bm, cm, h0] = inputs(sh);
            let ins = [&dt[..], &a, &dtx, &bm, &cm];
            let [y, hs, _] = run(ins, sh, &h0);
            let gy = data(y.len(), 7, 1.0);
            let grads = selective_scan_backward(ins, sh, &h0, &hs, &gy);
            let names = ["dt", "a", "dtx", "bm", "cm"];
            for (i, (grad, name)) in grads.iter().zip(names).enumerate() {
                check_grad(name, ins[i], grad, |x| {
                    let mut ins = ins;
                    ins[i] = x;
                    weighted(&run(ins, sh, &h0)[0], &gy)
                });
            }
        }
    }
}
