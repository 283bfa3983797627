//! xLSTM's sLSTM recurrence, with its fused backward pass through time.

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
struct SlstmBackward;

/// What the sLSTM's backward pass keeps: r, the initial c, n and h, the kernel's per-position
/// values and every output.
#[derive(Clone, Debug)]
struct SlstmKept {
    r: FlexTensor,
    init: Arc<[Vec<f32>; 3]>,
    kept: Arc<Vec<f32>>,
    y: FlexTensor,
    sh: k::SlstmShape,
}

impl Backward<Flex, 2> for SlstmBackward {
    type State = SlstmKept;

    fn backward(self, ops: Ops<SlstmKept, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let [c0, n0, h0] = &*st.init;
        let [dxw, dr] = k::slstm_backward(
            values(&st.r),
            st.sh,
            (c0, n0, h0),
            (&st.kept, values(&st.y)),
            values(&gy),
        );
        Kernel::Slstm.ran_backward();
        let k::SlstmShape {
            batch,
            len,
            heads,
            head_dim,
        } = st.sh;
        let [pxw, pr] = ops.parents;
        if let Some(node) = pxw {
            let shape = vec![batch, len, 4 * heads * head_dim];
            grads.register::<Flex>(node.id, tensor(dxw, shape));
        }
        if let Some(node) = pr {
            grads.register::<Flex>(node.id, tensor(dr, shape_of(&st.r)));
        }
    }
}

/// Runs the sLSTM kernel from the state `init` (c, n, m, h as `[b, H, dh]` values); returns
/// y, the final state and (when `keep`) the kernel's kept values.
fn slstm_forward(
    xw: &FlexTensor,
    r: &FlexTensor,
    init: &[Vec<f32>; 4],
    keep: bool,
) -> (FlexTensor, [Vec<f32>; 4], Vec<f32>, k::SlstmShape) {
    let (xs, rs) = (shape_of(xw), shape_of(r));
    let sh = k::SlstmShape {
        batch: xs[0],
        len: xs[1],
        heads: rs[0],
        head_dim: rs[1],
    };
    let d = sh.heads * sh.head_dim;
    let mut st = init.clone();
    let mut y = vec![0.0f32; sh.batch * sh.len * d];
    let mut kept = if keep {
        vec![0.0f32; sh.batch * sh.len * d * 7]
    } else {
        Vec::new()
    };
    let [c, n, m, h] = &mut st;
    k::slstm(
        values(xw),
        values(r),
        sh,
        [c, n, m, h],
        &mut y,
        keep.then_some(&mut kept[..]),
    );
    Kernel::Slstm.ran();
    (tensor(y, vec![sh.batch, sh.len, d]), st, kept, sh)
}

/// xLSTM's sLSTM recurrence over the input pre-activations `xw` `[b, s, 4d]` (projection plus
/// bias; gate-major: z̃, ĩ, f̃, õ, each `[heads, dh]`) with the block-diagonal recurrent
/// weights `r` `[heads, dh, 4 dh]`, from `state` (c, n, m, h, each `[b, heads, 1, dh]`): see
/// `kiln_kernels::slstm` for the arithmetic (the paper's stabilized form). Returns every h
/// `[b, s, d]` and the final state. One fused op forward (per block of batch rows in parallel)
/// and one backward pass through time. The initial state is a constant (one that requires a
/// gradient takes the plain path); of the final state only h carries a gradient (it is y's
/// last position). Equal to [`slstm_plain`] with a plain product.
pub fn slstm(xw: Tensor<3>, r: Tensor<3>, state: [Tensor<4>; 4]) -> (Tensor<3>, [Tensor<4>; 4]) {
    let plain = |xw, r, state| slstm_plain(xw, r, state, |a, b| a.matmul(b));
    let Some(init) = state
        .iter()
        .map(|t| constant_values(t).map(|v| values(&v).to_vec()))
        .collect::<Option<Vec<_>>>()
    else {
        return plain(xw, r, state);
    };
    let init: [Vec<f32>; 4] = init.try_into().expect("four state tensors");
    let [b, s, _] = xw.dims();
    let [nh, dh, _] = r.dims();
    let st_tensor = |v: Vec<f32>| back::<4>(Lane::Plain(tensor(v, vec![b, nh, 1, dh])));
    match (lane(xw), lane(r)) {
        (Lane::Plain(xw), Lane::Plain(r)) => {
            let (y, st, _, _) = slstm_forward(&dense(xw), &dense(r), &init, false);
            (back::<3>(Lane::Plain(y)), st.map(st_tensor))
        }
        (Lane::Tracked(xw, ctx), Lane::Tracked(r, _)) => {
            let mut fin = None;
            let nodes = [xw.node(), r.node()];
            let out = record(SlstmBackward, nodes, |keep| {
                let (xw, r) = (dense(xw.primitive().clone()), dense(r.primitive().clone()));
                let (y, st, kept, sh) = slstm_forward(&xw, &r, &init, keep);
                fin = Some(st);
                let [c0, n0, _, h0] = init.clone();
                let kept = keep.then(|| SlstmKept {
                    r,
                    init: Arc::new([c0, n0, h0]),
                    kept: Arc::new(kept),
                    y: y.clone(),
                    sh,
                });
                (y, kept)
            });
            let y = back::<3>(Lane::Tracked(out, ctx));
            let [c, n, m, _] = fin
                .expect("the recurrence ran")
                .map(|v| st_tensor(v).autodiff());
            let h = y.clone().narrow(1, s - 1, 1).reshape([b, nh, 1, dh]);
            (y, [c, n, m, h])
        }
        (xw, r) => plain(back(xw), back(r), state),
    }
}

/// The plain Burn path of [`slstm`], position by position, with `mm` for the recurrent product
/// (the runtime passes its mixed-precision product).
pub fn slstm_plain(
    xw: Tensor<3>,
    r: Tensor<3>,
    state: [Tensor<4>; 4],
    mm: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> (Tensor<3>, [Tensor<4>; 4]) {
    let [b, s, d4] = xw.dims();
    let [h, dh, _] = r.dims();
    let d = d4 / 4;
    // Per step [b, H, 1, 4·dh] with gate g of head hd at g·dh + j (r's column order).
    let pre_x = xw
        .reshape([b, s, 4, h, dh])
        .permute([0, 3, 1, 2, 4])
        .reshape([b, h, s, 4 * dh]);
    let r = r.unsqueeze::<4>(); // [1, H, dh, 4dh]
    let mut st = state;
    let mut ys = Vec::with_capacity(s);
    for t in 0..s {
        let [c, n, m, hp] = st;
        let pre = pre_x.clone().narrow(2, t, 1) + mm(hp, r.clone());
        let gate = |g: usize| pre.clone().narrow(3, g * dh, dh);
        let (z, i_pre, logf, o) = (
            gate(0).tanh(),
            gate(1),
            activation::log_sigmoid(gate(2)),
            activation::sigmoid(gate(3)),
        );
        let m_new = (logf.clone() + m.clone()).max_pair(i_pre.clone());
        let i = (i_pre - m_new.clone()).exp();
        let f = (logf + m - m_new.clone()).exp();
        let c = f.clone() * c + i.clone() * z;
        let n = f * n + i;
        let hn = o * c.clone() / n.clone();
        ys.push(hn.clone());
        st = [c, n, m_new, hn];
    }
    let y = Tensor::cat(ys, 2).swap_dims(1, 2).reshape([b, s, d]);
    (y, st)
}
