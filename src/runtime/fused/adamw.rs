//! The trainer's AdamW update in one pass.

use burn::prelude::*;
use kiln_kernels as k;

use super::lane::{back, dense, lane, values, Lane};
use super::Kernel;

pub use kiln_kernels::AdamW;

/// One AdamW step of a flat parameter `p` with gradient `g` and moments `m`, `v` (all plain
/// tensors of one length): returns the new parameter and moments. One pass over the four
/// vectors instead of twelve tensor ops; parameter and moments are updated in place when
/// nothing else holds them (copied first otherwise).
pub fn adamw(p: Tensor<1>, g: Tensor<1>, m: Tensor<1>, v: Tensor<1>, h: &AdamW) -> [Tensor<1>; 3] {
    match (lane(p), lane(g), lane(m), lane(v)) {
        (Lane::Plain(p), Lane::Plain(g), Lane::Plain(m), Lane::Plain(v)) => {
            let (mut p, g, mut m, mut v) = (dense(p), dense(g), dense(m), dense(v));
            let n = values(&g).len();
            k::adamw(
                &mut p.storage_mut::<f32>()[..n],
                values(&g),
                &mut m.storage_mut::<f32>()[..n],
                &mut v.storage_mut::<f32>()[..n],
                *h,
            );
            Kernel::AdamW.ran();
            [p, m, v].map(|x| back::<1>(Lane::Plain(x)))
        }
        (p, g, m, v) => adamw_plain(back(p), back(g), back(m), back(v), h),
    }
}

/// The plain Burn path of [`adamw`].
pub fn adamw_plain(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    h: &AdamW,
) -> [Tensor<1>; 3] {
    let g = if h.clip < 1.0 {
        g.mul_scalar(h.clip)
    } else {
        g
    };
    let p = if h.decay < 1.0 {
        p.mul_scalar(h.decay)
    } else {
        p
    };
    let m = m.mul_scalar(h.beta1) + g.clone().mul_scalar(1.0 - h.beta1);
    let v = v.mul_scalar(h.beta2) + g.powi_scalar(2).mul_scalar(1.0 - h.beta2);
    let update = m.clone().div_scalar(h.bc1) / (v.clone().div_scalar(h.bc2).sqrt() + h.eps);
    [p - update.mul_scalar(h.lr), m, v]
}
