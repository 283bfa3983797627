//! The LSTM recurrence, with its fused backward pass through time.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{back, constant_values, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

#[derive(Debug)]
struct LstmBackward;

/// What the LSTM's backward pass keeps: w_hh, the initial state, the gate activations, every
/// cell and every output.
#[derive(Clone, Debug)]
struct LstmKept {
    w_hh: FlexTensor,
    h0: FlexTensor,
    c0: FlexTensor,
    acts: Arc<Vec<f32>>,
    cells: Arc<Vec<f32>>,
    y: FlexTensor,
    sh: k::LstmShape,
}

impl Backward<Flex, 2> for LstmBackward {
    type State = LstmKept;

    fn backward(self, ops: Ops<LstmKept, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let kept = (&st.acts[..], &st.cells[..], values(&st.y));
        let [dxw, dw] = k::lstm_backward(
            values(&st.w_hh),
            st.sh,
            (values(&st.h0), values(&st.c0)),
            kept,
            values(&gy),
        );
        Kernel::Lstm.ran_backward();
        let [pxw, pw] = ops.parents;
        let (b, s, w) = (st.sh.batch, st.sh.len, st.sh.hidden);
        if let Some(node) = pxw {
            grads.register::<Flex>(node.id, tensor(dxw, vec![b, s, 4 * w]));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, tensor(dw, vec![w, 4 * w]));
        }
    }
}

/// What one run of the LSTM kernel gives: y, the final h and c, and (when kept) the gate
/// activations and cells.
struct LstmRun {
    y: FlexTensor,
    h: FlexTensor,
    c: FlexTensor,
    acts: Vec<f32>,
    cells: Vec<f32>,
}

fn lstm_forward(
    xw: &FlexTensor,
    w_hh: &FlexTensor,
    h0: &[f32],
    c0: &[f32],
    keep: bool,
) -> (LstmRun, k::LstmShape) {
    let xs = shape_of(xw);
    let sh = k::LstmShape {
        batch: xs[0],
        len: xs[1],
        hidden: xs[2] / 4,
    };
    let (b, s, w) = (sh.batch, sh.len, sh.hidden);
    let (mut h, mut c) = (h0.to_vec(), c0.to_vec());
    let mut y = vec![0.0f32; b * s * w];
    let (mut acts, mut cells) = if keep {
        (vec![0.0f32; b * s * 4 * w], vec![0.0f32; b * s * w])
    } else {
        (Vec::new(), Vec::new())
    };
    k::lstm(
        values(xw),
        values(w_hh),
        sh,
        (&mut h, &mut c),
        &mut y,
        keep.then_some((&mut acts[..], &mut cells[..])),
    );
    Kernel::Lstm.ran();
    let run = LstmRun {
        y: tensor(y, vec![b, s, w]),
        h: tensor(h, vec![b, w]),
        c: tensor(c, vec![b, w]),
        acts,
        cells,
    };
    (run, sh)
}

/// The LSTM recurrence over the gate pre-activations of the input `xw` `[b, s, 4h]` (input
/// projection plus both biases; gates i, f, g, o) with the recurrent weight `w_hh` `[h, 4h]`,
/// from the state `(h0, c0)` `[b, h]`: per position `gates = xw_t + h · w_hh`,
/// `c ← σ(f) c + σ(i) tanh(g)`, `h ← σ(o) tanh(c)`. Returns every h `[b, s, h]` and the final
/// `(h, c)`. One fused op forward (per block of batch rows in parallel, one small product per
/// position) and one backward pass through time. The initial state is a constant (one that
/// requires a gradient takes the plain path); the final c carries no gradient (it only feeds
/// the next decoding call, which runs without autodiff), the final h is y's last position.
/// Equal to [`lstm_plain`] with a plain product.
pub fn lstm(
    xw: Tensor<3>,
    w_hh: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> (Tensor<3>, Tensor<2>, Tensor<2>) {
    let plain = |xw, w_hh, h0, c0| lstm_plain(xw, w_hh, h0, c0, |a, b| a.matmul(b));
    let (Some(h0v), Some(c0v)) = (constant_values(&h0), constant_values(&c0)) else {
        return plain(xw, w_hh, h0, c0);
    };
    let [b, s, _] = xw.dims();
    match (lane(xw), lane(w_hh)) {
        (Lane::Plain(xw), Lane::Plain(w_hh)) => {
            let (run, _) =
                lstm_forward(&dense(xw), &dense(w_hh), values(&h0v), values(&c0v), false);
            let y = back::<3>(Lane::Plain(run.y));
            (
                y,
                back::<2>(Lane::Plain(run.h)),
                back::<2>(Lane::Plain(run.c)),
            )
        }
        (Lane::Tracked(xw, ctx), Lane::Tracked(w_hh, _)) => {
            let mut c_final = None;
            let nodes = [xw.node(), w_hh.node()];
            let out = record(LstmBackward, nodes, |keep| {
                let (xw, w_hh) = (
                    dense(xw.primitive().clone()),
                    dense(w_hh.primitive().clone()),
                );
                let (run, sh) = lstm_forward(&xw, &w_hh, values(&h0v), values(&c0v), keep);
                c_final = Some(run.c);
                let kept = keep.then(|| LstmKept {
                    w_hh,
                    h0: h0v.clone(),
                    c0: c0v.clone(),
                    acts: Arc::new(run.acts),
                    cells: Arc::new(run.cells),
                    y: run.y.clone(),
                    sh,
                });
                (run.y, kept)
            });
            let y = back::<3>(Lane::Tracked(out, ctx));
            let h = y.clone().narrow(1, s - 1, 1).reshape([b, y.dims()[2]]);
            let c = back::<2>(Lane::Plain(c_final.expect("the recurrence ran"))).autodiff();
            (y, h, c)
        }
        (xw, w_hh) => plain(back(xw), back(w_hh), h0, c0),
    }
}

/// The plain Burn path of [`lstm`], position by position, with `mm` for the recurrent product
/// (the runtime passes its mixed-precision product).
pub fn lstm_plain(
    xw: Tensor<3>,
    w_hh: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
    mm: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> (Tensor<3>, Tensor<2>, Tensor<2>) {
    let [b, s, g] = xw.dims();
    let h = g / 4;
    let (mut hs, mut cs) = (h0, c0);
    let mut outs = Vec::with_capacity(s);
    for t in 0..s {
        let gates = xw.clone().narrow(1, t, 1).reshape([b, 4 * h]) + mm(hs, w_hh.clone());
        let i = activation::sigmoid(gates.clone().narrow(1, 0, h));
        let f = activation::sigmoid(gates.clone().narrow(1, h, h));
        let gg = gates.clone().narrow(1, 2 * h, h).tanh();
        let o = activation::sigmoid(gates.narrow(1, 3 * h, h));
        cs = f * cs + i * gg;
        hs = o * cs.clone().tanh();
        outs.push(hs.clone());
    }
    (Tensor::stack(outs, 1), hs, cs)
}
