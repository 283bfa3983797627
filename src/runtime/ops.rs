//! Burn implementations of the IR ops.

use super::fused;
use super::value::V;
use crate::ir::op::Act as Activation;
use crate::ir::{AttnScale, Op, SpectralAlgo};
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
    pub freq_mask: Option<crate::ir::FreqCutoff>,
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

fn consts<const D: usize>(data: Vec<f32>, shape: [usize; D], ctx: &Ctx) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), ctx.device)
}

/// Real DFT matrices for length n: `cos[f, t]`, `sin[f, t]` with f < n/2+1 (forward), and the
/// inverse `icos[t, f]`, `isin[t, f]` including the 1/n factor and the weight 2 of the bins that
/// stand for their conjugates.
fn dft(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let f = n / 2 + 1;
    let (mut c, mut s) = (vec![0.0f32; f * n], vec![0.0f32; f * n]);
    let (mut ic, mut is) = (vec![0.0f32; n * f], vec![0.0f32; n * f]);
    for k in 0..f {
        let w = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
            1.0
        } else {
            2.0
        };
        for t in 0..n {
            let a = 2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64;
            c[k * n + t] = a.cos() as f32;
            s[k * n + t] = -(a.sin()) as f32;
            ic[t * f + k] = (w * a.cos() / n as f64) as f32;
            is[t * f + k] = (-w * a.sin() / n as f64) as f32;
        }
    }
    (c, s, ic, is)
}

/// rfft along axis 1 of `[b, n, d]` (dense DFT): `[b, f, d, 2]`.
fn rfft3(x: Tensor<3>, n: usize, ctx: &Ctx) -> Tensor<4> {
    let f = n / 2 + 1;
    let (c, s, _, _) = dft(n);
    let c: Tensor<3> = consts(c, [1, f, n], ctx);
    let s: Tensor<3> = consts(s, [1, f, n], ctx);
    let re = c.matmul(x.clone());
    let im = s.matmul(x);
    Tensor::stack(vec![re, im], 3)
}

/// irfft of `[b, f, d, 2]` to `[b, n, d]` (dense).
fn irfft4(x: Tensor<4>, n: usize, ctx: &Ctx) -> Tensor<3> {
    let [b, f, d, _] = x.dims();
    let (_, _, ic, is) = dft(n);
    let ic: Tensor<3> = consts(ic, [1, n, f], ctx);
    let is: Tensor<3> = consts(is, [1, n, f], ctx);
    let re = x.clone().narrow(3, 0, 1).reshape([b, f, d]);
    let im = x.narrow(3, 1, 1).reshape([b, f, d]);
    ic.matmul(re) + is.matmul(im)
}

