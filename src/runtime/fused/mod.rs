//! kiln's fused CPU kernels, each with its own backward pass.
//!
//! Burn's flex backend runs an op such as softmax as five separate passes (max, subtract, exp,
//! sum, divide), each on one thread, each allocating its output, with a scalar `expf` per
//! element; autodiff then records each pass and runs its backward separately. The kernels here
//! do the same arithmetic in one pass over the data, split across the rayon pool, with an `exp`
//! the compiler vectorizes (AVX2 + FMA where the CPU has them), and register one node with
//! Burn's autodiff whose backward pass is one fused kernel too. The kernels themselves are the
//! `kiln-kernels` crate (`kernels/`), optimized in every build profile; this module connects them
//! to Burn's tensors.
//!
//! | kernel | replaces |
//! |---|---|
//! | [`silu`] | `x · sigmoid(x)` (2 ops forward, 3 backward) |
//! | [`gelu`], [`tanh_tensor`], [`relu`] | Burn's activations (GELU: 5 ops forward, ~10 backward; ReLU is one op already, and `Elementwise::Act` keeps Burn's, measured faster) |
//! | [`dropout`] | a Bernoulli mask drawn, multiplied and kept for the backward pass (3 ops); here a counter-based mask, recomputed in the backward pass |
//! | [`softmax_rows`] | the causal `mask_fill` and `softmax` of attention (6 ops forward) |
//! | [`rmsnorm`] | `x / sqrt(mean(x²) + ε) · w` (6 ops forward) |
//! | [`layernorm`] | `(x − mean) / sqrt(var + ε) · w + b` (9 ops forward) |
//! | [`rope`] | rotate-half RoPE: 4 slices, 6 products and sums, a concatenation |
//! | [`attention`], [`attention_dropout`], [`attention_hard`] | the scale, `q·kᵀ`, the mask, the softmax (or hard attention's one-hot weights on each row's maximum, straight-through), the dropout of the probabilities (its mask counter-based, as [`dropout`]'s), `p·v`, and the head split and merge copies |
//! | [`linear`] | a reshape, `matmul` and a bias add (with transposed copies in the backward pass) |
//! | [`selective_scan`] | Mamba's scan: 7 small tensor ops per position, positions in sequence |
//! | [`lstm`] | the LSTM recurrence: a product and 11 tensor ops per position, positions in sequence |
//! | [`slstm`] | xLSTM's sLSTM recurrence: 2 products and ~20 tensor ops per position |
//! | [`mlstm`] | xLSTM's mLSTM cells: ~25 tensor ops over `[b, H, s, s]` matrices (the kernel: chunkwise, memory linear in s) |
//! | [`retention`] | RetNet's retention and GroupNorm: a host-built `[h, s, s]` decay matrix, 2 products, the state's product (unused in training) and ~9 norm ops |
//! | [`smooth`] | ETSformer's exponential smoothing as a causal convolution: ~10 ops building the kernel and decay, a dense `[d, s, s]` matrix product (or 3 FFTs); here one pass through time, and one back |
//! | [`causal_conv`] | the causal spectral filter's dense `[d, s, s]` convolution matrix (a gather, a mask, a batched product) or its FFT convolution (2 rffts, 6 complex-product ops, an irfft), where [`conv_is_direct`] (taps up to ~40 log₂ of the FFT length: all taps up to 256 positions) |
//! | [`adamw`] | the trainer's 12 tensor ops per parameter |
//! | [`cross_entropy`] | the loss's `log_softmax` (5 passes over the logits, each allocating their size), `gather` and smoothing mean, and their backward passes |
//!
//! Each kernel runs only on f32 flex tensors, plain or under `Autodiff<Flex>` without gradient
//! checkpointing; anything else (a GPU backend, another dtype) takes the plain Burn path, which
//! is also what [`set_enabled`]`(false)` selects. Burn's `extension` feature is what gives access
//! to the backend tensor inside a [`Tensor`](burn::prelude::Tensor). `tests/fused*.rs` check
//! every kernel against the plain path, values and gradients, and by [`calls`] that the fused
//! path really ran; `kiln bench --unfused` measures the difference.
//!
//! One module per kernel (the Burn side of each family in `kiln_kernels`), each with its
//! custom backward op and the plain path it replaces; `lane` holds what they share (reaching
//! the flex tensor inside a Burn tensor and registering an op with autodiff). [`calls`] counts
//! the runs of every fused kernel, forward and backward, so that a test can tell the fused path
//! ran: an op whose inputs the kernels cannot take falls back to the plain path silently.

mod act;
mod adamw;
mod attention;
mod conv;
mod dropout;
mod lane;
mod linear;
mod lstm;
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

