//! RetNet's multi-scale retention in the parallel form with the heads' GroupNorm, with its
//! fused backward pass; and the plain Burn path, which also carries a decoding state.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Flex;
use burn::prelude::*;
use burn_flex::FlexTensor;
use kiln_kernels as k;
use std::sync::Arc;

use super::lane::{back, dense, heads_view, lane, record, shape_of, tensor, values, view};
use super::lane::{viewable, Lane};
use super::Kernel;

/// Head i's decay γ_i = 1 − 2^(−5−i) (RetNet's).
pub fn retention_decay(head: usize) -> f64 {
    1.0 - 2f64.powi(-5 - head as i32)
}

fn decays(heads: usize) -> Vec<f64> {
    (0..heads).map(retention_decay).collect()
}

#[derive(Debug)]
struct RetentionBackward;

/// What the backward pass of retention keeps.
#[derive(Clone, Debug)]
struct RetState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    w: FlexTensor,
    /// Each (batch row, position, head)'s norm statistics (mean, 1/std).
    stats: Arc<Vec<f32>>,
    sh: k::RetShape,
}

impl Backward<Flex, 5> for RetentionBackward {
    type State = RetState;

    fn backward(self, ops: Ops<RetState, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let sh = st.sh;
        let (b, h, s) = (sh.batch, sh.heads, sh.len);
        let mut dq = vec![0.0f32; b * s * h * sh.key_dim];
        let mut dk = dq.clone();
        let mut dv = vec![0.0f32; b * s * h * sh.value_dim];
        let (dw, db) = k::retention_backward(
            (view(&st.q), view(&st.k), view(&st.v)),
            values(&gy),
            &st.stats,
            sh,
            &decays(h),
            values(&st.w),
            (&mut dq, &mut dk, &mut dv),
        );
        Kernel::Retention.ran_backward();
        let [pq, pk, pv, pw, pb] = ops.parents;
        let (ks, vs) = ([b, h, s, sh.key_dim], [b, h, s, sh.value_dim]);
        for (parent, grad, shape) in [(pq, dq, ks), (pk, dk, ks), (pv, dv, vs)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, heads_view(grad, shape));
            }
        }
        for (parent, grad) in [(pw, dw), (pb, db)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, vec![h * sh.value_dim]));
            }
        }
    }
}

/// The forward pass of viewable q, k, v and dense weight and bias; `keep`: whether a backward
/// pass will run (then it also returns the norm statistics, what that needs).
fn retention_forward(
    [q, kt, v]: [&FlexTensor; 3],
    [w, b]: [&FlexTensor; 2],
    eps: f32,
    keep: bool,
) -> (FlexTensor, Option<Vec<f32>>, k::RetShape) {
    let (qs, vs) = (shape_of(q), shape_of(v));
    let sh = k::RetShape {
        batch: qs[0],
        heads: qs[1],
        len: qs[2],
        key_dim: qs[3],
        value_dim: vs[3],
    };
    let rows = sh.batch * sh.len * sh.heads;
    let mut stats = keep.then(|| vec![0.0f32; 2 * rows]);
    let mut y = vec![0.0f32; rows * sh.value_dim];
    let views = (view(q), view(kt), view(v));
    let norm = (values(w), values(b));
    let decays = decays(sh.heads);
    k::retention(views, sh, &decays, norm, eps, stats.as_deref_mut(), &mut y);
    Kernel::Retention.ran();
    let out = tensor(y, vec![sh.batch, sh.len, sh.heads * sh.value_dim]);
    (out, stats, sh)
}

/// RetNet's retention from no previous state with the heads' GroupNorm: q, k `[b, h, s,
/// d_k]`, v `[b, h, s, d_v]`, the norm's weight and bias `[h·d_v]` → `[b, s, h·d_v]` (see
/// [`crate::ops::retention`]). One fused op forward (per batch row, in parallel: per head the
/// decayed scores of a block of query rows, their product with v and each row's norm; the
/// decay powers computed in the kernel) and one backward, which computes the scores again
/// instead of keeping them. q, k, v are read through their strides (the head split's
/// transposed views cost no copy); their gradients come laid out as `[b, s, h, d]`. Equal to
/// [`retention_plain`].
pub fn retention(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
) -> Tensor<3> {
    let e = eps as f32;
    match (lane(q), lane(kt), lane(v), lane(weight), lane(bias)) {
        (Lane::Plain(q), Lane::Plain(kt), Lane::Plain(v), Lane::Plain(w), Lane::Plain(b)) => {
            let qkv = [q, kt, v].map(viewable);
            let (w, b) = (dense(w), dense(b));
            let (y, _, _) = retention_forward(qkv.each_ref(), [&w, &b], e, false);
            back::<3>(Lane::Plain(y))
        }
        (
            Lane::Tracked(q, ctx),
            Lane::Tracked(kt, _),
            Lane::Tracked(v, _),
            Lane::Tracked(w, _),
            Lane::Tracked(b, _),
        ) => {
            let nodes = [q.node(), kt.node(), v.node(), w.node(), b.node()];
            let out = record(RetentionBackward, nodes, |keep| {
                let [q, kt, v] = [&q, &kt, &v].map(|t| viewable(t.primitive().clone()));
                let [w, b] = [&w, &b].map(|t| dense(t.primitive().clone()));
                let (y, stats, sh) = retention_forward([&q, &kt, &v], [&w, &b], e, keep);
                let state = stats.map(|stats| RetState {
                    q,
                    k: kt,
                    v,
                    w,
                    stats: Arc::new(stats),
                    sh,
                });
                (y, state)
            });
            back::<3>(Lane::Tracked(out, ctx))
        }
        (q, kt, v, w, b) => retention_plain(back(q), back(kt), back(v), back(w), back(b), eps),
    }
}

