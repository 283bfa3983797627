//! ReLU, GELU (the exact erf form) and tanh, and their gradients.

use crate::math::{exp, tanh};
use crate::{filled, GRAIN};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// An activation with a fused kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `max(x, 0)`.
    Relu,
    /// `x · Φ(x)` = `x/2 · (1 + erf(x/√2))`.
    Gelu,
    /// `tanh x`.
    Tanh,
}

/// `erf x` in straight-line arithmetic the compiler can vectorize: Abramowitz and Stegun
/// 7.1.26, `1 − (a₁t + … + a₅t⁵) e^{−x²}` with t = 1/(1 + p|x|), and x's sign (absolute error
/// below 1.5e-7, plus f32 rounding), and its Taylor series below |x| = 0.5.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let mut p = A[4];
    for c in [A[3], A[2], A[1], A[0]] {
        p = p * t + c;
    }
    let tail = (1.0 - p * t * exp(-a * a)).copysign(x);
    // Near 0, where the form above loses digits to cancellation: the Taylor series to x¹³
    // (truncation error below 2e-8 for |x| < 0.5).
    let x2 = x * x;
    let mut s = -1.0 / 9360.0;
    for c in [
        1.0 / 1320.0,
        -1.0 / 216.0,
        1.0 / 42.0,
        -1.0 / 10.0,
        1.0 / 3.0,
    ] {
        s = s * x2 + c;
    }
    let near = std::f32::consts::FRAC_2_SQRT_PI * x * (1.0 - x2 * s);
    if a < 0.5 {
        near
    } else {
        tail
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn relu1(x: f32) -> f32 {
    // NaN propagates, as in Burn and PyTorch.
    if x.is_nan() || x > 0.0 {
        x
    } else {
        0.0
    }
}

#[inline(always)]
fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

vectorized! {
    fn relu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(relu1(x));
        }
    }
    fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(gelu1(x));
        }
    }
    fn tanh_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(tanh(x));
        }
    }
    fn relu_in_place_chunk(v: &mut [f32]) {
        for v in v.iter_mut() {
            *v = relu1(*v);
        }
    }
    fn gelu_in_place_chunk(v: &mut [f32]) {
        for v in v.iter_mut() {
            *v = gelu1(*v);
        }
    }
    fn tanh_in_place_chunk(v: &mut [f32]) {
        for v in v.iter_mut() {
            *v = tanh(*v);
        }
    }
    fn relu_backward_chunk(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            *g = if x.is_nan() || x > 0.0 { *g } else { 0.0 };
        }
    }
    fn gelu_backward_chunk(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
            *g *= cdf + x * pdf;
        }
    }
    fn tanh_backward_chunk(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let y = tanh(x);
            *g *= 1.0 - y * y;
        }
    }
}

/// `a(x)` elementwise.
pub fn act(a: Act, x: &[f32]) -> Vec<f32> {
    let f = match a {
        Act::Relu => relu_chunk,
        Act::Gelu => gelu_chunk,
        Act::Tanh => tanh_chunk,
    };
    filled(x.len(), |y| {
        if a == Act::Relu {
            // Memory-bound: one thread streams as fast as two, without waiting for the pool.
            return f(x, y);
        }
        y.par_chunks_mut(GRAIN)
            .zip(x.par_chunks(GRAIN))
            .for_each(|(y, x)| f(x, y))
    })
}

/// [`act`] in place (for an input nothing else holds).
pub fn act_in_place(a: Act, v: &mut [f32]) {
    let f = match a {
        Act::Relu => relu_in_place_chunk,
        Act::Gelu => gelu_in_place_chunk,
        Act::Tanh => tanh_in_place_chunk,
    };
    if a == Act::Relu {
        return f(v);
    }
    v.par_chunks_mut(GRAIN).for_each(f);
}

/// The gradient of [`act`], in place of the output's gradient `g`: `g · a'(x)` from the input
/// (`g` where x > 0; `g (1 − tanh² x)`; `g (Φ(x) + x φ(x))`). The input, not the output, so
/// that the output is free for the next op to overwrite (as Burn's ReLU does).
pub fn act_backward(a: Act, x: &[f32], g: &mut [f32]) {
    let f = match a {
        Act::Relu => relu_backward_chunk,
        Act::Gelu => gelu_backward_chunk,
        Act::Tanh => tanh_backward_chunk,
    };
    if a == Act::Relu {
        return f(x, g);
    }
    g.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .for_each(|(g, x)| f(x, g));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data};

    fn erf64(x: f64) -> f64 {
        // erf by its Taylor series (|x| ≤ 3 here: converges well in f64), else ±1 within 2e-5.
        if x.abs() > 3.0 {
            return x.signum() * (1.0 - 2.2e-5);
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_its_series() {
        let x = data(4001, 3, 3.0);
        let got: Vec<f32> = x.iter().map(|&x| erf(x)).collect();
        let want: Vec<f64> = x.iter().map(|&x| erf64(x as f64)).collect();
        assert_close("erf", &got, &want, 4e-7);
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(30.0), 1.0);
        assert_eq!(erf(-30.0), -1.0);
    }

    #[test]
    fn activations_and_their_gradients_match_their_definitions() {
        // More than one task's worth of elements, and a short last task.
        let n = GRAIN + 37;
        let (x, g) = (data(n, 1, 2.9), data(n, 2, 1.0));
        let phi = |x: f64| 0.5 * (1.0 + erf64(x / std::f64::consts::SQRT_2));
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        type F<'a> = Box<dyn Fn(f64) -> f64 + 'a>;
        let cases: [(Act, F, F); 3] = [
            (
                Act::Relu,
                Box::new(|x| x.max(0.0)),
                Box::new(|x| if x > 0.0 { 1.0 } else { 0.0 }),
            ),
            (
                Act::Gelu,
                Box::new(|x| x * phi(x)),
                Box::new(|x| phi(x) + x * pdf(x)),
            ),
            (
                Act::Tanh,
                Box::new(f64::tanh),
                Box::new(|x| 1.0 - x.tanh().powi(2)),
            ),
        ];
        for (a, f, df) in cases {
            let y = act(a, &x);
            let mut again = x.clone();
            act_in_place(a, &mut again);
            assert_eq!(y, again);
            let want: Vec<f64> = x.iter().map(|&x| f(x as f64)).collect();
            assert_close(&format!("{a:?}"), &y, &want, 5e-7);
            let mut dx = g.clone();
            act_backward(a, &x, &mut dx);
            let want: Vec<f64> = x
                .iter()
                .zip(&g)
                .map(|(&x, &g)| g as f64 * df(x as f64))
                .collect();
            assert_close(&format!("{a:?} dx"), &dx, &want, 1e-6);
        }
    }
}
