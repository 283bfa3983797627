//! Burn implementations of the IR ops.

use super::fused;
use super::value::V;
use crate::ir::op::Act as Activation;
use crate::ir::{AttnScale, Op};
use crate::ops::OpDef;
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
    /// Mixed precision: the dtype matrix products run in (see [`super::Runtime::matmul_dtype`]).
    pub matmul_dtype: Option<burn::tensor::FloatDType>,
    /// Evaluate hard attention softly (see [`super::Runtime::soft_attention`]).
    pub soft_attention: bool,
    /// The frequency-curriculum mask of this step (see [`super::Runtime::freq_mask`]).
    pub freq_mask: Option<crate::ops::spectral::FreqCutoff>,
    /// Where layers put the statistics of the auxiliary loss terms, when asked for.
    pub aux: Option<&'a std::cell::RefCell<super::Aux>>,
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
    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
    x * keep / (1.0 - p)
}

pub(crate) fn act<const D: usize>(a: Activation, x: Tensor<D>) -> Tensor<D> {
    match a {
        Activation::Relu => activation::relu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Silu => super::fused::silu(x),
        Activation::Tanh => x.tanh(),
        Activation::Softplus => activation::softplus(x, 1.0),
    }
}

/// A constant tensor of `shape` on the context's device.
pub(crate) fn consts<const D: usize>(data: Vec<f32>, shape: [usize; D], ctx: &Ctx) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), ctx.device)
}

/// The sinusoidal table `[s, d]` (sin at even, cos at odd features).
pub fn sinusoidal(s: usize, d: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; s * d];
    for pos in 0..s {
        for j in 0..d {
            let i2 = (j - j % 2) as f64;
            let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
            t[pos * d + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    t
}

/// RoPE cos and sin tables `[s, half]`.
pub fn rope_tables(
    s: usize,
    head_dim: u64,
    base: f64,
    yarn: Option<(crate::ir::Real, u64, crate::ir::Real, crate::ir::Real)>,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim as usize / 2;
    let (freqs, scale) = crate::ir::rope_frequencies(head_dim, base, yarn);
    let (mut c, mut sn) = (vec![0.0f32; s * half], vec![0.0f32; s * half]);
    for pos in 0..s {
        for i in 0..half {
            let theta = pos as f64 * freqs[i];
            c[pos * half + i] = (theta.cos() * scale) as f32;
            sn[pos * half + i] = (theta.sin() * scale) as f32;
        }
    }
    (c, sn)
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
    ctx: &Ctx,
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
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [s * s]), ctx.device);
    let keep: Tensor<3> = consts(keep, [s, s, 1], ctx);
    let m = kernel.select(0, idx).reshape([s, s, d]) * keep;
    m.permute([2, 0, 1])
}

/// Apply `[d, s, s]` matrices to `[b, s, d]` per channel.
pub(crate) fn apply_per_channel(m: Tensor<3>, x: Tensor<3>) -> Tensor<3> {
    let xt = x.permute([2, 1, 0]); // [d, s, b]
    m.matmul(xt).permute([2, 1, 0])
}

