//! Attention `softmax(scale · q kᵀ) v` with grouped KV heads and a causal limit, with its
//! fused backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use crate::runtime::consts::Consts;

use super::dropout::dropout_plain;
use super::lane::{back, heads_view, lane, record, shape_of, values_len, view, viewable, Lane};
use super::softmax::{softmax_plain, softmax_plain_mask};
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
    /// Hard attention (straight-through).
    hard: bool,
}

impl AttnState {
    fn weighing(&self) -> k::Weighing<'_> {
        k::Weighing {
            drop: self.drop.as_ref(),
            hard: self.hard,
        }
    }
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
        let mut dv = vec![0.0f32; sh.batch * sh.kv_heads * sh.keys * sh.value_dim];
        k::attention_backward(
            (view(&st.q), view(&st.k), view(&st.v), view(&go)),
            &st.stats,
            sh,
            st.scale,
            st.vis,
            st.weighing(),
            &mut dq,
            &mut dk,
            &mut dv,
        );
        Kernel::Attention.ran_backward();
        let q_shape = [sh.batch, sh.heads, sh.queries, sh.dim];
        let k_shape = [sh.batch, sh.kv_heads, sh.keys, sh.dim];
        let v_shape = [sh.batch, sh.kv_heads, sh.keys, sh.value_dim];
        for (parent, grad, shape) in [(pq, dq, q_shape), (pk, dk, k_shape), (pv, dv, v_shape)] {
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
    how: k::Weighing,
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
        value_dim: shape_of(v)[3],
    };
    let mut stats = keep.then(|| vec![0.0f32; sh.batch * sh.heads * sh.queries * 2]);
    let os = [qs[0], qs[1], qs[2], sh.value_dim];
    let mut o = vec![0.0f32; values_len(&os)];
    let st = stats.as_deref_mut();
    k::attention(view(q), view(kt), view(v), sh, scale, vis, how, st, &mut o);
    Kernel::Attention.ran();
    (heads_view(o, os), stats, sh)
}

/// Attention `softmax(scale · q kᵀ) v` of q `[b, h, s, d]` over k `[b, h_kv, t, d]` and v
/// `[b, h_kv, t, e]` (query head i reads KV head i / (h / h_kv); the output is `[b, h, s, e]`), each query over the keys `vis` lets it see
/// (`vis.queries` = s). One fused op forward (per batch row, in parallel, or per row block when
/// batch rows are fewer than threads: per head two matrix products and the softmax, in causal
/// row blocks) and one backward. q, k, v and the output's
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
    attend((q, kt, v), scale, vis, None, None, masks)
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
    attend((q, kt, v), scale, vis, Some((p, key)), None, masks)
}