/// `x` zero-padded to `len` along `axis`.
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
fn conv_matrix(kernel: Tensor<2>, s: usize, n: usize, causal: bool, ctx: &Ctx) -> Tensor<3> {
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
fn apply_per_channel(m: Tensor<3>, x: Tensor<3>) -> Tensor<3> {
    let xt = x.permute([2, 1, 0]); // [d, s, b]
    m.matmul(xt).permute([2, 1, 0])
}

/// RevIN statistics of series `[b, L, C]`: mean and √(var + 1e-5) over L, `[b, 1, C]`.
fn revin_stats(x: &Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let mean = x.clone().mean_dim(1);
    let var = (x.clone() - mean.clone()).powi_scalar(2).mean_dim(1);
    (mean, (var + 1e-5).sqrt())
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
        Op::Heads(o) => o.forward(ins, ctx),
        Op::Positions(o) => o.forward(ins, ctx),
        Op::Sequence(o) => o.forward(ins, ctx),
        Op::Memory(o) => o.forward(ins, ctx),
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
        Op::Lstm { .. } => V::F3(lstm(op, ins, ctx, None).0),
        Op::Mamba { .. } => V::F3(mamba(op, ins, ctx, None).0),
        Op::Mlstm { .. } => V::F3(mlstm(op, ins, ctx, None).0),
        Op::Ets { .. } => V::F3(ets(op, ins, ctx, None).0),
        Op::Slstm { .. } => V::F3(slstm(op, ins, ctx, None).0),
        Op::MeanForecasts { members } => V::F3(
            Tensor::stack::<4>(ins.iter().map(|x| x.f3()).collect(), 0)
                .sum_dim(0)
                .squeeze_dim::<3>(0)
                .div_scalar(*members as f64),
        ),
        Op::MeanProbs { members } => {
            // ln(mean_i p_i) = logsumexp_i(log_softmax_i) − ln n, stable in f32.
            let lsm: Vec<Tensor<3>> = ins
                .iter()
                .map(|x| activation::log_softmax(x.f3(), 2))
                .collect();
            let st = Tensor::stack::<4>(lsm, 0);
            let m = st.clone().max_dim(0);
            let lse = (st - m.clone()).exp().sum_dim(0).log() + m;
            let [_, b, s, v] = lse.dims();
            V::F3(lse.reshape([b, s, v]).sub_scalar((*members as f64).ln()))
        }
        Op::PositionLinear { max_len, bias } => {
            debug_assert_eq!(ins[1].f4().dims()[0], *max_len as usize);
            V::F3(position_linear(
                ins[0].f3(),
                ins[1].f4(),
                bias.then(|| ins[2].f2()),
                0,
                ctx,
            ))
        }
        Op::RevinNorm => {
            let (x, g, b) = (ins[0].f3(), ins[1].f1(), ins[2].f1());
            let c = g.dims()[0];
            let (mean, std) = revin_stats(&x);
            V::F3((x - mean) / std * g.reshape([1, 1, c]) + b.reshape([1, 1, c]))
        }
        Op::RevinDenorm => {
            let (y, x, g, b) = (ins[0].f3(), ins[1].f3(), ins[2].f1(), ins[3].f1());
            let c = g.dims()[0];
            let (mean, std) = revin_stats(&x);
            V::F3((y - b.reshape([1, 1, c])) / g.reshape([1, 1, c]) * std + mean)
        }
        Op::Patch { len, stride } => {
            let x = ins[0].f3();
            let [b, l, c] = x.dims();
            let (p, s) = (*len as usize, *stride as usize);
            let n = (l - p) / s + 2;
            let last = x.clone().narrow(1, l - 1, 1).expand([b, s, c]);
            let xp = Tensor::cat(vec![x, last], 1).swap_dims(1, 2); // [b, c, l + s]
            let patches: Vec<Tensor<3>> = (0..n).map(|i| xp.clone().narrow(2, i * s, p)).collect();
            V::F3(Tensor::stack::<4>(patches, 2).reshape([b * c, n, p]))
        }
        Op::ComplexFeatures => {
            let x = ins[0].f4();
            let [b, f, d, _] = x.dims();
            V::F3(x.permute([0, 1, 3, 2]).reshape([b, f, 2 * d]))
        }
        Op::ForecastHead { channels } => {
            let x = ins[0].f3();
            let [bc, n, d] = x.dims();
            let (w, bias) = (ins[1].f2(), ins[2].f1());
            let h = w.dims()[1];
            let c = *channels as usize;
            let z = mm(x.reshape([bc, n * d]), w, ctx) + bias.reshape([1, h]);
            V::F3(z.reshape([bc / c, c, h]).swap_dims(1, 2))
        }
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
        Op::Rfft { n } => {
            let n = *n as usize;
            match ins[0] {
                V::F2(x) => {
                    let [len, d] = x.dims();
                    let y = rfft3(x.clone().reshape([1, len, d]), n, ctx);
                    let [_, f, d, _] = y.dims();
                    V::F3(y.reshape([f, d, 2]))
                }
                other => V::F4(rfft3(other.f3(), n, ctx)),
            }
        }
        Op::Irfft { n } => V::F3(irfft4(ins[0].f4(), *n as usize, ctx)),
        Op::FreqMask { dct } => match ctx.freq_mask {
            None => ins[0].clone(),
            Some(m) if *dct => {
                // h' = Cᵀ·(m ⊙ C·h).
                let h = ins[0].f2();
                let l = h.dims()[0];
                let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
                let c = consts(f32s(crate::ir::dct_basis(l)), [l, l], ctx);
                let w = consts(f32s(m.weights(l)), [l, 1], ctx);
                V::F2(c.clone().transpose().matmul(c.matmul(h) * w))
            }
            Some(m) => {
                let g = ins[0].f3();
                let f = g.dims()[0];
                let w = m.weights(f).into_iter().map(|v| v as f32).collect();
                V::F3(g * consts(w, [f, 1, 1], ctx))
            }
        },
        Op::ComplexMul => V::F4(complex_mul(ins[0].f4(), ins[1].f3())),
        Op::WindowedGate { window, hop } => V::F3(windowed_gate(
            ins[0].f3(),
            ins[1].f1(),
            ins[2].f3(),
            (*window as usize, *hop as usize),
            ctx,
        )),
        Op::Wave { harmonics } => {
            let x = ins[0].f3();
            let [b, s, _] = x.dims();
            let h = *harmonics as usize;
            let x = x.reshape([b, s, h, 3]);
            let fa = activation::softplus(x.clone().narrow(3, 0, 2), 1.0);
            let ph = x.narrow(3, 2, 1).tanh().mul_scalar(std::f64::consts::PI);
            V::F3(Tensor::cat(vec![fa, ph], 3).reshape([b, s, 3 * h]))
        }
        Op::HarmonicSelect { k, temperature } => V::F3(harmonic_select(
            ins[0].f3(),
            ins[1].f3(),
            *k as usize,
            temperature.0,
            ctx,
        )),
        Op::PhaseAttention { causal, complex } => V::F4(phase_attention(
            ins,
            PhaseKeys::of(ins, *complex),
            *causal,
            *complex,
            ctx,
        )),
        Op::BandAttention { bands } => {
            let n = *bands as usize;
            let stack = |part: usize| {
                Tensor::stack::<4>(
                    ins[part * n..(part + 1) * n]
                        .iter()
                        .map(|v| v.f3())
                        .collect(),
                    2,
                )
            };
            let (q, k, v) = (stack(0), stack(1), stack(2));
            let [b, s, _, c] = q.dims();
            let w = activation::softmax(
                q.matmul(k.swap_dims(2, 3))
                    .mul_scalar(1.0 / (c as f64).sqrt()),
                3,
            );
            V::F3(w.matmul(v).reshape([b, s, n * c]))
        }
        Op::SpectralFilter { n, causal, algo } => {
            let x = ins[0].f3();
            let n = *n as usize;
            let s = x.dims()[1];
            let fft_ok = n.is_power_of_two();
            if *algo == SpectralAlgo::Fft && fft_ok {
                let xp = pad_axis(x, 1, n, ctx);
                let (xr, xi) = burn::signal::rfft(xp, 1, Some(n));
                let (gr, gi) = if *causal {
                    let kp = pad_axis(ins[1].f2(), 0, n, ctx);
                    let (kr, ki) = burn::signal::rfft(kp, 0, Some(n));
                    (kr.unsqueeze::<3>(), ki.unsqueeze::<3>())
                } else {
                    let g = ins[1].f3();
                    let [f, d, _] = g.dims();
                    (
                        g.clone().narrow(2, 0, 1).reshape([1, f, d]),
                        g.narrow(2, 1, 1).reshape([1, f, d]),
                    )
                };
                let yr = xr.clone() * gr.clone() - xi.clone() * gi.clone();
                let yi = xr * gi + xi * gr;
                V::F3(burn::signal::irfft(yr, yi, 1, Some(n)).narrow(1, 0, s))
            } else {
                let kernel = if *causal {
                    ins[1].f2()
                } else {
                    let g = ins[1].f3();
                    let [f, d, _] = g.dims();
                    irfft4(g.reshape([1, f, d, 2]), n, ctx).reshape([n, d])
                };
                let m = conv_matrix(kernel, s, n, *causal, ctx);
                V::F3(apply_per_channel(m, x))
            }
        }
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

/// Complex product `[b, f, d, 2] · [f, d, 2]`.
fn complex_mul(x: Tensor<4>, g: Tensor<3>) -> Tensor<4> {
    let g = g.unsqueeze::<4>();
    let (xr, xi) = (x.clone().narrow(3, 0, 1), x.narrow(3, 1, 1));
    let (gr, gi) = (g.clone().narrow(3, 0, 1), g.narrow(3, 1, 1));
    Tensor::cat(
        vec![
            xr.clone() * gr.clone() - xi.clone() * gi.clone(),
            xr * gi + xi * gr,
        ],
        3,
    )
}

/// The windowed spectral gate (see [`Op::WindowedGate`]): frames gathered with one `select`,
/// transformed together, and overlap-added with one `select_assign`.
fn windowed_gate(
    x: Tensor<3>,
    mix: Tensor<1>,
    gate: Tensor<3>,
    (window, hop): (usize, usize),
    ctx: &Ctx,
) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let basis = crate::ir::window_basis(window)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let g = activation::softmax(mix, 0)
        .reshape([1, 3])
        .matmul(consts(basis, [3, window], ctx))
        .reshape([window]);
    let (pad, count) = crate::ir::frames(window, hop, s);
    let lp = (count - 1) * hop + window;
    let mut parts = Vec::new();
    if pad > 0 {
        parts.push(Tensor::zeros([b, pad, d], ctx.device));
    }
    parts.push(x);
    if lp > pad + s {
        parts.push(Tensor::zeros([b, lp - pad - s, d], ctx.device));
    }
    let xp = Tensor::cat(parts, 1);
    let idx: Vec<i64> = (0..count)
        .flat_map(|c| (0..window).map(move |n| (c * hop + n) as i64))
        .collect();
    let idx = Tensor::<1, Int>::from_ints(idx.as_slice(), ctx.device);
    let gw = g.clone().reshape([1, window, 1]);
    let frames = xp.select(1, idx.clone()).reshape([b * count, window, d]) * gw.clone();
    let spec = complex_mul(rfft3(frames, window, ctx), gate);
    let y = (irfft4(spec, window, ctx) * gw).reshape([b, count * window, d]);
    let num = Tensor::<3>::zeros([b, lp, d], ctx.device).select_assign(
        1,
        idx.clone(),
        y,
        burn::tensor::IndexingUpdateOp::Add,
    );
    let g2 = g
        .powi_scalar(2)
        .reshape([1, window])
        .repeat_dim(0, count)
        .reshape([count * window]);
    let den = Tensor::<1>::zeros([lp], ctx.device).select_assign(
        0,
        idx,
        g2,
        burn::tensor::IndexingUpdateOp::Add,
    );
    // Σ g² > 0 wherever the rectangular window has weight; the floor only guards a mix
    // saturated to pure Hann without overlap.
    (num / den.clamp_min(1e-12).reshape([1, lp, 1])).narrow(1, pad, s)
}

/// Top-k mask `[b, s, h]`: 1 on exactly k entries of each row, its k largest.
fn topk_mask(scores: Tensor<3>, k: usize) -> Tensor<3> {
    let [b, s, _] = scores.dims();
    let (_, idx) = scores.clone().topk_with_indices(k, 2);
    scores.zeros_like().scatter(
        2,
        idx,
        Tensor::ones([b, s, k], &scores.device()),
        burn::tensor::IndexingUpdateOp::Add,
    )
}

/// Harmonic selection (see [`Op::HarmonicSelect`]). Training: Gumbel-perturbed scores, the
/// hard top-k mask forward and the relaxed top-k of Xie & Ermon (2019) backward, k softmaxes
/// at temperature τ each removing the mass already taken (α ← α + ln(1 − a)).
fn harmonic_select(x: Tensor<3>, scores: Tensor<3>, k: usize, tau: f64, ctx: &Ctx) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let h = scores.dims()[2];
    // The noise-free top-k is built only where it is read: for the sparsity statistic
    // (training) and as the mask at evaluation.
    if let Some(out) = ctx.aux {
        let clean = topk_mask(scores.clone().detach(), k);
        let p = activation::softmax(scores.clone().div_scalar(tau), 2);
        let outside = (p * clean).sum_dim(2).neg().add_scalar(1.0).mean();
        out.borrow_mut()
            .harmonic_sparsity
            .push(outside.reshape([1]));
    }
    let mask = if ctx.train {
        let u = scores.random_like(Distribution::Uniform(1e-10, 1.0));
        let noisy = scores + u.log().neg().log().neg();
        let hard = topk_mask(noisy.clone().detach(), k);
        let mut alpha = noisy;
        let mut soft: Option<Tensor<3>> = None;
        for _ in 0..k {
            let a = activation::softmax(alpha.clone().div_scalar(tau), 2);
            alpha = alpha + a.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
            soft = Some(match soft {
                Some(t) => t + a,
                None => a,
            });
        }
        let soft = soft.unwrap_or_else(|| hard.clone());
        soft.clone() + (hard - soft).detach()
    } else {
        topk_mask(scores.detach(), k)
    };
    let g = d / h;
    x * mask
        .reshape([b, s, h, 1])
        .expand([b, s, h, g])
        .reshape([b, s, d])
}

