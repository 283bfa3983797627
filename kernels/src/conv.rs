//! The causal depthwise convolution (a learned kernel per channel over the positions so far)
//! and its backward pass, computed directly: O(len · taps) per channel, for the short
//! sequences where that beats an FFT.

use crate::add;
use crate::rows_per_task;
use rayon::prelude::*;

/// The sizes of a causal depthwise convolution: batch, positions, channels, kernel taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Channels (each has its own kernel).
    pub channels: usize,
    /// Kernel taps (those past the sequence's length multiply nothing).
    pub taps: usize,
}

impl ConvShape {
    /// The taps that reach an input: at most one per position.
    fn used_taps(&self) -> usize {
        self.taps.min(self.len)
    }

    /// Batch rows per rayon task, from the work per row (len × used taps × channels).
    fn rows(&self) -> usize {
        rows_per_task(self.len * self.used_taps() * self.channels)
    }
}

vectorized! {
    /// One batch row: `y[t] = Σ_{j ≤ t, j < taps} k[j] ⊙ x[t − j]` over rows of d channels.
    fn conv_row(x: &[f32], k: &[f32], taps: usize, y: &mut [f32]) {
        let d = k.len() / taps.max(1);
        let s = x.len() / d;
        for t in 0..s {
            let yt = &mut y[t * d..(t + 1) * d];
            yt.iter_mut().for_each(|y| *y = 0.0);
            for j in 0..=t.min(taps - 1) {
                let (kj, xs) = (&k[j * d..(j + 1) * d], &x[(t - j) * d..(t - j + 1) * d]);
                for ((y, &k), &x) in yt.iter_mut().zip(kj).zip(xs) {
                    *y += k * x;
                }
            }
        }
    }

    /// One batch row backward from y's gradient `g`: writes x's gradient into `gx` and adds
    /// the kernel's into `gk`.
    fn conv_row_backward(x: &[f32], k: &[f32], taps: usize, g: &[f32], gx: &mut [f32], gk: &mut [f32]) {
        let d = k.len() / taps.max(1);
        let s = x.len() / d;
        gx.iter_mut().for_each(|v| *v = 0.0);
        for t in 0..s {
            let gt = &g[t * d..(t + 1) * d];
            for j in 0..=t.min(taps - 1) {
                let u = (t - j) * d..(t - j + 1) * d;
                let (kj, xs, gxs) = (&k[j * d..(j + 1) * d], &x[u.clone()], &mut gx[u]);
                let gkj = &mut gk[j * d..(j + 1) * d];
                for c in 0..d {
                    gxs[c] += kj[c] * gt[c];
                    gkj[c] += gt[c] * xs[c];
                }
            }
        }
    }
}

/// The causal depthwise convolution `y[b, t, c] = Σ_{j ≤ t, j < taps} k[j, c] · x[b, t − j, c]`
/// of `x` `[batch, len, channels]` with the kernel `k` `[taps, channels]`, into `y` (shaped
/// like x). Runs per block of batch rows in parallel.
pub fn causal_conv(x: &[f32], k: &[f32], sh: ConvShape, y: &mut [f32]) {
    let (s, d, rows) = (sh.len, sh.channels, sh.rows());
    if sh.taps == 0 {
        y.iter_mut().for_each(|y| *y = 0.0);
        return;
    }
    y.par_chunks_mut(rows * s * d)
        .zip(x.par_chunks(rows * s * d))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(s * d).zip(x.chunks(s * d)) {
                conv_row(x, k, sh.taps, y);
            }
        });
}

