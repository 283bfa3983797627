//! Exponential smoothing (ETSformer's smoothing attention) and its backward pass through time.

use crate::add;
use crate::math::sigmoid;
use crate::rows_per_task;
use rayon::prelude::*;

/// The sizes of an exponential smoothing: batch, positions, channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmoothShape {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub len: usize,
    /// Channels (each has its own rate).
    pub channels: usize,
}

/// The rates α = σ(a) of the logits `a`.
fn rates(a: &[f32]) -> Vec<f32> {
    a.iter().map(|&a| sigmoid(a)).collect()
}

vectorized! {
    /// One batch row: `es[t] = es[t − 1] + α ⊙ (v[t] − es[t − 1])` from `es[−1] = init`, over
    /// rows of `α.len()` channels.
    fn smooth_row(v: &[f32], alpha: &[f32], init: &[f32], es: &mut [f32]) {
        let d = alpha.len();
        for t in 0..v.len() / d {
            let (done, rest) = es.split_at_mut(t * d);
            let prev = if t == 0 { init } else { &done[(t - 1) * d..] };
            for (((e, &p), &a), &v) in rest[..d].iter_mut().zip(prev).zip(alpha).zip(&v[t * d..]) {
                *e = p + a * (v - p);
            }
        }
    }

    /// One batch row backward: `g` is the gradient of `es`; writes v's into `gv`, leaves the
    /// initial state's in `gh` (zero on entry: it carries the state's gradient back through
    /// time) and adds Σ_t gh_t ⊙ (v_t − es_{t−1}) (α's gradient) into `ga`.
    #[allow(clippy::too_many_arguments)]
    fn smooth_row_backward(
        v: &[f32],
        alpha: &[f32],
        init: &[f32],
        es: &[f32],
        g: &[f32],
        gv: &mut [f32],
        gh: &mut [f32],
        ga: &mut [f32],
    ) {
        let d = alpha.len();
        for t in (0..v.len() / d).rev() {
            let prev = if t == 0 { init } else { &es[(t - 1) * d..t * d] };
            let r = t * d..(t + 1) * d;
            let (v, g, gv) = (&v[r.clone()], &g[r.clone()], &mut gv[r]);
            for c in 0..d {
                let h = gh[c] + g[c];
                gv[c] = alpha[c] * h;
                ga[c] += h * (v[c] - prev[c]);
                gh[c] = h * (1.0 - alpha[c]);
            }
        }
    }
}

/// Exponential smoothing per channel c with the rate α_c = σ(a_c):
/// `es[b, t, c] = (1 − α_c) es[b, t − 1, c] + α_c v[b, t, c]` from `es[b, −1] = init[b]`.
/// `v` and `es` are `[batch, len, channels]`, `a` `[channels]` (logits), `init`
/// `[batch, channels]`. Runs per block of batch rows in parallel; the last position of `es` is
/// the state a next call continues from.
pub fn smooth(v: &[f32], a: &[f32], init: &[f32], sh: SmoothShape, es: &mut [f32]) {
    let (s, d) = (sh.len, sh.channels);
    let alpha = rates(a);
    let rows = rows_per_task(s * d);
    es.par_chunks_mut(rows * s * d)
        .zip(v.par_chunks(rows * s * d))
        .zip(init.par_chunks(rows * d))
        .for_each(|((es, v), init)| {
            for ((es, v), init) in es
                .chunks_mut(s * d)
                .zip(v.chunks(s * d))
                .zip(init.chunks(d))
            {
                smooth_row(v, &alpha, init, es);
            }
        });
}

