//! RMSNorm and LayerNorm over the last axis, with their fused backward passes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

/// The op `n` is, for [`Kernel`]'s counts.
fn norm_kernel(n: k::Norm) -> Kernel {
    if n.center {
        Kernel::LayerNorm
    } else {
        Kernel::RmsNorm
    }
}

/// Normalized rows and each row's (mean, 1/std).
fn norm_forward(
    x: &FlexTensor,
    w: &[f32],
    b: Option<&[f32]>,
    n: k::Norm,
) -> (FlexTensor, Vec<f32>) {
    let xs = values(x);
    let mut y = vec![0.0f32; xs.len()];
    let mut stats = vec![0.0f32; 2 * (xs.len() / w.len().max(1))];
    k::norm(xs, w, b, n, &mut y, &mut stats);
    norm_kernel(n).ran();
    (tensor(y, shape_of(x)), stats)
}

#[derive(Debug)]
struct NormBackward<const N: usize>(k::Norm);

impl<const N: usize> Backward<Flex, N> for NormBackward<N> {
    /// Input, weight, each row's (mean, 1/std).
    type State = (FlexTensor, FlexTensor, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let (x, w, stats) = ops.state;
        let mut dx = vec![0.0f32; values(&x).len()];
        let flags = (self.0.center, N == 3);
        let (dw, db) = k::norm_backward(values(&x), values(&w), values(&g), &stats, flags, &mut dx);
        norm_kernel(self.0).ran_backward();
        let mut parents = ops.parents.into_iter();
        let mut put = |grad: Vec<f32>, shape: Vec<usize>| {
            if let Some(node) = parents.next().flatten() {
                grads.register::<Flex>(node.id, tensor(grad, shape));
            }
        };
        put(dx, shape_of(&x));
        put(dw, shape_of(&w));
        if let Some(db) = db {
            put(db, shape_of(&w));
        }
    }
}

fn norm_tracked<const N: usize>(
    ins: [FloatTensor<Autodiff<Flex>>; N],
    n: k::Norm,
) -> FloatTensor<Autodiff<Flex>> {
    record(
        NormBackward::<N>(n),
        ins.each_ref().map(|t| t.node()),
        |keep| {
            let ins = ins.each_ref().map(|t| dense(t.primitive().clone()));
            let (y, stats) = norm_forward(&ins[0], values(&ins[1]), ins.get(2).map(values), n);
            (
                y,
                keep.then(|| (ins[0].clone(), ins[1].clone(), Arc::new(stats))),
            )
        },
    )
}

/// RMSNorm (`bias` `None`, not `center`) or LayerNorm over the last axis of `[b, s, d]`.
fn norm(x: Tensor<3>, w: Tensor<1>, bias: Option<Tensor<1>>, n: k::Norm) -> Option<Tensor<3>> {
    let out = match (lane(x), lane(w), bias.map(lane)) {
        (Lane::Plain(x), Lane::Plain(w), b) => {
            let b = match b {
                None => None,
                Some(Lane::Plain(b)) => Some(dense(b)),
                Some(_) => return None,
            };
            let w = dense(w);
            let (y, _) = norm_forward(&dense(x), values(&w), b.as_ref().map(values), n);
            back::<3>(Lane::Plain(y))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), None) => {
            back::<3>(Lane::Tracked(norm_tracked([x, w], n), ctx))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), Some(Lane::Tracked(b, _))) => {
            back::<3>(Lane::Tracked(norm_tracked([x, w, b], n), ctx))
        }
        _ => return None,
    };
    Some(out)
}

/// RMSNorm over the last axis of `[b, s, d]`: `x / sqrt(mean(x²) + eps) · w`.
pub fn rmsnorm(x: Tensor<3>, w: Tensor<1>, eps: f64) -> Tensor<3> {
    let n = k::Norm {
        center: false,
        eps: eps as f32,
    };
    let fallback = (x.clone(), w.clone());
    norm(x, w, None, n).unwrap_or_else(|| rmsnorm_plain(fallback.0, fallback.1, eps))
}

/// The plain Burn path of [`rmsnorm`].
pub fn rmsnorm_plain(x: Tensor<3>, w: Tensor<1>, eps: f64) -> Tensor<3> {
    let ms = x.clone().powi_scalar(2).mean_dim(2);
    x / (ms + eps).sqrt() * w.unsqueeze::<3>()
}

/// LayerNorm over the last axis of `[b, s, d]`: `(x − mean) / sqrt(var + eps) · w + b`.
pub fn layernorm(x: Tensor<3>, w: Tensor<1>, b: Tensor<1>, eps: f64) -> Tensor<3> {
    let n = k::Norm {
        center: true,
        eps: eps as f32,
    };
    let fallback = (x.clone(), w.clone(), b.clone());
    norm(x, w, Some(b), n)
        .unwrap_or_else(|| layernorm_plain(fallback.0, fallback.1, fallback.2, eps))
}

/// The plain Burn path of [`layernorm`].
pub fn layernorm_plain(x: Tensor<3>, w: Tensor<1>, b: Tensor<1>, eps: f64) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let xc = x - mean;
    let var = xc.clone().powi_scalar(2).mean_dim(2);
    xc / (var + eps).sqrt() * w.unsqueeze::<3>() + b.unsqueeze::<3>()
}