/// The gradients of [`causal_conv`] from y's gradient `g`: returns (d x, d k), shaped like the
/// inputs; k's gradient is summed over the batch (zero at taps past the length).
pub fn causal_conv_backward(x: &[f32], k: &[f32], sh: ConvShape, g: &[f32]) -> [Vec<f32>; 2] {
    let (s, d, rows) = (sh.len, sh.channels, sh.rows());
    let mut gx = vec![0.0f32; x.len()];
    if sh.taps == 0 {
        return [gx, Vec::new()];
    }
    let gk = gx
        .par_chunks_mut(rows * s * d)
        .zip(x.par_chunks(rows * s * d).zip(g.par_chunks(rows * s * d)))
        .map(|(gx, (x, g))| {
            let mut gk = vec![0.0f32; k.len()];
            for (gx, (x, g)) in gx
                .chunks_mut(s * d)
                .zip(x.chunks(s * d).zip(g.chunks(s * d)))
            {
                conv_row_backward(x, k, sh.taps, g, gx, &mut gk);
            }
            gk
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; k.len()], add);
    [gx, gk]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    /// Fewer taps than positions, more, as many; one position and one channel; a channel
    /// count that is no multiple of a vector.
    const SHAPES: [ConvShape; 4] = [
        ConvShape {
            batch: 2,
            len: 7,
            channels: 3,
            taps: 4,
        },
        ConvShape {
            batch: 3,
            len: 5,
            channels: 2,
            taps: 8,
        },
        ConvShape {
            batch: 1,
            len: 1,
            channels: 1,
            taps: 1,
        },
        ConvShape {
            batch: 2,
            len: 6,
            channels: 11,
            taps: 6,
        },
    ];

    fn run(x: &[f32], k: &[f32], sh: ConvShape) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        causal_conv(x, k, sh, &mut y);
        y
    }

    fn inputs(sh: ConvShape) -> [Vec<f32>; 2] {
        let n = sh.batch * sh.len * sh.channels;
        [data(n, 1, 1.0), data(sh.taps * sh.channels, 2, 1.0)]
    }

    #[test]
    fn the_convolution_matches_its_definition() {
        for sh in SHAPES {
            let [x, k] = inputs(sh);
            let y = run(&x, &k, sh);
            let (s, d) = (sh.len, sh.channels);
            let mut want = vec![0.0f64; y.len()];
            for b in 0..sh.batch {
                for t in 0..s {
                    for c in 0..d {
                        want[(b * s + t) * d + c] = (0..sh.taps.min(t + 1))
                            .map(|j| k[j * d + c] as f64 * x[(b * s + t - j) * d + c] as f64)
                            .sum();
                    }
                }
            }
            assert_close("y", &y, &want, 1e-5);
        }
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        for sh in SHAPES {
            let [x, k] = inputs(sh);
            let g = data(x.len(), 3, 1.0);
            let [gx, gk] = causal_conv_backward(&x, &k, sh, &g);
            check_grad("x", &x, &gx, |x| weighted(&run(x, &k, sh), &g));
            check_grad("k", &k, &gk, |k| weighted(&run(&x, k, sh), &g));
        }
    }

    #[test]
    fn blocks_of_rows_give_the_same_result_as_one_row_at_a_time() {
        let base = ConvShape {
            batch: 1,
            len: 8,
            channels: 4,
            taps: 3,
        };
        // Enough rows that several rayon tasks run, with a short last block.
        let sh = ConvShape {
            batch: 2 * base.rows() + 3,
            ..base
        };
        let [x, k] = inputs(sh);
        let y = run(&x, &k, sh);
        let g = data(x.len(), 5, 1.0);
        let [gx, gk] = causal_conv_backward(&x, &k, sh, &g);
        let mut gk_sum = vec![0.0f64; gk.len()];
        for b in 0..sh.batch {
            let r = b * 32..(b + 1) * 32;
            assert_eq!(run(&x[r.clone()], &k, base), y[r.clone()], "row {b}");
            let [gx1, gk1] = causal_conv_backward(&x[r.clone()], &k, base, &g[r.clone()]);
            assert_eq!(gx1, gx[r], "row {b}");
            gk_sum.iter_mut().zip(gk1).for_each(|(s, g)| *s += g as f64);
        }
        assert_close("k's gradient summed over rows", &gk, &gk_sum, 1e-5);
    }
}
