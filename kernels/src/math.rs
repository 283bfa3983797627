//! Vectorizable scalar arithmetic shared by the kernels: `exp` and the functions built on it,
//! and sums, dot products and maxima over 8 independent lanes.

/// `e^x` for f32 in straight-line arithmetic the compiler can vectorize: x = k·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its degree-7 Taylor polynomial (truncation error < 6e-9 relative),
/// 2^k from the exponent bits. Below −87.3 the result is 0 (`f32::exp` gives a subnormal or
/// 0 there: a masked score contributes nothing), above 88.3 it stays at e^88.3 (finite); NaN
/// stays NaN. Relative error is within a few f32 ulps of `f32::exp`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let (nan, tiny) = (x.is_nan(), x < -87.3);
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // Low bits of t hold k + 0x400000; adding the bias and shifting by 23 leaves (k + 127) << 23.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if nan {
        f32::NAN
    } else if tiny {
        0.0
    } else {
        p * scale
    }
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sum and maximum of a slice with 8 independent lanes (so they vectorize).
#[inline(always)]
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
pub(crate) fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `tanh x` from [`exp`]: `(1 − e^{−2|x|}) / (1 + e^{−2|x|})` with x's sign (no overflow;
/// absolute error about 1e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let t = exp(-2.0 * x.abs());
    ((1.0 - t) / (1.0 + t)).copysign(x)
}

/// `ln(1 + u)` for u in [0, 1], in straight-line arithmetic the compiler can vectorize:
/// `2 atanh(t)` with t = u / (2 + u) ≤ 1/3, by its odd series to t¹⁹ (truncation error below
/// 1e-10).
#[inline(always)]
fn ln_1p_unit(u: f32) -> f32 {
    let t = u / (2.0 + u);
    let t2 = t * t;
    let mut p = 1.0 / 19.0;
    for k in [17.0f32, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        p = p * t2 + 1.0 / k;
    }
    2.0 * t * p
}

/// `ln σ(x)` = `−(max(−x, 0) + ln(1 + e^{−|x|}))`, without overflow.
#[inline(always)]
pub fn log_sigmoid(x: f32) -> f32 {
    -((-x).max(0.0) + ln_1p_unit(exp(-x.abs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    #[test]
    fn lane_sums_dots_and_maxima_match_the_plain_ones() {
        // Lengths below, at and past the 8 lanes, with remainders.
        for n in 0..=27 {
            let (a, b) = (data(n, n as u64, 3.0), data(n, 100 + n as u64, 2.0));
            let s: f64 = a.iter().map(|&x| x as f64).sum();
            assert!((sum(&a) as f64 - s).abs() < 1e-5, "sum of {n}");
            let d: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - d).abs() < 1e-5, "dot of {n}");
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), m, "max of {n}");
        }
    }

    #[test]
    fn sigmoid_matches_its_definition() {
        for x in data(1000, 1, 30.0) {
            let r = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - r).abs() < 1e-6, "sigmoid({x})");
        }
    }
}
