//! xLSTM's mLSTM cells (the kernel's chunkwise form; the plain path's parallel form), with
//! their fused backward pass.

use crate::runtime::consts::{future_mask, Consts};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;

use super::lane::{back, dense, lane, record, shape_of, tensor, values, Lane};
use super::Kernel;

#[derive(Debug)]
struct MlstmBackward;

/// What the mLSTM's backward pass keeps: q, k, v, ĩ, ln f (it recomputes the rest).
#[derive(Clone, Debug)]
struct MlstmKept {
    ins: [FlexTensor; 5],
    sh: k::MlstmShape,
}

impl Backward<Flex, 5> for MlstmBackward {
    type State = MlstmKept;

    fn backward(self, ops: Ops<MlstmKept, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let v = st.ins.each_ref().map(values);
        let g = k::mlstm_backward((v[0], v[1], v[2]), (v[3], v[4]), st.sh, values(&gy));
        Kernel::Mlstm.ran_backward();
        for ((parent, grad), like) in ops.parents.into_iter().zip(g).zip(&st.ins) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, shape_of(like)));
            }
        }
    }
}

/// Runs the mLSTM kernel; returns h `[b, s, d]` and the final C, n, m.
fn mlstm_forward(ins: &[FlexTensor; 5]) -> (FlexTensor, [FlexTensor; 3], k::MlstmShape) {
    let qs = shape_of(&ins[0]);
    let sh = k::MlstmShape {
        batch: qs[0],
        heads: qs[1],
        len: qs[2],
        head_dim: qs[3],
    };
    let (b, nh, s, w) = (sh.batch, sh.heads, sh.len, sh.head_dim);
    let v = ins.each_ref().map(values);
    let mut y = vec![0.0f32; b * s * nh * w];
    let (mut c, mut n, mut m) = (
        vec![0.0f32; b * nh * w * w],
        vec![0.0f32; b * nh * w],
        vec![0.0f32; b * nh],
    );
    k::mlstm(
        (v[0], v[1], v[2]),
        (v[3], v[4]),
        sh,
        &mut y,
        (&mut c, &mut n, &mut m),
    );
    Kernel::Mlstm.ran();
    let fin = [
        tensor(c, vec![b, nh, w, w]),
        tensor(n, vec![b, nh, 1, w]),
        tensor(m, vec![b, nh, 1, 1]),
    ];
    (tensor(y, vec![b, s, nh * w]), fin, sh)
}

/// xLSTM's mLSTM cells from a zero memory: q, k, v `[b, H, s, dh]` (k already scaled by
/// 1/√dh), the input gate pre-activations ĩ and ln f (ln σ of the forget gate's) `[b, H, s]`.
/// Returns every h merged over the heads `[b, s, d]` and the memory after the last position
/// (C `[b, H, dh, dh]`, n `[b, H, 1, dh]`, m `[b, H, 1, 1]`, without gradients: only decoding
/// reads them). One fused op per (batch row, head) forward and backward, in the chunkwise form
/// (chunks of [`k::MLSTM_CHUNK`] positions; the backward pass keeps only the memory entering
/// each chunk and recomputes the chunk's blocks), so memory is linear in s. Equal to
/// [`mlstm_plain`] (the stabilized parallel form) from no initial state with a plain product
/// (which takes its causal mask from `masks`, the runtime's tables, where given).
pub fn mlstm(
    qkv: [Tensor<4>; 3],
    gates: [Tensor<3>; 2],
    masks: Option<&Consts>,
) -> (Tensor<3>, [Tensor<4>; 3]) {
    let plain = |qkv, gates| mlstm_plain(qkv, gates, None, masks, |a, b| a.matmul(b));
    let [q, k, v] = qkv;
    let [ig, logf] = gates;
    let lanes = ([q, k, v].map(lane), [ig, logf].map(lane));
    let fin_tensors = |fin: [FlexTensor; 3]| fin.map(|t| back::<4>(Lane::Plain(t)));
    match lanes {
        ([Lane::Plain(q), Lane::Plain(k), Lane::Plain(v)], [Lane::Plain(ig), Lane::Plain(lf)]) => {
            let ins = [q, k, v, ig, lf].map(dense);
            let (y, fin, _) = mlstm_forward(&ins);
            (back::<3>(Lane::Plain(y)), fin_tensors(fin))
        }
        (
            [Lane::Tracked(q, ctx), Lane::Tracked(k, _), Lane::Tracked(v, _)],
            [Lane::Tracked(ig, _), Lane::Tracked(lf, _)],
        ) => {
            let tracked = [q, k, v, ig, lf];
            let mut fin = None;
            let out = record(
                MlstmBackward,
                tracked.each_ref().map(|t| t.node()),
                |keep| {
                    let ins = tracked.each_ref().map(|t| dense(t.primitive().clone()));
                    let (y, f, sh) = mlstm_forward(&ins);
                    fin = Some(f);
                    (y, keep.then_some(MlstmKept { ins, sh }))
                },
            );
            let fin = fin_tensors(fin.expect("the cells ran")).map(|t| t.autodiff());
            (back::<3>(Lane::Tracked(out, ctx)), fin)
        }
        ([q, k, v], [ig, lf]) => plain([q, k, v].map(back), [ig, lf].map(back)),
    }
}

