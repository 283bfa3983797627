//! ReLU, GELU (the exact erf form) and tanh, each with its fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, values_mut, Lane};
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
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = dense(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let s = ops.state;
            // In place in the output's gradient (copied first only if something shares it).
            k::act_backward(self.0, values(&s), values_mut(&mut g));
            kernel(self.0).ran_backward();
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// `a(x)`, in x's own storage when nothing else holds it (no allocation), else in a new one.
fn act_forward(a: k::Act, mut x: FlexTensor) -> FlexTensor {
    kernel(a).ran();
    if x.is_unique() {
        k::act_in_place(a, values_mut(&mut x));
        return x;
    }
    tensor(k::act(a, values(&x)), shape_of(&x))
}

fn act<const D: usize>(a: k::Act, x: Tensor<D>) -> Tensor<D> {
    match lane(x) {
        Lane::Plain(x) => back::<D>(Lane::Plain(act_forward(a, dense(x)))),
        Lane::Tracked(x, ctx) => {
            let node = x.node();
            let out = record(ActBackward(a), [node], |keep| {
                let xs = dense(x.into_primitive());
                match keep {
                    false => (act_forward(a, xs), None),
                    true => (act_forward(a, xs.clone()), Some(xs)),
                }
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