/// The plain Burn path of [`retention`]: [`retention_chunk_plain`] from no state (which also
/// computes the state after the last position, as decoding needs) and
/// [`retention_group_norm_plain`].
pub fn retention_plain(
    q: Tensor<4>,
    kt: Tensor<4>,
    v: Tensor<4>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
) -> Tensor<3> {
    let (o, _) = retention_chunk_plain(q, kt, v, None, |a, b| a.matmul(b));
    retention_group_norm_plain(o, weight, bias, eps)
}

/// Retention over `q`, `k`, `v` `[b, h, L, d]` following the state `prev` `[b, h, d_k, d_v]`
/// of the positions before (none when `None`), in Burn ops with `mm` for the products (the
/// runtime passes its mixed-precision product): returns the heads' outputs `[b, h, L, d_v]`
/// and the state after the last position, `S = Σ_m γ^(T−1−m) k_mᵀ v_m` over the T positions
/// seen. The decay matrix `D[h, t, m] = γ_h^(t−m)` (m ≤ t) is built on the host.
pub fn retention_chunk_plain(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    prev: Option<Tensor<4>>,
    mm: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let [b, h, l, dk] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let k = k.mul_scalar(1.0 / (dk as f64).sqrt());
    // D[h, t, m] = γ_h^(t−m) for m ≤ t; decay of the state into position t: γ^(t+1);
    // weight of position m in the new state: γ^(L−1−m).
    let (mut d, mut into, mut keep) = (vec![0f32; h * l * l], vec![0f32; h * l], vec![]);
    for head in 0..h {
        let g = retention_decay(head);
        for t in 0..l {
            for m in 0..=t {
                d[(head * l + t) * l + m] = g.powi((t - m) as i32) as f32;
            }
            into[head * l + t] = g.powi(t as i32 + 1) as f32;
        }
        keep.extend((0..l).map(|m| g.powi((l - 1 - m) as i32) as f32));
    }
    let d = Tensor::<3>::from_data(TensorData::new(d, [h, l, l]), &device).unsqueeze::<4>();
    let into = Tensor::<3>::from_data(TensorData::new(into, [h, l, 1]), &device);
    let keep = Tensor::<3>::from_data(TensorData::new(keep, [h, l, 1]), &device);
    let scores = mm(q.clone(), k.clone().swap_dims(2, 3)) * d;
    let mut out = mm(scores, v.clone());
    let gl: Vec<f32> = (0..h)
        .map(|i| retention_decay(i).powi(l as i32) as f32)
        .collect();
    let gl = Tensor::<1>::from_data(TensorData::new(gl, [h]), &device).reshape([1, h, 1, 1]);
    let added = mm((k * keep.unsqueeze::<4>()).swap_dims(2, 3), v);
    let state = match prev {
        Some(s) => {
            out = out + mm(q, s.clone()) * into.unsqueeze::<4>();
            s * gl + added
        }
        None => added,
    };
    debug_assert_eq!(state.dims(), [b, h, dk, dv]);
    (out, state)
}

/// The heads' GroupNorm in Burn ops: `[b, h, s, d_v] → [b, s, h·d_v]`, each (position, head)
/// normalized over its d_v features, then scaled and shifted per feature.
pub fn retention_group_norm_plain(
    o: Tensor<4>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
) -> Tensor<3> {
    let [b, h, s, dv] = o.dims();
    let o = o.swap_dims(1, 2);
    let mean = o.clone().mean_dim(3);
    let centred = o - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(3);
    let y = centred / (var + eps).sqrt();
    let y: Tensor<3> = y.reshape([b, s, h * dv]);
    y * weight.unsqueeze::<3>() + bias.unsqueeze::<3>()
}