/// The plain Burn path of [`mlstm`], continuing from `init` (C, n, m; a zero memory when
/// `None`), with `mm` for the products (the runtime passes its mixed-precision product) and the
/// causal mask from `masks` (the runtime's tables) where given.
/// F_t = Σ_{u≤t} ln f_u; position t weighs the carried memory by e^{F_t + m₀} and position
/// s ≤ t by e^{F_t − F_s + ĩ_s}, all divided by e^{m_t} where m_t is the largest of these
/// exponents, so nothing overflows; m_t cancels in the result, so it is held constant for the
/// gradient.
pub fn mlstm_plain(
    [q, k, v]: [Tensor<4>; 3],
    [ig, logf]: [Tensor<3>; 2],
    init: Option<[Tensor<4>; 3]>,
    masks: Option<&Consts>,
    mm: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> (Tensor<3>, [Tensor<4>; 3]) {
    let [b, h, s, dh] = q.dims();
    let device = q.device();
    let ig = ig.unsqueeze_dim::<4>(3); // [b, H, s, 1]
    let f_cum = logf.cumsum(2).unsqueeze_dim::<4>(3);
    let [c0, n0, m0] = init.unwrap_or_else(|| {
        [
            Tensor::zeros([b, h, dh, dh], &device),
            Tensor::zeros([b, h, 1, dh], &device),
            Tensor::zeros([b, h, 1, 1], &device),
        ]
    });
    let a = f_cum.clone() + m0;
    let future = future_mask(masks, s, s, 0, &device);
    let logd = (f_cum.clone() - (f_cum - ig).swap_dims(2, 3)).mask_fill(
        future.unsqueeze::<4>().expand([b, h, s, s]),
        f32::NEG_INFINITY,
    );
    let m = a.clone().max_pair(logd.clone().max_dim(3)).detach();
    let dmat = (logd.clone() - m.clone()).exp();
    let scores = mm(q.clone(), k.clone().swap_dims(2, 3)) * dmat;
    let wa = (a.clone() - m.clone()).exp();
    let num =
        mm(scores.clone(), v.clone()) + wa.clone() * mm(q.clone(), c0.clone().swap_dims(2, 3));
    let den = scores.sum_dim(3) + wa * (q * n0.clone()).sum_dim(3);
    let hid = num / den.abs().max_pair(m.clone().neg().exp());
    let hcat = hid.swap_dims(1, 2).reshape([b, s, h * dh]);
    // The memory after the last position.
    let last = |t: Tensor<4>| t.narrow(2, s - 1, 1);
    let (a_l, m_l) = (last(a), last(m));
    let w = (last(logd) - m_l.clone()).exp(); // [b, H, 1, s]
    let carry = (a_l - m_l.clone()).exp();
    let c_new = carry.clone() * c0 + mm((v * w.clone().swap_dims(2, 3)).swap_dims(2, 3), k.clone());
    let n_new = carry * n0 + mm(w, k);
    (hcat, [c_new, n_new, m_l])
}
