//! SiLU, `x · sigmoid(x)`, with its fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

#[derive(Debug)]
struct SiluBackward;

impl Backward<Flex, 1> for SiluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let x = ops.state;
            let mut dx = vec![0.0f32; values(&x).len()];
            k::silu_backward(values(&x), values(&g), &mut dx);
            Kernel::Silu.ran_backward();
            grads.register::<Flex>(node.id, tensor(dx, shape_of(&x)));
        }
    }
}

fn silu_forward(x: &FlexTensor) -> FlexTensor {
    let mut y = vec![0.0f32; values(x).len()];
    k::silu(values(x), &mut y);
    Kernel::Silu.ran();
    tensor(y, shape_of(x))
}

/// SiLU, `x · sigmoid(x)`, elementwise.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match lane(x) {
        Lane::Plain(x) => back::<D>(Lane::Plain(silu_forward(&dense(x)))),
        Lane::Tracked(x, ctx) => {
            let out = record(SiluBackward, [x.node()], |keep| {
                let xs = dense(x.primitive().clone());
                (silu_forward(&xs), keep.then_some(xs))
            });
            back::<D>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => activation::silu(x),
    }
}
