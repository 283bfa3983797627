//! A language model's loss: the cross-entropy of its head's logits `[b, s, v]` against the
//! targets, with label smoothing, as one fused kernel with its backward pass. Over GPT-2's
//! 50 257 tokens the plain path materializes the log-probabilities and several temporaries
//! of the logits' size forward and backward; this one keeps the logits (which the backward
//! pass needs anyway) and one log-sum-exp per position, and writes the gradient once.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

/// What the backward pass reads: the logits, the targets, the rows' log-sum-exps and ε.
#[derive(Clone, Debug)]
struct XentState {
    logits: FlexTensor,
    targets: Arc<Vec<usize>>,
    lse: Arc<Vec<f32>>,
    smoothing: f32,
}

#[derive(Debug)]
struct XentBackward;

impl Backward<Flex, 1> for XentBackward {
    type State = XentState;

    fn backward(self, ops: Ops<XentState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let st = ops.state;
            let shape = shape_of(&st.logits);
            let v = shape[shape.len() - 1];
            let x = values(&st.logits);
            let mut dx = vec![0.0f32; x.len()];
            k::cross_entropy_backward(
                x,
                v,
                &st.targets,
                st.smoothing,
                &st.lse,
                values(&g),
                &mut dx,
            );
            Kernel::CrossEntropy.ran_backward();
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

/// Runs the kernel: the losses `[b, s]` and the rows' log-sum-exps.
fn xent_forward(x: &FlexTensor, targets: &[usize], smoothing: f32) -> (FlexTensor, Vec<f32>) {
    let shape = shape_of(x);
    let v = shape[2];
    let rows = shape[0] * shape[1];
    let (mut loss, mut lse) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    k::cross_entropy(values(x), v, targets, smoothing, &mut loss, &mut lse);
    Kernel::CrossEntropy.ran();
    (tensor(loss, shape[..2].to_vec()), lse)
}

/// The cross-entropy at every position, `[b, s]`, of `logits [b, s, v]` against `targets
/// [b, s]`, with label smoothing ε (PyTorch's semantics: the target is (1 − ε)·one-hot +
/// ε/v). Targets outside `0..v` take the plain path.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, smoothing: f64) -> Tensor<2> {
    let v = logits.dims()[2];
    let ids: Option<Vec<usize>> = targets
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .ok()
        .and_then(|t| {
            t.into_iter()
                .map(|y| usize::try_from(y).ok().filter(|&y| y < v))
                .collect()
        });
    let Some(ids) = ids else {
        return cross_entropy_plain(logits, targets, smoothing);
    };
    let eps = smoothing as f32;
    match lane(logits) {
        Lane::Plain(x) => back::<2>(Lane::Plain(xent_forward(&dense(x), &ids, eps).0)),
        Lane::Tracked(x, ctx) => {
            let out = record(XentBackward, [x.node()], |keep| {
                let x = dense(x.primitive().clone());
                let (loss, lse) = xent_forward(&x, &ids, eps);
                let state = keep.then(|| XentState {
                    logits: x,
                    targets: Arc::new(ids),
                    lse: Arc::new(lse),
                    smoothing: eps,
                });
                (loss, state)
            });
            back::<2>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => cross_entropy_plain(x, targets, smoothing),
    }
}

/// The plain Burn path of [`cross_entropy`].
pub fn cross_entropy_plain(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    smoothing: f64,
) -> Tensor<2> {
    let [b, s, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    let nll = logp.clone().gather(2, targets.unsqueeze_dim::<3>(2)).neg();
    let loss = if smoothing > 0.0 {
        let smooth = logp.mean_dim(2).neg();
        nll.mul_scalar(1.0 - smoothing) + smooth.mul_scalar(smoothing)
    } else {
        nll
    };
    loss.reshape([b, s])
}
