//! The reference's own forms of the definitions that the runtime computes with helpers from
//! [`crate::ops::positions`] (`rope_frequencies`) and [`crate::ops::spectral`]
//! (`window_basis`, `frames`, `FreqCutoff::weights`, `dct_basis`). They are written here
//! again from the documentation (docs/reference/components.md and curricula.md, the doc
//! comments of the ops), in a different form where one exists, and share no code with those
//! helpers, so a bug in a helper makes the runtime and the reference disagree instead of both
//! computing the same wrong thing.

use crate::ir::Real;
use crate::ops::spectral::FreqCutoff;
use std::f64::consts::PI;

/// The periodic Hann window of `w` steps: sin²(πn/w) (the same as 0.5 − 0.5·cos(2πn/w)).
pub fn hann(w: usize) -> Vec<f64> {
    (0..w)
        .map(|n| (PI * n as f64 / w as f64).sin().powi(2))
        .collect()
}

/// The periodic Hamming window of `w` steps: 0.54 − 0.46·cos(2πn/w).
pub fn hamming(w: usize) -> Vec<f64> {
    (0..w)
        .map(|n| 0.54 - 0.46 * (2.0 * PI * n as f64 / w as f64).cos())
        .collect()
}

/// The learned window of a windowed spectral gate: softmax(mix) · (Hann, Hamming,
/// rectangular), `mix` the three logits in that order.
pub fn learned_window(w: usize, mix: &[f64]) -> Vec<f64> {
    assert_eq!(mix.len(), 3, "a window mix has three logits");
    let p = super::math::softmax(mix);
    let (hn, hm) = (hann(w), hamming(w));
    (0..w).map(|n| p[0] * hn[n] + p[1] * hm[n] + p[2]).collect()
}

/// How frames of `window` steps, `hop` apart, lie over a sequence of `len` steps: the first
/// starts `window − hop` (zero) steps before the sequence, and frames follow until one reaches
/// past its last step (that one zero-padded). Returns (steps before the sequence, frames).
pub fn frame_layout(window: usize, hop: usize, len: usize) -> (usize, usize) {
    assert!(
        hop >= 1 && hop <= window,
        "a hop of {hop} for frames of {window}"
    );
    let lead = window - hop;
    // Frame c covers padded steps c·hop .. c·hop + window; the sequence ends at lead + len.
    let mut count = 1;
    while (count - 1) * hop + window < lead + len {
        count += 1;
    }
    (lead, count)
}

/// Rotary frequencies of the pairs i < head_dim/2 and the factor that scales cos and sin.
/// Plain RoPE: θ_i = 1/base^(2i/d), factor 1. YaRN as Hugging Face's
/// `_compute_yarn_parameters` (`rope_type: yarn`, truncated correction range): with
/// `dim(r) = d·ln(L/(2πr)) / (2·ln base)` the pair index at which a frequency turns r times over
/// the L original positions, the range is [max(⌊dim(β_fast)⌋, 0), min(⌈dim(β_slow)⌉, d − 1)]
/// (its upper end moved up by 0.001 if it is empty); pair i is interpolated (θ_i / s) by the
/// linear ramp ρ_i = clamp((i − low)/(high − low), 0, 1) and extrapolated (θ_i) by 1 − ρ_i;
/// cos and sin are scaled by 0.1·ln s + 1 (1 for s ≤ 1).
pub fn rope_frequencies(
    head_dim: u64,
    base: f64,
    yarn: Option<(Real, u64, Real, Real)>,
) -> (Vec<f64>, f64) {
    let d = head_dim as f64;
    let theta: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f64 / d))
        .collect();
    let Some((Real(s), original, Real(beta_fast), Real(beta_slow))) = yarn else {
        return (theta, 1.0);
    };
    let dim_at =
        |rotations: f64| d * (original as f64 / (2.0 * PI * rotations)).ln() / (2.0 * base.ln());
    let low = f64::max(dim_at(beta_fast).floor(), 0.0);
    let mut high = f64::min(dim_at(beta_slow).ceil(), d - 1.0);
    if low == high {
        high += 0.001;
    }
    let freqs = theta
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let interpolated = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            t / s * interpolated + t * (1.0 - interpolated)
        })
        .collect();
    let scale = if s > 1.0 { 1.0 + 0.1 * s.ln() } else { 1.0 };
    (freqs, scale)
}

/// The frequency-curriculum weights of `bins` bins, lowest first: bin k has the normalized
/// frequency f_k = k/(F − 1) (0 for a single bin) and weight 1 if f_k ≤ c else 0 (hard), or
/// sigmoid(slope·(c − f_k)) (soft).
pub fn curriculum_weights(mask: &FreqCutoff, bins: usize) -> Vec<f64> {
    (0..bins)
        .map(|k| {
            let f = if bins == 1 {
                0.0
            } else {
                k as f64 / (bins - 1) as f64
            };
            match mask.slope {
                None if f <= mask.cutoff => 1.0,
                None => 0.0,
                Some(slope) => 1.0 / (1.0 + (slope * (f - mask.cutoff)).exp()),
            }
        })
        .collect()
}

/// Basis vector k of the orthonormal DCT-II of `l` taps at tap t: √(1/l) for k = 0, else
/// √(2/l)·cos(π(t + ½)k/l).
pub fn dct(l: usize, k: usize, t: usize) -> f64 {
    let l = l as f64;
    if k == 0 {
        (1.0 / l).sqrt()
    } else {
        (2.0 / l).sqrt() * (PI * (t as f64 + 0.5) * k as f64 / l).cos()
    }
}