/// The gradients of [`smooth`] from its inputs, its output `es` and the gradient `g` of `es`:
/// returns (d v, d a, d init), shaped like the inputs; a's gradient is summed over the batch.
/// Runs backward through time, per block of batch rows in parallel, in memory linear in the
/// length.
pub fn smooth_backward(
    v: &[f32],
    a: &[f32],
    init: &[f32],
    sh: SmoothShape,
    es: &[f32],
    g: &[f32],
) -> [Vec<f32>; 3] {
    let (s, d) = (sh.len, sh.channels);
    let alpha = rates(a);
    let rows = rows_per_task(s * d);
    let mut gv = vec![0.0f32; v.len()];
    let mut ginit = vec![0.0f32; init.len()];
    let ga = gv
        .par_chunks_mut(rows * s * d)
        .zip(ginit.par_chunks_mut(rows * d))
        .zip(v.par_chunks(rows * s * d).zip(init.par_chunks(rows * d)))
        .zip(es.par_chunks(rows * s * d).zip(g.par_chunks(rows * s * d)))
        .map(|(((gv, gh), (v, init)), (es, g))| {
            let mut ga = vec![0.0f32; d];
            for (((gv, gh), (v, init)), (es, g)) in gv
                .chunks_mut(s * d)
                .zip(gh.chunks_mut(d))
                .zip(v.chunks(s * d).zip(init.chunks(d)))
                .zip(es.chunks(s * d).zip(g.chunks(s * d)))
            {
                smooth_row_backward(v, &alpha, init, es, g, gv, gh, &mut ga);
            }
            ga
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; d], add);
    // dα/da = α (1 − α).
    let ga = ga
        .iter()
        .zip(&alpha)
        .map(|(&g, &a)| g * a * (1.0 - a))
        .collect();
    [gv, ga, ginit]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad, data, weighted};

    const SHAPES: [SmoothShape; 3] = [
        SmoothShape {
            batch: 3,
            len: 7,
            channels: 5,
        },
        SmoothShape {
            batch: 1,
            len: 1,
            channels: 1,
        },
        SmoothShape {
            batch: 2,
            len: 4,
            channels: 19,
        },
    ];

    fn run(v: &[f32], a: &[f32], init: &[f32], sh: SmoothShape) -> Vec<f32> {
        let mut es = vec![0.0f32; v.len()];
        smooth(v, a, init, sh, &mut es);
        es
    }

    fn inputs(sh: SmoothShape) -> [Vec<f32>; 3] {
        let SmoothShape {
            batch: b,
            len: s,
            channels: d,
        } = sh;
        [
            data(b * s * d, 1, 1.0),
            data(d, 2, 2.0),
            data(b * d, 3, 1.0),
        ]
    }

    #[test]
    fn smoothing_matches_its_recurrence() {
        for sh in SHAPES {
            let [v, a, init] = inputs(sh);
            let es = run(&v, &a, &init, sh);
            let (s, d) = (sh.len, sh.channels);
            let mut want = vec![0.0f64; es.len()];
            for b in 0..sh.batch {
                for c in 0..d {
                    let alpha = 1.0 / (1.0 + (-(a[c] as f64)).exp());
                    let mut e = init[b * d + c] as f64;
                    for t in 0..s {
                        let at = (b * s + t) * d + c;
                        e = (1.0 - alpha) * e + alpha * v[at] as f64;
                        want[at] = e;
                    }
                }
            }
            assert_close("es", &es, &want, 1e-5);
        }
    }

    #[test]
    fn the_gradients_match_finite_differences() {
        for sh in SHAPES {
            let [v, a, init] = inputs(sh);
            let es = run(&v, &a, &init, sh);
            let g = data(es.len(), 4, 1.0);
            let [gv, ga, ginit] = smooth_backward(&v, &a, &init, sh, &es, &g);
            check_grad("v", &v, &gv, |x| weighted(&run(x, &a, &init, sh), &g));
            check_grad("a", &a, &ga, |x| weighted(&run(&v, x, &init, sh), &g));
            check_grad("init", &init, &ginit, |x| weighted(&run(&v, &a, x, sh), &g));
        }
    }

    #[test]
    fn blocks_of_rows_give_the_same_result_as_one_row_at_a_time() {
        // Enough rows that several rayon tasks run, with a short last block.
        let sh = SmoothShape {
            batch: 2 * rows_per_task(9 * 4) + 3,
            len: 9,
            channels: 4,
        };
        let [v, a, init] = inputs(sh);
        let es = run(&v, &a, &init, sh);
        let one = SmoothShape { batch: 1, ..sh };
        for b in 0..sh.batch {
            let r = b * 36..(b + 1) * 36;
            let row = run(&v[r.clone()], &a, &init[b * 4..(b + 1) * 4], one);
            assert_eq!(row, es[r], "row {b}");
        }
    }
}
