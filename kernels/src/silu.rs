//! SiLU, `x · sigmoid(x)`, and its gradient.

use crate::math::sigmoid;
use crate::GRAIN;
use rayon::prelude::*;

vectorized! {
    fn silu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(x);
        }
    }
    fn silu_backward_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            let s = sigmoid(x);
            *d = g * s * (1.0 + x * (1.0 - s));
        }
    }
}

/// `y = x · sigmoid(x)`.
pub fn silu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(y, x)| silu_chunk(x, y));
}

/// The gradient of [`silu`]: `dx = g · s · (1 + x (1 − s))` with s = sigmoid(x).
pub fn silu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(g.par_chunks(GRAIN)))
        .for_each(|(d, (x, g))| silu_backward_chunk(x, g, d));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data};

    #[test]
    fn silu_and_its_gradient_match_their_definitions() {
        // More than one task's worth of elements, and a short last task.
        let n = GRAIN + 37;
        let (x, g) = (data(n, 1, 8.0), data(n, 2, 1.0));
        let sig = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
        let mut y = vec![0.0f32; n];
        silu(&x, &mut y);
        let want: Vec<f64> = x.iter().map(|&x| x as f64 * sig(x)).collect();
        assert_close("y", &y, &want, 1e-6);
        let mut dx = vec![0.0f32; n];
        silu_backward(&x, &g, &mut dx);
        let want: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&x, &g)| {
                let s = sig(x);
                g as f64 * s * (1.0 + x as f64 * (1.0 - s))
            })
            .collect();
        assert_close("dx", &dx, &want, 1e-6);
    }
}
