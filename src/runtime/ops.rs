//! What the ops' Burn forwards share: the forward context ([`Ctx`]), products in the mixed
//! precision, dropout, activations, constants, padding and convolution matrices, and [`eval`],
//! one op's forward.

use super::fused;
use super::value::V;
use crate::ir::op::Act as Activation;
use crate::ir::Op;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::Distribution;

/// Everything an op may need besides its inputs.
pub struct Ctx<'a> {
    /// The device values live on.
    pub device: &'a Device,
    /// Training mode (dropout active).
    pub train: bool,
    /// Batch size and sequence length of this call.
    pub batch: usize,
    /// Sequence length of this call.
    pub seq: usize,
    /// Positions already processed before this call (incremental decoding with a
    /// [`super::KvCache`]); 0 for an ordinary forward pass.
    pub offset: usize,
    /// Incremental decoding with a preallocated cache ([`super::KvCache::with_capacity`]):
    /// the positions each attention layer's key and value buffers hold (this call's and the
    /// earlier ones included), written in place, so every decoding step has the same shapes.
    /// `None`: the cache grows by concatenation (and outside decoding).
    pub kv_capacity: Option<usize>,
    /// Mixed precision: the dtype matrix products run in (see [`super::Runtime::matmul_dtype`]).
    pub matmul_dtype: Option<burn::tensor::FloatDType>,
    /// Evaluate hard attention softly (see [`super::Runtime::soft_attention`]).
    pub soft_attention: bool,
    /// The frequency-curriculum mask of this step (see [`super::Runtime::freq_mask`]).
    pub freq_mask: Option<crate::ops::spectral::FreqCutoff>,
    /// Where layers put the statistics of the auxiliary loss terms, when asked for.
    pub aux: Option<&'a std::cell::RefCell<super::Aux>>,
    /// The runtime's constant tables (`None`: built at each call).
    pub consts: Option<&'a super::consts::Consts>,
    /// Dropout keys drawn on the host (`None`: from the device's generator).
    pub keys: Option<&'a KeyStream>,
}

impl Ctx<'_> {
    /// Whether this pass records attention entropies (then attention needs its
    /// probabilities, so it runs as tensor ops).
    pub fn wants_attention_entropy(&self) -> bool {
        self.aux.is_some_and(|a| a.borrow().wants.attention_entropy)
    }

    /// Whether this pass records the harmonic selections' sparsity.
    pub fn wants_harmonic_sparsity(&self) -> bool {
        self.aux.is_some_and(|a| a.borrow().wants.harmonic_sparsity)
    }
}

/// Dropout keys drawn on the host, from a seed set before each forward pass (the trainer's
/// (seed, step, micro-batch) mix): the n-th dropout op of the pass gets the n-th key, as with
/// the device's generator, but without reading a value back, which on a GPU makes the host
/// wait for the device once per dropout op. The GPU runtimes use it; the CPU keeps the
/// device's generator (its masks, and so its numbers, unchanged).
#[derive(Debug)]
pub struct KeyStream(std::cell::RefCell<crate::util::Rng>);

impl Default for KeyStream {
    fn default() -> Self {
        KeyStream(std::cell::RefCell::new(crate::util::Rng::new(0)))
    }
}

impl KeyStream {
    /// Start the stream of a forward pass.
    pub fn seed(&self, seed: u64) {
        *self.0.borrow_mut() = crate::util::Rng::new(seed);
    }

    fn next(&self) -> u64 {
        self.0.borrow_mut().next_u64()
    }
}

/// `a · b`, in `ctx.matmul_dtype` when mixed precision is on (the result is f32 either way).
pub fn mm<const D: usize>(a: Tensor<D>, b: Tensor<D>, ctx: &Ctx) -> Tensor<D> {
    match ctx.matmul_dtype {
        None => a.matmul(b),
        Some(dt) => a
            .cast(dt)
            .matmul(b.cast(dt))
            .cast(burn::tensor::FloatDType::F32),
    }
}

pub(crate) fn dropout<const D: usize>(x: Tensor<D>, p: f64, ctx: &Ctx) -> Tensor<D> {
    if !ctx.train || p <= 0.0 {
        return x;
    }
    let key = dropout_key(ctx, &x.device());
    fused::dropout(x, p, key)
}

/// The key of one dropout op's mask (see [`fused::dropout`]): 64 bits drawn from the device's
/// random generator, which the trainer seeds from (seed, step, micro-batch) before each
/// forward pass, so that the masks depend only on those and on the op's place in the order of
/// dropout ops, and are the same after a resume. One small draw per op; the mask itself comes
/// from a counter-based hash of the key, in the forward kernel and again in the backward pass.
pub(crate) fn dropout_key(ctx: &Ctx, device: &Device) -> u64 {
    if let Some(keys) = ctx.keys {
        return keys.next();
    }
    let bits = Tensor::<1>::random([4], Distribution::Uniform(0.0, 65536.0), device)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 values");
    bits.iter()
        .fold(0u64, |k, &v| (k << 16) | (v as u64 & 0xFFFF))
}

