//! ETSformer's exponential smoothing, with its fused backward pass through time.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::conv::causal_conv_plain;
use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

#[derive(Debug)]
struct SmoothBackward;

/// What the smoothing's backward pass keeps: v, the logits, the initial state, the output.
#[derive(Clone, Debug)]
struct SmoothKept {
    ins: [FlexTensor; 3],
    es: FlexTensor,
    sh: k::SmoothShape,
}

impl Backward<Flex, 3> for SmoothBackward {
    type State = SmoothKept;

    fn backward(self, ops: Ops<SmoothKept, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let [v, a, init] = st.ins.each_ref().map(values);
        let grad = k::smooth_backward(v, a, init, st.sh, values(&st.es), values(&g));
        Kernel::Smooth.ran_backward();
        for ((parent, grad), like) in ops.parents.into_iter().zip(grad).zip(&st.ins) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, shape_of(like)));
            }
        }
    }
}

fn smooth_forward(ins: &[FlexTensor; 3]) -> (FlexTensor, k::SmoothShape) {
    let vs = shape_of(&ins[0]);
    let sh = k::SmoothShape {
        batch: vs[0],
        len: vs[1],
        channels: vs[2],
    };
    let mut es = vec![0.0f32; ins[0].layout().num_elements()];
    let [v, a, init] = ins.each_ref().map(values);
    k::smooth(v, a, init, sh, &mut es);
    Kernel::Smooth.ran();
    (tensor(es, vs), sh)
}

/// Exponential smoothing per channel c with the rate α_c = σ(a_c) of the logits `a` `[d]`:
/// `es_t = (1 − α) ⊙ es_{t−1} + α ⊙ v_t` over `v` `[b, s, d]` from `es_{−1} = init` `[b, d]`;
/// returns every es `[b, s, d]` (its last position is the state a next call continues from).
/// One fused op forward (per block of batch rows in parallel) and one backward pass through
/// time giving the gradients of v, the logits and the initial state, in memory linear in the
/// length. Equal to [`smooth_plain`].
pub fn smooth(v: Tensor<3>, a: Tensor<1>, init: Tensor<2>) -> Tensor<3> {
    let [b, _, d] = v.dims();
    if a.dims() != [d] || init.dims() != [b, d] {
        return smooth_plain(v, a, init);
    }
    match (lane(v.clone()), lane(a.clone()), lane(init.clone())) {
        (Lane::Plain(v), Lane::Plain(a), Lane::Plain(init)) => {
            let ins = [v, a, init].map(dense);
            back::<3>(Lane::Plain(smooth_forward(&ins).0))
        }
        (Lane::Tracked(v, ctx), Lane::Tracked(a, _), Lane::Tracked(init, _)) => {
            let nodes = [v.node(), a.node(), init.node()];
            let out = record(SmoothBackward, nodes, |keep| {
                let ins = [v, a, init].map(|t| dense(t.into_primitive()));
                let (es, sh) = smooth_forward(&ins);
                let kept = keep.then(|| SmoothKept {
                    ins,
                    es: es.clone(),
                    sh,
                });
                (es, kept)
            });
            back::<3>(Lane::Tracked(out, ctx))
        }
        _ => smooth_plain(v, a, init),
    }
}

/// The plain Burn path of [`smooth`]: the closed form
/// es_t = (1 − α)^{t+1} es_{−1} + Σ_{j≤t} α (1 − α)^j v_{t−j}, a causal convolution of v with
/// the kernel α (1 − α)^j (by [`causal_conv_plain`]: a dense matrix or an FFT) plus the decayed
/// initial state.
pub fn smooth_plain(v: Tensor<3>, a: Tensor<1>, init: Tensor<2>) -> Tensor<3> {
    let [_, s, d] = v.dims();
    let a = a.reshape([1, d]);
    // Per channel: ln α and ln(1 − α), [1, d].
    let (ln_a, ln_1a) = (
        activation::log_sigmoid(a.clone()),
        activation::log_sigmoid(a.neg()),
    );
    let j: Tensor<2> = Tensor::from_data(
        TensorData::new((0..s).map(|j| j as f32).collect::<Vec<_>>(), [s, 1]),
        &v.device(),
    );
    let kernel = (j.clone() * ln_1a.clone() + ln_a).exp();
    let decay = ((j + 1.0) * ln_1a).exp(); // (1 − α)^{t+1}, [s, d]
    causal_conv_plain(v, kernel) + decay.unsqueeze::<3>() * init.unsqueeze_dim::<3>(1)
}
