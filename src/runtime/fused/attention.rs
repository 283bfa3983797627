//! Attention `softmax(scale · q kᵀ) v` with grouped KV heads and a causal limit, with its
//! fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use crate::runtime::consts::Consts;

use super::dropout::dropout_plain;
use super::lane::{back, heads_view, lane, record, shape_of, values_len, view, viewable, Lane};
use super::softmax::softmax_plain;
use super::{Kernel, Visible};

#[derive(Debug)]
struct AttentionBackward;

/// What the backward pass of attention keeps.
#[derive(Clone, Debug)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    /// Each row's softmax statistics (the probabilities are computed again from them).
    stats: Arc<Vec<f32>>,
    sh: k::AttnShape,
    scale: f32,
    vis: Visible,
    /// The dropout of the probabilities (its mask is computed again from the key).
    drop: Option<k::Dropout>,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttnState;

    fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let go = viewable(grads.consume::<Flex>(&ops.node));
        let [pq, pk, pv] = ops.parents;
        let st = ops.state;
        let sh = st.sh;
        let mut dq = vec![0.0f32; sh.batch * sh.heads * sh.queries * sh.dim];
        let mut dk = vec![0.0f32; sh.batch * sh.kv_heads * sh.keys * sh.dim];
        let mut dv = dk.clone();
        k::attention_backward(
            (view(&st.q), view(&st.k), view(&st.v), view(&go)),
            &st.stats,
            sh,
            st.scale,
            st.vis,
            st.drop.as_ref(),
            &mut dq,
            &mut dk,
            &mut dv,
        );
        Kernel::Attention.ran_backward();
        let q_shape = [sh.batch, sh.heads, sh.queries, sh.dim];
        let kv_shape = [sh.batch, sh.kv_heads, sh.keys, sh.dim];
        for (parent, grad, shape) in [(pq, dq, q_shape), (pk, dk, kv_shape), (pv, dv, kv_shape)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, heads_view(grad, shape));
            }
        }
    }
}

/// The forward pass; `keep`: whether a backward pass will run (then it also returns each
/// row's softmax statistics, what that needs).
fn attention_forward(
    q: &FlexTensor,
    kt: &FlexTensor,
    v: &FlexTensor,
    scale: f32,
    vis: Visible,
    drop: Option<&k::Dropout>,
    keep: bool,
) -> (FlexTensor, Option<Vec<f32>>, k::AttnShape) {
    let (qs, ks) = (shape_of(q), shape_of(kt));
    let sh = k::AttnShape {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        queries: qs[2],
        keys: ks[2],
        dim: qs[3],
    };
    let mut stats = keep.then(|| vec![0.0f32; sh.batch * sh.heads * sh.queries * 2]);
    let mut o = vec![0.0f32; values_len(&qs)];
    let st = stats.as_deref_mut();
    k::attention(view(q), view(kt), view(v), sh, scale, vis, drop, st, &mut o);
    Kernel::Attention.ran();
    (heads_view(o, [qs[0], qs[1], qs[2], qs[3]]), stats, sh)
}

/// Attention `softmax(scale · q kᵀ) v` of q `[b, h, s, d]` over k and v `[b, h_kv, t, d]`
/// (query head i reads KV head i / (h / h_kv)), each query over the keys `vis` lets it see
/// (`vis.queries` = s). One fused op forward (per batch row, in parallel: per head two matrix
/// products and the softmax, in causal row blocks) and one backward. q, k, v and the output's
/// gradient are read through their strides (the head split's transposed views cost no copy);
/// the output and q's gradient come laid out as `[b, s, h, d]`, so merging and splitting the
/// heads costs no copy either. Equal to [`attention_plain`].
///
/// The plain path takes its causal mask from `masks` (the runtime's tables) where given.
pub fn attention(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
    masks: Option<&Consts>,
) -> Tensor<4> {
    attend(q, kt, v, scale, vis, None, masks)
}

/// [`attention`] with dropout of probability `p` (in [0, 1]) on the probabilities, inside the
/// fused kernel: after each row's softmax, element `(b, h, i, j)` of the probabilities
/// `[b, h, s, t]` is kept, and scaled by `1 / (1 − p)`, exactly as [`super::dropout`] with the
/// same `(p, key)` would keep it in that tensor; the backward pass computes the mask again
/// from the key. Equal to `softmax → dropout(p, key) → · v` ([`attention_dropout_plain`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_dropout(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
    p: f64,
    key: u64,
    masks: Option<&Consts>,
) -> Tensor<4> {
    attend(q, kt, v, scale, vis, Some((p, key)), masks)
}

fn attend(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
    drop: Option<(f64, u64)>,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let dr = drop.map(|(p, key)| k::Dropout::new(key, p));
    match (lane(q), lane(kt), lane(v)) {
        (Lane::Plain(q), Lane::Plain(kt), Lane::Plain(v)) => {
            let (q, kt, v) = (viewable(q), viewable(kt), viewable(v));
            let (o, _, _) = attention_forward(&q, &kt, &v, scale, vis, dr.as_ref(), false);
            back::<4>(Lane::Plain(o))
        }
        (Lane::Tracked(q, ctx), Lane::Tracked(kt, _), Lane::Tracked(v, _)) => {
            let nodes = [q.node(), kt.node(), v.node()];
            let out = record(AttentionBackward, nodes, |keep| {
                let (q, k, v) = (
                    viewable(q.primitive().clone()),
                    viewable(kt.primitive().clone()),
                    viewable(v.primitive().clone()),
                );
                let (o, stats, sh) = attention_forward(&q, &k, &v, scale, vis, dr.as_ref(), keep);
                let state = stats.map(|stats| AttnState {
                    q,
                    k,
                    v,
                    stats: Arc::new(stats),
                    sh,
                    scale,
                    vis,
                    drop: dr,
                });
                (o, state)
            });
            back::<4>(Lane::Tracked(out, ctx))
        }
        (q, kt, v) => match drop {
            Some((p, key)) => {
                attention_dropout_plain(back(q), back(kt), back(v), scale, vis, p, key, masks)
            }
            None => attention_plain(back(q), back(kt), back(v), scale, vis, masks),
        },
    }
}

/// The plain Burn path of [`attention`]: the G query heads of a KV head stacked as G·s rows of
/// one product, the mask, the softmax, the product with v.
pub fn attention_plain(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let dims = q.dims();
    plain_probs(q, kt, scale, vis, masks)
        .matmul(v)
        .reshape(dims)
}

/// The probabilities of the plain paths: `[b, h_kv, G·s, t]`, the G query heads of a KV head
/// stacked as G·s rows of one product (the row-major order of `[b, h, s, t]`).
fn plain_probs(
    q: Tensor<4>,
    kt: Tensor<4>,
    scale: f32,
    vis: Visible,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let hk = kt.dims()[1];
    let q = q.mul_scalar(scale).reshape([b, hk, (h / hk) * s, d]);
    softmax_plain(q.matmul(kt.swap_dims(2, 3)), vis, masks)
}

/// The plain Burn path of [`attention_dropout`]: [`attention_plain`] with
/// [`dropout_plain`] of the probabilities (`[b, h_kv, G·s, t]`, the same row-major order as
/// `[b, h, s, t]`, so the same mask) before the product with v.
#[allow(clippy::too_many_arguments)]
pub fn attention_dropout_plain(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    vis: Visible,
    p: f64,
    key: u64,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let dims = q.dims();
    let probs = plain_probs(q, kt, scale, vis, masks);
    dropout_plain(probs, p, key).matmul(v).reshape(dims)
}