/// The key side of phase-coherent attention, `[b, h, t, ·]` each: keys, values, the keys'
/// phases and (complex mode) amplitudes. With a cache, t covers earlier positions too.
#[derive(Clone)]
pub struct PhaseKeys {
    /// Keys `[b, h, t, e]`.
    pub k: Tensor<4>,
    /// Values `[b, h, t, e]`.
    pub v: Tensor<4>,
    /// The keys' phases `[b, h, t, P]`.
    pub phase: Tensor<4>,
    /// The keys' amplitudes `[b, h, t, P]` (complex mode only).
    pub amp: Option<Tensor<4>>,
}

impl PhaseKeys {
    /// The key side of this call's own positions (the op's inputs).
    pub fn of(ins: &[&V], complex: bool) -> Self {
        Self {
            k: ins[1].f4(),
            v: ins[2].f4(),
            phase: ins[3].f4(),
            amp: complex.then(|| ins[4].f4()),
        }
    }

    /// `earlier`'s positions followed by this call's (along the sequence axis).
    pub fn after(self, earlier: PhaseKeys) -> Self {
        let cat = |a: Tensor<4>, b: Tensor<4>| Tensor::cat(vec![a, b], 2);
        Self {
            k: cat(earlier.k, self.k),
            v: cat(earlier.v, self.v),
            phase: cat(earlier.phase, self.phase),
            amp: earlier.amp.zip(self.amp).map(|(a, b)| cat(a, b)),
        }
    }
}