/// The sequence length of a value: axis 1 of token ids `[b, s]` or vectors `[b, s, d]`.
fn seq_of(v: &V) -> usize {
    match v {
        V::I2(t) => t.dims()[1],
        V::F3(t) => t.dims()[1],
        other => other.f4().dims()[2],
    }
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

/// Evaluate one op.
pub fn eval(op: &Op, ins: &[&V], ctx: &Ctx) -> V {
    match op {
        Op::Embedding(o) => o.forward(ins, ctx),
        Op::Linear(o) => o.forward(ins, ctx),
        Op::Elementwise(o) => o.forward(ins, ctx),
        Op::Norm(o) => o.forward(ins, ctx),
        Op::Spectral(o) => o.forward(ins, ctx),
        // In incremental mode the table covers positions 0..offset + seq; its only reader,
        // AddPositions, takes the rows of this call (as it does from a learned table).
        Op::SinusoidalTable { dim } => {
            let (end, d) = (ctx.offset + seq_of(ins[0]), *dim as usize);
            V::F2(consts(sinusoidal(end, d), [end, d], ctx))
        }
        Op::AddPositions => {
            let x = ins[0].f3();
            let s = x.dims()[1];
            let t = ins[1].f2().narrow(0, ctx.offset, s);
            V::F3(x + t.unsqueeze::<3>())
        }
        Op::Heads(o) => o.forward(ins, ctx),
        Op::Forecast(o) => o.forward(ins, ctx),
        Op::Ensemble(o) => o.forward(ins, ctx),
        Op::RopeTable {
            head_dim,
            base,
            yarn,
        } => {
            let half = *head_dim as usize / 2;
            let seq = seq_of(ins[0]);
            let end = ctx.offset + seq;
            let (c, s) = rope_tables(end, *head_dim, base.0, *yarn);
            let c: Tensor<2> = consts(c, [end, half], ctx);
            let s: Tensor<2> = consts(s, [end, half], ctx);
            V::F3(Tensor::stack(vec![c, s], 2).narrow(0, ctx.offset, seq))
        }
        Op::ApplyRope => V::F4(super::fused::rope(ins[0].f4(), ins[1].f3())),
        Op::RepeatKv { groups } => {
            let x = ins[0].f4();
            let [b, h, s, d] = x.dims();
            let g = *groups as usize;
            V::F4(
                x.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, g)
                    .reshape([b, h * g, s, d]),
            )
        }
        Op::Attention { .. } => V::F4(attention(op, ins, ins[1].f4(), ins[2].f4(), ctx)),
        Op::Lstm(o) => o.forward(ins, ctx),
        Op::Mamba(o) => o.forward(ins, ctx),
        Op::Xlstm(o) => o.forward(ins, ctx),
        Op::Ets(o) => o.forward(ins, ctx),
        Op::PositionLinear(o) => o.forward(ins, ctx),
        Op::PadSeq { len } => match ins[0] {
            V::F2(x) => V::F2(pad_axis(x.clone(), 0, *len as usize, ctx)),
            other => V::F3(pad_axis(other.f3(), 1, *len as usize, ctx)),
        },
        Op::CropSeq => V::F3(ins[0].f3().narrow(1, 0, seq_of(ins[1]))),
        Op::CrossAttention { key_mask } => {
            let (q, k, v) = (ins[0].f4(), ins[1].f4(), ins[2].f4());
            let d = q.dims()[3] as f64;
            let mut scores = mm(q.div_scalar(d.sqrt()), k.swap_dims(2, 3), ctx);
            if *key_mask {
                scores = add_key_bias(scores, ins[3]);
            }
            V::F4(mm(activation::softmax(scores, 3), v, ctx))
        }
        Op::PadBias { pad } => {
            let ids = ins[0].ids();
            V::F2(ids.equal_elem(*pad).float().mul_scalar(-1e9))
        }
        Op::PrependMemory => {
            let (x, mem) = (ins[0].f3(), ins[1].f2());
            let [b, _, d] = x.dims();
            let m = mem.dims()[0];
            V::F3(Tensor::cat(
                vec![mem.unsqueeze::<3>().expand([b, m, d]), x],
                1,
            ))
        }
        Op::DropMemory { count } => {
            let x = ins[0].f3();
            let (m, s) = (*count as usize, x.dims()[1]);
            V::F3(x.narrow(1, m, s - m))
        }
        Op::SliceFeatures { start, len } => {
            V::F3(ins[0].f3().narrow(2, *start as usize, *len as usize))
        }
        Op::ConcatFeatures { .. } => V::F3(Tensor::cat(ins.iter().map(|v| v.f3()).collect(), 2)),
        Op::Wave(o) => o.forward(ins, ctx),
        Op::PhaseAttention(o) => o.forward(ins, ctx),
        Op::BandAttention(o) => o.forward(ins, ctx),
        Op::Input | Op::Source { .. } | Op::Series { .. } | Op::Param { .. } | Op::Output => {
            unreachable!("handled by the runtime")
        }
    }
}

