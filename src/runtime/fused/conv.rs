//! The causal depthwise convolution, computed directly, with its fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

/// Whether [`causal_conv`] computes a convolution of `len` positions with `taps` taps directly:
/// when the taps that reach an input, min(taps, len), are at most [`CONV_DIRECT_PER_LOG2`] ×
/// log₂ n, n the FFT's length (a power of two ≥ 2 len). The direct kernel costs
/// O(len · taps) per channel, the FFT O(n log n) (Burn's runs as several separate tensor ops);
/// their ratio is about taps / log n. Measured (`cargo bench --bench fused`, batch 32,
/// 32 channels, taps = len, forward and backward): the direct kernel 4.2× faster at 128
/// positions, 2.4× at 256, 0.93× at 512, 0.56× at 1024 (see
/// `docs/measurements/2026-12-06-ets-conv-kernels.md`).
pub fn conv_is_direct(len: usize, taps: usize) -> bool {
    let log_n = (2 * len).next_power_of_two().trailing_zeros() as usize;
    taps.min(len) <= CONV_DIRECT_PER_LOG2 * log_n
}

/// See [`conv_is_direct`]: 40 puts the switch between 256 positions (direct, 2.4× faster)
/// and 512 (FFT, 1.07× faster) when the kernel is as long as the sequence.
pub const CONV_DIRECT_PER_LOG2: usize = 40;

#[derive(Debug)]
struct ConvBackward;

/// What the convolution's backward pass keeps: its input and kernel.
#[derive(Clone, Debug)]
struct ConvKept {
    x: FlexTensor,
    k: FlexTensor,
    sh: k::ConvShape,
}

impl Backward<Flex, 2> for ConvBackward {
    type State = ConvKept;

    fn backward(self, ops: Ops<ConvKept, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let grad = k::causal_conv_backward(values(&st.x), values(&st.k), st.sh, values(&g));
        Kernel::CausalConv.ran_backward();
        for ((parent, grad), like) in ops.parents.into_iter().zip(grad).zip([&st.x, &st.k]) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, shape_of(like)));
            }
        }
    }
}

fn conv_forward(x: &FlexTensor, kernel: &FlexTensor) -> (FlexTensor, k::ConvShape) {
    let (xs, ks) = (shape_of(x), shape_of(kernel));
    let sh = k::ConvShape {
        batch: xs[0],
        len: xs[1],
        channels: xs[2],
        taps: ks[0],
    };
    let mut y = vec![0.0f32; x.layout().num_elements()];
    k::causal_conv(values(x), values(kernel), sh, &mut y);
    Kernel::CausalConv.ran();
    (tensor(y, xs), sh)
}

/// The causal depthwise convolution `y[b, t, c] = Σ_{j ≤ t, j < taps} kernel[j, c] · x[b, t − j, c]`
/// of `x` `[b, s, d]` with `kernel` `[taps, d]`: one fused op forward (per block of batch rows
/// in parallel) and one backward, where [`conv_is_direct`] says it beats an FFT. Other
/// sizes, and inputs the kernel cannot take, go to `plain` (the caller's FFT or dense form of
/// the same convolution; [`causal_conv_plain`] is one).
pub fn causal_conv(
    x: Tensor<3>,
    kernel: Tensor<2>,
    plain: impl FnOnce(Tensor<3>, Tensor<2>) -> Tensor<3>,
) -> Tensor<3> {
    let [_, s, d] = x.dims();
    if !conv_is_direct(s, kernel.dims()[0]) || kernel.dims()[1] != d {
        return plain(x, kernel);
    }
    match (lane(x), lane(kernel)) {
        (Lane::Plain(x), Lane::Plain(k)) => {
            back::<3>(Lane::Plain(conv_forward(&dense(x), &dense(k)).0))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(k, _)) => {
            let nodes = [x.node(), k.node()];
            let out = record(ConvBackward, nodes, |keep| {
                let (x, k) = (dense(x.into_primitive()), dense(k.into_primitive()));
                let (y, sh) = conv_forward(&x, &k);
                (y, keep.then_some(ConvKept { x, k, sh }))
            });
            back::<3>(Lane::Tracked(out, ctx))
        }
        (x, k) => plain(back(x), back(k)),
    }
}

/// The plain Burn path of [`causal_conv`]: a dense per-channel `[s, s]` convolution matrix up to
/// `passes::DENSE_MAX` positions; beyond, an FFT zero-padded to a power of two ≥ 2s (the taps
/// past the length multiply nothing and are dropped first).
pub fn causal_conv_plain(x: Tensor<3>, kernel: Tensor<2>) -> Tensor<3> {
    use crate::runtime::ops::{apply_per_channel, conv_matrix};
    let [b, s, d] = x.dims();
    let device = x.device();
    if s as u64 <= crate::passes::DENSE_MAX {
        return apply_per_channel(conv_matrix(kernel, s, s, true, &device), x);
    }
    let taps = kernel.dims()[0].min(s);
    let n = (2 * s).next_power_of_two();
    let x = Tensor::cat(vec![x, Tensor::zeros([b, n - s, d], &device)], 1);
    let kernel = kernel.narrow(0, 0, taps);
    let kernel = Tensor::cat(vec![kernel, Tensor::zeros([n - taps, d], &device)], 0);
    let (xr, xi) = burn::signal::rfft(x, 1, Some(n));
    let (kr, ki) = burn::signal::rfft(kernel, 0, Some(n));
    let (kr, ki) = (kr.unsqueeze::<3>(), ki.unsqueeze::<3>());
    let yr = xr.clone() * kr.clone() - xi.clone() * ki.clone();
    let yi = xr * ki + xi * kr;
    burn::signal::irfft(yr, yi, 1, Some(n)).narrow(1, 0, s)
}