/// Phase-coherent attention (see [`Op::PhaseAttention`]) of the queries in `ins` over `keys`,
/// which may start `ctx.offset` cached positions earlier.
pub fn phase_attention(
    ins: &[&V],
    keys: PhaseKeys,
    causal: bool,
    complex: bool,
    ctx: &Ctx,
) -> Tensor<4> {
    let (q, ph) = (ins[0].f4(), ins[3].f4());
    let blend = ins[ins.len() - 1].f1();
    let [_, _, s, e] = q.dims();
    let p = ph.dims()[3];
    let dots = mm(q, keys.k.swap_dims(2, 3), ctx).mul_scalar(1.0 / (e as f64).sqrt());
    let (cq, sq) = (ph.clone().cos(), ph.sin());
    let (ck, sk) = (keys.phase.clone().cos(), keys.phase.sin());
    let tr = |x: Tensor<4>| x.swap_dims(2, 3);
    let coherence = if complex {
        let (aq, ak) = (ins[4].f4(), keys.amp.expect("complex mode has amplitudes"));
        let (caq, saq) = (aq.clone() * cq, aq.clone() * sq);
        let (cak, sak) = (ak.clone() * ck, ak.clone() * sk);
        let re = mm(caq.clone(), tr(cak.clone()), ctx) + mm(saq.clone(), tr(sak.clone()), ctx);
        let im = mm(saq, tr(cak), ctx) - mm(caq, tr(sak), ctx);
        let norm = mm(aq, tr(ak), ctx);
        (re.powi_scalar(2) + im.powi_scalar(2))
            .add_scalar(1e-12)
            .sqrt()
            / norm.add_scalar(1e-6)
    } else {
        (mm(cq, tr(ck), ctx) + mm(sq, tr(sk), ctx)).div_scalar(p as f64)
    };
    let logits = dots * blend.clone().narrow(0, 0, 1).reshape([1, 1, 1, 1])
        + coherence * blend.narrow(0, 1, 1).reshape([1, 1, 1, 1]);
    // Query i (absolute position offset + i) sees keys j ≤ offset + i.
    let vis = fused::Visible {
        queries: s,
        causal,
        offset: ctx.offset,
    };
    let probs = activation::softmax(fused::softmax_plain_mask(logits, vis), 3);
    record_entropy(&probs, ctx);
    mm(probs, keys.v, ctx)
}