/// Attention of the queries `ins[0]` over keys `k` and values `v` (`[b, H_kv, T, d]`, where T
/// may exceed the queries' length by `ctx.offset` cached positions). Grouped formulation: the
/// G query heads of a KV head become G·s rows of one matmul, so K/V are never repeated.
pub fn attention(op: &Op, ins: &[&V], k: Tensor<4>, v: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
    let Op::Attention {
        causal,
        kv_groups,
        scale,
        dropout: p,
        hard,
        adaptive,
        key_mask,
    } = op
    else {
        unreachable!("attention op")
    };
    let q = ins[0].f4();
    let [b, hq, s, d] = q.dims();
    let hk = k.dims()[1];
    let g = *kv_groups as usize;
    // Query i (absolute position offset + i) sees keys j ≤ offset + i.
    let vis = fused::Visible {
        queries: s,
        causal: *causal,
        offset: ctx.offset,
    };
    let inv_sqrt = 1.0 / (d as f64).sqrt();
    // Plain attention is one fused op (the 1/√d scale folded into its product); the variants
    // that change or read the probabilities (hard and adaptive attention, key padding,
    // dropout, the entropy term, mixed precision) are built from tensor ops.
    let variant = *hard
        || (*adaptive && !ctx.train)
        || *key_mask
        || (ctx.train && p.0 > 0.0)
        || ctx.aux.is_some()
        || ctx.matmul_dtype.is_some();
    // A learned scale multiplies q. 1/√d goes into the fused product, or else on q ([.., s, d])
    // rather than on the scores ([.., s, t]): one pass over the smaller tensor, forward and
    // backward.
    let (q, factor) = match scale {
        AttnScale::InvSqrtDim => (q, Some(inv_sqrt)),
        AttnScale::Learned => (q * ins[3].f1().reshape([1, 1, 1, 1]), None),
    };
    if !variant {
        return fused::attention(q, k, v, factor.unwrap_or(1.0) as f32, vis);
    }
    let q = match factor {
        Some(f) => q.mul_scalar(f),
        None => q,
    };
    let q = q.reshape([b, hk, g * s, d]);
    let mut scores = mm(q, k.swap_dims(2, 3), ctx);
    if *key_mask {
        scores = add_key_bias(scores, ins[ins.len() - 1]);
    }
    let probs = if *hard && !ctx.soft_attention {
        hard_weights(fused::softmax_plain_mask(scores, vis), ctx.train)
    } else if *adaptive && !ctx.train {
        adaptive_softmax(fused::softmax_plain_mask(scores, vis))
    } else {
        fused::softmax_rows(scores, vis)
    };
    record_entropy(&probs, ctx);
    let probs = dropout(probs, p.0, ctx);
    mm(probs, v, ctx).reshape([b, hq, s, d])
}

/// Attention logits `[b, h, s, t]` plus a key-padding bias `[b, t]` (see [`Op::PadBias`]).
fn add_key_bias(scores: Tensor<4>, bias: &V) -> Tensor<4> {
    let [b, t] = bias.f2().dims();
    scores + bias.f2().reshape([b, 1, 1, t])
}

/// When asked for ([`Ctx::aux`]): the mean entropy −Σ_j p_ij ln p_ij of the attention rows.
pub(crate) fn record_entropy(probs: &Tensor<4>, ctx: &Ctx) {
    if let Some(out) = ctx.aux {
        let h = (probs.clone() * probs.clone().clamp_min(1e-30).log())
            .sum_dim(3)
            .neg()
            .mean();
        out.borrow_mut().attention_entropy.push(h.reshape([1]));
    }
}

/// Hard attention weights: one-hot on each row's largest score. In training, straight-through:
/// the value of the hard weights with the gradient of the softmax ones.
pub fn hard_weights(scores: Tensor<4>, train: bool) -> Tensor<4> {
    let hard = argmax_weights(scores.clone());
    if train {
        let soft = activation::softmax(scores, 3);
        soft.clone() + (hard - soft).detach()
    } else {
        hard
    }
}

