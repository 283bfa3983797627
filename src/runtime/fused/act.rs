//! ReLU, GELU (the exact erf form) and tanh, each with its fused backward pass.

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

fn kernel(a: k::Act) -> Kernel {
    match a {
        k::Act::Relu => Kernel::Relu,
        k::Act::Gelu => Kernel::Gelu,
        k::Act::Tanh => Kernel::Tanh,
    }
}

#[derive(Debug)]
struct ActBackward(k::Act);

impl Backward<Flex, 1> for ActBackward {
    /// The output for ReLU and tanh, the input for GELU (see [`k::Act::backward_reads_output`]).
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let s = ops.state;
            let mut dx = vec![0.0f32; values(&s).len()];
            k::act_backward(self.0, values(&s), values(&g), &mut dx);
            kernel(self.0).ran_backward();
            grads.register::<Flex>(node.id, tensor(dx, shape_of(&s)));
        }
    }
}

fn act_forward(a: k::Act, x: &FlexTensor) -> FlexTensor {
    let mut y = vec![0.0f32; values(x).len()];
    k::act(a, values(x), &mut y);
    kernel(a).ran();
    tensor(y, shape_of(x))
}

fn act<const D: usize>(a: k::Act, x: Tensor<D>) -> Tensor<D> {
    match lane(x) {
        Lane::Plain(x) => back::<D>(Lane::Plain(act_forward(a, &dense(x)))),
        Lane::Tracked(x, ctx) => {
            let out = record(ActBackward(a), [x.node()], |keep| {
                let xs = dense(x.primitive().clone());
                let y = act_forward(a, &xs);
                let state = match keep {
                    false => None,
                    true if a.backward_reads_output() => Some(y.clone()),
                    true => Some(xs),
                };
                (y, state)
            });
            back::<D>(Lane::Tracked(out, ctx))
        }
        Lane::Other(x) => match a {
            k::Act::Relu => activation::relu(x),
            k::Act::Gelu => activation::gelu(x),
            k::Act::Tanh => x.tanh(),
        },
    }
}

/// ReLU, `max(x, 0)`, elementwise.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    act(k::Act::Relu, x)
}

/// GELU in its exact form, `x · Φ(x)` = `x/2 · (1 + erf(x/√2))`, elementwise.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    act(k::Act::Gelu, x)
}

/// `tanh x`, elementwise (the tensor op; [`super::tanh`] is the scalar function).
pub fn tanh_tensor<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    act(k::Act::Tanh, x)
}
