//! Dropout with a counter-based generator: whether element i is kept is a pure function of the
//! op's key and i (a SplitMix64 hash of `key + i·γ`, its top 32 bits compared with
//! (1 − p)·2³²), so the forward pass computes the mask as it goes and the backward pass
//! computes it again: no mask is stored, and no generator state is shared between tasks.

use crate::{filled, GRAIN};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// SplitMix64's increment (2⁶⁴ / φ).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijection of u64 whose output bits each depend on every
/// input bit.
#[inline(always)]
fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One dropout op's mask: its stream and its keep threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The hashed key: element i's hash is `mix64(stream + i·γ)` (SplitMix64's i-th output
    /// for this stream).
    stream: u64,
    /// Kept when the hash's top 32 bits are below this, (1 − p)·2³² rounded.
    threshold: u64,
    /// `1 / (1 − p)`, the factor of the kept elements (0 when p = 1).
    pub scale: f32,
}

impl Dropout {
    /// The mask of the op keyed `key` (any u64) dropping with probability `p` in [0, 1].
    pub fn new(key: u64, p: f64) -> Self {
        let keep = (1.0 - p).clamp(0.0, 1.0);
        Dropout {
            stream: mix64(key ^ 0xD50F_0F0D_5EED_0001),
            threshold: (keep * 4_294_967_296.0).round() as u64,
            scale: if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 },
        }
    }

    /// Whether element `i` is kept.
    #[inline(always)]
    pub fn keeps(&self, i: usize) -> bool {
        (mix64(self.stream.wrapping_add((i as u64).wrapping_mul(GAMMA))) >> 32) < self.threshold
    }
}

vectorized! {
    fn dropout_chunk(d: &Dropout, start: usize, x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            y.write(if d.keeps(start + j) { x * d.scale } else { 0.0 });
        }
    }
    pub(crate) fn dropout_in_place_chunk(d: &Dropout, start: usize, g: &mut [f32]) {
        for (j, g) in g.iter_mut().enumerate() {
            *g = if d.keeps(start + j) { *g * d.scale } else { 0.0 };
        }
    }
    /// `y ← x · mask / (1 − p)` for the elements `start..start + x.len()` (one attention row's
    /// visible probabilities).
    pub(crate) fn dropout_row(d: &Dropout, start: usize, x: &[f32], y: &mut [f32]) {
        for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = if d.keeps(start + j) { x * d.scale } else { 0.0 };
        }
    }
    fn mask_chunk(d: &Dropout, start: usize, m: &mut [f32]) {
        for (j, m) in m.iter_mut().enumerate() {
            *m = if d.keeps(start + j) { 1.0 } else { 0.0 };
        }
    }
}

/// `x · mask / (1 − p)`.
pub fn dropout(d: &Dropout, x: &[f32]) -> Vec<f32> {
    filled(x.len(), |y| {
        y.par_chunks_mut(GRAIN)
            .zip(x.par_chunks(GRAIN))
            .enumerate()
            .for_each(|(c, (y, x))| dropout_chunk(d, c * GRAIN, x, y))
    })
}

/// [`dropout`] in place: the backward pass, `g · mask / (1 − p)`, in the output's gradient.
pub fn dropout_in_place(d: &Dropout, g: &mut [f32]) {
    g.par_chunks_mut(GRAIN)
        .enumerate()
        .for_each(|(c, g)| dropout_in_place_chunk(d, c * GRAIN, g));
}

/// The mask itself, 1 where kept and 0 where dropped (for plain tensor ops and tests).
pub fn dropout_mask(d: &Dropout, m: &mut [f32]) {
    m.par_chunks_mut(GRAIN)
        .enumerate()
        .for_each(|(c, m)| mask_chunk(d, c * GRAIN, m));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    #[test]
    fn dropout_applies_its_mask_and_the_mask_is_a_function_of_the_key() {
        let n = 3 * GRAIN + 37;
        let x = data(n, 1, 2.0);
        let p = 0.3;
        let d = Dropout::new(42, p);
        let (y, mut m) = (dropout(&d, &x), vec![0.0f32; n]);
        dropout_mask(&d, &mut m);
        let mut g = x.clone();
        dropout_in_place(&d, &mut g);
        assert_eq!(g, y);
        for i in 0..n {
            assert_eq!(m[i], if d.keeps(i) { 1.0 } else { 0.0 });
            assert_eq!(y[i], x[i] * m[i] * d.scale, "{i}");
        }
        // The kept fraction is within 4 standard errors of 1 − p.
        let kept = m.iter().sum::<f32>() as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!((kept - (1.0 - p)).abs() < 4.0 * se, "kept {kept}");
        // The same key gives the same mask; another key, another mask (about p(1−p)·2 of the
        // elements differ).
        let mut again = vec![0.0f32; n];
        dropout_mask(&Dropout::new(42, p), &mut again);
        assert_eq!(m, again);
        dropout_mask(&Dropout::new(43, p), &mut again);
        let differ = m.iter().zip(&again).filter(|(a, b)| a != b).count() as f64 / n as f64;
        assert!((differ - 2.0 * p * (1.0 - p)).abs() < 0.02, "{differ}");
        // p = 0 keeps everything; p = 1 drops everything.
        dropout_mask(&Dropout::new(7, 0.0), &mut again);
        assert!(again.iter().all(|&v| v == 1.0));
        dropout_mask(&Dropout::new(7, 1.0), &mut again);
        assert!(again.iter().all(|&v| v == 0.0));
    }
}
