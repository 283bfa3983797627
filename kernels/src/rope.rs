//! Rotate-half RoPE (forward and, with the sign flipped, its gradient).

use crate::gemm::View4;
use rayon::prelude::*;

vectorized! {
    /// One row: `sign` = 1 rotates forward (the op), −1 back (its gradient).
    fn rope_row(x: &[f32], c: &[f32], s: &[f32], sign: f32, y: &mut [f32]) {
        let half = c.len();
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for i in 0..half {
            let sn = sign * s[i];
            y1[i] = x1[i] * c[i] - x2[i] * sn;
            y2[i] = x1[i] * sn + x2[i] * c[i];
        }
    }
}

/// Rotate-half RoPE of `x` `[b, h, s, d]` (read through its strides) into `y` laid out as
/// `[b, s, h, d]`: the first half of each row becomes `x1·cos − x2·sin`, the second
/// `x1·sin + x2·cos`, where `table` holds per position d/2 cosines then d/2 sines. `sign` = −1
/// rotates back, which is the gradient. Batch rows run in parallel.
pub fn rope(x: View4, [_, h, s, d]: [usize; 4], table: &[f32], sign: f32, y: &mut [f32]) {
    let half = d / 2;
    y.par_chunks_mut(s * h * d).enumerate().for_each(|(bi, y)| {
        for hi in 0..h {
            let m = x.mat(bi, hi);
            m.check(s, d);
            for pos in 0..s {
                let xr = &m.data[pos * m.rs..pos * m.rs + d];
                let row = &table[pos * d..(pos + 1) * d];
                let yr = &mut y[(pos * h + hi) * d..(pos * h + hi + 1) * d];
                rope_row(xr, &row[..half], &row[half..], sign, yr);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data};

    #[test]
    fn rotates_each_half_and_rotates_back() {
        let [b, h, s, d] = [2, 3, 4, 6];
        let half = d / 2;
        let x = data(b * h * s * d, 1, 2.0);
        let angles = data(s * half, 2, 3.0);
        // Per position d/2 cosines then d/2 sines.
        let table: Vec<f32> = angles
            .chunks(half)
            .flat_map(|a| a.iter().map(|a| a.cos()).chain(a.iter().map(|a| a.sin())))
            .collect();
        let dense = |v| View4 {
            data: v,
            off: 0,
            strides: [h * s * d, s * d, d],
        };
        let mut y = vec![0.0f32; x.len()];
        rope(dense(&x), [b, h, s, d], &table, 1.0, &mut y);
        // y is [b, s, h, d].
        let mut want = vec![0.0f64; x.len()];
        for (bi, hi, pos, j) in (0..b).flat_map(|bi| {
            (0..h).flat_map(move |hi| {
                (0..s).flat_map(move |p| (0..half).map(move |j| (bi, hi, p, j)))
            })
        }) {
            let at = ((bi * h + hi) * s + pos) * d;
            let (x1, x2) = (x[at + j] as f64, x[at + half + j] as f64);
            let a = angles[pos * half + j] as f64;
            let out = ((bi * s + pos) * h + hi) * d;
            want[out + j] = x1 * a.cos() - x2 * a.sin();
            want[out + half + j] = x1 * a.sin() + x2 * a.cos();
        }
        assert_close("y", &y, &want, 1e-6);
        // Rotating back (the gradient) reads y as the [b, h, s, d] view of its [b, s, h, d]
        // layout and gives x back.
        let heads = View4 {
            data: &y,
            off: 0,
            strides: [s * h * d, d, h * d],
        };
        let mut back = vec![0.0f32; x.len()];
        rope(heads, [b, h, s, d], &table, -1.0, &mut back);
        let mut want = vec![0.0f64; x.len()];
        for (bi, hi, pos) in
            (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..s).map(move |p| (bi, hi, p))))
        {
            let (from, to) = (((bi * h + hi) * s + pos) * d, ((bi * s + pos) * h + hi) * d);
            for j in 0..d {
                want[to + j] = x[from + j] as f64;
            }
        }
        assert_close("rotated back", &back, &want, 1e-6);
    }
}
