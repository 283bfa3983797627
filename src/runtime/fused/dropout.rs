//! Dropout with a counter-based mask (see [`kiln_kernels::Dropout`]): whether element i is kept
//! is a hash of the op's key and i, computed in the forward kernel and again in the backward
//! pass, so that no mask is stored.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, values_mut, Lane};
use super::Kernel;

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// The mask's key and probability: the backward pass regenerates it.
    type State = k::Dropout;

    fn backward(self, ops: Ops<k::Dropout, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            // In place in the output's gradient (copied first only if something shares it).
            k::dropout_in_place(&ops.state, values_mut(&mut g));
            Kernel::Dropout.ran_backward();
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// `x · mask / (1 − p)` by the kernel, in x's own storage when nothing else holds it (the
/// backward pass needs only the key, so the input is free to overwrite).
fn apply(d: &k::Dropout, mut x: FlexTensor) -> FlexTensor {
    if x.is_unique() {
        k::dropout_in_place(d, values_mut(&mut x));
        return x;
    }
    tensor(k::dropout(d, values(&x)), shape_of(&x))
}

/// Dropout of `x` with probability `p` (in [0, 1]) by the mask of `key`: element i (in
/// row-major order) is kept, and scaled by `1 / (1 − p)`, exactly when
/// [`kiln_kernels::Dropout::keeps`] says so. The same `(key, p)` and shape give the same mask;
/// [`dropout_plain`] applies it by plain tensor ops.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64, key: u64) -> Tensor<D> {
    let d = k::Dropout::new(key, p);
    match lane(x) {
        Lane::Plain(x) => {
            let y = apply(&d, dense(x));
            Kernel::Dropout.ran();
            back::<D>(Lane::Plain(y))
        }
        Lane::Tracked(x, ctx) => {
            let node = x.node();
            let out = record(DropoutBackward, [node], |keep| {
                let y = apply(&d, dense(x.into_primitive()));
                Kernel::Dropout.ran();
                (y, keep.then_some(d))
            });
            back::<D>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => dropout_plain(x, p, key),
    }
}

/// The mask of [`dropout`] as a tensor of x's shape on x's device, 1 where kept and 0 where
/// dropped.
pub fn dropout_mask<const D: usize>(x: &Tensor<D>, p: f64, key: u64) -> Tensor<D> {
    let mut m = vec![0.0f32; x.shape().num_elements()];
    k::dropout_mask(&k::Dropout::new(key, p), &mut m);
    Tensor::from_data(TensorData::new(m, x.shape()), &x.device())
}

/// [`dropout`] by plain tensor ops (any backend): `x · mask · (1 / (1 − p))`.
pub fn dropout_plain<const D: usize>(x: Tensor<D>, p: f64, key: u64) -> Tensor<D> {
    let mask = dropout_mask(&x, p, key);
    (x * mask).mul_scalar(k::Dropout::new(key, p).scale)
}
