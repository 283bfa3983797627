//! kiln's fused CPU kernels: plain functions over f32 slices, each one pass over its data,
//! split across the rayon pool, with arithmetic the compiler vectorizes (AVX2 + FMA where the
//! CPU has them, checked at run time).
//!
//! They live in their own crate so that they are optimized in every profile (kiln's `dev`
//! profile compiles kiln itself without optimization). kiln's `runtime::fused` connects them to
//! Burn's tensors and autodiff; `tests/fused.rs` in kiln checks each against the plain Burn ops
//! it replaces.
//!
//! One module per kernel family, each re-exported here: `silu`, `act` (ReLU, GELU, tanh),
//! `dropout` (a counter-based mask), `softmax` (rows with a causal
//! limit), `norm` (RMSNorm and LayerNorm), `rope`, `attention`, `retention` (RetNet's, with its
//! GroupNorm), `linear`, `adamw`, `scan` (Mamba's selective scan), `lstm`, `slstm` and `mlstm`
//! (xLSTM), `xent` (a language model's cross-entropy), `smooth` (ETSformer's exponential
//! smoothing) and `conv` (the causal depthwise convolution). `math` holds the vectorizable
//! scalar functions they share, `gemm` the matrix operands and products.

/// Elements per rayon task: large enough that scheduling is noise.
const GRAIN: usize = 1 << 14;

/// Rows per rayon task for row-wise kernels over rows of `len` elements.
fn rows_per_task(len: usize) -> usize {
    (GRAIN / len.max(1)).max(1)
}

/// A vector of `n` values written by `fill`, without zeroing them first (a pass over memory
/// that an elementwise kernel would otherwise pay for). `fill` must write every element: the
/// kernels that use this write each element of their output exactly once.
fn filled(n: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` initialized all n elements (its contract above).
    unsafe { v.set_len(n) };
    v
}

/// `a + b` elementwise, in `a` (summing the per-task partial gradients of a weight). The
/// kernels collect the partial sums and add them in task order: rayon's `fold` and `reduce`
/// group the tasks as work stealing splits them, so their float sums changed from run to run.
fn add(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    a
}

// ---------------------------------------------------------------------------------------------
// Vectorizable arithmetic.

/// Compiles `$body` twice, once with AVX2 and FMA enabled, and runs that copy where the CPU has
/// them (checked at run time, cached by std); the plain copy runs elsewhere. Both are the same
/// source, so the results differ only in rounding of fused multiply-adds.
macro_rules! vectorized {
    ($($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block)*) => {$(
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? $body
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body
        }
    )*};
}

mod act;
mod adamw;
mod attention;
mod conv;
mod dropout;
mod gemm;
mod linear;
mod lstm;
mod math;
mod mlstm;
mod norm;
mod retention;
mod rope;
mod scan;
mod silu;
mod slstm;
mod smooth;
mod softmax;
mod xent;

pub use act::{act, act_backward, act_in_place, erf, Act};
pub use adamw::{adamw, AdamW};
pub use attention::{attention, attention_backward, AttnShape, Weighing};
pub use conv::{causal_conv, causal_conv_backward, ConvShape};
pub use dropout::{dropout, dropout_in_place, dropout_mask, Dropout};
pub use gemm::View4;
pub use linear::{linear, linear_backward};
pub use lstm::{lstm, lstm_backward, LstmShape};
pub use math::{exp, log_sigmoid, tanh};
pub use mlstm::{mlstm, mlstm_backward, MlstmShape, MLSTM_CHUNK};
pub use norm::{norm, norm_backward, Norm};
pub use retention::{retention, retention_backward, RetShape};
pub use rope::rope;
pub use scan::{selective_scan, selective_scan_backward, ScanInputs, ScanShape};
pub use silu::{silu, silu_backward};
pub use slstm::{slstm, slstm_backward, SlstmShape};
pub use smooth::{smooth, smooth_backward, SmoothShape};
pub use softmax::{softmax_rows, softmax_rows_backward, Visible};
pub use xent::{cross_entropy, cross_entropy_backward};

/// Deterministic values in about [−scale, scale] (a linear congruential generator): the
/// inputs of the kernels' tests and of kiln's tests of the fused ops.
pub fn test_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// What the kernels' unit tests share: deterministic inputs and a finite-difference check of
/// the backward passes against the forward ones.
#[cfg(test)]
mod testing {
    pub(crate) use crate::test_values as data;

    /// A dense `[n0, n1, rows, cols]` view.
    pub(crate) fn dense(v: &[f32], [_, n1, rows, cols]: [usize; 4]) -> crate::View4<'_> {
        crate::View4 {
            data: v,
            off: 0,
            strides: [n1 * rows * cols, rows * cols, cols],
        }
    }

    /// `Σ w·y` in f64: the loss whose gradient with respect to y is `w`.
    pub(crate) fn weighted(y: &[f32], w: &[f32]) -> f64 {
        assert_eq!(y.len(), w.len());
        y.iter().zip(w).map(|(&y, &w)| y as f64 * w as f64).sum()
    }

    /// Asserts every element of `got` is within `tol` (relative above 1) of `want`.
    #[track_caller]
    pub(crate) fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: lengths");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs() / w.abs().max(1.0);
            assert!(err < tol, "{name}[{i}]: {g} vs {w}");
        }
    }

    /// Asserts `grad` is the gradient of `loss` at `x`, by central differences at every
    /// coordinate (the inputs are small).
    #[track_caller]
    pub(crate) fn check_grad(name: &str, x: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f64) {
        const H: f32 = 1e-3;
        let mut xs = x.to_vec();
        let fd: Vec<f64> = (0..x.len())
            .map(|i| {
                let (hi, lo) = (x[i] + H, x[i] - H);
                xs[i] = hi;
                let up = loss(&xs);
                xs[i] = lo;
                let down = loss(&xs);
                xs[i] = x[i];
                (up - down) / (hi - lo) as f64
            })
            .collect();
        assert_close(name, grad, &fd, 5e-3);
    }
}