/// Hard attention: [`attention`] (or [`attention_dropout`] with `drop = (p, key)`) with each
/// row's weights one-hot on its largest visible score, tied maxima sharing the weight. In
/// training (`train`), straight-through: the scores' gradient is the softmax's and v's that of
/// the hard weights; outside training the weights carry no gradient to q and k. Equal to
/// [`attention_hard_plain`].
pub fn attention_hard(
    (q, kt, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    scale: f32,
    vis: Visible,
    drop: Option<(f64, u64)>,
    train: bool,
    masks: Option<&Consts>,
) -> Tensor<4> {
    attend((q, kt, v), scale, vis, drop, Some(train), masks)
}

/// `hard`: `Some(train)` for hard attention.
fn attend(
    (q, kt, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    scale: f32,
    vis: Visible,
    drop: Option<(f64, u64)>,
    hard: Option<bool>,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let dr = drop.map(|(p, key)| k::Dropout::new(key, p));
    let how = k::Weighing {
        drop: dr.as_ref(),
        hard: hard.is_some(),
    };
    match (lane(q), lane(kt), lane(v)) {
        (Lane::Plain(q), Lane::Plain(kt), Lane::Plain(v)) => {
            let (q, kt, v) = (viewable(q), viewable(kt), viewable(v));
            let (o, _, _) = attention_forward(&q, &kt, &v, scale, vis, how, false);
            back::<4>(Lane::Plain(o))
        }
        // Hard weights outside training give q and k no gradient: the plain path.
        (Lane::Tracked(q, ctx), Lane::Tracked(kt, _), Lane::Tracked(v, _))
            if hard != Some(false) =>
        {
            let nodes = [q.node(), kt.node(), v.node()];
            let out = record(AttentionBackward, nodes, |keep| {
                let (q, k, v) = (
                    viewable(q.primitive().clone()),
                    viewable(kt.primitive().clone()),
                    viewable(v.primitive().clone()),
                );
                let (o, stats, sh) = attention_forward(&q, &k, &v, scale, vis, how, keep);
                let state = stats.map(|stats| AttnState {
                    q,
                    k,
                    v,
                    stats: Arc::new(stats),
                    sh,
                    scale,
                    vis,
                    drop: dr,
                    hard: hard.is_some(),
                });
                (o, state)
            });
            back::<4>(Lane::Tracked(out, ctx))
        }
        (q, kt, v) => match (hard, drop) {
            (Some(train), drop) => {
                let qkv = (back(q), back(kt), back(v));
                attention_hard_plain(qkv, scale, vis, drop, train, masks)
            }
            (None, Some((p, key))) => {
                attention_dropout_plain(back(q), back(kt), back(v), scale, vis, p, key, masks)
            }
            (None, None) => attention_plain(back(q), back(kt), back(v), scale, vis, masks),
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
    let dims = out_dims(&q, &v);
    plain_probs(q, kt, scale, vis, masks)
        .matmul(v)
        .reshape(dims)
}

/// The output's shape, `[b, h, s, e]`, from q `[b, h, s, d]` and v `[b, h_kv, t, e]`.
fn out_dims(q: &Tensor<4>, v: &Tensor<4>) -> [usize; 4] {
    let [b, h, s, _] = q.dims();
    [b, h, s, v.dims()[3]]
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
    softmax_plain(plain_scores(q, kt, scale), vis, masks)
}

/// The scores of the plain paths, `[b, h_kv, G·s, t]` (see [`plain_probs`]).
fn plain_scores(q: Tensor<4>, kt: Tensor<4>, scale: f32) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let hk = kt.dims()[1];
    let q = q.mul_scalar(scale).reshape([b, hk, (h / hk) * s, d]);
    q.matmul(kt.swap_dims(2, 3))
}

/// The plain Burn path of [`attention_hard`]: the masked scores, [`hard_weights`], the
/// dropout of the weights, the product with v.
pub fn attention_hard_plain(
    (q, kt, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    scale: f32,
    vis: Visible,
    drop: Option<(f64, u64)>,
    train: bool,
    masks: Option<&Consts>,
) -> Tensor<4> {
    let dims = out_dims(&q, &v);
    let scores = softmax_plain_mask(plain_scores(q, kt, scale), vis, masks);
    let w = hard_weights(scores, train);
    let w = match drop {
        Some((p, key)) => dropout_plain(w, p, key),
        None => w,
    };
    w.matmul(v).reshape(dims)
}

/// Hard attention weights of masked scores: one-hot on each row's largest score (tied maxima
/// share the weight equally). In training, straight-through: the value of the hard weights
/// with the gradient of the softmax ones.
pub fn hard_weights(scores: Tensor<4>, train: bool) -> Tensor<4> {
    let dims = scores.dims();
    let max = scores.clone().max_dim(3).expand(dims);
    let hit = scores.clone().equal(max).float();
    let hard = hit.clone() / hit.sum_dim(3);
    if train {
        let soft = activation::softmax(scores, 3);
        soft.clone() + (hard - soft).detach()
    } else {
        hard
    }
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
    let dims = out_dims(&q, &v);
    let probs = plain_probs(q, kt, scale, vis, masks);
    dropout_plain(probs, p, key).matmul(v).reshape(dims)
}