/// Attention logits `[b, h, s, t]` plus a key-padding bias `[b, t]` (see [`Op::PadBias`]).
fn add_key_bias(scores: Tensor<4>, bias: &V) -> Tensor<4> {
    let [b, t] = bias.f2().dims();
    scores + bias.f2().reshape([b, 1, 1, t])
}

/// When asked for ([`Ctx::aux`]): the mean entropy −Σ_j p_ij ln p_ij of the attention rows.
fn record_entropy(probs: &Tensor<4>, ctx: &Ctx) {
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

/// Mamba state: the last k − 1 inputs of the convolution `[b, k − 1, e]` and the SSM state
/// `[b, e, n]`.
pub type MambaState = (Tensor<3>, Tensor<3>);

/// The Mamba block from `init` (zeros when `None`); returns the outputs and the final state.
/// The scan runs step by step; everything else is computed for all positions at once.
pub fn mamba(op: &Op, ins: &[&V], ctx: &Ctx, init: Option<MambaState>) -> (Tensor<3>, MambaState) {
    let Op::Mamba {
        d_state,
        d_conv,
        dt_rank,
    } = op
    else {
        unreachable!("mamba op")
    };
    let (n, k, r) = (*d_state as usize, *d_conv as usize, *dt_rank as usize);
    let x = ins[0].f3();
    let [b, s, _] = x.dims();
    let w_in = ins[1].f2();
    let e = w_in.dims()[1] / 2;
    let xz = mm(x, w_in.unsqueeze::<3>(), ctx);
    let (xi, z) = (xz.clone().narrow(2, 0, e), xz.narrow(2, e, e));
    let (prev, h) = init.unwrap_or_else(|| {
        (
            Tensor::<3>::zeros([b, k - 1, e], ctx.device),
            Tensor::<3>::zeros([b, e, n], ctx.device),
        )
    });
    // Causal depthwise convolution over [previous k − 1 inputs, this call's inputs].
    let xp = Tensor::cat(vec![prev, xi], 1);
    let conv_w = ins[2].f2();
    let mut u = ins[3].f1().reshape([1, 1, e]).expand([b, s, e]);
    for j in 0..k {
        u = u + xp.clone().narrow(1, j, s) * conv_w.clone().narrow(1, j, 1).reshape([1, 1, e]);
    }
    let conv_state = xp.narrow(1, s, k - 1);
    let u = activation::silu(u);
    let proj = mm(u.clone(), ins[4].f2().unsqueeze::<3>(), ctx);
    let (delta, bm, cm) = (
        proj.clone().narrow(2, 0, r),
        proj.clone().narrow(2, r, n),
        proj.narrow(2, r + n, n),
    );
    let dt = activation::softplus(
        mm(delta, ins[5].f2().unsqueeze::<3>(), ctx) + ins[6].f1().reshape([1, 1, e]),
        1.0,
    );
    // The scan (see fused::selective_scan_plain for the op-by-op form).
    let a = ins[7].f2().exp().neg().unsqueeze::<3>();
    let dtx = dt.clone() * u.clone();
    let (ys, h) = fused::selective_scan([dt, a, dtx, bm, cm], h);
    // y_t = C_t · h_t + D x_t.
    let y = ys + u * ins[8].f1().reshape([1, 1, e]);
    let out = mm(y * activation::silu(z), ins[9].f2().unsqueeze::<3>(), ctx);
    (out, (conv_state, h))
}

/// Causal depthwise convolution y_t = Σ_{j≤t} kernel[j] ⊙ x_{t−j} of `x [b, s, d]` with a
/// kernel of s taps `[s, d]`: by FFT (zero-padded to a power of two ≥ 2s) for long sequences,
/// as a dense per-channel matrix for short ones.
pub fn causal_conv(x: Tensor<3>, kernel: Tensor<2>, ctx: &Ctx) -> Tensor<3> {
    let s = x.dims()[1];
    if s as u64 <= crate::passes::DENSE_MAX {
        return apply_per_channel(conv_matrix(kernel, s, s, true, ctx), x);
    }
    let n = (2 * s).next_power_of_two();
    let (xr, xi) = burn::signal::rfft(pad_axis(x, 1, n, ctx), 1, Some(n));
    let (kr, ki) = burn::signal::rfft(pad_axis(kernel, 0, n, ctx), 0, Some(n));
    let (kr, ki) = (kr.unsqueeze::<3>(), ki.unsqueeze::<3>());
    let yr = xr.clone() * kr.clone() - xi.clone() * ki.clone();
    let yi = xr * ki + xi * kr;
    burn::signal::irfft(yr, yi, 1, Some(n)).narrow(1, 0, s)
}

/// The position-wise linear map's outputs at positions offset..t from the inputs of every
/// position so far, `x [b, t, i]`: y_u = Σ_{r≤u} x_r · w[r, :, u, :] + bias[u]. With a cache,
/// `x` holds the earlier positions' inputs too and only the new positions are computed.
pub fn position_linear(
    x: Tensor<3>,
    w: Tensor<4>,
    bias: Option<Tensor<2>>,
    offset: usize,
    ctx: &Ctx,
) -> Tensor<3> {
    let [b, t, i] = x.dims();
    let o = w.dims()[3];
    let s = t - offset;
    // Only the first t input positions and the s output positions matter:
    // y = x[b, t·i] · (w ⊙ mask)[t·i, s·o], the mask keeping r ≤ offset + c.
    let w = w.narrow(0, 0, t).narrow(2, offset, s);
    let mask: Vec<f32> = (0..t * s)
        .map(|k| f32::from(u8::from(k / s <= offset + k % s)))
        .collect();
    let mask = consts(mask, [t, s], ctx).reshape([t, 1, s, 1]);
    let wm = (w * mask).reshape([t * i, s * o]);
    let y = mm(x.reshape([b, t * i]), wm, ctx).reshape([b, s, o]);
    match bias {
        Some(bias) => y + bias.narrow(0, offset, s).unsqueeze::<3>(),
        None => y,
    }
}

/// What the causal spectral filter's cache keeps of the inputs `x [b, t, d]` for a kernel of
/// `l` taps: the last l − 1 positions (at least 1, so no axis is empty; all t when fewer).
pub fn filter_history(x: Tensor<3>, l: usize) -> Tensor<3> {
    let t = x.dims()[1];
    let keep = t.min(l.max(2) - 1);
    x.narrow(1, t - keep, keep)
}

/// The causal spectral filter (a causal linear convolution with the kernel `[l, d]`) at this
/// call's positions `x [b, s, d]`, continuing after `history` `[b, h, d]`, the inputs of the
/// latest earlier positions (as [`filter_history`] keeps them): output t is
/// Σ_{j<l} kernel[j] ⊙ x_{t−j}, one windowed product per position instead of an FFT over the
/// whole sequence. Returns the outputs and the new history.
pub fn causal_filter_step(
    x: Tensor<3>,
    kernel: Tensor<2>,
    history: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let [b, s, d] = x.dims();
    let l = kernel.dims()[0];
    let h = history.dims()[1];
    let all = Tensor::cat(vec![history, x], 1);
    // kernel[j] multiplies x_{t−j}: reversed, it lines up with a window ending at t.
    let rev = kernel.flip([0]).unsqueeze::<3>();
    let ys = (0..s)
        .map(|i| {
            let t = h + i;
            let len = (t + 1).min(l);
            let window = all.clone().narrow(1, t + 1 - len, len);
            (window * rev.clone().narrow(1, l - len, len))
                .sum_dim(1)
                .reshape([b, 1, d])
        })
        .collect();
    (Tensor::cat(ys, 1), filter_history(all, l))
}

/// Exponential smoothing attention over this call's positions from the previous ES value
/// `init` `[b, d]` (v₀ when `None`); returns the outputs and the last ES value. With
/// α = σ(a): ES_t = (1 − α)^{t+1} ES_{−1} + Σ_{j≤t} α (1 − α)^j v_{t−j}, a causal convolution.
pub fn ets(op: &Op, ins: &[&V], ctx: &Ctx, init: Option<Tensor<2>>) -> (Tensor<3>, Tensor<2>) {
    let Op::Ets { heads } = op else {
        unreachable!("ets op")
    };
    let x = ins[0].f3();
    let [b, s, d] = x.dims();
    let h = *heads as usize;
    let v = mm(x, ins[1].f2().unsqueeze::<3>(), ctx) + ins[2].f1().reshape([1, 1, d]);
    // Per channel: ln α and ln(1 − α), [1, d].
    let a = ins[3]
        .f1()
        .reshape([h, 1])
        .expand([h, d / h])
        .reshape([1, d]);
    let (ln_a, ln_1a) = (
        activation::log_sigmoid(a.clone()),
        activation::log_sigmoid(a.neg()),
    );
    let j: Tensor<2> = consts((0..s).map(|j| j as f32).collect(), [s, 1], ctx);
    let kernel = (j.clone() * ln_1a.clone() + ln_a).exp();
    let prev = init.unwrap_or_else(|| ins[4].f1().reshape([1, d]).expand([b, d]));
    let decay = ((j + 1.0) * ln_1a).exp(); // (1 − α)^{t+1}, [s, d]
    let es = causal_conv(v, kernel, ctx) + decay.unsqueeze::<3>() * prev.unsqueeze_dim::<3>(1);
    let last = es.clone().narrow(1, s - 1, 1).reshape([b, d]);
    (mm(es, ins[5].f2().unsqueeze::<3>(), ctx), last)
}

/// Recurrent state of an xLSTM layer. mLSTM: the stabilized memory C̄ `[b, H, d, d]`,
/// normalizer n̄ `[b, H, 1, d]` and stabilizer m `[b, H, 1, 1]`. sLSTM: c, n, m and h, each
/// `[b, H, 1, d]` (d = width / H).
pub type XlstmState = Vec<Tensor<4>>;

/// The mLSTM layer over this call's positions, continuing from `init` (a zero memory when
/// `None`); returns the outputs and the final state. Stabilized parallel form over the
/// chunk: with F_t = Σ_{u≤t} ln σ(f̃_u), position t weighs the carried memory by
/// e^{F_t + m₀} and position s ≤ t by e^{F_t − F_s + ĩ_s}, all divided by e^{m_t} where m_t is
/// the largest of these exponents, so nothing overflows; m_t cancels in the result, so it is
/// held constant for the gradient.
pub fn mlstm(op: &Op, ins: &[&V], ctx: &Ctx, init: Option<XlstmState>) -> (Tensor<3>, XlstmState) {
    let Op::Mlstm { heads } = op else {
        unreachable!("mlstm op")
    };
    let x = ins[0].f3();
    let [b, s, d] = x.dims();
    let h = *heads as usize;
    let dh = d / h;
    let proj = |w: &V, bias: &V, o: usize| {
        mm(x.clone(), w.f2().unsqueeze::<3>(), ctx) + bias.f1().reshape([1, 1, o])
    };
    let qkvo = proj(ins[1], ins[2], 4 * d);
    let heads_of = |i: usize| {
        qkvo.clone()
            .narrow(2, i * d, d)
            .reshape([b, s, h, dh])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (
        heads_of(0),
        heads_of(1).div_scalar((dh as f64).sqrt()),
        heads_of(2),
    );
    let og = qkvo.narrow(2, 3 * d, d);
    // Gates [b, H, s].
    let ig = proj(ins[3], ins[4], h).swap_dims(1, 2);
    let logf = activation::log_sigmoid(proj(ins[5], ins[6], h).swap_dims(1, 2));
    let (hcat, st) = match init {
        None if ctx.matmul_dtype.is_none() => fused::mlstm([q, k, v], [ig, logf]),
        init => {
            let init = init.map(|st| [st[0].clone(), st[1].clone(), st[2].clone()]);
            fused::mlstm_plain([q, k, v], [ig, logf], init, |a, b| mm(a, b, ctx))
        }
    };
    let out = mm(
        activation::sigmoid(og) * hcat,
        ins[7].f2().unsqueeze::<3>(),
        ctx,
    );
    (out, st.to_vec())
}

/// The sLSTM layer step by step from `init` (zeros when `None`), with the paper's stabilizer
/// m_t = max(ln f_t + m_{t−1}, ĩ_t); returns the outputs and the final state.
pub fn slstm(op: &Op, ins: &[&V], ctx: &Ctx, init: Option<XlstmState>) -> (Tensor<3>, XlstmState) {
    let Op::Slstm { heads } = op else {
        unreachable!("slstm op")
    };
    let x = ins[0].f3();
    let [b, _, d] = x.dims();
    let h = *heads as usize;
    let dh = d / h;
    // Input pre-activations for all positions, [b, s, 4d] (gate-major, then head).
    let xw = linear(x, ins[1].f2(), Some(ins[3].f1()), ctx);
    let r = ins[2].f3(); // [H, dh, 4dh]
    let st: [Tensor<4>; 4] = match init {
        Some(st) => st.try_into().expect("four sLSTM state tensors"),
        None => std::array::from_fn(|_| Tensor::zeros([b, h, 1, dh], ctx.device)),
    };
    let (y, st) = if ctx.matmul_dtype.is_none() {
        fused::slstm(xw, r, st)
    } else {
        fused::slstm_plain(xw, r, st, |a, b| mm(a, b, ctx))
    };
    (y, st.to_vec())
}

/// LSTM state of every layer: (h, c), each `[b, hidden]`.
pub type LstmState = Vec<(Tensor<2>, Tensor<2>)>;

/// The stacked LSTM from `init` (zeros when `None`); returns the outputs and the final state.
pub fn lstm(op: &Op, ins: &[&V], ctx: &Ctx, init: Option<LstmState>) -> (Tensor<3>, LstmState) {
    let Op::Lstm {
        layers,
        hidden,
        dropout: p,
    } = op
    else {
        unreachable!("lstm op")
    };
    let h = *hidden as usize;
    let mut x = ins[0].f3();
    let mut finals = Vec::with_capacity(*layers as usize);
    for l in 0..*layers as usize {
        if l > 0 {
            x = dropout(x, p.0, ctx);
        }
        let (w_ih, w_hh) = (ins[1 + 4 * l].f2(), ins[2 + 4 * l].f2());
        let bias = ins[3 + 4 * l].f1() + ins[4 + 4 * l].f1();
        let b = x.dims()[0];
        let xw = linear(x, w_ih, Some(bias), ctx);
        let (hs, cs) = match &init {
            Some(st) => st[l].clone(),
            None => (
                Tensor::<2>::zeros([b, h], ctx.device),
                Tensor::<2>::zeros([b, h], ctx.device),
            ),
        };
        let (y, hs, cs) = if ctx.matmul_dtype.is_none() {
            fused::lstm(xw, w_hh, hs, cs)
        } else {
            fused::lstm_plain(xw, w_hh, hs, cs, |a, b| mm(a, b, ctx))
        };
        finals.push((hs, cs));
        x = y;
    }
    (x, finals)
}

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