pub(crate) fn act<const D: usize>(a: Activation, x: Tensor<D>) -> Tensor<D> {
    match a {
        // Burn's own ReLU: one pass, and measured faster than the fused kernel (`fused::relu`,
        // benches/fused.rs), which has no arithmetic to save.
        Activation::Relu => activation::relu(x),
        Activation::Gelu => fused::gelu(x),
        Activation::Silu => fused::silu(x),
        Activation::Tanh => fused::tanh_tensor(x),
        Activation::Softplus => activation::softplus(x, 1.0),
    }
}

/// A constant tensor of `shape` on the context's device.
pub(crate) fn consts<const D: usize>(data: Vec<f32>, shape: [usize; D], ctx: &Ctx) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), ctx.device)
}

pub(crate) fn pad_axis<const D: usize>(
    x: Tensor<D>,
    axis: usize,
    len: usize,
    ctx: &Ctx,
) -> Tensor<D> {
    let dims = x.dims();
    if dims[axis] == len {
        return x;
    }
    let mut zshape = dims;
    zshape[axis] = len - dims[axis];
    let zeros = Tensor::<D>::zeros(zshape, ctx.device);
    Tensor::cat(vec![x, zeros], axis)
}

/// Convolution matrix `[d, s, s]` from a time-domain kernel `[taps, d]`: entry (c, t, u) is
/// kernel[(t − u) mod n, c] (circular) or kernel[t − u, c] for t ≥ u, else 0 (causal).
pub(crate) fn conv_matrix(
    kernel: Tensor<2>,
    s: usize,
    n: usize,
    causal: bool,
    device: &Device,
) -> Tensor<3> {
    let [taps, d] = kernel.dims();
    let mut idx = vec![0i64; s * s];
    let mut keep = vec![0.0f32; s * s];
    for t in 0..s {
        for u in 0..s {
            let lag = if causal {
                if t < u {
                    continue;
                }
                t - u
            } else {
                (t + n - u) % n
            };
            if lag < taps {
                idx[t * s + u] = lag as i64;
                keep[t * s + u] = 1.0;
            }
        }
    }
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [s * s]), device);
    let keep: Tensor<3> = Tensor::from_data(TensorData::new(keep, [s, s, 1]), device);
    let m = kernel.select(0, idx).reshape([s, s, d]) * keep;
    m.permute([2, 0, 1])
}

/// Apply `[d, s, s]` matrices to `[b, s, d]` per channel.
pub(crate) fn apply_per_channel(m: Tensor<3>, x: Tensor<3>) -> Tensor<3> {
    let xt = x.permute([2, 1, 0]); // [d, s, b]
    m.matmul(xt).permute([2, 1, 0])
}

/// A linear map `x [b, s, i] · w [i, o] (+ bias [o])`: kiln's fused op in f32; in mixed
/// precision one `[b·s, i] × [i, o]` product (gemm parallelizes a large matrix itself, and the
/// weight gradient is one product instead of b products and a sum).
pub(crate) fn linear(x: Tensor<3>, w: Tensor<2>, bias: Option<Tensor<1>>, ctx: &Ctx) -> Tensor<3> {
    if ctx.matmul_dtype.is_none() {
        return fused::linear(x, w, bias);
    }
    let [b, s, i] = x.dims();
    let o = w.dims()[1];
    let y = mm(x.reshape([b * s, i]), w, ctx).reshape([b, s, o]);
    match bias {
        Some(bias) => y + bias.unsqueeze::<3>(),
        None => y,
    }
}

/// The Burn forward of one op (see [`crate::ops::OpDef::forward`]); the graph's inputs and
/// parameters are supplied by [`super::Runtime`], not computed.
pub fn eval(op: &Op, ins: &[&V], ctx: &Ctx) -> V {
    op.def().forward(ins, ctx)
}

/// When asked for ([`Ctx::aux`]): the mean entropy −Σ_j p_ij ln p_ij of the attention rows.
pub(crate) fn record_entropy(probs: &Tensor<4>, ctx: &Ctx) {
    if let Some(out) = ctx.aux.filter(|_| ctx.wants_attention_entropy()) {
        let h = (probs.clone() * probs.clone().clamp_min(1e-30).log())
            .sum_dim(3)
            .neg()
            .mean();
        out.borrow_mut().attention_entropy.push(h.reshape([1]));
    }
}