/// One-hot weights on the largest score of each row (along the last axis); tied maxima share
/// the weight equally.
fn argmax_weights(scores: Tensor<4>) -> Tensor<4> {
    let dims = scores.dims();
    let max = scores.clone().max_dim(3).expand(dims);
    let hit = scores.equal(max).float();
    hit.clone() / hit.sum_dim(3)
}

/// The entropy-adaptive temperature of Veličković et al. (2024): rows whose softmax entropy H
/// exceeds 0.5 are recomputed as softmax(β·scores) with β = max(poly(H), 1).
fn adaptive_softmax(scores: Tensor<4>) -> Tensor<4> {
    let p = activation::softmax(scores.clone(), 3);
    let h = (p.clone() * p.clamp_min(1e-30).log()).sum_dim(3).neg();
    let poly = ADAPTIVE_POLY
        .iter()
        .fold(h.zeros_like(), |acc, &c| acc * h.clone() + c);
    let beta = poly
        .clamp_min(1.0)
        .mask_where(h.clone().lower_equal_elem(0.5), h.ones_like());
    activation::softmax(scores * beta, 3)
}

/// Coefficients of β(H), highest power first (Veličković et al. 2024, `poly_fit`).
pub const ADAPTIVE_POLY: [f64; 5] = [-0.037, 0.481, -2.3, 4.917, -1.791];

#[cfg(test)]
mod tests {
    use super::*;

    fn vec4(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn hard_weights_are_one_hot_with_the_softmax_gradient() {
        let device = Device::flex().autodiff();
        let data = vec![0.3f32, 1.2, -0.5, 1.2, 2.0, 0.1, 0.0, -1.0];
        let make = || {
            Tensor::<4>::from_data(TensorData::new(data.clone(), [1, 1, 2, 4]), &device)
                .require_grad()
        };
        let w = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, -2.0, 0.5, 3.0, 0.7, 1.5, -1.0, 2.0],
                [1, 1, 2, 4],
            ),
            &device,
        );
        // Row 0 ties at 1.2 (the weight is shared), row 1 peaks at 2.0.
        let s = make();
        let h = hard_weights(s.clone(), true);
        assert_eq!(
            vec4(h.clone()),
            vec![0.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0]
        );
        let g_hard = s.grad(&(h * w.clone()).sum().backward()).unwrap();
        let s = make();
        let p = activation::softmax(s.clone(), 3);
        let g_soft = s.grad(&(p * w).sum().backward()).unwrap();
        let (a, b) = (
            g_hard.into_data().try_to_vec::<f32>().unwrap(),
            g_soft.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert!(a.iter().any(|x| x.abs() > 1e-3), "the gradient is not zero");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        // At inference the weights are hard and carry no softmax term.
        assert_eq!(vec4(hard_weights(make(), false))[4..], [1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn adaptive_softmax_sharpens_only_high_entropy_rows() {
        let device = Device::flex();
        // Row 0: one logit of 1 among 8 (entropy ≈ 1.99 > 0.5); row 1: a confident row.
        let mut data = vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        data.extend([12.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let t = Tensor::<4>::from_data(TensorData::new(data, [1, 1, 2, 8]), &device);
        let got = vec4(adaptive_softmax(t));
        let soft = |beta: f64, top: f64| {
            let z = (beta * top).exp() + 7.0;
            ((beta * top).exp() / z, 1.0 / z)
        };
        let (p1, p0) = soft(1.0, 1.0);
        let h = -(p1 * p1.ln() + 7.0 * p0 * p0.ln());
        let beta = -0.037 * h.powi(4) + 0.481 * h.powi(3) - 2.3 * h.powi(2) + 4.917 * h - 1.791;
        assert!(beta > 1.0, "β = {beta}");
        let (q1, q0) = soft(beta, 1.0);
        assert!((f64::from(got[0]) - q1).abs() < 1e-6 && (f64::from(got[1]) - q0).abs() < 1e-6);
        let (r1, _) = soft(1.0, 12.0);
        assert!(
            (f64::from(got[8]) - r1).abs() < 1e-6,
            "low-entropy rows keep β = 1"
        );
    }
}
