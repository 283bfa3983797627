//! Linear maps `x · w (+ bias)`, with their fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

/// The backward pass of a linear map with N inputs: x, w, and the bias when N = 3.
#[derive(Debug)]
struct LinearBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LinearBackward<N> {
    /// x `[n, i]`, w `[i, o]`, the shape of x.
    type State = (FlexTensor, FlexTensor, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let (x, w, x_shape) = ops.state;
        let (ws, n) = (shape_of(&w), values(&x).len() / shape_of(&w)[0].max(1));
        let want = [0, 1, 2].map(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let [dx, dw, db] =
            k::linear_backward(values(&x), values(&w), values(&g), (n, ws[0], ws[1]), want);
        Kernel::Linear.ran_backward();
        let grads_of = [
            dx.map(|d| tensor(d, x_shape)),
            dw.map(|d| tensor(d, ws.clone())),
            db.map(|d| tensor(d, vec![ws[1]])),
        ];
        for (parent, grad) in ops.parents.into_iter().zip(grads_of) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `x [b, s, i] · w [i, o] (+ bias [o])` as one `[b·s, i] × [i, o]` product into a buffer that
/// is not zeroed first, the bias folded into the product, and a backward pass of two products
/// that read the transposes in place (no transposed copies).
fn linear_forward(x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let (xs, ws) = (shape_of(x), shape_of(w));
    let (i, o) = (ws[0], ws[1]);
    let n = values(x).len() / i.max(1);
    let y = k::linear(values(x), values(w), bias.map(values), n, i, o);
    Kernel::Linear.ran();
    let mut shape = xs;
    *shape.last_mut().expect("x has an axis") = o;
    tensor(y, shape)
}

fn linear_tracked<const N: usize>(
    ins: [FloatTensor<Autodiff<Flex>>; N],
) -> FloatTensor<Autodiff<Flex>> {
    record(
        LinearBackward::<N>,
        ins.each_ref().map(|t| t.node()),
        |keep| {
            let ins = ins.each_ref().map(|t| dense(t.primitive().clone()));
            let (x, w) = (&ins[0], &ins[1]);
            let y = linear_forward(x, w, ins.get(2));
            (y, keep.then(|| (x.clone(), w.clone(), shape_of(x))))
        },
    )
}

/// A linear map `x [b, s, i] · w [i, o] (+ bias [o])`.
pub fn linear(x: Tensor<3>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let bias = bias.map(lane);
    match (lane(x), lane(w), bias) {
        (Lane::Plain(x), Lane::Plain(w), None) => {
            back::<3>(Lane::Plain(linear_forward(&dense(x), &dense(w), None)))
        }
        (Lane::Plain(x), Lane::Plain(w), Some(Lane::Plain(b))) => {
            let b = dense(b);
            back::<3>(Lane::Plain(linear_forward(&dense(x), &dense(w), Some(&b))))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), None) => {
            back::<3>(Lane::Tracked(linear_tracked([x, w]), ctx))
        }
        (Lane::Tracked(x, ctx), Lane::Tracked(w, _), Some(Lane::Tracked(b, _))) => {
            back::<3>(Lane::Tracked(linear_tracked([x, w, b]), ctx))
        }
        (x, w, b) => linear_plain(back(x), back(w), b.map(back)),
    }
}

/// The plain Burn path of [`linear`].
pub fn linear_plain(x: Tensor<3>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let [b, s, i] = x.dims();
    let o = w.dims()[1];
    let y = x.reshape([b * s, i]).matmul(w).reshape([b, s, o]);
    match bias {
        Some(bias) => y + bias.unsqueeze::<3>(),
        None => y,
    }
}