pub use act::{gelu, relu, tanh_tensor};
pub use adamw::{adamw, adamw_plain, AdamW};
pub use attention::{
    attention, attention_dropout, attention_dropout_plain, attention_hard, attention_hard_plain,
    attention_plain, hard_weights,
};
pub use conv::{causal_conv, causal_conv_plain, conv_is_direct, CONV_DIRECT_PER_LOG2};
pub use dropout::{dropout, dropout_mask, dropout_plain};
pub use kiln_kernels::{exp, log_sigmoid, tanh, Visible};
pub use linear::{linear, linear_plain};
pub use lstm::{lstm, lstm_plain};
pub use mlstm::{mlstm, mlstm_plain};
pub use norm::{layernorm, layernorm_plain, rmsnorm, rmsnorm_plain};
pub use retention::{
    retention, retention_chunk_plain, retention_decay, retention_group_norm_plain, retention_plain,
};
pub use rope::{rope, rope_plain};
pub use scan::{selective_scan, selective_scan_plain};
pub use silu::silu;
pub use slstm::{slstm, slstm_plain};
pub use smooth::{smooth, smooth_plain};
pub use softmax::{softmax_plain, softmax_plain_mask, softmax_rows};
pub use xent::{cross_entropy, cross_entropy_plain};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the fused kernels on or off for the whole process (on by default). Off, every op takes
/// the plain Burn path; the equivalence tests and `kiln bench --unfused` use this.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

thread_local! {
    /// Set while [`plain_on_this_thread`] runs.
    static PLAIN_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the fused kernels are on (on this thread: see [`plain_on_this_thread`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) && !PLAIN_HERE.with(|p| p.get())
}

/// Runs `f` with the fused kernels off on the calling thread only: an op's unit tests check its
/// plain path this way while other tests run beside them (which [`set_enabled`] would disturb).
/// The kernels decide on the calling thread, before any work goes to the rayon pool.
pub fn plain_on_this_thread<T>(f: impl FnOnce() -> T) -> T {
    let was = PLAIN_HERE.with(|p| p.replace(true));
    let out = f();
    PLAIN_HERE.with(|p| p.set(was));
    out
}
// ---------------------------------------------------------------------------------------------
// Counting the runs of the fused kernels.

/// The fused ops, for [`calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`silu`].
    Silu,
    /// [`softmax_rows`].
    Softmax,
    /// [`rmsnorm`].
    RmsNorm,
    /// [`layernorm`].
    LayerNorm,
    /// [`rope`].
    Rope,
    /// [`attention`].
    Attention,
    /// [`linear`].
    Linear,
    /// [`adamw`] (no backward pass).
    AdamW,
    /// [`selective_scan`].
    Scan,
    /// [`lstm`].
    Lstm,
    /// [`slstm`].
    Slstm,
    /// [`mlstm`].
    Mlstm,
    /// [`relu`].
    Relu,
    /// [`gelu`].
    Gelu,
    /// [`tanh_tensor`].
    Tanh,
    /// [`dropout`].
    Dropout,
    /// [`cross_entropy`].
    CrossEntropy,
    /// [`retention`].
    Retention,
    /// [`smooth`].
    Smooth,
    /// [`causal_conv`].
    CausalConv,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 20] = [
        Kernel::Silu,
        Kernel::Softmax,
        Kernel::RmsNorm,
        Kernel::LayerNorm,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::Linear,
        Kernel::AdamW,
        Kernel::Scan,
        Kernel::Lstm,
        Kernel::Slstm,
        Kernel::Mlstm,
        Kernel::Relu,
        Kernel::Gelu,
        Kernel::Tanh,
        Kernel::Dropout,
        Kernel::CrossEntropy,
        Kernel::Retention,
        Kernel::Smooth,
        Kernel::CausalConv,
    ];

    /// Counts one run of this op's fused forward kernel.
    fn ran(self) {
        CALLS[self as usize][0].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one run of this op's fused backward kernel.
    fn ran_backward(self) {
        CALLS[self as usize][1].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many times a fused kernel ran in this process, forward and backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Runs of the op itself.
    pub forward: u64,
    /// Runs of its backward pass.
    pub backward: u64,
}

/// Runs of each kernel, forward then backward: one relaxed add per op (never per element), so
/// they cost nothing measurable on the hot paths they sit on.
static CALLS: [[AtomicU64; 2]; Kernel::ALL.len()] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; Kernel::ALL.len()];

/// How many times `kernel`'s fused forward and backward kernels have run in this process (the
/// plain path counts nothing). `tests/fused*.rs` read these to prove the fused path ran.
pub fn calls(kernel: Kernel) -> Calls {
    let [f, b] = &CALLS[kernel as usize];
    Calls {
        forward: f.load(Ordering::Relaxed),
        backward: b.load(Ordering::Relaxed),
    }
}
