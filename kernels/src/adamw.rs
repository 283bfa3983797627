//! The AdamW update in place.

use crate::GRAIN;
use rayon::prelude::*;

/// The constants of one AdamW update (Loshchilov & Hutter, 2019), as kiln's trainer applies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub bc1: f32,
    /// See `bc1`.
    pub bc2: f32,
    /// The parameter is first multiplied by this (1 − lr·weight decay, or 1).
    pub decay: f32,
    /// The gradient is first multiplied by this (global-norm clipping, or 1).
    pub clip: f32,
}

vectorized! {
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * h.clip;
            *m = *m * h.beta1 + g * (1.0 - h.beta1);
            *v = *v * h.beta2 + g * g * (1.0 - h.beta2);
            let update = (*m / h.bc1) / ((*v / h.bc2).sqrt() + h.eps);
            *p = *p * h.decay - update * h.lr;
        }
    }
}

/// One AdamW step in place: the moments `m`, `v` and the parameter `p` from its gradient `g`.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
    p.par_chunks_mut(GRAIN)
        .zip(g.par_chunks(GRAIN))
        .zip(m.par_chunks_mut(GRAIN).zip(v.par_chunks_mut(GRAIN)))
        .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, h));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data};

    #[test]
    fn one_step_matches_the_update_rule() {
        let n = GRAIN + 5;
        let h = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bc1: 1.0 - 0.9f32.powi(3),
            bc2: 1.0 - 0.999f32.powi(3),
            decay: 0.99,
            clip: 0.5,
        };
        let (p0, g) = (data(n, 1, 1.0), data(n, 2, 2.0));
        let m0 = data(n, 3, 0.1);
        let v0: Vec<f32> = data(n, 4, 0.1).iter().map(|x| x * x).collect();
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        adamw(&mut p, &g, &mut m, &mut v, h);
        let f = |x: f32| x as f64;
        let (mut wp, mut wm, mut wv) = (vec![], vec![], vec![]);
        for j in 0..n {
            let g = f(g[j]) * f(h.clip);
            let m = f(m0[j]) * f(h.beta1) + g * (1.0 - f(h.beta1));
            let v = f(v0[j]) * f(h.beta2) + g * g * (1.0 - f(h.beta2));
            let update = (m / f(h.bc1)) / ((v / f(h.bc2)).sqrt() + f(h.eps));
            wp.push(f(p0[j]) * f(h.decay) - update * f(h.lr));
            wm.push(m);
            wv.push(v);
        }
        assert_close("p", &p, &wp, 1e-6);
        assert_close("m", &m, &wm, 1e-6);
        assert_close("v", &v, &wv, 1e-6);
    }
}
